//! A loopback HTTP/1.1 server for download tests: per-path canned responses (or a sequence
//! of them, one per request), `HEAD`, `Range: bytes=a-b` with `If-Range`, and misbehaviour
//! on purpose: bodies cut short, bodies that stall, ranges ignored; plus a log of what was
//! asked and a count of the body bytes sent.
//!
//! It binds `127.0.0.1:0`, answers one request per connection (`Connection: close`) and stops
//! when dropped, so tests never reach the internet.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A canned answer for one path.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Extra headers (`Content-Length` is added by the server).
    pub headers: Vec<(String, String)>,
    /// The full body.
    pub body: Vec<u8>,
    /// Announce the full length but send only this many body bytes, then close.
    pub truncate_at: Option<usize>,
    /// Send the body up to this byte of the file, then hold the connection open, silent,
    /// for `stall_for`.
    pub stall_at: Option<usize>,
    /// How long a stall lasts.
    pub stall_for: std::time::Duration,
    /// Answer every request with the whole body, whatever `Range` asks.
    pub ignore_range: bool,
}

impl Response {
    /// `200 OK` with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Response {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            truncate_at: None,
            stall_at: None,
            stall_for: std::time::Duration::from_secs(20),
            ignore_range: false,
        }
    }
    /// A bodiless answer with `status` (e.g. 404).
    pub fn status(status: u16) -> Self {
        Response {
            status,
            ..Response::ok(Vec::new())
        }
    }
    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// Send only the first `n` bytes of the body while announcing all of it.
    pub fn truncated(mut self, n: usize) -> Self {
        self.truncate_at = Some(n);
        self
    }
    /// Send the body up to byte `n` of the file, then go silent (connection open).
    pub fn stalled(mut self, n: usize) -> Self {
        self.stall_at = Some(n);
        self
    }
    /// Ignore `Range` (always the whole body, status 200).
    pub fn without_ranges(mut self) -> Self {
        self.ignore_range = true;
        self
    }
    /// This answer's `ETag` header value, if any.
    fn etag(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| v.as_str())
    }
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path with its query string.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: HashMap<String, String>,
}

/// Per path, the answers still to give; the last one repeats.
type Routes = Arc<Mutex<HashMap<String, Vec<Response>>>>;

/// A port that accepts connections (the kernel's backlog) and never answers: for tests of a
/// server that hangs. Keep the listener alive while the test runs.
pub fn silent_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    (listener, url)
}

/// The running server; stops on drop.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    routes: Routes,
    log: Arc<Mutex<Vec<Request>>>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Start on a free loopback port with no routes (every path answers 404).
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        let routes: Routes = Arc::default();
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (routes, log, sent, stop) =
                (routes.clone(), log.clone(), sent.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (routes, log, sent) = (routes.clone(), log.clone(), sent.clone());
                    std::thread::spawn(move || {
                        let _ = serve(stream, &routes, &log, &sent);
                    });
                }
            })
        };
        TestServer {
            addr,
            routes,
            log,
            sent,
            stop,
            thread: Some(thread),
        }
    }

    /// Answer `path` (e.g. `/files/a.tar.gz`) with `response` from now on.
    pub fn route(&self, path: &str, response: Response) -> &Self {
        self.route_sequence(path, vec![response])
    }

    /// Answer `path` with `responses` in turn, one per request; the last one repeats.
    pub fn route_sequence(&self, path: &str, responses: Vec<Response>) -> &Self {
        assert!(!responses.is_empty(), "a route needs an answer");
        self.routes
            .lock()
            .expect("routes")
            .insert(path.to_string(), responses);
        self
    }

    /// Body bytes written to clients so far, over all requests.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().expect("log").clone()
    }

    /// Stop accepting connections; the port then refuses.
    pub fn stop(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The answer for `path`: the next of its sequence (the last repeats), else 404.
fn next_response(routes: &Routes, path: &str) -> Response {
    let mut routes = routes.lock().expect("routes");
    match routes.get_mut(path) {
        Some(seq) if seq.len() > 1 => seq.remove(0),
        Some(seq) => seq[0].clone(),
        None => Response::status(404),
    }
}

fn serve(
    stream: TcpStream,
    routes: &Routes,
    log: &Mutex<Vec<Request>>,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut range = headers.get("range").cloned();
    let if_range = headers.get("if-range").cloned();
    log.lock().expect("log").push(Request {
        method: method.clone(),
        path: path.clone(),
        headers,
    });

    let resp = next_response(routes, &path);
    // If-Range: the range only while the file is the one the client started on.
    if resp.ignore_range || (if_range.is_some() && if_range.as_deref() != resp.etag()) {
        range = None;
    }
    let total = resp.body.len();
    let (status, start, end, content_range) =
        match (resp.status, range.as_deref().and_then(parse_range)) {
            (200, Some((a, b))) if a < total => {
                let b = b.unwrap_or(total - 1).min(total - 1);
                (206, a, b + 1, Some(format!("bytes {a}-{b}/{total}")))
            }
            (200, Some(_)) => (416, 0, 0, Some(format!("bytes */{total}"))),
            _ => (resp.status, 0, total, None),
        };
    let mut out = stream;
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\nAccept-Ranges: bytes\r\n",
        end - start
    ));
    if let Some(cr) = content_range {
        head.push_str(&format!("Content-Range: {cr}\r\n"));
    }
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let mut body = &resp.body[start..end];
        let cut = resp.truncate_at.or(resp.stall_at);
        if let Some(n) = cut {
            let keep = n.saturating_sub(start).min(body.len());
            body = &body[..keep];
        }
        out.write_all(body)?;
        out.flush()?;
        sent.fetch_add(body.len() as u64, Ordering::SeqCst);
        if resp.stall_at.is_some() && body.len() < end - start {
            std::thread::sleep(resp.stall_for);
        }
    }
    out.flush()?;
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok(())
}

