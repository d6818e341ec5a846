//! The real log of one core: segments, group commit with double buffering, durable writes
//! through io_uring (or the blocking fallback), reads by (group, instance), purge and counters.
//!
//! Owns: the two aligned write buffers, the segment files of one directory, the per-group index
//! and the durable LSN. Must never acknowledge (advance `durable_lsn` past) a record before the
//! write holding it completed with DSYNC or its fdatasync succeeded, never rewrite a block that
//! holds acknowledged records, and never retry a failed durable write (it poisons the log).
use crate::error::WalError;
use crate::format::{
    batch_bytes_for, decode_record_at, encode_record_into, finish_batch_into, record_bytes,
    BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BLOCK_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::index::LogIndex;
use crate::recovery::{recover_images, RecordLocation, Recovery, TailRegion};
use crate::ring::{self, Completion, Ring, WAIT_FDS_MAX};
use crate::segfile;
use crate::types::{GroupId, Instance, Lsn, Record, RecordKind, RecordRef};
use bytes::Bytes;
use hdrhistogram::Histogram;
use memmap2::{Mmap, MmapMut};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default size of a segment file.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Default size of one round's write buffer.
pub const BUFFER_BYTES_DEFAULT: usize = 1 << 20;
/// Default number of batch writes a log keeps in flight at once (one: a round's write goes
/// out when the last one completed).
pub const WRITES_IN_FLIGHT_DEFAULT: usize = 1;
/// Most batch writes a log may keep in flight at once.
pub const WRITES_IN_FLIGHT_MAX: usize = 8;
/// Smallest segment accepted.
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// Spare (purged) segment files kept for recycling.
const SPARES_MAX: usize = 2;

/// How a batch write is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// The write itself carries RWF_DSYNC (one durable write per round).
    Dsync,
    /// The write is linked to an fdatasync (one durable write per round: the fdatasync).
    Fdatasync,
}

/// The default sync mode, chosen by measurement (see `docs/WAL_FORMAT.md`).
pub const SYNC_MODE_DEFAULT: SyncMode = SyncMode::Fdatasync;

/// Which I/O backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring if available, else the blocking backend (with a warning).
    Auto,
    /// io_uring or an error.
    Uring,
    /// Blocking `pwrite` + `fdatasync` (or RWF_DSYNC) and poll(2).
    Blocking,
}

/// The backend actually in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendInUse {
    /// io_uring.
    Uring,
    /// Blocking system calls.
    Blocking,
}

/// Options of `Wal::open`.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// The directory of this core's segments (created if absent).
    pub dir: PathBuf,
    /// The core whose log this is (named in every segment and batch).
    pub core: u32,
    /// Size of every segment file; a multiple of 4 KiB, at least 64 KiB and one buffer.
    pub segment_bytes: u64,
    /// Largest write of one round; a multiple of 4 KiB, at least 8 KiB.
    pub buffer_bytes: usize,
    /// How writes are made durable.
    pub sync_mode: SyncMode,
    /// Which I/O backend to use.
    pub backend: Backend,
    /// How many batch writes may be in flight at once (1..=[`WRITES_IN_FLIGHT_MAX`]; each
    /// costs one more write buffer of `buffer_bytes`). The durable point still moves in Lsn
    /// order: a write is acknowledged only once every earlier one is durable. With more than
    /// one, a crash can leave a later write whole after an earlier one that did not land;
    /// recovery reports the gap as damage (docs/WAL_FORMAT.md#recovery). The blocking backend
    /// has one write in flight whatever this says.
    pub writes_in_flight: usize,
}

impl WalOptions {
    /// Options with the defaults for `dir` and `core`.
    pub fn new(dir: impl Into<PathBuf>, core: u32) -> WalOptions {
        WalOptions {
            dir: dir.into(),
            core,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            buffer_bytes: BUFFER_BYTES_DEFAULT,
            sync_mode: SYNC_MODE_DEFAULT,
            backend: Backend::Auto,
            writes_in_flight: WRITES_IN_FLIGHT_DEFAULT,
        }
    }

    fn validate(&self) -> Result<(), WalError> {
        let block = BLOCK_BYTES as u64;
        if !(1..=WRITES_IN_FLIGHT_MAX).contains(&self.writes_in_flight) {
            return Err(WalError::Config(format!(
                "writes_in_flight = {} must be 1..={WRITES_IN_FLIGHT_MAX}",
                self.writes_in_flight
            )));
        }
        if self.buffer_bytes % BLOCK_BYTES != 0 || self.buffer_bytes < 2 * BLOCK_BYTES {
            return Err(WalError::Config(format!(
                "buffer_bytes = {} must be a multiple of 4096 and at least 8192",
                self.buffer_bytes
            )));
        }
        if self.buffer_bytes > BATCH_BYTES_MAX {
            return Err(WalError::Config(format!(
                "buffer_bytes = {} exceeds the format's largest batch ({BATCH_BYTES_MAX})",
                self.buffer_bytes
            )));
        }
        if self.segment_bytes % block != 0
            || self.segment_bytes < SEGMENT_BYTES_MIN
            || self.segment_bytes < (self.buffer_bytes + SEGMENT_HEADER_BYTES) as u64
        {
            return Err(WalError::Config(format!(
                "segment_bytes = {} must be a multiple of 4096, at least {SEGMENT_BYTES_MIN} and at least buffer_bytes ({}) + 4096",
                self.segment_bytes, self.buffer_bytes
            )));
        }
        Ok(())
    }
}

/// What woke `Wal::wait`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitOutcome {
    /// The durable LSN after the wait.
    pub durable_lsn: Lsn,
    /// True when a write completed during the wait.
    pub write_completed: bool,
    /// The watched fds that became readable.
    pub ready_fds: Vec<RawFd>,
    /// True when the timeout fired.
    pub timed_out: bool,
}

/// A group holding the oldest segment back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PurgeHold {
    /// The group.
    pub group: u32,
    /// Highest instance it has in the oldest segment.
    pub instance_max: u64,
    /// Its purge floor (records below it are no longer needed), if it set one.
    pub floor: Option<u64>,
}

/// What `purge` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Segments removed (or kept as spares for recycling), oldest first.
    pub removed_segments: Vec<u64>,
    /// Their total size.
    pub freed_bytes: u64,
    /// The oldest segment still there.
    pub oldest_segment: Option<u64>,
    /// The groups keeping `oldest_segment` (empty if it is the one being written).
    pub held_back_by: Vec<PurgeHold>,
}

/// Summary of a latency histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// Summary of a per-write count.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CountSummary {
    /// Mean per write.
    pub mean: f64,
    /// Median per write.
    pub p50: u64,
    /// Largest per write.
    pub max: u64,
}

/// The WAL's counters (exact, since open).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WalStats {
    /// Backend in use.
    pub backend: BackendInUse,
    /// Sync mode in use.
    pub sync_mode: SyncMode,
    /// Batch writes completed.
    pub writes: u64,
    /// Durable operations completed: DSYNC writes plus fdatasyncs.
    pub durable_writes: u64,
    /// Bytes written by batch writes (headers + records + padding).
    pub bytes_written: u64,
    /// Of which record payload.
    pub payload_bytes: u64,
    /// Of which batch headers, record headers and record alignment.
    pub header_bytes: u64,
    /// Of which padding to the 4 KiB boundary.
    pub padding_bytes: u64,
    /// Records written.
    pub records: u64,
    /// Records per write.
    pub records_per_write: CountSummary,
    /// Distinct groups per write.
    pub groups_per_write: CountSummary,
    /// Time from issuing a write to reaping its durable completion, in microseconds.
    pub write_latency_us: LatencySummary,
    /// Segment files created new.
    pub segments_created: u64,
    /// Segment files made from spares.
    pub segments_recycled: u64,
    /// Segments purged.
    pub segments_purged: u64,
    /// Times a round had to wait for the next segment to be prepared.
    pub segment_prepare_waits: u64,
    /// Highest LSN appended.
    pub appended_lsn: Lsn,
    /// Highest durable LSN.
    pub durable_lsn: Lsn,
}

struct Counters {
    writes: u64,
    durable_writes: u64,
    bytes_written: u64,
    payload_bytes: u64,
    header_bytes: u64,
    padding_bytes: u64,
    records: u64,
    segments_created: u64,
    segments_recycled: u64,
    segments_purged: u64,
    segment_prepare_waits: u64,
    latency_us: Histogram<u64>,
    records_per_write: Histogram<u64>,
    groups_per_write: Histogram<u64>,
}

impl Counters {
    fn new() -> Counters {
        let histogram = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        Counters {
            writes: 0,
            durable_writes: 0,
            bytes_written: 0,
            payload_bytes: 0,
            header_bytes: 0,
            padding_bytes: 0,
            records: 0,
            segments_created: 0,
            segments_recycled: 0,
            segments_purged: 0,
            segment_prepare_waits: 0,
            latency_us: histogram(),
            records_per_write: histogram(),
            groups_per_write: histogram(),
        }
    }
}

fn count_summary(histogram: &Histogram<u64>) -> CountSummary {
    CountSummary {
        mean: histogram.mean(),
        p50: histogram.value_at_quantile(0.5),
        max: histogram.max(),
    }
}

/// The batch accumulating in the free buffer.
struct Batch {
    buffer: usize,
    segment: u64,
    offset: u64,
    capacity_bytes: usize,
    first_lsn: Lsn,
    count: u32,
    records_bytes: usize,
    payload_bytes: u64,
    /// Distinct groups with records in the batch.
    groups: u64,
}

