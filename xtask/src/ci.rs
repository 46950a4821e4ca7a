//! `cargo xtask ci`: the checks CI applies, in order, stopping at the first failure: formatting,
//! clippy with warnings denied, the test suite, and the docs with warnings denied. Each step
//! ends with one summary line (name, result, time). The test step requires the PyTorch parity
//! fixtures (`CV_REQUIRE_FIXTURES=1`) when `../shared/fixtures` exists beside the checkout, as
//! it does in CI, or when the variable is already set; otherwise their tests skip.
//!
//! The steps run cargo with inherited stdio, so the test runner's `test result:` lines reach
//! stdout as with a plain `cargo test`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The variable the parity tests read (see `cv_testkit::fixtures`).
const REQUIRE_FIXTURES_ENV: &str = "CV_REQUIRE_FIXTURES";

/// Flags of `ci` (none: CI and contributors run the same thing).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// One check: a cargo command and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Name in the summary lines.
    pub name: &'static str,
    /// Arguments to cargo; the first is the cargo subcommand.
    pub args: Vec<&'static str>,
    /// Environment variables set for this step only.
    pub env: Vec<(&'static str, String)>,
    /// The rustup component providing the subcommand, when it is not part of cargo itself.
    pub component: Option<&'static str>,
    /// A line printed before the step starts.
    pub announce: Option<String>,
}

impl Step {
    /// The command as a user would type it.
    pub fn command_line(&self) -> String {
        let env: String = self.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        format!("{env}cargo {}", self.args.join(" "))
    }
}

/// How the test step treats absent parity fixtures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FixtureMode {
    /// `CV_REQUIRE_FIXTURES=1` was set by the caller (`.ci/run` does).
    RequiredByCaller,
    /// This fixtures folder exists, so the tests run with `CV_REQUIRE_FIXTURES=1`.
    RequiredBeside(PathBuf),
    /// Neither: the parity tests print SKIPPED and pass, as on a user's clone.
    Optional(PathBuf),
}

impl FixtureMode {
    /// The mode for a checkout at `root`, given the caller's `CV_REQUIRE_FIXTURES` value.
    pub fn detect(root: &Path, require_env: Option<&str>) -> Self {
        let shared = root.join("../shared/fixtures");
        if require_env == Some("1") {
            FixtureMode::RequiredByCaller
        } else if shared.is_dir() {
            FixtureMode::RequiredBeside(shared)
        } else {
            FixtureMode::Optional(shared)
        }
    }

    fn required(&self) -> bool {
        !matches!(self, FixtureMode::Optional(_))
    }

    /// The line saying which mode the tests run in.
    pub fn describe(&self) -> String {
        match self {
            FixtureMode::RequiredByCaller => format!(
                "ci: test mode: parity fixtures required ({REQUIRE_FIXTURES_ENV}=1 was set)"
            ),
            FixtureMode::RequiredBeside(dir) => format!(
                "ci: test mode: parity fixtures required ({REQUIRE_FIXTURES_ENV}=1, since {} exists)",
                dir.display()
            ),
            FixtureMode::Optional(dir) => format!(
                "ci: test mode: parity fixtures optional ({} is absent, so the parity tests print SKIPPED and pass)",
                dir.display()
            ),
        }
    }
}

