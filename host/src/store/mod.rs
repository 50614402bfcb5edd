//! The state store: the only module that touches fjall keyspaces. Each
//! file owns its keyspaces and the binary layout of what they hold; this
//! one opens them and writes a micro-batch's [`Commit`] in one atomic batch.
//!
//! Keyspaces and their keys (`\0` separates names, numbers are big-endian so
//! byte order is numeric order):
//!
//! | keyspace  | key                                  | value                          | owner |
//! |-----------|--------------------------------------|--------------------------------|-------|
//! | `topics`  | topic                                | partitions (u32)               | `log.rs` |
//! | `log`     | topic `\0` partition(u32) offset(u64) | encoded [`LogRecord`]        | `log.rs` |
//! | `offsets` | pipeline `\0` topic `\0` partition    | next offset to read (u64)      | `offsets.rs` |
//! | `state`   | pipeline `\0` partition(u32) key     | seq(u64) + stamp(u64) + plugin version + state JSON | `state.rs` |
//! | `latest`  | pipeline `\0` partition(u32) seq(u64) | stamp(u64) + key (one entry per key: its last change) | `state.rs` |
//! | `dead`    | pipeline `\0` id(u64)                | dead letter (JSON)             | `dead_letters.rs` |
//! | `quarantine` | pipeline `\0` key                | open dead letters of the key (u64) | `quarantine.rs` |
//! | `parked`  | pipeline `\0` key `\0` seq(u64)      | encoded [`LogRecord`] with its origin | `quarantine.rs` |
//! | `outbox`  | seq(u64)                             | encoded [`OutboxRecord`] (Kafka sink) | `outbox.rs` |
//! | `meta`    | `dead\0` / `park\0` pipeline        | last used id / park seq (u64)  | `dead_letters.rs`, `quarantine.rs` |
//! | `meta`    | `dead-partition\0` pipeline `\0` partition(u32) | cluster mode: the partition's last dead-letter number | `dead_letters.rs` |
//! | `meta`    | `seq\0` pipeline `\0` partition(u32) | the partition's last change number | `state.rs` |
//! | `meta`    | `restore\0` pipeline `\0` partition(u32) | owner epoch(u64) + changelog offset(u64) | `restore.rs` |
//! | `meta`    | `schema-registry`                    | the embedded schema registry (JSON) | `registry.rs` |
//! | `meta`    | `stream-time\0` pipeline `\0` partition(u32) | the partition's stream time (i64 ms) | `timers.rs` |
//! | `meta`    | `event-time\0` pipeline             | present once it set an event-time timer | `timers.rs` |
//! | `meta`    | `timer-gen\0` pipeline              | the timer generation: moved on by a replay's switch-over (u64) | `timers.rs` |
//! | `timers`  | pipeline `\0` `w` at partition key name / `e` partition at key name | a pending timer's payload (JSON) | `timers.rs` |
//! | `timers`  | pipeline `\0` `f` partition key name | cluster mode: a fired timer not folded yet (domain, instant, payload) | `timers.rs` |
//! | `timer_names` | pipeline `\0` key-length(u32) key name | where that timer sits in `timers` | `timers.rs` |
//! | `schedule_runs` | pipeline `\0` schedule `\0` run(u64) | the run's record (JSON) | `schedules.rs` |
//! | `meta`    | `schedule\0` pipeline `\0` schedule | interval origin, last instant, last run | `schedules.rs` |
//!
//! A replay writes the same keyspaces under the name `{pipeline}@replay`
//! (`rebuild.rs`). fjall is synchronous: call it from blocking threads
//! (pipeline workers, `spawn_blocking`), never directly on the async
//! runtime's workers.

mod codec;
mod control;
mod dead_letters;
mod format;
mod log;
mod migrate;
mod offsets;
mod outbox;
mod quarantine;
mod rebuild;
mod registry;
mod restore;
mod schedules;
mod space;
mod state;
mod timers;
mod writeback;

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};

use crate::config::Durability;
use codec::{join, split_at_zero, u64_of};
pub use dead_letters::dead_letter_partition;
pub use format::{FormatError, State, StateFormat};
pub use log::{Append, LogRecord};
pub use outbox::OutboxRecord;
pub use rebuild::Swap;
pub use restore::{RestorePoint, Restored};
pub use schedules::{RUNS_KEPT, ScheduleMark};
pub use space::LowSpace;
pub use state::{Change, StoredState};
pub use timers::{TimeDomain, Timer, TimerOp};
pub use writeback::Writeback;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// fjall reported an I/O or corruption error.
    #[error("store {op}: {source}")]
    Fjall {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: fjall::Error,
    },
    /// Stored bytes do not decode: the store is corrupt or from another version.
    #[error("store: corrupt {what}")]
    Corrupt {
        /// Which record.
        what: String,
    },
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn fj<T>(op: &'static str, r: fjall::Result<T>) -> Result<T> {
    r.map_err(|source| StoreError::Fjall { op, source })
}

