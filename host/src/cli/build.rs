//! `eddy plugin build`: compiles a plugin project (Rust, Python,
//! JavaScript or C, the last in `build_c`) into a component with the language's toolchain, stamping
//! the version it declares.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::Lang;
use super::check::probe_config;
use crate::execute::{Contract, Runtime};

/// How to compile Rust to `wasm32-unknown-unknown` on this machine.
#[derive(Clone)]
struct WasmToolchain {
    cargo: PathBuf,
    envs: Vec<(String, String)>,
    build_std: bool,
}

pub(super) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn has_rustup_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "wasm32-unknown-unknown")
        })
        .unwrap_or(false)
}

/// Picks the toolchain: `EDDY_WASM_CARGO`/`EDDY_WASM_RUSTC` when set, a
/// rustup toolchain with the wasm32 target when installed, otherwise a
/// system Rust with the standard library's sources (`-Zbuild-std`).
fn toolchain() -> anyhow::Result<WasmToolchain> {
    let linker = [
        "wasm-ld",
        "wasm-ld-22",
        "wasm-ld-21",
        "wasm-ld-20",
        "wasm-ld-19",
    ]
    .iter()
    .find_map(|n| which(n));
    if let Ok(cargo) = std::env::var("EDDY_WASM_CARGO") {
        let mut envs = Vec::new();
        if let Ok(rustc) = std::env::var("EDDY_WASM_RUSTC") {
            envs.push(("RUSTC".into(), rustc));
        }
        return Ok(WasmToolchain {
            cargo: cargo.into(),
            envs,
            build_std: std::env::var("EDDY_WASM_BUILD_STD").is_ok_and(|v| v == "1"),
        });
    }
    if has_rustup_target() {
        return Ok(WasmToolchain {
            cargo: "cargo".into(),
            envs: Vec::new(),
            build_std: false,
        });
    }
    let (cargo, rustc) = (
        PathBuf::from("/usr/bin/cargo"),
        PathBuf::from("/usr/bin/rustc"),
    );
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let has_src = sysroot.is_some_and(|s| s.join("lib/rustlib/src/rust/library/std").is_dir());
    match (cargo.is_file() && has_src, linker) {
        (true, Some(linker)) => Ok(WasmToolchain {
            cargo,
            envs: vec![
                ("RUSTC".into(), rustc.display().to_string()),
                ("RUSTC_BOOTSTRAP".into(), "1".into()),
                (
                    "RUSTFLAGS".into(),
                    format!("-C linker={}", linker.display()),
                ),
            ],
            build_std: true,
        }),
        _ => bail!(
            "no Rust toolchain for wasm32 found: install the target (`rustup target add \
             wasm32-unknown-unknown`) or a system Rust with its sources and wasm-ld \
             (Debian: `apt-get install rustc-web cargo-web rust-web-src lld`), or set \
             EDDY_WASM_CARGO"
        ),
    }
}

fn package_name(dir: &Path) -> anyhow::Result<String> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "{} is not a Rust plugin crate (no Cargo.toml)",
            dir.display()
        )
    })?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("invalid {}", manifest.display()))?;
    doc.get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no [package] name", manifest.display()))
}

/// The crate's `package.version`, when it is a literal.
fn package_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    let doc: toml::Table = toml::from_str(&text).ok()?;
    doc.get("package")?
        .get("version")?
        .as_str()
        .map(str::to_owned)
}

