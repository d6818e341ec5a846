//! What a core's groups produce and report: messages to send (now or once durable), chosen
//! values, proposal outcomes, group errors and status, the protocol counters, and the start
//! information a driver passes in.
//!
//! Owns: the output and status types a driver reads. Must never do I/O.
use super::wal_types::{GroupId, Instance, Lsn, Record};
use super::{CheckpointInfo, Message, NodeId, ProposalId, ReadMode, Tick};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A message that needs no durability (e.g. a leader's Accept, a Commit, a catch-up reply).
/// (Not named `Send`, so that a glob import does not shadow the `Send` trait.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendNow {
    /// The destination node.
    pub to: NodeId,
    /// The group.
    pub group: GroupId,
    /// The message.
    pub msg: Message,
}

/// A message for every member but this node (a Prepare, an Accept, a Commit): the driver
/// encodes it once and hands the same bytes to every peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broadcast {
    /// The group.
    pub group: GroupId,
    /// The message.
    pub msg: Message,
}

/// A reply that depends on persisted state (Promise, Accepted): the driver must hold it until
/// the WAL reports `durable(l)` with `l >= lsn`, and should assert that just before sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendAfterDurable {
    /// The record that justifies the reply.
    pub lsn: Lsn,
    /// The destination node.
    pub to: NodeId,
    /// The group.
    pub group: GroupId,
    /// The message.
    pub msg: Message,
}

/// A chosen value, handed to the executor in instance order per group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// The group.
    pub group: GroupId,
    /// The instance.
    pub instance: Instance,
    /// The value (decode with [`super::value::decode`]).
    pub value: Bytes,
    /// The group's rolling checksum through this instance (what a checkpoint at this
    /// instance records, docs/PROTOCOL.md#learner).
    pub checksum: u32,
}

/// Why a proposal failed (it was never proposed, so it will not be chosen).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailReason {
    /// This node does not lead the group; try the hinted node.
    NotLeader {
        /// The node this one believes leads, if any.
        leader_hint: Option<NodeId>,
    },
    /// The group's proposal queue is full: back off.
    Overloaded,
    /// This core does not own the group.
    UnknownGroup,
    /// The command cannot fit in one value under the configured batch limit.
    TooLarge,
    /// The group is stopped by an error (see [`GroupError`]).
    Stopped,
    /// A membership change with no voter or a node listed twice.
    BadMembership,
    /// Another membership change is queued, in flight, or not in effect yet.
    MembershipChangePending,
    /// A stale read whose bound this replica cannot meet: it has not heard from a leader, with
    /// everything that leader said chosen applied, within the bound.
    TooStale,
}

/// The outcome of one proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalResult {
    /// Chosen: the command is entry `index` of the value at `instance`.
    Committed {
        /// The caller's id.
        id: ProposalId,
        /// The group.
        group: GroupId,
        /// The instance.
        instance: Instance,
        /// The command's index in the instance's value.
        index: u32,
    },
    /// Not proposed; it will not be chosen.
    Failed {
        /// The caller's id.
        id: ProposalId,
        /// The group.
        group: GroupId,
        /// Why.
        reason: FailReason,
    },
    /// Proposed, but leadership was lost before the outcome was known: it may still be chosen.
    Unknown {
        /// The caller's id.
        id: ProposalId,
        /// The group.
        group: GroupId,
    },
}

/// Why a group stopped (it takes no more input; the operator must repair it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum GroupError {
    /// The rolling checksum through `instance` differs from a peer's.
    #[error("group {group}: checksum through instance {instance} is {ours:#010x} here but {theirs:#010x} at node {from}")]
    ChecksumMismatch {
        /// The group.
        group: u32,
        /// The instance.
        instance: u64,
        /// Ours.
        ours: u32,
        /// The peer's.
        theirs: u32,
        /// The peer.
        from: u32,
    },
    /// A peer reported a different chosen value for an instance this replica has chosen.
    #[error("group {group}: a different value was reported chosen at instance {instance} by node {from}")]
    Diverged {
        /// The group.
        group: u32,
        /// The instance.
        instance: u64,
        /// The peer.
        from: u32,
    },
}

