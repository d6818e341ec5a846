//! `paxring-bench catchup`: how fast a restarted follower catches up from its peers' WALs
//! (streaming catch-up), against the streaming ceilings measured in the same run (sequential
//! O_DIRECT disk reads, one loopback TCP stream), and what catching up costs the serving
//! leader's commit latency.
//!
//! One process runs three nodes on 127.0.0.1 through the embedding API, data on the real disk
//! (`--dir`), every node with `batch_commands_max = 1` so that one command is one instance:
//! 1. the streaming ceilings (`ceilings::measure_streams`, a file as large as the lag: disk
//!    read, disk write with fdatasync, one loopback TCP stream, the round trip);
//! 2. the cluster starts and a steady open-loop load (`--rate` commands/s, latency from each
//!    command's intended start, waits for a leader and retries included) runs from here to
//!    the end; `--seconds` of it with every replica current are the baseline `before`;
//! 3. a follower (a node that leads no group, when there is one) shuts down and the fill
//!    commits `--lag-instances` commands of `--value-bytes` on the other two;
//! 4. the follower restarts from its data dir: catch-up ends when its `applied_next` reaches,
//!    in every group, the leader's at the restart; convergence when it is as current as the
//!    healthy follower;
//! 5. `--seconds` more of the steady load are the baseline `after`; the ceilings again;
//! 6. with every node stopped, the read path alone (`probe`): the missed values read from the
//!    serving leader's WAL as the driver reads them, cold and warm.
//!
//! Ratios use the better of the two ceiling measurements and the lower of the two baseline
//! p99s (noise from other programs only makes a ceiling or a baseline look worse).
//!
//! Owns: the catch-up run, its figures and its report. Never: stops a node except through its
//! API (a node is shut down, or stopped when dropped on an error path), leaves a thread running
//! after it returns, or reports a figure it did not measure in this run.

pub mod load;
pub mod probe;

use crate::ceilings::{self, StreamCeilings};
use crate::rss::{self, Memory, RssLog, RssReport};
use bytes::Bytes;
use hdrhistogram::Histogram;
use load::{Phase, PhaseClock, PhaseLoad, StopOnDrop};
use paxring_engine::runtime::{Node, NodeConfig, NodeStats, StateMachine, StateMachineFactory};
use paxring_wal::{GroupId, Instance};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The goal for catch-up: at least this fraction of the slower ceiling.
pub const GOAL_RATIO_MIN: f64 = 0.5;
/// The goal for the serving leader: p99 at most this multiple of the baseline's.
pub const GOAL_P99_RATIO_MAX: f64 = 2.0;
/// Replicas in the cluster.
const REPLICAS: usize = 3;
/// Longest wait for every group to have a leader.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(30);
/// Steady load before the baseline window (not reported).
const WARM_UP: Duration = Duration::from_millis(500);
/// How often the catch-up loop looks at `applied_next`.
const POLL: Duration = Duration::from_millis(1);
/// How often a point of the catch-up progress series is kept.
const PROGRESS_EVERY: Duration = Duration::from_millis(50);
/// Most points of the progress series (at `PROGRESS_EVERY`, 200 s).
const PROGRESS_MAX: usize = 4000;
/// How often the memory sampler runs.
const RSS_EVERY: Duration = Duration::from_millis(250);
/// The read ceiling's file: as large as the lag, within these bounds (bytes).
const READ_FILE_BYTES_MIN: u64 = 16 << 20;
/// See `READ_FILE_BYTES_MIN`.
const READ_FILE_BYTES_MAX: u64 = 256 << 20;

/// Arguments of `paxring-bench catchup`.
#[derive(clap::Args, Debug, Clone)]
pub struct CatchupArgs {
    /// Paxos groups (the lag and the steady load are spread over them round robin).
    #[arg(long, default_value_t = 1)]
    pub groups: u32,
    /// Bytes of each command (one command per instance).
    #[arg(long = "value-bytes", default_value_t = 1000)]
    pub value_bytes: usize,
    /// Instances (over all groups) the stopped follower is made to miss. Keep it well above
    /// the network thread's outbound queue (65536 frames by default), or the follower may
    /// learn them from the frames queued for it while it was down rather than from the WAL.
    #[arg(long, default_value_t = 150_000)]
    pub lag_instances: u64,
    /// Seconds of each baseline latency window (before the stop, after convergence).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// The steady open-loop load on the serving leader(s), proposals/s in the whole cluster.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Instances in flight per group (default: the runtime's default).
    #[arg(long)]
    pub pipeline: Option<u32>,
    /// Core threads per node.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Seconds of each streaming ceiling (disk read, loopback stream), measured twice.
    #[arg(long, default_value_t = 1.0)]
    pub ceiling_seconds: f64,
    /// Longest wait for the fill, for the catch-up and for convergence (each), in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Where the data lives (a fresh directory is made inside; default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the data directory at the end.
    #[arg(long)]
    pub keep: bool,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Limit each serving core's catch-up reads to this many MB/s (the runtime's
    /// `catchup_serve_bytes_per_sec`; default: no limit).
    #[arg(long = "serve-mbps")]
    pub serve_mbps: Option<f64>,
}

/// Latency of the steady load in one phase.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseLatency {
    /// Commands due in the phase.
    pub due: u64,
    /// Commits (latency samples).
    pub samples: u64,
    /// Median, µs (NaN without samples).
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Largest, µs.
    pub max_us: f64,
    /// NotLeader answers (proposed again).
    pub not_leader: u64,
    /// Overloaded answers (proposed again).
    pub overloaded: u64,
    /// Outcome unknown or failed otherwise (not proposed again).
    pub failed: u64,
    /// Commands that found no serving leader when due and waited for one.
    pub waited_for_leader: u64,
    /// Commands not started: too many in flight.
    pub skipped_in_flight: u64,
    /// Commands not committed when the load stopped.
    pub abandoned: u64,
}

impl PhaseLatency {
    fn of(load: &PhaseLoad) -> PhaseLatency {
        let h: &Histogram<u64> = &load.histogram;
        let q = |quantile: f64| {
            if h.is_empty() {
                f64::NAN
            } else {
                h.value_at_quantile(quantile) as f64
            }
        };
        PhaseLatency {
            due: load.due,
            samples: load.commits,
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: q(1.0),
            not_leader: load.not_leader,
            overloaded: load.overloaded,
            failed: load.failed,
            waited_for_leader: load.waited_for_leader,
            skipped_in_flight: load.skipped_in_flight,
            abandoned: load.abandoned,
        }
    }
}

/// The steady load's latency per phase and the ratio the issue asks for.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyOut {
    /// Three replicas current, before the stop.
    pub before: PhaseLatency,
    /// While the follower was down (the fill ran at full speed: not a baseline).
    pub fill: PhaseLatency,
    /// From the restart until the follower reached the leader's point at the restart.
    pub during_catch_up: PhaseLatency,
    /// From there until convergence.
    pub converge: PhaseLatency,
    /// Three replicas current again, after convergence.
    pub after: PhaseLatency,
    /// The baseline p99 used: the lower of `before` and `after`, µs.
    pub baseline_p99_us: f64,
    /// Which one that was.
    pub baseline: String,
    /// p99 during catch-up / the baseline p99.
    pub p99_ratio: f64,
    /// p99 during catch-up / p99 before.
    pub p99_ratio_vs_before: f64,
    /// p99 during catch-up / p99 after.
    pub p99_ratio_vs_after: f64,
    /// The goal: `p99_ratio` at most this.
    pub goal_p99_ratio_max: f64,
}

