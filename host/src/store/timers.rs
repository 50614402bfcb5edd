//! The `timers` keyspace (a pipeline's pending timers, in the order they
//! fall due) and the `timer_names` keyspace (pipeline, key, name → where
//! that timer sits in `timers`, so setting a name again replaces it and a
//! cancel finds it; and, under the empty name, how many timers the key has
//! pending), with each partition's stream time in `meta`.
//!
//! `timers` keys: pipeline `\0` `w` at(i64, order-preserving) partition(u32)
//! key-length(u32) key name for wall-clock timers (one range, across
//! partitions, up to the clock), and pipeline `\0` `e` partition(u32) at
//! key-length key name for event-time timers (a range per partition, up to
//! its stream time). The value is the timer's payload (JSON text).

use std::collections::HashMap;

use fjall::OwnedWriteBatch;

use super::codec::{Reader, join};
use super::{Result, Store, StoreError, fj};

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeDomain {
    /// The partition's stream time: the highest event time seen, less the
    /// pipeline's allowed lateness.
    Event,
    /// The host's clock.
    Wall,
}

impl TimeDomain {
    fn tag(self) -> u8 {
        match self {
            TimeDomain::Event => b'e',
            TimeDomain::Wall => b'w',
        }
    }

    fn of_tag(tag: u8) -> Option<Self> {
        match tag {
            b'e' => Some(TimeDomain::Event),
            b'w' => Some(TimeDomain::Wall),
            _ => None,
        }
    }

    /// As written in a timer request and a fired timer (`event`, `wall`).
    pub fn as_str(self) -> &'static str {
        match self {
            TimeDomain::Event => "event",
            TimeDomain::Wall => "wall",
        }
    }
}

/// A pending timer of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// The key it belongs to.
    pub key: String,
    /// Its name, unique per key: setting it again replaces it.
    pub name: String,
    /// The input partition of the key.
    pub partition: u32,
    /// The clock it follows.
    pub domain: TimeDomain,
    /// When it falls due, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// What the plugin asked to get back when it fires (JSON text).
    pub payload: String,
}

/// A change a fold asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerOp {
    /// Set (or replace) a timer.
    Set(Timer),
    /// Cancel a key's timer by name (nothing when it is not pending).
    Cancel {
        /// The key.
        key: String,
        /// The timer's name.
        name: String,
    },
}

impl TimerOp {
    fn id(&self) -> (&str, &str) {
        match self {
            TimerOp::Set(t) => (&t.key, &t.name),
            TimerOp::Cancel { key, name } => (key, name),
        }
    }
}

