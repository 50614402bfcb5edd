//! A native test harness: run a plugin's logic with plain `cargo test`,
//! through the same boundary the host uses (states as MessagePack, kept
//! decoded between calls at the version the host names them).

use std::collections::BTreeMap;
use std::marker::PhantomData;

use crate::runtime::{KeyEvents, Resident};
use crate::{Aggregator, Emit, Event, Failure, Handler};

fn event(topic: &str, offset: i64, key: Option<&str>, value: &str) -> Event<String> {
    Event {
        topic: topic.to_owned(),
        partition: 0,
        offset,
        timestamp_ms: 0,
        key: key.map(str::to_owned),
        headers: Vec::new(),
        schema_id: None,
        value: value.to_owned(),
    }
}

/// Drives an [`Aggregator`] the way the host does: one state per key, as
/// bytes with a version, and the plugin's resident states.
pub struct AggregatorHarness<A: Aggregator> {
    /// Each key's state: its bytes, its JSON rendering, its version.
    states: BTreeMap<String, (Vec<u8>, String, u64)>,
    resident: Resident<A::State>,
    versions: u64,
    emits: Vec<Emit>,
    offset: i64,
    _plugin: PhantomData<fn() -> A>,
}

impl<A: Aggregator> Default for AggregatorHarness<A> {
    /// See [`AggregatorHarness::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregator> AggregatorHarness<A> {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            states: BTreeMap::new(),
            resident: Resident::with_budget(16 << 20),
            versions: 0,
            emits: Vec::new(),
            offset: 0,
            _plugin: PhantomData,
        }
    }

    /// Folds one event (JSON text) into `key`'s state.
    ///
    /// # Errors
    /// The plugin's failure; the state is then left unchanged.
    pub fn push(&mut self, key: &str, value_json: &str) -> Result<(), Failure> {
        self.push_batch(key, &[value_json])
    }

    /// Folds several events of one key in one call, as one host micro-batch.
    ///
    /// # Errors
    /// The plugin's failure; the state is then left unchanged.
    pub fn push_batch(&mut self, key: &str, values_json: &[&str]) -> Result<(), Failure> {
        let events = values_json
            .iter()
            .map(|v| {
                self.offset += 1;
                event("test", self.offset - 1, Some(key), v)
            })
            .collect();
        self.versions += 1;
        let current = self.states.get(key);
        let batch = vec![KeyEvents {
            key: key.to_owned(),
            state: current.map(|(bytes, _, _)| bytes.clone()),
            version: current.map_or(0, |(_, _, v)| *v),
            next_version: self.versions,
            events,
        }];
        let (state, emits) = crate::runtime::fold::<A>(&mut self.resident, batch)
            .pop()
            .unwrap_or_else(|| Err(Failure::Fatal("the fold returned no result".into())))?;
        let json = rmp_serde::from_slice::<serde_json::Value>(&state)
            .map_err(|e| Failure::Fatal(format!("the state of {key:?} is not MessagePack: {e}")))?
            .to_string();
        self.states
            .insert(key.to_owned(), (state, json, self.versions));
        self.emits.extend(emits);
        Ok(())
    }

    /// The state of `key` as JSON, if it has one.
    pub fn state(&self, key: &str) -> Option<serde_json::Value> {
        self.states
            .get(key)
            .and_then(|(_, json, _)| serde_json::from_str(json).ok())
    }

    /// The state of `key` as the host serves it (JSON text).
    pub fn state_json(&self, key: &str) -> Option<&str> {
        self.states.get(key).map(|(_, json, _)| json.as_str())
    }

    /// Everything emitted so far, in order.
    pub fn emits(&self) -> &[Emit] {
        &self.emits
    }
}

/// Drives a [`Handler`] the way the host does.
pub struct HandlerHarness<H> {
    offset: i64,
    _plugin: PhantomData<fn() -> H>,
}

impl<H: Handler> Default for HandlerHarness<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Handler> HandlerHarness<H> {
    /// A fresh harness.
    pub fn new() -> Self {
        Self {
            offset: 0,
            _plugin: PhantomData,
        }
    }

    /// Handles one event (JSON text) read from `topic` with `key`.
    ///
    /// # Errors
    /// The plugin's failure for this event.
    pub fn handle(
        &mut self,
        topic: &str,
        key: Option<&str>,
        value_json: &str,
    ) -> Result<Vec<Emit>, Failure> {
        self.offset += 1;
        let mut results =
            crate::runtime::handle::<H>(vec![event(topic, self.offset - 1, key, value_json)]);
        results
            .pop()
            .unwrap_or_else(|| Err(Failure::Fatal("the handler returned no result".into())))
    }
}
