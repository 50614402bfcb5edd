//! Per-key timers.
//!
//! An aggregator sets or cancels a timer on the key it folds by emitting a
//! record to [`TIMER_REQUEST_TOPIC`] (the SDKs wrap it): the value is
//! `{"op": "set", "name": ..., "at_ms": ..., "time": "wall" | "event",
//! "payload": ...}` or `{"op": "cancel", "name": ...}`. Such a record is
//! not produced: the request is stored in the same atomic commit as the
//! state the fold produced (`store/timers.rs`), so it exists exactly when
//! that state does.
//!
//! A timer falls due when the host's clock (`wall`) or its partition's
//! stream time less the pipeline's `allowed_lateness_ms` (`event`) reaches
//! its instant. The worker then fires it: in one atomic write, it removes
//! the timer and appends a record to the pipeline's timer topic
//! (`__eddy.timers.{pipeline}`, in the embedded log), which the worker
//! reads with its input and folds like an event of the key — with the same
//! retries, isolation and dead letters. So a timer fires once: removed and
//! appended together, then folded once with the offsets committed with the
//! state.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use crate::config::{PipelineConfig, TIMER_REQUEST_TOPIC};
use crate::execute::{Emitted, PluginError};
use crate::sink::ProduceRecord;
use crate::store::{StoreError, TimeDomain, Timer, TimerOp};

/// The header naming the timer on a fired timer's record.
pub const TIMER_HEADER: &str = "eddy-timer";

/// On a fired timer's record: the pipeline's timer generation it fired in
/// (a replay's switch-over moves it on; a record of an earlier one is not
/// folded).
pub const GENERATION_HEADER: &str = "eddy-timer-gen";

/// On a state changelog record of a timer (cluster mode): the key the
/// timer belongs to (the record's own key is the timer's changelog key).
pub const TIMER_KEY_HEADER: &str = "eddy-timer-key";

/// On a state changelog record (cluster mode): the partition's stream time
/// after the batch, for a pipeline that uses event time.
pub const STREAM_TIME_HEADER: &str = "eddy-stream-time";

/// The earliest and latest instants a timer may have: years 0 to 9999.
const EARLIEST_MS: i64 = -62_167_219_200_000;
/// See [`EARLIEST_MS`].
const LATEST_MS: i64 = 253_402_300_799_999;

/// Longest timer name, in bytes.
const MAX_NAME: usize = 256;

/// What a pipeline allows its aggregator's timers.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Timers one key may have pending.
    pub per_key: usize,
}

