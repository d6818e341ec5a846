//! The WAL's operating errors.
//!
//! Owns: `WalError`. Every I/O error names the path and offset; fatal errors (a failed durable
//! write) say so through `is_fatal`. Must never hide an `io::Error`'s cause.
use std::io;
use std::path::PathBuf;

/// An error of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A system call failed.
    #[error("{op} failed on {path} at offset {offset}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Byte offset concerned (0 when not applicable).
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A durable write or its fdatasync failed. FATAL: what is on disk is unknown; the WAL is
    /// poisoned and the process must stop using it (never retry an fsync).
    #[error(
        "durable write failed on {path} at offset {offset} (fatal, the WAL is poisoned): {source}"
    )]
    DurableWriteFailed {
        /// The segment file.
        path: PathBuf,
        /// Offset of the batch.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An earlier fatal error poisoned the WAL; every call fails from then on.
    #[error("the WAL is poisoned by an earlier fatal error: {cause}")]
    Poisoned {
        /// The first fatal error.
        cause: String,
    },
    /// The file system refuses O_DIRECT (EINVAL).
    #[error("the file system holding {path} refuses O_DIRECT (EINVAL); put the WAL on a file system that supports direct I/O, such as ext4 or xfs")]
    DirectIoUnsupported {
        /// The file that could not be opened or written with O_DIRECT.
        path: PathBuf,
    },
    /// The accumulating batch has no room for this record: nothing was appended; submit, wait
    /// for the write in flight, and retry.
    #[error("write buffer full: record needs {needed_bytes} bytes, {free_bytes} free")]
    BufferFull {
        /// Bytes the record needs.
        needed_bytes: usize,
        /// Bytes left in the batch.
        free_bytes: usize,
    },
    /// The record can never fit in one write buffer.
    #[error("record of {record_bytes} bytes exceeds the largest batch of {limit_bytes} bytes")]
    RecordTooLarge {
        /// Encoded size of the record.
        record_bytes: usize,
        /// Largest record a batch can hold.
        limit_bytes: usize,
    },
    /// The options are invalid.
    #[error("invalid WAL options: {0}")]
    Config(String),
    /// `Backend::Uring` was asked for and io_uring is unavailable.
    #[error("io_uring is unavailable: {0}")]
    UringUnavailable(#[source] io::Error),
    /// The directory holds a segment of another core (one directory per core).
    #[error("{path} belongs to core {owner}, not core {core}: use one directory per core")]
    ForeignSegment {
        /// The file.
        path: PathBuf,
        /// The core that opened the directory.
        core: u32,
        /// The core named by the file.
        owner: u32,
    },
    /// Another process holds the directory's lock.
    #[error("{path} is locked by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A record read back did not verify.
    #[error("record at {path} offset {offset} failed its checksum on read")]
    CorruptRead {
        /// The segment file.
        path: PathBuf,
        /// Offset of the record.
        offset: u64,
    },
}

impl WalError {
    /// True when the caller must treat the error as fatal (stop the process or the core).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            WalError::DurableWriteFailed { .. } | WalError::Poisoned { .. }
        )
    }
}
