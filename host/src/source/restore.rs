//! Cluster mode, before a partition is read: restore its state from the
//! pipeline's state changelog.
//!
//! When the group assigns a partition, the Kafka source pauses it and hands
//! it here. The restore, run between polls of the group (so this host stays
//! a member while it reads):
//!
//! 1. writes a *fence* to the changelog partition, through the outbox (so
//!    after everything this host wrote before) and waits for the brokers to
//!    acknowledge it; the fence's offset is this host's new *epoch* for the
//!    partition, and every state record it writes from then on carries it;
//! 2. reads the changelog partition up to its fence with a consumer outside
//!    the group: from this store's checkpoint when the store is current
//!    (this host was the partition's last owner: no other fence since), else
//!    from the start into an emptied partition. Records of an epoch older
//!    than the last fence before them were written by a host that had lost
//!    the partition and are skipped; records are applied a whole batch at a
//!    time (up to the record marked `eddy-batch-end`), so a batch its host
//!    did not finish delivering is not half applied;
//! 3. resumes the partition from the input offset the restored state
//!    reflects (or the group's, when that is further: batches that changed
//!    no state), which the Kafka source commits to the group.
//!
//! A store that held states before cluster mode was turned on, with an
//! empty changelog, publishes its states to the changelog instead.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::rewind::Rewind;
use super::{Limit, SourceError, SourceRecord};
use crate::config::{ClusterConfig, KafkaConfig};
use crate::notify::Hub;
use crate::pipeline::schedules::{MARK_CHANGELOG_HEADER, RUN_CHANGELOG_HEADER, RUN_HEADER};
use crate::pipeline::timers::{STREAM_TIME_HEADER, TIMER_HEADER, TIMER_KEY_HEADER};
use crate::pipeline::{
    BATCH_END_HEADER, DEAD_LETTER_HEADER, EPOCH_HEADER, FENCE_HEADER, SEQ_HEADER,
    SOURCE_OFFSET_HEADER, STAMP_HEADER, STATE_FORMAT_HEADER, TOMBSTONE_HEADER, VERSION_HEADER,
};
use crate::sink::ProduceRecord;
use crate::sink::kafka::KafkaSink;
use crate::store::{RestorePoint, Restored, State, StateFormat, Store, StoredState, TimerOp};

/// Changelog records read per poll, and states published per write.
const APPLY_BATCH: usize = 5_000;
/// Restored states held in memory before they are written: a key's later
/// records replace its earlier ones there, so a changelog that holds
/// several changes per key (not compacted yet) writes each key once.
const HOLD_STATES: usize = 200_000;
/// ... or this many bytes of state JSON.
const HOLD_BYTES: usize = 64 << 20;
/// Longest a restore runs before the group is polled again.
const SLICE: Duration = Duration::from_millis(200);

/// Which partitions of a pipeline this host owns, under which epoch, and
/// which it is restoring. Shared by the Kafka source (which changes it) and
/// the worker (which stamps its changelog records with the epochs).
pub struct Ownership {
    /// The pipeline.
    pub pipeline: String,
    /// Its state changelog.
    pub topic: String,
    epochs: Mutex<Vec<Option<u64>>>,
    restoring: Mutex<BTreeSet<u32>>,
    /// Restore points last written by the worker, per partition.
    written: Mutex<HashMap<u32, RestorePoint>>,
}

impl Ownership {
    /// Nothing owned yet, for a pipeline whose input has `partitions`.
    pub fn new(pipeline: &str, topic: &str, partitions: u32) -> Arc<Self> {
        Arc::new(Ownership {
            pipeline: pipeline.to_owned(),
            topic: topic.to_owned(),
            epochs: Mutex::new(vec![None; partitions as usize]),
            restoring: Mutex::default(),
            written: Mutex::default(),
        })
    }

    /// Each partition's epoch, `None` where this host does not own it (or
    /// is still restoring it).
    pub fn epochs(&self) -> Vec<Option<u64>> {
        crate::lock(&self.epochs).clone()
    }

