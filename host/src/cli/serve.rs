//! `eddy run`: open the store, load the plugins, start one worker per
//! pipeline and serve the HTTP API until SIGINT/SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::reload::{Host, Start};
use crate::config::{Config, Durability, EmbeddedConfig, PluginConfig, PluginKind, SourceConfig};
use crate::execute::Runtime;
use crate::execute::registry::Registry;
use crate::http::{AppState, app, body_limit};
use crate::notify::Hub;
use crate::pipeline::PipelineLock;
use crate::sink::Sink;
use crate::sink::kafka::KafkaSink;
use crate::source::embedded::{EmbeddedLog, EmbeddedSource};
use crate::source::{Chain, Source};
use crate::store::{Store, Writeback};

/// Resolves every plugin of the config with the role the pipelines give it.
pub(super) fn plugin_roles(
    config: &Config,
) -> anyhow::Result<Vec<(PluginConfig, PathBuf, PluginKind)>> {
    let mut roles: HashMap<&str, PluginKind> = HashMap::new();
    let mut problems = Vec::new();
    for p in &config.pipelines {
        if let Some(a) = &p.aggregator {
            roles.insert(a, PluginKind::Aggregator);
        }
        for h in &p.handlers {
            if roles.insert(h, PluginKind::Handler) == Some(PluginKind::Aggregator) {
                problems.push(format!(
                    "plugin {h:?} is used both as an aggregator and as a handler"
                ));
            }
        }
    }
    let mut out = Vec::new();
    for pc in &config.plugins {
        let mut pc = pc.clone();
        for d in &mut pc.grants.read_dirs {
            d.host = config.resolve(&d.host);
            if !d.host.is_dir() {
                problems.push(format!(
                    "plugin {:?}: granted directory {} does not exist",
                    pc.name,
                    d.host.display()
                ));
            }
        }
        let Some(kind) = roles.get(pc.name.as_str()).copied() else {
            tracing::warn!(plugin = %pc.name, "plugin is not used by any pipeline; not loaded");
            continue;
        };
        let path = std::path::absolute(config.resolve(&pc.path))?;
        out.push((pc, path, kind));
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    Ok(out)
}

/// Watches the plugins' directories and deploys a changed component
/// (after it has been quiet for a moment, so half-written files are skipped).
pub(super) fn watch_plugins(registry: Arc<Registry>) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Reads of a component (such as a tool stamping a copy of it) are
        // not changes.
        if let Ok(ev) = ev
            && !ev.kind.is_access()
        {
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    })?;
    let mut dirs: Vec<PathBuf> = registry
        .statuses()
        .iter()
        .filter_map(|s| registry.slot(&s.name))
        .filter_map(|slot| slot.path().parent().map(PathBuf::from))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        watcher
            .watch(d, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", d.display()))?;
    }
    std::thread::Builder::new()
        .name("eddy-plugin-watch".into())
        .spawn(move || {
            let quiet = Duration::from_millis(300);
            let mut pending: HashMap<PathBuf, std::time::Instant> = HashMap::new();
            loop {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(p) => {
                        if registry.slot_for_path(&p).is_some() {
                            pending.insert(p, std::time::Instant::now());
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                let ready: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, t)| t.elapsed() >= quiet)
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in ready {
                    pending.remove(&p);
                    let Some(slot) = registry.slot_for_path(&p) else {
                        continue;
                    };
                    let name = slot.status().name;
                    if let Err(e) = registry.deploy_file(&name, "watch") {
                        tracing::warn!(plugin = %name, error = %e, "changed component refused");
                    }
                }
            }
        })?;
    Ok(watcher)
}

/// What [`open_topics`] opened: the embedded log, the sink, each
/// pipeline's input partition count, and the pipelines whose changelog has
/// as many partitions as their input.
pub(super) type Topics = (
    Arc<EmbeddedLog>,
    Sink,
    HashMap<String, u32>,
    std::collections::HashSet<String>,
);

