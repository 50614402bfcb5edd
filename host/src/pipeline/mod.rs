//! The pipeline worker: one thread per pipeline runs the stages in order —
//! source → decode → route → execute → commit → notify — one micro-batch at
//! a time.
//!
//! Exactly-once: a micro-batch's new states, latest-N index, change history,
//! emitted records, dead letters and next source offsets are written in one
//! atomic store batch. After a crash the worker resumes from the stored
//! offsets, so an event is never lost and never applied twice.

mod batch_size;
pub mod dead_letter;
pub mod fold;
pub mod intake;
pub mod outputs;
pub mod quarantine;
pub mod replay;
pub mod retry;
pub mod schedules;
pub mod shadow;
mod state_cache;
pub mod timers;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::PipelineConfig;
use crate::execute::bindings::Event;
use crate::execute::{Instance, KeyInput};
use crate::notify::Hub;
use crate::sink::Sink;
use crate::source::{Limit, Source, SourceRecord};
use crate::store::Store;
use batch_size::BatchSize;
use fold::{ByKey, Policy};
pub use intake::{Intake, Item, Prepared, Views};
use outputs::{Folder, Outputs, Target, shared_changes};
use state_cache::StateCache;

/// The header carrying an emitted record's deterministic id:
/// `{source topic}/{partition}/{offset}/{index}` for a record a plugin
/// emitted (`{input's id}/{index}` when the input carries one),
/// `{pipeline}/{partition}/changes/{seq}` for a changelog record,
/// `{source topic}/{partition}/{offset}/dead` for a dead-letter record,
/// `{pipeline}/{partition}/dead/{id}/open` (or `/resolved`) for a dead
/// letter in a state changelog.
pub const ID_HEADER: &str = "eddy-id";

/// On a changelog record: the change number of its partition.
pub const SEQ_HEADER: &str = "eddy-seq";

/// On a changelog record: the next offset of the input partition after the
/// batch that produced it (what the state reflects).
pub const SOURCE_OFFSET_HEADER: &str = "eddy-source-offset";

/// On a changelog record: set (`1`) on the last record a batch wrote to its
/// partition; a restore that stops on such a record has a whole batch.
pub const BATCH_END_HEADER: &str = "eddy-batch-end";

/// On a state changelog record (cluster mode): the owner epoch it was
/// written under — the changelog offset of the fence its host wrote when it
/// took the partition. A restore skips records of an epoch older than the
/// last fence before them (a host that lost the partition and still wrote).
pub const EPOCH_HEADER: &str = "eddy-epoch";

/// On a state changelog record: the change's commit stamp (microseconds).
pub const STAMP_HEADER: &str = "eddy-stamp";

/// On a state changelog record: the version of the plugin that produced it.
pub const VERSION_HEADER: &str = "eddy-plugin-version";

/// On a state changelog record whose state is not JSON: its format
/// (`msgpack`), as the plugin wrote it.
pub const STATE_FORMAT_HEADER: &str = "eddy-state-format";

/// On a fence record of a state changelog: the host that took the
/// partition (the record's offset is its new epoch).
pub const FENCE_HEADER: &str = "eddy-fence";

/// On a state changelog record (cluster mode): the id of the dead letter it
/// carries (its key is `\0eddy-dead/{id}`, its value the letter).
pub const DEAD_LETTER_HEADER: &str = "eddy-dead-letter";

/// On a record for the Kafka producer: its value is sent as null — a
/// tombstone, which compaction removes with its key (a resolved dead
/// letter in a state changelog).
pub const TOMBSTONE_HEADER: &str = "eddy-tombstone";

/// A running pipeline's parts.
pub struct Worker {
    config: PipelineConfig,
    intake: Intake,
    changelog_by_partition: bool,
    aggregator: Option<Instance>,
    handlers: Vec<Instance>,
    source: Box<dyn Source>,
    sink: Sink,
    store: Store,
    hub: Hub,
    /// Last change number per input partition.
    seqs: Vec<u64>,
    /// Last commit stamp.
    stamp_us: u64,
    /// Per input partition, the next offset to read (as committed).
    source_offsets: Vec<u64>,
    dead_ids: dead_letter::DeadIds,
    lock: PipelineLock,
    cache: StateCache,
    ownership: Option<Arc<crate::source::restore::Ownership>>,
    paused: Arc<PauseSwitch>,
    /// The embedded log, which holds the timer topic on every source.
    log: Arc<crate::source::embedded::EmbeddedLog>,
    /// Stream times and pending timers.
    clock: timers::Clock,
    /// Its schedules.
    scheduler: schedules::Scheduler,
}

