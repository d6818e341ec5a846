//! Node configuration: built in code with [`NodeConfig::builder`] or loaded from a TOML file,
//! validated once, with errors that say what to fix.
//!
//! Owns: the shape of a node's settings and their validation. Never: I/O beyond reading the
//! TOML file it is asked to load.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a WAL write becomes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncModeConfig {
    /// One write with DSYNC semantics per round.
    Dsync,
    /// One write followed by a linked fdatasync per round: the default, as the WAL's own, chosen
    /// by measurement (DSYNC was at times 3–4x slower at 64 KiB rounds; docs/WAL_FORMAT.md).
    #[default]
    Fdatasync,
}

/// Which I/O backend the WALs use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WalBackendConfig {
    /// io_uring when the kernel allows it, else blocking system calls (with a warning).
    #[default]
    Auto,
    /// io_uring or fail at start.
    Uring,
    /// Blocking `pwrite` + `fdatasync` (or RWF_DSYNC): every durable write is a visible syscall.
    Blocking,
}

/// A peer: another member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConfig {
    /// The peer's node id (unique in the cluster, not this node's).
    pub id: u32,
    /// The peer's address for replication traffic (may be a proxy in tests).
    pub addr: SocketAddr,
    /// The peer is a follower: a non-voting replica that receives and applies chosen values
    /// but never votes, leads or grants a lease (docs/PROTOCOL.md#follower-nodes). Every node must
    /// list the same followers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follower: bool,
}

