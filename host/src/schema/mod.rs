//! Schemas: the embedded schema registry (Confluent's model: subjects with
//! versions, globally numbered schemas, compatibility levels), persisted in
//! the store, and the external registry client. The HTTP API speaking
//! Confluent's REST protocol is `http/registry.rs`; decoding with these
//! schemas is `decode/`.

pub mod compat;
pub mod external;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};
pub use compat::Mode;

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
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidCompatibility(_) => 42203,
            RegistryError::Store(_) => 50001,
        }
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Where a decoder gets writer schemas by id.
pub trait SchemaSource: Send + Sync {
    /// The schema text registered under `id`; `Ok(None)` when there is none.
    ///
    /// # Errors
    /// The registry cannot be reached right now (retry later).
    fn schema_text(&self, id: u32) -> Result<Option<String>, Unreachable>;
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

/// The persisted registry.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Doc {
    next_id: u32,
    /// id -> schema text (the parsed schema written back as JSON).
    schemas: BTreeMap<u32, String>,
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

    /// These versions' schemas, parsed, with their version numbers.
    fn parsed<'a>(&self, versions: impl Iterator<Item = &'a Version>) -> Vec<(u32, Schema)> {
        versions
            .filter_map(|v| {
                let text = self.schemas.get(&v.id)?;
                Some((v.version, Schema::parse_str(text).ok()?))
            })
            .collect()
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
    /// Schema text.
    pub schema: String,
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

/// A pipeline's reader schema, which every writer schema of its subject
/// must stay readable by.
#[derive(Debug, Clone)]
pub struct Reader {
    /// Pipeline name.
    pub pipeline: String,
    /// Subject (`{topic}-value`).
    pub subject: String,
    /// The reader schema.
    pub schema: Schema,
}

/// Parses a schema as the registry accepts it.
///
/// # Errors
/// 42201 naming what is wrong.
pub fn parse(text: &str) -> Result<Schema> {
    Schema::parse_str(text).map_err(|e| RegistryError::InvalidSchema(e.to_string()))
}

fn normalized(schema: &Schema) -> Result<String> {
    serde_json::to_string(schema).map_err(|e| RegistryError::InvalidSchema(e.to_string()))
}

/// The embedded schema registry.
pub struct Registry {
    store: Store,
    doc: Mutex<Doc>,
    /// Parsed schemas by id.
    parsed: Mutex<HashMap<u32, Arc<Schema>>>,
    readers: Mutex<Vec<Reader>>,
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

    /// The parsed schema of `id`.
    pub fn schema(&self, id: u32) -> Option<Arc<Schema>> {
        let mut parsed = crate::lock(&self.parsed);
        if let Some(s) = parsed.get(&id) {
            return Some(s.clone());
        }
        let text = self.lock().schemas.get(&id).cloned()?;
        let schema = Arc::new(Schema::parse_str(&text).ok()?);
        parsed.insert(id, schema.clone());
        Some(schema)
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
    pub fn register(&self, subject: &str, text: &str) -> Result<u32> {
        let schema = parse(text)?;
        let norm = normalized(&schema)?;
        let mut doc = self.lock();
        let live: Vec<Version> = doc
            .subjects
            .get(subject)
            .map(|v| v.iter().filter(|v| !v.deleted).cloned().collect())
            .unwrap_or_default();
        if let Some(v) = live.iter().find(|v| doc.schemas.get(&v.id) == Some(&norm)) {
            return Ok(v.id);
        }
        let previous = doc.parsed(live.iter().rev());
        let refs: Vec<(u32, &Schema)> = previous.iter().map(|(v, s)| (*v, s)).collect();
        let mut messages = compat::check(doc.mode(subject), &schema, &refs);
        for r in crate::lock(&self.readers)
            .iter()
            .filter(|r| r.subject == subject)
        {
            if let Err(e) = compat::can_read(&schema, &r.schema) {
                messages.push(format!(
                    "pipeline {:?} reads this subject and its reader schema cannot read the new schema: {e}",
                    r.pipeline
                ));
            }
        }
        if !messages.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                messages,
            });
        }
        let id = match doc.schemas.iter().find(|(_, t)| **t == norm) {
            Some((id, _)) => *id,
            None => {
                let id = doc.next_id.max(1);
                doc.next_id = id + 1;
                doc.schemas.insert(id, norm);
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
    pub fn lookup(&self, subject: &str, text: &str) -> Result<Registered> {
        let norm = normalized(&parse(text)?)?;
        let doc = self.lock();
        let versions = live_versions(&doc, subject, false)?;
        versions
            .iter()
            .find(|v| doc.schemas.get(&v.id) == Some(&norm))
            .map(|v| Registered {
                subject: subject.to_owned(),
                version: v.version,
                id: v.id,
                schema: norm.clone(),
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
        let v = match spec {
            VersionSpec::Latest => versions.iter().rfind(|v| !v.deleted),
            VersionSpec::Number(n) => versions.iter().find(|v| v.version == n),
        }
        .ok_or_else(|| RegistryError::VersionNotFound {
            subject: subject.to_owned(),
            version: match spec {
                VersionSpec::Latest => "latest".into(),
                VersionSpec::Number(n) => n.to_string(),
            },
        })?;
        Ok(Registered {
            subject: subject.to_owned(),
            version: v.version,
            id: v.id,
            schema: doc.schemas.get(&v.id).cloned().unwrap_or_default(),
        })
    }

    /// Deletes a subject: soft (versions hidden) or, after that, permanently.
    ///
    /// # Errors
    /// 40401, 40404, 40405.
    pub fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<u32>> {
        let mut doc = self.lock();
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
    /// 40401, 40402, 40406, 40407.
    pub fn delete_version(&self, subject: &str, spec: VersionSpec, permanent: bool) -> Result<u32> {
        let mut doc = self.lock();
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

    /// The schema text of an id.
    ///
    /// # Errors
    /// 40403.
    pub fn schema_by_id(&self, id: u32) -> Result<String> {
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
    pub fn test(&self, subject: &str, spec: VersionSpec, text: &str) -> Result<Vec<String>> {
        let schema = parse(text)?;
        let doc = self.lock();
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
        let previous = doc.parsed(chosen.into_iter());
        let refs: Vec<(u32, &Schema)> = previous.iter().map(|(v, s)| (*v, s)).collect();
        Ok(compat::check(doc.mode(subject), &schema, &refs))
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
    pub fn writers(&self, subject: &str) -> Vec<(u32, u32, Schema)> {
        let doc = self.lock();
        doc.subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|v| !v.deleted)
            .filter_map(|v| {
                let text = doc.schemas.get(&v.id)?;
                Some((v.version, v.id, Schema::parse_str(text).ok()?))
            })
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
    fn schema_text(&self, id: u32) -> Result<Option<String>, Unreachable> {
        Ok(self.lock().schemas.get(&id).cloned())
    }
}
