//! Fetching the CIFAR-10 binary archive: download (or take a local copy), verify its md5
//! before anything is extracted, extract safely into a temporary folder beside the target, check
//! the result, and only then rename it into place. A failed or interrupted run therefore never
//! leaves a partial download or a half dataset that a later run would mistake for a good one.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use md5::Md5;
use serde::{Deserialize, Serialize};

use crate::cifar;
use crate::download::{fetch, Checksum, DownloadOptions, Transfer};
use crate::error::{io_err, DataError, Result};

/// The official CIFAR-10 binary archive.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its md5.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// Its size in bytes.
pub const CIFAR10_SIZE: u64 = 170_052_171;
/// File name the download is kept under in the data folder.
pub const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";
/// Written into the dataset folder after a verified extraction.
pub const MARKER_NAME: &str = ".cv-verified.json";

const BUF: usize = 1 << 18;

/// How [`fetch_cifar10`] obtains and installs the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchOptions {
    /// Data folder; the dataset lands in `dir/cifar-10-batches-bin`.
    pub dir: PathBuf,
    /// Where to download the archive from (a mirror may be given).
    pub url: String,
    /// Expected md5 of the archive (hex, any case).
    pub md5: String,
    /// Use this local archive instead of downloading.
    pub archive: Option<PathBuf>,
    /// Redo everything even when a verified dataset is present.
    pub force: bool,
    /// Timeouts, retries and the progress bar of the download.
    pub net: DownloadOptions,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data"),
            url: CIFAR10_URL.to_owned(),
            md5: CIFAR10_MD5.to_owned(),
            archive: None,
            force: false,
            net: DownloadOptions::default(),
        }
    }
}

/// Where the installed archive came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveSource {
    /// Downloaded from this URL (bytes received).
    Downloaded { url: String, bytes: u64 },
    /// A verified archive already in the data folder from an earlier run.
    Cached(PathBuf),
    /// The file given with `--archive`.
    Local(PathBuf),
}

/// What [`fetch_cifar10`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A complete, verified dataset was already there; nothing was done.
    AlreadyPresent { dataset: PathBuf },
    /// The dataset was (re)installed.
    Installed {
        dataset: PathBuf,
        source: ArchiveSource,
    },
}

impl std::fmt::Display for FetchOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AlreadyPresent { dataset } => write!(
                f,
                "CIFAR-10 is already present and verified in {} (nothing to do; --force to redo)",
                dataset.display()
            ),
            Self::Installed { dataset, source } => {
                let from = match source {
                    ArchiveSource::Downloaded { url, bytes } => {
                        format!("downloaded {bytes} bytes from {url}")
                    }
                    ArchiveSource::Cached(p) => format!("reused verified archive {}", p.display()),
                    ArchiveSource::Local(p) => format!("from archive {}", p.display()),
                };
                write!(f, "CIFAR-10 installed in {} ({from})", dataset.display())
            }
        }
    }
}

/// Record of a verified extraction, kept in [`MARKER_NAME`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// md5 of the archive the files came from.
    pub archive_md5: String,
    /// Size in bytes of every batch file and `batches.meta.txt`.
    pub sizes: std::collections::BTreeMap<String, u64>,
}

/// md5 of a file, lower-case hex.
pub fn md5_file(path: &Path) -> Result<String> {
    crate::download::hash_file::<Md5>(path)
}

fn check_md5(source_name: &str, actual: String, expected: &str) -> Result<()> {
    if actual.eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(DataError::Checksum {
            source_name: source_name.to_owned(),
            algorithm: "md5",
            expected: expected.trim().to_ascii_lowercase(),
            actual,
        })
    }
}

/// Download `url` into `dir/name` through [`crate::download::fetch`] (timeouts, retries,
/// resume, a lock, the md5 checked before the file gets its name); a verified `dir/name` is
/// kept unless `refresh`. Returns the final path and the number of bytes received.
pub fn download(
    url: &str,
    dir: &Path,
    name: &str,
    md5: &str,
    opts: &DownloadOptions,
    refresh: bool,
) -> Result<(PathBuf, u64)> {
    let dest = dir.join(name);
    let t = Transfer {
        url,
        dest: &dest,
        size: None,
        checksum: Some(Checksum::Md5(md5.trim().to_owned())),
        label: name,
        refresh,
    };
    let got = fetch(&t, opts)?;
    Ok((got.path, got.received))
}

fn unsafe_member(archive: &Path, member: &str, reason: &str) -> DataError {
    DataError::UnsafeMember {
        path: archive.to_path_buf(),
        member: member.to_owned(),
        reason: reason.to_owned(),
    }
}

