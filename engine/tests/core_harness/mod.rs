//! A tiny hand-driven cluster for transcript tests: real `CoreTable`s run by the real round
//! driver (`paxring_engine::driver`, the runtime's and the simulator's, with its durable-reply
//! gate and frame encoding), a FIFO network the test can cut, and in-memory logs whose
//! durability the test controls. Every event is written to a transcript (one line each) that
//! tests compare or search.
#![allow(dead_code)]
use bytes::Bytes;
use paxring_engine::core::*;
use paxring_engine::driver::{self, Driver, DriverError, StorageError};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub const GROUP: GroupId = GroupId(7);

/// The timing every transcript uses (short timeouts, so that scripts stay short).
pub fn transcript_config() -> Config {
    Config {
        pipeline_depth: 8,
        election_timeout_ticks: 50,
        election_jitter_ticks: 10,
        heartbeat_ticks: 10,
        retransmit_ticks: 20,
        // The scripts elect a node by ticking it alone while the others' clocks stand still:
        // with check quorum on, a follower whose clock stands still would stay loyal to its
        // last leader forever. `core_transcripts.rs` tests check quorum on its own.
        check_quorum: false,
        // Leases likewise (a grant would block the next election until its clock moves on);
        // `core_transcripts.rs` tests leases and reads on their own.
        master_lease_ticks: 0,
        ..Config::default()
    }
}

/// Decides, per delivery (from, to, message), whether the test's network drops it.
pub type DropFilter = Box<dyn Fn(NodeId, NodeId, &Message) -> bool>;

pub struct Node {
    pub driver: Option<Driver>,
    /// Every record appended, with whether it is durable.
    pub log: Vec<(Lsn, Record, bool)>,
    pub applied: Vec<(Instance, Bytes)>,
    pub now: u64,
}

/// The node's in-memory log as the driver's storage (durability is the test's to grant).
struct Log<'a>(&'a mut Vec<(Lsn, Record, bool)>);

impl driver::Storage for Log<'_> {
    fn append(&mut self, lsn: Lsn, record: &Record) -> Result<(), StorageError> {
        self.0.push((lsn, record.clone(), false));
        Ok(())
    }

    fn submit(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    /// The newest `Chosen` mark's value (or the accepted value it names), as the WAL serves.
    fn read_chosen(
        &mut self,
        group: GroupId,
        instance: Instance,
    ) -> Result<Option<Bytes>, StorageError> {
        let mut accepted: Option<(paxring_engine::core::Ballot, Bytes)> = None;
        let mut value = None;
        for (_, record, _) in self.0.iter() {
            if record.group != group || record.instance != instance {
                continue;
            }
            match record.kind {
                RecordKind::Accept => accepted = Some((record.accepted, record.payload.clone())),
                RecordKind::Chosen if !record.payload.is_empty() => {
                    value = Some(record.payload.clone())
                }
                RecordKind::Chosen => {
                    value = accepted
                        .as_ref()
                        .filter(|(b, _)| *b == record.accepted)
                        .map(|(_, v)| v.clone())
                }
                _ => {}
            }
        }
        Ok(value)
    }
}

/// Frames a round handed out (`None`: every peer).
#[derive(Default)]
struct Frames(Vec<(Option<NodeId>, Bytes)>);

impl driver::Network for Frames {
    fn send(&mut self, to: NodeId, frame: Bytes) {
        self.0.push((Some(to), frame));
    }

    fn send_to_peers(&mut self, frame: Bytes) {
        self.0.push((None, frame));
    }
}

/// What a round handed to proposers and the executor.
#[derive(Default)]
struct Applied {
    results: Vec<ProposalResult>,
    chosen: Vec<Chosen>,
    stopped: Vec<(GroupId, GroupError)>,
    reads_ready: Vec<paxring_engine::core::ReadReady>,
}

impl driver::Apply for Applied {
    fn result(&mut self, result: ProposalResult) {
        self.results.push(result);
    }

    fn chosen(&mut self, chosen: Chosen) -> Result<(), DriverError> {
        self.chosen.push(chosen);
        Ok(())
    }

    fn stopped(&mut self, group: GroupId, error: GroupError) {
        self.stopped.push((group, error));
    }

