//! `eddy-bench avro`: the decode cost per event of the AsyncProcess record —
//! Avro, Protobuf and JSON Schema in the wire format (each with its writer
//! schema alone, and writer v1 read with reader v2) next to plain JSON — and
//! the embedded end-to-end rate with Avro payloads next to JSON ones, in one
//! run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use eddy::decode::Decoder;
use eddy::decode::avro::{AvroDecoder, encode};
use eddy::decode::json_schema::JsonSchemaDecoder;
use eddy::decode::protobuf::{ProtoReader, ProtobufDecoder};
use eddy::schema::json_schema::JsonSchema;
use eddy::schema::protobuf::Proto;
use eddy::schema::{Reference, SchemaSource, SchemaText, SchemaType, Unreachable};
use eddy_bench::process::{EddyProcess, commit_rate, embedded_config, write_results};
use eddy_bench::workload::execution;

/// Scenario settings.
pub struct Settings {
    /// The eddy binary.
    pub eddy: PathBuf,
    /// The AsyncProcess aggregator component.
    pub component: PathBuf,
    /// `execution-v1.avsc`, `execution-v2.avsc` (and the `.proto` and
    /// `.schema.json` versions) live here.
    pub schemas: PathBuf,
    /// Events of the end-to-end runs.
    pub events: u64,
    /// Distinct keys.
    pub keys: u64,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

/// Writer schemas by id: 1 Avro v1, 2 Protobuf v1 (referencing
/// `state.proto`, subject `state` version 1), 3 JSON Schema v1.
struct Fixed(HashMap<u32, SchemaText>, SchemaText);

impl Fixed {
    fn new(schemas: &Path) -> Result<Fixed> {
        let read = |f: &str| std::fs::read_to_string(schemas.join(f));
        let text = |kind, schema, references| SchemaText {
            kind,
            schema,
            references,
        };
        let state = Reference {
            name: "state.proto".into(),
            subject: "state".into(),
            version: 1,
        };
        Ok(Fixed(
            HashMap::from([
                (1, SchemaText::avro(read("execution-v1.avsc")?)),
                (
                    2,
                    text(
                        SchemaType::Protobuf,
                        read("execution-v1.proto")?,
                        vec![state],
                    ),
                ),
                (
                    3,
                    text(SchemaType::Json, read("execution-v1.schema.json")?, vec![]),
                ),
            ]),
            text(SchemaType::Protobuf, read("state.proto")?, vec![]),
        ))
    }
}

impl SchemaSource for Fixed {
    fn schema_text(&self, id: u32) -> Result<Option<SchemaText>, Unreachable> {
        Ok(self.0.get(&id).cloned())
    }

    fn subject_version(
        &self,
        subject: &str,
        version: u32,
    ) -> Result<Option<SchemaText>, Unreachable> {
        Ok((subject == "state" && version == 1).then(|| self.1.clone()))
    }
}

/// µs per event of `decoder` over `values`, best of three passes.
fn per_event_us(decoder: &Decoder, values: &[Vec<u8>]) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for v in values {
            decoder.decode(v).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / values.len().max(1) as f64);
    }
    Ok(best)
}

fn base64(bytes: &[u8]) -> String {
    eddy::pipeline::dead_letter::base64(bytes)
}

