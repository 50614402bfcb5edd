//! The embedded log: Kafka-like topics, partitions and offsets stored in the
//! state store, so one process runs the whole system with no broker.
//!
//! Appends (from the producer endpoint and from pipeline commits) take one
//! lock, assign offsets, write one atomic batch and only then move the
//! partition's high watermark, so readers never see a gap or an uncommitted
//! record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::rewind::{Polled, Rewind};
use super::{Limit, Source, SourceError, SourceRecord, partition_for_key};
use crate::config::EmbeddedConfig;
use crate::config::validate_topic_name;
use crate::store::{Append, Commit, LogRecord, Store, StoreError};

/// Why records could not be appended to the embedded log.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// No such topic.
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    /// Partition out of range.
    #[error("topic {topic:?} has {partitions} partitions; partition {partition} does not exist")]
    BadPartition {
        /// Topic.
        topic: String,
        /// Requested partition.
        partition: u32,
        /// Partition count.
        partitions: u32,
    },
    /// Invalid topic name.
    #[error("{0}")]
    BadTopicName(String),
    /// The store failed; nothing was appended.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A record to append: its partition (`None`: chosen from the key with
/// murmur2, as Kafka does, or round-robin without a key) and the record
/// (the log stamps it with the append time).
pub type Entry = (Option<u32>, LogRecord);

struct Topics {
    /// Per topic: the next offset of each partition (its high watermark).
    ends: HashMap<String, Vec<u64>>,
}

/// The embedded log, shared by the producer endpoint and the pipelines.
pub struct EmbeddedLog {
    store: Store,
    default_partitions: u32,
    topics: Mutex<Topics>,
    round_robin: AtomicU64,
    appended: (Mutex<u64>, Condvar),
}

use crate::now_ms;

impl EmbeddedLog {
    /// Opens the log over `store`, creating the configured topics.
    ///
    /// # Errors
    /// When the store fails or a configured topic conflicts with an existing one.
    pub fn open(store: Store, config: &EmbeddedConfig) -> anyhow::Result<Arc<Self>> {
        let mut ends = HashMap::new();
        for (name, partitions) in store.topics()? {
            let mut v = Vec::with_capacity(partitions as usize);
            for p in 0..partitions {
                v.push(store.log_end(&name, p)?);
            }
            ends.insert(name, v);
        }
        let log = Arc::new(EmbeddedLog {
            store,
            default_partitions: config.default_partitions,
            topics: Mutex::new(Topics { ends }),
            round_robin: AtomicU64::new(0),
            appended: (Mutex::new(0), Condvar::new()),
        });
        for t in &config.topics {
            let have = log.ensure_topic(&t.name, Some(t.partitions))?;
            if have != t.partitions {
                anyhow::bail!(
                    "topic {:?} already exists with {have} partitions; the config asks for {} \
                     (partition counts cannot change)",
                    t.name,
                    t.partitions
                );
            }
        }
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, Topics> {
        crate::lock(&self.topics)
    }

    /// Creates a topic if it does not exist; returns its partition count.
    ///
    /// # Errors
    /// On an invalid name or a store failure.
    pub fn ensure_topic(&self, name: &str, partitions: Option<u32>) -> Result<u32, AppendError> {
        let mut topics = self.lock();
        self.ensure_locked(&mut topics, name, partitions)
    }

    fn ensure_locked(
        &self,
        topics: &mut Topics,
        name: &str,
        partitions: Option<u32>,
    ) -> Result<u32, AppendError> {
        if let Some(ends) = topics.ends.get(name) {
            return Ok(u32::try_from(ends.len()).unwrap_or(u32::MAX));
        }
        validate_topic_name(name).map_err(AppendError::BadTopicName)?;
        let n = partitions.unwrap_or(self.default_partitions).max(1);
        self.store.create_topic(name, n)?;
        topics.ends.insert(name.to_owned(), vec![0; n as usize]);
        tracing::info!(topic = name, partitions = n, "topic created");
        Ok(n)
    }

    /// Partition count of a topic, if it exists.
    pub fn partitions(&self, topic: &str) -> Option<u32> {
        self.lock()
            .ends
            .get(topic)
            .map(|e| u32::try_from(e.len()).unwrap_or(u32::MAX))
    }

    /// Topics with their high watermarks.
    pub fn list(&self) -> Vec<(String, Vec<u64>)> {
        let mut v: Vec<_> = self
            .lock()
            .ends
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        v.sort();
        v
    }

    /// The next offset to be written to a partition.
    pub fn high_watermark(&self, topic: &str, partition: u32) -> u64 {
        self.lock()
            .ends
            .get(topic)
            .and_then(|e| e.get(partition as usize))
            .copied()
            .unwrap_or(0)
    }

    /// The store the log lives in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn pick_partition(&self, key: Option<&[u8]>, partitions: u32) -> u32 {
        match key {
            Some(k) => partition_for_key(k, partitions),
            None => {
                let n = self.round_robin.fetch_add(1, Ordering::Relaxed);
                u32::try_from(n % u64::from(partitions.max(1))).unwrap_or(0)
            }
        }
    }