    fn read_ready(&mut self, ready: paxring_engine::core::ReadReady) -> Result<(), DriverError> {
        self.reads_ready.push(ready);
        Ok(())
    }
}

/// Decodes a frame the driver encoded back into its message (the harness's network carries
/// messages so that tests can filter them).
fn decode_frame(frame: &Bytes) -> Message {
    let frame = paxring_net::Decoder::new(paxring_net::MAX_FRAME_BYTES_LIMIT)
        .decode_exact(frame)
        .expect("the driver encodes valid frames");
    Message::decode_body(frame.kind, &frame.body).expect("the driver encodes valid messages")
}

pub struct Cluster {
    pub config: Config,
    pub members: Vec<NodeId>,
    pub group: GroupId,
    pub nodes: BTreeMap<NodeId, Node>,
    pub net: VecDeque<(NodeId, NodeId, Message)>,
    /// Links that drop everything (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose disk does not complete writes.
    pub stalled: BTreeSet<NodeId>,
    pub results: Vec<(NodeId, ProposalResult)>,
    /// Reads served: the node, the read, and how many values that node had applied then.
    pub reads: Vec<(NodeId, paxring_engine::core::ReadReady, usize)>,
    pub transcript: Vec<String>,
    /// Log the messages too (the transcript of a steady-state run).
    pub log_messages: bool,
    /// Messages the test drops on delivery (from, to, message).
    pub drop_if: Option<DropFilter>,
    /// Messages dropped for exceeding `config.message_bytes_max` (the network's frame limit).
    pub oversize_dropped: u64,
    /// Restarts so far per node (each start gets the next incarnation).
    pub incarnations: BTreeMap<NodeId, u64>,
    /// Bugs every table runs with (simulator builds only).
    #[cfg(feature = "sim-bugs")]
    pub bugs: Bugs,
}

impl Cluster {
    pub fn new(nodes: u32, config: Config) -> Cluster {
        let members: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
        let group = GroupId(7);
        let mut map = BTreeMap::new();
        for &id in &members {
            let table = CoreTable::new(
                config.clone(),
                id,
                &members,
                &[group],
                Prng::new(u64::from(id.0)),
            )
            .unwrap();
            map.insert(
                id,
                Node {
                    driver: Some(Driver::new(table)),
                    log: Vec::new(),
                    applied: Vec::new(),
                    now: 0,
                },
            );
        }
        Cluster {
            config,
            members,
            group,
            nodes: map,
            net: VecDeque::new(),
            cut: BTreeSet::new(),
            stalled: BTreeSet::new(),
            results: Vec::new(),
            reads: Vec::new(),
            transcript: Vec::new(),
            log_messages: false,
            drop_if: None,
            oversize_dropped: 0,
            incarnations: BTreeMap::new(),
            #[cfg(feature = "sim-bugs")]
            bugs: Bugs::default(),
        }
    }

    /// Runs every table with `bugs` (set before anything happens).
    #[cfg(feature = "sim-bugs")]
    pub fn with_bugs(mut self, bugs: Bugs) -> Cluster {
        self.bugs = bugs;
        for node in self.nodes.values_mut() {
            if let Some(table) = node.driver.take().map(|d| {
                let mut table = d.into_table();
                table.set_bugs(bugs);
                table
            }) {
                node.driver = Some(Driver::new(table));
            }
        }
        self
    }

    /// Cuts every link to and from `node` (both ways).
    pub fn isolate(&mut self, node: u32) {
        for other in self.members.clone() {
            if other != NodeId(node) {
                self.cut.insert((NodeId(node), other));
                self.cut.insert((other, NodeId(node)));
            }
        }
    }

    /// Restores every link to and from `node`.
    pub fn rejoin(&mut self, node: u32) {
        self.cut
            .retain(|(a, b)| *a != NodeId(node) && *b != NodeId(node));
    }

    /// Agreement across replicas: the first instance where two nodes applied different
    /// values, as the checker's verdict (None when they agree).
    pub fn agreement_violation(&self) -> Option<String> {
        let mut seen: BTreeMap<Instance, (NodeId, Bytes)> = BTreeMap::new();
        for (id, node) in &self.nodes {
            for (instance, value) in &node.applied {
                match seen.get(instance) {
                    Some((other, known)) if known != value => {
                        return Some(format!(
                            "agreement: {id} and {other} applied different values at instance {}",
                            instance.0
                        ))
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(*instance, (*id, value.clone()));
                    }
                }
            }
        }
        None
    }