/// How this start of a core relates to the node's history (from the data directory's
/// identity file; docs/PROTOCOL.md#restart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Start {
    /// The node's incarnation: bumped and made durable at every start before anything is
    /// sent, so proposal identities and re-learn request ids never repeat across restarts.
    pub incarnation: u64,
    /// The node's durable state is gone or cannot be trusted (a data directory created anew,
    /// or an identity file that is missing or damaged): every group re-learns before it votes.
    pub state_lost: bool,
}

/// What one group is doing, for stats and for the "why is it stuck" log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// "leader", "candidate", "follower" (a voter that does not lead), "non-voting" (a
    /// follower node, docs/PROTOCOL.md#follower-nodes) or "stopped".
    pub role: String,
    /// The node believed to lead, if any.
    pub leader_hint: Option<NodeId>,
    /// First instance not yet applied.
    pub applied_next: Instance,
    /// Phase 1 attempts since this replica last saw a leader (its own or another's).
    pub elections_without_leader: u64,
    /// Peers whose Promise the current or last candidacy did not get (with the reason
    /// when a peer refused: it is re-learning or promised higher).
    pub missing_promises: Vec<NodeId>,
    /// Set while the group re-learns after damage.
    pub relearning: Option<RelearnStatus>,
    /// The lowest instance this replica's log holds (below it: the state machine's
    /// checkpoint; the WAL may have purged it).
    #[serde(default)]
    pub log_base: Instance,
    /// Set while catch-up finds nothing: a peer (and its applied point) that is ahead but no
    /// longer holds the values this replica needs.
    #[serde(default)]
    pub catchup_unavailable: Option<(NodeId, Instance)>,
    /// A lagging peer (and the instance it needs) that held this group's log base back at the
    /// last purge pass (`purge_hold_ticks`).
    #[serde(default)]
    pub log_base_held_by: Option<(NodeId, Instance)>,
    /// Set while a checkpoint transfer runs (this replica is behind every value its peers
    /// serve, docs/PROTOCOL.md#checkpoint-transfer).
    #[serde(default)]
    pub installing: Option<InstallStatus>,
    /// While this node is master: the tick of its clock at which its lease ends (exclusive).
    #[serde(default)]
    pub master_until: Option<Tick>,
    /// The master lease this node's acceptor grants now: the holder (None: any node, for a
    /// lease's length after a restart) and the tick of this node's clock when the grant ends.
    #[serde(default)]
    pub lease_granted: Option<(Option<NodeId>, Tick)>,
    /// The highest "every instance below this is chosen" this replica heard from a leader or
    /// a peer: `chosen_heard - applied_next` is how far it lags ([`GroupStatus::lag`]).
    #[serde(default)]
    pub chosen_heard: Instance,
    /// The voters of the newest configuration this replica knows
    /// (docs/PROTOCOL.md#membership-change).
    #[serde(default)]
    pub voters: Vec<NodeId>,
    /// Its follower nodes.
    #[serde(default)]
    pub followers: Vec<NodeId>,
    /// The first instance it governs (0: the initial configuration).
    #[serde(default)]
    pub members_from: Instance,
}

impl GroupStatus {
    /// Instances chosen (as far as this replica heard) that it has not applied yet.
    pub fn lag(&self) -> u64 {
        self.chosen_heard.0.saturating_sub(self.applied_next.0)
    }
}

/// A checkpoint transfer in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallStatus {
    /// The peer sending it.
    pub peer: NodeId,
    /// The checkpoint (None until its first chunk arrived).
    pub info: Option<CheckpointInfo>,
    /// Payload bytes received.
    pub received: u64,
    /// Every byte arrived; the state machine is installing it.
    pub installing: bool,
    /// Requests re-sent without progress.
    pub stalls: u32,
}

/// A re-learning group's progress (docs/PROTOCOL.md#re-learning).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelearnStatus {
    /// The instance it must apply up to before it votes (None until enough peers reported).
    pub target: Option<Instance>,
    /// Peers that have not answered this re-learn's request.
    pub waiting_for: Vec<NodeId>,
    /// Reports from peers that are not re-learning themselves.
    pub sure_reports: usize,
    /// Reports from peers that are re-learning too.
    pub relearning_reports: usize,
    /// Reports needed (members - quorum + 1).
    pub needed: usize,
    /// The target was set from pooled reports of re-learning peers (PAR's condition).
    pub pooled: bool,
}

