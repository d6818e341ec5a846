//! `paxring-bench` / `paxring-bench cluster`: a 3-replica cluster of separate processes on
//! 127.0.0.1, data on the real disk, driven through the embedding API inside each node process,
//! measured against the machine's ceilings taken in the same run. With `--followers N`, N more
//! processes are non-voting followers: they run no clients, lead nothing, and are measured
//! apart (applied commands per second against the voters' commits per second, lag, CPU).
//!
//! Owns: the matrix, the coordinator (starting, commanding and stopping node processes) and the
//! per-point arithmetic. Never: kills a process it did not start, leaves a node process behind
//! (each is killed and reaped when its cluster is dropped), or reports a figure it did not
//! measure in this run.

pub mod node;
pub mod proto;

use crate::ceilings;
use crate::report::{self, FollowerOut, LatencyUs, NodeFinal, PointOut, ReplicaOut, RunOut};
use crate::rss::{Memory, RssLog};
use base64::Engine as _;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use paxring_engine::runtime::{NodeConfig, SyncModeConfig};
use proto::{Command, Counters, Event, KvSpec, NodeSpec, RunResult, RunSpec};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitCode, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Replicas in the benchmark's cluster (the voters; followers come on top).
pub const REPLICAS: u32 = 3;
/// Most followers `--followers` accepts (node ids 4 and 5).
pub const FOLLOWERS_MAX: u32 = 2;
/// Longest wait, after a point's clients drained, for each follower to apply what the voters
/// applied.
const FOLLOWER_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for every group to have a leader after a cluster starts.
pub(crate) const LEADERS_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of progress events and of the throughput-over-time series.
const PROGRESS_MS: u64 = 250;

/// Which matrix to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// A handful of points, about a minute in total.
    Quick,
    /// groups {1, 20, 100} x values {100 B, 4 KiB, 100 KB} x pipeline {1, default} x clients.
    Full,
}

/// A pipeline depth on the command line: a number or `default` (the runtime's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipeline {
    /// The runtime's default depth.
    Default,
    /// This depth.
    Depth(u32),
}

fn parse_sync_mode(text: &str) -> Result<SyncModeConfig, String> {
    match text {
        "dsync" => Ok(SyncModeConfig::Dsync),
        "fdatasync" => Ok(SyncModeConfig::Fdatasync),
        _ => Err(format!("`{text}` is not a sync mode (dsync or fdatasync)")),
    }
}

fn parse_pipeline(text: &str) -> Result<Pipeline, String> {
    if text == "default" {
        return Ok(Pipeline::Default);
    }
    match text.parse::<u32>() {
        Ok(d) if d > 0 => Ok(Pipeline::Depth(d)),
        _ => Err(format!(
            "`{text}` is not a pipeline depth (a positive number or `default`)"
        )),
    }
}

/// Arguments of the cluster benchmark.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Which matrix to run (flags below replace a dimension of it).
    #[arg(long, value_enum, default_value = "quick")]
    pub profile: Profile,
    /// Groups per point (comma-separated), e.g. `1,20,100`.
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<u32>,
    /// Value sizes in bytes (comma-separated), e.g. `100,4096,100000`.
    #[arg(long = "value-bytes", value_delimiter = ',')]
    pub value_bytes: Vec<usize>,
    /// Pipeline depths (comma-separated numbers or `default`).
    #[arg(long, value_delimiter = ',', value_parser = parse_pipeline)]
    pub pipeline: Vec<Pipeline>,
    /// Closed-loop clients in the whole cluster (comma-separated); each proposes on the node
    /// that leads its group (0 with `--rate`: open loop only).
    #[arg(long, value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Measured seconds per point.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Warm-up seconds per point (load runs, nothing is counted).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Add an open-loop load of N proposals/s (in the whole cluster), latency measured from
    /// each proposal's intended start (coordinated-omission correction).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Where the data lives (a fresh directory is made inside; default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the data directory at the end.
    #[arg(long)]
    pub keep: bool,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a report with a latency CDF and throughput over time (`.html` or `.svg`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Core threads per node.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Seconds per disk ceiling cell.
    #[arg(long, default_value_t = 0.5)]
    pub ceiling_seconds: f64,
    /// Use the WAL's blocking backend (pwritev2/fdatasync visible to strace) instead of auto.
    #[arg(long)]
    pub blocking_wal: bool,
    /// How a WAL write becomes durable: `dsync` (one RWF_DSYNC write) or `fdatasync` (a write,
    /// then fdatasync). Default: the runtime's default.
    #[arg(long, value_parser = parse_sync_mode)]
    pub sync_mode: Option<SyncModeConfig>,
    /// WAL writes each core keeps in flight (the runtime's `wal_writes_in_flight`; default:
    /// its default).
    #[arg(long)]
    pub wal_writes_in_flight: Option<usize>,
    /// Non-voting followers next to the 3 voters (at most 2; node ids 4, 5). They run no
    /// clients and lead nothing; each point reports their applied commands per second against
    /// the voters' commits per second, their lag and their CPU apart from the voters'.
    #[arg(long, default_value_t = 0)]
    pub followers: u32,
    /// Skip the ceilings (ratios are then absent). For tests.
    #[arg(long, hide = true)]
    pub skip_ceilings: bool,
    /// Run each node under `strace -f -c -o DIR/node-ID.strace` counting the durable-write
    /// system calls. For the counter-exactness test.
    #[arg(long, hide = true)]
    pub strace_dir: Option<PathBuf>,
}

/// One point of the matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Paxos groups.
    pub groups: u32,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Pipeline depth.
    pub pipeline: Pipeline,
    /// Closed-loop clients in the cluster.
    pub clients: usize,
}

fn default_clients(groups: u32) -> usize {
    (groups as usize * 8).max(8)
}

