//! Safe extraction and the fetch logic, against archives and a loopback server made here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cv_data::archive::{
    self, extract_tar_gz_safely, fetch_cifar10, ArchiveSource, FetchOptions, FetchOutcome,
};
use cv_data::download::DownloadOptions;
use cv_data::DataError;
use cv_testkit::cifar::{cifar_tar_gz, tar_gz, write_cifar_dir, TarMember};
use cv_testkit::http::{Response, TestServer};
use cv_testkit::md5_hex;

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn hostile(members: Vec<TarMember>, expect_reason: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tmp.path().join("a.tar.gz");
    std::fs::write(&arch, tar_gz(&members)).unwrap();
    let dest = tmp.path().join("sandbox/out");
    std::fs::create_dir_all(&dest).unwrap();
    let outside = |all: Vec<PathBuf>| -> Vec<PathBuf> {
        all.into_iter()
            .filter(|p| !p.starts_with("sandbox/out"))
            .collect()
    };
    let before = outside(tree(tmp.path()));
    let err = extract_tar_gz_safely(&arch, &dest).unwrap_err();
    assert!(matches!(err, DataError::UnsafeMember { .. }), "{err}");
    assert!(err.to_string().contains(expect_reason), "{err}");
    assert!(err.to_string().contains("a.tar.gz"), "{err}");
    // Nothing appeared outside the target folder.
    let after = outside(tree(tmp.path()));
    assert_eq!(before, after);
}

#[test]
fn parent_dir_members_are_refused() {
    hostile(
        vec![
            TarMember::File("ok.txt".into(), b"fine".to_vec()),
            TarMember::File("../escape.txt".into(), b"evil".to_vec()),
        ],
        "..",
    );
    hostile(
        vec![TarMember::File(
            "a/../../escape.txt".into(),
            b"evil".to_vec(),
        )],
        "..",
    );
}

#[test]
fn absolute_members_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("abs-target.txt");
    hostile(
        vec![TarMember::File(
            target.display().to_string(),
            b"evil".to_vec(),
        )],
        "absolute",
    );
    assert!(!target.exists());
}

#[test]
fn links_are_refused() {
    hostile(
        vec![TarMember::Symlink("link".into(), "/etc".into())],
        "link",
    );
    hostile(
        vec![
            TarMember::Symlink("d".into(), "..".into()),
            TarMember::File("d/escape.txt".into(), b"evil".to_vec()),
        ],
        "link",
    );
}

#[test]
fn good_archive_extracts_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tmp.path().join("a.tar.gz");
    let members = vec![
        TarMember::Dir("top/".into()),
        TarMember::File("top/a.bin".into(), vec![1, 2, 3]),
        TarMember::File("./top/sub/b.txt".into(), b"hello".to_vec()),
    ];
    std::fs::write(&arch, tar_gz(&members)).unwrap();
    let dest = tmp.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    let files = extract_tar_gz_safely(&arch, &dest).unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(std::fs::read(dest.join("top/a.bin")).unwrap(), [1, 2, 3]);
    assert_eq!(std::fs::read(dest.join("top/sub/b.txt")).unwrap(), b"hello");
}

#[test]
fn corrupt_gzip_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tmp.path().join("bad.tar.gz");
    let mut bytes = tar_gz(&[TarMember::File("x".into(), vec![7; 5000])]);
    let n = bytes.len();
    bytes[n / 2] ^= 0xFF;
    bytes[n - 6] ^= 0xFF; // CRC trailer too
    std::fs::write(&arch, &bytes).unwrap();
    let dest = tmp.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    let err = extract_tar_gz_safely(&arch, &dest).unwrap_err();
    assert!(matches!(err, DataError::Archive { .. }), "{err}");
    assert!(err.to_string().contains("bad.tar.gz"), "{err}");
}

struct Fixture {
    _tmp: tempfile::TempDir,
    archive: PathBuf,
    bytes: Vec<u8>,
    data: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let src = write_cifar_dir(&tmp.path().join("src"), 3, 3, 5).unwrap();
    let bytes = cifar_tar_gz(&src).unwrap();
    let archive = tmp.path().join("cifar.tar.gz");
    std::fs::write(&archive, &bytes).unwrap();
    let data = tmp.path().join("data");
    Fixture {
        archive,
        bytes,
        data,
        _tmp: tmp,
    }
}

