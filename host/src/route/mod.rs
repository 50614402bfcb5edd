//! Stage 3, route: find each event's key — the record key, or a field of
//! the value named by a dot-separated path.

/// How a pipeline keys its events.
#[derive(Debug, Clone)]
pub enum KeySpec {
    /// The record key.
    RecordKey,
    /// A field of the JSON value.
    Field(Vec<String>),
}

/// Why an event has no usable key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The record has no key.
    #[error("the record has no key")]
    NoRecordKey,
    /// The record key is empty (no state could be asked for by it).
    #[error("the record key is empty")]
    EmptyRecordKey,
    /// The record key is not UTF-8.
    #[error("the record key is not UTF-8 text")]
    KeyNotUtf8,
    /// The field is missing.
    #[error("the value has no field {0:?} (the pipeline's key_field)")]
    MissingField(String),
    /// The field is not a string or a number.
    #[error("field {0:?} must be a non-empty string or a number to serve as the key")]
    BadField(String),
}

impl KeySpec {
    /// From the pipeline's `key_field` option.
    pub fn new(key_field: Option<&str>) -> Self {
        match key_field {
            None => KeySpec::RecordKey,
            Some(path) => KeySpec::Field(path.split('.').map(str::to_owned).collect()),
        }
    }

    /// The key of one event.
    ///
    /// # Errors
    /// [`KeyError`] naming what is missing.
    pub fn key_of(&self, record_key: Option<&[u8]>, value_json: &str) -> Result<String, KeyError> {
        match self {
            KeySpec::RecordKey => {
                let k = record_key.ok_or(KeyError::NoRecordKey)?;
                if k.is_empty() {
                    return Err(KeyError::EmptyRecordKey);
                }
                String::from_utf8(k.to_vec()).map_err(|_| KeyError::KeyNotUtf8)
            }
            KeySpec::Field(path) => {
                // One pass over the text that builds nothing but the key.
                let mut de = serde_json::Deserializer::from_str(value_json);
                let found = serde::de::DeserializeSeed::deserialize(Find(path), &mut de)
                    .map_err(|_| KeyError::MissingField(path.join(".")))?;
                match found {
                    Found::Key(k) => Ok(k),
                    Found::Missing => Err(KeyError::MissingField(path.join("."))),
                    Found::Bad => Err(KeyError::BadField(path.join("."))),
                }
            }
        }
    }

    /// The key of an already parsed value.
    ///
    /// # Errors
    /// [`KeyError`] naming what is missing.
    pub fn key_in_value(&self, value: &serde_json::Value) -> Result<String, KeyError> {
        match self {
            KeySpec::RecordKey => Err(KeyError::NoRecordKey),
            KeySpec::Field(path) => key_in(value, path),
        }
    }
}

fn key_in(value: &serde_json::Value, path: &[String]) -> Result<String, KeyError> {
    let dotted = || path.join(".");
    let mut v = value;
    for part in path {
        v = v
            .get(part)
            .ok_or_else(|| KeyError::MissingField(dotted()))?;
    }
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Null => Err(KeyError::MissingField(dotted())),
        _ => Err(KeyError::BadField(dotted())),
    }
}

/// What [`Find`] found at the end of its path.
enum Found {
    Key(String),
    Missing,
    Bad,
}

/// Walks a JSON value down `path` (the rest of the key field's path),
/// skipping everything else, and reads the key where the path ends: what
/// [`key_in`] does on a parsed value, without building one. As with a parsed
/// value, a field given twice counts its last occurrence.
struct Find<'p>(&'p [String]);

