//! Avro in Confluent's wire format: magic byte 0, the writer schema's id as
//! a 4-byte big-endian number, then the Avro binary datum. Decoding fetches
//! the writer schema by id, resolves it against the pipeline's reader
//! schema and hands plugins JSON. Encoding (for the producer endpoint)
//! checks a JSON value against a schema, naming the field path and the
//! expected type when it does not fit.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::types::Value as Avro;
use serde_json::Value as Json;

pub use super::split_wire;
use super::{DecodeError, Writers};
use crate::schema::{Parsed, SchemaSource, SchemaType};

/// Decodes wire-format values with a pipeline's reader schema.
pub struct AvroDecoder {
    writers: Writers,
    reader: Option<Schema>,
}

impl AvroDecoder {
    /// A decoder taking writer schemas from `source`, resolving them to
    /// `reader` (the writer schema itself when `None`).
    pub fn new(source: Arc<dyn SchemaSource>, reader: Option<Schema>) -> Self {
        AvroDecoder {
            writers: Writers::new(source),
            reader,
        }
    }

    fn writer(&self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        match self.writers.get(id, SchemaType::Avro)? {
            Parsed::Avro(s) => Ok(s),
            other => Err(DecodeError::WrongType {
                id,
                kind: other.kind(),
                expected: SchemaType::Avro,
            }),
        }
    }

    /// Decodes one value to JSON text; returns it with the writer schema id.
    ///
    /// # Errors
    /// A value not in the wire format, an unknown id, a datum that does not
    /// decode (truncated or corrupt), or an unreachable registry (retryable).
    pub fn decode(&self, bytes: &[u8]) -> Result<(String, u32), DecodeError> {
        let (id, mut payload) = split_wire(bytes)?;
        let writer = self.writer(id)?;
        let corrupt = |error: String| DecodeError::Avro { id, error };
        // The datum reader is not trusted with hostile bytes: a panic in it
        // becomes this event's dead letter, never the pipeline's end.
        let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            GenericDatumReader::builder(&writer)
                .maybe_reader_schema(self.reader.as_ref())
                .build()
                .and_then(|r| r.read_value(&mut payload))
        }))
        .map_err(|_| corrupt("the datum reader failed on this value".into()))?
        .map_err(|e| corrupt(e.to_string()))?;
        if !payload.is_empty() {
            return Err(corrupt(format!(
                "{} bytes left over after the record",
                payload.len()
            )));
        }
        let json = Json::try_from(value).map_err(|e| corrupt(e.to_string()))?;
        Ok((json.to_string(), id))
    }
}

/// A JSON value that does not fit a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {path}: expected {expected}, got {got}")]
pub struct EncodeError {
    /// Field path, `$` for the whole value (`$.a.b[2]`).
    pub path: String,
    /// The type the schema wants there.
    pub expected: String,
    /// What the value holds.
    pub got: String,
}

fn kind(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(_) => "a boolean".into(),
        Json::Number(n) => format!("the number {n}"),
        Json::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        Json::String(_) => "a string".into(),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}

