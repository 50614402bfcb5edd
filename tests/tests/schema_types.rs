//! Protobuf and JSON Schema beside Avro: Confluent's Python serializers and
//! deserializers against the embedded registry (schema references, v1 and
//! v2 producers on one topic read with one reader schema into one state),
//! over the embedded log and through a real Kafka broker (and a host reading
//! the schemas from another's registry as an external one); Eddy encoding JSON
//! values with either type; poison values dead-lettered with their classes;
//! malformed schemas refused naming the place.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::kafka::{Broker, kafka_config};
use eddy_tests::{Host, async_process_config, b64decode, b64encode as b64, root, with_schema};
use serde_json::{Value, json};

const TOPIC: &str = "async-process-execution";
const SUBJECT: &str = "async-process-execution-value";
const T: Duration = Duration::from_secs(120);
const MESSAGE: &str = "message_type = \"eddy.example.AsyncProcessExecution\"\n";

/// Runs `tests/registry/confluent_schema_types.py`; returns the events sent.
fn confluent(kind: &str, host: &Host, brokers: Option<&str>) -> Result<Vec<Value>> {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/registry/confluent_schema_types.py"))
        .args(["--type", kind, "--topic", TOPIC])
        .args(["--registry", &format!("{}/registry", host.url)])
        .args(["--eddy", &host.url, "--schemas"])
        .arg(root().join("examples/async-process/schemas"));
    if let Some(b) = brokers {
        cmd.args(["--brokers", b]);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "Confluent's {kind} clients failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            host.log()
        );
    }
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    let events = summary["events"].as_array().cloned().unwrap_or_default();
    ensure!(events.len() == 60, "60 events sent: {summary}");
    Ok(events)
}

