//! `ferrobank`: one binary, many roles. See `ferrobank --help`.

use std::process::ExitCode;

use clap::Parser;
use ferrobank::cli::Cli;

/// mimalloc instead of the system allocator: the money path allocates per event and per
/// row, and glibc's malloc/free were a quarter of the process's CPU under load (perf,
/// `ferrobank bench payments`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().run().await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