/// The points to run for `args`.
pub fn matrix(args: &ClusterArgs) -> Vec<Point> {
    let any_flag = !args.groups.is_empty()
        || !args.value_bytes.is_empty()
        || !args.pipeline.is_empty()
        || !args.clients.is_empty();
    let p = |groups, value_bytes, pipeline, clients| Point {
        groups,
        value_bytes,
        pipeline,
        clients,
    };
    if !any_flag {
        return match args.profile {
            Profile::Quick => vec![
                p(1, 100, Pipeline::Default, 1),
                p(1, 100, Pipeline::Depth(1), 64),
                p(1, 100, Pipeline::Default, 64),
                p(20, 4096, Pipeline::Default, 160),
                p(100, 100, Pipeline::Default, 1600),
                p(100, 100, Pipeline::Default, 3200),
                p(100, 100_000, Pipeline::Default, 100),
            ],
            Profile::Full => {
                let mut points = Vec::new();
                for groups in [1, 20, 100] {
                    for pipeline in [Pipeline::Depth(1), Pipeline::Default] {
                        for value_bytes in [100, 4096, 100_000] {
                            for clients in [1, groups as usize * 4, groups as usize * 16] {
                                let point = p(groups, value_bytes, pipeline, clients);
                                if !points.contains(&point) {
                                    points.push(point);
                                }
                            }
                        }
                    }
                }
                points
            }
        };
    }
    let full = args.profile == Profile::Full;
    let groups = if !args.groups.is_empty() {
        args.groups.clone()
    } else if full {
        vec![1, 20, 100]
    } else {
        vec![100]
    };
    let values = if !args.value_bytes.is_empty() {
        args.value_bytes.clone()
    } else if full {
        vec![100, 4096, 100_000]
    } else {
        vec![100]
    };
    let pipelines = if !args.pipeline.is_empty() {
        args.pipeline.clone()
    } else if full {
        vec![Pipeline::Depth(1), Pipeline::Default]
    } else {
        vec![Pipeline::Default]
    };
    let mut points = Vec::new();
    for &g in &groups {
        for &pipeline in &pipelines {
            for &v in &values {
                let clients = if args.clients.is_empty() {
                    vec![default_clients(g)]
                } else {
                    args.clients.clone()
                };
                for c in clients {
                    // 0 clients is allowed with --rate (open loop only).
                    let c = if args.rate.is_some() { c } else { c.max(1) };
                    points.push(p(g, v, pipeline, c));
                }
            }
        }
    }
    points
}

fn default_pipeline_depth() -> u32 {
    NodeConfig::builder(1, ([127, 0, 0, 1], 1).into(), "unused")
        .build()
        .map(|c| c.pipeline_depth)
        .unwrap_or(0)
}

