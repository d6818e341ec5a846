//! A group's membership through its log (docs/PROTOCOL.md#membership-change): the history of
//! configurations, which one is in effect at an instance, quorums, and changes as they are
//! applied, proposed and persisted.
//!
//! A membership-change value chosen at instance `c` is in effect from `c + MEMBERSHIP_DELAY`
//! on (Lamport's alpha): every instance has exactly one configuration, fixed by the values
//! chosen at least `MEMBERSHIP_DELAY` instances before it, which a leader has applied before it
//! opens the instance (it opens `i` only below `applied_next + pipeline_depth`).
use super::*;

/// Instances between a membership change and the first instance it governs (alpha): at least
/// the deepest pipeline, so that a leader always knows the configuration of an instance
/// before it opens it.
pub const MEMBERSHIP_DELAY: u64 = PIPELINE_MAX as u64;

/// One configuration of a group: in effect from `from` on (until the next entry's `from`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConfigEntry {
    /// The first instance it governs.
    pub from: Instance,
    /// Who votes and who follows.
    pub members: Membership,
}

/// A configuration history's encoding (log-base records, checkpoint transfer): `u32` count,
/// then per entry `u64 from`, `u32` voter count, voters, `u32` follower count, followers.
pub(crate) fn encode_history(entries: &[ConfigEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        out.extend_from_slice(&entry.from.0.to_le_bytes());
        for list in [&entry.members.voters, &entry.members.followers] {
            out.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for node in list {
                out.extend_from_slice(&node.0.to_le_bytes());
            }
        }
    }
    out
}

/// Parses [`encode_history`]'s bytes (None when they do not follow the layout, an entry has
/// no voter, or the entries are not in increasing `from` order).
pub(crate) fn decode_history(bytes: &[u8]) -> Option<Vec<ConfigEntry>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let slice = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(slice)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    if count > 1024 {
        return None;
    }
    let mut entries: Vec<ConfigEntry> = Vec::with_capacity(count);
    for _ in 0..count {
        let from = Instance(u64::from_le_bytes(take(8)?.try_into().ok()?));
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            if n > value::CONFIG_NODES_MAX {
                return None;
            }
            for _ in 0..n {
                list.push(NodeId(u32::from_le_bytes(take(4)?.try_into().ok()?)));
            }
        }
        let [voters, followers] = lists;
        if voters.is_empty() || entries.last().is_some_and(|e| e.from >= from) {
            return None;
        }
        entries.push(ConfigEntry {
            from,
            members: Membership { voters, followers },
        });
    }
    (at == bytes.len() && !entries.is_empty()).then_some(entries)
}

/// The membership a change value names, if it is a valid one: at least one voter, no node
/// twice.
pub(crate) fn config_value(value: &[u8]) -> Option<Membership> {
    let (voters, followers) = value::config(value)?;
    let members = Membership {
        voters: voters.into_iter().map(NodeId).collect(),
        followers: followers.into_iter().map(NodeId).collect(),
    };
    valid(&members).then_some(members)
}

/// At least one voter and no node listed twice.
pub(crate) fn valid(members: &Membership) -> bool {
    let distinct: BTreeSet<NodeId> = members.all().collect();
    !members.voters.is_empty() && distinct.len() == members.voters.len() + members.followers.len()
}

/// The configuration of `configs` (oldest first) in effect at `instance` (a free function, so
/// that callers holding another field of the group mutably can use it).
pub(crate) fn config_in(configs: &[ConfigEntry], instance: Instance) -> &Membership {
    let index = configs.partition_point(|c| c.from <= instance);
    &configs[index.saturating_sub(1)].members
}

/// Whether a vote (Promise or Accepted) of `from` counts in `config`: only its voters'.
pub(crate) fn vote_counts(ctx: &Ctx<'_>, config: &Membership, from: NodeId) -> bool {
    #[cfg(feature = "sim-bugs")]
    if ctx.bugs.follower_votes {
        return true; // any node's vote counts
    }
    let _ = ctx;
    config.is_voter(from)
}

/// Majority of `members`' voters.
pub(crate) fn quorum_of(members: &Membership) -> usize {
    members.voters.len() / 2 + 1
}

impl Group {
    /// The configuration in effect at `instance`.
    pub(super) fn config_at(&self, instance: Instance) -> &Membership {
        config_in(&self.configs, instance)
    }

    /// The configurations in effect from `instance` on, as far as this replica knows.
    pub(super) fn configs_from(&self, instance: Instance) -> &[ConfigEntry] {
        let index = self.configs.partition_point(|c| c.from <= instance);
        &self.configs[index.saturating_sub(1)..]
    }

    /// The newest configuration this replica knows.
    pub(super) fn latest_config(&self) -> &Membership {
        &self
            .configs
            .last()
            .expect("a group always has a configuration")
            .members
    }

