//! The Kafka source: each pipeline is a member of a consumer group.
//!
//! Offsets are authoritative in the state store, written in the same atomic
//! batch as the state they produced. On assignment the consumer seeks to
//! them (or to the group's committed offset when another host got further,
//! or when this store never read the partition). After each store commit the
//! offsets are committed to the group too, so lag tools see the truth. On
//! revocation the worker is between batches (rebalances run inside `poll`),
//! so the last commit is already in the store: it is committed to the group
//! synchronously before the partitions are released, and records fetched
//! from them but not processed are dropped.
//!
//! The worker pulls: it polls only when it is ready for the next micro-batch,
//! draining what librdkafka has already fetched, so nothing is buffered in
//! Eddy. librdkafka's fetcher threads are the fetch stage: they fill the
//! consumer's queue with the next batch while the worker processes and
//! commits the current one, and a rebalance still runs only inside `poll`,
//! between batches. The queue is bounded (`queued.max.messages.kbytes`,
//! 16 MiB per consumer unless set): when processing falls behind, fetching
//! pauses instead of buffering without bound, and resumes 10 ms after the
//! worker drained it (`fetch.queue.backoff.ms`; librdkafka's 1 s default
//! left the worker idle half of a broker run).
//!
//! Clients are configured in [`crate::kafka`], shared with the sink.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::rewind::{Polled, Rewind};
use super::{Limit, Source, SourceError, SourceRecord};
use crate::config::KafkaConfig;
use crate::kafka::{
    AdminContext, ClientError, Role, check_topics, client_config, log_client_event, unreachable,
};
use crate::store::Store;

/// Says which outbox entries the brokers acknowledged: every entry
/// numbered below what it returns is delivered.
pub type Delivered = Arc<dyn Fn() -> u64 + Send + Sync>;

/// How long a revocation waits for the outbox to deliver what the revoked
/// partitions' last batches wrote before it commits and lets go.
const REVOKE_WAIT: Duration = Duration::from_secs(10);

/// A batch in the store: the last outbox number it needs delivered and its
/// next offsets (topic, partition, offset).
type PendingBatch = (u64, Vec<(String, i32, i64)>);

/// State shared between the consumer's rebalance callback and the worker.
struct Group {
    pipeline: String,
    store: Store,
    /// Next offsets that may be committed to the group, per (topic,
    /// partition): their batches are in the store and what they wrote to
    /// the outbox is delivered.
    committed: Mutex<HashMap<(String, i32), i64>>,
    /// What the group acknowledged of those commits: a commit that failed
    /// (a rebalance in progress, say) is sent again for the partitions
    /// still held, or a partition that gets no more batches would keep its
    /// old group offset.
    acked: Mutex<HashMap<(String, i32), i64>>,
    /// Batches in the store whose outbox records may not be delivered yet:
    /// (the last outbox number they need delivered, their next offsets).
    pending: Mutex<std::collections::VecDeque<PendingBatch>>,
    /// The outbox's delivery watermark (`None`: nothing waits for one).
    delivered: Option<Delivered>,
    /// Partitions currently assigned (and read), each with the value of
    /// `rebalances` when it was given to the worker: records fetched under
    /// an older one belong to an assignment that is gone.
    assigned: Mutex<Held>,
    /// Lowest offset to hand out per partition (where the consumer was sent).
    floor: Mutex<HashMap<(String, i32), i64>>,
    /// Bumped on every assignment change.
    rebalances: AtomicU64,
    /// What `/readyz` reports for the pipeline.
    readiness: super::Readiness,
    /// Set when the client reported all brokers down; cleared by the next record.
    down: AtomicBool,
    /// Cluster mode: partitions are restored before they are read.
    restores: bool,
    /// Assignment changes for the restorer, in order: (partition, `Some`
    /// group offset when assigned / `None` when revoked).
    changes: Mutex<Vec<(u32, Option<Option<u64>>)>>,
    /// Cluster mode: whether the restorer has partitions to restore.
    restoring: AtomicBool,
}

/// The consumer's context: rebalance handling with store offsets.
pub struct GroupContext {
    group: Arc<Group>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_event(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(pipeline = %self.group.pipeline, error = %error, "kafka consumer: {reason}");
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.group.down.store(true, Ordering::SeqCst);
            self.group.readiness.set(
                &self.group.pipeline,
                Some(format!("all brokers down: {reason}")),
            );
        }
    }
}