impl GroupStatus {
    /// Why the group cannot make progress by itself, if it cannot: re-learning and waiting for
    /// reports or catch-up, or elections that do not win.
    pub fn stuck_reason(&self) -> Option<String> {
        if self.role == "stopped" {
            return Some(format!("group {} is stopped", self.group));
        }
        if let Some(relearn) = &self.relearning {
            return Some(match relearn.target {
                None => format!(
                    "group {}: re-learning after lost or damaged state; waiting for reports from {} (have {} from undamaged peers and {} from re-learning peers, need {})",
                    self.group,
                    names(&relearn.waiting_for),
                    relearn.sure_reports,
                    relearn.relearning_reports,
                    relearn.needed
                ),
                Some(target) => format!(
                    "group {}: re-learning; applied through {} of {} (votes resume at {})",
                    self.group,
                    self.applied_next.0,
                    target.0,
                    target.0
                ),
            });
        }
        if let Some(install) = &self.installing {
            return Some(match install.info {
                None => format!(
                    "group {}: behind every value node {} serves (applied through {}): asking it for a checkpoint",
                    self.group, install.peer.0, self.applied_next.0
                ),
                Some(info) if install.installing => format!(
                    "group {}: installing the checkpoint at instance {} from node {}",
                    self.group, info.instance.0, install.peer.0
                ),
                Some(info) => format!(
                    "group {}: receiving the checkpoint at instance {} from node {}: {} of {} bytes ({} re-sent requests without progress)",
                    self.group,
                    info.instance.0,
                    install.peer.0,
                    install.received,
                    info.payload_bytes,
                    install.stalls
                ),
            });
        }
        if let Some((peer, theirs)) = self.catchup_unavailable {
            return Some(format!(
                "group {}: cannot catch up: applied through {}, node {} is at {} and serves neither the values in between nor a checkpoint past them; asking again with back-off",
                self.group,
                self.applied_next.0,
                peer.0,
                theirs.0
            ));
        }
        if self.leader_hint.is_none() && self.elections_without_leader >= 3 {
            return Some(format!(
                "group {}: no leader after {} elections; no promise from {}",
                self.group,
                self.elections_without_leader,
                names(&self.missing_promises)
            ));
        }
        None
    }
}

fn names(nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        return "none".to_string();
    }
    let list: Vec<String> = nodes.iter().map(|n| format!("node {}", n.0)).collect();
    list.join(", ")
}

/// Everything a table produced since the last `poll`.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Records to append, in Lsn order (consecutive Lsns).
    pub appends: Vec<(Lsn, Record)>,
    /// Messages to send now.
    pub sends: Vec<SendNow>,
    /// Messages to send now to every peer (encoded once).
    pub broadcasts: Vec<Broadcast>,
    /// Messages to send once the WAL is durable through their Lsn.
    pub sends_after_durable: Vec<SendAfterDurable>,
    /// Chosen values, in instance order per group.
    pub chosen: Vec<Chosen>,
    /// Proposal outcomes.
    pub results: Vec<ProposalResult>,
    /// Groups that stopped on an error.
    pub stopped: Vec<(GroupId, GroupError)>,
    /// Catch-up that needs values older than the group keeps in memory: the driver reads
    /// them from storage and hands them to [`crate::core::CoreTable::serve_read`].
    pub reads: Vec<ReadRequest>,
    /// A peer asked for checkpoint bytes: the driver reads them from its checkpoint store and
    /// hands them to [`crate::core::CoreTable::serve_checkpoint`].
    pub checkpoint_reads: Vec<CheckpointRead>,
    /// Checkpoint bytes received, to append to the group's receive in progress (offset 0
    /// starts a new one).
    pub checkpoint_writes: Vec<CheckpointWrite>,
    /// Every byte of a checkpoint arrived: the driver verifies it, installs it into the state
    /// machine and then calls [`crate::core::CoreTable::installed`] (or `install_failed`).
    pub installs: Vec<(GroupId, CheckpointInfo)>,
    /// Reads confirmed (docs/PROTOCOL.md#reads): the driver serves each from the group's state
    /// machine after every value in `chosen` (the applied state then covers all it must).
    pub reads_ready: Vec<ReadReady>,
    /// This node became or stopped being the master of a group (its lease began or ended).
    pub master_changes: Vec<MasterChange>,
}

