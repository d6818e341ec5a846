//! The consensus core: Multi-Paxos groups as a pure, deterministic state machine.
//!
//! Owns: the protocol (proposer, acceptor, learner of each group), the per-core [`CoreTable`]
//! that steps many groups and merges their durable records into one ordered stream, the wire
//! [`Message`]s and their codec, and the protocol counters. Must never read a clock, do I/O,
//! spawn a thread or draw randomness of its own: time arrives as [`Tick`]s, randomness from the
//! seeded [`Prng`] the driver passes in, and everything that must be persisted or sent leaves as
//! an output. A "tidy" test enforces this (see `tests/tidy.rs`).
//!
//! # Driving a core (the runtime and the simulator do exactly this)
//! ```
//! use paxring_engine::core::*;
//! use bytes::Bytes;
//! let members = [NodeId(1), NodeId(2), NodeId(3)];
//! let mut table = CoreTable::new(
//!     Config::default(), NodeId(1), &members, &[GroupId(0)], Prng::new(7),
//! ).unwrap();
//! let mut out = Outputs::default();
//! table.tick(Tick(1));
//! // A proposal on a node that is not (yet) the leader fails at once with a hint.
//! let early = table.propose(GroupId(0), ProposalId(1), Bytes::from_static(b"x"));
//! assert!(matches!(early, Err(FailReason::NotLeader { .. })));
//! table.poll(&mut out);
//! // Each round: append `out.appends` to the WAL in order, send `out.sends` now, hold each
//! // `out.sends_after_durable` until the WAL reports `durable(lsn)`, hand `out.chosen` to the
//! // executor, answer clients from `out.results`.
//! ```
//!
//! Inputs: [`CoreTable::on_message`], [`CoreTable::tick`], [`CoreTable::propose`],
//! [`CoreTable::durable`]; restart with [`CoreTable::restore`] from the WAL's `Recovery`.
//! Outputs ([`Outputs`], drained by [`CoreTable::poll`]): `appends` (records in Lsn order, Lsns
//! assigned consecutively from the recovery's `next_lsn`), `sends` (need no durability),
//! `sends_after_durable` (Promise, Accepted: released only once `durable >= lsn`), `chosen`
//! (values in instance order per group), `results` (Committed / Failed / Unknown per proposal)
//! and `stopped` (a group halted by a checksum mismatch). The protocol and its invariants are
//! documented in `docs/PROTOCOL.md`.
mod ctx;
mod group;
mod message;
mod outputs;
mod table;
pub mod value;
mod wal_types;

pub use group::log_base_of;
pub use group::membership::MEMBERSHIP_DELAY;
pub use message::{CheckpointInfo, DecodeError, Message, PromiseEntry, MESSAGE_KIND_MAX};
pub use outputs::{
    Broadcast, CheckpointRead, CheckpointWrite, Chosen, CoreStats, FailReason, GroupError,
    GroupStatus, InstallStatus, MasterChange, Outputs, ProposalResult, ReadReady, ReadRequest,
    RelearnStatus, SendAfterDurable, SendNow, Start,
};
pub use table::CoreTable;
pub use wal_types::{
    Ballot, Damage, GroupId, Instance, Lsn, Record, RecordKind, RecordRef, Recovery,
};

use serde::{Deserialize, Serialize};
use std::fmt;

/// The core that owns `group`: `group % cores`. Pure and identical on every node, so a group's
/// frames always land on the same core (the runtime and the simulator both place groups with
/// it); documented in docs/ARCHITECTURE.md#groups-and-cores.
pub fn core_of_group(group: u32, cores: usize) -> usize {
    assert!(cores > 0);
    (group as usize) % cores
}

/// A node of the cluster (the `node` half of a [`Ballot`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Who takes part in a core's groups (docs/PROTOCOL.md#follower-nodes): the **voters**, whose
/// promises and acceptances make the quorums, and the **followers**, non-voting replicas that
/// receive the leader's Accepts and Commits, learn and apply chosen values in order and serve
/// catch-up, but never promise, accept, stand for election or grant a lease. Every node of a
/// cluster must be given the same membership; this node appears in exactly one of the lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// The voting members (at least one).
    pub voters: Vec<NodeId>,
    /// The non-voting followers (maybe none).
    pub followers: Vec<NodeId>,
}

impl Membership {
    /// Voters only.
    pub fn voters(voters: &[NodeId]) -> Membership {
        Membership {
            voters: voters.to_vec(),
            followers: Vec::new(),
        }
    }

