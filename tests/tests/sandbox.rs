//! Plugins cannot hurt the host: time and memory limits, traps, oversized
//! output, retries with backoff, poison isolation, quarantine, and the
//! dead-letter API to inspect, replay and delete what failed.

use std::time::Duration;

use anyhow::{Result, ensure};
use eddy_tests::{Host, test_component};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

fn config() -> Result<String> {
    let probe = test_component("sandbox-probe")?;
    Ok(format!(
        r#"
[http]
admin_token = "{ADMIN}"

[source]
kind = "embedded"
[[source.topics]]
name = "probe"
partitions = 1
[[source.topics]]
name = "probe-q"
partitions = 1

[[plugin]]
name = "probe"
path = "{probe}"
timeout_ms = 200
memory_mb = 16
max_output_bytes = 65536
max_retries = 3
retry_backoff_ms = 40

[[pipeline]]
name = "probe"
topic = "probe"
key_field = "key"
aggregator = "probe"
dlq_topic = "probe-dlq"
max_timers = 5

[[pipeline]]
name = "quarantined"
topic = "probe-q"
key_field = "key"
aggregator = "probe"
on_dead_letter = "quarantine"
"#,
        probe = probe.display()
    ))
}

const ADMIN: &str = "sandbox-admin";

fn ev(key: &str, id: &str, action: &str) -> Value {
    json!({ "value": { "key": key, "id": id, "action": action, "size": 200_000 } })
}

async fn applied(host: &Host, pipeline: &str, key: &str) -> Result<Vec<String>> {
    let (status, v) = host
        .get(&format!("/v1/pipelines/{pipeline}/state/{key}"))
        .await?;
    if status == 404 {
        return Ok(Vec::new());
    }
    Ok(v["applied"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect())
}

async fn dead_letters(host: &Host, pipeline: &str, query: &str) -> Result<Vec<Value>> {
    let (_, v) = host
        .get(&format!("/v1/pipelines/{pipeline}/dead-letters{query}"))
        .await?;
    Ok(v["dead_letters"].as_array().cloned().unwrap_or_default())
}

/// A record emitted to a topic that cannot exist fails its event alone, also
/// when the call that folded it carried other keys (contract 0.2.0 folds
/// many keys per call): the other keys' events apply and emit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emit_to_an_invalid_topic_fails_its_event_alone_in_a_call_of_many_keys() -> Result<()> {
    let host = Host::start(&config()?).await?;
    let records: Vec<Value> = [
        ("k1", "a1", "emit"),
        ("k2", "b1", "emit-bad"),
        ("k3", "c1", "emit"),
        ("k2", "b2", "ok"),
    ]
    .iter()
    .map(|(key, id, action)| ev(key, id, action))
    .collect();
    host.produce("probe", &json!({ "records": records }))
        .await?;
    host.wait_caught_up("probe", T).await?;
    ensure!(applied(&host, "probe", "k1").await? == ["a1"]);
    ensure!(applied(&host, "probe", "k3").await? == ["c1"]);
    ensure!(applied(&host, "probe", "k2").await? == ["b2"]);
    let dls = dead_letters(&host, "probe", "").await?;
    ensure!(
        dls.len() == 1
            && dls[0]["key"] == "k2"
            && dls[0]["error_class"] == "invalid"
            && dls[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("invalid topic")),
        "{dls:?}"
    );
    let (_, out) = host.get("/v1/topics/probe-out/records").await?;
    let mut keys: Vec<&str> = out["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["key"].as_str())
        .collect();
    keys.sort_unstable();
    ensure!(keys == ["a1", "c1"], "{out}");
    Ok(())
}

/// A timer request the contract rules out fails its event alone, naming
/// the value; a pipeline's cap on pending timers holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_timer_requests_and_the_pipeline_timer_cap_are_dead_letters() -> Result<()> {
    let host = Host::start(&config()?).await?;
    let sized = |key: &str, id: &str, n: usize| json!({"value": {"key": key, "id": id, "action": "timers", "size": n}});
    let records = vec![
        ev("k1", "a1", "timer-bad"),
        ev("k1", "a2", "ok"),
        sized("k2", "b1", 4),
        sized("k3", "c1", 2),
        sized("k2", "b2", 4),
    ];
    host.produce("probe", &json!({ "records": records }))
        .await?;
    host.wait_caught_up("probe", T).await?;
    ensure!(applied(&host, "probe", "k1").await? == ["a2"]);
    let bad = dead_letters(&host, "probe", "?error_class=bad_timer").await?;
    ensure!(
        bad.len() == 1
            && bad[0]["key"] == "k1"
            && bad[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("100000000000000000") && e.contains("probe")),
        "{bad:?}"
    );
    // k2's 4 timers fit (b2 sets the same names again); k3's 2 more would
    // make 6 of at most 5.
    ensure!(applied(&host, "probe", "k2").await? == ["b1", "b2"]);
    let (_, timers) = host.get("/v1/pipelines/probe/timers/k2").await?;
    ensure!(timers.as_array().map(Vec::len) == Some(4), "{timers}");
    let capped = dead_letters(&host, "probe", "?error_class=timer_limit").await?;
    ensure!(
        capped.len() == 1
            && capped[0]["key"] == "k3"
            && capped[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("max_timers is 5")),
        "{capped:?}"
    );
    ensure!(applied(&host, "probe", "k3").await?.is_empty());
    let text = host.metrics().await?;
    ensure!(
        eddy_tests::samples(&text, "eddy_timers_pending")?
            .iter()
            .any(|(l, v)| l.contains("probe") && *v == 4.0),
        "{text}"
    );
    Ok(())
}

