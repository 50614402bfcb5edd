//! Protobuf schemas: `.proto` text or a base64 `FileDescriptorProto` (what
//! Confluent's clients register), compiled with protox into a prost-reflect
//! descriptor pool together with the files they import (the schema's
//! references, and Google's well-known types), and Confluent's compatibility
//! rules for Protobuf — written from its documentation: the wire format
//! matches fields by number, so names may change; a field's type may change
//! only within its wire group; a removed message, a changed package, an
//! added or removed `required` field, a field taken out of a `oneof` or
//! fields moved into one are incompatible.

use std::collections::{HashMap, HashSet};

use miette::Diagnostic;
use prost_reflect::prost::Message as _;
use prost_reflect::prost_types;
use prost_reflect::{
    Cardinality, DescriptorPool, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
};
use protox::file::{File, FileResolver, GoogleFileResolver};

use super::types::{Resolved, SchemaType};
use crate::pipeline::dead_letter::{base64, unbase64};

/// A compiled Protobuf schema.
#[derive(Debug)]
pub struct Proto {
    pool: DescriptorPool,
    file: FileDescriptor,
}

/// Files by import name, then Google's well-known types.
struct Files {
    files: HashMap<String, File>,
    google: GoogleFileResolver,
}

impl FileResolver for Files {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.files.get(name) {
            Some(f) => Ok(f.clone()),
            None => self.google.open_file(name),
        }
    }
}

