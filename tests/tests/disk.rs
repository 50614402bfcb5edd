//! The store's disk fills up: on a small tmpfs, a host takes events until
//! its free space falls under `[store] min_free_mb`, then refuses input
//! (507 from the producer endpoint, `/readyz` says why, pipelines read
//! nothing) without failing; when space returns it goes on, and every
//! event it accepted is folded.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::fold::{check_folds, expected_from_ledger, states};
use eddy_tests::{Host, async_process_config, execution};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(120);

/// A tmpfs of a fixed size mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Result<Tmpfs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .output()
            .context("cannot run mount")?;
        if !out.status.success() {
            bail!(
                "cannot mount a {mib} MiB tmpfs on {} (the disk-full test needs root): {}",
                at.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Tmpfs(at.to_owned()))
    }

    fn resize(&self, mib: u64) -> Result<()> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.0)
            .output()?;
        ensure!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_input_with_a_clear_error_and_loses_nothing() -> Result<()> {
    let config = async_process_config()?.replacen("min_free_mb = 128", "min_free_mb = 80", 1);
    ensure!(
        config.contains("min_free_mb = 80"),
        "the example sets no reserve"
    );
    let mut host = Host::start(&config).await?;
    // The store moves to a 192 MiB tmpfs.
    ensure!(host.terminate()?.success());
    let store = host.dir().join("store");
    std::fs::remove_dir_all(&store)?;
    std::fs::create_dir_all(&store)?;
    let disk = Tmpfs::mount(&store, 192)?;
    host.restart().await?;

    // Events of 2 KiB until the producer endpoint refuses them.
    let mut ledger = Vec::new();
    let mut refused = None;
    let pad = "x".repeat(2048);
    'fill: for batch in 0..2_000u64 {
        let records: Vec<Value> = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                // Many keys: each batch rewrites small states, so what one
                // batch writes stays well under the reserve (a state of many
                // 2 KiB executions rewritten per batch could outgrow it).
                let key = format!("k{:05}", n % 20_000);
                let mut e = execution(&format!("e{n:07}"), &key, i64::try_from(n)?, "STARTED");
                e["description"] = json!(pad);
                Ok(json!({ "value": e }))
            })
            .collect::<Result<_>>()?;
        let (status, body) = host
            .post(
                "/v1/topics/async-process-execution/records",
                json!({ "records": records }).to_string(),
            )
            .await?;
        match status {
            200 => {
                for r in &records {
                    let v = &r["value"];
                    ledger.push((
                        v["id"].as_str().unwrap_or_default().to_owned(),
                        v["asyncProcessId"].as_str().unwrap_or_default().to_owned(),
                        v["state"].as_str().unwrap_or_default().to_owned(),
                        v["time"].as_i64().unwrap_or_default(),
                    ));
                }
            }
            507 => {
                refused = Some(body);
                break 'fill;
            }
            _ => bail!("batch {batch}: {status} {body}\n{}", host.log()),
        }
    }
    let Some(refused) = refused else {
        bail!("192 MiB never filled up");
    };
    let error = refused["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("min_free_mb = 80") && error.contains("store"),
        "{refused}"
    );
    ensure!(ledger.len() >= 2_000, "{} events accepted", ledger.len());

    // The host is up, says why it is not ready, and keeps refusing.
    let (status, ready) = host.get("/readyz").await?;
    ensure!(
        status == 503 && ready["reasons"].to_string().contains("min_free_mb"),
        "{status} {ready}"
    );
    let (status, _) = host.get("/healthz").await?;
    ensure!(status == 200, "healthz {status}");
    let deadline = Instant::now() + T;
    while !host.log().contains("input is paused until space returns") {
        ensure!(
            Instant::now() < deadline,
            "the pipeline never paused:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Space returns: input goes on, and every accepted event is folded.
    disk.resize(512)?;
    let deadline = Instant::now() + T;
    loop {
        let (status, _) = host.get("/readyz").await?;
        if status == 200 {
            break;
        }
        ensure!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = json!({ "value": execution("after", "k00000", i64::MAX / 2, "DONE") });
    let (status, body) = host
        .post(
            "/v1/topics/async-process-execution/records",
            last.to_string(),
        )
        .await?;
    ensure!(status == 200, "{status} {body}");
    ledger.push((
        "after".to_owned(),
        "k00000".to_owned(),
        "DONE".to_owned(),
        i64::MAX / 2,
    ));
    host.wait_caught_up("async-process", T).await?;
    let expected = expected_from_ledger(&ledger);
    let got = states(&host, expected.keys().cloned()).await?;
    let checked = check_folds(&expected, &got)?;
    ensure!(checked == ledger.len(), "{checked} of {}", ledger.len());
    ensure!(
        host.log()
            .contains("the store's disk has space again: input resumed"),
        "{}",
        host.log()
    );
    // The reserve kept the store from ever meeting the full disk.
    ensure!(
        !host.log().contains("No space left"),
        "the store met a full disk:\n{}",
        host.log()
    );
    ensure!(host.terminate()?.success(), "{}", host.log());
    drop(disk);
    Ok(())
}
