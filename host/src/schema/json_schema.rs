//! JSON Schema: a schema document (with the documents it references by
//! name) compiled by the `jsonschema` crate, values validated with the
//! failing field named, and Confluent's compatibility rules for JSON
//! Schema, written from its documentation: a reader can read a writer when
//! every value the writer accepts, the reader accepts too. So a reader may
//! widen a type (`integer` to `number`), drop a constraint, remove a
//! property from an open content model or add one to a closed one; it may
//! not narrow a type, add or tighten a constraint, make a property
//! required, close an open content model, or add a typed property to an
//! open content model (old data may hold that name with any type).

use serde_json::{Map, Value};

use super::types::{Resolved, SchemaType};

/// A compiled JSON Schema.
pub struct JsonSchema {
    doc: Value,
    references: Vec<(String, Value)>,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for JsonSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonSchema")
            .field("doc", &self.doc)
            .finish()
    }
}

/// The URI a reference is registered under: its name when absolute, else
/// resolved against the validator's default base (so `"$ref":
/// "address.json"` finds the reference named `address.json`).
fn uri_of(name: &str) -> String {
    if name.contains(':') {
        name.to_owned()
    } else {
        format!("json-schema:///{}", name.trim_start_matches('/'))
    }
}

/// The document with every object's keys sorted.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                if let Some(x) = o.get(k) {
                    out.insert(k.clone(), sorted(x));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// A JSON pointer (`/a/0/b`) as a field path (`$.a[0].b`).
pub fn field_path(pointer: &str) -> String {
    let mut out = String::from("$");
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            out.push('.');
            out.push_str(&seg);
        }
    }
    out
}

impl JsonSchema {
    /// Parses and compiles `text` with its references.
    ///
    /// # Errors
    /// Text that is not JSON (with its line and column), a document that is
    /// not a valid schema, or a reference that is not a JSON schema.
    pub fn parse(text: &str, references: &[Resolved]) -> Result<JsonSchema, String> {
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| format!("not JSON (line {}, column {}): {e}", e.line(), e.column()))?;
        if !doc.is_object() && !doc.is_boolean() {
            return Err("a JSON Schema is an object or a boolean".into());
        }
        let mut docs = Vec::new();
        for (name, r) in references {
            if r.kind != SchemaType::Json {
                return Err(format!(
                    "reference {name:?} is a {} schema, not JSON",
                    r.kind
                ));
            }
            let v: Value = serde_json::from_str(&r.schema)
                .map_err(|e| format!("reference {name:?} is not JSON: {e}"))?;
            docs.push((name.clone(), v));
        }
        let mut builder = jsonschema::Registry::new();
        for (name, v) in &docs {
            builder = builder
                .add(uri_of(name), v.clone())
                .map_err(|e| format!("reference {name:?}: {e}"))?;
        }
        let registry = builder.prepare().map_err(|e| format!("references: {e}"))?;
        let validator = jsonschema::options()
            .with_registry(&registry)
            .build(&doc)
            .map_err(|e| e.to_string())?;
        Ok(JsonSchema {
            doc,
            references: docs,
            validator,
        })
    }

    /// The document, keys sorted, compact.
    pub fn canonical(&self) -> String {
        sorted(&self.doc).to_string()
    }

    /// Checks a value, naming the first field that fails and why.
    ///
    /// # Errors
    /// `field $.a.b: reason`.
    pub fn validate(&self, value: &Value) -> Result<(), String> {
        match self.validator.iter_errors(value).next() {
            None => Ok(()),
            Some(e) => Err(format!(
                "field {}: {e}",
                field_path(&e.instance_path().to_string())
            )),
        }
    }

    /// Whether this schema, as reader, accepts every value `writer` accepts:
    /// the reasons when not.
    ///
    /// # Errors
    /// One message per reason, with the schema path.
    pub fn can_read(&self, writer: &JsonSchema) -> Result<(), Vec<String>> {
        let mut out = Vec::new();
        Check {
            writer,
            reader: self,
            depth: 0,
        }
        .schema(&writer.doc, &self.doc, "#", &mut out);
        if out.is_empty() { Ok(()) } else { Err(out) }
    }

    /// Follows a `$ref` (local pointer or a reference by name).
    fn deref<'a>(&'a self, v: &'a Value) -> &'a Value {
        let mut at = v;
        for _ in 0..32 {
            let Some(r) = at.get("$ref").and_then(Value::as_str) else {
                return at;
            };
            let (doc_name, pointer) = r.split_once('#').unwrap_or((r, ""));
            let doc = if doc_name.is_empty() {
                Some(&self.doc)
            } else {
                self.references
                    .iter()
                    .find(|(n, _)| n == doc_name || uri_of(n) == uri_of(doc_name))
                    .map(|(_, d)| d)
            };
            match doc.and_then(|d| d.pointer(pointer)) {
                Some(next) => at = next,
                None => return at,
            }
        }
        at
    }
}

