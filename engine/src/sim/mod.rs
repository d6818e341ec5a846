//! The deterministic simulator: the real core, WAL encoding/recovery and message codec,
//! driven through the same [`CoreTable`] API as the runtime, against a simulated network and
//! simulated disks, with safety checkers after every step.
//!
//! Owns: the cluster of N nodes x G groups, the network (delay, loss, duplication, reordering,
//! symmetric and one-way partitions), the disks ([`disk::SimDisk`]: latency, crash losing
//! unsynced writes, torn last write, bit flips in durable records), crash/restart, the clients,
//! the checkers and the trace hash. Must never read a clock, touch a file or socket, spawn a
//! thread or use a random source other than the seeded [`Prng`]: one seed, one trace.
//!
//! Checkers (each failure names the seed and prints the command that replays it):
//! - agreement: at most one value is learned per (group, instance), across all replicas;
//! - validity: every command in a chosen value was proposed;
//! - acknowledged: a Committed answer names the instance and index where its command is chosen,
//!   and that instance is chosen by the end;
//! - order: each replica applies consecutive instances (a restart replays from instance 0);
//! - durable-before-reply: a Promise or Accepted leaves only when the record that justifies it
//!   is durable on the sender's simulated disk (checked against the disk, not the core's label);
//! - no group stops on a checksum mismatch; after the heal phase every group made progress and
//!   all replicas converge to the same applied point.
pub mod disk;

use crate::core::value;
use crate::core::{
    Ballot, Config, CoreTable, FailReason, GroupId, Instance, Lsn, Message, NodeId, Outputs, Prng,
    ProposalId, ProposalResult, RecordKind, SendAfterDurable, Start, Tick,
};
use bytes::Bytes;
use disk::SimDisk;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

/// Fault kinds the simulator can inject (all on by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Messages lost.
    Loss,
    /// Messages delivered twice.
    Dup,
    /// Some messages delayed far beyond the others.
    Reorder,
    /// Symmetric partitions (a minority cut from the rest).
    Partition,
    /// One-way partitions (a -> b blocked, b -> a open).
    OneWay,
    /// Crash and restart (a crash loses unsynced writes).
    Crash,
    /// A crash tears the write in flight.
    Torn,
    /// A crash flips a bit in a durable record followed by valid data.
    BitFlip,
    /// Power loss: every node crashes at once, each tearing its write in flight.
    PowerLoss,
    /// A crashed node restarts with its data directory wiped (its state lost).
    Wipe,
    /// A crash flips a bit in the last durable write (it completed; its replies may have left).
    RotLast,
    /// A disk write stalls for hundreds of ticks now and then.
    Stall,
}

impl Fault {
    /// Every fault, in the order of `--faults` names.
    pub const ALL: [Fault; 12] = [
        Fault::Loss,
        Fault::Dup,
        Fault::Reorder,
        Fault::Partition,
        Fault::OneWay,
        Fault::Crash,
        Fault::Torn,
        Fault::BitFlip,
        Fault::PowerLoss,
        Fault::Wipe,
        Fault::RotLast,
        Fault::Stall,
    ];

    /// The `--faults` name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Loss => "loss",
            Fault::Dup => "dup",
            Fault::Reorder => "reorder",
            Fault::Partition => "partition",
            Fault::OneWay => "oneway",
            Fault::Crash => "crash",
            Fault::Torn => "torn",
            Fault::BitFlip => "bitflip",
            Fault::PowerLoss => "powerloss",
            Fault::Wipe => "wipe",
            Fault::RotLast => "rotlast",
            Fault::Stall => "stall",
        }
    }

    /// Parses a comma-separated list; `all` and `none` are accepted.
    pub fn parse_list(list: &str) -> Result<BTreeSet<Fault>, String> {
        let mut set = BTreeSet::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "all" => set.extend(Fault::ALL),
                "none" => {}
                _ => {
                    let fault = Fault::ALL
                        .iter()
                        .find(|f| f.name() == name)
                        .ok_or_else(|| {
                            let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                            format!(
                                "unknown fault {name:?}; known: all, none, {}",
                                names.join(", ")
                            )
                        })?;
                    set.insert(*fault);
                }
            }
        }
        Ok(set)
    }

    /// The list as `--faults` takes it.
    pub fn list_name(set: &BTreeSet<Fault>) -> String {
        if set.is_empty() {
            return "none".to_string();
        }
        let names: Vec<&str> = set.iter().map(|f| f.name()).collect();
        names.join(",")
    }
}

/// A known protocol bug to inject (only with the `sim-bugs` feature).
#[cfg(feature = "sim-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The acceptor does not persist promises.
    ForgetPromise,
    /// Promise/Accepted leave before their record is durable.
    ReplyBeforeDurable,
    /// A new leader skips phase 1.
    SkipPrepareOnNewLeader,
    /// A candidate's Prepare leaves before its own promise is durable; bare Accepted counts.
    BallotReuseAfterCrash,
    /// The pre-fix re-learn target (peers' applied point + depth, any reply counts).
    RelearnTargetTooLow,
    /// Committed answered by comparing value bytes (values carry no identity).
    CommitByBytes,
    /// A cut last write is taken as torn, never as damage.
    CutDamagedLastWrite,
    /// Promises have no byte bound (the network drops those over the frame limit).
    UnboundedPromise,
    /// A node whose state was lost votes at once with empty promises.
    RejoinWithEmptyState,
    /// The acceptor accepts below its promise (lowering it): the invariant checker's bug.
    AcceptBelowPromise,
}

