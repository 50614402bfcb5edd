//! Guest bindings of the WIT worlds, generated once per enabled feature, and
//! the adapters between them and the SDK's traits. Not public API.
//!
//! The contract is `eddy:plugin@0.2.0`; with the `contract-0-1` feature
//! (`eddy plugin build --contract 0.1.0`) the older `eddy:plugin@0.1.0`,
//! for hosts that predate 0.2.0. Each generated module re-exports its
//! package as `contract` and its exports as `exported`, so the adapters
//! below read the same for both.
#![allow(unsafe_code, missing_docs)]

use std::marker::PhantomData;

#[cfg(feature = "aggregator")]
pub mod aggregator {
    #[cfg(not(feature = "contract-0-1"))]
    wit_bindgen::generate!({
        path: "../wit",
        world: "eddy:plugin/aggregator-plugin@0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_aggregator_world",
        default_bindings_module: "eddy_sdk::bindings::aggregator",
    });
    #[cfg(not(feature = "contract-0-1"))]
    pub use self::{eddy::plugin0_2_0 as contract, exports::eddy::plugin0_2_0 as exported};

    #[cfg(feature = "contract-0-1")]
    wit_bindgen::generate!({
        path: "../wit",
        world: "eddy:plugin/aggregator-plugin@0.1.0",
        pub_export_macro: true,
        export_macro_name: "__export_aggregator_world",
        default_bindings_module: "eddy_sdk::bindings::aggregator",
    });
    #[cfg(feature = "contract-0-1")]
    pub use self::{eddy::plugin0_1_0 as contract, exports::eddy::plugin0_1_0 as exported};
}

#[cfg(feature = "handler")]
pub mod handler {
    #[cfg(not(feature = "contract-0-1"))]
    wit_bindgen::generate!({
        path: "../wit",
        world: "eddy:plugin/handler-plugin@0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
        default_bindings_module: "eddy_sdk::bindings::handler",
    });
    #[cfg(not(feature = "contract-0-1"))]
    pub use self::{eddy::plugin0_2_0 as contract, exports::eddy::plugin0_2_0 as exported};

    #[cfg(feature = "contract-0-1")]
    wit_bindgen::generate!({
        path: "../wit",
        world: "eddy:plugin/handler-plugin@0.1.0",
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
        default_bindings_module: "eddy_sdk::bindings::handler",
    });
    #[cfg(feature = "contract-0-1")]
    pub use self::{eddy::plugin0_1_0 as contract, exports::eddy::plugin0_1_0 as exported};
}

/// The environment the host grants the plugin (see `sdk/wit/env.wit`).
pub mod environment {
    wit_bindgen::generate!({
        path: "wit",
        world: "eddy:sdk-env/plugin-environment",
        generate_all,
    });
    pub use self::wasi::cli::environment::get_environment;
}

/// Adapts an [`crate::Aggregator`] to the generated `Guest` trait.
pub struct AggregatorExport<A>(PhantomData<fn() -> A>);

/// Adapts a [`crate::Handler`] to the generated `Guest` trait.
pub struct HandlerExport<H>(PhantomData<fn() -> H>);

macro_rules! conversions {
    ($m:ident, $level_fn:ident) => {
        #[allow(dead_code)]
        pub(crate) fn $level_fn(level: crate::log::Level) -> $m::contract::host::Level {
            use $m::contract::host::Level as L;
            match level {
                crate::log::Level::Trace => L::Trace,
                crate::log::Level::Debug => L::Debug,
                crate::log::Level::Info => L::Info,
                crate::log::Level::Warn => L::Warn,
                crate::log::Level::Error => L::Error,
            }
        }

        impl From<$m::contract::types::Event> for crate::Event<String> {
            fn from(e: $m::contract::types::Event) -> Self {
                crate::Event {
                    topic: e.topic,
                    partition: e.partition,
                    offset: e.offset,
                    timestamp_ms: e.timestamp_ms,
                    key: e.key,
                    headers: e.headers.into_iter().map(|h| (h.name, h.value)).collect(),
                    schema_id: e.schema_id,
                    value: e.value,
                }
            }
        }

        impl From<crate::Emit> for $m::contract::types::Emit {
            fn from(e: crate::Emit) -> Self {
                $m::contract::types::Emit {
                    topic: e.topic,
                    key: e.key,
                    value: e.value,
                    headers: e
                        .headers
                        .into_iter()
                        .map(|(name, value)| $m::contract::types::Header { name, value })
                        .collect(),
                }
            }
        }

        impl From<crate::Failure> for $m::contract::types::Failure {
            fn from(f: crate::Failure) -> Self {
                use $m::contract::types::Failure as F;
                match f {
                    crate::Failure::Invalid(m) => F::Invalid(m),
                    crate::Failure::Retryable(m) => F::Retryable(m),
                    crate::Failure::Fatal(m) => F::Fatal(m),
                }
            }
        }
    };
}

