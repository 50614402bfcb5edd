//! Dead letters: events that could not be decoded, keyed or processed, kept
//! with everything needed to understand and replay them, and their
//! resolution — replayed (through the pipeline's replay topic, so the event
//! runs again through the same stages and commit) or deleted.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::replay::Tracker;
use super::{PipelineLock, SOURCE_HEADER, quarantine};
use crate::config::{OnDeadLetter, PipelineConfig};
use crate::sink::{ProduceError, ProduceRecord};
use crate::source::SourceRecord;
use crate::source::embedded::EmbeddedLog;
use crate::store::{Commit, StoreError};

/// The header a replayed event carries: the dead letter it came from.
pub const REPLAY_HEADER: &str = "eddy-replay-of";

/// Where in the pipeline an event failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The value did not decode.
    Decode,
    /// No key could be found.
    Route,
    /// A handler failed on it.
    Handle,
    /// The aggregator failed on it.
    Aggregate,
}

impl Stage {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Route => "route",
            Stage::Handle => "handle",
            Stage::Aggregate => "aggregate",
        }
    }
}

/// One dead letter, as stored (JSON, with its id) and served.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Pipeline.
    pub pipeline: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: u32,
    /// Source offset.
    pub offset: u64,
    /// Produce time of the record.
    pub timestamp_ms: i64,
    /// Stage that failed.
    pub stage: Stage,
    /// The event's key, when one was found.
    pub key: Option<String>,
    /// Plugin that failed, if any.
    pub plugin: Option<String>,
    /// Its version (content hash).
    pub plugin_version: Option<String>,
    /// Error class (`decode`, `key`, `timeout`, `trap`, `invalid`...).
    pub error_class: String,
    /// Error message.
    pub error: String,
    /// The original record key, base64.
    pub record_key_base64: Option<String>,
    /// The original headers (values base64).
    pub headers: Vec<(String, String)>,
    /// The original value bytes, base64.
    pub value_base64: String,
    /// Calls made before giving up (1 = no retry).
    pub attempts: u32,
    /// Delays slept before each retry, in milliseconds.
    pub retry_delays_ms: Vec<u64>,
    /// When it was dead-lettered.
    pub dead_lettered_at_ms: i64,
}

/// Where an event first came from: `topic/partition/offset` of the record
/// as first read from the pipeline's input, also when it ran again through
/// the replay topic (a replayed dead letter, a released parked event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

impl Origin {
    /// The origin of a record with these headers read at this position:
    /// its first `eddy-source` header when it has one (the first is the
    /// oldest), else the position itself.
    pub fn of(headers: &[(String, Vec<u8>)], topic: &str, partition: u32, offset: u64) -> Origin {
        headers
            .iter()
            .find(|(n, _)| n == super::SOURCE_HEADER)
            .and_then(|(_, v)| Origin::parse(std::str::from_utf8(v).ok()?))
            .unwrap_or_else(|| Origin {
                topic: topic.to_owned(),
                partition,
                offset,
            })
    }

    /// Reads `topic/partition/offset` (the topic may hold no `/`).
    pub fn parse(text: &str) -> Option<Origin> {
        let (rest, offset) = text.rsplit_once('/')?;
        let (topic, partition) = rest.rsplit_once('/')?;
        Some(Origin {
            topic: topic.to_owned(),
            partition: partition.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

impl DeadLetter {
    /// The failed event's `traceparent`, if it carried a valid one.
    pub fn trace(&self) -> Option<Vec<u8>> {
        self.headers
            .iter()
            .rev()
            .filter(|(n, _)| n.eq_ignore_ascii_case(crate::trace::HEADER))
            .find_map(|(_, v)| unbase64(v))
            .filter(|v| crate::trace::Parent::parse(v).is_some())
    }

    /// A dead letter for `record`.
    pub fn new(
        pipeline: &str,
        record: &SourceRecord,
        stage: Stage,
        error_class: &str,
        error: String,
    ) -> Self {
        DeadLetter {
            pipeline: pipeline.to_owned(),
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            stage,
            key: None,
            plugin: None,
            plugin_version: None,
            error_class: error_class.to_owned(),
            error,
            record_key_base64: record.key.as_deref().map(base64),
            headers: record
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), base64(v)))
                .collect(),
            value_base64: base64(&record.value),
            attempts: 1,
            retry_delays_ms: Vec::new(),
            dead_lettered_at_ms: crate::now_ms(),
        }
    }

    /// Names the plugin that failed.
    #[must_use]
    pub fn plugin(mut self, name: &str, version: &str) -> Self {
        self.plugin = Some(name.to_owned());
        self.plugin_version = Some(version.to_owned());
        self
    }

    /// Records the retries made.
    #[must_use]
    pub fn retries(mut self, delays_ms: Vec<u64>) -> Self {
        self.attempts = u32::try_from(delays_ms.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        self.retry_delays_ms = delays_ms;
        self
    }

    /// Records the event's key.
    #[must_use]
    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }

    /// Where its event first came from (see [`Origin`]).
    pub fn origin(&self) -> Origin {
        let headers: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .filter(|(n, _)| n == super::SOURCE_HEADER)
            .filter_map(|(n, v)| Some((n.clone(), unbase64(v)?)))
            .collect();
        Origin::of(&headers, &self.topic, self.partition, self.offset)
    }

    /// Reads a stored dead letter.
    ///
    /// # Errors
    /// When the JSON is not a dead letter.
    pub fn from_json(json: &str) -> serde_json::Result<Self> {
        serde_json::from_str(json)
    }

    /// As stored and served: JSON with its id.
    pub fn to_json(&self, id: u64) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("id".into(), id.into());
        }
        v.to_string()
    }
}

