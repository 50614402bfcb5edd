//! Replay: rebuild a pipeline's state from its source topic while queries
//! keep answering from the last good state, then switch over atomically.
//!
//! The rebuild folds the topic from `from` into a separate namespace of the
//! store (`{pipeline}@replay`) with the aggregator's current version, chasing
//! the live worker's committed offsets. Once caught up, it takes the
//! pipeline's lock (the live worker pauses between batches), folds the last
//! few events up to exactly the live offsets, and swaps the rebuilt states
//! in with one atomic write. Emitted records, changelog records and dead
//! letters are not produced again: a replay rebuilds state, it does not
//! repeat side effects. Events that fail during the rebuild are counted and
//! skipped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{PipelineLock, prepare};
use crate::config::PipelineConfig;
use crate::execute::Instance;
use crate::execute::bindings::Event;
use crate::route::KeySpec;
use crate::source::SourceRecord;
use crate::source::embedded::EmbeddedLog;
use crate::store::{Change, Commit};

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "from", content = "at")]
pub enum From {
    /// Every partition from offset 0.
    Beginning,
    /// Every partition from this offset (earlier events are left out).
    Offset(u64),
    /// Each partition from its first record appended at or after this time (ms).
    Timestamp(i64),
}

/// What a replay is doing, for HTTP, SSE and the CLI.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Pipeline.
    pub pipeline: String,
    /// `rebuilding`, `switching`, `done` or `failed`.
    pub phase: String,
    /// Where it started.
    #[serde(flatten)]
    pub from: From,
    /// Events folded so far.
    pub processed: u64,
    /// Events between the start offsets and the live offsets (grows while
    /// the live pipeline runs).
    pub total: u64,
    /// Events that failed during the rebuild (skipped).
    pub failed: u64,
    /// Keys in the rebuilt state.
    pub keys: u64,
    /// Plugin version used for the rebuild.
    pub plugin_version: String,
    /// When it started / finished (ms since the Unix epoch).
    pub started_at_ms: i64,
    /// When it finished.
    pub finished_at_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A pipeline's replay status, shared with the HTTP layer.
pub type Tracker = Arc<Mutex<Option<Progress>>>;

use crate::now_ms;

struct Rebuild {
    config: PipelineConfig,
    ns: String,
    key: KeySpec,
    aggregator: Instance,
    log: Arc<EmbeddedLog>,
    positions: Vec<u64>,
    tracker: Tracker,
    seq: u64,
}

impl Rebuild {
    fn update(&self, f: impl FnOnce(&mut Progress)) {
        if let Some(p) = self
            .tracker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            f(p);
        }
    }

    fn live_offsets(&self) -> anyhow::Result<Vec<u64>> {
        let store = self.log.store();
        (0..self.positions.len())
            .map(|p| {
                let p = u32::try_from(p).unwrap_or(u32::MAX);
                Ok(store.offset(&self.config.name, &self.config.topic, p)?)
            })
            .collect()
    }

    /// Folds events up to `targets` (exclusive), one bounded batch per partition.
    /// Returns how many were folded.
    fn step(&mut self, targets: &[u64]) -> anyhow::Result<usize> {
        let store = self.log.store().clone();
        let mut records = Vec::new();
        for (p, (pos, target)) in self.positions.iter_mut().zip(targets).enumerate() {
            let partition = u32::try_from(p).unwrap_or(u32::MAX);
            for (offset, r) in store.read_log(
                &self.config.topic,
                partition,
                *pos,
                *target,
                self.config.max_batch,
                self.config.max_batch_bytes,
            )? {
                *pos = offset + 1;
                records.push(SourceRecord {
                    topic: Arc::from(self.config.topic.as_str()),
                    partition,
                    offset,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key,
                    headers: r.headers,
                    value: r.value,
                });
            }
        }
        let n = records.len();
        if n == 0 {
            return Ok(0);
        }
        let mut order: Vec<String> = Vec::new();
        let mut groups: HashMap<String, Vec<Event>> = HashMap::new();
        let mut failed = 0u64;
        for r in &records {
            match prepare(&self.config, &self.key, r) {
                Ok((event, key)) => groups
                    .entry(key.clone())
                    .or_insert_with(|| {
                        order.push(key);
                        Vec::new()
                    })
                    .push(event),
                Err(_) => failed += 1,
            }
        }
        let mut commit = Commit {
            pipeline: self.ns.clone(),
            plugin_version: self.aggregator.plugin().version.clone(),
            ..Commit::default()
        };
        let mut new_keys = 0u64;
        for key in order {
            let Some(events) = groups.get(&key) else {
                continue;
            };
            let previous = store.state(&self.ns, &key)?;
            let mut state = previous.as_ref().map(|s| s.json.clone());
            match self.aggregator.apply(&key, state.as_deref(), events) {
                Ok((s, _emits)) => state = Some(s),
                Err(_) => {
                    // Isolate: apply one at a time, skipping the failures.
                    for e in events {
                        match self
                            .aggregator
                            .apply(&key, state.as_deref(), std::slice::from_ref(e))
                        {
                            Ok((s, _)) => state = Some(s),
                            Err(_) => failed += 1,
                        }
                    }
                }
            }
            if let Some(s) = state {
                if previous.is_none() {
                    new_keys += 1;
                }
                self.seq += 1;
                commit.states.push((
                    Change {
                        seq: self.seq,
                        key,
                        state: s,
                    },
                    previous.map(|p| p.seq),
                ));
            }
        }
        commit.last_seq = self.seq;
        store.commit(&commit)?;
        self.update(|p| {
            p.processed += n as u64;
            p.failed += failed;
            p.keys += new_keys;
        });
        Ok(n)
    }

    fn run(mut self, lock: &PipelineLock) -> anyhow::Result<()> {
        let started: Vec<u64> = self.positions.clone();
        // Chase the live pipeline without stopping it.
        loop {
            let targets = self.live_offsets()?;
            let total: u64 = targets
                .iter()
                .zip(&started)
                .map(|(t, s)| t.saturating_sub(*s))
                .sum();
            self.update(|p| p.total = total);
            if self.step(&targets)? == 0 {
                break;
            }
        }
        // Catch up exactly and switch, with the live worker paused.
        self.update(|p| p.phase = "switching".into());
        let _guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let targets = self.live_offsets()?;
        let total: u64 = targets
            .iter()
            .zip(&started)
            .map(|(t, s)| t.saturating_sub(*s))
            .sum();
        self.update(|p| p.total = total);
        while self.step(&targets)? > 0 {}
        let store = self.log.store();
        let last = store.last_seq(&self.config.name)?;
        store.swap_rebuilt(&self.config.name, &self.ns, last)?;
        Ok(())
    }
}