/// Opens the embedded log (always: it holds the pipelines' replay topics)
/// and the sink; creates or checks the topics the pipelines need, and
/// reads each pipeline's input partition count. When a changelog topic has
/// as many partitions as its pipeline's input, each state change goes to
/// the partition numbered as its input's; otherwise (a topic made by an
/// earlier version, or by its users) to the partition its key hashes to.
pub(super) fn open_topics(
    config: &Config,
    store: &Store,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Topics> {
    let local = match &config.source {
        SourceConfig::Embedded(e) => e.clone(),
        SourceConfig::Kafka(_) => EmbeddedConfig::default(),
    };
    let log = EmbeddedLog::open(store.clone(), &local)?;
    for p in &config.pipelines {
        ensure_local_topics(config, &log, p)?;
    }
    let (sink, partitions) = match &config.source {
        SourceConfig::Embedded(_) => {
            let mut partitions = HashMap::new();
            for p in &config.pipelines {
                partitions.insert(p.name.clone(), ensure_embedded_topics(&log, p, None)?);
            }
            (Sink::Embedded(log.clone()), partitions)
        }
        SourceConfig::Kafka(k) => {
            let mut wanted: Vec<(String, u32)> = k
                .topics
                .iter()
                .map(|t| (t.name.clone(), t.partitions))
                .collect();
            if k.create_topics {
                for p in &config.pipelines {
                    wanted.push((p.topic.clone(), k.default_partitions));
                    for (_, t) in output_topics(p) {
                        wanted.push((t, k.default_partitions));
                    }
                }
            }
            wanted.sort();
            wanted.dedup_by(|a, b| a.0 == b.0);
            let wanted: Vec<crate::kafka::NewTopicSpec> = wanted
                .into_iter()
                .map(|(name, partitions)| crate::kafka::NewTopicSpec {
                    name,
                    partitions,
                    configs: Vec::new(),
                })
                .collect();
            rt.block_on(crate::kafka::create_topics(k, &wanted))
                .context("creating Kafka topics")?;
            let outputs: Vec<String> = config
                .pipelines
                .iter()
                .flat_map(|p| output_topics(p).into_iter().map(|(_, t)| t))
                .collect();
            let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
            let sink = KafkaSink::start(k, store.clone(), &outputs)
                .context("starting the Kafka producer for the changelog and dead-letter topics")?;
            let mut partitions = HashMap::new();
            for p in &config.pipelines {
                let n = sink
                    .partitions(&p.topic)
                    .with_context(|| format!("pipeline {:?}: topic {:?}", p.name, p.topic))?
                    .with_context(|| {
                        format!("pipeline {:?}: topic {:?} does not exist", p.name, p.topic)
                    })?;
                partitions.insert(p.name.clone(), n);
            }
            (Sink::Kafka(sink), partitions)
        }
    };
    if let (Some(_), SourceConfig::Kafka(k), Sink::Kafka(sink)) =
        (&config.cluster, &config.source, &sink)
    {
        open_state_changelogs(config, k, sink, &partitions, rt)?;
    }
    let mut aligned = std::collections::HashSet::new();
    for p in &config.pipelines {
        if let Some(n) = partitions.get(&p.name)
            && changelog_aligned(&sink, p, *n)?
        {
            aligned.insert(p.name.clone());
        }
    }
    Ok((log, sink, partitions, aligned))
}

/// A pipeline's changelog and dead-letter topics, when it has them.
fn output_topics(p: &crate::config::PipelineConfig) -> Vec<(&'static str, String)> {
    [
        ("changelog", &p.changelog_topic),
        ("dead-letter", &p.dlq_topic),
    ]
    .into_iter()
    .filter_map(|(what, t)| t.clone().map(|t| (what, t)))
    .collect()
}

/// A pipeline's replay topic and (with an aggregator or a schedule) its
/// timer topic, in the embedded log whatever the source.
fn ensure_local_topics(
    config: &Config,
    log: &EmbeddedLog,
    p: &crate::config::PipelineConfig,
) -> anyhow::Result<()> {
    log.ensure_topic(&p.replay_topic(), Some(1))
        .with_context(|| format!("pipeline {:?}: replay topic", p.name))?;
    if p.aggregator.is_some() || !config.schedules_of(&p.name).is_empty() {
        log.ensure_topic(&p.timer_topic(), Some(1))
            .with_context(|| format!("pipeline {:?}: timer topic", p.name))?;
    }
    Ok(())
}

/// The embedded source: creates a pipeline's input (with `partitions`, or
/// the log's default), changelog (as many partitions as the input) and
/// dead-letter topics when missing; returns the input's partition count.
fn ensure_embedded_topics(
    log: &EmbeddedLog,
    p: &crate::config::PipelineConfig,
    partitions: Option<u32>,
) -> anyhow::Result<u32> {
    let n = log
        .ensure_topic(&p.topic, partitions)
        .with_context(|| format!("pipeline {:?}: topic {:?}", p.name, p.topic))?;
    for (what, t) in output_topics(p) {
        let want = (what == "changelog").then_some(n);
        log.ensure_topic(&t, want)
            .with_context(|| format!("pipeline {:?}: {what} topic {t:?}", p.name))?;
    }
    Ok(n)
}

/// Whether a pipeline's changelog has as many partitions as its input (`n`),
/// so each change goes to the partition numbered as its input's; otherwise
/// (a topic made by an earlier version, or by its users) it is partitioned
/// by key, and a warning says so.
///
/// # Errors
/// The changelog's partition count cannot be read.
fn changelog_aligned(
    sink: &Sink,
    p: &crate::config::PipelineConfig,
    n: u32,
) -> anyhow::Result<bool> {
    let Some(changelog) = &p.changelog_topic else {
        return Ok(false);
    };
    let have = match sink {
        Sink::Embedded(log) => log.partitions(changelog),
        Sink::Kafka(k) => k
            .partitions(changelog)
            .with_context(|| format!("pipeline {:?}: changelog topic {changelog:?}", p.name))?,
    };
    if have != Some(n) {
        tracing::warn!(
            pipeline = %p.name, changelog = %changelog, partitions = ?have, input_partitions = n,
            "the changelog topic has another partition count than the input; its records are partitioned by key"
        );
    }
    Ok(have == Some(n))
}

/// A config reload's new or changed pipeline: its topics, made when missing
/// (a changed pipeline's new input with the partition count `keep` its
/// states are kept under); returns the input's partition count and whether
/// the changelog is aligned with it.
///
/// # Errors
/// A topic that cannot be made, or a Kafka input that does not exist.
pub(super) fn ensure_pipeline_topics(
    config: &Config,
    log: &EmbeddedLog,
    sink: &Sink,
    p: &crate::config::PipelineConfig,
    keep: Option<u32>,
) -> anyhow::Result<(u32, bool)> {
    ensure_local_topics(config, log, p)?;
    let n = match (&config.source, sink) {
        (SourceConfig::Kafka(k), Sink::Kafka(s)) => {
            if k.create_topics {
                let mut wanted = vec![crate::kafka::NewTopicSpec {
                    name: p.topic.clone(),
                    partitions: keep.unwrap_or(k.default_partitions),
                    configs: Vec::new(),
                }];
                wanted.extend(output_topics(p).into_iter().map(|(_, name)| {
                    crate::kafka::NewTopicSpec {
                        name,
                        partitions: k.default_partitions,
                        configs: Vec::new(),
                    }
                }));
                tokio::runtime::Handle::try_current()
                    .context("no async runtime to create the topics on")?
                    .block_on(crate::kafka::create_topics(k, &wanted))
                    .with_context(|| format!("pipeline {:?}: creating its topics", p.name))?;
            }
            s.partitions(&p.topic)
                .with_context(|| format!("pipeline {:?}: topic {:?}", p.name, p.topic))?
                .with_context(|| {
                    format!("pipeline {:?}: topic {:?} does not exist", p.name, p.topic)
                })?
        }
        _ => ensure_embedded_topics(log, p, keep)?,
    };
    Ok((n, changelog_aligned(sink, p, n)?))
}

/// Cluster mode: creates each pipeline's state changelog when missing
/// (compacted, as many partitions as the input) and refuses to start when
/// one has another partition count than its input.
/// Per pipeline (name, input topic), each partition's lag: the input's end
/// offset less the next offset the store holds for it (as `/v1/lag`). A
/// pipeline whose end offsets cannot be read is left out.
fn partition_lags(
    sink: &crate::sink::kafka::KafkaSink,
    store: &crate::store::Store,
    inputs: &[(String, String)],
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<u32, u64>> {
    let mut out = std::collections::BTreeMap::new();
    for (pipeline, topic) in inputs {
        let Ok(Some(ends)) = sink.high_watermarks(topic) else {
            continue;
        };
        let lags = (0u32..)
            .zip(ends)
            .map(|(p, end)| {
                let at = store
                    .stored_offset(pipeline, topic, p)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                (p, end.saturating_sub(at))
            })
            .collect();
        out.insert(pipeline.clone(), lags);
    }
    out
}

fn open_state_changelogs(
    config: &Config,
    k: &crate::config::KafkaConfig,
    sink: &KafkaSink,
    partitions: &HashMap<String, u32>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let mut wanted = Vec::new();
    for p in &config.pipelines {
        if let (Some(topic), Some(n)) = (p.restore_topic(&k.group_id), partitions.get(&p.name)) {
            wanted.push(crate::kafka::NewTopicSpec {
                name: topic,
                partitions: *n,
                configs: vec![("cleanup.policy", "compact".to_owned())],
            });
        }
    }
    let mut create = wanted.clone();
    create.push(crate::kafka::NewTopicSpec {
        name: crate::cluster::hosts_topic(&k.group_id),
        partitions: 1,
        configs: vec![("cleanup.policy", "compact".to_owned())],
    });
    rt.block_on(crate::kafka::create_topics(k, &create))
        .context("creating the state changelog and hosts topics")?;
    for t in &wanted {
        let have = sink
            .partitions(&t.name)
            .with_context(|| format!("state changelog topic {:?}", t.name))?;
        if have != Some(t.partitions) {
            let (pipeline, input) = config
                .pipelines
                .iter()
                .find(|p| p.restore_topic(&k.group_id).as_deref() == Some(t.name.as_str()))
                .map(|p| (p.name.as_str(), p.topic.as_str()))
                .unwrap_or_default();
            anyhow::bail!(
                "pipeline {pipeline:?}: the state changelog topic {:?} has {} partitions and the input topic {input:?} has {}: a partition's state is restored from the changelog partition of the same number, so they must match (delete the changelog topic or name another one with state_changelog_topic)",
                t.name,
                have.map_or_else(|| "no".to_owned(), |n| n.to_string()),
                t.partitions
            );
        }
    }
    Ok(())
}

/// The schema registry that [`open_schemas`] opened (`None`: an external
/// one) and each pipeline's decoder, by pipeline name.
pub(super) type Schemas = (
    Option<Arc<crate::schema::Registry>>,
    HashMap<String, crate::decode::Decoder>,
);

/// Opens the schema registry (embedded, unless `[registry] url` names an
/// external one) and builds each pipeline's decoder: pipelines reading the
/// wire format decode with the registry's writers and their reader schema,
/// after checking that it can read every writer schema of its subject.
pub(super) fn open_schemas(config: &Config, store: &Store) -> anyhow::Result<Schemas> {
    use crate::decode::Decoder;
    use crate::schema::{Registry, SchemaSource, external::Remote};
    let embedded = match &config.registry.url {
        None => Some(Registry::open(store.clone()).context("cannot open the schema registry")?),
        Some(_) => None,
    };
    let source: Arc<dyn SchemaSource> = match (&embedded, &config.registry.url) {
        (Some(r), _) => r.clone(),
        (None, Some(url)) => Arc::new(Remote::new(url)),
        (None, None) => anyhow::bail!("no schema registry"),
    };
    let mut readers = Vec::new();
    let mut intakes = HashMap::new();
    let mut problems = Vec::new();
    for p in &config.pipelines {
        if !p.value_format.uses_registry() {
            intakes.insert(p.name.clone(), Decoder::Json);
            continue;
        }
        match pipeline_decoder(config, p, embedded.as_ref(), &source) {
            Ok((decoder, reader)) => {
                intakes.insert(p.name.clone(), decoder);
                readers.extend(reader);
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    if let Some(r) = &embedded {
        r.set_readers(readers);
    }
    Ok((embedded, intakes))
}

/// A registry-backed pipeline's decoder, and its reader schema for the
/// embedded registry's compatibility checks.
///
/// # Errors
/// An unreadable or invalid reader schema, a message type it lacks, or a
/// reader that cannot read a registered version, each naming the pipeline.
pub(super) fn pipeline_decoder(
    config: &Config,
    p: &crate::config::PipelineConfig,
    embedded: Option<&Arc<crate::schema::Registry>>,
    source: &Arc<dyn crate::schema::SchemaSource>,
) -> anyhow::Result<(crate::decode::Decoder, Option<crate::schema::Reader>)> {
    use crate::config::ValueFormat;
    use crate::decode::Decoder;
    use crate::decode::avro::AvroDecoder;
    use crate::decode::json_schema::JsonSchemaDecoder;
    use crate::decode::protobuf::{ProtoReader, ProtobufDecoder};
    use crate::schema::{Parsed, Reader};
    let mut read = None;
    let reader: Option<Parsed> = match &p.reader_schema {
        None => None,
        Some(path) => {
            let path = config.resolve(path);
            let failed = |e: String| {
                anyhow::anyhow!(
                    "pipeline {:?}: reader_schema {}: {e}",
                    p.name,
                    path.display()
                )
            };
            let text = || {
                std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "pipeline {:?}: cannot read reader_schema {}",
                        p.name,
                        path.display()
                    )
                })
            };
            Some(match p.value_format {
                ValueFormat::Protobuf => Parsed::Protobuf(Arc::new(
                    crate::schema::protobuf::Proto::from_file(&path).map_err(failed)?,
                )),
                ValueFormat::JsonSchema => Parsed::Json(Arc::new(
                    crate::schema::json_schema::JsonSchema::parse(&text()?, &[]).map_err(failed)?,
                )),
                _ => Parsed::Avro(Arc::new(
                    crate::schema::parse(&text()?).map_err(|e| failed(e.to_string()))?,
                )),
            })
        }
    };
    if let (Some(name), Some(Parsed::Protobuf(r))) = (&p.message_type, &reader)
        && r.message_named(name).is_none()
    {
        anyhow::bail!(
            "pipeline {:?}: message_type {name:?} is not a message of its reader_schema",
            p.name
        );
    }
    let subject = format!("{}-value", p.topic);
    if let (Some(r), Some(reader)) = (&embedded, &reader) {
        for (version, id, writer) in r.writers(&subject) {
            if let Err(e) = Parsed::can_read(&writer, reader) {
                anyhow::bail!(
                    "pipeline {:?} refused: its reader schema cannot read version {version} (schema id {id}) of subject {subject:?}: {}",
                    p.name,
                    e.join("; ")
                );
            }
        }
        read = Some(Reader {
            pipeline: p.name.clone(),
            subject,
            schema: reader.clone(),
        });
    }
    let decoder = match reader {
        Some(Parsed::Protobuf(schema)) => Decoder::Protobuf(Arc::new(ProtobufDecoder::new(
            source.clone(),
            ProtoReader {
                schema: Some(schema),
                message: p.message_type.clone(),
            },
        ))),
        None if p.value_format == ValueFormat::Protobuf => {
            Decoder::Protobuf(Arc::new(ProtobufDecoder::new(
                source.clone(),
                ProtoReader {
                    schema: None,
                    message: p.message_type.clone(),
                },
            )))
        }
        Some(Parsed::Json(schema)) => Decoder::JsonSchema(Arc::new(JsonSchemaDecoder::new(
            source.clone(),
            Some(schema),
        ))),
        None if p.value_format == ValueFormat::JsonSchema => {
            Decoder::JsonSchema(Arc::new(JsonSchemaDecoder::new(source.clone(), None)))
        }
        Some(Parsed::Avro(schema)) => Decoder::Avro(Arc::new(AvroDecoder::new(
            source.clone(),
            Some(schema.as_ref().clone()),
        ))),
        None => Decoder::Avro(Arc::new(AvroDecoder::new(source.clone(), None))),
    };
    Ok((decoder, read))
}

/// Which plugin reads which subjects: plugin -> (pipeline, subject).
pub(super) type Uses = HashMap<String, Vec<(String, String)>>;

/// The subjects each plugin of `config` reads, through its pipelines that
/// decode with the registry.
pub(super) fn contract_uses(config: &Config) -> Uses {
    let mut uses: Uses = HashMap::new();
    for p in config
        .pipelines
        .iter()
        .filter(|p| p.value_format.uses_registry())
    {
        let subject = format!("{}-value", p.topic);
        for name in p.aggregator.iter().chain(&p.handlers) {
            uses.entry(name.clone())
                .or_default()
                .push((p.name.clone(), subject.clone()));
        }
    }
    uses
}

/// What `plugin`'s declared reader schema `text` cannot read of the
/// subjects it reads: one message per broken version, naming the pipeline.
pub(super) fn contract_problems(
    schemas: &crate::schema::Registry,
    uses: &Uses,
    plugin: &str,
    text: &crate::schema::SchemaText,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (pipeline, subject) in uses.get(plugin).into_iter().flatten() {
        match schemas.check_reader(subject, text) {
            Ok(found) => problems.extend(
                found
                    .into_iter()
                    .map(|m| format!("pipeline {pipeline:?}: {m}")),
            ),
            Err(e) => problems.push(e.to_string()),
        }
    }
    problems
}

/// Wires plugins' schema contracts (the reader schema a plugin declares) to
/// the embedded registry both ways — a deploy, rollback or hot reload whose
/// contract cannot read every version of its pipelines' subjects is refused;
/// a registration that breaks a running plugin's contract is refused or
/// logged (`[registry] contract_breaks`) — and checks the loaded plugins.
/// Returns which plugin reads which subjects, for a config reload to swap.
///
/// # Errors
/// Every loaded plugin whose contract is broken, each named.
fn check_contracts(
    config: &Config,
    schemas: Option<&Arc<crate::schema::Registry>>,
    plugins: &Arc<Registry>,
) -> anyhow::Result<Arc<arc_swap::ArcSwap<Uses>>> {
    let uses = Arc::new(arc_swap::ArcSwap::from_pointee(contract_uses(config)));
    let Some(schemas) = schemas else {
        if !plugins.contracts().is_empty() {
            tracing::warn!(
                "plugins declare reader schemas, but this host reads an external registry: their contracts are not checked"
            );
        }
        return Ok(uses);
    };
    let (check_schemas, check_uses) = (schemas.clone(), uses.clone());
    plugins.set_contract_check(Box::new(move |plugin, text| {
        let problems = contract_problems(&check_schemas, &check_uses.load(), plugin, text);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }));
    let running = Arc::downgrade(plugins);
    let contract_uses = uses.clone();
    schemas.set_contracts(
        Box::new(move || {
            let Some(plugins) = running.upgrade() else {
                return Vec::new();
            };
            let uses = contract_uses.load();
            plugins
                .contracts()
                .into_iter()
                .flat_map(|(plugin, schema)| {
                    uses.get(&plugin)
                        .into_iter()
                        .flatten()
                        .map(|(pipeline, subject)| crate::schema::Contract {
                            plugin: plugin.clone(),
                            pipeline: pipeline.clone(),
                            subject: subject.clone(),
                            schema: schema.clone(),
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        }),
        config.registry.contract_breaks == crate::config::ContractBreaks::Refuse,
    );
    plugins
        .check_contracts()
        .map_err(|errors| anyhow::anyhow!("{}", errors.join("\n")))?;
    Ok(uses)
}

/// A pipeline's source: its fired timers (first in a batch: a key's timers
/// fold before its events read with them), its input (the source waited
/// on) and its replay topic.
///
/// # Errors
/// A topic of the embedded log that cannot be opened.
pub(super) fn chain(
    config: &Config,
    p: &crate::config::PipelineConfig,
    log: &Arc<EmbeddedLog>,
    input: Box<dyn Source>,
) -> anyhow::Result<Chain> {
    let replay = EmbeddedSource::open(log.clone(), &p.name, &p.replay_topic())?;
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    if p.aggregator.is_some() || !config.schedules_of(&p.name).is_empty() {
        sources.push(Box::new(EmbeddedSource::open(
            log.clone(),
            &p.name,
            &p.timer_topic(),
        )?));
    }
    let waited = sources.len();
    sources.push(input);
    sources.push(Box::new(replay));
    Ok(Chain::new(sources).waiting_on(waited))
}

/// Command-line settings that override the config file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `http.listen`.
    pub listen: Option<SocketAddr>,
    /// `store.path`.
    pub store: Option<PathBuf>,
    /// The Kafka source's `brokers`.
    pub brokers: Option<String>,
}

impl Overrides {
    /// Applies `--listen` and `--brokers` to a config read from `path`
    /// (`--store` is applied where the store opens).
    pub fn apply(&self, config: &mut Config, path: &Path) {
        if let Some(l) = self.listen {
            config.http.listen = l;
        }
        match (&mut config.source, &self.brokers) {
            (SourceConfig::Kafka(k), Some(b)) => k.brokers.clone_from(b),
            (SourceConfig::Embedded(_), Some(_)) => {
                tracing::warn!(config = %path.display(), "--brokers ignored: the config uses the embedded source");
            }
            _ => {}
        }
    }
}

/// The routes of `state` with the HTTP settings' body limit and CORS.
///
/// # Errors
/// A CORS origin that is not a valid header value.
pub(super) fn router(
    state: AppState,
    http: &crate::config::HttpConfig,
) -> anyhow::Result<axum::Router> {
    let router = app(state).layer(body_limit(http.max_body_bytes));
    // Outside the token gate: a preflight carries no token.
    Ok(
        match crate::http::cors(
            &http.cors_origins,
            Duration::from_secs(http.cors_max_age_secs),
        )? {
            Some(cors) => router.layer(cors),
            None => router,
        },
    )
}

/// Runs the host.
///
/// # Errors
/// Bad config, unreadable plugins, a store that cannot be opened, a port in
/// use, or a pipeline that failed to commit.
pub fn run(config_path: &Path, overrides: &Overrides) -> anyhow::Result<()> {
    let mut config = Config::load(config_path)?;
    raise_open_files_limit(config.http.sse_max_clients);
    overrides.apply(&mut config, config_path);
    let store_path = overrides
        .store
        .clone()
        .unwrap_or_else(|| config.resolve(&config.store.path));
    std::fs::create_dir_all(&store_path)
        .with_context(|| format!("cannot create store directory {}", store_path.display()))?;
    let store = Store::open(&store_path, config.store.durability)
        .with_context(|| format!("cannot open store {}", store_path.display()))?;
    store.reserve_free_space(config.store.min_free_mb.saturating_mul(1 << 20));
    let _writeback =
        if config.store.durability == Durability::Process && config.store.writeback_ms > 0 {
            Some(
                Writeback::start(
                    &store_path,
                    Duration::from_millis(config.store.writeback_ms),
                )
                .context("cannot start the store's journal write-back")?,
            )
        } else {
            None
        };

    let (schemas, decoders) = open_schemas(&config, &store)?;
    crate::trace::install(&config.trace)?;

    let runtime = Runtime::new().context("cannot start the WebAssembly runtime")?;
    let registry = Arc::new(Registry::load(runtime, &plugin_roles(&config)?)?);
    let uses = check_contracts(&config, schemas.as_ref(), &registry)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (log, sink, partitions, aligned) = open_topics(&config, &store, &rt)?;
    let migrated = store
        .migrate_to_partitions(&|pipeline, key| {
            partitions
                .get(pipeline)
                .map(|n| crate::source::partition_for_key(key.as_bytes(), *n))
        })
        .context("cannot move the store's states under their partitions")?;
    if migrated > 0 {
        tracing::info!(
            states = migrated,
            "store migrated: states now live under their partitions"
        );
    }
    let mut intakes = HashMap::new();
    for p in &config.pipelines {
        let (Some(decoder), Some(n)) = (decoders.get(&p.name), partitions.get(&p.name)) else {
            anyhow::bail!("pipeline {:?}: no decoder or partition count", p.name);
        };
        intakes.insert(
            p.name.clone(),
            crate::pipeline::Intake::new(p, decoder.clone(), *n, config.misrouted_keys(p)),
        );
    }

    let readiness = crate::source::Readiness::default();
    if matches!(config.source, SourceConfig::Embedded(_)) {
        for p in &config.pipelines {
            readiness.set(&p.name, None);
        }
    }
    let metrics = match crate::telemetry::install() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "metrics are off");
            None
        }
    };
    let mut last_seqs = Vec::with_capacity(config.pipelines.len());
    for p in &config.pipelines {
        let n = partitions.get(&p.name).copied().unwrap_or(1);
        last_seqs.push(
            store
                .last_seqs(&p.name, n)
                .with_context(|| format!("pipeline {}: cannot read its change numbers", p.name))?,
        );
    }
    let hub = Hub::new(
        config
            .pipelines
            .iter()
            .zip(last_seqs)
            .map(|(p, last)| (p.name.as_str(), last, p.sse_history)),
    );
    let locks: HashMap<String, PipelineLock> = config
        .pipelines
        .iter()
        .map(|p| (p.name.clone(), PipelineLock::default()))
        .collect();
    // Pauses outlive a restart: an operator resumes the pipeline.
    let mut paused: HashMap<String, Arc<crate::pipeline::PauseSwitch>> = HashMap::new();
    for p in &config.pipelines {
        let is = store
            .paused(&p.name)
            .with_context(|| format!("reading whether pipeline {:?} is paused", p.name))?;
        if is {
            tracing::warn!(pipeline = %p.name, "the pipeline is paused (POST /v1/pipelines/{}/resume)", p.name);
        }
        crate::telemetry::paused(&p.name, is);
        paused.insert(
            p.name.clone(),
            Arc::new(crate::pipeline::PauseSwitch::new(is)),
        );
    }
    let host = Arc::new(Host::new(
        config_path.to_path_buf(),
        overrides.clone(),
        config.clone(),
        store.clone(),
        log.clone(),
        sink.clone(),
        registry.clone(),
        schemas.clone(),
        uses,
        hub.clone(),
        readiness.clone(),
    ));
    if config.http.watch_plugins {
        *crate::lock(&host.watcher) = Some(watch_plugins(registry.clone())?);
    }
    let (failed, shutdown) = (host.failed.clone(), host.shutdown.clone());
    let mut ownership: HashMap<String, Arc<crate::source::restore::Ownership>> = HashMap::new();
    for p in &config.pipelines {
        let n = partitions.get(&p.name).copied().unwrap_or(1);
        let (input, owned) = host.open_input(&config, p, n)?;
        if let Some(o) = &owned {
            ownership.insert(p.name.clone(), o.clone());
        }
        host.start(
            &config,
            p,
            Start {
                input,
                intake: intakes
                    .get(&p.name)
                    .cloned()
                    .with_context(|| format!("pipeline {:?} has no decoder", p.name))?,
                aligned: aligned.contains(&p.name),
                lock: locks.get(&p.name).cloned().unwrap_or_default(),
                paused: paused.get(&p.name).cloned().unwrap_or_default(),
                ownership: owned,
            },
        )?;
    }

    let ownership = Arc::new(ownership);
    let membership = match (&config.cluster, &config.source, &sink) {
        (Some(c), SourceConfig::Kafka(k), Sink::Kafka(s)) => {
            let advertise = c.advertise.clone().or_else(|| {
                let at = config.http.listen;
                (!at.ip().is_unspecified() && at.port() != 0).then(|| format!("http://{at}"))
            });
            if advertise.is_none() {
                tracing::warn!(
                    listen = %config.http.listen,
                    "set cluster.advertise: without it the other hosts cannot forward queries here"
                );
            }
            let failed = failed.clone();
            let shutdown = shutdown.clone();
            let lag = {
                let (sink, store) = (s.clone(), store.clone());
                let inputs: Vec<(String, String)> = config
                    .pipelines
                    .iter()
                    .filter(|p| ownership.contains_key(&p.name))
                    .map(|p| (p.name.clone(), p.topic.clone()))
                    .collect();
                Box::new(move || partition_lags(&sink, &store, &inputs))
            };
            Some(
                crate::cluster::Membership::join(
                    c,
                    k,
                    s.clone(),
                    ownership.clone(),
                    advertise,
                    lag,
                    move |why| {
                        if let Ok(mut f) = failed.lock() {
                            *f = Some(why);
                        }
                        shutdown.notify_one();
                    },
                )
                .context("joining the group's hosts topic")?,
            )
        }
        _ => None,
    };

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // Two read threads per core: reads are short and mostly CPU, but one
    // may wait on the disk.
    let read_threads = std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .saturating_mul(2);
    let state = AppState {
        store: store.clone(),
        reads: Arc::new(
            crate::http::reads::Reads::start(read_threads)
                .context("cannot start the store read threads")?,
        ),
        log: log.clone(),
        history: match &config.source {
            SourceConfig::Embedded(_) => crate::source::rewind::History::Embedded(log.clone()),
            SourceConfig::Kafka(k) => crate::source::rewind::History::Kafka(Arc::new(k.clone())),
        },
        sink: sink.clone(),
        hub,
        intakes: Arc::new(intakes),
        pipelines: Arc::new(
            config
                .pipelines
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
        ),
        schedules: Arc::new(config.schedules.clone()),
        keepalive: Duration::from_secs(config.http.sse_keepalive_secs.max(1)),
        locks: Arc::new(locks),
        paused: Arc::new(paused),
        registry: registry.clone(),
        replays: Arc::new(
            config
                .pipelines
                .iter()
                .map(|p| (p.name.clone(), Default::default()))
                .collect(),
        ),
        schemas: schemas.clone(),
        topic_naming: config.http.topic_naming.clone(),
        gate: Arc::new(crate::http::guard::Gate::new(
            config
                .http
                .token
                .clone()
                .or_else(|| std::env::var("EDDY_TOKEN").ok())
                .filter(|t| !t.is_empty()),
            config.http.protect_reads,
            config.http.produce_rate_per_sec,
            config.http.produce_burst,
            config.http.sse_max_clients,
            config.http.sse_max_per_address,
            config
                .pipelines
                .iter()
                .filter_map(|p| p.mount.as_ref())
                .filter(|m| m.create.is_some())
                .map(|m| m.path.clone())
                .collect(),
        )),
        metrics,
        readiness,
        max_plugin_bytes: config.http.max_plugin_bytes,
        admin_token: config
            .http
            .admin_token
            .clone()
            .or_else(|| std::env::var("EDDY_ADMIN_TOKEN").ok())
            .filter(|t| !t.is_empty()),
        shutdown: shutdown_rx,
        cluster: membership.as_ref().map(|m| crate::http::Cluster {
            ownership: ownership.clone(),
            directory: m.directory(),
        }),
        start_traces: config
            .trace
            .starts_traces()
            .then_some(config.trace.sample_ratio),
        reload: {
            let host = Arc::downgrade(&host);
            Some(Arc::new(move || match host.upgrade() {
                Some(h) => h
                    .reload()
                    .map(|r| serde_json::to_value(r).unwrap_or_default()),
                None => Err(crate::http::ReloadFailure {
                    applied: false,
                    problems: vec!["the host is stopping".to_owned()],
                }),
            }))
        },
    };
    host.router
        .store(Arc::new(router(state.clone(), &config.http)?));
    *crate::lock(&host.app) = Some(state);
    // Every request goes to the routes of the latest reload.
    let current = host.router.clone();
    let served_routes = axum::Router::new().fallback_service(tower::service_fn(
        move |request: axum::extract::Request| {
            let routes = current.load_full();
            async move {
                use tower::ServiceExt;
                axum::Router::clone(&routes).oneshot(request).await
            }
        },
    ));
    let grace = Duration::from_millis(config.shutdown.timeout_ms);
    let stop_input = host.clone();
    let listen_addr = config.http.listen;
    let served: anyhow::Result<Instant> = rt.block_on(async {
        let listener = listen(listen_addr, config.http.send_buffer_kib)
            .with_context(|| format!("cannot listen on {listen_addr}"))?;
        let bound = listener.local_addr()?;
        let reloads = tokio::spawn(reload_on_hangup(host.clone())?);
        tracing::info!(address = %bound, "listening");
        println!("eddy listening on http://{bound}");
        for p in &config.pipelines {
            if let Some(m) = &p.mount {
                println!("  pipeline {}: http://{bound}{}/latest", p.name, m.path);
            }
            println!(
                "  pipeline {}: http://{bound}/v1/pipelines/{}/latest",
                p.name, p.name
            );
        }
        let shutdown_wait = shutdown.clone();
        let (deadline_tx, mut deadline_rx) = tokio::sync::watch::channel(None::<Instant>);
        let deadline_seen = deadline_rx.clone();
        let server = axum::serve(
            listener,
            served_routes.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = wait_for_signal() => {},
                () = shutdown_wait.notified() => {},
            }
            let deadline = Instant::now() + grace;
            tracing::info!(timeout_ms = grace.as_millis() as u64, "shutting down");
            // Stop taking input: workers finish and commit the batch in
            // flight; SSE streams send their final event and close.
            stop_input.signal_stop();
            let _ = shutdown_tx.send(true);
            let _ = deadline_tx.send(Some(deadline));
            watchdog(deadline + Duration::from_millis(500));
        });
        // HTTP connections get until the deadline to finish.
        let expired = async move {
            let deadline = loop {
                if let Some(d) = *deadline_rx.borrow_and_update() {
                    break d;
                }
                if deadline_rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::time::sleep_until(deadline.into()).await;
        };
        let served = tokio::select! {
            r = server => r.context("HTTP server failed"),
            () = expired => {
                tracing::warn!("HTTP connections still open at the shutdown bound; closing them");
                Ok(())
            }
        };
        let deadline = deadline_seen
            .borrow()
            .unwrap_or_else(|| Instant::now() + grace);
        reloads.abort();
        served.map(|()| deadline)
    });
    let deadline = served
        .as_ref()
        .map_or_else(|_| Instant::now() + grace, |d| *d);
    host.join_all();
    if let Some(m) = membership {
        m.leave();
    }
    let mut left_in_outbox = 0;
    if let Sink::Kafka(k) = &sink {
        left_in_outbox = k.shutdown(deadline.saturating_duration_since(Instant::now()));
    }
    crate::trace::shutdown();
    store.sync().context("final store sync failed")?;
    served?;
    if let Some(f) = failed.lock().ok().and_then(|mut f| f.take()) {
        anyhow::bail!("stopped because {f}");
    }
    if left_in_outbox > 0 {
        anyhow::bail!(
            "shutdown.timeout_ms ({} ms) passed with {left_in_outbox} records still in the outbox; \
             they are kept and sent after the next start",
            grace.as_millis()
        );
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Reloads the config on each SIGHUP, logging what changed or every
/// problem that refused it. The handler is installed before it returns, so
/// a SIGHUP never kills the host.
///
/// # Errors
/// The signal handler cannot be installed.
fn reload_on_hangup(
    host: Arc<Host>,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    Ok(async move {
        #[cfg(unix)]
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            let h = host.clone();
            match tokio::task::spawn_blocking(move || h.reload()).await {
                Ok(Ok(r)) => tracing::info!(
                    added = ?r.added, removed = ?r.removed, changed = ?r.changed,
                    "config reloaded"
                ),
                Ok(Err(f)) if f.applied => tracing::error!(
                    problems = %f.problems.join("; "),
                    "config reloaded, but some pipelines did not start"
                ),
                Ok(Err(f)) => tracing::error!(
                    problems = %f.problems.join("; "),
                    "config reload refused; the running pipelines are untouched"
                ),
                Err(e) => tracing::error!(error = %e, "config reload failed"),
            }
        }
        #[cfg(not(unix))]
        let _ = host;
    })
}

/// The HTTP listener. Its send buffer size (when not 0) is inherited by
/// every accepted connection: it bounds what the kernel holds for a client
/// that stopped reading.
fn listen(addr: SocketAddr, send_buffer_kib: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if send_buffer_kib > 0 {
        socket.set_send_buffer_size(send_buffer_kib.saturating_mul(1024))?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Raises the soft limit on open files to the hard one: every SSE client,
/// HTTP connection, store segment and broker socket is a descriptor, and the
/// usual soft limit (1024) is far below `sse_max_clients`. Says so when
/// even the hard limit cannot hold that many clients.
fn raise_open_files_limit(sse_max_clients: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut raised = limit;
    raised.current = limit.maximum;
    if raised.current != limit.current
        && let Err(e) = setrlimit(Resource::Nofile, raised)
    {
        tracing::warn!(error = %e, "cannot raise the limit on open files");
        raised = limit;
    }
    if let Some(n) = raised.current
        && n < u64::try_from(sse_max_clients)
            .unwrap_or(u64::MAX)
            .saturating_add(256)
    {
        tracing::info!(
            open_files = n,
            sse_max_clients,
            "the limit on open files is below http.sse_max_clients: connections beyond it are refused by the system"
        );
    }
}

/// The shutdown's backstop: if the process is still alive at `at`, it exits
/// with status 1. Everything committed is in the store (crash-safe), so a
/// forced exit loses nothing; it only skips what had not finished.
fn watchdog(at: Instant) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            tracing::error!("shutdown did not finish within shutdown.timeout_ms; exiting now");
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the shutdown watchdog");
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::listen;

    /// Every accepted connection inherits the listener's send buffer cap
    /// (Linux reports twice the size asked). Without it a connection
    /// starts at the kernel's default and autotunes to megabytes for a
    /// client that stopped reading.
    #[tokio::test]
    async fn accepted_connections_inherit_the_send_buffer_cap() {
        let listener = listen(([127, 0, 0, 1], 0).into(), 128).expect("listens");
        let addr = listener.local_addr().expect("bound");
        let _client = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let (accepted, _) = listener.accept().await.expect("accepts");
        let socket =
            tokio::net::TcpSocket::from_std_stream(accepted.into_std().expect("a std stream"));
        assert_eq!(
            socket.send_buffer_size().expect("SO_SNDBUF"),
            2 * 128 * 1024
        );
    }
}
