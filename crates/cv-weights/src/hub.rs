//! Downloads through the Hugging Face hub into the standard hub cache, so Python
//! (`huggingface_hub`, timm) and this crate share one copy of every checkpoint.
//!
//! `hf-hub` 0.5 gives the cache layout (`models--org--name/{blobs,snapshots,refs}`); the
//! transfer is `cv_data::download` (timeouts, retries with backoff, resume from
//! `blobs/<etag>.incomplete` as Python's client names partial blobs, a lock per blob, size and
//! sha256 checked before the blob gets its name). What hf-hub lacks is filled here:
//! - it reads only `HF_HOME` and `HF_ENDPOINT`: [`HubConfig`] also honours `HF_HUB_CACHE`,
//!   `XDG_CACHE_HOME`, `HF_TOKEN`, `HF_HUB_OFFLINE`, `HF_HUB_ETAG_TIMEOUT`,
//!   `HF_HUB_DOWNLOAD_TIMEOUT` and `HF_HUB_DISABLE_PROGRESS_BARS`;
//! - it has no offline mode: [`fetch_file`] answers from the cache and names what is missing;
//! - its download has no silent-read limit, retries 4xx answers, gives up on a lock after
//!   5 s and moves a short file into the cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cv_data::download::{self, Checksum, DownloadOptions, Transfer};
use cv_data::DataError;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Result, WeightsError};
use crate::registry::Pretrained;

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to reach the hub. Built from the environment by [`HubConfig::from_env`], or
/// explicitly (tests, embedding programs) so no process-global variable is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Base URL of the hub, no trailing slash (`HF_ENDPOINT`; default `https://huggingface.co`).
    pub endpoint: String,
    /// The hub cache folder (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Access token sent as `Authorization: Bearer` (`HF_TOKEN`, else the token file
    /// `$HF_HOME/token` written by `huggingface-cli login`).
    pub token: Option<String>,
    /// Use the cache only, never the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Draw a progress bar on stderr while downloading (off with `HF_HUB_DISABLE_PROGRESS_BARS=1`).
    pub progress: bool,
    /// Attempts after the first on connection errors, timeouts and 5xx/429 answers (a broken
    /// download resumes where it stopped).
    pub retries: usize,
    /// Limit for the metadata request (`HF_HUB_ETAG_TIMEOUT`, seconds; default 10).
    pub etag_timeout: Duration,
    /// Connect and silent-read limit of the download (`HF_HUB_DOWNLOAD_TIMEOUT`; default 10).
    pub download_timeout: Duration,
    /// The wait before the first retry, doubled each time (with jitter); default 1 s.
    pub backoff: Duration,
}

/// Environment as seen by [`HubConfig::from_lookup`]: the variables' values plus the token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvHub {
    /// The configuration the variables describe (token only from `HF_TOKEN`).
    pub config: HubConfig,
    /// Where `huggingface-cli login` keeps the token (`HF_TOKEN_PATH`, else `$HF_HOME/token`).
    pub token_path: PathBuf,
}

impl EnvHub {
    /// The configuration, with the token read from [`EnvHub::token_path`] when no variable
    /// set one (an unreadable or empty file means no token).
    pub fn with_token_file(self) -> HubConfig {
        let mut config = self.config;
        if config.token.is_none() {
            config.token = std::fs::read_to_string(&self.token_path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty());
        }
        config
    }
}

/// The Python client's default for both hub timeouts.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait between attempts.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);

/// Retries of [`HubConfig::from_env`].
pub const DEFAULT_RETRIES: usize = 5;