    /// The same voters with `followers` added.
    pub fn with_followers(mut self, followers: &[NodeId]) -> Membership {
        self.followers = followers.to_vec();
        self
    }

    /// Every node: the voters, then the followers.
    pub fn all(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.followers.iter()).copied()
    }

    /// Whether `node` votes.
    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.contains(&node)
    }
}

impl From<&[NodeId]> for Membership {
    fn from(voters: &[NodeId]) -> Membership {
        Membership::voters(voters)
    }
}

impl From<&Vec<NodeId>> for Membership {
    fn from(voters: &Vec<NodeId>) -> Membership {
        Membership::voters(voters)
    }
}

impl<const N: usize> From<&[NodeId; N]> for Membership {
    fn from(voters: &[NodeId; N]) -> Membership {
        Membership::voters(voters)
    }
}

impl From<&Membership> for Membership {
    fn from(membership: &Membership) -> Membership {
        membership.clone()
    }
}

/// The caller's id for one proposed command; echoed in its [`ProposalResult`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ProposalId(pub u64);

/// Logical time. The core never reads a clock; the driver says what time it is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Tick(pub u64);

/// The most instances one group may have in flight (`Config::pipeline_depth` is at most this).
pub const PIPELINE_MAX: u32 = 256;
/// An acceptor accepts only instances below `applied_next + ACCEPT_WINDOW_INSTANCES`; beyond
/// it, it is too far behind and asks for catch-up instead (bounds its memory).
pub const ACCEPT_WINDOW_INSTANCES: u64 = 1024;
/// A Promise reports at most this many instances from the prepared one; an acceptor holding
/// more sets `truncated` and the candidate catches up before it leads.
pub const PROMISE_SPAN_INSTANCES: u64 = 2 * ACCEPT_WINDOW_INSTANCES;
/// Chosen values per catch-up reply (one answer to a request may span several replies).
pub const CATCHUP_BATCH_MAX: usize = 256;
/// The fewest chosen values a replica keeps in memory below its applied point (older ones
/// are served from its log).
pub const CHOSEN_RETAINED_MIN: u64 = 64;
/// Value bytes one catch-up request is answered with at most, over all its replies (the
/// server's own cap on a requester's byte window).
pub const CATCHUP_ANSWER_BYTES_MAX: u32 = 4 << 20;
/// The largest value (a batch of commands) in bytes; a proposal larger than the batch limit
/// fails, and a decoder refuses anything larger.
pub const VALUE_BYTES_MAX: u32 = 16 << 20;

// Limits that depend on each other (STYLE.md rule 3).
const _: () = assert!(ACCEPT_WINDOW_INSTANCES > 2 * PIPELINE_MAX as u64);
const _: () = assert!(PROMISE_SPAN_INSTANCES >= 2 * ACCEPT_WINDOW_INSTANCES);

/// Protocol configuration of one core (identical on every node of a cluster).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Instances in flight per group (1 = PhxPaxos's serial mode), `1..=PIPELINE_MAX`.
    pub pipeline_depth: u32,
    /// Largest value (a batch of commands, with its framing) in bytes.
    pub batch_bytes_max: u32,
    /// Most commands in one value.
    pub batch_commands_max: u32,
    /// Most proposals queued per group before `propose` answers Overloaded.
    pub proposal_queue_max: u32,
    /// Ticks without hearing a leader before a follower prepares.
    pub election_timeout_ticks: u64,
    /// Upper bound of the seeded random extra wait added to each election timeout and backoff.
    pub election_jitter_ticks: u64,
    /// A leader with nothing else to send announces itself this often.
    pub heartbeat_ticks: u64,
    /// Unanswered Prepare/Accept/catch-up requests are re-sent after this many ticks.
    pub retransmit_ticks: u64,
    /// Chosen values kept in memory below the applied point; catch-up reads older ones
    /// from storage (`Outputs::reads`). At least `CATCHUP_BATCH_MAX`; the same on every
    /// member (a Promise reports chosen values from memory, so a candidate further behind
    /// than this catches up before it leads).
    pub chosen_retained_max: u64,
    /// The largest message body the network carries (its frame limit): every message the
    /// core emits stays within it (a Promise that would not is cut and continued in chunks).
    pub message_bytes_max: u32,
    /// Streaming catch-up's window (docs/PROTOCOL.md#streaming-catch-up): a lagging replica
    /// has at most this many values asked for and not yet applied, and asks for more when
    /// half of them have been applied. At least `CATCHUP_BATCH_MAX`.
    pub catchup_window_instances: u32,
    /// The window in value bytes (each request asks for at most half of it).
    pub catchup_window_bytes: u32,
    /// Purge holds for lagging peers (docs/PROTOCOL.md#log-base-and-purge): a group's log
    /// base does not move past what a peer asked for by catch-up or checkpoint transfer
    /// within this many ticks (0: no hold; a peer then behind the base fetches a checkpoint).
    pub purge_hold_ticks: u64,
    /// Check quorum and leader stickiness, as etcd's `CheckQuorum`
    /// (docs/PROTOCOL.md#leader-stickiness-and-check-quorum): a leader that has not heard from
    /// a quorum within an election timeout steps down, and a replica that knows a live leader
    /// ignores Prepares from other nodes.
    pub check_quorum: bool,
    /// The master lease (docs/PROTOCOL.md#master-lease), in ticks of each follower's clock: a
    /// follower that answers a leader's lease round grants it this long, during which it
    /// promises no other node and grants no other node. 0 turns leases off (no master; reads
    /// then go through read index or the log).
    pub master_lease_ticks: u64,
    /// The bound on clock-rate drift between any node's clock and real time, in parts per
    /// million, that leases assume (a master stops acting as one before any grant it counts
    /// can have ended, counting this bound).
    pub clock_drift_ppm: u32,
}

