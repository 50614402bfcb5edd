//! Schemas: the embedded schema registry (Confluent's model: subjects with
//! versions, globally numbered schemas, compatibility levels), persisted in
//! the store, and the external registry client. The HTTP API speaking
//! Confluent's REST protocol is `http/registry.rs`; decoding with these
//! schemas is `decode/`.

pub mod compat;
pub mod external;
pub mod json_schema;
pub mod protobuf;
pub mod types;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};
pub use compat::Mode;
pub use types::{Parsed, Reference, Resolved, SchemaText, SchemaType};

/// Registry failures, each with Confluent's error code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402.
    #[error("Version {version} not found in subject '{subject}'.")]
    VersionNotFound {
        /// Subject.
        subject: String,
        /// Requested version.
        version: String,
    },
    /// 40403.
    #[error("Schema not found")]
    SchemaNotFound,
    /// 40404.
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// 40405.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// 40406.
    #[error(
        "Version {version} of subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// 40407.
    #[error(
        "Version {version} of subject '{subject}' was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// 40408.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    NoSubjectConfig(String),
    /// 409.
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]", .messages.join("; "))]
    Incompatible {
        /// Subject.
        subject: String,
        /// One message per violation.
        messages: Vec<String>,
    },
    /// 42201.
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// 42206.
    #[error(
        "One or more references exist to the schema {{subject={subject}, version={version}}}: schema ids {ids:?} import it"
    )]
    ReferenceExists {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
        /// The schemas that reference it.
        ids: Vec<u32>,
    },
    /// 42202.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// 42203.
    #[error(
        "Invalid compatibility level {0:?}. Valid values are BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE"
    )]
    InvalidCompatibility(String),
    /// 50001.
    #[error("Error in the backend data store: {0}")]
    Store(#[from] StoreError),
}

impl RegistryError {
    /// Confluent's `error_code`.
    pub fn code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound { .. } => 40402,
            RegistryError::SchemaNotFound => 40403,
            RegistryError::SubjectSoftDeleted(_) => 40404,
            RegistryError::SubjectNotSoftDeleted(_) => 40405,
            RegistryError::VersionSoftDeleted { .. } => 40406,
            RegistryError::VersionNotSoftDeleted { .. } => 40407,
            RegistryError::NoSubjectConfig(_) => 40408,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::InvalidSchema(_) => 42201,
            RegistryError::ReferenceExists { .. } => 42206,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidCompatibility(_) => 42203,
            RegistryError::Store(_) => 50001,
        }
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Where a decoder gets writer schemas by id.
pub trait SchemaSource: Send + Sync {
    /// The schema registered under `id`; `Ok(None)` when there is none.
    ///
    /// # Errors
    /// The registry cannot be reached right now (retry later).
    fn schema_text(&self, id: u32) -> Result<Option<SchemaText>, Unreachable>;

    /// A subject's version (a reference's target); `Ok(None)` when there is none.
    ///
    /// # Errors
    /// The registry cannot be reached right now (retry later).
    fn subject_version(
        &self,
        subject: &str,
        version: u32,
    ) -> Result<Option<SchemaText>, Unreachable>;
}

/// Why a writer schema could not be loaded from a [`SchemaSource`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The registry cannot be reached: retry.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// No schema under the id.
    #[error("schema id {0} is not registered")]
    Unknown(u32),
    /// A reference names a version that is not there.
    #[error("reference {name:?} (subject {subject:?} version {version}) is not registered")]
    MissingReference {
        /// Import name.
        name: String,
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// The schema does not parse.
    #[error("{0}")]
    Invalid(String),
}

/// Looks a subject's version up (a reference's target).
pub type VersionLookup<'a> = dyn FnMut(&str, u32) -> Result<Option<SchemaText>, LoadError> + 'a;

