//! Cluster mode in the HTTP API: which host answers for a key, forwarding
//! a query to it (or redirecting the client there), gathering `latest`
//! from every owner, and `GET /v1/cluster`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AppError, AppState};
use crate::cluster::{Directory, HostEntry, Owner};
use crate::source::restore::Ownership;

/// The header a forwarded query carries (the forwarding host's id): the
/// host it reaches answers from its own store or refuses, never forwards
/// again.
pub const FORWARDED_HEADER: &str = "eddy-forwarded";
/// The header naming the host that answered a state query.
pub const SERVED_BY_HEADER: &str = "eddy-served-by";
/// The header listing the partitions a `latest` answer is missing.
pub const MISSING_HEADER: &str = "eddy-missing";
/// How long a forwarded query may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// What this host knows of its place in a group of hosts.
#[derive(Clone)]
pub struct Cluster {
    /// The partitions this host owns, per pipeline with an aggregator.
    pub ownership: Arc<HashMap<String, Arc<Ownership>>>,
    /// The group's hosts, as heard on the hosts topic.
    pub directory: Arc<Directory>,
}

/// How a query was asked: what to forward, and whether it may be.
pub struct Asked {
    path_and_query: String,
    method: Method,
    /// The body passed on with the request (see [`Asked::with_body`]).
    body: Option<Vec<u8>>,
    forwarded: bool,
    redirect: bool,
    authorization: Option<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for Asked {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let redirect = parts.uri.query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv == "redirect=true" || kv == "redirect=1")
        });
        Ok(Asked {
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
            forwarded: parts.headers.contains_key(FORWARDED_HEADER),
            method: parts.method.clone(),
            body: None,
            redirect,
            authorization: parts.headers.get(header::AUTHORIZATION).cloned(),
        })
    }
}

impl Asked {
    /// The request's path and query, as asked.
    pub(super) fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// Whether another host forwarded this query.
    pub fn is_forwarded(&self) -> bool {
        self.forwarded
    }

    /// The request's body, passed on with it when it is forwarded.
    #[must_use]
    pub(super) fn with_body(mut self, body: &[u8]) -> Self {
        self.body = Some(body.to_vec());
        self
    }

    /// The caller's `Authorization`, passed on to the hosts asked.
    pub(super) fn authorization(&self) -> Option<HeaderValue> {
        self.authorization.clone()
    }
}

/// Where a query for a partition goes.
enum Located {
    /// This host owns the partition.
    Here,
    /// Another host does: its entry, URL and the request's URL there.
    There {
        entry: HostEntry,
        url: String,
        target: String,
    },
}

/// Where a state query is answered.
pub enum Answer {
    /// From this host's store.
    Here,
    /// By another host: its answer, passed on.
    There(Response),
}

impl AppState {
    /// In cluster mode, a pipeline's partitions this host owns (`None`:
    /// every partition is served here).
    pub(super) fn owned(&self, pipeline: &str) -> Option<&Ownership> {
        self.cluster.as_ref()?.ownership.get(pipeline).map(|o| &**o)
    }

    fn host_id(&self) -> &str {
        self.cluster.as_ref().map_or("", |c| c.directory.host_id())
    }

