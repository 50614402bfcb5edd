//! The embedded schema registry over Confluent's Schema Registry REST API,
//! served under `/registry` (point a Confluent client at
//! `http://HOST:PORT/registry`). Bodies are read whatever their content type
//! (clients send `application/vnd.schemaregistry.v1+json`); answers carry
//! that content type and Confluent's error bodies
//! `{"error_code": ..., "message": ...}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::schema::{
    Mode, Parsed, Reference, Registered, Registry, RegistryError, SchemaText, SchemaType,
    VersionSpec,
};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A Confluent-style answer.
struct Answer(StatusCode, Value);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            self.1.to_string(),
        )
            .into_response()
    }
}

fn ok(v: Value) -> Answer {
    Answer(StatusCode::OK, v)
}

fn error(code: u32, message: impl Into<String>) -> Answer {
    // Confluent's codes are an HTTP status followed by two digits (40401),
    // or a bare status (409).
    let http = if code < 1000 { code } else { code / 100 };
    let status = u16::try_from(http)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Answer(
        status,
        json!({ "error_code": code, "message": message.into() }),
    )
}

impl From<RegistryError> for Answer {
    fn from(e: RegistryError) -> Self {
        if matches!(e, RegistryError::Store(_)) {
            tracing::error!(error = %e, "schema registry store failed");
        }
        error(e.code(), e.to_string())
    }
}

type Reply = Result<Answer, Answer>;

fn registry(s: &AppState) -> Result<Arc<Registry>, Answer> {
    s.schemas.clone().ok_or_else(|| {
        error(
            40401,
            "this host uses an external schema registry ([registry] url); ask it",
        )
    })
}

/// Runs a registry call off the async workers (it writes to the store).
async fn run(
    s: &AppState,
    f: impl FnOnce(&Registry) -> Result<Value, RegistryError> + Send + 'static,
) -> Reply {
    let r = registry(s)?;
    match tokio::task::spawn_blocking(move || f(&r)).await {
        Ok(Ok(v)) => Ok(ok(v)),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(error(50001, format!("registry task failed: {e}"))),
    }
}

/// The `schema`, `schemaType` and `references` of a request body.
fn schema_of(body: &Bytes) -> Result<SchemaText, Answer> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| error(42201, format!("Invalid schema: the body is not JSON: {e}")))?;
    let kind = match v.get("schemaType") {
        None | Some(Value::Null) => SchemaType::Avro,
        Some(Value::String(t)) => SchemaType::parse(t).ok_or_else(|| {
            error(
                42201,
                format!("Invalid schema: unknown schema type {t:?} (AVRO, PROTOBUF or JSON)"),
            )
        })?,
        Some(other) => {
            return Err(error(
                42201,
                format!("Invalid schema: \"schemaType\" must be a string, not {other}"),
            ));
        }
    };
    let references: Vec<Reference> = match v.get("references") {
        None | Some(Value::Null) => Vec::new(),
        Some(r) => serde_json::from_value(r.clone()).map_err(|e| {
            error(
                42201,
                format!(
                    "Invalid schema: \"references\" must be a list of {{name, subject, version}}: {e}"
                ),
            )
        })?,
    };
    let schema = v
        .get("schema")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| error(42201, "Invalid schema: the body has no \"schema\" string"))?;
    Ok(SchemaText {
        kind,
        schema,
        references,
    })
}

/// A schema as the API shows it: `schemaType` left out for Avro,
/// `references` when empty (as Confluent does). With `format=serialized`, a
/// Protobuf schema is its base64 `FileDescriptorProto`.
fn schema_fields(
    out: &mut serde_json::Map<String, Value>,
    text: &SchemaText,
    parsed: Option<Parsed>,
    serialized: bool,
) {
    let schema = match (serialized, parsed) {
        (true, Some(Parsed::Protobuf(p))) => p.serialized(),
        _ => text.schema.clone(),
    };
    out.insert("schema".into(), Value::String(schema));
    if text.kind != SchemaType::Avro {
        out.insert("schemaType".into(), json!(text.kind.as_str()));
    }
    if !text.references.is_empty() {
        out.insert("references".into(), json!(text.references));
    }
}

