//! Synthetic CIFAR-10 binary batches: same byte layout as the real files, with images a small
//! network can learn: [`Synthetic::Colours`] (each class has its own colour and stripe
//! direction, plus noise: easy) or [`Synthetic::Textures`] (the class is a grating's
//! orientation and period under random colours, phase, contrast and noise: a small CNN needs
//! many images, which is where pretrained features and distillation show).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes of one image in a CIFAR-10 record (3 planes of 32x32).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes of one record: the label byte and the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// The real `batches.meta.txt` class names.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// A tiny deterministic generator (splitmix64), so test data needs no RNG crate.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// One learnable 32x32 image of `class` in CIFAR's planar layout (R plane, G plane, B plane).
pub fn synthetic_image(class: u8, rng: &mut SplitMix) -> Vec<u8> {
    let palette: [[u8; 3]; 10] = [
        [220, 40, 40],
        [40, 200, 40],
        [40, 60, 220],
        [220, 220, 40],
        [200, 40, 200],
        [40, 200, 200],
        [240, 140, 20],
        [130, 60, 200],
        [120, 120, 120],
        [250, 250, 250],
    ];
    let colour = palette[class as usize % 10];
    let vertical = class.is_multiple_of(2);
    let mut out = vec![0u8; IMAGE_BYTES];
    for y in 0..32 {
        for x in 0..32 {
            let stripe = if vertical {
                x / 4 % 2 == 0
            } else {
                y / 4 % 2 == 0
            };
            for c in 0..3 {
                let base = if stripe {
                    colour[c] as i32
                } else {
                    colour[c] as i32 / 3
                };
                let noise = rng.below(41) as i32 - 20;
                out[c * 1024 + y * 32 + x] = (base + noise).clamp(0, 255) as u8;
            }
        }
    }
    out
}

/// One 32x32 texture of `class` in CIFAR's planar layout: the class fixes the grating's
/// orientation (vertical, horizontal, two diagonals, checkerboard: `class % 5`) and period
/// (4 or 8 pixels: `class / 5`); its colour (the other band is its complement), phase,
/// contrast and noise are drawn from `rng`, so colour says nothing about the class.
pub fn texture_image(class: u8, rng: &mut SplitMix) -> Vec<u8> {
    let period = if class % 10 < 5 { 4 } else { 8 };
    let phase_x = rng.below(period as u64) as usize;
    let phase_y = rng.below(period as u64) as usize;
    let fg: [i32; 3] = std::array::from_fn(|_| rng.below(256) as i32);
    let bg = fg.map(|v| 255 - v); // the complement: the grating always shows
    let contrast = 50 + rng.below(51) as i32; // percent of the colour difference shown
    let mut out = vec![0u8; IMAGE_BYTES];
    for y in 0..32 {
        for x in 0..32 {
            let (u, v) = (x + phase_x, y + phase_y);
            let band = |t: usize| (t / period).is_multiple_of(2);
            let on = match class % 5 {
                0 => band(u),
                1 => band(v),
                2 => band(u + v),
                3 => band(u + 64 - v),
                _ => band(u) ^ band(v),
            };
            for c in 0..3 {
                let shown = if on {
                    (fg[c] - bg[c]) * contrast / 100
                } else {
                    0
                };
                let noise = rng.below(41) as i32 - 20;
                out[c * 1024 + y * 32 + x] = (bg[c] + shown + noise).clamp(0, 255) as u8;
            }
        }
    }
    out
}

/// Which synthetic images a dataset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synthetic {
    /// [`synthetic_image`]: one colour and stripe direction per class (easy).
    Colours,
    /// [`texture_image`]: orientation and period per class, colours random (harder).
    Textures,
}

impl Synthetic {
    /// One image of `class`.
    pub fn image(self, class: u8, rng: &mut SplitMix) -> Vec<u8> {
        match self {
            Synthetic::Colours => synthetic_image(class, rng),
            Synthetic::Textures => texture_image(class, rng),
        }
    }
}

/// `n` records with labels cycling through `num_classes`, as (label, planar image bytes).
pub fn synthetic_records(n: usize, num_classes: u8, seed: u64) -> Vec<(u8, Vec<u8>)> {
    records_of(Synthetic::Colours, n, num_classes, seed)
}

/// [`synthetic_records`] of `kind`.
pub fn records_of(kind: Synthetic, n: usize, num_classes: u8, seed: u64) -> Vec<(u8, Vec<u8>)> {
    let mut rng = SplitMix(seed);
    (0..n)
        .map(|i| {
            let label = (i % num_classes as usize) as u8;
            (label, kind.image(label, &mut rng))
        })
        .collect()
}

