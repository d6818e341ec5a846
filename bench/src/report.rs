//! The cluster benchmark's outputs: the JSON document, the progress and table text, and the
//! HTML/SVG report (latency CDF and throughput over time, drawn with `plotters`).
//!
//! Owns: the output schema and its presentation. Never: measures anything (it formats what the
//! coordinator measured).

use crate::ceilings::Ceilings;
use crate::rss::{self, RssReport};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Latency percentiles, microseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyUs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// One replica's share of a point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaOut {
    /// Node id.
    pub id: u32,
    /// Commits its clients saw (0 on a node that leads no group).
    pub commits: u64,
    /// Durable writes in the window.
    pub durable_writes: u64,
    /// Writing rounds in the window.
    pub write_rounds: u64,
    /// Durable writes per writing round.
    pub durable_writes_per_round: f64,
    /// Records per writing round.
    pub records_per_round: f64,
    /// Groups per writing round.
    pub groups_per_round: f64,
    /// WAL bytes written in the window.
    pub bytes_written: u64,
    /// CPU seconds of the process in the window.
    pub cpu_s: f64,
    /// The WAL's write-to-durable latency p50 (since the node started), µs.
    pub wal_write_p50_us: u64,
    /// Same, 99th percentile.
    pub wal_write_p99_us: u64,
    /// The node process's VmRSS right after the point's load, bytes (0: not read).
    #[serde(default)]
    pub rss_bytes: u64,
    /// Its VmHWM (the largest resident size since it started) at the same moment, bytes.
    #[serde(default)]
    pub rss_hwm_bytes: u64,
    /// Its RssAnon (anonymous memory: the heap) at the same moment, bytes (0: not read).
    #[serde(default)]
    pub rss_anon_bytes: u64,
    /// (seconds into the window, VmRSS, RssAnon) every progress interval: with a long
    /// `--seconds`, whether the node's memory stays flat.
    #[serde(default)]
    pub rss_over_time: Vec<(f64, u64, u64)>,
}

/// One follower's share of a point (`--followers N`): how well a non-voting replica keeps up
/// with the voters' commit rate. Every figure is measured in the follower's own process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FollowerOut {
    /// Node id.
    pub id: u32,
    /// Length of its window (its own clock, aligned with the voters' within milliseconds), s.
    pub seconds: f64,
    /// Commands its executors applied in the window (`applied_commands` delta).
    pub applied_commands: u64,
    /// `applied_commands / seconds`.
    pub applied_per_s: f64,
    /// `applied_per_s` / the voters' `commits_per_s` over the same window (1.0: it keeps up).
    pub applied_vs_commits: f64,
    /// Instances heard chosen and not applied, over every group, at the window's end.
    pub lag_instances_end: u64,
    /// The same for the group that lags most, at the window's end.
    pub lag_instances_max_end: u64,
    /// `lag_instances` once the voters' clients drained (after the coordinator waited up to
    /// `drain_wait_s` for it to reach 0 and for the follower's applied count to reach the
    /// voters').
    pub lag_instances_drained: u64,
    /// `lag_instances_max` at the same moment.
    pub lag_instances_max_drained: u64,
    /// The most commands any voter had applied minus the follower's, at the same moment
    /// (cumulative since the cluster started; 0: it applied everything the voters did).
    pub applied_behind_drained: u64,
    /// How long the coordinator waited after the drain for the above, s.
    pub drain_wait_s: f64,
    /// CPU seconds of its process in the window.
    pub cpu_s: f64,
    /// CPU µs of its process per voters' commit (not in the point's `cpu_us_per_commit`).
    pub cpu_us_per_commit: f64,
    /// Durable writes in the window (a follower keeps the leader's Accepts in its WAL).
    pub durable_writes: u64,
    /// WAL bytes written in the window.
    pub bytes_written: u64,
    /// The process's VmRSS right after the point's load, bytes (0: not read).
    pub rss_bytes: u64,
    /// Its RssAnon at the same moment, bytes (0: not read).
    pub rss_anon_bytes: u64,
}

