//! The OpenAPI document is true: every documented route answers (no 5xx,
//! no "no such route"), and every route documented as needing a token or
//! the admin token refuses a missing one (401) and a wrong one (403) —
//! enumerated from the document, so a new route cannot escape the check.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use anyhow::{Context, Result, ensure};
use eddy_tests::{Host, async_process_config};
use serde_json::Value;

const TOKEN: &str = "tok-123";
const ADMIN: &str = "adm-456";

fn sample(param: &str) -> &'static str {
    match param {
        "pipeline" => "async-process",
        "topic" => "async-process-execution",
        "name" => "async-process-aggregator",
        "subject" => "async-process-execution-value",
        "version" => "latest",
        "id" => "1",
        _ => "k1",
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_route_answers_and_guards_as_documented() -> Result<()> {
    let config = async_process_config()?.replacen(
        "[http]\n",
        &format!("[http]\ntoken = \"{TOKEN}\"\nadmin_token = \"{ADMIN}\"\n"),
        1,
    );
    let host = Host::start(&config).await?;
    let (status, doc) = host.get("/openapi.json").await?;
    ensure!(status == 200 && doc["openapi"] == "3.0.3", "{status}");
    let paths = doc["paths"].as_object().context("paths")?;
    ensure!(
        paths.contains_key("/async-process/{key}"),
        "mount aliases are documented"
    );
    let mut calls = 0;
    for (path, item) in paths {
        let url_path = path
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(p) => sample(p).to_owned(),
                    None => seg.to_owned(),
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        let url = format!("{}{url_path}", host.url);
        for (method, op) in item.as_object().context("path item")? {
            let auth = op["x-eddy-auth"]
                .as_str()
                .with_context(|| format!("{method} {path}: x-eddy-auth"))?;
            let m: reqwest::Method = method.to_uppercase().parse()?;
            let body = if op["requestBody"].is_object()
                || m == reqwest::Method::POST
                || m == reqwest::Method::PUT
            {
                "{}"
            } else {
                ""
            };
            let send = |token: Option<&str>| {
                let mut r = host
                    .http
                    .request(m.clone(), &url)
                    .header("content-type", "application/json")
                    .body(body.to_owned());
                if let Some(t) = token {
                    r = r.bearer_auth(t);
                }
                r.send()
            };
            let right = match auth {
                "token" => Some(TOKEN),
                "admin" => Some(ADMIN),
                _ => None,
            };
            if right.is_some() {
                let none = send(None).await?.status();
                ensure!(none == 401, "{method} {path} without a token: {none}");
                let wrong = send(Some("wrong")).await?.status();
                ensure!(wrong == 403, "{method} {path} with a wrong token: {wrong}");
            }
            let r = send(right).await?;
            let status = r.status();
            let text = if path.ends_with("/events") || path.contains("/sse/") {
                String::new() // a stream: the status is the answer
            } else {
                r.text().await.unwrap_or_default()
            };
            ensure!(
                !status.is_server_error() && status != 401 && status != 403,
                "{method} {path}: {status} {text}"
            );
            ensure!(
                !text.contains("no such route"),
                "{method} {path} is documented but not served: {text}"
            );
            calls += 1;
        }
    }
    ensure!(calls >= 45, "{calls} documented operations called");
    let v: Value = host.get("/healthz").await?.1;
    ensure!(v["status"] == "ok");
    Ok(())
}

/// Runs schemathesis (PyPI) against the host's own document with one token.
fn fuzz(host: &Host, token: &str, include: Option<&str>, exclude: &str) -> Result<String> {
    let mut cmd = std::process::Command::new("schemathesis");
    cmd.args(["run", &format!("{}/openapi.json", host.url)])
        .args([
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "15",
            "--phases",
            "fuzzing",
        ])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--exclude-path-regex", exclude, "--seed", "20261123"]);
    if let Some(i) = include {
        cmd.args(["--include-path-regex", i]);
    }
    let out = cmd
        .output()
        .context("cannot run schemathesis (scripts/setup.sh installs it)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "schemathesis found failures:\n{text}");
    Ok(text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fuzz_run_from_the_document_finds_no_server_error() -> Result<()> {
    let config = async_process_config()?.replacen(
        "[http]\n",
        &format!("[http]\ntoken = \"{TOKEN}\"\nadmin_token = \"{ADMIN}\"\n"),
        1,
    );
    let host = Host::start(&config).await?;
    let b = &host;
    // Streams (SSE) never end, so they are left to the tests that read them.
    let (open, admin) = tokio::task::block_in_place(|| -> Result<(String, String)> {
        Ok((
            fuzz(
                b,
                TOKEN,
                None,
                "events$|/sse/|^/v1/plugins|^/v1/pipelines/[^/]+/replay$",
            )?,
            fuzz(
                b,
                ADMIN,
                Some("^/v1/plugins|^/v1/pipelines/[^/]+/replay$"),
                "events$",
            )?,
        ))
    })?;
    for run in [&open, &admin] {
        ensure!(run.contains("passed"), "{run}");
    }
    let (status, _) = host.get("/healthz").await?;
    ensure!(status == 200, "the host survived the fuzz run");
    ensure!(!host.log().contains("panicked"), "{}", host.log());
    Ok(())
}
