//! Protobuf in Confluent's wire format: magic byte 0, the writer schema's
//! id, the message-index list (zigzag varints: a count, then the path of the
//! message in its file; a single 0 byte for the first message), then the
//! message. Decoding reads the message with the pipeline's reader schema
//! when it has one (fields match by number, so a newer or older schema
//! reads it) and hands plugins JSON with the `.proto` field names; encoding
//! (for the producer endpoint) builds the message from JSON, naming a field
//! that does not fit.

use std::sync::Arc;

use prost_reflect::prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value as Json;

use super::{DecodeError, Writers, split_wire};
use crate::schema::protobuf::Proto;
use crate::schema::{Parsed, SchemaSource, SchemaType};

/// The most message indexes a value may carry (the nesting depth).
const MAX_INDEXES: i64 = 64;

/// How plugins see a message: `.proto` field names, every field (defaults
/// included), 64-bit integers as numbers, enums by name.
const JSON_OUT: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .skip_default_fields(false)
    .stringify_64_bit_integers(false);

/// A pipeline's reader: a schema, and the message type it pins.
pub struct ProtoReader {
    /// The reader schema, if any.
    pub schema: Option<Arc<Proto>>,
    /// The pinned message type (`pkg.Message`), if any.
    pub message: Option<String>,
}

/// Decodes wire-format Protobuf values.
pub struct ProtobufDecoder {
    writers: Writers,
    reader: ProtoReader,
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let (b, rest) = bytes.split_first()?;
        *bytes = rest;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

fn zigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// Reads the message-index list; returns it and the message bytes.
///
/// # Errors
/// A truncated list, a negative or absurd count or index.
pub fn split_indexes(mut bytes: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    let count = varint(&mut bytes)
        .map(zigzag)
        .ok_or("the message-index list is truncated")?;
    if count == 0 {
        return Ok((vec![0], bytes));
    }
    if !(1..=MAX_INDEXES).contains(&count) {
        return Err(format!(
            "the message-index list claims {count} indexes (1 to {MAX_INDEXES} allowed)"
        ));
    }
    let mut out = Vec::new();
    for _ in 0..count {
        let i = varint(&mut bytes)
            .map(zigzag)
            .ok_or("the message-index list is truncated")?;
        out.push(usize::try_from(i).map_err(|_| format!("message index {i} is negative"))?);
    }
    Ok((out, bytes))
}

/// Writes a message-index list (`[0]` as the single byte 0).
pub fn index_bytes(indexes: &[usize]) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, n: i64) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut out = Vec::new();
    if indexes == [0] {
        out.push(0);
        return out;
    }
    put(&mut out, i64::try_from(indexes.len()).unwrap_or(0));
    for i in indexes {
        put(&mut out, i64::try_from(*i).unwrap_or(0));
    }
    out
}

impl ProtobufDecoder {
    /// A decoder taking writer schemas from `source`.
    pub fn new(source: Arc<dyn SchemaSource>, reader: ProtoReader) -> Self {
        ProtobufDecoder {
            writers: Writers::new(source),
            reader,
        }
    }

    /// The message type to read a writer's message as.
    fn read_as(
        &self,
        id: u32,
        written: &MessageDescriptor,
    ) -> Result<MessageDescriptor, DecodeError> {
        if let Some(want) = &self.reader.message
            && written.full_name() != want
        {
            return Err(DecodeError::MessageType {
                id,
                got: written.full_name().to_owned(),
                want: want.clone(),
            });
        }
        match &self.reader.schema {
            None => Ok(written.clone()),
            Some(r) => r
                .message_named(written.full_name())
                .map(|(m, _)| m)
                .ok_or_else(|| DecodeError::MessageType {
                    id,
                    got: written.full_name().to_owned(),
                    want: "a message of the reader schema".into(),
                }),
        }
    }

