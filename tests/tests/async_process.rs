//! The seed-000 AsyncProcess scenario, end to end, on the embedded log:
//! the real binary, the real plugin components, a real HTTP/SSE client.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::time::Duration;

use anyhow::{Result, ensure};
use eddy_tests::fold::execution_states;
use eddy_tests::{Host, async_process_config, changes_in, execution, position};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

async fn create(host: &Host, description: &str) -> Result<String> {
    let (status, v) = host
        .post(
            "/async-process",
            json!({ "description": description }).to_string(),
        )
        .await?;
    ensure!(status == 200, "POST /async-process answered {status}: {v}");
    ensure!(v["status"] == "OK", "unexpected answer {v}");
    Ok(v["id"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_process_scenario_works_as_the_seed_describes() -> Result<()> {
    let host = Host::start(&async_process_config()?).await?;

    // POST /async-process creates a process with an ACCEPTED execution.
    let a = create(&host, "import customers").await?;
    let b = create(&host, "export invoices").await?;
    ensure!(a != b && !a.is_empty(), "ids must be fresh: {a} {b}");
    host.wait_caught_up("async-process", T).await?;
    let (status, pa) = host.get(&format!("/async-process/{a}")).await?;
    ensure!(
        status == 200,
        "GET /async-process/{a} answered {status}: {pa}"
    );
    ensure!(pa["id"] == a.as_str() && pa["state"] == "ACCEPTED", "{pa}");
    ensure!(pa["description"] == "import customers", "{pa}");
    let created_at = pa["lastUpdate"].as_i64().unwrap_or_default();
    ensure!(created_at > 0, "lastUpdate must be set: {pa}");

    // Live updates for process a, opened before the executions are produced.
    let mut sse = host.sse(&format!("/async-process/sse/{a}"), None).await?;
    let first = sse.next(T).await?;
    ensure!(
        first.data["state"] == "ACCEPTED",
        "SSE starts with the current state: {first:?}"
    );

    // Drive executions through the producer endpoint: one request each, as
    // separate services would, plus one batch request.
    let t = created_at;
    for (i, state) in ["STARTED", "ERROR", "RETRY"].iter().enumerate() {
        host.produce(
            "async-process-execution",
            &json!({ "key": a, "value": execution(&format!("a{i}"), &a, t + 10 * (i as i64 + 1), state) }),
        )
        .await?;
    }
    host.produce(
        "async-process-execution",
        &json!({ "records": [
            { "value": execution("a3", &a, t + 40, "STARTED") },
            { "value": execution("a4", &a, t + 50, "DONE") },
            { "value": execution("b1", &b, t + 60, "REJECTED") },
        ]}),
    )
    .await?;
    host.wait_caught_up("async-process", T).await?;

    let (_, pa) = host.get(&format!("/async-process/{a}")).await?;
    ensure!(
        execution_states(&pa) == ["ACCEPTED", "STARTED", "ERROR", "RETRY", "STARTED", "DONE"],
        "executions ordered by time: {pa}"
    );
    ensure!(pa["state"] == "DONE" && pa["lastUpdate"] == t + 50, "{pa}");
    let (_, pb) = host.get(&format!("/async-process/{b}")).await?;
    ensure!(pb["state"] == "REJECTED", "{pb}");

    // An execution that arrives late (older time) is placed in order and does
    // not change the current state.
    host.produce(
        "async-process-execution",
        &json!({ "value": execution("a-late", &a, t + 5, "WAITING") }),
    )
    .await?;
    host.wait_caught_up("async-process", T).await?;
    let (_, pa2) = host.get(&format!("/async-process/{a}")).await?;
    ensure!(
        execution_states(&pa2).get(1).map(String::as_str) == Some("WAITING"),
        "{pa2}"
    );
    ensure!(pa2["state"] == "DONE", "{pa2}");

    // SSE delivered every committed change of a, in order, with growing ids.
    let mut seen = Vec::new();
    let mut last_id = position(&first.id)?;
    let mut events = Vec::new();
    while seen.last().map(|s: &Vec<String>| s.len()) != Some(7) {
        let e = sse.next(T).await?;
        let id = position(&e.id)?;
        ensure!(
            id.len() == last_id.len()
                && id.iter().zip(&last_id).all(|(n, was)| n >= was)
                && id.iter().sum::<u64>() > last_id.iter().sum::<u64>(),
            "SSE ids must move forward: {last_id:?} then {id:?}"
        );
        last_id = id;
        ensure!(
            e.data["id"] == a.as_str(),
            "per-key stream only carries {a}: {e:?}"
        );
        seen.push(execution_states(&e.data));
        events.push(e);
    }
    for pair in seen.windows(2) {
        if let [x, y] = pair {
            ensure!(
                y.len() >= x.len(),
                "updates arrive in commit order: {seen:?}"
            );
        }
    }

    // Resume with Last-Event-ID: exactly the changes after that id.
    let resume_from = events.first().map(|e| e.id.clone()).unwrap_or_default();
    let mut resumed = host
        .sse(&format!("/async-process/sse/{a}"), Some(&resume_from))
        .await?;
    for expected in events.iter().skip(1) {
        let e = resumed.next(T).await?;
        ensure!(
            e.id == expected.id,
            "resumed stream replays {} next, got {}",
            expected.id,
            e.id
        );
        ensure!(e.data == expected.data, "same data after resume");
    }

    // The all-keys stream with Last-Event-ID 0 replays everything committed.
    let mut all = host
        .sse("/v1/pipelines/async-process/events", Some("0"))
        .await?;
    let e = all.next(T).await?;
    ensure!(
        changes_in(&e.id)? == 1 && e.data["key"].is_string() && e.data["state"].is_object(),
        "{e:?}"
    );

    // latest: most recent first; a changed last (late execution), b before it.
    let (_, latest) = host.get("/async-process/latest").await?;
    let ids: Vec<&str> = latest
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str())
        .collect();
    ensure!(ids == [a.as_str(), b.as_str()], "latest order {ids:?}");
    let (_, one) = host
        .get("/v1/pipelines/async-process/latest?limit=1")
        .await?;
    ensure!(one.as_array().map(Vec::len) == Some(1), "{one}");

    // REJECTED processes reach the rejected-process topic, with an id header.
    host.wait_caught_up("rejected-router", T).await?;
    let (_, rejected) = host.get("/v1/topics/rejected-process/records").await?;
    let recs = rejected["records"].as_array().cloned().unwrap_or_default();
    ensure!(recs.len() == 1, "exactly b was rejected: {rejected}");
    let r = recs.first().cloned().unwrap_or_default();
    ensure!(
        r["key"] == b.as_str() && r["value"]["state"] == "REJECTED",
        "{r}"
    );
    ensure!(
        r["headers"]["eddy-id"]
            .as_str()
            .is_some_and(|h| h.starts_with("async-process/")),
        "deterministic id header: {r}"
    );
    // The changelog topic carries every new aggregate.
    let (_, changelog) = host
        .get("/v1/topics/async-process/records?limit=1000")
        .await?;
    ensure!(
        changelog["records"]
            .as_array()
            .is_some_and(|v| v.len() >= 3),
        "{changelog}"
    );

    // Unknown ids and pipelines are 404 with a JSON error.
    let (status, v) = host.get("/async-process/no-such-process").await?;
    ensure!(status == 404 && v["error"].is_string(), "{status} {v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_clean_restart() -> Result<()> {
    let mut host = Host::start(&async_process_config()?).await?;
    let a = create(&host, "survivor").await?;
    host.wait_caught_up("async-process", T).await?;
    let status = host.terminate()?;
    ensure!(
        status.success(),
        "SIGTERM must exit 0, got {status}\n{}",
        host.log()
    );
    host.restart().await?;
    let (status, pa) = host.get(&format!("/async-process/{a}")).await?;
    ensure!(
        status == 200 && pa["description"] == "survivor",
        "{status} {pa}"
    );
    // No event is applied again after the restart.
    host.wait_caught_up("async-process", T).await?;
    let (_, pa) = host.get(&format!("/async-process/{a}")).await?;
    ensure!(execution_states(&pa).len() == 1, "{pa}");
    Ok(())
}

/// The SSE history lives in memory: after a restart, a client resuming
/// from an older `Last-Event-ID` gets every key that changed since, once,
/// with its current state, in change order — then live changes as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_after_a_restart_sends_each_changed_key_once() -> Result<()> {
    let mut host = Host::start(&async_process_config()?).await?;
    let a = create(&host, "first").await?;
    host.wait_caught_up("async-process", T).await?;
    let b = create(&host, "second").await?;
    host.wait_caught_up("async-process", T).await?;
    let (_, pa) = host.get(&format!("/async-process/{a}")).await?;
    let t = pa["lastUpdate"].as_i64().unwrap_or_default();
    host.produce(
        "async-process-execution",
        &json!({ "value": execution("a-2", &a, t + 10, "STARTED") }),
    )
    .await?;
    host.wait_caught_up("async-process", T).await?;
    // Before the restart the history is exact: a, b, then a again.
    let mut exact = host
        .sse("/v1/pipelines/async-process/events", Some("0"))
        .await?;
    let mut keys = Vec::new();
    let mut after_all = String::new();
    for _ in 0..3 {
        let e = exact.next(T).await?;
        keys.push((
            changes_in(&e.id)?,
            e.data["key"].as_str().unwrap_or_default().to_owned(),
        ));
        after_all = e.id;
    }
    ensure!(
        keys == [(1, a.clone()), (2, b.clone()), (3, a.clone())],
        "every change, in commit order: {keys:?}"
    );
    drop(exact);

    let status = host.terminate()?;
    ensure!(status.success(), "SIGTERM must exit 0\n{}", host.log());
    host.restart().await?;
    let mut resumed = host
        .sse("/v1/pipelines/async-process/events", Some("0"))
        .await?;
    // Each key whose last change is in the gap, once, with its current
    // state (a key's partition's changes in order): a and b.
    let first = resumed.next(T).await?;
    let second = resumed.next(T).await?;
    let mut got: Vec<(String, Value)> = [&first, &second]
        .iter()
        .map(|e| {
            (
                e.data["key"].as_str().unwrap_or_default().to_owned(),
                e.data["state"].clone(),
            )
        })
        .collect();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    ensure!(
        got.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>() == want,
        "a and b once each: {first:?} {second:?}"
    );
    let a_state = got
        .iter()
        .find(|(k, _)| *k == a)
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    ensure!(
        execution_states(&a_state) == ["ACCEPTED", "STARTED"],
        "a with its current state: {a_state}"
    );
    ensure!(
        second.id == after_all,
        "caught up to where the history stood: {} vs {after_all}",
        second.id
    );
    ensure!(
        resumed.next(Duration::from_millis(500)).await.is_err(),
        "nothing else was missed"
    );
    // A key's own stream resumes the same way.
    let mut per_key = host
        .sse(&format!("/async-process/sse/{a}"), Some("0"))
        .await?;
    let e = per_key.next(T).await?;
    ensure!(execution_states(&e.data).len() == 2, "{e:?}");
    // Then live changes follow.
    let (_, pb) = host.get(&format!("/async-process/{b}")).await?;
    let tb = pb["lastUpdate"].as_i64().unwrap_or_default();
    host.produce(
        "async-process-execution",
        &json!({ "value": execution("b-2", &b, tb + 10, "DONE") }),
    )
    .await?;
    let live = resumed.next(T).await?;
    ensure!(
        changes_in(&live.id)? == 4
            && live.data["key"] == b.as_str()
            && live.data["state"]["state"] == "DONE",
        "{live:?}"
    );
    Ok(())
}
