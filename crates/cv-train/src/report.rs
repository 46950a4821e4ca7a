//! What a run reports: `metrics.jsonl` (one object per epoch), `curves.png` (loss and
//! accuracy per epoch) and a progress bar per epoch.
//!
//! The PNG has no text: plotters needs a font backend to draw text, and the workspace builds
//! it without one (no system fonts, no bundled font crate). The colours are therefore
//! described in [`CURVES_LEGEND`], written beside the plot as `curves.txt`.

use std::io::{BufRead, BufReader};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::error::{Result, TrainError};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Base learning rate at the last step of the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch (with label smoothing, as optimised).
    pub train_loss: f64,
    /// Training top-1 accuracy over the epoch (augmented images, train-mode BatchNorm).
    pub train_acc: f64,
    /// Test loss (`null` when the test split was not evaluated this epoch).
    pub test_loss: Option<f64>,
    /// Test top-1 accuracy.
    pub test_acc: Option<f64>,
    /// Test top-5 accuracy.
    pub test_top5: Option<f64>,
    /// Wall-clock seconds of the epoch (training and evaluation).
    pub seconds: f64,
    /// Training throughput, images per second.
    pub images_per_s: f64,
}

/// Rewrites `metrics.jsonl` with every record (atomically, so a crash keeps the old file).
pub fn write_metrics(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        let line = serde_json::to_string(r).map_err(|source| TrainError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    atomic::write_bytes(path, text.as_bytes())
}

/// Reads `metrics.jsonl` (missing file: no records).
pub fn read_metrics(path: &Path) -> Result<Vec<EpochRecord>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|source| TrainError::Json {
                path: path.to_path_buf(),
                source,
            })?,
        );
    }
    Ok(out)
}

/// How to read `curves.png`, written beside it as `curves.txt`.
pub const CURVES_LEGEND: &str = "\
curves.png: left panel = loss per epoch, right panel = accuracy per epoch (0..1).
x axis: epoch (first epoch at the left edge, last at the right); grid lines are light grey.
red    = training split (loss / top-1 accuracy)
blue   = test split (loss / top-1 accuracy)
green  = test top-5 accuracy (right panel only)
Dots mark the epochs where a value was measured.
";

const TRAIN: RGBColor = RGBColor(220, 40, 40);
const TEST: RGBColor = RGBColor(30, 90, 220);
const TOP5: RGBColor = RGBColor(30, 160, 60);

type Series = Vec<(f64, f64)>;

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x_max: f64,
    y_range: (f64, f64),
    lines: &[(&Series, RGBColor)],
) -> std::result::Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .build_cartesian_2d(1.0..x_max, y_range.0..y_range.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_labels(0)
        .y_labels(0)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(|e| e.to_string())?;
    // The frame stands in for axes (axes live in label areas, which need text).
    chart
        .plotting_area()
        .draw(&Rectangle::new(
            [(1.0, y_range.0), (x_max, y_range.1)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| e.to_string())?;
    for (points, color) in lines {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Draws `curves.png` (800x400, no text; see [`CURVES_LEGEND`]) atomically.
pub fn plot_curves(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let series = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Series {
        records
            .iter()
            .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.epoch as f64, v)))
            .collect()
    };
    let train_loss = series(&|r| Some(r.train_loss));
    let test_loss = series(&|r| r.test_loss);
    let train_acc = series(&|r| Some(r.train_acc));
    let test_acc = series(&|r| r.test_acc);
    let test_top5 = series(&|r| r.test_top5);
    let x_max = records.iter().map(|r| r.epoch).max().unwrap_or(1).max(2) as f64;
    let loss_max = train_loss
        .iter()
        .chain(&test_loss)
        .map(|p| p.1)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.05;
    atomic::write_with(path, |tmp| {
        let plot_err = |message: String| TrainError::Plot {
            path: path.to_path_buf(),
            message,
        };
        {
            let root = BitMapBackend::new(tmp, (800, 400)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
            let (left, right) = root.split_horizontally(400);
            draw_panel(
                &left,
                x_max,
                (0.0, loss_max),
                &[(&train_loss, TRAIN), (&test_loss, TEST)],
            )
            .map_err(plot_err)?;
            draw_panel(
                &right,
                x_max,
                (0.0, 1.0),
                &[(&train_acc, TRAIN), (&test_acc, TEST), (&test_top5, TOP5)],
            )
            .map_err(plot_err)?;
            root.present().map_err(|e| plot_err(e.to_string()))?;
        }
        Ok(())
    })?;
    let legend = path.with_extension("txt");
    atomic::write_bytes(&legend, CURVES_LEGEND.as_bytes())
}

/// A progress bar for one epoch (hidden when `quiet`).
#[derive(Debug)]
pub struct EpochProgress {
    bar: ProgressBar,
}

impl EpochProgress {
    /// Starts a bar of `batches` steps labelled with the epoch.
    pub fn new(epoch: usize, epochs: usize, batches: usize, quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(batches as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        };
        bar.set_prefix(format!("epoch {epoch}/{epochs}"));
        EpochProgress { bar }
    }

    /// Advances one batch and shows the running loss, accuracy and throughput.
    pub fn update(&self, loss: f64, accuracy: f64, images_per_s: f64) {
        self.bar.set_message(format!(
            "loss {loss:.4} acc {:.1}% {images_per_s:.0} img/s",
            100.0 * accuracy
        ));
        self.bar.inc(1);
    }

    /// Leaves the bar with the epoch's summary.
    pub fn finish(&self, summary: String) {
        self.bar.finish_with_message(summary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, loss: f64, acc: f64, eval: bool) -> EpochRecord {
        EpochRecord {
            epoch,
            lr: 0.1,
            train_loss: loss,
            train_acc: acc,
            test_loss: eval.then_some(loss * 1.1),
            test_acc: eval.then_some(acc * 0.9),
            test_top5: eval.then_some(1.0),
            seconds: 1.5,
            images_per_s: 100.0,
        }
    }

    #[test]
    fn metrics_round_trip_one_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        assert!(read_metrics(&p).unwrap().is_empty());
        let records = vec![rec(1, 2.0, 0.2, true), rec(2, 1.0, 0.6, false)];
        write_metrics(&p, &records).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        for key in [
            "epoch",
            "lr",
            "train_loss",
            "train_acc",
            "test_loss",
            "test_acc",
            "test_top5",
            "seconds",
            "images_per_s",
        ] {
            assert!(first.get(key).is_some(), "{key} missing");
        }
        assert_eq!(read_metrics(&p).unwrap(), records);
    }

    #[test]
    fn curves_png_has_the_colours_of_the_legend() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("curves.png");
        let records: Vec<_> = (1..=5)
            .map(|e| rec(e, 2.0 / e as f64, 0.15 * e as f64, true))
            .collect();
        plot_curves(&p, &records).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 400));
        let has = |c: RGBColor| img.pixels().any(|px| px.0 == [c.0, c.1, c.2]);
        assert!(has(TRAIN) && has(TEST) && has(TOP5));
        assert!(std::fs::read_to_string(dir.path().join("curves.txt"))
            .unwrap()
            .contains("red"));
        // Only the PNG and its legend: no temporary file left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_single_epoch_still_plots() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("curves.png");
        plot_curves(&p, &[rec(1, f64::NAN, 0.1, false)]).unwrap();
        assert!(p.exists());
    }
}
