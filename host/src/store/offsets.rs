//! The `offsets` keyspace: each pipeline's next offset per input partition,
//! written in the same commit as the state it produced.

use fjall::OwnedWriteBatch;

use super::codec::{join, u64_of};
use super::{Result, Store, fj};

pub(super) fn offsets_key(pipeline: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = join(&[pipeline.as_bytes(), topic.as_bytes(), b""]);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

impl Store {
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

    /// Puts a commit's next offsets into `b`.
    pub(super) fn write_offsets(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        offsets: &[(String, u32, u64)],
    ) {
        for (topic, partition, next) in offsets {
            b.insert(
                &self.offsets,
                offsets_key(pipeline, topic, *partition),
                next.to_be_bytes().to_vec(),
            );
        }
    }
}
