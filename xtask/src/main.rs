//! Project tasks run with `cargo xtask <task>`: fetching CIFAR-10 and benchmarks. Each task
//! only parses flags and calls the library crates, which hold the logic.

mod bench;
mod fetch_data;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Project tasks for the cv workspace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download, verify and extract the CIFAR-10 binary dataset into data/.
    FetchData(fetch_data::Args),
    /// Run benchmarks (build with --release) and optionally write the figures as JSON.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::FetchData(args) => fetch_data::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
