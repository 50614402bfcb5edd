//! Stage 4, execute: plugins run as WebAssembly components in wasmtime.
//!
//! Both versions of the contract run: 0.2.0 (an aggregator folds many keys
//! per call, its states are bytes in the format it chose, and it may keep
//! decoded states resident between calls) and 0.1.0 (JSON state text, one
//! key per call). The pipeline sees one [`Instance::fold`] for both.
//!
//! This module is the one place that configures the engine: epoch
//! interruption for wall-clock limits (a ticker thread advances the epoch),
//! a resource limiter for memory, WASI with nothing granted. Components are
//! compiled and pre-linked once ([`Plugin`]); each pipeline keeps its own
//! [`Instance`] of each plugin, reused across micro-batches and recycled
//! after a trap or a limit hit.

pub mod bindings;
pub mod registry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Config as WasmConfig, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::config::{PluginConfig, PluginKind};
use crate::store::{State, StateFormat};
use bindings::{
    AggregatorGuest, AggregatorIndices, Event, HandlerGuest, HandlerIndices, KeyEvents,
    PluginStateFormat, Settings, v0_1,
};

/// A failure `invalid` whose message starts with this is dead-lettered with
/// the class `late` (an event-time event that came after its window closed).
pub const LATE_PREFIX: &str = "late: ";

/// How often the epoch advances; the granularity of time limits.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Why a plugin call did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The call ran past its time limit and was interrupted.
    #[error("plugin {plugin}: call exceeded its time limit of {timeout_ms} ms")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The limit.
        timeout_ms: u64,
    },
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin {plugin}: memory limit of {memory_mb} MiB reached")]
    MemoryLimit {
        /// Plugin name.
        plugin: String,
        /// The cap.
        memory_mb: u64,
    },
    /// The plugin trapped (a panic, an abort, an out-of-bounds access...).
    #[error("plugin {plugin} trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// What wasmtime reported.
        message: String,
    },
    /// The plugin returned more output than allowed.
    #[error("plugin {plugin}: output of {bytes} bytes exceeds max_output_bytes = {limit}")]
    OutputTooLarge {
        /// Plugin name.
        plugin: String,
        /// Size produced.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The plugin returned something the contract rules out (a state that
    /// is not in its format).
    #[error("plugin {plugin}: {message}")]
    BadOutput {
        /// Plugin name.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// The plugin reported a failure itself.
    #[error("plugin {plugin} failed ({class}): {message}")]
    Failed {
        /// Plugin name.
        plugin: String,
        /// `invalid`, `retryable` or `fatal`.
        class: &'static str,
        /// Its message.
        message: String,
    },
    /// A key's stored state cannot be handed to the plugin in its format
    /// (the store's bytes do not convert).
    #[error("plugin {plugin}: the stored state of key {key:?} cannot be read: {message}")]
    BadState {
        /// Plugin name.
        plugin: String,
        /// The key.
        key: String,
        /// Why.
        message: String,
    },
    /// The plugin asked for a timer the contract rules out (a malformed
    /// request, an instant out of range, a handler asking).
    #[error("plugin {plugin}: bad timer request: {message}")]
    BadTimer {
        /// Plugin name.
        plugin: String,
        /// What is wrong, naming the value.
        message: String,
    },
    /// The plugin asked for more timers than a key or the pipeline may
    /// have pending.
    #[error("plugin {plugin}: too many timers: {message}")]
    TimerLimit {
        /// Plugin name.
        plugin: String,
        /// Which limit, with the counts.
        message: String,
    },
    /// The component could not be instantiated.
    #[error("plugin {plugin}: cannot instantiate: {message}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
}

impl PluginError {
    /// A short, stable name of the error class (for dead letters and metrics).
    pub fn class(&self) -> &'static str {
        match self {
            PluginError::Timeout { .. } => "timeout",
            PluginError::MemoryLimit { .. } => "memory_limit",
            PluginError::Trap { .. } => "trap",
            PluginError::OutputTooLarge { .. } => "output_too_large",
            PluginError::BadOutput { .. } => "bad_output",
            PluginError::BadState { .. } => "bad_state",
            PluginError::Failed { class, .. } => class,
            PluginError::BadTimer { .. } => "bad_timer",
            PluginError::TimerLimit { .. } => "timer_limit",
            PluginError::Instantiate { .. } => "instantiate",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PluginError::Failed {
                class: "retryable",
                ..
            }
        )
    }
}

