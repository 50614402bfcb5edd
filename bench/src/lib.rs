//! What the benchmarks share: the AsyncProcess workload (seed 000's
//! executions), generated the same way by every scenario and by the
//! criterion micro-benchmarks, and the eddy process a scenario runs.

pub mod process;
pub mod workload;

/// The `p`-quantile (0..=1) of sorted samples; 0 when there are none.
#[must_use]
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0)
}
