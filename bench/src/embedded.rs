//! `eddy-bench embedded`: the embedded path (embedded log → decode → Rust
//! aggregator component → fjall commit) next to its two ceilings, in one run.
//! The log is filled over HTTP first by a host with no pipeline; the measured
//! phase is a second host's pipeline working through it. Its ceilings:
//!
//! - the same fold compiled natively into this binary, over the same events
//!   in the same micro-batches, states kept in memory (what the work costs
//!   without WebAssembly, a store or HTTP) — once with a JSON state (the
//!   0.1.0 boundary) and once through the 0.2.0 boundary the Rust SDK uses
//!   (MessagePack, resident decoded states): the same state format as the
//!   component's;
//! - raw fjall: write batches of the states that fold produced, batch for
//!   batch, into one keyspace (what the store costs without Eddy's
//!   bookkeeping).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use async_process_aggregator::AsyncProcessAggregator;
use eddy_bench::process::{
    BatchCommit, EddyProcess, commit_rate, embedded_config_with, write_results,
};
use eddy_bench::workload::{execution, key};
use serde_json::json;

/// Scenario settings.
pub struct Settings {
    /// The eddy binary.
    pub eddy: PathBuf,
    /// The AsyncProcess aggregator component.
    pub component: PathBuf,
    /// Events.
    pub events: u64,
    /// Distinct keys.
    pub keys: u64,
    /// Eddy's `max_batch`, when not its default (batches then grow under a
    /// backlog up to it, see `batch_target_ms`).
    pub max_batch: Option<usize>,
    /// The plugin's `memory_mb` (its resident states take a quarter).
    pub memory_mb: u64,
    /// The plugin's `resident_state_mb`, when not its default.
    pub resident_mb: Option<u64>,
    /// Also run the pipeline with every event traced (a `traceparent` on
    /// each record) and its spans exported over OTLP to a sink in this
    /// process, next to the plain run.
    pub traced: bool,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

/// Per batch, the final state of each key it touched.
type Written = Vec<Vec<(String, Vec<u8>)>>;

/// A key's events of a batch, as the SDK's native events.
type KeyGroup<'a> = (&'a str, Vec<eddy_sdk::Event<String>>);

/// A batch's events grouped by key, in order of first appearance (the JSON
/// values checked, as Eddy checks them).
fn grouped(batch: &[(String, String)]) -> Result<Vec<KeyGroup<'_>>> {
    let mut order: Vec<KeyGroup<'_>> = Vec::new();
    let mut slot: HashMap<&str, usize> = HashMap::new();
    for (offset, (k, v)) in batch.iter().enumerate() {
        serde_json::from_str::<serde::de::IgnoredAny>(v)?;
        let i = *slot.entry(k.as_str()).or_insert_with(|| {
            order.push((k.as_str(), Vec::new()));
            order.len() - 1
        });
        if let Some((_, events)) = order.get_mut(i) {
            events.push(eddy_sdk::Event {
                topic: "events".into(),
                partition: 0,
                offset: offset as i64,
                timestamp_ms: 0,
                key: Some(k.clone()),
                headers: Vec::new(),
                schema_id: None,
                value: v.clone(),
            });
        }
    }
    Ok(order)
}

