//! The augmentation policies inside the pipeline: applied after the crop and flip to the u8
//! image that step produced, seeded like every transform, random erasing on the normalised
//! output, and configs that round-trip.

use cv_data::transforms::{ops, policies, Jitter, Pipeline, Transform};
use image::{Rgb, RgbImage};

fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503) ^ seed.wrapping_mul(97))
            .wrapping_mul(2246822519);
        Rgb([(v >> 8) as u8, (v >> 16) as u8, (v >> 24) as u8])
    })
}

fn plain(transforms: Vec<Transform>) -> Pipeline {
    Pipeline {
        transforms,
        mean: [0.0; 3],
        std: [1.0; 3],
    }
}

fn jitter() -> Jitter {
    Jitter {
        brightness: 0.4,
        contrast: 0.4,
        saturation: 0.4,
        hue: 0.1,
    }
}

#[test]
fn policies_are_seeded_and_batches_equal_single_samples() {
    let images: Vec<RgbImage> = (0..24).map(|i| noise(40, 30, i)).collect();
    let refs: Vec<&RgbImage> = images.iter().collect();
    let seeds: Vec<u64> = (0..24).map(|i| 1000 + i).collect();
    for policy in [
        Transform::trivial_augment_wide(),
        Transform::rand_augment(2, 9),
        Transform::auto_augment(),
        Transform::color_jitter(jitter()),
    ] {
        let p = Pipeline {
            transforms: vec![
                Transform::random_resized_crop(24),
                Transform::flip(0.5),
                policy.clone(),
                Transform::random_erasing(0.5),
            ],
            ..Pipeline::imagenet_train(24)
        };
        let (batch, size) = p.apply_batch(&refs, &seeds).unwrap();
        assert_eq!(size, (24, 24));
        let per = 3 * 24 * 24;
        for (i, img) in images.iter().enumerate() {
            let (one, _) = p.apply(img, seeds[i]).unwrap();
            assert_eq!(one, batch[i * per..(i + 1) * per], "{policy:?} sample {i}");
            assert_eq!(
                p.apply(img, seeds[i]).unwrap().0,
                one,
                "same seed, same sample"
            );
        }
        let other = p.apply(&images[0], 7).unwrap().0;
        assert_ne!(
            other,
            batch[..per],
            "{policy:?}: another seed, another sample"
        );
    }
    // The dataset's own images were never changed in place.
    for (i, img) in images.iter().enumerate() {
        assert_eq!(*img, noise(40, 30, i as u32));
    }
}

#[test]
fn a_policy_acts_on_the_cropped_and_mirrored_image() {
    // ColorJitter with brightness only maps every value v of its input to trunc(f * v) for
    // one factor f: the output must be that of the crop + flip the same seed draws.
    let img = noise(20, 16, 3);
    let geometry = vec![Transform::random_crop(12, 2), Transform::flip(1.0)];
    let bright = Jitter {
        brightness: 0.5,
        contrast: 0.0,
        saturation: 0.0,
        hue: 0.0,
    };
    let with = plain([geometry.clone(), vec![Transform::color_jitter(bright)]].concat());
    for seed in 0..20 {
        let crop = plain(geometry.clone()).augment(&img, seed).unwrap();
        let out = with.augment(&img, seed).unwrap();
        assert_eq!(out.dimensions(), (12, 12));
        // Each pair (v, o) with v > 0 bounds f to [o / v, (o + 1) / v).
        let (mut lo, mut hi) = (0.5f64, 1.5f64);
        for (&v, &o) in crop.iter().zip(out.iter()) {
            if v > 0 && o < 255 {
                lo = lo.max(o as f64 / v as f64);
                hi = hi.min((o as f64 + 1.0) / v as f64);
            }
        }
        assert!(
            lo < hi + 1e-6,
            "seed {seed}: not one brightness change of the crop"
        );
        let mut expect = crop.clone();
        ops::adjust_brightness(&mut expect, (lo + hi) / 2.0);
        let off = expect
            .iter()
            .zip(out.iter())
            .filter(|(a, b)| a != b)
            .count();
        assert!(off <= 2, "seed {seed}: {off} values differ");
    }
}

