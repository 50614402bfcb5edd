//! The AsyncProcess aggregator of seed 000.
//!
//! Folds `AsyncProcessExecution` events (keyed by `asyncProcessId`) into the
//! `AsyncProcess` aggregate: executions kept ordered by time (ties broken by
//! execution id, then by arrival), the process state and last update taken
//! from the latest execution, the description from the latest execution that
//! has one.
//!
//! With timers (each off unless its variable is granted to the plugin in
//! `[plugin.grants.env]`):
//! - `ASYNC_PROCESS_TIMEOUT_MS`: a process left in STARTED or RETRY for
//!   that long after its latest execution's `time` (on the host's clock) is
//!   marked ERROR by a timer: an execution `timeout@{instant}` in state
//!   ERROR is added. `ASYNC_PROCESS_TIMEOUT_TOPIC` also emits the timed-out
//!   process there.
//! - `ASYNC_PROCESS_MAX_RETRIES`: each RETRY execution schedules a retry
//!   request, emitted to `ASYNC_PROCESS_RETRY_TOPIC` (default
//!   `async-process-retry`) after an exponential backoff with jitter
//!   (`ASYNC_PROCESS_RETRY_BASE_MS`, default 1000, doubling per attempt, at
//!   most 1 hour, ±20 % derived from the process id so a replay computes the
//!   same instants), if the process is still in RETRY then; the attempt
//!   after the last allowed one marks the process ERROR instead.

use std::sync::OnceLock;

use eddy_sdk::{Aggregator, Event, Failure, Output, Timer, TimerTime};
use serde::{Deserialize, Serialize};

/// The lifecycle states of a process and of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AsyncProcessState {
    /// In the queue, awaiting execution.
    Waiting,
    /// Accepted for execution.
    Accepted,
    /// Running.
    Started,
    /// Finished successfully.
    Done,
    /// Failed during execution.
    Error,
    /// Rejected.
    Rejected,
    /// Being retried.
    Retry,
}

/// One execution event: an immutable step in a process's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncProcessExecution {
    /// Execution id.
    pub id: String,
    /// The process it belongs to (the aggregate key).
    pub async_process_id: String,
    /// Free-form log text.
    #[serde(default)]
    pub log: Option<String>,
    /// Human description.
    #[serde(default)]
    pub description: Option<String>,
    /// Parameters, as text.
    #[serde(default)]
    pub params: Option<String>,
    /// When it happened, in milliseconds since the Unix epoch.
    pub time: i64,
    /// The state this execution reports.
    pub state: AsyncProcessState,
}

/// The aggregate: a process and its executions ordered by time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncProcess {
    /// Process id.
    pub id: String,
    /// Time of the latest execution (ms since the Unix epoch).
    pub last_update: Option<i64>,
    /// Description of the latest execution that has one.
    pub description: Option<String>,
    /// State of the latest execution.
    pub state: Option<AsyncProcessState>,
    /// All executions, ordered by time.
    pub executions: Vec<AsyncProcessExecution>,
}

impl AsyncProcess {
    /// A process with no executions yet.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            last_update: None,
            description: None,
            state: None,
            executions: Vec::new(),
        }
    }

    /// Adds one execution and recomputes the derived fields.
    pub fn process(&mut self, execution: AsyncProcessExecution) {
        let at = self.executions.partition_point(|e| {
            (e.time, e.id.as_str()) <= (execution.time, execution.id.as_str())
        });
        self.executions.insert(at, execution);
        if let Some(latest) = self.executions.last() {
            self.last_update = Some(latest.time);
            self.state = Some(latest.state);
        }
        if let Some(d) = self
            .executions
            .iter()
            .rev()
            .find_map(|e| e.description.as_ref().filter(|d| !d.is_empty()))
        {
            self.description = Some(d.clone());
        }
    }
}

/// What the operator turned on (see the crate documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Time a process may stay in STARTED or RETRY.
    pub timeout_ms: Option<i64>,
    /// Where timed-out processes are emitted, if anywhere.
    pub timeout_topic: Option<String>,
    /// Retries scheduled before a process in RETRY becomes ERROR.
    pub max_retries: Option<u32>,
    /// The first retry's delay.
    pub retry_base_ms: i64,
    /// Where retry requests go.
    pub retry_topic: String,
}

