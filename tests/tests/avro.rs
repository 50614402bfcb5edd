//! Avro and the schema registry: Confluent's Python clients against the
//! embedded registry, mixed v1/v2 events folding, poison values in the dead
//! letters, a reader schema refused at start, Avro over Kafka, and a host
//! reading its schemas from an external registry that goes away or answers
//! errors for a while.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::kafka::{Broker, kafka_config};
use eddy_tests::{Host, async_process_config, b64decode, b64encode, root, with_avro};
use serde_json::{Value, json};

const SUBJECT: &str = "async-process-execution-value";
const T: Duration = Duration::from_secs(120);

/// Runs Confluent's clients (`tests/registry/confluent_registry.py`).
fn confluent(registry: &str, eddy: &str, brokers: Option<&str>) -> Result<Value> {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/registry/confluent_registry.py"))
        .args(["--registry", registry, "--eddy", eddy, "--schemas"])
        .arg(root().join("examples/async-process/schemas"));
    if let Some(b) = brokers {
        cmd.args(["--brokers", b]);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "Confluent's clients failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Per key, the execution ids in time order.
fn expected(events: &[Value]) -> BTreeMap<String, Vec<(i64, String)>> {
    let mut by_key: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for e in events {
        by_key
            .entry(e["asyncProcessId"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push((
                e["time"].as_i64().unwrap_or_default(),
                e["id"].as_str().unwrap_or_default().to_owned(),
            ));
    }
    for v in by_key.values_mut() {
        v.sort();
    }
    by_key
}

/// Each key's state holds exactly its expected executions, in time order;
/// returns how many events it checked (an empty expectation is an error: a
/// check of nothing proves nothing).
async fn check_folds(
    host: &Host,
    expected: &BTreeMap<String, Vec<(i64, String)>>,
) -> Result<usize> {
    ensure!(!expected.is_empty(), "no events to check");
    let mut checked = 0;
    for (key, events) in expected {
        let (status, state) = host.get(&format!("/async-process/{key}")).await?;
        ensure!(status == 200, "{key}: {status} {state}");
        let ids: Vec<&str> = state["executions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["id"].as_str())
            .collect();
        let want: Vec<&str> = events.iter().map(|(_, id)| id.as_str()).collect();
        ensure!(ids == want, "{key}: executions {ids:?}, expected {want:?}");
        checked += ids.len();
    }
    Ok(checked)
}

#[tokio::test(flavor = "multi_thread")]
async fn confluent_clients_use_the_embedded_registry_and_mixed_versions_fold() -> Result<()> {
    let host = Host::start(&with_avro(&async_process_config()?, "execution-v2.avsc")).await?;
    let registry = format!("{}/registry", host.url);
    let summary = tokio::task::block_in_place(|| confluent(&registry, &host.url, None))?;
    host.wait_caught_up("async-process", T).await?;
    let mut events = summary["events"].as_array().cloned().unwrap_or_default();
    ensure!(
        events.len() == 60,
        "Confluent's serializer sent 60 events: {summary}"
    );
    events.push(json!({"id": "json-1", "asyncProcessId": "p00", "time": 3_000_000}));
    let checked = check_folds(&host, &expected(&events)).await?;
    ensure!(checked == 61, "{checked} events checked");
    // v2 events keep their worker; v1 events read with v2 get its default.
    let (_, p01) = host.get("/async-process/p01").await?;
    ensure!(
        p01["executions"].as_array().map(Vec::len) == Some(5),
        "{p01}"
    );
    no_dead_letters(&host, "after folding").await?;
    // The API speaks Confluent's content type and error bodies.
    let r = host
        .http
        .get(format!("{registry}/subjects/nope/versions"))
        .send()
        .await?;
    ensure!(r.status() == 404);
    ensure!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            == Some("application/vnd.schemaregistry.v1+json")
    );
    let body: Value = r.json().await?;
    ensure!(body["error_code"] == 40401, "{body}");
    let (status, body) = host.get("/registry/subjects/x/versions/zero").await?;
    ensure!(
        status == 422 && body["error_code"] == 42202,
        "{status} {body}"
    );
    let (status, body) = host.get("/registry/schemas/types").await?;
    ensure!(
        status == 200 && body == json!(["AVRO", "PROTOBUF", "JSON"]),
        "{body}"
    );
    let (status, body) = host
        .post(
            &format!("/registry/compatibility/subjects/{SUBJECT}/versions/latest?verbose=true"),
            json!({"schema": r#"{"type":"record","name":"eddy.example.AsyncProcessExecution","fields":[{"name":"id","type":"int"}]}"#}).to_string(),
        )
        .await?;
    ensure!(
        status == 200
            && body["is_compatible"] == false
            && body["messages"].as_array().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    // The registry survives a restart.
    let mut host = host;
    ensure!(host.terminate()?.success());
    host.restart().await?;
    let (status, versions) = host
        .get(&format!("/registry/subjects/{SUBJECT}/versions"))
        .await?;
    ensure!(status == 200 && versions == json!([1, 2]), "{versions}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_values_go_to_the_dead_letters_and_the_rest_is_processed() -> Result<()> {
    let host = Host::start(&with_avro(&async_process_config()?, "execution-v1.avsc")).await?;
    let v1 =
        std::fs::read_to_string(root().join("examples/async-process/schemas/execution-v1.avsc"))?;
    let (status, id) = host
        .post(
            &format!("/registry/subjects/{SUBJECT}/versions"),
            json!({ "schema": v1 }).to_string(),
        )
        .await?;
    ensure!(status == 200 && id["id"] == 1, "{status} {id}");
    // A value that does not fit the schema is refused up front, naming the field.
    let (status, refused) = host
        .post(
            "/v1/topics/async-process-execution/records",
            json!({"value": {"id": "x", "asyncProcessId": "k", "time": "soon", "state": "DONE"}})
                .to_string(),
        )
        .await?;
    ensure!(
        status == 422
            && refused["error"]
                .as_str()
                .is_some_and(|e| e.contains("$.time") && e.contains("long")),
        "{status} {refused}"
    );
    // Eddy encodes a good one; take its bytes to forge the poison ones.
    host.produce(
        "async-process-execution",
        &json!({"value": {"id": "good-0", "asyncProcessId": "k1", "time": 1, "state": "STARTED"}}),
    )
    .await?;
    host.wait_caught_up("async-process", T).await?;
    let (_, back) = host
        .get("/v1/topics/async-process-execution/records?limit=100")
        .await?;
    let good = back["records"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(|r| r["value_base64"].as_str())
        .context("the encoded record")?
        .to_owned();
    let good_bytes = b64decode(&good)?;
    let mut bad_magic = good_bytes.clone();
    if let Some(b) = bad_magic.first_mut() {
        *b = 7;
    }
    let mut unknown_id = good_bytes.clone();
    if let Some(b) = unknown_id.get_mut(4) {
        *b = 99;
    }
    let truncated = good_bytes
        .get(..good_bytes.len() - 3)
        .unwrap_or_default()
        .to_vec();
    let random: Vec<u8> = (0..40u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("magic", random),
        ("magic byte", bad_magic),
        ("not registered", unknown_id),
        ("does not decode", truncated),
        ("too short", vec![0, 0]),
    ];
    let mut records: Vec<Value> = poison
        .iter()
        .map(|(_, b)| json!({ "key": "k1", "value_base64": b64encode(b) }))
        .collect();
    records.push(
        json!({"value": {"id": "good-1", "asyncProcessId": "k1", "time": 2, "state": "DONE"}}),
    );
    let (status, answer) = host
        .post(
            "/v1/topics/async-process-execution/records",
            json!({ "records": records }).to_string(),
        )
        .await?;
    ensure!(status == 200, "{status} {answer}");
    host.wait_caught_up("async-process", T).await?;
    let (_, dead) = host.get("/v1/pipelines/async-process/dead-letters").await?;
    let letters = dead["dead_letters"].as_array().cloned().unwrap_or_default();
    ensure!(
        letters.len() == poison.len(),
        "{} dead letters: {dead}",
        letters.len()
    );
    for (reason, bytes) in &poison {
        ensure!(
            letters
                .iter()
                .any(|l| l["error"].as_str().is_some_and(|e| e.contains(reason))
                    && l["value_base64"].as_str() == Some(b64encode(bytes).as_str())),
            "no dead letter with {reason:?} and the original bytes: {dead}"
        );
    }
    let (_, k1) = host.get("/async-process/k1").await?;
    ensure!(
        k1["state"] == "DONE" && k1["executions"].as_array().map(Vec::len) == Some(2),
        "{k1}"
    );
    ensure!(!host.log().contains("panicked"), "{}", host.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_schema_that_cannot_read_a_registered_writer_is_refused() -> Result<()> {
    let config = with_avro(&async_process_config()?, "execution-v1.avsc");
    let mut host = Host::start(&config).await?;
    let v1 =
        std::fs::read_to_string(root().join("examples/async-process/schemas/execution-v1.avsc"))?;
    let (status, _) = host
        .post(
            &format!("/registry/subjects/{SUBJECT}/versions"),
            json!({ "schema": v1 }).to_string(),
        )
        .await?;
    ensure!(status == 200);
    let status = host.terminate()?;
    ensure!(status.success());
    // A reader that requires a field v1 does not have, with no default.
    let strict = v1.replace(
        r#"{"name": "time", "type": "long"},"#,
        r#"{"name": "time", "type": "long"}, {"name": "priority", "type": "int"},"#,
    );
    ensure!(strict != v1);
    let strict_path = host.dir().join("strict.avsc");
    std::fs::write(&strict_path, strict)?;
    let reader_line = format!(
        "reader_schema = {:?}",
        root()
            .join("examples/async-process/schemas/execution-v1.avsc")
            .display()
            .to_string()
    );
    host.write_config(&config.replace(
        &reader_line,
        &format!("reader_schema = {:?}", strict_path.display().to_string()),
    ))?;
    let (status, log) = host.restart_expecting_exit(T)?;
    ensure!(
        !status.success(),
        "started with a reader that cannot read v1:\n{log}"
    );
    ensure!(
        log.contains("pipeline \"async-process\" refused")
            && log.contains("version 1")
            && log.contains("priority"),
        "the refusal names the pipeline, the version and the field:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn avro_over_kafka_with_confluent_serializer_and_an_external_registry() -> Result<()> {
    let broker = Broker::start()?;
    let a = Host::start(&with_avro(
        &kafka_config(&broker.addr, "avro-a", 3)?,
        "execution-v2.avsc",
    ))
    .await?;
    let registry = format!("{}/registry", a.url);
    let summary = tokio::task::block_in_place(|| confluent(&registry, &a.url, Some(&broker.addr)))?;
    // A second host, in its own group, reads its schemas from a's registry
    // as from any Confluent-compatible registry.
    let b_config = with_avro(
        &kafka_config(&broker.addr, "avro-b", 3)?,
        "execution-v2.avsc",
    )
    .replacen(
        "[store]",
        &format!("[registry]\nurl = {registry:?}\n\n[store]"),
        1,
    );
    let b = Host::start(&b_config).await?;
    let events = summary["events"].as_array().cloned().unwrap_or_default();
    ensure!(
        events.len() == 60,
        "Confluent's serializer sent 60 events: {summary}"
    );
    let want = expected(&events);
    for host in [&a, &b] {
        let deadline = std::time::Instant::now() + T;
        loop {
            match check_folds(host, &want).await {
                Ok(checked) => {
                    ensure!(checked == 60, "{checked} events checked");
                    break;
                }
                Err(e) if std::time::Instant::now() > deadline => return Err(e.context(host.log())),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    let (status, _) = b.get("/registry/subjects").await?;
    ensure!(status == 404, "b serves no registry of its own");
    Ok(())
}

/// Produces a JSON event through `host` (which encodes it in Avro with the
/// given version) and returns the encoded bytes, base64.
async fn encoded_by(host: &Host, version: u32, event: Value) -> Result<String> {
    let (_, before) = host
        .get("/v1/topics/async-process-execution/records?limit=10000")
        .await?;
    let seen = before["records"].as_array().map_or(0, Vec::len);
    host.produce(
        "async-process-execution",
        &json!({ "schema_version": version, "value": event }),
    )
    .await?;
    let (_, after) = host
        .get("/v1/topics/async-process-execution/records?limit=10000")
        .await?;
    let records = after["records"].as_array().cloned().unwrap_or_default();
    ensure!(records.len() == seen + 1, "one new record");
    let id = event["id"].as_str().unwrap_or_default().to_owned();
    records
        .iter()
        .filter_map(|r| r["value_base64"].as_str())
        .find(|b| {
            // The new record is the one not seen before; ids are unique strings
            // in the datum, so look for it in the decoded bytes.
            b64decode(b).is_ok_and(|raw| raw.windows(id.len()).any(|w| w == id.as_bytes()))
        })
        .map(str::to_owned)
        .context("the encoded record")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_external_registry_is_waited_for_never_dead_lettered() -> Result<()> {
    let mut a = Host::start(&with_avro(&async_process_config()?, "execution-v2.avsc")).await?;
    for v in ["execution-v1.avsc", "execution-v2.avsc"] {
        let text = std::fs::read_to_string(root().join("examples/async-process/schemas").join(v))?;
        let (status, body) = a
            .post(
                &format!("/registry/subjects/{SUBJECT}/versions"),
                json!({ "schema": text }).to_string(),
            )
            .await?;
        ensure!(status == 200, "{status} {body}");
    }
    // b asks a's registry through a front that can fail on demand.
    let front = FaultFront::start(&format!("{}/registry", a.url))?;
    let b_config = with_avro(&async_process_config()?, "execution-v2.avsc").replacen(
        "[store]",
        &format!("[registry]\nurl = \"{}\"\n\n[store]", front.url),
        1,
    );
    let b = Host::start(&b_config).await?;
    let first = encoded_by(
        &a,
        1,
        json!({"id": "x1", "asyncProcessId": "q", "time": 1, "state": "STARTED"}),
    )
    .await?;
    let second = encoded_by(
        &a,
        2,
        json!({"id": "x2", "asyncProcessId": "q", "time": 2, "state": "DONE", "worker": "w"}),
    )
    .await?;
    b.produce(
        "async-process-execution",
        &json!({"key": "q", "value_base64": first}),
    )
    .await?;
    b.wait_caught_up("async-process", T).await?;
    // The registry goes away; b meets a schema id it has not cached yet.
    ensure!(a.terminate()?.success());
    b.produce(
        "async-process-execution",
        &json!({"key": "q", "value_base64": second}),
    )
    .await?;
    let deadline = std::time::Instant::now() + T;
    while !b.log().contains("schema registry unreachable; retrying") {
        ensure!(
            std::time::Instant::now() < deadline,
            "b never retried:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // How long the registry stays away: 1 s in CI, 30 s in
    // scripts/chaos.sh (retries back off up to 5 s, so several fail).
    let outage = eddy_tests::chaos::env_u64("EDDY_REGISTRY_OUTAGE_SECS")?.unwrap_or(1);
    tokio::time::sleep(Duration::from_secs(outage)).await;
    no_dead_letters(&b, "during the outage").await?;
    let (_, progress) = b.get("/v1/pipelines/async-process").await?;
    ensure!(
        progress["lag"].as_u64().unwrap_or(0) > 0,
        "the event waits uncommitted: {progress}"
    );
    // The registry is back: the event is processed.
    a.restart().await?;
    b.wait_caught_up("async-process", T).await?;
    let (_, q) = b.get("/async-process/q").await?;
    ensure!(
        q["state"] == "DONE" && q["executions"].as_array().map(Vec::len) == Some(2),
        "{q}"
    );
    no_dead_letters(&b, "after it returned").await?;

    // The registry answers errors for a while (a 500 from a load balancer,
    // then 503s) while b meets a schema id it has not cached: it waits.
    let v3 =
        std::fs::read_to_string(root().join("examples/async-process/schemas/execution-v2.avsc"))?
            .replace(
                r#"{"name": "worker", "type": ["null", "string"], "default": null}"#,
                r#"{"name": "worker", "type": ["null", "string"], "default": null},
    {"name": "region", "type": ["null", "string"], "default": null}"#,
            );
    let (status, body) = a
        .post(
            &format!("/registry/subjects/{SUBJECT}/versions"),
            json!({ "schema": v3 }).to_string(),
        )
        .await?;
    ensure!(status == 200, "{status} {body}");
    let third = encoded_by(
        &a,
        3,
        json!({"id": "x3", "asyncProcessId": "q", "time": 3, "state": "RETRY", "region": "eu"}),
    )
    .await?;
    let retried = b
        .log()
        .matches("schema registry unreachable; retrying")
        .count();
    front.fail_with(500)?;
    b.produce(
        "async-process-execution",
        &json!({"key": "q", "value_base64": third}),
    )
    .await?;
    let deadline = std::time::Instant::now() + T;
    while b
        .log()
        .matches("schema registry unreachable; retrying")
        .count()
        < retried + 2
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "b never retried:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    front.fail_with(503)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    no_dead_letters(&b, "while the registry failed").await?;
    let (_, progress) = b.get("/v1/pipelines/async-process").await?;
    ensure!(
        progress["lag"].as_u64().unwrap_or(0) > 0,
        "the event waits uncommitted: {progress}"
    );
    front.heal()?;
    b.wait_caught_up("async-process", T).await?;
    let (_, q) = b.get("/async-process/q").await?;
    ensure!(
        q["state"] == "RETRY" && q["executions"].as_array().map(Vec::len) == Some(3),
        "{q}"
    );
    no_dead_letters(&b, "after it returned").await?;
    Ok(())
}

/// The pipeline has no dead letters (`when` says at which point).
async fn no_dead_letters(host: &Host, when: &str) -> Result<()> {
    let (_, dead) = host.get("/v1/pipelines/async-process/dead-letters").await?;
    ensure!(
        dead["dead_letters"].as_array().is_some_and(Vec::is_empty),
        "dead letters {when}: {dead}"
    );
    Ok(())
}

/// `tests/registry/fault_proxy.py` in front of a service: it forwards,
/// or answers an error status while told to.
struct FaultFront {
    child: std::process::Child,
    mode: tempfile::NamedTempFile,
    url: String,
}

impl FaultFront {
    fn start(upstream: &str) -> Result<FaultFront> {
        let port = eddy_tests::free_port()?;
        let mode = tempfile::NamedTempFile::new()?;
        let child = Command::new("python3")
            .arg(root().join("tests/registry/fault_proxy.py"))
            .args(["--port", &port.to_string(), "--upstream", upstream])
            .arg("--mode-file")
            .arg(mode.path())
            .spawn()
            .context("cannot start the fault front")?;
        eddy_tests::wait_port(port, Duration::from_secs(30))?;
        Ok(FaultFront {
            child,
            mode,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    fn fail_with(&self, status: u16) -> Result<()> {
        Ok(std::fs::write(self.mode.path(), status.to_string())?)
    }

    fn heal(&self) -> Result<()> {
        Ok(std::fs::write(self.mode.path(), "")?)
    }
}

impl Drop for FaultFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
