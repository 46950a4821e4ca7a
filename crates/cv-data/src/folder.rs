//! Image folders, the way users bring their own small dataset:
//! `ROOT/{train,test|val}/<class>/*.{png,jpg,jpeg,bmp,webp}` (any case), or `ROOT/<class>/*`
//! with no split at all; any size and colour mode, converted to RGB. Classes are the sorted
//! sub-folder names of `train` (of `ROOT` without a split).

use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;

use crate::error::{io_err, DataError, Result};
use crate::{DataFormat, Dataset, Skipped, Splits};

/// File extensions (compared case-insensitively) treated as images.
pub const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "webp"];

/// True when `path` has one of [`EXTENSIONS`], in any case.
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        // Hidden files (.DS_Store, ._foo.png from macOS archives) are never data.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

/// Sorted class sub-folder names of a split folder.
pub fn class_names(split_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for p in sorted_entries(split_dir)? {
        if p.is_dir() {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            names.push(name);
        }
    }
    Ok(names)
}

/// The test split folder: `test`, else `val`.
pub fn test_dir(root: &Path) -> Result<PathBuf> {
    for name in ["test", "val"] {
        let p = root.join(name);
        if p.is_dir() {
            return Ok(p);
        }
    }
    Err(DataError::Missing {
        path: root.join("test"),
        what: "test split folder (test/ or val/)".into(),
    })
}

/// Image files of one split, with their labels, in a deterministic order (class, then name).
/// Sub-folders not in `classes` are an error naming the folder.
pub fn list_split(split_dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, u32)>> {
    if !split_dir.is_dir() {
        return Err(DataError::Missing {
            path: split_dir.to_path_buf(),
            what: "split folder".into(),
        });
    }
    for name in class_names(split_dir)? {
        if !classes.contains(&name) {
            return Err(DataError::Format {
                path: split_dir.join(&name),
                message: format!(
                    "class folder `{name}` is not among the training classes {classes:?}"
                ),
            });
        }
    }
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = split_dir.join(class);
        if !dir.is_dir() {
            continue;
        }
        for p in sorted_entries(&dir)? {
            if p.is_file() && is_image_file(&p) {
                files.push((p, label as u32));
            }
        }
    }
    Ok(files)
}

/// Decode any supported image file to 8-bit RGB (gray is replicated, alpha dropped, palettes
/// expanded, 16-bit scaled).
pub fn decode_image(path: &Path) -> Result<RgbImage> {
    let fail = |message: String| DataError::Image {
        path: path.to_path_buf(),
        message,
    };
    let reader = image::ImageReader::open(path)
        .map_err(io_err(path))?
        .with_guessed_format()
        .map_err(io_err(path))?;
    let img = reader.decode().map_err(|e| fail(e.to_string()))?;
    Ok(img.to_rgb8())
}

fn load_split(
    files: Vec<(PathBuf, u32)>,
    classes: &[String],
    skip_bad: bool,
    skipped: &mut Vec<Skipped>,
) -> Result<Dataset> {
    let decoded: Vec<(PathBuf, u32, Result<RgbImage>)> = files
        .into_par_iter()
        .map(|(p, l)| {
            let r = decode_image(&p);
            (p, l, r)
        })
        .collect();
    let mut ds = Dataset {
        classes: classes.to_vec(),
        ..Dataset::default()
    };
    for (path, label, r) in decoded {
        match r {
            Ok(img) => {
                ds.images.push(img);
                ds.labels.push(label);
            }
            Err(e) if skip_bad => {
                skipped.push(Skipped {
                    path,
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ds)
}

/// True when some sub-folder of `root` holds an image file: `ROOT/<class>/*`.
pub fn has_class_folders(root: &Path) -> Result<bool> {
    for class in class_names(root)? {
        if sorted_entries(&root.join(class))?
            .iter()
            .any(|p| p.is_file() && is_image_file(p))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Load `ROOT/<class>/*`: every image goes to [`Splits::train`] and the test split is empty
/// until [`crate::DataSource::test_split`] carves one out.
pub fn load_class_folders(root: &Path, skip_bad: bool) -> Result<Splits> {
    let classes = class_names(root)?;
    let files = list_split(root, &classes)?;
    let mut skipped = Vec::new();
    let all = load_split(files, &classes, skip_bad, &mut skipped)?;
    if all.is_empty() {
        return Err(DataError::Format {
            path: root.to_path_buf(),
            message: "no readable images (png, jpg, jpeg, bmp, webp) in the class folders".into(),
        });
    }
    Ok(Splits {
        format: DataFormat::ClassFolders,
        test: Dataset {
            classes: classes.clone(),
            ..Dataset::default()
        },
        classes,
        train: all,
        skipped,
    })
}

/// Load `ROOT/train` and `ROOT/test` (or `ROOT/val`). With `skip_bad`, undecodable images are
/// left out and listed in [`Splits::skipped`]; otherwise the first one is an error naming it.
pub fn load(root: &Path, skip_bad: bool) -> Result<Splits> {
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(DataError::Missing {
            path: train_dir,
            what: "training split folder".into(),
        });
    }
    let classes = class_names(&train_dir)?;
    if classes.is_empty() {
        return Err(DataError::Format {
            path: train_dir,
            message: "no class sub-folders".into(),
        });
    }
    let test_dir = test_dir(root)?;
    let train_files = list_split(&train_dir, &classes)?;
    let test_files = list_split(&test_dir, &classes)?;
    let mut skipped = Vec::new();
    let train = load_split(train_files, &classes, skip_bad, &mut skipped)?;
    let test = load_split(test_files, &classes, skip_bad, &mut skipped)?;
    if train.is_empty() {
        return Err(DataError::Format {
            path: train_dir,
            message: "no readable images (png, jpg, jpeg, bmp, webp)".into(),
        });
    }
    if !skipped.is_empty() {
        log::warn!("skipped {} unreadable image(s)", skipped.len());
    }
    Ok(Splits {
        format: DataFormat::Folder,
        classes,
        train,
        test,
        skipped,
    })
}
