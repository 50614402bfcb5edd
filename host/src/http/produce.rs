//! The producer endpoint of the embedded log and `POST {mount}` (create).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiResult, AppError, AppState, blocking};
use crate::route::KeySpec;
use crate::sink::{ProduceError, ProduceRecord};
use crate::source::embedded::AppendError;

fn parse_body(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|e| {
        AppError::bad_request(format!(
            "request body is not valid JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })
}

/// Encodes a record's value with `{topic}-value`'s schema when the topic
/// has that subject in the embedded registry (see
/// [`crate::decode::encode_for_subject`]). Returns `None` for a topic
/// without a subject (the value stays JSON).
fn schema_value(
    s: &AppState,
    topic: &str,
    i: usize,
    value: &Value,
    version: Option<u32>,
    message: Option<&str>,
) -> ApiResult<Option<Vec<u8>>> {
    use crate::decode::EncodeError;
    let Some(registry) = s.schemas.as_ref() else {
        return Ok(None);
    };
    let subject = format!("{topic}-value");
    match crate::decode::encode_for_subject(registry, &subject, version, message, value) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(EncodeError::Registry(crate::schema::RegistryError::SubjectNotFound(_)))
            if version.is_none() =>
        {
            Ok(None)
        }
        Err(e @ EncodeError::NotProtobuf { .. }) => {
            Err(AppError::bad_request(format!("record {i}: {e}")))
        }
        Err(e @ EncodeError::Unparsed(_)) => Err(AppError::internal(e.to_string())),
        Err(e) => Err(AppError::unprocessable(format!("record {i}: {e}"))),
    }
}

/// Turns one JSON record (`{key?, value, headers?, partition?,
/// schema_version?}`) into a [`ProduceRecord`], naming the record's index in
/// errors.
fn record_of(
    s: &AppState,
    topic: &str,
    i: usize,
    v: Value,
) -> ApiResult<(ProduceRecord, Option<Value>)> {
    let at = |m: String| AppError::bad_request(format!("record {i}: {m}"));
    let Value::Object(mut o) = v else {
        return Err(at("must be a JSON object with a \"value\"".into()));
    };
    // Raw bytes (such as a value already in the Avro wire format) come as
    // `value_base64` and are appended unchanged.
    let raw = match o.remove("value_base64") {
        None => None,
        Some(Value::String(b)) => Some(
            crate::pipeline::dead_letter::unbase64(&b)
                .ok_or_else(|| at("\"value_base64\" is not valid base64".into()))?,
        ),
        Some(_) => return Err(at("\"value_base64\" must be a string".into())),
    };
    let value = match (o.remove("value"), raw.is_some()) {
        (Some(v), false) => v,
        (None, true) => Value::Null,
        (Some(_), true) => return Err(at("has both \"value\" and \"value_base64\"".into())),
        (None, false) => return Err(at("has no \"value\" (or \"value_base64\")".into())),
    };
    let key = match o.remove("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.into_bytes()),
        Some(Value::Number(n)) => Some(n.to_string().into_bytes()),
        Some(_) => return Err(at("\"key\" must be a string".into())),
    };
    let partition = match o.remove("partition") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| at("\"partition\" must be a non-negative integer".into()))?,
        ),
        Some(_) => return Err(at("\"partition\" must be a non-negative integer".into())),
    };
    let headers = match o.remove("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(h)) => h
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s.into_bytes())),
                _ => Err(at(format!("header {k:?} must be a string"))),
            })
            .collect::<ApiResult<_>>()?,
        Some(_) => return Err(at("\"headers\" must be an object of strings".into())),
    };
    let version = match o.remove("schema_version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| at("\"schema_version\" must be a positive integer".into()))?,
        ),
        Some(_) => return Err(at("\"schema_version\" must be a positive integer".into())),
    };
    let message = match o.remove("message_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m),
        Some(_) => return Err(at("\"message_type\" must be a string (pkg.Message)".into())),
    };
    let timestamp_ms = match o.remove("timestamp_ms") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_i64().filter(|t| *t > 0).ok_or_else(|| {
            at("\"timestamp_ms\" must be a positive integer (ms since the Unix epoch)".into())
        })?),
        Some(_) => {
            return Err(at(
                "\"timestamp_ms\" must be a positive integer (ms since the Unix epoch)".into(),
            ));
        }
    };
    if let Some(unknown) = o.keys().next() {
        return Err(at(format!(
            "unknown field {unknown:?} (expected key, value or value_base64, headers, partition, schema_version, message_type, timestamp_ms)"
        )));
    }
    let is_raw = raw.is_some();
    let bytes = match raw {
        Some(raw) => raw,
        None => match schema_value(s, topic, i, &value, version, message.as_deref())? {
            Some(encoded) => encoded,
            None => serde_json::to_vec(&value).map_err(AppError::internal)?,
        },
    };
    Ok((
        ProduceRecord {
            timestamp_ms,
            partition,
            key,
            headers,
            value: bytes,
        },
        (!is_raw).then_some(value),
    ))
}

