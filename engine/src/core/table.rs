//! The per-core table: many groups of one core stepped by one driver.
//!
//! Owns: the groups of this core (a `BTreeMap`, iterated in id order), the core's Lsn counter
//! (one ordered record stream for all groups, so one WAL batch per round), the loopback of a
//! node's messages to itself (its own Accept, Promise, Accepted; the durable-gated ones wait
//! for `durable`), the outputs of a round and the protocol counters. Must never do I/O, read a
//! clock or draw randomness other than from the `Prng` it was given.
use super::group::Group;
use super::wal_types::{GroupId, Instance, Lsn, Record, Recovery};
use super::{Config, ConfigError, Message, NodeId, Prng, ProposalId, Tick};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

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
    /// "leader", "candidate", "follower" or "stopped".
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
    /// Messages to send once the WAL is durable through their Lsn.
    pub sends_after_durable: Vec<SendAfterDurable>,
    /// Chosen values, in instance order per group.
    pub chosen: Vec<Chosen>,
    /// Proposal outcomes.
    pub results: Vec<ProposalResult>,
    /// Groups that stopped on an error.
    pub stopped: Vec<(GroupId, GroupError)>,
}

impl Outputs {
    /// Empties every list (keeps the allocations).
    pub fn clear(&mut self) {
        self.appends.clear();
        self.sends.clear();
        self.sends_after_durable.clear();
        self.chosen.clear();
        self.results.clear();
        self.stopped.clear();
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty()
            && self.sends.is_empty()
            && self.sends_after_durable.is_empty()
            && self.chosen.is_empty()
            && self.results.is_empty()
            && self.stopped.is_empty()
    }

    fn take_into(&mut self, out: &mut Outputs) {
        out.appends.append(&mut self.appends);
        out.sends.append(&mut self.sends);
        out.sends_after_durable
            .append(&mut self.sends_after_durable);
        out.chosen.append(&mut self.chosen);
        out.results.append(&mut self.results);
        out.stopped.append(&mut self.stopped);
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
    /// Catch-up requests sent.
    pub catchup_requests_sent: u64,
    /// Chosen values served to lagging peers.
    pub catchup_entries_served: u64,
    /// Catch-up replies that were empty although the peer is ahead: the values this replica
    /// needs are older than the peer retains in memory (serving them from the WAL, or a
    /// checkpoint, is a later issue). Non-zero means a replica cannot catch up by itself.
    pub catchup_unavailable: u64,
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

/// What a group needs from its table while it handles one input.
pub(super) struct Ctx<'a> {
    pub me: NodeId,
    pub members: &'a [NodeId],
    pub config: &'a Config,
    pub now: Tick,
    pub rng: &'a mut Prng,
    pub next_lsn: &'a mut Lsn,
    pub durable_lsn: Lsn,
    pub out: &'a mut Outputs,
    pub local: &'a mut VecDeque<(GroupId, Message)>,
    pub local_after_durable: &'a mut VecDeque<(Lsn, GroupId, Message)>,
    pub marks: &'a mut Vec<Record>,
    pub stats: &'a mut CoreStats,
    pub incarnation: u64,
    /// The Lsn every damage this start found lies below (the restore's `next_lsn`).
    pub restored_lsn: Lsn,
    #[cfg(feature = "sim-bugs")]
    pub bugs: super::Bugs,
}

impl Ctx<'_> {
    /// Majority of the members.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// Peers whose reports a re-learning replica needs (members - quorum + 1): together with
    /// any quorum but itself they always share a member.
    pub fn relearn_needed(&self) -> usize {
        self.members.len() - self.quorum() + 1
    }

    /// Appends a record; returns its Lsn.
    pub fn append(&mut self, record: Record) -> Lsn {
        let lsn = *self.next_lsn;
        assert!(lsn.0 >= 1, "Lsns start at 1");
        *self.next_lsn = lsn.next();
        self.out.appends.push((lsn, record));
        self.stats.records_appended += 1;
        lsn
    }

