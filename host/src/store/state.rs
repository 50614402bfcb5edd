//! The `state` keyspace (pipeline, key → change number, plugin version and
//! the state's JSON) and the `latest` index (pipeline, change number → key:
//! one entry per key, at its last change), with the pipeline's last change
//! number in `meta`.

use fjall::OwnedWriteBatch;

use super::codec::{Reader, join, seq_key, u32_len, u64_suffix};
use super::{Result, Store, StoreError, fj};

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

/// A state's stored value: change number, plugin version and state, copied
/// once into the value.
pub(super) fn state_value(seq: u64, version: &str, state: &str) -> Result<fjall::Slice> {
    let version_len = u32_len(version.len()).to_be_bytes();
    fjall::Slice::from_reader(
        &mut std::io::Read::chain(
            std::io::Read::chain(
                std::io::Read::chain(&seq.to_be_bytes()[..], &version_len[..]),
                version.as_bytes(),
            ),
            state.as_bytes(),
        ),
        12 + version.len() + state.len(),
    )
    .map_err(|e| StoreError::Fjall {
        op: "encode state",
        source: e.into(),
    })
}

impl Store {
    /// The last change sequence number used by a pipeline.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn last_seq(&self, pipeline: &str) -> Result<u64> {
        self.meta_u64("seq", pipeline)
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

    /// Puts new states, their latest-index entries (moved from the key's
    /// previous change) and the pipeline's last change number into `b`.
    pub(super) fn write_states(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        plugin_version: &str,
        states: &[(Change, Option<u64>)],
        last_seq: u64,
    ) -> Result<()> {
        let p = pipeline.as_bytes();
        for (change, previous_seq) in states {
            b.insert(
                &self.state,
                join(&[p, change.key.as_bytes()]),
                state_value(change.seq, plugin_version, &change.state)?,
            );
            if let Some(old) = previous_seq {
                b.remove(&self.latest, seq_key(pipeline, *old));
            }
            b.insert(
                &self.latest,
                seq_key(pipeline, change.seq),
                change.key.as_bytes(),
            );
        }
        if !states.is_empty() {
            b.insert(
                &self.meta,
                join(&[b"seq", p]),
                last_seq.to_be_bytes().to_vec(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Commit;
    use super::*;
    use crate::config::Durability;

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
}
