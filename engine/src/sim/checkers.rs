//! The simulator's safety and liveness checkers: what they remember across the cluster, and
//! the checks run on every frame sent, every result, every applied value and every step.
//!
//! Owns: [`Checkers`] (chosen values, state machine digests, proposal identities, answered
//! proposals) and the checking half of the simulator. Each violation starts with the name of
//! the checker that reported it (tests assert the name). Must never do I/O.
use super::{digest_step, Sim, SmState, CHECKPOINT_ONE_IN};
use crate::core::value::{self, Identity};
use crate::core::{Chosen, GroupId, Instance, Message, NodeId, ProposalId, ProposalResult, Tick};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

/// What the checkers remember across the whole cluster.
#[derive(Default)]
pub(super) struct Checkers {
    /// The first violation.
    pub violation: Option<String>,
    /// Proposals handed to a core and not yet answered: (client, command).
    pub proposals: BTreeMap<ProposalId, (u32, Bytes)>,
    /// Proposals handed to a core, per command bytes (clients sometimes repeat bytes).
    pub proposed: BTreeMap<Bytes, u64>,
    /// Proposals answered `Failed`, per command bytes.
    pub failed: BTreeMap<Bytes, u64>,
    /// Times each command was chosen (in distinct values).
    pub chosen_commands: BTreeMap<Bytes, u64>,
    /// The value chosen at each (group, instance).
    pub chosen: BTreeMap<(GroupId, Instance), Bytes>,
    /// The state machine digest after applying each (group, instance).
    pub digests: BTreeMap<(GroupId, Instance), u64>,
    /// Where each proposal identity was chosen, per group (a group's values come from its one
    /// core, whose sequence makes an identity unique within the group).
    pub identities: BTreeMap<(GroupId, Identity), Instance>,
    /// Commands acknowledged Committed, per (group, instance): (index, command).
    pub acked: BTreeMap<(GroupId, Instance), Vec<(u32, Bytes)>>,
    /// Which proposal was told Committed for each chosen command (group, instance, index).
    pub acked_slots: BTreeMap<(GroupId, Instance, u32), ProposalId>,
    /// The value (its crc) every Accept sent for (group, instance, ballot) carried: one ballot
    /// proposes at most one value per instance.
    pub accepts_sent: BTreeMap<(GroupId, Instance, crate::core::Ballot), u32>,
    /// Membership changes handed to a leader and not yet answered: (group, membership).
    pub changes: BTreeMap<ProposalId, (GroupId, crate::core::Membership)>,
    /// Membership changes acknowledged Committed, per (group, instance).
    pub acked_changes: BTreeMap<(GroupId, Instance), crate::core::Membership>,
    /// Every node that has been a voter of some group (the initial voters and every voter of
    /// a chosen membership change): the others never vote.
    pub ever_voters: std::collections::BTreeSet<NodeId>,
}

impl Checkers {
    pub fn violate(&mut self, now: Tick, what: String) {
        if self.violation.is_none() {
            self.violation = Some(format!("tick {}: {what}", now.0));
        }
    }

    /// `failed-never-chosen`: a command is chosen at most as often as it was proposed and not
    /// answered `Failed` (a Failed proposal is never chosen; no proposal is chosen twice).
    fn check_failed(&self, command: &Bytes) -> Option<String> {
        let chosen = self.chosen_commands.get(command).copied().unwrap_or(0);
        let proposed = self.proposed.get(command).copied().unwrap_or(0);
        let failed = self.failed.get(command).copied().unwrap_or(0);
        (chosen + failed > proposed).then(|| {
            format!(
                "failed-never-chosen: command {:?} chosen {chosen} time(s), proposed {proposed}, answered Failed {failed}",
                String::from_utf8_lossy(command)
            )
        })
    }
}

