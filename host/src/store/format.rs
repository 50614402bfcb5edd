//! How a state is written: JSON text, or MessagePack that has a JSON
//! rendering (contract 0.2.0 lets a plugin choose). The host keeps a state
//! in the format its plugin wrote, checks a plugin's output once when it
//! arrives, and renders MessagePack to JSON itself where JSON is served
//! (HTTP, SSE, changelog topics) — once per state, on first use.

use std::borrow::Cow;
use std::sync::OnceLock;

use rmp::Marker;

/// The formats a state can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFormat {
    /// UTF-8 JSON text.
    Json,
    /// MessagePack with a JSON rendering: map keys are strings or
    /// integers, no extension types.
    MsgPack,
}

impl StateFormat {
    /// Its name, as in the contract and in changelog headers.
    pub fn as_str(self) -> &'static str {
        match self {
            StateFormat::Json => "json",
            StateFormat::MsgPack => "msgpack",
        }
    }

    /// The format named `name` (see [`StateFormat::as_str`]).
    pub fn parse(name: &[u8]) -> Option<Self> {
        match name {
            b"json" => Some(StateFormat::Json),
            b"msgpack" => Some(StateFormat::MsgPack),
            _ => None,
        }
    }
}

/// Why bytes are not a state of the format they claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not JSON text.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// Not MessagePack, or MessagePack without a JSON rendering.
    #[error("not MessagePack that renders as JSON: {what} at byte {at}")]
    NotRenderable {
        /// What is wrong.
        what: &'static str,
        /// Where, from the start of the state.
        at: usize,
    },
}

/// A key's state as a plugin wrote it.
#[derive(Debug, Clone)]
pub struct State(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Json(String),
    MsgPack {
        bytes: Vec<u8>,
        /// The JSON rendering, made on first use.
        rendered: OnceLock<String>,
    },
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.format() == other.format() && self.bytes() == other.bytes()
    }
}

impl Eq for State {}

impl State {
    /// A JSON state whose text is known to be JSON (checked when it arrived).
    pub fn json(text: String) -> Self {
        State(Repr::Json(text))
    }

    /// A state a plugin returned, checked: JSON must parse, MessagePack
    /// must have a JSON rendering.
    ///
    /// # Errors
    /// [`FormatError`] saying what is wrong and where.
    pub fn checked(format: StateFormat, bytes: Vec<u8>) -> Result<Self, FormatError> {
        match format {
            StateFormat::Json => {
                let text = String::from_utf8(bytes).map_err(|e| {
                    FormatError::NotJson(format!(
                        "invalid UTF-8 at byte {}",
                        e.utf8_error().valid_up_to()
                    ))
                })?;
                serde_json::from_str::<serde::de::IgnoredAny>(&text)
                    .map_err(|e| FormatError::NotJson(e.to_string()))?;
                Ok(State(Repr::Json(text)))
            }
            StateFormat::MsgPack => {
                walk(&bytes, None)?;
                Ok(State::trusted_msgpack(bytes))
            }
        }
    }

    /// A MessagePack state read back from where the host wrote it after
    /// checking it.
    pub fn trusted_msgpack(bytes: Vec<u8>) -> Self {
        State(Repr::MsgPack {
            bytes,
            rendered: OnceLock::new(),
        })
    }

    /// Its format.
    pub fn format(&self) -> StateFormat {
        match &self.0 {
            Repr::Json(_) => StateFormat::Json,
            Repr::MsgPack { .. } => StateFormat::MsgPack,
        }
    }

    /// Its bytes, in its format.
    pub fn bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Json(text) => text.as_bytes(),
            Repr::MsgPack { bytes, .. } => bytes,
        }
    }

    /// Its size in bytes (in its format).
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether it has no bytes (never, for a checked state).
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// As JSON text: the state itself, or its rendering (made once).
    pub fn json_text(&self) -> &str {
        match &self.0 {
            Repr::Json(text) => text,
            Repr::MsgPack { bytes, rendered } => rendered.get_or_init(|| {
                let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 4);
                match walk(bytes, Some(&mut out)) {
                    Ok(()) => String::from_utf8(out)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    // Checked when it arrived; stored bytes that no longer
                    // render are corrupt: say so rather than fail a reader.
                    Err(e) => {
                        serde_json::json!({ "eddy-unreadable-state": e.to_string() }).to_string()
                    }
                }
            }),
        }
    }

    /// Its bytes in `format`: as they are, or converted (a plugin reading
    /// the other format than the one this state was written in).
    ///
    /// # Errors
    /// When a stored state does not convert (corrupt bytes).
    pub fn in_format(&self, format: StateFormat) -> Result<Cow<'_, [u8]>, FormatError> {
        match (&self.0, format) {
            (Repr::Json(text), StateFormat::Json) => Ok(Cow::Borrowed(text.as_bytes())),
            (Repr::MsgPack { bytes, .. }, StateFormat::MsgPack) => Ok(Cow::Borrowed(bytes)),
            (Repr::MsgPack { .. }, StateFormat::Json) => {
                Ok(Cow::Borrowed(self.json_text().as_bytes()))
            }
            (Repr::Json(text), StateFormat::MsgPack) => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| FormatError::NotJson(e.to_string()))?;
                let mut out = Vec::with_capacity(text.len());
                write_msgpack(&mut out, &value);
                Ok(Cow::Owned(out))
            }
        }
    }
}

