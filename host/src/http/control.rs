//! Control APIs for operators: create topics (on either source), read the
//! lag of every pipeline, make this host leave and rejoin its consumer
//! groups (to move load), and pause or resume a pipeline.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::cluster::Asked;
use super::plugins::require_admin;
use super::{ApiResult, AppError, AppState, blocking};
use crate::sink::Sink;

/// Longest retention a topic may ask for: 30 days.
const MAX_RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTopic {
    name: String,
    #[serde(default)]
    partitions: Option<u32>,
    #[serde(default)]
    retention_ms: Option<u64>,
    #[serde(default)]
    compact: bool,
}

/// Checks `name` against the `entity.event_type.version` rule: three
/// dot-separated parts of lowercase letters, digits, `_` or `-`, the last
/// `v` and a number (`order.created.v1`).
fn check_naming(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('.').collect();
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    match parts.as_slice() {
        [entity, event, version]
            if ok_part(entity)
                && ok_part(event)
                && version
                    .strip_prefix('v')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "topic name {name:?} does not follow the naming rule entity.event_type.version (such as order.created.v1)"
        )),
    }
}

/// `POST /v1/topics`: `{"name", "partitions"?, "retention_ms"?, "compact"?}`.
pub async fn create_topic(
    State(s): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let t: NewTopic =
        serde_json::from_slice(&body).map_err(|e| AppError::unprocessable(format!("body: {e}")))?;
    crate::config::validate_topic_name(&t.name).map_err(AppError::unprocessable)?;
    if s.topic_naming.is_some() {
        check_naming(&t.name).map_err(AppError::unprocessable)?;
    }
    if t.name.starts_with("__") {
        return Err(AppError::unprocessable(format!(
            "topic {:?}: names starting with \"__\" are reserved",
            t.name
        )));
    }
    let partitions = t.partitions.unwrap_or(4);
    if !(1..=1024).contains(&partitions) {
        return Err(AppError::unprocessable(
            "partitions must be within 1..=1024",
        ));
    }
    if let Some(r) = t.retention_ms
        && (r == 0 || r > MAX_RETENTION_MS)
    {
        return Err(AppError::unprocessable(format!(
            "retention_ms must be within 1..={MAX_RETENTION_MS} (30 days)"
        )));
    }
    let created = match &s.sink {
        Sink::Embedded(log) => {
            if let Some(existing) = log.partitions(&t.name) {
                if existing != partitions {
                    return Err(AppError::new(
                        StatusCode::CONFLICT,
                        format!("topic {:?} exists with {existing} partitions", t.name),
                    ));
                }
                false
            } else {
                let (log, name) = (log.clone(), t.name.clone());
                blocking(move || {
                    log.ensure_topic(&name, Some(partitions))
                        .map_err(|e| AppError::unprocessable(e.to_string()))
                })
                .await?;
                true
            }
        }
        Sink::Kafka(k) => {
            let mut configs = Vec::new();
            if let Some(r) = t.retention_ms {
                configs.push(("retention.ms", r.to_string()));
            }
            if t.compact {
                configs.push(("cleanup.policy", "compact".to_owned()));
            }
            let spec = crate::kafka::NewTopicSpec {
                name: t.name.clone(),
                partitions,
                configs,
            };
            crate::kafka::create_topics(k.config(), &[spec])
                .await
                .map_err(|e| AppError::unavailable(e.to_string()))?
                .first()
                .copied()
                .unwrap_or(false)
        }
    };
    let embedded = matches!(s.sink, Sink::Embedded(_));
    let mut answer = json!({
        "name": t.name, "partitions": partitions, "created": created,
        "retention_ms": t.retention_ms, "compact": t.compact,
    });
    if embedded
        && (t.retention_ms.is_some() || t.compact)
        && let Some(o) = answer.as_object_mut()
    {
        o.insert(
            "note".into(),
            json!("the embedded log keeps every record: retention and compaction apply on Kafka"),
        );
    }
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(answer),
    ))
}

/// `GET /v1/lag`: per pipeline and partition, the offset stored with the
/// state, the offset committed to the group (Kafka; what this host
/// committed), the high watermark and the lag.
pub async fn lag(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let (store, sink, pipelines, control) = (
        s.store.clone(),
        s.sink.clone(),
        s.pipelines.clone(),
        s.readiness.clone(),
    );
    blocking(move || {
        let mut out = Vec::new();
        let mut names: Vec<&String> = pipelines.keys().collect();
        names.sort();
        for name in names {
            let Some(p) = pipelines.get(name) else {
                continue;
            };
            let ends = sink
                .high_watermarks(&p.topic)
                .map_err(|e| AppError::unavailable(e.to_string()))?
                .unwrap_or_default();
            let committed = crate::lock(&control.control().committed).clone();
            let mut rows = Vec::new();
            let mut total = 0u64;
            for (part, end) in (0u32..).zip(ends) {
                let stored = store
                    .stored_offset(&p.name, &p.topic, part)
                    .map_err(AppError::internal)?;
                let group = match &sink {
                    Sink::Embedded(_) => stored,
                    Sink::Kafka(_) => committed
                        .get(&(p.name.clone(), p.topic.clone(), part))
                        .copied(),
                };
                let lag = end.saturating_sub(stored.unwrap_or(0));
                total += lag;
                rows.push(json!({
                    "partition": part, "stored_offset": stored, "committed_offset": group,
                    "high_watermark": end, "lag": lag,
                }));
            }
            out.push(
                json!({ "pipeline": p.name, "topic": p.topic, "lag": total, "partitions": rows }),
            );
        }
        Ok(Json(json!({ "pipelines": out })))
    })
    .await
}