impl Settings {
    /// Read once from the plugin's environment.
    pub fn from_env() -> &'static Settings {
        static SETTINGS: OnceLock<Settings> = OnceLock::new();
        SETTINGS.get_or_init(|| {
            let var = |name: &str| eddy_sdk::env(name).filter(|v| !v.is_empty());
            Settings {
                timeout_ms: var("ASYNC_PROCESS_TIMEOUT_MS").and_then(|v| v.parse().ok()),
                timeout_topic: var("ASYNC_PROCESS_TIMEOUT_TOPIC"),
                max_retries: var("ASYNC_PROCESS_MAX_RETRIES").and_then(|v| v.parse().ok()),
                retry_base_ms: var("ASYNC_PROCESS_RETRY_BASE_MS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1_000),
                retry_topic: var("ASYNC_PROCESS_RETRY_TOPIC")
                    .unwrap_or_else(|| "async-process-retry".into()),
            }
        })
    }
}

/// The timer that marks a stuck process ERROR.
pub const TIMEOUT_TIMER: &str = "timeout";
/// The timer that sends the next retry request.
pub const RETRY_TIMER: &str = "retry";
/// The longest retry delay.
const MAX_RETRY_DELAY_MS: i64 = 3_600_000;

fn waiting(state: Option<AsyncProcessState>) -> bool {
    matches!(
        state,
        Some(AsyncProcessState::Started | AsyncProcessState::Retry)
    )
}

/// The delay before retry `attempt` (1-based): `base · 2^(attempt-1)`, at
/// most an hour, ±20 % by a hash of the process id and the attempt.
pub fn retry_delay(base_ms: i64, process: &str, attempt: u32) -> i64 {
    let exp = base_ms.saturating_mul(1_i64 << attempt.saturating_sub(1).min(40));
    let delay = exp.min(MAX_RETRY_DELAY_MS);
    // FNV-1a: the same jitter on every run (a replay folds the same way).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in process.bytes().chain(attempt.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // -200..=200 per mille: ±20 %.
    let jitter = (h % 401) as i64 - 200;
    delay + delay * jitter / 1_000
}

/// Folds one execution, then sets or cancels the process's timers.
///
/// # Errors
/// [`Failure::Invalid`] for an execution of another process.
pub fn apply_with(
    settings: &Settings,
    state: &mut AsyncProcess,
    execution: AsyncProcessExecution,
    out: &mut Output,
) -> Result<(), Failure> {
    if execution.async_process_id != state.id {
        return Err(Failure::Invalid(format!(
            "execution {} belongs to process {:?}, not to {:?}",
            execution.id, execution.async_process_id, state.id
        )));
    }
    let before = state.state;
    let retry = execution.state == AsyncProcessState::Retry;
    state.process(execution);
    if let Some(max) = settings.max_retries {
        let latest_is_retry = state.state == Some(AsyncProcessState::Retry);
        if retry && latest_is_retry {
            let attempt = state
                .executions
                .iter()
                .filter(|e| e.state == AsyncProcessState::Retry)
                .count();
            let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
            let at = state.last_update.unwrap_or_default();
            if attempt > max {
                out.cancel_timer(RETRY_TIMER);
                mark_error(
                    state,
                    at,
                    "retries-exhausted",
                    &format!("still failing after {max} retries"),
                );
            } else {
                let due =
                    at.saturating_add(retry_delay(settings.retry_base_ms, &state.id, attempt));
                out.set_timer(
                    RETRY_TIMER,
                    TimerTime::Wall,
                    due,
                    &serde_json::json!({ "attempt": attempt }),
                )?;
            }
        } else if !latest_is_retry && before == Some(AsyncProcessState::Retry) {
            out.cancel_timer(RETRY_TIMER);
        }
    }
    if let Some(timeout) = settings.timeout_ms {
        match (waiting(state.state), state.last_update) {
            (true, Some(at)) => out.set_timer(
                TIMEOUT_TIMER,
                TimerTime::Wall,
                at.saturating_add(timeout),
                &serde_json::json!({ "lastUpdate": at }),
            )?,
            _ if waiting(before) => out.cancel_timer(TIMEOUT_TIMER),
            _ => {}
        }
    }
    Ok(())
}

/// Adds an ERROR execution made by the plugin itself.
fn mark_error(state: &mut AsyncProcess, at: i64, why: &str, description: &str) {
    let id = state.id.clone();
    state.process(AsyncProcessExecution {
        id: format!("{why}@{at}"),
        async_process_id: id,
        log: None,
        description: Some(description.to_owned()),
        params: None,
        time: at,
        state: AsyncProcessState::Error,
    });
}

