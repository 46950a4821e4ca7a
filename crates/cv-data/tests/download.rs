//! `cv_data::download::fetch` against loopback servers that misbehave on purpose: a body that
//! stalls half-way, a server that ignores `Range`, a file that changes between attempts,
//! 503s, 404, a server that never answers, two processes at once, and a kill mid-transfer.
//! Timeouts and backoffs are short, so no test waits more than a few seconds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cv_data::download::{fetch, partial_path, Checksum, DownloadOptions, Fetched, Transfer};
use cv_data::DataError;
use cv_testkit::http::{silent_listener, Response, TestServer};

/// Set in a child process: `URL|DEST|MD5` of the transfer it runs.
const CHILD_ENV: &str = "CV_DOWNLOAD_TEST_CHILD";

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn quick() -> DownloadOptions {
    DownloadOptions {
        connect_timeout: Duration::from_millis(500),
        read_timeout: Duration::from_millis(300),
        retries: 3,
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        progress: false,
        headers: Vec::new(),
    }
}

fn get(url: &str, dest: &Path, body: &[u8], opts: &DownloadOptions) -> cv_data::Result<Fetched> {
    let t = Transfer {
        url,
        dest,
        size: Some(body.len() as u64),
        checksum: Some(Checksum::Md5(cv_testkit::md5_hex(body))),
        label: "test",
        refresh: false,
    };
    fetch(&t, opts)
}

fn ranges(server: &TestServer) -> Vec<Option<String>> {
    server
        .requests()
        .iter()
        .map(|r| r.headers.get("range").cloned())
        .collect()
}

