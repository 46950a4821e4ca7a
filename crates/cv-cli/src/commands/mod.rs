//! One module per command; each turns flags into library calls and prints the result.

mod data;
mod explain;
mod export;
mod predict;
mod quantize;
mod report;
mod train;
mod weights;

use anyhow::Result;
use cv_weights::source::WeightsSource;

use crate::args::{usage, Cli, Command, DataCommand, WeightsCommand};

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Train(a) => train::train(a),
        Command::Finetune(a) => train::finetune(a),
        Command::Distill(a) => train::distill(a),
        Command::Eval(a) => train::eval(a),
        Command::Predict(a) => predict::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Report(a) => report::run(a),
        Command::Export(a) => export::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Data(DataCommand::Inspect(a)) => data::inspect(a),
        Command::Weights(WeightsCommand::List(a)) => weights::list(a),
        Command::Weights(WeightsCommand::Fetch(a)) => weights::fetch(a),
    }
}

/// The scope of `--precision` for `eval` and `predict`: bf16 runs on the CPU; on other
/// devices only training runs bf16, so it is refused there rather than ignored.
fn eval_precision(
    p: crate::args::PrecisionArg,
    device: &candle_core::Device,
) -> Result<cv_train::autocast::Autocast> {
    let precision = p.into();
    if precision == cv_train::config::Precision::Bf16 && !device.is_cpu() {
        anyhow::bail!(
            "--precision bf16 for eval and predict runs on the CPU only (got {device:?})"
        );
    }
    let cast = cv_train::autocast::Autocast::enter(precision, device)?;
    log::info!(
        "arithmetic {}",
        cv_train::autocast::compute_name(precision, device)?
    );
    Ok(cast)
}

/// The weights `--checkpoint DIR` (an existing folder) or `--weights NAME|PATH` name.
fn weights_source(
    checkpoint: &Option<std::path::PathBuf>,
    weights: &Option<String>,
) -> Result<WeightsSource> {
    match (checkpoint, weights) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                anyhow::bail!("--checkpoint {}: no such folder", dir.display());
            }
            Ok(WeightsSource::Folder(dir.clone()))
        }
        (None, Some(w)) => parse_weights(w),
        (None, None) => Err(usage("give --checkpoint DIR or --weights NAME|PATH")),
    }
}

/// `--weights` value: an existing file or folder, else a registry name (a usage error when it
/// is neither, listing the known names).
pub fn parse_weights(s: &str) -> Result<WeightsSource> {
    WeightsSource::parse(s).map_err(|e| {
        let names: Vec<&str> = cv_weights::registry::registry().iter().map(|p| p.name).collect();
        usage(format!("--weights {s}: {e} (known names: {}; or give a .safetensors file or a checkpoint folder)", names.join(", ")))
    })
}
