//! Schedules (`[[schedule]]`): a pipeline triggered on a cron expression or
//! an interval, run by its own worker.
//!
//! A run is a fired timer named `schedule:{name}` on the schedule's key: the
//! worker appends it to the pipeline's timer topic in the same atomic write
//! that records the run (`running`) and moves the schedule's mark on, and
//! folds it like any fired timer (the aggregator's `on-timer`; without an
//! aggregator, the handlers get it as an event). The commit of that fold
//! records the run's end and outcome (`ok`, `dead_letter` with the error,
//! or `held` behind a quarantined key). So each instant runs at most once,
//! and a run whose host dies is folded after the restart.
//!
//! Instants the host was down for follow the schedule's `missed` policy:
//! `skip` records one `skipped` run naming how many; `run-once` runs once,
//! at start, for the last of them. While the host is up but busy past
//! several instants, one run covers them (its record says how many it
//! skipped).

use crate::config::{Cadence, Missed, ScheduleConfig};
use crate::sink::ProduceRecord;
use crate::store::{ScheduleMark, Store, StoreError};

use super::dead_letter::DeadLetter;
use super::intake::Item;
use super::timers::TIMER_HEADER;

/// On a schedule's run record in the timer topic: the schedule's name.
pub const SCHEDULE_HEADER: &str = "eddy-schedule";
/// On a schedule's run record: the run number.
pub const RUN_HEADER: &str = "eddy-run";

/// Instants counted at most when working out what was missed.
const MISSED_CAP: usize = 1_000_000;

struct Scheduled {
    config: ScheduleConfig,
    cadence: Cadence,
    mark: ScheduleMark,
    /// The next instant to run, `None` when the cron expression has none
    /// (or the schedule is not this host's).
    next_ms: Option<i64>,
    /// Instants skipped before `next_ms` that its run makes up for.
    made_up: usize,
    /// Cluster mode: the owner epoch of the key's partition it was started
    /// under (`None`: not this host's). Without a cluster, `Some(0)`.
    epoch: Option<u64>,
}

/// A run a batch finished, for the state changelog (cluster mode): the
/// schedule's mark as of that run, and the run's record.
#[derive(Debug, Clone)]
pub struct RunChange {
    /// The schedule.
    pub name: String,
    /// Its key (whose partition carries it).
    pub key: String,
    /// The run number.
    pub run: u64,
    /// The run's record (JSON).
    pub record: String,
    /// The schedule's mark once this run is folded.
    pub mark: ScheduleMark,
}

/// On a state changelog record (cluster mode): the schedule whose mark it is.
pub const MARK_CHANGELOG_HEADER: &str = "eddy-schedule-mark";
/// On a state changelog record (cluster mode): the schedule whose run
/// record it is (the run number in [`RUN_HEADER`]).
pub const RUN_CHANGELOG_HEADER: &str = "eddy-schedule-run";

/// A run's records in its partition's state changelog: the schedule's
/// mark (key `\0eddy-schedule/{name}`), the run's record (key
/// `\0eddy-schedule/{name}/{run}`) and the removal of the run that falls
/// out of the last [`crate::store::RUNS_KEPT`].
pub fn changelog_records(
    pipeline: &str,
    place: super::outputs::ChangelogPlace,
    c: &RunChange,
) -> Vec<ProduceRecord> {
    let name = &c.name;
    let record = |key: String, headers: Vec<(String, Vec<u8>)>, value: Vec<u8>| {
        let mut all = place.headers(format!(
            "{pipeline}/{}/schedules/{name}/{}/{key}",
            place.partition, c.run
        ));
        all.extend(headers);
        ProduceRecord {
            timestamp_ms: None,
            partition: Some(place.partition),
            key: Some(key.into_bytes()),
            headers: all,
            value,
        }
    };
    let mark = serde_json::json!({
        "origin_ms": c.mark.origin_ms,
        "last_ms": c.mark.last_ms,
        "last_run": c.mark.last_run,
    });
    let run_headers = |run: u64| {
        vec![
            (RUN_CHANGELOG_HEADER.to_owned(), name.as_bytes().to_vec()),
            (RUN_HEADER.to_owned(), run.to_string().into_bytes()),
        ]
    };
    let mut out = vec![
        record(
            format!("\u{0}eddy-schedule/{name}/{}", c.run),
            run_headers(c.run),
            c.record.as_bytes().to_vec(),
        ),
        record(
            format!("\u{0}eddy-schedule/{name}"),
            vec![(MARK_CHANGELOG_HEADER.to_owned(), name.as_bytes().to_vec())],
            mark.to_string().into_bytes(),
        ),
    ];
    if let Some(old) = c.run.checked_sub(crate::store::RUNS_KEPT) {
        let mut headers = run_headers(old);
        headers.push((super::TOMBSTONE_HEADER.to_owned(), b"1".to_vec()));
        out.push(record(
            format!("\u{0}eddy-schedule/{name}/{old}"),
            headers,
            Vec::new(),
        ));
    }
    out
}