/// Everything a node needs to start. Field names are the TOML keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id: unique in the cluster, not 0.
    pub node_id: u32,
    /// Identifies the cluster; a peer with another id is refused at the handshake.
    pub cluster_id: u64,
    /// Where this node listens for peers (one ip:port for all groups).
    pub listen: SocketAddr,
    /// Every other member, each with its own address.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// This node is a follower: a non-voting replica (docs/PROTOCOL.md#follower-nodes). Its peers
    /// list it with `follower = true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follower: bool,
    /// Directory for the WAL (one subdirectory per core) and the application's state.
    pub data_dir: PathBuf,
    /// Number of core threads; each owns a WAL and a fixed set of groups.
    #[serde(default = "defaults::cores")]
    pub cores: usize,
    /// Pin core threads to CPUs (cores beyond the CPU count wrap around, and this is logged).
    #[serde(default = "defaults::yes")]
    pub pin_cores: bool,
    /// Number of Paxos groups, numbered 0..groups; identical on every node of a version.
    #[serde(default = "defaults::groups")]
    pub groups: u32,
    /// Instances in flight per group (1 = PhxPaxos's serial mode).
    #[serde(default = "defaults::pipeline_depth")]
    pub pipeline_depth: u32,
    /// Largest value (batch of commands) of one instance, in bytes.
    #[serde(default = "defaults::batch_bytes_max")]
    pub batch_bytes_max: u32,
    /// Most commands in one instance's value.
    #[serde(default = "defaults::batch_commands_max")]
    pub batch_commands_max: u32,
    /// Longest time a proposal waits for more to join its batch, in microseconds (0 = none:
    /// batches form from whatever arrives while earlier instances are in flight).
    #[serde(default)]
    pub batch_linger_us: u64,
    /// Proposals queued per core before `Error::Overloaded`.
    #[serde(default = "defaults::proposal_queue_max")]
    pub proposal_queue_max: usize,
    /// How a WAL write becomes durable.
    #[serde(default)]
    pub sync_mode: SyncModeConfig,
    /// Which I/O backend the WALs use.
    #[serde(default)]
    pub wal_backend: WalBackendConfig,
    /// Size of one WAL segment file, in bytes (a multiple of 4096).
    #[serde(default = "defaults::segment_bytes")]
    pub segment_bytes: u64,
    /// Largest WAL write of one round, in bytes (a multiple of 4096).
    #[serde(default = "defaults::round_bytes_max")]
    pub round_bytes_max: usize,
    /// WAL writes a core keeps in flight at once (1..=8; each costs one more write buffer of
    /// `round_bytes_max`). A reply that depends on a record still leaves only once every
    /// earlier record is durable (docs/WAL_FORMAT.md, several writes in flight).
    #[serde(default = "defaults::wal_writes_in_flight")]
    pub wal_writes_in_flight: usize,
    /// Length of one protocol tick, in milliseconds.
    #[serde(default = "defaults::tick_ms")]
    pub tick_ms: u64,
    /// Ticks without hearing from a leader before a follower may try to lead.
    #[serde(default = "defaults::election_timeout_ticks")]
    pub election_timeout_ticks: u32,
    /// Ticks between a leader's heartbeats.
    #[serde(default = "defaults::heartbeat_ticks")]
    pub heartbeat_ticks: u32,
    /// Largest frame accepted from a peer, in bytes.
    #[serde(default = "defaults::frame_bytes_max")]
    pub frame_bytes_max: u32,
    /// Frames queued per core inbox before the network thread stops reading (back-pressure).
    #[serde(default = "defaults::inbox_frames_max")]
    pub inbox_frames_max: usize,
    /// Bytes of frames kept for a peer while its connection is down (the newest; older ones
    /// are dropped and counted in `outbound_dropped_stale_frames`): a peer that returns gets
    /// at most this much backlog, and catches up the rest by catch-up or a checkpoint.
    #[serde(default = "defaults::outbound_down_bytes_max")]
    pub outbound_down_bytes_max: usize,
    /// Streaming catch-up's window per group (docs/PROTOCOL.md#streaming-catch-up): values a
    /// lagging replica has asked for beyond its applied point (bounds its memory).
    #[serde(default = "defaults::catchup_window_instances")]
    pub catchup_window_instances: u32,
    /// The same window in value bytes (each request asks for at most half of it).
    #[serde(default = "defaults::catchup_window_bytes")]
    pub catchup_window_bytes: u32,
    /// Value bytes per second each core reads from its WAL to serve lagging peers (0: no
    /// limit beyond the per-round read budget). A limit keeps the serving node's own commit
    /// latency closer to normal while a peer catches up, at the cost of the catch-up rate.
    #[serde(default)]
    pub catchup_serve_bytes_per_sec: u64,
    // --- Checkpoint mode (docs/ARCHITECTURE.md, "Checkpoints") ---
    /// How each group's checkpoints are made: by the application (every group, by default) or
    /// by a mirror state machine the runtime feeds (the groups listed). Left out of the TOML
    /// text while it is the default.
    #[serde(default, skip_serializing_if = "CheckpointModeConfig::is_default")]
    pub checkpoint_mode: CheckpointModeConfig,
    // --- WAL purge (docs/ARCHITECTURE.md#purge) ---
    /// How often each core moves its groups' log bases up to their state machines'
    /// checkpoints and purges WAL segments no group needs, in milliseconds.
    #[serde(default = "defaults::purge_every_ms")]
    pub purge_every_ms: u64,
    /// Purge the WAL: each group's log base follows its state machine's checkpoint and the
    /// segments below every group's base are removed, so a node's WAL stays bounded. On by
    /// default: a replica behind every peer's log base fetches a checkpoint from a peer
    /// (docs/PROTOCOL.md#checkpoint-transfer), which in application mode needs the state
    /// machine's `snapshot` and `restore`. A group whose state machine reports no checkpoint
    /// (`checkpoint_instance` is `None`) keeps its whole log either way. Off, the purge pass
    /// still reports the WAL's size and what would hold it.
    #[serde(default = "defaults::yes")]
    pub wal_purge: bool,
    /// The disk a core's WAL stays under, in bytes (0: no budget), counting the segments it
    /// holds (docs/ARCHITECTURE.md, "WAL budget"). Purge never removes what a group still
    /// needs; instead, a proposal the WAL has no room for within the budget (counting what
    /// the proposals already admitted may take) is refused with `Overloaded` until purge makes
    /// room, and the groups holding the oldest segment (and why) are logged once per interval
    /// and shown in stats. At least two segments and four writes of `round_bytes_max`.
    #[serde(default)]
    pub wal_budget_bytes: u64,
    /// Purge holds for lagging peers (docs/PROTOCOL.md#log-base-and-purge): a group's log base
    /// does not move past what a peer asked for (by catch-up or checkpoint transfer) within
    /// this many milliseconds, so a peer catching up from the log is not pushed behind the
    /// base into a checkpoint transfer. 0 turns the hold off. A peer silent for longer holds
    /// nothing (a dead peer never stops the purge).
    #[serde(default = "defaults::purge_hold_for_peers_ms")]
    pub purge_hold_for_peers_ms: u64,
    /// Check quorum and leader stickiness (docs/PROTOCOL.md#leader-stickiness-and-check-quorum):
    /// a leader that has not heard from a quorum within an election timeout steps down (its
    /// clients are answered at once), and a replica that hears a live leader ignores Prepares
    /// from other nodes (a restarted or cut-off node does not depose it). On by default.
    #[serde(default = "defaults::yes")]
    pub check_quorum: bool,
    /// The master lease in milliseconds (docs/PROTOCOL.md#master-lease): a follower that
    /// answers its leader's lease round promises no other node, and grants no other node, for
    /// this long on its own clock (CLOCK_MONOTONIC); the leader is master (and serves lease
    /// reads with no message) while a quorum's grants must still run, counting
    /// `clock_drift_ppm`. 0 turns leases off (reads then use read index). Must be the same on
    /// every node.
    #[serde(default = "defaults::master_lease_ms")]
    pub master_lease_ms: u64,
    /// The bound on any node's clock-rate drift from real time that leases assume, in parts
    /// per million (10,000 = 1%). Must be the same on every node.
    #[serde(default = "defaults::clock_drift_ppm")]
    pub clock_drift_ppm: u32,
}