    /// The node that leads (holds a quorum of promises), if exactly one table says so.
    pub fn leader(&mut self) -> Option<u32> {
        let ids: Vec<u32> = self.members.iter().map(|n| n.0).collect();
        ids.into_iter().find(|n| {
            self.nodes[&NodeId(*n)]
                .driver
                .as_ref()
                .is_some_and(|d| d.table().is_leader(GROUP))
        })
    }

    pub fn note(&mut self, line: String) {
        self.transcript.push(line);
    }

    pub fn table(&mut self, node: u32) -> &mut CoreTable {
        self.nodes
            .get_mut(&NodeId(node))
            .unwrap()
            .driver
            .as_mut()
            .expect("node is up")
            .table_mut()
    }

    /// Advances one node's clock by `ticks` (one tick at a time), settling after each.
    pub fn tick_node(&mut self, node: u32, ticks: u64) {
        for _ in 0..ticks {
            let n = self.nodes.get_mut(&NodeId(node)).unwrap();
            n.now += 1;
            let now = n.now;
            if let Some(driver) = &mut n.driver {
                driver.tick(Tick(now));
            }
            self.settle();
        }
    }

    /// Advances every node's clock.
    pub fn tick_all(&mut self, ticks: u64) {
        for _ in 0..ticks {
            for id in self.members.clone() {
                let n = self.nodes.get_mut(&id).unwrap();
                n.now += 1;
                let now = n.now;
                if let Some(driver) = &mut n.driver {
                    driver.tick(Tick(now));
                }
            }
            self.settle();
        }
    }

    /// Elects `node`: ticks it alone past its election timeout, then settles.
    pub fn elect(&mut self, node: u32) {
        let limit = self.config.election_timeout_ticks + self.config.election_jitter_ticks + 2;
        for _ in 0..limit {
            if self.table(node).is_leader(GROUP) {
                return;
            }
            self.tick_node(node, 1);
        }
        assert!(self.table(node).is_leader(GROUP), "node {node} did not win");
    }

    /// A linearizable read of the group on `node`.
    pub fn read(&mut self, node: u32, id: u64, mode: ReadMode) -> Result<(), FailReason> {
        let group = self.group;
        let result = self.table(node).read(group, ProposalId(id), mode);
        self.note(format!("n{node} read #{id} {mode:?} -> {result:?}"));
        result
    }

    /// This node's clock.
    pub fn now(&self, node: u32) -> Tick {
        Tick(self.nodes[&NodeId(node)].now)
    }

    pub fn propose(&mut self, node: u32, id: u64, command: &str) -> Result<(), FailReason> {
        let group = self.group;
        let result = self.table(node).propose(
            group,
            ProposalId(id),
            Bytes::copy_from_slice(command.as_bytes()),
        );
        self.note(format!("n{node} propose #{id} {command:?} -> {result:?}"));
        result
    }

