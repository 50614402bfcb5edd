//! The pipeline worker: one thread per pipeline runs the stages in order —
//! source → decode → route → execute → commit → notify — one micro-batch at
//! a time.
//!
//! Exactly-once: a micro-batch's new states, latest-N index, change history,
//! emitted records, dead letters and next source offsets are written in one
//! atomic store batch. After a crash the worker resumes from the stored
//! offsets, so an event is never lost and never applied twice.

pub mod dead_letter;
pub mod replay;
pub mod shadow;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::config::{OnDeadLetter, PipelineConfig};
use crate::execute::bindings::{Event, Header};
use crate::execute::{Emitted, Instance, PluginError};
use crate::notify::Hub;
use crate::route::KeySpec;
use crate::sink::Sink;
use crate::source::embedded::ProduceRecord;
use crate::source::{Limit, Source, SourceRecord, validate_topic_name};
use crate::store::{Change, Commit, LogRecord, Store};
use dead_letter::{DeadLetter, Stage};

/// The header carrying an emitted record's deterministic id:
/// `{source topic}/{partition}/{offset}/{index}` for a record a plugin
/// emitted (`{input's id}/{index}` when the input carries one),
/// `{pipeline}/changes/{seq}` for a changelog record,
/// `{source topic}/{partition}/{offset}/dead` for a dead-letter record.
pub const ID_HEADER: &str = "eddy-id";

/// A running pipeline's parts.
pub struct Worker {
    config: PipelineConfig,
    key: KeySpec,
    aggregator: Option<Instance>,
    handlers: Vec<Instance>,
    source: Box<dyn Source>,
    sink: Sink,
    store: Store,
    hub: Hub,
    seq: u64,
    dead_id: u64,
    lock: PipelineLock,
    cache: StateCache,
}

/// The states this worker committed last, so a key's next batch does not
/// read its state back from the store. Bounded by bytes (dropped whole when
/// full) and dropped whole when something else changed the pipeline's states
/// (a replay swapping in rebuilt states moves the change numbers on). Its
/// changes are the ones the SSE history holds, shared, not copied.
#[derive(Default)]
struct StateCache {
    states: HashMap<String, Arc<Change>>,
    bytes: usize,
    /// The store's state epoch the entries belong to.
    epoch: u64,
}

impl StateCache {
    const MAX_BYTES: usize = 64 << 20;

    fn get(&self, key: &str) -> Option<Arc<Change>> {
        self.states.get(key).cloned()
    }

    fn put(&mut self, change: Arc<Change>) {
        let size = change.key.len() + change.state.len();
        if self.bytes + size > Self::MAX_BYTES {
            self.clear();
        }
        self.bytes += size;
        if let Some(old) = self.states.insert(change.key.clone(), change) {
            // The key was already counted with the entry it replaces.
            self.bytes = self.bytes.saturating_sub(old.key.len() + old.state.len());
        }
    }

    fn clear(&mut self) {
        self.states.clear();
        self.bytes = 0;
    }
}

/// How many records the next micro-batch may take. Under a backlog (a
/// batch came back full) the size doubles while batches take less than half
/// the target time; it halves when one takes longer than the target.
#[derive(Debug, Clone, Copy)]
struct BatchSize {
    limit: usize,
    max: usize,
    target: Duration,
}

impl BatchSize {
    /// The size a worker starts with, and the least it goes down to.
    const START: usize = 1_000;
    const FLOOR: usize = 100;

    fn new(max: usize, target: Duration) -> Self {
        BatchSize {
            limit: Self::START.min(max).max(1),
            max: max.max(1),
            target,
        }
    }

    fn observe(&mut self, taken: usize, elapsed: Duration) {
        if elapsed > self.target {
            self.limit = (self.limit / 2).max(Self::FLOOR.min(self.max));
        } else if taken >= self.limit && elapsed < self.target / 2 {
            self.limit = self.limit.saturating_mul(2).min(self.max);
        }
    }
}

/// Serialises a pipeline's batches with the control operations (dead-letter
/// replay and delete) that change the same keys.
pub type PipelineLock = Arc<std::sync::Mutex<()>>;

/// A parked event, stored as a log record with its source position in the
/// `eddy-source` header, ready to be appended to the replay topic.
fn park_encode(record: &SourceRecord) -> Vec<u8> {
    let mut headers = record.headers.clone();
    headers.push((
        SOURCE_HEADER.to_owned(),
        format!("{}/{}/{}", record.topic, record.partition, record.offset).into_bytes(),
    ));
    LogRecord {
        timestamp_ms: record.timestamp_ms,
        key: record.key.clone(),
        headers,
        value: record.value.clone(),
    }
    .encode()
}