/// Whether `text` is a base64 descriptor rather than `.proto` source (which
/// always holds a space, a `;` or a brace).
fn is_base64(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// One file, from source or from a base64 descriptor, under `name`.
fn file_of(name: &str, text: &str) -> Result<File, String> {
    let text = text.trim();
    if is_base64(text) {
        let bytes = unbase64(text).ok_or_else(|| format!("{name}: not valid base64"))?;
        let mut fd = prost_types::FileDescriptorProto::decode(bytes.as_slice())
            .map_err(|e| format!("{name}: not a FileDescriptorProto: {e}"))?;
        fd.name = Some(name.to_owned());
        Ok(File::from_file_descriptor_proto(fd))
    } else {
        File::from_source(name, text).map_err(|e| located(&e, name, text))
    }
}

/// A protox error with the line and column of its first label.
fn located(e: &protox::Error, name: &str, text: &str) -> String {
    let at = e
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .filter(|_| e.file().is_none_or(|f| f == name));
    match at {
        Some(offset) => {
            let before = text.get(..offset).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{name}:{line}:{column}: {e}")
        }
        None => match e.file() {
            Some(f) => format!("{f}: {e}"),
            None => e.to_string(),
        },
    }
}

impl Proto {
    /// Compiles `text` with its references.
    ///
    /// # Errors
    /// Why it does not compile, with the file, line and column.
    pub fn parse(text: &str, references: &[Resolved]) -> Result<Proto, String> {
        let mut files = HashMap::new();
        for (name, r) in references {
            if r.kind != SchemaType::Protobuf {
                return Err(format!(
                    "reference {name:?} is a {} schema, not PROTOBUF",
                    r.kind
                ));
            }
            files.insert(name.clone(), file_of(name, &r.schema)?);
        }
        let main = [
            "schema.proto",
            "eddy-schema.proto",
            "eddy-main-schema.proto",
        ]
        .into_iter()
        .find(|n| !files.contains_key(*n))
        .unwrap_or("eddy-main-schema.proto");
        files.insert(main.to_owned(), file_of(main, text)?);
        let mut compiler = protox::Compiler::with_file_resolver(Files {
            files,
            google: GoogleFileResolver::new(),
        });
        compiler
            .open_file(main)
            .map_err(|e| located(&e, main, text))?;
        let pool = compiler.descriptor_pool();
        let file = pool
            .get_file_by_name(main)
            .ok_or_else(|| "the compiled schema has no file".to_owned())?;
        Ok(Proto { pool, file })
    }

    /// Compiles a `.proto` file, with the files it imports from its own
    /// directory (and Google's well-known types): a pipeline's reader schema.
    ///
    /// # Errors
    /// Why it does not compile, with the file, line and column.
    pub fn from_file(path: &std::path::Path) -> Result<Proto, String> {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: not a file name", path.display()))?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut compiler = protox::Compiler::new([dir]).map_err(|e| e.to_string())?;
        compiler
            .open_file(name)
            .map_err(|e| located(&e, name, &text))?;
        let pool = compiler.descriptor_pool();
        let file = pool
            .get_file_by_name(name)
            .ok_or_else(|| format!("{name}: the compiled schema has no file"))?;
        Ok(Proto { pool, file })
    }

    /// The file as a base64 `FileDescriptorProto` (name and source
    /// information left out): the canonical form, and what `format=serialized`
    /// answers.
    pub fn serialized(&self) -> String {
        let mut fd = self.file.file_descriptor_proto().clone();
        fd.name = None;
        fd.source_code_info = None;
        base64(&fd.encode_to_vec())
    }

    /// The message at Confluent's message-index path (`[0]`: the file's
    /// first message; `[1, 0]`: the second's first nested message).
    pub fn message_at(&self, indexes: &[usize]) -> Option<MessageDescriptor> {
        let (first, rest) = indexes.split_first()?;
        let mut m = self.file.messages().nth(*first)?;
        for i in rest {
            let child = m.child_messages().nth(*i)?;
            m = child;
        }
        Some(m)
    }

    /// A message by full name (`pkg.Outer.Inner`), with its index path.
    pub fn message_named(&self, name: &str) -> Option<(MessageDescriptor, Vec<usize>)> {
        let m = self.pool.get_message_by_name(name)?;
        let path = self.path_of(&m)?;
        Some((m, path))
    }

    /// The file's first message, the one Confluent's `[0]` names.
    pub fn first_message(&self) -> Option<MessageDescriptor> {
        self.file.messages().next()
    }

    fn path_of(&self, m: &MessageDescriptor) -> Option<Vec<usize>> {
        if m.parent_file() != self.file {
            return None;
        }
        let mut path = Vec::new();
        let mut at = m.clone();
        loop {
            match at.parent_message() {
                Some(parent) => {
                    path.push(parent.child_messages().position(|c| c == at)?);
                    at = parent;
                }
                None => {
                    path.push(self.file.messages().position(|c| c == at)?);
                    break;
                }
            }
        }
        path.reverse();
        Some(path)
    }

    /// Whether this schema, as reader, can read data written with `writer`:
    /// the incompatible differences from `writer` to this one.
    ///
    /// # Errors
    /// One message per difference.
    pub fn can_read(&self, writer: &Proto) -> Result<(), Vec<String>> {
        let mut out = Vec::new();
        let (old, new) = (writer.file.package_name(), self.file.package_name());
        if old != new {
            out.push(format!("package changed from {old:?} to {new:?}"));
        }
        for w in all_messages(&writer.file) {
            let relative = w
                .full_name()
                .strip_prefix(old)
                .map_or(w.full_name(), |n| n.trim_start_matches('.'));
            let name = if new.is_empty() {
                relative.to_owned()
            } else {
                format!("{new}.{relative}")
            };
            match self.pool.get_message_by_name(&name) {
                None => out.push(format!("message {} removed", w.full_name())),
                Some(r) => message_differences(&w, &r, &mut out),
            }
        }
        if out.is_empty() { Ok(()) } else { Err(out) }
    }
}

fn all_messages(file: &FileDescriptor) -> Vec<MessageDescriptor> {
    let mut out = Vec::new();
    let mut stack: Vec<MessageDescriptor> = file.messages().collect();
    while let Some(m) = stack.pop() {
        stack.extend(m.child_messages());
        out.push(m);
    }
    out
}

/// The wire group a scalar type belongs to: types of one group read each
/// other's bytes.
fn wire_group(kind: &Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Int32 | Kind::Uint32 | Kind::Int64 | Kind::Uint64 | Kind::Bool | Kind::Enum(_) => {
            "varint"
        }
        Kind::Sint32 | Kind::Sint64 => "zigzag varint",
        Kind::Fixed32 | Kind::Sfixed32 => "32-bit",
        Kind::Fixed64 | Kind::Sfixed64 => "64-bit",
        Kind::String | Kind::Bytes => "length-delimited",
        Kind::Float => "float",
        Kind::Double => "double",
        Kind::Message(_) => return None,
    })
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn real_oneof(f: &FieldDescriptor) -> Option<String> {
    f.containing_oneof()
        .filter(|o| !o.is_synthetic())
        .map(|o| o.name().to_owned())
}

