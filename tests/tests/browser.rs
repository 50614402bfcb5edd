//! Browsers on other origins (`http.cors_origins`), in a real headless
//! Chromium driven by playwright-core (`tests/browser/cross_origin.mjs`):
//! a page on an allowed origin reads, produces with a token (a preflighted
//! request; without the token it sees the 401 and its challenge), and
//! follows a key with EventSource, which reconnects by itself after the
//! host restarts and resumes with `Last-Event-ID` (it gets the change made
//! while it was away); a page on another origin is refused by the browser.
//! And the operator's console (`/ui`, `tests/browser/console.mjs`) against a
//! host that guards reads: the tokens asked for once, a process found and
//! followed live, markup shown as text, a dead letter corrected and
//! replayed, a component deployed and rolled back — screenshots in
//! `target/ui-screenshots/`.

#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null; a missing field fails the test"
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::{Host, async_process_config, execution, free_port, plugin_v0_1, root};
use serde_json::{Value, json};

const TOKEN: &str = "browser-write-token";
const KEY: &str = "p-web";

/// A node script under `tests/browser/` driving Chromium: JSON lines out
/// (`{"step": ...}` kept by name; `{"wait": ...}` for the test to act on),
/// answers in on stdin.
struct Script {
    node: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    steps: serde_json::Map<String, Value>,
}

