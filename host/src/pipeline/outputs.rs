//! What a micro-batch produced, and the atomic commit built from it: new
//! states with their change numbers, emitted, changelog and dead-letter
//! records, dead letters, quarantined keys and parked events.
//!
//! The live worker commits it with the next source offsets; a replay's
//! rebuild commits the same thing into its side namespace (without the
//! records: a rebuild repeats no side effects).

use std::collections::HashMap;
use std::sync::Arc;

use super::dead_letter::{DeadIds, DeadLetter, Stage};
use super::fold::{Attempted, KeyFold};
use super::{
    BATCH_END_HEADER, DEAD_LETTER_HEADER, EPOCH_HEADER, ID_HEADER, Item, SEQ_HEADER,
    SOURCE_OFFSET_HEADER, STAMP_HEADER, STATE_FORMAT_HEADER, TOMBSTONE_HEADER, VERSION_HEADER,
};
use crate::execute::{Emitted, Plugin};
use crate::sink::ProduceRecord;
use crate::source::SourceRecord;
use crate::store::{Change, Commit, State, StateFormat, Store, StoreError};

/// Who folded: the pipeline, its aggregator and whether a failure
/// quarantines the key.
#[derive(Clone, Copy)]
pub struct Folder<'a> {
    /// The pipeline.
    pub pipeline: &'a str,
    /// The aggregator's plugin.
    pub plugin: &'a Plugin,
    /// Whether a failed event quarantines its key.
    pub quarantine: bool,
}

/// A key's new state, before it is numbered.
pub struct NewState {
    /// The key.
    pub key: String,
    /// Its partition.
    pub partition: u32,
    /// The state.
    pub state: State,
    /// The plugin instance's name for it (see [`crate::store::Change::version`]).
    pub version: u64,
    /// The key's previous change number in the partition.
    pub previous_seq: Option<u64>,
    /// The `traceparent` of the last event that made it, for its changelog
    /// record.
    pub trace: Option<Vec<u8>>,
}

/// What processing a micro-batch produced, before it is committed.
#[derive(Default)]
pub struct Outputs {
    /// New states.
    pub states: Vec<NewState>,
    /// Records for other topics: (topic, record).
    pub emits: Vec<(String, ProduceRecord)>,
    /// Dead letters, in the order they happened.
    pub dead: Vec<DeadLetter>,
    /// Keys that got a new dead letter in quarantine mode (once per letter),
    /// with the offset of the event that failed.
    pub quarantine: Vec<(String, u64)>,
    /// Events held back behind a quarantined key.
    pub park: Vec<(String, SourceRecord)>,
    /// Timers the folds set and cancelled, in order: the live worker takes
    /// them out of the folds' emits (`Worker::timer_budget`) and commits
    /// them; a replay's rebuild, which produces no records, sets none.
    pub timers: Vec<crate::store::TimerOp>,
    /// Cluster mode: fired timers the batch folded (partition, key, name):
    /// their in-flight entries go, and tombstones to the state changelog.
    pub landed: Vec<(u32, String, String)>,
    /// Cluster mode, a pipeline that uses event time: the partitions' new
    /// stream times, for the state changelog.
    pub stream_times: Vec<(u32, i64)>,
    /// Cluster mode: schedule runs the batch finished, by partition, for
    /// the state changelog.
    pub runs: Vec<(u32, super::schedules::RunChange)>,
}

impl Outputs {
    /// Adds what folding `key`'s events (`group`, in order) produced by
    /// `by`, whose previous change number was `previous_seq`.
    pub fn add_fold(
        &mut self,
        by: &Folder<'_>,
        key: &str,
        group: &[&Item],
        fold: KeyFold,
        previous_seq: Option<u64>,
    ) {
        let Folder {
            pipeline,
            plugin,
            quarantine,
        } = *by;
        for (index, emits) in fold.emits {
            if let Some(item) = group.get(index) {
                self.add_emits(&item.record, emits);
            }
        }
        for failed in fold.failed {
            let Some(item) = group.get(failed.index) else {
                continue;
            };
            self.dead.push(
                DeadLetter::new(
                    pipeline,
                    &item.record,
                    Stage::Aggregate,
                    failed.error.class(),
                    failed.error.to_string(),
                )
                .plugin(&plugin.name, &plugin.version)
                .key(key)
                .retries(failed.delays),
            );
            if quarantine {
                self.quarantine(key, item.record.offset);
            }
        }
        if let Some(state) = fold.state {
            let trace = group.iter().rev().find_map(|i| {
                i.record
                    .headers
                    .iter()
                    .rev()
                    .find(|(n, _)| n.eq_ignore_ascii_case(crate::trace::HEADER))
                    .map(|(_, v)| v.clone())
            });
            self.states.push(NewState {
                key: key.to_owned(),
                partition: group.first().map_or(0, |i| i.partition),
                state,
                version: fold.version,
                previous_seq,
                trace,
            });
        }
        if let Some(from) = fold.held_from {
            self.hold(key, group.get(from..).unwrap_or_default());
        }
    }

