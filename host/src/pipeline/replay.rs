//! Replay: rebuild a pipeline's state from its input topic while queries
//! keep answering from the last good state, then switch over atomically.
//!
//! The rebuild reads the input through the pipeline's source — the embedded
//! log, or on Kafka a consumer of its own outside the pipeline's group
//! ([`crate::source::rewind`]) — from where [`From`] says, and folds it into
//! a side namespace of the store (`{pipeline}@replay`) with the aggregator's
//! current version and the worker's own fold ([`super::fold`]: retries,
//! isolation, quarantine). It chases the live worker's committed offsets;
//! once close, it takes the pipeline's lock (the live worker pauses between
//! batches), reads exactly up to the live offsets and swaps the rebuilt
//! states in with one atomic write.
//!
//! The swap happens only when every partition was read from its start to
//! the live offset it caught up with; otherwise the replay ends `failed`
//! with the reason and the live state is untouched. A range that holds no
//! events while the topic holds some is a failure too: a rebuild never
//! replaces live state with less than it should.
//!
//! Failures during the rebuild are dead letters, as in the live pipeline:
//! at the swap, the live dead letters (decode, route and aggregate stages),
//! parked events and quarantine counts of the rebuilt range give way to the
//! rebuild's, so every event of the range is either in the state or in the
//! dead letters. Emitted records and changelog records are not produced
//! again: a replay rebuilds state, it does not repeat side effects.
//!
//! Timers are rebuilt too: the folds' timer requests go to the namespace,
//! the rebuild fires what falls due (wall-clock timers up to now,
//! event-time ones up to its own watermarks) and folds them after each
//! batch, and the switch-over replaces the live timers with the rebuilt
//! ones (and moves the timer generation on, so the live worker does not
//! fold a timer it fired before).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::dead_letter::{DeadIds, DeadLetter, Origin, Stage};
use super::fold::{self, ByKey, Policy};
use super::outputs::{Folder, Outputs, Target};
use super::{Intake, Item, PipelineLock, Views};
use crate::config::PipelineConfig;
use crate::execute::{Instance, KeyInput};
use crate::now_ms;
use crate::source::embedded::EmbeddedLog;
use crate::source::rewind::{History, RangeReader, Span};
use crate::source::{Limit, SourceRecord};
use crate::store::{LogRecord, Store, Swap};

pub use crate::source::rewind::From;

/// How long a rebuild waits for an unreachable schema registry before it fails.
const REGISTRY_WAIT: Duration = Duration::from_secs(60);

/// A chase round that reads fewer events than this is close enough: the
/// rest is read with the live pipeline paused.
const CLOSE_ENOUGH: u64 = 1_000;

/// Where a replay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Reading and folding the input while the live pipeline runs.
    Rebuilding,
    /// The live pipeline paused: the last events, then the swap.
    Switching,
    /// The rebuilt state is live.
    Done,
    /// Stopped; the live state is as it was.
    Failed,
}

impl Phase {
    /// Whether a replay in this phase is still running.
    pub fn running(self) -> bool {
        matches!(self, Phase::Rebuilding | Phase::Switching)
    }
}

/// What a replay is doing, for HTTP, SSE and the CLI.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Pipeline.
    pub pipeline: String,
    /// Where it is.
    pub phase: Phase,
    /// Where it started.
    #[serde(flatten)]
    pub from: From,
    /// Events folded so far.
    pub processed: u64,
    /// Events between the start offsets and the live offsets (grows while
    /// the live pipeline runs).
    pub total: u64,
    /// Events the rebuild dead-lettered (they replace the range's dead
    /// letters at the swap).
    pub failed: u64,
    /// Keys in the rebuilt state.
    pub keys: u64,
    /// Per partition: where the rebuild started, how far it read, and the
    /// live offset it reads up to.
    pub partitions: Vec<Span>,
    /// Plugin version used for the rebuild.
    pub plugin_version: String,
    /// When it started (ms since the Unix epoch).
    pub started_at_ms: i64,
    /// When it finished.
    pub finished_at_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A pipeline's replay status, shared with the HTTP layer.