fn registered(r: &Registry, v: &Registered, serialized: bool) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("subject".into(), json!(v.subject));
    out.insert("version".into(), json!(v.version));
    out.insert("id".into(), json!(v.id));
    let parsed = serialized.then(|| r.schema(v.id)).flatten();
    schema_fields(&mut out, &v.schema, parsed, serialized);
    Value::Object(out)
}

fn version(v: &str) -> Result<VersionSpec, Answer> {
    VersionSpec::parse(v).map_err(Answer::from)
}

/// Boolean query flags; clients spell them `true`, `True` or `1`.
#[derive(Deserialize, Default)]
struct RawFlags {
    deleted: Option<String>,
    permanent: Option<String>,
    verbose: Option<String>,
    #[serde(rename = "defaultToGlobal")]
    default_to_global: Option<String>,
    format: Option<String>,
}

struct Flags {
    deleted: bool,
    permanent: bool,
    verbose: bool,
    default_to_global: bool,
    /// `format=serialized`: Protobuf schemas as base64 descriptors.
    serialized: bool,
}

fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn flags(
    q: Result<Query<RawFlags>, axum::extract::rejection::QueryRejection>,
) -> Result<Flags, Answer> {
    let Query(f) = q.map_err(|e| error(40002, format!("bad query parameters: {e}")))?;
    Ok(Flags {
        deleted: truthy(f.deleted.as_ref()),
        permanent: truthy(f.permanent.as_ref()),
        verbose: truthy(f.verbose.as_ref()),
        default_to_global: truthy(f.default_to_global.as_ref()),
        serialized: f.format.as_deref() == Some("serialized"),
    })
}

type Q = Result<Query<RawFlags>, axum::extract::rejection::QueryRejection>;

async fn subjects(State(s): State<AppState>, q: Q) -> Reply {
    let f = flags(q)?;
    run(&s, move |r| Ok(json!(r.subjects(f.deleted)))).await
}

async fn register(State(s): State<AppState>, Path(subject): Path<String>, body: Bytes) -> Reply {
    let text = schema_of(&body)?;
    run(&s, move |r| {
        Ok(json!({ "id": r.register(&subject, &text)? }))
    })
    .await
}

async fn lookup(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    q: Q,
    body: Bytes,
) -> Reply {
    let (f, text) = (flags(q)?, schema_of(&body)?);
    run(&s, move |r| {
        let v = r.lookup(&subject, &text)?;
        Ok(registered(r, &v, f.serialized))
    })
    .await
}

async fn versions(State(s): State<AppState>, Path(subject): Path<String>, q: Q) -> Reply {
    let f = flags(q)?;
    run(&s, move |r| Ok(json!(r.versions(&subject, f.deleted)?))).await
}

async fn get_version(
    State(s): State<AppState>,
    Path((subject, v)): Path<(String, String)>,
    q: Q,
) -> Reply {
    let (f, spec) = (flags(q)?, version(&v)?);
    run(&s, move |r| {
        let v = r.version(&subject, spec, f.deleted)?;
        Ok(registered(r, &v, f.serialized))
    })
    .await
}

async fn get_version_schema(
    State(s): State<AppState>,
    Path((subject, v)): Path<(String, String)>,
    q: Q,
) -> Reply {
    let (f, spec) = (flags(q)?, version(&v)?);
    run(&s, move |r| {
        let v = r.version(&subject, spec, f.deleted)?;
        Ok(match v.schema.kind {
            SchemaType::Protobuf => Value::String(v.schema.schema),
            _ => serde_json::from_str(&v.schema.schema).unwrap_or(Value::String(v.schema.schema)),
        })
    })
    .await
}

async fn delete_subject(State(s): State<AppState>, Path(subject): Path<String>, q: Q) -> Reply {
    let f = flags(q)?;
    run(&s, move |r| {
        Ok(json!(r.delete_subject(&subject, f.permanent)?))
    })
    .await
}

async fn delete_version(
    State(s): State<AppState>,
    Path((subject, v)): Path<(String, String)>,
    q: Q,
) -> Reply {
    let (f, spec) = (flags(q)?, version(&v)?);
    run(&s, move |r| {
        Ok(json!(r.delete_version(&subject, spec, f.permanent)?))
    })
    .await
}

async fn referenced_by(
    State(s): State<AppState>,
    Path((subject, v)): Path<(String, String)>,
) -> Reply {
    let spec = version(&v)?;
    run(&s, move |r| Ok(json!(r.referenced_by(&subject, spec)?))).await
}

