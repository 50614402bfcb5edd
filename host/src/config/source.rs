//! `[source]`: where events come from — the embedded log or a Kafka cluster.

use serde::Deserialize;

/// Where events come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// The embedded append-only log, stored in the state store and fed by
    /// `POST /v1/topics/{topic}/records`. No broker needed.
    Embedded(EmbeddedConfig),
    /// A Kafka cluster: each pipeline is a consumer group member; emitted
    /// records, changelogs and dead letters are produced to it.
    Kafka(KafkaConfig),
}

/// Options of the Kafka source and sink.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Consumer group id. Each pipeline joins `{group_id}.{pipeline}`.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Client id shown in the brokers' logs and quotas.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// librdkafka properties passed through unchanged to the consumer and
    /// the producer (SASL/SSL, timeouts, batching, ...). They override
    /// Eddy's defaults; the names are librdkafka's `CONFIGURATION.md`.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
    /// Create missing pipeline, changelog and dead-letter topics at start
    /// (with `default_partitions`). Off by default: a missing topic is an
    /// error that names it.
    #[serde(default)]
    pub create_topics: bool,
    /// Partitions of topics created by `create_topics`.
    #[serde(default = "default_partitions")]
    pub default_partitions: u32,
    /// Replication factor of created topics (-1: the brokers' default).
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Topics created at start when missing, with an explicit partition
    /// count (such as the topics plugins emit to).
    #[serde(default)]
    pub topics: Vec<TopicConfig>,
    /// How long start-up waits for the brokers before giving up, in ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a replay or a shadow run waits for records it expects from
    /// the brokers before it fails (a replay that fails leaves the live
    /// state as it was), in ms.
    #[serde(default = "default_replay_stall_timeout_ms")]
    pub replay_stall_timeout_ms: u64,
}

fn default_group_id() -> String {
    "eddy".into()
}
fn default_client_id() -> String {
    "eddy".into()
}
fn default_replication() -> i32 {
    -1
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_replay_stall_timeout_ms() -> u64 {
    30_000
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig::Embedded(EmbeddedConfig::default())
    }
}

/// Options of the embedded log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Partitions of a topic that is not listed in `topics` (pipeline input
    /// topics, changelog topics and topics plugins emit to are created with it).
    #[serde(default = "default_partitions")]
    pub default_partitions: u32,
    /// Topics created at start with an explicit partition count.
    #[serde(default)]
    pub topics: Vec<TopicConfig>,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            default_partitions: default_partitions(),
            topics: Vec::new(),
        }
    }
}

fn default_partitions() -> u32 {
    4
}

/// A topic of the embedded log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic name: letters, digits, `.`, `_` and `-`, at most 249 characters (as Kafka).
    pub name: String,
    /// Number of partitions (1..=1024). Fixed once the topic exists.
    pub partitions: u32,
}
