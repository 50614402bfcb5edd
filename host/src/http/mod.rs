//! Stage 7, serve: the HTTP API (axum on hyper) — the producer endpoint,
//! state queries, SSE streams, and the per-pipeline route aliases (`mount`).

mod cluster;
mod control;
mod dead_letters;
pub mod guard;
mod plugins;
mod produce;
pub mod reads;
mod registry;
mod replay;
mod schedules;
mod sse;
pub mod ui;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::PipelineConfig;
use crate::notify::Hub;
use crate::route::KeySpec;
use crate::source::embedded::EmbeddedLog;
use crate::store::Store;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The store (read through `spawn_blocking`, or [`AppState::reads`]).
    pub store: Store,
    /// The threads the query routes read the store on.
    pub reads: Arc<reads::Reads>,
    /// The embedded log (its topics on the embedded source, the replay
    /// topics on both).
    pub log: Arc<EmbeddedLog>,
    /// The pipelines' source read by position (replays, shadow runs).
    pub history: crate::source::rewind::History,
    /// Where produced records go (the embedded log or Kafka).
    pub sink: crate::sink::Sink,
    /// Committed-change notifications.
    pub hub: Hub,
    /// Pipelines by name.
    pub pipelines: Arc<HashMap<String, PipelineConfig>>,
    /// How each pipeline decodes and keys its records, by name.
    pub intakes: Arc<HashMap<String, crate::pipeline::Intake>>,
    /// SSE keep-alive interval.
    pub keepalive: Duration,
    /// Per-pipeline locks shared with the workers.
    pub locks: Arc<HashMap<String, crate::pipeline::PipelineLock>>,
    /// Replay progress per pipeline.
    pub replays: Arc<HashMap<String, crate::pipeline::replay::Tracker>>,
    /// The live plugin versions.
    pub registry: Arc<crate::execute::registry::Registry>,
    /// Bearer token of the admin routes; `None` turns them off.
    pub admin_token: Option<String>,
    /// Largest component a plugin upload may be (`http.max_plugin_bytes`).
    pub max_plugin_bytes: usize,
    /// The topic naming rule of `POST /v1/topics`, if any.
    pub topic_naming: Option<String>,
    /// Tokens, rate limits and SSE caps.
    pub gate: Arc<guard::Gate>,
    /// The metrics recorder (`None`: metrics off).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Per-pipeline source readiness.
    pub readiness: crate::source::Readiness,
    /// The embedded schema registry (`None` with an external one).
    pub schemas: Option<Arc<crate::schema::Registry>>,
    /// Becomes `true` when the host shuts down: SSE streams end then.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Cluster mode: this host's name, and the partitions it owns per
    /// pipeline with state.
    pub cluster: Option<Cluster>,
    /// Per pipeline, set while it is paused (shared with its worker).
    pub paused: Arc<HashMap<String, Arc<crate::pipeline::PauseSwitch>>>,
    /// The schedules (`[[schedule]]`).
    pub schedules: Arc<Vec<crate::config::ScheduleConfig>>,
    /// Reloads the config file (`POST /v1/config/reload`).
    pub reload: Option<Reloader>,
    /// The producer endpoint starts a trace for a record without a
    /// `traceparent`, sampled at this ratio (`[tracing]`).
    pub start_traces: Option<f64>,
}

pub use cluster::Cluster;

/// Reads the config file again and applies its pipeline, plugin and
/// schedule changes: what changed (JSON), or why it did not all happen.
pub type Reloader = Arc<dyn Fn() -> Result<serde_json::Value, ReloadFailure> + Send + Sync>;

/// A config reload that did not (all) happen.
#[derive(Debug)]
pub struct ReloadFailure {
    /// `false`: refused, nothing changed. `true`: applied, but some
    /// pipelines could not start (named in `problems`).
    pub applied: bool,
    /// Every problem, each naming its section, pipeline, plugin or file.
    pub problems: Vec<String>,
}