/// A schedule's mark as its changelog record carries it.
///
/// # Errors
/// A value that is not the JSON [`changelog_records`] writes.
pub fn mark_from_changelog(value: &[u8]) -> Result<ScheduleMark, String> {
    #[derive(serde::Deserialize)]
    struct Wire {
        origin_ms: i64,
        last_ms: i64,
        last_run: u64,
    }
    let w: Wire = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    Ok(ScheduleMark {
        origin_ms: w.origin_ms,
        last_ms: w.last_ms,
        last_run: w.last_run,
    })
}

/// What a round of the scheduler writes: run records appended to the timer
/// topic, marks and run records.
#[derive(Default)]
pub struct Due {
    /// Records for the timer topic.
    pub records: Vec<ProduceRecord>,
    /// New marks.
    pub marks: Vec<(String, ScheduleMark)>,
    /// New run records.
    pub runs: Vec<(String, u64, String)>,
}

impl Due {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty() && self.runs.is_empty()
    }
}

/// A pipeline's schedules.
pub struct Scheduler {
    pipeline: String,
    schedules: Vec<Scheduled>,
    /// Cluster mode: a schedule's stored mark moves when a run is folded
    /// (with the state changelog), not when it starts.
    cluster: bool,
}

fn record(fields: serde_json::Value) -> String {
    fields.to_string()
}

/// Sets `field` of a JSON object (nothing when `v` is not one).
fn set(v: &mut serde_json::Value, field: &str, value: serde_json::Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert(field.to_owned(), value);
    }
}

impl Scheduled {
    /// Starts from the stored mark at `now_ms`: a first mark, or the
    /// instants missed since the mark, per the `missed` policy.
    fn start(
        &mut self,
        store: &Store,
        pipeline: &str,
        now_ms: i64,
        due: &mut Due,
    ) -> Result<(), StoreError> {
        let name = self.config.name.clone();
        let cadence = &self.cadence;
        let (mark, next_ms, made_up) = match store.schedule_mark(pipeline, &name)? {
            None => {
                let mark = ScheduleMark {
                    origin_ms: now_ms,
                    last_ms: now_ms,
                    last_run: 0,
                };
                due.marks.push((name.clone(), mark));
                (mark, cadence.next_after(now_ms, now_ms), 0)
            }
            Some(mut mark) => {
                let (missed, first, last) =
                    cadence.between(mark.last_ms, now_ms, mark.origin_ms, MISSED_CAP);
                match (missed, last, self.config.missed) {
                    (0, _, _) | (_, None, _) => {
                        (mark, cadence.next_after(now_ms, mark.origin_ms), 0)
                    }
                    (_, Some(last), Missed::RunOnce) => (mark, Some(last), missed - 1),
                    (_, Some(last), Missed::Skip) => {
                        mark.last_run += 1;
                        mark.last_ms = last;
                        due.runs.push((
                            name.clone(),
                            mark.last_run,
                            record(serde_json::json!({
                                "run": mark.last_run,
                                "outcome": "skipped",
                                "missed": missed,
                                "first_missed_ms": first,
                                "last_missed_ms": last,
                                "recorded_ms": now_ms,
                            })),
                        ));
                        due.marks.push((name.clone(), mark));
                        crate::telemetry::schedule_run(pipeline, &name, "skipped");
                        tracing::warn!(pipeline, schedule = %name, missed, "runs missed while the host was down were skipped (missed = \"skip\")");
                        (mark, cadence.next_after(now_ms, mark.origin_ms), 0)
                    }
                }
            }
        };
        self.mark = mark;
        self.next_ms = next_ms;
        self.made_up = made_up;
        Ok(())
    }
}