/// Why a component cannot be loaded as a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid component for this engine.
    #[error("plugin {plugin}: {path} is not a valid WebAssembly component: {message}")]
    NotAComponent {
        /// Plugin name.
        plugin: String,
        /// File.
        path: String,
        /// Compiler message.
        message: String,
    },
    /// The component does not implement the expected world.
    #[error("plugin {plugin}: {message}")]
    WrongWorld {
        /// Plugin name.
        plugin: String,
        /// What is missing or mismatched.
        message: String,
    },
    /// The reader schema the component declares does not parse, or cannot
    /// read what its pipelines' topics carry.
    #[error("plugin {plugin}: its reader schema contract is broken: {message}")]
    Contract {
        /// Plugin name.
        plugin: String,
        /// Why, naming the subject, the version and the fields.
        message: String,
    },
}

/// At most this much of a plugin's last error line goes with a trap.
const SAID_BYTES: usize = 4096;

/// Per-store host state: limits, WASI (nothing granted) and log context.
pub struct PluginCtx {
    plugin: Arc<str>,
    /// The pipeline the instance serves, for log lines.
    pipeline: Arc<str>,
    /// The key being processed, for log lines of plugins that do not name
    /// it (empty in a handler's batch or a fold of several keys).
    pub key: String,
    /// The offset of the first event of the call, for log lines.
    offset: Option<i64>,
    /// The traces of the call's events that carry a `traceparent`, by
    /// offset, for log lines.
    traces: Vec<(i64, crate::trace::Parent)>,
    /// The last error line the plugin logged in the current call (a Rust
    /// plugin's panic message with its file:line): a trap's dead letter
    /// carries it.
    said: Option<String>,
    limiter: MemoryLimiter,
    wasi: WasiCtx,
    table: ResourceTable,
}

struct MemoryLimiter {
    max_bytes: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PluginCtx {
    /// Notes the traces of the call's events that carry a `traceparent`
    /// (read only when a line is logged).
    fn note_traces<'e>(&mut self, events: impl Iterator<Item = &'e Event<'e>>) {
        self.traces.clear();
        for e in events {
            let found = e
                .headers
                .iter()
                .rev()
                .find(|h| h.name.eq_ignore_ascii_case(crate::trace::HEADER))
                .and_then(|h| crate::trace::Parent::parse(h.value));
            if let Some(p) = found {
                self.traces.push((e.offset, p));
            }
        }
    }

    /// A plugin's log line, tagged with where it is (the plugin's own
    /// key and offset when it names them, else the call's).
    fn log_line(
        &mut self,
        level: bindings::Level,
        message: &str,
        key: Option<&str>,
        offset: Option<i64>,
    ) {
        let plugin = &*self.plugin;
        let pipeline = (!self.pipeline.is_empty()).then_some(&*self.pipeline);
        let key = key.or((!self.key.is_empty()).then_some(self.key.as_str()));
        let offset = offset.or(self.offset);
        let trace_id = offset
            .and_then(|o| self.traces.iter().find(|(at, _)| *at == o))
            .map(|(_, t)| t.trace_hex());
        let trace_id = trace_id.as_deref();
        match level {
            bindings::Level::Trace => {
                tracing::trace!(pipeline, plugin, key, offset, trace_id, "{message}");
            }
            bindings::Level::Debug => {
                tracing::debug!(pipeline, plugin, key, offset, trace_id, "{message}");
            }
            bindings::Level::Info => {
                tracing::info!(pipeline, plugin, key, offset, trace_id, "{message}");
            }
            bindings::Level::Warn => {
                tracing::warn!(pipeline, plugin, key, offset, trace_id, "{message}");
            }
            bindings::Level::Error => {
                tracing::error!(pipeline, plugin, key, offset, trace_id, "{message}");
            }
        }
        if level == bindings::Level::Error {
            let mut said = message.to_owned();
            if said.len() > SAID_BYTES {
                let mut end = SAID_BYTES;
                while !said.is_char_boundary(end) {
                    end -= 1;
                }
                said.truncate(end);
                said.push('…');
            }
            self.said = Some(said);
        }
    }
}

impl bindings::Host for PluginCtx {
    fn log(
        &mut self,
        level: bindings::Level,
        message: String,
        key: Option<String>,
        offset: Option<i64>,
    ) {
        self.log_line(level, &message, key.as_deref(), offset);
    }
}

impl bindings::v0_1::Host for PluginCtx {
    fn log(&mut self, level: bindings::v0_1::Level, message: String) {
        use bindings::Level as L;
        use bindings::v0_1::Level as Old;
        let level = match level {
            Old::Trace => L::Trace,
            Old::Debug => L::Debug,
            Old::Info => L::Info,
            Old::Warn => L::Warn,
            Old::Error => L::Error,
        };
        self.log_line(level, &message, None, None);
    }
}

/// The wasmtime engine and linker shared by every plugin.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<PluginCtx>>,
}

