//! Schema compatibility: the seven modes of a Confluent-compatible registry,
//! applied with each schema type's reader/writer rule
//! ([`Parsed::can_read`]). For Avro that is the specification's resolution
//! rules (records, defaults, unions, enums with defaults, arrays, maps,
//! fixed, numeric promotions, aliases), as implemented by
//! `apache_avro::schema_compatibility`; Protobuf's and JSON Schema's are in
//! [`super::protobuf`] and [`super::json_schema`].
//!
//! A reader can read a writer only when resolution can never fail: a
//! "partial" match (an enum missing symbols without a default, a writer
//! union branch the reader lacks) is incompatible, as in Confluent's checker.

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

use super::types::Parsed;

/// A subject's compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    /// The new schema can read data written with the latest one.
    #[default]
    Backward,
    /// The new schema can read data written with every earlier one.
    BackwardTransitive,
    /// The latest schema can read data written with the new one.
    Forward,
    /// Every earlier schema can read data written with the new one.
    ForwardTransitive,
    /// Backward and forward with the latest.
    Full,
    /// Backward and forward with every earlier one.
    FullTransitive,
    /// No check.
    None,
}

impl Mode {
    /// Parses a level name as Confluent spells it.
    pub fn parse(s: &str) -> Option<Mode> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase())).ok()
    }

    /// The level's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Backward => "BACKWARD",
            Mode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Mode::Forward => "FORWARD",
            Mode::ForwardTransitive => "FORWARD_TRANSITIVE",
            Mode::Full => "FULL",
            Mode::FullTransitive => "FULL_TRANSITIVE",
            Mode::None => "NONE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Mode::BackwardTransitive | Mode::ForwardTransitive | Mode::FullTransitive
        )
    }
    fn backward(self) -> bool {
        matches!(
            self,
            Mode::Backward | Mode::BackwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }
    fn forward(self) -> bool {
        matches!(
            self,
            Mode::Forward | Mode::ForwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }
}

/// Whether data written with `writer` can always be read with `reader`;
/// the reason when not.
///
/// # Errors
/// Why resolution can fail.
pub fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err(
            "the reader lacks an enum symbol or union branch the writer may use (and has no default for it)"
                .into(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

/// Checks `new` against a subject's earlier schemas (`previous`, newest
/// first, with their version numbers) under `mode`. Returns one message per
/// violation; empty means compatible.
pub fn check(mode: Mode, new: &Parsed, previous: &[(u32, Parsed)]) -> Vec<String> {
    let against = if mode.transitive() {
        previous
    } else {
        previous.get(..1).unwrap_or_default()
    };
    let mut messages = Vec::new();
    for (version, old) in against {
        if mode.backward()
            && let Err(e) = Parsed::can_read(old, new)
        {
            messages.push(format!(
                "the new schema cannot read data written with version {version} ({}): {}",
                mode.as_str(),
                e.join("; ")
            ));
        }
        if mode.forward()
            && let Err(e) = Parsed::can_read(new, old)
        {
            messages.push(format!(
                "version {version} cannot read data written with the new schema ({}): {}",
                mode.as_str(),
                e.join("; ")
            ));
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(fields: &str) -> String {
        format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#)
    }
    fn enm(symbols: &str, default: Option<&str>) -> String {
        let d = default
            .map(|d| format!(r#","default":"{d}""#))
            .unwrap_or_default();
        format!(r#"{{"type":"enum","name":"E","symbols":[{symbols}]{d}}}"#)
    }

    /// One case: the mode, the earlier versions (oldest first), the new
    /// schema, and the verdict the Avro specification's resolution rules give.
    fn case(mode: Mode, history: &[&str], new: &str, compatible: bool) -> Result<(), String> {
        let parse = |s: &str| {
            Schema::parse_str(s)
                .map(|s| Parsed::Avro(std::sync::Arc::new(s)))
                .map_err(|e| format!("{s}: {e}"))
        };
        case_of(&parse, mode, history, new, compatible)
    }

    fn case_of(
        parse: &dyn Fn(&str) -> Result<Parsed, String>,
        mode: Mode,
        history: &[&str],
        new: &str,
        compatible: bool,
    ) -> Result<(), String> {
        let old: Vec<Parsed> = history.iter().map(|s| parse(s)).collect::<Result<_, _>>()?;
        let previous: Vec<(u32, Parsed)> = old
            .into_iter()
            .enumerate()
            .rev()
            .map(|(i, s)| (u32::try_from(i + 1).unwrap_or(0), s))
            .collect();
        let messages = check(mode, &parse(new)?, &previous);
        if messages.is_empty() == compatible {
            Ok(())
        } else {
            Err(format!(
                "{} {history:?} -> {new}: expected {}, got {messages:?}",
                mode.as_str(),
                if compatible {
                    "compatible"
                } else {
                    "incompatible"
                }
            ))
        }
    }

    #[test]
    fn compatibility_matrix_follows_the_avro_resolution_rules() {
        use Mode::*;
        let a = rec(r#"{"name":"a","type":"int"}"#);
        let a_long = rec(r#"{"name":"a","type":"long"}"#);
        let ab_def = rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#);
        let ab = rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#);
        let ab_opt = rec(
            r#"{"name":"a","type":"int"},{"name":"b","type":["null","string"],"default":null}"#,
        );
        let ac = rec(r#"{"name":"a","type":"int"},{"name":"c","type":"int"}"#);
        let ac_def = rec(r#"{"name":"a","type":"int"},{"name":"c","type":"int","default":0}"#);
        let abc_def = rec(
            r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"},{"name":"c","type":"int","default":0}"#,
        );
        let ad = rec(r#"{"name":"a","type":"int"},{"name":"d","type":"string"}"#);
        let alias = rec(r#"{"name":"z","type":"int","aliases":["a"]}"#);
        let renamed =
            r#"{"type":"record","name":"S","fields":[{"name":"a","type":"int"}]}"#.to_owned();
        let e_xy = enm(r#""X","Y""#, Option::None);
        let e_xyz = enm(r#""X","Y","Z""#, Option::None);
        let e_xy_d = enm(r#""X","Y""#, Some("X"));
        let e_xyz_d = enm(r#""X","Y","Z""#, Some("X"));
        let u_ni = r#"["null","int"]"#.to_owned();
        let u_nis = r#"["null","int","string"]"#.to_owned();
        let arr = |t: &str| format!(r#"{{"type":"array","items":"{t}"}}"#);
        let map = |t: &str| format!(r#"{{"type":"map","values":"{t}"}}"#);
        let fixed = |n: u32| format!(r#"{{"type":"fixed","name":"F","size":{n}}}"#);
        let p = |t: &str| format!(r#""{t}""#);

        let arr_int = arr("int");
        let arr_long = arr("long");
        let arr_string = arr("string");
        let fixed_4 = fixed(4);
        let fixed_8 = fixed(8);
        let map_double = map("double");
        let map_int = map("int");
        let map_long = map("long");
        let p_bytes = p("bytes");
        let p_double = p("double");
        let p_float = p("float");
        let p_int = p("int");
        let p_long = p("long");
        let p_string = p("string");
        let cases: Vec<(Mode, Vec<&str>, &str, bool)> = vec![
            // BACKWARD: the new schema reads the latest.
            (Backward, vec![&a], &ab_def, true),
            (Backward, vec![&a], &ab, false),
            (Backward, vec![&ab], &a, true),
            (Backward, vec![&a], &a_long, true),
            (Backward, vec![&a_long], &a, false),
            (Backward, vec![&e_xy], &e_xyz, true),
            (Backward, vec![&e_xyz], &e_xy, false),
            (Backward, vec![&e_xyz], &e_xy_d, true),
            (Backward, vec![&u_ni], &u_nis, true),
            (Backward, vec![&u_nis], &u_ni, false),
            (Backward, vec![&p_int], &u_ni, true),
            (Backward, vec![&u_ni], &p_int, false),
            (Backward, vec![&a], &ab_opt, true),
            (Backward, vec![&a], &alias, true),
            (Backward, vec![&a], &renamed, false),
            (Backward, vec![&p_string], &p_bytes, true),
            (Backward, vec![&p_bytes], &p_string, true),
            (Backward, vec![&p_int], &p_float, true),
            (Backward, vec![&p_float], &p_double, true),
            (Backward, vec![&p_double], &p_float, false),
            (Backward, vec![&p_long], &p_int, false),
            (Backward, vec![&arr_int], &arr_long, true),
            (Backward, vec![&arr_string], &arr_int, false),
            (Backward, vec![&map_int], &map_long, true),
            (Backward, vec![&map_double], &map_int, false),
            (Backward, vec![&fixed_4], &fixed_8, false),
            (Backward, vec![&fixed_4], &fixed_4, true),
            (Backward, vec![&a], &p_string, false),
            // FORWARD: the latest reads the new schema.
            (Forward, vec![&a], &ab, true),
            (Forward, vec![&ab], &a, false),
            (Forward, vec![&ab_def], &a, true),
            (Forward, vec![&a_long], &a, true),
            (Forward, vec![&a], &a_long, false),
            (Forward, vec![&e_xyz], &e_xy, true),
            (Forward, vec![&e_xy], &e_xyz, false),
            (Forward, vec![&e_xy_d], &e_xyz, true),
            // FULL: both ways with the latest.
            (Full, vec![&a], &ab_def, true),
            (Full, vec![&a], &ab, false),
            (Full, vec![&ab_def], &a, true),
            (Full, vec![&a], &a_long, false),
            (Full, vec![&e_xy], &e_xyz, false),
            (Full, vec![&e_xy_d], &e_xyz_d, true),
            // NONE: anything goes.
            (None, vec![&a], &p_string, true),
            (None, vec![&ab], &a_long, true),
            // Transitive modes: only an older version breaks.
            (Backward, vec![&a, &ab_def], &ab, true),
            (BackwardTransitive, vec![&a, &ab_def], &ab, false),
            (BackwardTransitive, vec![&a, &ab_def], &abc_def, true),
            (Forward, vec![&ab, &ab_def], &a, true),
            (ForwardTransitive, vec![&ab, &ab_def], &a, false),
            (ForwardTransitive, vec![&ab_def, &a], &ad, true),
            (Full, vec![&ac, &ac_def], &a, true),
            (FullTransitive, vec![&ac, &ac_def], &a, false),
            (FullTransitive, vec![&a, &ab_def], &abc_def, true),
            // A first version is always accepted.
            (FullTransitive, vec![], &a, true),
        ];
        assert!(cases.len() >= 40);
        let failures: Vec<String> = cases
            .into_iter()
            .filter_map(|(m, h, n, c)| case(m, &h, n, c).err())
            .collect();
        assert!(
            failures.is_empty(),
            "{} cases differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    fn run_matrix(
        parse: &dyn Fn(&str) -> Result<Parsed, String>,
        cases: Vec<(Mode, Vec<&str>, &str, bool)>,
    ) {
        let failures: Vec<String> = cases
            .into_iter()
            .filter_map(|(m, h, n, c)| case_of(parse, m, &h, n, c).err())
            .collect();
        assert!(
            failures.is_empty(),
            "{} cases differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    /// Confluent's documented Protobuf rules: fields match by number, types
    /// change only within a wire group, messages and `required` fields and
    /// `oneof` members may not go, the package may not change.
    #[test]
    fn protobuf_matrix_follows_confluents_rules() {
        use Mode::*;
        let parse = |s: &str| {
            super::super::protobuf::Proto::parse(s, &[])
                .map(|p| Parsed::Protobuf(std::sync::Arc::new(p)))
                .map_err(|e| format!("{s}: {e}"))
        };
        let m = |body: &str| format!("syntax = \"proto3\"; package p; message M {{ {body} }}");
        let m2 = |body: &str| format!("syntax = \"proto2\"; package p; message M {{ {body} }}");
        let base = m("string a = 1; int32 b = 2;");
        let added = m("string a = 1; int32 b = 2; string c = 3;");
        let removed = m("string a = 1;");
        let renamed = m("string a = 1; int32 bee = 2;");
        let b_int64 = m("string a = 1; int64 b = 2;");
        let b_bool = m("string a = 1; bool b = 2;");
        let b_sint = m("string a = 1; sint32 b = 2;");
        let b_string = m("string a = 1; string b = 2;");
        let a_bytes = m("bytes a = 1; int32 b = 2;");
        let b_fixed = m("string a = 1; fixed32 b = 2;");
        let b_repeated = m("string a = 1; repeated int32 b = 2;");
        let a_repeated = m("repeated string a = 1; int32 b = 2;");
        let other_package = base.replace("package p;", "package q;");
        let two_messages = format!("{base} message N {{ string x = 1; }}");
        let nested = m("string a = 1; N n = 2; message N { string x = 1; }");
        let nested_other =
            m("string a = 1; O n = 2; message N { string x = 1; } message O { string x = 1; }");
        let oneof = m("oneof o { string a = 1; int32 b = 2; }");
        let oneof_one = m("oneof o { string a = 1; } int32 b = 2;");
        let oneof_into = m("oneof o { string a = 1; int32 b = 2; } string c = 3;");
        let oneof_c = m("oneof o { string a = 1; string c = 3; } int32 b = 2;");
        let req = m2("required string a = 1; optional int32 b = 2;");
        let req_b = m2("required string a = 1; required int32 b = 2;");
        let opt = m2("optional string a = 1; optional int32 b = 2;");
        let enum_b = "syntax = \"proto3\"; package p; enum E { Z = 0; } message M { string a = 1; E b = 2; }".to_owned();
        let cases: Vec<(Mode, Vec<&str>, &str, bool)> = vec![
            (Backward, vec![&base], &added, true),
            (Backward, vec![&base], &removed, true),
            (Backward, vec![&base], &renamed, true),
            (Backward, vec![&base], &b_int64, true),
            (Backward, vec![&base], &b_bool, true),
            (Backward, vec![&base], &enum_b, true),
            (Backward, vec![&base], &b_sint, false),
            (Backward, vec![&base], &b_string, false),
            (Backward, vec![&base], &b_fixed, false),
            (Backward, vec![&base], &a_bytes, true),
            (Backward, vec![&base], &b_repeated, false),
            (Backward, vec![&base], &a_repeated, true),
            (Backward, vec![&base], &other_package, false),
            (Backward, vec![&two_messages], &base, false),
            (Backward, vec![&base], &two_messages, true),
            (Forward, vec![&base], &two_messages, false),
            (Backward, vec![&nested], &nested_other, false),
            (Backward, vec![&oneof], &oneof_one, false),
            (Backward, vec![&base], &oneof, false),
            (Backward, vec![&oneof_one], &oneof_into, false),
            (Backward, vec![&oneof_one], &oneof_c, true),
            (Backward, vec![&req], &opt, true),
            (Backward, vec![&opt], &req, false),
            (Backward, vec![&req], &req_b, false),
            (Forward, vec![&base], &added, true),
            (Forward, vec![&base], &removed, true),
            (Full, vec![&base], &added, true),
            (Full, vec![&base], &b_sint, false),
            (BackwardTransitive, vec![&b_string, &base], &b_int64, false),
            (Backward, vec![&b_string, &base], &b_int64, true),
            (None, vec![&base], &b_string, true),
        ];
        run_matrix(&parse, cases);
    }

    /// Confluent's documented JSON Schema rules: a reader accepts every
    /// value the writer accepts.
    #[test]
    fn json_schema_matrix_follows_confluents_rules() {
        use Mode::*;
        let parse = |s: &str| {
            super::super::json_schema::JsonSchema::parse(s, &[])
                .map(|j| Parsed::Json(std::sync::Arc::new(j)))
                .map_err(|e| format!("{s}: {e}"))
        };
        let obj = |props: &str, extra: &str| {
            format!(r#"{{"type":"object","properties":{{{props}}}{extra}}}"#)
        };
        let a = obj(r#""a":{"type":"string"}"#, "");
        let a_closed = obj(
            r#""a":{"type":"string"}"#,
            r#","additionalProperties":false"#,
        );
        let ab = obj(r#""a":{"type":"string"},"b":{"type":"integer"}"#, "");
        let ab_closed = obj(
            r#""a":{"type":"string"},"b":{"type":"integer"}"#,
            r#","additionalProperties":false"#,
        );
        let ab_partial = obj(
            r#""a":{"type":"string"}"#,
            r#","additionalProperties":{"type":"integer"}"#,
        );
        let ab_required = obj(
            r#""a":{"type":"string"},"b":{"type":"integer"}"#,
            r#","required":["b"]"#,
        );
        let a_int = obj(r#""a":{"type":"integer"}"#, "");
        let a_num = obj(r#""a":{"type":"number"}"#, "");
        let a_str_null = obj(r#""a":{"type":["string","null"]}"#, "");
        let a_max5 = obj(r#""a":{"type":"string","maxLength":5}"#, "");
        let a_max9 = obj(r#""a":{"type":"string","maxLength":9}"#, "");
        let a_enum2 = obj(r#""a":{"enum":["x","y"]}"#, "");
        let a_enum3 = obj(r#""a":{"enum":["x","y","z"]}"#, "");
        let a_pattern = obj(r#""a":{"type":"string","pattern":"^x"}"#, "");
        let items_int = r#"{"type":"array","items":{"type":"integer"}}"#.to_owned();
        let items_num = r#"{"type":"array","items":{"type":"number"}}"#.to_owned();
        let any_of = r#"{"anyOf":[{"type":"string"},{"type":"integer"}]}"#.to_owned();
        let string = r#"{"type":"string"}"#.to_owned();
        let cases: Vec<(Mode, Vec<&str>, &str, bool)> = vec![
            (Backward, vec![&a], &a_closed, false),
            (Backward, vec![&a_closed], &a, true),
            (Backward, vec![&a_closed], &ab_closed, true),
            (Backward, vec![&a], &ab, false),
            (Backward, vec![&a], &ab_partial, false),
            (Backward, vec![&ab], &a, true),
            (Backward, vec![&ab_closed], &a_closed, false),
            (Backward, vec![&ab_closed], &ab_partial, true),
            (Backward, vec![&a_closed], &ab_required, false),
            (Backward, vec![&ab_required], &ab, true),
            (Backward, vec![&ab], &ab_required, false),
            (Backward, vec![&a_int], &a_num, true),
            (Backward, vec![&a_num], &a_int, false),
            (Backward, vec![&a], &a_int, false),
            (Backward, vec![&a], &a_str_null, true),
            (Backward, vec![&a_str_null], &a, false),
            (Backward, vec![&a_max9], &a_max5, false),
            (Backward, vec![&a_max5], &a_max9, true),
            (Backward, vec![&a], &a_max9, false),
            (Backward, vec![&a_enum2], &a_enum3, true),
            (Backward, vec![&a_enum3], &a_enum2, false),
            (Backward, vec![&a], &a_pattern, false),
            (Backward, vec![&a_pattern], &a, true),
            (Backward, vec![&items_int], &items_num, true),
            (Backward, vec![&items_num], &items_int, false),
            (Backward, vec![&string], &any_of, true),
            (Backward, vec![&any_of], &string, false),
            (Forward, vec![&a_closed], &ab_closed, false),
            (Forward, vec![&ab], &a, false),
            (Full, vec![&a_closed], &a_closed, true),
            (Full, vec![&a_int], &a_num, false),
            (
                FullTransitive,
                vec![&a_closed, &ab_closed],
                &ab_closed,
                false,
            ),
            (None, vec![&a], &a_int, true),
        ];
        run_matrix(&parse, cases);
    }

    #[test]
    fn modes_parse_as_confluent_spells_them() {
        for m in [
            Mode::Backward,
            Mode::BackwardTransitive,
            Mode::Forward,
            Mode::ForwardTransitive,
            Mode::Full,
            Mode::FullTransitive,
            Mode::None,
        ] {
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
        assert_eq!(Mode::parse("backward"), Some(Mode::Backward));
        assert_eq!(Mode::parse("SIDEWAYS"), None);
    }
}
