//! Dead letters over HTTP: list with filters and paging, get, delete, and
//! replay one or a filtered set back into the pipeline (through its replay
//! topic, so the replayed event runs through the same stages and commit).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::cluster::{self, Answer, Asked};
use super::{ApiResult, AppError, AppState, blocking, json_text};
use crate::pipeline::dead_letter::{self, ResolveError};
use crate::store::dead_letter_partition;

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

/// In cluster mode, which dead letters this host answers for: the input's
/// partition count and the partitions it owns (`None`: all of them).
fn kept_here(s: &AppState, pipeline: &str) -> Option<(u32, Vec<u32>)> {
    s.owned(pipeline).map(|o| (o.partitions(), o.owned()))
}

fn is_kept(keep: Option<&(u32, Vec<u32>)>, id: u64) -> bool {
    keep.is_none_or(|(n, owned)| owned.contains(&dead_letter_partition(id, *n)))
}

/// This store's dead letters of `pipeline` after `after` that match
/// `filter` and are answered for here, up to `limit`, oldest first.
fn local_matches(
    store: &crate::store::Store,
    pipeline: &str,
    (after, limit): (u64, usize),
    filter: &Filter,
    keep: Option<&(u32, Vec<u32>)>,
) -> ApiResult<Vec<(u64, Value)>> {
    let mut after = after;
    let mut out = Vec::new();
    loop {
        let page = store
            .dead_letters(pipeline, after, 1000)
            .map_err(AppError::internal)?;
        let n = page.len();
        for (id, json) in page {
            after = id;
            if !is_kept(keep, id) {
                continue;
            }
            let v: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
            if filter.matches(&v) {
                out.push((id, v));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        if n < 1000 {
            return Ok(out);
        }
    }
}

/// The `missing` part of a cluster-wide answer: partition → why.
fn missing_json(missing: &BTreeMap<u32, String>) -> Value {
    missing
        .iter()
        .map(|(p, why)| (p.to_string(), Value::String(why.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `GET /v1/pipelines/{p}/dead-letters?after=&limit=&stage=&error_class=&key=&plugin=`.
/// In cluster mode every owner's dead letters of its partitions, merged by
/// id; `missing` names the partitions no host answered for.
pub async fn list(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
    asked: Asked,
    q: Query<ListQuery>,
) -> ApiResult<Response> {
    s.pipeline(&pipeline)?;
    let q = q.0;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let after = q.after.unwrap_or(0);
    let filter = Filter {
        stage: q.stage,
        error_class: q.error_class,
        key: q.key,
        plugin: q.plugin,
    };
    let keep = kept_here(&s, &pipeline);
    let store = s.store.clone();
    let name = pipeline.clone();
    let mine = keep.clone();
    let mut rows =
        blocking(move || local_matches(&store, &name, (after, limit), &filter, mine.as_ref()))
            .await?;
    let mut missing = BTreeMap::new();
    if let Some((n, _)) = keep.as_ref().filter(|_| !asked.is_forwarded()) {
        let (answers, gaps) =
            cluster::ask_owners(&s, &pipeline, *n, asked.path_and_query(), &asked, None).await;
        missing = gaps;
        for (host, parts, got) in answers {
            let theirs = got.and_then(|body| {
                let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                Ok(v.get("dead_letters")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default())
            });
            match theirs {
                Ok(list) => rows.extend(list.into_iter().filter_map(|v| {
                    let id = v.get("id").and_then(Value::as_u64)?;
                    parts
                        .contains(&dead_letter_partition(id, *n))
                        .then_some((id, v))
                })),
                Err(why) => {
                    for p in parts {
                        missing.insert(p, format!("host {host:?} did not answer: {why}"));
                    }
                }
            }
        }
        rows.sort_by_key(|(id, _)| *id);
        rows.dedup_by_key(|(id, _)| *id);
        rows.truncate(limit);
    }
    let next = (rows.len() >= limit)
        .then(|| rows.last().map(|(id, _)| *id))
        .flatten();
    let mut body = serde_json::json!({
        "dead_letters": rows.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "next_after": next,
    });
    if !missing.is_empty()
        && let Some(o) = body.as_object_mut()
    {
        o.insert("missing".into(), missing_json(&missing));
    }
    let mut r = Json(body).into_response();
    if let Some(v) = cluster::missing_header(&missing) {
        r.headers_mut().insert(cluster::MISSING_HEADER, v);
    }
    Ok(r)
}

fn parse_id(id: &str) -> ApiResult<u64> {
    id.parse()
        .map_err(|_| AppError::bad_request(format!("dead letter id {id:?} is not a number")))
}

/// In cluster mode, the owner's answer to a request about dead letter
/// `id` when another host owns its partition (`None`: answer here).
async fn at_owner(
    s: &AppState,
    pipeline: &str,
    id: u64,
    asked: &Asked,
) -> ApiResult<Option<Response>> {
    let Some(o) = s.owned(pipeline) else {
        return Ok(None);
    };
    let partition = dead_letter_partition(id, o.partitions());
    match s.route(pipeline, partition, asked).await? {
        Answer::Here => Ok(None),
        Answer::There(r) => Ok(Some(r)),
    }
}

/// `GET /v1/pipelines/{p}/dead-letters/{id}`
pub async fn get_one(
    State(s): State<AppState>,
    Path((pipeline, id)): Path<(String, String)>,
    asked: Asked,
) -> ApiResult<Response> {
    s.pipeline(&pipeline)?;
    let id = parse_id(&id)?;
    if let Some(r) = at_owner(&s, &pipeline, id, &asked).await? {
        return Ok(r);
    }
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
    asked: Asked,
) -> ApiResult<Response> {
    s.pipeline(&pipeline)?;
    let id = parse_id(&id)?;
    if let Some(r) = at_owner(&s, &pipeline, id, &asked).await? {
        return Ok(r);
    }
    let n = resolve(&s, &pipeline, vec![(id, None)], false).await?;
    Ok(Json(serde_json::json!({ "deleted": n })).into_response())
}

/// `POST /v1/pipelines/{p}/dead-letters/{id}/replay`, body optional:
/// `{"value": ...}` replays a corrected value instead of the original.
pub async fn replay_one(
    State(s): State<AppState>,
    Path((pipeline, id)): Path<(String, String)>,
    asked: Asked,
    body: Bytes,
) -> ApiResult<Response> {
    s.pipeline(&pipeline)?;
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
    if let Some(r) = at_owner(&s, &pipeline, id, &asked.with_body(&body)).await? {
        return Ok(r);
    }
    let n = resolve(&s, &pipeline, vec![(id, value)], true).await?;
    Ok(Json(serde_json::json!({ "replayed": n })).into_response())
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
/// In cluster mode each owner replays the matches of its partitions
/// (`limit` is per host); `missing` names the partitions none could.
pub async fn replay_matching(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
    asked: Asked,
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
    let keep = kept_here(&s, &pipeline);
    let store = s.store.clone();
    let p = pipeline.clone();
    let mine = keep.clone();
    let ids = blocking(move || {
        Ok(
            local_matches(&store, &p, (0, limit), &filter, mine.as_ref())?
                .into_iter()
                .map(|(id, _)| (id, None))
                .collect::<Vec<_>>(),
        )
    })
    .await?;
    let mut n = if ids.is_empty() {
        0
    } else {
        resolve(&s, &pipeline, ids, true).await?
    };
    let mut missing = BTreeMap::new();
    if let Some((parts, _)) = keep.as_ref().filter(|_| !asked.is_forwarded()) {
        let (answers, gaps) = cluster::ask_owners(
            &s,
            &pipeline,
            *parts,
            asked.path_and_query(),
            &asked,
            Some(body.to_vec()),
        )
        .await;
        missing = gaps;
        for (host, parts, got) in answers {
            let theirs = got.and_then(|body| {
                let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                v.get("replayed")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| "its answer has no count".to_owned())
            });
            match theirs {
                Ok(k) => n += usize::try_from(k).unwrap_or(usize::MAX),
                Err(why) => {
                    for p in parts {
                        missing.insert(p, format!("host {host:?} did not answer: {why}"));
                    }
                }
            }
        }
    }
    let mut out = serde_json::json!({ "replayed": n });
    if !missing.is_empty()
        && let Some(o) = out.as_object_mut()
    {
        o.insert("missing".into(), missing_json(&missing));
    }
    Ok(Json(out))
}

/// Resolves dead letters (see [`dead_letter::resolve`]) off the async
/// workers, answering in HTTP terms.
async fn resolve(
    s: &AppState,
    pipeline: &str,
    ids: Vec<(u64, Option<Vec<u8>>)>,
    replay: bool,
) -> ApiResult<usize> {
    let shared = match (&s.cluster, &s.sink) {
        (Some(c), crate::sink::Sink::Kafka(k)) => {
            c.ownership.get(pipeline).map(|o| dead_letter::Shared {
                sink: k.clone(),
                ownership: o.clone(),
            })
        }
        _ => None,
    };
    let at = dead_letter::Resolving {
        config: s.pipeline(pipeline)?.clone(),
        log: s.log.clone(),
        lock: s.locks.get(pipeline).cloned().unwrap_or_default(),
        replays: s.replays.get(pipeline).cloned().unwrap_or_default(),
        shared,
    };
    let host = s
        .cluster
        .as_ref()
        .map(|c| c.directory.host_id().to_owned())
        .unwrap_or_default();
    blocking(move || {
        dead_letter::resolve(&at, ids, replay).map_err(|e| match e {
            e @ ResolveError::Missing { .. } => AppError::not_found(e.to_string()),
            e @ ResolveError::ReplayRunning(_) => {
                AppError::new(StatusCode::CONFLICT, e.to_string())
            }
            e @ ResolveError::NotOwned { .. } => AppError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!("{e} (host {host:?}); ask again"),
            ),
            e => AppError::internal(e),
        })
    })
    .await
}
