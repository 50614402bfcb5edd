//! Retries of retryable plugin failures: exponential backoff with jitter,
//! up to the plugin's `max_retries`.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::execute::{Instance, PluginError};

/// A result and the retry delays it took.
pub type Attempted<T> = (Result<T, PluginError>, Vec<u64>);

/// Retries of retryable failures: exponential backoff with jitter.
#[derive(Clone)]
pub struct Retry {
    max_retries: u32,
    base_ms: u64,
    plugin: Arc<str>,
    pub(super) pipeline: Arc<str>,
}

impl Retry {
    /// The retry settings of `instance`'s plugin, for log lines of `pipeline`.
    pub fn of(instance: &Instance, pipeline: &str) -> Self {
        let c = instance.plugin().config();
        Retry {
            max_retries: c.max_retries,
            base_ms: c.retry_backoff_ms,
            plugin: Arc::from(instance.plugin().name.to_string()),
            pipeline: Arc::from(pipeline),
        }
    }

    /// The delay before retry `attempt` (1-based): half the exponential
    /// step plus up to half again of jitter, capped at 30 s.
    fn delay_ms(&self, attempt: u32) -> u64 {
        let step = self
            .base_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(16))
            .min(30_000);
        step / 2 + rand::rng().random_range(0..=step / 2)
    }

    /// Runs `f` (a call for `key`, or a handler's batch when `None`, whose
    /// first event is at `offset`), retrying retryable failures; returns the
    /// result and the delays slept.
    pub fn run<T>(
        &self,
        key: Option<&str>,
        offset: Option<i64>,
        mut f: impl FnMut() -> Result<T, PluginError>,
    ) -> Attempted<T> {
        let mut delays = Vec::new();
        loop {
            match f() {
                Err(e) if e.is_retryable() && (delays.len() as u32) < self.max_retries => {
                    let d = self.delay_ms(delays.len() as u32 + 1);
                    tracing::debug!(
                        pipeline = %self.pipeline, plugin = %self.plugin, key, offset,
                        error = %e, delay_ms = d, "retrying"
                    );
                    crate::telemetry::plugin_retry(&self.plugin);
                    std::thread::sleep(Duration::from_millis(d));
                    delays.push(d);
                }
                r => return (r, delays),
            }
        }
    }
}