/// Each key's state holds exactly its events' ids in time order, and the
/// odd (v2) events carry their worker.
async fn check_folds(host: &Host, events: &[Value]) -> Result<()> {
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
    ensure!(!by_key.is_empty(), "no events to check");
    let deadline = std::time::Instant::now() + T;
    for (key, mut want) in by_key {
        want.sort();
        let want: Vec<&str> = want.iter().map(|(_, id)| id.as_str()).collect();
        loop {
            let (status, state) = host.get(&format!("/async-process/{key}")).await?;
            let ids: Vec<&str> = state["executions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["id"].as_str())
                .collect();
            if status == 200 && ids == want {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{key}: {status} executions {ids:?}, expected {want:?}\n{state}\ndead letters: {:?}",
                    dead_letters(host).await?
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

async fn dead_letters(host: &Host) -> Result<Vec<Value>> {
    let (_, dead) = host.get("/v1/pipelines/async-process/dead-letters").await?;
    Ok(dead["dead_letters"].as_array().cloned().unwrap_or_default())
}

/// Appends raw values and one good JSON-encoded event; waits until folded.
async fn produce_poison(host: &Host, poison: &[(&str, Vec<u8>)], good: Value) -> Result<()> {
    let mut records: Vec<Value> = poison
        .iter()
        .map(|(_, b)| json!({ "key": "k1", "value_base64": b64(b) }))
        .collect();
    records.push(json!({ "value": good }));
    let (status, answer) = host
        .post(
            &format!("/v1/topics/{TOPIC}/records"),
            json!({ "records": records }).to_string(),
        )
        .await?;
    ensure!(status == 200, "{status} {answer}");
    host.wait_caught_up("async-process", T).await
}

/// Each poison value has its dead letter, with its class and original bytes.
async fn check_poison(host: &Host, poison: &[(&str, Vec<u8>)]) -> Result<()> {
    let letters = dead_letters(host).await?;
    ensure!(
        letters.len() == poison.len(),
        "{} dead letters, {} poison values: {letters:?}",
        letters.len(),
        poison.len()
    );
    for (class, bytes) in poison {
        ensure!(
            letters.iter().any(|l| l["error_class"] == *class
                && l["value_base64"].as_str() == Some(b64(bytes).as_str())),
            "no dead letter of class {class:?} with the original bytes: {letters:?}"
        );
    }
    ensure!(!host.log().contains("panicked"), "{}", host.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_with_confluents_clients_references_and_two_versions_into_one_state() -> Result<()>
{
    let config = with_schema(
        &async_process_config()?,
        "protobuf",
        "execution-v2.proto",
        MESSAGE,
    );
    let host = Host::start(&config).await?;
    let mut events = tokio::task::block_in_place(|| confluent("protobuf", &host, None))?;
    events.push(json!({"id": "eddy-1", "asyncProcessId": "p00", "time": 5_000_000}));
    check_folds(&host, &events).await?;
    // v1 events read with the v2 reader have no worker; v2 events keep theirs.
    let (_, p01) = host.get("/async-process/p01").await?;
    ensure!(
        p01["executions"].as_array().map(Vec::len) == Some(5),
        "{p01}"
    );
    ensure!(dead_letters(&host).await?.is_empty(), "no dead letters");

    // The registry lists the types and shows the reference.
    let (status, types) = host.get("/registry/schemas/types").await?;
    ensure!(
        status == 200 && types == json!(["AVRO", "PROTOBUF", "JSON"]),
        "{types}"
    );
    let (_, latest) = host
        .get(&format!("/registry/subjects/{SUBJECT}/versions/latest"))
        .await?;
    ensure!(
        latest["schemaType"] == "PROTOBUF"
            && latest["references"][0]["name"] == "state.proto"
            && latest["references"][0]["version"] == 1,
        "{latest}"
    );
    // A .proto text registered by hand, with a reference, equals the
    // descriptor Confluent's client registered (one id, no new version).
    let text =
        std::fs::read_to_string(root().join("examples/async-process/schemas/execution-v2.proto"))?;
    let refs = json!([{"name": "state.proto", "subject": "state.proto", "version": 1}]);
    let (status, same) = host
        .post(
            &format!("/registry/subjects/{SUBJECT}"),
            json!({"schema": text, "schemaType": "PROTOBUF", "references": refs}).to_string(),
        )
        .await?;
    ensure!(
        status == 200 && same["version"] == 2 && same["id"] == latest["id"],
        "the .proto text is the registered v2: {status} {same}"
    );
    // A referenced version cannot be deleted while schemas import it.
    let (status, by) = host
        .get("/registry/subjects/state.proto/versions/1/referencedby")
        .await?;
    ensure!(
        status == 200 && by.as_array().map(Vec::len) == Some(2),
        "v1 and v2 import state.proto: {by}"
    );
    let r = host
        .http
        .delete(format!(
            "{}/registry/subjects/state.proto/versions/1",
            host.url
        ))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await?;
    ensure!(
        status == 422 && body["error_code"] == 42206,
        "{status} {body}"
    );
    // Malformed schemas and unknown references are refused, naming the place.
    let (status, bad) = host
        .post(
            "/registry/subjects/broken-value/versions",
            json!({"schemaType": "PROTOBUF", "schema": "syntax = \"proto3\";\nmessage M {\n  string a = 1\n}\n"}).to_string(),
        )
        .await?;
    ensure!(
        status == 422
            && bad["error_code"] == 42201
            && bad["message"].as_str().is_some_and(|m| m.contains(":4:1")),
        "{status} {bad}"
    );
    let (status, bad) = host
        .post(
            "/registry/subjects/broken-value/versions",
            json!({"schemaType": "PROTOBUF", "schema": text,
                   "references": [{"name": "state.proto", "subject": "nowhere", "version": 3}]})
            .to_string(),
        )
        .await?;
    ensure!(
        status == 422
            && bad["message"]
                .as_str()
                .is_some_and(|m| m.contains("nowhere") && m.contains("state.proto")),
        "{status} {bad}"
    );

    // Eddy refuses a JSON value that does not fit, naming the field.
    let (status, refused) = host
        .post(
            &format!("/v1/topics/{TOPIC}/records"),
            json!({"value": {"id": "x", "asyncProcessId": "k1", "time": "soon", "state": "DONE"}})
                .to_string(),
        )
        .await?;
    ensure!(
        status == 422
            && refused["error"]
                .as_str()
                .is_some_and(|e| e.contains("$.time") && e.contains("PROTOBUF")),
        "{status} {refused}"
    );

    // Poison values: each a dead letter of its own class.
    let (_, back) = host
        .get(&format!("/v1/topics/{TOPIC}/records?limit=1"))
        .await?;
    let good = back["records"][0]["value_base64"]
        .as_str()
        .context("the first record's bytes")
        .and_then(b64decode)?;
    let header = good.get(..5).context("a wire-format header")?.to_vec();
    let with = |tail: &[u8]| {
        let mut v = header.clone();
        v.extend_from_slice(tail);
        v
    };
    // Message index [5]: the file has one message.
    let out_of_range = with(&[2, 10, 0x0a, 0x01, b'x']);
    // Field 1 (a string) claims 100 bytes and has 2.
    let truncated = with(&[0, 0x0a, 100, b'a', b'b']);
    let mut avro_id = good.clone();
    if let Some(b) = avro_id.get_mut(4) {
        *b = 77;
    }
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("message_index", out_of_range),
        ("decode", truncated),
        ("decode", avro_id),
        ("decode", b"{\"id\":\"plain json\"}".to_vec()),
    ];
    produce_poison(
        &host,
        &poison,
        json!({"id": "good-1", "asyncProcessId": "k1", "time": 2, "state": "DONE"}),
    )
    .await?;
    check_poison(&host, &poison).await?;
    let (_, k1) = host.get("/async-process/k1").await?;
    ensure!(k1["state"] == "DONE", "the good event folded: {k1}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn json_schema_with_confluents_clients_and_two_versions_into_one_state() -> Result<()> {
    let config = with_schema(
        &async_process_config()?,
        "json_schema",
        "execution-v2.schema.json",
        "",
    );
    let host = Host::start(&config).await?;
    let mut events = tokio::task::block_in_place(|| confluent("json", &host, None))?;
    events.push(json!({"id": "eddy-1", "asyncProcessId": "p00", "time": 5_000_000}));
    check_folds(&host, &events).await?;
    ensure!(dead_letters(&host).await?.is_empty(), "no dead letters");
    let (_, latest) = host
        .get(&format!("/registry/subjects/{SUBJECT}/versions/latest"))
        .await?;
    ensure!(latest["schemaType"] == "JSON", "{latest}");
    // A v3 the pipeline's reader cannot read (time as a string) is refused
    // even under NONE, naming the pipeline.
    let (status, _) = host
        .put(
            &format!("/registry/config/{SUBJECT}"),
            json!({"compatibility": "NONE"}).to_string(),
        )
        .await?;
    ensure!(status == 200);
    let mut v3: Value = serde_json::from_str(&std::fs::read_to_string(
        root().join("examples/async-process/schemas/execution-v2.schema.json"),
    )?)?;
    v3["properties"]["time"] = json!({"type": "string"});
    let (status, refused) = host
        .post(
            &format!("/registry/subjects/{SUBJECT}/versions"),
            json!({"schemaType": "JSON", "schema": v3.to_string()}).to_string(),
        )
        .await?;
    ensure!(
        status == 409
            && refused["message"]
                .as_str()
                .is_some_and(|m| m.contains("async-process") && m.contains("time")),
        "{status} {refused}"
    );
    // The level's versions, without a version in the path.
    let (status, verdict) = host
        .post(
            &format!("/registry/compatibility/subjects/{SUBJECT}/versions?verbose=true"),
            json!({"schemaType": "JSON", "schema": v3.to_string()}).to_string(),
        )
        .await?;
    ensure!(
        status == 200 && verdict["is_compatible"] == true,
        "under NONE v3 is compatible with the subject (only the reader refuses it): {status} {verdict}"
    );
    let (status, _) = host
        .put(
            &format!("/registry/config/{SUBJECT}"),
            json!({"compatibility": "BACKWARD"}).to_string(),
        )
        .await?;
    ensure!(status == 200);
    let (status, verdict) = host
        .post(
            &format!("/registry/compatibility/subjects/{SUBJECT}/versions?verbose=true"),
            json!({"schemaType": "JSON", "schema": v3.to_string()}).to_string(),
        )
        .await?;
    ensure!(
        status == 200
            && verdict["is_compatible"] == false
            && verdict["messages"].to_string().contains("time"),
        "under BACKWARD v3 is not: {status} {verdict}"
    );
    // Eddy refuses a JSON value its schema refuses, naming the field.
    let (status, refused) = host
        .post(
            &format!("/v1/topics/{TOPIC}/records"),
            json!({"value": {"id": "x", "asyncProcessId": "k1", "time": 1, "state": "LOST"}})
                .to_string(),
        )
        .await?;
    ensure!(
        status == 422
            && refused["error"]
                .as_str()
                .is_some_and(|e| e.contains("$.state") && e.contains("JSON")),
        "{status} {refused}"
    );
    let (status, bad) = host
        .post(
            "/registry/subjects/broken-value/versions",
            json!({"schemaType": "JSON", "schema": "{\"type\": \"object\",\n \"properties\": {\"a\": {\"type\": 7}}}"}).to_string(),
        )
        .await?;
    ensure!(
        status == 422 && bad["error_code"] == 42201,
        "{status} {bad}"
    );

    // Poison: a value the writer schema refuses, and bytes that are not JSON.
    let (_, back) = host
        .get(&format!("/v1/topics/{TOPIC}/records?limit=1"))
        .await?;
    let good = back["records"][0]["value_base64"]
        .as_str()
        .context("the first record's bytes")
        .and_then(b64decode)?;
    let header = good.get(..5).context("a wire-format header")?.to_vec();
    let with = |tail: &[u8]| {
        let mut v = header.clone();
        v.extend_from_slice(tail);
        v
    };
    let poison: Vec<(&str, Vec<u8>)> = vec![
        (
            "validation",
            with(br#"{"id":"v","asyncProcessId":"k1","time":"late","state":"DONE"}"#),
        ),
        ("decode", with(b"{\"id\":")),
        ("empty", header.clone()),
    ];
    produce_poison(
        &host,
        &poison,
        json!({"id": "good-1", "asyncProcessId": "k1", "time": 2, "state": "DONE"}),
    )
    .await?;
    check_poison(&host, &poison).await?;
    let letters = dead_letters(&host).await?;
    ensure!(
        letters.iter().any(|l| l["error"]
            .as_str()
            .is_some_and(|e| e.contains("field $.time"))),
        "the validation dead letter names the field: {letters:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_over_kafka_with_confluents_serializer() -> Result<()> {
    let broker = Broker::start()?;
    let config = with_schema(
        &kafka_config(&broker.addr, "protobuf", 3)?,
        "protobuf",
        "execution-v2.proto",
        MESSAGE,
    );
    let host = Host::start(&config).await?;
    let events = tokio::task::block_in_place(|| confluent("protobuf", &host, Some(&broker.addr)))?;
    // A second host, in its own group, reads the writer schemas and their
    // references from the first one's registry as from any external one.
    let registry = format!("{}/registry", host.url);
    let b_config = with_schema(
        &kafka_config(&broker.addr, "protobuf-b", 3)?,
        "protobuf",
        "execution-v2.proto",
        MESSAGE,
    )
    .replacen(
        "[store]",
        &format!("[registry]\nurl = {registry:?}\n\n[store]"),
        1,
    );
    let b = Host::start(&b_config).await?;
    for h in [&host, &b] {
        check_folds(h, &events).await?;
        ensure!(dead_letters(h).await?.is_empty(), "no dead letters");
    }
    Ok(())
}
