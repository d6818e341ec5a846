//! One Paxos group's replica: proposer, acceptor and learner (docs/PROTOCOL.md).
//!
//! Owns: the group's promise, its accepted values, its chosen values and applied point, the
//! rolling checksum, the proposer's role and pipeline, and the proposal queue. Must never do
//! I/O or read a clock: it speaks only through the table's `Ctx` (append, send,
//! send-after-durable, outputs) and learns time from `ctx.now`.
use super::ctx::Ctx;
use super::message::{self, Message, PromiseEntry};
use super::outputs::{
    Chosen, FailReason, GroupError, GroupStatus, ProposalResult, ReadRequest, RelearnStatus,
};
use super::value::{self, Identity};
use super::wal_types::{Ballot, Damage, GroupId, Instance, Lsn, Record, RecordKind};
use super::{Membership, NodeId, ProposalId, Tick};
use super::{ACCEPT_WINDOW_INSTANCES, CATCHUP_BATCH_MAX, PIPELINE_MAX, PROMISE_SPAN_INSTANCES};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod acceptor;
mod install;
mod learner;
mod lease;
pub(crate) mod membership;
mod proposer;
mod relearn;

/// The payload tag of a repair record (a `Meta` record a group writes when it finished
/// re-learning): the Lsn the start recovered to (u64), then the number (u32) and the
/// `(first, last)` Lsns (u64 each) of the mid-log damaged runs that start found. Those runs are
/// repaired for this group; damage found later anywhere else is new, even below that Lsn.
const REPAIR_TAG: &[u8; 4] = b"RPR2";
/// The first repair records named only the Lsn (damage below it counted as repaired, which
/// also covered records that were intact then and damaged later): they cover nothing now.
const REPAIR_TAG_V1: &[u8; 4] = b"RPR1";
/// A repair record lists at most this many damaged runs; a start with more lists none (its
/// damage is then re-learned again at the next restart, which is safe).
pub(super) const REPAIR_RUNS_MAX: usize = 1024;
/// The payload tag of a re-learn record (a `Meta` record a group writes when it starts
/// re-learning, in its first write: the obligation survives a crash even after the WAL has
/// zeroed the damaged tail that caused it). One byte follows: 1 if the state was lost.
const RELEARN_TAG: &[u8; 4] = b"RLN1";
/// The payload tag of a log-base record (a `Meta` record a group writes before the WAL may
/// purge its records below an instance): the instance (u64) and the rolling checksum of every
/// value below it (u32) follow, and the record's `promised` carries the promise (the Promise
/// records below the base may be purged). docs/PROTOCOL.md#log-base-and-purge.
const BASE_TAG: &[u8; 4] = b"BAS1";
/// A log-base record of a group whose membership changed: as `BAS1`, then the configuration
/// history the base needs (`membership::encode_history`: the configuration in effect at the
/// base and the changes applied below it that take effect after it).
const BASE_TAG_CONFIGS: &[u8; 4] = b"BAS2";
/// Catch-up that found nothing to learn from a peer that is ahead backs off, doubling from
/// the retransmit interval up to this many election timeouts (never a tight loop).
const CATCHUP_BACKOFF_ELECTIONS_MAX: u64 = 16;

/// Set in the id of every streaming catch-up request (re-learn request ids never have it).
const STREAM_REQUEST_BIT: u64 = 1 << 63;
/// Requests of one catch-up stream whose answers are tracked (older ones are forgotten: a
/// gap in them is found by the stream's deadline instead).
const STREAM_REQUESTS_MAX: usize = 8;

/// Bytes of chosen values per catch-up reply (besides the entry count limit).
const CATCHUP_BYTES_MAX: usize = 1 << 20;
/// Checksums announced by peers for instances not yet applied here, kept to compare later.
const PENDING_CHECKS_MAX: usize = 64;

#[derive(Debug)]
struct Queued {
    id: ProposalId,
    command: Bytes,
    /// Queued while this node already led: its commit costs one round trip (else two).
    arrived_leading: bool,
}

#[derive(Debug)]
struct InFlight {
    value: Bytes,
    /// crc32 of `value`: an Accepted counts only when it names this.
    value_crc: u32,
    /// The identity inside `value` (Committed is answered only when the chosen value has it).
    identity: Identity,
    accepted_by: BTreeSet<NodeId>,
    proposals: Vec<ProposalId>,
    /// Prepare round trips on its critical path (0 when every command arrived while leading).
    prepare_rtts: u32,
    /// Accept transmissions so far (the first send and every retransmission).
    transmissions: u32,
    sent_at: Option<Tick>,
}

#[derive(Debug)]
struct PromiseInfo {
    entries: Vec<PromiseEntry>,
    truncated: bool,
}

#[derive(Debug)]
struct Candidate {
    ballot: Ballot,
    first: Instance,
    promises: BTreeMap<NodeId, PromiseInfo>,
    started_at: Tick,
    sent_at: Tick,
    /// The record of this node's own promise of `ballot`: no Prepare leaves before it is
    /// durable, so a ballot is never used twice across crashes.
    promise_lsn: Lsn,
    /// Prepare transmissions (the first and every retransmission).
    rounds: u32,
}

#[derive(Debug)]
enum Role {
    Follower,
    Candidate(Candidate),
    Leader {
        ballot: Ballot,
        /// Prepare round trips it took to win (charged to commands queued while a candidate).
        prepare_rounds: u32,
    },
}

/// A catch-up stream from one peer: values from the applied point up to `asked_end` have
/// been asked for (a window, docs/PROTOCOL.md#streaming-catch-up).
#[derive(Debug, Clone)]
struct Stream {
    peer: NodeId,
    /// The requests whose answers may still come: (id, first, end), oldest first, at most
    /// `STREAM_REQUESTS_MAX`. An answer that ends short of its request's end leaves a gap,
    /// asked for again at once (docs/PROTOCOL.md#streaming-catch-up).
    requests: VecDeque<(u64, Instance, Instance)>,
    /// One past the last instance asked for.
    asked_end: Instance,
    /// When this stream last brought a value (a replica that is being brought forward does
    /// not stand for election: it would lead from far behind).
    progress_at: Tick,
}

/// A peer's answer to a re-learn request.
#[derive(Debug, Clone, Copy)]
struct Report {
    applied_next: Instance,
    /// The peer serves no value below this.
    log_base: Instance,
    high: Instance,
    promised: Ballot,
    relearning: bool,
    state_lost: bool,
}