mod defaults {
    pub fn cores() -> usize {
        1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn groups() -> u32 {
        1
    }
    pub fn pipeline_depth() -> u32 {
        8
    }
    pub fn batch_bytes_max() -> u32 {
        256 * 1024
    }
    pub fn batch_commands_max() -> u32 {
        4096
    }
    pub fn proposal_queue_max() -> usize {
        65_536
    }
    pub fn segment_bytes() -> u64 {
        64 * 1024 * 1024
    }
    pub fn round_bytes_max() -> usize {
        4 * 1024 * 1024
    }
    pub fn wal_writes_in_flight() -> usize {
        paxring_wal::WRITES_IN_FLIGHT_DEFAULT
    }
    pub fn tick_ms() -> u64 {
        10
    }
    pub fn master_lease_ms() -> u64 {
        250
    }
    pub fn clock_drift_ppm() -> u32 {
        10_000
    }
    pub fn election_timeout_ticks() -> u32 {
        30
    }
    pub fn heartbeat_ticks() -> u32 {
        5
    }
    pub fn frame_bytes_max() -> u32 {
        16 * 1024 * 1024
    }
    pub fn inbox_frames_max() -> usize {
        65_536
    }
    pub fn outbound_down_bytes_max() -> usize {
        paxring_net::NetConfig::OUTBOUND_DOWN_BYTES_MAX_DEFAULT
    }
    pub fn purge_every_ms() -> u64 {
        1000
    }
    pub fn purge_hold_for_peers_ms() -> u64 {
        30_000
    }
    pub fn catchup_window_instances() -> u32 {
        4096
    }
    pub fn catchup_window_bytes() -> u32 {
        8 << 20
    }
}

/// A configuration that cannot run, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field has a value that cannot work.
    #[error("config field `{field}`: {problem} (fix: {fix})")]
    Invalid {
        /// The TOML key.
        field: &'static str,
        /// What is wrong.
        problem: String,
        /// What to do instead.
        fix: &'static str,
    },
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("config file {path} is not a valid node config: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's words, with the line.
        message: String,
    },
}

fn invalid(field: &'static str, problem: String, fix: &'static str) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem,
        fix,
    }
}

impl NodeConfig {
    /// A config with defaults for everything but identity, address and data dir.
    pub fn builder(
        node_id: u32,
        listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
    ) -> NodeConfigBuilder {
        NodeConfigBuilder {
            config: NodeConfig {
                node_id,
                cluster_id: 1,
                listen,
                peers: Vec::new(),
                follower: false,
                data_dir: data_dir.into(),
                cores: defaults::cores(),
                pin_cores: defaults::yes(),
                groups: defaults::groups(),
                pipeline_depth: defaults::pipeline_depth(),
                batch_bytes_max: defaults::batch_bytes_max(),
                batch_commands_max: defaults::batch_commands_max(),
                batch_linger_us: 0,
                proposal_queue_max: defaults::proposal_queue_max(),
                sync_mode: SyncModeConfig::default(),
                wal_backend: WalBackendConfig::default(),
                segment_bytes: defaults::segment_bytes(),
                round_bytes_max: defaults::round_bytes_max(),
                wal_writes_in_flight: defaults::wal_writes_in_flight(),
                tick_ms: defaults::tick_ms(),
                election_timeout_ticks: defaults::election_timeout_ticks(),
                heartbeat_ticks: defaults::heartbeat_ticks(),
                frame_bytes_max: defaults::frame_bytes_max(),
                inbox_frames_max: defaults::inbox_frames_max(),
                outbound_down_bytes_max: defaults::outbound_down_bytes_max(),
                catchup_window_instances: defaults::catchup_window_instances(),
                catchup_window_bytes: defaults::catchup_window_bytes(),
                catchup_serve_bytes_per_sec: 0,
                checkpoint_mode: CheckpointModeConfig::default(),
                purge_every_ms: defaults::purge_every_ms(),
                wal_purge: defaults::yes(),
                wal_budget_bytes: 0,
                purge_hold_for_peers_ms: defaults::purge_hold_for_peers_ms(),
                check_quorum: true,
                master_lease_ms: defaults::master_lease_ms(),
                clock_drift_ppm: defaults::clock_drift_ppm(),
            },
        }
    }

