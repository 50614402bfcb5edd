//! The command line: `eddy run`, `eddy plugin ...`, `eddy replay`, `eddy store stats`.

mod build;
mod build_c;
mod check;
mod dev;
mod fixture;
mod new;
mod reload;
mod remote;
mod serve;
mod templates;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::execute::Contract;

/// `--contract`: `0.2.0` or `0.1.0`.
fn parse_contract(s: &str) -> Result<Contract, String> {
    match s {
        "0.2.0" | "0.2" => Ok(Contract::V0_2),
        "0.1.0" | "0.1" => Ok(Contract::V0_1),
        _ => Err(format!("unknown contract version {s:?}: 0.2.0 or 0.1.0")),
    }
}

/// Eddy: Kafka-style events in, WebAssembly plugins in the middle, state and
/// live updates out over HTTP.
#[derive(Debug, Parser)]
#[command(name = "eddy", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EDDY_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How logs are written to standard error.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the pipelines of a config file and serves the HTTP API.
    Run {
        /// The config file.
        #[arg(short, long, default_value = "eddy.toml")]
        config: PathBuf,
        /// Overrides `http.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Overrides `store.path`.
        #[arg(long)]
        store: Option<PathBuf>,
        /// Overrides the Kafka source's `brokers`.
        #[arg(long, env = "EDDY_KAFKA_BROKERS")]
        brokers: Option<String>,
    },
    /// Checks a config file whole, as `run` would start it (the file, the
    /// plugins' components, the reader schemas), listing every problem.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "eddy.toml")]
        config: PathBuf,
    },
    /// Builds and checks plugin components.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Rebuilds a pipeline's state from its topic on a running host,
    /// showing progress until the rebuilt state takes over.
    Replay {
        /// The host's base URL, such as `http://127.0.0.1:8080`.
        #[arg(long)]
        to: String,
        /// The pipeline.
        #[arg(long)]
        pipeline: String,
        /// `beginning`, `offset:N` or `timestamp:MS`.
        #[arg(long, default_value = "beginning")]
        from: String,
        /// Admin bearer token.
        #[arg(long, env = "EDDY_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Watches a plugin's source: each save is rebuilt, run over its
    /// fixtures and, when they pass, deployed into a running host, with the
    /// time from save to live.
    Dev {
        /// The plugin's directory.
        dir: PathBuf,
        /// The host's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        to: String,
        /// The plugin's name on the host (default: the component's).
        #[arg(long)]
        name: Option<String>,
        /// Fixture files or directories (default: the plugin's `fixtures/`).
        #[arg(long = "fixtures")]
        fixtures: Vec<PathBuf>,
        /// Admin bearer token.
        #[arg(long, env = "EDDY_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Inspects a store offline.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Prints, as JSON, what a stopped host's store holds: entries per
    /// keyspace, records waiting in the outbox, every pipeline's offsets.
    Stats {
        /// The store directory (a running host holds its lock).
        #[arg(long)]
        store: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Creates a working plugin to start from.
    New {
        /// Language.
        #[arg(long, value_enum)]
        lang: Lang,
        /// Kind of plugin.
        #[arg(long, value_enum, default_value_t = KindArg::Aggregator)]
        kind: KindArg,
        /// Directory to create; its last component is the plugin's name.
        name: PathBuf,
    },
    /// Builds a plugin (a Rust crate, or a Python, JavaScript or C plugin with a
    /// `plugin.toml`) into a component and validates it.
    Build {
        /// The plugin's directory.
        dir: PathBuf,
        /// Output file (default: `<cargo target dir>/plugins/<crate name>.wasm`
        /// for Rust, `<dir>/target/<name>.wasm` otherwise).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// The contract version to build against: `0.2.0` (states in the
        /// plugin's format, many keys per call), or `0.1.0` for hosts that
        /// predate it.
        #[arg(long, default_value = "0.2.0", value_parser = parse_contract)]
        contract: Contract,
        /// The reader schema the plugin expects its events in (its schema
        /// contract, see `eddy plugin contract`).
        #[arg(long)]
        reader_schema: Option<PathBuf>,
        /// References of a `.proto` reader schema: `IMPORT=SUBJECT:VERSION`.
        #[arg(long = "reference")]
        references: Vec<String>,
    },
    /// Deploys a component to a running host, replacing the plugin's
    /// running version between micro-batches.
    Deploy {
        /// The component file.
        file: PathBuf,
        /// The host's base URL, such as `http://127.0.0.1:8080`.
        #[arg(long)]
        to: String,
        /// The plugin name (default: the file name without `.wasm`).
        #[arg(long)]
        name: Option<String>,
        /// Admin bearer token.
        #[arg(long, env = "EDDY_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Runs a candidate component next to a plugin's running version over
    /// its pipeline's input on a running host and shows what would change.
    Shadow {
        /// The candidate component.
        file: PathBuf,
        /// The host's base URL.
        #[arg(long)]
        to: String,
        /// The plugin it would replace (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// The pipeline (default: the first that uses the plugin).
        #[arg(long)]
        pipeline: Option<String>,
        /// `beginning`, `offset:N` or `timestamp:MS`.
        #[arg(long, default_value = "beginning")]
        from: String,
        /// Most events to read.
        #[arg(long)]
        limit: Option<u64>,
        /// Admin bearer token.
        #[arg(long, env = "EDDY_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Records in a built component the reader schema the plugin expects
    /// its events in (`.avsc`, `.proto` or a JSON Schema `.json`). A host
    /// refuses to load, deploy or roll back to it when the schema cannot read
    /// every version registered for its pipelines' topics, and its registry
    /// refuses (or warns about) a new version the plugin cannot read.
    Contract {
        /// The component file (rewritten in place unless `--out`).
        file: PathBuf,
        /// The reader schema file.
        #[arg(long)]
        reader_schema: PathBuf,
        /// References of a `.proto` schema's imports: `IMPORT=SUBJECT:VERSION`.
        #[arg(long = "reference")]
        references: Vec<String>,
        /// Where to write the stamped component.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Runs a plugin over its fixtures (input events and the states,
    /// emitted records and dead letters they should leave) through the
    /// host's pipeline, with no server and no broker, and shows where a
    /// case differs. With `--record URL`, writes a fixture from a running
    /// host's topic instead.
    Test {
        /// The plugin's directory (built first) or a component file.
        target: PathBuf,
        /// Fixture files or directories (default: the plugin directory's
        /// `fixtures/`).
        #[arg(long = "fixtures")]
        fixtures: Vec<PathBuf>,
        /// Where to build a plugin directory's component (as `build --out`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Record a fixture from this running host (its base URL).
        #[arg(long, requires = "topic")]
        record: Option<String>,
        /// `--record`: the topic.
        #[arg(long)]
        topic: Option<String>,
        /// `--record`: only this partition.
        #[arg(long)]
        partition: Option<u32>,
        /// `--record`: the first offset.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// `--record`: most records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// `--record`: the pipeline whose settings (key field, value
        /// format) the fixture takes (default: the first reading the topic).
        #[arg(long)]
        pipeline: Option<String>,
        /// `--record`: the read token, when the host protects reads.
        #[arg(long, env = "EDDY_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// `--record`: the fixture file to write (default:
        /// `fixtures/recorded-{topic}-{offset}.json` in the plugin's directory).
        #[arg(short = 'o', long = "fixture-out")]
        fixture_out: Option<PathBuf>,
    },
    /// Checks that a component is a valid Eddy plugin and says what it implements.
    Check {
        /// The component file.
        file: PathBuf,
    },
}

/// Plugin kinds on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// A stateful fold per key.
    Aggregator,
    /// Filter / route / emit.
    Handler,
}

/// Languages `eddy plugin new` and `build` know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Rust, with the `eddy-sdk` crate.
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-js.
    Js,
    /// C, with clang and wasi-libc.
    C,
}

/// Installs the tracing subscriber (`RUST_LOG` filters; default `info`,
/// for `plugin test` warnings and plugin log lines).
pub fn init_logging(cli: &Cli) {
    // `plugin test` prints its own report: only warnings and the plugin's
    // own log lines go with it.
    let default = match cli.command {
        Command::Plugin(PluginCommand::Test { .. }) => {
            "warn,eddy::execute=info,eddy::pipeline::outputs=error"
        }
        // `check` prints its own report too.
        Command::Check { .. } => "warn",
        _ => "info,wasmtime=warn,cranelift=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let format = cli.log_format;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs the chosen command.
///
/// # Errors
/// Whatever stopped it, with context.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => check::check_config(&config),
        Command::Run {
            config,
            listen,
            store,
            brokers,
        } => serve::run(
            &config,
            &serve::Overrides {
                listen,
                store,
                brokers,
            },
        ),
        Command::Dev {
            dir,
            to,
            name,
            fixtures,
            token,
        } => dev::dev(&dev::Options {
            dir,
            to,
            name,
            token,
            fixtures,
        }),
        Command::Store(StoreCommand::Stats { store }) => {
            anyhow::ensure!(
                store.is_dir(),
                "store {}: no such directory",
                store.display()
            );
            let opened = crate::store::Store::open(&store, crate::config::Durability::Process)
                .with_context(|| format!("cannot open the store in {}", store.display()))?;
            let stats = opened.stats().context("cannot read the store")?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(())
        }
        Command::Plugin(PluginCommand::Build {
            dir,
            out,
            contract,
            reader_schema,
            references,
        }) => {
            let path = build::build(&dir, out.as_deref(), contract)?;
            if let Some(schema) = reader_schema {
                build::stamp_contract(&path, &schema, &references, &path)?;
            }
            println!("{}", path.display());
            Ok(())
        }
        Command::Plugin(PluginCommand::Contract {
            file,
            reader_schema,
            references,
            out,
        }) => {
            let out = out.unwrap_or_else(|| file.clone());
            build::stamp_contract(&file, &reader_schema, &references, &out)?;
            println!("{}", out.display());
            Ok(())
        }
        Command::Plugin(PluginCommand::Check { file }) => check::check(&file),
        Command::Plugin(PluginCommand::Test {
            target,
            fixtures,
            out,
            record,
            topic,
            partition,
            offset,
            limit,
            pipeline,
            token,
            fixture_out,
        }) => fixture::test(&fixture::Options {
            target,
            fixtures,
            out,
            record: record.map(|url| fixture::Recording {
                url,
                topic: topic.unwrap_or_default(),
                partition,
                offset,
                limit,
                pipeline,
                token,
                out: fixture_out,
            }),
        }),
        Command::Plugin(PluginCommand::Shadow {
            file,
            to,
            name,
            pipeline,
            from,
            limit,
            token,
        }) => remote::shadow(
            &file,
            &to,
            name.as_deref(),
            pipeline.as_deref(),
            &from,
            limit,
            &token,
        ),
        Command::Replay {
            to,
            pipeline,
            from,
            token,
        } => remote::replay(&to, &pipeline, &from, &token),
        Command::Plugin(PluginCommand::Deploy {
            file,
            to,
            name,
            token,
        }) => remote::deploy(&file, &to, name.as_deref(), &token),
        Command::Plugin(PluginCommand::New { lang, kind, name }) => new::new(
            lang,
            match kind {
                KindArg::Aggregator => crate::config::PluginKind::Aggregator,
                KindArg::Handler => crate::config::PluginKind::Handler,
            },
            &name,
        ),
    }
}