/// A timeout variable in seconds (fractions allowed); the default when unset or not a
/// positive number.
fn seconds(v: Option<String>) -> Duration {
    v.and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs_f64)
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl HubConfig {
    /// A configuration for `endpoint` and `cache_dir`, online, no token, no progress bar.
    pub fn new(endpoint: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        HubConfig {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            cache_dir: cache_dir.into(),
            token: None,
            offline: false,
            progress: false,
            retries: 0,
            etag_timeout: DEFAULT_TIMEOUT,
            download_timeout: DEFAULT_TIMEOUT,
            backoff: DEFAULT_BACKOFF,
        }
    }

    /// Reads the process environment (and the token file when `HF_TOKEN` is unset), with the
    /// same rules as Python's `huggingface_hub`.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok()).with_token_file()
    }

    /// The pure part of [`HubConfig::from_env`]: `lookup(name)` returns a variable's value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> EnvHub {
        let var = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            match var("XDG_CACHE_HOME") {
                Some(xdg) => PathBuf::from(xdg),
                None => var("HOME")
                    .or_else(|| var("USERPROFILE"))
                    .map(|h| PathBuf::from(h).join(".cache"))
                    .unwrap_or_else(|| PathBuf::from(".cache")),
            }
            .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token_path = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("token"));
        let config = HubConfig {
            endpoint: var("HF_ENDPOINT")
                .map(|e| e.trim().trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir,
            token: var("HF_TOKEN")
                .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
                .map(|t| t.trim().to_string()),
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            progress: !var("HF_HUB_DISABLE_PROGRESS_BARS").is_some_and(|v| truthy(&v)),
            retries: DEFAULT_RETRIES,
            etag_timeout: seconds(var("HF_HUB_ETAG_TIMEOUT")),
            download_timeout: seconds(var("HF_HUB_DOWNLOAD_TIMEOUT")),
            backoff: DEFAULT_BACKOFF,
        };
        EnvHub { config, token_path }
    }

    /// The cache folder of one model repository (`<cache>/models--org--name`).
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache_dir
            .join(Repo::model(repo.to_string()).folder_name())
    }
}

/// One file of one hub repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubFile<'a> {
    /// Repository, e.g. `timm/resnet18.tv_in1k`.
    pub repo: &'a str,
    /// Branch, tag or commit (`main`).
    pub revision: &'a str,
    /// File inside the repository, e.g. `model.safetensors`.
    pub file: &'a str,
}

impl<'a> HubFile<'a> {
    /// The weights file of a registry entry.
    pub fn of(p: &'a Pretrained) -> Self {
        HubFile {
            repo: p.repo,
            revision: p.revision,
            file: p.file,
        }
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(
            self.repo.to_string(),
            RepoType::Model,
            self.revision.to_string(),
        )
    }
}

/// The cached copy of `file`, if a complete one is there (no network).
pub fn cached_file(config: &HubConfig, file: HubFile<'_>) -> Option<PathBuf> {
    let path = Cache::new(config.cache_dir.clone())
        .repo(file.repo())
        .get(file.file)?;
    // `get` follows the snapshot link; a link whose blob was removed is not a copy.
    std::fs::metadata(&path)
        .ok()
        .filter(|m| m.is_file())
        .map(|_| path)
}

/// The cached weights of a registry entry, in the cache [`HubConfig::from_env`] names.
pub fn cached(p: &Pretrained) -> Option<PathBuf> {
    cached_file(&HubConfig::from_env(), HubFile::of(p))
}

/// The weights of a registry entry: from the cache, else downloaded into it.
pub fn fetch(p: &Pretrained, config: &HubConfig) -> Result<PathBuf> {
    fetch_file(config, HubFile::of(p), p.name)
}

/// `file` from the cache, else (unless offline) downloaded into it and checked.
///
/// `name` is what the user would pass to `cv weights fetch`, for the offline message.
pub fn fetch_file(config: &HubConfig, file: HubFile<'_>, name: &str) -> Result<PathBuf> {
    if let Some(path) = cached_file(config, file) {
        log::debug!(
            "{}/{}: using cached {}",
            file.repo,
            file.file,
            path.display()
        );
        return Ok(path);
    }
    if config.offline {
        return Err(WeightsError::NotCached {
            repo: file.repo.to_string(),
            file: file.file.to_string(),
            cache_dir: config.cache_dir.clone(),
            name: name.to_string(),
        });
    }
    let url = format!(
        "{}/{}/resolve/{}/{}",
        config.endpoint, file.repo, file.revision, file.file
    );
    let repo_dir = config.repo_dir(file.repo);
    let meta = metadata(config, &url).map_err(|e| hub_error(e, &url, &repo_dir))?;
    let cache = Cache::new(config.cache_dir.clone()).repo(file.repo());
    let blob = cache.blob_path(&meta.etag);
    let blobs = blob.parent().unwrap_or(&repo_dir).to_path_buf();
    std::fs::create_dir_all(&blobs).map_err(|e| WeightsError::io(&blobs, e))?;
    log::info!("downloading {url} into {}", config.cache_dir.display());
    let t = Transfer {
        url: &meta.location,
        dest: &blob,
        size: Some(meta.size),
        // An LFS file's etag is the sha256 of its bytes; other etags are not digests.
        checksum: is_sha256(&meta.etag).then(|| Checksum::Sha256(meta.etag.clone())),
        label: file.file,
        refresh: false,
    };
    // The token goes to the hub only, not to the storage a redirect points to.
    let on_hub = same_origin(&meta.location, &config.endpoint);
    let opts = download_options(config, on_hub);
    download::fetch(&t, &opts).map_err(|e| hub_error(e, &url, &repo_dir))?;
    let mut pointer = cache.pointer_path(&meta.commit);
    pointer.push(file.file);
    link(&blob, &pointer)?;
    cache
        .create_ref(&meta.commit)
        .map_err(|e| WeightsError::io(&repo_dir, e))?;
    log::info!("{url}: {} bytes saved as {}", meta.size, pointer.display());
    Ok(pointer)
}

