//! Hostile plugins under load in one pipeline while another folds a
//! stream: the hostile events (infinite loops, memory bombs, huge output,
//! panics) are contained and dead-lettered by class, the healthy pipeline
//! folds every event, and its throughput with the hostile neighbour is
//! printed next to its throughput alone (a figure from one run, not a
//! check: the machines are noisy). `EDDY_NEIGHBOUR_EVENTS` sets the
//! healthy events per phase (200,000).
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use eddy_tests::chaos::{Chaos, env_u64};
use eddy_tests::{Host, async_process_config, execution, samples, test_component};
use rand::Rng;
use serde_json::{Value, json};

const ADMIN: &str = "neighbour-admin";
const HEALTHY: &str = "async-process";
const T: Duration = Duration::from_secs(300);
/// The hostile events, and the class each one's dead letter has.
const HOSTILE: [(&str, &str); 4] = [
    ("loop", "timeout"),
    ("alloc", "memory_limit"),
    ("big", "output_too_large"),
    ("panic", "trap"),
];

/// The hostile actions of this run: `EDDY_NEIGHBOUR_ACTIONS` (such as
/// `loop,alloc`) picks some, to see what each one costs.
fn actions() -> Vec<(&'static str, &'static str)> {
    let only = std::env::var("EDDY_NEIGHBOUR_ACTIONS").unwrap_or_default();
    HOSTILE
        .into_iter()
        .filter(|(a, _)| only.is_empty() || only.split(',').any(|o| o.trim() == *a))
        .collect()
}

fn config() -> Result<String> {
    let probe = test_component("sandbox-probe")?;
    Ok(format!(
        r#"{}
[[source.topics]]
name = "probe"
partitions = 1

[[plugin]]
name = "probe"
path = "{}"
timeout_ms = 200
memory_mb = 16
max_output_bytes = 65536
max_retries = 1
retry_backoff_ms = 10

[[pipeline]]
name = "hostile"
topic = "probe"
key_field = "key"
aggregator = "probe"
"#,
        async_process_config()?.replace("[http]\n", &format!("[http]\nadmin_token = {ADMIN:?}\n")),
        probe.display()
    ))
}

/// Pauses or resumes the healthy pipeline.
async fn switch(host: &Host, verb: &str) -> Result<()> {
    let r = host
        .http
        .post(format!("{}/v1/pipelines/{HEALTHY}/{verb}", host.url))
        .bearer_auth(ADMIN)
        .send()
        .await?;
    let status = r.status();
    ensure!(status.is_success(), "{verb}: {status} {}", r.text().await?);
    Ok(())
}

