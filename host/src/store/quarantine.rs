//! The `quarantine` keyspace (pipeline, key → its open dead letters) and
//! the `parked` keyspace (pipeline, key, park number → the held-back event
//! as a log record with its origin), with the last park number in `meta`.

use fjall::OwnedWriteBatch;

use super::codec::{join, u64_of, u64_suffix};
use super::{Result, Store, StoreError, fj};

fn parked_key(pipeline: &str, key: &str, seq: u64) -> Vec<u8> {
    let mut k = join(&[pipeline.as_bytes(), key.as_bytes(), b""]);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl Store {
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

    /// The last park sequence number used by a pipeline.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn last_park_seq(&self, pipeline: &str) -> Result<u64> {
        self.meta_u64("park", pipeline)
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

    /// Puts new open-dead-letter counts into `b` (0 lifts the quarantine).
    pub(super) fn write_quarantine(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        counts: &[(String, u64)],
    ) {
        for (key, open) in counts {
            let k = join(&[pipeline.as_bytes(), key.as_bytes()]);
            if *open == 0 {
                b.remove(&self.quarantine, k);
            } else {
                b.insert(&self.quarantine, k, open.to_be_bytes().to_vec());
            }
        }
    }

    /// Puts parked events (key, park number, record) and the last park
    /// number into `b`, and removes released ones (key, park number).
    pub(super) fn write_parked(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        add: &[(String, u64, Vec<u8>)],
        last_seq: u64,
        remove: &[(String, u64)],
    ) {
        for (key, seq, record) in add {
            b.insert(
                &self.parked,
                parked_key(pipeline, key, *seq),
                record.clone(),
            );
        }
        if !add.is_empty() {
            b.insert(
                &self.meta,
                join(&[b"park", pipeline.as_bytes()]),
                last_seq.to_be_bytes().to_vec(),
            );
        }
        for (key, seq) in remove {
            b.remove(&self.parked, parked_key(pipeline, key, *seq));
        }
    }
}
