//! Plugins change while events flow: uploaded, deployed from the CLI,
//! picked up from a watched file, refused when broken, rolled back — with
//! every event applied exactly once, by exactly one version.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use eddy_tests::{Host, eddy_bin, plugin, test_component};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(120);
const TOKEN: &str = "s3cret-admin-token";
const EVENTS: usize = 50_000;
const KEYS: usize = 200;

fn config(dir: &std::path::Path) -> Result<String> {
    let live = dir.join("versioned.wasm");
    std::fs::copy(test_component("versioned-v1")?, &live)?;
    Ok(format!(
        r#"
[source]
kind = "embedded"
default_partitions = 4

[http]
admin_token = "{TOKEN}"

[[plugin]]
name = "versioned"
path = "{live}"

[[pipeline]]
name = "versioned"
topic = "events"
key_field = "key"
aggregator = "versioned"
"#,
        live = live.display()
    ))
}

async fn version_of(host: &Host) -> Result<Value> {
    let (status, v) = host.get("/v1/plugins/versioned").await?;
    ensure!(status == 200, "{status} {v}");
    Ok(v)
}

async fn put(host: &Host, bytes: Vec<u8>, token: Option<&str>) -> Result<(u16, Value)> {
    let mut req = host
        .http
        .put(format!("{}/v1/plugins/versioned", host.url))
        .body(bytes);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((
        status,
        serde_json::from_str(&r.text().await?).unwrap_or(Value::Null),
    ))
}

