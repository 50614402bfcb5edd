//! `eddy`: serverless event processing — events in (embedded log), WebAssembly
//! component plugins in the middle, fjall state and HTTP/SSE out.
//!
//! The way an event travels, one folder per stage:
//! [`source`] → [`decode`] → [`route`] → [`execute`] → commit ([`store`]) →
//! [`notify`] → [`http`]. The [`pipeline`] worker runs the stages in order.

mod cli;
mod config;
mod decode;
mod execute;
mod http;
mod notify;
mod pipeline;
mod route;
mod source;
mod store;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(cli.log_format);
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
