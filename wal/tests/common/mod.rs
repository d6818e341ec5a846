//! Helpers shared by the WAL's integration tests: a temporary directory on a file system that
//! supports O_DIRECT (or a loud skip, a failure when `PAXRING_REQUIRE_ODIRECT` is set), records,
//! and a seeded generator.
#![allow(dead_code)]
pub mod odirect;

use paxring_wal::{
    Backend, Ballot, GroupId, Instance, RecordKind, RecordRef, SyncMode, WalOptions,
};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use tempfile::TempDir;

/// A temp dir under the system temp dir if its file system accepts O_DIRECT; otherwise prints a
/// loud SKIPPED banner and returns `None` (the caller returns early), or panics when
/// `PAXRING_REQUIRE_ODIRECT` is set (see `odirect`).
pub fn direct_io_dir(test: &str) -> Option<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("paxring-wal-test-")
        .tempdir()
        .expect("create temp dir");
    let probe = dir.path().join("probe");
    let opened = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    match opened {
        Ok(_) => {
            std::fs::remove_file(&probe).expect("remove probe");
            Some(dir)
        }
        Err(error) => {
            odirect::skip_or_fail(test, dir.path(), &error);
            None
        }
    }
}

/// Options for small, fast logs in tests.
pub fn small_options(dir: &std::path::Path, backend: Backend, sync_mode: SyncMode) -> WalOptions {
    let mut opts = WalOptions::new(dir, 2);
    opts.segment_bytes = 256 << 10;
    opts.buffer_bytes = 32 << 10;
    opts.backend = backend;
    opts.sync_mode = sync_mode;
    opts
}

/// A record of `group`/`instance` with `payload`.
pub fn record<'a>(group: u32, instance: u64, payload: &'a [u8]) -> RecordRef<'a> {
    RecordRef {
        kind: RecordKind::Accept,
        group: GroupId(group),
        instance: Instance(instance),
        promised: Ballot { number: 3, node: 1 },
        accepted: Ballot { number: 3, node: 1 },
        payload,
    }
}

/// A deterministic payload for `(group, instance)` of `len` bytes.
pub fn payload(group: u32, instance: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 ^ instance.wrapping_mul(131) ^ (u64::from(group) * 7)) as u8)
        .collect()
}

/// splitmix64: a seeded generator so every failure names a reproducible seed.
pub struct Prng(pub u64);

impl Prng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}