/// What the fill did.
#[derive(Clone, Debug, Serialize)]
pub struct FillOut {
    /// Commands (instances) committed by the fill.
    pub instances: u64,
    /// Seconds.
    pub seconds: f64,
    /// Instances per second (two replicas up).
    pub instances_per_s: f64,
    /// Payload MB/s.
    pub mb_per_s: f64,
    /// Refused as NotLeader (sent again).
    pub not_leader: u64,
    /// Refused as Overloaded (sent again).
    pub overloaded: u64,
    /// Outcome unknown (sent again).
    pub unknown: u64,
    /// This process's RSS when the follower had stopped, bytes.
    pub rss_bytes_at_stop: u64,
    /// And when the fill was done, bytes.
    pub rss_bytes_filled: u64,
    /// (rss_bytes_filled - rss_bytes_at_stop) / instances: what each instance the follower
    /// missed left resident in the serving nodes (0 is flat).
    pub rss_growth_bytes_per_instance: f64,
    /// The same for RssAnon (the heap alone; 0 where the kernel does not report it).
    pub anon_growth_bytes_per_instance: f64,
}

/// The catch-up itself.
#[derive(Clone, Debug, Serialize)]
pub struct CatchUpOut {
    /// Instances the follower missed: the leaders' `applied_next` at the restart minus the
    /// follower's at its stop, summed over groups.
    pub lag_instances: u64,
    /// Their payload (lag_instances x value bytes).
    pub lag_bytes: u64,
    /// Per group: the follower's `applied_next` when it stopped.
    pub applied_at_stop: Vec<u64>,
    /// Per group: the leader's `applied_next` at the restart (the catch-up target).
    pub target: Vec<u64>,
    /// Per group: the follower's `applied_next` when `Node::start` returned (its own WAL's
    /// replay had started; the state machine keeps no checkpoint).
    pub applied_at_start: Vec<u64>,
    /// `Node::start` (WAL recovery, threads), seconds.
    pub restart_s: f64,
    /// From the `Node::start` call until every group reached its target, seconds.
    pub caught_up_s: f64,
    /// From `Node::start` returning until then, seconds.
    pub caught_up_after_start_s: f64,
    /// From the `Node::start` call until the follower applied the first instance it had
    /// missed (an instance only a peer could give it), seconds.
    pub first_from_peer_s: f64,
    /// From then until caught up, seconds: the streaming itself.
    pub streaming_s: f64,
    /// From the `Node::start` call until the follower was as current as the healthy replica.
    pub converged_s: f64,
    /// Leader's applied point minus the follower's at convergence, summed over groups.
    pub gap_to_leader_at_convergence: u64,
    /// lag_instances / caught_up_s.
    pub instances_per_s: f64,
    /// lag_bytes / caught_up_s / 10^6.
    pub mb_per_s: f64,
    /// lag_bytes / caught_up_after_start_s / 10^6 (start-up not counted).
    pub mb_per_s_after_start: f64,
    /// lag_bytes / streaming_s / 10^6 (start-up and the wait for the first value not counted).
    pub mb_per_s_streaming: f64,
    /// mb_per_s / the slower ceiling.
    pub ratio_vs_slower_ceiling: f64,
    /// mb_per_s_streaming / the slower ceiling (start-up and the first wait not counted).
    pub streaming_ratio_vs_slower_ceiling: f64,
    /// mb_per_s / the disk write ceiling: the follower makes every value it learns durable,
    /// so this is a third bound besides the two the issue names.
    pub ratio_vs_disk_write_ceiling: f64,
    /// The goal: `ratio_vs_slower_ceiling` at least this.
    pub goal_ratio_min: f64,
    /// (seconds since the `Node::start` call, the follower's applied instances summed over groups).
    pub progress: Vec<(f64, u64)>,
}

/// The serving replicas' counters over the catch-up (restart to caught up), summed over both
/// serving nodes and their cores.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServingCounters {
    /// Chosen values read from the WAL for catch-up (driver).
    pub values_read: u64,
    /// Their bytes.
    pub value_bytes_read: u64,
    /// Catch-up reads put off by the per-round read budget (READ_BYTES_PER_ROUND), summed
    /// over rounds (a read waiting two rounds counts twice).
    pub reads_deferred: u64,
    /// Failed reads.
    pub read_errors: u64,
    /// Chosen values served to lagging peers (protocol).
    pub catchup_entries_served: u64,
    /// Of which read from the log.
    pub catchup_entries_from_log: u64,
    /// Requests that needed the log.
    pub catchup_log_reads: u64,
    /// Bytes the network threads sent (all peers, headers included).
    pub net_bytes_sent: u64,
    /// Of which to the follower.
    pub net_bytes_sent_to_follower: u64,
    /// Frames sent to the follower.
    pub net_frames_sent_to_follower: u64,
    /// Failed connection attempts to the follower (not a delta: most fail while it is down).
    pub connect_failures_to_follower: u64,
    /// Reconnections to the follower (not a delta).
    pub reconnects_to_follower: u64,
    /// Frames queued for the follower when it restarted (sent while it was down; its
    /// outbound queue holds up to `outbound_capacity` frames and `outbound_bytes_max` bytes,
    /// the newest kept).
    pub outbound_queued_frames_to_follower_at_restart: u64,
    /// Frames to the follower dropped because that queue was full (not a delta).
    pub outbound_dropped_frames_to_follower: u64,
    /// Core loop rounds.
    pub rounds: u64,
    /// Durable writes.
    pub durable_writes: u64,
    /// Phase 1 attempts started (a leadership change).
    pub prepares_started: u64,
    /// Leaderships won.
    pub leaderships_won: u64,
    /// Rejections received for this node's ballot (another node's higher ballot).
    pub rejections_received: u64,
}

impl ServingCounters {
    fn of(stats: &NodeStats, follower_id: u32) -> ServingCounters {
        let mut c = ServingCounters {
            net_bytes_sent: stats.net.totals.bytes_sent,
            ..ServingCounters::default()
        };
        if let Some(peer) = stats.net.peers.iter().find(|p| p.node_id == follower_id) {
            c.net_bytes_sent_to_follower = peer.counters.bytes_sent;
            c.net_frames_sent_to_follower = peer.counters.frames_sent;
            c.connect_failures_to_follower = peer.counters.connect_failures;
            c.reconnects_to_follower = peer.counters.reconnects;
            c.outbound_queued_frames_to_follower_at_restart = peer.outbound_queued_frames;
            c.outbound_dropped_frames_to_follower = peer.counters.outbound_dropped_frames;
        }
        for core in &stats.cores {
            c.values_read += core.driver.values_read;
            c.value_bytes_read += core.driver.value_bytes_read;
            c.reads_deferred += core.driver.reads_deferred;
            c.read_errors += core.driver.read_errors;
            c.catchup_entries_served += core.protocol.catchup_entries_served;
            c.catchup_entries_from_log += core.protocol.catchup_entries_from_log;
            c.catchup_log_reads += core.protocol.catchup_log_reads;
            c.rounds += core.rounds;
            c.durable_writes += core.durable_writes;
            c.prepares_started += core.protocol.prepares_started;
            c.leaderships_won += core.protocol.leaderships_won;
            c.rejections_received += core.protocol.rejections_received;
        }
        c
    }

