//! `paxring-bench reads`: linearizable reads without a log write (docs/PROTOCOL.md#reads)
//! against log reads and against the client hop alone, on a 3-replica cluster of separate
//! processes on 127.0.0.1 (the cluster benchmark's node processes, running a key-value state
//! machine and serving clients over loopback TCP).
//!
//! For each `--groups` value, on a fresh cluster: the keys are preloaded through the log, then
//! `--clients` closed-loop clients (in this process, one connection to every node each, every
//! request sent to its group's leader) run one phase after another, each `--warmup` plus
//! `--seconds` measured:
//! 1. `baseline`: the same request over the same connection, answered by the node process
//!    from an in-process map without touching the engine (lookup + client hop);
//! 2. `lease`: `Node::read(.., ReadMode::Lease)`, after the nodes' WAL counters stopped moving
//!    (the WAL counters must not move during it: a lease read writes nothing);
//! 3. `index`: `Node::read(.., ReadMode::Index)`;
//! 4. `log`: the get proposed as a command, answered by `apply` through the log;
//! 5. `mix`: lease reads and puts, `--write-percent` puts.
//!
//! Then the two goals, computed from this run's figures: a lease read's p50 at most
//! `GOAL_LEASE_P50_VS_BASELINE_MAX` times the baseline's, and lease reads/s at least
//! `GOAL_LEASE_VS_LOG_READS_MIN` times log reads/s.
//!
//! Owns: the reads run, its figures and its report. Never: reports a figure it did not
//! measure in this run, leaves a node process behind (the cluster reaps its own), or listens
//! or connects anywhere but 127.0.0.1.

pub mod load;
pub mod serve;
pub mod wire;

use crate::cluster::proto::{Counters, KvSpec};
use crate::cluster::{ratio, Cluster, NodeOptions, REPLICAS};
use crate::report::{LatencyUs, NodeFinal};
use crate::rss::{self, RssLog, RssReport};
use hdrhistogram::Histogram;
use load::{Client, Load, PhaseRun, Shape, Tally};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wire::Op;

/// The goal: a lease read's p50 at most this multiple of the baseline's
/// (in-process lookup + client hop).
pub const GOAL_LEASE_P50_VS_BASELINE_MAX: f64 = 2.0;
/// The goal: lease reads/s at least this multiple of log reads/s.
pub const GOAL_LEASE_VS_LOG_READS_MIN: f64 = 10.0;
/// Longest wait for every group to have a master before the read phases.
const MASTERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the preload.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// The WAL counters must stand still this long before the lease phase starts.
const QUIET_FOR: Duration = Duration::from_millis(300);
/// Longest wait for that.
const QUIET_TIMEOUT: Duration = Duration::from_secs(5);
/// Cores publish their counters every 20 ms: wait this long before reading them after a phase.
const STATS_SETTLE: Duration = Duration::from_millis(60);

/// Arguments of `paxring-bench reads`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReadsArgs {
    /// Groups (comma-separated); each value runs on a fresh cluster.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    pub groups: Vec<u32>,
    /// Closed-loop clients (each with one request outstanding), the same for every phase.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Warm-up seconds before each phase's measurement (load runs, nothing is counted).
    #[arg(long, default_value_t = 0.3)]
    pub warmup: f64,
    /// Keys per group (preloaded; requests pick group and key uniformly).
    #[arg(long, default_value_t = 100)]
    pub keys: u64,
    /// Bytes of every value.
    #[arg(long = "value-bytes", default_value_t = 100)]
    pub value_bytes: usize,
    /// Percent of puts in the read/write mix (the rest are lease reads).
    #[arg(long = "write-percent", default_value_t = 10)]
    pub write_percent: u64,
    /// Core threads per node.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Instances in flight per group (default: the runtime's default).
    #[arg(long)]
    pub pipeline: Option<u32>,
    /// Where the data lives (a fresh directory is made inside; default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the data directory at the end.
    #[arg(long)]
    pub keep: bool,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One kind of request in one phase.
#[derive(Clone, Debug, Serialize)]
pub struct KindOut {
    /// Requests answered in the measurement window.
    pub ops: u64,
    /// ops / window seconds.
    pub ops_per_s: f64,
    /// Latency from send to answer at the client, µs (NaN without samples).
    pub latency_us: LatencyUs,
    /// `NotLeader` answers (sent again to the leader; not in the latency).
    pub not_leader: u64,
    /// `Overloaded` answers (sent again after 200 µs).
    pub overloaded: u64,
    /// Failed requests.
    pub failed: u64,
    /// Reads whose value was not the key's (0 expected).
    pub wrong_values: u64,
}

