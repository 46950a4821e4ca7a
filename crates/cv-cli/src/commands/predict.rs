//! `cv predict`: classifies every image it can read; each unreadable one is named on stderr
//! (and in `--json`), and the command then exits 1.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cv_weights::predict::{Classifier, Prediction};
use cv_weights::source::{resolve, ResolveOptions};
use image::RgbImage;

use crate::args::{rgb, usage, PredictArgs};
use cv_train::autocast::Autocast;

/// The classifier `--checkpoint` or `--weights` names, on `--device`, in `--precision`
/// (the guard keeps the precision on while it lives), and where its weights came from.
pub(super) fn load(a: &PredictArgs) -> Result<(Classifier, String, Autocast)> {
    let source = super::weights_source(&a.checkpoint, &a.weights)?;
    if a.top_k == 0 {
        return Err(usage("--top-k must be at least 1"));
    }
    let options = ResolveOptions {
        offline: a.offline,
        mean: rgb(&a.mean, "mean")?,
        std: rgb(&a.std, "std")?,
        progress: !a.json,
        hub: None,
    };
    let weights = resolve(&source, &options)?;
    if let Some(note) = &weights.note {
        log::info!("{note}");
    }
    let device = cv_models::device::select(&a.device)?;
    let cast = super::eval_precision(a.precision, &device)?;
    let classifier = Classifier::load(&weights, &device)?;
    Ok((classifier, weights.origin.to_string(), cast))
}

/// Classifies each image with the checkpoint's (or registry entry's) eval transforms.
pub fn run(a: &PredictArgs) -> Result<()> {
    let (classifier, origin, _cast) = load(a)?;
    let (images, decoded) = decode_all(&a.images);
    let answers = if images.is_empty() {
        Vec::new()
    } else {
        classifier
            .classify(&images, a.top_k)
            .with_context(|| format!("classifying with {origin}"))?
    };
    let outcomes: Vec<(&Path, Outcome)> = a
        .images
        .iter()
        .zip(decoded)
        .map(|(path, d)| (path.as_path(), d.map(|i| answers[i].as_slice())))
        .collect();
    if a.json {
        let out: Vec<serde_json::Value> = outcomes.iter().map(|(p, o)| to_json(p, o)).collect();
        println!("{}", serde_json::to_string(&out)?);
    } else {
        print_table(&outcomes);
    }
    report_failures(
        outcomes.iter().map(|(_, o)| o.as_ref().err()),
        a.images.len(),
        "could not be read",
    )
}

/// Names each failed image on stderr; an error saying how many `failed` (e.g. "could not be
/// read") when there was one.
pub(super) fn report_failures<'a>(
    errors: impl Iterator<Item = Option<&'a String>>,
    total: usize,
    failed: &str,
) -> Result<()> {
    let bad: Vec<&String> = errors.flatten().collect();
    for message in &bad {
        eprintln!("error: {message}");
    }
    if !bad.is_empty() {
        anyhow::bail!("{} of {total} images {failed} (named above)", bad.len());
    }
    Ok(())
}

/// One image's answer: its top classes, or why it could not be read.
type Outcome<'a> = std::result::Result<&'a [Prediction], String>;

/// Decodes every file; returns the good images and, per file, the index of its image among
/// them or the error naming the file.
pub(super) fn decode_all(
    paths: &[PathBuf],
) -> (Vec<RgbImage>, Vec<std::result::Result<usize, String>>) {
    let mut images = Vec::new();
    let decoded = paths
        .iter()
        .map(|p| {
            let image = cv_data::folder::decode_image(p).map_err(|e| e.to_string())?;
            images.push(image);
            Ok(images.len() - 1)
        })
        .collect();
    (images, decoded)
}

fn to_json(path: &Path, outcome: &Outcome) -> serde_json::Value {
    let image = path.display().to_string();
    match outcome {
        Ok(top) => serde_json::json!({
            "image": image,
            "predictions": top.iter().map(|(i, c, p)| serde_json::json!({"index": i, "class": c, "probability": p})).collect::<Vec<_>>(),
        }),
        Err(message) => serde_json::json!({"image": image, "error": message}),
    }
}

/// The good images' top classes on stdout (the bad ones go to stderr).
fn print_table(outcomes: &[(&Path, Outcome)]) {
    for (path, outcome) in outcomes {
        if let Ok(top) = outcome {
            println!("{}", path.display());
            for (i, c, p) in top.iter() {
                println!("  {:>6.2}%  {c} ({i})", p * 100.0);
            }
        }
    }
}
