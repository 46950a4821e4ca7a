//! The data pipelines of a run: the training augmentation and the evaluation resize.

use cv_data::transforms::Transform;
use cv_data::{Dataset, Pipeline};

use crate::config::{Augment, AutoAugmentKind, TrainConfig, RANDAUGMENT_BINS};

/// Square images of side `size` already? Then resizing would only cost time.
fn all_sized(d: &Dataset, size: usize) -> bool {
    d.images
        .iter()
        .all(|i| i.width() as usize == size && i.height() as usize == size)
}

/// The training pipeline of a recipe, normalised with `mean`/`std`: the crop and flip of
/// `augment` at `image_size`, then colour jitter, the automatic policy and random erasing, in
/// the order of torchvision's reference recipes.
pub fn train_pipeline(c: &TrainConfig, data: &Dataset, mean: [f32; 3], std: [f32; 3]) -> Pipeline {
    let mut transforms = crop_and_flip(c.augment, c.image_size, data);
    if let Some([brightness, contrast, saturation, hue]) = c.color_jitter {
        transforms.push(Transform::ColorJitter {
            brightness,
            contrast,
            saturation,
            hue,
        });
    }
    transforms.extend(c.auto_augment.map(|kind| match kind {
        AutoAugmentKind::Trivial => Transform::trivial_augment_wide(),
        AutoAugmentKind::Rand => Transform::RandAugment {
            num_ops: c.randaugment_ops as u32,
            magnitude: c.randaugment_magnitude as u32,
            num_magnitude_bins: RANDAUGMENT_BINS as u32,
        },
        AutoAugmentKind::Auto => Transform::auto_augment(),
    }));
    transforms.extend(c.random_erasing.map(Transform::random_erasing));
    Pipeline {
        transforms,
        mean,
        std,
    }
}

/// The geometry of `augment` at `size`.
fn crop_and_flip(augment: Augment, size: usize, data: &Dataset) -> Vec<Transform> {
    let s = size as u32;
    let mut transforms = Vec::new();
    let fit = |t: &mut Vec<Transform>| {
        if !all_sized(data, size) {
            t.push(Transform::resize(s));
            t.push(Transform::center_crop(s));
        }
    };
    match augment {
        Augment::Cifar => {
            fit(&mut transforms);
            transforms.push(Transform::random_crop(s, (s / 8).max(1)));
            transforms.push(Transform::flip(0.5));
        }
        Augment::Imagenet => {
            transforms.push(Transform::random_resized_crop(s));
            transforms.push(Transform::flip(0.5));
        }
        Augment::None => fit(&mut transforms),
    }
    transforms
}

/// The evaluation pipeline: resize + centre crop to `size` (nothing when already that size).
pub fn eval_pipeline(size: usize, data: &Dataset, mean: [f32; 3], std: [f32; 3]) -> Pipeline {
    let s = size as u32;
    let transforms = if all_sized(data, size) {
        Vec::new()
    } else {
        vec![Transform::resize(s), Transform::center_crop(s)]
    };
    Pipeline {
        transforms,
        mean,
        std,
    }
}