/// Re-learning after WAL damage (Paxos Made Live): no votes until `target` is applied
/// (docs/PROTOCOL.md#restart).
#[derive(Debug)]
struct Relearn {
    /// Fixed once enough peers reported: every instance this replica may have voted on
    /// before it lost state lies below it (docs/PROTOCOL.md#re-learning).
    target: Option<Instance>,
    /// One past the highest instance in the recovered log.
    floor: Instance,
    /// Peers' answers to this re-learn's request (`request`), one per peer.
    reports: BTreeMap<NodeId, Report>,
    /// The highest promise reported: this replica promises at least that when it rejoins.
    promise_floor: Ballot,
    /// When the peers that have not reported were last asked.
    asked_at: Option<Tick>,
    /// When re-learning began (first tick after the restart).
    started_at: Option<Tick>,
    /// This re-learn's request id: only replies that echo it count as reports.
    request: u64,
    /// The target came from pooled reports of re-learning peers (PAR's condition).
    pooled: bool,
    /// This replica's whole state was lost (not just damaged records).
    lost: bool,
}

#[derive(Debug)]
pub(super) struct Group {
    id: GroupId,
    // Acceptor (docs/PROTOCOL.md#acceptor).
    promised: Ballot,
    accepted: BTreeMap<Instance, (Ballot, Bytes)>,
    /// A follower's copy of the leader's Accepts (never a vote, never logged): the value of
    /// `(ballot, instance)`, learned when a Commit with that ballot covers the instance.
    observed: BTreeMap<Instance, (Ballot, Bytes)>,
    // Learner.
    /// The highest "every instance below this is chosen" heard from a leader or a peer
    /// (stats: how far this replica lags).
    chosen_heard: Instance,
    /// The configurations of this group, oldest first (the first from instance 0 or the log
    /// base), docs/PROTOCOL.md#membership-change.
    configs: Vec<membership::ConfigEntry>,
    /// A membership change a leader was asked for, not opened yet.
    config_queued: Option<(ProposalId, Membership)>,
    /// This start found lost or damaged state (whether the state was lost, and the re-learn
    /// floor): a configuration applied later that newly counts this node as a voter makes it
    /// re-learn then.
    relearn_owed: Option<(bool, Instance)>,
    /// When this replica last received a message of the leader it follows (an Accept or a
    /// Commit) and had applied everything the message said was chosen: a stale read is served
    /// within its bound of this (docs/PROTOCOL.md#stale-reads).
    fresh_at: Option<Tick>,
    /// This leadership's phase 1 collections: the first instance each covered and who promised
    /// (the first phase 1, then each continuation).
    promisers: Vec<(Instance, BTreeSet<NodeId>)>,
    /// This start found lost or damaged state while this node did not vote (as far as it
    /// knew): the first time it finds itself a voter it re-learns before anything else.
    owed_pending: bool,
    chosen: BTreeMap<Instance, Bytes>,
    applied_next: Instance,
    checksum: u32,
    checksums: BTreeMap<Instance, u32>,
    pending_checks: BTreeMap<Instance, (u32, NodeId)>,
    catchup_deadline: Option<Tick>,
    /// Set while catch-up finds nothing: the peer that is ahead (and its applied point) no
    /// longer holds the values this replica needs (cleared by the next value learned).
    catchup_unavailable: Option<(NodeId, Instance)>,
    /// The current catch-up back-off in ticks (0: none).
    catchup_backoff: u64,
    /// The catch-up stream in progress (docs/PROTOCOL.md#streaming-catch-up).
    catchup_stream: Option<Stream>,
    /// What lagging peers asked for lately (catch-up or checkpoint transfer), and when: the
    /// log base does not move past it for `purge_hold_ticks` (docs/PROTOCOL.md#log-base-and-purge).
    peer_needs: BTreeMap<NodeId, (Instance, Tick)>,
    /// The peer (and the instance it needs) that held the log base back at the last move.
    base_held_by: Option<(NodeId, Instance)>,
    /// The lowest instance this replica's log holds (the WAL may purge below it; what is
    /// below is in the state machine's checkpoint).
    log_base: Instance,
    /// One past the highest instance this replica applied without logging it (storage short
    /// of room, docs/PROTOCOL.md#storage-full): its log cannot serve anything below this,
    /// so catch-up replies name it as the base ([`Group::serve_base`]). Not persisted: after
    /// a restart the replica's applied point is below any such hole.
    unlogged_end: Instance,
    /// A checkpoint transfer in progress (docs/PROTOCOL.md#checkpoint-transfer).
    install: Option<install::Install>,
    relearn: Option<Relearn>,
    stopped: bool,
    // Proposer.
    role: Role,
    leader_hint: Option<NodeId>,
    election_deadline: Option<Tick>,
    queue: VecDeque<Queued>,
    inflight: BTreeMap<Instance, InFlight>,
    next_instance: Instance,
    max_seen: Ballot,
    commit_dirty: bool,
    last_broadcast: Tick,
    /// A leader whose phase 1 was cut by a Promise's byte bound knows the acceptors' state
    /// only below this: it opens nothing at or above it until a continuation covers more.
    phase1_end: Option<Instance>,
    /// A leader's phase 1 continuation from `phase1_end` (same ballot, next chunk).
    continuation: Option<Candidate>,
    /// A re-learning peer needs every instance below this chosen: an idle leader fills.
    fill_until: Instance,
    /// The next proposal sequence (with the node and incarnation: the value's identity).
    next_seq: u64,
    /// Re-learn episodes so far (part of the request id).
    relearn_episodes: u64,
    /// Streaming catch-up requests sent so far (part of their ids).
    stream_requests: u64,
    /// Phase 1 attempts since a leader was last seen.
    elections_without_leader: u64,
    /// Members whose Promise the last candidacy did not get.
    missing_promises: Vec<NodeId>,
    /// When this replica last heard from another node's leadership (an Accept or Commit with a
    /// ballot at least its promise): within an election timeout of it, it ignores Prepares
    /// from other nodes (docs/PROTOCOL.md#leader-stickiness-and-check-quorum).
    leader_seen_at: Option<Tick>,
    /// A leader's view of its peers: when each was last heard from (any message). A leader
    /// that has not heard from a quorum within an election timeout steps down.
    peer_heard_at: BTreeMap<NodeId, Tick>,
    /// When this follower last answered a Commit with a `CommitAck`.
    commit_acked_at: Tick,
    // Master lease and reads (docs/PROTOCOL.md#master-lease, lease.rs).
    /// The master lease this replica's acceptor granted: the holder (None: any node, after a
    /// restart) and the tick of this node's clock at which the grant ends.
    grant: Option<(Option<NodeId>, Tick)>,
    /// Restarted with state: at the first tick, a grant to nobody for a lease's length.
    grant_after_restart: bool,
    /// This leadership's lease rounds and their answers (None while not leading).
    lease: Option<lease::LeaderLease>,
    /// Reads waiting for their confirmation or the applied point (only while leading).
    reads: VecDeque<lease::PendingRead>,
    /// One past the window this leadership's phase 1 recovered: reads are served only once the
    /// applied point reaches it.
    reads_from: Instance,
    /// A read-index read waits for a lease round that has not been sent.
    round_wanted: bool,
    /// When this leader last sent a lease round.
    last_round_at: Tick,
    /// The master lease end last reported (a change is an output).
    master_until_seen: Option<Tick>,
}