pub type Tracker = Arc<Mutex<Option<Progress>>>;

/// Whether a replay of the pipeline tracked by `tracker` is running.
pub fn running(tracker: &Tracker) -> bool {
    crate::lock(tracker)
        .as_ref()
        .is_some_and(|p| p.phase.running())
}

struct Rebuild {
    config: PipelineConfig,
    ns: String,
    intake: Intake,
    aggregator: Instance,
    policy: Policy,
    store: Store,
    reader: RangeReader,
    tracker: Tracker,
    /// Keys quarantined by dead letters from before the range (they stay
    /// open after the swap, so the rebuild holds these keys' events too).
    held: HashSet<String>,
    /// The rebuild's own change numbers, per partition, and stamp.
    seqs: Vec<u64>,
    stamp_us: u64,
    dead_ids: DeadIds,
    /// The rebuild's stream times (from the events it folds) and whether
    /// its folds set an event-time timer.
    clock: super::timers::Clock,
    /// The live pipeline's timer topic: the rebuild's fired timers are
    /// folded as records of it (never appended to it).
    timer_topic: Arc<str>,
    /// Positions given to those records.
    fired: u64,
}

impl Rebuild {
    fn update(&self, f: impl FnOnce(&mut Progress)) {
        if let Some(p) = crate::lock(&self.tracker).as_mut() {
            f(p);
        }
    }

    /// The live pipeline's next offset in every partition of its input.
    fn live_offsets(&self) -> anyhow::Result<Vec<u64>> {
        self.reader
            .spans()
            .iter()
            .map(|s| {
                Ok(self
                    .store
                    .offset(&self.config.name, &self.config.topic, s.partition)?)
            })
            .collect()
    }

    /// Sets the range's ends to the live offsets; returns the events in it.
    fn chase_live(&mut self) -> anyhow::Result<u64> {
        let live = self.live_offsets()?;
        self.reader.chase(&live);
        let total: u64 = self.reader.spans().iter().filter_map(Span::records).sum();
        let spans = self.reader.spans().to_vec();
        self.update(|p| {
            p.total = total;
            p.partitions = spans;
        });
        Ok(total)
    }

    /// Reads and folds up to the range's current ends; returns how many
    /// events it folded.
    fn read_to_ends(&mut self) -> anyhow::Result<u64> {
        let limit = Limit {
            records: self.config.max_batch.min(10_000),
            bytes: self.config.max_batch_bytes,
        };
        let mut n = 0;
        loop {
            let records = self.reader.next_batch(limit)?;
            if records.is_empty() {
                return Ok(n);
            }
            n += records.len() as u64;
            self.fold(records)?;
        }
    }

    /// Folds one batch of input into the namespace, as the live worker
    /// would, then the rebuild's timers that fell due.
    fn fold(&mut self, records: Vec<SourceRecord>) -> anyhow::Result<()> {
        self.fold_batch(records, Vec::new())?;
        self.fire_timers()
    }

    /// Fires the rebuild's timers that are due — wall-clock ones up to now,
    /// event-time ones up to the rebuild's watermarks — and folds them, as
    /// the live worker would between batches: a few rounds (timers their
    /// folds set due at once wait for the next batch, or for the live
    /// worker after the switch-over).
    fn fire_timers(&mut self) -> anyhow::Result<()> {
        const ROUNDS: usize = 10;
        const LIMIT: usize = 10_000;
        for _ in 0..ROUNDS {
            let now = now_ms();
            let (mut due, _) = self.store.due_wall_timers(&self.ns, now, LIMIT)?;
            for partition in 0..self.intake.partitions() {
                let room = LIMIT.saturating_sub(due.len());
                if room == 0 {
                    break;
                }
                if let Some(until) = self.clock.due_until(partition) {
                    due.extend(
                        self.store
                            .due_event_timers(&self.ns, partition, until, room)?
                            .0,
                    );
                }
            }
            if due.is_empty() {
                return Ok(());
            }
            due.sort_by_key(|t| t.at_ms);
            let records = due
                .iter()
                .map(|t| {
                    let r = super::timers::fired_record(t, None, 0);
                    self.fired += 1;
                    SourceRecord {
                        topic: self.timer_topic.clone(),
                        partition: 0,
                        offset: self.fired,
                        timestamp_ms: now,
                        key: r.key,
                        headers: r.headers,
                        value: r.value,
                        tombstone: false,
                    }
                })
                .collect();
            self.fold_batch(records, due)?;
        }
        Ok(())
    }

