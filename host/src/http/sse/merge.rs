//! The stream of all keys of a pipeline whose partitions live on several
//! hosts: one stream per owner — this host's own feed of the partitions it
//! owns, and each other owner's `?partitions=` stream, read from a thread —
//! merged into one, with ids of the whole pipeline's position.
//!
//! Change numbers count per partition and a restore carries them over, so
//! a partition's position means the same on every host: when a partition
//! moves, its stream is opened on the new owner from the position the
//! client has, and what it sends is kept only past that position — no
//! change is sent twice and none is skipped. Every second the streams are
//! matched against who owns what (this host's ownership, the hosts
//! directory); a stream that ended (its host left, the partition moved, the
//! owner did not answer) is opened again then.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;

use super::{CLIENT_BUFFER, Item, Scope, last_event_id, open, respond};
use crate::cluster::Owner;
use crate::http::cluster::{Asked, forwarded, peer};
use crate::http::{AppError, AppState};
use crate::notify::Position;
use crate::pipeline::Intake;
use crate::source::partition_for_key;
use crate::store::{Change, State};

/// Longest line read from another host's stream.
const MAX_LINE: u64 = 64 << 20;

/// Who sends a part of the merged stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Origin {
    /// This host's store.
    Here,
    /// Another host, by id.
    Host(String),
}

