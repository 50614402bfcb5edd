//! Pipelines that change while the host runs: a config reload (SIGHUP or
//! `POST /v1/config/reload`) adds, removes and changes pipelines — their
//! topics, key fields, plugins and schedules — without a restart.
//!
//! A reload is checked whole before anything changes: the file parses and
//! validates; nothing outside the pipelines, plugins and schedules changed
//! (those sections are read once, at start); every plugin a new or changed
//! pipeline uses loads in its role; every reader schema can read its
//! subject's versions; every plugin's schema contract holds for the topics
//! it will read; every input topic exists (or will be created) with the
//! partition count a changed pipeline's states are kept under. A reload that
//! fails any of these changes nothing and lists every problem.
//!
//! Then the removed and changed pipelines' workers stop (each commits the
//! batch in flight), the plugin registry, the SSE channels and the routes
//! switch, and the added and changed pipelines start where their offsets
//! say. Unchanged pipelines never stop. A pipeline's state stays in the
//! store when it is removed, and a changed pipeline keeps its state; a
//! changed topic is read from its beginning (offsets are kept per topic).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use arc_swap::ArcSwap;

use super::serve::{
    Overrides, Uses, contract_problems, contract_uses, ensure_pipeline_topics, pipeline_decoder,
    plugin_roles, router, watch_plugins,
};
use crate::config::{Config, PipelineConfig, SourceConfig};
use crate::execute::Instance;
use crate::execute::registry::{Registry, Slot};
use crate::http::{AppState, ReloadFailure};
use crate::notify::Hub;
use crate::pipeline::{Intake, PauseSwitch, PipelineLock, StopFlag, Wiring, Worker, spawn};
use crate::sink::Sink;
use crate::source::embedded::{EmbeddedLog, EmbeddedSource};
use crate::source::kafka::KafkaSource;
use crate::source::restore::Ownership;
use crate::source::{Readiness, Source};
use crate::store::Store;

/// A running pipeline's worker thread and its own stop flag.
struct Running {
    stop: StopFlag,
    thread: std::thread::JoinHandle<()>,
}

/// What a reload did, pipeline names by what happened to them.
#[derive(Debug, Default, serde::Serialize)]
pub struct Reloaded {
    /// Pipelines started by this reload.
    pub added: Vec<String>,
    /// Pipelines stopped and no longer served (their state stays stored).
    pub removed: Vec<String>,
    /// Pipelines restarted with their new settings.
    pub changed: Vec<String>,
    /// Pipelines that ran on untouched.
    pub unchanged: Vec<String>,
}

/// What the pipelines share, and what a reload swaps.
pub(super) struct Host {
    pub config_path: PathBuf,
    pub overrides: Overrides,
    /// The running config; held for the whole of a reload, so reloads take
    /// turns.
    pub config: Mutex<Config>,
    pub store: Store,
    pub log: Arc<EmbeddedLog>,
    pub sink: Sink,
    pub registry: Arc<Registry>,
    pub schemas: Option<Arc<crate::schema::Registry>>,
    pub schema_source: Arc<dyn crate::schema::SchemaSource>,
    /// Which plugin reads which subjects (the schema contracts' checks).
    pub uses: Arc<ArcSwap<Uses>>,
    pub hub: Hub,
    pub readiness: Readiness,
    /// Set at shutdown: no worker starts after it.
    pub stopping: StopFlag,
    pub failed: Arc<Mutex<Option<String>>>,
    pub shutdown: Arc<tokio::sync::Notify>,
    workers: Mutex<BTreeMap<String, Running>>,
    /// The HTTP state the routes were built from (set once serving).
    pub app: Mutex<Option<AppState>>,
    /// The routes being served, swapped by a reload.
    pub router: Arc<ArcSwap<axum::Router>>,
    pub watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

/// A pipeline's input, with (in cluster mode) the ownership of the
/// partitions its restorer is given.
pub(super) type Input = (Box<dyn Source>, Option<Arc<Ownership>>);

/// What a pipeline's worker is started with, besides the shared parts.
pub(super) struct Start {
    pub input: Box<dyn Source>,
    pub intake: Intake,
    pub aligned: bool,
    pub lock: PipelineLock,
    pub paused: Arc<PauseSwitch>,
    pub ownership: Option<Arc<Ownership>>,
}

impl Host {
    /// Shared parts, no workers yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config_path: PathBuf,
        overrides: Overrides,
        config: Config,
        store: Store,
        log: Arc<EmbeddedLog>,
        sink: Sink,
        registry: Arc<Registry>,
        schemas: Option<Arc<crate::schema::Registry>>,
        uses: Arc<ArcSwap<Uses>>,
        hub: Hub,
        readiness: Readiness,
    ) -> Self {
        let schema_source: Arc<dyn crate::schema::SchemaSource> =
            match (&schemas, &config.registry.url) {
                (Some(r), _) => r.clone(),
                (None, url) => Arc::new(crate::schema::external::Remote::new(
                    url.as_deref().unwrap_or_default(),
                )),
            };
        Host {
            config_path,
            overrides,
            config: Mutex::new(config),
            store,
            log,
            sink,
            registry,
            schemas,
            schema_source,
            uses,
            hub,
            readiness,
            stopping: StopFlag::default(),
            failed: Arc::default(),
            shutdown: Arc::default(),
            workers: Mutex::default(),
            app: Mutex::new(None),
            router: Arc::new(ArcSwap::from_pointee(axum::Router::new())),
            watcher: Mutex::new(None),
        }
    }

