//! Property tests: the decoders and schema parsers take hostile input —
//! random bytes, and valid values cut, flipped and spliced — and answer an
//! error or a value, never a panic. Bounded (a few thousand cases each) so
//! they run in every test run; `PROPTEST_CASES` raises the count.

use std::sync::Arc;

use proptest::prelude::*;

use super::json_schema::JsonSchemaDecoder;
use super::protobuf::{ProtoReader, ProtobufDecoder, split_indexes};
use super::{DecodeError, Decoder};
use crate::schema::{SchemaSource, SchemaText, SchemaType, Unreachable};

const PROTO: &str = "syntax = \"proto3\";\npackage f;\nmessage A { string s = 1; int64 n = 2; repeated B bs = 3; map<string, int32> m = 4; oneof o { bytes raw = 5; double d = 6; } message C { sint32 z = 1; } }\nmessage B { fixed64 f = 1; E e = 2; A.C c = 3; optional bool b = 4; }\nenum E { X = 0; Y = 1; }\n";
const JSON: &str = r#"{"type":"object","properties":{"id":{"type":"string","maxLength":8},"n":{"type":"integer","minimum":0},"tags":{"type":"array","items":{"enum":["a","b"]}}},"required":["id"],"additionalProperties":false}"#;
const AVRO: &str = r#"{"type":"record","name":"R","fields":[{"name":"s","type":"string"},{"name":"u","type":["null","long"]},{"name":"a","type":{"type":"array","items":"double"}}]}"#;

struct Schemas;

impl SchemaSource for Schemas {
    fn schema_text(&self, id: u32) -> Result<Option<SchemaText>, Unreachable> {
        let (kind, schema) = match id {
            1 => (SchemaType::Protobuf, PROTO),
            2 => (SchemaType::Json, JSON),
            3 => (SchemaType::Avro, AVRO),
            _ => return Ok(None),
        };
        Ok(Some(SchemaText {
            kind,
            schema: schema.into(),
            references: vec![],
        }))
    }

    fn subject_version(&self, _: &str, _: u32) -> Result<Option<SchemaText>, Unreachable> {
        Ok(None)
    }
}

fn decoders() -> Vec<Decoder> {
    let source: Arc<dyn SchemaSource> = Arc::new(Schemas);
    vec![
        Decoder::Protobuf(Arc::new(ProtobufDecoder::new(
            source.clone(),
            ProtoReader {
                schema: None,
                message: None,
            },
        ))),
        Decoder::JsonSchema(Arc::new(JsonSchemaDecoder::new(source.clone(), None))),
        Decoder::Avro(Arc::new(super::avro::AvroDecoder::new(source, None))),
    ]
}

/// Valid values of each type, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let Ok(crate::schema::Parsed::Protobuf(p)) = crate::schema::load(&Schemas, 1) else {
        return Vec::new();
    };
    let Ok(crate::schema::Parsed::Avro(a)) = crate::schema::load(&Schemas, 3) else {
        return Vec::new();
    };
    let a_value = serde_json::json!({"s": "hello", "n": -7, "bs": [{"f": 9, "e": "Y", "c": {"z": -3}, "b": true}], "m": {"k": 4}, "d": 1.5});
    let b_value = serde_json::json!({"f": 1, "c": {"z": 70000}});
    [
        super::protobuf::encode(&p, 1, Some("f.A"), &a_value).ok(),
        super::protobuf::encode(&p, 1, Some("f.B"), &b_value).ok(),
        super::protobuf::encode(&p, 1, Some("f.A.C"), &serde_json::json!({"z": 5})).ok(),
        Some(b"\0\0\0\0\x02{\"id\":\"ab\",\"n\":3,\"tags\":[\"a\",\"b\"]}".to_vec()),
        super::avro::encode(
            &a,
            3,
            &serde_json::json!({"s": "x", "u": 12, "a": [1.0, 2.5]}),
        )
        .ok(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn decode_all(bytes: &[u8]) {
    for d in decoders() {
        match d.decode(bytes) {
            Ok((text, _)) => {
                assert!(
                    serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                    "{text}"
                );
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_wire_values_never_panic(id in 0u32..5, tail in proptest::collection::vec(any::<u8>(), 0..96)) {
        let mut bytes = super::wire_header(id);
        bytes.extend_from_slice(&tail);
        decode_all(&bytes);
        let _ = split_indexes(&tail);
    }

    #[test]
    fn mutated_valid_values_never_panic(
        seed in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let seeds = seeds();
        prop_assert_eq!(seeds.len(), 5, "every seed encodes");
        let mut bytes = seed.get(&seeds).clone();
        for (at, byte, op) in edits {
            if bytes.len() <= 5 {
                break;
            }
            let i = 5 + at.index(bytes.len() - 5);
            match op {
                0 => { if let Some(b) = bytes.get_mut(i) { *b = byte; } }
                1 => { if let Some(b) = bytes.get_mut(i) { *b ^= 1 << (byte % 8); } }
                2 => bytes.insert(i, byte),
                _ => bytes.truncate(i),
            }
        }
        decode_all(&bytes);
    }

    #[test]
    fn schema_texts_never_panic_the_parsers(text in "\\PC{0,200}") {
        let _ = crate::schema::protobuf::Proto::parse(&text, &[]);
        let _ = crate::schema::json_schema::JsonSchema::parse(&text, &[]);
        let proto = format!("syntax = \"proto3\"; message M {{ {text} }}");
        let _ = crate::schema::protobuf::Proto::parse(&proto, &[]);
    }
}

#[test]
fn the_seeds_decode() {
    let seeds = seeds();
    assert_eq!(seeds.len(), 5);
    let d = decoders();
    for (seed, decoder) in seeds.iter().zip([0usize, 0, 0, 1, 2]) {
        let r: Result<_, DecodeError> = d
            .get(decoder)
            .map_or(Err(DecodeError::Empty), |d| d.decode(seed));
        assert!(r.is_ok(), "{r:?}");
    }
}
