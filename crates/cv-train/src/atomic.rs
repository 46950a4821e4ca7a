//! Crash-safe file writing: write a temporary file in the same folder, fsync it, rename it
//! over the target, fsync the folder. A crash or an error at any point leaves either the old
//! file or the new one, never half of either.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, TrainError};

/// Marker in the names of temporary files, so stale ones from a killed run can be removed.
const TMP_MARK: &str = ".tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary path next to `path` that keeps its extension (plotters and image
/// encoders choose the format from it): `dir/.name.tmp-<pid>-<n>.ext`.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = format!(".{stem}{TMP_MARK}{}-{n}", std::process::id());
    if let Some(ext) = path.extension() {
        name.push('.');
        name.push_str(&ext.to_string_lossy());
    }
    path.with_file_name(name)
}

/// Writes `path` through `write`, which receives a temporary path to create; only when it
/// returns `Ok` is the temporary file synced and renamed over `path`. On error the temporary
/// file is removed and `path` is untouched.
pub fn write_with<T>(path: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let tmp = temp_path_for(path);
    let result = write(&tmp).and_then(|value| {
        sync_file(&tmp)?;
        std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))?;
        sync_dir(path);
        Ok(value)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        let mut f = File::create(tmp).map_err(|e| TrainError::io(tmp, e))?;
        f.write_all(bytes).map_err(|e| TrainError::io(tmp, e))?;
        Ok(())
    })
}

/// Writes named tensors as safetensors atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    write_with(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp).map_err(|e| TrainError::State {
            path: path.to_path_buf(),
            message: format!("cannot write safetensors: {e}"),
        })
    })
}

fn sync_file(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| TrainError::io(path, e))?;
    f.sync_all().map_err(|e| TrainError::io(path, e))
}

/// Makes the rename durable. Best effort: some file systems refuse to sync a directory.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Removes temporary files a killed run left in `dir` (names `.<stem>.tmp-<pid>-<n>[.ext]`).
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(TrainError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(TMP_MARK) && entry.path().is_file() {
            std::fs::remove_file(entry.path()).map_err(|e| TrainError::io(entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_bytes(&p, b"one").unwrap();
        write_bytes(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn interrupted_writer_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let t = candle_core::Tensor::new(&[1f32, 2., 3.], &candle_core::Device::Cpu).unwrap();
        let good: std::collections::HashMap<_, _> = [("w".to_string(), t)].into();
        write_safetensors(&p, &good).unwrap();
        // A writer that fails half-way (as a full disk would): the target is untouched.
        let err = write_with(&p, |tmp| {
            std::fs::write(tmp, b"partial garbage").unwrap();
            Err::<(), _>(TrainError::io(tmp, std::io::Error::other("disk full")))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"));
        let back = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
        assert_eq!(back["w"].to_vec1::<f32>().unwrap(), vec![1., 2., 3.]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn killed_before_rename_keeps_the_old_file_and_temps_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let t = candle_core::Tensor::new(&[4f32], &candle_core::Device::Cpu).unwrap();
        let good: std::collections::HashMap<_, _> = [("w".to_string(), t)].into();
        write_safetensors(&p, &good).unwrap();
        // What a SIGKILL between write and rename leaves: a half-written temp beside it.
        let tmp = temp_path_for(&p);
        std::fs::write(&tmp, &std::fs::read(&p).unwrap()[..10]).unwrap();
        assert_eq!(tmp.extension().unwrap(), "safetensors");
        let back = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
        assert_eq!(back["w"].to_vec1::<f32>().unwrap(), vec![4.]);
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        assert!(!tmp.exists() && p.exists());
    }
}
