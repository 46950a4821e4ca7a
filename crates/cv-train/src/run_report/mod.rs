//! `report.html`: one self-contained page (inline SVG and PNG, no script, nothing fetched)
//! that says how a run went and what its model gets wrong. Sections, in order, each a
//! `<section id=...>`: `curves` (loss and accuracy per epoch), `confusion` (the matrix as a
//! heatmap with class names), `per-class` (accuracy per class), `most-confused` (the largest
//! off-diagonal cells), `top-losses` (the test images with the highest loss, each with its
//! Grad-CAM overlay for the predicted class) and `recipe` (from `config.json`).
//!
//! The training loop writes one at the end of every run; `cv report` and `cv eval --report`
//! write one for any checkpoint and data set. Everything comes from an [`Evaluation`] of the
//! test split, so the page and `cv eval --json` agree.

mod confusion;
mod gallery;
mod page;

use std::path::Path;

use cv_data::Loader;
use cv_models::Model;

use crate::atomic;
use crate::checkpoint::CheckpointConfig;
use crate::error::{Result, TrainError};
use crate::metrics::Evaluation;
use crate::report::EpochRecord;

/// The `id`s of the page's sections, in order (what a check of the page looks for).
pub const SECTIONS: [&str; 7] = [
    "summary",
    "curves",
    "confusion",
    "per-class",
    "most-confused",
    "top-losses",
    "recipe",
];

/// How many of the highest-loss test images the report shows by default.
pub const DEFAULT_TOP_LOSSES: usize = 12;

/// How many confused pairs of classes the report lists.
const MOST_CONFUSED: usize = 15;

/// What a report is made of.
#[derive(Clone, Copy)]
pub struct ReportInput<'a> {
    /// The page's heading (the run folder, say).
    pub title: &'a str,
    /// The evaluated model; its Grad-CAM explains the top losses.
    pub model: &'a Model,
    /// The evaluated split, as loaded for evaluation (its dataset, eval transforms, device).
    pub test: &'a Loader,
    /// The model's evaluation of `test` ([`crate::metrics::evaluate_samples`]).
    pub evaluation: &'a Evaluation,
    /// The run's epochs (`metrics.jsonl`; empty: the curves section says there are none).
    pub records: &'a [EpochRecord],
    /// The run's `config.json`, when there is one.
    pub config: Option<&'a CheckpointConfig>,
    /// How many highest-loss images to show.
    pub top_losses: usize,
}

/// The page as HTML text.
pub fn render_report(input: &ReportInput) -> std::result::Result<String, String> {
    let classes = &input.test.dataset().classes;
    let report = &input.evaluation.report;
    let tiles = gallery::tiles(input)?;
    Ok(page::Page {
        title: input.title,
        report,
        classes,
        curves: page::curves(input.records)?,
        confusion: confusion::heatmap_svg(&report.confusion, classes),
        confused: report.most_confused(MOST_CONFUSED),
        tiles,
        config: input.config,
    }
    .html())
}

/// Writes the page to `path` atomically.
pub fn write_report(path: &Path, input: &ReportInput) -> Result<()> {
    let html = render_report(input).map_err(|message| TrainError::Report {
        path: path.to_path_buf(),
        message,
    })?;
    atomic::write_bytes(path, html.as_bytes())
}
