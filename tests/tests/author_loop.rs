//! The plugin author's loop, as a new author runs it: `eddy plugin new`,
//! an edit that breaks the plugin, `eddy plugin test` failing with a diff
//! that names the event, key and field, the fix, `eddy dev` deploying each
//! passing save into a running host (and refusing a failing one); a
//! fixture recorded from a running host's topic with `--record`; a schema
//! contract that cannot read the fixture's schema versions, named.

#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null; a test that indexes past a Vec fails, as it should"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::{Host, async_process_config, eddy_bin, execution, plugin, root, run_eddy as eddy};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const TOKEN: &str = "author-loop-admin";

/// `eddy dev` running in the background, its output collected.
struct Dev {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Dev {
    fn start(dir: &Path, plugin: &str, to: &str) -> Result<Dev> {
        let mut child = Command::new(eddy_bin()?)
            .args(["dev", plugin, "--to", to])
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", root().join("target"))
            .env("EDDY_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut o) = out.lock() {
                        o.push_str(&line);
                        o.push('\n');
                    }
                }
            });
        }
        Ok(Dev { child, out })
    }

    fn text(&self) -> String {
        self.out.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits until `needle` occurs `n` times in the output.
    fn wait_for(&self, needle: &str, n: usize, within: Duration) -> Result<String> {
        let started = Instant::now();
        loop {
            let text = self.text();
            if text.matches(needle).count() >= n {
                return Ok(text);
            }
            if started.elapsed() > within {
                bail!("eddy dev did not print {needle:?} {n} time(s) within {within:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn state(host: &Host, key: &str) -> Result<Value> {
    let (status, v) = host
        .get(&format!("/v1/pipelines/tally/state/{key}"))
        .await?;
    ensure!(status == 200, "{status} {v}");
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_author_tests_fixes_and_goes_live_with_eddy_dev() -> Result<()> {
    let work = tempfile::tempdir()?;
    let d = work.path();
    let name = "author-loop-tally";
    let (ok, out) = eddy(&["plugin", "new", "--lang", "rust", name], d)?;
    ensure!(ok && out.contains("eddy plugin test"), "{out}");
    let lib = d.join(name).join("src/lib.rs");
    let code = std::fs::read_to_string(&lib)?;
    ensure!(code.contains("state.count += 1;"), "{code}");

    // The generated fixture passes as generated.
    let (ok, out) = eddy(&["plugin", "test", name], d)?;
    ensure!(ok && out.contains("1 passed, 0 failed"), "{out}");

    // A bug: the test names the event, the key, the field, both values.
    std::fs::write(&lib, code.replace("state.count += 1;", "state.count += 2;"))?;
    let (ok, out) = eddy(&["plugin", "test", name], d)?;
    ensure!(!ok, "a broken plugin passed:\n{out}");
    for part in [
        "FAIL",
        "after event 1 (key \"k\", partition 0, offset 0): state of key \"k\"",
        ".count: expected 1, got 2",
        "after the last event: state of key \"other\"",
        "0 passed, 1 failed",
    ] {
        ensure!(out.contains(part), "no {part:?} in:\n{out}");
    }
    // The fix.
    std::fs::write(&lib, &code)?;
    let (ok, out) = eddy(&["plugin", "test", name], d)?;
    ensure!(ok && out.contains("1 passed, 0 failed"), "{out}");

    // A host running the plugin as built.
    let wasm = root().join("target/plugins").join(format!("{name}.wasm"));
    ensure!(wasm.is_file(), "no {}", wasm.display());
    let config = format!(
        "[[plugin]]\nname = \"{name}\"\npath = {:?}\n\n[[pipeline]]\nname = \"tally\"\ntopic = \"in\"\naggregator = \"{name}\"\n",
        wasm.display().to_string()
    );
    let host = Host::start_with_env(&config, &[("EDDY_ADMIN_TOKEN", TOKEN)]).await?;
    host.produce(
        "in",
        &json!({ "records": [{ "key": "a", "value": { "n": 1 } }] }),
    )
    .await?;
    host.wait_caught_up("tally", T).await?;
    ensure!(state(&host, "a").await? == json!({ "count": 1, "last": { "n": 1 } }));

    // eddy dev: the first round builds, tests and deploys.
    let dev = Dev::start(d, name, &host.url)?;
    dev.wait_for("live: ", 1, Duration::from_secs(600))?;

    // A save that breaks a fixture is not deployed.
    let edited = code.replace(
        "    pub last: serde_json::Value,\n",
        "    pub last: serde_json::Value,\n    #[serde(default)]\n    pub doubled: u64,\n",
    );
    let edited = edited.replace(
        "state.count += 1;",
        "state.count += 1;\n        state.doubled = state.count * 2;",
    );
    ensure!(edited.contains("state.doubled"), "{edited}");
    std::fs::write(&lib, &edited)?;
    let text = dev.wait_for("not deployed: the running version stays", 1, T)?;
    ensure!(text.contains(".doubled: not expected (got 2)"), "{text}");
    host.produce(
        "in",
        &json!({ "records": [{ "key": "a", "value": { "n": 2 } }] }),
    )
    .await?;
    host.wait_caught_up("tally", T).await?;
    ensure!(state(&host, "a").await? == json!({ "count": 2, "last": { "n": 2 } }));

    // The fixture learns the new field: the same save goes live.
    let fixture = d.join(name).join("fixtures/example.toml");
    let expected = std::fs::read_to_string(&fixture)?
        .replace(
            "expect.state = { count = 1, last = { n = 1 } }",
            "expect.state = { count = 1, last = { n = 1 }, doubled = 2 }",
        )
        .replace(
            "k = { count = 2, last = { n = 2 } }",
            "k = { count = 2, last = { n = 2 }, doubled = 4 }",
        )
        .replace(
            "other = { count = 1, last = { n = 3 } }",
            "other = { count = 1, last = { n = 3 }, doubled = 2 }",
        );
    std::fs::write(&fixture, expected)?;
    let text = dev.wait_for("live: ", 2, T)?;
    ensure!(text.contains("ms from save"), "{text}");
    host.produce(
        "in",
        &json!({ "records": [{ "key": "a", "value": { "n": 3 } }] }),
    )
    .await?;
    host.wait_caught_up("tally", T).await?;
    ensure!(
        state(&host, "a").await? == json!({ "count": 3, "last": { "n": 3 }, "doubled": 6 }),
        "{}",
        dev.text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixture_recorded_from_a_running_host_replays_and_catches_a_change() -> Result<()> {
    let agg = plugin("async-process-aggregator")?;
    let host = Host::start(&async_process_config()?).await?;
    host.produce(
        "async-process-execution",
        &json!({ "records": [
            { "key": "p1", "value": execution("e1", "p1", 1_000, "STARTED"), "headers": { "trace": "t-1" } },
            { "key": "p1", "value": execution("e2", "p1", 2_000, "DONE") },
            { "key": "p2", "value": execution("e3", "p2", 1_500, "REJECTED") },
            { "key": "p3", "value": { "asyncProcessId": "p3", "time": "soon" } },
        ]}),
    )
    .await?;
    host.wait_caught_up("async-process", T).await?;
    let work = tempfile::tempdir()?;
    let file = work.path().join("recorded.json");
    let file_arg = file.display().to_string();
    let agg_arg = agg.display().to_string();
    let (ok, out) = eddy(
        &[
            "plugin",
            "test",
            &agg_arg,
            "--record",
            &host.url,
            "--topic",
            "async-process-execution",
            "--fixture-out",
            &file_arg,
        ],
        work.path(),
    )?;
    ensure!(ok && out.contains("recorded 4 events"), "{out}");
    let recorded: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    ensure!(
        recorded["pipeline"]["key_field"] == json!("asyncProcessId"),
        "{recorded}"
    );
    let events = recorded["event"].as_array().context("no events")?;
    ensure!(events.len() == 4, "{recorded}");
    ensure!(
        events.iter().any(|e| e["headers"]["trace"] == json!("t-1")),
        "{recorded}"
    );
    // Its expectations are what the plugin does now: the host's states.
    let (_, p1) = host.get("/v1/pipelines/async-process/state/p1").await?;
    ensure!(recorded["expect"]["states"]["p1"] == p1, "{recorded}\n{p1}");
    ensure!(
        recorded["expect"]["dead_letters"][0]["key"] == json!("p3"),
        "{recorded}"
    );
    let (ok, out) = eddy(
        &["plugin", "test", &agg_arg, "--fixtures", &file_arg],
        work.path(),
    )?;
    ensure!(ok && out.contains("1 passed, 0 failed"), "{out}");
    // The author corrects an expectation: the recorded case now fails on it.
    let mut changed = recorded.clone();
    changed["expect"]["states"]["p1"]["state"] = json!("ERROR");
    std::fs::write(&file, serde_json::to_string_pretty(&changed)?)?;
    let (ok, out) = eddy(
        &["plugin", "test", &agg_arg, "--fixtures", &file_arg],
        work.path(),
    )?;
    ensure!(
        !ok && out.contains("state of key \"p1\"")
            && out.contains(".state: expected \"ERROR\", got \"DONE\""),
        "{out}"
    );
    Ok(())
}

#[test]
fn a_contract_that_cannot_read_the_fixtures_schemas_fails_naming_the_field() -> Result<()> {
    let agg = plugin("async-process-aggregator")?;
    let work = tempfile::tempdir()?;
    let d = work.path();
    let schemas = root().join("examples/async-process/schemas");
    let v2 = std::fs::read_to_string(schemas.join("execution-v2.avsc"))?;
    let reader = v2.replace(
        r#"{"name": "worker", "type": ["null", "string"], "default": null}"#,
        r#"{"name": "worker", "type": ["null", "string"], "default": null},
    {"name": "priority", "type": "int"}"#,
    );
    ensure!(reader.contains("priority"), "{reader}");
    std::fs::write(d.join("needs-priority.avsc"), reader)?;
    let stamped = d.join("async-process-aggregator.wasm");
    let (ok, out) = eddy(
        &[
            "plugin",
            "contract",
            &agg.display().to_string(),
            "--reader-schema",
            "needs-priority.avsc",
            "-o",
            &stamped.display().to_string(),
        ],
        d,
    )?;
    ensure!(ok, "{out}");
    let fixtures = root().join("examples/async-process/fixtures/aggregator/avro-versions.toml");
    let (ok, out) = eddy(
        &[
            "plugin",
            "test",
            &stamped.display().to_string(),
            "--fixtures",
            &fixtures.display().to_string(),
        ],
        d,
    )?;
    ensure!(
        !ok && out.contains("schema contract") && out.contains("priority"),
        "{out}"
    );
    Ok(())
}
