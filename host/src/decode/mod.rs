//! Stage 2, decode: turn a record's value bytes into the JSON text plugins
//! receive. A pipeline's values are JSON, or Confluent's wire format (magic
//! byte 0, the writer schema's id, the datum) decoded with the registry's
//! writer schema and the pipeline's reader schema: Avro ([`avro`]),
//! Protobuf ([`protobuf`]) or JSON validated with its JSON Schema
//! ([`json_schema`]). Bad data goes to the dead letters; an unreachable
//! registry is retried, never dead-lettered.

pub mod avro;
#[cfg(test)]
mod fuzz;
pub mod json_schema;
pub mod protobuf;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::schema::{LoadError, Parsed, SchemaSource, SchemaType};

/// Why a JSON value could not be encoded with a subject's schema.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The subject or the version is not registered.
    #[error(transparent)]
    Registry(#[from] crate::schema::RegistryError),
    /// A message type was named for a schema that is not Protobuf.
    #[error("\"message_type\" is for Protobuf subjects; {subject:?} is {kind}")]
    NotProtobuf {
        /// The subject.
        subject: String,
        /// Its schema's type.
        kind: SchemaType,
    },
    /// A registered schema that no longer parses.
    #[error("schema {0} does not parse")]
    Unparsed(u32),
    /// The value does not fit the schema.
    #[error(
        "value does not match subject {subject:?} version {version} ({kind} schema id {id}): {message}"
    )]
    Mismatch {
        /// The subject.
        subject: String,
        /// Its version used.
        version: u32,
        /// Its schema's type.
        kind: SchemaType,
        /// The schema id.
        id: u32,
        /// Which field does not fit, and why.
        message: String,
    },
}

/// Encodes a JSON value in Confluent's wire format with `subject`'s schema
/// in the embedded registry (its latest version, or `version`): Avro,
/// Protobuf (as `message`, or the file's first message) or JSON Schema.
/// The value is checked against the schema; a mismatch names the field.
///
/// # Errors
/// [`EncodeError`], naming the subject, version and field.
pub fn encode_for_subject(
    registry: &crate::schema::Registry,
    subject: &str,
    version: Option<u32>,
    message: Option<&str>,
    value: &serde_json::Value,
) -> Result<Vec<u8>, EncodeError> {
    let spec = match version {
        Some(v) => crate::schema::VersionSpec::Number(v),
        None => crate::schema::VersionSpec::Latest,
    };
    let registered = registry.version(subject, spec, false)?;
    let schema = registry
        .schema(registered.id)
        .ok_or(EncodeError::Unparsed(registered.id))?;
    if message.is_some() && !matches!(schema, Parsed::Protobuf(_)) {
        return Err(EncodeError::NotProtobuf {
            subject: subject.to_owned(),
            kind: schema.kind(),
        });
    }
    let encoded = match &schema {
        Parsed::Avro(a) => avro::encode(a, registered.id, value).map_err(|e| e.to_string()),
        Parsed::Protobuf(p) => protobuf::encode(p, registered.id, message, value),
        Parsed::Json(j) => json_schema::encode(j, registered.id, value),
    };
    encoded.map_err(|message| EncodeError::Mismatch {
        subject: subject.to_owned(),
        version: registered.version,
        kind: schema.kind(),
        id: registered.id,
        message,
    })
}

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
    /// Too short for the wire format.
    #[error(
        "value is {len} bytes: too short for the schema registry's wire format (magic byte 0, 4-byte schema id, datum)"
    )]
    NotWireFormat {
        /// Length of the value.
        len: usize,
    },
    /// Not the wire format's magic byte.
    #[error(
        "value starts with byte {byte:#04x}, not the schema registry wire format's magic byte 0x00"
    )]
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
    /// The writer schema is of another type than the pipeline reads.
    #[error("schema id {id} is a {kind} schema; this pipeline reads {expected}")]
    WrongType {
        /// The id.
        id: u32,
        /// Its type.
        kind: SchemaType,
        /// The pipeline's.
        expected: SchemaType,
    },
    /// Protobuf: the message-index list is malformed or names no message.
    #[error("schema id {id}: {error}")]
    MessageIndex {
        /// The writer schema id.
        id: u32,
        /// Why.
        error: String,
    },
    /// Protobuf: the event's message type is not the one the pipeline reads.
    #[error("schema id {id}: the value is a {got} message; this pipeline reads {want}")]
    MessageType {
        /// The writer schema id.
        id: u32,
        /// The record's message type.
        got: String,
        /// The pipeline's `message_type`.
        want: String,
    },
    /// Protobuf: the bytes do not parse as the message.
    #[error("value does not parse as Protobuf message {message} (schema id {id}): {error}")]
    Protobuf {
        /// The writer schema id.
        id: u32,
        /// The message type.
        message: String,
        /// Why.
        error: String,
    },
    /// JSON Schema: the value is not valid under the schema.
    #[error("value does not match JSON Schema {id}: {error}")]
    Invalid {
        /// The schema id (or `reader` schema).
        id: u32,
        /// The field and why.
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
    /// `empty` for a value with no bytes, `schema_type` for a writer schema
    /// of another type, `message_index` and `message_type` for a Protobuf
    /// value naming no message or another one than the pipeline reads,
    /// `validation` for a value its JSON Schema refuses, `decode` for every
    /// other value that does not decode.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Tombstone => "tombstone",
            DecodeError::Empty => "empty",
            DecodeError::WrongType { .. } => "schema_type",
            DecodeError::MessageIndex { .. } => "message_index",
            DecodeError::MessageType { .. } => "message_type",
            DecodeError::Invalid { .. } => "validation",
            _ => "decode",
        }
    }
}