fn parse_range(v: &str) -> Option<(usize, Option<usize>)> {
    let spec = v.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a = a.trim().parse().ok()?;
    let b = if b.trim().is_empty() {
        None
    } else {
        Some(b.trim().parse().ok()?)
    };
    Some((a, b))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str, extra: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_routes_ranges_and_404() {
        let server = TestServer::start();
        server.route(
            "/a",
            Response::ok(b"hello world".to_vec()).header("ETag", "\"x\""),
        );
        let full = String::from_utf8(get(server.addr(), "/a", "")).unwrap();
        assert!(full.starts_with("HTTP/1.1 200"));
        assert!(full.ends_with("hello world"));
        assert!(full.contains("ETag: \"x\""));
        let part = String::from_utf8(get(server.addr(), "/a", "Range: bytes=0-0\r\n")).unwrap();
        assert!(part.starts_with("HTTP/1.1 206"));
        assert!(part.contains("Content-Range: bytes 0-0/11"));
        assert!(part.ends_with("\r\n\r\nh"));
        let missing = String::from_utf8(get(server.addr(), "/b", "")).unwrap();
        assert!(missing.starts_with("HTTP/1.1 404"));
        assert_eq!(server.requests().len(), 3);
        assert_eq!(
            server.requests()[1].headers.get("range").unwrap(),
            "bytes=0-0"
        );
    }

    #[test]
    fn truncated_body_announces_full_length() {
        let server = TestServer::start();
        server.route("/t", Response::ok(vec![7u8; 100]).truncated(10));
        let raw = get(server.addr(), "/t", "");
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("Content-Length: 100"));
        let body_start = text.find("\r\n\r\n").unwrap() + 4;
        assert_eq!(raw.len() - body_start, 10);
    }

    #[test]
    fn stopped_server_refuses() {
        let mut server = TestServer::start();
        let addr = server.addr();
        server.stop();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn tar_and_cifar_helpers_make_real_files() {
        let dir = tempfile_dir();
        let batches = crate::cifar::write_cifar_dir(&dir, 20, 10, 1).unwrap();
        let len = std::fs::metadata(batches.join("data_batch_3.bin"))
            .unwrap()
            .len();
        assert_eq!(len as usize, 20 * crate::cifar::RECORD_BYTES);
        let gz = crate::cifar::cifar_tar_gz(&batches).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"cifar-10-batches-bin/test_batch.bin".to_string()));
        let root =
            crate::folder::make_image_folder(&dir.join("f"), &["a", "b"], 5, 2, 12, 3).unwrap();
        let n = std::fs::read_dir(root.join("train/a")).unwrap().count();
        assert_eq!(n, 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("cv-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
