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
    /// The topic its fired timers come back on.
    timer_topic: Arc<str>,
    /// Its replay topic (a fired timer held behind a quarantined key comes
    /// back on it, after the key's replayed dead letter).
    replay_topic: Arc<str>,
}

/// One decoded, keyed input event. The plugins see it as an [`Event`]
/// borrowed from it ([`Views`]): the record's own bytes when its value is
/// JSON, nothing copied.
pub struct Item {
    /// The record as read.
    pub record: SourceRecord,
    /// Its key.
    pub key: String,
    /// The input partition the key belongs to (where its state lives).
    pub partition: u32,
    /// The value as JSON text when decoding made it (Avro); a JSON value
    /// is the record's value itself.
    decoded: Option<String>,
    /// The Avro writer schema id.
    schema_id: Option<u32>,
    /// The record key as text, when it is not UTF-8 (made once, lossily).
    key_text: Option<String>,
    /// For a fired timer, the timer topic: the topic the plugin sees (also
    /// when it comes back through the replay topic after a quarantine).
    timer: Option<Arc<str>>,
}

impl Item {
    /// Whether it is a fired timer (see [`super::timers`]), not an event.
    pub fn is_timer(&self) -> bool {
        self.timer.is_some()
    }

    /// The value as the plugins receive it: JSON text.
    pub fn value(&self) -> &str {
        match &self.decoded {
            Some(text) => text,
            // Checked to be UTF-8 JSON when the item was made.
            None => std::str::from_utf8(&self.record.value).unwrap_or("null"),
        }
    }

    fn record_key(&self) -> Option<&str> {
        match &self.key_text {
            Some(text) => Some(text),
            None => self
                .record
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok()),
        }
    }
}

/// On every event an aggregator receives, once its pipeline has set an
/// event-time timer: its partition's watermark before the batch — the stream time (the highest event timestamp the pipeline
/// has seen in the partition) less the pipeline's `allowed_lateness_ms`, as
/// decimal milliseconds. Event-time timers at or before it have fired (or
/// are due), so an event for a window that ended at or before it is late.
pub const WATERMARK_HEADER: &str = "eddy-watermark";

/// The headers of a batch's items as the plugins see them, made once per
/// batch; [`Views::events`] borrows from them and from the items.
pub struct Views<'a> {
    items: &'a [Item],
    headers: Vec<Vec<Header<'a>>>,
}

impl<'a> Views<'a> {
    /// The views of `items`.
    pub fn new(items: &'a [Item]) -> Self {
        Self::with_watermarks(items, &[])
    }

    /// The views of `items`, each given the header [`WATERMARK_HEADER`]:
    /// its key's partition's watermark (`watermarks`, by partition, as
    /// decimal text; a partition with none gets no header).
    pub fn with_watermarks(items: &'a [Item], watermarks: &'a [Option<Vec<u8>>]) -> Self {
        Views {
            items,
            headers: items
                .iter()
                .map(|i| {
                    let mark = watermarks
                        .get(i.partition as usize)
                        .and_then(Option::as_deref)
                        .map(|value| Header {
                            name: WATERMARK_HEADER,
                            value,
                        });
                    i.record
                        .headers
                        .iter()
                        .map(|(name, value)| Header { name, value })
                        .chain(mark)
                        .collect()
                })
                .collect(),
        }
    }

