//! Downloads against a hub stand-in on 127.0.0.1: first fetch, cache reuse with the server
//! gone, offline misses, 404, missing headers, truncated and short bodies.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;

use cv_testkit::http::{Response, TestServer};
use cv_weights::hub::{cached_file, fetch_file, HubConfig, HubFile};
use cv_weights::WeightsError;

const REPO: &str = "timm/resnet18.tv_in1k";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const FILE: HubFile<'static> = HubFile {
    repo: REPO,
    revision: "main",
    file: "model.safetensors",
};

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn hub_response(body: Vec<u8>) -> Response {
    Response::ok(body)
        .header("ETag", "\"blobetag1\"")
        .header("X-Repo-Commit", COMMIT)
}

fn route() -> String {
    format!("/{REPO}/resolve/main/model.safetensors")
}

fn config(server_url: &str, home: &Path) -> HubConfig {
    HubConfig::new(server_url, home.join("hub"))
}

#[test]
fn first_fetch_downloads_then_cache_serves_offline_and_without_server() {
    let home = tempfile::tempdir().unwrap();
    let mut server = TestServer::start();
    let body = payload(100_000);
    server.route(&route(), hub_response(body.clone()));
    let mut cfg = config(&server.url(), home.path());

    assert_eq!(cached_file(&cfg, FILE), None);
    let path = fetch_file(&cfg, FILE, "resnet18.tv_in1k").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    let repo_dir = home.path().join("hub/models--timm--resnet18.tv_in1k");
    assert_eq!(
        path,
        repo_dir.join(format!("snapshots/{COMMIT}/model.safetensors"))
    );
    assert!(repo_dir.join("blobs/blobetag1").is_file());
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    let reqs = server.requests();
    assert_eq!(reqs[0].path, route());
    assert_eq!(
        reqs[0].headers.get("range").map(String::as_str),
        Some("bytes=0-0")
    );
    assert!(reqs
        .iter()
        .all(|r| !r.headers.contains_key("authorization")));

    server.stop();
    // Online config, server gone: the cache answers, no request needed.
    assert_eq!(fetch_file(&cfg, FILE, "x").unwrap(), path);
    cfg.offline = true;
    assert_eq!(fetch_file(&cfg, FILE, "x").unwrap(), path);
    assert_eq!(cached_file(&cfg, FILE), Some(path));
}

#[test]
fn token_is_sent_as_bearer() {
    let home = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    server.route(&route(), hub_response(payload(1000)));
    let mut cfg = config(&server.url(), home.path());
    cfg.token = Some("hf_secret".into());
    fetch_file(&cfg, FILE, "x").unwrap();
    let reqs = server.requests();
    assert!(reqs.len() >= 2);
    for r in reqs {
        assert_eq!(
            r.headers.get("authorization").map(String::as_str),
            Some("Bearer hf_secret")
        );
    }
}

