//! The registry's three schema types — Avro, Protobuf and JSON Schema — as
//! registered (a type, a text and references to other subjects' versions)
//! and parsed, with each type's canonical form (what makes two registrations
//! the same schema) and its reader/writer rule (what the compatibility
//! modes in [`super::compat`] apply).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{json_schema::JsonSchema, protobuf::Proto};

/// A schema's type, as Confluent's `schemaType` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaType {
    /// Avro (the default when a request names no type).
    #[default]
    Avro,
    /// Protocol Buffers: `.proto` text, or a base64 `FileDescriptorProto`.
    Protobuf,
    /// JSON Schema.
    Json,
}

impl SchemaType {
    /// Parses `AVRO`, `PROTOBUF` or `JSON`.
    pub fn parse(s: &str) -> Option<SchemaType> {
        match s.to_ascii_uppercase().as_str() {
            "AVRO" => Some(SchemaType::Avro),
            "PROTOBUF" => Some(SchemaType::Protobuf),
            "JSON" => Some(SchemaType::Json),
            _ => None,
        }
    }

    /// The type's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Protobuf => "PROTOBUF",
            SchemaType::Json => "JSON",
        }
    }

    /// Every type, as `GET /schemas/types` lists them.
    pub const ALL: [SchemaType; 3] = [SchemaType::Avro, SchemaType::Protobuf, SchemaType::Json];
}

impl std::fmt::Display for SchemaType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A schema's reference to another subject's version: `name` is how the
/// schema imports it (a `.proto` import path, a JSON Schema `$ref`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reference {
    /// The import name.
    pub name: String,
    /// The subject holding it.
    pub subject: String,
    /// Its version there.
    pub version: u32,
}

/// A schema as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaText {
    /// Its type.
    #[serde(rename = "schemaType", default)]
    pub kind: SchemaType,
    /// Its text (Avro: the parsed schema written back as JSON; JSON Schema:
    /// the document, compact; Protobuf: as registered).
    pub schema: String,
    /// The schemas it imports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
}

impl SchemaText {
    /// An Avro schema without references.
    pub fn avro(schema: impl Into<String>) -> Self {
        SchemaText {
            kind: SchemaType::Avro,
            schema: schema.into(),
            references: Vec::new(),
        }
    }
}

/// A referenced schema, resolved: its import name and its registration.
pub type Resolved = (String, SchemaText);

/// A parsed schema of any type.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// Avro.
    Avro(Arc<apache_avro::Schema>),
    /// Protobuf: the file and the pool it was compiled into.
    Protobuf(Arc<Proto>),
    /// JSON Schema, compiled.
    Json(Arc<JsonSchema>),
}

impl Parsed {
    /// Parses `text` with the schemas it references (transitively, each
    /// once, by import name).
    ///
    /// # Errors
    /// Why the schema is invalid, naming the place when the parser does.
    pub fn parse(text: &SchemaText, references: &[Resolved]) -> Result<Parsed, String> {
        match text.kind {
            SchemaType::Avro => {
                if !text.references.is_empty() {
                    return Err(
                        "Avro schemas with references are not supported: inline the named types"
                            .into(),
                    );
                }
                apache_avro::Schema::parse_str(&text.schema)
                    .map(|s| Parsed::Avro(Arc::new(s)))
                    .map_err(|e| e.to_string())
            }
            SchemaType::Protobuf => {
                Proto::parse(&text.schema, references).map(|p| Parsed::Protobuf(Arc::new(p)))
            }
            SchemaType::Json => {
                JsonSchema::parse(&text.schema, references).map(|j| Parsed::Json(Arc::new(j)))
            }
        }
    }

    /// The schema's type.
    pub fn kind(&self) -> SchemaType {
        match self {
            Parsed::Avro(_) => SchemaType::Avro,
            Parsed::Protobuf(_) => SchemaType::Protobuf,
            Parsed::Json(_) => SchemaType::Json,
        }
    }

    /// The canonical form: equal for two registrations of the same schema
    /// (Avro: the parsed schema as JSON; Protobuf: the compiled file
    /// descriptor, whatever the text's layout or comments; JSON Schema: the
    /// document with sorted keys).
    pub fn canonical(&self) -> String {
        match self {
            Parsed::Avro(s) => serde_json::to_string(s.as_ref()).unwrap_or_default(),
            Parsed::Protobuf(p) => p.serialized(),
            Parsed::Json(j) => j.canonical(),
        }
    }

    /// Whether data written with `writer` can always be read with `reader`;
    /// the reasons when not.
    ///
    /// # Errors
    /// One message per reason.
    pub fn can_read(writer: &Parsed, reader: &Parsed) -> Result<(), Vec<String>> {
        match (writer, reader) {
            (Parsed::Avro(w), Parsed::Avro(r)) => {
                super::compat::can_read(w, r).map_err(|e| vec![e])
            }
            (Parsed::Protobuf(w), Parsed::Protobuf(r)) => r.can_read(w),
            (Parsed::Json(w), Parsed::Json(r)) => r.can_read(w),
            (w, r) => Err(vec![format!(
                "the schema type changed from {} to {}",
                w.kind(),
                r.kind()
            )]),
        }
    }
}