    /// Loads and validates a TOML file.
    pub fn from_toml_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = NodeConfig::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML text (what `from_toml_str` reads back).
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("a NodeConfig always serializes to TOML")
    }

    /// Every voting member's node id, this node's included when it votes, sorted.
    pub fn members(&self) -> Vec<u32> {
        let mut members: Vec<u32> = self
            .peers
            .iter()
            .filter(|p| !p.follower)
            .map(|p| p.id)
            .collect();
        if !self.follower {
            members.push(self.node_id);
        }
        members.sort_unstable();
        members
    }

    /// Every follower's node id (non-voting replicas), this node's included when it is one,
    /// sorted.
    pub fn followers(&self) -> Vec<u32> {
        let mut followers: Vec<u32> = self
            .peers
            .iter()
            .filter(|p| p.follower)
            .map(|p| p.id)
            .collect();
        if self.follower {
            followers.push(self.node_id);
        }
        followers.sort_unstable();
        followers
    }

    /// The length of a tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// Checks every field and how fields relate.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid(
                "node_id",
                "is 0".into(),
                "use a positive id, unique in the cluster",
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        ids.insert(self.node_id);
        for peer in &self.peers {
            if peer.id == 0 {
                return Err(invalid(
                    "peers",
                    "a peer has id 0".into(),
                    "give every peer a positive id",
                ));
            }
            if !ids.insert(peer.id) {
                return Err(invalid(
                    "peers",
                    format!(
                        "node id {} appears twice (or is this node's own id)",
                        peer.id
                    ),
                    "list every other member exactly once, not this node",
                ));
            }
            if peer.addr == self.listen {
                return Err(invalid(
                    "peers",
                    format!(
                        "peer {} has this node's own listen address {}",
                        peer.id, peer.addr
                    ),
                    "give each node its own ip:port",
                ));
            }
        }
        let voters = self.members().len();
        if voters == 0 {
            return Err(invalid(
                "follower",
                "every node is a follower".into(),
                "a cluster needs voters: set follower = true only on non-voting replicas",
            ));
        }
        if voters > 9 {
            return Err(invalid(
                "peers",
                format!("{voters} voting members"),
                "use at most 9 voting members (followers do not count)",
            ));
        }
        if self.peers.len() + 1 > 16 {
            return Err(invalid(
                "peers",
                format!("{} nodes", self.peers.len() + 1),
                "use at most 16 nodes, voters and followers together",
            ));
        }
        if self.cores == 0 || self.cores > 64 {
            return Err(invalid(
                "cores",
                format!("is {}", self.cores),
                "use 1 to 64 core threads",
            ));
        }
        if self.groups == 0 || self.groups > 100_000 {
            return Err(invalid(
                "groups",
                format!("is {}", self.groups),
                "use 1 to 100000 groups",
            ));
        }
        // One limit, the core's: a value the core would refuse is refused here, by name.
        const _: () = assert!(crate::core::PIPELINE_MAX == 256, "update the message below");
        if self.pipeline_depth == 0 || self.pipeline_depth > crate::core::PIPELINE_MAX {
            return Err(invalid(
                "pipeline_depth",
                format!("is {}", self.pipeline_depth),
                "use 1 to 256 (the consensus core's PIPELINE_MAX)",
            ));
        }
        if self.batch_commands_max == 0 {
            return Err(invalid(
                "batch_commands_max",
                "is 0".into(),
                "use at least 1",
            ));
        }
        if self.batch_bytes_max < 64 {
            return Err(invalid(
                "batch_bytes_max",
                format!("is {}", self.batch_bytes_max),
                "use at least 64 bytes",
            ));
        }
        if self.round_bytes_max % 4096 != 0 || self.round_bytes_max < 64 * 1024 {
            return Err(invalid(
                "round_bytes_max",
                format!("is {}", self.round_bytes_max),
                "use a multiple of 4096, at least 65536",
            ));
        }
        const _: () = assert!(paxring_wal::WRITES_IN_FLIGHT_MAX == 8, "the message below");
        if !(1..=paxring_wal::WRITES_IN_FLIGHT_MAX).contains(&self.wal_writes_in_flight) {
            return Err(invalid(
                "wal_writes_in_flight",
                format!("is {}", self.wal_writes_in_flight),
                "use 1..=8",
            ));
        }
        if self.segment_bytes % 4096 != 0 || self.segment_bytes < 4 * self.round_bytes_max as u64 {
            return Err(invalid(
                "segment_bytes",
                format!(
                    "is {} with round_bytes_max = {}",
                    self.segment_bytes, self.round_bytes_max
                ),
                "use a multiple of 4096, at least 4 x round_bytes_max",
            ));
        }
        if u64::from(self.batch_bytes_max) + 4096 > self.round_bytes_max as u64 {
            return Err(invalid(
                "batch_bytes_max",
                format!(
                    "{} does not fit one round write of round_bytes_max = {}",
                    self.batch_bytes_max, self.round_bytes_max
                ),
                "keep batch_bytes_max at least 4 KiB below round_bytes_max",
            ));
        }
        if u64::from(self.batch_bytes_max) + 4096 > u64::from(self.frame_bytes_max) {
            return Err(invalid(
                "frame_bytes_max",
                format!(
                    "{} cannot carry a value of batch_bytes_max = {}",
                    self.frame_bytes_max, self.batch_bytes_max
                ),
                "keep frame_bytes_max at least 4 KiB above batch_bytes_max",
            ));
        }
        if self.outbound_down_bytes_max == 0 {
            return Err(invalid(
                "outbound_down_bytes_max",
                "0 keeps nothing for a peer that is down".to_string(),
                "set at least one frame's worth (the default is 4 MiB)",
            ));
        }
        if self.purge_every_ms == 0 {
            return Err(invalid(
                "purge_every_ms",
                "is 0".into(),
                "use at least 1 (the default is 1000)",
            ));
        }
        // Twice the writes a core keeps back (those in flight and the one being filled).
        let writes = 2 * (self.wal_writes_in_flight as u64 + 1);
        let budget_min = 2 * self.segment_bytes + writes * self.round_bytes_max as u64;
        if self.wal_budget_bytes != 0 && self.wal_budget_bytes < budget_min {
            return Err(invalid(
                "wal_budget_bytes",
                format!(
                    "{} is below two segments of segment_bytes = {} and {writes} writes of round_bytes_max = {} ({budget_min})",
                    self.wal_budget_bytes, self.segment_bytes, self.round_bytes_max
                ),
                "use 0 (no budget) or at least that: the segment being written, one more, and room for the writes in progress and the proposals admitted",
            ));
        }
        if self.proposal_queue_max == 0 {
            return Err(invalid(
                "proposal_queue_max",
                "is 0".into(),
                "use at least 1",
            ));
        }
        if self.tick_ms == 0 || self.tick_ms > 10_000 {
            return Err(invalid(
                "tick_ms",
                format!("is {}", self.tick_ms),
                "use 1 to 10000 ms",
            ));
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_timeout_ticks {
            return Err(invalid(
                "heartbeat_ticks",
                format!(
                    "is {} with election_timeout_ticks = {}",
                    self.heartbeat_ticks, self.election_timeout_ticks
                ),
                "keep 0 < heartbeat_ticks < election_timeout_ticks",
            ));
        }
        if self.inbox_frames_max == 0 {
            return Err(invalid("inbox_frames_max", "is 0".into(), "use at least 1"));
        }
        if (self.catchup_window_instances as usize) < crate::core::CATCHUP_BATCH_MAX {
            return Err(invalid(
                "catchup_window_instances",
                format!("is {}", self.catchup_window_instances),
                "use at least 256 (one catch-up reply)",
            ));
        }
        if u64::from(self.catchup_window_bytes) < 2 * u64::from(self.batch_bytes_max) {
            return Err(invalid(
                "catchup_window_bytes",
                format!(
                    "is {} with batch_bytes_max = {}",
                    self.catchup_window_bytes, self.batch_bytes_max
                ),
                "use at least twice batch_bytes_max (each request asks for half the window)",
            ));
        }
        if self.master_lease_ms > 0 {
            let lease = crate::core::Config {
                heartbeat_ticks: u64::from(self.heartbeat_ticks),
                master_lease_ticks: self.master_lease_ticks(),
                clock_drift_ppm: self.clock_drift_ppm,
                ..crate::core::Config::default()
            };
            if self.clock_drift_ppm >= 1_000_000
                || lease.lease_usable_ticks() <= lease.heartbeat_ticks
            {
                return Err(invalid(
                    "master_lease_ms",
                    format!(
                        "is {} ms with clock_drift_ppm = {}, tick_ms = {} and heartbeat_ticks = {}: a master could count on its lease for only {} ticks, not more than one heartbeat",
                        self.master_lease_ms,
                        self.clock_drift_ppm,
                        self.tick_ms,
                        self.heartbeat_ticks,
                        lease.lease_usable_ticks()
                    ),
                    "use a lease of several heartbeats (the default is 250 ms with 50 ms heartbeats), a drift bound below 1,000,000 ppm, or 0 to turn leases off",
                ));
            }
        }
        self.checkpoint_mode.validate(self.groups)?;
        Ok(())
    }

    /// The master lease in ticks (whole ticks: every node computes the same).
    pub fn master_lease_ticks(&self) -> u64 {
        self.master_lease_ms / self.tick_ms.max(1)
    }
}

