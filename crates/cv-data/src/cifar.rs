//! The CIFAR-10 binary format: each record is one label byte followed by 3,072 bytes, the
//! 32x32 red plane, then green, then blue (row-major). The number of records comes from the
//! file size (never assumed to be 10,000), and class names from `batches.meta.txt`.
//!
//! A CIFAR-format folder holds one or more training batches `data_batch_<N>.bin` (the official
//! archive has five; subsets and other datasets converted to this layout often have fewer or
//! more) and one `test_batch.bin`.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;

use crate::error::{io_err, DataError, Result};
use crate::{DataFormat, Dataset, Splits};

/// Name of the folder the official archive extracts to.
pub const DIR_NAME: &str = "cifar-10-batches-bin";
/// Side of a CIFAR-10 image.
pub const SIDE: usize = 32;
/// Bytes of pixel data in one record (3 planes of 32x32).
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// Bytes in one record: a label byte then the pixels.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// The five training batches of the official archive, in order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch.
pub const TEST_FILE: &str = "test_batch.bin";
/// One class name per line.
pub const META_FILE: &str = "batches.meta.txt";

/// Every batch file of the official archive, training first.
pub fn batch_files() -> impl Iterator<Item = &'static str> {
    TRAIN_FILES
        .iter()
        .copied()
        .chain(std::iter::once(TEST_FILE))
}

/// The batch files of a CIFAR-format folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batches {
    /// The training batches, in numeric order (`data_batch_2.bin` before `data_batch_10.bin`).
    pub train: Vec<PathBuf>,
    /// The test batch.
    pub test: PathBuf,
}

/// Find the batches in `dir`: at least one `data_batch_<N>.bin` and the `test_batch.bin`, or
/// an error naming what is missing.
pub fn batches(dir: &Path) -> Result<Batches> {
    let train = train_files(dir)?;
    if train.is_empty() {
        return Err(DataError::Missing {
            path: dir.join("data_batch_*.bin"),
            what: "CIFAR-10 training batches: at least one data_batch_<N>.bin".into(),
        });
    }
    let test = dir.join(TEST_FILE);
    if !test.is_file() {
        return Err(DataError::Missing {
            path: test,
            what: "CIFAR-10 test batch".into(),
        });
    }
    Ok(Batches { train, test })
}

