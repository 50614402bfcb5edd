//! The JSON boundary between the host and a plugin's typed logic.
//!
//! Both the WebAssembly exports and the native [`testing`](crate::testing)
//! harness go through these functions, so a plugin tested natively behaves
//! exactly as it does inside the host.

use crate::{Aggregator, Emit, Event, Failure, Handler, Output};

/// Folds one key's events (values as JSON text) into its state (JSON text).
///
/// # Errors
/// The first event's [`Failure`], or [`Failure::Invalid`] when the state or
/// an event does not decode into the plugin's types.
pub fn apply<A: Aggregator>(
    key: &str,
    state: Option<&str>,
    events: Vec<Event<String>>,
) -> Result<(String, Vec<Emit>), Failure> {
    let mut current = match state {
        Some(json) => serde_json::from_str::<A::State>(json).map_err(|e| {
            Failure::Invalid(format!("stored state of key {key:?} does not decode: {e}"))
        })?,
        None => A::init(key),
    };
    let mut out = Output::default();
    for event in events {
        let value = decode::<A::Event>(&event)?;
        A::apply(&mut current, event.with_value(value), &mut out)?;
    }
    let json = serde_json::to_string(&current)
        .map_err(|e| Failure::Fatal(format!("state of key {key:?} does not serialise: {e}")))?;
    Ok((json, out.into_emits()))
}

/// Handles a batch of events, one result per event in order.
pub fn handle<H: Handler>(events: Vec<Event<String>>) -> Vec<Result<Vec<Emit>, Failure>> {
    events
        .into_iter()
        .map(|event| {
            let value = decode::<H::Event>(&event)?;
            let mut out = Output::default();
            H::handle(event.with_value(value), &mut out)?;
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
