//! Stage 6, notify: tell SSE subscribers about committed state changes.
//!
//! Each pipeline has a broadcast channel and a history: the most recent
//! committed changes, in memory, so a client that reconnects with
//! `Last-Event-ID` gets exactly the changes it missed. Workers publish only
//! after the commit, so a client never sees a state that a crash could roll
//! back. A subscriber that falls behind loses its place in the channel, not
//! data: it catches up from the history, and from the store's index of each
//! key's latest change for anything older (see `http::sse`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::store::Change;

/// Per-pipeline broadcast and history of committed changes.
#[derive(Clone, Default)]
pub struct Hub {
    pipelines: Arc<HashMap<String, Channel>>,
}

struct Channel {
    live: broadcast::Sender<Arc<Change>>,
    history: Mutex<History>,
}

/// The most recent changes of a pipeline, contiguous in change number:
/// every change after `base` up to the newest is in `changes`.
struct History {
    changes: VecDeque<Arc<Change>>,
    /// The change number just before the oldest kept.
    base: u64,
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
    /// The changes after the client's position, oldest first (exact).
    Changes(Vec<Arc<Change>>),
    /// The history starts after the client's position: the changes up to and
    /// including `until` are no longer held (a restart, or more changes than
    /// the history keeps). Read them from the store, where each key's latest
    /// change is indexed; changes after `until` are in the history.
    Before {
        /// The newest change number the history does not cover.
        until: u64,
    },
}

fn cost(c: &Change) -> usize {
    c.key.len() + c.state.len() + 64
}

impl History {
    fn push(&mut self, change: Arc<Change>) {
        let newest = self.changes.back().map_or(self.base, |c| c.seq);
        if change.seq != newest + 1 {
            // A gap (change numbers moved on outside this pipeline's own
            // commits, as a replay's swap does): what is held is no longer
            // contiguous with what comes next.
            self.changes.clear();
            self.bytes = 0;
            self.base = change.seq.saturating_sub(1);
        }
        self.bytes += cost(&change);
        self.changes.push_back(change);
        while self.changes.len() > self.max_changes || self.bytes > HISTORY_MAX_BYTES {
            let Some(old) = self.changes.pop_front() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(cost(&old));
            self.base = old.seq;
        }
    }

    fn after(&self, seq: u64, max: usize) -> Missed {
        if seq < self.base {
            return Missed::Before { until: self.base };
        }
        // Contiguous: the change numbered n sits at index n - base - 1.
        let skip = usize::try_from(seq - self.base).unwrap_or(usize::MAX);
        Missed::Changes(self.changes.iter().skip(skip).take(max).cloned().collect())
    }
}

impl Hub {
    /// A hub with one channel per pipeline: its name, the last change number
    /// it committed before this start, and how many changes its history keeps.
    pub fn new<'a>(pipelines: impl IntoIterator<Item = (&'a str, u64, u64)>) -> Self {
        let pipelines = pipelines
            .into_iter()
            .map(|(name, last_seq, keep)| {
                let history = History {
                    changes: VecDeque::new(),
                    base: last_seq,
                    bytes: 0,
                    max_changes: usize::try_from(keep).unwrap_or(usize::MAX),
                };
                (
                    name.to_owned(),
                    Channel {
                        live: broadcast::channel(CHANNEL_CAPACITY).0,
                        history: Mutex::new(history),
                    },
                )
            })
            .collect();
        Hub {
            pipelines: Arc::new(pipelines),
        }
    }

    /// Publishes committed changes (in change-number order): kept in the
    /// history, and sent to the live subscribers.
    pub fn publish(&self, pipeline: &str, changes: &[Arc<Change>]) {
        let Some(ch) = self.pipelines.get(pipeline) else {
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

    /// Subscribes to a pipeline's changes.
    pub fn subscribe(&self, pipeline: &str) -> Option<broadcast::Receiver<Arc<Change>>> {
        self.pipelines.get(pipeline).map(|c| c.live.subscribe())
    }

    /// Up to `max` changes of a pipeline after change number `seq`, from the
    /// history; `None` for an unknown pipeline.
    pub fn missed(&self, pipeline: &str, seq: u64, max: usize) -> Option<Missed> {
        let ch = self.pipelines.get(pipeline)?;
        let history = crate::lock(&ch.history);
        Some(history.after(seq, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64, key: &str) -> Arc<Change> {
        Arc::new(Change {
            seq,
            key: key.to_owned(),
            state: format!("{{\"n\":{seq}}}"),
        })
    }

    fn seqs(m: Option<Missed>) -> Vec<u64> {
        match m {
            Some(Missed::Changes(v)) => v.iter().map(|c| c.seq).collect(),
            other => panic!("expected changes, got {other:?}"),
        }
    }

    #[test]
    fn history_serves_exactly_what_was_missed_and_says_where_it_starts() {
        let hub = Hub::new([("p", 10, 3)]);
        assert_eq!(seqs(hub.missed("p", 10, 100)), Vec::<u64>::new());
        assert_eq!(hub.missed("p", 4, 100), Some(Missed::Before { until: 10 }));
        hub.publish("p", &[change(11, "a"), change(12, "b")]);
        assert_eq!(seqs(hub.missed("p", 10, 100)), [11, 12]);
        assert_eq!(seqs(hub.missed("p", 11, 100)), [12]);
        assert_eq!(seqs(hub.missed("p", 10, 1)), [11]);
        // Keeps 3: 11 and 12 go, the history starts after 12.
        hub.publish("p", &[change(13, "a"), change(14, "c"), change(15, "a")]);
        assert_eq!(hub.missed("p", 11, 100), Some(Missed::Before { until: 12 }));
        assert_eq!(seqs(hub.missed("p", 12, 100)), [13, 14, 15]);
        // A gap in change numbers (a replay's swap) restarts the history.
        hub.publish("p", &[change(40, "a")]);
        assert_eq!(hub.missed("p", 15, 100), Some(Missed::Before { until: 39 }));
        assert_eq!(seqs(hub.missed("p", 39, 100)), [40]);
        assert_eq!(hub.missed("q", 0, 1), None);
    }

    #[test]
    fn history_is_bounded_by_bytes_too() {
        let hub = Hub::new([("p", 0, u64::MAX)]);
        let big = "x".repeat(1 << 20);
        for seq in 1..=100 {
            hub.publish(
                "p",
                &[Arc::new(Change {
                    seq,
                    key: "k".into(),
                    state: big.clone(),
                })],
            );
        }
        match hub.missed("p", 0, 1000) {
            Some(Missed::Before { until }) => {
                assert!((30..100).contains(&until), "{until}");
                assert_eq!(seqs(hub.missed("p", until, 1000)).len() as u64, 100 - until);
            }
            other => panic!("{other:?}"),
        }
    }
}
