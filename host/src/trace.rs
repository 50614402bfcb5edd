//! Traces that cross Kafka: each record's W3C `traceparent` header is
//! carried through the pipeline and put on what it produces, and with
//! `[tracing] otlp_endpoint` the spans of each sampled event's path are
//! exported with OpenTelemetry's OTLP.
//!
//! An event's spans: `eddy.process {pipeline}` (a consumer span, child of
//! the record's `traceparent`), and under it `eddy.decode`, `eddy.plugin
//! {name}` and `eddy.commit`. Events are processed in micro-batches, so the
//! three phases are the batch's: when its records were decoded, folded by
//! the plugins and committed. Before the plugins see the event, its
//! `traceparent` is rewritten to name the `eddy.process` span, so every
//! record the event leads to — emitted, changelog, dead letter — is that
//! span's child, and a pipeline reading one of them continues the trace.
//! Without an exporter the header travels unchanged.

use std::sync::OnceLock;
use std::time::SystemTime;

use anyhow::Context as _;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::config::TraceConfig;

/// The W3C trace context header.
pub const HEADER: &str = "traceparent";

/// A record's trace context: its trace, the span it came from, and
/// whether the trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The span that made the record.
    pub span_id: [u8; 8],
    /// The `sampled` flag.
    pub sampled: bool,
}

fn hex_bytes<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    // Lowercase hex only, as the W3C text says.
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = match pair {
            [hi, lo] => (digit(*hi)?, digit(*lo)?),
            _ => return None,
        };
        *o = hi << 4 | lo;
    }
    Some(out)
}

impl Parent {
    /// Reads a `traceparent` value (`00-{32 hex}-{16 hex}-{2 hex}`; a later
    /// version may append fields). `None` for anything else, or all-zero ids.
    pub fn parse(value: &[u8]) -> Option<Parent> {
        let mut parts = value.split(|b| *b == b'-');
        let version = hex_bytes::<1>(parts.next()?)?;
        let trace_id = hex_bytes::<16>(parts.next()?)?;
        let span_id = hex_bytes::<8>(parts.next()?)?;
        let flags = hex_bytes::<1>(parts.next()?)?;
        let extra = parts.next();
        if version == [0xff] || (version == [0] && extra.is_some()) {
            return None;
        }
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Parent {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The last `traceparent` among `headers`, if it is valid.
    pub fn of(headers: &[(String, Vec<u8>)]) -> Option<Parent> {
        headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(HEADER))
            .and_then(|(_, v)| Parent::parse(v))
    }

    /// A new trace (from the producer endpoint), sampled with probability
    /// `ratio`.
    pub fn start(ratio: f64) -> Parent {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        while trace_id == [0; 16] {
            rng.fill(&mut trace_id);
        }
        while span_id == [0; 8] {
            rng.fill(&mut span_id);
        }
        Parent {
            trace_id,
            span_id,
            sampled: rng.random::<f64>() < ratio,
        }
    }

    /// Its header value.
    pub fn header(&self) -> Vec<u8> {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.span_id);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        s.into_bytes()
    }

    /// Its trace id as hex, for log lines.
    pub fn trace_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, &self.trace_id);
        s
    }

    fn context(&self) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            if self.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        ))
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            out.push(char::from(
                DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
}

/// Sets `traceparent` among `headers` to `parent` (replacing any).
pub fn set_header(headers: &mut Vec<(String, Vec<u8>)>, parent: &Parent) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(HEADER));
    headers.push((HEADER.to_owned(), parent.header()));
}

/// Copies `from`'s `traceparent` onto `to` when `to` has none.
pub fn inherit(from: &[(String, Vec<u8>)], to: &mut Vec<(String, Vec<u8>)>) {
    if to.iter().any(|(n, _)| n.eq_ignore_ascii_case(HEADER)) {
        return;
    }
    if let Some((_, v)) = from
        .iter()
        .rev()
        .find(|(n, _)| n.eq_ignore_ascii_case(HEADER))
    {
        to.push((HEADER.to_owned(), v.clone()));
    }
}

struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// OTLP over HTTP with the blocking client the host already uses; the
/// batch span processor calls it from its own thread.
#[derive(Debug)]
struct Client(ureq::Agent);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let (parts, body) = request.into_parts();
        let mut req = self.0.post(parts.uri.to_string());
        for (name, value) in &parts.headers {
            req = req.header(name, value);
        }
        let mut response = req.send(&body[..])?;
        let status = response.status().as_u16();
        let bytes = response.body_mut().read_to_vec()?;
        Ok(opentelemetry_http::Response::builder()
            .status(status)
            .body(opentelemetry_http::Bytes::from(bytes))?)
    }
}

