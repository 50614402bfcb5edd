//! A client of an external Confluent-compatible schema registry
//! (`[registry] url = ...`): writer schemas by id, cached for good (a
//! schema id never changes meaning).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{SchemaSource, Unreachable};

/// An external registry.
pub struct Remote {
    url: String,
    agent: ureq::Agent,
    cache: Mutex<HashMap<u32, String>>,
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

impl SchemaSource for Remote {
    fn schema_text(&self, id: u32) -> Result<Option<String>, Unreachable> {
        if let Some(s) = crate::lock(&self.cache).get(&id) {
            return Ok(Some(s.clone()));
        }
        let url = format!("{}/schemas/ids/{id}", self.url);
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
                let v: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| failed(format!("bad answer: {e}")))?;
                let text = v
                    .get("schema")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| failed("the answer has no \"schema\"".into()))?
                    .to_owned();
                crate::lock(&self.cache).insert(id, text.clone());
                Ok(Some(text))
            }
            404 => Ok(None),
            s => Err(failed(format!("answered {s}: {body}"))),
        }
    }
}