#[test]
fn a_body_that_goes_silent_half_way_is_resumed_fetching_only_the_missing_bytes() {
    let body = payload(200_000);
    let server = TestServer::start();
    let ok = Response::ok(body.clone()).header("ETag", "\"v1\"");
    server.route_sequence("/f", vec![ok.clone().stalled(80_000), ok]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let start = Instant::now();
    let got = get(&format!("{}/f", server.url()), &dest, &body, &quick()).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(got.resumed && got.attempts == 2, "{got:?}");
    // Only the missing bytes crossed the wire the second time.
    assert_eq!(server.bytes_sent(), body.len() as u64);
    assert_eq!(ranges(&server), [None, Some("bytes=80000-".into())]);
    assert_eq!(
        server.requests()[1]
            .headers
            .get("if-range")
            .map(String::as_str),
        Some("\"v1\"")
    );
    assert!(!partial_path(&dest).exists());
}

#[test]
fn a_server_that_ignores_the_range_is_downloaded_afresh() {
    let body = payload(50_000);
    let server = TestServer::start();
    let ok = Response::ok(body.clone()).header("ETag", "\"v1\"");
    server.route_sequence(
        "/f",
        vec![ok.clone().truncated(20_000), ok.without_ranges()],
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let got = get(&format!("{}/f", server.url()), &dest, &body, &quick()).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(!got.resumed, "{got:?}");
    assert_eq!(server.bytes_sent(), 20_000 + body.len() as u64);
}

#[test]
fn a_file_that_changed_between_attempts_is_downloaded_afresh() {
    let old = payload(50_000);
    let new: Vec<u8> = old.iter().map(|b| b.wrapping_add(1)).collect();
    let server = TestServer::start();
    server.route_sequence(
        "/f",
        vec![
            Response::ok(old)
                .header("ETag", "\"old\"")
                .truncated(20_000),
            Response::ok(new.clone()).header("ETag", "\"new\""),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let got = get(&format!("{}/f", server.url()), &dest, &new, &quick()).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), new);
    assert!(!got.resumed, "{got:?}");
    // The client asked for the rest of the old file; the server sent the new one whole.
    assert_eq!(ranges(&server)[1].as_deref(), Some("bytes=20000-"));
    assert_eq!(server.bytes_sent(), 20_000 + new.len() as u64);
}

#[test]
fn answers_503_are_retried_with_backoff_and_404_is_not() {
    let body = payload(1000);
    let server = TestServer::start();
    server.route_sequence(
        "/f",
        vec![
            Response::status(503),
            Response::status(503),
            Response::ok(body.clone()),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let opts = DownloadOptions {
        backoff: Duration::from_millis(100),
        ..quick()
    };
    let start = Instant::now();
    let got = get(&format!("{}/f", server.url()), &dest, &body, &opts).unwrap();
    // Two waits of at least half the backoff each (jitter), 100 and 200 ms at full.
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(got.attempts, 3);
    assert_eq!(std::fs::read(&dest).unwrap(), body);

    let err = get(
        &format!("{}/missing", server.url()),
        &dir.path().join("m"),
        &body,
        &opts,
    )
    .unwrap_err();
    assert!(
        matches!(err, DataError::HttpStatus { status: 404, .. }),
        "{err}"
    );
    let asked = server
        .requests()
        .iter()
        .filter(|r| r.path == "/missing")
        .count();
    assert_eq!(asked, 1);
    assert!(!dir.path().join("m").exists());
}

#[test]
fn retry_after_is_honoured() {
    let body = payload(100);
    let server = TestServer::start();
    let busy = Response::status(429).header("Retry-After", "1");
    server.route_sequence("/f", vec![busy, Response::ok(body.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let opts = DownloadOptions {
        max_backoff: Duration::from_secs(5),
        ..quick()
    };
    get(
        &format!("{}/f", server.url()),
        &dir.path().join("f"),
        &body,
        &opts,
    )
    .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_server_that_never_answers_fails_clearly_within_the_limits() {
    let (_listener, url) = silent_listener();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let opts = DownloadOptions {
        retries: 2,
        ..quick()
    };
    let start = Instant::now();
    let err = get(&format!("{url}/f"), &dest, b"x", &opts).unwrap_err();
    // 3 attempts of 0.3 s plus two backoffs of at most 0.2 s, and some slack.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let text = err.to_string();
    assert!(
        matches!(err, DataError::Retried { attempts: 3, .. }),
        "{text}"
    );
    assert!(text.contains(&url) && text.contains("0.3 s"), "{text}");
    assert!(!dest.exists());
}

#[test]
fn a_wrong_checksum_never_gets_the_name_and_leaves_no_partial_file() {
    let body = payload(1000);
    let server = TestServer::start();
    server.route("/f", Response::ok(body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let t = Transfer {
        url: &format!("{}/f", server.url()),
        dest: &dest,
        size: None,
        checksum: Some(Checksum::Sha256("0".repeat(64))),
        label: "test",
        refresh: false,
    };
    let err = fetch(&t, &quick()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Checksum {
                algorithm: "sha256",
                ..
            }
        ),
        "{err}"
    );
    assert!(!dest.exists() && !partial_path(&dest).exists());
}

/// Runs this test binary's `child_transfer` in a new process for `url` into `dest`.
fn spawn_child(url: &str, dest: &Path, md5: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_transfer", "--nocapture"])
        .env(CHILD_ENV, format!("{url}|{}|{md5}", dest.display()))
        .spawn()
        .unwrap()
}

/// Not a test of its own: the entry point of the child processes the tests below start.
#[test]
#[ignore = "run by the tests below in child processes"]
fn child_transfer() {
    let spec = std::env::var(CHILD_ENV).expect("run by spawn_child");
    let mut parts = spec.split('|');
    let (url, dest, md5) = (
        parts.next().unwrap(),
        PathBuf::from(parts.next().unwrap()),
        parts.next().unwrap(),
    );
    let t = Transfer {
        url,
        dest: &dest,
        size: None,
        checksum: Some(Checksum::Md5(md5.into())),
        label: "child",
        refresh: false,
    };
    let opts = DownloadOptions {
        read_timeout: Duration::from_secs(5),
        ..quick()
    };
    fetch(&t, &opts).unwrap();
}

#[test]
fn two_processes_fetching_one_file_at_once_both_end_with_it() {
    let body = payload(300_000);
    let server = TestServer::start();
    // The first answer pauses half-way (0.5 s, under the children's 5 s limit) and breaks
    // off, so the two processes overlap and the first one has to resume.
    let mut slow = Response::ok(body.clone())
        .header("ETag", "\"v1\"")
        .stalled(150_000);
    slow.stall_for = Duration::from_millis(500);
    server.route_sequence(
        "/f",
        vec![slow, Response::ok(body.clone()).header("ETag", "\"v1\"")],
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("cache/f.bin");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let url = format!("{}/f", server.url());
    let md5 = cv_testkit::md5_hex(&body);
    let mut a = spawn_child(&url, &dest, &md5);
    let mut b = spawn_child(&url, &dest, &md5);
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    // One transfer (two requests: the stalled one and its resume); the other process found
    // the file done once the lock was free.
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn a_rerun_after_a_kill_mid_transfer_resumes() {
    let body = payload(200_000);
    let server = TestServer::start();
    let ok = Response::ok(body.clone()).header("ETag", "\"v1\"");
    server.route_sequence("/f", vec![ok.clone().stalled(120_000), ok]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let url = format!("{}/f", server.url());
    let mut child = spawn_child(&url, &dest, &cv_testkit::md5_hex(&body));
    let start = Instant::now();
    while std::fs::metadata(partial_path(&dest)).map_or(0, |m| m.len()) < 120_000 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the child never got the bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dest.exists());
    let got = get(&url, &dest, &body, &quick()).unwrap();
    assert!(got.resumed, "{got:?}");
    assert_eq!(got.received, 80_000);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(ranges(&server)[1].as_deref(), Some("bytes=120000-"));
}

#[test]
fn a_partial_file_without_metadata_is_resumed_when_the_size_is_known() {
    // What Python's hub client leaves: `blobs/<etag>.incomplete`, no metadata of ours.
    let body = payload(60_000);
    let server = TestServer::start();
    server.route("/f", Response::ok(body.clone()).header("ETag", "\"v1\""));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    std::fs::write(partial_path(&dest), &body[..25_000]).unwrap();
    let got = get(&format!("{}/f", server.url()), &dest, &body, &quick()).unwrap();
    assert!(got.resumed && got.received == 35_000, "{got:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(ranges(&server), [Some("bytes=25000-".into())]);
    assert_eq!(server.bytes_sent(), 35_000);
}
