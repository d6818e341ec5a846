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
        self.chosen_heard = self.chosen_heard.max(chosen_through);
        let end = chosen_through
            .0
            .min(self.applied_next.0 + ACCEPT_WINDOW_INSTANCES);
        for index in self.applied_next.0..end {
            let instance = Instance(index);
            if self.chosen.contains_key(&instance) {
                continue;
            }
            let held = self
                .accepted
                .get(&instance)
                .or_else(|| self.observed.get(&instance));
            match held {
                Some((accepted, value)) if *accepted == ballot => {
                    let value = value.clone();
                    self.learn(ctx, instance, value, from);
                }
                _ => {}
            }
        }
        if self.applied_next < chosen_through && from != ctx.me {
            self.request_catchup(ctx, from, chosen_through);
        } else if from != ctx.me && ballot.node == from.0 && ballot >= self.max_seen {
            // The leader it follows said what was chosen, and all of it is applied here.
            self.fresh_at = Some(ctx.now);
        }
    }

    /// A follower (non-voting) gets a leader's Accept: it keeps the value, never votes, and
    /// learns what the Accept's `chosen_through` covers (docs/PROTOCOL.md#follower-nodes). What it
    /// keeps is bounded by the acceptance window above its applied point.
    pub(super) fn on_accept_non_voter(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        instance: Instance,
        value: Bytes,
        chosen_through: Instance,
    ) {
        ctx.stats.accepts_observed_non_voter += 1;
        self.observe(ctx, ballot);
        if ballot >= self.max_seen {
            self.leader_contact(ctx, ballot);
        }
        while let Some(entry) = self.observed.first_entry() {
            if *entry.key() >= self.applied_next {
                break;
            }
            entry.remove();
        }
        let keeps = instance >= self.applied_next
            && instance.0 < self.applied_next.0 + ACCEPT_WINDOW_INSTANCES
            && !self.chosen.contains_key(&instance);
        if keeps {
            match self.observed.get(&instance) {
                Some((seen, _)) if *seen > ballot => {}
                _ => {
                    self.observed.insert(instance, (ballot, value));
                }
            }
        }
        self.on_commit(ctx, from, ballot, chosen_through);
    }

    pub(super) fn on_catchup_request(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        first: Instance,
        request: u64,
        until: Instance,
        window: Window,
    ) {
        if self.is_leader() && until > self.fill_until {
            // A re-learning peer needs instances chosen up to `until`; bounded by the accept
            // window so that a bad request cannot make a leader open without end.
            let bound = Instance(self.applied_next.0 + ACCEPT_WINDOW_INSTANCES);
            self.fill_until = until.min(bound);
        }
        // A stream may go back to its applied point, at most a window below what it asks.
        let need = Instance(
            first
                .0
                .saturating_sub(ctx.config.catchup_window_instances.into()),
        );
        self.note_peer_need(ctx, from, need);
        // The requester's window, within this node's own caps.
        let window = Window {
            entries: window.entries.max(1),
            bytes: window
                .bytes
                .clamp(1, super::super::CATCHUP_ANSWER_BYTES_MAX as usize),
        };
        let in_memory = self
            .chosen
            .first_key_value()
            .map_or(self.applied_next, |(i, _)| *i)
            .min(self.applied_next);
        if first < in_memory && first >= self.serve_base(ctx) {
            // Older than what memory keeps, but in the log: the driver reads it from storage
            // (within its per-round read budget) and calls `serve_read` (streaming catch-up
            // from the WAL).
            ctx.stats.catchup_log_reads += 1;
            ctx.out.reads.push(ReadRequest {
                group: self.id,
                to: from,
                request,
                first,
                end: in_memory,
                entries_max: window.entries,
                bytes_max: window.bytes,
                asked_end: Instance(first.0.saturating_add(window.entries as u64)),
            });
            return;
        }
        self.serve_entries(ctx, from, request, first, Vec::new(), window, None);
    }

    /// Answers a catch-up request with `read` (values the driver read from storage, from
    /// `first` on, consecutive) followed by what memory holds, within the requester's
    /// `window`, in as many replies as the per-reply bounds need. Every reply names where the
    /// whole answer ends (`served_end`); `continues_to` (a read the driver continues in a
    /// later round) names it instead, and memory adds nothing after `read`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn serve_entries(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        request: u64,
        first: Instance,
        read: Vec<(Instance, Bytes)>,
        window: Window,
        continues_to: Option<Instance>,
    ) {
        let budget = (ctx.config.message_bytes_max as usize).min(CATCHUP_BYTES_MAX);
        // (entries, checksum through the last one) per reply.
        let mut replies: Vec<(Vec<(Instance, Bytes)>, u32)> = Vec::new();
        let mut entries = Vec::new();
        let mut bytes = message::CATCHUP_REPLY_HEADER_BYTES;
        let mut checksum = 0;
        let mut total_entries = 0usize;
        let mut total_bytes = 0usize;
        let mut next = first;
        let mut read = read.into_iter().peekable();
        loop {
            // The next value: from what the driver read, else from memory.
            let (instance, value, from_log) = match read.peek() {
                Some((instance, _)) if *instance == next => {
                    let (instance, value) = read.next().expect("peeked");
                    (instance, value, true)
                }
                _ if continues_to.is_some() => break, // the driver reads on later
                _ => match self.chosen.get(&next) {
                    Some(value) => (next, value.clone(), false),
                    None => break, // below what memory keeps and not read from the log
                },
            };
            if instance >= self.applied_next
                || total_entries >= window.entries
                || (total_bytes + value.len() > window.bytes && total_entries > 0)
            {
                break;
            }
            let grown = bytes + message::catchup_entry_bytes(value.len());
            if entries.len() >= CATCHUP_BATCH_MAX || (grown > budget && !entries.is_empty()) {
                replies.push((std::mem::take(&mut entries), checksum));
                bytes = message::CATCHUP_REPLY_HEADER_BYTES;
            }
            bytes += message::catchup_entry_bytes(value.len());
            // Older than the checksums kept: the reply carries no check (0); the live edge's
            // checksums (Commits, later replies) still compare.
            checksum = match self.checksums.get(&instance) {
                Some(checksum) => *checksum,
                None if from_log => 0,
                None => unreachable!("an applied instance in memory has a checksum"),
            };
            if from_log {
                ctx.stats.catchup_entries_from_log += 1;
            }
            total_entries += 1;
            total_bytes += value.len();
            entries.push((instance, value));
            next = Instance(instance.0 + 1);
        }
        if !entries.is_empty() || replies.is_empty() {
            replies.push((entries, checksum));
        }
        ctx.stats.catchup_entries_served += total_entries as u64;
        ctx.stats.catchup_replies_sent += replies.len() as u64;
        for (entries, checksum) in replies {
            ctx.send(
                self.id,
                from,
                Message::CatchupReply {
                    request,
                    applied_next: self.applied_next,
                    high: self.held_end(),
                    log_base: self.serve_base(ctx),
                    relearning: self.relearn.is_some(),
                    state_lost: self.relearn.as_ref().is_some_and(|r| r.lost),
                    promised: self.promised,
                    entries,
                    served_end: continues_to.unwrap_or(next),
                    checksum,
                },
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_catchup_reply(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        request: u64,
        report: Report,
        entries: Vec<(Instance, Bytes)>,
        served_end: Instance,
        checksum: u32,
    ) {
        // An empty answer to a request from beyond this replica's applied point (a later part
        // of the window) says nothing about what this replica needs now.
        let ahead = entries.is_empty() && served_end > self.applied_next;
        match &mut self.catchup_stream {
            Some(_) if ahead => {}
            Some(stream) if stream.peer == from => {
                if entries.is_empty() {
                    // The peer has nothing from the asked point on: the stream ends here.
                    self.catchup_stream = None;
                    self.catchup_deadline = None;
                } else {
                    // Progress: the stream lives on (its deadline counts from the last value).
                    stream.progress_at = ctx.now;
                    self.catchup_deadline = Some(Tick(ctx.now.0 + ctx.config.retransmit_ticks));
                    let asked = stream.requests.iter().position(|(id, _, _)| *id == request);
                    if let Some(at) = asked {
                        let (_, _, end) = stream.requests[at];
                        if served_end < end {
                            // The answer stopped short (the peer's limits, or its end): the
                            // latest request's end moves back (the next one asks from there);
                            // an earlier one's gap is asked for at once.
                            if at + 1 == stream.requests.len() {
                                stream.asked_end = served_end;
                                stream.requests.remove(at);
                            } else {
                                let gap = (served_end, end);
                                stream.requests.remove(at);
                                self.ask_stream(ctx, from, gap.0, gap.1);
                            }
                        }
                    }
                }
            }
            Some(_) => {} // another peer's stream is in progress: it keeps its deadline
            None => self.catchup_deadline = None,
        }
        self.chosen_heard = self.chosen_heard.max(report.applied_next);
        if entries.is_empty() && !ahead && report.applied_next > self.applied_next {
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
            // A reply with checksum 0 carries no check (an entry read from the log below the
            // checksums kept, or the one-entry reply to an Accept).
            if checksum != 0 {
                self.check(ctx, last, checksum, from);
            }
        }
        // Only voters' reports count: a follower node never voted
        // (docs/PROTOCOL.md#follower-nodes).
        let voter = self.may_vote(from);
        if let Some(relearn) = &mut self.relearn {
            #[allow(unused_mut)]
            let mut matches = request != 0 && request == relearn.request;
            #[cfg(feature = "sim-bugs")]
            if ctx.bugs.relearn_target_too_low {
                matches = true; // pre-fix: any reply counted, request ids did not exist
            }
            if relearn.target.is_none() && from != ctx.me && matches && voter {
                relearn.reports.insert(from, report);
            }
        }
        self.relearn_evaluate(ctx);
        self.finish_relearn(ctx);
        if self.applied_next < report.applied_next && from != ctx.me {
            self.request_catchup(ctx, from, report.applied_next);
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
        self.catchup_stream = None;
        self.catchup_unavailable = Some((peer, theirs.max(self.applied_next)));
    }

    /// Streaming catch-up from `peer` (docs/PROTOCOL.md#streaming-catch-up): keeps up to
    /// `catchup_window_instances` values asked for beyond the applied point, asking for the
    /// next half window when half of it has been applied. One stream at a time: while a
    /// stream from another peer makes progress, this does nothing (two peers never serve the
    /// same values), and during a back-off nothing is asked.
    ///
    /// `theirs` is what this replica knows of the peer's applied point (its last report, or
    /// the leader's `chosen_through`): nothing at or beyond it is asked for.
    pub(super) fn request_catchup(&mut self, ctx: &mut Ctx<'_>, peer: NodeId, theirs: Instance) {
        if peer == ctx.me || self.install.is_some() {
            return;
        }
        let window = u64::from(ctx.config.catchup_window_instances);
        let pending = self.catchup_deadline.is_some();
        let asked_end = match &self.catchup_stream {
            Some(stream) if stream.peer == peer => {
                let asked_end = stream.asked_end.max(self.applied_next);
                if pending && asked_end.0 - self.applied_next.0 > window / 2 {
                    return; // more than half the window is still on its way
                }
                asked_end
            }
            _ if pending => return, // another stream, or a back-off
            _ => self.applied_next,
        };
        // Each request asks for at most half the window.
        let window_end = Instance(self.applied_next.0 + window)
            .min(Instance(asked_end.0 + window.div_ceil(2)))
            .min(theirs);
        if asked_end >= window_end {
            return;
        }
        let (progress_at, requests) = match self.catchup_stream.take() {
            Some(stream) if stream.peer == peer => (stream.progress_at, stream.requests),
            _ => (ctx.now, VecDeque::new()),
        };
        self.catchup_stream = Some(Stream {
            peer,
            requests,
            asked_end: window_end,
            progress_at,
        });
        self.ask_stream(ctx, peer, asked_end, window_end);
    }

    /// Sends one request of the catch-up stream, for `[first, end)`, and tracks it.
    fn ask_stream(&mut self, ctx: &mut Ctx<'_>, peer: NodeId, first: Instance, end: Instance) {
        let Some(stream) = &mut self.catchup_stream else {
            return;
        };
        self.stream_requests += 1;
        let request = STREAM_REQUEST_BIT | self.stream_requests;
        let applied_next = self.applied_next;
        stream.requests.retain(|(_, _, end)| *end > applied_next);
        if stream.requests.len() >= STREAM_REQUESTS_MAX {
            stream.requests.pop_front();
        }
        stream.requests.push_back((request, first, end));
        self.catchup_deadline = Some(Tick(ctx.now.0 + ctx.config.retransmit_ticks));
        let bytes = (ctx.config.catchup_window_bytes / 2) as usize;
        ask_catchup(
            ctx,
            self.id,
            peer,
            first,
            request,
            Instance(0),
            Window {
                entries: (end.0 - first.0) as usize,
                bytes,
            },
        );
    }

    /// Whether a catch-up stream brought values within the last election timeout while this
    /// replica is still behind: it is being brought forward and does not stand for election.
    pub(super) fn catching_up(&self, now: Tick, election_timeout: u64) -> bool {
        self.catchup_stream
            .as_ref()
            .is_some_and(|s| now.0 < s.progress_at.0.saturating_add(election_timeout))
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
        self.observed.remove(&instance);
        // The mark carries the value unless this node's Accept record already holds it.
        // The mark names that record's ballot, so restart can tell it from an older Accept
        // when the newer one was damaged.
        let (accepted, payload) = match self.accepted.remove(&instance) {
            Some((ballot, accepted)) if accepted == value => (ballot, Bytes::new()),
            _ => (Ballot::ZERO, value.clone()),
        };
        // A value this replica does not hold in an Accept record is logged only within the
        // storage's room (docs/PROTOCOL.md#storage-full); beyond it, it is applied without
        // being logged (a restart before the next checkpoint fetches it again). It voted for
        // none of those, so forgetting them is safe. What a re-learn learns is always logged:
        // its repair record vouches for it.
        #[allow(unused_mut)]
        let mut log =
            payload.is_empty() || self.relearn.is_some() || payload.len() as u64 <= *ctx.log_room;
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.log_ignores_room {
            log = true;
        }
        if log {
            if !payload.is_empty() && self.relearn.is_none() && *ctx.log_room != u64::MAX {
                *ctx.log_room = ctx.log_room.saturating_sub(payload.len() as u64);
            }
            ctx.defer_mark(Record {
                kind: RecordKind::Chosen,
                group: self.id,
                instance,
                promised: self.promised,
                accepted,
                payload,
            });
        } else {
            ctx.stats.chosen_unlogged_storage_short += 1;
            self.note_unlogged(instance);
        }
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
            if value.get(..4) == Some(&value::CONFIG_MARKER.to_le_bytes()[..]) {
                let value = value.clone();
                self.config_applied(ctx, instance, &value);
            }
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