/// One point's figures. The schema plus extra fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointOut {
    /// Paxos groups.
    pub groups: u32,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Instances in flight per group.
    pub pipeline_depth: u32,
    /// Closed-loop clients in the cluster.
    pub clients: usize,
    /// Open-loop rate (proposals/s in the cluster), if any.
    pub rate_per_s: Option<f64>,
    /// Measured seconds.
    pub seconds: f64,
    /// Commits answered in the window.
    pub commits: u64,
    /// Commits per second.
    pub commits_per_s: f64,
    /// Committed application payload, MB/s (10^6 bytes).
    pub payload_mb_per_s: f64,
    /// Latency percentiles from the merged hdrhistogram.
    pub latency_us: LatencyUs,
    /// Durable writes per commit, per replica (all replicas' durable writes / 3 / commits).
    pub durable_writes_per_commit: f64,
    /// Durable writes per writing round (all replicas; 1.0 is the design).
    pub durable_writes_per_round: f64,
    /// Records per writing round (all replicas).
    pub records_per_round: f64,
    /// Groups with records per writing round (all replicas).
    pub groups_per_round: f64,
    /// Sequential network round trips per committed instance (leaders).
    pub rtts_per_commit: f64,
    /// Commands per committed instance (batching).
    pub commands_per_instance: f64,
    /// WAL bytes written by all replicas / (3 x committed application bytes).
    pub write_amplification: f64,
    /// CPU microseconds (all 3 voter processes, load generators included) per commit.
    pub cpu_us_per_commit: f64,
    /// CPU seconds per second of the 3 voter processes (the machine has as many as it has
    /// CPUs; followers' CPU is in `followers`).
    pub cpu_cores_busy: f64,
    /// (3 x payload MB/s) / disk MB/s of 3 concurrent 1 MiB writers with fdatasync.
    pub bandwidth_vs_disk: f64,
    /// Latency p50 / (disk fsync p50 (4 KiB, 3 writers) + loopback RTT p50).
    pub latency_vs_floor: f64,
    /// Latency p50 / (4 KiB write + fdatasync p50 + loopback RTT p50): the floor with the
    /// write's own time counted.
    pub latency_vs_durable_floor: f64,
    /// The WAL's write-to-durable latency p50, largest over replicas, µs (compare with the
    /// disk ceiling's write + fdatasync p50).
    pub wal_write_p50_us: u64,
    /// Same, 99th percentile.
    pub wal_write_p99_us: u64,
    /// Proposals refused as NotLeader.
    pub not_leader: u64,
    /// Proposals refused as Overloaded.
    pub overloaded: u64,
    /// Proposals with an unknown outcome or another error.
    pub unknown: u64,
    /// Open-loop starts skipped because too many were in flight.
    pub open_loop_skipped: u64,
    /// Per replica (the voters: every figure above is theirs).
    pub replicas: Vec<ReplicaOut>,
    /// Per follower (`--followers N`; empty without).
    #[serde(default)]
    pub followers: Vec<FollowerOut>,
    /// (seconds into the window, commits/s over the last interval).
    pub throughput_over_time: Vec<(f64, f64)>,
    /// (latency µs, fraction of commits at or below it).
    pub latency_cdf: Vec<(f64, f64)>,
}

/// A node's cumulative counters when its cluster stopped.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeFinal {
    /// Node id.
    pub id: u32,
    /// Process id of what the coordinator started (the node, or strace around it).
    pub pid: u32,
    /// The node is a follower (a non-voting replica).
    #[serde(default)]
    pub follower: bool,
    /// Durable writes since the node started.
    pub durable_writes: u64,
    /// WAL batch writes since the node started.
    pub wal_writes: u64,
    /// VmRSS when the node had started, bytes (0: not read).
    #[serde(default)]
    pub rss_bytes_start: u64,
    /// VmRSS just before it shut down, bytes.
    #[serde(default)]
    pub rss_bytes_end: u64,
    /// VmHWM then: the node process's largest resident size, bytes.
    #[serde(default)]
    pub rss_hwm_bytes: u64,
    /// RssAnon then (the heap), bytes.
    #[serde(default)]
    pub rss_anon_bytes_end: u64,
}