impl Group {
    pub fn new(id: GroupId) -> Group {
        Group {
            id,
            promised: Ballot::ZERO,
            accepted: BTreeMap::new(),
            observed: BTreeMap::new(),
            chosen_heard: Instance(0),
            configs: Vec::new(),
            config_queued: None,
            relearn_owed: None,
            owed_pending: false,
            promisers: Vec::new(),
            fresh_at: None,
            chosen: BTreeMap::new(),
            applied_next: Instance(0),
            checksum: 0,
            checksums: BTreeMap::new(),
            pending_checks: BTreeMap::new(),
            catchup_deadline: None,
            catchup_unavailable: None,
            catchup_backoff: 0,
            catchup_stream: None,
            peer_needs: BTreeMap::new(),
            base_held_by: None,
            log_base: Instance(0),
            unlogged_end: Instance(0),
            install: None,
            relearn: None,
            stopped: false,
            role: Role::Follower,
            leader_hint: None,
            election_deadline: None,
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            next_instance: Instance(0),
            max_seen: Ballot::ZERO,
            commit_dirty: false,
            last_broadcast: Tick(0),
            phase1_end: None,
            continuation: None,
            fill_until: Instance(0),
            next_seq: 1,
            relearn_episodes: 0,
            stream_requests: 0,
            leader_seen_at: None,
            peer_heard_at: BTreeMap::new(),
            commit_acked_at: Tick(0),
            grant: None,
            grant_after_restart: false,
            lease: None,
            reads: VecDeque::new(),
            reads_from: Instance(0),
            round_wanted: false,
            last_round_at: Tick(0),
            master_until_seen: None,
            elections_without_leader: 0,
            missing_promises: Vec::new(),
        }
    }

    /// What this group is doing (for stats and the stuck-state log line).
    pub fn status(&self, me: NodeId) -> GroupStatus {
        let voter = self.votes(me);
        let latest = self.latest_config();
        let members: &[NodeId] = &latest.voters;
        let needed = members.len() - membership::quorum_of(latest) + 1;
        let role = if self.stopped {
            "stopped"
        } else {
            match self.role {
                Role::Follower if !voter && !latest.all().any(|n| n == me) => "removed",
                Role::Follower if !voter => "non-voting",
                Role::Follower => "follower",
                Role::Candidate(_) => "candidate",
                Role::Leader { .. } => "leader",
            }
        };
        let missing_promises = match &self.role {
            Role::Candidate(c) => members
                .iter()
                .copied()
                .filter(|n| !c.promises.contains_key(n))
                .collect(),
            _ => self.missing_promises.clone(),
        };
        let relearning = self.relearn.as_ref().map(|r| RelearnStatus {
            target: r.target,
            waiting_for: members
                .iter()
                .copied()
                .filter(|n| *n != me && !r.reports.contains_key(n))
                .collect(),
            sure_reports: r.reports.values().filter(|x| !x.relearning).count(),
            relearning_reports: r.reports.values().filter(|x| x.relearning).count(),
            needed,
            pooled: r.pooled,
        });
        GroupStatus {
            group: self.id,
            role: role.to_string(),
            leader_hint: self.leader_hint,
            applied_next: self.applied_next,
            elections_without_leader: self.elections_without_leader,
            missing_promises,
            relearning,
            log_base: self.log_base,
            catchup_unavailable: self.catchup_unavailable,
            log_base_held_by: self.base_held_by,
            installing: self.install.as_ref().map(|i| i.status()),
            master_until: self.master_until_seen,
            lease_granted: self.grant,
            chosen_heard: self.chosen_heard,
            voters: latest.voters.clone(),
            followers: latest.followers.clone(),
            members_from: self.configs.last().map_or(Instance(0), |c| c.from),
        }
    }

    /// An idle group re-logs its state so that the WAL's old segments need not be kept for
    /// it: when its base is its applied point and it holds nothing accepted or in flight, a
    /// new log-base record (same base, the current promise and checksum) is all it needs;
    /// returns its Lsn (every record of the group before it is then superseded). None when
    /// the group holds anything else.
    pub fn relog_base(&mut self, ctx: &mut Ctx<'_>) -> Option<Lsn> {
        if self.log_base != self.applied_next
            || !self.accepted.is_empty()
            || !self.inflight.is_empty()
            || self.chosen.range(self.applied_next..).next().is_some()
            || self.relearn.is_some()
            || self.stopped
        {
            return None;
        }
        let payload = self.base_payload(self.log_base, self.checksum);
        Some(self.append_meta(ctx, payload))
    }

    /// A lagging peer asked for values from `need` on (catch-up, or a checkpoint transfer
    /// that will continue from there): the log base holds at most there for a while.
    pub(super) fn note_peer_need(&mut self, ctx: &Ctx<'_>, peer: NodeId, need: Instance) {
        if ctx.config.purge_hold_ticks == 0 || peer == ctx.me || need >= self.applied_next {
            return;
        }
        self.peer_needs.insert(peer, (need, ctx.now));
    }

    /// The lowest instance this replica's log holds.
    pub fn log_base(&self) -> Instance {
        self.log_base
    }

    /// The lowest instance from which this replica can serve every applied value from its
    /// log: its log base, or above the last value it applied without logging it. Catch-up
    /// replies report this as the peer's base, so a replica that needs a value below it
    /// fetches a checkpoint instead of asking here again and again.
    pub(super) fn serve_base(&self, ctx: &Ctx<'_>) -> Instance {
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.serve_over_unlogged_hole {
            return self.log_base; // the pre-fix answer
        }
        let _ = ctx;
        self.log_base.max(self.unlogged_end)
    }

    /// This replica applies `instance` without logging it (storage short of room).
    pub(crate) fn note_unlogged(&mut self, instance: Instance) {
        self.unlogged_end = self.unlogged_end.max(Instance(instance.0 + 1));
    }

