//! `ferrobank`: one binary, many roles. See `ferrobank --help`.

use std::process::ExitCode;

use clap::Parser;
use ferrobank::cli::Cli;

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
