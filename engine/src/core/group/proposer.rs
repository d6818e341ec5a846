//! The proposer/leader role of a group (docs/PROTOCOL.md#proposer-and-leader): ballots,
//! phase 1 and its continuation, recovering the open window, opening instances within the
//! window, counting Accepted replies, stepping down.
use super::*;

impl Group {
    pub(super) fn open_instance(&mut self, ctx: &mut Ctx<'_>) {
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
    pub(super) fn open_noop(&mut self, ctx: &mut Ctx<'_>) {
        ctx.stats.relearn_fill_instances += 1;
        self.insert_flight(value::noop(), Vec::new(), 0);
    }

    pub(super) fn insert_flight(
        &mut self,
        value: Bytes,
        proposals: Vec<ProposalId>,
        prepare_rtts: u32,
    ) {
        let instance = self.next_instance;
        self.next_instance = Instance(instance.0 + 1);
        let previous = self
            .inflight
            .insert(instance, flight(value, proposals, prepare_rtts));
        assert!(previous.is_none(), "instance opened twice");
    }

    /// Any higher ballot seen ends this node's candidacy or leadership.
    pub(super) fn observe(&mut self, ctx: &mut Ctx<'_>, ballot: Ballot) {
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

    pub(super) fn leader_contact(&mut self, ctx: &mut Ctx<'_>, ballot: Ballot) {
        if ballot.node != ctx.me.0 {
            self.leader_hint = Some(NodeId(ballot.node));
            self.election_deadline = Some(ctx.election_deadline());
            self.elections_without_leader = 0;
            self.leader_seen_at = Some(ctx.now);
        }
    }

    /// Check quorum: this leader heard from enough peers (with itself, a quorum) within the
    /// last election timeout. Peers count from the moment it won (their Promises).
    /// Refuses a request that only a leader takes: `Stopped`, or `NotLeader` with a hint.
    pub(super) fn refuse_unless_leading(&self, ctx: &Ctx<'_>) -> Result<(), FailReason> {
        if self.stopped {
            return Err(FailReason::Stopped);
        }
        if !matches!(self.role, Role::Leader { .. }) {
            return Err(FailReason::NotLeader {
                leader_hint: self.leader_hint.filter(|n| *n != ctx.me),
            });
        }
        Ok(())
    }

    pub(super) fn hears_quorum(&self, ctx: &Ctx<'_>) -> bool {
        let timeout = ctx.config.election_timeout_ticks;
        // The configuration of the instances it is committing now (a later one's voters are
        // asked at its boundary, docs/PROTOCOL.md#membership-change).
        let latest = self.config_at(self.applied_next);
        let heard = latest
            .voters
            .iter()
            .filter(|n| **n != ctx.me)
            .filter(|n| {
                self.peer_heard_at
                    .get(n)
                    .is_some_and(|at| ctx.now.0 < at.0.saturating_add(timeout))
            })
            .count();
        heard + usize::from(latest.is_voter(ctx.me)) >= membership::quorum_of(latest)
    }

    /// Leader stickiness: a Prepare from `from` is ignored while this replica knows a live
    /// leadership other than `from`'s: a follower that heard its leader within an election
    /// timeout, or a leader that hears a quorum. A replica that merely restarted, or was cut
    /// off for a while, cannot depose a working leader (refusing a Prepare is always safe).
    pub(super) fn leader_alive(&self, ctx: &Ctx<'_>, from: NodeId) -> bool {
        if !ctx.config.check_quorum {
            return false;
        }
        match &self.role {
            Role::Leader { .. } => from != ctx.me && self.hears_quorum(ctx),
            Role::Candidate(_) => false,
            Role::Follower => {
                self.leader_hint.is_some_and(|leader| leader != from)
                    && self.leader_seen_at.is_some_and(|at| {
                        ctx.now.0 < at.0.saturating_add(ctx.config.election_timeout_ticks)
                    })
            }
        }
    }

    pub(super) fn on_promise(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        first: Instance,
        applied_next: Instance,
        info: PromiseInfo,
    ) {
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
        // A Promise reports chosen values only from what the acceptor keeps in memory
        // (`chosen_retained_max` below its applied point, the same on every member): a
        // candidate further behind than that would not learn them all. It is also too far
        // behind to lead past the acceptance window. Catch up first, then try again.
        let behind_max = ACCEPT_WINDOW_INSTANCES.min(ctx.config.chosen_retained_max);
        if applied_next.0 >= collecting.first.0 + behind_max {
            self.step_down(ctx);
            self.request_catchup(ctx, from, applied_next);
            return;
        }
        // Promises count toward a quorum of the configuration at the first instance they
        // cover (up to the next boundary, where a continuation asks the next one).
        let config = membership::config_in(&self.configs, collecting.first);
        if !membership::vote_counts(ctx, config, from) {
            return;
        }
        collecting.promises.insert(from, info);
        if collecting.promises.len() < membership::quorum_of(config) {
            return;
        }
        if continuing {
            let cont = self.continuation.take().expect("collecting a continuation");
            self.promisers
                .push((cont.first, cont.promises.keys().copied().collect()));
            self.recover_window(ctx, cont.first, cont.promises);
        } else {
            self.become_leader(ctx);
        }
    }

    /// Phase 1 succeeded: recover every instance of the open window (docs/PROTOCOL.md#leader-change).
    pub(super) fn become_leader(&mut self, ctx: &mut Ctx<'_>) {
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
        // Check quorum counts from here: the promisers were just heard from.
        for peer in candidate.promises.keys() {
            if *peer != ctx.me {
                self.peer_heard_at.insert(*peer, ctx.now);
            }
        }
        ctx.stats.leaderships_won += 1;
        self.lease_start_leading(ctx);
        self.reads_from = Instance(0);
        // A new leadership numbers from its own phase 1, never from an old one's position (an
        // old next_instance beyond the recovered window would leave holes no one fills).
        self.next_instance = self.applied_next;
        self.phase1_end = None;
        self.promisers = vec![(
            candidate.first,
            candidate.promises.keys().copied().collect(),
        )];
        self.recover_window(ctx, candidate.first, candidate.promises);
        self.commit_dirty = true;
    }

    /// Re-proposes what a quorum of promises from `first` reports (the highest-ballot value
    /// per instance, a no-op in a hole), up to where every cut Promise's report ends.
    pub(super) fn recover_window(
        &mut self,
        ctx: &mut Ctx<'_>,
        first: Instance,
        promises: BTreeMap<NodeId, PromiseInfo>,
    ) {
        // A cut Promise reports `first ..= its last entry`: beyond that the leader knows
        // nothing of that acceptor yet.
        let cut_end: Option<Instance> = promises
            .values()
            .filter(|p| p.truncated)
            .map(|p| {
                p.entries
                    .last()
                    .map_or(Instance(first.0 + 1), |e| Instance(e.instance.0 + 1))
            })
            .min();
        // These promises are a quorum of the configuration at `first` only: from the next
        // boundary on (a change this replica applied, or one among the values it is about to
        // re-propose or learn) another configuration governs, whose voters a continuation
        // asks (docs/PROTOCOL.md#membership-change).
        let reported_change = promises
            .values()
            .flat_map(|p| p.entries.iter())
            .filter(|e| e.instance >= first && value::config(&e.value).is_some())
            .map(|e| Instance(e.instance.0.saturating_add(membership::MEMBERSHIP_DELAY)))
            .min();
        #[allow(unused_mut)]
        let mut boundary = [self.boundary_after(first), reported_change]
            .into_iter()
            .flatten()
            .min();
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.config_boundary_skips_prepare {
            boundary = None;
        }
        let known_end = [cut_end, boundary].into_iter().flatten().min();
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
        // Reads are served only once everything this recovery re-proposed is applied.
        self.reads_from = self.reads_from.max(self.next_instance);
    }

    /// A leader whose phase 1 was cut continues it (same ballot) once everything below the
    /// cut is chosen: the acceptors report what they hold from there.
    pub(super) fn maybe_continue_phase1(&mut self, ctx: &mut Ctx<'_>, ballot: Ballot) {
        let Some(end) = self.phase1_end else {
            return;
        };
        if self.continuation.is_some() || self.applied_next < end {
            return;
        }
        if !self.config_at(end).is_voter(ctx.me) {
            // A configuration that does not count this node as a voter governs from here: it
            // stops leading (every instance below is chosen) and says so in its status.
            ctx.stats.leader_stepdowns_removed += 1;
            self.step_down(ctx);
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

    pub(super) fn on_accepted(
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
        // Only the voters of the instance's configuration count.
        let config = membership::config_in(&self.configs, instance);
        if !membership::vote_counts(ctx, config, from) {
            ctx.stats.votes_from_non_voters += 1;
            return;
        }
        flight.accepted_by.insert(from);
        if flight.accepted_by.len() >= membership::quorum_of(config) {
            let value = flight.value.clone();
            self.learn(ctx, instance, value, ctx.me);
        }
    }

    pub(super) fn on_reject(
        &mut self,
        ctx: &mut Ctx<'_>,
        _from: NodeId,
        rejected: Ballot,
        promised: Ballot,
    ) {
        let mine = match &self.role {
            Role::Follower => None,
            Role::Candidate(candidate) => Some(candidate.ballot),
            Role::Leader { ballot, .. } => Some(*ballot),
        };
        self.max_seen = self.max_seen.max(promised);
        if mine == Some(rejected) && promised > rejected {
            ctx.stats.rejections_received += 1;
            let leading = matches!(self.role, Role::Leader { .. });
            let renew = leading
                && ctx.config.check_quorum
                && self.hears_quorum(ctx)
                && self.relearn.is_none()
                && self.install.is_none();
            self.step_down(ctx);
            if renew {
                // A leader its peers still hear was refused by one acceptor whose promise
                // is higher (it stood while cut off, or restarted and stood): it prepares
                // again at once above that promise, instead of leaving the group leaderless
                // while its followers, loyal to it, ignore every other candidate.
                ctx.stats.leader_reprepares += 1;
                self.start_prepare(ctx);
            }
        }
    }

    pub(super) fn start_prepare(&mut self, ctx: &mut Ctx<'_>) {
        if self.lease_refuses(ctx, ctx.me) {
            // This node's own acceptor granted another node the master lease: it cannot
            // promise itself before the grant ends. Stand when it does.
            ctx.stats.elections_deferred_lease += 1;
            let until = self.grant.map_or(Tick(ctx.now.0 + 1), |(_, until)| until);
            self.election_deadline = Some(until.max(Tick(ctx.now.0 + 1)));
            return;
        }
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
            self.lease_start_leading(ctx);
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
        let voters = self.config_at(first).voters.clone();
        resend_prepare(ctx, self.id, &candidate, &voters);
        self.role = Role::Candidate(candidate);
    }

    /// Leaves candidacy or leadership: proposals in flight become Unknown (they may still be
    /// chosen), queued ones fail (they were never proposed).
    pub(super) fn step_down(&mut self, ctx: &mut Ctx<'_>) {
        if let Role::Candidate(candidate) = &self.role {
            self.missing_promises = self
                .config_at(candidate.first)
                .voters
                .iter()
                .copied()
                .filter(|n| !candidate.promises.contains_key(n))
                .collect();
        }
        if matches!(self.role, Role::Follower) {
            return;
        }
        let was_leading = matches!(self.role, Role::Leader { .. });
        self.role = Role::Follower;
        self.continuation = None;
        self.phase1_end = None;
        self.promisers.clear();
        self.fill_until = Instance(0);
        if self.leader_hint == Some(ctx.me) {
            self.leader_hint = None;
        }
        if was_leading {
            self.lease_stop_leading(ctx);
            self.note_master(ctx);
        }
        for (_, flight) in std::mem::take(&mut self.inflight) {
            for id in flight.proposals {
                ctx.out
                    .results
                    .push(ProposalResult::Unknown { id, group: self.id });
            }
        }
        let leader_hint = self.leader_hint;
        if let Some((id, _)) = self.config_queued.take() {
            ctx.out.results.push(ProposalResult::Failed {
                id,
                group: self.id,
                reason: FailReason::NotLeader { leader_hint },
            });
        }
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
