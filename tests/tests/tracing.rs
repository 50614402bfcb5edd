//! A trace crosses the pipelines: a record produced with a W3C
//! `traceparent` is folded by the aggregator, whose changelog record the
//! router pipeline reads, whose emitted record goes on — each record
//! carrying the trace, each pipeline's spans exported over OTLP/HTTP to a
//! real receiver (OpenTelemetry's own protobuf classes, `tests/otlp/`), the
//! parent of each from the record it read. A record without a context gets
//! one at the producer endpoint; a dead-lettered event's span is an error
//! and its log line names the trace.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::{Host, async_process_config, execution, free_port, root, wait_port};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const BAD_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// The OTLP receiver, stopped when dropped.
struct Receiver {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Result<(Receiver, u16)> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("spans.jsonl");
        let port = free_port()?;
        let child = Command::new("python3")
            .arg(root().join("tests/otlp/receiver.py"))
            .arg(port.to_string())
            .arg(&out)
            .spawn()
            .context(
                "cannot start the OTLP receiver (scripts/setup.sh installs opentelemetry-proto)",
            )?;
        wait_port(port, Duration::from_secs(20))?;
        Ok((
            Receiver {
                child,
                out,
                _dir: dir,
            },
            port,
        ))
    }

    fn spans(&self) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).context("a span line"))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record of a topic, all partitions.
async fn records(host: &Host, topic: &str) -> Result<Vec<Value>> {
    let (status, v) = host
        .get(&format!("/v1/topics/{topic}/records?limit=1000"))
        .await?;
    ensure!(status == 200, "{topic}: {status} {v}");
    Ok(v["records"]
        .as_array()
        .or_else(|| v.as_array())
        .cloned()
        .unwrap_or_default())
}

/// (trace id, span id) of a record's `traceparent`.
fn context(record: &Value) -> Option<(String, String)> {
    let tp = record["headers"]["traceparent"].as_str()?;
    let parts: Vec<&str> = tp.split('-').collect();
    match parts.as_slice() {
        ["00", trace, span, "01"] => Some(((*trace).to_owned(), (*span).to_owned())),
        _ => None,
    }
}

