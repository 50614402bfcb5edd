//! `eddy plugin new`: a working plugin project to start from.

use std::path::Path;

use anyhow::{Context, bail};

use super::Lang;

/// Scaffolds a working plugin in `dir` (which must not exist yet).
///
/// # Errors
/// When `dir` exists, the name is not a valid plugin name, or writing fails.
pub fn new(lang: Lang, kind: crate::config::PluginKind, dir: &Path) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the plugin directory needs a name")?;
    if !crate::config::valid_name(&name) || name.starts_with(['.', '-', '_']) {
        bail!("plugin name {name:?} may hold only letters, digits, '-', '_' and '.'");
    }
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let sdk = if lang == Lang::Rust {
        super::build::eddy_home()?.join("sdk").display().to_string()
    } else {
        String::new()
    };
    for (path, text) in super::templates::files(lang, kind, &name, &sdk) {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    println!("created {kind} plugin {name} in {}", dir.display());
    println!("build it with: eddy plugin build {}", dir.display());
    println!(
        "test it with:  eddy plugin test {} (its cases are in fixtures/)",
        dir.display()
    );
    Ok(())
}
