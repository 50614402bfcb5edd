//! Operations: `/metrics` moves as expected during a scenario (parsed with
//! the reference Prometheus text parser, not by substring), and `/readyz`.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use eddy_tests::{Host, async_process_config, execution, root};
use serde_json::{Value, json};

/// One metric sample.
struct Sample {
    name: String,
    labels: Value,
    value: f64,
}

/// Scrapes `/metrics` and parses it with `prometheus_client`'s parser.
async fn scrape(host: &Host) -> Result<Vec<Sample>> {
    let r = host
        .http
        .get(format!("{}/metrics", host.url))
        .send()
        .await?;
    ensure!(r.status() == 200, "/metrics answered {}", r.status());
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(ct.starts_with("text/plain"), "content type {ct}");
    let text = r.text().await?;
    let mut child = Command::new("python3")
        .arg(root().join("tests/ops/prom.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    Ok(parsed
        .into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap_or_default().to_owned(),
            labels: s["labels"].clone(),
            value: s["value"].as_f64().unwrap_or(f64::NAN),
        })
        .collect())
}

/// Sum of the samples named `name` whose labels include `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels[*k] == *v))
        .map(|s| s.value)
        .sum()
}

fn max(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_during_a_scenario_and_readyz_reports() -> Result<()> {
    let host = Host::start(&async_process_config()?).await?;
    let (status, ready) = host.get("/readyz").await?;
    ensure!(status == 200 && ready["ready"] == true, "{status} {ready}");

    // A burst: lag rises, then falls to zero.
    let mut max_lag = 0.0f64;
    for round in 0..5 {
        let records: Vec<Value> = (0..10_000)
            .map(|n| json!({ "value": execution(&format!("e{round}-{n}"), &format!("k{}", n % 500), n, "STARTED") }))
            .collect();
        host.produce("async-process-execution", &json!({ "records": records }))
            .await?;
        let during = scrape(&host).await?;
        max_lag = max_lag.max(max(&during, "eddy_consumer_lag_records"));
        if max_lag > 0.0 {
            break;
        }
    }
    ensure!(max_lag > 0.0, "lag never rose during a burst");
    // Bad data: one value that is not JSON (decode), one the plugin refuses (invalid).
    let (status, _) = host
        .post(
            "/v1/topics/async-process-execution/records",
            json!({ "key": "k1", "value_base64": "bm90IGpzb24=" }).to_string(),
        )
        .await?;
    ensure!(status == 200);
    host.produce(
        "async-process-execution",
        &json!({ "value": { "id": "x", "asyncProcessId": "k2", "time": 1, "state": "EXPLODED" } }),
    )
    .await?;
    host.wait_caught_up("async-process", Duration::from_secs(120))
        .await?;
    let mut sse = host.sse("/v1/pipelines/async-process/events", None).await?;
    let _ = sse.next(Duration::from_millis(200)).await;

    let after = scrape(&host).await?;
    ensure!(
        max(&after, "eddy_consumer_lag_records") == 0.0,
        "lag falls back to 0"
    );
    let consumed = sum(
        &after,
        "eddy_events_consumed_total",
        &[("pipeline", "async-process")],
    );
    ensure!(consumed >= 10_002.0, "consumed {consumed}");
    let applied = sum(
        &after,
        "eddy_events_applied_total",
        &[("pipeline", "async-process")],
    );
    ensure!(
        (consumed - applied - 2.0).abs() < 0.5,
        "consumed {consumed}, applied {applied}"
    );
    ensure!(
        sum(
            &after,
            "eddy_dead_letters_total",
            &[("pipeline", "async-process"), ("stage", "decode")]
        ) == 1.0,
        "one decode dead letter"
    );
    let by_plugin = sum(
        &after,
        "eddy_dead_letters_total",
        &[("pipeline", "async-process"), ("stage", "aggregate")],
    );
    ensure!(
        by_plugin == 1.0,
        "one dead letter from the aggregator, got {by_plugin}"
    );
    ensure!(
        sum(
            &after,
            "eddy_plugin_failures_total",
            &[("plugin", "async-process-aggregator")]
        ) >= 1.0,
        "plugin failures counted"
    );
    ensure!(
        sum(
            &after,
            "eddy_batch_events_count",
            &[("pipeline", "async-process")]
        ) > 0.0,
        "batch histogram"
    );
    ensure!(
        sum(&after, "eddy_batch_duration_seconds_count", &[]) > 0.0,
        "batch duration histogram"
    );
    ensure!(
        sum(
            &after,
            "eddy_plugin_call_duration_seconds_count",
            &[("plugin", "async-process-aggregator")]
        ) > 0.0,
        "plugin call histogram"
    );
    ensure!(
        sum(
            &after,
            "eddy_http_requests_total",
            &[
                ("route", "/v1/topics/{topic}/records"),
                ("method", "POST"),
                ("status", "200")
            ]
        ) >= 2.0,
        "requests counted by route and status"
    );
    ensure!(
        sum(&after, "eddy_sse_clients", &[]) == 1.0,
        "one SSE client"
    );
    ensure!(
        sum(&after, "eddy_store_disk_bytes", &[]) > 0.0,
        "store size"
    );
    drop(sse);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = scrape(&host).await?;
        if sum(&now, "eddy_sse_clients", &[]) == 0.0 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the SSE client was never uncounted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn control_apis_create_topics_and_report_lag() -> Result<()> {
    let config = async_process_config()?.replacen(
        "[http]\n",
        "[http]\ntopic_naming = \"entity.event_type.version\"\n",
        1,
    );
    let host = Host::start(&config).await?;
    let (status, made) = host
        .post(
            "/v1/topics",
            json!({"name": "order.created.v1", "partitions": 3, "retention_ms": 86_400_000u64})
                .to_string(),
        )
        .await?;
    ensure!(status == 201 && made["created"] == true, "{status} {made}");
    let (status, again) = host
        .post(
            "/v1/topics",
            json!({"name": "order.created.v1", "partitions": 3}).to_string(),
        )
        .await?;
    ensure!(
        status == 200 && again["created"] == false,
        "{status} {again}"
    );
    for (body, needle) in [
        (
            json!({"name": "orders", "partitions": 3}),
            "entity.event_type.version",
        ),
        (json!({"name": "order.created.v1x"}), "naming rule"),
        (
            json!({"name": "order.created.v2", "retention_ms": 40u64 * 86_400_000}),
            "30 days",
        ),
        (
            json!({"name": "order.created.v3", "partitions": 0}),
            "partitions",
        ),
        (
            json!({"name": "order.created.v4", "colour": "red"}),
            "colour",
        ),
    ] {
        let (status, err) = host.post("/v1/topics", body.to_string()).await?;
        ensure!(
            status == 422 && err["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{body}: {status} {err}"
        );
    }
    let (_, topics) = host.get("/v1/topics").await?;
    ensure!(
        topics["topics"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["name"] == "order.created.v1" && t["partitions"] == 3)),
        "{topics}"
    );
    host.produce(
        "async-process-execution",
        &json!({ "value": execution("l1", "k", 1, "STARTED") }),
    )
    .await?;
    host.wait_caught_up("async-process", Duration::from_secs(60))
        .await?;
    let (status, lag) = host.get("/v1/lag").await?;
    ensure!(status == 200, "{lag}");
    let p = lag["pipelines"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["pipeline"] == "async-process"))
        .context("async-process in /v1/lag")?;
    ensure!(
        p["lag"] == 0 && p["partitions"].as_array().map(Vec::len) == Some(12),
        "{p}"
    );
    let (status, err) = host.post("/v1/consumer/rebalance", "").await?;
    ensure!(
        status == 409,
        "rebalance on the embedded log: {status} {err}"
    );
    Ok(())
}

/// A paused pipeline reads nothing, also after a restart, while queries go
/// on; resumed, it reads on from where it stopped and folds every event
/// once.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_pipeline_reads_nothing_until_resumed_also_across_a_restart() -> Result<()> {
    const ADMIN: &str = "pause-admin";
    let config = async_process_config()?.replacen(
        "[http]\n",
        &format!("[http]\nadmin_token = \"{ADMIN}\"\n"),
        1,
    );
    let mut host = Host::start(&config).await?;
    let produce = async |host: &Host, n: u32| -> Result<()> {
        for i in 0..n {
            host.produce(
                "async-process-execution",
                &json!({ "value": execution(&format!("p{n}-{i}"), "k", i64::from(i) + 10 * i64::from(n), "STARTED") }),
            )
            .await?;
        }
        Ok(())
    };
    let executions = async |host: &Host| -> Result<usize> {
        let (status, v) = host.get("/async-process/k").await?;
        ensure!(status == 200, "GET k: {status} {v}");
        Ok(v["executions"].as_array().map_or(0, Vec::len))
    };
    let switch = async |host: &Host, verb: &str, token: Option<&str>| -> Result<(u16, Value)> {
        let mut r = host
            .http
            .post(format!("{}/v1/pipelines/async-process/{verb}", host.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await?;
        Ok((r.status().as_u16(), r.json().await?))
    };
    let progress = async |host: &Host| -> Result<Value> {
        let (status, v) = host.get("/v1/pipelines/async-process").await?;
        ensure!(status == 200, "{v}");
        Ok(v)
    };
    produce(&host, 1).await?;
    host.wait_caught_up("async-process", Duration::from_secs(60))
        .await?;
    ensure!(executions(&host).await? == 1);

    let (status, _) = switch(&host, "pause", None).await?;
    ensure!(status == 401, "pause without the admin token: {status}");
    let (status, v) = switch(&host, "pause", Some(ADMIN)).await?;
    ensure!(
        status == 200 && v["paused"] == true && v["idle"] == true,
        "pause: {status} {v}"
    );
    let r = host
        .http
        .post(format!("{}/v1/pipelines/nope/pause", host.url))
        .bearer_auth(ADMIN)
        .send()
        .await?;
    ensure!(
        r.status() == 404,
        "pause of an unknown pipeline: {}",
        r.status()
    );
    produce(&host, 3).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = progress(&host).await?;
    ensure!(
        p["paused"] == true && p["lag"] == 3 && executions(&host).await? == 1,
        "paused: {p}"
    );
    let paused_gauge = |samples: &[Sample]| {
        samples
            .iter()
            .find(|s| s.name == "eddy_pipeline_paused" && s.labels["pipeline"] == "async-process")
            .map(|s| s.value)
    };
    ensure!(
        paused_gauge(&scrape(&host).await?) == Some(1.0),
        "eddy_pipeline_paused"
    );

    // A restart keeps the pause.
    let status = host.terminate()?;
    ensure!(status.success(), "stopped with {status}");
    host.restart().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = progress(&host).await?;
    ensure!(
        p["paused"] == true && p["lag"] == 3 && executions(&host).await? == 1,
        "paused after a restart: {p}"
    );
    ensure!(
        host.log().contains("the pipeline is paused"),
        "the start names the pause:\n{}",
        host.log()
    );

    let (status, v) = switch(&host, "resume", Some(ADMIN)).await?;
    ensure!(
        status == 200 && v["paused"] == false,
        "resume: {status} {v}"
    );
    host.wait_caught_up("async-process", Duration::from_secs(60))
        .await?;
    let p = progress(&host).await?;
    ensure!(p["paused"] == false && p["lag"] == 0, "resumed: {p}");
    ensure!(executions(&host).await? == 4, "every event folded once");
    ensure!(
        paused_gauge(&scrape(&host).await?) == Some(0.0),
        "eddy_pipeline_paused"
    );
    Ok(())
}
