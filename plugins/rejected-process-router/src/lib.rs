//! Routes AsyncProcess aggregates whose state is `REJECTED` to the
//! `rejected-process` topic (seed 000: `filter(REJECTED)` on the aggregate
//! stream). Runs on the `async-process` changelog topic, where the host
//! appends every new aggregate.
//!
//! `ROUTE_STATES` (granted in `[plugin.grants.env]`, comma-separated,
//! default `REJECTED`) routes aggregates in other states too: `REJECTED,ERROR`
//! also routes the processes the aggregator's timeout marked ERROR.

use eddy_sdk::{Event, Failure, Handler, Output};
use serde::Deserialize;

/// The topic rejected processes are routed to.
pub const REJECTED_TOPIC: &str = "rejected-process";

/// The part of an AsyncProcess aggregate this handler reads; the record is
/// forwarded whole.
#[derive(Debug, Deserialize)]
pub struct ProcessView {
    /// Process id.
    pub id: String,
    /// Current state.
    pub state: Option<String>,
}

/// Whether aggregates in `state` are routed (`ROUTE_STATES`).
fn routed(state: &str) -> bool {
    match eddy_sdk::env("ROUTE_STATES") {
        Some(states) if !states.trim().is_empty() => states.split(',').any(|s| s.trim() == state),
        _ => state == "REJECTED",
    }
}

/// The plugin.
pub struct RejectedProcessRouter;

impl Handler for RejectedProcessRouter {
    type Event = serde_json::Value;

    fn handle(event: Event<serde_json::Value>, out: &mut Output) -> Result<(), Failure> {
        let view: ProcessView = serde_json::from_value(event.value.clone())
            .map_err(|e| Failure::Invalid(format!("not an AsyncProcess: {e}")))?;
        if view.state.as_deref().is_some_and(routed) {
            out.emit(REJECTED_TOPIC, Some(&view.id), &event.value)?;
        }
        Ok(())
    }
}

eddy_sdk::export_handler!(RejectedProcessRouter);

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]
mod tests {
    use super::*;
    use eddy_sdk::testing::HandlerHarness;
    use serde_json::json;

    #[test]
    fn routes_only_rejected_processes() -> Result<(), Failure> {
        let mut h = HandlerHarness::<RejectedProcessRouter>::new();
        let rejected = json!({"id": "p1", "state": "REJECTED", "executions": []}).to_string();
        let emits = h.handle("async-process", Some("p1"), &rejected)?;
        assert_eq!(emits.len(), 1);
        let first = emits.first().ok_or(Failure::Fatal("no emit".into()))?;
        assert_eq!(first.topic, REJECTED_TOPIC);
        assert_eq!(first.key.as_deref(), Some("p1"));
        let forwarded: serde_json::Value =
            serde_json::from_str(&first.value).map_err(|e| Failure::Fatal(e.to_string()))?;
        assert_eq!(forwarded["executions"], json!([]));

        for state in ["ACCEPTED", "STARTED", "DONE", "ERROR", "RETRY", "WAITING"] {
            let p = json!({"id": "p2", "state": state}).to_string();
            assert!(
                h.handle("async-process", Some("p2"), &p)?.is_empty(),
                "{state}"
            );
        }
        Ok(())
    }

    #[test]
    fn non_process_is_invalid() {
        let mut h = HandlerHarness::<RejectedProcessRouter>::new();
        assert!(matches!(
            h.handle("async-process", None, "[1,2]"),
            Err(Failure::Invalid(_))
        ));
        assert!(matches!(
            h.handle("async-process", None, "not json"),
            Err(Failure::Invalid(_))
        ));
    }
}