fn opts(f: &Fixture) -> FetchOptions {
    FetchOptions {
        dir: f.data.clone(),
        url: "http://127.0.0.1:9/unused".into(),
        md5: md5_hex(&f.bytes),
        archive: Some(f.archive.clone()),
        force: false,
        net: quick_net(),
    }
}

/// Short timeouts and backoffs, no progress bar.
fn quick_net() -> DownloadOptions {
    DownloadOptions {
        connect_timeout: Duration::from_millis(500),
        read_timeout: Duration::from_millis(500),
        retries: 2,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        progress: false,
        headers: Vec::new(),
    }
}

#[test]
fn local_archive_installs_then_is_idempotent() {
    let f = fixture();
    let out = fetch_cifar10(&opts(&f)).unwrap();
    let target = f.data.join("cifar-10-batches-bin");
    assert!(
        matches!(
            out,
            FetchOutcome::Installed {
                source: ArchiveSource::Local(_),
                ..
            }
        ),
        "{out:?}"
    );
    assert!(archive::is_complete(&target));
    assert_eq!(cv_data::cifar::load(&target).unwrap().train.len(), 15);
    // Only the dataset is left in the data folder: no temp folders.
    assert_eq!(
        tree(&f.data)
            .iter()
            .filter(|p| p.components().count() == 1)
            .count(),
        1
    );
    let again = fetch_cifar10(&opts(&f)).unwrap();
    assert!(
        matches!(again, FetchOutcome::AlreadyPresent { .. }),
        "{again:?}"
    );
    // A damaged dataset is not "complete" and gets replaced.
    std::fs::write(target.join("data_batch_2.bin"), [0u8; 10]).unwrap();
    assert!(!archive::is_complete(&target));
    let redo = fetch_cifar10(&opts(&f)).unwrap();
    assert!(matches!(redo, FetchOutcome::Installed { .. }));
    assert!(archive::is_complete(&target));
}

#[test]
fn wrong_md5_of_local_archive_leaves_nothing() {
    let f = fixture();
    let mut o = opts(&f);
    o.md5 = "0".repeat(32);
    let err = fetch_cifar10(&o).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("cifar.tar.gz"), "{err}");
    o.md5 = "not-a-checksum".into();
    let err = fetch_cifar10(&o).unwrap_err();
    assert!(matches!(err, DataError::InvalidOption { .. }), "{err}");
    assert!(err.to_string().starts_with("md5: "), "{err}");
    assert!(!f.data.join("cifar-10-batches-bin").exists());
    assert!(tree(&f.data).is_empty());
}

#[test]
fn archive_without_dataset_or_with_bad_batches_is_rejected() {
    let f = fixture();
    // Right md5, wrong content: a tar without the dataset folder.
    let other = tar_gz(&[TarMember::File("readme.txt".into(), b"hi".to_vec())]);
    std::fs::write(&f.archive, &other).unwrap();
    let mut o = opts(&f);
    o.md5 = md5_hex(&other);
    let err = fetch_cifar10(&o).unwrap_err();
    assert!(err.to_string().contains("cifar-10-batches-bin"), "{err}");
    // A batch with a truncated record.
    let bad = tar_gz(&[
        TarMember::File(
            "cifar-10-batches-bin/batches.meta.txt".into(),
            b"a\nb\n".to_vec(),
        ),
        TarMember::File(
            "cifar-10-batches-bin/data_batch_1.bin".into(),
            vec![0; 3000],
        ),
    ]);
    std::fs::write(&f.archive, &bad).unwrap();
    o.md5 = md5_hex(&bad);
    let err = fetch_cifar10(&o).unwrap_err();
    assert!(err.to_string().contains("data_batch_1.bin"), "{err}");
    assert!(tree(&f.data).is_empty(), "{:?}", tree(&f.data));
}