/// The member path made relative and checked: only plain names (and `.`) are allowed, so
/// nothing can land outside the target folder.
fn safe_relative(archive: &Path, raw: &Path) -> Result<Option<PathBuf>> {
    let shown = raw.to_string_lossy().into_owned();
    let mut rel = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => rel.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(unsafe_member(archive, &shown, "path contains `..`"))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_member(archive, &shown, "absolute path"))
            }
        }
    }
    Ok(if rel.as_os_str().is_empty() {
        None
    } else {
        Some(rel)
    })
}

/// Extract a `.tar.gz` into `dest` (which should be a fresh, empty folder), refusing absolute
/// paths, `..`, links, devices and other special members. Returns the files written. On error
/// `dest` may hold some files; callers extract into a temporary folder and drop it.
pub fn extract_tar_gz_safely(archive: &Path, dest: &Path) -> Result<Vec<PathBuf>> {
    use tar::EntryType;
    let corrupt = |e: std::io::Error| DataError::Archive {
        path: archive.to_path_buf(),
        message: e.to_string(),
    };
    let file = File::open(archive).map_err(io_err(archive))?;
    let gz = flate2::read::GzDecoder::new(BufReader::with_capacity(BUF, file));
    let mut tar = tar::Archive::new(gz);
    let mut written = Vec::new();
    let mut buf = vec![0u8; BUF];
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        let is_file = match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => true,
            EntryType::Directory => false,
            EntryType::XGlobalHeader => continue,
            EntryType::Symlink | EntryType::Link => {
                return Err(unsafe_member(archive, &shown, "links are not allowed"))
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(unsafe_member(
                    archive,
                    &shown,
                    "device or fifo members are not allowed",
                ))
            }
            other => {
                return Err(unsafe_member(
                    archive,
                    &shown,
                    &format!("unsupported member type {other:?}"),
                ))
            }
        };
        let Some(rel) = safe_relative(archive, &raw)? else {
            continue;
        };
        let target = dest.join(&rel);
        if !is_file {
            std::fs::create_dir_all(&target).map_err(io_err(&target))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        // create_new: a member repeated in the archive (or a name clash) is refused rather
        // than silently overwriting what was written before.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    unsafe_member(archive, &shown, "member appears twice")
                } else {
                    DataError::Io {
                        path: target.clone(),
                        error: e,
                    }
                }
            })?;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(e)),
            };
            out.write_all(&buf[..n]).map_err(io_err(&target))?;
        }
        out.sync_all().map_err(io_err(&target))?;
        written.push(target);
    }
    // Read the rest of the gzip stream so its CRC and length trailer are checked too.
    let mut rest = tar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(corrupt)?;
    Ok(written)
}

/// Check that `dir` holds a complete CIFAR-10 binary dataset: the class names, all six batches
/// with sizes that are whole numbers of records, and labels within the classes. Returns the
/// file sizes.
pub fn verify_dataset(dir: &Path) -> Result<std::collections::BTreeMap<String, u64>> {
    let classes = cifar::read_classes(dir)?;
    let mut sizes = std::collections::BTreeMap::new();
    let meta = dir.join(cifar::META_FILE);
    sizes.insert(
        cifar::META_FILE.to_owned(),
        std::fs::metadata(&meta).map_err(io_err(&meta))?.len(),
    );
    for name in cifar::batch_files() {
        let path = dir.join(name);
        let labels = cifar::read_labels(&path, classes.len())?;
        sizes.insert(name.to_owned(), (labels.len() * cifar::RECORD_BYTES) as u64);
    }
    Ok(sizes)
}

