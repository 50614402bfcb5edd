//! Intake: a micro-batch's records decoded (stage 2, [`crate::decode`]) and
//! keyed (stage 3, [`crate::route`]) into the events the plugins receive.
//! A record that does not decode or has no key is a dead letter; one whose
//! writer schema cannot be fetched waits for the registry and is never
//! dead-lettered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dead_letter::{DeadLetter, Stage};
use crate::config::{MisroutedKeys, PipelineConfig};
use crate::decode::{DecodeError, Decoder};
use crate::execute::bindings::{Event, Header};
use crate::route::KeySpec;
use crate::source::{SourceRecord, partition_for_key};

/// How a pipeline turns records into keyed events: its decoder and its key
/// rule. Cheap to clone.
#[derive(Clone)]
pub struct Intake {
    pipeline: Arc<str>,
    topic: Arc<str>,
    decoder: Decoder,
    key: KeySpec,
    partitions: u32,
    misrouted: MisroutedKeys,
}

/// One decoded, keyed input event (its [`Event`] is kept alongside, in the
/// same order, so calls can take slices of events without copying them).
pub struct Item {
    /// The record as read.
    pub record: SourceRecord,
    /// Its key.
    pub key: String,
    /// The input partition the key belongs to (where its state lives).
    pub partition: u32,
}

/// A batch decoded and keyed.
#[derive(Default)]
pub struct Prepared {
    /// The events that decoded, with their keys.
    pub items: Vec<Item>,
    /// Their events for the plugins, in the same order.
    pub events: Vec<Event>,
    /// The records that did not decode or had no key.
    pub dead: Vec<DeadLetter>,
}

/// Why a record did not become an event.
pub enum Unprepared {
    /// The registry cannot be reached: try again later.
    Wait(DecodeError),
    /// Bad data: a dead letter.
    Dead(Box<DeadLetter>),
}

impl Intake {
    /// The intake of `pipeline`, decoding with `decoder`, whose input topic
    /// has `partitions` partitions; `misrouted` is what it does with an
    /// event whose key hashes to another partition.
    pub fn new(
        pipeline: &PipelineConfig,
        decoder: Decoder,
        partitions: u32,
        misrouted: MisroutedKeys,
    ) -> Self {
        Intake {
            pipeline: Arc::from(pipeline.name.as_str()),
            topic: Arc::from(pipeline.topic.as_str()),
            decoder,
            key: KeySpec::new(pipeline.key_field.as_deref()),
            partitions: partitions.max(1),
            misrouted,
        }
    }

    /// The input topic's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The input partition a key belongs to: murmur2 of the key, as Kafka's
    /// default partitioner (and the embedded log) places it.
    pub fn partition_of(&self, key: &str) -> u32 {
        partition_for_key(key.as_bytes(), self.partitions)
    }

    /// Its decoder.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Decodes and keys one record.
    ///
    /// # Errors
    /// [`Unprepared`]: wait for the registry, or a dead letter saying why.
    pub fn prepare(&self, record: &SourceRecord) -> Result<(Event, String, u32), Unprepared> {
        let (value, schema_id) = match self.decoder.decode(&record.value) {
            Ok(v) => v,
            Err(e) if e.is_retryable() => return Err(Unprepared::Wait(e)),
            Err(e) => {
                return Err(Unprepared::Dead(Box::new(DeadLetter::new(
                    &self.pipeline,
                    record,
                    Stage::Decode,
                    "decode",
                    e.to_string(),
                ))));
            }
        };
        let key = self
            .key
            .key_of(record.key.as_deref(), &value)
            .map_err(|e| {
                Unprepared::Dead(Box::new(DeadLetter::new(
                    &self.pipeline,
                    record,
                    Stage::Route,
                    "key",
                    e.to_string(),
                )))
            })?;
        let partition = self.partition_of(&key);
        if self.misrouted == MisroutedKeys::DeadLetter
            && *record.topic == *self.topic
            && record.partition != partition
        {
            return Err(Unprepared::Dead(Box::new(
                DeadLetter::new(
                    &self.pipeline,
                    record,
                    Stage::Route,
                    "partition",
                    format!(
                        "key {key:?} belongs to partition {partition} of {:?} (murmur2, as Kafka's \
                         default partitioner), but arrived on partition {}: its producer \
                         partitions by another hash or another key",
                        self.topic, record.partition
                    ),
                )
                .key(&key),
            )));
        }
        let event = Event {
            topic: record.topic.to_string(),
            partition: i32::try_from(record.partition).unwrap_or(i32::MAX),
            offset: i64::try_from(record.offset).unwrap_or(i64::MAX),
            timestamp_ms: record.timestamp_ms,
            key: record
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers: record
                .headers
                .iter()
                .map(|(name, value)| Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            schema_id,
            value,
        };
        Ok((event, key, partition))
    }

    /// Decodes and keys a batch. While the schema registry cannot be
    /// reached a record waits (backoff from 100 ms to 5 s) and is never
    /// dead-lettered; `keep_waiting` is asked between waits, and `None` is
    /// returned when it says to stop (nothing of the batch is used then).
    pub fn prepare_batch(
        &self,
        records: Vec<SourceRecord>,
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Option<Prepared> {
        let mut out = Prepared {
            items: Vec::with_capacity(records.len()),
            events: Vec::with_capacity(records.len()),
            dead: Vec::new(),
        };
        for record in records {
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.prepare(&record) {
                    Ok((event, key, partition)) => {
                        out.items.push(Item {
                            record,
                            key,
                            partition,
                        });
                        out.events.push(event);
                    }
                    Err(Unprepared::Wait(e)) => {
                        tracing::warn!(
                            pipeline = %self.pipeline, topic = %record.topic,
                            partition = record.partition, offset = record.offset,
                            error = %e, retry_in_ms = backoff.as_millis() as u64,
                            "schema registry unreachable; retrying"
                        );
                        let until = Instant::now() + backoff;
                        while Instant::now() < until {
                            if !keep_waiting() {
                                return None;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                    Err(Unprepared::Dead(dl)) => out.dead.push(*dl),
                }
                break;
            }
        }
        Some(out)
    }
}