/// Runs eddy on the embedded log with `format`, produces `s.events` events
/// and returns the pipeline's events/s from its first commit to its last.
fn end_to_end(s: &Settings, avro: bool, dir: &Path) -> Result<f64> {
    let format = if avro {
        format!(
            "value_format = \"avro\"\nreader_schema = {:?}\n",
            std::path::absolute(s.schemas.join("execution-v2.avsc"))?
                .display()
                .to_string()
        )
    } else {
        String::new()
    };
    let config = embedded_config(&s.component, "", &format)?;
    let mut eddy = EddyProcess::start(&s.eddy, dir, &config, "warn,eddy::pipeline=debug")?;
    let base = eddy.base.clone();
    let agent = eddy.agent.clone();
    let v1 = std::fs::read_to_string(s.schemas.join("execution-v1.avsc"))?;
    let writer = apache_avro::Schema::parse_str(&v1)?;
    if avro {
        let r = agent
            .post(&format!("{base}/registry/subjects/events-value/versions"))
            .send(serde_json::json!({ "schema": v1 }).to_string().as_bytes())?;
        ensure!(r.status().is_success(), "register: {}", r.status());
    }
    let mut sent = 0u64;
    while sent < s.events {
        let records: Vec<serde_json::Value> = (sent..(sent + 1000).min(s.events))
            .map(|n| {
                let v = execution(n, s.keys);
                let key = v.get("asyncProcessId").cloned();
                if avro {
                    let bytes = encode(&writer, 1, &v).unwrap_or_default();
                    serde_json::json!({ "key": key, "value_base64": base64(&bytes) })
                } else {
                    serde_json::json!({ "key": key, "value": v })
                }
            })
            .collect();
        sent += records.len() as u64;
        let r = agent
            .post(&format!("{base}/v1/topics/events/records"))
            .send(
                serde_json::json!({ "records": records })
                    .to_string()
                    .as_bytes(),
            )?;
        ensure!(r.status().is_success(), "produce: {}", r.status());
    }
    let commits = eddy.wait_committed(s.events, Duration::from_secs(600))?;
    Ok(commit_rate(&commits))
}