impl Scheduler {
    /// The schedules of `pipeline` as the store left them at `now_ms`, and
    /// what starting them writes (first marks, skipped runs). In cluster
    /// mode (`cluster`) none is started yet: [`Scheduler::reconcile`]
    /// starts each on the host that owns its key's partition.
    ///
    /// # Errors
    /// A store failure, or a schedule whose cadence does not parse.
    pub fn open(
        store: &Store,
        pipeline: &str,
        configs: Vec<ScheduleConfig>,
        (now_ms, cluster): (i64, bool),
    ) -> anyhow::Result<(Self, Due)> {
        let mut due = Due::default();
        let mut schedules = Vec::new();
        for config in configs {
            let cadence = config.cadence().map_err(|e| anyhow::anyhow!(e))?;
            let mut s = Scheduled {
                config,
                cadence,
                mark: ScheduleMark {
                    origin_ms: now_ms,
                    last_ms: now_ms,
                    last_run: 0,
                },
                next_ms: None,
                made_up: 0,
                epoch: None,
            };
            if !cluster {
                s.start(store, pipeline, now_ms, &mut due)?;
                s.epoch = Some(0);
            }
            schedules.push(s);
        }
        Ok((
            Scheduler {
                pipeline: pipeline.to_owned(),
                schedules,
                cluster,
            },
            due,
        ))
    }

    /// Cluster mode: starts the schedules whose key's partition this host
    /// now owns (under another epoch than they were started under) from
    /// the mark of their last run folded, by whichever host — the instants
    /// since then follow the `missed` policy, a run another owner started
    /// but did not fold included — and stops the others. Returns what
    /// starting writes.
    ///
    /// # Errors
    /// A store failure.
    pub fn reconcile(
        &mut self,
        store: &Store,
        now_ms: i64,
        epoch_of: impl Fn(&str) -> Option<u64>,
    ) -> Result<Due, StoreError> {
        let mut due = Due::default();
        for s in &mut self.schedules {
            let epoch = epoch_of(s.config.key());
            if epoch == s.epoch {
                continue;
            }
            s.epoch = epoch;
            s.next_ms = None;
            s.made_up = 0;
            if epoch.is_some() {
                s.start(store, &self.pipeline, now_ms, &mut due)?;
                // Runs recorded here past the mark never finished here.
                store.drop_schedule_runs_after(&self.pipeline, &s.config.name, s.mark.last_run)?;
                tracing::info!(
                    pipeline = %self.pipeline, schedule = %s.config.name, last_run = s.mark.last_run,
                    next_ms = s.next_ms, "schedule started on this host (it owns the key's partition)"
                );
            }
        }
        Ok(due)
    }

    /// Whether there are no schedules.
    pub fn is_empty(&self) -> bool {
        self.schedules.is_empty()
    }

    /// The runs `runs` (finished by a batch) as changes for the state
    /// changelog: each with its schedule's key and mark as of that run.
    pub fn changes(&self, runs: &[(String, u64, String)]) -> Vec<RunChange> {
        runs.iter()
            .filter_map(|(name, run, record)| {
                let s = self.schedules.iter().find(|s| s.config.name == *name)?;
                let at = serde_json::from_str::<serde_json::Value>(record)
                    .ok()
                    .and_then(|v| v.get("scheduled_ms").and_then(serde_json::Value::as_i64))
                    .unwrap_or(s.mark.last_ms);
                Some(RunChange {
                    name: name.clone(),
                    key: s.config.key().to_owned(),
                    run: *run,
                    record: record.clone(),
                    mark: ScheduleMark {
                        origin_ms: s.mark.origin_ms,
                        last_ms: at,
                        last_run: *run,
                    },
                })
            })
            .collect()
    }