#[test]
fn offline_miss_says_what_where_and_how() {
    let home = tempfile::tempdir().unwrap();
    let mut cfg = config("http://127.0.0.1:9", home.path());
    cfg.offline = true;
    let err = fetch_file(&cfg, FILE, "resnet18.tv_in1k").unwrap_err();
    assert!(matches!(err, WeightsError::NotCached { .. }), "{err:?}");
    let msg = err.to_string();
    for part in [
        REPO,
        "model.safetensors",
        "cv weights fetch resnet18.tv_in1k",
        "HF_HUB_OFFLINE",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(
        msg.contains(&home.path().join("hub").display().to_string()),
        "{msg}"
    );
}

#[test]
fn not_found_is_a_clear_http_error() {
    let home = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let cfg = config(&server.url(), home.path());
    let err = fetch_file(&cfg, FILE, "x").unwrap_err();
    assert!(
        matches!(err, WeightsError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("404") && msg.contains(&route()), "{msg}");
    assert_eq!(cached_file(&cfg, FILE), None);
}

#[test]
fn missing_hub_headers_are_named() {
    let home = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    server.route(
        &route(),
        Response::ok(payload(100)).header("X-Repo-Commit", COMMIT),
    );
    let cfg = config(&server.url(), home.path());
    let msg = fetch_file(&cfg, FILE, "x").unwrap_err().to_string();
    assert!(msg.contains("etag") && msg.contains("HF_ENDPOINT"), "{msg}");
}

#[test]
fn connection_refused_suggests_offline() {
    let home = tempfile::tempdir().unwrap();
    let mut server = TestServer::start();
    let url = server.url();
    server.stop();
    let msg = fetch_file(&config(&url, home.path()), FILE, "x")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&url) && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
}

#[test]
fn truncated_body_is_never_cached_and_resumes_later() {
    let home = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let body = payload(50_000);
    server.route(&route(), hub_response(body.clone()).truncated(20_000));
    let mut cfg = config(&server.url(), home.path());

    let err = fetch_file(&cfg, FILE, "x").unwrap_err();
    assert!(
        matches!(
            err,
            WeightsError::Truncated {
                expected: 50_000,
                received: 20_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("20000 of 50000"), "{err}");
    assert_eq!(cached_file(&cfg, FILE), None);
    let snapshots = home
        .path()
        .join("hub/models--timm--resnet18.tv_in1k/snapshots");
    assert!(
        !snapshots.exists(),
        "no snapshot link for a partial download"
    );
    cfg.offline = true;
    assert!(matches!(
        fetch_file(&cfg, FILE, "x"),
        Err(WeightsError::NotCached { .. })
    ));

    // The hub recovers: the next fetch resumes from the partial file and checks the size.
    cfg.offline = false;
    server.route(&route(), hub_response(body.clone()));
    let path = fetch_file(&cfg, FILE, "x").unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    let last = server.requests().last().cloned().unwrap();
    assert_eq!(
        last.headers.get("range").map(String::as_str),
        Some("bytes=20000-")
    );
}

/// A hub that announces 10,000 bytes but then sends a complete-looking 6,000-byte answer:
/// hf-hub alone would move the short file into the cache.
fn lying_server() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                    break;
                }
                if line.to_ascii_lowercase().starts_with("range:") {
                    range = line.trim().to_string();
                }
            }
            let head =
                format!("ETag: \"short\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n");
            if range.ends_with("0-0") {
                write!(stream, "HTTP/1.1 206 Partial Content\r\n{head}Content-Range: bytes 0-0/10000\r\nContent-Length: 1\r\n\r\nx").unwrap();
            } else {
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\n{head}Content-Length: 6000\r\n\r\n"
                )
                .unwrap();
                stream.write_all(&payload(6000)).unwrap();
            }
        }
    });
    (url, handle)
}

