//! The state store: the only module that touches fjall keyspaces.
//!
//! Keyspaces and their keys (`\0` separates names, numbers are big-endian so
//! byte order is numeric order):
//!
//! | keyspace  | key                                  | value                          |
//! |-----------|--------------------------------------|--------------------------------|
//! | `topics`  | topic                                | partitions (u32)               |
//! | `log`     | topic `\0` partition(u32) offset(u64) | encoded [`LogRecord`]          |
//! | `offsets` | pipeline `\0` topic `\0` partition    | next offset to read (u64)      |
//! | `state`   | pipeline `\0` key                    | seq(u64) + state JSON          |
//! | `latest`  | pipeline `\0` seq(u64)               | key (one entry per key: its last change) |
//! | `dead`    | pipeline `\0` id(u64)                | dead letter (JSON)             |
//! | `quarantine` | pipeline `\0` key                | open dead letters of the key (u64) |
//! | `parked`  | pipeline `\0` key `\0` seq(u64)      | encoded [`LogRecord`] + source |
//! | `meta`    | `seq\0` / `dead\0` / `park\0` pipeline | last used seq / id (u64)     |
//! | `outbox`  | seq(u64)                             | encoded [`OutboxRecord`] (Kafka sink) |
//! | `meta`    | `schema-registry`                    | the embedded schema registry (JSON) |
//!
//! fjall is synchronous: call it from blocking threads (pipeline workers,
//! `spawn_blocking`), never directly on the async runtime's workers.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};

use crate::config::Durability;

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

/// One record of the embedded log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Milliseconds since the Unix epoch when it was appended.
    pub timestamp_ms: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Value bytes.
    pub value: Vec<u8>,
}

impl LogRecord {
    /// Encodes to the log's binary layout.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.value.len());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        put_opt_bytes(&mut out, self.key.as_deref());
        out.extend_from_slice(&u32_len(self.headers.len()).to_be_bytes());
        for (name, value) in &self.headers {
            put_bytes(&mut out, name.as_bytes());
            put_bytes(&mut out, value);
        }
        out.extend_from_slice(&self.value);
        out
    }

    /// Decodes the log's binary layout.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] on a short or malformed record.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || StoreError::Corrupt {
            what: "log record".into(),
        };
        let mut r = Reader(bytes);
        let timestamp_ms = i64::from_be_bytes(r.array().ok_or_else(corrupt)?);
        let key = r.opt_bytes().ok_or_else(corrupt)?.map(<[u8]>::to_vec);
        let n = u32::from_be_bytes(r.array().ok_or_else(corrupt)?);
        let mut headers = Vec::with_capacity(n.min(64) as usize);
        for _ in 0..n {
            let name = r.bytes().ok_or_else(corrupt)?;
            let value = r.bytes().ok_or_else(corrupt)?;
            headers.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
        }
        Ok(LogRecord {
            timestamp_ms,
            key,
            headers,
            value: r.0.to_vec(),
        })
    }
}

/// A record waiting in the outbox for the Kafka producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Target topic.
    pub topic: String,
    /// Explicit partition, or chosen by the producer's partitioner.
    pub partition: Option<u32>,
    /// The record (its timestamp is the commit time).
    pub record: LogRecord,
}

impl OutboxRecord {
    /// Encodes to the outbox's binary layout.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.topic.len() + self.record.value.len());
        put_bytes(&mut out, self.topic.as_bytes());
        out.extend_from_slice(&self.partition.unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&self.record.encode());
        out
    }

    /// Decodes the outbox's binary layout.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] on a short or malformed entry.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || StoreError::Corrupt {
            what: "outbox record".into(),
        };
        let mut r = Reader(bytes);
        let topic =
            String::from_utf8(r.bytes().ok_or_else(corrupt)?.to_vec()).map_err(|_| corrupt())?;
        let partition = u32::from_be_bytes(r.array().ok_or_else(corrupt)?);
        Ok(OutboxRecord {
            topic,
            partition: (partition != u32::MAX).then_some(partition),
            record: LogRecord::decode(r.0)?,
        })
    }
}

fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32_len(b.len()).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => put_bytes(out, b),
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
}

/// A bounds-checked reader over stored bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_be_bytes(self.array()?);
        self.take(n as usize)
    }
    fn opt_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        let n = u32::from_be_bytes(self.array()?);
        if n == u32::MAX {
            Some(None)
        } else {
            self.take(n as usize).map(Some)
        }
    }
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