/// The whole run, as `--json` writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunOut {
    /// The ceilings of this run used for the ratios: the better figure of the two measurements
    /// (absent only when skipped).
    pub ceilings: Option<Ceilings>,
    /// Both measurements: before the points and after them.
    pub ceilings_measured: Vec<Ceilings>,
    /// Every point.
    pub points: Vec<PointOut>,
    /// Every node's final counters, cluster by cluster.
    pub nodes_final: Vec<NodeFinal>,
    /// The profile.
    pub profile: String,
    /// The data directory, when kept.
    pub data_dir: Option<String>,
    /// The coordinator's own memory (the nodes' is in `points[].replicas[]` and
    /// `nodes_final`).
    #[serde(default)]
    pub rss: RssReport,
}

/// Sets a point's ratios against the run's ceilings.
pub fn apply_ceilings(p: &mut PointOut, c: &Ceilings) {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    p.bandwidth_vs_disk = ratio(
        p.replicas.len() as f64 * p.payload_mb_per_s,
        c.disk_mb_per_s_3w,
    );
    p.latency_vs_floor = ratio(p.latency_us.p50, c.disk_fsync_p50_us + c.rtt_us_p50);
    p.latency_vs_durable_floor =
        ratio(p.latency_us.p50, c.disk_durable_write_p50_us + c.rtt_us_p50);
}

/// "100 B", "4 KiB", "100 KB".
pub fn bytes_text(bytes: usize) -> String {
    if bytes >= 1024 * 1024 && bytes % (1024 * 1024) == 0 {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else if bytes >= 1000 && bytes % 1000 == 0 {
        format!("{} KB", bytes / 1000)
    } else {
        format!("{bytes} B")
    }
}

fn us_text(us: f64) -> String {
    if !us.is_finite() {
        "-".into()
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn num(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "-".into()
    }
}

/// The ceilings as text.
pub fn ceilings_text(c: &Ceilings) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Ceilings (this run, same file system as the data; O_DIRECT write + fdatasync each):"
    );
    let _ = writeln!(
        s,
        "  {:>7} {:>8} {:>10} {:>9} {:>11} {:>14} {:>10}",
        "writers", "size", "writes/s", "MB/s", "fsync p50", "write+sync p50", "p99"
    );
    for cell in &c.disk {
        let _ = writeln!(
            s,
            "  {:>7} {:>8} {:>10.0} {:>9.1} {:>11} {:>14} {:>10}",
            cell.writers,
            bytes_text(cell.write_bytes),
            cell.writes_per_s,
            cell.mb_per_s,
            us_text(cell.fsync_p50_us as f64),
            us_text(cell.durable_write_p50_us as f64),
            us_text(cell.durable_write_p99_us as f64)
        );
    }
    if let (Some(io), Some(load)) = (c.io_pressure_some_avg10, c.load_avg_1m) {
        let _ = writeln!(
            s,
            "  machine while measuring: I/O pressure (some, avg10) {io:.1}%, load average {load:.2}{}",
            if io > 10.0 || load > 2.5 {
                "  <- other programs share the disk/CPUs: figures are noisy"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        s,
        "  loopback TCP ping-pong (64 B, TCP_NODELAY): p50 {}, p99 {}",
        us_text(c.rtt_us_p50),
        us_text(c.rtt_us_p99)
    );
    let _ = writeln!(
        s,
        "  latency floor = fsync p50 (4 KiB, 3 writers) + RTT p50 = {} (with the write: {}); disk ceiling (3 writers, 1 MiB) = {:.1} MB/s",
        us_text(c.disk_fsync_p50_us + c.rtt_us_p50),
        us_text(c.disk_durable_write_p50_us + c.rtt_us_p50),
        c.disk_mb_per_s_3w
    );
    s
}

/// The memory lines printed at the end: every node process's resident size when it started,
/// after each point's load and when it stopped, and the coordinator's.
pub fn memory_text(run: &RunOut) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "node memory (VmRSS when started / after the point's load / at exit; VmHWM at exit; \
         RssAnon after the load / at exit):"
    );
    // Every point ran on its own cluster, and each cluster's nodes are listed in order.
    let mut offset = 0;
    for p in &run.points {
        let end = (offset + p.replicas.len() + p.followers.len()).min(run.nodes_final.len());
        let finals = &run.nodes_final[offset.min(end)..end];
        offset = end;
        let nodes = p
            .replicas
            .iter()
            .map(|r| (r.id, r.rss_bytes, r.rss_anon_bytes, ""))
            .chain(
                p.followers
                    .iter()
                    .map(|f| (f.id, f.rss_bytes, f.rss_anon_bytes, " (follower)")),
            );
        for (id, rss_bytes, rss_anon_bytes, role) in nodes {
            let Some(f) = finals.iter().find(|f| f.id == id) else {
                continue;
            };
            let _ = writeln!(
                s,
                "  {:<22} node {}{role}: {} / {} / {}; peak {}; heap {} / {}",
                point_name(p),
                id,
                rss::mib_text(f.rss_bytes_start),
                rss::mib_text(rss_bytes),
                rss::mib_text(f.rss_bytes_end),
                rss::mib_text(f.rss_hwm_bytes),
                rss::mib_text(rss_anon_bytes),
                rss::mib_text(f.rss_anon_bytes_end)
            );
        }
    }
    let _ = writeln!(s, "coordinator {}", rss::summary_line(&run.rss));
    s
}