/// The four steps, in the order they run.
pub fn steps(mode: &FixtureMode) -> Vec<Step> {
    let test_env = if mode.required() {
        vec![(REQUIRE_FIXTURES_ENV, "1".to_owned())]
    } else {
        Vec::new()
    };
    vec![
        Step {
            name: "fmt",
            args: vec!["fmt", "--all", "--", "--check"],
            env: Vec::new(),
            component: Some("rustfmt"),
            announce: None,
        },
        Step {
            name: "clippy",
            args: vec![
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
            env: Vec::new(),
            component: Some("clippy"),
            announce: None,
        },
        Step {
            name: "test",
            args: vec!["test", "--workspace", "--locked"],
            env: test_env,
            component: None,
            announce: Some(mode.describe()),
        },
        Step {
            name: "doc",
            args: vec!["doc", "--workspace", "--no-deps", "--locked"],
            env: vec![("RUSTDOCFLAGS", "-D warnings".to_owned())],
            component: None,
            announce: None,
        },
    ]
}

/// Runs steps: [`Cargo`] for real, a fake in the tests.
pub trait Runner {
    /// Whether the step's cargo subcommand is installed.
    fn installed(&mut self, step: &Step) -> bool;
    /// Runs the step; `Ok(false)` when it ran and failed.
    fn run(&mut self, step: &Step) -> Result<bool>;
}

/// Runs each step as a cargo command in the workspace, with inherited stdio.
#[derive(Debug, Clone)]
pub struct Cargo {
    /// The cargo executable.
    pub program: String,
    /// Where the commands run.
    pub root: PathBuf,
    /// Variables set for every step (tests point `CARGO_TARGET_DIR` at a scratch folder).
    pub env: Vec<(String, String)>,
    /// Discard the commands' output (tests, whose failures are expected).
    pub quiet: bool,
}

impl Cargo {
    fn command(&self, step: &Step) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.current_dir(&self.root)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(step.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

impl Runner for Cargo {
    fn installed(&mut self, step: &Step) -> bool {
        let mut cmd = self.command(step);
        cmd.args([step.args[0], "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }

    fn run(&mut self, step: &Step) -> Result<bool> {
        let mut cmd = self.command(step);
        if self.quiet {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let status = cmd
            .args(&step.args)
            .status()
            .with_context(|| format!("cannot run `{}`", self.program))?;
        Ok(status.success())
    }
}

/// What one step did, for the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    /// The step's name.
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// How long it took.
    pub time: Duration,
}

/// Runs `steps` in order until one fails, writing a summary line after each to `out`; the
/// error names the failing step.
pub fn run_steps(steps: &[Step], runner: &mut impl Runner, out: &mut impl Write) -> Result<()> {
    let started = Instant::now();
    let mut done = Vec::new();
    for step in steps {
        if let Some(line) = &step.announce {
            writeln!(out, "{line}")?;
        }
        writeln!(out, "ci: {}: {}", step.name, step.command_line())?;
        out.flush()?;
        if let Some(component) = step.component {
            if !runner.installed(step) {
                bail!(
                    "ci: step `{}` needs `cargo {}`, which is not installed for this toolchain: run `rustup component add {component}`",
                    step.name,
                    step.args[0]
                );
            }
        }
        let step_started = Instant::now();
        let passed = runner.run(step)?;
        let result = Done {
            name: step.name,
            passed,
            time: step_started.elapsed(),
        };
        let verdict = if passed { "ok" } else { "FAILED" };
        writeln!(
            out,
            "ci: {} {verdict} in {:.1} s",
            step.name,
            result.time.as_secs_f64()
        )?;
        done.push(result);
        if !passed {
            bail!(
                "ci: step `{}` failed (`{}`); its output is above",
                step.name,
                step.command_line()
            );
        }
    }
    let times: Vec<String> = done
        .iter()
        .map(|d| format!("{} {:.1} s", d.name, d.time.as_secs_f64()))
        .collect();
    writeln!(
        out,
        "ci: all {} steps passed in {:.1} s ({})",
        done.len(),
        started.elapsed().as_secs_f64(),
        times.join(", ")
    )?;
    Ok(())
}

pub fn run(_args: Args) -> Result<()> {
    let root = crate::workspace_root()?;
    let require = std::env::var(REQUIRE_FIXTURES_ENV).ok();
    let mode = FixtureMode::detect(&root, require.as_deref());
    let mut cargo = Cargo {
        program: crate::cargo(),
        root,
        env: Vec::new(),
        quiet: false,
    };
    run_steps(&steps(&mode), &mut cargo, &mut std::io::stdout())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the steps it is asked to run; `fail` names the one that fails, `missing` the
    /// one whose subcommand is not installed.
    #[derive(Default)]
    struct Fake {
        ran: Vec<&'static str>,
        fail: Option<&'static str>,
        missing: Option<&'static str>,
    }

    impl Runner for Fake {
        fn installed(&mut self, step: &Step) -> bool {
            self.missing != Some(step.name)
        }
        fn run(&mut self, step: &Step) -> Result<bool> {
            self.ran.push(step.name);
            Ok(self.fail != Some(step.name))
        }
    }

    fn optional() -> FixtureMode {
        FixtureMode::Optional(PathBuf::from("/nowhere/shared/fixtures"))
    }

    fn run_fake(fake: &mut Fake) -> (Result<()>, String) {
        let mut out = Vec::new();
        let result = run_steps(&steps(&optional()), fake, &mut out);
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn all_steps_run_in_order_and_are_summarised() {
        let mut fake = Fake::default();
        let (result, out) = run_fake(&mut fake);
        result.unwrap();
        assert_eq!(fake.ran, ["fmt", "clippy", "test", "doc"]);
        for name in ["fmt", "clippy", "test", "doc"] {
            assert!(out.contains(&format!("ci: {name} ok in ")), "{out}");
        }
        assert!(out.contains("ci: all 4 steps passed"), "{out}");
        assert!(out.contains("parity fixtures optional"), "{out}");
    }

    #[test]
    fn the_first_failure_stops_the_run_and_is_named() {
        let mut fake = Fake {
            fail: Some("clippy"),
            ..Fake::default()
        };
        let (result, out) = run_fake(&mut fake);
        let err = result.unwrap_err().to_string();
        assert_eq!(fake.ran, ["fmt", "clippy"]);
        assert!(err.contains("step `clippy` failed"), "{err}");
        assert!(out.contains("ci: clippy FAILED in "), "{out}");
        assert!(!out.contains("ci: test"), "{out}");
    }

    #[test]
    fn a_missing_component_names_the_rustup_command() {
        let mut fake = Fake {
            missing: Some("fmt"),
            ..Fake::default()
        };
        let (result, _) = run_fake(&mut fake);
        let err = result.unwrap_err().to_string();
        assert!(err.contains("rustup component add rustfmt"), "{err}");
        assert!(fake.ran.is_empty(), "{:?}", fake.ran);
    }

    #[test]
    fn fixtures_are_required_when_shared_exists_or_the_caller_asks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        std::fs::create_dir(&root).unwrap();
        let test_env = |mode: &FixtureMode| {
            let all = steps(mode);
            let test = all.iter().find(|s| s.name == "test").unwrap();
            test.env.clone()
        };
        let required = vec![(REQUIRE_FIXTURES_ENV, "1".to_owned())];

        let mode = FixtureMode::detect(&root, None);
        assert!(matches!(mode, FixtureMode::Optional(_)), "{mode:?}");
        assert!(test_env(&mode).is_empty());
        let mode = FixtureMode::detect(&root, Some("0"));
        assert!(matches!(mode, FixtureMode::Optional(_)), "{mode:?}");

        let mode = FixtureMode::detect(&root, Some("1"));
        assert_eq!(mode, FixtureMode::RequiredByCaller);
        assert_eq!(test_env(&mode), required);

        std::fs::create_dir_all(tmp.path().join("shared/fixtures")).unwrap();
        let mode = FixtureMode::detect(&root, None);
        assert!(matches!(mode, FixtureMode::RequiredBeside(_)), "{mode:?}");
        assert!(mode.describe().contains("required"), "{}", mode.describe());
        assert_eq!(test_env(&mode), required);
    }

    #[test]
    fn docs_deny_warnings_and_clippy_denies_warnings() {
        let all = steps(&optional());
        let doc = all.iter().find(|s| s.name == "doc").unwrap();
        assert_eq!(doc.env, [("RUSTDOCFLAGS", "-D warnings".to_owned())]);
        let clippy = all.iter().find(|s| s.name == "clippy").unwrap();
        assert!(clippy.args.ends_with(&["--", "-D", "warnings"]));
    }

    /// A one-file crate in a scratch folder, with its own target folder.
    fn scratch(lib: &str) -> (tempfile::TempDir, Cargo) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"scratch\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("Cargo.lock"),
            "version = 4\n\n[[package]]\nname = \"scratch\"\nversion = \"0.1.0\"\n",
        )
        .unwrap();
        std::fs::create_dir(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/lib.rs"), lib).unwrap();
        let cargo = Cargo {
            program: crate::cargo(),
            root: dir.to_path_buf(),
            env: vec![(
                "CARGO_TARGET_DIR".to_owned(),
                dir.join("target").display().to_string(),
            )],
            quiet: true,
        };
        (tmp, cargo)
    }

    fn run_real(cargo: &mut Cargo) -> String {
        let mut out = Vec::new();
        let err = run_steps(&steps(&optional()), cargo, &mut out).unwrap_err();
        err.to_string()
    }

    #[test]
    fn a_clean_crate_passes_fmt_and_clippy() {
        // The control for the two tests below: the scratch crate itself is sound.
        let (_tmp, mut cargo) = scratch("pub fn len(v: &[u8]) -> usize {\n    v.len()\n}\n");
        let mut out = Vec::new();
        run_steps(&steps(&optional())[..2], &mut cargo, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("ci: all 2 steps passed"), "{out}");
    }

    #[test]
    fn a_badly_formatted_file_fails_the_fmt_step() {
        let (tmp, mut cargo) = scratch("pub fn f( )->u8 {1}\n");
        let err = run_real(&mut cargo);
        assert!(err.contains("step `fmt` failed"), "{err}");
        // Stopped there: clippy would have made the target folder.
        assert!(!tmp.path().join("target").exists());
    }

    #[test]
    fn a_clippy_warning_fails_the_clippy_step() {
        let (_tmp, mut cargo) = scratch("pub fn len(v: &Vec<u8>) -> usize {\n    v.len()\n}\n");
        let err = run_real(&mut cargo);
        assert!(err.contains("step `clippy` failed"), "{err}");
    }
}
