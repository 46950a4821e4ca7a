//! `cv data inspect` and bad data, end to end through the real binary.

mod common;

use common::*;

#[test]
fn inspect_cifar_json_counts_every_split_and_class() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cv_testkit::cifar::write_cifar_dir(tmp.path(), 30, 20, 1).unwrap();
    let out = expect_code(
        cv(tmp.path()).args(["data", "inspect", "--json"]).arg(&dir),
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["format"], "cifar10");
    assert_eq!(v["classes"][0], "airplane");
    assert_eq!(v["classes"].as_array().unwrap().len(), 10);
    assert_eq!(v["splits"]["train"]["total"], 150);
    assert_eq!(v["splits"]["test"]["total"], 20);
    let per: Vec<u64> = v["splits"]["train"]["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(per, vec![15; 10]);
}

#[test]
fn inspect_counts_a_folder_with_one_training_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cv_testkit::cifar::write_cifar_dir_with(tmp.path(), 1, 30, 20, 1).unwrap();
    let out = expect_code(cv(tmp.path()).args(["data", "inspect"]).arg(&dir), 0);
    let text = stdout(&out);
    assert!(text.contains("format cifar10"), "{text}");
    let total = text.lines().find(|l| l.starts_with("total")).unwrap();
    assert_eq!(
        total.split_whitespace().collect::<Vec<_>>(),
        ["total", "30", "20"]
    );
    assert!(text.contains("integrity: ok (50 images decoded"), "{text}");
}

#[test]
fn inspect_image_folder_table() {
    let tmp = tempfile::tempdir().unwrap();
    let root = cv_testkit::folder::make_image_folder(
        &tmp.path().join("pets"),
        &["cat", "dog"],
        5,
        3,
        20,
        2,
    )
    .unwrap();
    let out = expect_code(cv(tmp.path()).args(["data", "inspect"]).arg(&root), 0);
    let text = stdout(&out);
    assert!(text.contains("format folder"), "{text}");
    assert!(text.contains("integrity: ok (16 images decoded"), "{text}");
    let out = expect_code(
        cv(tmp.path())
            .args(["data", "inspect", "--json"])
            .arg(&root),
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["format"], "folder");
    assert_eq!(v["splits"]["test"]["per_class"], serde_json::json!([3, 3]));
}

#[test]
fn missing_data_folder_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let out = expect_code(cv(tmp.path()).args(["data", "inspect"]).arg(&missing), 1);
    assert_clean_error(&out, "nope");
}

#[test]
fn corrupt_batch_file_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cv_testkit::cifar::write_cifar_dir(tmp.path(), 10, 10, 1).unwrap();
    let f = dir.join("data_batch_2.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let out = expect_code(cv(tmp.path()).args(["data", "inspect"]).arg(&dir), 1);
    assert_clean_error(&out, "data_batch_2.bin");
}

#[test]
fn bad_usage_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = expect_code(cv(tmp.path()).args(["data", "frobnicate"]), 2);
    assert!(!stderr(&out).contains("panicked"));
    let out = expect_code(cv(tmp.path()).args(["train", "--epochs", "many"]), 2);
    assert!(stderr(&out).contains("--epochs"));
}
