//! The identifiers and record shapes every paxring crate shares with the WAL.
//!
//! Owns: the newtypes (`Lsn`, `GroupId`, `Instance`), `Ballot`, `RecordKind` and the two record
//! forms (`RecordRef` to append, `Record` recovered). Must never do I/O or know the byte layout
//! (that is `format`'s).
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Per-core WAL record sequence number: 1, 2, 3... consecutive across batches and segments.
/// `Lsn(0)` means "nothing" (no record yet).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Lsn(pub u64);

impl Lsn {
    /// "Nothing": no record has this sequence number.
    pub const ZERO: Lsn = Lsn(0);

    /// The next sequence number. Panics on overflow (2^64 records cannot be written).
    pub fn next(self) -> Lsn {
        Lsn(self.0.checked_add(1).expect("Lsn overflow"))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Paxos group's id (groups share one core's log).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct GroupId(pub u32);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Multi-Paxos instance (log slot) of one group.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Instance(pub u64);

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Paxos ballot, ordered by `(number, node)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// The round number (compared first).
    pub number: u64,
    /// The proposing node (breaks ties).
    pub node: u32,
}

impl Ballot {
    /// The ballot below every real ballot ("none").
    pub const ZERO: Ballot = Ballot { number: 0, node: 0 };
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.number, self.node)
    }
}

/// What a record means; its meaning belongs to the engine. One byte on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum RecordKind {
    /// The promised ballot covers `instance` and every later instance of the group.
    Promise = 1,
    /// `(accepted, payload = value)` accepted at `instance`.
    Accept = 2,
    /// `instance` is chosen (its value is in the `Accept` record or in `payload`).
    Chosen = 3,
    /// Engine metadata (opaque to the WAL).
    Meta = 4,
}

impl RecordKind {
    /// The byte stored on disk.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    /// Parses the on-disk byte; `None` for an unknown kind.
    pub fn from_u8(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::Promise),
            2 => Some(RecordKind::Accept),
            3 => Some(RecordKind::Chosen),
            4 => Some(RecordKind::Meta),
            _ => None,
        }
    }
}

/// A record to append: the payload is borrowed and copied into the write buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// What the record means.
    pub kind: RecordKind,
    /// The group it belongs to.
    pub group: GroupId,
    /// The instance it concerns (for `Promise`: the first instance the promise covers).
    pub instance: Instance,
    /// The promised ballot.
    pub promised: Ballot,
    /// The accepted ballot.
    pub accepted: Ballot,
    /// The value or metadata bytes.
    pub payload: &'a [u8],
}

impl RecordRef<'_> {
    /// Copies the record into an owned `Record`.
    pub fn to_owned_record(&self) -> Record {
        Record {
            kind: self.kind,
            group: self.group,
            instance: self.instance,
            promised: self.promised,
            accepted: self.accepted,
            payload: Bytes::copy_from_slice(self.payload),
        }
    }
}

/// A recovered (or read) record: the payload is owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// What the record means.
    pub kind: RecordKind,
    /// The group it belongs to.
    pub group: GroupId,
    /// The instance it concerns.
    pub instance: Instance,
    /// The promised ballot.
    pub promised: Ballot,
    /// The accepted ballot.
    pub accepted: Ballot,
    /// The value or metadata bytes.
    pub payload: Bytes,
}

impl Record {
    /// Borrows the record in the form `Wal::append` takes.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            kind: self.kind,
            group: self.group,
            instance: self.instance,
            promised: self.promised,
            accepted: self.accepted,
            payload: &self.payload,
        }
    }
}