impl AppState {
    fn pipeline(&self, name: &str) -> Result<&PipelineConfig, AppError> {
        self.pipelines
            .get(name)
            .ok_or_else(|| AppError::not_found(format!("pipeline {name:?} does not exist")))
    }

    fn intake(&self, name: &str) -> Result<&crate::pipeline::Intake, AppError> {
        self.intakes
            .get(name)
            .ok_or_else(|| AppError::not_found(format!("pipeline {name:?} does not exist")))
    }

    /// Pipelines reading `topic`, with their key rules.
    fn consumers_of(&self, topic: &str) -> Vec<&PipelineConfig> {
        self.pipelines
            .values()
            .filter(|p| p.topic == topic)
            .collect()
    }

    fn consumers(&self, topic: &str) -> Vec<(&str, KeySpec)> {
        self.pipelines
            .values()
            .filter(|p| p.topic == topic)
            .map(|p| (p.name.as_str(), KeySpec::new(p.key_field.as_deref())))
            .collect()
    }
}

/// An error answer: a status and a JSON body `{"error": "..."}`.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    message: String,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u32>,
}

impl AppError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        AppError {
            retry_after: None,
            status,
            message: message.into(),
        }
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    fn insufficient_storage(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INSUFFICIENT_STORAGE, message)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        r
    }
}

type ApiResult<T> = Result<T, AppError>;

/// Runs a blocking store read off the async workers.
/// Runs a query route's store read on the read pool.
async fn read<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    s.reads
        .run(f)
        .await
        .ok_or_else(|| AppError::internal("the store read failed"))?
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(AppError::internal)?
}

/// A stored JSON document served as is.
fn json_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// The whole router.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/topics", get(list_topics).post(control::create_topic))
        .route("/v1/lag", get(control::lag))
        .route("/v1/consumer/rebalance", post(control::rebalance))
        .route("/v1/config/reload", post(control::reload))
        .route(
            "/v1/topics/{topic}/records",
            post(produce::produce).get(produce::read_records),
        )
        .route("/v1/plugins", get(plugins::list))
        .route(
            "/v1/plugins/{name}",
            get(plugins::get_one)
                .put(plugins::upload)
                .layer(body_limit(state.max_plugin_bytes)),
        )
        .route("/v1/plugins/{name}/rollback", post(plugins::rollback))
        .route(
            "/v1/plugins/{name}/shadow",
            post(plugins::shadow).layer(body_limit(state.max_plugin_bytes)),
        )
        .route("/v1/pipelines", get(list_pipelines))
        .route("/v1/schedules", get(schedules::list))
        .route("/v1/schedules/{name}/runs", get(schedules::runs))
        .route("/v1/pipelines/{pipeline}", get(pipeline_progress))
        .route("/v1/pipelines/{pipeline}/state/{key}", get(get_state))
        .route("/v1/pipelines/{pipeline}/timers/{key}", get(get_timers))
        .route("/v1/pipelines/{pipeline}/latest", get(get_latest))
        .route(
            "/v1/pipelines/{pipeline}/replay",
            post(replay::start).get(replay::status),
        )
        .route(
            "/v1/pipelines/{pipeline}/replay/events",
            get(replay::events),
        )
        .route("/v1/pipelines/{pipeline}/events", get(sse::events))
        .route("/v1/pipelines/{pipeline}/pause", post(control::pause))
        .route("/v1/pipelines/{pipeline}/resume", post(control::resume))
        .route(
            "/v1/pipelines/{pipeline}/dead-letters",
            get(dead_letters::list),
        )
        .route(
            "/v1/pipelines/{pipeline}/dead-letters/replay",
            post(dead_letters::replay_matching),
        )
        .route(
            "/v1/pipelines/{pipeline}/dead-letters/{id}",
            get(dead_letters::get_one).delete(dead_letters::delete_one),
        )
        .route(
            "/v1/pipelines/{pipeline}/dead-letters/{id}/replay",
            post(dead_letters::replay_one),
        );
    for p in state.pipelines.values() {
        if let Some(m) = &p.mount {
            router = mount(router, &p.name, &m.path, m.create.is_some());
        }
    }
    router
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route("/readyz", get(readyz))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/ui", get(ui::root))
        .route("/ui/", get(ui::page))
        .route("/ui/{file}", get(ui::file))
        .nest("/registry", registry::routes())
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::gate,
        ))
        .layer(axum::middleware::from_fn(count_requests))
        // Outside the gate, so its refusals carry them too.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(ui::API_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .with_state(state)
}

