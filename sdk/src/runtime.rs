//! The boundary between the host and a plugin's typed logic.
//!
//! Both the WebAssembly exports and the native [`testing`](crate::testing)
//! harness go through these functions, so a plugin tested natively behaves
//! exactly as it does inside the host.
//!
//! An aggregator's state crosses as MessagePack with field names
//! (`rmp-serde`'s `to_vec_named`): the host renders it as JSON for its
//! readers, and a state written before a field was added still decodes when
//! the field has a serde default. Between calls the decoded states stay in
//! [`Resident`], so a key's next micro-batch does not decode its state
//! again: the host names each state it hands over with a version, and a
//! state is used from memory only when its version is the one this
//! instance produced and the host committed.

use std::collections::HashMap;

use crate::{Aggregator, Emit, Event, Failure, Handler, Output};

/// One key's share of a fold, as the host hands it over.
#[derive(Debug, Clone)]
pub struct KeyEvents {
    /// The key.
    pub key: String,
    /// Its current state (MessagePack), none before its first event.
    pub state: Option<Vec<u8>>,
    /// The version of `state` (0: unknown).
    pub version: u64,
    /// The version the new state will have if the host commits it.
    pub next_version: u64,
    /// Its new events, in offset order (values as JSON text).
    pub events: Vec<Event<String>>,
}

/// A key's new state (MessagePack) and the records its events emitted.
pub type Outcome = (Vec<u8>, Vec<Emit>);

/// The decoded states an instance keeps between calls, within a budget of
/// bytes (each state counted at twice its encoded size: a rough measure of
/// what its decoded form takes).
///
/// Once the budget is full, a state that is not kept yet gets in only
/// one time in [`Resident::ADMIT_EVERY`], in place of an arbitrary one.
/// The keys kept then stay kept (a state used from here leaves room for
/// its successor), so when a pipeline's keys outnumber the budget, the
/// ones kept are found again instead of each being dropped before its key
/// comes back: with 50,000 keys cycling through a budget of a few
/// thousand, making room for every new state cost more than keeping none.
pub struct Resident<S> {
    states: HashMap<String, (u64, S, usize)>,
    bytes: usize,
    budget: usize,
    /// States refused while full, since the last one admitted.
    refused: u32,
}

impl<S> Default for Resident<S> {
    fn default() -> Self {
        Resident {
            states: HashMap::new(),
            bytes: 0,
            budget: 0,
            refused: 0,
        }
    }
}

impl<S> Resident<S> {
    /// While full, one new state in this many gets in.
    pub const ADMIT_EVERY: u32 = 64;

    /// Keeps up to `budget` bytes of states (0: none).
    pub fn with_budget(budget: u64) -> Self {
        Resident {
            budget: usize::try_from(budget).unwrap_or(usize::MAX),
            ..Resident::default()
        }
    }

    /// Changes the budget (dropping states if now over it).
    pub fn set_budget(&mut self, budget: u64) {
        self.budget = usize::try_from(budget).unwrap_or(usize::MAX);
        self.trim();
    }

    /// How many states are kept.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Takes `key`'s state out if it is the one of `version`.
    fn take(&mut self, key: &str, version: u64) -> Option<S> {
        if version == 0 {
            return None;
        }
        let (kept, _, _) = self.states.get(key)?;
        if *kept != version {
            return None;
        }
        let (_, state, size) = self.states.remove(key)?;
        self.bytes = self.bytes.saturating_sub(size);
        Some(state)
    }

    /// Drops `key`'s state (its fold failed: what is kept may be half-applied).
    fn forget(&mut self, key: &str) {
        if let Some((_, _, size)) = self.states.remove(key) {
            self.bytes = self.bytes.saturating_sub(size);
        }
    }

    fn keep(&mut self, key: String, version: u64, state: S, encoded: usize) {
        if self.budget == 0 {
            return;
        }
        let size = encoded.saturating_mul(2) + key.len() + 64;
        if size > self.budget / 4 {
            return;
        }
        // A stale state of the key (another version) gives its room.
        self.forget(&key);
        if self.bytes + size > self.budget {
            self.refused += 1;
            if self.refused < Self::ADMIT_EVERY {
                return;
            }
            self.refused = 0;
            self.make_room(size);
        }
        self.bytes += size;
        self.states.insert(key, (version, state, size));
    }

