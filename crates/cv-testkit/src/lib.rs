//! Test support shared by the workspace's tests (never a dependency of the product):
//! a loopback HTTP server, synthetic CIFAR-10 batches and archives, image folders, and the
//! location of the PyTorch parity fixtures.
//!
//! Everything here writes data the tests make themselves, so no test reaches the internet.

pub mod cifar;
pub mod fixtures;
pub mod folder;
pub mod http;
pub mod hub;

/// Lowercase hex md5 of `bytes`, as checksum files and `--md5` flags spell it.
pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(bytes))
}