fn ordered(at_ms: i64) -> [u8; 8] {
    ((at_ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn of_ordered(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

fn key_and_name(out: &mut Vec<u8>, key: &str, name: &str) {
    out.extend_from_slice(&super::codec::u32_len(key.len()).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(name.as_bytes());
}

fn domain_prefix(pipeline: &str, domain: TimeDomain) -> Vec<u8> {
    let mut k = join(&[pipeline.as_bytes(), b""]);
    k.push(domain.tag());
    k
}

fn event_prefix(pipeline: &str, partition: u32) -> Vec<u8> {
    let mut k = domain_prefix(pipeline, TimeDomain::Event);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn entry_key(pipeline: &str, t: &Timer) -> Vec<u8> {
    let mut k = domain_prefix(pipeline, t.domain);
    match t.domain {
        TimeDomain::Wall => {
            k.extend_from_slice(&ordered(t.at_ms));
            k.extend_from_slice(&t.partition.to_be_bytes());
        }
        TimeDomain::Event => {
            k.extend_from_slice(&t.partition.to_be_bytes());
            k.extend_from_slice(&ordered(t.at_ms));
        }
    }
    key_and_name(&mut k, &t.key, &t.name);
    k
}

fn names_prefix(pipeline: &str, key: &str) -> Vec<u8> {
    let mut k = join(&[pipeline.as_bytes(), b""]);
    k.extend_from_slice(&super::codec::u32_len(key.len()).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

fn names_key(pipeline: &str, key: &str, name: &str) -> Vec<u8> {
    let mut k = names_prefix(pipeline, key);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Where a named timer sits: domain, partition, instant.
fn encode_place(t: &Timer) -> Vec<u8> {
    let mut v = vec![t.domain.tag()];
    v.extend_from_slice(&t.partition.to_be_bytes());
    v.extend_from_slice(&t.at_ms.to_be_bytes());
    v
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt {
        what: format!("timer {what}"),
    }
}

/// Reads an entry of `timers` back (its key after the domain prefix).
fn decode_entry(domain: TimeDomain, rest: &[u8], payload: &[u8]) -> Result<Timer> {
    let mut r = Reader(rest);
    let (at_ms, partition) = match domain {
        TimeDomain::Wall => {
            let at = r.array().map(of_ordered);
            (at, r.array().map(u32::from_be_bytes))
        }
        TimeDomain::Event => {
            let partition = r.array().map(u32::from_be_bytes);
            (r.array().map(of_ordered), partition)
        }
    };
    let (Some(at_ms), Some(partition)) = (at_ms, partition) else {
        return Err(corrupt("key"));
    };
    let key = r.bytes().ok_or_else(|| corrupt("key"))?;
    let name = r.0;
    Ok(Timer {
        key: String::from_utf8_lossy(key).into_owned(),
        name: String::from_utf8_lossy(name).into_owned(),
        partition,
        domain,
        at_ms,
        payload: String::from_utf8_lossy(payload).into_owned(),
    })
}

/// The timer (without its payload) an index entry places.
fn place_of(key: &str, name: &str, place: &[u8]) -> Result<Timer> {
    let mut r = Reader(place);
    let (Some([tag]), Some(partition), Some(at_ms)) = (
        r.array::<1>(),
        r.array().map(u32::from_be_bytes),
        r.array().map(i64::from_be_bytes),
    ) else {
        return Err(corrupt("place"));
    };
    Ok(Timer {
        key: key.to_owned(),
        name: name.to_owned(),
        partition,
        domain: TimeDomain::of_tag(tag).ok_or_else(|| corrupt("domain"))?,
        at_ms,
        payload: String::new(),
    })
}

fn stream_time_key(pipeline: &str, partition: u32) -> Vec<u8> {
    let mut k = join(&[b"stream-time", pipeline.as_bytes(), b""]);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

impl Store {
    /// Up to `limit` wall-clock timers due at `now_ms`, earliest first, and
    /// the instant of the first one after them (`None`: no more pending).
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn due_wall_timers(
        &self,
        pipeline: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<(Vec<Timer>, Option<i64>)> {
        let prefix = domain_prefix(pipeline, TimeDomain::Wall);
        Self::due(
            &self.timers,
            &prefix,
            prefix.len(),
            TimeDomain::Wall,
            now_ms,
            limit,
        )
    }

    fn due(
        timers: &fjall::Keyspace,
        prefix: &[u8],
        skip: usize,
        domain: TimeDomain,
        until_ms: i64,
        limit: usize,
    ) -> Result<(Vec<Timer>, Option<i64>)> {
        let mut out = Vec::new();
        for item in timers.prefix(prefix) {
            let (k, v) = fj("read timers", item.into_inner())?;
            let t = decode_entry(domain, k.get(skip..).unwrap_or_default(), &v)?;
            if t.at_ms > until_ms || out.len() >= limit {
                return Ok((out, Some(t.at_ms)));
            }
            out.push(t);
        }
        Ok((out, None))
    }

    /// Up to `limit` event-time timers of `partition` due at stream time
    /// `until_ms`, earliest first, and the instant of the first one after
    /// them (`None`: no more pending).
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn due_event_timers(
        &self,
        pipeline: &str,
        partition: u32,
        until_ms: i64,
        limit: usize,
    ) -> Result<(Vec<Timer>, Option<i64>)> {
        let skip = domain_prefix(pipeline, TimeDomain::Event).len();
        Self::due(
            &self.timers,
            &event_prefix(pipeline, partition),
            skip,
            TimeDomain::Event,
            until_ms,
            limit,
        )
    }

    /// The pending timers of one key, by name.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn key_timers(&self, pipeline: &str, key: &str) -> Result<Vec<Timer>> {
        let mut out = Vec::new();
        let prefix = names_prefix(pipeline, key);
        for item in self.timer_names.prefix(&prefix) {
            let (k, place) = fj("read timer names", item.into_inner())?;
            let name = String::from_utf8_lossy(k.get(prefix.len()..).unwrap_or_default());
            if name.is_empty() {
                continue; // the key's count
            }
            let Some(t) = self.timer_at(pipeline, key, &name, &place)? else {
                continue;
            };
            out.push(t);
        }
        Ok(out)
    }

    /// How many timers `key` has pending (one read: the key's count).
    ///
    /// # Errors
    /// On an I/O error or a corrupt count.
    pub fn key_timer_count(&self, pipeline: &str, key: &str) -> Result<u64> {
        match fj(
            "read timer names",
            self.timer_names.get(names_prefix(pipeline, key)),
        )? {
            None => Ok(0),
            Some(v) => Reader(&v)
                .array()
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("count")),
        }
    }

    /// Whether `key` has a pending timer named `name`.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn has_timer(&self, pipeline: &str, key: &str, name: &str) -> Result<bool> {
        Ok(fj(
            "read timer names",
            self.timer_names.get(names_key(pipeline, key, name)),
        )?
        .is_some())
    }

    /// How many timers a pipeline has pending.
    ///
    /// # Errors
    /// On an I/O error.
    pub fn timer_count(&self, pipeline: &str) -> Result<u64> {
        let prefix = join(&[pipeline.as_bytes(), b""]);
        let mut n = 0;
        for item in self.timer_names.prefix(&prefix) {
            let k = fj("read timer names", item.key())?;
            // Past the prefix: key length, key, name (empty: the count).
            let mut r = Reader(k.get(prefix.len()..).unwrap_or_default());
            let key_len = r.array().map(u32::from_be_bytes).unwrap_or(0) as usize;
            if r.0.len() > key_len {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Each partition's stream time (the highest event time its pipeline
    /// has seen; `i64::MIN` before the first event).
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn stream_times(&self, pipeline: &str, partitions: u32) -> Result<Vec<i64>> {
        (0..partitions)
            .map(
                |p| match fj("read meta", self.meta.get(stream_time_key(pipeline, p)))? {
                    None => Ok(i64::MIN),
                    Some(v) => Reader(&v)
                        .array()
                        .map(i64::from_be_bytes)
                        .ok_or_else(|| corrupt("stream time")),
                },
            )
            .collect()
    }

    fn timer_at(
        &self,
        pipeline: &str,
        key: &str,
        name: &str,
        place: &[u8],
    ) -> Result<Option<Timer>> {
        let probe = place_of(key, name, place)?;
        Ok(
            fj("read timers", self.timers.get(entry_key(pipeline, &probe)))?.map(|payload| Timer {
                payload: String::from_utf8_lossy(&payload).into_owned(),
                ..probe
            }),
        )
    }

    /// Puts a commit's timer changes into `b`: for each (key, name) its
    /// last change wins; a set replaces the pending timer of that name.
    /// Then removes the timers that fired, and moves the keys' counts.
    pub(super) fn write_timers(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        ops: &[TimerOp],
        fired: &[Timer],
    ) -> Result<()> {
        let mut last: HashMap<(&str, &str), &TimerOp> = HashMap::new();
        let mut order = Vec::new();
        for op in ops {
            if last.insert(op.id(), op).is_none() {
                order.push(op.id());
            }
        }
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for id in order {
            let Some(op) = last.get(&id) else { continue };
            let (key, name) = id;
            let index = names_key(pipeline, key, name);
            // A set replaces the pending timer of that name.
            let existed = fj("read timer names", self.timer_names.get(&index))?;
            if let Some(place) = &existed {
                b.remove(
                    &self.timers,
                    entry_key(pipeline, &place_of(key, name, place)?),
                );
            }
            match op {
                TimerOp::Set(t) => {
                    b.insert(&self.timers, entry_key(pipeline, t), t.payload.as_bytes());
                    b.insert(&self.timer_names, index, encode_place(t));
                    if existed.is_none() {
                        *counts.entry(key).or_default() += 1;
                    }
                }
                TimerOp::Cancel { .. } if existed.is_some() => {
                    b.remove(&self.timer_names, index);
                    *counts.entry(key).or_default() -= 1;
                }
                TimerOp::Cancel { .. } => {}
            }
        }
        for t in fired {
            b.remove(&self.timers, entry_key(pipeline, t));
            b.remove(&self.timer_names, names_key(pipeline, &t.key, &t.name));
            *counts.entry(&t.key).or_default() -= 1;
        }
        for (key, change) in counts {
            if change == 0 {
                continue;
            }
            let now = self.key_timer_count(pipeline, key)?;
            let count = names_prefix(pipeline, key);
            match now.saturating_add_signed(change) {
                0 => b.remove(&self.timer_names, count),
                n => b.insert(&self.timer_names, count, n.to_be_bytes().to_vec()),
            }
        }
        Ok(())
    }

    /// Whether the pipeline has ever set an event-time timer (then its
    /// events carry the partition's watermark).
    ///
    /// # Errors
    /// On an I/O error.
    pub fn uses_event_time(&self, pipeline: &str) -> Result<bool> {
        Ok(fj(
            "read meta",
            self.meta.get(join(&[b"event-time", pipeline.as_bytes()])),
        )?
        .is_some())
    }

    /// Puts partitions' new stream times into `b` (and, with `event_time`,
    /// the mark that the pipeline uses event time).
    pub(super) fn write_stream_times(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        times: &[(u32, i64)],
        event_time: bool,
    ) {
        if event_time {
            b.insert(
                &self.meta,
                join(&[b"event-time", pipeline.as_bytes()]),
                [1_u8].to_vec(),
            );
        }
        for (partition, ms) in times {
            b.insert(
                &self.meta,
                stream_time_key(pipeline, *partition),
                ms.to_be_bytes().to_vec(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::Commit;

    fn timer(key: &str, name: &str, domain: TimeDomain, partition: u32, at_ms: i64) -> Timer {
        Timer {
            key: key.into(),
            name: name.into(),
            partition,
            domain,
            at_ms,
            payload: format!("{{\"n\":{at_ms}}}"),
        }
    }

    #[test]
    fn timers_fall_due_in_order_replace_cancel_and_fire_once()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(dir.path(), Durability::Process)?;
        let set = |t: Timer| TimerOp::Set(t);
        s.commit(&Commit {
            pipeline: "p".into(),
            timers: vec![
                set(timer("b", "t", TimeDomain::Wall, 1, 30)),
                set(timer("a", "t", TimeDomain::Wall, 0, -5)),
                set(timer("a", "u", TimeDomain::Wall, 0, 20)),
                // Replaced in the same commit: only the last one stays.
                set(timer("c\0x", "t", TimeDomain::Wall, 0, 1)),
                set(timer("c\0x", "t", TimeDomain::Wall, 0, 10)),
                set(timer("a", "e", TimeDomain::Event, 0, 7)),
                set(timer("b", "e", TimeDomain::Event, 1, 3)),
            ],
            stream_times: vec![(1, 99)],
            ..Commit::default()
        })?;
        let due = |now| -> Result<Vec<(String, String, i64)>> {
            Ok(s.due_wall_timers("p", now, 100)?
                .0
                .into_iter()
                .map(|t| (t.key, t.name, t.at_ms))
                .collect())
        };
        assert_eq!(
            due(25)?,
            [
                ("a".into(), "t".into(), -5),
                ("c\0x".into(), "t".into(), 10),
                ("a".into(), "u".into(), 20)
            ]
        );
        assert_eq!(s.timer_count("p")?, 6);
        assert_eq!(s.key_timer_count("p", "a")?, 3);
        assert_eq!(s.due_event_timers("p", 0, 6, 10)?, (vec![], Some(7)));
        assert_eq!(s.due_event_timers("p", 0, 7, 10)?.0.len(), 1);
        assert_eq!(s.due_event_timers("p", 0, 7, 10)?.1, None);
        assert_eq!(s.due_wall_timers("p", 10, 1)?.1, Some(10));
        assert_eq!(s.due_wall_timers("p", 10, 2)?.1, Some(20));
        let payloads: Vec<String> = s
            .due_event_timers("p", 1, 7, 10)?
            .0
            .into_iter()
            .map(|t| t.payload)
            .collect();
        assert_eq!(payloads, ["{\"n\":3}"]);
        assert_eq!(s.stream_times("p", 2)?, [i64::MIN, 99]);
        // Replace a timer in a later commit, cancel another, fire a third.
        let (fired, _) = s.due_wall_timers("p", -5, 10)?;
        s.commit(&Commit {
            pipeline: "p".into(),
            timers: vec![
                set(timer("b", "t", TimeDomain::Wall, 1, 2)),
                TimerOp::Cancel {
                    key: "a".into(),
                    name: "u".into(),
                },
            ],
            timers_fired: fired,
            ..Commit::default()
        })?;
        assert_eq!(
            due(100)?,
            [("b".into(), "t".into(), 2), ("c\0x".into(), "t".into(), 10)]
        );
        assert_eq!(s.timer_count("p")?, 4);
        assert_eq!(
            (
                s.key_timer_count("p", "a")?,
                s.key_timer_count("p", "b")?,
                s.key_timer_count("p", "c\0x")?,
                s.key_timer_count("p", "d")?
            ),
            (1, 2, 1, 0)
        );
        let names: Vec<String> = s
            .key_timers("p", "a")?
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["e"]);
        assert!(s.has_timer("p", "b", "t")? && !s.has_timer("p", "a", "u")?);
        Ok(())
    }
}
