//! `eddy-bench avro`: the decode cost per event of the AsyncProcess record,
//! Avro (wire format, writer v1 resolved to reader v2) next to JSON, and the
//! embedded end-to-end rate with Avro payloads next to JSON ones, in one run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use eddy::decode::Decoder;
use eddy::decode::avro::{AvroDecoder, encode};
use eddy::schema::SchemaSource;
use eddy_bench::process::{EddyProcess, commit_rate, embedded_config, write_results};
use eddy_bench::workload::execution;

/// Scenario settings.
pub struct Settings {
    /// The eddy binary.
    pub eddy: PathBuf,
    /// The AsyncProcess aggregator component.
    pub component: PathBuf,
    /// `execution-v1.avsc` and `execution-v2.avsc` live here.
    pub schemas: PathBuf,
    /// Events of the end-to-end runs.
    pub events: u64,
    /// Distinct keys.
    pub keys: u64,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

struct Fixed(String);

impl SchemaSource for Fixed {
    fn schema_text(&self, _id: u32) -> Result<Option<String>, eddy::schema::Unreachable> {
        Ok(Some(self.0.clone()))
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
    let json_us = per_event_us(&Decoder::Json, &json)?;
    let resolved = Decoder::Avro(Arc::new(AvroDecoder::new(
        Arc::new(Fixed(v1.clone())),
        Some(v2),
    )));
    let plain = Decoder::Avro(Arc::new(AvroDecoder::new(Arc::new(Fixed(v1)), None)));
    let avro_us = per_event_us(&resolved, &avro)?;
    let plain_us = per_event_us(&plain, &avro)?;
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
            "json_bytes": avg(&json), "avro_bytes": avg(&avro),
            "e2e_json_events_per_s": e2e_json, "e2e_avro_events_per_s": e2e_avro,
        }),
    )?;
    Ok(())
}
