//! `eddy plugin build` for C: bindings from the contract with wit-bindgen's
//! C generator (run here as a library, nothing to install), the plugin's
//! `.c` files and Eddy's C SDK compiled by clang for `wasm32-wasi` against
//! wasi-libc, and the core module turned into a component with the WASI
//! preview 1 adapter.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use wit_bindgen_core::wit_parser::Resolve;

use super::build::{Manifest, Profile, run, tempdir, world, write_wit};
use crate::config::PluginKind;
use crate::execute::Contract;

/// The C SDK, compiled into every C plugin.
const SDK_HEADER: &str = include_str!("../../../sdk/c/eddy.h");
const SDK_SOURCE: &str = include_str!("../../../sdk/c/eddy.c");

/// A clang that targets wasm32: `EDDY_CC`, else the newest on the `PATH`.
fn compiler() -> anyhow::Result<PathBuf> {
    if let Ok(cc) = std::env::var("EDDY_CC") {
        return Ok(cc.into());
    }
    std::iter::once("clang".to_owned())
        .chain((14..=30).rev().map(|v| format!("clang-{v}")))
        .find_map(|n| super::build::which(&n))
        .context(
            "no C compiler for wasm32 found: install clang, lld and wasi-libc (Debian: \
             `apt-get install clang lld wasi-libc libclang-rt-dev-wasm32`), or set EDDY_CC",
        )
}

/// The plugin's C sources: `*.c` in its directory and in `src/`.
fn sources(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for d in [dir.to_path_buf(), dir.join("src")] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "c") {
                found.push(path);
            }
        }
    }
    found.sort();
    if found.is_empty() {
        bail!("{}: a C plugin has no .c file", dir.display());
    }
    Ok(found)
}

/// Writes the bindings of `world` into `out`; returns the generated files.
fn bindings(wit: &Path, world_name: &str, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(wit)
        .context("cannot read the plugin contract")?;
    let world = resolve.select_world(&[package], Some(world_name))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("cannot generate the C bindings")?;
    let mut written = Vec::new();
    for (name, bytes) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Builds the C plugin in `dir` into the component `out`: optimised
/// (`-O2`), or quick to compile for `eddy dev` (`-O0`).
pub(super) fn build_c(
    dir: &Path,
    m: &Manifest,
    out: &Path,
    contract: Contract,
    profile: Profile,
) -> anyhow::Result<()> {
    if contract != Contract::V0_2 {
        bail!(
            "C plugins are built against contract {} only",
            Contract::V0_2.as_str()
        );
    }
    let cc = compiler()?;
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    let tmp = tempdir()?;
    let result = (|| {
        let wit = write_wit(&tmp)?;
        let generated = tmp.join("include");
        std::fs::create_dir_all(&generated)?;
        let files = bindings(&wit, &world(m.kind, contract), &generated)?;
        std::fs::write(generated.join("eddy.h"), SDK_HEADER)?;
        let sdk = generated.join("eddy.c");
        std::fs::write(&sdk, SDK_SOURCE)?;
        let core = tmp.join("core.wasm");
        let mut cmd = Command::new(&cc);
        cmd.args([
            "--target=wasm32-wasi",
            "-Wno-deprecated",
            "-mexec-model=reactor",
            match profile {
                Profile::Release => "-O2",
                Profile::Dev => "-O0",
            },
            "-std=c11",
            "-Wall",
        ])
        .arg(match m.kind {
            PluginKind::Aggregator => "-DEDDY_AGGREGATOR",
            PluginKind::Handler => "-DEDDY_HANDLER",
        })
        // __FILE__ relative to the plugin: a failed assert names plugin.c.
        .arg(format!("-fmacro-prefix-map={}/=", dir.display()))
        .arg("-I")
        .arg(&generated)
        .arg("-I")
        .arg(dir)
        .args(sources(dir)?)
        .arg(&sdk)
        .args(
            files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "c" || e == "o")),
        )
        .arg("-o")
        .arg(&core);
        run(&mut cmd, &format!("{} (wasm32-wasi)", cc.display()))?;
        let module = std::fs::read(&core)?;
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .and_then(|e| {
                e.adapter(
                    wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                    wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
                )
            })
            .and_then(|e| e.validate(true).encode())
            .map_err(|e| anyhow::anyhow!("cannot turn plugin {:?} into a component: {e:#}", m.name))?;
        std::fs::write(out, component).with_context(|| format!("cannot write {}", out.display()))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
