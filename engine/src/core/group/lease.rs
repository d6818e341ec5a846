//! The master lease and linearizable reads (docs/PROTOCOL.md#master-lease, #reads): the
//! acceptor's grant, the leader's lease rounds and the reads that wait on them.
//!
//! A leader sends a lease round (a `Commit` with a round number) every heartbeat interval and
//! whenever a read-index read waits for one. A follower answers every round with a
//! `CommitAck` that echoes it, and grants the leader its lease with that answer unless its
//! grant to another node still runs: for `master_lease_ticks` of its own clock it then
//! promises no other node and grants no other node. The leader is master while a quorum
//! (itself included) granted one of its rounds sent less than `lease_usable_ticks` ago on its
//! own clock. Grants live in memory: a replica that restarts with state grants nobody (and
//! promises nobody) for a whole lease first, since it may have granted one before the crash.
use super::*;
use crate::core::{MasterChange, ReadMode, ReadReady};

/// Lease rounds whose send time a leader remembers (older ones cannot make a valid lease).
const LEASE_ROUNDS_KEPT: usize = 256;

/// A leader's lease rounds and the answers to them (reset with every leadership).
#[derive(Debug, Default)]
pub(super) struct LeaderLease {
    /// The next round number (rounds start at 1; 0 on the wire means "no round").
    next_round: u64,
    /// Recent rounds and the tick each was sent at, oldest first.
    sent: VecDeque<(u64, Tick)>,
    /// The highest round each member (this node included) answered at this ballot.
    acked: BTreeMap<NodeId, u64>,
    /// The highest round each member (this node included) granted the lease with.
    granted: BTreeMap<NodeId, u64>,
}

/// A read waiting to be served (it arrived while this node led).
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingRead {
    id: ProposalId,
    /// A read-index read waits for a quorum to answer this round (sent after it arrived);
    /// 0 for a lease read (confirmed on arrival).
    round: u64,
    /// It is served once the applied point reaches this: every value chosen before it arrived
    /// lies below.
    need: Instance,
}

impl LeaderLease {
    fn new() -> LeaderLease {
        LeaderLease {
            next_round: 1,
            ..LeaderLease::default()
        }
    }

    /// The highest round that a quorum of `voters` (this node included when it is one)
    /// answered (`acked`) or granted (`granted`).
    fn quorum_round(map: &BTreeMap<NodeId, u64>, voters: &[NodeId]) -> u64 {
        let mut rounds: Vec<u64> = voters.iter().filter_map(|v| map.get(v).copied()).collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = voters.len() / 2 + 1;
        rounds.get(quorum - 1).copied().unwrap_or(0)
    }

    /// The highest round that a quorum of every configuration in `configs` answered or
    /// granted (a master must hold its lease in the configuration it serves from and in every
    /// one it already knows will follow, docs/PROTOCOL.md#membership-change).
    fn quorum_round_all(map: &BTreeMap<NodeId, u64>, configs: &[membership::ConfigEntry]) -> u64 {
        configs
            .iter()
            .map(|c| LeaderLease::quorum_round(map, &c.members.voters))
            .min()
            .unwrap_or(0)
    }

    fn sent_at(&self, round: u64) -> Option<Tick> {
        self.sent
            .iter()
            .find(|(r, _)| *r == round)
            .map(|(_, at)| *at)
    }
}

impl Group {
    /// Whether this replica's acceptor refuses `from` a promise (or a grant) now: it granted
    /// another node the master lease and the grant still runs, or it restarted with state
    /// within a lease's length (it may have granted one before the crash).
    pub(super) fn lease_refuses(&self, ctx: &Ctx<'_>, from: NodeId) -> bool {
        if self.grant_after_restart {
            return ctx.config.master_lease_ticks > 0;
        }
        self.grant
            .is_some_and(|(holder, until)| ctx.now < until && holder != Some(from))
    }

    /// A replica that restarted with state starts its restart grant (to nobody) at its first
    /// tick (the core's clock before that is not this start's).
    pub(super) fn lease_first_tick(&mut self, ctx: &Ctx<'_>) {
        if self.grant_after_restart {
            self.grant_after_restart = false;
            if ctx.config.master_lease_ticks > 0 {
                self.grant = Some((None, Tick(ctx.now.0 + ctx.config.master_lease_ticks)));
            }
        }
    }

    /// The acceptor's side of a lease round from `to`: grants (or renews) the lease unless a
    /// grant to another node still runs. Returns whether it granted.
    fn grant_lease(&mut self, ctx: &mut Ctx<'_>, to: NodeId) -> bool {
        let lease = ctx.config.master_lease_ticks;
        if lease == 0 {
            return false;
        }
        if self.lease_refuses(ctx, to) {
            ctx.stats.lease_grants_refused += 1;
            return false;
        }
        ctx.stats.lease_grants += 1;
        self.grant = Some((Some(to), Tick(ctx.now.0 + lease)));
        true
    }