    /// Moves the log base up to `below` (at most the applied point; the caller's state
    /// machine holds every value below it durably): appends a log-base record carrying the
    /// promise and the rolling checksum below `below`, and returns its Lsn. Once that record
    /// is durable the WAL may purge this group's records below `below`. None when nothing
    /// changes or the group cannot move its base now (re-learning, stopped, or the checksum
    /// below `below` is no longer held).
    pub fn set_log_base(&mut self, ctx: &mut Ctx<'_>, below: Instance) -> Option<Lsn> {
        let mut below = below.min(self.applied_next);
        // Purge holds for lagging peers: not past what one asked for lately.
        let hold = ctx.config.purge_hold_ticks;
        self.peer_needs
            .retain(|_, (_, at)| hold > 0 && ctx.now.0 < at.0.saturating_add(hold));
        self.base_held_by = None;
        if let Some((peer, need)) = self
            .peer_needs
            .iter()
            .map(|(peer, (need, _))| (*peer, *need))
            .min_by_key(|(_, need)| *need)
        {
            if need < below {
                if ctx.purge_holds_released {
                    // The storage is short of room: the budget wins over a lagging peer's
                    // comfort (counted only where a hold would have kept the base lower).
                    ctx.stats.purge_holds_released += 1;
                } else {
                    below = need;
                    self.base_held_by = Some((peer, need));
                }
            }
        }
        if below <= self.log_base || self.relearn.is_some() || self.stopped {
            return None;
        }
        let checksum = if below == self.applied_next {
            self.checksum
        } else {
            *self.checksums.get(&Instance(below.0 - 1))?
        };
        self.log_base = below;
        let payload = self.base_payload(below, checksum);
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.base_forgets_promise {
            return Some(ctx.append(Record {
                kind: RecordKind::Meta,
                group: self.id,
                instance: self.applied_next,
                promised: Ballot::ZERO,
                accepted: Ballot::ZERO,
                payload: Bytes::from(payload),
            }));
        }
        Some(self.append_meta(ctx, payload))
    }

