//! One Paxos group's replica: proposer, acceptor and learner (docs/PROTOCOL.md).
//!
//! Owns: the group's promise, its accepted values, its chosen values and applied point, the
//! rolling checksum, the proposer's role and pipeline, and the proposal queue. Must never do
//! I/O or read a clock: it speaks only through the table's `Ctx` (append, send,
//! send-after-durable, outputs) and learns time from `ctx.now`.
use super::message::{self, Message, PromiseEntry};
use super::table::{
    Chosen, Ctx, FailReason, GroupError, GroupStatus, ProposalResult, RelearnStatus,
};
use super::value::{self, Identity};
use super::wal_types::{Ballot, Damage, GroupId, Instance, Lsn, Record, RecordKind};
use super::{NodeId, ProposalId, Tick};
use super::{ACCEPT_WINDOW_INSTANCES, CATCHUP_BATCH_MAX, PROMISE_SPAN_INSTANCES};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The payload tag of a repair record (a `Meta` record a group writes when it finished
/// re-learning: damage below the Lsn that follows the tag is repaired for this group).
const REPAIR_TAG: &[u8; 4] = b"RPR1";
/// The payload tag of a re-learn record (a `Meta` record a group writes when it starts
/// re-learning, in its first write: the obligation survives a crash even after the WAL has
/// zeroed the damaged tail that caused it). One byte follows: 1 if the state was lost.
const RELEARN_TAG: &[u8; 4] = b"RLN1";

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

/// A peer's answer to a re-learn request.
#[derive(Debug, Clone, Copy)]
struct Report {
    applied_next: Instance,
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
    // Learner.
    chosen: BTreeMap<Instance, Bytes>,
    applied_next: Instance,
    checksum: u32,
    checksums: BTreeMap<Instance, u32>,
    pending_checks: BTreeMap<Instance, (u32, NodeId)>,
    catchup_deadline: Option<Tick>,
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
    /// Phase 1 attempts since a leader was last seen.
    elections_without_leader: u64,
    /// Members whose Promise the last candidacy did not get.
    missing_promises: Vec<NodeId>,
}

impl Group {
    pub fn new(id: GroupId) -> Group {
        Group {
            id,
            promised: Ballot::ZERO,
            accepted: BTreeMap::new(),
            chosen: BTreeMap::new(),
            applied_next: Instance(0),
            checksum: 0,
            checksums: BTreeMap::new(),
            pending_checks: BTreeMap::new(),
            catchup_deadline: None,
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
            elections_without_leader: 0,
            missing_promises: Vec::new(),
        }
    }

    /// What this group is doing (for stats and the stuck-state log line).
    pub fn status(&self, me: NodeId, members: &[NodeId], needed: usize) -> GroupStatus {
        let role = if self.stopped {
            "stopped"
        } else {
            match self.role {
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
        }
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

    pub fn is_relearning(&self) -> bool {
        self.relearn.is_some()
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
        let mut marks: Vec<(Instance, Ballot, Bytes)> = Vec::new();
        let mut highest = None;
        // Damage below this Lsn was repaired by an earlier re-learn of this group.
        let mut repaired_below = Lsn::ZERO;
        // A re-learn that began and did not finish (Some(state lost)).
        let mut unfinished: Option<bool> = None;
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
                    if let Some(lsn) = repair_lsn(&record.payload) {
                        repaired_below = repaired_below.max(lsn);
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
        let mut damaged =
            lost || unfinished.is_some() || damage.iter().any(|d| d.last_lsn >= repaired_below);
        let mut unresolved: BTreeSet<Instance> = BTreeSet::new();
        for (instance, ballot, payload) in marks {
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
        if damaged {
            ctx.stats.groups_relearning += 1;
            self.relearn_episodes += 1;
            self.relearn = Some(Relearn {
                target: None,
                floor: Instance(highest.map_or(0, |i| i.0 + 1)),
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
            ctx.append(Record {
                kind: RecordKind::Meta,
                group: self.id,
                instance: self.applied_next,
                promised: self.promised,
                accepted: Ballot::ZERO,
                payload: Bytes::copy_from_slice(&[
                    RELEARN_TAG[0],
                    RELEARN_TAG[1],
                    RELEARN_TAG[2],
                    RELEARN_TAG[3],
                    u8::from(lost),
                ]),
            });
        }
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
        if self
            .catchup_deadline
            .is_some_and(|deadline| now >= deadline)
        {
            self.catchup_deadline = None;
        }
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
                if now >= deadline && self.relearn.is_none() {
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
                    resend_prepare(ctx, self.id, candidate);
                }
            }
            Role::Leader { ballot, .. } => {
                let ballot = *ballot;
                if let Some(cont) = &mut self.continuation {
                    if now.0 >= cont.started_at.0 + ctx.config.election_timeout_ticks {
                        // The continuation found no quorum: this leadership cannot go on.
                        self.step_down(ctx);
                        return;
                    }
                    if now.0 >= cont.sent_at.0 + retransmit {
                        cont.sent_at = now;
                        cont.rounds += 1;
                        resend_prepare(ctx, self.id, cont);
                    }
                }
                let chosen_through = self.applied_next;
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
                    for &to in ctx.members {
                        if !flight.accepted_by.contains(&to) && to != ctx.me {
                            ctx.stats.accepts_sent += 1;
                            ctx.stats.messages_sent += 1;
                            ctx.out.sends.push(super::table::SendNow {
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
            ctx.stats.accepts_sent += ctx.members.len() as u64 - 1;
            // The leader's own acceptance goes through its acceptor (loopback) and is written
            // in the same round: its write overlaps the round trip.
            ctx.broadcast(self.id, &msg);
            sent_accept = true;
        }
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
                },
            );
        }
    }

    fn open_instance(&mut self, ctx: &mut Ctx<'_>) {
        let limit_bytes = ctx.config.batch_bytes_max as usize;
        let limit_commands = ctx.config.batch_commands_max as usize;
        let mut taken: Vec<Queued> = Vec::new();
        let mut bytes = value::VALUE_HEADER_BYTES;
        while let Some(next) = self.queue.front() {
            let grown = bytes + 4 + next.command.len();
            if taken.len() >= limit_commands || grown > limit_bytes {
                break;
            }
            bytes = grown;
            taken.push(self.queue.pop_front().expect("front exists"));
        }
        assert!(!taken.is_empty(), "a queued command always fits a value");
        #[allow(unused_mut)]
        let mut identity = Identity {
            node: ctx.me.0,
            incarnation: ctx.incarnation,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.commit_by_bytes {
            identity = Identity::default(); // pre-fix values carried no identity
        }
        let value = value::encode_with(identity, taken.iter().map(|q| &q.command));
        assert_eq!(value.len(), bytes);
        let prepare_rtts = match self.role {
            Role::Leader { prepare_rounds, .. } if !taken.iter().all(|q| q.arrived_leading) => {
                prepare_rounds
            }
            _ => 0,
        };
        self.insert_flight(value, taken.iter().map(|q| q.id).collect(), prepare_rtts);
    }

    /// Opens a no-op instance (no proposal waits on it).
    fn open_noop(&mut self, ctx: &mut Ctx<'_>) {
        ctx.stats.relearn_fill_instances += 1;
        self.insert_flight(value::noop(), Vec::new(), 0);
    }

    fn insert_flight(&mut self, value: Bytes, proposals: Vec<ProposalId>, prepare_rtts: u32) {
        let instance = self.next_instance;
        self.next_instance = Instance(instance.0 + 1);
        let previous = self
            .inflight
            .insert(instance, flight(value, proposals, prepare_rtts));
        assert!(previous.is_none(), "instance opened twice");
    }

    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, from: NodeId, msg: Message) {
        if self.stopped {
            return;
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
            } => {
                self.observe(ctx, ballot);
                if ballot >= self.promised {
                    self.leader_contact(ctx, ballot);
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
            } => self.on_catchup_request(ctx, from, first, request, until),
            Message::CatchupReply {
                request,
                applied_next,
                high,
                relearning,
                state_lost,
                promised,
                entries,
                checksum,
            } => {
                let report = Report {
                    applied_next,
                    high,
                    promised,
                    relearning,
                    state_lost,
                };
                self.on_catchup_reply(ctx, from, request, report, entries, checksum)
            }
        }
    }

    /// Any higher ballot seen ends this node's candidacy or leadership.
    fn observe(&mut self, ctx: &mut Ctx<'_>, ballot: Ballot) {
        self.max_seen = self.max_seen.max(ballot);
        let mine = match &self.role {
            Role::Follower => return,
            Role::Candidate(candidate) => candidate.ballot,
            Role::Leader { ballot, .. } => *ballot,
        };
        if ballot > mine {
            self.step_down(ctx);
        }
    }

    fn leader_contact(&mut self, ctx: &mut Ctx<'_>, ballot: Ballot) {
        if ballot.node != ctx.me.0 {
            self.leader_hint = Some(NodeId(ballot.node));
            self.election_deadline = Some(ctx.election_deadline());
            self.elections_without_leader = 0;
        }
    }

    /// Refuses a Prepare or Accept below the promise; the reply carries the higher ballot.
    fn reject(&self, ctx: &mut Ctx<'_>, from: NodeId, ballot: Ballot) {
        ctx.stats.rejections_sent += 1;
        ctx.send(
            self.id,
            from,
            Message::Reject {
                rejected: ballot,
                promised: self.promised,
            },
        );
    }

    fn on_prepare(&mut self, ctx: &mut Ctx<'_>, from: NodeId, ballot: Ballot, first: Instance) {
        self.observe(ctx, ballot);
        if self.relearn.is_some() {
            return; // Paxos Made Live: no vote until re-learned.
        }
        if ballot < self.promised {
            self.reject(ctx, from, ballot);
            return;
        }
        let lsn = if ballot > self.promised {
            self.promised = ballot;
            self.persist_promise(ctx, first)
        } else {
            ctx.last_lsn() // a repeated Prepare: the promise is already on its way to disk
        };
        if from != ctx.me {
            self.election_deadline = Some(ctx.election_deadline());
        }
        let (entries, truncated) = self.promise_entries(ctx, first);
        ctx.stats.promises_sent += u64::from(from != ctx.me);
        ctx.stats.promises_truncated += u64::from(truncated);
        ctx.send_after_durable(
            lsn,
            self.id,
            from,
            Message::Promise {
                ballot,
                first,
                applied_next: self.applied_next,
                truncated,
                entries,
            },
        );
    }

    fn persist_promise(&mut self, ctx: &mut Ctx<'_>, first: Instance) -> Lsn {
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.forget_promise {
            return ctx.last_lsn();
        }
        ctx.append(Record {
            kind: RecordKind::Promise,
            group: self.id,
            instance: first,
            promised: self.promised,
            accepted: Ballot::ZERO,
            payload: Bytes::new(),
        })
    }

    /// What this acceptor holds from `first` on, for a Promise, in instance order, within the
    /// message byte bound and `PROMISE_SPAN_INSTANCES`; `truncated` when more is held beyond
    /// the last entry reported (the leader then continues phase 1 from there).
    fn promise_entries(&self, ctx: &Ctx<'_>, first: Instance) -> (Vec<PromiseEntry>, bool) {
        let end = Instance(first.0.saturating_add(PROMISE_SPAN_INSTANCES));
        let mut truncated = self.chosen.range(end..).next().is_some()
            || self.accepted.range(end..).next().is_some();
        let mut all: Vec<PromiseEntry> = self
            .chosen
            .range(first..end)
            .map(|(i, v)| PromiseEntry {
                instance: *i,
                ballot: Ballot::ZERO,
                chosen: true,
                value: v.clone(),
            })
            .chain(
                self.accepted
                    .range(first..end)
                    .map(|(i, (b, v))| PromiseEntry {
                        instance: *i,
                        ballot: *b,
                        chosen: false,
                        value: v.clone(),
                    }),
            )
            .collect();
        all.sort_by_key(|e| e.instance);
        #[allow(unused_mut)]
        let mut budget = ctx.config.message_bytes_max as usize;
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.unbounded_promise {
            budget = usize::MAX;
        }
        let mut bytes = message::PROMISE_HEADER_BYTES;
        let mut kept = 0;
        for entry in &all {
            let grown = bytes + message::promise_entry_bytes(entry.value.len());
            // The first entry always fits (values are at most batch_bytes_max, and the
            // config keeps MESSAGE_OVERHEAD_BYTES of room above it).
            if grown > budget && kept > 0 {
                truncated = true;
                break;
            }
            bytes = grown;
            kept += 1;
        }
        all.truncate(kept);
        (all, truncated)
    }

    fn on_promise(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        first: Instance,
        applied_next: Instance,
        info: PromiseInfo,
    ) {
        let quorum = ctx.quorum();
        // A candidate's phase 1, or a leader's continuation of it: the same collection.
        let (collecting, continuing) = match &mut self.role {
            Role::Candidate(candidate) if candidate.ballot == ballot => (candidate, false),
            Role::Leader { ballot: mine, .. } if *mine == ballot => match &mut self.continuation {
                Some(cont) => (cont, true),
                None => return,
            },
            _ => return,
        };
        if collecting.first != first {
            return;
        }
        if applied_next.0 >= collecting.first.0 + ACCEPT_WINDOW_INSTANCES {
            // This node is too far behind to lead: catch up first, then try again.
            self.step_down(ctx);
            self.request_catchup(ctx, from);
            return;
        }
        collecting.promises.insert(from, info);
        if collecting.promises.len() < quorum {
            return;
        }
        if continuing {
            let cont = self.continuation.take().expect("collecting a continuation");
            self.recover_window(ctx, cont.first, cont.promises);
        } else {
            self.become_leader(ctx);
        }
    }

    /// Phase 1 succeeded: recover every instance of the open window (docs/PROTOCOL.md#leader-change).
    fn become_leader(&mut self, ctx: &mut Ctx<'_>) {
        let Role::Candidate(candidate) = std::mem::replace(&mut self.role, Role::Follower) else {
            unreachable!("only a candidate becomes leader");
        };
        self.role = Role::Leader {
            ballot: candidate.ballot,
            prepare_rounds: candidate.rounds,
        };
        self.leader_hint = Some(ctx.me);
        self.elections_without_leader = 0;
        self.missing_promises.clear();
        ctx.stats.leaderships_won += 1;
        self.recover_window(ctx, candidate.first, candidate.promises);
        self.commit_dirty = true;
    }

    /// Re-proposes what a quorum of promises from `first` reports (the highest-ballot value
    /// per instance, a no-op in a hole), up to where every cut Promise's report ends.
    fn recover_window(
        &mut self,
        ctx: &mut Ctx<'_>,
        first: Instance,
        promises: BTreeMap<NodeId, PromiseInfo>,
    ) {
        // A cut Promise reports `first ..= its last entry`: beyond that the leader knows
        // nothing of that acceptor yet.
        let known_end: Option<Instance> = promises
            .values()
            .filter(|p| p.truncated)
            .map(|p| {
                p.entries
                    .last()
                    .map_or(Instance(first.0 + 1), |e| Instance(e.instance.0 + 1))
            })
            .min();
        let mut chosen: BTreeMap<Instance, Bytes> = BTreeMap::new();
        let mut best: BTreeMap<Instance, (Ballot, Bytes)> = BTreeMap::new();
        for info in promises.into_values() {
            for entry in info.entries {
                if known_end.is_some_and(|end| entry.instance >= end) {
                    continue;
                }
                if entry.chosen {
                    chosen.insert(entry.instance, entry.value);
                } else if best
                    .get(&entry.instance)
                    .is_none_or(|(b, _)| entry.ballot > *b)
                {
                    best.insert(entry.instance, (entry.ballot, entry.value));
                }
            }
        }
        for (instance, value) in &chosen {
            self.learn(ctx, *instance, value.clone(), ctx.me);
        }
        if !self.is_leader() {
            return; // learning a conflicting value ended this leadership
        }
        let highest = chosen
            .keys()
            .chain(best.keys())
            .max()
            .map_or(first, |i| Instance(i.0 + 1));
        let start = first.max(self.applied_next);
        for index in start.0..highest.0 {
            let instance = Instance(index);
            if self.chosen.contains_key(&instance) || self.inflight.contains_key(&instance) {
                continue;
            }
            // The highest-ballot accepted value must be proposed again; a hole gets a no-op.
            let value = best
                .remove(&instance)
                .map_or_else(value::noop, |(_, value)| value);
            self.inflight.insert(instance, flight(value, Vec::new(), 0));
        }
        self.next_instance = self.next_instance.max(highest).max(self.applied_next);
        self.phase1_end = known_end;
    }

    /// A leader whose phase 1 was cut continues it (same ballot) once everything below the
    /// cut is chosen: the acceptors report what they hold from there.
    fn maybe_continue_phase1(&mut self, ctx: &mut Ctx<'_>, ballot: Ballot) {
        let Some(end) = self.phase1_end else {
            return;
        };
        if self.continuation.is_some() || self.applied_next < end {
            return;
        }
        ctx.stats.phase1_continuations += 1;
        let cont = Candidate {
            ballot,
            first: end,
            promises: BTreeMap::new(),
            started_at: ctx.now,
            sent_at: ctx.now,
            promise_lsn: Lsn::ZERO, // the promise is durable since phase 1 won
            rounds: 1,
        };
        ctx.broadcast(self.id, &Message::Prepare { ballot, first: end });
        self.continuation = Some(cont);
    }

    fn on_accept(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        instance: Instance,
        value: Bytes,
        chosen_through: Instance,
    ) {
        self.observe(ctx, ballot);
        if self.relearn.is_some() {
            self.on_commit(ctx, from, ballot, chosen_through);
            return;
        }
        if ballot < self.promised {
            self.reject(ctx, from, ballot);
            return;
        }
        let raised = ballot > self.promised;
        self.promised = ballot;
        self.leader_contact(ctx, ballot);
        let votes = instance >= self.applied_next
            && !self.chosen.contains_key(&instance)
            && instance.0 < self.applied_next.0 + ACCEPT_WINDOW_INSTANCES;
        if raised && !votes {
            // The higher promise must be durable even without an Accept record to carry it:
            // a repeated Prepare with this ballot is answered from it.
            self.persist_promise(ctx, self.applied_next);
        }
        if instance < self.applied_next && !self.chosen.contains_key(&instance) {
            // Applied long ago and pruned: nothing to vote on, nothing to report.
        } else if let Some(chosen) = self.chosen_value(instance) {
            // Already chosen here: tell the leader the value instead of voting again.
            let checksum = 0;
            ctx.send(
                self.id,
                from,
                Message::CatchupReply {
                    request: 0,
                    applied_next: self.applied_next,
                    high: self.held_end(),
                    relearning: false,
                    state_lost: false,
                    promised: self.promised,
                    entries: vec![(instance, chosen)],
                    checksum,
                },
            );
        } else if votes {
            let value_crc = crc32fast::hash(&value);
            self.accepted.insert(instance, (ballot, value.clone()));
            let lsn = ctx.append(Record {
                kind: RecordKind::Accept,
                group: self.id,
                instance,
                promised: self.promised,
                accepted: ballot,
                payload: value,
            });
            ctx.stats.accepted_sent += u64::from(from != ctx.me);
            ctx.send_after_durable(
                lsn,
                self.id,
                from,
                Message::Accepted {
                    ballot,
                    instance,
                    value_crc,
                },
            );
        }
        self.on_commit(ctx, from, ballot, chosen_through);
    }

    fn chosen_value(&self, instance: Instance) -> Option<Bytes> {
        self.chosen.get(&instance).cloned()
    }

    /// Every instance below `chosen_through` is chosen; what this node accepted with the same
    /// ballot is that value (one ballot proposes one value per instance).
    fn on_commit(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        chosen_through: Instance,
    ) {
        let end = chosen_through
            .0
            .min(self.applied_next.0 + ACCEPT_WINDOW_INSTANCES);
        for index in self.applied_next.0..end {
            let instance = Instance(index);
            if self.chosen.contains_key(&instance) {
                continue;
            }
            match self.accepted.get(&instance) {
                Some((accepted, value)) if *accepted == ballot => {
                    let value = value.clone();
                    self.learn(ctx, instance, value, from);
                }
                _ => {}
            }
        }
        if self.applied_next < chosen_through && from != ctx.me {
            self.request_catchup(ctx, from);
        }
    }

    fn on_accepted(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        instance: Instance,
        value_crc: u32,
    ) {
        let Role::Leader { ballot: mine, .. } = self.role else {
            return;
        };
        if ballot != mine {
            return;
        }
        let Some(flight) = self.inflight.get_mut(&instance) else {
            return;
        };
        #[allow(unused_mut)]
        let mut names_value = value_crc == flight.value_crc;
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.ballot_reuse_after_crash {
            names_value = true; // pre-fix: bare (ballot, instance) replies counted
        }
        if !names_value {
            ctx.stats.accepted_stale += 1;
            return;
        }
        flight.accepted_by.insert(from);
        if flight.accepted_by.len() >= ctx.quorum() {
            let value = flight.value.clone();
            self.learn(ctx, instance, value, ctx.me);
        }
    }

    fn on_reject(&mut self, ctx: &mut Ctx<'_>, _from: NodeId, rejected: Ballot, promised: Ballot) {
        let mine = match &self.role {
            Role::Follower => None,
            Role::Candidate(candidate) => Some(candidate.ballot),
            Role::Leader { ballot, .. } => Some(*ballot),
        };
        self.max_seen = self.max_seen.max(promised);
        if mine == Some(rejected) && promised > rejected {
            ctx.stats.rejections_received += 1;
            self.step_down(ctx);
        }
    }

    fn on_catchup_request(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        first: Instance,
        request: u64,
        until: Instance,
    ) {
        if self.is_leader() && until > self.fill_until {
            // A re-learning peer needs instances chosen up to `until`; bounded by the accept
            // window so that a bad request cannot make a leader open without end.
            let bound = Instance(self.applied_next.0 + ACCEPT_WINDOW_INSTANCES);
            self.fill_until = until.min(bound);
        }
        let budget = (ctx.config.message_bytes_max as usize).min(CATCHUP_BYTES_MAX);
        let mut entries = Vec::new();
        let mut bytes = message::CATCHUP_REPLY_HEADER_BYTES;
        let mut checksum = 0;
        for index in first.0..self.applied_next.0 {
            let instance = Instance(index);
            let Some(value) = self.chosen.get(&instance) else {
                break; // pruned: serving it needs the WAL read path (a later issue)
            };
            let grown = bytes + message::catchup_entry_bytes(value.len());
            if entries.len() >= CATCHUP_BATCH_MAX || (grown > budget && !entries.is_empty()) {
                break;
            }
            bytes = grown;
            checksum = *self
                .checksums
                .get(&instance)
                .expect("applied instance has a checksum");
            entries.push((instance, value.clone()));
        }
        ctx.stats.catchup_entries_served += entries.len() as u64;
        ctx.send(
            self.id,
            from,
            Message::CatchupReply {
                request,
                applied_next: self.applied_next,
                high: self.held_end(),
                relearning: self.relearn.is_some(),
                state_lost: self.relearn.as_ref().is_some_and(|r| r.lost),
                promised: self.promised,
                entries,
                checksum,
            },
        );
    }

    fn on_catchup_reply(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        request: u64,
        report: Report,
        entries: Vec<(Instance, Bytes)>,
        checksum: u32,
    ) {
        self.catchup_deadline = None;
        if entries.is_empty() && report.applied_next > self.applied_next {
            ctx.stats.catchup_unavailable += 1;
        }
        let last = entries.last().map(|(i, _)| *i);
        let single = entries.len() == 1;
        for (instance, value) in entries {
            self.learn(ctx, instance, value, from);
        }
        if let Some(last) = last {
            // A one-entry reply to an Accept carries no checksum.
            if !(single && checksum == 0) {
                self.check(ctx, last, checksum, from);
            }
        }
        if let Some(relearn) = &mut self.relearn {
            #[allow(unused_mut)]
            let mut matches = request != 0 && request == relearn.request;
            #[cfg(feature = "sim-bugs")]
            if ctx.bugs.relearn_target_too_low {
                matches = true; // pre-fix: any reply counted, request ids did not exist
            }
            if relearn.target.is_none() && from != ctx.me && matches {
                relearn.reports.insert(from, report);
            }
        }
        self.relearn_evaluate(ctx);
        self.finish_relearn(ctx);
        if self.applied_next < report.applied_next && from != ctx.me {
            self.request_catchup(ctx, from);
        }
    }

    /// Fixes the re-learn target once enough peers reported (docs/PROTOCOL.md#re-learning):
    /// - `members - quorum + 1` peers that are not re-learning themselves: every instance
    ///   this replica may have voted on lies below (their highest held instance + 1) +
    ///   pipeline_depth;
    /// - otherwise, after an election timeout, the same number of reports from any peers
    ///   (re-learning ones report their intact records): the highest applied point among
    ///   them. This pooled target relies on PAR's condition (every record intact on at least
    ///   one member of every quorum) and is what lets a cluster whose every replica lost its
    ///   last write (power loss) make progress. A replica whose whole state was lost pools
    ///   only when every report says the same (a cluster created anew).
    fn relearn_evaluate(&mut self, ctx: &mut Ctx<'_>) {
        let needed = ctx.relearn_needed();
        let depth = u64::from(ctx.config.pipeline_depth);
        let timeout = ctx.config.election_timeout_ticks;
        let now = ctx.now;
        let applied = self.applied_next;
        let single = ctx.members.len() == 1;
        let Some(relearn) = &mut self.relearn else {
            return;
        };
        if single && relearn.target.is_none() {
            // A cluster of one has no one to re-learn from and no one who voted with it.
            relearn.target = Some(applied);
            relearn.pooled = true;
            return;
        }
        if relearn.target.is_some() || relearn.reports.len() < needed {
            return;
        }
        relearn.promise_floor = relearn
            .reports
            .values()
            .map(|r| r.promised)
            .max()
            .unwrap_or_default();
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.relearn_target_too_low {
            let ahead = relearn.reports.values().map(|r| r.applied_next).max();
            let base = relearn.floor.max(ahead.unwrap_or_default());
            relearn.target = Some(Instance(base.0 + depth));
            return;
        }
        let sure: Vec<&Report> = relearn.reports.values().filter(|r| !r.relearning).collect();
        if sure.len() >= needed {
            let high = sure.iter().map(|r| r.high).max().unwrap_or_default();
            let base = relearn.floor.max(high);
            relearn.target = Some(Instance(base.0 + depth));
        } else if relearn
            .started_at
            .is_some_and(|started| now.0 >= started.0 + timeout)
            // A replica that lost everything pools only with others that did too (a cluster
            // created anew): it has no intact records to make PAR's condition hold.
            && (!relearn.lost || relearn.reports.values().all(|r| r.state_lost))
        {
            let ahead = relearn.reports.values().map(|r| r.applied_next).max();
            relearn.target = Some(applied.max(ahead.unwrap_or_default()));
            relearn.pooled = true;
        }
    }

    fn finish_relearn(&mut self, ctx: &mut Ctx<'_>) {
        let Some(relearn) = &self.relearn else {
            return;
        };
        let Some(target) = relearn.target else {
            return;
        };
        if self.applied_next < target {
            return;
        }
        let floor = relearn.promise_floor;
        self.relearn = None;
        // Promise at least every ballot seen while re-learning and every peer's promise: a
        // promise lost with the damaged records is then not undercut (persisted before any
        // vote depends on it).
        let promise = self.max_seen.max(floor);
        if promise > self.promised {
            self.promised = promise;
            let first = self.applied_next;
            self.persist_promise(ctx, first);
        }
        // The repair record: what was re-learned is in this log again (chosen marks carry
        // the values), so damage below the Lsn this start recovered to is not re-learned
        // again at the next restart.
        let mut payload = Vec::with_capacity(12);
        payload.extend_from_slice(REPAIR_TAG);
        payload.extend_from_slice(&ctx.restored_lsn.0.to_le_bytes());
        ctx.append(Record {
            kind: RecordKind::Meta,
            group: self.id,
            instance: self.applied_next,
            promised: self.promised,
            accepted: Ballot::ZERO,
            payload: Bytes::from(payload),
        });
        ctx.stats.groups_repaired += 1;
        self.election_deadline = Some(ctx.election_deadline());
    }

    /// While re-learning without a target, asks every peer that has not reported yet (once
    /// per retransmit interval); afterwards, the leader (or every peer when no leader is
    /// known) for catch-up up to the target, paced by the catch-up deadline.
    fn relearn_ask(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        if let Some(relearn) = &mut self.relearn {
            relearn.started_at.get_or_insert(now);
        } else {
            return;
        }
        self.relearn_evaluate(ctx);
        self.finish_relearn(ctx);
        let from = self.applied_next;
        let leader = self.leader_hint.filter(|n| *n != ctx.me);
        let Some(relearn) = &mut self.relearn else {
            return;
        };
        if let Some(target) = relearn.target {
            if self.catchup_deadline.is_none() {
                self.catchup_deadline = Some(Tick(now.0 + ctx.config.retransmit_ticks));
                let peers: Vec<NodeId> = match leader {
                    Some(leader) => vec![leader],
                    None => ctx
                        .members
                        .iter()
                        .copied()
                        .filter(|n| *n != ctx.me)
                        .collect(),
                };
                for peer in peers {
                    ctx.stats.catchup_requests_sent += 1;
                    ctx.send(
                        self.id,
                        peer,
                        Message::CatchupRequest {
                            from,
                            request: 0,
                            until: target,
                        },
                    );
                }
            }
            return;
        }
        if relearn
            .asked_at
            .is_some_and(|at| now.0 < at.0 + ctx.config.retransmit_ticks)
        {
            return;
        }
        relearn.asked_at = Some(now);
        let request = relearn.request;
        let missing: Vec<NodeId> = ctx
            .members
            .iter()
            .copied()
            .filter(|n| *n != ctx.me && !relearn.reports.contains_key(n))
            .collect();
        for peer in missing {
            ctx.stats.catchup_requests_sent += 1;
            ctx.send(
                self.id,
                peer,
                Message::CatchupRequest {
                    from,
                    request,
                    until: Instance(0),
                },
            );
        }
    }

    fn request_catchup(&mut self, ctx: &mut Ctx<'_>, peer: NodeId) {
        if self.catchup_deadline.is_some() || peer == ctx.me {
            return;
        }
        self.catchup_deadline = Some(Tick(ctx.now.0 + ctx.config.retransmit_ticks));
        ctx.stats.catchup_requests_sent += 1;
        ctx.send(
            self.id,
            peer,
            Message::CatchupRequest {
                from: self.applied_next,
                request: 0,
                until: Instance(0),
            },
        );
    }

    /// `instance` is chosen with `value` (reported by `from`).
    fn learn(&mut self, ctx: &mut Ctx<'_>, instance: Instance, value: Bytes, from: NodeId) {
        if let Some(known) = self.chosen.get(&instance) {
            if *known != value {
                self.stop(
                    ctx,
                    GroupError::Diverged {
                        group: self.id.0,
                        instance: instance.0,
                        from: from.0,
                    },
                );
            }
            return;
        }
        if instance < self.applied_next {
            return; // applied and pruned; the checksum comparison covers it
        }
        // The mark carries the value unless this node's Accept record already holds it.
        // The mark names that record's ballot, so restart can tell it from an older Accept
        // when the newer one was damaged.
        let (accepted, payload) = match self.accepted.remove(&instance) {
            Some((ballot, accepted)) if accepted == value => (ballot, Bytes::new()),
            _ => (Ballot::ZERO, value.clone()),
        };
        ctx.defer_mark(Record {
            kind: RecordKind::Chosen,
            group: self.id,
            instance,
            promised: self.promised,
            accepted,
            payload,
        });
        self.chosen.insert(instance, value.clone());
        let mut same_as_flight = true;
        if let Some(flight) = self.inflight.remove(&instance) {
            // Committed only when the chosen value is this proposal (its identity), never
            // because another proposer's batch has the same bytes.
            #[allow(unused_mut)]
            let mut same = value::identity(&value) == Some(flight.identity);
            #[cfg(feature = "sim-bugs")]
            if ctx.bugs.commit_by_bytes {
                same = flight.value == value;
            }
            same_as_flight = same;
            if same {
                ctx.stats.instances_chosen_as_leader += 1;
                if !flight.proposals.is_empty() {
                    ctx.stats.commit_instances += 1;
                    ctx.stats.commit_rtts_total +=
                        u64::from(flight.prepare_rtts) + u64::from(flight.transmissions);
                }
            }
            for (index, id) in flight.proposals.into_iter().enumerate() {
                ctx.stats.proposals_committed += u64::from(same);
                ctx.out.results.push(if same {
                    ProposalResult::Committed {
                        id,
                        group: self.id,
                        instance,
                        index: u32::try_from(index).expect("batch index fits u32"),
                    }
                } else {
                    ProposalResult::Unknown { id, group: self.id }
                });
            }
        }
        if !same_as_flight {
            // A higher ballot chose another value here: this leadership is over, and its
            // ballot must never announce this instance as chosen (followers would take the
            // value they accepted with it).
            self.step_down(ctx);
        }
        self.apply_ready(ctx);
    }

    fn apply_ready(&mut self, ctx: &mut Ctx<'_>) {
        let before = self.applied_next;
        while let Some(value) = self.chosen.get(&self.applied_next) {
            let instance = self.applied_next;
            self.checksum = value::roll_checksum(self.checksum, instance.0, value);
            self.checksums.insert(instance, self.checksum);
            ctx.out.chosen.push(Chosen {
                group: self.id,
                instance,
                value: value.clone(),
            });
            ctx.stats.instances_applied += 1;
            self.applied_next = Instance(instance.0 + 1);
            if let Some((theirs, from)) = self.pending_checks.remove(&instance) {
                self.check(ctx, instance, theirs, from);
            }
        }
        if self.applied_next == before {
            return;
        }
        self.accepted = self.accepted.split_off(&self.applied_next);
        self.pending_checks = self.pending_checks.split_off(&self.applied_next);
        if self.is_leader() {
            self.commit_dirty = true;
            if self.next_instance < self.applied_next {
                self.next_instance = self.applied_next;
            }
        }
        let keep_from = Instance(
            self.applied_next
                .0
                .saturating_sub(ctx.config.chosen_retained_max),
        );
        if self
            .chosen
            .first_key_value()
            .is_some_and(|(i, _)| *i < keep_from)
        {
            self.chosen = self.chosen.split_off(&keep_from);
            self.checksums = self.checksums.split_off(&keep_from);
        }
        self.finish_relearn(ctx);
    }

    fn checksum_before(&self, instance: Instance) -> u32 {
        if instance.0 == 0 {
            return 0;
        }
        self.checksums
            .get(&Instance(instance.0 - 1))
            .copied()
            .unwrap_or(self.checksum)
    }

    /// Compares a peer's rolling checksum through `instance` with ours.
    fn check(&mut self, ctx: &mut Ctx<'_>, instance: Instance, theirs: u32, from: NodeId) {
        if instance >= self.applied_next {
            if self.pending_checks.len() < PENDING_CHECKS_MAX {
                self.pending_checks.insert(instance, (theirs, from));
            }
            return;
        }
        let Some(&ours) = self.checksums.get(&instance) else {
            return; // pruned: compared long ago
        };
        if ours != theirs {
            self.stop(
                ctx,
                GroupError::ChecksumMismatch {
                    group: self.id.0,
                    instance: instance.0,
                    ours,
                    theirs,
                    from: from.0,
                },
            );
        }
    }

    fn stop(&mut self, ctx: &mut Ctx<'_>, error: GroupError) {
        if self.stopped {
            return;
        }
        self.step_down(ctx);
        for queued in std::mem::take(&mut self.queue) {
            ctx.out.results.push(ProposalResult::Failed {
                id: queued.id,
                group: self.id,
                reason: FailReason::Stopped,
            });
        }
        self.stopped = true;
        ctx.stats.groups_stopped += 1;
        ctx.out.stopped.push((self.id, error));
    }

    fn start_prepare(&mut self, ctx: &mut Ctx<'_>) {
        let number = self.promised.number.max(self.max_seen.number) + 1;
        let ballot = Ballot {
            number,
            node: ctx.me.0,
        };
        ctx.stats.prepares_started += 1;
        self.elections_without_leader += 1;
        self.max_seen = self.max_seen.max(ballot);
        self.election_deadline = Some(ctx.election_deadline());
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.skip_prepare_on_new_leader {
            self.role = Role::Leader {
                ballot,
                prepare_rounds: 0,
            };
            self.leader_hint = Some(ctx.me);
            self.next_instance = self.next_instance.max(self.applied_next);
            ctx.stats.leaderships_won += 1;
            return;
        }
        let first = self.applied_next;
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.ballot_reuse_after_crash {
            // Pre-fix: the Prepare leaves at once; the candidate's own promise is written when
            // its loopback Prepare arrives, and a crash before that forgets the ballot.
            self.role = Role::Candidate(Candidate {
                ballot,
                first,
                promises: BTreeMap::new(),
                started_at: ctx.now,
                sent_at: ctx.now,
                promise_lsn: Lsn::ZERO,
                rounds: 1,
            });
            ctx.broadcast(self.id, &Message::Prepare { ballot, first });
            return;
        }
        // The candidate promises its own ballot durably before any Prepare leaves: after a
        // crash it restarts with promised >= ballot and never uses the ballot again
        // (docs/PROTOCOL.md#ballots).
        self.promised = ballot;
        let promise_lsn = self.persist_promise(ctx, first);
        let candidate = Candidate {
            ballot,
            first,
            promises: BTreeMap::new(),
            started_at: ctx.now,
            sent_at: ctx.now,
            promise_lsn,
            rounds: 1,
        };
        resend_prepare(ctx, self.id, &candidate);
        self.role = Role::Candidate(candidate);
    }

    /// Leaves candidacy or leadership: proposals in flight become Unknown (they may still be
    /// chosen), queued ones fail (they were never proposed).
    fn step_down(&mut self, ctx: &mut Ctx<'_>) {
        if let Role::Candidate(candidate) = &self.role {
            self.missing_promises = ctx
                .members
                .iter()
                .copied()
                .filter(|n| !candidate.promises.contains_key(n))
                .collect();
        }
        if matches!(self.role, Role::Follower) {
            return;
        }
        self.role = Role::Follower;
        self.continuation = None;
        self.phase1_end = None;
        self.fill_until = Instance(0);
        if self.leader_hint == Some(ctx.me) {
            self.leader_hint = None;
        }
        for (_, flight) in std::mem::take(&mut self.inflight) {
            for id in flight.proposals {
                ctx.out
                    .results
                    .push(ProposalResult::Unknown { id, group: self.id });
            }
        }
        let leader_hint = self.leader_hint;
        for queued in std::mem::take(&mut self.queue) {
            ctx.out.results.push(ProposalResult::Failed {
                id: queued.id,
                group: self.id,
                reason: FailReason::NotLeader { leader_hint },
            });
        }
        self.election_deadline = Some(ctx.election_deadline());
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

/// Sends (or re-sends) a candidate's Prepare to every member that has not promised, each
/// held until the candidate's own promise record is durable.
fn resend_prepare(ctx: &mut Ctx<'_>, group: GroupId, candidate: &Candidate) {
    let msg = Message::Prepare {
        ballot: candidate.ballot,
        first: candidate.first,
    };
    let missing: Vec<NodeId> = ctx
        .members
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

/// Whether a re-learn record says the state was lost (None if the payload is not one).
fn relearn_lost(payload: &[u8]) -> Option<bool> {
    match payload.strip_prefix(RELEARN_TAG.as_slice())? {
        [flag] => Some(*flag == 1),
        _ => None,
    }
}

/// The Lsn a repair record names (None if the payload is not one).
fn repair_lsn(payload: &[u8]) -> Option<Lsn> {
    let rest = payload.strip_prefix(REPAIR_TAG.as_slice())?;
    let bytes: [u8; 8] = rest.try_into().ok()?;
    Some(Lsn(u64::from_le_bytes(bytes)))
}