    /// The partitions this host owns and has restored, in order.
    pub fn owned(&self) -> Vec<u32> {
        crate::lock(&self.epochs)
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_some())
            .filter_map(|(p, _)| u32::try_from(p).ok())
            .collect()
    }

    /// The partitions being restored.
    pub fn restoring(&self) -> Vec<u32> {
        crate::lock(&self.restoring).iter().copied().collect()
    }

    /// Whether this host owns `partition` and has restored it.
    pub fn owns(&self, partition: u32) -> bool {
        crate::lock(&self.epochs)
            .get(partition as usize)
            .is_some_and(Option::is_some)
    }

    /// The input topic's partition count.
    pub fn partitions(&self) -> u32 {
        u32::try_from(crate::lock(&self.epochs).len()).unwrap_or(u32::MAX)
    }

    fn begin(&self, partition: u32) {
        self.set(partition, None);
        crate::lock(&self.restoring).insert(partition);
        self.report();
    }

    fn finish(&self, partition: u32, epoch: u64) {
        crate::lock(&self.restoring).remove(&partition);
        self.set(partition, Some(epoch));
        crate::lock(&self.written).insert(
            partition,
            RestorePoint {
                epoch,
                next_offset: epoch + 1,
            },
        );
        self.report();
    }

    fn release(&self, partition: u32) {
        crate::lock(&self.restoring).remove(&partition);
        self.set(partition, None);
        crate::lock(&self.written).remove(&partition);
        self.report();
    }

    fn set(&self, partition: u32, epoch: Option<u64>) {
        if let Some(e) = crate::lock(&self.epochs).get_mut(partition as usize) {
            *e = epoch;
        }
    }

    fn report(&self) {
        let owned = crate::lock(&self.epochs).iter().flatten().count();
        let restoring = crate::lock(&self.restoring).len();
        crate::telemetry::partitions(&self.pipeline, owned, restoring);
    }

    /// The restore points that moved since the worker last wrote them: per
    /// owned partition, the offset after the last of this host's records
    /// the brokers acknowledged (everything before it is in this store).
    pub fn checkpoints(&self, sink: &KafkaSink) -> Vec<(u32, RestorePoint)> {
        let epochs = self.epochs();
        let mut written = crate::lock(&self.written);
        let mut moved = Vec::new();
        for (p, epoch) in epochs.iter().enumerate() {
            let (Some(epoch), Ok(p)) = (epoch, u32::try_from(p)) else {
                continue;
            };
            let Some(delivered) = sink.delivered_offset(&self.topic, p) else {
                continue;
            };
            let point = written.entry(p).or_insert(RestorePoint {
                epoch: *epoch,
                next_offset: epoch + 1,
            });
            if point.epoch == *epoch && delivered > point.next_offset {
                point.next_offset = delivered;
                moved.push((p, *point));
            }
        }
        moved
    }
}

/// Schedules' marks and run records read from a changelog.
#[derive(Default)]
struct ScheduleChanges {
    marks: Vec<(String, crate::store::ScheduleMark)>,
    runs: Vec<(String, u64, String)>,
}

impl ScheduleChanges {
    fn len(&self) -> usize {
        self.marks.len() + self.runs.len()
    }

    fn append(&mut self, other: &mut ScheduleChanges) {
        self.marks.append(&mut other.marks);
        self.runs.append(&mut other.runs);
    }

    fn clear(&mut self) {
        self.marks.clear();
        self.runs.clear();
    }
}

/// What a restore needs besides the store: the changelog's reader and the
/// sink that writes fences.
pub struct Restorer {
    ownership: Arc<Ownership>,
    input: String,
    store: Store,
    sink: Arc<KafkaSink>,
    cluster: ClusterConfig,
    kafka: KafkaConfig,
    reader: Option<super::kafka::KafkaRewind>,
    queue: VecDeque<Queued>,
    job: Option<Job>,
    /// Told when a partition's states were restored, for SSE catch-ups.
    hub: Hub,
}

/// A partition waiting for its restore: since when, the group's offset.
struct Queued {
    partition: u32,
    since: Instant,
    group_offset: Option<u64>,
    not_before: Instant,
    /// This store holds a checkpoint of the partition.
    checkpoint: bool,
}

/// A restored partition, ready to be read from `start`.
pub struct Done {
    /// The partition.
    pub partition: u32,
    /// The input offset to read next.
    pub start: u64,
}

