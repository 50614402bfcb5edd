//! Cluster mode on a real broker (tansu) with Confluent's producer: state
//! follows its partitions between hosts through the pipeline's state
//! changelog. A second host restores the partitions it is given, a killed
//! host's partitions are restored on the survivor, a host restarted on its
//! old store restores whole only what another host owned meanwhile, and
//! only its gap where it stayed the owner.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::Host;
use eddy_tests::fold::{Expected, check_folds, expected_from_ledger};
use eddy_tests::kafka::{Broker, finish_producer, kafka_config, read_ledger};
use futures_util::StreamExt;
use serde_json::Value;

const INPUT: &str = "async-process-execution";
const GROUP: &str = "grp";
const STATE_CHANGELOG: &str = "grp-async-process-changelog";
const PARTITIONS: u32 = 6;
const KEYS: u64 = 300;
const T: Duration = Duration::from_secs(240);

const TOKEN: &str = "cluster-admin";

fn config(broker: &Broker, host_id: &str) -> Result<String> {
    Ok(format!(
        "{}\n[cluster]\nhost_id = {host_id:?}\n",
        kafka_config(&broker.addr, GROUP, PARTITIONS)?
            .replace("[http]\n", &format!("[http]\nadmin_token = \"{TOKEN}\"\n"))
    ))
}

/// Waits until every host answers `/readyz` with 200 (assigned, restored).
async fn wait_ready(hosts: &[&Host]) -> Result<()> {
    let deadline = Instant::now() + T;
    for h in hosts {
        loop {
            let (status, body) = h.get("/readyz").await?;
            if status == 200 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} not ready: {body}\n{}", h.url, h.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Waits until the pipeline's group committed everything and every host is
/// ready again (a rebalance may still be restoring).
async fn settle(broker: &Broker, hosts: &[&Host]) -> Result<()> {
    wait_ready(hosts).await?;
    tokio::task::block_in_place(|| {
        broker.wait_lag_zero(&format!("{GROUP}.async-process"), INPUT, T)
    })?;
    wait_ready(hosts).await
}

/// Each key's state, asked of every host: exactly one answers it (the
/// owner of the key's partition); the others say it lives elsewhere (421).
async fn cluster_states(hosts: &[&Host], expected: &Expected) -> Result<HashMap<String, Value>> {
    let mut out = HashMap::new();
    let mut elsewhere: HashMap<String, usize> = HashMap::new();
    for h in hosts {
        let got: Vec<Result<(String, u16, Value)>> =
            futures_util::stream::iter(expected.keys().cloned())
                .map(|k| async move {
                    let (status, v) = h.get(&format!("/async-process/{k}")).await?;
                    Ok((k, status, v))
                })
                .buffer_unordered(16)
                .collect()
                .await;
        for r in got {
            let (k, status, v) = r?;
            match status {
                200 => {
                    ensure!(
                        out.insert(k.clone(), v).is_none(),
                        "key {k}: two hosts answer its state"
                    );
                }
                421 => *elsewhere.entry(k).or_default() += 1,
                s => bail!("{}: GET /async-process/{k} answered {s}: {v}", h.url),
            }
        }
    }
    for k in expected.keys() {
        ensure!(
            out.contains_key(k) && elsewhere.get(k).copied().unwrap_or(0) == hosts.len() - 1,
            "key {k}: no host answers its state, or not all others answer 421"
        );
    }
    Ok(out)
}

/// The restores a host logged:
/// (partition, records read, mode).
fn restores(log: &str) -> Vec<(u32, u64, String)> {
    let field = |line: &str, name: &str| -> Option<String> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        let rest = line.get(at..)?;
        let end = rest.find(' ').unwrap_or(rest.len());
        Some(rest.get(..end)?.trim_matches('"').to_owned())
    };
    // Without the terminal colours the log may carry.
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("partition restored"))
        .filter_map(|l| {
            Some((
                field(l, "partition")?.parse().ok()?,
                field(l, "records")?.parse().ok()?,
                field(l, "mode")?,
            ))
        })
        .collect()
}

/// Per partition, the records of the state changelog and what a restore
/// may apply of them: every state record carries an epoch and a change
/// number; within each epoch the numbers only grow.
fn check_state_changelog(records: &[Value]) -> Result<BTreeMap<u64, usize>> {
    let mut per_partition: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last: HashMap<(u64, u64), u64> = HashMap::new();
    for r in records {
        let p = r["partition"]
            .as_u64()
            .context("record without partition")?;
        *per_partition.entry(p).or_default() += 1;
        let h = &r["headers"];
        if h.get("eddy-fence").is_some() {
            continue;
        }
        let num = |name: &str| -> Result<u64> {
            h[name]
                .as_str()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("state record without {name}: {r}"))
        };
        let (epoch, seq) = (num("eddy-epoch")?, num("eddy-seq")?);
        let was = last.insert((p, epoch), seq).unwrap_or(0);
        ensure!(
            seq > was,
            "partition {p} epoch {epoch}: change {seq} after {was}"
        );
    }
    Ok(per_partition)
}

