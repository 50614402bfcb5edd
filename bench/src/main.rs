//! `eddy-bench`: Eddy's benchmark harness.
//!
//! `eddy-bench plugins` measures the AsyncProcess aggregator as WebAssembly
//! components built from Rust, Python and JavaScript, at batch sizes 1, 100
//! and 1,000, next to the same fold compiled natively into this binary, in
//! one run (so the ratios survive a noisy machine). Prints a table and
//! writes a JSON result file.
//!
//! `eddy-bench swap` measures commit gaps around plugin swaps under load;
//! `eddy-bench kafka` measures the broker → committed state rate next to a
//! plain rdkafka consumer; `eddy-bench cluster` the cost of cluster mode,
//! the restore rate, a join and a failover.

/// The host's allocator, so the native folds measured here next to Eddy
/// allocate as Eddy does (glibc's malloc spent a third of the native
/// baseline consolidating and splitting chunks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod avro;
mod cluster;
mod embedded;
mod fanout;
mod kafka;
mod latency;
mod plugins;
mod restart;
mod timers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use eddy_bench::percentile;

#[derive(Parser)]
#[command(name = "eddy-bench", about = "Eddy's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The longest gap between two batch commits around plugin swaps, under
    /// load, next to the gaps of the same run without a swap.
    Swap {
        /// The eddy binary.
        #[arg(long, default_value = "target/release/eddy")]
        eddy: PathBuf,
        /// The two components to alternate (same plugin, two versions).
        #[arg(long)]
        v1: PathBuf,
        /// See `v1`.
        #[arg(long)]
        v2: PathBuf,
        /// Events to stream.
        #[arg(long, default_value_t = 300_000)]
        events: u64,
        /// Swaps during the stream.
        #[arg(long, default_value_t = 6)]
        swaps: u32,
        /// Distinct keys (the test plugin's state grows with a key's events).
        #[arg(long, default_value_t = 50_000)]
        keys: u64,
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/swap.json")]
        out: PathBuf,
    },
    /// Events/s from a broker into committed state, next to a plain
    /// rdkafka consumer reading the same topic.
    Kafka {
        /// The eddy binary.
        #[arg(long, default_value = "target/release/eddy")]
        eddy: PathBuf,
        /// The tansu broker binary.
        #[arg(long, env = "TANSU_BIN")]
        tansu: PathBuf,
        /// The AsyncProcess aggregator component.
        #[arg(long, default_value = "target/plugins/async-process-aggregator.wasm")]
        component: PathBuf,
        /// Events in the topic.
        #[arg(long, default_value_t = 500_000)]
        events: u64,
        /// Distinct keys.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Partitions of the topic.
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// A Python with Quix Streams installed, to run the peer on the
        /// same topic (`scripts/bench.sh` makes one in a virtualenv).
        #[arg(long)]
        quix_python: Option<PathBuf>,
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/kafka.json")]
        out: PathBuf,
    },
    /// Cluster mode: one host with and without `[cluster]`, the restore
    /// rate from the state changelog, a join, and a failover after kill -9.
    Cluster {
        /// The eddy binary.
        #[arg(long, default_value = "target/release/eddy")]
        eddy: PathBuf,
        /// The tansu broker binary.
        #[arg(long, env = "TANSU_BIN")]
        tansu: PathBuf,
        /// The AsyncProcess aggregator component.
        #[arg(long, default_value = "target/plugins/async-process-aggregator.wasm")]
        component: PathBuf,
        /// Events in the topic.
        #[arg(long, default_value_t = 300_000)]
        events: u64,
        /// Distinct keys.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Partitions of the topic.
        #[arg(long, default_value_t = 6)]
        partitions: u32,
        /// The group's session timeout, ms.
        #[arg(long, default_value_t = 3_000)]
        session_timeout_ms: u64,
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/cluster.json")]
        out: PathBuf,
    },
    /// Avro decode cost per event next to JSON, and the embedded end-to-end
    /// rate with Avro payloads next to JSON ones.
    Avro {
        /// The eddy binary.
        #[arg(long, default_value = "target/release/eddy")]
        eddy: PathBuf,
        /// The AsyncProcess aggregator component.
        #[arg(long, default_value = "target/plugins/async-process-aggregator.wasm")]
        component: PathBuf,
        /// Directory of `execution-v1.avsc` and `execution-v2.avsc`.
        #[arg(long, default_value = "examples/async-process/schemas")]
        schemas: PathBuf,
        /// Events of the end-to-end runs.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Distinct keys.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/avro.json")]
        out: PathBuf,
    },
    /// The embedded path next to the native fold and raw fjall.
    Embedded {
        /// The eddy binary.
        #[arg(long, default_value = "target/release/eddy")]
        eddy: PathBuf,
        /// The AsyncProcess aggregator component.
        #[arg(long, default_value = "target/plugins/async-process-aggregator.wasm")]
        component: PathBuf,
        /// Events.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Distinct keys.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Eddy's `max_batch` (default: Eddy's own, batches growing under
        /// the backlog as `batch_target_ms` allows).
        #[arg(long)]
        max_batch: Option<usize>,
        /// The aggregator's `memory_mb` (a quarter of it holds resident
        /// states; the product's default is 64).
        #[arg(long, default_value_t = 64)]
        memory_mb: u64,
        /// The aggregator's `resident_state_mb` (default: a quarter of
        /// `memory_mb`; 0 keeps no decoded state between calls).
        #[arg(long)]
        resident_mb: Option<u64>,
        /// Also run it with every event traced and its spans exported over
        /// OTLP (to a sink in this process).
        #[arg(long)]
        traced: bool,
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/embedded.json")]
        out: PathBuf,
    },
    /// End-to-end latency at a steady rate (produce → SSE, produce → state
    /// over HTTP), then GET latency under a request rate while ingest runs.
    Latency {
        /// The eddy binary.
        #[arg(long, default_value = "target/release/eddy")]
        eddy: PathBuf,
        /// The AsyncProcess aggregator component.
        #[arg(long, default_value = "target/plugins/async-process-aggregator.wasm")]
        component: PathBuf,
        /// Events/s of the latency phase.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Seconds of each phase.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Distinct keys.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// GET requests/s of the query phase (0 skips it).
        #[arg(long, default_value_t = 20_000)]
        get_rate: u64,
        /// Events/s of ingest during the query phase.
        #[arg(long, default_value_t = 10_000)]
        query_ingest_rate: u64,
        /// Keep-alive connections the GET requests go over (from one thread).
        #[arg(long, default_value_t = 64)]
        get_connections: usize,
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/latency.json")]
        out: PathBuf,
    },
    /// SSE fan-out: clients held, memory per client, one change to all.
    Sse {
        /// The eddy binary.
        #[arg(long, default_value = "target/release/eddy")]
        eddy: PathBuf,
        /// The AsyncProcess aggregator component.
        #[arg(long, default_value = "target/plugins/async-process-aggregator.wasm")]
        component: PathBuf,
        /// Connections to open (bounded by the open-file limit).
        #[arg(long, default_value_t = 18_000)]
        clients: usize,
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/sse.json")]
        out: PathBuf,
    },
    /// Per-key timers: events/s with and without a timer per key, and
    /// timers fired and folded per second.
    Timers {
        /// The eddy binary.
        #[arg(long, default_value = "target/release/eddy")]
        eddy: PathBuf,
        /// The AsyncProcess aggregator component.
        #[arg(long, default_value = "target/plugins/async-process-aggregator.wasm")]
        component: PathBuf,
        /// Events of the cost runs.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Distinct keys of the cost runs.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Timers of the firing run.
        #[arg(long, default_value_t = 100_000)]
        timers: u64,
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/timers.json")]
        out: PathBuf,
    },
    /// Time from start to ready with many keys in the store.
    Restart {
        /// The eddy binary.
        #[arg(long, default_value = "target/release/eddy")]
        eddy: PathBuf,
        /// The AsyncProcess aggregator component.
        #[arg(long, default_value = "target/plugins/async-process-aggregator.wasm")]
        component: PathBuf,
        /// Keys in the store.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Restarts to time.
        #[arg(long, default_value_t = 3)]
        restarts: u32,
        /// Where to write the JSON results.
        #[arg(long, default_value = "target/bench/restart.json")]
        out: PathBuf,
    },
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
        /// Keys of the state-carried table.
        #[arg(long, default_value_t = 2_000)]
        keys: usize,
        /// Executions each key holds before the state-carried rounds.
        #[arg(long, default_value_t = 20)]
        history: usize,
        /// State-carried rounds (one event per key each).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
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

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn swap(
    eddy: PathBuf,
    v1: PathBuf,
    v2: PathBuf,
    events: u64,
    swaps: u32,
    keys: u64,
    out: PathBuf,
) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("eddy-bench-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let live = dir.join("plugin.wasm");
    std::fs::copy(&v1, &live)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let token = "bench-token";
    std::fs::write(
        dir.join("eddy.toml"),
        format!(
            "[http]\nadmin_token = \"{token}\"\nwatch_plugins = false\n\n[[plugin]]\nname = \"p\"\npath = \"{}\"\n\n\
             [[pipeline]]\nname = \"p\"\ntopic = \"events\"\nkey_field = \"key\"\naggregator = \"p\"\n",
            live.display()
        ),
    )?;
    let log_path = dir.join("eddy.log");
    let mut child = std::process::Command::new(&eddy)
        .args(["--log-format", "json", "run", "--config"])
        .arg(dir.join("eddy.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--store"])
        .arg(dir.join("store"))
        .env("RUST_LOG", "warn,eddy::pipeline=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .with_context(|| format!("cannot start {}", eddy.display()))?;
    let base = format!("http://127.0.0.1:{port}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let ready = Instant::now();
    while agent.get(&format!("{base}/healthz")).call().is_err() {
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(30),
            "eddy did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let components = [std::fs::read(&v2)?, std::fs::read(&v1)?];
    let per_swap = events / u64::from(swaps + 1);
    let mut swap_times = Vec::new();
    let mut sent = 0u64;
    let mut next_swap = per_swap;
    while sent < events {
        let records: Vec<serde_json::Value> = (sent..(sent + 1000).min(events))
            .map(|n| serde_json::json!({ "value": { "key": format!("k{}", n % keys.max(1)), "id": format!("e{n}") } }))
            .collect();
        sent += records.len() as u64;
        let body = serde_json::json!({ "records": records }).to_string();
        let r = agent
            .post(&format!("{base}/v1/topics/events/records"))
            .send(body.as_bytes())?;
        anyhow::ensure!(r.status().is_success(), "produce failed: {}", r.status());
        if sent >= next_swap && (swap_times.len() as u32) < swaps {
            let bytes = components
                .get(swap_times.len() % 2)
                .cloned()
                .unwrap_or_default();
            let started = now_us();
            let r = agent
                .put(&format!("{base}/v1/plugins/p"))
                .header("authorization", &format!("Bearer {token}"))
                .send(&bytes[..])?;
            anyhow::ensure!(r.status().is_success(), "swap failed: {}", r.status());
            swap_times.push((started, now_us()));
            next_swap += per_swap;
        }
    }
    // Wait for the pipeline to drain.
    loop {
        let mut r = agent.get(&format!("{base}/v1/pipelines/p")).call()?;
        let v: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string()?)?;
        if v.get("lag").and_then(serde_json::Value::as_u64) == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut commits: Vec<u64> = std::fs::read_to_string(&log_path)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("message").and_then(|m| m.as_str()) == Some("batch committed"))
        .filter_map(|v| v.get("committed_at_us").and_then(serde_json::Value::as_u64))
        .collect();
    commits.sort_unstable();
    let gaps: Vec<(u64, u64, u64)> = commits
        .windows(2)
        .filter_map(|w| Some((*w.first()?, *w.get(1)?, w.get(1)? - w.first()?)))
        .collect();
    // The gap that spans each swap's completion, and the gaps after it until the next commit.
    let around: Vec<u64> = swap_times
        .iter()
        .map(|(start, end)| {
            gaps.iter()
                .filter(|(a, b, _)| *b >= *start && *a <= end + 100_000)
                .map(|(_, _, g)| *g)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut all: Vec<u64> = gaps.iter().map(|(_, _, g)| *g).collect();
    all.sort_unstable();
    let compile_ms: Vec<u64> = swap_times.iter().map(|(s, e)| (e - s) / 1000).collect();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| batch commits | {} |", commits.len());
    println!(
        "| gap between commits, median | {:.2} ms |",
        percentile(&all, 0.5) as f64 / 1000.0
    );
    println!(
        "| gap between commits, p99 | {:.2} ms |",
        percentile(&all, 0.99) as f64 / 1000.0
    );
    println!(
        "| gap between commits, max (whole run) | {:.2} ms |",
        all.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "| longest gap around a swap (each of {}) | {} ms |",
        around.len(),
        around
            .iter()
            .map(|g| format!("{:.2}", *g as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| upload → swapped (compile + validate, off the hot path) | {compile_ms:?} ms |");
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::json!({
            "commits": commits.len(),
            "gap_median_us": percentile(&all, 0.5),
            "gap_p99_us": percentile(&all, 0.99),
            "gap_max_us": all.last().copied().unwrap_or(0),
            "gap_around_swaps_us": around,
            "upload_to_swap_ms": compile_ms,
        }))?,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Swap {
            eddy,
            v1,
            v2,
            events,
            swaps,
            keys,
            out,
        } => swap(eddy, v1, v2, events, swaps, keys, out),
        Command::Embedded {
            eddy,
            component,
            events,
            keys,
            max_batch,
            memory_mb,
            resident_mb,
            traced,
            out,
        } => embedded::run(&embedded::Settings {
            eddy,
            component,
            events,
            keys,
            max_batch,
            memory_mb,
            resident_mb,
            traced,
            out,
        }),
        Command::Latency {
            eddy,
            component,
            rate,
            seconds,
            keys,
            get_rate,
            query_ingest_rate,
            get_connections,
            out,
        } => latency::run(&latency::Settings {
            eddy,
            component,
            rate,
            seconds,
            keys,
            get_rate,
            query_ingest_rate,
            get_connections,
            out,
        }),
        Command::Sse {
            eddy,
            component,
            clients,
            out,
        } => fanout::run(&fanout::Settings {
            eddy,
            component,
            clients,
            out,
        }),
        Command::Timers {
            eddy,
            component,
            events,
            keys,
            timers,
            out,
        } => timers::run(&timers::Settings {
            eddy,
            component,
            events,
            keys,
            timers,
            out,
        }),
        Command::Restart {
            eddy,
            component,
            keys,
            restarts,
            out,
        } => restart::run(&restart::Settings {
            eddy,
            component,
            keys,
            restarts,
            out,
        }),
        Command::Avro {
            eddy,
            component,
            schemas,
            events,
            keys,
            out,
        } => avro::run(&avro::Settings {
            eddy,
            component,
            schemas,
            events,
            keys,
            out,
        }),
        Command::Kafka {
            eddy,
            tansu,
            component,
            events,
            keys,
            partitions,
            quix_python,
            out,
        } => kafka::run(&kafka::Settings {
            eddy,
            tansu,
            component,
            events,
            keys,
            partitions,
            quix_python,
            out,
        }),
        Command::Cluster {
            eddy,
            tansu,
            component,
            events,
            keys,
            partitions,
            session_timeout_ms,
            out,
        } => cluster::run(&cluster::Settings {
            eddy,
            tansu,
            component,
            events,
            keys,
            partitions,
            session_timeout_ms,
            out,
        }),
        Command::Plugins {
            components,
            batches,
            millis,
            keys,
            history,
            rounds,
            out,
        } => plugins::run(&plugins::Settings {
            components,
            batches,
            millis,
            keys,
            history,
            rounds,
            out,
        }),
    }
}
