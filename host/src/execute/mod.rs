//! Stage 4, execute: plugins run as WebAssembly components in wasmtime.
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
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Config as WasmConfig, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::config::{PluginConfig, PluginKind};
use bindings::{AggregatorGuest, AggregatorIndices, HandlerGuest, HandlerIndices};

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
    /// is not JSON).
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
            PluginError::Failed { class, .. } => class,
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
}

/// Per-store host state: limits, WASI (nothing granted) and log context.
pub struct PluginCtx {
    plugin: Arc<str>,
    /// The pipeline the instance serves, for log lines.
    pipeline: Arc<str>,
    /// The key being processed, for log lines (empty in a handler's batch).
    pub key: String,
    /// The offset of the first event of the call, for log lines.
    offset: Option<i64>,
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

impl bindings::Host for PluginCtx {
    fn log(&mut self, level: bindings::Level, message: String) {
        let plugin = &*self.plugin;
        let pipeline = (!self.pipeline.is_empty()).then_some(&*self.pipeline);
        let key = (!self.key.is_empty()).then_some(self.key.as_str());
        let offset = self.offset;
        match level {
            bindings::Level::Trace => tracing::trace!(pipeline, plugin, key, offset, "{message}"),
            bindings::Level::Debug => tracing::debug!(pipeline, plugin, key, offset, "{message}"),
            bindings::Level::Info => tracing::info!(pipeline, plugin, key, offset, "{message}"),
            bindings::Level::Warn => tracing::warn!(pipeline, plugin, key, offset, "{message}"),
            bindings::Level::Error => tracing::error!(pipeline, plugin, key, offset, "{message}"),
        }
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
        let mut config = WasmConfig::new();
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
        bindings::eddy::plugin::host::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(
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
    /// interface of `expected` (or of either kind when `None`) and import
    /// nothing beyond the host interface and WASI.
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
        let kind = match (
            expected,
            has(bindings::AGGREGATOR_EXPORT),
            has(bindings::HANDLER_EXPORT),
        ) {
            (Some(PluginKind::Aggregator), true, _) | (None, true, false) => PluginKind::Aggregator,
            (Some(PluginKind::Handler), _, true) | (None, false, true) => PluginKind::Handler,
            (None, true, true) => {
                return Err(wrong(
                    "exports both an aggregator and a handler; a plugin is one of them".into(),
                ));
            }
            (want, _, _) => {
                let want = want.map_or_else(
                    || {
                        format!(
                            "{} or {}",
                            bindings::AGGREGATOR_EXPORT,
                            bindings::HANDLER_EXPORT
                        )
                    },
                    |k| match k {
                        PluginKind::Aggregator => bindings::AGGREGATOR_EXPORT.to_owned(),
                        PluginKind::Handler => bindings::HANDLER_EXPORT.to_owned(),
                    },
                );
                return Err(wrong(format!(
                    "does not export {want}; it exports [{}]",
                    exports.join(", ")
                )));
            }
        };
        let indices = match kind {
            PluginKind::Aggregator => {
                Indices::Aggregator(AggregatorIndices::new(&pre).map_err(|e| {
                    wrong(format!(
                        "{} does not match the contract: {e:#}",
                        bindings::AGGREGATOR_EXPORT
                    ))
                })?)
            }
            PluginKind::Handler => Indices::Handler(HandlerIndices::new(&pre).map_err(|e| {
                wrong(format!(
                    "{} does not match the contract: {e:#}",
                    bindings::HANDLER_EXPORT
                ))
            })?),
        };
        Ok(Plugin {
            name: Arc::from(config.name.as_str()),
            kind,
            version: content_hash(bytes),
            declared_version: declared_version(bytes),
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

/// A short content hash identifying a component's bytes (FNV-1a, 64 bits).
pub fn content_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

enum Indices {
    Aggregator(AggregatorIndices),
    Handler(HandlerIndices),
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
}

enum Guest {
    Aggregator(AggregatorGuest),
    Handler(HandlerGuest),
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
            let instance = p
                .pre
                .instantiate(&mut store)
                .map_err(|e| classify(p, store.data().limiter.hit, &e.into()))?;
            let guest = match &p.indices {
                Indices::Aggregator(i) => Guest::Aggregator(
                    i.load(&mut store, &instance)
                        .map_err(|e| classify(p, store.data().limiter.hit, &e.into()))?,
                ),
                Indices::Handler(i) => Guest::Handler(
                    i.load(&mut store, &instance)
                        .map_err(|e| classify(p, store.data().limiter.hit, &e.into()))?,
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

    /// Runs the aggregator over one key's events.
    ///
    /// # Errors
    /// Any [`PluginError`]; after a trap, a limit hit or a fatal failure the
    /// instance is recycled.
    pub fn apply(
        &mut self,
        key: &str,
        state: Option<&str>,
        events: &[bindings::Event],
    ) -> Result<(String, Vec<Emitted>), PluginError> {
        let started = std::time::Instant::now();
        let r = self.apply_once(key, state, events);
        let took = started.elapsed().as_secs_f64();
        self.calls
            .get_or_insert_with(|| crate::telemetry::plugin_calls(&self.plugin.name))
            .record(took);
        if let Err(e) = &r {
            crate::telemetry::plugin_failure(&self.plugin.name, e.class());
        }
        r
    }

    fn apply_once(
        &mut self,
        key: &str,
        state: Option<&str>,
        events: &[bindings::Event],
    ) -> Result<(String, Vec<Emitted>), PluginError> {
        let timeout_ms = self.plugin.config.timeout_ms;
        let live = self.live()?;
        let Guest::Aggregator(guest) = &live.guest else {
            return Err(self.wrong_kind("an aggregator"));
        };
        let store = &mut live.store;
        store.data_mut().key.clear();
        store.data_mut().key.push_str(key);
        store.data_mut().offset = events.first().map(|e| e.offset);
        arm(store, timeout_ms);
        let r = guest
            .call_apply(&mut *store, key, state, events)
            .map_err(anyhow::Error::from);
        let hit = store.data().limiter.hit;
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
                // The host serves states as they are (HTTP, SSE, changelog
                // records): they must be JSON.
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&outcome.state) {
                    return Err(PluginError::BadOutput {
                        plugin: self.plugin.name.to_string(),
                        message: format!("returned a state for key {key:?} that is not JSON: {e}"),
                    });
                }
                Ok((outcome.state, outcome.emits))
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
        events: &[bindings::Event],
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
        events: &[bindings::Event],
    ) -> Result<Vec<Result<Vec<Emitted>, PluginError>>, PluginError> {
        let timeout_ms = self.plugin.config.timeout_ms;
        let live = self.live()?;
        let Guest::Handler(guest) = &live.guest else {
            return Err(self.wrong_kind("a handler"));
        };
        let store = &mut live.store;
        store.data_mut().key.clear();
        store.data_mut().offset = events.first().map(|e| e.offset);
        arm(store, timeout_ms);
        let r = guest
            .call_handle(&mut *store, events)
            .map_err(anyhow::Error::from);
        let hit = store.data().limiter.hit;
        let results = match r {
            Err(e) => {
                self.live = None;
                return Err(classify(&self.plugin, hit, &e));
            }
            Ok(results) => results,
        };
        if results.len() != events.len() {
            self.live = None;
            return Err(PluginError::Trap {
                plugin: self.plugin.name.to_string(),
                message: format!(
                    "handle returned {} results for {} events",
                    results.len(),
                    events.len()
                ),
            });
        }
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
}

fn classify(plugin: &Plugin, memory_hit: bool, e: &anyhow::Error) -> PluginError {
    let name = plugin.name.to_string();
    if memory_hit {
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
    PluginError::Trap {
        plugin: name,
        message: format!("{e:#}"),
    }
}
