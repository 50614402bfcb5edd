//! `eddy-bench avro`: the decode cost per event of the AsyncProcess record,
//! Avro (wire format, writer v1 resolved to reader v2) next to JSON, and the
//! embedded end-to-end rate with Avro payloads next to JSON ones, in one run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use eddy::decode::Decoder;
use eddy::decode::avro::{AvroDecoder, encode};
use eddy::schema::SchemaSource;

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
    fn schema_text(&self, _id: u32) -> Result<Option<String>, String> {
        Ok(Some(self.0.clone()))
    }
}

fn event(n: u64, keys: u64) -> serde_json::Value {
    const STATES: [&str; 5] = ["STARTED", "DONE", "ERROR", "RETRY", "REJECTED"];
    serde_json::json!({
        "id": format!("e{n:08}"), "asyncProcessId": format!("k{:06}", (n * 7919) % keys.max(1)),
        "log": "", "description": format!("step {n}"), "params": "{}",
        "time": 1_000_000 + n, "state": STATES.get((n / 7) as usize % 5).copied().unwrap_or("DONE"),
    })
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
    std::fs::create_dir_all(dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
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
    std::fs::write(
        dir.join("eddy.toml"),
        format!(
            "[source]\nkind = \"embedded\"\n\n[http]\nwatch_plugins = false\n\n[[plugin]]\nname = \"agg\"\npath = {:?}\n\n\
             [[pipeline]]\nname = \"p\"\ntopic = \"events\"\nkey_field = \"asyncProcessId\"\n{format}aggregator = \"agg\"\nmax_batch = 2000\n",
            std::path::absolute(&s.component)?.display().to_string()
        ),
    )?;
    let log_path = dir.join("eddy.log");
    let mut child = Command::new(&s.eddy)
        .args(["--log-format", "json", "run", "--config"])
        .arg(dir.join("eddy.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--store"])
        .arg(dir.join("store"))
        .env("RUST_LOG", "warn,eddy::pipeline=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .with_context(|| format!("cannot start {}", s.eddy.display()))?;
    let result = (|| -> Result<f64> {
        let base = format!("http://127.0.0.1:{port}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let t = Instant::now();
        while agent.get(&format!("{base}/healthz")).call().is_err() {
            ensure!(t.elapsed() < Duration::from_secs(30), "eddy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
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
                    let v = event(n, s.keys);
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
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            ensure!(Instant::now() < deadline, "the pipeline did not finish");
            let mut commits: Vec<(u64, u64)> = Vec::new();
            for line in BufReader::new(std::fs::File::open(&log_path)?).lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line?) else {
                    continue;
                };
                let f = v.get("fields").unwrap_or(&v);
                if f.get("message").and_then(|m| m.as_str()) == Some("batch committed") {
                    let n = f
                        .get("events")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0);
                    let at = f
                        .get("committed_at_us")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0);
                    commits.push((at, n));
                }
            }
            commits.sort_unstable();
            if commits.iter().map(|(_, n)| n).sum::<u64>() >= s.events {
                let (Some((t0, n0)), Some((t1, _))) = (commits.first(), commits.last()) else {
                    bail!("no commits");
                };
                let secs = t1.saturating_sub(*t0) as f64 / 1e6;
                return Ok((s.events - n0) as f64 / secs.max(1e-9));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
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
        .map(|i| event(i, 10_000).to_string().into_bytes())
        .collect();
    let avro: Vec<Vec<u8>> = (0..n)
        .map(|i| encode(&writer, 1, &event(i, 10_000)).map_err(|e| anyhow::anyhow!("{e}")))
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
    if let Some(d) = s.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(
        &s.out,
        serde_json::to_string_pretty(&serde_json::json!({
            "decode_json_us": json_us, "decode_avro_us": plain_us, "decode_avro_resolved_us": avro_us,
            "json_bytes": avg(&json), "avro_bytes": avg(&avro),
            "e2e_json_events_per_s": e2e_json, "e2e_avro_events_per_s": e2e_avro,
        }))?,
    )?;
    Ok(())
}
