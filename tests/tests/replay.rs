//! Replay: rebuild a pipeline's state after a fix while queries keep
//! answering from the last good state, then switch over.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use eddy_tests::{Host, eddy_bin, test_component, versioned_tags};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(120);
const TOKEN: &str = "replay-token";
const KEYS: usize = 100;

fn config(dir: &std::path::Path) -> Result<String> {
    let live = dir.join("versioned.wasm");
    std::fs::copy(test_component("versioned-v1")?, &live)?;
    Ok(format!(
        "[http]\nadmin_token = \"{TOKEN}\"\n\n[[plugin]]\nname = \"versioned\"\npath = \"{}\"\n\n\
         [[pipeline]]\nname = \"versioned\"\ntopic = \"events\"\nkey_field = \"key\"\naggregator = \"versioned\"\n",
        live.display()
    ))
}

async fn produce(host: &Host, from: usize, n: usize) -> Result<()> {
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(500) {
        let records: Vec<Value> = chunk
            .iter()
            .map(|i| json!({ "value": { "key": format!("k{}", i % KEYS), "id": format!("e{i}") } }))
            .collect();
        host.produce("events", &json!({ "records": records }))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_a_fix_rebuilds_state_without_serving_a_half_built_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(&config(dir.path())?).await?;
    produce(&host, 0, 20_000).await?;
    host.wait_caught_up("versioned", T).await?;
    let (_, before) = host.get("/v1/pipelines/versioned/state/k7").await?;
    let before_n = versioned_tags(&before).len();
    ensure!(
        before_n == 200 && versioned_tags(&before).iter().all(|(_, v)| v == "v1"),
        "{before_n}"
    );

    // "Fix" the plugin: v2 from now on; the stored states still say v1.
    let r = host
        .http
        .put(format!("{}/v1/plugins/versioned", host.url))
        .bearer_auth(TOKEN)
        .body(std::fs::read(test_component("versioned-v2")?)?)
        .send()
        .await?;
    ensure!(r.status().is_success(), "deploy v2: {}", r.status());

    // Replays need the admin token.
    let (status, _) = host.post("/v1/pipelines/versioned/replay", "{}").await?;
    ensure!(status == 401, "replay without a token: {status}");
    let r = host
        .http
        .post(format!("{}/v1/pipelines/versioned/replay", host.url))
        .bearer_auth(TOKEN)
        .body(json!({ "from": "beginning" }).to_string())
        .send()
        .await?;
    ensure!(r.status().as_u16() == 202, "start: {}", r.status());
    // More events arrive while it runs; queries keep answering in full.
    produce(&host, 20_000, 1_000).await?;
    let mut progress = host
        .sse("/v1/pipelines/versioned/replay/events", None)
        .await?;
    let deadline = Instant::now() + T;
    let mut observed = 0;
    loop {
        let (status, s) = host.get("/v1/pipelines/versioned/state/k7").await?;
        ensure!(status == 200, "state must stay available during the replay");
        let n = versioned_tags(&s).len();
        ensure!(
            n >= before_n,
            "a half-built state was served: {n} < {before_n} events"
        );
        observed += 1;
        let (_, p) = host.get("/v1/pipelines/versioned/replay").await?;
        if p["phase"] == "done" {
            break;
        }
        ensure!(p["phase"] != "failed", "{p}");
        ensure!(Instant::now() < deadline, "replay did not finish: {p}");
    }
    ensure!(observed > 0);
    let mut last_phase = String::new();
    while last_phase != "done" {
        let e = progress.next(T).await?;
        ensure!(e.event == "progress", "{e:?}");
        last_phase = e.data["phase"].as_str().unwrap_or_default().to_owned();
    }
    host.wait_caught_up("versioned", T).await?;

    // Every event exactly once, and the rebuilt state says v2 throughout.
    let mut total = 0;
    for k in 0..KEYS {
        let (_, s) = host
            .get(&format!("/v1/pipelines/versioned/state/k{k}"))
            .await?;
        let t = versioned_tags(&s);
        let mut ids: Vec<&str> = t.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ensure!(ids.len() == t.len(), "k{k}: an event applied twice");
        ensure!(
            t.iter().all(|(_, v)| v == "v2"),
            "k{k}: corrected by the replay"
        );
        total += t.len();
    }
    ensure!(total == 21_000, "{total} events in the rebuilt state");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_a_timestamp_with_the_cli() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(&config(dir.path())?).await?;
    produce(&host, 0, 300).await?;
    host.wait_caught_up("versioned", T).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    tokio::time::sleep(Duration::from_millis(20)).await;
    produce(&host, 300, 200).await?;
    host.wait_caught_up("versioned", T).await?;
    let out = Command::new(eddy_bin()?)
        .args([
            "replay",
            "--to",
            &host.url,
            "--pipeline",
            "versioned",
            "--from",
            &format!("timestamp:{cut}"),
        ])
        .env("EDDY_ADMIN_TOKEN", TOKEN)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "eddy replay: {stderr}");
    ensure!(
        stderr.contains("[##############################]") && stderr.contains("done"),
        "progress bar: {stderr}"
    );
    // Only the events after the cut remain in the rebuilt state.
    let mut total = 0;
    for k in 0..KEYS {
        let (status, s) = host
            .get(&format!("/v1/pipelines/versioned/state/k{k}"))
            .await?;
        if status == 200 {
            let t = versioned_tags(&s);
            ensure!(
                t.iter()
                    .all(|(id, _)| id[1..].parse::<usize>().is_ok_and(|n| n >= 300)),
                "k{k} holds events from before the cut: {t:?}"
            );
            total += t.len();
        }
    }
    ensure!(total == 200, "{total}");
    let bad = Command::new(eddy_bin()?)
        .args([
            "replay",
            "--to",
            &host.url,
            "--pipeline",
            "versioned",
            "--from",
            "yesterday",
            "--token",
            TOKEN,
        ])
        .output()?;
    ensure!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--from must be")
    );
    Ok(())
}

