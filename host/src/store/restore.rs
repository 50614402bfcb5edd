//! What a host knows of a partition's state changelog (in `meta`:
//! `restore \0 pipeline \0 partition` → the owner epoch it wrote and the
//! changelog offset from which it has not seen every record), and the two
//! writes a restore makes: drop a partition's states, and put restored
//! states in. Both bump the state epoch, so the worker reads its numbers
//! again and drops the states it cached.

use fjall::OwnedWriteBatch;

use super::codec::{Reader, join, seq_key};
use super::offsets::offsets_key;
use super::state::{
    decode_state, latest_key, latest_value, partition_prefix, seq_meta_key, state_key, state_value,
};
use super::{Result, Store, StoreError, StoredState, fj};

/// Where this host stands in a partition's state changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestorePoint {
    /// The epoch this host owns (or last owned) the partition under: the
    /// changelog offset of the fence it wrote when it took the partition.
    pub epoch: u64,
    /// The changelog offset from which this store may lack records: every
    /// record before it is applied here (or was written from here).
    pub next_offset: u64,
}

/// Restored states of one partition, written in one atomic batch.
#[derive(Debug, Default)]
pub struct Restored {
    /// The pipeline.
    pub pipeline: String,
    /// Its input topic (whose offset is set).
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The states, each with its change number, stamp and plugin version.
    pub states: Vec<(String, StoredState)>,
    /// The partition's last change number after them.
    pub last_seq: u64,
    /// The next input offset they reflect, if known.
    pub next_offset: Option<u64>,
    /// Where the host then stands in the changelog, if it moved.
    pub point: Option<RestorePoint>,
    /// Dead letters of the partition, in changelog order: (id, the letter,
    /// or `None` when it was resolved).
    pub dead: Vec<(u64, Option<String>)>,
    /// The partition's last dead-letter number they imply (the store keeps
    /// the higher of it and its own).
    pub dead_counter: u64,
    /// The store holds no state of the partition: none is looked up to be
    /// replaced (its index entry removed).
    pub fresh: bool,
    /// The partition's timers set and cancelled (fired and folded ones as
    /// cancels), in changelog order.
    pub timers: Vec<crate::store::TimerOp>,
    /// The partition's stream time, when the changelog carried one.
    pub stream_time: Option<i64>,
    /// Marks of the partition's schedules, in changelog order.
    pub schedule_marks: Vec<(String, super::ScheduleMark)>,
    /// Run records of the partition's schedules: (schedule, run, record).
    pub schedule_runs: Vec<(String, u64, String)>,
}

fn restore_key(pipeline: &str, partition: u32) -> Vec<u8> {
    let mut k = join(&[b"restore", pipeline.as_bytes(), b""]);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn point_value(p: &RestorePoint) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&p.epoch.to_be_bytes());
    v.extend_from_slice(&p.next_offset.to_be_bytes());
    v
}

impl Store {
    /// Where this store stands in a partition's state changelog (`None`:
    /// it never restored or wrote one).
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn restore_point(&self, pipeline: &str, partition: u32) -> Result<Option<RestorePoint>> {
        let Some(v) = fj(
            "read restore point",
            self.meta.get(restore_key(pipeline, partition)),
        )?
        else {
            return Ok(None);
        };
        let mut r = Reader(&v);
        match (r.array(), r.array()) {
            (Some(e), Some(o)) => Ok(Some(RestorePoint {
                epoch: u64::from_be_bytes(e),
                next_offset: u64::from_be_bytes(o),
            })),
            _ => Err(StoreError::Corrupt {
                what: format!("restore point of pipeline {pipeline:?} partition {partition}"),
            }),
        }
    }

    pub(super) fn write_restore_points(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        points: &[(u32, RestorePoint)],
    ) {
        for (partition, point) in points {
            b.insert(
                &self.meta,
                restore_key(pipeline, *partition),
                point_value(point),
            );
        }
    }