impl Group {
    /// Moves the batches whose outbox records are delivered from `pending`
    /// to `committed`; returns their offsets, to commit to the group.
    fn release_delivered(&self) -> TopicPartitionList {
        let below = self.delivered.as_ref().map_or(u64::MAX, |d| d());
        let mut tpl = TopicPartitionList::new();
        let mut pending = crate::lock(&self.pending);
        let mut committed = crate::lock(&self.committed);
        let mut control = crate::lock(&self.readiness.control().committed);
        while pending.front().is_some_and(|(through, _)| *through < below) {
            let Some((_, offsets)) = pending.pop_front() else {
                break;
            };
            for (topic, p, o) in offsets {
                if let Ok(partition) = u32::try_from(p) {
                    control.insert(
                        (self.pipeline.clone(), topic.clone(), partition),
                        u64::try_from(o).unwrap_or(0),
                    );
                }
                let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(o));
                committed.insert((topic, p), o);
            }
        }
        tpl
    }
}

impl GroupContext {
    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let g = &self.group;
        let group_offsets = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .map(|t| t.to_topic_map())
            .unwrap_or_else(|e| {
                tracing::warn!(pipeline = %g.pipeline, error = %e, "cannot read the group's committed offsets; using the store's");
                HashMap::new()
            });
        let mut starts = Vec::new();
        for el in tpl.elements() {
            let (topic, partition) = (el.topic().to_owned(), el.partition());
            let stored = u32::try_from(partition)
                .ok()
                .and_then(|p| g.store.stored_offset(&g.pipeline, &topic, p).ok().flatten())
                .and_then(|o| i64::try_from(o).ok());
            let in_group = match group_offsets.get(&(topic.clone(), partition)) {
                Some(Offset::Offset(o)) if *o >= 0 => Some(*o),
                _ => None,
            };
            let start = match (stored, in_group) {
                (Some(s), Some(c)) => Some(s.max(c)),
                (s, c) => s.or(c),
            };
            starts.push((topic, partition, start, stored, in_group));
        }
        let mut described = Vec::with_capacity(starts.len());
        for (topic, partition, start, stored, in_group) in &starts {
            if let Some(o) = start {
                if let Err(e) = tpl.set_partition_offset(topic, *partition, Offset::Offset(*o)) {
                    tracing::warn!(pipeline = %g.pipeline, topic = %topic, partition, error = %e, "cannot set start offset");
                }
                crate::lock(&g.floor).insert((topic.clone(), *partition), *o);
            }
            let at = start.map_or_else(|| "reset".to_owned(), |o| o.to_string());
            let from = match (stored, in_group) {
                (Some(s), Some(c)) if c > s => "group",
                (Some(_), _) => "store",
                (None, Some(_)) => "group",
                (None, None) => "auto.offset.reset",
            };
            described.push(format!("{topic}/{partition}@{at} ({from})"));
        }
        tracing::info!(pipeline = %g.pipeline, partitions = %described.join(", "), "partitions assigned");
        crate::telemetry::rebalance(&g.pipeline, "assign");
        if !g.restores {
            g.readiness.set(&g.pipeline, None);
        }
        let assigned = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = assigned {
            tracing::error!(pipeline = %g.pipeline, error = %e, "assign failed");
        }
        let mut a = crate::lock(&g.assigned);
        if !matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        ) {
            a.clear();
        }
        if g.restores && !starts.is_empty() {
            // Not read until restored: paused, and not handed out.
            if let Err(e) = consumer.pause(tpl) {
                tracing::error!(pipeline = %g.pipeline, error = %e, "cannot pause the assigned partitions");
            }
            let mut changes = crate::lock(&g.changes);
            for (_, partition, _, _, in_group) in &starts {
                if let Ok(p) = u32::try_from(*partition) {
                    changes.push((p, Some(in_group.and_then(|o| u64::try_from(o).ok()))));
                }
            }
            g.readiness.set(
                &g.pipeline,
                Some("restoring assigned partitions from the state changelog".into()),
            );
        } else if g.restores {
            // An incremental rebalance that gave this host nothing new: it
            // is over, and the host is ready unless earlier restores run.
            let pending = crate::lock(&g.changes).iter().any(|(_, c)| c.is_some());
            if !pending && !g.restoring.load(Ordering::SeqCst) {
                g.readiness.set(&g.pipeline, None);
            }
        } else {
            let generation = g.rebalances.load(Ordering::SeqCst) + 1;
            for (topic, partition, ..) in starts {
                a.insert((topic, partition), generation);
            }
        }
        g.rebalances.fetch_add(1, Ordering::SeqCst);
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let g = &self.group;
        // The worker is between batches: everything processed is committed
        // to the store. Wait (bounded) for the outbox to deliver what those
        // batches wrote, then hand their offsets to the group and let go.
        if !consumer.assignment_lost() {
            let until = Instant::now() + REVOKE_WAIT;
            loop {
                g.release_delivered();
                if crate::lock(&g.pending).is_empty() || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let left = crate::lock(&g.pending).len();
            if left > 0 {
                tracing::warn!(
                    pipeline = %g.pipeline, batches = left,
                    "revoked before the outbox delivered the last batches; the group offset stays before them"
                );
            }
            let mut commit = TopicPartitionList::new();
            {
                let committed = crate::lock(&g.committed);
                for el in tpl.elements() {
                    if let Some(o) = committed.get(&(el.topic().to_owned(), el.partition())) {
                        let _ = commit.add_partition_offset(
                            el.topic(),
                            el.partition(),
                            Offset::Offset(*o),
                        );
                    }
                }
            }
            if commit.count() > 0
                && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
            {
                tracing::warn!(pipeline = %g.pipeline, error = %e, "offset commit on revocation failed");
            }
        }
        let released = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = released {
            tracing::error!(pipeline = %g.pipeline, error = %e, "unassign failed");
        }
        let mut a = crate::lock(&g.assigned);
        let mut floor = crate::lock(&g.floor);
        let mut changes = crate::lock(&g.changes);
        let mut described = Vec::new();
        for el in tpl.elements() {
            let k = (el.topic().to_owned(), el.partition());
            described.push(format!("{}/{}", k.0, k.1));
            if g.restores
                && let Ok(p) = u32::try_from(el.partition())
            {
                changes.push((p, None));
            }
            a.remove(&k);
            floor.remove(&k);
        }
        drop(changes);
        tracing::info!(pipeline = %g.pipeline, partitions = %described.join(", "), "partitions revoked");
        crate::telemetry::rebalance(&g.pipeline, "revoke");
        g.readiness.set(
            &g.pipeline,
            Some("partitions revoked; waiting for the next assignment".into()),
        );
        g.rebalances.fetch_add(1, Ordering::SeqCst);
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                tracing::error!(pipeline = %self.group.pipeline, error = ?other, "rebalance failed");
                let _ = consumer.unassign();
                crate::lock(&self.group.assigned).clear();
                self.group.rebalances.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(pipeline = %self.group.pipeline, error = %e, "group offset commit failed; it is sent again");
            return;
        }
        let mut acked = crate::lock(&self.group.acked);
        for el in offsets.elements() {
            if el.error().is_ok()
                && let Offset::Offset(o) = el.offset()
            {
                let k = (el.topic().to_owned(), el.partition());
                if acked.get(&k).is_none_or(|a| *a < o) {
                    acked.insert(k, o);
                }
            }
        }
    }
}

