//! The AsyncProcess aggregator of seed 000.
//!
//! Folds `AsyncProcessExecution` events (keyed by `asyncProcessId`) into the
//! `AsyncProcess` aggregate: executions kept ordered by time (ties broken by
//! execution id, then by arrival), the process state and last update taken
//! from the latest execution, the description from the latest execution that
//! has one.

use eddy_sdk::{Aggregator, Event, Failure, Output};
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
        _out: &mut Output,
    ) -> Result<(), Failure> {
        let execution = event.value;
        if execution.async_process_id != state.id {
            return Err(Failure::Invalid(format!(
                "execution {} belongs to process {:?}, not to {:?}",
                execution.id, execution.async_process_id, state.id
            )));
        }
        state.process(execution);
        Ok(())
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
