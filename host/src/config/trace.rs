//! `[tracing]`: distributed traces, exported with OpenTelemetry's OTLP.

use serde::Deserialize;

/// Traces that cross Kafka. Each record's W3C `traceparent` header (one
/// is started at the producer endpoint for a record that has none) is
/// carried through decode, the plugin call and the commit, and put on
/// every emitted, changelog and dead-letter record — whether or not spans
/// are exported. With `otlp_endpoint` the spans of each sampled event's
/// path are exported over OTLP/HTTP (protobuf) to `{otlp_endpoint}/v1/traces`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// The OTLP/HTTP collector (`http://127.0.0.1:4318`); spans are not
    /// exported without it.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Whether the producer endpoint starts a trace for a record that
    /// carries no `traceparent` (default: only when spans are exported).
    #[serde(default)]
    pub start_traces: Option<bool>,
    /// Of the traces the producer endpoint starts, the share marked sampled
    /// (0.0–1.0). A record's own `traceparent` keeps its sampled flag.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            otlp_endpoint: None,
            service_name: default_service_name(),
            start_traces: None,
            sample_ratio: default_sample_ratio(),
        }
    }
}

impl TraceConfig {
    /// Whether the producer endpoint starts traces.
    pub fn starts_traces(&self) -> bool {
        self.start_traces.unwrap_or(self.otlp_endpoint.is_some())
    }

    /// What is wrong with it, each naming the field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.otlp_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            out.push(format!(
                "tracing.otlp_endpoint {e:?}: an http:// or https:// URL (OTLP over HTTP)"
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            out.push(format!(
                "tracing.sample_ratio {}: between 0.0 and 1.0",
                self.sample_ratio
            ));
        }
        if self.service_name.trim().is_empty() {
            out.push("tracing.service_name: empty".to_owned());
        }
        out
    }
}

fn default_service_name() -> String {
    "eddy".to_owned()
}

fn default_sample_ratio() -> f64 {
    1.0
}

#[cfg(test)]
mod tests {
    use super::TraceConfig;

    #[test]
    fn bad_settings_are_named_and_exporting_starts_traces() {
        let bad = TraceConfig {
            otlp_endpoint: Some("127.0.0.1:4318".into()),
            sample_ratio: 1.5,
            ..TraceConfig::default()
        };
        let problems = bad.problems().join("\n");
        assert!(problems.contains("tracing.otlp_endpoint"), "{problems}");
        assert!(problems.contains("tracing.sample_ratio"), "{problems}");
        assert!(!TraceConfig::default().starts_traces());
        let exporting = TraceConfig {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            ..TraceConfig::default()
        };
        assert!(exporting.problems().is_empty() && exporting.starts_traces());
    }
}
