//! `[http]`: the HTTP server, its tokens and limits.

use std::net::SocketAddr;

use serde::Deserialize;

/// The HTTP server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Seconds between SSE keep-alive comments.
    #[serde(default = "default_keepalive")]
    pub sse_keepalive_secs: u64,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: usize,
    /// Largest component a plugin upload (`PUT /v1/plugins/{name}`, a
    /// shadow run's candidate) may be, in bytes: components of interpreted
    /// languages carry their interpreter (Python ~18 MB, JavaScript ~12 MB).
    #[serde(default = "default_plugin_limit")]
    pub max_plugin_bytes: usize,
    /// Bearer token required by the admin routes (plugin deploy and
    /// rollback). `EDDY_ADMIN_TOKEN` sets it too. Without one, they are off.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Deploy a plugin's component when its file changes on disk.
    #[serde(default = "default_true")]
    pub watch_plugins: bool,
    /// Token required on every write route (producing, entity creation,
    /// dead-letter and replay operations, schema registry writes), as
    /// `Authorization: Bearer <token>` (or as the password of Basic auth,
    /// as Confluent's clients send it). `EDDY_TOKEN` sets it too. Without
    /// one, writes are open. Plugin deploys and state rebuilds use `admin_token`.
    #[serde(default)]
    pub token: Option<String>,
    /// Require the token on read routes too (all but `/healthz`, `/readyz`
    /// and `/metrics`).
    #[serde(default)]
    pub protect_reads: bool,
    /// Producer requests per second allowed per token (per client address
    /// without one); beyond it, `429` with `Retry-After`. 0 turns it off.
    #[serde(default)]
    pub produce_rate_per_sec: f64,
    /// Producer requests a caller may send at once before the rate applies.
    #[serde(default = "default_burst")]
    pub produce_burst: u32,
    /// Each connection's socket send buffer, in KiB (the kernel doubles it
    /// for its bookkeeping); 0 leaves it to the kernel's autotuning, which
    /// grows the buffer of a client that stopped reading an SSE stream to
    /// megabytes. The default holds any one response's pace on a LAN and
    /// ~5 MB/s at 50 ms round trips.
    #[serde(default = "default_send_buffer")]
    pub send_buffer_kib: u32,
    /// Most open SSE connections overall (`503` beyond).
    #[serde(default = "default_sse_max")]
    pub sse_max_clients: usize,
    /// Most open SSE connections from one client address (`429` beyond).
    #[serde(default = "default_sse_per_address")]
    pub sse_max_per_address: usize,
    /// Naming rule for topics created with `POST /v1/topics`; the one rule
    /// is `"entity.event_type.version"` (such as `order.created.v1`).
    #[serde(default)]
    pub topic_naming: Option<String>,
    /// Web pages on other origins allowed to call the API from a browser
    /// (CORS), each as `scheme://host[:port]` (such as
    /// `https://app.example.com`): their requests and preflights are
    /// answered with `Access-Control-Allow-Origin`, tokens
    /// (`Authorization`) and the browser's credentials included, SSE too.
    /// Empty (the default): no other origin is allowed.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// How long a browser may keep a preflight's answer, in seconds.
    #[serde(default = "default_cors_max_age")]
    pub cors_max_age_secs: u64,
}

fn default_cors_max_age() -> u64 {
    600
}

/// Why `origin` cannot be a CORS origin: it must be `http(s)://host[:port]`
/// exactly as a browser sends it (no path, no trailing slash, no wildcard).
pub fn origin_problem(origin: &str) -> Option<String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Some("must start with http:// or https://".into());
    };
    if rest.is_empty() {
        return Some("has no host".into());
    }
    if rest.contains('*') {
        return Some("a wildcard would let any site call the API with its visitors' credentials: list each origin".into());
    }
    if let Some(c) = rest
        .chars()
        .find(|c| matches!(c, '/' | '?' | '#' | '@' | ' '))
    {
        return Some(format!(
            "holds {c:?}: an origin is scheme://host[:port], with no path"
        ));
    }
    if origin != origin.to_ascii_lowercase() {
        return Some("must be lowercase, as browsers send it".into());
    }
    if let Some((_, port)) = rest.rsplit_once(':')
        && !rest.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Some(format!("port {port:?} is not a port number"));
    }
    None
}

fn default_burst() -> u32 {
    20
}
fn default_send_buffer() -> u32 {
    128
}
fn default_sse_max() -> usize {
    50_000
}
fn default_sse_per_address() -> usize {
    1_000
}

fn default_true() -> bool {
    true
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            sse_keepalive_secs: default_keepalive(),
            max_body_bytes: default_body_limit(),
            max_plugin_bytes: default_plugin_limit(),
            admin_token: None,
            watch_plugins: true,
            token: None,
            protect_reads: false,
            produce_rate_per_sec: 0.0,
            produce_burst: default_burst(),
            send_buffer_kib: default_send_buffer(),
            sse_max_clients: default_sse_max(),
            sse_max_per_address: default_sse_per_address(),
            topic_naming: None,
            cors_origins: Vec::new(),
            cors_max_age_secs: default_cors_max_age(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_keepalive() -> u64 {
    15
}
fn default_body_limit() -> usize {
    8 * 1024 * 1024
}
fn default_plugin_limit() -> usize {
    128 * 1024 * 1024
}

#[cfg(test)]
mod tests {
    use super::origin_problem;

    #[test]
    fn cors_origins_are_exact_origins() {
        for ok in [
            "https://app.example.com",
            "http://localhost:3000",
            "http://127.0.0.1:8081",
            "http://[::1]:8080",
        ] {
            assert_eq!(origin_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("*", "http:// or https://"),
            ("https://*.example.com", "wildcard"),
            ("app.example.com", "http:// or https://"),
            ("https://app.example.com/", "no path"),
            ("https://app.example.com/ui", "no path"),
            ("https://App.example.com", "lowercase"),
            ("http://localhost:http", "port"),
            ("https://", "no host"),
        ] {
            let problem = origin_problem(bad).unwrap_or_default();
            assert!(problem.contains(why), "{bad}: {problem}");
        }
    }
}
