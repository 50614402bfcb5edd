//! Dead letters: events that could not be decoded, keyed or processed, kept
//! with everything needed to understand and replay them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::source::SourceRecord;

/// Where in the pipeline an event failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The value did not decode.
    Decode,
    /// No key could be found.
    Route,
    /// A handler failed on it.
    Handle,
    /// The aggregator failed on it.
    Aggregate,
}

impl Stage {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Route => "route",
            Stage::Handle => "handle",
            Stage::Aggregate => "aggregate",
        }
    }
}

/// One dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Pipeline.
    pub pipeline: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: u32,
    /// Source offset.
    pub offset: u64,
    /// Produce time of the record.
    pub timestamp_ms: i64,
    /// Stage that failed.
    pub stage: Stage,
    /// The event's key, when one was found.
    pub key: Option<String>,
    /// Plugin that failed, if any.
    pub plugin: Option<String>,
    /// Its version (content hash).
    pub plugin_version: Option<String>,
    /// Error class (`decode`, `key`, `timeout`, `trap`, `invalid`...).
    pub error_class: String,
    /// Error message.
    pub error: String,
    /// The original record key, base64.
    pub record_key_base64: Option<String>,
    /// The original headers (values base64).
    pub headers: Vec<(String, String)>,
    /// The original value bytes, base64.
    pub value_base64: String,
    /// When it was dead-lettered.
    pub dead_lettered_at_ms: i64,
}

impl DeadLetter {
    /// A dead letter for `record`.
    pub fn new(
        pipeline: &str,
        record: &SourceRecord,
        stage: Stage,
        error_class: &str,
        error: String,
    ) -> Self {
        DeadLetter {
            pipeline: pipeline.to_owned(),
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            stage,
            key: None,
            plugin: None,
            plugin_version: None,
            error_class: error_class.to_owned(),
            error,
            record_key_base64: record.key.as_deref().map(base64),
            headers: record
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), base64(v)))
                .collect(),
            value_base64: base64(&record.value),
            dead_lettered_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        }
    }

    /// Names the plugin that failed.
    #[must_use]
    pub fn plugin(mut self, name: &str, version: &str) -> Self {
        self.plugin = Some(name.to_owned());
        self.plugin_version = Some(version.to_owned());
        self
    }

    /// Records the event's key.
    #[must_use]
    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }

    /// As stored and served: JSON with its id.
    pub fn to_json(&self, id: u64) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("id".into(), id.into());
        }
        v.to_string()
    }
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |i: u32| char::from(ALPHABET.get((i & 63) as usize).copied().unwrap_or(b'='));
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if chunk.len() > 1 { sym(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(n) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
