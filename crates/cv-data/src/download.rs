//! One HTTP transfer to a file that survives real networks, for every download (the CIFAR-10
//! archive, the hub's files):
//! - connect and silent-read timeouts (10 s by default), named in the error with the bytes
//!   received;
//! - retries with exponential backoff and jitter on connection errors, timeouts, 5xx and 429
//!   (its `Retry-After` honoured), none on other answers;
//! - resumed transfers: the bytes so far live in `DEST.incomplete` (the name Python's
//!   `huggingface_hub` gives partial blobs, so no reader takes it for the file), and a rerun
//!   or retry asks for the rest with `Range`, guarded by `If-Range` with the first answer's
//!   ETag; a server that ignores the range, or whose file changed, sends it whole and the
//!   transfer starts afresh;
//! - a lock (`DEST.lock`, removed when done, released by the OS if the process dies) so that
//!   two processes fetching one file take turns: the second finds the file done;
//! - the result checked (size, and the md5 or sha256 when known) before it is renamed into
//!   place: `DEST` is only ever complete.
//!
//! Why not the HTTP client's or hf-hub's own: ureq has timeouts but no retries or resume,
//! and hf-hub 0.5 retries 4xx answers, has no silent-read limit and gives up on a lock after
//! 5 s.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{io_err, DataError, Result};

/// Suffix of the partial file beside the target.
pub const INCOMPLETE_SUFFIX: &str = "incomplete";

const BUF: usize = 1 << 18;

/// How hard a transfer tries.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadOptions {
    /// Limit for the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest silence allowed while waiting for the answer or inside the body.
    pub read_timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// Wait before the first retry; doubles each time (with jitter), up to `max_backoff`.
    pub backoff: Duration,
    /// Longest wait between attempts (a `Retry-After` above it is cut to it).
    pub max_backoff: Duration,
    /// A progress bar on stderr (never when stderr is not a terminal).
    pub progress: bool,
    /// Extra request headers, e.g. `Authorization`.
    pub headers: Vec<(String, String)>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(10),
            retries: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            progress: true,
            headers: Vec::new(),
        }
    }
}

/// A digest the finished file must have (lower- or upper-case hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// md5, 32 hex digits.
    Md5(String),
    /// sha256, 64 hex digits.
    Sha256(String),
}

impl Checksum {
    fn name(&self) -> &'static str {
        match self {
            Checksum::Md5(_) => "md5",
            Checksum::Sha256(_) => "sha256",
        }
    }
    fn expected(&self) -> &str {
        match self {
            Checksum::Md5(h) | Checksum::Sha256(h) => h.trim(),
        }
    }
    fn of_file(&self, path: &Path) -> Result<String> {
        match self {
            Checksum::Md5(_) => hash_file::<Md5>(path),
            Checksum::Sha256(_) => hash_file::<Sha256>(path),
        }
    }
}

/// What to fetch and where.
#[derive(Debug, Clone)]
pub struct Transfer<'a> {
    /// The URL (redirects are followed).
    pub url: &'a str,
    /// The finished file; its folder must exist.
    pub dest: &'a Path,
    /// The size it must have, when known beforehand.
    pub size: Option<u64>,
    /// The digest it must have, when known.
    pub checksum: Option<Checksum>,
    /// What the progress bar calls it.
    pub label: &'a str,
    /// Download even when `dest` is already complete (it is replaced only by a checked copy).
    pub refresh: bool,
}

/// What a transfer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// `dest`, complete and checked.
    pub path: PathBuf,
    /// Body bytes received by this call (0 when the file was already there).
    pub received: u64,
    /// Whether it continued bytes kept from an earlier attempt or run.
    pub resumed: bool,
    /// Requests made.
    pub attempts: u32,
    /// The file was already complete (another process may have fetched it meanwhile).
    pub already_there: bool,
}

/// What the partial file's bytes belong to, kept beside it as `DEST.incomplete.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartialMeta {
    url: String,
    etag: Option<String>,
    total: Option<u64>,
}

/// The files of one transfer.
struct Paths {
    dest: PathBuf,
    partial: PathBuf,
    meta: PathBuf,
    lock: PathBuf,
}