/// Route aliases that serve one pipeline under its own path.
fn mount(router: Router<AppState>, pipeline: &str, path: &str, create: bool) -> Router<AppState> {
    let p1 = pipeline.to_owned();
    let p2 = pipeline.to_owned();
    let p3 = pipeline.to_owned();
    let p4 = pipeline.to_owned();
    let mut router = router
        .route(
            &format!("{path}/latest"),
            get(
                move |s: State<AppState>, q: Query<LatestQuery>, asked: cluster::Asked| async move {
                    latest(s.0, p1, q.0, asked).await
                },
            ),
        )
        .route(
            &format!("{path}/sse/{{key}}"),
            get(
                move |s: State<AppState>,
                      Path(key): Path<String>,
                      asked: cluster::Asked,
                      h: HeaderMap| async move {
                    sse::key_stream(s.0, &p2, key, &asked, &h).await
                },
            ),
        )
        .route(
            &format!("{path}/{{key}}"),
            get(
                move |s: State<AppState>, Path(key): Path<String>, asked: cluster::Asked| async move {
                    state_of(s.0, p3, key, asked).await
                },
            ),
        );
    if create {
        router = router.route(
            path,
            post(
                move |s: State<AppState>, body: axum::body::Bytes| async move {
                    produce::create(s.0, p4, body).await
                },
            ),
        );
    }
    router
}

async fn fallback() -> AppError {
    AppError::not_found("no such route; see the API reference in the README")
}

/// Counts every request by method, matched route (not the raw path, to
/// keep the label's cardinality low) and status.
async fn count_requests(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    crate::telemetry::http_request(method, route, response.status().as_u16(), started.elapsed());
    response
}

