//! Event-time windows over a key's events — tumbling, hopping and session —
//! with a grace period, built on timers.
//!
//! A window is `[start, end)` over the events' timestamps. It stays open in
//! the key's state ([`Open`]) until its timer fires at `end + grace` on the
//! event-time clock (when the partition's watermark reaches it); then
//! [`Windows::close`] hands back its value, for the plugin to emit. An event
//! whose windows have all closed — `end + grace` at or before the watermark
//! the host sent with it (`eddy-watermark`, on every event once the
//! pipeline has set an event-time timer) — is late: [`Windows::add`]
//! fails it with a [`Failure::Invalid`] that the host dead-letters with the
//! class `late`.
//!
//! ```
//! use eddy_sdk::windows::{Open, Windows};
//! use eddy_sdk::{Aggregator, Event, Failure, Output, Timer};
//! use serde::{Deserialize, Serialize};
//!
//! // Clicks per user per minute, counted once a minute is 10 s old.
//! const MINUTES: Windows = Windows::tumbling(60_000).grace(10_000);
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Clicks { user: String, open: Open<u64> }
//!
//! struct PerMinute;
//!
//! impl Aggregator for PerMinute {
//!     type Event = serde_json::Value;
//!     type State = Clicks;
//!     fn init(key: &str) -> Clicks { Clicks { user: key.into(), open: Open::default() } }
//!     fn apply(s: &mut Clicks, e: Event<serde_json::Value>, out: &mut Output) -> Result<(), Failure> {
//!         MINUTES.add(&mut s.open, &e, out, |n| *n += 1)
//!     }
//!     fn on_timer(s: &mut Clicks, t: Timer, out: &mut Output) -> Result<(), Failure> {
//!         if let Some(w) = MINUTES.close(&mut s.open, &t) {
//!             out.emit("clicks-per-minute", Some(&s.user),
//!                 &serde_json::json!({"user": s.user, "start": w.start, "count": w.value}))?;
//!         }
//!         Ok(())
//!     }
//! }
//! ```

use serde::{Deserialize, Serialize};

use crate::{Event, Failure, Output, Timer, TimerTime};

/// The header carrying the partition's watermark on every event an
/// aggregator receives.
pub const WATERMARK_HEADER: &str = "eddy-watermark";

/// The watermark the host sent with `event` (`i64::MIN` when it sent none:
/// nothing is late then).
pub fn watermark<T>(event: &Event<T>) -> i64 {
    event
        .header(WATERMARK_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(i64::MIN)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tumbling { size: i64 },
    Hopping { size: i64, advance: i64 },
    Session { gap: i64 },
}

/// How a key's events are grouped in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    kind: Kind,
    grace: i64,
}

/// One open window and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window<A> {
    /// Its first instant (ms since the Unix epoch).
    pub start: i64,
    /// The instant after its last one.
    pub end: i64,
    /// What the plugin folded into it.
    pub value: A,
}

/// The open windows of a key, kept in its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Open<A> {
    /// By start.
    pub windows: Vec<Window<A>>,
}

impl<A> Default for Open<A> {
    fn default() -> Self {
        Open {
            windows: Vec::new(),
        }
    }
}

impl Windows {
    /// Windows of `size_ms` one after the other (each event in one).
    pub const fn tumbling(size_ms: i64) -> Self {
        Windows {
            kind: Kind::Tumbling { size: size_ms },
            grace: 0,
        }
    }

    /// Windows of `size_ms` starting every `advance_ms` (each event in
    /// `size / advance` of them).
    pub const fn hopping(size_ms: i64, advance_ms: i64) -> Self {
        Windows {
            kind: Kind::Hopping {
                size: size_ms,
                advance: advance_ms,
            },
            grace: 0,
        }
    }

    /// Sessions: a window grows while events come less than `gap_ms` apart;
    /// it ends `gap_ms` after its last event.
    pub const fn session(gap_ms: i64) -> Self {
        Windows {
            kind: Kind::Session { gap: gap_ms },
            grace: 0,
        }
    }

    /// Keeps each window open `grace_ms` past its end for late events.
    #[must_use]
    pub const fn grace(mut self, grace_ms: i64) -> Self {
        self.grace = grace_ms;
        self
    }

    fn timer_name(start: i64) -> String {
        format!("window@{start}")
    }

