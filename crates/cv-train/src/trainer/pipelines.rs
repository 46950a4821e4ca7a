//! The data pipelines of a run: the training augmentation and the evaluation resize.

use cv_data::transforms::Transform;
use cv_data::{Dataset, Pipeline};

use crate::config::Augment;

/// Square images of side `size` already? Then resizing would only cost time.
fn all_sized(d: &Dataset, size: usize) -> bool {
    d.images
        .iter()
        .all(|i| i.width() as usize == size && i.height() as usize == size)
}

/// The training pipeline of `augment` at `size`, normalised with `mean`/`std`.
pub fn train_pipeline(
    augment: Augment,
    size: usize,
    data: &Dataset,
    mean: [f32; 3],
    std: [f32; 3],
) -> Pipeline {
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
    Pipeline {
        transforms,
        mean,
        std,
    }
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