    /// A chosen mark: it needs no write of its own and rides in the next batch that has
    /// other records (docs/PROTOCOL.md#durability). Losing it only costs a re-learn.
    pub fn defer_mark(&mut self, record: Record) {
        self.marks.push(record);
    }

    /// The Lsn of the last record appended (0 if none).
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.next_lsn.0 - 1)
    }

    pub fn send(&mut self, group: GroupId, to: NodeId, msg: Message) {
        if to == self.me {
            self.local.push_back((group, msg));
        } else {
            self.stats.messages_sent += 1;
            self.out.sends.push(SendNow { to, group, msg });
        }
    }

    pub fn send_after_durable(&mut self, lsn: Lsn, group: GroupId, to: NodeId, msg: Message) {
        #[cfg(feature = "sim-bugs")]
        if self.bugs.reply_before_durable {
            self.send(group, to, msg);
            return;
        }
        if to == self.me {
            if lsn <= self.durable_lsn {
                self.local.push_back((group, msg));
            } else {
                self.local_after_durable.push_back((lsn, group, msg));
            }
        } else {
            self.stats.messages_sent += 1;
            self.out.sends_after_durable.push(SendAfterDurable {
                lsn,
                to,
                group,
                msg,
            });
        }
    }

    /// Sends to every member, this node included (through the loopback).
    pub fn broadcast(&mut self, group: GroupId, msg: &Message) {
        for index in 0..self.members.len() {
            let to = self.members[index];
            self.send(group, to, msg.clone());
        }
    }

    /// Sends to every member but this node.
    pub fn broadcast_peers(&mut self, group: GroupId, msg: &Message) {
        for index in 0..self.members.len() {
            let to = self.members[index];
            if to != self.me {
                self.send(group, to, msg.clone());
            }
        }
    }

    /// `now + election timeout + seeded jitter`.
    pub fn election_deadline(&mut self) -> Tick {
        let jitter = self.rng.below(self.config.election_jitter_ticks + 1);
        Tick(self.now.0 + self.config.election_timeout_ticks + jitter)
    }
}

/// The groups of one core, driven as one state machine (see the module docs of `core`).
#[derive(Debug)]
pub struct CoreTable {
    config: Config,
    me: NodeId,
    members: Vec<NodeId>,
    groups: BTreeMap<GroupId, Group>,
    prng: Prng,
    now: Tick,
    next_lsn: Lsn,
    durable_lsn: Lsn,
    out: Outputs,
    local: VecDeque<(GroupId, Message)>,
    local_after_durable: VecDeque<(Lsn, GroupId, Message)>,
    marks: Vec<Record>,
    marks_since: Tick,
    stats: CoreStats,
    incarnation: u64,
    restored_lsn: Lsn,
    /// Debug builds check the invariants at every poll and panic on a broken one (the
    /// simulator turns this off: its checker reports it, with the seed).
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    panic_on_broken_invariant: bool,
    #[cfg(feature = "sim-bugs")]
    bugs: super::Bugs,
}

/// Chosen marks waiting for a batch are flushed on their own beyond this many.
const MARKS_PENDING_MAX: usize = 1024;

/// Loopback deliveries in one call are bounded (a broken invariant must not spin forever).
const LOOPBACK_STEPS_MAX: usize = 1 << 20;

macro_rules! ctx {
    ($self:ident) => {
        Ctx {
            me: $self.me,
            members: &$self.members,
            config: &$self.config,
            now: $self.now,
            rng: &mut $self.prng,
            next_lsn: &mut $self.next_lsn,
            durable_lsn: $self.durable_lsn,
            out: &mut $self.out,
            local: &mut $self.local,
            local_after_durable: &mut $self.local_after_durable,
            marks: &mut $self.marks,
            stats: &mut $self.stats,
            incarnation: $self.incarnation,
            restored_lsn: $self.restored_lsn,
            #[cfg(feature = "sim-bugs")]
            bugs: $self.bugs,
        }
    };
}