/// A fetched message as a [`SourceRecord`] (`topic` is shared when the
/// message is of it); `None` for a negative partition or offset.
fn record_of(m: &rdkafka::message::BorrowedMessage<'_>, topic: &Arc<str>) -> Option<SourceRecord> {
    let partition = u32::try_from(m.partition()).ok()?;
    let offset = u64::try_from(m.offset()).ok()?;
    let topic = if m.topic() == &**topic {
        topic.clone()
    } else {
        Arc::from(m.topic())
    };
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Some(SourceRecord {
        topic,
        partition,
        offset,
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        key: m.key().map(<[u8]>::to_vec),
        headers,
        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        tombstone: m.payload().is_none(),
    })
}

/// A pipeline's group consumer over its input topic.
pub struct KafkaSource {
    consumer: BaseConsumer<GroupContext>,
    group: Arc<Group>,
    topic: Arc<str>,
    restorer: Option<super::restore::Restorer>,
    /// While the pipeline is paused: what the consumer handed over (fetched
    /// before the pause took effect on its partition), each with its
    /// partition's generation then, to hand out first when it resumes.
    paused: Option<Vec<(u64, SourceRecord)>>,
    /// When unacknowledged group offsets were last sent again.
    last_recommit: Instant,
    /// Per partition, the generation it was held in and the offset of the
    /// last record handed out of it: the consumer's position is trusted
    /// (see [`Source::passed`]) only for a partition that handed out a
    /// record in its current generation, every one of them committed.
    handed: HashMap<i32, (u64, u64)>,
}