impl Rules {
    /// The rules of `pipeline`.
    pub fn of(pipeline: &PipelineConfig) -> Self {
        Rules {
            per_key: pipeline.max_timers_per_key,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    op: String,
    name: String,
    #[serde(default)]
    at_ms: Option<i64>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

/// A timer request, as a fold emitted it.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Set (or replace) the timer `name`.
    Set {
        /// Its name.
        name: String,
        /// When it falls due.
        at_ms: i64,
        /// Which clock.
        domain: TimeDomain,
        /// What it carries (JSON text).
        payload: String,
    },
    /// Cancel the timer `name`.
    Cancel {
        /// Its name.
        name: String,
    },
}

impl Request {
    /// Reads a request from an emitted record's value.
    ///
    /// # Errors
    /// What is wrong with it, naming the field and the value.
    pub fn parse(value: &str) -> Result<Request, String> {
        let w: Wire = serde_json::from_str(value)
            .map_err(|e| format!("timer request {value:?} is not valid: {e}"))?;
        if w.name.is_empty() || w.name.len() > MAX_NAME {
            return Err(format!(
                "timer name {:?} must have 1 to {MAX_NAME} bytes",
                w.name
            ));
        }
        match w.op.as_str() {
            "cancel" => Ok(Request::Cancel { name: w.name }),
            "set" => {
                let at_ms = w
                    .at_ms
                    .ok_or_else(|| format!("timer {:?}: \"at_ms\" is missing", w.name))?;
                if !(EARLIEST_MS..=LATEST_MS).contains(&at_ms) {
                    return Err(format!(
                        "timer {:?}: at_ms {at_ms} is not an instant between the years 0 and 9999",
                        w.name
                    ));
                }
                let domain = match w.time.as_deref() {
                    None | Some("wall") => TimeDomain::Wall,
                    Some("event") => TimeDomain::Event,
                    Some(other) => {
                        return Err(format!(
                            "timer {:?}: time {other:?} is neither \"wall\" nor \"event\"",
                            w.name
                        ));
                    }
                };
                let payload = w.payload.unwrap_or(serde_json::Value::Null).to_string();
                Ok(Request::Set {
                    name: w.name,
                    at_ms,
                    domain,
                    payload,
                })
            }
            other => Err(format!(
                "timer {:?}: op {other:?} is neither \"set\" nor \"cancel\"",
                w.name
            )),
        }
    }
}

/// Whether an emitted record is a timer request.
pub fn is_request(e: &Emitted) -> bool {
    e.topic == TIMER_REQUEST_TOPIC
}

/// Checks a fold's timer requests: each well formed, and no more distinct
/// timers set than a key may have.
///
/// # Errors
/// [`PluginError::BadTimer`] or [`PluginError::TimerLimit`].
pub fn check(plugin: &str, rules: Option<&Rules>, emits: &[Emitted]) -> Result<(), PluginError> {
    let mut set = HashSet::new();
    for e in emits.iter().filter(|e| is_request(e)) {
        let bad = |message: String| PluginError::BadTimer {
            plugin: plugin.to_owned(),
            message,
        };
        if rules.is_none() {
            return Err(bad(
                "a handler cannot set timers: only an aggregator holds a key's state".into(),
            ));
        }
        if let Request::Set { name, .. } = Request::parse(&e.value).map_err(bad)? {
            set.insert(name);
        }
    }
    if set.len() > rules.map_or(0, |r| r.per_key) {
        return Err(PluginError::TimerLimit {
            plugin: plugin.to_owned(),
            message: format!(
                "one fold set {} timers; a key may have {} pending (max_timers_per_key)",
                set.len(),
                rules.map_or(0, |r| r.per_key)
            ),
        });
    }
    Ok(())
}

/// Takes the timer requests out of `emits` (already checked), as changes
/// of `key`'s timers in `partition`; the other records stay.
pub fn take_requests(key: &str, partition: u32, emits: &mut Vec<Emitted>) -> Vec<TimerOp> {
    if !emits.iter().any(is_request) {
        return Vec::new();
    }
    let mut ops = Vec::new();
    emits.retain(|e| {
        if !is_request(e) {
            return true;
        }
        match Request::parse(&e.value) {
            Ok(Request::Set {
                name,
                at_ms,
                domain,
                payload,
            }) => ops.push(TimerOp::Set(Timer {
                key: key.to_owned(),
                name,
                partition,
                domain,
                at_ms,
                payload,
            })),
            Ok(Request::Cancel { name }) => ops.push(TimerOp::Cancel {
                key: key.to_owned(),
                name,
                partition,
            }),
            Err(why) => {
                tracing::warn!(key, error = %why, "dropping a timer request that was not checked");
            }
        }
        false
    });
    ops
}

/// How many timers `key` has pending now, and how many more (or fewer)
/// once `ops` apply: one read for the count, one per timer named. Drops
/// the ops of a name that end in a cancel of a timer not pending (nothing
/// to write, nor to send to a state changelog).
///
/// # Errors
/// On a store failure.
pub fn change_of(
    store: &crate::store::Store,
    pipeline: &str,
    key: &str,
    ops: &mut Vec<TimerOp>,
) -> Result<(u64, i64), StoreError> {
    let mut last: HashMap<&str, bool> = HashMap::new();
    for op in ops.iter() {
        match op {
            TimerOp::Set(t) => last.insert(&t.name, true),
            TimerOp::Cancel { name, .. } => last.insert(name, false),
        };
    }
    let mut change = 0;
    let mut nothing: Vec<String> = Vec::new();
    for (name, set) in last {
        match (set, store.has_timer(pipeline, key, name)?) {
            (true, false) => change += 1,
            (false, true) => change -= 1,
            (false, false) => nothing.push(name.to_owned()),
            (true, true) => {}
        }
    }
    if !nothing.is_empty() {
        ops.retain(|op| match op {
            TimerOp::Set(t) => !nothing.contains(&t.name),
            TimerOp::Cancel { name, .. } => !nothing.contains(name),
        });
    }
    Ok((store.key_timer_count(pipeline, key)?, change))
}

/// The record that carries a fired timer to the fold: keyed by its key,
/// the value `{"name", "at_ms", "time", "payload"}`; in cluster mode with
/// the owner epoch of its partition it fired under.
pub fn fired_record(t: &Timer, epoch: Option<u64>, generation: u64) -> ProduceRecord {
    let payload: serde_json::Value =
        serde_json::from_str(&t.payload).unwrap_or(serde_json::Value::Null);
    let value = serde_json::json!({
        "name": t.name,
        "at_ms": t.at_ms,
        "time": t.domain.as_str(),
        "payload": payload,
    });
    ProduceRecord {
        timestamp_ms: None,
        partition: Some(0),
        key: Some(t.key.as_bytes().to_vec()),
        headers: [
            (TIMER_HEADER.to_owned(), t.name.as_bytes().to_vec()),
            (
                GENERATION_HEADER.to_owned(),
                generation.to_string().into_bytes(),
            ),
        ]
        .into_iter()
        .chain(epoch.map(|e| (super::EPOCH_HEADER.to_owned(), e.to_string().into_bytes())))
        .collect(),
        value: value.to_string().into_bytes(),
    }
}

/// The owner epoch a fired timer's record was fired under (cluster mode).
pub fn fired_epoch(r: &crate::source::SourceRecord) -> Option<u64> {
    number_header(r, super::EPOCH_HEADER)
}

/// The timer generation a fired timer's record was fired in (0 without).
pub fn fired_generation(r: &crate::source::SourceRecord) -> u64 {
    number_header(r, GENERATION_HEADER).unwrap_or(0)
}

fn number_header(r: &crate::source::SourceRecord, name: &str) -> Option<u64> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
}

/// A fired timer the batch folds, as (partition, key, name): not a
/// schedule's run, which is no stored timer.
pub fn landed(item: &super::Item) -> Option<(u32, String, String)> {
    if !item.is_timer() || super::schedules::Scheduler::run_of(item).is_some() {
        return None;
    }
    let name = item
        .record
        .headers
        .iter()
        .find(|(n, _)| n == TIMER_HEADER)?;
    Some((
        item.partition,
        item.key.clone(),
        String::from_utf8_lossy(&name.1).into_owned(),
    ))
}

/// A timer's record in its partition's state changelog (cluster mode): key
/// `\0eddy-timer/{key length}/{key}{name}` (a set replaces the timer of that
/// name, as in the store), value `{"time", "at_ms", "payload"}`; a cancel,
/// or a fired timer's fold, is a tombstone (`set` is `None`). `n` tells the
/// batch's timer records apart in their `eddy-id`.
pub fn changelog_record(
    pipeline: &str,
    place: super::outputs::ChangelogPlace,
    (key, name): (&str, &str),
    set: Option<&Timer>,
    n: usize,
) -> ProduceRecord {
    let mut headers = place.headers(format!(
        "{pipeline}/{}/timers/{}/{n}",
        place.partition, place.seq
    ));
    headers.push((TIMER_HEADER.to_owned(), name.as_bytes().to_vec()));
    headers.push((TIMER_KEY_HEADER.to_owned(), key.as_bytes().to_vec()));
    let value = match set {
        Some(t) => {
            let payload: serde_json::Value =
                serde_json::from_str(&t.payload).unwrap_or(serde_json::Value::Null);
            serde_json::json!({ "time": t.domain.as_str(), "at_ms": t.at_ms, "payload": payload })
                .to_string()
                .into_bytes()
        }
        None => {
            headers.push((super::TOMBSTONE_HEADER.to_owned(), b"1".to_vec()));
            Vec::new()
        }
    };
    ProduceRecord {
        timestamp_ms: None,
        partition: Some(place.partition),
        key: Some(format!("\u{0}eddy-timer/{}/{key}{name}", key.len()).into_bytes()),
        headers,
        value,
    }
}

/// A partition's stream time in its state changelog (cluster mode, a
/// pipeline that uses event time): one compacted key per partition.
pub fn stream_time_record(
    pipeline: &str,
    place: super::outputs::ChangelogPlace,
    ms: i64,
) -> ProduceRecord {
    let mut headers = place.headers(format!(
        "{pipeline}/{}/stream-time/{}",
        place.partition, place.seq
    ));
    headers.push((STREAM_TIME_HEADER.to_owned(), ms.to_string().into_bytes()));
    ProduceRecord {
        timestamp_ms: None,
        partition: Some(place.partition),
        key: Some(b"\0eddy-stream-time".to_vec()),
        headers,
        value: ms.to_string().into_bytes(),
    }
}

/// Reads a timer back from its state changelog record: `None` for a
/// tombstone (cancelled or fired); an error names what is wrong.
///
/// # Errors
/// A value that is not the JSON [`changelog_record`] writes.
pub fn from_changelog(
    (key, name): (&str, &str),
    partition: u32,
    value: &[u8],
) -> Result<Timer, String> {
    #[derive(Deserialize)]
    struct Stored {
        time: String,
        at_ms: i64,
        #[serde(default)]
        payload: serde_json::Value,
    }
    let v: Stored = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let domain = match v.time.as_str() {
        "wall" => TimeDomain::Wall,
        "event" => TimeDomain::Event,
        other => return Err(format!("unknown clock {other:?}")),
    };
    Ok(Timer {
        key: key.to_owned(),
        name: name.to_owned(),
        partition,
        domain,
        at_ms: v.at_ms,
        payload: v.payload.to_string(),
    })
}

/// A worker's view of its timers: the partitions' stream times and how
/// many timers are pending.
pub struct Clock {
    /// Per input partition, the highest event time seen (`i64::MIN`: none).
    pub stream_times: Vec<i64>,
    /// The pipeline's allowed lateness.
    pub lateness_ms: i64,
    /// Timers pending (all keys).
    pub pending: u64,
    /// The pipeline's cap on `pending`.
    pub max: u64,
    /// Whether the pipeline has set an event-time timer: its events then
    /// carry the partition's watermark.
    pub event_time: bool,
    /// No wall-clock timer is pending before this (`i64::MIN`: look).
    pub wall_from: i64,
    /// Per partition, no event-time timer is pending before this.
    pub event_from: Vec<i64>,
    /// The store's state epoch it was read at: a restore, or a replay's
    /// switch-over, changes what is pending and the stream times.
    pub epoch: u64,
    /// Cluster mode: the partitions' owner epochs it was read at. Only the
    /// owned partitions' timers count as pending here (a partition that
    /// moved keeps its timers in this store, in case it comes back).
    pub owned: Option<Vec<Option<u64>>>,
    /// The pipeline's timer generation (see [`GENERATION_HEADER`]).
    pub generation: u64,
}

impl Clock {
    /// What the store holds of `pipeline`'s timers (its input has
    /// `partitions`).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn load(
        store: &crate::store::Store,
        pipeline: &PipelineConfig,
        partitions: u32,
        owned: Option<Vec<Option<u64>>>,
    ) -> Result<Self, StoreError> {
        // Read first: a change after it is seen at the next look.
        let epoch = store.state_epoch();
        let keep = |p: u32| {
            owned
                .as_ref()
                .is_some_and(|o| o.get(p as usize).copied().flatten().is_some())
        };
        let pending = if owned.is_some() {
            store.timer_count_of(&pipeline.name, Some(&keep))?
        } else {
            store.timer_count(&pipeline.name)?
        };
        Ok(Clock {
            stream_times: store.stream_times(&pipeline.name, partitions)?,
            pending,
            event_time: store.uses_event_time(&pipeline.name)?,
            epoch,
            owned,
            generation: store.timer_generation(&pipeline.name)?,
            ..Clock::new(pipeline, partitions)
        })
    }

