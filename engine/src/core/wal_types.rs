//! The WAL's shared types, as the core sees them.
//!
//! Owns: nothing of its own. This is the ONE place where the core names the WAL's record types
//! (`Lsn`, `GroupId`, `Instance`, `Ballot`, `RecordKind`, `Record`, `Recovery`, `Damage`); every
//! other core module imports them from here. Must never do I/O.
pub use paxring_wal::recovery::{Damage, Recovery};
pub use paxring_wal::types::{Ballot, GroupId, Instance, Lsn, Record, RecordKind, RecordRef};