/// Acts on a fired timer: a process still waiting times out; a process
/// still in RETRY gets its retry request.
///
/// # Errors
/// [`Failure::Fatal`] when a record cannot be serialised.
pub fn on_timer_with(
    settings: &Settings,
    state: &mut AsyncProcess,
    timer: Timer,
    out: &mut Output,
) -> Result<(), Failure> {
    match timer.name.as_str() {
        TIMEOUT_TIMER if waiting(state.state) => {
            let Some(timeout) = settings.timeout_ms else {
                return Ok(());
            };
            let was = if state.state == Some(AsyncProcessState::Retry) {
                "RETRY"
            } else {
                "STARTED"
            };
            mark_error(
                state,
                timer.at_ms,
                "timeout",
                &format!("no update for {timeout} ms in {was}"),
            );
            out.cancel_timer(RETRY_TIMER);
            if let Some(topic) = &settings.timeout_topic {
                out.emit(topic, Some(&state.id), &*state)?;
            }
        }
        RETRY_TIMER if state.state == Some(AsyncProcessState::Retry) => {
            let attempt = timer.payload.get("attempt").cloned().unwrap_or_default();
            out.emit(
                &settings.retry_topic,
                Some(&state.id),
                &serde_json::json!({
                    "asyncProcessId": state.id,
                    "attempt": attempt,
                    "dueAt": timer.at_ms,
                }),
            )?;
        }
        _ => {}
    }
    Ok(())
}

/// The plugin.
pub struct AsyncProcessAggregator;

impl Aggregator for AsyncProcessAggregator {
    type Event = AsyncProcessExecution;
    type State = AsyncProcess;

    fn init(key: &str) -> AsyncProcess {
        AsyncProcess::new(key)
    }

    fn apply(
        state: &mut AsyncProcess,
        event: Event<AsyncProcessExecution>,
        out: &mut Output,
    ) -> Result<(), Failure> {
        apply_with(Settings::from_env(), state, event.value, out)
    }

    fn on_timer(state: &mut AsyncProcess, timer: Timer, out: &mut Output) -> Result<(), Failure> {
        on_timer_with(Settings::from_env(), state, timer, out)
    }
}

eddy_sdk::export_aggregator!(AsyncProcessAggregator);

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]
mod tests {
    use super::*;
    use eddy_sdk::testing::AggregatorHarness;
    use serde_json::json;

    fn exec(id: &str, process: &str, time: i64, state: &str) -> String {
        json!({"id": id, "asyncProcessId": process, "time": time, "state": state,
               "description": format!("step {id}"), "log": null, "params": "{}"})
        .to_string()
    }

