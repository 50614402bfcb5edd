//! The versioned test aggregator, version v1.

/// The version this build tags events with.
pub const VERSION: &str = "v1";

include!("../../versioned.rs");
