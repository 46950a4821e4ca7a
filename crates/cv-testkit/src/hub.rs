//! A stand-in for the Hugging Face hub on a [`TestServer`]: serves a file where
//! `hf-hub` 0.5 asks for it (`GET /{repo}/resolve/{revision}/{file}`), with the headers its
//! sync client needs (`ETag`, `X-Repo-Commit`; `Content-Range` comes from the server's range
//! support). No `X-Xet-Hash` is ever sent.

use crate::http::{Response, TestServer};

/// The commit id the stand-in reports.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serve `bytes` as `file` of `repo` at revision `main`. `truncate_at` cuts the body short
/// (while announcing all of it), to test interrupted downloads.
pub fn serve_file(
    server: &TestServer,
    repo: &str,
    file: &str,
    bytes: &[u8],
    truncate_at: Option<usize>,
) {
    let etag = format!("\"{}\"", crate::md5_hex(bytes));
    let mut r = Response::ok(bytes.to_vec())
        .header("ETag", &etag)
        .header("X-Repo-Commit", COMMIT);
    if let Some(n) = truncate_at {
        r = r.truncated(n);
    }
    server.route(&format!("/{repo}/resolve/main/{file}"), r);
}
