//! Bad input gets a clear error that names the problem, and nothing already
//! accepted is lost.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::time::Duration;

use anyhow::{Result, ensure};
use eddy_tests::{Host, async_process_config, execution, run_eddy};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_lose_nothing() -> Result<()> {
    let host = Host::start(&async_process_config()?).await?;
    let (_, created) = host.post("/async-process", "{}").await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    host.wait_caught_up("async-process", T).await?;

    let topic = "/v1/topics/async-process-execution/records";
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("malformed JSON", "{\"value\": ".into(), 400, "line 1"),
        ("not a record", "42".into(), 400, "record object"),
        (
            "no value",
            json!({"key": "k"}).to_string(),
            400,
            "has no \"value\"",
        ),
        (
            "unknown field",
            json!({"value": {}, "kye": 1}).to_string(),
            400,
            "\"kye\"",
        ),
        (
            "bad partition",
            json!({"value": execution("x", &id, 1, "DONE"), "partition": 99}).to_string(),
            400,
            "partition 99",
        ),
        (
            "missing key field",
            json!({"value": {"id": "x", "state": "DONE"}}).to_string(),
            422,
            "asyncProcessId",
        ),
        (
            "bad header",
            json!({"value": {}, "headers": {"h": 1}}).to_string(),
            400,
            "header \"h\"",
        ),
        (
            "empty batch",
            json!({"records": []}).to_string(),
            400,
            "no records",
        ),
    ];
    for (what, body, status, needle) in cases {
        let (got, v) = host.post(topic, body).await?;
        let msg = v["error"].as_str().unwrap_or_default();
        ensure!(got == status, "{what}: expected {status}, got {got}: {v}");
        ensure!(
            msg.contains(needle),
            "{what}: error {msg:?} should mention {needle:?}"
        );
    }
    let (got, v) = host
        .post(
            "/v1/topics/no-such-topic/records",
            json!({"value": {}}).to_string(),
        )
        .await?;
    ensure!(
        got == 404
            && v["error"]
                .as_str()
                .is_some_and(|m| m.contains("no-such-topic")),
        "{got} {v}"
    );
    let (got, v) = host.get("/v1/pipelines/no-such-pipeline/state/x").await?;
    ensure!(
        got == 404
            && v["error"]
                .as_str()
                .is_some_and(|m| m.contains("no-such-pipeline")),
        "{got} {v}"
    );
    let (got, v) = host
        .get("/v1/pipelines/async-process/latest?limit=100000")
        .await?;
    ensure!(
        got == 400 && v["error"].as_str().is_some_and(|m| m.contains("limit")),
        "{got} {v}"
    );
    let (got, _) = host.post("/async-process", "[1,2]").await?;
    ensure!(
        got == 400,
        "POST /async-process with a non-object body: {got}"
    );
    let r = host
        .http
        .get(format!("{}/v1/pipelines/async-process/events", host.url))
        .header("Last-Event-ID", "not-a-number")
        .send()
        .await?;
    ensure!(
        r.status().as_u16() == 400,
        "bad Last-Event-ID: {}",
        r.status()
    );

    // A record whose value is valid JSON but not an execution is dead-lettered
    // by the plugin; the events after it are processed.
    host.produce(
        "async-process-execution",
        &json!({"records": [
            {"value": {"asyncProcessId": id, "state": "EXPLODED", "id": "bad", "time": 5}},
            {"value": execution("good", &id, 4_000_000_000_000, "DONE")},
        ]}),
    )
    .await?;
    host.wait_caught_up("async-process", T).await?;
    let (_, state) = host.get(&format!("/async-process/{id}")).await?;
    ensure!(
        state["state"] == "DONE",
        "the good event after the bad one applies: {state}"
    );
    let (_, dead) = host.get("/v1/pipelines/async-process/dead-letters").await?;
    let letters = dead["dead_letters"].as_array().cloned().unwrap_or_default();
    ensure!(
        letters.len() == 1,
        "exactly the bad event is dead-lettered: {dead}"
    );
    let dl = letters.first().cloned().unwrap_or_default();
    ensure!(
        dl["error_class"] == "invalid" && dl["plugin"] == "async-process-aggregator",
        "{dl}"
    );
    ensure!(
        dl["error"].as_str().is_some_and(|e| e.contains("EXPLODED")),
        "{dl}"
    );
    ensure!(
        dl["value_base64"].as_str().is_some_and(|v| !v.is_empty()),
        "original bytes kept: {dl}"
    );
    // Earlier state is intact: the ACCEPTED execution plus DONE.
    ensure!(
        state["executions"].as_array().map(Vec::len) == Some(2),
        "{state}"
    );
    ensure!(host.get("/healthz").await?.0 == 200, "still healthy");
    Ok(())
}

