//! Every augmentation operation against torchvision's output on the same uint8 images
//! (`scripts/make_ops_fixture.py`: torchvision's `_apply_op` and `adjust_hue`, tensor path).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use cv_data::transforms::ops;
use cv_data::transforms::policies::{apply_op, Op};
use cv_data::RgbImage;

fn fixture() -> BTreeMap<String, Tensor> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torchvision_ops.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .expect("fixture")
        .into_iter()
        .collect()
}

fn to_image(t: &Tensor) -> RgbImage {
    let (h, w, c) = t.dims3().expect("HWC");
    assert_eq!(c, 3);
    let data = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    RgbImage::from_raw(w as u32, h as u32, data).expect("sized")
}

fn op_named(name: &str) -> Op {
    match name {
        "Brightness" => Op::Brightness,
        "Color" => Op::Color,
        "Contrast" => Op::Contrast,
        "Sharpness" => Op::Sharpness,
        "Posterize" => Op::Posterize,
        "Solarize" => Op::Solarize,
        "AutoContrast" => Op::AutoContrast,
        "Equalize" => Op::Equalize,
        "Invert" => Op::Invert,
        "Rotate" => Op::Rotate,
        "TranslateX" => Op::TranslateX,
        "TranslateY" => Op::TranslateY,
        "ShearX" => Op::ShearX,
        "ShearY" => Op::ShearY,
        other => panic!("unknown op {other} in the fixture"),
    }
}

/// (values that differ, largest difference).
fn compare(ours: &RgbImage, theirs: &RgbImage) -> (usize, u8) {
    assert_eq!(ours.dimensions(), theirs.dimensions());
    let diffs = ours.iter().zip(theirs.iter()).map(|(a, b)| a.abs_diff(*b));
    diffs.fold((0, 0), |(n, m), d| (n + usize::from(d > 0), m.max(d)))
}

#[test]
fn operations_match_torchvision() {
    let fx = fixture();
    let mut checked = 0;
    for (key, expected) in &fx {
        let parts: Vec<&str> = key.split(':').collect();
        let [image, op, magnitude] = parts[..] else {
            continue;
        };
        let input = to_image(&fx[&format!("{image}:input")]);
        let magnitude: f64 = magnitude.parse().expect("magnitude");
        let mut ours = input.clone();
        if op == "Hue" {
            ops::adjust_hue(&mut ours, magnitude);
        } else {
            apply_op(&mut ours, op_named(op), magnitude);
        }
        let (differ, largest) = compare(&ours, &to_image(expected));
        eprintln!("{key}: {differ} values differ, by up to {largest}");
        // Integer and blend arithmetic is exact; the affine map and HSV are f32 and may round
        // a value the other way: at most 1 level, or a nearest neighbour at a tie.
        let geometric = ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"].contains(&op);
        let allowed = if geometric {
            ours.len() / 100
        } else {
            ours.len() / 200
        };
        assert!(
            differ <= allowed && (geometric || largest <= 1),
            "{key}: {differ} of {} values differ, by up to {largest}",
            ours.len()
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        2 * 33,
        "every operation of the fixture was compared"
    );
}
