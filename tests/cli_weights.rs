//! `cv weights list|fetch` and `cv predict --weights`, against a hub stand-in on 127.0.0.1.

mod common;

use common::*;
use cv_testkit::http::TestServer;

const REPO: &str = "timm/resnet18.tv_in1k";

#[test]
fn fetch_then_offline_from_cache_and_list_shows_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = TestServer::start();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    cv_testkit::hub::serve_file(&server, REPO, "model.safetensors", &body, None);

    let out = expect_code(
        cv(tmp.path()).env("HF_ENDPOINT", server.url()).args([
            "weights",
            "fetch",
            "resnet18.tv_in1k",
        ]),
        0,
    );
    let path = stdout(&out).trim().to_string();
    assert!(
        path.starts_with(tmp.path().join("hf/hub").to_str().unwrap()),
        "{path}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), body);

    server.stop();
    let out = expect_code(
        cv(tmp.path())
            .env("HF_HUB_OFFLINE", "1")
            .args(["weights", "fetch", "resnet18.tv_in1k"]),
        0,
    );
    assert_eq!(stdout(&out).trim(), path);

    let out = expect_code(cv(tmp.path()).args(["weights", "list", "--json"]), 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let rows = v.as_array().unwrap();
    let tv = rows
        .iter()
        .find(|r| r["name"] == "resnet18.tv_in1k")
        .unwrap();
    assert_eq!(tv["cached"], serde_json::json!(path));
    let a1 = rows
        .iter()
        .find(|r| r["name"] == "resnet18.a1_in1k")
        .unwrap();
    assert!(a1["cached"].is_null());
    let out = expect_code(cv(tmp.path()).args(["weights", "list"]), 0);
    assert!(stdout(&out).contains("69.76%"), "{}", stdout(&out));
}

#[test]
fn offline_with_empty_cache_says_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = expect_code(
        cv(tmp.path()).args(["weights", "fetch", "resnet18.a1_in1k", "--offline"]),
        1,
    );
    assert_clean_error(&out, "resnet18.a1_in1k");
}

#[test]
fn truncated_download_fails_and_leaves_nothing_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let body = vec![5u8; 200_000];
    cv_testkit::hub::serve_file(&server, REPO, "model.safetensors", &body, Some(50_000));
    let out = expect_code(
        cv(tmp.path()).env("HF_ENDPOINT", server.url()).args([
            "weights",
            "fetch",
            "resnet18.tv_in1k",
        ]),
        1,
    );
    assert!(!stderr(&out).contains("panicked"));
    let out = expect_code(
        cv(tmp.path())
            .env("HF_HUB_OFFLINE", "1")
            .args(["weights", "fetch", "resnet18.tv_in1k"]),
        1,
    );
    assert_clean_error(&out, "resnet18.tv_in1k");
}

#[test]
fn unknown_weights_name_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = expect_code(cv(tmp.path()).args(["weights", "fetch", "resnet999"]), 2);
    assert_clean_error(&out, "resnet999");
    let img = tmp.path().join("x.png");
    image::RgbImage::new(8, 8).save(&img).unwrap();
    let out = expect_code(
        cv(tmp.path())
            .args(["predict", "--weights", "resnet999.nope"])
            .arg(&img),
        2,
    );
    assert_clean_error(&out, "resnet18.tv_in1k");
}

#[test]
fn predict_with_pretrained_weights_from_the_hub_stand_in() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let bytes = std::fs::read(fixtures.join("resnet18.safetensors")).unwrap();
    cv_testkit::hub::serve_file(&server, REPO, "model.safetensors", &bytes, None);
    let img = tmp.path().join("photo.png");
    let mut rng = cv_testkit::cifar::SplitMix(9);
    cv_testkit::folder::class_image(2, 300, 260, &mut rng)
        .save(&img)
        .unwrap();

    let out = expect_code(
        cv(tmp.path())
            .env("HF_ENDPOINT", server.url())
            .args([
                "predict",
                "--weights",
                "resnet18.tv_in1k",
                "--json",
                "--top-k",
                "5",
            ])
            .arg(&img),
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let preds = v[0]["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 5);
    let probs: Vec<f64> = preds
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{probs:?}");
    assert!(probs.iter().sum::<f64>() <= 1.0 + 1e-5);
    let idx = preds[0]["index"].as_u64().unwrap() as usize;
    assert_eq!(preds[0]["class"], cv_weights_class(idx));

    // The same file given as a path gives the same answer (ImageNet classes and normalisation
    // are assumed without a config.json).
    let local = tmp.path().join("resnet18.safetensors");
    std::fs::write(&local, &bytes).unwrap();
    let out2 = expect_code(
        cv(tmp.path())
            .args(["predict", "--json", "--weights"])
            .arg(&local)
            .arg(&img),
        0,
    );
    let v2: serde_json::Value = serde_json::from_str(&stdout(&out2)).unwrap();
    assert_eq!(v2[0]["predictions"][0]["index"], preds[0]["index"]);
}

fn cv_weights_class(i: usize) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cv-weights/src/imagenet_classes.txt"
    ))
    .unwrap();
    text.lines().nth(i).unwrap().to_string()
}

