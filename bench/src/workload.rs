//! The AsyncProcess workload: execution events spread over `keys` keys, in a
//! deterministic order so every run sees the same stream.

use eddy::execute::bindings::Event;

const STATES: [&str; 5] = ["STARTED", "DONE", "ERROR", "RETRY", "REJECTED"];

/// The key of event `n` among `keys` keys.
#[must_use]
pub fn key(n: u64, keys: u64) -> String {
    format!("k{:06}", (n * 7919) % keys.max(1))
}

/// Execution event `n` over `keys` keys, as JSON.
#[must_use]
pub fn execution(n: u64, keys: u64) -> serde_json::Value {
    serde_json::json!({
        "id": format!("e{n:08}"), "asyncProcessId": key(n, keys),
        "log": "", "description": format!("step {n}"), "params": "{}",
        "time": 1_000_000 + n,
        "state": STATES.get((n / 7) as usize % STATES.len()).copied().unwrap_or("DONE"),
    })
}

/// The key of [`one_key_batch`]'s events.
pub const ONE_KEY: &str = "k000000";

/// `n` executions of one key ([`ONE_KEY`]), as the host hands them to an aggregator.
#[must_use]
pub fn one_key_batch(n: usize) -> Vec<Event> {
    (0..n as u64)
        .map(|i| Event {
            topic: "async-process-execution".into(),
            partition: 0,
            offset: i as i64,
            timestamp_ms: 0,
            key: Some(ONE_KEY.into()),
            headers: Vec::new(),
            schema_id: None,
            value: execution(i, 1).to_string(),
        })
        .collect()
}

/// The same batch as the SDK's native events, for the fold compiled into
/// the benchmark (no WebAssembly).
#[must_use]
pub fn native(events: &[Event]) -> Vec<eddy_sdk::Event<String>> {
    events
        .iter()
        .map(|e| eddy_sdk::Event {
            topic: e.topic.clone(),
            partition: e.partition,
            offset: e.offset,
            timestamp_ms: e.timestamp_ms,
            key: e.key.clone(),
            headers: Vec::new(),
            schema_id: None,
            value: e.value.clone(),
        })
        .collect()
}

/// A plugin config for measuring a component: generous limits, no retries,
/// so the limits never shape the figures.
#[must_use]
pub fn unlimited_plugin(name: &str, path: &std::path::Path) -> eddy::config::PluginConfig {
    eddy::config::PluginConfig {
        name: name.to_owned(),
        path: path.to_path_buf(),
        timeout_ms: 60_000,
        memory_mb: 1024,
        max_output_bytes: usize::MAX,
        max_retries: 0,
        retry_backoff_ms: 0,
        grants: eddy::config::Grants::default(),
    }
}
