//! Project tasks run with `cargo xtask <task>`: fetching CIFAR-10, benchmarks, the CUDA build
//! and the CI checks. Each task only parses flags and calls the library crates, which hold the
//! logic.

mod bench;
mod build_cuda;
mod ci;
mod fetch_data;
mod release;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::anyhow;
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
    /// Run benchmarks and optionally write the figures as JSON (a build without optimisations
    /// re-runs itself with `cargo run --release`).
    Bench(bench::Args),
    /// Build `cv` with `--features cuda` here, without a GPU (pinned CUDA 13.0 compiler from
    /// PyPI + link stubs under target/; binary in target/cuda/release/cv). See docs/gpu.md.
    BuildCuda(build_cuda::Args),
    /// What CI runs, stopping at the first failure: fmt --check, clippy -D warnings, the tests
    /// (parity fixtures required when ../shared/fixtures exists), docs with warnings denied.
    Ci(ci::Args),
}

/// The workspace root: xtask lives in `<root>/xtask`.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("xtask manifest dir {} has no parent", manifest.display()))
}

/// The cargo that runs us (`$CARGO` under `cargo run`), else `cargo` from PATH.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn main() -> ExitCode {
    // As the `cv` binary does, so benchmarks measure what users get.
    cv_ops::leave_threads_to_rayon();
    cv_data::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::FetchData(args) => fetch_data::run(args),
        Command::Bench(_) if release::should_rerun() => {
            return release::rerun().unwrap_or_else(|e| {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            })
        }
        Command::Bench(args) => bench::run(args),
        Command::BuildCuda(args) => build_cuda::run(args),
        Command::Ci(args) => ci::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