/// What the hub says about a file before it is fetched.
#[derive(Debug)]
struct Metadata {
    /// The commit the revision points to (`X-Repo-Commit`).
    commit: String,
    /// The blob's name (`X-Linked-Etag`, else `ETag`, unquoted).
    etag: String,
    /// Its size (from `Content-Range` of a one-byte answer).
    size: u64,
    /// Where its bytes are (the resolve URL, or where it redirects: a CDN).
    location: String,
}

/// The transfer settings of `config` (with the token as `Authorization: Bearer` when
/// `with_token`).
fn download_options(config: &HubConfig, with_token: bool) -> DownloadOptions {
    DownloadOptions {
        connect_timeout: config.download_timeout,
        read_timeout: config.download_timeout,
        retries: config.retries as u32,
        backoff: config.backoff,
        progress: config.progress,
        headers: config
            .token
            .iter()
            .filter(|_| with_token)
            .map(|t| ("Authorization".to_string(), format!("Bearer {t}")))
            .collect(),
        ..DownloadOptions::default()
    }
}

/// Asks for the first byte of `url` (without following a redirect, whose headers carry the
/// hub's) and reads the commit, the etag and the size; transport errors and 5xx/429 answers
/// are retried like the download.
fn metadata(config: &HubConfig, url: &str) -> std::result::Result<Metadata, DataError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(config.etag_timeout))
        .timeout_recv_response(Some(config.etag_timeout))
        .timeout_per_read(Some(config.etag_timeout))
        .build()
        .into();
    let opts = download_options(config, true);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match first_byte(&agent, &opts, url) {
            Err(Retry::Again(e)) if attempt <= opts.retries => {
                let pause = download::backoff(&opts, attempt);
                log::warn!(
                    "{url}: {e}; retry {attempt} of {} in {pause:?}",
                    opts.retries
                );
                std::thread::sleep(pause);
            }
            Err(Retry::Again(e)) if attempt > 1 => {
                return Err(DataError::Retried {
                    attempts: attempt,
                    last: Box::new(e),
                })
            }
            Err(Retry::Again(e) | Retry::Final(e)) => return Err(e),
            Ok(m) => return Ok(m),
        }
    }
}

/// A failed metadata request: worth another try or not.
enum Retry {
    Again(DataError),
    Final(DataError),
}

/// One metadata request (and the one-byte request its redirect points to).
fn first_byte(
    agent: &ureq::Agent,
    opts: &DownloadOptions,
    url: &str,
) -> std::result::Result<Metadata, Retry> {
    let network = |e: ureq::Error| {
        Retry::Again(DataError::Network {
            url: url.to_string(),
            message: e.to_string(),
        })
    };
    // The token (in `opts.headers`) goes to the hub only, not to a redirect's storage.
    let get = |u: &str| {
        let mut req = agent.get(u).header("Range", "bytes=0-0");
        if same_origin(u, url) {
            for (k, v) in &opts.headers {
                req = req.header(k, v);
            }
        }
        req.call()
    };
    let first = get(url).map_err(network)?;
    let status = first.status().as_u16();
    let header = |r: &ureq::http::Response<ureq::Body>, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let missing = |what: &str| {
        Retry::Final(DataError::Network {
            url: url.to_string(),
            message: format!("the answer has no valid {what} header"),
        })
    };
    match status {
        200..=399 => {}
        429 | 500..=599 => {
            return Err(Retry::Again(DataError::HttpStatus {
                url: url.to_string(),
                status,
            }))
        }
        _ => {
            return Err(Retry::Final(DataError::HttpStatus {
                url: url.to_string(),
                status,
            }))
        }
    }
    let commit = header(&first, "x-repo-commit").ok_or_else(|| missing("X-Repo-Commit"))?;
    let etag = header(&first, "x-linked-etag")
        .or_else(|| header(&first, "etag"))
        .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
        .filter(|e| !e.is_empty() && !e.contains(['/', '\\']))
        .ok_or_else(|| missing("etag"))?;
    let (sized, location) = if (300..400).contains(&status) {
        let to = header(&first, "location").ok_or_else(|| missing("Location"))?;
        let to = absolute(url, &to);
        (get(&to).map_err(network)?, to)
    } else {
        (first, url.to_string())
    };
    let size = header(&sized, "x-linked-size")
        .or_else(|| {
            header(&sized, "content-range").and_then(|r| r.rsplit('/').next().map(str::to_owned))
        })
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| missing("Content-Range"))?;
    Ok(Metadata {
        commit,
        etag,
        size,
        location,
    })
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let end = url
        .find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(url.len());
    &url[..end]
}

