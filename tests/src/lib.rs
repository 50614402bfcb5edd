//! The end-to-end test harness: starts the real `eddy` binary on free
//! loopback ports with real plugin components, talks to it over HTTP and
//! SSE, kills and restarts it, and cleans up after itself.
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

pub mod chaos;
pub mod fold;
pub mod kafka;
use futures_util::StreamExt;
use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The `eddy` binary under test: `$EDDY_BIN`, else the release build, else the debug build.
pub fn eddy_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("EDDY_BIN") {
        return Ok(PathBuf::from(p));
    }
    for profile in ["release", "debug"] {
        let p = root().join("target").join(profile).join("eddy");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no eddy binary: run `cargo build --release -p eddy` or set EDDY_BIN")
}

/// Builds (once per test process) a plugin crate under `plugins/` with the
/// project's own `eddy plugin build`, returning the component's path.
pub fn plugin(name: &str) -> Result<PathBuf> {
    build_component(
        &root().join("plugins").join(name),
        &name.replace('/', "-"),
        &[],
    )
}

/// Builds a plugin under `plugins/` against the older contract
/// (`eddy plugin build --contract 0.1.0`): a component as a host that
/// predates 0.2.0 runs it.
pub fn plugin_v0_1(name: &str) -> Result<PathBuf> {
    build_component(
        &root().join("plugins").join(name),
        &format!("{}-0.1.0", name.replace('/', "-")),
        &["--contract", "0.1.0"],
    )
}

