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
//! `event: moved` when the key's partition leaves it. The stream of all
//! keys is merged from every owner's stream of its partitions
//! (`?partitions=`, see [`merge`]).

mod merge;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::cluster::{Answer, Asked};
use super::{AppError, AppState};
use crate::notify::{Missed, Position};
use crate::store::Change;

/// Items buffered per client (the connection buffers some more).
const CLIENT_BUFFER: usize = 16;
/// Changes taken from the history per catch-up step (shared, not copied).
const CATCH_UP_PAGE: usize = 512;
/// States read from the store per catch-up step: each is the client's own
/// copy until sent, so a slow client holds at most this many (and its
/// channel's): 512 made a slow client cost ~300 KiB with 5 KiB states.
const STORE_PAGE: usize = 16;

#[derive(Deserialize)]
pub struct EventsQuery {
    key: Option<String>,
    /// Comma-separated partition numbers: a stream of those only.
    partitions: Option<String>,
}

/// Which changes a stream sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// Every key's (data: `{"key":..., "state":...}`).
    All,
    /// One key's, in its partition (data: the state).
    Key { key: String, partition: u32 },
    /// Those of some partitions (data as for [`Scope::All`]).
    Partitions(BTreeSet<u32>),
}

impl Scope {
    fn per_key(&self) -> bool {
        matches!(self, Scope::Key { .. })
    }

    fn wants_partition(&self, p: u32) -> bool {
        match self {
            Scope::All => true,
            Scope::Key { partition, .. } => *partition == p,
            Scope::Partitions(set) => set.contains(&p),
        }
    }

    fn wants(&self, c: &Change) -> bool {
        match self {
            Scope::Key { key, .. } => *key == c.key,
            _ => self.wants_partition(c.partition),
        }
    }

    /// The partitions whose move to another host ends the stream.
    fn followed(&self) -> Vec<u32> {
        match self {
            Scope::All => Vec::new(),
            Scope::Key { partition, .. } => vec![*partition],
            Scope::Partitions(set) => set.iter().copied().collect(),
        }
    }
}

/// What a feed sends its client.
#[derive(Debug)]
pub(super) enum Item {
    /// A change, and the event id: the client's position after it.
    Change(Arc<Change>, String),
    /// Where a stream of some partitions starts (its first item).
    At(Position),
    /// A followed partition now belongs to another host; the stream ends.
    Moved(u32),
    /// This host is stopping; the stream ends.
    Shutdown,
}

impl Item {
    fn into_event(self, per_key: bool) -> Event {
        match self {
            Item::Change(c, id) => {
                // States render as JSON (the execute stage checks every
                // plugin's output), once per change, so they go in as they are.
                let data = if per_key {
                    c.state.json_text().to_owned()
                } else {
                    let key = serde_json::Value::String(c.key.clone());
                    format!("{{\"key\":{key},\"state\":{}}}", c.state.json_text())
                };
                Event::default().id(id).data(data)
            }
            Item::At(at) => Event::default().event("position").id(at.id()).data("{}"),
            Item::Moved(p) => Event::default()
                .event("moved")
                .data(serde_json::json!({ "partition": p }).to_string()),
            // Tells the client the stream ends on purpose; it reconnects
            // with Last-Event-ID and misses nothing.
            Item::Shutdown => Event::default().event("shutdown").data("{}"),
        }
    }
}

/// `GET /v1/pipelines/{p}/events[?key=|?partitions=]`.
pub async fn events(
    State(s): State<AppState>,
    Path(pipeline): Path<String>,
    q: Query<EventsQuery>,
    asked: Asked,
    headers: HeaderMap,
) -> Response {
    match (q.0.key, q.0.partitions) {
        (Some(_), Some(_)) => {
            AppError::bad_request("ask for a key or for partitions, not both").into_response()
        }
        (Some(key), None) => key_stream(s, &pipeline, key, &asked, &headers).await,
        (None, Some(list)) => match partitions_scope(&s, &pipeline, &list) {
            Ok(scope) => stream(s, &pipeline, scope, &headers),
            Err(e) => e.into_response(),
        },
        (None, None) if s.owned(&pipeline).is_some() && !asked.is_forwarded() => {
            merge::stream(s, &pipeline, asked, &headers)
        }
        (None, None) => stream(s, &pipeline, Scope::All, &headers),
    }
}

