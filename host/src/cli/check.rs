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