/// The fold in native code with a JSON state (the 0.1.0 boundary): decode,
/// group by key, apply, keep states; in micro-batches of the sizes Eddy's
/// worker used.
fn native_json(values: &[(String, String)], batches: &[usize]) -> Result<f64> {
    let mut states: HashMap<String, String> = HashMap::new();
    let started = Instant::now();
    let mut rest = values;
    for &n in batches {
        let (batch, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        for (k, events) in grouped(batch)? {
            let (state, _) = eddy_sdk::runtime::apply_json::<AsyncProcessAggregator>(
                k,
                states.get(k).map(String::as_str),
                events,
            )
            .map_err(|f| anyhow::anyhow!("native fold: {f}"))?;
            states.insert(k.to_owned(), state);
        }
    }
    Ok(values.len() as f64 / started.elapsed().as_secs_f64())
}

/// The fold in native code through the 0.2.0 boundary (MessagePack state,
/// resident decoded states named by version), the Rust SDK's own: the same
/// state format as the component's. Returns its rate and the states each
/// batch wrote.
fn native_packed(
    values: &[(String, String)],
    batches: &[usize],
    resident_bytes: u64,
) -> Result<(f64, Written)> {
    let mut resident = eddy_sdk::runtime::Resident::with_budget(resident_bytes);
    let mut states: HashMap<String, (Vec<u8>, u64)> = HashMap::new();
    let mut version = 0;
    let mut written = Vec::new();
    let started = Instant::now();
    let mut rest = values;
    for &n in batches {
        let (batch, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        let calls: Vec<eddy_sdk::runtime::KeyEvents> = grouped(batch)?
            .into_iter()
            .map(|(k, events)| {
                version += 1;
                let current = states.get(k);
                eddy_sdk::runtime::KeyEvents {
                    key: k.to_owned(),
                    state: current.map(|(s, _)| s.clone()),
                    version: current.map_or(0, |(_, v)| *v),
                    next_version: version,
                    events,
                }
            })
            .collect();
        let keys: Vec<(String, u64)> = calls
            .iter()
            .map(|c| (c.key.clone(), c.next_version))
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for ((k, v), r) in keys
            .into_iter()
            .zip(eddy_sdk::runtime::fold::<AsyncProcessAggregator>(
                &mut resident,
                calls,
            ))
        {
            let (state, _) = r.map_err(|f| anyhow::anyhow!("native fold: {f}"))?;
            states.insert(k.clone(), (state.clone(), v));
            out.push((k, state));
        }
        written.push(out);
    }
    Ok((
        values.len() as f64 / started.elapsed().as_secs_f64(),
        written,
    ))
}

/// The same states written straight to fjall, one write batch per batch.
fn raw_fjall(dir: &std::path::Path, written: &Written, events: usize) -> Result<f64> {
    let db = fjall::Database::builder(dir).open()?;
    let ks = db.keyspace("state", fjall::KeyspaceCreateOptions::default)?;
    let started = Instant::now();
    for batch in written {
        let mut b = db.batch().durability(Some(fjall::PersistMode::Buffer));
        for (k, v) in batch {
            b.insert(&ks, k.as_bytes(), v.as_slice());
        }
        b.commit()?;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// What an embedded run measured.
pub struct Run {
    /// Events/s from the first batch commit to the last.
    pub rate: f64,
    /// Every batch commit.
    pub commits: Vec<BatchCommit>,
    /// Peak RSS of the pipeline's host, KiB.
    pub rss_kib: u64,
    /// Events/s of filling the log over HTTP.
    pub produce_rate: f64,
}

/// Eddy on the embedded log over `values` (key, JSON): the log (of
/// `partitions` partitions) is filled first by a host with no pipeline, so
/// the measured phase is a second host's pipeline alone (decode →
/// aggregator → commit), not the producer endpoint competing with it for
/// the two cores.
///
/// # Errors
/// When a host fails or does not commit every event.
pub fn run_embedded(
    eddy: &Path,
    component: &Path,
    values: &[(String, String)],
    partitions: u32,
    plugin: &str,
    pipeline: &str,
    dir: &Path,
) -> Result<Run> {
    run_embedded_with(
        eddy,
        component,
        values,
        partitions,
        (plugin, pipeline),
        dir,
        None,
    )
}

/// An OTLP/HTTP sink that answers every export with 200 and keeps nothing:
/// what exporting costs the host, without a collector's own cost.
///
/// # Errors
/// The port cannot be bound.
fn otlp_sink() -> Result<u16> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut reader = BufReader::new(conn.try_clone()?);
                let mut conn = conn;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line)? == 0 {
                            return Ok(());
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = l.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    reader.read_exact(&mut body)?;
                    conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    )?;
                }
            });
        }
    });
    Ok(port)
}

/// As [`run_embedded`]; with `trace` (an OTLP sink's port) each record
/// carries its own sampled `traceparent` and the host exports its spans
/// there.
fn run_embedded_with(
    eddy: &Path,
    component: &Path,
    values: &[(String, String)],
    partitions: u32,
    (plugin, pipeline): (&str, &str),
    dir: &Path,
    trace: Option<u16>,
) -> Result<Run> {
    let fill_config = format!(
        "[source]\nkind = \"embedded\"\n\n[[source.topics]]\nname = \"events\"\npartitions = {partitions}\n\n[http]\nwatch_plugins = false\n"
    );
    let mut filler = EddyProcess::start(eddy, &dir.join("eddy"), &fill_config, "warn")?;
    let url = format!("{}/v1/topics/events/records", filler.base);
    let filling = Instant::now();
    for (c, chunk) in values.chunks(2_000).enumerate() {
        let records: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let n = c * 2_000 + i + 1;
                let value = serde_json::from_str::<serde_json::Value>(v).unwrap_or_default();
                if trace.is_some() {
                    json!({
                        "key": k, "value": value,
                        "headers": { "traceparent": format!("00-{n:032x}-{n:016x}-01") },
                    })
                } else {
                    json!({ "key": k, "value": value })
                }
            })
            .collect();
        let r = filler
            .agent
            .post(&url)
            .send(json!({ "records": records }).to_string().as_bytes())?;
        ensure!(r.status().is_success(), "produce: {}", r.status());
    }
    let produce_rate = values.len() as f64 / filling.elapsed().as_secs_f64();
    filler.terminate()?;
    drop(filler);

    let mut config = embedded_config_with(component, "", plugin, pipeline)?;
    if let Some(port) = trace {
        config.push_str(&format!(
            "\n[tracing]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n"
        ));
    }
    let mut host = EddyProcess::start(
        eddy,
        &dir.join("eddy"),
        &config,
        "warn,eddy::pipeline=debug",
    )?;
    let commits = host.wait_committed(values.len() as u64, Duration::from_secs(1_800))?;
    Ok(Run {
        rate: commit_rate(&commits),
        rss_kib: host.peak_rss_kib().unwrap_or(0),
        commits,
        produce_rate,
    })
}

