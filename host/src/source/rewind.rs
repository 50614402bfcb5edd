//! Reading a topic's history by position, outside any consumer group: what a
//! replay rebuilds state from and what a shadow run compares over.
//!
//! Each source provides a [`Rewind`]: the embedded log reads its store; Kafka
//! assigns a consumer of its own, in no group, to the topic's partitions, so
//! the pipeline's group and its offsets are never touched. On top of it,
//! [`RangeReader`] is the one reading routine: it starts every partition where
//! a [`From`] says, reads each up to its end — an offset (the live pipeline's
//! position, which a rebuild chases) or the end the partition has when the
//! reader gets there — and says afterwards, per partition, whether it read
//! the whole range. A range it could not read is an error, never a short
//! success.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::embedded::EmbeddedLog;
#[cfg(test)]
use super::embedded::EmbeddedRewind;
use super::{Limit, SourceError, SourceRecord};

/// Where a range starts, in every partition of the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "from", content = "at")]
pub enum From {
    /// The first record each partition still holds.
    Beginning,
    /// This offset in every partition (earlier records are left out; a
    /// partition whose log starts later starts there, one that ends before
    /// it contributes nothing).
    Offset(u64),
    /// Each partition's first record with a timestamp at or after this
    /// time (ms since the Unix epoch).
    Timestamp(i64),
}

/// Where a partition's range ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Before this offset (exclusive).
    Offset(u64),
    /// At the end the partition has when the reader reaches it.
    End,
}

/// What one [`Rewind::poll`] returned.
#[derive(Debug, Default)]
pub struct Polled {
    /// Records of the assigned partitions, in offset order per partition.
    pub records: Vec<SourceRecord>,
    /// Partitions whose reading reached the end of their log, each with
    /// that end: the next offset to be written. Below it the reader has
    /// handed out every record it will (a Kafka log's transaction markers
    /// and aborted records are read but never handed out).
    pub at_end: Vec<(u32, u64)>,
}

/// A topic read by position. Implemented by each source.
pub trait Rewind: Send {
    /// The topic's partition count.
    fn partitions(&self) -> u32;

    /// The first offset a partition holds and its end (the next offset to
    /// be written).
    ///
    /// # Errors
    /// When the log or the brokers cannot be read.
    fn watermarks(&mut self, partition: u32) -> Result<(u64, u64), SourceError>;

    /// The offset of a partition's first record with a timestamp at or
    /// after `timestamp_ms`; its end when there is none.
    ///
    /// # Errors
    /// When the log or the brokers cannot be read.
    fn offset_for_time(&mut self, partition: u32, timestamp_ms: i64) -> Result<u64, SourceError>;

    /// From now on, reads exactly these partitions from these offsets.
    ///
    /// # Errors
    /// When the brokers refuse the assignment.
    fn assign(&mut self, positions: &[(u32, u64)]) -> Result<(), SourceError>;

    /// What is ready of the assigned partitions, within `limit`, waiting at
    /// most `wait` when nothing is.
    ///
    /// # Errors
    /// When the log or the brokers fail.
    fn poll(&mut self, limit: Limit, wait: Duration) -> Result<Polled, SourceError>;

    /// What the client last reported going wrong (a broker down, say), to
    /// explain a read that stalled.
    fn last_error(&self) -> Option<String> {
        None
    }
}

/// Opens [`Rewind`]s on the pipelines' source.
#[derive(Clone)]
pub enum History {
    /// The embedded log.
    Embedded(Arc<EmbeddedLog>),
    /// A Kafka cluster.
    Kafka(Arc<crate::config::KafkaConfig>),
}

impl History {
    /// A reader of `topic`.
    ///
    /// # Errors
    /// An unknown topic, unreachable brokers or a bad client property.
    pub fn open(&self, topic: &str) -> Result<Box<dyn Rewind>, SourceError> {
        Ok(match self {
            History::Embedded(log) => {
                Box::new(super::embedded::EmbeddedRewind::open(log.clone(), topic)?)
            }
            History::Kafka(cfg) => Box::new(super::kafka::KafkaRewind::open(cfg, topic)?),
        })
    }

    /// How long a range read waits for records it expects before it fails.
    pub fn stall_timeout(&self) -> Duration {
        match self {
            // The log is local: records it has are there at once.
            History::Embedded(_) => Duration::from_secs(5),
            History::Kafka(cfg) => Duration::from_millis(cfg.replay_stall_timeout_ms.max(1)),
        }
    }
}

/// One partition's part of a range, as read so far.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    /// The partition.
    pub partition: u32,
    /// Where the range starts.
    pub start: u64,
    /// The next offset to read.
    pub next: u64,
    /// Where it ends (exclusive); `None`: at the end the partition has when read.
    pub until: Option<u64>,
    /// Whether the whole span is read.
    pub done: bool,
}

impl Span {
    /// Records between its start and its end (`None` for an open end).
    pub fn records(&self) -> Option<u64> {
        self.until.map(|u| u.saturating_sub(self.start))
    }
}