fn log_prefix(topic: &str, partition: u32) -> Vec<u8> {
    let mut k = join(&[topic.as_bytes(), b""]);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn log_key(topic: &str, partition: u32, offset: u64) -> Vec<u8> {
    let mut k = log_prefix(topic, partition);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

fn offsets_key(pipeline: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = join(&[pipeline.as_bytes(), topic.as_bytes(), b""]);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn seq_key(pipeline: &str, seq: u64) -> Vec<u8> {
    let mut k = join(&[pipeline.as_bytes(), b""]);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn u64_of(bytes: &[u8], what: &str) -> Result<u64> {
    Reader(bytes)
        .array()
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt { what: what.into() })
}

fn u64_suffix(key: &[u8], what: &str) -> Result<u64> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .map_or_else(
            || Err(StoreError::Corrupt { what: what.into() }),
            |tail| u64_of(tail, what),
        )
}

/// A key's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredState {
    /// The pipeline's change sequence number of the last change.
    pub seq: u64,
    /// Version (content hash) of the plugin that produced it.
    pub plugin_version: String,
    /// The state as JSON text.
    pub json: String,
}

/// One committed state change, as served to SSE clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Change sequence number within the pipeline (the SSE event id).
    pub seq: u64,
    /// The key.
    pub key: String,
    /// The new state (JSON text).
    pub state: String,
}

/// A record to append to the log within a commit.
#[derive(Debug, Clone)]
pub struct Append {
    /// Target topic (must exist).
    pub topic: String,
    /// Target partition.
    pub partition: u32,
    /// Offset assigned by the log.
    pub offset: u64,
    /// The record.
    pub record: LogRecord,
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
    /// The pipeline's last used change sequence number after this commit.
    pub last_seq: u64,
    /// Records appended to topics (emits, changelog).
    pub appends: Vec<Append>,
    /// Dead letters (JSON), with ids.
    pub dead_letters: Vec<(u64, String)>,
    /// Last used dead-letter id after this commit.
    pub last_dead_id: u64,
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
}

/// What a replay's switch-over changes besides the states (see
/// [`Store::swap_rebuilt`]): the pipeline's dead letters, parked events and
/// quarantine counts of the rebuilt range give way to the rebuild's.
#[derive(Debug, Default)]
pub struct Swap {
    /// The pipeline.
    pub pipeline: String,
    /// The namespace the rebuild wrote to.
    pub ns: String,
    /// Live dead letters to remove.
    pub remove_dead: Vec<u64>,
    /// Dead letters to add (JSON), with their new ids.
    pub add_dead: Vec<(u64, String)>,
    /// The pipeline's last dead-letter id afterwards.
    pub last_dead_id: u64,
    /// Live parked events to remove: (key, park seq).
    pub remove_parked: Vec<(String, u64)>,
    /// Parked events to add: (key, park seq, record).
    pub add_parked: Vec<(String, u64, Vec<u8>)>,
    /// The pipeline's last park number afterwards.
    pub last_park_seq: u64,
    /// New open-dead-letter counts per key (0 lifts the quarantine).
    pub quarantine: Vec<(String, u64)>,
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

/// Writes the store's journal back to disk in the background.
///
/// With `process` durability a commit only hands its bytes to the OS; they
/// reach the disk when the kernel gets to them, or when fjall switches to a
/// new journal — and then fjall fsyncs the whole old journal (hundreds of MB
/// under load) while holding the journal lock, stalling every commit for tens
/// of milliseconds. This thread fdatasyncs the active journal every interval
/// through a file handle of its own, without fjall's lock, so the data goes
/// out in small steps while commits go on, and a journal switch finds little
/// left to write. It stops when dropped.
pub struct Writeback {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Writeback {
    /// Starts writing back the journal of the store in `dir` every `every`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(dir: &Path, every: std::time::Duration) -> std::io::Result<Self> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, dir) = (stop.clone(), dir.to_path_buf());
        std::thread::Builder::new()
            .name("eddy-writeback".into())
            .spawn(move || {
                // The journal being synced: its number and an open handle.
                let mut open: Option<(u64, std::fs::File)> = None;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(every);
                    let Some(newest) = newest_journal(&dir) else {
                        continue;
                    };
                    if open.as_ref().is_none_or(|(n, _)| *n != newest) {
                        let path = dir.join(format!("{newest}.jnl"));
                        open = std::fs::File::open(&path).ok().map(|f| (newest, f));
                    }
                    if let Some((n, f)) = &open
                        && let Err(e) = f.sync_data()
                    {
                        tracing::debug!(journal = n, error = %e, "journal write-back failed");
                    }
                }
            })?;
        Ok(Writeback { stop })
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The number of the newest journal file (`{n}.jnl`) in a store directory.
fn newest_journal(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            name.to_str()?.strip_suffix(".jnl")?.parse::<u64>().ok()
        })
        .max()
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
    persist: PersistMode,
    /// Bumped whenever states change outside a pipeline's own commits (a
    /// replay's swap), so caches of states know to drop what they hold.
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
            persist: match durability {
                Durability::Process => PersistMode::Buffer,
                Durability::Power => PersistMode::SyncData,
            },
            epoch: std::sync::Arc::default(),
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

