//! `eddy-bench sse`: how many SSE clients one host holds, what each costs in
//! memory, and how long one change takes to reach all of them.
//!
//! Opens `clients` connections to `/v1/pipelines/p/events` (plain sockets,
//! so one benchmark process can hold thousands), checks every one got its
//! `200 text/event-stream`, reads the host's resident memory before and
//! after, then produces one event and reads every stream until the change
//! arrives. The process's open-file limit bounds `clients`: the harness
//! raises its soft limit to the hard limit first.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use eddy_bench::process::{EddyProcess, embedded_config, proc_status_kib, write_results};
use eddy_bench::workload::{execution, key};
use serde_json::json;

/// Scenario settings.
pub struct Settings {
    /// The eddy binary.
    pub eddy: PathBuf,
    /// The AsyncProcess aggregator component.
    pub component: PathBuf,
    /// SSE connections to open.
    pub clients: usize,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS").unwrap_or(0)
}

/// Reads from `s` until `needle` shows up in what was read.
fn read_until(s: &mut TcpStream, needle: &[u8], within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        ensure!(Instant::now() < deadline, "timed out waiting on a stream");
        let n = s.read(&mut buf)?;
        ensure!(n > 0, "the host closed a stream");
        seen.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    Ok(())
}

/// Runs the scenario and prints the table.
pub fn run(s: &Settings) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("eddy-bench-sse-{}", std::process::id()));
    let config = embedded_config(
        &s.component,
        "sse_max_clients = 1000000\nsse_max_per_address = 1000000\nsse_keepalive_secs = 600\n",
        "",
    )?;
    let p = EddyProcess::start(&s.eddy, &dir, &config, "warn")?;
    let addr = p.base.trim_start_matches("http://").to_owned();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(p.pid());
    let request = format!(
        "GET /v1/pipelines/p/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    let started = Instant::now();
    let mut streams = Vec::with_capacity(s.clients);
    for i in 0..s.clients {
        let mut c = TcpStream::connect(&addr)
            .with_context(|| format!("connection {i} (raise the open-file limit?)"))?;
        c.set_read_timeout(Some(Duration::from_secs(30)))?;
        c.write_all(request.as_bytes())?;
        streams.push(c);
    }
    for (i, c) in streams.iter_mut().enumerate() {
        read_until(c, b"\r\n\r\n", Duration::from_secs(60))
            .with_context(|| format!("stream {i}: no response head"))?;
    }
    let opened = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(p.pid());

    let produced = Instant::now();
    let r = p
        .agent
        .post(format!("{}/v1/topics/events/records", p.base))
        .send(
            json!({ "records": [{ "key": key(1, 1), "value": execution(1, 1) }] })
                .to_string()
                .as_bytes(),
        )?;
    ensure!(r.status().is_success(), "produce: {}", r.status());
    for (i, c) in streams.iter_mut().enumerate() {
        read_until(c, b"data:", Duration::from_secs(60))
            .with_context(|| format!("stream {i}: the change never arrived"))?;
    }
    let delivered = produced.elapsed();
    let per_client_kib = after.saturating_sub(before) as f64 / s.clients.max(1) as f64;
    let peak = p.peak_rss_kib().unwrap_or(0);
    drop(streams);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);

    println!("| SSE fan-out | value |");
    println!("|---|---:|");
    println!("| clients held | {} |", s.clients);
    println!(
        "| time to open them all (connect + response head) | {:.0} ms |",
        opened.as_secs_f64() * 1e3
    );
    println!("| host memory per client | {per_client_kib:.1} KiB |");
    println!(
        "| one change produced → read on every stream | {:.0} ms |",
        delivered.as_secs_f64() * 1e3
    );
    println!("| host peak RSS | {:.0} MiB |", peak as f64 / 1024.0);
    write_results(
        &s.out,
        &json!({
            "clients": s.clients,
            "open_ms": opened.as_secs_f64() * 1e3,
            "rss_before_kib": before, "rss_after_kib": after,
            "per_client_kib": per_client_kib,
            "broadcast_to_all_ms": delivered.as_secs_f64() * 1e3,
            "peak_rss_kib": peak,
        }),
    )?;
    Ok(())
}
