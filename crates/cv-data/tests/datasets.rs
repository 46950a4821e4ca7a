//! Decoding CIFAR-10 batches and image folders from data the tests write themselves.

use std::path::Path;

use cv_data::{cifar, folder, inspect, open, DataError, DataFormat, OpenOptions};
use cv_testkit::cifar::{
    synthetic_records, write_batch, write_cifar_dir, write_cifar_dir_with, CLASSES, IMAGE_BYTES,
    RECORD_BYTES,
};
use cv_testkit::folder::make_image_folder;

#[test]
fn cifar_dir_round_trips_every_pixel_and_label() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar_dir(tmp.path(), 7, 5, 42).unwrap();
    // Opening the parent finds the batches folder.
    let splits = open(tmp.path(), &OpenOptions::default()).unwrap();
    assert_eq!(splits.format, DataFormat::Cifar10);
    assert_eq!(splits.classes, CLASSES);
    assert_eq!(splits.train.len(), 35);
    assert_eq!(splits.test.len(), 5);
    // Compare against the raw bytes of the first training batch.
    let raw = std::fs::read(dir.join("data_batch_1.bin")).unwrap();
    for (i, rec) in raw.chunks(RECORD_BYTES).enumerate() {
        assert_eq!(splits.train.labels[i], rec[0] as u32);
        let img = &splits.train.images[i];
        assert_eq!(img.dimensions(), (32, 32));
        for (p, px) in img.pixels().enumerate() {
            assert_eq!(
                px.0,
                [rec[1 + p], rec[1 + 1024 + p], rec[1 + 2048 + p]],
                "record {i} pixel {p}"
            );
        }
    }
    // Opening the batches folder itself works too, and encode inverts decode.
    let again = cifar::load(&dir).unwrap();
    let bytes = cifar::encode_batch(&again.test.images, &again.test.labels).unwrap();
    assert_eq!(bytes, std::fs::read(dir.join("test_batch.bin")).unwrap());
}

#[test]
fn record_count_comes_from_file_size() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big.bin");
    let recs = synthetic_records(12_000, 10, 3);
    write_batch(&path, &recs).unwrap();
    let (images, labels) = cifar::read_batch(&path, 10).unwrap();
    assert_eq!(images.len(), 12_000);
    assert_eq!(labels.len(), 12_000);
    for i in [0usize, 9_999, 10_000, 11_999] {
        assert_eq!(labels[i], recs[i].0 as u32);
        let img = &images[i];
        let planes = &recs[i].1;
        assert_eq!(
            img.get_pixel(31, 31).0,
            [planes[1023], planes[2047], planes[3071]]
        );
        assert_eq!(
            img.get_pixel(0, 0).0,
            [planes[0], planes[1024], planes[2048]]
        );
    }
}

fn expect_err(r: cv_data::Result<impl std::fmt::Debug>) -> DataError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

#[test]
fn truncated_batch_names_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar_dir(tmp.path(), 4, 4, 1).unwrap();
    let path = dir.join("data_batch_3.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = expect_err(open(&dir, &OpenOptions::default()).map(|s| s.train.len()));
    let msg = err.to_string();
    assert!(matches!(err, DataError::BadSize { record: 3, .. }), "{msg}");
    assert!(
        msg.contains("data_batch_3.bin") && msg.contains("record 3"),
        "{msg}"
    );
}

#[test]
fn label_outside_classes_names_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar_dir(tmp.path(), 4, 4, 1).unwrap();
    let path = dir.join("test_batch.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * RECORD_BYTES] = 10;
    std::fs::write(&path, &bytes).unwrap();
    let err = expect_err(cifar::load(&dir).map(|s| s.test.len()));
    let msg = err.to_string();
    assert!(msg.contains("test_batch.bin: record 2: label 10"), "{msg}");
    // inspect validates labels too.
    let err = expect_err(inspect::inspect(&dir));
    assert!(
        matches!(err, DataError::BadLabel { record: 2, .. }),
        "{err}"
    );
}