impl Script {
    fn start(name: &str, args: &[&str]) -> Result<Script> {
        let mut node = Command::new("node")
            .arg(root().join("tests/browser").join(name))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run node (scripts/setup.sh installs the browser tools)")?;
        let stdin = node.stdin.take().context("no stdin")?;
        let stdout = node.stdout.take().context("no stdout")?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Script {
            node,
            stdin,
            lines,
            steps: serde_json::Map::new(),
        })
    }

    /// The next line that asks the test to act (steps are kept); `None`
    /// once the script has ended.
    async fn next(&mut self) -> Result<Option<Value>> {
        loop {
            let line = match tokio::time::timeout(Duration::from_secs(120), self.lines.recv()).await
            {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(_) => bail!(
                    "the browser script is stuck; steps so far: {:?}",
                    self.steps
                ),
            };
            let v: Value =
                serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
            if let Some(step) = v["step"].as_str() {
                self.steps.insert(step.to_owned(), v.clone());
            } else {
                return Ok(Some(v));
            }
        }
    }

    fn answer(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        Ok(self.stdin.flush()?)
    }

    /// Waits for the script to end; its steps, by name.
    fn finish(self, host: &Host) -> Result<serde_json::Map<String, Value>> {
        drop(self.stdin);
        let out = self.node.wait_with_output()?;
        ensure!(
            out.status.success(),
            "the browser script failed: {}\nsteps: {:?}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.steps,
            host.log()
        );
        Ok(self.steps)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_an_allowed_origin_reads_writes_and_follows_a_key_across_a_restart() -> Result<()>
{
    let page_port = free_port()?;
    let config = async_process_config()?;
    ensure!(
        config.contains("[http]\n"),
        "the example has no [http] section"
    );
    let config = config.replacen(
        "[http]\n",
        &format!(
            "[http]\ntoken = \"{TOKEN}\"\ncors_origins = [\"http://localhost:{page_port}\"]\n"
        ),
        1,
    );
    let mut host = Host::start(&config).await?;
    let mut script = Script::start(
        "cross_origin.mjs",
        &[host.url.as_str(), &page_port.to_string(), TOKEN, KEY],
    )?;
    while let Some(v) = script.next().await? {
        if v["wait"] == "restart" {
            host.terminate()?;
            host.restart().await?;
            // Made while the page is disconnected: it must come with the resume.
            produce(&host, &execution("e2", KEY, 2_000, "DONE")).await?;
            script.answer("go")?;
        }
    }
    let steps = script.finish(&host)?;
    let read = &steps["read"];
    ensure!(
        read["status"] == 200
            && read["pipelines"]
                .as_array()
                .is_some_and(|p| p.contains(&json!("async-process"))),
        "{read}"
    );
    ensure!(steps["produce"]["status"] == 200, "{}", steps["produce"]);
    let refused = &steps["produce without token"];
    ensure!(
        refused["status"] == 401
            && refused["challenge"]
                .as_str()
                .is_some_and(|c| c.starts_with("Bearer")),
        "{refused}"
    );
    let first = &steps["first change"];
    // Each change's data is the key's state.
    ensure!(first["data"]["state"] == "STARTED", "{first}");
    let after = &steps["after reconnect"];
    let seen = after["seen"].as_array().context("no changes seen")?;
    ensure!(
        after["errors"].as_u64().is_some_and(|e| e >= 1)
            && seen.len() >= 2
            && seen[1]["data"]["state"] == "DONE"
            && seen[1]["data"]["executions"].as_array().map(Vec::len) == Some(2),
        "{after}"
    );
    let other = &steps["other origin"];
    ensure!(other["blocked"] == true, "{other}");
    Ok(())
}

const ADMIN: &str = "console-admin-token";
/// A key that would add an image (and run its handler) if it were put into
/// the page as HTML.
const MARKUP_KEY: &str = "<img src=x onerror=\"window.__xss=1\">";

/// Produces one execution with the write token; fails unless 200.
async fn produce(host: &Host, value: &Value) -> Result<()> {
    let r = host
        .http
        .post(format!(
            "{}/v1/topics/async-process-execution/records",
            host.url
        ))
        .bearer_auth(TOKEN)
        .json(&json!({ "value": value }))
        .send()
        .await?;
    ensure!(r.status() == 200, "produce answered {}", r.status());
    Ok(())
}

async fn state_of(host: &Host, key: &str) -> Result<Value> {
    let r = host
        .http
        .get(format!(
            "{}/v1/pipelines/async-process/state/{key}",
            host.url
        ))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    ensure!(r.status() == 200, "state of {key}: {}", r.status());
    Ok(r.json().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_finds_follows_replays_and_deploys_with_reads_guarded() -> Result<()> {
    let config = async_process_config()?.replacen(
        "[http]\n",
        &format!("[http]\ntoken = \"{TOKEN}\"\nadmin_token = \"{ADMIN}\"\nprotect_reads = true\n"),
        1,
    );
    // A schedule, for the pipelines page's table (hourly: it stays quiet).
    let config = format!(
        "{config}\n[[schedule]]\nname = \"hourly-sweep\"\npipeline = \"async-process\"\nevery_ms = 3600000\n"
    );
    let host = Host::start(&config).await?;
    let candidate = plugin_v0_1("async-process-aggregator")?;
    let shots = root().join("target/ui-screenshots");
    std::fs::create_dir_all(&shots)?;

    // The page and its files are served without a token, with a policy
    // that allows only its own files; the API still wants the token.
    let r = host.http.get(format!("{}/ui/", host.url)).send().await?;
    let policy = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(r.status() == 200, "/ui/ answered {}", r.status());
    ensure!(
        policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"),
        "{policy}"
    );
    let r = host
        .http
        .get(format!("{}/v1/pipelines", host.url))
        .send()
        .await?;
    ensure!(r.status() == 401, "reads are guarded: {}", r.status());
    ensure!(
        r.headers()
            .get("content-security-policy")
            .is_some_and(|v| v.as_bytes() == b"default-src 'none'; frame-ancestors 'none'"),
        "API answers carry a policy too: {:?}",
        r.headers()
    );

    produce(&host, &execution("e1", KEY, 1_000, "ACCEPTED")).await?;
    let mut markup = execution("m1", MARKUP_KEY, 1_000, "ACCEPTED");
    markup["description"] = json!("<script>window.__xss=2</script><b>bold?</b>");
    produce(&host, &markup).await?;
    produce(&host, &execution("d1", "p-dead", 1_000, "ACCEPTED")).await?;
    produce(&host, &execution("d2", "p-dead", 2_000, "EXPLODED")).await?;
    let r = host
        .http
        .get(format!("{}/v1/pipelines/async-process", host.url))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    ensure!(r.status() == 200);

    // Two versions of a subject, for the schemas page's diff.
    for fields in [
        r#"[{"name":"id","type":"string"}]"#,
        r#"[{"name":"id","type":"string"},{"name":"note","type":["null","string"],"default":null}]"#,
    ] {
        let schema = format!(r#"{{"type":"record","name":"Demo","fields":{fields}}}"#);
        let r = host
            .http
            .post(format!(
                "{}/registry/subjects/ui-demo-value/versions",
                host.url
            ))
            .bearer_auth(TOKEN)
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(json!({ "schema": schema }).to_string())
            .send()
            .await?;
        ensure!(r.status() == 200, "register: {}", r.status());
    }

    let mut script = Script::start(
        "console.mjs",
        &[
            host.url.as_str(),
            TOKEN,
            ADMIN,
            KEY,
            MARKUP_KEY,
            "p-dead",
            &candidate.display().to_string(),
            &shots.display().to_string(),
        ],
    )?;
    while let Some(v) = script.next().await? {
        if v["wait"] == "produce" {
            produce(&host, &execution("e2", KEY, 2_000, "STARTED")).await?;
            script.answer("go")?;
        }
    }
    let steps = script.finish(&host)?;
    let page = &steps["page"];
    ensure!(
        page["status"] == 200 && page["policy"] == json!(policy),
        "{page}"
    );
    ensure!(
        steps["pipelines"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("async-process")
                && t.contains("lag")
                && t.contains("hourly-sweep")
                && t.contains("every 3600000 ms")),
        "{}",
        steps["pipelines"]
    );
    let live = &steps["live"];
    ensure!(
        live["before"] == "ACCEPTED" && live["after"] == "STARTED",
        "{live}"
    );
    let m = &steps["markup"];
    ensure!(
        m["images"] == 0 && m["scripts"] == 0 && m["ran"] == 0 && m["key"] == MARKUP_KEY,
        "{m}"
    );
    ensure!(
        m["state"]
            .as_str()
            .is_some_and(|s| s.contains("<script>window.__xss=2</script>")),
        "the markup in the state shows as text: {m}"
    );
    ensure!(
        m["latestKeys"]
            .as_array()
            .is_some_and(|k| k.contains(&json!(MARKUP_KEY))),
        "{m}"
    );
    let dead = &steps["dead letter"];
    ensure!(
        dead["error"]
            .as_str()
            .is_some_and(|e| e.contains("EXPLODED")),
        "{dead}"
    );
    // The corrected execution was folded.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = state_of(&host, "p-dead").await?;
        if s["state"] == "DONE" {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the replayed correction was not applied: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plugins = &steps["plugins"];
    ensure!(
        plugins["v0"] != plugins["v1"] && plugins["back"] == plugins["v0"],
        "{plugins}"
    );
    ensure!(
        steps["shadow"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("states differ")),
        "{}",
        steps["shadow"]
    );
    let schemas = &steps["schemas"];
    ensure!(
        schemas["text"]
            .as_str()
            .is_some_and(|t| t.contains("versions: 1, 2"))
            && schemas["added"].as_array().is_some_and(|a| a
                .iter()
                .any(|l| l.as_str().is_some_and(|l| l.contains("note")))),
        "{schemas}"
    );
    let errors = &steps["errors"];
    ensure!(
        errors["policy"] == json!([])
            && errors["page"] == json!([])
            && errors["tokenInUrl"] == json!([]),
        "{errors}"
    );
    for shot in ["pipelines", "state", "dead-letters", "plugins", "schemas"] {
        ensure!(
            shots.join(format!("{shot}.png")).is_file(),
            "no screenshot {shot}"
        );
    }
    Ok(())
}