/// Writer schemas by id, fetched from a [`SchemaSource`] once each (an id
/// never changes meaning).
pub struct Writers {
    source: Arc<dyn SchemaSource>,
    cache: Mutex<HashMap<u32, Parsed>>,
}

impl Writers {
    /// Writers from `source`.
    pub fn new(source: Arc<dyn SchemaSource>) -> Self {
        Writers {
            source,
            cache: Mutex::default(),
        }
    }

    /// The writer schema under `id`, which must be of type `kind`.
    ///
    /// # Errors
    /// Unknown, unparsable or of another type; or the registry is unreachable.
    pub fn get(&self, id: u32, kind: SchemaType) -> Result<Parsed, DecodeError> {
        let cached = crate::lock(&self.cache).get(&id).cloned();
        let parsed = match cached {
            Some(p) => p,
            None => {
                let p = crate::schema::load(self.source.as_ref(), id).map_err(|e| match e {
                    LoadError::Unreachable(source) => {
                        DecodeError::RegistryUnavailable { id, source }
                    }
                    LoadError::Unknown(_) => DecodeError::UnknownSchema { id },
                    other => DecodeError::BadWriterSchema {
                        id,
                        error: other.to_string(),
                    },
                })?;
                crate::lock(&self.cache).insert(id, p.clone());
                p
            }
        };
        if parsed.kind() != kind {
            return Err(DecodeError::WrongType {
                id,
                kind: parsed.kind(),
                expected: kind,
            });
        }
        Ok(parsed)
    }
}

/// Splits a wire-format value into its schema id and datum.
///
/// # Errors
/// [`DecodeError::NotWireFormat`] or [`DecodeError::BadMagic`].
pub fn split_wire(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    let (magic, rest) = bytes
        .split_first()
        .ok_or(DecodeError::NotWireFormat { len: bytes.len() })?;
    if *magic != 0 {
        return Err(DecodeError::BadMagic { byte: *magic });
    }
    let (id, datum) = rest
        .split_first_chunk::<4>()
        .ok_or(DecodeError::NotWireFormat { len: bytes.len() })?;
    Ok((u32::from_be_bytes(*id), datum))
}

/// The wire format's header: magic byte 0 and the schema id.
pub fn wire_header(id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// How a pipeline decodes its values.
#[derive(Clone, Default)]
pub enum Decoder {
    /// JSON text.
    #[default]
    Json,
    /// Avro in the wire format.
    Avro(Arc<avro::AvroDecoder>),
    /// Protobuf in the wire format.
    Protobuf(Arc<protobuf::ProtobufDecoder>),
    /// JSON Schema in the wire format.
    JsonSchema(Arc<json_schema::JsonSchemaDecoder>),
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decoder::Json => "Decoder::Json",
            Decoder::Avro(_) => "Decoder::Avro",
            Decoder::Protobuf(_) => "Decoder::Protobuf",
            Decoder::JsonSchema(_) => "Decoder::JsonSchema",
        })
    }
}

impl Decoder {
    /// Decodes one value to JSON text — the value's own bytes when they
    /// are JSON (borrowed: no copy), owned text otherwise — with the writer schema
    /// id for the wire format.
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
            Decoder::Protobuf(p) => p.decode(bytes).map(|(j, id)| (Cow::Owned(j), Some(id))),
            // Borrowed means "the record's own bytes": the text after the
            // wire header is a copy.
            Decoder::JsonSchema(j) => j
                .decode(bytes)
                .map(|(text, id)| (Cow::Owned(text.to_owned()), Some(id))),
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