/// Checks that every pipeline reading `topic` can key the record, so a
/// record that would only be dead-lettered is refused up front.
fn check_keys(
    s: &AppState,
    topic: &str,
    i: usize,
    r: &ProduceRecord,
    value: &Value,
) -> ApiResult<()> {
    for (pipeline, spec) in s.consumers(topic) {
        let key = match &r.key {
            Some(k) if matches!(spec, crate::route::KeySpec::RecordKey) => std::str::from_utf8(k)
                .map(|_| ())
                .map_err(|_| crate::route::KeyError::KeyNotUtf8),
            _ => match spec {
                crate::route::KeySpec::RecordKey => Err(crate::route::KeyError::NoRecordKey),
                _ => spec.key_in_value(value).map(|_| ()),
            },
        };
        key.map_err(|e| {
            AppError::unprocessable(format!(
                "record {i}: pipeline {pipeline:?} cannot key it: {e}"
            ))
        })?;
    }
    Ok(())
}

fn produce_error(e: ProduceError) -> AppError {
    match e {
        ProduceError::Log(AppendError::UnknownTopic(t)) => {
            AppError::not_found(format!("topic {t:?} does not exist"))
        }
        e @ (ProduceError::Log(AppendError::BadPartition { .. } | AppendError::BadTopicName(_))
        | ProduceError::BadTopicName(_)) => AppError::bad_request(e.to_string()),
        e @ (ProduceError::Store(_) | ProduceError::Log(AppendError::Store(_))) => {
            AppError::internal(e)
        }
        e @ (ProduceError::Broker(_) | ProduceError::Client(_)) => {
            AppError::unavailable(e.to_string())
        }
        e @ ProduceError::Interrupted(_) => AppError::internal(e),
    }
}

async fn append(s: &AppState, topic: String, mut records: Vec<ProduceRecord>) -> ApiResult<Value> {
    // The embedded log lives in the store: nothing is taken on a low disk.
    if matches!(s.sink, crate::sink::Sink::Embedded(_))
        && let Some(low) = s.store.low_space()
    {
        return Err(AppError::insufficient_storage(low.to_string()));
    }
    // A record without a trace context starts a trace here; its root span
    // ends once the record is stored.
    let mut roots = Vec::new();
    if let Some(ratio) = s.start_traces {
        for r in &mut records {
            if crate::trace::Parent::of(&r.headers).is_none() {
                let (context, root) = crate::trace::start_at_producer(&topic, ratio);
                crate::trace::set_header(&mut r.headers, &context);
                roots.extend(root);
            }
        }
    }
    let offsets = s
        .sink
        .produce(topic, records)
        .await
        .map_err(produce_error)?;
    for root in roots {
        root.end();
    }
    Ok(serde_json::json!({
        "offsets": offsets
            .into_iter()
            .map(|(p, o)| serde_json::json!({"partition": p, "offset": o}))
            .collect::<Vec<_>>()
    }))
}

/// `POST /v1/topics/{topic}/records`: one record, `{"records":[...]}` or an
/// array. Acknowledged only once durable; all or nothing.
pub async fn produce(
    State(s): State<AppState>,
    Path(topic): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    if s.sink
        .partitions(&topic)
        .await
        .map_err(produce_error)?
        .is_none()
    {
        return Err(AppError::not_found(format!(
            "topic {topic:?} does not exist"
        )));
    }
    let items = match parse_body(&body)? {
        Value::Array(items) => items,
        Value::Object(mut o) if o.contains_key("records") => match o.remove("records") {
            Some(Value::Array(items)) if o.is_empty() => items,
            _ => {
                return Err(AppError::bad_request(
                    "\"records\" must be an array and the only field",
                ));
            }
        },
        single @ Value::Object(_) => vec![single],
        _ => {
            return Err(AppError::bad_request(
                "body must be a record object, {\"records\": [...]} or an array of records",
            ));
        }
    };
    if items.is_empty() {
        return Err(AppError::bad_request("no records to produce"));
    }
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let (mut r, value) = record_of(&s, &topic, i, item)?;
        let Some(value) = value else {
            // Raw bytes: keyed by what the pipelines decode from them, if
            // anything; bytes they cannot decode are theirs to dead-letter.
            if r.key.is_none() {
                r.key = s
                    .consumers_of(&topic)
                    .iter()
                    .find_map(|p| {
                        let (json, _) = s.intakes.get(&p.name)?.decoder().decode(&r.value).ok()?;
                        let v: Value = serde_json::from_str(&json).ok()?;
                        KeySpec::new(p.key_field.as_deref()).key_in_value(&v).ok()
                    })
                    .map(String::into_bytes);
            }
            records.push(r);
            continue;
        };
        if r.key.is_none() {
            // Key the record by the field its pipelines key on, so one key's
            // events share a partition (and keep their order) as on Kafka.
            r.key = s
                .consumers(&topic)
                .iter()
                .find_map(|(_, spec)| spec.key_in_value(&value).ok())
                .map(String::into_bytes);
        }
        check_keys(&s, &topic, i, &r, &value)?;
        records.push(r);
    }
    Ok(Json(append(&s, topic, records).await?))
}

