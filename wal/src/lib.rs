//! paxring-wal: the segmented, group-committed, O_DIRECT write-ahead log of one core.
//!
//! A leaf crate: it imports nothing of paxring's. See `docs/WAL_FORMAT.md`.
//! `types`, `format`, `recovery` and the log's index (`LogIndex`, which resolves which record
//! holds a chosen value) are pure (the simulator runs them on simulated disks);
//! the real log lives in `wal`, its system calls in `ring` and `segfile`.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod error;
pub mod format;
mod index;
pub mod raw;
pub mod recovery;
mod ring;
pub mod segfile;
pub mod types;
pub mod wal;

pub use checkpoint::{
    CheckpointError, CheckpointMeta, CheckpointReader, CheckpointReceiver, CheckpointWriter,
};
pub use error::WalError;
pub use format::{
    encode_batch, encode_batch_at, scan_segment, BatchHeader, SegmentScan, BLOCK_BYTES,
};
pub use index::LogIndex;
pub use recovery::{recover_images, Damage, RecordLocation, Recovery};
pub use ring::WAIT_FDS_MAX;
pub use types::{Ballot, GroupId, Instance, Lsn, Record, RecordKind, RecordRef};
pub use wal::{
    inspect_dir, Backend, BackendInUse, PurgeReport, RunStop, SyncMode, WaitOutcome, Wal,
    WalOptions, WalStats, RUN_GAP_BYTES_MAX, RUN_READ_BYTES_MAX, WRITES_IN_FLIGHT_DEFAULT,
    WRITES_IN_FLIGHT_MAX,
};
