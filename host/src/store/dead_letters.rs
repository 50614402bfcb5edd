//! The `dead` keyspace (pipeline, id → dead letter JSON), with the last id
//! used in `meta`.

use fjall::OwnedWriteBatch;

use super::codec::{join, seq_key, u64_suffix};
use super::{Result, Store, fj};

impl Store {
    /// The last dead-letter id used by a pipeline.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn last_dead_id(&self, pipeline: &str) -> Result<u64> {
        self.meta_u64("dead", pipeline)
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

    /// Puts new dead letters (with ids) and the last id used into `b`, and
    /// removes resolved ones.
    pub(super) fn write_dead_letters(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        add: &[(u64, String)],
        last_id: u64,
        remove: &[u64],
    ) {
        for (id, json) in add {
            b.insert(&self.dead, seq_key(pipeline, *id), json.as_bytes().to_vec());
        }
        if !add.is_empty() {
            b.insert(
                &self.meta,
                join(&[b"dead", pipeline.as_bytes()]),
                last_id.to_be_bytes().to_vec(),
            );
        }
        for id in remove {
            b.remove(&self.dead, seq_key(pipeline, *id));
        }
    }
}
