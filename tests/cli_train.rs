//! `cv train`, `eval`, `predict`, `finetune` and `--resume` end to end through the real
//! binary, on data the tests make.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use cv_testkit::http::TestServer;

fn cifar(root: &Path, per_batch: usize, test: usize) -> std::path::PathBuf {
    cv_testkit::cifar::write_cifar_dir(root, per_batch, test, 5).unwrap()
}

fn cifar_png(path: &Path, class: u8) {
    let mut rng = cv_testkit::cifar::SplitMix(77);
    let planar = cv_testkit::cifar::synthetic_image(class, &mut rng);
    let img = image::RgbImage::from_fn(32, 32, |x, y| {
        let i = (y * 32 + x) as usize;
        image::Rgb([planar[i], planar[1024 + i], planar[2048 + i]])
    });
    img.save(path).unwrap();
}

#[test]
fn train_then_eval_then_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path(), 100, 100);
    let out = tmp.path().join("run");
    let o = expect_code(
        cv(tmp.path())
            .args([
                "train",
                "--model",
                "cnn",
                "--epochs",
                "5",
                "--batch-size",
                "25",
                "--quiet",
                "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&out),
        0,
    );
    assert!(stdout(&o).contains("done: 5 epochs"), "{}", stdout(&o));
    for f in [
        "model.safetensors",
        "config.json",
        "metrics.jsonl",
        "curves.png",
        "train_state.safetensors",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for k in [
        "epoch",
        "lr",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "seconds",
        "images_per_s",
    ] {
        assert!(
            lines[4].get(k).is_some(),
            "metrics.jsonl lacks {k}: {}",
            lines[4]
        );
    }

    let v = eval_json(tmp.path(), &out, &data);
    assert_eq!(v["images"], 100);
    let acc = v["accuracy"].as_f64().unwrap();
    assert!(acc > 0.5, "accuracy {acc} after 5 epochs on learnable data");
    assert!(
        (acc - lines[4]["test_acc"].as_f64().unwrap()).abs() < 1e-6,
        "eval agrees with training's last test accuracy"
    );
    assert_eq!(v["per_class"].as_array().unwrap().len(), 10);
    assert_eq!(v["per_class"][0]["class"], "airplane");
    assert_eq!(v["confusion"].as_array().unwrap().len(), 10);
    let total: u64 = v["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(total, 100);

    reports_of_the_run(tmp.path(), &out, &data, acc);

    let png = tmp.path().join("ship.png");
    cifar_png(&png, 8);
    explain_the_small_cnn(tmp.path(), &out, &png);
    let o = predict(tmp.path(), &out, &["--json", "--top-k", "3"], &[&png], 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let preds = v[0]["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3);
    assert_eq!(v[0]["image"], png.display().to_string());
    if acc > 0.9 {
        assert_eq!(preds[0]["class"], "ship");
    }
}

/// The sections of a report page and its count of top-loss tiles.
fn report_sections(path: &Path) -> (String, usize) {
    let html = std::fs::read_to_string(path).unwrap();
    for id in cv_train::run_report::SECTIONS {
        assert!(
            html.contains(&format!("id=\"{id}\"")),
            "{}: section {id}",
            path.display()
        );
    }
    assert!(html.contains(">airplane</text>") && html.contains("<td>truck</td>"));
    assert!(!html.contains("<script"));
    let tiles = html.matches("<figure class=\"tile\">").count();
    (html, tiles)
}

/// The report training wrote, `cv report` (recorded data, then --out and --top-losses),
/// `cv eval --report`, and their bad input.
fn reports_of_the_run(home: &Path, out: &Path, data: &Path, acc: f64) {
    let accuracy = format!("top-1 accuracy <b>{:.2}%</b>", 100.0 * acc);
    let (html, tiles) = report_sections(&out.join("report.html"));
    assert!(
        html.contains(&accuracy),
        "training's report has the final accuracy"
    );
    assert!(html.contains("<th>epochs</th><td>5</td>") && html.contains("train loss"));
    assert_eq!(tiles, 12);

    let other = home.join("other.html");
    let o = expect_code(
        cv(home)
            .arg("report")
            .arg(out)
            .args(["--top-losses", "5", "--out"])
            .arg(&other),
        0,
    );
    assert!(stdout(&o).contains("100 test images"), "{}", stdout(&o));
    let (html, tiles) = report_sections(&other);
    assert!(html.contains(&accuracy));
    assert_eq!(tiles, 5);

    let dir = home.join("eval-report");
    let o = expect_code(
        cv(home)
            .args(["eval", "--checkpoint"])
            .arg(out)
            .arg("--data")
            .arg(data)
            .arg("--report")
            .arg(&dir),
        0,
    );
    assert!(stdout(&o).contains("100 images"), "{}", stdout(&o));
    let (html, _) = report_sections(&dir.join("report.html"));
    assert!(html.contains(&accuracy));

    // Bad input: not a run, a --report that is a file, data of other classes.
    assert_clean_error(
        &expect_code(cv(home).arg("report").arg(data), 1),
        "not a run folder",
    );
    assert_clean_error(
        &expect_code(
            cv(home)
                .args(["eval", "--checkpoint"])
                .arg(out)
                .arg("--data")
                .arg(data)
                .arg("--report")
                .arg(&other),
            2,
        ),
        "a file",
    );
    let folder = home.join("two-classes");
    for class in ["a", "b"] {
        for split in ["train", "test"] {
            let d = folder.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            cifar_png(&d.join("x.png"), 1);
        }
    }
    assert_clean_error(
        &expect_code(
            cv(home).arg("report").arg(out).arg("--data").arg(&folder),
            1,
        ),
        "was trained on",
    );
}

/// `cv explain` on the small CNN: its default layer is conv2 (10x10 for a 32x32 input).
fn explain_the_small_cnn(home: &Path, run: &Path, png: &Path) {
    let cams = home.join("cams");
    let o = expect_code(
        cv(home)
            .args(["explain", "--json", "--checkpoint"])
            .arg(run)
            .arg("--out")
            .arg(&cams)
            .arg(png),
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["layer"], "conv2", "{v}");
    let npy = std::fs::read(cams.join("ship.cam.npy")).unwrap();
    let header = String::from_utf8_lossy(&npy[..npy.len().min(128)]).into_owned();
    assert!(header.contains("(10, 10)"), "{header}");
    assert!(cams.join("ship.cam.png").is_file());
}

/// `cv eval --json` of the run in `out` on `data`.
fn eval_json(home: &Path, out: &Path, data: &Path) -> serde_json::Value {
    let o = expect_code(
        cv(home)
            .args(["eval", "--json", "--checkpoint"])
            .arg(out)
            .arg("--data")
            .arg(data),
        0,
    );
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// `cv predict --checkpoint RUN FLAGS... IMAGES...`, which must exit with `code`.
fn predict(home: &Path, run: &Path, flags: &[&str], images: &[&Path], code: i32) -> Output {
    expect_code(
        cv(home)
            .arg("predict")
            .args(flags)
            .arg("--checkpoint")
            .arg(run)
            .args(images),
        code,
    )
}

/// Trains the small CNN for one epoch on `data` into `out`.
fn train_one_epoch(home: &Path, data: &Path, out: &Path) {
    expect_code(
        cv(home)
            .args(["train", "--model", "cnn", "--epochs", "1"])
            .args(["--batch-size", "10", "--quiet", "--data"])
            .arg(data)
            .arg("--out")
            .arg(out),
        0,
    );
}

#[test]
fn a_folder_with_one_training_batch_trains_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cv_testkit::cifar::write_cifar_dir_with(tmp.path(), 1, 30, 20, 5).unwrap();
    let out = tmp.path().join("run");
    train_one_epoch(tmp.path(), &data, &out);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1, "{metrics}");
    assert_eq!(eval_json(tmp.path(), &out, &data)["images"], 20);
}

#[test]
fn predict_classifies_the_good_images_and_names_the_bad_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cv_testkit::cifar::write_cifar_dir_with(tmp.path(), 1, 20, 10, 5).unwrap();
    let out = tmp.path().join("run");
    train_one_epoch(tmp.path(), &data, &out);
    let ship = tmp.path().join("ship.png");
    cifar_png(&ship, 8);
    let bad = tmp.path().join("noise.jpg");
    let mut rng = cv_testkit::cifar::SplitMix(3);
    let noise: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
    std::fs::write(&bad, noise).unwrap();
    let frog = tmp.path().join("frog.png");
    cifar_png(&frog, 6);
    let images = [ship.as_path(), &bad, &frog];

    let o = predict(tmp.path(), &out, &["--top-k", "2"], &images, 1);
    let text = stdout(&o);
    for good in [&ship, &frog] {
        assert!(text.contains(&good.display().to_string()), "{text}");
    }
    assert!(!text.contains("noise.jpg"), "{text}");
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 2, "{err}");
    assert!(
        errors[0].starts_with(&format!("error: {}: ", bad.display())),
        "{err}"
    );
    assert!(errors[1].contains("1 of 3 images"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let o = predict(tmp.path(), &out, &["--json", "--top-k", "2"], &images, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    for (entry, path) in entries.iter().zip(images) {
        assert_eq!(entry["image"], path.display().to_string());
    }
    assert_eq!(entries[0]["predictions"].as_array().unwrap().len(), 2);
    assert_eq!(entries[2]["predictions"].as_array().unwrap().len(), 2);
    assert!(entries[1].get("predictions").is_none(), "{}", entries[1]);
    let message = entries[1]["error"].as_str().unwrap();
    assert!(message.contains("noise.jpg"), "{message}");
}

#[test]
fn resume_gives_the_same_weights_as_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path(), 20, 20);
    let base = [
        "train",
        "--model",
        "cnn",
        "--batch-size",
        "25",
        "--schedule",
        "constant",
        "--quiet",
        "--seed",
        "3",
    ];
    let whole = tmp.path().join("whole");
    expect_code(
        cv(tmp.path())
            .args(base)
            .args(["--epochs", "2", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&whole),
        0,
    );
    let split = tmp.path().join("split");
    expect_code(
        cv(tmp.path())
            .args(base)
            .args(["--epochs", "1", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&split),
        0,
    );
    // A second run into the same folder without --resume is refused rather than overwriting it.
    let o = expect_code(
        cv(tmp.path())
            .args(base)
            .args(["--epochs", "2", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&split),
        1,
    );
    assert_clean_error(&o, "resume");
    expect_code(
        cv(tmp.path())
            .args(base)
            .args(["--epochs", "2", "--resume", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&split),
        0,
    );
    let a = std::fs::read(whole.join("model.safetensors")).unwrap();
    let b = std::fs::read(split.join("model.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ from uninterrupted training");
    let m = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    assert_eq!(m.lines().count(), 2);
}

#[test]
fn replay_from_config_json_gives_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path(), 30, 20);
    let first = tmp.path().join("first");
    expect_code(
        cv(tmp.path())
            .args([
                "train",
                "--model",
                "cnn",
                "--epochs",
                "2",
                "--batch-size",
                "20",
                "--lr",
                "0.03",
                "--label-smoothing",
                "0.1",
                "--seed",
                "5",
                "--limit-train",
                "100",
                "--schedule",
                "onecycle",
                "--quiet",
                "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&first),
        0,
    );
    // Everything comes from the config: no flag but where to write.
    let again = tmp.path().join("again");
    expect_code(
        cv(tmp.path())
            .args(["train", "--quiet", "--config"])
            .arg(first.join("config.json"))
            .arg("--out")
            .arg(&again),
        0,
    );
    let a = std::fs::read(first.join("model.safetensors")).unwrap();
    let b = std::fs::read(again.join("model.safetensors")).unwrap();
    assert!(a == b, "the replay's weights differ from the run's");
    let config = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
    };
    assert_eq!(config(&first)["train"], config(&again)["train"]);
    assert_eq!(config(&again)["data"]["limit_train"], 100);

    // A flag beside --config overrides one value; the folder form of --config works too.
    let shorter = tmp.path().join("shorter");
    expect_code(
        cv(tmp.path())
            .args(["train", "--quiet", "--epochs", "1", "--config"])
            .arg(&first)
            .arg("--out")
            .arg(&shorter),
        0,
    );
    assert_eq!(config(&shorter)["train"]["epochs"], 1);
    assert_eq!(config(&shorter)["train"]["lr"], 0.03);

    // A scratch run is replayed by `cv train`, and a config that is not one is named.
    let o = expect_code(cv(tmp.path()).args(["finetune", "--config"]).arg(&first), 2);
    assert_clean_error(&o, "cv train --config");
    let o = expect_code(
        cv(tmp.path())
            .args(["train", "--config"])
            .arg(first.join("metrics.jsonl")),
        1,
    );
    assert_clean_error(&o, "metrics.jsonl");
}

#[test]
fn sigkill_mid_epoch_leaves_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path(), 400, 50);
    let out = tmp.path().join("run");
    let mut child = cv(tmp.path())
        .args([
            "train",
            "--model",
            "cnn",
            "--epochs",
            "50",
            "--batch-size",
            "50",
            "--quiet",
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.join("model.safetensors").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Well inside a later epoch, maybe during a checkpoint write.
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    let o = expect_code(
        cv(tmp.path())
            .args(["eval", "--json", "--checkpoint"])
            .arg(&out)
            .arg("--data")
            .arg(&data),
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["images"], 50);
    // And the run continues from its last completed epoch.
    let done = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(done >= 1);
    let more = (done + 1).to_string();
    expect_code(
        cv(tmp.path())
            .args([
                "train",
                "--model",
                "cnn",
                "--batch-size",
                "50",
                "--quiet",
                "--resume",
                "--epochs",
                &more,
                "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&out),
        0,
    );
    let lines = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, done + 1);
}

#[test]
fn small_cnn_refuses_other_image_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path(), 2, 2);
    let o = expect_code(
        cv(tmp.path())
            .args(["train", "--model", "cnn", "--image-size", "224", "--data"])
            .arg(&data),
        2,
    );
    assert_clean_error(&o, "32x32");
}

#[test]
fn missing_data_folder_points_at_fetch_data() {
    let tmp = tempfile::tempdir().unwrap();
    let o = expect_code(
        cv(tmp.path())
            .args(["train", "--data"])
            .arg(tmp.path().join("nothing")),
        1,
    );
    assert_clean_error(&o, "cargo xtask fetch-data");
}

#[test]
fn corrupt_batch_file_stops_training_with_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path(), 5, 5);
    std::fs::write(data.join("data_batch_4.bin"), vec![0u8; 5000]).unwrap();
    let o = expect_code(
        cv(tmp.path())
            .args(["train", "--quiet", "--data"])
            .arg(&data),
        1,
    );
    assert_clean_error(&o, "data_batch_4.bin");
}

#[test]
fn finetune_errors_unknown_name_and_offline_empty_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path(), 2, 2);
    let o = expect_code(
        cv(tmp.path())
            .args(["finetune", "--weights", "resnet50.nope", "--data"])
            .arg(&data),
        2,
    );
    assert_clean_error(&o, "resnet50.nope");
    let o = expect_code(
        cv(tmp.path())
            .args(["finetune", "--offline", "--quiet", "--data"])
            .arg(&data),
        1,
    );
    assert_clean_error(&o, "resnet18.tv_in1k");
}

#[test]
fn finetune_probe_and_full_from_the_hub_stand_in() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let bytes = std::fs::read(fixtures.join("resnet18.safetensors")).unwrap();
    cv_testkit::hub::serve_file(
        &server,
        "timm/resnet18.tv_in1k",
        "model.safetensors",
        &bytes,
        None,
    );
    let root = cv_testkit::folder::make_image_folder(
        &tmp.path().join("shapes"),
        &["red", "green", "blue"],
        10,
        5,
        40,
        4,
    )
    .unwrap();

    let probe = tmp.path().join("probe");
    let o = expect_code(
        cv(tmp.path())
            .env("HF_ENDPOINT", server.url())
            .args([
                "finetune",
                "--mode",
                "probe",
                "--epochs",
                "15",
                "--image-size",
                "32",
                "--batch-size",
                "10",
                "--quiet",
                "--data",
            ])
            .arg(&root)
            .arg("--out")
            .arg(&probe),
        0,
    );
    assert!(stdout(&o).contains("done: 15 epochs"), "{}", stdout(&o));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(probe.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "resnet18");
    assert_eq!(cfg["classes"], serde_json::json!(["blue", "green", "red"]));

    // Replayed from its config alone, offline (the weights come from the cache by the name
    // the run recorded): the same weights, bit for bit.
    let replay = tmp.path().join("probe-replay");
    expect_code(
        cv(tmp.path())
            .env("HF_HUB_OFFLINE", "1")
            .args(["finetune", "--quiet", "--config"])
            .arg(&probe)
            .arg("--out")
            .arg(&replay),
        0,
    );
    assert!(
        std::fs::read(probe.join("model.safetensors")).unwrap()
            == std::fs::read(replay.join("model.safetensors")).unwrap(),
        "the fine-tuning replay's weights differ"
    );

    // Full fine-tuning, this time from the checkpoint file the hub stand-in put in the cache,
    // given as a path (offline: nothing may be downloaded).
    let full = tmp.path().join("full");
    let cached = tmp.path().join("hf/hub/models--timm--resnet18.tv_in1k");
    assert!(cached.is_dir());
    expect_code(
        cv(tmp.path())
            .env("HF_HUB_OFFLINE", "1")
            .args([
                "finetune",
                "--mode",
                "full",
                "--epochs",
                "1",
                "--image-size",
                "32",
                "--batch-size",
                "10",
                "--quiet",
                "--data",
            ])
            .arg(&root)
            .arg("--out")
            .arg(&full),
        0,
    );
    let o = expect_code(
        cv(tmp.path())
            .args(["eval", "--json", "--checkpoint"])
            .arg(&full)
            .arg("--data")
            .arg(&root),
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["images"], 15);
}

#[test]
fn mixing_and_early_stop_flags_reach_the_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path(), 20, 30);
    let out = tmp.path().join("run");
    expect_code(
        cv(tmp.path())
            .args([
                "train",
                "--model",
                "cnn",
                "--epochs",
                "2",
                "--batch-size",
                "20",
            ])
            .args([
                "--mixup",
                "0.2",
                "--cutmix",
                "1",
                "--early-stop",
                "3",
                "--quiet",
            ])
            .args(["--accum-steps", "2", "--val-split", "0.2"])
            .args([
                "--auto-augment",
                "ta_wide",
                "--color-jitter",
                "0.2,0.2,0.2,0.05",
            ])
            .args(["--random-erasing", "0.25", "--ema-decay", "0.9"])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out),
        0,
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["train"]["mixup_alpha"], 0.2);
    assert_eq!(config["train"]["cutmix_alpha"], 1.0);
    assert_eq!(config["train"]["early_stop"], 3);
    assert_eq!(config["train"]["accum_steps"], 2);
    assert_eq!(config["train"]["val_split"], 0.2);
    assert_eq!(config["train"]["auto_augment"], "trivial");
    assert_eq!(config["train"]["ema_decay"], 0.9);
    let steps: Vec<&str> = config["train_transforms"]["transforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "random_crop",
            "random_horizontal_flip",
            "color_jitter",
            "trivial_augment_wide",
            "random_erasing"
        ]
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.lines().all(|l| l.contains("\"val_acc\"")),
        "{metrics}"
    );
    assert!(out.join("model_best.safetensors").is_file());
    // Bad values are usage errors naming the flag's field, before anything is read.
    for (flags, needle) in [
        (&["train", "--mixup", "0"][..], "mixup alpha"),
        (&["train", "--cutmix=-1"][..], "cutmix alpha"),
        (&["train", "--early-stop", "0"][..], "early_stop"),
        (&["train", "--accum-steps", "0"][..], "accum_steps"),
        (&["train", "--val-split", "1.5"][..], "val_split"),
        (
            &["finetune", "--mode", "probe", "--mixup", "0.2"][..],
            "probe mode",
        ),
        (
            &["finetune", "--mode", "probe", "--auto-augment", "rand"][..],
            "probe mode",
        ),
        (
            &["train", "--randaugment-ops", "3"][..],
            "--auto-augment rand",
        ),
        (
            &[
                "train",
                "--auto-augment",
                "rand",
                "--randaugment-magnitude",
                "31",
            ][..],
            "randaugment_magnitude",
        ),
        (
            &["train", "--color-jitter", "0.4,0.4"][..],
            "four strengths",
        ),
        (&["train", "--color-jitter", "0,0,0,0.9"][..], "hue"),
        (&["train", "--random-erasing", "0"][..], "random_erasing"),
        (&["train", "--ema-decay", "1"][..], "ema_decay"),
    ] {
        let o = expect_code(cv(tmp.path()).args(flags).arg("--data").arg(&data), 2);
        assert_clean_error(&o, needle);
    }
}