impl KafkaSource {
    /// Joins `{group_id}.{pipeline}` on `topic`, after checking that the
    /// brokers answer and the topic exists.
    ///
    /// # Errors
    /// A bad librdkafka property, unreachable brokers or a missing topic,
    /// each named.
    pub fn open(
        cfg: &KafkaConfig,
        store: Store,
        pipeline: &str,
        topic: &str,
        readiness: super::Readiness,
        delivered: Option<Delivered>,
        restorer: Option<super::restore::Restorer>,
    ) -> Result<Self, SourceError> {
        readiness.set(
            pipeline,
            Some("waiting for the consumer group's assignment".into()),
        );
        let group = Arc::new(Group {
            pipeline: pipeline.to_owned(),
            store,
            committed: Mutex::default(),
            acked: Mutex::default(),
            pending: Mutex::default(),
            delivered,
            assigned: Mutex::default(),
            floor: Mutex::default(),
            rebalances: AtomicU64::new(0),
            readiness,
            down: AtomicBool::new(false),
            restores: restorer.is_some(),
            changes: Mutex::default(),
            restoring: AtomicBool::new(false),
        });
        let mut config = client_config(cfg, Role::Consumer);
        config.set("group.id", format!("{}.{pipeline}", cfg.group_id));
        let consumer: BaseConsumer<GroupContext> = config
            .create_with_context(GroupContext {
                group: group.clone(),
            })
            .map_err(|e| ClientError::Config {
                error: e.to_string(),
            })?;
        check_topics(consumer.client(), cfg, &[topic])?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| ClientError::Config {
                error: format!("cannot subscribe to {topic:?}: {e}"),
            })?;
        Ok(KafkaSource {
            consumer,
            group,
            topic: Arc::from(topic),
            restorer,
            paused: None,
            last_recommit: Instant::now(),
            handed: HashMap::new(),
        })
    }

    /// Drops fetched records that are no longer ours to process: their
    /// partition was revoked, or they lie before where the consumer was sent.
    /// (Takes the group's locks once per poll, not per record.)
    fn keep_wanted(&self, records: &mut Vec<SourceRecord>) {
        // topic → partition → the lowest offset to hand out, if any.
        let mut wanted: HashMap<String, HashMap<i32, Option<i64>>> = HashMap::new();
        {
            let assigned = crate::lock(&self.group.assigned);
            let floor = crate::lock(&self.group.floor);
            for (t, p) in assigned.keys() {
                wanted
                    .entry(t.clone())
                    .or_default()
                    .insert(*p, floor.get(&(t.clone(), *p)).copied());
            }
        }
        records.retain(|r| {
            let partition = i32::try_from(r.partition).unwrap_or(-1);
            let offset = i64::try_from(r.offset).unwrap_or(i64::MAX);
            wanted
                .get(&*r.topic)
                .and_then(|ps| ps.get(&partition))
                .is_some_and(|f| f.is_none_or(|f| offset >= f))
        });
    }
}

impl Source for KafkaSource {
    fn poll(&mut self, limit: Limit, wait: Duration) -> Result<Vec<SourceRecord>, SourceError> {
        // Offsets of batches whose outbox records were delivered since.
        self.commit_delivered();
        let rejoin =
            crate::lock(&self.group.readiness.control().rejoin).remove(&self.group.pipeline);
        if rejoin {
            // Leave (committing on revocation, between batches) and join again,
            // so the group reassigns the partitions.
            tracing::info!(pipeline = %self.group.pipeline, "leaving and rejoining the consumer group");
            self.consumer.unsubscribe();
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until && !crate::lock(&self.group.assigned).is_empty() {
                let _ = self.consumer.poll(Duration::from_millis(50));
            }
            self.consumer
                .subscribe(&[&*self.topic])
                .map_err(|e| SourceError::Broker {
                    topic: self.topic.to_string(),
                    error: format!("cannot subscribe again: {e}"),
                })?;
        }
        let wait = if self.restore() { Duration::ZERO } else { wait };
        let deadline = Instant::now() + wait;
        let mut out: Vec<SourceRecord> = Vec::new();
        let mut bytes = 0;
        let mut rebalances = self.group.rebalances.load(Ordering::SeqCst);
        let mut held = crate::lock(&self.group.assigned).clone();
        if let Some(kept) = self.paused.take() {
            // Resumed: read on where each partition was; of what was
            // fetched while paused, what is still of the same assignment.
            let tpl = self.readable(&held);
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::error!(topic = %self.topic, error = %e, "cannot resume the partitions");
            }
            out = kept
                .into_iter()
                .filter(|(generation, r)| {
                    let k = (r.topic.to_string(), kafka_partition(r.partition));
                    held.get(&k) == Some(generation)
                })
                .map(|(_, r)| r)
                .collect();
            bytes = out.iter().map(SourceRecord::size).sum();
        }
        while !limit.reached(out.len(), bytes) {
            let timeout = if out.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            let polled = self.consumer.poll(timeout);
            let now = self.group.rebalances.load(Ordering::SeqCst);
            if now != rebalances {
                // The assignment changed inside this poll. What was fetched
                // of a partition that was revoked, or revoked and assigned
                // again (an eager rebalance: fetched again from where it was
                // sent), is dropped; a partition kept through an incremental
                // rebalance goes on where it was, so its records stay.
                rebalances = now;
                let current = crate::lock(&self.group.assigned).clone();
                keep_across(&mut out, &held, &current);
                bytes = out.iter().map(SourceRecord::size).sum();
                held = current;
            }
            match polled {
                None => {
                    if !out.is_empty() || Instant::now() >= deadline {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    if out.is_empty() {
                        return Err(SourceError::Broker {
                            topic: self.topic.to_string(),
                            error: e.to_string(),
                        });
                    }
                    tracing::warn!(topic = %self.topic, error = %e, "kafka consumer error");
                    break;
                }
                Some(Ok(m)) => {
                    if self.group.down.swap(false, Ordering::SeqCst) {
                        self.group.readiness.set(&self.group.pipeline, None);
                    }
                    if let Some(r) = record_of(&m, &self.topic) {
                        bytes += r.size();
                        out.push(r);
                    }
                }
            }
        }
        self.keep_wanted(&mut out);
        {
            let assigned = crate::lock(&self.group.assigned);
            let mut seen: Vec<u32> = Vec::new();
            for r in out.iter().rev() {
                if seen.contains(&r.partition) {
                    continue;
                }
                seen.push(r.partition);
                let p = kafka_partition(r.partition);
                if let Some(g) = assigned.get(&(self.topic.to_string(), p)) {
                    self.handed.insert(p, (*g, r.offset));
                }
            }
        }
        Ok(out)
    }