/// How a pipeline numbers its dead letters: one sequence on one host; in
/// cluster mode one per input partition, the id `n × partitions +
/// partition`, so an id says which partition — and so which host — holds
/// its letter, and ids stay unique when partitions move between hosts.
#[derive(Debug, Clone)]
pub enum DeadIds {
    /// The last id used.
    Sequential(u64),
    /// The last number used per partition.
    ByPartition(Vec<u64>),
}

impl DeadIds {
    /// The pipeline's numbers as stored: per partition when `partitions`
    /// is given (cluster mode).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn load(
        store: &crate::store::Store,
        pipeline: &str,
        partitions: Option<u32>,
    ) -> Result<Self, StoreError> {
        Ok(match partitions {
            None => DeadIds::Sequential(store.last_dead_id(pipeline)?),
            Some(n) => DeadIds::ByPartition(store.dead_counters(pipeline, n)?),
        })
    }

    /// The id of a new dead letter of `partition`.
    pub fn next(&mut self, partition: u32) -> u64 {
        match self {
            DeadIds::Sequential(last) => {
                *last += 1;
                *last
            }
            DeadIds::ByPartition(counters) => {
                let n = u64::try_from(counters.len()).unwrap_or(u64::MAX).max(1);
                let p = u64::from(partition).min(n - 1);
                let Some(c) = usize::try_from(p).ok().and_then(|i| counters.get_mut(i)) else {
                    return 0;
                };
                *c += 1;
                c.saturating_mul(n).saturating_add(p)
            }
        }
    }

    /// Puts the numbers now used into `commit` (for `touched` partitions).
    pub fn record(&self, commit: &mut Commit, touched: &[u32]) {
        match self {
            DeadIds::Sequential(last) => commit.last_dead_id = *last,
            DeadIds::ByPartition(counters) => {
                commit.last_dead_ids = touched
                    .iter()
                    .filter_map(|p| Some((*p, *counters.get(*p as usize)?)))
                    .collect();
            }
        }
    }
}

/// Why dead letters could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No such dead letter.
    #[error("pipeline {pipeline:?} has no dead letter {id}")]
    Missing {
        /// The pipeline.
        pipeline: String,
        /// The id asked for.
        id: u64,
    },
    /// A replay is rebuilding the pipeline: it replaces the dead letters of
    /// its range when it switches over, so resolving one now could apply
    /// its event twice.
    #[error("a replay of pipeline {0:?} is running; resolve its dead letters once it is done")]
    ReplayRunning(String),
    /// Cluster mode: another host owns (or this one is restoring) the
    /// partition the dead letter belongs to.
    #[error(
        "dead letter {id} of pipeline {pipeline:?} belongs to partition {partition}, which this host does not own now"
    )]
    NotOwned {
        /// The pipeline.
        pipeline: String,
        /// Its id.
        id: u64,
        /// Its partition.
        partition: u32,
    },
    /// A stored dead letter does not read back.
    #[error("dead letter {id} is not readable: {reason}")]
    Unreadable {
        /// Its id.
        id: u64,
        /// Why.
        reason: String,
    },
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The commit failed; nothing changed.
    #[error(transparent)]
    Commit(#[from] ProduceError),
}

/// What resolving a pipeline's dead letters works on.
pub struct Resolving {
    /// The pipeline.
    pub config: PipelineConfig,
    /// The embedded log, which holds the replay topic (on every source).
    pub log: Arc<EmbeddedLog>,
    /// The pipeline's lock.
    pub lock: PipelineLock,
    /// Its replay's progress.
    pub replays: Tracker,
    /// Cluster mode: where resolutions go besides the store.
    pub shared: Option<Shared>,
}

