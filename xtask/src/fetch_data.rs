//! `cargo xtask fetch-data`: flags only; the work is `cv_data::archive::fetch_cifar10`.

use std::path::PathBuf;

use cv_data::archive::{fetch_cifar10, FetchOptions, CIFAR10_MD5, CIFAR10_URL};
use cv_data::download::DownloadOptions;

/// Flags of `fetch-data`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data folder; the dataset lands in DIR/cifar-10-batches-bin.
    #[arg(long, default_value = "data")]
    dir: PathBuf,
    /// Download from this URL instead of the official one (a mirror).
    #[arg(long, default_value = CIFAR10_URL)]
    url: String,
    /// Expected md5 of the archive.
    #[arg(long, default_value = CIFAR10_MD5)]
    md5: String,
    /// Use this local archive instead of downloading (machines without internet).
    #[arg(long, value_name = "FILE", conflicts_with = "url")]
    archive: Option<PathBuf>,
    /// Download and extract again even if a verified dataset is present.
    #[arg(long)]
    force: bool,
    /// Do not draw a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Seconds a connection may take to open, and the server may stay silent mid-transfer.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    timeout: f64,
    /// Attempts after the first on connection errors, timeouts and 5xx/429 answers (with
    /// exponential backoff; a broken transfer resumes where it stopped).
    #[arg(long, default_value_t = 5, value_name = "N")]
    retries: u32,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        anyhow::bail!(
            "--timeout {}: give a positive number of seconds",
            args.timeout
        );
    }
    let timeout = std::time::Duration::from_secs_f64(args.timeout);
    let opts = FetchOptions {
        dir: args.dir,
        url: args.url,
        md5: args.md5,
        archive: args.archive,
        force: args.force,
        net: DownloadOptions {
            connect_timeout: timeout,
            read_timeout: timeout,
            retries: args.retries,
            progress: !args.no_progress,
            ..DownloadOptions::default()
        },
    };
    let outcome = fetch_cifar10(&opts)?;
    println!("{outcome}");
    Ok(())
}
