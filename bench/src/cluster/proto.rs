//! The control channel between the benchmark's coordinator and its node processes: one JSON
//! object per line, commands on the node's stdin, events on its stdout.
//!
//! Owns: the message shapes and the counter arithmetic shared by both sides. Never: does I/O
//! itself (the coordinator and the node role read and write the lines).

use crate::rss::Memory;
use paxring_engine::runtime::NodeStats;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// How the coordinator starts one node process (passed as one JSON argument).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeSpec {
    /// This node's id (1..=3 for the voters, 4.. for the followers).
    pub id: u32,
    /// Where it listens for peers.
    pub listen: SocketAddr,
    /// The other members.
    pub peers: Vec<(u32, SocketAddr)>,
    /// Its data directory (WAL).
    pub dir: PathBuf,
    /// Paxos groups.
    pub groups: u32,
    /// Instances in flight per group; `None` keeps the runtime's default.
    pub pipeline_depth: Option<u32>,
    /// Core threads.
    pub cores: usize,
    /// Use the WAL's blocking backend (every durable write is a visible system call).
    pub blocking_wal: bool,
    /// How a WAL write becomes durable; `None` keeps the runtime's default.
    pub sync_mode: Option<paxring_engine::runtime::SyncModeConfig>,
    /// WAL writes each core keeps in flight; `None` keeps the runtime's default.
    #[serde(default)]
    pub wal_writes_in_flight: Option<usize>,
    /// The cluster's id.
    pub cluster_id: u64,
    /// Run the key-value state machine and serve clients over loopback TCP (the reads
    /// benchmark); `None`: the counting state machine and no client listener.
    #[serde(default)]
    pub kv: Option<KvSpec>,
    /// This node is a follower (a non-voting replica: it never leads, runs no clients).
    #[serde(default)]
    pub follower: bool,
    /// The ids of the peers (in `peers`) that are followers; every node lists the same.
    #[serde(default)]
    pub follower_peers: Vec<u32>,
}

/// The reads benchmark's key-value store as one node process holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSpec {
    /// Keys per group (0..keys_per_group); the client listener's in-process baseline map holds
    /// each with its preload value (`reads::wire::preload_value`).
    pub keys_per_group: u64,
    /// Bytes of every value.
    pub value_bytes: usize,
}

/// A command to a node process.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Which groups does this node lead now?
    Leaders,
    /// Run one point of the matrix and answer with a `Result`.
    Run(RunSpec),
    /// Answer with the node's cumulative counters.
    Stats,
    /// Which groups is this node master of now (`Node::is_master`)?
    Masters,
    /// Shut the node down and exit.
    Quit,
}

/// One point, as one node runs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSpec {
    /// The group of each closed-loop client this node runs (one entry per client).
    pub client_groups: Vec<u32>,
    /// Groups this node leads, for the open-loop generator (empty: none).
    pub rate_groups: Vec<u32>,
    /// Open-loop proposals per second for this node (0: closed loop only).
    pub rate_per_s: f64,
    /// Bytes of each proposed value.
    pub value_bytes: usize,
    /// Load before the measurement starts, in seconds.
    pub warmup_s: f64,
    /// Measured load, in seconds.
    pub seconds: f64,
    /// Interval of progress events, in milliseconds.
    pub progress_ms: u64,
}

/// An event from a node process.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The node started.
    Ready {
        /// Its node id.
        id: u32,
        /// Its process id.
        pid: u32,
        /// Its memory once the node started (None where /proc cannot be read).
        #[serde(default)]
        memory: Option<Memory>,
        /// Where it serves clients (with `NodeSpec::kv` only).
        #[serde(default)]
        client_addr: Option<SocketAddr>,
    },
    /// The groups this node leads.
    Leaders {
        /// Group ids.
        groups: Vec<u32>,
    },
    /// The groups this node is master of (holds the master lease).
    Masters {
        /// Group ids.
        groups: Vec<u32>,
    },
    /// Commits so far in the current point's measurement window.
    Progress {
        /// Seconds since the measurement started.
        elapsed_s: f64,
        /// Commits answered since the measurement started.
        commits: u64,
        /// The node process's memory now (per-interval RSS: does it stay flat?).
        #[serde(default)]
        memory: Option<Memory>,
    },
    /// The outcome of a `Run`.
    Result(Box<RunResult>),
    /// Cumulative counters.
    Stats(Counters),
    /// Something failed; the node may still answer.
    Error {
        /// What.
        message: String,
    },
    /// The node shut down and is exiting.
    Bye {
        /// Counters after the last round, just before shutdown.
        counters: Counters,
        /// Its memory at the same moment.
        #[serde(default)]
        memory: Option<Memory>,
    },
}