/// Starts the OTLP exporter when `[tracing] otlp_endpoint` is set.
///
/// # Errors
/// The exporter cannot be built (a malformed endpoint).
pub fn install(config: &TraceConfig) -> anyhow::Result<()> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(());
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Client(agent))
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .with_context(|| format!("tracing.otlp_endpoint {endpoint:?}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("eddy");
    if EXPORTER.set(Exporter { provider, tracer }).is_err() {
        tracing::warn!("the trace exporter was already installed");
    }
    tracing::info!(endpoint = %endpoint, "exporting traces over OTLP");
    Ok(())
}

/// Sends what the exporter holds and stops it (at shutdown).
pub fn shutdown() {
    if let Some(e) = EXPORTER.get()
        && let Err(err) = e.provider.shutdown()
    {
        tracing::warn!(error = %err, "the trace exporter did not finish");
    }
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    EXPORTER.get().is_some()
}

/// An event's `eddy.process` span, open while its batch runs.
pub struct EventSpan {
    span: opentelemetry_sdk::trace::Span,
    /// The span's own context, which the event's records carry on.
    pub context: Parent,
    /// Where the event sits in its batch.
    pub index: usize,
}

/// Opens the `eddy.process` span of an event (its record's `parent`) of
/// `pipeline`, begun at `start`; `None` when nothing is exported or the
/// trace is not sampled.
pub fn begin(
    pipeline: &str,
    parent: &Parent,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    index: usize,
) -> Option<EventSpan> {
    let e = EXPORTER.get()?;
    if !parent.sampled {
        return None;
    }
    let mut all = vec![KeyValue::new("eddy.pipeline", pipeline.to_owned())];
    all.extend(attributes);
    let span = e
        .tracer
        .span_builder(format!("eddy.process {pipeline}"))
        .with_kind(SpanKind::Consumer)
        .with_start_time(start)
        .with_attributes(all)
        .start_with_context(&e.tracer, &parent.context());
    let sc = span.span_context();
    let context = Parent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    };
    Some(EventSpan {
        span,
        context,
        index,
    })
}

/// When a batch's phases ended.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// The batch began (its records were read).
    pub started: SystemTime,
    /// Its records were decoded.
    pub decoded: SystemTime,
    /// The plugins folded and handled them.
    pub folded: SystemTime,
    /// It was committed.
    pub committed: SystemTime,
}

/// Closes an event's span with its phases as children; `failed` marks an
/// event that was dead-lettered (with why).
pub fn end(mut event: EventSpan, phases: &Phases, plugins: &[String], failed: Option<&str>) {
    let Some(e) = EXPORTER.get() else {
        return;
    };
    let cx = event.context.context();
    let child = |name: String, from: SystemTime, to: SystemTime, attrs: Vec<KeyValue>| {
        let mut s = e
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(from)
            .with_attributes(attrs)
            .start_with_context(&e.tracer, &cx);
        s.end_with_timestamp(to);
    };
    child(
        "eddy.decode".to_owned(),
        phases.started,
        phases.decoded,
        Vec::new(),
    );
    for p in plugins {
        child(
            format!("eddy.plugin {p}"),
            phases.decoded,
            phases.folded,
            vec![KeyValue::new("eddy.plugin", p.clone())],
        );
    }
    child(
        "eddy.commit".to_owned(),
        phases.folded,
        phases.committed,
        Vec::new(),
    );
    if let Some(why) = failed {
        event.span.set_status(Status::error(why.to_owned()));
    }
    event.span.end_with_timestamp(phases.committed);
}

/// The open root span of a trace the producer endpoint started.
pub struct ProduceSpan(opentelemetry_sdk::trace::Span);

impl ProduceSpan {
    /// The record is stored.
    pub fn end(mut self) {
        self.0.end();
    }
}

/// Starts a trace at the producer endpoint for a record of `topic` that
/// carries no context, sampled with probability `ratio`: the context for
/// the record, and — when it is sampled and spans are exported — its root
/// span, `eddy.produce {topic}`, whose id the context names.
pub fn start_at_producer(topic: &str, ratio: f64) -> (Parent, Option<ProduceSpan>) {
    let parent = Parent::start(ratio);
    let Some(e) = EXPORTER.get().filter(|_| parent.sampled) else {
        return (parent, None);
    };
    let span = e
        .tracer
        .span_builder(format!("eddy.produce {topic}"))
        .with_kind(SpanKind::Producer)
        .with_attributes(vec![KeyValue::new(
            "messaging.destination.name",
            topic.to_owned(),
        )])
        .start_with_context(&e.tracer, &Context::new());
    let sc = span.span_context();
    let root = Parent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    };
    (root, Some(ProduceSpan(span)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_read_and_write_as_the_w3c_text() {
        let v = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = Parent::parse(v).expect("valid");
        assert!(p.sampled);
        assert_eq!(p.header(), v.to_vec());
        assert_eq!(p.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let unsampled = Parent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert_eq!(unsampled.map(|p| p.sampled), Some(false));
        // A later version may add fields; version 00 may not.
        assert!(
            Parent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some()
        );
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736",
            b"",
            "00-é".as_bytes(),
        ] {
            assert_eq!(Parent::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_started_trace_is_valid_and_its_header_reads_back() {
        let p = Parent::start(1.0);
        assert!(p.sampled);
        assert_eq!(Parent::parse(&p.header()), Some(p));
        assert!(!Parent::start(0.0).sampled);
    }

    #[test]
    fn records_inherit_the_context_unless_they_carry_their_own() {
        let from = vec![(
            HEADER.to_owned(),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
        )];
        let mut to = vec![("x".to_owned(), b"1".to_vec())];
        inherit(&from, &mut to);
        assert_eq!(Parent::of(&to), Parent::of(&from));
        let own = Parent::start(1.0);
        let mut mine = Vec::new();
        set_header(&mut mine, &own);
        inherit(&from, &mut mine);
        assert_eq!(Parent::of(&mine), Some(own));
    }
}
