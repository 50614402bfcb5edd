//! The fold: calling the plugins over a micro-batch's events, with the one
//! failure policy the live worker, a replay's rebuild and a shadow run all
//! use — retryable failures retried with backoff and jitter, a failed call
//! split so only the poison events fail, and (in quarantine mode) a key's
//! later events held back once one of its events failed. What to do with
//! the results (commit them, keep them in a side namespace, compare them)
//! is the caller's. Retries are [`super::retry`]'s.

use std::collections::HashMap;

pub use super::retry::{Attempted, Retry};
use crate::config::validate_topic_name;
use crate::config::{OnDeadLetter, PipelineConfig};
use crate::execute::bindings::Event;
use crate::execute::{Emitted, Instance, PluginError};

/// How a fold treats failures (see the module documentation).
#[derive(Clone)]
pub struct Policy {
    retry: Retry,
    quarantine: bool,
}

impl Policy {
    /// The policy of `instance` in `pipeline`.
    pub fn of(instance: &Instance, pipeline: &PipelineConfig) -> Self {
        Policy {
            retry: Retry::of(instance, &pipeline.name),
            quarantine: pipeline.on_dead_letter == OnDeadLetter::Quarantine,
        }
    }

    /// Whether a key's later events wait once one of its events failed.
    pub fn quarantines(&self) -> bool {
        self.quarantine
    }
}

/// One event that failed for good.
pub struct Failed {
    /// Its index among the key's events.
    pub index: usize,
    /// Why.
    pub error: PluginError,
    /// The retry delays slept before giving up.
    pub delays: Vec<u64>,
}

/// What folding one key's events produced.
pub struct KeyFold {
    /// The key's new state, when at least one event applied.
    pub state: Option<String>,
    /// Emitted records, with the index of the event they are attributed to
    /// (the last event when the whole batch applied in one call).
    pub emits: Vec<(usize, Vec<Emitted>)>,
    /// Events that failed.
    pub failed: Vec<Failed>,
    /// In quarantine mode: the index of the first event held back after a
    /// failure (it and every later event of the key were not applied).
    pub held_from: Option<usize>,
}

/// Folds one key's events into `state` with the aggregator: one call for
/// all of them; when that fails, one call per event from the same state, so
/// only the failing events fail and the others apply.
pub fn aggregate(
    policy: &Policy,
    agg: &mut Instance,
    key: &str,
    state: Option<&str>,
    events: &[Event],
) -> KeyFold {
    let plugin = agg.plugin().name.clone();
    let call = |agg: &mut Instance, state: Option<&str>, events: &[Event]| {
        policy
            .retry
            .run(Some(key), events.first().map(|e| e.offset), || {
                let (s, emits) = agg.apply(key, state, events)?;
                Ok((s, check_emits(&plugin, emits)?))
            })
    };
    let mut fold = KeyFold {
        state: None,
        emits: Vec::new(),
        failed: Vec::new(),
        held_from: None,
    };
    let whole = call(agg, state, events);
    let first_error = match whole {
        (Ok((s, emits)), _) => {
            fold.state = Some(s);
            fold.emits.push((events.len().saturating_sub(1), emits));
            return fold;
        }
        (Err(error), delays) if events.len() == 1 => {
            // A single event failed: that is the poison, no need to isolate.
            fold.failed.push(Failed {
                index: 0,
                error,
                delays,
            });
            return fold;
        }
        (Err(e), _) => e,
    };
    tracing::debug!(
        pipeline = %policy.retry.pipeline, plugin = %plugin, key,
        offset = events.first().map(|e| e.offset),
        last_offset = events.last().map(|e| e.offset),
        error = %first_error, "batch failed; isolating"
    );
    let mut current = state.map(str::to_owned);
    for (index, event) in events.iter().enumerate() {
        match call(agg, current.as_deref(), std::slice::from_ref(event)) {
            (Ok((s, emits)), _) => {
                fold.emits.push((index, emits));
                current = Some(s);
                fold.state.clone_from(&current);
            }
            (Err(error), delays) => {
                fold.failed.push(Failed {
                    index,
                    error,
                    delays,
                });
                if policy.quarantine {
                    if index + 1 < events.len() {
                        fold.held_from = Some(index + 1);
                    }
                    break;
                }
            }
        }
    }
    fold
}