    /// One past the highest instance this replica holds anything for.
    fn held_end(&self) -> Instance {
        let accepted = self.accepted.keys().next_back().map(|i| Instance(i.0 + 1));
        let chosen = self.chosen.keys().next_back().map(|i| Instance(i.0 + 1));
        let inflight = self.inflight.keys().next_back().map(|i| Instance(i.0 + 1));
        self.applied_next
            .max(accepted.unwrap_or_default())
            .max(chosen.unwrap_or_default())
            .max(inflight.unwrap_or_default())
    }

    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader_hint
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader { .. })
    }

    pub fn applied_next(&self) -> Instance {
        self.applied_next
    }

    pub fn lag(&self) -> u64 {
        self.chosen_heard.0.saturating_sub(self.applied_next.0)
    }

    pub fn is_relearning(&self) -> bool {
        self.relearn.is_some()
    }

    /// Appends a `Meta` record of this group (a re-learn or repair record) at its applied point.
    fn append_meta(&self, ctx: &mut Ctx<'_>, payload: Vec<u8>) -> Lsn {
        ctx.append(Record {
            kind: RecordKind::Meta,
            group: self.id,
            instance: self.applied_next,
            promised: self.promised,
            accepted: Ballot::ZERO,
            payload: Bytes::from(payload),
        })
    }

    /// The promised ballot.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// The negative space of this replica's state, in TigerBeetle's habit: what must never
    /// hold. Checked after every simulator step and, in debug builds, at every poll.
    pub fn invariants(&self) -> Result<(), String> {
        let g = self.id;
        let fail = |what: String| Err(format!("group {g}: {what}"));
        if let Some((i, (b, _))) = self.accepted.iter().find(|(_, (b, _))| *b > self.promised) {
            return fail(format!(
                "accepted ballot {b} at instance {} above the promise {}",
                i.0, self.promised
            ));
        }
        if let Some(i) = self.accepted.keys().find(|i| **i < self.applied_next) {
            return fail(format!(
                "an accepted value kept at instance {} below the applied point {}",
                i.0, self.applied_next.0
            ));
        }
        if self.chosen.contains_key(&self.applied_next) {
            return fail(format!(
                "instance {} is chosen but not applied",
                self.applied_next.0
            ));
        }
        // Every instance a leader has in flight is covered by a phase 1 whose promisers include
        // a quorum of the voters of that instance's configuration (the latest collection from
        // at or below it; docs/PROTOCOL.md#membership-change).
        if matches!(self.role, Role::Leader { .. }) {
            for instance in self.inflight.keys() {
                let config = self.config_at(*instance);
                let promised = self
                    .promisers
                    .iter()
                    .rev()
                    .find(|(first, _)| first <= instance)
                    .map_or(0, |(_, who)| {
                        config.voters.iter().filter(|v| who.contains(v)).count()
                    });
                if promised < membership::quorum_of(config) {
                    return fail(format!(
                        "instance {} in flight without a quorum of its configuration's voters ({:?}) promising this leadership's ballot ({promised} did)",
                        instance.0, config.voters
                    ));
                }
            }
        }
        match &self.role {
            Role::Leader { ballot, .. } => {
                if self.relearn.is_some() {
                    return fail("leading while re-learning".into());
                }
                if *ballot > self.promised {
                    return fail(format!(
                        "leading with ballot {ballot} above its own promise {}",
                        self.promised
                    ));
                }
                if let Some(i) = self
                    .inflight
                    .keys()
                    .find(|i| **i < self.applied_next || self.chosen.contains_key(i))
                {
                    return fail(format!(
                        "instance {} in flight though chosen or applied",
                        i.0
                    ));
                }
                if self
                    .inflight
                    .keys()
                    .next_back()
                    .is_some_and(|last| *last >= self.next_instance)
                {
                    return fail("an instance in flight at or beyond next_instance".into());
                }
                if self
                    .phase1_end
                    .is_some_and(|end| self.next_instance > end.max(self.applied_next))
                {
                    return fail("opened instances beyond what phase 1 covers".into());
                }
            }
            Role::Candidate(_) | Role::Follower => {
                if !self.inflight.is_empty() {
                    return fail("instances in flight while not leading".into());
                }
                if !self.reads.is_empty() || self.lease.is_some() {
                    return fail("reads waiting or a lease held while not leading".into());
                }
                if matches!(self.role, Role::Candidate(_)) && self.relearn.is_some() {
                    return fail("a candidate while re-learning".into());
                }
            }
        }
        if let Some(relearn) = &self.relearn {
            if relearn.target.is_none() && relearn.pooled {
                return fail("pooled without a target".into());
            }
        }
        Ok(())
    }

    /// Rebuilds the replica from its recovered records (in Lsn order); see
    /// docs/PROTOCOL.md#restart for the rules.
    pub fn restore(
        &mut self,
        ctx: &mut Ctx<'_>,
        records: &[&Record],
        damage: &[&Damage],
        state_lost: bool,
    ) {
        // The cluster's initial configuration, until a log-base record or a change says more.
        self.configs = vec![membership::ConfigEntry {
            from: Instance(0),
            members: Membership {
                voters: ctx.members.to_vec(),
                followers: ctx.followers.to_vec(),
            },
        }];
        if !records.is_empty() || state_lost {
            // It may have granted a master lease before it stopped: it promises and grants
            // nobody for a lease's length (docs/PROTOCOL.md#master-lease).
            self.grant_after_restart = true;
        }
        if !records.is_empty() {
            // A replica restarting with state listens first: its first election timer runs
            // two timeouts, so that a working leader (whose connections to it come back within
            // a reconnect back-off) reaches it before it stands.
            let first = ctx.election_deadline();
            self.election_deadline = Some(Tick(first.0 + ctx.config.election_timeout_ticks));
        }
        let mut marks: Vec<(Instance, Ballot, Bytes)> = Vec::new();
        let mut highest = None;
        // Damaged runs an earlier re-learn of this group repaired (and the Lsn its start
        // recovered to, which the pre-fix rule took as covering everything below it).
        let mut repaired: Vec<(Lsn, Lsn)> = Vec::new();
        #[cfg_attr(not(feature = "sim-bugs"), allow(unused_variables, unused_mut))]
        let mut repaired_below = Lsn::ZERO;
        // A re-learn that began and did not finish (Some(state lost)).
        let mut unfinished: Option<bool> = None;
        // The highest log base recorded, with the rolling checksum below it and the
        // configurations it carries.
        let mut base: Option<(Instance, u32, Option<Vec<membership::ConfigEntry>>)> = None;
        for record in records {
            assert_eq!(record.group, self.id);
            highest = highest.max(Some(record.instance));
            match record.kind {
                RecordKind::Promise => self.promised = self.promised.max(record.promised),
                RecordKind::Accept => {
                    self.promised = self.promised.max(record.promised).max(record.accepted);
                    let replace = self
                        .accepted
                        .get(&record.instance)
                        .is_none_or(|(ballot, _)| record.accepted >= *ballot);
                    if replace {
                        self.accepted
                            .insert(record.instance, (record.accepted, record.payload.clone()));
                    }
                }
                RecordKind::Chosen => {
                    marks.push((record.instance, record.accepted, record.payload.clone()))
                }
                RecordKind::Meta => {
                    if let Some((below, checksum, configs)) = log_base_full(&record.payload) {
                        self.promised = self.promised.max(record.promised);
                        if base.as_ref().is_none_or(|(b, _, _)| below > *b) {
                            base = Some((below, checksum, configs));
                        }
                    } else if let Some((lsn, runs)) = repair_runs(&record.payload) {
                        repaired_below = repaired_below.max(lsn);
                        repaired.extend(runs);
                        self.promised = self.promised.max(record.promised);
                        unfinished = None;
                    } else if let Some(lost) = relearn_lost(&record.payload) {
                        unfinished = Some(lost || unfinished == Some(true));
                    }
                }
            }
        }
        // Any unrepaired damage makes the group re-learn: the (group, instance) names that
        // recovery reads from a damaged record are hints, and a wrong one would let a group
        // vote on what it forgot (docs/PROTOCOL.md#restart).
        let lost = state_lost || unfinished == Some(true);
        // A damaged run is repaired only if an earlier re-learn found that very run: a record
        // intact then and damaged since is new damage (it may hold a vote this replica gave
        // after that re-learn's target), whatever its Lsn.
        let covered = |d: &&Damage| {
            #[cfg(feature = "sim-bugs")]
            if ctx.bugs.repair_covers_later_damage {
                return d.last_lsn < repaired_below; // the pre-fix rule
            }
            repaired
                .iter()
                .any(|(first, last)| *first <= d.first_lsn && d.last_lsn <= *last)
        };
        let mut damaged = lost || unfinished.is_some() || damage.iter().any(|d| !covered(d));
        let mut unresolved: BTreeSet<Instance> = BTreeSet::new();
        if let Some((below, checksum, configs)) = base {
            // Everything below the base is in the state machine's checkpoint; the log (what
            // the WAL did not purge yet) starts there.
            if let Some(configs) = configs {
                self.configs = configs;
            }
            self.log_base = below;
            self.applied_next = below;
            self.checksum = checksum;
            if below.0 > 0 {
                self.checksums.insert(Instance(below.0 - 1), checksum);
            }
            self.accepted = self.accepted.split_off(&below);
        }
        for (instance, ballot, payload) in marks {
            if instance < self.log_base {
                continue;
            }
            let value = if !payload.is_empty() {
                payload
            } else {
                match self.accepted.get(&instance) {
                    Some((accepted, value)) if *accepted == ballot => value.clone(),
                    _ => {
                        // The Accept record the mark names is gone (damaged): re-learn it,
                        // unless a later mark (a repair) carries the value.
                        unresolved.insert(instance);
                        continue;
                    }
                }
            };
            unresolved.remove(&instance);
            self.accepted.remove(&instance);
            self.chosen.insert(instance, value);
        }
        unresolved.retain(|i| !self.chosen.contains_key(i));
        damaged |= !unresolved.is_empty();
        self.max_seen = self.promised;
        self.apply_ready(ctx);
        let floor = Instance(highest.map_or(0, |i| i.0 + 1));
        if damaged {
            // Owed for this process's life: a configuration learned later that counts this
            // node as a voter makes it re-learn then (docs/PROTOCOL.md#membership-change).
            self.relearn_owed = Some((lost, floor));
        }
        if damaged && !self.votes(ctx.me) {
            // A follower never voted as far as this replica knows: it does not re-learn now;
            // catch-up fills whatever its log lacks (docs/PROTOCOL.md#follower-nodes). The
            // obligation is written down all the same (the damage may have taken the change
            // that made it a voter).
            ctx.stats.relearns_skipped_non_voter += 1;
            self.owed_pending = true;
            let mut payload = RELEARN_TAG.to_vec();
            payload.push(u8::from(lost));
            self.append_meta(ctx, payload);
        } else if damaged {
            self.start_relearn(ctx, lost, floor);
        }
    }

    /// Starts re-learning (docs/PROTOCOL.md#re-learning): no vote until the target is applied.
    pub(super) fn start_relearn(&mut self, ctx: &mut Ctx<'_>, lost: bool, floor: Instance) {
        self.owed_pending = false;
        ctx.stats.groups_relearning += 1;
        self.relearn_episodes += 1;
        self.relearn = Some(Relearn {
            target: None,
            floor,
            reports: BTreeMap::new(),
            promise_floor: Ballot::ZERO,
            asked_at: None,
            started_at: None,
            // Unique across restarts (the incarnation) and episodes; never 0.
            request: (ctx.incarnation << 32) | (self.relearn_episodes & 0xFFFF_FFFF),
            pooled: false,
            lost,
        });
        // The obligation goes to disk in the first write (docs/PROTOCOL.md#re-learning).
        let mut payload = RELEARN_TAG.to_vec();
        payload.push(u8::from(lost));
        self.append_meta(ctx, payload);
    }

    pub fn propose(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ProposalId,
        command: Bytes,
    ) -> Result<(), FailReason> {
        if self.stopped {
            return Err(FailReason::Stopped);
        }
        if value::encoded_len([&command]) > ctx.config.batch_bytes_max as usize {
            return Err(FailReason::TooLarge);
        }
        if ctx.storage_full {
            ctx.stats.proposals_refused_storage_full += 1;
            return Err(FailReason::Overloaded);
        }
        let arrived_leading = match self.role {
            Role::Leader { .. } => true,
            Role::Candidate(_) => false,
            Role::Follower => {
                return Err(FailReason::NotLeader {
                    leader_hint: self.leader_hint.filter(|n| *n != ctx.me),
                })
            }
        };
        if self.queue.len() >= ctx.config.proposal_queue_max as usize {
            return Err(FailReason::Overloaded);
        }
        self.queue.push_back(Queued {
            id,
            command,
            arrived_leading,
        });
        Ok(())
    }

    pub fn tick(&mut self, ctx: &mut Ctx<'_>) {
        if self.stopped {
            return;
        }
        let now = ctx.now;
        self.lease_first_tick(ctx);
        if self
            .catchup_deadline
            .is_some_and(|deadline| now >= deadline)
        {
            // No answer in time: whatever was asked for and not received is asked again
            // from the applied point (replies may have been lost).
            self.catchup_deadline = None;
            #[allow(unused_mut)]
            let mut go_back = true;
            #[cfg(feature = "sim-bugs")]
            if ctx.bugs.stream_no_go_back {
                go_back = false;
            }
            if let Some(stream) = &mut self.catchup_stream {
                if go_back {
                    stream.asked_end = self.applied_next;
                }
            }
        }
        self.install_tick(ctx);
        let voter = self.acts_as_voter(ctx);
        self.relearn_ask(ctx);
        let deadline = match self.election_deadline {
            Some(deadline) => deadline,
            None => {
                let deadline = ctx.election_deadline();
                self.election_deadline = Some(deadline);
                deadline
            }
        };
        let retransmit = ctx.config.retransmit_ticks;
        match &mut self.role {
            Role::Follower => {
                // A replica fetching a checkpoint, or being brought forward by a catch-up
                // stream, is far behind: it does not stand (it would lead from behind and
                // depose a leader that is serving it). A non-voting follower never stands.
                if now >= deadline
                    && voter
                    && self.relearn.is_none()
                    && self.install.is_none()
                    && !self.catching_up(now, ctx.config.election_timeout_ticks)
                {
                    self.start_prepare(ctx);
                }
            }
            Role::Candidate(candidate) => {
                if now.0 >= candidate.started_at.0 + ctx.config.election_timeout_ticks {
                    // No quorum in time: back off with seeded jitter, then try again.
                    self.step_down(ctx);
                } else if now.0 >= candidate.sent_at.0 + retransmit {
                    candidate.sent_at = now;
                    candidate.rounds += 1;
                    let voters = &membership::config_in(&self.configs, candidate.first).voters;
                    resend_prepare(ctx, self.id, candidate, voters);
                }
            }
            Role::Leader { ballot, .. } => {
                let ballot = *ballot;
                if ctx.config.check_quorum && !self.hears_quorum(ctx) {
                    // Check quorum: a leader cut off from a quorum cannot commit; it steps
                    // down so that its clients move on and its followers (no longer hearing
                    // it) may elect another at once.
                    ctx.stats.leader_stepdowns_no_quorum += 1;
                    self.step_down(ctx);
                    return;
                }
                if let Some(cont) = &mut self.continuation {
                    if now.0 >= cont.started_at.0 + ctx.config.election_timeout_ticks {
                        // The continuation found no quorum: this leadership cannot go on.
                        self.step_down(ctx);
                        return;
                    }
                    if now.0 >= cont.sent_at.0 + retransmit {
                        cont.sent_at = now;
                        cont.rounds += 1;
                        let voters = &membership::config_in(&self.configs, cont.first).voters;
                        resend_prepare(ctx, self.id, cont, voters);
                    }
                }
                let chosen_through = self.applied_next;
                let configs = &self.configs;
                for (instance, flight) in self.inflight.iter_mut() {
                    let Some(sent_at) = flight.sent_at else {
                        continue;
                    };
                    if now.0 < sent_at.0 + retransmit {
                        continue;
                    }
                    flight.sent_at = Some(now);
                    flight.transmissions += 1;
                    let msg = Message::Accept {
                        ballot,
                        instance: *instance,
                        value: flight.value.clone(),
                        chosen_through,
                    };
                    let voters = &membership::config_in(configs, *instance).voters;
                    for &to in voters {
                        if !flight.accepted_by.contains(&to) && to != ctx.me {
                            ctx.stats.accepts_sent += 1;
                            ctx.stats.messages_sent += 1;
                            ctx.out.sends.push(super::outputs::SendNow {
                                to,
                                group: self.id,
                                msg: msg.clone(),
                            });
                        }
                    }
                }
                if now.0 >= self.last_broadcast.0 + ctx.config.heartbeat_ticks {
                    self.commit_dirty = true;
                }
            }
        }
    }

    /// End of a round: a leader batches its queue into instances and sends what is new.
    pub fn flush(&mut self, ctx: &mut Ctx<'_>) {
        let Role::Leader { ballot, .. } = self.role else {
            return;
        };
        if self.stopped {
            return;
        }
        self.maybe_continue_phase1(ctx, ballot);
        // A leader opens instance i only while i < applied_next + pipeline_depth (and below
        // what its phase 1 covers): an Accept for i leaves only after instance i - depth is
        // chosen, which bounds what any acceptor may have voted on (the re-learn target's
        // premise, docs/PROTOCOL.md#re-learning).
        let depth = u64::from(ctx.config.pipeline_depth);
        let phase1_end = self.phase1_end;
        #[allow(unused_mut)]
        let mut open_limit = Instance(self.applied_next.0 + depth);
        #[allow(unused_mut)]
        let mut old_window = false;
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.relearn_target_too_low {
            // Pre-fix window: up to depth instances in flight, up to applied + 512.
            open_limit = Instance(self.applied_next.0 + ACCEPT_WINDOW_INSTANCES / 2);
            old_window = true;
        }
        let may_open = |g: &Group| {
            g.next_instance < open_limit
                && phase1_end.is_none_or(|end| g.next_instance < end)
                && (!old_window || g.inflight.len() < ctx.config.pipeline_depth as usize)
        };
        if self.config_queued.is_some() && may_open(self) {
            self.open_config(ctx);
        }
        while !self.queue.is_empty() && may_open(self) {
            self.open_instance(ctx);
        }
        while self.queue.is_empty() && self.next_instance < self.fill_until && may_open(self) {
            // A re-learning peer waits for these to be chosen (an idle group would leave it
            // without a vote forever).
            self.open_noop(ctx);
        }
        let mut sent_accept = false;
        let chosen_through = self.applied_next;
        let fresh: Vec<Instance> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.sent_at.is_none())
            .map(|(i, _)| *i)
            .collect();
        for instance in fresh {
            let flight = self.inflight.get_mut(&instance).expect("in flight");
            flight.sent_at = Some(ctx.now);
            flight.transmissions += 1;
            let msg = Message::Accept {
                ballot,
                instance,
                value: flight.value.clone(),
                chosen_through,
            };
            ctx.stats.accepts_sent += ctx.peer_count() as u64;
            // The leader's own acceptance goes through its acceptor (loopback) and is written
            // in the same round: its write overlaps the round trip.
            ctx.broadcast(self.id, &msg);
            sent_accept = true;
        }
        // Lease rounds (a Commit with a round number) and the reads they confirm.
        self.lease_flush(ctx, ballot);
        if sent_accept {
            self.last_broadcast = ctx.now;
            self.commit_dirty = false;
        } else if self.commit_dirty {
            self.commit_dirty = false;
            self.last_broadcast = ctx.now;
            let checksum = self.checksum_before(self.applied_next);
            ctx.broadcast_peers(
                self.id,
                &Message::Commit {
                    ballot,
                    chosen_through: self.applied_next,
                    checksum,
                    lease: 0,
                },
            );
        }
    }

    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, from: NodeId, msg: Message) {
        if self.stopped {
            return;
        }
        if from != ctx.me {
            self.peer_heard_at.insert(from, ctx.now);
        }
        #[allow(unused_mut)]
        let mut votes_checked = true;
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.follower_votes {
            votes_checked = false; // followers act as acceptors and their votes count
        }
        if votes_checked {
            let vote = matches!(
                msg,
                Message::Promise { .. }
                    | Message::Accepted { .. }
                    | Message::Reject { .. }
                    | Message::CommitAck { .. }
            );
            if vote && !self.may_vote(from) {
                // Only voters make quorums (docs/PROTOCOL.md#follower-nodes).
                ctx.stats.votes_from_non_voters += 1;
                return;
            }
            if !self.acts_as_voter(ctx) {
                match msg {
                    Message::Prepare { first, .. } => {
                        ctx.stats.prepares_ignored_non_voter += 1;
                        if first < self.applied_next && from != ctx.me {
                            // The candidate is behind what this node applied (it may not
                            // know the membership that no longer counts this node): no vote,
                            // but the values it lacks, so that it learns what governs now.
                            self.on_catchup_request(
                                ctx,
                                from,
                                first,
                                0,
                                Instance(0),
                                Window::one_reply(),
                            );
                        } else if first > self.applied_next && from != ctx.me {
                            // The candidate is ahead: a membership this node has not applied
                            // yet may count it as a voter. It catches up to find out.
                            self.request_catchup(ctx, from, first);
                        }
                        return;
                    }
                    Message::Accept {
                        ballot,
                        instance,
                        value,
                        chosen_through,
                    } => {
                        self.on_accept_non_voter(
                            ctx,
                            from,
                            ballot,
                            instance,
                            value,
                            chosen_through,
                        );
                        return;
                    }
                    _ => {}
                }
            }
        }
        match msg {
            Message::Prepare { ballot, first } => self.on_prepare(ctx, from, ballot, first),
            Message::Promise {
                ballot,
                first,
                applied_next,
                truncated,
                entries,
            } => self.on_promise(
                ctx,
                from,
                ballot,
                first,
                applied_next,
                PromiseInfo { entries, truncated },
            ),
            Message::Accept {
                ballot,
                instance,
                value,
                chosen_through,
            } => self.on_accept(ctx, from, ballot, instance, value, chosen_through),
            Message::Accepted {
                ballot,
                instance,
                value_crc,
            } => self.on_accepted(ctx, from, ballot, instance, value_crc),
            Message::Reject { rejected, promised } => self.on_reject(ctx, from, rejected, promised),
            Message::Commit {
                ballot,
                chosen_through,
                checksum,
                lease,
            } => {
                self.observe(ctx, ballot);
                if ballot >= self.promised {
                    self.leader_contact(ctx, ballot);
                    if !self.acts_as_voter(ctx) {
                        // A follower node neither grants leases nor answers heartbeats.
                    } else if lease > 0 && from != ctx.me {
                        // A lease round: always answered (a read may wait on it) — except by
                        // a replica that re-learns: it may have forgotten a higher promise,
                        // and its answer (and grant) says it gave none.
                        if self.relearn.is_none() {
                            self.commit_acked_at = ctx.now;
                            self.on_lease_round(ctx, from, ballot, lease);
                        }
                    } else if ctx.config.check_quorum
                        && from != ctx.me
                        && ctx.now.0 >= self.commit_acked_at.0 + ctx.config.heartbeat_ticks
                    {
                        // At most one ack per heartbeat interval: check quorum needs one per
                        // election timeout, and under load Accepted replies already count.
                        self.commit_acked_at = ctx.now;
                        ctx.send(
                            self.id,
                            from,
                            Message::CommitAck {
                                ballot,
                                lease: 0,
                                granted: false,
                            },
                        );
                    }
                }
                self.on_commit(ctx, from, ballot, chosen_through);
                if chosen_through.0 > 0 {
                    self.check(ctx, Instance(chosen_through.0 - 1), checksum, from);
                }
            }
            Message::CatchupRequest {
                from: first,
                request,
                until,
                entries_max,
                bytes_max,
            } => {
                let window = Window {
                    entries: entries_max as usize,
                    bytes: bytes_max as usize,
                };
                self.on_catchup_request(ctx, from, first, request, until, window)
            }
            Message::CatchupReply {
                request,
                applied_next,
                high,
                log_base,
                relearning,
                state_lost,
                promised,
                entries,
                served_end,
                checksum,
            } => {
                let report = Report {
                    log_base,
                    applied_next,
                    high,
                    promised,
                    relearning,
                    state_lost,
                };
                self.on_catchup_reply(ctx, from, request, report, entries, served_end, checksum)
            }
            Message::CheckpointRequest {
                instance,
                offset,
                need,
            } => self.on_checkpoint_request(ctx, from, instance, offset, need),
            Message::CheckpointChunk {
                info,
                offset,
                data,
                configs,
            } => self.on_checkpoint_chunk(ctx, from, info, offset, data, configs),
            // Heard (counted above); a lease round's answer counts toward the lease and reads.
            Message::CommitAck {
                ballot,
                lease,
                granted,
            } => self.on_commit_ack(from, ballot, lease, granted),
        }
    }
}