/// Quick check used for idempotence: every file present with a size that is a whole number of
/// records, and, where a marker from an earlier verified extraction exists, the same sizes.
pub fn is_complete(dir: &Path) -> bool {
    let size = |name: &str| {
        std::fs::metadata(dir.join(name))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    };
    let Some(meta) = size(cifar::META_FILE) else {
        return false;
    };
    if meta == 0 {
        return false;
    }
    let mut sizes = std::collections::BTreeMap::new();
    sizes.insert(cifar::META_FILE.to_owned(), meta);
    for name in cifar::batch_files() {
        match size(name) {
            Some(s) if s > 0 && s % cifar::RECORD_BYTES as u64 == 0 => {
                sizes.insert(name.to_owned(), s);
            }
            _ => return false,
        }
    }
    match std::fs::read(dir.join(MARKER_NAME)) {
        Ok(bytes) => match serde_json::from_slice::<Marker>(&bytes) {
            Ok(marker) => marker.sizes == sizes,
            Err(_) => false,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(_) => false,
    }
}

/// Move `staged` to `target`, replacing whatever is there without ever leaving `target` absent
/// and the old copy deleted before the new one is in place.
fn replace_dir(staged: &Path, target: &Path, parent: &Path) -> Result<()> {
    if target.exists() {
        let old = tempfile::Builder::new()
            .prefix(".old-cifar-")
            .tempdir_in(parent)
            .map_err(io_err(parent))?;
        let aside = old.path().join("old");
        std::fs::rename(target, &aside).map_err(io_err(target))?;
        if let Err(e) = std::fs::rename(staged, target) {
            // Put the previous copy back so the user loses nothing.
            let _ = std::fs::rename(&aside, target);
            return Err(DataError::Io {
                path: target.to_path_buf(),
                error: e,
            });
        }
        // `old` (with the previous copy inside) is removed when dropped.
        drop(old);
    } else {
        std::fs::rename(staged, target).map_err(io_err(target))?;
    }
    Ok(())
}

/// Prefixes of the temporary files and folders this module creates in the data folder.
const TEMP_PREFIXES: [&str; 3] = [".download-", ".extract-", ".old-cifar-"];
/// Temporaries untouched for this long belong to a run that was killed (no destructor ran).
const STALE_AFTER: Duration = Duration::from_secs(6 * 3600);

/// Remove temporaries left by killed runs. Recent ones are kept: another fetch may own them.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !TEMP_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if stale {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Make sure `opts.dir/cifar-10-batches-bin` holds the verified CIFAR-10 binary dataset:
/// do nothing if it already does (unless `force`), otherwise obtain the archive (`archive`,
/// a verified earlier download, or `url`), check its md5, extract it safely and install it.
pub fn fetch_cifar10(opts: &FetchOptions) -> Result<FetchOutcome> {
    let md5 = opts.md5.trim();
    if md5.len() != 32 || !md5.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(DataError::InvalidOption {
            option: "md5".into(),
            message: format!("{md5:?} is not 32 hexadecimal digits"),
        });
    }
    let dir = &opts.dir;
    let target = dir.join(cifar::DIR_NAME);
    if !opts.force && is_complete(&target) {
        return Ok(FetchOutcome::AlreadyPresent { dataset: target });
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    remove_stale_temps(dir);

    let (archive, source) = match &opts.archive {
        Some(path) => {
            if !path.is_file() {
                return Err(DataError::Missing {
                    path: path.clone(),
                    what: "archive given with --archive".into(),
                });
            }
            check_md5(&path.display().to_string(), md5_file(path)?, &opts.md5)?;
            (path.clone(), ArchiveSource::Local(path.clone()))
        }
        None => {
            let cached = dir.join(ARCHIVE_NAME);
            let reuse = !opts.force
                && cached.is_file()
                && md5_file(&cached).is_ok_and(|m| m.eq_ignore_ascii_case(opts.md5.trim()));
            if reuse {
                (cached.clone(), ArchiveSource::Cached(cached))
            } else {
                let (path, bytes) = download(
                    &opts.url,
                    dir,
                    ARCHIVE_NAME,
                    &opts.md5,
                    &opts.net,
                    opts.force,
                )?;
                (
                    path,
                    ArchiveSource::Downloaded {
                        url: opts.url.clone(),
                        bytes,
                    },
                )
            }
        }
    };

    let staging = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(dir)
        .map_err(io_err(dir))?;
    extract_tar_gz_safely(&archive, staging.path())?;
    let staged = staging.path().join(cifar::DIR_NAME);
    if !staged.is_dir() {
        return Err(DataError::Format {
            path: archive.clone(),
            message: format!("archive has no `{}` folder", cifar::DIR_NAME),
        });
    }
    let sizes = verify_dataset(&staged).map_err(|e| DataError::Format {
        path: archive.clone(),
        message: format!("extracted dataset is not valid CIFAR-10: {e}"),
    })?;
    let marker = Marker {
        archive_md5: opts.md5.trim().to_ascii_lowercase(),
        sizes,
    };
    let marker_path = staged.join(MARKER_NAME);
    let json = serde_json::to_vec_pretty(&marker).map_err(|e| DataError::Format {
        path: marker_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&marker_path, json).map_err(io_err(&marker_path))?;
    replace_dir(&staged, &target, dir)?;
    Ok(FetchOutcome::Installed {
        dataset: target,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        let a = Path::new("a.tgz");
        assert_eq!(
            safe_relative(a, Path::new("./x/y")).unwrap(),
            Some(PathBuf::from("x/y"))
        );
        assert!(safe_relative(a, Path::new("../x")).is_err());
        assert!(safe_relative(a, Path::new("x/../../y")).is_err());
        assert!(safe_relative(a, Path::new("/etc/passwd")).is_err());
        assert_eq!(safe_relative(a, Path::new("./")).unwrap(), None);
    }
}
