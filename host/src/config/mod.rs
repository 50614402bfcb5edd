//! `eddy.toml`: what runs. Plain data, one file per section; every field is
//! documented, so this module is the reference for the file format. The
//! stages read it; it calls into none of them.

mod cluster;
mod http;
mod names;
mod pipeline;
mod plugin;
mod schedule;
mod source;
mod store;
mod trace;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use cluster::ClusterConfig;
pub use http::HttpConfig;
pub use names::{valid_name, validate_topic_name};
pub use pipeline::{
    CreateConfig, MisroutedKeys, MountConfig, OnDeadLetter, PipelineConfig, TIMER_REQUEST_TOPIC,
    TIMER_TOPIC_PREFIX, ValueFormat,
};
pub use plugin::{DirGrant, Grants, PluginConfig, PluginKind};
pub use schedule::{Cadence, Missed, ScheduleConfig};
pub use source::{EmbeddedConfig, KafkaConfig, SourceConfig, TopicConfig};
pub use store::{Durability, StoreConfig};
pub use trace::TraceConfig;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// This host's place in a group of hosts on one Kafka cluster; without
    /// it, the host runs alone.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Graceful shutdown on SIGTERM/SIGINT.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Distributed traces (W3C `traceparent`, OTLP export).
    #[serde(default, rename = "tracing")]
    pub trace: TraceConfig,
    /// The plugin components the pipelines use.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
    /// The pipelines: each binds a topic to an aggregator and/or handlers.
    #[serde(default, rename = "pipeline")]
    pub pipelines: Vec<PipelineConfig>,
    /// Runs of pipelines on a cron expression or an interval.
    #[serde(default, rename = "schedule")]
    pub schedules: Vec<ScheduleConfig>,
    /// Directory the config file was read from; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Graceful shutdown: on SIGTERM or SIGINT Eddy stops taking input, commits
/// the batch in flight, sends SSE clients a final `shutdown` event, drains
/// the Kafka outbox and syncs the store — all within `timeout_ms`. If that
/// bound passes (a broker that stopped answering, say), it exits with status 1;
/// what was not sent stays in the outbox and goes out after the next start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// Where writer schemas come from.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// An external Confluent-compatible registry (`http://host:8081`).
    /// Without it, Eddy's embedded registry (served at `/registry`) is used.
    #[serde(default)]
    pub url: Option<String>,
    /// What the embedded registry does with a new schema a running plugin's
    /// declared reader schema (its contract) cannot read: `refuse` it (409,
    /// naming the plugin) or `warn` (register it and log a warning).
    #[serde(default)]
    pub contract_breaks: ContractBreaks,
}