    #[test]
    fn folds_executions_ordered_by_time() -> Result<(), Failure> {
        let mut h = AggregatorHarness::<AsyncProcessAggregator>::new();
        h.push("p1", &exec("e2", "p1", 20, "STARTED"))?;
        h.push("p1", &exec("e1", "p1", 10, "ACCEPTED"))?;
        h.push_batch(
            "p1",
            &[
                &exec("e4", "p1", 40, "DONE"),
                &exec("e3", "p1", 30, "RETRY"),
            ],
        )?;
        let s = h.state("p1").ok_or(Failure::Fatal("no state".into()))?;
        let ids: Vec<_> = s["executions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(ids, ["e1", "e2", "e3", "e4"]);
        assert_eq!(s["state"], "DONE");
        assert_eq!(s["lastUpdate"], 40);
        assert_eq!(s["description"], "step e4");
        assert_eq!(s["id"], "p1");
        Ok(())
    }

    #[test]
    fn late_execution_does_not_change_current_state() -> Result<(), Failure> {
        let mut h = AggregatorHarness::<AsyncProcessAggregator>::new();
        h.push("p", &exec("a", "p", 100, "ERROR"))?;
        h.push("p", &exec("b", "p", 50, "STARTED"))?;
        let s = h.state("p").ok_or(Failure::Fatal("no state".into()))?;
        assert_eq!(s["state"], "ERROR");
        assert_eq!(s["lastUpdate"], 100);
        Ok(())
    }

    #[test]
    fn every_applied_event_is_kept_once() -> Result<(), Failure> {
        let mut h = AggregatorHarness::<AsyncProcessAggregator>::new();
        for i in 0..50 {
            h.push("k", &exec(&format!("e{i:02}"), "k", 7, "STARTED"))?;
        }
        let s = h.state("k").ok_or(Failure::Fatal("no state".into()))?;
        assert_eq!(s["executions"].as_array().map(Vec::len), Some(50));
        Ok(())
    }

    #[test]
    fn rejects_unknown_state_and_foreign_process() {
        let mut h = AggregatorHarness::<AsyncProcessAggregator>::new();
        let bad_state = h.push("p", &exec("x", "p", 1, "EXPLODED"));
        assert!(matches!(bad_state, Err(Failure::Invalid(m)) if m.contains("EXPLODED")));
        let foreign = h.push("p", &exec("x", "q", 1, "DONE"));
        assert!(matches!(foreign, Err(Failure::Invalid(m)) if m.contains("\"q\"")));
        assert!(h.state("p").is_none(), "a failed batch must leave no state");
    }

    /// The aggregator with timeouts of 1 s and 2 retries from 100 ms.
    struct Timed;

    fn timed() -> Settings {
        Settings {
            timeout_ms: Some(1_000),
            timeout_topic: Some("timed-out".into()),
            max_retries: Some(2),
            retry_base_ms: 100,
            retry_topic: "retry".into(),
        }
    }

    impl Aggregator for Timed {
        type Event = AsyncProcessExecution;
        type State = AsyncProcess;
        fn init(key: &str) -> AsyncProcess {
            AsyncProcess::new(key)
        }
        fn apply(
            state: &mut AsyncProcess,
            event: Event<AsyncProcessExecution>,
            out: &mut Output,
        ) -> Result<(), Failure> {
            apply_with(&timed(), state, event.value, out)
        }
        fn on_timer(
            state: &mut AsyncProcess,
            timer: Timer,
            out: &mut Output,
        ) -> Result<(), Failure> {
            on_timer_with(&timed(), state, timer, out)
        }
    }

    #[test]
    fn a_started_process_with_no_update_times_out_to_error() -> Result<(), Failure> {
        let mut h = AggregatorHarness::<Timed>::new();
        h.push("p", &exec("a", "p", 10_000, "STARTED"))?;
        assert_eq!(h.timers("p"), [("timeout".into(), TimerTime::Wall, 11_000)]);
        // An update moves the deadline on.
        h.push("p", &exec("b", "p", 10_500, "STARTED"))?;
        assert_eq!(h.advance(11_000, 0)?, 0);
        assert_eq!(h.advance(11_500, 0)?, 1);
        let s = h.state("p").ok_or(Failure::Fatal("no state".into()))?;
        assert_eq!(s["state"], "ERROR");
        assert_eq!(s["lastUpdate"], 11_500);
        assert_eq!(s["executions"][2]["id"], "timeout@11500");
        assert_eq!(
            s["executions"][2]["description"],
            "no update for 1000 ms in STARTED"
        );
        assert_eq!(h.emits().len(), 1);
        assert_eq!(h.emits()[0].topic, "timed-out");
        // A process that finishes in time never times out.
        h.push("q", &exec("a", "q", 10_000, "STARTED"))?;
        h.push("q", &exec("b", "q", 10_200, "DONE"))?;
        assert!(h.timers("q").is_empty());
        assert_eq!(h.advance(99_000, 0)?, 0);
        assert_eq!(
            h.state("q").ok_or(Failure::Fatal("no state".into()))?["state"],
            "DONE"
        );
        Ok(())
    }

    #[test]
    fn retries_back_off_exponentially_then_give_up() -> Result<(), Failure> {
        let mut h = AggregatorHarness::<Timed>::new();
        let d1 = retry_delay(100, "p", 1);
        let d2 = retry_delay(100, "p", 2);
        assert!(
            (80..=120).contains(&d1) && (160..=240).contains(&d2),
            "{d1} {d2}"
        );
        h.push("p", &exec("a", "p", 1_000, "RETRY"))?;
        let timers = h.timers("p");
        assert!(timers.contains(&("retry".into(), TimerTime::Wall, 1_000 + d1)));
        assert_eq!(h.advance(1_000 + d1, 0)?, 1);
        assert_eq!(h.emits()[0].topic, "retry");
        assert!(h.emits()[0].value.contains("\"attempt\":1"));
        h.push("p", &exec("b", "p", 1_300, "RETRY"))?;
        assert!(
            h.timers("p")
                .contains(&("retry".into(), TimerTime::Wall, 1_300 + d2))
        );
        // The third RETRY is one more than allowed: ERROR at once.
        h.push("p", &exec("c", "p", 1_600, "RETRY"))?;
        let s = h.state("p").ok_or(Failure::Fatal("no state".into()))?;
        assert_eq!(s["state"], "ERROR");
        assert_eq!(s["executions"][3]["id"], "retries-exhausted@1600");
        assert!(h.timers("p").is_empty(), "{:?}", h.timers("p"));
        Ok(())
    }

    #[test]
    fn failed_batch_leaves_state_unchanged() -> Result<(), Failure> {
        let mut h = AggregatorHarness::<AsyncProcessAggregator>::new();
        h.push("p", &exec("a", "p", 1, "ACCEPTED"))?;
        let before = h.state_json("p").map(str::to_owned);
        let r = h.push_batch(
            "p",
            &[&exec("b", "p", 2, "DONE"), "{\"not\":\"an execution\"}"],
        );
        assert!(r.is_err());
        assert_eq!(h.state_json("p").map(str::to_owned), before);
        Ok(())
    }
}