/// `?partitions=1,4`: each must be one of the pipeline's partitions and
/// served here.
fn partitions_scope(s: &AppState, pipeline: &str, list: &str) -> Result<Scope, AppError> {
    let intake = s.intake(pipeline)?;
    let mut set = BTreeSet::new();
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        let p: u32 = part
            .trim()
            .parse()
            .ok()
            .filter(|p| *p < intake.partitions())
            .ok_or_else(|| {
                AppError::bad_request(format!(
                    "partitions: {part:?} is not a partition of pipeline {pipeline:?} (0 to {})",
                    intake.partitions().saturating_sub(1)
                ))
            })?;
        s.serves(pipeline, p)?;
        set.insert(p);
    }
    if set.is_empty() {
        return Err(AppError::bad_request(
            "partitions: name at least one partition (as in ?partitions=0,3)",
        ));
    }
    Ok(Scope::Partitions(set))
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
    let Ok(intake) = s.intake(pipeline) else {
        return AppError::not_found(format!("pipeline {pipeline:?} does not exist"))
            .into_response();
    };
    let partition = intake.partition_of(&key);
    let resume = headers.get("last-event-id").cloned();
    match s.route_stream(pipeline, partition, asked, resume).await {
        Ok(Answer::Here) => {}
        Ok(Answer::There(r)) => return r,
        Err(e) => return e.into_response(),
    }
    stream(s, pipeline, Scope::Key { key, partition }, headers)
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