    /// Flushes everything to disk (used at shutdown).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn sync(&self) -> Result<()> {
        fj("persist", self.db.persist(PersistMode::SyncAll))
    }

    // ---- topics and the log -------------------------------------------------

    /// All topics with their partition counts.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn topics(&self) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        for item in self.topics.iter() {
            let (k, v) = fj("read topics", item.into_inner())?;
            let n =
                Reader(&v)
                    .array()
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt {
                        what: "topic".into(),
                    })?;
            out.push((String::from_utf8_lossy(&k).into_owned(), n));
        }
        Ok(out)
    }

    /// Records a topic (idempotent).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        let mut b = self.batch();
        b.insert(
            &self.topics,
            name.as_bytes(),
            partitions.to_be_bytes().to_vec(),
        );
        fj("create topic", b.commit())
    }

    /// The next offset to be appended to a partition (its high watermark).
    ///
    /// # Errors
    /// On an I/O error or a corrupt key.
    pub fn log_end(&self, topic: &str, partition: u32) -> Result<u64> {
        match self.log.prefix(log_prefix(topic, partition)).next_back() {
            None => Ok(0),
            Some(item) => {
                let k = fj("read log", item.key())?;
                Ok(u64_suffix(&k, "log key")? + 1)
            }
        }
    }

    /// Appends records (offsets already assigned by the caller) atomically.
    ///
    /// # Errors
    /// On an I/O error; nothing is written then.
    pub fn append(&self, records: &[Append]) -> Result<()> {
        let mut b = self.batch();
        for a in records {
            b.insert(
                &self.log,
                log_key(&a.topic, a.partition, a.offset),
                a.record.encode(),
            );
        }
        fj("append", b.commit())
    }

    /// Reads up to `max` records of a partition from offset `from` to `end`
    /// (exclusive), in offset order, stopping early once the stored records
    /// read come to `max_bytes` bytes (at least one record).
    ///
    /// # Errors
    /// On an I/O error or a corrupt record.
    pub fn read_log(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        end: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, LogRecord)>> {
        if from >= end || max == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(max.min((end - from) as usize).min(4096));
        let mut bytes = 0;
        let range = log_key(topic, partition, from)..log_key(topic, partition, end);
        for item in self.log.range(range).take(max) {
            let (k, v) = fj("read log", item.into_inner())?;
            out.push((u64_suffix(&k, "log key")?, LogRecord::decode(&v)?));
            bytes += v.len();
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    // ---- pipelines ----------------------------------------------------------

    /// The next offset a pipeline reads from a partition (0 if never read).
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn offset(&self, pipeline: &str, topic: &str, partition: u32) -> Result<u64> {
        match fj(
            "read offset",
            self.offsets.get(offsets_key(pipeline, topic, partition)),
        )? {
            None => Ok(0),
            Some(v) => u64_of(&v, "offset"),
        }
    }

    /// The next offset a pipeline reads from a partition, if it ever
    /// committed one.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn stored_offset(
        &self,
        pipeline: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>> {
        fj(
            "read offset",
            self.offsets.get(offsets_key(pipeline, topic, partition)),
        )?
        .map(|v| u64_of(&v, "offset"))
        .transpose()
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

    /// The last change sequence number used by a pipeline.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn last_seq(&self, pipeline: &str) -> Result<u64> {
        self.meta_u64("seq", pipeline)
    }

    /// The last dead-letter id used by a pipeline.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn last_dead_id(&self, pipeline: &str) -> Result<u64> {
        self.meta_u64("dead", pipeline)
    }

    /// A key's state.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn state(&self, pipeline: &str, key: &str) -> Result<Option<StoredState>> {
        let Some(v) = fj(
            "read state",
            self.state.get(join(&[pipeline.as_bytes(), key.as_bytes()])),
        )?
        else {
            return Ok(None);
        };
        let corrupt = || StoreError::Corrupt {
            what: format!("state of {key:?}"),
        };
        let mut r = Reader(&v);
        let seq = r.array().map(u64::from_be_bytes).ok_or_else(corrupt)?;
        let version = r.bytes().ok_or_else(corrupt)?;
        Ok(Some(StoredState {
            seq,
            plugin_version: String::from_utf8_lossy(version).into_owned(),
            json: String::from_utf8_lossy(r.0).into_owned(),
        }))
    }

    /// The `limit` most recently changed keys' states, most recent first.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn latest(&self, pipeline: &str, limit: usize) -> Result<Vec<(String, StoredState)>> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.latest.prefix(join(&[pipeline.as_bytes(), b""])).rev() {
            if out.len() >= limit {
                break;
            }
            let v = fj("read latest", item.value())?;
            let key = String::from_utf8_lossy(&v).into_owned();
            if let Some(s) = self.state(pipeline, &key)? {
                out.push((key, s));
            }
        }
        Ok(out)
    }

    /// The keys whose last change has a number in `after + 1 ..= until`,
    /// oldest first, at most `max`, each with its state: the changes of that
    /// range compacted to each key's latest (a key changed again after
    /// `until` is not among them).
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn latest_between(
        &self,
        pipeline: &str,
        after: u64,
        until: u64,
        max: usize,
    ) -> Result<Vec<Change>> {
        let mut out = Vec::new();
        if after >= until {
            return Ok(out);
        }
        let range = seq_key(pipeline, after.saturating_add(1))..=seq_key(pipeline, until);
        for item in self.latest.range(range).take(max) {
            let (k, key) = fj("read latest", item.into_inner())?;
            let seq = u64_suffix(&k, "latest key")?;
            let key = String::from_utf8_lossy(&key).into_owned();
            // The state moved on since the index was read: its newer change
            // comes later.
            if let Some(st) = self.state(pipeline, &key)?.filter(|st| st.seq == seq) {
                out.push(Change {
                    seq,
                    key,
                    state: st.json,
                });
            }
        }
        Ok(out)
    }

    /// Dead letters of a pipeline with an id above `after`, oldest first.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn dead_letters(
        &self,
        pipeline: &str,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, String)>> {
        let from = seq_key(pipeline, after.saturating_add(1));
        let to = seq_key(pipeline, u64::MAX);
        let mut out = Vec::new();
        for item in self.dead.range(from..to).take(max) {
            let (k, v) = fj("read dead letters", item.into_inner())?;
            out.push((
                u64_suffix(&k, "dead letter key")?,
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        Ok(out)
    }

    /// One dead letter.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn dead_letter(&self, pipeline: &str, id: u64) -> Result<Option<String>> {
        Ok(
            fj("read dead letter", self.dead.get(seq_key(pipeline, id)))?
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
        )
    }

    /// The last park sequence number used by a pipeline.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn last_park_seq(&self, pipeline: &str) -> Result<u64> {
        self.meta_u64("park", pipeline)
    }

    /// Open dead letters of a quarantined key (0 when not quarantined).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn quarantined(&self, pipeline: &str, key: &str) -> Result<u64> {
        match fj(
            "read quarantine",
            self.quarantine
                .get(join(&[pipeline.as_bytes(), key.as_bytes()])),
        )? {
            None => Ok(0),
            Some(v) => u64_of(&v, "quarantine"),
        }
    }

    /// Parked events of a key, oldest first: (park seq, stored bytes).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn parked(&self, pipeline: &str, key: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self
            .parked
            .prefix(join(&[pipeline.as_bytes(), key.as_bytes(), b""]))
        {
            let (k, v) = fj("read parked", item.into_inner())?;
            out.push((u64_suffix(&k, "parked key")?, v.to_vec()));
        }
        Ok(out)
    }

    /// The first offset of a partition whose record was appended at or
    /// after `timestamp_ms` (append times only grow within a partition).
    ///
    /// # Errors
    /// On an I/O error or a corrupt record.
    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        end: u64,
        timestamp_ms: i64,
    ) -> Result<u64> {
        let (mut lo, mut hi) = (0u64, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self
                .read_log(topic, partition, mid, mid + 1, 1, usize::MAX)?
                .first()
                .map(|(_, r)| r.timestamp_ms)
                .unwrap_or(i64::MAX);
            if at < timestamp_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Every parked event of a pipeline: (key, park seq, stored bytes), by key.
    ///
    /// # Errors
    /// On an I/O error or a corrupt key.
    pub fn parked_all(&self, pipeline: &str) -> Result<Vec<(String, u64, Vec<u8>)>> {
        let prefix = join(&[pipeline.as_bytes(), b""]);
        let mut out = Vec::new();
        for item in self.parked.prefix(&prefix) {
            let (k, v) = fj("read parked", item.into_inner())?;
            let corrupt = || StoreError::Corrupt {
                what: "parked key".into(),
            };
            // pipeline \0 key \0 seq(8)
            let rest = k.get(prefix.len()..).ok_or_else(corrupt)?;
            let key = rest
                .len()
                .checked_sub(9)
                .and_then(|at| rest.get(..at))
                .ok_or_else(corrupt)?;
            out.push((
                String::from_utf8_lossy(key).into_owned(),
                u64_suffix(&k, "parked key")?,
                v.to_vec(),
            ));
        }
        Ok(out)
    }

    /// Every quarantined key of a pipeline with its open dead letters.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn quarantined_keys(&self, pipeline: &str) -> Result<Vec<(String, u64)>> {
        let prefix = join(&[pipeline.as_bytes(), b""]);
        let mut out = Vec::new();
        for item in self.quarantine.prefix(&prefix) {
            let (k, v) = fj("read quarantine", item.into_inner())?;
            let key = k.get(prefix.len()..).unwrap_or_default();
            out.push((
                String::from_utf8_lossy(key).into_owned(),
                u64_of(&v, "quarantine")?,
            ));
        }
        Ok(out)
    }

    /// Deletes everything a namespace holds: states, the latest index, dead
    /// letters, quarantined keys, parked events and its numbers.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn clear_namespace(&self, ns: &str) -> Result<()> {
        let prefix = join(&[ns.as_bytes(), b""]);
        let mut b = self.batch();
        for ks in [
            &self.state,
            &self.latest,
            &self.dead,
            &self.quarantine,
            &self.parked,
        ] {
            for item in ks.prefix(&prefix) {
                b.remove(ks, fj("clear", item.key())?);
            }
        }
        for kind in [&b"seq"[..], b"dead", b"park"] {
            b.remove(&self.meta, join(&[kind, ns.as_bytes()]));
        }
        fj("clear", b.commit())
    }

    /// Replaces a pipeline's states, and the dead letters, parked events
    /// and quarantine counts `swap` names, with those rebuilt under
    /// `swap.ns`, in one atomic write: the rebuilt keys take fresh change
    /// numbers after the pipeline's last in their rebuilt order; the
    /// namespace is emptied. Returns the pipeline's new last change number.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry; nothing changes then.
    pub fn swap_rebuilt(&self, swap: &Swap) -> Result<u64> {
        let (pipeline, ns) = (swap.pipeline.as_str(), swap.ns.as_str());
        let p = pipeline.as_bytes();
        let live = join(&[p, b""]);
        let rebuilt = join(&[ns.as_bytes(), b""]);
        let mut b = self.batch();
        // A key is written once per batch: a remove and an insert of the same
        // key in one batch would race, so only keys the rebuild lacks are removed.
        let mut keys = Vec::new();
        for item in self.latest.prefix(&rebuilt) {
            let (k, key) = fj("swap", item.into_inner())?;
            b.remove(&self.latest, k);
            keys.push(String::from_utf8_lossy(&key).into_owned());
        }
        let kept: std::collections::HashSet<Vec<u8>> =
            keys.iter().map(|k| join(&[p, k.as_bytes()])).collect();
        for item in self.state.prefix(&live) {
            let k = fj("swap", item.key())?;
            if !kept.contains(k.as_ref()) {
                b.remove(&self.state, k);
            }
        }
        for item in self.latest.prefix(&live) {
            b.remove(&self.latest, fj("swap", item.key())?);
        }
        let mut seq = self.last_seq(pipeline)?;
        for key in keys {
            let Some(st) = self.state(ns, &key)? else {
                continue;
            };
            seq += 1;
            let mut v = Vec::with_capacity(12 + st.plugin_version.len() + st.json.len());
            v.extend_from_slice(&seq.to_be_bytes());
            put_bytes(&mut v, st.plugin_version.as_bytes());
            v.extend_from_slice(st.json.as_bytes());
            b.insert(&self.state, join(&[p, key.as_bytes()]), v);
            b.insert(
                &self.latest,
                seq_key(pipeline, seq),
                key.as_bytes().to_vec(),
            );
        }
        b.insert(&self.meta, join(&[b"seq", p]), seq.to_be_bytes().to_vec());
        for id in &swap.remove_dead {
            b.remove(&self.dead, seq_key(pipeline, *id));
        }
        for (id, json) in &swap.add_dead {
            b.insert(&self.dead, seq_key(pipeline, *id), json.as_bytes().to_vec());
        }
        b.insert(
            &self.meta,
            join(&[b"dead", p]),
            swap.last_dead_id.to_be_bytes().to_vec(),
        );
        let parked_key = |key: &str, seq: u64| {
            let mut k = join(&[p, key.as_bytes(), b""]);
            k.extend_from_slice(&seq.to_be_bytes());
            k
        };
        for (key, seq) in &swap.remove_parked {
            b.remove(&self.parked, parked_key(key, *seq));
        }
        for (key, seq, record) in &swap.add_parked {
            b.insert(&self.parked, parked_key(key, *seq), record.clone());
        }
        b.insert(
            &self.meta,
            join(&[b"park", p]),
            swap.last_park_seq.to_be_bytes().to_vec(),
        );
        for (key, open) in &swap.quarantine {
            let k = join(&[p, key.as_bytes()]);
            if *open == 0 {
                b.remove(&self.quarantine, k);
            } else {
                b.insert(&self.quarantine, k, open.to_be_bytes().to_vec());
            }
        }
        // The namespace, emptied (its latest entries are removed above).
        for ks in [&self.state, &self.dead, &self.quarantine, &self.parked] {
            for item in ks.prefix(&rebuilt) {
                b.remove(ks, fj("swap", item.key())?);
            }
        }
        for kind in [&b"seq"[..], b"dead", b"park"] {
            b.remove(&self.meta, join(&[kind, ns.as_bytes()]));
        }
        fj("swap", b.commit())?;
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(seq)
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
        let p = c.pipeline.as_bytes();
        let mut b = self.batch();
        let version_len = u32_len(c.plugin_version.len()).to_be_bytes();
        for (change, previous_seq) in &c.states {
            // seq + version + state, copied once into the value.
            let value = fjall::Slice::from_reader(
                &mut std::io::Read::chain(
                    std::io::Read::chain(
                        std::io::Read::chain(&change.seq.to_be_bytes()[..], &version_len[..]),
                        c.plugin_version.as_bytes(),
                    ),
                    change.state.as_bytes(),
                ),
                12 + c.plugin_version.len() + change.state.len(),
            )
            .map_err(|e| StoreError::Fjall {
                op: "commit",
                source: e.into(),
            })?;
            b.insert(&self.state, join(&[p, change.key.as_bytes()]), value);
            if let Some(old) = previous_seq {
                b.remove(&self.latest, seq_key(&c.pipeline, *old));
            }
            b.insert(
                &self.latest,
                seq_key(&c.pipeline, change.seq),
                change.key.as_bytes(),
            );
        }
        if !c.states.is_empty() {
            b.insert(
                &self.meta,
                join(&[b"seq", p]),
                c.last_seq.to_be_bytes().to_vec(),
            );
        }
        for a in &c.appends {
            b.insert(
                &self.log,
                log_key(&a.topic, a.partition, a.offset),
                a.record.encode(),
            );
        }
        for (id, json) in &c.dead_letters {
            b.insert(
                &self.dead,
                seq_key(&c.pipeline, *id),
                json.as_bytes().to_vec(),
            );
        }
        if !c.dead_letters.is_empty() {
            b.insert(
                &self.meta,
                join(&[b"dead", p]),
                c.last_dead_id.to_be_bytes().to_vec(),
            );
        }
        for id in &c.remove_dead {
            b.remove(&self.dead, seq_key(&c.pipeline, *id));
        }
        for (key, open) in &c.quarantine {
            let k = join(&[p, key.as_bytes()]);
            if *open == 0 {
                b.remove(&self.quarantine, k);
            } else {
                b.insert(&self.quarantine, k, open.to_be_bytes().to_vec());
            }
        }
        for (key, seq, record) in &c.park {
            let mut k = join(&[p, key.as_bytes(), b""]);
            k.extend_from_slice(&seq.to_be_bytes());
            b.insert(&self.parked, k, record.clone());
        }
        if !c.park.is_empty() {
            b.insert(
                &self.meta,
                join(&[b"park", p]),
                c.last_park_seq.to_be_bytes().to_vec(),
            );
        }
        for (key, seq) in &c.unpark {
            let mut k = join(&[p, key.as_bytes(), b""]);
            k.extend_from_slice(&seq.to_be_bytes());
            b.remove(&self.parked, k);
        }
        for (seq, record) in &c.outbox {
            b.insert(&self.outbox, seq.to_be_bytes().to_vec(), record.encode());
        }
        for (topic, partition, next) in &c.offsets {
            b.insert(
                &self.offsets,
                offsets_key(&c.pipeline, topic, *partition),
                next.to_be_bytes().to_vec(),
            );
        }
        fj("commit", b.commit())
    }
}