    /// The events, in the items' order.
    pub fn events(&'a self) -> Vec<Event<'a>> {
        self.items
            .iter()
            .zip(&self.headers)
            .map(|(i, headers)| Event {
                topic: i.timer.as_deref().unwrap_or(&i.record.topic),
                partition: i32::try_from(i.record.partition).unwrap_or(i32::MAX),
                offset: i64::try_from(i.record.offset).unwrap_or(i64::MAX),
                timestamp_ms: i.record.timestamp_ms,
                key: i.record_key(),
                headers,
                schema_id: i.schema_id,
                value: i.value(),
            })
            .collect()
    }
}

/// A batch decoded and keyed.
#[derive(Default)]
pub struct Prepared {
    /// The events that decoded, with their keys.
    pub items: Vec<Item>,
    /// The records that did not decode or had no key.
    pub dead: Vec<DeadLetter>,
}

/// What decoding and keying a record found.
struct Keyed {
    /// The decoded value, when decoding made one (not the record's bytes).
    decoded: Option<String>,
    schema_id: Option<u32>,
    key: String,
    partition: u32,
    /// Whether it is a fired timer.
    timer: bool,
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
            timer_topic: Arc::from(pipeline.timer_topic().as_str()),
            replay_topic: Arc::from(pipeline.replay_topic().as_str()),
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

    /// The item of a record that decoded and keyed.
    fn item(&self, record: SourceRecord, keyed: Keyed) -> Item {
        let key_text = record
            .key
            .as_deref()
            .filter(|k| std::str::from_utf8(k).is_err())
            .map(|k| String::from_utf8_lossy(k).into_owned());
        Item {
            record,
            key: keyed.key,
            partition: keyed.partition,
            decoded: keyed.decoded,
            schema_id: keyed.schema_id,
            key_text,
            timer: keyed.timer.then(|| self.timer_topic.clone()),
        }
    }

    /// Whether a record of the replay topic is a fired timer released from
    /// a quarantine: its first `eddy-source` names the timer topic.
    fn released_timer(&self, record: &SourceRecord) -> bool {
        *record.topic == *self.replay_topic
            && record
                .headers
                .iter()
                .find(|(n, _)| n == super::SOURCE_HEADER)
                .is_some_and(|(_, v)| {
                    v.strip_prefix(self.timer_topic.as_bytes())
                        .is_some_and(|rest| rest.starts_with(b"/"))
                })
    }

    /// Decodes and keys one record: its decoded value (when decoding made
    /// one), schema id, key and partition.
    ///
    /// # Errors
    /// [`Unprepared`]: wait for the registry, or a dead letter saying why.
    fn keyed(&self, record: &SourceRecord) -> Result<Keyed, Unprepared> {
        if *record.topic == *self.timer_topic || self.released_timer(record) {
            return self.timer(record);
        }
        let decoded = if record.tombstone {
            Err(DecodeError::Tombstone)
        } else {
            self.decoder.decode(&record.value)
        };
        let (value, schema_id) = match decoded {
            Ok(v) => v,
            Err(e) if e.is_retryable() => return Err(Unprepared::Wait(e)),
            Err(e) => {
                return Err(Unprepared::Dead(Box::new(DeadLetter::new(
                    &self.pipeline,
                    record,
                    Stage::Decode,
                    e.class(),
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
        let decoded = match value {
            std::borrow::Cow::Owned(text) => Some(text),
            std::borrow::Cow::Borrowed(_) => None,
        };
        Ok(Keyed {
            decoded,
            schema_id,
            key,
            partition,
            timer: false,
        })
    }

    /// A fired timer's record: its key is the record's, its value the
    /// host's own JSON (never decoded with the pipeline's format).
    fn timer(&self, record: &SourceRecord) -> Result<Keyed, Unprepared> {
        let dead = |why: &str| {
            Unprepared::Dead(Box::new(DeadLetter::new(
                &self.pipeline,
                record,
                Stage::Route,
                "timer",
                format!("fired timer record: {why}"),
            )))
        };
        let key = record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .ok_or_else(|| dead("no UTF-8 key"))?;
        if std::str::from_utf8(&record.value).is_err() {
            return Err(dead("its value is not UTF-8 JSON"));
        }
        Ok(Keyed {
            decoded: None,
            schema_id: None,
            key: key.to_owned(),
            partition: self.partition_of(key),
            timer: true,
        })
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
            dead: Vec::new(),
        };
        for record in records {
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.keyed(&record) {
                    Ok(keyed) => out.items.push(self.item(record, keyed)),
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