    /// Decodes one value to JSON text; returns it with the writer schema id.
    ///
    /// # Errors
    /// Not the wire format, an unknown id or one of another type, a bad
    /// message-index list, bytes that do not parse as the message, or an
    /// unreachable registry (retryable).
    pub fn decode(&self, bytes: &[u8]) -> Result<(String, u32), DecodeError> {
        let (id, rest) = split_wire(bytes)?;
        let Parsed::Protobuf(writer) = self.writers.get(id, SchemaType::Protobuf)? else {
            return Err(DecodeError::BadWriterSchema {
                id,
                error: "not a Protobuf schema".into(),
            });
        };
        let (indexes, payload) =
            split_indexes(rest).map_err(|error| DecodeError::MessageIndex { id, error })?;
        let written = writer
            .message_at(&indexes)
            .ok_or_else(|| DecodeError::MessageIndex {
                id,
                error: format!("message index {indexes:?} names no message of the schema"),
            })?;
        let desc = self.read_as(id, &written)?;
        let corrupt = |error: String| DecodeError::Protobuf {
            id,
            message: desc.full_name().to_owned(),
            error,
        };
        let message =
            DynamicMessage::decode(desc.clone(), payload).map_err(|e| corrupt(e.to_string()))?;
        let mut out = Vec::with_capacity(payload.len() * 2 + 16);
        let mut ser = serde_json::Serializer::new(&mut out);
        message
            .serialize_with_options(&mut ser, &JSON_OUT)
            .map_err(|e| corrupt(e.to_string()))?;
        String::from_utf8(out)
            .map(|json| (json, id))
            .map_err(|e| corrupt(e.to_string()))
    }
}

/// Encodes a JSON value as message `message` (the file's first when
/// `None`) of `schema` into the wire format under `id`.
///
/// # Errors
/// The message type is not in the schema, or a field does not fit: the
/// error names it (`field $.a: ...`).
pub fn encode(
    schema: &Proto,
    id: u32,
    message: Option<&str>,
    value: &Json,
) -> Result<Vec<u8>, String> {
    let (desc, indexes) = match message {
        Some(name) => schema
            .message_named(name)
            .ok_or_else(|| format!("the schema has no message {name:?}"))?,
        None => (
            schema
                .first_message()
                .ok_or("the schema defines no message")?,
            vec![0],
        ),
    };
    let message = from_json(&desc, value, "$")?;
    let mut out = super::wire_header(id);
    out.extend_from_slice(&index_bytes(&indexes));
    out.extend_from_slice(&message.encode_to_vec());
    Ok(out)
}