    /// Drops everything the store holds of a partition of a pipeline: its
    /// states, their index, its change number, its input offset, its
    /// restore point, its dead letters (the input has `partitions`) and its
    /// timers.
    /// Returns how many states it dropped.
    ///
    /// # Errors
    /// On an I/O error; nothing is dropped then.
    pub fn drop_partition(
        &self,
        pipeline: &str,
        topic: &str,
        (partition, partitions): (u32, u32),
    ) -> Result<u64> {
        let prefix = partition_prefix(pipeline, partition);
        let mut b = self.batch();
        let mut dropped = 0;
        for item in self.state.prefix(&prefix) {
            let k = fj("read state", item.key())?;
            b.remove(&self.state, k);
            dropped += 1;
        }
        for item in self.latest.prefix(&prefix) {
            let k = fj("read latest", item.key())?;
            b.remove(&self.latest, k);
        }
        b.remove(&self.meta, seq_meta_key(pipeline, partition));
        b.remove(&self.meta, restore_key(pipeline, partition));
        b.remove(&self.offsets, offsets_key(pipeline, topic, partition));
        self.drop_dead_letters(&mut b, pipeline, partition, partitions)?;
        self.drop_partition_timers(&mut b, pipeline, partition)?;
        fj("drop partition", b.commit())?;
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(dropped)
    }

