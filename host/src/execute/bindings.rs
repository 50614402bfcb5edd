//! The one place that generates host bindings for the WIT contract.
//! Everything else imports the plugin types from here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "eddy:plugin/host-view",
});

pub use self::eddy::plugin::host::{Host, Level};
pub use self::eddy::plugin::types::{Emit, Event, Failure, Header};
pub use self::exports::eddy::plugin::aggregator::{
    Guest as AggregatorGuest, GuestIndices as AggregatorIndices,
};
pub use self::exports::eddy::plugin::handler::{
    Guest as HandlerGuest, GuestIndices as HandlerIndices,
};

/// The WIT interface names a plugin may export, as they appear in a component.
pub const AGGREGATOR_EXPORT: &str = "eddy:plugin/aggregator@0.1.0";
/// See [`AGGREGATOR_EXPORT`].
pub const HANDLER_EXPORT: &str = "eddy:plugin/handler@0.1.0";