#[test]
fn download_cases() {
    let f = fixture();
    let server = TestServer::start();
    server.route("/c.tgz", Response::ok(f.bytes.clone()));
    server.route("/short.tgz", Response::ok(f.bytes.clone()).truncated(1000));
    let mut o = opts(&f);
    o.archive = None;

    o.url = format!("{}/missing.tgz", server.url());
    let err = fetch_cifar10(&o).unwrap_err();
    assert!(
        matches!(err, DataError::HttpStatus { status: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/missing.tgz"), "{err}");

    // A body that always breaks off: retried, then given up; the bytes are kept for a resume,
    // under a name no reader takes for the archive.
    o.url = format!("{}/short.tgz", server.url());
    let err = fetch_cifar10(&o).unwrap_err();
    let DataError::Retried { attempts: 3, last } = &err else {
        panic!("{err}")
    };
    assert!(matches!(**last, DataError::Truncated { .. }), "{err}");
    assert!(!f.data.join(archive::ARCHIVE_NAME).exists());
    let partial = cv_data::download::partial_path(&f.data.join(archive::ARCHIVE_NAME));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 1000);
    std::fs::remove_file(&partial).unwrap();

    o.url = format!("{}/c.tgz", server.url());
    o.md5 = "f".repeat(32);
    let err = fetch_cifar10(&o).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    assert!(!f.data.join(archive::ARCHIVE_NAME).exists());
    assert!(!partial.exists());

    o.md5 = md5_hex(&f.bytes);
    let out = fetch_cifar10(&o).unwrap();
    assert!(matches!(
        out,
        FetchOutcome::Installed {
            source: ArchiveSource::Downloaded { .. },
            ..
        }
    ));
    assert!(f.data.join(archive::ARCHIVE_NAME).is_file());

    // The dataset is gone but the verified archive is kept: no second download.
    std::fs::remove_dir_all(f.data.join("cifar-10-batches-bin")).unwrap();
    let n = server.requests().len();
    let out = fetch_cifar10(&o).unwrap();
    assert!(
        matches!(
            out,
            FetchOutcome::Installed {
                source: ArchiveSource::Cached(_),
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(server.requests().len(), n);
}

#[test]
fn unreachable_host_names_the_url() {
    let mut server = TestServer::start();
    let url = format!("{}/x.tgz", server.url());
    server.stop();
    let tmp = tempfile::tempdir().unwrap();
    let o = FetchOptions {
        dir: tmp.path().join("d"),
        url: url.clone(),
        md5: "0".repeat(32),
        archive: None,
        force: false,
        net: quick_net(),
    };
    let err = fetch_cifar10(&o).unwrap_err();
    let DataError::Retried { last, .. } = &err else {
        panic!("{err}")
    };
    assert!(matches!(**last, DataError::Network { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(tree(&tmp.path().join("d")).is_empty());
}

#[test]
fn leftovers_of_a_killed_run_are_ignored_and_cleaned() {
    let f = fixture();
    // What a killed run leaves: a half extraction and a partial download, hours old.
    let half = f.data.join(".extract-dead/cifar-10-batches-bin");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("data_batch_1.bin"), [1u8; 3073]).unwrap();
    std::fs::write(f.data.join(".download-dead.part"), [0u8; 100]).unwrap();
    std::fs::write(f.data.join(".download-live.part"), [0u8; 100]).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7 * 3600);
    for p in [
        f.data.join(".extract-dead"),
        f.data.join(".download-dead.part"),
    ] {
        std::fs::File::open(&p).unwrap().set_modified(old).unwrap();
    }
    assert!(!archive::is_complete(&f.data.join("cifar-10-batches-bin")));
    let out = fetch_cifar10(&opts(&f)).unwrap();
    assert!(matches!(out, FetchOutcome::Installed { .. }));
    let top: Vec<PathBuf> = tree(&f.data)
        .into_iter()
        .filter(|p| p.components().count() == 1)
        .collect();
    // The recent temporary may belong to a concurrent run and is kept.
    assert_eq!(
        top,
        [
            PathBuf::from(".download-live.part"),
            PathBuf::from("cifar-10-batches-bin")
        ]
    );
}
