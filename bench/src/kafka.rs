//! `eddy-bench kafka`: events/s from a broker into committed state for the
//! AsyncProcess fold, next to a plain rdkafka consumer reading the same
//! topic with no processing, in one run.
//!
//! A tansu broker (in memory) is started on a free port; the topic is
//! filled once; then the raw consumer and Eddy each read all of it in their
//! own consumer group. Eddy's rate comes from its own commit log lines
//! (`batch committed`, with the events and the commit time of each batch).
//! The same events then go through Eddy on its embedded log (as
//! `eddy-bench embedded` runs it), so the broker's cost to Eddy is a ratio
//! of one run.

#![allow(
    clippy::indexing_slicing,
    reason = "only serde_json::Value is indexed: reading yields Null, writing goes into objects built here"
)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use eddy_bench::process::{EddyProcess, commit_rate, free_port, write_results};
use eddy_bench::workload;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Scenario settings.
pub struct Settings {
    /// The eddy binary.
    pub eddy: PathBuf,
    /// The tansu binary.
    pub tansu: PathBuf,
    /// The AsyncProcess aggregator component.
    pub component: PathBuf,
    /// Events in the topic.
    pub events: u64,
    /// Distinct keys.
    pub keys: u64,
    /// Partitions of the topic.
    pub partitions: u32,
    /// A Python with Quix Streams installed: runs the peer (same fold,
    /// RocksDB state) on the same topic.
    pub quix_python: Option<PathBuf>,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

/// A child process killed when dropped.
pub struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) -> Result<()> {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            t.elapsed() < Duration::from_secs(30),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Fills `topic` with `events` AsyncProcess executions over `keys` keys,
/// partitioned by murmur2 of the key as the Java client does; the
/// producer's rate.
pub fn fill(brokers: &str, topic: &str, events: u64, keys: u64) -> Result<f64> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()?;
    let started = Instant::now();
    for n in 0..events {
        let (key, value) = (
            workload::key(n, keys),
            workload::execution(n, keys).to_string(),
        );
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// Reads the whole topic in its own group; events/s from the first record
/// received to the last (the group join is not counted).
fn raw_consumer(brokers: &str, topic: &str, events: u64) -> Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-raw")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first = None;
    let mut seen = 0u64;
    while seen < events {
        ensure!(
            Instant::now() < deadline,
            "raw consumer read {seen} of {events}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                first.get_or_insert_with(Instant::now);
                seen += 1;
            }
            Some(Err(e)) => bail!("raw consumer: {e}"),
            None => {}
        }
    }
    let elapsed = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Ok((events.saturating_sub(1)) as f64 / elapsed.max(1e-9))
}

/// Runs Eddy on the topic; events/s from its first batch commit to the
/// commit that completes the topic.
/// Eddy's rate, its batch count, and the share of the time its worker spent
/// processing batches (the rest it waited on the source).
fn eddy(s: &Settings, brokers: &str, topic: &str, dir: &Path) -> Result<(f64, u64, f64)> {
    let config = format!(
        "[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ngroup_id = \"bench-eddy\"\n\n\
         [source.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\n\
         [http]\nwatch_plugins = false\n\n\
         [[plugin]]\nname = \"agg\"\npath = \"{}\"\n\n\
         [[pipeline]]\nname = \"p\"\ntopic = \"{topic}\"\nkey_field = \"asyncProcessId\"\naggregator = \"agg\"\n",
        std::path::absolute(&s.component)?.display()
    );
    let mut eddy = EddyProcess::start(&s.eddy, dir, &config, "warn,eddy::pipeline=debug")?;
    let commits = eddy.wait_committed(s.events, Duration::from_secs(600))?;
    let (Some(first), Some(last)) = (commits.first(), commits.last()) else {
        bail!("no commits");
    };
    let span_us = last.at_us.saturating_sub(first.at_us);
    let busy_us: u64 = commits.iter().skip(1).map(|c| c.busy_us).sum();
    Ok((
        commit_rate(&commits),
        commits.len() as u64,
        busy_us as f64 / (span_us as f64).max(1.0),
    ))
}

/// Quix Streams doing the same fold over the same topic (`bench/quix`).
fn quix(python: &Path, brokers: &str, topic: &str, events: u64) -> Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("quix/async_process.py");
    let out = Command::new(python)
        .arg(&script)
        .args(["--brokers", brokers, "--topic", topic])
        .args(["--events", &events.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    ensure!(out.status.success(), "the Quix Streams peer failed");
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("Quix Streams peer printed {line:?}"))?;
    ensure!(
        v["events"].as_u64() == Some(events),
        "the Quix Streams peer read {} of {events} events",
        v["events"]
    );
    Ok(v["events_per_s"].as_f64().unwrap_or(0.0))
}