    /// Records that `key` got a dead letter for the event at `offset` in
    /// quarantine mode.
    pub fn quarantine(&mut self, key: &str, offset: u64) {
        self.quarantine.push((key.to_owned(), offset));
    }

    /// Holds `items` back behind their quarantined `key`.
    pub fn hold(&mut self, key: &str, items: &[&Item]) {
        for item in items {
            self.park.push((key.to_owned(), item.record.clone()));
        }
    }

    /// Adds a handler's results, one per item.
    pub fn add_handled(
        &mut self,
        pipeline: &str,
        plugin: &Plugin,
        items: &[&Item],
        results: Vec<Attempted<Vec<Emitted>>>,
    ) {
        for (item, (result, delays)) in items.iter().zip(results) {
            match result {
                Ok(emits) => self.add_emits(&item.record, emits),
                Err(e) => self.dead.push(
                    DeadLetter::new(
                        pipeline,
                        &item.record,
                        Stage::Handle,
                        e.class(),
                        e.to_string(),
                    )
                    .plugin(&plugin.name, &plugin.version)
                    .key(&item.key)
                    .retries(delays),
                ),
            }
        }
    }

    fn add_emits(&mut self, source: &SourceRecord, emits: Vec<Emitted>) {
        for (i, e) in emits.into_iter().enumerate() {
            self.emits.push(to_produce(source, i, e));
        }
    }
}

/// Where a batch's commit goes and the numbers it continues from.
pub struct Target<'a> {
    /// The pipeline (for log lines and metrics).
    pub pipeline: &'a str,
    /// Its input topic.
    pub input: &'a str,
    /// Where its states go: the pipeline itself, or a replay's namespace.
    pub name: &'a str,
    /// The store (quarantine counts and park numbers are read from it).
    pub store: &'a Store,
    /// Last change number used, per partition.
    pub seqs: &'a mut [u64],
    /// Last commit stamp used (microseconds; each change's is later).
    pub stamp_us: &'a mut u64,
    /// Dead-letter ids used so far.
    pub dead_ids: &'a mut DeadIds,
    /// Topic each new state is appended to, if any.
    pub changelog: Option<&'a str>,
    /// Whether a change goes to the changelog partition numbered as its
    /// input partition (else the partition its key hashes to).
    pub changelog_by_partition: bool,
    /// Per input partition, the next offset to read after this batch (what
    /// a changelog record says its state reflects).
    pub source_offsets: &'a [u64],
    /// Cluster mode: the state changelog each change also goes to (in its
    /// input's partition), with each partition's owner epoch (`None`: not
    /// owned, no record).
    pub restore: Option<(&'a str, &'a [Option<u64>])>,
    /// Topic each dead letter is appended to, if any.
    pub dlq: Option<&'a str>,
    /// Version of the aggregator that produced the states.
    pub plugin_version: String,
    /// The aggregator's name, for log lines.
    pub aggregator: Option<&'a str>,
}