fn flight(value: Bytes, proposals: Vec<ProposalId>, prepare_rtts: u32) -> InFlight {
    InFlight {
        value_crc: crc32fast::hash(&value),
        identity: value::identity(&value).unwrap_or_default(),
        value,
        accepted_by: BTreeSet::new(),
        proposals,
        prepare_rtts,
        transmissions: 0,
        sent_at: None,
    }
}

/// Sends (or re-sends) a candidate's Prepare to every voter of `voters` (the configuration
/// at its first instance) that has not promised, each held until the candidate's own promise
/// record is durable.
fn resend_prepare(ctx: &mut Ctx<'_>, group: GroupId, candidate: &Candidate, voters: &[NodeId]) {
    let msg = Message::Prepare {
        ballot: candidate.ballot,
        first: candidate.first,
    };
    let missing: Vec<NodeId> = voters
        .iter()
        .copied()
        .filter(|n| !candidate.promises.contains_key(n))
        .collect();
    for to in missing {
        if candidate.promise_lsn == Lsn::ZERO {
            ctx.send(group, to, msg.clone());
        } else {
            ctx.send_after_durable(candidate.promise_lsn, group, to, msg.clone());
        }
    }
}

/// Sends one `CatchupRequest` (counted): from `from`, with a re-learn `request` id (0 for plain
/// catch-up) and the instance a re-learning replica needs chosen (`until`, 0 for none).
fn ask_catchup(
    ctx: &mut Ctx<'_>,
    group: GroupId,
    peer: NodeId,
    from: Instance,
    request: u64,
    until: Instance,
    window: Window,
) {
    ctx.stats.catchup_requests_sent += 1;
    ctx.send(
        group,
        peer,
        Message::CatchupRequest {
            from,
            request,
            until,
            entries_max: u32::try_from(window.entries).unwrap_or(u32::MAX),
            bytes_max: u32::try_from(window.bytes).unwrap_or(u32::MAX),
        },
    );
}