/// One partition's restore in progress.
struct Job {
    partition: u32,
    since: Instant,
    group_offset: Option<u64>,
    /// Offset of this host's fence: its new epoch, and where reading stops.
    fence: u64,
    low: u64,
    /// Reading from this store's checkpoint (`false`: from the start).
    gap: bool,
    local_epoch: Option<u64>,
    local_offset: Option<u64>,
    /// Records with a change number up to this are in the store already.
    have_seq: u64,
    /// The newest epoch of a fence read so far.
    epoch_now: u64,
    /// Records of the batch being read, not yet complete.
    batch: Vec<(String, StoredState)>,
    /// Whole batches' states not yet written, the latest per key, and
    /// their JSON's size.
    ready: HashMap<String, StoredState>,
    ready_bytes: usize,
    /// Whether the store holds nothing of the partition (a restore from the
    /// start, before its first write): no old state to replace.
    fresh: bool,
    /// Dead letters (`None`: resolved) of the batch being read, and of
    /// whole batches not yet written.
    dead_batch: Vec<(u64, Option<String>)>,
    dead_ready: Vec<(u64, Option<String>)>,
    /// The highest dead-letter number read.
    dead_counter: u64,
    /// Timers set, cancelled or fired and folded (cancels), of the batch
    /// being read and of whole batches not yet written.
    timer_batch: Vec<TimerOp>,
    timer_ready: Vec<TimerOp>,
    /// The partition's stream time: in the batch being read, and the
    /// latest of whole batches.
    stream_time_batch: Option<i64>,
    stream_time: Option<i64>,
    /// Schedules' marks and run records, of the batch being read and of
    /// whole batches not yet written.
    schedule_batch: ScheduleChanges,
    schedule_ready: ScheduleChanges,
    last_seq: u64,
    source_offset: Option<u64>,
    next: u64,
    read: u64,
    zombies: u64,
    last_progress: Instant,
}

/// A changelog record's restore headers.
struct Headers<'a> {
    fence: bool,
    seq: Option<u64>,
    epoch: Option<u64>,
    stamp: Option<u64>,
    version: &'a str,
    source_offset: Option<u64>,
    batch_end: bool,
    dead: Option<u64>,
    tombstone: bool,
    format: StateFormat,
    /// A timer's record: its name and key.
    timer: Option<(&'a [u8], &'a [u8])>,
    stream_time: Option<i64>,
    /// A schedule's mark: its name.
    schedule_mark: Option<&'a str>,
    /// A schedule's run record: its name and run number.
    schedule_run: Option<(&'a str, u64)>,
}

fn headers(r: &SourceRecord) -> Headers<'_> {
    let mut h = Headers {
        fence: false,
        seq: None,
        epoch: None,
        stamp: None,
        version: "",
        source_offset: None,
        batch_end: false,
        dead: None,
        tombstone: false,
        format: StateFormat::Json,
        timer: None,
        stream_time: None,
        schedule_mark: None,
        schedule_run: None,
    };
    let (mut timer_name, mut timer_key) = (None, None);
    let (mut run_of, mut run) = (None, None);
    let num = |v: &[u8]| std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
    for (name, value) in &r.headers {
        match name.as_str() {
            FENCE_HEADER => h.fence = true,
            SEQ_HEADER => h.seq = num(value),
            EPOCH_HEADER => h.epoch = num(value),
            STAMP_HEADER => h.stamp = num(value),
            VERSION_HEADER => h.version = std::str::from_utf8(value).unwrap_or(""),
            SOURCE_OFFSET_HEADER => h.source_offset = num(value),
            BATCH_END_HEADER => h.batch_end = true,
            DEAD_LETTER_HEADER => h.dead = num(value),
            TOMBSTONE_HEADER => h.tombstone = true,
            STATE_FORMAT_HEADER => {
                h.format = StateFormat::parse(value).unwrap_or(StateFormat::Json)
            }
            TIMER_HEADER => timer_name = Some(value.as_slice()),
            TIMER_KEY_HEADER => timer_key = Some(value.as_slice()),
            MARK_CHANGELOG_HEADER => h.schedule_mark = std::str::from_utf8(value).ok(),
            RUN_CHANGELOG_HEADER => run_of = std::str::from_utf8(value).ok(),
            RUN_HEADER => run = num(value),
            STREAM_TIME_HEADER => {
                h.stream_time = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
            }
            _ => {}
        }
    }
    h.timer = timer_name.zip(timer_key);
    h.schedule_run = run_of.zip(run);
    h
}

