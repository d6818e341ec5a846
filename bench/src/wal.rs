//! `paxring-bench wal`: the WAL's group-committed rounds against a raw O_DIRECT loop with the
//! same write size and durability, measured in the same run on the same file system.
//!
//! Owns: the WAL benchmark and its report (table and JSON). Must never report a figure it did
//! not measure in this run; speed is a ratio against the in-run baseline.
use crate::rss::{self, RssLog, RssReport};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use paxring_wal::format::BLOCK_BYTES;
use paxring_wal::raw::{durable_write, AlignedBuffer};
use paxring_wal::segfile;
use paxring_wal::{
    inspect_dir, Backend, Ballot, GroupId, Instance, RecordKind, RecordRef, SyncMode, Wal,
    WalError, WalOptions,
};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How writes are made durable (both the WAL and the baseline use it).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum SyncArg {
    /// RWF_DSYNC on the write.
    Dsync,
    /// The write followed by fdatasync.
    Fdatasync,
}

/// The WAL backend.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    /// io_uring, else blocking.
    Auto,
    /// io_uring only.
    Uring,
    /// Blocking pwrite + fdatasync / RWF_DSYNC.
    Blocking,
}

/// Arguments of `paxring-bench wal`.
#[derive(Args, Debug)]
pub struct WalBenchArgs {
    /// Where the data goes (default: a fresh directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the WAL at the end (it passes `paxring wal verify DIR`).
    #[arg(long)]
    keep: bool,
    /// Seconds for each phase (WAL, then baseline).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Bytes of one round's write (the WAL buffer size); a multiple of 4096.
    #[arg(long, default_value_t = 256 << 10)]
    round_bytes: usize,
    /// Payload bytes of each record.
    #[arg(long, default_value_t = 256)]
    record_bytes: usize,
    /// Groups the records are spread over (round robin).
    #[arg(long, default_value_t = 64)]
    groups: u32,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Durability of each write (default: the WAL's default).
    #[arg(long, value_enum)]
    sync: Option<SyncArg>,
    /// I/O backend of the WAL.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Instead of the WAL against the baseline: the WAL with RWF_DSYNC against the WAL with
    /// write + fdatasync, alternating in slices (the numbers that pick the default sync mode).
    #[arg(long)]
    compare_sync: bool,
    /// Segment file size.
    #[arg(long, default_value_t = 64 << 20)]
    segment_bytes: u64,
    /// Batch writes the WAL keeps in flight at once (`WalOptions::writes_in_flight`; the
    /// baseline always has one).
    #[arg(long, default_value_t = paxring_wal::WRITES_IN_FLIGHT_DEFAULT)]
    writes_in_flight: usize,
}

#[derive(Serialize, Default)]
struct Latency {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

fn latency(histogram: &Histogram<u64>) -> Latency {
    Latency {
        p50: histogram.value_at_quantile(0.5),
        p99: histogram.value_at_quantile(0.99),
        p999: histogram.value_at_quantile(0.999),
        max: histogram.max(),
    }
}

#[derive(Serialize)]
struct Report {
    round_bytes: usize,
    record_bytes: usize,
    groups: u32,
    seconds: f64,
    sync_mode: SyncMode,
    backend: paxring_wal::BackendInUse,
    writes_in_flight: usize,
    rounds: u64,
    durable_writes: u64,
    durable_writes_per_round: f64,
    records: u64,
    records_per_round: f64,
    groups_per_round: f64,
    records_per_s: f64,
    bytes_written: u64,
    payload_bytes: u64,
    wal_mb_per_s: f64,
    wal_payload_mb_per_s: f64,
    baseline_writes: u64,
    baseline_mb_per_s: f64,
    ratio: f64,
    payload_ratio: f64,
    latency_us: Latency,
    baseline_latency_us: Latency,
    segments_created: u64,
    segments_recycled: u64,
    segments_purged: u64,
    segment_prepare_waits: u64,
    append_ns_per_record: f64,
    verified_clean: bool,
    dir: Option<PathBuf>,
    /// This process's memory: at the start, after the slices, at the end.
    rss: RssReport,
}

/// Runs `paxring-bench wal`.
pub fn run(args: WalBenchArgs) -> ExitCode {
    match bench(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("paxring-bench wal: {message}");
            ExitCode::from(1)
        }
    }
}

fn bench(args: WalBenchArgs) -> Result<(), String> {
    if args.round_bytes % BLOCK_BYTES != 0 || args.round_bytes < 2 * BLOCK_BYTES {
        return Err(format!(
            "--round-bytes {} must be a multiple of 4096 and at least 8192",
            args.round_bytes
        ));
    }
    if args.groups == 0 || !args.seconds.is_finite() || args.seconds <= 0.0 {
        return Err("--groups and --seconds must be positive".into());
    }
    let mut rss_log = RssLog::start();
    let (dir, temp) = match &args.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("paxring-bench-wal-")
                .tempdir()
                .map_err(|e| format!("cannot create a temp dir: {e}"))?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    if args.compare_sync {
        let result = compare_sync(&dir, &args, rss_log);
        if temp.is_none() && !args.keep {
            for mode in ["dsync", "fdatasync"] {
                let _ = std::fs::remove_dir_all(dir.join(mode));
            }
        }
        if let (true, Some(temp)) = (args.keep, temp) {
            eprintln!("kept the WALs in {}", temp.keep().display());
        }
        return result;
    }
    let mut opts = WalOptions::new(&dir, 0);
    opts.buffer_bytes = args.round_bytes;
    opts.segment_bytes = args.segment_bytes;
    if let Some(sync) = args.sync {
        opts.sync_mode = match sync {
            SyncArg::Dsync => SyncMode::Dsync,
            SyncArg::Fdatasync => SyncMode::Fdatasync,
        };
    }
    opts.backend = match args.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Uring => Backend::Uring,
        BackendArg::Blocking => Backend::Blocking,
    };
    opts.writes_in_flight = args.writes_in_flight;
    // The two sides alternate in slices of at most SLICE_SECONDS, so both see the same (shared,
    // noisy) disk: the ratio compares like with like even when the machine's speed drifts.
    let slices = (args.seconds / SLICE_SECONDS).ceil().max(1.0) as u32;
    let slice = Duration::from_secs_f64(args.seconds / f64::from(slices));
    let mut wal_side = WalRunner::open(&opts, &args).map_err(|e| e.to_string())?;
    let mut baseline = BaselineRunner::open(&dir, &args, opts.sync_mode)?;
    for _ in 0..slices {
        wal_side.slice(slice).map_err(|e| e.to_string())?;
        baseline.slice(slice)?;
    }
    rss_log.after_load();
    let last_lsn = wal_side.wal.durable_lsn();
    let append_ns_per_record =
        wal_side.fill_time.as_nanos() as f64 / wal_side.appended.max(1) as f64;
    let wal_phase = WalPhase {
        stats: wal_side.wal.stats(),
        latency: wal_side.wal.write_latency_histogram().clone(),
        elapsed: wal_side.elapsed,
        last_lsn,
    };
    drop(wal_side);
    let baseline = Baseline {
        writes: baseline.writes,
        bytes: baseline.writes * args.round_bytes as u64,
        elapsed: baseline.elapsed,
        latency: baseline.latency,
    };
    let (recovery, _) = inspect_dir(&dir, 0).map_err(|e| e.to_string())?;
    let verified_clean = recovery.is_clean() && recovery.last_lsn() == wal_phase.last_lsn;

