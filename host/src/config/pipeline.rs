//! `[[pipeline]]`: what runs — a topic, how its values are read and keyed,
//! and the plugins that run on it.

use std::path::PathBuf;

use serde::Deserialize;

/// How a pipeline's values are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    /// JSON text.
    #[default]
    Json,
    /// Avro in Confluent's wire format.
    Avro,
    /// Protobuf in Confluent's wire format (with its message-index list).
    Protobuf,
    /// JSON in Confluent's wire format, validated with its JSON Schema.
    #[serde(rename = "json_schema")]
    JsonSchema,
}

impl ValueFormat {
    /// Whether values carry a registry schema id (Confluent's wire format).
    pub fn uses_registry(self) -> bool {
        !matches!(self, ValueFormat::Json)
    }
}

/// A pipeline: a topic, how to key it, and what runs on it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name, used in the HTTP API (`/v1/pipelines/{name}/...`).
    pub name: String,
    /// Input topic.
    pub topic: String,
    /// How values are encoded: `json`, or Confluent's wire format with the
    /// writer schema from the registry by id: `avro`, `protobuf` or
    /// `json_schema`.
    #[serde(default)]
    pub value_format: ValueFormat,
    /// The reader schema (relative to the config file): an `.avsc` every
    /// Avro event is resolved to, a `.proto` Protobuf events are read with
    /// (fields by number: old events get defaults, unknown fields are
    /// dropped), or a JSON Schema every event must also pass. Without it,
    /// events are read with their writer schema. At start, every writer
    /// schema registered for `{topic}-value` must be readable with it, or the
    /// host refuses to start; later registrations it cannot read are refused.
    #[serde(default)]
    pub reader_schema: Option<PathBuf>,
    /// For `protobuf`: the message type the pipeline reads (`pkg.Message`);
    /// an event of another type is a dead letter of class `message_type`.
    /// Without it, each event is read as the type its message index names.
    #[serde(default)]
    pub message_type: Option<String>,
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
    /// In cluster mode, the compacted topic the pipeline's state changes
    /// are written to so another host can restore a partition it takes
    /// over: as many partitions as the input, each change in its input's
    /// partition. Default `{group_id}-{pipeline}-changelog` (Kafka
    /// Streams' naming), created at start when missing.
    #[serde(default)]
    pub state_changelog_topic: Option<String>,
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
    /// An event whose key belongs to another partition of the input topic
    /// than the one it arrived on (the key hashes, with murmur2 as Kafka's
    /// default partitioner, elsewhere: a producer that partitions by another
    /// hash, or not by this key): `fold` (the default on one host) folds it
    /// into the key's state, kept under the partition the key hashes to;
    /// `dead-letter` (the default, and the only choice, with `[cluster]`,
    /// where a state moves with its partition) sends it to the dead letters
    /// (class `partition`), so every state depends on one partition's
    /// events only. See [`super::Config::misrouted_keys`].
    #[serde(default)]
    pub misrouted_keys: Option<MisroutedKeys>,
    /// How far behind its partition's stream time (the highest event time
    /// the pipeline has seen in that partition) an event may still arrive:
    /// an event-time timer fires once the stream time, less this, passes
    /// it. 0 (the default) fires it as soon as an event at or after its
    /// instant is folded.
    #[serde(default)]
    pub allowed_lateness_ms: u64,
    /// Timers one key may have pending at once; a fold that asks for more
    /// fails (class `timer_limit`) and its events are dead-lettered.
    #[serde(default = "default_timers_per_key")]
    pub max_timers_per_key: usize,
    /// Timers the pipeline may have pending at once (all keys); beyond, a
    /// fold that sets a new one fails with class `timer_limit`.
    #[serde(default = "default_timers")]
    pub max_timers: u64,
}

/// See [`PipelineConfig::misrouted_keys`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MisroutedKeys {
    /// Folded into the key's state.
    #[default]
    Fold,
    /// Dead-lettered with the class `partition`.
    DeadLetter,
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

/// The topic a plugin emits a timer request to (`eddy:plugin` contract: an
/// emitted record whose topic is this one sets or cancels a timer on the
/// folded key, instead of being produced).
pub const TIMER_REQUEST_TOPIC: &str = "__eddy.timers";

/// A fired timer reaches the aggregator as an event of the topic
/// `{TIMER_TOPIC_PREFIX}{pipeline}` (the embedded log's, on every source).
pub const TIMER_TOPIC_PREFIX: &str = "__eddy.timers.";

impl PipelineConfig {
    /// The internal topic dead letters are replayed through.
    pub fn replay_topic(&self) -> String {
        format!("__eddy.replay.{}", self.name)
    }

    /// The internal topic its fired timers are appended to and folded
    /// from (see [`TIMER_TOPIC_PREFIX`]).
    pub fn timer_topic(&self) -> String {
        format!("{TIMER_TOPIC_PREFIX}{}", self.name)
    }

    /// In cluster mode, the topic its states are restored from (see
    /// [`PipelineConfig::state_changelog_topic`]); `None` without an
    /// aggregator (nothing to restore).
    pub fn restore_topic(&self, group_id: &str) -> Option<String> {
        self.aggregator.as_ref()?;
        Some(
            self.state_changelog_topic
                .clone()
                .unwrap_or_else(|| format!("{group_id}-{}-changelog", self.name)),
        )
    }
}

fn default_timers_per_key() -> usize {
    1_000
}

fn default_timers() -> u64 {
    1_000_000
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
