//! Properties of the augmentation pipeline: shapes, mirrors, bounds, arithmetic, resampling
//! values, and independence from the thread count.
#![allow(clippy::needless_range_loop)] // pixel loops read clearer with indices

use cv_data::transforms::{Pipeline, Transform, CIFAR10_MEAN, CIFAR10_STD};
use cv_data::DataError;
use image::{Rgb, RgbImage};

/// Each pixel encodes its position: R = 5x, G = 5y, B = 200 (never 0, so padding is visible).
fn coords(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(5 * x) as u8, (5 * y) as u8, 200]))
}

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

/// Value of channel `c` at (x, y) of a CHW buffer, back on the 0..255 scale.
fn at(out: &[f32], w: usize, h: usize, c: usize, x: usize, y: usize) -> f32 {
    out[c * w * h + y * w + x] * 255.0
}

#[test]
fn output_shapes() {
    let img = noise(32, 32, 1);
    for (p, expect) in [
        (Pipeline::cifar_train(), (32, 32)),
        (Pipeline::cifar_eval(), (32, 32)),
        (Pipeline::imagenet_train(224), (224, 224)),
        (Pipeline::eval(256, 224), (224, 224)),
        (plain(vec![Transform::resize(48)]), (48, 48)),
    ] {
        let (out, size) = p.apply(&img, 3).unwrap();
        assert_eq!(size, expect, "{p:?}");
        assert_eq!(out.len(), 3 * expect.0 * expect.1);
        assert!(out.iter().all(|v| v.is_finite()));
    }
    assert_eq!(
        plain(vec![Transform::resize(224)])
            .output_size(32, 48)
            .unwrap(),
        (224, 336)
    );
    assert_eq!(
        plain(vec![Transform::resize(256)])
            .output_size(640, 480)
            .unwrap(),
        (341, 256)
    );
}

#[test]
fn flip_is_a_mirror() {
    let img = noise(13, 7, 2);
    let (out, (w, h)) = plain(vec![Transform::flip(1.0)]).apply(&img, 0).unwrap();
    for y in 0..h {
        for x in 0..w {
            let p = img.get_pixel((w - 1 - x) as u32, y as u32).0;
            for c in 0..3 {
                assert_eq!(at(&out, w, h, c, x, y).round(), p[c] as f32);
            }
        }
    }
    // With the same seed the crop / resized-crop draws come first, so p=1 vs p=0 differ only
    // by the mirror.
    for transforms in [
        |p| vec![Transform::random_crop(32, 4), Transform::flip(p)],
        |p| vec![Transform::random_resized_crop(40), Transform::flip(p)],
        |p| {
            vec![
                Transform::resize(50),
                Transform::center_crop(40),
                Transform::flip(p),
            ]
        },
    ] as [fn(f64) -> Vec<Transform>; 3]
    {
        for seed in 0..5 {
            let img = noise(32, 32, seed as u32);
            let (a, (w, h)) = plain(transforms(1.0)).apply(&img, seed).unwrap();
            let (b, _) = plain(transforms(0.0)).apply(&img, seed).unwrap();
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        let d = (at(&a, w, h, c, x, y) - at(&b, w, h, c, w - 1 - x, y)).abs();
                        assert!(d < 1e-3, "seed {seed} ({x},{y},{c}) differs by {d}");
                    }
                }
            }
        }
    }
}

#[test]
fn flip_before_crop_crops_the_mirrored_image() {
    // flip(1) then a centre crop of an odd margin: must equal cropping the mirrored image.
    let img = noise(11, 6, 4);
    let (out, (w, h)) = plain(vec![Transform::flip(1.0), Transform::center_crop(6)])
        .apply(&img, 0)
        .unwrap();
    let mirrored = image::imageops::flip_horizontal(&img);
    // torchvision: left = round((11 - 6) / 2) = round(2.5) = 2 (ties to even).
    for y in 0..h {
        for x in 0..w {
            let p = mirrored.get_pixel(x as u32 + 2, y as u32).0;
            for c in 0..3 {
                assert_eq!(at(&out, w, h, c, x, y).round(), p[c] as f32);
            }
        }
    }
}

#[test]
fn random_crop_stays_within_the_padded_image_and_covers_every_offset() {
    let img = coords(32, 32);
    let p = plain(vec![Transform::random_crop(32, 4)]);
    let mut seen = std::collections::HashSet::new();
    for seed in 0..600 {
        let (out, (w, h)) = p.apply(&img, seed).unwrap();
        // Find the offset from any non-padding pixel, then check every pixel against it.
        let (mut dx, mut dy) = (None, None);
        'find: for y in 0..h {
            for x in 0..w {
                if at(&out, w, h, 2, x, y).round() == 200.0 {
                    dx = Some((at(&out, w, h, 0, x, y).round() / 5.0) as i64 - x as i64);
                    dy = Some((at(&out, w, h, 1, x, y).round() / 5.0) as i64 - y as i64);
                    break 'find;
                }
            }
        }
        let (dx, dy) = (dx.unwrap(), dy.unwrap());
        assert!(
            (-4..=4).contains(&dx) && (-4..=4).contains(&dy),
            "offset {dx},{dy}"
        );
        seen.insert((dx, dy));
        for y in 0..h as i64 {
            for x in 0..w as i64 {
                let (sx, sy) = (x + dx, y + dy);
                let expect = if (0..32).contains(&sx) && (0..32).contains(&sy) {
                    [5.0 * sx as f32, 5.0 * sy as f32, 200.0]
                } else {
                    [0.0; 3]
                };
                for c in 0..3 {
                    assert_eq!(at(&out, w, h, c, x as usize, y as usize).round(), expect[c]);
                }
            }
        }
    }
    assert_eq!(seen.len(), 81, "all 9x9 offsets are reachable");
}