    let stats = &wal_phase.stats;
    let mb = |bytes: u64, elapsed: Duration| bytes as f64 / 1e6 / elapsed.as_secs_f64();
    let wal_mb_per_s = mb(stats.bytes_written, wal_phase.elapsed);
    let baseline_mb_per_s = mb(baseline.bytes, baseline.elapsed);
    let report = Report {
        round_bytes: args.round_bytes,
        record_bytes: args.record_bytes,
        groups: args.groups,
        seconds: args.seconds,
        sync_mode: stats.sync_mode,
        backend: stats.backend,
        writes_in_flight: args.writes_in_flight,
        rounds: stats.writes,
        durable_writes: stats.durable_writes,
        durable_writes_per_round: stats.durable_writes as f64 / stats.writes.max(1) as f64,
        records: stats.records,
        records_per_round: stats.records_per_write.mean,
        groups_per_round: stats.groups_per_write.mean,
        records_per_s: stats.records as f64 / wal_phase.elapsed.as_secs_f64(),
        bytes_written: stats.bytes_written,
        payload_bytes: stats.payload_bytes,
        wal_mb_per_s,
        wal_payload_mb_per_s: mb(stats.payload_bytes, wal_phase.elapsed),
        baseline_writes: baseline.writes,
        baseline_mb_per_s,
        ratio: wal_mb_per_s / baseline_mb_per_s,
        payload_ratio: mb(stats.payload_bytes, wal_phase.elapsed) / baseline_mb_per_s,
        latency_us: latency(&wal_phase.latency),
        baseline_latency_us: latency(&baseline.latency),
        segments_created: stats.segments_created,
        segments_recycled: stats.segments_recycled,
        segments_purged: stats.segments_purged,
        segment_prepare_waits: stats.segment_prepare_waits,
        append_ns_per_record,
        verified_clean,
        dir: args.keep.then(|| dir.clone()),
        rss: rss_log.finish(),
    };
    print_table(&report);
    if let Some(path) = &args.json {
        crate::report::write_json(path, &report)?;
    }
    let _ = std::fs::remove_file(dir.join(BASELINE_FILE));
    match (args.keep, temp) {
        (true, Some(temp)) => {
            let kept = temp.keep();
            eprintln!("kept the WAL in {}", kept.display());
        }
        (true, None) => eprintln!("kept the WAL in {}", dir.display()),
        (false, Some(temp)) => drop(temp),
        (false, None) => remove_wal_files(&dir)?,
    }
    if !verified_clean {
        return Err("the WAL left by the run did not verify clean".into());
    }
    Ok(())
}