/// Why a range could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Records the range needs did not come.
    #[error("topic {topic:?}: no records for {waited_ms} ms while {missing} still missing{reason}")]
    Stalled {
        /// The topic.
        topic: String,
        /// How long it waited.
        waited_ms: u64,
        /// Which partitions lack what (`partition 2: read to 120 of 300`).
        missing: String,
        /// What the client reported, if anything (`; last client error: ...`).
        reason: String,
    },
}

/// The one routine that reads a range of a topic's history (see the module
/// documentation).
pub struct RangeReader {
    rewind: Box<dyn Rewind>,
    topic: String,
    /// One per partition, indexed by partition number.
    spans: Vec<Span>,
    /// The assignment no longer matches the spans still to read.
    reassign: bool,
    stall: Duration,
}

impl RangeReader {
    /// Positions a reader at `from` on every partition of the topic, each
    /// partition reading up to the end it has when the reader gets there
    /// (see [`RangeReader::chase`] for fixed ends).
    ///
    /// # Errors
    /// When the log or the brokers cannot be asked.
    pub fn open(
        mut rewind: Box<dyn Rewind>,
        topic: &str,
        from: From,
        stall: Duration,
    ) -> Result<Self, SourceError> {
        let mut spans = Vec::new();
        for partition in 0..rewind.partitions() {
            let (low, _) = rewind.watermarks(partition)?;
            let start = match from {
                From::Beginning => low,
                From::Offset(o) => o.max(low),
                From::Timestamp(t) => rewind.offset_for_time(partition, t)?.max(low),
            };
            spans.push(Span {
                partition,
                start,
                next: start,
                until: None,
                done: false,
            });
        }
        Ok(RangeReader {
            rewind,
            topic: topic.to_owned(),
            spans,
            reassign: true,
            stall,
        })
    }

    /// Sets each partition's end to `ends[partition]` (a partition not
    /// listed ends where it starts): a rebuild chasing the live pipeline
    /// moves the ends forward between rounds.
    pub fn chase(&mut self, ends: &[u64]) {
        for s in &mut self.spans {
            let until = ends.get(s.partition as usize).copied().unwrap_or(0);
            let until = until.max(s.next);
            let done = s.next >= until;
            if !done && s.done {
                self.reassign = true;
            }
            s.until = Some(until);
            s.done = done;
        }
    }

    /// The spans, one per partition.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Whether every span is read to its end.
    pub fn complete(&self) -> bool {
        self.spans.iter().all(|s| s.done)
    }

    /// The first offset and the end of every partition now.
    ///
    /// # Errors
    /// When the log or the brokers cannot be asked.
    pub fn watermarks(&mut self) -> Result<Vec<(u64, u64)>, SourceError> {
        (0..self.rewind.partitions())
            .map(|p| self.rewind.watermarks(p))
            .collect()
    }

    /// The next records of the range, within `limit`; empty once every span
    /// is read.
    ///
    /// # Errors
    /// [`RangeError::Stalled`] when records the range needs do not come
    /// within the stall timeout; a source failure.
    pub fn next_batch(&mut self, limit: Limit) -> Result<Vec<SourceRecord>, RangeError> {
        let mut progress = Instant::now();
        loop {
            if self.complete() {
                return Ok(Vec::new());
            }
            if self.reassign {
                let positions: Vec<(u32, u64)> = self
                    .spans
                    .iter()
                    .filter(|s| !s.done)
                    .map(|s| (s.partition, s.next))
                    .collect();
                self.rewind.assign(&positions)?;
                self.reassign = false;
            }
            let polled = self.rewind.poll(limit, Duration::from_millis(200))?;
            let mut out = Vec::with_capacity(polled.records.len());
            for r in polled.records {
                let Some(span) = self.spans.get_mut(r.partition as usize) else {
                    continue;
                };
                if span.done || r.offset < span.next {
                    continue;
                }
                if span.until.is_some_and(|u| r.offset >= u) {
                    // Read past the end: the partition is done; stop reading it.
                    span.done = true;
                    self.reassign = true;
                    continue;
                }
                span.next = r.offset + 1;
                if span.until.is_some_and(|u| span.next >= u) {
                    span.done = true;
                    self.reassign = true;
                }
                out.push(r);
            }
            for (p, end) in polled.at_end {
                let Some(span) = self.spans.get_mut(p as usize) else {
                    continue;
                };
                if span.done {
                    continue;
                }
                match span.until {
                    None => {}
                    // Only records the reader never hands out lie between
                    // the last one read and the span's end (a transaction's
                    // commit marker ends a partition, for one).
                    Some(u) if end >= u => span.next = span.next.max(u),
                    Some(_) => continue,
                }
                span.done = true;
                self.reassign = true;
                progress = Instant::now();
            }
            if !out.is_empty() {
                return Ok(out);
            }
            if progress.elapsed() >= self.stall {
                return Err(self.stalled(progress.elapsed()));
            }
        }
    }

