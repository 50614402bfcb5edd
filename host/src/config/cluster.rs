//! `[cluster]`: this host is one of a group of Eddy hosts sharing a Kafka
//! cluster. Each pipeline's partitions are shared out by its consumer
//! group; a partition's state follows it through the pipeline's state
//! changelog (see `docs/ARCHITECTURE.md`, "How state moves").

use serde::Deserialize;

/// This host's place in a group of hosts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This host's name in the group: letters, digits, `.`, `_`, `-`; unique
    /// among the hosts. It is written on every fence record this host puts
    /// in a state changelog, and shown in logs and `/readyz`.
    pub host_id: String,
    /// The URL other hosts and clients use to reach this host's HTTP API
    /// (`http://10.0.0.7:8080`). It is announced on the hosts topic; other
    /// hosts forward queries for this host's keys there. Unset, the listen
    /// address is used when it names a host (not `0.0.0.0`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// How long a partition's restore may wait for records it expects from
    /// the changelog (or for its fence to be acknowledged) before it gives
    /// up and starts over, in ms.
    #[serde(default = "default_restore_stall_timeout_ms")]
    pub restore_stall_timeout_ms: u64,
}

fn default_restore_stall_timeout_ms() -> u64 {
    30_000
}