impl Sim {
    /// `durable-before-reply`, checked against the simulated disk: a Promise leaves only when
    /// its ballot and every accepted (not chosen) entry it reports are durable; an Accepted
    /// only when its Accept record is.
    pub(super) fn check_durable_reply(&mut self, index: usize, frame: &Bytes) {
        let bytes = frame.len();
        let frame = match self.decoder.decode_exact(frame) {
            Ok(frame) => frame,
            Err(paxring_net::DecodeError::Oversize {
                body_bytes,
                max_frame_bytes,
            }) => {
                // The core bounds every message it builds by the frame limit (Promises are
                // cut, catch-up replies are bounded): an oversize frame is a bug, and the
                // peer's codec would refuse it (docs/PROTOCOL.md, Acceptor: every message fits the frame limit).
                let id = self.nodes[index].id;
                self.violate(format!(
                    "frame-limit: node {id} built a frame of {bytes} bytes (body {body_bytes} > limit {max_frame_bytes})"
                ));
                return;
            }
            Err(error) => {
                self.violate(format!(
                    "codec: the driver encoded a frame the codec refuses: {error}"
                ));
                return;
            }
        };
        let group = GroupId(frame.group);
        let Ok(msg) = Message::decode_body(frame.kind, &frame.body) else {
            self.violate("codec: the driver encoded a body that does not decode".into());
            return;
        };
        // `non-voter-silent`: a follower (non-voting) never promises, accepts, refuses or
        // answers a lease round: its word must never count toward a quorum
        // (docs/PROTOCOL.md#follower-nodes).
        if self.options.check_non_voters
            && !self.checks.ever_voters.contains(&self.nodes[index].id)
            && matches!(
                msg,
                Message::Promise { .. }
                    | Message::Accepted { .. }
                    | Message::Reject { .. }
                    | Message::CommitAck { .. }
            )
        {
            let id = self.nodes[index].id;
            self.violate(format!(
                "non-voter-silent: follower node {id} (non-voting) sent a {} for group {}",
                msg.name(),
                group.0
            ));
            return;
        }
        // `ballot-once`: the proposer of a ballot proposes one value per instance, whatever
        // happened to it (a restart that reuses a ballot breaks this first).
        if let Message::Accept {
            ballot,
            instance,
            value,
            ..
        } = &msg
        {
            let crc = crc32fast::hash(value);
            if let Some(before) = self
                .checks
                .accepts_sent
                .insert((group, *instance, *ballot), crc)
            {
                if before != crc {
                    let id = self.nodes[index].id;
                    self.violate(format!(
                        "ballot-once: node {id} sent Accepts for group {group} instance {instance} at ballot {ballot} with two different values"
                    ));
                    return;
                }
            }
        }
        // `promise-complete`: a Promise reports, as chosen, every instance its sender has
        // applied from the Prepare's first instance on (up to where a cut report ends); a
        // candidate that counts it must not miss a chosen value.
        if let Message::Promise {
            first,
            applied_next,
            truncated,
            entries,
            ..
        } = &msg
        {
            let end = if *truncated {
                entries
                    .last()
                    .map_or(*first, |e| Instance(e.instance.0 + 1))
                    .min(*applied_next)
            } else {
                *applied_next
            };
            let reported: BTreeSet<Instance> = entries
                .iter()
                .filter(|e| e.chosen)
                .map(|e| e.instance)
                .collect();
            if let Some(missing) = (first.0..end.0)
                .map(Instance)
                .find(|i| !reported.contains(i))
            {
                let id = self.nodes[index].id;
                self.violate(format!(
                    "promise-complete: node {id} promised group {group} from instance {first} but its report lacks instance {missing}, which it applied"
                ));
                return;
            }
        }
        self.count_stale_leader_answer(index, group, &msg);
        // What this replica acknowledged: it must survive a restart (or the group re-learns).
        let node = &mut self.nodes[index];
        match &msg {
            Message::Promise { ballot, .. } => {
                let acked = node.acked_promised.entry(group).or_default();
                *acked = (*acked).max(*ballot);
            }
            Message::Accepted {
                ballot, instance, ..
            } => {
                node.acked_accepts.insert((group, *instance, *ballot));
            }
            _ => {}
        }
        if !self.options.check_durable_replies {
            return;
        }
        let node = &self.nodes[index];
        let problem = match &msg {
            Message::Promise {
                ballot, entries, ..
            } => {
                let durable = node
                    .durable_promised
                    .get(&group)
                    .copied()
                    .unwrap_or_default();
                if durable < *ballot {
                    Some(format!("Promise {ballot} left but only {durable} is durable"))
                } else {
                    entries
                        .iter()
                        .find(|e| {
                            !e.chosen
                                && e.ballot < *ballot
                                && !node.durable_accepts.contains(&(group, e.instance, e.ballot))
                        })
                        .map(|e| {
                            format!(
                                "Promise {ballot} reports instance {} accepted at {} but that Accept is not on the disk",
                                e.instance, e.ballot
                            )
                        })
                }
            }
            Message::Accepted {
                ballot, instance, ..
            } => (!node.durable_accepts.contains(&(group, *instance, *ballot))).then(|| {
                format!(
                    "Accepted {ballot} for instance {instance} left before its Accept record was durable"
                )
            }),
            _ => None,
        };
        if let Some(problem) = problem {
            let id = node.id;
            self.violate(format!(
                "durable-before-reply: node {id} group {group}: {problem}"
            ));
        }
    }

