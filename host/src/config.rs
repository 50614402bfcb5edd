//! `eddy.toml`: what runs. Every field is documented here; this is the
//! reference for the file format.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where events come from.
    #[serde(default)]
    pub source: SourceConfig,
    /// The local state store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The HTTP server.
    #[serde(default)]
    pub http: HttpConfig,
    /// The schema registry.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Graceful shutdown on SIGTERM/SIGINT.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The plugin components the pipelines use.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
    /// The pipelines: each binds a topic to an aggregator and/or handlers.
    #[serde(default, rename = "pipeline")]
    pub pipelines: Vec<PipelineConfig>,
    /// Directory the config file was read from; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Graceful shutdown: on SIGTERM or SIGINT Eddy stops taking input, commits
/// the batch in flight, sends SSE clients a final `shutdown` event, drains
/// the Kafka outbox and syncs the store — all within `timeout_ms`. If that
/// bound passes (a broker that stopped answering, say), it exits with status 1;
/// what was not sent stays in the outbox and goes out after the next start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// The whole shutdown's bound, in milliseconds (default 30 000, the
    /// grace period Kubernetes gives a pod).
    #[serde(default = "default_shutdown_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            timeout_ms: default_shutdown_timeout_ms(),
        }
    }
}

fn default_shutdown_timeout_ms() -> u64 {
    30_000
}

/// Where events come from.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic name: letters, digits, `.`, `_` and `-`, at most 249 characters (as Kafka).
    pub name: String,
    /// Number of partitions (1..=1024). Fixed once the topic exists.
    pub partitions: u32,
}

/// The local state store (fjall).
#[derive(Debug, Clone, Deserialize)]
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            durability: Durability::default(),
            writeback_ms: default_writeback_ms(),
        }
    }
}

fn default_writeback_ms() -> u64 {
    100
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

/// The HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Seconds between SSE keep-alive comments.
    #[serde(default = "default_keepalive")]
    pub sse_keepalive_secs: u64,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: usize,
    /// Bearer token required by the admin routes (plugin deploy and
    /// rollback). `EDDY_ADMIN_TOKEN` sets it too. Without one, they are off.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Deploy a plugin's component when its file changes on disk.
    #[serde(default = "default_true")]
    pub watch_plugins: bool,
    /// Token required on every write route (producing, entity creation,
    /// dead-letter and replay operations, schema registry writes), as
    /// `Authorization: Bearer <token>` (or as the password of Basic auth,
    /// as Confluent's clients send it). `EDDY_TOKEN` sets it too. Without
    /// one, writes are open. Plugin deploys and state rebuilds use `admin_token`.
    #[serde(default)]
    pub token: Option<String>,
    /// Require the token on read routes too (all but `/healthz`, `/readyz`
    /// and `/metrics`).
    #[serde(default)]
    pub protect_reads: bool,
    /// Producer requests per second allowed per token (per client address
    /// without one); beyond it, `429` with `Retry-After`. 0 turns it off.
    #[serde(default)]
    pub produce_rate_per_sec: f64,
    /// Producer requests a caller may send at once before the rate applies.
    #[serde(default = "default_burst")]
    pub produce_burst: u32,
    /// Most open SSE connections overall (`503` beyond).
    #[serde(default = "default_sse_max")]
    pub sse_max_clients: usize,
    /// Most open SSE connections from one client address (`429` beyond).
    #[serde(default = "default_sse_per_address")]
    pub sse_max_per_address: usize,
    /// Naming rule for topics created with `POST /v1/topics`; the one rule
    /// is `"entity.event_type.version"` (such as `order.created.v1`).
    #[serde(default)]
    pub topic_naming: Option<String>,
}

fn default_burst() -> u32 {
    20
}
fn default_sse_max() -> usize {
    50_000
}
fn default_sse_per_address() -> usize {
    1_000
}