/// The lines printed when a point finishes: the voters' figures, then one line per follower.
pub fn point_line(label: &str, p: &PointOut) -> String {
    let mut s = voters_line(label, p);
    for f in &p.followers {
        s.push('\n');
        s.push_str(&follower_line(f, p.commits_per_s));
    }
    s
}

/// One follower's figures against the voters' commits/s.
pub fn follower_line(f: &FollowerOut, commits_per_s: f64) -> String {
    format!(
        "  follower {}: applied {:.0}/s = {} x commits/s ({:.0}); lag at window end {} instances \
         (worst group {}); after drain {} (worst group {}, {} commands behind the voters, \
         waited {:.2} s); CPU {:.2} s = {} µs per commit (not in cpuµs)",
        f.id,
        f.applied_per_s,
        num(f.applied_vs_commits, 3),
        commits_per_s,
        f.lag_instances_end,
        f.lag_instances_max_end,
        f.lag_instances_drained,
        f.lag_instances_max_drained,
        f.applied_behind_drained,
        f.drain_wait_s,
        f.cpu_s,
        num(f.cpu_us_per_commit, 2)
    )
}

fn voters_line(label: &str, p: &PointOut) -> String {
    format!(
        "{label}: {:.0} commits/s, {:.2} MB/s, p50 {} p99 {}, WAL write p50 {} p99 {}, {} durable writes/round, CPU {:.2} cores, largest node RSS {}{}",
        p.commits_per_s,
        p.payload_mb_per_s,
        us_text(p.latency_us.p50),
        us_text(p.latency_us.p99),
        us_text(p.wal_write_p50_us as f64),
        us_text(p.wal_write_p99_us as f64),
        num(p.durable_writes_per_round, 2),
        p.cpu_cores_busy,
        rss::mib_text(p.replicas.iter().map(|r| r.rss_bytes).max().unwrap_or(0)),
        if p.not_leader + p.overloaded + p.unknown > 0 {
            format!(
                " (refused: {} not-leader, {} overloaded, {} unknown)",
                p.not_leader, p.overloaded, p.unknown
            )
        } else {
            String::new()
        }
    )
}

