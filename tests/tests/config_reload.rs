//! Pipelines change while the host runs: a config reload (SIGHUP, or
//! `POST /v1/config/reload`) adds a pipeline with its own topic and mount,
//! changes one's topic, removes one — while an unchanged pipeline keeps
//! folding and its SSE stream stays open — and a config with several
//! problems is refused with every one of them listed, nothing changed. On
//! Kafka, a reload subscribes to a topic created for it, and a plugin
//! swapped in the config restarts its pipeline where its offsets stand.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::fold::execution_states;
use eddy_tests::kafka::{Broker, kafka_config};
use eddy_tests::{Host, async_process_config, execution, test_component, versioned_tags};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const ADMIN: &str = "reload-admin-token";

/// The AsyncProcess example with an admin token and `extra` pipelines.
fn config(extra: &str, keep_router: bool) -> Result<String> {
    let mut c = async_process_config()?.replace(
        "[http]\nlisten = \"127.0.0.1:8080\"\n",
        &format!("[http]\nlisten = \"127.0.0.1:8080\"\nadmin_token = \"{ADMIN}\"\n"),
    );
    ensure!(c.contains(ADMIN), "the example's [http] section moved");
    if !keep_router {
        let at = c
            .find("# Routes every REJECTED aggregate")
            .context("the example's router pipeline moved")?;
        c.truncate(at);
    }
    c.push_str(extra);
    Ok(c)
}

/// An audit pipeline folding `topic` with the same aggregator, mounted.
fn audit(topic: &str) -> String {
    format!(
        r#"
[[pipeline]]
name = "audit"
topic = "{topic}"
key_field = "asyncProcessId"
aggregator = "async-process-aggregator"

[pipeline.mount]
path = "/audit"
"#
    )
}

