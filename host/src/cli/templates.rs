//! What `eddy plugin new` writes: a small working plugin per language and
//! kind — an aggregator that counts a key's events and keeps the last
//! value, or a handler that forwards events carrying `"forward": true`.

use crate::config::PluginKind;

/// Files of a new plugin: (relative path, contents).
pub fn files(lang: super::Lang, kind: PluginKind, name: &str, sdk: &str) -> Vec<(String, String)> {
    let mut files = code(lang, kind, name, sdk);
    files.push(("fixtures/example.toml".into(), fixture(kind, name)));
    files
}

/// The plugin's first fixture (`eddy plugin test`), the same in every
/// language: it passes as generated.
fn fixture(kind: PluginKind, name: &str) -> String {
    let head = "# A case for `eddy plugin test`: input events, and what they should leave.\n\
                # Add cases beside it (TOML or JSON); see the plugin guide's \"Testing a plugin\".\n";
    match kind {
        PluginKind::Aggregator => format!(
            r#"{head}description = "counts each key's events and keeps the last value"

[[event]]
key = "k"
value = {{ n = 1 }}
expect.state = {{ count = 1, last = {{ n = 1 }} }}

[[event]]
key = "k"
value = {{ n = 2 }}

[[event]]
key = "other"
value = {{ n = 3 }}

[expect]
states = {{ k = {{ count = 2, last = {{ n = 2 }} }}, other = {{ count = 1, last = {{ n = 3 }} }} }}
"#
        ),
        PluginKind::Handler => format!(
            r#"{head}description = "forwards the events that carry \"forward\": true to {name}-out"

[[event]]
key = "k"
value = {{ forward = true, n = 1 }}
expect.emits = [{{ topic = "{name}-out", key = "k", value = {{ forward = true, n = 1 }} }}]

[[event]]
key = "k"
value = {{ forward = false, n = 2 }}
expect.emits = []
"#
        ),
    }
}

