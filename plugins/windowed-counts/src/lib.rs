//! Counts each key's events per event-time window and emits every window's
//! count when it closes: `{"key", "start", "end", "count"}` to
//! `WINDOW_TOPIC` (default `window-counts`), keyed by the key.
//!
//! Settings, granted to the plugin in `[plugin.grants.env]`:
//! - `WINDOW_KIND`: `tumbling` (default), `hopping` or `session`;
//! - `WINDOW_SIZE_MS` (default 60000), `WINDOW_ADVANCE_MS` (hopping,
//!   default a quarter of the size), `SESSION_GAP_MS` (default 30000);
//! - `WINDOW_GRACE_MS` (default 10000): how long past its end a window
//!   still takes late events. Later ones are dead letters of class `late`.
//!
//! Windows follow the records' timestamps, and close when the partition's
//! watermark passes their end plus the grace (an event-time timer).

use std::sync::OnceLock;

use eddy_sdk::windows::{Open, Windows};
use eddy_sdk::{Aggregator, Event, Failure, Output, Timer};
use serde::{Deserialize, Serialize};

/// Where counts go and how events are windowed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The windows.
    pub windows: Windows,
    /// Whether they are sessions.
    pub sessions: bool,
    /// The topic counts are emitted to.
    pub topic: String,
}

impl Settings {
    /// From the plugin's environment (once).
    ///
    /// A setting that does not parse falls back to its default.
    pub fn from_env() -> &'static Settings {
        static SETTINGS: OnceLock<Settings> = OnceLock::new();
        SETTINGS.get_or_init(|| {
            let num = |name: &str, default: i64| {
                eddy_sdk::env(name)
                    .and_then(|v| v.trim().parse().ok())
                    .filter(|v: &i64| *v > 0)
                    .unwrap_or(default)
            };
            let size = num("WINDOW_SIZE_MS", 60_000);
            let grace = eddy_sdk::env("WINDOW_GRACE_MS")
                .and_then(|v| v.trim().parse().ok())
                .filter(|v: &i64| *v >= 0)
                .unwrap_or(10_000);
            let kind = eddy_sdk::env("WINDOW_KIND").unwrap_or_default();
            let (windows, sessions) = match kind.trim() {
                "hopping" => (
                    Windows::hopping(size, num("WINDOW_ADVANCE_MS", (size / 4).max(1))),
                    false,
                ),
                "session" => (Windows::session(num("SESSION_GAP_MS", 30_000)), true),
                _ => (Windows::tumbling(size), false),
            };
            Settings {
                windows: windows.grace(grace),
                sessions,
                topic: eddy_sdk::env("WINDOW_TOPIC").unwrap_or_else(|| "window-counts".into()),
            }
        })
    }
}

/// A key's open windows, each with its count.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    /// The key.
    pub key: String,
    /// Open windows.
    pub open: Open<u64>,
    /// Windows closed so far.
    #[serde(default)]
    pub closed: u64,
}

/// Folds one event into its windows.
///
/// # Errors
/// A `late` failure for an event whose windows closed.
pub fn count(
    settings: &Settings,
    state: &mut Counts,
    event: &Event<serde_json::Value>,
    out: &mut Output,
) -> Result<(), Failure> {
    if settings.sessions {
        settings
            .windows
            .add_session(&mut state.open, event, out, |n| *n += 1, |a, b| *a += b)
    } else {
        settings
            .windows
            .add(&mut state.open, event, out, |n| *n += 1)
    }
}

/// Emits the count of the window a timer closes.
///
/// # Errors
/// [`Failure::Fatal`] when the record cannot be serialised.
pub fn close(
    settings: &Settings,
    state: &mut Counts,
    timer: &Timer,
    out: &mut Output,
) -> Result<(), Failure> {
    if let Some(w) = settings.windows.close(&mut state.open, timer) {
        state.closed += 1;
        out.emit(
            &settings.topic,
            Some(&state.key),
            &serde_json::json!({"key": state.key, "start": w.start, "end": w.end, "count": w.value}),
        )?;
    }
    Ok(())
}

/// The plugin.
pub struct WindowedCounts;

impl Aggregator for WindowedCounts {
    type Event = serde_json::Value;
    type State = Counts;

    fn init(key: &str) -> Counts {
        Counts {
            key: key.to_owned(),
            ..Counts::default()
        }
    }

    fn apply(
        state: &mut Counts,
        event: Event<serde_json::Value>,
        out: &mut Output,
    ) -> Result<(), Failure> {
        count(Settings::from_env(), state, &event, out)
    }

    fn on_timer(state: &mut Counts, timer: Timer, out: &mut Output) -> Result<(), Failure> {
        close(Settings::from_env(), state, &timer, out)
    }
}

eddy_sdk::export_aggregator!(WindowedCounts);

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]
mod tests {
    use super::*;
    use eddy_sdk::testing::AggregatorHarness;

    #[test]
    fn counts_close_when_the_watermark_passes_end_plus_grace() -> Result<(), Failure> {
        // Defaults: tumbling minutes, 10 s grace (no environment natively).
        let mut h = AggregatorHarness::<WindowedCounts>::new();
        h.push("u", "{}")?;
        h.push("u", "{}")?;
        // The harness's events are at time 0: window [0, 60000).
        assert_eq!(h.advance(0, 69_999)?, 0);
        assert_eq!(h.advance(0, 70_000)?, 1);
        let emitted: serde_json::Value =
            serde_json::from_str(&h.emits()[0].value).map_err(|e| Failure::Fatal(e.to_string()))?;
        assert_eq!(
            emitted,
            serde_json::json!({"key": "u", "start": 0, "end": 60_000, "count": 2})
        );
        assert_eq!(h.state("u").map(|s| s["closed"].clone()), Some(1.into()));
        Ok(())
    }
}
