//! Re-running xtask in release. `cargo xtask` is a dev build (the alias in
//! `.cargo/config.toml`), but benchmark figures only mean something from an optimised build, so
//! `bench` hands its arguments over to `cargo run --release -p xtask -- ...` and returns that
//! run's exit code.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

/// Set on the release run so that it never re-runs itself (a release profile with debug
/// assertions on would otherwise loop).
const RERUN_ENV: &str = "XTASK_RELEASE_RERUN";

/// Whether this process is a build without optimisations that has not re-run yet.
pub fn should_rerun() -> bool {
    cfg!(debug_assertions) && std::env::var_os(RERUN_ENV).is_none()
}

/// `cargo run --release -p xtask -- ARGS` for the workspace at `root`, from the caller's
/// folder (so relative paths in ARGS, such as `--json FILE`, mean what they meant).
fn command(cargo: &str, root: &Path, args: impl IntoIterator<Item = OsString>) -> Command {
    let mut cmd = Command::new(cargo);
    cmd.args(["run", "--release", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .args(["--package", "xtask", "--"])
        .args(args)
        .env(RERUN_ENV, "1");
    cmd
}

/// Runs this invocation (the same arguments) again from a release build.
pub fn rerun() -> Result<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    eprintln!(
        "info: xtask was built without optimisations; running `cargo run --release -p xtask -- {}` instead",
        shown.join(" ")
    );
    let cargo = crate::cargo();
    let status = command(&cargo, &crate::workspace_root()?, args)
        .status()
        .with_context(|| format!("cannot run `{cargo}`"))?;
    // A run killed by a signal has no code: report a failure.
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .map_or(ExitCode::FAILURE, ExitCode::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_run_gets_the_same_arguments_and_the_guard() {
        let args = ["bench", "data", "--quick"].map(OsString::from);
        let cmd = command("cargo", Path::new("/repo"), args);
        let got: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            got,
            [
                "run",
                "--release",
                "--manifest-path",
                "/repo/Cargo.toml",
                "--package",
                "xtask",
                "--",
                "bench",
                "data",
                "--quick"
            ]
        );
        assert_eq!(cmd.get_current_dir(), None);
        let guard = cmd.get_envs().find(|(k, _)| *k == RERUN_ENV);
        assert_eq!(guard, Some((RERUN_ENV.as_ref(), Some("1".as_ref()))));
    }
}