impl Outputs {
    /// Builds the atomic commit of these outputs and the records it
    /// produces (emits, then changelog and dead-letter records); numbers
    /// states and dead letters after `target`'s and moves them on.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn into_commit(
        self,
        target: Target<'_>,
    ) -> Result<(Commit, Vec<(String, ProduceRecord)>), StoreError> {
        let Outputs {
            states,
            mut emits,
            dead,
            quarantine,
            park,
            timers,
            landed,
            stream_times,
            runs,
        } = self;
        let mut commit = Commit {
            pipeline: target.name.to_owned(),
            plugin_version: target.plugin_version,
            ..Commit::default()
        };
        let mut touched: Vec<u32> = Vec::new();
        // Per (topic, partition), where its last changelog record sits in `emits`.
        let mut batch_end: Vec<(bool, u32, usize)> = Vec::new();
        let mut mark_end = |restore: bool, partition: u32, at: usize| match batch_end
            .iter_mut()
            .find(|(r, p, _)| *r == restore && *p == partition)
        {
            Some((_, _, end)) => *end = at,
            None => batch_end.push((restore, partition, at)),
        };
        for NewState {
            key,
            partition,
            state,
            version,
            previous_seq: previous,
            trace,
        } in states
        {
            let Some(seq) = target.seqs.get_mut(partition as usize) else {
                continue;
            };
            *seq += 1;
            *target.stamp_us = next_stamp(*target.stamp_us);
            if !touched.contains(&partition) {
                touched.push(partition);
            }
            let change = Change {
                partition,
                seq: *seq,
                stamp_us: *target.stamp_us,
                key,
                state,
                version,
            };
            // A changelog partition is the input partition, and each record
            // says what it reflects, so a partition's state can be restored
            // from its changelog alone.
            let source_offset = target
                .source_offsets
                .get(partition as usize)
                .copied()
                .unwrap_or(0);
            // A changelog topic carries JSON (its readers are users'); the
            // state changelog the state as stored, with its format.
            let record = |by_partition: bool, value: &[u8]| {
                let mut headers = vec![
                    (
                        ID_HEADER.to_owned(),
                        format!("{}/{partition}/changes/{}", target.pipeline, change.seq)
                            .into_bytes(),
                    ),
                    (SEQ_HEADER.to_owned(), change.seq.to_string().into_bytes()),
                    (
                        SOURCE_OFFSET_HEADER.to_owned(),
                        source_offset.to_string().into_bytes(),
                    ),
                ];
                if let Some(t) = &trace {
                    headers.push((crate::trace::HEADER.to_owned(), t.clone()));
                }
                ProduceRecord {
                    timestamp_ms: None,
                    partition: by_partition.then_some(partition),
                    key: Some(change.key.as_bytes().to_vec()),
                    headers,
                    value: value.to_vec(),
                }
            };
            if let Some(topic) = target.changelog {
                mark_end(false, partition, emits.len());
                emits.push((
                    topic.to_owned(),
                    record(
                        target.changelog_by_partition,
                        change.state.json_text().as_bytes(),
                    ),
                ));
            }
            if let Some((topic, epochs)) = target.restore {
                match epochs.get(partition as usize).copied().flatten() {
                    Some(epoch) => {
                        let mut r = record(true, change.state.bytes());
                        if change.state.format() != StateFormat::Json {
                            r.headers.push((
                                STATE_FORMAT_HEADER.to_owned(),
                                change.state.format().as_str().as_bytes().to_vec(),
                            ));
                        }
                        r.headers.extend([
                            (EPOCH_HEADER.to_owned(), epoch.to_string().into_bytes()),
                            (
                                STAMP_HEADER.to_owned(),
                                change.stamp_us.to_string().into_bytes(),
                            ),
                            (
                                VERSION_HEADER.to_owned(),
                                commit.plugin_version.as_bytes().to_vec(),
                            ),
                        ]);
                        mark_end(true, partition, emits.len());
                        emits.push((topic.to_owned(), r));
                    }
                    None => tracing::warn!(
                        pipeline = %target.pipeline, partition, key = %change.key,
                        "a state changed in a partition this host does not own; it is not in the state changelog"
                    ),
                }
            }
            commit.states.push((change, previous));
        }
        commit.last_seqs = touched
            .into_iter()
            .filter_map(|p| Some((p, *target.seqs.get(p as usize)?)))
            .collect();
        // A rebuild's failures are counted in its progress, not as the live pipeline's.
        let live = target.name == target.pipeline;
        // Cluster mode: the state changelog, and where a partition's records
        // stand in it (`None`: a partition this host does not own).
        let changelog = target.restore.map(|(topic, _)| topic);
        let place = |partition: u32| {
            let (_, epochs) = target.restore?;
            let at = partition as usize;
            Some(ChangelogPlace {
                partition,
                epoch: epochs.get(at).copied().flatten()?,
                seq: target.seqs.get(at).copied().unwrap_or(0),
                source_offset: target.source_offsets.get(at).copied().unwrap_or(0),
            })
        };
        let mut dead_touched: Vec<u32> = Vec::new();
        for dl in dead {
            // The input partition it belongs to: the one it was read from
            // (in cluster mode, a replayed event is read from the input
            // again, on its key's partition), else where it first came from.
            let partition = if dl.topic == target.input {
                dl.partition
            } else {
                dl.origin().partition
            };
            let id = target.dead_ids.next(partition);
            if !dead_touched.contains(&partition) {
                dead_touched.push(partition);
            }
            let json = dl.to_json(id);
            if live {
                let trace_id = dl
                    .trace()
                    .and_then(|t| crate::trace::Parent::parse(&t))
                    .map(|p| p.trace_hex());
                tracing::warn!(
                    pipeline = %target.pipeline, key = dl.key.as_deref(), plugin = dl.plugin.as_deref(),
                    topic = %dl.topic, partition = dl.partition, offset = dl.offset, id,
                    trace_id = trace_id.as_deref(),
                    stage = dl.stage.as_str(), error_class = %dl.error_class, error = %dl.error,
                    "event dead-lettered"
                );
                crate::telemetry::dead_letter(target.pipeline, dl.stage.as_str(), &dl.error_class);
            }
            if let Some(topic) = target.dlq {
                emits.push((
                    topic.to_owned(),
                    ProduceRecord {
                        timestamp_ms: None,
                        partition: None,
                        key: dl.key.as_ref().map(|k| k.as_bytes().to_vec()),
                        headers: dead_letter_headers(&dl),
                        value: json.as_bytes().to_vec(),
                    },
                ));
            }
            // Cluster mode: the letter goes to its partition's state
            // changelog too, so it moves with the partition.
            if let Some(topic) = changelog {
                match place(partition) {
                    Some(place) => {
                        mark_end(true, partition, emits.len());
                        emits.push((
                            topic.to_owned(),
                            dead_letter_record(target.pipeline, place, id, Some(&json)),
                        ));
                    }
                    None => tracing::warn!(
                        pipeline = %target.pipeline, partition, id,
                        "a dead letter of a partition this host does not own; it is not in the state changelog"
                    ),
                }
            }
            commit.dead_letters.push((id, json));
        }
        target.dead_ids.record(&mut commit, &dead_touched);
        // Cluster mode: timers move with their partition too. A fired
        // timer's fold removes it from the changelog first; a set or
        // cancel of the batch comes after, so the last one wins.
        if let Some(topic) = changelog {
            let changes = landed
                .iter()
                .map(|(p, key, name)| (*p, key.as_str(), name.as_str(), None))
                .chain(timers.iter().map(|op| match op {
                    crate::store::TimerOp::Set(t) => {
                        (t.partition, t.key.as_str(), t.name.as_str(), Some(t))
                    }
                    crate::store::TimerOp::Cancel {
                        key,
                        name,
                        partition,
                    } => (*partition, key.as_str(), name.as_str(), None),
                }));
            for (n, (partition, key, name, set)) in changes.enumerate() {
                let Some(place) = place(partition) else {
                    tracing::warn!(
                        pipeline = %target.pipeline, partition, key, timer = name,
                        "a timer of a partition this host does not own; it is not in the state changelog"
                    );
                    continue;
                };
                mark_end(true, partition, emits.len());
                emits.push((
                    topic.to_owned(),
                    super::timers::changelog_record(target.pipeline, place, (key, name), set, n),
                ));
            }
            for (partition, run) in &runs {
                let Some(place) = place(*partition) else {
                    continue;
                };
                for r in super::schedules::changelog_records(target.pipeline, place, run) {
                    mark_end(true, *partition, emits.len());
                    emits.push((topic.to_owned(), r));
                }
            }
            for (partition, ms) in &stream_times {
                if let Some(place) = place(*partition) {
                    mark_end(true, *partition, emits.len());
                    emits.push((
                        topic.to_owned(),
                        super::timers::stream_time_record(target.pipeline, place, *ms),
                    ));
                }
            }
        }
        commit.timers = timers;
        commit.timers_landed = landed;
        for (_, _, at) in batch_end {
            if let Some((_, r)) = emits.get_mut(at) {
                r.headers.push((BATCH_END_HEADER.to_owned(), b"1".to_vec()));
            }
        }
        // Per key: new dead letters and the offset of the first.
        let mut opened: HashMap<String, (u64, u64)> = HashMap::new();
        for (key, offset) in quarantine {
            opened.entry(key).or_insert((0, offset)).0 += 1;
        }
        for (key, (n, offset)) in opened {
            let open = target.store.quarantined(target.name, &key)? + n;
            if live {
                tracing::warn!(
                    pipeline = %target.pipeline, plugin = target.aggregator, key = %key,
                    offset, open, "key quarantined"
                );
            }
            commit.quarantine.push((key, open));
        }
        if !park.is_empty() {
            let mut seq = target.store.last_park_seq(target.name)?;
            for (key, record) in park {
                seq += 1;
                commit
                    .park
                    .push((key, seq, super::quarantine::park_encode(&record)));
            }
            commit.last_park_seq = seq;
        }
        Ok((commit, emits))
    }
}