/// Cluster mode: a dead letter belongs to its input partition. A replayed
/// event is produced back to the pipeline's input, on the partition its key
/// belongs to (the partition it came from when it has no key), so the
/// partition's owner runs it in order with the partition's other events,
/// wherever the partition moves meanwhile; and each resolution is written
/// to the partition's state changelog (a tombstone under the letter's key)
/// so a host that takes the partition over does not restore the letter.
pub struct Shared {
    /// The Kafka sink (its outbox delivers both).
    pub sink: Arc<crate::sink::kafka::KafkaSink>,
    /// The partitions this host owns, with their epochs.
    pub ownership: Arc<crate::source::restore::Ownership>,
}

/// Removes dead letters, replaying them first when `replay` (each with its
/// corrected value when one is given), lifting the quarantine of keys left
/// without open dead letters and releasing their parked events after them —
/// all in one atomic commit, under the pipeline's lock so no batch
/// interleaves. Returns how many were resolved; a missing id is an error
/// when it is the only one asked for, skipped otherwise.
///
/// # Errors
/// [`ResolveError`].
pub fn resolve(
    at: &Resolving,
    ids: Vec<(u64, Option<Vec<u8>>)>,
    replay: bool,
) -> Result<usize, ResolveError> {
    let p = &at.config;
    let _guard = crate::lock(&at.lock);
    if super::replay::running(&at.replays) {
        return Err(ResolveError::ReplayRunning(p.name.clone()));
    }
    let store = at.log.store();
    if let Some(shared) = &at.shared {
        return resolve_shared(at, shared, ids, replay);
    }
    let quarantine = p.on_dead_letter == OnDeadLetter::Quarantine;
    let topic = p.replay_topic();
    let mut commit = Commit {
        pipeline: p.name.clone(),
        ..Commit::default()
    };
    let mut records = Vec::new();
    let mut open: HashMap<String, u64> = HashMap::new();
    let single = ids.len() == 1;
    for (id, corrected) in ids {
        let Some(dl) = read_letter(store, &p.name, id, single)? else {
            continue;
        };
        if replay {
            records.push((topic.clone(), dl.replay_record(id, corrected)?));
        }
        commit.remove_dead.push(id);
        if let (true, Some(key), Stage::Aggregate) = (quarantine, dl.key.as_deref(), dl.stage) {
            let n = match open.get(key) {
                Some(n) => *n,
                None => store.quarantined(&p.name, key)?,
            };
            open.insert(key.to_owned(), n.saturating_sub(1));
        }
    }
    for (key, n) in open {
        if n == 0 {
            for (seq, record) in quarantine::release(store, &p.name, &key)? {
                records.push((topic.clone(), record));
                commit.unpark.push((key.clone(), seq));
            }
            tracing::info!(pipeline = %p.name, key = %key, "quarantine lifted");
        }
        commit.quarantine.push((key, n));
    }
    let n = commit.remove_dead.len();
    crate::sink::commit_embedded(&at.log, &mut commit, records)?;
    Ok(n)
}

/// A stored dead letter, read back; `None` when it is missing and was not
/// the only one asked for (then its absence is an error).
fn read_letter(
    store: &crate::store::Store,
    pipeline: &str,
    id: u64,
    single: bool,
) -> Result<Option<DeadLetter>, ResolveError> {
    let Some(json) = store.dead_letter(pipeline, id)? else {
        if single {
            return Err(ResolveError::Missing {
                pipeline: pipeline.to_owned(),
                id,
            });
        }
        return Ok(None);
    };
    DeadLetter::from_json(&json)
        .map(Some)
        .map_err(|e| ResolveError::Unreadable {
            id,
            reason: e.to_string(),
        })
}

/// [`resolve`] in cluster mode (no quarantine there): each letter's partition
/// must be owned here; replays go to the input, resolutions to the state
/// changelog, with the letters' removal, in one commit through the outbox.
fn resolve_shared(
    at: &Resolving,
    shared: &Shared,
    ids: Vec<(u64, Option<Vec<u8>>)>,
    replay: bool,
) -> Result<usize, ResolveError> {
    let p = &at.config;
    let store = at.log.store();
    let partitions = shared.ownership.partitions();
    let epochs = shared.ownership.epochs();
    let mut commit = Commit {
        pipeline: p.name.clone(),
        ..Commit::default()
    };
    let mut records = Vec::new();
    let single = ids.len() == 1;
    for (id, corrected) in ids {
        let partition = crate::store::dead_letter_partition(id, partitions);
        let Some(epoch) = epochs.get(partition as usize).copied().flatten() else {
            return Err(ResolveError::NotOwned {
                pipeline: p.name.clone(),
                id,
                partition,
            });
        };
        let Some(dl) = read_letter(store, &p.name, id, single)? else {
            continue;
        };
        if replay {
            let mut r = dl.replay_record(id, corrected)?;
            r.partition = Some(match dl.key.as_deref() {
                Some(key) => crate::source::partition_for_key(key.as_bytes(), partitions),
                None => dl.origin().partition,
            });
            records.push((p.topic.clone(), r));
        }
        let seq = store.last_seq(&p.name, partition)?;
        let offset = store.offset(&p.name, &p.topic, partition)?;
        let place = super::outputs::ChangelogPlace {
            partition,
            epoch,
            seq,
            source_offset: offset,
        };
        let mut tombstone = super::outputs::dead_letter_record(&p.name, place, id, None);
        tombstone
            .headers
            .push((super::BATCH_END_HEADER.to_owned(), b"1".to_vec()));
        records.push((shared.ownership.topic.clone(), tombstone));
        commit.remove_dead.push(id);
    }
    let n = commit.remove_dead.len();
    shared.sink.commit(&mut commit, records)?;
    Ok(n)
}