#[derive(Deserialize)]
pub struct RebalanceQuery {
    pipeline: Option<String>,
}

/// `POST /v1/consumer/rebalance[?pipeline=]`: this host's consumers leave
/// their groups (committing first) and join again, so the groups reassign
/// partitions.
pub async fn rebalance(
    State(s): State<AppState>,
    q: Query<RebalanceQuery>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if matches!(s.sink, Sink::Embedded(_)) {
        return Err(AppError::new(
            StatusCode::CONFLICT,
            "the embedded source has no consumer group to rebalance",
        ));
    }
    let names: Vec<String> = match &q.pipeline {
        Some(p) => vec![s.pipeline(p)?.name.clone()],
        None => s.pipelines.keys().cloned().collect(),
    };
    crate::lock(&s.readiness.control().rejoin).extend(names.iter().cloned());
    Ok((StatusCode::ACCEPTED, Json(json!({ "rejoining": names }))))
}

/// How long a pause waits for the worker to finish its batch.
const PAUSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /v1/pipelines/{p}/pause`: the pipeline stops reading its input
/// (its Kafka consumer stays in the group) until resumed, also across a
/// restart; queries go on. Answers once the worker finished the batch in
/// hand (`idle`; within 10 s). In cluster mode every live host is told.
pub async fn pause(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
    asked: Asked,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    switch(s, pipeline, asked, &headers, true).await
}

/// `POST /v1/pipelines/{p}/resume`: undoes a pause; the pipeline reads on
/// from where it stopped.
pub async fn resume(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
    asked: Asked,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    switch(s, pipeline, asked, &headers, false).await
}

async fn switch(
    s: AppState,
    pipeline: String,
    asked: Asked,
    headers: &HeaderMap,
    paused: bool,
) -> ApiResult<Json<Value>> {
    require_admin(&s, headers)?;
    s.pipeline(&pipeline)?;
    let flag = s
        .paused
        .get(&pipeline)
        .cloned()
        .ok_or_else(|| AppError::not_found(format!("pipeline {pipeline:?} does not exist")))?;
    let (store, name) = (s.store.clone(), pipeline.clone());
    blocking(move || store.set_paused(&name, paused).map_err(AppError::internal)).await?;
    flag.ask(paused);
    // A pause holds once the worker finished the batch in hand (and the
    // poll it was in): nothing read after this answer is processed.
    let until = std::time::Instant::now() + PAUSE_WAIT;
    while paused && !flag.is_idle() && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let idle = flag.is_idle();
    crate::telemetry::paused(&pipeline, paused);
    tracing::info!(pipeline = %pipeline, paused, "pipeline {}", if paused { "paused by an operator" } else { "resumed by an operator" });
    let verb = if paused { "pause" } else { "resume" };
    let mut hosts = serde_json::Map::new();
    if !asked.is_forwarded() {
        let told =
            super::cluster::tell_others(&s, &format!("/v1/pipelines/{pipeline}/{verb}"), &asked)
                .await;
        let failed: Vec<String> = told
            .iter()
            .filter_map(|(h, r)| r.as_ref().err().map(|e| format!("host {h:?}: {e}")))
            .collect();
        if !failed.is_empty() {
            return Err(AppError::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "pipeline {pipeline:?} is {} on this host, but not on every host (ask again): {}",
                    if paused { "paused" } else { "resumed" },
                    failed.join("; ")
                ),
            ));
        }
        for (h, _) in told {
            hosts.insert(h, Value::Bool(paused));
        }
    }
    Ok(Json(
        json!({ "pipeline": pipeline, "paused": paused, "idle": idle, "other_hosts": hosts }),
    ))
}

/// `POST /v1/config/reload` (admin): reads the config file again and adds,
/// removes and restarts pipelines to match it; unchanged ones run on. `200`
/// with what changed; `422` with every problem when the new config is
/// refused (nothing changed then); `500` when it was applied but a
/// pipeline could not start (named).
pub async fn reload(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    require_admin(&s, &headers)?;
    let Some(reload) = s.reload.clone() else {
        return Err(AppError::unavailable("this host cannot reload its config"));
    };
    let outcome = blocking(move || Ok(reload())).await?;
    Ok(match outcome {
        Ok(changed) => Json(changed).into_response(),
        Err(failure) => {
            let n = failure.problems.len();
            let (status, what) = if failure.applied {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "config reload applied, but some pipelines did not start",
                )
            } else {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "config reload refused; the running pipelines are untouched",
                )
            };
            (
                status,
                Json(json!({
                    "error": format!("{what} ({n} problem{})", if n == 1 { "" } else { "s" }),
                    "problems": failure.problems,
                })),
            )
                .into_response()
        }
    })
}
