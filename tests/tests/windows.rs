//! Event-time windows end to end: the `windowed-counts` plugin (the Rust
//! SDK's tumbling windows on event-time timers) over a stream of
//! out-of-order events with producer-set timestamps, some later than the
//! grace period. The counts it emits equal a reference computed here from
//! the same events and the watermark the host had before each batch, and
//! every late event is a dead letter of class `late`.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use eddy_tests::{Host, plugin};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const SIZE: i64 = 1_000;
const GRACE: i64 = 500;
const BASE: i64 = 1_700_000_000_000;

fn config() -> Result<String> {
    let counts = plugin("windowed-counts")?;
    Ok(format!(
        r#"
[source]
kind = "embedded"
[[source.topics]]
name = "clicks"
partitions = 1
[[source.topics]]
name = "window-counts"
partitions = 1

[[plugin]]
name = "windowed-counts"
path = "{counts}"
grants = {{ env = {{ WINDOW_SIZE_MS = "{SIZE}", WINDOW_GRACE_MS = "{GRACE}" }} }}

[[pipeline]]
name = "clicks"
topic = "clicks"
key_field = "user"
aggregator = "windowed-counts"
"#,
        counts = counts.display()
    ))
}

async fn records(host: &Host, topic: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    loop {
        let (status, v) = host
            .get(&format!(
                "/v1/topics/{topic}/records?partition=0&offset={}&limit=1000",
                out.len()
            ))
            .await?;
        ensure!(status == 200, "{status} {v}");
        let page = v["records"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_window_counts_over_out_of_order_events_equal_the_reference() -> Result<()> {
    let seed: u64 = std::env::var("EDDY_WINDOWS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = StdRng::seed_from_u64(seed);
    let host = Host::start(&config()?).await?;
    // 60 batches of 20 events over 8 users; time moves 50 ms per event,
    // and a third of the events arrive up to 2.5 s late.
    let mut batches: Vec<Vec<(String, i64)>> = Vec::new();
    let mut now = BASE;
    for _ in 0..60 {
        let mut batch = Vec::new();
        for _ in 0..20 {
            now += 50;
            let late = if rng.random_bool(0.33) {
                rng.random_range(0..2_500)
            } else {
                0
            };
            batch.push((format!("u{}", rng.random_range(0..8)), now - late));
        }
        batches.push(batch);
    }
    // The flush: far ahead, so every window closes.
    batches.push(vec![("flush".to_owned(), now + 60_000)]);

    let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut late = 0;
    let mut watermark = i64::MIN;
    for batch in &batches {
        let records: Vec<Value> = batch
            .iter()
            .map(|(user, ts)| json!({"value": {"user": user}, "timestamp_ms": ts}))
            .collect();
        host.produce("clicks", &json!({ "records": records }))
            .await?;
        // One produce call is one atomic append, folded as one batch.
        host.wait_caught_up("clicks", Duration::from_secs(30))
            .await?;
        for (user, ts) in batch {
            let start = ts.div_euclid(SIZE) * SIZE;
            if start + SIZE + GRACE <= watermark {
                late += 1;
            } else if user != "flush" {
                *expected.entry((user.clone(), start)).or_default() += 1;
            }
        }
        watermark = watermark.max(batch.iter().map(|(_, ts)| *ts).max().unwrap_or(i64::MIN));
    }
    ensure!(late > 20, "the workload should have late events: {late}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let emitted = loop {
        let emitted = records(&host, "window-counts").await?;
        if emitted.len() >= expected.len() {
            break emitted;
        }
        ensure!(
            Instant::now() < deadline,
            "{} of {} windows closed\n{}",
            emitted.len(),
            expected.len(),
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut got: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for r in &emitted {
        let v = &r["value"];
        let key = (
            v["key"].as_str().unwrap_or_default().to_owned(),
            v["start"].as_i64().unwrap_or_default(),
        );
        ensure!(v["end"].as_i64() == Some(key.1 + SIZE), "{v}");
        ensure!(
            got.insert(key, v["count"].as_u64().unwrap_or_default())
                .is_none(),
            "a window closed twice: {v}"
        );
    }
    ensure!(
        got == expected,
        "window counts differ from the reference:\n got {got:?}\nwant {expected:?}"
    );

    let (_, dls) = host
        .get("/v1/pipelines/clicks/dead-letters?limit=1000")
        .await?;
    let letters = dls["dead_letters"].as_array().cloned().unwrap_or_default();
    ensure!(
        letters.len() == late && letters.iter().all(|d| d["error_class"] == "late"),
        "{} dead letters for {late} late events: {:?}",
        letters.len(),
        letters.first()
    );
    Ok(())
}