/// Write records in the CIFAR-10 binary format (label byte, then 3,072 image bytes).
pub fn write_batch(path: &Path, records: &[(u8, Vec<u8>)]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(records.len() * RECORD_BYTES);
    for (label, image) in records {
        assert_eq!(image.len(), IMAGE_BYTES, "a CIFAR image is 3,072 bytes");
        bytes.push(*label);
        bytes.extend_from_slice(image);
    }
    std::fs::write(path, bytes)
}

/// Make `root/cifar-10-batches-bin/` with `data_batch_1..5.bin` (`per_batch` records each),
/// `test_batch.bin` (`test` records) and `batches.meta.txt`; returns the batches folder.
pub fn write_cifar_dir(
    root: &Path,
    per_batch: usize,
    test: usize,
    seed: u64,
) -> std::io::Result<PathBuf> {
    write_cifar_dir_with(root, 5, per_batch, test, seed)
}

/// As [`write_cifar_dir`], with `batches` training batches `data_batch_1..=batches.bin`.
pub fn write_cifar_dir_with(
    root: &Path,
    batches: u64,
    per_batch: usize,
    test: usize,
    seed: u64,
) -> std::io::Result<PathBuf> {
    write_cifar_dir_of(Synthetic::Colours, root, batches, per_batch, test, seed)
}

/// As [`write_cifar_dir_with`], with images of `kind`.
pub fn write_cifar_dir_of(
    kind: Synthetic,
    root: &Path,
    batches: u64,
    per_batch: usize,
    test: usize,
    seed: u64,
) -> std::io::Result<PathBuf> {
    let dir = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir)?;
    for b in 1..=batches {
        let recs = records_of(kind, per_batch, 10, seed.wrapping_mul(31).wrapping_add(b));
        write_batch(&dir.join(format!("data_batch_{b}.bin")), &recs)?;
    }
    write_batch(
        &dir.join("test_batch.bin"),
        &records_of(kind, test, 10, seed ^ 0xABCD),
    )?;
    let mut meta = String::new();
    for c in CLASSES {
        meta.push_str(c);
        meta.push('\n');
    }
    meta.push('\n');
    std::fs::write(dir.join("batches.meta.txt"), meta)?;
    Ok(dir)
}

/// One member of a hand-made tar archive.
#[derive(Debug, Clone)]
pub enum TarMember {
    /// A regular file; the name is written as given, even if hostile (`../x`, `/abs`).
    File(String, Vec<u8>),
    /// A directory entry.
    Dir(String),
    /// A symbolic link `name -> target`.
    Symlink(String, String),
}

/// A gzip-compressed tar archive of `members`, names written raw (no sanitising), so tests can
/// build hostile archives.
pub fn tar_gz(members: &[TarMember]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for m in members {
        let mut header = tar::Header::new_gnu();
        let (name, data, kind, link): (&str, &[u8], tar::EntryType, Option<&str>) = match m {
            TarMember::File(n, d) => (n, d, tar::EntryType::Regular, None),
            TarMember::Dir(n) => (n, &[], tar::EntryType::Directory, None),
            TarMember::Symlink(n, t) => (n, &[], tar::EntryType::Symlink, Some(t)),
        };
        {
            let gnu = header.as_gnu_mut().expect("gnu header");
            let bytes = name.as_bytes();
            assert!(
                bytes.len() < 100,
                "test member names must fit the tar header"
            );
            gnu.name[..bytes.len()].copy_from_slice(bytes);
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        if let Some(t) = link {
            let gnu = header.as_gnu_mut().expect("gnu header");
            gnu.linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        header.set_cksum();
        builder
            .append(&header, data)
            .expect("append to in-memory tar");
    }
    let gz = builder.into_inner().expect("finish tar");
    gz.finish().expect("finish gzip")
}

/// The `.tar.gz` the official site serves, built from a folder made by [`write_cifar_dir`]:
/// members `cifar-10-batches-bin/<file>`.
pub fn cifar_tar_gz(batches_dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut members = vec![TarMember::Dir("cifar-10-batches-bin/".into())];
    let mut names: Vec<_> = std::fs::read_dir(batches_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let data = std::fs::read(batches_dir.join(&n))?;
        members.push(TarMember::File(format!("cifar-10-batches-bin/{n}"), data));
    }
    Ok(tar_gz(&members))
}

/// Write `bytes` to `path`, creating parents (small helper for archive tests).
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::File::create(path)?.write_all(bytes)
}