/// Room a message needs besides its values (headers, counts): `batch_bytes_max` plus this
/// must fit `message_bytes_max`.
pub const MESSAGE_OVERHEAD_BYTES: u32 = 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            pipeline_depth: 8,
            batch_bytes_max: 64 << 10,
            batch_commands_max: 256,
            proposal_queue_max: 4096,
            election_timeout_ticks: 100,
            election_jitter_ticks: 100,
            heartbeat_ticks: 20,
            retransmit_ticks: 30,
            chosen_retained_max: 1 << 16,
            message_bytes_max: 4 << 20,
            catchup_window_instances: 4096,
            catchup_window_bytes: 8 << 20,
            purge_hold_ticks: 0,
            check_quorum: true,
            master_lease_ticks: 80,
            clock_drift_ppm: 10_000,
        }
    }
}

/// A configuration that cannot work, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `pipeline_depth` outside `1..=PIPELINE_MAX`.
    #[error("pipeline_depth = {0}: must be between 1 and {PIPELINE_MAX}")]
    PipelineDepth(u32),
    /// A batch limit of zero, or bytes above `VALUE_BYTES_MAX`.
    #[error("batch limits (bytes {bytes}, commands {commands}): need commands >= 1 and 16 <= bytes <= {VALUE_BYTES_MAX}")]
    Batch {
        /// The configured byte limit.
        bytes: u32,
        /// The configured command limit.
        commands: u32,
    },
    /// `proposal_queue_max` of zero.
    #[error("proposal_queue_max = 0: must be at least 1")]
    QueueLimit,
    /// Timeouts that cannot elect a stable leader.
    #[error("timeouts (election {election}, heartbeat {heartbeat}, retransmit {retransmit}): need 1 <= heartbeat < election and retransmit >= 1")]
    Timeouts {
        /// election_timeout_ticks
        election: u64,
        /// heartbeat_ticks
        heartbeat: u64,
        /// retransmit_ticks
        retransmit: u64,
    },
    /// A catch-up window smaller than one reply.
    #[error("catch-up window ({instances} instances, {bytes} bytes): need at least {CATCHUP_BATCH_MAX} instances and twice batch_bytes_max in bytes")]
    CatchupWindow {
        /// The configured instances.
        instances: u32,
        /// The configured bytes.
        bytes: u32,
    },
    /// `chosen_retained_max` below `CHOSEN_RETAINED_MIN`.
    #[error("chosen_retained_max = {0}: must be at least {CHOSEN_RETAINED_MIN}")]
    Retained(u64),
    /// This node is not among the members (voters and followers), a node repeats, or there
    /// is no voter.
    #[error("membership: node {me} must appear exactly once among {count} distinct members (voters and followers), with at least one voter")]
    Membership {
        /// This node.
        me: u32,
        /// Number of members given.
        count: usize,
    },
    /// A group listed twice.
    #[error("group {0} listed twice")]
    DuplicateGroup(u32),
    /// A master lease too short to be renewed before it ends (or a drift bound of 100% or
    /// more).
    #[error("master_lease_ticks = {lease} with clock_drift_ppm = {drift_ppm}: a master may count on its lease for only {usable} ticks, which must exceed heartbeat_ticks ({heartbeat}) so that a round renews it in time; lengthen the lease or use 0 to turn leases off")]
    Lease {
        /// The configured lease.
        lease: u64,
        /// The configured drift bound.
        drift_ppm: u32,
        /// What a master may count on (see `Config::lease_usable_ticks`).
        usable: u64,
        /// The heartbeat interval.
        heartbeat: u64,
    },
    /// `message_bytes_max` cannot carry one value of `batch_bytes_max`.
    #[error("message_bytes_max = {message}: must be at least batch_bytes_max ({batch}) + {MESSAGE_OVERHEAD_BYTES}")]
    MessageBytes {
        /// The configured message limit.
        message: u32,
        /// The configured batch limit.
        batch: u32,
    },
}