impl Runtime {
    /// Builds the engine (epoch interruption on) and starts its epoch ticker.
    ///
    /// # Errors
    /// When wasmtime cannot be configured on this machine.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_config(WasmConfig::new())
    }

    /// A runtime that compiles quickly rather than well: for running a
    /// plugin's fixtures (`eddy plugin test`, `eddy dev`), where a build is
    /// compiled once and runs a few events.
    ///
    /// # Errors
    /// As [`Runtime::new`].
    pub fn quick_compile() -> anyhow::Result<Self> {
        let mut config = WasmConfig::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        Self::with_config(config)
    }

    fn with_config(mut config: WasmConfig) -> anyhow::Result<Self> {
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // `EDDY_WASM_PROFILER=perfmap` writes /tmp/perf-PID.map so `perf`
        // names the functions of plugins (built with their name section).
        if std::env::var("EDDY_WASM_PROFILER").is_ok_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::eddy::plugin0_2_0::host::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(
            &mut linker,
            |ctx| ctx,
        )?;
        bindings::eddy::plugin0_1_0::host::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(
            &mut linker,
            |ctx| ctx,
        )?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("eddy-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
        })
    }

    /// Compiles and validates a plugin component: it must export the
    /// interface of `expected` (or of either kind when `None`), in either
    /// version of the contract, and import nothing beyond the host
    /// interface and WASI.
    ///
    /// # Errors
    /// [`LoadError`] naming the plugin and what is wrong.
    pub fn load(
        &self,
        config: &PluginConfig,
        path: &str,
        bytes: &[u8],
        expected: Option<PluginKind>,
    ) -> Result<Plugin, LoadError> {
        let component =
            Component::new(&self.engine, bytes).map_err(|e| LoadError::NotAComponent {
                plugin: config.name.clone(),
                path: path.to_owned(),
                message: format!("{e:#}"),
            })?;
        let wrong = |message: String| LoadError::WrongWorld {
            plugin: config.name.clone(),
            message,
        };
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            wrong(format!(
                "imports something the host does not provide: {e:#}"
            ))
        })?;
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let has = |name: &str| exports.iter().any(|e| e == name);
        let aggregator = has(bindings::AGGREGATOR_EXPORT) || has(bindings::v0_1::AGGREGATOR_EXPORT);
        let handler = has(bindings::HANDLER_EXPORT) || has(bindings::v0_1::HANDLER_EXPORT);
        let kind = match (expected, aggregator, handler) {
            (Some(PluginKind::Aggregator), true, _) | (None, true, false) => PluginKind::Aggregator,
            (Some(PluginKind::Handler), _, true) | (None, false, true) => PluginKind::Handler,
            (None, true, true) => {
                return Err(wrong(
                    "exports both an aggregator and a handler; a plugin is one of them".into(),
                ));
            }
            (want, _, _) => {
                let aggregators = format!(
                    "{} (or {})",
                    bindings::AGGREGATOR_EXPORT,
                    bindings::v0_1::AGGREGATOR_EXPORT
                );
                let handlers = format!(
                    "{} (or {})",
                    bindings::HANDLER_EXPORT,
                    bindings::v0_1::HANDLER_EXPORT
                );
                let want = match want {
                    None => format!("{aggregators} or {handlers}"),
                    Some(PluginKind::Aggregator) => aggregators,
                    Some(PluginKind::Handler) => handlers,
                };
                return Err(wrong(format!(
                    "does not export {want}; it exports [{}]",
                    exports.join(", ")
                )));
            }
        };
        let mismatch = |export: &str, e: wasmtime::Error| {
            wrong(format!("{export} does not match the contract: {e:#}"))
        };
        let indices = match kind {
            PluginKind::Aggregator if has(bindings::AGGREGATOR_EXPORT) => Indices::Aggregator(
                AggregatorIndices::new(&pre)
                    .map_err(|e| mismatch(bindings::AGGREGATOR_EXPORT, e))?,
            ),
            PluginKind::Aggregator => Indices::AggregatorV01(
                v0_1::AggregatorIndices::new(&pre)
                    .map_err(|e| mismatch(v0_1::AGGREGATOR_EXPORT, e))?,
            ),
            PluginKind::Handler if has(bindings::HANDLER_EXPORT) => Indices::Handler(
                HandlerIndices::new(&pre).map_err(|e| mismatch(bindings::HANDLER_EXPORT, e))?,
            ),
            PluginKind::Handler => Indices::HandlerV01(
                v0_1::HandlerIndices::new(&pre).map_err(|e| mismatch(v0_1::HANDLER_EXPORT, e))?,
            ),
        };
        Ok(Plugin {
            name: Arc::from(config.name.as_str()),
            kind,
            version: content_hash(bytes),
            declared_version: declared_version(bytes),
            reader_schema: declared_reader_schema(bytes).map_err(|message| {
                LoadError::Contract {
                    plugin: config.name.clone(),
                    message,
                }
            })?,
            config: config.clone(),
            engine: self.engine.clone(),
            pre,
            indices,
        })
    }
}