#[cfg(feature = "sim-bugs")]
impl Bug {
    /// Every bug.
    pub const ALL: [Bug; 10] = [
        Bug::ForgetPromise,
        Bug::ReplyBeforeDurable,
        Bug::SkipPrepareOnNewLeader,
        Bug::BallotReuseAfterCrash,
        Bug::RelearnTargetTooLow,
        Bug::CommitByBytes,
        Bug::CutDamagedLastWrite,
        Bug::UnboundedPromise,
        Bug::RejoinWithEmptyState,
        Bug::AcceptBelowPromise,
    ];

    /// The `--bug` name.
    pub fn name(self) -> &'static str {
        match self {
            Bug::ForgetPromise => "forget-promise",
            Bug::ReplyBeforeDurable => "reply-before-durable",
            Bug::SkipPrepareOnNewLeader => "skip-prepare-on-new-leader",
            Bug::BallotReuseAfterCrash => "ballot-reuse-after-crash",
            Bug::RelearnTargetTooLow => "relearn-target-too-low",
            Bug::CommitByBytes => "commit-by-bytes",
            Bug::CutDamagedLastWrite => "cut-damaged-last-write",
            Bug::UnboundedPromise => "unbounded-promise",
            Bug::RejoinWithEmptyState => "rejoin-with-empty-state",
            Bug::AcceptBelowPromise => "accept-below-promise",
        }
    }

    /// Parses a `--bug` name.
    pub fn parse(name: &str) -> Result<Bug, String> {
        Bug::ALL
            .iter()
            .copied()
            .find(|b| b.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                format!("unknown bug {name:?}; known: {}", names.join(", "))
            })
    }

    /// The core's flags for this bug.
    pub fn flags(self) -> crate::core::Bugs {
        let mut bugs = crate::core::Bugs::default();
        match self {
            Bug::ForgetPromise => bugs.forget_promise = true,
            Bug::ReplyBeforeDurable => bugs.reply_before_durable = true,
            Bug::SkipPrepareOnNewLeader => bugs.skip_prepare_on_new_leader = true,
            Bug::BallotReuseAfterCrash => bugs.ballot_reuse_after_crash = true,
            Bug::RelearnTargetTooLow => bugs.relearn_target_too_low = true,
            Bug::CommitByBytes => bugs.commit_by_bytes = true,
            Bug::CutDamagedLastWrite => bugs.cut_damaged_last_write = true,
            Bug::UnboundedPromise => bugs.unbounded_promise = true,
            Bug::RejoinWithEmptyState => bugs.rejoin_with_empty_state = true,
            Bug::AcceptBelowPromise => bugs.accept_below_promise = true,
        }
        bugs
    }
}

/// What one simulation run looks like (the same for every seed of a run).
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Replicas (3 or 5).
    pub nodes: u32,
    /// Paxos groups (all on the one simulated core of each node).
    pub groups: u32,
    /// `pipeline_depth` of every group.
    pub pipeline: u32,
    /// Faults injected during the safety phase.
    pub faults: BTreeSet<Fault>,
    /// Ticks of the safety phase (faults on).
    pub safety_ticks: u64,
    /// Ticks of the heal phase (faults off, crashed nodes restarted, progress required).
    pub heal_ticks: u64,
    /// Clients per group.
    pub clients_per_group: u32,
    /// The injected bug, if any.
    #[cfg(feature = "sim-bugs")]
    pub bug: Option<Bug>,
    /// Run the durable-before-reply checker (off only to show that the other checkers catch a
    /// bug's consequences on their own).
    pub check_durable_replies: bool,
    /// Keep a readable event log in the report (for replaying one seed).
    pub log: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 3,
            groups: 4,
            pipeline: 8,
            faults: Fault::ALL.into_iter().collect(),
            safety_ticks: 3000,
            heal_ticks: 3000,
            clients_per_group: 2,
            #[cfg(feature = "sim-bugs")]
            bug: None,
            check_durable_replies: true,
            log: false,
        }
    }
}

impl SimOptions {
    /// The one-line command that replays `seed` with these options.
    pub fn replay_command(&self, seed: u64) -> String {
        #[allow(unused_mut)]
        let mut features = String::new();
        #[allow(unused_mut)]
        let mut bug = String::new();
        #[cfg(feature = "sim-bugs")]
        if let Some(b) = self.bug {
            features = " --features sim-bugs".to_string();
            bug = format!(" --bug {}", b.name());
        }
        if !self.check_durable_replies {
            bug.push_str(" --skip-durable-check");
        }
        format!(
            "cargo run --release -p paxring-tools{features} -- sim --seeds 1 --start-seed {seed} --nodes {} --groups {} --pipeline {} --faults {} --safety-ticks {} --heal-ticks {}{bug}",
            self.nodes,
            self.groups,
            self.pipeline,
            Fault::list_name(&self.faults),
            self.safety_ticks,
            self.heal_ticks,
        )
    }

    fn config(&self) -> Config {
        Config {
            pipeline_depth: self.pipeline,
            // Small limits so that a Promise over a long run-ahead window is cut and phase 1
            // continues in chunks (the network drops anything over the limit, as the real
            // one does).
            batch_bytes_max: SIM_BATCH_BYTES,
            message_bytes_max: SIM_MESSAGE_BYTES,
            ..Config::default()
        }
    }
}

