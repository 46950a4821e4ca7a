//! `cv`: transfer learning for computer vision from the command line.
//!
//! A thin binary: each command parses its flags and calls the library crates (`cv-data`,
//! `cv-models`, `cv-weights`, `cv-train`). Exit codes: 0 success, 2 bad usage, 1 any other
//! failure, always with one `error:` line per problem (`cv predict` names each unreadable
//! image, then counts them) and never a panic or a backtrace.

mod args;
mod commands;

use clap::Parser;

fn main() {
    // Before any thread starts: candle leaves the cores to rayon, one malloc arena keeps
    // freed batches for reuse.
    cv_ops::leave_threads_to_rayon();
    cv_data::keep_freed_memory();
    let cli = args::Cli::parse();
    init_logging(cli.quiet_logs());
    if let Err(e) = commands::run(cli) {
        // One line: the whole anyhow chain, outermost context first.
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(if e.downcast_ref::<args::UsageError>().is_some() {
            2
        } else {
            1
        });
    }
}

/// Library log lines go to stderr as `info: ...`; `RUST_LOG` overrides the level.
fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(|buf, record| {
            use std::io::Write;
            writeln!(
                buf,
                "{}: {}",
                record.level().as_str().to_ascii_lowercase(),
                record.args()
            )
        })
        .init();
}