/// Every schema `refs` reach, each once, dependencies first.
///
/// # Errors
/// A missing reference, or the source's failure.
pub fn resolve_references(
    refs: &[Reference],
    get: &mut VersionLookup<'_>,
) -> Result<Vec<Resolved>, LoadError> {
    fn walk(
        refs: &[Reference],
        get: &mut VersionLookup<'_>,
        out: &mut Vec<Resolved>,
        depth: usize,
    ) -> Result<(), LoadError> {
        if depth > 32 {
            return Err(LoadError::Invalid("references nest deeper than 32".into()));
        }
        for r in refs {
            if out.iter().any(|(n, _)| *n == r.name) {
                continue;
            }
            let text = get(&r.subject, r.version)?.ok_or_else(|| LoadError::MissingReference {
                name: r.name.clone(),
                subject: r.subject.clone(),
                version: r.version,
            })?;
            walk(&text.references, get, out, depth + 1)?;
            if !out.iter().any(|(n, _)| *n == r.name) {
                out.push((r.name.clone(), text));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(refs, get, &mut out, 0)?;
    Ok(out)
}

/// Loads and parses the schema under `id`, with its references.
///
/// # Errors
/// [`LoadError`].
pub fn load(source: &dyn SchemaSource, id: u32) -> Result<Parsed, LoadError> {
    let text = source.schema_text(id)?.ok_or(LoadError::Unknown(id))?;
    let refs = resolve_references(&text.references, &mut |s, v| {
        Ok(source.subject_version(s, v)?)
    })?;
    Parsed::parse(&text, &refs).map_err(LoadError::Invalid)
}

/// A registry that cannot answer right now: the caller retries later.
#[derive(Debug, thiserror::Error)]
#[error("schema registry {url}: {reason}")]
pub struct Unreachable {
    /// What was asked.
    pub url: String,
    /// What went wrong (no connection, an error status, an answer that does not parse).
    pub reason: String,
}

/// One version of a subject.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Version {
    version: u32,
    id: u32,
    deleted: bool,
}

/// A stored schema: a registration, or (written before the registry knew
/// other types) an Avro schema's bare text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Typed(SchemaText),
    Avro(String),
}

fn stored_schemas<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<u32, SchemaText>, D::Error> {
    let raw = BTreeMap::<u32, Stored>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(id, s)| {
            let text = match s {
                Stored::Typed(t) => t,
                Stored::Avro(a) => SchemaText::avro(a),
            };
            (id, text)
        })
        .collect())
}

/// The persisted registry.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Doc {
    next_id: u32,
    /// id -> schema (Avro: the parsed schema written back as JSON).
    #[serde(deserialize_with = "stored_schemas")]
    schemas: BTreeMap<u32, SchemaText>,
    subjects: BTreeMap<String, Vec<Version>>,
    compatibility: Option<Mode>,
    subject_compatibility: BTreeMap<String, Mode>,
}

impl Doc {
    /// A subject's compatibility level: its own, else the global one.
    fn mode(&self, subject: &str) -> Mode {
        self.subject_compatibility
            .get(subject)
            .copied()
            .or(self.compatibility)
            .unwrap_or_default()
    }

    /// A subject's version, deleted or not.
    fn subject_version(&self, subject: &str, version: u32) -> Option<&SchemaText> {
        let v = self
            .subjects
            .get(subject)?
            .iter()
            .find(|v| v.version == version)?;
        self.schemas.get(&v.id)
    }

    /// The ids of the registered schemas (any version still held, soft
    /// deleted or not) that reference `subject`'s `version`.
    fn referenced_by(&self, subject: &str, version: u32) -> Vec<u32> {
        let held: std::collections::BTreeSet<u32> =
            self.subjects.values().flatten().map(|v| v.id).collect();
        held.into_iter()
            .filter(|id| {
                self.schemas.get(id).is_some_and(|t| {
                    t.references
                        .iter()
                        .any(|r| r.subject == subject && r.version == version)
                })
            })
            .collect()
    }

    /// Refuses to delete a version other schemas import.
    fn check_unreferenced(&self, subject: &str, version: u32) -> Result<()> {
        let ids = self.referenced_by(subject, version);
        if ids.is_empty() {
            Ok(())
        } else {
            Err(RegistryError::ReferenceExists {
                subject: subject.to_owned(),
                version,
                ids,
            })
        }
    }

