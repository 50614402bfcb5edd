//! Eddy: serverless event processing — events in (embedded log), WebAssembly
//! component plugins in the middle, fjall state and HTTP/SSE out.
//!
//! The way an event travels, one module per stage:
//! [`source`] → [`decode`] → [`route`] → [`execute`] → commit ([`store`]) →
//! [`notify`] → [`http`]. The [`pipeline`] worker runs the stages in order.

pub mod cli;
pub mod config;
pub mod decode;
pub mod execute;
pub mod http;
pub mod notify;
pub mod pipeline;
pub mod route;
pub mod source;
pub mod store;