#[test]
fn bad_plugins_and_configs_are_refused_with_their_names() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("garbage.wasm"), b"definitely not wasm")?;
    let (ok, out) = run_eddy(&["plugin", "check", "garbage.wasm"], d)?;
    ensure!(
        !ok && out.contains("garbage.wasm") && out.contains("not a WebAssembly component"),
        "{out}"
    );

    // A core module is not a component.
    std::fs::write(d.join("core.wasm"), b"\0asm\x01\0\0\0")?;
    let (ok, out) = run_eddy(&["plugin", "check", "core.wasm"], d)?;
    ensure!(!ok && out.contains("core WebAssembly module"), "{out}");

    // A config naming a plugin file that is not a component: refused at start.
    let config = async_process_config()?.replace(
        &eddy_tests::plugin("rejected-process-router")?
            .display()
            .to_string(),
        &d.join("garbage.wasm").display().to_string(),
    );
    std::fs::write(d.join("eddy.toml"), &config)?;
    let (ok, out) = run_eddy(
        &[
            "run",
            "-c",
            "eddy.toml",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "s",
        ],
        d,
    )?;
    ensure!(
        !ok && out.contains("rejected-process-router")
            && out.contains("not a valid WebAssembly component"),
        "{out}"
    );

    // An aggregator given the handler's component: wrong world.
    let swapped = async_process_config()?.replace(
        &eddy_tests::plugin("async-process-aggregator")?
            .display()
            .to_string(),
        &eddy_tests::plugin("rejected-process-router")?
            .display()
            .to_string(),
    );
    std::fs::write(d.join("eddy.toml"), &swapped)?;
    let (ok, out) = run_eddy(
        &[
            "run",
            "-c",
            "eddy.toml",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "s2",
        ],
        d,
    )?;
    ensure!(
        !ok && out.contains(
            "does not export eddy:plugin/aggregator@0.2.0 (or eddy:plugin/aggregator@0.1.0)"
        ),
        "{out}"
    );

    // Config errors name the field and the file.
    std::fs::write(d.join("typo.toml"), "[store]\npaht = \"x\"\n")?;
    let (ok, out) = run_eddy(&["run", "-c", "typo.toml"], d)?;
    ensure!(
        !ok && out.contains("typo.toml") && out.contains("paht"),
        "{out}"
    );
    std::fs::write(
        d.join("dangling.toml"),
        "[[pipeline]]\nname = \"p\"\ntopic = \"t\"\naggregator = \"ghost\"\n",
    )?;
    let (ok, out) = run_eddy(&["run", "-c", "dangling.toml"], d)?;
    ensure!(
        !ok && out.contains("plugin \"ghost\" is not declared"),
        "{out}"
    );
    let (ok, out) = run_eddy(&["run", "-c", "missing.toml"], d)?;
    ensure!(!ok && out.contains("missing.toml"), "{out}");

    // `eddy check` lists every problem at once: two plugin files that are
    // not components, a missing one, a reader schema that does not parse;
    // the example itself is valid.
    let (ok, out) = run_eddy(
        &["check", "-c", "examples/async-process/eddy.toml"],
        &eddy_tests::root(),
    )?;
    ensure!(
        ok && out.contains("valid: 2 pipeline(s), 2 plugin(s) loaded"),
        "{out}"
    );
    std::fs::write(d.join("bad.avsc"), "{ not avro")?;
    let broken = format!(
        "{swapped}\n[[plugin]]\nname = \"gone\"\npath = \"gone.wasm\"\n\n\
         [[pipeline]]\nname = \"more\"\ntopic = \"more\"\nvalue_format = \"avro\"\n\
         reader_schema = \"bad.avsc\"\nhandlers = [\"gone\"]\n"
    )
    .replace(
        &eddy_tests::plugin("rejected-process-router")?
            .display()
            .to_string(),
        &d.join("garbage.wasm").display().to_string(),
    );
    std::fs::write(d.join("broken.toml"), broken)?;
    let (ok, out) = run_eddy(&["check", "-c", "broken.toml"], d)?;
    ensure!(
        !ok && out.contains("4 problem(s)")
            && out.contains("plugin \"gone\": cannot read")
            && out.contains("not a valid WebAssembly component")
            && out.contains("pipeline \"more\": reader_schema")
            && out.contains("async-process-aggregator"),
        "{out}"
    );
    Ok(())
}