impl Config {
    /// Checks the limits once, at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pipeline_depth == 0 || self.pipeline_depth > PIPELINE_MAX {
            return Err(ConfigError::PipelineDepth(self.pipeline_depth));
        }
        if self.batch_commands_max == 0
            || self.batch_bytes_max < 16
            || self.batch_bytes_max > VALUE_BYTES_MAX
        {
            return Err(ConfigError::Batch {
                bytes: self.batch_bytes_max,
                commands: self.batch_commands_max,
            });
        }
        if self.proposal_queue_max == 0 {
            return Err(ConfigError::QueueLimit);
        }
        if self.heartbeat_ticks == 0
            || self.heartbeat_ticks >= self.election_timeout_ticks
            || self.retransmit_ticks == 0
        {
            return Err(ConfigError::Timeouts {
                election: self.election_timeout_ticks,
                heartbeat: self.heartbeat_ticks,
                retransmit: self.retransmit_ticks,
            });
        }
        if self.chosen_retained_max < CHOSEN_RETAINED_MIN {
            return Err(ConfigError::Retained(self.chosen_retained_max));
        }
        if (self.catchup_window_instances as usize) < CATCHUP_BATCH_MAX
            || u64::from(self.catchup_window_bytes) < 2 * u64::from(self.batch_bytes_max)
        {
            return Err(ConfigError::CatchupWindow {
                instances: self.catchup_window_instances,
                bytes: self.catchup_window_bytes,
            });
        }
        if self.master_lease_ticks > 0
            && (self.clock_drift_ppm >= 1_000_000
                || self.lease_usable_ticks() <= self.heartbeat_ticks)
        {
            return Err(ConfigError::Lease {
                lease: self.master_lease_ticks,
                drift_ppm: self.clock_drift_ppm,
                usable: self.lease_usable_ticks(),
                heartbeat: self.heartbeat_ticks,
            });
        }
        if u64::from(self.batch_bytes_max) + u64::from(MESSAGE_OVERHEAD_BYTES)
            > u64::from(self.message_bytes_max)
        {
            return Err(ConfigError::MessageBytes {
                message: self.message_bytes_max,
                batch: self.batch_bytes_max,
            });
        }
        Ok(())
    }
}

impl Config {
    /// How long after sending a lease round a master may count on the grants that answer it,
    /// in ticks of its own clock: `floor((lease - 1) * (1 - drift) / (1 + drift))`
    /// (docs/PROTOCOL.md#master-lease has the derivation). 0 when leases are off.
    pub fn lease_usable_ticks(&self) -> u64 {
        if self.master_lease_ticks == 0 || self.clock_drift_ppm >= 1_000_000 {
            return 0;
        }
        let drift = u128::from(self.clock_drift_ppm);
        let usable =
            u128::from(self.master_lease_ticks - 1) * (1_000_000 - drift) / (1_000_000 + drift);
        u64::try_from(usable).unwrap_or(u64::MAX)
    }
}

/// How a read is confirmed (docs/PROTOCOL.md#reads). None writes the log; `Lease` and `Index`
/// are linearizable, `Stale` is bounded in staleness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReadMode {
    /// Served by the master from its applied state with no message, while its lease holds;
    /// without a valid lease, the read falls back to `Index`.
    Lease,
    /// Read index: one lease round to a quorum confirms that this node still leads, then the
    /// read is served once the applied point reaches what was chosen when it arrived.
    Index,
    /// Served at once by any replica (a follower node included) from its applied state, if
    /// within the last `max_ticks` ticks of its clock it received a message of the leader it
    /// follows and had applied everything that message said was chosen; refused
    /// (`TooStale`) otherwise. The answer reflects every value the leader had applied when it
    /// sent that message (docs/PROTOCOL.md#stale-reads). Not linearizable.
    Stale {
        /// The staleness bound, in ticks.
        max_ticks: u64,
    },
}

/// A small deterministic generator (splitmix64), seeded by the driver. The core's only source
/// of randomness (election jitter, catch-up peer choice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prng {
    state: u64,
}