    /// A clock with nothing pending and no event seen yet (a replay's
    /// rebuild starts from it).
    pub fn new(pipeline: &PipelineConfig, partitions: u32) -> Self {
        Clock {
            stream_times: vec![i64::MIN; partitions as usize],
            lateness_ms: i64::try_from(pipeline.allowed_lateness_ms).unwrap_or(i64::MAX),
            pending: 0,
            max: pipeline.max_timers,
            event_time: false,
            // Unknown until the first look.
            wall_from: i64::MIN,
            event_from: vec![i64::MIN; partitions as usize],
            epoch: 0,
            owned: None,
            generation: 0,
        }
    }

    /// The stream time up to which `partition`'s event-time timers are due.
    pub fn due_until(&self, partition: u32) -> Option<i64> {
        let t = *self.stream_times.get(partition as usize)?;
        (t != i64::MIN).then(|| t.saturating_sub(self.lateness_ms))
    }

    /// Lowers the instants before which nothing is pending to the timers
    /// `ops` set.
    pub fn expect(&mut self, ops: &[TimerOp]) {
        for op in ops {
            if let TimerOp::Set(t) = op {
                match t.domain {
                    TimeDomain::Wall => self.wall_from = self.wall_from.min(t.at_ms),
                    TimeDomain::Event => {
                        if let Some(from) = self.event_from.get_mut(t.partition as usize) {
                            *from = (*from).min(t.at_ms);
                        }
                    }
                }
            }
        }
    }

