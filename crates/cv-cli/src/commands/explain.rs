//! `cv explain`: class activation maps over image files. Each readable image gets its overlay
//! PNG and its two maps as `.npy`; each unreadable one is named on stderr (and in `--json`),
//! and the command then exits 1.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cv_models::{CamMethod, Heatmap};
use cv_weights::{Classifier, ExplainRequest, Explanation};
use image::RgbImage;

use super::predict::{decode_all, load, report_failures};
use crate::args::{usage, ExplainArgs};

/// Explains each image and writes its files into `--out`.
pub fn run(a: &ExplainArgs) -> Result<()> {
    let method: CamMethod = a
        .method
        .parse()
        .map_err(|e| usage(format!("--method: {e}")))?;
    let (classifier, origin, _cast) = load(&a.predict)?;
    let request = ExplainRequest {
        layer: a.layer.clone(),
        method,
        class: a
            .class
            .as_deref()
            .map(|c| class_index(&classifier, c))
            .transpose()?,
        top_k: a.predict.top_k,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let paths = &a.predict.images;
    let (images, decoded) = decode_all(paths);
    let explained = if images.is_empty() {
        Vec::new()
    } else {
        classifier
            .explain(&images, &request)
            .with_context(|| format!("explaining with {origin}"))?
    };
    let names = file_stems(paths);
    let mut results = Vec::with_capacity(paths.len());
    for ((path, d), name) in paths.iter().zip(&decoded).zip(&names) {
        let result = match d {
            Ok(i) => write_files(&a.out, name, &explained[*i])
                .map(|files| (&explained[*i], files))
                .map_err(|e| format!("{}: {e:#}", path.display())),
            Err(message) => Err(message.clone()),
        };
        results.push(result);
    }
    let layer = request
        .layer
        .as_deref()
        .unwrap_or(classifier.last_spatial_layer());
    if a.predict.json {
        let out: Vec<serde_json::Value> = paths
            .iter()
            .zip(&results)
            .map(|(p, r)| to_json(p, r, layer, method))
            .collect();
        println!("{}", serde_json::to_string(&out)?);
    } else {
        print_table(paths, &results, layer, method);
    }
    report_failures(
        results.iter().map(|r| r.as_ref().err()),
        paths.len(),
        "could not be read or their files written",
    )
}

/// `--class`: an index, or a class name of the model.
fn class_index(classifier: &Classifier, s: &str) -> Result<usize> {
    let classes = classifier.classes();
    if let Ok(i) = s.parse::<usize>() {
        if i < classes.len() {
            return Ok(i);
        }
        return Err(usage(format!(
            "--class {i}: the model has {} classes",
            classes.len()
        )));
    }
    classes.iter().position(|c| c == s).ok_or_else(|| {
        usage(format!(
            "--class {s:?}: not a class of the model (give an index or one of its {} names)",
            classes.len()
        ))
    })
}

/// One output name per image: its file stem, with `-2`, `-3`, ... where stems repeat.
fn file_stems(paths: &[PathBuf]) -> Vec<String> {
    let mut seen = HashSet::new();
    paths
        .iter()
        .map(|p| {
            let stem = p
                .file_stem()
                .map_or("image".into(), |s| s.to_string_lossy().into_owned());
            let mut name = stem.clone();
            let mut n = 1;
            while !seen.insert(name.clone()) {
                n += 1;
                name = format!("{stem}-{n}");
            }
            name
        })
        .collect()
}

/// The three files of one image.
struct Files {
    overlay: PathBuf,
    raw: PathBuf,
    upsampled: PathBuf,
}

/// Writes `NAME.cam.png`, `NAME.cam.npy` and `NAME.cam_upsampled.npy` (each through a
/// temporary file and a rename).
fn write_files(dir: &Path, name: &str, e: &Explanation) -> Result<Files> {
    let files = Files {
        overlay: dir.join(format!("{name}.cam.png")),
        raw: dir.join(format!("{name}.cam.npy")),
        upsampled: dir.join(format!("{name}.cam_upsampled.npy")),
    };
    let rgb = cv_models::overlay_rgb(e.seen.as_raw(), &e.map)?;
    let overlay = RgbImage::from_raw(e.seen.width(), e.seen.height(), rgb)
        .context("overlay size does not match the image")?;
    cv_train::atomic::write_with(&files.overlay, |tmp| {
        overlay
            .save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|err| cv_train::TrainError::io(tmp, std::io::Error::other(err)))
    })?;
    write_npy(&files.raw, &e.raw)?;
    write_npy(&files.upsampled, &e.map)?;
    Ok(files)
}

fn write_npy(path: &Path, map: &Heatmap) -> Result<()> {
    cv_train::atomic::write_bytes(path, &npy_bytes(map))?;
    Ok(())
}

/// A map as `.npy` (format 1.0, little-endian f32, C order), built in memory: candle's
/// `Tensor::write_npy` issues one unbuffered write per value.
fn npy_bytes(map: &Heatmap) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        map.height, map.width
    );
    // Magic (6) + version (2) + length (2) + header, padded to a multiple of 64, ending in \n.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + 4 * map.values.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &map.values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

type Outcome<'a> = std::result::Result<(&'a Explanation, Files), String>;

fn to_json(path: &Path, r: &Outcome, layer: &str, method: CamMethod) -> serde_json::Value {
    let image = path.display().to_string();
    match r {
        Ok((e, files)) => serde_json::json!({
            "image": image,
            "method": method.as_str(),
            "layer": layer,
            "explained": {"index": e.target.0, "class": e.target.1},
            "predictions": e.top.iter().map(|(i, c, p)| serde_json::json!({"index": i, "class": c, "probability": p})).collect::<Vec<_>>(),
            "overlay": files.overlay.display().to_string(),
            "map": files.raw.display().to_string(),
            "map_shape": [e.raw.height, e.raw.width],
            "upsampled": files.upsampled.display().to_string(),
            "upsampled_shape": [e.map.height, e.map.width],
        }),
        Err(message) => serde_json::json!({"image": image, "error": message}),
    }
}

fn print_table(paths: &[PathBuf], results: &[Outcome], layer: &str, method: CamMethod) {
    for (path, r) in paths.iter().zip(results) {
        if let Ok((e, files)) = r {
            println!(
                "{}: {method} at {layer} for {} ({}) -> {}",
                path.display(),
                e.target.1,
                e.target.0,
                files.overlay.display()
            );
            for (i, c, p) in &e.top {
                println!("  {:>6.2}%  {c} ({i})", p * 100.0);
            }
        }
    }
}