    /// Folds one batch into the namespace; `fired` are the timers whose
    /// records it holds (removed in the same commit).
    fn fold_batch(
        &mut self,
        records: Vec<SourceRecord>,
        fired: Vec<crate::store::Timer>,
    ) -> anyhow::Result<()> {
        let input = self.config.topic.as_str();
        // Progress counts the input's events (not the rebuild's timers).
        let n = records.iter().filter(|r| *r.topic == *input).count() as u64;
        let before: Vec<Option<Vec<u8>>> = if self.clock.event_time {
            (0..self.intake.partitions())
                .map(|p| self.clock.due_until(p).map(|w| w.to_string().into_bytes()))
                .collect()
        } else {
            Vec::new()
        };
        let stream_times = self.clock.advance(
            records
                .iter()
                .filter(|r| *r.topic == *input)
                .map(|r| (r.partition, r.timestamp_ms)),
        );
        let waiting_since = Instant::now();
        let prepared = self
            .intake
            .prepare_batch(records, &mut || waiting_since.elapsed() < REGISTRY_WAIT)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the schema registry was unreachable for {} s",
                    REGISTRY_WAIT.as_secs()
                )
            })?;
        let mut out = Outputs {
            dead: prepared.dead,
            ..Outputs::default()
        };
        let items: &[Item] = &prepared.items;
        let views = Views::with_watermarks(items, &before);
        let events = views.events();
        let by_key = ByKey::new(items.iter().map(|i| i.key.as_str()), &events);
        let plugin = self.aggregator.plugin().clone();
        let folder = Folder {
            pipeline: &self.config.name,
            plugin: &plugin,
            quarantine: self.policy.quarantines(),
        };
        let mut new_keys = 0;
        let mut keys = Vec::with_capacity(by_key.len());
        for (key, members, events) in by_key.iter() {
            let group: Vec<&Item> = members.iter().filter_map(|&i| items.get(i)).collect();
            if self.policy.quarantines()
                && (self.held.contains(key) || self.store.quarantined(&self.ns, key)? > 0)
            {
                out.hold(key, &group);
                continue;
            }
            let partition = group.first().map_or(0, |i| i.partition);
            let previous = self.store.state(&self.ns, partition, key)?;
            keys.push((key, group, events, previous));
        }
        let inputs: Vec<KeyInput<'_>> = keys
            .iter()
            .map(|(key, _, events, previous)| KeyInput {
                key,
                state: previous.as_ref().map(|s| &s.state),
                version: 0,
                events,
            })
            .collect();
        let folds = fold::aggregate_all(&self.policy, &mut self.aggregator, &inputs);
        drop(inputs);
        for ((key, group, _, previous), mut fold) in keys.into_iter().zip(folds) {
            if previous.is_none() && fold.state.is_some() {
                new_keys += 1;
            }
            // Timers the folds set are the rebuild's (no other record is
            // produced: a rebuild repeats no side effects).
            let partition = group.first().map_or(0, |i| i.partition);
            for (_, emits) in &mut fold.emits {
                out.timers
                    .extend(super::timers::take_requests(key, partition, emits));
            }
            out.add_fold(&folder, key, &group, fold, previous.map(|p| p.seq));
        }
        let event_time = out.timers.iter().any(|op| {
            matches!(op, crate::store::TimerOp::Set(t) if t.domain == crate::store::TimeDomain::Event)
        });
        let failed = out.dead.len() as u64;
        // The records a rebuild would emit are dropped: no side effects twice.
        let (mut commit, _records) = out.into_commit(Target {
            pipeline: &self.config.name,
            input: &self.config.topic,
            name: &self.ns,
            store: &self.store,
            seqs: &mut self.seqs,
            stamp_us: &mut self.stamp_us,
            dead_ids: &mut self.dead_ids,
            changelog: None,
            changelog_by_partition: false,
            restore: None,
            source_offsets: &[],
            dlq: None,
            plugin_version: plugin.version.clone(),
            aggregator: Some(&plugin.name),
        })?;
        commit.timers_fired = fired;
        commit.stream_times = stream_times;
        if event_time && !self.clock.event_time {
            commit.uses_event_time = true;
            self.clock.event_time = true;
        }
        self.store.commit(&commit)?;
        self.update(|p| {
            p.processed += n;
            p.failed += failed;
            p.keys += new_keys;
        });
        Ok(())
    }

    /// Fails unless the range holds events or the topic holds none.
    fn refuse_an_empty_range(&mut self, total: u64) -> anyhow::Result<()> {
        if total > 0 {
            return Ok(());
        }
        let held: u64 = self
            .reader
            .watermarks()?
            .iter()
            .map(|(low, high)| high.saturating_sub(*low))
            .sum();
        if held > 0 {
            anyhow::bail!(
                "the range to rebuild holds no events (from {:?} up to the live offsets) while topic \
                 {:?} holds {held}: refusing to replace the live state with an empty one",
                self.reader
                    .spans()
                    .iter()
                    .map(|s| s.start)
                    .collect::<Vec<_>>(),
                self.config.topic
            );
        }
        Ok(())
    }

    fn run(mut self, lock: &PipelineLock) -> anyhow::Result<()> {
        // Chase the live pipeline without stopping it.
        let total = self.chase_live()?;
        self.refuse_an_empty_range(total)?;
        loop {
            let read = self.read_to_ends()?;
            self.chase_live()?;
            if read < CLOSE_ENOUGH {
                break;
            }
        }
        // Catch up exactly and switch, with the live worker paused.
        self.update(|p| p.phase = Phase::Switching);
        let _guard = crate::lock(lock);
        let total = self.chase_live()?;
        self.refuse_an_empty_range(total)?;
        self.read_to_ends()?;
        if !self.reader.complete() {
            anyhow::bail!("the rebuild did not read its whole range; the live state is unchanged");
        }
        let spans = self.reader.spans().to_vec();
        self.update(|p| p.partitions.clone_from(&spans));
        let swap = self.plan_swap(&spans)?;
        self.store.swap_rebuilt(&swap)?;
        Ok(())
    }

    /// What the swap replaces besides the states: the live dead letters and
    /// parked events whose events lie in the rebuilt range give way to the
    /// rebuild's; quarantine counts become those left open.
    fn plan_swap(&self, spans: &[Span]) -> anyhow::Result<Swap> {
        let (pipeline, ns) = (self.config.name.as_str(), self.ns.as_str());
        let in_range = |o: &Origin| {
            o.topic == self.config.topic
                && spans
                    .get(o.partition as usize)
                    .is_some_and(|s| o.offset >= s.start)
        };
        let mut swap = Swap {
            pipeline: pipeline.to_owned(),
            ns: ns.to_owned(),
            // Rebuilt states rank as the newest changes.
            stamp_us: super::outputs::next_stamp(
                self.store.last_stamp(pipeline, self.intake.partitions())?,
            ),
            ..Swap::default()
        };
        let mut open: HashMap<String, u64> = HashMap::new();
        for (id, json) in all_dead_letters(&self.store, pipeline)? {
            let dl = DeadLetter::from_json(&json)
                .map_err(|e| anyhow::anyhow!("dead letter {id} of {pipeline:?}: {e}"))?;
            // Handlers do not run in a rebuild: their dead letters stay. A
            // fired timer's failure goes with the live timers: the
            // rebuild's timers replace them.
            if dl.stage != Stage::Handle
                && (in_range(&dl.origin()) || *dl.origin().topic == *self.timer_topic)
            {
                swap.remove_dead.push(id);
            } else if dl.stage == Stage::Aggregate
                && let Some(key) = dl.key
            {
                *open.entry(key).or_default() += 1;
            }
        }
        swap.last_dead_id = self.store.last_dead_id(pipeline)?;
        for (_, json) in all_dead_letters(&self.store, ns)? {
            let dl = DeadLetter::from_json(&json)
                .map_err(|e| anyhow::anyhow!("a rebuilt dead letter: {e}"))?;
            swap.last_dead_id += 1;
            swap.add_dead
                .push((swap.last_dead_id, dl.to_json(swap.last_dead_id)));
            if dl.stage == Stage::Aggregate
                && let Some(key) = dl.key
            {
                *open.entry(key).or_default() += 1;
            }
        }
        for (key, seq, bytes) in self.store.parked_all(pipeline)? {
            let r = LogRecord::decode(&bytes)?;
            // A parked record carries its origin in its first source header
            // (one without is kept: nothing is dropped that cannot be placed).
            if in_range(&Origin::of(&r.headers, "", 0, 0)) {
                swap.remove_parked.push((key, seq));
            }
        }
        swap.last_park_seq = self.store.last_park_seq(pipeline)?;
        for (key, _, bytes) in self.store.parked_all(ns)? {
            swap.last_park_seq += 1;
            swap.add_parked.push((key, swap.last_park_seq, bytes));
        }
        if self.policy.quarantines() {
            let mut keys: HashSet<String> = open.keys().cloned().collect();
            keys.extend(
                self.store
                    .quarantined_keys(pipeline)?
                    .into_iter()
                    .map(|(k, _)| k),
            );
            swap.quarantine = keys
                .into_iter()
                .map(|k| {
                    let n = open.get(&k).copied().unwrap_or(0);
                    (k, n)
                })
                .collect();
        }
        Ok(swap)
    }
}