    /// Counts how often a leader is told by an acceptor that an instance it still has in
    /// flight was chosen (the only way a leader learns another ballot's value without being
    /// deposed first, and what `commit-by-bytes` needs; docs/TESTING.md): an acceptor answers
    /// an Accept for an instance it knows chosen with a one-entry `CatchupReply` (request 0,
    /// no checksum) whose `promised` is the Accept's ballot, so it names the leader it goes
    /// to. `stale-leader-told-chosen`: that leader still leads with that ballot and has not
    /// applied the instance; `stale-leader-told-other`: and the value chosen there is another
    /// proposer's (other bytes, or the same bytes proposed anew by a newer ballot);
    /// `stale-leader-same-bytes`: the latter, the precondition of `commit-by-bytes` (with the
    /// bug, both proposals are told Committed).
    fn count_stale_leader_answer(&mut self, index: usize, group: GroupId, msg: &Message) {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let Message::CatchupReply {
            request: 0,
            promised,
            entries,
            checksum: 0,
            ..
        } = msg
        else {
            return;
        };
        let [(instance, chosen)] = entries.as_slice() else {
            return;
        };
        self.count("accept-answered-chosen");
        let leader = promised.node as usize;
        if leader == 0 || leader > self.nodes.len() || leader - 1 == index {
            return;
        }
        let stale = self.table_of(leader - 1, group).is_some_and(|t| {
            t.is_leader(group)
                && t.promised(group) == Some(*promised)
                && t.applied_next(group).is_some_and(|a| a <= *instance)
        });
        if !stale {
            return;
        }
        self.count("stale-leader-told-chosen");
        let crc = crc32fast::hash(chosen);
        if self.checks.accepts_sent.get(&(group, *instance, *promised)) != Some(&crc) {
            self.count("stale-leader-told-other"); // another proposer's value, other bytes
            return;
        }
        // Its own bytes. Another proposal of the same bytes only if no older ballot sent them
        // at this instance (this leader's flight is then its own batch, not a recovered
        // value), a newer one did, and no acceptor acknowledged this leader's Accept (else the
        // newer ballot may have recovered this very value). No-ops all look alike: left out.
        let sent = |from: std::ops::Bound<_>, to: std::ops::Bound<_>| {
            self.checks
                .accepts_sent
                .range((from, to))
                .take_while(|((g, i, _), _)| *g == group && i == instance)
                .any(|(_, c)| *c == crc)
        };
        let older = sent(
            Included((group, *instance, crate::core::Ballot::ZERO)),
            Excluded((group, *instance, *promised)),
        );
        let newer = sent(Excluded((group, *instance, *promised)), Unbounded);
        let acked = self
            .nodes
            .iter()
            .any(|n| n.acked_accepts.contains(&(group, *instance, *promised)));
        let noop = value::decode(chosen).map_or(true, |commands| commands.is_empty());
        if !older && newer && !acked && !noop {
            self.count("stale-leader-told-other");
            self.count("stale-leader-same-bytes");
        }
    }