fn describe(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("one of {:?}", e.symbols),
        Schema::Fixed(f) => format!("fixed {} of {} bytes", f.name.fullname(None), f.size),
        Schema::Union(u) => format!(
            "one of [{}]",
            u.variants()
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Schema::Array(a) => format!("array of {}", describe(&a.items)),
        Schema::Map(m) => format!("map of {}", describe(&m.types)),
        Schema::Ref { name } => name.fullname(None),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

struct Encoder<'a> {
    names: &'a HashMap<Name, &'a Schema>,
}

impl Encoder<'_> {
    fn value(&self, schema: &Schema, v: &Json, path: &str) -> Result<Avro, EncodeError> {
        let bad = || EncodeError {
            path: path.to_owned(),
            expected: describe(schema),
            got: kind(v),
        };
        Ok(match schema {
            Schema::Null => v.is_null().then_some(Avro::Null).ok_or_else(bad)?,
            Schema::Boolean => Avro::Boolean(v.as_bool().ok_or_else(bad)?),
            Schema::Int => Avro::Int(
                v.as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(bad)?,
            ),
            Schema::Long => Avro::Long(v.as_i64().ok_or_else(bad)?),
            Schema::Float => Avro::Float(v.as_f64().ok_or_else(bad)? as f32),
            Schema::Double => Avro::Double(v.as_f64().ok_or_else(bad)?),
            Schema::String => Avro::String(v.as_str().ok_or_else(bad)?.to_owned()),
            Schema::Bytes => Avro::Bytes(v.as_str().ok_or_else(bad)?.as_bytes().to_vec()),
            Schema::Date => Avro::Date(
                v.as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(bad)?,
            ),
            Schema::TimeMillis => Avro::TimeMillis(
                v.as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(bad)?,
            ),
            Schema::TimeMicros => Avro::TimeMicros(v.as_i64().ok_or_else(bad)?),
            Schema::TimestampMillis => Avro::TimestampMillis(v.as_i64().ok_or_else(bad)?),
            Schema::TimestampMicros => Avro::TimestampMicros(v.as_i64().ok_or_else(bad)?),
            Schema::TimestampNanos => Avro::TimestampNanos(v.as_i64().ok_or_else(bad)?),
            Schema::LocalTimestampMillis => Avro::LocalTimestampMillis(v.as_i64().ok_or_else(bad)?),
            Schema::LocalTimestampMicros => Avro::LocalTimestampMicros(v.as_i64().ok_or_else(bad)?),
            Schema::LocalTimestampNanos => Avro::LocalTimestampNanos(v.as_i64().ok_or_else(bad)?),
            Schema::Uuid(_) => Avro::Uuid(
                v.as_str()
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
                    .ok_or_else(bad)?,
            ),
            Schema::Enum(e) => {
                let s = v.as_str().ok_or_else(bad)?;
                let i = e.symbols.iter().position(|x| x == s).ok_or_else(bad)?;
                Avro::Enum(u32::try_from(i).unwrap_or(u32::MAX), s.to_owned())
            }
            Schema::Fixed(f) => {
                let b = v.as_str().ok_or_else(bad)?.as_bytes();
                if b.len() != f.size {
                    return Err(bad());
                }
                Avro::Fixed(f.size, b.to_vec())
            }
            Schema::Array(a) => Avro::Array(
                v.as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.value(&a.items, item, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Map(m) => Avro::Map(
                v.as_object()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|(k, item)| {
                        Ok((
                            k.clone(),
                            self.value(&m.types, item, &format!("{path}.{k}"))?,
                        ))
                    })
                    .collect::<Result<_, EncodeError>>()?,
            ),
            Schema::Union(u) => {
                let mut first_error = None;
                for (i, variant) in u.variants().iter().enumerate() {
                    match self.value(variant, v, path) {
                        Ok(x) => {
                            return Ok(Avro::Union(
                                u32::try_from(i).unwrap_or(u32::MAX),
                                Box::new(x),
                            ));
                        }
                        Err(e) if e.path != path => first_error = first_error.or(Some(e)),
                        Err(_) => {}
                    }
                }
                // A record branch that failed deeper down names the field.
                return Err(first_error.unwrap_or_else(bad));
            }
            Schema::Record(r) => {
                let o = v.as_object().ok_or_else(bad)?;
                if let Some(unknown) = o.keys().find(|k| !r.lookup.contains_key(*k)) {
                    return Err(EncodeError {
                        path: format!("{path}.{unknown}"),
                        expected: format!("no such field in record {}", r.name.fullname(None)),
                        got: kind(o.get(unknown).unwrap_or(&Json::Null)),
                    });
                }
                let mut fields = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let at = format!("{path}.{}", f.name);
                    let value = match (o.get(&f.name), &f.default) {
                        (Some(x), _) => x,
                        (None, Some(d)) => d,
                        (None, None) => {
                            return Err(EncodeError {
                                path: at,
                                expected: describe(&f.schema),
                                got: "nothing (the field is required)".into(),
                            });
                        }
                    };
                    fields.push((f.name.clone(), self.value(&f.schema, value, &at)?));
                }
                Avro::Record(fields)
            }
            Schema::Ref { name } => {
                let target = self.names.get(name).ok_or_else(bad)?;
                return self.value(target, v, path);
            }
            _ => return Err(bad()),
        })
    }
}

