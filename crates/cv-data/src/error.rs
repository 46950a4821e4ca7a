//! One error type for the crate; every variant names the file, URL or record at fault so the
//! message alone tells a user what to fix.

use std::path::PathBuf;

/// Everything that can go wrong while fetching, decoding, augmenting or batching data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file failed (includes "No space left on device").
    // `error` is in the message and deliberately not a `#[source]`: a chained report
    // (`{:#}`) would print it twice.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder being read or written.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A required file or folder does not exist.
    #[error("{}: missing ({what})", path.display())]
    Missing {
        /// The path that was expected.
        path: PathBuf,
        /// What the path should have held.
        what: String,
    },
    /// A CIFAR-10 batch whose size is not a whole number of 3,073-byte records.
    #[error(
        "{}: size {size} bytes is not a multiple of the 3073-byte CIFAR-10 record (record {record} is truncated)",
        path.display()
    )]
    BadSize {
        /// The batch file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// Index of the incomplete record (0-based).
        record: u64,
    },
    /// A record whose label is not one of the dataset's classes.
    #[error("{}: record {record}: label {label} is outside the {num_classes} classes", path.display())]
    BadLabel {
        /// The batch file.
        path: PathBuf,
        /// Index of the record (0-based).
        record: u64,
        /// The label byte found.
        label: u32,
        /// How many classes the dataset has.
        num_classes: usize,
    },
    /// A file whose contents do not have the expected layout.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An image that could not be decoded.
    #[error("{}: cannot decode image: {message}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's explanation.
        message: String,
    },
    /// The server answered with a non-success HTTP status.
    #[error("{url}: HTTP status {status}")]
    HttpStatus {
        /// The requested URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The host could not be reached or the transfer broke off.
    #[error("{url}: {message}")]
    Network {
        /// The requested URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The body ended before the announced `Content-Length`.
    #[error("{url}: body ended after {received} of {expected} announced bytes")]
    Truncated {
        /// The requested URL.
        url: String,
        /// Bytes received.
        received: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// Every attempt of a download failed; the last failure.
    #[error("{last} (gave up after {attempts} attempts)")]
    Retried {
        /// Requests made.
        attempts: u32,
        /// Why the last one failed.
        last: Box<DataError>,
    },
    /// A file whose digest is not the expected one.
    #[error("{source_name}: {algorithm} {actual} does not match the expected {expected}")]
    Checksum {
        /// The URL or file that was checked.
        source_name: String,
        /// `md5` or `sha256`.
        algorithm: &'static str,
        /// Expected digest (hex).
        expected: String,
        /// Computed digest (hex).
        actual: String,
    },
    /// A gzip or tar stream that cannot be read.
    #[error("{}: corrupt archive: {message}", path.display())]
    Archive {
        /// The archive file.
        path: PathBuf,
        /// The decoder's explanation.
        message: String,
    },
    /// An archive member that would escape the target folder or is not a plain file/folder.
    #[error("{}: refusing archive member {member:?}: {reason}", path.display())]
    UnsafeMember {
        /// The archive file.
        path: PathBuf,
        /// The member's name as stored.
        member: String,
        /// Why it is refused.
        reason: String,
    },
    /// A transform that cannot be applied (crop larger than the image, bad parameters).
    #[error("transform: {message}")]
    Transform {
        /// What went wrong (names the sample when known).
        message: String,
    },
    /// A batch that cannot be assembled (e.g. images of different sizes).
    #[error("batch: {message}")]
    Batch {
        /// What went wrong.
        message: String,
    },
    /// An option with an unusable value (names the option).
    #[error("{option}: {message}")]
    InvalidOption {
        /// The option, e.g. `md5`.
        option: String,
        /// What is wrong with its value.
        message: String,
    },
    /// Creating the batch tensors failed.
    #[error("creating batch tensors: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, DataError>;

/// Attach a path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |error| DataError::Io { path, error }
}
