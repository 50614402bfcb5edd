//! The Kafka sink: an idempotent producer draining the store's outbox.
//!
//! A pipeline commit writes its emitted records to the outbox in the same
//! atomic batch as its states and offsets. A drainer thread sends outbox
//! entries in order and deletes each one only when the broker acknowledged
//! it. After a crash, entries sent but not yet deleted are sent again: a
//! downstream consumer drops those duplicates by their `eddy-id` header.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::{ProduceError, ProduceRecord};
use crate::config::KafkaConfig;
use crate::kafka::{ClientError, Role, check_topics, client_config, log_client_event};
use crate::store::{Commit, LogRecord, OutboxRecord, Store};

/// Most outbox entries sent and not yet acknowledged.
const MAX_IN_FLIGHT: usize = 50_000;
/// Outbox entries read per drain round.
const READ_BATCH: usize = 2_000;
/// How long the producer endpoint waits for the brokers' acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// What a delivery report is for.
pub enum Delivery {
    /// An outbox entry, by sequence number.
    Outbox(u64),
    /// A record of the producer endpoint, waiting for its (partition, offset).
    Reply(tokio::sync::oneshot::Sender<Result<(i32, i64), String>>),
}

#[derive(Default)]
struct Reports {
    acked: Vec<u64>,
    failed: Vec<(u64, String)>,
}

#[derive(Default)]
struct Deliveries {
    reports: Mutex<Reports>,
    wake: Condvar,
    /// Topics whose delivered offsets are kept (state changelogs).
    watched: std::sync::RwLock<HashSet<String>>,
    /// Per watched (topic, partition), the offset of the last record
    /// delivered to it.
    offsets: Mutex<HashMap<(String, i32), i64>>,
    /// Outbox entries whose delivery someone waits for, with the
    /// (partition, offset) or the error once reported.
    confirms: Mutex<HashMap<u64, Confirm>>,
}

/// A confirmed write's answer: `None` until reported, then where the
/// record landed (partition, offset) or why it did not.
type Confirm = Option<Result<(i32, i64), String>>;

/// The producer's context: routes delivery reports.
pub struct SinkContext {
    deliveries: Arc<Deliveries>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_event(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, "kafka producer: {reason}");
    }

    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        for (name, broker) in &statistics.brokers {
            if let Some(t) = &broker.throttle {
                crate::telemetry::producer_throttle(name, t.avg as f64);
            }
        }
    }
}

impl SinkContext {
    /// Keeps what the restore protocol needs of a delivery: the offsets of
    /// watched topics, and the answer for an entry someone waits for.
    fn note_delivery(&self, seq: u64, result: &DeliveryResult<'_>) {
        let d = &self.deliveries;
        if let Ok(m) = result {
            let watched = d
                .watched
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !watched.is_empty() && watched.contains(m.topic()) {
                let mut offsets = crate::lock(&d.offsets);
                let at = offsets
                    .entry((m.topic().to_owned(), m.partition()))
                    .or_insert(-1);
                *at = (*at).max(m.offset());
            }
        }
        let mut confirms = crate::lock(&d.confirms);
        if let Some(slot) = confirms.get_mut(&seq) {
            *slot = Some(match result {
                Ok(m) => Ok((m.partition(), m.offset())),
                Err((e, m)) => Err(format!("topic {:?}: {e}", m.topic())),
            });
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Box<Delivery>) {
        match *opaque {
            Delivery::Outbox(seq) => {
                self.note_delivery(seq, result);
                let mut r = crate::lock(&self.deliveries.reports);
                match result {
                    Ok(_) => r.acked.push(seq),
                    Err((e, m)) => r.failed.push((seq, format!("topic {:?}: {e}", m.topic()))),
                }
                self.deliveries.wake.notify_all();
            }
            Delivery::Reply(tx) => {
                let _ = tx.send(match result {
                    Ok(m) => Ok((m.partition(), m.offset())),
                    Err((e, m)) => Err(format!("topic {:?}: {e}", m.topic())),
                });
            }
        }
    }
}

/// The Kafka sink: outbox, producer and drainer.
pub struct KafkaSink {
    producer: ThreadedProducer<SinkContext>,
    store: Store,
    cfg: KafkaConfig,
    /// Last outbox sequence number used; held across the store commit so
    /// entries become visible in sequence order.
    last_seq: Mutex<u64>,
    deliveries: Arc<Deliveries>,
    partitions: Mutex<HashMap<String, u32>>,
    stop: AtomicBool,
    drainer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn headers_of(headers: &[(String, Vec<u8>)]) -> Option<OwnedHeaders> {
    if headers.is_empty() {
        return None;
    }
    Some(headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v),
            })
        },
    ))
}