/// Everything one micro-batch of a pipeline changes, written atomically.
#[derive(Debug, Default)]
pub struct Commit {
    /// The pipeline.
    pub pipeline: String,
    /// New states, in change order, with the sequence numbers they take.
    pub states: Vec<(Change, Option<u64>)>,
    /// Version of the plugin that produced `states`.
    pub plugin_version: String,
    /// The last change number of each partition whose states changed.
    pub last_seqs: Vec<(u32, u64)>,
    /// Records appended to topics (emits, changelog).
    pub appends: Vec<Append>,
    /// Dead letters (JSON), with ids.
    pub dead_letters: Vec<(u64, String)>,
    /// Last used dead-letter id after this commit.
    pub last_dead_id: u64,
    /// Cluster mode: instead, the last dead-letter number of each partition
    /// that got one.
    pub last_dead_ids: Vec<(u32, u64)>,
    /// Next offset to read per input (topic, partition).
    pub offsets: Vec<(String, u32, u64)>,
    /// Dead letters resolved (replayed or deleted).
    pub remove_dead: Vec<u64>,
    /// New open-dead-letter counts of quarantined keys (0 lifts the quarantine).
    pub quarantine: Vec<(String, u64)>,
    /// Events parked behind a quarantined key: (key, park seq, record).
    pub park: Vec<(String, u64, Vec<u8>)>,
    /// Parked events released: (key, park seq).
    pub unpark: Vec<(String, u64)>,
    /// Last used park sequence number after this commit (when `park` is not empty).
    pub last_park_seq: u64,
    /// Records for the Kafka producer, by outbox sequence number.
    pub outbox: Vec<(u64, OutboxRecord)>,
    /// Where the host now stands in partitions' state changelogs.
    pub restore_points: Vec<(u32, RestorePoint)>,
    /// Timers set and cancelled by the batch's folds, in order.
    pub timers: Vec<TimerOp>,
    /// Timers fired (removed; their records appended in the same write).
    pub timers_fired: Vec<Timer>,
    /// Cluster mode: `timers_fired` stay in flight until folded.
    pub timers_in_flight: bool,
    /// Cluster mode: fired timers folded by this batch, whose in-flight
    /// entries go: (partition, key, name).
    pub timers_landed: Vec<(u32, String, String)>,
    /// Partitions' new stream times.
    pub stream_times: Vec<(u32, i64)>,
    /// Marks the pipeline as using event time (its first event-time timer).
    pub uses_event_time: bool,
    /// Schedules' new marks.
    pub schedule_marks: Vec<(String, ScheduleMark)>,
    /// Schedule run records written or updated: (schedule, run, JSON).
    pub schedule_runs: Vec<(String, u64, String)>,
}

/// Largest memtable of a keyspace before fjall writes it out as a segment.
/// fjall's default is 64 MiB; flushing that much takes a core for ~50 ms on
/// a small machine, a pause the pipeline feels. Smaller memtables spread the
/// same work into shorter flushes.
const MEMTABLE_BYTES: u64 = 16 << 20;

/// fjall's flush and compaction threads: one core fewer than the machine
/// has (at least one, at most four, fjall's own cap), so background work
/// never takes every core from the pipelines. On two cores this measured a
/// few per cent more throughput and a shorter latency tail than fjall's
/// default of one thread per core.
fn background_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_sub(1)
        .clamp(1, 4)
}

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Database,
    topics: Keyspace,
    log: Keyspace,
    offsets: Keyspace,
    state: Keyspace,
    latest: Keyspace,
    dead: Keyspace,
    quarantine: Keyspace,
    parked: Keyspace,
    meta: Keyspace,
    outbox: Keyspace,
    timers: Keyspace,
    timer_names: Keyspace,
    schedule_runs: Keyspace,
    persist: PersistMode,
    /// Bumped whenever states change outside a pipeline's own commits (a
    /// replay's swap), so caches of states know to drop what they hold.
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The free disk space reserve (`[store] min_free_mb`).
    space: std::sync::Arc<space::Space>,
}

