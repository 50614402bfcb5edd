//! `eddy-bench latency`: end-to-end latency under a steady load on the
//! embedded source, and query latency while ingest runs.
//!
//! Phase 1 produces AsyncProcess executions at `rate` events/s over HTTP
//! (one POST per 10 ms) for `seconds`, while one SSE client follows every
//! change and a sampler polls the state of one event in a hundred until it
//! shows: produce → SSE event received, and produce → state visible over
//! HTTP, both measured from just before the POST.
//!
//! Phase 2 keeps ingest at `query_ingest_rate` and sends `get_rate` GET
//! state requests/s, open loop (each request has a scheduled time; latency
//! counts from it, so a stall is not hidden), from one thread over
//! `get_connections` keep-alive connections.

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value is indexed: reading yields Null, writing goes into objects built here"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use eddy_bench::percentile;
use eddy_bench::process::{EddyProcess, embedded_config, write_results};
use eddy_bench::workload::{execution, key};
use serde_json::{Value, json};

/// Scenario settings.
pub struct Settings {
    /// The eddy binary.
    pub eddy: PathBuf,
    /// The AsyncProcess aggregator component.
    pub component: PathBuf,
    /// Events/s of phase 1.
    pub rate: u64,
    /// Seconds of each phase.
    pub seconds: u64,
    /// Distinct keys.
    pub keys: u64,
    /// GET requests/s of phase 2 (0 skips it).
    pub get_rate: u64,
    /// Events/s of ingest during phase 2.
    pub query_ingest_rate: u64,
    /// Keep-alive connections the GET requests go over.
    pub get_connections: usize,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

/// Latency samples in µs, summarised.
fn summary(mut us: Vec<u64>) -> Value {
    us.sort_unstable();
    json!({
        "samples": us.len(),
        "p50_ms": percentile(&us, 0.50) as f64 / 1000.0,
        "p99_ms": percentile(&us, 0.99) as f64 / 1000.0,
        "p999_ms": percentile(&us, 0.999) as f64 / 1000.0,
        "max_ms": us.last().copied().unwrap_or(0) as f64 / 1000.0,
    })
}

/// Sent times by execution id, shared by the producer and the observers.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// A sampled event: its key, its `time` field, when it was sent.
type Sample = (String, u64, Instant);

/// Produces at `rate` events/s for `seconds` starting at event `first`;
/// returns how many were sent. One POST per 10 ms tick.
fn produce(
    (base, agent): (&str, &ureq::Agent),
    (keys, seconds, rate): (u64, u64, u64),
    first: u64,
    sent: Option<&Sent>,
    sample: Option<&std::sync::mpsc::Sender<Sample>>,
) -> Result<u64> {
    let per_tick = (rate / 100).max(1);
    let start = Instant::now();
    let ticks = seconds * 100;
    let url = format!("{base}/v1/topics/events/records");
    let mut n = first;
    for tick in 0..ticks {
        let due = start + Duration::from_millis(tick * 10);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let records: Vec<Value> = (n..n + per_tick)
            .map(|i| json!({ "key": key(i, keys), "value": execution(i, keys) }))
            .collect();
        let body = json!({ "records": records }).to_string();
        let at = Instant::now();
        if let Some(sent) = sent
            && let Ok(mut m) = sent.lock()
        {
            for i in n..n + per_tick {
                m.insert(format!("e{i:08}"), at);
            }
        }
        let r = agent.post(&url).send(body.as_bytes())?;
        ensure!(r.status().is_success(), "produce: {}", r.status());
        if let Some(tx) = sample {
            // One event per POST: its key and its time field.
            let i = n + per_tick / 2;
            let _ = tx.send((key(i, keys), 1_000_000 + i, at));
        }
        n += per_tick;
    }
    Ok(n - first)
}

/// Follows every change over SSE; for each, the latest execution's id
/// gives the event it made visible.
fn follow_sse(base: &str, sent: Sent, stop: Arc<AtomicBool>) -> Result<Vec<u64>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(None)
        .build()
        .into();
    let r = agent
        .get(format!("{base}/v1/pipelines/p/events"))
        .call()
        .context("SSE connect")?;
    let mut lines = BufReader::new(r.into_body().into_reader()).lines();
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(line) = lines.next() else { break };
        let line = line?;
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let now = Instant::now();
        let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        let id = v["state"]["executions"]
            .as_array()
            .and_then(|e| e.last())
            .and_then(|e| e["id"].as_str())
            .map(str::to_owned);
        if let Some(id) = id
            && let Some(at) = sent.lock().ok().and_then(|mut m| m.remove(&id))
        {
            out.push(now.duration_since(at).as_micros() as u64);
        }
    }
    Ok(out)
}