#[test]
fn missing_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar_dir(tmp.path(), 2, 2, 1).unwrap();
    std::fs::remove_file(dir.join("test_batch.bin")).unwrap();
    let err = expect_err(cifar::load(&dir).map(|s| s.train.len()));
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("test_batch.bin"), "{err}");
    let err = expect_err(inspect::inspect(&dir));
    assert!(err.to_string().contains("test_batch.bin"), "{err}");

    write_batch(&dir.join("test_batch.bin"), &synthetic_records(2, 10, 3)).unwrap();
    for b in 1..=5 {
        std::fs::remove_file(dir.join(format!("data_batch_{b}.bin"))).unwrap();
    }
    let err = expect_err(cifar::load(&dir).map(|s| s.train.len()));
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("data_batch_*.bin"), "{err}");
    let err = expect_err(inspect::inspect(&dir));
    assert!(err.to_string().contains("data_batch_*.bin"), "{err}");

    std::fs::remove_file(dir.join("batches.meta.txt")).unwrap();
    let err = expect_err(cifar::load(&dir).map(|s| s.train.len()));
    assert!(err.to_string().contains("batches.meta.txt"), "{err}");

    let err = expect_err(
        open(&tmp.path().join("nowhere"), &OpenOptions::default()).map(|s| s.train.len()),
    );
    assert!(err.to_string().contains("nowhere"), "{err}");
}

#[test]
fn one_training_batch_is_a_cifar_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar_dir_with(tmp.path(), 1, 20, 10, 1).unwrap();
    assert_eq!(
        cv_data::detect(tmp.path()).unwrap(),
        cv_data::Located::Cifar10(dir.clone())
    );
    let splits = open(tmp.path(), &OpenOptions::default()).unwrap();
    assert_eq!((splits.train.len(), splits.test.len()), (20, 10));
    let ins = inspect::inspect(&dir).unwrap();
    assert_eq!(ins.splits.train.total, 20);
    assert_eq!(ins.splits.train.per_class, vec![2; 10]);
    assert_eq!(ins.splits.test.total, 10);

    // Without batches.meta.txt the folder is still recognised by its batch, and the error
    // names the missing class names file.
    std::fs::remove_file(dir.join("batches.meta.txt")).unwrap();
    std::fs::rename(dir.join("data_batch_1.bin"), dir.join("data_batch_7.bin")).unwrap();
    assert_eq!(
        cv_data::detect(&dir).unwrap(),
        cv_data::Located::Cifar10(dir.clone())
    );
    let err = expect_err(cifar::load(&dir).map(|s| s.train.len()));
    assert!(err.to_string().contains("batches.meta.txt"), "{err}");
}

#[test]
fn training_batches_are_read_in_numeric_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar_dir_with(tmp.path(), 0, 1, 3, 1).unwrap();
    // One record per batch, its label telling which batch it came from; names that only look
    // like batches are ignored.
    for (n, label) in [(10, 9u8), (2, 2), (1, 1), (3, 3)] {
        let image = synthetic_records(1, 10, n)[0].1.clone();
        write_batch(&dir.join(format!("data_batch_{n}.bin")), &[(label, image)]).unwrap();
    }
    std::fs::write(dir.join("data_batch_4.bin.part"), b"x").unwrap();
    std::fs::create_dir(dir.join("data_batch_5.bin")).unwrap();
    let names: Vec<String> = cifar::train_files(&dir)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_10.bin"
        ]
    );
    assert_eq!(cifar::load(&dir).unwrap().train.labels, vec![1, 2, 3, 9]);
}

#[test]
fn class_names_come_from_meta_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar_dir(tmp.path(), 4, 2, 1).unwrap();
    std::fs::write(dir.join("batches.meta.txt"), "a\nb\n\n").unwrap();
    // Labels cycle 0..10, so with two classes label 2 is out of range.
    let err = expect_err(cifar::load(&dir).map(|s| s.train.len()));
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                label: 2,
                num_classes: 2,
                ..
            }
        ),
        "{err}"
    );
    let names = ["x", "y", "z", "w", "v", "u", "t", "s", "r", "q"].join("\n");
    std::fs::write(dir.join("batches.meta.txt"), names).unwrap();
    assert_eq!(cifar::load(&dir).unwrap().classes[9], "q");
}

#[test]
fn inspect_json_has_the_documented_shape() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar_dir(tmp.path(), 20, 10, 1).unwrap();
    let ins = inspect::inspect(tmp.path()).unwrap();
    let json = serde_json::to_value(&ins).unwrap();
    let expected = serde_json::json!({
        "format": "cifar10",
        "classes": CLASSES,
        "splits": {
            "train": {"total": 100, "per_class": vec![10; 10]},
            "test": {"total": 10, "per_class": vec![1; 10]},
        }
    });
    assert_eq!(json, expected);
}

fn folder_root(tmp: &Path) -> std::path::PathBuf {
    make_image_folder(&tmp.join("imgs"), &["dog", "cat", "bee"], 5, 2, 20, 9).unwrap()
}

