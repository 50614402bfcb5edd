//! Shadow runs: run a candidate plugin over a range of a pipeline's input,
//! next to the running version, against in-memory copies of the state —
//! nothing live is read for writing, nothing is committed — and report what
//! the candidate would change: keys whose state differs (before/after),
//! emitted records that differ, events that would fail.
//!
//! Both versions fold the same records in the same micro-batches from the
//! same starting point (no state before `from`), so every difference comes
//! from the candidate's code.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::prepare;
use super::replay::From;
use crate::config::{PipelineConfig, PluginKind};
use crate::execute::bindings::Event;
use crate::execute::{Emitted, Instance, PluginError};
use crate::route::KeySpec;
use crate::source::SourceRecord;
use crate::source::embedded::EmbeddedLog;

/// Most differences listed in detail (counts are always complete).
const DETAIL: usize = 1000;

/// A key whose state the candidate changes.
#[derive(Debug, Serialize)]
pub struct ChangedKey {
    /// The key.
    pub key: String,
    /// Its state with the running version (`null` if it had none).
    pub before: Value,
    /// Its state with the candidate.
    pub after: Value,
}

/// Records one micro-batch step emits differently.
#[derive(Debug, Serialize)]
pub struct EmitDiff {
    /// `topic/partition/offset` of the event (or of the key's last event).
    pub source: String,
    /// What the running version emits: `[topic, key, value]`.
    pub before: Vec<(String, Option<String>, Value)>,
    /// What the candidate emits.
    pub after: Vec<(String, Option<String>, Value)>,
}

/// An event that fails with one version.
#[derive(Debug, Serialize)]
pub struct Failed {
    /// `topic/partition/offset`.
    pub source: String,
    /// Its key.
    pub key: String,
    /// `candidate` or `current`.
    pub version: String,
    /// Error class.
    pub error_class: String,
    /// Error message.
    pub error: String,
}

/// What a candidate would change.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Pipeline.
    pub pipeline: String,
    /// Plugin.
    pub plugin: String,
    /// Running version.
    pub current_version: String,
    /// Candidate version.
    pub candidate_version: String,
    /// Events read.
    pub events: u64,
    /// Keys seen.
    pub keys: u64,
    /// How many keys would change.
    pub changed_count: u64,
    /// Keys whose state would change (first 1000).
    pub changed: Vec<ChangedKey>,
    /// How many emit steps would differ.
    pub emits_differ_count: u64,
    /// Emitted records that would differ (first 1000).
    pub emits_differ: Vec<EmitDiff>,
    /// How many events would fail with the candidate.
    pub candidate_failures: u64,
    /// How many fail with the running version.
    pub current_failures: u64,
    /// Events failing with either (first 1000).
    pub failures: Vec<Failed>,
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

fn emits_view(emits: &[Emitted]) -> Vec<(String, Option<String>, Value)> {
    emits
        .iter()
        .map(|e| (e.topic.clone(), e.key.clone(), json_of(&e.value)))
        .collect()
}

struct Side {
    instance: Instance,
    states: HashMap<String, String>,
}

impl Side {
    /// Folds one key's events; failures isolated per event like the live path.
    fn fold(&mut self, key: &str, events: &[Event]) -> (Vec<Emitted>, Vec<(usize, PluginError)>) {
        let state = self.states.get(key).cloned();
        match self.instance.apply(key, state.as_deref(), events) {
            Ok((s, emits)) => {
                self.states.insert(key.to_owned(), s);
                (emits, Vec::new())
            }
            Err(_) => {
                let mut current = state;
                let mut emits = Vec::new();
                let mut failed = Vec::new();
                for (i, e) in events.iter().enumerate() {
                    match self
                        .instance
                        .apply(key, current.as_deref(), std::slice::from_ref(e))
                    {
                        Ok((s, em)) => {
                            current = Some(s);
                            emits.extend(em);
                        }
                        Err(err) => failed.push((i, err)),
                    }
                }
                if let Some(s) = current {
                    self.states.insert(key.to_owned(), s);
                }
                (emits, failed)
            }
        }
    }

    fn handle(&mut self, events: &[Event]) -> Vec<Result<Vec<Emitted>, PluginError>> {
        match self.instance.handle(events) {
            Ok(r) => r,
            Err(_) => events
                .iter()
                .map(|e| {
                    self.instance
                        .handle(std::slice::from_ref(e))
                        .and_then(|mut v| v.pop().unwrap_or_else(|| Ok(Vec::new())))
                })
                .collect(),
        }
    }
}

fn source_of(e: &Event) -> String {
    format!("{}/{}/{}", e.topic, e.partition, e.offset)
}