/// Runs the scenario and prints the table.
pub fn run(s: &Settings) -> Result<()> {
    let v1 = std::fs::read_to_string(s.schemas.join("execution-v1.avsc"))?;
    let v2 = apache_avro::Schema::parse_str(&std::fs::read_to_string(
        s.schemas.join("execution-v2.avsc"),
    )?)?;
    let writer = apache_avro::Schema::parse_str(&v1)?;
    let n = 100_000u64;
    let json: Vec<Vec<u8>> = (0..n)
        .map(|i| execution(i, 10_000).to_string().into_bytes())
        .collect();
    let avro: Vec<Vec<u8>> = (0..n)
        .map(|i| encode(&writer, 1, &execution(i, 10_000)).map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<Result<_>>()?;
    let source = Arc::new(Fixed::new(&s.schemas)?);
    let proto_v1 = eddy::schema::load(source.as_ref(), 2).map_err(|e| anyhow::anyhow!("{e}"))?;
    let eddy::schema::Parsed::Protobuf(proto_v1) = proto_v1 else {
        anyhow::bail!("schema 2 is not Protobuf");
    };
    let proto_v2 = Arc::new(
        Proto::from_file(&s.schemas.join("execution-v2.proto")).map_err(|e| anyhow::anyhow!(e))?,
    );
    let proto: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            eddy::decode::protobuf::encode(&proto_v1, 2, None, &execution(i, 10_000))
                .map_err(|e| anyhow::anyhow!(e))
        })
        .collect::<Result<_>>()?;
    let json_v1 = JsonSchema::parse(
        &std::fs::read_to_string(s.schemas.join("execution-v1.schema.json"))?,
        &[],
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let json_v2 = Arc::new(
        JsonSchema::parse(
            &std::fs::read_to_string(s.schemas.join("execution-v2.schema.json"))?,
            &[],
        )
        .map_err(|e| anyhow::anyhow!(e))?,
    );
    let json_wire: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            eddy::decode::json_schema::encode(&json_v1, 3, &execution(i, 10_000))
                .map_err(|e| anyhow::anyhow!(e))
        })
        .collect::<Result<_>>()?;
    let json_us = per_event_us(&Decoder::Json, &json)?;
    let resolved = Decoder::Avro(Arc::new(AvroDecoder::new(source.clone(), Some(v2))));
    let plain = Decoder::Avro(Arc::new(AvroDecoder::new(source.clone(), None)));
    let avro_us = per_event_us(&resolved, &avro)?;
    let plain_us = per_event_us(&plain, &avro)?;
    let proto_plain = Decoder::Protobuf(Arc::new(ProtobufDecoder::new(
        source.clone(),
        ProtoReader {
            schema: None,
            message: None,
        },
    )));
    let proto_read = Decoder::Protobuf(Arc::new(ProtobufDecoder::new(
        source.clone(),
        ProtoReader {
            schema: Some(proto_v2),
            message: Some("eddy.example.AsyncProcessExecution".into()),
        },
    )));
    let proto_plain_us = per_event_us(&proto_plain, &proto)?;
    let proto_us = per_event_us(&proto_read, &proto)?;
    let js_plain = Decoder::JsonSchema(Arc::new(JsonSchemaDecoder::new(source.clone(), None)));
    let js_read = Decoder::JsonSchema(Arc::new(JsonSchemaDecoder::new(source, Some(json_v2))));
    let js_plain_us = per_event_us(&js_plain, &json_wire)?;
    let js_us = per_event_us(&js_read, &json_wire)?;
    let dir = std::env::temp_dir().join(format!("eddy-bench-avro-{}", std::process::id()));
    let e2e_json = end_to_end(s, false, &dir.join("json"))?;
    let e2e_avro = end_to_end(s, true, &dir.join("avro"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let avg = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() as f64 / v.len().max(1) as f64;
    println!("| decode, AsyncProcess execution ({n} events) | bytes | µs per event | vs JSON |");
    println!("|---|---:|---:|---:|");
    println!(
        "| JSON (validate, as text) | {:.0} | {json_us:.2} | 1.00× |",
        avg(&json)
    );
    println!(
        "| Avro, writer schema only → JSON | {:.0} | {plain_us:.2} | {:.2}× |",
        avg(&avro),
        plain_us / json_us
    );
    println!(
        "| Avro, writer v1 resolved to reader v2 → JSON | {:.0} | {avro_us:.2} | {:.2}× |",
        avg(&avro),
        avro_us / json_us
    );
    println!(
        "| Protobuf, writer schema only → JSON | {:.0} | {proto_plain_us:.2} | {:.2}× |",
        avg(&proto),
        proto_plain_us / json_us
    );
    println!(
        "| Protobuf, writer v1 read as reader v2 (pinned type) → JSON | {:.0} | {proto_us:.2} | {:.2}× |",
        avg(&proto),
        proto_us / json_us
    );
    println!(
        "| JSON Schema, validated with writer v1 | {:.0} | {js_plain_us:.2} | {:.2}× |",
        avg(&json_wire),
        js_plain_us / json_us
    );
    println!(
        "| JSON Schema, validated with writer v1 and reader v2 | {:.0} | {js_us:.2} | {:.2}× |",
        avg(&json_wire),
        js_us / json_us
    );
    println!();
    println!(
        "| embedded end to end ({} events, {} keys) | events/s | vs JSON |",
        s.events, s.keys
    );
    println!("|---|---:|---:|");
    println!("| JSON payloads | {e2e_json:.0} | 1.00× |");
    println!(
        "| Avro payloads (v1 written, v2 read) | {e2e_avro:.0} | {:.2}× |",
        e2e_avro / e2e_json
    );
    write_results(
        &s.out,
        &serde_json::json!({
            "decode_json_us": json_us, "decode_avro_us": plain_us, "decode_avro_resolved_us": avro_us,
            "decode_protobuf_us": proto_plain_us, "decode_protobuf_reader_us": proto_us,
            "decode_json_schema_us": js_plain_us, "decode_json_schema_reader_us": js_us,
            "json_bytes": avg(&json), "avro_bytes": avg(&avro),
            "protobuf_bytes": avg(&proto), "json_schema_bytes": avg(&json_wire),
            "e2e_json_events_per_s": e2e_json, "e2e_avro_events_per_s": e2e_avro,
        }),
    )?;
    Ok(())
}
