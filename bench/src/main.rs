//! `eddy-bench`: Eddy's benchmark harness.
//!
//! `eddy-bench plugins` measures the AsyncProcess aggregator as WebAssembly
//! components built from Rust, Python and JavaScript, at batch sizes 1, 100
//! and 1,000, next to the same fold compiled natively into this binary, in
//! one run (so the ratios survive a noisy machine). Prints a table and
//! writes a JSON result file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use eddy::config::{Grants, PluginConfig, PluginKind};
use eddy::execute::bindings::Event;
use eddy::execute::{Instance, Runtime};

#[derive(Parser)]
#[command(name = "eddy-bench", about = "Eddy's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plugin call cost per language and batch size, next to native code.
    Plugins {
        /// Components as `label=path` (e.g. `rust=target/plugins/async-process-aggregator.wasm`).
        #[arg(long = "component", value_parser = parse_component)]
        components: Vec<(String, PathBuf)>,
        /// Batch sizes (events per call).
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        batches: Vec<usize>,
        /// Time spent measuring each cell, in milliseconds.
        #[arg(long, default_value_t = 1500)]
        millis: u64,
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/plugins.json")]
        out: PathBuf,
    },
}

fn parse_component(s: &str) -> Result<(String, PathBuf), String> {
    let (label, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected label=path, got {s:?}"))?;
    Ok((label.to_owned(), PathBuf::from(path)))
}

/// One batch of AsyncProcess executions for one key.
fn events(n: usize) -> Vec<Event> {
    let states = ["ACCEPTED", "STARTED", "RETRY", "ERROR", "DONE"];
    (0..n)
        .map(|i| {
            let value = serde_json::json!({
                "id": format!("e{i}"), "asyncProcessId": "bench",
                "time": 1_700_000_000_000i64 + ((i * 7919) % 1000) as i64,
                "state": states.get(i % states.len()).copied().unwrap_or("DONE"),
                "description": "benchmark step", "log": "", "params": "{}",
            });
            Event {
                topic: "async-process-execution".into(),
                partition: 0,
                offset: i as i64,
                timestamp_ms: 0,
                key: Some("bench".into()),
                headers: Vec::new(),
                schema_id: None,
                value: value.to_string(),
            }
        })
        .collect()
}

struct Cell {
    label: String,
    batch: usize,
    calls: u64,
    elapsed: Duration,
}

impl Cell {
    fn per_call_us(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }
    fn events_per_s(&self) -> f64 {
        (self.calls as f64 * self.batch as f64) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn measure(
    label: &str,
    batch: usize,
    budget: Duration,
    mut call: impl FnMut() -> Result<()>,
) -> Result<Cell> {
    call()?; // warm up (first call instantiates)
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < budget || calls < 3 {
        call()?;
        calls += 1;
    }
    Ok(Cell {
        label: label.to_owned(),
        batch,
        calls,
        elapsed: started.elapsed(),
    })
}

fn plugins(
    components: Vec<(String, PathBuf)>,
    batches: Vec<usize>,
    millis: u64,
    out: PathBuf,
) -> Result<()> {
    let budget = Duration::from_millis(millis);
    let runtime = Runtime::new()?;
    let mut instances = Vec::new();
    for (label, path) in &components {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let config = PluginConfig {
            name: label.clone(),
            path: path.clone(),
            timeout_ms: 60_000,
            memory_mb: 1024,
            max_output_bytes: usize::MAX,
            max_retries: 0,
            retry_backoff_ms: 0,
            grants: Grants::default(),
        };
        let compile = Instant::now();
        let plugin = runtime.load(
            &config,
            &path.display().to_string(),
            &bytes,
            Some(PluginKind::Aggregator),
        )?;
        eprintln!(
            "{label}: {} bytes, compiled in {:.2} s",
            bytes.len(),
            compile.elapsed().as_secs_f64()
        );
        instances.push((label.clone(), Instance::new(Arc::new(plugin))));
    }
    let mut cells = Vec::new();
    for &batch in &batches {
        let evs = events(batch);
        let native_events: Vec<eddy_sdk::Event<String>> = evs
            .iter()
            .map(|e| eddy_sdk::Event {
                topic: e.topic.clone(),
                partition: e.partition,
                offset: e.offset,
                timestamp_ms: e.timestamp_ms,
                key: e.key.clone(),
                headers: Vec::new(),
                schema_id: None,
                value: e.value.clone(),
            })
            .collect();
        cells.push(measure("native", batch, budget, || {
            let r = eddy_sdk::runtime::apply::<async_process_aggregator::AsyncProcessAggregator>(
                "bench",
                None,
                native_events.clone(),
            );
            r.map(drop)
                .map_err(|f| anyhow::anyhow!("native fold failed: {f}"))
        })?);
        for (label, instance) in &mut instances {
            cells.push(measure(label, batch, budget, || {
                instance
                    .apply("bench", None, &evs)
                    .map(drop)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })?);
        }
    }
    println!("| plugin | batch | calls | µs per call | events/s | vs native |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for c in &cells {
        let native = cells
            .iter()
            .find(|n| n.label == "native" && n.batch == c.batch)
            .map_or(1.0, Cell::events_per_s);
        let ratio = c.events_per_s() / native;
        println!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.2}× |",
            c.label,
            c.batch,
            c.calls,
            c.per_call_us(),
            c.events_per_s(),
            ratio
        );
        json.push(serde_json::json!({
            "plugin": c.label, "batch": c.batch, "calls": c.calls,
            "us_per_call": c.per_call_us(), "events_per_s": c.events_per_s(), "ratio_to_native": ratio,
        }));
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    eprintln!("results written to {}", out.display());
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Plugins {
            components,
            batches,
            millis,
            out,
        } => plugins(components, batches, millis, out),
    }
}