    /// The schemas `text` references, resolved in this document.
    fn references(&self, text: &SchemaText) -> Result<Vec<Resolved>> {
        resolve_references(&text.references, &mut |s, v| {
            Ok(self.subject_version(s, v).cloned())
        })
        .map_err(|e| RegistryError::InvalidSchema(e.to_string()))
    }
}

/// A registered version as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Subject.
    pub subject: String,
    /// Version within the subject.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// The schema.
    pub schema: SchemaText,
}

/// Which version a request names.
#[derive(Debug, Clone, Copy)]
pub enum VersionSpec {
    /// The newest (non-deleted) version.
    Latest,
    /// A version number.
    Number(u32),
}

impl VersionSpec {
    /// Parses `latest`, `-1` or a positive number.
    ///
    /// # Errors
    /// 42202 for anything else.
    pub fn parse(s: &str) -> Result<VersionSpec> {
        if s == "latest" || s == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match s.parse::<u32>() {
            Ok(n) if n >= 1 && n <= i32::MAX as u32 => Ok(VersionSpec::Number(n)),
            _ => Err(RegistryError::InvalidVersion(s.to_owned())),
        }
    }
}

impl VersionSpec {
    /// The version this names among a subject's `versions` (`Latest`: the
    /// newest not deleted).
    ///
    /// # Errors
    /// 40402.
    fn pick<'a>(self, subject: &str, versions: &[&'a Version]) -> Result<&'a Version> {
        match self {
            VersionSpec::Latest => versions.iter().rfind(|v| !v.deleted),
            VersionSpec::Number(n) => versions.iter().find(|v| v.version == n),
        }
        .copied()
        .ok_or_else(|| RegistryError::VersionNotFound {
            subject: subject.to_owned(),
            version: match self {
                VersionSpec::Latest => "latest".into(),
                VersionSpec::Number(n) => n.to_string(),
            },
        })
    }
}

/// A pipeline's reader schema, which every writer schema of its subject
/// must stay readable by.
#[derive(Debug, Clone)]
pub struct Reader {
    /// Pipeline name.
    pub pipeline: String,
    /// Subject (`{topic}-value`).
    pub subject: String,
    /// The reader schema.
    pub schema: Parsed,
}

/// A plugin's schema contract on a subject: the reader schema it declares,
/// as registered text (parsed by the registry with its references).
#[derive(Debug, Clone)]
pub struct Contract {
    /// The plugin.
    pub plugin: String,
    /// A pipeline it runs in.
    pub pipeline: String,
    /// That pipeline's subject (`{topic}-value`).
    pub subject: String,
    /// The declared reader schema.
    pub schema: SchemaText,
}

/// The running plugins' contracts, asked for at each registration (plugins
/// are deployed and rolled back while the registry runs).
pub type ContractSource = dyn Fn() -> Vec<Contract> + Send + Sync;

/// Parses an Avro schema as the registry accepts it.
///
/// # Errors
/// 42201 naming what is wrong.
pub fn parse(text: &str) -> Result<apache_avro::Schema> {
    apache_avro::Schema::parse_str(text).map_err(|e| RegistryError::InvalidSchema(e.to_string()))
}

/// A schema as stored: Avro written back from its parsed form, JSON Schema
/// compact with sorted keys, Protobuf as registered.
fn normalized(parsed: &Parsed, text: &SchemaText) -> SchemaText {
    let schema = match parsed {
        Parsed::Avro(_) | Parsed::Json(_) => parsed.canonical(),
        Parsed::Protobuf(_) => text.schema.trim().to_owned(),
    };
    SchemaText {
        kind: text.kind,
        schema,
        references: text.references.clone(),
    }
}

/// The embedded schema registry.
pub struct Registry {
    store: Store,
    doc: Mutex<Doc>,
    /// Parsed schemas by id.
    parsed: Mutex<HashMap<u32, Parsed>>,
    readers: Mutex<Vec<Reader>>,
    /// The plugins' contracts, and whether a registration that breaks one
    /// is refused (else logged).
    contracts: std::sync::OnceLock<(Box<ContractSource>, bool)>,
}