/// Polls the state of each sampled event until it shows.
fn sample_http(base: &str, rx: std::sync::mpsc::Receiver<Sample>) -> Vec<u64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut out = Vec::new();
    for (key, time, at) in rx {
        let url = format!("{base}/v1/pipelines/p/state/{key}");
        let give_up = Instant::now() + Duration::from_secs(10);
        while Instant::now() < give_up {
            let seen = agent
                .get(&url)
                .call()
                .ok()
                .filter(|r| r.status() == 200)
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["lastUpdate"].as_u64().or(v["last_update"].as_u64()))
                .is_some_and(|t| t >= time);
            if seen {
                out.push(at.elapsed().as_micros() as u64);
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    out
}

/// Open-loop GETs at `rate`/s for the scenario's seconds, from one thread
/// (a current-thread tokio runtime) over `connections` keep-alive
/// connections, so the load generator takes as little of the machine as it
/// can. Request `i` is due at `start + i / rate`; a request sent late (it
/// waited for a free connection: the server is slow) counts from its due
/// time, so a stall is not hidden. Returns the latencies (µs) and
/// the count of failed requests.
fn query_load(s: &Settings, base: &str, rate: u64, connections: usize) -> Result<(Vec<u64>, u64)> {
    let addr = base
        .strip_prefix("http://")
        .context("base URL is not http://")?
        .to_owned();
    let total = rate.saturating_mul(s.seconds);
    let keys = s.keys;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..connections.max(1) {
            let (addr, next) = (addr.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut conn = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    // tokio's timer ticks in milliseconds: wake a tick early
                    // and start the clock at the send (or at the due time
                    // when sent late), so timer lag is not taken for server
                    // latency and waiting for the server still is.
                    tokio::time::sleep_until(due - Duration::from_millis(1)).await;
                    let sent = tokio::time::Instant::now().min(due);
                    if conn.is_none() {
                        conn = connect(&addr).await.ok();
                    }
                    let Some(sender) = conn.as_mut() else {
                        errors += 1;
                        continue;
                    };
                    let path = format!("/v1/pipelines/p/state/{}", key(i * 31, keys));
                    match get(sender, &addr, &path).await {
                        Ok(status) if status == 200 || status == 404 => {
                            lat.push(sent.elapsed().as_micros() as u64);
                        }
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            conn = None;
                        }
                    }
                }
                (lat, errors)
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await?;
            all.extend(l);
            errors += e;
        }
        Ok((all, errors))
    })
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>;

async fn connect(addr: &str) -> Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get(sender: &mut Sender, host: &str, path: &str) -> Result<u16> {
    use http_body_util::BodyExt;
    sender.ready().await?;
    let req = hyper::Request::get(path)
        .header("host", host)
        .body(http_body_util::Empty::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// Runs the scenario and prints the table.
pub fn run(s: &Settings) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("eddy-bench-latency-{}", std::process::id()));
    let config = embedded_config(&s.component, "", "")?;
    let p = EddyProcess::start(&s.eddy, &dir, &config, "warn")?;

    // Phase 1: steady ingest, SSE follower, HTTP sampler.
    let sent: Sent = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sse = {
        let (base, sent, stop) = (p.base.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || follow_sse(&base, sent, stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    let (tx, rx) = std::sync::mpsc::channel();
    let sampler = {
        let base = p.base.clone();
        std::thread::spawn(move || sample_http(&base, rx))
    };
    let produced = produce(
        (&p.base, &p.agent),
        (s.keys, s.seconds, s.rate),
        0,
        Some(&sent),
        Some(&tx),
    )?;
    drop(tx);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    // One more change wakes the SSE reader so it sees the stop flag.
    let _ = p
        .agent
        .post(&format!("{}/v1/topics/events/records", p.base))
        .send(
            json!({ "records": [{ "value": execution(u64::MAX / 4, s.keys) }] })
                .to_string()
                .as_bytes(),
        );
    let sse_us = sse
        .join()
        .map_err(|_| anyhow::anyhow!("SSE thread panicked"))??;
    let http_us = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler thread panicked"))?;

    // Phase 2: GET load while ingest runs.
    let mut queries = Value::Null;
    if s.get_rate > 0 {
        let ingest = {
            let (base, agent) = (p.base.clone(), p.agent.clone());
            let load = (s.keys, s.seconds, s.query_ingest_rate);
            std::thread::spawn(move || produce((&base, &agent), load, produced + 1, None, None))
        };
        let started = Instant::now();
        let (lat, errors) = query_load(s, &p.base, s.get_rate, s.get_connections)?;
        let achieved = lat.len() as f64 / started.elapsed().as_secs_f64();
        let ingested = ingest
            .join()
            .map_err(|_| anyhow::anyhow!("ingest thread panicked"))??;
        let mut q = summary(lat);
        q["requests_per_s"] = json!(achieved);
        q["errors"] = json!(errors);
        q["ingest_events_per_s"] = json!(ingested as f64 / s.seconds as f64);
        queries = q;
    }
    let results = json!({
        "rate": s.rate, "seconds": s.seconds, "keys": s.keys, "produced": produced,
        "produce_to_sse": summary(sse_us),
        "produce_to_http": summary(http_us),
        "queries": queries,
        "peak_rss_mib": p.peak_rss_kib().map(|k| k as f64 / 1024.0),
    });
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
    let row = |name: &str, v: &Value| {
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            v["samples"],
            v["p50_ms"].as_f64().unwrap_or(0.0),
            v["p99_ms"].as_f64().unwrap_or(0.0),
            v["p999_ms"].as_f64().unwrap_or(0.0),
            v["max_ms"].as_f64().unwrap_or(0.0)
        );
    };
    println!(
        "| latency at {} events/s, {} s, {} keys | samples | p50 ms | p99 ms | p99.9 ms | max ms |",
        s.rate, s.seconds, s.keys
    );
    println!("|---|---:|---:|---:|---:|---:|");
    row("produce → SSE event received", &results["produce_to_sse"]);
    row(
        "produce → state visible over HTTP",
        &results["produce_to_http"],
    );
    if !results["queries"].is_null() {
        row(
            &format!(
                "GET state at {} req/s (achieved {:.0}) with ingest at {} events/s",
                s.get_rate,
                results["queries"]["requests_per_s"].as_f64().unwrap_or(0.0),
                s.query_ingest_rate
            ),
            &results["queries"],
        );
    }
    println!(
        "peak RSS: {:.0} MiB",
        results["peak_rss_mib"].as_f64().unwrap_or(0.0)
    );
    write_results(&s.out, &results)?;
    Ok(())
}
