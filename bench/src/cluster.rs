//! `eddy-bench cluster`: what cluster mode costs and how fast state moves.
//!
//! On one tansu broker and one filled topic, in one run:
//! 1. the per-host cost of cluster mode: one host folds the whole topic
//!    without `[cluster]`, then without it but with a user-facing
//!    `changelog_topic` (the same second write of each change), then one
//!    host with `[cluster]` (every change goes to the state changelog),
//!    each in its own group;
//! 2. the restore rate: the cluster host stops gracefully and a host with
//!    an empty store takes every partition, restoring each from the state
//!    changelog (states/s and changelog records/s, from its assignment to
//!    its last partition restored);
//! 3. a join: a second host with an empty store takes its share;
//! 4. a failover: the first of the two is killed (SIGKILL) and the time is
//!    measured until the survivor owns every partition, restored, and
//!    answers queries for all of them (the group's session timeout is part
//!    of it, and reported beside it).

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value is indexed: reading yields Null"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use eddy_bench::process::{EddyProcess, commit_rate, write_results};
use eddy_bench::workload;
use serde_json::Value;

use crate::kafka::{Broker, fill};

/// Scenario settings.
pub struct Settings {
    /// The eddy binary.
    pub eddy: PathBuf,
    /// The tansu binary.
    pub tansu: PathBuf,
    /// The AsyncProcess aggregator component.
    pub component: PathBuf,
    /// Events in the topic.
    pub events: u64,
    /// Distinct keys (each has a state at the end).
    pub keys: u64,
    /// Partitions of the topic.
    pub partitions: u32,
    /// The group's `session.timeout.ms`: how long a killed host keeps its
    /// partitions.
    pub session_timeout_ms: u64,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

const TOPIC: &str = "async-process-execution";
const LOG: &str = "warn,eddy::pipeline=debug,eddy::source=info";

/// A user-facing changelog topic for the second single-host run.
const CHANGES: &str = "p-changes";

fn config(
    s: &Settings,
    brokers: &str,
    group: &str,
    host: Option<&str>,
    changelog: bool,
) -> Result<String> {
    let changelog = if changelog {
        format!("changelog_topic = \"{CHANGES}\"\n")
    } else {
        String::new()
    };
    let cluster = host.map_or_else(String::new, |h| format!("[cluster]\nhost_id = \"{h}\"\n\n"));
    Ok(format!(
        "[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ngroup_id = \"{group}\"\n\n\
         [source.properties]\n\"session.timeout.ms\" = \"{}\"\n\"heartbeat.interval.ms\" = \"{}\"\n\n\
         {cluster}\
         [http]\nwatch_plugins = false\n\n\
         [[plugin]]\nname = \"agg\"\npath = {:?}\n\n\
         [[pipeline]]\nname = \"p\"\ntopic = \"{TOPIC}\"\nkey_field = \"asyncProcessId\"\naggregator = \"agg\"\n{changelog}",
        s.session_timeout_ms,
        (s.session_timeout_ms / 6).max(100),
        std::path::absolute(&s.component)?.display().to_string()
    ))
}

/// One "partition restored" line of a host's log.
struct Restored {
    partition: u64,
    records: u64,
    /// From the partition's assignment to its restore's end.
    ms: u64,
    mode: String,
}

fn restored(host: &EddyProcess) -> Result<Vec<Restored>> {
    let text = std::fs::read_to_string(&host.log)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "partition restored")
        .map(|v| {
            let f = &v;
            Restored {
                partition: f["partition"].as_u64().unwrap_or(0),
                records: f["records"].as_u64().unwrap_or(0),
                ms: f["ms"].as_u64().unwrap_or(0),
                mode: f["mode"]
                    .as_str()
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_owned(),
            }
        })
        .collect())
}

/// Seconds since midnight (UTC) of an RFC 3339 time stamp
/// (`2026-12-03T05:45:25.658796Z`).
fn secs_of_day(stamp: &str) -> Option<f64> {
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn secs_of_day_now() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs_f64().rem_euclid(86_400.0)
}