fn default_true() -> bool {
    true
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            sse_keepalive_secs: default_keepalive(),
            max_body_bytes: default_body_limit(),
            admin_token: None,
            watch_plugins: true,
            token: None,
            protect_reads: false,
            produce_rate_per_sec: 0.0,
            produce_burst: default_burst(),
            sse_max_clients: default_sse_max(),
            sse_max_per_address: default_sse_per_address(),
            topic_naming: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_keepalive() -> u64 {
    15
}
fn default_body_limit() -> usize {
    8 * 1024 * 1024
}

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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Default, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the host, relative to the config file.
    pub host: PathBuf,
    /// Where the plugin sees it, such as `/data`.
    pub guest: String,
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

/// How a pipeline's values are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    /// JSON text.
    #[default]
    Json,
    /// Avro in Confluent's wire format.
    Avro,
}

/// Where writer schemas come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// An external Confluent-compatible registry (`http://host:8081`).
    /// Without it, Eddy's embedded registry (served at `/registry`) is used.
    #[serde(default)]
    pub url: Option<String>,
}

/// A pipeline: a topic, how to key it, and what runs on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name, used in the HTTP API (`/v1/pipelines/{name}/...`).
    pub name: String,
    /// Input topic.
    pub topic: String,
    /// How values are encoded: `json`, or `avro` (Confluent's wire format,
    /// writer schema from the registry by id).
    #[serde(default)]
    pub value_format: ValueFormat,
    /// For `avro`: the reader schema (`.avsc`, relative to the config file)
    /// every event is resolved to; without it, events are read with their
    /// writer schema. At start, every writer schema registered for
    /// `{topic}-value` must be readable with it, or the host refuses to start.
    #[serde(default)]
    pub reader_schema: Option<PathBuf>,
    /// The decoder built at start from `value_format` (not configuration).
    #[serde(skip)]
    pub decoder: crate::decode::Decoder,
    /// Dot-separated path of the field in the value that holds the key
    /// (`asyncProcessId`, `customer.id`). Without it the record key is used.
    #[serde(default)]
    pub key_field: Option<String>,
    /// The aggregator plugin (a stateful fold per key), if any.
    #[serde(default)]
    pub aggregator: Option<String>,
    /// Handler plugins run on every input event, in this order.
    #[serde(default)]
    pub handlers: Vec<String>,
    /// Topic to which every new state is appended (keyed by the key), in
    /// the same commit as the state: other pipelines can consume it.
    #[serde(default)]
    pub changelog_topic: Option<String>,
    /// Topic every dead letter is also appended to (as JSON, keyed by the
    /// event's key), in the same commit that records it.
    #[serde(default)]
    pub dlq_topic: Option<String>,
    /// Size of the `latest` query's largest page.
    #[serde(default = "default_latest")]
    pub latest: usize,
    /// Most records in one micro-batch. A batch takes what is waiting, up
    /// to the current batch size (see `batch_target_ms`), never more than this.
    #[serde(default = "default_batch")]
    pub max_batch: usize,
    /// How long one micro-batch should take at most, in milliseconds. Under
    /// a backlog the worker doubles its batch size (from 1,000, up to
    /// `max_batch`) while batches take less than half of this, and halves it
    /// when one takes longer: bigger batches fold more of a key's events per
    /// plugin call and commit less often, while a commit (and the SSE event
    /// after it) still comes within about this time. Without a backlog a
    /// batch is whatever arrived, so latency stays low.
    #[serde(default = "default_batch_target_ms")]
    pub batch_target_ms: u64,
    /// Bytes (keys, headers and values) after which a micro-batch takes no
    /// more records, so large records cannot make a batch take unbounded
    /// memory.
    #[serde(default = "default_batch_bytes")]
    pub max_batch_bytes: usize,
    /// Recent state changes kept in memory (up to 64 MiB) so a client that
    /// reconnects with `Last-Event-ID` gets exactly the changes it missed.
    /// A client resuming from further back (or after a restart) gets each
    /// key that changed since, once, with its current state.
    #[serde(default = "default_history")]
    pub sse_history: u64,
    /// Optional route aliases serving this pipeline under a path of its own.
    #[serde(default)]
    pub mount: Option<MountConfig>,
    /// What happens to a key's later events once one of its events is
    /// dead-lettered by the aggregator: `continue` (default) applies them;
    /// `quarantine` parks them until the key's dead letters are replayed or
    /// deleted, then applies them in order.
    #[serde(default)]
    pub on_dead_letter: OnDeadLetter,
}

