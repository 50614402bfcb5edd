//! Replay over HTTP: start one, watch its progress (JSON or SSE).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::plugins::require_admin;
use super::{ApiResult, AppError, AppState, blocking};
use crate::execute::Instance;
use crate::pipeline::replay::{self, From, ReplayError};

/// `POST /v1/pipelines/{p}/replay` with `{"from":"beginning"}`,
/// `{"from":"offset","at":N}` or `{"from":"timestamp","at":MS}`: rebuilds
/// the pipeline's state from its topic; answers 202 with the progress.
pub async fn start(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    require_admin(&s, &headers)?;
    let p = s.pipeline(&pipeline)?.clone();
    s.single_host(&pipeline, "a replay")?;
    let from: From = if body.iter().all(u8::is_ascii_whitespace) {
        From::Beginning
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            AppError::bad_request(format!(
                "body must be {{\"from\":\"beginning\"}}, {{\"from\":\"offset\",\"at\":N}} or \
                 {{\"from\":\"timestamp\",\"at\":MS}}: {e}"
            ))
        })?
    };
    let aggregator = p
        .aggregator
        .as_ref()
        .and_then(|a| s.registry.slot(a))
        .map(|slot| Instance::new(slot.current()).in_pipeline(&pipeline));
    let inputs = replay::Inputs {
        history: s.history.clone(),
        intake: s.intake(&pipeline)?.clone(),
        log: s.log.clone(),
        lock: s.locks.get(&pipeline).cloned().unwrap_or_default(),
        tracker: s.replays.get(&pipeline).cloned().unwrap_or_default(),
    };
    let progress = blocking(move || {
        replay::start(p, aggregator, inputs, from).map_err(|e| match e {
            e @ (ReplayError::Running(_) | ReplayError::ReplaysWaiting { .. }) => {
                AppError::new(StatusCode::CONFLICT, e.to_string())
            }
            e @ ReplayError::NoState(_) => AppError::unprocessable(e.to_string()),
            e @ ReplayError::Store { .. } => AppError::internal(e),
        })
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(progress)).into_response())
}

fn current(s: &AppState, pipeline: &str) -> ApiResult<Value> {
    s.pipeline(pipeline)?;
    let tracker = s.replays.get(pipeline).cloned().unwrap_or_default();
    let p = crate::lock(&tracker).clone();
    match p {
        Some(p) => serde_json::to_value(p).map_err(AppError::internal),
        None => Err(AppError::not_found(format!(
            "pipeline {pipeline:?} has not been replayed"
        ))),
    }
}

/// `GET /v1/pipelines/{p}/replay`: the last replay's progress.
pub async fn status(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(current(&s, &pipeline)?))
}

/// `GET /v1/pipelines/{p}/replay/events`: progress as SSE, every 250 ms,
/// ending after `done` or `failed`.
pub async fn events(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
) -> ApiResult<Response> {
    current(&s, &pipeline)?;
    let stream = futures_util::stream::unfold(Some((s, pipeline)), |state| async move {
        let (s, pipeline) = state?;
        let v = current(&s, &pipeline).unwrap_or(Value::Null);
        let finished = matches!(
            v.get("phase").and_then(Value::as_str),
            Some("done" | "failed")
        );
        let ev: Result<Event, Infallible> =
            Ok(Event::default().event("progress").data(v.to_string()));
        if !finished {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Some((ev, if finished { None } else { Some((s, pipeline)) }))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
