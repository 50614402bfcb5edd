//! Quarantine: in `on_dead_letter = "quarantine"` mode, once one of a
//! key's events is dead-lettered by the aggregator its later events are
//! parked in the store, in order, until its last open dead letter is
//! replayed or deleted; then they are released to the replay topic after
//! the replayed one, so the key's order holds.

use super::SOURCE_HEADER;
use crate::sink::ProduceRecord;
use crate::source::SourceRecord;
use crate::store::{LogRecord, Store, StoreError};

/// A parked event, stored as a log record with its source position in the
/// `eddy-source` header, ready to be appended to the replay topic.
pub fn park_encode(record: &SourceRecord) -> Vec<u8> {
    let mut headers = record.headers.clone();
    headers.push((
        SOURCE_HEADER.to_owned(),
        format!("{}/{}/{}", record.topic, record.partition, record.offset).into_bytes(),
    ));
    LogRecord {
        timestamp_ms: record.timestamp_ms,
        key: record.key.clone(),
        headers,
        value: record.value.clone(),
    }
    .encode()
}

/// A key's parked events as replay-topic records, oldest first, each with
/// its park number (to remove it in the same commit).
///
/// # Errors
/// On a store failure or a parked record that does not decode.
pub fn release(
    store: &Store,
    pipeline: &str,
    key: &str,
) -> Result<Vec<(u64, ProduceRecord)>, StoreError> {
    store
        .parked(pipeline, key)?
        .into_iter()
        .map(|(seq, bytes)| {
            let r = LogRecord::decode(&bytes)?;
            Ok((
                seq,
                ProduceRecord {
                    timestamp_ms: None,
                    partition: Some(0),
                    key: r.key,
                    headers: r.headers,
                    value: r.value,
                },
            ))
        })
        .collect()
}
