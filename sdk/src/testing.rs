//! A native test harness: run a plugin's logic with plain `cargo test`,
//! through the same boundary the host uses (states as MessagePack, kept
//! decoded between calls at the version the host names them).

use std::collections::BTreeMap;
use std::marker::PhantomData;

use crate::runtime::{KeyEvents, Resident};
use crate::{Aggregator, Emit, Event, Failure, Handler, TimerTime};

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
    /// Pending timers by (key, name), as the host keeps them.
    timers: BTreeMap<(String, String), (TimerTime, i64, serde_json::Value)>,
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
            timers: BTreeMap::new(),
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
        self.fold(key, events)
    }

    /// The pending timers of `key`: (name, clock, instant), by name.
    pub fn timers(&self, key: &str) -> Vec<(String, TimerTime, i64)> {
        self.timers
            .iter()
            .filter(|((k, _), _)| k == key)
            .map(|((_, name), (time, at, _))| (name.clone(), *time, *at))
            .collect()
    }

    /// Moves the host's clock to `wall_ms` and every partition's stream
    /// time to `stream_ms`, and fires the timers then due, earliest first,
    /// each through [`Aggregator::on_timer`] as the host does. Returns how
    /// many fired.
    ///
    /// # Errors
    /// The first failure of `on_timer` (that timer is gone, as a dead-lettered
    /// one is in the host).
    pub fn advance(&mut self, wall_ms: i64, stream_ms: i64) -> Result<usize, Failure> {
        let mut due: Vec<(i64, String, String)> = self
            .timers
            .iter()
            .filter(|(_, (time, at, _))| match time {
                TimerTime::Wall => *at <= wall_ms,
                TimerTime::Event => *at <= stream_ms,
            })
            .map(|((key, name), (_, at, _))| (*at, key.clone(), name.clone()))
            .collect();
        due.sort();
        for (_, key, name) in &due {
            self.fire(key, name)?;
        }
        Ok(due.len())
    }

    /// Fires `key`'s timer `name` now, whatever its instant (nothing when
    /// it has none).
    ///
    /// # Errors
    /// The plugin's failure in `on_timer`.
    pub fn fire(&mut self, key: &str, name: &str) -> Result<(), Failure> {
        let Some((time, at_ms, payload)) = self.timers.remove(&(key.to_owned(), name.to_owned()))
        else {
            return Ok(());
        };
        let value = serde_json::json!({
            "name": name, "at_ms": at_ms, "time": time, "payload": payload,
        });
        self.offset += 1;
        let fired = event(
            &format!("{}test", crate::TIMER_TOPIC_PREFIX),
            self.offset - 1,
            Some(key),
            &value.to_string(),
        );
        self.fold(key, vec![fired])
    }

    fn fold(&mut self, key: &str, events: Vec<Event<String>>) -> Result<(), Failure> {
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
        for e in emits {
            if e.topic != crate::TIMER_REQUEST_TOPIC {
                self.emits.push(e);
                continue;
            }
            let request: serde_json::Value = serde_json::from_str(&e.value)
                .map_err(|err| Failure::Fatal(format!("bad timer request {}: {err}", e.value)))?;
            let field = |name: &str| request.get(name).cloned().unwrap_or_default();
            let name = field("name").as_str().unwrap_or_default().to_owned();
            let id = (key.to_owned(), name);
            if field("op") == "cancel" {
                self.timers.remove(&id);
            } else {
                let time = serde_json::from_value(field("time"))
                    .map_err(|err| Failure::Fatal(format!("bad timer clock: {err}")))?;
                let at = field("at_ms").as_i64().unwrap_or_default();
                self.timers.insert(id, (time, at, field("payload")));
            }
        }
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
