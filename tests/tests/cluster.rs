//! Cluster mode on a real broker (tansu) with Confluent's producer: state
//! follows its partitions between hosts through the pipeline's state
//! changelog, and any host answers for any key. Hosts that join restore
//! the partitions they are given, a killed host's partitions are restored
//! on the survivors, a host restarted on its old store restores whole only
//! what another host owned meanwhile, and only its gap where it stayed the
//! owner; a second host with a taken `host_id` stops.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::Host;
use eddy_tests::fold::{Expected, check_folds, expected_from_ledger};
use eddy_tests::kafka::{Broker, finish_producer, kafka_config, read_ledger};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;

const INPUT: &str = "async-process-execution";
const GROUP: &str = "grp";
const STATE_CHANGELOG: &str = "grp-async-process-changelog";
const PARTITIONS: u32 = 6;
const KEYS: u64 = 300;
const T: Duration = Duration::from_secs(240);

const TOKEN: &str = "cluster-admin";

/// The group's assignors: librdkafka's default (eager: every rebalance
/// revokes everything) and cooperative-sticky (incremental: a host keeps
/// the partitions that do not move).
const EAGER: &str = "range,roundrobin";
const COOPERATIVE: &str = "cooperative-sticky";

fn config(broker: &Broker, host_id: &str, assignor: &str) -> Result<String> {
    let base = kafka_config(&broker.addr, GROUP, PARTITIONS)?;
    ensure!(
        base.contains("\"heartbeat.interval.ms\""),
        "the example config has no [source.properties]"
    );
    Ok(format!(
        "{}\n[cluster]\nhost_id = {host_id:?}\n",
        base.replace("[http]\n", &format!("[http]\nadmin_token = \"{TOKEN}\"\n"))
            .replace(
                "\"heartbeat.interval.ms\"",
                &format!(
                    "\"partition.assignment.strategy\" = {assignor:?}\n\"heartbeat.interval.ms\""
                ),
            )
    ))
}