/// Builds a message from JSON (proto3's JSON mapping, `.proto` or JSON
/// field names), naming the first field that does not fit.
fn from_json(desc: &MessageDescriptor, value: &Json, path: &str) -> Result<DynamicMessage, String> {
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    match DynamicMessage::deserialize_with_options(desc.clone(), value, &options) {
        Ok(m) => Ok(m),
        Err(whole) => {
            let Json::Object(o) = value else {
                return Err(format!(
                    "field {path}: expected message {}, got {}",
                    desc.full_name(),
                    kind(value)
                ));
            };
            for (k, v) in o {
                let at = format!("{path}.{k}");
                let field = desc
                    .get_field_by_name(k)
                    .or_else(|| desc.get_field_by_json_name(k))
                    .ok_or_else(|| {
                        format!("field {at}: no such field in message {}", desc.full_name())
                    })?;
                if let prost_reflect::Kind::Message(inner) = field.kind()
                    && !field.is_list()
                    && !field.is_map()
                    && v.is_object()
                {
                    from_json(&inner, v, &at)?;
                    continue;
                }
                let single = Json::Object([(k.clone(), v.clone())].into_iter().collect());
                if let Err(e) =
                    DynamicMessage::deserialize_with_options(desc.clone(), &single, &options)
                {
                    return Err(format!("field {at}: {e}"));
                }
            }
            Err(format!("field {path}: {whole}"))
        }
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{SchemaText, Unreachable};

    const V1: &str = "syntax = \"proto3\";\npackage ev;\nmessage Other { string x = 1; }\nmessage Exec { string id = 1; int64 time = 2; State state = 3; message Inner { int32 n = 1; } Inner inner = 4; }\nenum State { STARTED = 0; DONE = 1; }\n";
    const V2: &str = "syntax = \"proto3\";\npackage ev;\nmessage Other { string x = 1; }\nmessage Exec { string id = 1; int64 time = 2; State state = 3; message Inner { int32 n = 1; } Inner inner = 4; string worker = 5; }\nenum State { STARTED = 0; DONE = 1; }\n";

    struct One;
    impl SchemaSource for One {
        fn schema_text(&self, id: u32) -> Result<Option<SchemaText>, Unreachable> {
            Ok((id == 3).then(|| SchemaText {
                kind: SchemaType::Protobuf,
                schema: V1.into(),
                references: vec![],
            }))
        }
        fn subject_version(&self, _: &str, _: u32) -> Result<Option<SchemaText>, Unreachable> {
            Ok(None)
        }
    }

    #[test]
    fn indexes_round_trip_in_confluents_encoding() -> Result<(), String> {
        assert_eq!(index_bytes(&[0]), vec![0]);
        // Count 2 and the path 1, 0 as zigzag varints.
        assert_eq!(index_bytes(&[1, 0]), vec![4, 2, 0]);
        for path in [vec![0], vec![1], vec![1, 0], vec![70, 3, 200]] {
            let mut bytes = index_bytes(&path);
            bytes.push(0xaa);
            let (back, rest) = split_indexes(&bytes)?;
            assert_eq!(back, path);
            assert_eq!(rest, [0xaa]);
        }
        assert!(split_indexes(&[]).is_err());
        assert!(split_indexes(&[1]).is_err(), "a negative count");
        assert!(split_indexes(&[4, 2]).is_err(), "truncated");
        assert!(split_indexes(&[0xff; 12]).is_err());
        Ok(())
    }

    #[test]
    fn decodes_with_a_newer_reader_and_pins_the_type() -> Result<(), String> {
        let v1 = Proto::parse(V1, &[])?;
        let bytes = encode(
            &v1,
            3,
            Some("ev.Exec"),
            &serde_json::json!({"id": "a", "time": 5, "state": "DONE", "inner": {"n": 2}}),
        )?;
        assert_eq!(bytes.get(5), Some(&2), "count 1, zigzag");
        let reader = ProtoReader {
            schema: Some(Arc::new(Proto::parse(V2, &[])?)),
            message: Some("ev.Exec".into()),
        };
        let d = ProtobufDecoder::new(Arc::new(One), reader);
        let (json, id) = d.decode(&bytes).map_err(|e| e.to_string())?;
        assert_eq!(id, 3);
        let v: Json = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        assert_eq!(
            v,
            serde_json::json!({"id": "a", "time": 5, "state": "DONE", "inner": {"n": 2}, "worker": ""})
        );
        let other = encode(&v1, 3, None, &serde_json::json!({"x": "y"}))?;
        let e = d.decode(&other).err().ok_or("read an Other as Exec")?;
        assert_eq!(e.class(), "message_type", "{e}");
        let mut bad = other.clone();
        if let Some(b) = bad.get_mut(5) {
            *b = 8; // a count of 4 with no indexes after it
        }
        let e = d.decode(&bad).err().ok_or("read a truncated index list")?;
        assert_eq!(e.class(), "message_index", "{e}");
        let e = d
            .decode(&[0, 0, 0, 0, 3, 2, 10, 0xff])
            .err()
            .ok_or("index 5")?;
        assert_eq!(e.class(), "message_index", "{e}");
        let e = encode(
            &v1,
            3,
            Some("ev.Exec"),
            &serde_json::json!({"id": "a", "time": "soon"}),
        )
        .err()
        .ok_or("accepted a string for an int64")?;
        assert!(e.starts_with("field $.time:"), "{e}");
        let e = encode(
            &v1,
            3,
            Some("ev.Exec"),
            &serde_json::json!({"inner": {"n": "x"}}),
        )
        .err()
        .ok_or("accepted a string for an int32")?;
        assert!(e.starts_with("field $.inner.n:"), "{e}");
        let e = encode(&v1, 3, Some("ev.Exec"), &serde_json::json!({"nope": 1}))
            .err()
            .ok_or("accepted an unknown field")?;
        assert!(e.starts_with("field $.nope: no such field"), "{e}");
        Ok(())
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() -> Result<(), String> {
        let d = ProtobufDecoder::new(
            Arc::new(One),
            ProtoReader {
                schema: None,
                message: None,
            },
        );
        let good = encode(
            &Proto::parse(V1, &[])?,
            3,
            Some("ev.Exec"),
            &serde_json::json!({"id": "abc", "time": 300, "inner": {"n": 7}}),
        )?;
        for cut in 0..good.len() {
            let _ = d.decode(good.get(..cut).ok_or("cut")?);
        }
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5_000 {
            let len = (state % 48) as usize;
            let mut bytes = vec![0u8, 0, 0, 0, 3];
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push((state & 0xff) as u8);
            }
            let _ = d.decode(&bytes);
        }
        Ok(())
    }
}