impl Restorer {
    /// A restorer for `ownership`'s pipeline reading `input`.
    pub fn new(
        ownership: Arc<Ownership>,
        input: &str,
        store: Store,
        sink: Arc<KafkaSink>,
        cluster: ClusterConfig,
        kafka: KafkaConfig,
        hub: Hub,
    ) -> Self {
        sink.watch(&ownership.topic);
        Restorer {
            ownership,
            input: input.to_owned(),
            store,
            sink,
            cluster,
            kafka,
            reader: None,
            queue: VecDeque::new(),
            job: None,
            hub,
        }
    }

    /// The shared ownership view.
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// Queues an assigned partition's restore (the group's committed offset
    /// for it, if any). A partition this store holds a checkpoint of goes
    /// first: it most likely catches up from there in a few records, and is
    /// read again while the others restore whole.
    pub fn assigned(&mut self, partition: u32, group_offset: Option<u64>) {
        self.revoked(partition);
        self.ownership.begin(partition);
        let now = Instant::now();
        let checkpoint = self
            .store
            .restore_point(&self.ownership.pipeline, partition)
            .ok()
            .flatten()
            .is_some();
        let at = if checkpoint {
            self.queue
                .iter()
                .position(|q| !q.checkpoint)
                .unwrap_or(self.queue.len())
        } else {
            self.queue.len()
        };
        self.queue.insert(
            at,
            Queued {
                partition,
                since: now,
                group_offset,
                not_before: now,
                checkpoint,
            },
        );
    }

    /// Drops a revoked partition's restore (what it wrote is whole batches;
    /// the next owner of the partition starts from the changelog anyway).
    pub fn revoked(&mut self, partition: u32) {
        self.queue.retain(|q| q.partition != partition);
        if self.job.as_ref().is_some_and(|j| j.partition == partition) {
            self.job = None;
        }
        self.ownership.release(partition);
    }

    /// Whether restores are waiting or running.
    pub fn busy(&self) -> bool {
        self.job.is_some() || !self.queue.is_empty()
    }

    /// Works on the restores for a slice of time; returns the partitions
    /// that are restored and may be read.
    pub fn step(&mut self) -> Vec<Done> {
        let until = Instant::now() + SLICE;
        let mut done = Vec::new();
        while Instant::now() < until {
            if self.job.is_none() {
                let now = Instant::now();
                let Some(at) = self.queue.iter().position(|q| q.not_before <= now) else {
                    break;
                };
                let Some(q) = self.queue.remove(at) else {
                    break;
                };
                match self.start(&q) {
                    Ok(job) => self.job = Some(job),
                    Err(e) => {
                        tracing::warn!(
                            pipeline = %self.ownership.pipeline, partition = q.partition, error = %e,
                            "cannot start the partition's restore; trying again"
                        );
                        self.queue.push_back(Queued {
                            not_before: Instant::now() + Duration::from_secs(1),
                            ..q
                        });
                        continue;
                    }
                }
            }
            match self.advance() {
                Ok(Some(d)) => done.push(d),
                Ok(None) => {}
                Err(e) => {
                    let Some(job) = self.job.take() else { break };
                    tracing::warn!(
                        pipeline = %self.ownership.pipeline, partition = job.partition, error = %e,
                        "partition restore failed; starting it over"
                    );
                    self.queue.push_back(Queued {
                        partition: job.partition,
                        since: job.since,
                        group_offset: job.group_offset,
                        checkpoint: false,
                        not_before: Instant::now() + Duration::from_secs(1),
                    });
                }
            }
        }
        done
    }

    fn reader(&mut self) -> Result<&mut super::kafka::KafkaRewind, SourceError> {
        if self.reader.is_none() {
            self.reader = Some(super::kafka::KafkaRewind::open(
                &self.kafka,
                &self.ownership.topic,
            )?);
        }
        self.reader
            .as_mut()
            .ok_or_else(|| SourceError::UnknownTopic {
                topic: self.ownership.topic.clone(),
            })
    }

    fn stall(&self) -> Duration {
        Duration::from_millis(self.cluster.restore_stall_timeout_ms.max(1))
    }

