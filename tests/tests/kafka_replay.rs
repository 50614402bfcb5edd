//! Replays, shadow runs and dead-letter replays of a pipeline on a real
//! Kafka-protocol broker (tansu), fed by Confluent's Python producer: the
//! rebuild reads the topic through a consumer outside the pipeline's group,
//! swaps only a whole range, and never replaces the live state with less.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::kafka::{Broker, finish_producer, kafka_config, read_ledger};
use eddy_tests::{Host, test_component};
use futures_util::StreamExt;
use serde_json::{Value, json};

const TOPIC: &str = "events";
const TOKEN: &str = "kafka-replay-token";
const T: Duration = Duration::from_secs(240);

/// Per key, its records as (partition, offset, event id), in offset order.
type ByKey = BTreeMap<String, Vec<(i64, i64, String)>>;

/// One event as the versioned test aggregator records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Applied {
    id: String,
    tag: String,
    partition: i64,
    offset: i64,
}

/// A Kafka host running the versioned test aggregator (a copy of `version`,
/// so it can be replaced) over `events`, keyed by `asyncProcessId`.
fn config(broker: &Broker, group: &str, dir: &std::path::Path, version: &str) -> Result<String> {
    let live = dir.join("versioned.wasm");
    std::fs::copy(test_component(version)?, &live)?;
    Ok(format!(
        r#"[source]
kind = "kafka"
brokers = "{brokers}"
group_id = "{group}"
replay_stall_timeout_ms = 5000

[source.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"

[http]
admin_token = "{TOKEN}"

[[plugin]]
name = "versioned"
path = "{path}"

[[pipeline]]
name = "versioned"
topic = "{TOPIC}"
key_field = "asyncProcessId"
aggregator = "versioned"
"#,
        brokers = broker.addr,
        path = live.display(),
    ))
}

/// Every key's applied events (keys without a state are absent).
async fn states(host: &Host, keys: u64) -> Result<BTreeMap<String, Vec<Applied>>> {
    let got: Vec<Result<(String, u16, Value)>> =
        futures_util::stream::iter((0..keys).map(|k| format!("k{k:05}")))
            .map(|k| async move {
                let (status, v) = host
                    .get(&format!("/v1/pipelines/versioned/state/{k}"))
                    .await?;
                Ok((k, status, v))
            })
            .buffer_unordered(16)
            .collect()
            .await;
    let mut out = BTreeMap::new();
    for r in got {
        let (k, status, v) = r?;
        match status {
            200 => {
                let applied = v["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| Applied {
                        id: e[0].as_str().unwrap_or_default().to_owned(),
                        tag: e[1].as_str().unwrap_or_default().to_owned(),
                        partition: e[2].as_i64().unwrap_or(-1),
                        offset: e[3].as_i64().unwrap_or(-1),
                    })
                    .collect();
                out.insert(k, applied);
            }
            404 => {}
            s => bail!("GET state of {k} answered {s}: {v}"),
        }
    }
    Ok(out)
}