/// Error class of an event whose writer schema could not be fetched: the
/// worker retries it and never dead-letters it.
pub const REGISTRY_UNAVAILABLE: &str = "registry-unavailable";

/// The header naming where a replayed or released event first came from.
pub const SOURCE_HEADER: &str = "eddy-source";

/// One decoded, keyed input event (its [`Event`] is kept alongside, in the
/// same order, so calls can take slices of events without copying them).
struct Item {
    record: SourceRecord,
    key: String,
}

/// What processing a micro-batch produced, before it is committed.
#[derive(Default)]
struct Outputs {
    /// New states: (key, state, the key's previous change number).
    states: Vec<(String, String, Option<u64>)>,
    emits: Vec<(String, ProduceRecord)>,
    dead: Vec<DeadLetter>,
    /// Keys that got a new dead letter in quarantine mode (once per letter),
    /// with the offset of the event that failed.
    quarantine: Vec<(String, u64)>,
    /// Events parked behind a quarantined key.
    park: Vec<(String, SourceRecord)>,
}

/// What a worker reads from and writes to.
pub struct Wiring {
    /// Input (the topic, chained with the pipeline's replay topic).
    pub source: Box<dyn Source>,
    /// Where emitted records go.
    pub sink: Sink,
    /// The state store.
    pub store: Store,
    /// Committed-change notifications.
    pub hub: Hub,
    /// The pipeline's lock, shared with control operations.
    pub lock: PipelineLock,
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
            sink,
            store,
            hub,
            lock,
        } = wiring;
        let seq = store.last_seq(&config.name)?;
        let dead_id = store.last_dead_id(&config.name)?;
        Ok(Worker {
            key: KeySpec::new(config.key_field.as_deref()),
            config,
            aggregator,
            handlers,
            source,
            sink,
            store,
            hub,
            seq,
            dead_id,
            lock,
            cache: StateCache::default(),
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
        while !stop.load(Ordering::Relaxed) {
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
            if records.is_empty() {
                continue;
            }
            let started = Instant::now();
            let n = records.len();
            if !self.process(records, stop)? {
                break;
            }
            size.observe(n, started.elapsed());
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

    /// Processes and commits one micro-batch, holding the pipeline's lock so
    /// dead-letter replays and releases never interleave with a batch.
    /// Returns `false` when it stopped before committing (a stop request
    /// while the schema registry was unreachable): nothing of the batch is
    /// committed then, and the next start processes it again.
    fn process(&mut self, records: Vec<SourceRecord>, stop: &AtomicBool) -> anyhow::Result<bool> {
        let started = Instant::now();
        let consumed = records.len();
        let lock = self.lock.clone();
        let _guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Between batches: pick up newly deployed plugin versions, so each
        // event is processed by exactly one version.
        for instance in self.aggregator.iter_mut().chain(self.handlers.iter_mut()) {
            instance.refresh();
        }
        // A replay may have swapped in rebuilt states with new change numbers.
        let stored_seq = self.store.last_seq(&self.config.name)?;
        let epoch = self.store.state_epoch();
        if stored_seq != self.seq || epoch != self.cache.epoch {
            self.cache.clear();
            self.cache.epoch = epoch;
        }
        self.seq = self.seq.max(stored_seq);
        let mut out = Outputs::default();
        let mut next_offsets: HashMap<(Arc<str>, u32), u64> = HashMap::new();
        let mut items = Vec::with_capacity(records.len());
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            let next = next_offsets
                .entry((record.topic.clone(), record.partition))
                .or_insert(0);
            *next = (*next).max(record.offset + 1);
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.prepare(&record) {
                    Ok((event, key)) => {
                        items.push(Item { record, key });
                        events.push(event);
                    }
                    // The registry is down: wait for it, never dead-letter.
                    Err(dl) if dl.error_class == REGISTRY_UNAVAILABLE => {
                        tracing::warn!(
                            pipeline = %self.config.name, topic = %record.topic,
                            partition = record.partition, offset = record.offset,
                            error = %dl.error, retry_in_ms = backoff.as_millis() as u64,
                            "schema registry unreachable; retrying"
                        );
                        let until = Instant::now() + backoff;
                        while Instant::now() < until {
                            if stop.load(Ordering::Relaxed) {
                                return Ok(false);
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                    Err(dl) => out.dead.push(*dl),
                }
                break;
            }
        }

        for i in 0..self.handlers.len() {
            self.run_handler(i, &items, &events, &mut out);
        }
        if self.aggregator.is_some() {
            self.run_aggregator(&items, events, &mut out)?;
        }

        // Commit.
        let dead_count = out.dead.len();
        let mut commit = Commit {
            pipeline: self.config.name.clone(),
            plugin_version: self
                .aggregator
                .as_ref()
                .map(|a| a.plugin().version.clone())
                .unwrap_or_default(),
            ..Commit::default()
        };
        for (key, state, previous) in out.states {
            self.seq += 1;
            let change = Change {
                seq: self.seq,
                key,
                state,
            };
            if let Some(topic) = &self.config.changelog_topic {
                out.emits.push((
                    topic.clone(),
                    ProduceRecord {
                        partition: None,
                        key: Some(change.key.as_bytes().to_vec()),
                        headers: vec![(
                            ID_HEADER.to_owned(),
                            format!("{}/changes/{}", self.config.name, change.seq).into_bytes(),
                        )],
                        value: change.state.as_bytes().to_vec(),
                    },
                ));
            }
            commit.states.push((change, previous));
        }
        commit.last_seq = self.seq;
        for dl in out.dead {
            self.dead_id += 1;
            tracing::warn!(
                pipeline = %self.config.name, key = dl.key.as_deref(), plugin = dl.plugin.as_deref(),
                topic = %dl.topic, partition = dl.partition, offset = dl.offset,
                stage = dl.stage.as_str(), error_class = %dl.error_class, error = %dl.error,
                "event dead-lettered"
            );
            crate::telemetry::dead_letter(&self.config.name, dl.stage.as_str(), &dl.error_class);
            let json = dl.to_json(self.dead_id);
            if let Some(topic) = &self.config.dlq_topic {
                out.emits.push((
                    topic.clone(),
                    ProduceRecord {
                        partition: None,
                        key: dl.key.as_ref().map(|k| k.as_bytes().to_vec()),
                        headers: vec![(
                            ID_HEADER.to_owned(),
                            format!("{}/{}/{}/dead", dl.topic, dl.partition, dl.offset)
                                .into_bytes(),
                        )],
                        value: json.as_bytes().to_vec(),
                    },
                ));
            }
            commit.dead_letters.push((self.dead_id, json));
        }
        commit.last_dead_id = self.dead_id;
        // Per key: new dead letters and the offset of the first.
        let mut opened: HashMap<String, (u64, u64)> = HashMap::new();
        for (key, offset) in out.quarantine {
            opened.entry(key).or_insert((0, offset)).0 += 1;
        }
        let aggregator = self.aggregator.as_ref().map(|a| a.plugin().name.clone());
        for (key, (n, offset)) in opened {
            let open = self.store.quarantined(&self.config.name, &key)? + n;
            tracing::warn!(
                pipeline = %self.config.name, plugin = aggregator.as_deref(), key = %key,
                offset, open, "key quarantined"
            );
            commit.quarantine.push((key, open));
        }
        if !out.park.is_empty() {
            let mut seq = self.store.last_park_seq(&self.config.name)?;
            for (key, record) in out.park {
                seq += 1;
                commit.park.push((key, seq, park_encode(&record)));
            }
            commit.last_park_seq = seq;
        }
        commit.offsets = next_offsets
            .into_iter()
            .map(|((t, p), o)| (t.to_string(), p, o))
            .collect();
        self.sink
            .commit(&mut commit, out.emits)
            .map_err(|e| anyhow::anyhow!("pipeline {}: commit failed: {e}", self.config.name))?;
        let offsets = std::mem::take(&mut commit.offsets);
        self.source.committed(&offsets);
        let changes: Vec<Arc<Change>> = std::mem::take(&mut commit.states)
            .into_iter()
            .map(|(change, _)| Arc::new(change))
            .collect();
        self.hub.publish(&self.config.name, &changes);
        for change in changes {
            self.cache.put(change);
        }
        crate::telemetry::batch(
            &self.config.name,
            consumed,
            consumed.saturating_sub(dead_count),
            started.elapsed(),
        );
        Ok(true)
    }

    /// Decodes and keys one record, or says why it goes to the dead letters.
    fn prepare(&self, record: &SourceRecord) -> Result<(Event, String), Box<DeadLetter>> {
        prepare(&self.config, &self.key, record)
    }

    fn run_handler(&mut self, index: usize, items: &[Item], events: &[Event], out: &mut Outputs) {
        let Some(handler) = self.handlers.get_mut(index) else {
            return;
        };
        let plugin = handler.plugin().clone();
        let policy = Retry::of(handler, &self.config.name);
        let first_offset = events.first().map(|e| e.offset);
        let (whole, _) = policy.run(None, first_offset, || handler.handle(events));
        let per_event: Vec<Attempted<Vec<Emitted>>> = match whole {
            Ok(results) => results.into_iter().map(|r| (r, Vec::new())).collect(),
            // The whole call failed: isolate the poison event(s) one by one.
            Err(_) => items
                .iter()
                .zip(events)
                .map(|(item, event)| {
                    policy.run(Some(&item.key), Some(event.offset), || {
                        handler
                            .handle(std::slice::from_ref(event))?
                            .pop()
                            .unwrap_or_else(|| Ok(Vec::new()))
                    })
                })
                .collect(),
        };
        for (item, (result, delays)) in items.iter().zip(per_event) {
            match result.and_then(|emits| check_emits(&plugin.name, emits)) {
                Ok(emits) => {
                    for (i, e) in emits.into_iter().enumerate() {
                        out.emits.push(to_produce(&item.record, i, e));
                    }
                }
                Err(e) => out.dead.push(
                    DeadLetter::new(
                        &self.config.name,
                        &item.record,
                        Stage::Handle,
                        e.class(),
                        e.to_string(),
                    )
                    .plugin(&plugin.name, &plugin.version)
                    .key(&item.key)
                    .retries(delays),
                ),
            }
        }
    }

    fn run_aggregator(
        &mut self,
        items: &[Item],
        events: Vec<Event>,
        out: &mut Outputs,
    ) -> anyhow::Result<()> {
        // Group by key, keeping first-appearance order and offset order
        // within a key: each key's events are moved next to each other in
        // `grouped`, so a call takes a slice of it without copying events.
        let mut order: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut slot_of: HashMap<&str, usize, foldhash::fast::RandomState> = HashMap::default();
        for (i, item) in items.iter().enumerate() {
            let slot = *slot_of.entry(item.key.as_str()).or_insert_with(|| {
                order.push((item.key.as_str(), Vec::new()));
                order.len() - 1
            });
            if let Some((_, members)) = order.get_mut(slot) {
                members.push(i);
            }
        }
        let mut events: Vec<Option<Event>> = events.into_iter().map(Some).collect();
        let mut grouped: Vec<Event> = Vec::with_capacity(events.len());
        for (_, members) in &order {
            grouped.extend(
                members
                    .iter()
                    .filter_map(|&i| events.get_mut(i).and_then(Option::take)),
            );
        }
        let pipeline = self.config.name.clone();
        let quarantine = self.config.on_dead_letter == OnDeadLetter::Quarantine;
        let Some(agg) = self.aggregator.as_mut() else {
            return Ok(());
        };
        let plugin = agg.plugin().clone();
        let policy = Retry::of(agg, &pipeline);
        let mut start = 0;
        for (key, members) in &order {
            let key = *key;
            let events = grouped
                .get(start..start + members.len())
                .unwrap_or_default();
            start += members.len();
            let group: Vec<&Item> = members.iter().filter_map(|&i| items.get(i)).collect();
            let open = if quarantine {
                self.store.quarantined(&pipeline, key)?
            } else {
                0
            };
            if open > 0 {
                for item in &group {
                    out.park.push((key.to_owned(), item.record.clone()));
                }
                continue;
            }
            let cached = self.cache.get(key);
            let stored = match cached {
                Some(_) => None,
                None => self.store.state(&pipeline, key)?,
            };
            let previous_seq = cached
                .as_ref()
                .map(|c| c.seq)
                .or(stored.as_ref().map(|s| s.seq));
            let state: Option<&str> = cached
                .as_ref()
                .map(|c| c.state.as_str())
                .or(stored.as_ref().map(|s| s.json.as_str()));
            let call = |agg: &mut Instance, state: Option<&str>, events: &[Event]| {
                policy.run(Some(key), events.first().map(|e| e.offset), || {
                    let (s, emits) = agg.apply(key, state, events)?;
                    Ok((s, check_emits(&plugin.name, emits)?))
                })
            };
            let last = group.last().map(|i| &i.record);
            let first = call(agg, state, events);
            if let ((Err(e), delays), [item]) = (&first, group.as_slice()) {
                // A single event failed: that is the poison, no need to isolate.
                out.dead.push(
                    DeadLetter::new(
                        &pipeline,
                        &item.record,
                        Stage::Aggregate,
                        e.class(),
                        e.to_string(),
                    )
                    .plugin(&plugin.name, &plugin.version)
                    .key(key)
                    .retries(delays.clone()),
                );
                if quarantine {
                    out.quarantine.push((key.to_owned(), item.record.offset));
                }
                continue;
            }
            match first {
                (Ok((new_state, emits)), _) => {
                    if let Some(last) = last {
                        for (i, e) in emits.into_iter().enumerate() {
                            out.emits.push(to_produce(last, i, e));
                        }
                    }
                    out.states.push((key.to_owned(), new_state, previous_seq));
                }
                (Err(first_error), _) => {
                    // Find the poison event(s): apply one at a time from the same state.
                    tracing::debug!(
                        pipeline = %pipeline, plugin = %plugin.name, key,
                        offset = events.first().map(|e| e.offset),
                        last_offset = events.last().map(|e| e.offset),
                        error = %first_error, "batch failed; isolating"
                    );
                    let mut current = state.map(str::to_owned);
                    let mut changed = false;
                    let mut parking = false;
                    for (item, event) in group.iter().zip(events.iter()) {
                        if parking {
                            out.park.push((key.to_owned(), item.record.clone()));
                            continue;
                        }
                        match call(agg, current.as_deref(), std::slice::from_ref(event)) {
                            (Ok((s, emits)), _) => {
                                for (i, e) in emits.into_iter().enumerate() {
                                    out.emits.push(to_produce(&item.record, i, e));
                                }
                                current = Some(s);
                                changed = true;
                            }
                            (Err(e), delays) => {
                                out.dead.push(
                                    DeadLetter::new(
                                        &pipeline,
                                        &item.record,
                                        Stage::Aggregate,
                                        e.class(),
                                        e.to_string(),
                                    )
                                    .plugin(&plugin.name, &plugin.version)
                                    .key(key)
                                    .retries(delays),
                                );
                                if quarantine {
                                    out.quarantine.push((key.to_owned(), item.record.offset));
                                    parking = true;
                                }
                            }
                        }
                    }
                    if let (true, Some(s)) = (changed, current) {
                        out.states.push((key.to_owned(), s, previous_seq));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Decodes and keys one record, or says why it goes to the dead letters.
pub fn prepare(
    config: &PipelineConfig,
    key_spec: &KeySpec,
    record: &SourceRecord,
) -> Result<(Event, String), Box<DeadLetter>> {
    let pipeline = config.name.as_str();
    let (value, schema_id) = config.decoder.decode(&record.value).map_err(|e| {
        Box::new(DeadLetter::new(
            pipeline,
            record,
            Stage::Decode,
            if e.is_retryable() {
                REGISTRY_UNAVAILABLE
            } else {
                "decode"
            },
            e.to_string(),
        ))
    })?;
    let key = key_spec
        .key_of(record.key.as_deref(), &value)
        .map_err(|e| {
            Box::new(DeadLetter::new(
                pipeline,
                record,
                Stage::Route,
                "key",
                e.to_string(),
            ))
        })?;
    let event = Event {
        topic: record.topic.to_string(),
        partition: i32::try_from(record.partition).unwrap_or(i32::MAX),
        offset: i64::try_from(record.offset).unwrap_or(i64::MAX),
        timestamp_ms: record.timestamp_ms,
        key: record
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        headers: record
            .headers
            .iter()
            .map(|(name, value)| Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        schema_id,
        value,
    };
    Ok((event, key))
}

/// A result and the retry delays it took.
type Attempted<T> = (Result<T, PluginError>, Vec<u64>);

/// Retries of retryable failures: exponential backoff with jitter.
#[derive(Clone)]
struct Retry {
    max_retries: u32,
    base_ms: u64,
    plugin: Arc<str>,
    pipeline: Arc<str>,
}

impl Retry {
    fn of(instance: &Instance, pipeline: &str) -> Self {
        let c = instance.plugin().config();
        Retry {
            max_retries: c.max_retries,
            base_ms: c.retry_backoff_ms,
            plugin: Arc::from(instance.plugin().name.to_string()),
            pipeline: Arc::from(pipeline),
        }
    }

    /// The delay before retry `attempt` (1-based): half the exponential
    /// step plus up to half again of jitter, capped at 30 s.
    fn delay_ms(&self, attempt: u32) -> u64 {
        let step = self
            .base_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(16))
            .min(30_000);
        step / 2 + rand::rng().random_range(0..=step / 2)
    }

    /// Runs `f` (a call for `key`, or a handler's batch when `None`, whose
    /// first event is at `offset`), retrying retryable failures; returns the
    /// result and the delays slept.
    fn run<T>(
        &self,
        key: Option<&str>,
        offset: Option<i64>,
        mut f: impl FnMut() -> Result<T, PluginError>,
    ) -> Attempted<T> {
        let mut delays = Vec::new();
        loop {
            match f() {
                Err(e) if e.is_retryable() && (delays.len() as u32) < self.max_retries => {
                    let d = self.delay_ms(delays.len() as u32 + 1);
                    tracing::debug!(
                        pipeline = %self.pipeline, plugin = %self.plugin, key, offset,
                        error = %e, delay_ms = d, "retrying"
                    );
                    metrics::counter!("eddy_plugin_retries_total", "plugin" => self.plugin.to_string())
                        .increment(1);
                    std::thread::sleep(Duration::from_millis(d));
                    delays.push(d);
                }
                r => return (r, delays),
            }
        }
    }
}

/// Rejects emitted records aimed at invalid topic names (a plugin bug).
fn check_emits(plugin: &str, emits: Vec<Emitted>) -> Result<Vec<Emitted>, PluginError> {
    for e in &emits {
        if let Err(why) = validate_topic_name(&e.topic) {
            return Err(PluginError::Failed {
                plugin: plugin.to_owned(),
                class: "invalid",
                message: format!("emitted a record to an invalid topic: {why}"),
            });
        }
    }
    Ok(emits)
}

fn to_produce(source: &SourceRecord, index: usize, e: Emitted) -> (String, ProduceRecord) {
    let mut headers: Vec<(String, Vec<u8>)> =
        e.headers.into_iter().map(|h| (h.name, h.value)).collect();
    // Derived from the input's own id when it has one (a changelog or an
    // emitted record), so a record re-delivered after a crash yields the
    // same ids downstream; otherwise from the input's position.
    let id = match source
        .headers
        .iter()
        .rev()
        .find(|(n, _)| n == ID_HEADER)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
    {
        Some(parent) => format!("{parent}/{index}"),
        None => format!(
            "{}/{}/{}/{}",
            source.topic, source.partition, source.offset, index
        ),
    };
    headers.retain(|(n, _)| n != ID_HEADER);
    headers.push((ID_HEADER.to_owned(), id.into_bytes()));
    (
        e.topic,
        ProduceRecord {
            partition: None,
            key: e.key.map(String::into_bytes),
            headers,
            value: e.value.into_bytes(),
        },
    )
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

#[cfg(test)]
mod tests {
    use super::BatchSize;
    use std::time::Duration;

    #[test]
    fn batches_grow_under_a_backlog_and_shrink_when_slow() {
        let ms = Duration::from_millis;
        let mut size = BatchSize::new(50_000, ms(250));
        assert_eq!(size.limit, 1_000);
        // Full and fast: doubles up to the maximum.
        for expected in [2_000, 4_000, 8_000, 16_000, 32_000, 50_000, 50_000] {
            size.observe(size.limit, ms(10));
            assert_eq!(size.limit, expected);
        }
        // Not full (no backlog): stays.
        size.observe(10, ms(1));
        assert_eq!(size.limit, 50_000);
        // Between half and the whole target: stays.
        size.observe(50_000, ms(200));
        assert_eq!(size.limit, 50_000);
        // Too slow: halves, down to the floor.
        for _ in 0..20 {
            size.observe(size.limit, ms(900));
        }
        assert_eq!(size.limit, BatchSize::FLOOR);
        // A small max_batch is kept to.
        let mut small = BatchSize::new(50, ms(250));
        assert_eq!(small.limit, 50);
        small.observe(50, ms(1));
        assert_eq!(small.limit, 50);
        small.observe(50, ms(900));
        assert_eq!(small.limit, 50);
    }
}