/// The plugin's code and build files.
fn code(lang: super::Lang, kind: PluginKind, name: &str, sdk: &str) -> Vec<(String, String)> {
    use super::Lang;
    let out_topic = format!("{name}-out");
    match (lang, kind) {
        (Lang::Rust, kind) => {
            let feature = kind.to_string();
            let cargo = format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
eddy-sdk = {{ path = "{sdk}", features = ["{feature}"] }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

# A plugin is its own workspace.
[workspace]
"#
            );
            let lib = match kind {
                PluginKind::Aggregator => format!(
                    r##"//! {name}: counts each key's events and keeps the last value.

use eddy_sdk::{{Aggregator, Event, Failure, Output}};
use serde::{{Deserialize, Serialize}};

#[derive(Default, Serialize, Deserialize)]
pub struct Tally {{
    pub count: u64,
    pub last: serde_json::Value,
}}

pub struct Plugin;

impl Aggregator for Plugin {{
    type Event = serde_json::Value;
    type State = Tally;

    fn init(_key: &str) -> Tally {{
        Tally::default()
    }}

    fn apply(state: &mut Tally, event: Event<serde_json::Value>, _out: &mut Output) -> Result<(), Failure> {{
        state.count += 1;
        state.last = event.value;
        Ok(())
    }}
}}

eddy_sdk::export_aggregator!(Plugin);

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn counts_events() {{
        let mut h = eddy_sdk::testing::AggregatorHarness::<Plugin>::new();
        assert!(h.push("k", r#"{{"n":1}}"#).is_ok());
        assert!(h.push("k", r#"{{"n":2}}"#).is_ok());
        let state = h.state("k").unwrap_or_default();
        assert_eq!(state["count"], 2);
        assert_eq!(state["last"]["n"], 2);
    }}
}}
"##
                ),
                PluginKind::Handler => format!(
                    r##"//! {name}: forwards events that carry `"forward": true` to `{out_topic}`.

use eddy_sdk::{{Event, Failure, Handler, Output}};

pub struct Plugin;

impl Handler for Plugin {{
    type Event = serde_json::Value;

    fn handle(event: Event<serde_json::Value>, out: &mut Output) -> Result<(), Failure> {{
        if event.value.get("forward") == Some(&serde_json::Value::Bool(true)) {{
            out.emit("{out_topic}", event.key.as_deref(), &event.value)?;
        }}
        Ok(())
    }}
}}

eddy_sdk::export_handler!(Plugin);

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn forwards_only_marked_events() {{
        let mut h = eddy_sdk::testing::HandlerHarness::<Plugin>::new();
        assert_eq!(h.handle("in", None, r#"{{"forward":true}}"#).map(|e| e.len()), Ok(1));
        assert_eq!(h.handle("in", None, r#"{{"forward":false}}"#).map(|e| e.len()), Ok(0));
    }}
}}
"##
                ),
            };
            vec![
                ("Cargo.toml".into(), cargo),
                ("src/lib.rs".into(), lib),
                (".gitignore".into(), "/target\n".into()),
            ]
        }
        (lang, kind) => {
            let manifest = format!(
                "# An Eddy plugin ({lang}).\nname = \"{name}\"\nlang = \"{lang}\"\nkind = \"{kind}\"\n",
                lang = match lang {
                    Lang::Python => "python",
                    Lang::C => "c",
                    _ => "js",
                }
            );
            let (file, code) = match (lang, kind) {
                (Lang::Python, PluginKind::Aggregator) => (
                    "app.py",
                    format!(
                        r#""""{name}: counts each key's events and keeps the last value."""

import eddy_sdk


class Tally:
    def init(self, key):
        return {{"count": 0, "last": None}}

    def apply(self, state, event, out):
        state["count"] += 1
        state["last"] = event.value
        return state


Aggregator = eddy_sdk.aggregator(Tally)
"#
                    ),
                ),
                (Lang::Python, PluginKind::Handler) => (
                    "app.py",
                    format!(
                        r#""""{name}: forwards events that carry "forward": true to {out_topic}."""

import eddy_sdk


class Forward:
    def handle(self, event, out):
        if isinstance(event.value, dict) and event.value.get("forward") is True:
            out.emit("{out_topic}", event.key, event.value)


Handler = eddy_sdk.handler(Forward)
"#
                    ),
                ),
                (Lang::C, PluginKind::Aggregator) => (
                    "plugin.c",
                    format!(
                        r#"/* {name}: counts each key's events and keeps the last value. */
#include "eddy.h"

eddy_json *eddy_init(const char *key) {{
  (void)key;
  eddy_json *state = eddy_object();
  eddy_set(state, "count", eddy_int(0));
  eddy_set(state, "last", eddy_null());
  return state;
}}

eddy_status eddy_apply(eddy_json *state, const eddy_event *event, eddy_out *out) {{
  int64_t count = 0;
  if (!eddy_as_int(eddy_get(state, "count"), &count))
    return eddy_fail(out, EDDY_FATAL, "the state has no count");
  eddy_set(state, "count", eddy_int(count + 1));
  eddy_set(state, "last", eddy_clone(event->value));
  return EDDY_OK;
}}
"#
                    ),
                ),
                (Lang::C, PluginKind::Handler) => (
                    "plugin.c",
                    format!(
                        r#"/* {name}: forwards events that carry "forward": true to {out_topic}. */
#include "eddy.h"

eddy_status eddy_handle(const eddy_event *event, eddy_out *out) {{
  bool forward = false;
  if (eddy_as_bool(eddy_get(event->value, "forward"), &forward) && forward)
    eddy_emit(out, "{out_topic}", event->key, event->value);
  return EDDY_OK;
}}
"#
                    ),
                ),
                (_, PluginKind::Aggregator) => (
                    "plugin.js",
                    format!(
                        r#"// {name}: counts each key's events and keeps the last value.
import {{ defineAggregator }} from "eddy-sdk";

export const aggregator = defineAggregator({{
  init: () => ({{ count: 0, last: null }}),
  apply(state, event) {{
    state.count += 1;
    state.last = event.value;
    return state;
  }},
}});
"#
                    ),
                ),
                (_, PluginKind::Handler) => (
                    "plugin.js",
                    format!(
                        r#"// {name}: forwards events that carry "forward": true to {out_topic}.
import {{ defineHandler }} from "eddy-sdk";

export const handler = defineHandler({{
  handle(event, out) {{
    if (event.value && event.value.forward === true) out.emit("{out_topic}", event.key, event.value);
  }},
}});
"#
                    ),
                ),
            };
            vec![
                ("plugin.toml".into(), manifest),
                (file.into(), code),
                (".gitignore".into(), "/target\n".into()),
            ]
        }
    }
}
