//! The `state` keyspace (pipeline, input partition, key → the partition's
//! change number, a commit stamp, the plugin version and the state in its
//! format: JSON text, or a `\0` byte and MessagePack)
//! and the `latest` index (pipeline, partition, change number → stamp and
//! key: one entry per key, at its last change), with each partition's last
//! change number in `meta`.
//!
//! A key lives under the partition its events belong to (murmur2 of the
//! key, as Kafka's default partitioner), so a partition's states, index and
//! change numbers can be dropped, restored or handed over alone. Change
//! numbers count per partition; the stamp (microseconds, strictly growing
//! per pipeline on a host) orders changes across partitions (`latest`).

use fjall::OwnedWriteBatch;

use super::codec::{Reader, join, u32_len, u64_of, u64_suffix};
use super::format::{State, StateFormat};
use super::{Result, Store, StoreError, fj};

/// A key's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredState {
    /// The partition's change number of the key's last change.
    pub seq: u64,
    /// When it changed: microseconds since the Unix epoch, strictly growing
    /// per pipeline on a host.
    pub stamp_us: u64,
    /// Version (content hash) of the plugin that produced it.
    pub plugin_version: String,
    /// The state, in the format its plugin wrote.
    pub state: State,
}

/// One committed state change, as served to SSE clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The input partition the key belongs to.
    pub partition: u32,
    /// The partition's change number.
    pub seq: u64,
    /// When it was committed (see [`StoredState::stamp_us`]).
    pub stamp_us: u64,
    /// The key.
    pub key: String,
    /// The new state.
    pub state: State,
    /// The plugin instance's name for this state (see
    /// `execute::Folded::version`); 0 when none.
    pub version: u64,
}

impl StoredState {
    /// As the change that left it: `key`'s state in `partition`.
    pub fn into_change(self, partition: u32, key: String) -> Change {
        Change {
            partition,
            seq: self.seq,
            stamp_us: self.stamp_us,
            key,
            state: self.state,
            version: 0,
        }
    }
}