#[derive(Deserialize)]
pub struct ReadQuery {
    partition: Option<u32>,
    offset: Option<u64>,
    limit: Option<usize>,
}

/// `GET /v1/topics/{topic}/records?partition=&offset=&limit=`: reads records
/// back (all partitions when `partition` is absent).
pub async fn read_records(
    State(s): State<AppState>,
    Path(topic): Path<String>,
    q: Query<ReadQuery>,
) -> ApiResult<Response> {
    let partitions = s
        .log
        .partitions(&topic)
        .ok_or_else(|| AppError::not_found(format!("topic {topic:?} does not exist")))?;
    if let Some(p) = q.partition
        && p >= partitions
    {
        return Err(AppError::bad_request(format!(
            "topic {topic:?} has {partitions} partitions; partition {p} does not exist"
        )));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let from = q.offset.unwrap_or(0);
    let which: Vec<u32> = q
        .partition
        .map_or_else(|| (0..partitions).collect(), |p| vec![p]);
    let log = s.log.clone();
    blocking(move || {
        let mut out = Vec::new();
        for p in which {
            let end = log.high_watermark(&topic, p);
            let rows = log
                .store()
                .read_log(
                    &topic,
                    p,
                    from,
                    end,
                    limit.saturating_sub(out.len()),
                    usize::MAX,
                )
                .map_err(AppError::internal)?;
            for (offset, r) in rows {
                let (value, raw) = match serde_json::from_slice::<Value>(&r.value) {
                    Ok(v) => (v, Value::Null),
                    Err(_) => (
                        Value::Null,
                        Value::String(crate::pipeline::dead_letter::base64(&r.value)),
                    ),
                };
                let headers: serde_json::Map<String, Value> = r
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.clone(),
                            Value::String(String::from_utf8_lossy(v).into_owned()),
                        )
                    })
                    .collect();
                out.push(serde_json::json!({
                    "partition": p, "offset": offset, "timestamp_ms": r.timestamp_ms,
                    "key": r.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
                    "headers": headers, "value": value, "value_base64": raw,
                }));
            }
        }
        Ok(Json(serde_json::json!({ "records": out })).into_response())
    })
    .await
}

/// `POST {mount}`: creates an entity by producing its first event.
pub async fn create(s: AppState, pipeline: String, body: Bytes) -> ApiResult<Json<Value>> {
    let p = s.pipeline(&pipeline)?.clone();
    let (Some(mount), Some(key_field)) = (p.mount.as_ref(), p.key_field.as_deref()) else {
        return Err(AppError::not_found(
            "this pipeline does not create entities",
        ));
    };
    let Some(create) = mount.create.as_ref() else {
        return Err(AppError::not_found(
            "this pipeline does not create entities",
        ));
    };
    let mut event = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match parse_body(&body)? {
            Value::Object(o) => o,
            _ => return Err(AppError::bad_request("body must be a JSON object")),
        }
    };
    for (k, v) in &create.fields {
        event.insert(k.clone(), v.clone());
    }
    for f in &create.uuid_fields {
        event.insert(f.clone(), Value::String(uuid::Uuid::new_v4().to_string()));
    }
    if let Some(f) = &create.time_field {
        event.insert(f.clone(), Value::from(crate::now_ms()));
    }
    let id = uuid::Uuid::new_v4().to_string();
    // The key field may be a path; set its last segment under the parents.
    let mut target = &mut event;
    let parts: Vec<&str> = key_field.split('.').collect();
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| AppError::internal("empty key_field"))?;
    for part in parents {
        let entry = target
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(serde_json::Map::new());
        }
        target = entry
            .as_object_mut()
            .ok_or_else(|| AppError::internal("key parent is not an object"))?;
    }
    target.insert((*last).to_owned(), Value::String(id.clone()));
    let value = Value::Object(event);
    let bytes = match schema_value(&s, &p.topic, 0, &value, None, None)? {
        Some(encoded) => encoded,
        None => serde_json::to_vec(&value).map_err(AppError::internal)?,
    };
    let record = ProduceRecord {
        timestamp_ms: None,
        partition: None,
        key: Some(id.clone().into_bytes()),
        headers: Vec::new(),
        value: bytes,
    };
    check_keys(&s, &p.topic, 0, &record, &value)?;
    append(&s, p.topic.clone(), vec![record]).await?;
    Ok(Json(serde_json::json!({ "status": "OK", "id": id })))
}