    fn committed(&mut self, next_offsets: &[(String, u32, u64)], delivered_after: Option<u64>) {
        let mut batch = Vec::with_capacity(next_offsets.len());
        {
            let mut floor = crate::lock(&self.group.floor);
            for (topic, partition, next) in next_offsets {
                if topic.as_str() != &*self.topic {
                    continue;
                }
                let (Ok(p), Ok(o)) = (i32::try_from(*partition), i64::try_from(*next)) else {
                    continue;
                };
                floor.insert((topic.clone(), p), o);
                batch.push((topic.clone(), p, o));
            }
        }
        if !batch.is_empty() {
            crate::lock(&self.group.pending).push_back((delivered_after.unwrap_or(0), batch));
        }
        self.commit_delivered();
    }

    fn passed(&mut self) -> Vec<(String, u32, u64)> {
        // Records kept while paused are handed out first when it resumes.
        if self.paused.is_some() {
            return Vec::new();
        }
        let assigned = crate::lock(&self.group.assigned).clone();
        if assigned.is_empty() {
            return Vec::new();
        }
        // The consumer's position moves past the control records and the
        // aborted transactions' records that it reads but never hands out.
        // It is trusted only where it moved by reading in the partition's
        // current generation: after a partition is given again it may still
        // be where reading stopped before (records fetched ahead, dropped).
        let positions = match self.consumer.position() {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(topic = %self.topic, error = %e, "cannot read the consumer's positions");
                return Vec::new();
            }
        };
        let floor = crate::lock(&self.group.floor);
        let mut out = Vec::new();
        for el in positions.elements() {
            let k = (el.topic().to_owned(), el.partition());
            let (Offset::Offset(at), Some(from)) = (el.offset(), floor.get(&k)) else {
                continue;
            };
            let fresh = assigned.get(&k).zip(self.handed.get(&k.1)).is_some_and(
                |(generation, (handed_in, last))| {
                    generation == handed_in
                        && i64::try_from(*last).is_ok_and(|l| l.saturating_add(1) == *from)
                },
            );
            if at > *from
                && fresh
                && let (Ok(p), Ok(o)) = (u32::try_from(k.1), u64::try_from(at))
            {
                out.push((k.0, p, o));
            }
        }
        out
    }

    fn idle(&mut self, wait: Duration) -> Result<(), SourceError> {
        self.commit_delivered();
        self.restore();
        let mut held = crate::lock(&self.group.assigned).clone();
        let mut rebalances = self.group.rebalances.load(Ordering::SeqCst);
        // Every time: partitions given since (or restored) are paused too.
        let tpl = self.readable(&held);
        if tpl.count() > 0
            && let Err(e) = self.consumer.pause(&tpl)
        {
            tracing::warn!(topic = %self.topic, error = %e, "cannot pause the partitions");
        }
        let kept = self.paused.get_or_insert_with(Vec::new);
        let deadline = Instant::now() + wait;
        loop {
            let timeout = deadline.saturating_duration_since(Instant::now());
            let polled = self.consumer.poll(timeout);
            let now = self.group.rebalances.load(Ordering::SeqCst);
            if now != rebalances {
                rebalances = now;
                held = crate::lock(&self.group.assigned).clone();
            }
            match polled {
                None => break,
                Some(Ok(m)) => {
                    if let Some(r) = record_of(&m, &self.topic) {
                        let k = (r.topic.to_string(), kafka_partition(r.partition));
                        if let Some(generation) = held.get(&k) {
                            kept.push((*generation, r));
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "kafka consumer error while paused");
                    break;
                }
            }
        }
        Ok(())
    }
}

