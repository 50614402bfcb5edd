//! `[[plugin]]`: the plugin components and their sandbox limits.

use std::path::PathBuf;

use serde::Deserialize;

/// Which WIT world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// `eddy:plugin/aggregator-plugin`: a stateful fold per key.
    Aggregator,
    /// `eddy:plugin/handler-plugin`: filter / route / emit.
    Handler,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Aggregator => "aggregator",
            PluginKind::Handler => "handler",
        })
    }
}

/// A plugin component and its sandbox limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Name the pipelines refer to.
    pub name: String,
    /// Path of the component (`.wasm`), relative to the config file.
    pub path: PathBuf,
    /// Wall-clock limit of one call, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear memory cap, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// How much of `memory_mb` an aggregator (contract 0.2.0) may spend on
    /// keeping decoded states between calls, so a key's next micro-batch
    /// does not decode its state again; in MiB, 0 for none. Default: a
    /// quarter of `memory_mb`. A recycled instance starts with none and
    /// reads states from the store.
    #[serde(default)]
    pub resident_state_mb: Option<u64>,
    /// Largest total output (state plus emitted records) of one call, in bytes.
    #[serde(default = "default_max_output")]
    pub max_output_bytes: usize,
    /// Times a call that fails with a retryable failure is tried again
    /// (with exponential backoff and jitter) before the events are dead-lettered.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// First retry delay in milliseconds; doubles on each attempt.
    #[serde(default = "default_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// What the sandbox may reach through WASI. Nothing unless granted here:
    /// no environment, no files, no sockets.
    #[serde(default)]
    pub grants: Grants,
}

/// WASI capabilities granted to a plugin.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Environment variables the plugin sees.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Host directories the plugin may read (never write), by guest path.
    #[serde(default)]
    pub read_dirs: Vec<DirGrant>,
}

/// A read-only directory grant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the host, relative to the config file.
    pub host: PathBuf,
    /// Where the plugin sees it, such as `/data`.
    pub guest: String,
}

impl PluginConfig {
    /// The bytes of decoded states an instance may keep
    /// (`resident_state_mb`, by default a quarter of `memory_mb`).
    pub fn resident_state_bytes(&self) -> u64 {
        self.resident_state_mb
            .unwrap_or(self.memory_mb / 4)
            .saturating_mul(1024 * 1024)
    }
}

fn default_timeout_ms() -> u64 {
    1000
}
fn default_memory_mb() -> u64 {
    64
}
fn default_max_output() -> usize {
    4 * 1024 * 1024
}
fn default_retries() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    50
}
