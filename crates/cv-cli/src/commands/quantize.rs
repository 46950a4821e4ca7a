//! `cv quantize`: f32 weights to an int8 checkpoint folder, calibrated on the training split.

use anyhow::{Context, Result};
use cv_data::DataSource;
use cv_models::quant::Observer;
use cv_weights::source::{resolve, ResolveOptions};
use cv_weights::QuantizeOptions;

use crate::args::{usage, ObserverArg, QuantizeArgs};

/// Resolves the weights, opens the data, quantizes, prints what it wrote.
pub fn run(a: &QuantizeArgs) -> Result<()> {
    let observer = match a.observer {
        ObserverArg::Minmax => Observer::MinMax,
        ObserverArg::Percentile => Observer::Percentile {
            percentile: a.percentile,
        },
    };
    let observer = observer
        .check()
        .map_err(|e| usage(format!("--percentile: {e}")))?;
    if a.calibration == 0 || a.batch_size == 0 {
        return Err(usage("--calibration and --batch-size must be at least 1"));
    }
    let source = super::weights_source(&a.checkpoint, &a.weights)?;
    let options = ResolveOptions {
        offline: a.offline,
        progress: !a.quiet,
        ..Default::default()
    };
    let weights = resolve(&source, &options)?;
    let splits = super::train::open_data(&DataSource::new(&a.data))?;
    let options = QuantizeOptions {
        calibration: a.calibration,
        observer,
        batch_size: a.batch_size,
        seed: a.seed,
        progress: !a.quiet,
    };
    let report = cv_weights::quantize(&weights, splits.train, &options, &a.out)
        .with_context(|| format!("quantizing {}", weights.origin))?;
    let q = report.card.quantization.as_ref();
    println!(
        "wrote {}/{{model.safetensors, config.json}} (int8 {}, {} convolutions, {} calibration images, {} observer, {:.1} MB; this CPU runs it on {})",
        report.dir.display(),
        report.card.architecture,
        report.convolutions,
        report.calibration_images,
        q.map_or("?", |q| q.observer.as_str()),
        report.bytes as f64 / 1e6,
        q.map_or("?", |q| q.kernel.as_str()),
    );
    Ok(())
}