/// The (event id, version tag) pairs a `versioned-*` test aggregator's
/// state applied, in order.
pub fn versioned_tags(state: &serde_json::Value) -> Vec<(String, String)> {
    state["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e[0].as_str().unwrap_or_default().to_owned(),
                e[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Builds a test component crate under `tests/components/`.
pub fn test_component(name: &str) -> Result<PathBuf> {
    build_component(&root().join("tests/components").join(name), name, &[])
}

fn build_component(dir: &Path, name: &str, args: &[&str]) -> Result<PathBuf> {
    static BUILT: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?;
    let out = root()
        .join("target")
        .join("plugins")
        .join(format!("{name}.wasm"));
    if !built.iter().any(|b| b == name) {
        let status = Command::new(eddy_bin()?)
            .args(["plugin", "build"])
            .arg(dir)
            .arg("--out")
            .arg(&out)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .context("cannot run eddy plugin build")?;
        if !status.success() {
            bail!("eddy plugin build {name} failed");
        }
        built.push(name.to_owned());
    }
    Ok(out)
}

/// Runs the eddy binary with `args` in `dir`, sharing the workspace's wasm
/// build (`CARGO_TARGET_DIR`: the standard library built once); returns
/// whether it succeeded and its output (stdout then stderr).
pub fn run_eddy(args: &[&str], dir: &Path) -> Result<(bool, String)> {
    let out = Command::new(eddy_bin()?)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", root().join("target"))
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// Runs `eddy run` with `config` in a fresh directory until it exits
/// (killed after `within`); returns its exit status and its log.
pub fn run_until_exit(
    config: &str,
    within: Duration,
) -> Result<(std::process::ExitStatus, String)> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("eddy.toml"), config)?;
    let log_path = dir.path().join("eddy.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(eddy_bin()?)
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("eddy.toml"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()?))
        .arg("--store")
        .arg(dir.path().join("store"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start eddy")?;
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "eddy still running after {within:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok((
        status,
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    ))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something listens on 127.0.0.1:`port`.
///
/// # Errors
/// When nothing does within `within`.
pub fn wait_port(port: u16, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

/// The AsyncProcess example configuration with absolute plugin paths.
pub fn async_process_config() -> Result<String> {
    async_process_config_in("")
}

/// The AsyncProcess example with the plugins of one language: `""` for
/// Rust, `"python/"`, `"js/"` or `"c/"`.
pub fn async_process_config_in(lang_dir: &str) -> Result<String> {
    async_process_config_with(
        &plugin(&format!("{lang_dir}async-process-aggregator"))?,
        &plugin(&format!("{lang_dir}rejected-process-router"))?,
    )
}

/// The AsyncProcess example with the given aggregator and router components.
pub fn async_process_config_with(agg: &Path, router: &Path) -> Result<String> {
    let example = std::fs::read_to_string(root().join("examples/async-process/eddy.toml"))?;
    Ok(example
        .replace(
            "../../target/plugins/async-process-aggregator.wasm",
            &agg.display().to_string(),
        )
        .replace(
            "../../target/plugins/rejected-process-router.wasm",
            &router.display().to_string(),
        ))
}

/// Turns the pipeline keyed by `asyncProcessId` of a config into an Avro
/// pipeline reading with `reader` (a path under `examples/async-process/schemas/`).
pub fn with_avro(config: &str, reader: &str) -> String {
    with_schema(config, "avro", reader, "")
}

/// Turns the pipeline keyed by `asyncProcessId` of a config into one reading
/// `format` (`avro`, `protobuf`, `json_schema`) with `reader` (a path under
/// `examples/async-process/schemas/`) and any `extra` settings lines.
pub fn with_schema(config: &str, format: &str, reader: &str, extra: &str) -> String {
    let path = root().join("examples/async-process/schemas").join(reader);
    let avro = format!(
        "key_field = \"asyncProcessId\"\nvalue_format = {format:?}\nreader_schema = {:?}\n{extra}",
        path.display().to_string()
    );
    let plain = config.replace(
        "key_field = \"asyncProcessId\"\nvalue_format = \"avro\"\nreader_schema = \"schemas/execution-v2.avsc\"\n",
        "key_field = \"asyncProcessId\"\n",
    );
    plain.replacen("key_field = \"asyncProcessId\"\n", &avro, 1)
}

/// A running (or stopped) eddy host with its own store directory.
pub struct Host {
    child: Option<Child>,
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    dir: tempfile::TempDir,
    /// Extra environment of the process.
    env: Vec<(String, String)>,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl Host {
    /// Writes `config` into a fresh directory and starts eddy on a free port.
    pub async fn start(config: &str) -> Result<Host> {
        Host::start_with_env(config, &[]).await
    }

    /// As [`Host::start`], with extra environment variables (such as
    /// `RUST_LOG` or `EDDY_LOG_FORMAT`) for every start of the process.
    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Result<Host> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("eddy.toml"), config)?;
        let port = free_port()?;
        let mut host = Host {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        };
        host.restart().await?;
        Ok(host)
    }

    /// The host's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the host's config file (used at the next restart).
    pub fn write_config(&self, config: &str) -> Result<()> {
        Ok(std::fs::write(self.dir.path().join("eddy.toml"), config)?)
    }

    /// Starts the process expecting it to refuse to start: waits for it to
    /// exit (at most `within`) and returns its status and the log.
    pub fn restart_expecting_exit(
        &mut self,
        within: Duration,
    ) -> Result<(std::process::ExitStatus, String)> {
        let mut child = self.spawn()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok((s, self.log()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("eddy kept running:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `eddy run` on this host's config, port and store, logging to
    /// its `eddy.log`.
    fn spawn(&self) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("eddy.log"))?;
        Command::new(eddy_bin()?)
            .arg("run")
            .arg("--config")
            .arg(self.dir.path().join("eddy.toml"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--store")
            .arg(self.dir.path().join("store"))
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start eddy")
    }

    /// Starts the process (again) and waits for `/healthz`: up to 180 s,
    /// since a host compiles its plugins before it answers, and Python and
    /// JavaScript components (~18 MB each) took 30 s apiece on a loaded
    /// 2-core machine.
    pub async fn restart(&mut self) -> Result<()> {
        let child = self.spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("eddy exited at start ({status}):\n{}", self.log());
            }
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("eddy did not become healthy:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// `eddy store stats` on this host's store (the host must be stopped).
    pub fn store_stats(&self) -> Result<Value> {
        let out = Command::new(eddy_bin()?)
            .args(["store", "stats", "--store"])
            .arg(self.dir.path().join("store"))
            .output()
            .context("cannot run eddy store stats")?;
        ensure!(
            out.status.success(),
            "eddy store stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("eddy store stats printed no JSON")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        let pid = c.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                c.kill()?;
                bail!("eddy did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The host's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("eddy.log")).unwrap_or_default()
    }

    /// GET a JSON document; returns (status, body).
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let r = self.http.get(format!("{}{path}", self.url)).send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// PUT a body; returns (status, body).
    pub async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> Result<(u16, Value)> {
        self.send(reqwest::Method::PUT, path, body).await
    }

    /// POST a body; returns (status, body).
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> Result<(u16, Value)> {
        self.send(reqwest::Method::POST, path, body).await
    }

    /// Sends a JSON body with `method`; returns (status, body).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(u16, Value)> {
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// POST JSON to a topic's producer endpoint; fails unless 200.
    pub async fn produce(&self, topic: &str, body: &Value) -> Result<Value> {
        let (status, v) = self
            .post(&format!("/v1/topics/{topic}/records"), body.to_string())
            .await?;
        if status != 200 {
            bail!("produce to {topic} answered {status}: {v}");
        }
        Ok(v)
    }

    /// Waits until a pipeline has committed everything in its topic.
    pub async fn wait_caught_up(&self, pipeline: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let (status, v) = self.get(&format!("/v1/pipelines/{pipeline}")).await?;
            if status == 200 && v["lag"].as_u64() == Some(0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("pipeline {pipeline} still lags: {v}\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The host's `/metrics` text.
    ///
    /// # Errors
    /// When the host does not answer 200.
    pub async fn metrics(&self) -> Result<String> {
        let r = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?;
        ensure!(r.status() == 200, "/metrics answered {}", r.status());
        Ok(r.text().await?)
    }

    /// The process id, while the host runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process's resident memory in bytes.
    ///
    /// # Errors
    /// When the host is not running.
    pub fn rss_bytes(&self) -> Result<u64> {
        rss_of(self.pid().context("the host is not running")?)
    }

    /// Opens an SSE stream; `last_event_id` resumes after that id.
    pub async fn sse(&self, path: &str, last_event_id: Option<&str>) -> Result<SseStream> {
        sse_at(&self.http, &self.url, path, last_event_id).await
    }
}

/// The samples of metric `name` in a Prometheus text exposition: each
/// one's labels (`a="x",b="y"`, empty without) and value.
///
/// # Errors
/// When a sample's value is not a number.
pub fn samples<'a>(text: &'a str, name: &str) -> Result<Vec<(&'a str, f64)>> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            match rest.strip_prefix('{') {
                Some(r) => r.rsplit_once("} "),
                None => rest.strip_prefix(' ').map(|v| ("", v)),
            }
        })
        .map(|(labels, v)| {
            let v = v
                .trim()
                .parse::<f64>()
                .with_context(|| format!("{name}{{{labels}}} {v}"))?;
            Ok((labels, v))
        })
        .collect()
}

/// A process's resident memory in bytes (`VmRSS` of `/proc/PID/status`).
///
/// # Errors
/// When the process does not exist.
pub fn rss_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS in /proc/PID/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()?;
    Ok(kb * 1024)
}

/// Opens an SSE stream at `url` + `path`; `last_event_id` resumes after
/// that id.
pub async fn sse_at(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    last_event_id: Option<&str>,
) -> Result<SseStream> {
    let mut req = http
        .get(format!("{url}{path}"))
        .timeout(Duration::from_secs(3600));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let r = req.send().await?;
    if !r.status().is_success() {
        bail!("SSE {path} answered {}", r.status());
    }
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !ct.starts_with("text/event-stream") {
        bail!("SSE {path} has content type {ct:?}");
    }
    use eventsource_stream::Eventsource;
    Ok(SseStream {
        inner: Box::pin(r.bytes_stream().eventsource()),
    })
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // EDDY_TEST_LOGS=dir keeps each host's log there, named by its URL.
        if let Ok(dir) = std::env::var("EDDY_TEST_LOGS") {
            let name = self.url.replace(['/', ':'], "_");
            let _ = std::fs::copy(
                self.dir.path().join("eddy.log"),
                std::path::Path::new(&dir).join(format!("{name}.log")),
            );
        }
    }
}

type EventStream = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// An open SSE stream.
pub struct SseStream {
    inner: EventStream,
}

/// One received SSE event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `id:` field.
    pub id: String,
    /// `event:` field (`message` by default).
    pub event: String,
    /// `data:` parsed as JSON.
    pub data: Value,
}

impl SseStream {
    /// The next event, or an error after `within`.
    pub async fn next(&mut self, within: Duration) -> Result<SseEvent> {
        let e = tokio::time::timeout(within, self.inner.next())
            .await
            .context("no SSE event in time")?
            .context("SSE stream ended")??;
        Ok(SseEvent {
            id: e.id,
            event: e.event,
            data: serde_json::from_str(&e.data).unwrap_or(Value::String(e.data)),
        })
    }
}

/// An SSE event id as the position it stands for: per input partition, the
/// last change number the client has (`12.0.7`).
pub fn position(id: &str) -> Result<Vec<u64>> {
    id.split('.')
        .map(|n| n.parse::<u64>().with_context(|| format!("SSE id {id:?}")))
        .collect()
}

/// How many changes an SSE event id counts: the sum of its position.
pub fn changes_in(id: &str) -> Result<u64> {
    Ok(position(id)?.iter().sum())
}

/// How many timeout executions (`timeout@{instant}`, added by the
/// AsyncProcess aggregator's timer) an AsyncProcess state holds.
pub fn timeouts(state: &Value) -> usize {
    state
        .get("executions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with("timeout@"))
        })
        .count()
}

/// One AsyncProcess execution event as JSON.
pub fn execution(id: &str, process: &str, time: i64, state: &str) -> Value {
    serde_json::json!({
        "id": id, "asyncProcessId": process, "time": time, "state": state,
        "description": format!("{state} step"), "log": "", "params": "{}",
    })
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (as the API's `value_base64`).
pub fn b64encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional).
///
/// # Errors
/// A character outside the alphabet.
pub fn b64decode(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = B64
            .iter()
            .position(|x| *x == c)
            .with_context(|| format!("{:?} is not base64", char::from(c)))?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}