impl Store {
    // ---- the embedded schema registry --------------------------------------

    /// The embedded schema registry's document, if one was saved.
    ///
    /// # Errors
    /// On an I/O error or a document that is not UTF-8.
    pub fn schema_registry(&self) -> Result<Option<String>> {
        fj("read schema registry", self.meta.get(b"schema-registry"))?
            .map(|v| {
                String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt {
                    what: "schema registry".into(),
                })
            })
            .transpose()
    }

    /// Replaces the embedded schema registry's document (durably: the
    /// registry acknowledges a change only after this returns).
    ///
    /// # Errors
    /// On an I/O error; the previous document stays then.
    pub fn save_schema_registry(&self, json: &str) -> Result<()> {
        let mut b = self.db.batch().durability(Some(PersistMode::SyncData));
        b.insert(
            &self.meta,
            b"schema-registry".to_vec(),
            json.as_bytes().to_vec(),
        );
        fj("save schema registry", b.commit())
    }

    // ---- the outbox (Kafka sink) -------------------------------------------

    /// The highest outbox sequence number in use (0 when empty).
    ///
    /// # Errors
    /// On an I/O error or a corrupt key.
    pub fn outbox_last(&self) -> Result<u64> {
        match self.outbox.last_key_value() {
            None => Ok(0),
            Some(kv) => u64_of(&fj("read outbox", kv.key())?, "outbox key"),
        }
    }

    /// Up to `max` outbox entries with a sequence number above `after`, in order.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn outbox_after(&self, after: u64, max: usize) -> Result<Vec<(u64, OutboxRecord)>> {
        let mut out = Vec::new();
        let from = after.saturating_add(1).to_be_bytes();
        for item in self.outbox.range(from.as_slice()..).take(max) {
            let (k, v) = fj("read outbox", item.into_inner())?;
            out.push((u64_of(&k, "outbox key")?, OutboxRecord::decode(&v)?));
        }
        Ok(out)
    }

    /// Removes delivered outbox entries.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn outbox_remove(&self, seqs: &[u64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut b = self.batch();
        for s in seqs {
            b.remove(&self.outbox, s.to_be_bytes().to_vec());
        }
        fj("outbox remove", b.commit())
    }

    /// Entries waiting in the outbox (exact; counts keys).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn outbox_len(&self) -> Result<usize> {
        fj("outbox len", self.outbox.len())
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
        let mut last_change = std::collections::BTreeMap::new();
        for item in self.meta.prefix(join(&[b"seq", b""])) {
            let (k, v) = fj("read meta", item.into_inner())?;
            let pipeline = k.get(4..).unwrap_or_default();
            last_change.insert(
                String::from_utf8_lossy(pipeline).into_owned(),
                u64_of(&v, "sequence")?,
            );
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

fn split_at_zero(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b == 0)?;
    Some((bytes.get(..at)?, bytes.get(at + 1..)?))
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
    /// Every pipeline's last change number (its changelog's length).
    pub last_change: std::collections::BTreeMap<String, u64>,
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
    fn log_record_round_trips_and_short_input_is_an_error() -> Result<(), Box<dyn std::error::Error>>
    {
        let r = LogRecord {
            timestamp_ms: 42,
            key: Some(b"k".to_vec()),
            headers: vec![("h".into(), b"v".to_vec())],
            value: b"{\"a\":1}".to_vec(),
        };
        let bytes = r.encode();
        assert_eq!(LogRecord::decode(&bytes)?, r);
        for cut in 0..bytes.len() - 7 {
            let short = bytes.get(..cut).ok_or("cut")?;
            assert!(
                LogRecord::decode(short).is_err() || cut >= bytes.len() - 7,
                "cut at {cut}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_newest_journal_is_the_highest_number() -> Result<(), Box<dyn std::error::Error>> {
        let names = tempfile::tempdir()?;
        assert_eq!(newest_journal(names.path()), None);
        for name in ["0.jnl", "2.jnl", "10.jnl", "11.tmp", "x.jnl"] {
            std::fs::write(names.path().join(name), b"")?;
        }
        assert_eq!(newest_journal(names.path()), Some(10));
        let dir = tempfile::tempdir()?;
        // A store written with write-back running reopens with everything.
        {
            let s = Store::open(dir.path(), Durability::Process)?;
            let _wb = Writeback::start(dir.path(), std::time::Duration::from_millis(1))?;
            s.create_topic("t", 1)?;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            Store::open(dir.path(), Durability::Process)?.topics()?,
            vec![("t".to_owned(), 1)]
        );
        Ok(())
    }

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
                        seq: 1,
                        key: "a".into(),
                        state: "{}".into(),
                    },
                    None,
                )],
                last_seq: 1,
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
        assert_eq!(s.last_seq("p")?, 1);
        assert_eq!(s.state("p", "a")?.map(|x| x.json), Some("{}".into()));
        assert_eq!(s.log_end("t", 0)?, 1);
        assert_eq!(s.topics()?, vec![("t".to_string(), 2)]);
        assert_eq!(s.latest_between("p", 0, 10, 10)?.len(), 1);
        Ok(())
    }

    #[test]
    fn read_log_stops_at_its_byte_limit_but_returns_at_least_one()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(dir.path(), Durability::Process)?;
        s.create_topic("t", 1)?;
        let appends: Vec<Append> = (0..10)
            .map(|offset| Append {
                topic: "t".into(),
                partition: 0,
                offset,
                record: LogRecord {
                    timestamp_ms: 0,
                    key: None,
                    headers: vec![],
                    value: vec![b'x'; 1000],
                },
            })
            .collect();
        s.append(&appends)?;
        let offsets = |max, bytes| -> Result<Vec<u64>, StoreError> {
            Ok(s.read_log("t", 0, 0, 10, max, bytes)?
                .into_iter()
                .map(|(o, _)| o)
                .collect())
        };
        assert_eq!(offsets(100, usize::MAX)?.len(), 10);
        assert_eq!(offsets(4, usize::MAX)?, [0, 1, 2, 3]);
        // Each stored record is a little over 1,000 bytes: three reach 3,000.
        assert_eq!(offsets(100, 3_000)?, [0, 1, 2]);
        assert_eq!(offsets(100, 1)?, [0]);
        Ok(())
    }

    #[test]
    fn latest_between_compacts_a_range_of_changes_to_each_keys_last()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(dir.path(), Durability::Process)?;
        let change = |seq: u64, key: &str| Change {
            seq,
            key: key.into(),
            state: format!("{{\"at\":{seq}}}"),
        };
        let commit = |states: Vec<(Change, Option<u64>)>, last_seq| Commit {
            pipeline: "p".into(),
            states,
            last_seq,
            plugin_version: "v1".into(),
            ..Commit::default()
        };
        s.commit(&commit(
            vec![(change(1, "a"), None), (change(2, "b"), None)],
            2,
        ))?;
        s.commit(&commit(
            vec![(change(3, "a"), Some(1)), (change(4, "c"), None)],
            4,
        ))?;
        s.commit(&commit(vec![(change(5, "b"), Some(2))], 5))?;
        let got = |after, until, max| -> Result<Vec<(u64, String, String)>, StoreError> {
            Ok(s.latest_between("p", after, until, max)?
                .into_iter()
                .map(|c| (c.seq, c.key, c.state))
                .collect())
        };
        // a changed at 1 and 3, b at 2 and 5: each once, at its last change.
        assert_eq!(
            got(0, 5, 10)?,
            [
                (3, "a".into(), "{\"at\":3}".into()),
                (4, "c".into(), "{\"at\":4}".into()),
                (5, "b".into(), "{\"at\":5}".into())
            ]
        );
        // b's last change is after 4: not in 0..=4.
        assert_eq!(
            got(0, 4, 10)?.iter().map(|c| c.0).collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(
            got(3, 5, 10)?.iter().map(|c| c.0).collect::<Vec<_>>(),
            [4, 5]
        );
        assert_eq!(got(0, 5, 1)?.len(), 1);
        assert!(got(5, 5, 10)?.is_empty());
        assert_eq!(
            s.state("p", "a")?.map(|st| st.plugin_version),
            Some("v1".into())
        );
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
