//! The versioned test aggregator with a "fix": like v1, except that events
//! whose id ends in `-x` are tagged `fixed` — so a shadow run of it changes
//! exactly the keys that have such events.

/// The version of the events it does not fix.
pub const VERSION: &str = "v1";

fn tag(id: &str) -> String {
    if id.ends_with("-x") {
        "fixed".to_owned()
    } else {
        VERSION.to_owned()
    }
}

include!("../../versioned.rs");