/// An event whose key belongs to another partition than the one it arrived
/// on is folded into the key's state by default, and dead-lettered (class
/// `partition`, naming both partitions) with `misrouted_keys = "dead-letter"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misrouted_keys_are_folded_or_dead_lettered_as_configured() -> Result<()> {
    for mode in ["fold", "dead-letter"] {
        let config = async_process_config()?.replacen(
            "key_field = \"asyncProcessId\"\n",
            &format!("key_field = \"asyncProcessId\"\nmisrouted_keys = \"{mode}\"\n"),
            1,
        );
        let host = Host::start(&config).await?;
        // Partition 0 and partition 1 of 4: one of them is not where "p-x" hashes to.
        for partition in [0, 1] {
            host.produce(
                "async-process-execution",
                &json!({ "partition": partition, "value": execution(&format!("e{partition}"), "p-x", partition, "STARTED") }),
            )
            .await?;
        }
        host.wait_caught_up("async-process", Duration::from_secs(60))
            .await?;
        let (status, state) = host.get("/async-process/p-x").await?;
        let (_, dead) = host.get("/v1/pipelines/async-process/dead-letters").await?;
        let letters = dead["dead_letters"].as_array().cloned().unwrap_or_default();
        let applied = state["executions"].as_array().map_or(0, Vec::len);
        if mode == "fold" {
            ensure!(
                status == 200 && applied == 2 && letters.is_empty(),
                "{mode}: both folded: {state} {dead}"
            );
        } else {
            ensure!(
                status == 200 && applied == 1 && letters.len() == 1,
                "{mode}: one applied, one dead-lettered: {state} {dead}"
            );
            let dl = &letters[0];
            ensure!(
                dl["error_class"] == "partition"
                    && dl["stage"] == "route"
                    && dl["key"] == "p-x"
                    && dl["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("arrived on partition")),
                "{dl}"
            );
        }
    }
    Ok(())
}

/// A changelog topic with another partition count than its pipeline's input
/// (one made by an earlier version or by its users) is kept: the host
/// starts, says so, and partitions the changelog's records by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changelog_with_another_partition_count_is_partitioned_by_key() -> Result<()> {
    let config = async_process_config()?.replacen(
        "default_partitions = 4\n",
        "default_partitions = 4\n\n[[source.topics]]\nname = \"async-process\"\npartitions = 3\n",
        1,
    );
    ensure!(
        config.contains("partitions = 3"),
        "the example sets default_partitions"
    );
    let host = Host::start(&config).await?;
    host.produce(
        "async-process-execution",
        &json!({ "value": execution("e1", "p-1", 1, "STARTED") }),
    )
    .await?;
    host.wait_caught_up("async-process", Duration::from_secs(60))
        .await?;
    ensure!(
        host.log().contains("partitioned by key"),
        "the mismatch is logged:\n{}",
        host.log()
    );
    let (_, topics) = host.get("/v1/topics").await?;
    ensure!(topics.to_string().contains("async-process"), "{topics}");
    let (status, state) = host.get("/async-process/p-1").await?;
    ensure!(status == 200, "{state}");
    Ok(())
}