/// A replay whose range holds no events (from past the end of the topic)
/// is refused and changes nothing; a replay of part of the topic replaces
/// the states, and the next event of a key starts from the rebuilt state,
/// not from a state the worker remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_rebuild_is_refused_and_a_partial_one_replaces_what_the_worker_kept() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let host = Host::start(&config(dir.path())?).await?;
    produce(&host, 0, 1_000).await?;
    host.wait_caught_up("versioned", T).await?;
    let (_, before) = host.get("/v1/pipelines/versioned/state/k7").await?;
    ensure!(versioned_tags(&before).len() == 10, "{before}");
    let replay = |from: Value| {
        let host = &host;
        async move {
            let r = host
                .http
                .post(format!("{}/v1/pipelines/versioned/replay", host.url))
                .bearer_auth(TOKEN)
                .body(from.to_string())
                .send()
                .await?;
            ensure!(r.status().as_u16() == 202, "start: {}", r.status());
            let deadline = Instant::now() + T;
            loop {
                let (_, p) = host.get("/v1/pipelines/versioned/replay").await?;
                if p["phase"] == "done" || p["phase"] == "failed" {
                    return Ok(p);
                }
                ensure!(Instant::now() < deadline, "replay did not finish: {p}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let p = replay(json!({ "from": "offset", "at": 1_000_000 })).await?;
    ensure!(
        p["phase"] == "failed"
            && p["error"]
                .as_str()
                .unwrap_or_default()
                .contains("no events"),
        "an empty range is a failure: {p}"
    );
    let (status, kept) = host.get("/v1/pipelines/versioned/state/k7").await?;
    ensure!(
        status == 200 && kept == before,
        "the live state is untouched: {kept}"
    );

    // From offset 100 of each partition: k7 keeps only its later events.
    let p = replay(json!({ "from": "offset", "at": 100 })).await?;
    ensure!(p["phase"] == "done", "{p}");
    let (_, rebuilt) = host.get("/v1/pipelines/versioned/state/k7").await?;
    let offsets: Vec<i64> = rebuilt["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e[3].as_i64())
        .collect();
    ensure!(
        !offsets.is_empty() && offsets.len() < 10 && offsets.iter().all(|o| *o >= 100),
        "only the events from offset 100 on: {rebuilt}"
    );
    host.produce(
        "events",
        &json!({ "value": { "key": "k7", "id": "after" } }),
    )
    .await?;
    host.wait_caught_up("versioned", T).await?;
    let (_, after) = host.get("/v1/pipelines/versioned/state/k7").await?;
    let mut expected = versioned_tags(&rebuilt);
    expected.push(("after".into(), "v1".into()));
    ensure!(
        versioned_tags(&after) == expected,
        "the key goes on from its rebuilt state: {after}"
    );
    Ok(())
}
