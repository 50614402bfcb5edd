//! The pipeline worker: one thread per pipeline runs the stages in order —
//! source → decode → route → execute → commit → notify — one micro-batch at
//! a time.
//!
//! Exactly-once: a micro-batch's new states, latest-N index, change history,
//! emitted records, dead letters and next source offsets are written in one
//! atomic store batch. After a crash the worker resumes from the stored
//! offsets, so an event is never lost and never applied twice.

pub mod dead_letter;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::config::PipelineConfig;
use crate::execute::bindings::{Event, Header};
use crate::execute::{Emitted, Instance, PluginError};
use crate::notify::Hub;
use crate::route::KeySpec;
use crate::source::embedded::{EmbeddedLog, ProduceRecord};
use crate::source::{Source, SourceRecord, validate_topic_name};
use crate::store::{Change, Commit, Store};
use dead_letter::{DeadLetter, Stage};

/// The header carrying an emitted record's deterministic id:
/// `{source topic}/{partition}/{offset}/{index}`.
pub const ID_HEADER: &str = "eddy-id";

/// A running pipeline's parts.
pub struct Worker {
    config: PipelineConfig,
    key: KeySpec,
    aggregator: Option<Instance>,
    handlers: Vec<Instance>,
    source: Box<dyn Source>,
    log: Arc<EmbeddedLog>,
    store: Store,
    hub: Hub,
    seq: u64,
    dead_id: u64,
}

/// One decoded, keyed input event.
struct Item {
    record: SourceRecord,
    event: Event,
    key: String,
}