    fn stalled(&self, waited: Duration) -> RangeError {
        let missing: Vec<String> = self
            .spans
            .iter()
            .filter(|s| !s.done)
            .map(|s| match s.until {
                Some(u) => format!("partition {}: read to {} of {u}", s.partition, s.next),
                None => format!(
                    "partition {}: read to {}, end not reached",
                    s.partition, s.next
                ),
            })
            .collect();
        RangeError::Stalled {
            topic: self.topic.clone(),
            waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            missing: missing.join(", "),
            reason: self
                .rewind
                .last_error()
                .map(|e| format!("; last client error: {e}"))
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Durability, EmbeddedConfig};
    use crate::store::{LogRecord, Store};

    fn log_with(
        partitions: u32,
        per_partition: u64,
    ) -> anyhow::Result<(tempfile::TempDir, Arc<EmbeddedLog>)> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), Durability::Process)?;
        let log = EmbeddedLog::open(store, &EmbeddedConfig::default())?;
        log.ensure_topic("t", Some(partitions))?;
        for p in 0..partitions {
            let records = (0..per_partition)
                .map(|i| {
                    (
                        Some(p),
                        LogRecord {
                            timestamp_ms: 0,
                            key: None,
                            headers: Vec::new(),
                            value: format!("{p}-{i}").into_bytes(),
                        },
                    )
                })
                .collect();
            log.append("t", records)?;
        }
        Ok((dir, log))
    }

    fn read_all(r: &mut RangeReader) -> anyhow::Result<Vec<(u32, u64)>> {
        let mut got = Vec::new();
        loop {
            let batch = r.next_batch(Limit {
                records: 7,
                bytes: usize::MAX,
            })?;
            if batch.is_empty() {
                return Ok(got);
            }
            got.extend(batch.iter().map(|r| (r.partition, r.offset)));
        }
    }

    #[test]
    fn a_range_reads_each_partition_once_up_to_its_end() -> anyhow::Result<()> {
        let (_dir, log) = log_with(3, 20)?;
        let open = |from| {
            RangeReader::open(
                Box::new(EmbeddedRewind::open(log.clone(), "t")?),
                "t",
                from,
                Duration::from_millis(200),
            )
        };
        // To the end.
        let mut r = open(From::Beginning)?;
        let mut got = read_all(&mut r)?;
        got.sort_unstable();
        assert_eq!(got.len(), 60);
        got.dedup();
        assert_eq!(got.len(), 60);
        assert!(r.complete());
        // Chasing fixed ends, moved forward between rounds.
        let mut r = open(From::Offset(5))?;
        r.chase(&[10, 5, 12]);
        let got = read_all(&mut r)?;
        assert_eq!(got.len(), 5 + 7);
        assert!(got.iter().all(|(p, o)| *o >= 5 && (*p != 1)));
        r.chase(&[20, 8, 12]);
        let more = read_all(&mut r)?;
        assert_eq!(more.len(), 10 + 3);
        assert!(more.iter().all(|(p, o)| match p {
            0 => *o >= 10,
            1 => (5..8).contains(o),
            _ => false,
        }));
        assert_eq!(
            r.spans()
                .iter()
                .map(|s| (s.start, s.next))
                .collect::<Vec<_>>(),
            [(5, 20), (5, 8), (5, 12)]
        );
        Ok(())
    }

    #[test]
    fn a_range_whose_records_never_come_fails_naming_what_is_missing() -> anyhow::Result<()> {
        let (_dir, log) = log_with(2, 3)?;
        let mut r = RangeReader::open(
            Box::new(EmbeddedRewind::open(log, "t")?),
            "t",
            From::Beginning,
            Duration::from_millis(300),
        )?;
        // The live position says 10, the log holds 3.
        r.chase(&[3, 10]);
        let err = loop {
            match r.next_batch(Limit {
                records: 100,
                bytes: usize::MAX,
            }) {
                Ok(b) if b.is_empty() => anyhow::bail!("a short range was taken as whole"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        let text = err.to_string();
        assert!(text.contains("partition 1: read to 3 of 10"), "{text}");
        assert!(!r.complete());
        Ok(())
    }

    #[test]
    fn ranges_start_by_offset_and_by_time() -> anyhow::Result<()> {
        let (_dir, log) = log_with(1, 4)?;
        let open = |from| -> anyhow::Result<u64> {
            let r = RangeReader::open(
                Box::new(EmbeddedRewind::open(log.clone(), "t")?),
                "t",
                from,
                Duration::from_millis(100),
            )?;
            Ok(r.spans().first().map_or(0, |s| s.start))
        };
        assert_eq!(open(From::Beginning)?, 0);
        assert_eq!(open(From::Offset(2))?, 2);
        // Past the end: the range starts there and holds nothing.
        assert_eq!(open(From::Offset(99))?, 99);
        assert_eq!(open(From::Timestamp(0))?, 0);
        assert_eq!(open(From::Timestamp(i64::MAX))?, 4);
        Ok(())
    }
}
