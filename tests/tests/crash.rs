//! kill -9 at random moments while events stream in: every acknowledged
//! event ends up in its aggregate exactly once, an unacknowledged one at
//! most once, and every aggregate equals the fold of the events it holds.
//! The kill schedule and the workload come from a seed (`eddy_tests::chaos`:
//! `EDDY_CHAOS_SEED`, `EDDY_CHAOS_EVENTS`, `EDDY_CHAOS_KILLS`); CI runs
//! 20,000 events and 5 kills, `scripts/chaos.sh` 1,000,000 and 20.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use eddy_tests::chaos::Chaos;
use eddy_tests::{Host, async_process_config, execution};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio::sync::Mutex;

const EVENTS: u64 = 20_000;
const KILLS: usize = 5;
const STATES: [&str; 5] = ["STARTED", "DONE", "ERROR", "RETRY", "REJECTED"];

#[derive(Default)]
struct Ledger {
    /// event id -> key, for acknowledged events.
    acked: HashMap<String, String>,
    /// event ids whose request got no answer.
    unacked: HashSet<String>,
}

/// What the producers send: `events` events over `keys` keys.
#[derive(Clone, Copy)]
struct Workload {
    events: u64,
    keys: u64,
}

async fn produce_loop(
    url: String,
    work: Workload,
    mut rng: StdRng,
    next: Arc<AtomicU64>,
    ledger: Arc<Mutex<Ledger>>,
    done: Arc<AtomicBool>,
) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    loop {
        let size = rng.random_range(20..120u64);
        let first = next.fetch_add(size, Ordering::SeqCst);
        if first >= work.events {
            done.store(true, Ordering::SeqCst);
            return Ok(());
        }
        let last = (first + size).min(work.events);
        let mut records = Vec::new();
        let mut batch = Vec::new();
        for n in first..last {
            let key = format!("k{:05}", rng.random_range(0..work.keys));
            let id = format!("e{n:07}");
            let state = STATES[rng.random_range(0..STATES.len())];
            // `time` grows with n, so the expected fold is easy to state.
            records.push(json!({ "value": execution(&id, &key, 1_000_000 + n as i64, state) }));
            batch.push((id, key));
        }
        let body = json!({ "records": records }).to_string();
        let answer = http
            .post(format!("{url}/v1/topics/async-process-execution/records"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let ok = matches!(&answer, Ok(r) if r.status().is_success());
        let mut l = ledger.lock().await;
        for (id, key) in batch {
            if ok {
                l.acked.insert(id, key);
            } else {
                l.unacked.insert(id);
            }
        }
        drop(l);
        if !ok {
            // The host is down (being killed); try again shortly with new events.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingest_loses_nothing_and_applies_nothing_twice() -> Result<()> {
    let mut chaos = Chaos::from_env("embedded: kill -9 during ingest", EVENTS, KILLS)?;
    let work = Workload {
        events: chaos.events,
        keys: (chaos.events / 20).clamp(1_000, 50_000),
    };
    let mut host = Host::start(&async_process_config()?).await?;
    let next = Arc::new(AtomicU64::new(0));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let done = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(produce_loop(
                host.url.clone(),
                work,
                chaos.stream(i),
                next.clone(),
                ledger.clone(),
                done.clone(),
            ))
        })
        .collect();

    // Each kill when the producers reach a random event of the stream (one
    // they pass while the host is down comes with the next restart); a
    // kill after the last event hits the catch-up.
    for at in chaos.schedule(work.events) {
        while next.load(Ordering::SeqCst) < at && !done.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        chaos.kill_and_restart(&mut host, 300).await?;
    }
    for p in producers {
        p.await.context("producer task")??;
    }
    host.wait_caught_up("async-process", Duration::from_secs(600))
        .await?;

    let ledger = ledger.lock().await;
    ensure!(
        ledger.acked.len() + ledger.unacked.len() == work.events as usize,
        "every event was attempted once"
    );
    ensure!(!ledger.acked.is_empty(), "some events must be acknowledged");
    let mut expected_by_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, key) in &ledger.acked {
        expected_by_key
            .entry(key.as_str())
            .or_default()
            .push(id.as_str());
    }
    let mut seen_total = 0usize;
    for k in 0..work.keys {
        let key = format!("k{k:05}");
        let (status, state) = host.get(&format!("/async-process/{key}")).await?;
        let acked_here = expected_by_key
            .get(key.as_str())
            .cloned()
            .unwrap_or_default();
        if status == 404 {
            ensure!(
                acked_here.is_empty(),
                "key {key} lost its acknowledged events"
            );
            continue;
        }
        ensure!(status == 200, "GET {key}: {status}");
        let execs: Vec<&Value> = state["executions"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for e in &execs {
            *counts
                .entry(e["id"].as_str().unwrap_or_default())
                .or_default() += 1;
        }
        for id in &acked_here {
            ensure!(
                counts.get(id) == Some(&1),
                "acknowledged event {id} appears {:?} times in {key}",
                counts.get(id)
            );
        }
        for (id, n) in &counts {
            ensure!(*n == 1, "event {id} applied {n} times in {key}");
            ensure!(
                ledger.acked.get(*id).map(String::as_str) == Some(key.as_str())
                    || ledger.unacked.contains(*id),
                "event {id} in {key} was never sent for this key"
            );
        }
        // The aggregate is the fold of what it contains.
        let times: Vec<i64> = execs.iter().filter_map(|e| e["time"].as_i64()).collect();
        ensure!(
            times.windows(2).all(|w| w.first() < w.get(1)),
            "{key}: executions ordered by time"
        );
        let last = execs.last().context("no executions")?;
        ensure!(
            state["state"] == last["state"],
            "{key}: state is the latest execution's"
        );
        ensure!(
            state["lastUpdate"] == last["time"],
            "{key}: lastUpdate is the latest time"
        );
        ensure!(state["id"] == key.as_str(), "{key}: id");
        seen_total += execs.len();
    }
    ensure!(
        seen_total >= ledger.acked.len() && seen_total <= work.events as usize,
        "applied {seen_total} events for {} acknowledged",
        ledger.acked.len()
    );
    let (_, dead) = host
        .get("/v1/pipelines/async-process/dead-letters?limit=10")
        .await?;
    let dead = dead["dead_letters"].as_array().map_or(0, Vec::len);
    ensure!(dead == 0, "{dead} dead letters");
    ensure!(!host.log().contains("panicked"), "{}", host.log());
    chaos.report(json!({
        "keys": work.keys,
        "acknowledged": ledger.acked.len(),
        "unacknowledged": ledger.unacked.len(),
        "applied": seen_total,
        "lost": 0,
        "applied_twice": 0,
        "dead_letters": dead,
    }))?;
    Ok(())
}