/// `GET /metrics`: Prometheus text format. Gauges that are cheap to read
/// on demand (lag, outbox, store size) are refreshed first.
async fn metrics_text(State(s): State<AppState>) -> ApiResult<Response> {
    let Some(handle) = s.metrics.clone() else {
        return Err(AppError::not_found("metrics are off"));
    };
    let (store, sink, pipelines) = (s.store.clone(), s.sink.clone(), s.pipelines.clone());
    blocking(move || {
        for p in pipelines.values() {
            // A broker that cannot be asked right now leaves the last values.
            if let Ok(Some(ends)) = sink.high_watermarks(&p.topic) {
                for (part, end) in (0u32..).zip(ends) {
                    let committed = store.offset(&p.name, &p.topic, part).unwrap_or(0);
                    crate::telemetry::consumer_lag(
                        &p.name,
                        &p.topic,
                        part,
                        end.saturating_sub(committed),
                    );
                }
            }
        }
        if let crate::sink::Sink::Kafka(k) = &sink {
            crate::telemetry::outbox_records(k.outbox_depth());
        }
        crate::telemetry::store_disk_bytes(store.disk_bytes());
        if let Some(free) = store.free_bytes() {
            crate::telemetry::store_free_bytes(free);
        }
        handle.run_upkeep();
        Ok((
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response())
    })
    .await
}

/// `GET /readyz`: 200 when the store is open, every plugin is loaded and
/// every pipeline's source is connected (and, on Kafka, has its
/// assignment); 503 with the reasons otherwise.
async fn readyz(State(s): State<AppState>) -> Response {
    let mut reasons = Vec::new();
    for p in s.pipelines.values() {
        for plugin in p.aggregator.iter().chain(p.handlers.iter()) {
            if s.registry.slot(plugin).is_none() {
                reasons.push(format!(
                    "pipeline {:?}: plugin {plugin:?} is not loaded",
                    p.name
                ));
            }
        }
    }
    for (pipeline, why) in s.readiness.not_ready() {
        reasons.push(format!("pipeline {pipeline:?}: {why}"));
    }
    if let Some(low) = s.store.low_space() {
        reasons.push(low.to_string());
    }
    if *s.shutdown.borrow() {
        reasons.push("shutting down".into());
    }
    if let Some(why) = s.cluster.as_ref().and_then(|c| c.directory.conflict()) {
        reasons.push(why);
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": reasons.is_empty(), "reasons": reasons })),
    )
        .into_response()
}

/// The API document: the fixed routes (`http/openapi.json`) plus this
/// host's `mount` aliases.
async fn openapi(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("openapi.json")).map_err(AppError::internal)?;
    let Some(paths) = doc
        .get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return Err(AppError::internal("openapi.json has no paths"));
    };
    let op = |summary: String, auth: &str, key: bool| {
        let mut o = serde_json::json!({ "summary": summary, "x-eddy-auth": auth, "responses": { "200": { "description": "OK" } } });
        if key && let Some(m) = o.as_object_mut() {
            m.insert(
                "parameters".into(),
                serde_json::json!([{ "name": "key", "in": "path", "required": true, "schema": { "type": "string" } }]),
            );
        }
        o
    };
    for p in s.pipelines.values() {
        let Some(m) = &p.mount else { continue };
        let name = &p.name;
        paths.insert(format!("{}/latest", m.path), serde_json::json!({ "get": op(format!("Pipeline {name}: most recently changed states."), "read", false) }));
        paths.insert(format!("{}/{{key}}", m.path), serde_json::json!({ "get": op(format!("Pipeline {name}: a key's state."), "read", true) }));
        paths.insert(format!("{}/sse/{{key}}", m.path), serde_json::json!({ "get": op(format!("Pipeline {name}: a key's changes as SSE."), "read", true) }));
        if m.create.is_some() {
            paths.insert(m.path.clone(), serde_json::json!({ "post": op(format!("Pipeline {name}: create an entity (produces its first event)."), "token", false) }));
        }
    }
    Ok(Json(doc))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn list_topics(State(s): State<AppState>) -> Json<serde_json::Value> {
    let topics: Vec<_> = s
        .log
        .list()
        .into_iter()
        .map(|(name, ends)| {
            serde_json::json!({ "name": name, "partitions": ends.len(), "high_watermarks": ends })
        })
        .collect();
    Json(serde_json::json!({ "topics": topics }))
}

async fn list_pipelines(State(s): State<AppState>) -> Json<serde_json::Value> {
    let mut v: Vec<_> = s
        .pipelines
        .values()
        .map(|p| {
            serde_json::json!({
                "name": p.name, "topic": p.topic, "key_field": p.key_field,
                "value_format": p.value_format, "message_type": p.message_type,
                "aggregator": p.aggregator, "handlers": p.handlers,
                "changelog_topic": p.changelog_topic,
                "mount": p.mount.as_ref().map(|m| m.path.clone()),
            })
        })
        .collect();
    v.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(serde_json::json!({ "pipelines": v }))
}

