//! The live set of plugins: each name points at its current compiled
//! version, swapped atomically when a new version is deployed (upload,
//! watched file, CLI) or rolled back. Workers look at the generation between
//! micro-batches, so every event is processed by exactly one version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::{LoadError, Plugin, Runtime};
use crate::config::{PluginConfig, PluginKind};

/// What is known about a plugin slot, for `GET /v1/plugins`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Plugin name.
    pub name: String,
    /// `aggregator` or `handler`.
    pub kind: String,
    /// Content hash of the running component.
    pub version: String,
    /// The semantic version it declares, if any.
    pub declared_version: Option<String>,
    /// The type of the reader schema it declares (its schema contract), if any.
    pub reader_schema: Option<crate::schema::SchemaType>,
    /// When it was loaded (ms since the Unix epoch).
    pub loaded_at_ms: i64,
    /// Where it came from: `config`, `upload`, `watch`, `rollback`.
    pub source: String,
    /// `running`, or `running (last deploy failed)`.
    pub status: String,
    /// Why the last deploy attempt failed, if it did.
    pub last_error: Option<String>,
    /// The version a rollback returns to, if any.
    pub previous_version: Option<String>,
}

struct Meta {
    loaded_at_ms: i64,
    source: String,
    last_error: Option<String>,
    previous: Option<(Arc<Plugin>, Vec<u8>)>,
    current_bytes: Vec<u8>,
}

/// One plugin name's current version.
pub struct Slot {
    config: PluginConfig,
    kind: PluginKind,
    path: PathBuf,
    current: ArcSwap<Plugin>,
    generation: AtomicU64,
    meta: Mutex<Meta>,
    /// Serialises deploys of this slot.
    deploying: Mutex<()>,
}

use crate::now_ms;

impl Slot {
    /// The running version.
    pub fn current(&self) -> Arc<Plugin> {
        self.current.load_full()
    }

    /// Changes each time the running version changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Where the component lives on disk (from the config).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        crate::lock(&self.meta)
    }

    /// Makes `plugin` (built from `bytes`, come from `source`) the running
    /// version, keeping the one it replaces for a rollback, and moves the
    /// generation on so workers switch between batches. Returns its version.
    fn switch_to(&self, plugin: Arc<Plugin>, bytes: Vec<u8>, source: &str) -> String {
        let version = plugin.version.clone();
        let old = self.current.swap(plugin);
        {
            let mut m = self.meta();
            let old_bytes = std::mem::replace(&mut m.current_bytes, bytes);
            m.previous = Some((old, old_bytes));
            m.loaded_at_ms = now_ms();
            m.source = source.to_owned();
            m.last_error = None;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        version
    }

    /// Its status.
    pub fn status(&self) -> Status {
        let m = self.meta();
        Status {
            name: self.config.name.clone(),
            kind: self.kind.to_string(),
            version: self.current().version.clone(),
            declared_version: self.current().declared_version.clone(),
            reader_schema: self.current().reader_schema.as_ref().map(|s| s.kind),
            loaded_at_ms: m.loaded_at_ms,
            source: m.source.clone(),
            status: if m.last_error.is_some() {
                "running (last deploy failed)".into()
            } else {
                "running".into()
            },
            last_error: m.last_error.clone(),
            previous_version: m.previous.as_ref().map(|(p, _)| p.version.clone()),
        }
    }
}