/// Runs the cluster benchmark.
pub fn run(args: ClusterArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("paxring-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

fn validate(args: &ClusterArgs) -> Result<(), String> {
    if args.groups.contains(&0) {
        return Err("--groups: 0 groups cannot run (use 1 or more)".into());
    }
    if args.value_bytes.contains(&0) {
        return Err("--value-bytes: values must have at least 1 byte".into());
    }
    if let Some(s) = args.seconds {
        if !(s > 0.0 && s <= 3600.0) {
            return Err(format!("--seconds {s}: use a value in (0, 3600]"));
        }
    }
    if let Some(w) = args.warmup {
        if !(0.0..=600.0).contains(&w) {
            return Err(format!("--warmup {w}: use a value in [0, 600]"));
        }
    }
    if let Some(r) = args.rate {
        if !(r > 0.0 && r <= 10_000_000.0) {
            return Err(format!(
                "--rate {r}: use a rate in (0, 10000000] per second"
            ));
        }
    }
    if args.followers > FOLLOWERS_MAX {
        return Err(format!(
            "--followers {}: use 0..={FOLLOWERS_MAX}",
            args.followers
        ));
    }
    if args.cores == 0 || args.cores > 64 {
        return Err(format!("--cores {}: use 1..=64", args.cores));
    }
    if !(args.ceiling_seconds > 0.0 && args.ceiling_seconds <= 60.0) {
        return Err(format!(
            "--ceiling-seconds {}: use a value in (0, 60]",
            args.ceiling_seconds
        ));
    }
    if let Some(report) = &args.report {
        let ext = report.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "html" && ext != "svg" {
            return Err(format!(
                "--report {}: the file name must end in .html or .svg",
                report.display()
            ));
        }
    }
    Ok(())
}

fn run_inner(args: &ClusterArgs) -> Result<(), String> {
    validate(args)?;
    let mut rss_log = RssLog::start();
    let points = matrix(args);
    let profile = match args.profile {
        Profile::Quick => "quick",
        Profile::Full => "full",
    };
    let seconds = args.seconds.unwrap_or(match args.profile {
        Profile::Quick => 4.0,
        Profile::Full => 5.0,
    });
    let warmup = args.warmup.unwrap_or(0.5);
    let default_depth = default_pipeline_depth();

    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)
        .map_err(|e| format!("cannot create --dir {}: {e}", parent.display()))?;
    let data = tempfile::Builder::new()
        .prefix("paxring-bench-")
        .tempdir_in(&parent)
        .map_err(|e| format!("cannot make a data dir in {}: {e}", parent.display()))?;
    let data_dir = data.path().to_path_buf();
    eprintln!(
        "paxring-bench: {} points ({profile} profile), {seconds} s each after {warmup} s warm-up; \
         3 replicas{} on 127.0.0.1; data in {}",
        points.len(),
        match args.followers {
            0 => String::new(),
            n => format!(" and {n} follower{}", if n == 1 { "" } else { "s" }),
        },
        data_dir.display()
    );

    let ceilings = if args.skip_ceilings {
        None
    } else {
        eprintln!("measuring ceilings (disk on the data's file system, loopback TCP)...");
        let c = ceilings::measure(&data_dir, args.ceiling_seconds)?;
        print!("{}", report::ceilings_text(&c));
        Some(c)
    };

    let mut outs = Vec::new();
    let mut finals = Vec::new();
    let mut index = 0;
    let mut cluster_no = 0;
    while index < points.len() {
        let first = points[index];
        // Every point gets a fresh cluster and fresh WALs: the benchmark's state machine keeps
        // no checkpoint, so a node keeps every chosen value, and points must not inherit that.
        let batch = vec![first];
        let depth = match first.pipeline {
            Pipeline::Default => None,
            Pipeline::Depth(d) => Some(d),
        };
        cluster_no += 1;
        let dir = data_dir.join(format!("cluster-{cluster_no}"));
        let mut cluster = Cluster::start(&dir, first.groups, depth, &NodeOptions::of(args))?;
        let leaders = cluster.wait_leaders(first.groups)?;
        for point in &batch {
            index += 1;
            let label = format!(
                "[{index}/{}] groups={} value={} pipeline={} clients={}",
                points.len(),
                point.groups,
                report::bytes_text(point.value_bytes),
                depth.unwrap_or(default_depth),
                point.clients
            );
            let results = cluster.run_point(point, &leaders, args.rate, warmup, seconds, &label)?;
            let drained = cluster.drain_followers()?;
            let out = summarize(
                point,
                depth.unwrap_or(default_depth),
                args.rate,
                &results,
                &drained,
            )?;
            let clear = if std::io::stderr().is_terminal() {
                "\r"
            } else {
                ""
            };
            eprintln!("{clear}{}", report::point_line(&label, &out));
            outs.push(out);
        }
        finals.extend(cluster.stop()?);
        rss_log.sample(&format!("cluster {cluster_no} stopped"));
        if !args.keep {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
        }
    }

    rss_log.after_load();
    // The ceilings again, after the points: other programs' I/O only ever makes a ceiling look
    // worse, so the ratios use the better figure of the two measurements.
    let (ceilings, ceilings_measured) = match ceilings {
        None => (None, Vec::new()),
        Some(before) => {
            eprintln!("measuring the ceilings again...");
            let after = ceilings::measure(&data_dir, args.ceiling_seconds)?;
            println!("(again, after the points)");
            print!("{}", report::ceilings_text(&after));
            let best = before.best_of(&after);
            println!(
                "ratios use the better of the two: fsync p50 {:.0} µs, write+fdatasync p50 {:.0} µs, \
                 RTT p50 {:.0} µs, disk {:.1} MB/s (3 writers, 1 MiB)",
                best.disk_fsync_p50_us,
                best.disk_durable_write_p50_us,
                best.rtt_us_p50,
                best.disk_mb_per_s_3w
            );
            (Some(best), vec![before, after])
        }
    };
    if let Some(c) = &ceilings {
        for out in &mut outs {
            report::apply_ceilings(out, c);
        }
    }
    let run = RunOut {
        ceilings,
        ceilings_measured,
        points: outs,
        nodes_final: finals,
        profile: profile.to_string(),
        data_dir: args.keep.then(|| data_dir.display().to_string()),
        rss: rss_log.finish(),
    };
    println!();
    print!("{}", report::table(&run));
    print!("{}", report::memory_text(&run));
    if let Some(path) = &args.json {
        crate::report::write_json(path, &run)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.report {
        report::write_report(&run, path)?;
        eprintln!("wrote {}", path.display());
    }
    if args.keep {
        let kept = data.keep();
        eprintln!("kept the data in {}", kept.display());
    }
    Ok(())
}

/// A replica's outcome for one point.
#[derive(Clone)]
struct NodeRun {
    id: u32,
    /// A follower (measured apart from the voters).
    follower: bool,
    result: RunResult,
    timeline: Vec<(f64, u64)>,
    /// (seconds into the window, VmRSS bytes, RssAnon bytes) at each progress event.
    memory: Vec<(f64, u64, u64)>,
}

/// A follower's state once a point's clients drained (`Cluster::drain_followers`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Drained {
    id: u32,
    lag_instances: u64,
    lag_instances_max: u64,
    /// The most commands any voter applied minus the follower's (cumulative).
    applied_behind: u64,
    waited_s: f64,
}

/// A follower's applied commands per second over its window, and that rate over the voters'
/// commits per second (NaN without a window or without commits: no figure rather than 0).
fn keeps_up(applied: u64, seconds: f64, commits_per_s: f64) -> (f64, f64) {
    let applied_per_s = ratio(applied as f64, seconds);
    (applied_per_s, ratio(applied_per_s, commits_per_s))
}

/// The follower's figures of one point: its own window's counters and CPU against the voters'
/// commits, and its state after the drain.
fn follower_out(
    run: &NodeRun,
    drained: Option<&Drained>,
    commits_per_s: f64,
    commits: u64,
) -> FollowerOut {
    let r = &run.result;
    let (applied_per_s, applied_vs_commits) =
        keeps_up(r.counters.applied_commands, r.elapsed_s, commits_per_s);
    let d = drained.copied().unwrap_or_default();
    FollowerOut {
        id: run.id,
        seconds: r.elapsed_s,
        applied_commands: r.counters.applied_commands,
        applied_per_s,
        applied_vs_commits,
        lag_instances_end: r.counters.lag_instances,
        lag_instances_max_end: r.counters.lag_instances_max,
        lag_instances_drained: d.lag_instances,
        lag_instances_max_drained: d.lag_instances_max,
        applied_behind_drained: d.applied_behind,
        drain_wait_s: d.waited_s,
        cpu_s: r.cpu_s,
        cpu_us_per_commit: ratio(r.cpu_s * 1e6, commits as f64),
        durable_writes: r.counters.durable_writes,
        bytes_written: r.counters.bytes_written,
        rss_bytes: r.memory.map_or(0, |m| m.rss_bytes),
        rss_anon_bytes: r.memory.and_then(|m| m.anon_bytes).unwrap_or(0),
    }
}

fn summarize(
    point: &Point,
    depth: u32,
    rate: Option<f64>,
    all_runs: &[NodeRun],
    drained: &[Drained],
) -> Result<PointOut, String> {
    // Every figure but `followers` is the voters': followers run no clients, and their WAL
    // writes and CPU would change what dw/cmt, wamp and cpuµs mean.
    let runs: Vec<&NodeRun> = all_runs.iter().filter(|r| !r.follower).collect();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    let mut counters = Counters::default();
    let mut commits = 0u64;
    let mut cpu_s = 0.0;
    let mut elapsed_s: f64 = 0.0;
    let mut refusals = proto::Refusals::default();
    let mut skipped = 0;
    let mut replicas = Vec::new();
    for run in &runs {
        let r = &run.result;
        if !r.histogram_b64.is_empty() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&r.histogram_b64)
                .map_err(|e| format!("node {}: histogram is not base64: {e}", run.id))?;
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut std::io::Cursor::new(bytes))
                .map_err(|e| format!("node {}: histogram does not decode: {e:?}", run.id))?;
            histogram
                .add(&h)
                .map_err(|e| format!("node {}: histogram: {e:?}", run.id))?;
        }
        counters.add(&r.counters);
        commits += r.commits;
        cpu_s += r.cpu_s;
        elapsed_s = elapsed_s.max(r.elapsed_s);
        refusals.not_leader += r.refusals.not_leader;
        refusals.overloaded += r.refusals.overloaded;
        refusals.unknown += r.refusals.unknown;
        refusals.other += r.refusals.other;
        skipped += r.open_loop_skipped;
        let c = &r.counters;
        replicas.push(ReplicaOut {
            id: run.id,
            commits: r.commits,
            durable_writes: c.durable_writes,
            write_rounds: c.write_rounds,
            durable_writes_per_round: ratio(c.durable_writes as f64, c.write_rounds as f64),
            records_per_round: ratio(c.records as f64, c.write_rounds as f64),
            groups_per_round: ratio(c.groups_in_rounds, c.write_rounds as f64),
            bytes_written: c.bytes_written,
            cpu_s: r.cpu_s,
            wal_write_p50_us: c.wal_write_p50_us,
            wal_write_p99_us: c.wal_write_p99_us,
            rss_bytes: r.memory.map_or(0, |m| m.rss_bytes),
            rss_hwm_bytes: r.memory.map_or(0, |m| m.hwm_bytes),
            rss_anon_bytes: r.memory.and_then(|m| m.anon_bytes).unwrap_or(0),
            rss_over_time: run.memory.clone(),
        });
    }
    let elapsed_s = elapsed_s.max(1e-9);
    let commits_per_s = commits as f64 / elapsed_s;
    let payload_mb_per_s = commits_per_s * point.value_bytes as f64 / 1e6;
    // No commit in the window: no latency figure (not 0).
    let q = |quantile: f64| {
        if histogram.is_empty() {
            f64::NAN
        } else {
            histogram.value_at_quantile(quantile) as f64
        }
    };
    let latency = LatencyUs {
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        max: q(1.0),
    };
    let replicas_n = runs.len().max(1) as f64;
    let mut timeline: BTreeMap<u64, u64> = BTreeMap::new();
    for run in &runs {
        for &(t, c) in &run.timeline {
            *timeline.entry((t * 1000.0).round() as u64).or_default() += c;
        }
    }
    let mut throughput = Vec::new();
    let mut previous: Option<(u64, u64)> = None;
    for (&ms, &c) in &timeline {
        if let Some((pms, pc)) = previous {
            if ms > pms {
                throughput.push((
                    ms as f64 / 1000.0,
                    c.saturating_sub(pc) as f64 / ((ms - pms) as f64 / 1000.0),
                ));
            }
        }
        previous = Some((ms, c));
    }
    let cdf = report::cdf_points(&histogram);
    let followers = all_runs
        .iter()
        .filter(|r| r.follower)
        .map(|run| {
            let d = drained.iter().find(|d| d.id == run.id);
            follower_out(run, d, commits_per_s, commits)
        })
        .collect();
    Ok(PointOut {
        groups: point.groups,
        value_bytes: point.value_bytes,
        pipeline_depth: depth,
        clients: point.clients,
        rate_per_s: rate,
        seconds: elapsed_s,
        commits,
        commits_per_s,
        payload_mb_per_s,
        latency_us: latency.clone(),
        durable_writes_per_commit: ratio(
            counters.durable_writes as f64 / replicas_n,
            commits as f64,
        ),
        durable_writes_per_round: ratio(
            counters.durable_writes as f64,
            counters.write_rounds as f64,
        ),
        records_per_round: ratio(counters.records as f64, counters.write_rounds as f64),
        groups_per_round: ratio(counters.groups_in_rounds, counters.write_rounds as f64),
        rtts_per_commit: ratio(
            counters.commit_rtts_total as f64,
            counters.commit_instances as f64,
        ),
        commands_per_instance: ratio(commits as f64, counters.commit_instances as f64),
        write_amplification: ratio(
            counters.bytes_written as f64,
            replicas_n * commits as f64 * point.value_bytes as f64,
        ),
        cpu_us_per_commit: ratio(cpu_s * 1e6, commits as f64),
        cpu_cores_busy: cpu_s / elapsed_s,
        // Set once the run's ceilings are known (report::apply_ceilings).
        bandwidth_vs_disk: f64::NAN,
        latency_vs_floor: f64::NAN,
        latency_vs_durable_floor: f64::NAN,
        wal_write_p50_us: counters.wal_write_p50_us,
        wal_write_p99_us: counters.wal_write_p99_us,
        not_leader: refusals.not_leader,
        overloaded: refusals.overloaded,
        unknown: refusals.unknown + refusals.other,
        open_loop_skipped: skipped,
        replicas,
        followers,
        throughput_over_time: throughput,
        latency_cdf: cdf,
    })
}