/// A write the kernel owns.
struct InFlight {
    /// Names its completions (`Completion::Write` / `Sync`).
    seq: u64,
    /// Durable (its write completed with RWF_DSYNC, or its linked fdatasync completed), but
    /// not yet acknowledged when an earlier write is still in flight.
    done: bool,
    buffer: usize,
    segment: u64,
    offset: u64,
    len: usize,
    first_lsn: Lsn,
    last_lsn: Lsn,
    issued: Instant,
    write_reaped: bool,
    records: u32,
    groups: u64,
    payload_bytes: u64,
    padding_bytes: u64,
}

struct SegmentFile {
    path: PathBuf,
    direct: File,
    reader: File,
}

enum Io {
    Uring(Box<Ring>),
    Blocking,
}

struct Preparation {
    segment: u64,
    recycled: bool,
    handle: JoinHandle<Result<(), WalError>>,
}

/// Why [`Wal::read_chosen_run`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStop {
    /// It read every instance asked for.
    End,
    /// The log holds no chosen value for the next instance (`read_chosen` returns `None`
    /// for it): the caller serves it from elsewhere, if at all.
    Missing,
    /// The next value would have taken the run past its byte budget; it was not appended.
    BytesMax,
}

/// Most bytes of other records one coalesced read of [`Wal::read_chosen_run`] reads (and
/// throws away) between two records it needs; a larger gap starts a new read.
pub const RUN_GAP_BYTES_MAX: u64 = 64 << 10;
/// Most bytes one coalesced read of [`Wal::read_chosen_run`] covers (a single larger record
/// is read alone).
pub const RUN_READ_BYTES_MAX: u64 = 1 << 20;
/// Records are 8-byte aligned: a record's length exceeds header plus payload by less than this.
const RECORD_ALIGN_BYTES: usize = 8;

/// The state of one [`Wal::read_chosen_run`]: the records planned for the next covering read,
/// and what was taken.
struct ChosenRun {
    group: GroupId,
    /// Values appended by this run.
    taken: usize,
    /// Their payload bytes.
    bytes: usize,
    bytes_max: usize,
    /// Planned records, in instance order, all on disk in one segment.
    span: Vec<(Instance, RecordLocation)>,
    /// The byte range covering them (meaningless while `span` is empty).
    covered: (u64, u64),
    /// The covering read's bytes (reused).
    buffer: Vec<u8>,
}

impl ChosenRun {
    /// The byte range covering the planned records.
    fn range(&self) -> Option<(u64, u64)> {
        (!self.span.is_empty()).then_some(self.covered)
    }

    /// Plans reading `location`'s record for `instance` in the next covering read.
    fn plan(&mut self, instance: Instance, location: RecordLocation) {
        let (lo, hi) = (location.offset, location.offset + u64::from(location.len));
        self.covered = match self.range() {
            Some((start, end)) => (start.min(lo), end.max(hi)),
            None => (lo, hi),
        };
        self.span.push((instance, location));
    }

    /// True when `location` can join the planned read: nothing planned, or the same segment,
    /// at most `RUN_GAP_BYTES_MAX` away from the range covered, and the range stays within
    /// `RUN_READ_BYTES_MAX`.
    fn joins(&self, location: &RecordLocation) -> bool {
        let Some((start, end)) = self.range() else {
            return true;
        };
        let (lo, hi) = (location.offset, location.offset + u64::from(location.len));
        self.span[0].1.segment == location.segment
            && lo <= end + RUN_GAP_BYTES_MAX
            && hi + RUN_GAP_BYTES_MAX >= start
            && hi.max(end) - lo.min(start) <= RUN_READ_BYTES_MAX
    }

    /// Appends `record`'s value for `instance` unless it would exceed the byte budget (after
    /// the first value): then `Some(RunStop::BytesMax)`.
    fn take(
        &mut self,
        instance: Instance,
        record: Record,
        out: &mut Vec<(Instance, Bytes)>,
    ) -> Option<RunStop> {
        debug_assert!(
            record.group == self.group
                && record.instance == instance
                && matches!(record.kind, RecordKind::Accept | RecordKind::Chosen),
            "the index resolved ({:?}, {instance:?}) to another record: {record:?}",
            self.group
        );
        let len = record.payload.len();
        if self.taken > 0 && self.bytes + len > self.bytes_max {
            return Some(RunStop::BytesMax);
        }
        self.taken += 1;
        self.bytes += len;
        out.push((instance, record.payload));
        None
    }
}

/// Cut tail regions that `Wal::open_deferred` remembered and has not zeroed yet.
struct PendingCut {
    regions: Vec<TailRegion>,
    /// Where writing resumed at open.
    resume: (u64, u64),
    /// Per segment, the bytes written there since open: writes within a segment are contiguous,
    /// so one `start..end` range each. Zeroing skips them.
    written: BTreeMap<u64, (u64, u64)>,
    /// The first write since open has been issued.
    first_issued: bool,
    /// The first write since open did not start at the resume point (it went to the next
    /// segment), so the cut batch's header there is still legible and a recovery would take
    /// that write's LSNs for repeats of it: the regions are zeroed before the write counts as
    /// durable.
    zero_before_ack: bool,
}

/// The write-ahead log of one core.
pub struct Wal {
    opts: WalOptions,
    io: Io,
    /// `writes_in_flight + 1` write buffers: one accumulates, the others may be in flight.
    buffers: Vec<MmapMut>,
    acc_buffer: usize,
    batch: Option<Batch>,
    /// Writes in flight, oldest (lowest Lsns) first.
    inflight: VecDeque<InFlight>,
    /// The next write's sequence number.
    next_seq: u64,
    next_write: (u64, u64),
    segments: BTreeMap<u64, SegmentFile>,
    index: LogIndex,
    floors: BTreeMap<GroupId, Instance>,
    /// Per group: it needs none of its records with an LSN below this (it wrote what it
    /// needs again, later).
    lsn_floors: BTreeMap<GroupId, Lsn>,
    /// Per segment: the highest LSN written in it.
    segment_last_lsn: BTreeMap<u64, Lsn>,
    next_lsn: Lsn,
    durable_lsn: Lsn,
    preparation: Option<Preparation>,
    spares: Vec<PathBuf>,
    spare_serial: u64,
    counters: Counters,
    poisoned: Option<String>,
    completions: Vec<Completion>,
    ready_fds: Vec<RawFd>,
    leak_buffers_on_drop: bool,
    timeout_generation: Option<u64>,
    timed_out: bool,
    write_completed: bool,
    cut_tails: Option<PendingCut>,
    _lock: File,
}

fn io_err(op: &'static str, path: &Path, offset: u64, source: io::Error) -> WalError {
    WalError::Io {
        op,
        path: path.to_path_buf(),
        offset,
        source,
    }
}

/// Reads and recovers a core's segments in `dir` without modifying anything (for tools).
/// Returns the recovery and the segment paths it read.
pub fn inspect_dir(dir: &Path, core: u32) -> Result<(Recovery, Vec<(u64, PathBuf)>), WalError> {
    let listing = segfile::list_dir(dir, core)?;
    let maps = map_segments(&listing.segments)?;
    let images: Vec<(u64, &[u8])> = maps
        .iter()
        .map(|(segment, map)| (*segment, map.as_deref().unwrap_or(&[])))
        .collect();
    Ok((recover_images(core, &images), listing.segments))
}

fn map_segments(segments: &[(u64, PathBuf)]) -> Result<Vec<(u64, Option<Mmap>)>, WalError> {
    let mut maps = Vec::with_capacity(segments.len());
    for (segment, path) in segments {
        let file = File::open(path).map_err(|e| io_err("open segment", path, 0, e))?;
        let length = file
            .metadata()
            .map_err(|e| io_err("stat segment", path, 0, e))?
            .len();
        let map = if length == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only and private to this call; segment files are
            // only written by the single process holding the directory lock, and recovery
            // tolerates any bytes (a concurrent change can only look like damage).
            Some(unsafe { Mmap::map(&file) }.map_err(|e| io_err("mmap segment", path, 0, e))?)
        };
        maps.push((*segment, map));
    }
    Ok(maps)
}

/// The parts of `start..end` outside `written` (a `start..end` range, if any), in order.
fn uncovered(start: u64, end: u64, written: Option<(u64, u64)>) -> Vec<(u64, u64)> {
    let Some((from, to)) = written else {
        return if start < end {
            vec![(start, end)]
        } else {
            Vec::new()
        };
    };
    let mut parts = Vec::with_capacity(2);
    if start < from.min(end) {
        parts.push((start, from.min(end)));
    }
    if to.max(start) < end {
        parts.push((to.max(start), end));
    }
    parts
}

fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err("open lock", &path, 0, e))?;
    // SAFETY: plain system call on an owned, open descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(WalError::Locked { path });
        }
        return Err(io_err("flock", &path, 0, error));
    }
    Ok(file)
}

fn open_segment(path: &Path) -> Result<SegmentFile, WalError> {
    Ok(SegmentFile {
        path: path.to_path_buf(),
        direct: segfile::open_direct(path)?,
        reader: File::open(path).map_err(|e| io_err("open segment", path, 0, e))?,
    })
}

impl Wal {
    /// Opens (creating if absent) the log in `opts.dir`, recovers it and returns what was found.
    /// Cut tails are zeroed before anything new is written.
    pub fn open(opts: WalOptions) -> Result<(Wal, Recovery), WalError> {
        let (mut wal, recovery) = Wal::open_deferred(opts)?;
        wal.zero_cut_tails()?;
        Ok((wal, recovery))
    }

