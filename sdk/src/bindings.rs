//! Guest bindings of the WIT worlds, generated once per enabled feature, and
//! the adapters between them and the SDK's traits. Not public API.
#![allow(unsafe_code, missing_docs)]

use std::marker::PhantomData;

#[cfg(feature = "aggregator")]
pub mod aggregator {
    wit_bindgen::generate!({
        path: "../wit",
        world: "eddy:plugin/aggregator-plugin@0.1.0",
        pub_export_macro: true,
        export_macro_name: "__export_aggregator_world",
        default_bindings_module: "eddy_sdk::bindings::aggregator",
    });
}

#[cfg(feature = "handler")]
pub mod handler {
    wit_bindgen::generate!({
        path: "../wit",
        world: "eddy:plugin/handler-plugin@0.1.0",
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
        default_bindings_module: "eddy_sdk::bindings::handler",
    });
}

/// Adapts an [`crate::Aggregator`] to the generated `Guest` trait.
pub struct AggregatorExport<A>(PhantomData<fn() -> A>);

/// Adapts a [`crate::Handler`] to the generated `Guest` trait.
pub struct HandlerExport<H>(PhantomData<fn() -> H>);

macro_rules! conversions {
    ($m:ident, $level_fn:ident) => {
        #[allow(dead_code)]
        pub(crate) fn $level_fn(level: crate::log::Level) -> $m::eddy::plugin::host::Level {
            use $m::eddy::plugin::host::Level as L;
            match level {
                crate::log::Level::Trace => L::Trace,
                crate::log::Level::Debug => L::Debug,
                crate::log::Level::Info => L::Info,
                crate::log::Level::Warn => L::Warn,
                crate::log::Level::Error => L::Error,
            }
        }

        impl From<$m::eddy::plugin::types::Event> for crate::Event<String> {
            fn from(e: $m::eddy::plugin::types::Event) -> Self {
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

        impl From<crate::Emit> for $m::eddy::plugin::types::Emit {
            fn from(e: crate::Emit) -> Self {
                $m::eddy::plugin::types::Emit {
                    topic: e.topic,
                    key: e.key,
                    value: e.value,
                    headers: e
                        .headers
                        .into_iter()
                        .map(|(name, value)| $m::eddy::plugin::types::Header { name, value })
                        .collect(),
                }
            }
        }

        impl From<crate::Failure> for $m::eddy::plugin::types::Failure {
            fn from(f: crate::Failure) -> Self {
                use $m::eddy::plugin::types::Failure as F;
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

#[cfg(feature = "aggregator")]
impl<A: crate::Aggregator + 'static> aggregator::exports::eddy::plugin::aggregator::Guest
    for AggregatorExport<A>
{
    fn apply(
        key: String,
        state: Option<String>,
        events: Vec<aggregator::eddy::plugin::types::Event>,
    ) -> Result<
        aggregator::exports::eddy::plugin::aggregator::Outcome,
        aggregator::eddy::plugin::types::Failure,
    > {
        let events = events.into_iter().map(Into::into).collect();
        match crate::runtime::apply::<A>(&key, state.as_deref(), events) {
            Ok((state, emits)) => Ok(aggregator::exports::eddy::plugin::aggregator::Outcome {
                state,
                emits: emits.into_iter().map(Into::into).collect(),
            }),
            Err(f) => Err(f.into()),
        }
    }
}

#[cfg(feature = "handler")]
impl<H: crate::Handler + 'static> handler::exports::eddy::plugin::handler::Guest
    for HandlerExport<H>
{
    fn handle(
        events: Vec<handler::eddy::plugin::types::Event>,
    ) -> Vec<Result<Vec<handler::eddy::plugin::types::Emit>, handler::eddy::plugin::types::Failure>>
    {
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