async fn reload(host: &Host, token: Option<&str>) -> Result<(u16, Value)> {
    let mut r = host.http.post(format!("{}/v1/config/reload", host.url));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

async fn pipelines(host: &Host) -> Result<Vec<String>> {
    let (status, v) = host.get("/v1/pipelines").await?;
    ensure!(status == 200, "/v1/pipelines answered {status}: {v}");
    let list = v.as_array().or_else(|| v["pipelines"].as_array());
    let mut names: Vec<String> = list
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// Polls `path` until `ok` holds for its (status, body).
async fn until(host: &Host, path: &str, ok: impl Fn(u16, &Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + T;
    loop {
        let (status, v) = host.get(path).await?;
        if ok(status, &v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{path} still answers {status}: {v}\n{}", host.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_are_added_changed_and_removed_while_the_host_runs() -> Result<()> {
    let host = Host::start(&config("", true)?).await?;
    let t = 1_700_000_000_000_i64;
    host.produce(
        "async-process-execution",
        &json!({ "key": "p1", "value": execution("e1", "p1", t, "ACCEPTED") }),
    )
    .await?;
    host.wait_caught_up("async-process", T).await?;
    ensure!(
        pipelines(&host).await? == ["async-process", "rejected-router"],
        "{:?}",
        pipelines(&host).await?
    );
    // A client of the pipeline every reload leaves alone.
    let mut sse = host.sse("/v1/pipelines/async-process/events", None).await?;

    // 1. SIGHUP adds a pipeline on a topic no pipeline read, with a mount.
    host.write_config(&config(&audit("audit-events"), true)?)?;
    let pid = host.pid().context("the host is not running")?;
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    ensure!(hup.success(), "kill -HUP failed");
    until(&host, "/v1/pipelines/audit", |s, _| s == 200).await?;
    ensure!(
        host.log().contains("config reloaded"),
        "the reload is logged:\n{}",
        host.log()
    );
    host.produce(
        "audit-events",
        &json!({ "records": [
            { "value": execution("x1", "a1", t, "ACCEPTED") },
            { "value": execution("x2", "a1", t + 10, "STARTED") },
        ]}),
    )
    .await?;
    host.wait_caught_up("audit", T).await?;
    let a1 = until(&host, "/audit/a1", |s, _| s == 200).await?;
    ensure!(execution_states(&a1) == ["ACCEPTED", "STARTED"], "{a1}");

    // The unchanged pipeline kept folding, and its stream kept going.
    host.produce(
        "async-process-execution",
        &json!({ "key": "p1", "value": execution("e2", "p1", t + 10, "STARTED") }),
    )
    .await?;
    let deadline = Instant::now() + T;
    loop {
        let ev = sse.next(T).await?;
        if ev.data["key"] == "p1" && ev.data["state"]["state"] == "STARTED" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no STARTED change on the stream opened before the reload"
        );
    }

    // 2. The admin route: the audit pipeline moves to another topic (read
    // from its beginning, its state kept), the router pipeline goes.
    host.write_config(&config(&audit("audit-events-2"), false)?)?;
    let (status, v) = reload(&host, None).await?;
    ensure!(
        status == 401,
        "reload without the admin token: {status} {v}"
    );
    let (status, v) = reload(&host, Some(ADMIN)).await?;
    ensure!(status == 200, "reload answered {status}: {v}");
    ensure!(
        v["changed"] == json!(["audit"])
            && v["removed"] == json!(["rejected-router"])
            && v["added"] == json!([])
            && v["unchanged"] == json!(["async-process"]),
        "{v}"
    );
    ensure!(
        pipelines(&host).await? == ["async-process", "audit"],
        "{:?}",
        pipelines(&host).await?
    );
    let (status, v) = host.get("/v1/pipelines/rejected-router").await?;
    ensure!(status == 404, "a removed pipeline is gone: {status} {v}");
    host.produce(
        "audit-events-2",
        &json!({ "value": execution("x3", "a1", t + 20, "DONE") }),
    )
    .await?;
    let a1 = until(&host, "/audit/a1", |_, v| execution_states(v).len() == 3).await?;
    ensure!(
        execution_states(&a1) == ["ACCEPTED", "STARTED", "DONE"],
        "the changed pipeline kept its state and read its new topic: {a1}"
    );
    // Events on the old topic are no longer read.
    host.produce(
        "audit-events",
        &json!({ "value": execution("x4", "a1", t + 30, "ERROR") }),
    )
    .await?;

    // 3. A config with several problems is refused whole, each named.
    let broken = config(
        &format!(
            "{}\n[[plugin]]\nname = \"ghost\"\npath = \"{}\"\n\n[[pipeline]]\nname = \"haunted\"\ntopic = \"ghost-events\"\nkey_field = \"id\"\nhandlers = [\"ghost\"]\n\n[[pipeline]]\nname = \"typed\"\ntopic = \"typed-events\"\nkey_field = \"id\"\nvalue_format = \"avro\"\nreader_schema = \"no-such-schema.avsc\"\naggregator = \"async-process-aggregator\"\n",
            audit("audit-events-2"),
            host.dir().join("no-such-plugin.wasm").display()
        ),
        false,
    )?
    .replace(
        &format!("admin_token = \"{ADMIN}\"\n"),
        &format!("admin_token = \"{ADMIN}\"\nsse_keepalive_secs = 3\n"),
    );
    host.write_config(&broken)?;
    let (status, v) = reload(&host, Some(ADMIN)).await?;
    ensure!(status == 422, "a broken config is refused: {status} {v}");
    let problems: Vec<&str> = v["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(problems.len() == 3, "three problems: {v}");
    let problems = problems.join("\n");
    for needle in [
        "[http] changed",
        "\"ghost\"",
        "no-such-plugin.wasm",
        "no-such-schema.avsc",
    ] {
        ensure!(problems.contains(needle), "problems name {needle}: {v}");
    }
    ensure!(
        pipelines(&host).await? == ["async-process", "audit"],
        "nothing changed: {:?}",
        pipelines(&host).await?
    );
    let (status, _) = host.get("/v1/pipelines/haunted").await?;
    ensure!(status == 404, "the refused pipeline is not there");
    host.produce(
        "async-process-execution",
        &json!({ "key": "p1", "value": execution("e3", "p1", t + 20, "DONE") }),
    )
    .await?;
    let p1 = until(&host, "/async-process/p1", |_, v| {
        execution_states(v).len() == 3
    })
    .await?;
    ensure!(
        execution_states(&p1) == ["ACCEPTED", "STARTED", "DONE"],
        "{p1}"
    );
    let a1 = until(&host, "/audit/a1", |s, _| s == 200).await?;
    ensure!(
        execution_states(&a1) == ["ACCEPTED", "STARTED", "DONE"],
        "the old topic's event was not read after the move: {a1}"
    );
    Ok(())
}

/// A pipeline of the `versioned` test aggregator on `topic`, with the
/// component at `path`.
fn versioned(topic: &str, path: &std::path::Path) -> String {
    format!(
        r#"
[[plugin]]
name = "versioned"
path = "{}"

[[pipeline]]
name = "counted"
topic = "{topic}"
key_field = "key"
aggregator = "versioned"
"#,
        path.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_reload_subscribes_to_a_new_topic_and_swaps_a_pipelines_plugin() -> Result<()> {
    let (v1, v2) = (
        test_component("versioned-v1")?,
        test_component("versioned-v2")?,
    );
    let broker = Broker::start()?;
    let base = kafka_config(&broker.addr, "reload", 2)?.replacen(
        "[http]\n",
        &format!("[http]\nadmin_token = {ADMIN:?}\n"),
        1,
    );
    let host = Host::start(&base).await?;

    // A topic nobody had made: the reload creates it (create_topics) and
    // the new pipeline's consumer joins its group.
    host.write_config(&format!("{base}{}", versioned("later-topic", &v1)))?;
    let (status, v) = reload(&host, Some(ADMIN)).await?;
    ensure!(
        status == 200 && v["added"] == json!(["counted"]),
        "{status} {v}"
    );
    for i in 0..3 {
        host.produce(
            "later-topic",
            &json!({ "key": "k", "value": { "key": "k", "id": format!("e{i}") } }),
        )
        .await?;
    }
    let k = until(&host, "/v1/pipelines/counted/state/k", |s, v| {
        s == 200 && versioned_tags(v).len() == 3
    })
    .await?;
    ensure!(
        versioned_tags(&k).iter().all(|(_, tag)| tag == "v1"),
        "v1 applied the first events: {k}"
    );

    // The config now names another build of the plugin: the pipeline
    // restarts with it, from where its committed offsets stand.
    host.write_config(&format!("{base}{}", versioned("later-topic", &v2)))?;
    let (status, v) = reload(&host, Some(ADMIN)).await?;
    ensure!(
        status == 200
            && v["changed"] == json!(["counted"])
            && v["unchanged"] == json!(["async-process", "rejected-router"]),
        "{status} {v}"
    );
    for i in 3..5 {
        host.produce(
            "later-topic",
            &json!({ "key": "k", "value": { "key": "k", "id": format!("e{i}") } }),
        )
        .await?;
    }
    let k = until(&host, "/v1/pipelines/counted/state/k", |s, v| {
        s == 200 && versioned_tags(v).len() >= 5
    })
    .await?;
    let want: Vec<(String, String)> = (0..5)
        .map(|i| (format!("e{i}"), if i < 3 { "v1" } else { "v2" }.to_owned()))
        .collect();
    ensure!(
        versioned_tags(&k) == want,
        "each event applied once, by the version running when it came: {k}"
    );
    Ok(())
}