#[test]
fn image_folder_loads_all_modes_as_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let root = folder_root(tmp.path());
    // Extra formats and cases: an upper-case .WEBP, odd-sized image, and a non-image file.
    let rgb = image::RgbImage::from_fn(17, 9, |x, y| image::Rgb([x as u8 * 10, y as u8 * 20, 7]));
    rgb.save_with_format(root.join("train/bee/odd.WEBP"), image::ImageFormat::WebP)
        .unwrap();
    std::fs::write(root.join("train/bee/notes.txt"), "not an image").unwrap();
    std::fs::write(root.join("train/bee/.DS_Store"), "junk").unwrap();

    let splits = open(&root, &OpenOptions::default()).unwrap();
    assert_eq!(splits.format, DataFormat::Folder);
    assert_eq!(splits.classes, ["bee", "cat", "dog"]);
    assert_eq!(splits.train.len(), 16);
    assert_eq!(splits.test.len(), 6);
    assert_eq!(splits.train.per_class(), [6, 5, 5]);
    let odd = splits
        .train
        .images
        .iter()
        .find(|i| i.dimensions() == (17, 9))
        .unwrap();
    assert_eq!(odd, &rgb, "lossless webp decodes exactly");
    // Gray images are replicated into three equal channels.
    let gray = folder::decode_image(&root.join("train/dog/3_gray.png")).unwrap();
    assert!(gray.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    let rgba = folder::decode_image(&root.join("train/dog/4_rgba.png")).unwrap();
    assert_eq!(rgba.dimensions(), (20, 20));

    let ins = inspect::inspect(&root).unwrap();
    assert_eq!(
        serde_json::to_value(&ins).unwrap(),
        serde_json::json!({"format": "folder", "classes": ["bee", "cat", "dog"],
            "splits": {"train": {"total": 16, "per_class": [6, 5, 5]}, "test": {"total": 6, "per_class": [2, 2, 2]}}})
    );
}

#[test]
fn palette_images_are_expanded() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pal.png");
    // A hand-written 2x1 indexed PNG (palette red, blue), so no extra encoder is needed.
    let file = std::fs::File::create(&path).unwrap();
    let mut enc = png_writer(file, 2, 1);
    std::io::Write::write_all(&mut enc, &[0b0001_0000]).unwrap();
    drop(enc);
    let img = folder::decode_image(&path).unwrap();
    assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(img.get_pixel(1, 0).0, [0, 0, 255]);
}

/// Minimal PNG writer for one palette image (bit depth 2): signature, IHDR, PLTE, IDAT, IEND.
fn png_writer(file: std::fs::File, w: u32, h: u32) -> PngPalette {
    PngPalette {
        file,
        w,
        h,
        rows: Vec::new(),
    }
}

struct PngPalette {
    file: std::fs::File,
    w: u32,
    h: u32,
    rows: Vec<u8>,
}

impl std::io::Write for PngPalette {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.rows.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for PngPalette {
    fn drop(&mut self) {
        use std::io::Write;
        fn crc32(data: &[u8]) -> u32 {
            let mut c = 0xFFFF_FFFFu32;
            for &b in data {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xEDB8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        }
        let chunk = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
            out.extend((data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            out.extend_from_slice(&body);
            out.extend(crc32(&body).to_be_bytes());
        };
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend(self.w.to_be_bytes());
        ihdr.extend(self.h.to_be_bytes());
        ihdr.extend([2, 3, 0, 0, 0]); // bit depth 2, colour type 3 (palette)
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"PLTE", &[255, 0, 0, 0, 0, 255]);
        // Each row: filter byte 0 then the packed row bytes; stored (uncompressed) zlib block.
        let row_bytes = self.rows.len() / self.h as usize;
        let mut raw = Vec::new();
        for r in self.rows.chunks(row_bytes) {
            raw.push(0);
            raw.extend_from_slice(r);
        }
        let mut z = vec![0x78, 0x01, 1];
        z.extend((raw.len() as u16).to_le_bytes());
        z.extend((!(raw.len() as u16)).to_le_bytes());
        z.extend_from_slice(&raw);
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &raw {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        z.extend(((b << 16) | a).to_be_bytes());
        chunk(&mut out, b"IDAT", &z);
        chunk(&mut out, b"IEND", &[]);
        self.file.write_all(&out).unwrap();
    }
}

#[test]
fn bad_image_is_an_error_unless_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = folder_root(tmp.path());
    let bad = root.join("train/cat/broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not really a png").unwrap();
    let err = expect_err(open(&root, &OpenOptions::default()).map(|s| s.train.len()));
    assert!(matches!(err, DataError::Image { .. }), "{err}");
    assert!(err.to_string().contains("broken.png"), "{err}");

    let splits = open(&root, &OpenOptions { skip_bad: true }).unwrap();
    assert_eq!(splits.skipped.len(), 1);
    assert_eq!(splits.skipped[0].path, bad);
    assert_eq!(splits.train.len(), 15);
}

#[test]
fn unknown_test_class_is_an_error_and_val_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = folder_root(tmp.path());
    std::fs::rename(root.join("test"), root.join("val")).unwrap();
    assert_eq!(open(&root, &OpenOptions::default()).unwrap().test.len(), 6);
    std::fs::create_dir_all(root.join("val/wolf")).unwrap();
    let err = expect_err(open(&root, &OpenOptions::default()).map(|s| s.train.len()));
    assert!(err.to_string().contains("wolf"), "{err}");
}

#[test]
fn missing_test_split_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = folder_root(tmp.path());
    std::fs::remove_dir_all(root.join("test")).unwrap();
    let err = expect_err(open(&root, &OpenOptions::default()).map(|s| s.train.len()));
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("test"), "{err}");
}

