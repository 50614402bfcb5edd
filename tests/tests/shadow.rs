//! Shadow runs: a candidate runs next to the live version over the
//! pipeline's input and reports exactly what it would change; nothing live
//! moves.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use eddy_tests::{Host, eddy_bin, plugin, test_component};
use serde_json::{Value, json};

const TOKEN: &str = "shadow-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_reports_exactly_the_changed_keys_and_moves_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let live = dir.path().join("versioned.wasm");
    std::fs::copy(test_component("versioned-v1")?, &live)?;
    let config = format!(
        "[http]\nadmin_token = \"{TOKEN}\"\n\n[[plugin]]\nname = \"versioned\"\npath = \"{}\"\n\n\
         [[pipeline]]\nname = \"versioned\"\ntopic = \"events\"\nkey_field = \"key\"\naggregator = \"versioned\"\n",
        live.display()
    );
    let host = Host::start(&config).await?;
    // 50 keys; keys 3, 17 and 42 get one event the candidate "fixes".
    let mut records = Vec::new();
    for i in 0..1000 {
        let k = i % 50;
        let id = if i >= 950 && [3, 17, 42].contains(&k) {
            format!("e{i}-x")
        } else {
            format!("e{i}")
        };
        records.push(json!({ "value": { "key": format!("k{k}"), "id": id } }));
    }
    host.produce("events", &json!({ "records": records }))
        .await?;
    host.wait_caught_up("versioned", Duration::from_secs(60))
        .await?;
    let (_, before_state) = host.get("/v1/pipelines/versioned/state/k3").await?;
    let (_, before_progress) = host.get("/v1/pipelines/versioned").await?;
    let (_, before_topics) = host.get("/v1/topics").await?;
    let before_plugin = host.get("/v1/plugins/versioned").await?.1;

    let candidate = std::fs::read(test_component("versioned-fix")?)?;
    let r = host
        .http
        .post(format!("{}/v1/plugins/versioned/shadow", host.url))
        .bearer_auth(TOKEN)
        .body(candidate.clone())
        .send()
        .await?;
    ensure!(r.status().is_success(), "shadow: {}", r.status());
    let report: Value = r.json().await?;
    ensure!(report["events"] == 1000 && report["keys"] == 50, "{report}");
    let mut changed: Vec<&str> = report["changed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["key"].as_str())
        .collect();
    changed.sort_unstable();
    ensure!(
        changed == ["k17", "k3", "k42"],
        "exactly the fixed keys: {changed:?}"
    );
    let c = report["changed"]
        .as_array()
        .and_then(|v| v.first())
        .cloned()
        .unwrap_or_default();
    ensure!(
        c["before"]["events"].as_array().map(Vec::len)
            == c["after"]["events"].as_array().map(Vec::len)
    );
    ensure!(
        c["after"].to_string().contains("fixed") && !c["before"].to_string().contains("fixed"),
        "{c}"
    );
    ensure!(
        report["candidate_failures"] == 0 && report["current_failures"] == 0,
        "{report}"
    );
    // The same run with the running version itself changes nothing.
    let same = std::fs::read(&live)?;
    let r = host
        .http
        .post(format!(
            "{}/v1/plugins/versioned/shadow?from=offset:0&limit=500",
            host.url
        ))
        .bearer_auth(TOKEN)
        .body(same)
        .send()
        .await?;
    let identical: Value = r.json().await?;
    ensure!(
        identical["changed_count"] == 0 && identical["events"] == 500,
        "{identical}"
    );

    // Nothing live moved.
    ensure!(host.get("/v1/pipelines/versioned/state/k3").await?.1 == before_state);
    ensure!(host.get("/v1/pipelines/versioned").await?.1 == before_progress);
    ensure!(host.get("/v1/topics").await?.1 == before_topics);
    ensure!(host.get("/v1/plugins/versioned").await?.1 == before_plugin);

    // The terminal view.
    let cand_path = dir.path().join("candidate.wasm");
    std::fs::write(&cand_path, &candidate)?;
    let out = Command::new(eddy_bin()?)
        .args(["plugin", "shadow"])
        .arg(&cand_path)
        .args(["--to", &host.url, "--name", "versioned", "--token", TOKEN])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        text.contains("3 keys would change") && text.contains("~ k17"),
        "{text}"
    );

    // A candidate of the wrong world, or without a token, is refused.
    let r = host
        .http
        .post(format!("{}/v1/plugins/versioned/shadow", host.url))
        .bearer_auth(TOKEN)
        .body(std::fs::read(plugin("rejected-process-router")?)?)
        .send()
        .await?;
    ensure!(r.status().as_u16() == 422, "wrong world: {}", r.status());
    let (status, _) = host.post("/v1/plugins/versioned/shadow", "x").await?;
    ensure!(status == 401);
    let r = host
        .http
        .post(format!(
            "{}/v1/plugins/versioned/shadow?from=yesterday",
            host.url
        ))
        .bearer_auth(TOKEN)
        .body(candidate)
        .send()
        .await?;
    ensure!(r.status().as_u16() == 400, "bad from: {}", r.status());
    Ok(())
}