/// `cv export` writes a half-size bf16 copy that `cv predict` reads, and refuses to write
/// over the file it exports or into a missing folder, with one clean error each.
#[test]
fn export_writes_half_size_weights_and_refuses_bad_outputs() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("net.safetensors");
    std::fs::copy(fixtures.join("net.safetensors"), &source).unwrap();
    let before = std::fs::read(&source).unwrap();
    let half = tmp.path().join("net-bf16.safetensors");
    let out = expect_code(
        cv(tmp.path())
            .args(["export", "--weights"])
            .arg(&source)
            .args(["--dtype", "bf16", "--out"])
            .arg(&half),
        0,
    );
    assert!(
        stdout(&out).contains("net-bf16.safetensors"),
        "{}",
        stdout(&out)
    );
    let (full, small) = (before.len() as u64, std::fs::metadata(&half).unwrap().len());
    assert!(small < full * 11 / 20, "{small} of {full} bytes");
    let png = tmp.path().join("grey.png");
    let mut rng = cv_testkit::cifar::SplitMix(3);
    cv_testkit::folder::class_image(1, 32, 32, &mut rng)
        .save(&png)
        .unwrap();
    let out = expect_code(
        cv(tmp.path())
            .args(["predict", "--json", "--weights"])
            .arg(&half)
            .arg(&png),
        0,
    );
    assert!(stdout(&out).contains("grey.png"), "{}", stdout(&out));

    let out = expect_code(
        cv(tmp.path())
            .args(["export", "--weights"])
            .arg(&source)
            .args(["--dtype", "f16", "--out"])
            .arg(&source),
        1,
    );
    assert_clean_error(&out, "is the file being exported");
    assert_eq!(std::fs::read(&source).unwrap(), before);
    let nowhere = tmp.path().join("missing/net.safetensors");
    let out = expect_code(
        cv(tmp.path())
            .args(["export", "--weights"])
            .arg(&source)
            .arg("--out")
            .arg(&nowhere),
        1,
    );
    assert_clean_error(&out, "missing");
    let out = expect_code(
        cv(tmp.path())
            .args(["export", "--checkpoint"])
            .arg(tmp.path().join("no-run"))
            .arg("--out")
            .arg(&half),
        1,
    );
    assert_clean_error(&out, "no such folder");
    // A folder as --out fails at the rename; the cause is printed once, not once per layer.
    let out = expect_code(
        cv(tmp.path())
            .args(["export", "--weights"])
            .arg(&source)
            .arg("--out")
            .arg(tmp.path()),
        1,
    );
    let err = stderr(&out);
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

/// `cv export --format onnx` writes the model (its content is checked in tract by
/// cv-weights' tests/onnx.rs) and refuses a half dtype and a folder as output, leaving nothing
/// half-written.
#[test]
fn export_onnx_writes_a_model_and_refuses_what_onnx_cannot_be() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let source = fixtures.join("net.safetensors");
    let onnx = tmp.path().join("net.onnx");
    let export = |extra: &[&str], out: &std::path::Path, code| {
        expect_code(
            cv(tmp.path())
                .args(["export", "--format", "onnx", "--weights"])
                .arg(&source)
                .args(extra)
                .arg("--out")
                .arg(out),
            code,
        )
    };
    let out = export(&[], &onnx, 0);
    assert!(stdout(&out).contains("ONNX opset 17"), "{}", stdout(&out));
    assert!(std::fs::metadata(&onnx).unwrap().len() > 200_000);

    let before = std::fs::read(&onnx).unwrap();
    let out = export(&["--dtype", "f16"], &onnx, 2);
    assert_clean_error(&out, "applies to safetensors only");
    assert_eq!(std::fs::read(&onnx).unwrap(), before);
    let out = export(&[], tmp.path(), 1);
    assert_eq!(
        stderr(&out).matches("os error").count(),
        1,
        "{}",
        stderr(&out)
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["net.onnx"], "{left:?}");
}
