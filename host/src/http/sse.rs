//! Server-Sent Events of committed state changes.
//!
//! Each event's id is where the client stands after it: per input partition,
//! the last change number it has (`12.0.7`, see [`Position`]). A client that
//! reconnects with `Last-Event-ID` gets exactly the changes it missed while
//! they are in the pipeline's in-memory history (its last `sse_history`
//! changes); older ones (before a restart, or past the history) come from the
//! store compacted: each key that changed since, once, with its current state
//! — what a client needs to be up to date. A per-client task feeds a small
//! bounded channel: a slow client holds at most that much memory; when it
//! falls behind the live broadcast it catches up the same way.
//!
//! In cluster mode a per-key stream asked of a host that does not own the
//! key is relayed from its owner, and the owner ends a per-key stream with
//! `event: moved` when the key's partition leaves it.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::cluster::{Answer, Asked};
use super::{AppError, AppState};
use crate::notify::{Missed, Position};
use crate::store::Change;

/// Events buffered per client.
const CLIENT_BUFFER: usize = 64;
/// Changes read from the store per catch-up step.
const CATCH_UP_PAGE: usize = 512;

#[derive(Deserialize)]
pub struct EventsQuery {
    key: Option<String>,
}

/// `GET /v1/pipelines/{p}/events[?key=]`.
pub async fn events(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
    q: Query<EventsQuery>,
    asked: Asked,
    headers: HeaderMap,
) -> Response {
    match q.0.key {
        Some(key) => key_stream(s, &pipeline, key, &asked, &headers).await,
        None => stream(s, &pipeline, None, &headers),
    }
}

/// A stream of one key's changes: from this host when it owns the key's
/// partition, else relayed from the host that does (cluster mode).
pub async fn key_stream(
    s: AppState,
    pipeline: &str,
    key: String,
    asked: &Asked,
    headers: &HeaderMap,
) -> Response {
    if let Ok(intake) = s.intake(pipeline) {
        let partition = intake.partition_of(&key);
        let resume = headers.get("last-event-id").cloned();
        match s.route_stream(pipeline, partition, asked, resume).await {
            Ok(Answer::Here) => {}
            Ok(Answer::There(r)) => return r,
            Err(e) => return e.into_response(),
        }
    }
    stream(s, pipeline, Some(key), headers)
}

fn last_event_id(headers: &HeaderMap, partitions: u32) -> Result<Option<Position>, AppError> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| Position::parse(s, partitions))
            .map(Some)
            .ok_or_else(|| {
                AppError::bad_request(format!(
                    "Last-Event-ID must be an event id sent by this stream (at most {partitions} \
                     numbers joined with '.')"
                ))
            }),
    }
}