impl DeadLetter {
    /// Its event as a record for the replay topic: the original value (or
    /// `corrected`), key and headers, with where the event first came from
    /// and the letter's id.
    ///
    /// # Errors
    /// [`ResolveError::Unreadable`] when the stored bytes do not decode.
    fn replay_record(
        &self,
        id: u64,
        corrected: Option<Vec<u8>>,
    ) -> Result<ProduceRecord, ResolveError> {
        let value = match corrected {
            Some(v) => v,
            None => unbase64(&self.value_base64).ok_or(ResolveError::Unreadable {
                id,
                reason: "its value is not base64".into(),
            })?,
        };
        let key = self.record_key_base64.as_deref().and_then(unbase64);
        let mut headers: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .filter(|(n, _)| n != SOURCE_HEADER && n != REPLAY_HEADER)
            .filter_map(|(n, v)| Some((n.clone(), unbase64(v)?)))
            .collect();
        // Where the event first came from, also when it failed again after an
        // earlier replay.
        headers.push((
            SOURCE_HEADER.to_owned(),
            self.origin().to_string().into_bytes(),
        ));
        headers.push((REPLAY_HEADER.to_owned(), id.to_string().into_bytes()));
        Ok(ProduceRecord {
            timestamp_ms: None,
            partition: Some(0),
            key,
            headers,
            value,
        })
    }
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |i: u32| char::from(ALPHABET.get((i & 63) as usize).copied().unwrap_or(b'='));
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if chunk.len() > 1 { sym(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(n) } else { '=' });
    }
    out
}

/// Decodes standard base64 (padding optional); `None` on bad input.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let [_, a, b, c] = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&[a, b, c]),
            3 => out.extend_from_slice(&[a, b]),
            2 => out.push(a),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::{DeadIds, base64, unbase64};
    use crate::store::{Commit, Store, dead_letter_partition};

    #[test]
    fn cluster_ids_say_their_partition_and_never_repeat_a_single_hosts()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), crate::config::Durability::Process)?;
        // Before joining a group, the host gave out ids 1..=7.
        store.commit(&Commit {
            pipeline: "p".into(),
            dead_letters: (1..=7).map(|i| (i, "{}".to_owned())).collect(),
            last_dead_id: 7,
            ..Commit::default()
        })?;
        let mut ids = DeadIds::load(&store, "p", Some(3))?;
        let a = ids.next(2);
        let b = ids.next(0);
        let c = ids.next(2);
        assert!(a > 7 && b > 7 && c > a, "{a} {b} {c}");
        assert_eq!(dead_letter_partition(a, 3), 2);
        assert_eq!(dead_letter_partition(b, 3), 0);
        assert_eq!(dead_letter_partition(c, 3), 2);
        // What a commit records is read back as where numbering goes on.
        let mut commit = Commit::default();
        ids.record(&mut commit, &[0, 2]);
        assert_eq!(commit.last_dead_ids.len(), 2);
        commit.pipeline = "p".into();
        store.commit(&commit)?;
        let mut again = DeadIds::load(&store, "p", Some(3))?;
        let d = again.next(2);
        assert!(d > c && dead_letter_partition(d, 3) == 2, "{d}");
        // One host numbers in one sequence.
        let mut one = DeadIds::load(&store, "p", None)?;
        assert_eq!(one.next(2), 8);
        Ok(())
    }

    #[test]
    fn unbase64_inverts_base64() {
        for input in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "\u{0}\u{ff}bin",
        ] {
            assert_eq!(
                unbase64(&base64(input.as_bytes())).as_deref(),
                Some(input.as_bytes())
            );
        }
        assert_eq!(unbase64("!!!!"), None);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