impl KafkaSource {
    /// The partitions of `held` as a list for the consumer.
    fn readable(&self, held: &Held) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in held.keys() {
            tpl.add_partition(t, *p);
        }
        tpl
    }

    /// Cluster mode: passes assignment changes to the restorer, works on
    /// the restores for a slice, and starts reading the partitions that are
    /// restored. Returns whether restores are still waiting.
    fn restore(&mut self) -> bool {
        let Some(restorer) = self.restorer.as_mut() else {
            return false;
        };
        for (p, change) in std::mem::take(&mut *crate::lock(&self.group.changes)) {
            match change {
                Some(group_offset) => restorer.assigned(p, group_offset),
                None => restorer.revoked(p),
            }
        }
        if !restorer.busy() {
            if self.group.restoring.swap(false, Ordering::SeqCst) {
                // Its restores were revoked: nothing restores now.
                self.group.readiness.set(&self.group.pipeline, None);
            }
            return false;
        }
        for done in restorer.step() {
            let p = kafka_partition(done.partition);
            let start = i64::try_from(done.start).unwrap_or(i64::MAX);
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(start));
            if let Err(e) = self
                .consumer
                .seek_partitions(tpl.clone(), Duration::from_secs(10))
            {
                tracing::warn!(topic = %self.topic, partition = p, error = %e, "cannot seek the restored partition");
            }
            // A paused pipeline's partition stays paused until it resumes.
            if self.paused.is_none()
                && let Err(e) = self.consumer.resume(&tpl)
            {
                tracing::error!(topic = %self.topic, partition = p, error = %e, "cannot resume the restored partition");
            }
            crate::lock(&self.group.floor).insert((self.topic.to_string(), p), start);
            // The restored state reflects the input up to `start`, and the
            // changelog holds it: the group's offset moves there too. Else
            // a partition whose last events its previous owner folded but
            // had not committed (killed) lags in the group until new events
            // come.
            {
                let mut committed = crate::lock(&self.group.committed);
                let at = committed
                    .entry((self.topic.to_string(), p))
                    .or_insert(start);
                *at = (*at).max(start);
            }
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(topic = %self.topic, partition = p, error = %e, "cannot commit the restored partition's offset");
            }
            let generation = self.group.rebalances.fetch_add(1, Ordering::SeqCst) + 1;
            crate::lock(&self.group.assigned).insert((self.topic.to_string(), p), generation);
        }
        let busy = restorer.busy();
        self.group.restoring.store(busy, Ordering::SeqCst);
        if !busy {
            self.group.readiness.set(&self.group.pipeline, None);
        }
        busy
    }

    /// Commits to the group the offsets of the batches whose outbox records
    /// the brokers acknowledged (so a partition's group offset never passes
    /// a change its changelog does not hold yet).
    fn commit_delivered(&mut self) {
        let mut tpl = self.group.release_delivered();
        if tpl.count() == 0 && self.last_recommit.elapsed() >= RECOMMIT_EVERY {
            // Offsets of held partitions the group has not acknowledged.
            self.last_recommit = Instant::now();
            let committed = crate::lock(&self.group.committed);
            let acked = crate::lock(&self.group.acked);
            let assigned = crate::lock(&self.group.assigned);
            for (k, o) in committed.iter() {
                if assigned.contains_key(k) && acked.get(k).is_none_or(|a| a < o) {
                    let _ = tpl.add_partition_offset(&k.0, k.1, Offset::Offset(*o));
                }
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(topic = %self.topic, error = %e, "group offset commit failed");
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Leave the group now (committing on revocation) rather than letting
        // the session time out, so partitions move to the other members at once.
        self.consumer.unsubscribe();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && !crate::lock(&self.group.assigned).is_empty() {
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
    }
}

/// How often group offsets the group did not acknowledge are sent again.
const RECOMMIT_EVERY: Duration = Duration::from_secs(2);

/// How long a catch-up reader's fetch may wait at a partition's end.
const CATCH_UP_FETCH_WAIT: Duration = Duration::from_millis(5);

/// A topic of the cluster read by position (a [`Rewind`]): a consumer in no
/// group, assigned exactly the partitions it is asked for, that never
/// commits anything — a replay or a shadow run leaves the pipeline's group
/// and its offsets alone.
pub struct KafkaRewind {
    consumer: BaseConsumer<AdminContext>,
    topic: Arc<str>,
    partitions: u32,
    timeout: Duration,
}

impl KafkaRewind {
    /// A reader of `topic`, after checking that the brokers answer and the
    /// topic exists.
    ///
    /// # Errors
    /// A bad librdkafka property, unreachable brokers or a missing topic.
    pub fn open(cfg: &KafkaConfig, topic: &str) -> Result<Self, SourceError> {
        Self::open_with(cfg, topic, CATCH_UP_FETCH_WAIT)
    }

    /// A reader that follows `topic` as it grows: its fetches wait at the
    /// end of a partition for `fetch_wait` (librdkafka's
    /// `fetch.wait.max.ms`) instead of a catch-up reader's few ms.
    ///
    /// # Errors
    /// As [`KafkaRewind::open`].
    pub fn open_following(
        cfg: &KafkaConfig,
        topic: &str,
        fetch_wait: Duration,
    ) -> Result<Self, SourceError> {
        Self::open_with(cfg, topic, fetch_wait)
    }

    fn open_with(
        cfg: &KafkaConfig,
        topic: &str,
        fetch_wait: Duration,
    ) -> Result<Self, SourceError> {
        let mut config = client_config(cfg, Role::Consumer);
        config
            .set("client.id", format!("{}.rewind", cfg.client_id))
            // A reader that catches up to an end must not have the broker
            // hold its fetch there (500 ms by default): the next request on
            // the connection, a seek to another partition or a watermark
            // query, would wait behind it.
            .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
            // librdkafka assigns partitions only to a consumer with a group
            // id; this one never subscribes or commits, so it never joins
            // (or touches the offsets of) that group.
            .set("group.id", format!("{}.rewind", cfg.group_id))
            // Tells the reader when a partition has nothing more for now.
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer<AdminContext> = config
            .create_with_context(AdminContext::default())
            .map_err(|e| ClientError::Config {
                error: e.to_string(),
            })?;
        let timeout = Duration::from_millis(cfg.connect_timeout_ms.max(1));
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| unreachable(cfg, &e))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|n| *n > 0)
            .ok_or_else(|| SourceError::UnknownTopic {
                topic: topic.to_owned(),
            })?;
        Ok(KafkaRewind {
            consumer,
            topic: Arc::from(topic),
            partitions: u32::try_from(partitions).unwrap_or(u32::MAX),
            timeout,
        })
    }

    /// The consumer's position in `partition`: the next offset it reads.
    fn position(&self, partition: i32) -> Option<u64> {
        let positions = self.consumer.position().ok()?;
        match positions.find_partition(&self.topic, partition)?.offset() {
            Offset::Offset(o) => u64::try_from(o).ok(),
            _ => None,
        }
    }

    fn broker_error(&self, e: &KafkaError) -> SourceError {
        SourceError::Broker {
            topic: self.topic.to_string(),
            error: e.to_string(),
        }
    }
}