/// Why a replay cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// One is already running.
    #[error("a replay of pipeline {0:?} is already running")]
    Running(String),
    /// The pipeline has no aggregator: there is no state to rebuild.
    #[error("pipeline {0:?} has no aggregator: there is no state to rebuild")]
    NoState(String),
}

/// Starts a replay on its own thread.
///
/// # Errors
/// [`ReplayError`] when one is running or the pipeline keeps no state.
pub fn start(
    config: PipelineConfig,
    aggregator: Option<Instance>,
    log: Arc<EmbeddedLog>,
    lock: PipelineLock,
    tracker: Tracker,
    from: From,
) -> Result<Progress, ReplayError> {
    let Some(aggregator) = aggregator else {
        return Err(ReplayError::NoState(config.name));
    };
    let progress = Progress {
        pipeline: config.name.clone(),
        phase: "rebuilding".into(),
        from,
        processed: 0,
        total: 0,
        failed: 0,
        keys: 0,
        plugin_version: aggregator.plugin().version.clone(),
        started_at_ms: now_ms(),
        finished_at_ms: None,
        error: None,
    };
    {
        let mut t = tracker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if t.as_ref()
            .is_some_and(|p| p.phase == "rebuilding" || p.phase == "switching")
        {
            return Err(ReplayError::Running(config.name));
        }
        *t = Some(progress.clone());
    }
    let name = config.name.clone();
    let tracker_for_error = tracker.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("eddy-replay-{name}"))
        .spawn(move || {
            let ns = format!("{}@replay", config.name);
            let result = (|| -> anyhow::Result<()> {
                let store = log.store();
                store.clear_namespace(&ns)?;
                let partitions = log.partitions(&config.topic).unwrap_or(0);
                let mut positions = Vec::with_capacity(partitions as usize);
                for p in 0..partitions {
                    positions.push(match from {
                        From::Beginning => 0,
                        From::Offset(o) => o,
                        From::Timestamp(t) => {
                            store.offset_for_time(&config.topic, p, log.high_watermark(&config.topic, p), t)?
                        }
                    });
                }
                tracing::info!(pipeline = %config.name, ?from, "replay started");
                Rebuild {
                    key: KeySpec::new(config.key_field.as_deref()),
                    ns: ns.clone(),
                    aggregator,
                    log: log.clone(),
                    positions,
                    tracker: tracker.clone(),
                    seq: 0,
                    config: config.clone(),
                }
                .run(&lock)
            })();
            let mut t = tracker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(p) = t.as_mut() {
                p.finished_at_ms = Some(now_ms());
                match result {
                    Ok(()) => {
                        p.phase = "done".into();
                        tracing::info!(pipeline = %config.name, processed = p.processed, keys = p.keys, "replay done; rebuilt state is live");
                    }
                    Err(e) => {
                        p.phase = "failed".into();
                        p.error = Some(format!("{e:#}"));
                        tracing::error!(pipeline = %config.name, error = %format!("{e:#}"), "replay failed; the live state is unchanged");
                        let _ = log.store().clear_namespace(&ns);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(pipeline = %name, error = %e, "cannot start the replay thread");
        if let Some(p) = tracker_for_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            p.phase = "failed".into();
            p.error = Some(format!("cannot start the replay thread: {e}"));
        }
    }
    Ok(progress)
}