/// Where a changelog record of a partition stands: the owner's epoch, the
/// partition's change number and the input offset it reflects, as a
/// state's record carries them.
#[derive(Debug, Clone, Copy)]
pub struct ChangelogPlace {
    /// The input (and changelog) partition.
    pub partition: u32,
    /// The owner's epoch.
    pub epoch: u64,
    /// The partition's change number.
    pub seq: u64,
    /// The next input offset the partition's state reflects.
    pub source_offset: u64,
}

impl ChangelogPlace {
    /// The headers every record of the place carries, with its `eddy-id`.
    pub fn headers(&self, id: String) -> Vec<(String, Vec<u8>)> {
        vec![
            (ID_HEADER.to_owned(), id.into_bytes()),
            (SEQ_HEADER.to_owned(), self.seq.to_string().into_bytes()),
            (
                SOURCE_OFFSET_HEADER.to_owned(),
                self.source_offset.to_string().into_bytes(),
            ),
            (EPOCH_HEADER.to_owned(), self.epoch.to_string().into_bytes()),
        ]
    }
}

/// A dead letter's record in its partition's state changelog (`letter`:
/// `None` for its resolution, a tombstone): key `\0eddy-dead/{id}`, with the
/// owner's epoch, the partition's change number and input offset as a
/// state's record has them, so a restore reads it in the same order and
/// under the same rules.
pub fn dead_letter_record(
    pipeline: &str,
    place: ChangelogPlace,
    id: u64,
    letter: Option<&str>,
) -> ProduceRecord {
    let partition = place.partition;
    let mut headers = place.headers(format!(
        "{pipeline}/{partition}/dead/{id}/{}",
        if letter.is_some() { "open" } else { "resolved" }
    ));
    headers.push((DEAD_LETTER_HEADER.to_owned(), id.to_string().into_bytes()));
    if letter.is_none() {
        headers.push((TOMBSTONE_HEADER.to_owned(), b"1".to_vec()));
    }
    ProduceRecord {
        timestamp_ms: None,
        partition: Some(partition),
        key: Some(format!("\u{0}eddy-dead/{id}").into_bytes()),
        headers,
        value: letter.map(|l| l.as_bytes().to_vec()).unwrap_or_default(),
    }
}

