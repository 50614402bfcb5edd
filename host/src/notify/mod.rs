//! Stage 7, notify: tell SSE subscribers about committed state changes.
//!
//! Each pipeline has a broadcast channel and a history: the most recent
//! committed changes, in memory, so a client that reconnects with
//! `Last-Event-ID` gets exactly the changes it missed. Workers publish only
//! after the commit, so a client never sees a state that a crash could roll
//! back. A subscriber that falls behind loses its place in the channel, not
//! data: it catches up from the history, and from the store's index of each
//! key's latest change for anything older (see `http::sse`).
//!
//! Change numbers count per input partition, so where a client stands is a
//! [`Position`]: the last change number it has of each partition.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::store::Change;

/// Where a client stands: per partition, the last change number it has.
/// As an SSE event id: the numbers joined with `.` (`12.0.7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position(pub Vec<u64>);

impl Position {
    /// Reads an event id for a pipeline of `partitions` partitions: missing
    /// trailing numbers are 0 (a plain number, as ids were before change
    /// numbers counted per partition, is partition 0's); `None` when it is
    /// not numbers or has more of them than there are partitions.
    pub fn parse(id: &str, partitions: u32) -> Option<Position> {
        let mut v: Vec<u64> = id
            .trim()
            .split('.')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        if v.len() > partitions as usize {
            return None;
        }
        v.resize(partitions as usize, 0);
        Some(Position(v))
    }

    /// Its event id.
    pub fn id(&self) -> String {
        let mut s = String::with_capacity(self.0.len() * 4);
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            s.push_str(&n.to_string());
        }
        s
    }

    /// The last change number of `partition` it has.
    pub fn of(&self, partition: u32) -> u64 {
        self.0.get(partition as usize).copied().unwrap_or(0)
    }

    /// Moves `partition` on to `seq`.
    pub fn set(&mut self, partition: u32, seq: u64) {
        if let Some(n) = self.0.get_mut(partition as usize) {
            *n = seq;
        }
    }
}

/// Per-pipeline broadcast and history of committed changes.
#[derive(Clone, Default)]
pub struct Hub {
    /// Swapped whole when a config reload adds or removes a pipeline.
    pipelines: Arc<arc_swap::ArcSwap<HashMap<String, Arc<Channel>>>>,
}

struct Channel {
    live: broadcast::Sender<Arc<Change>>,
    history: Mutex<History>,
}

impl Channel {
    fn new(last_seqs: Vec<u64>, keep: u64) -> Arc<Channel> {
        Arc::new(Channel {
            live: broadcast::channel(CHANNEL_CAPACITY).0,
            history: Mutex::new(History {
                changes: VecDeque::new(),
                newest: last_seqs.clone(),
                base: last_seqs,
                bytes: 0,
                max_changes: usize::try_from(keep).unwrap_or(usize::MAX),
            }),
        })
    }
}

/// The most recent changes of a pipeline in commit order, contiguous in
/// each partition's change numbers: every change of partition p after
/// `base[p]` up to the newest is in `changes`.
struct History {
    changes: VecDeque<Arc<Change>>,
    /// Per partition, the change number just before the oldest kept.
    base: Vec<u64>,
    /// Per partition, the newest change number held (or `base`).
    newest: Vec<u64>,
    bytes: usize,
    max_changes: usize,
}

/// Live changes buffered per pipeline before slow subscribers fall back to
/// the history.
const CHANNEL_CAPACITY: usize = 1024;

/// Most bytes of states a pipeline's history holds, whatever its
/// `sse_history`: older changes are served from the store, compacted.
pub const HISTORY_MAX_BYTES: usize = 64 << 20;

/// Where a client catching up stands against a pipeline's history.
#[derive(Debug, PartialEq, Eq)]
pub enum Missed {
    /// The changes after the client's position, in commit order (exact).
    Changes(Vec<Arc<Change>>),
    /// The history of `partition` starts after the client's position: its
    /// changes up to and including `until` are no longer held (a restart,
    /// or more changes than the history keeps). Read them from the store,
    /// where each key's latest change is indexed; later ones are in the
    /// history.
    Before {
        /// The partition.
        partition: u32,
        /// The newest change number the history does not cover.
        until: u64,
    },
}

fn cost(c: &Change) -> usize {
    c.key.len() + c.state.len() + 64
}

impl History {
    fn push(&mut self, change: Arc<Change>) {
        let p = change.partition as usize;
        if p >= self.newest.len() {
            return;
        }
        let newest = self.newest.get(p).copied().unwrap_or(0);
        if change.seq != newest + 1 {
            // A gap (change numbers moved on outside this pipeline's own
            // commits, as a replay's swap does): what is held is no longer
            // contiguous with what comes next.
            self.changes.clear();
            self.bytes = 0;
            self.base.clone_from(&self.newest);
            if let Some(b) = self.base.get_mut(p) {
                *b = change.seq.saturating_sub(1);
            }
        }
        if let Some(n) = self.newest.get_mut(p) {
            *n = change.seq;
        }
        self.bytes += cost(&change);
        self.changes.push_back(change);
        while self.changes.len() > self.max_changes || self.bytes > HISTORY_MAX_BYTES {
            let Some(old) = self.changes.pop_front() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(cost(&old));
            if let Some(b) = self.base.get_mut(old.partition as usize) {
                *b = old.seq;
            }
        }
    }

