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
                String::from_utf8(k.to_vec()).map_err(|_| KeyError::KeyNotUtf8)
            }
            KeySpec::Field(path) => {
                let value: serde_json::Value = serde_json::from_str(value_json)
                    .map_err(|_| KeyError::MissingField(path.join(".")))?;
                key_in(&value, path)
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
        let by_key = KeySpec::new(None);
        assert_eq!(by_key.key_of(Some(b"k"), "{}"), Ok("k".into()));
        assert_eq!(by_key.key_of(None, "{}"), Err(KeyError::NoRecordKey));
    }
}