/// See [`PipelineConfig::on_dead_letter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDeadLetter {
    /// Later events of the key are applied.
    #[default]
    Continue,
    /// Later events of the key wait until its dead letters are resolved.
    Quarantine,
}

impl PipelineConfig {
    /// The internal topic dead letters are replayed through.
    pub fn replay_topic(&self) -> String {
        format!("__eddy.replay.{}", self.name)
    }
}

fn default_latest() -> usize {
    100
}
fn default_batch() -> usize {
    50_000
}
fn default_batch_bytes() -> usize {
    32 << 20
}
fn default_batch_target_ms() -> u64 {
    500
}
fn default_history() -> u64 {
    10_000
}

/// Route aliases: `GET {path}/{key}`, `GET {path}/latest`,
/// `GET {path}/sse/{key}` and, with `create`, `POST {path}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// Path prefix, such as `/async-process`.
    pub path: String,
    /// What `POST {path}` produces to the pipeline's topic.
    #[serde(default)]
    pub create: Option<CreateConfig>,
}

/// `POST {path}` creates a new entity: it produces one event to the
/// pipeline's topic for a freshly generated key and answers
/// `{"status":"OK","id":<key>}`. The event is the request's JSON object
/// (may be empty) with `fields` set over it, then the generated values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConfig {
    /// Fixed fields of the event, such as `{ state = "ACCEPTED" }`.
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Fields that get a fresh UUID each (an event id, for instance).
    #[serde(default)]
    pub uuid_fields: Vec<String>,
    /// Field set to the current time, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub time_field: Option<String>,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    ///
    /// # Errors
    /// A message naming the file and every problem found.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?;
        config.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        if let Err(problems) = config.validate() {
            anyhow::bail!(
                "invalid config {}:\n  - {}",
                path.display(),
                problems.join("\n  - ")
            );
        }
        Ok(config)
    }

    /// Resolves a path from the config file against its directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Checks the rules that span fields; returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut plugin_names = HashSet::new();
        for p in &self.plugins {
            if !plugin_names.insert(p.name.as_str()) {
                problems.push(format!("plugin {:?} is declared twice", p.name));
            }
            if p.timeout_ms == 0 {
                problems.push(format!("plugin {:?}: timeout_ms must be > 0", p.name));
            }
            if p.memory_mb == 0 {
                problems.push(format!("plugin {:?}: memory_mb must be > 0", p.name));
            }
        }
        if self.shutdown.timeout_ms == 0 {
            problems.push("shutdown.timeout_ms must be > 0".into());
        }
        if let Some(rule) = &self.http.topic_naming
            && rule != "entity.event_type.version"
        {
            problems.push(format!(
                "http.topic_naming: unknown rule {rule:?} (the rule is \"entity.event_type.version\")"
            ));
        }
        let (default_partitions, topics) = match &self.source {
            SourceConfig::Embedded(e) => (e.default_partitions, e.topics.as_slice()),
            SourceConfig::Kafka(k) => {
                if k.brokers.trim().is_empty() {
                    problems.push("source.brokers must name at least one broker".into());
                }
                if k.group_id.trim().is_empty() {
                    problems.push("source.group_id must not be empty".into());
                }
                (k.default_partitions, k.topics.as_slice())
            }
        };
        if !(1..=1024).contains(&default_partitions) {
            problems.push("source.default_partitions must be within 1..=1024".into());
        }
        for t in topics {
            if let Err(e) = crate::source::validate_topic_name(&t.name) {
                problems.push(format!("source.topics: {e}"));
            }
            if !(1..=1024).contains(&t.partitions) {
                problems.push(format!(
                    "topic {:?}: partitions must be within 1..=1024",
                    t.name
                ));
            }
        }
        let mut names = HashSet::new();
        let mut mounts = HashSet::new();
        for p in &self.pipelines {
            let at = format!("pipeline {:?}", p.name);
            if !valid_name(&p.name) {
                problems.push(format!(
                    "{at}: name may hold only letters, digits, '.', '_' and '-'"
                ));
            }
            if !names.insert(p.name.as_str()) {
                problems.push(format!("{at} is declared twice"));
            }
            if let Err(e) = crate::source::validate_topic_name(&p.topic) {
                problems.push(format!("{at}: {e}"));
            }
            if let Some(c) = &p.changelog_topic {
                if let Err(e) = crate::source::validate_topic_name(c) {
                    problems.push(format!("{at}: changelog_topic: {e}"));
                }
                if c == &p.topic {
                    problems.push(format!(
                        "{at}: changelog_topic must differ from the input topic"
                    ));
                }
                if p.aggregator.is_none() {
                    problems.push(format!("{at}: changelog_topic needs an aggregator"));
                }
            }
            if let Some(d) = &p.dlq_topic
                && let Err(e) = crate::source::validate_topic_name(d)
            {
                problems.push(format!("{at}: dlq_topic: {e}"));
            }
            if p.aggregator.is_none() && p.handlers.is_empty() {
                problems.push(format!("{at}: needs an aggregator or at least one handler"));
            }
            for name in p.aggregator.iter().chain(p.handlers.iter()) {
                if !plugin_names.contains(name.as_str()) {
                    problems.push(format!("{at}: plugin {name:?} is not declared"));
                }
            }
            if p.key_field
                .as_deref()
                .is_some_and(|f| f.is_empty() || f.split('.').any(str::is_empty))
            {
                problems.push(format!(
                    "{at}: key_field must be a dot-separated field path"
                ));
            }
            if p.max_batch == 0 || p.max_batch_bytes == 0 || p.latest == 0 || p.batch_target_ms == 0
            {
                problems.push(format!(
                    "{at}: max_batch, max_batch_bytes, batch_target_ms and latest must be > 0"
                ));
            }
            if let Some(m) = &p.mount {
                if !m.path.starts_with('/') || m.path.len() < 2 || m.path.ends_with('/') {
                    problems.push(format!(
                        "{at}: mount path {:?} must start with '/' and not end with one",
                        m.path
                    ));
                } else if m.path.starts_with("/v1/") || m.path == "/v1" || m.path == "/healthz" {
                    problems.push(format!(
                        "{at}: mount path {:?} collides with Eddy's API",
                        m.path
                    ));
                }
                if !mounts.insert(m.path.as_str()) {
                    problems.push(format!("{at}: mount path {:?} is used twice", m.path));
                }
                if m.create.is_some() && p.key_field.is_none() {
                    problems.push(format!(
                        "{at}: mount.create needs key_field (the field that gets the new id)"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Names of pipelines and plugins: letters, digits, `.`, `_`, `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|p| p.join("; "))?;
        Ok(c)
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = parse("[store]\npaht = \"x\"\n").err().unwrap_or_default();
        assert!(err.contains("paht"), "{err}");
    }

    #[test]
    fn cross_field_problems_are_all_reported() {
        let err = parse(
            r#"
            [[pipeline]]
            name = "p"
            topic = "bad topic"
            aggregator = "missing"
            changelog_topic = "bad topic"
            "#,
        )
        .err()
        .unwrap_or_default();
        assert!(err.contains("\"missing\" is not declared"), "{err}");
        assert!(err.contains("bad topic"), "{err}");
        assert!(err.contains("changelog_topic must differ"), "{err}");
    }

    #[test]
    fn minimal_config_gets_defaults() -> Result<(), String> {
        let c = parse(
            r#"
            [[plugin]]
            name = "agg"
            path = "agg.wasm"
            [[pipeline]]
            name = "p"
            topic = "t"
            aggregator = "agg"
            "#,
        )?;
        let p = c.pipelines.first().ok_or("no pipeline")?;
        assert_eq!(p.latest, 100);
        assert_eq!(c.http.listen.port(), 8080);
        assert_eq!(c.store.durability, Durability::Process);
        Ok(())
    }
}
