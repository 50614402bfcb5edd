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
use crate::execute::{Emitted, Folded, Instance, KeyInput, PluginError};
use crate::store::State;

/// How a fold treats failures (see the module documentation).
#[derive(Clone)]
pub struct Policy {
    retry: Retry,
    quarantine: bool,
    timers: super::timers::Rules,
}

impl Policy {
    /// The policy of `instance` in `pipeline`.
    pub fn of(instance: &Instance, pipeline: &PipelineConfig) -> Self {
        Policy {
            retry: Retry::of(instance, &pipeline.name),
            quarantine: pipeline.on_dead_letter == OnDeadLetter::Quarantine,
            timers: super::timers::Rules::of(pipeline),
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
    pub state: Option<State>,
    /// The plugin instance's name for that state ([`Folded::version`]).
    pub version: u64,
    /// Emitted records, with the index of the event they are attributed to
    /// (the last event when the whole batch applied in one call).
    pub emits: Vec<(usize, Vec<Emitted>)>,
    /// Events that failed.
    pub failed: Vec<Failed>,
    /// In quarantine mode: the index of the first event held back after a
    /// failure (it and every later event of the key were not applied).
    pub held_from: Option<usize>,
}

impl KeyFold {
    fn empty() -> Self {
        KeyFold {
            state: None,
            version: 0,
            emits: Vec::new(),
            failed: Vec::new(),
            held_from: None,
        }
    }

    fn applied(events: usize, folded: Folded) -> Self {
        KeyFold {
            state: Some(folded.state),
            version: folded.version,
            emits: vec![(events.saturating_sub(1), folded.emits)],
            ..KeyFold::empty()
        }
    }
}

/// Folds several keys' events with the aggregator: one call for as many
/// keys as a call takes ([`Instance::call_size`]). A key whose fold fails
/// is folded again alone by [`aggregate`] (retries, then one event at a
/// time); when the whole call fails (a trap, a limit), every key of it is.
/// One [`KeyFold`] per input, in order.
pub fn aggregate_all(policy: &Policy, agg: &mut Instance, inputs: &[KeyInput<'_>]) -> Vec<KeyFold> {
    let mut folds = Vec::with_capacity(inputs.len());
    let mut rest = inputs;
    while !rest.is_empty() {
        let n = Instance::call_size(rest).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        match agg.fold(chunk) {
            Ok(results) => {
                let plugin = agg.plugin().name.clone();
                for (input, result) in chunk.iter().zip(results) {
                    // A key that failed, or emitted to a topic that cannot
                    // be, is folded again alone (which names its failure).
                    let checked = result.and_then(|folded| {
                        Ok(Folded {
                            emits: check_emits(&plugin, folded.emits, Some(&policy.timers))?,
                            ..folded
                        })
                    });
                    folds.push(match checked {
                        Ok(folded) => KeyFold::applied(input.events.len(), folded),
                        Err(_) => aggregate(policy, agg, input),
                    });
                }
            }
            Err(error) => {
                tracing::debug!(
                    pipeline = %policy.retry.pipeline, plugin = %agg.plugin().name,
                    keys = chunk.len(), error = %error, "fold call failed; folding its keys one by one"
                );
                folds.extend(chunk.iter().map(|input| aggregate(policy, agg, input)));
            }
        }
    }
    folds
}

/// Folds one key's events into its state with the aggregator: one call for
/// all of them; when that fails, one call per event from the same state, so
/// only the failing events fail and the others apply.
pub fn aggregate(policy: &Policy, agg: &mut Instance, input: &KeyInput<'_>) -> KeyFold {
    let plugin = agg.plugin().name.clone();
    let key = input.key;
    let call = |agg: &mut Instance, one: KeyInput<'_>| {
        policy
            .retry
            .run(Some(key), one.events.first().map(|e| e.offset), || {
                let folded = agg
                    .fold(std::slice::from_ref(&one))?
                    .pop()
                    .unwrap_or_else(|| {
                        Err(PluginError::Trap {
                            plugin: plugin.to_string(),
                            message: "fold returned no result".into(),
                        })
                    })?;
                Ok(Folded {
                    emits: check_emits(&plugin, folded.emits, Some(&policy.timers))?,
                    ..folded
                })
            })
    };
    let events = input.events;
    let first_error = match call(agg, *input) {
        (Ok(folded), _) => return KeyFold::applied(events.len(), folded),
        (Err(error), delays) if events.len() == 1 => {
            // A single event failed: that is the poison, no need to isolate.
            return KeyFold {
                failed: vec![Failed {
                    index: 0,
                    error,
                    delays,
                }],
                ..KeyFold::empty()
            };
        }
        (Err(e), _) => e,
    };
    tracing::debug!(
        pipeline = %policy.retry.pipeline, plugin = %plugin, key,
        offset = events.first().map(|e| e.offset),
        last_offset = events.last().map(|e| e.offset),
        error = %first_error, "batch failed; isolating"
    );
    let mut fold = KeyFold::empty();
    let mut current: Option<(State, u64)> = None;
    for (index, event) in events.iter().enumerate() {
        let one = KeyInput {
            key,
            state: current.as_ref().map(|(s, _)| s).or(input.state),
            version: current.as_ref().map_or(input.version, |(_, v)| *v),
            events: std::slice::from_ref(event),
        };
        match call(agg, one) {
            (Ok(folded), _) => {
                fold.emits.push((index, folded.emits));
                current = Some((folded.state, folded.version));
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
    if let Some((state, version)) = current {
        fold.state = Some(state);
        fold.version = version;
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
    events: &[Event<'_>],
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
        .map(|(r, delays)| {
            (
                r.and_then(|emits| check_emits(&plugin, emits, None)),
                delays,
            )
        })
        .collect()
}

/// Rejects emitted records aimed at invalid topic names (a plugin bug) and
/// timer requests that are malformed, over the key's cap, or not allowed
/// (`timers` is `None` for a handler).
fn check_emits(
    plugin: &str,
    emits: Vec<Emitted>,
    timers: Option<&super::timers::Rules>,
) -> Result<Vec<Emitted>, PluginError> {
    super::timers::check(plugin, timers, &emits)?;
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
/// key's events in offset order, placed next to each other so a call takes
/// a slice (the events are views: placing them copies no value).
pub struct ByKey<'a, 'e> {
    /// Each key with the indices (in the batch) of its events.
    groups: Vec<(&'a str, Vec<usize>)>,
    /// The events, key by key.
    events: Vec<Event<'e>>,
}

impl<'a, 'e> ByKey<'a, 'e> {
    /// Groups `events` by `keys` (one key per event, same order).
    pub fn new(keys: impl IntoIterator<Item = &'a str>, events: &[Event<'e>]) -> Self {
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
        let mut grouped = Vec::with_capacity(events.len());
        for (_, members) in &groups {
            grouped.extend(members.iter().filter_map(|&i| events.get(i).cloned()));
        }
        ByKey {
            groups,
            events: grouped,
        }
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Each key with the batch indices of its events and the events.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &[usize], &[Event<'e>])> + '_ {
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

    fn event(offset: i64) -> Event<'static> {
        Event {
            topic: "t",
            partition: 0,
            offset,
            timestamp_ms: 0,
            key: None,
            headers: &[],
            schema_id: None,
            value: "",
        }
    }

    #[test]
    fn events_group_by_key_in_first_seen_order_keeping_offsets_in_order() {
        let keys = ["a", "b", "a", "c", "b", "a"];
        let events: Vec<Event<'_>> = (0..6).map(event).collect();
        let by = ByKey::new(keys, &events);
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