/// Runs a handler over a batch: one call for all events; when the whole call
/// fails, one call per event, so only the poison events fail. One result per
/// event, with its retry delays; `keys` names each event's key in log lines.
pub fn handle(
    policy: &Policy,
    handler: &mut Instance,
    keys: &[&str],
    events: &[Event],
) -> Vec<Attempted<Vec<Emitted>>> {
    let plugin = handler.plugin().name.clone();
    let first_offset = events.first().map(|e| e.offset);
    let (whole, _) = policy
        .retry
        .run(None, first_offset, || handler.handle(events));
    let results: Vec<Attempted<Vec<Emitted>>> = match whole {
        Ok(results) => results.into_iter().map(|r| (r, Vec::new())).collect(),
        Err(_) => events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                policy
                    .retry
                    .run(keys.get(i).copied(), Some(event.offset), || {
                        handler
                            .handle(std::slice::from_ref(event))?
                            .pop()
                            .unwrap_or_else(|| Ok(Vec::new()))
                    })
            })
            .collect(),
    };
    results
        .into_iter()
        .map(|(r, delays)| (r.and_then(|emits| check_emits(&plugin, emits)), delays))
        .collect()
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

/// A batch's events grouped by key: keys in order of first appearance, each
/// key's events in offset order, moved next to each other so a call takes a
/// slice without copying them.
pub struct ByKey<'a> {
    /// Each key with the indices (in the batch) of its events.
    groups: Vec<(&'a str, Vec<usize>)>,
    /// The events, key by key.
    events: Vec<Event>,
}

impl<'a> ByKey<'a> {
    /// Groups `events` by `keys` (one key per event, same order).
    pub fn new(keys: impl IntoIterator<Item = &'a str>, events: Vec<Event>) -> Self {
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut slot_of: HashMap<&str, usize, foldhash::fast::RandomState> = HashMap::default();
        for (i, key) in keys.into_iter().enumerate() {
            let slot = *slot_of.entry(key).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            if let Some((_, members)) = groups.get_mut(slot) {
                members.push(i);
            }
        }
        let mut events: Vec<Option<Event>> = events.into_iter().map(Some).collect();
        let mut grouped = Vec::with_capacity(events.len());
        for (_, members) in &groups {
            grouped.extend(
                members
                    .iter()
                    .filter_map(|&i| events.get_mut(i).and_then(Option::take)),
            );
        }
        ByKey {
            groups,
            events: grouped,
        }
    }

    /// Each key with the batch indices of its events and the events.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &[usize], &[Event])> + '_ {
        let mut start = 0;
        self.groups.iter().map(move |(key, members)| {
            let events = self
                .events
                .get(start..start + members.len())
                .unwrap_or_default();
            start += members.len();
            (*key, members.as_slice(), events)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ByKey;
    use crate::execute::bindings::Event;

    fn event(offset: i64) -> Event {
        Event {
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp_ms: 0,
            key: None,
            headers: Vec::new(),
            schema_id: None,
            value: String::new(),
        }
    }

    #[test]
    fn events_group_by_key_in_first_seen_order_keeping_offsets_in_order() {
        let keys = ["a", "b", "a", "c", "b", "a"];
        let by = ByKey::new(keys, (0..6).map(event).collect());
        let got: Vec<(&str, Vec<usize>, Vec<i64>)> = by
            .iter()
            .map(|(k, m, e)| (k, m.to_vec(), e.iter().map(|e| e.offset).collect()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", vec![0, 2, 5], vec![0, 2, 5]),
                ("b", vec![1, 4], vec![1, 4]),
                ("c", vec![3], vec![3]),
            ]
        );
    }
}