    /// Refuses a query for a partition this host does not serve: 503 with
    /// `Retry-After` while it restores it, 421 when another host owns it.
    pub(super) fn serves(&self, pipeline: &str, partition: u32) -> Result<(), AppError> {
        let Some(o) = self.owned(pipeline) else {
            return Ok(());
        };
        if o.owns(partition) {
            return Ok(());
        }
        if o.restoring().contains(&partition) {
            return Err(restoring(pipeline, partition, self.host_id()));
        }
        Err(AppError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "partition {partition} of pipeline {pipeline:?} is not owned by host {:?}",
                self.host_id()
            ),
        ))
    }

    /// Finds who answers a query for `partition` of `pipeline`: this host
    /// when it owns it; else the owner, with the URL the same request has
    /// there. A query that was forwarded already is answered here or
    /// refused.
    fn locate(&self, pipeline: &str, partition: u32, asked: &Asked) -> Result<Located, AppError> {
        let refused = match self.serves(pipeline, partition) {
            Ok(()) => return Ok(Located::Here),
            Err(e) => e,
        };
        let Some(c) = &self.cluster else {
            return Err(refused);
        };
        if asked.forwarded || refused.status != StatusCode::MISDIRECTED_REQUEST {
            return Err(refused);
        }
        match c.directory.owner(pipeline, partition) {
            Owner::Host {
                entry,
                restoring: true,
            } => Err(restoring(pipeline, partition, &entry.host)),
            Owner::Host { entry, .. } => {
                let Some(url) = entry.advertise.clone() else {
                    return Err(AppError::new(
                        StatusCode::MISDIRECTED_REQUEST,
                        format!(
                            "partition {partition} of pipeline {pipeline:?} is owned by host {:?}, which advertises no URL (set its cluster.advertise)",
                            entry.host
                        ),
                    ));
                };
                let target = format!("{}{}", url.trim_end_matches('/'), asked.path_and_query);
                Ok(Located::There { entry, url, target })
            }
            Owner::Nobody { last } => {
                let mut e = AppError::unavailable(format!(
                    "no host owns partition {partition} of pipeline {pipeline:?} now{}: the group is moving it",
                    last.map(|h| format!(" (last owner: host {h:?})"))
                        .unwrap_or_default()
                ));
                e.retry_after = Some(1);
                Err(e)
            }
        }
    }

    /// Answers a query for `partition` of `pipeline` here, or has its owner
    /// answer it: asked on the client's behalf, or the client redirected
    /// there with `?redirect=true`.
    pub(super) async fn route(
        &self,
        pipeline: &str,
        partition: u32,
        asked: &Asked,
    ) -> Result<Answer, AppError> {
        let (entry, url, target) = match self.locate(pipeline, partition, asked)? {
            Located::Here => return Ok(Answer::Here),
            Located::There { entry, url, target } => (entry, url, target),
        };
        if asked.redirect {
            return Ok(Answer::There(redirect(&target)));
        }
        forward(self.host_id(), &entry, &target, asked)
            .await
            .map(Answer::There)
            .map_err(|why| unreachable(pipeline, partition, &entry, &url, &why))
    }

    /// As [`AppState::route`] for an SSE stream: the owner's stream is
    /// passed on as it comes (its end, as when the partition moves, ends
    /// this one; the client reconnects with `Last-Event-ID`).
    pub(super) async fn route_stream(
        &self,
        pipeline: &str,
        partition: u32,
        asked: &Asked,
        last_event_id: Option<HeaderValue>,
    ) -> Result<Answer, AppError> {
        let (entry, url, target) = match self.locate(pipeline, partition, asked)? {
            Located::Here => return Ok(Answer::Here),
            Located::There { entry, url, target } => (entry, url, target),
        };
        if asked.redirect {
            return Ok(Answer::There(redirect(&target)));
        }
        relay(self.host_id(), &entry, &target, asked, last_event_id)
            .await
            .map(Answer::There)
            .map_err(|why| unreachable(pipeline, partition, &entry, &url, &why))
    }

    /// Refuses an operation that works on one host only, for a pipeline
    /// whose state is shared out between hosts.
    pub(super) fn single_host(&self, pipeline: &str, what: &str) -> Result<(), AppError> {
        match self.owned(pipeline) {
            Some(_) => Err(AppError::new(
                StatusCode::CONFLICT,
                format!(
                    "{what} of pipeline {pipeline:?} is not available in cluster mode: its partitions' states live on several hosts"
                ),
            )),
            None => Ok(()),
        }
    }
}

