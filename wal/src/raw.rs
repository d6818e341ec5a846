//! Raw durable I/O for harnesses that measure the WAL against the disk: a page-aligned buffer
//! and one blocking O_DIRECT write made durable exactly like the WAL's writes.
//!
//! Owns: nothing of the log. Must never be used by the log itself (it has its own ring); it
//! exists so that benchmarks need no `unsafe` of their own.
use crate::ring;
use crate::wal::SyncMode;
use memmap2::MmapMut;
use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::io::AsRawFd;

/// A page-aligned, zero-filled buffer (an anonymous mapping), suitable for O_DIRECT.
pub struct AlignedBuffer(MmapMut);

impl AlignedBuffer {
    /// Maps `len` zero bytes.
    pub fn new(len: usize) -> io::Result<AlignedBuffer> {
        MmapMut::map_anon(len).map(AlignedBuffer)
    }
}

impl Deref for AlignedBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for AlignedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// Writes all of `bytes` at `offset` of `file` (opened with O_DIRECT) and makes it durable:
/// RWF_DSYNC on the write for `SyncMode::Dsync`, the write then fdatasync for
/// `SyncMode::Fdatasync`. One durable operation either way.
pub fn durable_write(file: &File, bytes: &[u8], offset: u64, mode: SyncMode) -> io::Result<()> {
    ring::blocking_durable_write(file.as_raw_fd(), bytes, offset, mode == SyncMode::Dsync)
}
