//! Schema compatibility: the seven modes of a Confluent-compatible registry,
//! on top of the Avro specification's resolution rules (records, defaults,
//! unions, enums with defaults, arrays, maps, fixed, numeric promotions,
//! aliases), as implemented by `apache_avro::schema_compatibility`.
//!
//! A reader can read a writer only when resolution can never fail: a
//! "partial" match (an enum missing symbols without a default, a writer
//! union branch the reader lacks) is incompatible, as in Confluent's checker.

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

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
pub fn check(mode: Mode, new: &Schema, previous: &[(u32, &Schema)]) -> Vec<String> {
    let against = if mode.transitive() {
        previous
    } else {
        previous.get(..1).unwrap_or_default()
    };
    let mut messages = Vec::new();
    for (version, old) in against {
        if mode.backward()
            && let Err(e) = can_read(old, new)
        {
            messages.push(format!(
                "the new schema cannot read data written with version {version} ({}): {e}",
                mode.as_str()
            ));
        }
        if mode.forward()
            && let Err(e) = can_read(new, old)
        {
            messages.push(format!(
                "version {version} cannot read data written with the new schema ({}): {e}",
                mode.as_str()
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
        let parse = |s: &str| Schema::parse_str(s).map_err(|e| format!("{s}: {e}"));
        let old: Vec<Schema> = history.iter().map(|s| parse(s)).collect::<Result<_, _>>()?;
        let previous: Vec<(u32, &Schema)> = old
            .iter()
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
