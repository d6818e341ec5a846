//! The simulator's clients: each proposes to one group through the node it believes leads,
//! follows leader hints, keeps a window of proposals outstanding, and now and then proposes a
//! large command (so that Promises over a long window are cut) or the very bytes another
//! client just proposed (so that two proposals of one command race).
//!
//! Owns: [`Client`] and the client half of the simulator. Must never do I/O.
use super::Sim;
use crate::core::{core_of_group, FailReason, GroupId, NodeId, ProposalId, Tick};
use bytes::Bytes;
use std::collections::BTreeMap;

/// The proposals a client may have outstanding at once.
const CLIENT_WINDOW: usize = 4;
/// A client gives up waiting on a proposal after this long (its node crashed, paused or was cut
/// off) and sends the same command again to another node (the answer to the first proposal may
/// still come, and both proposals may be chosen).
const CLIENT_TIMEOUT_TICKS: u64 = 300;

pub(super) struct Client {
    pub group: GroupId,
    pub target: NodeId,
    pub outstanding: BTreeMap<ProposalId, Tick>,
    pub next_at: Tick,
    pub sequence: u64,
    pub id: u32,
    /// A command whose outcome was unknown, to send again (to another node).
    pub retry: Option<Bytes>,
}

impl Sim {
    /// A proposal's outcome was unknown: the client sends the same bytes again, to another
    /// node (both proposals may be chosen; each is told about its own).
    pub(super) fn retry_later(&mut self, client: u32, _group: GroupId, command: Bytes) {
        let other = self.random_member();
        if let Some(client) = self.clients.get_mut(client as usize) {
            client.retry = Some(command);
            client.target = other;
        }
    }

    pub(super) fn make_clients(&mut self) {
        let mut client_id = 0;
        for group in 0..self.options.groups {
            for _ in 0..self.options.clients_per_group {
                let target = self.members[self.rng.below(self.members.len() as u64) as usize];
                self.clients.push(Client {
                    group: GroupId(group),
                    target,
                    outstanding: BTreeMap::new(),
                    next_at: Tick(0),
                    sequence: 0,
                    id: client_id,
                    retry: None,
                });
                client_id += 1;
            }
        }
    }

    fn random_member(&mut self) -> NodeId {
        self.members[self.rng.below(self.members.len() as u64) as usize]
    }

    /// A proposal or read refused at once: follow the hint (or try another node) soon, or back
    /// off when the node is overloaded or the group stopped.
    fn refused(&mut self, index: usize, reason: FailReason) {
        let now = self.now;
        match reason {
            FailReason::NotLeader { leader_hint } => {
                let other = self.random_member();
                let client = &mut self.clients[index];
                client.target = leader_hint.unwrap_or(other);
                client.next_at = Tick(now.0 + 5 + self.rng.below(20));
            }
            _ => {
                let wait = 20 + self.rng.below(20);
                self.clients[index].next_at = Tick(now.0 + wait);
            }
        }
    }

    pub(super) fn client_step(&mut self, index: usize) {
        let now = self.now;
        let client = &mut self.clients[index];
        let expired: Vec<ProposalId> = client
            .outstanding
            .iter()
            .filter(|(_, sent)| now.0 >= sent.0 + CLIENT_TIMEOUT_TICKS)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            client.outstanding.remove(id);
        }
        if let Some(command) = expired
            .first()
            .and_then(|id| self.checks.proposals.get(id))
            .map(|(_, command)| command.clone())
        {
            let other = self.random_member();
            let client = &mut self.clients[index];
            if client.retry.is_none() {
                client.retry = Some(command);
                client.target = other;
            }
        }
        let client = &mut self.clients[index];
        if client.outstanding.len() >= CLIENT_WINDOW || client.next_at > now {
            return;
        }
        let group = client.group;
        let target = client.target;
        let node_index = (target.0 - 1) as usize;
        if !self.nodes[node_index].running() {
            // Down or paused: its connection does not answer; try another node later.
            let other = self.random_member();
            let client = &mut self.clients[index];
            client.target = other;
            client.next_at = Tick(now.0 + 10);
            return;
        }
        if self.clients[index].retry.is_none() && self.rng.chance(1, 4) {
            // A linearizable read (checked by `read-linearizable`): by lease mostly.
            let mode = if self.rng.chance(3, 4) {
                crate::core::ReadMode::Lease
            } else {
                crate::core::ReadMode::Index
            };
            let client_id = self.clients[index].id;
            match self.client_read(client_id, group, node_index, mode) {
                Ok(id) => {
                    let client = &mut self.clients[index];
                    client.outstanding.insert(id, now);
                    client.next_at = Tick(now.0 + self.rng.below(3));
                }
                Err(reason) => self.refused(index, reason),
            }
            return;
        }
        let client = &mut self.clients[index];
        let retry = client.retry.take();
        client.sequence += 1;
        let mut command = Bytes::from(format!("c{}-{}", client.id, client.sequence));
        let sequence = client.sequence;
        let id_of_client = client.id;
        if let Some(retry) = retry {
            command = retry;
        } else if self.rng.chance(1, 20) {
            // Now and then a large command (Promises over a long window get cut).
            let pad = 300 + self.rng.below(400) as usize;
            command = Bytes::from(format!("c{id_of_client}-{sequence}{}", ".".repeat(pad)));
        } else if self.rng.chance(1, 10) {
            // The same bytes another client of the group just proposed (two clients sending
            // the same cas): at most one of the two may be told Committed for one command.
            if let Some(last) = self.last_command.get(&group) {
                command = last.clone();
            }
        }
        self.last_command.insert(group, command.clone());
        let id = ProposalId(self.proposal_next);
        self.proposal_next += 1;
        let core = core_of_group(group.0, self.options.cores as usize);
        let driver = self.nodes[node_index].cores[core]
            .driver
            .as_mut()
            .expect("a running node has drivers");
        let result = driver.propose(group, id, command.clone());
        self.trace(&("propose", index, id.0, result.is_ok()));
        match result {
            Ok(()) => {
                let client = &mut self.clients[index];
                client.outstanding.insert(id, now);
                let client_id = client.id;
                client.next_at = Tick(now.0 + self.rng.below(3));
                self.checks
                    .proposals
                    .insert(id, (client_id, command.clone()));
                *self.checks.proposed.entry(command).or_default() += 1;
            }
            Err(reason) => self.refused(index, reason),
        }
    }
}