/// The result of one seed.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// The first violation found, if any.
    pub violation: Option<String>,
    /// Hash of every event of the run (same seed, same hash).
    pub trace_hash: u64,
    /// Proposals acknowledged Committed.
    pub commits: u64,
    /// Messages handed to the network.
    pub messages: u64,
    /// Distinct (group, instance)s chosen.
    pub instances: u64,
    /// Completed disk writes, all nodes.
    pub durable_writes: u64,
    /// Steady-state window (last half of the heal phase): instances chosen there.
    pub steady_instances: u64,
    /// Steady-state window: completed disk writes, all nodes.
    pub steady_durable_writes: u64,
    /// Steady-state window: leader instances with client commands.
    pub steady_commit_instances: u64,
    /// Steady-state window: round trips on those instances' critical paths.
    pub steady_commit_rtts: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Data directories wiped.
    pub wipes: u64,
    /// Power losses (every node at once).
    pub power_losses: u64,
    /// Messages the network dropped for exceeding the message limit.
    pub oversize_dropped: u64,
    /// Disk writes that stalled.
    pub stalls: u64,
    /// The event log (only with `SimOptions::log`).
    pub log: Vec<String>,
}

struct Packet {
    from: NodeId,
    to: NodeId,
    group: GroupId,
    bytes: Vec<u8>,
}

struct Node {
    id: NodeId,
    table: Option<CoreTable>,
    disk: SimDisk,
    staged: Vec<(Lsn, crate::core::Record)>,
    held: Vec<SendAfterDurable>,
    restart_at: Option<Tick>,
    /// What the disk holds durably (for the durable-before-reply checker).
    durable_promised: BTreeMap<GroupId, Ballot>,
    durable_accepts: BTreeSet<(GroupId, Instance, Ballot)>,
    applied_next: BTreeMap<GroupId, Instance>,
    incarnation: u64,
    /// Each group's promise at the last step (it must never decrease while the node runs).
    last_promised: BTreeMap<GroupId, Ballot>,
    /// The data directory's identity file exists (the runtime's rule: a start without one,
    /// outside the cluster's bootstrap, has lost its state). Written at bootstrap, and after a
    /// start without it once the first write (carrying the re-learn records) is durable.
    identity: bool,
}

struct Client {
    group: GroupId,
    target: NodeId,
    outstanding: BTreeMap<ProposalId, Tick>,
    next_at: Tick,
    sequence: u64,
    id: u32,
}

/// The simulator's value limit (bytes).
const SIM_BATCH_BYTES: u32 = 1024;
/// The simulator's message limit (the network drops larger messages).
const SIM_MESSAGE_BYTES: u32 = SIM_BATCH_BYTES + crate::core::MESSAGE_OVERHEAD_BYTES;

/// The proposals a client may have outstanding at once.
const CLIENT_WINDOW: usize = 4;
/// A client forgets a proposal it heard nothing about after this long (its node crashed).
const CLIENT_TIMEOUT_TICKS: u64 = 1000;
/// Ticks after the heal phase with clients stopped, for replicas to converge.
const DRAIN_TICKS: u64 = 600;

struct Sim {
    options: SimOptions,
    seed: u64,
    rng: Prng,
    now: Tick,
    nodes: Vec<Node>,
    members: Vec<NodeId>,
    network: BTreeMap<(Tick, u64), Packet>,
    packet_seq: u64,
    blocked: BTreeSet<(NodeId, NodeId)>,
    partition_until: Tick,
    faults_on: bool,
    clients: Vec<Client>,
    clients_on: bool,
    proposal_next: u64,
    proposals: BTreeMap<ProposalId, (u32, Bytes)>,
    proposed: BTreeSet<Bytes>,
    chosen: BTreeMap<(GroupId, Instance), Bytes>,
    acked: BTreeMap<(GroupId, Instance), Vec<(u32, Bytes)>>,
    /// Which proposal was told Committed for each chosen command (group, instance, index).
    acked_slots: BTreeMap<(GroupId, Instance, u32), ProposalId>,
    /// The last command proposed per group (clients sometimes send the same bytes again).
    last_command: BTreeMap<GroupId, Bytes>,
    violation: Option<String>,
    hasher: std::collections::hash_map::DefaultHasher,
    report: SeedReport,
    outputs: Outputs,
}

/// Runs one seed to the end (or to its first violation).
pub fn run_seed(options: &SimOptions, seed: u64) -> SeedReport {
    let mut sim = Sim::new(options.clone(), seed);
    sim.run();
    sim.report.seed = seed;
    sim.report.violation = sim.violation.take();
    sim.report.trace_hash = sim.hasher.finish();
    sim.report.instances = sim.chosen.len() as u64;
    sim.report.durable_writes = sim.nodes.iter().map(|n| n.disk.syncs).sum();
    sim.report
}

