//! `eddy plugin check`: is a file a valid Eddy plugin, and which kind.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::PluginConfig;
use crate::execute::Runtime;

/// Validates a component file as a plugin and describes it.
///
/// # Errors
/// When it is not a component or not an Eddy plugin, saying why.
pub fn check(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if !wasmparser::Parser::is_component(&bytes) {
        if wasmparser::Parser::is_core_wasm(&bytes) {
            bail!(
                "{} is a core WebAssembly module, not a component; build it with `eddy plugin build`",
                file.display()
            );
        }
        bail!("{} is not a WebAssembly component", file.display());
    }
    let name = file
        .file_stem()
        .map_or_else(|| "plugin".to_owned(), |s| s.to_string_lossy().into_owned());
    let runtime = Runtime::new()?;
    let plugin = runtime.load(
        &probe_config(&name),
        &file.display().to_string(),
        &bytes,
        None,
    )?;
    println!(
        "{}: valid Eddy {} plugin, contract {} (version {}{}, {} bytes)",
        file.display(),
        plugin.kind,
        plugin.contract().as_str(),
        plugin.version,
        plugin
            .declared_version
            .as_deref()
            .map(|v| format!(", declares {v}"))
            .unwrap_or_default(),
        bytes.len()
    );
    Ok(())
}

/// Limits to load a component with just to check it.
pub(super) fn probe_config(name: &str) -> PluginConfig {
    PluginConfig {
        name: name.to_owned(),
        path: PathBuf::new(),
        timeout_ms: 1000,
        memory_mb: 64,
        resident_state_mb: None,
        max_output_bytes: usize::MAX,
        max_retries: 0,
        retry_backoff_ms: 0,
        grants: crate::config::Grants::default(),
    }
}

/// `eddy check`: validates a config whole, as `eddy run` would start it,
/// without starting it — the file and its cross-field rules, the plugins'
/// roles, files and components (each compiled and checked against its
/// role), and the pipelines' reader schemas — and lists every problem found
/// at each step.
///
/// # Errors
/// Every problem, one per line, each naming its plugin, pipeline or field.
pub fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = crate::config::Config::load(path)?;
    let mut problems: Vec<String> = Vec::new();
    let roles = match super::serve::plugin_roles(&config) {
        Ok(roles) => roles,
        Err(e) => {
            problems.extend(format!("{e:#}").lines().map(str::to_owned));
            Vec::new()
        }
    };
    let runtime = Runtime::quick_compile()?;
    for (plugin, file, kind) in &roles {
        let loaded = std::fs::read(file)
            .with_context(|| {
                format!(
                    "plugin {:?}: cannot read {}; build it with `eddy plugin build`",
                    plugin.name,
                    file.display()
                )
            })
            .and_then(|bytes| {
                // Its errors name the plugin.
                runtime
                    .load(plugin, &file.display().to_string(), &bytes, Some(*kind))
                    .map_err(anyhow::Error::from)
            });
        if let Err(e) = loaded {
            problems.push(format!("{e:#}"));
        }
    }
    // The reader schemas, read and compiled: against an empty registry (a
    // running host's registry is its store's, which it holds).
    let scratch = tempfile::tempdir()?;
    let store = crate::store::Store::open(scratch.path(), crate::config::Durability::Process)?;
    if let Err(e) = super::serve::open_schemas(&config, &store) {
        problems.extend(format!("{e:#}").lines().map(str::to_owned));
    }
    if !problems.is_empty() {
        bail!(
            "{}: {} problem(s):\n  {}",
            path.display(),
            problems.len(),
            problems.join("\n  ")
        );
    }
    println!(
        "{}: valid: {} pipeline(s), {} plugin(s) loaded",
        path.display(),
        config.pipelines.len(),
        roles.len()
    );
    Ok(())
}