    /// The windows (start, end) of an event at `ts` (not sessions).
    fn spans(&self, ts: i64) -> Vec<(i64, i64)> {
        match self.kind {
            Kind::Tumbling { size } => {
                let size = size.max(1);
                let start = ts.div_euclid(size) * size;
                vec![(start, start.saturating_add(size))]
            }
            Kind::Hopping { size, advance } => {
                let (size, advance) = (size.max(1), advance.max(1));
                let mut start = ts.div_euclid(advance) * advance;
                let mut spans = Vec::new();
                while start > ts.saturating_sub(size) {
                    spans.push((start, start.saturating_add(size)));
                    start -= advance;
                }
                spans.reverse();
                spans
            }
            Kind::Session { gap } => vec![(ts, ts.saturating_add(gap.max(1)))],
        }
    }

    fn late(&self, end: i64, watermark: i64) -> bool {
        end.saturating_add(self.grace) <= watermark
    }

    /// Folds `event` (at its timestamp) into each of its windows with
    /// `fold`, opening a window (from `A::default()`) and setting its timer
    /// when it is new. For sessions use [`Windows::add_session`].
    ///
    /// # Errors
    /// A `late: ...` [`Failure::Invalid`] when all its windows have closed;
    /// [`Failure::Fatal`] when a timer cannot be set.
    pub fn add<A: Default, E>(
        &self,
        open: &mut Open<A>,
        event: &Event<E>,
        out: &mut Output,
        mut fold: impl FnMut(&mut A),
    ) -> Result<(), Failure> {
        let ts = event.timestamp_ms;
        let mark = watermark(event);
        let mut added = false;
        for (start, end) in self.spans(ts) {
            if self.late(end, mark) {
                continue;
            }
            let at = open.windows.partition_point(|w| w.start < start);
            if open.windows.get(at).is_none_or(|w| w.start != start) {
                open.windows.insert(
                    at,
                    Window {
                        start,
                        end,
                        value: A::default(),
                    },
                );
                self.set_timer(out, start, end)?;
            }
            if let Some(w) = open.windows.get_mut(at) {
                fold(&mut w.value);
                added = true;
            }
        }
        if added {
            Ok(())
        } else {
            Err(self.late_failure(ts, mark))
        }
    }

    /// Folds `event` into its session: a new one, or the open ones it falls
    /// within `gap` of, merged into one (with `merge`) and extended.
    ///
    /// # Errors
    /// A `late: ...` [`Failure::Invalid`] when its session has closed;
    /// [`Failure::Fatal`] when a timer cannot be set.
    pub fn add_session<A: Default, E>(
        &self,
        open: &mut Open<A>,
        event: &Event<E>,
        out: &mut Output,
        mut fold: impl FnMut(&mut A),
        mut merge: impl FnMut(&mut A, A),
    ) -> Result<(), Failure> {
        let Kind::Session { gap } = self.kind else {
            return self.add(open, event, out, fold);
        };
        let ts = event.timestamp_ms;
        let mark = watermark(event);
        let (mut start, mut end) = (ts, ts.saturating_add(gap.max(1)));
        // The sessions it joins: those whose span, widened by the gap
        // before it, holds it (a session ends a gap after its last event).
        let (touching, rest): (Vec<Window<A>>, Vec<Window<A>>) = std::mem::take(&mut open.windows)
            .into_iter()
            .partition(|w| w.start.saturating_sub(gap) <= ts && ts < w.end);
        open.windows = rest;
        for w in &touching {
            start = start.min(w.start);
            end = end.max(w.end);
        }
        if touching.is_empty() && self.late(end, mark) {
            return Err(self.late_failure(ts, mark));
        }
        let mut value = A::default();
        for w in touching {
            if w.start != start {
                out.cancel_timer(&Self::timer_name(w.start));
            }
            merge(&mut value, w.value);
        }
        fold(&mut value);
        // One timer per session, named by its start: set again at its end.
        self.set_timer(out, start, end)?;
        let at = open.windows.partition_point(|w| w.start < start);
        open.windows.insert(at, Window { start, end, value });
        Ok(())
    }

    fn set_timer(&self, out: &mut Output, start: i64, end: i64) -> Result<(), Failure> {
        out.set_timer(
            &Self::timer_name(start),
            TimerTime::Event,
            end.saturating_add(self.grace),
            &serde_json::json!({ "start": start, "end": end }),
        )
    }

    fn late_failure(&self, ts: i64, mark: i64) -> Failure {
        Failure::Invalid(format!(
            "late: an event at {ts} came after its window closed (watermark {mark}, grace {} ms)",
            self.grace
        ))
    }

