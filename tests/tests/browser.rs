//! Browsers on other origins (`http.cors_origins`), in a real headless
//! Chromium driven by playwright-core (`tests/browser/cross_origin.mjs`):
//! a page on an allowed origin reads, produces with a token (a preflighted
//! request; without the token it sees the 401 and its challenge), and
//! follows a key with EventSource, which reconnects by itself after the
//! host restarts and resumes with `Last-Event-ID` (it gets the change made
//! while it was away); a page on another origin is refused by the browser.

#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null; a missing field fails the test"
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::{Host, async_process_config, execution, free_port, root};
use serde_json::{Value, json};

const TOKEN: &str = "browser-write-token";
const KEY: &str = "p-web";

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
    let script = root().join("tests/browser/cross_origin.mjs");
    let mut node = Command::new("node")
        .arg(&script)
        .args([host.url.as_str(), &page_port.to_string(), TOKEN, KEY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run node (scripts/setup.sh installs the browser tools)")?;
    let mut stdin = node.stdin.take().context("no stdin")?;
    let stdout = node.stdout.take().context("no stdout")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut steps = serde_json::Map::new();
    loop {
        let line = match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(_) => bail!("the browser script is stuck; steps so far: {steps:?}"),
        };
        let v: Value = serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
        if v["wait"] == "restart" {
            host.terminate()?;
            host.restart().await?;
            // Made while the page is disconnected: it must come with the resume.
            let status = host
                .http
                .post(format!(
                    "{}/v1/topics/async-process-execution/records",
                    host.url
                ))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(
                    json!({ "records": [{ "value": execution("e2", KEY, 2_000, "DONE") }] })
                        .to_string(),
                )
                .send()
                .await?
                .status();
            ensure!(status == 200, "produce e2 answered {status}");
            writeln!(stdin, "go")?;
            stdin.flush()?;
            continue;
        }
        if let Some(step) = v["step"].as_str() {
            steps.insert(step.to_owned(), v.clone());
        }
    }
    let out = node.wait_with_output()?;
    ensure!(
        out.status.success(),
        "the browser script failed: {}\nsteps: {steps:?}\n{}",
        String::from_utf8_lossy(&out.stderr),
        host.log()
    );
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