    fn since(&self, earlier: &ServingCounters) -> ServingCounters {
        ServingCounters {
            values_read: self.values_read.saturating_sub(earlier.values_read),
            value_bytes_read: self
                .value_bytes_read
                .saturating_sub(earlier.value_bytes_read),
            reads_deferred: self.reads_deferred.saturating_sub(earlier.reads_deferred),
            read_errors: self.read_errors.saturating_sub(earlier.read_errors),
            catchup_entries_served: self
                .catchup_entries_served
                .saturating_sub(earlier.catchup_entries_served),
            catchup_entries_from_log: self
                .catchup_entries_from_log
                .saturating_sub(earlier.catchup_entries_from_log),
            catchup_log_reads: self
                .catchup_log_reads
                .saturating_sub(earlier.catchup_log_reads),
            net_bytes_sent: self.net_bytes_sent.saturating_sub(earlier.net_bytes_sent),
            net_bytes_sent_to_follower: self
                .net_bytes_sent_to_follower
                .saturating_sub(earlier.net_bytes_sent_to_follower),
            net_frames_sent_to_follower: self
                .net_frames_sent_to_follower
                .saturating_sub(earlier.net_frames_sent_to_follower),
            connect_failures_to_follower: self.connect_failures_to_follower,
            reconnects_to_follower: self.reconnects_to_follower,
            // The snapshot taken at the restart is `earlier`.
            outbound_queued_frames_to_follower_at_restart: earlier
                .outbound_queued_frames_to_follower_at_restart,
            outbound_dropped_frames_to_follower: self.outbound_dropped_frames_to_follower,
            rounds: self.rounds.saturating_sub(earlier.rounds),
            durable_writes: self.durable_writes.saturating_sub(earlier.durable_writes),
            prepares_started: self
                .prepares_started
                .saturating_sub(earlier.prepares_started),
            leaderships_won: self.leaderships_won.saturating_sub(earlier.leaderships_won),
            rejections_received: self
                .rejections_received
                .saturating_sub(earlier.rejections_received),
        }
    }

    fn add(&mut self, other: &ServingCounters) {
        self.values_read += other.values_read;
        self.value_bytes_read += other.value_bytes_read;
        self.reads_deferred += other.reads_deferred;
        self.read_errors += other.read_errors;
        self.catchup_entries_served += other.catchup_entries_served;
        self.catchup_entries_from_log += other.catchup_entries_from_log;
        self.catchup_log_reads += other.catchup_log_reads;
        self.net_bytes_sent += other.net_bytes_sent;
        self.net_bytes_sent_to_follower += other.net_bytes_sent_to_follower;
        self.net_frames_sent_to_follower += other.net_frames_sent_to_follower;
        self.connect_failures_to_follower += other.connect_failures_to_follower;
        self.reconnects_to_follower += other.reconnects_to_follower;
        self.outbound_queued_frames_to_follower_at_restart +=
            other.outbound_queued_frames_to_follower_at_restart;
        self.outbound_dropped_frames_to_follower += other.outbound_dropped_frames_to_follower;
        self.rounds += other.rounds;
        self.durable_writes += other.durable_writes;
        self.prepares_started += other.prepares_started;
        self.leaderships_won += other.leaderships_won;
        self.rejections_received += other.rejections_received;
    }
}

/// The restarted follower's counters when it had caught up (they start at its restart).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FollowerCounters {
    /// Catch-up requests it sent.
    pub catchup_requests_sent: u64,
    /// Empty replies from a peer that was ahead (values no longer held).
    pub catchup_unavailable: u64,
    /// Instances it applied (its own WAL's replay included).
    pub instances_applied: u64,
    /// Core loop rounds.
    pub rounds: u64,
    /// WAL writes issued.
    pub write_rounds: u64,
    /// Durable writes.
    pub durable_writes: u64,
    /// Records written (Chosen marks carrying the values learnt, mostly).
    pub records_written: u64,
    /// WAL bytes written.
    pub wal_bytes_written: u64,
    /// WAL write-to-durable latency since the restart, median, µs (largest over cores).
    pub wal_write_p50_us: u64,
    /// Same, largest.
    pub wal_write_max_us: u64,
    /// Mean bytes per WAL write.
    pub wal_bytes_per_write: f64,
    /// Segment files the WAL created (each is written in full before use).
    pub wal_segments_created: u64,
    /// Times the WAL waited for a segment being prepared.
    pub wal_segment_prepare_waits: u64,
    /// Rounds in which chosen values waited for the executor's queue.
    pub executor_backlog_rounds: u64,
    /// Bytes its network thread received.
    pub net_bytes_received: u64,
    /// Frames it received.
    pub net_frames_received: u64,
    /// Phase 1 attempts it started (it ran for leader while catching up).
    pub prepares_started: u64,
    /// Leaderships it won.
    pub leaderships_won: u64,
    /// Rejections it received for its ballot.
    pub rejections_received: u64,
}

impl FollowerCounters {
    fn of(stats: &NodeStats) -> FollowerCounters {
        let mut c = FollowerCounters {
            net_bytes_received: stats.net.totals.bytes_received,
            net_frames_received: stats.net.totals.frames_received,
            ..FollowerCounters::default()
        };
        for core in &stats.cores {
            c.catchup_requests_sent += core.protocol.catchup_requests_sent;
            c.catchup_unavailable += core.protocol.catchup_unavailable;
            c.instances_applied += core.protocol.instances_applied;
            c.rounds += core.rounds;
            c.write_rounds += core.write_rounds;
            c.durable_writes += core.durable_writes;
            c.records_written += core.records_written;
            c.executor_backlog_rounds += core.executor_backlog_rounds;
            c.prepares_started += core.protocol.prepares_started;
            c.leaderships_won += core.protocol.leaderships_won;
            c.rejections_received += core.protocol.rejections_received;
            if let Some(wal) = &core.wal {
                c.wal_bytes_written += wal.bytes_written;
                c.wal_write_p50_us = c.wal_write_p50_us.max(wal.write_latency_us.p50);
                c.wal_write_max_us = c.wal_write_max_us.max(wal.write_latency_us.max);
                c.wal_segments_created += wal.segments_created;
                c.wal_segment_prepare_waits += wal.segment_prepare_waits;
            }
        }
        c.wal_bytes_per_write = ratio(c.wal_bytes_written as f64, c.write_rounds as f64);
        c
    }
}

/// Where the catch-up time went, derived from the counters.
#[derive(Clone, Debug, Serialize)]
pub struct Explain {
    /// Catch-up requests the follower sent per second of streaming.
    pub requests_per_s: f64,
    /// Entries per catch-up reply (entries served / requests sent).
    pub entries_per_request: f64,
    /// Milliseconds of streaming per request (one request is outstanding at a time).
    pub ms_per_request: f64,
    /// ms_per_request / the loopback RTT p50: round trips' worth of time per request.
    pub request_time_vs_rtt: f64,
    /// Of the entries served, the share read from the WAL (the rest came from memory).
    pub share_from_log: f64,
    /// A reply's payload at the slower ceiling's rate, ms: the least a request could take.
    pub ms_per_request_at_ceiling: f64,
    /// Entries the catch-up replies carried (from the WAL or memory; both serving nodes).
    pub entries_in_catchup_replies: u64,
    /// Missed instances beyond those entries, at least: learnt from the frames queued for the
    /// follower while it was down (Accepts and Commits sent on reconnection).
    pub instances_otherwise_at_least: u64,
    /// In words.
    pub note: String,
}

