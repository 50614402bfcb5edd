//! `[store]`: the local state store.

use std::path::PathBuf;

use serde::Deserialize;

/// The local state store (fjall).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the store, relative to the config file.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// When a write is acknowledged: `process` (written to the OS, survives a
    /// crash of Eddy) or `power` (fsynced, survives a power loss; slower).
    #[serde(default)]
    pub durability: Durability,
    /// With `process` durability, the journal is written back to disk in
    /// the background every this many milliseconds, so it never piles up
    /// into one long write that stalls commits (0 leaves it to the OS).
    #[serde(default = "default_writeback_ms")]
    pub writeback_ms: u64,
    /// Free space (MiB) to keep on the store's file system: below it the
    /// host takes no input — pipelines read nothing, the producer endpoint
    /// answers 507, `/readyz` says why — until space returns. The store
    /// never meets a full disk then (a failed write stops the host). 0
    /// turns the guard off.
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            durability: Durability::default(),
            writeback_ms: default_writeback_ms(),
            min_free_mb: default_min_free_mb(),
        }
    }
}

fn default_writeback_ms() -> u64 {
    100
}

fn default_min_free_mb() -> u64 {
    128
}

fn default_store_path() -> PathBuf {
    PathBuf::from("eddy-data")
}

/// What an acknowledged write survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Survives a crash of the Eddy process.
    #[default]
    Process,
    /// Survives a power loss (fsync on every commit).
    Power,
}