/// Every key's applied events: (id, version, partition, offset).
async fn applied(host: &Host) -> Result<Vec<(String, String, u64, u64)>> {
    let mut all = Vec::new();
    for k in 0..KEYS {
        let (status, v) = host
            .get(&format!("/v1/pipelines/versioned/state/k{k}"))
            .await?;
        if status == 404 {
            continue;
        }
        for e in v["events"].as_array().into_iter().flatten() {
            all.push((
                e[0].as_str().unwrap_or_default().to_owned(),
                e[1].as_str().unwrap_or_default().to_owned(),
                e[2].as_u64().unwrap_or_default(),
                e[3].as_u64().unwrap_or_default(),
            ));
        }
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_under_load_applies_every_event_once_by_one_version() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(&config(dir.path())?).await?;
    let v1 = version_of(&host).await?;
    let v2_bytes = std::fs::read(test_component("versioned-v2")?)?;

    let url = host.url.clone();
    // The second half of the stream waits for the swap, so both versions
    // get events however fast the first half is folded.
    let (swapped, swap_done) = tokio::sync::oneshot::channel::<()>();
    let producer = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut swap_done = Some(swap_done);
        for chunk in 0..(EVENTS / 500) {
            if chunk == EVENTS / 1_000
                && let Some(done) = swap_done.take()
            {
                done.await?;
            }
            let records: Vec<Value> = (0..500)
                .map(|i| {
                    let n = chunk * 500 + i;
                    json!({ "value": { "key": format!("k{}", n % KEYS), "id": format!("e{n}") } })
                })
                .collect();
            let r = http
                .post(format!("{url}/v1/topics/events/records"))
                .json(&json!({ "records": records }))
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "produce: {}", r.status());
        }
        anyhow::Ok(())
    });
    // Swap once the stream is well under way.
    let deadline = Instant::now() + T;
    loop {
        let (_, p) = host.get("/v1/pipelines/versioned").await?;
        let committed: u64 = p["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["committed_offset"].as_u64())
            .sum();
        if committed >= (EVENTS / 4) as u64 {
            break;
        }
        ensure!(Instant::now() < deadline, "the stream did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Without or with a wrong token, nothing changes.
    ensure!(put(&host, v2_bytes.clone(), None).await?.0 == 401);
    ensure!(put(&host, v2_bytes.clone(), Some("wrong")).await?.0 == 403);
    let (status, v) = put(&host, v2_bytes.clone(), Some(TOKEN)).await?;
    ensure!(status == 200 && v["status"] == "deployed", "{status} {v}");
    let _ = swapped.send(());
    producer.await.context("producer")??;
    host.wait_caught_up("versioned", T).await?;

    let events = applied(&host).await?;
    ensure!(
        events.len() == EVENTS,
        "{} events applied for {EVENTS} produced",
        events.len()
    );
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (id, ..) in &events {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    ensure!(
        seen.len() == EVENTS && seen.values().all(|n| *n == 1),
        "each event exactly once"
    );
    // Per partition: v1 strictly before some offset, v2 from it on.
    let mut by_partition: BTreeMap<u64, Vec<(u64, &str)>> = BTreeMap::new();
    for (_, version, partition, offset) in &events {
        by_partition
            .entry(*partition)
            .or_default()
            .push((*offset, version.as_str()));
    }
    let mut v1_count = 0;
    for (partition, mut list) in by_partition {
        list.sort();
        let first_v2 = list
            .iter()
            .position(|(_, v)| *v == "v2")
            .unwrap_or(list.len());
        ensure!(
            list.iter().skip(first_v2).all(|(_, v)| *v == "v2"),
            "partition {partition}: a v1 event after the first v2 one"
        );
        v1_count += first_v2;
    }
    ensure!(
        v1_count > 0 && v1_count < EVENTS,
        "both versions processed events ({v1_count} by v1)"
    );
    // State metadata names the version that produced it.
    let (_, meta) = host
        .get("/v1/pipelines/versioned/state/k0?meta=true")
        .await?;
    let now = version_of(&host).await?;
    ensure!(meta["plugin_version"] == now["version"], "{meta}");
    ensure!(
        now["version"] != v1["version"] && now["source"] == "upload",
        "{now}"
    );
    ensure!(now["previous_version"] == v1["version"], "{now}");
    // The version each build declares (its crate's `version`) is shown too.
    ensure!(
        now["declared_version"] == "0.1.0" && v1["declared_version"] == "0.1.0",
        "{now}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_components_are_refused_rollback_and_watch_work() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(&config(dir.path())?).await?;
    let v1 = version_of(&host).await?;

    // A corrupt upload and a component of the wrong world are refused.
    let (status, v) = put(&host, b"\0asm garbage".to_vec(), Some(TOKEN)).await?;
    ensure!(
        status == 422
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("not a valid WebAssembly component")),
        "{status} {v}"
    );
    let handler = std::fs::read(plugin("rejected-process-router")?)?;
    let (status, v) = put(&host, handler, Some(TOKEN)).await?;
    ensure!(
        status == 422
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("aggregator")),
        "{status} {v}"
    );
    let after = version_of(&host).await?;
    ensure!(
        after["version"] == v1["version"],
        "the running version stays"
    );
    ensure!(
        after["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("aggregator")),
        "{after}"
    );
    host.produce("events", &json!({ "value": { "key": "k1", "id": "a" } }))
        .await?;
    host.wait_caught_up("versioned", T).await?;
    let (_, s) = host.get("/v1/pipelines/versioned/state/k1").await?;
    ensure!(s["events"][0][1] == "v1", "still processing with v1: {s}");

    // Deploy v2 with the CLI, then roll back to v1.
    let v2_path = test_component("versioned-v2")?;
    let out = Command::new(eddy_bin()?)
        .args(["plugin", "deploy"])
        .arg(&v2_path)
        .args(["--to", &host.url, "--name", "versioned"])
        .env("EDDY_ADMIN_TOKEN", TOKEN)
        .output()?;
    ensure!(
        out.status.success(),
        "deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    host.produce("events", &json!({ "value": { "key": "k1", "id": "b" } }))
        .await?;
    host.wait_caught_up("versioned", T).await?;
    let r = host
        .http
        .post(format!("{}/v1/plugins/versioned/rollback", host.url))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    ensure!(r.status().is_success(), "rollback: {}", r.status());
    ensure!(
        version_of(&host).await?["version"] == v1["version"],
        "rolled back to v1"
    );
    host.produce("events", &json!({ "value": { "key": "k1", "id": "c" } }))
        .await?;
    host.wait_caught_up("versioned", T).await?;
    let (_, s) = host.get("/v1/pipelines/versioned/state/k1").await?;
    let versions: Vec<&str> = s["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e[1].as_str())
        .collect();
    ensure!(versions == ["v1", "v2", "v1"], "{s}");
    // The CLI names a refusal.
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"nope")?;
    let out = Command::new(eddy_bin()?)
        .args(["plugin", "deploy"])
        .arg(&bad)
        .args(["--to", &host.url, "--name", "versioned", "--token", TOKEN])
        .output()?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("refused"));

    // Directory watch: replacing the file switches versions without a restart.
    let v2 = std::fs::read(&v2_path)?;
    let tmp = dir.path().join("incoming.tmp");
    std::fs::write(&tmp, &v2)?;
    std::fs::rename(&tmp, dir.path().join("versioned.wasm"))?;
    let deadline = Instant::now() + T;
    loop {
        let now = version_of(&host).await?;
        if now["version"] != v1["version"] {
            ensure!(now["source"] == "watch", "{now}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the watched file was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.produce("events", &json!({ "value": { "key": "k1", "id": "d" } }))
        .await?;
    host.wait_caught_up("versioned", T).await?;
    let (_, s) = host.get("/v1/pipelines/versioned/state/k1").await?;
    ensure!(s["events"][3][1] == "v2", "{s}");
    Ok(())
}