    /// `durable-state`, at a start: everything this replica acknowledged before (the highest
    /// Promise, every Accepted) is in what recovery found, or superseded there (a higher
    /// ballot, a chosen record), or its group is re-learning. A record that a fault destroyed
    /// without recovery reporting it (a damaged write taken as torn, a wiped directory voting
    /// at once) is forgotten state, and Paxos is unsafe with it.
    pub(super) fn check_durable_state(&mut self, index: usize, recovered: &[crate::core::Record]) {
        use crate::core::{Ballot, RecordKind};
        let mut promised: BTreeMap<GroupId, Ballot> = BTreeMap::new();
        let mut accepted: BTreeMap<(GroupId, Instance), Ballot> = BTreeMap::new();
        let mut chosen: std::collections::BTreeSet<(GroupId, Instance)> = Default::default();
        // Each group's recovered log base: what lies below is in the state machine's checkpoint.
        let mut bases: BTreeMap<GroupId, Instance> = BTreeMap::new();
        for record in recovered {
            if let Some((below, _)) = crate::core::log_base_of(record) {
                let b = bases.entry(record.group).or_default();
                *b = (*b).max(below);
            }
            let p = promised.entry(record.group).or_default();
            *p = (*p).max(record.promised);
            match record.kind {
                RecordKind::Accept => {
                    let a = accepted.entry((record.group, record.instance)).or_default();
                    *a = (*a).max(record.accepted);
                }
                RecordKind::Chosen => {
                    chosen.insert((record.group, record.instance));
                }
                _ => {}
            }
        }
        let relearning: Vec<GroupId> = self
            .groups()
            .into_iter()
            .filter(|g| {
                self.table_of(index, *g)
                    .is_some_and(|t| t.is_relearning(*g) || t.owes_relearn(*g))
            })
            .collect();
        let check = self.options.check_durable_replies;
        let node = &mut self.nodes[index];
        let id = node.id;
        node.acked_promised.retain(|g, _| !relearning.contains(g));
        node.acked_accepts
            .retain(|(g, _, _)| !relearning.contains(g));
        let mut problem = None;
        for (group, ballot) in &node.acked_promised {
            let have = promised.get(group).copied().unwrap_or_default();
            if have < *ballot {
                problem = Some(format!(
                    "node {id} group {group} promised {ballot} before the restart, recovered only {have} and does not re-learn"
                ));
                break;
            }
        }
        if problem.is_none() {
            for (group, instance, ballot) in &node.acked_accepts {
                let superseded = chosen.contains(&(*group, *instance))
                    || bases.get(group).is_some_and(|base| instance < base)
                    || accepted
                        .get(&(*group, *instance))
                        .is_some_and(|b| b >= ballot);
                if !superseded {
                    problem = Some(format!(
                        "node {id} group {group} acknowledged accepting instance {instance} at {ballot} before the restart, recovered no record of it and does not re-learn"
                    ));
                    break;
                }
            }
        }
        if let Some(problem) = problem.filter(|_| check) {
            self.violate(format!("durable-state: {problem}"));
        }
    }

    /// A proposal's answer: `committed-once`, `acknowledged`, `failed-never-chosen`.
    pub(super) fn on_result(&mut self, result: ProposalResult) {
        let id = match &result {
            ProposalResult::Committed { id, .. }
            | ProposalResult::Failed { id, .. }
            | ProposalResult::Unknown { id, .. } => *id,
        };
        self.trace(&("result", id.0, format!("{result:?}")));
        if let ProposalResult::Failed { reason, .. } = &result {
            let hint = match reason {
                crate::core::FailReason::NotLeader { leader_hint } => *leader_hint,
                _ => None,
            };
            if self.read_failed(id, hint) {
                return;
            }
        }
        if let Some((group, members)) = self.checks.changes.remove(&id) {
            // A membership change: Committed names where its value is chosen.
            if let ProposalResult::Committed { instance, .. } = result {
                self.count("membership-change-committed");
                if let Some(value) = self.checks.chosen.get(&(group, instance)).cloned() {
                    self.check_change(group, instance, &members, &value);
                }
                self.checks.acked_changes.insert((group, instance), members);
            }
            return;
        }
        let Some((client_id, command)) = self.checks.proposals.remove(&id) else {
            self.violate(format!(
                "acknowledged: a result for proposal {} that is not outstanding",
                id.0
            ));
            return;
        };
        if let Some(client) = self.clients.get_mut(client_id as usize) {
            client.outstanding.remove(&id);
        }
        match result {
            ProposalResult::Committed {
                group,
                instance,
                index,
                ..
            } => {
                self.report.commits += 1;
                if let Some(other) = self.checks.acked_slots.insert((group, instance, index), id) {
                    self.violate(format!(
                        "committed-once: proposals {} and {} were both told Committed for entry {index} of group {group} instance {instance} (the command ran once)",
                        other.0, id.0
                    ));
                }
                if let Some(value) = self.checks.chosen.get(&(group, instance)).cloned() {
                    self.check_ack(group, instance, index, &command, &value);
                }
                self.checks
                    .acked
                    .entry((group, instance))
                    .or_default()
                    .push((index, command));
            }
            ProposalResult::Failed { .. } => {
                *self.checks.failed.entry(command.clone()).or_default() += 1;
                if let Some(problem) = self.checks.check_failed(&command) {
                    self.violate(problem);
                }
            }
            ProposalResult::Unknown { group, .. } => {
                // The client cannot know the outcome: it sends the same command again,
                // elsewhere (the classic duplicate; at most one of the two may be chosen as
                // this proposal... both may be chosen, as two proposals).
                self.retry_later(client_id, group, command);
            }
        }
    }