/// Serialises a pipeline's batches with the control operations (dead-letter
/// replay and delete, a replay's switch-over) that change the same keys.
pub type PipelineLock = Arc<std::sync::Mutex<()>>;

/// The header naming where a replayed or released event first came from.
pub const SOURCE_HEADER: &str = "eddy-source";

/// An operator's pause of a pipeline, shared by the HTTP API and the
/// worker: asked by one, acknowledged by the other once it stopped reading.
#[derive(Debug, Default)]
pub struct PauseSwitch {
    asked: AtomicBool,
    idle: AtomicBool,
}

impl PauseSwitch {
    /// A switch that starts paused (or not).
    pub fn new(paused: bool) -> Self {
        PauseSwitch {
            asked: AtomicBool::new(paused),
            idle: AtomicBool::new(false),
        }
    }

    /// Asks the worker to pause (or resume).
    pub fn ask(&self, paused: bool) {
        self.asked.store(paused, Ordering::SeqCst);
    }

    /// Whether a pause is asked.
    pub fn is_asked(&self) -> bool {
        self.asked.load(Ordering::SeqCst)
    }

    /// Whether the worker finished its batch and reads nothing.
    pub fn is_idle(&self) -> bool {
        self.idle.load(Ordering::SeqCst)
    }
}

/// What a worker reads from and writes to.
pub struct Wiring {
    /// Input (the topic, chained with the pipeline's replay topic).
    pub source: Box<dyn Source>,
    /// How its records are decoded and keyed.
    pub intake: Intake,
    /// Whether each change goes to the changelog partition of its input
    /// partition (the changelog has as many), else by key.
    pub changelog_by_partition: bool,
    /// Where emitted records go.
    pub sink: Sink,
    /// The state store.
    pub store: Store,
    /// Committed-change notifications.
    pub hub: Hub,
    /// The pipeline's lock, shared with control operations.
    pub lock: PipelineLock,
    /// Cluster mode: the partitions this host owns, with their epochs.
    pub ownership: Option<Arc<crate::source::restore::Ownership>>,
    /// An operator's pause of the pipeline.
    pub paused: Arc<PauseSwitch>,
    /// The embedded log (its timer topic).
    pub log: Arc<crate::source::embedded::EmbeddedLog>,
    /// The schedules that trigger it.
    pub schedules: Vec<crate::config::ScheduleConfig>,
}

