//! Plugins in Rust, Python, JavaScript and C, built from source by the
//! project's own `eddy plugin build`: the same AsyncProcess scenario gives
//! identical states, emitted records and dead letters in each language and
//! in both contracts (a Rust build against 0.1.0 runs next to the 0.2.0
//! ones); a pipeline's states carry across deploys between contracts and
//! state formats; the author workflow (`new`, `build`, `check`, `test`,
//! run) works for each; the AsyncProcess
//! fixtures pass in each; WASI grants nothing.

#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null; a test that indexes past a Vec fails, as it should"
)]

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use eddy_tests::{
    Host, async_process_config_in, async_process_config_with, eddy_bin, execution, plugin,
    plugin_v0_1, root, run_eddy, test_component,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const KEYS: [&str; 4] = ["p1", "p2", "p3", "p4"];

/// Runs the scenario on one set of plugins (`label` names them); returns
/// (states by key, rejected-process records, dead-letter summaries).
async fn scenario(label: &str, config: &str) -> Result<(Vec<Value>, Vec<Value>, Vec<Value>)> {
    let host = Host::start(config).await?;
    let mut records = Vec::new();
    let states = [
        "ACCEPTED", "STARTED", "ERROR", "RETRY", "STARTED", "DONE", "REJECTED", "WAITING",
    ];
    for (i, state) in states.iter().enumerate() {
        for (k, key) in KEYS.iter().enumerate() {
            // Times go back and forth so ordering matters; p4 ends REJECTED.
            let mut t = 1_000 + ((i as i64 * 7 + k as i64 * 3) % 11) * 10 + i as i64;
            let mut st = *state;
            if *key == "p4" && i == states.len() - 1 {
                (t, st) = (5_000, "REJECTED");
            }
            records.push(json!({ "value": execution(&format!("{key}-e{i}"), key, t, st) }));
        }
    }
    // Poison: an unknown state and a foreign process id.
    records.push(json!({ "value": { "id": "bad1", "asyncProcessId": "p1", "time": 5, "state": "EXPLODED" } }));
    records.push(json!({ "key": "p2", "value": { "id": "bad2", "asyncProcessId": "p2", "time": "soon", "state": "DONE" } }));
    // One request: one atomic append, read as one micro-batch, so the
    // changelog (one record per key per batch) is the same in every run.
    host.produce("async-process-execution", &json!({ "records": records }))
        .await?;
    host.wait_caught_up("async-process", T).await?;
    host.wait_caught_up("rejected-router", T).await?;
    let mut out = Vec::new();
    for key in KEYS {
        let (status, v) = host
            .get(&format!("/v1/pipelines/async-process/state/{key}"))
            .await?;
        ensure!(status == 200, "{label}: no state for {key}");
        out.push(v);
    }
    let (_, rejected) = host
        .get("/v1/topics/rejected-process/records?limit=1000")
        .await?;
    let mut emitted: Vec<Value> = rejected["records"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            // The id header names the changelog record's offset: present, but
            // not part of the comparison.
            let id = r["headers"]["eddy-id"].as_str().unwrap_or_default();
            json!({ "key": r["key"], "value": r["value"], "has_id": id.starts_with("async-process/") })
        })
        .collect();
    emitted.sort_by_key(|v| v.to_string());
    let (_, dead) = host.get("/v1/pipelines/async-process/dead-letters").await?;
    let dead: Vec<Value> = dead["dead_letters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| json!({ "offset": d["offset"], "partition": d["partition"], "class": d["error_class"], "key": d["key"] }))
        .collect();
    Ok((out, emitted, dead))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_scenario_gives_identical_results_in_rust_python_javascript_and_c() -> Result<()> {
    let rust = scenario("rust", &async_process_config_in("")?).await?;
    ensure!(
        rust.0
            .iter()
            .all(|s| s["executions"].as_array().map(Vec::len) == Some(8)),
        "{:?}",
        rust.0
    );
    ensure!(
        !rust.1.is_empty(),
        "p4 (and any other REJECTED process) reaches rejected-process"
    );
    ensure!(
        rust.2.len() == 2,
        "both poison events dead-lettered: {:?}",
        rust.2
    );
    let rust_v0_1 = async_process_config_with(
        &plugin_v0_1("async-process-aggregator")?,
        &plugin_v0_1("rejected-process-router")?,
    )?;
    for (lang, config) in [
        ("rust (contract 0.1.0)", rust_v0_1),
        ("python", async_process_config_in("python/")?),
        ("js", async_process_config_in("js/")?),
        ("c", async_process_config_in("c/")?),
    ] {
        let other = scenario(lang, &config).await?;
        ensure!(
            other.0 == rust.0,
            "{lang} states differ:\n{:?}\nvs rust\n{:?}",
            other.0,
            rust.0
        );
        ensure!(
            other.1 == rust.1,
            "{lang} emitted records differ:\n{:?}\nvs rust\n{:?}",
            other.1,
            rust.1
        );
        ensure!(
            other.2 == rust.2,
            "{lang} dead letters differ:\n{:?}\nvs rust\n{:?}",
            other.2,
            rust.2
        );
    }
    Ok(())
}

/// Timers in every language: the AsyncProcess aggregator's timeout
/// (`ASYNC_PROCESS_TIMEOUT_MS`, read from the granted environment — Rust
/// through `eddy_sdk::env`, Python `os.environ`, JavaScript
/// `wasi:cli/environment`, C `getenv`) marks a process left in STARTED as ERROR, and
/// the timed-out process emitted to `timed-out`, identically. Its
/// executions' times lie in the past, so each timer is due when set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_identically_in_rust_python_javascript_and_c() -> Result<()> {
    let mut results = Vec::new();
    for (lang, dir) in [
        ("rust", ""),
        ("python", "python/"),
        ("js", "js/"),
        ("c", "c/"),
    ] {
        let config = async_process_config_in(dir)?;
        let topics = "[[source.topics]]\nname = \"rejected-process\"\npartitions = 1\n";
        ensure!(config.contains(topics), "the example's topics changed");
        let config = config
            .replacen(
                "memory_mb = 64\n",
                "memory_mb = 64\ngrants = { env = { ASYNC_PROCESS_TIMEOUT_MS = \"1500\", ASYNC_PROCESS_TIMEOUT_TOPIC = \"timed-out\" } }\n",
                1,
            )
            .replacen(
                topics,
                &format!("{topics}\n[[source.topics]]\nname = \"timed-out\"\npartitions = 1\n"),
                1,
            );
        let host = Host::start(&config).await?;
        let records: Vec<Value> = [
            ("stuck", "a", 1_000, "STARTED"),
            ("done", "a", 1_000, "STARTED"),
            ("done", "b", 1_200, "DONE"),
            ("retrying", "a", 2_000, "RETRY"),
        ]
        .iter()
        .map(|(key, id, t, st)| json!({ "value": execution(&format!("{key}-{id}"), key, *t, st) }))
        .collect();
        host.produce("async-process-execution", &json!({ "records": records }))
            .await?;
        let deadline = std::time::Instant::now() + T;
        let states = loop {
            let mut states = Vec::new();
            for key in ["stuck", "done", "retrying"] {
                let (_, v) = host
                    .get(&format!("/v1/pipelines/async-process/state/{key}"))
                    .await?;
                states.push(v);
            }
            if states[0]["state"] == "ERROR" && states[2]["state"] == "ERROR" {
                break states;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{lang}: no timeout: {states:?}\n{}",
                host.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        host.wait_caught_up("async-process", T).await?;
        let (_, emitted) = host.get("/v1/topics/timed-out/records?limit=100").await?;
        let mut emitted: Vec<Value> = emitted["records"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| json!({ "key": r["key"], "value": r["value"] }))
            .collect();
        emitted.sort_by_key(|r| r["key"].as_str().unwrap_or_default().to_owned());
        ensure!(
            states[0]["executions"][1]["id"] == "timeout@2500"
                && states[0]["executions"][1]["description"] == "no update for 1500 ms in STARTED"
                && states[1]["state"] == "DONE"
                && states[2]["executions"][1]["description"] == "no update for 1500 ms in RETRY"
                && emitted.len() == 2,
            "{lang}: {states:?} {emitted:?}"
        );
        results.push((lang, states, emitted));
    }
    let (_, rust_states, rust_emitted) = &results[0];
    for (lang, states, emitted) in &results[1..] {
        ensure!(
            states == rust_states && emitted == rust_emitted,
            "{lang} differs from rust:\n{states:?}\n{emitted:?}\nvs\n{rust_states:?}\n{rust_emitted:?}"
        );
    }
    Ok(())
}

/// A pipeline's states carry across deploys between contracts and state
/// formats: JSON (Rust 0.1.0), MessagePack (Rust 0.2.0), back to a 0.1.0
/// build (the host renders MessagePack for it), JSON again (Python 0.2.0),
/// MessagePack again. Each step folds one execution per key on top of what
/// the previous version left; the changelog's readers (the router) and the
/// state API see JSON throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_carry_across_deploys_between_contracts_and_formats() -> Result<()> {
    const TOKEN: &str = "deploy-token";
    let rust_v0_1 = plugin_v0_1("async-process-aggregator")?;
    let rust = plugin("async-process-aggregator")?;
    let python = plugin("python/async-process-aggregator")?;
    let config = async_process_config_with(&rust_v0_1, &plugin("rejected-process-router")?)?
        .replacen(
            "[http]\n",
            &format!("[http]\nadmin_token = \"{TOKEN}\"\n"),
            1,
        );
    let host = Host::start(&config).await?;
    let steps = [
        (None, "ACCEPTED"),
        (Some(&rust), "STARTED"),
        (Some(&rust_v0_1), "RETRY"),
        (Some(&python), "STARTED"),
        (Some(&rust), "REJECTED"),
    ];
    for (i, (deploy, state)) in steps.iter().enumerate() {
        if let Some(component) = deploy {
            let r = host
                .http
                .put(format!("{}/v1/plugins/async-process-aggregator", host.url))
                .bearer_auth(TOKEN)
                .body(std::fs::read(component)?)
                .send()
                .await?;
            let status = r.status().as_u16();
            let body = r.text().await?;
            ensure!(status == 200, "deploy of step {i}: {status} {body}");
        }
        let records: Vec<Value> = KEYS
            .iter()
            .map(|key| json!({ "value": execution(&format!("{key}-s{i}"), key, 100 + i as i64, state) }))
            .collect();
        host.produce("async-process-execution", &json!({ "records": records }))
            .await?;
        host.wait_caught_up("async-process", T).await?;
        for key in KEYS {
            let (status, v) = host
                .get(&format!("/v1/pipelines/async-process/state/{key}"))
                .await?;
            let ids: Vec<&str> = v["executions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["id"].as_str())
                .collect();
            let want: Vec<String> = (0..=i).map(|s| format!("{key}-s{s}")).collect();
            ensure!(
                status == 200 && ids == want && v["state"] == *state,
                "step {i} ({state}), key {key}: {status} {v}"
            );
        }
    }
    // Every aggregate reached the router as JSON: each key ends REJECTED.
    host.wait_caught_up("rejected-router", T).await?;
    let (_, rejected) = host
        .get("/v1/topics/rejected-process/records?limit=1000")
        .await?;
    let mut keys: Vec<&str> = rejected["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["key"].as_str())
        .collect();
    keys.sort_unstable();
    ensure!(keys == KEYS, "{rejected}");
    let (_, dead) = host
        .get("/v1/pipelines/rejected-router/dead-letters")
        .await?;
    ensure!(
        dead["dead_letters"].as_array().is_some_and(Vec::is_empty),
        "{dead}"
    );
    Ok(())
}

fn eddy(args: &[&str], dir: &std::path::Path) -> Result<String> {
    let (ok, text) = run_eddy(args, dir)?;
    ensure!(ok, "eddy {args:?} failed:\n{text}");
    Ok(text)
}

/// The C SDK's JSON values (`sdk/c/test_eddy.c`), compiled natively with
/// the address and undefined-behaviour sanitizers: reading (nesting, escapes,
/// surrogates, 64-bit integers, errors with line and column), writing
/// (numbers as serde_json writes them), building and changing values.
#[test]
fn the_c_sdk_reads_and_writes_json() -> Result<()> {
    let sdk = root().join("sdk/c");
    let cc = std::iter::once("clang".to_owned())
        .chain((14..=30).rev().map(|v| format!("clang-{v}")))
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .context("no clang (scripts/setup.sh installs it)")?;
    let work = tempfile::tempdir()?;
    let exe = work.path().join("test_eddy");
    let built = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .arg("-fsanitize=address,undefined")
        .arg("-I")
        .arg(&sdk)
        .arg(sdk.join("eddy.c"))
        .arg(sdk.join("test_eddy.c"))
        .args(["-lm", "-o"])
        .arg(&exe)
        .output()?;
    ensure!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&exe).output()?;
    ensure!(
        ran.status.success() && String::from_utf8_lossy(&ran.stdout).contains("all passed"),
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    Ok(())
}

/// The AsyncProcess fixtures (`examples/async-process/fixtures/`) pass for
/// the aggregator and the router in every language, run by `eddy plugin
/// test` with no server or broker.
#[test]
fn the_async_process_fixtures_pass_in_every_language() -> Result<()> {
    let fixtures = root().join("examples/async-process/fixtures");
    for lang in ["", "python/", "js/", "c/"] {
        for (plugin_name, cases, count) in [
            ("async-process-aggregator", "aggregator", 3),
            ("rejected-process-router", "router", 1),
        ] {
            let component = plugin(&format!("{lang}{plugin_name}"))?;
            let out = eddy(
                &[
                    "plugin",
                    "test",
                    &component.display().to_string(),
                    "--fixtures",
                    &fixtures.join(cases).display().to_string(),
                ],
                &root(),
            )?;
            ensure!(
                out.contains(&format!("{count} passed, 0 failed")),
                "{lang}{plugin_name}: {out}"
            );
        }
    }
    Ok(())
}

/// A plugin that fails on an event: its dead letter (and the host's log
/// line) names the event (topic, partition, offset), its key and where in
/// the plugin's source it failed — a Rust panic's file:line, a Python
/// traceback, a JavaScript stack mapped to the plugin's file, a C
/// assert's file:line and function.
#[test]
fn a_plugin_failure_names_the_event_key_and_source_line_in_each_language() -> Result<()> {
    let work = tempfile::tempdir()?;
    let d = work.path();
    for (lang, file, from, to, place) in [
        (
            "rust",
            "src/lib.rs",
            "state.count += 1;",
            "state.count += 1;\n        if event.value.get(\"boom\").is_some() {\n            panic!(\"boom in the plugin\");\n        }",
            "panicked at src/lib.rs:25:13: boom in the plugin",
        ),
        (
            "python",
            "app.py",
            "state[\"count\"] += 1",
            "state[\"count\"] += 1\n        if \"boom\" in event.value:\n            raise KeyError(\"boom in the plugin\")",
            "File \"app.py\", line 13, in apply",
        ),
        (
            "js",
            "plugin.js",
            "state.count += 1;",
            "state.count += 1;\n    if (event.value.boom) throw new Error(\"boom in the plugin\");",
            "apply@plugin.js:8:",
        ),
        (
            "c",
            "plugin.c",
            "  eddy_set(state, \"count\", eddy_int(count + 1));",
            "  assert(!eddy_get(event->value, \"boom\") && \"boom in the plugin\");\n  eddy_set(state, \"count\", eddy_int(count + 1));",
            "assertion failed at plugin.c:16 in eddy_apply",
        ),
    ] {
        let name = format!("fails-{lang}");
        eddy(&["plugin", "new", "--lang", lang, &name], d)?;
        let path = d.join(&name).join(file);
        let code = std::fs::read_to_string(&path)?;
        ensure!(code.contains(from), "{lang}: {code}");
        std::fs::write(&path, code.replacen(from, to, 1))?;
        let fixture = format!(
            r#"match = "partial"

[[event]]
key = "k"
value = {{ n = 1 }}

[[event]]
key = "k"
value = {{ boom = true }}
expect.state = {{ count = 1 }}
expect.dead_letters = [{{ topic = "input", partition = 0, offset = 1, key = "k", stage = "aggregate", error = {place:?} }}]

[expect]
dead_letters = [{{ key = "k", error = "boom in the plugin" }}]
"#
        );
        std::fs::write(d.join(&name).join("fixtures/example.toml"), fixture)?;
        let out = Command::new(eddy_bin()?)
            .args(["plugin", "test", &name])
            .current_dir(d)
            .env("CARGO_TARGET_DIR", root().join("target"))
            .env("RUST_LOG", "warn")
            .env("EDDY_LOG_FORMAT", "json")
            .output()?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        ensure!(
            out.status.success() && stdout.contains("1 passed, 0 failed"),
            "{lang}:\n{stdout}\n{stderr}"
        );
        // The host's log line: the event, its key, the place.
        let line: Value = stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == json!("event dead-lettered"))
            .with_context(|| format!("{lang}: no dead-letter log line in\n{stderr}"))?;
        ensure!(
            line["topic"] == json!("input")
                && line["partition"] == json!(0)
                && line["offset"] == json!(1)
                && line["key"].as_str().is_some_and(|k| k.contains('k'))
                && line["error"].as_str().is_some_and(|e| e.contains(place)),
            "{lang}: {line}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_author_can_scaffold_build_check_and_run_a_plugin_in_each_language() -> Result<()> {
    let work = tempfile::tempdir()?;
    let d = work.path();
    let mut plugins = String::new();
    let mut pipelines = String::new();
    for lang in ["rust", "python", "js", "c"] {
        let name = format!("tally-{lang}");
        eddy(&["plugin", "new", "--lang", lang, &name], d)?;
        let built = eddy(
            &["plugin", "build", &name, "--out", &format!("{name}.wasm")],
            d,
        )?;
        ensure!(
            built.contains(&format!("built plugin {name}")) || built.contains("built plugin"),
            "{built}"
        );
        let checked = eddy(&["plugin", "check", &format!("{name}.wasm")], d)?;
        // `plugin new` scaffolds against the current contract.
        ensure!(
            checked.contains("valid Eddy aggregator plugin, contract 0.2.0"),
            "{checked}"
        );
        // `plugin new` writes a fixture that passes as generated.
        let tested = eddy(
            &[
                "plugin",
                "test",
                &format!("{name}.wasm"),
                "--fixtures",
                &format!("{name}/fixtures"),
            ],
            d,
        )?;
        ensure!(tested.contains("1 passed, 0 failed"), "{tested}");
        plugins.push_str(&format!(
            "[[plugin]]\nname = \"{name}\"\npath = \"{}\"\n\n",
            d.join(format!("{name}.wasm")).display()
        ));
        pipelines.push_str(&format!(
            "[[pipeline]]\nname = \"{name}\"\ntopic = \"in-{lang}\"\naggregator = \"{name}\"\n\n"
        ));
    }
    let host = Host::start(&format!("{plugins}{pipelines}")).await?;
    for lang in ["rust", "python", "js", "c"] {
        let topic = format!("in-{lang}");
        host.produce(
            &topic,
            &json!({ "records": [
                { "key": "k", "value": { "n": 1 } },
                { "key": "k", "value": { "n": 2 } },
            ]}),
        )
        .await?;
        host.wait_caught_up(&format!("tally-{lang}"), T).await?;
        let (status, v) = host
            .get(&format!("/v1/pipelines/tally-{lang}/state/k"))
            .await?;
        ensure!(
            status == 200 && v == json!({ "count": 2, "last": { "n": 2 } }),
            "{lang}: {status} {v}"
        );
    }
    // Scaffolding over an existing directory is refused.
    let again = Command::new(eddy_bin()?)
        .args(["plugin", "new", "--lang", "js", "tally-js"])
        .current_dir(d)
        .output()?;
    ensure!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("already exists")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_grants_no_files_sockets_or_environment() -> Result<()> {
    let probe = test_component("python-wasi-probe")?;
    let data = tempfile::tempdir()?;
    std::fs::write(data.path().join("hello.txt"), "granted")?;
    let config = format!(
        r#"
[[plugin]]
name = "probe"
path = "{probe}"
timeout_ms = 5000

[[plugin]]
name = "granted"
path = "{probe}"
timeout_ms = 5000
[plugin.grants]
env = {{ GREETING = "hi" }}
read_dirs = [{{ host = "{data}", guest = "/data" }}]

[[pipeline]]
name = "probe"
topic = "probe-in"
handlers = ["probe"]

[[pipeline]]
name = "granted"
topic = "granted-in"
handlers = ["granted"]
"#,
        probe = probe.display(),
        data = data.path().display()
    );
    let host = Host::start(&config).await?;
    host.produce("probe-in", &json!({ "key": "bare", "value": {} }))
        .await?;
    host.produce("granted-in", &json!({ "key": "granted", "value": {} }))
        .await?;
    host.wait_caught_up("probe", T).await?;
    host.wait_caught_up("granted", T).await?;
    let (_, out) = host.get("/v1/topics/wasi-probe-out/records").await?;
    let report = |key: &str| {
        out["records"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["key"] == key)
            .map(|r| r["value"].clone())
            .with_context(|| format!("the {key} probe reported nothing: {out}"))
    };
    let denied = |v: &Value| v.as_str().is_some_and(|s| s.starts_with("denied"));
    let bare = report("bare")?;
    for what in ["file", "dir", "socket", "granted_file", "granted_write"] {
        ensure!(denied(&bare[what]), "{what} must be denied: {bare}");
    }
    ensure!(bare["env"] == json!({}), "no environment: {bare}");
    // Grants open exactly what they name, read-only.
    let granted = report("granted")?;
    ensure!(granted["granted_file"] == "allowed: granted", "{granted}");
    ensure!(denied(&granted["granted_write"]), "read-only: {granted}");
    ensure!(
        denied(&granted["file"]) && denied(&granted["socket"]),
        "{granted}"
    );
    ensure!(granted["env"] == json!({ "GREETING": "hi" }), "{granted}");
    Ok(())
}

/// The host serves states as they are, so a state that is not JSON (here
/// Python's `NaN`) is refused as the plugin's bad output: the event is
/// dead-lettered, the key keeps its last good state, later events apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_is_not_json_is_dead_lettered_and_never_served() -> Result<()> {
    let plugin = test_component("python-nan-state")?;
    let config = format!(
        r#"
[source]
kind = "embedded"
[[source.topics]]
name = "numbers"
partitions = 1

[[plugin]]
name = "sum"
path = "{}"
max_retries = 0

[[pipeline]]
name = "sums"
topic = "numbers"
aggregator = "sum"
"#,
        plugin.display()
    );
    let host = Host::start(&config).await?;
    for value in [json!({ "n": 2 }), json!({ "nan": true }), json!({ "n": 3 })] {
        host.produce("numbers", &json!({ "key": "k", "value": value }))
            .await?;
        host.wait_caught_up("sums", T).await?;
    }
    let (status, state) = host.get("/v1/pipelines/sums/state/k").await?;
    ensure!(
        status == 200 && state == json!({ "sum": 5 }),
        "{status} {state}"
    );
    let (_, dead) = host.get("/v1/pipelines/sums/dead-letters").await?;
    let letters = dead["dead_letters"].as_array().cloned().unwrap_or_default();
    ensure!(letters.len() == 1, "{dead}");
    let letter = letters.first().cloned().unwrap_or_default();
    ensure!(
        letter["error_class"] == "bad_output"
            && letter["error"]
                .as_str()
                .is_some_and(|e| e.contains("not JSON") && e.contains("\"k\""))
            && letter["offset"] == 1,
        "{letter}"
    );
    Ok(())
}
