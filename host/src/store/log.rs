//! The embedded log's keyspaces: `topics` (name → partition count) and
//! `log` (topic, partition, offset → [`LogRecord`]), with the record's binary
//! layout.

use fjall::OwnedWriteBatch;

use super::codec::{Reader, join, put_bytes, put_opt_bytes, u32_len, u64_suffix};
use super::{Result, Store, StoreError, fj};

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

impl Store {
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

    /// Puts a commit's appended records into `b`.
    pub(super) fn write_appends(&self, b: &mut OwnedWriteBatch, appends: &[Append]) {
        for a in appends {
            b.insert(
                &self.log,
                log_key(&a.topic, a.partition, a.offset),
                a.record.encode(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;

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
}