    /// Puts restored states in, replacing what the store held for their
    /// keys, with the partition's change number, input offset and restore
    /// point, in one atomic batch. Of several states of one key, the one
    /// with the highest change number is kept.
    ///
    /// # Errors
    /// On an I/O error; nothing is written then.
    pub fn apply_restored(&self, r: &Restored) -> Result<()> {
        let p = r.pipeline.as_str();
        let mut last: std::collections::HashMap<&str, &StoredState> =
            std::collections::HashMap::with_capacity(r.states.len());
        for (key, s) in &r.states {
            let kept = last.entry(key.as_str()).or_insert(s);
            if kept.seq < s.seq {
                *kept = s;
            }
        }
        let mut b = self.batch();
        for (key, s) in last {
            let at = state_key(p, r.partition, key);
            let old = if r.fresh {
                None
            } else {
                fj("read state", self.state.get(&at))?
            };
            if let Some(old) = old {
                let old = decode_state(&old, key)?;
                b.remove(&self.latest, latest_key(p, r.partition, old.seq));
            }
            b.insert(
                &self.state,
                at,
                state_value(s.seq, s.stamp_us, &s.plugin_version, &s.state)?,
            );
            b.insert(
                &self.latest,
                latest_key(p, r.partition, s.seq),
                latest_value(s.stamp_us, key),
            );
        }
        b.insert(
            &self.meta,
            seq_meta_key(p, r.partition),
            r.last_seq.to_be_bytes().to_vec(),
        );
        if let Some(o) = r.next_offset {
            b.insert(
                &self.offsets,
                offsets_key(p, &r.topic, r.partition),
                o.to_be_bytes().to_vec(),
            );
        }
        if let Some(point) = &r.point {
            self.write_restore_points(&mut b, p, &[(r.partition, *point)]);
        }
        for (id, letter) in &r.dead {
            match letter {
                Some(json) => b.insert(&self.dead, seq_key(p, *id), json.as_bytes().to_vec()),
                None => b.remove(&self.dead, seq_key(p, *id)),
            }
        }
        self.write_timers(&mut b, p, &r.timers, (&[], false))?;
        let event_time = r.timers.iter().any(
            |op| matches!(op, crate::store::TimerOp::Set(t) if t.domain == super::TimeDomain::Event),
        );
        if let Some(ms) = r.stream_time {
            let now = self
                .stream_times(p, r.partition.saturating_add(1))?
                .get(r.partition as usize)
                .copied()
                .unwrap_or(i64::MIN);
            self.write_stream_times(&mut b, p, &[(r.partition, now.max(ms))], event_time);
        } else if event_time {
            self.write_stream_times(&mut b, p, &[], true);
        }
        self.write_schedules(&mut b, p, &r.schedule_marks, &r.schedule_runs);
        let counter = self.dead_counter_of(p, r.partition)?.max(r.dead_counter);
        if counter > 0 {
            self.write_dead_counters(&mut b, p, &[(r.partition, counter)]);
        }
        fj("apply restored states", b.commit())?;
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Every state of a partition, in key order (what a host publishes to a
    /// state changelog that does not hold them yet).
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn partition_states(
        &self,
        pipeline: &str,
        partition: u32,
    ) -> Result<Vec<(String, StoredState)>> {
        let prefix = partition_prefix(pipeline, partition);
        let mut out = Vec::new();
        for item in self.state.prefix(&prefix) {
            let (k, v) = fj("read state", item.into_inner())?;
            let key =
                String::from_utf8_lossy(k.get(prefix.len()..).unwrap_or_default()).into_owned();
            let s = decode_state(&v, &key)?;
            out.push((key, s));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Change, Commit};
    use super::*;
    use crate::config::Durability;

    #[test]
    fn a_partition_is_restored_and_dropped_alone()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(dir.path(), Durability::Process)?;
        let change = |partition, seq, key: &str| Change {
            partition,
            seq,
            stamp_us: seq,
            key: key.into(),
            state: crate::store::State::json(format!("{{\"seq\":{seq}}}")),
            version: 0,
        };
        s.commit(&Commit {
            pipeline: "p".into(),
            states: vec![(change(0, 1, "a"), None), (change(1, 1, "b"), None)],
            last_seqs: vec![(0, 1), (1, 1)],
            offsets: vec![("t".into(), 0, 5), ("t".into(), 1, 9)],
            ..Commit::default()
        })?;
        let before = s.state_epoch();
        let stored = |seq| StoredState {
            seq,
            stamp_us: 100 + seq,
            plugin_version: "v".into(),
            state: crate::store::State::json(format!("{{\"restored\":{seq}}}")),
        };
        s.apply_restored(&Restored {
            pipeline: "p".into(),
            topic: "t".into(),
            partition: 0,
            states: vec![
                ("a".into(), stored(6)),
                ("c".into(), stored(8)),
                ("a".into(), stored(7)),
            ],
            last_seq: 8,
            next_offset: Some(40),
            point: Some(RestorePoint {
                epoch: 3,
                next_offset: 12,
            }),
            // Partition 0 of 2: ids 2, 4 and 6; 4 was resolved.
            dead: vec![
                (2, Some("{\"id\":2}".into())),
                (4, Some("{\"id\":4}".into())),
                (6, Some("{\"id\":6}".into())),
                (4, None),
            ],
            dead_counter: 3,
            fresh: false,
            timers: Vec::new(),
            stream_time: None,
            schedule_marks: Vec::new(),
            schedule_runs: Vec::new(),
        })?;
        // A dead letter of partition 1, recorded here.
        s.commit(&Commit {
            pipeline: "p".into(),
            dead_letters: vec![(3, "{\"id\":3}".into())],
            last_dead_ids: vec![(1, 1)],
            ..Commit::default()
        })?;
        let ids = |s: &Store| -> std::result::Result<Vec<u64>, StoreError> {
            Ok(s.dead_letters("p", 0, 100)?
                .into_iter()
                .map(|(id, _)| id)
                .collect())
        };
        assert_eq!(ids(&s)?, vec![2, 3, 6]);
        assert_eq!(s.dead_counters("p", 2)?, vec![3, 1]);
        assert!(s.state_epoch() > before);
        // Of a's two states the later is kept, and indexed once.
        assert_eq!(s.state("p", 0, "a")?.map(|x| x.seq), Some(7));
        assert_eq!(s.last_seq("p", 0)?, 8);
        assert_eq!(s.offset("p", "t", 0)?, 40);
        assert_eq!(
            s.restore_point("p", 0)?,
            Some(RestorePoint {
                epoch: 3,
                next_offset: 12
            })
        );
        // The index holds one entry per key: a's old entry went.
        assert_eq!(s.latest_between("p", 0, 0, 100, 100)?.len(), 2);
        assert_eq!(s.partition_states("p", 0)?.len(), 2);
        assert_eq!(s.drop_partition("p", "t", (0, 2))?, 2);
        // Its dead letters and their numbering went; the other partition's stay.
        assert_eq!(ids(&s)?, vec![3]);
        assert_eq!(s.dead_counters("p", 2)?, vec![0, 1]);
        assert!(s.state("p", 0, "a")?.is_none());
        assert_eq!(s.last_seq("p", 0)?, 0);
        assert_eq!(s.stored_offset("p", "t", 0)?, None);
        assert_eq!(s.restore_point("p", 0)?, None);
        assert!(s.latest_between("p", 0, 0, 100, 100)?.is_empty());
        // The other partition is untouched.
        assert_eq!(s.state("p", 1, "b")?.map(|x| x.seq), Some(1));
        assert_eq!(s.offset("p", "t", 1)?, 9);
        Ok(())
    }
}
