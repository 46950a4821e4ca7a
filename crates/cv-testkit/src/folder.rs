//! Tiny image folders in the `ROOT/{train,test}/<class>/*` layout users bring for transfer
//! learning, in a mix of formats, sizes and colour modes.

use crate::cifar::SplitMix;
use std::path::{Path, PathBuf};

/// A learnable RGB image of `class`: its colour fills the image, with stripes and noise.
pub fn class_image(class: usize, width: u32, height: u32, rng: &mut SplitMix) -> image::RgbImage {
    let palette: [[u8; 3]; 6] = [
        [220, 40, 40],
        [40, 200, 40],
        [40, 60, 220],
        [220, 220, 40],
        [200, 40, 200],
        [40, 200, 200],
    ];
    let colour = palette[class % palette.len()];
    image::RgbImage::from_fn(width, height, |x, y| {
        let stripe = if class.is_multiple_of(2) {
            (x / 4) % 2 == 0
        } else {
            (y / 4) % 2 == 0
        };
        let mut px = [0u8; 3];
        for c in 0..3 {
            let base = if stripe {
                colour[c] as i32
            } else {
                colour[c] as i32 / 3
            };
            px[c] = (base + rng.below(31) as i32 - 15).clamp(0, 255) as u8;
        }
        image::Rgb(px)
    })
}

/// Make `root/train/<class>/` and `root/test/<class>/` with `train_per_class` and
/// `test_per_class` images of `size`x`size`, cycling through PNG, upper-case `.JPG`, BMP,
/// grayscale PNG and RGBA PNG so decoders see every mode. Returns `root`.
pub fn make_image_folder(
    root: &Path,
    classes: &[&str],
    train_per_class: usize,
    test_per_class: usize,
    size: u32,
    seed: u64,
) -> image::ImageResult<PathBuf> {
    let mut rng = SplitMix(seed);
    for (split, n) in [("train", train_per_class), ("test", test_per_class)] {
        for (ci, class) in classes.iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).map_err(image::ImageError::IoError)?;
            for i in 0..n {
                let img = class_image(ci, size, size, &mut rng);
                match i % 5 {
                    0 => img.save(dir.join(format!("{i}.png")))?,
                    1 => img
                        .save_with_format(dir.join(format!("{i}.JPG")), image::ImageFormat::Jpeg)?,
                    2 => img.save(dir.join(format!("{i}.bmp")))?,
                    3 => image::DynamicImage::ImageRgb8(img)
                        .to_luma8()
                        .save(dir.join(format!("{i}_gray.png")))?,
                    _ => image::DynamicImage::ImageRgb8(img)
                        .to_rgba8()
                        .save(dir.join(format!("{i}_rgba.png")))?,
                }
            }
        }
    }
    Ok(root.to_path_buf())
}