    /// Pipeline `p`'s input: the embedded topic, or a Kafka consumer in the
    /// pipeline's group (in cluster mode with the restorer of the
    /// partitions this host is given, whose ownership is returned).
    ///
    /// # Errors
    /// A topic that cannot be opened or a consumer that cannot be made.
    pub fn open_input(
        &self,
        config: &Config,
        p: &PipelineConfig,
        partitions: u32,
    ) -> anyhow::Result<Input> {
        let k = match &config.source {
            SourceConfig::Embedded(_) => {
                let source = EmbeddedSource::open(self.log.clone(), &p.name, &p.topic)
                    .with_context(|| format!("pipeline {:?}: topic {:?}", p.name, p.topic))?;
                return Ok((Box::new(source), None));
            }
            SourceConfig::Kafka(k) => k,
        };
        let delivered: Option<crate::source::kafka::Delivered> = match &self.sink {
            Sink::Kafka(s) => {
                let s = s.clone();
                Some(Arc::new(move || s.delivered_below()))
            }
            Sink::Embedded(_) => None,
        };
        let mut ownership = None;
        let restorer = match (&config.cluster, &self.sink, p.restore_topic(&k.group_id)) {
            (Some(cluster), Sink::Kafka(s), Some(topic)) => {
                let owned = Ownership::new(&p.name, &topic, partitions);
                ownership = Some(owned.clone());
                Some(crate::source::restore::Restorer::new(
                    owned,
                    &p.topic,
                    self.store.clone(),
                    s.clone(),
                    cluster.clone(),
                    k.clone(),
                    self.hub.clone(),
                ))
            }
            _ => None,
        };
        let source = KafkaSource::open(
            k,
            self.store.clone(),
            &p.name,
            &p.topic,
            self.readiness.clone(),
            delivered,
            restorer,
        )
        .with_context(|| format!("pipeline {:?}", p.name))?;
        Ok((Box::new(source), ownership))
    }