    /// Polls every node, writes, syncs, delivers, until nothing moves (bounded).
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for id in self.members.clone() {
                moved |= self.poll_node(id);
            }
            if let Some((from, to, msg)) = self.net.pop_front() {
                moved = true;
                if self.cut.contains(&(from, to)) {
                    continue;
                }
                if self
                    .drop_if
                    .as_ref()
                    .is_some_and(|drop| drop(from, to, &msg))
                {
                    continue;
                }
                if msg.encode().len() - 1 > self.config.message_bytes_max as usize {
                    self.oversize_dropped += 1;
                    self.note(format!(
                        "{from} -> {to}: DROPPED oversize {}",
                        describe(&msg)
                    ));
                    continue;
                }
                if self.log_messages {
                    self.note(format!("{from} -> {to}: {}", describe(&msg)));
                }
                let group = self.group;
                if let Some(driver) = &mut self.nodes.get_mut(&to).unwrap().driver {
                    driver.table_mut().on_message(from, group, msg);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("cluster does not settle");
    }

    /// One driver round on `id`; unless its disk is stalled, everything appended becomes
    /// durable and a second round releases the replies that waited for it.
    fn poll_node(&mut self, id: NodeId) -> bool {
        let stalled = self.stalled.contains(&id);
        let members = self.members.clone();
        let mut frames = Frames::default();
        let mut applied = Applied::default();
        let mut moved = false;
        {
            let node = self.nodes.get_mut(&id).unwrap();
            let Some(driver) = &mut node.driver else {
                return false;
            };
            let before = (node.log.len(), driver.stats().frames_sent);
            driver
                .round(&mut Log(&mut node.log), &mut frames, &mut applied)
                .expect("the harness's storage and executor do not fail");
            moved |= node.log.len() != before.0 || driver.stats().frames_sent != before.1;
            if !stalled {
                if let Some(last) = node
                    .log
                    .iter()
                    .rev()
                    .find(|(_, _, d)| !d)
                    .map(|(l, _, _)| *l)
                {
                    for entry in node.log.iter_mut() {
                        entry.2 = true;
                    }
                    driver.durable(last);
                    moved = true;
                    driver
                        .round(&mut Log(&mut node.log), &mut frames, &mut applied)
                        .expect("the harness's storage and executor do not fail");
                }
            }
        }
        moved |= !frames.0.is_empty()
            || !applied.results.is_empty()
            || !applied.chosen.is_empty()
            || !applied.stopped.is_empty()
            || !applied.reads_ready.is_empty();
        for (to, frame) in frames.0 {
            let msg = decode_frame(&frame);
            match to {
                Some(to) => self.net.push_back((id, to, msg)),
                None => {
                    for &to in members.iter().filter(|m| **m != id) {
                        self.net.push_back((id, to, msg.clone()));
                    }
                }
            }
        }
        let node = self.nodes.get_mut(&id).unwrap();
        for chosen in applied.chosen {
            node.applied.push((chosen.instance, chosen.value.clone()));
            let commands = value::decode(&chosen.value).unwrap();
            let text: Vec<String> = commands
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            self.transcript.push(format!(
                "{id} applies instance {} = {text:?}",
                chosen.instance.0
            ));
        }
        for result in applied.results {
            self.transcript.push(format!("{id} result {result:?}"));
            self.results.push((id, result));
        }
        for ready in applied.reads_ready {
            let node = &self.nodes[&id];
            self.transcript.push(format!(
                "{id} serves read #{} ({:?}) at applied {}",
                ready.id.0,
                ready.mode,
                node.applied.len()
            ));
            self.reads.push((id, ready, node.applied.len()));
        }
        for (group, error) in applied.stopped {
            self.transcript
                .push(format!("{id} STOPPED group {group}: {error}"));
        }
        moved
    }

    /// A crash: the table is gone, and records never made durable are lost.
    pub fn crash(&mut self, node: u32) {
        let n = self.nodes.get_mut(&NodeId(node)).unwrap();
        n.driver = None;
        n.log.retain(|(_, _, durable)| *durable);
        n.applied.clear();
        self.net.retain(|(_, to, _)| *to != NodeId(node));
        self.note(format!("n{node} crashes"));
    }

    /// Restart from what the (in-memory) disk holds; `damage` names records to report damaged
    /// (dropped from the recovered records).
    pub fn restart(&mut self, node: u32, damage: &[Lsn]) {
        self.restart_with(node, damage, &[], false);
    }

    /// A crash that destroyed the node's whole log (a wiped data directory).
    pub fn wipe(&mut self, node: u32) {
        let n = self.nodes.get_mut(&NodeId(node)).unwrap();
        n.log.clear();
        self.note(format!("n{node} loses its data directory"));
    }

    /// Restart where `damage` names mid-log records reported damaged, `tail` names records of
    /// the last write reported as a cut, damaged tail (`Recovery::tail_damage`), and
    /// `state_lost` says the node's state was lost (no identity file).
    pub fn restart_with(&mut self, node: u32, damage: &[Lsn], tail: &[Lsn], state_lost: bool) {
        let id = NodeId(node);
        let incarnation = {
            let count = self.incarnations.entry(id).or_insert(0);
            *count += 1;
            *count
        };
        let n = self.nodes.get_mut(&id).unwrap();
        let next = n.log.last().map_or(Lsn(1), |(l, _, _)| l.next());
        let mut recovery = Recovery {
            next_lsn: next,
            ..Recovery::default()
        };
        let mut tail_damage: Option<Damage> = None;
        for (lsn, record, _) in &n.log {
            if tail.contains(lsn) {
                let entry = tail_damage.get_or_insert(Damage {
                    first_lsn: *lsn,
                    last_lsn: *lsn,
                    groups_instances: Vec::new(),
                    identities_complete: true,
                    segment: 0,
                    offset: 0,
                    reason: "test: damaged last write".to_string(),
                });
                entry.last_lsn = *lsn;
                entry.groups_instances.push((record.group, record.instance));
            } else if damage.contains(lsn) {
                recovery.damaged.push(Damage {
                    first_lsn: *lsn,
                    last_lsn: *lsn,
                    groups_instances: vec![(record.group, record.instance)],
                    identities_complete: true,
                    segment: 0,
                    offset: 0,
                    reason: "test damage".to_string(),
                });
            } else {
                recovery.records.push((*lsn, record.clone()));
            }
        }
        recovery.tail_damage = tail_damage;
        // The cut tail is gone from the log (the writer continues over it).
        if let Some(first) = tail.iter().min() {
            n.log.retain(|(lsn, _, _)| lsn < first);
            recovery.next_lsn = *first;
        }
        let table = CoreTable::restore_with(
            self.config.clone(),
            id,
            &self.members,
            &[self.group],
            &recovery,
            Prng::new(99 + u64::from(node) + 1000 * incarnation),
            Start {
                incarnation,
                state_lost,
            },
            #[cfg(feature = "sim-bugs")]
            self.bugs,
        )
        .unwrap();
        n.driver = Some(Driver::new(table));
        let now = n.now;
        n.driver.as_mut().unwrap().tick(Tick(now));
        self.note(format!(
            "n{node} restarts with {} records",
            recovery.records.len()
        ));
        self.settle();
    }

    pub fn applied(&self, node: u32) -> Vec<(Instance, Bytes)> {
        self.nodes[&NodeId(node)].applied.clone()
    }

    pub fn committed(&self) -> Vec<(ProposalId, Instance, u32)> {
        self.results
            .iter()
            .filter_map(|(_, r)| match r {
                ProposalResult::Committed {
                    id,
                    instance,
                    index,
                    ..
                } => Some((*id, *instance, *index)),
                _ => None,
            })
            .collect()
    }

    /// The records of `kind` a node appended.
    pub fn records(&self, node: u32, kind: RecordKind) -> usize {
        self.nodes[&NodeId(node)]
            .log
            .iter()
            .filter(|(_, r, _)| r.kind == kind)
            .count()
    }
}

pub fn describe(msg: &Message) -> String {
    match msg {
        Message::Prepare { ballot, first } => format!("Prepare {ballot} from {}", first.0),
        Message::Promise {
            ballot, entries, ..
        } => {
            format!("Promise {ballot} ({} entries)", entries.len())
        }
        Message::Accept {
            ballot,
            instance,
            chosen_through,
            ..
        } => format!(
            "Accept {ballot} instance {} (chosen through {})",
            instance.0, chosen_through.0
        ),
        Message::Accepted {
            ballot, instance, ..
        } => {
            format!("Accepted {ballot} instance {}", instance.0)
        }
        Message::Reject { rejected, promised } => {
            format!("Reject {rejected} (promised {promised})")
        }
        Message::Commit {
            ballot,
            chosen_through,
            ..
        } => {
            format!("Commit {ballot} chosen through {}", chosen_through.0)
        }
        Message::CatchupRequest { from, until, .. } => {
            format!("CatchupRequest from {} until {}", from.0, until.0)
        }
        Message::CatchupReply { entries, .. } => {
            format!("CatchupReply ({} entries)", entries.len())
        }
        Message::CheckpointRequest {
            instance, offset, ..
        } => format!("CheckpointRequest {instance:?} from byte {offset}"),
        Message::CheckpointChunk {
            info, offset, data, ..
        } => format!(
            "CheckpointChunk {:?} bytes {offset}..{}",
            info.map(|i| i.instance.0),
            offset + data.len() as u64
        ),
        Message::CommitAck {
            ballot,
            lease,
            granted,
        } => format!("CommitAck {ballot} round {lease} granted {granted}"),
    }
}