    /// A follower got a leader's `Commit` with lease round `round` at `ballot` (at least its
    /// promise): it answers, granting the lease when it may.
    pub(super) fn on_lease_round(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        round: u64,
    ) {
        let granted = self.grant_lease(ctx, from);
        ctx.send(
            self.id,
            from,
            Message::CommitAck {
                ballot,
                lease: round,
                granted,
            },
        );
    }

    /// A leader hears a follower's answer to one of its lease rounds.
    pub(super) fn on_commit_ack(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        round: u64,
        granted: bool,
    ) {
        let Role::Leader { ballot: mine, .. } = self.role else {
            return;
        };
        if ballot != mine || round == 0 {
            return;
        }
        let Some(lease) = &mut self.lease else {
            return;
        };
        if round >= lease.next_round {
            return; // not a round of this leadership
        }
        let acked = lease.acked.entry(from).or_insert(0);
        *acked = (*acked).max(round);
        if granted {
            let granted = lease.granted.entry(from).or_insert(0);
            *granted = (*granted).max(round);
        }
    }

    /// A new leadership starts its lease afresh (rounds and answers of an old one never count).
    pub(super) fn lease_start_leading(&mut self, ctx: &Ctx<'_>) {
        self.lease = Some(LeaderLease::new());
        // With leases on, the first round leaves with the first flush: a new leader becomes
        // master (and can serve lease reads) one round trip after it won, not a heartbeat later.
        self.round_wanted = ctx.config.master_lease_ticks > 0;
    }

    /// Leaving leadership: the lease ends and reads that wait fail (they were never served;
    /// the client may retry them elsewhere).
    pub(super) fn lease_stop_leading(&mut self, ctx: &mut Ctx<'_>) {
        self.lease = None;
        let leader_hint = self.leader_hint.filter(|n| *n != ctx.me);
        for read in std::mem::take(&mut self.reads) {
            ctx.stats.reads_failed += 1;
            ctx.out.results.push(ProposalResult::Failed {
                id: read.id,
                group: self.id,
                reason: FailReason::NotLeader { leader_hint },
            });
        }
        self.round_wanted = false;
    }

    /// Sends a lease round now (a Commit to every peer, with this node's own grant and answer).
    fn send_lease_round(&mut self, ctx: &mut Ctx<'_>, ballot: Ballot) {
        let me = ctx.me;
        let self_grant = self.grant_lease(ctx, me);
        let Some(lease) = &mut self.lease else {
            return;
        };
        let round = lease.next_round;
        lease.next_round += 1;
        lease.sent.push_back((round, ctx.now));
        let horizon = ctx
            .config
            .master_lease_ticks
            .max(ctx.config.election_timeout_ticks);
        while lease.sent.len() > LEASE_ROUNDS_KEPT
            || lease
                .sent
                .front()
                .is_some_and(|(_, at)| at.0.saturating_add(horizon) < ctx.now.0)
        {
            lease.sent.pop_front();
        }
        lease.acked.insert(me, round);
        if self_grant {
            lease.granted.insert(me, round);
        }
        ctx.stats.lease_rounds_sent += 1;
        self.round_wanted = false;
        self.last_round_at = ctx.now;
        self.last_broadcast = ctx.now;
        self.commit_dirty = false;
        let checksum = self.checksum_before(self.applied_next);
        ctx.broadcast_peers(
            self.id,
            &Message::Commit {
                ballot,
                chosen_through: self.applied_next,
                checksum,
                lease: round,
            },
        );
    }

    /// The tick of this node's clock at which its master lease ends (exclusive), if it is
    /// master now: it leads, and a quorum (itself included) granted one of its rounds sent less
    /// than `lease_usable_ticks` ago.
    pub(super) fn master_until(&self, ctx: &Ctx<'_>) -> Option<Tick> {
        #[cfg(feature = "sim-bugs")]
        let ignore_drift = ctx.bugs.lease_ignores_drift;
        #[cfg(not(feature = "sim-bugs"))]
        let ignore_drift = false;
        self.master_until_at(ctx.config, ctx.now, ignore_drift)
    }

    /// `master_until` at `now` (`ignore_drift`: the injected bug `lease-ignores-drift`).
    pub fn master_until_at(
        &self,
        config: &crate::core::Config,
        now: Tick,
        ignore_drift: bool,
    ) -> Option<Tick> {
        if !matches!(self.role, Role::Leader { .. }) || self.stopped {
            return None;
        }
        let lease = self.lease.as_ref()?;
        let round =
            LeaderLease::quorum_round_all(&lease.granted, self.configs_from(self.applied_next));
        if round == 0 {
            return None;
        }
        let usable = if ignore_drift {
            // The lease counted as long on the master's clock as on the followers'.
            config.master_lease_ticks
        } else {
            config.lease_usable_ticks()
        };
        let until = Tick(lease.sent_at(round)?.0.saturating_add(usable));
        (now < until).then_some(until)
    }