impl KafkaSink {
    /// Creates the producer, checks that the brokers answer and that
    /// `topics` exist, and starts draining the outbox.
    ///
    /// # Errors
    /// A bad librdkafka property, unreachable brokers or a missing topic.
    pub fn start(
        cfg: &KafkaConfig,
        store: Store,
        topics: &[&str],
    ) -> Result<Arc<Self>, ProduceError> {
        let deliveries = Arc::new(Deliveries::default());
        let producer: ThreadedProducer<SinkContext> = client_config(cfg, Role::Producer)
            .create_with_context(SinkContext {
                deliveries: deliveries.clone(),
            })
            .map_err(|e| ClientError::Config {
                error: e.to_string(),
            })?;
        check_topics(producer.client(), cfg, topics)?;
        let last_seq = store.outbox_last()?;
        let sink = Arc::new(KafkaSink {
            producer,
            store,
            cfg: cfg.clone(),
            last_seq: Mutex::new(last_seq),
            deliveries,
            partitions: Mutex::default(),
            stop: AtomicBool::new(false),
            drainer: Mutex::new(None),
        });
        let drainer = sink.clone();
        let handle = std::thread::Builder::new()
            .name("eddy-outbox".into())
            .spawn(move || drainer.drain())
            .map_err(|e| {
                ProduceError::Interrupted(format!("cannot start the outbox drainer: {e}"))
            })?;
        *crate::lock(&sink.drainer) = Some(handle);
        Ok(sink)
    }

    /// Writes the commit with `emits` in its outbox.
    ///
    /// # Errors
    /// An invalid topic name or a store failure; nothing is written then.
    pub fn commit(
        &self,
        commit: &mut Commit,
        emits: Vec<(String, ProduceRecord)>,
    ) -> Result<(), ProduceError> {
        self.write(commit, emits, false)
    }

    /// [`KafkaSink::commit`]; with `confirm`, the first entry's delivery is
    /// kept for [`KafkaSink::write_confirmed`] (registered before the entry
    /// exists, so the report cannot come first).
    fn write(
        &self,
        commit: &mut Commit,
        emits: Vec<(String, ProduceRecord)>,
        confirm: bool,
    ) -> Result<(), ProduceError> {
        for (topic, _) in &emits {
            crate::config::validate_topic_name(topic).map_err(ProduceError::BadTopicName)?;
        }
        let mut last = crate::lock(&self.last_seq);
        if confirm {
            crate::lock(&self.deliveries.confirms).insert(*last + 1, None);
        }
        let now = crate::now_ms();
        let mut seq = *last;
        commit.outbox = emits
            .into_iter()
            .map(|(topic, r)| {
                seq += 1;
                (
                    seq,
                    OutboxRecord {
                        topic,
                        partition: r.partition,
                        record: LogRecord {
                            timestamp_ms: r.timestamp_ms.unwrap_or(now),
                            key: r.key,
                            headers: r.headers,
                            value: r.value,
                        },
                    },
                )
            })
            .collect();
        self.store.commit(commit)?;
        let wrote = !commit.outbox.is_empty();
        *last = seq;
        drop(last);
        if wrote {
            self.deliveries.wake.notify_all();
        }
        Ok(())
    }

