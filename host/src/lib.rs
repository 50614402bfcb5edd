//! Eddy: serverless event processing — events in (embedded log), WebAssembly
//! component plugins in the middle, fjall state and HTTP/SSE out.
//!
//! The way an event travels, one module per stage:
//! [`source`] → [`decode`] → [`route`] → [`execute`] → commit ([`store`]) →
//! [`sink`] (emitted records out) → [`notify`] → [`http`]. The [`pipeline`]
//! worker runs the stages in order.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod decode;
pub mod execute;
pub mod http;
pub mod kafka;
pub mod notify;
pub mod pipeline;
pub mod route;
pub mod schema;
pub mod sink;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod trace;

/// Locks a mutex, recovering it when a thread panicked while holding it:
/// every mutex in Eddy guards data that is consistent between statements,
/// so one panicked thread is no reason to stop the others.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch (0 before it, saturating far after).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