/// A linearizable read that may now be served from the applied state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadReady {
    /// The caller's id.
    pub id: ProposalId,
    /// The group.
    pub group: GroupId,
    /// How it was confirmed (a lease read without a valid lease went through read index).
    pub mode: ReadMode,
}

/// This node's master status of a group changed (docs/PROTOCOL.md#master-lease).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterChange {
    /// The group.
    pub group: GroupId,
    /// Master from now (until `until`), or no longer master.
    pub master: bool,
    /// While master: the tick of this node's clock at which its lease ends (exclusive).
    pub until: Option<Tick>,
}

/// A peer's request for checkpoint bytes (docs/PROTOCOL.md#checkpoint-transfer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRead {
    /// The group.
    pub group: GroupId,
    /// The peer that asked.
    pub to: NodeId,
    /// The checkpoint it is fetching, or None for the newest.
    pub instance: Option<Instance>,
    /// The payload offset it needs.
    pub offset: u64,
    /// Its applied point (a checkpoint must be at or above it to be of use).
    pub need: Instance,
    /// At most this many payload bytes (one message).
    pub bytes_max: usize,
}

/// Checkpoint bytes received for the group's transfer in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointWrite {
    /// The group.
    pub group: GroupId,
    /// The checkpoint.
    pub info: CheckpointInfo,
    /// Where `data` goes in the payload (0: a new receive).
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

/// A peer's catch-up request for chosen values no longer in memory (streaming catch-up
/// from the log, docs/PROTOCOL.md#learner).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The group.
    pub group: GroupId,
    /// The peer that asked.
    pub to: NodeId,
    /// Its request id (echoed in the reply).
    pub request: u64,
    /// The first instance it needs.
    pub first: Instance,
    /// One past the last instance to read from storage (above it, memory serves).
    pub end: Instance,
    /// At most this many values.
    pub entries_max: usize,
    /// At most this many value bytes (the reply's byte budget).
    pub bytes_max: usize,
    /// One past the last instance the request asked for: what the replies name as the
    /// answer's end while more of it follows (a read continued in a later round).
    pub asked_end: Instance,
}

impl Outputs {
    /// Every message to send now, one `(to, group, message)` per peer: the broadcasts
    /// expanded over `peers` (the members but this node), then the single sends.
    pub fn sends_to<'a>(
        &'a self,
        peers: &'a [NodeId],
    ) -> impl Iterator<Item = (NodeId, GroupId, &'a Message)> + 'a {
        self.broadcasts
            .iter()
            .flat_map(move |b| peers.iter().map(move |p| (*p, b.group, &b.msg)))
            .chain(self.sends.iter().map(|s| (s.to, s.group, &s.msg)))
    }

    /// Empties every list (keeps the allocations).
    pub fn clear(&mut self) {
        self.appends.clear();
        self.sends.clear();
        self.broadcasts.clear();
        self.sends_after_durable.clear();
        self.chosen.clear();
        self.results.clear();
        self.stopped.clear();
        self.reads.clear();
        self.checkpoint_reads.clear();
        self.checkpoint_writes.clear();
        self.installs.clear();
        self.reads_ready.clear();
        self.master_changes.clear();
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty()
            && self.sends.is_empty()
            && self.broadcasts.is_empty()
            && self.sends_after_durable.is_empty()
            && self.chosen.is_empty()
            && self.results.is_empty()
            && self.stopped.is_empty()
            && self.reads.is_empty()
            && self.checkpoint_reads.is_empty()
            && self.checkpoint_writes.is_empty()
            && self.installs.is_empty()
            && self.reads_ready.is_empty()
            && self.master_changes.is_empty()
    }

    pub(super) fn take_into(&mut self, out: &mut Outputs) {
        out.appends.append(&mut self.appends);
        out.sends.append(&mut self.sends);
        out.broadcasts.append(&mut self.broadcasts);
        out.sends_after_durable
            .append(&mut self.sends_after_durable);
        out.chosen.append(&mut self.chosen);
        out.results.append(&mut self.results);
        out.stopped.append(&mut self.stopped);
        out.reads.append(&mut self.reads);
        out.checkpoint_reads.append(&mut self.checkpoint_reads);
        out.checkpoint_writes.append(&mut self.checkpoint_writes);
        out.installs.append(&mut self.installs);
        out.reads_ready.append(&mut self.reads_ready);
        out.master_changes.append(&mut self.master_changes);
    }
}