impl Paths {
    fn of(dest: &Path) -> Paths {
        let with = |suffix: &str| {
            let mut s = dest.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        Paths {
            dest: dest.to_path_buf(),
            partial: with(&format!(".{INCOMPLETE_SUFFIX}")),
            meta: with(&format!(".{INCOMPLETE_SUFFIX}.json")),
            lock: with(".lock"),
        }
    }
}

/// The partial file `DEST.incomplete` of a target.
pub fn partial_path(dest: &Path) -> PathBuf {
    Paths::of(dest).partial
}

/// Fetches `t.url` into `t.dest` (see the module doc). An existing `dest` that passes the
/// checks is kept and returned at once, unless `t.refresh`.
pub fn fetch(t: &Transfer<'_>, opts: &DownloadOptions) -> Result<Fetched> {
    let paths = Paths::of(t.dest);
    let _lock = lock(&paths.lock)?;
    if t.dest.is_file() && !t.refresh {
        match verify(t, t.dest, None) {
            Ok(()) => {
                return Ok(Fetched {
                    path: t.dest.to_path_buf(),
                    received: 0,
                    resumed: false,
                    attempts: 0,
                    already_there: true,
                })
            }
            Err(e) => {
                log::warn!("{}: replacing a bad copy ({e})", t.dest.display());
                std::fs::remove_file(t.dest).map_err(io_err(t.dest))?;
            }
        }
    }
    let mut state = Attempts::open(t, &paths, opts)?;
    state.run()?;
    let total = state.meta.total;
    if let Err(e) = verify(t, &paths.partial, total) {
        discard(&paths);
        return Err(e);
    }
    finish(&paths)?;
    Ok(Fetched {
        path: paths.dest.clone(),
        received: state.received,
        resumed: state.resumed,
        attempts: state.attempts,
        already_there: false,
    })
}

/// The lock of one transfer; dropping it removes the lock file, then releases the lock.
struct Lock {
    path: PathBuf,
    _file: File,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held: a process waiting on this file finds, once it holds it,
        // that the path names another file (or none) and locks that one instead.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits for the lock on `path`.
fn lock(path: &Path) -> Result<Lock> {
    loop {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        if f.try_lock().is_err() {
            log::info!(
                "{}: another process is fetching it; waiting",
                path.display()
            );
            f.lock().map_err(io_err(path))?;
        }
        if still_named(&f, path) {
            return Ok(Lock {
                path: path.to_path_buf(),
                _file: f,
            });
        }
    }
}

/// Whether `path` still names the open file `f` (its previous holder may have removed it).
#[cfg(unix)]
fn still_named(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Elsewhere an open file cannot be removed, so the path always names it.
#[cfg(not(unix))]
fn still_named(_: &File, path: &Path) -> bool {
    path.exists()
}

/// Size (announced or given) and checksum of `file`.
fn verify(t: &Transfer<'_>, file: &Path, announced: Option<u64>) -> Result<()> {
    let len = std::fs::metadata(file).map_err(io_err(file))?.len();
    for expected in [t.size, announced].into_iter().flatten() {
        if len != expected {
            return Err(DataError::Truncated {
                url: t.url.to_owned(),
                received: len,
                expected,
            });
        }
    }
    if let Some(c) = &t.checksum {
        let actual = c.of_file(file)?;
        if !actual.eq_ignore_ascii_case(c.expected()) {
            return Err(DataError::Checksum {
                source_name: t.url.to_owned(),
                algorithm: c.name(),
                actual,
                expected: c.expected().to_owned(),
            });
        }
    }
    Ok(())
}

/// Syncs the partial file and renames it into place; drops the metadata.
fn finish(p: &Paths) -> Result<()> {
    File::open(&p.partial)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&p.partial))?;
    std::fs::rename(&p.partial, &p.dest).map_err(io_err(&p.dest))?;
    let _ = std::fs::remove_file(&p.meta);
    if let Some(dir) = p.dest.parent() {
        // Make the rename durable; not every filesystem can sync a folder.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Removes the partial file and its metadata (their bytes cannot become the file).
fn discard(p: &Paths) {
    let _ = std::fs::remove_file(&p.partial);
    let _ = std::fs::remove_file(&p.meta);
}

/// Why an attempt ended without the whole body.
enum Failure {
    /// Worth another attempt; `wait` is the server's `Retry-After`.
    Retry {
        error: DataError,
        wait: Option<Duration>,
    },
    /// Final (a 4xx, a local I/O error).
    Fatal(DataError),
}

/// The attempts of one transfer, sharing the partial file.
struct Attempts<'t> {
    t: &'t Transfer<'t>,
    paths: &'t Paths,
    opts: &'t DownloadOptions,
    agent: ureq::Agent,
    meta: PartialMeta,
    /// Bytes in the partial file.
    have: u64,
    received: u64,
    resumed: bool,
    attempts: u32,
    bar: indicatif::ProgressBar,
}

impl<'t> Attempts<'t> {
    /// Picks up the bytes an earlier attempt of the same URL left, if any.
    fn open(t: &'t Transfer<'t>, paths: &'t Paths, opts: &'t DownloadOptions) -> Result<Self> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // The file must arrive byte for byte: no transparent decoding.
            .accept_encoding("identity")
            .http_status_as_error(false)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_recv_response(Some(opts.read_timeout))
            .timeout_per_read(Some(opts.read_timeout))
            .build()
            .into();
        let kept = std::fs::read(&paths.meta)
            .ok()
            .and_then(|b| serde_json::from_slice::<PartialMeta>(&b).ok())
            .filter(|m| m.url == t.url);
        let have = match (&kept, std::fs::metadata(&paths.partial)) {
            (Some(_), Ok(m)) => m.len(),
            // No metadata, but the size is known (Python's hub client names its partial blobs
            // the same way): resumed, and checked by size and digest at the end.
            (None, Ok(m)) if t.size.is_some_and(|s| m.len() <= s) => m.len(),
            _ => {
                discard(paths);
                0
            }
        };
        let meta = kept.unwrap_or(PartialMeta {
            url: t.url.to_owned(),
            etag: None,
            total: t.size.filter(|_| have > 0),
        });
        let show = opts.progress && std::io::stderr().is_terminal();
        Ok(Attempts {
            t,
            paths,
            opts,
            agent,
            meta,
            have,
            received: 0,
            resumed: false,
            attempts: 0,
            bar: progress_bar(show, t.label),
        })
    }