/// Builds a [`NodeConfig`] in code; `build` validates it.
#[derive(Clone, Debug)]
pub struct NodeConfigBuilder {
    config: NodeConfig,
}

macro_rules! setter {
    ($(#[$doc:meta] $name:ident: $ty:ty),* $(,)?) => {
        $(#[$doc] pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        })*
    };
}

impl NodeConfigBuilder {
    setter! {
        /// Sets `cluster_id`.
        cluster_id: u64,
        /// Sets `cores`.
        cores: usize,
        /// Sets `pin_cores`.
        pin_cores: bool,
        /// Sets `groups`.
        groups: u32,
        /// Sets `pipeline_depth`.
        pipeline_depth: u32,
        /// Sets `batch_bytes_max`.
        batch_bytes_max: u32,
        /// Sets `batch_commands_max`.
        batch_commands_max: u32,
        /// Sets `batch_linger_us`.
        batch_linger_us: u64,
        /// Sets `proposal_queue_max`.
        proposal_queue_max: usize,
        /// Sets `sync_mode`.
        sync_mode: SyncModeConfig,
        /// Sets `wal_backend`.
        wal_backend: WalBackendConfig,
        /// Sets `segment_bytes`.
        segment_bytes: u64,
        /// Sets `round_bytes_max`.
        round_bytes_max: usize,
        /// Sets `wal_writes_in_flight`.
        wal_writes_in_flight: usize,
        /// Sets `tick_ms`.
        tick_ms: u64,
        /// Sets `election_timeout_ticks`.
        election_timeout_ticks: u32,
        /// Sets `heartbeat_ticks`.
        heartbeat_ticks: u32,
        /// Sets `frame_bytes_max`.
        frame_bytes_max: u32,
        /// Sets `purge_every_ms`.
        purge_every_ms: u64,
        /// Sets `wal_purge`.
        wal_purge: bool,
        /// Sets `wal_budget_bytes`.
        wal_budget_bytes: u64,
        /// Sets `purge_hold_for_peers_ms`.
        purge_hold_for_peers_ms: u64,
        /// Sets `check_quorum`.
        check_quorum: bool,
        /// Sets `master_lease_ms`.
        master_lease_ms: u64,
        /// Sets `clock_drift_ppm`.
        clock_drift_ppm: u32,
        /// Sets `inbox_frames_max`.
        inbox_frames_max: usize,
        /// Sets `outbound_down_bytes_max`.
        outbound_down_bytes_max: usize,
        /// Sets `catchup_window_instances`.
        catchup_window_instances: u32,
        /// Sets `catchup_window_bytes`.
        catchup_window_bytes: u32,
        /// Sets `catchup_serve_bytes_per_sec`.
        catchup_serve_bytes_per_sec: u64,
    }

    /// Adds a peer (a voter).
    pub fn peer(mut self, id: u32, addr: SocketAddr) -> Self {
        self.config.peers.push(PeerConfig {
            id,
            addr,
            follower: false,
        });
        self
    }

    /// Adds a peer that is a follower (non-voting, docs/PROTOCOL.md#follower-nodes).
    pub fn follower_peer(mut self, id: u32, addr: SocketAddr) -> Self {
        self.config.peers.push(PeerConfig {
            id,
            addr,
            follower: true,
        });
        self
    }

    /// Makes this node a follower (non-voting).
    pub fn follower(mut self, follower: bool) -> Self {
        self.config.follower = follower;
        self
    }

    /// Validates and returns the config.
    pub fn build(self) -> Result<NodeConfig, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

// --- Checkpoint mode (docs/ARCHITECTURE.md, "Checkpoints"): the type of `checkpoint_mode`,
// its defaults, validation and builder setter, and their tests. ---

/// How each group's checkpoints are made (docs/ARCHITECTURE.md, "Checkpoints"): by the
/// application itself (the default for every group) or by a mirror state machine that the
/// runtime feeds behind the live one (PhxPaxos). In TOML, the `[checkpoint_mode]` table, e.g.
/// `mirror_groups = [0, 3]` and `mirror_every_instances = 100000`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointModeConfig {
    /// Every group in mirror mode (then `mirror_groups` must be empty).
    #[serde(default)]
    pub mirror_all: bool,
    /// The groups in mirror mode, each once; every other group is in application mode.
    #[serde(default)]
    pub mirror_groups: Vec<u32>,
    /// Mirror mode: applied instances between two checkpoints (one is written after each
    /// instance `i` with `(i + 1) % mirror_every_instances == 0`).
    #[serde(default = "CheckpointModeConfig::default_every_instances")]
    pub mirror_every_instances: u64,
    /// Mirror mode: chosen values queued from a core's executor to its mirror thread. When the
    /// queue is full the live state machine does not wait: the value's group stops being
    /// mirrored (logged, counted) and its checkpoints stay where they were until the next start.
    #[serde(default = "CheckpointModeConfig::default_queue_max")]
    pub mirror_queue_max: usize,
}

impl Default for CheckpointModeConfig {
    fn default() -> Self {
        CheckpointModeConfig {
            mirror_all: false,
            mirror_groups: Vec::new(),
            mirror_every_instances: CheckpointModeConfig::default_every_instances(),
            mirror_queue_max: CheckpointModeConfig::default_queue_max(),
        }
    }
}

impl CheckpointModeConfig {
    fn default_every_instances() -> u64 {
        100_000
    }

    fn default_queue_max() -> usize {
        65_536
    }

    fn is_default(&self) -> bool {
        *self == CheckpointModeConfig::default()
    }

    /// Every group in mirror mode, a checkpoint every `every_instances` applied instances.
    pub fn mirror_all(every_instances: u64) -> CheckpointModeConfig {
        CheckpointModeConfig {
            mirror_all: true,
            mirror_every_instances: every_instances,
            ..CheckpointModeConfig::default()
        }
    }

    /// The mode of `group`.
    pub fn mode_of(&self, group: GroupId) -> CheckpointMode {
        if self.mirror_all || self.mirror_groups.contains(&group.0) {
            CheckpointMode::Mirror {
                every_instances: self.mirror_every_instances,
            }
        } else {
            CheckpointMode::Application
        }
    }

    /// Checks the table against the node's group count.
    fn validate(&self, groups: u32) -> Result<(), ConfigError> {
        if self.mirror_every_instances == 0 {
            return Err(invalid(
                "checkpoint_mode.mirror_every_instances",
                "is 0".into(),
                "use at least 1 (the default is 100000)",
            ));
        }
        if self.mirror_queue_max == 0 {
            return Err(invalid(
                "checkpoint_mode.mirror_queue_max",
                "is 0".into(),
                "use at least 1 (the default is 65536)",
            ));
        }
        if self.mirror_all && !self.mirror_groups.is_empty() {
            return Err(invalid(
                "checkpoint_mode.mirror_groups",
                "is not empty while mirror_all is true".into(),
                "set mirror_all = true alone, or list the groups and leave mirror_all out",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for group in &self.mirror_groups {
            if *group >= groups {
                return Err(invalid(
                    "checkpoint_mode.mirror_groups",
                    format!("names group {group}, and groups = {groups}"),
                    "list only groups 0..groups",
                ));
            }
            if !seen.insert(*group) {
                return Err(invalid(
                    "checkpoint_mode.mirror_groups",
                    format!("names group {group} twice"),
                    "list each group once",
                ));
            }
        }
        Ok(())
    }
}

impl NodeConfigBuilder {
    /// Sets `checkpoint_mode`.
    pub fn checkpoint_mode(mut self, value: CheckpointModeConfig) -> Self {
        self.config.checkpoint_mode = value;
        self
    }
}

use super::state_machine::CheckpointMode;
use paxring_wal::GroupId;

#[cfg(test)]
mod checkpoint_mode_tests {
    //! Proves `checkpoint_mode` defaults to application mode for every group, selects mirror
    //! mode per group, round-trips through TOML, and refuses unworkable tables by name.
    use super::*;

    fn base() -> NodeConfigBuilder {
        NodeConfig::builder(1, "127.0.0.1:7001".parse().unwrap(), "/data").groups(4)
    }

    #[test]
    fn default_is_application_and_stays_out_of_the_toml() {
        let config = base().build().unwrap();
        for group in 0..4 {
            assert_eq!(
                config.checkpoint_mode.mode_of(GroupId(group)),
                CheckpointMode::Application
            );
        }
        assert!(!config.to_toml_string().contains("checkpoint_mode"));
    }

    #[test]
    fn mirror_groups_are_chosen_per_group_and_round_trip() {
        let text = "node_id = 1\ncluster_id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/d\"\n\
                    groups = 4\n[checkpoint_mode]\nmirror_groups = [1, 3]\n\
                    mirror_every_instances = 50\n";
        let config = NodeConfig::from_toml_str(text).unwrap();
        let modes: Vec<CheckpointMode> = (0..4)
            .map(|g| config.checkpoint_mode.mode_of(GroupId(g)))
            .collect();
        let mirror = CheckpointMode::Mirror {
            every_instances: 50,
        };
        use CheckpointMode::Application as App;
        assert_eq!(modes, vec![App, mirror, App, mirror]);
        assert_eq!(config.checkpoint_mode.mirror_queue_max, 65_536);
        let back = NodeConfig::from_toml_str(&config.to_toml_string()).unwrap();
        assert_eq!(back, config);
        let all = base()
            .checkpoint_mode(CheckpointModeConfig::mirror_all(7))
            .build()
            .unwrap();
        assert_eq!(
            all.checkpoint_mode.mode_of(GroupId(2)),
            CheckpointMode::Mirror { every_instances: 7 }
        );
    }

    #[test]
    fn unworkable_tables_are_named() {
        let with = |change: fn(&mut CheckpointModeConfig)| {
            let mut mode = CheckpointModeConfig::default();
            change(&mut mode);
            base()
                .checkpoint_mode(mode)
                .build()
                .unwrap_err()
                .to_string()
        };
        let cases: Vec<(String, &str)> = vec![
            (
                with(|m| m.mirror_every_instances = 0),
                "checkpoint_mode.mirror_every_instances",
            ),
            (
                with(|m| m.mirror_queue_max = 0),
                "checkpoint_mode.mirror_queue_max",
            ),
            (with(|m| m.mirror_groups = vec![4]), "group 4"),
            (with(|m| m.mirror_groups = vec![1, 1]), "twice"),
            (
                with(|m| {
                    m.mirror_all = true;
                    m.mirror_groups = vec![0];
                }),
                "mirror_all",
            ),
        ];
        for (text, expected) in cases {
            assert!(text.contains(expected), "{text} should say {expected}");
            assert!(text.contains("fix:"), "{text}");
        }
        let err = NodeConfig::from_toml_str(
            "node_id = 1\ncluster_id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/d\"\n\
             [checkpoint_mode]\nmirror_every = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mirror_every"), "{err}");
    }
}

pub use crate::core::core_of_group;

#[cfg(test)]
mod tests {
    //! Proves that validation rejects each unworkable setting with a message naming the field,
    //! and that TOML round-trips.
    use super::*;

    fn base() -> NodeConfigBuilder {
        NodeConfig::builder(1, "127.0.0.1:7001".parse().unwrap(), "/data")
            .peer(2, "127.0.0.1:7002".parse().unwrap())
            .peer(3, "127.0.0.1:7003".parse().unwrap())
    }

    #[test]
    fn good_config_round_trips_through_toml() {
        let config = base().groups(20).cores(2).build().unwrap();
        let text = config.to_toml_string();
        let back = NodeConfig::from_toml_str(&text).unwrap();
        assert_eq!(config, back);
        assert_eq!(back.members(), vec![1, 2, 3]);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(NodeConfigBuilder, &str)> = vec![
            (
                NodeConfig::builder(0, "127.0.0.1:1".parse().unwrap(), "/d"),
                "node_id",
            ),
            (base().peer(2, "127.0.0.1:7009".parse().unwrap()), "peers"),
            (base().peer(1, "127.0.0.1:7009".parse().unwrap()), "peers"),
            (base().peer(4, "127.0.0.1:7001".parse().unwrap()), "peers"),
            (base().cores(0), "cores"),
            (base().groups(0), "groups"),
            (base().pipeline_depth(0), "pipeline_depth"),
            (base().pipeline_depth(257), "pipeline_depth"),
            (base().round_bytes_max(1000), "round_bytes_max"),
            (base().segment_bytes(4096), "segment_bytes"),
            (base().batch_bytes_max(8 * 1024 * 1024), "batch_bytes_max"),
            (base().heartbeat_ticks(100), "heartbeat_ticks"),
            (base().tick_ms(0), "tick_ms"),
            (base().purge_every_ms(0), "purge_every_ms"),
            (base().outbound_down_bytes_max(0), "outbound_down_bytes_max"),
            (base().wal_budget_bytes(64 << 20), "wal_budget_bytes"),
        ];
        for (builder, field) in cases {
            let err = builder.build().unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&format!("`{field}`")),
                "{text} should name {field}"
            );
            assert!(text.contains("fix:"), "{text} should say how to fix it");
        }
    }

    #[test]
    fn wal_purge_is_on_by_default_in_code_and_in_toml() {
        assert!(base().build().unwrap().wal_purge);
        let text = "node_id = 1\ncluster_id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/d\"\n";
        assert!(NodeConfig::from_toml_str(text).unwrap().wal_purge);
        let off = format!("{text}wal_purge = false\n");
        assert!(!NodeConfig::from_toml_str(&off).unwrap().wal_purge);
    }

    #[test]
    fn unknown_key_and_bad_toml_are_errors_with_line() {
        let err = NodeConfig::from_toml_str(
            "node_id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/d\"\ncluster_id = 1\nbogus = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = NodeConfig::from_toml_str("node_id = \n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn groups_spread_over_cores() {
        let counts = (0..100u32).fold([0usize; 3], |mut acc, g| {
            acc[core_of_group(g, 3)] += 1;
            acc
        });
        assert_eq!(counts, [34, 33, 33]);
    }
}