/// Protocol counters of one core (docs/PROTOCOL.md#counters).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStats {
    /// Messages handed out for other nodes.
    pub messages_sent: u64,
    /// Messages received from other nodes.
    pub messages_received: u64,
    /// Messages for a group this core does not own (ignored: rolling upgrade).
    pub messages_unknown_group: u64,
    /// Phase 1 attempts started.
    pub prepares_started: u64,
    /// Times this node won phase 1.
    pub leaderships_won: u64,
    /// Promises granted.
    pub promises_sent: u64,
    /// Accept messages sent to peers.
    pub accepts_sent: u64,
    /// Accepted replies granted.
    pub accepted_sent: u64,
    /// Prepare/Accept refused for a lower ballot.
    pub rejections_sent: u64,
    /// Rejections received for this node's current ballot.
    pub rejections_received: u64,
    /// Instances this node chose as leader.
    pub instances_chosen_as_leader: u64,
    /// Instances this node learned (applied) in order.
    pub instances_applied: u64,
    /// Proposals answered Committed.
    pub proposals_committed: u64,
    /// Proposals refused because the queue was full.
    pub proposals_overloaded: u64,
    /// Instances with client commands chosen by this leader (denominator of RTTs per commit).
    pub commit_instances: u64,
    /// Sequential round trips on those instances' critical paths (1 steady, 2 with Prepare).
    pub commit_rtts_total: u64,
    /// The Accept transmissions among those round trips (the rest are Prepare rounds): each
    /// is a frame the driver encoded, so this never exceeds the Accepts on the wire.
    pub commit_accept_transmissions: u64,
    /// Catch-up requests sent.
    pub catchup_requests_sent: u64,
    /// Prepares ignored because this replica knew a live leadership (leader stickiness).
    #[serde(default)]
    pub prepares_ignored_leader_alive: u64,
    /// Leaderships given up because no quorum was heard within an election timeout (check
    /// quorum).
    #[serde(default)]
    pub leader_stepdowns_no_quorum: u64,
    /// Promises, Accepteds, Rejects and CommitAcks from nodes that do not vote, dropped
    /// (docs/PROTOCOL.md#follower-nodes).
    #[serde(default)]
    pub votes_from_non_voters: u64,
    /// Prepares a follower (non-voting) ignored.
    #[serde(default)]
    pub prepares_ignored_non_voter: u64,
    /// Accepts a follower (non-voting) kept without voting.
    #[serde(default)]
    pub accepts_observed_non_voter: u64,
    /// Restarts of a follower's group with lost or damaged state that did not re-learn (a
    /// follower never voted; catch-up fills its log).
    #[serde(default)]
    pub relearns_skipped_non_voter: u64,
    /// Membership changes this node proposed as leader.
    #[serde(default)]
    pub membership_changes_proposed: u64,
    /// Membership changes applied (each governs from `MEMBERSHIP_DELAY` instances later on).
    #[serde(default)]
    pub membership_changes_applied: u64,
    /// Membership-change values chosen that name no voter or a node twice (applied as no-ops).
    #[serde(default)]
    pub membership_changes_invalid: u64,
    /// Stale reads refused because this replica was not fresh enough for their bound.
    #[serde(default)]
    pub reads_refused_stale: u64,
    /// Stale reads served.
    #[serde(default)]
    pub reads_stale: u64,
    /// Leaders that stepped down at a configuration boundary that removed them.
    #[serde(default)]
    pub leader_stepdowns_removed: u64,
    /// Leaders refused by one acceptor's higher promise while they still heard a quorum,
    /// that prepared again at once above it.
    #[serde(default)]
    pub leader_reprepares: u64,
    /// Lease rounds this node sent as leader (each a Commit to every peer).
    #[serde(default)]
    pub lease_rounds_sent: u64,
    /// Master leases this node's acceptor granted (a new holder, or a renewal).
    #[serde(default)]
    pub lease_grants: u64,
    /// Lease rounds this node's acceptor answered without a grant (it still granted another
    /// node, docs/PROTOCOL.md#master-lease).
    #[serde(default)]
    pub lease_grants_refused: u64,
    /// Prepares ignored because this node's acceptor granted another node its master lease
    /// (or restarted within a lease and may have).
    #[serde(default)]
    pub prepares_refused_lease: u64,
    /// Elections this node put off because its own acceptor granted another node its lease.
    #[serde(default)]
    pub elections_deferred_lease: u64,
    /// Accepts this replica did not vote on because its storage was full
    /// (docs/PROTOCOL.md#storage-full).
    #[serde(default)]
    pub accepts_withheld_storage_full: u64,
    /// Chosen values learned from other nodes (by catch-up, or in a reply) that were applied
    /// but not logged, because the storage had no room for them (docs/PROTOCOL.md#storage-full).
    #[serde(default)]
    pub chosen_unlogged_storage_short: u64,
    /// Proposals refused (`Overloaded`) because the storage was full.
    #[serde(default)]
    pub proposals_refused_storage_full: u64,
    /// Log-base moves that passed over purge holds for lagging peers because the storage was
    /// short of room.
    #[serde(default)]
    pub purge_holds_released: u64,
    /// Times this node became master of a group.
    #[serde(default)]
    pub master_terms: u64,
    /// Reads served by the master's lease (no message).
    #[serde(default)]
    pub reads_lease: u64,
    /// Reads served after a read-index round.
    #[serde(default)]
    pub reads_index: u64,
    /// Reads refused (not the leader, overloaded) or failed (leadership lost before confirmed).
    #[serde(default)]
    pub reads_failed: u64,
    /// Chosen values served to lagging peers.
    pub catchup_entries_served: u64,
    /// Catch-up replies sent (one request's answer may span several).
    #[serde(default)]
    pub catchup_replies_sent: u64,
    /// Of which read from the log (older than the values kept in memory).
    pub catchup_entries_from_log: u64,
    /// Catch-up reads handed to the driver (one per request that needed the log).
    pub catchup_log_reads: u64,
    /// Catch-up replies that were empty although the peer is ahead: the peer no longer holds
    /// the values this replica needs (behind its log base, a checkpoint transfer follows).
    pub catchup_unavailable: u64,
    /// Checkpoint transfers started (this replica was behind every value a peer serves).
    #[serde(default)]
    pub checkpoint_fetches: u64,
    /// Checkpoints installed by transfer.
    #[serde(default)]
    pub checkpoints_installed: u64,
    /// Transfers abandoned (the peer had none, stopped answering, sent bad bytes, or the
    /// install failed); catch-up then backs off and tries again.
    #[serde(default)]
    pub checkpoint_transfers_abandoned: u64,
    /// Checkpoint chunks received (used or not).
    #[serde(default)]
    pub checkpoint_chunks_received: u64,
    /// Checkpoint payload bytes received and handed on to be written.
    #[serde(default)]
    pub checkpoint_bytes_received: u64,
    /// Checkpoint read requests handed to the driver (serving a peer).
    #[serde(default)]
    pub checkpoint_reads_served: u64,
    /// Prepares answered with catch-up instead of a promise: this acceptor no longer holds
    /// every chosen value from the Prepare's first instance, so its report would be incomplete.
    #[serde(default)]
    pub promises_refused_behind_base: u64,
    /// Records handed to the WAL.
    pub records_appended: u64,
    /// Accepted replies that named another value than the one in flight (stale; ignored).
    pub accepted_stale: u64,
    /// Promises cut by the message byte bound (the leader continues phase 1 in chunks).
    pub promises_truncated: u64,
    /// Phase 1 continuations a leader ran for instances beyond a cut Promise.
    pub phase1_continuations: u64,
    /// No-op instances a leader opened so that a re-learning peer can finish.
    pub relearn_fill_instances: u64,
    /// Groups that finished re-learning (and wrote a repair record).
    pub groups_repaired: u64,
    /// Groups that entered re-learning after WAL damage.
    pub groups_relearning: u64,
    /// Groups stopped on an error.
    pub groups_stopped: u64,
}
