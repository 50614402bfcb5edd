//! `eddy-bench timers`: what per-key timers cost and how fast they fire, on
//! the embedded path with the AsyncProcess aggregator, in one run.
//!
//! - Cost: the same events folded twice from a filled log, once as they
//!   are and once with the aggregator's timeout on
//!   (`ASYNC_PROCESS_TIMEOUT_MS`, far ahead so none fires): each STARTED or
//!   RETRY execution then sets (replaces) its key's timer, each other state
//!   after one cancels it — a timer request on most events, one timer per key.
//! - Firing: `timers` keys each get one STARTED execution whose timeout
//!   falls due at one instant after they are all folded; measured from the
//!   first timer fired to the last one folded (each sets its key's state to
//!   ERROR): timers fired and folded per second.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use eddy_bench::process::{EddyProcess, embedded_config_with, write_results};
use eddy_bench::workload::{execution, key};
use serde_json::json;

use crate::embedded::{Run, run_embedded};

/// Scenario settings.
pub struct Settings {
    /// The eddy binary.
    pub eddy: PathBuf,
    /// The AsyncProcess aggregator component.
    pub component: PathBuf,
    /// Events of the cost runs.
    pub events: u64,
    /// Distinct keys of the cost runs.
    pub keys: u64,
    /// Timers of the firing run (one key each).
    pub timers: u64,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The sum of a counter's samples in a /metrics text.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            l.get(name.len()..)
                .is_some_and(|r| r.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics(host: &EddyProcess) -> Result<String> {
    Ok(host
        .agent
        .get(format!("{}/metrics", host.base))
        .call()?
        .body_mut()
        .read_to_string()?)
}

/// Fires `n` timers due at one instant; returns (timers/s from the first
/// fired to the last folded, ms from due to the last folded).
fn firing(s: &Settings, dir: &std::path::Path) -> Result<(f64, f64)> {
    let config = embedded_config_with(&s.component, "", "memory_mb = 64\n", "")?;
    // Timeouts measured from now: the events are folded before they fall due.
    let t0 = now_ms();
    let timeout = 5_000 + (s.timers as i64) / 10;
    let config = config.replacen(
        "memory_mb = 64\n",
        &format!(
            "memory_mb = 64\ngrants = {{ env = {{ ASYNC_PROCESS_TIMEOUT_MS = \"{timeout}\" }} }}\n"
        ),
        1,
    );
    let mut host = EddyProcess::start(&s.eddy, &dir.join("eddy"), &config, "warn")?;
    let url = format!("{}/v1/topics/events/records", host.base);
    let mut n = 0;
    while n < s.timers {
        let records: Vec<_> = (n..(n + 2_000).min(s.timers))
            .map(|i| {
                json!({"value": {
                    "id": format!("e{i}"), "asyncProcessId": format!("t{i:07}"),
                    "time": t0, "state": "STARTED",
                }})
            })
            .collect();
        n += records.len() as u64;
        let r = host
            .agent
            .post(&url)
            .send(json!({ "records": records }).to_string().as_bytes())?;
        ensure!(r.status().is_success(), "produce: {}", r.status());
    }
    let due = t0 + timeout;
    ensure!(
        now_ms() < due - 500,
        "filling took past the timers' instant; fewer timers"
    );
    // Wait for them to fire and be folded: every key's timer is consumed.
    let want = s.timers as f64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first_fired: Option<Instant> = None;
    loop {
        let text = metrics(&host)?;
        let fired = counter(&text, "eddy_timers_fired_total");
        let consumed = counter(&text, "eddy_events_consumed_total");
        if fired > 0.0 && first_fired.is_none() {
            first_fired = Some(Instant::now());
        }
        if consumed >= 2.0 * want {
            let took = first_fired.map_or(0.0, |f| f.elapsed().as_secs_f64());
            let rate = want / took.max(1e-3);
            let lag = (now_ms() - due) as f64;
            host.terminate()?;
            return Ok((rate, lag));
        }
        ensure!(
            Instant::now() < deadline,
            "timers: {fired} fired, {consumed} consumed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the scenario and prints the table.
pub fn run(s: &Settings) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("eddy-bench-timers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let values: Vec<(String, String)> = (0..s.events)
        .map(|n| (key(n, s.keys), execution(n, s.keys).to_string()))
        .collect();
    let plain = run_embedded(
        &s.eddy,
        &s.component,
        &values,
        4,
        "memory_mb = 64\n",
        "",
        &dir.join("plain"),
    )?;
    // Far ahead (about 300 years): set and replaced, never due.
    let timed = run_embedded(
        &s.eddy,
        &s.component,
        &values,
        4,
        "memory_mb = 64\ngrants = { env = { ASYNC_PROCESS_TIMEOUT_MS = \"10000000000000\" } }\n",
        "",
        &dir.join("timed"),
    )?;
    let (fire_rate, last_after_due_ms) = firing(s, &dir.join("firing"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let Run {
        rate: plain_rate, ..
    } = plain;
    let Run {
        rate: timed_rate, ..
    } = timed;
    println!(
        "| embedded path, AsyncProcess ({} events, {} keys) | events/s | vs no timers |",
        s.events, s.keys
    );
    println!("|---|---:|---:|");
    println!("| no timers | {plain_rate:.0} | 1.00× |");
    println!(
        "| a timeout timer per key, set or cancelled by most events | {timed_rate:.0} | {:.2}× |",
        timed_rate / plain_rate
    );
    println!(
        "Firing {} timers due at one instant: {fire_rate:.0} timers/s fired and folded; the last folded {last_after_due_ms:.0} ms after the instant",
        s.timers
    );
    write_results(
        &s.out,
        &json!({
            "events": s.events, "keys": s.keys,
            "no_timers_events_per_s": plain_rate,
            "timers_events_per_s": timed_rate,
            "timers_vs_none": timed_rate / plain_rate,
            "timers": s.timers,
            "fired_and_folded_per_s": fire_rate,
            "last_folded_after_due_ms": last_after_due_ms,
        }),
    )?;
    Ok(())
}
