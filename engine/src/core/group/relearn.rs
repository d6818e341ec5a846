//! Re-learning after lost or damaged state (docs/PROTOCOL.md#re-learning): the target from
//! peers' reports, asking, finishing with a raised promise and a repair record.
use super::*;

impl Group {
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
    pub(super) fn relearn_evaluate(&mut self, ctx: &mut Ctx<'_>) {
        let depth = u64::from(ctx.config.pipeline_depth);
        let timeout = ctx.config.election_timeout_ticks;
        let now = ctx.now;
        let applied = self.applied_next;
        // Every configuration this replica may have voted in (from its applied point on, those
        // that count it as a voter) needs `voters - quorum + 1` reports from its other voters
        // (docs/PROTOCOL.md#membership-change).
        let needs = self.relearn_needs(ctx.me);
        let single = needs.iter().all(|(voters, _)| voters.len() <= 1);
        let Some(relearn) = &mut self.relearn else {
            return;
        };
        let enough = |sure_only: bool| {
            needs.iter().all(|(voters, needed)| {
                // A target from sure reports alone also needs the reporters to be a quorum
                // without this replica (with an even number of voters, `voters - quorum + 1`
                // of them cannot choose the instances up to the target on their own, and the
                // re-learning voters would wait for each other for ever); fewer pool instead.
                let quorum = voters.len() / 2 + 1;
                let needed = if sure_only && quorum < voters.len() {
                    (*needed).max(quorum)
                } else {
                    *needed
                };
                relearn
                    .reports
                    .iter()
                    .filter(|(from, r)| voters.contains(from) && (!sure_only || !r.relearning))
                    .count()
                    >= needed
            })
        };
        if single && relearn.target.is_none() {
            // A cluster of one has no one to re-learn from and no one who voted with it.
            relearn.target = Some(applied);
            relearn.pooled = true;
            return;
        }
        if relearn.target.is_some() || !enough(false) {
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
        if enough(true) {
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

    pub(super) fn finish_relearn(&mut self, ctx: &mut Ctx<'_>) {
        let Some(relearn) = &self.relearn else {
            return;
        };
        let Some(target) = relearn.target else {
            return;
        };
        if self.applied_next < target {
            return;
        }
        // Catching up may have taught this replica configurations it may have voted in whose
        // voters did not report: it asks them, and fixes a target again from all reports.
        let needs = self.relearn_needs(ctx.me);
        let covered = needs.iter().all(|(voters, needed)| {
            relearn
                .reports
                .keys()
                .filter(|from| voters.contains(from))
                .count()
                >= *needed
        });
        if !covered && !needs.iter().all(|(voters, _)| voters.len() <= 1) {
            if let Some(relearn) = &mut self.relearn {
                relearn.target = None;
                relearn.pooled = false;
                relearn.asked_at = None;
            }
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
        // the values), so the damaged runs this start found are not re-learned again at the
        // next restart. Only those runs: a record intact now and damaged later is new damage.
        let payload = repair_payload(ctx.restored_lsn, ctx.restored_damage);
        self.append_meta(ctx, payload);
        ctx.stats.groups_repaired += 1;
        self.election_deadline = Some(ctx.election_deadline());
    }

    /// While re-learning without a target, asks every peer that has not reported yet (once
    /// per retransmit interval); afterwards, the leader (or every peer when no leader is
    /// known) for catch-up up to the target, paced by the catch-up deadline.
    pub(super) fn relearn_ask(&mut self, ctx: &mut Ctx<'_>) {
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
        let voters = self.known_voters(ctx.me);
        let Some(relearn) = &mut self.relearn else {
            return;
        };
        if let Some(target) = relearn.target {
            if self.catchup_deadline.is_none() {
                self.catchup_deadline = Some(Tick(now.0 + ctx.config.retransmit_ticks));
                let peers: Vec<NodeId> = match leader {
                    Some(leader) => vec![leader],
                    None => voters,
                };
                for peer in peers {
                    ask_catchup(ctx, self.id, peer, from, 0, target, Window::one_reply());
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
        let missing: Vec<NodeId> = voters
            .into_iter()
            .filter(|n| !relearn.reports.contains_key(n))
            .collect();
        for peer in missing {
            ask_catchup(
                ctx,
                self.id,
                peer,
                from,
                request,
                Instance(0),
                Window::one_reply(),
            );
        }
    }
}
