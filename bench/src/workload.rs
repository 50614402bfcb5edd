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
    execution_of(n, &key(n, keys))
}

/// Execution event `n` of process `key`, as JSON.
#[must_use]
pub fn execution_of(n: u64, key: &str) -> serde_json::Value {
    serde_json::json!({
        "id": format!("e{n:08}"), "asyncProcessId": key,
        "log": "", "description": format!("step {n}"), "params": "{}",
        "time": 1_000_000 + n,
        "state": STATES.get((n / 7) as usize % STATES.len()).copied().unwrap_or("DONE"),
    })
}

/// The key of [`one_key_batch`]'s events.
pub const ONE_KEY: &str = "k000000";

/// The topic of the workload's events.
pub const TOPIC: &str = "async-process-execution";

/// Events' values (JSON text) of one key, from which the host's event views
/// are made.
pub struct Batch {
    key: String,
    first_offset: i64,
    values: Vec<String>,
}

impl Batch {
    /// `n` executions of `key`, from event number `first`.
    #[must_use]
    pub fn of(key: &str, first: u64, n: usize) -> Self {
        Batch {
            key: key.to_owned(),
            first_offset: first as i64,
            values: (first..first + n as u64)
                .map(|i| execution_of(i, key).to_string())
                .collect(),
        }
    }

    /// The key.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The events as the host hands them to an aggregator.
    #[must_use]
    pub fn events(&self) -> Vec<Event<'_>> {
        self.values
            .iter()
            .enumerate()
            .map(|(i, value)| Event {
                topic: TOPIC,
                partition: 0,
                offset: self.first_offset + i as i64,
                timestamp_ms: 0,
                key: Some(&self.key),
                headers: &[],
                schema_id: None,
                value,
            })
            .collect()
    }

    /// The same events as the SDK's native events, for the fold compiled
    /// into the benchmark (no WebAssembly).
    #[must_use]
    pub fn native(&self) -> Vec<eddy_sdk::Event<String>> {
        self.values
            .iter()
            .enumerate()
            .map(|(i, value)| eddy_sdk::Event {
                topic: TOPIC.to_owned(),
                partition: 0,
                offset: self.first_offset + i as i64,
                timestamp_ms: 0,
                key: Some(self.key.clone()),
                headers: Vec::new(),
                schema_id: None,
                value: value.clone(),
            })
            .collect()
    }
}

/// `n` executions of one key ([`ONE_KEY`]).
#[must_use]
pub fn one_key_batch(n: usize) -> Batch {
    Batch::of(ONE_KEY, 0, n)
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
        resident_state_mb: Some(512),
        max_output_bytes: usize::MAX,
        max_retries: 0,
        retry_backoff_ms: 0,
        grants: eddy::config::Grants::default(),
    }
}
