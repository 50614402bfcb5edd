//! Stage 1, source: where events come from.
//!
//! A [`Source`] hands the pipeline batches of [`SourceRecord`]s in offset
//! order per partition, starting from the offsets stored in the state store
//! with the state they produced. The embedded log is one implementation; a
//! Kafka consumer group is another, behind the same trait.

pub mod embedded;
pub mod kafka;
pub mod restore;
pub mod rewind;

use std::sync::Arc;
use std::time::Duration;

/// One record as read from a topic partition.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// Produce time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Value bytes, still encoded.
    pub value: Vec<u8>,
    /// Whether the value is null (a Kafka tombstone); `value` is empty then.
    pub tombstone: bool,
}

impl SourceRecord {
    /// Bytes of its key, headers and value (what a poll's byte limit counts).
    pub fn size(&self) -> usize {
        self.value.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }
}

/// Source failures.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The store under the embedded log failed.
    #[error("reading topic {topic}: {source}")]
    Store {
        /// Topic being read.
        topic: String,
        /// Cause.
        #[source]
        source: crate::store::StoreError,
    },
    /// The topic is not known.
    #[error("topic {topic:?} does not exist")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The Kafka client failed (unreachable brokers, a bad property, a
    /// missing topic).
    #[error(transparent)]
    Client(#[from] crate::kafka::ClientError),
    /// The broker reported an error while consuming.
    #[error("consuming {topic:?}: {error}")]
    Broker {
        /// Topic being consumed.
        topic: String,
        /// What the client reported.
        error: String,
    },
}

/// Whether each pipeline's source is ready (connected and, on Kafka,
/// assigned its partitions), with the reason when not. Shared with `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness(
    Arc<std::sync::Mutex<std::collections::BTreeMap<String, Option<String>>>>,
    Arc<Control>,
);

/// What the control API shares with the Kafka sources.
#[derive(Default)]
pub struct Control {
    /// Offsets each pipeline last committed to its group: (pipeline, topic, partition) -> next offset.
    pub committed: std::sync::Mutex<std::collections::BTreeMap<(String, String, u32), u64>>,
    /// Pipelines asked to leave and rejoin their group.
    pub rejoin: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Readiness {
    /// The control state shared with the sources.
    pub fn control(&self) -> &Control {
        &self.1
    }

    /// Marks a pipeline ready (`None`) or not, with why.
    pub fn set(&self, pipeline: &str, not_ready: Option<String>) {
        crate::lock(&self.0).insert(pipeline.to_owned(), not_ready);
    }

    /// Forgets a pipeline a config reload removed.
    pub fn remove(&self, pipeline: &str) {
        crate::lock(&self.0).remove(pipeline);
    }

    /// The pipelines that are not ready, with the reasons.
    pub fn not_ready(&self) -> Vec<(String, String)> {
        crate::lock(&self.0)
            .iter()
            .filter_map(|(p, r)| r.clone().map(|r| (p.clone(), r)))
            .collect()
    }
}

/// How much one poll may return: at most `records` records, and no more
/// records once their keys, headers and values reach `bytes` (a poll always
/// returns at least one record when one is ready, whatever its size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Most records.
    pub records: usize,
    /// Bytes after which no more records are added.
    pub bytes: usize,
}

impl Limit {
    /// Whether a poll holding `records` records of `bytes` bytes is full.
    pub fn reached(&self, records: usize, bytes: usize) -> bool {
        records >= self.records || bytes >= self.bytes
    }

    /// What is left of this limit after `records` records of `bytes` bytes.
    #[must_use]
    pub fn less(&self, records: usize, bytes: usize) -> Limit {
        Limit {
            records: self.records.saturating_sub(records),
            bytes: self.bytes.saturating_sub(bytes),
        }
    }
}

/// What a pipeline reads from.
pub trait Source: Send {
    /// Returns what is ready, within `limit`, waiting at most `wait` when
    /// nothing is. Records of one partition come in offset order, each
    /// exactly once unless the source is reset.
    ///
    /// # Errors
    /// When the underlying log or broker fails.
    fn poll(&mut self, limit: Limit, wait: Duration) -> Result<Vec<SourceRecord>, SourceError>;

