//! The `eddy` command line; everything else lives in the library (`lib.rs`).

use std::process::ExitCode;

use clap::Parser;
use eddy::cli;

/// mimalloc instead of the system allocator: the pipeline allocates and
/// frees many state-sized strings per batch, and glibc's allocator spent a
/// large share of the worker's time consolidating and splitting chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(&cli);
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