/// `a / b`, NaN when `b` is not positive (no figure rather than a wrong one).
pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// Free loopback ports (bound, read and released; a tiny race with other programs remains).
pub(crate) fn free_addrs(count: usize) -> Result<Vec<SocketAddr>, String> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .collect()
}

/// How the node processes of a cluster run (the same for each).
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeOptions {
    /// Core threads per node.
    pub cores: usize,
    /// The WAL's blocking backend.
    pub blocking_wal: bool,
    /// How a WAL write becomes durable (`None`: the runtime's default).
    pub sync_mode: Option<SyncModeConfig>,
    /// WAL writes each core keeps in flight (`None`: the runtime's default).
    pub wal_writes_in_flight: Option<usize>,
    /// Run each node under strace, its summary in this directory.
    pub strace_dir: Option<PathBuf>,
    /// The key-value state machine and a client listener (the reads benchmark).
    pub kv: Option<KvSpec>,
    /// Followers next to the `REPLICAS` voters (node ids `REPLICAS + 1..`).
    pub followers: u32,
}

impl NodeOptions {
    /// The options of the cluster benchmark's command line.
    fn of(args: &ClusterArgs) -> NodeOptions {
        NodeOptions {
            cores: args.cores,
            blocking_wal: args.blocking_wal,
            sync_mode: args.sync_mode,
            wal_writes_in_flight: args.wal_writes_in_flight,
            strace_dir: args.strace_dir.clone(),
            kv: None,
            followers: args.followers,
        }
    }
}