/// Partitions given to the worker, each with the rebalance count when it
/// was given.
type Held = HashMap<(String, i32), u64>;

/// Of the records a poll fetched before the assignment changed from
/// `before` to `after`, keeps those of partitions held through the change
/// (same generation): a partition revoked, or revoked and given again, is
/// fetched anew from where it was sent.
fn keep_across(records: &mut Vec<SourceRecord>, before: &Held, after: &Held) {
    records.retain(|r| {
        let k = (r.topic.to_string(), kafka_partition(r.partition));
        after.get(&k).is_some_and(|g| before.get(&k) == Some(g))
    });
}

fn kafka_partition(p: u32) -> i32 {
    i32::try_from(p).unwrap_or(i32::MAX)
}

impl Rewind for KafkaRewind {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn watermarks(&mut self, partition: u32) -> Result<(u64, u64), SourceError> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.topic, kafka_partition(partition), self.timeout)
            .map_err(|e| self.broker_error(&e))?;
        Ok((
            u64::try_from(low).unwrap_or(0),
            u64::try_from(high).unwrap_or(0),
        ))
    }

    fn offset_for_time(&mut self, partition: u32, timestamp_ms: i64) -> Result<u64, SourceError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.topic,
            kafka_partition(partition),
            Offset::Offset(timestamp_ms),
        )
        .map_err(|e| self.broker_error(&e))?;
        let found = self
            .consumer
            .offsets_for_times(tpl, self.timeout)
            .map_err(|e| self.broker_error(&e))?;
        match found
            .find_partition(&self.topic, kafka_partition(partition))
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) if o >= 0 => Ok(u64::try_from(o).unwrap_or(0)),
            // No record at or after that time: the partition's end.
            _ => Ok(self.watermarks(partition)?.1),
        }
    }

    fn assign(&mut self, positions: &[(u32, u64)]) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in positions {
            tpl.add_partition_offset(
                &self.topic,
                kafka_partition(*p),
                Offset::Offset(i64::try_from(*o).unwrap_or(i64::MAX)),
            )
            .map_err(|e| self.broker_error(&e))?;
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| self.broker_error(&e))
    }

    fn poll(&mut self, limit: Limit, wait: Duration) -> Result<Polled, SourceError> {
        let deadline = Instant::now() + wait;
        let mut polled = Polled::default();
        let mut bytes = 0;
        while !limit.reached(polled.records.len(), bytes) {
            let idle = polled.records.is_empty() && polled.at_end.is_empty();
            let timeout = if idle {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(timeout) {
                None => {
                    if !idle || Instant::now() >= deadline {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // At the end, the consumer's position is past every
                    // record it read, handed out or not (control records).
                    // (Unknown, 0: only an open span ends then.)
                    let end = self.position(p).unwrap_or(0);
                    if let Ok(p) = u32::try_from(p) {
                        polled.at_end.push((p, end));
                    }
                }
                Some(Err(e)) => {
                    // Kept to explain a read that stalls; the client retries.
                    tracing::warn!(topic = %self.topic, error = %e, "kafka reader");
                    self.consumer.context().note(e.to_string());
                    break;
                }
                Some(Ok(m)) => {
                    if let Some(r) = record_of(&m, &self.topic) {
                        bytes += r.size();
                        polled.records.push(r);
                    }
                }
            }
        }
        Ok(polled)
    }

    fn last_error(&self) -> Option<String> {
        self.consumer.context().last_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn group_offsets_wait_for_the_outbox_to_deliver_their_batches()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), crate::config::Durability::Process)?;
        let below = Arc::new(AtomicU64::new(0));
        let watermark = below.clone();
        let group = Group {
            pipeline: "p".into(),
            store,
            committed: Mutex::default(),
            acked: Mutex::default(),
            pending: Mutex::default(),
            delivered: Some(Arc::new(move || watermark.load(Ordering::SeqCst))),
            assigned: Mutex::default(),
            floor: Mutex::default(),
            rebalances: AtomicU64::new(0),
            readiness: super::super::Readiness::default(),
            down: AtomicBool::new(false),
            restores: false,
            changes: Mutex::default(),
            restoring: AtomicBool::new(false),
        };
        let batch = |through: u64, offset: i64| (through, vec![("t".to_owned(), 0, offset)]);
        crate::lock(&group.pending).extend([batch(5, 10), batch(7, 20), batch(7, 30)]);
        let offsets = |tpl: &TopicPartitionList| -> Vec<i64> {
            tpl.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .collect()
        };
        // Nothing delivered: nothing to commit.
        assert!(offsets(&group.release_delivered()).is_empty());
        // Entries up to 5 delivered: the first batch only.
        below.store(6, Ordering::SeqCst);
        assert_eq!(offsets(&group.release_delivered()), [10]);
        assert_eq!(
            crate::lock(&group.committed).get(&("t".to_owned(), 0)),
            Some(&10)
        );
        // Up to 7: the rest; the partition's group offset is the last one.
        below.store(8, Ordering::SeqCst);
        assert_eq!(offsets(&group.release_delivered()), [30]);
        assert_eq!(
            crate::lock(&group.committed).get(&("t".to_owned(), 0)),
            Some(&30)
        );
        assert!(crate::lock(&group.pending).is_empty());
        Ok(())
    }

    #[test]
    fn a_poll_keeps_what_it_fetched_of_the_partitions_held_through_a_rebalance() {
        let record = |partition, offset| SourceRecord {
            topic: Arc::from("t"),
            partition,
            offset,
            timestamp_ms: 0,
            key: None,
            headers: Vec::new(),
            value: b"{}".to_vec(),
            tombstone: false,
        };
        let fetched = || vec![record(0, 10), record(1, 20), record(2, 30), record(0, 11)];
        let held = |ps: &[(i32, u64)]| -> Held {
            ps.iter().map(|(p, g)| (("t".to_owned(), *p), *g)).collect()
        };
        let offsets = |rs: &[SourceRecord]| rs.iter().map(|r| r.offset).collect::<Vec<_>>();
        let before = held(&[(0, 1), (1, 1), (2, 1)]);
        // Incremental: partition 2 revoked, 3 assigned; 0 and 1 read on.
        let mut out = fetched();
        keep_across(&mut out, &before, &held(&[(0, 1), (1, 1), (3, 4)]));
        assert_eq!(offsets(&out), [10, 20, 11]);
        // Eager: everything revoked and assigned again (a new generation):
        // every partition is fetched again from where it was sent.
        let mut out = fetched();
        keep_across(&mut out, &before, &held(&[(0, 5), (1, 5), (2, 5)]));
        assert!(out.is_empty());
        // Nothing changed for 1; 0 was revoked and given back.
        let mut out = fetched();
        keep_across(&mut out, &before, &held(&[(0, 6), (1, 1)]));
        assert_eq!(offsets(&out), [20]);
    }
}