/// `GET /v1/pipelines/{p}`: the pipeline's position in its topic, per
/// partition: committed offset, high watermark and lag.
async fn pipeline_progress(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let p = s.pipeline(&pipeline)?.clone();
    let (store, sink) = (s.store.clone(), s.sink.clone());
    let paused = s.paused.get(&pipeline).is_some_and(|f| f.is_asked());
    blocking(move || {
        let ends = sink
            .high_watermarks(&p.topic)
            .map_err(|e| AppError::unavailable(e.to_string()))?
            .unwrap_or_default();
        let mut rows = Vec::with_capacity(ends.len());
        let mut total_lag = 0u64;
        for (part, end) in (0u32..).zip(ends) {
            let committed = store
                .offset(&p.name, &p.topic, part)
                .map_err(AppError::internal)?;
            let lag = end.saturating_sub(committed);
            total_lag += lag;
            rows.push(serde_json::json!({
                "partition": part, "committed_offset": committed,
                "high_watermark": end, "lag": lag,
            }));
        }
        Ok(Json(serde_json::json!({
            "name": p.name, "topic": p.topic, "paused": paused, "lag": total_lag, "partitions": rows,
        })))
    })
    .await
}

#[derive(Deserialize)]
struct StateQuery {
    #[serde(default)]
    meta: bool,
}

/// `GET /v1/pipelines/{p}/state/{key}[?meta=true]`: the state as stored, or
/// with `meta`, `{"state", "partition", "seq", "updated_at_ms",
/// "plugin_version"}`.
async fn get_state(
    State(s): State<AppState>,
    Path((pipeline, key)): Path<(String, String)>,
    q: Query<StateQuery>,
    asked: cluster::Asked,
) -> ApiResult<Response> {
    if !q.meta {
        return state_of(s, pipeline, key, asked).await;
    }
    let partition = s.intake(&pipeline)?.partition_of(&key);
    if let cluster::Answer::There(r) = s.route(&pipeline, partition, &asked).await? {
        return Ok(r);
    }
    let store = s.store.clone();
    read(&s, move || {
        match store
            .state(&pipeline, partition, &key)
            .map_err(AppError::internal)?
        {
            Some(st) => Ok(json_text(format!(
                "{{\"state\":{},\"partition\":{partition},\"seq\":{},\"updated_at_ms\":{},\"plugin_version\":{}}}",
                st.state.json_text(),
                st.seq,
                st.stamp_us / 1000,
                serde_json::Value::String(st.plugin_version)
            ))),
            None => Err(AppError::not_found(format!(
                "pipeline {pipeline:?} has no state for key {key:?}"
            ))),
        }
    })
    .await
}

/// `GET /v1/pipelines/{p}/timers/{key}`: the key's pending timers, by
/// name: `[{"name", "time", "at_ms", "payload"}]` (empty when none).
async fn get_timers(
    State(s): State<AppState>,
    Path((pipeline, key)): Path<(String, String)>,
    asked: cluster::Asked,
) -> ApiResult<Response> {
    let partition = s.intake(&pipeline)?.partition_of(&key);
    if let cluster::Answer::There(r) = s.route(&pipeline, partition, &asked).await? {
        return Ok(r);
    }
    let store = s.store.clone();
    read(&s, move || {
        let timers = store
            .key_timers(&pipeline, &key)
            .map_err(AppError::internal)?;
        let rows: Vec<serde_json::Value> = timers
            .into_iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "time": t.domain.as_str(),
                    "at_ms": t.at_ms,
                    "payload": serde_json::from_str::<serde_json::Value>(&t.payload)
                        .unwrap_or(serde_json::Value::Null),
                })
            })
            .collect();
        Ok(json_text(serde_json::Value::Array(rows).to_string()))
    })
    .await
}

async fn state_of(
    s: AppState,
    pipeline: String,
    key: String,
    asked: cluster::Asked,
) -> ApiResult<Response> {
    let partition = s.intake(&pipeline)?.partition_of(&key);
    if let cluster::Answer::There(r) = s.route(&pipeline, partition, &asked).await? {
        return Ok(r);
    }
    let store = s.store.clone();
    read(&s, move || {
        match store
            .state(&pipeline, partition, &key)
            .map_err(AppError::internal)?
        {
            Some(st) => Ok(json_text(st.state.json_text().to_owned())),
            None => Err(AppError::not_found(format!(
                "pipeline {pipeline:?} has no state for key {key:?}"
            ))),
        }
    })
    .await
}