/// `ROOT/<class>/*` without train/ and test/: inspected as such, refused for training
/// without --test-split, trained with it (and --val-split), and evaluated on the same
/// held-out images by `cv eval --test-split` and by `cv report` from the recorded source.
#[test]
fn class_folders_without_a_split_train_with_test_split() {
    let tmp = tempfile::tempdir().unwrap();
    let made =
        cv_testkit::folder::make_image_folder(&tmp.path().join("x"), &["ant", "bee"], 20, 0, 32, 3)
            .unwrap();
    let root = made.join("train");
    let o = expect_code(cv(tmp.path()).args(["data", "inspect"]).arg(&root), 0);
    let text = stdout(&o);
    assert!(
        text.contains("class_folders") && text.contains("--test-split"),
        "{text}"
    );
    let out = tmp.path().join("run");
    let train = |extra: &[&str], code: i32| {
        expect_code(
            cv(tmp.path())
                .args(["train", "--epochs", "1", "--batch-size", "10", "--quiet"])
                .args(extra)
                .arg("--data")
                .arg(&root)
                .arg("--out")
                .arg(&out),
            code,
        )
    };
    assert_clean_error(&train(&[], 1), "--test-split");
    assert!(!out.join("model.safetensors").exists());
    train(&["--test-split", "0.25", "--val-split", "0.2"], 0);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["data"]["test_split"], 0.25);
    let eval = |extra: &[&str]| {
        let o = expect_code(
            cv(tmp.path())
                .args(["eval", "--json", "--checkpoint"])
                .arg(&out)
                .arg("--data")
                .arg(&root)
                .args(extra),
            0,
        );
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };
    let held_out = eval(&["--test-split", "0.25"]);
    assert_eq!(held_out["images"], 10, "5 of each class's 20");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(
        held_out["accuracy"], record["test_acc"],
        "the run's own test split"
    );
    assert_eq!(eval(&[])["images"], 40, "without --test-split: every image");
    let o = expect_code(cv(tmp.path()).arg("report").arg(&out), 0);
    assert!(stdout(&o).starts_with("10 test images"), "{}", stdout(&o));
}