impl KindOut {
    fn of(tally: &Tally, seconds: f64) -> KindOut {
        KindOut {
            ops: tally.ops,
            ops_per_s: ratio(tally.ops as f64, seconds),
            latency_us: latency_of(&tally.histogram),
            not_leader: tally.not_leader,
            overloaded: tally.overloaded,
            failed: tally.failed,
            wrong_values: tally.wrong_values,
        }
    }
}

/// Percentiles of a histogram of nanoseconds, in µs (NaN when empty).
pub fn latency_of(h: &Histogram<u64>) -> LatencyUs {
    let q = |quantile: f64| {
        if h.is_empty() {
            f64::NAN
        } else {
            h.value_at_quantile(quantile) as f64 / 1000.0
        }
    };
    LatencyUs {
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        max: q(1.0),
    }
}

/// What one node's WAL and read counters did during a phase (warm-up included).
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeDelta {
    /// Node id.
    pub id: u32,
    /// Durable writes.
    pub durable_writes: u64,
    /// WAL batch writes.
    pub wal_writes: u64,
    /// Records written.
    pub records: u64,
    /// Bytes written by the WAL.
    pub bytes_written: u64,
    /// Reads served by the master's lease.
    pub reads_lease: u64,
    /// Reads served after a read-index round.
    pub reads_index: u64,
    /// Reads refused or failed.
    pub reads_failed: u64,
    /// Lease rounds sent as leader.
    pub lease_rounds_sent: u64,
    /// Proposals committed by this node.
    pub proposals_committed: u64,
}

/// The WAL during a phase, summed over the nodes, and whether it grew.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct WalCheck {
    /// Durable writes.
    pub durable_writes: u64,
    /// WAL batch writes.
    pub wal_writes: u64,
    /// Records written.
    pub records: u64,
    /// Whether anything was written (a lease read writes nothing, nor do heartbeats and lease
    /// rounds: only proposals and elections append).
    pub grew: bool,
}

/// Sums the nodes' WAL deltas.
pub fn wal_check(nodes: &[NodeDelta]) -> WalCheck {
    let mut c = WalCheck::default();
    for n in nodes {
        c.durable_writes += n.durable_writes;
        c.wal_writes += n.wal_writes;
        c.records += n.records;
    }
    c.grew = c.durable_writes > 0 || c.wal_writes > 0 || c.records > 0;
    c
}

/// One phase.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseOut {
    /// `baseline`, `lease`, `index`, `log` or `mix`.
    pub name: String,
    /// Measured seconds.
    pub seconds: f64,
    /// The reads (for `mix`: its lease reads).
    pub reads: KindOut,
    /// The puts (`mix` only).
    pub writes: Option<KindOut>,
    /// Every node's counters over the phase (warm-up included).
    pub nodes: Vec<NodeDelta>,
    /// The WAL over the phase, all nodes.
    pub wal: WalCheck,
}

/// A goal of the issue, evaluated on this run's figures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Goal {
    /// The measured ratio.
    pub value: f64,
    /// The bound.
    pub bound: f64,
    /// `at_most` or `at_least`.
    pub kind: String,
    /// Whether the ratio meets the bound (false without a figure).
    pub met: bool,
}

/// `value <= bound`.
pub fn goal_at_most(value: f64, bound: f64) -> Goal {
    Goal {
        value,
        bound,
        kind: "at_most".into(),
        met: value.is_finite() && value <= bound,
    }
}

/// `value >= bound`.
pub fn goal_at_least(value: f64, bound: f64) -> Goal {
    Goal {
        value,
        bound,
        kind: "at_least".into(),
        met: value.is_finite() && value >= bound,
    }
}

/// "met" / "NOT met".
fn met_text(goal: &Goal) -> &'static str {
    if goal.met {
        "met"
    } else {
        "NOT met"
    }
}

/// The goals at one groups value.
#[derive(Clone, Debug, Serialize)]
pub struct GoalsOut {
    /// lease read p50 / baseline p50.
    pub lease_p50_vs_baseline: Goal,
    /// lease reads/s / log reads/s.
    pub lease_vs_log_reads_per_s: Goal,
    /// lease read p99 / baseline p99 (no goal; for the record).
    pub lease_p99_vs_baseline: f64,
    /// read-index read p50 / baseline p50 (no goal).
    pub index_p50_vs_baseline: f64,
    /// log read p50 / baseline p50 (no goal).
    pub log_p50_vs_baseline: f64,
    /// read-index reads/s / log reads/s (no goal).
    pub index_vs_log_reads_per_s: f64,
}