/// Encodes a JSON value with `schema` into the wire format under `id`.
///
/// # Errors
/// [`EncodeError`] naming the first field that does not fit.
pub fn encode(schema: &Schema, id: u32, value: &Json) -> Result<Vec<u8>, EncodeError> {
    let internal = |e: String| EncodeError {
        path: "$".into(),
        expected: describe(schema),
        got: e,
    };
    let resolved = ResolvedSchema::new(schema).map_err(|e| internal(e.to_string()))?;
    let avro = Encoder {
        names: resolved.get_names(),
    }
    .value(schema, value, "$")?;
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(avro))
        .map_err(|e| internal(e.to_string()))?;
    let mut out = super::wire_header(id);
    out.extend_from_slice(&datum);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SchemaSource;

    struct One(String);
    impl SchemaSource for One {
        fn schema_text(
            &self,
            id: u32,
        ) -> Result<Option<crate::schema::SchemaText>, crate::schema::Unreachable> {
            Ok((id == 7).then(|| crate::schema::SchemaText::avro(self.0.clone())))
        }
        fn subject_version(
            &self,
            _: &str,
            _: u32,
        ) -> Result<Option<crate::schema::SchemaText>, crate::schema::Unreachable> {
            Ok(None)
        }
    }

    const V1: &str = r#"{"type":"record","name":"E","fields":[
        {"name":"id","type":"string"},{"name":"n","type":"long"},
        {"name":"state","type":{"type":"enum","name":"S","symbols":["A","B"]}}]}"#;
    const V2: &str = r#"{"type":"record","name":"E","fields":[
        {"name":"id","type":"string"},{"name":"n","type":"long"},
        {"name":"state","type":{"type":"enum","name":"S","symbols":["A","B"]}},
        {"name":"note","type":["null","string"],"default":null}]}"#;

    #[test]
    fn round_trips_with_resolution_and_names_bad_fields() -> Result<(), Box<dyn std::error::Error>>
    {
        let v1 = Schema::parse_str(V1)?;
        let v2 = Schema::parse_str(V2)?;
        let bytes = encode(&v1, 7, &serde_json::json!({"id":"x","n":3,"state":"B"}))?;
        let d = AvroDecoder::new(Arc::new(One(V1.into())), Some(v2));
        let (json, id) = d.decode(&bytes)?;
        assert_eq!(id, 7);
        assert_eq!(
            serde_json::from_str::<Json>(&json)?,
            serde_json::json!({"id":"x","n":3,"state":"B","note":null})
        );
        let e = encode(&v1, 7, &serde_json::json!({"id":"x","n":"3","state":"B"}))
            .err()
            .ok_or("accepted a string for a long")?;
        assert_eq!(e.path, "$.n");
        assert!(e.expected.contains("long"), "{e}");
        let e = encode(&v1, 7, &serde_json::json!({"id":"x","n":3,"state":"C"}))
            .err()
            .ok_or("accepted an unknown symbol")?;
        assert_eq!(e.path, "$.state");
        let e = encode(&v1, 7, &serde_json::json!({"id":"x","state":"A"}))
            .err()
            .ok_or("accepted a missing field")?;
        assert_eq!(e.path, "$.n");
        Ok(())
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() -> Result<(), Box<dyn std::error::Error>> {
        let d = AvroDecoder::new(Arc::new(One(V1.into())), None);
        assert!(matches!(
            d.decode(&[]),
            Err(DecodeError::NotWireFormat { .. })
        ));
        assert!(matches!(
            d.decode(&[0, 0, 0]),
            Err(DecodeError::NotWireFormat { .. })
        ));
        assert!(matches!(
            d.decode(&[1, 0, 0, 0, 7]),
            Err(DecodeError::BadMagic { byte: 1 })
        ));
        assert!(matches!(
            d.decode(&[0, 0, 0, 0, 9, 2]),
            Err(DecodeError::UnknownSchema { id: 9 })
        ));
        let good = encode(
            &Schema::parse_str(V1)?,
            7,
            &serde_json::json!({"id":"xyz","n":300,"state":"A"}),
        )?;
        for cut in 5..good.len() {
            assert!(
                d.decode(good.get(..cut).ok_or("cut")?).is_err(),
                "truncated at {cut}"
            );
        }
        let mut rng_state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2_000 {
            let len = (rng_state % 64) as usize;
            let mut bytes = vec![0u8, 0, 0, 0, 7];
            for _ in 0..len {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                bytes.push((rng_state & 0xff) as u8);
            }
            let _ = d.decode(&bytes);
        }
        Ok(())
    }
}