    /// The first instance after `instance` where another configuration takes over (among the
    /// changes this replica applied).
    pub(super) fn boundary_after(&self, instance: Instance) -> Option<Instance> {
        self.configs
            .iter()
            .map(|c| c.from)
            .find(|from| *from > instance)
    }

    /// Whether this node acts as an acceptor now: a voter of the configuration at its applied
    /// point or of a later one it knows.
    pub(super) fn votes(&self, me: NodeId) -> bool {
        self.configs_from(self.applied_next)
            .iter()
            .any(|c| c.members.is_voter(me))
    }

    /// Whether this node votes now (see [`Group::votes`]); a node that owes a re-learn from
    /// this start (lost or damaged state found while it did not vote) starts it first, so that
    /// it never votes before it has re-learned, whichever way it learned that it votes (a
    /// change applied, a checkpoint installed).
    pub(super) fn acts_as_voter(&mut self, ctx: &mut Ctx<'_>) -> bool {
        if !self.votes(ctx.me) {
            return false;
        }
        if self.owed_pending && self.relearn.is_none() {
            let (lost, floor) = self.relearn_owed.unwrap_or((false, self.applied_next));
            if !matches!(self.role, Role::Follower) {
                self.step_down(ctx);
            }
            let floor = floor.max(self.applied_next);
            self.start_relearn(ctx, lost, floor);
        }
        true
    }

    /// This group owes a re-learn and does not vote until it has done it (for checkers).
    pub fn owes_relearn(&self) -> bool {
        self.owed_pending
    }

    /// Whether `node` votes in a configuration from this replica's applied point on (its votes
    /// may count here).
    pub(super) fn may_vote(&self, node: NodeId) -> bool {
        self.votes(node)
    }

    /// What re-learning needs (docs/PROTOCOL.md#re-learning): per configuration from the
    /// applied point on that counts this node as a voter, its voters and how many of them but
    /// this one must report (`voters - quorum + 1`: with any quorum but this node they share a
    /// member).
    pub(super) fn relearn_needs(&self, me: NodeId) -> Vec<(Vec<NodeId>, usize)> {
        self.configs_from(self.applied_next)
            .iter()
            .filter(|c| c.members.is_voter(me))
            .map(|c| {
                let voters = &c.members.voters;
                // A configuration whose only voter is this node: no one else voted there.
                let needed = (voters.len() - quorum_of(&c.members) + 1).min(voters.len() - 1);
                (voters.clone(), needed)
            })
            .collect()
    }

    /// The voters of the configurations from the applied point on but this one (whom a
    /// re-learning replica and a candidate ask).
    pub(super) fn known_voters(&self, me: NodeId) -> Vec<NodeId> {
        let nodes: BTreeSet<NodeId> = self
            .configs_from(self.applied_next)
            .iter()
            .flat_map(|c| c.members.voters.iter().copied())
            .filter(|n| *n != me)
            .collect();
        nodes.into_iter().collect()
    }

    /// A membership-change value was applied at `instance`: its configuration governs from
    /// `instance + MEMBERSHIP_DELAY` on. A leader opens nothing from there until a quorum of
    /// the new voters promised its ballot (a phase 1 continuation at the boundary).
    pub(super) fn config_applied(&mut self, ctx: &mut Ctx<'_>, instance: Instance, value: &[u8]) {
        let Some(members) = config_value(value) else {
            if value::config(value).is_some() {
                ctx.stats.membership_changes_invalid += 1;
            }
            return;
        };
        #[allow(unused_mut)]
        let mut delay = MEMBERSHIP_DELAY;
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.config_at_once {
            delay = 1;
        }
        let from = Instance(instance.0 + delay);
        if self.configs.last().is_some_and(|c| c.from >= from) {
            return; // replayed: already known (a log-base record carried it)
        }
        ctx.stats.membership_changes_applied += 1;
        let newly_voter = members.is_voter(ctx.me) && !self.latest_config().is_voter(ctx.me);
        self.configs.push(ConfigEntry { from, members });
        if let Some((lost, floor)) = self.relearn_owed {
            if newly_voter && self.relearn.is_none() {
                // This start lost or damaged state, and this node now learns it votes here:
                // the damage may have taken votes it gave in this configuration before.
                if !matches!(self.role, Role::Follower) {
                    self.step_down(ctx);
                }
                let floor = floor.max(self.applied_next);
                self.start_relearn(ctx, lost, floor);
            }
        }
        #[allow(unused_mut)]
        let mut prepare_at_boundary = true;
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.config_boundary_skips_prepare {
            prepare_at_boundary = false;
        }
        if self.is_leader() && prepare_at_boundary {
            self.phase1_end = Some(self.phase1_end.map_or(from, |end| end.min(from)));
        }
    }