/// Proposals that did not commit, by reason.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Refusals {
    /// `NotLeader` (leadership moved).
    pub not_leader: u64,
    /// `Overloaded` (queue full; the client backed off).
    pub overloaded: u64,
    /// `Unknown` or `Stopped`.
    pub unknown: u64,
    /// Any other error.
    pub other: u64,
}

/// What one node measured for one point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// Commits answered within the measurement window.
    pub commits: u64,
    /// Refused or failed proposals within the window.
    pub refusals: Refusals,
    /// Latency histogram (microseconds), hdrhistogram V2 serialization, base64.
    pub histogram_b64: String,
    /// Counter deltas over the window.
    pub counters: Counters,
    /// CPU seconds (user + system) of the whole process over the window.
    pub cpu_s: f64,
    /// Length of the window, in seconds.
    pub elapsed_s: f64,
    /// Open-loop proposals that could not start because too many were in flight.
    pub open_loop_skipped: u64,
    /// The node process's memory right after the point's load stopped.
    #[serde(default)]
    pub memory: Option<Memory>,
}

/// The node counters the benchmark reports, summed over cores.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// Core loop rounds.
    pub rounds: u64,
    /// Rounds that wrote to the WAL.
    pub write_rounds: u64,
    /// Durable writes (DSYNC writes or fdatasyncs), as the WAL counts them.
    pub durable_writes: u64,
    /// WAL batch writes.
    pub wal_writes: u64,
    /// Records written.
    pub records: u64,
    /// Sum over write rounds of the groups in each (groups_per_write x write_rounds).
    pub groups_in_rounds: f64,
    /// Bytes written by the WAL (headers, records, padding).
    pub bytes_written: u64,
    /// Of which record payload.
    pub wal_payload_bytes: u64,
    /// Of which padding.
    pub padding_bytes: u64,
    /// Sequential round trips summed over committed instances.
    pub commit_rtts_total: u64,
    /// Committed instances led by this node.
    pub commit_instances: u64,
    /// Proposals committed by this node.
    pub proposals_committed: u64,
    /// Commands applied by the executors.
    pub applied_commands: u64,
    /// The WAL's write-to-durable latency p50 since the node started (largest over cores), µs.
    /// Not a delta: each point runs on a fresh cluster, so this covers warm-up and window.
    pub wal_write_p50_us: u64,
    /// Same, 99th percentile.
    pub wal_write_p99_us: u64,
    /// Reads served by the master's lease (no message).
    #[serde(default)]
    pub reads_lease: u64,
    /// Reads served after a read-index round.
    #[serde(default)]
    pub reads_index: u64,
    /// Reads refused or failed.
    #[serde(default)]
    pub reads_failed: u64,
    /// Lease rounds sent as leader.
    #[serde(default)]
    pub lease_rounds_sent: u64,
    /// Instances heard chosen and not applied yet, over every group, at the snapshot. Not a
    /// delta: `since` keeps the later value, `add` sums.
    #[serde(default)]
    pub lag_instances: u64,
    /// The same for the group that lags most, at the snapshot (`add` keeps the largest).
    #[serde(default)]
    pub lag_instances_max: u64,
}