async fn schema_by_id(State(s): State<AppState>, Path(id): Path<String>, q: Q) -> Reply {
    let f = flags(q)?;
    let id: u32 = id.parse().map_err(|_| error(40403, "Schema not found"))?;
    run(&s, move |r| {
        let text = r.schema_by_id(id)?;
        let mut out = serde_json::Map::new();
        let parsed = f.serialized.then(|| r.schema(id)).flatten();
        schema_fields(&mut out, &text, parsed, f.serialized);
        Ok(Value::Object(out))
    })
    .await
}

async fn id_versions(State(s): State<AppState>, Path(id): Path<String>) -> Reply {
    let id: u32 = id.parse().map_err(|_| error(40403, "Schema not found"))?;
    run(&s, move |r| {
        Ok(json!(
            r.id_versions(id)?
                .into_iter()
                .map(|(subject, version)| json!({ "subject": subject, "version": version }))
                .collect::<Vec<_>>()
        ))
    })
    .await
}

async fn types() -> Reply {
    Ok(ok(json!(
        SchemaType::ALL
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
    )))
}

async fn compatibility(
    State(s): State<AppState>,
    Path((subject, v)): Path<(String, String)>,
    q: Q,
    body: Bytes,
) -> Reply {
    let (f, spec, text) = (flags(q)?, version(&v)?, schema_of(&body)?);
    run(&s, move |r| {
        let messages = r.test(&subject, spec, &text)?;
        Ok(if f.verbose {
            json!({ "is_compatible": messages.is_empty(), "messages": messages })
        } else {
            json!({ "is_compatible": messages.is_empty() })
        })
    })
    .await
}

/// `POST /compatibility/subjects/{s}/versions`: against the versions the
/// subject's level names (the latest, or every one for a transitive level).
async fn compatibility_by_level(
    state: State<AppState>,
    Path(subject): Path<String>,
    q: Q,
    body: Bytes,
) -> Reply {
    compatibility(state, Path((subject, "latest".to_owned())), q, body).await
}

fn mode_of(body: &Bytes) -> Result<Mode, Answer> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| error(42203, format!("the body is not JSON: {e}")))?;
    let level = v
        .get("compatibility")
        .or_else(|| v.get("compatibilityLevel"))
        .and_then(Value::as_str)
        .ok_or_else(|| error(42203, "the body has no \"compatibility\""))?;
    Mode::parse(level).ok_or_else(|| RegistryError::InvalidCompatibility(level.to_owned()).into())
}

async fn get_config(State(s): State<AppState>) -> Reply {
    run(&s, |r| {
        Ok(json!({ "compatibilityLevel": r.global_mode().as_str() }))
    })
    .await
}

async fn put_config(State(s): State<AppState>, body: Bytes) -> Reply {
    let mode = mode_of(&body)?;
    run(&s, move |r| {
        r.set_global_mode(mode)?;
        Ok(json!({ "compatibility": mode.as_str() }))
    })
    .await
}

async fn get_subject_config(State(s): State<AppState>, Path(subject): Path<String>, q: Q) -> Reply {
    let f = flags(q)?;
    run(&s, move |r| match r.subject_mode(&subject) {
        Some(m) => Ok(json!({ "compatibilityLevel": m.as_str() })),
        None if f.default_to_global => {
            Ok(json!({ "compatibilityLevel": r.global_mode().as_str() }))
        }
        None => Err(RegistryError::NoSubjectConfig(subject)),
    })
    .await
}

async fn put_subject_config(
    State(s): State<AppState>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Reply {
    let mode = mode_of(&body)?;
    run(&s, move |r| {
        r.set_subject_mode(&subject, Some(mode))?;
        Ok(json!({ "compatibility": mode.as_str() }))
    })
    .await
}

async fn delete_subject_config(State(s): State<AppState>, Path(subject): Path<String>) -> Reply {
    run(&s, move |r| match r.set_subject_mode(&subject, None)? {
        Some(m) => Ok(json!({ "compatibilityLevel": m.as_str() })),
        None => Err(RegistryError::NoSubjectConfig(subject)),
    })
    .await
}

async fn not_found() -> Answer {
    error(404, "no such registry route")
}

/// The registry's routes, to be nested under `/registry`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/schemas/types", get(types))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_by_level),
        )
        .route("/config", get(get_config).put(put_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .fallback(not_found)
}
