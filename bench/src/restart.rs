//! `eddy-bench restart`: time from start to ready with `keys` keys in the
//! store. Fills an embedded host with one AsyncProcess execution per key,
//! stops it with SIGTERM, then starts it again on the same store and times
//! `/healthz` and `/readyz`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use eddy_bench::process::{EddyProcess, embedded_config, write_results};
use eddy_bench::workload::{execution, key};
use serde_json::json;

/// Scenario settings.
pub struct Settings {
    /// The eddy binary.
    pub eddy: PathBuf,
    /// The AsyncProcess aggregator component.
    pub component: PathBuf,
    /// Keys in the store.
    pub keys: u64,
    /// Restarts to time.
    pub restarts: u32,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

/// Runs the scenario and prints the table.
pub fn run(s: &Settings) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("eddy-bench-restart-{}", std::process::id()));
    let config = embedded_config(&s.component, "", "")?;
    let mut p = EddyProcess::start(&s.eddy, &dir, &config, "warn,eddy::pipeline=debug")?;
    let fill = Instant::now();
    let url = format!("{}/v1/topics/events/records", p.base);
    let mut n = 0;
    while n < s.keys {
        let records: Vec<_> = (n..(n + 2_000).min(s.keys))
            .map(|i| json!({ "key": key(i, s.keys), "value": execution(i, s.keys) }))
            .collect();
        n += records.len() as u64;
        let r = p
            .agent
            .post(&url)
            .send(json!({ "records": records }).to_string().as_bytes())?;
        ensure!(r.status().is_success(), "produce: {}", r.status());
    }
    p.wait_committed(s.keys, Duration::from_secs(3_600))?;
    let filled_s = fill.elapsed().as_secs_f64();
    p.terminate()?;
    drop(p);
    let disk = dir_size(&dir.join("store"));

    let mut rows = Vec::new();
    for _ in 0..s.restarts {
        let started = Instant::now();
        let p = EddyProcess::start(&s.eddy, &dir, &config, "warn")?;
        let healthy = started.elapsed();
        p.wait_for("/readyz", Duration::from_secs(600))?;
        let ready = started.elapsed();
        let last = p
            .agent
            .get(format!(
                "{}/v1/pipelines/p/state/{}",
                p.base,
                key(s.keys - 1, s.keys)
            ))
            .call()?;
        ensure!(
            last.status() == 200,
            "the last key's state is missing after the restart"
        );
        rows.push((healthy, ready, p.peak_rss_kib().unwrap_or(0)));
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "| restart with {} keys ({:.0} MiB store, filled in {filled_s:.0} s) | start → healthy ms | start → ready ms | peak RSS MiB |",
        s.keys,
        disk as f64 / (1024.0 * 1024.0)
    );
    println!("|---|---:|---:|---:|");
    for (i, (h, r, rss)) in rows.iter().enumerate() {
        println!(
            "| run {} | {:.0} | {:.0} | {:.0} |",
            i + 1,
            h.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            *rss as f64 / 1024.0
        );
    }
    write_results(
        &s.out,
        &json!({
            "keys": s.keys, "store_bytes": disk, "fill_seconds": filled_s,
            "runs": rows.iter().map(|(h, r, rss)| json!({
                "start_to_healthy_ms": h.as_secs_f64() * 1e3,
                "start_to_ready_ms": r.as_secs_f64() * 1e3,
                "peak_rss_kib": rss,
            })).collect::<Vec<_>>(),
        }),
    )?;
    Ok(())
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