impl Counters {
    /// The counters of a stats snapshot.
    pub fn of(stats: &NodeStats) -> Counters {
        let mut c = Counters {
            applied_commands: stats.applied_commands,
            lag_instances: stats.totals.lag_instances,
            lag_instances_max: stats.totals.lag_instances_max,
            ..Counters::default()
        };
        for core in &stats.cores {
            c.rounds += core.rounds;
            c.write_rounds += core.write_rounds;
            c.durable_writes += core.durable_writes;
            c.records += core.records_written;
            c.groups_in_rounds += core.groups_per_write * core.write_rounds as f64;
            c.commit_rtts_total += core.protocol.commit_rtts_total;
            c.commit_instances += core.protocol.commit_instances;
            c.proposals_committed += core.protocol.proposals_committed;
            c.reads_lease += core.protocol.reads_lease;
            c.reads_index += core.protocol.reads_index;
            c.reads_failed += core.protocol.reads_failed;
            c.lease_rounds_sent += core.protocol.lease_rounds_sent;
            if let Some(wal) = &core.wal {
                c.wal_writes += wal.writes;
                c.bytes_written += wal.bytes_written;
                c.wal_payload_bytes += wal.payload_bytes;
                c.padding_bytes += wal.padding_bytes;
                c.wal_write_p50_us = c.wal_write_p50_us.max(wal.write_latency_us.p50);
                c.wal_write_p99_us = c.wal_write_p99_us.max(wal.write_latency_us.p99);
            }
        }
        c
    }

    /// `self - earlier`, field by field (counters only grow; a smaller value saturates at 0).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            rounds: self.rounds.saturating_sub(earlier.rounds),
            write_rounds: self.write_rounds.saturating_sub(earlier.write_rounds),
            durable_writes: self.durable_writes.saturating_sub(earlier.durable_writes),
            wal_writes: self.wal_writes.saturating_sub(earlier.wal_writes),
            records: self.records.saturating_sub(earlier.records),
            groups_in_rounds: (self.groups_in_rounds - earlier.groups_in_rounds).max(0.0),
            bytes_written: self.bytes_written.saturating_sub(earlier.bytes_written),
            wal_payload_bytes: self
                .wal_payload_bytes
                .saturating_sub(earlier.wal_payload_bytes),
            padding_bytes: self.padding_bytes.saturating_sub(earlier.padding_bytes),
            commit_rtts_total: self
                .commit_rtts_total
                .saturating_sub(earlier.commit_rtts_total),
            commit_instances: self
                .commit_instances
                .saturating_sub(earlier.commit_instances),
            proposals_committed: self
                .proposals_committed
                .saturating_sub(earlier.proposals_committed),
            applied_commands: self
                .applied_commands
                .saturating_sub(earlier.applied_commands),
            wal_write_p50_us: self.wal_write_p50_us,
            wal_write_p99_us: self.wal_write_p99_us,
            reads_lease: self.reads_lease.saturating_sub(earlier.reads_lease),
            reads_index: self.reads_index.saturating_sub(earlier.reads_index),
            reads_failed: self.reads_failed.saturating_sub(earlier.reads_failed),
            lease_rounds_sent: self
                .lease_rounds_sent
                .saturating_sub(earlier.lease_rounds_sent),
            lag_instances: self.lag_instances,
            lag_instances_max: self.lag_instances_max,
        }
    }

    /// Field-by-field sum.
    pub fn add(&mut self, other: &Counters) {
        self.rounds += other.rounds;
        self.write_rounds += other.write_rounds;
        self.durable_writes += other.durable_writes;
        self.wal_writes += other.wal_writes;
        self.records += other.records;
        self.groups_in_rounds += other.groups_in_rounds;
        self.bytes_written += other.bytes_written;
        self.wal_payload_bytes += other.wal_payload_bytes;
        self.padding_bytes += other.padding_bytes;
        self.commit_rtts_total += other.commit_rtts_total;
        self.commit_instances += other.commit_instances;
        self.proposals_committed += other.proposals_committed;
        self.applied_commands += other.applied_commands;
        self.wal_write_p50_us = self.wal_write_p50_us.max(other.wal_write_p50_us);
        self.wal_write_p99_us = self.wal_write_p99_us.max(other.wal_write_p99_us);
        self.reads_lease += other.reads_lease;
        self.reads_index += other.reads_index;
        self.reads_failed += other.reads_failed;
        self.lease_rounds_sent += other.lease_rounds_sent;
        self.lag_instances += other.lag_instances;
        self.lag_instances_max = self.lag_instances_max.max(other.lag_instances_max);
    }
}

