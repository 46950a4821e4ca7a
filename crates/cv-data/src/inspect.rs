//! A summary of a dataset on disk (format, classes, counts per split and class): the JSON of
//! `cv data inspect --json`. It validates CIFAR-10 batches (sizes and labels) but does not
//! decode images, so it is fast on large folders.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::{cifar, detect, folder, DataFormat, Located};

/// Counts of one split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// Number of samples.
    pub total: usize,
    /// Number of samples of each class, in class order.
    pub per_class: Vec<usize>,
}

/// Both splits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectSplits {
    /// The training split.
    pub train: SplitCounts,
    /// The test (or validation) split.
    pub test: SplitCounts,
}

/// What `inspect` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    /// `"cifar10"`, `"folder"` or `"class_folders"` (every image counted as train).
    pub format: DataFormat,
    /// Class names.
    pub classes: Vec<String>,
    /// Counts per split.
    pub splits: InspectSplits,
}

fn counts(labels: impl IntoIterator<Item = u32>, num_classes: usize) -> SplitCounts {
    let mut per_class = vec![0usize; num_classes];
    let mut total = 0;
    for l in labels {
        per_class[l as usize] += 1;
        total += 1;
    }
    SplitCounts { total, per_class }
}

/// Summarise the dataset at `path` (either format; see [`crate::detect`]).
pub fn inspect(path: &Path) -> Result<Inspection> {
    match detect(path)? {
        Located::Cifar10(dir) => {
            let classes = cifar::read_classes(&dir)?;
            let n = classes.len();
            let files = cifar::batches(&dir)?;
            let mut train = Vec::new();
            for path in &files.train {
                train.extend(cifar::read_labels(path, n)?);
            }
            let test = cifar::read_labels(&files.test, n)?;
            Ok(Inspection {
                format: DataFormat::Cifar10,
                splits: InspectSplits {
                    train: counts(train, n),
                    test: counts(test, n),
                },
                classes,
            })
        }
        Located::ClassFolders(root) => {
            let classes = folder::class_names(&root)?;
            let n = classes.len();
            let all = folder::list_split(&root, &classes)?;
            Ok(Inspection {
                format: DataFormat::ClassFolders,
                splits: InspectSplits {
                    train: counts(all.into_iter().map(|(_, l)| l), n),
                    test: counts([], n),
                },
                classes,
            })
        }
        Located::Folder(root) => {
            let train_dir = root.join("train");
            let classes = folder::class_names(&train_dir)?;
            let n = classes.len();
            let train = folder::list_split(&train_dir, &classes)?;
            let test = folder::list_split(&folder::test_dir(&root)?, &classes)?;
            Ok(Inspection {
                format: DataFormat::Folder,
                splits: InspectSplits {
                    train: counts(train.into_iter().map(|(_, l)| l), n),
                    test: counts(test.into_iter().map(|(_, l)| l), n),
                },
                classes,
            })
        }
    }
}