/// Runs the scenario and prints the table.
pub fn run(s: &Settings) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("eddy-bench-embedded-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let values: Vec<(String, String)> = (0..s.events)
        .map(|n| (key(n, s.keys), execution(n, s.keys).to_string()))
        .collect();
    let Run {
        rate: eddy_rate,
        commits,
        rss_kib: rss,
        produce_rate,
    } = run_embedded(
        &s.eddy,
        &s.component,
        &values,
        4,
        &format!(
            "memory_mb = {}\n{}",
            s.memory_mb,
            s.resident_mb
                .map(|r| format!("resident_state_mb = {r}\n"))
                .unwrap_or_default()
        ),
        &s.max_batch
            .map(|m| format!("max_batch = {m}\n"))
            .unwrap_or_default(),
        &dir,
    )?;

    // The same run with every event traced and its spans exported.
    let traced = if s.traced {
        let sink = otlp_sink()?;
        let tdir = dir.join("traced");
        std::fs::create_dir_all(&tdir)?;
        Some(run_embedded_with(
            &s.eddy,
            &s.component,
            &values,
            4,
            (&format!("memory_mb = {}\n", s.memory_mb), ""),
            &tdir,
            Some(sink),
        )?)
    } else {
        None
    };

    // The ceilings, over the same events in the same batches.
    let batches: Vec<usize> = commits.iter().map(|c| c.events as usize).collect();
    let json_rate = native_json(&values, &batches)?;
    let (native_rate, written) = native_packed(&values, &batches, s.memory_mb << 18)?;
    let fjall_rate = raw_fjall(&dir.join("fjall"), &written, values.len())?;
    let _ = std::fs::remove_dir_all(&dir);
    let mean_batch = values.len() as f64 / batches.len().max(1) as f64;

    println!(
        "| embedded path ({} events, {} keys, {} batches of {mean_batch:.0} on average) | events/s | Eddy vs this |",
        s.events,
        s.keys,
        batches.len()
    );
    println!("|---|---:|---:|");
    println!(
        "| native fold in this binary, JSON state (the 0.1.0 boundary) | {json_rate:.0} | {:.2}× |",
        eddy_rate / json_rate
    );
    println!(
        "| native fold in this binary, MessagePack + resident states (the component's 0.2.0 boundary) | {native_rate:.0} | {:.2}× |",
        eddy_rate / native_rate
    );
    println!(
        "| raw fjall write batches of the fold's states | {fjall_rate:.0} | {:.2}× |",
        eddy_rate / fjall_rate
    );
    println!("| Eddy: log → decode → Rust component → fjall commit | {eddy_rate:.0} | 1.00× |");
    if let Some(t) = &traced {
        println!(
            "| Eddy, every event traced (`traceparent`) and its spans exported over OTLP | {:.0} | {:.2}× |",
            t.rate,
            eddy_rate / t.rate
        );
    }
    println!(
        "Filling the log over HTTP beforehand (2,000 records per request): {produce_rate:.0} events/s"
    );
    println!(
        "Eddy's peak RSS: {:.0} MiB (plugin memory_mb = {}, a quarter of it for resident states)",
        rss as f64 / 1024.0,
        s.memory_mb
    );
    write_results(
        &s.out,
        &json!({
            "events": s.events, "keys": s.keys, "max_batch": s.max_batch,
            "batches": batches.len(), "mean_batch": mean_batch,
            "memory_mb": s.memory_mb,
            "resident_state_mb": s.resident_mb,
            "native_json_events_per_s": json_rate,
            "native_events_per_s": native_rate,
            "eddy_vs_native_json": eddy_rate / json_rate,
            "raw_fjall_events_per_s": fjall_rate,
            "eddy_events_per_s": eddy_rate,
            "eddy_vs_native": eddy_rate / native_rate,
            "eddy_vs_raw_fjall": eddy_rate / fjall_rate,
            "eddy_peak_rss_kib": rss,
            "produce_events_per_s": produce_rate,
            "traced_events_per_s": traced.as_ref().map(|t| t.rate),
        }),
    )?;
    Ok(())
}
