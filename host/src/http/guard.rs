//! The gate in front of every route: bearer tokens on writes (and on reads
//! when configured), per-token rate limits on the producer endpoints with
//! `429` and `Retry-After`, and caps on SSE connections per client address
//! and overall.
//!
//! Admin routes — plugin deploys (`/v1/plugins/...`), state rebuilds
//! (`POST /v1/pipelines/{p}/replay`), pauses (`.../pause`, `.../resume`) and
//! config reloads (`POST /v1/config/reload`)
//! — keep their own admin token and are not gated here. `/healthz`, `/readyz`, `/metrics` and `/openapi.json`
//! and the console's page and files (`/ui`) are always open.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// The gate's settings and counters.
pub struct Gate {
    /// Token required on write routes (and reads with `protect_reads`).
    pub token: Option<String>,
    /// Whether reads need the token too.
    pub protect_reads: bool,
    /// Producer requests per second per token (or per address); 0 = off.
    pub produce_rate: f64,
    /// Requests a caller may make at once before the rate applies.
    pub produce_burst: f64,
    /// Most SSE connections overall.
    pub sse_max: usize,
    /// Most SSE connections from one client address.
    pub sse_max_per_address: usize,
    /// Paths of mounted entity-creation routes (producer endpoints too).
    pub create_paths: arc_swap::ArcSwap<Vec<String>>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    sse: Mutex<HashMap<IpAddr, usize>>,
}

impl Gate {
    /// A gate with these settings.
    #[allow(
        clippy::too_many_arguments,
        reason = "plain settings, named at the one call site"
    )]
    pub fn new(
        token: Option<String>,
        protect_reads: bool,
        produce_rate: f64,
        produce_burst: u32,
        sse_max: usize,
        sse_max_per_address: usize,
        create_paths: Vec<String>,
    ) -> Self {
        Gate {
            token,
            protect_reads,
            produce_rate,
            produce_burst: f64::from(produce_burst.max(1)),
            sse_max,
            sse_max_per_address,
            create_paths: arc_swap::ArcSwap::from_pointee(create_paths),
            buckets: Mutex::default(),
            sse: Mutex::default(),
        }
    }

    /// Takes one request from `who`'s bucket; `Err(seconds)` to wait.
    fn take(&self, who: &str) -> Result<(), u64> {
        if self.produce_rate <= 0.0 {
            return Ok(());
        }
        let mut b = crate::lock(&self.buckets);
        let now = Instant::now();
        let (tokens, at) = b.entry(who.to_owned()).or_insert((self.produce_burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.produce_rate)
            .min(self.produce_burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.produce_rate).ceil().max(1.0) as u64)
        }
    }
}

/// Compares in time independent of where the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The token a request presents: `Bearer T`, or `Basic` with T as the
/// password (as Confluent's clients send it).
fn presented(request: &Request) -> Option<String> {
    let v = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.trim().to_owned());
    }
    let basic = v.strip_prefix("Basic ")?;
    let decoded = crate::pipeline::dead_letter::unbase64(basic.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut r = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"eddy\""),
        );
    }
    r
}

fn is_sse(path: &str) -> bool {
    path.ends_with("/events") || path.contains("/sse/")
}

/// Releases an SSE slot when the connection's body is dropped.
struct Slot {
    gate: Arc<Gate>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut sse = crate::lock(&self.gate.sse);
        if let Some(n) = sse.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                sse.remove(&self.address);
            }
        }
    }
}

/// The middleware.
pub async fn gate(State(s): State<AppState>, request: Request, next: Next) -> Response {
    let gate = s.gate.clone();
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let admin = path.starts_with("/v1/plugins")
        || path == "/v1/config/reload"
        || (method == Method::POST
            && path.starts_with("/v1/pipelines/")
            && ["/replay", "/pause", "/resume"]
                .iter()
                .any(|end| path.ends_with(end))
            && path.split('/').count() == 5);
    // The console's page and files hold no data (its API calls carry the
    // token), so a browser can load it also with `protect_reads`.
    let console = path == "/ui" || path.starts_with("/ui/");
    if admin
        || console
        || matches!(
            path.as_str(),
            "/healthz" | "/readyz" | "/metrics" | "/openapi.json"
        )
    {
        return next.run(request).await;
    }
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let read = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let token = presented(&request);
    if let Some(expected) = gate.token.as_deref()
        && (!read || gate.protect_reads)
    {
        match &token {
            None => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "missing token: send Authorization: Bearer <token>",
                );
            }
            Some(t) if !constant_time_eq(t.as_bytes(), expected.as_bytes()) => {
                return refuse(StatusCode::FORBIDDEN, "wrong token");
            }
            Some(_) => {}
        }
    }
    let produce = method == Method::POST
        && ((path.starts_with("/v1/topics/") && path.ends_with("/records"))
            || gate.create_paths.load().contains(&path));
    if produce {
        let who = token.unwrap_or_else(|| address.to_string());
        if let Err(wait) = gate.take(&who) {
            let mut r = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "producer rate limit reached; retry after the given seconds",
            );
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
    }
    if read && is_sse(&path) {
        let slot = {
            let mut sse = crate::lock(&gate.sse);
            let total: usize = sse.values().sum();
            let mine = sse.get(&address).copied().unwrap_or(0);
            if total >= gate.sse_max {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many SSE connections");
            }
            if mine >= gate.sse_max_per_address {
                return refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many SSE connections from this address",
                );
            }
            *sse.entry(address).or_insert(0) += 1;
            Slot {
                gate: gate.clone(),
                address,
            }
        };
        let response = next.run(request).await;
        let (parts, body) = response.into_parts();
        let guarded = futures_util::StreamExt::map(body.into_data_stream(), move |chunk| {
            let _held = &slot;
            chunk
        });
        return Response::from_parts(parts, Body::from_stream(guarded));
    }
    next.run(request).await
}