    /// Tells the source that everything before these next offsets is
    /// committed with its state; `delivered_after` is the last outbox entry
    /// the batch needs delivered before its offsets are published (a Kafka
    /// source commits them to its group then).
    fn committed(&mut self, next_offsets: &[(String, u32, u64)], delivered_after: Option<u64>);

    /// Next offsets the source moved past without handing out a record,
    /// beyond what was last committed: a Kafka partition ends with a
    /// transaction's commit or abort marker (a control record, never handed
    /// out), and an aborted transaction's records are skipped. Asked only
    /// after a poll that handed out nothing, so everything handed out
    /// before is committed; the worker commits these offsets (with no
    /// state change), so the pipeline's lag reaches 0 and a restart does
    /// not read the markers again.
    fn passed(&mut self) -> Vec<(String, u32, u64)> {
        Vec::new()
    }

    /// Called instead of [`Source::poll`] while the pipeline is paused:
    /// hands nothing out for `wait`, and keeps what it must keep up (a
    /// Kafka consumer stays in its group, pauses its partitions, restores
    /// the ones it is given). The next `poll` reads on from where it was.
    ///
    /// # Errors
    /// When the underlying log or broker fails.
    fn idle(&mut self, wait: Duration) -> Result<(), SourceError> {
        std::thread::sleep(wait);
        Ok(())
    }
}

/// Kafka's murmur2 hash, as used by its default partitioner, so a key lands
/// on the same partition on the embedded log as on a Kafka cluster.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut h: u32 = SEED ^ len;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = c
            .iter()
            .rev()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if let Some(b) = rest.get(2) {
        h ^= u32::from(*b) << 16;
    }
    if let Some(b) = rest.get(1) {
        h ^= u32::from(*b) << 8;
    }
    if let Some(first) = rest.first() {
        h ^= u32::from(*first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a key.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions.max(1)
}

/// Reads several sources as one (a pipeline's timer topic, input topic and
/// replay topic): each poll takes what is ready from every source in turn,
/// so an earlier source's records come first in a batch and a later one
/// gets what room is left.
pub struct Chain {
    sources: Vec<Box<dyn Source>>,
    /// The source waited on when all are idle.
    waited: usize,
}

impl Chain {
    /// Chains `sources`; the first is the one waited on when all are idle.
    pub fn new(sources: Vec<Box<dyn Source>>) -> Self {
        Chain { sources, waited: 0 }
    }

    /// Waits on the source at `index` instead of the first.
    #[must_use]
    pub fn waiting_on(mut self, index: usize) -> Self {
        self.waited = index;
        self
    }
}

impl Source for Chain {
    fn poll(&mut self, limit: Limit, wait: Duration) -> Result<Vec<SourceRecord>, SourceError> {
        for round in 0..2 {
            let mut out: Vec<SourceRecord> = Vec::new();
            let mut bytes = 0;
            for s in &mut self.sources {
                if limit.reached(out.len(), bytes) {
                    break;
                }
                let got = s.poll(limit.less(out.len(), bytes), Duration::ZERO)?;
                bytes += got.iter().map(SourceRecord::size).sum::<usize>();
                out.extend(got);
            }
            if !out.is_empty() || round == 1 {
                return Ok(out);
            }
            if let Some(waited) = self.sources.get_mut(self.waited) {
                let got = waited.poll(limit, wait)?;
                if !got.is_empty() {
                    return Ok(got);
                }
            }
        }
        Ok(Vec::new())
    }

    fn committed(&mut self, next_offsets: &[(String, u32, u64)], delivered_after: Option<u64>) {
        for s in &mut self.sources {
            s.committed(next_offsets, delivered_after);
        }
    }

    fn passed(&mut self) -> Vec<(String, u32, u64)> {
        self.sources.iter_mut().flat_map(|s| s.passed()).collect()
    }

    fn idle(&mut self, wait: Duration) -> Result<(), SourceError> {
        // One source waits; the others only keep up.
        for (i, s) in self.sources.iter_mut().enumerate() {
            s.idle(if i == self.waited {
                wait
            } else {
                Duration::ZERO
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's own UtilsTest.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }
}