/// Every dead letter of a pipeline (or namespace), oldest first.
fn all_dead_letters(store: &Store, pipeline: &str) -> anyhow::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.dead_letters(pipeline, after, 10_000)?;
        let Some((last, _)) = page.last() else {
            return Ok(out);
        };
        after = *last;
        out.extend(page);
    }
}

/// Keys quarantined by open dead letters whose events lie before the range
/// that starts at `spans` (those stay open after the swap).
fn held_before(
    store: &Store,
    config: &PipelineConfig,
    spans: &[Span],
) -> anyhow::Result<HashSet<String>> {
    let mut held = HashSet::new();
    for (id, json) in all_dead_letters(store, &config.name)? {
        let dl = DeadLetter::from_json(&json)
            .map_err(|e| anyhow::anyhow!("dead letter {id} of {:?}: {e}", config.name))?;
        let o = dl.origin();
        let before = o.topic != config.topic
            || spans
                .get(o.partition as usize)
                .is_none_or(|s| o.offset < s.start);
        if dl.stage == Stage::Aggregate
            && before
            && let Some(key) = dl.key
        {
            held.insert(key);
        }
    }
    Ok(held)
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
    /// Replayed dead letters wait in the replay topic: a rebuild now would
    /// apply them twice.
    #[error(
        "pipeline {pipeline:?} still has {waiting} replayed dead letters waiting in {topic:?}; \
         replay again once it has applied them"
    )]
    ReplaysWaiting {
        /// The pipeline.
        pipeline: String,
        /// Its replay topic.
        topic: String,
        /// Records not yet applied.
        waiting: u64,
    },
    /// The store could not be read.
    #[error("pipeline {pipeline:?}: {source}")]
    Store {
        /// The pipeline.
        pipeline: String,
        /// Cause.
        #[source]
        source: crate::store::StoreError,
    },
}