/// The node processes (three voters, then any followers) and their control channels.
pub(crate) struct Cluster {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    ids: Vec<u32>,
    /// Whether each node is a follower, by index.
    follower: Vec<bool>,
    events: Receiver<(usize, Option<Event>)>,
    /// Each node's memory when it reported Ready.
    started_memory: Vec<Option<Memory>>,
    /// Where each node serves clients (with `NodeOptions::kv`).
    client_addrs: Vec<Option<SocketAddr>>,
}

impl Cluster {
    /// Starts the three voters and `args.followers` followers (data in `dir/node-ID`) and waits
    /// until each is ready.
    pub(crate) fn start(
        dir: &Path,
        groups: u32,
        depth: Option<u32>,
        args: &NodeOptions,
    ) -> Result<Cluster, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let addrs = free_addrs((REPLICAS + args.followers) as usize)?;
        let is_follower = |i: usize| i >= REPLICAS as usize;
        let follower_ids: Vec<u32> = (0..addrs.len())
            .filter(|&i| is_follower(i))
            .map(|i| i as u32 + 1)
            .collect();
        let (tx, events) = std::sync::mpsc::channel();
        let mut cluster = Cluster {
            children: Vec::new(),
            stdins: Vec::new(),
            ids: Vec::new(),
            follower: Vec::new(),
            events,
            started_memory: vec![None; addrs.len()],
            client_addrs: vec![None; addrs.len()],
        };
        for (i, &listen) in addrs.iter().enumerate() {
            let id = i as u32 + 1;
            let spec = NodeSpec {
                id,
                listen,
                peers: addrs
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, a)| (j as u32 + 1, *a))
                    .collect(),
                dir: dir.join(format!("node-{id}")),
                groups,
                pipeline_depth: depth,
                cores: args.cores,
                blocking_wal: args.blocking_wal,
                sync_mode: args.sync_mode,
                wal_writes_in_flight: args.wal_writes_in_flight,
                cluster_id: 0x9A78_1B00 + u64::from(groups),
                kv: args.kv,
                follower: is_follower(i),
                follower_peers: follower_ids.iter().copied().filter(|&f| f != id).collect(),
            };
            let spec_json = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
            let mut command = match &args.strace_dir {
                Some(sdir) => {
                    let mut c = std::process::Command::new("strace");
                    c.arg("-f")
                        .arg("-c")
                        .arg("-o")
                        .arg(sdir.join(format!("node-{id}.strace")))
                        .arg("-e")
                        .arg("trace=pwritev2,pwrite64,fdatasync,fsync")
                        .arg("--")
                        .arg(&exe);
                    c
                }
                None => std::process::Command::new(&exe),
            };
            command
                .arg("node-role")
                .arg(&spec_json)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = command
                .spawn()
                .map_err(|e| format!("cannot start node {id}: {e}"))?;
            let stdout = child.stdout.take().expect("piped stdout");
            let stdin = child.stdin.take().expect("piped stdin");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Event>(&line) {
                        Ok(event) => {
                            if tx.send((i, Some(event))).is_err() {
                                return;
                            }
                        }
                        Err(_) => eprintln!("node {id}: {line}"),
                    }
                }
                let _ = tx.send((i, None));
            });
            cluster.children.push(child);
            cluster.stdins.push(stdin);
            cluster.ids.push(id);
            cluster.follower.push(is_follower(i));
        }
        let mut ready = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while ready < cluster.children.len() {
            match cluster.next_event(deadline)? {
                (
                    i,
                    Event::Ready {
                        memory,
                        client_addr,
                        ..
                    },
                ) => {
                    cluster.started_memory[i] = memory;
                    cluster.client_addrs[i] = client_addr;
                    ready += 1;
                }
                (i, Event::Error { message }) => {
                    return Err(format!("node {}: {message}", cluster.ids[i]))
                }
                _ => {}
            }
        }
        Ok(cluster)
    }

    /// Node ids, by index.
    pub(crate) fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Where each node serves clients, by index (`None` without `NodeOptions::kv`).
    pub(crate) fn client_addrs(&self) -> &[Option<SocketAddr>] {
        &self.client_addrs
    }

    fn send(&mut self, node: usize, command: &Command) -> Result<(), String> {
        let line = serde_json::to_string(command).map_err(|e| e.to_string())?;
        writeln!(self.stdins[node], "{line}")
            .and_then(|_| self.stdins[node].flush())
            .map_err(|e| format!("node {} stopped listening: {e}", self.ids[node]))
    }

    fn next_event(&mut self, deadline: Instant) -> Result<(usize, Event), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok((i, Some(event))) => Ok((i, event)),
            Ok((i, None)) => {
                let status = self.children[i]
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "still running".into());
                Err(format!(
                    "node {} closed its output unexpectedly ({status})",
                    self.ids[i]
                ))
            }
            Err(RecvTimeoutError::Timeout) => Err("a node process did not answer in time".into()),
            Err(RecvTimeoutError::Disconnected) => Err("every node process is gone".into()),
        }
    }

    /// Every node's cumulative counters now (cores publish theirs every 20 ms), by index.
    pub(crate) fn stats(&mut self) -> Result<Vec<Counters>, String> {
        for i in 0..self.children.len() {
            self.send(i, &Command::Stats)?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out: Vec<Option<Counters>> = vec![None; self.children.len()];
        while out.iter().any(Option::is_none) {
            match self.next_event(deadline)? {
                (i, Event::Stats(c)) => out[i] = Some(c),
                (i, Event::Error { message }) => {
                    return Err(format!("node {}: {message}", self.ids[i]))
                }
                _ => {}
            }
        }
        Ok(out.into_iter().map(|c| c.expect("checked")).collect())
    }

    /// Each group's master (index into nodes) as the nodes report it (`Node::is_master`), or
    /// `None` for a group no node is master of now.
    pub(crate) fn masters(&mut self, groups: u32) -> Result<Vec<Option<usize>>, String> {
        for i in 0..self.children.len() {
            self.send(i, &Command::Masters)?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut master: Vec<Option<usize>> = vec![None; groups as usize];
        let mut answers = 0;
        while answers < self.children.len() {
            match self.next_event(deadline)? {
                (i, Event::Masters { groups: held }) => {
                    answers += 1;
                    for g in held {
                        if let Some(slot) = master.get_mut(g as usize) {
                            slot.get_or_insert(i);
                        }
                    }
                }
                (i, Event::Error { message }) => {
                    return Err(format!("node {}: {message}", self.ids[i]))
                }
                _ => {}
            }
        }
        Ok(master)
    }

    /// Waits until every group has a leader; returns each group's leader (index into nodes).
    pub(crate) fn wait_leaders(&mut self, groups: u32) -> Result<Vec<usize>, String> {
        let deadline = Instant::now() + LEADERS_TIMEOUT;
        loop {
            for i in 0..self.children.len() {
                self.send(i, &Command::Leaders)?;
            }
            let mut leader: Vec<Option<usize>> = vec![None; groups as usize];
            let mut answers = 0;
            while answers < self.children.len() {
                match self.next_event(deadline)? {
                    (i, Event::Leaders { groups: led }) => {
                        answers += 1;
                        if let (true, Some(g)) = (self.follower[i], led.first()) {
                            return Err(format!(
                                "node {} is a follower but reports leading group {g}",
                                self.ids[i]
                            ));
                        }
                        for g in led {
                            if let Some(slot) = leader.get_mut(g as usize) {
                                slot.get_or_insert(i);
                            }
                        }
                    }
                    (i, Event::Error { message }) => {
                        return Err(format!("node {}: {message}", self.ids[i]))
                    }
                    _ => {}
                }
            }
            if leader.iter().all(Option::is_some) {
                return Ok(leader.into_iter().map(|l| l.expect("checked")).collect());
            }
            if Instant::now() >= deadline {
                let missing = leader.iter().filter(|l| l.is_none()).count();
                return Err(format!(
                    "{missing} of {groups} groups still had no leader after {} s",
                    LEADERS_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn run_point(
        &mut self,
        point: &Point,
        leaders: &[usize],
        rate: Option<f64>,
        warmup: f64,
        seconds: f64,
        label: &str,
    ) -> Result<Vec<NodeRun>, String> {
        let nodes = self.children.len();
        let mut client_groups: Vec<Vec<u32>> = vec![Vec::new(); nodes];
        for c in 0..point.clients {
            let g = (c % point.groups as usize) as u32;
            client_groups[leaders[g as usize]].push(g);
        }
        let mut led: Vec<Vec<u32>> = vec![Vec::new(); nodes];
        for (g, &l) in leaders.iter().enumerate() {
            led[l].push(g as u32);
        }
        for i in 0..nodes {
            let rate_per_s = rate
                .map(|r| r * led[i].len() as f64 / point.groups as f64)
                .unwrap_or(0.0);
            let spec = RunSpec {
                client_groups: std::mem::take(&mut client_groups[i]),
                rate_groups: if rate.is_some() {
                    led[i].clone()
                } else {
                    Vec::new()
                },
                rate_per_s,
                value_bytes: point.value_bytes,
                warmup_s: warmup,
                seconds,
                progress_ms: PROGRESS_MS,
            };
            self.send(i, &Command::Run(spec))?;
        }
        let deadline = Instant::now() + Duration::from_secs_f64(warmup + seconds + 60.0);
        let mut results: Vec<Option<RunResult>> = vec![None; nodes];
        let mut timelines: Vec<Vec<(f64, u64)>> = vec![Vec::new(); nodes];
        let mut memories: Vec<Vec<(f64, u64, u64)>> = vec![Vec::new(); nodes];
        let mut latest: Vec<(f64, u64)> = vec![(0.0, 0); nodes];
        let tty = std::io::stderr().is_terminal();
        let mut printed_s = 0.0;
        while results.iter().any(Option::is_none) {
            match self.next_event(deadline)? {
                (
                    i,
                    Event::Progress {
                        elapsed_s,
                        commits,
                        memory,
                    },
                ) => {
                    timelines[i].push((elapsed_s, commits));
                    if let Some(m) = memory {
                        memories[i].push((elapsed_s, m.rss_bytes, m.anon_bytes.unwrap_or(0)));
                    }
                    latest[i] = (elapsed_s, commits);
                    let t = latest.iter().map(|l| l.0).fold(0.0, f64::max);
                    let c: u64 = latest.iter().map(|l| l.1).sum();
                    let rate = if t > 0.0 { c as f64 / t } else { 0.0 };
                    if tty {
                        eprint!("\r{label}  {t:4.1}/{seconds} s  {rate:>9.0} commits/s   ");
                    } else if t.floor() > printed_s {
                        printed_s = t.floor();
                        eprintln!("{label}  {t:4.1}/{seconds} s  {rate:>9.0} commits/s");
                    }
                }
                (i, Event::Result(result)) => results[i] = Some(*result),
                (i, Event::Error { message }) => {
                    eprintln!("\nnode {}: {message}", self.ids[i]);
                }
                _ => {}
            }
        }
        Ok(results
            .into_iter()
            .zip(timelines)
            .zip(memories)
            .enumerate()
            .map(|(i, ((r, timeline), memory))| NodeRun {
                id: self.ids[i],
                follower: self.follower[i],
                result: r.expect("every result arrived"),
                timeline,
                memory,
            })
            .collect())
    }

    /// After a point (its clients drained), waits (bounded) until every follower reports no
    /// lag and has applied as many commands as the voter that applied most, while the voters'
    /// figure stays put over two polls; returns each follower's state at that moment (or at
    /// the timeout). Empty without followers.
    fn drain_followers(&mut self) -> Result<Vec<Drained>, String> {
        if !self.follower.contains(&true) {
            return Ok(Vec::new());
        }
        let begin = Instant::now();
        let mut previous_voters_applied = None;
        let mut settled_polls = 0;
        loop {
            let stats = self.stats()?;
            let voters_applied = stats
                .iter()
                .zip(&self.follower)
                .filter(|(_, &f)| !f)
                .map(|(c, _)| c.applied_commands)
                .max()
                .unwrap_or(0);
            let drained: Vec<Drained> = stats
                .iter()
                .zip(self.ids.iter().zip(&self.follower))
                .filter(|(_, (_, &f))| f)
                .map(|(c, (&id, _))| Drained {
                    id,
                    lag_instances: c.lag_instances,
                    lag_instances_max: c.lag_instances_max,
                    applied_behind: voters_applied.saturating_sub(c.applied_commands),
                    waited_s: begin.elapsed().as_secs_f64(),
                })
                .collect();
            let caught_up = previous_voters_applied == Some(voters_applied)
                && drained
                    .iter()
                    .all(|d| d.lag_instances == 0 && d.applied_behind == 0);
            settled_polls = if caught_up { settled_polls + 1 } else { 0 };
            if settled_polls >= 2 || begin.elapsed() >= FOLLOWER_DRAIN_TIMEOUT {
                return Ok(drained);
            }
            previous_voters_applied = Some(voters_applied);
            // Cores publish their snapshots every 20 ms.
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Asks every node to quit, collects its final counters, and reaps it.
    pub(crate) fn stop(mut self) -> Result<Vec<NodeFinal>, String> {
        for i in 0..self.children.len() {
            // A node that already left is reported by the wait below.
            let _ = self.send(i, &Command::Quit);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut finals: Vec<Option<(Counters, Option<Memory>)>> = vec![None; self.children.len()];
        while finals.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((i, Some(Event::Bye { counters, memory }))) => {
                    finals[i] = Some((counters, memory))
                }
                Ok((i, None)) if finals[i].is_none() => {
                    return Err(format!(
                        "stopping the cluster: node {} exited without its final counters",
                        self.ids[i]
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("stopping the cluster: no answer ({e})")),
            }
        }
        let mut out = Vec::new();
        for (i, child) in self.children.iter_mut().enumerate() {
            let status = wait_with_deadline(child, deadline)?;
            if !status.success() {
                return Err(format!("node {} exited with {status}", self.ids[i]));
            }
            let (counters, memory) = finals[i].expect("checked");
            let started = self.started_memory[i];
            out.push(NodeFinal {
                id: self.ids[i],
                pid: child.id(),
                follower: self.follower[i],
                durable_writes: counters.durable_writes,
                wal_writes: counters.wal_writes,
                rss_bytes_start: started.map_or(0, |m| m.rss_bytes),
                rss_bytes_end: memory.map_or(0, |m| m.rss_bytes),
                rss_hwm_bytes: memory.map_or(0, |m| m.hwm_bytes),
                rss_anon_bytes_end: memory.and_then(|m| m.anon_bytes).unwrap_or(0),
            });
        }
        self.children.clear();
        Ok(out)
    }
}

fn wait_with_deadline(
    child: &mut Child,
    deadline: Instant,
) -> Result<std::process::ExitStatus, String> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return Err(format!("node process {} did not exit", child.id())),
            Err(e) => return Err(format!("waiting for node process {}: {e}", child.id())),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Only the processes this cluster started, by their own handles.
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    //! Proves that the quick profile holds the issue's two target points, that the full profile
    //! spans the whole matrix, that flags replace dimensions, and that bad flags are refused.
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ClusterArgs,
    }

    fn args(argv: &[&str]) -> ClusterArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .expect("parses")
            .args
    }

    #[test]
    fn quick_profile_holds_the_targets() {
        let points = matrix(&args(&[]));
        assert!(points.len() >= 4 && points.len() <= 8, "{points:?}");
        assert!(points
            .iter()
            .any(|p| p.groups == 100 && p.value_bytes == 100 && p.pipeline == Pipeline::Default));
        assert!(points
            .iter()
            .any(|p| p.groups == 1 && p.clients == 1 && p.value_bytes == 100));
    }

    #[test]
    fn full_profile_spans_the_matrix() {
        let points = matrix(&args(&["--profile", "full"]));
        for g in [1, 20, 100] {
            for v in [100, 4096, 100_000] {
                for pl in [Pipeline::Depth(1), Pipeline::Default] {
                    assert!(
                        points
                            .iter()
                            .any(|p| p.groups == g && p.value_bytes == v && p.pipeline == pl),
                        "missing {g} {v} {pl:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn flags_replace_dimensions() {
        let points = matrix(&args(&[
            "--groups",
            "1,20",
            "--value-bytes",
            "4096",
            "--pipeline",
            "1,default",
            "--clients",
            "7",
        ]));
        assert_eq!(points.len(), 4);
        assert!(points
            .iter()
            .all(|p| p.value_bytes == 4096 && p.clients == 7));
        assert!(points.contains(&Point {
            groups: 20,
            value_bytes: 4096,
            pipeline: Pipeline::Depth(1),
            clients: 7
        }));
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse_pipeline("0").is_err());
        assert!(parse_pipeline("deep").is_err());
        assert_eq!(parse_pipeline("default"), Ok(Pipeline::Default));
        assert!(parse_sync_mode("fsync").is_err());
        assert_eq!(parse_sync_mode("dsync"), Ok(SyncModeConfig::Dsync));
        assert!(validate(&args(&["--groups", "0"])).is_err());
        assert!(validate(&args(&["--report", "out.png"])).is_err());
        assert!(validate(&args(&["--seconds=-1"])).is_err());
        assert!(validate(&args(&["--seconds", "0"])).is_err());
        assert!(validate(&args(&["--report", "out.svg", "--rate", "1000"])).is_ok());
        assert!(validate(&args(&["--followers", "3"])).is_err());
        assert!(validate(&args(&["--followers", "2"])).is_ok());
        assert_eq!(args(&[]).followers, 0);
    }

    #[test]
    fn keeps_up_divides_rates() {
        let (per_s, vs) = keeps_up(9_900, 4.0, 2_500.0);
        assert!((per_s - 2_475.0).abs() < 1e-9);
        assert!((vs - 0.99).abs() < 1e-12);
        // No window or no commits: no figure, never 0 or infinity.
        assert!(keeps_up(10, 0.0, 100.0).0.is_nan());
        assert!(keeps_up(10, 1.0, 0.0).1.is_nan());
    }

    fn node_run(id: u32, follower: bool, commits: u64, applied: u64, cpu_s: f64) -> NodeRun {
        NodeRun {
            id,
            follower,
            result: RunResult {
                commits,
                refusals: proto::Refusals::default(),
                histogram_b64: String::new(),
                counters: Counters {
                    durable_writes: 100,
                    write_rounds: 100,
                    applied_commands: applied,
                    lag_instances: if follower { 7 } else { 0 },
                    lag_instances_max: if follower { 3 } else { 0 },
                    ..Counters::default()
                },
                cpu_s,
                elapsed_s: 2.0,
                open_loop_skipped: 0,
                memory: None,
            },
            timeline: Vec::new(),
            memory: Vec::new(),
        }
    }

    #[test]
    fn followers_are_measured_apart_from_the_voters() {
        let point = Point {
            groups: 4,
            value_bytes: 100,
            pipeline: Pipeline::Default,
            clients: 8,
        };
        let voters = [
            node_run(1, false, 600, 1000, 0.5),
            node_run(2, false, 400, 1000, 0.3),
            node_run(3, false, 0, 1000, 0.2),
        ];
        let summary = |runs: &[NodeRun], drained: &[Drained]| {
            summarize(&point, 8, None, runs, drained).expect("summarizes")
        };
        let alone = summary(&voters, &[]);
        let mut runs = voters.to_vec();
        runs.push(node_run(4, true, 0, 950, 0.4));
        let drained = [Drained {
            id: 4,
            lag_instances: 0,
            lag_instances_max: 0,
            applied_behind: 2,
            waited_s: 0.1,
        }];
        let with = summary(&runs, &drained);
        // The voters' figures do not move with a follower next to them.
        assert_eq!(with.commits, 1000);
        assert_eq!(with.commits_per_s, alone.commits_per_s);
        assert_eq!(with.cpu_us_per_commit, alone.cpu_us_per_commit);
        assert!((with.cpu_us_per_commit - 1000.0).abs() < 1e-9);
        assert_eq!(
            with.durable_writes_per_commit,
            alone.durable_writes_per_commit
        );
        assert_eq!(with.replicas.len(), 3);
        assert!(alone.followers.is_empty());
        let f = &with.followers[0];
        assert_eq!(f.id, 4);
        assert!((f.applied_per_s - 475.0).abs() < 1e-9);
        assert!((f.applied_vs_commits - 0.95).abs() < 1e-12);
        assert_eq!((f.lag_instances_end, f.lag_instances_max_end), (7, 3));
        assert_eq!((f.lag_instances_drained, f.applied_behind_drained), (0, 2));
        assert!((f.cpu_us_per_commit - 400.0).abs() < 1e-9);
    }
}
