//! What a node's threads share: the proposal message into a core, the stop flag and fatal
//! error, the cores' published counters, leader hints and executor progress.
//!
//! Owns: these shared types (so that the core loop and the node import them from here, not
//! from each other). Must never block on I/O.
use bytes::Bytes;
use paxring_wal::{GroupId, WalStats};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::api::{FatalError, Reply};
use super::executor::GroupProgress;
use crate::core::CoreStats;

/// A proposal (or a linearizable read) on its way into a core.
pub(crate) struct ProposalMsg {
    pub group: GroupId,
    /// The command (for a read: the query for the state machine).
    pub command: Bytes,
    pub reply: Reply,
    /// Set for a read (docs/PROTOCOL.md#reads): not proposed, answered by the state machine's
    /// `query` once confirmed.
    pub read: Option<crate::core::ReadMode>,
    /// Set for a membership change (docs/PROTOCOL.md#membership-change): `command` is empty.
    pub membership: Option<crate::core::Membership>,
}

/// A group's newest configuration as one node knows it (docs/PROTOCOL.md#membership-change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupMembership {
    /// The voters.
    pub voters: Vec<u32>,
    /// The follower nodes (non-voting).
    pub followers: Vec<u32>,
    /// The first instance it governs (0: the configs' initial membership).
    pub from: u64,
}

/// This node became or stopped being the master of a group (docs/PROTOCOL.md#master-lease).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasterEvent {
    /// The group.
    pub group: GroupId,
    /// Master from now, or no longer.
    pub master: bool,
    /// While master: when its lease ends at the latest (CLOCK_MONOTONIC).
    pub lease_until: Option<std::time::Instant>,
}

/// Who is master of a group, as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasterInfo {
    /// The master: this node (its lease), or the node this node's acceptor grants its lease to.
    pub node: u32,
    /// When the lease ends at the latest: for this node, its own lease; for another, the end
    /// of this node's grant (the other's lease ends no later).
    pub lease_until: std::time::Instant,
}

/// What every thread of a node shares.
pub(crate) struct Shared {
    /// Set to stop every thread (shutdown or a fatal error).
    pub stopping: AtomicBool,
    /// The first fatal error, if any (a failed fsync, an unreadable WAL): the node has stopped.
    pub fatal: Mutex<Option<FatalError>>,
    /// Each core's latest published counters.
    pub snapshots: Mutex<Vec<CoreSnapshot>>,
    /// Each group's leader hint (node id, 0 = unknown), published by its core every round.
    pub leader_hints: Vec<AtomicU64>,
    /// Each group's executor progress.
    pub progress: Vec<Arc<GroupProgress>>,
    /// Commands applied by all executors.
    pub applied_commands: Arc<AtomicU64>,
    /// Each group's master as this node knows it, published by its core with its counters.
    pub masters: Mutex<Vec<Option<MasterInfo>>>,
    /// Each group's newest configuration as this node knows it (docs/PROTOCOL.md#membership-change),
    /// published by its core when it changes.
    pub memberships: Mutex<Vec<Option<GroupMembership>>>,
    /// Subscribers to this node's master changes (a full subscriber misses events; counted).
    pub master_subscribers: Mutex<Vec<crossbeam_channel::Sender<MasterEvent>>>,
    /// Master events a full subscriber did not take.
    pub master_events_dropped: AtomicU64,
}

impl Shared {
    pub(crate) fn fail(&self, reason: FatalError) {
        let mut fatal = self.fatal.lock().expect("fatal lock");
        if fatal.is_none() {
            tracing::error!("node stopping on a fatal error: {reason}");
            *fatal = Some(reason);
        }
        self.stopping.store(true, Ordering::Release);
    }
}

/// One core's counters, published every 20 ms and when the core stops.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CoreSnapshot {
    /// The core's index.
    pub core: usize,
    /// Groups this core owns.
    pub groups: usize,
    /// Loop iterations.
    pub rounds: u64,
    /// WAL writes issued (a round issues at most one; rounds whose records join a write
    /// still in flight are carried by the next one).
    pub write_rounds: u64,
    /// Durable writes (DSYNC writes or fdatasyncs), as the WAL counts them.
    pub durable_writes: u64,
    /// Records written by the WAL.
    pub records_written: u64,
    /// Average groups with records per WAL write.
    pub groups_per_write: f64,
    /// Inbound frames that did not decode as a protocol message (dropped, counted).
    pub undecodable_frames: u64,
    /// Outbound batches the network thread refused because its queue was full (dropped;
    /// Paxos retransmits).
    pub net_batches_refused: u64,
    /// Proposals received from the API.
    pub proposals_received: u64,
    /// Rounds in which chosen values waited for the executor's queue.
    pub executor_backlog_rounds: u64,
    /// Proposals refused (`Overloaded`) because the WAL had no room for them within
    /// `wal_budget_bytes` (docs/ARCHITECTURE.md, "WAL budget").
    pub proposals_refused_wal_budget: u64,
    /// The WAL's own counters.
    pub wal: Option<WalStats>,
    /// The protocol counters.
    pub protocol: CoreStats,
    /// This node votes in the configs' initial membership (false: a follower node,
    /// docs/PROTOCOL.md#follower-nodes). After membership changes a group's own voters are in
    /// `NodeStats::memberships`.
    pub voter: bool,
    /// Instances this core's groups heard chosen and have not applied yet, summed over the
    /// groups (how far this replica lags; a follower's lag, docs/PROTOCOL.md#follower-nodes).
    pub lag_instances: u64,
    /// The same for the group that lags most.
    pub lag_instances_max: u64,
    /// The round driver's counters (frames encoded and sent, value bytes copied).
    pub driver: crate::driver::DriverStats,
    /// Groups that cannot make progress by themselves, with the reason (at most
    /// `STUCK_LISTED_MAX`; `stuck_groups` counts them all). Refreshed every `STUCK_EVERY`.
    pub stuck: Vec<String>,
    /// How many groups were stuck at the last check.
    pub stuck_groups: usize,
    /// The WAL's purge: its size, the groups' log bases and what holds the oldest segment.
    pub purge: PurgeSnapshot,
}

/// One core's WAL purge state, refreshed at every purge pass.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PurgeSnapshot {
    /// Purge passes run.
    pub passes: u64,
    /// Segment files the WAL holds now.
    pub segments: u64,
    /// Their size on disk, in bytes.
    pub wal_bytes: u64,
    /// The configured budget (0: none).
    pub budget_bytes: u64,
    /// The WAL is over its budget and purge cannot bring it under.
    pub over_budget: bool,
    /// Bytes the WAL may still write within its budget (what is left of the segment being
    /// written and of the segments it may still add), at the last round; 0 without a budget.
    pub budget_room_bytes: u64,
    /// Bytes reserved for the proposals admitted and not yet chosen (each counted as if it
    /// took two WAL blocks of its own plus its command), at the last round.
    pub budget_reserved_bytes: u64,
    /// Segments removed so far.
    pub segments_purged: u64,
    /// The lowest log base of this core's groups (what the WAL may purge below), with its group.
    pub lowest_base: Option<(u32, u64)>,
    /// The oldest segment still there.
    pub oldest_segment: Option<u64>,
    /// What holds the oldest segment back: each group with its highest instance in it, its
    /// purge floor, and in words why (its checkpoint is not past that instance yet).
    pub held_back_by: Vec<String>,
}