impl Sim {
    fn new(options: SimOptions, seed: u64) -> Sim {
        assert!(options.nodes >= 1 && options.groups >= 1);
        let members: Vec<NodeId> = (1..=options.nodes).map(NodeId).collect();
        let mut sim = Sim {
            seed,
            rng: Prng::new(seed ^ 0x5EED_0000_0000_0000),
            now: Tick(0),
            nodes: Vec::new(),
            members: members.clone(),
            network: BTreeMap::new(),
            packet_seq: 0,
            blocked: BTreeSet::new(),
            partition_until: Tick(0),
            faults_on: true,
            clients: Vec::new(),
            clients_on: true,
            proposal_next: 1,
            proposals: BTreeMap::new(),
            proposed: BTreeSet::new(),
            chosen: BTreeMap::new(),
            acked: BTreeMap::new(),
            acked_slots: BTreeMap::new(),
            last_command: BTreeMap::new(),
            violation: None,
            hasher: std::collections::hash_map::DefaultHasher::new(),
            report: SeedReport::default(),
            outputs: Outputs::default(),
            options,
        };
        for &id in &members {
            sim.nodes.push(Node {
                id,
                table: None,
                disk: SimDisk::default(),
                staged: Vec::new(),
                held: Vec::new(),
                restart_at: None,
                durable_promised: BTreeMap::new(),
                durable_accepts: BTreeSet::new(),
                applied_next: BTreeMap::new(),
                incarnation: 0,
                last_promised: BTreeMap::new(),
                identity: true, // the cluster's bootstrap: empty state is legitimate
            });
        }
        for index in 0..sim.nodes.len() {
            sim.start_node(index);
        }
        let mut client_id = 0;
        for group in 0..sim.options.groups {
            for _ in 0..sim.options.clients_per_group {
                let target = members[sim.rng.below(members.len() as u64) as usize];
                sim.clients.push(Client {
                    group: GroupId(group),
                    target,
                    outstanding: BTreeMap::new(),
                    next_at: Tick(0),
                    sequence: 0,
                    id: client_id,
                });
                client_id += 1;
            }
        }
        sim
    }

    fn groups(&self) -> Vec<GroupId> {
        (0..self.options.groups).map(GroupId).collect()
    }

    fn start_node(&mut self, index: usize) {
        let groups = self.groups();
        let config = self.options.config();
        let node = &mut self.nodes[index];
        let recovery = node.disk.recover();
        node.incarnation += 1;
        let prng = Prng::new(
            self.seed
                .wrapping_mul(31)
                .wrapping_add(u64::from(node.id.0) << 32 | node.incarnation),
        );
        let start = Start {
            incarnation: node.incarnation,
            state_lost: !node.identity,
        };
        let table = CoreTable::restore_with(
            config,
            node.id,
            &self.members,
            &groups,
            &recovery,
            prng,
            start,
            #[cfg(feature = "sim-bugs")]
            self.options.bug.map(|b| b.flags()).unwrap_or_default(),
        )
        .expect("simulator config is valid");
        let mut table = table;
        table.set_panic_on_broken_invariant(false); // the invariant checker reports it
        node.applied_next.clear();
        node.last_promised.clear();
        node.table = Some(table);
        node.restart_at = None;
        self.trace(&(
            "start",
            index,
            recovery.records.len(),
            recovery.damaged.len(),
        ));
    }

    fn trace<T: Hash + std::fmt::Debug>(&mut self, event: &T) {
        self.now.0.hash(&mut self.hasher);
        event.hash(&mut self.hasher);
        if self.options.log {
            self.report.log.push(format!("{} {:?}", self.now.0, event));
        }
    }

