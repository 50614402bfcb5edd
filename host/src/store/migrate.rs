//! Moving a store written before states lived under their partitions: its
//! `state` keys were `pipeline \0 key`, its `latest` keys `pipeline \0 seq`
//! and its change numbers one per pipeline (`seq \0 pipeline`). Each state
//! moves under the partition its key belongs to and takes a change number
//! of that partition, in the order the pipeline changed them (which is also
//! its stamp, so `latest` keeps its order), in one atomic write.

use std::collections::{BTreeMap, HashSet};

use super::codec::{Reader, join, split_at_zero};
use super::format::State;
use super::state::{latest_key, latest_value, seq_meta_key, state_key, state_value};
use super::{Result, Store, StoreError, fj};

/// The `meta` entry saying which layout the store has.
const LAYOUT: &[u8] = b"layout";
/// States under their partitions.
const PARTITIONED: u64 = 2;

/// A state as the old layout held it.
struct Old {
    key: String,
    seq: u64,
    version: String,
    state: State,
}

impl Store {
    /// Moves an old store's states under their partitions (a no-op on a
    /// store that has them there already); `partition_of(pipeline, key)`
    /// says where a key belongs, `None` for a pipeline no longer configured
    /// (its states go to partition 0). Returns how many states moved.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry; nothing changes then.
    pub fn migrate_to_partitions(
        &self,
        partition_of: &dyn Fn(&str, &str) -> Option<u32>,
    ) -> Result<u64> {
        if fj("read meta", self.meta.get(LAYOUT))?.is_some() {
            return Ok(0);
        }
        let mut b = self.batch();
        let mut by_pipeline: BTreeMap<String, Vec<Old>> = BTreeMap::new();
        let mut old_keys = Vec::new();
        for item in self.state.iter() {
            let (k, v) = fj("read state", item.into_inner())?;
            old_keys.push(k.to_vec());
            let Some((pipeline, key)) = split_at_zero(&k) else {
                continue;
            };
            let pipeline = String::from_utf8_lossy(pipeline).into_owned();
            // A replay's namespace (`{pipeline}@replay`): a rebuild that was
            // running when the old version stopped; it never went live.
            if pipeline.contains('@') {
                continue;
            }
            let corrupt = || StoreError::Corrupt {
                what: format!("old state of {pipeline:?}"),
            };
            let mut r = Reader(&v);
            let seq = r.array().map(u64::from_be_bytes).ok_or_else(corrupt)?;
            let version = String::from_utf8_lossy(r.bytes().ok_or_else(corrupt)?).into_owned();
            by_pipeline.entry(pipeline).or_default().push(Old {
                key: String::from_utf8_lossy(key).into_owned(),
                seq,
                version,
                state: State::json(String::from_utf8_lossy(r.0).into_owned()),
            });
        }
        let mut moved = 0;
        let mut new_keys = HashSet::new();
        for (pipeline, mut states) in by_pipeline {
            states.sort_unstable_by_key(|s| s.seq);
            let mut seqs: BTreeMap<u32, u64> = BTreeMap::new();
            for s in states {
                let partition = partition_of(&pipeline, &s.key).unwrap_or_else(|| {
                    tracing::warn!(pipeline = %pipeline, "states of a pipeline that is not configured go to partition 0");
                    0
                });
                let seq = seqs.entry(partition).or_insert(0);
                *seq += 1;
                let k = state_key(&pipeline, partition, &s.key);
                b.insert(
                    &self.state,
                    k.clone(),
                    state_value(*seq, s.seq, &s.version, &s.state)?,
                );
                new_keys.insert(k);
                b.insert(
                    &self.latest,
                    latest_key(&pipeline, partition, *seq),
                    latest_value(s.seq, &s.key),
                );
                moved += 1;
            }
            for (partition, seq) in seqs {
                b.insert(
                    &self.meta,
                    seq_meta_key(&pipeline, partition),
                    seq.to_be_bytes().to_vec(),
                );
            }
        }
        // What the old layout wrote: its state and latest keys, and the
        // pipelines' single change numbers (new keys never equal old ones
        // but for a key that begins with a partition's four bytes).
        for k in old_keys {
            if !new_keys.contains(&k) {
                b.remove(&self.state, k);
            }
        }
        for item in self.latest.iter() {
            b.remove(&self.latest, fj("read latest", item.key())?);
        }
        for item in self.meta.prefix(join(&[b"seq", b""])) {
            let k = fj("read meta", item.key())?;
            // The old `seq \0 pipeline`, not a new `seq \0 pipeline \0 p`.
            if k.get(4..).is_some_and(|rest| !rest.contains(&0)) {
                b.remove(&self.meta, k);
            }
        }
        b.insert(&self.meta, LAYOUT, PARTITIONED.to_be_bytes().to_vec());
        fj("migrate", b.commit())?;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::codec::put_bytes;

    /// Writes states in the old layout, as a store of the previous version.
    fn old_store(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
        let s = Store::open(dir, Durability::Process)?;
        let mut b = s.batch();
        // p: a (seq 3), b (seq 1), c (seq 2); its last change number 3.
        for (key, seq) in [("a", 3u64), ("b", 1), ("c", 2)] {
            let mut v = seq.to_be_bytes().to_vec();
            put_bytes(&mut v, b"v1");
            v.extend_from_slice(format!("{{\"k\":\"{key}\"}}").as_bytes());
            b.insert(&s.state, join(&[b"p", key.as_bytes()]), v);
            let mut lk = join(&[b"p", b""]);
            lk.extend_from_slice(&seq.to_be_bytes());
            b.insert(&s.latest, lk, key.as_bytes().to_vec());
        }
        b.insert(&s.meta, join(&[b"seq", b"p"]), 3u64.to_be_bytes().to_vec());
        // A replay that never went live.
        b.insert(&s.state, join(&[b"p@replay", b"a"]), vec![0; 12]);
        b.commit()?;
        Ok(())
    }

    #[test]
    fn an_old_store_moves_its_states_under_their_partitions_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        old_store(dir.path())?;
        let s = Store::open(dir.path(), Durability::Process)?;
        // a and c in partition 1, b in partition 0.
        let where_ = |_: &str, key: &str| Some(u32::from(key != "b"));
        assert_eq!(s.migrate_to_partitions(&where_)?, 3);
        assert_eq!(s.last_seqs("p", 2)?, [1, 2]);
        let a = s.state("p", 1, "a")?.ok_or("a moved")?;
        let c = s.state("p", 1, "c")?.ok_or("c moved")?;
        // c changed before a: it takes the partition's first number.
        assert_eq!((c.seq, a.seq), (1, 2));
        assert_eq!(a.state.json_text(), "{\"k\":\"a\"}");
        assert_eq!(a.plugin_version, "v1");
        assert_eq!(s.state("p", 0, "b")?.map(|b| b.seq), Some(1));
        // The latest order is the order they changed in.
        let latest: Vec<String> = s
            .latest("p", 0..2, 10)?
            .into_iter()
            .map(|(k, ..)| k)
            .collect();
        assert_eq!(latest, ["a", "c", "b"]);
        // Nothing of the old layout is left; a second run does nothing.
        assert_eq!(s.state.len()?, 3);
        assert_eq!(s.latest.len()?, 3);
        assert_eq!(s.migrate_to_partitions(&where_)?, 0);
        drop(s);
        let s = Store::open(dir.path(), Durability::Process)?;
        assert_eq!(s.migrate_to_partitions(&where_)?, 0);
        assert_eq!(s.latest_between("p", 1, 0, 2, 10)?.len(), 2);
        Ok(())
    }

    #[test]
    fn a_new_store_is_marked_and_left_alone() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(dir.path(), Durability::Process)?;
        assert_eq!(s.migrate_to_partitions(&|_, _| Some(0))?, 0);
        assert!(s.meta.get(LAYOUT)?.is_some());
        Ok(())
    }
}