/// The topic as Confluent's consumer reads it: per key, (partition, offset, id).
fn topic_by_key(broker: &Broker) -> Result<ByKey> {
    let mut out: ByKey = BTreeMap::new();
    for r in broker.dump(TOPIC)? {
        let key = r["key"].as_str().context("record without key")?.to_owned();
        out.entry(key).or_default().push((
            r["partition"].as_i64().unwrap_or(-1),
            r["offset"].as_i64().unwrap_or(-1),
            r["value"]["id"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    for v in out.values_mut() {
        v.sort();
    }
    Ok(out)
}

/// Each state holds exactly the expected events of its key, once each, in
/// offset order, every one applied by a version whose tag `tag` accepts;
/// returns how many events it checked.
fn check(
    got: &BTreeMap<String, Vec<Applied>>,
    expected: &ByKey,
    tag: impl Fn(&Applied) -> bool,
) -> Result<usize> {
    let mut checked = 0;
    for (key, want) in expected {
        let have = got
            .get(key)
            .with_context(|| format!("key {key} has no state"))?;
        let have_ids: Vec<(i64, i64, &str)> = have
            .iter()
            .map(|a| (a.partition, a.offset, a.id.as_str()))
            .collect();
        let want_ids: Vec<(i64, i64, &str)> = want
            .iter()
            .map(|(p, o, id)| (*p, *o, id.as_str()))
            .collect();
        ensure!(
            have_ids == want_ids,
            "key {key}: applied {} events, the topic holds {} (first applied {:?}, first expected {:?})",
            have.len(),
            want.len(),
            have_ids.first(),
            want_ids.first()
        );
        if let Some(a) = have.iter().find(|a| !tag(a)) {
            bail!("key {key}: event {} applied by {}", a.id, a.tag);
        }
        checked += have.len();
    }
    ensure!(
        got.keys().all(|k| expected.contains_key(k)),
        "states of keys that have no events in the range: {:?}",
        got.keys()
            .filter(|k| !expected.contains_key(*k))
            .collect::<Vec<_>>()
    );
    Ok(checked)
}

async fn start_replay(host: &Host, body: &Value) -> Result<()> {
    let r = host
        .http
        .post(format!("{}/v1/pipelines/versioned/replay", host.url))
        .bearer_auth(TOKEN)
        .body(body.to_string())
        .send()
        .await?;
    let status = r.status().as_u16();
    ensure!(status == 202, "replay {body}: {status} {}", r.text().await?);
    Ok(())
}

/// Waits for the replay to end; returns its last progress.
async fn replay_end(host: &Host) -> Result<Value> {
    let deadline = Instant::now() + T;
    loop {
        let (_, p) = host.get("/v1/pipelines/versioned/replay").await?;
        if p["phase"] == "done" || p["phase"] == "failed" {
            return Ok(p);
        }
        ensure!(Instant::now() < deadline, "replay did not finish: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn produce_all(
    broker: &Broker,
    first: u64,
    events: u64,
    keys: u64,
    ledger: &std::path::Path,
) -> Result<()> {
    let p = broker.produce(TOPIC, first, events, keys, 0, ledger)?;
    let summary = tokio::task::spawn_blocking(move || finish_producer(p)).await??;
    ensure!(summary["acked"] == events, "{summary}");
    Ok(())
}

/// Waits until the pipeline's group has committed the whole topic (the lag
/// tool reads the true end of each partition).
fn wait_applied(broker: &Broker, group: &str) -> Result<()> {
    broker.wait_lag_zero(&format!("{group}.versioned"), TOPIC, T)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_kafka_rebuilds_every_state_from_the_topic_while_events_arrive() -> Result<()> {
    const KEYS: u64 = 200;
    let broker = Broker::start()?;
    broker.create_topic(TOPIC, 3)?;
    let dir = tempfile::tempdir()?;
    let ledger = dir.path().join("ledger.jsonl");
    let host = Host::start(&config(&broker, "kr1", dir.path(), "versioned-v1")?).await?;
    produce_all(&broker, 0, 20_000, KEYS, &ledger).await?;
    wait_applied(&broker, "kr1")?;
    let before = states(&host, KEYS).await?;
    let checked = check(&before, &topic_by_key(&broker)?, |a| a.tag == "v1")?;
    ensure!(
        checked == 20_000,
        "{checked} events checked before the replay"
    );

    // The fix goes live; the stored states still say v1 until the replay.
    let r = host
        .http
        .put(format!("{}/v1/plugins/versioned", host.url))
        .bearer_auth(TOKEN)
        .body(std::fs::read(test_component("versioned-v2")?)?)
        .send()
        .await?;
    ensure!(r.status().is_success(), "deploy v2: {}", r.status());
    start_replay(&host, &json!({ "from": "beginning" })).await?;
    // More events while it runs; queries never see a missing or smaller state.
    let more = broker.produce(TOPIC, 20_000, 5_000, KEYS, 2_500, &ledger)?;
    let deadline = Instant::now() + T;
    let mut observed = 0;
    loop {
        let (_, p) = host.get("/v1/pipelines/versioned/replay").await?;
        for k in [7u64, 99, 150] {
            let key = format!("k{k:05}");
            let (status, s) = host
                .get(&format!("/v1/pipelines/versioned/state/{key}"))
                .await?;
            ensure!(
                status == 200,
                "{key} must stay available during the replay: {status}"
            );
            let n = s["events"].as_array().map_or(0, Vec::len);
            let was = before.get(&key).map_or(0, Vec::len);
            ensure!(n >= was, "{key}: a smaller state was served: {n} < {was}");
            observed += 1;
        }
        if p["phase"] == "done" {
            ensure!(p["processed"].as_u64() >= Some(20_000), "{p}");
            ensure!(
                p["partitions"].as_array().map(Vec::len) == Some(3)
                    && p["partitions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .all(|s| s["start"] == 0 && s["done"] == true && s["next"] == s["until"]),
                "every partition read from 0 to the live offset: {p}"
            );
            break;
        }
        ensure!(p["phase"] != "failed", "{p}");
        ensure!(Instant::now() < deadline, "replay did not finish: {p}");
    }
    ensure!(observed > 0);
    let summary = tokio::task::spawn_blocking(move || finish_producer(more)).await??;
    ensure!(summary["acked"] == 5_000, "{summary}");
    wait_applied(&broker, "kr1")?;

    // Every event of the topic once, all applied by v2 (rebuilt or live).
    let after = states(&host, KEYS).await?;
    let checked = check(&after, &topic_by_key(&broker)?, |a| a.tag == "v2")?;
    ensure!(
        checked == 25_000,
        "{checked} events checked after the replay"
    );
    ensure!(read_ledger(&ledger)?.len() == 25_000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_kafka_from_an_offset_and_from_a_timestamp_while_events_arrive() -> Result<()> {
    const KEYS: u64 = 50;
    let broker = Broker::start()?;
    broker.create_topic(TOPIC, 2)?;
    let dir = tempfile::tempdir()?;
    let ledger = dir.path().join("ledger.jsonl");
    let host = Host::start(&config(&broker, "kr2", dir.path(), "versioned-v1")?).await?;
    produce_all(&broker, 0, 1_500, KEYS, &ledger).await?;
    wait_applied(&broker, "kr2")?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    tokio::time::sleep(Duration::from_millis(50)).await;
    produce_all(&broker, 1_500, 1_000, KEYS, &ledger).await?;
    wait_applied(&broker, "kr2")?;

    // From the cut (the broker's own offsets-for-times), while 500 more
    // events arrive: afterwards each state holds exactly the events
    // produced after the cut, each once.
    start_replay(&host, &json!({ "from": "timestamp", "at": cut })).await?;
    let more = broker.produce(TOPIC, 2_500, 500, KEYS, 1_000, &ledger)?;
    let p = replay_end(&host).await?;
    ensure!(
        p["phase"] == "done" && p["processed"].as_u64() >= Some(1_000),
        "{p}"
    );
    let summary = tokio::task::spawn_blocking(move || finish_producer(more)).await??;
    ensure!(summary["acked"] == 500, "{summary}");
    wait_applied(&broker, "kr2")?;
    let after_cut: std::collections::HashSet<String> = read_ledger(&ledger)?
        .into_iter()
        .skip(1_500)
        .map(|(id, ..)| id)
        .collect();
    ensure!(after_cut.len() == 1_500);
    let topic = topic_by_key(&broker)?;
    let expected: ByKey = topic
        .iter()
        .map(|(k, v)| {
            let v: Vec<_> = v
                .iter()
                .filter(|e| after_cut.contains(&e.2))
                .cloned()
                .collect();
            (k.clone(), v)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let checked = check(&states(&host, KEYS).await?, &expected, |a| a.tag == "v1")?;
    ensure!(checked == 1_500, "{checked}");

    // From offset 400 in every partition, while 500 more events arrive.
    start_replay(&host, &json!({ "from": "offset", "at": 400 })).await?;
    let more = broker.produce(TOPIC, 3_000, 500, KEYS, 1_000, &ledger)?;
    let p = replay_end(&host).await?;
    ensure!(p["phase"] == "done", "{p}");
    ensure!(
        p["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["start"] == 400 && s["done"] == true),
        "{p}"
    );
    let summary = tokio::task::spawn_blocking(move || finish_producer(more)).await??;
    ensure!(summary["acked"] == 500, "{summary}");
    wait_applied(&broker, "kr2")?;
    let expected: ByKey = topic_by_key(&broker)?
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().filter(|e| e.1 >= 400).collect::<Vec<_>>()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let n: usize = expected.values().map(Vec::len).sum();
    // 3,500 events over two partitions: all but the first 400 of each.
    ensure!(n == 3_500 - 800, "{n} events from offset 400 on");
    let checked = check(&states(&host, KEYS).await?, &expected, |a| a.tag == "v1")?;
    ensure!(checked == n, "{checked} of {n}");

    // A range with no events on a topic that has some is refused, and
    // nothing changes.
    let kept = states(&host, KEYS).await?;
    start_replay(&host, &json!({ "from": "offset", "at": 1_000_000 })).await?;
    let p = replay_end(&host).await?;
    ensure!(
        p["phase"] == "failed"
            && p["error"]
                .as_str()
                .unwrap_or_default()
                .contains("no events"),
        "{p}"
    );
    ensure!(
        states(&host, KEYS).await? == kept,
        "a refused replay changed state"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_whose_broker_stops_fails_and_leaves_the_live_state() -> Result<()> {
    const KEYS: u64 = 300;
    let mut broker = Broker::start()?;
    broker.create_topic(TOPIC, 3)?;
    let dir = tempfile::tempdir()?;
    let ledger = dir.path().join("ledger.jsonl");
    let host = Host::start(&config(&broker, "kr3", dir.path(), "versioned-v1")?).await?;
    produce_all(&broker, 0, 60_000, KEYS, &ledger).await?;
    wait_applied(&broker, "kr3")?;
    let before = states(&host, KEYS).await?;
    ensure!(before.values().map(Vec::len).sum::<usize>() == 60_000);

    start_replay(&host, &json!({ "from": "beginning" })).await?;
    // Stop the broker once the rebuild has read part of the topic.
    let deadline = Instant::now() + T;
    loop {
        let (_, p) = host.get("/v1/pipelines/versioned/replay").await?;
        ensure!(
            p["phase"] == "rebuilding",
            "the rebuild ended before the broker stopped: {p}"
        );
        if p["processed"].as_u64() > Some(0) {
            break;
        }
        ensure!(Instant::now() < deadline, "the rebuild read nothing: {p}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.kill();
    let p = replay_end(&host).await?;
    let error = p["error"].as_str().unwrap_or_default();
    ensure!(p["phase"] == "failed", "{p}");
    ensure!(
        error.contains("no records for") && error.contains("partition"),
        "the reason names what was missing: {error}"
    );
    ensure!(
        p["processed"].as_u64() < Some(60_000),
        "the rebuild read everything before the broker stopped: {p}"
    );
    ensure!(
        states(&host, KEYS).await? == before,
        "a failed replay changed the live state"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_on_kafka_reports_exactly_the_keys_a_candidate_changes() -> Result<()> {
    const KEYS: u64 = 40;
    let broker = Broker::start()?;
    broker.create_topic(TOPIC, 2)?;
    let dir = tempfile::tempdir()?;
    let ledger = dir.path().join("ledger.jsonl");
    let host = Host::start(&config(&broker, "kr4", dir.path(), "versioned-v1")?).await?;
    let marked = ["k00003", "k00017", "k00031"];
    let p = broker.produce_marking(TOPIC, 0, 800, KEYS, 0, &marked, &ledger)?;
    let summary = tokio::task::spawn_blocking(move || finish_producer(p)).await??;
    ensure!(summary["acked"] == 800, "{summary}");
    wait_applied(&broker, "kr4")?;
    let before = states(&host, KEYS).await?;
    let (_, progress) = host.get("/v1/pipelines/versioned").await?;

    let r = host
        .http
        .post(format!("{}/v1/plugins/versioned/shadow", host.url))
        .bearer_auth(TOKEN)
        .body(std::fs::read(test_component("versioned-fix")?)?)
        .send()
        .await?;
    ensure!(r.status().is_success(), "shadow: {}", r.status());
    let report: Value = r.json().await?;
    ensure!(
        report["events"] == 800 && report["keys"] == KEYS,
        "the whole topic read through Kafka: {report}"
    );
    let mut changed: Vec<&str> = report["changed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["key"].as_str())
        .collect();
    changed.sort_unstable();
    ensure!(changed == marked, "exactly the marked keys: {changed:?}");
    ensure!(report["changed_count"] == 3, "{report}");
    // Nothing live moved.
    ensure!(states(&host, KEYS).await? == before);
    ensure!(host.get("/v1/pipelines/versioned").await?.1["offsets"] == progress["offsets"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_replay_on_kafka_applies_the_corrected_event_once() -> Result<()> {
    const PROCESS: &str = "p-dead";
    let broker = Broker::start()?;
    broker.create_topic("async-process-execution", 3)?;
    broker.create_topic("async-process", 3)?;
    broker.create_topic("rejected-process", 1)?;
    let config = kafka_config(&broker.addr, "kr5", 3)?
        .replace("[http]\n", &format!("[http]\nadmin_token = \"{TOKEN}\"\n"));
    let mut host = Host::start(&config).await?;
    let exec = |id: &str, time: i64, state: &str| json!({ "key": PROCESS, "value": eddy_tests::execution(id, PROCESS, time, state) });
    // A good event, a poison one (an unknown state), and a good one after it.
    for record in [
        exec("e1", 1, "STARTED"),
        exec("e2", 2, "EXPLODED"),
        exec("e3", 3, "STARTED"),
    ] {
        host.produce("async-process-execution", &record).await?;
    }
    let deadline = Instant::now() + T;
    let letter = loop {
        let (_, list) = host.get("/v1/pipelines/async-process/dead-letters").await?;
        if let Some(dl) = list["dead_letters"].as_array().and_then(|l| l.first()) {
            break dl.clone();
        }
        ensure!(Instant::now() < deadline, "no dead letter: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(letter["topic"] == "async-process-execution", "{letter}");
    let id = letter["id"].as_u64().context("dead letter id")?;

    // Replayed with a corrected value, through the host's replay topic.
    let fixed = eddy_tests::execution("e2", PROCESS, 2, "DONE");
    let r = host
        .http
        .post(format!(
            "{}/v1/pipelines/async-process/dead-letters/{id}/replay",
            host.url
        ))
        .json(&json!({ "value": fixed }))
        .send()
        .await?;
    ensure!(r.status().is_success(), "replay: {}", r.status());
    let executions = |s: &Value| -> Vec<String> {
        s["executions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect()
    };
    let deadline = Instant::now() + T;
    loop {
        let (_, s) = host.get(&format!("/async-process/{PROCESS}")).await?;
        if executions(&s).len() == 3 {
            ensure!(s["state"] == "STARTED", "{s}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the replayed event was not applied: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once: after a restart the replay topic is not read again.
    host.terminate()?;
    host.restart().await?;
    host.produce("async-process-execution", &exec("e4", 4, "DONE"))
        .await?;
    let deadline = Instant::now() + T;
    loop {
        let (_, s) = host.get(&format!("/async-process/{PROCESS}")).await?;
        let mut ids = executions(&s);
        if ids.len() >= 4 {
            ids.sort();
            ensure!(ids == ["e1", "e2", "e3", "e4"], "each event once: {s}");
            break;
        }
        ensure!(Instant::now() < deadline, "e4 was not applied: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, list) = host.get("/v1/pipelines/async-process/dead-letters").await?;
    ensure!(
        list["dead_letters"].as_array().is_some_and(Vec::is_empty),
        "{list}"
    );
    Ok(())
}