/// See [`RegistryConfig::contract_breaks`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContractBreaks {
    /// Refuse the registration.
    #[default]
    Refuse,
    /// Register it and log a warning.
    Warn,
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

    /// What `p` does with an event whose key hashes to another partition:
    /// its `misrouted_keys`, else fold on one host and dead-letter in a
    /// cluster.
    pub fn misrouted_keys(&self, p: &PipelineConfig) -> MisroutedKeys {
        p.misrouted_keys.unwrap_or(if self.cluster.is_some() {
            MisroutedKeys::DeadLetter
        } else {
            MisroutedKeys::Fold
        })
    }

    /// Checks the rules that span fields; returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = self.trace.problems();
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
            if let Some(r) = p.resident_state_mb
                && r >= p.memory_mb
            {
                problems.push(format!(
                    "plugin {:?}: resident_state_mb ({r}) must be less than memory_mb ({}): the plugin needs memory to run too",
                    p.name, p.memory_mb
                ));
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
        for origin in &self.http.cors_origins {
            if let Some(why) = http::origin_problem(origin) {
                problems.push(format!("http.cors_origins: {origin:?} {why}"));
            }
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
            if let Err(e) = validate_topic_name(&t.name) {
                problems.push(format!("source.topics: {e}"));
            }
            if !(1..=1024).contains(&t.partitions) {
                problems.push(format!(
                    "topic {:?}: partitions must be within 1..=1024",
                    t.name
                ));
            }
        }
        if let Some(c) = &self.cluster {
            if !valid_name(&c.host_id) {
                problems.push(format!(
                    "cluster.host_id {:?} may hold only letters, digits, '.', '_' and '-'",
                    c.host_id
                ));
            }
            if c.restore_stall_timeout_ms == 0 {
                problems.push("cluster.restore_stall_timeout_ms must be > 0".into());
            }
            if matches!(self.source, SourceConfig::Embedded(_)) {
                problems.push(
                    "[cluster] needs [source] kind = \"kafka\": the embedded log lives on one host"
                        .into(),
                );
            }
            for p in &self.pipelines {
                if p.on_dead_letter == OnDeadLetter::Quarantine {
                    problems.push(format!(
                        "[cluster]: pipeline {:?} has on_dead_letter = \"quarantine\", but a quarantined key's held-back events stay on the host that parked them, and its partition can move to another: use on_dead_letter = \"continue\" (its dead letters move with their partition)",
                        p.name
                    ));
                }
                if p.misrouted_keys == Some(MisroutedKeys::Fold) {
                    problems.push(format!(
                        "[cluster]: pipeline {:?} has misrouted_keys = \"fold\", but a state moves with its input partition between hosts: a key's events must all arrive on the partition it hashes to (misrouted_keys = \"dead-letter\")",
                        p.name
                    ));
                }
            }
            if self.registry.url.is_none()
                && let Some(p) = self
                    .pipelines
                    .iter()
                    .find(|p| p.value_format.uses_registry())
            {
                problems.push(format!(
                    "[cluster]: pipeline {:?} reads values with registry schemas, and the embedded schema registry lives on one host: set [registry] url to a registry every host shares",
                    p.name
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
            if p.message_type.is_some() && p.value_format != ValueFormat::Protobuf {
                problems.push(format!(
                    "{at}: message_type is for value_format = \"protobuf\""
                ));
            }
            if p.reader_schema.is_some() && !p.value_format.uses_registry() {
                problems.push(format!(
                    "{at}: reader_schema is for value_format = \"avro\", \"protobuf\" or \"json_schema\""
                ));
            }
            if let Err(e) = validate_topic_name(&p.topic) {
                problems.push(format!("{at}: {e}"));
            }
            if let Some(c) = &p.changelog_topic {
                if let Err(e) = validate_topic_name(c) {
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
            if let Some(c) = &p.state_changelog_topic {
                if let Err(e) = validate_topic_name(c) {
                    problems.push(format!("{at}: state_changelog_topic: {e}"));
                }
                if c == &p.topic || p.changelog_topic.as_ref() == Some(c) {
                    problems.push(format!(
                        "{at}: state_changelog_topic must differ from the input topic and from changelog_topic"
                    ));
                }
            }
            if let Some(d) = &p.dlq_topic
                && let Err(e) = validate_topic_name(d)
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
        self.validate_schedules(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn validate_schedules(&self, problems: &mut Vec<String>) {
        let mut names = HashSet::new();
        for s in &self.schedules {
            let at = format!("schedule {:?}", s.name);
            if !valid_name(&s.name) {
                problems.push(format!(
                    "{at}: name may hold only letters, digits, '.', '_' and '-'"
                ));
            }
            if !names.insert(s.name.as_str()) {
                problems.push(format!("{at} is declared twice"));
            }
            if let Err(e) = s.cadence() {
                problems.push(e);
            }
            match self.pipelines.iter().find(|p| p.name == s.pipeline) {
                None => problems.push(format!("{at}: pipeline {:?} is not declared", s.pipeline)),
                Some(p) if self.cluster.is_some() && p.aggregator.is_none() => {
                    problems.push(format!(
                        "[cluster]: {at}: pipeline {:?} has no aggregator, so no state changelog to carry the schedule between hosts; schedule a pipeline with an aggregator, or run this one on a host without [cluster]",
                        s.pipeline
                    ));
                }
                Some(_) => {}
            }
            if s.key().is_empty() {
                problems.push(format!("{at}: key must not be empty"));
            }
        }
    }

    /// The schedules of pipeline `name`.
    pub fn schedules_of(&self, name: &str) -> Vec<ScheduleConfig> {
        self.schedules
            .iter()
            .filter(|s| s.pipeline == name)
            .cloned()
            .collect()
    }
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
    fn a_cluster_refuses_the_parts_that_live_on_one_host() {
        let err = parse(
            r#"
            [cluster]
            host_id = "a b"
            restore_stall_timeout_ms = 0
            [[pipeline]]
            name = "p"
            topic = "t"
            value_format = "avro"
            "#,
        )
        .err()
        .unwrap_or_default();
        assert!(err.contains("cluster.host_id \"a b\""), "{err}");
        assert!(
            err.contains("restore_stall_timeout_ms must be > 0"),
            "{err}"
        );
        assert!(err.contains("needs [source] kind = \"kafka\""), "{err}");
        assert!(
            err.contains("pipeline \"p\" reads values with registry schemas"),
            "{err}"
        );
        let err = parse(
            r#"
            [cluster]
            host_id = "a"
            [[pipeline]]
            name = "q"
            topic = "t"
            misrouted_keys = "fold"
            on_dead_letter = "quarantine"
            "#,
        )
        .err()
        .unwrap_or_default();
        assert!(
            err.contains("pipeline \"q\" has misrouted_keys = \"fold\""),
            "{err}"
        );
        assert!(
            err.contains("pipeline \"q\" has on_dead_letter = \"quarantine\""),
            "{err}"
        );
    }

    #[test]
    fn the_state_changelog_is_named_after_the_group_and_pipeline() -> Result<(), String> {
        let c = parse(
            r#"
            [source]
            kind = "kafka"
            brokers = "127.0.0.1:9092"
            group_id = "g"
            [cluster]
            host_id = "a"
            [[plugin]]
            name = "agg"
            path = "agg.wasm"
            [[pipeline]]
            name = "p"
            topic = "t"
            aggregator = "agg"
            [[pipeline]]
            name = "q"
            topic = "u"
            aggregator = "agg"
            state_changelog_topic = "q-state"
            [[pipeline]]
            name = "r"
            topic = "v"
            handlers = ["agg"]
            "#,
        )?;
        let topics: Vec<_> = c.pipelines.iter().map(|p| p.restore_topic("g")).collect();
        assert_eq!(
            topics,
            [
                Some("g-p-changelog".to_string()),
                Some("q-state".into()),
                None
            ]
        );
        let p = c.pipelines.first().ok_or("no pipeline")?;
        assert_eq!(c.misrouted_keys(p), MisroutedKeys::DeadLetter);
        let err = parse(
            r#"
            [[plugin]]
            name = "agg"
            path = "agg.wasm"
            [[pipeline]]
            name = "p"
            topic = "t"
            aggregator = "agg"
            changelog_topic = "c"
            state_changelog_topic = "c"
            "#,
        )
        .err()
        .unwrap_or_default();
        assert!(err.contains("state_changelog_topic"), "{err}");
        Ok(())
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
        assert_eq!(c.misrouted_keys(p), MisroutedKeys::Fold);
        Ok(())
    }
}