/// What one catch-up request may be answered with at most (over all its replies).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Values.
    pub entries: usize,
    /// Value bytes.
    pub bytes: usize,
}

impl Window {
    /// The window of a request that needs only a report and one reply's worth of values
    /// (re-learning).
    fn one_reply() -> Window {
        Window {
            entries: CATCHUP_BATCH_MAX,
            bytes: CATCHUP_BYTES_MAX,
        }
    }
}

/// Whether a re-learn record says the state was lost (None if the payload is not one).
fn relearn_lost(payload: &[u8]) -> Option<bool> {
    match payload.strip_prefix(RELEARN_TAG.as_slice())? {
        [flag] => Some(*flag == 1),
        _ => None,
    }
}

/// The base and rolling checksum a log-base record names (None if it is not one): for
/// checkers and tools that read a WAL.
pub fn log_base_of(record: &Record) -> Option<(Instance, u32)> {
    if record.kind != RecordKind::Meta {
        return None;
    }
    log_base(&record.payload)
}

/// The base and checksum a log-base record names (None if the payload is not one).
fn log_base(payload: &[u8]) -> Option<(Instance, u32)> {
    log_base_full(payload).map(|(below, checksum, _)| (below, checksum))
}

/// The base, checksum and (second format) configuration history a log-base record names.
fn log_base_full(payload: &[u8]) -> Option<(Instance, u32, Option<Vec<membership::ConfigEntry>>)> {
    let (rest, with_configs) = match payload.strip_prefix(BASE_TAG.as_slice()) {
        Some(rest) => (rest, false),
        None => (payload.strip_prefix(BASE_TAG_CONFIGS.as_slice())?, true),
    };
    if rest.len() < 12 || (!with_configs && rest.len() != 12) {
        return None;
    }
    let below = u64::from_le_bytes(rest[..8].try_into().ok()?);
    let checksum = u32::from_le_bytes(rest[8..12].try_into().ok()?);
    let configs = if with_configs {
        Some(membership::decode_history(&rest[12..])?)
    } else {
        None
    };
    Some((Instance(below), checksum, configs))
}

