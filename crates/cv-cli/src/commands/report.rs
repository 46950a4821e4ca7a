//! `cv report RUN` and the `--report DIR` of `cv eval`: a checkpoint evaluated on a test
//! split, then `cv_train::run_report` draws the page.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use cv_data::{DataSource, Loader};
use cv_train::checkpoint::{CheckpointConfig, METRICS_FILE, REPORT_FILE};
use cv_train::metrics::Evaluation;
use cv_train::run_report::{write_report, ReportInput};
use cv_weights::predict::Classifier;
use cv_weights::source::{resolve, ResolveOptions, WeightsSource};

use crate::args::{usage, ReportArgs};

/// A checkpoint folder loaded for evaluation, and the test split of a data set it fits.
pub(super) struct Evaluated {
    pub classifier: Classifier,
    pub loader: Loader,
}

/// Loads the checkpoint `dir` and a loader over `data`'s test split through its eval
/// transforms; the data's classes must be the checkpoint's.
pub(super) fn open(
    dir: &Path,
    data: &DataSource,
    batch_size: usize,
    device: &candle_core::Device,
) -> Result<Evaluated> {
    if !dir.is_dir() {
        anyhow::bail!("--checkpoint {}: no such folder", dir.display());
    }
    let weights = resolve(
        &WeightsSource::Folder(dir.to_path_buf()),
        &ResolveOptions::default(),
    )?;
    let classifier = Classifier::load(&weights, device)?;
    let splits = super::train::open_data(data)?;
    if splits.classes != weights.classes {
        anyhow::bail!(
            "{} has classes {:?} but the checkpoint {} was trained on {:?}",
            data.path.display(),
            splits.classes,
            dir.display(),
            weights.classes
        );
    }
    let loader = Loader::new(
        Arc::new(splits.evaluation_set()),
        classifier.transforms().clone(),
        cv_data::LoaderConfig {
            batch_size,
            shuffle: false,
            ..Default::default()
        },
        device.clone(),
    )?;
    Ok(Evaluated { classifier, loader })
}

/// Writes the report of checkpoint `dir` evaluated as `evaluation` to `path`, with the
/// run's curves and recipe when the folder has them.
pub(super) fn write(
    dir: &Path,
    e: &Evaluated,
    evaluation: &Evaluation,
    path: &Path,
    top_losses: usize,
) -> Result<()> {
    let config = CheckpointConfig::read(dir)
        .map_err(|err| log::warn!("the report has no recipe: {err}"))
        .ok();
    let records = cv_train::report::read_metrics(&dir.join(METRICS_FILE))?;
    let title = dir.display().to_string();
    write_report(
        path,
        &ReportInput {
            title: &title,
            model: e
                .classifier
                .float_model("a report (its pictures are class activation maps)")?,
            test: &e.loader,
            evaluation,
            records: &records,
            config: config.as_ref(),
            top_losses,
        },
    )?;
    Ok(())
}

/// `report.html` inside `dir` (created when missing).
pub(super) fn path_in(dir: &Path) -> Result<PathBuf> {
    if dir.is_file() {
        return Err(usage(format!(
            "--report {}: a file; give a folder to write {REPORT_FILE} into",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--report {}", dir.display()))?;
    Ok(dir.join(REPORT_FILE))
}

/// `cv report RUN`.
pub fn run(a: &ReportArgs) -> Result<()> {
    let config = CheckpointConfig::read(&a.run).with_context(|| {
        format!(
            "{}: not a run folder (train and finetune write config.json into their --out)",
            a.run.display()
        )
    })?;
    let data = match (&a.data, config.data) {
        (Some(path), _) => a.pass.split.apply(DataSource {
            skip_bad: a.pass.skip_bad,
            ..DataSource::new(path)
        }),
        (None, Some(recorded)) => a.pass.split.apply(DataSource {
            skip_bad: a.pass.skip_bad || recorded.skip_bad,
            ..recorded
        }),
        (None, None) => {
            return Err(usage(format!(
                "{} records no data folder (it trained on data built in memory): pass --data",
                a.run.display()
            )))
        }
    };
    let device = cv_models::device::select(&a.pass.device)?;
    let evaluated = open(&a.run, &data, a.pass.batch_size, &device)?;
    let model = evaluated
        .classifier
        .float_model("a report (its pictures are class activation maps)")?;
    let evaluation = cv_train::metrics::evaluate_samples(model, &evaluated.loader)?;
    let path = a.out.clone().unwrap_or_else(|| a.run.join(REPORT_FILE));
    write(&a.run, &evaluated, &evaluation, &path, a.top_losses)?;
    println!(
        "{} test images of {}: top-1 {:.2}%; wrote {}",
        evaluation.report.images,
        data.path.display(),
        100.0 * evaluation.report.accuracy,
        path.display()
    );
    Ok(())
}