/// Opens a stream for one key (data = the state) or all keys
/// (data = `{"key":..., "state":...}`).
pub fn stream(s: AppState, pipeline: &str, key: Option<String>, headers: &HeaderMap) -> Response {
    let Ok(p) = s.pipeline(pipeline) else {
        return AppError::not_found(format!("pipeline {pipeline:?} does not exist"))
            .into_response();
    };
    let Ok(intake) = s.intake(pipeline) else {
        return AppError::not_found(format!("pipeline {pipeline:?} does not exist"))
            .into_response();
    };
    if let Some(k) = &key
        && let Err(e) = s.serves(pipeline, intake.partition_of(k))
    {
        return e.into_response();
    }
    let resume = match last_event_id(headers, intake.partitions()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Some(live) = s.hub.subscribe(&p.name) else {
        return AppError::not_found(format!("pipeline {pipeline:?} does not exist"))
            .into_response();
    };
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(CLIENT_BUFFER);
    let keepalive = s.keepalive;
    let name = p.name.clone();
    tokio::spawn(feed(s, name, key, resume, live, tx));
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response()
}

fn to_event(change: &Change, at: &Position, per_key: bool) -> Event {
    let data = if per_key {
        change.state.clone()
    } else {
        // States are JSON (the execute stage checks every plugin's output),
        // so they go in as they are, without parsing them again.
        let key = serde_json::Value::String(change.key.clone());
        format!("{{\"key\":{key},\"state\":{}}}", change.state)
    };
    Event::default().id(at.id()).data(data)
}

/// Sends a client what it missed after position `sent`: from the
/// pipeline's history where it holds them, else the store's compacted view
/// of a partition's gap before the history. Moves `sent` on; `false` when
/// the client is gone.
async fn catch_up(
    s: &AppState,
    pipeline: &str,
    key: Option<&str>,
    sent: &mut Position,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
) -> bool {
    let per_key = key.is_some();
    let matches = |c: &Change| key.is_none_or(|k| k == c.key);
    let key_partition = key.and_then(|k| Some(s.intake(pipeline).ok()?.partition_of(k)));
    loop {
        match s.hub.missed(pipeline, sent, CATCH_UP_PAGE) {
            None => return false,
            Some(Missed::Changes(page)) => {
                let n = page.len();
                for c in page {
                    sent.set(c.partition, c.seq);
                    if matches(&c) && tx.send(Ok(to_event(&c, sent, per_key))).await.is_err() {
                        return false;
                    }
                }
                if n < CATCH_UP_PAGE {
                    return true;
                }
            }
            Some(Missed::Before { partition, until }) => {
                if key_partition.is_some_and(|kp| kp != partition) {
                    // Another partition than the key's: nothing to send.
                    sent.set(partition, until);
                    continue;
                }
                let store = s.store.clone();
                let (p, k, after) = (
                    pipeline.to_owned(),
                    key.map(str::to_owned),
                    sent.of(partition),
                );
                let page = tokio::task::spawn_blocking(move || match k {
                    // One key: its state, if its last change is in the gap.
                    Some(k) => store.state(&p, partition, &k).map(|st| {
                        st.filter(|st| st.seq > after && st.seq <= until)
                            .map(|st| st.into_change(partition, k))
                            .into_iter()
                            .collect::<Vec<_>>()
                    }),
                    None => store.latest_between(&p, partition, after, until, CATCH_UP_PAGE),
                })
                .await;
                let Ok(Ok(page)) = page else {
                    return false;
                };
                let done = per_key || page.len() < CATCH_UP_PAGE;
                for c in page {
                    sent.set(partition, c.seq);
                    if tx.send(Ok(to_event(&c, sent, per_key))).await.is_err() {
                        return false;
                    }
                }
                if done {
                    sent.set(partition, until);
                }
            }
        }
    }
}

/// Counts an open SSE connection in `eddy_sse_clients` while it lives.
struct Connected;

impl Connected {
    fn new() -> Self {
        crate::telemetry::sse_clients(1.0);
        Connected
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        crate::telemetry::sse_clients(-1.0);
    }
}

/// Feeds one client: what it missed (see [`catch_up`]), then live changes.
async fn feed(
    s: AppState,
    pipeline: String,
    key: Option<String>,
    resume: Option<Position>,
    mut live: broadcast::Receiver<Arc<Change>>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let _counted = Connected::new();
    let mut shutdown = s.shutdown.clone();
    let per_key = key.is_some();
    // Cluster mode: the partition a per-key stream follows, checked every
    // second; when it moves to another host the stream says so and ends.
    let followed = match (&key, s.owned(&pipeline), s.intake(&pipeline)) {
        (Some(k), Some(_), Ok(intake)) => Some(intake.partition_of(k)),
        _ => None,
    };
    let mut moved_check = tokio::time::interval(std::time::Duration::from_secs(1));
    let matches = |c: &Change| key.as_deref().is_none_or(|k| k == c.key);
    // Where this client is: the last change of each partition it has seen.
    let mut need_catch_up = resume.is_some();
    let mut sent: Position = match resume {
        Some(at) => at,
        None => {
            // No resume point: a per-key stream starts with the current state;
            // an all-keys stream starts with what happens from now on.
            let store = s.store.clone();
            let Ok(intake) = s.intake(&pipeline).cloned() else {
                return;
            };
            let (p, k) = (pipeline.clone(), key.clone());
            let current =
                tokio::task::spawn_blocking(move || -> Option<(Position, Option<Change>)> {
                    let last = Position(store.last_seqs(&p, intake.partitions()).ok()?);
                    let snapshot = match k {
                        Some(k) => {
                            let partition = intake.partition_of(&k);
                            store
                                .state(&p, partition, &k)
                                .ok()
                                .flatten()
                                .map(|st| st.into_change(partition, k))
                        }
                        None => None,
                    };
                    Some((last, snapshot))
                })
                .await
                .ok()
                .flatten();
            let Some((last, snapshot)) = current else {
                return;
            };
            if let Some(c) = snapshot
                && tx.send(Ok(to_event(&c, &last, per_key))).await.is_err()
            {
                return;
            }
            last
        }
    };
    loop {
        if need_catch_up {
            if !catch_up(&s, &pipeline, key.as_deref(), &mut sent, &tx).await {
                return;
            }
            need_catch_up = false;
        }
        tokio::select! {
            () = tx.closed() => return,
            _ = moved_check.tick(), if followed.is_some() => {
                if let Some(p) = followed
                    && s.serves(&pipeline, p).is_err()
                {
                    // The client reconnects (to any host) with Last-Event-ID
                    // and is served by the partition's new owner.
                    let data = serde_json::json!({ "partition": p }).to_string();
                    let _ = tx.send(Ok(Event::default().event("moved").data(data))).await;
                    return;
                }
            }
            () = async { let _ = shutdown.wait_for(|down| *down).await.map(|_| ()); } => {
                // Tell the client the stream ends on purpose; it reconnects
                // with Last-Event-ID and misses nothing.
                let _ = tx.send(Ok(Event::default().event("shutdown").data("{}"))).await;
                return;
            }
            msg = live.recv() => match msg {
                Ok(c) => {
                    let had = sent.of(c.partition);
                    if c.seq <= had {
                        continue;
                    }
                    if c.seq > had + 1 {
                        // A gap: changes committed before we subscribed or
                        // while lagging; this one comes with the catch-up.
                        need_catch_up = true;
                        continue;
                    }
                    sent.set(c.partition, c.seq);
                    if matches(&c) && tx.send(Ok(to_event(&c, &sent, per_key))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => need_catch_up = true,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