/// What a repair record says: the Lsn its start recovered to and the damaged runs it
/// repaired (None if the payload is not a repair record; a first-format record repairs no
/// run).
fn repair_runs(payload: &[u8]) -> Option<(Lsn, Vec<(Lsn, Lsn)>)> {
    if let Some(rest) = payload.strip_prefix(REPAIR_TAG_V1.as_slice()) {
        let bytes: [u8; 8] = rest.try_into().ok()?;
        return Some((Lsn(u64::from_le_bytes(bytes)), Vec::new()));
    }
    let rest = payload.strip_prefix(REPAIR_TAG.as_slice())?;
    let lsn = Lsn(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?));
    let count = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
    let runs = rest.get(12..)?;
    if runs.len() != count.checked_mul(16)? {
        return None;
    }
    let runs = runs
        .chunks_exact(16)
        .map(|run| {
            let first = u64::from_le_bytes(run[..8].try_into().expect("8 bytes"));
            let last = u64::from_le_bytes(run[8..].try_into().expect("8 bytes"));
            (Lsn(first), Lsn(last))
        })
        .collect();
    Some((lsn, runs))
}

/// A repair record's payload: `restored` and the damaged `runs` (none past `REPAIR_RUNS_MAX`).
pub(super) fn repair_payload(restored: Lsn, runs: &[(Lsn, Lsn)]) -> Vec<u8> {
    let runs = if runs.len() > REPAIR_RUNS_MAX {
        &[][..]
    } else {
        runs
    };
    let mut payload = REPAIR_TAG.to_vec();
    payload.extend_from_slice(&restored.0.to_le_bytes());
    payload.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    for (first, last) in runs {
        payload.extend_from_slice(&first.0.to_le_bytes());
        payload.extend_from_slice(&last.0.to_le_bytes());
    }
    payload
}