#[cfg(test)]
mod tests {
    //! Proves that commands and events survive the JSON line round trip (memory figures
    //! included, and optional) and that counter deltas subtract field by field.
    use super::*;

    #[test]
    fn command_round_trip() {
        let run = Command::Run(RunSpec {
            client_groups: vec![0, 1, 1],
            rate_groups: vec![],
            rate_per_s: 0.0,
            value_bytes: 100,
            warmup_s: 0.5,
            seconds: 2.0,
            progress_ms: 250,
        });
        let line = serde_json::to_string(&run).unwrap();
        assert!(line.contains("\"cmd\":\"run\""), "{line}");
        match serde_json::from_str::<Command>(&line).unwrap() {
            Command::Run(spec) => assert_eq!(spec.client_groups, vec![0, 1, 1]),
            other => panic!("decoded {other:?}"),
        }
        assert!(serde_json::from_str::<Command>("{\"cmd\":\"explode\"}").is_err());
    }

    #[test]
    fn memory_rides_on_ready_and_bye() {
        let memory = Memory {
            rss_bytes: 5 << 20,
            hwm_bytes: 7 << 20,
            anon_bytes: Some(3 << 20),
            file_bytes: None,
        };
        let line = serde_json::to_string(&Event::Bye {
            counters: Counters::default(),
            memory: Some(memory),
        })
        .unwrap();
        match serde_json::from_str::<Event>(&line).unwrap() {
            Event::Bye { memory: got, .. } => assert_eq!(got, Some(memory)),
            other => panic!("decoded {other:?}"),
        }
        // A node that does not report memory (an older binary) still decodes.
        match serde_json::from_str::<Event>("{\"event\":\"ready\",\"id\":2,\"pid\":9}").unwrap() {
            Event::Ready { id, memory, .. } => {
                assert_eq!(id, 2);
                assert_eq!(memory, None);
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn node_spec_without_follower_fields_parses() {
        let spec = NodeSpec {
            id: 4,
            listen: "127.0.0.1:7004".parse().unwrap(),
            peers: vec![(1, "127.0.0.1:7001".parse().unwrap())],
            dir: PathBuf::from("node-4"),
            groups: 2,
            pipeline_depth: None,
            cores: 1,
            blocking_wal: false,
            sync_mode: None,
            wal_writes_in_flight: None,
            cluster_id: 7,
            kv: None,
            follower: true,
            follower_peers: vec![5],
        };
        let line = serde_json::to_string(&spec).unwrap();
        let back: NodeSpec = serde_json::from_str(&line).unwrap();
        assert!(back.follower);
        assert_eq!(back.follower_peers, vec![5]);
        // A spec written before followers existed: a voter with voting peers.
        let mut old: serde_json::Value = serde_json::from_str(&line).unwrap();
        let map = old.as_object_mut().unwrap();
        map.remove("follower");
        map.remove("follower_peers");
        let back: NodeSpec = serde_json::from_value(old).unwrap();
        assert!(!back.follower);
        assert!(back.follower_peers.is_empty());
    }

    #[test]
    fn counters_since() {
        let a = Counters {
            durable_writes: 10,
            write_rounds: 10,
            records: 40,
            ..Counters::default()
        };
        let b = Counters {
            durable_writes: 25,
            write_rounds: 24,
            records: 100,
            ..Counters::default()
        };
        let d = b.since(&a);
        assert_eq!(d.durable_writes, 15);
        assert_eq!(d.write_rounds, 14);
        assert_eq!(d.records, 60);
        assert_eq!(a.since(&b).durable_writes, 0);
    }

    #[test]
    fn lag_is_a_gauge() {
        let before = Counters {
            applied_commands: 100,
            lag_instances: 40,
            lag_instances_max: 9,
            ..Counters::default()
        };
        let after = Counters {
            applied_commands: 350,
            lag_instances: 3,
            lag_instances_max: 2,
            ..Counters::default()
        };
        let d = after.since(&before);
        assert_eq!(d.applied_commands, 250);
        assert_eq!((d.lag_instances, d.lag_instances_max), (3, 2));
        let mut sum = d;
        sum.add(&before);
        assert_eq!((sum.lag_instances, sum.lag_instances_max), (43, 9));
    }
}
