//! Where a run's data comes from, as a record a run can be replayed from: the path, how bad
//! images are treated, and the class-balanced limits of quick experiments.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{open, OpenOptions, Result, Splits};

/// A dataset on disk and the selection a run trains on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        }
    }

    /// Opens the data and applies the limits.
    pub fn open(&self) -> Result<Splits> {
        let mut splits = open(
            &self.path,
            &OpenOptions {
                skip_bad: self.skip_bad,
            },
        )?;
        if let Some(n) = self.limit_train {
            splits.train = splits.train.subset(n, self.subset_seed);
        }
        if let Some(n) = self.limit_test {
            splits.test = splits.test.subset(n, self.subset_seed);
        }
        Ok(splits)
    }
}
