//! JSON Schema in Confluent's wire format: magic byte 0, the writer schema's
//! id, then the JSON text. Decoding checks the text is JSON and valid under
//! the writer schema (and the pipeline's reader schema, when it has one),
//! and hands plugins the text unchanged.

use std::sync::Arc;

use serde_json::Value as Json;

use super::{DecodeError, Writers, split_wire};
use crate::schema::json_schema::JsonSchema;
use crate::schema::{Parsed, SchemaSource, SchemaType};

/// Decodes wire-format JSON Schema values.
pub struct JsonSchemaDecoder {
    writers: Writers,
    reader: Option<Arc<JsonSchema>>,
}

impl JsonSchemaDecoder {
    /// A decoder taking writer schemas from `source`; values must also pass
    /// `reader` when given.
    pub fn new(source: Arc<dyn SchemaSource>, reader: Option<Arc<JsonSchema>>) -> Self {
        JsonSchemaDecoder {
            writers: Writers::new(source),
            reader,
        }
    }

    /// Checks one value; returns its JSON text with the writer schema id.
    ///
    /// # Errors
    /// Not the wire format, an unknown id or one of another type, text that
    /// is not JSON, a value the schema refuses (naming the field), or an
    /// unreachable registry (retryable).
    pub fn decode<'b>(&self, bytes: &'b [u8]) -> Result<(&'b str, u32), DecodeError> {
        let (id, payload) = split_wire(bytes)?;
        let Parsed::Json(writer) = self.writers.get(id, SchemaType::Json)? else {
            return Err(DecodeError::BadWriterSchema {
                id,
                error: "not a JSON Schema".into(),
            });
        };
        if payload.is_empty() {
            return Err(DecodeError::Empty);
        }
        // One parse: the value is needed whole for validation anyway.
        let text = std::str::from_utf8(payload).map_err(|e| DecodeError::NotUtf8 {
            at: e.valid_up_to(),
        })?;
        let value: Json =
            serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        writer
            .validate(&value)
            .map_err(|error| DecodeError::Invalid { id, error })?;
        if let Some(r) = &self.reader {
            r.validate(&value).map_err(|error| DecodeError::Invalid {
                id,
                error: format!("the pipeline's reader schema refuses it: {error}"),
            })?;
        }
        Ok((text, id))
    }
}

/// Encodes a JSON value valid under `schema` into the wire format under `id`.
///
/// # Errors
/// The field the schema refuses, and why.
pub fn encode(schema: &JsonSchema, id: u32, value: &Json) -> Result<Vec<u8>, String> {
    schema.validate(value)?;
    let mut out = super::wire_header(id);
    out.extend_from_slice(value.to_string().as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{SchemaText, Unreachable};

    struct One;
    impl SchemaSource for One {
        fn schema_text(&self, id: u32) -> Result<Option<SchemaText>, Unreachable> {
            Ok((id == 4).then(|| SchemaText {
                kind: SchemaType::Json,
                schema: r#"{"type":"object","properties":{"id":{"type":"string"},"n":{"type":"integer"}},"required":["id"]}"#.into(),
                references: vec![],
            }))
        }
        fn subject_version(&self, _: &str, _: u32) -> Result<Option<SchemaText>, Unreachable> {
            Ok(None)
        }
    }

    #[test]
    fn validates_with_the_writer_and_names_the_field() -> Result<(), String> {
        let d = JsonSchemaDecoder::new(Arc::new(One), None);
        let (text, id) = d
            .decode(b"\0\0\0\0\x04{\"id\":\"a\",\"n\":2}")
            .map_err(|e| e.to_string())?;
        assert_eq!((text, id), ("{\"id\":\"a\",\"n\":2}", 4));
        let e = d
            .decode(b"\0\0\0\0\x04{\"id\":\"a\",\"n\":\"2\"}")
            .err()
            .ok_or("accepted n: \"2\"")?;
        assert_eq!(e.class(), "validation");
        assert!(e.to_string().contains("field $.n"), "{e}");
        let e = d
            .decode(b"\0\0\0\0\x04{\"id\":")
            .err()
            .ok_or("accepted broken JSON")?;
        assert_eq!(e.class(), "decode");
        let e = d.decode(b"\0\0\0\0\x05{}").err().ok_or("unknown id")?;
        assert!(matches!(e, DecodeError::UnknownSchema { id: 5 }), "{e}");
        let e = d
            .decode(b"{\"id\":\"a\"}")
            .err()
            .ok_or("not the wire format")?;
        assert!(matches!(e, DecodeError::BadMagic { .. }), "{e}");
        Ok(())
    }
}