/// Evaluates the goals from the phases' figures.
pub fn goals(baseline: &KindOut, lease: &KindOut, index: &KindOut, log: &KindOut) -> GoalsOut {
    GoalsOut {
        lease_p50_vs_baseline: goal_at_most(
            ratio(lease.latency_us.p50, baseline.latency_us.p50),
            GOAL_LEASE_P50_VS_BASELINE_MAX,
        ),
        lease_vs_log_reads_per_s: goal_at_least(
            ratio(lease.ops_per_s, log.ops_per_s),
            GOAL_LEASE_VS_LOG_READS_MIN,
        ),
        lease_p99_vs_baseline: ratio(lease.latency_us.p99, baseline.latency_us.p99),
        index_p50_vs_baseline: ratio(index.latency_us.p50, baseline.latency_us.p50),
        log_p50_vs_baseline: ratio(log.latency_us.p50, baseline.latency_us.p50),
        index_vs_log_reads_per_s: ratio(index.ops_per_s, log.ops_per_s),
    }
}

/// One groups value.
#[derive(Clone, Debug, Serialize)]
pub struct GroupsOut {
    /// Groups.
    pub groups: u32,
    /// Groups led by each node (node id, groups) when the clients connected.
    pub leaders_per_node: Vec<(u32, u32)>,
    /// Groups with a master (lease holder) before the read phases.
    pub masters: u32,
    /// Seconds to wait for them.
    pub masters_wait_s: f64,
    /// Seconds of the preload (every key put through the log).
    pub preload_s: f64,
    /// Seconds the WAL counters took to stand still before the lease phase.
    pub quiet_wait_s: f64,
    /// Every phase, in order.
    pub phases: Vec<PhaseOut>,
    /// The goals.
    pub goals: GoalsOut,
    /// The WAL during the pure lease-read phase (nothing expected).
    pub lease_wal: WalCheck,
}

/// The whole run, as `--json` writes it.
#[derive(Clone, Debug, Serialize)]
pub struct ReadsRunOut {
    /// `reads`.
    pub mode: String,
    /// Closed-loop clients.
    pub clients: usize,
    /// Keys per group.
    pub keys_per_group: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Percent of puts in the mix.
    pub write_percent: u64,
    /// Measured seconds per phase.
    pub seconds: f64,
    /// Warm-up seconds per phase.
    pub warmup_s: f64,
    /// Core threads per node.
    pub cores: usize,
    /// Instances in flight per group (None: the runtime's default).
    pub pipeline: Option<u32>,
    /// The goals' bounds.
    pub goal_lease_p50_vs_baseline_max: f64,
    /// See above.
    pub goal_lease_vs_log_reads_min: f64,
    /// Each groups value.
    pub points: Vec<GroupsOut>,
    /// Every node's final counters and memory, cluster by cluster.
    pub nodes_final: Vec<NodeFinal>,
    /// The coordinator's own memory (the clients').
    pub rss: RssReport,
    /// The data directory, when kept.
    pub data_dir: Option<String>,
}

/// Runs the reads benchmark.
pub fn run(args: ReadsArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("paxring-bench reads: {message}");
            ExitCode::FAILURE
        }
    }
}

fn validate(args: &ReadsArgs) -> Result<(), String> {
    if args.groups.is_empty() || args.groups.contains(&0) {
        return Err("--groups: use 1 or more groups".into());
    }
    if args.groups.iter().any(|&g| g > 10_000) {
        return Err("--groups: at most 10000".into());
    }
    if args.clients == 0 || args.clients > 4096 {
        return Err(format!("--clients {}: use 1..=4096", args.clients));
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(format!(
            "--seconds {}: use a value in (0, 3600]",
            args.seconds
        ));
    }
    if !(0.0..=600.0).contains(&args.warmup) {
        return Err(format!("--warmup {}: use a value in [0, 600]", args.warmup));
    }
    if args.keys == 0 || args.keys > 1_000_000 {
        return Err(format!("--keys {}: use 1..=1000000", args.keys));
    }
    if args.value_bytes == 0 || args.value_bytes > 1 << 20 {
        return Err(format!(
            "--value-bytes {}: use 1..=1048576",
            args.value_bytes
        ));
    }
    if args.write_percent > 100 {
        return Err(format!(
            "--write-percent {}: use 0..=100",
            args.write_percent
        ));
    }
    if args.cores == 0 || args.cores > 64 {
        return Err(format!("--cores {}: use 1..=64", args.cores));
    }
    Ok(())
}