fn target_directory(tc: &WasmToolchain, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new(&tc.cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .envs(tc.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", tc.cargo.display()))?;
    if !out.status.success() {
        bail!("cargo metadata failed for {}", dir.display());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata output")?;
    v.get("target_directory")
        .and_then(|t| t.as_str())
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// The WIT contract (both versions), built into the binary so plugins
/// build anywhere.
const WIT: &str = include_str!("../../../wit/plugin.wit");
/// See [`WIT`]: the 0.1.0 package, a dependency of the 0.2.0 one.
const WIT_0_1: &str = include_str!("../../../wit/deps/plugin-0.1.0/plugin.wit");
/// The Python SDK module, built into the binary.
const PYTHON_SDK: &str = include_str!("../../../sdk/python/eddy_sdk.py");

/// `plugin.toml`: the manifest of a Python, JavaScript or C plugin.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Manifest {
    /// Plugin name (the output file is `<name>.wasm`).
    pub(super) name: String,
    /// `python`, `js` or `c`.
    lang: Lang,
    /// `aggregator` or `handler`.
    pub(super) kind: crate::config::PluginKind,
    /// The plugin's own version (recorded in the component).
    #[serde(default)]
    version: Option<String>,
}

/// Records the version a plugin declares in the component.
fn stamp_version(component: &mut Vec<u8>, version: &str) {
    use wasm_encoder::ComponentSection;
    wasm_encoder::CustomSection {
        name: crate::execute::VERSION_SECTION.into(),
        data: version.as_bytes().into(),
    }
    .append_to_component(component);
}

/// Records `schema` (its type from the extension: `.avsc`, `.proto`,
/// `.json`) in `file`'s [`crate::execute::READER_SCHEMA_SECTION`], writing
/// the component to `out`. The last such section is the one that counts.
///
/// # Errors
/// Unreadable files, an unknown extension, a malformed reference, or a
/// schema that does not parse (on its own, or with a `.proto`'s references
/// left to the registry).
pub(super) fn stamp_contract(
    file: &Path,
    schema: &Path,
    references: &[String],
    out: &Path,
) -> anyhow::Result<()> {
    use crate::schema::{Reference, SchemaText, SchemaType};
    use wasm_encoder::ComponentSection;
    let name = schema.display().to_string();
    let kind = match schema.extension().and_then(|e| e.to_str()) {
        Some("avsc") => SchemaType::Avro,
        Some("proto") => SchemaType::Protobuf,
        Some("json") => SchemaType::Json,
        _ => anyhow::bail!("{name}: the reader schema must be an .avsc, .proto or .json file"),
    };
    let text = std::fs::read_to_string(schema).with_context(|| format!("cannot read {name}"))?;
    let references = references
        .iter()
        .map(|r| {
            let (import, at) = r.split_once('=')?;
            let (subject, version) = at.rsplit_once(':')?;
            Some(Reference {
                name: import.to_owned(),
                subject: subject.to_owned(),
                version: version.parse().ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .context("a --reference is IMPORT=SUBJECT:VERSION (such as state.proto=state.proto:1)")?;
    let contract = SchemaText {
        kind,
        schema: text,
        references,
    };
    if contract.references.is_empty() {
        crate::schema::Parsed::parse(&contract, &[]).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    }
    let mut component =
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    wasm_encoder::CustomSection {
        name: crate::execute::READER_SCHEMA_SECTION.into(),
        data: serde_json::to_vec(&contract)?.into(),
    }
    .append_to_component(&mut component);
    std::fs::write(out, &component).with_context(|| format!("cannot write {}", out.display()))
}

/// Where the project's SDKs live: `$EDDY_HOME`, or the checkout the binary
/// was built in (`<root>/target/<profile>/eddy`).
pub(super) fn eddy_home() -> anyhow::Result<PathBuf> {
    if let Ok(home) = std::env::var("EDDY_HOME") {
        return Ok(PathBuf::from(home));
    }
    let exe = std::env::current_exe().context("cannot locate the eddy binary")?;
    exe.ancestors()
        .find(|d| d.join("sdk").join("js").join("build.mjs").is_file() && d.join("wit").is_dir())
        .map(Path::to_path_buf)
        .context("cannot find Eddy's sdk/ directory next to the binary; set EDDY_HOME to the Eddy checkout")
}

pub(super) fn write_wit(dir: &Path) -> anyhow::Result<PathBuf> {
    let wit = dir.join("wit");
    let old = wit.join("deps").join("plugin-0.1.0");
    std::fs::create_dir_all(&old)?;
    std::fs::write(wit.join("plugin.wit"), WIT)?;
    std::fs::write(old.join("plugin.wit"), WIT_0_1)?;
    Ok(wit)
}

/// The WIT world a plugin of `kind` targets in `contract`.
pub(super) fn world(kind: crate::config::PluginKind, contract: Contract) -> String {
    match contract {
        Contract::V0_2 => format!("{kind}-plugin"),
        Contract::V0_1 => format!("eddy:plugin/{kind}-plugin@0.1.0"),
    }
}

pub(super) fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| {
        format!("cannot run {what}: is it installed? (scripts/setup.sh installs it)")
    })?;
    if !status.success() {
        bail!("{what} failed (see its output above)");
    }
    Ok(())
}

fn default_out(dir: &Path, name: &str) -> PathBuf {
    dir.join("target").join(format!("{name}.wasm"))
}

fn build_python(dir: &Path, m: &Manifest, out: &Path, contract: Contract) -> anyhow::Result<()> {
    let tmp = tempdir()?;
    let wit = write_wit(&tmp)?;
    let sdk = tmp.join("sdk");
    std::fs::create_dir_all(&sdk)?;
    std::fs::write(sdk.join("eddy_sdk.py"), PYTHON_SDK)?;
    let world = world(m.kind, contract);
    let result = run(
        Command::new("componentize-py")
            .arg("-d")
            .arg(&wit)
            .args(["-w", &world, "componentize", "app", "-p"])
            .arg(dir)
            .arg("-p")
            .arg(&sdk)
            .arg("-o")
            .arg(out)
            .stdout(Stdio::null()),
        "componentize-py",
    );
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn build_js(dir: &Path, m: &Manifest, out: &Path, contract: Contract) -> anyhow::Result<()> {
    let sdk = eddy_home()?.join("sdk").join("js");
    if !sdk
        .join("node_modules")
        .join("@bytecodealliance")
        .join("componentize-js")
        .is_dir()
    {
        eprintln!("installing the JavaScript SDK's tools in {}", sdk.display());
        run(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&sdk),
            "npm install",
        )?;
    }
    let tmp = tempdir()?;
    let wit = write_wit(&tmp)?;
    let world = js_world(&wit, m.kind, contract)?;
    let entry = dir.join("plugin.js");
    let result = run(
        Command::new("node")
            .arg(sdk.join("build.mjs"))
            .arg(&entry)
            .arg(&wit)
            .arg(&world)
            .arg(out),
        "node (componentize-js)",
    );
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// The version of `wasi:cli` the JavaScript engine (StarlingMonkey, in
/// componentize-js) imports; the SDK's `env` imports its `environment`
/// from it.
const JS_WASI_CLI: &str = "0.2.10";

/// A JavaScript plugin's world: the contract's, plus the WASI environment
/// the SDK's `env()` reads the plugin's granted variables from (a module
/// may import only what its world does). Written into `wit`.
fn js_world(
    wit: &Path,
    kind: crate::config::PluginKind,
    contract: Contract,
) -> anyhow::Result<String> {
    let cli = wit.join("deps").join("wasi-cli");
    let js = wit.join("deps").join("eddy-js");
    std::fs::create_dir_all(&cli)?;
    std::fs::create_dir_all(&js)?;
    std::fs::write(
        cli.join("environment.wit"),
        format!(
            "package wasi:cli@{JS_WASI_CLI};\n\ninterface environment {{\n    \
             get-environment: func() -> list<tuple<string, string>>;\n    \
             get-arguments: func() -> list<string>;\n    \
             initial-cwd: func() -> option<string>;\n}}\n"
        ),
    )?;
    let contract_world = match contract {
        Contract::V0_2 => format!("eddy:plugin/{kind}-plugin@0.2.0"),
        Contract::V0_1 => format!("eddy:plugin/{kind}-plugin@0.1.0"),
    };
    std::fs::write(
        js.join("world.wit"),
        format!(
            "package eddy:js;\n\nworld {kind}-plugin {{\n    include {contract_world};\n    \
             import wasi:cli/environment@{JS_WASI_CLI};\n}}\n"
        ),
    )?;
    Ok(format!("eddy:js/{kind}-plugin"))
}

fn check_contract(name: &str, got: Contract, want: Contract) -> anyhow::Result<()> {
    if got != want {
        bail!(
            "plugin {name:?} built against contract {}, not {} as asked (does it use Eddy's SDK?)",
            got.as_str(),
            want.as_str()
        );
    }
    Ok(())
}

pub(super) fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("eddy-build-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Builds the plugin in `dir` — a Rust crate (`Cargo.toml`) or a Python,
/// JavaScript or C plugin (`plugin.toml`) — into a component against `contract`
/// and validates it; returns the path written.
///
/// # Errors
/// When no toolchain is found, the build fails, or the result is not a
/// valid plugin of that contract.
pub fn build(dir: &Path, out: Option<&Path>, contract: Contract) -> anyhow::Result<PathBuf> {
    build_as(dir, out, contract, Profile::Release)
}

/// How a Rust plugin is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Optimised whole (LTO, one codegen unit): what ships.
    Release,
    /// Quick to rebuild after an edit (`eddy dev`): less optimisation,
    /// incremental, in its own target directory so the release build's
    /// artefacts stay.
    Dev,
}

/// [`build`] with a profile.
///
/// # Errors
/// As [`build`].
pub fn build_as(
    dir: &Path,
    out: Option<&Path>,
    contract: Contract,
    profile: Profile,
) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("plugin.toml");
    if manifest.is_file() {
        let text = std::fs::read_to_string(&manifest)?;
        let m: Manifest =
            toml::from_str(&text).with_context(|| format!("invalid {}", manifest.display()))?;
        let out = out.map_or_else(|| default_out(dir, &m.name), Path::to_path_buf);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let out = std::path::absolute(&out)?;
        match m.lang {
            Lang::Python => build_python(dir, &m, &out, contract)?,
            Lang::Js => build_js(dir, &m, &out, contract)?,
            Lang::C => super::build_c::build_c(dir, &m, &out, contract, profile)?,
            Lang::Rust => bail!(
                "{}: Rust plugins are cargo crates; remove plugin.toml",
                manifest.display()
            ),
        }
        let mut bytes =
            std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))?;
        if let Some(v) = &m.version {
            stamp_version(&mut bytes, v);
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
        if profile == Profile::Release {
            let plugin = Runtime::new()?
                .load(
                    &probe_config(&m.name),
                    &out.display().to_string(),
                    &bytes,
                    Some(m.kind),
                )
                .with_context(|| {
                    format!(
                        "plugin {:?} built, but it is not a valid Eddy plugin",
                        m.name
                    )
                })?;
            check_contract(&m.name, plugin.contract(), contract)?;
        }
        eprintln!("built plugin {} ({} bytes)", m.name, bytes.len());
        return Ok(out);
    }
    let name = package_name(dir)?;
    let (tc, target_dir) = match profile {
        Profile::Release => {
            let tc = toolchain()?;
            let target_dir = target_directory(&tc, dir)?;
            (tc, target_dir)
        }
        // Found once per plugin directory in `eddy dev`: every rebuild
        // skips the look-ups.
        Profile::Dev => {
            type Found = Option<(PathBuf, WasmToolchain, PathBuf)>;
            static FOUND: std::sync::Mutex<Found> = std::sync::Mutex::new(None);
            let mut found = crate::lock(&FOUND);
            match found.as_ref() {
                Some((d, tc, target)) if d == dir => (tc.clone(), target.clone()),
                _ => {
                    let tc = toolchain()?;
                    let target_dir = target_directory(&tc, dir)?;
                    *found = Some((dir.to_path_buf(), tc.clone(), target_dir.clone()));
                    (tc, target_dir)
                }
            }
        }
    };
    let mut cmd = Command::new(&tc.cargo);
    cmd.args([
        "build",
        "--release",
        "--lib",
        "--target",
        "wasm32-unknown-unknown",
    ])
    .arg("--manifest-path")
    .arg(dir.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(target_dir.join(match profile {
        Profile::Release => "wasm",
        Profile::Dev => "wasm-dev",
    }))
    .args(["--message-format", "json-render-diagnostics"])
    .envs(tc.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
    .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
    // Debug info goes, function names stay: traps and profiles name them.
    .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    match profile {
        Profile::Release => cmd
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
            .env("CARGO_PROFILE_RELEASE_LTO", "true")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1"),
        // The plugin's own crate unoptimised (quick to rebuild), its
        // dependencies and the standard library optimised (built once).
        Profile::Dev => cmd
            .args(["--config", "profile.release.package.\"*\".opt-level=2"])
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0")
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
            .env("CARGO_PROFILE_RELEASE_INCREMENTAL", "true"),
    };
    if tc.build_std {
        cmd.arg("-Zbuild-std=std,panic_abort");
    }
    if contract == Contract::V0_1 {
        cmd.args(["--features", "eddy-sdk/contract-0-1"]);
    }
    let cargo_started = std::time::Instant::now();
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {}", tc.cargo.display()))?;
    tracing::debug!(
        ms = cargo_started.elapsed().as_millis() as u64,
        "cargo build"
    );
    if !output.status.success() {
        bail!(
            "building plugin {name:?} in {} failed (see the compiler output above)",
            dir.display()
        );
    }
    let module_path = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m.get("reason").and_then(|r| r.as_str()) == Some("compiler-artifact"))
        .flat_map(|m| {
            m.get("filenames")
                .and_then(|f| f.as_array())
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        .with_context(|| {
            format!("the build of {name:?} produced no .wasm; is its crate-type \"cdylib\"?")
        })?;
    let module = std::fs::read(&module_path)
        .with_context(|| format!("cannot read {}", module_path.display()))?;
    let encode_started = std::time::Instant::now();
    let mut component = wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot turn {} into a component: {e:#}",
                module_path.display()
            )
        })?;
    tracing::debug!(
        ms = encode_started.elapsed().as_millis() as u64,
        "component encoded"
    );
    if let Some(v) = package_version(dir) {
        stamp_version(&mut component, &v);
    }
    // `eddy dev` compiles it next, to run its fixtures: once is enough.
    if profile == Profile::Release {
        let runtime = Runtime::new()?;
        let probe = probe_config(&name);
        let plugin = runtime
            .load(&probe, &module_path.display().to_string(), &component, None)
            .with_context(|| format!("plugin {name:?} built, but it is not a valid Eddy plugin"))?;
        check_contract(&name, plugin.contract(), contract)?;
    }
    let out = out.map_or_else(
        || target_dir.join("plugins").join(format!("{name}.wasm")),
        Path::to_path_buf,
    );
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&out, &component).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("built plugin {name} ({} bytes)", component.len());
    Ok(out)
}