    /// The window a fired timer closes, taken out of `open`; `None` for a
    /// timer that is not one of these windows'.
    pub fn close<A>(&self, open: &mut Open<A>, timer: &Timer) -> Option<Window<A>> {
        let start: i64 = timer.name.strip_prefix("window@")?.parse().ok()?;
        let at = open.windows.iter().position(|w| w.start == start)?;
        Some(open.windows.remove(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts: i64, watermark: Option<i64>) -> Event<()> {
        Event {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: ts,
            key: None,
            headers: watermark
                .map(|w| (WATERMARK_HEADER.to_owned(), w.to_string().into_bytes()))
                .into_iter()
                .collect(),
            schema_id: None,
            value: (),
        }
    }

    fn timer(start: i64) -> Timer {
        Timer {
            name: format!("window@{start}"),
            at_ms: 0,
            time: TimerTime::Event,
            payload: serde_json::Value::Null,
        }
    }

    #[test]
    fn tumbling_windows_count_and_close_and_late_events_fail() -> Result<(), Failure> {
        let w = Windows::tumbling(10).grace(5);
        let mut open = Open::<u32>::default();
        let mut out = Output::default();
        for ts in [3, 12, 7, -1] {
            w.add(&mut open, &event(ts, None), &mut out, |n| *n += 1)?;
        }
        let spans: Vec<(i64, i64, u32)> = open
            .windows
            .iter()
            .map(|w| (w.start, w.end, w.value))
            .collect();
        assert_eq!(spans, [(-10, 0, 1), (0, 10, 2), (10, 20, 1)]);
        // One timer per window opened, at end + grace.
        assert_eq!(out.emits().len(), 3);
        assert!(out.emits().iter().any(|e| e.value.contains("\"at_ms\":15")));
        let closed = w.close(&mut open, &timer(0)).map(|w| w.value);
        assert_eq!(closed, Some(2));
        assert!(w.close(&mut open, &timer(0)).is_none());
        // Watermark 15: [0, 10) closed (10 + 5 <= 15), [10, 20) not.
        let late = w.add(&mut open, &event(9, Some(15)), &mut out, |n| *n += 1);
        assert!(matches!(late, Err(Failure::Invalid(m)) if m.starts_with("late: ")));
        w.add(&mut open, &event(14, Some(15)), &mut out, |n| *n += 1)?;
        Ok(())
    }

    #[test]
    fn hopping_windows_take_an_event_in_each_window_that_holds_it() -> Result<(), Failure> {
        let w = Windows::hopping(10, 5);
        let mut open = Open::<u32>::default();
        let mut out = Output::default();
        w.add(&mut open, &event(7, None), &mut out, |n| *n += 1)?;
        let spans: Vec<(i64, i64)> = open.windows.iter().map(|w| (w.start, w.end)).collect();
        assert_eq!(spans, [(0, 10), (5, 15)]);
        // Watermark 12: [0, 10) closed, [5, 15) still takes it.
        w.add(&mut open, &event(8, Some(12)), &mut out, |n| *n += 1)?;
        assert_eq!(
            open.windows.iter().map(|w| w.value).collect::<Vec<_>>(),
            [1, 2]
        );
        Ok(())
    }

    #[test]
    fn sessions_grow_merge_and_move_their_timer() -> Result<(), Failure> {
        let w = Windows::session(20);
        let mut open = Open::<u32>::default();
        let mut out = Output::default();
        let add = |open: &mut Open<u32>, out: &mut Output, ts| {
            w.add_session(open, &event(ts, None), out, |n| *n += 1, |a, b| *a += b)
        };
        add(&mut open, &mut out, 0)?;
        add(&mut open, &mut out, 30)?;
        add(&mut open, &mut out, 5)?;
        let spans: Vec<(i64, i64, u32)> = open
            .windows
            .iter()
            .map(|w| (w.start, w.end, w.value))
            .collect();
        assert_eq!(spans, [(0, 25, 2), (30, 50, 1)]);
        // An event within the gap of both bridges them into one session.
        add(&mut open, &mut out, 22)?;
        let spans: Vec<(i64, i64, u32)> = open
            .windows
            .iter()
            .map(|w| (w.start, w.end, w.value))
            .collect();
        assert_eq!(spans, [(0, 50, 4)]);
        assert!(
            out.emits()
                .iter()
                .any(|e| e.value.contains("\"cancel\"") && e.value.contains("window@30"))
        );
        let late = w.add_session(
            &mut open,
            &event(100, Some(200)),
            &mut out,
            |n| *n += 1,
            |a, b| *a += b,
        );
        assert!(matches!(late, Err(Failure::Invalid(m)) if m.starts_with("late: ")));
        Ok(())
    }
}