/// Whether two URLs share scheme, host and port.
fn same_origin(a: &str, b: &str) -> bool {
    origin(a).eq_ignore_ascii_case(origin(b))
}

/// `to` (a `Location` header) resolved against `from`.
fn absolute(from: &str, to: &str) -> String {
    if to.contains("://") {
        return to.to_string();
    }
    format!("{}/{}", origin(from), to.trim_start_matches('/'))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Points the snapshot entry `pointer` at `blob` (a relative symlink, as the hub cache does;
/// a copy where links cannot be made), replacing whatever was there in one rename.
fn link(blob: &Path, pointer: &Path) -> Result<()> {
    let dir = pointer.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| WeightsError::io(dir, e))?;
    let tmp = dir.join(format!(".link-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let made = make_link(blob, pointer, &tmp);
    let done = made.and_then(|()| std::fs::rename(&tmp, pointer));
    done.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        WeightsError::io(pointer, e)
    })
}

#[cfg(unix)]
fn make_link(blob: &Path, pointer: &Path, tmp: &Path) -> std::io::Result<()> {
    // From snapshots/<commit>/<file...> up to the repository folder, then into blobs/.
    let depth = pointer
        .strip_prefix(
            blob.parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("")),
        )
        .map(|rel| rel.components().count().saturating_sub(1))
        .unwrap_or(0);
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    std::os::unix::fs::symlink(target, tmp)
}

#[cfg(not(unix))]
fn make_link(blob: &Path, _pointer: &Path, tmp: &Path) -> std::io::Result<()> {
    std::fs::copy(blob, tmp).map(|_| ())
}

fn status_hint(status: u16) -> &'static str {
    match status {
        401 | 403 => "access denied: the repository is private or gated; set HF_TOKEN to a token that may read it",
        404 => "no such repository or file (check the name); private repositories also answer 404 without HF_TOKEN",
        429 => "rate limited: wait and try again, or set HF_TOKEN",
        500..=599 => "the hub failed: try again later, or set HF_ENDPOINT to a mirror",
        _ => "unexpected answer",
    }
}