const BASELINE_FILE: &str = "baseline.dat";
/// Longest slice of one side before the other side runs.
const SLICE_SECONDS: f64 = 0.2;

fn remove_wal_files(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".wal") || name.ends_with(".preparing") || name == "LOCK" {
            std::fs::remove_file(entry.path())
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The WAL side: rounds of `round_bytes`, each filled while the previous one is in flight.
struct WalRunner {
    wal: Wal,
    payload: Vec<u8>,
    next_instance: Vec<u64>,
    group: u32,
    groups: u32,
    keep_instances: u64,
    rounds_since_purge: u32,
    elapsed: Duration,
    fill_time: Duration,
    appended: u64,
}

impl WalRunner {
    fn open(opts: &WalOptions, args: &WalBenchArgs) -> Result<WalRunner, WalError> {
        let (wal, recovery) = Wal::open(opts.clone())?;
        // Continue each group's instances after whatever the directory already held.
        let next_instance = (0..args.groups)
            .map(|g| {
                recovery
                    .index
                    .get(&GroupId(g))
                    .and_then(|m| m.keys().next_back())
                    .map_or(0, |i| i.0 + 1)
            })
            .collect();
        // Keep about the last 64 rounds of every group, like an engine that checkpoints often.
        let per_round = (args.round_bytes / (args.record_bytes + 56)).max(1) as u64;
        Ok(WalRunner {
            wal,
            payload: (0..args.record_bytes).map(|i| i as u8).collect(),
            next_instance,
            group: 0,
            groups: args.groups,
            keep_instances: 64 * per_round / u64::from(args.groups) + 1,
            rounds_since_purge: 0,
            elapsed: Duration::ZERO,
            fill_time: Duration::ZERO,
            appended: 0,
        })
    }

    /// Runs rounds for `length`, then drains (everything appended is durable at return).
    fn slice(&mut self, length: Duration) -> Result<(), WalError> {
        let start = Instant::now();
        let deadline = start + length;
        while Instant::now() < deadline {
            let fill_start = Instant::now();
            self.fill()?;
            self.fill_time += fill_start.elapsed();
            self.wal.submit()?;
            if self.wal.pending_records() > 0 {
                // As many writes are in flight as the log allows and the next round is full:
                // sleep until one completes.
                while self.wal.write_in_flight() && !self.wal.can_issue() {
                    self.wal.wait(&[], None)?;
                }
                self.wal.submit()?;
            }
            self.rounds_since_purge += 1;
            if self.rounds_since_purge >= 64 {
                self.rounds_since_purge = 0;
                for (g, next) in self.next_instance.iter().enumerate() {
                    let floor = Instance(next.saturating_sub(self.keep_instances));
                    self.wal.set_purge_floor(GroupId(g as u32), floor);
                }
                self.wal.purge()?;
            }
        }
        while self.wal.durable_lsn() < self.wal.appended_lsn() {
            self.wal.submit()?;
            if self.wal.write_in_flight() {
                self.wal.wait(&[], None)?;
            }
        }
        self.elapsed += start.elapsed();
        Ok(())
    }

    /// Appends records (groups round robin) until the accumulating batch is full.
    fn fill(&mut self) -> Result<(), WalError> {
        loop {
            let g = self.group as usize;
            let record = RecordRef {
                kind: RecordKind::Accept,
                group: GroupId(self.group),
                instance: Instance(self.next_instance[g]),
                promised: Ballot { number: 1, node: 1 },
                accepted: Ballot { number: 1, node: 1 },
                payload: &self.payload,
            };
            match self.wal.append(record) {
                Ok(_) => {
                    self.appended += 1;
                    self.next_instance[g] += 1;
                    self.group = (self.group + 1) % self.groups;
                }
                Err(WalError::BufferFull { .. }) => return Ok(()),
                Err(error) => return Err(error),
            }
        }
    }
}

/// The baseline: a plain loop of O_DIRECT writes of `round_bytes` to a pre-written file on the
/// same file system, each made durable the same way as the WAL's (RWF_DSYNC, or write +
/// fdatasync).
struct BaselineRunner {
    path: PathBuf,
    file: std::fs::File,
    buffer: AlignedBuffer,
    slots: u64,
    sync_mode: SyncMode,
    writes: u64,
    latency: Histogram<u64>,
    elapsed: Duration,
}

impl BaselineRunner {
    fn open(
        dir: &Path,
        args: &WalBenchArgs,
        sync_mode: SyncMode,
    ) -> Result<BaselineRunner, String> {
        let path = dir.join(BASELINE_FILE);
        let preparing = dir.join("baseline.preparing");
        let file_bytes = args.segment_bytes.max(args.round_bytes as u64 * 4);
        segfile::create_segment(dir, &preparing, &path, file_bytes, None, None)
            .map_err(|e| e.to_string())?;
        let file = segfile::open_direct(&path).map_err(|e| e.to_string())?;
        let mut buffer = AlignedBuffer::new(args.round_bytes).map_err(|e| e.to_string())?;
        for (i, byte) in buffer.iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        Ok(BaselineRunner {
            path,
            file,
            buffer,
            slots: file_bytes / args.round_bytes as u64,
            sync_mode,
            writes: 0,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"),
            elapsed: Duration::ZERO,
        })
    }

    fn slice(&mut self, length: Duration) -> Result<(), String> {
        let start = Instant::now();
        let deadline = start + length;
        while Instant::now() < deadline {
            let offset = (self.writes % self.slots) * self.buffer.len() as u64;
            let issued = Instant::now();
            durable_write(&self.file, &self.buffer, offset, self.sync_mode).map_err(|e| {
                format!("baseline write to {} at {offset}: {e}", self.path.display())
            })?;
            self.latency
                .saturating_record(issued.elapsed().as_micros().max(1) as u64);
            self.writes += 1;
        }
        self.elapsed += start.elapsed();
        Ok(())
    }
}

#[derive(Serialize)]
struct SyncSide {
    sync_mode: SyncMode,
    rounds: u64,
    durable_writes_per_round: f64,
    wal_mb_per_s: f64,
    latency_us: Latency,
}

#[derive(Serialize)]
struct SyncReport {
    round_bytes: usize,
    record_bytes: usize,
    groups: u32,
    seconds: f64,
    sides: Vec<SyncSide>,
    dsync_over_fdatasync: f64,
    /// This process's memory: at the start, after the slices, at the end.
    rss: RssReport,
}

/// The WAL with RWF_DSYNC against the WAL with write + fdatasync, same run, alternating.
fn compare_sync(dir: &Path, args: &WalBenchArgs, mut rss_log: RssLog) -> Result<(), String> {
    let modes = [SyncMode::Dsync, SyncMode::Fdatasync];
    let mut runners = Vec::new();
    for mode in modes {
        let name = if mode == SyncMode::Dsync {
            "dsync"
        } else {
            "fdatasync"
        };
        let mut opts = WalOptions::new(dir.join(name), 0);
        opts.buffer_bytes = args.round_bytes;
        opts.segment_bytes = args.segment_bytes;
        opts.sync_mode = mode;
        runners.push(WalRunner::open(&opts, args).map_err(|e| e.to_string())?);
    }
    let slices = (args.seconds / SLICE_SECONDS).ceil().max(1.0) as u32;
    let slice = Duration::from_secs_f64(args.seconds / f64::from(slices));
    for _ in 0..slices {
        for runner in runners.iter_mut() {
            runner.slice(slice).map_err(|e| e.to_string())?;
        }
    }
    rss_log.after_load();
    let sides: Vec<SyncSide> = runners
        .iter()
        .map(|runner| {
            let stats = runner.wal.stats();
            SyncSide {
                sync_mode: stats.sync_mode,
                rounds: stats.writes,
                durable_writes_per_round: stats.durable_writes as f64 / stats.writes.max(1) as f64,
                wal_mb_per_s: stats.bytes_written as f64 / 1e6 / runner.elapsed.as_secs_f64(),
                latency_us: latency(runner.wal.write_latency_histogram()),
            }
        })
        .collect();
    drop(runners);
    let report = SyncReport {
        round_bytes: args.round_bytes,
        record_bytes: args.record_bytes,
        groups: args.groups,
        seconds: args.seconds,
        dsync_over_fdatasync: sides[0].wal_mb_per_s / sides[1].wal_mb_per_s,
        sides,
        rss: rss_log.finish(),
    };
    println!(
        "paxring-bench wal --compare-sync: {} s each, round {} B, alternating {} slices",
        args.seconds, args.round_bytes, slices
    );
    println!(
        "{:<10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "sync", "rounds", "MB/s", "p50 us", "p99 us", "p999 us", "dw/round"
    );
    for side in &report.sides {
        println!(
            "{:<10} {:>8} {:>10.1} {:>10} {:>10} {:>10} {:>8.2}",
            format!("{:?}", side.sync_mode),
            side.rounds,
            side.wal_mb_per_s,
            side.latency_us.p50,
            side.latency_us.p99,
            side.latency_us.p999,
            side.durable_writes_per_round
        );
    }
    println!(
        "dsync / fdatasync throughput: {:.3}",
        report.dsync_over_fdatasync
    );
    println!("{}", rss::summary_line(&report.rss));
    if let Some(path) = &args.json {
        crate::report::write_json(path, &report)?;
    }
    Ok(())
}

struct WalPhase {
    stats: paxring_wal::WalStats,
    latency: Histogram<u64>,
    elapsed: Duration,
    last_lsn: paxring_wal::Lsn,
}

struct Baseline {
    writes: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

fn print_table(r: &Report) {
    println!(
        "paxring-bench wal: {} s per phase, round {} B, record payload {} B, {} groups, {:?}, {:?}, {} write(s) in flight",
        r.seconds, r.round_bytes, r.record_bytes, r.groups, r.sync_mode, r.backend, r.writes_in_flight
    );
    println!("{:<28} {:>14} {:>14}", "", "wal", "raw baseline");
    println!(
        "{:<28} {:>14} {:>14}",
        "writes (rounds)", r.rounds, r.baseline_writes
    );
    println!(
        "{:<28} {:>14.1} {:>14.1}",
        "MB/s written", r.wal_mb_per_s, r.baseline_mb_per_s
    );
    println!(
        "{:<28} {:>14.1} {:>14}",
        "payload MB/s", r.wal_payload_mb_per_s, "-"
    );
    println!(
        "{:<28} {:>14} {:>14}",
        "latency p50 us", r.latency_us.p50, r.baseline_latency_us.p50
    );
    println!(
        "{:<28} {:>14} {:>14}",
        "latency p99 us", r.latency_us.p99, r.baseline_latency_us.p99
    );
    println!(
        "{:<28} {:>14} {:>14}",
        "latency p999 us", r.latency_us.p999, r.baseline_latency_us.p999
    );
    println!("{:<28} {:>14.3}", "ratio (wal/baseline)", r.ratio);
    println!("{:<28} {:>14.3}", "payload ratio", r.payload_ratio);
    println!(
        "{:<28} {:>14.3}",
        "durable writes per round", r.durable_writes_per_round
    );
    println!("{:<28} {:>14.1}", "records per round", r.records_per_round);
    println!("{:<28} {:>14.1}", "groups per round", r.groups_per_round);
    println!("{:<28} {:>14.0}", "records/s", r.records_per_s);
    println!(
        "{:<28} {:>14}",
        "segments new/recycled/purged",
        format!(
            "{}/{}/{}",
            r.segments_created, r.segments_recycled, r.segments_purged
        )
    );
    println!(
        "{:<28} {:>14}",
        "segment prepare waits", r.segment_prepare_waits
    );
    println!(
        "{:<28} {:>14.0}",
        "append ns per record", r.append_ns_per_record
    );
    println!("{:<28} {:>14}", "WAL verified clean", r.verified_clean);
    println!("{}", rss::summary_line(&r.rss));
}
