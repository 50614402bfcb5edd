//! Kafka clients, configured in one place for the source's consumers, the
//! sink's producer and topic administration: Eddy's defaults under the
//! user's librdkafka properties, librdkafka's log routed to `tracing`, and
//! errors that carry librdkafka's own reason when the brokers cannot be
//! reached.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

use crate::config::KafkaConfig;

/// Why a Kafka client could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No Kafka broker answered.
    #[error("cannot reach the Kafka brokers {brokers}: {error}")]
    Unreachable {
        /// The configured bootstrap brokers.
        brokers: String,
        /// What the client reported.
        error: String,
    },
    /// The Kafka client refused its configuration, or the brokers refused
    /// a request (a topic they cannot create, say).
    #[error("Kafka client configuration: {error}")]
    Config {
        /// What librdkafka or the brokers reported (it names the property or topic).
        error: String,
    },
    /// The topic is not known.
    #[error("topic {topic:?} does not exist")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
}

/// What a Kafka client is for; decides Eddy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A pipeline's group consumer.
    Consumer,
    /// The sink's producer.
    Producer,
    /// Metadata and topic administration.
    Admin,
}

/// The librdkafka configuration for `role`: Eddy's defaults, then the
/// user's `properties`, which win.
pub fn client_config(cfg: &KafkaConfig, role: Role) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", &cfg.client_id)
        // A missing topic is an error that names it, never a surprise topic.
        .set("allow.auto.create.topics", "false")
        .set_log_level(RDKafkaLogLevel::Warning);
    match role {
        Role::Consumer => {
            c.set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("queued.max.messages.kbytes", "16384")
                // librdkafka fetches ahead into its queue while a batch is
                // processed; once the queue is over its bound, a partition
                // is not fetched again for this long (1,000 ms by default),
                // and the worker, having taken the queue as its batch, sat
                // idle waiting: 51 % of a broker run. At 10 ms it spends
                // 87 % processing, and folds 1.9× as fast (BENCHMARKS.md).
                .set("fetch.queue.backoff.ms", "10")
                // Records of aborted transactions are never handed out, and
                // a transaction's records only once it commits (librdkafka's
                // default, stated: the properties may say otherwise).
                .set("isolation.level", "read_committed");
        }
        Role::Producer => {
            c.set("enable.idempotence", "true")
                // Statistics feed eddy_kafka_producer_throttle_time_ms.
                .set("statistics.interval.ms", "5000")
                .set("acks", "all")
                // Kafka's Java client partitions by murmur2: keys land where
                // they would with any other producer (and the embedded log).
                .set("partitioner", "murmur2_random")
                .set("linger.ms", "5");
        }
        Role::Admin => {}
    }
    for (k, v) in &cfg.properties {
        let consumer_only = matches!(
            k.as_str(),
            "session.timeout.ms"
                | "heartbeat.interval.ms"
                | "max.poll.interval.ms"
                | "auto.offset.reset"
                | "group.instance.id"
                | "partition.assignment.strategy"
                | "fetch.min.bytes"
                | "fetch.wait.max.ms"
                | "queued.max.messages.kbytes"
                | "queued.min.messages"
                | "fetch.queue.backoff.ms"
                | "isolation.level"
        );
        let producer_only = matches!(
            k.as_str(),
            "acks"
                | "linger.ms"
                | "batch.size"
                | "batch.num.messages"
                | "compression.type"
                | "compression.codec"
                | "enable.idempotence"
                | "message.timeout.ms"
                | "partitioner"
                | "queue.buffering.max.messages"
                | "queue.buffering.max.kbytes"
        );
        let applies = match role {
            Role::Consumer => !producer_only,
            Role::Producer => !consumer_only,
            Role::Admin => !producer_only && !consumer_only,
        };
        if applies {
            c.set(k, v);
        }
    }
    c
}

/// Routes librdkafka's log lines and errors to `tracing`.
pub(crate) fn log_client_event(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(facility = fac, "kafka: {message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "kafka: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(facility = fac, "kafka: {message}");
        }
        RDKafkaLogLevel::Debug => tracing::debug!(facility = fac, "kafka: {message}"),
    }
}

/// The admin client's context: librdkafka's log lines and errors go to
/// `tracing`, and the last error is kept to explain a timeout (a TLS
/// handshake or an authentication that failed, say).
#[derive(Default)]
pub(crate) struct AdminContext {
    last_error: Mutex<Option<String>>,
}

impl AdminContext {
    /// What the client last reported going wrong.
    pub(crate) fn last_error(&self) -> Option<String> {
        crate::lock(&self.last_error).clone()
    }

