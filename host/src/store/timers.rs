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
//!
//! In cluster mode a fired timer is also kept *in flight* until the batch
//! that folds it commits: pipeline `\0` `f` partition(u32) key-length(u32)
//! key name → domain tag, instant, payload. A partition assigned to this
//! host again puts its in-flight timers back (their records, fired under
//! the old epoch, are not folded), and the fold of one removes it.

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
        /// The key's input partition.
        partition: u32,
    },
}

impl TimerOp {
    fn id(&self) -> (&str, &str) {
        match self {
            TimerOp::Set(t) => (&t.key, &t.name),
            TimerOp::Cancel { key, name, .. } => (key, name),
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

/// pipeline `\0` tag: `w`/`e` (pending, by clock) or `f` (in flight).
fn tagged_prefix(pipeline: &str, tag: u8) -> Vec<u8> {
    let mut k = join(&[pipeline.as_bytes(), b""]);
    k.push(tag);
    k
}

fn domain_prefix(pipeline: &str, domain: TimeDomain) -> Vec<u8> {
    tagged_prefix(pipeline, domain.tag())
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

fn in_flight_prefix(pipeline: &str, partition: u32) -> Vec<u8> {
    let mut k = tagged_prefix(pipeline, b'f');
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn in_flight_key(pipeline: &str, partition: u32, key: &str, name: &str) -> Vec<u8> {
    let mut k = in_flight_prefix(pipeline, partition);
    key_and_name(&mut k, key, name);
    k
}

fn in_flight_value(t: &Timer) -> Vec<u8> {
    let mut v = vec![t.domain.tag()];
    v.extend_from_slice(&t.at_ms.to_be_bytes());
    v.extend_from_slice(t.payload.as_bytes());
    v
}

fn generation_key(pipeline: &str) -> Vec<u8> {
    join(&[b"timer-gen", pipeline.as_bytes()])
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
        self.due_wall_timers_of(pipeline, now_ms, limit, |_| true)
    }

    /// As [`Store::due_wall_timers`], of the partitions `keep` takes only
    /// (cluster mode: those this host owns); the others are passed over.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn due_wall_timers_of(
        &self,
        pipeline: &str,
        now_ms: i64,
        limit: usize,
        keep: impl Fn(u32) -> bool,
    ) -> Result<(Vec<Timer>, Option<i64>)> {
        let prefix = domain_prefix(pipeline, TimeDomain::Wall);
        Self::due(
            &self.timers,
            (&prefix, prefix.len()),
            TimeDomain::Wall,
            (now_ms, limit),
            keep,
        )
    }

    /// Up to `limit` timers under `prefix` (their keys read past `skip`
    /// bytes) due by `until_ms`, earliest first, of the partitions `keep`
    /// takes, and the instant of the first one after them.
    fn due(
        timers: &fjall::Keyspace,
        (prefix, skip): (&[u8], usize),
        domain: TimeDomain,
        (until_ms, limit): (i64, usize),
        keep: impl Fn(u32) -> bool,
    ) -> Result<(Vec<Timer>, Option<i64>)> {
        let mut out = Vec::new();
        for item in timers.prefix(prefix) {
            let (k, v) = fj("read timers", item.into_inner())?;
            let t = decode_entry(domain, k.get(skip..).unwrap_or_default(), &v)?;
            if !keep(t.partition) {
                continue;
            }
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
            (&event_prefix(pipeline, partition), skip),
            TimeDomain::Event,
            (until_ms, limit),
            |_| true,
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
        self.timer_count_of(pipeline, None)
    }

    /// How many timers a pipeline has pending in the partitions `keep`
    /// takes (`None`: all).
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn timer_count_of(
        &self,
        pipeline: &str,
        keep: Option<&dyn Fn(u32) -> bool>,
    ) -> Result<u64> {
        let prefix = join(&[pipeline.as_bytes(), b""]);
        let mut n = 0;
        for item in self.timer_names.prefix(&prefix) {
            let (k, place) = fj("read timer names", item.into_inner())?;
            // Past the prefix: key length, key, name (empty: the count).
            let mut r = Reader(k.get(prefix.len()..).unwrap_or_default());
            let key_len = r.array().map(u32::from_be_bytes).unwrap_or(0) as usize;
            if r.0.len() <= key_len {
                continue;
            }
            if let Some(keep) = keep {
                let partition = Reader(place.get(1..).unwrap_or_default())
                    .array()
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| corrupt("place"))?;
                if !keep(partition) {
                    continue;
                }
            }
            n += 1;
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
    /// Then removes the timers that fired (cluster mode: keeping them in
    /// flight, `keep_in_flight`), and moves the keys' counts.
    pub(super) fn write_timers(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        ops: &[TimerOp],
        (fired, keep_in_flight): (&[Timer], bool),
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
            if keep_in_flight {
                b.insert(
                    &self.timers,
                    in_flight_key(pipeline, t.partition, &t.key, &t.name),
                    in_flight_value(t),
                );
            }
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

    /// Puts the removal of fired timers' in-flight entries into `b`: their
    /// fold commits (cluster mode). Each is (partition, key, name).
    pub(super) fn write_timers_landed(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        landed: &[(u32, String, String)],
    ) {
        for (partition, key, name) in landed {
            b.remove(&self.timers, in_flight_key(pipeline, *partition, key, name));
        }
    }

    /// Cluster mode, a partition assigned to this host again: its timers
    /// that fired but were not folded are pending again (they fire anew,
    /// under the new epoch), unless a timer of the same name is pending.
    /// Returns how many.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry; nothing is changed then.
    pub fn requeue_in_flight(&self, pipeline: &str, partition: u32) -> Result<usize> {
        let prefix = in_flight_prefix(pipeline, partition);
        let mut again = Vec::new();
        let mut b = self.batch();
        for item in self.timers.prefix(&prefix) {
            let (k, v) = fj("read timers", item.into_inner())?;
            b.remove(&self.timers, k.to_vec());
            let mut r = Reader(k.get(prefix.len()..).unwrap_or_default());
            let key = r.bytes().ok_or_else(|| corrupt("in-flight key"))?;
            let (key, name) = (
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(r.0).into_owned(),
            );
            let mut v = Reader(&v);
            let (Some([tag]), Some(at)) = (v.array::<1>(), v.array().map(i64::from_be_bytes))
            else {
                return Err(corrupt("in-flight value"));
            };
            if self.has_timer(pipeline, &key, &name)? {
                continue;
            }
            again.push(TimerOp::Set(Timer {
                key,
                name,
                partition,
                domain: TimeDomain::of_tag(tag).ok_or_else(|| corrupt("domain"))?,
                at_ms: at,
                payload: String::from_utf8_lossy(v.0).into_owned(),
            }));
        }
        self.write_timers(&mut b, pipeline, &again, (&[], false))?;
        fj("requeue in-flight timers", b.commit())?;
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(again.len())
    }

    /// Every pending timer of a partition (what a host publishes to a state
    /// changelog that does not hold them yet).
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn partition_timers(&self, pipeline: &str, partition: u32) -> Result<Vec<Timer>> {
        let mut out = Vec::new();
        self.each_partition_timer(pipeline, partition, |t| out.push(t))?;
        Ok(out)
    }

    /// Calls `f` with each pending timer of a partition (payloads empty):
    /// the names index, which spans partitions, is walked.
    fn each_partition_timer(
        &self,
        pipeline: &str,
        partition: u32,
        mut f: impl FnMut(Timer),
    ) -> Result<()> {
        let prefix = join(&[pipeline.as_bytes(), b""]);
        for item in self.timer_names.prefix(&prefix) {
            let (k, place) = fj("read timer names", item.into_inner())?;
            let mut r = Reader(k.get(prefix.len()..).unwrap_or_default());
            let key = r.bytes().ok_or_else(|| corrupt("name key"))?;
            if r.0.is_empty() {
                continue; // the key's count
            }
            let (key, name) = (String::from_utf8_lossy(key), String::from_utf8_lossy(r.0));
            let probe = place_of(&key, &name, &place)?;
            if probe.partition != partition {
                continue;
            }
            if let Some(t) = self.timer_at(pipeline, &key, &name, &place)? {
                f(t);
            }
        }
        Ok(())
    }

    /// Puts the removal of everything a partition holds of timers into
    /// `b`: pending timers, their names and counts, in-flight ones, its
    /// stream time.
    pub(super) fn drop_partition_timers(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        partition: u32,
    ) -> Result<()> {
        let mut keys = std::collections::HashSet::new();
        let mut gone = Vec::new();
        self.each_partition_timer(pipeline, partition, |t| gone.push(t))?;
        for t in gone {
            b.remove(&self.timers, entry_key(pipeline, &t));
            b.remove(&self.timer_names, names_key(pipeline, &t.key, &t.name));
            keys.insert(t.key);
        }
        // A key's timers all live in its partition: its count goes too.
        for key in keys {
            b.remove(&self.timer_names, names_prefix(pipeline, &key));
        }
        for item in self.timers.prefix(in_flight_prefix(pipeline, partition)) {
            b.remove(&self.timers, fj("read timers", item.key())?.to_vec());
        }
        b.remove(&self.meta, stream_time_key(pipeline, partition));
        Ok(())
    }

    /// The pipeline's timer generation: moved on by a replay's switch-over,
    /// so timers fired before it (and not folded yet) are not folded into
    /// the rebuilt states, whose own timers replace them.
    ///
    /// # Errors
    /// On an I/O error or a corrupt entry.
    pub fn timer_generation(&self, pipeline: &str) -> Result<u64> {
        self.meta_u64("timer-gen", pipeline)
    }

    /// Puts the removal of a namespace's timers (pending, in flight, their
    /// names and counts), stream times and event-time mark into `b`.
    pub(super) fn clear_timers(&self, b: &mut OwnedWriteBatch, ns: &str) -> Result<()> {
        let prefix = join(&[ns.as_bytes(), b""]);
        for ks in [&self.timers, &self.timer_names] {
            for item in ks.prefix(&prefix) {
                b.remove(ks, fj("clear timers", item.key())?.to_vec());
            }
        }
        for item in self
            .meta
            .prefix(join(&[b"stream-time", ns.as_bytes(), b""]))
        {
            b.remove(&self.meta, fj("clear timers", item.key())?.to_vec());
        }
        b.remove(&self.meta, join(&[b"event-time", ns.as_bytes()]));
        Ok(())
    }

    /// A replay's switch-over: puts into `b` the replacement of the
    /// pipeline's timers, stream times and event-time mark by those
    /// rebuilt under `ns` (emptied), and moves the timer generation on.
    pub(super) fn swap_timers(
        &self,
        b: &mut OwnedWriteBatch,
        pipeline: &str,
        ns: &str,
    ) -> Result<()> {
        let (live, rebuilt) = (
            join(&[pipeline.as_bytes(), b""]),
            join(&[ns.as_bytes(), b""]),
        );
        let moved = |k: &[u8], from: &[u8], to: &[u8]| -> Vec<u8> {
            let mut out = to.to_vec();
            out.extend_from_slice(k.get(from.len()..).unwrap_or_default());
            out
        };
        // A key is written once per batch: live entries the rebuild also
        // has are overwritten, not removed.
        for ks in [&self.timers, &self.timer_names] {
            let mut kept = std::collections::HashSet::new();
            for item in ks.prefix(&rebuilt) {
                let (k, v) = fj("swap timers", item.into_inner())?;
                let to = moved(&k, &rebuilt, &live);
                b.remove(ks, k.to_vec());
                b.insert(ks, to.clone(), v.to_vec());
                kept.insert(to);
            }
            for item in ks.prefix(&live) {
                let k = fj("swap timers", item.key())?;
                if !kept.contains(k.as_ref()) {
                    b.remove(ks, k.to_vec());
                }
            }
        }
        let (live_times, rebuilt_times) = (
            join(&[b"stream-time", pipeline.as_bytes(), b""]),
            join(&[b"stream-time", ns.as_bytes(), b""]),
        );
        let mut kept = std::collections::HashSet::new();
        for item in self.meta.prefix(&rebuilt_times) {
            let (k, v) = fj("swap timers", item.into_inner())?;
            let to = moved(&k, &rebuilt_times, &live_times);
            b.remove(&self.meta, k.to_vec());
            b.insert(&self.meta, to.clone(), v.to_vec());
            kept.insert(to);
        }
        for item in self.meta.prefix(&live_times) {
            let k = fj("swap timers", item.key())?;
            if !kept.contains(k.as_ref()) {
                b.remove(&self.meta, k.to_vec());
            }
        }
        if self.uses_event_time(ns)? {
            b.remove(&self.meta, join(&[b"event-time", ns.as_bytes()]));
            b.insert(
                &self.meta,
                join(&[b"event-time", pipeline.as_bytes()]),
                [1_u8].to_vec(),
            );
        }
        let next = self.timer_generation(pipeline)?.saturating_add(1);
        b.insert(
            &self.meta,
            generation_key(pipeline),
            next.to_be_bytes().to_vec(),
        );
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
                    partition: 0,
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

    /// Cluster mode: fired timers stay in flight until folded; a partition
    /// assigned again puts them back; restored timers replace and cancel by
    /// name; dropping a partition drops its timers alone.
    #[test]
    fn in_flight_timers_come_back_and_a_partition_moves_whole()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(dir.path(), Durability::Process)?;
        let set = |t: Timer| TimerOp::Set(t);
        s.commit(&Commit {
            pipeline: "p".into(),
            timers: vec![
                set(timer("a", "t", TimeDomain::Wall, 0, 10)),
                set(timer("a", "u", TimeDomain::Wall, 0, 20)),
                set(timer("b", "t", TimeDomain::Event, 1, 5)),
                set(timer("c", "t", TimeDomain::Wall, 1, 15)),
            ],
            stream_times: vec![(0, 50), (1, 60)],
            ..Commit::default()
        })?;
        let only = |p: u32| move |q: u32| q == p;
        assert_eq!(s.timer_count_of("p", Some(&only(0)))?, 2);
        assert_eq!(s.timer_count_of("p", Some(&only(1)))?, 2);
        // Partition 1's wall timers are passed over.
        let (due, _) = s.due_wall_timers_of("p", 100, 10, only(0))?;
        assert_eq!(due.len(), 2);
        // Fired in flight; a's first lands (folded), its second does not.
        s.commit(&Commit {
            pipeline: "p".into(),
            timers_fired: due,
            timers_in_flight: true,
            ..Commit::default()
        })?;
        assert_eq!(s.timer_count("p")?, 2);
        s.commit(&Commit {
            pipeline: "p".into(),
            timers_landed: vec![(0, "a".into(), "t".into())],
            ..Commit::default()
        })?;
        assert_eq!(s.requeue_in_flight("p", 0)?, 1);
        assert_eq!(s.requeue_in_flight("p", 0)?, 0, "moved back once");
        let names: Vec<String> = s
            .key_timers("p", "a")?
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["u"]);
        assert_eq!(s.key_timer_count("p", "a")?, 1);
        // Partition 1 restored from a changelog: b's timer replaced, c's
        // cancelled, a new one for d, and the stream time.
        assert_eq!(s.drop_partition("p", "t", (1, 2))?, 0);
        assert_eq!(s.timer_count("p")?, 1, "partition 1's timers went");
        assert_eq!(s.key_timer_count("p", "c")?, 0);
        assert_eq!(s.stream_times("p", 2)?, [50, i64::MIN]);
        s.apply_restored(&crate::store::Restored {
            pipeline: "p".into(),
            topic: "t".into(),
            partition: 1,
            timers: vec![
                set(timer("b", "t", TimeDomain::Event, 1, 5)),
                set(timer("c", "t", TimeDomain::Wall, 1, 15)),
                set(timer("b", "t", TimeDomain::Event, 1, 7)),
                TimerOp::Cancel {
                    key: "c".into(),
                    name: "t".into(),
                    partition: 1,
                },
                set(timer("d", "t", TimeDomain::Wall, 1, 30)),
            ],
            stream_time: Some(61),
            ..crate::store::Restored::default()
        })?;
        assert_eq!(s.timer_count_of("p", Some(&only(1)))?, 2);
        let event: Vec<i64> = s
            .due_event_timers("p", 1, 100, 10)?
            .0
            .iter()
            .map(|t| t.at_ms)
            .collect();
        assert_eq!(event, [7]);
        assert_eq!(s.key_timer_count("p", "c")?, 0);
        assert_eq!(s.stream_times("p", 2)?, [50, 61]);
        assert!(s.uses_event_time("p")?);
        let published: Vec<String> = s
            .partition_timers("p", 1)?
            .into_iter()
            .map(|t| format!("{}/{}@{}", t.key, t.name, t.at_ms))
            .collect();
        assert_eq!(published.len(), 2);
        assert!(published.contains(&"d/t@30".to_owned()), "{published:?}");
        Ok(())
    }

    /// A replay's switch-over replaces the live timers and stream times
    /// with the rebuilt ones, empties the namespace and moves the
    /// generation on.
    #[test]
    fn a_switch_over_replaces_the_live_timers_with_the_rebuilt()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(dir.path(), Durability::Process)?;
        let set = |t: Timer| TimerOp::Set(t);
        s.commit(&Commit {
            pipeline: "p".into(),
            timers: vec![
                set(timer("a", "t", TimeDomain::Wall, 0, 10)),
                set(timer("b", "t", TimeDomain::Wall, 0, 20)),
            ],
            stream_times: vec![(0, 5), (1, 6)],
            ..Commit::default()
        })?;
        s.commit(&Commit {
            pipeline: "p@replay".into(),
            timers: vec![
                set(timer("a", "t", TimeDomain::Wall, 0, 11)),
                set(timer("c", "t", TimeDomain::Event, 1, 30)),
            ],
            stream_times: vec![(1, 40)],
            uses_event_time: true,
            ..Commit::default()
        })?;
        assert_eq!(s.timer_generation("p")?, 0);
        s.swap_rebuilt(&crate::store::Swap {
            pipeline: "p".into(),
            ns: "p@replay".into(),
            ..crate::store::Swap::default()
        })?;
        let due: Vec<(String, i64)> = s
            .due_wall_timers("p", 100, 10)?
            .0
            .into_iter()
            .map(|t| (t.key, t.at_ms))
            .collect();
        assert_eq!(due, [("a".to_owned(), 11)]);
        assert_eq!(s.key_timer_count("p", "b")?, 0);
        assert_eq!(s.key_timer_count("p", "c")?, 1);
        assert_eq!(s.timer_count("p")?, 2);
        assert_eq!(s.stream_times("p", 2)?, [i64::MIN, 40]);
        assert!(s.uses_event_time("p")?);
        assert_eq!(s.timer_generation("p")?, 1);
        assert_eq!(s.timer_count("p@replay")?, 0);
        assert_eq!(s.stream_times("p@replay", 2)?, [i64::MIN, i64::MIN]);
        Ok(())
    }
}