    /// Attempts until the body is complete or the retries are spent.
    fn run(&mut self) -> Result<()> {
        loop {
            self.attempts += 1;
            match self.attempt() {
                Ok(()) => {
                    self.bar.finish_and_clear();
                    return Ok(());
                }
                Err(Failure::Fatal(e)) => {
                    self.bar.abandon();
                    return Err(e);
                }
                Err(Failure::Retry { error, wait }) => {
                    if self.attempts > self.opts.retries {
                        self.bar.abandon();
                        return Err(DataError::Retried {
                            attempts: self.attempts,
                            last: Box::new(error),
                        });
                    }
                    let pause = wait
                        .unwrap_or_else(|| backoff(self.opts, self.attempts))
                        .min(self.opts.max_backoff);
                    self.say(&format!(
                        "{error}; retry {} of {} in {:.1} s",
                        self.attempts,
                        self.opts.retries,
                        pause.as_secs_f64()
                    ));
                    std::thread::sleep(pause);
                }
            }
        }
    }

    /// A line on stderr above the bar (or in the log when there is no bar).
    fn say(&self, line: &str) {
        if self.bar.is_hidden() {
            log::warn!("{}: {line}", self.t.label);
        } else {
            self.bar.println(format!("{}: {line}", self.t.label));
        }
    }

    /// One request: the whole body, or the rest of it after `have` bytes.
    fn attempt(&mut self) -> std::result::Result<(), Failure> {
        let url = self.t.url;
        let mut req = self.agent.get(url);
        for (k, v) in &self.opts.headers {
            req = req.header(k, v);
        }
        let from = self.have;
        if from > 0 {
            req = req.header("Range", &format!("bytes={from}-"));
            if let Some(etag) = &self.meta.etag {
                req = req.header("If-Range", etag);
            }
        }
        let response = req.call().map_err(|e| self.network(e))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match status {
            206 if from > 0 => {
                let range = header("content-range").and_then(|v| parse_content_range(&v));
                match range {
                    Some((start, total)) if start == from && total == self.meta.total.or(total) => {
                        self.meta.total = self.meta.total.or(total);
                        self.resumed = true;
                        self.say(&format!("resuming at byte {from}"));
                    }
                    _ => {
                        self.say("the server answered another range: starting afresh");
                        self.restart();
                        return Err(Failure::Retry {
                            error: self.error(format!("unexpected Content-Range {range:?}")),
                            wait: Some(Duration::ZERO),
                        });
                    }
                }
            }
            200 => {
                if from > 0 {
                    self.say(
                        "the server sent the whole file (no range, or it changed): starting afresh",
                    );
                }
                self.restart();
                self.meta.etag = header("etag");
                self.meta.total = response.body().content_length();
                self.write_meta().map_err(Failure::Fatal)?;
            }
            416 if from > 0 && self.meta.total == Some(from) => return Ok(()),
            416 => {
                self.restart();
                return Err(Failure::Retry {
                    error: self.error("the server refused the range of the kept bytes".into()),
                    wait: Some(Duration::ZERO),
                });
            }
            429 | 500..=599 => {
                let wait = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
                return Err(Failure::Retry {
                    error: DataError::HttpStatus {
                        url: url.to_owned(),
                        status,
                    },
                    wait: wait.map(Duration::from_secs),
                });
            }
            _ => {
                return Err(Failure::Fatal(DataError::HttpStatus {
                    url: url.to_owned(),
                    status,
                }))
            }
        }
        self.body(response.into_body().into_reader())
    }