#[tokio::test(flavor = "multi_thread")]
async fn state_follows_its_partitions_between_hosts() -> Result<()> {
    let broker = Broker::start()?;
    let mut a = Host::start(&config(&broker, "a")?).await?;
    wait_ready(&[&a]).await?;
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("ledger.jsonl");
    let mut produced = 0;
    let produce = |produced: &mut u64, n: u64| -> Result<()> {
        finish_producer(broker.produce(INPUT, *produced, n, KEYS, 0, &ledger)?)?;
        *produced += n;
        Ok(())
    };

    // One host: it owns every partition.
    produce(&mut produced, 6_000)?;
    settle(&broker, &[&a]).await?;
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    check_folds(&expected, &cluster_states(&[&a], &expected).await?).context("one host")?;

    // A second host joins: the partitions it gets are restored from the
    // state changelog (it never saw their events), and keep folding.
    let mut b = Host::start(&config(&broker, "b")?).await?;
    settle(&broker, &[&a, &b]).await?;
    produce(&mut produced, 4_000)?;
    settle(&broker, &[&a, &b]).await?;
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    let got = cluster_states(&[&a, &b], &expected).await?;
    check_folds(&expected, &got).context("two hosts")?;
    // What one host cannot answer for the group: a key another host owns
    // is misdirected (also its SSE stream); a replay is refused.
    let (k, _) = expected.iter().next().context("no keys")?;
    let (on_a, _) = a.get(&format!("/async-process/{k}")).await?;
    let (owner, other) = if on_a == 200 { (&a, &b) } else { (&b, &a) };
    let (status, v) = other.get(&format!("/async-process/{k}")).await?;
    ensure!(
        status == 421 && v.to_string().contains("not owned by host"),
        "{status} {v}"
    );
    let err = other
        .sse(&format!("/v1/pipelines/async-process/events?key={k}"), None)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(err.contains("421"), "SSE for {k} on a non-owner: {err:?}");
    owner
        .sse(&format!("/v1/pipelines/async-process/events?key={k}"), None)
        .await?;
    let r = owner
        .http
        .post(format!("{}/v1/pipelines/async-process/replay", owner.url))
        .bearer_auth(TOKEN)
        .body(serde_json::json!({"from": "beginning"}).to_string())
        .send()
        .await?;
    let (status, text) = (r.status().as_u16(), r.text().await?);
    ensure!(
        status == 409 && text.contains("cluster mode"),
        "replay in cluster mode: {status} {text}"
    );
    let on_b = restores(&b.log());
    ensure!(
        on_b.iter().any(|(_, records, _)| *records > 0),
        "b restored nothing: {on_b:?}\n{}",
        b.log()
    );

    // a dies: b restores a's partitions and goes on.
    a.kill9()?;
    produce(&mut produced, 4_000)?;
    settle(&broker, &[&b]).await?;
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    let checked = check_folds(&expected, &cluster_states(&[&b], &expected).await?)
        .with_context(|| format!("after a's death\n{}", b.log()))?;
    ensure!(
        checked as u64 == produced,
        "{checked} of {produced} events checked"
    );

    // a comes back on its old store: partitions b owned since are restored
    // whole (a's copy of them is stale).
    let a_log_before = a.log().len();
    a.restart().await?;
    settle(&broker, &[&a, &b]).await?;
    produce(&mut produced, 2_000)?;
    settle(&broker, &[&a, &b]).await?;
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    check_folds(&expected, &cluster_states(&[&a, &b], &expected).await?).context("a back")?;
    let back = restores(a.log().get(a_log_before..).unwrap_or_default());
    ensure!(
        !back.is_empty() && back.iter().all(|(_, _, mode)| mode == "start"),
        "a's restores after its restart, all from the start: {back:?}"
    );

    // b stops gracefully: a takes every partition. Those a kept restore
    // from its checkpoint (its own last records at most); b's from the start.
    let kept: Vec<u32> = back.iter().map(|(p, ..)| *p).collect();
    let a_log_before = a.log().len();
    let status = b.terminate()?;
    ensure!(status.success(), "b stopped with {status}");
    settle(&broker, &[&a]).await?;
    let last = restores(a.log().get(a_log_before..).unwrap_or_default());
    let per_partition = check_state_changelog(&broker.dump(STATE_CHANGELOG)?)?;
    let mut gap_read = 0;
    for p in &kept {
        let (_, records, mode) = last
            .iter()
            .rev()
            .find(|(q, ..)| q == p)
            .with_context(|| format!("partition {p} not restored again: {last:?}"))?;
        let full = per_partition.get(&u64::from(*p)).copied().unwrap_or(0) as u64;
        ensure!(
            mode == "checkpoint" && *records < full,
            "partition {p}, kept by a: {mode} restore read {records} of {full} records"
        );
        gap_read += records;
    }
    produce(&mut produced, 2_000)?;
    settle(&broker, &[&a]).await?;
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    let checked =
        check_folds(&expected, &cluster_states(&[&a], &expected).await?).context("a alone")?;
    ensure!(
        checked as u64 == produced,
        "{checked} of {produced} events checked"
    );
    let total: usize = per_partition.values().sum();
    println!(
        "{produced} events; state changelog {total} records; a's gap restores of {} kept partitions read {gap_read}",
        kept.len()
    );
    for h in [&a, &b] {
        ensure!(!h.log().contains("panicked"), "{}", h.log());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_changelog_with_another_partition_count_is_refused() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic(INPUT, PARTITIONS)?;
    broker.create_topic(STATE_CHANGELOG, 2)?;
    let refused = match Host::start(&config(&broker, "a")?).await {
        Ok(_) => bail!("eddy started with a mismatched state changelog"),
        Err(e) => e.to_string(),
    };
    for want in [STATE_CHANGELOG, INPUT, "has 2 partitions", "has 6"] {
        ensure!(
            refused.contains(want),
            "the refusal names {want:?}: {refused}"
        );
    }
    Ok(())
}