    /// Moves partitions' stream times on to the events of `timestamps`
    /// (partition, event time); returns the partitions that moved.
    pub fn advance(&mut self, timestamps: impl Iterator<Item = (u32, i64)>) -> Vec<(u32, i64)> {
        let mut moved: HashMap<u32, i64> = HashMap::new();
        for (partition, ms) in timestamps {
            if let Some(t) = self.stream_times.get_mut(partition as usize)
                && ms > *t
            {
                *t = ms;
                moved.insert(partition, ms);
            }
        }
        let mut moved: Vec<(u32, i64)> = moved.into_iter().collect();
        moved.sort_unstable();
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_name_the_field_and_value() {
        assert_eq!(
            Request::parse(r#"{"op":"set","name":"t","at_ms":5,"time":"event","payload":{"a":1}}"#),
            Ok(Request::Set {
                name: "t".into(),
                at_ms: 5,
                domain: TimeDomain::Event,
                payload: r#"{"a":1}"#.into()
            })
        );
        assert_eq!(
            Request::parse(r#"{"op":"cancel","name":"t"}"#),
            Ok(Request::Cancel { name: "t".into() })
        );
        let err = |v: &str| Request::parse(v).err().unwrap_or_default();
        assert!(err(r#"{"op":"set","name":"t"}"#).contains("at_ms"));
        assert!(
            err(r#"{"op":"set","name":"t","at_ms":999999999999999999}"#)
                .contains("999999999999999999")
        );
        assert!(err(r#"{"op":"set","name":"t","at_ms":1,"time":"cpu"}"#).contains("\"cpu\""));
        assert!(err(r#"{"op":"pause","name":"t"}"#).contains("\"pause\""));
        assert!(err(r#"{"op":"set","name":"","at_ms":1}"#).contains("name"));
        assert!(err("[1]").contains("[1]"));
    }

    fn emit(value: &str) -> Emitted {
        Emitted {
            topic: TIMER_REQUEST_TOPIC.into(),
            key: None,
            value: value.into(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn checks_refuse_handlers_bad_requests_and_too_many_timers() {
        let rules = Rules { per_key: 2 };
        let set = |n: &str| emit(&format!(r#"{{"op":"set","name":"{n}","at_ms":1}}"#));
        let class = |r: Result<(), PluginError>| r.err().map(|e| e.class());
        assert_eq!(
            class(check("p", Some(&rules), &[set("a"), set("b"), set("a")])),
            None
        );
        assert_eq!(
            class(check("p", Some(&rules), &[set("a"), set("b"), set("c")])),
            Some("timer_limit")
        );
        assert_eq!(class(check("p", None, &[set("a")])), Some("bad_timer"));
        assert_eq!(
            class(check("p", Some(&rules), &[emit("{}")])),
            Some("bad_timer")
        );
        let mut emits = vec![
            set("a"),
            Emitted {
                topic: "out".into(),
                key: None,
                value: "1".into(),
                headers: Vec::new(),
            },
            emit(r#"{"op":"cancel","name":"b"}"#),
        ];
        let ops = take_requests("k", 3, &mut emits);
        assert_eq!(emits.len(), 1);
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn stream_time_moves_forward_only_and_lateness_holds_event_timers_back() {
        let mut c = Clock {
            stream_times: vec![i64::MIN, 10],
            lateness_ms: 5,
            pending: 0,
            max: 10,
            event_time: false,
            wall_from: i64::MAX,
            event_from: vec![i64::MAX; 2],
            epoch: 0,
            owned: None,
            generation: 0,
        };
        c.expect(&[TimerOp::Set(Timer {
            key: "k".into(),
            name: "n".into(),
            partition: 1,
            domain: TimeDomain::Event,
            at_ms: 4,
            payload: "null".into(),
        })]);
        assert_eq!(
            (c.wall_from, c.event_from.clone()),
            (i64::MAX, vec![i64::MAX, 4])
        );
        assert_eq!(c.due_until(0), None);
        assert_eq!(c.advance([(0, 7), (1, 3), (0, 9)].into_iter()), [(0, 9)]);
        assert_eq!(c.due_until(0), Some(4));
        assert_eq!(c.due_until(1), Some(5));
        assert_eq!(c.due_until(2), None);
    }
}
