//! `cv quantize`: f32 weights to an int8 checkpoint folder (post-training static
//! quantization, see [`cv_models::quant`]): BatchNorm folded, activation ranges observed on
//! calibration images of the training split through the eval transforms, weights quantized
//! per output channel. The folder holds `model.safetensors` (int8, with its scales and zero
//! points) and a `config.json` whose `quantization` says what it is; `cv eval`, `cv predict`
//! and [`crate::Classifier`] take it as they take an f32 checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use cv_data::{Dataset, Loader, LoaderConfig};
use cv_models::quant::{Calibration, Observer, QuantizedModel};
use cv_train::checkpoint::{ModelCard, Quantization, CONFIG_FILE, MODEL_FILE};

use crate::error::{Result, WeightsError};
use crate::source::ResolvedWeights;

/// How to calibrate.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Calibration images (at most the training split's size).
    pub calibration: usize,
    /// How ranges are taken from what is observed.
    pub observer: Observer,
    /// Images per calibration batch.
    pub batch_size: usize,
    /// Which images: the first `calibration` of the split shuffled with this seed.
    pub seed: u64,
    /// Show a progress bar over the calibration images.
    pub progress: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            calibration: 512,
            observer: Observer::MinMax,
            batch_size: 32,
            seed: 0,
            progress: false,
        }
    }
}

/// What [`quantize`] wrote.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// Convolutions quantized.
    pub convolutions: usize,
    /// Calibration images observed.
    pub calibration_images: usize,
    /// Size of `model.safetensors` in bytes.
    pub bytes: u64,
    /// The card written as `config.json`.
    pub card: ModelCard,
}

/// Quantizes `weights` with calibration images from `train` (whose classes must be the
/// weights') into the new folder `out`. The folder is written under a temporary name and
/// renamed, so a failure leaves nothing behind; an existing `out` is refused.
pub fn quantize(
    weights: &ResolvedWeights,
    train: Dataset,
    options: &QuantizeOptions,
    out: &Path,
) -> Result<QuantizeReport> {
    check_out(out)?;
    if train.classes != weights.classes {
        return Err(WeightsError::Input(format!(
            "the calibration data has classes {:?} but {} has {:?}",
            train.classes, weights.origin, weights.classes
        )));
    }
    if options.calibration == 0 || train.images.is_empty() {
        return Err(WeightsError::Input(format!(
            "calibration needs at least one image ({} asked, {} in the training split)",
            options.calibration,
            train.images.len()
        )));
    }
    let state = crate::load::load_state_for(weights, "quantizing")?;
    let folded = cv_models::fold::fold_batch_norm(weights.architecture, &state)?;
    let calibration = calibrate(weights, &folded, train, options)?;
    let model = QuantizedModel::quantize(weights.architecture, &folded, &calibration)?;
    let card = ModelCard {
        architecture: weights.architecture,
        classes: weights.classes.clone(),
        image_size: weights.image_size,
        eval_transforms: weights.eval_transforms.clone(),
        weights_from: None,
        quantization: Some(Quantization {
            scheme: "int8-static".into(),
            observer: calibration.observer().to_string(),
            calibration_images: calibration.images(),
            kernel: cv_models::quant::int8_kernel().name().into(),
            quantized_from: weights.origin.clone(),
        }),
    };
    let bytes = model.to_safetensors()?;
    write_folder(out, &bytes, &card)?;
    Ok(QuantizeReport {
        dir: out.to_path_buf(),
        convolutions: cv_models::quant::convolutions(weights.architecture).len(),
        calibration_images: calibration.images(),
        bytes: bytes.len() as u64,
        card,
    })
}

/// Observes the first `options.calibration` images of the shuffled split.
fn calibrate(
    weights: &ResolvedWeights,
    folded: &std::collections::HashMap<String, candle_core::Tensor>,
    train: Dataset,
    options: &QuantizeOptions,
) -> Result<Calibration> {
    let wanted = options.calibration.min(train.images.len());
    let loader = Loader::new(
        Arc::new(train),
        weights.eval_transforms.clone(),
        LoaderConfig {
            batch_size: options.batch_size.max(1),
            shuffle: true,
            seed: options.seed,
            ..Default::default()
        },
        Device::Cpu,
    )?;
    let mut calibration = Calibration::new(options.observer)?;
    let bar = progress_bar(options.progress, wanted);
    for batch in loader.epoch(0) {
        let images = batch?.images;
        let take = (wanted - calibration.images()).min(images.dim(0)?);
        calibration.observe(weights.architecture, folded, &images.narrow(0, 0, take)?)?;
        bar.set_position(calibration.images() as u64);
        if calibration.images() >= wanted {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(calibration)
}

/// Images observed of `total`; hidden when `show` is false.
fn progress_bar(show: bool, total: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "calibration [{elapsed_precise}] {bar:30} {pos}/{len} images",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Refuses an existing `out` and a missing parent folder.
fn check_out(out: &Path) -> Result<()> {
    if out.exists() {
        return Err(WeightsError::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists; cv quantize writes a new folder (pick another --out)",
            ),
        ));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|p| !p.is_dir()) {
        return Err(WeightsError::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "its parent folder does not exist",
            ),
        ));
    }
    Ok(())
}

/// Writes the folder under a temporary name beside `out`, then renames it.
fn write_folder(out: &Path, model: &[u8], card: &ModelCard) -> Result<()> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "int8".into());
    let tmp = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let result = (|| {
        std::fs::create_dir(&tmp).map_err(|e| WeightsError::io(&tmp, e))?;
        let file = tmp.join(MODEL_FILE);
        std::fs::write(&file, model).map_err(|e| WeightsError::io(&file, e))?;
        card.write(&tmp.join(CONFIG_FILE))?;
        std::fs::rename(&tmp, out).map_err(|e| WeightsError::io(out, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