#[cfg(feature = "aggregator")]
conversions!(aggregator, aggregator_level);
#[cfg(feature = "handler")]
conversions!(handler, handler_level);

#[cfg(all(feature = "aggregator", not(feature = "contract-0-1")))]
thread_local! {
    /// The instance's resident states (a `Resident<A::State>`; a plugin has
    /// one aggregator, so one type lives here).
    static RESIDENT: std::cell::RefCell<Option<Box<dyn std::any::Any>>> =
        const { std::cell::RefCell::new(None) };
}

#[cfg(all(feature = "aggregator", not(feature = "contract-0-1")))]
impl<A> aggregator::exported::aggregator::Guest for AggregatorExport<A>
where
    A: crate::Aggregator + 'static,
    A::State: 'static,
{
    fn setup(
        settings: aggregator::exported::aggregator::Settings,
    ) -> aggregator::exported::aggregator::StateFormat {
        RESIDENT.with_borrow_mut(|r| {
            *r = Some(Box::new(crate::runtime::Resident::<A::State>::with_budget(
                settings.resident_bytes,
            )));
        });
        aggregator::exported::aggregator::StateFormat::Msgpack
    }

    fn fold(
        batch: Vec<aggregator::exported::aggregator::KeyEvents>,
    ) -> Vec<Result<aggregator::exported::aggregator::Outcome, aggregator::contract::types::Failure>>
    {
        let batch = batch
            .into_iter()
            .map(|k| crate::runtime::KeyEvents {
                key: k.key,
                state: k.state,
                version: k.version,
                next_version: k.next_version,
                events: k.events.into_iter().map(Into::into).collect(),
            })
            .collect();
        RESIDENT.with_borrow_mut(|slot| {
            let resident = slot
                .get_or_insert_with(|| {
                    Box::new(crate::runtime::Resident::<A::State>::with_budget(0))
                })
                .downcast_mut::<crate::runtime::Resident<A::State>>();
            let mut none = crate::runtime::Resident::<A::State>::with_budget(0);
            let resident = match resident {
                Some(r) => r,
                None => &mut none,
            };
            crate::runtime::fold::<A>(resident, batch)
                .into_iter()
                .map(|r| match r {
                    Ok((state, emits)) => Ok(aggregator::exported::aggregator::Outcome {
                        state,
                        emits: emits.into_iter().map(Into::into).collect(),
                    }),
                    Err(f) => Err(f.into()),
                })
                .collect()
        })
    }
}

#[cfg(all(feature = "aggregator", feature = "contract-0-1"))]
impl<A: crate::Aggregator + 'static> aggregator::exported::aggregator::Guest
    for AggregatorExport<A>
{
    fn apply(
        key: String,
        state: Option<String>,
        events: Vec<aggregator::contract::types::Event>,
    ) -> Result<aggregator::exported::aggregator::Outcome, aggregator::contract::types::Failure>
    {
        let events = events.into_iter().map(Into::into).collect();
        match crate::runtime::apply_json::<A>(&key, state.as_deref(), events) {
            Ok((state, emits)) => Ok(aggregator::exported::aggregator::Outcome {
                state,
                emits: emits.into_iter().map(Into::into).collect(),
            }),
            Err(f) => Err(f.into()),
        }
    }
}

#[cfg(feature = "handler")]
impl<H: crate::Handler + 'static> handler::exported::handler::Guest for HandlerExport<H> {
    fn handle(
        events: Vec<handler::contract::types::Event>,
    ) -> Vec<Result<Vec<handler::contract::types::Emit>, handler::contract::types::Failure>> {
        let events = events.into_iter().map(Into::into).collect();
        crate::runtime::handle::<H>(events)
            .into_iter()
            .map(|r| match r {
                Ok(emits) => Ok(emits.into_iter().map(Into::into).collect()),
                Err(f) => Err(f.into()),
            })
            .collect()
    }
}
