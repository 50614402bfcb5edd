//! Eddy against a real Kafka-protocol broker (tansu), fed by Confluent's
//! Python producer: end to end, kill -9 under a stream, SIGTERM under a
//! stream, two hosts in one group, cooperative rebalances under a stream, a broker
//! restart, and start-up errors.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use eddy_tests::chaos::{Chaos, env_u64};
use eddy_tests::fold::{Expected, check_folds, execution_ids, expected_from_ledger, states};
use eddy_tests::kafka::{Broker, finish_producer, kafka_config, read_ledger};
use eddy_tests::{Host, run_until_exit};
use rand::Rng;
use serde_json::{Value, json};

const INPUT: &str = "async-process-execution";
const CHANGELOG: &str = "async-process";
const REJECTED: &str = "rejected-process";
const T: Duration = Duration::from_secs(240);

fn id_of(record: &Value) -> Result<String> {
    record["headers"]["eddy-id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("record without an eddy-id header: {record}"))
}

/// What [`check_outputs`] counted.
struct Outputs {
    /// Distinct changes in the changelog.
    changes: usize,
    /// Changelog records, duplicates included.
    changelog_records: usize,
    /// Distinct routed records.
    routed: usize,
    /// Routed records, duplicates included.
    routed_records: usize,
}

/// Records of one topic de-duplicated by `eddy-id`, as they stream in: a
/// duplicate must be the same record (compared by a digest, so a long run's
/// topics need not fit in memory).
#[derive(Default)]
struct Dedup {
    seen: HashMap<String, u64>,
    records: usize,
}

impl Dedup {
    /// Whether `record` (id `id`) is new.
    fn add(&mut self, id: &str, record: &Value) -> Result<bool> {
        use std::hash::{Hash, Hasher};
        self.records += 1;
        let kv = json!({
            "key": record["key"], "value": record["value"],
            "partition": record["partition"], "headers": record["headers"],
        });
        let mut h = std::collections::hash_map::DefaultHasher::new();
        kv.to_string().hash(&mut h);
        let digest = h.finish();
        match self.seen.insert(id.to_owned(), digest) {
            None => Ok(true),
            Some(prev) => {
                ensure!(prev == digest, "id {id} carried two different records");
                Ok(false)
            }
        }
    }
}

/// The changelog holds every change exactly once after de-duplication
/// (each partition's change numbers 1..=n, none missing, each record in the
/// partition its number belongs to), the last change of each key is its
/// state, and the rejected-process topic holds exactly the REJECTED changes.
/// Both topics are read as a stream.
fn check_outputs(broker: &Broker, states: &HashMap<String, Value>) -> Result<Outputs> {
    let mut changes = Dedup::default();
    // (partition, change number) -> (source offset, closes a batch, REJECTED)
    let mut by_seq: BTreeMap<(u64, u64), (u64, bool, bool)> = BTreeMap::new();
    // key -> (change number, state) of its last change
    let mut last: HashMap<String, (u64, Value)> = HashMap::new();
    broker.dump_each(CHANGELOG, |r| {
        let id = id_of(&r)?;
        if !changes.add(&id, &r)? {
            return Ok(());
        }
        let (partition, seq) = id
            .strip_prefix("async-process/")
            .and_then(|s| s.split_once("/changes/"))
            .and_then(|(p, n)| Some((p.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
            .with_context(|| format!("changelog id {id}"))?;
        ensure!(
            r["partition"].as_u64() == Some(partition),
            "change {id} is in changelog partition {}, not its input's",
            r["partition"]
        );
        // What a restore reads: each record's change number, the input
        // offset its state reflects, and whether it closes a batch.
        let h = &r["headers"];
        ensure!(
            h["eddy-seq"].as_str() == Some(seq.to_string().as_str()),
            "change {partition}/{seq}: eddy-seq {}",
            h["eddy-seq"]
        );
        let offset: u64 = h["eddy-source-offset"]
            .as_str()
            .and_then(|o| o.parse().ok())
            .with_context(|| format!("change {partition}/{seq} has no eddy-source-offset: {h}"))?;
        by_seq.insert(
            (partition, seq),
            (
                offset,
                h["eddy-batch-end"] == "1",
                r["value"]["state"] == "REJECTED",
            ),
        );
        let key = r["key"].as_str().unwrap_or_default().to_owned();
        if last.get(&key).is_none_or(|(n, _)| *n < seq) {
            last.insert(key, (seq, r["value"].clone()));
        }
        Ok(())
    })?;
    let mut per_partition: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (p, n) in by_seq.keys() {
        per_partition.entry(*p).or_default().push(*n);
    }
    for (p, seqs) in &per_partition {
        let n = seqs.len() as u64;
        ensure!(
            seqs.iter().copied().eq(1..=n),
            "partition {p}: changelog change numbers are not 1..={n}: a change is missing"
        );
    }
    // The input offset a change reflects never goes back, and the last
    // record of a partition closes a batch.
    let mut last_offset: HashMap<u64, u64> = HashMap::new();
    for ((p, n), (offset, _, _)) in &by_seq {
        let was = last_offset.insert(*p, *offset).unwrap_or(0);
        ensure!(
            *offset >= was && *offset > 0,
            "change {p}/{n}: source offset {offset} after {was}"
        );
    }
    for (p, seqs) in &per_partition {
        if let Some(n) = seqs.last() {
            let closes = by_seq.get(&(*p, *n)).is_some_and(|(_, end, _)| *end);
            ensure!(
                closes,
                "partition {p}: its last change {n} does not close a batch"
            );
        }
    }
    for (key, state) in states {
        ensure!(
            last.get(key.as_str()).map(|(_, v)| v) == Some(state),
            "key {key}: the last changelog record is not its state"
        );
    }
    let mut routed = Dedup::default();
    broker.dump_each(REJECTED, |r| {
        let id = id_of(&r)?;
        routed.add(&id, &r)?;
        Ok(())
    })?;
    let want: HashSet<String> = by_seq
        .iter()
        .filter(|(_, (_, _, rejected))| *rejected)
        .map(|((p, seq), _)| format!("async-process/{p}/changes/{seq}/0"))
        .collect();
    let have: HashSet<String> = routed.seen.keys().cloned().collect();
    ensure!(
        have == want,
        "rejected-process: {} routed records, {} REJECTED changes ({} missing, {} extra)",
        have.len(),
        want.len(),
        want.difference(&have).count(),
        have.difference(&want).count()
    );
    Ok(Outputs {
        changes: changes.seen.len(),
        changelog_records: changes.records,
        routed: routed.seen.len(),
        routed_records: routed.records,
    })
}

/// Waits until both pipelines have committed everything and the outbox
/// has delivered the changelog (the router's input) too.
fn wait_settled(broker: &Broker, group: &str) -> Result<()> {
    for _ in 0..2 {
        broker.wait_lag_zero(&format!("{group}.async-process"), INPUT, T)?;
        std::thread::sleep(Duration::from_millis(500));
        broker.wait_lag_zero(&format!("{group}.rejected-router"), CHANGELOG, T)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_end_to_end_with_a_confluent_producer() -> Result<()> {
    let broker = Broker::start()?;
    let host = Host::start(&kafka_config(&broker.addr, "e2e", 4)?).await?;
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("ledger.jsonl");
    finish_producer(broker.produce(INPUT, 0, 2_000, 200, 0, &ledger)?)?;

    // The REST endpoints produce to Kafka too.
    let (status, created) = host
        .post("/async-process", r#"{"description":"made over HTTP"}"#)
        .await?;
    ensure!(
        status == 200 && created["status"] == "OK",
        "{status} {created}"
    );
    let id = created["id"].as_str().context("id")?.to_owned();
    let (status, produced) = host
        .post(
            &format!("/v1/topics/{INPUT}/records"),
            json!({ "value": eddy_tests::execution("rest-1", &id, i64::MAX / 2, "REJECTED") })
                .to_string(),
        )
        .await?;
    ensure!(status == 200, "{status} {produced}");
    let (status, missing) = host
        .post("/v1/topics/no-such-topic/records", r#"{"value":{}}"#)
        .await?;
    ensure!(
        status == 404
            && missing["error"]
                .as_str()
                .is_some_and(|e| e.contains("no-such-topic")),
        "{status} {missing}"
    );

    wait_settled(&broker, "e2e")?;
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    let mut got = states(&host, expected.keys().cloned()).await?;
    let checked = check_folds(&expected, &got)?;
    ensure!(
        checked == read_ledger(&ledger)?.len(),
        "{checked} events checked"
    );
    let (status, made) = host.get(&format!("/async-process/{id}")).await?;
    ensure!(
        status == 200 && made["state"] == "REJECTED",
        "{status} {made}"
    );
    got.insert(id.clone(), made);
    let Outputs {
        changes, routed, ..
    } = check_outputs(&broker, &got)?;
    ensure!(
        routed > 0 && changes >= got.len(),
        "{changes} changes, {routed} routed"
    );
    let (_, progress) = host.get("/v1/pipelines/async-process").await?;
    ensure!(
        progress["lag"] == 0 && progress["partitions"].as_array().map(Vec::len) == Some(4),
        "{progress}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_kill9_under_a_stream_loses_nothing_and_applies_nothing_twice() -> Result<()> {
    let mut chaos = Chaos::from_env("kafka: kill -9 under a stream", 100_000, 5)?;
    let events = chaos.events;
    let keys = (events / 20).clamp(1_000, 50_000);
    // Events/s the producer sends (EDDY_CHAOS_RATE for a longer run).
    let rate = env_u64("EDDY_CHAOS_RATE")?.unwrap_or(8_000).max(1);
    let broker = Broker::start()?;
    let mut host = Host::start(&kafka_config(&broker.addr, "crash", 6)?).await?;
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("ledger.jsonl");
    let producer = broker.produce(INPUT, 0, events, keys, rate, &ledger)?;
    // The kills fall at random instants of the producer's run.
    let start = std::time::Instant::now();
    for at_ms in chaos.schedule(events * 1_000 / rate) {
        let at = Duration::from_millis(at_ms);
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        chaos.kill_and_restart(&mut host, 400).await?;
    }
    let summary = tokio::task::spawn_blocking(move || finish_producer(producer)).await??;
    ensure!(summary["acked"] == events, "producer: {summary}");
    let b = &broker;
    tokio::task::block_in_place(|| wait_settled(b, "crash"))?;
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    ensure!(expected.len() as u64 == keys, "{} keys", expected.len());
    let got = states(&host, expected.keys().cloned()).await?;
    let checked = check_folds(&expected, &got).with_context(|| host.log())?;
    ensure!(checked as u64 == events, "{checked} events checked");
    let Outputs {
        changes, routed, ..
    } = check_outputs(&broker, &got)?;
    ensure!(!host.log().contains("panicked"), "{}", host.log());
    let (_, dead) = host
        .get("/v1/pipelines/async-process/dead-letters?limit=10")
        .await?;
    let dead = dead["dead_letters"].as_array().map_or(0, Vec::len);
    ensure!(dead == 0, "{dead} dead letters");
    chaos.report(json!({
        "keys": keys,
        "acknowledged": events,
        "applied": checked,
        "lost": 0,
        "applied_twice": 0,
        "dead_letters": dead,
        "changelog_changes": changes,
        "routed": routed,
    }))?;
    Ok(())
}

/// SIGTERM in the middle of a stream: the host commits its batch, drains the
/// outbox and exits 0 within `shutdown.timeout_ms`; the store it leaves has
/// an empty outbox and the changelog topic holds exactly its changes. After
/// a restart the stream finishes with every aggregate right, and — unlike
/// after a crash — no record was sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_sigterm_under_a_stream_drains_the_outbox_and_resumes_exactly() -> Result<()> {
    const EVENTS: u64 = 40_000;
    const KEYS: u64 = 2_000;
    let broker = Broker::start()?;
    let config = kafka_config(&broker.addr, "term", 4)?.replace(
        "[shutdown]\ntimeout_ms = 30000",
        "[shutdown]\ntimeout_ms = 20000",
    );
    ensure!(config.contains("timeout_ms = 20000"), "{config}");
    let mut host = Host::start(&config).await?;
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("ledger.jsonl");
    let producer = broker.produce(INPUT, 0, EVENTS, KEYS, 10_000, &ledger)?;
    // SIGTERM once the host is busy with the stream.
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, progress) = host.get("/v1/pipelines/async-process").await?;
        let committed: u64 = progress["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["committed_offset"].as_u64())
            .sum();
        if committed > 2_000 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no progress: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wait = rand::rng().random_range(200..1_200);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let status = tokio::task::block_in_place(|| host.terminate())?;
    ensure!(status.success(), "exit status {status}:\n{}", host.log());

    let stats = tokio::task::block_in_place(|| host.store_stats())?;
    ensure!(stats["outbox"] == 0, "outbox not empty after exit: {stats}");
    // Per partition, the last change number the store committed.
    let last: Vec<(String, u64)> = stats["last_change"]["async-process"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(p, n)| (p.clone(), n.as_u64().unwrap_or(0)))
        .collect();
    let committed: u64 = last.iter().map(|(_, n)| n).sum();
    ensure!(
        committed > 0,
        "nothing was processed before SIGTERM: {stats}"
    );
    let delivered = broker.dump(CHANGELOG)?;
    let ids: Vec<String> = delivered.iter().map(id_of).collect::<Result<_>>()?;
    let unique: HashSet<&String> = ids.iter().collect();
    let want: HashSet<String> = last
        .iter()
        .flat_map(|(p, n)| (1..=*n).map(move |n| format!("async-process/{p}/changes/{n}")))
        .collect();
    ensure!(
        unique.len() == ids.len() && unique.into_iter().cloned().collect::<HashSet<_>>() == want,
        "at exit the changelog topic holds {} records ({} distinct), the store {committed} changes",
        ids.len(),
        ids.iter().collect::<HashSet<_>>().len()
    );

    host.restart().await?;
    let summary = tokio::task::spawn_blocking(move || finish_producer(producer)).await??;
    ensure!(summary["acked"] == EVENTS, "producer: {summary}");
    let b = &broker;
    tokio::task::block_in_place(|| wait_settled(b, "term"))?;
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    let got = states(&host, expected.keys().cloned()).await?;
    let checked = check_folds(&expected, &got).with_context(|| host.log())?;
    ensure!(checked as u64 == EVENTS, "{checked} events checked");
    let out = check_outputs(&broker, &got)?;
    ensure!(
        out.changes == out.changelog_records && out.routed == out.routed_records,
        "a record was sent twice: {} changelog records for {} changes, \
         {} routed records for {}",
        out.changelog_records,
        out.changes,
        out.routed_records,
        out.routed
    );
    ensure!(host.log().contains("outbox drained"), "{}", host.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_two_hosts_share_a_group_and_never_process_an_event_twice() -> Result<()> {
    let broker = Broker::start()?;
    let config = kafka_config(&broker.addr, "pair", 6)?;
    let mut a = Host::start(&config).await?;
    let b = Host::start(&config).await?;
    // Both members hold partitions before events flow.
    let deadline = std::time::Instant::now() + T;
    while !(a.log().contains("partitions assigned") && b.log().contains("partitions assigned")) {
        ensure!(
            std::time::Instant::now() < deadline,
            "no assignment:\n{}\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("ledger.jsonl");
    finish_producer(broker.produce(INPUT, 0, 20_000, 1_000, 0, &ledger)?)?;
    let br = &broker;
    tokio::task::block_in_place(|| wait_settled(br, "pair"))?;

    let first = expected_from_ledger(&read_ledger(&ledger)?);
    let on_a = states(&a, first.keys().cloned()).await?;
    let on_b = states(&b, first.keys().cloned()).await?;
    for key in first.keys() {
        ensure!(
            on_a.contains_key(key) != on_b.contains_key(key),
            "key {key} must live on exactly one host (a: {}, b: {})",
            on_a.contains_key(key),
            on_b.contains_key(key)
        );
    }
    ensure!(
        !on_a.is_empty() && !on_b.is_empty(),
        "both hosts hold keys: {} / {}",
        on_a.len(),
        on_b.len()
    );

    // Stop a: its partitions move to b, which starts where a committed.
    let status = a.terminate()?;
    ensure!(status.success(), "a stopped with {status}:\n{}", a.log());
    finish_producer(broker.produce(INPUT, 20_000, 10_000, 1_000, 0, &ledger)?)?;
    tokio::task::block_in_place(|| wait_settled(br, "pair"))?;
    let on_b_after = states(&b, first.keys().cloned()).await?;
    each_event_once(&read_ledger(&ledger)?, &[&on_a, &on_b_after])
}

/// Every event of the ledger is in exactly one of the hosts' states.
fn each_event_once(
    ledger: &[(String, String, String, i64)],
    hosts: &[&HashMap<String, Value>],
) -> Result<()> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for state in hosts.iter().flat_map(|h| h.values()) {
        for id in execution_ids(state) {
            *seen.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    ensure!(
        twice.is_empty(),
        "{} events processed twice, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    let missing = ledger
        .iter()
        .filter(|(id, ..)| !seen.contains_key(id))
        .count();
    ensure!(
        missing == 0,
        "{missing} of {} events processed by no host",
        ledger.len()
    );
    Ok(())
}

/// Hosts `a`, then `b` and `c` joining while 40,000 events flow into a
/// 6-partition topic: checks every event is folded exactly once by exactly
/// one host, and returns the hosts and their states.
async fn hosts_join_under_load(
    group: &str,
    assignor: Option<&str>,
) -> Result<(Broker, [Host; 3], [HashMap<String, Value>; 3])> {
    let broker = Broker::start()?;
    let mut config = kafka_config(&broker.addr, group, 6)?;
    if let Some(assignor) = assignor {
        config = config.replace(
            "\"heartbeat.interval.ms\"",
            &format!(
                "\"partition.assignment.strategy\" = \"{assignor}\"\n\"heartbeat.interval.ms\""
            ),
        );
        ensure!(config.contains(assignor), "no assignor set");
    }
    let a = Host::start(&config).await?;
    let deadline = std::time::Instant::now() + T;
    while !a.log().contains("partitions assigned") {
        ensure!(
            std::time::Instant::now() < deadline,
            "no assignment:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("ledger.jsonl");
    let flowing = broker.produce(INPUT, 0, 40_000, 1_000, 5_000, &ledger)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Each joins while the events flow, and is given partitions then.
    let given = async |h: &Host| -> Result<()> {
        let deadline = std::time::Instant::now() + T;
        while !h
            .log()
            .lines()
            .any(|l| l.contains("partitions assigned") && l.contains(&format!("{INPUT}/")))
        {
            ensure!(
                std::time::Instant::now() < deadline,
                "no partitions:\n{}",
                h.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    };
    let b = Host::start(&config).await?;
    given(&b).await?;
    let c = Host::start(&config).await?;
    given(&c).await?;
    finish_producer(flowing)?;
    // Events for every host's partitions, after the last join.
    finish_producer(broker.produce(INPUT, 40_000, 3_000, 1_000, 0, &ledger)?)?;
    let br = &broker;
    tokio::task::block_in_place(|| wait_settled(br, group))?;

    let all = read_ledger(&ledger)?;
    let keys = || {
        all.iter()
            .map(|(_, k, ..)| k.clone())
            .collect::<HashSet<_>>()
            .into_iter()
    };
    let on = [
        states(&a, keys()).await?,
        states(&b, keys()).await?,
        states(&c, keys()).await?,
    ];
    each_event_once(&all, &[&on[0], &on[1], &on[2]])?;
    ensure!(
        on.iter().all(|h| !h.is_empty()),
        "every host took partitions: {:?} keys",
        on.iter().map(HashMap::len).collect::<Vec<_>>()
    );
    Ok((broker, [a, b, c], on))
}

/// With the cooperative-sticky assignor a rebalance moves only some
/// partitions, and the host that keeps the others reads on from where it
/// was: records a poll fetched of a kept partition before the assignment
/// changed must reach the fold (none skipped), those of a partition that
/// moved must not (none twice). Two hosts join while events flow.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_cooperative_rebalances_skip_nothing_in_the_partitions_a_host_keeps() -> Result<()> {
    let (_broker, [a, ..], _) = hosts_join_under_load("coop", Some("cooperative-sticky")).await?;
    // The rebalances were incremental: a gave up only what moved, and
    // kept reading the rest.
    let revoked: Vec<usize> = a
        .log()
        .lines()
        .filter(|l| l.contains("partitions revoked") && l.contains(INPUT))
        .map(|l| l.matches(&format!("{INPUT}/")).count())
        .collect();
    ensure!(
        !revoked.is_empty() && revoked.iter().all(|n| *n < 6),
        "a's revocations, each of fewer than 6 partitions: {revoked:?}\n{}",
        a.log()
    );
    Ok(())
}

/// With the default (eager) assignor every rebalance revokes every
/// partition of every member while librdkafka has already fetched ahead of
/// the batch in hand: what was fetched and not processed is dropped and
/// read again by the partition's next owner, from where the last batch was
/// committed. Two hosts join while events flow; each event is folded once.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_eager_rebalances_under_load_drop_what_was_fetched_ahead_and_lose_nothing()
-> Result<()> {
    let (_broker, [a, ..], _) = hosts_join_under_load("eager", None).await?;
    let revoked_all = a
        .log()
        .lines()
        .filter(|l| l.contains("partitions revoked") && l.contains(INPUT))
        .any(|l| l.matches(&format!("{INPUT}/")).count() == 6);
    ensure!(
        revoked_all,
        "a gave every partition back at a join:\n{}",
        a.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_broker_restart_mid_stream_reconnects_and_finishes() -> Result<()> {
    let mut broker = Broker::start_persistent()?;
    let host = Host::start(&kafka_config(&broker.addr, "restart", 4)?).await?;
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("ledger.jsonl");
    let producer = broker.produce(INPUT, 0, 20_000, 500, 4_000, &ledger)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.start_again()?;
    tokio::task::spawn_blocking(move || finish_producer(producer)).await??;
    let br = &broker;
    tokio::task::block_in_place(|| wait_settled(br, "restart")).with_context(|| host.log())?;
    // The contract: each aggregate is the fold of its key's records in the
    // topic (a producer retry across the restart may have written a record
    // twice; then it is folded twice, as Kafka holds it twice).
    let mut expected = Expected::new();
    let records = broker.dump(INPUT)?;
    let in_topic = records.len();
    for r in records {
        let v = &r["value"];
        expected
            .entry(v["asyncProcessId"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push((
                v["time"].as_i64().unwrap_or_default(),
                v["id"].as_str().unwrap_or_default().to_owned(),
                v["state"].as_str().unwrap_or_default().to_owned(),
            ));
    }
    for v in expected.values_mut() {
        v.sort();
    }
    let acked = read_ledger(&ledger)?.len();
    ensure!(acked == 20_000, "{acked} events acknowledged");
    let got = states(&host, expected.keys().cloned()).await?;
    let checked = check_folds(&expected, &got).with_context(|| host.log())?;
    ensure!(
        checked == in_topic,
        "{checked} events checked, the topic holds {in_topic}"
    );
    // The broker (tansu on an object store) may lose records it had
    // acknowledged when it is killed; Eddy folds what the topic holds.
    println!("{acked} events acknowledged, {in_topic} in the topic after the broker's restart");
    check_outputs(&broker, &got)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_start_up_errors_are_clear() -> Result<()> {
    let broker = Broker::start()?;
    let base = kafka_config(&broker.addr, "errors", 2)?;

    let no_create = base.replace("create_topics = true", "create_topics = false");
    let (status, log) = run_until_exit(&no_create, Duration::from_secs(60))?;
    ensure!(!status.success(), "started without its topic:\n{log}");
    ensure!(
        ["async-process-execution", "async-process"]
            .iter()
            .any(|t| log.contains(&format!("topic \"{t}\" does not exist"))),
        "the error names a missing topic:\n{log}"
    );

    let port = eddy_tests::free_port()?;
    let unreachable = base
        .replace(&broker.addr, &format!("127.0.0.1:{port}"))
        .replace(
            "create_topics = true",
            "create_topics = false\nconnect_timeout_ms = 2000",
        );
    let started = std::time::Instant::now();
    let (status, log) = run_until_exit(&unreachable, Duration::from_secs(60))?;
    ensure!(
        !status.success() && log.contains("cannot reach the Kafka brokers"),
        "{log}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "gave up only after {:?}",
        started.elapsed()
    );

    let bad = base.replace(
        "[source.properties]",
        "[source.properties]\n\"no.such.property\" = \"1\"",
    );
    let (status, log) = run_until_exit(&bad, Duration::from_secs(60))?;
    ensure!(
        !status.success() && log.contains("no.such.property"),
        "{log}"
    );
    ensure!(!log.contains("panicked"), "{log}");

    Ok(())
}

/// Kafka over mutual TLS, set the usual librdkafka way in
/// `[source.properties]`: Eddy creates its topics, produces (REST) and
/// consumes through the TLS front and folds the events. A client without its
/// certificate is refused at start with an error that says why.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_over_mutual_tls() -> Result<()> {
    let broker = Broker::start_with_tls()?;
    let path = |f: &str| broker.tls_file(f).display().to_string();
    let tls = format!(
        "[source.properties]\n\
         \"security.protocol\" = \"ssl\"\n\
         \"ssl.ca.location\" = {:?}\n\
         \"ssl.certificate.location\" = {:?}\n\
         \"ssl.key.location\" = {:?}\n",
        path("ca.pem"),
        path("client.pem"),
        path("client.key")
    );
    let config = kafka_config(&broker.addr, "tls", 2)?.replace("[source.properties]\n", &tls);
    ensure!(config.contains("ssl.key.location"), "{config}");
    let host = Host::start(&config)
        .await
        .with_context(|| format!("broker and TLS front:\n{}", broker.log()))?;
    let mut records = Vec::new();
    for (i, state) in ["ACCEPTED", "STARTED", "REJECTED"].iter().enumerate() {
        records.push(json!({
            "value": eddy_tests::execution(&format!("e{i}"), "tls-1", i as i64 + 1, state)
        }));
    }
    let (status, produced) = host
        .post(
            &format!("/v1/topics/{INPUT}/records"),
            json!({ "records": records }).to_string(),
        )
        .await?;
    ensure!(status == 200, "{status} {produced}");
    let deadline = std::time::Instant::now() + T;
    loop {
        let (status, state) = host.get("/async-process/tls-1").await?;
        if status == 200 && state["state"] == "REJECTED" {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "not folded over TLS: {status} {state}\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without a client certificate the TLS front refuses the handshake.
    let no_cert = config
        .lines()
        .filter(|l| {
            !l.starts_with("\"ssl.certificate.location\"") && !l.starts_with("\"ssl.key.location\"")
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "create_topics = true",
            "create_topics = false\nconnect_timeout_ms = 3000",
        );
    let (status, log) = run_until_exit(&no_cert, Duration::from_secs(60))?;
    ensure!(
        !status.success() && log.contains("cannot reach the Kafka brokers") && log.contains("SSL"),
        "{log}"
    );
    ensure!(!log.contains("panicked"), "{log}");
    Ok(())
}
