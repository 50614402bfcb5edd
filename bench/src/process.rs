//! An `eddy run` process for a scenario: its own directory, config, store,
//! free loopback port and JSON log; killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

/// A running eddy.
pub struct EddyProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its JSON log.
    pub log: PathBuf,
    /// An HTTP client that returns error statuses instead of failing.
    pub agent: ureq::Agent,
}

/// A free loopback port.
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl EddyProcess {
    /// Writes `config` to `dir/eddy.toml` and starts `eddy` on it with its
    /// store in `dir/store`, logging JSON filtered by `rust_log`; returns once
    /// `/healthz` answers.
    ///
    /// # Errors
    /// When it cannot start or does not answer within 60 s.
    pub fn start(eddy: &Path, dir: &Path, config: &str, rust_log: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("eddy.toml"), config)?;
        let port = free_port()?;
        let log = dir.join("eddy.log");
        let child = Command::new(eddy)
            .args(["--log-format", "json", "run", "--config"])
            .arg(dir.join("eddy.toml"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--store"])
            .arg(dir.join("store"))
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", eddy.display()))?;
        let p = EddyProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
        };
        p.wait_for("/healthz", Duration::from_secs(60))?;
        Ok(p)
    }

    /// Waits until `path` answers 200.
    ///
    /// # Errors
    /// When it does not within `within`, or the process exited.
    pub fn wait_for(&self, path: &str, within: Duration) -> Result<()> {
        let t = Instant::now();
        loop {
            if let Ok(r) = self.agent.get(format!("{}{path}", self.base)).call()
                && r.status() == 200
            {
                return Ok(());
            }
            ensure!(
                t.elapsed() < within,
                "eddy: {path} not ready after {within:?}; log in {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (`VmHWM`), in KiB.
    #[must_use]
    pub fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.child.id())
    }

    /// Kills it (SIGKILL) and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit.
    ///
    /// # Errors
    /// When `kill` cannot run or the process does not exit.
    pub fn terminate(&mut self) -> Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for EddyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A process's peak resident memory (`VmHWM`), in KiB.
#[must_use]
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// A memory figure (`VmRSS`, `VmHWM`...) of `/proc/PID/status`, in KiB.
#[must_use]
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One "batch committed" line of an eddy's JSON log (`eddy::pipeline` at
/// debug level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BatchCommit {
    /// When it was committed, µs since the Unix epoch.
    pub at_us: u64,
    /// Events in the batch.
    pub events: u64,
    /// Time the worker spent on it, µs.
    pub busy_us: u64,
}

impl EddyProcess {
    /// Every batch commit logged so far, in time order.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn batch_commits(&self) -> Result<Vec<BatchCommit>> {
        use std::io::BufRead;
        let mut commits = Vec::new();
        for line in std::io::BufReader::new(std::fs::File::open(&self.log)?).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line?) else {
                continue;
            };
            let f = v.get("fields").unwrap_or(&v);
            if f.get("message").and_then(|m| m.as_str()) != Some("batch committed") {
                continue;
            }
            let num = |k: &str| f.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            commits.push(BatchCommit {
                at_us: num("committed_at_us"),
                events: num("events"),
                busy_us: num("elapsed_us"),
            });
        }
        commits.sort_unstable();
        Ok(commits)
    }

    /// Waits until `events` events are committed; returns the commits.
    ///
    /// # Errors
    /// When the process exits or `within` passes first.
    pub fn wait_committed(&mut self, events: u64, within: Duration) -> Result<Vec<BatchCommit>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("eddy exited ({status}); log in {}", self.log.display());
            }
            let commits = self.batch_commits()?;
            if commits.iter().map(|c| c.events).sum::<u64>() >= events {
                return Ok(commits);
            }
            ensure!(
                Instant::now() < deadline,
                "eddy did not commit {events} events within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Events/s from the first commit to the last (the first batch's events
/// are not counted: its start is unknown).
#[must_use]
pub fn commit_rate(commits: &[BatchCommit]) -> f64 {
    let (Some(first), Some(last)) = (commits.first(), commits.last()) else {
        return 0.0;
    };
    let events: u64 = commits.iter().skip(1).map(|c| c.events).sum();
    let secs = last.at_us.saturating_sub(first.at_us) as f64 / 1e6;
    events as f64 / secs.max(1e-9)
}

/// The AsyncProcess pipeline `p` on topic `events` of an embedded host, its
/// aggregator the component at `component`; `http` and `pipeline` are extra
/// lines for those tables (`max_batch = 2000`, say).
///
/// # Errors
/// When `component` has no absolute form.
pub fn embedded_config(component: &Path, http: &str, pipeline: &str) -> Result<String> {
    embedded_config_with(component, http, "", pipeline)
}

/// As [`embedded_config`], with extra lines for the plugin's table
/// (`memory_mb = 512`, say).
///
/// # Errors
/// When `component` has no absolute form.
pub fn embedded_config_with(
    component: &Path,
    http: &str,
    plugin: &str,
    pipeline: &str,
) -> Result<String> {
    Ok(format!(
        "[source]\nkind = \"embedded\"\n\n[http]\nwatch_plugins = false\n{http}\n\
         [[plugin]]\nname = \"agg\"\npath = {:?}\n{plugin}\n\
         [[pipeline]]\nname = \"p\"\ntopic = \"events\"\nkey_field = \"asyncProcessId\"\naggregator = \"agg\"\n{pipeline}",
        std::path::absolute(component)?.display().to_string()
    ))
}

/// Writes a scenario's results as pretty JSON to `out`, making its folder.
///
/// # Errors
/// On an I/O error.
pub fn write_results(out: &Path, results: &serde_json::Value) -> Result<()> {
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(results)?)?;
    Ok(())
}