/// A tansu broker (in memory) on a free loopback port, stopped when
/// dropped.
pub struct Broker {
    _process: Killed,
    tansu: PathBuf,
    /// `127.0.0.1:PORT`, for clients.
    pub brokers: String,
    url: String,
}

impl Broker {
    /// Starts one, logging to `dir/broker.log`.
    ///
    /// # Errors
    /// When it cannot start or does not listen within 30 s.
    pub fn start(tansu: &Path, dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let brokers = format!("127.0.0.1:{port}");
        let url = format!("tcp://{brokers}");
        let process = Killed(
            Command::new(tansu)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("broker.log"))?)
                .spawn()
                .with_context(|| format!("cannot start {}", tansu.display()))?,
        );
        wait_port(port)?;
        Ok(Broker {
            _process: process,
            tansu: tansu.to_owned(),
            brokers,
            url,
        })
    }

    /// Creates `topic` with `partitions` and `configs` (`key=value`).
    ///
    /// # Errors
    /// When the broker refuses.
    pub fn create_topic(&self, topic: &str, partitions: u32, configs: &[&str]) -> Result<()> {
        let mut cmd = Command::new(&self.tansu);
        cmd.args(["topic", "create", topic, "--partitions"])
            .arg(partitions.to_string())
            .args(["--broker", &self.url]);
        for c in configs {
            cmd.args(["--config", c]);
        }
        let made = cmd.stdout(Stdio::null()).status()?;
        ensure!(made.success(), "cannot create the topic {topic}");
        Ok(())
    }
}

/// Runs the scenario and prints the table.
pub fn run(s: &Settings) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("eddy-bench-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let broker = Broker::start(&s.tansu, &dir)?;
    let brokers = broker.brokers.clone();
    let topic = "async-process-execution";
    // Quix Streams derives its state's topic settings from these.
    broker.create_topic(
        topic,
        s.partitions,
        &["retention.ms=604800000", "retention.bytes=-1"],
    )?;
    let produce_rate = fill(&brokers, topic, s.events, s.keys)?;
    let raw = raw_consumer(&brokers, topic, s.events)?;
    let (eddy_rate, batches, busy) = eddy(s, &brokers, topic, &dir)?;
    let values: Vec<(String, String)> = (0..s.events)
        .map(|n| {
            (
                workload::key(n, s.keys),
                workload::execution(n, s.keys).to_string(),
            )
        })
        .collect();
    let embedded = crate::embedded::run_embedded(
        &s.eddy,
        &s.component,
        &values,
        s.partitions,
        "",
        "",
        &dir.join("embedded"),
    )?;
    let quix_rate = match &s.quix_python {
        Some(python) => Some(quix(python, &brokers, topic, s.events)?),
        None => None,
    };
    println!(
        "| path ({} events, {} keys, {} partitions) | events/s | vs raw consumer |",
        s.events, s.keys, s.partitions
    );
    println!("|---|---:|---:|");
    println!("| idempotent producer filling the topic | {produce_rate:.0} | |");
    println!("| plain rdkafka consumer, no processing | {raw:.0} | 1.00× |");
    println!(
        "| Eddy: consume → Rust aggregator → fjall commit ({batches} batches) | {eddy_rate:.0} | {:.2}× |",
        eddy_rate / raw
    );
    println!(
        "| Eddy on its embedded log, the same events ({} batches; the broker run is {:.2}× this) | {:.0} | {:.2}× |",
        embedded.commits.len(),
        eddy_rate / embedded.rate,
        embedded.rate,
        embedded.rate / raw
    );
    if let Some(q) = quix_rate {
        println!(
            "| Quix Streams 3: consume → Python fold → RocksDB (Eddy is {:.1}× this) | {q:.0} | {:.2}× |",
            eddy_rate / q,
            q / raw
        );
    }
    println!(
        "\nEddy's worker spent {:.0} % of the run processing batches (decode, plugin calls, commit) \
         and the rest waiting on the consumer.",
        busy * 100.0
    );
    write_results(
        &s.out,
        &serde_json::json!({
            "events": s.events, "keys": s.keys, "partitions": s.partitions,
            "produce_events_per_s": produce_rate,
            "raw_consumer_events_per_s": raw,
            "eddy_events_per_s": eddy_rate,
            "eddy_batches": batches,
            "eddy_busy_share": busy,
            "ratio": eddy_rate / raw,
            "embedded_events_per_s": embedded.rate,
            "broker_vs_embedded": eddy_rate / embedded.rate,
            "quix_events_per_s": quix_rate,
        }),
    )?;
    if std::env::var_os("EDDY_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
