//! The `schedule_runs` keyspace (pipeline, schedule, run number → the run's
//! record, JSON) and each schedule's mark in `meta`
//! (`schedule\0{pipeline}\0{name}`: where its interval counts from, its last
//! scheduled instant and its last run number). Only the last
//! [`RUNS_KEPT`] runs of a schedule are kept.

use fjall::OwnedWriteBatch;

use super::codec::{Reader, join};
use super::{Result, Store, StoreError, fj};

/// Runs kept per schedule.
pub const RUNS_KEPT: u64 = 1_000;

/// Where a schedule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleMark {
    /// Where an interval counts from (its first start).
    pub origin_ms: i64,
    /// The last instant it was scheduled for (run or skipped).
    pub last_ms: i64,
    /// The last run number used.
    pub last_run: u64,
}

fn mark_key(pipeline: &str, name: &str) -> Vec<u8> {
    join(&[b"schedule", pipeline.as_bytes(), name.as_bytes()])
}

fn runs_prefix(pipeline: &str, name: &str) -> Vec<u8> {
    join(&[pipeline.as_bytes(), name.as_bytes(), b""])
}

fn run_key(pipeline: &str, name: &str, run: u64) -> Vec<u8> {
    let mut k = runs_prefix(pipeline, name);
    k.extend_from_slice(&run.to_be_bytes());
    k
}

impl Store {
    /// A schedule's mark, `None` before its first start.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn schedule_mark(&self, pipeline: &str, name: &str) -> Result<Option<ScheduleMark>> {
        let Some(v) = fj("read meta", self.meta.get(mark_key(pipeline, name)))? else {
            return Ok(None);
        };
        let mut r = Reader(&v);
        match (
            r.array().map(i64::from_be_bytes),
            r.array().map(i64::from_be_bytes),
            r.array().map(u64::from_be_bytes),
        ) {
            (Some(origin_ms), Some(last_ms), Some(last_run)) => Ok(Some(ScheduleMark {
                origin_ms,
                last_ms,
                last_run,
            })),
            _ => Err(StoreError::Corrupt {
                what: format!("schedule mark of {name:?}"),
            }),
        }
    }

    /// A schedule's runs, newest first (at most `limit`): (run, record).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn schedule_runs(
        &self,
        pipeline: &str,
        name: &str,
        limit: usize,
    ) -> Result<Vec<(u64, String)>> {
        let mut out = Vec::new();
        for item in self.schedule_runs.prefix(runs_prefix(pipeline, name)).rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = fj("read schedule runs", item.into_inner())?;
            let run = super::codec::u64_suffix(&k, "schedule run key")?;
            out.push((run, String::from_utf8_lossy(&v).into_owned()));
        }
        Ok(out)
    }

    /// One run's record.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn schedule_run(&self, pipeline: &str, name: &str, run: u64) -> Result<Option<String>> {
        Ok(fj(
            "read schedule runs",
            self.schedule_runs.get(run_key(pipeline, name, run)),
        )?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Removes a schedule's run records numbered above `run` (cluster mode:
    /// runs this host started that another owner numbers again).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn drop_schedule_runs_after(&self, pipeline: &str, name: &str, run: u64) -> Result<()> {
        let mut b = self.batch();
        let mut any = false;
        let from = run_key(pipeline, name, run.saturating_add(1));
        let prefix = runs_prefix(pipeline, name);
        for item in self.schedule_runs.range(from..) {
            let k = fj("read schedule runs", item.key())?;
            if !k.starts_with(&prefix) {
                break;
            }
            b.remove(&self.schedule_runs, k.to_vec());
            any = true;
        }
        if any {
            fj("drop schedule runs", b.commit())?;
        }
        Ok(())
    }

    /// Puts schedules' new marks and run records into `b`, dropping the
    /// runs that fall out of the last [`RUNS_KEPT`].
    pub(super) fn write_schedules(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        marks: &[(String, ScheduleMark)],
        runs: &[(String, u64, String)],
    ) {
        for (name, m) in marks {
            let mut v = Vec::with_capacity(24);
            v.extend_from_slice(&m.origin_ms.to_be_bytes());
            v.extend_from_slice(&m.last_ms.to_be_bytes());
            v.extend_from_slice(&m.last_run.to_be_bytes());
            b.insert(&self.meta, mark_key(pipeline, name), v);
        }
        for (name, run, record) in runs {
            b.insert(
                &self.schedule_runs,
                run_key(pipeline, name, *run),
                record.as_bytes(),
            );
            if let Some(old) = run.checked_sub(RUNS_KEPT) {
                b.remove(&self.schedule_runs, run_key(pipeline, name, old));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::Commit;

    #[test]
    fn marks_and_runs_round_trip_newest_first()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(dir.path(), Durability::Process)?;
        assert_eq!(s.schedule_mark("p", "s")?, None);
        let mark = ScheduleMark {
            origin_ms: -3,
            last_ms: 7,
            last_run: 2,
        };
        s.commit(&Commit {
            pipeline: "p".into(),
            schedule_marks: vec![("s".into(), mark)],
            schedule_runs: vec![
                ("s".into(), 1, "{\"run\":1}".into()),
                ("s".into(), 2, "{\"run\":2}".into()),
                ("t".into(), 1, "{}".into()),
            ],
            ..Commit::default()
        })?;
        assert_eq!(s.schedule_mark("p", "s")?, Some(mark));
        let runs: Vec<u64> = s
            .schedule_runs("p", "s", 10)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(runs, [2, 1]);
        assert_eq!(s.schedule_runs("p", "s", 1)?.len(), 1);
        assert_eq!(s.schedule_run("p", "s", 1)?.as_deref(), Some("{\"run\":1}"));
        Ok(())
    }
}
