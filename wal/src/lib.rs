//! paxring-wal: the segmented, group-committed, O_DIRECT write-ahead log of one core.
//!
//! A leaf crate: it imports nothing of paxring's. See `docs/WAL_FORMAT.md`.
#![deny(missing_docs)]