fn message_differences(w: &MessageDescriptor, r: &MessageDescriptor, out: &mut Vec<String>) {
    let at = |f: &FieldDescriptor| format!("{}.{} (field {})", w.full_name(), f.name(), f.number());
    let writer_oneofs: HashSet<String> = w
        .oneofs()
        .filter(|o| !o.is_synthetic())
        .map(|o| o.name().to_owned())
        .collect();
    let mut moved_into: HashMap<String, usize> = HashMap::new();
    for wf in w.fields() {
        let Some(rf) = r.get_field(wf.number()) else {
            if wf.cardinality() == Cardinality::Required {
                out.push(format!("required field {} removed", at(&wf)));
            }
            if let Some(o) = real_oneof(&wf) {
                out.push(format!("field {} removed from oneof {o}", at(&wf)));
            }
            continue;
        };
        let (wk, rk) = (wf.kind(), rf.kind());
        match (&wk, &rk) {
            (Kind::Message(a), Kind::Message(b)) => {
                if a.full_name() != b.full_name() && !(wf.is_map() && rf.is_map()) {
                    out.push(format!(
                        "field {} changed type from {} to {}",
                        at(&wf),
                        kind_name(&wk),
                        kind_name(&rk)
                    ));
                }
            }
            (Kind::Enum(a), Kind::Enum(b)) if a.full_name() != b.full_name() => {
                out.push(format!(
                    "field {} changed type from {} to {}",
                    at(&wf),
                    kind_name(&wk),
                    kind_name(&rk)
                ));
            }
            _ => {
                if wire_group(&wk).is_none()
                    || wire_group(&rk).is_none()
                    || wire_group(&wk) != wire_group(&rk)
                {
                    out.push(format!(
                        "field {} changed type from {} to {} (another wire type)",
                        at(&wf),
                        kind_name(&wk),
                        kind_name(&rk)
                    ));
                }
            }
        }
        if wf.is_map() != rf.is_map() {
            out.push(format!("field {} changed between map and not map", at(&wf)));
        } else if wf.is_list() != rf.is_list() {
            let delimited = matches!(wk, Kind::String | Kind::Bytes | Kind::Message(_));
            if !delimited {
                out.push(format!(
                    "field {} changed between repeated and singular ({} is not length-delimited)",
                    at(&wf),
                    kind_name(&wk)
                ));
            }
        }
        if rf.cardinality() == Cardinality::Required && wf.cardinality() != Cardinality::Required {
            out.push(format!("field {} made required", at(&wf)));
        }
        match (real_oneof(&wf), real_oneof(&rf)) {
            (Some(o), None) => out.push(format!("field {} taken out of oneof {o}", at(&wf))),
            (None, Some(o)) => {
                if writer_oneofs.contains(&o) {
                    out.push(format!(
                        "field {} moved into the existing oneof {o}",
                        at(&wf)
                    ));
                } else {
                    *moved_into.entry(o).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    for (o, n) in moved_into {
        if n > 1 {
            out.push(format!(
                "{n} existing fields of {} moved into the new oneof {o}",
                w.full_name()
            ));
        }
    }
    for rf in r.fields() {
        if w.get_field(rf.number()).is_none() && rf.cardinality() == Cardinality::Required {
            out.push(format!(
                "required field {}.{} (field {}) added",
                r.full_name(),
                rf.name(),
                rf.number()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(text: &str) -> Result<Proto, String> {
        Proto::parse(text, &[])
    }

    #[test]
    fn text_and_descriptor_compile_to_the_same_canonical_form() -> Result<(), String> {
        let text = "syntax = \"proto3\";\npackage p;\n// a comment\nmessage M { string a = 1; int64 b = 2; message N { bool c = 1; } }\nmessage O { M m = 1; }\n";
        let p = proto(text)?;
        let again = proto(&p.serialized())?;
        assert_eq!(p.serialized(), again.serialized());
        let reformatted = proto(
            "syntax=\"proto3\"; package p; message M {string a=1; int64 b=2; message N {bool c=1;}} message O {M m=1;}",
        )?;
        assert_eq!(p.serialized(), reformatted.serialized());
        assert_eq!(
            p.message_at(&[0, 0]).map(|m| m.full_name().to_owned()),
            Some("p.M.N".into())
        );
        assert_eq!(p.message_named("p.O").map(|(_, i)| i), Some(vec![1]));
        assert_eq!(p.message_named("p.M.N").map(|(_, i)| i), Some(vec![0, 0]));
        assert!(p.message_at(&[2]).is_none());
        Ok(())
    }

    #[test]
    fn errors_name_the_line_and_missing_imports() {
        let e = proto("syntax = \"proto3\";\nmessage M {\n  string a = 1\n}\n")
            .err()
            .unwrap_or_default();
        assert!(e.contains("schema.proto:4:1"), "{e}");
        let e = proto("syntax = \"proto3\";\nimport \"other.proto\";\nmessage M { Other o = 1; }")
            .err()
            .unwrap_or_default();
        assert!(e.contains("other.proto"), "{e}");
        let e = proto("c3ludGF4").err().unwrap_or_default();
        assert!(!e.is_empty());
    }
}
