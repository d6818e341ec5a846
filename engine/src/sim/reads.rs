//! Linearizable reads and the master lease under the simulator: clients' reads, and the two
//! checkers docs/PROTOCOL.md#master-lease promises hold.
//!
//! - `read-linearizable`: every read returns a state that covers every write acknowledged
//!   before the read began (a write counts as acknowledged once its node told the client
//!   Committed and applied it, as the runtime answers after its executor applied it), and no
//!   older state than any read that completed before it began.
//! - `master-overlap`: at no step do two nodes act as master of one group (each judged on its
//!   own clock: a paused node would act on its lease the moment it resumes).
//!
//! Owns: the reads in flight and the acknowledged floors per group. Must never do I/O.
use super::Sim;
use crate::core::{GroupId, Instance, NodeId, ProposalId, ReadMode, ReadReady};
use std::collections::BTreeMap;

/// A read handed to a core and not yet answered.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadInFlight {
    pub client: u32,
    pub group: GroupId,
    pub node: usize,
    /// The highest instance acknowledged to a client (and applied by its node) when the read
    /// began: the state it returns must cover it.
    pub acked_floor: Option<Instance>,
    /// The newest state (applied point) a read of the group had returned when this one began.
    pub read_floor: Instance,
}

/// What the read checkers remember.
#[derive(Default)]
pub(super) struct ReadChecks {
    pub in_flight: BTreeMap<ProposalId, ReadInFlight>,
    /// Committed answers whose value the answering node had not applied yet: (node, group,
    /// instance). The client hears of them once it has.
    pub pending_acks: Vec<(usize, GroupId, Instance)>,
    /// Per group, the highest acknowledged instance.
    pub acked_max: BTreeMap<GroupId, Instance>,
    /// Per group, the newest state a completed read returned (its applied point).
    pub read_max: BTreeMap<GroupId, Instance>,
    /// Reads served, by how they were confirmed.
    pub served_lease: u64,
    pub served_index: u64,
}

impl Sim {
    /// A client reads `group` through `node` (index) with `mode`; returns whether the core took
    /// it.
    pub(super) fn client_read(
        &mut self,
        client: u32,
        group: GroupId,
        node: usize,
        mode: ReadMode,
    ) -> Result<ProposalId, crate::core::FailReason> {
        let id = ProposalId(self.proposal_next);
        self.proposal_next += 1;
        let core = crate::core::core_of_group(group.0, self.options.cores as usize);
        let driver = self.nodes[node].cores[core]
            .driver
            .as_mut()
            .expect("a running node has drivers");
        let result = driver.read(group, id, mode);
        self.trace(&("read", client, id.0, format!("{mode:?}"), result.is_ok()));
        result?;
        let acked_floor = self.reads.acked_max.get(&group).copied();
        let read_floor = self.reads.read_max.get(&group).copied().unwrap_or_default();
        self.reads.in_flight.insert(
            id,
            ReadInFlight {
                client,
                group,
                node,
                acked_floor,
                read_floor,
            },
        );
        Ok(id)
    }

    /// A Committed answer from node `index`: the client hears of it once that node applied it.
    pub(super) fn note_ack(&mut self, index: usize, group: GroupId, instance: Instance) {
        self.reads.pending_acks.push((index, group, instance));
    }

    /// Node `index` applied values: acknowledgements waiting on them reach their clients.
    pub(super) fn settle_acks(&mut self, index: usize) {
        let machines = &self.nodes[index].machines;
        let acked_max = &mut self.reads.acked_max;
        self.reads.pending_acks.retain(|(node, group, instance)| {
            if *node != index {
                return true;
            }
            let applied = machines.get(group).is_some_and(|m| m.next > *instance);
            if applied {
                let max = acked_max.entry(*group).or_insert(*instance);
                *max = (*max).max(*instance);
            }
            !applied
        });
    }