    /// Drops arbitrary states until `size` more bytes fit.
    fn make_room(&mut self, size: usize) {
        let goal = self.budget.saturating_sub(size);
        let mut drop = Vec::new();
        let mut bytes = self.bytes;
        for (key, (_, _, kept)) in &self.states {
            if bytes <= goal {
                break;
            }
            bytes = bytes.saturating_sub(*kept);
            drop.push(key.clone());
        }
        for key in drop {
            self.forget(&key);
        }
    }

    fn trim(&mut self) {
        if self.bytes > self.budget {
            self.make_room(0);
        }
    }
}

/// Folds each key's events (values as JSON text) into its state
/// (MessagePack), using the decoded states `resident` keeps and keeping the
/// new ones: one result per key, in order.
pub fn fold<A: Aggregator>(
    resident: &mut Resident<A::State>,
    batch: Vec<KeyEvents>,
) -> Vec<Result<Outcome, Failure>> {
    crate::log::report_panics();
    batch
        .into_iter()
        .map(|k| {
            let KeyEvents {
                key,
                state,
                version,
                next_version,
                events,
            } = k;
            // The new state is about as large as the old one: writing it
            // into a buffer of that size spares the buffer's regrowth.
            let size_hint = state.as_ref().map_or(256, |s| s.len() + s.len() / 8 + 256);
            let current = match resident.take(&key, version) {
                Some(s) => s,
                None => match &state {
                    Some(bytes) => decode_state::<A::State>(&key, bytes)?,
                    None => A::init(&key),
                },
            };
            match fold_key::<A>(&key, current, events) {
                Ok((state, emits)) => {
                    let mut bytes = Vec::with_capacity(size_hint);
                    rmp_serde::encode::write_named(&mut bytes, &state).map_err(|e| {
                        Failure::Fatal(format!("state of key {key:?} does not serialise: {e}"))
                    })?;
                    resident.keep(key, next_version, state, bytes.len());
                    Ok((bytes, emits))
                }
                Err(f) => {
                    resident.forget(&key);
                    Err(f)
                }
            }
        })
        .collect()
}

fn fold_key<A: Aggregator>(
    key: &str,
    mut state: A::State,
    events: Vec<Event<String>>,
) -> Result<(A::State, Vec<Emit>), Failure> {
    crate::log::set_key(Some(key));
    let mut out = Output::default();
    let mut r = Ok(());
    for event in events {
        crate::log::set_offset(Some(event.offset));
        r = if event.topic.starts_with(crate::TIMER_TOPIC_PREFIX) {
            decode::<crate::Timer>(&event)
                .and_then(|timer| A::on_timer(&mut state, timer, &mut out))
        } else {
            decode::<A::Event>(&event)
                .and_then(|value| A::apply(&mut state, event.with_value(value), &mut out))
        };
        if r.is_err() {
            break;
        }
    }
    crate::log::set_key(None);
    crate::log::set_offset(None);
    r.map(|()| (state, out.into_emits()))
}

/// Decodes a stored state (MessagePack: the host converts a state that
/// another version of the plugin wrote as JSON).
fn decode_state<S: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<S, Failure> {
    rmp_serde::from_slice::<S>(bytes)
        .map_err(|e| Failure::Invalid(format!("stored state of key {key:?} does not decode: {e}")))
}

/// Folds one key's events (values as JSON text) into its state as JSON
/// text: the 0.1.0 contract's boundary, which the benchmarks also use as
/// the baseline of a JSON state.
///
/// # Errors
/// The first event's [`Failure`], or [`Failure::Invalid`] when the state or
/// an event does not decode into the plugin's types.
pub fn apply_json<A: Aggregator>(
    key: &str,
    state: Option<&str>,
    events: Vec<Event<String>>,
) -> Result<(String, Vec<Emit>), Failure> {
    crate::log::report_panics();
    let current = match state {
        Some(json) => serde_json::from_str::<A::State>(json).map_err(|e| {
            Failure::Invalid(format!("stored state of key {key:?} does not decode: {e}"))
        })?,
        None => A::init(key),
    };
    let (state, emits) = fold_key::<A>(key, current, events)?;
    let json = serde_json::to_string(&state)
        .map_err(|e| Failure::Fatal(format!("state of key {key:?} does not serialise: {e}")))?;
    Ok((json, emits))
}

