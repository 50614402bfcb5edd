//! What real producers send, through a real broker (tansu) from Confluent's
//! Python producer: batches compressed with every codec Kafka clients use,
//! transactions (each partition ending with a transaction marker), binary and null header values, null and empty
//! record keys, null (tombstone) and empty values.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use eddy_tests::Host;
use eddy_tests::fold::{check_folds, expected_from_ledger, states};
use eddy_tests::kafka::{Broker, kafka_config, read_ledger};
use serde_json::json;

const INPUT: &str = "async-process-execution";
const TOKEN: &str = "producers-admin-token";
const T: Duration = Duration::from_secs(240);

/// Every aggregate equals the fold of the ledger (every codec, the
/// transactions, the odd records that carry events) and nothing else: an
/// event lost or folded twice makes a key's executions differ.
async fn check_states(host: &Host, ledger: &std::path::Path) -> Result<usize> {
    let expected = expected_from_ledger(&read_ledger(ledger)?);
    let got = states(host, expected.keys().cloned()).await?;
    check_folds(&expected, &got)
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_codecs_transactions_and_odd_records_are_each_folded_or_dead_lettered_by_class()
-> Result<()> {
    const PER_CODEC: u64 = 400;
    let broker = Broker::start()?;
    let config = kafka_config(&broker.addr, "producers", 4)?.replacen(
        "[http]\n",
        &format!("[http]\nadmin_token = {TOKEN:?}\n"),
        1,
    );
    // Everything is produced before the host reads it: tansu hands the
    // records of a transaction still open, and those of an aborted one, to
    // read_committed consumers (Confluent's own consumer gets them too),
    // so the transactions here are committed ones. Against a Kafka broker
    // librdkafka skips aborted records (Eddy sets `isolation.level` to
    // read_committed).
    broker.create_topic(INPUT, 4)?;
    let dir = tempfile::tempdir()?;
    let ledger = dir.path().join("ledger.jsonl");
    let odd = tokio::task::block_in_place(|| broker.produce_mixed(INPUT, 60, PER_CODEC, &ledger))?;
    ensure!(odd.len() == 2, "{odd:?}");
    let host = Host::start(&config).await?;

    // Each partition ends with a transaction's commit marker, which no
    // consumer is handed: the pipeline still reaches the end of every
    // partition, for the host and for the group.
    host.wait_caught_up("async-process", T).await?;
    broker.wait_lag_zero("producers.async-process", INPUT, T)?;

    // 5 codecs and 2 transactions of PER_CODEC events, and 3
    // odd records that carry events (null key, empty key, binary headers).
    let checked = check_states(&host, &ledger).await?;
    ensure!(
        checked == usize::try_from(7 * PER_CODEC + 3)?,
        "{checked} events checked"
    );

    // The tombstone and the empty value, each dead-lettered by its class,
    // with its headers' bytes kept; nothing else.
    let (_, dead) = host
        .get("/v1/pipelines/async-process/dead-letters?limit=100")
        .await?;
    let dead = dead["dead_letters"].as_array().cloned().unwrap_or_default();
    ensure!(dead.len() == odd.len(), "{dead:?}");
    for want in &odd {
        let got = dead
            .iter()
            .find(|d| d["partition"] == want["partition"] && d["offset"] == want["offset"]);
        let Some(got) = got else {
            anyhow::bail!("no dead letter for {want}: {dead:?}");
        };
        ensure!(
            got["error_class"] == want["class"]
                && got["stage"] == "decode"
                && got["value_base64"] == ""
                && got["headers"] == want["headers"],
            "{got} for {want}"
        );
    }

    // A replay from the beginning reads every partition to its end past
    // the markers, and rebuilds the same states.
    let r = host
        .http
        .post(format!("{}/v1/pipelines/async-process/replay", host.url))
        .bearer_auth(TOKEN)
        .body(json!({ "from": "beginning" }).to_string())
        .send()
        .await?;
    ensure!(r.status() == 202, "replay: {}", r.text().await?);
    let deadline = Instant::now() + T;
    let replay = loop {
        let (_, p) = host.get("/v1/pipelines/async-process/replay").await?;
        if p["phase"] == "done" || p["phase"] == "failed" {
            break p;
        }
        ensure!(Instant::now() < deadline, "replay did not finish: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(replay["phase"] == "done", "{replay}");
    check_states(&host, &ledger).await?;
    Ok(())
}
