//! One Paxos group's replica: proposer, acceptor and learner (docs/PROTOCOL.md).
//!
//! Owns: the group's promise, its accepted values, its chosen values and applied point, the
//! rolling checksum, the proposer's role and pipeline, and the proposal queue. Must never do
//! I/O or read a clock: it speaks only through the table's `Ctx` (append, send,
//! send-after-durable, outputs) and learns time from `ctx.now`.
use super::message::{Message, PromiseEntry};
use super::table::{Chosen, Ctx, FailReason, GroupError, ProposalResult};
use super::value;
use super::wal_types::{Ballot, GroupId, Instance, Record, RecordKind};
use super::{NodeId, ProposalId, Tick};
use super::{ACCEPT_WINDOW_INSTANCES, CATCHUP_BATCH_MAX, PROMISE_SPAN_INSTANCES};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

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
    accepted_by: BTreeSet<NodeId>,
    proposals: Vec<ProposalId>,
    /// Round trips on the critical path (0 = no client command: a recovered instance).
    rtts: u32,
    sent_at: Option<Tick>,
}

#[derive(Debug)]
struct Candidate {
    ballot: Ballot,
    first: Instance,
    promises: BTreeMap<NodeId, Vec<PromiseEntry>>,
    started_at: Tick,
    sent_at: Tick,
}

#[derive(Debug)]
enum Role {
    Follower,
    Candidate(Candidate),
    Leader { ballot: Ballot },
}