/// Handles a batch of events, one result per event in order.
pub fn handle<H: Handler>(events: Vec<Event<String>>) -> Vec<Result<Vec<Emit>, Failure>> {
    crate::log::report_panics();
    events
        .into_iter()
        .map(|event| {
            crate::log::set_key(event.key.as_deref());
            crate::log::set_offset(Some(event.offset));
            let mut out = Output::default();
            if event.topic.starts_with(crate::TIMER_TOPIC_PREFIX) {
                H::on_timer(decode::<crate::Timer>(&event)?, &mut out)?;
            } else {
                let value = decode::<H::Event>(&event)?;
                H::handle(event.with_value(value), &mut out)?;
            }
            Ok(out.into_emits())
        })
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(event: &Event<String>) -> Result<T, Failure> {
    serde_json::from_str(&event.value).map_err(|e| {
        Failure::Invalid(format!(
            "event {}/{}@{} does not decode: {e}",
            event.topic, event.partition, event.offset
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Deserialize)]
    struct Add {
        n: i64,
    }

    #[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
    struct Sum {
        total: i64,
        #[serde(default)]
        events: u32,
    }

    struct Adder;

    impl Aggregator for Adder {
        type Event = Add;
        type State = Sum;
        fn init(_key: &str) -> Sum {
            Sum::default()
        }
        fn apply(state: &mut Sum, event: Event<Add>, _out: &mut Output) -> Result<(), Failure> {
            if event.value.n < 0 {
                return Err(Failure::Invalid("negative".into()));
            }
            state.total += event.value.n;
            state.events += 1;
            Ok(())
        }
    }

    fn ev(n: i64) -> Event<String> {
        Event {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: 0,
            key: None,
            headers: Vec::new(),
            schema_id: None,
            value: format!("{{\"n\":{n}}}"),
        }
    }

    fn call(
        r: &mut Resident<Sum>,
        state: Option<Vec<u8>>,
        version: u64,
        next_version: u64,
        ns: &[i64],
    ) -> Result<Outcome, Failure> {
        fold::<Adder>(
            r,
            vec![KeyEvents {
                key: "k".into(),
                state,
                version,
                next_version,
                events: ns.iter().map(|&n| ev(n)).collect(),
            }],
        )
        .pop()
        .unwrap_or(Err(Failure::Fatal("no result".into())))
    }

    fn sum(bytes: &[u8]) -> Result<Sum, Failure> {
        rmp_serde::from_slice(bytes).map_err(|e| Failure::Fatal(e.to_string()))
    }

    #[test]
    fn a_resident_state_is_used_only_at_the_version_the_host_names() -> Result<(), Failure> {
        let mut r = Resident::with_budget(1 << 20);
        let (one, _) = call(&mut r, None, 0, 1, &[1, 2])?;
        assert_eq!(
            sum(&one)?,
            Sum {
                total: 3,
                events: 2
            }
        );
        assert_eq!(r.len(), 1);
        // Version 1 is kept: the bytes the host sends are not even read.
        let (two, _) = call(&mut r, Some(b"garbage".to_vec()), 1, 2, &[10])?;
        assert_eq!(sum(&two)?.total, 13);
        // Another version: the bytes are the truth.
        let older = rmp_serde::to_vec_named(&Sum {
            total: 100,
            events: 1,
        })
        .map_err(|e| Failure::Fatal(e.to_string()))?;
        let (three, _) = call(&mut r, Some(older), 1, 3, &[1])?;
        assert_eq!(sum(&three)?.total, 101);
        // Unknown (0): decoded from the bytes too.
        let (four, _) = call(&mut r, Some(three.clone()), 0, 4, &[1])?;
        assert_eq!(sum(&four)?.total, 102);
        Ok(())
    }

    #[test]
    fn a_failed_fold_forgets_the_half_applied_state() -> Result<(), Failure> {
        let mut r = Resident::with_budget(1 << 20);
        let (one, _) = call(&mut r, None, 0, 1, &[5])?;
        // 7 applies, then -1 fails: the key's resident state is dropped.
        assert!(call(&mut r, Some(one.clone()), 1, 2, &[7, -1]).is_err());
        assert!(r.is_empty());
        let (again, _) = call(&mut r, Some(one), 1, 3, &[7])?;
        assert_eq!(sum(&again)?.total, 12);
        Ok(())
    }

    #[test]
    fn states_stay_within_the_budget_and_none_are_kept_without_one() -> Result<(), Failure> {
        let mut none = Resident::with_budget(0);
        call(&mut none, None, 0, 1, &[1])?;
        assert!(none.is_empty());
        let mut small = Resident::<Sum>::with_budget(4_000);
        for i in 0..200 {
            let k = KeyEvents {
                key: format!("key-{i}"),
                state: None,
                version: 0,
                next_version: i + 1,
                events: vec![ev(1)],
            };
            for r in fold::<Adder>(&mut small, vec![k]) {
                r?;
            }
            assert!(
                small.bytes <= small.budget,
                "{} > {}",
                small.bytes,
                small.budget
            );
        }
        assert!(!small.is_empty());
        Ok(())
    }

    #[test]
    fn when_full_the_states_kept_stay_kept_and_newcomers_get_in_rarely() -> Result<(), Failure> {
        let mut r = Resident::<Sum>::with_budget(2_000);
        let call = |r: &mut Resident<Sum>, key: &str, state: Option<Vec<u8>>, version, next| {
            fold::<Adder>(
                r,
                vec![KeyEvents {
                    key: key.into(),
                    state,
                    version,
                    next_version: next,
                    events: vec![ev(1)],
                }],
            )
            .pop()
            .unwrap_or(Err(Failure::Fatal("no result".into())))
        };
        // Fill the budget: keys get in until one does not.
        let mut k = 0;
        while r.len() == k {
            call(&mut r, &format!("k{k:03}"), None, 0, 1000 + k as u64)?;
            k += 1;
        }
        let members = r.len();
        assert!(members > 5 && r.bytes <= r.budget, "{members}");
        // Newcomers, fewer than one admission's worth: none gets in.
        for n in 0..Resident::<Sum>::ADMIT_EVERY - 2 {
            call(&mut r, &format!("n{n:03}"), None, 0, 5000 + u64::from(n))?;
        }
        assert_eq!(r.len(), members);
        // Every member's state is used from memory: the bytes sent are garbage.
        for m in 0..members {
            call(
                &mut r,
                &format!("k{m:03}"),
                Some(b"garbage".to_vec()),
                1000 + m as u64,
                9000 + m as u64,
            )
            .map_err(|f| Failure::Fatal(format!("member k{m:03} was dropped: {f}")))?;
        }
        // The next newcomer gets in, in place of an arbitrary state.
        call(&mut r, "newcomer", None, 0, 9999)?;
        assert!(call(&mut r, "newcomer", Some(b"garbage".to_vec()), 9999, 10_000).is_ok());
        assert!(r.len() <= members && r.bytes <= r.budget);
        Ok(())
    }

    #[test]
    fn a_field_added_with_a_default_reads_states_written_without_it() -> Result<(), Failure> {
        #[derive(Serialize)]
        struct Old {
            total: i64,
        }
        let old = rmp_serde::to_vec_named(&Old { total: 4 })
            .map_err(|e| Failure::Fatal(e.to_string()))?;
        let mut r = Resident::with_budget(0);
        let (new, _) = call(&mut r, Some(old), 0, 1, &[1])?;
        assert_eq!(
            sum(&new)?,
            Sum {
                total: 5,
                events: 1
            }
        );
        Ok(())
    }
}