/// The whole run, as `--json` writes it.
#[derive(Clone, Debug, Serialize)]
pub struct CatchupRunOut {
    /// "catchup".
    pub mode: String,
    /// Paxos groups.
    pub groups: u32,
    /// Bytes per command (= per instance).
    pub value_bytes: usize,
    /// `--lag-instances`.
    pub lag_instances_asked: u64,
    /// The steady load, proposals/s.
    pub rate_per_s: f64,
    /// Instances in flight per group.
    pub pipeline_depth: u32,
    /// Core threads per node.
    pub cores: usize,
    /// `--seconds` (each baseline window).
    pub seconds: f64,
    /// The ceilings used for the ratio: the better figure of the two measurements.
    pub ceilings: StreamCeilings,
    /// Both measurements: before the cluster started and after it stopped.
    pub ceilings_measured: Vec<StreamCeilings>,
    /// Frames a node's network thread queues for a peer at most (the runtime's default
    /// `outbound_capacity`; `outbound_bytes_max` bounds their bytes too, and for a down peer
    /// the oldest go first): a lag under it can be replayed from that queue instead of the WAL.
    pub outbound_capacity_frames: usize,
    /// Which ceiling is slower.
    pub slower_ceiling: String,
    /// Its rate, MB/s.
    pub slower_ceiling_mb_per_s: f64,
    /// The node stopped and restarted.
    pub follower_id: u32,
    /// Per group, the node that led it at the restart.
    pub leader_ids: Vec<u32>,
    /// The fill.
    pub fill: FillOut,
    /// The catch-up.
    pub catch_up: CatchUpOut,
    /// The steady load's latency.
    pub latency: LatencyOut,
    /// The serving nodes' counters over the catch-up.
    pub serving_counters: ServingCounters,
    /// Per serving node over the catch-up: (node id, entries served, bytes sent to the
    /// follower).
    pub served_by_node: Vec<(u32, u64, u64)>,
    /// The follower's counters when it had caught up.
    pub follower_counters: FollowerCounters,
    /// Where the time went.
    pub explain: Explain,
    /// The WAL read path alone, after the run (the serving leaders' WALs, the missed values,
    /// read as the driver reads them); absent if it could not run (`read_probe_error` says why).
    pub read_probe: Option<probe::ReadProbe>,
    /// Why the read probe did not run.
    pub read_probe_error: Option<String>,
    /// Memory of this process (all three nodes and the loads live in it).
    pub rss: RssReport,
    /// The data directory, when kept.
    pub data_dir: Option<String>,
}

/// Runs `paxring-bench catchup`.
pub fn run(args: CatchupArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("paxring-bench catchup: {message}");
            ExitCode::FAILURE
        }
    }
}

fn validate(args: &CatchupArgs) -> Result<(), String> {
    if args.groups == 0 || args.groups > 1000 {
        return Err(format!("--groups {}: use 1..=1000", args.groups));
    }
    if args.value_bytes == 0 || args.value_bytes > 128 * 1024 {
        return Err(format!(
            "--value-bytes {}: use 1..=131072 (one command per instance, under batch_bytes_max)",
            args.value_bytes
        ));
    }
    if args.lag_instances < u64::from(args.groups) || args.lag_instances > 100_000_000 {
        return Err(format!(
            "--lag-instances {}: use at least one per group and at most 100000000",
            args.lag_instances
        ));
    }
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err(format!(
            "--seconds {}: use a value in (0, 600]",
            args.seconds
        ));
    }
    if !(args.rate >= 1.0 && args.rate <= 100_000.0) {
        return Err(format!("--rate {}: use 1..=100000 proposals/s", args.rate));
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
    if !(args.timeout >= 1.0 && args.timeout <= 3600.0) {
        return Err(format!("--timeout {}: use 1..=3600 seconds", args.timeout));
    }
    Ok(())
}

/// The benchmark's state machine: counts commands (no checkpoint: a restart replays the WAL).
struct Count(u64);

impl StateMachine for Count {
    fn apply(
        &mut self,
        _group: GroupId,
        _instance: Instance,
        commands: &[Bytes],
        results: &mut Vec<Bytes>,
    ) {
        self.0 += commands.len() as u64;
        results.extend(commands.iter().map(|_| Bytes::new()));
    }

    fn checkpoint_instance(&self) -> Option<Instance> {
        None
    }
}

/// How every node of the run is configured.
struct ClusterPlan {
    addrs: Vec<SocketAddr>,
    dir: PathBuf,
    groups: u32,
    cores: usize,
    pipeline: Option<u32>,
    serve_bytes_per_sec: u64,
}

impl ClusterPlan {
    fn config(&self, index: usize) -> Result<NodeConfig, String> {
        let id = index as u32 + 1;
        let mut builder =
            NodeConfig::builder(id, self.addrs[index], self.dir.join(format!("node-{id}")))
                .cluster_id(0xCA7C_0000 + u64::from(self.groups))
                .groups(self.groups)
                .cores(self.cores)
                // Three nodes share this machine's CPUs: do not stack their cores on CPU 0.
                .pin_cores(false)
                // One command per instance: the lag is counted in instances of --value-bytes.
                .batch_commands_max(1)
                .catchup_serve_bytes_per_sec(self.serve_bytes_per_sec);
        if let Some(depth) = self.pipeline {
            builder = builder.pipeline_depth(depth);
        }
        for (peer, addr) in self.addrs.iter().enumerate() {
            if peer != index {
                builder = builder.peer(peer as u32 + 1, *addr);
            }
        }
        builder.build().map_err(|e| format!("node {id}: {e}"))
    }

    fn start(&self, index: usize) -> Result<Node, String> {
        let config = self.config(index)?;
        let factory: StateMachineFactory =
            Box::new(|_group| Ok(Box::new(Count(0)) as Box<dyn StateMachine>));
        Node::start(config, factory).map_err(|e| format!("node {} did not start: {e}", index + 1))
    }
}