/// Re-learning after WAL damage (Paxos Made Live): no votes until `target` is applied
/// (docs/PROTOCOL.md#restart).
#[derive(Debug)]
struct Relearn {
    /// Fixed once `n - quorum + 1` peers reported: every instance this replica may have voted
    /// on before the restart lies below it.
    target: Option<Instance>,
    /// One past the highest instance in the recovered log.
    floor: Instance,
    /// Peers' (applied point, promised ballot), from catch-up replies.
    reports: BTreeMap<NodeId, (Instance, Ballot)>,
    /// The highest promise reported: this replica promises at least that when it rejoins.
    promise_floor: Ballot,
    /// When the peers that have not reported were last asked.
    asked_at: Option<Tick>,
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
        }
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
    pub fn restore(&mut self, ctx: &mut Ctx<'_>, records: &[&Record], damaged: bool) {
        let mut marks: Vec<(Instance, Ballot, Bytes)> = Vec::new();
        let mut highest = None;
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
                RecordKind::Meta => {}
            }
        }
        let mut damaged = damaged;
        for (instance, ballot, payload) in marks {
            let value = if !payload.is_empty() {
                payload
            } else {
                match self.accepted.get(&instance) {
                    Some((accepted, value)) if *accepted == ballot => value.clone(),
                    _ => {
                        // The Accept record the mark names is gone (damaged): re-learn it.
                        damaged = true;
                        continue;
                    }
                }
            };
            self.accepted.remove(&instance);
            self.chosen.insert(instance, value);
        }
        self.max_seen = self.promised;
        self.apply_ready(ctx);
        if damaged {
            ctx.stats.groups_relearning += 1;
            self.relearn = Some(Relearn {
                target: None,
                floor: Instance(highest.map_or(0, |i| i.0 + 1)),
                reports: BTreeMap::new(),
                promise_floor: Ballot::ZERO,
                asked_at: None,
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
                        ctx.send(self.id, to, msg.clone());
                    }
                }
            }
            Role::Leader { ballot } => {
                let ballot = *ballot;
                let chosen_through = self.applied_next;
                for (instance, flight) in self.inflight.iter_mut() {
                    let Some(sent_at) = flight.sent_at else {
                        continue;
                    };
                    if now.0 < sent_at.0 + retransmit {
                        continue;
                    }
                    flight.sent_at = Some(now);
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
        let Role::Leader { ballot } = self.role else {
            return;
        };
        if self.stopped {
            return;
        }
        let window_end = self.applied_next.0 + ACCEPT_WINDOW_INSTANCES / 2;
        while self.inflight.len() < ctx.config.pipeline_depth as usize
            && !self.queue.is_empty()
            && self.next_instance.0 < window_end
        {
            self.open_instance(ctx);
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
        let mut bytes = 4;
        while let Some(next) = self.queue.front() {
            let grown = bytes + 4 + next.command.len();
            if taken.len() >= limit_commands || grown > limit_bytes {
                break;
            }
            bytes = grown;
            taken.push(self.queue.pop_front().expect("front exists"));
        }
        assert!(!taken.is_empty(), "a queued command always fits a value");
        let value = value::encode(taken.iter().map(|q| &q.command));
        assert_eq!(value.len(), bytes);
        let rtts = if taken.iter().all(|q| q.arrived_leading) {
            1
        } else {
            2
        };
        let instance = self.next_instance;
        self.next_instance = Instance(instance.0 + 1);
        let previous = self.inflight.insert(
            instance,
            InFlight {
                value,
                accepted_by: BTreeSet::new(),
                proposals: taken.iter().map(|q| q.id).collect(),
                rtts,
                sent_at: None,
            },
        );
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
                applied_next,
                truncated,
                entries,
            } => self.on_promise(ctx, from, ballot, applied_next, truncated, entries),
            Message::Accept {
                ballot,
                instance,
                value,
                chosen_through,
            } => self.on_accept(ctx, from, ballot, instance, value, chosen_through),
            Message::Accepted { ballot, instance } => self.on_accepted(ctx, from, ballot, instance),
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
            Message::CatchupRequest { from: first } => self.on_catchup_request(ctx, from, first),
            Message::CatchupReply {
                applied_next,
                promised,
                entries,
                checksum,
            } => self.on_catchup_reply(ctx, from, applied_next, promised, entries, checksum),
        }
    }

    /// Any higher ballot seen ends this node's candidacy or leadership.
    fn observe(&mut self, ctx: &mut Ctx<'_>, ballot: Ballot) {
        self.max_seen = self.max_seen.max(ballot);
        let mine = match &self.role {
            Role::Follower => return,
            Role::Candidate(candidate) => candidate.ballot,
            Role::Leader { ballot } => *ballot,
        };
        if ballot > mine {
            self.step_down(ctx);
        }
    }

    fn leader_contact(&mut self, ctx: &mut Ctx<'_>, ballot: Ballot) {
        if ballot.node != ctx.me.0 {
            self.leader_hint = Some(NodeId(ballot.node));
            self.election_deadline = Some(ctx.election_deadline());
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
        let (entries, truncated) = self.promise_entries(first);
        ctx.stats.promises_sent += u64::from(from != ctx.me);
        ctx.send_after_durable(
            lsn,
            self.id,
            from,
            Message::Promise {
                ballot,
                applied_next: self.applied_next,
                truncated,
                entries,
            },
        );
    }

    fn persist_promise(&mut self, ctx: &mut Ctx<'_>, first: Instance) -> super::Lsn {
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

    /// What this acceptor holds from `first` on, for a Promise; `truncated` if it cannot all
    /// be reported (the candidate must catch up first).
    fn promise_entries(&self, first: Instance) -> (Vec<PromiseEntry>, bool) {
        let end = Instance(first.0.saturating_add(PROMISE_SPAN_INSTANCES));
        let mut truncated = self.chosen.range(end..).next().is_some()
            || self.accepted.range(end..).next().is_some();
        // Chosen values below the applied point that were pruned cannot be reported.
        if first < self.applied_next && !self.chosen.contains_key(&first) {
            truncated = true;
        }
        let mut entries: Vec<PromiseEntry> = self
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
        entries.sort_by_key(|e| e.instance);
        (entries, truncated)
    }

    fn on_promise(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        applied_next: Instance,
        truncated: bool,
        entries: Vec<PromiseEntry>,
    ) {
        let Role::Candidate(candidate) = &mut self.role else {
            return;
        };
        if candidate.ballot != ballot {
            return;
        }
        if truncated || applied_next.0 >= candidate.first.0 + ACCEPT_WINDOW_INSTANCES {
            // This node is too far behind to lead: catch up first, then try again.
            self.step_down(ctx);
            self.request_catchup(ctx, from);
            return;
        }
        candidate.promises.insert(from, entries);
        let promises = candidate.promises.len();
        if promises >= ctx.quorum() {
            self.become_leader(ctx);
        }
    }

    /// Phase 1 succeeded: recover every instance of the open window (docs/PROTOCOL.md#leader-change).
    fn become_leader(&mut self, ctx: &mut Ctx<'_>) {
        let Role::Candidate(candidate) = std::mem::replace(&mut self.role, Role::Follower) else {
            unreachable!("only a candidate becomes leader");
        };
        let ballot = candidate.ballot;
        let mut chosen: BTreeMap<Instance, Bytes> = BTreeMap::new();
        let mut best: BTreeMap<Instance, (Ballot, Bytes)> = BTreeMap::new();
        for entries in candidate.promises.into_values() {
            for entry in entries {
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
        let highest = chosen
            .keys()
            .chain(best.keys())
            .max()
            .map_or(candidate.first, |i| Instance(i.0 + 1));
        self.role = Role::Leader { ballot };
        self.leader_hint = Some(ctx.me);
        ctx.stats.leaderships_won += 1;
        let start = candidate.first.max(self.applied_next);
        for index in start.0..highest.0 {
            let instance = Instance(index);
            if self.chosen.contains_key(&instance) {
                continue;
            }
            // The highest-ballot accepted value must be proposed again; a hole gets a no-op.
            let value = best
                .remove(&instance)
                .map_or_else(value::noop, |(_, value)| value);
            self.inflight.insert(
                instance,
                InFlight {
                    value,
                    accepted_by: BTreeSet::new(),
                    proposals: Vec::new(),
                    rtts: 0,
                    sent_at: None,
                },
            );
        }
        self.next_instance = highest.max(self.applied_next);
        self.commit_dirty = true;
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
                    applied_next: self.applied_next,
                    promised: self.promised,
                    entries: vec![(instance, chosen)],
                    checksum,
                },
            );
        } else if votes {
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
            ctx.send_after_durable(lsn, self.id, from, Message::Accepted { ballot, instance });
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

    fn on_accepted(&mut self, ctx: &mut Ctx<'_>, from: NodeId, ballot: Ballot, instance: Instance) {
        let Role::Leader { ballot: mine } = self.role else {
            return;
        };
        if ballot != mine {
            return;
        }
        let Some(flight) = self.inflight.get_mut(&instance) else {
            return;
        };
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
            Role::Leader { ballot } => Some(*ballot),
        };
        self.max_seen = self.max_seen.max(promised);
        if mine == Some(rejected) && promised > rejected {
            ctx.stats.rejections_received += 1;
            self.step_down(ctx);
        }
    }

    fn on_catchup_request(&mut self, ctx: &mut Ctx<'_>, from: NodeId, first: Instance) {
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut checksum = 0;
        for index in first.0..self.applied_next.0 {
            let instance = Instance(index);
            let Some(value) = self.chosen.get(&instance) else {
                break; // pruned: serving it needs the WAL read path (a later issue)
            };
            if entries.len() >= CATCHUP_BATCH_MAX || bytes + value.len() > CATCHUP_BYTES_MAX {
                break;
            }
            bytes += value.len();
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
                applied_next: self.applied_next,
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
        applied_next: Instance,
        promised: Ballot,
        entries: Vec<(Instance, Bytes)>,
        checksum: u32,
    ) {
        self.catchup_deadline = None;
        if entries.is_empty() && applied_next > self.applied_next {
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
            if relearn.target.is_none() && from != ctx.me {
                relearn.reports.insert(from, (applied_next, promised));
                // Any quorum that chose a value or holds a promise with this replica shares a
                // member with these peers (|reports| + quorum - 1 > n - 1).
                let needed = ctx.members.len() - ctx.quorum() + 1;
                if relearn.reports.len() >= needed {
                    let ahead = relearn.reports.values().map(|(a, _)| *a).max();
                    let base = relearn.floor.max(ahead.unwrap_or(Instance(0)));
                    relearn.promise_floor = relearn
                        .reports
                        .values()
                        .map(|(_, p)| *p)
                        .max()
                        .unwrap_or_default();
                    relearn.target = Some(Instance(base.0 + u64::from(ctx.config.pipeline_depth)));
                }
            }
        }
        self.finish_relearn(ctx);
        if self.applied_next < applied_next && from != ctx.me {
            self.request_catchup(ctx, from);
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
    }

    /// While re-learning without a target, asks every peer that has not reported yet (once
    /// per retransmit interval); afterwards, one peer at a time as any lagging learner does.
    fn relearn_ask(&mut self, ctx: &mut Ctx<'_>) {
        let Some(relearn) = &mut self.relearn else {
            return;
        };
        if relearn.target.is_some() {
            if self.catchup_deadline.is_none() {
                if let Some(peer) = ctx.random_peer() {
                    self.request_catchup(ctx, peer);
                }
            }
            return;
        }
        let now = ctx.now;
        if relearn
            .asked_at
            .is_some_and(|at| now.0 < at.0 + ctx.config.retransmit_ticks)
        {
            return;
        }
        relearn.asked_at = Some(now);
        let from = self.applied_next;
        let missing: Vec<NodeId> = ctx
            .members
            .iter()
            .copied()
            .filter(|n| *n != ctx.me && !relearn.reports.contains_key(n))
            .collect();
        for peer in missing {
            ctx.stats.catchup_requests_sent += 1;
            ctx.send(self.id, peer, Message::CatchupRequest { from });
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
            let same = flight.value == value;
            same_as_flight = same;
            if same {
                ctx.stats.instances_chosen_as_leader += 1;
                if flight.rtts > 0 {
                    ctx.stats.commit_instances += 1;
                    ctx.stats.commit_rtts_total += u64::from(flight.rtts);
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

    /// Emits chosen values in order from the applied point; rolls the checksum.
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
        self.max_seen = self.max_seen.max(ballot);
        self.election_deadline = Some(ctx.election_deadline());
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.skip_prepare_on_new_leader {
            self.role = Role::Leader { ballot };
            self.leader_hint = Some(ctx.me);
            self.next_instance = self.next_instance.max(self.applied_next);
            ctx.stats.leaderships_won += 1;
            return;
        }
        let first = self.applied_next;
        self.role = Role::Candidate(Candidate {
            ballot,
            first,
            promises: BTreeMap::new(),
            started_at: ctx.now,
            sent_at: ctx.now,
        });
        ctx.broadcast(self.id, &Message::Prepare { ballot, first });
    }

    /// Leaves candidacy or leadership: proposals in flight become Unknown (they may still be
    /// chosen), queued ones fail (they were never proposed).
    fn step_down(&mut self, ctx: &mut Ctx<'_>) {
        if matches!(self.role, Role::Follower) {
            return;
        }
        self.role = Role::Follower;
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