    /// `acknowledged` for a membership change: the value chosen where it was told Committed
    /// is that change.
    fn check_change(
        &mut self,
        group: GroupId,
        instance: Instance,
        members: &crate::core::Membership,
        value: &Bytes,
    ) {
        let named = value::config(value).map(|(voters, followers)| {
            (
                voters.into_iter().map(NodeId).collect::<Vec<_>>(),
                followers.into_iter().map(NodeId).collect::<Vec<_>>(),
            )
        });
        if named != Some((members.voters.clone(), members.followers.clone())) {
            self.violate(format!(
                "acknowledged: a membership change to {:?} was told Committed at group {group} instance {instance}, where another value is chosen",
                members.voters
            ));
        }
    }

    fn check_ack(
        &mut self,
        group: GroupId,
        instance: Instance,
        index: u32,
        command: &Bytes,
        value: &Bytes,
    ) {
        let commands = value::decode(value).unwrap_or_default();
        if commands.get(index as usize) != Some(command) {
            self.violate(format!(
                "acknowledged: command {:?} is not entry {index} of the value chosen at group {group} instance {instance}",
                String::from_utf8_lossy(command)
            ));
        }
    }

    /// A value handed to node `index`'s executor: `order`, `state-machine`, then (the first
    /// time the instance is seen) `agreement`, `validity`, `identity-once`,
    /// `failed-never-chosen`, `acknowledged`. The state machine checkpoints now and then.
    pub(super) fn on_chosen(&mut self, index: usize, chosen: Chosen) {
        let Chosen {
            group,
            instance,
            value,
            checksum,
        } = chosen;
        self.trace(&("chosen", index, group.0, instance.0, &value[..]));
        let node = &mut self.nodes[index];
        let id = node.id;
        let machine = node.machines.entry(group).or_default();
        if instance != machine.next {
            let want = machine.next;
            self.violate(format!(
                "order: node {id} applied group {group} instance {instance}, expected {want}"
            ));
            return;
        }
        *machine = SmState {
            next: Instance(instance.0 + 1),
            digest: digest_step(machine.digest, instance, &value),
            checksum,
        };
        let digest = machine.digest;
        let machine = *machine;
        if self.rng.chance(1, CHECKPOINT_ONE_IN) {
            self.nodes[index].checkpoints.insert(group, machine);
            self.count("checkpoint");
        }
        match self.checks.digests.get(&(group, instance)) {
            Some(known) if *known != digest => {
                self.violate(format!(
                    "state-machine: node {id} group {group} digest after instance {instance} differs from another replica's"
                ));
                return;
            }
            Some(_) => {}
            None => {
                self.checks.digests.insert((group, instance), digest);
            }
        }
        match self.checks.chosen.get(&(group, instance)) {
            Some(known) if *known != value => {
                self.violate(format!(
                    "agreement: node {id} learned a different value at group {group} instance {instance}"
                ));
                return;
            }
            Some(_) => return,
            None => {}
        }
        let Ok(commands) = value::decode(&value) else {
            self.violate(format!(
                "validity: malformed value chosen at group {group} instance {instance}"
            ));
            return;
        };
        if let Some(identity) = value::identity(&value).filter(|i| !i.is_none()) {
            if let Some(first) = self.checks.identities.insert((group, identity), instance) {
                self.violate(format!(
                    "identity-once: value {identity:?} chosen at group {group} instance {first} and again at instance {instance}"
                ));
                return;
            }
        }
        for command in &commands {
            if !self.checks.proposed.contains_key(command) {
                self.violate(format!(
                    "validity: chosen command {:?} was never proposed",
                    String::from_utf8_lossy(command)
                ));
                return;
            }
            *self
                .checks
                .chosen_commands
                .entry(command.clone())
                .or_default() += 1;
            if let Some(problem) = self.checks.check_failed(command) {
                self.violate(problem);
                return;
            }
        }
        self.checks.chosen.insert((group, instance), value.clone());
        if let Some((voters, _)) = value::config(&value) {
            self.checks
                .ever_voters
                .extend(voters.into_iter().map(NodeId));
            if let Some(members) = self.checks.acked_changes.get(&(group, instance)).cloned() {
                self.check_change(group, instance, &members, &value);
            }
        }
        if let Some(acks) = self.checks.acked.get(&(group, instance)).cloned() {
            for (index, command) in acks {
                self.check_ack(group, instance, index, &command, &value);
            }
        }
    }