/// A timer of a quarantined key that fires is held with the key's later
/// events, and comes back after its replayed dead letter — still a timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_of_a_quarantined_key_waits_and_fires_after_its_replayed_dead_letter() -> Result<()>
{
    let host = Host::start(&config()?).await?;
    host.produce(
        "probe-q",
        &json!({ "records": [ev("q", "q1", "timer-soon"), ev("q", "q2", "fail")] }),
    )
    .await?;
    host.wait_caught_up("quarantined", T).await?;
    // The timer fires and is held behind the dead letter.
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, timers) = host.get("/v1/pipelines/quarantined/timers/q").await?;
        if timers == json!([]) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "never fired: {timers}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, state) = host.get("/v1/pipelines/quarantined/state/q").await?;
    ensure!(
        state["applied"] == json!(["q1"]) && state.get("ticks").is_none(),
        "held: {state}"
    );
    let dls = dead_letters(&host, "quarantined", "").await?;
    ensure!(dls.len() == 1, "{dls:?}");
    let id = dls
        .first()
        .and_then(|d| d["id"].as_u64())
        .unwrap_or_default();
    let (status, v) = host
        .post(
            &format!("/v1/pipelines/quarantined/dead-letters/{id}/replay"),
            json!({ "value": { "key": "q", "id": "q2", "action": "ok" } }).to_string(),
        )
        .await?;
    ensure!(status == 200 && v["replayed"] == 1, "{status} {v}");
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, state) = host.get("/v1/pipelines/quarantined/state/q").await?;
        if state["ticks"].as_array().map(Vec::len) == Some(1) {
            ensure!(
                state["applied"] == json!(["q1", "q2"])
                    && state["ticks"][0]
                        .as_str()
                        .is_some_and(|t| t.starts_with("soon@")),
                "{state}"
            );
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the held timer never folded: {state}\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        dead_letters(&host, "quarantined", "").await?.is_empty(),
        "resolved, and the timer was no event"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_and_dead_lettered() -> Result<()> {
    let host = Host::start(&config()?).await?;
    let records: Vec<Value> = [
        ("ok1", "ok"),
        ("loop", "loop"),
        ("ok2", "ok"),
        ("alloc", "alloc"),
        ("ok3", "ok"),
        ("panic", "panic"),
        ("ok4", "ok"),
        ("big", "big"),
        ("ok5", "ok"),
    ]
    .iter()
    .map(|(id, action)| ev("h", id, action))
    .collect();
    host.produce("probe", &json!({ "records": records }))
        .await?;
    host.wait_caught_up("probe", T).await?;
    ensure!(
        applied(&host, "probe", "h").await? == ["ok1", "ok2", "ok3", "ok4", "ok5"],
        "the well-behaved events around the hostile ones apply, in order"
    );
    let dls = dead_letters(&host, "probe", "").await?;
    let classes: Vec<(&str, &str)> = dls
        .iter()
        .map(|d| {
            (
                d["key"].as_str().unwrap_or_default(),
                d["error_class"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    ensure!(
        classes
            == [
                ("h", "timeout"),
                ("h", "memory_limit"),
                ("h", "trap"),
                ("h", "output_too_large")
            ],
        "one dead letter per hostile event, classified: {classes:?}"
    );
    let panic = dls.get(2).cloned().unwrap_or_default();
    ensure!(
        panic["plugin"] == "probe" && panic["plugin_version"].is_string(),
        "{panic}"
    );
    ensure!(
        panic["error"].as_str().is_some_and(|e| e.contains("probe")),
        "{panic}"
    );
    // Each dead letter was also published to the pipeline's DLQ topic.
    let (_, dlq) = host.get("/v1/topics/probe-dlq/records").await?;
    let published: Vec<&str> = dlq["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["value"]["error_class"].as_str())
        .collect();
    ensure!(
        published == ["timeout", "memory_limit", "trap", "output_too_large"],
        "DLQ topic: {published:?}"
    );
    // The host stayed healthy and keeps processing.
    host.produce("probe", &ev("h", "after", "ok")).await?;
    host.wait_caught_up("probe", T).await?;
    ensure!(
        applied(&host, "probe", "h")
            .await?
            .last()
            .map(String::as_str)
            == Some("after")
    );
    ensure!(host.get("/healthz").await?.0 == 200);

    // Filters, get one, delete one.
    let traps = dead_letters(&host, "probe", "?error_class=trap").await?;
    ensure!(traps.len() == 1, "{traps:?}");
    let id = traps
        .first()
        .and_then(|d| d["id"].as_u64())
        .unwrap_or_default();
    let (status, one) = host
        .get(&format!("/v1/pipelines/probe/dead-letters/{id}"))
        .await?;
    ensure!(
        status == 200 && one["error_class"] == "trap",
        "{status} {one}"
    );
    let r = host
        .http
        .delete(format!("{}/v1/pipelines/probe/dead-letters/{id}", host.url))
        .send()
        .await?;
    ensure!(r.status().is_success(), "delete: {}", r.status());
    let (status, _) = host
        .get(&format!("/v1/pipelines/probe/dead-letters/{id}"))
        .await?;
    ensure!(status == 404, "deleted dead letter is gone");
    ensure!(dead_letters(&host, "probe", "").await?.len() == 3);
    let (status, _) = host.get("/v1/pipelines/probe/dead-letters/x").await?;
    ensure!(status == 400, "non-numeric id");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_and_poison_is_isolated() -> Result<()> {
    let host = Host::start(&config()?).await?;
    host.produce("probe", &ev("r", "r1", "retry-twice")).await?;
    host.produce("probe", &ev("rf", "rf1", "retry-forever"))
        .await?;
    host.wait_caught_up("probe", T).await?;
    ensure!(
        applied(&host, "probe", "r").await? == ["r1"],
        "applied once after two retryable failures"
    );
    let dls = dead_letters(&host, "probe", "?key=rf").await?;
    ensure!(dls.len() == 1, "{dls:?}");
    let dl = dls.first().cloned().unwrap_or_default();
    ensure!(
        dl["error_class"] == "retryable" && dl["attempts"] == 4,
        "1 call + 3 retries: {dl}"
    );
    let delays: Vec<u64> = dl["retry_delays_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    ensure!(delays.len() == 3, "{delays:?}");
    ensure!(
        delays.windows(2).all(|w| w.first() <= w.get(1)) && delays.first() < delays.last(),
        "exponential backoff: {delays:?}"
    );
    ensure!(
        dead_letters(&host, "probe", "?key=r").await?.is_empty(),
        "r1 was not dead-lettered"
    );

    // One bad event in a batch of 500: exactly that one is dead-lettered.
    let records: Vec<Value> = (0..500)
        .map(|i| {
            ev(
                "p",
                &format!("p{i:03}"),
                if i == 277 { "fail" } else { "ok" },
            )
        })
        .collect();
    host.produce("probe", &json!({ "records": records }))
        .await?;
    host.wait_caught_up("probe", T).await?;
    let got = applied(&host, "probe", "p").await?;
    let want: Vec<String> = (0..500)
        .filter(|i| *i != 277)
        .map(|i| format!("p{i:03}"))
        .collect();
    ensure!(got == want, "499 applied in order ({} applied)", got.len());
    let poison = dead_letters(&host, "probe", "?key=p").await?;
    ensure!(
        poison.len() == 1 && poison.first().is_some_and(|d| d["offset"].is_u64()),
        "{poison:?}"
    );
    ensure!(
        poison
            .first()
            .is_some_and(|d| d["error"].as_str().is_some_and(|e| e.contains("p277"))),
        "{poison:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_holds_a_key_until_its_dead_letter_is_replayed() -> Result<()> {
    let host = Host::start(&config()?).await?;
    host.produce("probe-q", &ev("q", "q1", "ok")).await?;
    host.produce("probe-q", &ev("q", "q2", "fail")).await?;
    host.produce("probe-q", &ev("q", "q3", "ok")).await?;
    host.produce(
        "probe-q",
        &json!({ "records": [ev("q", "q4", "ok"), ev("other", "o1", "ok")] }),
    )
    .await?;
    host.wait_caught_up("quarantined", T).await?;
    ensure!(
        applied(&host, "quarantined", "q").await? == ["q1"],
        "later events of q wait"
    );
    ensure!(
        applied(&host, "quarantined", "other").await? == ["o1"],
        "other keys flow"
    );
    let dls = dead_letters(&host, "quarantined", "").await?;
    ensure!(dls.len() == 1, "{dls:?}");
    let id = dls
        .first()
        .and_then(|d| d["id"].as_u64())
        .unwrap_or_default();

    // Replay with the value fixed: q2 applies, then q3 and q4 in order.
    let (status, v) = host
        .post(
            &format!("/v1/pipelines/quarantined/dead-letters/{id}/replay"),
            json!({ "value": { "key": "q", "id": "q2", "action": "ok" } }).to_string(),
        )
        .await?;
    ensure!(status == 200 && v["replayed"] == 1, "{status} {v}");
    let deadline = std::time::Instant::now() + T;
    loop {
        let got = applied(&host, "quarantined", "q").await?;
        if got == ["q1", "q2", "q3", "q4"] {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "released in order, got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        dead_letters(&host, "quarantined", "").await?.is_empty(),
        "resolved"
    );
    // The key is no longer quarantined.
    host.produce("probe-q", &ev("q", "q5", "ok")).await?;
    host.wait_caught_up("quarantined", T).await?;
    ensure!(
        applied(&host, "quarantined", "q")
            .await?
            .last()
            .map(String::as_str)
            == Some("q5")
    );

    // Replaying a filtered set: two poison events, replayed unchanged, fail again.
    host.produce(
        "probe",
        &json!({ "records": [ev("z", "z1", "fail"), ev("z", "z2", "fail")] }),
    )
    .await?;
    host.wait_caught_up("probe", T).await?;
    let (status, v) = host
        .post(
            "/v1/pipelines/probe/dead-letters/replay",
            json!({ "key": "z" }).to_string(),
        )
        .await?;
    ensure!(status == 200 && v["replayed"] == 2, "{status} {v}");
    let deadline = std::time::Instant::now() + T;
    loop {
        let again = dead_letters(&host, "probe", "?key=z").await?;
        let ids: Vec<u64> = again.iter().filter_map(|d| d["id"].as_u64()).collect();
        if ids.len() == 2 && ids.iter().all(|i| *i > 2) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "replayed letters fail again: {again:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = host
        .post(
            "/v1/pipelines/probe/dead-letters/replay",
            json!({ "bogus": 1 }).to_string(),
        )
        .await?;
    ensure!(status == 400, "unknown filter field is refused");
    Ok(())
}

/// A replay folds as the live worker does: a retryable failure is retried
/// (not skipped), a poison event is dead-lettered again — replacing the
/// live dead letter of the same event, not adding a second — and in
/// quarantine mode the key's later events stay parked, once each, until
/// that dead letter is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_keeps_failures_as_dead_letters_and_holds_quarantined_keys() -> Result<()> {
    let host = Host::start(&config()?).await?;
    host.produce(
        "probe-q",
        &json!({ "records": [
            ev("q", "q1", "ok"), ev("q", "q2", "fail"), ev("q", "q3", "ok"), ev("q", "q4", "ok"),
            ev("other", "o1", "ok"), ev("other", "o2", "retry-twice"),
        ] }),
    )
    .await?;
    host.wait_caught_up("quarantined", T).await?;
    ensure!(applied(&host, "quarantined", "q").await? == ["q1"]);
    ensure!(applied(&host, "quarantined", "other").await? == ["o1", "o2"]);
    let before = dead_letters(&host, "quarantined", "").await?;
    ensure!(before.len() == 1, "{before:?}");

    let r = host
        .http
        .post(format!("{}/v1/pipelines/quarantined/replay", host.url))
        .bearer_auth(ADMIN)
        .body(r#"{"from":"beginning"}"#)
        .send()
        .await?;
    ensure!(r.status().as_u16() == 202, "replay: {}", r.status());
    let deadline = std::time::Instant::now() + T;
    let progress = loop {
        let (_, p) = host.get("/v1/pipelines/quarantined/replay").await?;
        if p["phase"] == "done" || p["phase"] == "failed" {
            break p;
        }
        ensure!(std::time::Instant::now() < deadline, "{p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(
        progress["phase"] == "done" && progress["processed"] == 6 && progress["failed"] == 1,
        "{progress}"
    );
    // o2 was retried in the rebuild as in the live pipeline.
    ensure!(applied(&host, "quarantined", "other").await? == ["o1", "o2"]);
    ensure!(
        applied(&host, "quarantined", "q").await? == ["q1"],
        "q3 and q4 still wait"
    );
    let after = dead_letters(&host, "quarantined", "").await?;
    ensure!(
        after.len() == 1,
        "one dead letter for q2, not two: {after:?}"
    );
    let letter = after.first().cloned().unwrap_or_default();
    ensure!(
        letter["key"] == "q"
            && letter["offset"] == before[0]["offset"]
            && letter["id"] != before[0]["id"],
        "the rebuild's own letter for the same event: {letter}"
    );

    // Replaying it releases q3 and q4 once each, in order.
    let id = letter["id"].as_u64().unwrap_or_default();
    let (status, v) = host
        .post(
            &format!("/v1/pipelines/quarantined/dead-letters/{id}/replay"),
            json!({ "value": { "key": "q", "id": "q2", "action": "ok" } }).to_string(),
        )
        .await?;
    ensure!(status == 200 && v["replayed"] == 1, "{status} {v}");
    let deadline = std::time::Instant::now() + T;
    loop {
        let got = applied(&host, "quarantined", "q").await?;
        if got.len() >= 4 {
            ensure!(got == ["q1", "q2", "q3", "q4"], "{got:?}");
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "released: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    host.wait_caught_up("quarantined", T).await?;
    ensure!(applied(&host, "quarantined", "q").await? == ["q1", "q2", "q3", "q4"]);
    ensure!(dead_letters(&host, "quarantined", "").await?.is_empty());
    Ok(())
}

/// With JSON logs, every processing line — a plugin's own log line, a retry,
/// the isolation of a failed batch, a dead letter, a quarantine — carries the
/// pipeline, the key, the plugin and the offset as top-level fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_pipeline_key_plugin_and_offset() -> Result<()> {
    let host = Host::start_with_env(
        &config()?,
        &[("EDDY_LOG_FORMAT", "json"), ("RUST_LOG", "info,eddy=debug")],
    )
    .await?;
    // Two events carry a trace context: their lines name the trace.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = |mut record: Value| {
        record["headers"] = json!({ "traceparent": format!("00-{trace}-00f067aa0ba902b7-01") });
        record
    };
    host.produce(
        "probe",
        &json!({ "records": [
            traced(ev("j", "l1", "log")), ev("j", "a1", "ok"), traced(ev("j", "f1", "fail")), ev("j", "a2", "ok")
        ] }),
    )
    .await?;
    host.produce("probe", &ev("r", "r1", "retry-twice")).await?;
    host.produce("probe-q", &ev("q", "qf", "fail")).await?;
    host.wait_caught_up("probe", T).await?;
    host.wait_caught_up("quarantined", T).await?;
    ensure!(applied(&host, "probe", "r").await? == ["r1"]);

    let log = host.log();
    let mut seen: Vec<String> = Vec::new();
    for (n, line) in log
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("log line {} is not JSON ({e}): {line}", n + 1))?;
        let message = v["message"].as_str().unwrap_or_default();
        let processing = [
            "probe l1 says hello",
            "retrying",
            "batch failed; isolating",
            "event dead-lettered",
            "key quarantined",
        ];
        if !processing.contains(&message) {
            continue;
        }
        for field in ["pipeline", "key", "plugin"] {
            ensure!(
                v[field].as_str().is_some_and(|s| !s.is_empty()),
                "log line {} lacks {field}: {line}",
                n + 1
            );
        }
        ensure!(
            v["offset"].is_u64(),
            "log line {} lacks offset: {line}",
            n + 1
        );
        ensure!(v["plugin"] == "probe", "{line}");
        if message == "probe l1 says hello" {
            ensure!(
                v["trace_id"] == trace,
                "the plugin's line names the trace: {line}"
            );
        }
        if message == "event dead-lettered" && v["trace_id"] == trace {
            seen.push("a traced dead letter".to_owned());
        }
        seen.push(message.to_owned());
    }
    for want in [
        "probe l1 says hello",
        "retrying",
        "batch failed; isolating",
        "event dead-lettered",
        "key quarantined",
        "a traced dead letter",
    ] {
        ensure!(
            seen.iter().any(|m| m == want),
            "no {want:?} line in the log:\n{log}"
        );
    }
    Ok(())
}
