//! Schedules (`[[schedule]]`): a cron expression and fixed intervals drive
//! a pipeline (the sandbox probe records each run it folds as
//! `schedule:{name}@{instant}`). Runs come at their instants, each once; each
//! run is recorded (start, end, outcome) and served over HTTP; a failing
//! run is a dead letter and a metric; runs missed while the host was down
//! follow each schedule's policy; a bad cron expression is refused at start
//! naming the schedule and the value.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use eddy_tests::{Host, plugin, run_until_exit, samples, test_component};
use serde_json::Value;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn config(schedules: &str) -> Result<String> {
    let probe = test_component("sandbox-probe")?;
    let router = plugin("rejected-process-router")?;
    Ok(format!(
        r#"
[source]
kind = "embedded"
[[source.topics]]
name = "ticks-in"
partitions = 1

[[plugin]]
name = "probe"
path = "{probe}"
timeout_ms = 1000

[[pipeline]]
name = "ticks"
topic = "ticks-in"
key_field = "key"
aggregator = "probe"

# A pipeline of handlers only: they get its schedules' runs.
[[source.topics]]
name = "routed-in"
partitions = 1

[[plugin]]
name = "router"
path = "{router}"

[[pipeline]]
name = "routed"
topic = "routed-in"
handlers = ["router"]
{schedules}
"#,
        probe = probe.display(),
        router = router.display()
    ))
}

