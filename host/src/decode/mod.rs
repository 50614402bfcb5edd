//! Stage 2, decode: turn a record's value bytes into the JSON text plugins
//! receive. A pipeline's values are JSON, or Avro in Confluent's wire format
//! decoded with the registry's writer schema and the pipeline's reader
//! schema ([`avro`]). Bad data goes to the dead letters; an unreachable
//! registry is retried, never dead-lettered.

pub mod avro;

use std::borrow::Cow;
use std::sync::Arc;

/// Why a value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A null value (a Kafka tombstone).
    #[error(
        "value is null (a tombstone): there is no event to fold, and a tombstone deletes no state"
    )]
    Tombstone,
    /// No bytes at all.
    #[error("value is empty (0 bytes): there is nothing to decode")]
    Empty,
    /// Not UTF-8.
    #[error("value is not UTF-8 text (invalid byte at {at})")]
    NotUtf8 {
        /// Byte position of the first invalid byte.
        at: usize,
    },
    /// Not JSON.
    #[error("value is not valid JSON: {0}")]
    NotJson(String),
    /// Too short for the Avro wire format.
    #[error(
        "value is {len} bytes: too short for the Avro wire format (magic byte 0, 4-byte schema id, datum)"
    )]
    NotWireFormat {
        /// Length of the value.
        len: usize,
    },
    /// Not the wire format's magic byte.
    #[error("value starts with byte {byte:#04x}, not the Avro wire format's magic byte 0x00")]
    BadMagic {
        /// The first byte.
        byte: u8,
    },
    /// The schema id is not registered.
    #[error("schema id {id} is not registered")]
    UnknownSchema {
        /// The id.
        id: u32,
    },
    /// The registered writer schema does not parse.
    #[error("writer schema {id} does not parse: {error}")]
    BadWriterSchema {
        /// The id.
        id: u32,
        /// Why.
        error: String,
    },
    /// The datum does not decode (truncated or corrupt).
    #[error("value does not decode with writer schema {id}: {error}")]
    Avro {
        /// The writer schema id.
        id: u32,
        /// Why.
        error: String,
    },
    /// The schema registry cannot be reached: retry, do not dead-letter.
    #[error("schema {id}: the registry cannot be reached: {source}")]
    RegistryUnavailable {
        /// The id being fetched.
        id: u32,
        /// Why.
        #[source]
        source: crate::schema::Unreachable,
    },
}

impl DecodeError {
    /// Whether the failure is the registry's, not the value's.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DecodeError::RegistryUnavailable { .. })
    }

    /// The dead letter's error class: `tombstone` for a null value,
    /// `empty` for a value with no bytes, `decode` for every other value
    /// that does not decode.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Tombstone => "tombstone",
            DecodeError::Empty => "empty",
            _ => "decode",
        }
    }
}

/// How a pipeline decodes its values.
#[derive(Clone, Default)]
pub enum Decoder {
    /// JSON text.
    #[default]
    Json,
    /// Avro in the wire format.
    Avro(Arc<avro::AvroDecoder>),
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decoder::Json => "Decoder::Json",
            Decoder::Avro(_) => "Decoder::Avro",
        })
    }
}

impl Decoder {
    /// Decodes one value to JSON text — the value's own bytes when they
    /// are JSON (no copy), decoded text for Avro — with the writer schema
    /// id for Avro.
    ///
    /// # Errors
    /// [`DecodeError`] saying what is wrong with the value.
    pub fn decode<'b>(&self, bytes: &'b [u8]) -> Result<(Cow<'b, str>, Option<u32>), DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        match self {
            Decoder::Json => json_value(bytes).map(|j| (Cow::Borrowed(j), None)),
            Decoder::Avro(a) => a.decode(bytes).map(|(j, id)| (Cow::Owned(j), Some(id))),
        }
    }
}

/// Checks a JSON value, returning it as text (the same bytes).
///
/// # Errors
/// [`DecodeError`] saying where the value is malformed.
pub fn json_value(bytes: &[u8]) -> Result<&str, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8 {
        at: e.valid_up_to(),
    })?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| DecodeError::NotJson(e.to_string()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_json_and_rejects_the_rest() {
        assert!(json_value(br#"{"a":1}"#).is_ok());
        assert!(matches!(
            json_value(b"{\"a\":"),
            Err(DecodeError::NotJson(_))
        ));
        assert!(matches!(
            json_value(&[0xff, 0xfe]),
            Err(DecodeError::NotUtf8 { at: 0 })
        ));
        assert!(json_value(b"").is_err());
        let empty = Decoder::Json.decode(b"");
        assert!(matches!(empty, Err(DecodeError::Empty)), "{empty:?}");
        assert_eq!(DecodeError::Empty.class(), "empty");
    }
}