    /// Starts pipeline `p`'s worker on its own thread; a worker that fails
    /// stops the host.
    ///
    /// # Errors
    /// A plugin that is not loaded, a source that cannot be chained, a
    /// store that cannot be read, or a host already shutting down.
    pub fn start(&self, config: &Config, p: &PipelineConfig, s: Start) -> anyhow::Result<()> {
        let get = |name: &String| {
            self.registry
                .slot(name)
                .map(|slot| Instance::of_slot(slot).in_pipeline(&p.name))
                .with_context(|| format!("pipeline {:?}: plugin {name:?} is not loaded", p.name))
        };
        let aggregator = p.aggregator.as_ref().map(get).transpose()?;
        let handlers = p
            .handlers
            .iter()
            .map(get)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let source = super::serve::chain(config, p, &self.log, s.input)?;
        let worker = Worker::new(
            p.clone(),
            aggregator,
            handlers,
            Wiring {
                source: Box::new(source),
                changelog_by_partition: s.aligned,
                intake: s.intake,
                sink: self.sink.clone(),
                store: self.store.clone(),
                hub: self.hub.clone(),
                lock: s.lock,
                ownership: s.ownership,
                paused: s.paused,
                log: self.log.clone(),
                schedules: config.schedules_of(&p.name),
            },
        )?;
        let mut workers = crate::lock(&self.workers);
        if self.stopping.load(Ordering::SeqCst) {
            anyhow::bail!("pipeline {:?} not started: the host is stopping", p.name);
        }
        let stop = StopFlag::default();
        let (failed, shutdown) = (self.failed.clone(), self.shutdown.clone());
        let thread = spawn(worker, stop.clone(), move |e| {
            if let Ok(mut f) = failed.lock() {
                *f = Some(format!("a pipeline failed: {e:#}"));
            }
            shutdown.notify_one();
        })?;
        workers.insert(p.name.clone(), Running { stop, thread });
        Ok(())
    }

    /// A running pipeline's input partition count (its intake's).
    fn partitions_of(&self, pipeline: &str) -> Option<u32> {
        crate::lock(&self.app)
            .as_ref()
            .and_then(|app| app.intakes.get(pipeline))
            .map(Intake::partitions)
    }

    /// Stops one pipeline's worker and waits for it: it commits the batch
    /// in flight first.
    fn stop_worker(&self, name: &str) {
        let running = crate::lock(&self.workers).remove(name);
        if let Some(r) = running {
            r.stop.store(true, Ordering::SeqCst);
            if r.thread.join().is_err() {
                tracing::error!(pipeline = name, "the pipeline's worker panicked");
            }
        }
    }

    /// Shutdown: every worker stops taking input; none starts after this.
    pub fn signal_stop(&self) {
        let workers = crate::lock(&self.workers);
        self.stopping.store(true, Ordering::SeqCst);
        for r in workers.values() {
            r.stop.store(true, Ordering::SeqCst);
        }
    }

    /// Shutdown: waits for every worker to commit and end.
    pub fn join_all(&self) {
        self.signal_stop();
        let workers = std::mem::take(&mut *crate::lock(&self.workers));
        for (name, r) in workers {
            if r.thread.join().is_err() {
                tracing::error!(pipeline = %name, "the pipeline's worker panicked");
            }
        }
    }

    /// Reads the config file again and applies what changed in its
    /// pipelines, plugins and schedules; see the module's text.
    ///
    /// # Errors
    /// Every problem found (nothing changed then), or what went wrong while
    /// switching (named per pipeline; the new config is the running one
    /// then).
    pub fn reload(&self) -> Result<Reloaded, ReloadFailure> {
        let refused = |problems| ReloadFailure {
            applied: false,
            problems,
        };
        let mut running = crate::lock(&self.config);
        if self.stopping.load(Ordering::SeqCst) {
            return Err(refused(vec!["the host is stopping".into()]));
        }
        let mut next =
            Config::load(&self.config_path).map_err(|e| refused(lines(&format!("{e:#}"))))?;
        self.overrides.apply(&mut next, &self.config_path);
        let plan = self.check(&running, &next).map_err(refused)?;
        let (reloaded, problems) = self.apply(&next, plan).map_err(refused)?;
        *running = next;
        if problems.is_empty() {
            Ok(reloaded)
        } else {
            Err(ReloadFailure {
                applied: true,
                problems,
            })
        }
    }

