//! Every augmentation operation against torchvision's output on the same uint8 images, the
//! policies' tables against torchvision's, and the policies' draws against the distributions
//! those tables define (`scripts/make_ops_fixture.py`: torchvision's `_apply_op` and
//! `adjust_hue` on the tensor path, and its `_augmentation_space` and ImageNet policy).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use cv_data::transforms::ops;
use cv_data::transforms::policies::{self, apply_op, magnitude, Op, Space};
use cv_data::transforms::{AutoAugmentPolicy, Jitter};
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
    Op::from_name(name).unwrap_or_else(|| panic!("unknown op {name} in the fixture"))
}

fn tables() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torchvision_ops.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
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
        // Exact, but where a float is truncated to u8 after arithmetic torch vectorises
        // differently (autocontrast's `(v - min) * 255 / (max - min)`, the HSV round trip of
        // hue): a value on the edge may land one level lower or higher.
        let rounding = ["AutoContrast", "Hue"].contains(&op);
        let allowed = if rounding { ours.len() / 200 } else { 0 };
        assert!(
            differ <= allowed && largest <= 1,
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

fn space_of(name: &str) -> (Space, usize, &'static [Op]) {
    const AUTO_OPS: [Op; 15] = Op::ALL;
    match name {
        "trivial_augment_wide" => (Space::Wide, 31, &policies::WIDE_OPS),
        "rand_augment" => (Space::Standard, 31, &policies::WIDE_OPS),
        _ => (Space::Standard, policies::AUTO_BINS, &AUTO_OPS),
    }
}

#[test]
fn magnitude_tables_and_the_imagenet_policy_are_torchvisions() {
    let t = tables();
    let size = (
        t["image"]["width"].as_u64().unwrap() as usize,
        t["image"]["height"].as_u64().unwrap() as usize,
    );
    for name in ["trivial_augment_wide", "rand_augment", "auto_augment"] {
        let (space, bins, ops) = space_of(name);
        let table = t[name].as_object().unwrap();
        if name != "auto_augment" {
            let mut theirs: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
            let mut ours: Vec<&str> = ops.iter().map(|o| o.name()).collect();
            theirs.sort();
            ours.sort();
            assert_eq!(ours, theirs, "{name}: the operations");
        }
        for (op_name, entry) in table {
            let op = op_named(op_name);
            let expected = entry["magnitudes"].as_array().unwrap();
            if expected.is_empty() {
                assert_eq!(
                    magnitude(op, space, 0, bins, size),
                    None,
                    "{name} {op_name}"
                );
                continue;
            }
            assert_eq!(expected.len(), bins);
            for (bin, v) in expected.iter().enumerate() {
                let (m, signed) = magnitude(op, space, bin, bins, size).unwrap();
                let v = v.as_f64().unwrap();
                assert!(
                    (m - v).abs() <= 1e-6 * v.abs().max(1.0),
                    "{name} {op_name}[{bin}]: {m} vs {v}"
                );
                assert_eq!(
                    signed,
                    entry["signed"].as_bool().unwrap(),
                    "{name} {op_name}"
                );
            }
        }
    }
    let theirs = t["imagenet_policy"].as_array().unwrap();
    let ours = policies::sub_policies(AutoAugmentPolicy::Imagenet);
    assert_eq!(ours.len(), theirs.len());
    for (sub, expected) in ours.iter().zip(theirs) {
        for ((op, p, bin), e) in sub.iter().zip(expected.as_array().unwrap()) {
            assert_eq!(op.name(), e[0].as_str().unwrap());
            assert_eq!(*p, e[1].as_f64().unwrap());
            assert_eq!(bin.map(|b| b as u64), e[2].as_u64());
        }
    }
}

/// `count` observed of `n` draws with probability `p`: within 5 standard deviations.
fn assert_frequency(what: &str, count: usize, n: usize, p: f64) {
    let expected = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt().max(1.0);
    assert!(
        (count as f64 - expected).abs() <= 5.0 * sd,
        "{what}: {count} of {n}, expected {expected:.0} +- {sd:.0}"
    );
}

#[test]
fn policy_draws_follow_torchvisions_distributions() {
    let mut rng = cv_data::seed::rng(11);
    let n = 70_000;
    // TrivialAugmentWide: operation uniform of 14, bin uniform of 31, sign 1/2 where signed.
    let mut ops = HashMap::new();
    let mut bins = vec![0usize; 31];
    let (mut signed, mut negative) = (0, 0);
    for _ in 0..n {
        let d = policies::draw_trivial_augment_wide(&mut rng, 31);
        *ops.entry(d.op).or_insert(0) += 1;
        if let Some(b) = d.bin {
            bins[b] += 1;
            if magnitude(d.op, Space::Wide, b, 31, (1, 1)).unwrap().1 {
                signed += 1;
                negative += usize::from(d.negative);
            }
        }
    }
    for op in policies::WIDE_OPS {
        assert_frequency(op.name(), ops[&op], n, 1.0 / 14.0);
    }
    let with_bins: usize = bins.iter().sum();
    for (b, &c) in bins.iter().enumerate() {
        assert_frequency(&format!("bin {b}"), c, with_bins, 1.0 / 31.0);
    }
    assert_frequency("negative", negative, signed, 0.5);

    // RandAugment: each of num_ops uniform, always at the given bin.
    let mut ops = HashMap::new();
    for _ in 0..n / 2 {
        for d in policies::draw_rand_augment(&mut rng, 2, 9, 31) {
            *ops.entry(d.op).or_insert(0) += 1;
            assert!(d.bin.is_none() || d.bin == Some(9));
        }
    }
    for op in policies::WIDE_OPS {
        assert_frequency(op.name(), ops[&op], n, 1.0 / 14.0);
    }

    // AutoAugment: sub-policy uniform of 25, each step applied with its probability.
    let table = policies::sub_policies(AutoAugmentPolicy::Imagenet);
    let mut expected: HashMap<Op, f64> = HashMap::new();
    for sub in table {
        for (op, p, _) in sub {
            *expected.entry(*op).or_insert(0.0) += p / table.len() as f64;
        }
    }
    let mut seen: HashMap<Op, usize> = HashMap::new();
    for _ in 0..n {
        for d in policies::draw_auto_augment(&mut rng, AutoAugmentPolicy::Imagenet) {
            *seen.entry(d.op).or_insert(0) += 1;
        }
    }
    for (op, p) in &expected {
        // Counted per draw; an op may appear twice in one draw, so p is a rate, below 1 here.
        assert_frequency(op.name(), seen.get(op).copied().unwrap_or(0), n, *p);
    }

    // ColorJitter: every order equally likely, factors uniform in their ranges.
    let j = Jitter {
        brightness: 0.4,
        contrast: 0.0,
        saturation: 1.5,
        hue: 0.1,
    };
    let mut orders = HashMap::new();
    let mut lows = [0usize; 4];
    for _ in 0..n {
        let (order, f) = j.draw(&mut rng);
        *orders.entry(order).or_insert(0) += 1;
        assert!(f[1].is_none());
        let (b, s, h) = (f[0].unwrap(), f[2].unwrap(), f[3].unwrap());
        assert!((0.6..=1.4).contains(&b) && (0.0..=2.5).contains(&s) && (-0.1..=0.1).contains(&h));
        lows[0] += usize::from(b < 1.0);
        lows[2] += usize::from(s < 1.25);
        lows[3] += usize::from(h < 0.0);
    }
    assert_eq!(orders.len(), 24);
    for c in orders.values() {
        assert_frequency("order", *c, n, 1.0 / 24.0);
    }
    assert_frequency("brightness below 1", lows[0], n, 0.5);
    assert_frequency("saturation below 1.25", lows[2], n, 0.5);
    assert_frequency("hue below 0", lows[3], n, 0.5);
}