/// How deep arrays and maps may nest (serde_json's own limit).
const MAX_DEPTH: usize = 128;

/// Walks MessagePack `bytes` holding one value, checking it has a JSON
/// rendering, and writes that rendering to `out` when given.
fn walk(bytes: &[u8], out: Option<&mut Vec<u8>>) -> Result<(), FormatError> {
    let mut w = Walker {
        rest: bytes,
        total: bytes.len(),
        out,
    };
    w.value(0)?;
    if !w.rest.is_empty() {
        return Err(w.error("bytes after the value"));
    }
    Ok(())
}

struct Walker<'a, 'o> {
    rest: &'a [u8],
    total: usize,
    out: Option<&'o mut Vec<u8>>,
}

impl<'a> Walker<'a, '_> {
    fn error(&self, what: &'static str) -> FormatError {
        FormatError::NotRenderable {
            what,
            at: self.total - self.rest.len(),
        }
    }

    /// An error about the marker just read.
    fn marker_error(&self, what: &'static str) -> FormatError {
        FormatError::NotRenderable {
            what,
            at: (self.total - self.rest.len()).saturating_sub(1),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or_else(|| self.error("truncated"))?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.error("truncated"))
    }

    fn len(&mut self, width: usize) -> Result<usize, FormatError> {
        Ok(match width {
            1 => usize::from(self.array::<1>()?[0]),
            2 => usize::from(u16::from_be_bytes(self.array()?)),
            _ => u32::from_be_bytes(self.array()?) as usize,
        })
    }

    fn put(&mut self, bytes: &[u8]) {
        if let Some(out) = self.out.as_deref_mut() {
            out.extend_from_slice(bytes);
        }
    }

    fn put_json<T: serde::Serialize + ?Sized>(&mut self, v: &T) {
        if let Some(out) = self.out.as_deref_mut() {
            // Writing numbers and strings into a Vec cannot fail.
            let _ = serde_json::to_writer(out, v);
        }
    }

    fn marker(&mut self) -> Result<Marker, FormatError> {
        let [b] = self.array::<1>()?;
        Ok(Marker::from_u8(b))
    }

    fn value(&mut self, depth: usize) -> Result<(), FormatError> {
        match self.marker()? {
            Marker::Null => self.put(b"null"),
            Marker::True => self.put(b"true"),
            Marker::False => self.put(b"false"),
            Marker::FixPos(n) => self.put_json(&n),
            Marker::FixNeg(n) => self.put_json(&n),
            Marker::U8 => {
                let [n] = self.array::<1>()?;
                self.put_json(&n);
            }
            Marker::U16 => {
                let n = u16::from_be_bytes(self.array()?);
                self.put_json(&n);
            }
            Marker::U32 => {
                let n = u32::from_be_bytes(self.array()?);
                self.put_json(&n);
            }
            Marker::U64 => {
                let n = u64::from_be_bytes(self.array()?);
                self.put_json(&n);
            }
            Marker::I8 => {
                let n = i8::from_be_bytes(self.array()?);
                self.put_json(&n);
            }
            Marker::I16 => {
                let n = i16::from_be_bytes(self.array()?);
                self.put_json(&n);
            }
            Marker::I32 => {
                let n = i32::from_be_bytes(self.array()?);
                self.put_json(&n);
            }
            Marker::I64 => {
                let n = i64::from_be_bytes(self.array()?);
                self.put_json(&n);
            }
            Marker::F32 => {
                let n = f32::from_be_bytes(self.array()?);
                self.put_json(&n);
            }
            Marker::F64 => {
                let n = f64::from_be_bytes(self.array()?);
                self.put_json(&n);
            }
            Marker::FixStr(n) => self.string(usize::from(n))?,
            Marker::Str8 => self.sized_string(1)?,
            Marker::Str16 => self.sized_string(2)?,
            Marker::Str32 => self.sized_string(4)?,
            Marker::Bin8 => self.binary(1)?,
            Marker::Bin16 => self.binary(2)?,
            Marker::Bin32 => self.binary(4)?,
            Marker::FixArray(n) => self.elements(usize::from(n), depth)?,
            Marker::Array16 => {
                let n = self.len(2)?;
                self.elements(n, depth)?;
            }
            Marker::Array32 => {
                let n = self.len(4)?;
                self.elements(n, depth)?;
            }
            Marker::FixMap(n) => self.entries(usize::from(n), depth)?,
            Marker::Map16 => {
                let n = self.len(2)?;
                self.entries(n, depth)?;
            }
            Marker::Map32 => {
                let n = self.len(4)?;
                self.entries(n, depth)?;
            }
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => return Err(self.marker_error("an extension type (JSON has none)")),
            Marker::Reserved => return Err(self.marker_error("the reserved byte 0xc1")),
        }
        Ok(())
    }

    fn sized_string(&mut self, width: usize) -> Result<(), FormatError> {
        let n = self.len(width)?;
        self.string(n)
    }

    fn string(&mut self, n: usize) -> Result<(), FormatError> {
        let start = self.total - self.rest.len();
        let bytes = self.take(n)?;
        // Most strings of a state are short and ASCII: a plain scan is
        // cheaper than a full UTF-8 check, which only the others need.
        if self.out.is_none() && bytes.is_ascii() {
            return Ok(());
        }
        let text = std::str::from_utf8(bytes).map_err(|e| FormatError::NotRenderable {
            what: "a string that is not UTF-8",
            at: start + e.valid_up_to(),
        })?;
        self.put_json(text);
        Ok(())
    }

    /// Binary data renders as an array of byte values (as serde_json
    /// writes bytes).
    fn binary(&mut self, width: usize) -> Result<(), FormatError> {
        let n = self.len(width)?;
        let bytes = self.take(n)?;
        self.put_json(bytes);
        Ok(())
    }

    fn elements(&mut self, n: usize, depth: usize) -> Result<(), FormatError> {
        if depth >= MAX_DEPTH {
            return Err(self.error("arrays and maps nested too deep"));
        }
        self.put(b"[");
        for i in 0..n {
            if i > 0 {
                self.put(b",");
            }
            self.value(depth + 1)?;
        }
        self.put(b"]");
        Ok(())
    }

    fn entries(&mut self, n: usize, depth: usize) -> Result<(), FormatError> {
        if depth >= MAX_DEPTH {
            return Err(self.error("arrays and maps nested too deep"));
        }
        self.put(b"{");
        for i in 0..n {
            if i > 0 {
                self.put(b",");
            }
            self.key()?;
            self.put(b":");
            self.value(depth + 1)?;
        }
        self.put(b"}");
        Ok(())
    }

    /// A map key: a string, or an integer written as a string (as
    /// serde_json writes integer keys).
    fn key(&mut self) -> Result<(), FormatError> {
        let integer = |w: &mut Self, n: String| {
            w.put_json(&n);
            Ok(())
        };
        match self.marker()? {
            Marker::FixStr(n) => self.string(usize::from(n)),
            Marker::Str8 => self.sized_string(1),
            Marker::Str16 => self.sized_string(2),
            Marker::Str32 => self.sized_string(4),
            Marker::FixPos(n) => integer(self, n.to_string()),
            Marker::FixNeg(n) => integer(self, n.to_string()),
            Marker::U8 => {
                let [n] = self.array::<1>()?;
                integer(self, n.to_string())
            }
            Marker::U16 => {
                let n = u16::from_be_bytes(self.array()?);
                integer(self, n.to_string())
            }
            Marker::U32 => {
                let n = u32::from_be_bytes(self.array()?);
                integer(self, n.to_string())
            }
            Marker::U64 => {
                let n = u64::from_be_bytes(self.array()?);
                integer(self, n.to_string())
            }
            Marker::I8 => {
                let n = i8::from_be_bytes(self.array()?);
                integer(self, n.to_string())
            }
            Marker::I16 => {
                let n = i16::from_be_bytes(self.array()?);
                integer(self, n.to_string())
            }
            Marker::I32 => {
                let n = i32::from_be_bytes(self.array()?);
                integer(self, n.to_string())
            }
            Marker::I64 => {
                let n = i64::from_be_bytes(self.array()?);
                integer(self, n.to_string())
            }
            _ => Err(self.marker_error("a map key that is not a string or an integer")),
        }
    }
}

