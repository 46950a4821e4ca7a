//! CIFAR-10 and image-folder datasets, safe archive download and extraction, augmentation and
//! seeded batching.
//!
//! The flow is `archive` (fetch + verify + extract) -> [`open`] (decode into u8 RGB images) ->
//! [`transforms::Pipeline`] (per-sample, seeded augmentation straight into f32 NCHW) ->
//! [`loader::Loader`] (shuffled, prefetched candle batches).

pub mod archive;
mod buffer;
pub mod cifar;
pub mod download;
pub mod error;
pub mod folder;
pub mod inspect;
pub mod loader;
pub mod seed;
mod source;
pub mod subset;
pub mod transforms;

use std::path::{Path, PathBuf};

pub use buffer::keep_freed_memory;
pub use error::{DataError, Result};
pub use image::RgbImage;
pub use loader::{Batch, Loader, LoaderConfig};
pub use source::DataSource;
pub use transforms::{Pipeline, Transform};

/// A set of labelled images held in memory as u8 RGB (HWC), the input of every pipeline.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// The images, decoded to RGB.
    pub images: Vec<RgbImage>,
    /// One label per image, an index into `classes`.
    pub labels: Vec<u32>,
    /// Class names; label `i` is `classes[i]`.
    pub classes: Vec<String>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when the dataset holds no sample.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Number of samples of each class, in class order.
    pub fn per_class(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.classes.len()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// Which on-disk layout a dataset came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DataFormat {
    /// The CIFAR-10 binary batches (`cifar-10-batches-bin`).
    #[serde(rename = "cifar10")]
    Cifar10,
    /// `ROOT/{train,test|val}/<class>/*` image folders.
    #[serde(rename = "folder")]
    Folder,
    /// `ROOT/<class>/*`: one folder per class and no split; [`DataSource::test_split`]
    /// carves the test split out of it.
    #[serde(rename = "class_folders")]
    ClassFolders,
}

/// An image that was skipped because it could not be decoded (only with `skip_bad`).
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it could not be read.
    pub reason: String,
}

impl DataFormat {
    /// The layout in words, for `cv data inspect` and error messages.
    pub fn layout(self) -> &'static str {
        match self {
            DataFormat::Cifar10 => "CIFAR-10 binary batches (data_batch_*.bin, test_batch.bin)",
            DataFormat::Folder => "ROOT/{train,test|val}/<class>/* image folders",
            DataFormat::ClassFolders => {
                "ROOT/<class>/* image folders without a split (--test-split F carves one)"
            }
        }
    }
}

/// A train and a test split sharing one class list.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Where the data came from.
    pub format: DataFormat,
    /// Class names shared by both splits.
    pub classes: Vec<String>,
    /// Training split.
    pub train: Dataset,
    /// Test (or validation) split.
    pub test: Dataset,
    /// Images left out because they could not be decoded (empty unless `skip_bad`).
    pub skipped: Vec<Skipped>,
}

impl Splits {
    /// The images to evaluate a model on: the test split, or every image of class folders
    /// that have no test split (nothing was held out, so nothing was trained on here).
    pub fn evaluation_set(self) -> Dataset {
        if self.format == DataFormat::ClassFolders && self.test.is_empty() {
            self.train
        } else {
            self.test
        }
    }
}

/// How [`open`] treats problems in the data.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct OpenOptions {
    /// Skip (and report in [`Splits::skipped`]) image files that cannot be decoded instead of
    /// failing. CIFAR-10 batches are never skipped: a bad batch is always an error.
    pub skip_bad: bool,
}

/// What [`detect`] found at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// A `cifar-10-batches-bin` folder (the path given or its child).
    Cifar10(PathBuf),
    /// An image-folder root holding `train/` and `test/` or `val/`.
    Folder(PathBuf),
    /// A root whose sub-folders are the classes, with no split folders.
    ClassFolders(PathBuf),
}

/// Decide which format lives at `path`: a CIFAR-10 batch folder (recognised by
/// `batches.meta.txt` or any `data_batch_<N>.bin`), its parent, an image-folder root with
/// `train/`, or a root whose sub-folders hold images (one folder per class).
pub fn detect(path: &Path) -> Result<Located> {
    if !path.is_dir() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            what: "a dataset folder".into(),
        });
    }
    let is_cifar = |p: &Path| {
        p.join(cifar::META_FILE).is_file()
            || cifar::train_files(p).is_ok_and(|files| !files.is_empty())
    };
    if is_cifar(path) {
        return Ok(Located::Cifar10(path.to_path_buf()));
    }
    let child = path.join(cifar::DIR_NAME);
    if child.is_dir() {
        return Ok(Located::Cifar10(child));
    }
    if path.join("train").is_dir() {
        return Ok(Located::Folder(path.to_path_buf()));
    }
    if folder::has_class_folders(path)? {
        return Ok(Located::ClassFolders(path.to_path_buf()));
    }
    Err(DataError::Format {
        path: path.to_path_buf(),
        message: format!(
            "not a dataset: expected CIFAR-10 batches (batches.meta.txt, data_batch_*.bin), a `{}` folder, an image folder with train/ and test/ (or val/), or one sub-folder of images per class",
            cifar::DIR_NAME
        ),
    })
}

/// Open a dataset of either format, detecting which one `path` holds (see [`detect`]).
pub fn open(path: &Path, options: &OpenOptions) -> Result<Splits> {
    match detect(path)? {
        Located::Cifar10(dir) => cifar::load(&dir),
        Located::Folder(root) => folder::load(&root, options.skip_bad),
        Located::ClassFolders(root) => folder::load_class_folders(&root, options.skip_bad),
    }
}