/// Produces `events` healthy events numbered from `first` over keys named
/// from `prefix`, about 20 per key (an AsyncProcess state keeps every
/// execution: more per key would make each event cost more as the run
/// goes on)
/// while the healthy pipeline is paused, then resumes it and returns how
/// long it took to fold them.
async fn fold_phase(
    host: &Host,
    prefix: &str,
    first: u64,
    events: u64,
    counts: &mut HashMap<String, u64>,
    hostile: Option<&Arc<AtomicBool>>,
) -> Result<Duration> {
    switch(host, "pause").await?;
    let mut rng = rand::rng();
    let keys = (events / 20).max(1);
    let mut n = first;
    while n < first + events {
        let last = (n + 500).min(first + events);
        let records: Vec<Value> = (n..last)
            .map(|i| {
                let key = format!("{prefix}{:06}", rng.random_range(0..keys));
                *counts.entry(key.clone()).or_default() += 1;
                json!({ "value": execution(&format!("e{i:08}"), &key, 1_000_000 + i as i64, "STARTED") })
            })
            .collect();
        host.produce("async-process-execution", &json!({ "records": records }))
            .await?;
        n = last;
    }
    if let Some(h) = hostile {
        // The hostile pipeline is busy before the healthy one starts.
        h.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let t = Instant::now();
    switch(host, "resume").await?;
    host.wait_caught_up(HEALTHY, T).await?;
    Ok(t.elapsed())
}

/// Keeps the hostile pipeline busy once `go` is set, until `stop`: a few
/// hostile events (and a well-behaved one) whenever its backlog runs low.
/// Returns how many of each action it produced.
async fn hostile_feeder(
    url: String,
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<HashMap<&'static str, u64>> {
    let http = reqwest::Client::new();
    let mut sent: HashMap<&'static str, u64> = HashMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if !go.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let p: Value = http
            .get(format!("{url}/v1/pipelines/hostile"))
            .send()
            .await?
            .json()
            .await?;
        if p["lag"].as_u64().unwrap_or(0) < 8 {
            let mut records = Vec::new();
            for action in actions().into_iter().map(|(a, _)| a).chain(["ok"]) {
                n += 1;
                *sent.entry(action).or_default() += 1;
                records.push(json!({ "value": {
                    "key": format!("h{n}"), "id": format!("x{n}"), "action": action, "size": 200_000
                }}));
            }
            let r = http
                .post(format!("{url}/v1/topics/probe/records"))
                .json(&json!({ "records": records }))
                .send()
                .await?;
            ensure!(r.status().is_success(), "produce to probe: {}", r.status());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(sent)
}

/// `eddy_dead_letters_total` of a pipeline, per class.
async fn dead_letter_counts(host: &Host, pipeline: &str) -> Result<HashMap<String, u64>> {
    let text = host.metrics().await?;
    let mut counts = HashMap::new();
    for (labels, n) in samples(&text, "eddy_dead_letters_total")? {
        if !labels.contains(&format!("pipeline=\"{pipeline}\"")) {
            continue;
        }
        let class = labels
            .split("class=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .context("a dead-letter count without a class")?;
        *counts.entry(class.to_owned()).or_default() += n as u64;
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_hostile_plugins_under_load_leaves_the_others_folding() -> Result<()> {
    let per_phase = env_u64("EDDY_NEIGHBOUR_EVENTS")?.unwrap_or(200_000);
    let chaos = Chaos::from_env("hostile neighbour under load", per_phase * 2, 0)?;
    let host = Host::start(&config()?).await?;
    let mut counts = HashMap::new();

    // Each phase folds keys of its own: an AsyncProcess state keeps every
    // execution, so the same keys would make the second phase's states
    // (and each event's cost) larger than the first's.
    let alone = fold_phase(&host, "p", 0, per_phase, &mut counts, None).await?;

    let go = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = tokio::spawn(hostile_feeder(host.url.clone(), go.clone(), stop.clone()));
    let beside = fold_phase(&host, "q", per_phase, per_phase, &mut counts, Some(&go)).await?;
    stop.store(true, Ordering::SeqCst);
    let sent = feeder.await??;
    host.wait_caught_up("hostile", T).await?;

    // Every healthy event is folded once.
    for (key, n) in &counts {
        let (status, state) = host
            .get(&format!("/v1/pipelines/{HEALTHY}/state/{key}"))
            .await?;
        ensure!(status == 200, "state of {key}: {status}");
        let folded = state["executions"].as_array().map_or(0, Vec::len) as u64;
        ensure!(folded == *n, "key {key} folded {folded} of {n} events");
    }
    ensure!(
        dead_letter_counts(&host, HEALTHY).await?.is_empty(),
        "the healthy pipeline has dead letters"
    );
    // Every hostile event is a dead letter of its class; the others folded.
    let dead = dead_letter_counts(&host, "hostile").await?;
    for (action, class) in actions() {
        let (want, got) = (
            sent.get(action).copied().unwrap_or(0),
            dead.get(class).copied().unwrap_or(0),
        );
        ensure!(
            want > 0 && got == want,
            "{action}: {want} sent, {got} dead letters of class {class} ({dead:?})"
        );
    }
    let (status, ready) = host.get("/readyz").await?;
    ensure!(status == 200, "/readyz: {status} {ready}");

    let rate = |d: Duration| per_phase as f64 / d.as_secs_f64();
    chaos.report(json!({
        "healthy_events_per_s_alone": rate(alone).round(),
        "healthy_events_per_s_beside_hostile": rate(beside).round(),
        "ratio": rate(beside) / rate(alone),
        "hostile_events": sent.values().sum::<u64>(),
        "hostile_dead_letters": dead,
    }))?;
    Ok(())
}
