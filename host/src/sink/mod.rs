//! Stage 6, sink: where a micro-batch's emitted records, changelog records
//! and dead-letter records go, and where the producer endpoint writes.
//!
//! On the embedded log they are appended to its topics inside the commit.
//! On Kafka they are written to an outbox in the same commit, and the
//! [`kafka::KafkaSink`] drains the outbox with an idempotent producer,
//! deleting entries only once the broker acknowledged them.

pub mod kafka;

use std::sync::Arc;

use crate::source::embedded::{EmbeddedLog, ProduceError, ProduceRecord};
use crate::store::Commit;

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
            Sink::Embedded(log) => log.commit(commit, emits),
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
                    .map_err(|e| ProduceError::Broker(e.to_string()))?
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
                tokio::task::spawn_blocking(move || log.produce(&topic, records))
                    .await
                    .map_err(|e| ProduceError::Broker(e.to_string()))?
            }
            Sink::Kafka(k) => k.produce(&topic, records).await,
        }
    }
}
