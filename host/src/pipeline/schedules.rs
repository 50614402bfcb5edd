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
    /// The next instant to run, `None` when the cron expression has none.
    next_ms: Option<i64>,
    /// Instants skipped before `next_ms` that its run makes up for.
    made_up: usize,
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

impl Scheduler {
    /// The schedules of `pipeline` as the store left them at `now_ms`, and
    /// what starting them writes (first marks, skipped runs).
    ///
    /// # Errors
    /// A store failure, or a schedule whose cadence does not parse.
    pub fn open(
        store: &Store,
        pipeline: &str,
        configs: Vec<ScheduleConfig>,
        now_ms: i64,
    ) -> anyhow::Result<(Self, Due)> {
        let mut due = Due::default();
        let mut schedules = Vec::new();
        for config in configs {
            let cadence = config.cadence().map_err(|e| anyhow::anyhow!(e))?;
            let name = config.name.clone();
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
                    match (missed, last, config.missed) {
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
            schedules.push(Scheduled {
                config,
                cadence,
                mark,
                next_ms,
                made_up,
            });
        }
        Ok((
            Scheduler {
                pipeline: pipeline.to_owned(),
                schedules,
            },
            due,
        ))
    }

    /// Whether there are no schedules.
    pub fn is_empty(&self) -> bool {
        self.schedules.is_empty()
    }

    /// The runs due at `now_ms`: one per schedule whose next instant came
    /// (for the latest instant due, counting the ones it skipped).
    pub fn due(&mut self, now_ms: i64) -> Due {
        let mut due = Due::default();
        for s in &mut self.schedules {
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
            due.marks.push((name.clone(), s.mark));
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
        let (mut s, started) = Scheduler::open(&store, "p", configs.clone(), 1_000)?;
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
        let (mut s, started) = Scheduler::open(&store, "p", configs, 2_050)?;
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
}
