//! Dead letters over HTTP: list with filters and paging, get, delete, and
//! replay one or a filtered set back into the pipeline (through its replay
//! topic, so the replayed event runs through the same stages and commit).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use super::{ApiResult, AppError, AppState, blocking, json_text};
use crate::pipeline::dead_letter::{self, ResolveError};

/// Filters over dead letters.
#[derive(Debug, Default)]
pub struct Filter {
    stage: Option<String>,
    error_class: Option<String>,
    key: Option<String>,
    plugin: Option<String>,
}

impl Filter {
    fn matches(&self, dl: &Value) -> bool {
        let eq = |field: &str, want: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| dl.get(field).and_then(Value::as_str) == Some(w))
        };
        eq("stage", &self.stage)
            && eq("error_class", &self.error_class)
            && eq("key", &self.key)
            && eq("plugin", &self.plugin)
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<u64>,
    limit: Option<usize>,
    stage: Option<String>,
    error_class: Option<String>,
    key: Option<String>,
    plugin: Option<String>,
}

/// `GET /v1/pipelines/{p}/dead-letters?after=&limit=&stage=&error_class=&key=&plugin=`
pub async fn list(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
    q: Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    s.pipeline(&pipeline)?;
    let q = q.0;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = Filter {
        stage: q.stage,
        error_class: q.error_class,
        key: q.key,
        plugin: q.plugin,
    };
    let store = s.store.clone();
    blocking(move || {
        let mut after = q.after.unwrap_or(0);
        let mut out = Vec::new();
        loop {
            let page = store
                .dead_letters(&pipeline, after, 1000)
                .map_err(AppError::internal)?;
            let n = page.len();
            for (id, json) in page {
                after = id;
                let v: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
                if filter.matches(&v) {
                    out.push(v);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            if n < 1000 || out.len() >= limit {
                break;
            }
        }
        let next = if out.len() >= limit {
            Some(after)
        } else {
            None
        };
        Ok(Json(
            serde_json::json!({ "dead_letters": out, "next_after": next }),
        ))
    })
    .await
}

fn parse_id(id: &str) -> ApiResult<u64> {
    id.parse()
        .map_err(|_| AppError::bad_request(format!("dead letter id {id:?} is not a number")))
}

/// `GET /v1/pipelines/{p}/dead-letters/{id}`
pub async fn get_one(
    State(s): State<AppState>,
    Path((pipeline, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    s.pipeline(&pipeline)?;
    let id = parse_id(&id)?;
    let store = s.store.clone();
    blocking(move || {
        store
            .dead_letter(&pipeline, id)
            .map_err(AppError::internal)?
            .map(json_text)
            .ok_or_else(|| {
                AppError::not_found(format!("pipeline {pipeline:?} has no dead letter {id}"))
            })
    })
    .await
}

/// `DELETE /v1/pipelines/{p}/dead-letters/{id}`: drops it (and, in
/// quarantine mode, releases its key when it was the last one).
pub async fn delete_one(
    State(s): State<AppState>,
    Path((pipeline, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    let n = resolve(&s, &pipeline, vec![(id, None)], false).await?;
    Ok(Json(serde_json::json!({ "deleted": n })))
}

/// `POST /v1/pipelines/{p}/dead-letters/{id}/replay`, body optional:
/// `{"value": ...}` replays a corrected value instead of the original.
pub async fn replay_one(
    State(s): State<AppState>,
    Path((pipeline, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| AppError::bad_request(format!("body is not valid JSON: {e}")))?;
        match v {
            Value::Object(mut o) => {
                let value = o.remove("value");
                if let Some(k) = o.keys().next() {
                    return Err(AppError::bad_request(format!(
                        "unknown field {k:?} (expected value)"
                    )));
                }
                value
                    .map(|v| serde_json::to_vec(&v))
                    .transpose()
                    .map_err(AppError::internal)?
            }
            _ => return Err(AppError::bad_request("body must be {\"value\": ...}")),
        }
    };
    let n = resolve(&s, &pipeline, vec![(id, value)], true).await?;
    Ok(Json(serde_json::json!({ "replayed": n })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayMatching {
    stage: Option<String>,
    error_class: Option<String>,
    key: Option<String>,
    plugin: Option<String>,
    limit: Option<usize>,
}

/// `POST /v1/pipelines/{p}/dead-letters/replay` with filters
/// (`stage`, `error_class`, `key`, `plugin`, `limit`): replays every match.
pub async fn replay_matching(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: ReplayMatching = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayMatching {
            stage: None,
            error_class: None,
            key: None,
            plugin: None,
            limit: None,
        }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::bad_request(format!("invalid filter: {e}")))?
    };
    let filter = Filter {
        stage: req.stage,
        error_class: req.error_class,
        key: req.key,
        plugin: req.plugin,
    };
    s.pipeline(&pipeline)?;
    let limit = req.limit.unwrap_or(10_000).clamp(1, 100_000);
    let store = s.store.clone();
    let p = pipeline.clone();
    let ids = blocking(move || {
        let mut ids = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .dead_letters(&p, after, 1000)
                .map_err(AppError::internal)?;
            let n = page.len();
            for (id, json) in page {
                after = id;
                let v: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
                if filter.matches(&v) && ids.len() < limit {
                    ids.push((id, None));
                }
            }
            if n < 1000 || ids.len() >= limit {
                return Ok(ids);
            }
        }
    })
    .await?;
    let n = resolve(&s, &pipeline, ids, true).await?;
    Ok(Json(serde_json::json!({ "replayed": n })))
}

/// Resolves dead letters (see [`dead_letter::resolve`]) off the async
/// workers, answering in HTTP terms.
async fn resolve(
    s: &AppState,
    pipeline: &str,
    ids: Vec<(u64, Option<Vec<u8>>)>,
    replay: bool,
) -> ApiResult<usize> {
    if replay {
        s.single_host(pipeline, "replaying dead letters")?;
    }
    let at = dead_letter::Resolving {
        config: s.pipeline(pipeline)?.clone(),
        log: s.log.clone(),
        lock: s.locks.get(pipeline).cloned().unwrap_or_default(),
        replays: s.replays.get(pipeline).cloned().unwrap_or_default(),
    };
    blocking(move || {
        dead_letter::resolve(&at, ids, replay).map_err(|e| match e {
            e @ ResolveError::Missing { .. } => AppError::not_found(e.to_string()),
            e @ ResolveError::ReplayRunning(_) => {
                AppError::new(StatusCode::CONFLICT, e.to_string())
            }
            e => AppError::internal(e),
        })
    })
    .await
}