impl Worker {
    /// Assembles a worker; state sequence numbers resume from the store.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn new(
        config: PipelineConfig,
        aggregator: Option<Instance>,
        handlers: Vec<Instance>,
        wiring: Wiring,
    ) -> anyhow::Result<Self> {
        let Wiring {
            source,
            intake,
            changelog_by_partition,
            sink,
            store,
            hub,
            lock,
            ownership,
            paused,
            log,
            schedules,
        } = wiring;
        let seqs = store.last_seqs(&config.name, intake.partitions())?;
        let stamp_us = store.last_stamp(&config.name, intake.partitions())?;
        let source_offsets = (0..intake.partitions())
            .map(|p| store.offset(&config.name, &config.topic, p))
            .collect::<Result<Vec<_>, _>>()?;
        let dead_ids = dead_letter::DeadIds::load(
            &store,
            &config.name,
            ownership.as_ref().map(|_| intake.partitions()),
        )?;
        let clock = timers::Clock::load(
            &store,
            &config,
            intake.partitions(),
            ownership.as_ref().map(|o| o.epochs()),
        )?;
        crate::telemetry::timers_pending(&config.name, clock.pending);
        let (scheduler, started) = schedules::Scheduler::open(
            &store,
            &config.name,
            schedules,
            (crate::now_ms(), ownership.is_some()),
        )?;
        if !started.is_empty() {
            store.commit(&crate::store::Commit {
                pipeline: config.name.clone(),
                schedule_marks: started.marks,
                schedule_runs: started.runs,
                ..crate::store::Commit::default()
            })?;
        }
        Ok(Worker {
            intake,
            changelog_by_partition,
            cache: StateCache::at(store.state_epoch()),
            config,
            aggregator,
            handlers,
            source,
            sink,
            store,
            hub,
            seqs,
            stamp_us,
            source_offsets,
            dead_ids,
            lock,
            ownership,
            paused,
            log,
            clock,
            scheduler,
        })
    }

    /// Runs until `stop` is set. Returns an error only when committing
    /// fails (the store is broken): the host then stops, and a restart
    /// resumes from the last commit.
    ///
    /// # Errors
    /// A store failure while committing.
    pub fn run(mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let name = self.config.name.clone();
        tracing::info!(pipeline = %name, topic = %self.config.topic, "pipeline started");
        let mut size = BatchSize::new(
            self.config.max_batch,
            Duration::from_millis(self.config.batch_target_ms),
        );
        let mut was_paused = false;
        let mut was_low = false;
        while !stop.load(Ordering::Relaxed) {
            let paused = self.paused.is_asked();
            self.paused.idle.store(paused, Ordering::SeqCst);
            if paused != was_paused {
                was_paused = paused;
                tracing::info!(
                    pipeline = %name,
                    "{}",
                    if paused { "pipeline paused" } else { "pipeline resumed" }
                );
            }
            // A low disk stops input as a pause does, until space returns.
            let low = self.store.low_space();
            if low.is_some() != was_low {
                was_low = low.is_some();
                match &low {
                    Some(low) => {
                        tracing::error!(pipeline = %name, free_bytes = low.free, min_free_bytes = low.min, "{low}")
                    }
                    None => {
                        tracing::info!(pipeline = %name, "the store's disk has space again: input resumed")
                    }
                }
            }
            // Due timers fire while paused too (their records wait in the
            // timer topic), not while the disk is low.
            if low.is_none() {
                self.fire_timers()?;
            }
            if paused || low.is_some() {
                if let Err(e) = self.source.idle(Duration::from_millis(200)) {
                    tracing::error!(pipeline = %name, error = %e, "source failed while input is paused; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                continue;
            }
            let limit = Limit {
                records: size.limit,
                bytes: self.config.max_batch_bytes,
            };
            let records = match self.source.poll(limit, Duration::from_millis(200)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(pipeline = %name, error = %e, "source failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            // Nothing new: the source may have moved past records it never
            // hands out (a transaction's markers), whose offsets are
            // committed like a batch's, with no state change.
            let passed = if records.is_empty() {
                self.source.passed()
            } else {
                Vec::new()
            };
            if records.is_empty() && passed.is_empty() {
                continue;
            }
            let started = Instant::now();
            let n = records.len();
            if !self.process(records, passed, stop)? {
                break;
            }
            if n > 0 {
                size.observe(n, started.elapsed());
            }
            tracing::debug!(
                pipeline = %name,
                events = n,
                elapsed_us = started.elapsed().as_micros() as u64,
                committed_at_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as u64)
                    .unwrap_or(0),
                "batch committed"
            );
        }
        tracing::info!(pipeline = %name, "pipeline stopped");
        Ok(())
    }

    /// Processes and commits one micro-batch — decode and key, handlers,
    /// aggregator by key, build the commit, commit, notify — holding the
    /// pipeline's lock so dead-letter replays and a replay's switch-over
    /// never interleave with a batch. Returns `false` when it stopped
    /// before committing (a stop request while the schema registry was
    /// unreachable): nothing of the batch is committed then, and the next
    /// start processes it again.
    fn process(
        &mut self,
        records: Vec<SourceRecord>,
        passed: Vec<(String, u32, u64)>,
        stop: &AtomicBool,
    ) -> anyhow::Result<bool> {
        let started = Instant::now();
        let started_at = std::time::SystemTime::now();
        let consumed = records.len();
        let lock = self.lock.clone();
        let _guard = crate::lock(&lock);
        self.between_batches()?;
        let mut offsets = next_offsets(&records);
        offsets.extend(passed);
        let records = self.without_stale_timers(records);
        let input = self.config.topic.as_str();
        let before: Vec<Option<i64>> = (0..self.intake.partitions())
            .map(|p| self.clock.due_until(p))
            .collect();
        let stream_times = self.clock.advance(
            records
                .iter()
                .filter(|r| *r.topic == *input)
                .map(|r| (r.partition, r.timestamp_ms)),
        );
        for (topic, partition, next) in &offsets {
            if *topic == self.config.topic
                && let Some(o) = self.source_offsets.get_mut(*partition as usize)
            {
                *o = *next;
            }
        }
        let Some(mut prepared) = self
            .intake
            .prepare_batch(records, &mut || !stop.load(Ordering::Relaxed))
        else {
            return Ok(false);
        };
        let decoded_at = std::time::SystemTime::now();
        let spans = self.begin_spans(&mut prepared.items, started_at);
        let mut out = Outputs {
            dead: prepared.dead,
            ..Outputs::default()
        };
        if self.ownership.is_some() {
            out.landed = prepared.items.iter().filter_map(timers::landed).collect();
        }
        // Only a pipeline that uses event time pays for the header.
        let watermarks: Vec<Option<Vec<u8>>> = if self.clock.event_time {
            (0..self.intake.partitions())
                .map(|p| before.get(p as usize).copied().flatten())
                .map(|w| w.map(|w| w.to_string().into_bytes()))
                .collect()
        } else {
            Vec::new()
        };
        let views = Views::with_watermarks(&prepared.items, &watermarks);
        let events = views.events();
        if !self.handlers.is_empty() {
            // Handlers see events only: a fired timer is the aggregator's.
            let (items, events): (Vec<&Item>, Vec<Event<'_>>) = prepared
                .items
                .iter()
                .zip(&events)
                .filter(|(item, _)| {
                    !item.is_timer()
                        || (self.aggregator.is_none()
                            && schedules::Scheduler::run_of(item).is_some())
                })
                .map(|(item, event)| (item, event.clone()))
                .unzip();
            for i in 0..self.handlers.len() {
                self.run_handler(i, &items, &events, &mut out);
            }
        }
        let mut timers_added = 0;
        if self.aggregator.is_some() {
            timers_added = self.run_aggregator(&prepared.items, &events, &mut out)?;
        }
        drop(events);
        let folded_at = std::time::SystemTime::now();
        // The traced events that were dead-lettered, and why.
        let failed: Vec<(usize, String)> = if spans.is_empty() {
            Vec::new()
        } else {
            spans
                .iter()
                .filter_map(|span| {
                    let r = &prepared.items.get(span.index)?.record;
                    out.dead
                        .iter()
                        .find(|d| {
                            *d.topic == *r.topic
                                && d.partition == r.partition
                                && d.offset == r.offset
                        })
                        .map(|d| (span.index, d.error.clone()))
                })
                .collect()
        };
        self.clock.expect(&out.timers);
        let uses_event_time = !self.clock.event_time
            && out.timers.iter().any(
                |op| matches!(op, crate::store::TimerOp::Set(t) if t.domain == crate::store::TimeDomain::Event),
            );
        if self.ownership.is_some() && (self.clock.event_time || uses_event_time) {
            out.stream_times.clone_from(&stream_times);
        }
        let held: Vec<(&str, u64)> = out
            .park
            .iter()
            .map(|(_, r)| (&*r.topic, r.offset))
            .collect();
        let runs = if self.scheduler.is_empty() {
            Vec::new()
        } else {
            self.scheduler.finished(
                &self.store,
                prepared.items.iter(),
                &out.dead,
                &held,
                crate::now_ms(),
            )?
        };
        if self.ownership.is_some() && !runs.is_empty() {
            out.runs = self
                .scheduler
                .changes(&runs)
                .into_iter()
                .map(|c| (self.intake.partition_of(&c.key), c))
                .collect();
        }
        let schedule_marks: Vec<(String, crate::store::ScheduleMark)> = out
            .runs
            .iter()
            .map(|(_, c)| (c.name.clone(), c.mark))
            .collect();
        let dead_count = out.dead.len();
        let epochs = self.ownership.as_ref().map(|o| o.epochs());
        let restore = self
            .ownership
            .as_ref()
            .zip(epochs.as_deref())
            .map(|(o, e)| (o.topic.as_str(), e));
        let (mut commit, emits) = out.into_commit(Target {
            pipeline: &self.config.name,
            input: &self.config.topic,
            name: &self.config.name,
            store: &self.store,
            seqs: &mut self.seqs,
            stamp_us: &mut self.stamp_us,
            dead_ids: &mut self.dead_ids,
            changelog: self.config.changelog_topic.as_deref(),
            changelog_by_partition: self.changelog_by_partition,
            source_offsets: &self.source_offsets,
            restore,
            dlq: self.config.dlq_topic.as_deref(),
            plugin_version: self
                .aggregator
                .as_ref()
                .map(|a| a.plugin().version.clone())
                .unwrap_or_default(),
            aggregator: self.aggregator.as_ref().map(|a| &*a.plugin().name),
        })?;
        commit.offsets = offsets;
        commit.uses_event_time = uses_event_time;
        commit.stream_times = stream_times;
        commit.schedule_runs = runs;
        commit.schedule_marks = schedule_marks;
        if let (Some(o), Sink::Kafka(k)) = (&self.ownership, &self.sink) {
            commit.restore_points = o.checkpoints(k);
        }
        self.sink
            .commit(&mut commit, emits)
            .map_err(|e| anyhow::anyhow!("pipeline {}: commit failed: {e}", self.config.name))?;
        let delivered_after = match &self.sink {
            Sink::Kafka(k) => Some(k.outbox_last()),
            Sink::Embedded(_) => None,
        };
        self.source
            .committed(&std::mem::take(&mut commit.offsets), delivered_after);
        if commit.uses_event_time {
            self.clock.event_time = true;
            tracing::info!(pipeline = %self.config.name, "the pipeline set its first event-time timer: its events carry the partition's watermark (eddy-watermark) from now on");
        }
        if timers_added != 0 {
            self.clock.pending = self.clock.pending.saturating_add_signed(timers_added);
            crate::telemetry::timers_pending(&self.config.name, self.clock.pending);
        }
        if !spans.is_empty() {
            let phases = crate::trace::Phases {
                started: started_at,
                decoded: decoded_at,
                folded: folded_at,
                committed: std::time::SystemTime::now(),
            };
            let plugins: Vec<String> = self
                .aggregator
                .iter()
                .chain(&self.handlers)
                .map(|i| i.plugin().name.to_string())
                .collect();
            for span in spans {
                let why = failed
                    .iter()
                    .find(|(i, _)| *i == span.index)
                    .map(|(_, e)| e.as_str());
                crate::trace::end(span, &phases, &plugins, why);
            }
        }
        let changes = shared_changes(&mut commit);
        self.hub.publish(&self.config.name, &changes);
        for change in changes {
            self.cache.put(change);
        }
        if consumed > 0 {
            crate::telemetry::batch(
                &self.config.name,
                consumed,
                consumed.saturating_sub(dead_count),
                started.elapsed(),
            );
        }
        Ok(true)
    }

    /// With spans exported: opens the `eddy.process` span of each event
    /// whose record carries a sampled `traceparent`, and points the
    /// record's header at it, so what the event leads to is its child.
    fn begin_spans(
        &self,
        items: &mut [Item],
        started: std::time::SystemTime,
    ) -> Vec<crate::trace::EventSpan> {
        if !crate::trace::exporting() {
            return Vec::new();
        }
        let mut spans = Vec::new();
        for (index, item) in items.iter_mut().enumerate() {
            let Some(parent) = crate::trace::Parent::of(&item.record.headers) else {
                continue;
            };
            let attributes = vec![
                opentelemetry::KeyValue::new(
                    "messaging.destination.name",
                    item.record.topic.to_string(),
                ),
                opentelemetry::KeyValue::new(
                    "messaging.destination.partition.id",
                    i64::from(item.record.partition),
                ),
                opentelemetry::KeyValue::new(
                    "messaging.kafka.offset",
                    i64::try_from(item.record.offset).unwrap_or(i64::MAX),
                ),
                opentelemetry::KeyValue::new("eddy.key", item.key.clone()),
            ];
            if let Some(span) =
                crate::trace::begin(&self.config.name, &parent, started, attributes, index)
            {
                crate::trace::set_header(&mut item.record.headers, &span.context);
                spans.push(span);
            }
        }
        spans
    }

    /// Between batches: picks up newly deployed plugin versions (so each
    /// event is processed by exactly one version), and, after a replay
    /// swapped in rebuilt states (new change numbers, new dead letters),
    /// drops the states it kept and reads its numbers again.
    fn between_batches(&mut self) -> anyhow::Result<()> {
        for instance in self.aggregator.iter_mut().chain(self.handlers.iter_mut()) {
            instance.refresh();
        }
        self.refresh_clock()?;
        let epoch = self.store.state_epoch();
        if epoch != self.cache.epoch {
            self.cache.clear();
            self.cache.epoch = epoch;
            let partitions = self.intake.partitions();
            self.seqs = self.store.last_seqs(&self.config.name, partitions)?;
            self.stamp_us = self.store.last_stamp(&self.config.name, partitions)?;
            self.dead_ids = dead_letter::DeadIds::load(
                &self.store,
                &self.config.name,
                self.ownership.as_ref().map(|_| partitions),
            )?;
            self.source_offsets = (0..partitions)
                .map(|p| self.store.offset(&self.config.name, &self.config.topic, p))
                .collect::<Result<Vec<_>, _>>()?;
        }
        Ok(())
    }

    /// Fires the timers that are due: removes them and appends their
    /// records to the pipeline's timer topic in one atomic write, in the
    /// order they fell due; the next batches fold them.
    ///
    /// # Errors
    /// A store failure.
    fn fire_timers(&mut self) -> anyhow::Result<()> {
        /// Timers fired per write at most.
        const FIRE_LIMIT: usize = 10_000;
        self.refresh_clock()?;
        let now = crate::now_ms();
        let runs = self.scheduler.due(now);
        // Cluster mode: only the partitions this host owns (and restored).
        let epochs = self.ownership.as_ref().map(|o| o.epochs());
        let owned = |p: u32| {
            epochs
                .as_ref()
                .is_none_or(|e| e.get(p as usize).copied().flatten().is_some())
        };
        if (self.clock.pending == 0 || self.aggregator.is_none()) && runs.is_empty() {
            return Ok(());
        }
        let name = self.config.name.clone();
        let mut due = Vec::new();
        // Only look where a timer may be due (a lookup walks past the
        // entries replaced timers left behind).
        if self.clock.pending > 0 && self.aggregator.is_some() && now >= self.clock.wall_from {
            let (fired, next) = self
                .store
                .due_wall_timers_of(&name, now, FIRE_LIMIT, owned)?;
            due = fired;
            self.clock.wall_from = next.unwrap_or(i64::MAX);
        }
        for partition in 0..self.intake.partitions() {
            let room = FIRE_LIMIT.saturating_sub(due.len());
            if room == 0 || self.clock.pending == 0 {
                break;
            }
            if !owned(partition) {
                continue;
            }
            let from = self
                .clock
                .event_from
                .get(partition as usize)
                .copied()
                .unwrap_or(i64::MIN);
            if let Some(until) = self.clock.due_until(partition).filter(|u| *u >= from) {
                let (fired, next) = self.store.due_event_timers(&name, partition, until, room)?;
                due.extend(fired);
                if let Some(f) = self.clock.event_from.get_mut(partition as usize) {
                    *f = next.unwrap_or(i64::MAX);
                }
            }
        }
        if due.is_empty() && runs.is_empty() {
            return Ok(());
        }
        due.sort_by_key(|t| t.at_ms);
        let topic = self.config.timer_topic();
        let epoch_of = |t: &crate::store::Timer| {
            epochs
                .as_ref()
                .and_then(|e| e.get(t.partition as usize).copied().flatten())
        };
        let run_records = runs.records.into_iter().map(|mut r| {
            // Cluster mode: a run carries its partition's epoch like a timer.
            let partition = r
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(|k| self.intake.partition_of(k));
            if let Some(epoch) = epochs
                .as_ref()
                .zip(partition)
                .and_then(|(e, p)| e.get(p as usize).copied().flatten())
            {
                r.headers
                    .push((EPOCH_HEADER.to_owned(), epoch.to_string().into_bytes()));
            }
            r
        });
        let records = due
            .iter()
            .map(|t| timers::fired_record(t, epoch_of(t), self.clock.generation))
            .chain(run_records)
            .map(|r| (topic.clone(), r))
            .collect();
        let wall = due
            .iter()
            .filter(|t| t.domain == crate::store::TimeDomain::Wall)
            .count();
        let fired = due.len();
        let mut commit = crate::store::Commit {
            pipeline: name.clone(),
            timers_fired: due,
            timers_in_flight: self.ownership.is_some(),
            schedule_marks: runs.marks,
            schedule_runs: runs.runs,
            ..crate::store::Commit::default()
        };
        let lock = self.lock.clone();
        let _guard = crate::lock(&lock);
        crate::sink::commit_embedded(&self.log, &mut commit, records)
            .map_err(|e| anyhow::anyhow!("pipeline {name}: firing timers failed: {e}"))?;
        self.clock.pending = self.clock.pending.saturating_sub(fired as u64);
        crate::telemetry::timers_fired(&name, "wall", wall);
        crate::telemetry::timers_fired(&name, "event", fired - wall);
        crate::telemetry::timers_pending(&name, self.clock.pending);
        tracing::debug!(pipeline = %name, fired, "timers fired");
        Ok(())
    }

    /// Reads the store's timers again when a restore (or a replay's
    /// switch-over) changed them, or partitions moved.
    fn refresh_clock(&mut self) -> anyhow::Result<()> {
        let owned = self.ownership.as_ref().map(|o| o.epochs());
        if self.store.state_epoch() == self.clock.epoch && owned == self.clock.owned {
            return Ok(());
        }
        if let Some(epochs) = &owned
            && !self.scheduler.is_empty()
        {
            let started = self
                .scheduler
                .reconcile(&self.store, crate::now_ms(), |key| {
                    epochs
                        .get(self.intake.partition_of(key) as usize)
                        .copied()
                        .flatten()
                })?;
            if !started.is_empty() {
                self.store.commit(&crate::store::Commit {
                    pipeline: self.config.name.clone(),
                    schedule_marks: started.marks,
                    schedule_runs: started.runs,
                    ..crate::store::Commit::default()
                })?;
            }
        }
        self.clock =
            timers::Clock::load(&self.store, &self.config, self.intake.partitions(), owned)?;
        crate::telemetry::timers_pending(&self.config.name, self.clock.pending);
        Ok(())
    }

    /// Drops the fired timers that are not this host's to fold any more:
    /// fired before a replay's switch-over (the rebuilt timers replace
    /// them), or, in cluster mode, of a partition this host does not own,
    /// or fired under an earlier epoch of it (the partition moved since:
    /// its new owner fires them, or, when it came back here, they were put
    /// back and fire anew). Their offsets are committed all the same.
    fn without_stale_timers(&self, records: Vec<SourceRecord>) -> Vec<SourceRecord> {
        let topic = self.config.timer_topic();
        // The timer topic is the chain's first source: a batch without a
        // fired timer at its front holds none.
        if records.first().is_none_or(|r| *r.topic != *topic) {
            return records;
        }
        let epochs = self.ownership.as_ref().map(|o| o.epochs());
        records
            .into_iter()
            .filter(|r| {
                if *r.topic != *topic {
                    return true;
                }
                let run = r
                    .headers
                    .iter()
                    .any(|(n, _)| n == schedules::SCHEDULE_HEADER);
                if !run && timers::fired_generation(r) != self.clock.generation {
                    tracing::debug!(
                        pipeline = %self.config.name, offset = r.offset,
                        "a timer fired before a replay's switch-over is not folded"
                    );
                    return false;
                }
                let Some(epochs) = &epochs else {
                    return true;
                };
                let partition = r
                    .key
                    .as_deref()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .map(|k| self.intake.partition_of(k));
                let now = partition.and_then(|p| epochs.get(p as usize).copied().flatten());
                let fired = timers::fired_epoch(r);
                let keep = now.is_some() && now == fired;
                if !keep {
                    tracing::debug!(
                        pipeline = %self.config.name, partition, fired_under = fired, epoch = now,
                        offset = r.offset, "a timer fired under another owner epoch is not folded"
                    );
                }
                keep
            })
            .collect()
    }

    /// Takes a fold's timer requests out of its emits into `out`, unless
    /// they would leave its key or the pipeline with more timers pending
    /// than allowed: then every event of the key in the batch fails with
    /// class `timer_limit` instead. Returns how many timers the fold adds
    /// (or removes); `added` is the batch's count so far.
    fn timer_budget(
        &self,
        key: &str,
        partition: u32,
        fold: &mut fold::KeyFold,
        events: usize,
        (added, out): (i64, &mut Outputs),
    ) -> anyhow::Result<i64> {
        let mut ops = Vec::new();
        for (_, emits) in &mut fold.emits {
            ops.extend(timers::take_requests(key, partition, emits));
        }
        if ops.is_empty() {
            return Ok(0);
        }
        let name = &self.config.name;
        let (count, change) = timers::change_of(&self.store, name, key, &mut ops)?;
        let after = (count as i64).saturating_add(change).max(0) as usize;
        let total = (self.clock.pending as i64).saturating_add(added + change);
        let over = if after > self.config.max_timers_per_key {
            Some(format!(
                "key {key:?} would have {after} timers pending; max_timers_per_key is {}",
                self.config.max_timers_per_key
            ))
        } else if change > 0 && total > i64::try_from(self.clock.max).unwrap_or(i64::MAX) {
            Some(format!(
                "pipeline {name:?} would have {total} timers pending; max_timers is {}",
                self.clock.max
            ))
        } else {
            None
        };
        let Some(message) = over else {
            out.timers.extend(ops);
            return Ok(change);
        };
        let plugin = self
            .aggregator
            .as_ref()
            .map(|a| a.plugin().name.to_string())
            .unwrap_or_default();
        let error = crate::execute::PluginError::TimerLimit { plugin, message };
        *fold = fold::KeyFold {
            state: None,
            version: 0,
            emits: Vec::new(),
            failed: (0..events)
                .map(|index| fold::Failed {
                    index,
                    error: error.clone(),
                    delays: Vec::new(),
                })
                .collect(),
            held_from: None,
        };
        Ok(0)
    }

    fn run_handler(
        &mut self,
        index: usize,
        items: &[&Item],
        events: &[Event<'_>],
        out: &mut Outputs,
    ) {
        let Some(handler) = self.handlers.get_mut(index) else {
            return;
        };
        let policy = Policy::of(handler, &self.config);
        let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
        let results = fold::handle(&policy, handler, &keys, events);
        let plugin = handler.plugin().clone();
        out.add_handled(&self.config.name, &plugin, items, results);
    }

    /// Folds the batch's events key by key: each key's current state from
    /// the worker's cache (or the store), then as few plugin calls as the
    /// batch needs ([`fold::aggregate_all`]). Returns how many timers the
    /// batch's folds add to those pending (negative: fewer).
    fn run_aggregator(
        &mut self,
        items: &[Item],
        events: &[Event<'_>],
        out: &mut Outputs,
    ) -> anyhow::Result<i64> {
        let by_key = ByKey::new(items.iter().map(|i| i.key.as_str()), events);
        let pipeline = self.config.name.clone();
        let Some(agg) = self.aggregator.as_mut() else {
            return Ok(0);
        };
        let plugin = agg.plugin().clone();
        let policy = Policy::of(agg, &self.config);
        let folder = Folder {
            pipeline: &pipeline,
            plugin: &plugin,
            quarantine: policy.quarantines(),
        };
        let mut keys = Vec::with_capacity(by_key.len());
        for (key, members, events) in by_key.iter() {
            let group: Vec<&Item> = members.iter().filter_map(|&i| items.get(i)).collect();
            if policy.quarantines() && self.store.quarantined(&pipeline, key)? > 0 {
                out.hold(key, &group);
                continue;
            }
            let partition = group.first().map_or(0, |i| i.partition);
            let current = match self.cache.get(key) {
                Some(change) => Current::Cached(change),
                None => match self.store.state(&pipeline, partition, key)? {
                    Some(stored) => {
                        let version = self.cache.version(key, stored.seq);
                        Current::Stored(stored, version)
                    }
                    None => Current::None,
                },
            };
            keys.push((key, group, events, current));
        }
        let inputs: Vec<KeyInput<'_>> = keys
            .iter()
            .map(|(key, _, events, current)| KeyInput {
                key,
                state: current.state(),
                version: current.version(),
                events,
            })
            .collect();
        let folds = fold::aggregate_all(&policy, agg, &inputs);
        drop(inputs);
        let mut added = 0;
        for ((key, group, _, current), mut fold) in keys.into_iter().zip(folds) {
            let partition = group.first().map_or(0, |i| i.partition);
            added += self.timer_budget(key, partition, &mut fold, group.len(), (added, out))?;
            out.add_fold(&folder, key, &group, fold, current.seq());
        }
        Ok(added)
    }
}

/// A key's state before a batch: the one the worker committed last (kept
/// in its cache), one read from the store (with the version the plugin
/// instance gave it, when the worker still knows it), or none yet.
enum Current {
    Cached(Arc<crate::store::Change>),
    Stored(crate::store::StoredState, u64),
    None,
}

impl Current {
    fn state(&self) -> Option<&crate::store::State> {
        match self {
            Current::Cached(c) => Some(&c.state),
            Current::Stored(s, _) => Some(&s.state),
            Current::None => None,
        }
    }

    /// The plugin instance's name for it (only a state this worker
    /// committed has one).
    fn version(&self) -> u64 {
        match self {
            Current::Cached(c) => c.version,
            Current::Stored(_, version) => *version,
            Current::None => 0,
        }
    }

    fn seq(&self) -> Option<u64> {
        match self {
            Current::Cached(c) => Some(c.seq),
            Current::Stored(s, _) => Some(s.seq),
            Current::None => None,
        }
    }
}

/// The next offset to read per (topic, partition) after `records`.
fn next_offsets(records: &[SourceRecord]) -> Vec<(String, u32, u64)> {
    let mut next: HashMap<(&str, u32), u64> = HashMap::new();
    for r in records {
        let n = next.entry((&*r.topic, r.partition)).or_insert(0);
        *n = (*n).max(r.offset + 1);
    }
    next.into_iter()
        .map(|((t, p), o)| (t.to_owned(), p, o))
        .collect()
}

/// Stops all workers when set.
pub type StopFlag = Arc<AtomicBool>;

/// Starts a worker on its own thread (fjall and wasmtime calls are
/// synchronous, so they stay off the async runtime).
///
/// # Errors
/// When the thread cannot be spawned.
pub fn spawn(
    worker: Worker,
    stop: StopFlag,
    on_fatal: impl FnOnce(anyhow::Error) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let name = format!("eddy-{}", worker.config.name);
    std::thread::Builder::new().name(name).spawn(move || {
        if let Err(e) = worker.run(&stop) {
            tracing::error!(error = %format!("{e:#}"), "pipeline failed");
            on_fatal(e);
        }
    })
}