/// Runs `candidate` next to `current` over the pipeline's input from `from`,
/// reading at most `limit` events (up to the topic's current end).
///
/// # Errors
/// When the log cannot be read.
pub fn run(
    config: &PipelineConfig,
    current: Instance,
    candidate: Instance,
    log: &Arc<EmbeddedLog>,
    from: From,
    limit: u64,
) -> anyhow::Result<Report> {
    let kind = candidate.plugin().kind;
    let mut report = Report {
        pipeline: config.name.clone(),
        plugin: candidate.plugin().name.to_string(),
        current_version: current.plugin().version.clone(),
        candidate_version: candidate.plugin().version.clone(),
        events: 0,
        keys: 0,
        changed_count: 0,
        changed: Vec::new(),
        emits_differ_count: 0,
        emits_differ: Vec::new(),
        candidate_failures: 0,
        current_failures: 0,
        failures: Vec::new(),
    };
    let mut before = Side {
        instance: current,
        states: HashMap::new(),
    };
    let mut after = Side {
        instance: candidate,
        states: HashMap::new(),
    };
    let key_spec = KeySpec::new(config.key_field.as_deref());
    let store = log.store();
    let partitions = log.partitions(&config.topic).unwrap_or(0);
    let mut positions = Vec::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        let end = log.high_watermark(&config.topic, p);
        ends.push(end);
        positions.push(match from {
            From::Beginning => 0,
            From::Offset(o) => o.min(end),
            From::Timestamp(t) => store.offset_for_time(&config.topic, p, end, t)?,
        });
    }
    let topic: Arc<str> = Arc::from(config.topic.as_str());
    let note_failure =
        |report: &mut Report, e: &Event, key: &str, version: &str, err: &PluginError| {
            if version == "candidate" {
                report.candidate_failures += 1;
            } else {
                report.current_failures += 1;
            }
            if report.failures.len() < DETAIL {
                report.failures.push(Failed {
                    source: source_of(e),
                    key: key.to_owned(),
                    version: version.to_owned(),
                    error_class: err.class().to_owned(),
                    error: err.to_string(),
                });
            }
        };
    loop {
        let remaining = limit.saturating_sub(report.events);
        if remaining == 0 {
            break;
        }
        let mut records = Vec::new();
        for (p, pos) in positions.iter_mut().enumerate() {
            let partition = u32::try_from(p).unwrap_or(u32::MAX);
            let end = ends.get(p).copied().unwrap_or(0);
            let want = (config.max_batch as u64).min(remaining.saturating_sub(records.len() as u64))
                as usize;
            for (offset, r) in store.read_log(
                &config.topic,
                partition,
                *pos,
                end,
                want,
                config.max_batch_bytes,
            )? {
                *pos = offset + 1;
                records.push(SourceRecord {
                    topic: topic.clone(),
                    partition,
                    offset,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key,
                    headers: r.headers,
                    value: r.value,
                });
            }
        }
        if records.is_empty() {
            break;
        }
        report.events += records.len() as u64;
        let items: Vec<(Event, String)> = records
            .iter()
            .filter_map(|r| prepare(config, &key_spec, r).ok())
            .collect();
        match kind {
            PluginKind::Aggregator => {
                let mut order: Vec<&str> = Vec::new();
                let mut groups: HashMap<&str, Vec<Event>> = HashMap::new();
                for (e, k) in &items {
                    groups
                        .entry(k.as_str())
                        .or_insert_with(|| {
                            order.push(k.as_str());
                            Vec::new()
                        })
                        .push(e.clone());
                }
                for key in order {
                    let Some(events) = groups.get(key) else {
                        continue;
                    };
                    let (eb, fb) = before.fold(key, events);
                    let (ea, fa) = after.fold(key, events);
                    for (i, err) in &fb {
                        if let Some(e) = events.get(*i) {
                            note_failure(&mut report, e, key, "current", err);
                        }
                    }
                    for (i, err) in &fa {
                        if let Some(e) = events.get(*i) {
                            note_failure(&mut report, e, key, "candidate", err);
                        }
                    }
                    let (vb, va) = (emits_view(&eb), emits_view(&ea));
                    if vb != va {
                        report.emits_differ_count += 1;
                        if report.emits_differ.len() < DETAIL
                            && let Some(last) = events.last()
                        {
                            report.emits_differ.push(EmitDiff {
                                source: source_of(last),
                                before: vb,
                                after: va,
                            });
                        }
                    }
                }
            }
            PluginKind::Handler => {
                let events: Vec<Event> = items.iter().map(|(e, _)| e.clone()).collect();
                let rb = before.handle(&events);
                let ra = after.handle(&events);
                for (((e, key), b), a) in items.iter().zip(rb).zip(ra) {
                    if let Err(err) = &b {
                        note_failure(&mut report, e, key, "current", err);
                    }
                    if let Err(err) = &a {
                        note_failure(&mut report, e, key, "candidate", err);
                    }
                    let vb = b.as_ref().map(|v| emits_view(v)).unwrap_or_default();
                    let va = a.as_ref().map(|v| emits_view(v)).unwrap_or_default();
                    if vb != va {
                        report.emits_differ_count += 1;
                        if report.emits_differ.len() < DETAIL {
                            report.emits_differ.push(EmitDiff {
                                source: source_of(e),
                                before: vb,
                                after: va,
                            });
                        }
                    }
                }
            }
        }
    }
    let mut keys: Vec<&String> = before.states.keys().chain(after.states.keys()).collect();
    keys.sort();
    keys.dedup();
    report.keys = keys.len() as u64;
    for key in keys {
        let b = before
            .states
            .get(key)
            .map(|s| json_of(s))
            .unwrap_or(Value::Null);
        let a = after
            .states
            .get(key)
            .map(|s| json_of(s))
            .unwrap_or(Value::Null);
        if a != b {
            report.changed_count += 1;
            if report.changed.len() < DETAIL {
                report.changed.push(ChangedKey {
                    key: key.clone(),
                    before: b,
                    after: a,
                });
            }
        }
    }
    Ok(report)
}
