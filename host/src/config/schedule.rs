//! `[[schedule]]`: a pipeline triggered on a cron expression or a fixed
//! interval. Each run reaches the pipeline's aggregator (or, without one,
//! its handlers) as a fired timer named `schedule:{name}` on the schedule's
//! key, carrying its `payload`.

use std::str::FromStr;

use serde::Deserialize;

/// One schedule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Its name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// The pipeline it triggers.
    pub pipeline: String,
    /// A cron expression, in UTC, with seconds: `sec min hour day-of-month
    /// month day-of-week [year]` (`0 30 2 * * *`: 02:30:00 every day;
    /// `*/10 * * * * *`: every 10 s). Either this or `every_ms`.
    #[serde(default)]
    pub cron: Option<String>,
    /// A fixed interval, in milliseconds, from the first start.
    #[serde(default)]
    pub every_ms: Option<u64>,
    /// The key its runs are folded into (default: the schedule's name).
    #[serde(default)]
    pub key: Option<String>,
    /// What each run carries to the plugin (the timer's payload).
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// What happens to runs missed while the host was down: `skip` (the
    /// default: recorded as skipped, the next run is the next instant) or
    /// `run-once` (one run at start, for the last missed instant).
    #[serde(default)]
    pub missed: Missed,
}

/// See [`ScheduleConfig::missed`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Missed {
    /// Missed runs are recorded as skipped.
    #[default]
    Skip,
    /// One run makes up for all the missed ones.
    RunOnce,
}

/// When a schedule runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Cadence {
    /// A cron expression (UTC).
    Cron(Box<cron::Schedule>),
    /// Every so many milliseconds, counted from `since`.
    Every {
        /// The interval.
        ms: i64,
    },
}

impl ScheduleConfig {
    /// The key its runs are folded into.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.name)
    }

    /// Its cadence.
    ///
    /// # Errors
    /// A message naming the schedule and the bad value.
    pub fn cadence(&self) -> Result<Cadence, String> {
        let at = format!("schedule {:?}", self.name);
        match (&self.cron, self.every_ms) {
            (Some(expr), None) => cron::Schedule::from_str(expr)
                .map(|s| Cadence::Cron(Box::new(s)))
                .map_err(|e| {
                    format!(
                        "{at}: cron {expr:?} is not a valid expression ({e}); it takes \
                         `sec min hour day-of-month month day-of-week [year]`, in UTC"
                    )
                }),
            (None, Some(ms)) => match i64::try_from(ms) {
                Ok(ms) if ms > 0 => Ok(Cadence::Every { ms }),
                _ => Err(format!("{at}: every_ms = {ms} must be between 1 and 2^63")),
            },
            (Some(_), Some(_)) => Err(format!("{at}: has both cron and every_ms; give one")),
            (None, None) => Err(format!("{at}: needs a cron expression or every_ms")),
        }
    }
}

impl Cadence {
    /// The first instant strictly after `after_ms` (`origin_ms`: where an
    /// interval counts from). `None` when a cron expression has no more.
    pub fn next_after(&self, after_ms: i64, origin_ms: i64) -> Option<i64> {
        match self {
            Cadence::Every { ms } => {
                if after_ms < origin_ms {
                    return Some(origin_ms);
                }
                let steps = (after_ms - origin_ms) / ms + 1;
                origin_ms.checked_add(steps.checked_mul(*ms)?)
            }
            Cadence::Cron(schedule) => {
                let after = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(after_ms)?;
                schedule.after(&after).next().map(|t| t.timestamp_millis())
            }
        }
    }

    /// The instants in `(after_ms, until_ms]`: how many (up to `cap`), the
    /// first and the last.
    pub fn between(
        &self,
        after_ms: i64,
        until_ms: i64,
        origin_ms: i64,
        cap: usize,
    ) -> (usize, Option<i64>, Option<i64>) {
        let (mut n, mut first, mut last) = (0, None, None);
        let mut at = after_ms;
        while n < cap {
            match self.next_after(at, origin_ms) {
                Some(t) if t <= until_ms => {
                    n += 1;
                    first.get_or_insert(t);
                    last = Some(t);
                    at = t;
                }
                _ => break,
            }
        }
        if n == cap {
            // Past the cap, the last instant is the latest one due.
            if let Cadence::Every { ms } = self
                && until_ms >= origin_ms
            {
                last = Some(origin_ms + (until_ms - origin_ms) / ms * ms);
            }
        }
        (n, first, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: Option<&str>, every_ms: Option<u64>) -> ScheduleConfig {
        ScheduleConfig {
            name: "s".into(),
            pipeline: "p".into(),
            cron: cron.map(str::to_owned),
            every_ms,
            key: None,
            payload: None,
            missed: Missed::Skip,
        }
    }

    #[test]
    fn cron_and_interval_instants() -> Result<(), String> {
        let c = schedule(Some("*/10 * * * * *"), None).cadence()?;
        assert_eq!(c.next_after(1_000, 0), Some(10_000));
        assert_eq!(c.next_after(10_000, 0), Some(20_000));
        assert_eq!(
            c.between(0, 35_000, 0, 100),
            (3, Some(10_000), Some(30_000))
        );
        let e = schedule(None, Some(250)).cadence()?;
        assert_eq!(e.next_after(0, 100), Some(100));
        assert_eq!(e.next_after(100, 100), Some(350));
        assert_eq!(e.next_after(349, 100), Some(350));
        assert_eq!(e.between(100, 1_100, 100, 2), (2, Some(350), Some(1_100)));
        Ok(())
    }

    #[test]
    fn bad_cadences_name_the_schedule_and_the_value() {
        let err =
            |c: Option<&str>, e: Option<u64>| schedule(c, e).cadence().err().unwrap_or_default();
        let bad = err(Some("every tuesday"), None);
        assert!(
            bad.contains("schedule \"s\"") && bad.contains("\"every tuesday\""),
            "{bad}"
        );
        assert!(err(None, Some(0)).contains("every_ms = 0"));
        assert!(err(Some("* * * * * *"), Some(5)).contains("both"));
        assert!(err(None, None).contains("needs"));
    }
}