/// The table printed at the end.
pub fn table(run: &RunOut) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>6} {:>8} {:>4} {:>7} | {:>10} {:>8} | {:>9} {:>9} {:>9} {:>9} | {:>7} {:>7} {:>8} {:>8} {:>6} {:>6} {:>7} | {:>7} {:>9}",
        "groups", "value", "pipe", "clients", "commits/s", "MB/s", "p50", "p99", "p999", "max",
        "dw/cmt", "dw/rnd", "rec/rnd", "grp/rnd", "rtt", "wamp", "cpuµs", "bw/disk", "p50/floor"
    );
    for p in &run.points {
        let _ = writeln!(
            s,
            "{:>6} {:>8} {:>4} {:>7} | {:>10.0} {:>8.2} | {:>9} {:>9} {:>9} {:>9} | {:>7} {:>7} {:>8} {:>8} {:>6} {:>6} {:>7} | {:>7} {:>9}",
            p.groups,
            bytes_text(p.value_bytes),
            p.pipeline_depth,
            p.clients,
            p.commits_per_s,
            p.payload_mb_per_s,
            us_text(p.latency_us.p50),
            us_text(p.latency_us.p99),
            us_text(p.latency_us.p999),
            us_text(p.latency_us.max),
            num(p.durable_writes_per_commit, 4),
            num(p.durable_writes_per_round, 3),
            num(p.records_per_round, 1),
            num(p.groups_per_round, 1),
            num(p.rtts_per_commit, 2),
            num(p.write_amplification, 1),
            num(p.cpu_us_per_commit, 1),
            num(p.bandwidth_vs_disk, 3),
            num(p.latency_vs_floor, 2),
        );
    }
    let _ = writeln!(
        s,
        "dw/cmt: durable writes per commit per replica; dw/rnd: durable writes per writing round; \
         rec/rnd, grp/rnd: records and groups per WAL write; rtt: round trips per committed instance; \
         wamp: WAL bytes / payload bytes; cpuµs: CPU µs of the 3 processes per commit; \
         bw/disk: 3 x payload MB/s / disk MB/s (3 writers, 1 MiB); p50/floor: p50 / (fsync p50 (4 KiB, 3 writers) + RTT p50)"
    );
    if run.points.iter().any(|p| !p.followers.is_empty()) {
        s.push_str(&followers_table(run));
    }
    s
}

/// The followers' figures, point by point (only printed when a point had followers).
fn followers_table(run: &RunOut) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>6} {:>8} {:>4} {:>7} | {:>4} {:>10} {:>10} {:>7} | {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>7}",
        "groups", "value", "pipe", "clients", "node", "commits/s", "applied/s", "ratio",
        "lag end", "max end", "lag drn", "max drn", "behind", "cpuµs"
    );
    for p in &run.points {
        for f in &p.followers {
            let _ = writeln!(
                s,
                "{:>6} {:>8} {:>4} {:>7} | {:>4} {:>10.0} {:>10.0} {:>7} | {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>7}",
                p.groups,
                bytes_text(p.value_bytes),
                p.pipeline_depth,
                p.clients,
                f.id,
                p.commits_per_s,
                f.applied_per_s,
                num(f.applied_vs_commits, 3),
                f.lag_instances_end,
                f.lag_instances_max_end,
                f.lag_instances_drained,
                f.lag_instances_max_drained,
                f.applied_behind_drained,
                num(f.cpu_us_per_commit, 2),
            );
        }
    }
    let _ = writeln!(
        s,
        "followers (non-voting, not in the figures above): applied/s: commands the follower \
         applied per second of the window; ratio: applied/s / the voters' commits/s; lag end, \
         max end: instances heard chosen and not applied at the window's end (all groups, worst \
         group); lag drn, max drn, behind: the same after the drain, and commands the follower \
         had applied fewer than the voters; cpuµs: the follower's CPU µs per voters' commit"
    );
    s
}

/// (latency µs, cumulative fraction) at the histogram's percentile steps (bounded in count).
pub fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(f64, f64)> = h
        .iter_quantiles(8)
        .map(|v| (v.value_iterated_to() as f64, v.quantile_iterated_to()))
        .collect();
    // Keep the highest fraction reached at each latency value.
    out.dedup_by(|later, kept| {
        if later.0 == kept.0 {
            kept.1 = kept.1.max(later.1);
            true
        } else {
            false
        }
    });
    if out.len() > 1000 {
        let step = out.len().div_ceil(1000);
        let last = *out.last().expect("non-empty");
        out = out.into_iter().step_by(step).collect();
        out.push(last);
    }
    out
}

