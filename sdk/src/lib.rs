//! Write Eddy plugins in Rust.
//!
//! An Eddy plugin is a WebAssembly component that folds events into per-key
//! state (an [`Aggregator`]) or filters and routes them (a [`Handler`]). This
//! crate hides the component bindings: implement one trait on a type, call
//! [`export_aggregator!`] or [`export_handler!`], and build with
//! `eddy plugin build <dir>`.
//!
//! ```
//! use eddy_sdk::{Aggregator, Event, Failure, Output};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Deposit { amount: i64 }
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Balance { total: i64, deposits: u64 }
//!
//! struct Bank;
//!
//! impl Aggregator for Bank {
//!     type Event = Deposit;
//!     type State = Balance;
//!
//!     fn init(_key: &str) -> Balance { Balance::default() }
//!
//!     fn apply(state: &mut Balance, event: Event<Deposit>, _out: &mut Output) -> Result<(), Failure> {
//!         state.total += event.value.amount;
//!         state.deposits += 1;
//!         Ok(())
//!     }
//! }
//! eddy_sdk::export_aggregator!(Bank);
//!
//! // The same logic, tested natively with plain `cargo test`:
//! let mut bank = eddy_sdk::testing::AggregatorHarness::<Bank>::new();
//! bank.push("alice", r#"{"amount": 5}"#).unwrap();
//! bank.push("alice", r#"{"amount": 7}"#).unwrap();
//! assert_eq!(bank.state("alice").unwrap()["total"], 12);
//! ```
#![deny(missing_docs)]

use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod log;
pub mod runtime;
pub mod testing;
pub mod windows;

#[cfg(all(
    target_arch = "wasm32",
    any(feature = "aggregator", feature = "handler")
))]
#[doc(hidden)]
pub mod bindings;

/// The value of the environment variable `name` the host grants the plugin
/// (`[plugin.grants] env` in its config), if granted: a plugin's settings.
/// Natively (in tests) the process's own environment.
pub fn env(name: &str) -> Option<String> {
    #[cfg(all(
        target_arch = "wasm32",
        any(feature = "aggregator", feature = "handler")
    ))]
    {
        bindings::environment::get_environment()
            .into_iter()
            .find_map(|(k, v)| (k == name).then_some(v))
    }
    #[cfg(not(all(
        target_arch = "wasm32",
        any(feature = "aggregator", feature = "handler")
    )))]
    {
        std::env::var(name).ok()
    }
}

/// One input event with its value decoded into `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<T> {
    /// The topic the event was read from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset within the partition.
    pub offset: i64,
    /// When it was produced, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The record key, when it has one.
    pub key: Option<String>,
    /// The record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The Avro schema id the value was written with, when it was Avro.
    pub schema_id: Option<u32>,
    /// The decoded value.
    pub value: T,
}

impl<T> Event<T> {
    /// The first header named `name`, if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The same event with another value.
    pub fn with_value<U>(self, value: U) -> Event<U> {
        Event {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key,
            headers: self.headers,
            schema_id: self.schema_id,
            value,
        }
    }
}

