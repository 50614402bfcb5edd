//! Logging from inside a plugin.
//!
//! Inside the host, lines go to the host's structured log tagged with the
//! plugin, pipeline and key. In native tests they go to standard error.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// Something failed.
    Error,
}

/// Writes one log line.
pub fn log(level: Level, message: &str) {
    #[cfg(all(target_arch = "wasm32", feature = "aggregator"))]
    {
        crate::bindings::aggregator::eddy::plugin::host::log(
            crate::bindings::aggregator_level(level),
            message,
        );
    }
    #[cfg(all(
        target_arch = "wasm32",
        feature = "handler",
        not(feature = "aggregator")
    ))]
    {
        crate::bindings::handler::eddy::plugin::host::log(
            crate::bindings::handler_level(level),
            message,
        );
    }
    #[cfg(not(all(
        target_arch = "wasm32",
        any(feature = "aggregator", feature = "handler")
    )))]
    {
        eprintln!("[{level:?}] {message}");
    }
}

/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}