impl Store {
    /// Opens (or creates) the store in `path`.
    ///
    /// # Errors
    /// When the directory cannot be opened, is locked by another process or
    /// is corrupt.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        let db = fj(
            "open",
            Database::builder(path)
                .worker_threads(background_threads())
                .open(),
        )?;
        let ks = |name: &str| {
            fj(
                "open keyspace",
                db.keyspace(name, || {
                    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
                }),
            )
        };
        // Stores written before the SSE history moved to memory kept a copy
        // of every recent state here; nothing reads it any more.
        if db.keyspace_exists("changes") {
            let old = ks("changes")?;
            fj("drop keyspace changes", db.delete_keyspace(old))?;
        }
        Ok(Store {
            topics: ks("topics")?,
            log: ks("log")?,
            offsets: ks("offsets")?,
            state: ks("state")?,
            latest: ks("latest")?,
            dead: ks("dead")?,
            quarantine: ks("quarantine")?,
            parked: ks("parked")?,
            meta: ks("meta")?,
            outbox: ks("outbox")?,
            timers: ks("timers")?,
            timer_names: ks("timer_names")?,
            schedule_runs: ks("schedule_runs")?,
            persist: match durability {
                Durability::Process => PersistMode::Buffer,
                Durability::Power => PersistMode::SyncData,
            },
            epoch: std::sync::Arc::default(),
            space: std::sync::Arc::new(space::Space::new(path)),
            db,
        })
    }

    fn batch(&self) -> OwnedWriteBatch {
        self.db.batch().durability(Some(self.persist))
    }

    /// Disk space the store uses, in bytes (0 when it cannot be read).
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    /// Keeps this many bytes of the store's file system free: below, see
    /// [`Store::low_space`]. 0 turns the guard off.
    pub fn reserve_free_space(&self, bytes: u64) {
        self.space.set_min(bytes);
    }

    /// When the store's file system has less free space than the reserve:
    /// how much, for an error that says so. Input stops while it does.
    pub fn low_space(&self) -> Option<LowSpace> {
        self.space.low()
    }

    /// Bytes free on the store's file system, when it can be asked.
    pub fn free_bytes(&self) -> Option<u64> {
        self.space.free_now()
    }

    /// Flushes everything to disk (used at shutdown).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn sync(&self) -> Result<()> {
        fj("persist", self.db.persist(PersistMode::SyncAll))
    }

    fn meta_u64(&self, kind: &str, pipeline: &str) -> Result<u64> {
        match fj(
            "read meta",
            self.meta.get(join(&[kind.as_bytes(), pipeline.as_bytes()])),
        )? {
            None => Ok(0),
            Some(v) => u64_of(&v, "sequence"),
        }
    }

    /// Changes whenever states were changed outside a pipeline's commits
    /// (see [`Store::swap_rebuilt`]).
    #[must_use]
    pub fn state_epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Writes one micro-batch's results in one atomic write batch.
    ///
    /// # Errors
    /// On an I/O error; nothing is written then.
    pub fn commit(&self, c: &Commit) -> Result<()> {
        let p = c.pipeline.as_str();
        let mut b = self.batch();
        self.write_states(&mut b, p, &c.plugin_version, &c.states, &c.last_seqs)?;
        self.write_appends(&mut b, &c.appends);
        self.write_dead_letters(
            &mut b,
            p,
            &c.dead_letters,
            (c.last_dead_id, &c.last_dead_ids),
            &c.remove_dead,
        );
        self.write_quarantine(&mut b, p, &c.quarantine);
        self.write_parked(&mut b, p, &c.park, c.last_park_seq, &c.unpark);
        self.write_outbox(&mut b, &c.outbox);
        self.write_offsets(&mut b, p, &c.offsets);
        self.write_restore_points(&mut b, p, &c.restore_points);
        self.write_timers_landed(&mut b, p, &c.timers_landed);
        self.write_timers(&mut b, p, &c.timers, (&c.timers_fired, c.timers_in_flight))?;
        self.write_stream_times(&mut b, p, &c.stream_times, c.uses_event_time);
        self.write_schedules(&mut b, p, &c.schedule_marks, &c.schedule_runs);
        fj("commit", b.commit())
    }

    /// What the store holds: entries per keyspace, the outbox depth and every
    /// pipeline's next offsets. Counts walk the keys; meant for `eddy store
    /// stats` on a stopped host, not for a hot path.
    ///
    /// # Errors
    /// On an I/O error or a corrupt offset entry.
    pub fn stats(&self) -> Result<Stats> {
        let mut entries = std::collections::BTreeMap::new();
        for (name, ks) in [
            ("topics", &self.topics),
            ("log", &self.log),
            ("offsets", &self.offsets),
            ("state", &self.state),
            ("latest", &self.latest),
            ("dead", &self.dead),
            ("quarantine", &self.quarantine),
            ("parked", &self.parked),
            ("meta", &self.meta),
            ("outbox", &self.outbox),
            ("timers", &self.timers),
        ] {
            entries.insert(name, fj("count entries", ks.len())?);
        }
        let mut offsets = Vec::new();
        for item in self.offsets.iter() {
            let (k, v) = fj("read offsets", item.into_inner())?;
            let corrupt = || StoreError::Corrupt {
                what: format!("offset key ({} bytes)", k.len()),
            };
            let (pipeline, rest) = split_at_zero(&k).ok_or_else(corrupt)?;
            let (topic, partition) = split_at_zero(rest).ok_or_else(corrupt)?;
            let partition = <[u8; 4]>::try_from(partition).map_err(|_| corrupt())?;
            offsets.push(StoredOffset {
                pipeline: String::from_utf8_lossy(pipeline).into_owned(),
                topic: String::from_utf8_lossy(topic).into_owned(),
                partition: u32::from_be_bytes(partition),
                next_offset: u64_of(&v, "offset")?,
            });
        }
        let mut last_change: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<u32, u64>,
        > = std::collections::BTreeMap::new();
        for item in self.meta.prefix(join(&[b"seq", b""])) {
            let (k, v) = fj("read meta", item.into_inner())?;
            // seq \0 pipeline \0 partition(u32)
            let rest = k.get(4..).unwrap_or_default();
            let Some((pipeline, partition)) = split_at_zero(rest) else {
                continue;
            };
            let Ok(partition) = <[u8; 4]>::try_from(partition) else {
                continue;
            };
            last_change
                .entry(String::from_utf8_lossy(pipeline).into_owned())
                .or_default()
                .insert(u32::from_be_bytes(partition), u64_of(&v, "sequence")?);
        }
        Ok(Stats {
            disk_bytes: self.disk_bytes(),
            last_change,
            outbox: entries.get("outbox").copied().unwrap_or(0),
            entries,
            offsets,
        })
    }
}

