//! Downloads through the Hugging Face hub into the standard hub cache, so Python
//! (`huggingface_hub`, timm) and this crate share one copy of every checkpoint.
//!
//! `hf-hub` 0.5 does the HTTP and cache layout (`models--org--name/{blobs,snapshots,refs}`).
//! What it lacks is filled here, small and tested:
//! - it reads only `HF_HOME` and `HF_ENDPOINT` (and `Api::new()` not even those): [`HubConfig`]
//!   also honours `HF_HUB_CACHE`, `XDG_CACHE_HOME`, `HF_TOKEN` and `HF_HUB_OFFLINE`;
//! - it has no offline mode: [`fetch_file`] answers from the cache and names what is missing;
//! - it renames its `.part` file into the cache whenever the body *reader* ends, without
//!   comparing the length with the announced size: [`fetch_file`] counts the bytes and removes
//!   a short (or over-long) file from the cache before anyone can use it.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::api::Progress;
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
    /// How many times a broken download is resumed (HTTP range) before giving up.
    pub retries: usize,
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
            retries: 3,
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

/// Bytes announced and received, shared with the progress callback hf-hub owns.
#[derive(Default)]
struct Tally {
    expected: Cell<u64>,
    received: Cell<u64>,
}

/// hf-hub's progress hook: counts bytes (for the size check) and drives an optional bar.
struct Counter {
    tally: Rc<Tally>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress for Counter {
    fn init(&mut self, size: usize, filename: &str) {
        // hf-hub calls init again when it (re)starts a ranged request, then `update(start)`.
        self.tally.expected.set(size as u64);
        self.tally.received.set(0);
        if let Some(bar) = &mut self.bar {
            bar.set_position(0);
            Progress::init(bar, size, filename);
        }
    }
    fn update(&mut self, size: usize) {
        self.tally
            .received
            .set(self.tally.received.get() + size as u64);
        if let Some(bar) = &mut self.bar {
            Progress::update(bar, size);
        }
    }
    fn finish(&mut self) {
        if let Some(bar) = &mut self.bar {
            Progress::finish(bar);
        }
    }
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
    let api = ApiBuilder::from_cache(Cache::new(config.cache_dir.clone()))
        .with_endpoint(config.endpoint.clone())
        .with_token(config.token.clone())
        .with_retries(config.retries)
        .with_progress(false)
        .build()
        .map_err(|e| WeightsError::Download {
            url: config.endpoint.clone(),
            reason: e.to_string(),
        })?;
    let repo = api.repo(file.repo());
    let url = repo.url(file.file);
    log::info!("downloading {url} into {}", config.cache_dir.display());
    let tally = Rc::new(Tally::default());
    let bar = config.progress.then(|| indicatif::ProgressBar::new(0));
    let counter = Counter {
        tally: tally.clone(),
        bar,
    };
    let repo_dir = config.repo_dir(file.repo);
    let path = match repo.download_with_progress(file.file, counter) {
        Ok(path) => path,
        Err(e) => return Err(api_error(e, &url, &tally, &repo_dir)),
    };
    let expected = tally.expected.get();
    let on_disk = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if on_disk != expected || tally.received.get() != expected {
        // hf-hub already moved it into the cache: take it out again before anyone uses it.
        evict(&path);
        return Err(WeightsError::Truncated {
            url,
            expected,
            received: on_disk,
            cache_dir: repo_dir,
        });
    }
    log::info!("{url}: {expected} bytes saved as {}", path.display());
    Ok(path)
}

/// Removes a snapshot link and the blob it points to.
fn evict(pointer: &Path) {
    if let Ok(blob) = std::fs::canonicalize(pointer) {
        if let Err(e) = std::fs::remove_file(&blob) {
            log::warn!("{}: could not remove a bad download: {e}", blob.display());
        }
    }
    if let Err(e) = std::fs::remove_file(pointer) {
        log::warn!(
            "{}: could not remove a bad download: {e}",
            pointer.display()
        );
    }
}

/// Removes `*.part` files of a repository (a partial file longer than the announced size
/// can never be resumed).
fn remove_part_files(repo_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(repo_dir.join("blobs")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "part") {
            let _ = std::fs::remove_file(&path);
        }
    }
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

fn api_error(e: ApiError, url: &str, tally: &Tally, repo_dir: &Path) -> WeightsError {
    let download = |reason: String| WeightsError::Download {
        url: url.to_string(),
        reason,
    };
    match e {
        ApiError::TooManyRetries(inner) => api_error(*inner, url, tally, repo_dir),
        ApiError::RequestError(err) => match *err {
            ureq::Error::StatusCode(status) => WeightsError::HttpStatus {
                url: url.to_string(),
                status,
                hint: status_hint(status).to_string(),
            },
            ureq::Error::Io(io) if tally.expected.get() > 0 => truncated(io, url, tally, repo_dir),
            other => download(format!(
                "{other} (no network? set HF_HUB_OFFLINE=1 to use only the cache, or HF_ENDPOINT for a mirror)"
            )),
        },
        ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => download(format!(
            "the answer has no valid {h} header (is {url} a Hugging Face hub? check HF_ENDPOINT)"
        )),
        ApiError::InvalidResume => {
            remove_part_files(repo_dir);
            download("a partial download in the cache was longer than the file; it was removed, try again".into())
        }
        ApiError::IoError(io) if tally.expected.get() > 0 && tally.received.get() < tally.expected.get() => {
            truncated(io, url, tally, repo_dir)
        }
        ApiError::IoError(io) => WeightsError::io(repo_dir, io),
        ApiError::LockAcquisition(path) => download(format!(
            "{} is locked: another process is downloading the same file",
            path.display()
        )),
        other => download(other.to_string()),
    }
}

fn truncated(io: std::io::Error, url: &str, tally: &Tally, repo_dir: &Path) -> WeightsError {
    log::warn!("{url}: body ended early: {io}");
    WeightsError::Truncated {
        url: url.to_string(),
        expected: tally.expected.get(),
        received: tally.received.get(),
        cache_dir: repo_dir.to_path_buf(),
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