/// The instants of the runs of `schedule` that `key`'s state holds.
async fn ticks(host: &Host, key: &str, schedule: &str) -> Result<Vec<i64>> {
    let (status, v) = host
        .get(&format!("/v1/pipelines/ticks/state/{key}"))
        .await?;
    if status == 404 {
        return Ok(Vec::new());
    }
    let prefix = format!("schedule:{schedule}@");
    Ok(v["ticks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str()?.strip_prefix(&prefix)?.parse().ok())
        .collect())
}

async fn runs(host: &Host, schedule: &str) -> Result<Vec<Value>> {
    let (status, v) = host
        .get(&format!("/v1/schedules/{schedule}/runs?limit=1000"))
        .await?;
    ensure!(status == 200, "{status} {v}");
    Ok(v["runs"].as_array().cloned().unwrap_or_default())
}

async fn wait_ticks(host: &Host, key: &str, schedule: &str, n: usize) -> Result<Vec<i64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = ticks(host, key, schedule).await?;
        if t.len() >= n {
            return Ok(t);
        }
        ensure!(
            Instant::now() < deadline,
            "{schedule}: {} runs of {n}\n{}",
            t.len(),
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_and_interval_schedules_run_at_their_instants_and_record_each_run() -> Result<()> {
    let host = Host::start(&config(
        r#"
[[schedule]]
name = "second"
pipeline = "ticks"
cron = "* * * * * *"
key = "clock"

[[schedule]]
name = "fast"
pipeline = "ticks"
every_ms = 300
key = "fast"

[[schedule]]
name = "failing"
pipeline = "ticks"
every_ms = 500
key = "boom"
payload = { fail = true }

[[schedule]]
name = "handled"
pipeline = "routed"
every_ms = 400
"#,
    )?)
    .await?;
    let started = now_ms();
    let second = wait_ticks(&host, "clock", "second", 3).await?;
    let fast = wait_ticks(&host, "fast", "fast", 6).await?;
    // Every whole second, one after the other, none twice, none before the start.
    ensure!(
        second
            .iter()
            .all(|t| t % 1_000 == 0 && *t > started - 1_000),
        "{second:?}"
    );
    ensure!(
        second.windows(2).all(|w| w[1] - w[0] == 1_000),
        "cron runs skipped or repeated: {second:?}"
    );
    // Every 300 ms from the first start (a busy worker makes one run of
    // several instants: still on the grid, never twice).
    ensure!(
        fast.windows(2)
            .all(|w| w[1] > w[0] && (w[1] - w[0]) % 300 == 0),
        "{fast:?}"
    );
    // Each run folded is recorded: scheduled, started, ended, ok.
    let recorded = runs(&host, "second").await?;
    for t in &second {
        let run = recorded
            .iter()
            .find(|r| r["scheduled_ms"] == *t)
            .cloned()
            .unwrap_or_default();
        let (start, end) = (
            run["started_ms"].as_i64().unwrap_or_default(),
            run["ended_ms"].as_i64().unwrap_or_default(),
        );
        ensure!(
            run["outcome"] == "ok" && start >= *t && end >= start,
            "run at {t}: {run}"
        );
    }
    // A failing run: a dead letter, its record and the metric say so.
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let r = runs(&host, "failing").await?;
        if let Some(f) = r.iter().find(|r| r["outcome"] == "dead_letter") {
            break f.clone();
        }
        ensure!(Instant::now() < deadline, "no failed run: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        failed["error_class"] == "invalid"
            && failed["error"]
                .as_str()
                .is_some_and(|e| e.contains("fails on purpose")),
        "{failed}"
    );
    let (_, dls) = host
        .get("/v1/pipelines/ticks/dead-letters?key=boom")
        .await?;
    ensure!(
        dls["dead_letters"]
            .as_array()
            .is_some_and(|d| !d.is_empty() && d.iter().all(|d| d["error_class"] == "invalid")),
        "{dls}"
    );
    let text = host.metrics().await?;
    let count = |schedule: &str, outcome: &str| -> Result<f64> {
        Ok(samples(&text, "eddy_schedule_runs_total")?
            .iter()
            .filter(|(l, _)| {
                l.contains(&format!("schedule=\"{schedule}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .map(|(_, v)| v)
            .sum())
    };
    ensure!(count("failing", "dead_letter")? >= 1.0, "{text}");
    ensure!(count("second", "ok")? >= 3.0, "{text}");
    // The list: every schedule with its next instant, after now.
    let (_, list) = host.get("/v1/schedules").await?;
    let now = now_ms();
    let listed = list["schedules"].as_array().cloned().unwrap_or_default();
    ensure!(listed.len() == 4, "{list}");
    // The handler pipeline's runs went through its handlers and commits.
    let handled = runs(&host, "handled").await?;
    ensure!(
        handled
            .iter()
            .any(|r| r["outcome"] == "ok" && r["ended_ms"].as_i64().is_some()),
        "{handled:?}"
    );
    ensure!(
        listed
            .iter()
            .all(|s| s["next_ms"].as_i64().is_some_and(|n| n > now - 1_000)
                && s["last_run"].is_object()),
        "{list}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_missed_while_the_host_was_down_follow_each_schedules_policy() -> Result<()> {
    let mut host = Host::start(&config(
        r#"
[[schedule]]
name = "skip"
pipeline = "ticks"
every_ms = 400
key = "s"

[[schedule]]
name = "once"
pipeline = "ticks"
every_ms = 400
key = "o"
missed = "run-once"
"#,
    )?)
    .await?;
    wait_ticks(&host, "s", "skip", 2).await?;
    wait_ticks(&host, "o", "once", 2).await?;
    let before = (
        ticks(&host, "s", "skip").await?.len(),
        ticks(&host, "o", "once").await?.len(),
    );
    host.terminate()?;
    let stopped = now_ms();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    host.restart().await?;
    let restarted = now_ms();
    // Both go on; then compare what ran for the instants of the downtime.
    wait_ticks(&host, "s", "skip", before.0 + 2).await?;
    let once = wait_ticks(&host, "o", "once", before.1 + 2).await?;
    let skip = ticks(&host, "s", "skip").await?;
    let down = |t: &&i64| **t > stopped + 400 && **t < restarted - 400;
    ensure!(
        !skip.iter().any(|t| down(&t)),
        "skip ran a missed instant: {skip:?} (down {stopped}..{restarted})"
    );
    let made_up: Vec<i64> = once.iter().filter(down).copied().collect();
    // Instants while it was down; the host runs on its own a little before
    // the test sees it ready, so an instant within one period of
    // `restarted` may be a regular run, not a make-up one.
    let in_downtime: Vec<i64> = once
        .iter()
        .filter(|t| **t > stopped && **t < restarted)
        .copied()
        .collect();
    let surely_missed = in_downtime.iter().filter(|t| **t < restarted - 400).count();
    ensure!(
        made_up.len() <= 1 && !in_downtime.is_empty() && surely_missed <= 1,
        "run-once must run one missed instant: {once:?} (down {stopped}..{restarted})"
    );
    ensure!(once.windows(2).all(|w| w[1] > w[0]), "{once:?}");
    // The records: a skipped run naming how many, a make-up run naming
    // how many it covered.
    let skipped = runs(&host, "skip").await?;
    let record = skipped
        .iter()
        .find(|r| r["outcome"] == "skipped")
        .cloned()
        .unwrap_or_default();
    ensure!(
        record["missed"].as_u64().is_some_and(|n| n >= 3),
        "{skipped:?}"
    );
    let covering = runs(&host, "once").await?;
    ensure!(
        covering
            .iter()
            .any(|r| r["outcome"] == "ok" && r["skipped"].as_u64().is_some_and(|n| n >= 2)),
        "{covering:?}"
    );
    Ok(())
}

#[test]
fn a_bad_cron_expression_is_refused_naming_the_schedule_and_the_value() -> Result<()> {
    let (status, log) = run_until_exit(
        &config(
            r#"
[[schedule]]
name = "nightly"
pipeline = "ticks"
cron = "61 * * * * *"
"#,
        )?,
        Duration::from_secs(60),
    )?;
    ensure!(!status.success(), "{log}");
    ensure!(
        log.contains("schedule \"nightly\"") && log.contains("\"61 * * * * *\""),
        "{log}"
    );
    Ok(())
}