/// A summary of a store (see [`Store::stats`]).
#[derive(Debug, serde::Serialize)]
pub struct Stats {
    /// Disk space used, in bytes.
    pub disk_bytes: u64,
    /// Records waiting in the outbox for the Kafka sink.
    pub outbox: usize,
    /// Entries per keyspace.
    pub entries: std::collections::BTreeMap<&'static str, usize>,
    /// Every pipeline's next offset per topic partition.
    pub offsets: Vec<StoredOffset>,
    /// Every pipeline's last change number per partition (the length of
    /// each changelog partition).
    pub last_change: std::collections::BTreeMap<String, std::collections::BTreeMap<u32, u64>>,
}

/// One pipeline's position in one partition.
#[derive(Debug, serde::Serialize)]
pub struct StoredOffset {
    /// Pipeline.
    pub pipeline: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The next offset the pipeline reads.
    pub next_offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_is_atomic_and_reopen_keeps_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let s = Store::open(dir.path(), Durability::Process)?;
            s.create_topic("t", 2)?;
            s.commit(&Commit {
                pipeline: "p".into(),
                states: vec![(
                    Change {
                        partition: 1,
                        seq: 1,
                        stamp_us: 5,
                        key: "a".into(),
                        state: State::json("{}".into()),
                        version: 0,
                    },
                    None,
                )],
                last_seqs: vec![(1, 1)],
                offsets: vec![("t".into(), 1, 7)],
                appends: vec![Append {
                    topic: "t".into(),
                    partition: 0,
                    offset: 0,
                    record: LogRecord {
                        timestamp_ms: 1,
                        key: None,
                        headers: vec![],
                        value: b"1".to_vec(),
                    },
                }],
                ..Commit::default()
            })?;
        }
        let s = Store::open(dir.path(), Durability::Process)?;
        assert_eq!(s.offset("p", "t", 1)?, 7);
        assert_eq!(s.offset("p", "t", 0)?, 0);
        assert_eq!(s.last_seqs("p", 2)?, [0, 1]);
        assert_eq!(
            s.state("p", 1, "a")?
                .map(|x| x.state.json_text().to_owned()),
            Some("{}".into())
        );
        assert_eq!(s.log_end("t", 0)?, 1);
        assert_eq!(s.topics()?, vec![("t".to_string(), 2)]);
        assert_eq!(s.latest_between("p", 1, 0, 10, 10)?.len(), 1);
        Ok(())
    }

    #[test]
    fn a_store_with_the_old_change_history_opens_without_it()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let db = Database::builder(dir.path()).open()?;
            let old = db.keyspace("changes", KeyspaceCreateOptions::default)?;
            old.insert(b"p\0x", b"old")?;
        }
        let s = Store::open(dir.path(), Durability::Process)?;
        assert!(!s.db.keyspace_exists("changes"));
        Ok(())
    }
}