/// Deploy failures.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No plugin of that name is configured.
    #[error("plugin {0:?} is not configured")]
    Unknown(String),
    /// The component was refused; the running version stays.
    #[error(transparent)]
    Invalid(#[from] LoadError),
    /// Nothing to roll back to.
    #[error("plugin {0:?} has no previous version to roll back to")]
    NoPrevious(String),
    /// The plugin's file could not be read.
    #[error("plugin {name:?}: cannot read {path}: {source}")]
    Read {
        /// Plugin.
        name: String,
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The component could not be saved.
    #[error("plugin {name:?}: cannot save {path}: {source}")]
    Save {
        /// Plugin.
        name: String,
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Checks a plugin's declared reader schema against what the topics of its
/// pipelines carry: `Err` names the subject, the version and the fields.
pub type ContractCheck =
    dyn Fn(&str, &crate::schema::SchemaText) -> Result<(), String> + Send + Sync;

/// All plugin slots.
pub struct Registry {
    runtime: Runtime,
    /// Swapped whole by a config reload.
    slots: ArcSwap<HashMap<String, Arc<Slot>>>,
    /// Set once the schema registry is open (`serve.rs`).
    contracts: std::sync::OnceLock<Box<ContractCheck>>,
}

impl Registry {
    /// Loads every configured plugin with its role.
    ///
    /// # Errors
    /// The first plugin that cannot be read or loaded.
    pub fn load(
        runtime: Runtime,
        plugins: &[(PluginConfig, PathBuf, PluginKind)],
    ) -> anyhow::Result<Self> {
        let mut slots = HashMap::new();
        for (config, path, kind) in plugins {
            let slot = load_slot(&runtime, config, path, *kind)?;
            slots.insert(config.name.clone(), slot);
        }
        Ok(Registry {
            runtime,
            slots: ArcSwap::from_pointee(slots),
            contracts: std::sync::OnceLock::new(),
        })
    }

    /// Loads one plugin into a new slot, not yet part of the registry (a
    /// config reload validates every new plugin before it changes anything).
    ///
    /// # Errors
    /// The plugin cannot be read or loaded; the message names it.
    pub fn prepare(
        &self,
        config: &PluginConfig,
        path: &Path,
        kind: PluginKind,
    ) -> anyhow::Result<Arc<Slot>> {
        load_slot(&self.runtime, config, path, kind)
    }

    /// A config reload: `slots` are added (or replace the slots of their
    /// names) and the plugins named in `removed` are dropped. Workers hold
    /// the slots they run, so a replaced slot stays alive until the
    /// pipelines using it are restarted.
    pub fn update(&self, slots: Vec<Arc<Slot>>, removed: &[String]) {
        let mut next: HashMap<String, Arc<Slot>> = self.slots.load().as_ref().clone();
        for name in removed {
            next.remove(name);
        }
        for slot in slots {
            next.insert(slot.config.name.clone(), slot);
        }
        self.slots.store(Arc::new(next));
    }

    /// A slot's plugin config, role and file (to tell whether a reload
    /// changed it).
    pub fn loaded_as(&self, name: &str) -> Option<(PluginConfig, PluginKind, PathBuf)> {
        self.slots
            .load()
            .get(name)
            .map(|s| (s.config.clone(), s.kind, s.path.clone()))
    }

    /// Installs the schema-contract check run on every deploy and rollback
    /// (and by [`Registry::check_contracts`]).
    pub fn set_contract_check(&self, check: Box<ContractCheck>) {
        if self.contracts.set(check).is_err() {
            tracing::warn!("the plugin schema-contract check was already set");
        }
    }

    /// Checks `plugin`'s declared reader schema, if it has one.
    ///
    /// # Errors
    /// [`LoadError::Contract`] naming the plugin and what it cannot read.
    fn check_contract(&self, plugin: &Plugin) -> Result<(), LoadError> {
        match (self.contracts.get(), &plugin.reader_schema) {
            (Some(check), Some(schema)) => {
                check(&plugin.name, schema).map_err(|message| LoadError::Contract {
                    plugin: plugin.name.to_string(),
                    message,
                })
            }
            _ => Ok(()),
        }
    }

    /// Checks every running plugin's schema contract (at start).
    ///
    /// # Errors
    /// One message per broken contract.
    pub fn check_contracts(&self) -> Result<(), Vec<String>> {
        let slots = self.slots.load();
        let mut names: Vec<&String> = slots.keys().collect();
        names.sort();
        let errors: Vec<String> = names
            .into_iter()
            .filter_map(|n| slots.get(n))
            .filter_map(|s| self.check_contract(&s.current()).err())
            .map(|e| e.to_string())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Every running plugin's declared reader schema, by plugin name.
    pub fn contracts(&self) -> Vec<(String, crate::schema::SchemaText)> {
        self.slots
            .load()
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.current().reader_schema.clone()?)))
            .collect()
    }

    /// A slot by name.
    pub fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots.load().get(name).cloned()
    }

    /// Every slot's status, by name.
    pub fn statuses(&self) -> Vec<Status> {
        let mut v: Vec<Status> = self.slots.load().values().map(|s| s.status()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The slot whose component lives at `path`, if any.
    pub fn slot_for_path(&self, path: &Path) -> Option<Arc<Slot>> {
        self.slots.load().values().find(|s| s.path == path).cloned()
    }

    /// Compiles and validates `bytes` off the hot path, then makes it the
    /// running version of `name` (saving it to the plugin's path when
    /// `save`). Returns the new version; an unchanged component is a no-op.
    /// A component that fails to compile or validate leaves the running
    /// version in place and is recorded as the slot's last error.
    ///
    /// # Errors
    /// [`DeployError`] naming the plugin and the reason.
    pub fn deploy(
        &self,
        name: &str,
        bytes: Vec<u8>,
        source: &str,
        save: bool,
    ) -> Result<String, DeployError> {
        let slot = self
            .slot(name)
            .ok_or_else(|| DeployError::Unknown(name.to_owned()))?;
        let _one_at_a_time = crate::lock(&slot.deploying);
        self.deploy_locked(&slot, bytes, source, save)
    }

    /// Deploys what the plugin's file holds now (a watched file changed).
    /// The file is read under the slot's deploy lock, so a deploy that saved
    /// the file meanwhile is never undone by older bytes read before it.
    ///
    /// # Errors
    /// [`DeployError`] naming the plugin and the reason.
    pub fn deploy_file(&self, name: &str, source: &str) -> Result<String, DeployError> {
        let slot = self
            .slot(name)
            .ok_or_else(|| DeployError::Unknown(name.to_owned()))?;
        let _one_at_a_time = crate::lock(&slot.deploying);
        let bytes = std::fs::read(&slot.path).map_err(|source| DeployError::Read {
            name: name.to_owned(),
            path: slot.path.display().to_string(),
            source,
        })?;
        self.deploy_locked(&slot, bytes, source, false)
    }

    fn deploy_locked(
        &self,
        slot: &Slot,
        bytes: Vec<u8>,
        source: &str,
        save: bool,
    ) -> Result<String, DeployError> {
        let name = slot.config.name.as_str();
        if super::content_hash(&bytes) == slot.current().version {
            return Ok(slot.current().version.clone());
        }
        let started = std::time::Instant::now();
        let loaded = self.runtime.load(
            &slot.config,
            &format!("{source} upload"),
            &bytes,
            Some(slot.kind),
        );
        let plugin = match loaded.and_then(|p| self.check_contract(&p).map(|()| p)) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(plugin = name, source, error = %e, "deploy refused; the running version stays");
                slot.meta().last_error = Some(e.to_string());
                return Err(e.into());
            }
        };
        if save {
            save_atomically(&slot.path, &bytes).map_err(|source| DeployError::Save {
                name: name.to_owned(),
                path: slot.path.display().to_string(),
                source,
            })?;
        }
        let version = slot.switch_to(Arc::new(plugin), bytes, source);
        tracing::info!(
            plugin = name, version = %version, source,
            compile_ms = started.elapsed().as_millis() as u64, "plugin deployed"
        );
        Ok(version)
    }

    /// Compiles and validates a candidate for `name` without deploying it.
    ///
    /// # Errors
    /// [`DeployError`] naming the plugin and the reason.
    pub fn compile_candidate(&self, name: &str, bytes: &[u8]) -> Result<Plugin, DeployError> {
        let slot = self
            .slot(name)
            .ok_or_else(|| DeployError::Unknown(name.to_owned()))?;
        Ok(self
            .runtime
            .load(&slot.config, "shadow candidate", bytes, Some(slot.kind))?)
    }

    /// Returns `name` to its previous version (saving it to the plugin's path).
    ///
    /// # Errors
    /// [`DeployError::NoPrevious`] when there is none.
    pub fn rollback(&self, name: &str) -> Result<String, DeployError> {
        let slot = self
            .slot(name)
            .ok_or_else(|| DeployError::Unknown(name.to_owned()))?;
        let _one_at_a_time = crate::lock(&slot.deploying);
        let (previous, bytes) = slot
            .meta()
            .previous
            .take()
            .ok_or_else(|| DeployError::NoPrevious(name.to_owned()))?;
        if let Err(e) = self.check_contract(&previous) {
            tracing::warn!(plugin = name, error = %e, "rollback refused; the running version stays");
            slot.meta().previous = Some((previous, bytes));
            return Err(e.into());
        }
        save_atomically(&slot.path, &bytes).map_err(|source| DeployError::Save {
            name: name.to_owned(),
            path: slot.path.display().to_string(),
            source,
        })?;
        let version = slot.switch_to(previous, bytes, "rollback");
        tracing::info!(plugin = name, version = %version, "plugin rolled back");
        Ok(version)
    }
}

/// Reads and compiles one plugin into a slot of its own.
fn load_slot(
    runtime: &Runtime,
    config: &PluginConfig,
    path: &Path,
    kind: PluginKind,
) -> anyhow::Result<Arc<Slot>> {
    let bytes = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "plugin {:?}: cannot read {} ({e}); build it with `eddy plugin build`",
            config.name,
            path.display()
        )
    })?;
    let started = std::time::Instant::now();
    let plugin = runtime.load(config, &path.display().to_string(), &bytes, Some(kind))?;
    tracing::info!(
        plugin = %config.name, kind = %plugin.kind, version = %plugin.version,
        compile_ms = started.elapsed().as_millis() as u64, "plugin loaded"
    );
    Ok(Arc::new(Slot {
        config: config.clone(),
        kind,
        path: path.to_path_buf(),
        current: ArcSwap::from_pointee(plugin),
        generation: AtomicU64::new(1),
        meta: Mutex::new(Meta {
            loaded_at_ms: now_ms(),
            source: "config".into(),
            last_error: None,
            previous: None,
            current_bytes: bytes,
        }),
        deploying: Mutex::new(()),
    }))
}

/// Writes a file so readers (and the directory watcher) never see half of it.
fn save_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("wasm.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