impl CoreTable {
    /// A fresh core (empty WAL: the first record gets Lsn 1).
    pub fn new(
        config: Config,
        me: NodeId,
        members: &[NodeId],
        groups: &[GroupId],
        prng: Prng,
    ) -> Result<CoreTable, ConfigError> {
        let recovery = Recovery {
            next_lsn: Lsn(1),
            ..Recovery::default()
        };
        CoreTable::restore(config, me, members, groups, &recovery, prng)
    }

    /// A core rebuilt from its recovered WAL: promises, acceptances and chosen values are
    /// restored; the chosen prefix of each group is emitted again (in order) for the executor;
    /// groups with damaged records re-learn from peers and neither promise nor accept until
    /// they have (docs/PROTOCOL.md#restart).
    pub fn restore(
        config: Config,
        me: NodeId,
        members: &[NodeId],
        groups: &[GroupId],
        recovery: &Recovery,
        prng: Prng,
    ) -> Result<CoreTable, ConfigError> {
        CoreTable::restore_with(
            config,
            me,
            members,
            groups,
            recovery,
            prng,
            Start::default(),
            #[cfg(feature = "sim-bugs")]
            super::Bugs::default(),
        )
    }

    /// [`CoreTable::restore`] with the node's incarnation and whether its state was lost
    /// (`start`), and (simulator builds) the bugs to inject from the first step on.
    #[allow(clippy::too_many_arguments)]
    pub fn restore_with(
        config: Config,
        me: NodeId,
        members: &[NodeId],
        groups: &[GroupId],
        recovery: &Recovery,
        prng: Prng,
        start: Start,
        #[cfg(feature = "sim-bugs")] bugs: super::Bugs,
    ) -> Result<CoreTable, ConfigError> {
        config.validate()?;
        let distinct: BTreeSet<NodeId> = members.iter().copied().collect();
        if distinct.len() != members.len() || !distinct.contains(&me) {
            return Err(ConfigError::Membership {
                me: me.0,
                count: members.len(),
            });
        }
        let mut table = CoreTable {
            config,
            me,
            members: members.to_vec(),
            groups: BTreeMap::new(),
            prng,
            now: Tick(0),
            next_lsn: Lsn(recovery.next_lsn.0.max(1)),
            durable_lsn: Lsn(recovery.next_lsn.0.max(1) - 1),
            out: Outputs::default(),
            local: VecDeque::new(),
            local_after_durable: VecDeque::new(),
            marks: Vec::new(),
            marks_since: Tick(0),
            stats: CoreStats::default(),
            incarnation: start.incarnation,
            restored_lsn: Lsn(recovery.next_lsn.0.max(1)),
            panic_on_broken_invariant: true,
            #[cfg(feature = "sim-bugs")]
            bugs,
        };
        for &group in groups {
            if table.groups.insert(group, Group::new(group)).is_some() {
                return Err(ConfigError::DuplicateGroup(group.0));
            }
        }
        // Any damage makes every group of this core re-learn: the (group, instance) names
        // recovery reads from a damaged record's header are unverified hints, and a wrong hint
        // would let a group vote on what it forgot (docs/PROTOCOL.md#restart).
        #[allow(unused_mut)]
        let mut tail = recovery.tail_damage.as_ref();
        #[allow(unused_mut)]
        let mut lost = start.state_lost;
        #[cfg(feature = "sim-bugs")]
        {
            if table.bugs.cut_damaged_last_write {
                tail = None;
            }
            if table.bugs.rejoin_with_empty_state {
                lost = false;
            }
        }
        let damage: Vec<&super::Damage> = recovery.damaged.iter().chain(tail).collect();
        let mut per_group: BTreeMap<GroupId, Vec<&Record>> = BTreeMap::new();
        let mut previous = Lsn::ZERO;
        for (lsn, record) in &recovery.records {
            assert!(*lsn > previous, "recovered records are in Lsn order");
            assert!(*lsn < table.next_lsn, "recovered Lsn below next_lsn");
            previous = *lsn;
            per_group.entry(record.group).or_default().push(record);
        }
        let empty = Vec::new();
        let ids: Vec<GroupId> = table.groups.keys().copied().collect();
        for id in ids {
            let records = per_group.get(&id).unwrap_or(&empty);
            let group = table.groups.get_mut(&id).expect("group exists");
            let mut ctx = ctx!(table);
            group.restore(&mut ctx, records, &damage, lost);
        }
        Ok(table)
    }

