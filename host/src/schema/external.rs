//! A client of an external Confluent-compatible schema registry
//! (`[registry] url = ...`): writer schemas by id and referenced versions by
//! subject, cached for good (a schema id, and a subject's version, never
//! changes meaning).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{SchemaSource, SchemaText, Unreachable};

/// An external registry.
pub struct Remote {
    url: String,
    agent: ureq::Agent,
    cache: Mutex<HashMap<String, SchemaText>>,
}

impl Remote {
    /// A client of the registry at `url` (such as `http://host:8081`).
    pub fn new(url: &str) -> Self {
        Remote {
            url: url.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into(),
            cache: Mutex::default(),
        }
    }
}

impl Remote {
    /// GETs `path` (cached): the schema it answers, `None` on a 404.
    fn fetch(&self, path: &str) -> Result<Option<SchemaText>, Unreachable> {
        if let Some(s) = crate::lock(&self.cache).get(path) {
            return Ok(Some(s.clone()));
        }
        let url = format!("{}{path}", self.url);
        let failed = |reason: String| Unreachable {
            url: url.clone(),
            reason,
        };
        let mut response = self
            .agent
            .get(&url)
            .header("accept", "application/vnd.schemaregistry.v1+json")
            .call()
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| failed(e.to_string()))?;
        match status {
            200 => {
                // `schemaType` is left out for Avro; `references` when empty.
                let text: SchemaText =
                    serde_json::from_str(&body).map_err(|e| failed(format!("bad answer: {e}")))?;
                crate::lock(&self.cache).insert(path.to_owned(), text.clone());
                Ok(Some(text))
            }
            404 => Ok(None),
            s => Err(failed(format!("answered {s}: {body}"))),
        }
    }
}

impl SchemaSource for Remote {
    fn schema_text(&self, id: u32) -> Result<Option<SchemaText>, Unreachable> {
        self.fetch(&format!("/schemas/ids/{id}"))
    }

    fn subject_version(
        &self,
        subject: &str,
        version: u32,
    ) -> Result<Option<SchemaText>, Unreachable> {
        let subject: String = subject
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        self.fetch(&format!("/subjects/{subject}/versions/{version}"))
    }
}