    /// A linearizable read arrives (docs/PROTOCOL.md#reads). Refused at once unless this node
    /// leads; otherwise confirmed by the lease now, or after a read-index round.
    pub fn read(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ProposalId,
        mode: ReadMode,
    ) -> Result<(), FailReason> {
        if let ReadMode::Stale { max_ticks } = mode {
            if self.stopped {
                return Err(FailReason::Stopped);
            }
            let fresh = self.is_leader()
                || self
                    .fresh_at
                    .is_some_and(|at| ctx.now.0 <= at.0.saturating_add(max_ticks));
            if !fresh {
                ctx.stats.reads_refused_stale += 1;
                return Err(FailReason::TooStale);
            }
            ctx.stats.reads_stale += 1;
            ctx.out.reads_ready.push(ReadReady {
                id,
                group: self.id,
                mode,
            });
            return Ok(());
        }
        self.refuse_unless_leading(ctx)?;
        if self.reads.len() >= ctx.config.proposal_queue_max as usize {
            return Err(FailReason::Overloaded);
        }
        // Every value chosen before now lies below this: what this leadership chose is
        // applied before its proposals are answered, and what earlier leaderships may have
        // chosen lies below the end of the window its phase 1 recovered.
        #[allow(unused_mut)]
        let mut need = self.applied_next.max(self.reads_from);
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.read_before_applied {
            need = self.applied_next; // forgets the recovered window
        }
        let by_lease = mode == ReadMode::Lease && self.master_until(ctx).is_some();
        let round = if by_lease {
            0
        } else {
            // The next round leaves at the end of this round at the latest: after the read
            // arrived.
            self.round_wanted = true;
            self.lease.as_ref().map_or(1, |l| l.next_round)
        };
        self.reads.push_back(PendingRead { id, round, need });
        Ok(())
    }

    /// End of a round, as leader: sends a lease round when one is due (every heartbeat interval
    /// with leases on, or for a read that waits), serves the reads that are confirmed and
    /// applied far enough, and reports a change of master status.
    pub(super) fn lease_flush(&mut self, ctx: &mut Ctx<'_>, ballot: Ballot) {
        let renew = ctx.config.master_lease_ticks > 0
            && ctx.now.0 >= self.last_round_at.0 + ctx.config.heartbeat_ticks;
        if self.round_wanted || renew {
            self.send_lease_round(ctx, ballot);
        }
        if !self.reads.is_empty() {
            let confirmed = self.lease.as_ref().map_or(0, |l| {
                LeaderLease::quorum_round_all(&l.acked, self.configs_from(self.applied_next))
            });
            // Reads wait while a cut phase 1 is being continued: values beyond the cut may
            // have been chosen by an earlier leadership and are not yet recovered.
            let recovered = self.phase1_end.is_none() && self.continuation.is_none();
            let applied = self.applied_next;
            // A continued phase 1 may have recovered more since a read arrived: those values
            // were chosen (if at all) before this leadership, so before the read.
            #[allow(unused_mut)]
            let mut recovered_end = self.reads_from;
            #[cfg(feature = "sim-bugs")]
            if ctx.bugs.read_before_applied {
                recovered_end = Instance(0);
            }
            let group = self.id;
            let mut waiting = VecDeque::with_capacity(self.reads.len());
            for read in std::mem::take(&mut self.reads) {
                if recovered && read.round <= confirmed && applied >= read.need.max(recovered_end) {
                    let mode = if read.round == 0 {
                        ctx.stats.reads_lease += 1;
                        ReadMode::Lease
                    } else {
                        ctx.stats.reads_index += 1;
                        ReadMode::Index
                    };
                    ctx.out.reads_ready.push(ReadReady {
                        id: read.id,
                        group,
                        mode,
                    });
                } else {
                    waiting.push_back(read);
                }
            }
            self.reads = waiting;
        }
        self.note_master(ctx);
    }

    /// Reports a change of this node's master status (an output the runtime turns into an
    /// event) and keeps the lease end for `status`.
    pub(super) fn note_master(&mut self, ctx: &mut Ctx<'_>) {
        let until = self.master_until(ctx);
        if until.is_some() != self.master_until_seen.is_some() {
            if until.is_some() {
                ctx.stats.master_terms += 1;
            }
            ctx.out.master_changes.push(MasterChange {
                group: self.id,
                master: until.is_some(),
                until,
            });
        }
        self.master_until_seen = until;
    }

    /// The lease this replica's acceptor granted last, if any: (holder, end), the holder None
    /// after a restart. It may have ended: compare the end with the clock.
    pub fn grant_raw(&self) -> Option<(Option<NodeId>, Tick)> {
        self.grant
    }
}