    /// The runs due at `now_ms`: one per schedule whose next instant came
    /// (for the latest instant due, counting the ones it skipped).
    pub fn due(&mut self, now_ms: i64) -> Due {
        let mut due = Due::default();
        for s in &mut self.schedules {
            if s.epoch.is_none() {
                continue;
            }
            let Some(next) = s.next_ms.filter(|n| *n <= now_ms) else {
                continue;
            };
            let (more, _, last) = s
                .cadence
                .between(next, now_ms, s.mark.origin_ms, MISSED_CAP);
            let at = last.unwrap_or(next).max(next);
            let skipped = s.made_up + more;
            s.made_up = 0;
            s.mark.last_run += 1;
            s.mark.last_ms = at;
            let run = s.mark.last_run;
            let name = &s.config.name;
            let payload = s.config.payload.clone().unwrap_or(serde_json::Value::Null);
            let value = serde_json::json!({
                "name": format!("schedule:{name}"),
                "at_ms": at,
                "time": "wall",
                "payload": payload,
                "schedule": name,
                "run": run,
            });
            due.records.push(ProduceRecord {
                timestamp_ms: None,
                partition: Some(0),
                key: Some(s.config.key().as_bytes().to_vec()),
                headers: vec![
                    (
                        TIMER_HEADER.to_owned(),
                        format!("schedule:{name}").into_bytes(),
                    ),
                    (SCHEDULE_HEADER.to_owned(), name.as_bytes().to_vec()),
                    (RUN_HEADER.to_owned(), run.to_string().into_bytes()),
                ],
                value: value.to_string().into_bytes(),
            });
            let mut fields = serde_json::json!({
                "run": run,
                "outcome": "running",
                "scheduled_ms": at,
                "started_ms": now_ms,
            });
            if skipped > 0 {
                set(&mut fields, "skipped", skipped.into());
            }
            due.runs.push((name.clone(), run, record(fields)));
            if !self.cluster {
                due.marks.push((name.clone(), s.mark));
            }
            s.next_ms = s.cadence.next_after(now_ms.max(at), s.mark.origin_ms);
        }
        due
    }