/// The scarce-data kit on `cv finetune` in one command (issue 16's): without --mode it trains
/// the whole network, since a probe never sees augmented images; it resumes, keeps
/// model_best.safetensors with torchvision's state-dict keys and shapes, and `cv eval` reads it.
#[test]
fn finetune_with_the_scarce_data_kit_resumes_and_keeps_the_best() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let bytes = std::fs::read(fixtures.join("resnet18.safetensors")).unwrap();
    cv_testkit::hub::serve_file(
        &server,
        "timm/resnet18.tv_in1k",
        "model.safetensors",
        &bytes,
        None,
    );
    let root = cv_testkit::folder::make_image_folder(
        &tmp.path().join("shapes"),
        &["red", "green", "blue"],
        10,
        4,
        40,
        5,
    )
    .unwrap();
    let out = tmp.path().join("kit");
    let finetune = |extra: &[&str]| {
        expect_code(
            cv(tmp.path())
                .env("HF_ENDPOINT", server.url())
                .args(["finetune", "--auto-augment", "trivial", "--mixup", "0.2"])
                .args([
                    "--cutmix",
                    "1.0",
                    "--ema-decay",
                    "0.99",
                    "--label-smoothing",
                    "0.1",
                ])
                .args([
                    "--val-split",
                    "0.1",
                    "--early-stop",
                    "5",
                    "--image-size",
                    "32",
                ])
                .args(["--batch-size", "9", "--quiet"])
                .args(extra)
                .arg("--data")
                .arg(&root)
                .arg("--out")
                .arg(&out),
            0,
        )
    };
    finetune(&["--epochs", "1"]);
    let o = finetune(&["--epochs", "2", "--resume"]);
    assert!(stdout(&o).contains("done: 2 epochs"), "{}", stdout(&o));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["train"]["mode"], "full");
    assert_eq!(
        config["train"]["lr"], 0.01,
        "the full fine-tuning rate, no --lr given"
    );
    assert_eq!(config["train"]["ema_decay"], 0.99);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);

    // torchvision's keys and shapes, the head resized to 3 classes: what strict=True checks.
    let reference = candle_core::safetensors::load(
        fixtures.join("resnet18.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let best = candle_core::safetensors::load(
        out.join("model_best.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut keys: Vec<&String> = best.keys().collect();
    // timm's file leaves out BatchNorm's num_batches_tracked, which torchvision's has.
    let counters: Vec<String> = reference
        .keys()
        .filter_map(|k| k.strip_suffix("running_mean"))
        .map(|bn| format!("{bn}num_batches_tracked"))
        .collect();
    let mut expected: Vec<&String> = reference.keys().chain(&counters).collect();
    keys.sort();
    expected.sort();
    assert_eq!(keys, expected);
    for (k, t) in &best {
        let want = if k.ends_with("num_batches_tracked") {
            vec![]
        } else if k == "fc.weight" {
            vec![3, 512]
        } else if k == "fc.bias" {
            vec![3]
        } else {
            reference[k].dims().to_vec()
        };
        assert_eq!(t.dims(), &want[..], "{k}");
    }
    let o = expect_code(
        cv(tmp.path())
            .args(["eval", "--json", "--checkpoint"])
            .arg(&out)
            .arg("--data")
            .arg(&root),
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["images"], 12);
}

/// `cv distill`: a student trained with a teacher's outputs records the teacher in its
/// `config.json` and replays with `cv train --config`; a missing teacher is one clean error.
#[test]
fn distill_trains_a_student_that_records_and_replays_its_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path(), 20, 20);
    let teacher = tmp.path().join("teacher");
    train_one_epoch(tmp.path(), &data, &teacher);
    let student = tmp.path().join("student");
    let distill = |out: &Path, teacher: &Path, code| {
        expect_code(
            cv(tmp.path())
                .args(["distill", "--student", "cnn", "--teacher"])
                .arg(teacher)
                .args(["--temperature", "3", "--alpha", "0.7", "--epochs", "1"])
                .args(["--batch-size", "10", "--quiet", "--data"])
                .arg(&data)
                .arg("--out")
                .arg(out),
            code,
        )
    };
    let out = distill(&student, &teacher, 0);
    assert!(stdout(&out).contains("test accuracy"), "{}", stdout(&out));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(student.join("config.json")).unwrap())
            .unwrap();
    let recorded = &config["train"]["distill"];
    assert_eq!(recorded["teacher"], teacher.to_str().unwrap(), "{recorded}");
    assert_eq!(
        (recorded["temperature"].as_f64(), recorded["alpha"].as_f64()),
        (Some(3.0), Some(0.7))
    );

    let again = tmp.path().join("again");
    expect_code(
        cv(tmp.path())
            .args(["train", "--quiet", "--config"])
            .arg(&student)
            .arg("--out")
            .arg(&again),
        0,
    );
    assert_eq!(
        std::fs::read(student.join("model.safetensors")).unwrap(),
        std::fs::read(again.join("model.safetensors")).unwrap()
    );

    let nowhere = tmp.path().join("no-teacher");
    let out = distill(&tmp.path().join("s2"), &nowhere, 1);
    assert_clean_error(&out, "no-teacher");
    assert!(!tmp.path().join("s2").exists());
}