impl<'de> serde::de::DeserializeSeed<'de> for Find<'_> {
    type Value = Found;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Find<'_> {
    type Value = Found;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let Some((head, rest)) = self.0.split_first() else {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            return Ok(Found::Bad);
        };
        let mut found = Found::Missing;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if k == head.as_str() {
                found = map.next_value_seed(Find(rest))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(self.not_a_map(Found::Bad))
    }

    fn visit_str<E>(self, v: &str) -> Result<Found, E> {
        let key = if v.is_empty() {
            Found::Bad
        } else {
            Found::Key(v.to_owned())
        };
        Ok(self.not_a_map(key))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Found, E> {
        Ok(self.not_a_map(Found::Key(v.to_string())))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Found, E> {
        Ok(self.not_a_map(Found::Key(v.to_string())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Found, E> {
        let key = serde_json::Number::from_f64(v).map_or(Found::Bad, |n| Found::Key(n.to_string()));
        Ok(self.not_a_map(key))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Found, E> {
        Ok(self.not_a_map(Found::Bad))
    }

    fn visit_unit<E>(self) -> Result<Found, E> {
        Ok(self.not_a_map(Found::Missing))
    }
}

impl Find<'_> {
    /// A value that is not an object: the key itself when the path ends
    /// here, or no such field when the path goes on.
    fn not_a_map(&self, at_end: Found) -> Found {
        if self.0.is_empty() {
            at_end
        } else {
            Found::Missing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_record_or_field_path() {
        let by_field = KeySpec::new(Some("process.id"));
        assert_eq!(
            by_field.key_of(None, r#"{"process":{"id":"p1"}}"#),
            Ok("p1".into())
        );
        assert_eq!(
            by_field.key_of(None, r#"{"process":{"id":7}}"#),
            Ok("7".into())
        );
        assert_eq!(
            by_field.key_of(None, r#"{"process":{}}"#),
            Err(KeyError::MissingField("process.id".into()))
        );
        assert_eq!(
            by_field.key_of(None, r#"{"process":{"id":[1]}}"#),
            Err(KeyError::BadField("process.id".into()))
        );
        // As a parsed value would: the last of duplicate fields, null is
        // missing, an empty string or a bool is no key, a scalar on the way is
        // no such field; the parsed-value path agrees on each.
        for (json, expected) in [
            (
                r#"{"process":{"id":"a"},"process":{"id":"b"}}"#,
                Ok("b".into()),
            ),
            (
                r#"{"x":[{"id":1}],"process":{"n":{"id":2},"id":1.5}}"#,
                Ok("1.5".into()),
            ),
            (r#"{"process":{"id":-3}}"#, Ok("-3".into())),
            (
                r#"{"process":{"id":null}}"#,
                Err(KeyError::MissingField("process.id".into())),
            ),
            (
                r#"{"process":{"id":""}}"#,
                Err(KeyError::BadField("process.id".into())),
            ),
            (
                r#"{"process":{"id":true}}"#,
                Err(KeyError::BadField("process.id".into())),
            ),
            (
                r#"{"process":{"id":{"a":1}}}"#,
                Err(KeyError::BadField("process.id".into())),
            ),
            (
                r#"{"process":"p"}"#,
                Err(KeyError::MissingField("process.id".into())),
            ),
            (r#"[1,2]"#, Err(KeyError::MissingField("process.id".into()))),
            (
                r#"{"process":"#,
                Err(KeyError::MissingField("process.id".into())),
            ),
        ] {
            assert_eq!(by_field.key_of(None, json), expected, "{json}");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(json) {
                assert_eq!(by_field.key_in_value(&v), expected, "{json} (parsed)");
            }
        }
        let by_key = KeySpec::new(None);
        assert_eq!(by_key.key_of(Some(b"k"), "{}"), Ok("k".into()));
        assert_eq!(by_key.key_of(None, "{}"), Err(KeyError::NoRecordKey));
        assert_eq!(
            by_key.key_of(Some(b""), "{}"),
            Err(KeyError::EmptyRecordKey)
        );
        assert_eq!(
            by_key.key_of(Some(&[0xff]), "{}"),
            Err(KeyError::KeyNotUtf8)
        );
    }
}
