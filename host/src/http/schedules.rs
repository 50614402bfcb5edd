//! `GET /v1/schedules` and `GET /v1/schedules/{name}/runs`: each schedule
//! with its next instant and last run, and a schedule's runs (start, end,
//! outcome), newest first.
//!
//! In cluster mode a schedule runs on the host that owns its key's
//! partition: its runs are asked of that host (any host forwards), and the
//! list says which schedules run here (`here`), with the next instant and
//! last run of those only.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{ApiResult, AppError, AppState, read};
use crate::config::ScheduleConfig;

fn describe(s: &ScheduleConfig) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "pipeline": s.pipeline,
        "cron": s.cron,
        "every_ms": s.every_ms,
        "key": s.key(),
        "missed": match s.missed {
            crate::config::Missed::Skip => "skip",
            crate::config::Missed::RunOnce => "run-once",
        },
    })
}

/// Every schedule: its definition, its next instant (after now) and its
/// last run record.
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let schedules = s.schedules.clone();
    let store = s.store.clone();
    // Cluster mode: which schedules run here (their key's partition).
    let mut here = Vec::with_capacity(schedules.len());
    for sc in schedules.iter() {
        here.push(match s.owned(&sc.pipeline) {
            None => None,
            Some(o) => Some(o.owns(s.intake(&sc.pipeline)?.partition_of(sc.key()))),
        });
    }
    read(&s, move || {
        let now = crate::now_ms();
        let mut out = Vec::new();
        for (sc, here) in schedules.iter().zip(here) {
            let mut v = describe(sc);
            if let Some(here) = here {
                if let Some(o) = v.as_object_mut() {
                    o.insert("here".into(), here.into());
                }
                if !here {
                    out.push(v);
                    continue;
                }
            }
            let mark = store
                .schedule_mark(&sc.pipeline, &sc.name)
                .map_err(AppError::internal)?;
            let next = match (sc.cadence(), mark) {
                (Ok(cadence), Some(mark)) => cadence.next_after(now, mark.origin_ms),
                _ => None,
            };
            let last = store
                .schedule_runs(&sc.pipeline, &sc.name, 1)
                .map_err(AppError::internal)?;
            let last: serde_json::Value = last
                .first()
                .and_then(|(_, r)| serde_json::from_str(r).ok())
                .unwrap_or(serde_json::Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("next_ms".into(), next.into());
                o.insert("last_run".into(), last);
            }
            out.push(v);
        }
        Ok(Json(serde_json::json!({ "schedules": out })))
    })
    .await
}

#[derive(Deserialize)]
pub struct RunsQuery {
    limit: Option<usize>,
}

/// A schedule's runs, newest first (`limit`, default 100, at most 1000).
pub async fn runs(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Query<RunsQuery>,
    asked: super::cluster::Asked,
) -> ApiResult<axum::response::Response> {
    let sc = s
        .schedules
        .iter()
        .find(|sc| sc.name == name)
        .cloned()
        .ok_or_else(|| AppError::not_found(format!("no schedule named {name:?}")))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1_000);
    let partition = s.intake(&sc.pipeline)?.partition_of(sc.key());
    if let super::cluster::Answer::There(r) = s.route(&sc.pipeline, partition, &asked).await? {
        return Ok(r);
    }
    let store = s.store.clone();
    read(&s, move || {
        let runs: Vec<serde_json::Value> = store
            .schedule_runs(&sc.pipeline, &sc.name, limit)
            .map_err(AppError::internal)?
            .into_iter()
            .filter_map(|(_, r)| serde_json::from_str(&r).ok())
            .collect();
        Ok(Json(serde_json::json!({ "schedule": describe(&sc), "runs": runs })).into_response())
    })
    .await
}