/// When each "partitions assigned" line of a host's log was written
/// (seconds of the day).
fn assignments(host: &EddyProcess) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(&host.log)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "partitions assigned")
        .filter_map(|v| secs_of_day(v["timestamp"].as_str()?))
        .collect())
}

/// The host's own view: partitions of `p` it owns and restores.
fn owned(host: &EddyProcess) -> Result<(usize, usize)> {
    let text = host
        .agent
        .get(format!("{}/v1/cluster", host.base))
        .call()?
        .body_mut()
        .read_to_string()?;
    let v: Value = serde_json::from_str(&text)?;
    let p = &v["pipelines"]["p"];
    let n = |k: &str| p[k].as_array().map_or(0, Vec::len);
    Ok((n("owned"), n("restoring")))
}

/// Waits until `host` owns `partitions` partitions, none restoring; when.
fn wait_owning(host: &EddyProcess, partitions: usize, within: Duration) -> Result<Instant> {
    let t = Instant::now();
    loop {
        if let Ok((owned, 0)) = owned(host)
            && owned == partitions
        {
            return Ok(Instant::now());
        }
        ensure!(
            t.elapsed() < within,
            "host at {} did not own {partitions} restored partitions within {within:?}; log in {}",
            host.base,
            host.log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `b` and `c` share the `partitions` between them, each with
/// some, none restoring.
fn wait_split(b: &EddyProcess, c: &EddyProcess, partitions: usize, within: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        if let (Ok((bo, 0)), Ok((co, 0))) = (owned(b), owned(c))
            && bo + co == partitions
            && bo > 0
            && co > 0
        {
            return Ok(());
        }
        ensure!(
            t.elapsed() < within,
            "the two hosts did not share the partitions within {within:?}; logs in {} and {}",
            b.log.display(),
            c.log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether every key answers 200 on `host` (asked one per partition's worth
/// of keys, a sample of `sample`).
fn answers(host: &EddyProcess, keys: u64, sample: u64) -> Result<bool> {
    for i in 0..sample {
        let key = workload::key(i * (keys / sample).max(1), keys);
        let r = host
            .agent
            .get(format!("{}/v1/pipelines/p/state/{key}", host.base))
            .call()
            .context("GET a state")?;
        if r.status() != 200 {
            return Ok(false);
        }
    }
    Ok(true)
}

fn start(
    s: &Settings,
    dir: &Path,
    brokers: &str,
    group: &str,
    host: Option<&str>,
) -> Result<EddyProcess> {
    let changelog = group == "bench-changelog";
    let name = host.unwrap_or(if changelog { "changelog" } else { "plain" });
    EddyProcess::start(
        &s.eddy,
        &dir.join(name),
        &config(s, brokers, group, host, changelog)?,
        LOG,
    )
}

/// Runs the scenario and prints the tables.
pub fn run(s: &Settings) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("eddy-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let broker = Broker::start(&s.tansu, &dir)?;
    let brokers = broker.brokers.clone();
    broker.create_topic(TOPIC, s.partitions, &[])?;
    broker.create_topic(CHANGES, s.partitions, &[])?;
    fill(&brokers, TOPIC, s.events, s.keys)?;
    let all = s.partitions as usize;
    let within = Duration::from_secs(600);

    // 1. Per-host cost.
    let mut plain = start(s, &dir, &brokers, "bench-plain", None)?;
    let plain_rate = commit_rate(&plain.wait_committed(s.events, within)?);
    plain.terminate()?;
    let mut with_changelog = start(s, &dir, &brokers, "bench-changelog", None)?;
    let changelog_rate = commit_rate(&with_changelog.wait_committed(s.events, within)?);
    with_changelog.terminate()?;
    let mut a = start(s, &dir, &brokers, "bench-cluster", Some("a"))?;
    let cluster_rate = commit_rate(&a.wait_committed(s.events, within)?);
    // Its changelog delivered before it lets go: a graceful stop.
    a.terminate()?;

    // 2. Restore on an empty store.
    let b = start(s, &dir, &brokers, "bench-cluster", Some("b"))?;
    wait_owning(&b, all, within)?;
    let full = restored(&b)?;
    ensure!(
        full.len() == all && full.iter().all(|r| r.mode == "start"),
        "b restored {} partitions ({:?}); log in {}",
        full.len(),
        full.iter()
            .map(|r| (r.partition, r.mode.clone()))
            .collect::<Vec<_>>(),
        b.log.display()
    );
    let records: u64 = full.iter().map(|r| r.records).sum();
    let restore_ms = full.iter().map(|r| r.ms).max().unwrap_or(0).max(1);
    ensure!(
        answers(&b, s.keys, 200)?,
        "b does not answer for every key after its restore"
    );
    let states_per_s = s.keys as f64 * 1000.0 / restore_ms as f64;
    let records_per_s = records as f64 * 1000.0 / restore_ms as f64;

    // 3. A join: c takes its share.
    let joined_at = Instant::now();
    let mut c = start(s, &dir, &brokers, "bench-cluster", Some("c"))?;
    wait_split(&b, &c, all, within)?;
    let join_ms = joined_at.elapsed().as_millis() as u64;
    let join_records: u64 = restored(&c)?.iter().map(|r| r.records).sum();

    // 4. Failover: b dies; c takes everything.
    let mut b = b;
    let before = restored(&c)?.len();
    let assigned_before = assignments(&c)?.len();
    let killed_wall = secs_of_day_now();
    let killed_at = Instant::now();
    b.kill();
    let served_at = wait_owning(&c, all, within)?;
    let failover_ms = served_at.duration_since(killed_at).as_millis() as u64;
    ensure!(
        answers(&c, s.keys, 200)?,
        "c does not answer for every key after b's death"
    );
    let after: Vec<Restored> = restored(&c)?.into_iter().skip(before).collect();
    let taken: Vec<&Restored> = after.iter().filter(|r| r.mode == "start").collect();
    let kept = after.len() - taken.len();
    // When the group gave c b's partitions: the detection part of it.
    let detect_ms = assignments(&c)?
        .get(assigned_before)
        .map(|at| ((at - killed_wall).rem_euclid(86_400.0) * 1000.0) as u64);
    c.terminate()?;

    println!(
        "| cluster mode ({} events, {} keys, {} partitions) | figure |",
        s.events, s.keys, s.partitions
    );
    println!("|---|---:|");
    println!("| one host without `[cluster]` | {plain_rate:.0} events/s |");
    println!(
        "| one host without `[cluster]`, each change to a `changelog_topic` | {changelog_rate:.0} events/s ({:.2}×) |",
        changelog_rate / plain_rate.max(1.0)
    );
    println!(
        "| one host with `[cluster]` (state changelog written) | {cluster_rate:.0} events/s ({:.2}×) |",
        cluster_rate / plain_rate.max(1.0)
    );
    println!(
        "| restore of every partition on an empty store | {states_per_s:.0} states/s, {records_per_s:.0} changelog records/s ({records} records, {restore_ms} ms) |"
    );
    println!(
        "| a host joins with an empty store: start to serving its share | {join_ms} ms ({join_records} records restored) |"
    );
    println!(
        "| kill -9 of a host → the other serves every partition | {failover_ms} ms: the group reassigned after {} ms (session timeout {} ms), then {} partitions restored from the start ({} records) and {kept} kept from its checkpoint |",
        detect_ms.map_or_else(|| "?".into(), |d| d.to_string()),
        s.session_timeout_ms,
        taken.len(),
        taken.iter().map(|r| r.records).sum::<u64>()
    );
    write_results(
        &s.out,
        &serde_json::json!({
            "events": s.events, "keys": s.keys, "partitions": s.partitions,
            "plain_events_per_s": plain_rate,
            "changelog_events_per_s": changelog_rate,
            "cluster_events_per_s": cluster_rate,
            "cluster_ratio": cluster_rate / plain_rate.max(1.0),
            "restore_states_per_s": states_per_s,
            "restore_records_per_s": records_per_s,
            "restore_records": records,
            "restore_ms": restore_ms,
            "join_ms": join_ms,
            "failover_ms": failover_ms,
            "failover_reassigned_ms": detect_ms,
            "session_timeout_ms": s.session_timeout_ms,
        }),
    )?;
    drop(broker);
    if std::env::var_os("EDDY_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
