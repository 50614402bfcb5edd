//! The commands that talk to a running host over its HTTP API: `eddy
//! plugin deploy`, `eddy plugin shadow` and `eddy replay`.

use std::path::Path;

use anyhow::{Context, bail};

/// Uploads a component to a running host (`PUT /v1/plugins/{name}`).
///
/// # Errors
/// When the file cannot be read, the host cannot be reached, or it refuses
/// the component (its reason is shown).
pub fn deploy(file: &Path, to: &str, name: Option<&str>, token: &str) -> anyhow::Result<()> {
    println!("{}", upload(file, to, name, token)?);
    Ok(())
}

/// Uploads a component (`PUT /v1/plugins/{name}`); returns the host's answer.
///
/// # Errors
/// As [`deploy`].
pub(super) fn upload(
    file: &Path,
    to: &str,
    name: Option<&str>,
    token: &str,
) -> anyhow::Result<String> {
    let (name, bytes) = component(file, name)?;
    let url = format!("{}/v1/plugins/{name}", to.trim_end_matches('/'));
    let mut response = agent()
        .put(&url)
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", "application/wasm")
        .send(&bytes[..])
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{url} refused the component ({status}): {}",
            error_of(&body)
        );
    }
    Ok(body)
}

/// A component file and the plugin name it is for: `name`, or the file's
/// stem (`async-process-aggregator.wasm` → `async-process-aggregator`).
fn component(file: &Path, name: Option<&str>) -> anyhow::Result<(String, Vec<u8>)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = match name {
        Some(n) => n.to_owned(),
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .context("give the plugin's name with --name")?,
    };
    Ok((name, bytes))
}

pub(super) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(300)))
        .build()
        .into()
}

pub(super) fn error_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

/// `eddy replay`: starts a replay and draws its progress until it ends.
///
/// # Errors
/// When the host refuses, cannot be reached, or the replay fails.
pub fn replay(to: &str, pipeline: &str, from: &str, token: &str) -> anyhow::Result<()> {
    let body = match from.split_once(':') {
        None if from == "beginning" => serde_json::json!({ "from": "beginning" }),
        Some(("offset", n)) => {
            serde_json::json!({ "from": "offset", "at": n.parse::<u64>().context("offset:N needs a number")? })
        }
        Some(("timestamp", t)) => {
            serde_json::json!({ "from": "timestamp", "at": t.parse::<i64>().context("timestamp:MS needs a number")? })
        }
        _ => bail!("--from must be beginning, offset:N or timestamp:MS"),
    };
    let base = format!(
        "{}/v1/pipelines/{pipeline}/replay",
        to.trim_end_matches('/')
    );
    let agent = agent();
    let mut r = agent
        .post(&base)
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .with_context(|| format!("cannot reach {base}"))?;
    let text = r.body_mut().read_to_string().unwrap_or_default();
    if !r.status().is_success() {
        bail!(
            "{base} refused the replay ({}): {}",
            r.status(),
            error_of(&text)
        );
    }
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut r = agent
            .get(&base)
            .call()
            .with_context(|| format!("cannot reach {base}"))?;
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let processed = v
            .get("processed")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let total = v
            .get("total")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
            .max(processed);
        let phase = v
            .get("phase")
            .and_then(|p| p.as_str())
            .unwrap_or("?")
            .to_owned();
        let width = 30u64;
        let filled = (processed * width).checked_div(total).unwrap_or(width);
        let bar: String = (0..width)
            .map(|i| if i < filled { '#' } else { '-' })
            .collect();
        eprint!("\r[{bar}] {processed}/{total} events  {phase:<10}");
        match phase.as_str() {
            "done" => {
                eprintln!();
                println!("{text}");
                return Ok(());
            }
            "failed" => {
                eprintln!();
                bail!(
                    "replay of {pipeline} failed: {}",
                    v.get("error").and_then(|e| e.as_str()).unwrap_or("unknown")
                );
            }
            _ => {}
        }
    }
}

/// `eddy plugin shadow`: prints what a candidate would change.
///
/// # Errors
/// When the host refuses or cannot be reached.
pub fn shadow(
    file: &Path,
    to: &str,
    name: Option<&str>,
    pipeline: Option<&str>,
    from: &str,
    limit: Option<u64>,
    token: &str,
) -> anyhow::Result<()> {
    let (name, bytes) = component(file, name)?;
    let mut url = format!(
        "{}/v1/plugins/{name}/shadow?from={from}",
        to.trim_end_matches('/')
    );
    if let Some(p) = pipeline {
        url.push_str(&format!("&pipeline={p}"));
    }
    if let Some(l) = limit {
        url.push_str(&format!("&limit={l}"));
    }
    let mut r = agent()
        .post(&url)
        .header("authorization", &format!("Bearer {token}"))
        .send(&bytes[..])
        .with_context(|| format!("cannot reach {url}"))?;
    let text = r.body_mut().read_to_string().unwrap_or_default();
    if !r.status().is_success() {
        bail!(
            "{url} refused the shadow run ({}): {}",
            r.status(),
            error_of(&text)
        );
    }
    let v: serde_json::Value = serde_json::from_str(&text).context("shadow report")?;
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_owned();
    println!(
        "shadow of {} on pipeline {}: running {} vs candidate {}",
        s("plugin"),
        s("pipeline"),
        s("current_version"),
        s("candidate_version")
    );
    println!(
        "  {} events, {} keys: {} keys would change, {} emit steps would differ, {} events would fail (vs {} now)",
        n("events"),
        n("keys"),
        n("changed_count"),
        n("emits_differ_count"),
        n("candidate_failures"),
        n("current_failures")
    );
    let short = |x: &serde_json::Value| {
        let t = x.to_string();
        if t.chars().count() > 160 {
            format!("{}…", t.chars().take(160).collect::<String>())
        } else {
            t
        }
    };
    for c in v
        .get("changed")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .take(20)
    {
        println!(
            "  ~ {}",
            c.get("key").and_then(|k| k.as_str()).unwrap_or("?")
        );
        println!(
            "    - {}",
            short(c.get("before").unwrap_or(&serde_json::Value::Null))
        );
        println!(
            "    + {}",
            short(c.get("after").unwrap_or(&serde_json::Value::Null))
        );
    }
    for f in v
        .get("failures")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .take(20)
    {
        println!(
            "  ! {} ({}): {} {}",
            f.get("source").and_then(|x| x.as_str()).unwrap_or("?"),
            f.get("version").and_then(|x| x.as_str()).unwrap_or("?"),
            f.get("error_class").and_then(|x| x.as_str()).unwrap_or("?"),
            f.get("error").and_then(|x| x.as_str()).unwrap_or("")
        );
    }
    Ok(())
}