fn point_name(p: &PointOut) -> String {
    format!(
        "{}g {} p{} c{}",
        p.groups,
        bytes_text(p.value_bytes),
        p.pipeline_depth,
        p.clients
    )
}

/// Draws both charts into one SVG string.
pub fn svg(run: &RunOut) -> Result<String, String> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (1000, 900)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (top, bottom) = root.split_vertically(450);
        let max_us = run
            .points
            .iter()
            .flat_map(|p| p.latency_cdf.iter().map(|c| c.0))
            .fold(10.0, f64::max);
        let mut cdf = ChartBuilder::on(&top)
            .caption("Latency CDF (µs, log scale)", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d((1f64..max_us * 1.2).log_scale(), 0f64..1f64)
            .map_err(|e| e.to_string())?;
        cdf.configure_mesh()
            .x_desc("latency µs")
            .y_desc("fraction of commits")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, p) in run.points.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            cdf.draw_series(LineSeries::new(
                p.latency_cdf.iter().map(|&(x, y)| (x.max(1.0), y)),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(point_name(p))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        cdf.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;

        let max_t = run
            .points
            .iter()
            .flat_map(|p| p.throughput_over_time.iter().map(|c| c.0))
            .fold(1.0, f64::max);
        let max_rate = run
            .points
            .iter()
            .flat_map(|p| p.throughput_over_time.iter().map(|c| c.1))
            .fold(1.0, f64::max);
        let min_rate = run
            .points
            .iter()
            .flat_map(|p| p.throughput_over_time.iter().map(|c| c.1.max(1.0)))
            .fold(max_rate, f64::min)
            / 2.0;
        let mut over_time = ChartBuilder::on(&bottom)
            .caption(
                "Throughput over time (commits/s, log scale)",
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..max_t, (min_rate..max_rate * 1.5).log_scale())
            .map_err(|e| e.to_string())?;
        over_time
            .configure_mesh()
            .x_desc("seconds into the point")
            .y_desc("commits/s")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, p) in run.points.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            over_time
                .draw_series(LineSeries::new(
                    p.throughput_over_time
                        .iter()
                        .map(|&(t, r)| (t, r.max(min_rate))),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(point_name(p))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        over_time
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(text)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes the report: `.svg` (the charts) or `.html` (ceilings, table and charts).
pub fn write_report(run: &RunOut, path: &Path) -> Result<(), String> {
    let chart = svg(run)?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let body = if ext == "svg" {
        chart
    } else {
        let mut html = String::from(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>paxring-bench cluster report</title>\
             <style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}</style></head><body>\n\
             <h1>paxring-bench: 3-replica cluster</h1>\n",
        );
        for (i, c) in run.ceilings_measured.iter().enumerate() {
            let _ = writeln!(
                html,
                "<h2>Ceilings ({})</h2><pre>{}</pre>",
                if i == 0 {
                    "before the points"
                } else {
                    "after the points"
                },
                html_escape(&ceilings_text(c))
            );
        }
        let _ = writeln!(
            html,
            "<h2>Points</h2><pre>{}</pre>",
            html_escape(&table(run))
        );
        let _ = writeln!(html, "<h2>Charts</h2>\n{chart}\n</body></html>");
        html
    };
    std::fs::write(path, body).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes `value` as pretty JSON (one trailing newline) to `path`, the benches' `--json`.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n")
        .map_err(|e| format!("cannot write --json {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    //! Proves that sizes print in the units and that a CDF is monotone and ends at 1.
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes_text(100), "100 B");
        assert_eq!(bytes_text(4096), "4 KiB");
        assert_eq!(bytes_text(100_000), "100 KB");
        assert_eq!(bytes_text(1 << 20), "1 MiB");
    }

    #[test]
    fn cdf_is_monotone() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).unwrap();
        for v in 1..5000u64 {
            h.record(v * 7 % 9000 + 1).unwrap();
        }
        let cdf = cdf_points(&h);
        assert!(cdf.len() > 10 && cdf.len() <= 1001);
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!((cdf.last().unwrap().1 - 1.0).abs() < 1e-9);
    }
}