fn named<'a>(spans: &'a [Value], name: &str, trace: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["name"] == name && s["trace_id"] == trace)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_crosses_the_pipelines_and_each_span_is_exported_under_its_parent() -> Result<()> {
    let (receiver, port) = Receiver::start()?;
    let config = format!(
        "{}\n[tracing]\notlp_endpoint = \"http://127.0.0.1:{port}\"\nservice_name = \"eddy-test\"\n",
        async_process_config()?
    );
    let host = Host::start(&config).await?;
    let traced = json!({ "traceparent": format!("00-{TRACE}-{PARENT}-01") });
    host.produce(
        "async-process-execution",
        &json!({ "records": [
            { "value": execution("t1", "p-traced", 1_000, "ACCEPTED"), "headers": traced },
            { "value": execution("t2", "p-traced", 2_000, "REJECTED"), "headers": traced },
        ]}),
    )
    .await?;
    host.produce(
        "async-process-execution",
        &json!({ "value": execution("u1", "p-started", 1_000, "ACCEPTED") }),
    )
    .await?;
    host.produce(
        "async-process-execution",
        &json!({
            "value": execution("x1", "p-bad", 1_000, "EXPLODED"),
            "headers": { "traceparent": format!("00-{BAD_TRACE}-{PARENT}-01") },
        }),
    )
    .await?;
    host.wait_caught_up("async-process", T).await?;
    host.wait_caught_up("rejected-router", T).await?;

    // The producer endpoint started a trace for the record without one.
    let input = records(&host, "async-process-execution").await?;
    let started = input
        .iter()
        .find(|r| r["value"]["id"] == "u1")
        .and_then(context)
        .context("the record produced without a context got none")?;
    ensure!(started.0 != TRACE, "a new trace: {started:?}");

    // The records each pipeline produced carry the trace on.
    let changelog = records(&host, "async-process").await?;
    let (trace, agg_span) = changelog
        .iter()
        .filter(|r| r["key"] == "p-traced")
        .filter_map(context)
        .next_back()
        .context("the changelog record carries no traceparent")?;
    ensure!(trace == TRACE, "{trace}");
    let routed = records(&host, "rejected-process").await?;
    let (trace, router_span) = routed
        .iter()
        .filter_map(context)
        .find(|(t, _)| t == TRACE)
        .with_context(|| format!("no routed record of the trace: {routed:?}"))?;
    ensure!(trace == TRACE);

    // The spans, as the receiver got them (the exporter sends in batches).
    let deadline = Instant::now() + T;
    let spans = loop {
        let spans = receiver.spans()?;
        let have = |name: &str, trace: &str| !named(&spans, name, trace).is_empty();
        if named(&spans, "eddy.process async-process", TRACE).len() >= 2
            && have("eddy.process rejected-router", TRACE)
            && have("eddy.produce async-process-execution", &started.0)
            && have("eddy.process async-process", &started.0)
            && have("eddy.process async-process", BAD_TRACE)
        {
            break spans;
        }
        if Instant::now() > deadline {
            bail!("spans so far: {spans:#?}\n{}", host.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        spans.iter().all(|s| s["service"] == "eddy-test"),
        "service.name"
    );
    // Both events' spans are children of the producer's context.
    let aggregated = named(&spans, "eddy.process async-process", TRACE);
    ensure!(
        aggregated
            .iter()
            .all(|s| s["parent_span_id"] == PARENT && s["kind"] == 5),
        "consumer spans under the record's parent: {aggregated:#?}"
    );
    // The changelog record names the span of the event that made the state;
    // its phases are that span's children.
    let made = aggregated
        .iter()
        .find(|s| s["span_id"] == agg_span.as_str())
        .with_context(|| format!("no span {agg_span} among {aggregated:#?}"))?;
    for phase in [
        "eddy.decode",
        "eddy.plugin async-process-aggregator",
        "eddy.commit",
    ] {
        ensure!(
            spans
                .iter()
                .any(|s| s["name"] == phase && s["parent_span_id"] == made["span_id"]),
            "no {phase} under {made}"
        );
    }
    ensure!(made["attributes"]["eddy.key"] == "p-traced", "{made}");
    // The router read that changelog record: its span's parent is the
    // aggregator's, and the record it emitted names the router's span.
    let router = named(&spans, "eddy.process rejected-router", TRACE);
    ensure!(
        router
            .iter()
            .any(|s| s["parent_span_id"] == agg_span.as_str()
                && s["span_id"] == router_span.as_str()),
        "router span under {agg_span}, named by the routed record ({router_span}): {router:#?}"
    );
    // The started trace has its root at the producer endpoint: the span the
    // record names (a producer span, with no parent); the event's span is
    // its child.
    let produce = named(&spans, "eddy.produce async-process-execution", &started.0);
    ensure!(
        produce.iter().any(|s| s["span_id"] == started.1.as_str()
            && s["parent_span_id"] == ""
            && s["kind"] == 4),
        "{produce:#?}"
    );
    ensure!(
        named(&spans, "eddy.process async-process", &started.0)
            .iter()
            .any(|s| s["parent_span_id"] == started.1.as_str()),
        "the event's span is the root's child: {spans:#?}"
    );
    // The dead-lettered event's span is an error, and its log line names the trace.
    let bad = named(&spans, "eddy.process async-process", BAD_TRACE);
    ensure!(bad.iter().any(|s| s["status"] == 2), "{bad:#?}");
    ensure!(
        host.log()
            .lines()
            .any(|l| l.contains("event dead-lettered") && l.contains(BAD_TRACE)),
        "the dead-letter log line names the trace:\n{}",
        host.log()
    );
    Ok(())
}