    /// Like [`Wal::open`], but leaves the cut tails (`Recovery::tail_regions`) on disk until
    /// [`Wal::zero_cut_tails`] is called, so that a crash before the caller's first write is
    /// durable shows the same tail damage again at the next start.
    ///
    /// Writing may start at once: new batches overwrite the start of the cut region, and a
    /// recovery before the zeroing keeps them and reports the cut bytes still after them as a
    /// cut tail again (or, in a recycled segment, as stale bytes). Call `zero_cut_tails` once
    /// what the caller derived from `Recovery::tail_damage` is durable. Exception: when the
    /// first write does not fit in the resume segment and goes to the next one, the regions
    /// are zeroed when that write completes, before it counts as durable (the cut batch's
    /// header would otherwise make its LSNs look repeated and a recovery would drop it).
    pub fn open_deferred(opts: WalOptions) -> Result<(Wal, Recovery), WalError> {
        opts.validate()?;
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| io_err("create directory", &opts.dir, 0, e))?;
        let lock = lock_dir(&opts.dir)?;
        let mut listing = segfile::list_dir(&opts.dir, opts.core)?;
        for leftover in &listing.preparing {
            std::fs::remove_file(leftover)
                .map_err(|e| io_err("remove unfinished segment", leftover, 0, e))?;
        }
        let recovery = {
            let maps = map_segments(&listing.segments)?;
            let images: Vec<(u64, &[u8])> = maps
                .iter()
                .map(|(segment, map)| (*segment, map.as_deref().unwrap_or(&[])))
                .collect();
            recover_images(opts.core, &images)
        };
        let io = Self::open_backend(opts.backend)?;
        let buffers = (0..opts.writes_in_flight + 1)
            .map(|_| {
                MmapMut::map_anon(opts.buffer_bytes)
                    .map_err(|e| io_err("mmap write buffer", &opts.dir, 0, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut counters = Counters::new();
        if listing.segments.is_empty() {
            let path = opts.dir.join(segfile::segment_name(opts.core, 1));
            let preparing = opts.dir.join(segfile::preparing_name(opts.core, 1));
            segfile::create_segment(
                &opts.dir,
                &preparing,
                &path,
                opts.segment_bytes,
                None,
                Some((opts.core, 1)),
            )?;
            counters.segments_created += 1;
            listing.segments.push((1, path));
        }
        let resume = recovery.resume.unwrap_or_else(|| {
            let first = listing.segments[0].0;
            let data_start = recovery
                .segments
                .iter()
                .find(|s| s.segment == first)
                .map_or(SEGMENT_HEADER_BYTES as u64, |s| s.data_start);
            (first, data_start)
        });
        let mut segments = BTreeMap::new();
        for (segment, path) in &listing.segments {
            let file = open_segment(path)?;
            if *segment >= resume.0 {
                let length = file
                    .direct
                    .metadata()
                    .map_err(|e| io_err("stat segment", path, 0, e))?
                    .len();
                if length < opts.segment_bytes {
                    file.direct
                        .set_len(opts.segment_bytes)
                        .map_err(|e| io_err("extend segment", path, length, e))?;
                }
            }
            segments.insert(*segment, file);
        }
        let cut_tails = (!recovery.tail_regions.is_empty()).then(|| PendingCut {
            regions: recovery.tail_regions.clone(),
            resume,
            written: BTreeMap::new(),
            first_issued: false,
            zero_before_ack: false,
        });

        // New spares are numbered after every spare already there (names never collide).
        let spare_serial = listing
            .spares
            .iter()
            .filter_map(|path| {
                path.file_name()?
                    .to_str()
                    .and_then(segfile::parse_spare_name)
            })
            .map(|(_, serial)| serial)
            .max()
            .unwrap_or(0);
        let mut wal = Wal {
            io,
            buffers,
            acc_buffer: 0,
            batch: None,
            inflight: VecDeque::new(),
            next_seq: 1,
            next_write: resume,
            segments,
            index: LogIndex::from_recovery(&recovery),
            floors: BTreeMap::new(),
            lsn_floors: BTreeMap::new(),
            segment_last_lsn: recovery
                .segments
                .iter()
                .filter(|s| s.last_lsn != Lsn::ZERO)
                .map(|s| (s.segment, s.last_lsn))
                .collect(),
            next_lsn: recovery.next_lsn,
            durable_lsn: Lsn(recovery.next_lsn.0 - 1),
            preparation: None,
            spares: listing.spares,
            spare_serial,
            counters,
            poisoned: None,
            completions: Vec::with_capacity(ring::RING_ENTRIES as usize * 2),
            ready_fds: Vec::new(),
            leak_buffers_on_drop: false,
            timeout_generation: None,
            timed_out: false,
            write_completed: false,
            cut_tails,
            _lock: lock,
            opts,
        };
        wal.prepare_ahead(resume.0 + 1);
        Ok((wal, recovery))
    }

    /// True while cut tails found at open are still on disk: after [`Wal::open_deferred`]
    /// found any, until [`Wal::zero_cut_tails`] (or the first write's completion, if it went to
    /// the next segment) zeroed them. Always false after [`Wal::open`].
    pub fn cut_tails_pending(&self) -> bool {
        self.cut_tails.is_some()
    }

    /// Durably zeroes the cut tails remembered by [`Wal::open_deferred`] (the same zeroing
    /// [`Wal::open`] does), except the bytes written since open, which it never touches. A no-op
    /// when nothing is pending or it already ran. Call it once the records that carry what
    /// `Recovery::tail_damage` obliged the caller to do are durable: after it, a restart no
    /// longer reports that damage. On error the regions stay pending (zeroing may be retried:
    /// they hold no acknowledged record).
    pub fn zero_cut_tails(&mut self) -> Result<(), WalError> {
        if self.cut_tails.is_none() {
            return Ok(());
        }
        self.check_poisoned()?;
        self.zero_pending_cut()
    }

    fn zero_pending_cut(&mut self) -> Result<(), WalError> {
        let Some(pending) = &self.cut_tails else {
            return Ok(());
        };
        for region in &pending.regions {
            let Some(file) = self.segments.get(&region.segment) else {
                continue;
            };
            let len = region
                .len
                .min(self.opts.segment_bytes.saturating_sub(region.offset));
            let end = region.offset + len;
            let written = pending.written.get(&region.segment).copied();
            for (from, to) in uncovered(region.offset, end, written) {
                segfile::zero_range(&file.direct, &file.path, from, to - from)?;
            }
        }
        self.cut_tails = None;
        Ok(())
    }

    fn open_backend(backend: Backend) -> Result<Io, WalError> {
        match backend {
            Backend::Blocking => Ok(Io::Blocking),
            Backend::Uring => Ring::new()
                .map(|ring| Io::Uring(Box::new(ring)))
                .map_err(WalError::UringUnavailable),
            Backend::Auto => match Ring::new() {
                Ok(ring) => Ok(Io::Uring(Box::new(ring))),
                Err(error) if ring::means_unavailable(&error) => {
                    tracing::warn!(
                        %error,
                        "io_uring is unavailable; the WAL falls back to blocking pwrite + fdatasync"
                    );
                    Ok(Io::Blocking)
                }
                Err(error) => Err(WalError::UringUnavailable(error)),
            },
        }
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(cause) => Err(WalError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, error: WalError) -> WalError {
        tracing::error!(%error, "WAL poisoned");
        if self.poisoned.is_none() {
            self.poisoned = Some(error.to_string());
        }
        error
    }

    /// The largest encoded record one batch can hold.
    pub fn record_bytes_max(&self) -> usize {
        self.opts.buffer_bytes - BATCH_HEADER_BYTES
    }

    /// Appends one record to the accumulating batch and returns its LSN. Nothing is written
    /// until `submit`. `BufferFull` appends nothing: submit, wait, and retry.
    pub fn append(&mut self, record: RecordRef<'_>) -> Result<Lsn, WalError> {
        self.check_poisoned()?;
        let size = record_bytes(record.payload.len());
        if size > self.record_bytes_max() {
            return Err(WalError::RecordTooLarge {
                record_bytes: size,
                limit_bytes: self.record_bytes_max(),
            });
        }
        if self.batch.is_none() {
            self.start_batch(size);
        }
        let batch = self.batch.as_mut().expect("batch started");
        let used = BATCH_HEADER_BYTES + batch.records_bytes;
        if batch_bytes_for(batch.records_bytes + size) > batch.capacity_bytes {
            return Err(WalError::BufferFull {
                needed_bytes: size,
                free_bytes: batch.capacity_bytes.saturating_sub(used),
            });
        }
        let lsn = self.next_lsn;
        let buffer = &mut self.buffers[batch.buffer][used..used + size];
        let written = encode_record_into(self.opts.core, batch.segment, lsn, &record, buffer);
        assert_eq!(written, size);
        let location = RecordLocation {
            lsn,
            segment: batch.segment,
            offset: batch.offset + used as u64,
            len: size as u32,
        };
        batch.count += 1;
        batch.records_bytes += size;
        batch.payload_bytes += record.payload.len() as u64;
        let last = self.segment_last_lsn.entry(location.segment).or_insert(lsn);
        *last = (*last).max(lsn);
        if self.index.note(location, &record, batch.first_lsn) {
            batch.groups += 1;
        }
        self.next_lsn = lsn.next();
        Ok(lsn)
    }

    /// Places a new batch after the last issued one, or at the start of the next segment when
    /// the first record would not fit in what is left of the current one.
    fn start_batch(&mut self, first_record_bytes: usize) {
        let (mut segment, mut offset) = self.next_write;
        let left = self.opts.segment_bytes - offset;
        if (batch_bytes_for(first_record_bytes) as u64) > left {
            segment += 1;
            offset = SEGMENT_HEADER_BYTES as u64;
        }
        let capacity = (self.opts.segment_bytes - offset).min(self.opts.buffer_bytes as u64);
        assert!(offset % BLOCK_BYTES as u64 == 0, "batches start on a block");
        self.batch = Some(Batch {
            buffer: self.acc_buffer,
            segment,
            offset,
            capacity_bytes: capacity as usize,
            first_lsn: self.next_lsn,
            count: 0,
            records_bytes: 0,
            payload_bytes: 0,
            groups: 0,
        });
    }

    /// Issues ONE write of everything appended since the last write, unless
    /// `writes_in_flight` writes are in flight (then the batch keeps accumulating and goes out
    /// at the first `submit` after one of them has been reaped).
    pub fn submit(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        if !self.inflight.is_empty() {
            self.reap()?;
        }
        if self.inflight.len() >= self.opts.writes_in_flight {
            return Ok(());
        }
        let Some(batch) = self.batch.take() else {
            return Ok(());
        };
        if batch.count == 0 {
            return Ok(());
        }
        if !self.segments.contains_key(&batch.segment) {
            if let Err(error) = self.enter_segment(batch.segment) {
                self.batch = Some(batch);
                return Err(error);
            }
        }
        self.issue(batch)
    }

    fn issue(&mut self, batch: Batch) -> Result<(), WalError> {
        let len = batch_bytes_for(batch.records_bytes);
        assert!(len <= batch.capacity_bytes, "batch overran its capacity");
        assert!(batch.offset + len as u64 <= self.opts.segment_bytes);
        assert_eq!(batch.first_lsn.0 + u64::from(batch.count), self.next_lsn.0);
        let buffer = &mut self.buffers[batch.buffer][..len];
        finish_batch_into(
            self.opts.core,
            batch.segment,
            batch.offset,
            batch.first_lsn,
            batch.count,
            batch.records_bytes,
            buffer,
        );
        let groups = batch.groups;
        let record_overhead = batch.records_bytes as u64 - batch.payload_bytes;
        let seq = self.next_seq;
        self.next_seq += 1;
        let inflight = InFlight {
            seq,
            done: false,
            buffer: batch.buffer,
            segment: batch.segment,
            offset: batch.offset,
            len,
            first_lsn: batch.first_lsn,
            last_lsn: Lsn(batch.first_lsn.0 + u64::from(batch.count) - 1),
            issued: Instant::now(),
            write_reaped: false,
            records: batch.count,
            groups,
            payload_bytes: batch.payload_bytes,
            padding_bytes: (len - BATCH_HEADER_BYTES - batch.records_bytes) as u64,
        };
        debug_assert!(record_overhead >= u64::from(batch.count) * RECORD_HEADER_BYTES as u64);
        if let Some(pending) = self.cut_tails.as_mut() {
            if !pending.first_issued {
                pending.first_issued = true;
                pending.zero_before_ack = (batch.segment, batch.offset) != pending.resume;
            }
            let range = pending
                .written
                .entry(batch.segment)
                .or_insert((batch.offset, batch.offset));
            range.1 = batch.offset + len as u64;
        }
        self.next_write = (batch.segment, batch.offset + len as u64);
        // The next batch accumulates in a buffer no write in flight uses (there are
        // `writes_in_flight + 1` and at most `writes_in_flight` are in flight, this one
        // included).
        let busy = |b: usize| b == batch.buffer || self.inflight.iter().any(|f| f.buffer == b);
        self.acc_buffer = (0..self.buffers.len())
            .find(|b| !busy(*b))
            .expect("a free write buffer");
        let segment = &self.segments[&batch.segment];
        let dsync = self.opts.sync_mode == SyncMode::Dsync;
        let fd = segment.direct.as_raw_fd();
        let result = match &mut self.io {
            Io::Uring(ring) => {
                let pointer = self.buffers[inflight.buffer].as_ptr();
                // SAFETY: the buffer is one of `self.buffers`, mapped for the life of `self`;
                // from here until the write's completion is reaped (`reap`; `Drop` waits for
                // it) it is an in-flight buffer, which `append` never writes (appends go to
                // `acc_buffer`, never a buffer in flight) and only `read` reads.
                let pushed = unsafe {
                    ring.push_write(fd, pointer, len as u32, inflight.offset, dsync, seq)
                };
                pushed.and_then(|()| ring.submit())
            }
            Io::Blocking => {
                let bytes = &self.buffers[inflight.buffer][..len];
                ring::blocking_durable_write(fd, bytes, inflight.offset, dsync)
            }
        };
        let path = segment.path.clone();
        let offset = inflight.offset;
        let blocking = matches!(self.io, Io::Blocking);
        self.inflight.push_back(inflight);
        if let Err(source) = result {
            if let Some(flight) = self.inflight.back_mut() {
                // Nothing more will be reaped for this write. With io_uring we cannot tell
                // whether the kernel took the entry, so the buffers are never unmapped (`Drop`
                // leaks them) rather than risk the kernel reading freed memory.
                flight.write_reaped = true;
                self.leak_buffers_on_drop = !blocking;
            }
            let error = self.durable_error(&path, offset, source);
            return Err(self.poison(error));
        }
        if blocking {
            if let Some(flight) = self.inflight.back_mut() {
                flight.write_reaped = true;
                flight.done = true;
            }
            if let Err(error) = self.acknowledge_done() {
                return Err(self.poison(error));
            }
        }
        self.prepare_ahead(self.next_write.0 + 1);
        Ok(())
    }

    fn durable_error(&self, path: &Path, offset: u64, source: io::Error) -> WalError {
        if source.raw_os_error() == Some(libc::EINVAL) {
            return WalError::DirectIoUnsupported {
                path: path.to_path_buf(),
            };
        }
        WalError::DurableWriteFailed {
            path: path.to_path_buf(),
            offset,
            source,
        }
    }

    /// Acknowledges the writes in flight that are durable, oldest first, up to the first one
    /// that is not: the durable point moves in Lsn order (a write that completed before an
    /// earlier one waits for it).
    fn acknowledge_done(&mut self) -> Result<(), WalError> {
        while self.inflight.front().is_some_and(|f| f.done) {
            self.complete_inflight()?;
        }
        Ok(())
    }

    /// Counts the oldest write in flight as durable. When the cut tails must be zeroed first
    /// (see `PendingCut::zero_before_ack`) and that fails, the write stays unacknowledged and
    /// the error is fatal: a restart could drop the write, so it must never count as durable.
    fn complete_inflight(&mut self) -> Result<(), WalError> {
        if self.cut_tails.as_ref().is_some_and(|p| p.zero_before_ack) {
            self.zero_pending_cut().map_err(|error| match error {
                WalError::Io {
                    path,
                    offset,
                    source,
                    ..
                } => WalError::DurableWriteFailed {
                    path,
                    offset,
                    source,
                },
                other => other,
            })?;
        }
        let flight = self.inflight.pop_front().expect("a write in flight");
        assert!(flight.last_lsn > self.durable_lsn, "durable LSN only grows");
        assert_eq!(
            flight.first_lsn.0,
            self.durable_lsn.0 + 1,
            "writes complete in order"
        );
        self.durable_lsn = flight.last_lsn;
        let c = &mut self.counters;
        c.writes += 1;
        c.durable_writes += 1;
        c.bytes_written += flight.len as u64;
        c.payload_bytes += flight.payload_bytes;
        c.padding_bytes += flight.padding_bytes;
        c.header_bytes += flight.len as u64 - flight.payload_bytes - flight.padding_bytes;
        c.records += u64::from(flight.records);
        let micros = flight.issued.elapsed().as_micros().max(1) as u64;
        c.latency_us.saturating_record(micros);
        c.records_per_write
            .saturating_record(u64::from(flight.records));
        c.groups_per_write.saturating_record(flight.groups);
        self.write_completed = true;
        Ok(())
    }

    /// Reaps available completions without blocking.
    fn reap(&mut self) -> Result<(), WalError> {
        let Io::Uring(ring) = &mut self.io else {
            return Ok(());
        };
        ring.reap(&mut self.completions);
        let completions = std::mem::take(&mut self.completions);
        let mut failure = None;
        for completion in &completions {
            match *completion {
                Completion::Write(seq, result) => {
                    let dsync = self.opts.sync_mode == SyncMode::Dsync;
                    let Some(flight) = self.inflight.iter_mut().find(|f| f.seq == seq) else {
                        failure.get_or_insert((
                            seq,
                            io::Error::other(format!("completion of write {seq}, not in flight")),
                        ));
                        continue;
                    };
                    flight.write_reaped = true;
                    let expected = flight.len;
                    if result < 0 || result as usize != expected {
                        let source = if result < 0 {
                            io::Error::from_raw_os_error(-result)
                        } else {
                            io::Error::new(
                                io::ErrorKind::WriteZero,
                                format!("short write: {result} of {expected} bytes"),
                            )
                        };
                        failure.get_or_insert((seq, source));
                    } else if dsync {
                        flight.done = true;
                    }
                }
                Completion::Sync(seq, result) => {
                    if result < 0 {
                        failure.get_or_insert((seq, io::Error::from_raw_os_error(-result)));
                    } else if let Some(flight) = self.inflight.iter_mut().find(|f| f.seq == seq) {
                        flight.done = true;
                    }
                }
                Completion::Poll(fd, _) => {
                    if !self.ready_fds.contains(&fd) {
                        self.ready_fds.push(fd);
                    }
                }
                Completion::Timeout(generation, _) => {
                    if self.timeout_generation == Some(generation) {
                        self.timed_out = true;
                        self.timeout_generation = None;
                    }
                }
                Completion::Other => {}
            }
        }
        self.completions = completions;
        self.completions.clear();
        if let Some((seq, source)) = failure {
            // Nothing after a failed write is acknowledged: the log is poisoned.
            let (path, offset) = match self.inflight.iter().find(|f| f.seq == seq) {
                Some(flight) => (self.segments[&flight.segment].path.clone(), flight.offset),
                None => (self.opts.dir.clone(), 0),
            };
            let error = self.durable_error(&path, offset, source);
            return Err(self.poison(error));
        }
        if let Err(error) = self.acknowledge_done() {
            return Err(self.poison(error));
        }
        Ok(())
    }

    /// Sleeps in ONE `io_uring_enter` until this WAL's write completes, one of `fds` becomes
    /// readable, or `timeout` passes (returns at once if none of these can happen). With the
    /// blocking backend: poll(2) on `fds`.
    ///
    /// With io_uring, a watch on an fd stays armed until the fd becomes readable (it is then
    /// re-armed by the next `wait` that names it): keep watched fds open for the life of the
    /// log, as a core does with its inbox eventfd and timer.
    pub fn wait(
        &mut self,
        fds: &[RawFd],
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, WalError> {
        self.check_poisoned()?;
        if fds.len() > WAIT_FDS_MAX {
            return Err(WalError::Config(format!(
                "wait watches at most {WAIT_FDS_MAX} fds, got {}",
                fds.len()
            )));
        }
        self.write_completed = false;
        self.timed_out = false;
        match &mut self.io {
            Io::Blocking => {
                if fds.is_empty() && timeout.is_none() {
                    return Ok(self.outcome(fds));
                }
                let ready = ring::blocking_poll(fds, timeout)
                    .map_err(|e| io_err("poll", &self.opts.dir, 0, e))?;
                self.timed_out = ready.is_empty() && timeout.is_some();
                self.ready_fds = ready;
                Ok(self.outcome(fds))
            }
            Io::Uring(ring) => {
                let dir = self.opts.dir.clone();
                ring.arm_polls(fds)
                    .map_err(|e| io_err("io_uring poll", &dir, 0, e))?;
                self.timeout_generation = match timeout {
                    Some(after) => Some(
                        ring.arm_timeout(after)
                            .map_err(|e| io_err("io_uring timeout", &dir, 0, e))?,
                    ),
                    None => {
                        ring.cancel_timeout()
                            .map_err(|e| io_err("io_uring timeout", &dir, 0, e))?;
                        None
                    }
                };
                loop {
                    self.reap()?;
                    let woken = self.write_completed
                        || self.timed_out
                        || self.ready_fds.iter().any(|fd| fds.contains(fd));
                    let can_wake =
                        !self.inflight.is_empty() || !fds.is_empty() || timeout.is_some();
                    if woken || !can_wake {
                        return Ok(self.outcome(fds));
                    }
                    let Io::Uring(ring) = &mut self.io else {
                        unreachable!("backend does not change")
                    };
                    ring.submit_and_wait_one()
                        .map_err(|e| io_err("io_uring_enter", &dir, 0, e))?;
                }
            }
        }
    }

    fn outcome(&mut self, fds: &[RawFd]) -> WaitOutcome {
        let ready_fds = self
            .ready_fds
            .iter()
            .copied()
            .filter(|fd| fds.contains(fd))
            .collect();
        self.ready_fds.clear();
        WaitOutcome {
            durable_lsn: self.durable_lsn,
            write_completed: self.write_completed,
            ready_fds,
            timed_out: self.timed_out,
        }
    }

    /// Reaps completions without blocking; returns the durable LSN.
    pub fn poll(&mut self) -> Result<Lsn, WalError> {
        self.check_poisoned()?;
        if let Io::Uring(ring) = &mut self.io {
            ring.submit()
                .map_err(|e| io_err("io_uring_enter", &self.opts.dir, 0, e))?;
        }
        self.reap()?;
        Ok(self.durable_lsn)
    }

    /// The oldest write in flight, if any: how long ago it was issued, and its LSNs, segment
    /// and offset (for a stuck report: no reply that depends on it can leave until it
    /// completes).
    pub fn write_in_flight_since(&self) -> Option<(std::time::Duration, Lsn, Lsn, u64, u64)> {
        self.inflight.front().map(|f| {
            (
                f.issued.elapsed(),
                f.first_lsn,
                f.last_lsn,
                f.segment,
                f.offset,
            )
        })
    }

    /// Highest LSN whose write completed durably.
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// Highest LSN appended (durable or not).
    pub fn appended_lsn(&self) -> Lsn {
        Lsn(self.next_lsn.0 - 1)
    }

    /// Bytes left in the segment the next write goes to (after the last write issued): what
    /// the log can still take before it needs another segment file.
    pub fn segment_bytes_left(&self) -> u64 {
        self.opts.segment_bytes.saturating_sub(self.next_write.1)
    }

    /// True when a write is in flight.
    pub fn write_in_flight(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// Writes in flight now.
    pub fn writes_in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// True when a `submit` now would issue a write (the batch holds records and fewer than
    /// `writes_in_flight` writes are in flight; completions not yet reaped are not counted).
    pub fn can_issue(&self) -> bool {
        self.pending_records() > 0 && self.inflight.len() < self.opts.writes_in_flight
    }

    /// Records appended and not yet handed to a write.
    pub fn pending_records(&self) -> u32 {
        self.batch.as_ref().map_or(0, |b| b.count)
    }

    /// The newest record for `(group, instance)` (appended, possibly not yet durable).
    pub fn read(&self, group: GroupId, instance: Instance) -> Result<Option<Record>, WalError> {
        self.check_poisoned()?;
        let Some(location) = self.index.get(group, instance).copied() else {
            return Ok(None);
        };
        self.read_at(location)
    }

    /// The bytes of the record at `location` when it is still in a write buffer (in the batch
    /// accumulating, or in the write in flight); `None` when it is in its segment file.
    fn buffered(&self, location: &RecordLocation) -> Option<&[u8]> {
        let in_buffer = |buffer: usize, base: u64| {
            let start = (location.offset - base) as usize;
            &self.buffers[buffer][start..start + location.len as usize]
        };
        if let Some(batch) = &self.batch {
            if batch.count > 0 && location.lsn >= batch.first_lsn {
                return Some(in_buffer(batch.buffer, batch.offset));
            }
        }
        self.inflight
            .iter()
            .find(|f| f.first_lsn <= location.lsn && location.lsn <= f.last_lsn)
            .map(|f| in_buffer(f.buffer, f.offset))
    }

    /// Decodes the record at `location` from `bytes` (exactly its `location.len` bytes):
    /// checksum, LSN and length verified by the format's one record decoder; a clear error
    /// when they do not verify.
    fn decode_at(&self, location: &RecordLocation, bytes: &[u8]) -> Result<Record, WalError> {
        decode_record_at(self.opts.core, location.segment, location.lsn, bytes).ok_or_else(|| {
            WalError::CorruptRead {
                path: self.segment_path(location.segment),
                offset: location.offset,
            }
        })
    }

    /// The record at `location` (appended, possibly not yet durable).
    fn read_at(&self, location: RecordLocation) -> Result<Option<Record>, WalError> {
        self.check_poisoned()?;
        if let Some(bytes) = self.buffered(&location) {
            return self.decode_at(&location, bytes).map(Some);
        }
        let Some(file) = self.segments.get(&location.segment) else {
            return Ok(None);
        };
        let mut bytes = vec![0u8; location.len as usize];
        file.reader
            .read_exact_at(&mut bytes, location.offset)
            .map_err(|e| io_err("read record", &file.path, location.offset, e))?;
        self.decode_at(&location, &bytes).map(Some)
    }

    /// Segment files this log holds now (the one being written included; spares not).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The chosen value of `(group, instance)` as this log holds it, read from the record the
    /// index resolves it to ([`LogIndex::resolve_chosen`], the rule the simulator's disk runs
    /// too): the payload of its newest `Chosen` mark, or of the `Accept` an empty mark names
    /// by ballot (a later Promise or Meta record naming the same instance does not hide the
    /// mark). `None` when the log holds no mark for the instance (not chosen here, not yet
    /// marked, or purged), or the mark's `Accept` is not the one it names (replaced, or
    /// damaged and re-learnt: the caller serves it from elsewhere).
    pub fn read_chosen(
        &self,
        group: GroupId,
        instance: Instance,
    ) -> Result<Option<Bytes>, WalError> {
        self.check_poisoned()?;
        let Some(location) = self.index.resolve_chosen(group, instance) else {
            return Ok(None);
        };
        let value = self.read_at(location)?;
        debug_assert!(
            value.as_ref().is_none_or(|r| r.group == group
                && r.instance == instance
                && matches!(r.kind, RecordKind::Accept | RecordKind::Chosen)),
            "the index resolved ({group:?}, {instance:?}) to another record: {value:?}"
        );
        Ok(value.map(|r| r.payload))
    }

    /// Streaming catch-up's read: the chosen values of `group`'s instances `first..end`, in
    /// instance order, appended to `out` as `(instance, value)`, each exactly what
    /// [`Wal::read_chosen`] returns for it, read with one `pread` per run of nearby records
    /// instead of one per value.
    ///
    /// The index resolves each instance ([`LogIndex::resolve_chosen`]); consecutive locations
    /// in the same segment file are coalesced into one covering read while each adds at most
    /// [`RUN_GAP_BYTES_MAX`] bytes of other records (a group's records lie among other
    /// groups' in the same writes) and the read stays within [`RUN_READ_BYTES_MAX`] bytes;
    /// a record still in a write buffer is decoded from there. Every record is decoded and
    /// verified (checksum, LSN, length) by the format's record decoder, as `read_chosen` does.
    ///
    /// Stops at `end` ([`RunStop::End`]), at the first instance the log holds no chosen value
    /// for ([`RunStop::Missing`]: where `read_chosen` returns `None`), or before the value that
    /// would take the payload bytes this call appended past `bytes_max`
    /// ([`RunStop::BytesMax`]; the first value is always taken, however large). On an error
    /// (a failed read, a record that does not verify, a poisoned log) `out` keeps the values
    /// appended before it, all verified.
    pub fn read_chosen_run(
        &self,
        group: GroupId,
        first: Instance,
        end: Instance,
        bytes_max: usize,
        out: &mut Vec<(Instance, Bytes)>,
    ) -> Result<RunStop, WalError> {
        self.check_poisoned()?;
        let mut run = ChosenRun {
            group,
            taken: 0,
            bytes: 0,
            bytes_max,
            span: Vec::new(),
            covered: (0, 0),
            buffer: Vec::new(),
        };
        // Lower bound of the payload bytes taken and planned (a record's length bounds its
        // payload from below), to stop planning where the budget surely ends.
        let mut planned_bytes = 0usize;
        let mut instance = first.0;
        let stop = loop {
            if instance >= end.0 {
                break RunStop::End;
            }
            let Some(location) = self.index.resolve_chosen(group, Instance(instance)) else {
                break RunStop::Missing;
            };
            let payload_floor =
                (location.len as usize).saturating_sub(RECORD_HEADER_BYTES + RECORD_ALIGN_BYTES);
            if run.taken + run.span.len() > 0 && planned_bytes + payload_floor > bytes_max {
                break RunStop::BytesMax;
            }
            let buffered = self.buffered(&location);
            // Values go out in instance order: what is planned is read before a record that
            // cannot join it (or sits in a write buffer) is taken.
            if buffered.is_some() || !run.joins(&location) {
                if let Some(stop) = self.flush_run(&mut run, out)? {
                    return Ok(stop);
                }
            }
            if let Some(bytes) = buffered {
                let record = self.decode_at(&location, bytes)?;
                if let Some(stop) = run.take(Instance(instance), record, out) {
                    return Ok(stop);
                }
            } else {
                run.plan(Instance(instance), location);
            }
            planned_bytes += payload_floor;
            instance += 1;
        };
        Ok(self.flush_run(&mut run, out)?.unwrap_or(stop))
    }

    /// Reads and decodes the records `run` planned (one covering read), appending their values
    /// to `out`; `Some` when the run stops there.
    fn flush_run(
        &self,
        run: &mut ChosenRun,
        out: &mut Vec<(Instance, Bytes)>,
    ) -> Result<Option<RunStop>, WalError> {
        let Some((start, end)) = run.range() else {
            return Ok(None);
        };
        let segment = run.span[0].1.segment;
        let Some(file) = self.segments.get(&segment) else {
            // Gone (purged) since the index resolved it: read_chosen says None here too.
            run.span.clear();
            return Ok(Some(RunStop::Missing));
        };
        run.buffer.clear();
        run.buffer.resize((end - start) as usize, 0);
        file.reader
            .read_exact_at(&mut run.buffer, start)
            .map_err(|e| io_err("read records", &file.path, start, e))?;
        let span = std::mem::take(&mut run.span);
        for (instance, location) in &span {
            let at = (location.offset - start) as usize;
            let bytes = &run.buffer[at..at + location.len as usize];
            let record = self.decode_at(location, bytes)?;
            if let Some(stop) = run.take(*instance, record, out) {
                return Ok(Some(stop));
            }
        }
        run.span = span;
        run.span.clear();
        Ok(None)
    }

    fn segment_path(&self, segment: u64) -> PathBuf {
        self.opts
            .dir
            .join(segfile::segment_name(self.opts.core, segment))
    }

    /// Declares that `group` no longer needs its records for instances below `below`.
    /// Floors only rise. (The engine must re-log what it still needs, e.g. its promise, above
    /// the floor before raising it.)
    pub fn set_purge_floor(&mut self, group: GroupId, below: Instance) {
        let floor = self.floors.entry(group).or_insert(below);
        *floor = (*floor).max(below);
    }

    /// Removes the oldest segments whose every group is past its floor (oldest first; never the
    /// segment being written). Reports which groups hold the oldest remaining segment back.
    pub fn purge(&mut self) -> Result<PurgeReport, WalError> {
        self.check_poisoned()?;
        let mut report = PurgeReport::default();
        let mut oldest_live = self.next_write.0;
        if let Some(flight) = self.inflight.front() {
            oldest_live = oldest_live.min(flight.segment);
        }
        let candidates: Vec<u64> = self.segments.keys().copied().collect();
        for segment in candidates {
            let holds = self.holds(segment);
            if segment >= oldest_live || !holds.is_empty() {
                report.oldest_segment = Some(segment);
                report.held_back_by = holds;
                break;
            }
            self.remove_segment(segment)?;
            report.removed_segments.push(segment);
            report.freed_bytes += self.opts.segment_bytes;
        }
        if !report.removed_segments.is_empty() {
            segfile::fsync_dir(&self.opts.dir)?;
        }
        Ok(report)
    }

    /// Declares that `group` needs none of its records with an LSN below `below`: it wrote
    /// everything it still needs again at or above it (an idle group re-logs its state so
    /// that old segments can go). Floors only rise.
    pub fn set_purge_floor_lsn(&mut self, group: GroupId, below: Lsn) {
        let floor = self.lsn_floors.entry(group).or_insert(below);
        *floor = (*floor).max(below);
    }

    fn holds(&self, segment: u64) -> Vec<PurgeHold> {
        let last_lsn = self.segment_last_lsn.get(&segment).copied();
        self.index
            .groups_in_segment(segment)
            .into_iter()
            .filter_map(|(group, high)| {
                let floor = self.floors.get(&group).copied();
                let superseded = match (self.lsn_floors.get(&group), last_lsn) {
                    (Some(lsn_floor), Some(last)) => last < *lsn_floor,
                    _ => false,
                };
                let needed = !superseded && floor.is_none_or(|floor| high >= floor);
                needed.then_some(PurgeHold {
                    group: group.0,
                    instance_max: high.0,
                    floor: floor.map(|f| f.0),
                })
            })
            .collect()
    }

    fn remove_segment(&mut self, segment: u64) -> Result<(), WalError> {
        let file = self.segments.remove(&segment).expect("listed segment");
        self.segment_last_lsn.remove(&segment);
        self.index.remove_segment(segment);
        let path = file.path.clone();
        drop(file);
        if self.spares.len() < SPARES_MAX {
            self.spare_serial += 1;
            let spare = self
                .opts
                .dir
                .join(segfile::spare_name(self.opts.core, self.spare_serial));
            std::fs::rename(&path, &spare)
                .map_err(|e| io_err("rename purged segment", &path, 0, e))?;
            self.spares.push(spare);
        } else {
            std::fs::remove_file(&path)
                .map_err(|e| io_err("remove purged segment", &path, 0, e))?;
        }
        self.counters.segments_purged += 1;
        Ok(())
    }

    /// Starts preparing segment `segment` in the background unless it exists or is underway.
    fn prepare_ahead(&mut self, segment: u64) {
        if self.segments.contains_key(&segment) || self.preparation.is_some() {
            return;
        }
        let final_path = self.segment_path(segment);
        if final_path.exists() {
            return;
        }
        let preparing = self
            .opts
            .dir
            .join(segfile::preparing_name(self.opts.core, segment));
        let spare = self.spares.pop();
        let recycled = spare.is_some();
        let dir = self.opts.dir.clone();
        let segment_bytes = self.opts.segment_bytes;
        let core = self.opts.core;
        let spawned = std::thread::Builder::new()
            .name(format!("wal-prepare-{}", self.opts.core))
            .spawn(move || {
                segfile::create_segment(
                    &dir,
                    &preparing,
                    &final_path,
                    segment_bytes,
                    spare.as_deref(),
                    Some((core, segment)),
                )
            });
        match spawned {
            Ok(handle) => {
                self.preparation = Some(Preparation {
                    segment,
                    recycled,
                    handle,
                })
            }
            Err(error) => {
                tracing::warn!(%error, "cannot start segment preparation; will prepare on demand")
            }
        }
    }

    /// Makes `segment` (the next one) writable: takes the prepared file, or prepares it now.
    fn enter_segment(&mut self, segment: u64) -> Result<(), WalError> {
        let path = self.segment_path(segment);
        match self.preparation.take() {
            Some(preparation) if preparation.segment == segment => {
                if !preparation.handle.is_finished() {
                    self.counters.segment_prepare_waits += 1;
                }
                let result = preparation
                    .handle
                    .join()
                    .map_err(|_| WalError::Config("segment preparation thread panicked".into()))?;
                result?;
                if preparation.recycled {
                    self.counters.segments_recycled += 1;
                } else {
                    self.counters.segments_created += 1;
                }
            }
            other => {
                if let Some(stale) = other {
                    let _ = stale.handle.join();
                }
                if !path.exists() {
                    self.counters.segment_prepare_waits += 1;
                    let preparing = self
                        .opts
                        .dir
                        .join(segfile::preparing_name(self.opts.core, segment));
                    let spare = self.spares.pop();
                    segfile::create_segment(
                        &self.opts.dir,
                        &preparing,
                        &path,
                        self.opts.segment_bytes,
                        spare.as_deref(),
                        Some((self.opts.core, segment)),
                    )?;
                    if spare.is_some() {
                        self.counters.segments_recycled += 1;
                    } else {
                        self.counters.segments_created += 1;
                    }
                }
            }
        }
        self.segments.insert(segment, open_segment(&path)?);
        self.prepare_ahead(segment + 1);
        Ok(())
    }

    /// The counters.
    pub fn stats(&self) -> WalStats {
        let c = &self.counters;
        let latency = &c.latency_us;
        WalStats {
            backend: self.backend(),
            sync_mode: self.opts.sync_mode,
            writes: c.writes,
            durable_writes: c.durable_writes,
            bytes_written: c.bytes_written,
            payload_bytes: c.payload_bytes,
            header_bytes: c.header_bytes,
            padding_bytes: c.padding_bytes,
            records: c.records,
            records_per_write: count_summary(&c.records_per_write),
            groups_per_write: count_summary(&c.groups_per_write),
            write_latency_us: LatencySummary {
                count: latency.len(),
                p50: latency.value_at_quantile(0.5),
                p99: latency.value_at_quantile(0.99),
                p999: latency.value_at_quantile(0.999),
                max: latency.max(),
                mean: latency.mean(),
            },
            segments_created: c.segments_created,
            segments_recycled: c.segments_recycled,
            segments_purged: c.segments_purged,
            segment_prepare_waits: c.segment_prepare_waits,
            appended_lsn: self.appended_lsn(),
            durable_lsn: self.durable_lsn,
        }
    }

    /// The write latency histogram (microseconds), for harnesses that merge histograms.
    pub fn write_latency_histogram(&self) -> &Histogram<u64> {
        &self.counters.latency_us
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendInUse {
        match self.io {
            Io::Uring(_) => BackendInUse::Uring,
            Io::Blocking => BackendInUse::Blocking,
        }
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &WalOptions {
        &self.opts
    }

    /// Segment numbers present, oldest first.
    pub fn segment_numbers(&self) -> Vec<u64> {
        self.segments.keys().copied().collect()
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // The kernel may still read the in-flight buffers: wait for every write's completion
        // before the buffers are unmapped.
        if let Io::Uring(ring) = &mut self.io {
            let mut completions = Vec::new();
            while self.inflight.iter().any(|f| !f.write_reaped) {
                if ring.submit_and_wait_one().is_err() {
                    // Cannot wait: leak the buffers rather than unmap memory the kernel may use.
                    self.leak_buffers_on_drop = true;
                    break;
                }
                ring.reap(&mut completions);
                for completion in &completions {
                    if let Completion::Write(seq, _) = completion {
                        if let Some(flight) = self.inflight.iter_mut().find(|f| f.seq == *seq) {
                            flight.write_reaped = true;
                        }
                    }
                }
                completions.clear();
            }
        }
        if self.leak_buffers_on_drop {
            std::mem::forget(std::mem::take(&mut self.buffers));
        }
        if let Some(preparation) = self.preparation.take() {
            let _ = preparation.handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Ballot, RecordKind};

    /// The one O_DIRECT skip-or-fail decision, shared with the integration tests.
    mod odirect {
        #![allow(dead_code)]
        include!("../tests/common/odirect.rs");
    }

    fn open_or_skip(dir: &Path, backend: Backend) -> Option<Wal> {
        let mut opts = WalOptions::new(dir, 0);
        opts.segment_bytes = 256 << 10;
        opts.buffer_bytes = 16 << 10;
        opts.backend = backend;
        match Wal::open(opts) {
            Ok((wal, _)) => Some(wal),
            Err(error @ WalError::DirectIoUnsupported { .. }) => {
                odirect::skip_or_fail("wal unit tests", dir, &error);
                None
            }
            Err(other) => panic!("open: {other}"),
        }
    }

    fn record(payload: &[u8]) -> RecordRef<'_> {
        RecordRef {
            kind: RecordKind::Accept,
            group: GroupId(1),
            instance: Instance(1),
            promised: Ballot::ZERO,
            accepted: Ballot::ZERO,
            payload,
        }
    }

    /// Appends `record`, writing what is pending first when the buffer is full.
    fn put(wal: &mut Wal, record: RecordRef<'_>) {
        loop {
            match wal.append(record) {
                Ok(_) => return,
                Err(WalError::BufferFull { .. }) => {
                    wal.submit().expect("submit");
                    if wal.write_in_flight() {
                        wal.wait(&[], Some(Duration::from_secs(5))).expect("wait");
                    }
                }
                Err(other) => panic!("append: {other}"),
            }
        }
    }

    /// Submits and waits until everything appended is durable.
    fn drain(wal: &mut Wal) {
        for _ in 0..10_000 {
            wal.submit().expect("submit");
            if wal.durable_lsn() == wal.appended_lsn() {
                return;
            }
            wal.wait(&[], Some(Duration::from_secs(5))).expect("wait");
        }
        panic!("not drained");
    }

    fn value(group: u32, instance: u64, tag: u8) -> Vec<u8> {
        let len = 200 + ((instance * 97 + u64::from(group) * 31) % 1300) as usize;
        (0..len)
            .map(|i| (i as u64 ^ instance.wrapping_mul(131) ^ (u64::from(group) * 7)) as u8 ^ tag)
            .collect()
    }

    fn accept(group: u32, instance: u64, ballot: Ballot, payload: &[u8]) -> RecordRef<'_> {
        RecordRef {
            kind: RecordKind::Accept,
            group: GroupId(group),
            instance: Instance(instance),
            promised: ballot,
            accepted: ballot,
            payload,
        }
    }

    fn mark(group: u32, instance: u64, ballot: Ballot, payload: &[u8]) -> RecordRef<'_> {
        RecordRef {
            kind: RecordKind::Chosen,
            ..accept(group, instance, ballot, payload)
        }
    }

    /// What `read_chosen` returns for `first..end`, one at a time, up to its first `None`.
    fn one_by_one(wal: &Wal, group: GroupId, first: u64, end: u64) -> Vec<(Instance, Bytes)> {
        let mut values = Vec::new();
        for instance in first..end {
            match wal
                .read_chosen(group, Instance(instance))
                .expect("read_chosen")
            {
                Some(value) => values.push((Instance(instance), value)),
                None => break,
            }
        }
        values
    }

    /// Groups 1-4 write a value and its chosen mark per instance, interleaved in the same
    /// writes (an empty mark naming the Accept, or every fifth a mark carrying a newer value,
    /// or every seventh of group 2 re-accepted at a higher ballot before the mark), group 9
    /// once every eleven rounds (its records lie more than `RUN_GAP_BYTES_MAX` apart); group
    /// 4's instance 150 is accepted but never marked.
    fn write_interleaved(wal: &mut Wal, rounds: u64) {
        let b1 = Ballot { number: 1, node: 1 };
        let b2 = Ballot { number: 2, node: 2 };
        for round in 0..rounds {
            for group in 1..=4u32 {
                let first = value(group, round, 0);
                put(wal, accept(group, round, b1, &first));
                if group == 4 && round == 150 {
                    continue;
                }
                if group == 2 && round % 7 == 3 {
                    let second = value(group, round, 0x55);
                    put(wal, accept(group, round, b2, &second));
                    put(wal, mark(group, round, b2, b""));
                } else if round % 5 == 2 {
                    put(wal, mark(group, round, b1, &value(group, round, 0xaa)));
                } else {
                    put(wal, mark(group, round, b1, b""));
                }
            }
            if round % 11 == 0 {
                let instance = round / 11;
                let payload = value(9, instance, 0);
                put(wal, accept(9, instance, b1, &payload));
                put(wal, mark(9, instance, b1, b""));
            }
        }
    }

    /// A run of a group's chosen values, read with coalesced reads across segments (and from
    /// the write buffer for the newest), is exactly what `read_chosen` returns one at a time,
    /// from any start, for any end, before and after a reopen.
    #[test]
    fn read_chosen_run_matches_read_chosen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(mut wal) = open_or_skip(dir.path(), Backend::Auto) else {
            return;
        };
        let rounds = 200;
        write_interleaved(&mut wal, rounds - 2);
        drain(&mut wal);
        // The last rounds stay in the write buffer (appended, not submitted).
        let before = wal.stats().writes;
        let b1 = Ballot { number: 1, node: 1 };
        for round in rounds - 2..rounds {
            let payload = value(1, round, 0);
            wal.append(accept(1, round, b1, &payload)).expect("append");
            wal.append(mark(1, round, b1, b"")).expect("append");
        }
        assert!(wal.pending_records() > 0);
        let segment_of = |wal: &Wal, group: u32, instance: u64| {
            wal.index
                .resolve_chosen(GroupId(group), Instance(instance))
                .expect("resolved")
                .segment
        };
        assert!(wal.segment_count() >= 2, "{} segments", wal.segment_count());
        assert_ne!(segment_of(&wal, 1, 0), segment_of(&wal, 1, rounds - 3));
        let check = |wal: &Wal| {
            for group in [1u32, 2, 3, 4, 9, 5] {
                let g = GroupId(group);
                for (first, end) in [(0, rounds + 5), (0, 1), (37, 120), (140, 160), (0, 0)] {
                    let expected = one_by_one(wal, g, first, end);
                    let mut out = vec![(Instance(999), Bytes::from_static(b"kept"))];
                    let stop = wal
                        .read_chosen_run(g, Instance(first), Instance(end), usize::MAX, &mut out)
                        .expect("read_chosen_run");
                    assert_eq!(out[0].0, Instance(999), "earlier entries are kept");
                    assert_eq!(out[1..], expected[..], "group {group} {first}..{end}");
                    let stop_expected = if expected.len() as u64 == end.saturating_sub(first) {
                        RunStop::End
                    } else {
                        RunStop::Missing
                    };
                    assert_eq!(stop, stop_expected, "group {group} {first}..{end}");
                }
            }
            assert_eq!(one_by_one(wal, GroupId(4), 0, rounds).len(), 150);
            assert_eq!(one_by_one(wal, GroupId(9), 0, rounds).len(), 18);
        };
        check(&wal);
        assert_eq!(wal.stats().writes, before, "nothing more was written");
        drain(&mut wal);
        drop(wal);
        let wal = open_or_skip(dir.path(), Backend::Auto).expect("reopen");
        check(&wal);
    }

    /// A record damaged on disk inside a run is a clear error (`CorruptRead` naming its offset),
    /// never a panic or wrong data: the values before it are kept, verified; a damaged length
    /// field is an error too.
    #[test]
    fn read_chosen_run_reports_a_damaged_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(mut wal) = open_or_skip(dir.path(), Backend::Auto) else {
            return;
        };
        write_interleaved(&mut wal, 120);
        drain(&mut wal);
        let g = GroupId(3);
        let expected = one_by_one(&wal, g, 0, 120);
        assert_eq!(expected.len(), 120);
        let mut first_damaged = None;
        for (instance, at, bytes) in [
            // A payload byte.
            (40u64, RECORD_HEADER_BYTES as u64 + 5, vec![0x5au8]),
            // The payload length field: far beyond the record.
            (72, 8, u32::MAX.to_le_bytes().to_vec()),
        ] {
            let location = wal
                .index
                .resolve_chosen(g, Instance(instance))
                .expect("resolved");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(wal.segment_path(location.segment))
                .expect("open segment");
            let mut old = vec![0u8; bytes.len()];
            wal.segments[&location.segment]
                .reader
                .read_exact_at(&mut old, location.offset + at)
                .expect("read");
            let mut new = bytes.clone();
            if new == old {
                new[0] ^= 0xff;
            }
            file.write_all_at(&new, location.offset + at)
                .expect("damage");
            let mut out = Vec::new();
            let error = wal
                .read_chosen_run(g, Instance(0), Instance(120), usize::MAX, &mut out)
                .expect_err("a damaged record must be an error");
            match &error {
                // The first damaged record (instance 40's) ends every run from 0.
                WalError::CorruptRead { offset, .. } => {
                    assert_eq!(*offset, *first_damaged.get_or_insert(location.offset))
                }
                other => panic!("{other}"),
            }
            assert_eq!(
                out[..],
                expected[..40],
                "values before the damage, unchanged"
            );
            // The single-value read says the same.
            assert!(matches!(
                wal.read_chosen(g, Instance(instance)),
                Err(WalError::CorruptRead { .. })
            ));
            // A run starting after the damage is unaffected.
            let mut out = Vec::new();
            let stop = wal
                .read_chosen_run(g, Instance(73), Instance(120), usize::MAX, &mut out)
                .expect("run after the damage");
            assert_eq!(stop, RunStop::End);
            assert_eq!(out[..], expected[73..]);
        }
    }

    /// A run stops before the value that would take it past `bytes_max` (the first value is
    /// always taken), at an instance the log holds no chosen value for, and at its end.
    #[test]
    fn read_chosen_run_stops_at_bytes_max_and_at_a_missing_instance() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(mut wal) = open_or_skip(dir.path(), Backend::Auto) else {
            return;
        };
        let b1 = Ballot { number: 1, node: 1 };
        let payload = [7u8; 100];
        for instance in 0..20u64 {
            put(&mut wal, accept(1, instance, b1, &payload));
            put(&mut wal, accept(2, instance, b1, &payload));
            if instance != 10 {
                put(&mut wal, mark(1, instance, b1, b""));
            }
        }
        drain(&mut wal);
        let g = GroupId(1);
        let run = |first: u64, end: u64, bytes_max: usize| {
            let mut out = Vec::new();
            let stop = wal
                .read_chosen_run(g, Instance(first), Instance(end), bytes_max, &mut out)
                .expect("read_chosen_run");
            let instances: Vec<u64> = out.iter().map(|(i, _)| i.0).collect();
            assert!(out.iter().all(|(_, v)| v[..] == payload[..]));
            (stop, instances)
        };
        assert_eq!(run(0, 20, 350), (RunStop::BytesMax, vec![0, 1, 2]));
        assert_eq!(run(0, 20, 300), (RunStop::BytesMax, vec![0, 1, 2]));
        assert_eq!(run(0, 20, 299), (RunStop::BytesMax, vec![0, 1]));
        assert_eq!(run(4, 20, 0), (RunStop::BytesMax, vec![4]));
        assert_eq!(
            run(0, 20, usize::MAX),
            (RunStop::Missing, (0..10).collect())
        );
        assert_eq!(run(10, 20, usize::MAX), (RunStop::Missing, vec![]));
        assert_eq!(run(11, 20, usize::MAX), (RunStop::End, (11..20).collect()));
        assert_eq!(run(11, 30, 1000), (RunStop::Missing, (11..20).collect()));
        assert_eq!(run(11, 30, 899), (RunStop::BytesMax, (11..19).collect()));
        assert_eq!(run(3, 5, 100), (RunStop::BytesMax, vec![3]));
        assert_eq!(run(3, 5, 200), (RunStop::End, vec![3, 4]));
        assert_eq!(run(5, 5, 0), (RunStop::End, vec![]));
        // A poisoned log refuses the run.
        wal.poisoned = Some("test".into());
        let mut out = Vec::new();
        assert!(matches!(
            wal.read_chosen_run(g, Instance(0), Instance(20), usize::MAX, &mut out),
            Err(WalError::Poisoned { .. })
        ));
        assert!(out.is_empty());
    }

    /// Which records share one covering read: the same segment, at most `RUN_GAP_BYTES_MAX`
    /// from the range covered (on either side), within `RUN_READ_BYTES_MAX` in all.
    #[test]
    fn chosen_run_coalesces_close_records_of_one_segment() {
        let at = |segment: u64, offset: u64, len: u32| RecordLocation {
            lsn: Lsn(1),
            segment,
            offset,
            len,
        };
        let mut run = ChosenRun {
            group: GroupId(1),
            taken: 0,
            bytes: 0,
            bytes_max: usize::MAX,
            span: Vec::new(),
            covered: (0, 0),
            buffer: Vec::new(),
        };
        assert!(run.joins(&at(3, 1 << 30, 64)), "anything starts a read");
        run.plan(Instance(0), at(3, 100_000, 1000));
        assert_eq!(run.range(), Some((100_000, 101_000)));
        assert!(run.joins(&at(3, 101_000 + RUN_GAP_BYTES_MAX, 1000)));
        assert!(!run.joins(&at(3, 101_001 + RUN_GAP_BYTES_MAX, 1000)));
        assert!(run.joins(&at(3, 100_000 - RUN_GAP_BYTES_MAX - 1000, 1000)));
        assert!(!run.joins(&at(3, 100_000 - RUN_GAP_BYTES_MAX - 1001, 1000)));
        assert!(!run.joins(&at(4, 101_000, 1000)), "another segment");
        run.plan(Instance(1), at(3, 140_000, 1000));
        assert_eq!(run.range(), Some((100_000, 141_000)));
        assert!(!run.joins(&at(3, 100_000 + RUN_READ_BYTES_MAX - 1000, 1000)));
        run.plan(
            Instance(2),
            at(3, 100_000 + RUN_READ_BYTES_MAX - 60_000, 10_000),
        );
        assert!(run.joins(&at(3, 100_000 + RUN_READ_BYTES_MAX - 1000, 1000)));
        assert!(!run.joins(&at(3, 100_000 + RUN_READ_BYTES_MAX - 1000, 1001)));
    }

    /// Zeroing a cut tail skips exactly the bytes written since open.
    #[test]
    fn uncovered_leaves_out_the_written_range() {
        assert_eq!(uncovered(8, 24, None), vec![(8, 24)]);
        assert_eq!(uncovered(8, 8, None), vec![]);
        assert_eq!(uncovered(8, 24, Some((8, 12))), vec![(12, 24)]);
        assert_eq!(uncovered(8, 24, Some((8, 24))), vec![]);
        assert_eq!(uncovered(8, 24, Some((4, 40))), vec![]);
        assert_eq!(uncovered(8, 24, Some((12, 16))), vec![(8, 12), (16, 24)]);
        assert_eq!(uncovered(8, 24, Some((0, 4))), vec![(8, 24)]);
        assert_eq!(uncovered(8, 24, Some((30, 40))), vec![(8, 24)]);
    }

    /// A durable write that fails is fatal: the error says so, nothing becomes durable, and
    /// every later call fails (the write is never retried).
    #[test]
    fn failed_durable_write_poisons_the_log() {
        for backend in [Backend::Auto, Backend::Blocking] {
            let dir = tempfile::tempdir().expect("temp dir");
            let Some(mut wal) = open_or_skip(dir.path(), backend) else {
                return;
            };
            // Swap the segment's descriptor for a read-only one: the next write fails (EBADF).
            let segment = wal.next_write.0;
            let path = wal.segments[&segment].path.clone();
            wal.segments.get_mut(&segment).expect("segment").direct =
                File::open(&path).expect("read-only open");
            wal.append(record(b"doomed")).expect("append");
            let error = match wal.submit() {
                Err(error) => error,
                Ok(()) => wal
                    .wait(&[], Some(Duration::from_secs(5)))
                    .expect_err("the write must fail"),
            };
            assert!(error.is_fatal(), "{backend:?}: {error}");
            assert!(
                matches!(error, WalError::DurableWriteFailed { .. }),
                "{error}"
            );
            assert_eq!(wal.durable_lsn(), Lsn(0));
            assert!(matches!(
                wal.append(record(b"later")),
                Err(WalError::Poisoned { .. })
            ));
            assert!(matches!(wal.submit(), Err(WalError::Poisoned { .. })));
            assert!(matches!(wal.poll(), Err(WalError::Poisoned { .. })));
            assert!(matches!(wal.purge(), Err(WalError::Poisoned { .. })));
            assert_eq!(wal.stats().durable_writes, 0);
        }
    }
}