    /// What `group` is doing (None for a group this core does not own).
    pub fn group_status(&self, group: GroupId) -> Option<GroupStatus> {
        let me = self.me;
        let needed = self.members.len() - (self.members.len() / 2 + 1) + 1;
        self.groups
            .get(&group)
            .map(|g| g.status(me, &self.members, needed))
    }

    /// Every group that cannot make progress by itself, with the reason (for the runtime's
    /// periodic "stuck" log line and stats).
    pub fn stuck(&self) -> Vec<(GroupId, String)> {
        self.groups
            .keys()
            .filter_map(|g| {
                let status = self.group_status(*g)?;
                status.stuck_reason().map(|r| (*g, r))
            })
            .collect()
    }

    /// Whether debug builds panic on a broken invariant at `poll` (on by default; a driver
    /// with its own checker, the simulator, turns it off and reports instead).
    pub fn set_panic_on_broken_invariant(&mut self, on: bool) {
        self.panic_on_broken_invariant = on;
    }

    /// The promise of `group` (None for a group this core does not own).
    pub fn promised(&self, group: GroupId) -> Option<super::Ballot> {
        self.groups.get(&group).map(|g| g.promised())
    }

    /// Every group's invariants (docs/PROTOCOL.md): the first that fails, named.
    pub fn invariants(&self) -> Result<(), String> {
        for group in self.groups.values() {
            group.invariants()?;
        }
        if self.durable_lsn >= self.next_lsn {
            return Err(format!(
                "durable Lsn {} at or beyond the next Lsn {}",
                self.durable_lsn, self.next_lsn
            ));
        }
        Ok(())
    }

    /// Groups of this core that are re-learning now.
    pub fn relearning_count(&self) -> usize {
        self.groups.values().filter(|g| g.is_relearning()).count()
    }

    /// The node's incarnation this table was started with.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Injects known protocol bugs (simulator only).
    #[cfg(feature = "sim-bugs")]
    pub fn set_bugs(&mut self, bugs: super::Bugs) {
        self.bugs = bugs;
    }

    /// A message from `from` for `group` (decoded by the caller). Unknown groups are ignored.
    pub fn on_message(&mut self, from: NodeId, group: GroupId, msg: Message) {
        if from != self.me {
            self.stats.messages_received += 1;
        }
        let Some(state) = self.groups.get_mut(&group) else {
            self.stats.messages_unknown_group += 1;
            return;
        };
        let mut ctx = ctx!(self);
        state.on_message(&mut ctx, from, msg);
        self.drain_loopback();
    }

    /// Time advances to `now` (never backwards): elections, retransmissions, heartbeats.
    pub fn tick(&mut self, now: Tick) {
        assert!(
            now >= self.now,
            "time went backwards: {:?} < {:?}",
            now,
            self.now
        );
        self.now = now;
        for group in self.groups.values_mut() {
            let mut ctx = ctx!(self);
            group.tick(&mut ctx);
        }
        self.drain_loopback();
    }

