//! The one place that generates host bindings for the WIT contract (both
//! versions: `eddy:plugin@0.2.0` and `eddy:plugin@0.1.0`). Everything else
//! imports the plugin types from here.
//!
//! Parameters are generated borrowing (`&str`, `&[u8]`, slices): an event
//! is lowered into a plugin's memory straight from the host's record and
//! decoded value, with no copy made for the call. The two versions share
//! their types (`event`, `emit`, `failure` are the same records in both),
//! so one [`Event`] serves both.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "eddy:plugin/host-view@0.2.0",
    ownership: Borrowing { duplicate_if_necessary: true },
    with: {
        "eddy:plugin/types@0.1.0": crate::execute::bindings::eddy::plugin0_2_0::types,
    },
});

pub use self::eddy::plugin0_2_0::host::{Host, Level};
pub use self::eddy::plugin0_2_0::types::{Emit, Event, Failure, HeaderParam as Header};
pub use self::exports::eddy::plugin0_2_0::aggregator::{
    Guest as AggregatorGuest, GuestIndices as AggregatorIndices, KeyEvents, Settings,
    StateFormat as PluginStateFormat,
};
pub use self::exports::eddy::plugin0_2_0::handler::{
    Guest as HandlerGuest, GuestIndices as HandlerIndices,
};

/// The contract 0.1.0, kept for the plugins built against it: states as
/// JSON text, one key per aggregator call.
pub mod v0_1 {
    pub use super::eddy::plugin0_1_0::host::{Host, Level};
    pub use super::exports::eddy::plugin0_1_0::aggregator::{
        Guest as AggregatorGuest, GuestIndices as AggregatorIndices,
    };
    pub use super::exports::eddy::plugin0_1_0::handler::{
        Guest as HandlerGuest, GuestIndices as HandlerIndices,
    };

    /// The interface names a 0.1.0 plugin exports.
    pub const AGGREGATOR_EXPORT: &str = "eddy:plugin/aggregator@0.1.0";
    /// See [`AGGREGATOR_EXPORT`].
    pub const HANDLER_EXPORT: &str = "eddy:plugin/handler@0.1.0";
}

/// The WIT interface names a plugin may export, as they appear in a component.
pub const AGGREGATOR_EXPORT: &str = "eddy:plugin/aggregator@0.2.0";
/// See [`AGGREGATOR_EXPORT`].
pub const HANDLER_EXPORT: &str = "eddy:plugin/handler@0.2.0";
