//! The acceptor role of a group (docs/PROTOCOL.md#acceptor): promises, acceptances and the
//! Promise report, each durable before the reply that depends on it leaves.
use super::*;

impl Group {
    /// Refuses a Prepare or Accept below the promise; the reply carries the higher ballot.
    pub(super) fn reject(&self, ctx: &mut Ctx<'_>, from: NodeId, ballot: Ballot) {
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

    pub(super) fn on_prepare(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        first: Instance,
    ) {
        if ballot > self.promised && self.lease_refuses(ctx, from) {
            // This acceptor granted another node the master lease (or restarted within a
            // lease's length): no promise to anyone else until the grant ends.
            ctx.stats.prepares_refused_lease += 1;
            return;
        }
        if ballot > self.promised && self.leader_alive(ctx, from) {
            // Leader stickiness: a live leadership is not deposed by a node that merely
            // timed out (it restarted, or was cut off); no reply, no promise.
            ctx.stats.prepares_ignored_leader_alive += 1;
            return;
        }
        self.observe(ctx, ballot);
        if self.relearn.is_some() {
            return; // Paxos Made Live: no vote until re-learned.
        }
        if ballot < self.promised {
            self.reject(ctx, from, ballot);
            return;
        }
        // A Promise must report every value this acceptor accepted or knows chosen from
        // `first` on. Below what memory keeps of its applied values (its log base after a
        // restart or a checkpoint install, or the retention bound) it cannot: no vote; the
        // candidate gets those values by catch-up instead and stands again from further on.
        let reported_from = self
            .chosen
            .first_key_value()
            .map_or(self.applied_next, |(i, _)| *i)
            .min(self.applied_next);
        #[allow(unused_mut)]
        let mut incomplete = first < reported_from;
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.promise_below_base {
            incomplete = false;
        }
        if incomplete {
            ctx.stats.promises_refused_behind_base += 1;
            self.on_catchup_request(ctx, from, first, 0, Instance(0), Window::one_reply());
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

    pub(super) fn persist_promise(&mut self, ctx: &mut Ctx<'_>, first: Instance) -> Lsn {
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.forget_promise {
            return ctx.last_lsn();
        }
        ctx.append(Record {
            kind: RecordKind::Promise,
            group: self.id,
            // Never below the log base: the WAL may purge this group's records below it, and
            // restart takes a promise from any Promise record whatever its instance.
            instance: first.max(self.log_base),
            promised: self.promised,
            accepted: Ballot::ZERO,
            payload: Bytes::new(),
        })
    }

    /// What this acceptor holds from `first` on, for a Promise, in instance order, within the
    /// message byte bound and `PROMISE_SPAN_INSTANCES`; `truncated` when more is held beyond
    /// the last entry reported (the leader then continues phase 1 from there).
    pub(super) fn promise_entries(
        &self,
        ctx: &Ctx<'_>,
        first: Instance,
    ) -> (Vec<PromiseEntry>, bool) {
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

    pub(super) fn on_accept(
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
        #[allow(unused_mut)]
        let mut below = ballot < self.promised;
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.accept_below_promise {
            below = false; // the acceptor forgets to compare (and lowers its promise)
        }
        if below {
            self.reject(ctx, from, ballot);
            return;
        }
        let raised = ballot > self.promised;
        self.promised = ballot;
        self.leader_contact(ctx, ballot);
        let mut votes = instance >= self.applied_next
            && !self.chosen.contains_key(&instance)
            && instance.0 < self.applied_next.0 + ACCEPT_WINDOW_INSTANCES;
        // A leader's own vote on its own instance is never withheld: it admitted the proposal
        // when it had room (the runtime reserves it), and no one sends it that Accept again.
        if votes && ctx.storage_full && from != ctx.me {
            #[cfg(feature = "sim-bugs")]
            if ctx.bugs.vote_while_full {
                // The bug: a vote with nothing written to justify it.
                ctx.stats.accepted_sent += u64::from(from != ctx.me);
                ctx.send(
                    self.id,
                    from,
                    Message::Accepted {
                        ballot,
                        instance,
                        value_crc: crc32fast::hash(&value),
                    },
                );
                self.on_commit(ctx, from, ballot, chosen_through);
                return;
            }
            // No room for the value: no vote (a lost message to the leader, which sends the
            // Accept again); the promise raise below is persisted on its own (a small record).
            ctx.stats.accepts_withheld_storage_full += 1;
            votes = false;
        }
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
                    log_base: self.serve_base(ctx),
                    relearning: false,
                    state_lost: false,
                    promised: self.promised,
                    entries: vec![(instance, chosen)],
                    served_end: Instance(instance.0 + 1),
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

    pub(super) fn chosen_value(&self, instance: Instance) -> Option<Bytes> {
        self.chosen.get(&instance).cloned()
    }
}
