//! Per-key timers, end to end, with the AsyncProcess aggregator's timeout
//! (`ASYNC_PROCESS_TIMEOUT_MS`: a process left in STARTED is marked ERROR
//! by a wall-clock timer) on the embedded log.
//!
//! - a STARTED process with no update becomes ERROR after the timeout, is
//!   emitted to the timeout topic and routed like a REJECTED one; one that
//!   finishes in time never does;
//! - timers set before a `kill -9` (and the host killed again while they
//!   fire) each fire exactly once after restart;
//! - timers already past at startup fire in the order of their instants;
//! - a fired timer and an event of the same key in one micro-batch: the
//!   timer applies first;
//! - a key over `max_timers_per_key` has its events dead-lettered with the
//!   class `timer_limit`.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::{Host, async_process_config, execution, samples, timeouts};
use serde_json::{Value, json};

const TOPIC: &str = "async-process-execution";
const TIMER_TOPIC: &str = "__eddy.timers.async-process";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The AsyncProcess example with the aggregator's timeout on (and its
/// timed-out processes emitted to `timed-out`), and the router routing
/// ERROR processes too.
fn timed_config(timeout_ms: u64) -> Result<String> {
    let config = async_process_config()?;
    let agg = format!(
        "memory_mb = 64\ngrants = {{ env = {{ ASYNC_PROCESS_TIMEOUT_MS = \"{timeout_ms}\", ASYNC_PROCESS_TIMEOUT_TOPIC = \"timed-out\" }} }}\n"
    );
    let topics = "[[source.topics]]\nname = \"rejected-process\"\npartitions = 1\n";
    ensure!(config.contains(topics), "the example's topics changed");
    Ok(config
        .replacen("memory_mb = 64\n", &agg, 1)
        .replacen(
            "memory_mb = 32\n",
            "memory_mb = 32\ngrants = { env = { ROUTE_STATES = \"REJECTED,ERROR\" } }\n",
            1,
        )
        .replacen(
            topics,
            &format!("{topics}\n[[source.topics]]\nname = \"timed-out\"\npartitions = 1\n"),
            1,
        ))
}

async fn state(host: &Host, key: &str) -> Result<Value> {
    let (status, v) = host
        .get(&format!("/v1/pipelines/async-process/state/{key}"))
        .await?;
    ensure!(status == 200, "state of {key}: {status} {v}");
    Ok(v)
}