/// A dead-letter topic record's headers: its `eddy-id`, and the failed
/// event's `traceparent`, so the trace goes on to whoever handles it.
fn dead_letter_headers(dl: &DeadLetter) -> Vec<(String, Vec<u8>)> {
    let mut headers = vec![(
        ID_HEADER.to_owned(),
        format!("{}/{}/{}/dead", dl.topic, dl.partition, dl.offset).into_bytes(),
    )];
    if let Some(t) = dl.trace() {
        headers.push((crate::trace::HEADER.to_owned(), t));
    }
    headers
}

/// The stamp of the next change after one stamped `last`: the current time
/// in microseconds, or `last + 1` when the clock has not moved past it.
pub fn next_stamp(last: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    now.max(last.saturating_add(1))
}

/// An emitted record as produced, with its deterministic `eddy-id`:
/// derived from the input's own id when it has one (a changelog or an
/// emitted record), so a record re-delivered after a crash yields the same
/// ids downstream; otherwise from the input's position.
fn to_produce(source: &SourceRecord, index: usize, e: Emitted) -> (String, ProduceRecord) {
    let mut headers: Vec<(String, Vec<u8>)> =
        e.headers.into_iter().map(|h| (h.name, h.value)).collect();
    let id = match source
        .headers
        .iter()
        .rev()
        .find(|(n, _)| n == ID_HEADER)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
    {
        Some(parent) => format!("{parent}/{index}"),
        None => format!(
            "{}/{}/{}/{}",
            source.topic, source.partition, source.offset, index
        ),
    };
    headers.retain(|(n, _)| n != ID_HEADER);
    headers.push((ID_HEADER.to_owned(), id.into_bytes()));
    crate::trace::inherit(&source.headers, &mut headers);
    (
        e.topic,
        ProduceRecord {
            timestamp_ms: None,
            partition: None,
            key: e.key.map(String::into_bytes),
            headers,
            value: e.value.into_bytes(),
        },
    )
}