#[test]
fn random_erasing_zeroes_a_rectangle_of_the_normalised_output() {
    let img = noise(32, 32, 5);
    let p = Pipeline {
        transforms: vec![
            Transform::random_crop(32, 4),
            Transform::random_erasing(1.0),
        ],
        ..Pipeline::cifar_train()
    };
    let mut erased = 0;
    for seed in 0..50 {
        let (out, _) = p.apply(&img, seed).unwrap();
        let zero: Vec<usize> = (0..32 * 32)
            .filter(|&i| (0..3).all(|c| out[c * 1024 + i] == 0.0))
            .collect();
        if zero.is_empty() {
            continue;
        }
        erased += 1;
        let (xs, ys): (Vec<usize>, Vec<usize>) = zero.iter().map(|i| (i % 32, i / 32)).unzip();
        let (x0, x1) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
        let (y0, y1) = (*ys.iter().min().unwrap(), *ys.iter().max().unwrap());
        let area = (x1 - x0 + 1) * (y1 - y0 + 1);
        assert_eq!(
            zero.len(),
            area,
            "seed {seed}: the zeros form one rectangle"
        );
        assert!(area <= 1024 * 33 / 100 + 32, "seed {seed}: {area} pixels");
        // The preview paints the mean colour there.
        let preview = p.augment(&img, seed).unwrap();
        let mean = cv_data::transforms::CIFAR10_MEAN.map(|m| (m * 255.0).round() as u8);
        assert_eq!(preview.get_pixel(x0 as u32, y0 as u32).0, mean);
    }
    // p = 1, and the 10 attempts nearly always find a rectangle that fits.
    assert!(erased >= 45, "{erased} of 50 erased");
    let never = plain(vec![Transform::random_erasing(0.0)]);
    assert_eq!(never.augment(&img, 1).unwrap(), img);
}

#[test]
fn bad_policy_configs_are_errors() {
    let late = plain(vec![Transform::random_erasing(0.5), Transform::flip(0.5)]);
    let err = late.validate().unwrap_err().to_string();
    assert!(
        err.contains("random_erasing") && err.contains("after"),
        "{err}"
    );
    let too_high = plain(vec![Transform::rand_augment(2, 31)]);
    assert!(too_high
        .validate()
        .unwrap_err()
        .to_string()
        .contains("magnitude"));
    let hue = plain(vec![Transform::color_jitter(Jitter {
        hue: 0.7,
        ..jitter()
    })]);
    assert!(hue.validate().unwrap_err().to_string().contains("hue"));
    let p = plain(vec![Transform::random_erasing(1.5)]);
    assert!(p.validate().is_err());
}

#[test]
fn policy_configs_round_trip_with_torchvision_defaults() {
    let p = plain(vec![
        Transform::trivial_augment_wide(),
        Transform::rand_augment(2, 9),
        Transform::auto_augment(),
        Transform::color_jitter(jitter()),
        Transform::random_erasing(0.25),
    ]);
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<Pipeline>(&json).unwrap(), p);
    for (short, full) in [
        (
            r#"{"type":"trivial_augment_wide"}"#,
            Transform::trivial_augment_wide(),
        ),
        (r#"{"type":"rand_augment"}"#, Transform::rand_augment(2, 9)),
        (r#"{"type":"auto_augment"}"#, Transform::auto_augment()),
        (
            r#"{"type":"random_erasing"}"#,
            Transform::random_erasing(0.5),
        ),
    ] {
        assert_eq!(serde_json::from_str::<Transform>(short).unwrap(), full);
    }
}

#[test]
fn every_op_keeps_the_size_of_odd_shaped_images() {
    let img = noise(7, 3, 1);
    for op in [
        policies::Op::ShearX,
        policies::Op::ShearY,
        policies::Op::TranslateX,
        policies::Op::TranslateY,
        policies::Op::Rotate,
        policies::Op::Sharpness,
        policies::Op::Equalize,
        policies::Op::AutoContrast,
        policies::Op::Posterize,
    ] {
        let mut out = img.clone();
        policies::apply_op(&mut out, op, -3.0);
        assert_eq!(out.dimensions(), (7, 3), "{op:?}");
    }
    let mut tiny = RgbImage::new(1, 1);
    for bins in [2, 31] {
        policies::trivial_augment_wide(&mut cv_data::seed::rng(1), &mut tiny, bins);
    }
}
