//! Schema contracts: a plugin declares the reader schema it expects
//! (`eddy plugin contract`); the host checks it against every version of its
//! pipeline's subject on deploy, hot reload and at start, refusing with the
//! fields named, and the registry refuses (or, with `contract_breaks = "warn"`,
//! logs) a version registered later by Confluent's client that a running
//! plugin cannot read.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::{Host, async_process_config_with, eddy_bin, plugin, root};
use serde_json::{Value, json};

const SUBJECT: &str = "async-process-execution-value";
const T: Duration = Duration::from_secs(120);
const TOKEN: &str = "contract-admin-token";

fn schemas() -> PathBuf {
    root().join("examples/async-process/schemas")
}

/// Registers `file` under the subject with Confluent's client.
fn register(host: &Host, file: &Path) -> Result<Value> {
    let out = Command::new("python3")
        .arg(root().join("tests/registry/register.py"))
        .args(["--registry", &format!("{}/registry", host.url)])
        .args(["--subject", SUBJECT, "--schema"])
        .arg(file)
        .output()?;
    if !out.status.success() {
        bail!(
            "register.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `eddy plugin contract FILE --reader-schema SCHEMA -o OUT`.
fn stamp(file: &Path, schema: &Path, out: &Path) -> Result<()> {
    let o = Command::new(eddy_bin()?)
        .args(["plugin", "contract"])
        .arg(file)
        .arg("--reader-schema")
        .arg(schema)
        .arg("-o")
        .arg(out)
        .output()?;
    ensure!(
        o.status.success(),
        "eddy plugin contract failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// An Avro pipeline without a reader schema of its own (so only the
/// plugin's contract speaks), its aggregator at `agg`.
fn config(agg: &Path, extra: &str) -> Result<String> {
    let router = plugin("rejected-process-router")?;
    Ok(async_process_config_with(agg, &router)?
        .replacen(
            "key_field = \"asyncProcessId\"\n",
            "key_field = \"asyncProcessId\"\nvalue_format = \"avro\"\n",
            1,
        )
        .replacen("[store]", &format!("{extra}[store]"), 1))
}

async fn deploy(host: &Host, file: &Path) -> Result<(u16, Value)> {
    let r = host
        .http
        .put(format!("{}/v1/plugins/async-process-aggregator", host.url))
        .bearer_auth(TOKEN)
        .body(std::fs::read(file)?)
        .send()
        .await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// v2 with a field v1 and v2 lack and no default: reads neither.
fn strict(dir: &Path) -> Result<PathBuf> {
    let v2 = std::fs::read_to_string(schemas().join("execution-v2.avsc"))?;
    let strict = v2.replace(
        r#"{"name": "time", "type": "long"},"#,
        r#"{"name": "time", "type": "long"}, {"name": "priority", "type": "int"},"#,
    );
    ensure!(strict != v2);
    let path = dir.join("strict.avsc");
    std::fs::write(&path, strict)?;
    Ok(path)
}

/// v3: v2 with a new state symbol, which a reader without it cannot read.
fn v3(dir: &Path) -> Result<PathBuf> {
    let v2 = std::fs::read_to_string(schemas().join("execution-v2.avsc"))?;
    let v3 = v2.replace(r#""RETRY"]"#, r#""RETRY", "PAUSED"]"#);
    ensure!(v3 != v2);
    let path = dir.join("execution-v3.avsc");
    std::fs::write(&path, v3)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_contract_is_checked_on_deploy_at_start_and_on_registration() -> Result<()> {
    let work = tempfile::tempdir()?;
    let agg = work.path().join("agg.wasm");
    std::fs::copy(plugin("async-process-aggregator")?, &agg)?;
    let mut host = Host::start_with_env(&config(&agg, "")?, &[("EDDY_ADMIN_TOKEN", TOKEN)]).await?;
    for v in ["execution-v1.avsc", "execution-v2.avsc"] {
        let r = register(&host, &schemas().join(v))?;
        ensure!(r["id"].is_u64(), "{v}: {r}");
    }

    // A contract that cannot read v1 and v2 is refused, naming the field.
    let bad = work.path().join("agg-bad.wasm");
    stamp(&agg, &strict(work.path())?, &bad)?;
    let (status, refused) = deploy(&host, &bad).await?;
    let message = refused.to_string();
    ensure!(
        status == 422
            && message.contains("async-process-aggregator")
            && message.contains("priority")
            && message.contains("version 1")
            && message.contains("version 2"),
        "{status} {refused}"
    );
    let (_, listed) = host.get("/v1/plugins/async-process-aggregator").await?;
    ensure!(
        listed["reader_schema"].is_null(),
        "the running version stays: {listed}"
    );

    // v2 reads v1 and v2: deployed.
    let good = work.path().join("agg-good.wasm");
    stamp(&agg, &schemas().join("execution-v2.avsc"), &good)?;
    let (status, deployed) = deploy(&host, &good).await?;
    ensure!(status == 200, "{status} {deployed}");
    let (_, listed) = host.get("/v1/plugins/async-process-aggregator").await?;
    ensure!(listed["reader_schema"] == "AVRO", "{listed}");

    // Confluent's client registers a v3 the plugin cannot read: refused.
    let v3 = v3(work.path())?;
    let r = register(&host, &v3)?;
    ensure!(
        r["status"] == 409
            && r["message"].as_str().is_some_and(
                |m| m.contains("async-process-aggregator") && m.contains("enum symbol")
            ),
        "{r}"
    );
    let (_, versions) = host
        .get(&format!("/registry/subjects/{SUBJECT}/versions"))
        .await?;
    ensure!(versions == json!([1, 2]), "{versions}");

    // Hot reload: a broken contract written over the watched file is
    // refused, and the running version stays.
    std::fs::copy(&bad, &agg)?;
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, listed) = host.get("/v1/plugins/async-process-aggregator").await?;
        if listed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("priority"))
        {
            ensure!(listed["reader_schema"] == "AVRO", "{listed}");
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the watched file's broken contract was not refused: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // At start: the configured component's contract is checked too.
    ensure!(host.terminate()?.success());
    let (status, log) = host.restart_expecting_exit(T)?;
    ensure!(!status.success(), "started with a broken contract:\n{log}");
    ensure!(
        log.contains("async-process-aggregator") && log.contains("priority"),
        "the refusal names the plugin and the field:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_contract_breaks_warn_the_registration_goes_through_and_is_logged() -> Result<()> {
    let work = tempfile::tempdir()?;
    let agg = work.path().join("agg.wasm");
    stamp(
        &plugin("async-process-aggregator")?,
        &schemas().join("execution-v2.avsc"),
        &agg,
    )?;
    let host = Host::start(&config(&agg, "[registry]\ncontract_breaks = \"warn\"\n\n")?).await?;
    let r = register(&host, &schemas().join("execution-v2.avsc"))?;
    ensure!(r["id"].is_u64(), "{r}");
    let r = register(&host, &v3(work.path())?)?;
    ensure!(r["id"].is_u64(), "registered despite the contract: {r}");
    let deadline = std::time::Instant::now() + T;
    while !host.log().contains("breaks a plugin's contract") {
        ensure!(
            std::time::Instant::now() < deadline,
            "no warning logged:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = host.log();
    let line = log
        .lines()
        .find(|l| l.contains("breaks a plugin's contract"))
        .context("the warning")?;
    ensure!(
        line.contains("async-process-aggregator") && line.contains("enum symbol"),
        "{line}"
    );
    Ok(())
}
