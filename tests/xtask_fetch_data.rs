//! `cargo xtask fetch-data` end to end: the real binary against a loopback server started
//! here, with a synthetic CIFAR-10 archive (no internet).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cv_testkit::cifar::{cifar_tar_gz, write_cifar_dir};
use cv_testkit::http::{Response, TestServer};
use cv_testkit::md5_hex;

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("run xtask")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every entry under `dir` (relative paths), sorted; empty when `dir` is absent.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

struct Setup {
    tmp: tempfile::TempDir,
    server: TestServer,
    bytes: Vec<u8>,
    md5: String,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let src = write_cifar_dir(&tmp.path().join("src"), 4, 3, 11).unwrap();
        let bytes = cifar_tar_gz(&src).unwrap();
        let md5 = md5_hex(&bytes);
        let server = TestServer::start();
        server.route("/cifar.tgz", Response::ok(bytes.clone()));
        server.route(
            "/short.tgz",
            Response::ok(bytes.clone()).truncated(bytes.len() / 3),
        );
        Setup {
            tmp,
            server,
            bytes,
            md5,
        }
    }
    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }
    fn fetch(&self, path: &str, md5: &str, extra: &[&str]) -> Output {
        let data = self.data();
        let url = self.url(path);
        let mut args = vec![
            "fetch-data",
            "--dir",
            data.to_str().unwrap(),
            "--url",
            &url,
            "--md5",
            md5,
            "--no-progress",
            // Failures should fail fast here: one retry, after a backoff of at most 1 s.
            "--retries",
            "1",
            "--timeout",
            "2",
        ];
        args.extend_from_slice(extra);
        xtask(&args)
    }
    fn gets(&self) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .count()
    }
}

fn assert_dataset(data: &Path) {
    let splits = cv_data::open(data, &cv_data::OpenOptions::default()).unwrap();
    assert_eq!(splits.train.len(), 20);
    assert_eq!(splits.test.len(), 3);
}

#[test]
fn download_verify_extract_then_idempotent_then_force() {
    let s = Setup::new();
    let o = s.fetch("/cifar.tgz", &s.md5, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("installed"),
        "{}",
        text(&o)
    );
    assert_dataset(&s.data());
    assert_eq!(
        std::fs::read(s.data().join("cifar-10-binary.tar.gz")).unwrap(),
        s.bytes,
        "the verified archive is kept"
    );
    let top: Vec<_> = tree(&s.data())
        .into_iter()
        .filter(|p| p.components().count() == 1)
        .collect();
    assert_eq!(
        top,
        [
            PathBuf::from("cifar-10-batches-bin"),
            PathBuf::from("cifar-10-binary.tar.gz")
        ]
    );
    assert_eq!(s.gets(), 1);

    // Second run: nothing to do, no request.
    let o = s.fetch("/cifar.tgz", &s.md5, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("already present"),
        "{}",
        text(&o)
    );
    assert_eq!(s.gets(), 1);

    // --force downloads and extracts again.
    let o = s.fetch("/cifar.tgz", &s.md5, &["--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(s.gets(), 2);
    assert_dataset(&s.data());
}

fn assert_fails_cleanly(o: &Output, data: &Path, needles: &[&str]) {
    assert!(!o.status.success(), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one clear message: {}",
        text(o)
    );
    for n in needles {
        assert!(err.contains(n), "missing {n:?}: {}", text(o));
    }
    // Nothing under the archive's name; bytes that arrived are kept for a resume, under the
    // partial file's name only.
    let left: Vec<PathBuf> = tree(data)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains(".incomplete"))
        .collect();
    assert!(left.is_empty(), "files left: {:?}", tree(data));
}

#[test]
fn http_404_fails_and_names_the_url() {
    let s = Setup::new();
    let o = s.fetch("/nope.tgz", &s.md5, &[]);
    assert_fails_cleanly(&o, &s.data(), &[&s.url("/nope.tgz"), "404"]);
}

#[test]
fn truncated_body_fails_and_leaves_nothing() {
    let s = Setup::new();
    let o = s.fetch("/short.tgz", &s.md5, &[]);
    assert_fails_cleanly(&o, &s.data(), &[&s.url("/short.tgz"), "body ended"]);
}

#[test]
fn wrong_md5_fails_before_extracting() {
    let s = Setup::new();
    let wrong = "0123456789abcdef0123456789abcdef";
    let o = s.fetch("/cifar.tgz", wrong, &[]);
    assert_fails_cleanly(&o, &s.data(), &[&s.url("/cifar.tgz"), "md5", wrong, &s.md5]);
}

#[test]
fn unreachable_host_fails() {
    let mut s = Setup::new();
    let url = s.url("/cifar.tgz");
    s.server.stop();
    let o = s.fetch("/cifar.tgz", &s.md5, &[]);
    assert_fails_cleanly(&o, &s.data(), &[&url]);
}

#[test]
fn local_archive_is_ingested_and_checked() {
    let s = Setup::new();
    let arch = s.tmp.path().join("mine.tar.gz");
    std::fs::write(&arch, &s.bytes).unwrap();
    let data = s.data();
    let o = xtask(&[
        "fetch-data",
        "--dir",
        data.to_str().unwrap(),
        "--archive",
        arch.to_str().unwrap(),
        "--md5",
        &s.md5,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_dataset(&data);
    assert_eq!(s.gets(), 0, "no network with --archive");

    // A corrupt local archive (md5 given for the corrupt bytes) fails on gzip, leaving the
    // installed dataset untouched.
    let mut bad = s.bytes.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x55;
    bad.truncate(n - 40);
    std::fs::write(&arch, &bad).unwrap();
    let before = tree(&data);
    let o = xtask(&[
        "fetch-data",
        "--dir",
        data.to_str().unwrap(),
        "--archive",
        arch.to_str().unwrap(),
        "--md5",
        &md5_hex(&bad),
        "--force",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("mine.tar.gz"),
        "{}",
        text(&o)
    );
    assert_eq!(tree(&data), before);
    assert_dataset(&data);

    // Default md5 (the official one) does not match the synthetic archive.
    let other = s.tmp.path().join("other");
    std::fs::write(&arch, &s.bytes).unwrap();
    let o = xtask(&[
        "fetch-data",
        "--dir",
        other.to_str().unwrap(),
        "--archive",
        arch.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("c32a1d4ab5d03f1284b67883e8d87530"),
        "{}",
        text(&o)
    );
    assert!(tree(&other).is_empty());
}

/// A write failure while downloading (here the file-size limit, standing in for a full disk):
/// one message naming the file, nothing left behind.
#[cfg(target_os = "linux")]
#[test]
fn write_failure_fails_cleanly() {
    use std::os::unix::process::CommandExt;
    let s = Setup::new();
    assert!(s.bytes.len() > 20_000, "archive must exceed the limit");
    let data = s.data();
    let url = s.url("/cifar.tgz");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args([
        "fetch-data",
        "--dir",
        data.to_str().unwrap(),
        "--url",
        &url,
        "--md5",
        &s.md5,
        "--no-progress",
    ]);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 20_000,
                rlim_max: 20_000,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_fails_cleanly(&o, &data, &["cifar-10-binary.tar.gz", "too large"]);
}