    /// Forgets what is held of `partition`: its states were replaced up to
    /// change `seq` from outside the pipeline's commits (a restore).
    fn reset(&mut self, partition: u32, seq: u64) {
        let p = partition as usize;
        if p >= self.newest.len() {
            return;
        }
        let mut bytes = self.bytes;
        self.changes.retain(|c| {
            let keep = c.partition != partition;
            if !keep {
                bytes = bytes.saturating_sub(cost(c));
            }
            keep
        });
        self.bytes = bytes;
        if let Some(b) = self.base.get_mut(p) {
            *b = seq;
        }
        if let Some(n) = self.newest.get_mut(p) {
            *n = seq;
        }
    }

    fn after(&self, at: &Position, max: usize) -> Missed {
        for (p, base) in self.base.iter().enumerate() {
            let p = u32::try_from(p).unwrap_or(u32::MAX);
            if at.of(p) < *base {
                return Missed::Before {
                    partition: p,
                    until: *base,
                };
            }
        }
        Missed::Changes(
            self.changes
                .iter()
                .filter(|c| c.seq > at.of(c.partition))
                .take(max)
                .cloned()
                .collect(),
        )
    }
}

impl Hub {
    /// A hub with one channel per pipeline: its name, the last change
    /// number of each partition before this start, and how many changes its
    /// history keeps.
    pub fn new<'a>(pipelines: impl IntoIterator<Item = (&'a str, Vec<u64>, u64)>) -> Self {
        let pipelines = pipelines
            .into_iter()
            .map(|(name, last_seqs, keep)| (name.to_owned(), Channel::new(last_seqs, keep)))
            .collect();
        Hub {
            pipelines: Arc::new(arc_swap::ArcSwap::from_pointee(pipelines)),
        }
    }

    /// A config reload added `pipeline` (or kept it): it gets a channel
    /// unless it has one.
    pub fn add(&self, pipeline: &str, last_seqs: Vec<u64>, keep: u64) {
        self.pipelines.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(pipeline.to_owned())
                .or_insert_with(|| Channel::new(last_seqs.clone(), keep));
            map
        });
    }

    /// A config reload removed `pipeline`: its channel closes, which ends
    /// its subscribers' streams.
    pub fn remove(&self, pipeline: &str) {
        self.pipelines.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(pipeline);
            map
        });
    }

    fn channel(&self, pipeline: &str) -> Option<Arc<Channel>> {
        self.pipelines.load().get(pipeline).cloned()
    }

    /// Publishes committed changes (in commit order): kept in the history,
    /// and sent to the live subscribers.
    pub fn publish(&self, pipeline: &str, changes: &[Arc<Change>]) {
        let Some(ch) = self.channel(pipeline) else {
            return;
        };
        {
            let mut history = crate::lock(&ch.history);
            for c in changes {
                history.push(c.clone());
            }
        }
        if ch.live.receiver_count() > 0 {
            for c in changes {
                let _ = ch.live.send(c.clone());
            }
        }
    }

    /// A partition's states were restored up to change `seq` (it came from
    /// another host): its changes are read from the store up to there.
    pub fn restored(&self, pipeline: &str, partition: u32, seq: u64) {
        if let Some(ch) = self.channel(pipeline) {
            crate::lock(&ch.history).reset(partition, seq);
        }
    }

    /// Subscribes to a pipeline's changes.
    pub fn subscribe(&self, pipeline: &str) -> Option<broadcast::Receiver<Arc<Change>>> {
        self.channel(pipeline).map(|c| c.live.subscribe())
    }

    /// Up to `max` changes of a pipeline after position `at`, from the
    /// history; `None` for an unknown pipeline.
    pub fn missed(&self, pipeline: &str, at: &Position, max: usize) -> Option<Missed> {
        let ch = self.channel(pipeline)?;
        let history = crate::lock(&ch.history);
        Some(history.after(at, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(partition: u32, seq: u64, key: &str) -> Arc<Change> {
        Arc::new(Change {
            partition,
            seq,
            stamp_us: 0,
            key: key.to_owned(),
            state: crate::store::State::json(format!("{{\"n\":{seq}}}")),
            version: 0,
        })
    }

    fn seqs(m: Option<Missed>) -> Vec<(u32, u64)> {
        match m {
            Some(Missed::Changes(v)) => v.iter().map(|c| (c.partition, c.seq)).collect(),
            other => panic!("expected changes, got {other:?}"),
        }
    }

    fn at(v: &[u64]) -> Position {
        Position(v.to_vec())
    }

    #[test]
    fn history_serves_exactly_what_was_missed_and_says_where_it_starts() {
        let hub = Hub::new([("p", vec![10, 0], 3)]);
        assert!(seqs(hub.missed("p", &at(&[10, 0]), 100)).is_empty());
        assert_eq!(
            hub.missed("p", &at(&[4, 0]), 100),
            Some(Missed::Before {
                partition: 0,
                until: 10
            })
        );
        hub.publish("p", &[change(0, 11, "a"), change(1, 1, "b")]);
        assert_eq!(seqs(hub.missed("p", &at(&[10, 0]), 100)), [(0, 11), (1, 1)]);
        assert_eq!(seqs(hub.missed("p", &at(&[11, 0]), 100)), [(1, 1)]);
        assert_eq!(seqs(hub.missed("p", &at(&[10, 1]), 100)), [(0, 11)]);
        assert_eq!(seqs(hub.missed("p", &at(&[10, 0]), 1)), [(0, 11)]);
        // Keeps 3: (0, 11) and (1, 1) go, the history starts after them.
        hub.publish(
            "p",
            &[change(0, 12, "a"), change(1, 2, "c"), change(0, 13, "a")],
        );
        assert_eq!(
            hub.missed("p", &at(&[10, 2]), 100),
            Some(Missed::Before {
                partition: 0,
                until: 11
            })
        );
        assert_eq!(
            hub.missed("p", &at(&[11, 0]), 100),
            Some(Missed::Before {
                partition: 1,
                until: 1
            })
        );
        assert_eq!(
            seqs(hub.missed("p", &at(&[11, 1]), 100)),
            [(0, 12), (1, 2), (0, 13)]
        );
        // A gap in change numbers (a replay's swap) restarts the history.
        hub.publish("p", &[change(0, 40, "a")]);
        assert_eq!(
            hub.missed("p", &at(&[13, 2]), 100),
            Some(Missed::Before {
                partition: 0,
                until: 39
            })
        );
        assert_eq!(seqs(hub.missed("p", &at(&[39, 2]), 100)), [(0, 40)]);
        assert_eq!(hub.missed("q", &at(&[0]), 1), None);
    }

    #[test]
    fn a_restored_partition_is_read_from_the_store_up_to_its_restore() {
        let hub = Hub::new([("p", vec![0, 0], 100)]);
        hub.publish("p", &[change(0, 1, "a"), change(1, 1, "b")]);
        // Partition 1 came from another host with 500 changes: a client at
        // 300 is sent 301..=500 from the store, the rest from the history.
        hub.restored("p", 1, 500);
        assert_eq!(
            hub.missed("p", &at(&[1, 300]), 100),
            Some(Missed::Before {
                partition: 1,
                until: 500
            })
        );
        assert_eq!(seqs(hub.missed("p", &at(&[0, 500]), 100)), [(0, 1)]);
        hub.publish("p", &[change(1, 501, "b")]);
        assert_eq!(seqs(hub.missed("p", &at(&[1, 500]), 100)), [(1, 501)]);
        assert_eq!(
            seqs(hub.missed("p", &at(&[0, 500]), 100)),
            [(0, 1), (1, 501)]
        );
    }

    #[test]
    fn history_is_bounded_by_bytes_too() {
        let hub = Hub::new([("p", vec![0], u64::MAX)]);
        let big = "x".repeat(1 << 20);
        for seq in 1..=100 {
            hub.publish(
                "p",
                &[Arc::new(Change {
                    partition: 0,
                    seq,
                    stamp_us: 0,
                    key: "k".into(),
                    state: crate::store::State::json(big.clone()),
                    version: 0,
                })],
            );
        }
        match hub.missed("p", &at(&[0]), 1000) {
            Some(Missed::Before { until, .. }) => {
                assert!((30..100).contains(&until), "{until}");
                assert_eq!(
                    seqs(hub.missed("p", &at(&[until]), 1000)).len() as u64,
                    100 - until
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn positions_read_and_write_as_event_ids() {
        assert_eq!(Position::parse("12.0.7", 3), Some(at(&[12, 0, 7])));
        assert_eq!(Position::parse("5", 3), Some(at(&[5, 0, 0])));
        assert_eq!(Position::parse("1.2.3.4", 3), None);
        assert_eq!(Position::parse("x", 3), None);
        assert_eq!(Position::parse("1..2", 3), None);
        assert_eq!(at(&[12, 0, 7]).id(), "12.0.7");
    }

    /// A reload adds a channel without touching the others' histories,
    /// and a removed pipeline's subscribers see their channel close.
    #[test]
    fn channels_come_and_go_with_a_reload() {
        let hub = Hub::new([("p", vec![0], 10)]);
        hub.publish("p", &[change(0, 1, "a")]);
        let mut old = hub.subscribe("p").expect("p has a channel");
        hub.add("q", vec![5, 0], 10);
        hub.add("p", vec![99], 10);
        assert_eq!(seqs(hub.missed("p", &at(&[0]), 10)), [(0, 1)]);
        hub.publish("q", &[change(1, 1, "b")]);
        assert_eq!(seqs(hub.missed("q", &at(&[5, 0]), 10)), [(1, 1)]);
        hub.remove("p");
        assert!(hub.subscribe("p").is_none());
        assert!(hub.missed("p", &at(&[0]), 10).is_none());
        assert!(matches!(
            old.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
    }
}