    /// Keeps the offsets of what is delivered to `topic` (a state changelog),
    /// for [`KafkaSink::delivered_offset`].
    pub fn watch(&self, topic: &str) {
        self.deliveries
            .watched
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_owned());
    }

    /// The offset after the last record delivered to a watched topic's
    /// partition since this host started (`None`: none yet).
    pub fn delivered_offset(&self, topic: &str, partition: u32) -> Option<u64> {
        let p = i32::try_from(partition).ok()?;
        let offsets = crate::lock(&self.deliveries.offsets);
        let o = offsets.get(&(topic.to_owned(), p))?;
        u64::try_from(*o).ok().map(|o| o + 1)
    }

    /// Writes one record through the outbox (after every entry already in
    /// it, so after everything this host produced before) and waits up to
    /// `timeout` for the brokers to acknowledge it; returns its offset.
    ///
    /// # Errors
    /// A store failure, a refused record or no acknowledgement in time (the
    /// record then stays in the outbox and is still sent).
    pub fn write_confirmed(
        &self,
        topic: &str,
        record: ProduceRecord,
        timeout: Duration,
    ) -> Result<u64, ProduceError> {
        let mut commit = Commit::default();
        let written = self.write(&mut commit, vec![(topic.to_owned(), record)], true);
        let Some(seq) = commit.outbox.first().map(|(s, _)| *s) else {
            return Err(written.err().unwrap_or_else(|| {
                ProduceError::Interrupted("the record was not written".into())
            }));
        };
        let forget = || crate::lock(&self.deliveries.confirms).remove(&seq);
        if let Err(e) = written {
            forget();
            return Err(e);
        }
        let until = Instant::now() + timeout;
        loop {
            let answer = crate::lock(&self.deliveries.confirms).get(&seq).cloned();
            if let Some(Some(result)) = answer {
                forget();
                let (_, offset) = result.map_err(ProduceError::Broker)?;
                return Ok(u64::try_from(offset).unwrap_or(0));
            }
            if Instant::now() >= until {
                forget();
                return Err(ProduceError::Broker(format!(
                    "topic {topic:?}: no acknowledgement from the brokers within {} ms",
                    timeout.as_millis()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Partition count of `topic` on the cluster (cached once known).
    ///
    /// # Errors
    /// When the brokers cannot be asked.
    pub fn partitions(&self, topic: &str) -> Result<Option<u32>, ProduceError> {
        if let Some(n) = crate::lock(&self.partitions).get(topic) {
            return Ok(Some(*n));
        }
        let metadata = self
            .producer
            .client()
            .fetch_metadata(
                Some(topic),
                Duration::from_millis(self.cfg.connect_timeout_ms.max(1)),
            )
            .map_err(|e| ProduceError::Broker(format!("cannot read metadata of {topic:?}: {e}")))?;
        let n = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| u32::try_from(t.partitions().len()).unwrap_or(u32::MAX))
            .filter(|n| *n > 0);
        if let Some(n) = n {
            crate::lock(&self.partitions).insert(topic.to_owned(), n);
        }
        Ok(n)
    }

    /// Produces records for the producer endpoint and waits for the brokers'
    /// acknowledgements.
    ///
    /// # Errors
    /// A refused record, a broker error or no acknowledgement in time. Records
    /// before the failing one may have been written.
    pub async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<(u32, u64)>, ProduceError> {
        let now = crate::now_ms();
        let mut waiting = Vec::with_capacity(records.len());
        for r in &records {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let mut record = BaseRecord::with_opaque_to(topic, Box::new(Delivery::Reply(tx)))
                .payload(&r.value)
                .timestamp(r.timestamp_ms.unwrap_or(now));
            if let Some(k) = &r.key {
                record = record.key(k);
            }
            if let Some(p) = r.partition {
                record = record.partition(i32::try_from(p).unwrap_or(i32::MAX));
            }
            if let Some(h) = headers_of(&r.headers) {
                record = record.headers(h);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        return Err(ProduceError::Broker(format!("topic {topic:?}: {e}")));
                    }
                }
            }
            waiting.push(rx);
        }
        let mut out = Vec::with_capacity(waiting.len());
        for rx in waiting {
            let reply = tokio::time::timeout(ACK_TIMEOUT, rx).await.map_err(|_| {
                ProduceError::Broker(format!(
                    "topic {topic:?}: no acknowledgement from the brokers within {} s",
                    ACK_TIMEOUT.as_secs()
                ))
            })?;
            let (p, o) = reply
                .map_err(|_| ProduceError::Broker("the producer stopped".into()))?
                .map_err(ProduceError::Broker)?;
            out.push((u32::try_from(p).unwrap_or(0), u64::try_from(o).unwrap_or(0)));
        }
        Ok(out)
    }

    /// The Kafka configuration (for topic administration).
    pub fn config(&self) -> &KafkaConfig {
        &self.cfg
    }

    /// High watermark of each partition of `topic` (`None`: no such topic).
    ///
    /// # Errors
    /// When the brokers cannot be asked.
    pub fn high_watermarks(&self, topic: &str) -> Result<Option<Vec<u64>>, ProduceError> {
        let Some(n) = self.partitions(topic)? else {
            return Ok(None);
        };
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms.max(1));
        let mut out = Vec::with_capacity(n as usize);
        for p in 0..n {
            let (_, high) = self
                .producer
                .client()
                .fetch_watermarks(topic, i32::try_from(p).unwrap_or(i32::MAX), timeout)
                .map_err(|e| {
                    ProduceError::Broker(format!("watermarks of {topic:?} partition {p}: {e}"))
                })?;
            out.push(u64::try_from(high).unwrap_or(0));
        }
        Ok(Some(out))
    }

    /// The last outbox number used so far.
    pub fn outbox_last(&self) -> u64 {
        *crate::lock(&self.last_seq)
    }

    /// Every outbox entry numbered below this is delivered (acknowledged by
    /// the brokers and removed).
    pub fn delivered_below(&self) -> u64 {
        // The last number first: an entry committed after this read has a
        // higher number, so it cannot be counted as delivered.
        let last = self.outbox_last();
        match self.store.outbox_after(0, 1) {
            Ok(first) => first
                .first()
                .map_or(last.saturating_add(1), |(seq, _)| *seq),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                0
            }
        }
    }

    /// Entries waiting in the outbox.
    pub fn outbox_depth(&self) -> usize {
        self.store.outbox_len().unwrap_or(0)
    }

    /// Stops taking outbox entries once the outbox is empty (or `bound`
    /// passed), flushes the producer and stops the drainer.
    pub fn shutdown(&self, bound: Duration) -> usize {
        let until = Instant::now() + bound;
        while Instant::now() < until && self.outbox_depth() > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::SeqCst);
        self.deliveries.wake.notify_all();
        if let Some(h) = crate::lock(&self.drainer).take() {
            let _ = h.join();
        }
        let left = self.outbox_depth();
        if left > 0 {
            tracing::warn!(
                entries = left,
                "outbox not empty at shutdown; sent after the next start"
            );
        } else {
            tracing::info!("outbox drained");
        }
        left
    }

    fn send_entry(&self, seq: u64, r: &OutboxRecord) -> Result<(), KafkaError> {
        let mut record = BaseRecord::with_opaque_to(&r.topic, Box::new(Delivery::Outbox(seq)))
            .payload(&r.record.value)
            .timestamp(r.record.timestamp_ms);
        if let Some(k) = &r.record.key {
            record = record.key(k);
        }
        if let Some(p) = r.partition {
            record = record.partition(i32::try_from(p).unwrap_or(i32::MAX));
        }
        if let Some(h) = headers_of(&r.record.headers) {
            record = record.headers(h);
        }
        if r.record
            .headers
            .iter()
            .any(|(n, _)| n == crate::pipeline::TOMBSTONE_HEADER)
        {
            record.payload = None;
        }
        self.producer.send(record).map_err(|(e, _)| e)
    }

    /// The drainer loop: send in order, delete on acknowledgement, resend
    /// what failed after a pause.
    fn drain(&self) {
        let mut in_flight: HashSet<u64> = HashSet::new();
        let mut cursor = 0u64;
        let mut retry_at: Option<Instant> = None;
        loop {
            let Reports { acked, failed } =
                std::mem::take(&mut *crate::lock(&self.deliveries.reports));
            if !acked.is_empty() {
                if let Err(e) = self.store.outbox_remove(&acked) {
                    tracing::error!(error = %e, "cannot delete delivered outbox entries; they will be sent again");
                }
                for s in &acked {
                    in_flight.remove(s);
                }
            }
            for (seq, error) in failed {
                tracing::warn!(outbox_seq = seq, error = %error, "delivery failed; will retry");
                in_flight.remove(&seq);
                cursor = cursor.min(seq.saturating_sub(1));
                retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
            let stopping = self.stop.load(Ordering::SeqCst);
            if stopping {
                break;
            }
            let mut sent = 0usize;
            if retry_at.is_none_or(|t| Instant::now() >= t) && in_flight.len() < MAX_IN_FLIGHT {
                retry_at = None;
                let entries = self
                    .store
                    .outbox_after(cursor, READ_BATCH)
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "cannot read the outbox");
                        Vec::new()
                    });
                for (seq, r) in entries {
                    if in_flight.contains(&seq) {
                        cursor = seq;
                        continue;
                    }
                    match self.send_entry(seq, &r) {
                        Ok(()) => {
                            in_flight.insert(seq);
                            cursor = seq;
                            sent += 1;
                        }
                        Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => break,
                        Err(e) => {
                            tracing::warn!(outbox_seq = seq, topic = %r.topic, error = %e, "cannot send; will retry");
                            retry_at = Some(Instant::now() + Duration::from_secs(1));
                            break;
                        }
                    }
                }
            }
            if sent == 0 {
                let reports = crate::lock(&self.deliveries.reports);
                if reports.acked.is_empty() && reports.failed.is_empty() {
                    let _ = self
                        .deliveries
                        .wake
                        .wait_timeout(reports, Duration::from_millis(20));
                }
            }
        }
        let _ = self.producer.flush(Duration::from_secs(5));
        let Reports { acked, .. } = std::mem::take(&mut *crate::lock(&self.deliveries.reports));
        if let Err(e) = self.store.outbox_remove(&acked) {
            tracing::error!(error = %e, "cannot delete delivered outbox entries");
        }
    }
}