/// The custom section in which `eddy plugin build` records the version a
/// plugin declares (its crate's or `plugin.toml`'s `version`).
pub const VERSION_SECTION: &str = "eddy:version";

/// The version a component declares in its [`VERSION_SECTION`], if any.
pub fn declared_version(bytes: &[u8]) -> Option<String> {
    wasmparser::Parser::new(0)
        .parse_all(bytes)
        .filter_map(Result::ok)
        .find_map(|payload| match payload {
            wasmparser::Payload::CustomSection(c) if c.name() == VERSION_SECTION => {
                std::str::from_utf8(c.data()).ok().map(str::to_owned)
            }
            _ => None,
        })
}

/// The custom section in which a plugin declares the reader schema it
/// expects its events in (`eddy plugin contract`, or `eddy plugin build
/// --reader-schema`): `{"schemaType", "schema", "references"?}` as JSON.
pub const READER_SCHEMA_SECTION: &str = "eddy:reader-schema";

/// The reader schema a component declares in its [`READER_SCHEMA_SECTION`].
///
/// # Errors
/// A section that is not the expected JSON.
pub fn declared_reader_schema(bytes: &[u8]) -> Result<Option<crate::schema::SchemaText>, String> {
    // The last section counts: `eddy plugin contract` appends a new one.
    let section = wasmparser::Parser::new(0)
        .parse_all(bytes)
        .filter_map(Result::ok)
        .filter_map(|payload| match payload {
            wasmparser::Payload::CustomSection(c) if c.name() == READER_SCHEMA_SECTION => {
                Some(c.data().to_vec())
            }
            _ => None,
        })
        .last();
    match section {
        None => Ok(None),
        Some(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
            format!("its {READER_SCHEMA_SECTION} section is not {{\"schemaType\", \"schema\"}} JSON: {e}")
        }),
    }
}

/// A short content hash identifying a component's bytes (FNV-1a, 64 bits).
pub fn content_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The version of the contract a plugin was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `eddy:plugin@0.1.0`: JSON state text, one key per aggregator call.
    V0_1,
    /// `eddy:plugin@0.2.0`: state bytes in the plugin's format, many keys
    /// per call, resident states.
    V0_2,
}

impl Contract {
    /// As written in the WIT package (`0.2.0`).
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }
}

#[derive(Clone)]
enum Indices {
    Aggregator(AggregatorIndices),
    AggregatorV01(v0_1::AggregatorIndices),
    Handler(HandlerIndices),
    HandlerV01(v0_1::HandlerIndices),
}

/// A compiled, validated, pre-linked plugin; cheap to instantiate.
pub struct Plugin {
    /// Name from the config.
    pub name: Arc<str>,
    /// Which world it implements.
    pub kind: PluginKind,
    /// Content hash of the component.
    pub version: String,
    /// The semantic version the plugin declares, if it declares one.
    pub declared_version: Option<String>,
    /// The reader schema the plugin declares (its schema contract), if any.
    pub reader_schema: Option<crate::schema::SchemaText>,
    config: PluginConfig,
    engine: Engine,
    pre: InstancePre<PluginCtx>,
    indices: Indices,
}

impl Plugin {
    /// Its configuration (limits, retries).
    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    /// The same compiled plugin under another configuration (name,
    /// limits, grants); nothing is compiled again.
    #[must_use]
    pub fn configured(&self, config: PluginConfig) -> Plugin {
        Plugin {
            name: Arc::from(config.name.as_str()),
            kind: self.kind,
            version: self.version.clone(),
            declared_version: self.declared_version.clone(),
            reader_schema: self.reader_schema.clone(),
            config,
            engine: self.engine.clone(),
            pre: self.pre.clone(),
            indices: self.indices.clone(),
        }
    }

    /// The version of the contract it was built against.
    pub fn contract(&self) -> Contract {
        match self.indices {
            Indices::Aggregator(_) | Indices::Handler(_) => Contract::V0_2,
            Indices::AggregatorV01(_) | Indices::HandlerV01(_) => Contract::V0_1,
        }
    }
}

enum Guest {
    Aggregator {
        guest: AggregatorGuest,
        /// The format its states are in (its answer to `setup`).
        format: StateFormat,
    },
    AggregatorV01(v0_1::AggregatorGuest),
    Handler(HandlerGuest),
    HandlerV01(v0_1::HandlerGuest),
}

struct Live {
    store: Store<PluginCtx>,
    guest: Guest,
}