    fn store_error(&self, e: crate::store::StoreError) -> SourceError {
        SourceError::Store {
            topic: self.ownership.topic.clone(),
            source: e,
        }
    }

    /// Fences the partition and decides where its reading starts.
    fn start(&mut self, q: &Queued) -> Result<Job, SourceError> {
        let pipeline = self.ownership.pipeline.clone();
        let p = q.partition;
        let point = self
            .store
            .restore_point(&pipeline, p)
            .map_err(|e| self.store_error(e))?;
        let have_seq = self
            .store
            .last_seq(&pipeline, p)
            .map_err(|e| self.store_error(e))?;
        let local_offset = self
            .store
            .stored_offset(&pipeline, &self.input, p)
            .map_err(|e| self.store_error(e))?;
        let (low, high) = self.reader()?.watermarks(p)?;
        let fence = self.fence(p)?;
        let mut job = Job {
            partition: p,
            since: q.since,
            group_offset: q.group_offset,
            fence,
            low,
            gap: false,
            local_epoch: point.map(|pt| pt.epoch),
            local_offset,
            have_seq: 0,
            epoch_now: 0,
            batch: Vec::new(),
            ready: HashMap::new(),
            ready_bytes: 0,
            fresh: false,
            dead_batch: Vec::new(),
            dead_ready: Vec::new(),
            dead_counter: 0,
            timer_batch: Vec::new(),
            timer_ready: Vec::new(),
            stream_time_batch: None,
            stream_time: None,
            schedule_batch: ScheduleChanges::default(),
            schedule_ready: ScheduleChanges::default(),
            last_seq: 0,
            source_offset: None,
            next: low,
            read: 0,
            zombies: 0,
            last_progress: Instant::now(),
        };
        match point {
            Some(pt) if pt.next_offset >= low && pt.next_offset <= fence => {
                // This store was the partition's last owner, unless a fence
                // of another host turns up on the way.
                job.gap = true;
                job.have_seq = have_seq;
                job.last_seq = have_seq;
                job.epoch_now = pt.epoch;
                job.next = pt.next_offset;
                self.requeue_in_flight(p)?;
            }
            None if have_seq > 0 && high <= low => {
                // States from before cluster mode, and nothing in the
                // changelog: this store is the partition's history.
                job.have_seq = have_seq;
                self.publish_local(&mut job)?;
                job.gap = true;
                job.last_seq = have_seq;
                job.next = fence;
            }
            _ => self.empty_partition(&mut job)?,
        }
        tracing::info!(
            pipeline = %pipeline, partition = p, fence, from = job.next,
            mode = if job.gap { "checkpoint" } else { "start" },
            "restoring partition from its state changelog"
        );
        self.reader()?.assign(&[(p, job.next)])?;
        Ok(job)
    }

    /// Writes this host's fence to the changelog partition; its offset.
    fn fence(&self, partition: u32) -> Result<u64, SourceError> {
        let at_ms = crate::now_ms();
        let value = serde_json::json!({
            "fence": {
                "host": self.cluster.host_id,
                "advertise": self.cluster.advertise,
                "pipeline": self.ownership.pipeline,
                "partition": partition,
                "at_ms": at_ms,
            }
        });
        let record = ProduceRecord {
            timestamp_ms: None,
            partition: Some(partition),
            // One key per fence, so compaction keeps every fence.
            key: Some(
                format!(
                    "\u{0}eddy-fence/{}/{}",
                    self.cluster.host_id,
                    crate::pipeline::outputs::next_stamp(0)
                )
                .into_bytes(),
            ),
            headers: vec![(
                FENCE_HEADER.to_owned(),
                self.cluster.host_id.as_bytes().to_vec(),
            )],
            value: value.to_string().into_bytes(),
        };
        self.sink
            .write_confirmed(&self.ownership.topic, record, self.stall())
            .map_err(|e| SourceError::Broker {
                topic: self.ownership.topic.clone(),
                error: format!("fence of partition {partition}: {e}"),
            })
    }