/// What a replay reads and writes.
pub struct Inputs {
    /// The pipeline's source, read by position.
    pub history: History,
    /// How its records are decoded and keyed.
    pub intake: Intake,
    /// The embedded log (it holds the pipeline's replay topic) and the store.
    pub log: Arc<EmbeddedLog>,
    /// The pipeline's lock.
    pub lock: PipelineLock,
    /// Where its progress goes.
    pub tracker: Tracker,
}

/// Starts a replay on its own thread.
///
/// # Errors
/// [`ReplayError`] when one is running, the pipeline keeps no state, or
/// replayed dead letters still wait to be applied.
pub fn start(
    config: PipelineConfig,
    aggregator: Option<Instance>,
    inputs: Inputs,
    from: From,
) -> Result<Progress, ReplayError> {
    let Inputs {
        history,
        intake,
        log,
        lock,
        tracker,
    } = inputs;
    let Some(aggregator) = aggregator else {
        return Err(ReplayError::NoState(config.name));
    };
    let replay_topic = config.replay_topic();
    let applied = log
        .store()
        .offset(&config.name, &replay_topic, 0)
        .map_err(|source| ReplayError::Store {
            pipeline: config.name.clone(),
            source,
        })?;
    let waiting = log.high_watermark(&replay_topic, 0).saturating_sub(applied);
    if waiting > 0 {
        return Err(ReplayError::ReplaysWaiting {
            pipeline: config.name,
            topic: replay_topic,
            waiting,
        });
    }
    let progress = Progress {
        pipeline: config.name.clone(),
        phase: Phase::Rebuilding,
        from,
        processed: 0,
        total: 0,
        failed: 0,
        keys: 0,
        partitions: Vec::new(),
        plugin_version: aggregator.plugin().version.clone(),
        started_at_ms: now_ms(),
        finished_at_ms: None,
        error: None,
    };
    {
        let mut t = crate::lock(&tracker);
        if t.as_ref().is_some_and(|p| p.phase.running()) {
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
            let store = log.store().clone();
            let result = (|| -> anyhow::Result<()> {
                store.clear_namespace(&ns)?;
                let rewind = history.open(&config.topic)?;
                let reader =
                    RangeReader::open(rewind, &config.topic, from, history.stall_timeout())?;
                let policy = Policy::of(&aggregator, &config);
                let held = if policy.quarantines() {
                    held_before(&store, &config, reader.spans())?
                } else {
                    HashSet::new()
                };
                tracing::info!(pipeline = %config.name, ?from, "replay started");
                Rebuild {
                    intake: intake.clone(),
                    ns: ns.clone(),
                    aggregator,
                    policy,
                    store: store.clone(),
                    reader,
                    tracker: tracker.clone(),
                    held,
                    seqs: vec![0; intake.partitions() as usize],
                    stamp_us: 0,
                    dead_ids: DeadIds::Sequential(0),
                    clock: super::timers::Clock::new(&config, intake.partitions()),
                    timer_topic: config.timer_topic().into(),
                    fired: 0,
                    config: config.clone(),
                }
                .run(&lock)
            })();
            let mut t = crate::lock(&tracker);
            if let Some(p) = t.as_mut() {
                p.finished_at_ms = Some(now_ms());
                match result {
                    Ok(()) => {
                        p.phase = Phase::Done;
                        tracing::info!(
                            pipeline = %config.name, processed = p.processed, keys = p.keys,
                            dead_lettered = p.failed, "replay done; rebuilt state is live"
                        );
                    }
                    Err(e) => {
                        p.phase = Phase::Failed;
                        p.error = Some(format!("{e:#}"));
                        tracing::error!(pipeline = %config.name, error = %format!("{e:#}"), "replay failed; the live state is unchanged");
                        let _ = store.clear_namespace(&ns);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(pipeline = %name, error = %e, "cannot start the replay thread");
        if let Some(p) = crate::lock(&tracker_for_error).as_mut() {
            p.phase = Phase::Failed;
            p.error = Some(format!("cannot start the replay thread: {e}"));
        }
    }
    Ok(progress)
}
