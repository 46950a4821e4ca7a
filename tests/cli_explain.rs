//! `cv explain`: heatmaps over photos with the shared parity ResNet-18 as local weights.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::*;

fn photo(path: &Path, class: usize, seed: u64) {
    let mut rng = cv_testkit::cifar::SplitMix(seed);
    cv_testkit::folder::class_image(class, 300, 260, &mut rng)
        .save(path)
        .unwrap();
}

fn npy_shape(path: &str) -> Vec<usize> {
    let t = Tensor::read_npy(path).unwrap();
    assert_eq!(t.device().location(), Device::Cpu.location());
    t.dims().to_vec()
}

#[test]
fn explains_good_photos_and_names_the_bad_one() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, bad) = (
        tmp.path().join("a.png"),
        tmp.path().join("sub-b.jpg"),
        tmp.path().join("broken.png"),
    );
    photo(&a, 1, 3);
    photo(&b, 4, 5);
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out_dir = tmp.path().join("cams");
    let weights = fixtures.join("resnet18.safetensors");
    let out = expect_code(
        cv(tmp.path())
            .args(["explain", "--json", "--top-k", "3", "--weights"])
            .arg(&weights)
            .arg("--out")
            .arg(&out_dir)
            .args([&a, &bad, &b]),
        1,
    );
    let err = stderr(&out);
    assert!(err.contains("broken.png"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items[1]["error"].as_str().unwrap().contains("broken.png"));
    for item in [&items[0], &items[2]] {
        assert_eq!(item["method"], "gradcam");
        assert_eq!(item["layer"], "layer4");
        let top = item["predictions"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(item["explained"]["index"], top[0]["index"]);
        let overlay = image::open(item["overlay"].as_str().unwrap()).unwrap();
        assert_eq!((overlay.width(), overlay.height()), (224, 224));
        assert_eq!(npy_shape(item["map"].as_str().unwrap()), vec![7, 7]);
        let up = Tensor::read_npy(item["upsampled"].as_str().unwrap()).unwrap();
        assert_eq!(up.dims(), &[224, 224]);
        let max: f32 = up.max_all().unwrap().to_scalar().unwrap();
        assert!((max - 1.0).abs() < 1e-4, "upsampled max {max}");
    }
    assert!(out_dir.join("a.cam.png").is_file());
    assert!(out_dir.join("sub-b.cam_upsampled.npy").is_file());
    assert!(!out_dir.join("broken.cam.png").exists());
}

#[test]
fn class_layer_and_method_flags() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("x.png");
    photo(&img, 2, 7);
    let weights = fixtures.join("resnet18.safetensors");
    let run = |extra: &[&str], code: i32| {
        expect_code(
            cv(tmp.path())
                .args(["explain", "--json", "--weights"])
                .arg(&weights)
                .arg("--out")
                .arg(tmp.path().join("o"))
                .args(extra)
                .arg(&img),
            code,
        )
    };
    let out = run(
        &[
            "--class",
            "goldfish",
            "--layer",
            "layer3",
            "--method",
            "gradcam++",
        ],
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v[0]["explained"]["index"], 1);
    assert_eq!(v[0]["layer"], "layer3");
    assert_eq!(v[0]["map_shape"], serde_json::json!([14, 14]));
    run(&["--method", "cam", "--class", "7"], 0);
    assert_clean_error(&run(&["--class", "no such class"], 2), "no such class");
    assert_clean_error(&run(&["--class", "1000"], 2), "1000 classes");
    assert_clean_error(&run(&["--layer", "fc"], 1), "layer4.1");
    assert_clean_error(&run(&["--method", "lime"], 2), "lime");
    assert_clean_error(
        &run(&["--method", "cam", "--layer", "layer3"], 1),
        "gradcam",
    );
}
