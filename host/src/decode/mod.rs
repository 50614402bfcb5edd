//! Stage 2, decode: turn a record's value bytes into the JSON text plugins
//! receive. Values on the embedded log are JSON; anything that is not valid
//! UTF-8 JSON is bad data and goes to the dead letters.

/// Why a value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not UTF-8.
    #[error("value is not UTF-8 text (invalid byte at {at})")]
    NotUtf8 {
        /// Byte position of the first invalid byte.
        at: usize,
    },
    /// Not JSON.
    #[error("value is not valid JSON: {0}")]
    NotJson(String),
}

/// Decodes a JSON value, returning it as text (unchanged bytes).
///
/// # Errors
/// [`DecodeError`] saying where the value is malformed.
pub fn json_value(bytes: &[u8]) -> Result<String, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8 {
        at: e.valid_up_to(),
    })?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| DecodeError::NotJson(e.to_string()))?;
    Ok(text.to_owned())
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
    }
}
