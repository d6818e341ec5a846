//! The WAL read path alone, for the catch-up report's "where the time goes": once the cluster
//! has stopped, the WALs of the nodes that served the catch-up are opened again and every value
//! the follower missed is read with `Wal::read_chosen_run` in instance order, in runs of at most
//! `READ_VALUES_PER_ROUND` values and `READ_BYTES_PER_ROUND` bytes as the driver reads them for
//! catch-up, and timed. A first pass runs after the segment files were dropped from the page
//! cache (`POSIX_FADV_DONTNEED`: the catch-up read them cold, since the WAL writes with
//! O_DIRECT), a second pass warm, and a third, warm, reads one value at a time with
//! `Wal::read_chosen` (the path before runs, for comparison).
//!
//! Owns: the probe and its figures. Never: runs while a node owns the directory (the WAL's
//! lock would refuse it), or touches another directory than the one it is given.

use paxring_engine::driver::{READ_BYTES_PER_ROUND, READ_VALUES_PER_ROUND};
use paxring_engine::runtime::{core_of_group, NodeConfig};
use paxring_wal::{GroupId, Instance, RunStop, Wal, WalOptions};
use serde::Serialize;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

/// One pass over the missed values.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadPass {
    /// Values read.
    pub values: u64,
    /// Instances whose value the WAL did not hold (0 expected).
    pub missing: u64,
    /// Their bytes.
    pub value_bytes: u64,
    /// Seconds.
    pub seconds: f64,
    /// Values per second.
    pub values_per_s: f64,
    /// MB/s (10^6 bytes) of values.
    pub mb_per_s: f64,
}

impl ReadPass {
    /// Adds `other` (another node's pass over other groups), rates recomputed.
    pub fn add(&mut self, other: &ReadPass) {
        self.values += other.values;
        self.missing += other.missing;
        self.value_bytes += other.value_bytes;
        self.seconds += other.seconds;
        self.values_per_s = self.values as f64 / self.seconds.max(1e-9);
        self.mb_per_s = self.value_bytes as f64 / 1e6 / self.seconds.max(1e-9);
    }
}

/// The probe's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadProbe {
    /// Seconds to open (recover) the WALs read.
    pub open_s: f64,
    /// After dropping the segment files from the page cache.
    pub cold: ReadPass,
    /// Right after, with the files cached.
    pub warm: ReadPass,
    /// Then one value at a time (`Wal::read_chosen`), warm.
    pub warm_single: ReadPass,
}

/// Drops `dir`'s segment files from the page cache (advice only: errors are ignored, the
/// pass is then warmer than it says, never wrong in what it reads).
fn drop_cached(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Ok(file) = std::fs::File::open(entry.path()) {
            let _ = nix::fcntl::posix_fadvise(
                file.as_raw_fd(),
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }
}

/// Reads the ranges in runs, as the driver does.
fn run_pass(
    wals: &[Wal],
    config: &NodeConfig,
    ranges: &[(u32, u64, u64)],
) -> Result<ReadPass, String> {
    let started = Instant::now();
    let mut out = ReadPass::default();
    let mut values = Vec::with_capacity(READ_VALUES_PER_ROUND);
    for &(group, from, to) in ranges {
        let wal = &wals[core_of_group(group, config.cores)];
        let mut first = from;
        while first < to {
            let end = to.min(first + READ_VALUES_PER_ROUND as u64);
            values.clear();
            let stop = wal
                .read_chosen_run(
                    GroupId(group),
                    Instance(first),
                    Instance(end),
                    READ_BYTES_PER_ROUND,
                    &mut values,
                )
                .map_err(|e| format!("read_chosen_run({group}, {first}..{end}): {e}"))?;
            out.values += values.len() as u64;
            out.value_bytes += values.iter().map(|(_, v)| v.len() as u64).sum::<u64>();
            first += values.len() as u64;
            if stop == RunStop::Missing {
                out.missing += 1;
                first += 1;
            }
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    out.values_per_s = out.values as f64 / out.seconds.max(1e-9);
    out.mb_per_s = out.value_bytes as f64 / 1e6 / out.seconds.max(1e-9);
    Ok(out)
}

/// Reads the ranges one value at a time.
fn single_pass(
    wals: &[Wal],
    config: &NodeConfig,
    ranges: &[(u32, u64, u64)],
) -> Result<ReadPass, String> {
    let started = Instant::now();
    let mut out = ReadPass::default();
    for &(group, from, to) in ranges {
        let wal = &wals[core_of_group(group, config.cores)];
        for instance in from..to {
            match wal
                .read_chosen(GroupId(group), Instance(instance))
                .map_err(|e| format!("read_chosen({group}, {instance}): {e}"))?
            {
                Some(value) => {
                    out.values += 1;
                    out.value_bytes += value.len() as u64;
                }
                None => out.missing += 1,
            }
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    out.values_per_s = out.values as f64 / out.seconds.max(1e-9);
    out.mb_per_s = out.value_bytes as f64 / 1e6 / out.seconds.max(1e-9);
    Ok(out)
}

/// Opens the WALs of the node configured by `config` (stopped) and reads `(group, from, to)`
/// for each range: instances `from..to` of `group`.
pub fn read_probe(config: &NodeConfig, ranges: &[(u32, u64, u64)]) -> Result<ReadProbe, String> {
    let started = Instant::now();
    let mut wals = Vec::with_capacity(config.cores);
    let mut dirs = Vec::with_capacity(config.cores);
    for core in 0..config.cores {
        let dir = config.data_dir.join("wal").join(format!("core-{core}"));
        let mut opts = WalOptions::new(&dir, core as u32);
        opts.segment_bytes = config.segment_bytes;
        opts.buffer_bytes = config.round_bytes_max;
        let (wal, recovery) =
            Wal::open(opts).map_err(|e| format!("opening {}: {e}", dir.display()))?;
        drop(recovery);
        wals.push(wal);
        dirs.push(dir);
    }
    let open_s = started.elapsed().as_secs_f64();
    for dir in &dirs {
        drop_cached(dir);
    }
    let cold = run_pass(&wals, config, ranges)?;
    let warm = run_pass(&wals, config, ranges)?;
    let warm_single = single_pass(&wals, config, ranges)?;
    Ok(ReadProbe {
        open_s,
        cold,
        warm,
        warm_single,
    })
}