    /// Adds a line to the event log (only when `log` is on; not part of the trace hash).
    fn note(&mut self, line: impl FnOnce() -> String) {
        if self.options.log {
            let line = line();
            self.report.log.push(format!("{} {line}", self.now.0));
        }
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(format!("tick {}: {what}", self.now.0));
        }
    }

    fn run(&mut self) {
        let safety_end = self.options.safety_ticks;
        let heal_end = safety_end + self.options.heal_ticks;
        let steady_start = safety_end + self.options.heal_ticks / 2;
        let drain_end = heal_end + DRAIN_TICKS;
        let mut at_heal: Vec<Instance> = Vec::new();
        let mut steady_base = (0, 0, 0, 0);
        for t in 1..=drain_end {
            self.now = Tick(t);
            if t == safety_end + 1 {
                self.heal();
                at_heal = self.groups().iter().map(|g| self.max_applied(*g)).collect();
            }
            if t == steady_start {
                steady_base = self.steady_counters();
            }
            if t == heal_end + 1 {
                let now = self.steady_counters();
                self.report.steady_instances = now.0 - steady_base.0;
                self.report.steady_durable_writes = now.1 - steady_base.1;
                self.report.steady_commit_instances = now.2 - steady_base.2;
                self.report.steady_commit_rtts = now.3 - steady_base.3;
                self.clients_on = false;
            }
            self.step();
            if self.violation.is_some() {
                return;
            }
        }
        self.final_checks(&at_heal);
    }

    /// (instances chosen, disk writes, leader commit instances, leader commit RTTs).
    fn steady_counters(&self) -> (u64, u64, u64, u64) {
        let mut counters = (self.chosen.len() as u64, 0, 0, 0);
        for node in &self.nodes {
            counters.1 += node.disk.syncs;
            if let Some(table) = &node.table {
                counters.2 += table.stats().commit_instances;
                counters.3 += table.stats().commit_rtts_total;
            }
        }
        counters
    }

    fn max_applied(&self, group: GroupId) -> Instance {
        self.nodes
            .iter()
            .filter_map(|n| n.table.as_ref()?.applied_next(group))
            .max()
            .unwrap_or(Instance(0))
    }

    fn heal(&mut self) {
        self.faults_on = false;
        self.blocked.clear();
        for index in 0..self.nodes.len() {
            if self.nodes[index].table.is_none() {
                self.start_node(index);
            }
        }
    }

    fn final_checks(&mut self, at_heal: &[Instance]) {
        for (index, group) in self.groups().into_iter().enumerate() {
            let applied: Vec<Instance> = self
                .nodes
                .iter()
                .map(|n| {
                    n.table
                        .as_ref()
                        .and_then(|t| t.applied_next(group))
                        .unwrap_or(Instance(0))
                })
                .collect();
            let max = applied.iter().max().copied().unwrap_or(Instance(0));
            if max <= at_heal[index] {
                let why: Vec<String> = self
                    .nodes
                    .iter()
                    .filter_map(|n| {
                        let status = n.table.as_ref()?.group_status(group)?;
                        Some(format!(
                            "{}: {}",
                            n.id,
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
                    "replicas did not converge: group {group} applied points {applied:?}"
                ));
            }
        }
        let unchosen: Vec<(GroupId, Instance)> = self
            .acked
            .keys()
            .filter(|key| !self.chosen.contains_key(key))
            .copied()
            .collect();
        if let Some((group, instance)) = unchosen.first() {
            self.violate(format!(
                "acknowledged proposal at group {group} instance {instance} was never chosen"
            ));
        }
    }

    fn step(&mut self) {
        let now = self.now;
        // 1. Deliver what the network carries to now.
        while let Some(entry) = self.network.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let packet = entry.remove();
            self.deliver(packet);
        }
        // 2. Disk completions.
        for index in 0..self.nodes.len() {
            self.complete_disk(index);
        }
        // 3. Faults.
        if self.faults_on {
            self.inject_faults();
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].restart_at.is_some_and(|t| t <= now) {
                self.start_node(index);
            }
        }
        // 4. Time.
        for node in &mut self.nodes {
            if let Some(table) = &mut node.table {
                table.tick(now);
            }
        }
        // 5. Clients.
        if self.clients_on {
            for index in 0..self.clients.len() {
                self.client_step(index);
            }
        }
        // 6. End of round on every node.
        for index in 0..self.nodes.len() {
            self.end_round(index);
        }
        // 7. Every replica's invariants, and promises that only grow while a node runs.
        self.check_invariants();
    }

    fn check_invariants(&mut self) {
        let groups = self.groups();
        let mut broken = None;
        for node in &mut self.nodes {
            let Some(table) = &node.table else {
                continue;
            };
            if let Err(what) = table.invariants() {
                broken = Some(format!("invariant: node {}: {what}", node.id));
                break;
            }
            for &group in &groups {
                let now = table.promised(group).unwrap_or_default();
                let before = node.last_promised.insert(group, now).unwrap_or_default();
                if now < before {
                    broken = Some(format!(
                        "invariant: node {}: group {group}: promised decreased from {before} to {now}",
                        node.id
                    ));
                    break;
                }
            }
            if broken.is_some() {
                break;
            }
        }
        if let Some(what) = broken {
            self.violate(what);
        }
    }

    fn deliver(&mut self, packet: Packet) {
        let index = (packet.to.0 - 1) as usize;
        self.trace(&(
            "deliver",
            packet.from.0,
            packet.to.0,
            packet.group.0,
            &packet.bytes,
        ));
        let msg = match Message::decode(&packet.bytes) {
            Ok(msg) => msg,
            Err(error) => {
                self.violate(format!(
                    "codec: a message we encoded does not decode: {error}"
                ));
                return;
            }
        };
        self.note(|| {
            format!(
                "{} -> {} g{} {}",
                packet.from,
                packet.to,
                packet.group.0,
                describe(&msg)
            )
        });
        if let Some(table) = &mut self.nodes[index].table {
            table.on_message(packet.from, packet.group, msg);
        }
    }

    fn complete_disk(&mut self, index: usize) {
        let now = self.now;
        let node = &mut self.nodes[index];
        let Some(done) = node.disk.complete(now) else {
            return;
        };
        for record in &done.records {
            let promised = node.durable_promised.entry(record.group).or_default();
            match record.kind {
                RecordKind::Promise => *promised = (*promised).max(record.promised),
                RecordKind::Accept => {
                    *promised = (*promised).max(record.promised);
                    node.durable_accepts
                        .insert((record.group, record.instance, record.accepted));
                }
                _ => {}
            }
        }
        if let Some(table) = &mut node.table {
            table.durable(done.last_lsn);
            node.identity = true;
        }
        self.trace(&("durable", index, done.last_lsn.0));
    }

    fn end_round(&mut self, index: usize) {
        let mut out = std::mem::take(&mut self.outputs);
        out.clear();
        {
            let node = &mut self.nodes[index];
            let Some(table) = &mut node.table else {
                self.outputs = out;
                return;
            };
            table.poll(&mut out);
        }
        let from = self.nodes[index].id;
        for send in out.sends.drain(..) {
            self.check_durable_reply(index, send.group, &send.msg);
            self.send(from, send.to, send.group, &send.msg);
        }
        self.nodes[index].held.append(&mut out.sends_after_durable);
        self.release_held(index);
        for chosen in out.chosen.drain(..) {
            self.on_chosen(index, chosen.group, chosen.instance, chosen.value);
        }
        for result in out.results.drain(..) {
            self.on_result(result);
        }
        for (group, error) in out.stopped.drain(..) {
            self.violate(format!("node {from} stopped group {group}: {error}"));
        }
        let node = &mut self.nodes[index];
        node.staged.append(&mut out.appends);
        if !node.disk.busy() && !node.staged.is_empty() {
            let staged = std::mem::take(&mut node.staged);
            let first = staged[0].0;
            for (offset, (lsn, _)) in staged.iter().enumerate() {
                assert_eq!(lsn.0, first.0 + offset as u64, "Lsns are consecutive");
            }
            let mut latency = 1 + self.rng.below(4);
            if self.faults_on
                && self.options.faults.contains(&Fault::Stall)
                && self.rng.chance(1, 150)
            {
                latency += 200 + self.rng.below(800);
                self.report.stalls += 1;
            }
            let records = staged.into_iter().map(|(_, r)| r).collect();
            node.disk.submit(first, records, Tick(self.now.0 + latency));
        }
        self.outputs = out;
    }

    fn release_held(&mut self, index: usize) {
        let Some(durable) = self.nodes[index].table.as_ref().map(|t| t.durable_lsn()) else {
            return;
        };
        let held = std::mem::take(&mut self.nodes[index].held);
        let (ready, waiting): (Vec<_>, Vec<_>) = held.into_iter().partition(|h| h.lsn <= durable);
        self.nodes[index].held = waiting;
        let from = self.nodes[index].id;
        for reply in ready {
            self.check_durable_reply(index, reply.group, &reply.msg);
            self.send(from, reply.to, reply.group, &reply.msg);
        }
    }

    /// Durable-before-reply, checked against the simulated disk.
    fn check_durable_reply(&mut self, index: usize, group: GroupId, msg: &Message) {
        let node = &self.nodes[index];
        let problem = match msg {
            Message::Promise { ballot, .. } => {
                let durable = node.durable_promised.get(&group).copied().unwrap_or_default();
                (durable < *ballot).then(|| format!("Promise {ballot} left but only {durable} is durable"))
            }
            Message::Accepted { ballot, instance, .. } => (!node
                .durable_accepts
                .contains(&(group, *instance, *ballot)))
            .then(|| format!("Accepted {ballot} for instance {instance} left before its Accept record was durable")),
            _ => None,
        };
        if let Some(problem) = problem.filter(|_| self.options.check_durable_replies) {
            let id = node.id;
            self.violate(format!(
                "durable-before-reply: node {id} group {group}: {problem}"
            ));
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, group: GroupId, msg: &Message) {
        self.report.messages += 1;
        let bytes = msg.encode();
        self.trace(&("send", from.0, to.0, group.0, &bytes));
        if bytes.len() - 1 > SIM_MESSAGE_BYTES as usize {
            // The network's frame limit (the body excludes the kind byte).
            self.report.oversize_dropped += 1;
            return;
        }
        if self.blocked.contains(&(from, to)) {
            return;
        }
        let faults = self.faults_on;
        if faults && self.options.faults.contains(&Fault::Loss) && self.rng.chance(2, 100) {
            return;
        }
        let copies =
            if faults && self.options.faults.contains(&Fault::Dup) && self.rng.chance(2, 100) {
                2
            } else {
                1
            };
        for _ in 0..copies {
            let mut delay = 1 + self.rng.below(8);
            if faults && self.options.faults.contains(&Fault::Reorder) && self.rng.chance(5, 100) {
                delay += self.rng.below(60);
            }
            self.packet_seq += 1;
            self.network.insert(
                (Tick(self.now.0 + delay), self.packet_seq),
                Packet {
                    from,
                    to,
                    group,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn inject_faults(&mut self) {
        let n = self.nodes.len();
        let faults = self.options.faults.clone();
        if self.now >= self.partition_until && !self.blocked.is_empty() {
            self.blocked.clear();
            self.trace(&"partition-heal");
        }
        let partition = faults.contains(&Fault::Partition);
        let one_way = faults.contains(&Fault::OneWay);
        if self.blocked.is_empty() && (partition || one_way) && self.rng.chance(1, 300) {
            let symmetric = partition && (!one_way || self.rng.chance(1, 2));
            if symmetric {
                // Cut a minority (at most half) from the rest.
                let size = 1 + self.rng.below((n as u64) / 2) as usize;
                let mut minority = BTreeSet::new();
                while minority.len() < size.min(n) {
                    minority.insert(self.members[self.rng.below(n as u64) as usize]);
                }
                for &a in &minority {
                    for &b in &self.members {
                        if !minority.contains(&b) {
                            self.blocked.insert((a, b));
                            self.blocked.insert((b, a));
                        }
                    }
                }
            } else if n >= 2 {
                let a = self.members[self.rng.below(n as u64) as usize];
                let b = self.members[self.rng.below(n as u64) as usize];
                if a != b {
                    self.blocked.insert((a, b));
                }
            }
            self.partition_until = Tick(self.now.0 + 100 + self.rng.below(500));
            let blocked: Vec<(u32, u32)> = self.blocked.iter().map(|(a, b)| (a.0, b.0)).collect();
            self.trace(&("partition", blocked));
        }
        if faults.contains(&Fault::Crash) && self.rng.chance(1, 400) {
            let index = self.rng.below(n as u64) as usize;
            if self.nodes[index].table.is_some() {
                // Damage that loses records this node acknowledged (a flip, a rotted last
                // write, a wipe) and torn tails (which re-learn like damage, since the two look
                // the same on disk) are injected only while every other node is up, whole and
                // has its repair durable. So each chosen value stays intact on some member of
                // every quorum (PAR's condition), and a replica that pools its re-learn reports
                // with others (power loss) lost only writes that never completed: the WAL cannot
                // tell a torn write from a rotted one (docs/PROTOCOL.md#re-learning, limits).
                // Flips stay on a minority of the replicas (fixed per seed).
                let others_whole = self.others_whole(index);
                let torn = faults.contains(&Fault::Torn) && others_whole && self.rng.chance(1, 2);
                let flip = faults.contains(&Fault::BitFlip)
                    && index < (n - 1) / 2
                    && others_whole
                    && self.rng.chance(1, 4);
                let rot_last = !flip
                    && faults.contains(&Fault::RotLast)
                    && others_whole
                    && self.rng.chance(1, 4);
                self.crash(index, torn, flip, rot_last);
                if !flip
                    && !rot_last
                    && faults.contains(&Fault::Wipe)
                    && others_whole
                    && self.rng.chance(1, 6)
                {
                    let node = &mut self.nodes[index];
                    node.disk = SimDisk::default();
                    node.durable_promised.clear();
                    node.durable_accepts.clear();
                    node.identity = false;
                    self.report.wipes += 1;
                    self.trace(&("wipe", index));
                }
            }
        }
        if faults.contains(&Fault::PowerLoss)
            && self.others_whole(usize::MAX)
            && self.rng.chance(1, 2500)
        {
            // Every node at once, each tearing its write in flight.
            self.report.power_losses += 1;
            self.trace(&"power-loss");
            for index in 0..n {
                if self.nodes[index].table.is_some() {
                    self.crash(index, true, false, false);
                }
            }
        }
    }

    /// Every node but `index` is up, not re-learning, and has nothing waiting for its disk (a
    /// repair record in a stalled write is not yet a repair).
    fn others_whole(&self, index: usize) -> bool {
        self.nodes.iter().enumerate().all(|(i, node)| {
            i == index
                || node.table.as_ref().is_some_and(|t| {
                    t.relearning_count() == 0 && t.durable_lsn().0 + 1 >= t.next_lsn().0
                }) && node.staged.is_empty()
                    && !node.disk.busy()
        })
    }

    fn crash(&mut self, index: usize, torn: bool, flip: bool, rot_last: bool) {
        self.report.crashes += 1;
        let restart = Tick(self.now.0 + 50 + self.rng.below(400));
        let node = &mut self.nodes[index];
        node.table = None;
        node.staged.clear();
        node.held.clear();
        node.disk.crash(&mut self.rng, torn, flip, rot_last);
        node.restart_at = Some(restart);
        self.trace(&("crash", index, torn, flip, rot_last));
    }

    fn client_step(&mut self, index: usize) {
        let now = self.now;
        let client = &mut self.clients[index];
        client
            .outstanding
            .retain(|_, sent| now.0 < sent.0 + CLIENT_TIMEOUT_TICKS);
        if client.outstanding.len() >= CLIENT_WINDOW || client.next_at > now {
            return;
        }
        let group = client.group;
        let target = client.target;
        client.sequence += 1;
        let mut command = Bytes::from(format!("c{}-{}", client.id, client.sequence));
        if self.rng.chance(1, 20) {
            // Now and then a large command (Promises over a long window get cut).
            let pad = 300 + self.rng.below(400) as usize;
            command = Bytes::from(format!(
                "c{}-{}{}",
                client.id,
                client.sequence,
                ".".repeat(pad)
            ));
        } else if self.rng.chance(1, 10) {
            // The same bytes another client just proposed (two clients sending the same cas):
            // at most one of the two proposals may be told Committed for one chosen command.
            if let Some(last) = self.last_command.get(&group) {
                command = last.clone();
            }
        }
        self.last_command.insert(group, command.clone());
        let id = ProposalId(self.proposal_next);
        self.proposal_next += 1;
        let node = &mut self.nodes[(target.0 - 1) as usize];
        let Some(table) = &mut node.table else {
            let client = &mut self.clients[index];
            client.target = self.members[self.rng.below(self.members.len() as u64) as usize];
            client.next_at = Tick(now.0 + 10);
            return;
        };
        let result = table.propose(group, id, command.clone());
        self.trace(&("propose", index, id.0, result.is_ok()));
        let client = &mut self.clients[index];
        match result {
            Ok(()) => {
                client.outstanding.insert(id, now);
                self.proposals.insert(id, (client.id, command.clone()));
                self.proposed.insert(command);
                client.next_at = Tick(now.0 + self.rng.below(3));
            }
            Err(FailReason::NotLeader { leader_hint }) => {
                client.target = leader_hint.unwrap_or_else(|| {
                    self.members[self.rng.below(self.members.len() as u64) as usize]
                });
                client.next_at = Tick(now.0 + 5 + self.rng.below(20));
            }
            Err(_) => client.next_at = Tick(now.0 + 20 + self.rng.below(20)),
        }
    }

    fn on_result(&mut self, result: ProposalResult) {
        let id = match &result {
            ProposalResult::Committed { id, .. }
            | ProposalResult::Failed { id, .. }
            | ProposalResult::Unknown { id, .. } => *id,
        };
        self.trace(&("result", id.0, format!("{result:?}")));
        let Some((client_id, command)) = self.proposals.remove(&id) else {
            self.violate(format!(
                "a result for proposal {} that is not outstanding",
                id.0
            ));
            return;
        };
        if let Some(client) = self.clients.get_mut(client_id as usize) {
            client.outstanding.remove(&id);
        }
        if let ProposalResult::Committed {
            group,
            instance,
            index,
            ..
        } = result
        {
            self.report.commits += 1;
            if let Some(other) = self.acked_slots.insert((group, instance, index), id) {
                self.violate(format!(
                    "committed-once: proposals {} and {} were both told Committed for entry {index} of group {group} instance {instance} (the command ran once)",
                    other.0, id.0
                ));
            }
            if let Some(value) = self.chosen.get(&(group, instance)).cloned() {
                self.check_ack(group, instance, index, &command, &value);
            }
            self.acked
                .entry((group, instance))
                .or_default()
                .push((index, command));
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
                "acknowledged command {:?} is not entry {index} of the value chosen at group {group} instance {instance}",
                String::from_utf8_lossy(command)
            ));
        }
    }

    fn on_chosen(&mut self, index: usize, group: GroupId, instance: Instance, value: Bytes) {
        self.trace(&("chosen", index, group.0, instance.0, &value[..]));
        let node = &mut self.nodes[index];
        let expected = node.applied_next.entry(group).or_default();
        if instance != *expected {
            let id = node.id;
            let want = *expected;
            self.violate(format!(
                "order: node {id} applied group {group} instance {instance}, expected {want}"
            ));
            return;
        }
        *expected = Instance(instance.0 + 1);
        let id = node.id;
        match self.chosen.get(&(group, instance)) {
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
        for command in &commands {
            if !self.proposed.contains(command) {
                self.violate(format!(
                    "validity: chosen command {:?} was never proposed",
                    String::from_utf8_lossy(command)
                ));
                return;
            }
        }
        self.chosen.insert((group, instance), value.clone());
        if let Some(acks) = self.acked.get(&(group, instance)).cloned() {
            for (index, command) in acks {
                self.check_ack(group, instance, index, &command, &value);
            }
        }
    }
}

/// One line for a message in the event log (values shortened).
fn describe(msg: &Message) -> String {
    let text = format!("{msg:?}");
    if text.len() > 300 {
        format!("{}...", &text[..300])
    } else {
        text
    }
}

/// Totals over many seeds.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds with a violation.
    pub violations: u64,
    /// Acknowledged commits.
    pub commits: u64,
    /// Messages sent.
    pub messages: u64,
    /// Distinct instances chosen.
    pub instances: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Data directories wiped.
    pub wipes: u64,
    /// Power losses.
    pub power_losses: u64,
    /// Messages dropped over the message limit.
    pub oversize_dropped: u64,
    /// Steady window sums (see [`SeedReport`]).
    pub steady_instances: u64,
    /// Steady window disk writes.
    pub steady_durable_writes: u64,
    /// Steady window leader commit instances.
    pub steady_commit_instances: u64,
    /// Steady window commit RTTs.
    pub steady_commit_rtts: u64,
}

impl RunSummary {
    /// Adds one seed.
    pub fn add(&mut self, report: &SeedReport) {
        self.seeds += 1;
        self.violations += u64::from(report.violation.is_some());
        self.commits += report.commits;
        self.messages += report.messages;
        self.instances += report.instances;
        self.crashes += report.crashes;
        self.wipes += report.wipes;
        self.power_losses += report.power_losses;
        self.oversize_dropped += report.oversize_dropped;
        self.steady_instances += report.steady_instances;
        self.steady_durable_writes += report.steady_durable_writes;
        self.steady_commit_instances += report.steady_commit_instances;
        self.steady_commit_rtts += report.steady_commit_rtts;
    }

    /// Messages per acknowledged commit.
    pub fn messages_per_commit(&self) -> f64 {
        ratio(self.messages, self.commits)
    }

    /// Completed disk writes per chosen instance per replica, in the steady window.
    pub fn durable_writes_per_instance_per_replica(&self, nodes: u32) -> f64 {
        ratio(
            self.steady_durable_writes,
            self.steady_instances * u64::from(nodes),
        )
    }

    /// Round trips per commit, in the steady window.
    pub fn rtts_per_commit(&self) -> f64 {
        ratio(self.steady_commit_rtts, self.steady_commit_instances)
    }
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed-once checker fires when two proposals are told Committed for one chosen
    /// command (what `commit-by-bytes` does when two leaders batch identical bytes; the
    /// scripted case is `engine/tests/safety_transcripts.rs`).
    #[test]
    fn committed_once_checker_reports_two_acks_for_one_entry() {
        let mut sim = Sim::new(SimOptions::default(), 1);
        let command = Bytes::from_static(b"cas k 0 1");
        for id in [ProposalId(900), ProposalId(901)] {
            sim.proposals.insert(id, (0, command.clone()));
            sim.on_result(ProposalResult::Committed {
                id,
                group: GroupId(0),
                instance: Instance(5),
                index: 0,
            });
        }
        let violation = sim.violation.expect("reported");
        assert!(violation.contains("committed-once:"), "{violation}");
    }
}