/// An SSE response of the items `rx` receives, counted in
/// `eddy_sse_clients` while it is open.
fn respond(s: &AppState, rx: mpsc::Receiver<Item>, per_key: bool) -> Response {
    let counted = Connected::new();
    let events = ReceiverStream::new(rx).map(move |item| {
        let _ = &counted;
        Ok::<_, Infallible>(item.into_event(per_key))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(s.keepalive))
        .into_response()
}

/// Opens a stream of this host's changes in `scope`.
pub(super) fn stream(s: AppState, pipeline: &str, scope: Scope, headers: &HeaderMap) -> Response {
    let Ok(intake) = s.intake(pipeline) else {
        return AppError::not_found(format!("pipeline {pipeline:?} does not exist"))
            .into_response();
    };
    if let Scope::Key { partition, .. } = &scope
        && let Err(e) = s.serves(pipeline, *partition)
    {
        return e.into_response();
    }
    let resume = match last_event_id(headers, intake.partitions()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let per_key = scope.per_key();
    match open(&s, pipeline, scope, resume) {
        Some(rx) => respond(&s, rx, per_key),
        None => {
            AppError::not_found(format!("pipeline {pipeline:?} does not exist")).into_response()
        }
    }
}

/// Starts feeding this host's changes in `scope` from `resume` (`None`:
/// from now); the receiving end, `None` for an unknown pipeline.
pub(super) fn open(
    s: &AppState,
    pipeline: &str,
    scope: Scope,
    resume: Option<Position>,
) -> Option<mpsc::Receiver<Item>> {
    let live = s.hub.subscribe(pipeline)?;
    let (tx, rx) = mpsc::channel::<Item>(CLIENT_BUFFER);
    tokio::spawn(feed(
        s.clone(),
        pipeline.to_owned(),
        scope,
        resume,
        live,
        tx,
    ));
    Some(rx)
}

/// Sends a client what it missed after position `sent`: from the
/// pipeline's history where it holds them, else the store's compacted view
/// of a partition's gap before the history. Moves `sent` on; `false` when
/// the client is gone.
async fn catch_up(
    s: &AppState,
    pipeline: &str,
    scope: &Scope,
    sent: &mut Position,
    tx: &mpsc::Sender<Item>,
) -> bool {
    loop {
        match s.hub.missed(pipeline, sent, CATCH_UP_PAGE) {
            None => return false,
            Some(Missed::Changes(page)) => {
                let n = page.len();
                for c in page {
                    sent.set(c.partition, c.seq);
                    if scope.wants(&c) && tx.send(Item::Change(c, sent.id())).await.is_err() {
                        return false;
                    }
                }
                if n < CATCH_UP_PAGE {
                    return true;
                }
            }
            Some(Missed::Before { partition, until }) => {
                if !scope.wants_partition(partition) {
                    // Nothing of this partition goes to the client.
                    sent.set(partition, until);
                    continue;
                }
                let store = s.store.clone();
                let (p, after) = (pipeline.to_owned(), sent.of(partition));
                let key = match scope {
                    Scope::Key { key, .. } => Some(key.clone()),
                    _ => None,
                };
                let per_key = key.is_some();
                // On the read threads: a thousand clients catching up at
                // once queue there rather than each taking a blocking thread.
                let page = s
                    .reads
                    .run(move || match key {
                        // One key: its state, if its last change is in the gap.
                        Some(k) => store.state(&p, partition, &k).map(|st| {
                            st.filter(|st| st.seq > after && st.seq <= until)
                                .map(|st| st.into_change(partition, k))
                                .into_iter()
                                .collect::<Vec<_>>()
                        }),
                        None => store.latest_between(&p, partition, after, until, STORE_PAGE),
                    })
                    .await;
                let Some(Ok(page)) = page else {
                    return false;
                };
                let done = per_key || page.len() < STORE_PAGE;
                for c in page {
                    sent.set(partition, c.seq);
                    if tx.send(Item::Change(Arc::new(c), sent.id())).await.is_err() {
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

/// Where a stream without a resume point starts: the store's last change
/// numbers, and for a per-key stream the key's current state.
async fn start_here(
    s: &AppState,
    pipeline: &str,
    scope: &Scope,
) -> Option<(Position, Option<Change>)> {
    let store = s.store.clone();
    let partitions = s.intake(pipeline).ok()?.partitions();
    let p = pipeline.to_owned();
    let key = match scope {
        Scope::Key { key, partition } => Some((key.clone(), *partition)),
        _ => None,
    };
    s.reads
        .run(move || -> Option<(Position, Option<Change>)> {
            let last = Position(store.last_seqs(&p, partitions).ok()?);
            let snapshot = key.and_then(|(k, partition)| {
                store
                    .state(&p, partition, &k)
                    .ok()
                    .flatten()
                    .map(|st| st.into_change(partition, k))
            });
            Some((last, snapshot))
        })
        .await
        .flatten()
}

/// Feeds one client: what it missed (see [`catch_up`]), then live changes.
async fn feed(
    s: AppState,
    pipeline: String,
    scope: Scope,
    resume: Option<Position>,
    mut live: broadcast::Receiver<Arc<Change>>,
    tx: mpsc::Sender<Item>,
) {
    let mut shutdown = s.shutdown.clone();
    // Cluster mode: the partitions the stream follows, checked every
    // second; when one moves to another host the stream says so and ends.
    let followed = if s.owned(&pipeline).is_some() {
        scope.followed()
    } else {
        Vec::new()
    };
    let mut moved_check = tokio::time::interval(std::time::Duration::from_secs(1));
    // Where this client is: the last change of each partition it has seen.
    let mut need_catch_up = resume.is_some();
    let mut sent: Position = match resume {
        Some(at) => at,
        None => {
            // No resume point: a per-key stream starts with the current state;
            // the others with what happens from now on.
            let Some((last, snapshot)) = start_here(&s, &pipeline, &scope).await else {
                return;
            };
            if let Some(c) = snapshot
                && tx.send(Item::Change(Arc::new(c), last.id())).await.is_err()
            {
                return;
            }
            last
        }
    };
    if matches!(scope, Scope::Partitions(_)) && tx.send(Item::At(sent.clone())).await.is_err() {
        return;
    }
    loop {
        if need_catch_up {
            if !catch_up(&s, &pipeline, &scope, &mut sent, &tx).await {
                return;
            }
            need_catch_up = false;
        }
        tokio::select! {
            () = tx.closed() => return,
            _ = moved_check.tick(), if !followed.is_empty() => {
                if let Some(p) = followed.iter().find(|p| s.serves(&pipeline, **p).is_err()) {
                    // The client reconnects (to any host) with Last-Event-ID
                    // and is served by the partition's new owner.
                    let _ = tx.send(Item::Moved(*p)).await;
                    return;
                }
            }
            () = async { let _ = shutdown.wait_for(|down| *down).await.map(|_| ()); } => {
                let _ = tx.send(Item::Shutdown).await;
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
                    if scope.wants(&c) && tx.send(Item::Change(c, sent.id())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => need_catch_up = true,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