/// A pipeline's instance of a plugin, reused across calls and recycled
/// after a trap or a limit hit.
pub struct Instance {
    plugin: Arc<Plugin>,
    live: Option<Live>,
    /// The plugin's call-duration histogram, looked up on the first call.
    calls: Option<metrics::Histogram>,
    slot: Option<(Arc<registry::Slot>, u64)>,
    /// The pipeline it serves (for log lines); empty outside a pipeline.
    pipeline: Arc<str>,
}

/// One emitted record, as the host will produce it.
pub type Emitted = bindings::Emit;

/// One key's share of a fold: its events and its current state.
#[derive(Clone, Copy)]
pub struct KeyInput<'a> {
    /// The key.
    pub key: &'a str,
    /// Its state, none before its first event.
    pub state: Option<&'a State>,
    /// The version of `state` an earlier fold of this instance gave it
    /// ([`Folded::version`]), 0 when unknown.
    pub version: u64,
    /// Its new events, in offset order.
    pub events: &'a [Event<'a>],
}

/// A key's new state, as a fold returned it.
#[derive(Debug, Clone)]
pub struct Folded {
    /// The state.
    pub state: State,
    /// The instance's name for this state: given back with it as
    /// [`KeyInput::version`], it lets a plugin use the decoded state it
    /// kept instead of decoding the bytes again (0: none).
    pub version: u64,
    /// Records to produce with it.
    pub emits: Vec<Emitted>,
}

/// Versions given to folded states: unique in the process, so a plugin's
/// resident state can never be taken for another.
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// How much of a batch one fold call takes at most: a call's input is
/// lowered into the plugin's memory at once, and one time limit covers it.
const CALL_EVENTS: usize = 1_024;
/// See [`CALL_EVENTS`]: bytes of states and event values.
const CALL_BYTES: usize = 4 << 20;

impl Instance {
    /// A lazily instantiated instance of `plugin`.
    pub fn new(plugin: Arc<Plugin>) -> Self {
        Instance {
            plugin,
            live: None,
            calls: None,
            slot: None,
            pipeline: Arc::from(""),
        }
    }

    /// Names the pipeline this instance serves in its log lines.
    #[must_use]
    pub fn in_pipeline(mut self, pipeline: &str) -> Self {
        self.pipeline = Arc::from(pipeline);
        self
    }

    /// An instance that follows a registry slot: [`Instance::refresh`]
    /// switches it to the slot's current version.
    pub fn of_slot(slot: Arc<registry::Slot>) -> Self {
        let generation = slot.generation();
        Instance {
            plugin: slot.current(),
            live: None,
            calls: None,
            slot: Some((slot, generation)),
            pipeline: Arc::from(""),
        }
    }

    /// Switches to the slot's current version if it changed; call between
    /// micro-batches. Returns whether it switched.
    pub fn refresh(&mut self) -> bool {
        let Some((slot, seen)) = &mut self.slot else {
            return false;
        };
        let now = slot.generation();
        if now == *seen {
            return false;
        }
        *seen = now;
        let next = slot.current();
        tracing::info!(plugin = %next.name, from = %self.plugin.version, to = %next.version, "switching plugin version");
        self.plugin = next;
        self.live = None;
        true
    }

