//! Shadow runs: run a candidate plugin over a range of a pipeline's input,
//! next to the running version, against in-memory copies of the state —
//! nothing live is read for writing, nothing is committed — and report what
//! the candidate would change: keys whose state differs (before/after),
//! emitted records that differ, events that would fail.
//!
//! Both versions fold the same records in the same micro-batches from the
//! same starting point (no state before `from`), with the live worker's own
//! fold (retries, isolation, quarantine), so every difference comes from the
//! candidate's code. The input is read through the pipeline's source (on
//! Kafka, by a consumer outside the pipeline's group).

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::fold::{self, ByKey, Policy};
use super::{Intake, Views};
use crate::config::{PipelineConfig, PluginKind};
use crate::execute::bindings::Event;
use crate::execute::{Emitted, Instance, KeyInput, PluginError};
use crate::source::Limit;
use crate::source::rewind::{From, History, RangeReader};
use crate::store::State;

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
    /// Events the candidate holds back behind a quarantined key (pipelines
    /// with `on_dead_letter = "quarantine"`).
    pub candidate_held: u64,
    /// Events the running version holds back.
    pub current_held: u64,
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

/// One version's run: its instance, its in-memory states, and (in
/// quarantine mode) the keys it holds back after a failure.
struct Side {
    instance: Instance,
    policy: Policy,
    /// Each key's state, with the instance's name for it.
    states: HashMap<String, (State, u64)>,
    quarantined: HashSet<String>,
    held: u64,
}

impl Side {
    fn new(instance: Instance, config: &PipelineConfig) -> Self {
        Side {
            policy: Policy::of(&instance, config),
            instance,
            states: HashMap::new(),
            quarantined: HashSet::new(),
            held: 0,
        }
    }

    /// Folds one key's events with the live worker's fold; returns the
    /// records it emits and the events that fail.
    fn fold(
        &mut self,
        key: &str,
        events: &[Event<'_>],
    ) -> (Vec<Emitted>, Vec<(usize, PluginError)>) {
        if self.quarantined.contains(key) {
            self.held += events.len() as u64;
            return (Vec::new(), Vec::new());
        }
        let current = self.states.get(key);
        let input = KeyInput {
            key,
            state: current.map(|(s, _)| s),
            version: current.map_or(0, |(_, v)| *v),
            events,
        };
        let f = fold::aggregate(&self.policy, &mut self.instance, &input);
        if let Some(s) = f.state {
            self.states.insert(key.to_owned(), (s, f.version));
        }
        if let Some(from) = f.held_from {
            self.held += events.len().saturating_sub(from) as u64;
        }
        if self.policy.quarantines() && !f.failed.is_empty() {
            self.quarantined.insert(key.to_owned());
        }
        (
            f.emits.into_iter().flat_map(|(_, e)| e).collect(),
            f.failed.into_iter().map(|f| (f.index, f.error)).collect(),
        )
    }

    fn handle(
        &mut self,
        keys: &[&str],
        events: &[Event<'_>],
    ) -> Vec<Result<Vec<Emitted>, PluginError>> {
        fold::handle(&self.policy, &mut self.instance, keys, events)
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }
}

fn source_of(e: &Event<'_>) -> String {
    format!("{}/{}/{}", e.topic, e.partition, e.offset)
}

/// Runs `candidate` next to `current` over the pipeline's input from `from`,
/// read through the pipeline's source, reading at most `limit` events (up to
/// the end each partition has when the run reaches it).
///
/// # Errors
/// When the input cannot be read.
pub fn run(
    config: &PipelineConfig,
    intake: &Intake,
    current: Instance,
    candidate: Instance,
    history: &History,
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
        candidate_held: 0,
        current_held: 0,
        failures: Vec::new(),
    };
    let mut before = Side::new(current, config);
    let mut after = Side::new(candidate, config);
    let mut reader = RangeReader::open(
        history.open(&config.topic)?,
        &config.topic,
        from,
        history.stall_timeout(),
    )?;
    let note_failure =
        |report: &mut Report, e: &Event<'_>, key: &str, version: &str, err: &PluginError| {
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
        let records = reader.next_batch(Limit {
            records: usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(config.max_batch)
                .min(10_000),
            bytes: config.max_batch_bytes,
        })?;
        if records.is_empty() {
            break;
        }
        report.events += records.len() as u64;
        // Decode failures are the same for both versions: not a difference.
        let Some(prepared) = intake.prepare_batch(records, &mut || false) else {
            anyhow::bail!("the schema registry is unreachable");
        };
        let keys: Vec<&str> = prepared.items.iter().map(|i| i.key.as_str()).collect();
        let views = Views::new(&prepared.items);
        let events = views.events();
        match kind {
            PluginKind::Aggregator => {
                let by_key = ByKey::new(keys.iter().copied(), &events);
                for (key, _, events) in by_key.iter() {
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
                let rb = before.handle(&keys, &events);
                let ra = after.handle(&keys, &events);
                for (((e, key), b), a) in events.iter().zip(&keys).zip(rb).zip(ra) {
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
    report.current_held = before.held;
    report.candidate_held = after.held;
    let mut keys: Vec<&String> = before.states.keys().chain(after.states.keys()).collect();
    keys.sort();
    keys.dedup();
    report.keys = keys.len() as u64;
    for key in keys {
        let b = before
            .states
            .get(key)
            .map(|(s, _)| json_of(s.json_text()))
            .unwrap_or(Value::Null);
        let a = after
            .states
            .get(key)
            .map(|(s, _)| json_of(s.json_text()))
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