    /// Appends the body to the partial file.
    fn body(&mut self, mut reader: impl Read) -> std::result::Result<(), Failure> {
        let path = &self.paths.partial;
        let fatal = |e: std::io::Error| Failure::Fatal(io_err(path)(e));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(fatal)?;
        file.seek(SeekFrom::Start(self.have)).map_err(fatal)?;
        file.set_len(self.have).map_err(fatal)?;
        if let Some(total) = self.meta.total {
            self.bar.set_length(total);
        }
        self.bar.set_position(self.have);
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    file.flush().map_err(fatal)?;
                    return Err(Failure::Retry {
                        error: self.read_error(e),
                        wait: None,
                    });
                }
            };
            file.write_all(&buf[..n]).map_err(fatal)?;
            self.have += n as u64;
            self.received += n as u64;
            self.bar.set_position(self.have);
        }
        file.flush().map_err(fatal)?;
        match self.meta.total {
            Some(total) if self.have < total => Err(Failure::Retry {
                error: DataError::Truncated {
                    url: self.t.url.to_owned(),
                    received: self.have,
                    expected: total,
                },
                wait: None,
            }),
            _ => Ok(()),
        }
    }

    /// Forgets the kept bytes.
    fn restart(&mut self) {
        discard(self.paths);
        self.have = 0;
        self.meta.etag = None;
        self.meta.total = None;
    }

    fn write_meta(&self) -> Result<()> {
        let json = serde_json::to_vec(&self.meta).map_err(|e| DataError::Format {
            path: self.paths.meta.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&self.paths.meta, json).map_err(io_err(&self.paths.meta))
    }

    fn error(&self, message: String) -> DataError {
        DataError::Network {
            url: self.t.url.to_owned(),
            message,
        }
    }

    /// A failed request: a timeout names its limit; every transport error is retried.
    fn network(&self, e: ureq::Error) -> Failure {
        let message = match &e {
            ureq::Error::Timeout(what) => format!(
                "no answer within the limit ({what:?}; connect {:.1} s, read {:.1} s)",
                self.opts.connect_timeout.as_secs_f64(),
                self.opts.read_timeout.as_secs_f64()
            ),
            other => other.to_string(),
        };
        Failure::Retry {
            error: self.error(message),
            wait: None,
        }
    }

    /// A body that stopped: for a silent server the limit, for one that hung up early the
    /// bytes received of those announced.
    fn read_error(&self, e: std::io::Error) -> DataError {
        let timed_out = matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ) || e.to_string().to_ascii_lowercase().contains("timeout");
        let of = self
            .meta
            .total
            .map(|t| format!(" of {t}"))
            .unwrap_or_default();
        match self.meta.total {
            _ if timed_out => self.error(format!(
                "the server went silent for {:.1} s after {} bytes{of}",
                self.opts.read_timeout.as_secs_f64(),
                self.have
            )),
            Some(total) if self.have < total => DataError::Truncated {
                url: self.t.url.to_owned(),
                received: self.have,
                expected: total,
            },
            _ => self.error(format!("the body broke off after {} bytes: {e}", self.have)),
        }
    }
}

/// Exponential backoff with jitter for the `attempt`-th retry (1-based): a uniform wait in
/// `[base * 2^(attempt-1) / 2, base * 2^(attempt-1)]`, capped at `max_backoff`.
pub fn backoff(opts: &DownloadOptions, attempt: u32) -> Duration {
    let full = opts
        .backoff
        .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16))
        .min(opts.max_backoff);
    let jitter = rand::random::<f64>();
    full.mul_f64(0.5 + 0.5 * jitter)
}

/// `bytes START-END/TOTAL` -> (START, TOTAL if given).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let spec = v.trim().strip_prefix("bytes")?.trim();
    let (range, total) = spec.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

/// Hex digest of a file, lower-case.
pub(crate) fn hash_file<D: md5::Digest>(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = D::new();
    let mut buf = vec![0u8; BUF];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Bytes, rate and ETA (a spinner until the size is known); hidden when `show` is false.
fn progress_bar(show: bool, label: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    let template = "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_and_backoff() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        let opts = DownloadOptions {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..Default::default()
        };
        for attempt in 1..6 {
            let full = (100u64 << (attempt - 1)).min(350);
            let b = backoff(&opts, attempt).as_millis() as u64;
            assert!(
                b * 2 >= full && b <= full,
                "attempt {attempt}: {b} ms of {full}"
            );
        }
        let p = Paths::of(Path::new("/x/blobs/abc"));
        assert_eq!(p.partial, Path::new("/x/blobs/abc.incomplete"));
        assert_eq!(p.lock, Path::new("/x/blobs/abc.lock"));
    }
}