    /// Drops what the store holds of the job's partition: it is restored
    /// from the changelog's start.
    fn empty_partition(&mut self, job: &mut Job) -> Result<(), SourceError> {
        let dropped = self
            .store
            .drop_partition(
                &self.ownership.pipeline,
                &self.input,
                (job.partition, self.ownership.partitions()),
            )
            .map_err(|e| self.store_error(e))?;
        if dropped > 0 {
            tracing::info!(
                pipeline = %self.ownership.pipeline, partition = job.partition, states = dropped,
                "this store's states of the partition may differ from its changelog; restoring it whole"
            );
        }
        job.gap = false;
        job.local_offset = None;
        job.have_seq = 0;
        job.last_seq = 0;
        job.epoch_now = 0;
        job.batch.clear();
        job.ready.clear();
        job.ready_bytes = 0;
        job.fresh = true;
        job.dead_batch.clear();
        job.dead_ready.clear();
        job.dead_counter = 0;
        job.timer_batch.clear();
        job.timer_ready.clear();
        job.stream_time_batch = None;
        job.stream_time = None;
        job.schedule_batch.clear();
        job.schedule_ready.clear();
        job.source_offset = None;
        job.next = job.low;
        Ok(())
    }

    /// This store was the partition's last owner: the timers it fired but
    /// did not fold are pending again (their records carry the old epoch
    /// and are not folded).
    fn requeue_in_flight(&self, partition: u32) -> Result<(), SourceError> {
        let n = self
            .store
            .requeue_in_flight(&self.ownership.pipeline, partition)
            .map_err(|e| self.store_error(e))?;
        if n > 0 {
            tracing::info!(
                pipeline = %self.ownership.pipeline, partition, timers = n,
                "timers fired before the partition was revoked, and not folded, fire again"
            );
        }
        Ok(())
    }