#[test]
fn resized_crops_never_read_outside_the_image() {
    // A constant image: any read outside it (zero padding) or a weight error would show.
    let img = RgbImage::from_pixel(37, 23, Rgb([77, 150, 3]));
    for p in [
        plain(vec![Transform::random_resized_crop(64)]),
        plain(vec![Transform::random_resized_crop(16)]),
        plain(vec![
            Transform::resize(30),
            Transform::random_resized_crop(20),
            Transform::flip(0.5),
        ]),
        plain(vec![Transform::resize(19), Transform::center_crop(19)]),
    ] {
        for seed in 0..50 {
            let (out, (w, h)) = p.apply(&img, seed).unwrap();
            for c in 0..3 {
                let expect = [77.0, 150.0, 3.0][c];
                for v in &out[c * w * h..(c + 1) * w * h] {
                    assert!(
                        (v * 255.0 - expect).abs() < 1e-3,
                        "{p:?} seed {seed}: {}",
                        v * 255.0
                    );
                }
            }
        }
    }
}

#[test]
fn center_crop_larger_than_image_pads_with_zeros() {
    let img = RgbImage::from_pixel(4, 2, Rgb([9, 9, 9]));
    let (out, (w, h)) = plain(vec![Transform::center_crop(6)])
        .apply(&img, 0)
        .unwrap();
    // torchvision pads (6-4)//2 = 1 left and (6-2)//2 = 2 on top.
    for y in 0..h {
        for x in 0..w {
            let inside = (1..5).contains(&x) && (2..4).contains(&y);
            assert_eq!(
                at(&out, w, h, 0, x, y).round(),
                if inside { 9.0 } else { 0.0 },
                "({x},{y})"
            );
        }
    }
}

#[test]
fn normalisation_arithmetic() {
    let img = noise(5, 4, 9);
    let p = Pipeline::none(CIFAR10_MEAN, CIFAR10_STD);
    let (out, (w, h)) = p.apply(&img, 0).unwrap();
    for y in 0..h {
        for x in 0..w {
            let px = img.get_pixel(x as u32, y as u32).0;
            for c in 0..3 {
                let expect = (px[c] as f32 / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c];
                let got = out[c * w * h + y * w + x];
                assert!((got - expect).abs() < 1e-5, "{got} vs {expect}");
            }
        }
    }
    let bad = Pipeline::none([0.0; 3], [1.0, 0.0, 1.0]);
    assert!(matches!(
        bad.apply(&img, 0),
        Err(DataError::Transform { .. })
    ));
}

#[test]
fn resampling_matches_pil_values() {
    // Row [0, 100, 200, 255] repeated: halving with antialias (PIL) gives
    // (3*0 + 3*100 + 1*200)/7 and (1*100 + 3*200 + 3*255)/7.
    let row = [0u8, 100, 200, 255];
    let img = RgbImage::from_fn(4, 4, |x, _| Rgb([row[x as usize]; 3]));
    let (out, (w, h)) = plain(vec![Transform::resize(2)]).apply(&img, 0).unwrap();
    assert_eq!((w, h), (2, 2));
    let expect = [500.0 / 7.0, (25.0 + 150.0 + 191.25) / 1.75];
    for (x, e) in expect.iter().enumerate() {
        assert!(
            (at(&out, w, h, 0, x, 1) - e).abs() < 1e-3,
            "{} vs {e}",
            at(&out, w, h, 0, x, 1)
        );
    }
    // Without antialias PyTorch's bilinear (align_corners=False) averages the middle pairs.
    let no_aa = plain(vec![Transform::Resize {
        size: 2,
        antialias: false,
    }]);
    let (out, _) = no_aa.apply(&img, 0).unwrap();
    assert!((at(&out, 2, 2, 0, 0, 0) - 50.0).abs() < 1e-3);
    assert!((at(&out, 2, 2, 0, 1, 0) - 227.5).abs() < 1e-3);
    // Upsampling 2 -> 4: [0, 25, 75, 100] (same for PIL and PyTorch).
    let img = RgbImage::from_fn(2, 2, |x, _| Rgb([[0u8, 100][x as usize]; 3]));
    let (out, (w, h)) = plain(vec![Transform::resize(4)]).apply(&img, 0).unwrap();
    for (x, e) in [0.0, 25.0, 75.0, 100.0].iter().enumerate() {
        assert!((at(&out, w, h, 0, x, 2) - e).abs() < 1e-3);
    }
}

