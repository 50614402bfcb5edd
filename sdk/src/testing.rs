//! A native test harness: run a plugin's logic with plain `cargo test`,
//! through the same JSON boundary the host uses.

use std::collections::BTreeMap;
use std::marker::PhantomData;

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

/// Drives an [`Aggregator`] the way the host does: one JSON state per key.
pub struct AggregatorHarness<A> {
    states: BTreeMap<String, String>,
    emits: Vec<Emit>,
    offset: i64,
    _plugin: PhantomData<fn() -> A>,
}

impl<A: Aggregator> Default for AggregatorHarness<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregator> AggregatorHarness<A> {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            states: BTreeMap::new(),
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
        let (state, emits) =
            crate::runtime::apply::<A>(key, self.states.get(key).map(String::as_str), events)?;
        self.states.insert(key.to_owned(), state);
        self.emits.extend(emits);
        Ok(())
    }

    /// The state of `key` as JSON, if it has one.
    pub fn state(&self, key: &str) -> Option<serde_json::Value> {
        self.states
            .get(key)
            .and_then(|s| serde_json::from_str(s).ok())
    }

    /// The state of `key` as stored (JSON text).
    pub fn state_json(&self, key: &str) -> Option<&str> {
        self.states.get(key).map(String::as_str)
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
