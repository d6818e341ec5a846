//! The per-core table: many groups of one core stepped by one driver.
//!
//! Owns: the groups of this core (a `BTreeMap`, iterated in id order), the core's Lsn counter
//! (one ordered record stream for all groups, so one WAL batch per round), the loopback of a
//! node's messages to itself (its own Accept, Promise, Accepted; the durable-gated ones wait
//! for `durable`), the outputs of a round and the protocol counters. Must never do I/O, read a
//! clock or draw randomness other than from the `Prng` it was given.
use super::ctx::Ctx;
use super::group::Group;
use super::outputs::{CoreStats, FailReason, GroupStatus, Outputs, Start};
use super::wal_types::{GroupId, Instance, Lsn, Record, Recovery};
use super::{Config, ConfigError, Membership, Message, NodeId, Prng, ProposalId, Tick};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The groups of one core, driven as one state machine (see the module docs of `core`).
#[derive(Debug)]
pub struct CoreTable {
    config: Config,
    me: NodeId,
    /// The voters (docs/PROTOCOL.md#follower-nodes).
    members: Vec<NodeId>,
    /// The non-voting followers.
    followers: Vec<NodeId>,
    /// This node votes (it is among `members`).
    voter: bool,
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
    /// The mid-log damaged runs recovery found at this start (see `Ctx::restored_damage`).
    restored_damage: Vec<(Lsn, Lsn)>,
    /// Set by the driver: the storage has no room for more values (see `Ctx::storage_full`).
    storage_full: bool,
    /// Set by the driver: purge holds for lagging peers are released (storage short of room).
    purge_holds_released: bool,
    /// Bytes of chosen values learned from others this core may still log (`u64::MAX`: no
    /// bound); see `set_storage_room`.
    log_room: u64,
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
            followers: &$self.followers,
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
            restored_damage: &$self.restored_damage,
            storage_full: $self.storage_full,
            purge_holds_released: $self.purge_holds_released,
            log_room: &mut $self.log_room,
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
        members: impl Into<Membership>,
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
        members: impl Into<Membership>,
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
        members: impl Into<Membership>,
        groups: &[GroupId],
        recovery: &Recovery,
        prng: Prng,
        start: Start,
        #[cfg(feature = "sim-bugs")] bugs: super::Bugs,
    ) -> Result<CoreTable, ConfigError> {
        config.validate()?;
        let membership: Membership = members.into();
        let distinct: BTreeSet<NodeId> = membership.all().collect();
        let count = membership.voters.len() + membership.followers.len();
        if distinct.len() != count || !distinct.contains(&me) || membership.voters.is_empty() {
            return Err(ConfigError::Membership { me: me.0, count });
        }
        let voter = membership.is_voter(me);
        let mut table = CoreTable {
            config,
            me,
            members: membership.voters,
            followers: membership.followers,
            voter,
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
            restored_damage: recovery
                .damaged
                .iter()
                .map(|d| (d.first_lsn, d.last_lsn))
                .collect(),
            storage_full: false,
            purge_holds_released: false,
            log_room: u64::MAX,
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
        self.groups.get(&group).map(|g| g.status(me))
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

    /// The driver's storage has no room for more values (`true`), or has room again: while
    /// full, this core's groups vote on no new instance and take no proposal; they still learn
    /// chosen values, logging them within `set_storage_room` (docs/PROTOCOL.md#storage-full).
    pub fn set_storage_full(&mut self, full: bool) {
        self.storage_full = full;
    }

    /// The storage is short of room (`true`): log bases move past what lagging peers asked
    /// for, so that purge frees the WAL (docs/PROTOCOL.md#log-base-and-purge).
    pub fn set_purge_holds_released(&mut self, released: bool) {
        self.purge_holds_released = released;
    }

    /// The bytes of values the driver's storage can still take (`None`: no bound), given
    /// before each round and before the first tick (docs/PROTOCOL.md#storage-full). Chosen
    /// values this core learns from other nodes are logged (Chosen marks with their payload)
    /// only within it, less the marks not yet written; those beyond it are applied without
    /// being logged (`chosen_unlogged_storage_short`). Marks already waiting beyond a smaller
    /// room lose their payload the same way. A group that re-learns logs what it learns
    /// whatever the room: its repair record vouches for it.
    pub fn set_storage_room(&mut self, room: Option<u64>) {
        let Some(room) = room else {
            self.log_room = u64::MAX;
            return;
        };
        #[cfg(feature = "sim-bugs")]
        if self.bugs.log_ignores_room {
            self.log_room = u64::MAX;
            return;
        }
        let mut left = room;
        let groups = &mut self.groups;
        let stats = &mut self.stats;
        self.marks.retain(|mark| {
            let bytes = mark.payload.len() as u64;
            if bytes == 0 || groups.get(&mark.group).is_some_and(|g| g.is_relearning()) {
                return true;
            }
            if bytes <= left {
                left -= bytes;
                true
            } else {
                stats.chosen_unlogged_storage_short += 1;
                if let Some(group) = groups.get_mut(&mark.group) {
                    group.note_unlogged(mark.instance);
                }
                false
            }
        });
        self.log_room = left;
    }

    /// Whether the storage was last said to be full.
    pub fn storage_full(&self) -> bool {
        self.storage_full
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

    /// How far this core's groups lag: instances heard chosen and not applied yet, summed
    /// over the groups and for the group that lags most.
    pub fn lag(&self) -> (u64, u64) {
        self.groups.values().fold((0, 0), |(sum, max), g| {
            let lag = g.lag();
            (sum + lag, max.max(lag))
        })
    }

    /// Groups of this core that are re-learning now, or owe a re-learn before their first
    /// vote (lost or damaged state found while this node did not vote in them).
    pub fn relearning_count(&self) -> usize {
        self.groups
            .values()
            .filter(|g| g.is_relearning() || g.owes_relearn())
            .count()
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

    /// Proposes a change of `group`'s membership to `members` (docs/PROTOCOL.md#membership-change):
    /// refused at once when this node does not lead (`NotLeader`), `members` has no voter or
    /// names a node twice (`BadMembership`), or another change is queued, in flight or not in
    /// effect yet (`MembershipChangePending`). The change is a value of its own; its outcome
    /// arrives in `Outputs::results` like a command's (Committed when chosen), and it governs
    /// from `MEMBERSHIP_DELAY` instances after its instance on (an idle leader fills the gap
    /// with no-ops). Every node the change names must be reachable by the driver's network.
    pub fn change_membership(
        &mut self,
        group: GroupId,
        id: ProposalId,
        members: Membership,
    ) -> Result<(), FailReason> {
        let Some(state) = self.groups.get_mut(&group) else {
            return Err(FailReason::UnknownGroup);
        };
        let mut ctx = ctx!(self);
        state.propose_membership(&mut ctx, id, members)
    }

    /// A linearizable read of `group` (docs/PROTOCOL.md#reads): refused at once (nothing
    /// queued) when this node does not lead the group (`NotLeader` with a hint), too many reads
    /// wait (`Overloaded`), or the group is unknown or stopped. Otherwise it appears in
    /// `Outputs::reads_ready` once confirmed (by the master lease at once, or by a read-index
    /// round) and once the applied point covers every value chosen before it arrived; if
    /// leadership is lost first it fails with `NotLeader` in `Outputs::results`. The driver
    /// must read the clock (`tick`) after the read arrived and before handing it in.
    pub fn read(
        &mut self,
        group: GroupId,
        id: ProposalId,
        mode: super::ReadMode,
    ) -> Result<(), FailReason> {
        let Some(state) = self.groups.get_mut(&group) else {
            return Err(FailReason::UnknownGroup);
        };
        let mut ctx = ctx!(self);
        let result = state.read(&mut ctx, id, mode);
        if result.is_err() {
            self.stats.reads_failed += 1;
        }
        result
    }

    /// While this node is the master of `group`: the tick of its clock at which its lease ends
    /// (exclusive). None otherwise (docs/PROTOCOL.md#master-lease).
    pub fn master_until(&self, group: GroupId) -> Option<Tick> {
        #[cfg(feature = "sim-bugs")]
        let ignore_drift = self.bugs.lease_ignores_drift;
        #[cfg(not(feature = "sim-bugs"))]
        let ignore_drift = false;
        self.groups
            .get(&group)?
            .master_until_at(&self.config, self.now, ignore_drift)
    }

    /// The master lease this node's acceptor grants for `group` now: the holder (None: any
    /// node, for a lease's length after a restart) and the tick of this node's clock at which
    /// the grant ends.
    pub fn lease_granted(&self, group: GroupId) -> Option<(Option<NodeId>, Tick)> {
        let (holder, until) = self.groups.get(&group)?.grant_raw()?;
        (self.now < until).then_some((holder, until))
    }

    /// The tick the table was last told (`tick`).
    pub fn now(&self) -> Tick {
        self.now
    }

    /// Moves `group`'s log base up to `below` (see `Group::set_log_base`): returns the Lsn of
    /// the log-base record to wait for before the WAL may purge the group below `below`.
    pub fn set_log_base(&mut self, group: GroupId, below: Instance) -> Option<Lsn> {
        let state = self.groups.get_mut(&group)?;
        let mut ctx = ctx!(self);
        state.set_log_base(&mut ctx, below)
    }

    /// Answers a catch-up request the table handed out as a [`crate::core::ReadRequest`]:
    /// `values` holds what the driver read from storage (consecutive from `read.first`, maybe
    /// none, maybe cut short by its read budget); memory serves what follows them, within the
    /// request's window, unless `more_follows` (the driver continues the read in a later
    /// round: the replies name the request's asked end as the answer's end). The replies go
    /// straight into `out`.
    pub fn serve_read(
        &mut self,
        read: &super::ReadRequest,
        values: Vec<(Instance, Bytes)>,
        more_follows: bool,
        out: &mut Outputs,
    ) {
        if let Some(state) = self.groups.get_mut(&read.group) {
            let mut ctx = ctx!(self);
            let window = super::group::Window {
                entries: read.entries_max,
                bytes: read.bytes_max,
            };
            let end = more_follows.then_some(read.asked_end);
            state.serve_entries(
                &mut ctx,
                read.to,
                read.request,
                read.first,
                values,
                window,
                end,
            );
        }
        self.out.take_into(out);
    }

    /// Answers a peer's checkpoint request the table handed out as a
    /// [`crate::core::CheckpointRead`]: `piece` is what the driver's checkpoint store read
    /// (the checkpoint, the offset served and the bytes), or None when it has none to offer.
    /// The reply goes straight into `out`.
    pub fn serve_checkpoint(
        &mut self,
        group: GroupId,
        to: NodeId,
        piece: Option<(super::CheckpointInfo, u64, Bytes)>,
        out: &mut Outputs,
    ) {
        if let Some(state) = self.groups.get_mut(&group) {
            let mut ctx = ctx!(self);
            state.serve_checkpoint(&mut ctx, to, piece);
        }
        self.out.take_into(out);
    }

    /// The driver installed the checkpoint `info` of `group` into its state machine (durably):
    /// the group continues after it (docs/PROTOCOL.md#checkpoint-transfer). What it produces
    /// goes into `out`.
    pub fn installed(&mut self, group: GroupId, info: super::CheckpointInfo, out: &mut Outputs) {
        if let Some(state) = self.groups.get_mut(&group) {
            let mut ctx = ctx!(self);
            state.installed(&mut ctx, info);
        }
        self.out.take_into(out);
    }

    /// The driver could not receive or install `group`'s checkpoint: the transfer is
    /// abandoned (catch-up backs off and tries again).
    pub fn install_failed(&mut self, group: GroupId, out: &mut Outputs) {
        if let Some(state) = self.groups.get_mut(&group) {
            let mut ctx = ctx!(self);
            state.install_failed(&mut ctx);
        }
        self.out.take_into(out);
    }

    /// Re-logs an idle group's state (see `Group::relog_base`): the Lsn of its new log-base
    /// record, before which the WAL needs none of the group's records once it is durable.
    pub fn relog_base(&mut self, group: GroupId) -> Option<Lsn> {
        let state = self.groups.get_mut(&group)?;
        let mut ctx = ctx!(self);
        state.relog_base(&mut ctx)
    }

    /// The lowest instance `group`'s log holds (None for a group this core does not own).
    pub fn log_base(&self, group: GroupId) -> Option<Instance> {
        self.groups.get(&group).map(|g| g.log_base())
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

    /// Whether `group` found lost or damaged state at this start while this node did not vote
    /// in it: it re-learns before its first vote (docs/PROTOCOL.md#membership-change).
    pub fn owes_relearn(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(|g| g.owes_relearn())
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

    /// The voting members (this node included when it votes).
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// The non-voting followers (docs/PROTOCOL.md#follower-nodes).
    pub fn followers(&self) -> &[NodeId] {
        &self.followers
    }

    /// Whether this node votes (false: a follower).
    pub fn is_voter(&self) -> bool {
        self.voter
    }

    /// How many nodes are not this node, voters and followers (the destinations of a
    /// broadcast).
    pub fn peers(&self) -> usize {
        self.members.len() + self.followers.len() - 1
    }

    /// The injected bugs (simulator only).
    #[cfg(feature = "sim-bugs")]
    pub fn bugs(&self) -> super::Bugs {
        self.bugs
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