/// Per group, the index (into `nodes`) of the node that believes it leads it, once every
/// group has one.
fn wait_leaders(nodes: &[&Node], groups: u32) -> Result<Vec<usize>, String> {
    let deadline = Instant::now() + LEADERS_TIMEOUT;
    loop {
        let leaders: Vec<Option<usize>> = (0..groups)
            .map(|g| {
                nodes
                    .iter()
                    .position(|n| n.leader_hint(GroupId(g)) == Some(n.config().node_id))
            })
            .collect();
        if leaders.iter().all(Option::is_some) {
            return Ok(leaders.into_iter().map(|l| l.expect("checked")).collect());
        }
        if Instant::now() > deadline {
            let missing = leaders.iter().filter(|l| l.is_none()).count();
            return Err(format!(
                "{missing} of {groups} groups had no leader after {} s",
                LEADERS_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The node to stop: the one leading the fewest groups (the last of equals).
fn choose_follower(leaders: &[usize], replicas: usize) -> usize {
    (0..replicas)
        .rev()
        .min_by_key(|i| leaders.iter().filter(|l| *l == i).count())
        .expect("replicas > 0")
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        a / b
    } else {
        f64::NAN
    }
}

/// What the coordinator measured between the cluster's start and the end of the load.
struct Measured {
    follower_index: usize,
    served_by_node: Vec<(u32, u64, u64)>,
    rss_at_stop: Memory,
    rss_filled: Memory,
    leader_ids: Vec<u32>,
    fill: load::FillOutcome,
    catch_up: CatchUpOut,
    serving: ServingCounters,
    follower: FollowerCounters,
}

fn applied(node: &Node, groups: u32) -> Vec<u64> {
    (0..groups)
        .map(|g| node.applied_next(GroupId(g)).map_or(0, |i| i.0))
        .collect()
}

/// Per group, the highest `applied_next` among `nodes`.
fn applied_max(nodes: &[&Node], groups: u32) -> Vec<u64> {
    (0..groups)
        .map(|g| {
            nodes
                .iter()
                .map(|n| n.applied_next(GroupId(g)).map_or(0, |i| i.0))
                .max()
                .unwrap_or(0)
        })
        .collect()
}

fn phase_sleep(clock: &PhaseClock, phase: Phase, length: Duration) {
    clock.set(phase);
    std::thread::sleep(length);
}

/// Steps 2 to 5 (the load runs on another thread meanwhile); `follower` is the stopped and
/// restarted node, `serving` the other two.
fn orchestrate(
    args: &CatchupArgs,
    plan: &ClusterPlan,
    clock: &PhaseClock,
    serving: &[&Node],
    follower: &mut Option<Node>,
    follower_index: usize,
    rss_log: &Mutex<RssLog>,
) -> Result<Measured, String> {
    let groups = args.groups;
    let timeout = Duration::from_secs_f64(args.timeout);
    phase_sleep(clock, Phase::WarmUp, WARM_UP);
    eprintln!(
        "baseline: {} s of {} proposals/s with three replicas current...",
        args.seconds, args.rate
    );
    phase_sleep(clock, Phase::Before, Duration::from_secs_f64(args.seconds));

    // Stop the follower.
    clock.set(Phase::Fill);
    let node = follower.take().expect("the follower runs");
    let applied_at_stop = applied(&node, groups);
    node.shutdown()
        .map_err(|e| format!("stopping the follower: {e}"))?;
    let rss_at_stop = sample(rss_log, "follower stopped");
    eprintln!(
        "node {} stopped; filling {} instances of {} B on the other two...",
        follower_index + 1,
        args.lag_instances,
        args.value_bytes
    );
    let fill = load::fill(
        serving,
        groups,
        args.value_bytes,
        args.lag_instances,
        Instant::now() + timeout,
    )?;
    let rss_filled = sample(rss_log, "filled");

    // Restart it; catch-up runs until every group reaches the leader's point at the restart.
    let leaders = wait_leaders(serving, groups)?;
    let leader_ids: Vec<u32> = leaders
        .iter()
        .map(|&i| serving[i].config().node_id)
        .collect();
    let target = applied_max(serving, groups);
    let lag_instances: u64 = target
        .iter()
        .zip(&applied_at_stop)
        .map(|(t, a)| t.saturating_sub(*a))
        .sum();
    let follower_id = follower_index as u32 + 1;
    let serving_before: Vec<ServingCounters> = serving
        .iter()
        .map(|n| ServingCounters::of(&n.stats(), follower_id))
        .collect();
    eprintln!(
        "restarting node {}: {lag_instances} instances behind...",
        follower_index + 1
    );
    clock.set(Phase::CatchUp);
    let restart_call = Instant::now();
    *follower = Some(plan.start(follower_index)?);
    let started = Instant::now();
    let node = follower.as_ref().expect("just started");
    let applied_at_start = applied(node, groups);
    let mut progress = vec![(
        started.duration_since(restart_call).as_secs_f64(),
        applied_at_start.iter().sum(),
    )];
    let mut next_point = started + PROGRESS_EVERY;
    let stopped_at: u64 = applied_at_stop.iter().sum();
    let mut first_from_peer: Option<Instant> = None;
    let caught_up = loop {
        let now_applied = applied(node, groups);
        let now = Instant::now();
        if first_from_peer.is_none() && now_applied.iter().sum::<u64>() > stopped_at {
            first_from_peer = Some(now);
        }
        if now_applied.iter().zip(&target).all(|(a, t)| a >= t) {
            progress.push((
                now.duration_since(restart_call).as_secs_f64(),
                now_applied.iter().sum(),
            ));
            break now;
        }
        if now >= next_point && progress.len() < PROGRESS_MAX {
            progress.push((
                now.duration_since(restart_call).as_secs_f64(),
                now_applied.iter().sum(),
            ));
            next_point = now + PROGRESS_EVERY;
        }
        if now.duration_since(started) > timeout {
            return Err(format!(
                "the follower did not catch up within {} s: applied {now_applied:?} of {target:?} (stopped at {applied_at_stop:?}); its status: {:?}",
                args.timeout,
                node.stats().cores.iter().map(|c| c.stuck.clone()).collect::<Vec<_>>()
            ));
        }
        if let Some(fatal) = node.fatal_error() {
            return Err(format!("the follower stopped while catching up: {fatal}"));
        }
        std::thread::sleep(POLL);
    };
    let follower_counters = FollowerCounters::of(&node.stats());
    let mut serving_counters = ServingCounters::default();
    let mut served_by_node = Vec::with_capacity(serving.len());
    for (n, before) in serving.iter().zip(&serving_before) {
        let delta = ServingCounters::of(&n.stats(), follower_id).since(before);
        served_by_node.push((
            n.config().node_id,
            delta.catchup_entries_served,
            delta.net_bytes_sent_to_follower,
        ));
        serving_counters.add(&delta);
    }
    sample(rss_log, "caught up");

    // Convergence: as current as the healthy replica, per group the less current of the two
    // serving nodes (the one that follows; a follower learns a choice after its leader).
    clock.set(Phase::Converge);
    let converged = loop {
        let healthy: Vec<u64> = (0..groups)
            .map(|g| {
                serving
                    .iter()
                    .map(|n| n.applied_next(GroupId(g)).map_or(0, |i| i.0))
                    .min()
                    .unwrap_or(0)
            })
            .collect();
        let mine = applied(node, groups);
        let now = Instant::now();
        if mine.iter().zip(&healthy).all(|(m, h)| m >= h) {
            break now;
        }
        if now.duration_since(caught_up) > timeout {
            return Err(format!(
                "the follower did not converge within {} s: {mine:?} against {healthy:?}",
                args.timeout
            ));
        }
        std::thread::sleep(POLL);
    };
    let leader_now = applied_max(serving, groups);
    let gap: u64 = leader_now
        .iter()
        .zip(applied(node, groups))
        .map(|(l, m)| l.saturating_sub(m))
        .sum();
    eprintln!("converged; baseline after: {} s...", args.seconds);
    phase_sleep(clock, Phase::After, Duration::from_secs_f64(args.seconds));
    clock.set(Phase::Idle);

    let caught_up_s = caught_up.duration_since(restart_call).as_secs_f64();
    let caught_up_after_start_s = caught_up.duration_since(started).as_secs_f64();
    let first_from_peer = first_from_peer.unwrap_or(caught_up);
    let streaming_s = caught_up.duration_since(first_from_peer).as_secs_f64();
    let lag_bytes = lag_instances * args.value_bytes as u64;
    let catch_up = CatchUpOut {
        lag_instances,
        lag_bytes,
        applied_at_stop,
        target,
        applied_at_start,
        restart_s: started.duration_since(restart_call).as_secs_f64(),
        caught_up_s,
        caught_up_after_start_s,
        first_from_peer_s: first_from_peer.duration_since(restart_call).as_secs_f64(),
        streaming_s,
        converged_s: converged.duration_since(restart_call).as_secs_f64(),
        gap_to_leader_at_convergence: gap,
        instances_per_s: ratio(lag_instances as f64, caught_up_s),
        mb_per_s: ratio(lag_bytes as f64 / 1e6, caught_up_s),
        mb_per_s_after_start: ratio(lag_bytes as f64 / 1e6, caught_up_after_start_s),
        mb_per_s_streaming: ratio(lag_bytes as f64 / 1e6, streaming_s),
        // Set once the run's ceilings are known.
        ratio_vs_slower_ceiling: f64::NAN,
        streaming_ratio_vs_slower_ceiling: f64::NAN,
        ratio_vs_disk_write_ceiling: f64::NAN,
        goal_ratio_min: GOAL_RATIO_MIN,
        progress,
    };
    Ok(Measured {
        follower_index,
        served_by_node,
        rss_at_stop,
        rss_filled,
        leader_ids,
        fill,
        catch_up,
        serving: serving_counters,
        follower: follower_counters,
    })
}

fn sample(log: &Mutex<RssLog>, at: &str) -> Memory {
    log.lock().expect("rss log").sample(at).unwrap_or_default()
}

/// Samples memory every `RSS_EVERY` until the clock stops, labelled with the phase.
fn sample_memory(clock: &PhaseClock, log: &Mutex<RssLog>) {
    while !clock.stopped() {
        std::thread::sleep(RSS_EVERY);
        sample(log, &format!("interval {}", clock.get().name()));
    }
}

fn explain(
    catch_up: &CatchUpOut,
    serving: &ServingCounters,
    follower: &FollowerCounters,
    ceilings: &StreamCeilings,
    value_bytes: usize,
    outbound_capacity_frames: usize,
) -> Explain {
    let requests = follower.catchup_requests_sent as f64;
    let served = serving.catchup_entries_served;
    let per_request = ratio(served as f64, requests);
    // Requests flow while values stream; the wait before the first value is reported apart.
    let ms_per_request = ratio(catch_up.streaming_s * 1e3, requests);
    let (slower, slower_name) = ceilings.slower();
    let ms_at_ceiling = ratio(per_request * value_bytes as f64 / 1e6 * 1e3, slower);
    let share_from_log = ratio(serving.catchup_entries_from_log as f64, served as f64);
    let otherwise = catch_up.lag_instances.saturating_sub(served);
    let waited_s = catch_up.first_from_peer_s - catch_up.restart_s;
    let mut note = format!(
        "Node::start took {:.3} s, then {waited_s:.3} s passed before the first missed instance \
         arrived, then {:.3} s of streaming. ",
        catch_up.restart_s, catch_up.streaming_s,
    );
    if requests > 0.0 {
        note.push_str(&format!(
            "{requests:.0} catch-up requests (a window of half-window requests in flight per \
             group): {per_request:.1} entries ({:.1} KB) per request, {ms_per_request:.2} ms \
             per request ({:.0} loopback round trips); at the {slower_name} ceiling a request's \
             payload takes {ms_at_ceiling:.3} ms. {:.0}% of the entries served came from the WAL ({} values, \
             {:.1} MB read), {} reads deferred by the per-round read budget, {} read errors. ",
            per_request * value_bytes as f64 / 1e3,
            ratio(ms_per_request * 1e3, ceilings.rtt_us_p50),
            100.0 * share_from_log,
            serving.values_read,
            serving.value_bytes_read as f64 / 1e6,
            serving.reads_deferred,
            serving.read_errors,
        ));
    } else {
        note.push_str("No catch-up request was sent. ");
    }
    note.push_str(&format!(
        "Catch-up replies carried {served} entries for the {} missed instances ({:.2} per \
         instance: more than 1 when both serving nodes answered or a reply was repeated). {} \
         frames sent while it was down were still queued for it at the restart ({} dropped; \
         the queue holds {outbound_capacity_frames} frames and 64 MiB at most, the newest kept) and went out \
         when it reconnected; in all the serving nodes sent it {:.1} MB in {} frames for {:.1} \
         MB of payload.",
        catch_up.lag_instances,
        ratio(served as f64, catch_up.lag_instances as f64),
        serving.outbound_queued_frames_to_follower_at_restart,
        serving.outbound_dropped_frames_to_follower,
        serving.net_bytes_sent_to_follower as f64 / 1e6,
        serving.net_frames_sent_to_follower,
        catch_up.lag_bytes as f64 / 1e6,
    ));
    note.push_str(&format!(
        " The follower wrote {:.1} MB to its WAL in {} durable writes ({:.0} KB each, \
         write-to-durable p50 {} µs, max {} µs; {} segment(s) created, {} wait(s) for one); at \
         the disk write ceiling ({:.1} MB/s) that is {:.3} s.",
        follower.wal_bytes_written as f64 / 1e6,
        follower.durable_writes,
        follower.wal_bytes_per_write / 1e3,
        follower.wal_write_p50_us,
        follower.wal_write_max_us,
        follower.wal_segments_created,
        follower.wal_segment_prepare_waits,
        ceilings.disk_write_mb_per_s,
        ratio(
            follower.wal_bytes_written as f64 / 1e6,
            ceilings.disk_write_mb_per_s
        ),
    ));
    if follower.prepares_started > 0 || serving.prepares_started > 0 {
        note.push_str(&format!(
            " Leadership moved during the catch-up: the follower started {} prepare(s) and won \
             {}, the serving nodes started {} and received {} rejection(s).",
            follower.prepares_started,
            follower.leaderships_won,
            serving.prepares_started,
            serving.rejections_received
        ));
    }
    if serving.connect_failures_to_follower > 0 {
        note.push_str(&format!(
            " While it was down the serving nodes failed {} connection attempt(s) to it \
             (reconnect backoff), and reconnected {} time(s).",
            serving.connect_failures_to_follower, serving.reconnects_to_follower
        ));
    }
    Explain {
        requests_per_s: ratio(requests, catch_up.streaming_s),
        entries_per_request: per_request,
        ms_per_request,
        request_time_vs_rtt: ratio(ms_per_request * 1e3, ceilings.rtt_us_p50),
        share_from_log,
        ms_per_request_at_ceiling: ms_at_ceiling,
        entries_in_catchup_replies: served,
        instances_otherwise_at_least: otherwise,
        note,
    }
}

fn latency_out(loads: &[PhaseLoad]) -> LatencyOut {
    let of = |phase: Phase| PhaseLatency::of(&loads[phase.index()]);
    let before = of(Phase::Before);
    let after = of(Phase::After);
    let during = of(Phase::CatchUp);
    let (baseline_p99_us, baseline) = match (before.p99_us.is_nan(), after.p99_us.is_nan()) {
        (false, false) if after.p99_us < before.p99_us => (after.p99_us, "after"),
        (false, _) => (before.p99_us, "before"),
        (true, false) => (after.p99_us, "after"),
        (true, true) => (f64::NAN, "none"),
    };
    LatencyOut {
        p99_ratio: ratio(during.p99_us, baseline_p99_us),
        p99_ratio_vs_before: ratio(during.p99_us, before.p99_us),
        p99_ratio_vs_after: ratio(during.p99_us, after.p99_us),
        baseline_p99_us,
        baseline: baseline.to_string(),
        goal_p99_ratio_max: GOAL_P99_RATIO_MAX,
        fill: of(Phase::Fill),
        converge: of(Phase::Converge),
        before,
        during_catch_up: during,
        after,
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

fn ceilings_line(c: &StreamCeilings) -> String {
    format!(
        "disk read {:.1} MB/s (O_DIRECT, {} reads, {} file), loopback TCP {:.1} MB/s (one \
         stream, {} writes), RTT p50 {} p99 {}; disk write {:.1} MB/s ({} + fdatasync)",
        c.disk_read_mb_per_s,
        crate::report::bytes_text(c.disk_read_chunk_bytes),
        rss::mib_text(c.disk_read_file_bytes),
        c.loopback_mb_per_s,
        crate::report::bytes_text(c.loopback_write_bytes),
        us_text(c.rtt_us_p50),
        us_text(c.rtt_us_p99),
        c.disk_write_mb_per_s,
        crate::report::bytes_text(c.disk_read_chunk_bytes),
    )
}

fn phase_line(name: &str, p: &PhaseLatency) -> String {
    let troubles = p.not_leader
        + p.overloaded
        + p.failed
        + p.waited_for_leader
        + p.skipped_in_flight
        + p.abandoned;
    format!(
        "  {name:<16} p50 {:>9} p99 {:>9} p999 {:>9} max {:>9}  ({} commits{})",
        us_text(p.p50_us),
        us_text(p.p99_us),
        us_text(p.p999_us),
        us_text(p.max_us),
        p.samples,
        if troubles > 0 {
            format!(
                "; {} waited for a leader, {} not-leader and {} overloaded answers (proposed \
                 again), {} failed, {} skipped, {} not committed in time",
                p.waited_for_leader,
                p.not_leader,
                p.overloaded,
                p.failed,
                p.skipped_in_flight,
                p.abandoned
            )
        } else {
            String::new()
        }
    )
}

fn print_summary(run: &CatchupRunOut) {
    let c = &run.catch_up;
    println!(
        "catch-up ceilings (better of two): {}",
        ceilings_line(&run.ceilings)
    );
    println!(
        "fill (node {} down): {} instances in {:.2} s = {:.0} instances/s, {:.1} MB/s; RSS {} \
         -> {} ({:.0} B per instance, {:.0} B of it heap)",
        run.follower_id,
        run.fill.instances,
        run.fill.seconds,
        run.fill.instances_per_s,
        run.fill.mb_per_s,
        rss::mib_text(run.fill.rss_bytes_at_stop),
        rss::mib_text(run.fill.rss_bytes_filled),
        run.fill.rss_growth_bytes_per_instance,
        run.fill.anon_growth_bytes_per_instance
    );
    println!(
        "catch-up: node {} missed {} instances ({:.1} MB); from the restart call it reached the \
         leader's point in {:.3} s (Node::start {:.3} s): {:.0} instances/s, {:.1} MB/s \
         ({:.1} MB/s after start, {:.1} MB/s streaming) = {:.3} x the slower ceiling ({} \
         {:.1} MB/s; goal >= {}; streaming alone {:.3} x; {:.3} x the disk write ceiling); \
         converged after {:.3} s",
        run.follower_id,
        c.lag_instances,
        c.lag_bytes as f64 / 1e6,
        c.caught_up_s,
        c.restart_s,
        c.instances_per_s,
        c.mb_per_s,
        c.mb_per_s_after_start,
        c.mb_per_s_streaming,
        c.ratio_vs_slower_ceiling,
        run.slower_ceiling,
        run.slower_ceiling_mb_per_s,
        GOAL_RATIO_MIN,
        c.streaming_ratio_vs_slower_ceiling,
        c.ratio_vs_disk_write_ceiling,
        c.converged_s
    );
    let l = &run.latency;
    println!(
        "serving leader, steady load of {} commands/s (latency from each intended start, \
         waits for a leader and retries included):",
        run.rate_per_s
    );
    println!("{}", phase_line("before", &l.before));
    println!("{}", phase_line("fill", &l.fill));
    println!("{}", phase_line("during catch-up", &l.during_catch_up));
    println!("{}", phase_line("converging", &l.converge));
    println!("{}", phase_line("after", &l.after));
    println!(
        "  p99 during catch-up / baseline p99 ({}, {}) = {:.2} (vs before {:.2}, vs after {:.2}; goal <= {})",
        l.baseline,
        us_text(l.baseline_p99_us),
        l.p99_ratio,
        l.p99_ratio_vs_before,
        l.p99_ratio_vs_after,
        GOAL_P99_RATIO_MAX
    );
    println!("counters: {}", run.explain.note);
    if let Some(p) = &run.read_probe {
        let per_value_us = |pass: &probe::ReadPass| ratio(pass.seconds * 1e6, pass.values as f64);
        println!(
            "WAL read path alone (Wal::read_chosen_run, runs as the driver reads them, the \
             serving leader's WAL after the run): cold {:.1} MB/s ({:.2} µs per value), warm \
             {:.1} MB/s ({:.2} µs per value); one value at a time (Wal::read_chosen) warm {:.1} \
             MB/s ({:.2} µs per value); {} missing; a reply of {:.0} entries costs {:.3} ms of \
             reads cold",
            p.cold.mb_per_s,
            per_value_us(&p.cold),
            p.warm.mb_per_s,
            per_value_us(&p.warm),
            p.warm_single.mb_per_s,
            per_value_us(&p.warm_single),
            p.cold.missing,
            run.explain.entries_per_request,
            run.explain.entries_per_request * per_value_us(&p.cold) / 1e3,
        );
    }
    println!("{}", rss::summary_line(&run.rss));
}

/// Reads the missed values from the WAL of the node that led each group: `ranges` holds
/// (leader id, group, from, to). The passes of several leaders are summed.
fn run_read_probe(
    plan: &ClusterPlan,
    ranges: &[(u32, u32, u64, u64)],
) -> Result<probe::ReadProbe, String> {
    let mut leaders: Vec<u32> = ranges.iter().map(|r| r.0).collect();
    leaders.sort_unstable();
    leaders.dedup();
    let mut total = probe::ReadProbe::default();
    for leader in leaders {
        let mine: Vec<(u32, u64, u64)> = ranges
            .iter()
            .filter(|r| r.0 == leader)
            .map(|r| (r.1, r.2, r.3))
            .collect();
        let one = probe::read_probe(&plan.config(leader as usize - 1)?, &mine)?;
        total.open_s += one.open_s;
        total.cold.add(&one.cold);
        total.warm.add(&one.warm);
        total.warm_single.add(&one.warm_single);
    }
    Ok(total)
}

fn run_inner(args: &CatchupArgs) -> Result<(), String> {
    validate(args)?;
    let rss_log = Mutex::new(RssLog::start());
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)
        .map_err(|e| format!("cannot create --dir {}: {e}", parent.display()))?;
    let data = tempfile::Builder::new()
        .prefix("paxring-bench-catchup-")
        .tempdir_in(&parent)
        .map_err(|e| format!("cannot make a data dir in {}: {e}", parent.display()))?;
    let data_dir = data.path().to_path_buf();
    let lag_bytes = args.lag_instances.saturating_mul(args.value_bytes as u64);
    let read_file_bytes = lag_bytes.clamp(READ_FILE_BYTES_MIN, READ_FILE_BYTES_MAX);
    eprintln!(
        "paxring-bench catchup: 3 nodes in this process on 127.0.0.1, data in {}",
        data_dir.display()
    );
    eprintln!(
        "measuring the streaming ceilings (disk read on the data's file system, loopback TCP)..."
    );
    let before = ceilings::measure_streams(&data_dir, read_file_bytes, args.ceiling_seconds)?;
    println!("ceilings (before): {}", ceilings_line(&before));
    sample(&rss_log, "ceilings measured");

    let plan = ClusterPlan {
        addrs: crate::cluster::free_addrs(REPLICAS)?,
        dir: data_dir.join("cluster"),
        groups: args.groups,
        cores: args.cores,
        pipeline: args.pipeline,
        serve_bytes_per_sec: args.serve_mbps.map_or(0, |mbps| (mbps * 1e6) as u64),
    };
    let pipeline_depth = plan.config(0)?.pipeline_depth;
    let outbound_capacity_frames =
        paxring_net::NetConfig::new(0, 1, plan.addrs[0], Vec::new()).outbound_capacity;
    if args.lag_instances <= outbound_capacity_frames as u64 {
        eprintln!(
            "note: --lag-instances {} fits in the network thread's outbound queue ({} frames): \
             the follower may learn what it missed from the frames queued for it while it was \
             down instead of from the WAL (the counters say which)",
            args.lag_instances, outbound_capacity_frames
        );
    }
    let mut nodes: Vec<Option<Node>> = Vec::with_capacity(REPLICAS);
    for index in 0..REPLICAS {
        nodes.push(Some(plan.start(index)?));
    }
    let all: Vec<&Node> = nodes.iter().flatten().collect();
    let leaders = wait_leaders(&all, args.groups)?;
    let follower_index = choose_follower(&leaders, REPLICAS);
    drop(all);
    let mut follower = nodes[follower_index].take();
    let serving_nodes: Vec<Node> = nodes.into_iter().flatten().collect();
    let serving: Vec<&Node> = serving_nodes.iter().collect();
    sample(&rss_log, "cluster started");
    let clock = PhaseClock::default();
    let (measured, loads) = std::thread::scope(|s| -> Result<_, String> {
        let _stop = StopOnDrop(&clock);
        let generator =
            s.spawn(|| load::open_loop(&serving, args.groups, args.rate, args.value_bytes, &clock));
        let sampler = s.spawn(|| sample_memory(&clock, &rss_log));
        let measured = orchestrate(
            args,
            &plan,
            &clock,
            &serving,
            &mut follower,
            follower_index,
            &rss_log,
        );
        clock.stop();
        let loads = generator
            .join()
            .map_err(|_| "the load generator panicked".to_string())?;
        sampler
            .join()
            .map_err(|_| "the memory sampler panicked".to_string())?;
        Ok((measured?, loads?))
    })?;
    rss_log.lock().expect("rss log").after_load();
    drop(serving);
    if let Some(node) = follower.take() {
        node.shutdown()
            .map_err(|e| format!("stopping the follower: {e}"))?;
    }
    for node in serving_nodes {
        node.shutdown()
            .map_err(|e| format!("stopping a node: {e}"))?;
    }
    sample(&rss_log, "cluster stopped");

    eprintln!("measuring the streaming ceilings again...");
    let after = ceilings::measure_streams(&data_dir, read_file_bytes, args.ceiling_seconds)?;
    println!("ceilings (after):  {}", ceilings_line(&after));
    let best = before.best_of(&after);
    let (slower_mb_per_s, slower_name) = best.slower();
    let rss = rss_log.into_inner().expect("rss log").finish();
    // The read path alone, once nothing holds the WALs (after the memory figures: opening a
    // WAL maps and recovers it, which is not the benchmark's to count).
    let ranges: Vec<(u32, u32, u64, u64)> = (0..args.groups)
        .map(|g| {
            let i = g as usize;
            (
                measured.leader_ids[i],
                g,
                measured.catch_up.applied_at_stop[i],
                measured.catch_up.target[i],
            )
        })
        .collect();
    let (read_probe, read_probe_error) = match run_read_probe(&plan, &ranges) {
        Ok(p) => (Some(p), None),
        Err(e) => {
            eprintln!("the WAL read probe did not run: {e}");
            (None, Some(e))
        }
    };
    let mut catch_up = measured.catch_up;
    catch_up.ratio_vs_slower_ceiling = ratio(catch_up.mb_per_s, slower_mb_per_s);
    catch_up.streaming_ratio_vs_slower_ceiling =
        ratio(catch_up.mb_per_s_streaming, slower_mb_per_s);
    catch_up.ratio_vs_disk_write_ceiling = ratio(catch_up.mb_per_s, best.disk_write_mb_per_s);
    let explain = explain(
        &catch_up,
        &measured.serving,
        &measured.follower,
        &best,
        args.value_bytes,
        outbound_capacity_frames,
    );
    let fill = &measured.fill;
    let run = CatchupRunOut {
        mode: "catchup".into(),
        groups: args.groups,
        value_bytes: args.value_bytes,
        lag_instances_asked: args.lag_instances,
        rate_per_s: args.rate,
        pipeline_depth,
        cores: args.cores,
        seconds: args.seconds,
        ceilings: best.clone(),
        ceilings_measured: vec![before, after],
        outbound_capacity_frames,
        slower_ceiling: slower_name.into(),
        slower_ceiling_mb_per_s: slower_mb_per_s,
        follower_id: measured.follower_index as u32 + 1,
        leader_ids: measured.leader_ids,
        fill: FillOut {
            instances: fill.committed,
            seconds: fill.seconds,
            instances_per_s: ratio(fill.committed as f64, fill.seconds),
            mb_per_s: ratio(
                fill.committed as f64 * args.value_bytes as f64 / 1e6,
                fill.seconds,
            ),
            not_leader: fill.not_leader,
            overloaded: fill.overloaded,
            unknown: fill.unknown,
            rss_bytes_at_stop: measured.rss_at_stop.rss_bytes,
            rss_bytes_filled: measured.rss_filled.rss_bytes,
            rss_growth_bytes_per_instance: ratio(
                measured.rss_filled.rss_bytes as f64 - measured.rss_at_stop.rss_bytes as f64,
                fill.committed as f64,
            ),
            anon_growth_bytes_per_instance: ratio(
                measured.rss_filled.anon_bytes.unwrap_or(0) as f64
                    - measured.rss_at_stop.anon_bytes.unwrap_or(0) as f64,
                fill.committed as f64,
            ),
        },
        catch_up,
        latency: latency_out(&loads),
        serving_counters: measured.serving,
        served_by_node: measured.served_by_node,
        follower_counters: measured.follower,
        explain,
        read_probe,
        read_probe_error,
        rss,
        data_dir: args.keep.then(|| data_dir.display().to_string()),
    };
    println!();
    print_summary(&run);
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
    //! Proves that the follower chosen is one that leads no group when there is one, that the
    //! baseline is the lower of the two p99s (and that a phase without samples gives no ratio),
    //! and that bad flags are refused.
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CatchupArgs,
    }

    fn args(argv: &[&str]) -> CatchupArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .expect("parses")
            .args
    }

    #[test]
    fn the_follower_leads_nothing_when_it_can() {
        assert_eq!(choose_follower(&[0], 3), 2);
        assert_eq!(choose_follower(&[2], 3), 1);
        assert_eq!(choose_follower(&[0, 1, 0], 3), 2);
        assert_eq!(choose_follower(&[0, 1, 2, 2, 1], 3), 0);
    }

    fn load_with(latencies: &[u64]) -> PhaseLoad {
        let mut load = PhaseLoad {
            histogram: Histogram::new_with_bounds(1, 600_000_000, 3).unwrap(),
            due: latencies.len() as u64,
            commits: latencies.len() as u64,
            not_leader: 0,
            overloaded: 0,
            failed: 0,
            waited_for_leader: 0,
            skipped_in_flight: 0,
            abandoned: 0,
        };
        for &l in latencies {
            load.histogram.record(l).unwrap();
        }
        load
    }

    #[test]
    fn the_baseline_is_the_lower_p99() {
        let mut loads: Vec<PhaseLoad> = Phase::ALL.iter().map(|_| load_with(&[])).collect();
        loads[Phase::Before.index()] = load_with(&[1000; 100]);
        loads[Phase::After.index()] = load_with(&[500; 100]);
        loads[Phase::CatchUp.index()] = load_with(&[1500; 100]);
        let out = latency_out(&loads);
        assert_eq!(out.baseline, "after");
        assert!((out.p99_ratio - 3.0).abs() < 0.01, "{}", out.p99_ratio);
        assert!((out.p99_ratio_vs_before - 1.5).abs() < 0.01);
        loads[Phase::CatchUp.index()] = load_with(&[]);
        assert!(latency_out(&loads).p99_ratio.is_nan());
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(validate(&args(&[])).is_ok());
        assert!(validate(&args(&["--groups", "0"])).is_err());
        assert!(validate(&args(&["--value-bytes", "0"])).is_err());
        assert!(validate(&args(&["--lag-instances", "3", "--groups", "4"])).is_err());
        assert!(validate(&args(&["--rate", "0.5"])).is_err());
        assert!(validate(&args(&["--seconds=-1"])).is_err());
        assert!(validate(&args(&["--timeout", "0"])).is_err());
    }
}