/// Shared, not copied: the changes a commit made, as the SSE history, the
/// live subscribers and the worker's state cache all hold them.
pub fn shared_changes(commit: &mut Commit) -> Vec<Arc<Change>> {
    std::mem::take(&mut commit.states)
        .into_iter()
        .map(|(change, _)| Arc::new(change))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;

    fn header<'a>(r: &'a ProduceRecord, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// In cluster mode a dead letter goes to its partition's state changelog
    /// with what a restore needs; a batch that only dead-lettered ends there.
    #[test]
    fn a_dead_letter_goes_to_its_partitions_state_changelog()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), Durability::Process)?;
        let record = SourceRecord {
            topic: Arc::from("in"),
            partition: 2,
            offset: 10,
            timestamp_ms: 0,
            key: None,
            headers: Vec::new(),
            value: b"not json".to_vec(),
            tombstone: false,
        };
        let out = Outputs {
            dead: vec![DeadLetter::new(
                "p",
                &record,
                Stage::Decode,
                "decode",
                "bad".into(),
            )],
            ..Outputs::default()
        };
        let mut ids = DeadIds::ByPartition(vec![0; 3]);
        let (commit, emits) = out.into_commit(Target {
            pipeline: "p",
            input: "in",
            name: "p",
            store: &store,
            seqs: &mut [0, 0, 4],
            stamp_us: &mut 0,
            dead_ids: &mut ids,
            changelog: None,
            changelog_by_partition: false,
            source_offsets: &[0, 0, 11],
            restore: Some(("cl", &[None, None, Some(7)])),
            dlq: None,
            plugin_version: String::new(),
            aggregator: None,
        })?;
        // The first letter of partition 2 of 3: id 1 × 3 + 2.
        assert_eq!(commit.dead_letters.first().map(|(id, _)| *id), Some(5));
        assert_eq!(commit.last_dead_ids, vec![(2, 1)]);
        let [(topic, r)] = emits.as_slice() else {
            return Err(format!("one record: {emits:?}").into());
        };
        assert_eq!(topic, "cl");
        assert_eq!(r.partition, Some(2));
        assert_eq!(r.key.as_deref(), Some(&b"\0eddy-dead/5"[..]));
        assert_eq!(header(r, DEAD_LETTER_HEADER), Some("5"));
        assert_eq!(header(r, EPOCH_HEADER), Some("7"));
        assert_eq!(header(r, SEQ_HEADER), Some("4"));
        assert_eq!(header(r, SOURCE_OFFSET_HEADER), Some("11"));
        assert_eq!(header(r, BATCH_END_HEADER), Some("1"));
        assert_eq!(header(r, TOMBSTONE_HEADER), None);
        let letter: serde_json::Value = serde_json::from_slice(&r.value)?;
        assert_eq!(
            letter.get("id").and_then(serde_json::Value::as_u64),
            Some(5)
        );
        // Its resolution is a tombstone under the same key.
        let place = ChangelogPlace {
            partition: 2,
            epoch: 7,
            seq: 4,
            source_offset: 11,
        };
        let t = dead_letter_record("p", place, 5, None);
        assert_eq!(t.key, r.key);
        assert!(t.value.is_empty());
        assert_eq!(header(&t, TOMBSTONE_HEADER), Some("1"));
        Ok(())
    }
}