    /// Everything a reload can check before it changes anything.
    fn check(&self, old: &Config, new: &Config) -> Result<Plan, Vec<String>> {
        let mut problems = frozen_changes(old, new);
        let roles = match plugin_roles(new) {
            Ok(r) => r,
            Err(e) => {
                problems.extend(lines(&format!("{e:#}")));
                Vec::new()
            }
        };
        // Plugins whose slot a reload must (re)load: new, or declared or
        // used otherwise than the running slot.
        let mut slots = Vec::new();
        let mut reloaded_plugins = HashSet::new();
        for (pc, path, kind) in &roles {
            let same = self
                .registry
                .loaded_as(&pc.name)
                .is_some_and(|(c, k, at)| c == *pc && k == *kind && at == *path);
            if same {
                continue;
            }
            reloaded_plugins.insert(pc.name.clone());
            match self.registry.prepare(pc, path, *kind) {
                Ok(slot) => slots.push(slot),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        let in_use: HashSet<&str> = roles.iter().map(|(pc, _, _)| pc.name.as_str()).collect();
        let removed_plugins: Vec<String> = self
            .registry
            .statuses()
            .into_iter()
            .map(|s| s.name)
            .filter(|n| !in_use.contains(n.as_str()))
            .collect();

        let old_by: HashMap<&str, &PipelineConfig> =
            old.pipelines.iter().map(|p| (p.name.as_str(), p)).collect();
        let new_names: HashSet<&str> = new.pipelines.iter().map(|p| p.name.as_str()).collect();
        let mut plan = Plan {
            slots,
            removed_plugins,
            ..Plan::default()
        };
        for p in &new.pipelines {
            let uses_reloaded = p
                .aggregator
                .iter()
                .chain(&p.handlers)
                .any(|n| reloaded_plugins.contains(n));
            match old_by.get(p.name.as_str()) {
                None => plan.reloaded.added.push(p.name.clone()),
                Some(o)
                    if *o != p
                        || uses_reloaded
                        || old.schedules_of(&p.name) != new.schedules_of(&p.name) =>
                {
                    plan.reloaded.changed.push(p.name.clone());
                }
                Some(_) => plan.reloaded.unchanged.push(p.name.clone()),
            }
        }
        plan.reloaded.removed = old
            .pipelines
            .iter()
            .filter(|p| !new_names.contains(p.name.as_str()))
            .map(|p| p.name.clone())
            .collect();
        let touched = plan.touched();
        if new.cluster.is_some() && !touched.is_empty() {
            problems.push(format!(
                "pipelines {touched:?} changed, but this host is one of a group ([cluster]): every host must run the same pipelines, so change the config on each and restart them one at a time"
            ));
        }
        if let Some(app) = crate::lock(&self.app).as_ref() {
            for name in plan.reloaded.changed.iter().chain(&plan.reloaded.removed) {
                if app
                    .replays
                    .get(name)
                    .is_some_and(crate::pipeline::replay::running)
                {
                    problems.push(format!(
                        "pipeline {name:?}: a replay is running; reload after it ends"
                    ));
                }
            }
        }

        // Decoders of the added and changed pipelines (their reader
        // schemas against the registered versions).
        let starting: Vec<&PipelineConfig> = new
            .pipelines
            .iter()
            .filter(|p| plan.starts(&p.name))
            .collect();
        for p in starting.iter().copied() {
            if !p.value_format.uses_registry() {
                plan.decoders
                    .insert(p.name.clone(), (crate::decode::Decoder::Json, None));
                continue;
            }
            match pipeline_decoder(new, p, self.schemas.as_ref(), &self.schema_source) {
                Ok(d) => {
                    plan.decoders.insert(p.name.clone(), d);
                }
                Err(e) => problems.push(format!("{e:#}")),
            }
        }

        // Schema contracts, of every plugin in use, against what its
        // pipelines will read.
        plan.uses = contract_uses(new);
        if let Some(schemas) = &self.schemas {
            for (pc, _, _) in &roles {
                let schema = plan
                    .slots
                    .iter()
                    .find(|s| s.status().name == pc.name)
                    .cloned()
                    .or_else(|| self.registry.slot(&pc.name))
                    .and_then(|s| s.current().reader_schema.clone());
                if let Some(schema) = schema {
                    problems.extend(
                        contract_problems(schemas, &plan.uses, &pc.name, &schema)
                            .into_iter()
                            .map(|m| format!("plugin {:?}'s schema contract: {m}", pc.name)),
                    );
                }
            }
        }

        // Input topics: they exist (or will be made), and a changed
        // pipeline's keeps the partition count its states are kept under.
        for p in starting {
            let have = match &self.sink {
                Sink::Embedded(log) => Ok(log.partitions(&p.topic)),
                Sink::Kafka(k) => k.partitions(&p.topic).map_err(|e| e.to_string()),
            };
            let was = self.partitions_of(&p.name);
            match (have, was) {
                (Err(e), _) => {
                    problems.push(format!("pipeline {:?}: topic {:?}: {e}", p.name, p.topic))
                }
                (Ok(Some(n)), Some(was)) if n != was && !plan.reloaded.added.contains(&p.name) => {
                    problems.push(format!(
                        "pipeline {:?}: topic {:?} has {n} partitions, but the pipeline's states are kept under {was}: keep the partition count, or add the topic as a new pipeline",
                        p.name, p.topic
                    ));
                }
                (Ok(None), _) if matches!(&new.source, SourceConfig::Kafka(k) if !k.create_topics) =>
                {
                    problems.push(format!(
                        "pipeline {:?}: topic {:?} does not exist (and source.create_topics is off)",
                        p.name, p.topic
                    ));
                }
                _ => {}
            }
        }
        if problems.is_empty() {
            Ok(plan)
        } else {
            Err(problems)
        }
    }

    /// Switches to `new` along `plan`: what it did and what failed once
    /// the switch had begun.
    ///
    /// # Errors
    /// The topics cannot be made: nothing changed.
    fn apply(&self, new: &Config, plan: Plan) -> Result<(Reloaded, Vec<String>), Vec<String>> {
        let Plan {
            slots,
            removed_plugins,
            mut decoders,
            uses,
            reloaded,
        } = plan;
        let mut problems = Vec::new();
        // Topics first: a failure here leaves every pipeline running.
        // The input partition counts of the pipelines that start.
        let mut partitions = HashMap::new();
        let mut aligned = HashMap::new();
        for p in new
            .pipelines
            .iter()
            .filter(|p| reloaded_starts(&reloaded, &p.name))
        {
            let keep = self.partitions_of(&p.name);
            match ensure_pipeline_topics(new, &self.log, &self.sink, p, keep) {
                Ok((n, a)) => {
                    partitions.insert(p.name.clone(), n);
                    aligned.insert(p.name.clone(), a);
                }
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        // Stop what goes away or changes.
        for name in reloaded.removed.iter().chain(&reloaded.changed) {
            self.stop_worker(name);
            tracing::info!(pipeline = %name, "pipeline stopped for the reload");
        }
        for name in &reloaded.removed {
            self.hub.remove(name);
            self.readiness.remove(name);
        }

        // Plugins, contracts, reader schemas.
        self.registry.update(slots, &removed_plugins);
        self.uses.store(Arc::new(uses));
        if let Some(schemas) = &self.schemas {
            let mut readers: Vec<crate::schema::Reader> = schemas
                .readers()
                .into_iter()
                .filter(|r| {
                    !reloaded_starts(&reloaded, &r.pipeline)
                        && !reloaded.removed.contains(&r.pipeline)
                })
                .collect();
            readers.extend(decoders.values().filter_map(|(_, r)| r.clone()));
            schemas.set_readers(readers);
        }

        // The HTTP state: same store, hub and gate; new pipeline maps.
        let Some(mut app) = crate::lock(&self.app).clone() else {
            return Ok((reloaded, vec!["the HTTP state is not ready".into()]));
        };
        let mut intakes = HashMap::clone(&app.intakes);
        let mut locks = HashMap::clone(&app.locks);
        let mut paused = HashMap::clone(&app.paused);
        let mut replays = HashMap::clone(&app.replays);
        for name in &reloaded.removed {
            intakes.remove(name);
            locks.remove(name);
            paused.remove(name);
            replays.remove(name);
        }
        let mut starts = Vec::new();
        for p in new
            .pipelines
            .iter()
            .filter(|p| reloaded_starts(&reloaded, &p.name))
        {
            let n = partitions.get(&p.name).copied().unwrap_or(1);
            let Some((decoder, _)) = decoders.remove(&p.name) else {
                problems.push(format!("pipeline {:?}: no decoder", p.name));
                continue;
            };
            let intake = Intake::new(p, decoder, n, new.misrouted_keys(p));
            intakes.insert(p.name.clone(), intake.clone());
            let lock = locks.entry(p.name.clone()).or_default().clone();
            replays.entry(p.name.clone()).or_default();
            let switch = match paused.get(&p.name) {
                Some(s) => s.clone(),
                None => {
                    let is = self.store.paused(&p.name).unwrap_or(false);
                    crate::telemetry::paused(&p.name, is);
                    let s = Arc::new(PauseSwitch::new(is));
                    paused.insert(p.name.clone(), s.clone());
                    s
                }
            };
            if reloaded.added.contains(&p.name) {
                match self.store.last_seqs(&p.name, n) {
                    Ok(last) => self.hub.add(&p.name, last, p.sse_history),
                    Err(e) => problems.push(format!(
                        "pipeline {:?}: cannot read its change numbers: {e}",
                        p.name
                    )),
                }
                if matches!(new.source, SourceConfig::Embedded(_)) {
                    self.readiness.set(&p.name, None);
                }
            }
            starts.push((p, intake, lock, switch));
        }
        app.intakes = Arc::new(intakes);
        app.locks = Arc::new(locks);
        app.paused = Arc::new(paused);
        app.replays = Arc::new(replays);
        app.pipelines = Arc::new(
            new.pipelines
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
        );
        app.schedules = Arc::new(new.schedules.clone());
        app.gate.create_paths.store(Arc::new(
            new.pipelines
                .iter()
                .filter_map(|p| p.mount.as_ref())
                .filter(|m| m.create.is_some())
                .map(|m| m.path.clone())
                .collect(),
        ));
        match router(app.clone(), &new.http) {
            Ok(r) => {
                self.router.store(Arc::new(r));
                *crate::lock(&self.app) = Some(app);
            }
            Err(e) => problems.push(format!("the routes: {e:#}")),
        }

        // Start what is new or changed.
        for (p, intake, lock, paused) in starts {
            let n = partitions.get(&p.name).copied().unwrap_or(1);
            let started = self.open_input(new, p, n).and_then(|(input, ownership)| {
                self.start(
                    new,
                    p,
                    Start {
                        input,
                        intake,
                        aligned: aligned.get(&p.name).copied().unwrap_or(false),
                        lock,
                        paused,
                        ownership,
                    },
                )
            });
            match started {
                Ok(()) => {
                    tracing::info!(pipeline = %p.name, topic = %p.topic, "pipeline started by the reload")
                }
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        if new.http.watch_plugins {
            let mut w = crate::lock(&self.watcher);
            *w = None;
            match watch_plugins(self.registry.clone()) {
                Ok(watcher) => *w = Some(watcher),
                Err(e) => problems.push(format!("watching the plugins: {e:#}")),
            }
        }
        Ok((reloaded, problems))
    }
}

/// What a checked reload will do.
#[derive(Default)]
struct Plan {
    /// Plugins loaded for it (new, or declared otherwise).
    slots: Vec<Arc<Slot>>,
    /// Plugins no pipeline uses any more.
    removed_plugins: Vec<String>,
    /// Added and changed pipelines' decoders and reader schemas.
    decoders: HashMap<String, (crate::decode::Decoder, Option<crate::schema::Reader>)>,
    /// Which plugin reads which subjects, after it.
    uses: Uses,
    reloaded: Reloaded,
}

impl Plan {
    fn starts(&self, name: &str) -> bool {
        reloaded_starts(&self.reloaded, name)
    }

    fn touched(&self) -> Vec<String> {
        let r = &self.reloaded;
        r.added
            .iter()
            .chain(&r.changed)
            .chain(&r.removed)
            .cloned()
            .collect()
    }
}

/// Whether the pipeline starts in this reload (added or changed).
fn reloaded_starts(r: &Reloaded, name: &str) -> bool {
    r.added.iter().chain(&r.changed).any(|n| n == name)
}

/// The sections read once, at start, that differ.
fn frozen_changes(old: &Config, new: &Config) -> Vec<String> {
    [
        ("source", old.source != new.source),
        ("store", old.store != new.store),
        ("http", old.http != new.http),
        ("registry", old.registry != new.registry),
        ("cluster", old.cluster != new.cluster),
        ("shutdown", old.shutdown != new.shutdown),
        ("tracing", old.trace != new.trace),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(section, _)| {
        format!(
            "[{section}] changed: it is read once, at start; restart the host to apply it (only pipelines, plugins and schedules reload)"
        )
    })
    .collect()
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim().trim_start_matches("- ").to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}
