//! Fault runs driven by a seed: the fault schedule (when the host is
//! killed, for how long it stays down) and the workload's random choices
//! come from `EDDY_CHAOS_SEED` (printed at the start, so a failing run can
//! be run again with the same schedule); `EDDY_CHAOS_EVENTS` and
//! `EDDY_CHAOS_KILLS` make a run longer than CI's (`scripts/chaos.sh` runs
//! 1,000,000 events and 20 kills). Each run prints a one-line JSON report,
//! also appended to the file `EDDY_CHAOS_REPORT` names.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::Host;

/// One seeded fault run.
pub struct Chaos {
    /// The scenario's name, in the report.
    pub scenario: String,
    /// The seed of every random choice.
    pub seed: u64,
    /// Events the workload sends.
    pub events: u64,
    /// Times the host is killed.
    pub kills: usize,
    rng: StdRng,
    started: Instant,
    recoveries: Vec<Duration>,
}

/// A number from the environment, when set.
///
/// # Errors
/// When it is set but not a number.
pub fn env_u64(name: &str) -> Result<Option<u64>> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse::<u64>().with_context(|| format!("{name}={v:?}")))
        .transpose()
}

impl Chaos {
    /// A run of `scenario` with these defaults unless the environment
    /// says otherwise.
    ///
    /// # Errors
    /// When an `EDDY_CHAOS_*` variable is not a number.
    pub fn from_env(scenario: &str, events: u64, kills: usize) -> Result<Chaos> {
        let seed = env_u64("EDDY_CHAOS_SEED")?.unwrap_or_else(|| rand::rng().random());
        let events = env_u64("EDDY_CHAOS_EVENTS")?.unwrap_or(events);
        let kills = match env_u64("EDDY_CHAOS_KILLS")? {
            Some(k) => usize::try_from(k)?,
            None => kills,
        };
        eprintln!(
            "chaos {scenario}: seed {seed}, {events} events, {kills} kills \
             (EDDY_CHAOS_SEED={seed} runs this schedule again)"
        );
        Ok(Chaos {
            scenario: scenario.to_owned(),
            seed,
            events,
            kills,
            rng: StdRng::seed_from_u64(seed),
            started: Instant::now(),
            recoveries: Vec::new(),
        })
    }

    /// A random number generator for one part of the workload, derived
    /// from the seed.
    pub fn stream(&self, part: u64) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ part.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// A number in `range`, from the fault schedule's generator.
    pub fn pick(&mut self, range: std::ops::Range<u64>) -> u64 {
        self.rng.random_range(range)
    }

    /// `kills` instants in `0..span`, in order: when to kill.
    pub fn schedule(&mut self, span: u64) -> Vec<u64> {
        let mut at: Vec<u64> = (0..self.kills)
            .map(|_| self.rng.random_range(0..span.max(1)))
            .collect();
        at.sort_unstable();
        at
    }

    /// Kills the host with SIGKILL, leaves it down for a random moment
    /// (up to `max_down_ms`), starts it again and records how long it took
    /// to answer again.
    ///
    /// # Errors
    /// When the host cannot be killed or does not come back.
    pub async fn kill_and_restart(&mut self, host: &mut Host, max_down_ms: u64) -> Result<()> {
        host.kill9()?;
        let down = self.pick(0..max_down_ms.max(1));
        tokio::time::sleep(Duration::from_millis(down)).await;
        let t = Instant::now();
        host.restart().await?;
        self.recoveries.push(t.elapsed());
        Ok(())
    }

    /// Prints the run's report (with `fields` added) and appends it to
    /// `EDDY_CHAOS_REPORT` when set.
    ///
    /// # Errors
    /// When the report file cannot be written.
    pub fn report(&self, fields: Value) -> Result<Value> {
        let ms = |d: &Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut report = json!({
            "scenario": self.scenario,
            "seed": self.seed,
            "events": self.events,
            "kills": self.recoveries.len(),
            "restart_ms_max": self.recoveries.iter().map(ms).max().unwrap_or(0),
            "restart_ms_mean": if self.recoveries.is_empty() {
                0
            } else {
                self.recoveries.iter().map(ms).sum::<u64>() / self.recoveries.len() as u64
            },
            "seconds": self.started.elapsed().as_secs(),
        });
        if let (Some(r), Value::Object(extra)) = (report.as_object_mut(), fields) {
            r.extend(extra);
        }
        println!("chaos report: {report}");
        if let Ok(path) = std::env::var("EDDY_CHAOS_REPORT") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {path}"))?;
            writeln!(f, "{report}")?;
        }
        Ok(report)
    }
}