/// Waits (bounded) until the nodes' durable-write and record counters stand still for
/// `QUIET_FOR`; returns the seconds it took.
fn wait_quiet(cluster: &mut Cluster) -> Result<f64, String> {
    let started = Instant::now();
    let key = |c: &[Counters]| -> (u64, u64) {
        c.iter()
            .fold((0, 0), |a, n| (a.0 + n.durable_writes, a.1 + n.records))
    };
    let mut last = key(&cluster.stats()?);
    let mut still_since = Instant::now();
    while started.elapsed() < QUIET_TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
        let now = key(&cluster.stats()?);
        if now != last {
            still_since = Instant::now();
            last = now;
        } else if still_since.elapsed() >= QUIET_FOR {
            break;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Waits (bounded) until every group has a master; returns how many have one and the wait.
fn wait_masters(cluster: &mut Cluster, groups: u32) -> Result<(u32, f64), String> {
    let started = Instant::now();
    loop {
        let masters = cluster.masters(groups)?;
        let held = masters.iter().filter(|m| m.is_some()).count() as u32;
        if held == groups || started.elapsed() >= MASTERS_TIMEOUT {
            return Ok((held, started.elapsed().as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn node_deltas(ids: &[u32], before: &[Counters], after: &[Counters]) -> Vec<NodeDelta> {
    ids.iter()
        .zip(before.iter().zip(after))
        .map(|(&id, (b, a))| {
            let d = a.since(b);
            NodeDelta {
                id,
                durable_writes: d.durable_writes,
                wal_writes: d.wal_writes,
                records: d.records,
                bytes_written: d.bytes_written,
                reads_lease: d.reads_lease,
                reads_index: d.reads_index,
                reads_failed: d.reads_failed,
                lease_rounds_sent: d.lease_rounds_sent,
                proposals_committed: d.proposals_committed,
            }
        })
        .collect()
}

/// The phases, in order: name, label, load.
fn phases(write_percent: u64) -> [(&'static str, &'static str, Load); 5] {
    [
        (
            "baseline",
            "baseline (lookup + hop)",
            Load::Only(Op::Baseline),
        ),
        ("lease", "lease read", Load::Only(Op::Lease)),
        ("index", "read-index read", Load::Only(Op::Index)),
        ("log", "log read", Load::Only(Op::LogRead)),
        ("mix", "mix", Load::Mix { write_percent }),
    ]
}

fn run_groups(
    args: &ReadsArgs,
    groups: u32,
    dir: &std::path::Path,
    runtime: &tokio::runtime::Runtime,
    local: &tokio::task::LocalSet,
) -> Result<(GroupsOut, Vec<NodeFinal>), String> {
    let options = NodeOptions {
        cores: args.cores,
        kv: Some(KvSpec {
            keys_per_group: args.keys,
            value_bytes: args.value_bytes,
        }),
        ..NodeOptions::default()
    };
    let mut cluster = Cluster::start(dir, groups, args.pipeline, &options)?;
    let leaders = cluster.wait_leaders(groups)?;
    let ids = cluster.ids().to_vec();
    let addrs: Vec<SocketAddr> = cluster
        .client_addrs()
        .iter()
        .map(|a| a.ok_or_else(|| "a node reported no client address".to_string()))
        .collect::<Result<_, _>>()?;
    let leaders_per_node = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, leaders.iter().filter(|&&l| l == i).count() as u32))
        .collect();
    let shape = Shape {
        groups,
        keys: args.keys,
        value_bytes: args.value_bytes,
    };
    let mut clients: Vec<Client> = local.block_on(runtime, async {
        let mut clients = Vec::with_capacity(args.clients);
        for c in 0..args.clients {
            clients.push(Client::connect(&addrs, &leaders, c as u64 + 1).await?);
        }
        Ok::<_, String>(clients)
    })?;
    eprintln!(
        "[groups={groups}] preloading {} keys through the log...",
        u64::from(groups) * args.keys
    );
    let preload_started = Instant::now();
    clients = local.block_on(
        runtime,
        load::preload(clients, shape, Instant::now() + PRELOAD_TIMEOUT),
    )?;
    let preload_s = preload_started.elapsed().as_secs_f64();
    let (masters, masters_wait_s) = wait_masters(&mut cluster, groups)?;
    if masters < groups {
        eprintln!(
            "[groups={groups}] only {masters} of {groups} groups have a master after {} s: \
             lease reads of the others fall back to read index",
            MASTERS_TIMEOUT.as_secs()
        );
    }
    let mut quiet_wait_s = 0.0;
    let mut outs = Vec::new();
    for (name, label, load) in phases(args.write_percent) {
        if name == "lease" {
            quiet_wait_s = wait_quiet(&mut cluster)?;
        }
        eprintln!(
            "[groups={groups}] {label}: {} s after {} s warm-up...",
            args.seconds, args.warmup
        );
        let before = cluster.stats()?;
        let (back, run): (Vec<Client>, PhaseRun) = local.block_on(
            runtime,
            load::run_phase(clients, load, shape, args.warmup, args.seconds),
        )?;
        clients = back;
        std::thread::sleep(STATS_SETTLE);
        let after = cluster.stats()?;
        let nodes = node_deltas(&ids, &before, &after);
        let wal = wal_check(&nodes);
        outs.push(PhaseOut {
            name: name.to_string(),
            seconds: run.seconds,
            reads: KindOut::of(&run.reads, run.seconds),
            writes: matches!(load, Load::Mix { .. }).then(|| KindOut::of(&run.writes, run.seconds)),
            nodes,
            wal,
        });
    }
    drop(clients);
    let finals = cluster.stop()?;
    let find = |name: &str| {
        outs.iter()
            .find(|p| p.name == name)
            .expect("every phase ran")
    };
    let goals = goals(
        &find("baseline").reads,
        &find("lease").reads,
        &find("index").reads,
        &find("log").reads,
    );
    let lease_wal = find("lease").wal.clone();
    Ok((
        GroupsOut {
            groups,
            leaders_per_node,
            masters,
            masters_wait_s,
            preload_s,
            quiet_wait_s,
            phases: outs,
            goals,
            lease_wal,
        },
        finals,
    ))
}

fn us_text(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn kind_line(label: &str, k: &KindOut) -> String {
    let refused = k.not_leader + k.overloaded + k.failed;
    let mut line = format!(
        "  {label:<26} {:>10.0} {:>11} {:>11}",
        k.ops_per_s,
        us_text(k.latency_us.p50),
        us_text(k.latency_us.p99)
    );
    if refused > 0 {
        line += &format!(
            "   (refused: {} not-leader, {} overloaded, {} failed)",
            k.not_leader, k.overloaded, k.failed
        );
    }
    if k.wrong_values > 0 {
        line += &format!("   WRONG VALUES: {}", k.wrong_values);
    }
    line
}

/// The text report of one groups value.
pub fn groups_text(args: &ReadsArgs, g: &GroupsOut) -> String {
    let mut s = format!(
        "groups={}: {} clients, {} keys/group, {} B values, {} s per phase after {} s warm-up; \
         groups led per node {:?}; {} of {} groups with a master\n",
        g.groups,
        args.clients,
        args.keys,
        args.value_bytes,
        args.seconds,
        args.warmup,
        g.leaders_per_node,
        g.masters,
        g.groups
    );
    s += &format!(
        "  {:<26} {:>10} {:>11} {:>11}\n",
        "phase", "ops/s", "p50", "p99"
    );
    for p in &g.phases {
        if p.name == "mix" {
            let reads = 100 - args.write_percent;
            s += &kind_line(
                &format!("mix {reads}/{}: lease read", args.write_percent),
                &p.reads,
            );
            s.push('\n');
            if let Some(w) = &p.writes {
                s += &kind_line(&format!("mix {reads}/{}: put", args.write_percent), w);
                s.push('\n');
            }
        } else {
            let label = phases(args.write_percent)
                .iter()
                .find(|ph| ph.0 == p.name)
                .map_or(p.name.as_str(), |ph| ph.1);
            s += &kind_line(label, &p.reads);
            s.push('\n');
        }
    }
    let gl = &g.goals;
    s += &format!(
        "  lease read p50 = {:.1}x (in-process lookup + client hop); goal <= {}x: {}\n",
        gl.lease_p50_vs_baseline.value,
        GOAL_LEASE_P50_VS_BASELINE_MAX,
        met_text(&gl.lease_p50_vs_baseline)
    );
    s += &format!(
        "  lease reads/s = {:.1}x log reads/s; goal >= {}x: {}\n",
        gl.lease_vs_log_reads_per_s.value,
        GOAL_LEASE_VS_LOG_READS_MIN,
        met_text(&gl.lease_vs_log_reads_per_s)
    );
    s += &format!(
        "  (lease p99 = {:.1}x baseline p99; read-index p50 = {:.1}x, log read p50 = {:.1}x \
         baseline p50; read-index reads/s = {:.1}x log reads/s)\n",
        gl.lease_p99_vs_baseline,
        gl.index_p50_vs_baseline,
        gl.log_p50_vs_baseline,
        gl.index_vs_log_reads_per_s
    );
    for p in &g.phases {
        if p.name != "lease" && p.name != "index" {
            continue;
        }
        let served_lease: u64 = p.nodes.iter().map(|n| n.reads_lease).sum();
        let served_index: u64 = p.nodes.iter().map(|n| n.reads_index).sum();
        let failed: u64 = p.nodes.iter().map(|n| n.reads_failed).sum();
        let rounds: u64 = p.nodes.iter().map(|n| n.lease_rounds_sent).sum();
        let what = if p.name == "lease" {
            "pure lease-read"
        } else {
            "read-index"
        };
        s += &format!(
            "  WAL during the {what} phase (warm-up included, {} nodes): {} durable writes, {} \
             WAL writes, {} records: {}; reads served by lease {}, by read index {}, failed \
             {}; lease rounds sent {}\n",
            p.nodes.len(),
            p.wal.durable_writes,
            p.wal.wal_writes,
            p.wal.records,
            if p.wal.grew {
                "GREW (FLAG: reads must write nothing)"
            } else {
                "nothing written (ok)"
            },
            served_lease,
            served_index,
            failed,
            rounds
        );
    }
    s
}

fn run_inner(args: &ReadsArgs) -> Result<(), String> {
    validate(args)?;
    let mut rss_log = RssLog::start();
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)
        .map_err(|e| format!("cannot create --dir {}: {e}", parent.display()))?;
    let data = tempfile::Builder::new()
        .prefix("paxring-bench-reads-")
        .tempdir_in(&parent)
        .map_err(|e| format!("cannot make a data dir in {}: {e}", parent.display()))?;
    let data_dir = data.path().to_path_buf();
    eprintln!(
        "paxring-bench reads: groups {:?}, {} replicas (separate processes) on 127.0.0.1, {} \
         clients in this process; data in {}",
        args.groups,
        REPLICAS,
        args.clients,
        data_dir.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    let mut points = Vec::new();
    let mut finals = Vec::new();
    for (n, &groups) in args.groups.iter().enumerate() {
        let dir = data_dir.join(format!("cluster-{}", n + 1));
        let (out, f) = run_groups(args, groups, &dir, &runtime, &local)?;
        rss_log.sample(&format!("groups={groups} done"));
        print!("{}", groups_text(args, &out));
        points.push(out);
        finals.extend(f);
        if !args.keep {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
        }
    }
    rss_log.after_load();
    let run = ReadsRunOut {
        mode: "reads".into(),
        clients: args.clients,
        keys_per_group: args.keys,
        value_bytes: args.value_bytes,
        write_percent: args.write_percent,
        seconds: args.seconds,
        warmup_s: args.warmup,
        cores: args.cores,
        pipeline: args.pipeline,
        goal_lease_p50_vs_baseline_max: GOAL_LEASE_P50_VS_BASELINE_MAX,
        goal_lease_vs_log_reads_min: GOAL_LEASE_VS_LOG_READS_MIN,
        points,
        nodes_final: finals,
        rss: rss_log.finish(),
        data_dir: args.keep.then(|| data_dir.display().to_string()),
    };
    println!("{}", rss::summary_line(&run.rss));
    for (n, f) in run.nodes_final.iter().enumerate() {
        let groups = run.points[n / REPLICAS as usize].groups;
        println!(
            "memory (node {}, groups={groups}): RSS started {}, at exit {}; high-water mark {}; \
             anonymous at exit {}",
            f.id,
            rss::mib_text(f.rss_bytes_start),
            rss::mib_text(f.rss_bytes_end),
            rss::mib_text(f.rss_hwm_bytes),
            rss::mib_text(f.rss_anon_bytes_end)
        );
    }
    if let Some(path) = &args.json {
        crate::report::write_json(path, &run)?;
        eprintln!("wrote {}", path.display());
    }
    if args.keep {
        eprintln!("kept the data in {}", data.keep().display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Proves that the goals are evaluated from the figures (a missing figure never meets a
    //! goal), that the WAL check flags any write, that latencies are reported in µs, and that
    //! the defaults and bad flags are what the docs say.
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReadsArgs,
    }

    fn args(argv: &[&str]) -> ReadsArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .expect("parses")
            .args
    }

    fn kind(p50: f64, ops_per_s: f64) -> KindOut {
        KindOut {
            ops: 1,
            ops_per_s,
            latency_us: LatencyUs {
                p50,
                p99: p50 * 3.0,
                p999: p50 * 4.0,
                max: p50 * 5.0,
            },
            not_leader: 0,
            overloaded: 0,
            failed: 0,
            wrong_values: 0,
        }
    }

    #[test]
    fn goals_follow_the_figures() {
        let g = goals(
            &kind(40.0, 50_000.0),
            &kind(60.0, 40_000.0),
            &kind(200.0, 20_000.0),
            &kind(800.0, 5_000.0),
        );
        assert!((g.lease_p50_vs_baseline.value - 1.5).abs() < 1e-9);
        assert!(g.lease_p50_vs_baseline.met);
        assert!((g.lease_vs_log_reads_per_s.value - 8.0).abs() < 1e-9);
        assert!(!g.lease_vs_log_reads_per_s.met);
        assert!((g.log_p50_vs_baseline - 20.0).abs() < 1e-9);
        assert!((g.index_vs_log_reads_per_s - 4.0).abs() < 1e-9);
        // Exactly at the bound meets it; beyond does not.
        assert!(goal_at_most(2.0, 2.0).met);
        assert!(!goal_at_most(2.01, 2.0).met);
        assert!(goal_at_least(10.0, 10.0).met);
        // No figure (no log reads, no samples) is never a met goal.
        assert!(!goal_at_least(ratio(1.0, 0.0), 10.0).met);
        assert!(!goal_at_most(f64::NAN, 2.0).met);
        let empty = goals(
            &kind(f64::NAN, 0.0),
            &kind(60.0, 1.0),
            &kind(1.0, 1.0),
            &kind(1.0, 0.0),
        );
        assert!(!empty.lease_p50_vs_baseline.met && !empty.lease_vs_log_reads_per_s.met);
    }

    #[test]
    fn the_wal_check_flags_any_write() {
        let quiet = vec![
            NodeDelta {
                id: 1,
                reads_lease: 1000,
                lease_rounds_sent: 60,
                ..NodeDelta::default()
            },
            NodeDelta {
                id: 2,
                ..NodeDelta::default()
            },
        ];
        assert_eq!(wal_check(&quiet), WalCheck::default());
        let mut wrote = quiet.clone();
        wrote[1].records = 2;
        wrote[1].durable_writes = 1;
        let c = wal_check(&wrote);
        assert!(c.grew);
        assert_eq!((c.records, c.durable_writes), (2, 1));
    }

    #[test]
    fn latencies_are_reported_in_microseconds() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).unwrap();
        assert!(latency_of(&h).p50.is_nan());
        for _ in 0..100 {
            h.record(25_000).unwrap();
        }
        let l = latency_of(&h);
        assert!((l.p50 - 25.0).abs() < 0.1, "{l:?}");
        assert_eq!(us_text(25.04), "25.0 µs");
        assert_eq!(us_text(1500.0), "1.50 ms");
    }

    #[test]
    fn defaults_and_bad_flags() {
        let a = args(&[]);
        assert_eq!(a.groups, vec![1, 100]);
        assert!(validate(&a).is_ok());
        assert_eq!(args(&["--groups", "5,20,7"]).groups, vec![5, 20, 7]);
        assert!(validate(&args(&["--groups", "0"])).is_err());
        assert!(validate(&args(&["--clients", "0"])).is_err());
        assert!(validate(&args(&["--seconds", "0"])).is_err());
        assert!(validate(&args(&["--keys", "0"])).is_err());
        assert!(validate(&args(&["--write-percent", "101"])).is_err());
        assert!(validate(&args(&["--value-bytes", "0"])).is_err());
    }
}
