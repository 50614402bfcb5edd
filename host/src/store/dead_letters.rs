//! The `dead` keyspace (pipeline, id → dead letter JSON), with the last id
//! used in `meta`: one per pipeline, or in cluster mode one per input
//! partition (a dead letter's id there is `n × partitions + partition`, so
//! the id says which partition, and so which host, holds it).

use fjall::OwnedWriteBatch;

use super::codec::{join, seq_key, u64_of, u64_suffix};
use super::{Result, Store, fj};

fn counter_key(pipeline: &str, partition: u32) -> Vec<u8> {
    let mut k = join(&[b"dead-partition", pipeline.as_bytes(), b""]);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The input partition a dead letter belongs to, in cluster mode (ids are
/// `n × partitions + partition`).
#[must_use]
pub fn dead_letter_partition(id: u64, partitions: u32) -> u32 {
    u32::try_from(id % u64::from(partitions.max(1))).unwrap_or(0)
}

impl Store {
    /// The last dead-letter id used by a pipeline.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn last_dead_id(&self, pipeline: &str) -> Result<u64> {
        self.meta_u64("dead", pipeline)
    }

    /// Cluster mode: per input partition, the last dead-letter number used
    /// (`n` of its ids `n × partitions + partition`). Each is at least
    /// what the pipeline's single counter implies, so ids a host gave out
    /// before it joined a group are never given again.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn dead_counters(&self, pipeline: &str, partitions: u32) -> Result<Vec<u64>> {
        let floor = self.last_dead_id(pipeline)? / u64::from(partitions.max(1));
        (0..partitions)
            .map(|p| Ok(self.dead_counter_of(pipeline, p)?.max(floor)))
            .collect()
    }

    /// The last dead-letter number stored for one partition (0: none).
    pub(super) fn dead_counter_of(&self, pipeline: &str, partition: u32) -> Result<u64> {
        match fj("read meta", self.meta.get(counter_key(pipeline, partition)))? {
            None => Ok(0),
            Some(v) => u64_of(&v, "dead-letter counter"),
        }
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

    /// Puts new dead letters (with ids) and the last id used (or, in
    /// cluster mode, the last number per partition) into `b`, and removes
    /// resolved ones.
    pub(super) fn write_dead_letters(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        add: &[(u64, String)],
        (last_id, counters): (u64, &[(u32, u64)]),
        remove: &[u64],
    ) {
        for (id, json) in add {
            b.insert(&self.dead, seq_key(pipeline, *id), json.as_bytes().to_vec());
        }
        if !add.is_empty() && counters.is_empty() {
            b.insert(
                &self.meta,
                join(&[b"dead", pipeline.as_bytes()]),
                last_id.to_be_bytes().to_vec(),
            );
        }
        self.write_dead_counters(b, pipeline, counters);
        for id in remove {
            b.remove(&self.dead, seq_key(pipeline, *id));
        }
    }

    pub(super) fn write_dead_counters(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        counters: &[(u32, u64)],
    ) {
        for (partition, n) in counters {
            b.insert(
                &self.meta,
                counter_key(pipeline, *partition),
                n.to_be_bytes().to_vec(),
            );
        }
    }

    /// Puts into `b` the removal of a partition's dead letters and counter.
    pub(super) fn drop_dead_letters(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        partition: u32,
        partitions: u32,
    ) -> Result<()> {
        for item in self.dead.prefix(join(&[pipeline.as_bytes(), b""])) {
            let k = fj("read dead letters", item.key())?;
            if dead_letter_partition(u64_suffix(&k, "dead letter key")?, partitions) == partition {
                b.remove(&self.dead, k);
            }
        }
        b.remove(&self.meta, counter_key(pipeline, partition));
        Ok(())
    }
}