    /// Node `index` crashed: answers it had not delivered (its executor had not applied the
    /// value) never reach their clients.
    pub(super) fn drop_acks(&mut self, index: usize) {
        self.reads
            .pending_acks
            .retain(|(node, _, _)| *node != index);
        let lost: Vec<ProposalId> = self
            .reads
            .in_flight
            .iter()
            .filter(|(_, r)| r.node == index)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.forget_read(id);
        }
    }

    fn forget_read(&mut self, id: ProposalId) -> Option<ReadInFlight> {
        let read = self.reads.in_flight.remove(&id)?;
        if let Some(client) = self.clients.get_mut(read.client as usize) {
            client.outstanding.remove(&id);
        }
        Some(read)
    }

    /// A read's failure (it was never served). Returns false if `id` is not a read.
    pub(super) fn read_failed(&mut self, id: ProposalId, leader_hint: Option<NodeId>) -> bool {
        let Some(read) = self.forget_read(id) else {
            return false;
        };
        let other = self.members[self.rng.below(self.members.len() as u64) as usize];
        if let Some(client) = self.clients.get_mut(read.client as usize) {
            client.target = leader_hint.unwrap_or(other);
        }
        true
    }

    /// `read-linearizable`: node `index` serves a confirmed read from its applied state.
    pub(super) fn serve_read(&mut self, index: usize, ready: ReadReady) {
        let Some(read) = self.forget_read(ready.id) else {
            self.violate(format!(
                "read-linearizable: node {} served read {} that is not in flight",
                index + 1,
                ready.id.0
            ));
            return;
        };
        let state = self.nodes[index]
            .machines
            .get(&read.group)
            .copied()
            .unwrap_or_default();
        self.trace(&("served", index, ready.id.0, state.next.0));
        match ready.mode {
            ReadMode::Lease => self.reads.served_lease += 1,
            ReadMode::Index => self.reads.served_index += 1,
            // The simulator's clients issue no stale read (not linearizable by design).
            ReadMode::Stale { .. } => {}
        }
        if let Some(acked) = read.acked_floor {
            if state.next <= acked {
                self.violate(format!(
                    "read-linearizable: node {} served a {:?} read of group {} at applied point {}, but instance {} was acknowledged before the read began",
                    index + 1,
                    ready.mode,
                    read.group,
                    state.next.0,
                    acked.0
                ));
                return;
            }
        }
        if state.next < read.read_floor {
            self.violate(format!(
                "read-linearizable: node {} served a {:?} read of group {} at applied point {}, older than the state {} an earlier read returned",
                index + 1,
                ready.mode,
                read.group,
                state.next.0,
                read.read_floor.0
            ));
            return;
        }
        let max = self.reads.read_max.entry(read.group).or_default();
        *max = (*max).max(state.next);
    }

    /// The running nodes that are master of some group now.
    pub(super) fn masters_now(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&index| self.nodes[index].running())
            .filter(|&index| {
                self.nodes[index].cores.iter().any(|core| {
                    core.driver.as_ref().is_some_and(|d| {
                        let table = d.table();
                        table.groups().any(|g| table.master_until(g).is_some())
                    })
                })
            })
            .collect()
    }

    /// `master-overlap`: at most one node acts as master of each group, each judged on its own
    /// clock now.
    pub(super) fn check_masters(&mut self) {
        let mut masters: BTreeMap<GroupId, Vec<(NodeId, u64)>> = BTreeMap::new();
        for index in 0..self.nodes.len() {
            if !self.nodes[index].up {
                continue;
            }
            let local = self.local_tick(index);
            for core in &self.nodes[index].cores {
                let Some(driver) = &core.driver else {
                    continue;
                };
                let table = driver.table();
                for group in table.groups() {
                    if let Some(until) = table.master_until(group) {
                        if local < until {
                            masters
                                .entry(group)
                                .or_default()
                                .push((self.nodes[index].id, until.0));
                        }
                    }
                }
            }
        }
        if let Some((group, both)) = masters.into_iter().find(|(_, m)| m.len() > 1) {
            self.violate(format!(
                "master-overlap: group {group} has {} masters at once: {both:?} (node, lease end on its clock)",
                both.len()
            ));
        }
    }
}