/// `GET /v1/pipelines/{p}/events` in cluster mode.
pub(super) fn stream(s: AppState, pipeline: &str, asked: Asked, headers: &HeaderMap) -> Response {
    let Ok(intake) = s.intake(pipeline).cloned() else {
        return AppError::not_found(format!("pipeline {pipeline:?} does not exist"))
            .into_response();
    };
    let resume = match last_event_id(headers, intake.partitions()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = mpsc::channel::<Item>(CLIENT_BUFFER);
    let merge = Merge {
        known: vec![resume.is_some(); intake.partitions() as usize],
        sent: resume.unwrap_or_else(|| Position(vec![0; intake.partitions() as usize])),
        s: s.clone(),
        pipeline: pipeline.to_owned(),
        intake,
        authorization: asked.authorization(),
        sources: StreamMap::new(),
        shares: BTreeMap::new(),
        opened: false,
    };
    tokio::spawn(merge.run(tx));
    respond(&s, rx, false)
}

struct Merge {
    s: AppState,
    pipeline: String,
    intake: Intake,
    authorization: Option<HeaderValue>,
    /// Per partition, the last change number sent (0 where not known).
    sent: Position,
    /// Per partition, whether its position is known (not yet when the
    /// stream opened without a resume point and its owner has not said
    /// where it starts). A reconnection with an unknown one at 0 is sent
    /// its compacted history.
    known: Vec<bool>,
    sources: StreamMap<Origin, ReceiverStream<Item>>,
    /// The partitions each open source sends.
    shares: BTreeMap<Origin, BTreeSet<u32>>,
    /// Whether the sources were opened once.
    opened: bool,
}

impl Merge {
    async fn run(mut self, tx: mpsc::Sender<Item>) {
        let mut shutdown = self.s.shutdown.clone();
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = async { let _ = shutdown.wait_for(|down| *down).await.map(|_| ()); } => {
                    let _ = tx.send(Item::Shutdown).await;
                    return;
                }
                _ = every_second.tick() => self.arrange(),
                Some((from, item)) = self.sources.next(), if !self.sources.is_empty() => {
                    if let Some(out) = self.take(&from, item)
                        && tx.send(out).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// What the client gets of `item` from `from`, if anything.
    fn take(&mut self, from: &Origin, item: Item) -> Option<Item> {
        let share = self.shares.get(from)?;
        match item {
            Item::Change(c, _) => {
                if !share.contains(&c.partition) {
                    return None;
                }
                let known = self.known.get_mut(c.partition as usize)?;
                if *known && c.seq <= self.sent.of(c.partition) {
                    return None; // sent already, by this or an earlier owner
                }
                *known = true;
                self.sent.set(c.partition, c.seq);
                Some(Item::Change(c, self.sent.id()))
            }
            Item::At(start) => {
                for p in share {
                    if let Some(known) = self.known.get_mut(*p as usize)
                        && !*known
                    {
                        *known = true;
                        self.sent.set(*p, start.of(*p));
                    }
                }
                None
            }
            Item::Moved(_) | Item::Shutdown => {
                // Opened again where the partitions are now, next second.
                self.sources.remove(from);
                self.shares.remove(from);
                None
            }
        }
    }

    /// Who serves which partition now: this host what it owns and has
    /// restored; another host what the directory says it owns (not what
    /// it restores, nor what nobody owns: those wait).
    fn owners(&self) -> BTreeMap<Origin, (BTreeSet<u32>, Option<String>)> {
        let mut out: BTreeMap<Origin, (BTreeSet<u32>, Option<String>)> = BTreeMap::new();
        let (Some(c), Some(o)) = (&self.s.cluster, self.s.owned(&self.pipeline)) else {
            return out;
        };
        let restoring = o.restoring();
        for p in 0..self.intake.partitions() {
            if o.owns(p) {
                out.entry(Origin::Here).or_default().0.insert(p);
                continue;
            }
            if restoring.contains(&p) {
                continue;
            }
            if let Owner::Host {
                entry,
                restoring: false,
            } = c.directory.owner(&self.pipeline, p)
                && let Some(url) = entry.advertise
            {
                let share = out.entry(Origin::Host(entry.host)).or_default();
                share.0.insert(p);
                share.1 = Some(url);
            }
        }
        out
    }

    /// Opens, replaces and closes sources to match who owns what.
    fn arrange(&mut self) {
        let owners = self.owners();
        let stale: Vec<Origin> = self
            .shares
            .iter()
            .filter(|(from, share)| {
                owners.get(*from).is_none_or(|(now, _)| now != *share)
                    || !self.sources.contains_key(*from)
            })
            .map(|(from, _)| from.clone())
            .collect();
        for from in stale {
            self.sources.remove(&from);
            self.shares.remove(&from);
        }
        for (from, (share, url)) in owners {
            if self.shares.contains_key(&from) {
                continue;
            }
            // A stream opened without a resume point starts from now where
            // no position is known yet, the first time only; later, an
            // unknown partition is sent from its start (compacted).
            let unknown = share
                .iter()
                .all(|p| self.known.get(*p as usize) == Some(&false));
            let resume = (!unknown || self.opened).then(|| self.sent.clone());
            let rx = match (&from, url) {
                (Origin::Here, _) => open(
                    &self.s,
                    &self.pipeline,
                    Scope::Partitions(share.clone()),
                    resume,
                ),
                (Origin::Host(host), Some(url)) => self.remote(host, &url, &share, resume),
                (Origin::Host(_), None) => None,
            };
            if let Some(rx) = rx {
                self.sources.insert(from.clone(), ReceiverStream::new(rx));
                self.shares.insert(from, share);
            }
        }
        self.opened = true;
    }

    /// Opens `host`'s stream of `share` from `resume`, read from a thread.
    fn remote(
        &self,
        host: &str,
        url: &str,
        share: &BTreeSet<u32>,
        resume: Option<Position>,
    ) -> Option<mpsc::Receiver<Item>> {
        let list = share
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let target = format!(
            "{}/v1/pipelines/{}/events?partitions={list}",
            url.trim_end_matches('/'),
            self.pipeline
        );
        let me = self
            .s
            .cluster
            .as_ref()
            .map(|c| c.directory.host_id().to_owned())
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel::<Item>(CLIENT_BUFFER);
        let authorization = self.authorization.clone();
        let partitions = self.intake.partitions();
        let (pipeline, host) = (self.pipeline.clone(), host.to_owned());
        let started = std::thread::Builder::new()
            .name("sse-merge".into())
            .spawn(move || {
                let mut req = forwarded(peer(false).get(&target), &me, authorization)
                    .header(header::ACCEPT, "text/event-stream");
                if let Some(at) = resume {
                    req = req.header("last-event-id", at.id());
                }
                let why = match req.call() {
                    Ok(r) if r.status().is_success() => {
                        read_events(r.into_body().into_reader(), partitions, &tx)
                    }
                    Ok(mut r) => {
                        let body = r.body_mut().read_to_string().unwrap_or_default();
                        format!("it answered {}: {body}", r.status())
                    }
                    Err(e) => e.to_string(),
                };
                tracing::debug!(
                    pipeline = %pipeline, host = %host, partitions = %list, why = %why,
                    "a host's part of an all-keys stream ended; it is opened again where its partitions are"
                );
            });
        match started {
            Ok(_) => Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a thread reading another host's stream");
                None
            }
        }
    }
}

/// One `data:` line of an all-keys event.
#[derive(serde::Deserialize)]
struct Row {
    key: String,
    state: Box<serde_json::value::RawValue>,
}

/// Reads an SSE body of another host into items until it ends, the client
/// leaves or it sends what cannot be read; why it stopped.
fn read_events(body: impl Read, partitions: u32, tx: &mpsc::Sender<Item>) -> String {
    let mut body = BufReader::new(body);
    let mut line = Vec::new();
    let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
    loop {
        line.clear();
        let n = match (&mut body).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(n) => n,
            Err(e) => return format!("reading its stream: {e}"),
        };
        if n == 0 {
            return "its stream ended".into();
        }
        if line.last() != Some(&b'\n') {
            return "its stream ended inside a line (or sent one too long)".into();
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if !text.is_empty() {
            if text.starts_with(':') {
                continue; // a comment: keep-alive
            }
            let (field, value) = text.split_once(':').unwrap_or((text, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => value.clone_into(&mut id),
                "event" => value.clone_into(&mut event),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
            continue;
        }
        // A blank line ends an event; one without data is none (as the
        // keep-alive comment's).
        if data.is_empty() {
            event.clear();
            continue;
        }
        let item = match event.as_str() {
            "" | "message" => {
                let Some(at) = Position::parse(&id, partitions) else {
                    return format!("an event id that is not a position: {id:?}");
                };
                let row: Row = match serde_json::from_str(&data) {
                    Ok(r) => r,
                    Err(e) => return format!("an event that is not a change ({e}): {data}"),
                };
                let partition = partition_for_key(row.key.as_bytes(), partitions);
                Some(Item::Change(
                    Arc::new(Change {
                        partition,
                        seq: at.of(partition),
                        stamp_us: 0,
                        state: State::json(row.state.get().to_owned()),
                        key: row.key,
                        version: 0,
                    }),
                    id.clone(),
                ))
            }
            "position" => match Position::parse(&id, partitions) {
                Some(at) => Some(Item::At(at)),
                None => return format!("a position that is not one: {id:?}"),
            },
            "moved" => {
                let p = serde_json::from_str::<serde_json::Value>(&data)
                    .ok()
                    .and_then(|v| v.get("partition").and_then(serde_json::Value::as_u64))
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or_default();
                let _ = tx.blocking_send(Item::Moved(p));
                return format!("a partition moved: {data}");
            }
            "shutdown" => {
                let _ = tx.blocking_send(Item::Shutdown);
                return "it is stopping".into();
            }
            _ => None,
        };
        if let Some(item) = item
            && tx.blocking_send(item).is_err()
        {
            return "the client left".into();
        }
        event.clear();
        data.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> (Vec<Item>, String) {
        let (tx, mut rx) = mpsc::channel(64);
        let why = read_events(body.as_bytes(), 3, &tx);
        drop(tx);
        let mut items = Vec::new();
        while let Ok(item) = rx.try_recv() {
            items.push(item);
        }
        (items, why)
    }

    #[test]
    fn another_hosts_stream_is_read_as_positions_and_changes() {
        let key = "k7";
        let p = partition_for_key(key.as_bytes(), 3);
        let mut at = Position(vec![4, 5, 6]);
        at.set(p, 42);
        let body = format!(
            "event: position\nid: 4.5.6\ndata: {{}}\n\n: keep-alive\n\n\
             id: {}\ndata: {{\"key\":\"{key}\",\"state\":{{\"b\": [1, 2],\"a\":1}}}}\n\n\
             event: moved\r\ndata: {{\"partition\":2}}\r\n\r\n",
            at.id()
        );
        let (items, why) = read(&body);
        assert_eq!(why, "a partition moved: {\"partition\":2}");
        let [Item::At(start), Item::Change(c, id), Item::Moved(2)] = items.as_slice() else {
            panic!("{items:?}");
        };
        assert_eq!(start, &Position(vec![4, 5, 6]));
        assert_eq!((c.partition, c.seq, c.key.as_str()), (p, 42, key));
        // The state's text as the owner sent it.
        assert_eq!(c.state.json_text(), "{\"b\": [1, 2],\"a\":1}");
        assert_eq!(id, &at.id());
    }

    #[test]
    fn a_stream_that_is_not_one_of_changes_stops_naming_what_it_sent() {
        let (items, why) = read("id: x.y\ndata: {}\n\n");
        assert!(items.is_empty());
        assert!(why.contains("\"x.y\""), "{why}");
        let (_, why) = read("id: 1.2.3\ndata: [1]\n\n");
        assert!(why.contains("not a change") && why.contains("[1]"), "{why}");
        let (_, why) = read("id: 1.2.3.4\ndata: {}\n\n");
        assert!(why.contains("1.2.3.4"), "{why}");
        let (_, why) = read("data: {\"key\":\"a\",\"st");
        assert!(why.contains("inside a line"), "{why}");
        let (items, why) = read("");
        assert!(items.is_empty() && why == "its stream ended", "{why}");
    }
}