/// The two scenarios run one after the other: each runs three hosts.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// Waits until `hosts` own every partition between them, once each, none
/// restoring (as each host sees itself), the pipeline's group committed
/// everything, and every host is ready.
async fn settle(broker: &Broker, hosts: &[&Host]) -> Result<()> {
    let deadline = Instant::now() + T;
    loop {
        let mut owned: Vec<u64> = Vec::new();
        let mut restoring = 0;
        for h in hosts {
            let (_, v) = h.get("/v1/cluster").await?;
            let mine = &v["pipelines"]["async-process"];
            owned.extend(
                mine["owned"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64),
            );
            restoring += mine["restoring"].as_array().map_or(0, Vec::len);
        }
        owned.sort_unstable();
        if restoring == 0 && owned == (0..u64::from(PARTITIONS)).collect::<Vec<_>>() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the hosts own {owned:?}, {restoring} restoring"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_ready(hosts).await?;
    tokio::task::block_in_place(|| {
        broker.wait_lag_zero(&format!("{GROUP}.async-process"), INPUT, T)
    })
    .with_context(|| {
        // What the hosts were doing: the end of each one's log.
        hosts
            .iter()
            .map(|h| {
                let log = plain(&h.log());
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines
                    .get(lines.len().saturating_sub(40)..)
                    .unwrap_or_default();
                format!("--- {} ---\n{}", h.url, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    wait_ready(hosts).await
}

/// A host's answer for a key: the key, status, the host that served it
/// (when forwarded) and the body.
type Answer = (String, u16, Option<String>, Value);

/// Each key's state, asked of every host: every host answers it, the
/// same, and they agree on which host owns it (the one that answers
/// without forwarding). A 503 (the key's partition between owners: with
/// cooperative-sticky, a partition that moves is revoked in one round and
/// assigned in the next) is asked again after its `Retry-After`, as a
/// client would, for up to 30 s.
async fn cluster_states(hosts: &[&Host], expected: &Expected) -> Result<HashMap<String, Value>> {
    let mut out: HashMap<String, Value> = HashMap::new();
    let mut owners: HashMap<String, String> = HashMap::new();
    for h in hosts {
        let got: Vec<Result<Answer>> = futures_util::stream::iter(expected.keys().cloned())
            .map(|k| async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                let r = loop {
                    let r = h
                        .http
                        .get(format!("{}/async-process/{k}", h.url))
                        .send()
                        .await?;
                    if r.status() != 503 || Instant::now() >= deadline {
                        break r;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                };
                let status = r.status().as_u16();
                let by = r
                    .headers()
                    .get("eddy-served-by")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let v: Value = r.json().await.unwrap_or(Value::Null);
                Ok((k, status, by, v))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in got {
            let (k, status, by, v) = r?;
            ensure!(
                status == 200,
                "{}: GET /async-process/{k} answered {status}: {v}",
                h.url
            );
            let owner = by.unwrap_or_else(|| h.url.clone());
            let owner = hosts
                .iter()
                .find(|o| o.url == owner || host_id(o) == owner)
                .map_or(owner, |o| o.url.clone());
            if let Some(was) = owners.insert(k.clone(), owner.clone()) {
                ensure!(was == owner, "key {k}: owned by {was} and by {owner}");
            }
            if let Some(was) = out.insert(k.clone(), v.clone()) {
                ensure!(was == v, "key {k}: hosts answer different states");
            }
        }
    }
    Ok(out)
}

/// The host id a test host was started with (from its config file).
fn host_id(h: &Host) -> String {
    std::fs::read_to_string(h.dir().join("eddy.toml"))
        .ok()
        .and_then(|c| {
            let at = c.find("host_id = \"")? + 11;
            let rest = c.get(at..)?;
            Some(rest.get(..rest.find('"')?)?.to_owned())
        })
        .unwrap_or_default()
}

/// `latest` asked of every host: the same answer, complete (no partition
/// missing), and the cluster's true top `n`: the newest of every host's
/// own rows (asked as a forwarded query, which answers for the host's own
/// partitions only).
async fn check_latest(hosts: &[&Host], n: usize) -> Result<()> {
    let mut own: Vec<Value> = Vec::new();
    for h in hosts {
        let r = h
            .http
            .get(format!(
                "{}/v1/pipelines/async-process/latest?limit={n}&meta=true",
                h.url
            ))
            .header("eddy-forwarded", "test")
            .send()
            .await?;
        ensure!(r.status() == 200, "{}: own latest {}", h.url, r.status());
        let rows: Vec<Value> = r.json().await?;
        own.extend(rows);
    }
    own.sort_by(|a, b| {
        b["stamp_us"]
            .as_u64()
            .cmp(&a["stamp_us"].as_u64())
            .then_with(|| a["key"].as_str().cmp(&b["key"].as_str()))
    });
    own.truncate(n);
    let truth: Vec<&Value> = own.iter().map(|r| &r["state"]).collect();
    for h in hosts {
        let r = h
            .http
            .get(format!("{}/async-process/latest?limit={n}", h.url))
            .send()
            .await?;
        let missing = r.headers().get("eddy-missing").cloned();
        ensure!(
            r.status() == 200 && missing.is_none(),
            "{}: latest {} missing {missing:?}",
            h.url,
            r.status()
        );
        let got: Vec<Value> = r.json().await?;
        ensure!(
            got.iter().collect::<Vec<_>>() == truth,
            "{}: latest differs from the cluster's top {n}",
            h.url
        );
    }
    Ok(())
}

/// `GET /v1/cluster` of every host: each lists every host, alive, and the
/// hosts' owned partitions cover the input's once.
async fn check_directory(hosts: &[&Host]) -> Result<()> {
    let ids: Vec<String> = hosts.iter().map(|h| host_id(h)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for h in hosts {
        loop {
            let (status, v) = h.get("/v1/cluster").await?;
            ensure!(status == 200, "{}: /v1/cluster {status} {v}", h.url);
            let mut owned: Vec<u64> = Vec::new();
            let mut seen = Vec::new();
            // Each entry gives the lag of the partitions it owns: none once
            // the hosts caught up (as their next entries say).
            let mut lags_caught_up = true;
            for e in v["hosts"].as_array().cloned().unwrap_or_default() {
                let id = e["host"].as_str().unwrap_or_default().to_owned();
                if ids.contains(&id) && e["alive"] == Value::Bool(true) {
                    let share = &e["pipelines"]["async-process"];
                    let mine: Vec<u64> = share["owned"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_u64)
                        .collect();
                    let lag = share["lag"].as_object().cloned().unwrap_or_default();
                    let mut lagged: Vec<u64> = lag.keys().filter_map(|k| k.parse().ok()).collect();
                    lagged.sort_unstable();
                    let mut sorted = mine.clone();
                    sorted.sort_unstable();
                    lags_caught_up &=
                        lagged == sorted && lag.values().all(|l| l.as_u64() == Some(0));
                    owned.extend(mine);
                    seen.push(id);
                }
            }
            owned.sort_unstable();
            seen.sort();
            let mut want = ids.clone();
            want.sort();
            if seen == want
                && owned == (0..u64::from(PARTITIONS)).collect::<Vec<_>>()
                && lags_caught_up
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{}: /v1/cluster shows hosts {seen:?} owning {owned:?}: {v}",
                h.url
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// A log without the terminal colours it may carry.
fn plain(log: &str) -> String {
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
    plain(log)
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
        // A state (not a dead letter) is its key's AsyncProcess aggregate,
        // whatever format it crossed in (the Rust plugin writes MessagePack).
        if h.get("eddy-dead-letter").is_none() {
            ensure!(
                r["value"]["id"] == r["key"] && r["value"]["executions"].is_array(),
                "partition {p}: a state record whose value is not its key's aggregate: {r}"
            );
        }
        let was = last.insert((p, epoch), seq).unwrap_or(0);
        ensure!(
            seq > was,
            "partition {p} epoch {epoch}: change {seq} after {was}"
        );
    }
    Ok(per_partition)
}

/// An all-keys SSE client of the cluster: it reads the stream of one host
/// and, when that ends (the host died), goes on from the next host that
/// answers, with `Last-Event-ID`. It keeps each key's last state, and
/// notes any id that moves a partition back or state that goes back.
struct Follower {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Seen {
    states: HashMap<String, Value>,
    connections: u64,
    events: u64,
    problems: Vec<String>,
}

impl Follower {
    /// Opens the stream on `hosts[0]` from the pipeline's start (id `0`:
    /// every key's state, then live changes).
    fn start(hosts: &[&Host]) -> Follower {
        let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
        let http = hosts[0].http.clone();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let path = "/v1/pipelines/async-process/events";
            let mut last = "0".to_owned();
            let mut at: Vec<u64> = vec![0];
            for url in urls.iter().cycle() {
                if let Ok(mut stream) = eddy_tests::sse_at(&http, url, path, Some(&last)).await {
                    shared.lock().await.connections += 1;
                    while let Ok(e) = stream.next(Duration::from_secs(60)).await {
                        let mut seen = shared.lock().await;
                        if e.event != "message" {
                            continue;
                        }
                        seen.events += 1;
                        let now = eddy_tests::position(&e.id).unwrap_or_default();
                        if now.len() < at.len() || now.iter().zip(&at).any(|(n, a)| n < a) {
                            seen.problems
                                .push(format!("id {} after {last} ({url})", e.id));
                        }
                        let key = e.data["key"].as_str().unwrap_or_default().to_owned();
                        let state = e.data["state"].clone();
                        let count = |v: &Value| v["executions"].as_array().map_or(0, Vec::len);
                        if let Some(was) = seen.states.get(&key)
                            && count(was) > count(&state)
                        {
                            let problem = format!("{key} went back from {was} to {state}");
                            seen.problems.push(problem);
                        }
                        seen.states.insert(key, state);
                        last = e.id;
                        at = now;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Follower { seen, task }
    }

    /// Waits until it holds exactly `states`; how many times it connected.
    async fn holds(&self, states: &HashMap<String, Value>) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let seen = self.seen.lock().await;
                ensure!(
                    seen.problems.is_empty(),
                    "all-keys stream: {:?}",
                    seen.problems
                );
                let missing: Vec<&String> = states
                    .iter()
                    .filter(|(k, v)| seen.states.get(*k) != Some(v))
                    .map(|(k, _)| k)
                    .collect();
                if missing.is_empty() && seen.states.len() == states.len() {
                    return Ok(seen.connections);
                }
                if Instant::now() > deadline {
                    bail!(
                        "the all-keys stream ({} events, {} connections) differs for {} of {} keys, as {:?}",
                        seen.events,
                        seen.connections,
                        missing.len(),
                        states.len(),
                        missing.iter().take(5).collect::<Vec<_>>()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn state_follows_its_partitions_between_hosts() -> Result<()> {
    scenario(EAGER).await
}

#[tokio::test(flavor = "multi_thread")]
async fn state_follows_its_partitions_with_the_cooperative_sticky_assignor() -> Result<()> {
    scenario(COOPERATIVE).await
}

/// Three hosts: a alone; b and c join while events flow; a is killed; c
/// leaves; a restarts on its old store; b leaves; a second "a" is refused.
/// After each step every key is asked of every host and checked against
/// the fold of the events produced.
async fn scenario(assignor: &str) -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let broker = Broker::start()?;
    let mut a = Host::start(&config(&broker, "a", assignor)?).await?;
    wait_ready(&[&a]).await?;
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("ledger.jsonl");
    let mut produced = 0;
    let produce = |produced: &mut u64, n: u64| -> Result<()> {
        finish_producer(broker.produce(INPUT, *produced, n, KEYS, 0, &ledger)?)?;
        *produced += n;
        Ok(())
    };
    let check = async |hosts: &[&Host], produced: u64, phase: &str| -> Result<()> {
        let expected = expected_from_ledger(&read_ledger(&ledger)?);
        let checked = check_folds(&expected, &cluster_states(hosts, &expected).await?)
            .with_context(|| phase.to_owned())?;
        ensure!(
            checked as u64 == produced,
            "{phase}: {checked} of {produced} events checked"
        );
        Ok(())
    };

    // One host: it owns every partition.
    produce(&mut produced, 6_000)?;
    settle(&broker, &[&a]).await?;
    check(&[&a], produced, "one host").await?;

    // Two more join while events flow: the partitions they get are
    // restored from the state changelog (they never saw their events).
    let flowing = broker.produce(INPUT, produced, 4_000, KEYS, 4_000, &ledger)?;
    let mut b = Host::start(&config(&broker, "b", assignor)?).await?;
    let mut c = Host::start(&config(&broker, "c", assignor)?).await?;
    finish_producer(flowing)?;
    produced += 4_000;
    settle(&broker, &[&a, &b, &c]).await?;
    check_directory(&[&a, &b, &c]).await?;
    check(&[&a, &b, &c], produced, "three hosts").await?;
    check_latest(&[&a, &b, &c], 50).await?;
    // An all-keys stream asked of a (which dies below) merges every host's
    // partitions: from id 0 it holds every key's state.
    let follower = Follower::start(&[&a, &b, &c]);
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    follower
        .holds(&cluster_states(&[&a, &b, &c], &expected).await?)
        .await?;

    // A pause asked of one host holds on every host: events wait in the
    // input; resumed (asked of another), every event is folded once.
    let switch = async |h: &Host, verb: &str| -> Result<Value> {
        let r = h
            .http
            .post(format!("{}/v1/pipelines/async-process/{verb}", h.url))
            .bearer_auth(TOKEN)
            .send()
            .await?;
        let status = r.status().as_u16();
        let v: Value = r.json().await?;
        ensure!(status == 200, "{verb} on {}: {status} {v}", h.url);
        Ok(v)
    };
    let v = switch(&a, "pause").await?;
    ensure!(
        v["other_hosts"]["b"] == true && v["other_hosts"]["c"] == true,
        "the pause reached b and c: {v}"
    );
    produce(&mut produced, 600)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for h in [&a, &b, &c] {
        let (_, p) = h.get("/v1/pipelines/async-process").await?;
        ensure!(p["paused"] == true, "{} not paused: {p}", h.url);
    }
    let waiting =
        tokio::task::block_in_place(|| broker.lag(&format!("{GROUP}.async-process"), INPUT))?;
    ensure!(
        waiting == 600,
        "the group lags by {waiting} while paused, not 600"
    );
    switch(&b, "resume").await?;
    settle(&broker, &[&a, &b, &c]).await?;
    check(&[&a, &b, &c], produced, "resumed").await?;

    if assignor == COOPERATIVE {
        // a gave up only what moved, and read on in the partitions it kept
        // (the fold checks above show none of them skipped an event).
        let revokes: Vec<usize> = plain(&a.log())
            .lines()
            .filter(|l| l.contains("partitions revoked") && l.contains("pipeline=async-process "))
            .map(|l| l.matches(&format!("{INPUT}/")).count())
            .collect();
        ensure!(
            !revokes.is_empty() && revokes.iter().all(|n| *n < PARTITIONS as usize),
            "incremental revocations on a, each of fewer than {PARTITIONS} partitions: {revokes:?}\n{}",
            a.log()
        );
    }
    for h in [&b, &c] {
        let restored = restores(&h.log());
        ensure!(
            restored.iter().any(|(_, records, _)| *records > 0),
            "{} restored nothing: {restored:?}\n{}",
            h.url,
            h.log()
        );
    }

    // A key another host owns: forwarded (above), redirected on request;
    // a query already forwarded is not forwarded again; its SSE stream is
    // relayed; a replay is refused.
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    let (k, _) = expected.iter().next().context("no keys")?;
    let by = |h: &Host| {
        let url = format!("{}/async-process/{k}", h.url);
        let http = h.http.clone();
        async move {
            let r = http.get(url).send().await?;
            anyhow::Ok(
                r.headers()
                    .get("eddy-served-by")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            )
        }
    };
    let (owner, other) = match (by(&a).await?, by(&b).await?) {
        (None, _) => (&a, &b),
        (_, None) => (&b, &a),
        _ => (&c, &a),
    };
    let r = other
        .http
        .get(format!("{}/async-process/{k}?redirect=true", other.url))
        .send()
        .await?;
    ensure!(
        r.status() == 200 && r.url().as_str().starts_with(&owner.url),
        "redirect=true for {k}: {} at {}",
        r.status(),
        r.url()
    );
    let r = other
        .http
        .get(format!("{}/async-process/{k}", other.url))
        .header("eddy-forwarded", "test")
        .send()
        .await?;
    ensure!(
        r.status() == 421,
        "a forwarded query on a non-owner: {}",
        r.status()
    );
    // A per-key stream asked of a host that does not own the key is
    // relayed from the owner: the current state, then live changes, with
    // ids a reconnection (to any host) resumes from.
    let path = format!("/v1/pipelines/async-process/events?key={k}");
    let mut relayed = other.sse(&path, None).await?;
    let first = relayed.next(Duration::from_secs(10)).await?;
    let (_, now) = owner.get(&format!("/async-process/{k}")).await?;
    ensure!(
        first.data == now,
        "the relayed stream starts with {k}'s state: {first:?} vs {now}"
    );
    let count = |v: &Value| v["executions"].as_array().map_or(0, Vec::len);
    produce(&mut produced, 600)?;
    let next = relayed.next(Duration::from_secs(30)).await?;
    ensure!(
        count(&next.data) > count(&first.data),
        "a live change of {k} comes through the relay: {next:?}"
    );
    drop(relayed);
    let mut resumed = other.sse(&path, Some(&next.id)).await?;
    settle(&broker, &[&a, &b, &c]).await?;
    let (_, now) = owner.get(&format!("/async-process/{k}")).await?;
    if count(&now) > count(&next.data) {
        // Each change it missed, in order, up to the current state.
        loop {
            let e = resumed.next(Duration::from_secs(10)).await?;
            ensure!(
                count(&e.data) > count(&next.data) && count(&e.data) <= count(&now),
                "the resumed relay sends what came after {}: {e:?}",
                next.id
            );
            if e.data == now {
                break;
            }
        }
    }
    drop(resumed);
    owner.sse(&path, None).await?;
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
    // A stream of some partitions is served by their owner only; bad
    // asks are named.
    let (_, v) = owner.get("/v1/cluster").await?;
    let mine: Vec<u64> = v["pipelines"]["async-process"]["owned"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let theirs = (0..u64::from(PARTITIONS))
        .find(|p| !mine.contains(p))
        .context("the owner owns every partition")?;
    for (query, want, says) in [
        (format!("partitions={theirs}"), 421, "is not owned by host"),
        (
            format!("partitions={PARTITIONS}"),
            400,
            "is not a partition",
        ),
        ("partitions=".to_owned(), 400, "at least one partition"),
        (format!("key={k}&partitions=0"), 400, "not both"),
    ] {
        let r = owner
            .http
            .get(format!(
                "{}/v1/pipelines/async-process/events?{query}",
                owner.url
            ))
            .send()
            .await?;
        let (status, text) = (r.status().as_u16(), r.text().await?);
        ensure!(
            status == want && text.contains(says),
            "events?{query}: {status} {text}"
        );
    }

    // a dies: right after, its keys' queries name it as not answering;
    // then b and c restore its partitions and go on.
    let a_key = {
        let mut found = None;
        for k in expected.keys() {
            let r = a
                .http
                .get(format!("{}/async-process/{k}", a.url))
                .send()
                .await?;
            if r.headers().get("eddy-served-by").is_none() {
                found = Some(k.clone());
                break;
            }
        }
        found.context("a owns no key")?
    };
    a.kill9()?;
    let r = b
        .http
        .get(format!("{}/async-process/{a_key}", b.url))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await?;
    let error = body["error"].as_str().unwrap_or_default();
    ensure!(
        (status == 502 && error.contains("host \"a\"") && error.contains("did not answer"))
            || status == 503,
        "a key of the killed host: {status} {body}"
    );
    produce(&mut produced, 4_000)?;
    settle(&broker, &[&b, &c]).await?;
    check(&[&b, &c], produced, "after a's death").await?;
    // The all-keys client, reconnected to b with its last id, missed
    // nothing: it holds every key's state now.
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    let connections = follower
        .holds(&cluster_states(&[&b, &c], &expected).await?)
        .await?;
    ensure!(
        connections >= 2,
        "the all-keys client reconnected after a's death ({connections} connections)"
    );
    drop(follower);

    // c leaves gracefully: b takes every partition.
    let status = c.terminate()?;
    ensure!(status.success(), "c stopped with {status}\n{}", c.log());
    produce(&mut produced, 1_000)?;
    settle(&broker, &[&b]).await?;
    check(&[&b], produced, "b alone").await?;

    // a comes back on its old store: partitions b owned since are restored
    // whole (a's copy of them is stale).
    // One per-key stream on b per partition: those whose partition moves
    // to a say so (`moved`) and end.
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    let mut followed: BTreeMap<u32, (String, eddy_tests::SseStream)> = BTreeMap::new();
    for k in expected.keys() {
        let (_, meta) = b
            .get(&format!("/v1/pipelines/async-process/state/{k}?meta=true"))
            .await?;
        let Some(p) = meta["partition"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
        else {
            continue;
        };
        if followed.contains_key(&p) {
            continue;
        }
        let mut stream = b
            .sse(&format!("/v1/pipelines/async-process/events?key={k}"), None)
            .await?;
        stream.next(Duration::from_secs(10)).await?;
        followed.insert(p, (k.clone(), stream));
    }
    let a_log_before = a.log().len();
    a.restart().await?;
    settle(&broker, &[&a, &b]).await?;
    let mut moved = 0;
    for (p, (k, mut stream)) in followed {
        let r = b
            .http
            .get(format!("{}/async-process/{k}", b.url))
            .send()
            .await?;
        if r.headers().get("eddy-served-by").is_none() {
            continue; // b still owns it
        }
        let e = stream.next(Duration::from_secs(10)).await?;
        ensure!(
            e.event == "moved" && e.data["partition"] == p,
            "the stream of {k} (partition {p}, now a's) on b: {e:?}"
        );
        moved += 1;
    }
    ensure!(moved > 0, "a took partitions from b");
    produce(&mut produced, 2_000)?;
    settle(&broker, &[&a, &b]).await?;
    check(&[&a, &b], produced, "a back").await?;
    check_latest(&[&a, &b], 100).await?;
    let back = restores(a.log().get(a_log_before..).unwrap_or_default());
    ensure!(
        !back.is_empty() && back.iter().all(|(_, _, mode)| mode == "start"),
        "a's restores after its restart, all from the start: {back:?}"
    );

    // b stops gracefully: a takes every partition. With the eager assignor
    // those a kept are revoked and assigned again, and restore from its
    // checkpoint (its own last records at most); with cooperative-sticky
    // they are not touched. b's restore from the start.
    let kept: Vec<u32> = back.iter().map(|(p, ..)| *p).collect();
    let a_log_before = a.log().len();
    let status = b.terminate()?;
    ensure!(status.success(), "b stopped with {status}");
    settle(&broker, &[&a]).await?;
    let last = restores(a.log().get(a_log_before..).unwrap_or_default());
    let per_partition = check_state_changelog(&broker.dump(STATE_CHANGELOG)?)?;
    let mut gap_read = 0;
    ensure!(
        last.iter()
            .any(|(p, _, mode)| !kept.contains(p) && mode == "start"),
        "b's partitions restored on a from the start: {last:?} (a kept {kept:?})"
    );
    for p in &kept {
        if assignor == COOPERATIVE {
            ensure!(
                !last.iter().any(|(q, ..)| q == p),
                "partition {p}, kept by a through an incremental rebalance, was restored again: {last:?}"
            );
            continue;
        }
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
    check(&[&a], produced, "a alone").await?;

    // A second host named "a" while a runs: it stops, naming the conflict;
    // a goes on.
    let (status, log) = tokio::task::block_in_place(|| {
        eddy_tests::run_until_exit(&config(&broker, "a", assignor)?, Duration::from_secs(120))
    })?;
    ensure!(
        !status.success() && log.contains("cluster.host_id \"a\" is also used by another host"),
        "a second host \"a\": {status}\n{log}"
    );
    // The duplicate was in the group for a moment: a owns everything again
    // once the group noticed it left (an incremental assignment may give
    // it nothing back at first).
    settle(&broker, &[&a]).await?;
    check(&[&a], produced, "after the duplicate").await?;

    let total: usize = per_partition.values().sum();
    println!(
        "{produced} events; state changelog {total} records; a's gap restores of {} kept partitions read {gap_read}",
        kept.len()
    );
    for h in [&a, &b, &c] {
        ensure!(!h.log().contains("panicked"), "{}", h.log());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_changelog_with_another_partition_count_is_refused() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic(INPUT, PARTITIONS)?;
    broker.create_topic(STATE_CHANGELOG, 2)?;
    let refused = match Host::start(&config(&broker, "a", EAGER)?).await {
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

/// A producer that partitions by another hash than murmur2 (librdkafka's
/// CRC32 `consistent_random`) sends most keys to a partition whose state
/// lives elsewhere: in a cluster those events are dead-lettered (class
/// `partition`), not folded on the wrong partition; the others are folded.
/// The dead letters then live with their partitions: a host that joins
/// restores those of the partitions it gets, any host lists them all and
/// routes one to its owner, a replay runs on the key's owner, a resolution
/// moves with the partition too, and replaying the rest folds every event.
#[tokio::test(flavor = "multi_thread")]
async fn events_on_the_wrong_partition_for_their_key_are_dead_lettered() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let broker = Broker::start()?;
    let mut a = Host::start(&config(&broker, "a", EAGER)?).await?;
    wait_ready(&[&a]).await?;
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("ledger.jsonl");
    finish_producer(broker.produce_partitioned_by(
        INPUT,
        0,
        300,
        60,
        "consistent_random",
        &ledger,
    )?)?;
    settle(&broker, &[&a]).await?;
    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    let folded_on = async |h: &Host| -> Result<usize> {
        let mut folded = 0;
        for k in expected.keys() {
            let (status, v) = h.get(&format!("/async-process/{k}")).await?;
            if status == 200 {
                folded += v["executions"].as_array().map_or(0, Vec::len);
            } else {
                ensure!(status == 404, "{k}: {status} {v}");
            }
        }
        Ok(folded)
    };
    let folded = folded_on(&a).await?;
    let letters_on = async |h: &Host| -> Result<Vec<Value>> {
        let (status, dead) = h
            .get("/v1/pipelines/async-process/dead-letters?limit=1000")
            .await?;
        ensure!(
            status == 200 && dead.get("missing").is_none(),
            "dead letters asked of {}: {status} {dead}",
            h.url
        );
        Ok(dead["dead_letters"].as_array().cloned().unwrap_or_default())
    };
    let ids = |letters: &[Value]| -> Vec<u64> {
        letters.iter().filter_map(|d| d["id"].as_u64()).collect()
    };
    let letters = letters_on(&a).await?;
    ensure!(
        !letters.is_empty()
            && letters.iter().all(|d| d["error_class"] == "partition"
                && d["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("arrived on partition"))),
        "misrouted events are dead letters of class partition: {letters:?}"
    );
    ensure!(
        folded + letters.len() == 300 && folded > 0,
        "each event folded or dead-lettered once: {folded} folded, {} dead letters",
        letters.len()
    );
    // A dead letter's id says its partition (the one it arrived on).
    ensure!(
        letters
            .iter()
            .all(|d| d["id"].as_u64().map(|id| id % u64::from(PARTITIONS))
                == d["partition"].as_u64()),
        "ids are n × {PARTITIONS} + partition: {letters:?}"
    );

    // b joins: the dead letters of the partitions it gets move with them.
    let mut b = Host::start(&config(&broker, "b", EAGER)?).await?;
    settle(&broker, &[&a, &b]).await?;
    let all = ids(&letters);
    for h in [&a, &b] {
        let got = ids(&letters_on(h).await?);
        ensure!(
            got == all,
            "every dead letter, once, asked of {}: {got:?}, not {all:?}",
            h.url
        );
    }
    let owner_of = async |d: &Value| -> Result<String> {
        let id = d["id"].as_u64().context("an id")?;
        let r = a
            .http
            .get(format!(
                "{}/v1/pipelines/async-process/dead-letters/{id}",
                a.url
            ))
            .send()
            .await?;
        ensure!(
            r.status() == 200,
            "dead letter {id} asked of a: {}",
            r.status()
        );
        Ok(r.headers()
            .get("eddy-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("a")
            .to_owned())
    };
    let mut on_b = None;
    for d in &letters {
        if owner_of(d).await? == "b" {
            on_b = Some(d.clone());
            break;
        }
    }
    let on_b = on_b.context("b owns no dead letter's partition")?;
    let b_log = plain(&b.log());
    ensure!(
        b_log.contains("partition restored"),
        "b restored its partitions: {b_log}"
    );

    // One of b's, replayed through a: b resolves it, the event goes to the
    // partition its key belongs to and is folded there once.
    let id = on_b["id"].as_u64().context("an id")?;
    let r = a
        .http
        .post(format!(
            "{}/v1/pipelines/async-process/dead-letters/{id}/replay",
            a.url
        ))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await?;
    ensure!(
        status == 200 && body["replayed"] == 1,
        "replay of {id} asked of a: {status} {body}"
    );
    settle(&broker, &[&a, &b]).await?;
    ensure!(
        folded_on(&b).await? == folded + 1,
        "the replayed event is folded once"
    );
    let left: Vec<u64> = all.iter().copied().filter(|i| *i != id).collect();
    ensure!(ids(&letters_on(&a).await?) == left, "{id} is resolved");

    // b dies: a restores b's partitions, their dead letters with them —
    // without the one resolved on b.
    b.kill9()?;
    settle(&broker, &[&a]).await?;
    ensure!(
        ids(&letters_on(&a).await?) == left,
        "after b's death a holds every open dead letter, once"
    );
    // Replaying the rest folds every event.
    let (status, body) = {
        let r = a
            .http
            .post(format!(
                "{}/v1/pipelines/async-process/dead-letters/replay",
                a.url
            ))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await?;
        (r.status().as_u16(), r.json::<Value>().await?)
    };
    ensure!(
        status == 200 && body["replayed"].as_u64() == Some(left.len() as u64),
        "replay of the rest: {status} {body}"
    );
    settle(&broker, &[&a]).await?;
    ensure!(letters_on(&a).await?.is_empty(), "no dead letter is left");
    ensure!(
        folded_on(&a).await? == 300,
        "every event folded once after the replays"
    );
    // a, restarted on its store, still has nothing open.
    a.terminate()?;
    a.restart().await?;
    wait_ready(&[&a]).await?;
    ensure!(
        letters_on(&a).await?.is_empty(),
        "no dead letter after a restart"
    );
    for h in [&a, &b] {
        ensure!(!h.log().contains("panicked"), "{}", h.log());
    }
    Ok(())
}

/// What the query loop of the fault run learned.
#[derive(Default)]
struct Queried {
    /// Answers with a state.
    answered: u64,
    /// Answers without one: 502/503 while a partition is between owners,
    /// or the asked host being down.
    refused: u64,
    /// Per key, the newest state answered (its executions) and by which
    /// host, in which of that host's lives.
    newest: HashMap<String, (usize, usize, u64)>,
    /// Answers older than one answered before by a host that has not been
    /// killed since (must stay empty).
    older: Vec<String>,
    /// Answers older than one answered before by a host killed since: the
    /// states it had folded but the brokers had not yet acknowledged, which
    /// the next owner folds again.
    older_after_kill: u64,
}

/// Asks random hosts for random keys until `stop`, checking no answer is
/// older than one answered before (see [`Queried`]). `lives[i]` counts
/// host i's kills.
async fn query_loop(
    urls: Vec<(String, String)>,
    lives: Arc<Vec<std::sync::atomic::AtomicU64>>,
    keys: u64,
    seed: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
    q: Arc<Mutex<Queried>>,
) -> Result<()> {
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::Ordering;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    while !stop.load(Ordering::SeqCst) {
        let asked = rng.random_range(0..urls.len());
        let key = format!("k{:05}", rng.random_range(0..keys));
        let (url, _) = &urls[asked];
        // Each host's life when asked: an answer comes from that life or
        // the request fails.
        let lives_then: Vec<u64> = lives.iter().map(|l| l.load(Ordering::SeqCst)).collect();
        let r = http.get(format!("{url}/async-process/{key}")).send().await;
        let Ok(r) = r else {
            q.lock().await.refused += 1;
            // As a client would: a moment before asking again.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let served_by = r
            .headers()
            .get("eddy-served-by")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = r.status().as_u16();
        if status == 404 {
            continue;
        }
        if status != 200 {
            q.lock().await.refused += 1;
            // As a client would: a moment before asking again.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let Ok(state) = r.json::<Value>().await else {
            q.lock().await.refused += 1;
            // As a client would: a moment before asking again.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let n = state["executions"].as_array().map_or(0, Vec::len) as u64;
        let server = match served_by {
            None => asked,
            Some(id) => urls
                .iter()
                .position(|(_, h)| *h == id)
                .with_context(|| format!("served by an unknown host {id:?}"))?,
        };
        let life = lives_then[server] as usize;
        let mut q = q.lock().await;
        q.answered += 1;
        match q.newest.get(&key).copied() {
            Some((was_server, was_life, was_n)) if n < was_n => {
                if lives[was_server].load(Ordering::SeqCst) as usize > was_life {
                    q.older_after_kill += 1;
                } else {
                    let msg = format!(
                        "key {key}: {} answered {n} executions after {} had answered {was_n}",
                        urls[server].1, urls[was_server].1
                    );
                    q.older.push(msg);
                }
            }
            Some((_, _, was_n)) if n == was_n => {}
            _ => {
                q.newest.insert(key, (server, life, n));
            }
        }
    }
    Ok(())
}

/// Three hosts; Confluent's producer streams while hosts are killed with
/// SIGKILL at random (a random host each time, down for a random moment,
/// restarted on its store) and a query loop asks random hosts for random
/// keys. Every event ends in its aggregate exactly once, no dead letters,
/// and no query answers a state older than one answered before — except
/// right after the host that answered the newer one was killed (the states
/// it had folded but whose changelog records the brokers had not
/// acknowledged are folded again by the next owner, to the same result).
/// The schedule comes from `EDDY_CHAOS_SEED`; CI runs 20,000 events and 4
/// kills, `scripts/chaos.sh` more.
#[tokio::test(flavor = "multi_thread")]
async fn hosts_killed_at_random_under_a_stream_and_queries_lose_nothing() -> Result<()> {
    use eddy_tests::chaos::{Chaos, env_u64};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let _one = ONE_AT_A_TIME.lock().await;
    let mut chaos = Chaos::from_env("cluster: 3 hosts, kill -9 at random", 20_000, 4)?;
    let events = chaos.events;
    // An AsyncProcess state keeps every execution: about 20 per key, as in
    // the single-host run, keeps states (and each change's cost) the same
    // size however long the run.
    let keys = (events / 20).clamp(KEYS, 50_000);
    let rate = env_u64("EDDY_CHAOS_RATE")?.unwrap_or(1_000).max(1);
    let broker = Broker::start()?;
    let mut hosts = Vec::new();
    for id in ["a", "b", "c"] {
        hosts.push(Host::start(&config(&broker, id, EAGER)?).await?);
    }
    settle(&broker, &hosts.iter().collect::<Vec<_>>()).await?;
    let ledger_dir = tempfile::tempdir()?;
    let ledger = ledger_dir.path().join("ledger.jsonl");
    let producer = broker.produce(INPUT, 0, events, keys, rate, &ledger)?;

    let lives: Arc<Vec<AtomicU64>> =
        Arc::new((0..hosts.len()).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let queried = Arc::new(Mutex::new(Queried::default()));
    let urls: Vec<(String, String)> = hosts.iter().map(|h| (h.url.clone(), host_id(h))).collect();
    let queries = tokio::spawn(query_loop(
        urls,
        lives.clone(),
        keys,
        chaos.seed,
        stop.clone(),
        queried.clone(),
    ));
    let start = Instant::now();
    let mut killed = Vec::new();
    for at_ms in chaos.schedule(events * 1_000 / rate) {
        if let Some(wait) = Duration::from_millis(at_ms).checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let i = usize::try_from(chaos.pick(0..hosts.len() as u64))?;
        lives[i].fetch_add(1, Ordering::SeqCst);
        killed.push(host_id(&hosts[i]));
        chaos.kill_and_restart(&mut hosts[i], 3_000).await?;
    }
    let summary = tokio::task::spawn_blocking(move || finish_producer(producer)).await??;
    ensure!(summary["acked"] == events, "producer: {summary}");
    let all: Vec<&Host> = hosts.iter().collect();
    settle(&broker, &all).await?;
    // Queries go on a moment after the group settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    queries.await??;

    let expected = expected_from_ledger(&read_ledger(&ledger)?);
    let checked = check_folds(&expected, &cluster_states(&all, &expected).await?)?;
    ensure!(
        checked as u64 == events,
        "{checked} of {events} events checked"
    );
    for h in &all {
        ensure!(
            !h.log().contains("panicked"),
            "{} panicked:\n{}",
            h.url,
            h.log()
        );
        let (_, dead) = h
            .get("/v1/pipelines/async-process/dead-letters?limit=10")
            .await?;
        let n = dead["dead_letters"].as_array().map_or(0, Vec::len);
        ensure!(n == 0, "{}: {n} dead letters: {dead}", h.url);
    }
    let q = queried.lock().await;
    ensure!(q.answered > 0, "no query was answered");
    ensure!(
        q.older.is_empty(),
        "{} answers older than one answered before: {:?}",
        q.older.len(),
        &q.older[..q.older.len().min(10)]
    );
    chaos.report(json!({
        "keys": keys,
        "acknowledged": events,
        "applied": checked,
        "lost": 0,
        "applied_twice": 0,
        "dead_letters": 0,
        "killed": killed,
        "queries_answered": q.answered,
        "queries_refused": q.refused,
        "answers_older_after_a_kill": q.older_after_kill,
        "answers_older_otherwise": 0,
    }))?;
    Ok(())
}

/// Timers move with their partition. The AsyncProcess aggregator's
/// timeout (a process left in STARTED becomes ERROR by a wall-clock timer)
/// on two hosts: the timers are set on both, one host is killed before
/// they fall due, the other restores its partitions — timers included —
/// and fires them; the killed host comes back while they fire (the eager
/// assignor then moves every partition, and fired timers not folded yet
/// fire again under the new owner epoch, once). Every process times out
/// exactly once, at its instant, whichever host holds it; the timer
/// records are gone from every host and the state changelog.
///
/// A schedule (every 500 ms, `missed = "run-once"`) runs meanwhile on the
/// owner of its key's partition, through the kill and the rejoin: its run
/// numbers follow each other with no gap, every run is folded once (the
/// probe's state holds each run's instant once), and its runs answer
/// from any host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_once_wherever_their_partition_moves() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    const KEYS: usize = 600;
    const TIMEOUT_MS: i64 = 20_000;
    const SPREAD_MS: i64 = 8_000;
    let broker = Broker::start()?;
    let probe = eddy_tests::test_component("sandbox-probe")?;
    let timed = |id: &str| -> Result<String> {
        let c = config(&broker, id, EAGER)?;
        ensure!(
            c.contains("memory_mb = 64\n"),
            "the example's plugins changed"
        );
        Ok(c.replacen(
            "memory_mb = 64\n",
            &format!(
                "memory_mb = 64\ngrants = {{ env = {{ ASYNC_PROCESS_TIMEOUT_MS = \"{TIMEOUT_MS}\" }} }}\n"
            ),
            1,
        ) + &format!(
            r#"
[[plugin]]
name = "probe"
path = {probe:?}
timeout_ms = 1000

[[pipeline]]
name = "ticks"
topic = "ticks-in"
key_field = "key"
aggregator = "probe"

[[schedule]]
name = "tick"
pipeline = "ticks"
key = "clock"
every_ms = 500
missed = "run-once"
"#,
            probe = probe.display().to_string()
        ))
    };
    let mut a = Host::start(&timed("a")?).await?;
    let mut b = Host::start(&timed("b")?).await?;
    settle(&broker, &[&a, &b]).await?;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    let t0 = now();
    let at = |i: usize| t0 + i as i64 * SPREAD_MS / KEYS as i64;
    let events: Vec<Value> = (0..KEYS)
        .map(|i| eddy_tests::execution(&format!("e{i}"), &format!("p{i:05}"), at(i), "STARTED"))
        .collect();
    for chunk in events.chunks(200) {
        let records: Vec<Value> = chunk.iter().map(|e| json!({ "value": e })).collect();
        a.produce(INPUT, &json!({ "records": records })).await?;
    }
    settle(&broker, &[&a, &b]).await?;
    // The host killed below (`a`) is the one the schedule runs on.
    let (_, v) = b.get("/v1/schedules").await?;
    ensure!(v["schedules"][0]["name"] == "tick", "{v}");
    if v["schedules"][0]["here"] == true {
        std::mem::swap(&mut a, &mut b);
    }
    let (_, v) = a.get("/v1/schedules").await?;
    ensure!(
        v["schedules"][0]["here"] == true,
        "tick runs on neither host: {v}"
    );
    // Both hosts hold timers; none is due yet.
    let sum = |text: &str, name: &str| -> Result<usize> {
        Ok(eddy_tests::samples(text, name)?
            .iter()
            .map(|(_, v)| v)
            .sum::<f64>() as usize)
    };
    let mut pending = 0;
    let mut on_b = 0;
    for h in [&a, &b] {
        let text = h.metrics().await?;
        let n = sum(&text, "eddy_timers_pending")?;
        ensure!(n > 0, "{} holds no timer:\n{text}", h.url);
        pending += n;
        on_b = n;
    }
    ensure!(
        pending == KEYS,
        "{pending} timers pending for {KEYS} processes"
    );
    ensure!(
        now() < t0 + TIMEOUT_MS,
        "the timers fell due before the test could kill a host"
    );
    a.kill9()?;
    // b takes a's partitions after the group's session timeout, restores
    // them from the state changelog and fires what falls due; a comes
    // back while they fire.
    let back_at = t0 + TIMEOUT_MS + SPREAD_MS / 2;
    tokio::time::sleep(Duration::from_millis((back_at - now()).max(0) as u64)).await;
    a.restart().await?;
    let deadline = Instant::now() + T;
    for i in 0..KEYS {
        let key = format!("p{i:05}");
        let h = if i % 2 == 0 { &a } else { &b };
        loop {
            let (status, v) = h
                .get(&format!("/v1/pipelines/async-process/state/{key}"))
                .await?;
            if status == 200 && v["state"] == "ERROR" {
                let timeouts = eddy_tests::timeouts(&v);
                ensure!(timeouts == 1, "{key}: {timeouts} timeouts: {v}");
                ensure!(
                    v["lastUpdate"].as_i64() == Some(at(i) + TIMEOUT_MS),
                    "{key}: timed out at another instant: {v}"
                );
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{key} never timed out: {status} {v}\n--- a ---\n{}\n--- b ---\n{}",
                plain(&a.log()),
                plain(&b.log())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    settle(&broker, &[&a, &b]).await?;
    // b fired timers that were set on a (it never restarted: its counter
    // holds all it fired).
    let fired_on_b = sum(&b.metrics().await?, "eddy_timers_fired_total")?;
    ensure!(
        fired_on_b > on_b,
        "b fired {fired_on_b} timers, no more than the {on_b} set on it"
    );
    // Nothing is pending anywhere, and a key's timers answer from any host.
    for h in [&a, &b] {
        let text = h.metrics().await?;
        let n = sum(&text, "eddy_timers_pending")?;
        ensure!(n == 0, "{}: {n} timers still pending", h.url);
        let (status, v) = h.get("/v1/pipelines/async-process/timers/p00001").await?;
        ensure!(status == 200 && v == json!([]), "{}: {status} {v}", h.url);
        ensure!(!h.log().contains("panicked"), "{} panicked", h.url);
    }
    // The state changelog's last word on every timer is its removal.
    let mut last: HashMap<String, bool> = HashMap::new();
    for r in broker.dump(STATE_CHANGELOG)? {
        let key = r["key"].as_str().unwrap_or_default();
        if key.starts_with("\u{0}eddy-timer/") {
            let removed = r["headers"]["eddy-tombstone"].is_string();
            last.insert(key.to_owned(), removed);
        }
    }
    ensure!(
        last.len() == KEYS,
        "{} timers in the state changelog",
        last.len()
    );
    let left: Vec<&String> = last.iter().filter(|(_, r)| !**r).map(|(k, _)| k).collect();
    ensure!(
        left.is_empty(),
        "timers left set in the changelog: {left:?}"
    );

    // The schedule: runs 1..n, each folded once, asked of either host.
    for h in [&a, &b] {
        let (status, v) = h.get("/v1/schedules/tick/runs?limit=1000").await?;
        ensure!(status == 200, "{}: runs {status} {v}", h.url);
        let runs = v["runs"].as_array().cloned().unwrap_or_default();
        let numbers: Vec<u64> = runs
            .iter()
            .rev()
            .filter_map(|r| r["run"].as_u64())
            .collect();
        ensure!(
            numbers.len() > 20 && numbers == (1..=numbers.len() as u64).collect::<Vec<_>>(),
            "{}: run numbers {numbers:?}",
            h.url
        );
        let mut instants: Vec<i64> = Vec::new();
        for r in &runs {
            match r["outcome"].as_str() {
                Some("ok") => instants.push(r["scheduled_ms"].as_i64().unwrap_or_default()),
                // The last one may be folding as we ask.
                Some("running") if r == &runs[0] => {}
                _ => bail!("{}: a run that did not end well: {r}", h.url),
            }
        }
        instants.sort_unstable();
        let (status, state) = h.get("/v1/pipelines/ticks/state/clock").await?;
        ensure!(status == 200, "{}: clock {status} {state}", h.url);
        let mut ticks: Vec<i64> = state["ticks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str()?.strip_prefix("schedule:tick@")?.parse().ok())
            .collect();
        ticks.sort_unstable();
        let mut once = ticks.clone();
        once.dedup();
        ensure!(once == ticks, "{}: a run folded twice: {ticks:?}", h.url);
        ensure!(
            instants.iter().all(|i| ticks.contains(i)),
            "{}: runs {instants:?} not all in the state's ticks {ticks:?}",
            h.url
        );
    }
    println!(
        "{KEYS} timers across a kill and a rejoin: each fired once ({fired_on_b} fired on b, {on_b} set there)"
    );
    Ok(())
}
