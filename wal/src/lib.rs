//! paxring-wal: the segmented, group-committed, O_DIRECT write-ahead log of one core.
//!
//! A leaf crate: it imports nothing of paxring's. See `docs/WAL_FORMAT.md`.
//! `types` and `format` and `recovery` are pure (the simulator runs them on simulated disks);
//! the real log lives in `wal`.
#![deny(missing_docs)]

pub mod format;
pub mod recovery;
pub mod types;

pub use format::{encode_batch, scan_segment, BatchHeader, SegmentScan, BLOCK_BYTES};
pub use recovery::{recover_images, Damage, RecordLocation, Recovery};
pub use types::{Ballot, GroupId, Instance, Lsn, Record, RecordKind, RecordRef};
