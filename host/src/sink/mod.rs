//! Stage 6, sink: where a micro-batch's emitted records, changelog records
//! and dead-letter records go, and where the producer endpoint writes.
//!
//! On the embedded log they are appended to its topics inside the commit.
//! On Kafka they are written to an outbox in the same commit, and the
//! [`kafka::KafkaSink`] drains the outbox with an idempotent producer,
//! deleting entries only once the broker acknowledged them.

pub mod kafka;

use std::sync::Arc;

use crate::kafka::ClientError;
use crate::source::embedded::{AppendError, EmbeddedLog, Entry};
use crate::store::{Commit, LogRecord, StoreError};

/// A record to produce.
#[derive(Debug, Clone)]
pub struct ProduceRecord {
    /// Explicit partition; otherwise chosen from the key (murmur2, as Kafka)
    /// or round-robin when there is no key.
    pub partition: Option<u32>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// The record's timestamp (ms since the Unix epoch) as its producer
    /// set it; `None`: the append time (the commit time for a pipeline's
    /// output).
    pub timestamp_ms: Option<i64>,
}

impl ProduceRecord {
    /// As an entry of the embedded log (stamped with the append time).
    fn into_entry(self) -> Entry {
        (
            self.partition,
            LogRecord {
                timestamp_ms: self.timestamp_ms.unwrap_or(0),
                key: self.key,
                headers: self.headers,
                value: self.value,
            },
        )
    }
}

/// Produce failures.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The embedded log refused the records (unknown topic or partition,
    /// invalid topic name) or its store failed; nothing was appended.
    #[error(transparent)]
    Log(#[from] AppendError),
    /// Invalid topic name (a record for Kafka).
    #[error("{0}")]
    BadTopicName(String),
    /// The store failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Kafka brokers refused or did not acknowledge the records.
    #[error("Kafka: {0}")]
    Broker(String),
    /// The Kafka client could not be set up.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The thread doing the write stopped before it answered.
    #[error("the write did not finish: {0}")]
    Interrupted(String),
}

/// Writes `commit` to the embedded log's store with `records` appended to
/// their topics, in one atomic write (the pipelines' replay topics live in
/// the embedded log on every source).
///
/// # Errors
/// A store failure or an invalid topic; nothing is written then.
pub fn commit_embedded(
    log: &EmbeddedLog,
    commit: &mut Commit,
    records: Vec<(String, ProduceRecord)>,
) -> Result<(), ProduceError> {
    let entries = records
        .into_iter()
        .map(|(t, r)| (t, r.into_entry()))
        .collect();
    Ok(log.commit(commit, entries)?)
}

/// Where emitted and produced records go.
#[derive(Clone)]
pub enum Sink {
    /// Appended to the embedded log.
    Embedded(Arc<EmbeddedLog>),
    /// Produced to Kafka (through the outbox for pipeline output).
    Kafka(Arc<kafka::KafkaSink>),
}

impl Sink {
    /// Commits a pipeline's micro-batch together with the records it emitted.
    ///
    /// # Errors
    /// A store failure or an invalid emitted topic; nothing is written then.
    pub fn commit(
        &self,
        commit: &mut Commit,
        emits: Vec<(String, ProduceRecord)>,
    ) -> Result<(), ProduceError> {
        match self {
            Sink::Embedded(log) => commit_embedded(log, commit, emits),
            Sink::Kafka(k) => k.commit(commit, emits),
        }
    }

    /// Partition count of a topic, `None` when it does not exist.
    ///
    /// # Errors
    /// When the brokers cannot be asked.
    pub async fn partitions(&self, topic: &str) -> Result<Option<u32>, ProduceError> {
        match self {
            Sink::Embedded(log) => Ok(log.partitions(topic)),
            Sink::Kafka(k) => {
                let (k, topic) = (k.clone(), topic.to_owned());
                tokio::task::spawn_blocking(move || k.partitions(&topic))
                    .await
                    .map_err(|e| ProduceError::Interrupted(e.to_string()))?
            }
        }
    }

    /// High watermark of each partition of `topic` (`None`: no such topic).
    /// Blocking: call from a blocking thread.
    ///
    /// # Errors
    /// When the brokers cannot be asked.
    pub fn high_watermarks(&self, topic: &str) -> Result<Option<Vec<u64>>, ProduceError> {
        match self {
            Sink::Embedded(log) => Ok(log
                .partitions(topic)
                .map(|n| (0..n).map(|p| log.high_watermark(topic, p)).collect())),
            Sink::Kafka(k) => k.high_watermarks(topic),
        }
    }

    /// Produces records to a topic; returns each record's (partition, offset)
    /// once it is durable (embedded) or acknowledged by the brokers (Kafka).
    ///
    /// # Errors
    /// Unknown topic or partition, a store failure or a broker error.
    pub async fn produce(
        &self,
        topic: String,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<(u32, u64)>, ProduceError> {
        match self {
            Sink::Embedded(log) => {
                let log = log.clone();
                let entries = records.into_iter().map(ProduceRecord::into_entry).collect();
                Ok(
                    tokio::task::spawn_blocking(move || log.append(&topic, entries))
                        .await
                        .map_err(|e| ProduceError::Interrupted(e.to_string()))??,
                )
            }
            Sink::Kafka(k) => k.produce(&topic, records).await,
        }
    }
}