/// A record the plugin asks the host to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    /// Target topic.
    pub topic: String,
    /// Record key (chooses the partition).
    pub key: Option<String>,
    /// Value as JSON text.
    pub value: String,
    /// Extra headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why a plugin could not process its input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The input is wrong and will never succeed: the host dead-letters it.
    Invalid(String),
    /// A transient problem: the host may retry.
    Retryable(String),
    /// The plugin cannot go on: the input is dead-lettered, the instance recycled.
    Fatal(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Invalid(m) => write!(f, "invalid: {m}"),
            Failure::Retryable(m) => write!(f, "retryable: {m}"),
            Failure::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

impl std::error::Error for Failure {}

/// Records produced while processing one event.
#[derive(Debug, Default)]
pub struct Output {
    emits: Vec<Emit>,
}

impl Output {
    /// Produces `value` (serialised to JSON) to `topic` with an optional key.
    ///
    /// # Errors
    /// [`Failure::Fatal`] when `value` cannot be serialised.
    pub fn emit<V: Serialize + ?Sized>(
        &mut self,
        topic: &str,
        key: Option<&str>,
        value: &V,
    ) -> Result<(), Failure> {
        self.emit_with_headers(topic, key, value, Vec::new())
    }

    /// Like [`Output::emit`], with extra headers.
    ///
    /// # Errors
    /// [`Failure::Fatal`] when `value` cannot be serialised.
    pub fn emit_with_headers<V: Serialize + ?Sized>(
        &mut self,
        topic: &str,
        key: Option<&str>,
        value: &V,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Failure> {
        let value = serde_json::to_string(value)
            .map_err(|e| Failure::Fatal(format!("cannot serialise a record for {topic}: {e}")))?;
        self.emits.push(Emit {
            topic: topic.to_owned(),
            key: key.map(str::to_owned),
            value,
            headers,
        });
        Ok(())
    }

    /// The records emitted so far.
    pub fn emits(&self) -> &[Emit] {
        &self.emits
    }

    pub(crate) fn into_emits(self) -> Vec<Emit> {
        self.emits
    }

    /// Sets a timer named `name` on the key being folded, to fire at
    /// `at_ms` (ms since the Unix epoch) on the `time` clock; the host then
    /// calls [`Aggregator::on_timer`] with the key's state and `payload`.
    /// Setting a name the key already has replaces that timer. The timer is
    /// stored with the state this fold produces, so it exists exactly when
    /// that state is committed.
    ///
    /// # Errors
    /// [`Failure::Fatal`] when `payload` cannot be serialised.
    pub fn set_timer<P: Serialize + ?Sized>(
        &mut self,
        name: &str,
        time: TimerTime,
        at_ms: i64,
        payload: &P,
    ) -> Result<(), Failure> {
        let payload = serde_json::to_value(payload).map_err(|e| {
            Failure::Fatal(format!("cannot serialise timer {name:?}'s payload: {e}"))
        })?;
        let request = serde_json::json!({
            "op": "set", "name": name, "at_ms": at_ms, "time": time.as_str(), "payload": payload,
        });
        self.emit(TIMER_REQUEST_TOPIC, None, &request)
    }

    /// Cancels the key's timer `name` (nothing happens when it has none;
    /// a timer that already fired still reaches [`Aggregator::on_timer`]).
    pub fn cancel_timer(&mut self, name: &str) {
        let request = serde_json::json!({"op": "cancel", "name": name});
        self.emits.push(Emit {
            topic: TIMER_REQUEST_TOPIC.to_owned(),
            key: None,
            value: request.to_string(),
            headers: Vec::new(),
        });
    }
}

/// The topic a timer request is emitted to: the host stores the request
/// instead of producing a record (see [`Output::set_timer`]).
pub const TIMER_REQUEST_TOPIC: &str = "__eddy.timers";

/// A fired timer reaches the plugin as an event of a topic that starts with
/// this (`__eddy.timers.{pipeline}`); the SDK hands it to
/// [`Aggregator::on_timer`].
pub const TIMER_TOPIC_PREFIX: &str = "__eddy.timers.";

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimerTime {
    /// The host's clock: the timer fires once the host's time passes it.
    Wall,
    /// Event time: the timer fires once the partition's stream time (the
    /// highest event timestamp the pipeline has seen in it, less its
    /// `allowed_lateness_ms`) passes it.
    Event,
}

impl TimerTime {
    fn as_str(self) -> &'static str {
        match self {
            TimerTime::Wall => "wall",
            TimerTime::Event => "event",
        }
    }
}

/// A timer that fired, as [`Aggregator::on_timer`] receives it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Timer {
    /// Its name.
    pub name: String,
    /// The instant it was set for (ms since the Unix epoch).
    pub at_ms: i64,
    /// Its clock.
    pub time: TimerTime,
    /// The payload given to [`Output::set_timer`].
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// A stateful fold over one key's events.
///
/// The host keeps one state per key. For each micro-batch it calls the plugin
/// once per key with that key's events in offset order; the SDK decodes the
/// state and each event from JSON and calls [`Aggregator::apply`] per event.
pub trait Aggregator {
    /// The event value type, decoded from the event's JSON.
    type Event: DeserializeOwned;
    /// The state type, stored by the host as JSON.
    type State: Serialize + DeserializeOwned;

    /// The state of a key before its first event.
    fn init(key: &str) -> Self::State;

    /// Folds one event into the state; records emitted through `out` are
    /// committed together with the new state.
    ///
    /// # Errors
    /// A [`Failure`] leaves the key's state as it was before the batch.
    fn apply(
        state: &mut Self::State,
        event: Event<Self::Event>,
        out: &mut Output,
    ) -> Result<(), Failure>;

    /// Called when a timer of the key (set with [`Output::set_timer`])
    /// fires, with the key's state; its changes and records are committed
    /// like an event's, and its failure is dead-lettered like one. In a
    /// micro-batch, a key's fired timers come before its events. Does
    /// nothing unless implemented.
    ///
    /// # Errors
    /// A [`Failure`] leaves the key's state as it was before the batch.
    fn on_timer(state: &mut Self::State, timer: Timer, out: &mut Output) -> Result<(), Failure> {
        let _ = (state, timer, out);
        Ok(())
    }
}

/// A stateless step: filter, route or enrich events.
pub trait Handler {
    /// The event value type, decoded from the event's JSON.
    type Event: DeserializeOwned;

    /// Handles one event. Emitting nothing filters it out.
    ///
    /// # Errors
    /// A [`Failure`] sends this event (only) to the dead letters.
    fn handle(event: Event<Self::Event>, out: &mut Output) -> Result<(), Failure>;

    /// Called on each run of a schedule (`[[schedule]]`) of a pipeline that
    /// has no aggregator: the timer is named `schedule:{name}` and carries
    /// the schedule's payload. Does nothing unless implemented.
    ///
    /// # Errors
    /// A [`Failure`] dead-letters the run.
    fn on_timer(timer: Timer, out: &mut Output) -> Result<(), Failure> {
        let _ = (timer, out);
        Ok(())
    }
}

/// Exports a type implementing [`Aggregator`] as the plugin's entry point.
///
/// Use it once per plugin crate, which must enable the SDK's `aggregator`
/// feature. Outside WebAssembly it expands to nothing, so the crate's native
/// tests build as usual.
#[macro_export]
macro_rules! export_aggregator {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            type __EddyAggregatorExport = $crate::bindings::AggregatorExport<$ty>;
            $crate::bindings::aggregator::__export_aggregator_world!(
                __EddyAggregatorExport with_types_in $crate::bindings::aggregator
            );
        };
    };
}

/// Exports a type implementing [`Handler`] as the plugin's entry point.
///
/// Use it once per plugin crate, which must enable the SDK's `handler`
/// feature. Outside WebAssembly it expands to nothing.
#[macro_export]
macro_rules! export_handler {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            type __EddyHandlerExport = $crate::bindings::HandlerExport<$ty>;
            $crate::bindings::handler::__export_handler_world!(
                __EddyHandlerExport with_types_in $crate::bindings::handler
            );
        };
    };
}