    /// The run a batch item is, if it is one: (schedule, run number).
    pub fn run_of(item: &Item) -> Option<(String, u64)> {
        if !item.is_timer() {
            return None;
        }
        let header = |name: &str| {
            item.record
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        Some((
            header(SCHEDULE_HEADER)?.to_owned(),
            header(RUN_HEADER)?.parse().ok()?,
        ))
    }

    /// The records of runs a batch finished: each run item's outcome — a
    /// dead letter of it in `dead`, held behind a quarantined key (`held`),
    /// else `ok`.
    ///
    /// # Errors
    /// A store failure.
    pub fn finished<'a>(
        &self,
        store: &Store,
        items: impl Iterator<Item = &'a Item>,
        dead: &[DeadLetter],
        held: &[(&str, u64)],
        now_ms: i64,
    ) -> Result<Vec<(String, u64, String)>, StoreError> {
        let mut out = Vec::new();
        for item in items {
            let Some((name, run)) = Self::run_of(item) else {
                continue;
            };
            let r = &item.record;
            let letter = dead.iter().find(|d| {
                *d.topic == *r.topic && d.partition == r.partition && d.offset == r.offset
            });
            let outcome = match (letter, held.contains(&(&*r.topic, r.offset))) {
                (Some(_), _) => "dead_letter",
                (None, true) => "held",
                (None, false) => "ok",
            };
            let mut fields: serde_json::Value = store
                .schedule_run(&self.pipeline, &name, run)?
                .and_then(|v| serde_json::from_str(&v).ok())
                .unwrap_or_else(|| serde_json::json!({ "run": run }));
            set(&mut fields, "outcome", outcome.into());
            set(&mut fields, "ended_ms", now_ms.into());
            if let Some(d) = letter {
                set(&mut fields, "error_class", d.error_class.clone().into());
                set(&mut fields, "error", d.error.clone().into());
            }
            crate::telemetry::schedule_run(&self.pipeline, &name, outcome);
            out.push((name, run, record(fields)));
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null; a test that indexes past a Vec fails, as it should"
)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::Commit;

    fn every(name: &str, ms: u64, missed: Missed) -> ScheduleConfig {
        ScheduleConfig {
            name: name.into(),
            pipeline: "p".into(),
            cron: None,
            every_ms: Some(ms),
            key: None,
            payload: Some(serde_json::json!({"hello": 1})),
            missed,
        }
    }

    fn commit(store: &Store, due: &Due) -> anyhow::Result<()> {
        store.commit(&Commit {
            pipeline: "p".into(),
            schedule_marks: due.marks.clone(),
            schedule_runs: due.runs.clone(),
            ..Commit::default()
        })?;
        Ok(())
    }

    #[test]
    fn runs_come_at_their_instants_and_downtime_follows_the_policy() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), Durability::Process)?;
        let configs = vec![
            every("skip", 100, Missed::Skip),
            every("once", 100, Missed::RunOnce),
        ];
        let (mut s, started) = Scheduler::open(&store, "p", configs.clone(), (1_000, false))?;
        assert_eq!(started.marks.len(), 2);
        commit(&store, &started)?;
        assert!(s.due(1_099).is_empty());
        let due = s.due(1_100);
        assert_eq!(due.records.len(), 2);
        let value: serde_json::Value = serde_json::from_slice(&due.records[0].value)?;
        assert_eq!(value["at_ms"], 1_100);
        assert_eq!(value["name"], "schedule:skip");
        assert_eq!(value["payload"]["hello"], 1);
        commit(&store, &due)?;
        // Busy past three instants: one run, for the last, saying so.
        let due = s.due(1_420);
        let run: serde_json::Value = serde_json::from_str(&due.runs[0].2)?;
        assert_eq!(
            (run["scheduled_ms"].clone(), run["skipped"].clone()),
            (1_400.into(), 2.into())
        );
        commit(&store, &due)?;
        // Down from 1420 to 2050: 6 instants missed.
        let (mut s, started) = Scheduler::open(&store, "p", configs, (2_050, false))?;
        let skipped: serde_json::Value = serde_json::from_str(&started.runs[0].2)?;
        assert_eq!(
            started.runs.len(),
            1,
            "only the skip policy records at start"
        );
        assert_eq!(skipped["outcome"], "skipped");
        assert_eq!(skipped["missed"], 6);
        commit(&store, &started)?;
        let due = s.due(2_050);
        assert_eq!(due.records.len(), 1, "run-once runs at once");
        let value: serde_json::Value = serde_json::from_slice(&due.records[0].value)?;
        assert_eq!(
            (value["name"].clone(), value["at_ms"].clone()),
            ("schedule:once".into(), 2_000.into())
        );
        let run: serde_json::Value = serde_json::from_str(&due.runs[0].2)?;
        assert_eq!(run["skipped"], 5);
        // Both go on at the next instant.
        assert_eq!(s.due(2_100).records.len(), 2);
        Ok(())
    }

    /// Cluster mode: a schedule runs only under an owner epoch of its key's
    /// partition; its stored mark moves when a run is folded, so a new
    /// owner (or a new epoch) starts from the last run folded, and a run
    /// started but not folded runs again, under its number.
    #[test]
    fn in_a_cluster_the_owner_runs_it_from_the_last_run_folded() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), Durability::Process)?;
        let configs = vec![every("c", 100, Missed::RunOnce)];
        let (mut s, started) = Scheduler::open(&store, "p", configs, (1_000, true))?;
        assert!(started.is_empty());
        assert!(s.due(5_000).records.is_empty(), "not this host's yet");
        let started = s.reconcile(&store, 1_000, |_| Some(7))?;
        assert_eq!(started.marks.len(), 1, "a first mark");
        commit(&store, &started)?;
        let due = s.due(1_100);
        assert_eq!(due.records.len(), 1);
        assert!(due.marks.is_empty(), "the stored mark waits for the fold");
        commit(&store, &due)?;
        // The fold of run 1 moves the mark on.
        let changes = s.changes(&due.runs);
        assert_eq!(changes[0].mark.last_run, 1);
        assert_eq!(changes[0].mark.last_ms, 1_100);
        let folded = Due {
            marks: vec![("c".into(), changes[0].mark)],
            ..Due::default()
        };
        commit(&store, &folded)?;
        // Run 2 starts; the partition moves before it is folded.
        let due = s.due(1_200);
        commit(&store, &due)?;
        assert_eq!(store.schedule_runs("p", "c", 10)?.len(), 2);
        assert!(s.reconcile(&store, 1_250, |_| None)?.is_empty());
        assert!(s.due(9_000).records.is_empty(), "stopped");
        // Back under a new epoch: run 2 again, for its instant.
        let started = s.reconcile(&store, 1_250, |_| Some(9))?;
        assert!(started.is_empty());
        assert_eq!(
            store.schedule_runs("p", "c", 10)?.len(),
            1,
            "the run not folded here is dropped"
        );
        let due = s.due(1_250);
        let value: serde_json::Value = serde_json::from_slice(&due.records[0].value)?;
        assert_eq!(
            (value["run"].clone(), value["at_ms"].clone()),
            (2.into(), 1_200.into())
        );
        Ok(())
    }
}