const TRUE: Value = Value::Bool(true);

struct Check<'a> {
    writer: &'a JsonSchema,
    reader: &'a JsonSchema,
    depth: usize,
}

fn types(s: &Value) -> Option<Vec<&str>> {
    match s.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn is_open(s: &Value) -> bool {
    matches!(s, Value::Bool(true)) || s.as_object().is_some_and(Map::is_empty)
}

impl Check<'_> {
    fn schema(&self, w: &Value, r: &Value, at: &str, out: &mut Vec<String>) {
        if self.depth > 64 {
            return;
        }
        let (w, r) = (self.writer.deref(w), self.reader.deref(r));
        if is_open(r) || matches!(w, Value::Bool(false)) {
            return;
        }
        if matches!(r, Value::Bool(false)) {
            out.push(format!("{at}: the reader accepts nothing"));
            return;
        }
        let deeper = Check {
            writer: self.writer,
            reader: self.reader,
            depth: self.depth + 1,
        };
        // Combinators on the reader: every writer value must pass one branch.
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = r.get(key).and_then(Value::as_array) {
                let writer_branches: Vec<&Value> = match w.get(key).and_then(Value::as_array) {
                    Some(b) => b.iter().collect(),
                    None => vec![w],
                };
                for (i, wb) in writer_branches.iter().enumerate() {
                    let fits = branches.iter().any(|rb| {
                        let mut scratch = Vec::new();
                        deeper.schema(wb, rb, at, &mut scratch);
                        scratch.is_empty()
                    });
                    if !fits {
                        out.push(format!(
                            "{at}: writer {key} branch {i} fits none of the reader's branches"
                        ));
                    }
                }
            }
        }
        if let Some(all) = r.get("allOf").and_then(Value::as_array) {
            for (i, rb) in all.iter().enumerate() {
                deeper.schema(w, rb, &format!("{at}/allOf/{i}"), out);
            }
        }
        if let Some(rt) = types(r) {
            match types(w) {
                None => out.push(format!("{at}: type narrowed to {rt:?} (any type before)")),
                Some(wt) => {
                    for t in wt {
                        let ok = rt.contains(&t) || (t == "integer" && rt.contains(&"number"));
                        if !ok {
                            out.push(format!("{at}: type {t:?} no longer accepted (now {rt:?})"));
                        }
                    }
                }
            }
        }
        self.values(w, r, at, out);
        self.bounds(w, r, at, out);
        for key in [
            "pattern",
            "not",
            "dependencies",
            "dependentRequired",
            "format",
        ] {
            if let Some(rv) = r.get(key)
                && w.get(key) != Some(rv)
            {
                out.push(format!("{at}: {key} added or changed"));
            }
        }
        if r.get("uniqueItems") == Some(&TRUE) && w.get("uniqueItems") != Some(&TRUE) {
            out.push(format!("{at}: uniqueItems added"));
        }
        deeper.objects(w, r, at, out);
        if let Some(ri) = r.get("items") {
            let wi = w.get("items").unwrap_or(&TRUE);
            deeper.schema(wi, ri, &format!("{at}/items"), out);
        }
    }

    /// `enum` and `const`: the reader's values must hold the writer's.
    fn values(&self, w: &Value, r: &Value, at: &str, out: &mut Vec<String>) {
        let set = |s: &Value| -> Option<Vec<Value>> {
            if let Some(c) = s.get("const") {
                return Some(vec![c.clone()]);
            }
            s.get("enum").and_then(Value::as_array).cloned()
        };
        if let Some(rv) = set(r) {
            match set(w) {
                None => out.push(format!("{at}: enum added")),
                Some(wv) => {
                    for v in wv.iter().filter(|v| !rv.contains(v)) {
                        out.push(format!("{at}: enum value {v} removed"));
                    }
                }
            }
        }
    }

    /// Lower bounds may only fall and upper bounds only rise.
    fn bounds(&self, w: &Value, r: &Value, at: &str, out: &mut Vec<String>) {
        let num = |s: &Value, k: &str| s.get(k).and_then(Value::as_f64);
        for key in [
            "minimum",
            "exclusiveMinimum",
            "minLength",
            "minItems",
            "minProperties",
        ] {
            if let Some(rv) = num(r, key)
                && num(w, key).is_none_or(|wv| wv < rv)
            {
                out.push(format!("{at}: {key} raised to {rv}"));
            }
        }
        for key in [
            "maximum",
            "exclusiveMaximum",
            "maxLength",
            "maxItems",
            "maxProperties",
        ] {
            if let Some(rv) = num(r, key)
                && num(w, key).is_none_or(|wv| wv > rv)
            {
                out.push(format!("{at}: {key} lowered to {rv}"));
            }
        }
        if let Some(rm) = num(r, "multipleOf") {
            let fits = num(w, "multipleOf").is_some_and(|wm| (wm / rm).fract() == 0.0);
            if !fits {
                out.push(format!("{at}: multipleOf {rm} added"));
            }
        }
    }

    /// Properties, `required` and the content model.
    fn objects(&self, w: &Value, r: &Value, at: &str, out: &mut Vec<String>) {
        let empty = Map::new();
        fn props(s: &Value) -> Option<&Map<String, Value>> {
            s.get("properties").and_then(Value::as_object)
        }
        let (wp, rp) = (props(w).unwrap_or(&empty), props(r).unwrap_or(&empty));
        let (wa, ra) = (
            w.get("additionalProperties").unwrap_or(&TRUE),
            r.get("additionalProperties").unwrap_or(&TRUE),
        );
        let required = |s: &Value| -> Vec<String> {
            s.get("required")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let wr = required(w);
        for p in required(r) {
            if !wr.contains(&p) {
                out.push(format!("{at}: property {p:?} made required"));
            }
        }
        for (name, rs) in rp {
            let here = format!("{at}/properties/{name}");
            match wp.get(name) {
                Some(ws) => self.schema(ws, rs, &here, out),
                None if matches!(wa, Value::Bool(false)) => {}
                None if is_open(wa) => {
                    if !is_open(self.reader.deref(rs)) {
                        out.push(format!(
                            "{here}: property added to an open content model (old data may hold {name:?} with another type)"
                        ));
                    }
                }
                None => self.schema(wa, rs, &here, out),
            }
        }
        for (name, ws) in wp {
            if rp.contains_key(name) {
                continue;
            }
            let here = format!("{at}/properties/{name}");
            if matches!(ra, Value::Bool(false)) {
                out.push(format!(
                    "{here}: property removed from a closed content model"
                ));
            } else {
                self.schema(ws, ra, &here, out);
            }
        }
        if is_open(wa)
            && matches!(ra, Value::Bool(false))
            && (w.get("type").is_none() || types(w).is_some_and(|t| t.contains(&"object")))
        {
            out.push(format!(
                "{at}: the content model was closed (additionalProperties: false)"
            ));
        } else if !matches!(ra, Value::Bool(false)) {
            self.schema(wa, ra, &format!("{at}/additionalProperties"), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::types::SchemaText;

    #[test]
    fn validates_with_references_and_names_the_field() -> Result<(), String> {
        let address = SchemaText {
            kind: SchemaType::Json,
            schema:
                r#"{"type":"object","properties":{"zip":{"type":"string"}},"required":["zip"]}"#
                    .into(),
            references: vec![],
        };
        let s = JsonSchema::parse(
            r#"{"type":"object","properties":{"id":{"type":"string"},"home":{"$ref":"address.json"}},"required":["id"]}"#,
            &[("address.json".into(), address)],
        )?;
        s.validate(&serde_json::json!({"id":"a","home":{"zip":"1"}}))?;
        let e = s
            .validate(&serde_json::json!({"id":"a","home":{"zip":1}}))
            .err()
            .unwrap_or_default();
        assert!(e.starts_with("field $.home.zip:"), "{e}");
        let e = s.validate(&serde_json::json!({})).err().unwrap_or_default();
        assert!(e.contains("id"), "{e}");
        assert!(
            JsonSchema::parse(
                r#"{"type":"object","properties":{"a":{"$ref":"missing.json"}}}"#,
                &[]
            )
            .is_err()
        );
        assert!(JsonSchema::parse(r#"{"type": 12}"#, &[]).is_err());
        let e = JsonSchema::parse("{\n\"type\": }", &[])
            .err()
            .unwrap_or_default();
        assert!(e.contains("line 2"), "{e}");
        Ok(())
    }

    #[test]
    fn field_paths_read_like_the_avro_encoder() {
        assert_eq!(field_path(""), "$");
        assert_eq!(field_path("/a/0/b~1c"), "$.a[0].b/c");
    }
}