fn redirect(target: &str) -> Response {
    let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::from_str(target) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn unreachable(
    pipeline: &str,
    partition: u32,
    owner: &HostEntry,
    url: &str,
    why: &str,
) -> AppError {
    AppError::new(
        StatusCode::BAD_GATEWAY,
        format!(
            "partition {partition} of pipeline {pipeline:?} is owned by host {:?} at {url}, which did not answer: {why}",
            owner.host
        ),
    )
}

/// Opens the same SSE stream on `owner` (marked as forwarded, resuming at
/// `last_event_id`) and passes its bytes on as they come, from a thread of
/// its own; an answer other than 200 is passed on whole.
async fn relay(
    me: &str,
    owner: &HostEntry,
    target: &str,
    asked: &Asked,
    last_event_id: Option<HeaderValue>,
) -> Result<Response, String> {
    use std::io::Read;
    let (me, target) = (me.to_owned(), target.to_owned());
    let authorization = asked.authorization.clone();
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(64);
    std::thread::Builder::new()
        .name("sse-relay".into())
        .spawn(move || {
            let mut req = forwarded(peer(false).get(&target), &me, authorization)
                .header(header::ACCEPT, "text/event-stream");
            if let Some(id) = last_event_id {
                req = req.header("last-event-id", id);
            }
            let r = match req.call() {
                Ok(r) => r,
                Err(e) => {
                    let _ = head_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let status = r.status().as_u16();
            let content_type = r.headers().get(header::CONTENT_TYPE).cloned();
            if head_tx.send(Ok((status, content_type))).is_err() {
                return;
            }
            let mut body = r.into_body().into_reader();
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match body.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let chunk =
                            axum::body::Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                        if tx.blocking_send(Ok(chunk)).is_err() {
                            return; // the client left
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start a relay thread: {e}"))?;
    let (status, content_type) = head_rx
        .await
        .map_err(|_| "the relay stopped".to_owned())??;
    let status = StatusCode::from_u16(status).map_err(|e| e.to_string())?;
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    if let Some(ct) = content_type {
        h.insert(header::CONTENT_TYPE, ct);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&owner.host) {
        h.insert(SERVED_BY_HEADER, v);
    }
    Ok(r)
}

fn restoring(pipeline: &str, partition: u32, host: &str) -> AppError {
    let mut e = AppError::unavailable(format!(
        "partition {partition} of pipeline {pipeline:?} is being restored on host {host:?}"
    ));
    e.retry_after = Some(1);
    e
}

/// Asks `target` on `owner` the same request, marked as forwarded; its
/// answer.
async fn forward(
    me: &str,
    owner: &HostEntry,
    target: &str,
    asked: &Asked,
) -> Result<Response, String> {
    let (status, content_type, body) = call(
        me,
        target,
        asked.authorization.clone(),
        (&asked.method, asked.body.clone()),
    )
    .await?;
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    if let Some(ct) = content_type {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(v) = HeaderValue::from_str(&owner.host) {
        h.insert(SERVED_BY_HEADER, v);
    }
    Ok(r)
}

/// A client for requests to another host: statuses are answers, not
/// errors; the answer must come within [`FORWARD_TIMEOUT`] (`whole`: the
/// body too; else only its head, for a stream).
pub(super) fn peer(whole: bool) -> ureq::Agent {
    let config = ureq::Agent::config_builder().http_status_as_error(false);
    let config = if whole {
        config.timeout_global(Some(FORWARD_TIMEOUT))
    } else {
        config
            .timeout_connect(Some(FORWARD_TIMEOUT))
            .timeout_recv_response(Some(FORWARD_TIMEOUT))
    };
    config.build().into()
}

/// Marks a request to another host as forwarded by `me`, with the
/// caller's `Authorization`.
pub(super) fn forwarded<B>(
    req: ureq::RequestBuilder<B>,
    me: &str,
    authorization: Option<HeaderValue>,
) -> ureq::RequestBuilder<B> {
    let req = req.header(FORWARDED_HEADER, me);
    match authorization {
        Some(a) => req.header(header::AUTHORIZATION, a),
        None => req,
    }
}

/// One request to another host, off the async workers: a GET, a DELETE,
/// or a POST of `body`.
async fn call(
    me: &str,
    url: &str,
    authorization: Option<HeaderValue>,
    (method, body): (&Method, Option<Vec<u8>>),
) -> Result<(StatusCode, Option<HeaderValue>, Vec<u8>), String> {
    let me = me.to_owned();
    let url = url.to_owned();
    let method = method.clone();
    tokio::task::spawn_blocking(move || {
        let agent = peer(true);
        let mut r = if method == Method::POST {
            forwarded(agent.post(&url), &me, authorization)
                .header(header::CONTENT_TYPE, "application/json")
                .send(body.unwrap_or_default().as_slice())
        } else if method == Method::DELETE {
            forwarded(agent.delete(&url), &me, authorization).call()
        } else {
            forwarded(agent.get(&url), &me, authorization).call()
        }
        .map_err(|e| e.to_string())?;
        let status = StatusCode::from_u16(r.status().as_u16()).map_err(|e| e.to_string())?;
        let content_type = r.headers().get(header::CONTENT_TYPE).cloned();
        let body = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok((status, content_type, body))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Sends the same POST (`path`, no body) to every other live host, marked
/// as forwarded; per host, whether it answered 2xx (or why not).
pub(super) async fn tell_others(
    s: &AppState,
    path: &str,
    asked: &Asked,
) -> BTreeMap<String, Result<(), String>> {
    let mut out = BTreeMap::new();
    let Some(c) = &s.cluster else {
        return out;
    };
    let now = u64::try_from(crate::now_ms()).unwrap_or(0);
    let others: Vec<HostEntry> = c
        .directory
        .hosts()
        .into_iter()
        .filter(|e| e.host != c.directory.host_id() && e.alive(now))
        .collect();
    let calls = others.into_iter().map(|e| async move {
        let Some(url) = e.advertise.clone() else {
            return (e.host, Err("it advertises no URL".to_owned()));
        };
        let target = format!("{}{path}", url.trim_end_matches('/'));
        let me = c.directory.host_id().to_owned();
        let authorization = asked.authorization.clone();
        let got = tokio::task::spawn_blocking(move || {
            let req = forwarded(peer(true).post(&target), &me, authorization);
            let mut r = req.send_empty().map_err(|e| e.to_string())?;
            if r.status().is_success() {
                Ok(())
            } else {
                let body = r.body_mut().read_to_string().unwrap_or_default();
                Err(format!("it answered {}: {body}", r.status()))
            }
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        (e.host, got)
    });
    for (host, got) in futures_util::future::join_all(calls).await {
        out.insert(host, got);
    }
    out
}

/// One row of a `latest` answer as the hosts exchange it.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct LatestRow {
    pub key: String,
    pub partition: u32,
    pub seq: u64,
    pub stamp_us: u64,
    pub state: serde_json::Value,
}

/// Whom to ask for a pipeline's partitions this host does not own: per
/// host, its entry and partitions; and the partitions nobody can answer
/// for now (with why).
#[allow(clippy::type_complexity)]
fn owners_elsewhere(
    s: &AppState,
    pipeline: &str,
    partitions: u32,
) -> (
    BTreeMap<String, (HostEntry, Vec<u32>)>,
    BTreeMap<u32, String>,
) {
    let mut ask: BTreeMap<String, (HostEntry, Vec<u32>)> = BTreeMap::new();
    let mut missing = BTreeMap::new();
    let (Some(c), Some(o)) = (&s.cluster, s.owned(pipeline)) else {
        return (ask, missing);
    };
    for p in (0..partitions).filter(|p| !o.owns(*p)) {
        if o.restoring().contains(&p) {
            missing.insert(
                p,
                format!("being restored on host {:?}", c.directory.host_id()),
            );
            continue;
        }
        match c.directory.owner(pipeline, p) {
            Owner::Host {
                entry,
                restoring: false,
            } => ask
                .entry(entry.host.clone())
                .or_insert_with(|| (entry, Vec::new()))
                .1
                .push(p),
            Owner::Host { entry, .. } => {
                missing.insert(p, format!("being restored on host {:?}", entry.host));
            }
            Owner::Nobody { .. } => {
                missing.insert(p, "owned by no host now".into());
            }
        }
    }
    (ask, missing)
}

/// Asks every other owner of `pipeline`'s partitions the request at
/// `path_and_query` (a POST when `post` holds a body), marked as
/// forwarded. Per host: the partitions asked of it and its 200 answer's
/// body, or why there is none; and the partitions nobody could be asked.
#[allow(clippy::type_complexity)]
pub(super) async fn ask_owners(
    s: &AppState,
    pipeline: &str,
    partitions: u32,
    path_and_query: &str,
    asked: &Asked,
    post: Option<Vec<u8>>,
) -> (
    Vec<(String, Vec<u32>, Result<Vec<u8>, String>)>,
    BTreeMap<u32, String>,
) {
    let (ask, missing) = owners_elsewhere(s, pipeline, partitions);
    let me = s.host_id();
    let asks = ask.into_values().map(|(entry, parts)| {
        let post = post.clone();
        async move {
            let Some(url) = entry.advertise.clone() else {
                return (entry.host, parts, Err("it advertises no URL".to_owned()));
            };
            let target = format!("{}{path_and_query}", url.trim_end_matches('/'));
            let method = if post.is_some() {
                Method::POST
            } else {
                Method::GET
            };
            let got = call(me, &target, asked.authorization.clone(), (&method, post)).await;
            let body = got.and_then(|(status, _, body)| {
                if status == StatusCode::OK {
                    Ok(body)
                } else {
                    Err(format!(
                        "it answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    ))
                }
            });
            (entry.host, parts, body)
        }
    });
    (futures_util::future::join_all(asks).await, missing)
}

/// The other hosts' `latest` rows for the partitions this host does not
/// own, and the partitions no host answered for (with why).
pub(super) async fn latest_elsewhere(
    s: &AppState,
    pipeline: &str,
    partitions: u32,
    limit: usize,
    asked: &Asked,
) -> (Vec<LatestRow>, BTreeMap<u32, String>) {
    let mut rows = Vec::new();
    let path = format!("/v1/pipelines/{pipeline}/latest?limit={limit}&meta=true");
    let (answers, mut missing) = ask_owners(s, pipeline, partitions, &path, asked, None).await;
    for (host, parts, got) in answers {
        let got = got.and_then(|body| {
            serde_json::from_slice::<Vec<LatestRow>>(&body).map_err(|e| e.to_string())
        });
        match got {
            Ok(theirs) => rows.extend(theirs.into_iter().filter(|r| parts.contains(&r.partition))),
            Err(why) => {
                for p in parts {
                    missing.insert(p, format!("host {host:?} did not answer: {why}"));
                }
            }
        }
    }
    (rows, missing)
}

/// The `eddy-missing` header of a `latest` answer: `3: why; 4: why`.
pub(super) fn missing_header(missing: &BTreeMap<u32, String>) -> Option<HeaderValue> {
    if missing.is_empty() {
        return None;
    }
    let text = missing
        .iter()
        .map(|(p, why)| format!("partition {p}: {why}"))
        .collect::<Vec<_>>()
        .join("; ");
    let ascii: String = text
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect();
    HeaderValue::from_str(&ascii).ok()
}

/// `GET /v1/cluster`: this host, and every host heard of, with the
/// partitions each owns and restores per pipeline.
pub(super) async fn cluster(State(s): State<AppState>) -> Response {
    let Some(c) = &s.cluster else {
        return AppError::not_found("this host is not in cluster mode ([cluster] is not set)")
            .into_response();
    };
    let now = u64::try_from(crate::now_ms()).unwrap_or(0);
    let mut pipelines = BTreeMap::new();
    for (name, o) in c.ownership.iter() {
        pipelines.insert(
            name.clone(),
            serde_json::json!({ "owned": o.owned(), "restoring": o.restoring() }),
        );
    }
    let hosts: Vec<serde_json::Value> = c
        .directory
        .hosts()
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "host": e.host,
                "advertise": e.advertise,
                "alive": e.alive(now),
                "seen_ms_ago": now.saturating_sub(e.at_ms),
                "started_ms": e.started_ms,
                "pipelines": e.pipelines,
            })
        })
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (
        headers,
        Json(serde_json::json!({
            "host": c.directory.host_id(),
            "conflict": c.directory.conflict(),
            "pipelines": pipelines,
            "hosts": hosts,
        })),
    )
        .into_response()
}
