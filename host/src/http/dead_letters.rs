//! Dead letters over HTTP: list with filters and paging, get, delete, and
//! replay one or a filtered set back into the pipeline (through its replay
//! topic, so the replayed event runs through the same stages and commit).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use super::{ApiResult, AppError, AppState, blocking, json_text};
use crate::config::OnDeadLetter;
use crate::pipeline::SOURCE_HEADER;
use crate::pipeline::dead_letter::{DeadLetter, Stage, unbase64};
use crate::sink::ProduceRecord;
use crate::store::{Commit, LogRecord};

/// The header a replayed event carries: the dead letter it came from.
const REPLAY_HEADER: &str = "eddy-replay-of";

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

/// Removes dead letters (replaying them first when `replay`), lifting the
/// quarantine of keys left without open dead letters and releasing their
/// parked events after them — all in one atomic commit, under the
/// pipeline's lock so no batch interleaves.
async fn resolve(
    s: &AppState,
    pipeline: &str,
    ids: Vec<(u64, Option<Vec<u8>>)>,
    replay: bool,
) -> ApiResult<usize> {
    let p = s.pipeline(pipeline)?.clone();
    let lock = s.locks.get(pipeline).cloned().unwrap_or_default();
    let tracker = s.replays.get(pipeline).cloned().unwrap_or_default();
    let log = s.log.clone();
    blocking(move || {
        let _guard = crate::lock(&lock);
        // A rebuild replaces the dead letters of its range when it switches
        // over: resolving one meanwhile could apply its event twice.
        if crate::pipeline::replay::running(&tracker) {
            return Err(AppError::new(
                StatusCode::CONFLICT,
                format!(
                    "a replay of pipeline {:?} is running; resolve its dead letters once it is done",
                    p.name
                ),
            ));
        }
        let store = log.store();
        let quarantine = p.on_dead_letter == OnDeadLetter::Quarantine;
        let topic = p.replay_topic();
        let mut commit = Commit {
            pipeline: p.name.clone(),
            ..Commit::default()
        };
        let mut emits = Vec::new();
        let mut open: HashMap<String, u64> = HashMap::new();
        let single = ids.len() == 1;
        for (id, override_value) in ids {
            let Some(json) = store.dead_letter(&p.name, id).map_err(AppError::internal)? else {
                if single {
                    return Err(AppError::not_found(format!(
                        "pipeline {:?} has no dead letter {id}",
                        p.name
                    )));
                }
                continue;
            };
            let dl = DeadLetter::from_json(&json)
                .map_err(|e| AppError::internal(format!("dead letter {id} is not readable: {e}")))?;
            if replay {
                emits.push((topic.clone(), replay_record(id, &dl, override_value)?));
            }
            commit.remove_dead.push(id);
            if let (true, Some(key), Stage::Aggregate) = (quarantine, dl.key.as_deref(), dl.stage)
            {
                let n = match open.get(key) {
                    Some(n) => *n,
                    None => store
                        .quarantined(&p.name, key)
                        .map_err(AppError::internal)?,
                };
                open.insert(key.to_owned(), n.saturating_sub(1));
            }
        }
        for (key, n) in open {
            if n == 0 {
                for (seq, bytes) in store.parked(&p.name, &key).map_err(AppError::internal)? {
                    let r = LogRecord::decode(&bytes).map_err(AppError::internal)?;
                    emits.push((
                        topic.clone(),
                        ProduceRecord {
                            partition: Some(0),
                            key: r.key,
                            headers: r.headers,
                            value: r.value,
                        },
                    ));
                    commit.unpark.push((key.clone(), seq));
                }
                tracing::info!(pipeline = %p.name, key = %key, "quarantine lifted");
            }
            commit.quarantine.push((key, n));
        }
        let n = commit.remove_dead.len();
        crate::sink::commit_embedded(&log, &mut commit, emits).map_err(AppError::internal)?;
        Ok(n)
    })
    .await
}

fn replay_record(id: u64, dl: &DeadLetter, value: Option<Vec<u8>>) -> ApiResult<ProduceRecord> {
    let corrupt = || AppError::internal(format!("dead letter {id} is not readable"));
    let value = match value {
        Some(v) => v,
        None => unbase64(&dl.value_base64).ok_or_else(corrupt)?,
    };
    let key = dl.record_key_base64.as_deref().and_then(unbase64);
    let mut headers: Vec<(String, Vec<u8>)> = dl
        .headers
        .iter()
        .filter(|(n, _)| n != SOURCE_HEADER && n != REPLAY_HEADER)
        .filter_map(|(n, v)| Some((n.clone(), unbase64(v)?)))
        .collect();
    // Where the event first came from, also when it failed again after an
    // earlier replay.
    headers.push((
        SOURCE_HEADER.to_owned(),
        dl.origin().to_string().into_bytes(),
    ));
    headers.push((REPLAY_HEADER.to_owned(), id.to_string().into_bytes()));
    Ok(ProduceRecord {
        partition: Some(0),
        key,
        headers,
        value,
    })
}