    /// The plugin it runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    fn live(&mut self) -> Result<&mut Live, PluginError> {
        if self.live.is_none() {
            let p = &self.plugin;
            let max_bytes = usize::try_from(p.config.memory_mb.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX);
            let mut store = Store::new(
                &p.engine,
                PluginCtx {
                    plugin: p.name.clone(),
                    pipeline: self.pipeline.clone(),
                    key: String::new(),
                    offset: None,
                    traces: Vec::new(),
                    said: None,
                    limiter: MemoryLimiter {
                        max_bytes,
                        hit: false,
                    },
                    wasi: wasi_ctx(&p.config)?,
                    table: ResourceTable::new(),
                },
            );
            store.limiter(|ctx| &mut ctx.limiter);
            store.epoch_deadline_trap();
            arm(&mut store, p.config.timeout_ms);
            let fail = |store: &mut Store<PluginCtx>, e: wasmtime::Error| {
                classify(p, ended(store), &e.into())
            };
            let instance = p
                .pre
                .instantiate(&mut store)
                .map_err(|e| fail(&mut store, e))?;
            let guest = match &p.indices {
                Indices::Aggregator(i) => {
                    let guest = i
                        .load(&mut store, &instance)
                        .map_err(|e| fail(&mut store, e))?;
                    let settings = Settings {
                        resident_bytes: p.config.resident_state_bytes(),
                    };
                    let format = match guest
                        .call_setup(&mut store, settings)
                        .map_err(|e| fail(&mut store, e))?
                    {
                        PluginStateFormat::Json => StateFormat::Json,
                        PluginStateFormat::Msgpack => StateFormat::MsgPack,
                    };
                    Guest::Aggregator { guest, format }
                }
                Indices::AggregatorV01(i) => Guest::AggregatorV01(
                    i.load(&mut store, &instance)
                        .map_err(|e| fail(&mut store, e))?,
                ),
                Indices::Handler(i) => Guest::Handler(
                    i.load(&mut store, &instance)
                        .map_err(|e| fail(&mut store, e))?,
                ),
                Indices::HandlerV01(i) => Guest::HandlerV01(
                    i.load(&mut store, &instance)
                        .map_err(|e| fail(&mut store, e))?,
                ),
            };
            self.live = Some(Live { store, guest });
        }
        self.live.as_mut().ok_or_else(|| PluginError::Instantiate {
            plugin: self.plugin.name.to_string(),
            message: "instance unavailable".into(),
        })
    }

    fn check_output(&self, bytes: usize) -> Result<(), PluginError> {
        let limit = self.plugin.config.max_output_bytes;
        if bytes > limit {
            return Err(PluginError::OutputTooLarge {
                plugin: self.plugin.name.to_string(),
                bytes,
                limit,
            });
        }
        Ok(())
    }

    fn failed(&self, f: bindings::Failure) -> PluginError {
        let (class, message) = match f {
            // The SDKs' windows fail an event that arrives after its window
            // closed this way: a dead letter of its own class.
            bindings::Failure::Invalid(m) if m.starts_with(LATE_PREFIX) => ("late", m),
            bindings::Failure::Invalid(m) => ("invalid", m),
            bindings::Failure::Retryable(m) => ("retryable", m),
            bindings::Failure::Fatal(m) => ("fatal", m),
        };
        PluginError::Failed {
            plugin: self.plugin.name.to_string(),
            class,
            message,
        }
    }

    fn wrong_kind(&self, want: &str) -> PluginError {
        PluginError::Instantiate {
            plugin: self.plugin.name.to_string(),
            message: format!("not {want}"),
        }
    }

    /// A call's per-item results, or what made the call as a whole fail
    /// (a trap, a limit hit — `memory_hit` — or as many results as not
    /// asked): then the instance is recycled.
    fn results_of<T>(
        &mut self,
        r: Result<Vec<T>, anyhow::Error>,
        memory_hit: Ended,
        asked: usize,
        call: &str,
        items: &str,
    ) -> Result<Vec<T>, PluginError> {
        let results = r.map_err(|e| {
            self.live = None;
            classify(&self.plugin, memory_hit, &e)
        })?;
        if results.len() != asked {
            self.live = None;
            return Err(PluginError::Trap {
                plugin: self.plugin.name.to_string(),
                message: format!(
                    "{call} returned {} results for {asked} {items}",
                    results.len()
                ),
            });
        }
        Ok(results)
    }

    /// How many of `batch`'s keys (at least one) the next fold call takes.
    pub fn call_size(batch: &[KeyInput<'_>]) -> usize {
        let (mut events, mut bytes) = (0, 0);
        for (i, k) in batch.iter().enumerate() {
            events += k.events.len();
            bytes += k.state.map_or(0, State::len)
                + k.events.iter().map(|e| e.value.len()).sum::<usize>();
            if i > 0 && (events > CALL_EVENTS || bytes > CALL_BYTES) {
                return i;
            }
        }
        batch.len()
    }

    /// Runs the aggregator over several keys' events. Returns one result
    /// per key, in order; a failure of the whole call (a trap, a limit hit)
    /// is the outer error, and recycles the instance. A 0.1.0 plugin is
    /// called once per key (its traps are that key's result).
    ///
    /// Callers keep each call within [`Instance::call_size`].
    ///
    /// # Errors
    /// Any [`PluginError`] of the call as a whole.
    pub fn fold(
        &mut self,
        batch: &[KeyInput<'_>],
    ) -> Result<Vec<Result<Folded, PluginError>>, PluginError> {
        let started = std::time::Instant::now();
        let r = self.fold_once(batch);
        let took = started.elapsed().as_secs_f64();
        self.calls
            .get_or_insert_with(|| crate::telemetry::plugin_calls(&self.plugin.name))
            .record(took);
        match &r {
            Err(e) => crate::telemetry::plugin_failure(&self.plugin.name, e.class()),
            Ok(results) => {
                for e in results.iter().filter_map(|r| r.as_ref().err()) {
                    crate::telemetry::plugin_failure(&self.plugin.name, e.class());
                }
            }
        }
        r
    }

    fn fold_once(
        &mut self,
        batch: &[KeyInput<'_>],
    ) -> Result<Vec<Result<Folded, PluginError>>, PluginError> {
        let timeout_ms = self.plugin.config.timeout_ms;
        let live = self.live()?;
        let format = match &live.guest {
            Guest::Aggregator { format, .. } => *format,
            Guest::AggregatorV01(_) => return Ok(self.fold_v01(batch)),
            Guest::Handler(_) | Guest::HandlerV01(_) => {
                return Err(self.wrong_kind("an aggregator"));
            }
        };
        // States in the plugin's format (converted when another version of
        // it wrote them in the other one).
        let states = batch
            .iter()
            .map(|k| {
                k.state
                    .map(|s| s.in_format(format))
                    .transpose()
                    .map_err(|e| PluginError::BadState {
                        plugin: self.plugin.name.to_string(),
                        key: k.key.to_owned(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let first = NEXT_VERSION.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let calls: Vec<KeyEvents<'_>> = batch
            .iter()
            .zip(&states)
            .zip(first..)
            .map(|((k, state), next_version)| KeyEvents {
                key: k.key,
                state: state.as_deref(),
                version: k.version,
                next_version,
                events: k.events,
            })
            .collect();
        let Some(live) = self.live.as_mut() else {
            return Err(self.wrong_kind("an aggregator"));
        };
        let Guest::Aggregator { guest, .. } = &live.guest else {
            return Err(self.wrong_kind("an aggregator"));
        };
        let store = &mut live.store;
        store.data_mut().key.clear();
        if let [one] = batch {
            store.data_mut().key.push_str(one.key);
        }
        store.data_mut().offset = batch
            .first()
            .and_then(|k| k.events.first())
            .map(|e| e.offset);
        store
            .data_mut()
            .note_traces(batch.iter().flat_map(|k| k.events.iter()));
        arm(store, timeout_ms);
        let r = guest
            .call_fold(&mut *store, &calls)
            .map_err(anyhow::Error::from);
        let hit = ended(store);
        let results = self.results_of(r, hit, batch.len(), "fold", "keys")?;
        let mut fatal = false;
        let out = results
            .into_iter()
            .zip(batch)
            .zip(first..)
            .map(|((r, k), version)| match r {
                Err(f) => {
                    fatal |= matches!(f, bindings::Failure::Fatal(_));
                    Err(self.failed(f))
                }
                Ok(outcome) => {
                    let bytes = outcome.state.len()
                        + outcome.emits.iter().map(|e| e.value.len()).sum::<usize>();
                    self.check_output(bytes)?;
                    let state = State::checked(format, outcome.state).map_err(|e| {
                        PluginError::BadOutput {
                            plugin: self.plugin.name.to_string(),
                            message: format!("returned a state for key {:?} that is {e}", k.key),
                        }
                    })?;
                    Ok(Folded {
                        state,
                        version,
                        emits: outcome.emits,
                    })
                }
            })
            .collect();
        if fatal {
            self.live = None;
        }
        Ok(out)
    }

    /// A 0.1.0 aggregator: one call per key, JSON state text.
    fn fold_v01(&mut self, batch: &[KeyInput<'_>]) -> Vec<Result<Folded, PluginError>> {
        batch.iter().map(|k| self.apply_v01(k)).collect()
    }

    fn apply_v01(&mut self, k: &KeyInput<'_>) -> Result<Folded, PluginError> {
        let timeout_ms = self.plugin.config.timeout_ms;
        let state = k
            .state
            .map(|s| s.in_format(StateFormat::Json))
            .transpose()
            .map_err(|e| PluginError::BadState {
                plugin: self.plugin.name.to_string(),
                key: k.key.to_owned(),
                message: e.to_string(),
            })?;
        let state = state
            .as_deref()
            .map(|s| std::str::from_utf8(s).unwrap_or("null"));
        let live = self.live()?;
        let Guest::AggregatorV01(guest) = &live.guest else {
            return Err(self.wrong_kind("an aggregator"));
        };
        let store = &mut live.store;
        store.data_mut().key.clear();
        store.data_mut().key.push_str(k.key);
        store.data_mut().offset = k.events.first().map(|e| e.offset);
        store.data_mut().note_traces(k.events.iter());
        arm(store, timeout_ms);
        let r = guest
            .call_apply(&mut *store, k.key, state, k.events)
            .map_err(anyhow::Error::from);
        let hit = ended(store);
        match r {
            Err(e) => {
                self.live = None;
                Err(classify(&self.plugin, hit, &e))
            }
            Ok(Err(f)) => {
                if matches!(f, bindings::Failure::Fatal(_)) {
                    self.live = None;
                }
                Err(self.failed(f))
            }
            Ok(Ok(outcome)) => {
                let bytes = outcome.state.len()
                    + outcome.emits.iter().map(|e| e.value.len()).sum::<usize>();
                self.check_output(bytes)?;
                let state =
                    State::checked(StateFormat::Json, outcome.state.into_bytes()).map_err(|e| {
                        PluginError::BadOutput {
                            plugin: self.plugin.name.to_string(),
                            message: format!("returned a state for key {:?} that is {e}", k.key),
                        }
                    })?;
                Ok(Folded {
                    state,
                    version: 0,
                    emits: outcome.emits,
                })
            }
        }
    }

    /// Runs the handler over a batch; one result per event.
    ///
    /// # Errors
    /// A [`PluginError`] for the whole call (trap, limit); per-event
    /// failures are in the returned list.
    pub fn handle(
        &mut self,
        events: &[Event<'_>],
    ) -> Result<Vec<Result<Vec<Emitted>, PluginError>>, PluginError> {
        let started = std::time::Instant::now();
        let r = self.handle_once(events);
        crate::telemetry::plugin_call(
            &self.plugin.name,
            started.elapsed(),
            r.as_ref().err().map(PluginError::class),
        );
        if let Ok(results) = &r {
            for e in results.iter().filter_map(|x| x.as_ref().err()) {
                crate::telemetry::plugin_failure(&self.plugin.name, e.class());
            }
        }
        r
    }

    fn handle_once(
        &mut self,
        events: &[Event<'_>],
    ) -> Result<Vec<Result<Vec<Emitted>, PluginError>>, PluginError> {
        let timeout_ms = self.plugin.config.timeout_ms;
        let live = self.live()?;
        let store = &mut live.store;
        store.data_mut().key.clear();
        store.data_mut().offset = events.first().map(|e| e.offset);
        store.data_mut().note_traces(events.iter());
        arm(store, timeout_ms);
        let r = match &live.guest {
            Guest::Handler(guest) => guest.call_handle(&mut *store, events),
            Guest::HandlerV01(guest) => guest.call_handle(&mut *store, events),
            Guest::Aggregator { .. } | Guest::AggregatorV01(_) => {
                return Err(self.wrong_kind("a handler"));
            }
        }
        .map_err(anyhow::Error::from);
        let hit = ended(store);
        let results = self.results_of(r, hit, events.len(), "handle", "events")?;
        let bytes: usize = results
            .iter()
            .flat_map(|r| r.iter().flatten())
            .map(|e| e.value.len())
            .sum();
        self.check_output(bytes)?;
        Ok(results
            .into_iter()
            .map(|r| {
                r.map_err(|f| {
                    if matches!(f, bindings::Failure::Fatal(_)) {
                        self.live = None;
                    }
                    self.failed(f)
                })
            })
            .collect())
    }
}

/// WASI for one instance: nothing but what the plugin's grants name.
fn wasi_ctx(config: &PluginConfig) -> Result<WasiCtx, PluginError> {
    let mut b = WasiCtx::builder();
    for (k, v) in &config.grants.env {
        b.env(k, v);
    }
    for d in &config.grants.read_dirs {
        b.preopened_dir(&d.host, &d.guest, FsPerms::ReadOnly)
            .map_err(|e| PluginError::Instantiate {
                plugin: config.name.clone(),
                message: format!("cannot grant {} as {}: {e}", d.host.display(), d.guest),
            })?;
    }
    Ok(b.build())
}

/// Sets the call's deadline and clears the memory-limit flag.
fn arm(store: &mut Store<PluginCtx>, timeout_ms: u64) {
    let tick_ms = u64::try_from(EPOCH_TICK.as_millis()).unwrap_or(1).max(1);
    store.set_epoch_deadline(timeout_ms.div_ceil(tick_ms) + 1);
    store.data_mut().limiter.hit = false;
    store.data_mut().said = None;
}

/// How a call ended, as the host saw it: whether it hit the memory limit,
/// and the last error line the plugin logged.
struct Ended {
    memory_hit: bool,
    said: Option<String>,
}

fn ended(store: &mut Store<PluginCtx>) -> Ended {
    Ended {
        memory_hit: store.data().limiter.hit,
        said: store.data_mut().said.take(),
    }
}

fn classify(plugin: &Plugin, ended: Ended, e: &anyhow::Error) -> PluginError {
    let name = plugin.name.to_string();
    if ended.memory_hit {
        return PluginError::MemoryLimit {
            plugin: name,
            memory_mb: plugin.config.memory_mb,
        };
    }
    if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return PluginError::Timeout {
            plugin: name,
            timeout_ms: plugin.config.timeout_ms,
        };
    }
    // What the plugin said before it trapped (a panic message naming its
    // file and line) comes first: the trap itself only says where in the
    // wasm it stopped.
    PluginError::Trap {
        plugin: name,
        message: match ended.said {
            Some(said) => format!("{said}\n{e:#}"),
            None => format!("{e:#}"),
        },
    }
}