impl Registry {
    /// Loads the registry from the store (empty when never saved).
    ///
    /// # Errors
    /// A store failure or a corrupt document.
    pub fn open(store: Store) -> Result<Arc<Self>> {
        let doc = match store.schema_registry()? {
            Some(json) => serde_json::from_str(&json).map_err(|_| {
                RegistryError::Store(StoreError::Corrupt {
                    what: "schema registry".into(),
                })
            })?,
            None => Doc {
                next_id: 1,
                ..Doc::default()
            },
        };
        Ok(Arc::new(Registry {
            store,
            doc: Mutex::new(doc),
            parsed: Mutex::default(),
            readers: Mutex::default(),
            contracts: std::sync::OnceLock::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Doc> {
        crate::lock(&self.doc)
    }

    fn save(&self, doc: &Doc) -> Result<()> {
        let json = serde_json::to_string(doc).map_err(|e| {
            RegistryError::Store(StoreError::Corrupt {
                what: format!("schema registry: {e}"),
            })
        })?;
        Ok(self.store.save_schema_registry(&json)?)
    }

    /// Registers the pipelines' reader schemas: a new writer schema they
    /// cannot read is refused.
    pub fn set_readers(&self, readers: Vec<Reader>) {
        *crate::lock(&self.readers) = readers;
    }

    /// The pipelines' reader schemas it checks new versions against.
    pub fn readers(&self) -> Vec<Reader> {
        crate::lock(&self.readers).clone()
    }

    /// Installs the plugins' contracts: a new schema one of them cannot
    /// read is refused (`refuse`) or logged as a warning.
    pub fn set_contracts(&self, source: Box<ContractSource>, refuse: bool) {
        if self.contracts.set((source, refuse)).is_err() {
            tracing::warn!("the schema registry's plugin contracts were already set");
        }
    }

    /// Checks a reader schema (a plugin's contract) against every live
    /// version of `subject`: one message per version it cannot read.
    ///
    /// # Errors
    /// The contract does not parse (or its references are not registered).
    pub fn check_reader(&self, subject: &str, text: &SchemaText) -> Result<Vec<String>> {
        let doc = self.lock();
        let (reader, _) = self.parse_new(&doc, text)?;
        let live: Vec<Version> = doc
            .subjects
            .get(subject)
            .map(|v| v.iter().filter(|v| !v.deleted).cloned().collect())
            .unwrap_or_default();
        Ok(live
            .iter()
            .filter_map(|v| {
                let writer = self.parsed_in(&doc, v.id)?;
                let e = Parsed::can_read(&writer, &reader).err()?;
                Some(format!(
                    "cannot read version {} (schema id {}) of subject {subject:?}: {}",
                    v.version,
                    v.id,
                    e.join("; ")
                ))
            })
            .collect())
    }

    /// The parsed schema of `id`.
    pub fn schema(&self, id: u32) -> Option<Parsed> {
        let doc = self.lock();
        self.parsed_in(&doc, id)
    }

    /// The parsed schema of `id` in `doc` (cached: an id never changes meaning).
    fn parsed_in(&self, doc: &Doc, id: u32) -> Option<Parsed> {
        if let Some(s) = crate::lock(&self.parsed).get(&id) {
            return Some(s.clone());
        }
        let text = doc.schemas.get(&id)?;
        let refs = doc.references(text).ok()?;
        let schema = Parsed::parse(text, &refs).ok()?;
        crate::lock(&self.parsed).insert(id, schema.clone());
        Some(schema)
    }

    /// These versions' schemas, parsed, with their version numbers.
    fn parsed_versions<'a>(
        &self,
        doc: &Doc,
        versions: impl Iterator<Item = &'a Version>,
    ) -> Vec<(u32, Parsed)> {
        versions
            .filter_map(|v| Some((v.version, self.parsed_in(doc, v.id)?)))
            .collect()
    }

    /// Parses a schema to register or look up, with its references.
    fn parse_new(&self, doc: &Doc, text: &SchemaText) -> Result<(Parsed, SchemaText)> {
        let refs = doc.references(text)?;
        let parsed = Parsed::parse(text, &refs).map_err(RegistryError::InvalidSchema)?;
        let norm = normalized(&parsed, text);
        Ok((parsed, norm))
    }

    /// Whether the schema under `id` is `parsed` (same type, references and
    /// canonical form).
    fn same(&self, doc: &Doc, id: u32, parsed: &Parsed, text: &SchemaText) -> bool {
        let Some(stored) = doc.schemas.get(&id) else {
            return false;
        };
        if stored.kind != text.kind || stored.references != text.references {
            return false;
        }
        if stored.schema == text.schema {
            return true;
        }
        self.parsed_in(doc, id)
            .is_some_and(|p| p.canonical() == parsed.canonical())
    }

    /// Subjects with a live version (or any version, with `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.lock()
            .subjects
            .iter()
            .filter(|(_, v)| v.iter().any(|v| deleted || !v.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Registers `text` under `subject` (idempotent for an equivalent schema).
    ///
    /// # Errors
    /// 42201 invalid schema, 409 incompatible (with the reasons), 50001.
    pub fn register(&self, subject: &str, text: &SchemaText) -> Result<u32> {
        let mut doc = self.lock();
        let (schema, norm) = self.parse_new(&doc, text)?;
        let live: Vec<Version> = doc
            .subjects
            .get(subject)
            .map(|v| v.iter().filter(|v| !v.deleted).cloned().collect())
            .unwrap_or_default();
        if let Some(v) = live.iter().find(|v| self.same(&doc, v.id, &schema, &norm)) {
            return Ok(v.id);
        }
        let previous = self.parsed_versions(&doc, live.iter().rev());
        let mut messages = compat::check(doc.mode(subject), &schema, &previous);
        for r in crate::lock(&self.readers)
            .iter()
            .filter(|r| r.subject == subject)
        {
            if let Err(e) = Parsed::can_read(&schema, &r.schema) {
                messages.push(format!(
                    "pipeline {:?} reads this subject and its reader schema cannot read the new schema: {}",
                    r.pipeline,
                    e.join("; ")
                ));
            }
        }
        if let Some((source, refuse)) = self.contracts.get() {
            for c in source().into_iter().filter(|c| c.subject == subject) {
                let verdict = match self.parse_new(&doc, &c.schema) {
                    Ok((reader, _)) => Parsed::can_read(&schema, &reader),
                    Err(e) => Err(vec![e.to_string()]),
                };
                if let Err(e) = verdict {
                    let message = format!(
                        "plugin {:?} (pipeline {:?}) declares a reader schema that cannot read the new schema: {}",
                        c.plugin,
                        c.pipeline,
                        e.join("; ")
                    );
                    if *refuse {
                        messages.push(message);
                    } else {
                        tracing::warn!(subject, plugin = %c.plugin, pipeline = %c.pipeline, reason = %message, "registered a schema that breaks a plugin's contract");
                    }
                }
            }
        }
        if !messages.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                messages,
            });
        }
        let existing = doc
            .schemas
            .keys()
            .copied()
            .find(|id| self.same(&doc, *id, &schema, &norm));
        let id = match existing {
            Some(id) => id,
            None => {
                let id = doc.next_id.max(1);
                doc.next_id = id + 1;
                doc.schemas.insert(id, norm);
                crate::lock(&self.parsed).insert(id, schema);
                id
            }
        };
        let versions = doc.subjects.entry(subject.to_owned()).or_default();
        let version = versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        versions.push(Version {
            version,
            id,
            deleted: false,
        });
        self.save(&doc)?;
        Ok(id)
    }

    /// Finds `text` among a subject's live versions.
    ///
    /// # Errors
    /// 40401 no such subject, 40403 not registered there, 42201.
    pub fn lookup(&self, subject: &str, text: &SchemaText) -> Result<Registered> {
        let doc = self.lock();
        let versions = live_versions(&doc, subject, false)?;
        let (parsed, norm) = self.parse_new(&doc, text)?;
        versions
            .iter()
            .find(|v| self.same(&doc, v.id, &parsed, &norm))
            .map(|v| Registered {
                subject: subject.to_owned(),
                version: v.version,
                id: v.id,
                schema: doc.schemas.get(&v.id).cloned().unwrap_or(norm.clone()),
            })
            .ok_or(RegistryError::SchemaNotFound)
    }

    /// A subject's version numbers.
    ///
    /// # Errors
    /// 40401.
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>> {
        let doc = self.lock();
        Ok(live_versions(&doc, subject, deleted)?
            .iter()
            .map(|v| v.version)
            .collect())
    }

    /// One version of a subject.
    ///
    /// # Errors
    /// 40401, 40402.
    pub fn version(&self, subject: &str, spec: VersionSpec, deleted: bool) -> Result<Registered> {
        let doc = self.lock();
        let versions = live_versions(&doc, subject, deleted)?;
        let v = spec.pick(subject, &versions)?;
        Ok(Registered {
            subject: subject.to_owned(),
            version: v.version,
            id: v.id,
            schema: doc
                .schemas
                .get(&v.id)
                .cloned()
                .unwrap_or_else(|| SchemaText::avro("")),
        })
    }

    /// Deletes a subject: soft (versions hidden) or, after that, permanently.
    ///
    /// # Errors
    /// 40401, 40404, 40405, 42206 (another schema imports one of its versions).
    pub fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<u32>> {
        let mut doc = self.lock();
        for v in doc.subjects.get(subject).into_iter().flatten() {
            doc.check_unreferenced(subject, v.version)?;
        }
        let versions = doc
            .subjects
            .get_mut(subject)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
        let numbers: Vec<u32> = versions.iter().map(|v| v.version).collect();
        let all_deleted = versions.iter().all(|v| v.deleted);
        if permanent {
            if !all_deleted {
                return Err(RegistryError::SubjectNotSoftDeleted(subject.to_owned()));
            }
            doc.subjects.remove(subject);
            doc.subject_compatibility.remove(subject);
        } else {
            if all_deleted {
                return Err(RegistryError::SubjectSoftDeleted(subject.to_owned()));
            }
            for v in versions.iter_mut() {
                v.deleted = true;
            }
        }
        self.save(&doc)?;
        Ok(numbers)
    }

    /// Deletes one version: soft, or (after that) permanently.
    ///
    /// # Errors
    /// 40401, 40402, 40406, 40407, 42206 (another schema imports it).
    pub fn delete_version(&self, subject: &str, spec: VersionSpec, permanent: bool) -> Result<u32> {
        let mut doc = self.lock();
        let target = doc.subjects.get(subject).and_then(|vs| match spec {
            VersionSpec::Latest => vs.iter().rfind(|v| !v.deleted),
            VersionSpec::Number(n) => vs.iter().find(|v| v.version == n),
        });
        if let Some(v) = target {
            doc.check_unreferenced(subject, v.version)?;
        }
        let versions = doc
            .subjects
            .get_mut(subject)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
        let not_found = || RegistryError::VersionNotFound {
            subject: subject.to_owned(),
            version: match spec {
                VersionSpec::Latest => "latest".into(),
                VersionSpec::Number(n) => n.to_string(),
            },
        };
        let at = match spec {
            VersionSpec::Latest => versions.iter().rposition(|v| !v.deleted),
            VersionSpec::Number(n) => versions.iter().position(|v| v.version == n),
        }
        .ok_or_else(not_found)?;
        let v = versions.get_mut(at).ok_or_else(not_found)?;
        let number = v.version;
        if permanent {
            if !v.deleted {
                return Err(RegistryError::VersionNotSoftDeleted {
                    subject: subject.to_owned(),
                    version: number,
                });
            }
            versions.remove(at);
            if versions.is_empty() {
                doc.subjects.remove(subject);
            }
        } else {
            if v.deleted {
                return Err(RegistryError::VersionSoftDeleted {
                    subject: subject.to_owned(),
                    version: number,
                });
            }
            v.deleted = true;
        }
        self.save(&doc)?;
        Ok(number)
    }

    /// The ids of the schemas that import `subject`'s version.
    ///
    /// # Errors
    /// 40401, 40402.
    pub fn referenced_by(&self, subject: &str, spec: VersionSpec) -> Result<Vec<u32>> {
        let doc = self.lock();
        let versions = live_versions(&doc, subject, true)?;
        let v = spec.pick(subject, &versions)?;
        Ok(doc.referenced_by(subject, v.version))
    }

    /// The schema text of an id.
    ///
    /// # Errors
    /// 40403.
    pub fn schema_by_id(&self, id: u32) -> Result<SchemaText> {
        self.lock()
            .schemas
            .get(&id)
            .cloned()
            .ok_or(RegistryError::SchemaNotFound)
    }

    /// The (subject, version) pairs using an id.
    ///
    /// # Errors
    /// 40403.
    pub fn id_versions(&self, id: u32) -> Result<Vec<(String, u32)>> {
        let doc = self.lock();
        if !doc.schemas.contains_key(&id) {
            return Err(RegistryError::SchemaNotFound);
        }
        Ok(doc
            .subjects
            .iter()
            .flat_map(|(s, vs)| {
                vs.iter()
                    .filter(|v| v.id == id && !v.deleted)
                    .map(|v| (s.clone(), v.version))
            })
            .collect())
    }

    /// Tests `text` against a subject: against one version, or against what
    /// the subject's level requires for `latest`. Returns the violations.
    ///
    /// # Errors
    /// 40401, 40402, 42201.
    pub fn test(&self, subject: &str, spec: VersionSpec, text: &SchemaText) -> Result<Vec<String>> {
        let doc = self.lock();
        let (schema, _) = self.parse_new(&doc, text)?;
        let versions = live_versions(&doc, subject, false)?;
        let chosen: Vec<&Version> = match spec {
            VersionSpec::Latest => versions.iter().rev().copied().collect(),
            VersionSpec::Number(n) => {
                vec![versions.iter().find(|v| v.version == n).ok_or_else(|| {
                    RegistryError::VersionNotFound {
                        subject: subject.to_owned(),
                        version: n.to_string(),
                    }
                })?]
            }
        };
        let previous = self.parsed_versions(&doc, chosen.into_iter());
        Ok(compat::check(doc.mode(subject), &schema, &previous))
    }

    /// The global compatibility level.
    pub fn global_mode(&self) -> Mode {
        self.lock().compatibility.unwrap_or_default()
    }

    /// Sets the global compatibility level.
    ///
    /// # Errors
    /// 50001.
    pub fn set_global_mode(&self, mode: Mode) -> Result<()> {
        let mut doc = self.lock();
        doc.compatibility = Some(mode);
        self.save(&doc)
    }

    /// A subject's own level (`None`: it follows the global one).
    pub fn subject_mode(&self, subject: &str) -> Option<Mode> {
        self.lock().subject_compatibility.get(subject).copied()
    }

    /// Sets (or with `None` removes) a subject's level; returns the previous one.
    ///
    /// # Errors
    /// 50001.
    pub fn set_subject_mode(&self, subject: &str, mode: Option<Mode>) -> Result<Option<Mode>> {
        let mut doc = self.lock();
        let previous = match mode {
            Some(m) => doc.subject_compatibility.insert(subject.to_owned(), m),
            None => doc.subject_compatibility.remove(subject),
        };
        self.save(&doc)?;
        Ok(previous)
    }

    /// Every live writer schema of a subject, oldest first, with versions.
    pub fn writers(&self, subject: &str) -> Vec<(u32, u32, Parsed)> {
        let doc = self.lock();
        doc.subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|v| !v.deleted)
            .filter_map(|v| Some((v.version, v.id, self.parsed_in(&doc, v.id)?)))
            .collect()
    }
}

fn live_versions<'a>(doc: &'a Doc, subject: &str, deleted: bool) -> Result<Vec<&'a Version>> {
    let versions: Vec<&Version> = doc
        .subjects
        .get(subject)
        .into_iter()
        .flatten()
        .filter(|v| deleted || !v.deleted)
        .collect();
    if versions.is_empty() {
        return Err(RegistryError::SubjectNotFound(subject.to_owned()));
    }
    Ok(versions)
}

impl SchemaSource for Registry {
    fn schema_text(&self, id: u32) -> Result<Option<SchemaText>, Unreachable> {
        Ok(self.lock().schemas.get(&id).cloned())
    }

    fn subject_version(
        &self,
        subject: &str,
        version: u32,
    ) -> Result<Option<SchemaText>, Unreachable> {
        Ok(self.lock().subject_version(subject, version).cloned())
    }
}
