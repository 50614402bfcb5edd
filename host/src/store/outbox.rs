//! The `outbox` keyspace (outbox number → [`OutboxRecord`]): records for
//! the Kafka producer, written in a pipeline's commit and removed once the
//! brokers acknowledged them.

use fjall::OwnedWriteBatch;

use super::codec::{Reader, put_bytes, u64_of};
use super::log::LogRecord;
use super::{Result, Store, StoreError, fj};

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

impl Store {
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

    /// Puts a commit's outbox records into `b`.
    pub(super) fn write_outbox(&self, b: &mut OwnedWriteBatch, records: &[(u64, OutboxRecord)]) {
        for (seq, record) in records {
            b.insert(&self.outbox, seq.to_be_bytes().to_vec(), record.encode());
        }
    }
}