impl Prng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Prng {
        Prng { state: seed }
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.next_u64() % bound
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
}

/// Known protocol bugs the simulator can inject to prove its checkers catch them.
/// Compiled only with the `sim-bugs` feature, never in a default build.
#[cfg(feature = "sim-bugs")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// The acceptor does not persist promises (it still replies).
    pub forget_promise: bool,
    /// Promise and Accepted leave before the record that justifies them is durable.
    pub reply_before_durable: bool,
    /// A new leader skips phase 1 and proposes from its own log position.
    pub skip_prepare_on_new_leader: bool,
    /// Pre-fix ballot choice: a candidate's Prepare leaves before its own promise is durable
    /// (a crash can reuse the ballot), and Accepted replies count without naming the value.
    pub ballot_reuse_after_crash: bool,
    /// Pre-fix re-learn target: peers' applied point + pipeline depth, any reply counts (no
    /// request id, damaged peers included).
    pub relearn_target_too_low: bool,
    /// Pre-fix commit answer: Committed when the chosen value's bytes equal the proposal's
    /// (values carry no identity).
    pub commit_by_bytes: bool,
    /// Pre-fix recovery use: a cut last write is taken as torn, never as damage.
    pub cut_damaged_last_write: bool,
    /// Pre-fix Promise: no byte bound (the network drops it when over the frame limit).
    pub unbounded_promise: bool,
    /// A node whose data directory was lost votes at once with empty state.
    pub rejoin_with_empty_state: bool,
    /// The acceptor accepts an Accept below its promise (and so lowers the promise).
    pub accept_below_promise: bool,
    /// The driver takes a failed WAL write (an fsync error) as durable and continues.
    pub ignore_fsync_error: bool,
    /// Streaming catch-up reads the value of the next instance (an off-by-one in the log read).
    pub log_read_off_by_one: bool,
    /// A log-base record does not carry the promise (the Promise records below the base go
    /// with the purge).
    pub base_forgets_promise: bool,
    /// Pre-fix Promise: an acceptor promises a Prepare from below what it still holds of its
    /// applied values (its log base after a restart or checkpoint install), reporting nothing
    /// for the instances in between.
    pub promise_below_base: bool,
    /// Streaming catch-up without go-back-N: when a stream's request times out, the next one
    /// asks from where the last one ended, not from the applied point (a lost reply leaves a
    /// gap that is never asked for again).
    pub stream_no_go_back: bool,
    /// A leader or candidate that starts or finishes a checkpoint install keeps its role (its
    /// instances in flight end up below the installed checkpoint).
    pub install_while_leading: bool,
    /// The driver submits only in rounds that appended: records that accumulated while the
    /// last write was in flight wait for the next append (the runtime's stall before the fix).
    pub submit_only_on_append: bool,
    /// A master counts on its lease for as long as its followers grant it, on its own clock:
    /// no allowance for clock drift (with a slower clock it outlives the grants).
    pub lease_ignores_drift: bool,
    /// A read is served once the applied point reaches the leader's own applied point at its
    /// arrival, forgetting the window its phase 1 recovered (values an earlier leader chose
    /// and acknowledged may not be applied yet).
    pub read_before_applied: bool,
    /// A replica whose storage is full still votes, answering Accepted without writing the
    /// Accept record (to save the room it lacks).
    pub vote_while_full: bool,
    /// Pre-fix repair records: damage anywhere below the Lsn a re-learn's start recovered to
    /// counts as repaired, including records that were intact then and damaged later.
    pub repair_covers_later_damage: bool,
    /// Chosen values learned from others are logged (Chosen marks with their payload) whatever
    /// room the storage has left.
    pub log_ignores_room: bool,
    /// Pre-fix catch-up replies: a replica that applied values without logging them (short
    /// of room) still names its log base as the lowest value it serves, so a peer that needs
    /// one of them asks it again and again instead of fetching a checkpoint.
    pub serve_over_unlogged_hole: bool,
    /// A follower (non-voting) answers Accepts as an acceptor does, and leaders count any
    /// node's vote toward a quorum of the voters.
    pub follower_votes: bool,
    /// A membership change governs from the next instance on instead of
    /// `MEMBERSHIP_DELAY` later: a leader opens instances whose configuration it does not
    /// know yet.
    pub config_at_once: bool,
    /// A leader counts the new voters' Accepteds at a configuration boundary without asking
    /// them to promise its ballot first (no phase 1 continuation there).
    pub config_boundary_skips_prepare: bool,
}
