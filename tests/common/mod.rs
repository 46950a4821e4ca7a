//! Helpers for the end-to-end tests: run the real `cv` binary and look at what it did.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The `cv` binary cargo built for these tests.
pub fn cv_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cv")
}

/// A `cv` command with a clean environment for the hub (cache in `home`, offline unless the
/// test points `HF_ENDPOINT` somewhere) and no colours.
pub fn cv(home: &Path) -> Command {
    let mut c = Command::new(cv_bin());
    c.env("HF_HOME", home.join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env("NO_COLOR", "1")
        .env("RAYON_NUM_THREADS", "2");
    c
}

/// Run, returning the output; panics (with both streams) if the exit code is not `code`.
pub fn expect_code(cmd: &mut Command, code: i32) -> Output {
    let out = cmd.output().expect("run cv");
    let got = out.status.code();
    assert_eq!(
        got,
        Some(code),
        "exit {got:?}, wanted {code}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure must be one `error:` line, no panic, no backtrace.
pub fn assert_clean_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "panic in stderr:\n{err}");
    assert!(
        !err.contains("stack backtrace"),
        "backtrace in stderr:\n{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "want exactly one error line, got:\n{err}");
    assert!(
        lines[0].contains(needle),
        "error line lacks {needle:?}: {}",
        lines[0]
    );
}