/// Writes a JSON value as MessagePack (objects as maps with string keys).
fn write_msgpack(out: &mut Vec<u8>, value: &serde_json::Value) {
    use rmp::encode;
    use serde_json::Value;
    // Writing into a Vec cannot fail: the results are ignored.
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match value {
        Value::Null => {
            let _ = encode::write_nil(out);
        }
        Value::Bool(b) => {
            let _ = encode::write_bool(out, *b);
        }
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                let _ = encode::write_uint(out, u);
            } else if let Some(i) = n.as_i64() {
                let _ = encode::write_sint(out, i);
            } else {
                let _ = encode::write_f64(out, n.as_f64().unwrap_or(f64::NAN));
            }
        }
        Value::String(s) => {
            let _ = encode::write_str(out, s);
        }
        Value::Array(items) => {
            let _ = encode::write_array_len(out, len(items.len()));
            for item in items {
                write_msgpack(out, item);
            }
        }
        Value::Object(map) => {
            let _ = encode::write_map_len(out, len(map.len()));
            for (k, v) in map {
                let _ = encode::write_str(out, k);
                write_msgpack(out, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgpack_of(json: &str) -> Result<Vec<u8>, FormatError> {
        Ok(State::json(json.into())
            .in_format(StateFormat::MsgPack)?
            .into_owned())
    }

    #[test]
    fn msgpack_renders_as_the_json_it_came_from() -> Result<(), FormatError> {
        let json = r#"{"id":"p1","n":-3,"big":18446744073709551615,"x":1.5,"ok":true,"none":null,"list":[1,"two",{"three":[]}],"s":"quote \" and \u00e9"}"#;
        let bytes = msgpack_of(json)?;
        let state = State::checked(StateFormat::MsgPack, bytes)?;
        let back: serde_json::Value = serde_json::from_str(state.json_text())
            .map_err(|e| FormatError::NotJson(e.to_string()))?;
        let want: serde_json::Value =
            serde_json::from_str(json).map_err(|e| FormatError::NotJson(e.to_string()))?;
        assert_eq!(back, want);
        assert_eq!(
            state.in_format(StateFormat::Json)?.as_ref(),
            state.json_text().as_bytes()
        );
        Ok(())
    }

    #[test]
    fn integer_map_keys_render_as_strings_and_bins_as_arrays() -> Result<(), FormatError> {
        // {7: bin[1,2], -1: "x"}
        let bytes = vec![0x82, 0x07, 0xc4, 0x02, 1, 2, 0xff, 0xa1, b'x'];
        let state = State::checked(StateFormat::MsgPack, bytes)?;
        assert_eq!(state.json_text(), r#"{"7":[1,2],"-1":"x"}"#);
        Ok(())
    }

    #[test]
    fn msgpack_without_a_json_rendering_is_refused_naming_where() {
        let cases: [(&[u8], &str, usize); 6] = [
            (&[0x92, 0x01], "truncated", 2),
            (&[0x01, 0x02], "bytes after the value", 1),
            (
                &[0x81, 0xc3, 0x01],
                "a map key that is not a string or an integer",
                1,
            ),
            (&[0xd4, 0x01, 0x00], "an extension type (JSON has none)", 0),
            (&[0xc1], "the reserved byte 0xc1", 0),
            (&[0xa2, 0xff, 0xfe], "a string that is not UTF-8", 1),
        ];
        for (bytes, what, at) in cases {
            assert_eq!(
                State::checked(StateFormat::MsgPack, bytes.to_vec()),
                Err(FormatError::NotRenderable { what, at }),
                "{bytes:?}"
            );
        }
        // A huge declared length fails on the bytes that are missing.
        assert!(State::checked(StateFormat::MsgPack, vec![0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        let deep = [vec![0x91; 200], vec![0xc0]].concat();
        assert!(matches!(
            State::checked(StateFormat::MsgPack, deep),
            Err(FormatError::NotRenderable {
                what: "arrays and maps nested too deep",
                ..
            })
        ));
    }

    #[test]
    fn json_states_are_checked_and_kept_as_text() -> Result<(), FormatError> {
        let s = State::checked(StateFormat::Json, b"{\"a\":1}".to_vec())?;
        assert_eq!(s.json_text(), "{\"a\":1}");
        assert!(State::checked(StateFormat::Json, b"{\"a\":".to_vec()).is_err());
        assert!(State::checked(StateFormat::Json, b"NaN".to_vec()).is_err());
        assert!(State::checked(StateFormat::Json, vec![0xff]).is_err());
        Ok(())
    }
}