    /// Publishes the store's states (and timers) of a partition to its
    /// empty changelog, under the job's epoch.
    fn publish_local(&self, job: &mut Job) -> Result<(), SourceError> {
        let pipeline = &self.ownership.pipeline;
        let p = job.partition;
        let states = self
            .store
            .partition_states(pipeline, p)
            .map_err(|e| self.store_error(e))?;
        let timers = self
            .store
            .partition_timers(pipeline, p)
            .map_err(|e| self.store_error(e))?;
        let source_offset = job.local_offset.unwrap_or(0);
        let count = states.len();
        let mut records = Vec::with_capacity(count + timers.len());
        for (key, s) in states {
            let mut headers = vec![
                (
                    crate::pipeline::ID_HEADER.to_owned(),
                    format!("{pipeline}/{p}/changes/{}", s.seq).into_bytes(),
                ),
                (SEQ_HEADER.to_owned(), s.seq.to_string().into_bytes()),
                (
                    SOURCE_OFFSET_HEADER.to_owned(),
                    source_offset.to_string().into_bytes(),
                ),
                (EPOCH_HEADER.to_owned(), job.fence.to_string().into_bytes()),
                (STAMP_HEADER.to_owned(), s.stamp_us.to_string().into_bytes()),
                (VERSION_HEADER.to_owned(), s.plugin_version.into_bytes()),
            ];
            if s.state.format() != StateFormat::Json {
                headers.push((
                    STATE_FORMAT_HEADER.to_owned(),
                    s.state.format().as_str().as_bytes().to_vec(),
                ));
            }
            records.push(ProduceRecord {
                timestamp_ms: None,
                partition: Some(p),
                key: Some(key.into_bytes()),
                headers,
                value: s.state.bytes().to_vec(),
            });
        }
        let place = crate::pipeline::outputs::ChangelogPlace {
            partition: p,
            epoch: job.fence,
            seq: job.have_seq,
            source_offset,
        };
        let published_timers = timers.len();
        for (n, t) in timers.iter().enumerate() {
            records.push(crate::pipeline::timers::changelog_record(
                pipeline,
                place,
                (&t.key, &t.name),
                Some(t),
                n,
            ));
        }
        if let Some(last) = records.last_mut() {
            last.headers
                .push((BATCH_END_HEADER.to_owned(), b"1".to_vec()));
        }
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let chunk: Vec<(String, ProduceRecord)> = records
                .by_ref()
                .take(APPLY_BATCH)
                .map(|r| (self.ownership.topic.clone(), r))
                .collect();
            self.sink
                .commit(&mut crate::store::Commit::default(), chunk)
                .map_err(|e| SourceError::Broker {
                    topic: self.ownership.topic.clone(),
                    error: format!("publishing partition {p}'s states: {e}"),
                })?;
        }
        tracing::info!(
            pipeline = %pipeline, partition = p, states = count, timers = published_timers,
            "the state changelog was empty: this store's states of the partition are published to it"
        );
        Ok(())
    }

    /// Reads one poll of the running job; `Some` when it finished.
    fn advance(&mut self) -> Result<Option<Done>, SourceError> {
        let Some(mut job) = self.job.take() else {
            return Ok(None);
        };
        let p = job.partition;
        let limit = Limit {
            records: APPLY_BATCH,
            bytes: 16 << 20,
        };
        let polled = self.reader()?.poll(limit, Duration::from_millis(100))?;
        if polled.records.is_empty() {
            if job.next >= job.fence {
                return self.finish(job).map(Some);
            }
            if job.last_progress.elapsed() > self.stall() {
                let why = self
                    .reader
                    .as_ref()
                    .and_then(super::rewind::Rewind::last_error)
                    .unwrap_or_else(|| "no records".into());
                return Err(SourceError::Broker {
                    topic: self.ownership.topic.clone(),
                    error: format!(
                        "partition {p}: stuck at offset {} before the fence at {}: {why}",
                        job.next, job.fence
                    ),
                });
            }
            self.job = Some(job);
            return Ok(None);
        }
        job.last_progress = Instant::now();
        for r in polled.records {
            if r.partition != p || r.offset < job.next {
                continue;
            }
            job.next = r.offset + 1;
            if r.offset >= job.fence {
                job.next = job.fence;
                break;
            }
            job.read += 1;
            let h = headers(&r);
            if h.fence {
                job.epoch_now = job.epoch_now.max(r.offset);
                if job.gap && Some(r.offset) != job.local_epoch {
                    // Another host owned the partition since this store's
                    // checkpoint: what this store holds may differ.
                    self.empty_partition(&mut job)?;
                    self.reader()?.assign(&[(p, job.next)])?;
                    self.job = Some(job);
                    return Ok(None);
                }
                continue;
            }
            let (Some(seq), Some(epoch)) = (h.seq, h.epoch) else {
                tracing::warn!(
                    topic = %self.ownership.topic, partition = p, offset = r.offset,
                    "a record without eddy-seq or eddy-epoch in a state changelog; skipped"
                );
                continue;
            };
            if epoch < job.epoch_now {
                job.zombies += 1;
                continue;
            }
            if let Some((name, key)) = h.timer {
                // A timer of the partition: set, or cancelled or folded.
                let (key, name) = (String::from_utf8_lossy(key), String::from_utf8_lossy(name));
                if h.tombstone {
                    job.timer_batch.push(TimerOp::Cancel {
                        key: key.into_owned(),
                        name: name.into_owned(),
                        partition: p,
                    });
                } else {
                    match crate::pipeline::timers::from_changelog((&key, &name), p, &r.value) {
                        Ok(t) => job.timer_batch.push(TimerOp::Set(t)),
                        Err(e) => tracing::warn!(
                            topic = %self.ownership.topic, partition = p, offset = r.offset,
                            key = %key, timer = %name, error = %e,
                            "a timer record in a state changelog that cannot be read; skipped"
                        ),
                    }
                }
            } else if let Some(name) = h.schedule_mark {
                match crate::pipeline::schedules::mark_from_changelog(&r.value) {
                    Ok(mark) => job.schedule_batch.marks.push((name.to_owned(), mark)),
                    Err(e) => tracing::warn!(
                        topic = %self.ownership.topic, partition = p, offset = r.offset,
                        schedule = name, error = %e,
                        "a schedule's mark in a state changelog that cannot be read; skipped"
                    ),
                }
            } else if let Some((name, run)) = h.schedule_run {
                // A removed run (out of the kept ones) is pruned here too.
                if !h.tombstone {
                    job.schedule_batch.runs.push((
                        name.to_owned(),
                        run,
                        String::from_utf8_lossy(&r.value).into_owned(),
                    ));
                }
            } else if let Some(ms) = h.stream_time {
                job.stream_time_batch = Some(job.stream_time_batch.map_or(ms, |t| t.max(ms)));
            } else if let Some(id) = h.dead {
                // A dead letter of the partition, or its resolution.
                let letter = (!h.tombstone).then(|| String::from_utf8_lossy(&r.value).into_owned());
                job.dead_batch.push((id, letter));
                let n = id / u64::from(self.ownership.partitions().max(1));
                job.dead_counter = job.dead_counter.max(n);
            } else if seq > job.have_seq {
                let key =
                    String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
                job.batch.push((
                    key,
                    StoredState {
                        seq,
                        stamp_us: h.stamp.unwrap_or(0),
                        plugin_version: h.version.to_owned(),
                        state: match h.format {
                            StateFormat::MsgPack => State::trusted_msgpack(r.value.to_vec()),
                            StateFormat::Json => {
                                State::json(String::from_utf8_lossy(&r.value).into_owned())
                            }
                        },
                    },
                ));
            }
            if h.batch_end {
                for (key, state) in job.batch.drain(..) {
                    job.ready_bytes += state.state.len();
                    match job.ready.entry(key) {
                        std::collections::hash_map::Entry::Occupied(mut e) => {
                            if e.get().seq < state.seq {
                                e.insert(state);
                            }
                        }
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(state);
                        }
                    }
                }
                job.dead_ready.append(&mut job.dead_batch);
                job.timer_ready.append(&mut job.timer_batch);
                job.schedule_ready.append(&mut job.schedule_batch);
                if let Some(ms) = job.stream_time_batch.take() {
                    job.stream_time = Some(job.stream_time.map_or(ms, |t| t.max(ms)));
                }
                job.last_seq = job.last_seq.max(seq);
                if let Some(o) = h.source_offset {
                    job.source_offset = Some(job.source_offset.map_or(o, |s| s.max(o)));
                }
            }
        }
        if job.ready.len() + job.dead_ready.len() + job.timer_ready.len() + job.schedule_ready.len()
            >= HOLD_STATES
            || job.ready_bytes >= HOLD_BYTES
        {
            self.write(&mut job, None)?;
        }
        if job.next >= job.fence {
            return self.finish(job).map(Some);
        }
        self.job = Some(job);
        Ok(None)
    }

    fn write(&self, job: &mut Job, point: Option<RestorePoint>) -> Result<(), SourceError> {
        let start = job.source_offset.max(job.local_offset);
        self.store
            .apply_restored(&Restored {
                pipeline: self.ownership.pipeline.clone(),
                topic: self.input.clone(),
                partition: job.partition,
                states: std::mem::take(&mut job.ready).into_iter().collect(),
                fresh: job.fresh,
                last_seq: job.last_seq,
                next_offset: start,
                point,
                dead: std::mem::take(&mut job.dead_ready),
                dead_counter: job.dead_counter,
                timers: std::mem::take(&mut job.timer_ready),
                stream_time: job.stream_time,
                schedule_marks: std::mem::take(&mut job.schedule_ready.marks),
                schedule_runs: std::mem::take(&mut job.schedule_ready.runs),
            })
            .map_err(|e| self.store_error(e))?;
        job.ready_bytes = 0;
        job.fresh = false;
        Ok(())
    }

    fn finish(&mut self, mut job: Job) -> Result<Done, SourceError> {
        if !job.batch.is_empty() || !job.dead_batch.is_empty() || !job.timer_batch.is_empty() {
            tracing::warn!(
                pipeline = %self.ownership.pipeline, partition = job.partition,
                records = job.batch.len(),
                "the changelog ends in a batch its host did not finish delivering; it is read again from the input"
            );
        }
        let point = RestorePoint {
            epoch: job.fence,
            next_offset: job.fence + 1,
        };
        self.write(&mut job, Some(point))?;
        let restored = job.source_offset.max(job.local_offset);
        let start = restored.max(job.group_offset).unwrap_or(0);
        let took = job.since.elapsed();
        tracing::info!(
            pipeline = %self.ownership.pipeline, partition = job.partition,
            records = job.read, skipped_from_lost_owners = job.zombies,
            last_change = job.last_seq, start, epoch = job.fence,
            mode = if job.gap { "checkpoint" } else { "start" },
            ms = took.as_millis() as u64,
            "partition restored"
        );
        crate::telemetry::restore(&self.ownership.pipeline, job.read, took);
        self.hub
            .restored(&self.ownership.pipeline, job.partition, job.last_seq);
        self.ownership.finish(job.partition, job.fence);
        Ok(Done {
            partition: job.partition,
            start,
        })
    }
}
