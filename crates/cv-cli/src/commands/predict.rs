//! `cv predict`.

use anyhow::{Context, Result};
use cv_weights::predict::Classifier;
use cv_weights::source::{resolve, ResolveOptions, WeightsSource};

use crate::args::{rgb, usage, PredictArgs};

/// Classifies each image with the checkpoint's (or registry entry's) eval transforms.
pub fn run(a: &PredictArgs) -> Result<()> {
    let source = match (&a.checkpoint, &a.weights) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                anyhow::bail!("--checkpoint {}: no such folder", dir.display());
            }
            WeightsSource::Folder(dir.clone())
        }
        (None, Some(w)) => super::parse_weights(w)?,
        (None, None) => return Err(usage("give --checkpoint DIR or --weights NAME|PATH")),
    };
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
    let classifier = Classifier::load(&weights, &device)?;
    let images = a
        .images
        .iter()
        .map(|p| cv_data::folder::decode_image(p).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    let answers = classifier
        .classify(&images, a.top_k)
        .with_context(|| format!("classifying with {}", weights.origin))?;
    if a.json {
        let out: Vec<serde_json::Value> = a
            .images
            .iter()
            .zip(&answers)
            .map(|(path, top)| {
                serde_json::json!({
                    "image": path.display().to_string(),
                    "predictions": top.iter().map(|(i, c, p)| serde_json::json!({"index": i, "class": c, "probability": p})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    for (path, top) in a.images.iter().zip(&answers) {
        println!("{}", path.display());
        for (i, c, p) in top {
            println!("  {:>6.2}%  {c} ({i})", p * 100.0);
        }
    }
    Ok(())
}