    /// Keeps `error` as what last went wrong.
    pub(crate) fn note(&self, error: String) {
        *crate::lock(&self.last_error) = Some(error);
    }
}

impl ClientContext for AdminContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_event(level, fac, log_message);
        let telling = [
            "SSL",
            "handshake",
            "SASL",
            "uthenticat",
            "certificate",
            "Disconnected",
        ];
        if matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        ) || telling.iter().any(|w| log_message.contains(w))
        {
            *crate::lock(&self.last_error) = Some(log_message.to_owned());
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // A reader that asked to be told of a partition's end (a rewind,
        // the hosts topic's follower) hears it here too: not a fault.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(error = %error, "kafka client: {reason}");
            return;
        }
        tracing::warn!(error = %error, "kafka client: {reason}");
        // "n/n brokers are down" says less than what came before it.
        let mut last = crate::lock(&self.last_error);
        if last.is_none() || !reason.contains("brokers are down") {
            *last = Some(reason.to_owned());
        }
    }
}

impl rdkafka::producer::ProducerContext for AdminContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, (): ()) {}
}

/// Why the brokers cannot be reached, as librdkafka tells it: asks for
/// metadata with a throwaway producer and serves its log and error callbacks
/// (librdkafka queues them until polled, and admin clients are not polled).
fn diagnose(cfg: &KafkaConfig) -> Option<String> {
    use rdkafka::producer::{BaseProducer, Producer};
    let probe: BaseProducer<AdminContext> = client_config(cfg, Role::Producer)
        .set("debug", "broker,security")
        .set_log_level(RDKafkaLogLevel::Debug)
        .create_with_context(AdminContext::default())
        .ok()?;
    let _ = probe.client().fetch_metadata(None, Duration::from_secs(2));
    probe.poll(Duration::from_millis(100));
    probe.context().last_error()
}

/// `error`, followed by librdkafka's own reason when it has one.
pub(crate) fn unreachable(cfg: &KafkaConfig, error: &impl std::fmt::Display) -> ClientError {
    ClientError::Unreachable {
        brokers: cfg.brokers.clone(),
        error: match diagnose(cfg) {
            Some(reason) => format!("{error}; librdkafka: {reason}"),
            None => error.to_string(),
        },
    }
}

/// Checks that `topics` exist on the cluster, within the connect timeout.
///
/// # Errors
/// [`ClientError::Unreachable`] when no broker answers,
/// [`ClientError::UnknownTopic`] naming the first missing topic.
pub fn check_topics<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    cfg: &KafkaConfig,
    topics: &[&str],
) -> Result<(), ClientError> {
    let timeout = Duration::from_millis(cfg.connect_timeout_ms.max(1));
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| unreachable(cfg, &e))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == *topic)
            .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
        if !found {
            return Err(ClientError::UnknownTopic {
                topic: (*topic).to_owned(),
            });
        }
    }
    Ok(())
}

impl ConsumerContext for AdminContext {}

/// A topic to create: name, partition count and topic-level configs
/// (`retention.ms`, `cleanup.policy`).
#[derive(Clone)]
pub struct NewTopicSpec {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: u32,
    /// Topic-level configs.
    pub configs: Vec<(&'static str, String)>,
}

/// Creates the topics of `wanted` that do not exist yet; returns, per
/// topic, whether it was created (`false`: it existed already).
///
/// # Errors
/// A bad property, unreachable brokers, or a topic the brokers refused (named).
pub async fn create_topics(
    cfg: &KafkaConfig,
    wanted: &[NewTopicSpec],
) -> Result<Vec<bool>, ClientError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let admin: AdminClient<AdminContext> = client_config(cfg, Role::Admin)
        .create_with_context(AdminContext::default())
        .map_err(|e| ClientError::Config {
            error: e.to_string(),
        })?;
    let timeout = Duration::from_millis(cfg.connect_timeout_ms.max(1));
    let new: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|t| {
            t.configs.iter().fold(
                NewTopic::new(
                    &t.name,
                    i32::try_from(t.partitions).unwrap_or(i32::MAX),
                    TopicReplication::Fixed(cfg.replication_factor),
                ),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|e| unreachable(cfg, &e))?;
    let mut created = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(name) => {
                tracing::info!(topic = %name, "topic created");
                created.push(true);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => created.push(false),
            Err((name, code)) => {
                return Err(ClientError::Config {
                    error: format!("cannot create topic {name:?}: {code}"),
                });
            }
        }
    }
    Ok(created)
}