    fn assign(
        &self,
        topics: &mut Topics,
        topic: &str,
        (partition, record): Entry,
        auto_create: bool,
        out: &mut Vec<Append>,
    ) -> Result<(), AppendError> {
        let partitions = if auto_create {
            self.ensure_locked(topics, topic, None)?
        } else {
            topics
                .ends
                .get(topic)
                .map(|e| u32::try_from(e.len()).unwrap_or(u32::MAX))
                .ok_or_else(|| AppendError::UnknownTopic(topic.to_owned()))?
        };
        let partition = match partition {
            Some(p) if p >= partitions => {
                return Err(AppendError::BadPartition {
                    topic: topic.to_owned(),
                    partition: p,
                    partitions,
                });
            }
            Some(p) => p,
            None => self.pick_partition(record.key.as_deref(), partitions),
        };
        // The lock is held until the batch is committed, so moving the end
        // now is safe: on failure the caller restores the saved ends.
        let end = topics
            .ends
            .get_mut(topic)
            .and_then(|e| e.get_mut(partition as usize))
            .map(|end| {
                *end += 1;
                *end - 1
            })
            .unwrap_or(0);
        out.push(Append {
            topic: topic.to_owned(),
            partition,
            offset: end,
            record: LogRecord {
                // 0: stamped with the append time; else as its producer set it.
                timestamp_ms: if record.timestamp_ms > 0 {
                    record.timestamp_ms
                } else {
                    now_ms()
                },
                ..record
            },
        });
        Ok(())
    }

    /// Puts back the ends of partitions that `appends` had moved, after a
    /// failed write.
    fn roll_back(topics: &mut Topics, appends: &[Append]) {
        for a in appends {
            if let Some(end) = topics
                .ends
                .get_mut(&a.topic)
                .and_then(|e| e.get_mut(a.partition as usize))
            {
                *end = (*end).min(a.offset);
            }
        }
    }

    fn notify_appended(&self) {
        let (gen_lock, cv) = &self.appended;
        let mut g = crate::lock(gen_lock);
        *g += 1;
        cv.notify_all();
    }

    /// Appends records to an existing topic atomically; returns each
    /// record's (partition, offset). When this returns, the records are
    /// durable to the configured level.
    ///
    /// # Errors
    /// Unknown topic or partition, or a store failure; nothing is appended then.
    pub fn append(&self, topic: &str, records: Vec<Entry>) -> Result<Vec<(u32, u64)>, AppendError> {
        let mut topics = self.lock();
        let mut appends = Vec::with_capacity(records.len());
        let written = records
            .into_iter()
            .try_for_each(|r| self.assign(&mut topics, topic, r, false, &mut appends))
            .and_then(|()| Ok(self.store.append(&appends)?));
        if let Err(e) = written {
            Self::roll_back(&mut topics, &appends);
            return Err(e);
        }
        drop(topics);
        self.notify_appended();
        Ok(appends.iter().map(|a| (a.partition, a.offset)).collect())
    }

    /// Writes `commit` and appends `records` (topic, entry) to their topics
    /// (created on first use) in the same atomic write.
    ///
    /// # Errors
    /// A store failure or an invalid topic name; nothing is written then.
    pub fn commit(
        &self,
        commit: &mut Commit,
        records: Vec<(String, Entry)>,
    ) -> Result<(), AppendError> {
        let emits = records;
        if emits.is_empty() {
            self.store.commit(commit)?;
            return Ok(());
        }
        let mut topics = self.lock();
        let mut appends = Vec::with_capacity(emits.len());
        let assigned = emits
            .into_iter()
            .try_for_each(|(topic, r)| self.assign(&mut topics, &topic, r, true, &mut appends));
        commit.appends = appends;
        let written = assigned.and_then(|()| Ok(self.store.commit(commit)?));
        if let Err(e) = written {
            Self::roll_back(&mut topics, &commit.appends);
            return Err(e);
        }
        drop(topics);
        self.notify_appended();
        Ok(())
    }

    /// Waits until something is appended after generation `seen`, or `wait` passes.
    pub fn wait_for_append(&self, seen: u64, wait: Duration) -> u64 {
        let (gen_lock, cv) = &self.appended;
        let g = crate::lock(gen_lock);
        if *g != seen {
            return *g;
        }
        let (g, _) = cv
            .wait_timeout(g, wait)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g
    }

    /// Wakes every reader waiting for records (a worker asked to stop
    /// looks at its stop flag now rather than at the end of its wait).
    pub fn wake(&self) {
        self.notify_appended();
    }

    /// The current append generation.
    pub fn generation(&self) -> u64 {
        *crate::lock(&self.appended.0)
    }
}

/// A pipeline's reader of one topic of the embedded log: every partition,
/// from the offsets committed with the pipeline's state.
pub struct EmbeddedSource {
    reader: EmbeddedRewind,
}