    /// Queues a command for `group`. It is batched into an instance value at the next `poll`;
    /// its outcome arrives later in `Outputs::results`. Refused at once (nothing queued) when
    /// this node is a follower (`NotLeader` with a hint), the queue is full (`Overloaded`), the
    /// command cannot fit a value, or the group is unknown or stopped. A candidate (phase 1 in
    /// progress) queues the command: it is proposed if the candidate wins (two round trips on
    /// its critical path) and fails with `NotLeader` if it loses.
    pub fn propose(
        &mut self,
        group: GroupId,
        id: ProposalId,
        command: Bytes,
    ) -> Result<(), FailReason> {
        let Some(state) = self.groups.get_mut(&group) else {
            return Err(FailReason::UnknownGroup);
        };
        let mut ctx = ctx!(self);
        let result = state.propose(&mut ctx, id, command);
        if result == Err(FailReason::Overloaded) {
            self.stats.proposals_overloaded += 1;
        }
        result
    }

    /// The WAL is durable through `lsn`: releases this node's own durable-gated messages.
    pub fn durable(&mut self, lsn: Lsn) {
        assert!(
            lsn < self.next_lsn,
            "durable({lsn}) beyond the last appended record"
        );
        if lsn <= self.durable_lsn {
            return;
        }
        self.durable_lsn = lsn;
        while let Some((gate, _, _)) = self.local_after_durable.front() {
            if *gate > lsn {
                break;
            }
            let (_, group, msg) = self.local_after_durable.pop_front().expect("front exists");
            self.local.push_back((group, msg));
        }
        self.drain_loopback();
    }

    /// Ends a round: leaders batch queued commands into instances and send Accepts and
    /// Commits; then everything produced since the last poll is moved into `out`.
    pub fn poll(&mut self, out: &mut Outputs) {
        for group in self.groups.values_mut() {
            let mut ctx = ctx!(self);
            group.flush(&mut ctx);
        }
        self.drain_loopback();
        self.flush_marks();
        self.out.take_into(out);
        #[cfg(debug_assertions)]
        if self.panic_on_broken_invariant {
            if let Err(broken) = self.invariants() {
                panic!("core invariant broken: {broken}");
            }
        }
    }

    /// The node this core believes leads `group` (itself included), if any.
    pub fn leader_hint(&self, group: GroupId) -> Option<NodeId> {
        self.groups.get(&group).and_then(|g| g.leader_hint())
    }

    /// True when this node currently leads `group` (holds a quorum of promises).
    pub fn is_leader(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(|g| g.is_leader())
    }

    /// The first instance of `group` not yet applied (everything below is chosen and emitted).
    pub fn applied_next(&self, group: GroupId) -> Option<Instance> {
        self.groups.get(&group).map(|g| g.applied_next())
    }

    /// True while `group` re-learns after WAL damage (it neither promises nor accepts).
    pub fn is_relearning(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(|g| g.is_relearning())
    }

    /// The protocol counters.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// The Lsn the next appended record gets.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The highest Lsn reported durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.me
    }

    /// The groups of this core, ascending.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// Chosen marks ride with other records; alone, only when many wait or they waited a
    /// heartbeat (so an idle group's marks still reach the disk).
    fn flush_marks(&mut self) {
        if self.marks.is_empty() {
            self.marks_since = self.now;
            return;
        }
        let ride = !self.out.appends.is_empty();
        let stale = self.now.0 >= self.marks_since.0 + self.config.heartbeat_ticks;
        if ride || stale || self.marks.len() >= MARKS_PENDING_MAX {
            for record in std::mem::take(&mut self.marks) {
                let lsn = self.next_lsn;
                self.next_lsn = lsn.next();
                self.stats.records_appended += 1;
                self.out.appends.push((lsn, record));
            }
            self.marks_since = self.now;
        }
    }

    fn drain_loopback(&mut self) {
        let mut steps = 0;
        while let Some((group, msg)) = self.local.pop_front() {
            steps += 1;
            assert!(steps < LOOPBACK_STEPS_MAX, "loopback does not settle");
            let Some(state) = self.groups.get_mut(&group) else {
                continue;
            };
            let mut ctx = ctx!(self);
            let me = ctx.me;
            state.on_message(&mut ctx, me, msg);
        }
    }
}