#[test]
fn quantize_makes_an_int8_run_that_eval_and_predict_take_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path(), 100, 100);
    let run = tmp.path().join("f32");
    expect_code(
        cv(tmp.path())
            .args(["train", "--model", "cnn", "--epochs", "3"])
            .args(["--batch-size", "20", "--quiet", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&run),
        0,
    );
    let quantize = |from: &Path, out: &Path, code| {
        expect_code(
            cv(tmp.path())
                .args(["quantize", "--quiet", "--calibration", "64", "--checkpoint"])
                .arg(from)
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(out),
            code,
        )
    };
    let int8 = tmp.path().join("int8");
    let out = quantize(&run, &int8, 0);
    assert!(
        stdout(&out).contains("64 calibration images"),
        "{}",
        stdout(&out)
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(int8.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization"]["scheme"], "int8-static", "{config}");
    assert_eq!(config["quantization"]["calibration_images"], 64);

    let float = eval_json(tmp.path(), &run, &data);
    let quant = eval_json(tmp.path(), &int8, &data);
    let (fa, qa) = (
        float["accuracy"].as_f64().unwrap(),
        quant["accuracy"].as_f64().unwrap(),
    );
    assert!(fa > 0.5, "the f32 run did not learn: {fa}");
    assert!((fa - qa).abs() <= 0.02, "int8 {qa} vs f32 {fa}");

    let png = tmp.path().join("img.png");
    cifar_png(&png, 2);
    let top = |run: &Path| {
        let o = predict(tmp.path(), run, &["--json"], &[&png], 0);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v[0]["predictions"][0]["class"].clone()
    };
    let (f, q) = (top(&run), top(&int8));
    assert!(f.is_string() && f == q, "top-1 {f} (f32) vs {q} (int8)");

    // Refused: an existing folder, an int8 checkpoint where f32 is needed, a missing one.
    let before = std::fs::read(int8.join("model.safetensors")).unwrap();
    assert_clean_error(&quantize(&run, &int8, 1), "already exists");
    assert_eq!(
        std::fs::read(int8.join("model.safetensors")).unwrap(),
        before
    );
    assert_clean_error(
        &quantize(&int8, &tmp.path().join("twice"), 1),
        "int8 checkpoint",
    );
    let nowhere = tmp.path().join("no").join("such").join("int8");
    assert_clean_error(&quantize(&run, &nowhere, 1), "parent folder does not exist");
    assert!(!tmp.path().join("no").exists());
    assert_clean_error(
        &quantize(&tmp.path().join("nothing"), &tmp.path().join("n8"), 1),
        "nothing",
    );
    let exported = expect_code(
        cv(tmp.path())
            .args(["export", "--checkpoint"])
            .arg(&int8)
            .arg("--out")
            .arg(tmp.path().join("x.safetensors")),
        1,
    );
    assert_clean_error(&exported, "int8 checkpoint");
    let finetuned = expect_code(
        cv(tmp.path())
            .args(["finetune", "--quiet", "--epochs", "1", "--weights"])
            .arg(&int8)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(tmp.path().join("ft")),
        1,
    );
    assert_clean_error(&finetuned, "int8 checkpoint");
    assert!(!tmp.path().join("ft").exists());
    // Class activation maps at the int8 network's last spatial layer, refused before it.
    let explain = |layer: &[&str], code| {
        expect_code(
            cv(tmp.path())
                .args(["explain", "--checkpoint"])
                .arg(&int8)
                .args(layer)
                .arg("--out")
                .arg(tmp.path().join("maps"))
                .arg(&png),
            code,
        )
    };
    explain(&[], 0);
    let maps = std::fs::read_dir(tmp.path().join("maps")).unwrap().count();
    assert!(maps >= 1, "no map written");
    assert_clean_error(&explain(&["--layer", "conv1"], 1), "conv2 only");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n == "twice" || n == "n8" || n.starts_with("x."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
