//! What the Kafka tests check a host's states against: the fold of the
//! events Confluent's producer had acknowledged (its ledger).
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use serde_json::Value;

use crate::Host;

/// Per key, the expected executions `(time, id, state)` in fold order.
pub type Expected = BTreeMap<String, Vec<(i64, String, String)>>;

pub fn expected_from_ledger(ledger: &[(String, String, String, i64)]) -> Expected {
    let mut by_key = Expected::new();
    for (id, key, state, time) in ledger {
        by_key
            .entry(key.clone())
            .or_default()
            .push((*time, id.clone(), state.clone()));
    }
    for v in by_key.values_mut() {
        v.sort();
    }
    by_key
}

/// Every key's state from a host (`None` where the host has none).
pub async fn states(
    host: &Host,
    keys: impl Iterator<Item = String>,
) -> Result<HashMap<String, Value>> {
    let got: Vec<Result<(String, u16, Value)>> = futures_util::stream::iter(keys)
        .map(|k| async move {
            let (status, v) = host.get(&format!("/async-process/{k}")).await?;
            Ok((k, status, v))
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut out = HashMap::new();
    for r in got {
        let (k, status, v) = r?;
        match status {
            200 => {
                out.insert(k, v);
            }
            404 => {}
            s => bail!("GET /async-process/{k} answered {s}: {v}"),
        }
    }
    Ok(out)
}

/// The `state` of each execution an AsyncProcess aggregate holds, in order.
pub fn execution_states(state: &Value) -> Vec<String> {
    state["executions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

pub fn execution_ids(state: &Value) -> Vec<String> {
    state["executions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect()
}

/// Each aggregate equals the fold of its key's acknowledged events: every
/// event exactly once, in time order, the state of the latest.
/// Returns how many events it checked; an empty expectation is an error
/// (a check of nothing proves nothing).
pub fn check_folds(expected: &Expected, got: &HashMap<String, Value>) -> Result<usize> {
    ensure!(!expected.is_empty(), "no events to check");
    ensure!(
        got.len() == expected.len(),
        "{} keys have a state, {} expected",
        got.len(),
        expected.len()
    );
    for (key, events) in expected {
        let state = got
            .get(key)
            .with_context(|| format!("key {key} has no state"))?;
        let ids: Vec<&str> = events.iter().map(|(_, id, _)| id.as_str()).collect();
        let have = execution_ids(state);
        ensure!(
            have == ids,
            "key {key}: executions {} (of {}) differ from the events {} (of {})",
            have.len(),
            have.join(","),
            ids.len(),
            ids.join(",")
        );
        let last = events.last().map(|(_, _, s)| s.as_str());
        ensure!(
            state["state"].as_str() == last,
            "key {key}: state {} != {last:?}",
            state["state"]
        );
    }
    Ok(expected.values().map(Vec::len).sum())
}