    /// The entries a log base or an installed checkpoint at `base` must carry: the
    /// configuration in effect at `base`, and the changes applied below `base` that take effect
    /// after it (those at or above `base` come back with the values).
    pub(super) fn history_for_base(&self, base: Instance) -> Vec<ConfigEntry> {
        let horizon = base.0.saturating_add(MEMBERSHIP_DELAY);
        self.configs_from(base)
            .iter()
            .filter(|c| c.from <= base || c.from.0 < horizon)
            .cloned()
            .collect()
    }

    /// Whether the history is the cluster's initial configuration alone (the log-base record
    /// keeps its first format then).
    pub(super) fn history_is_initial(&self) -> bool {
        self.configs.len() == 1 && self.configs[0].from == Instance(0)
    }

    /// A log-base record's payload for `below` with `checksum`: the first format while the
    /// membership never changed, else with the configuration history the base needs.
    pub(super) fn base_payload(&self, below: Instance, checksum: u32) -> Vec<u8> {
        let initial = self.history_is_initial();
        let mut payload = if initial {
            BASE_TAG.to_vec()
        } else {
            BASE_TAG_CONFIGS.to_vec()
        };
        payload.extend_from_slice(&below.0.to_le_bytes());
        payload.extend_from_slice(&checksum.to_le_bytes());
        if !initial {
            payload.extend_from_slice(&encode_history(&self.history_for_base(below)));
        }
        payload
    }

    /// Opens the queued membership change as an instance of its own; an idle leader then
    /// fills up to where it governs, so that it takes effect without waiting for traffic.
    pub(super) fn open_config(&mut self, ctx: &mut Ctx<'_>) {
        let Some((id, members)) = self.config_queued.take() else {
            return;
        };
        let identity = Identity {
            node: ctx.me.0,
            incarnation: ctx.incarnation,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let voters: Vec<u32> = members.voters.iter().map(|n| n.0).collect();
        let followers: Vec<u32> = members.followers.iter().map(|n| n.0).collect();
        let instance = self.next_instance;
        ctx.stats.membership_changes_proposed += 1;
        self.insert_flight(
            value::encode_config(identity, &voters, &followers),
            vec![id],
            0,
        );
        self.fill_until = self
            .fill_until
            .max(Instance(instance.0.saturating_add(MEMBERSHIP_DELAY)));
    }

    /// Queues a membership change (docs/PROTOCOL.md#membership-change): refused when this node
    /// does not lead, the membership is invalid, or another change is queued, in flight or not
    /// in effect yet.
    pub fn propose_membership(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ProposalId,
        members: Membership,
    ) -> Result<(), FailReason> {
        self.refuse_unless_leading(ctx)?;
        if !valid(&members) {
            return Err(FailReason::BadMembership);
        }
        let in_flight = self
            .inflight
            .values()
            .any(|f| value::config(&f.value).is_some());
        let not_in_effect = self
            .configs
            .last()
            .is_some_and(|c| c.from > self.applied_next);
        if self.config_queued.is_some() || in_flight || not_in_effect {
            return Err(FailReason::MembershipChangePending);
        }
        self.config_queued = Some((id, members));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(from: u64, voters: &[u32], followers: &[u32]) -> ConfigEntry {
        ConfigEntry {
            from: Instance(from),
            members: Membership {
                voters: voters.iter().copied().map(NodeId).collect(),
                followers: followers.iter().copied().map(NodeId).collect(),
            },
        }
    }

    #[test]
    fn a_history_round_trips_and_garbage_is_refused() {
        let history = vec![entry(0, &[1, 2, 3], &[4]), entry(300, &[2, 3, 4], &[1])];
        let bytes = encode_history(&history);
        assert_eq!(decode_history(&bytes), Some(history.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(decode_history(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode_history(&long), None);
        // Entries out of order, and an entry with no voter, are refused.
        let backwards = vec![entry(300, &[1], &[]), entry(0, &[2], &[])];
        assert_eq!(decode_history(&encode_history(&backwards)), None);
        let empty = vec![entry(0, &[], &[1])];
        assert_eq!(decode_history(&encode_history(&empty)), None);
        assert_eq!(decode_history(&encode_history(&[])), None);
    }

    #[test]
    fn a_change_value_names_a_valid_membership_or_none() {
        let who = value::Identity::default();
        let ok = value::encode_config(who, &[1, 2, 3], &[4]);
        assert_eq!(
            config_value(&ok),
            Some(Membership {
                voters: vec![NodeId(1), NodeId(2), NodeId(3)],
                followers: vec![NodeId(4)],
            })
        );
        assert_eq!(config_value(&value::encode_config(who, &[], &[1])), None);
        assert_eq!(config_value(&value::encode_config(who, &[1, 1], &[])), None);
        assert_eq!(config_value(&value::encode_config(who, &[1], &[1])), None);
        assert_eq!(config_value(&value::noop()), None);
    }
}
