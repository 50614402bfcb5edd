//! Plugin versions over HTTP: list, deploy (upload) and roll back.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::guard::constant_time_eq;
use super::{ApiResult, AppError, AppState, blocking};
use crate::execute::registry::DeployError;

/// Checks the bearer token of an admin route in constant time.
pub fn require_admin(s: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(expected) = s.admin_token.as_deref() else {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "admin routes are off: set http.admin_token or EDDY_ADMIN_TOKEN",
        ));
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| AppError::new(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return Err(AppError::new(StatusCode::FORBIDDEN, "wrong token"));
    }
    Ok(())
}

fn deploy_error(e: DeployError) -> AppError {
    match e {
        DeployError::Unknown(n) => AppError::not_found(format!("plugin {n:?} is not configured")),
        e @ DeployError::Invalid(_) => AppError::unprocessable(e.to_string()),
        e @ DeployError::NoPrevious(_) => AppError::new(StatusCode::CONFLICT, e.to_string()),
        e @ (DeployError::Save { .. } | DeployError::Read { .. }) => AppError::internal(e),
    }
}

/// `GET /v1/plugins`
pub async fn list(State(s): State<AppState>) -> Json<Value> {
    Json(serde_json::json!({ "plugins": s.registry.statuses() }))
}

/// `GET /v1/plugins/{name}`
pub async fn get_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let slot = s
        .registry
        .slot(&name)
        .ok_or_else(|| AppError::not_found(format!("plugin {name:?} is not configured")))?;
    Ok(Json(
        serde_json::to_value(slot.status()).map_err(AppError::internal)?,
    ))
}

/// `PUT /v1/plugins/{name}` with the component as the body: compiled and
/// validated off the hot path, then swapped in between micro-batches.
pub async fn upload(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    require_admin(&s, &headers)?;
    if body.is_empty() {
        return Err(AppError::bad_request(
            "the body must be the component (.wasm)",
        ));
    }
    let registry = s.registry.clone();
    let version = blocking(move || {
        registry
            .deploy(&name, body.to_vec(), "upload", true)
            .map_err(deploy_error)
    })
    .await?;
    Ok(Json(
        serde_json::json!({ "status": "deployed", "version": version }),
    ))
}

#[derive(serde::Deserialize)]
pub struct ShadowQuery {
    pipeline: Option<String>,
    from: Option<String>,
    limit: Option<u64>,
}

/// `POST /v1/plugins/{name}/shadow?pipeline=&from=beginning|offset:N|timestamp:MS&limit=`
/// with a candidate component as the body: runs it next to the running
/// version over the pipeline's input and answers the diff. Touches nothing live.
pub async fn shadow(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: axum::extract::Query<ShadowQuery>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    require_admin(&s, &headers)?;
    let slot = s
        .registry
        .slot(&name)
        .ok_or_else(|| AppError::not_found(format!("plugin {name:?} is not configured")))?;
    let uses = |p: &&crate::config::PipelineConfig| {
        p.aggregator.as_deref() == Some(name.as_str()) || p.handlers.iter().any(|h| h == &name)
    };
    let pipeline =
        match &q.pipeline {
            Some(p) => s.pipeline(p)?.clone(),
            None => s.pipelines.values().find(uses).cloned().ok_or_else(|| {
                AppError::unprocessable(format!("no pipeline uses plugin {name:?}"))
            })?,
        };
    if !uses(&&pipeline) {
        return Err(AppError::unprocessable(format!(
            "pipeline {:?} does not use plugin {name:?}",
            pipeline.name
        )));
    }
    let from = parse_from(q.from.as_deref().unwrap_or("beginning"))?;
    let limit = q.limit.unwrap_or(1_000_000).max(1);
    let current = crate::execute::Instance::new(slot.current());
    let (history, registry) = (s.history.clone(), s.registry.clone());
    let intake = s.intake(&pipeline.name)?.clone();
    let report = blocking(move || {
        // Compiling a large component takes seconds: off the async workers.
        let candidate = registry
            .compile_candidate(&name, &body)
            .map_err(deploy_error)?;
        let candidate = crate::execute::Instance::new(std::sync::Arc::new(candidate));
        crate::pipeline::shadow::run(
            &pipeline, &intake, current, candidate, &history, from, limit,
        )
        .map_err(|e| AppError::unavailable(format!("shadow run over {:?}: {e:#}", pipeline.topic)))
    })
    .await?;
    Ok(Json(
        serde_json::to_value(report).map_err(AppError::internal)?,
    ))
}

/// `beginning`, `offset:N` or `timestamp:MS`.
pub fn parse_from(s: &str) -> ApiResult<crate::source::rewind::From> {
    use crate::source::rewind::From;
    let bad = || {
        AppError::bad_request(format!(
            "from must be beginning, offset:N or timestamp:MS, not {s:?}"
        ))
    };
    match s.split_once(':') {
        None if s == "beginning" => Ok(From::Beginning),
        Some(("offset", n)) => n.parse().map(From::Offset).map_err(|_| bad()),
        Some(("timestamp", t)) => t.parse().map(From::Timestamp).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// `POST /v1/plugins/{name}/rollback`
pub async fn rollback(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    require_admin(&s, &headers)?;
    let registry = s.registry.clone();
    let version = blocking(move || registry.rollback(&name).map_err(deploy_error)).await?;
    Ok(Json(
        serde_json::json!({ "status": "rolled back", "version": version }),
    ))
}