/// Waits until `key`'s state satisfies `done`.
async fn wait_state(
    host: &Host,
    key: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let (status, v) = host
            .get(&format!("/v1/pipelines/async-process/state/{key}"))
            .await?;
        if status == 200 && done(&v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!(
                "state of {key} never got there: {status} {v}\n{}",
                host.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every record of an embedded topic, in offset order per partition.
async fn records(host: &Host, topic: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (status, v) = host
            .get(&format!(
                "/v1/topics/{topic}/records?partition=0&offset={offset}&limit=1000"
            ))
            .await?;
        ensure!(status == 200, "reading {topic}: {status} {v}");
        let page = v["records"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return Ok(out);
        }
        offset += page.len();
        out.extend(page);
    }
}

async fn produce(host: &Host, events: &[Value]) -> Result<()> {
    for chunk in events.chunks(500) {
        let records: Vec<Value> = chunk.iter().map(|e| json!({ "value": e })).collect();
        host.produce(TOPIC, &json!({ "records": records })).await?;
    }
    Ok(())
}

async fn fired_total(host: &Host) -> Result<f64> {
    let text = host.metrics().await?;
    Ok(samples(&text, "eddy_timers_fired_total")?
        .iter()
        .map(|(_, v)| v)
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_process_with_no_update_becomes_error_after_the_timeout() -> Result<()> {
    let host = Host::start(&timed_config(1_500)?).await?;
    let t0 = now_ms();
    produce(
        &host,
        &[
            execution("a1", "stuck", t0, "STARTED"),
            execution("b1", "finished", t0, "STARTED"),
            execution("b2", "finished", t0 + 100, "DONE"),
        ],
    )
    .await?;
    host.wait_caught_up("async-process", Duration::from_secs(20))
        .await?;
    let (status, timers) = host.get("/v1/pipelines/async-process/timers/stuck").await?;
    ensure!(status == 200, "{status} {timers}");
    ensure!(
        timers[0]["name"] == "timeout"
            && timers[0]["time"] == "wall"
            && timers[0]["at_ms"] == t0 + 1_500,
        "pending timers of stuck: {timers}"
    );
    let (_, none) = host
        .get("/v1/pipelines/async-process/timers/finished")
        .await?;
    ensure!(
        none == json!([]),
        "a finished process keeps no timer: {none}"
    );
    ensure!(
        state(&host, "stuck").await?["state"] == "STARTED",
        "timed out early"
    );

    let stuck = wait_state(&host, "stuck", Duration::from_secs(20), |v| {
        v["state"] == "ERROR"
    })
    .await?;
    let waited = now_ms() - t0;
    ensure!(
        waited >= 1_500,
        "ERROR after {waited} ms, before the timeout"
    );
    let last = stuck["executions"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .unwrap_or_default();
    ensure!(
        last["id"] == format!("timeout@{}", t0 + 1_500)
            && last["state"] == "ERROR"
            && last["description"] == "no update for 1500 ms in STARTED",
        "{stuck}"
    );
    ensure!(timeouts(&stuck) == 1, "{stuck}");
    // Emitted to the timeout topic, and routed like a REJECTED process.
    let emitted = records(&host, "timed-out").await?;
    ensure!(
        emitted.len() == 1 && emitted[0]["key"] == "stuck",
        "{emitted:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let routed = records(&host, "rejected-process").await?;
        if routed.iter().any(|r| r["key"] == "stuck") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "never routed: {routed:?}\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(state(&host, "finished").await?["state"] == "DONE");
    let (_, after) = host.get("/v1/pipelines/async-process/timers/stuck").await?;
    ensure!(after == json!([]), "a fired timer is gone: {after}");
    ensure!(fired_total(&host).await? >= 1.0);
    let text = host.metrics().await?;
    ensure!(
        samples(&text, "eddy_timers_pending")?
            .iter()
            .all(|(_, v)| *v == 0.0),
        "{text}"
    );
    Ok(())
}

/// Keys, each with one timer, their instants spread out
/// (`EDDY_TIMER_KEYS`, 3,000 in CI; `scripts/chaos.sh` runs 100,000), and
/// how often the host is killed while they fire (`EDDY_TIMER_KILLS`, 2).
fn timer_workload() -> (usize, usize) {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        var("EDDY_TIMER_KEYS", 3_000).max(3),
        var("EDDY_TIMER_KILLS", 2),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_set_before_kill_9_fire_exactly_once_after_restart() -> Result<()> {
    let (keys, kills) = timer_workload();
    // Time to fold every event before the first timer falls due, and the
    // instants spread over (at least) 3 s after that.
    let timeout = 4_000 + keys as u64 / 5;
    let spread = 3_000_i64.max(keys as i64 / 10);
    let at = |i: usize| i as i64 * spread / keys as i64;
    let mut host = Host::start(&timed_config(timeout)?).await?;
    let t0 = now_ms();
    let events: Vec<Value> = (0..keys)
        .map(|i| execution(&format!("e{i}"), &format!("p{i:06}"), t0 + at(i), "STARTED"))
        .collect();
    produce(&host, &events).await?;
    host.wait_caught_up("async-process", Duration::from_secs(600))
        .await?;
    host.kill9()?;
    // Down until a third of the instants passed; then up, and killed again
    // while the rest are firing.
    let first = t0 + timeout as i64;
    let until = first + spread / 3;
    tokio::time::sleep(Duration::from_millis((until - now_ms()).max(0) as u64)).await;
    host.restart().await?;
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(150 + 100 * (k as u64 % 5))).await;
        host.kill9()?;
        host.restart().await?;
    }
    let last = format!("p{:06}", keys - 1);
    let deadline = Instant::now() + Duration::from_secs(120 + spread as u64 / 1_000);
    loop {
        let (status, v) = host
            .get(&format!("/v1/pipelines/async-process/state/{last}"))
            .await?;
        if status == 200 && v["state"] == "ERROR" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the last timer never fired: {v}\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let whatever fired be folded.
    tokio::time::sleep(Duration::from_millis(500)).await;
    host.wait_caught_up("async-process", Duration::from_secs(30))
        .await?;
    for i in 0..keys {
        let key = format!("p{i:06}");
        let v = state(&host, &key).await?;
        ensure!(
            v["state"] == "ERROR" && timeouts(&v) == 1,
            "{key}: not timed out exactly once: {v}"
        );
        let fired_at = v["lastUpdate"].as_i64().unwrap_or_default();
        ensure!(fired_at == t0 + at(i) + timeout as i64, "{key}: {v}");
    }
    // Each timer reached the timer topic once.
    let fired = records(&host, TIMER_TOPIC).await?;
    ensure!(
        fired.len() == keys,
        "{} timer records for {keys} timers",
        fired.len()
    );
    println!("{keys} timers, {kills} kills while they fired: each fired once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_past_at_startup_fire_in_order_of_their_instants() -> Result<()> {
    let timeout = 5_000;
    let mut host = Host::start(&timed_config(timeout)?).await?;
    let t0 = now_ms();
    // Deadlines in an order unlike the keys' and the events'.
    let keys: Vec<(String, i64)> = (0..200_i64)
        .map(|i| (format!("k{:03}", (i * 37) % 200), t0 + (i * 53) % 200))
        .collect();
    let events: Vec<Value> = keys
        .iter()
        .enumerate()
        .map(|(n, (k, at))| execution(&format!("e{n}"), k, *at, "STARTED"))
        .collect();
    produce(&host, &events).await?;
    host.wait_caught_up("async-process", Duration::from_secs(20))
        .await?;
    host.terminate()?;
    let first_due = t0 + timeout as i64;
    ensure!(
        now_ms() < first_due,
        "the host stopped only after the first deadline: a slower machine needs a longer timeout"
    );
    let all_due = first_due + 200;
    tokio::time::sleep(Duration::from_millis(
        (all_due - now_ms()).max(0) as u64 + 200,
    ))
    .await;
    host.restart().await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let fired = loop {
        let fired = records(&host, TIMER_TOPIC).await?;
        if fired.len() >= keys.len() {
            break fired;
        }
        ensure!(Instant::now() < deadline, "{} fired", fired.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let instants: Vec<i64> = fired
        .iter()
        .map(|r| {
            let v: Value = match &r["value"] {
                Value::String(text) => serde_json::from_str(text).unwrap_or_default(),
                v => v.clone(),
            };
            v["at_ms"].as_i64().unwrap_or_default()
        })
        .collect();
    let mut sorted = instants.clone();
    sorted.sort_unstable();
    ensure!(instants == sorted, "fired out of order: {instants:?}");
    let mut expected: Vec<i64> = keys.iter().map(|(_, at)| at + timeout as i64).collect();
    expected.sort_unstable();
    ensure!(instants == expected, "{instants:?}");
    // A fired timer is folded in a batch after its record reaches the timer
    // topic, which the input's lag does not count: wait for each fold.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (key, _) in &keys {
        let n = loop {
            let n = timeouts(&state(&host, key).await?);
            if n >= 1 || Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        ensure!(n == 1, "{key}: {n} timeouts");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_and_an_event_of_one_key_in_one_batch_apply_timer_first() -> Result<()> {
    let timeout = 2_000;
    let host = Host::start(&timed_config(timeout)?).await?;
    let t0 = now_ms();
    produce(&host, &[execution("a", "p", t0, "STARTED")]).await?;
    host.wait_caught_up("async-process", Duration::from_secs(20))
        .await?;
    // Paused, the timer still fires (into the timer topic) but nothing is
    // folded; an event of the same key then waits beside it.
    host.post("/v1/pipelines/async-process/pause", "").await?;
    ensure!(
        now_ms() < t0 + timeout as i64,
        "paused only after the timeout: a slower machine needs a longer one"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while fired_total(&host).await? < 1.0 {
        ensure!(Instant::now() < deadline, "the timer never fired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    produce(&host, &[execution("b", "p", t0 + 5_000, "DONE")]).await?;
    host.post("/v1/pipelines/async-process/resume", "").await?;
    let v = wait_state(&host, "p", Duration::from_secs(20), |v| {
        v["executions"].as_array().map(Vec::len) == Some(3)
    })
    .await?;
    let ids: Vec<&str> = v["executions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str())
        .collect();
    ensure!(
        ids == ["a", &format!("timeout@{}", t0 + timeout as i64), "b"],
        "the timer did not apply before the event: {v}"
    );
    ensure!(v["state"] == "DONE", "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_timers_are_dead_letters_of_their_class() -> Result<()> {
    // With a cap of 0 timers per key, the STARTED execution's timeout is
    // one too many; the DONE one sets none.
    let config = timed_config(60_000)?.replacen(
        "aggregator = \"async-process-aggregator\"\n",
        "aggregator = \"async-process-aggregator\"\nmax_timers_per_key = 0\n",
        1,
    );
    let host = Host::start(&config).await?;
    produce(
        &host,
        &[
            execution("a", "capped", now_ms(), "STARTED"),
            execution("b", "fine", now_ms(), "DONE"),
        ],
    )
    .await?;
    host.wait_caught_up("async-process", Duration::from_secs(20))
        .await?;
    let (status, letters) = host
        .get("/v1/pipelines/async-process/dead-letters?error_class=timer_limit")
        .await?;
    ensure!(status == 200, "{status} {letters}");
    let list = letters["dead_letters"]
        .as_array()
        .cloned()
        .context("no dead letter list")?;
    ensure!(list.len() == 1, "{letters}");
    let error = list[0]["error"].as_str().unwrap_or_default();
    ensure!(
        list[0]["key"] == "capped"
            && error.contains("max_timers_per_key")
            && error.contains("async-process-aggregator"),
        "{}",
        list[0]
    );
    ensure!(
        state(&host, "fine").await?["state"] == "DONE",
        "the other key applied"
    );
    Ok(())
}

/// A timer outlives the plugin version that set it: set by the 0.2.0
/// build, it fires into the contract-0.1.0 build deployed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_survives_a_hot_swap_and_fires_into_the_new_version() -> Result<()> {
    let token = "timers-admin";
    let config = timed_config(5_000)?.replacen(
        "[http]\n",
        &format!("[http]\nadmin_token = \"{token}\"\n"),
        1,
    );
    // Built first: the deploy must come before the timeout.
    let older = eddy_tests::plugin_v0_1("async-process-aggregator")?;
    let host = Host::start(&config).await?;
    let t0 = now_ms();
    produce(&host, &[execution("a", "swapped", t0, "STARTED")]).await?;
    host.wait_caught_up("async-process", Duration::from_secs(20))
        .await?;
    let (_, timers) = host
        .get("/v1/pipelines/async-process/timers/swapped")
        .await?;
    ensure!(timers.as_array().map(Vec::len) == Some(1), "{timers}");
    let r = host
        .http
        .put(format!("{}/v1/plugins/async-process-aggregator", host.url))
        .bearer_auth(token)
        .body(std::fs::read(&older)?)
        .send()
        .await?;
    let ok = r.status().is_success();
    let deployed: Value = serde_json::from_str(&r.text().await?).unwrap_or_default();
    ensure!(ok, "deploy: {deployed}");
    let version = deployed["version"].clone();
    ensure!(version.is_string(), "{deployed}");
    ensure!(
        now_ms() < t0 + 5_000,
        "deployed only after the timeout: a slower machine needs a longer one"
    );
    wait_state(&host, "swapped", Duration::from_secs(20), |v| {
        v["state"] == "ERROR"
    })
    .await?;
    let (_, meta) = host
        .get("/v1/pipelines/async-process/state/swapped?meta=true")
        .await?;
    ensure!(
        meta["plugin_version"] == version && timeouts(&meta["state"]) == 1,
        "the timer fired into {}, not the deployed {version}: {meta}",
        meta["plugin_version"]
    );
    Ok(())
}

/// A replay rebuilds timers too. Processes whose timeout passed long ago
/// (their timers fired in the live pipeline) and processes whose timeout
/// is still ahead are rebuilt from the input: the rebuild sets their
/// timers again, fires the past ones into the rebuilt states (each ERROR
/// once, at its instant), and its pending timers replace the live ones at
/// the switch-over — each of those fires once afterwards, not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_rebuilds_timers_and_replaces_the_pending_ones() -> Result<()> {
    const TOKEN: &str = "replay-admin";
    const TIMEOUT: i64 = 6_000;
    let config = timed_config(TIMEOUT as u64)?;
    ensure!(config.contains("[http]\n"), "the example has no [http]");
    let host =
        Host::start(&config.replacen("[http]\n", &format!("[http]\nadmin_token = {TOKEN:?}\n"), 1))
            .await?;
    let t0 = now_ms();
    let past: Vec<Value> = (0..20)
        .map(|i| {
            execution(
                &format!("o{i}"),
                &format!("old{i:02}"),
                t0 - 60_000 + i,
                "STARTED",
            )
        })
        .collect();
    let ahead: Vec<Value> = (0..20)
        .map(|i| execution(&format!("n{i}"), &format!("new{i:02}"), t0 + i, "STARTED"))
        .collect();
    produce(&host, &past).await?;
    produce(&host, &ahead).await?;
    host.wait_caught_up("async-process", Duration::from_secs(30))
        .await?;
    wait_state(&host, "old19", Duration::from_secs(20), |v| {
        v["state"] == "ERROR"
    })
    .await?;
    let r = host
        .http
        .post(format!("{}/v1/pipelines/async-process/replay", host.url))
        .bearer_auth(TOKEN)
        .body(json!({ "from": "beginning" }).to_string())
        .send()
        .await?;
    ensure!(r.status().as_u16() == 202, "replay: {}", r.status());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, p) = host.get("/v1/pipelines/async-process/replay").await?;
        if p["phase"] == "done" {
            break;
        }
        ensure!(p["phase"] != "failed", "{p}");
        ensure!(Instant::now() < deadline, "replay did not finish: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        now_ms() < t0 + TIMEOUT,
        "the replay ended after the pending timers fell due: the test proves nothing"
    );
    for i in 0..20 {
        let key = format!("old{i:02}");
        let v = state(&host, &key).await?;
        ensure!(
            v["state"] == "ERROR"
                && timeouts(&v) == 1
                && v["lastUpdate"] == t0 - 60_000 + i + TIMEOUT,
            "{key}: rebuilt without its timer: {v}"
        );
        let key = format!("new{i:02}");
        let (_, pending) = host
            .get(&format!("/v1/pipelines/async-process/timers/{key}"))
            .await?;
        ensure!(
            pending.as_array().map(Vec::len) == Some(1) && pending[0]["at_ms"] == t0 + i + TIMEOUT,
            "{key}: pending after the replay: {pending}"
        );
    }
    let text = host.metrics().await?;
    let pending: f64 = samples(&text, "eddy_timers_pending")?
        .iter()
        .map(|(_, v)| v)
        .sum();
    ensure!(
        pending == 20.0,
        "{pending} timers pending after the switch-over"
    );
    for i in 0..20 {
        let key = format!("new{i:02}");
        let v = wait_state(&host, &key, Duration::from_secs(30), |v| {
            v["state"] == "ERROR"
        })
        .await?;
        ensure!(timeouts(&v) == 1, "{key}: {v}");
    }
    // Let anything fired twice be folded, then look again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    host.wait_caught_up("async-process", Duration::from_secs(30))
        .await?;
    for i in 0..20 {
        let key = format!("new{i:02}");
        let v = state(&host, &key).await?;
        ensure!(timeouts(&v) == 1, "{key} timed out twice: {v}");
    }
    Ok(())
}