/// `pipeline \0 partition`: where a partition's entries start.
pub(super) fn partition_prefix(pipeline: &str, partition: u32) -> Vec<u8> {
    let mut k = join(&[pipeline.as_bytes(), b""]);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

pub(super) fn state_key(pipeline: &str, partition: u32, key: &str) -> Vec<u8> {
    let mut k = partition_prefix(pipeline, partition);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(super) fn latest_key(pipeline: &str, partition: u32, seq: u64) -> Vec<u8> {
    let mut k = partition_prefix(pipeline, partition);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn seq_meta_key(pipeline: &str, partition: u32) -> Vec<u8> {
    let mut k = join(&[b"seq", pipeline.as_bytes(), b""]);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Before a stored state's bytes: the state is MessagePack (JSON text never
/// starts with a NUL byte, so states stored before 0.2.0 read unchanged).
const MSGPACK_TAG: u8 = 0;

/// A state's stored value: change number, stamp, plugin version and state
/// (with its format's tag), copied once into the value.
pub(super) fn state_value(
    seq: u64,
    stamp_us: u64,
    version: &str,
    state: &State,
) -> Result<fjall::Slice> {
    let mut head = [0u8; 20];
    head[..8].copy_from_slice(&seq.to_be_bytes());
    head[8..16].copy_from_slice(&stamp_us.to_be_bytes());
    head[16..].copy_from_slice(&u32_len(version.len()).to_be_bytes());
    let tag: &[u8] = match state.format() {
        StateFormat::Json => &[],
        StateFormat::MsgPack => &[MSGPACK_TAG],
    };
    fjall::Slice::from_reader(
        &mut std::io::Read::chain(
            std::io::Read::chain(std::io::Read::chain(&head[..], version.as_bytes()), tag),
            state.bytes(),
        ),
        head.len() + version.len() + tag.len() + state.len(),
    )
    .map_err(|e| StoreError::Fjall {
        op: "encode state",
        source: e.into(),
    })
}

/// A latest-index entry's value: the change's stamp and the key.
pub(super) fn latest_value(stamp_us: u64, key: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + key.len());
    v.extend_from_slice(&stamp_us.to_be_bytes());
    v.extend_from_slice(key.as_bytes());
    v
}

pub(super) fn decode_latest(v: &[u8]) -> Result<(u64, String)> {
    let mut r = Reader(v);
    let stamp = r
        .array()
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            what: "latest entry".into(),
        })?;
    Ok((stamp, String::from_utf8_lossy(r.0).into_owned()))
}

pub(super) fn decode_state(v: &[u8], key: &str) -> Result<StoredState> {
    let corrupt = || StoreError::Corrupt {
        what: format!("state of {key:?}"),
    };
    let mut r = Reader(v);
    let seq = r.array().map(u64::from_be_bytes).ok_or_else(corrupt)?;
    let stamp_us = r.array().map(u64::from_be_bytes).ok_or_else(corrupt)?;
    let version = r.bytes().ok_or_else(corrupt)?;
    Ok(StoredState {
        seq,
        stamp_us,
        plugin_version: String::from_utf8_lossy(version).into_owned(),
        state: stored_state(r.0),
    })
}

/// A state from its stored bytes (tag and state).
pub(super) fn stored_state(bytes: &[u8]) -> State {
    match bytes.split_first() {
        Some((&MSGPACK_TAG, msgpack)) => State::trusted_msgpack(msgpack.to_vec()),
        _ => State::json(String::from_utf8_lossy(bytes).into_owned()),
    }
}

impl Store {
    /// The last change number a pipeline used in a partition (0: none).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn last_seq(&self, pipeline: &str, partition: u32) -> Result<u64> {
        match fj(
            "read meta",
            self.meta.get(seq_meta_key(pipeline, partition)),
        )? {
            None => Ok(0),
            Some(v) => u64_of(&v, "sequence"),
        }
    }

    /// The last change number of each of a pipeline's `partitions`.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn last_seqs(&self, pipeline: &str, partitions: u32) -> Result<Vec<u64>> {
        (0..partitions)
            .map(|p| self.last_seq(pipeline, p))
            .collect()
    }

    /// The newest commit stamp among a pipeline's `partitions` (0: none).
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn last_stamp(&self, pipeline: &str, partitions: u32) -> Result<u64> {
        let mut newest = 0;
        for p in 0..partitions {
            if let Some(item) = self
                .latest
                .prefix(partition_prefix(pipeline, p))
                .next_back()
            {
                let v = fj("read latest", item.value())?;
                newest = newest.max(decode_latest(&v)?.0);
            }
        }
        Ok(newest)
    }

    /// A key's state in its partition.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn state(&self, pipeline: &str, partition: u32, key: &str) -> Result<Option<StoredState>> {
        fj(
            "read state",
            self.state.get(state_key(pipeline, partition, key)),
        )?
        .map(|v| decode_state(&v, key))
        .transpose()
    }

    /// The `limit` most recently changed keys' states over some of a
    /// pipeline's partitions, most recent first, each with its partition.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn latest(
        &self,
        pipeline: &str,
        partitions: impl IntoIterator<Item = u32>,
        limit: usize,
    ) -> Result<Vec<(String, u32, StoredState)>> {
        // Each partition's newest `limit`, then the newest `limit` of those.
        let mut candidates: Vec<(u64, u32, String)> = Vec::new();
        for p in partitions {
            for item in self
                .latest
                .prefix(partition_prefix(pipeline, p))
                .rev()
                .take(limit)
            {
                let (stamp, key) = decode_latest(&fj("read latest", item.value())?)?;
                candidates.push((stamp, p, key));
            }
        }
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let mut out = Vec::with_capacity(limit.min(candidates.len()));
        for (_, p, key) in candidates.into_iter().take(limit) {
            if let Some(s) = self.state(pipeline, p, &key)? {
                out.push((key, p, s));
            }
        }
        Ok(out)
    }

    /// The keys of a partition whose last change has a number in
    /// `after + 1 ..= until`, oldest first, at most `max`, each with its
    /// state: the changes of that range compacted to each key's latest (a
    /// key changed again after `until` is not among them).
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn latest_between(
        &self,
        pipeline: &str,
        partition: u32,
        after: u64,
        until: u64,
        max: usize,
    ) -> Result<Vec<Change>> {
        let mut out = Vec::new();
        if after >= until {
            return Ok(out);
        }
        let range = latest_key(pipeline, partition, after.saturating_add(1))
            ..=latest_key(pipeline, partition, until);
        for item in self.latest.range(range).take(max) {
            let (k, v) = fj("read latest", item.into_inner())?;
            let seq = u64_suffix(&k, "latest key")?;
            let (_, key) = decode_latest(&v)?;
            // The state moved on since the index was read: its newer change
            // comes later.
            if let Some(st) = self
                .state(pipeline, partition, &key)?
                .filter(|st| st.seq == seq)
            {
                out.push(st.into_change(partition, key));
            }
        }
        Ok(out)
    }

    /// Puts new states, their latest-index entries (moved from the key's
    /// previous change) and the partitions' last change numbers into `b`.
    pub(super) fn write_states(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        plugin_version: &str,
        states: &[(Change, Option<u64>)],
        last_seqs: &[(u32, u64)],
    ) -> Result<()> {
        for (change, previous_seq) in states {
            b.insert(
                &self.state,
                state_key(pipeline, change.partition, &change.key),
                state_value(change.seq, change.stamp_us, plugin_version, &change.state)?,
            );
            if let Some(old) = previous_seq {
                b.remove(&self.latest, latest_key(pipeline, change.partition, *old));
            }
            b.insert(
                &self.latest,
                latest_key(pipeline, change.partition, change.seq),
                latest_value(change.stamp_us, &change.key),
            );
        }
        for (p, seq) in last_seqs {
            b.insert(
                &self.meta,
                seq_meta_key(pipeline, *p),
                seq.to_be_bytes().to_vec(),
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

    fn change(partition: u32, seq: u64, key: &str, stamp_us: u64) -> Change {
        Change {
            partition,
            seq,
            stamp_us,
            key: key.into(),
            state: State::json(format!("{{\"at\":{seq}}}")),
            version: 0,
        }
    }

    fn commit(states: Vec<(Change, Option<u64>)>, last_seqs: Vec<(u32, u64)>) -> Commit {
        Commit {
            pipeline: "p".into(),
            states,
            last_seqs,
            plugin_version: "v1".into(),
            ..Commit::default()
        }
    }

    #[test]
    fn latest_between_compacts_a_range_of_a_partitions_changes_to_each_keys_last()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(dir.path(), Durability::Process)?;
        s.commit(&commit(
            vec![(change(0, 1, "a", 10), None), (change(0, 2, "b", 11), None)],
            vec![(0, 2)],
        ))?;
        s.commit(&commit(
            vec![
                (change(0, 3, "a", 12), Some(1)),
                (change(0, 4, "c", 13), None),
            ],
            vec![(0, 4)],
        ))?;
        s.commit(&commit(
            vec![
                (change(0, 5, "b", 14), Some(2)),
                (change(1, 1, "z", 15), None),
            ],
            vec![(0, 5), (1, 1)],
        ))?;
        let got = |after, until, max| -> Result<Vec<(u64, String, String)>, StoreError> {
            Ok(s.latest_between("p", 0, after, until, max)?
                .into_iter()
                .map(|c| (c.seq, c.key, c.state.json_text().to_owned()))
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
        // Partitions count on their own.
        assert_eq!(s.last_seqs("p", 2)?, [5, 1]);
        assert_eq!(s.latest_between("p", 1, 0, 1, 10)?.len(), 1);
        assert_eq!(s.state("p", 0, "z")?, None);
        assert_eq!(
            s.state("p", 1, "z")?
                .map(|st| (st.seq, st.stamp_us, st.plugin_version)),
            Some((1, 15, "v1".into()))
        );
        // Latest over both partitions: most recent first by stamp.
        let latest: Vec<(String, u32)> = s
            .latest("p", 0..2, 3)?
            .into_iter()
            .map(|(k, p, _)| (k, p))
            .collect();
        assert_eq!(latest, [("z".into(), 1), ("b".into(), 0), ("c".into(), 0)]);
        assert_eq!(s.last_stamp("p", 2)?, 15);
        Ok(())
    }

    #[test]
    fn a_msgpack_state_reads_back_in_its_format_next_to_json_ones()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(dir.path(), Durability::Process)?;
        let packed = State::json("{\"n\":[1,\"two\"]}".into())
            .in_format(StateFormat::MsgPack)?
            .into_owned();
        let mut a = change(0, 1, "a", 10);
        a.state = State::checked(StateFormat::MsgPack, packed.clone())?;
        s.commit(&commit(
            vec![(a, None), (change(0, 2, "b", 11), None)],
            vec![(0, 2)],
        ))?;
        let a = s.state("p", 0, "a")?.ok_or("a")?;
        assert_eq!(a.plugin_version, "v1");
        assert_eq!(a.state.format(), StateFormat::MsgPack);
        assert_eq!(a.state.bytes(), packed.as_slice());
        assert_eq!(a.state.json_text(), "{\"n\":[1,\"two\"]}");
        let b = s.state("p", 0, "b")?.ok_or("b")?;
        assert_eq!(
            (b.state.format(), b.state.json_text()),
            (StateFormat::Json, "{\"at\":2}")
        );
        Ok(())
    }
}