/// The `data_batch_<N>.bin` files in `dir`, sorted by N (empty when there is none).
pub fn train_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let number = entry.file_name().to_str().and_then(train_batch_number);
        let path = entry.path();
        if let Some(n) = number.filter(|_| path.is_file()) {
            found.push((n, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// N for a file named `data_batch_<N>.bin` (N decimal digits), else `None`.
fn train_batch_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("data_batch_")?.strip_suffix(".bin")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Read class names from `batches.meta.txt` (one per line; blank lines ignored).
pub fn read_classes(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join(META_FILE);
    if !path.is_file() {
        return Err(DataError::Missing {
            path,
            what: "CIFAR-10 class names file".into(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let classes: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if classes.is_empty() {
        return Err(DataError::Format {
            path,
            message: "no class names".into(),
        });
    }
    if classes.len() > 256 {
        return Err(DataError::Format {
            path,
            message: format!(
                "{} class names, but a label byte can address at most 256",
                classes.len()
            ),
        });
    }
    Ok(classes)
}

/// Number of records in a batch of `size` bytes, or the error naming the truncated record.
pub fn record_count(path: &Path, size: u64) -> Result<usize> {
    let rec = RECORD_BYTES as u64;
    if !size.is_multiple_of(rec) {
        return Err(DataError::BadSize {
            path: path.to_path_buf(),
            size,
            record: size / rec,
        });
    }
    if size == 0 {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            message: "empty batch file (0 records)".into(),
        });
    }
    Ok((size / rec) as usize)
}

fn check_label(path: &Path, record: usize, label: u8, num_classes: usize) -> Result<u32> {
    if (label as usize) < num_classes {
        Ok(label as u32)
    } else {
        Err(DataError::BadLabel {
            path: path.to_path_buf(),
            record: record as u64,
            label: label as u32,
            num_classes,
        })
    }
}

/// Decode the bytes of one batch file (`path` only names it in errors).
pub fn decode_batch(
    bytes: &[u8],
    path: &Path,
    num_classes: usize,
) -> Result<(Vec<RgbImage>, Vec<u32>)> {
    let n = record_count(path, bytes.len() as u64)?;
    let labels = bytes
        .chunks_exact(RECORD_BYTES)
        .enumerate()
        .map(|(i, rec)| check_label(path, i, rec[0], num_classes))
        .collect::<Result<Vec<u32>>>()?;
    let images: Vec<RgbImage> = bytes
        .par_chunks_exact(RECORD_BYTES)
        .map(|rec| planar_to_image(&rec[1..]))
        .collect();
    debug_assert_eq!(images.len(), n);
    Ok((images, labels))
}

/// Interleave the three 32x32 planes into an HWC RGB image.
fn planar_to_image(planes: &[u8]) -> RgbImage {
    let plane = SIDE * SIDE;
    let (r, rest) = planes.split_at(plane);
    let (g, b) = rest.split_at(plane);
    let mut buf = Vec::with_capacity(IMAGE_BYTES);
    for i in 0..plane {
        buf.extend_from_slice(&[r[i], g[i], b[i]]);
    }
    // The buffer has exactly 32*32*3 bytes, so from_raw cannot fail.
    RgbImage::from_raw(SIDE as u32, SIDE as u32, buf).expect("buffer sized for 32x32 RGB")
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    if !path.is_file() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            what: what.into(),
        });
    }
    std::fs::read(path).map_err(io_err(path))
}

/// Read and decode one batch file.
pub fn read_batch(path: &Path, num_classes: usize) -> Result<(Vec<RgbImage>, Vec<u32>)> {
    let bytes = read_file(path, "CIFAR-10 batch")?;
    decode_batch(&bytes, path, num_classes)
}

/// Read only the labels of a batch file, validating its size and every label.
pub fn read_labels(path: &Path, num_classes: usize) -> Result<Vec<u32>> {
    let bytes = read_file(path, "CIFAR-10 batch")?;
    record_count(path, bytes.len() as u64)?;
    bytes
        .chunks_exact(RECORD_BYTES)
        .enumerate()
        .map(|(i, rec)| check_label(path, i, rec[0], num_classes))
        .collect()
}

/// Load the training batches (see [`batches`]) and the test batch from a CIFAR-format folder.
pub fn load(dir: &Path) -> Result<Splits> {
    let classes = read_classes(dir)?;
    let files = batches(dir)?;
    let mut train = Dataset {
        classes: classes.clone(),
        ..Dataset::default()
    };
    for path in &files.train {
        let (images, labels) = read_batch(path, classes.len())?;
        train.images.extend(images);
        train.labels.extend(labels);
    }
    let (images, labels) = read_batch(&files.test, classes.len())?;
    let test = Dataset {
        images,
        labels,
        classes: classes.clone(),
    };
    Ok(Splits {
        format: DataFormat::Cifar10,
        classes,
        train,
        test,
        skipped: Vec::new(),
    })
}

/// Encode images and labels as a CIFAR-10 batch (the inverse of [`decode_batch`]); images must
/// be 32x32. Used to write subsets and by tests.
pub fn encode_batch(images: &[RgbImage], labels: &[u32]) -> Result<Vec<u8>> {
    if images.len() != labels.len() {
        return Err(DataError::Batch {
            message: format!("{} images but {} labels", images.len(), labels.len()),
        });
    }
    let mut out = Vec::with_capacity(images.len() * RECORD_BYTES);
    for (i, (img, &label)) in images.iter().zip(labels).enumerate() {
        if img.width() as usize != SIDE || img.height() as usize != SIDE || label > 255 {
            return Err(DataError::Batch {
                message: format!(
                    "record {i}: CIFAR-10 needs a 32x32 image and a label below 256, got {}x{} and {label}",
                    img.width(),
                    img.height()
                ),
            });
        }
        out.push(label as u8);
        for c in 0..3 {
            out.extend(img.as_raw().chunks_exact(3).map(|p| p[c]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, seed: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend((0..IMAGE_BYTES).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
        r
    }

    #[test]
    fn planes_become_interleaved_pixels() {
        let rec = record(3, 1);
        let (imgs, labels) = decode_batch(&rec, Path::new("x.bin"), 10).unwrap();
        assert_eq!(labels, vec![3]);
        let img = &imgs[0];
        // pixel (x=5, y=2): index 2*32+5 in each plane
        let i = 2 * 32 + 5;
        assert_eq!(
            img.get_pixel(5, 2).0,
            [rec[1 + i], rec[1 + 1024 + i], rec[1 + 2048 + i]]
        );
        let back = encode_batch(&imgs, &labels).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn bad_size_names_file_and_record() {
        let mut bytes = record(0, 0);
        bytes.extend(record(1, 0));
        bytes.truncate(RECORD_BYTES * 2 - 5);
        let err = decode_batch(&bytes, Path::new("data_batch_9.bin"), 10).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::BadSize { record: 1, .. }), "{msg}");
        assert!(
            msg.contains("data_batch_9.bin") && msg.contains("record 1"),
            "{msg}"
        );
    }

    #[test]
    fn bad_label_names_file_and_record() {
        let mut bytes = record(0, 0);
        bytes.extend(record(10, 0));
        let err = decode_batch(&bytes, Path::new("b.bin"), 10).unwrap_err();
        assert!(matches!(
            err,
            DataError::BadLabel {
                record: 1,
                label: 10,
                ..
            }
        ));
        assert!(
            err.to_string().contains("b.bin: record 1: label 10"),
            "{err}"
        );
    }

    #[test]
    fn only_data_batch_names_with_a_number_are_training_batches() {
        assert_eq!(train_batch_number("data_batch_1.bin"), Some(1));
        assert_eq!(train_batch_number("data_batch_10.bin"), Some(10));
        for name in [
            "data_batch_.bin",
            "data_batch_x.bin",
            "data_batch_+1.bin",
            "data_batch_1.bin.part",
            "test_batch.bin",
        ] {
            assert_eq!(train_batch_number(name), None, "{name}");
        }
    }

    #[test]
    fn empty_batch_is_an_error() {
        let err = decode_batch(&[], Path::new("e.bin"), 10).unwrap_err();
        assert!(err.to_string().contains("e.bin"));
    }
}
