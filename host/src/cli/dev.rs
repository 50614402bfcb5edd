//! `eddy dev`: from save to live. Watches a plugin's source, rebuilds it
//! with its language's toolchain, runs its fixtures and, when they pass,
//! deploys it into a running host; prints the time from save to live, or
//! the build or fixture failure (the running version stays).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::build::{Profile, build_as};
use super::fixture;

/// What `eddy dev` was asked.
#[derive(Debug)]
pub struct Options {
    /// The plugin's directory.
    pub dir: PathBuf,
    /// The host's base URL.
    pub to: String,
    /// The plugin's name on the host (default: the built component's).
    pub name: Option<String>,
    /// Admin bearer token.
    pub token: String,
    /// Fixture files or directories (default: the plugin's `fixtures/`).
    pub fixtures: Vec<PathBuf>,
}

/// A change settles after this long without another.
const SETTLE: Duration = Duration::from_millis(40);

/// Whether a changed path is the plugin's source (not a build output, a
/// dependency tree or an editor's scratch file).
fn is_source(path: &Path) -> bool {
    let skipped_dir = path.components().any(|c| {
        matches!(
            c.as_os_str().to_str(),
            Some("target" | "node_modules" | ".git" | "__pycache__")
        )
    });
    let scratch = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.ends_with('~') || n.ends_with(".swp") || n.starts_with(".#"));
    !skipped_dir && !scratch
}

/// Runs `eddy dev` until interrupted.
///
/// # Errors
/// A directory that cannot be watched.
pub fn dev(o: &Options) -> anyhow::Result<()> {
    use notify::{RecursiveMode, Watcher};
    anyhow::ensure!(
        o.dir.is_dir(),
        "{} is not a plugin directory",
        o.dir.display()
    );
    let dir = std::path::absolute(&o.dir)?;
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !ev.kind.is_access()
        {
            for p in ev.paths.into_iter().filter(|p| is_source(p)) {
                let _ = tx.send(p);
            }
        }
    })?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    let runtime = crate::execute::Runtime::quick_compile()?;
    println!(
        "watching {}; each save is built, tested and deployed to {}",
        dir.display(),
        o.to
    );
    round(o, &dir, &runtime, Instant::now());
    loop {
        let Some(saved) = next_change(&rx) else {
            return Ok(());
        };
        round(o, &dir, &runtime, saved);
    }
}

/// Waits for a change and for the changes after it to settle; returns
/// when the first was seen (`None` when the watcher is gone).
fn next_change(rx: &Receiver<PathBuf>) -> Option<Instant> {
    let first = rx.recv().ok()?;
    let saved = Instant::now();
    tracing::debug!(path = %first.display(), "changed");
    loop {
        match rx.recv_timeout(SETTLE) {
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return Some(saved),
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// One build → test → deploy; prints how it went.
fn round(o: &Options, dir: &Path, runtime: &crate::execute::Runtime, saved: Instant) {
    let ms = |d: Duration| d.as_millis();
    let path = match build_as(dir, None, crate::execute::Contract::V0_2, Profile::Dev) {
        Ok(p) => p,
        Err(e) => {
            println!("build failed: {e:#}\nnot deployed: the running version stays");
            return;
        }
    };
    let built = saved.elapsed();
    let tested = match fixture::compile(runtime, &path).and_then(|subject| {
        let files = fixture::fixture_files(&o.fixtures, Some(dir))?;
        fixture::run_files(&subject, &files)
    }) {
        Ok(()) => saved.elapsed(),
        Err(e) => {
            println!("{e:#}\nnot deployed: the running version stays");
            return;
        }
    };
    match super::remote::upload(&path, &o.to, o.name.as_deref(), &o.token) {
        Ok(answer) => {
            let version = serde_json::from_str::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v.get("version").and_then(|v| v.as_str()).map(str::to_owned))
                .unwrap_or_default();
            let live = saved.elapsed();
            println!(
                "live: {} version {version} in {} ms from save (build {} ms, fixtures {} ms, deploy {} ms)",
                o.name.clone().unwrap_or_else(|| path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()),
                ms(live),
                ms(built),
                ms(tested.saturating_sub(built)),
                ms(live.saturating_sub(tested)),
            );
        }
        Err(e) => println!("deploy failed: {e:#}"),
    }
}
