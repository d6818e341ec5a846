//! The learner role of a group (docs/PROTOCOL.md#learner): chosen values, in-order apply,
//! catch-up, the rolling checksum and stopping on divergence.
use super::*;

impl Group {
    /// Every instance below `chosen_through` is chosen; what this node accepted with the same
    /// ballot is that value (one ballot proposes one value per instance).
    pub(super) fn on_commit(
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

    pub(super) fn on_catchup_request(
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
        let in_memory = self
            .chosen
            .first_key_value()
            .map_or(self.applied_next, |(i, _)| *i)
            .min(self.applied_next);
        if first < in_memory && first >= self.log_base {
            // Older than what memory keeps, but in the log: the driver reads it from storage
            // and calls `serve_read` (streaming catch-up from the WAL).
            ctx.stats.catchup_log_reads += 1;
            ctx.out.reads.push(ReadRequest {
                group: self.id,
                to: from,
                request,
                first,
                end: in_memory,
                entries_max: CATCHUP_BATCH_MAX,
                bytes_max: budget - message::CATCHUP_REPLY_HEADER_BYTES,
            });
            return;
        }
        self.serve_entries(ctx, from, request, first, Vec::new());
    }

    /// Answers a catch-up request with `read` (values the driver read from storage, from
    /// `first` on, consecutive) followed by what memory holds, within the reply's bounds.
    pub(crate) fn serve_entries(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        request: u64,
        first: Instance,
        read: Vec<(Instance, Bytes)>,
    ) {
        let budget = (ctx.config.message_bytes_max as usize).min(CATCHUP_BYTES_MAX);
        let mut entries = Vec::new();
        let mut bytes = message::CATCHUP_REPLY_HEADER_BYTES;
        let mut checksum = 0;
        let mut next = first;
        for (instance, value) in read {
            let grown = bytes + message::catchup_entry_bytes(value.len());
            if instance != next
                || instance >= self.applied_next
                || entries.len() >= CATCHUP_BATCH_MAX
                || (grown > budget && !entries.is_empty())
            {
                break;
            }
            bytes = grown;
            // Older than the checksums kept: the reply carries no check (0); the live edge's
            // checksums (Commits, later replies) still compare.
            checksum = self.checksums.get(&instance).copied().unwrap_or(0);
            ctx.stats.catchup_entries_from_log += 1;
            entries.push((instance, value));
            next = Instance(instance.0 + 1);
        }
        for index in next.0..self.applied_next.0 {
            let instance = Instance(index);
            let Some(value) = self.chosen.get(&instance) else {
                break; // below what memory keeps and not read from the log
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
                log_base: self.log_base,
                relearning: self.relearn.is_some(),
                state_lost: self.relearn.as_ref().is_some_and(|r| r.lost),
                promised: self.promised,
                entries,
                checksum,
            },
        );
    }

    pub(super) fn on_catchup_reply(
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
            if report.log_base > self.applied_next && from != ctx.me && self.install.is_none() {
                // The peer serves nothing from this replica's point on (its log starts
                // later): only its checkpoint can bring this replica forward.
                self.start_install(ctx, from, report.applied_next);
                return;
            }
            // The peer is ahead but does not hold what this replica needs: back off
            // (doubling) instead of asking again at once, and say why in the status.
            ctx.stats.catchup_unavailable += 1;
            self.back_off_catchup(ctx, from, report.applied_next);
        } else if !entries.is_empty() {
            self.catchup_backoff = 0;
            self.catchup_unavailable = None;
        }
        let last = entries.last().map(|(i, _)| *i);
        for (instance, value) in entries {
            self.learn(ctx, instance, value, from);
        }
        if let Some(last) = last {
            // A one-entry reply to an Accept carries no checksum.
            // A reply with checksum 0 carries no check (an entry read from the log below the
            // checksums kept, or the one-entry reply to an Accept).
            if checksum != 0 {
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

    /// Catch-up from `peer` found nothing usable: ask again only after a back-off that
    /// doubles from the retransmit interval up to `CATCHUP_BACKOFF_ELECTIONS_MAX` election
    /// timeouts (never a tight loop); the status says why.
    pub(super) fn back_off_catchup(&mut self, ctx: &mut Ctx<'_>, peer: NodeId, theirs: Instance) {
        let cap = ctx
            .config
            .election_timeout_ticks
            .saturating_mul(CATCHUP_BACKOFF_ELECTIONS_MAX);
        self.catchup_backoff = (self.catchup_backoff.saturating_mul(2)).clamp(
            ctx.config.retransmit_ticks,
            cap.max(ctx.config.retransmit_ticks),
        );
        self.catchup_deadline = Some(Tick(ctx.now.0 + self.catchup_backoff));
        self.catchup_unavailable = Some((peer, theirs.max(self.applied_next)));
    }

    pub(super) fn request_catchup(&mut self, ctx: &mut Ctx<'_>, peer: NodeId) {
        if self.catchup_deadline.is_some() || peer == ctx.me || self.install.is_some() {
            return;
        }
        self.catchup_deadline = Some(Tick(ctx.now.0 + ctx.config.retransmit_ticks));
        ask_catchup(ctx, self.id, peer, self.applied_next, 0, Instance(0));
    }

    /// `instance` is chosen with `value` (reported by `from`).
    pub(super) fn learn(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: Instance,
        value: Bytes,
        from: NodeId,
    ) {
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
                    ctx.stats.commit_accept_transmissions += u64::from(flight.transmissions);
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

    pub(super) fn apply_ready(&mut self, ctx: &mut Ctx<'_>) {
        let before = self.applied_next;
        while let Some(value) = self.chosen.get(&self.applied_next) {
            let instance = self.applied_next;
            self.checksum = value::roll_checksum(self.checksum, instance.0, value);
            self.checksums.insert(instance, self.checksum);
            ctx.out.chosen.push(Chosen {
                group: self.id,
                instance,
                value: value.clone(),
                checksum: self.checksum,
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

    pub(super) fn checksum_before(&self, instance: Instance) -> u32 {
        if instance.0 == 0 {
            return 0;
        }
        self.checksums
            .get(&Instance(instance.0 - 1))
            .copied()
            .unwrap_or(self.checksum)
    }

    /// Compares a peer's rolling checksum through `instance` with ours.
    pub(super) fn check(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: Instance,
        theirs: u32,
        from: NodeId,
    ) {
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

    pub(super) fn stop(&mut self, ctx: &mut Ctx<'_>, error: GroupError) {
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
}
