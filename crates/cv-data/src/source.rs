//! Where a run's data comes from, as a record a run can be replayed from: the path, how bad
//! images are treated, the test split carved out of class folders without one, and the
//! class-balanced limits of quick experiments.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{open, seed, DataError, DataFormat, OpenOptions, Result, Splits};

/// Domain tag of the test split's draw, apart from the validation split's.
const TEST_SPLIT: u64 = 0x5445_5354;

/// A dataset on disk and the selection a run trains on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// A CIFAR-10 batch folder or an image-folder root, as [`open`] takes it.
    pub path: PathBuf,
    /// Skip undecodable images instead of failing ([`OpenOptions::skip_bad`]).
    #[serde(default)]
    pub skip_bad: bool,
    /// Keep at most this many training images ([`crate::Dataset::subset`]).
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// Keep at most this many test images.
    #[serde(default)]
    pub limit_test: Option<usize>,
    /// Seed of the subsets' draws.
    #[serde(default)]
    pub subset_seed: u64,
    /// For `ROOT/<class>/*` folders: hold out this stratified fraction of every class as
    /// the test split, drawn from `split_seed` (so the run's seed never moves the test set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_split: Option<f64>,
    /// Seed of the test split's draw.
    #[serde(default)]
    pub split_seed: u64,
}

impl DataSource {
    /// Everything at `path`, nothing skipped.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DataSource {
            path: path.into(),
            skip_bad: false,
            limit_train: None,
            limit_test: None,
            subset_seed: 0,
            test_split: None,
            split_seed: 0,
        }
    }

    /// Opens the data, carves the test split out of class folders, and applies the limits.
    pub fn open(&self) -> Result<Splits> {
        let mut splits = open(
            &self.path,
            &OpenOptions {
                skip_bad: self.skip_bad,
            },
        )?;
        if let Some(fraction) = self.test_split {
            self.carve_test(&mut splits, fraction)?;
        }
        if let Some(n) = self.limit_train {
            splits.train = splits.train.subset(n, self.subset_seed);
        }
        if let Some(n) = self.limit_test {
            splits.test = splits.test.subset(n, self.subset_seed);
        }
        Ok(splits)
    }

    fn carve_test(&self, splits: &mut Splits, fraction: f64) -> Result<()> {
        let refuse = |message: String| DataError::Format {
            path: self.path.clone(),
            message,
        };
        if splits.format != DataFormat::ClassFolders {
            return Err(refuse(format!(
                "--test-split is for ROOT/<class>/* folders; this is {}, which has its own test split",
                splits.format.layout()
            )));
        }
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(refuse(format!(
                "test split must be a fraction in (0, 1), got {fraction}"
            )));
        }
        let draw = seed::mix(&[TEST_SPLIT, self.split_seed]);
        let (train, test) = splits.train.split_stratified(fraction, draw);
        log::info!(
            "test split: {} of the {} images held out (stratified, split seed {})",
            test.len(),
            splits.train.len(),
            self.split_seed
        );
        splits.train = train;
        splits.test = test;
        Ok(())
    }
}
