//! Where the torchvision parity fixtures live, and what to do when they are absent.

use std::path::PathBuf;

/// Environment variable that overrides the fixtures folder.
pub const FIXTURES_DIR_ENV: &str = "CV_FIXTURES_DIR";
/// Environment variable set by `.ci/run`: absent fixtures fail the test instead of skipping it.
pub const REQUIRE_FIXTURES_ENV: &str = "CV_REQUIRE_FIXTURES";

/// The repository root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// `../shared/fixtures/torchvision-parity` beside the checkout (or `$CV_FIXTURES_DIR`).
///
/// Returns `None` and prints a skip notice when the folder is absent, as on a user's fresh
/// clone. Panics instead when `CV_REQUIRE_FIXTURES=1`, so CI never silently skips parity.
pub fn parity_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os(FIXTURES_DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("../shared/fixtures/torchvision-parity"),
    };
    if dir.join("resnet18.safetensors").is_file() {
        return Some(dir);
    }
    let required = std::env::var(REQUIRE_FIXTURES_ENV).is_ok_and(|v| v == "1");
    if required {
        panic!(
            "parity fixtures not found at {} and {REQUIRE_FIXTURES_ENV}=1: CI needs ../shared/fixtures",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: parity fixtures not found at {} (set {FIXTURES_DIR_ENV} to run this test)",
        dir.display()
    );
    None
}