impl EmbeddedSource {
    /// Opens a reader for `pipeline` on `topic`, resuming from the offsets
    /// committed with the pipeline's state.
    ///
    /// # Errors
    /// When the store fails or the topic does not exist.
    pub fn open(log: Arc<EmbeddedLog>, pipeline: &str, topic: &str) -> Result<Self, SourceError> {
        let mut reader = EmbeddedRewind::open(log, topic)?;
        let mut positions = Vec::with_capacity(reader.partitions as usize);
        for p in 0..reader.partitions {
            let offset = reader
                .log
                .store()
                .offset(pipeline, topic, p)
                .map_err(|e| reader.store_error(e))?;
            positions.push((p, offset));
        }
        reader.assign(&positions)?;
        Ok(EmbeddedSource { reader })
    }
}

impl Source for EmbeddedSource {
    fn poll(&mut self, limit: Limit, wait: Duration) -> Result<Vec<SourceRecord>, SourceError> {
        Ok(self.reader.poll(limit, wait)?.records)
    }

    fn committed(&mut self, _next_offsets: &[(String, u32, u64)], _delivered_after: Option<u64>) {
        // The offsets live in the store, written with the state; nothing else to do.
    }
}

/// The embedded log read by position.
pub struct EmbeddedRewind {
    log: Arc<EmbeddedLog>,
    topic: Arc<str>,
    partitions: u32,
    /// Assigned partitions and the next offset of each.
    positions: Vec<(u32, u64)>,
    next_partition: usize,
    generation: u64,
}

impl EmbeddedRewind {
    /// A reader of `topic`.
    ///
    /// # Errors
    /// [`SourceError::UnknownTopic`].
    pub fn open(log: Arc<EmbeddedLog>, topic: &str) -> Result<Self, SourceError> {
        let partitions = log
            .partitions(topic)
            .ok_or_else(|| SourceError::UnknownTopic {
                topic: topic.to_owned(),
            })?;
        Ok(EmbeddedRewind {
            generation: log.generation(),
            log,
            topic: Arc::from(topic),
            partitions,
            positions: Vec::new(),
            next_partition: 0,
        })
    }

    fn store_error(&self, source: crate::store::StoreError) -> SourceError {
        SourceError::Store {
            topic: self.topic.to_string(),
            source,
        }
    }
}

impl Rewind for EmbeddedRewind {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn watermarks(&mut self, partition: u32) -> Result<(u64, u64), SourceError> {
        Ok((0, self.log.high_watermark(&self.topic, partition)))
    }

    fn offset_for_time(&mut self, partition: u32, timestamp_ms: i64) -> Result<u64, SourceError> {
        let end = self.log.high_watermark(&self.topic, partition);
        self.log
            .store()
            .offset_for_time(&self.topic, partition, end, timestamp_ms)
            .map_err(|e| self.store_error(e))
    }

    fn assign(&mut self, positions: &[(u32, u64)]) -> Result<(), SourceError> {
        self.positions = positions.to_vec();
        Ok(())
    }

    fn poll(&mut self, limit: Limit, wait: Duration) -> Result<Polled, SourceError> {
        let polled = self.read_some(limit)?;
        if !polled.records.is_empty() {
            return Ok(polled);
        }
        self.generation = self.log.wait_for_append(self.generation, wait);
        self.read_some(limit)
    }
}

impl EmbeddedRewind {
    fn read_some(&mut self, limit: Limit) -> Result<Polled, SourceError> {
        let mut polled = Polled::default();
        let n = self.positions.len();
        let mut bytes = 0;
        // A fair share per partition, starting where the last poll stopped.
        let share = limit.records.div_ceil(n.max(1)).max(1);
        let share_bytes = limit.bytes.div_ceil(n.max(1)).max(1);
        for i in 0..n {
            if limit.reached(polled.records.len(), bytes) {
                break;
            }
            let at = (self.next_partition + i) % n;
            let Some((partition, from)) = self.positions.get(at).copied() else {
                continue;
            };
            let end = self.log.high_watermark(&self.topic, partition);
            let left = limit.less(polled.records.len(), bytes);
            let records = self
                .log
                .store()
                .read_log(
                    &self.topic,
                    partition,
                    from,
                    end,
                    share.min(left.records),
                    share_bytes.min(left.bytes),
                )
                .map_err(|e| self.store_error(e))?;
            let mut next = from;
            for (offset, r) in records {
                if offset != next {
                    break; // never skip: a gap means the rest is not visible yet
                }
                next = offset + 1;
                let record = SourceRecord {
                    topic: self.topic.clone(),
                    partition,
                    offset,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key,
                    headers: r.headers,
                    value: r.value,
                    tombstone: false,
                };
                bytes += record.size();
                polled.records.push(record);
            }
            if next >= end {
                polled.at_end.push((partition, end));
            }
            if let Some(p) = self.positions.get_mut(at) {
                p.1 = next;
            }
        }
        self.next_partition = (self.next_partition + 1) % n.max(1);
        Ok(polled)
    }
}