#[derive(Deserialize)]
struct LatestQuery {
    limit: Option<usize>,
    /// Rows as `{"key", "partition", "seq", "stamp_us", "state"}`.
    #[serde(default)]
    meta: bool,
}

async fn get_latest(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
    q: Query<LatestQuery>,
    asked: cluster::Asked,
) -> ApiResult<Response> {
    latest(s, pipeline, q.0, asked).await
}

/// The `limit` most recently changed keys' states, newest first. In
/// cluster mode, over every partition: this host's own, merged with each
/// other owner's top `limit` (a forwarded query answers for this host's
/// partitions only); partitions no host answered for are named in the
/// `eddy-missing` header.
async fn latest(
    s: AppState,
    pipeline: String,
    q: LatestQuery,
    asked: cluster::Asked,
) -> ApiResult<Response> {
    let max = s.pipeline(&pipeline)?.latest;
    let limit = q.limit.unwrap_or(max);
    if limit == 0 || limit > max {
        return Err(AppError::bad_request(format!(
            "limit must be within 1..={max} (the pipeline's `latest` setting)"
        )));
    }
    let n = s.intake(&pipeline)?.partitions();
    // In cluster mode, the partitions this host owns.
    let partitions: Vec<u32> = match s.owned(&pipeline) {
        Some(o) => (0..n).filter(|p| o.owns(*p)).collect(),
        None => (0..n).collect(),
    };
    let store = s.store.clone();
    let name = pipeline.clone();
    let mut rows: Vec<cluster::LatestRow> = read(&s, move || {
        let rows = store
            .latest(&name, partitions, limit)
            .map_err(AppError::internal)?;
        rows.into_iter()
            .map(|(key, partition, st)| {
                Ok(cluster::LatestRow {
                    key,
                    partition,
                    seq: st.seq,
                    stamp_us: st.stamp_us,
                    state: serde_json::from_str(st.state.json_text())
                        .map_err(AppError::internal)?,
                })
            })
            .collect()
    })
    .await?;
    let mut missing = std::collections::BTreeMap::new();
    if !asked.is_forwarded() {
        let (theirs, gaps) = cluster::latest_elsewhere(&s, &pipeline, n, limit, &asked).await;
        rows.extend(theirs);
        missing = gaps;
        rows.sort_by(|a, b| b.stamp_us.cmp(&a.stamp_us).then_with(|| a.key.cmp(&b.key)));
        rows.truncate(limit);
    }
    let body = if q.meta {
        serde_json::to_string(&rows)
    } else {
        serde_json::to_string(&rows.iter().map(|r| &r.state).collect::<Vec<_>>())
    }
    .map_err(AppError::internal)?;
    let mut r = json_text(body);
    if let Some(v) = cluster::missing_header(&missing) {
        r.headers_mut().insert(cluster::MISSING_HEADER, v);
    }
    Ok(r)
}

/// The body-size layer for the router.
pub fn body_limit(bytes: usize) -> DefaultBodyLimit {
    DefaultBodyLimit::max(bytes)
}

/// Cross-origin access for browsers (`http.cors_origins`): the listed
/// origins may call every route — preflights answered, `Authorization`,
/// `Content-Type` and `Last-Event-ID` allowed, the browser's credentials
/// included, SSE too; no other origin gets an `Access-Control-Allow-Origin`.
/// `None` when no origin is listed.
///
/// # Errors
/// An origin that is not a valid header value (the config's validation
/// refuses such origins first).
pub fn cors(
    origins: &[String],
    max_age: Duration,
) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
    use axum::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins
        .iter()
        .map(|o| {
            HeaderValue::from_str(o).map_err(|e| anyhow::anyhow!("http.cors_origins: {o:?}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::LOCATION,
                header::WWW_AUTHENTICATE,
            ])
            .allow_credentials(true)
            .max_age(max_age),
    ))
}