#[test]
fn resize_then_center_crop_equals_cropping_the_full_resize() {
    let img = noise(45, 30, 5);
    let (full, (fw, fh)) = plain(vec![Transform::resize(40)]).apply(&img, 0).unwrap();
    assert_eq!((fw, fh), (60, 40));
    let (crop, (w, h)) = plain(vec![Transform::resize(40), Transform::center_crop(32)])
        .apply(&img, 0)
        .unwrap();
    let (left, top) = (14, 4); // round(28/2), round(8/2)
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let d = (at(&crop, w, h, c, x, y) - at(&full, fw, fh, c, x + left, y + top)).abs();
                assert!(d < 1e-3);
            }
        }
    }
}

#[test]
fn crop_larger_than_padded_image_is_an_error() {
    let img = noise(20, 20, 1);
    let err = Pipeline::cifar_train().apply(&img, 0).unwrap_err();
    assert!(matches!(err, DataError::Transform { .. }), "{err}");
    assert!(err.to_string().contains("32"), "{err}");
}

#[test]
fn augment_u8_matches_f32_output() {
    let img = noise(32, 32, 8);
    let p = plain(vec![
        Transform::random_resized_crop(48),
        Transform::flip(0.5),
    ]);
    for seed in 0..10 {
        let u8img = p.augment(&img, seed).unwrap();
        let (out, (w, h)) = p.apply(&img, seed).unwrap();
        for (x, y, px) in u8img.enumerate_pixels() {
            for c in 0..3 {
                let d = (at(&out, w, h, c, x as usize, y as usize) - px.0[c] as f32).abs();
                assert!(d <= 0.5 + 1e-3);
            }
        }
    }
}

#[test]
fn batches_are_identical_across_thread_counts() {
    let images: Vec<RgbImage> = (0..24).map(|i| noise(32, 32, i)).collect();
    let refs: Vec<&RgbImage> = images.iter().collect();
    let seeds: Vec<u64> = (0..24).map(|i| 1000 + i).collect();
    for p in [
        Pipeline::cifar_train(),
        Pipeline::imagenet_train(64),
        Pipeline::eval(40, 36),
    ] {
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| p.apply_batch(&refs, &seeds).unwrap())
        };
        let (a, sa) = run(1);
        let (b, sb) = run(2);
        assert_eq!(sa, sb);
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{p:?}"
        );
        // And a different seed gives a different batch for random pipelines.
        if p != Pipeline::eval(40, 36) {
            let other: Vec<u64> = seeds.iter().map(|s| s + 1).collect();
            let (c, _) = p.apply_batch(&refs, &other).unwrap();
            assert_ne!(a, c);
        }
    }
}

/// A batch is written into memory that is never zeroed first: every value of it must equal
/// the sample rendered alone (into a zeroed buffer), for each kind of transform, including
/// crops that reach into the padding and flips. Batch sizes and outputs are large enough for
/// the allocator to hand back memory that held other values.
#[test]
fn batch_values_equal_single_samples_in_reused_memory() {
    let images: Vec<RgbImage> = (0..40).map(|i| noise(32, 32, 50 + i)).collect();
    let refs: Vec<&RgbImage> = images.iter().collect();
    let seeds: Vec<u64> = (0..40).map(|i| 77 + i).collect();
    let pipelines = [
        Pipeline::cifar_train(),
        Pipeline::imagenet_train(96),
        Pipeline::eval(112, 100),
        plain(vec![Transform::center_crop(40), Transform::flip(0.5)]),
        plain(vec![Transform::random_crop(36, 6), Transform::flip(0.5)]),
    ];
    for _ in 0..2 {
        for p in &pipelines {
            // Leave non-zero garbage in freed memory of the batch's size.
            let size = p.output_size(32, 32).unwrap();
            drop(vec![f32::NAN; refs.len() * 3 * size.0 * size.1]);
            let (batch, bsize) = p.apply_batch(&refs, &seeds).unwrap();
            assert_eq!(bsize, size);
            let per = 3 * size.0 * size.1;
            for (i, (img, &seed)) in refs.iter().zip(&seeds).enumerate() {
                let (one, _) = p.apply(img, seed).unwrap();
                let got = &batch[i * per..(i + 1) * per];
                assert!(
                    got.iter()
                        .zip(&one)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "sample {i} of {p:?}"
                );
            }
        }
    }
}

#[test]
fn mixed_sizes_without_fixed_size_transform_is_an_error() {
    let a = noise(32, 32, 1);
    let b = noise(30, 32, 2);
    let err = Pipeline::cifar_eval()
        .apply_batch(&[&a, &b], &[0, 1])
        .unwrap_err();
    assert!(matches!(err, DataError::Batch { .. }), "{err}");
    assert!(err.to_string().contains("sample 1"), "{err}");
    let (out, size) = Pipeline::eval(32, 28)
        .apply_batch(&[&a, &b], &[0, 1])
        .unwrap();
    assert_eq!(size, (28, 28));
    assert_eq!(out.len(), 2 * 3 * 28 * 28);
}