/// The hub's wording of a transfer error.
fn hub_error(e: DataError, url: &str, repo_dir: &Path) -> WeightsError {
    match e {
        DataError::HttpStatus { status, .. } => WeightsError::HttpStatus {
            url: url.to_string(),
            status,
            hint: status_hint(status).to_string(),
        },
        DataError::Truncated {
            received, expected, ..
        } => WeightsError::Truncated {
            url: url.to_string(),
            expected,
            received,
            cache_dir: repo_dir.to_path_buf(),
        },
        DataError::Retried { attempts, last } => match *last {
            DataError::Network { message, .. } => WeightsError::Download {
                url: url.to_string(),
                reason: format!(
                    "{message} (gave up after {attempts} attempts; no network? set \
                     HF_HUB_OFFLINE=1 to use only the cache, or HF_ENDPOINT for a mirror)"
                ),
            },
            other => hub_error(other, url, repo_dir),
        },
        DataError::Network { message, .. } => WeightsError::Download {
            url: url.to_string(),
            reason: if message.contains("header") {
                format!("{message} (is {url} a Hugging Face hub? check HF_ENDPOINT)")
            } else {
                format!(
                    "{message} (no network? set HF_HUB_OFFLINE=1 to use only the cache, or \
                     HF_ENDPOINT for a mirror)"
                )
            },
        },
        DataError::Io { path, error } => WeightsError::io(&path, error),
        other => WeightsError::Download {
            url: url.to_string(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> EnvHub {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubConfig::from_lookup(move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_huggingface_hub() {
        let e = env(&[("HOME", "/home/u")]);
        assert_eq!(e.config.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(
            e.config.cache_dir,
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert_eq!(
            e.token_path,
            PathBuf::from("/home/u/.cache/huggingface/token")
        );
        assert_eq!(e.config.token, None);
        assert!(!e.config.offline);
        assert!(e.config.progress);
        assert_eq!(e.config.etag_timeout, Duration::from_secs(10));
        assert_eq!(e.config.download_timeout, Duration::from_secs(10));
        assert_eq!(e.config.retries, DEFAULT_RETRIES);
    }

    #[test]
    fn timeouts_come_from_the_python_clients_variables() {
        let e = env(&[
            ("HF_HUB_ETAG_TIMEOUT", "2.5"),
            ("HF_HUB_DOWNLOAD_TIMEOUT", "30"),
        ]);
        assert_eq!(e.config.etag_timeout, Duration::from_millis(2500));
        assert_eq!(e.config.download_timeout, Duration::from_secs(30));
        for bad in ["0", "-1", "soon", "inf"] {
            let e = env(&[("HF_HUB_DOWNLOAD_TIMEOUT", bad)]);
            assert_eq!(e.config.download_timeout, DEFAULT_TIMEOUT, "{bad}");
        }
        assert_eq!(absolute("http://h:1/a/b", "/cdn/x"), "http://h:1/cdn/x");
        assert_eq!(absolute("http://h/a", "https://cdn/x"), "https://cdn/x");
        assert!(same_origin(
            "https://huggingface.co/a/b",
            "https://HuggingFace.co"
        ));
        assert!(!same_origin(
            "https://cdn-lfs.hf.co/x",
            "https://huggingface.co"
        ));
    }

    #[test]
    fn hf_home_xdg_and_hub_cache() {
        let e = env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(e.config.cache_dir, PathBuf::from("/xdg/huggingface/hub"));
        let e = env(&[
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HF_HOME", "/hf"),
        ]);
        assert_eq!(e.config.cache_dir, PathBuf::from("/hf/hub"));
        assert_eq!(e.token_path, PathBuf::from("/hf/token"));
        let e = env(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/cache")]);
        assert_eq!(e.config.cache_dir, PathBuf::from("/cache"));
        assert_eq!(e.token_path, PathBuf::from("/hf/token"));
        let e = env(&[("HF_HOME", "/hf"), ("HF_TOKEN_PATH", "/secret/t")]);
        assert_eq!(e.token_path, PathBuf::from("/secret/t"));
    }

    #[test]
    fn endpoint_token_offline() {
        let e = env(&[
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_TOKEN", " hf_abc \n"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_HUB_DISABLE_PROGRESS_BARS", "true"),
        ]);
        assert_eq!(e.config.endpoint, "http://127.0.0.1:9");
        assert_eq!(e.config.token.as_deref(), Some("hf_abc"));
        assert!(e.config.offline);
        assert!(!e.config.progress);
        for (v, off) in [
            ("0", false),
            ("false", false),
            ("", false),
            ("YES", true),
            ("on", true),
        ] {
            assert_eq!(env(&[("HF_HUB_OFFLINE", v)]).config.offline, off, "{v:?}");
        }
        let legacy = env(&[("HUGGING_FACE_HUB_TOKEN", "old")]);
        assert_eq!(legacy.config.token.as_deref(), Some("old"));
    }

    #[test]
    fn token_file_is_the_fallback() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        assert_eq!(env(&[("HF_HOME", h)]).with_token_file().token, None);
        std::fs::write(home.path().join("token"), "hf_from_file\n").unwrap();
        assert_eq!(
            env(&[("HF_HOME", h)]).with_token_file().token.as_deref(),
            Some("hf_from_file")
        );
        let e = env(&[("HF_HOME", h), ("HF_TOKEN", "hf_env")]);
        assert_eq!(e.with_token_file().token.as_deref(), Some("hf_env"));
    }

    #[test]
    fn repo_dir_uses_hub_layout() {
        let c = HubConfig::new("http://x", "/c");
        assert_eq!(
            c.repo_dir("timm/resnet18.tv_in1k"),
            PathBuf::from("/c/models--timm--resnet18.tv_in1k")
        );
    }
}