#[test]
fn short_but_well_formed_body_is_evicted() {
    let home = tempfile::tempdir().unwrap();
    let (url, handle) = lying_server();
    let cfg = config(&url, home.path());
    let err = fetch_file(&cfg, FILE, "x").unwrap_err();
    handle.join().unwrap();
    assert!(
        matches!(
            err,
            WeightsError::Truncated {
                expected: 10_000,
                received: 6000,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(cached_file(&cfg, FILE), None);
    let blobs = home.path().join("hub/models--timm--resnet18.tv_in1k/blobs");
    assert!(!blobs.join("short").exists());
}

/// Short timeouts and retries for the misbehaving servers below.
fn patient(server_url: &str, home: &Path) -> HubConfig {
    HubConfig {
        retries: 3,
        etag_timeout: std::time::Duration::from_millis(500),
        download_timeout: std::time::Duration::from_millis(300),
        backoff: std::time::Duration::from_millis(20),
        ..config(server_url, home)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn a_download_that_goes_silent_resumes_into_the_cache_fetching_only_the_rest() {
    let home = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let body = payload(120_000);
    let ok = hub_response(body.clone());
    // Metadata (one byte), the stalled transfer, then the rest.
    server.route_sequence(&route(), vec![ok.clone(), ok.clone().stalled(50_000), ok]);
    let start = std::time::Instant::now();
    let path = fetch_file(&patient(&server.url(), home.path()), FILE, "x").unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(server.bytes_sent(), 1 + body.len() as u64);
    let last = server.requests().last().cloned().unwrap();
    assert_eq!(
        last.headers.get("range").map(String::as_str),
        Some("bytes=50000-")
    );
    let blobs = home.path().join("hub/models--timm--resnet18.tv_in1k/blobs");
    assert!(!blobs.join("blobetag1.incomplete").exists());
}

#[test]
fn an_lfs_file_behind_a_redirect_is_checked_against_its_sha256() {
    let home = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let body = payload(30_000);
    let sha = sha256_hex(&body);
    let redirect = |etag: &str| {
        Response::status(302)
            .header("Location", "/cdn/blob")
            .header("X-Linked-Etag", &format!("\"{etag}\""))
            .header("X-Repo-Commit", COMMIT)
    };
    server.route(&route(), redirect(&sha));
    server.route("/cdn/blob", Response::ok(body.clone()));
    let cfg = patient(&server.url(), home.path());
    let path = fetch_file(&cfg, FILE, "x").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    let repo_dir = home.path().join("hub/models--timm--resnet18.tv_in1k");
    assert!(repo_dir.join("blobs").join(&sha).is_file());
    assert!(std::fs::read_link(&path)
        .unwrap()
        .starts_with("../../blobs"));

    // The same bytes under a sha256 they do not have: refused, nothing cached.
    let other = tempfile::tempdir().unwrap();
    server.route(&route(), redirect(&"0".repeat(64)));
    let cfg = patient(&server.url(), other.path());
    let err = fetch_file(&cfg, FILE, "x").unwrap_err().to_string();
    assert!(err.contains("sha256"), "{err}");
    assert_eq!(cached_file(&cfg, FILE), None);
}

#[test]
fn answers_503_are_retried_and_a_hub_that_never_answers_fails_in_time() {
    let home = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let body = payload(1000);
    server.route_sequence(
        &route(),
        vec![
            Response::status(503),
            Response::status(503),
            hub_response(body.clone()),
        ],
    );
    let path = fetch_file(&patient(&server.url(), home.path()), FILE, "x").unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);

    let (_listener, url) = cv_testkit::http::silent_listener();
    let start = std::time::Instant::now();
    let other = tempfile::tempdir().unwrap();
    let msg = fetch_file(&patient(&url, other.path()), FILE, "x")
        .unwrap_err()
        .to_string();
    assert!(
        start.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(msg.contains(&url) && msg.contains("4 attempts"), "{msg}");
}

/// Set in a child process to `ENDPOINT|CACHE` of the fetch it runs.
const CHILD_ENV: &str = "CV_HUB_TEST_CHILD";

/// Not a test of its own: the entry point of the child processes the next test starts.
#[test]
#[ignore = "run by two_processes_fill_one_fresh_cache in child processes"]
fn child_fetch() {
    let spec = std::env::var(CHILD_ENV).expect("run by the parent test");
    let (endpoint, cache) = spec.split_once('|').unwrap();
    let cfg = HubConfig {
        retries: 3,
        download_timeout: std::time::Duration::from_secs(5),
        backoff: std::time::Duration::from_millis(20),
        ..HubConfig::new(endpoint, cache)
    };
    fetch_file(&cfg, FILE, "x").unwrap();
}

#[test]
fn two_processes_fill_one_fresh_cache() {
    let home = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let body = payload(300_000);
    let ok = hub_response(body.clone());
    // The first transfer pauses half-way (0.5 s) and breaks off, so the processes overlap.
    let mut slow = ok.clone().stalled(150_000);
    slow.stall_for = std::time::Duration::from_millis(500);
    server.route_sequence(&route(), vec![ok.clone(), ok.clone(), slow, ok]);
    let cache = home.path().join("hub");
    let spawn = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_fetch", "--nocapture"])
            .env(CHILD_ENV, format!("{}|{}", server.url(), cache.display()))
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let cfg = config(&server.url(), home.path());
    let path = cached_file(&cfg, FILE).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
}

#[test]
fn the_token_goes_to_the_hub_but_not_to_the_storage_it_redirects_to() {
    let home = tempfile::tempdir().unwrap();
    let (hub, cdn) = (TestServer::start(), TestServer::start());
    let body = payload(5000);
    let location = format!("{}/blob", cdn.url());
    hub.route(
        &route(),
        Response::status(302)
            .header("Location", &location)
            .header("X-Linked-Etag", &format!("\"{}\"", sha256_hex(&body)))
            .header("X-Repo-Commit", COMMIT),
    );
    cdn.route("/blob", Response::ok(body.clone()));
    let mut cfg = patient(&hub.url(), home.path());
    cfg.token = Some("hf_secret".into());
    let path = fetch_file(&cfg, FILE, "x").unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    let auth = |s: &TestServer| -> Vec<Option<String>> {
        s.requests()
            .iter()
            .map(|r| r.headers.get("authorization").cloned())
            .collect()
    };
    assert_eq!(auth(&hub), [Some("Bearer hf_secret".to_string())]);
    assert!(!cdn.requests().is_empty() && auth(&cdn).iter().all(Option::is_none));
}
