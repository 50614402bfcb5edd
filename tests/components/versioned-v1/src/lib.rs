//! The versioned test aggregator, version v1.

/// The version this build tags events with.
pub const VERSION: &str = "v1";

fn tag(_id: &str) -> String {
    VERSION.to_owned()
}

include!("../../versioned.rs");
