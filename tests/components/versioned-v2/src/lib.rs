//! The versioned test aggregator, version v2.

/// The version this build tags events with.
pub const VERSION: &str = "v2";

include!("../../versioned.rs");