/// What processing a micro-batch produced, before it is committed.
#[derive(Default)]
struct Outputs {
    states: Vec<(String, String)>,
    emits: Vec<(String, ProduceRecord)>,
    dead: Vec<DeadLetter>,
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
        source: Box<dyn Source>,
        log: Arc<EmbeddedLog>,
        hub: Hub,
    ) -> anyhow::Result<Self> {
        let store = log.store().clone();
        let seq = store.last_seq(&config.name)?;
        let dead_id = store.last_dead_id(&config.name)?;
        Ok(Worker {
            key: KeySpec::new(config.key_field.as_deref()),
            config,
            aggregator,
            handlers,
            source,
            log,
            store,
            hub,
            seq,
            dead_id,
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
        while !stop.load(Ordering::Relaxed) {
            let records = match self
                .source
                .poll(self.config.max_batch, Duration::from_millis(200))
            {
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
            self.process(records)?;
            tracing::debug!(pipeline = %name, events = n, elapsed_us = started.elapsed().as_micros() as u64, "batch committed");
        }
        tracing::info!(pipeline = %name, "pipeline stopped");
        Ok(())
    }

    /// Processes and commits one micro-batch.
    fn process(&mut self, records: Vec<SourceRecord>) -> anyhow::Result<()> {
        let mut out = Outputs::default();
        let mut next_offsets: HashMap<(Arc<str>, u32), u64> = HashMap::new();
        let mut items = Vec::with_capacity(records.len());
        for record in records {
            let next = next_offsets
                .entry((record.topic.clone(), record.partition))
                .or_insert(0);
            *next = (*next).max(record.offset + 1);
            match self.prepare(&record) {
                Ok((event, key)) => items.push(Item { record, event, key }),
                Err(dl) => out.dead.push(*dl),
            }
        }

        for i in 0..self.handlers.len() {
            self.run_handler(i, &items, &mut out);
        }
        if self.aggregator.is_some() {
            self.run_aggregator(&items, &mut out);
        }

        // Commit.
        let mut commit = Commit {
            pipeline: self.config.name.clone(),
            history: self.config.sse_history,
            ..Commit::default()
        };
        let mut changes = Vec::with_capacity(out.states.len());
        for (key, state) in out.states {
            let previous = self.store.state(&self.config.name, &key)?.map(|s| s.seq);
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
                        headers: Vec::new(),
                        value: change.state.as_bytes().to_vec(),
                    },
                ));
            }
            changes.push(change.clone());
            commit.states.push((change, previous));
        }
        commit.last_seq = self.seq;
        for dl in out.dead {
            self.dead_id += 1;
            tracing::warn!(
                pipeline = %self.config.name,
                topic = %dl.topic, partition = dl.partition, offset = dl.offset,
                stage = dl.stage.as_str(), error_class = %dl.error_class, error = %dl.error,
                "event dead-lettered"
            );
            commit
                .dead_letters
                .push((self.dead_id, dl.to_json(self.dead_id)));
        }
        commit.last_dead_id = self.dead_id;
        commit.offsets = next_offsets
            .into_iter()
            .map(|((t, p), o)| (t.to_string(), p, o))
            .collect();
        self.log
            .commit(&mut commit, out.emits)
            .map_err(|e| anyhow::anyhow!("pipeline {}: commit failed: {e}", self.config.name))?;
        let offsets = std::mem::take(&mut commit.offsets);
        self.source.committed(&offsets);
        self.hub.publish(&self.config.name, changes);
        Ok(())
    }

    /// Decodes and keys one record, or says why it goes to the dead letters.
    fn prepare(&self, record: &SourceRecord) -> Result<(Event, String), Box<DeadLetter>> {
        let value = crate::decode::json_value(&record.value).map_err(|e| {
            Box::new(DeadLetter::new(
                &self.config.name,
                record,
                Stage::Decode,
                "decode",
                e.to_string(),
            ))
        })?;
        let key = self
            .key
            .key_of(record.key.as_deref(), &value)
            .map_err(|e| {
                Box::new(DeadLetter::new(
                    &self.config.name,
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
            schema_id: None,
            value,
        };
        Ok((event, key))
    }

    /// Waits before retry `attempt` (1-based): exponential backoff with jitter.
    fn backoff(base_ms: u64, attempt: u32) {
        let exp = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(30_000);
        let jitter = rand::rng().random_range(0..=capped / 2);
        std::thread::sleep(Duration::from_millis(capped / 2 + jitter));
    }

    fn run_handler(&mut self, index: usize, items: &[Item], out: &mut Outputs) {
        let Some(handler) = self.handlers.get_mut(index) else {
            return;
        };
        let events: Vec<Event> = items.iter().map(|i| i.event.clone()).collect();
        let (max_retries, base_ms) = retry_policy(handler);
        let mut attempt = 0;
        let whole = loop {
            match handler.handle(&events) {
                Err(e) if e.is_retryable() && attempt < max_retries => {
                    attempt += 1;
                    Self::backoff(base_ms, attempt);
                }
                r => break r,
            }
        };
        let per_event: Vec<Result<Vec<Emitted>, PluginError>> = match whole {
            Ok(results) => results,
            // The whole call failed: isolate the poison event(s) one by one.
            Err(_) => items
                .iter()
                .map(|item| {
                    let mut attempt = 0;
                    loop {
                        let r = handler
                            .handle(std::slice::from_ref(&item.event))
                            .and_then(|mut v| v.pop().unwrap_or_else(|| Ok(Vec::new())).map(Ok))
                            .and_then(|r| r);
                        match r {
                            Err(e) if e.is_retryable() && attempt < max_retries => {
                                attempt += 1;
                                Self::backoff(base_ms, attempt);
                            }
                            r => break r,
                        }
                    }
                })
                .collect(),
        };
        let plugin = handler.plugin().clone();
        for (item, result) in items.iter().zip(per_event) {
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
                    .key(&item.key),
                ),
            }
        }
    }

    fn run_aggregator(&mut self, items: &[Item], out: &mut Outputs) {
        // Group by key, keeping first-appearance order and offset order within a key.
        let mut order: Vec<&str> = Vec::new();
        let mut groups: HashMap<&str, Vec<&Item>> = HashMap::new();
        for item in items {
            groups
                .entry(item.key.as_str())
                .or_insert_with(|| {
                    order.push(item.key.as_str());
                    Vec::new()
                })
                .push(item);
        }
        let pipeline = self.config.name.clone();
        let Some(agg) = self.aggregator.as_mut() else {
            return;
        };
        let plugin = agg.plugin().clone();
        let (max_retries, base_ms) = retry_policy(agg);
        for key in order {
            let Some(group) = groups.get(key) else {
                continue;
            };
            let state = match self.store.state(&pipeline, key) {
                Ok(s) => s.map(|s| s.json),
                Err(e) => {
                    // Cannot read the current state: dead-letter rather than guess.
                    for item in group {
                        out.dead.push(
                            DeadLetter::new(
                                &pipeline,
                                &item.record,
                                Stage::Aggregate,
                                "store",
                                e.to_string(),
                            )
                            .key(key),
                        );
                    }
                    continue;
                }
            };
            let events: Vec<Event> = group.iter().map(|i| i.event.clone()).collect();
            let call = |agg: &mut Instance, state: Option<&str>, events: &[Event]| {
                let mut attempt = 0;
                loop {
                    let r = agg
                        .apply(key, state, events)
                        .and_then(|(s, emits)| Ok((s, check_emits(&plugin.name, emits)?)));
                    match r {
                        Err(e) if e.is_retryable() && attempt < max_retries => {
                            attempt += 1;
                            Self::backoff(base_ms, attempt);
                        }
                        r => break r,
                    }
                }
            };
            let last = group.last().map(|i| &i.record);
            match call(agg, state.as_deref(), &events) {
                Ok((new_state, emits)) => {
                    if let Some(last) = last {
                        for (i, e) in emits.into_iter().enumerate() {
                            out.emits.push(to_produce(last, i, e));
                        }
                    }
                    out.states.push((key.to_owned(), new_state));
                }
                Err(first_error) => {
                    // Find the poison event(s): apply one at a time.
                    tracing::debug!(pipeline = %pipeline, key, error = %first_error, "batch failed; isolating");
                    let mut current = state;
                    let mut changed = false;
                    for (item, event) in group.iter().zip(events.iter()) {
                        match call(agg, current.as_deref(), std::slice::from_ref(event)) {
                            Ok((s, emits)) => {
                                for (i, e) in emits.into_iter().enumerate() {
                                    out.emits.push(to_produce(&item.record, i, e));
                                }
                                current = Some(s);
                                changed = true;
                            }
                            Err(e) => out.dead.push(
                                DeadLetter::new(
                                    &pipeline,
                                    &item.record,
                                    Stage::Aggregate,
                                    e.class(),
                                    e.to_string(),
                                )
                                .plugin(&plugin.name, &plugin.version)
                                .key(key),
                            ),
                        }
                    }
                    if let (true, Some(s)) = (changed, current) {
                        out.states.push((key.to_owned(), s));
                    }
                }
            }
        }
    }
}

fn retry_policy(instance: &Instance) -> (u32, u64) {
    let c = instance.plugin().config();
    (c.max_retries, c.retry_backoff_ms)
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
    headers.push((
        ID_HEADER.to_owned(),
        format!(
            "{}/{}/{}/{}",
            source.topic, source.partition, source.offset, index
        )
        .into_bytes(),
    ));
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