#[test]
fn planar_layout_constant_matches() {
    assert_eq!(IMAGE_BYTES, cifar::IMAGE_BYTES);
}

/// `ROOT/<class>/*` with no split: detected, inspected, evaluated whole, and split into a
/// stratified, seeded test set by `DataSource::test_split`.
#[test]
fn class_folders_without_a_split() {
    let tmp = tempfile::tempdir().unwrap();
    let made =
        make_image_folder(&tmp.path().join("x"), &["dog", "cat", "bee"], 10, 0, 12, 4).unwrap();
    let root = made.join("train");
    assert_eq!(
        cv_data::detect(&root).unwrap(),
        cv_data::Located::ClassFolders(root.clone())
    );
    let found = inspect::inspect(&root).unwrap();
    assert_eq!(found.format, DataFormat::ClassFolders);
    assert_eq!(found.classes, ["bee", "cat", "dog"]);
    assert_eq!((found.splits.train.total, found.splits.test.total), (30, 0));
    let json = serde_json::to_value(&found).unwrap();
    assert_eq!(json["format"], "class_folders");

    // No test split asked for: every image is what an evaluation sees.
    let whole = cv_data::DataSource::new(&root).open().unwrap();
    assert_eq!((whole.train.len(), whole.test.len()), (30, 0));
    assert_eq!(whole.clone().evaluation_set().len(), 30);

    let source = cv_data::DataSource {
        test_split: Some(0.3),
        ..cv_data::DataSource::new(&root)
    };
    let split = source.open().unwrap();
    assert_eq!(split.format, DataFormat::ClassFolders);
    assert_eq!(split.test.per_class(), [3, 3, 3], "stratified");
    assert_eq!(split.train.per_class(), [7, 7, 7]);
    let test_set: Vec<Vec<u8>> = split
        .test
        .images
        .iter()
        .map(|i| i.as_raw().clone())
        .collect();
    assert!(
        split
            .train
            .images
            .iter()
            .all(|i| !test_set.contains(i.as_raw())),
        "disjoint"
    );
    let again = source.open().unwrap();
    assert_eq!(again.test.images, split.test.images, "seeded");
    let other = cv_data::DataSource {
        split_seed: 5,
        ..source.clone()
    }
    .open()
    .unwrap();
    assert_ne!(
        other.test.images, split.test.images,
        "another split seed, another split"
    );
    // The recorded source round-trips; the old form (no test_split) still reads.
    let text = serde_json::to_string(&source).unwrap();
    assert_eq!(
        serde_json::from_str::<cv_data::DataSource>(&text).unwrap(),
        source
    );
    let old: cv_data::DataSource = serde_json::from_str(r#"{"path": "data/x"}"#).unwrap();
    assert_eq!(old.test_split, None);

    // Folders that have their own test split refuse --test-split; fractions are checked.
    let with_split = cv_data::DataSource {
        test_split: Some(0.2),
        ..cv_data::DataSource::new(&made)
    };
    let err = with_split.open().unwrap_err().to_string();
    assert!(
        err.contains("--test-split") && err.contains("own test split"),
        "{err}"
    );
    let bad = cv_data::DataSource {
        test_split: Some(1.0),
        ..cv_data::DataSource::new(&root)
    };
    assert!(bad.open().unwrap_err().to_string().contains("fraction"));
    // Sub-folders without images are not a dataset.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("a")).unwrap();
    std::fs::write(empty.join("a/notes.txt"), "x").unwrap();
    let err = cv_data::detect(&empty).unwrap_err().to_string();
    assert!(err.contains("one sub-folder of images per class"), "{err}");
}