    /// `invariant`: every running replica's table invariants, and promises that never
    /// decrease while a node runs.
    pub(super) fn check_invariants(&mut self) {
        let mut broken = None;
        'nodes: for node in &mut self.nodes {
            if !node.up {
                continue;
            }
            for core in &node.cores {
                let Some(driver) = &core.driver else {
                    continue;
                };
                let table = driver.table();
                if let Err(what) = table.invariants() {
                    broken = Some(format!("invariant: node {}: {what}", node.id));
                    break 'nodes;
                }
                for group in table.groups() {
                    let now = table.promised(group).unwrap_or_default();
                    let before = node.last_promised.insert(group, now).unwrap_or_default();
                    if now < before {
                        broken = Some(format!(
                            "invariant: node {}: group {group}: promised decreased from {before} to {now}",
                            node.id
                        ));
                        break 'nodes;
                    }
                }
            }
        }
        if let Some(what) = broken {
            self.violate(what);
        }
    }

    /// `rtt` (upper side): over the whole run, the Accept transmissions the cores counted on
    /// commit instances never exceed the Accept frames the drivers encoded (a transmission
    /// counted without a frame is a label). Prepare rounds are the rest of the round-trip
    /// count; they are bounded below, not here.
    pub(super) fn check_transmissions(&mut self) {
        let (counted, encoded) = self.transmission_counters();
        self.report.commit_transmissions = counted;
        self.report.accepts_encoded = encoded;
        if counted > encoded {
            self.violate(format!(
                "rtt: {counted} Accept transmissions counted on commit instances but only {encoded} Accept frames encoded"
            ));
        }
    }

    /// `rtt`: every commit instance in the fault-free window took at least one round trip (a
    /// counter that says less is a label, not a measurement). The wire's side
    /// (`steady_accepts_on_wire`) is reported next to the count; the whole-run upper side is
    /// [`Sim::check_transmissions`]. Tests assert 1.0 per commit on average.
    pub(super) fn check_rtts(&mut self) {
        let instances = self.report.steady_commit_instances;
        let rtts = self.report.steady_commit_rtts;
        if rtts < instances {
            self.violate(format!(
                "rtt: {rtts} round trips counted for {instances} commit instances ({} Accept transmissions on the wire) in the fault-free window",
                self.report.steady_accepts_on_wire
            ));
        }
    }

    /// After the heal: every group made progress and the replicas converged; every
    /// acknowledged proposal's instance was chosen.
    pub(super) fn final_checks(&mut self, at_heal: &[Instance]) {
        for (position, group) in self.groups().into_iter().enumerate() {
            let applied: Vec<Instance> = (0..self.nodes.len())
                .map(|i| {
                    self.table_of(i, group)
                        .and_then(|t| t.applied_next(group))
                        .unwrap_or(Instance(0))
                })
                .collect();
            let max = applied.iter().max().copied().unwrap_or(Instance(0));
            if max <= at_heal[position] {
                let why: Vec<String> = (0..self.nodes.len())
                    .filter_map(|i| {
                        let status = self.table_of(i, group)?.group_status(group)?;
                        Some(format!(
                            "{}: {}",
                            self.nodes[i].id,
                            status.stuck_reason().unwrap_or_else(|| format!(
                                "{} at {}",
                                status.role, status.applied_next.0
                            ))
                        ))
                    })
                    .collect();
                self.violate(format!(
                    "no progress: group {group} applied nothing after the heal (stuck at {}); {}",
                    max.0,
                    why.join("; ")
                ));
            }
            if applied.iter().any(|a| *a != max) {
                self.violate(format!(
                    "converge: replicas did not converge: group {group} applied points {applied:?}"
                ));
            }
        }
        let unchosen = self
            .checks
            .acked
            .keys()
            .chain(self.checks.acked_changes.keys())
            .find(|key| !self.checks.chosen.contains_key(key))
            .copied();
        if let Some((group, instance)) = unchosen {
            self.violate(format!(
                "acknowledged: proposal acknowledged at group {group} instance {instance} was never chosen"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Sim, SimOptions};
    use crate::core::{GroupId, Instance, ProposalId, ProposalResult};
    use bytes::Bytes;

    /// The committed-once checker fires when two proposals are told Committed for one chosen
    /// command (what `commit-by-bytes` does when two leaders batch identical bytes; the
    /// scripted case is `engine/tests/safety_transcripts.rs`).
    #[test]
    fn committed_once_checker_reports_two_acks_for_one_entry() {
        let mut sim = Sim::new(SimOptions::default(), 1);
        let command = Bytes::from_static(b"cas k 0 1");
        for id in [ProposalId(900), ProposalId(901)] {
            sim.checks.proposals.insert(id, (0, command.clone()));
            sim.on_result(ProposalResult::Committed {
                id,
                group: GroupId(0),
                instance: Instance(5),
                index: 0,
            });
        }
        let violation = sim.checks.violation.expect("reported");
        assert!(violation.contains("committed-once:"), "{violation}");
    }

    /// The failed-never-chosen checker fires when a command whose only proposal was answered
    /// Failed is chosen.
    #[test]
    fn failed_never_chosen_checker_reports_a_chosen_failed_command() {
        let mut sim = Sim::new(SimOptions::default(), 1);
        let command = Bytes::from_static(b"c9-1");
        sim.checks
            .proposals
            .insert(ProposalId(900), (0, command.clone()));
        *sim.checks.proposed.entry(command.clone()).or_default() += 1;
        sim.on_result(ProposalResult::Failed {
            id: ProposalId(900),
            group: GroupId(0),
            reason: crate::core::FailReason::Overloaded,
        });
        assert!(sim.checks.violation.is_none());
        let value = crate::core::value::encode([&command]);
        sim.on_chosen(
            0,
            crate::core::Chosen {
                group: GroupId(0),
                instance: Instance(0),
                value,
                checksum: 0,
            },
        );
        let violation = sim.checks.violation.expect("reported");
        assert!(violation.contains("failed-never-chosen:"), "{violation}");
    }

    /// The state-machine checker fires when two replicas' digests differ after one instance
    /// (a replay that skipped or repeated a value).
    #[test]
    fn state_machine_checker_reports_a_diverged_digest() {
        let mut sim = Sim::new(SimOptions::default(), 1);
        let chosen = |sim: &mut Sim, instance: u64| {
            let command = Bytes::from(format!("c1-{instance}"));
            *sim.checks.proposed.entry(command.clone()).or_default() += 1;
            crate::core::Chosen {
                group: GroupId(0),
                instance: Instance(instance),
                value: crate::core::value::encode([&command]),
                checksum: 0,
            }
        };
        let first = chosen(&mut sim, 0);
        sim.on_chosen(0, first);
        // Node 2's state machine resumes from a checkpoint that claims instance 0 was applied
        // with another digest.
        sim.nodes[1].machines.insert(
            GroupId(0),
            super::SmState {
                next: Instance(1),
                digest: 42,
                checksum: 0,
            },
        );
        let second = chosen(&mut sim, 1);
        sim.on_chosen(0, second.clone());
        sim.on_chosen(1, second);
        let violation = sim.checks.violation.expect("reported");
        assert!(violation.contains("state-machine:"), "{violation}");
    }

    /// The durable-state checker holds a leader to its own durable Accept records (its vote,
    /// counted without a message): a restart that recovers none of them and does not re-learn
    /// is reported, one that recovers them is not. (The repair bug of seed 69420 lost such a
    /// record; `repair-covers-later-damage` rarely reaches it in the simulator, so this drives
    /// the checker directly through the disk's completion path.)
    #[test]
    fn durable_state_checker_reports_a_lost_own_accept_record() {
        use crate::core::{Ballot, Lsn, Record, RecordKind};
        let options = SimOptions {
            swarm: false,
            faults: Default::default(),
            ..SimOptions::default()
        };
        let run = |recover_it: bool| {
            let mut sim = Sim::new(options.clone(), 1);
            let me = sim.nodes[0].id.0;
            let own = Ballot {
                number: 3,
                node: me,
            };
            let record = Record {
                kind: RecordKind::Accept,
                group: GroupId(0),
                instance: Instance(5),
                promised: own,
                accepted: own,
                payload: Bytes::from_static(b"v"),
            };
            let now = sim.now;
            // The record goes straight to the disk (no table wrote it: no driver to tell).
            sim.nodes[0].cores[0].driver = None;
            sim.nodes[0].cores[0]
                .disk
                .submit(Lsn(1), vec![record.clone()], now);
            sim.complete_disk(0, 0);
            let recovered = if recover_it { vec![record] } else { Vec::new() };
            sim.check_durable_state(0, &recovered);
            sim.checks.violation
        };
        let violation = run(false).expect("reported");
        assert!(violation.contains("durable-state:"), "{violation}");
        assert!(violation.contains("accepting instance 5"), "{violation}");
        assert_eq!(run(true), None, "recovered: nothing to report");
    }

    /// The identity-once checker fires when one proposal identity is chosen at two instances
    /// of a group (a proposer that re-proposed a value it already had chosen).
    #[test]
    fn identity_once_checker_reports_an_identity_chosen_twice() {
        use crate::core::value::{encode_with, Identity};
        let mut sim = Sim::new(SimOptions::default(), 1);
        let identity = Identity {
            node: 1,
            incarnation: 1,
            seq: 7,
        };
        for instance in 0..2 {
            let command = Bytes::from(format!("c1-{instance}"));
            *sim.checks.proposed.entry(command.clone()).or_default() += 1;
            sim.on_chosen(
                0,
                crate::core::Chosen {
                    group: GroupId(0),
                    instance: Instance(instance),
                    value: encode_with(identity, [&command]),
                    checksum: 0,
                },
            );
        }
        let violation = sim.checks.violation.expect("reported");
        assert!(violation.contains("identity-once:"), "{violation}");
    }

    #[test]
    fn codec_checker_reports_a_corrupted_frame_that_passes() {
        let mut sim = Sim::new(SimOptions::default(), 1);
        let body = crate::core::Message::Commit {
            lease: 0,
            ballot: crate::core::Ballot::ZERO,
            chosen_through: Instance(0),
            checksum: 0,
        };
        let mut buf = Vec::new();
        body.encode_body_into(&mut buf);
        let frame = paxring_net::encode_frame(body.kind(), 0, 1, &buf);
        sim.deliver(super::super::network::Packet {
            from: crate::core::NodeId(1),
            to: crate::core::NodeId(2),
            frame,
            corrupted: true,
        });
        let violation = sim.checks.violation.expect("reported");
        assert!(violation.contains("codec:"), "{violation}");
    }

    /// The rtt checker fires when the counted round trips fall below one per commit (a label,
    /// not a measurement).
    #[test]
    fn rtt_checker_reports_a_count_below_one_per_commit() {
        let mut sim = Sim::new(SimOptions::default(), 1);
        sim.report.steady_commit_instances = 100;
        sim.report.steady_commit_rtts = 100;
        sim.check_rtts();
        assert!(sim.checks.violation.is_none());
        sim.report.steady_commit_rtts = 99;
        sim.check_rtts();
        let violation = sim.checks.violation.expect("reported");
        assert!(violation.contains("rtt:"), "{violation}");
    }

    /// The rtt checker's upper side fires when more Accept transmissions are counted on
    /// commit instances than Accept frames were encoded (a count set without a frame).
    #[test]
    fn rtt_checker_reports_transmissions_beyond_the_wire() {
        let mut sim = Sim::new(SimOptions::default(), 1);
        sim.nodes[0].accepts_encoded_before = 7;
        sim.nodes[0].commit_transmissions_before = 7;
        sim.check_transmissions();
        assert!(sim.checks.violation.is_none());
        sim.nodes[1].commit_transmissions_before = 1;
        sim.check_transmissions();
        let violation = sim.checks.violation.expect("reported");
        assert!(violation.contains("rtt:"), "{violation}");
        assert!(violation.contains("8 Accept transmissions"), "{violation}");
    }
}
