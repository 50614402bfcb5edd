//! The `eddy` command line; everything else lives in the library (`lib.rs`).

use std::process::ExitCode;

use clap::Parser;
use eddy::cli;

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
