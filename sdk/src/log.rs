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

thread_local! {
    /// The key whose events are being processed (one call folds many keys).
    static KEY: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// The offset of the event being processed.
    static OFFSET: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
}

/// The key the plugin is processing, named in its log lines.
pub(crate) fn set_key(key: Option<&str>) {
    KEY.with_borrow_mut(|k| match (k.as_mut(), key) {
        (Some(buf), Some(key)) => {
            buf.clear();
            buf.push_str(key);
        }
        (None, Some(key)) => *k = Some(key.to_owned()),
        (_, None) => {
            if let Some(buf) = k.as_mut() {
                buf.clear();
            }
        }
    });
}

/// The offset of the event the plugin is processing.
pub(crate) fn set_offset(offset: Option<i64>) {
    OFFSET.set(offset);
}

/// Inside the host, a panic is logged as an error line — its message and
/// the file:line that panicked — before the plugin traps, so the event's
/// dead letter says where it failed (the trap alone names only wasm
/// functions). Natively the standard hook stays.
pub(crate) fn report_panics() {
    #[cfg(target_arch = "wasm32")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(a panic without a message)");
                let at = info.location().map_or_else(String::new, |l| {
                    format!(" at {}:{}:{}", l.file(), l.line(), l.column())
                });
                log(Level::Error, &format!("panicked{at}: {message}"));
            }));
        });
    }
}

/// Writes one log line, tagged with the key and the offset of the event
/// being processed.
pub fn log(level: Level, message: &str) {
    let offset = OFFSET.get();
    KEY.with_borrow(|key| {
        let key = key.as_deref().filter(|k| !k.is_empty());
        // The 0.1.0 contract's log has no place for them.
        #[cfg(all(target_arch = "wasm32", feature = "contract-0-1"))]
        let _ = (key, offset);
        #[cfg(all(target_arch = "wasm32", feature = "aggregator"))]
        {
            #[cfg(not(feature = "contract-0-1"))]
            crate::bindings::aggregator::contract::host::log(
                crate::bindings::aggregator_level(level),
                message,
                key,
                offset,
            );
            #[cfg(feature = "contract-0-1")]
            crate::bindings::aggregator::contract::host::log(
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
            #[cfg(not(feature = "contract-0-1"))]
            crate::bindings::handler::contract::host::log(
                crate::bindings::handler_level(level),
                message,
                key,
                offset,
            );
            #[cfg(feature = "contract-0-1")]
            crate::bindings::handler::contract::host::log(
                crate::bindings::handler_level(level),
                message,
            );
        }
        #[cfg(not(all(
            target_arch = "wasm32",
            any(feature = "aggregator", feature = "handler")
        )))]
        {
            match (key, offset) {
                (Some(key), Some(offset)) => eprintln!("[{level:?}] {key}@{offset}: {message}"),
                _ => eprintln!("[{level:?}] {message}"),
            }
        }
    });
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
