//! The deterministic simulator: every node runs the real [`Driver`] (the same round code as the
//! io_uring runtime) over the real core, WAL encoding/recovery and network frame codec, on
//! several cores per node, against a simulated network and simulated disks, with safety
//! checkers after every step.
//!
//! Owns: the cluster of N nodes x C cores x G groups and its phases (safety with faults, heal,
//! drain), node lifecycle (start from the disks' recovery, crash, pause, clock skew, fail-stop
//! on a write error), the state machines (in-order apply with checkpoints and the replay
//! rule), and the trace hash. Jobs live in their own files: `network` (links, partitions,
//! corruption), `disk` (the WAL image and disk faults), `faults` (classes, per-seed swarm
//! profile, bugs), `clients`, `checkers`. Must never read a clock, touch a file or socket,
//! spawn a thread or use a random source other than the seeded [`Prng`]: one seed, one trace.
//!
//! The checkers, each named in its violation (docs/TESTING.md lists which guards what):
//! `agreement`, `validity`, `acknowledged`, `committed-once`, `identity-once`,
//! `failed-never-chosen`, `order`, `state-machine`, `durable-before-reply`, `codec`,
//! `invariant`, `stopped`, `rtt`, and after the heal `no progress` / `converge`.
mod checkers;
mod clients;
pub mod disk;
mod faults;
mod network;
mod reads;
mod transfer;

pub use faults::{Fault, Profile, SKEW_PPM_MAX};

#[cfg(feature = "sim-bugs")]
pub use faults::Bug;

use crate::core::{
    core_of_group, Ballot, Chosen, Config, CoreTable, GroupError, GroupId, Instance, Lsn,
    Membership, Message, NodeId, Prng, ProposalId, ProposalResult, Record, RecordKind, Start, Tick,
};
use crate::driver::{self, Driver, StorageError};
use bytes::Bytes;
use checkers::Checkers;
use clients::Client;
use disk::{CrashDamage, SimDisk};
use network::{Packet, SimNet};
use paxring_net::{DecodeError as FrameError, Decoder};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

/// What one simulation run looks like (the same for every seed of a run).
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Voting replicas (3 or 5).
    pub nodes: u32,
    /// Followers (non-voting replicas, docs/PROTOCOL.md#follower-nodes) after the voters: node ids
    /// `nodes + 1 ..= nodes + followers`. 0 by default (traces unchanged).
    pub followers: u32,
    /// Core threads per node (groups spread over them by `core_of_group`).
    pub cores: u32,
    /// Paxos groups.
    pub groups: u32,
    /// `pipeline_depth` of every group.
    pub pipeline: u32,
    /// The fault classes a seed may switch on.
    pub faults: BTreeSet<Fault>,
    /// Swarm testing: each seed switches on a random subset of `faults` with random rates;
    /// off, every class of `faults` is on with the default rates.
    pub swarm: bool,
    /// Ticks of the safety phase (faults on).
    pub safety_ticks: u64,
    /// Ticks of the heal phase (faults off, crashed nodes restarted, progress required).
    pub heal_ticks: u64,
    /// Clients per group.
    pub clients_per_group: u32,
    /// The injected bug, if any.
    #[cfg(feature = "sim-bugs")]
    pub bug: Option<Bug>,
    /// Run the durable-before-reply and durable-state checkers (off only to show that the
    /// other checkers catch a bug's consequences on their own).
    pub check_durable_replies: bool,
    /// Run the non-voter-silent checker (off only to show that the safety checkers catch a
    /// follower's counted votes on their own).
    pub check_non_voters: bool,
    /// Log bases follow the state machines' checkpoints (the runtime's purge pass with
    /// `purge` on): restart then starts each group at its base. Off by default: until
    /// checkpoint transfer exists, a replica behind every peer's base cannot catch up, so
    /// seeds with it on may end in `no progress` / `converge` (liveness), never in a safety
    /// violation.
    pub purge: bool,
    /// Disk writes each simulated core keeps in flight (the runtime's `wal_writes_in_flight`):
    /// each with its own latency, so a later one may land first; completions come in Lsn order
    /// only, and a crash keeps every write whose time had come, acknowledged or not (a hole
    /// before one is reported as damage at the restart). 1 by default.
    pub writes_in_flight: usize,
    /// Membership changes (docs/PROTOCOL.md#membership-change): during the safety phase, every
    /// 100..500 ticks the leader of a random group is asked to change its membership to 3..=5
    /// random voters among every node (`nodes + followers`), the others following. Off by
    /// default (traces unchanged).
    pub membership: bool,
    /// Keep a readable event log in the report (for replaying one seed).
    pub log: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 3,
            followers: 0,
            cores: 2,
            groups: 4,
            pipeline: 8,
            faults: Fault::ALL.into_iter().collect(),
            swarm: true,
            safety_ticks: 3000,
            heal_ticks: 3000,
            clients_per_group: 2,
            #[cfg(feature = "sim-bugs")]
            bug: None,
            check_durable_replies: true,
            check_non_voters: true,
            purge: false,
            writes_in_flight: 1,
            membership: false,
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
        let mut extra = String::new();
        #[cfg(feature = "sim-bugs")]
        if let Some(b) = self.bug {
            features = " --features sim-bugs".to_string();
            extra = format!(" --bug {}", b.name());
        }
        if !self.check_durable_replies {
            extra.push_str(" --skip-durable-check");
        }
        if !self.check_non_voters {
            extra.push_str(" --skip-non-voter-check");
        }
        if !self.swarm {
            extra.push_str(" --no-swarm");
        }
        if self.purge {
            extra.push_str(" --purge");
        }
        if self.writes_in_flight > 1 {
            extra.push_str(&format!(" --writes-in-flight {}", self.writes_in_flight));
        }
        if self.followers > 0 {
            extra.push_str(&format!(" --followers {}", self.followers));
        }
        if self.membership {
            extra.push_str(" --membership");
        }
        if self.clients_per_group != SimOptions::default().clients_per_group {
            extra.push_str(&format!(" --clients {}", self.clients_per_group));
        }
        format!(
            "cargo run --release -p paxring-tools{features} -- sim --seeds 1 --start-seed {seed} --nodes {} --cores {} --groups {} --pipeline {} --faults {} --safety-ticks {} --heal-ticks {}{extra} --log",
            self.nodes,
            self.cores,
            self.groups,
            self.pipeline,
            Fault::list_name(&self.faults),
            self.safety_ticks,
            self.heal_ticks,
        )
    }

    /// The fault profile of `seed`.
    pub fn profile(&self, seed: u64) -> Profile {
        if self.swarm {
            Profile::swarm(seed, &self.faults)
        } else {
            Profile::all_of(&self.faults)
        }
    }

    fn config(&self) -> Config {
        Config {
            pipeline_depth: self.pipeline,
            // Small limits so that a Promise over a long run-ahead window is cut and phase 1
            // continues in chunks (the receiving codec refuses anything over the limit, as the
            // real one does).
            batch_bytes_max: SIM_BATCH_BYTES,
            message_bytes_max: SIM_MESSAGE_BYTES,
            // Memory keeps 128 values below the applied point: lagging replicas catch up from
            // the simulated disk (the WAL's read path).
            chosen_retained_max: 2 * crate::core::CHOSEN_RETAINED_MIN,
            // A small catch-up window (two replies' worth, 32 KiB per request):
            // streams are cut by both limits and flow control runs often.
            catchup_window_instances: 2 * crate::core::CATCHUP_BATCH_MAX as u32,
            catchup_window_bytes: 64 * SIM_BATCH_BYTES,
            // Purge holds for a peer that asked within 300 ticks: a peer down for longer
            // still needs a checkpoint transfer.
            purge_hold_ticks: 300,
            // Leases assume the drift bound the simulator's skew stays within (each seed draws
            // its lease length, `lease_ticks`).
            master_lease_ticks: 80,
            clock_drift_ppm: SKEW_PPM_MAX as u32,
            ..Config::default()
        }
    }
}

/// Counts of the faults one seed injected, by class.
pub type FaultCounts = BTreeMap<&'static str, u64>;

/// The result of one seed.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// The fault profile the seed ran with (printed with the seed).
    pub profile: String,
    /// The fault classes the profile switched on.
    pub classes: Vec<Fault>,
    /// The first violation found, if any.
    pub violation: Option<String>,
    /// Hash of every event of the run (same seed, same hash).
    pub trace_hash: u64,
    /// Proposals acknowledged Committed.
    pub commits: u64,
    /// Frames handed to the network (one per destination).
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
    /// Steady-state window: Accept transmissions the drivers encoded (the wire's side of the
    /// round-trip count).
    pub steady_accepts_on_wire: u64,
    /// Whole run, every incarnation: Accept transmissions the cores counted on commit
    /// instances (each must be a frame on the wire).
    pub commit_transmissions: u64,
    /// Whole run, every incarnation: Accept frames the drivers encoded.
    pub accepts_encoded: u64,
    /// Whole run: chosen values served to catch-up from the simulated disk (older than
    /// memory keeps: the WAL's read path).
    pub values_read_from_disk: u64,
    /// Reads served by a master's lease (checked by `read-linearizable`).
    pub reads_lease: u64,
    /// Reads served after a read-index round.
    pub reads_index: u64,
    /// Faults injected, by class name (and a few derived events: restarts, fail-stops).
    pub faults: FaultCounts,
    /// Frames the receiving codec refused for exceeding the frame limit.
    pub oversize_dropped: u64,
    /// Corrupted frames the receiving codec refused (checksums).
    pub corrupt_refused: u64,
    /// Driver counters summed over every core of every node's last start.
    pub frames_encoded: u64,
    /// Frames delivered per frame encoded is the fan-out (sum of deliveries handed out).
    pub frames_sent: u64,
    /// The event log (only with `SimOptions::log`).
    pub log: Vec<String>,
}

/// The simulator's value limit (bytes).
pub(super) const SIM_BATCH_BYTES: u32 = 1024;
/// The simulator's frame limit (the receiving codec refuses larger bodies).
const SIM_MESSAGE_BYTES: u32 = SIM_BATCH_BYTES + crate::core::MESSAGE_OVERHEAD_BYTES;
/// Ticks after the heal phase with clients stopped, for replicas to converge.
const DRAIN_TICKS: u64 = 600;
/// A state machine writes a checkpoint now and then: one applied instance in this many.
const CHECKPOINT_ONE_IN: u64 = 40;
/// Every this many ticks each core moves its groups' log bases up to their state machines'
/// checkpoints (the runtime's purge pass).
const LOG_BASE_EVERY_TICKS: u64 = 50;

/// One core of a node: its driver (while the process runs) and its disk.
struct SimCore {
    driver: Option<Driver>,
    disk: SimDisk,
    /// Records appended but not yet written (the disk has `writes_in_flight` writes in
    /// flight at most).
    staged: Vec<(Lsn, Record)>,
    /// A submit found the disk idle this round (the staged records go out at its end).
    submit_requested: bool,
    /// A repair record (a group finished re-learning) waits to be durable through this Lsn.
    repair_pending: Option<Lsn>,
    /// Elections this core's table had won when last looked at.
    wins_seen: u64,
    /// Groups this core's table had repaired when last looked at (a repair can finish while
    /// a frame is delivered, between rounds: compare with this, not with the round's start).
    repairs_seen: u64,
    /// Payload bytes of Chosen marks (values learned from others) its rounds logged in this
    /// step, re-learning groups aside (`log-room` checker).
    logged_this_step: u64,
    /// Its groups that were re-learning at the end of its last round (their marks are
    /// logged whatever the room, also in the round where they finish).
    relearning_seen: BTreeSet<GroupId>,
}

/// A state machine's state: the next instance it applies and a digest of all it applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SmState {
    next: Instance,
    digest: u64,
    /// The group's rolling checksum through `next - 1` (a checkpoint records it).
    checksum: u32,
}

struct Node {
    id: NodeId,
    up: bool,
    cores: Vec<SimCore>,
    restart_at: Option<Tick>,
    paused_until: Option<Tick>,
    /// Its storage is full until then (`Fault::DiskFull`).
    full_until: Option<Tick>,
    /// Its storage is short of room until then, with this many bytes of room for values
    /// (`Fault::LowRoom`).
    short_until: Option<(Tick, u64)>,
    /// The room its cores were given at this step (`None`: no bound; `Some(0)` while full).
    room: Option<u64>,
    /// Clock rate deviation in parts per million (the node's ticks run at 1 + ppm/1e6).
    skew_ppm: i64,
    incarnation: u64,
    /// The identity file says the state was lost and re-learning is pending (set by a wipe,
    /// cleared at a start that finds records in every core's WAL: the runtime's rule).
    relearn_pending: bool,
    /// What the disks hold durably (for the durable-before-reply checker); rebuilt from what
    /// recovery finds at each start, so destroyed records are never credited.
    durable_promised: BTreeMap<GroupId, Ballot>,
    durable_accepts: BTreeSet<(GroupId, Instance, Ballot)>,
    /// The live state machines (lost at a crash).
    machines: BTreeMap<GroupId, SmState>,
    /// The state machines' durable checkpoints (lost only with the data directory).
    checkpoints: BTreeMap<GroupId, SmState>,
    /// Checkpoint transfers in progress (process memory: lost at a crash).
    transfers: transfer::Transfers,
    /// Each group's promise at the last step (it must never decrease while the node runs).
    last_promised: BTreeMap<GroupId, Ballot>,
    /// The highest ballot this node sent a Promise for, per group, and every Accepted it
    /// sent: state it acknowledged, which a restart must find (or re-learn).
    acked_promised: BTreeMap<GroupId, Ballot>,
    acked_accepts: BTreeSet<(GroupId, Instance, Ballot)>,
    /// When one of this node's groups last won phase 1 (targeted crashes aim at new leaders).
    won_at: Option<Tick>,
    /// Driver counters of earlier starts (the report sums every start).
    frames_encoded_before: u64,
    frames_sent_before: u64,
    /// Accepts the node's drivers encoded before its last crash.
    accepts_encoded_before: u64,
    /// Chosen values its drivers read from disk for catch-up before its last crash.
    values_read_before: u64,
    /// Votes withheld for a full storage by its earlier incarnations (`Fault::DiskFull`).
    withheld_full_before: u64,
    /// Values learned from others and applied unlogged by its earlier incarnations
    /// (`Fault::LowRoom`, `Fault::DiskFull`).
    unlogged_before: u64,
    /// Accept transmissions of commit instances its cores counted before its last crash.
    commit_transmissions_before: u64,
}

impl Node {
    fn running(&self) -> bool {
        self.up && self.paused_until.is_none()
    }

    /// The room its storage has for values: none while full, a few values while short.
    fn storage_room(&self) -> Option<u64> {
        if self.full_until.is_some() {
            Some(0)
        } else {
            self.short_until.map(|(_, room)| room)
        }
    }
}

struct Sim {
    options: SimOptions,
    profile: Profile,
    seed: u64,
    rng: Prng,
    now: Tick,
    nodes: Vec<Node>,
    /// Every node, voters then followers (the network, the clients and the faults reach all).
    members: Vec<NodeId>,
    /// The voting nodes (the rest of `members` are followers).
    voters: Vec<NodeId>,
    net: SimNet,
    decoder: Decoder,
    faults_on: bool,
    clients: Vec<Client>,
    clients_on: bool,
    proposal_next: u64,
    /// The last command proposed per group (clients sometimes send the same bytes again).
    last_command: BTreeMap<GroupId, Bytes>,
    /// Each node's disk latency: base ticks and uniform jitter.
    disk_latency: Vec<(u64, u64)>,
    checks: Checkers,
    reads: reads::ReadChecks,
    /// This seed's master lease (drawn from the seed on its own, 40..=160 ticks: shorter and
    /// longer than the election timeout, so that either may end a leadership first).
    lease_ticks: u64,
    /// When `--membership` next asks a leader for a change.
    next_change_at: Tick,
    hasher: std::collections::hash_map::DefaultHasher,
    report: SeedReport,
}

/// Runs one seed to the end (or to its first violation).
pub fn run_seed(options: &SimOptions, seed: u64) -> SeedReport {
    let mut sim = Sim::new(options.clone(), seed);
    sim.run();
    sim.finish()
}

/// The frames one round of one core handed to the network (`None`: every peer).
#[derive(Default)]
struct Frames(Vec<(Option<NodeId>, Bytes)>);

/// What one round of one core handed to proposers and the executor.
#[derive(Default)]
struct Applied {
    results: Vec<ProposalResult>,
    chosen: Vec<Chosen>,
    stopped: Vec<(GroupId, GroupError)>,
    reads_ready: Vec<crate::core::ReadReady>,
}

/// The simulated disk (reads) and its staging area (appends) as the driver's storage.
struct SimStorage<'a> {
    staged: &'a mut Vec<(Lsn, Record)>,
    /// Set by a `submit` that found the disk idle: the write starts at the end of the round
    /// (as the WAL's: a submit while a write is in flight only lets the records accumulate).
    submit_requested: &'a mut bool,
    disk: &'a SimDisk,
    checkpoints: &'a BTreeMap<GroupId, SmState>,
    transfers: &'a mut transfer::Transfers,
}

impl driver::Storage for SimStorage<'_> {
    fn append(&mut self, lsn: Lsn, record: &Record) -> Result<(), StorageError> {
        if let Some((last, _)) = self.staged.last() {
            assert_eq!(last.0 + 1, lsn.0, "Lsns are consecutive");
        }
        self.staged.push((lsn, record.clone()));
        Ok(())
    }

    fn read_chosen(
        &mut self,
        group: GroupId,
        instance: Instance,
    ) -> Result<Option<Bytes>, StorageError> {
        Ok(self.disk.read_chosen(group, instance))
    }

    fn read_checkpoint(
        &mut self,
        group: GroupId,
        instance: Option<Instance>,
        need: Instance,
        offset: u64,
        bytes_max: usize,
    ) -> Result<Option<(crate::core::CheckpointInfo, u64, Bytes)>, StorageError> {
        Ok(transfer::read(
            self.checkpoints,
            group,
            instance,
            need,
            offset,
            bytes_max,
        ))
    }

    fn receive_checkpoint(
        &mut self,
        group: GroupId,
        info: &crate::core::CheckpointInfo,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        transfer::receive(self.transfers, group, info, offset, data)
    }

    fn install_checkpoint(
        &mut self,
        group: GroupId,
        info: &crate::core::CheckpointInfo,
    ) -> Result<(), StorageError> {
        transfer::install(self.transfers, group, info)
    }

    fn submit(&mut self) -> Result<(), StorageError> {
        // The WAL's rule: one write in flight per core; a submit while one is in flight lets
        // the records accumulate, and only a later submit issues them. The disk write starts
        // at the end of the round.
        if !self.disk.busy() {
            *self.submit_requested = true;
        }
        Ok(())
    }

    fn batch_waiting(&self) -> bool {
        !self.disk.busy() && !self.staged.is_empty()
    }
}

impl driver::Network for Frames {
    fn send(&mut self, to: NodeId, frame: Bytes) {
        self.0.push((Some(to), frame));
    }

    fn send_to_peers(&mut self, frame: Bytes) {
        self.0.push((None, frame));
    }
}

impl driver::Apply for Applied {
    fn result(&mut self, result: ProposalResult) {
        self.results.push(result);
    }

    fn chosen(&mut self, chosen: Chosen) -> Result<(), driver::DriverError> {
        self.chosen.push(chosen);
        Ok(())
    }

    fn stopped(&mut self, group: GroupId, error: GroupError) {
        self.stopped.push((group, error));
    }

    fn read_ready(&mut self, ready: crate::core::ReadReady) -> Result<(), driver::DriverError> {
        self.reads_ready.push(ready);
        Ok(())
    }
}

/// A state machine's digest after applying `value` at `instance`.
fn digest_step(digest: u64, instance: Instance, value: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    digest.hash(&mut hasher);
    instance.0.hash(&mut hasher);
    value.hash(&mut hasher);
    hasher.finish()
}

impl Sim {
    fn new(options: SimOptions, seed: u64) -> Sim {
        assert!(options.nodes >= 1 && options.groups >= 1 && options.cores >= 1);
        let members: Vec<NodeId> = (1..=options.nodes + options.followers)
            .map(NodeId)
            .collect();
        let voters: Vec<NodeId> = (1..=options.nodes).map(NodeId).collect();
        let initial_voters = voters.clone();
        let profile = options.profile(seed);
        let mut rng = Prng::new(seed ^ 0x5EED_0000_0000_0000);
        let net = SimNet::new(&members, &profile, &mut rng);
        let mut sim = Sim {
            seed,
            rng,
            now: Tick(0),
            nodes: Vec::new(),
            members: members.clone(),
            voters,
            net,
            decoder: Decoder::new(SIM_MESSAGE_BYTES),
            faults_on: true,
            clients: Vec::new(),
            clients_on: true,
            proposal_next: 1,
            last_command: BTreeMap::new(),
            disk_latency: Vec::new(),
            checks: Checkers {
                ever_voters: initial_voters.iter().copied().collect(),
                ..Checkers::default()
            },
            reads: reads::ReadChecks::default(),
            lease_ticks: 40 + Prng::new(seed ^ 0x1EA5_E000_0000_0000).below(121),
            next_change_at: Tick(200),
            hasher: std::collections::hash_map::DefaultHasher::new(),
            report: SeedReport {
                profile: format!(
                    "{profile} lease({})",
                    if profile.has(Fault::Restless) {
                        0
                    } else {
                        40 + Prng::new(seed ^ 0x1EA5_E000_0000_0000).below(121)
                    }
                ),
                classes: profile.faults.iter().copied().collect(),
                ..SeedReport::default()
            },
            profile,
            options,
        };
        for &id in &members {
            let latency = if sim.profile.has(Fault::Stall) {
                (1 + sim.rng.below(6), sim.rng.below(9))
            } else {
                (1, 3)
            };
            sim.disk_latency.push(latency);
            let skew_ppm = if sim.profile.has(Fault::Skew) {
                sim.rng.below(2 * SKEW_PPM_MAX + 1) as i64 - SKEW_PPM_MAX as i64
            } else {
                0
            };
            sim.nodes.push(Node {
                id,
                up: false,
                cores: (0..sim.options.cores)
                    .map(|_| SimCore {
                        driver: None,
                        disk: {
                            #[allow(unused_mut)]
                            let mut disk = SimDisk::new(sim.options.writes_in_flight);
                            #[cfg(feature = "sim-bugs")]
                            {
                                disk.ack_out_of_order =
                                    sim.options.bug == Some(Bug::DurableOutOfOrder);
                            }
                            disk
                        },
                        staged: Vec::new(),
                        submit_requested: false,
                        repair_pending: None,
                        wins_seen: 0,
                        repairs_seen: 0,
                        logged_this_step: 0,
                        relearning_seen: BTreeSet::new(),
                    })
                    .collect(),
                restart_at: None,
                paused_until: None,
                full_until: None,
                short_until: None,
                room: None,
                skew_ppm,
                incarnation: 0,
                relearn_pending: false, // the cluster's bootstrap: empty state is legitimate
                durable_promised: BTreeMap::new(),
                durable_accepts: BTreeSet::new(),
                machines: BTreeMap::new(),
                checkpoints: BTreeMap::new(),
                transfers: transfer::Transfers::default(),
                last_promised: BTreeMap::new(),
                acked_promised: BTreeMap::new(),
                acked_accepts: BTreeSet::new(),
                won_at: None,
                frames_encoded_before: 0,
                frames_sent_before: 0,
                accepts_encoded_before: 0,
                values_read_before: 0,
                withheld_full_before: 0,
                unlogged_before: 0,
                commit_transmissions_before: 0,
            });
        }
        for index in 0..sim.nodes.len() {
            sim.start_node(index);
        }
        sim.make_clients();
        sim
    }

    fn finish(mut self) -> SeedReport {
        self.check_transmissions();
        self.report.seed = self.seed;
        self.report.violation = self.checks.violation.take();
        self.report.trace_hash = self.hasher.finish();
        self.report.reads_lease = self.reads.served_lease;
        self.report.reads_index = self.reads.served_index;
        self.report.instances = self.checks.chosen.len() as u64;
        for node in &self.nodes {
            self.report.durable_writes += node.cores.iter().map(|c| c.disk.syncs).sum::<u64>();
            self.report.frames_encoded += node.frames_encoded_before;
            self.report.frames_sent += node.frames_sent_before;
            self.report.values_read_from_disk += node.values_read_before;
            let mut withheld = node.withheld_full_before;
            let mut unlogged = node.unlogged_before;
            for core in &node.cores {
                if let Some(driver) = &core.driver {
                    // Followers at work (since their last start): Accepts kept without a
                    // vote, and votes that leaders dropped because a non-voter sent them.
                    let stats = driver.table().stats();
                    for (what, count) in [
                        ("follower-accepts-kept", stats.accepts_observed_non_voter),
                        ("non-voter-votes-dropped", stats.votes_from_non_voters),
                    ] {
                        if count > 0 {
                            *self.report.faults.entry(what).or_default() += count;
                        }
                    }
                    self.report.frames_encoded += driver.stats().frames_encoded;
                    self.report.frames_sent += driver.stats().frames_sent;
                    self.report.values_read_from_disk += driver.stats().values_read;
                    withheld += driver.table().stats().accepts_withheld_storage_full;
                    unlogged += driver.table().stats().chosen_unlogged_storage_short;
                }
            }
            if withheld > 0 {
                *self.report.faults.entry("votes-withheld-full").or_default() += withheld;
            }
            if unlogged > 0 {
                *self
                    .report
                    .faults
                    .entry("values-unlogged-short")
                    .or_default() += unlogged;
            }
        }
        self.report
    }

    fn groups(&self) -> Vec<GroupId> {
        (0..self.options.groups).map(GroupId).collect()
    }

    fn groups_of_core(&self, core: usize) -> Vec<GroupId> {
        self.groups()
            .into_iter()
            .filter(|g| core_of_group(g.0, self.options.cores as usize) == core)
            .collect()
    }

    fn count(&mut self, what: &'static str) {
        *self.report.faults.entry(what).or_default() += 1;
    }

    /// The node's own clock (its rate skewed within the bound).
    fn local_tick(&self, index: usize) -> Tick {
        let ppm = self.nodes[index].skew_ppm;
        let scaled = i128::from(self.now.0) * (1_000_000 + i128::from(ppm)) / 1_000_000;
        Tick(scaled.max(0) as u64)
    }

    fn start_node(&mut self, index: usize) {
        let mut config = self.options.config();
        config.check_quorum = !self.profile.has(Fault::Restless);
        config.master_lease_ticks = if self.profile.has(Fault::Restless) {
            0 // reads go through read index
        } else {
            self.lease_ticks
        };
        let now = self.local_tick(index);
        let core_groups: Vec<Vec<GroupId>> = (0..self.options.cores as usize)
            .map(|c| self.groups_of_core(c))
            .collect();
        let followers: Vec<NodeId> = self
            .members
            .iter()
            .copied()
            .filter(|n| !self.voters.contains(n))
            .collect();
        let members = Membership::voters(&self.voters).with_followers(&followers);
        #[cfg(feature = "sim-bugs")]
        let bugs = self.options.bug.map(|b| b.flags()).unwrap_or_default();
        let node = &mut self.nodes[index];
        node.incarnation += 1;
        node.durable_promised.clear();
        node.durable_accepts.clear();
        let state_lost = node.relearn_pending;
        let mut with_records = 0;
        let mut summary = Vec::new();
        let mut recovered: Vec<Record> = Vec::new();
        let mut purged = 0u64;
        let (full_at_start, room_at_start) = (node.full_until.is_some(), node.storage_room());
        for (c, core) in node.cores.iter_mut().enumerate() {
            #[allow(unused_mut)]
            let mut recovery = core.disk.recover();
            if self.options.purge {
                // The purge the runtime may have done: every record of a group below its
                // durable log base is gone (the most a purge may remove).
                let mut bases: BTreeMap<GroupId, Instance> = BTreeMap::new();
                for (_, record) in &recovery.records {
                    if let Some((below, _)) = crate::core::log_base_of(record) {
                        let base = bases.entry(record.group).or_default();
                        *base = (*base).max(below);
                    }
                }
                let before = recovery.records.len();
                recovery
                    .records
                    .retain(|(_, r)| bases.get(&r.group).is_none_or(|base| r.instance >= *base));
                purged += (before - recovery.records.len()) as u64;
            }
            credit(
                &mut node.durable_promised,
                &mut node.durable_accepts,
                recovery.records.iter().map(|(_, r)| r),
            );
            recovered.extend(recovery.records.iter().map(|(_, r)| r.clone()));
            if self.options.log {
                let fault = std::mem::take(&mut core.disk.last_fault);
                self.report.log.push(format!(
                    "{} node {} core {c} recovery: {} records, next lsn {}, damaged {:?}, tail {:?}; {fault}",
                    self.now.0,
                    node.id,
                    recovery.records.len(),
                    recovery.next_lsn.0,
                    recovery.damaged,
                    recovery.tail_damage
                ));
            }
            let had_records = !recovery.records.is_empty();
            with_records += usize::from(had_records);
            let prng =
                Prng::new(self.seed.wrapping_mul(31).wrapping_add(
                    u64::from(node.id.0) << 40 | (c as u64) << 32 | node.incarnation,
                ));
            let mut table = CoreTable::restore_with(
                config.clone(),
                node.id,
                &members,
                &core_groups[c],
                &recovery,
                prng,
                Start {
                    incarnation: node.incarnation,
                    state_lost: state_lost && !had_records,
                },
                #[cfg(feature = "sim-bugs")]
                bugs,
            )
            .expect("simulator config is valid");
            table.set_panic_on_broken_invariant(false); // the invariant checker reports it
                                                        // The storage's state is known from the start.
            table.set_storage_full(full_at_start);
            table.set_storage_room(room_at_start);
            let mut driver = Driver::new(table);
            // The executor's replay rule: each group's state machine resumes from its
            // checkpoint; values below it are not applied again.
            for group in &core_groups[c] {
                let from = node.checkpoints.get(group).copied().unwrap_or_default();
                driver.set_replay_from(*group, from.next);
            }
            driver.tick(now);
            core.driver = Some(driver);
            core.staged.clear();
            core.submit_requested = false;
            core.repair_pending = None;
            core.wins_seen = 0;
            core.repairs_seen = 0;
            core.relearning_seen.clear();
            summary.push((
                recovery.records.len(),
                recovery.damaged.len(),
                recovery.tail_damage.is_some(),
            ));
        }
        if node.relearn_pending && with_records == node.cores.len() {
            node.relearn_pending = false;
        }
        if purged > 0 {
            *self.report.faults.entry("purged-records").or_default() += purged;
        }
        node.machines = node.checkpoints.clone();
        node.transfers = transfer::Transfers::default();
        node.last_promised.clear();
        node.up = true;
        node.paused_until = None;
        node.restart_at = None;
        self.trace(&("start", index, summary));
        self.check_durable_state(index, &recovered);
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
        self.checks.violate(self.now, what);
    }

    fn run(&mut self) {
        let safety_end = self.options.safety_ticks;
        let heal_end = safety_end + self.options.heal_ticks;
        let steady_start = safety_end + self.options.heal_ticks / 2;
        let drain_end = heal_end + DRAIN_TICKS;
        let mut at_heal: Vec<Instance> = Vec::new();
        let mut steady_base = (0, 0, 0, 0, 0);
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
                self.report.steady_accepts_on_wire = now.4 - steady_base.4;
                self.check_rtts();
                self.clients_on = false;
            }
            if self.options.membership && t <= safety_end {
                self.step_membership();
            }
            self.step();
            if self.checks.violation.is_some() {
                return;
            }
        }
        self.final_checks(&at_heal);
    }

    /// Whole-run Accept transmissions counted on commit instances and Accepts encoded, over
    /// every incarnation of every node (for the rtt checker's upper bound).
    pub(super) fn transmission_counters(&self) -> (u64, u64) {
        let mut counted = 0;
        let mut encoded = 0;
        for node in &self.nodes {
            counted += node.commit_transmissions_before;
            encoded += node.accepts_encoded_before;
            for core in &node.cores {
                if let Some(driver) = &core.driver {
                    counted += driver.table().stats().commit_accept_transmissions;
                    encoded += driver.stats().accepts_encoded;
                }
            }
        }
        (counted, encoded)
    }

    /// (instances chosen, disk writes, leader commit instances, leader commit RTTs, Accept
    /// transmissions on the wire).
    fn steady_counters(&self) -> (u64, u64, u64, u64, u64) {
        let mut counters = (self.checks.chosen.len() as u64, 0, 0, 0, 0);
        for node in &self.nodes {
            for core in &node.cores {
                counters.1 += core.disk.syncs;
                if let Some(driver) = &core.driver {
                    counters.2 += driver.table().stats().commit_instances;
                    counters.3 += driver.table().stats().commit_rtts_total;
                    counters.4 += driver.stats().accepts_encoded;
                }
            }
        }
        counters
    }

    /// Now and then, asks the leader of a random group for a random membership of 3..=5
    /// voters among every node (the others following): arbitrary jumps, not single steps,
    /// so that only the protocol's own rules keep quorums safe.
    fn step_membership(&mut self) {
        if self.now < self.next_change_at {
            return;
        }
        self.next_change_at = Tick(self.now.0 + 100 + self.rng.below(401));
        let group = GroupId(self.rng.below(u64::from(self.options.groups)) as u32);
        let Some(index) = (0..self.nodes.len())
            .find(|i| self.table_of(*i, group).is_some_and(|t| t.is_leader(group)))
        else {
            return;
        };
        let mut pool = self.members.clone();
        for i in (1..pool.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            pool.swap(i, j);
        }
        let most = pool.len().clamp(1, 5);
        let count = (3 + self.rng.below(3) as usize).min(most);
        let mut voters = pool[..count].to_vec();
        let mut followers = pool[count..].to_vec();
        voters.sort_unstable();
        followers.sort_unstable();
        let members = Membership { voters, followers };
        let id = ProposalId(self.proposal_next);
        self.proposal_next += 1;
        let core = core_of_group(group.0, self.options.cores as usize);
        let Some(driver) = self.nodes[index].cores[core].driver.as_mut() else {
            return;
        };
        let result = driver
            .table_mut()
            .change_membership(group, id, members.clone());
        self.trace(&("membership", index, group.0, id.0, result.is_ok()));
        match result {
            Ok(()) => {
                self.count("membership-change");
                self.checks.changes.insert(id, (group, members));
            }
            Err(_) => self.count("membership-refused"),
        }
    }

    fn table_of(&self, index: usize, group: GroupId) -> Option<&CoreTable> {
        let core = core_of_group(group.0, self.options.cores as usize);
        let node = &self.nodes[index];
        if !node.up {
            return None;
        }
        node.cores[core].driver.as_ref().map(|d| d.table())
    }

    fn max_applied(&self, group: GroupId) -> Instance {
        (0..self.nodes.len())
            .filter_map(|i| self.table_of(i, group)?.applied_next(group))
            .max()
            .unwrap_or(Instance(0))
    }

    fn heal(&mut self) {
        self.faults_on = false;
        self.net.heal();
        for index in 0..self.nodes.len() {
            if !self.nodes[index].up {
                self.start_node(index);
            }
            self.nodes[index].paused_until = None;
            self.nodes[index].full_until = None;
            self.nodes[index].short_until = None;
        }
        self.trace(&"heal");
    }

    fn step(&mut self) {
        let now = self.now;
        // 1. Faults, restarts, resumes.
        if self.faults_on {
            self.inject_faults();
        }
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            if node.paused_until.is_some_and(|t| t <= now) {
                node.paused_until = None;
                self.trace(&("resume", index));
            }
            if !self.nodes[index].up && self.nodes[index].restart_at.is_some_and(|t| t <= now) {
                self.start_node(index);
            }
            let node = &mut self.nodes[index];
            if node.full_until.is_some_and(|t| t <= now) {
                node.full_until = None;
                self.trace(&("disk-room", index));
            }
            let node = &mut self.nodes[index];
            if node.short_until.is_some_and(|(t, _)| t <= now) {
                node.short_until = None;
                self.trace(&("disk-room", index));
            }
            let node = &mut self.nodes[index];
            let full = node.full_until.is_some();
            node.room = node.storage_room();
            for core in &mut node.cores {
                core.logged_this_step = 0;
                if let Some(driver) = core.driver.as_mut() {
                    driver.table_mut().set_storage_full(full);
                    driver.table_mut().set_storage_room(node.room);
                }
            }
        }
        // 2. Time, on each node's own clock, read before anything of this step is handled
        //    (the runtime reads its clock after it collected a round's input and before it
        //    handles it: a lease is judged, and granted, at a time no earlier than the input).
        for index in 0..self.nodes.len() {
            if self.nodes[index].running() {
                let local = self.local_tick(index);
                for core in &mut self.nodes[index].cores {
                    if let Some(driver) = &mut core.driver {
                        driver.tick(local);
                    }
                }
            }
        }
        // 3. Deliver what the network carries to now.
        while let Some(packet) = self.net.next_due(now) {
            self.deliver(packet);
        }
        // 4. Disk completions (a paused process sees them when it resumes).
        for index in 0..self.nodes.len() {
            if self.nodes[index].running() {
                for core in 0..self.nodes[index].cores.len() {
                    self.complete_disk(index, core);
                }
                self.finish_installs(index);
            }
        }
        // 5. Clients.
        if self.clients_on {
            for index in 0..self.clients.len() {
                self.client_step(index);
            }
        }
        // 6. A round on every core of every running node.
        for index in 0..self.nodes.len() {
            for core in 0..self.nodes[index].cores.len() {
                if self.nodes[index].running() {
                    self.round(index, core);
                }
            }
        }
        // 7. Every replica's invariants, promises that only grow while a node runs, and at
        //    most one master per group.
        self.check_invariants();
        self.check_masters();
    }

    fn deliver(&mut self, packet: Packet) {
        let index = (packet.to.0 - 1) as usize;
        if !self.nodes[index].up {
            return; // the process is gone: its connections are closed
        }
        if let Some(until) = self.nodes[index].paused_until {
            // A paused process reads nothing; the bytes wait in its socket.
            self.net.requeue(Tick(until.0.max(self.now.0 + 1)), packet);
            return;
        }
        let frame = match self.decoder.decode_exact(&packet.frame) {
            Ok(frame) => frame,
            Err(FrameError::Oversize { .. }) => {
                self.report.oversize_dropped += 1;
                self.trace(&("oversize", packet.from.0, packet.to.0));
                return;
            }
            Err(error) if packet.corrupted => {
                self.report.corrupt_refused += 1;
                self.trace(&("corrupt-refused", packet.from.0, packet.to.0));
                self.note(|| {
                    format!(
                        "{} -> {} corrupted frame refused: {error}",
                        packet.from, packet.to
                    )
                });
                return;
            }
            Err(error) => {
                self.violate(format!(
                    "codec: a frame we encoded does not decode: {error}"
                ));
                return;
            }
        };
        if packet.corrupted {
            self.violate(format!(
                "codec: a corrupted frame from {} to {} passed the frame checksums",
                packet.from, packet.to
            ));
            return;
        }
        if frame.from != packet.from.0 {
            self.violate(format!(
                "codec: frame from {} names sender {}",
                packet.from, frame.from
            ));
            return;
        }
        self.trace(&("deliver", packet.from.0, packet.to.0, &packet.frame[..]));
        self.note(|| {
            let text = Message::decode_body(frame.kind, &frame.body)
                .map(|m| describe(&m))
                .unwrap_or_else(|e| format!("undecodable: {e}"));
            format!("{} -> {} g{} {text}", packet.from, packet.to, frame.group)
        });
        let core = core_of_group(frame.group, self.options.cores as usize);
        let Some(driver) = self.nodes[index].cores[core].driver.as_mut() else {
            return;
        };
        if let Err(error) = driver.on_frame(&frame) {
            self.violate(format!(
                "codec: a message we encoded does not decode: {error}"
            ));
        }
    }

    fn complete_disk(&mut self, index: usize, core: usize) {
        let now = self.now;
        if self.nodes[index].cores[core]
            .disk
            .done_at()
            .is_none_or(|t| t > now)
        {
            return;
        }
        if self.faults_on
            && self.profile.has(Fault::FsyncError)
            && self.rng.chance(1, self.profile.fsync_error_one_in)
        {
            // The write fails: the node must stop (the driver says so) and restart later.
            let torn = self.others_whole(index) && self.rng.chance(1, 2);
            let Some(last) = self.nodes[index].cores[core]
                .disk
                .fail_write(&mut self.rng, torn)
            else {
                return;
            };
            self.count("fsync");
            self.trace(&("fsync-error", index, core, last.0, torn));
            let driver = self.nodes[index].cores[core]
                .driver
                .as_mut()
                .expect("a running node has drivers");
            match driver.write_failed(last, StorageError::message("injected fsync error")) {
                Ok(()) => {} // the injected bug: carries on as if durable
                Err(error) => {
                    self.note(|| format!("node {} fail-stop: {error}", index + 1));
                    self.count("fail-stop");
                    self.crash(index, CrashDamage::default());
                }
            }
            return;
        }
        let node = &mut self.nodes[index];
        let sim_core = &mut node.cores[core];
        let Some(done) = sim_core.disk.complete(now) else {
            return;
        };
        credit(
            &mut node.durable_promised,
            &mut node.durable_accepts,
            done.records.iter(),
        );
        // A leader counts its own vote once its Accept record is durable: state it relied on,
        // as an Accepted it sent would be (the `durable-state` checker then asks a restart to
        // recover it or re-learn; it missed seed 69420 of the long run without this).
        for record in &done.records {
            if record.kind == crate::core::RecordKind::Accept && record.accepted.node == node.id.0 {
                node.acked_accepts
                    .insert((record.group, record.instance, record.accepted));
            }
        }
        if let Some(driver) = &mut sim_core.driver {
            driver.durable(done.last_lsn);
        }
        if sim_core
            .repair_pending
            .is_some_and(|lsn| lsn <= done.last_lsn)
        {
            sim_core.repair_pending = None;
        }
        self.trace(&("durable", index, core, done.last_lsn.0));
    }

    fn round(&mut self, index: usize, core: usize) {
        let mut frames = Frames::default();
        let mut applied = Applied::default();
        let checkpoints = if self.options.purge && self.now.0 % LOG_BASE_EVERY_TICKS == 0 {
            Some(self.nodes[index].checkpoints.clone())
        } else {
            None
        };
        let (result, logged) = {
            let node = &mut self.nodes[index];
            let sim_core = &mut node.cores[core];
            let Some(driver) = sim_core.driver.as_mut() else {
                return;
            };
            let mut bases_moved = 0;
            if let Some(checkpoints) = &checkpoints {
                // The purge pass: each group's log base follows its state machine's
                // checkpoint (a log-base record; restart then starts the group there).
                let groups: Vec<GroupId> = driver.table().groups().collect();
                for group in groups {
                    let next = checkpoints.get(&group).map_or(Instance(0), |c| c.next);
                    if driver.table_mut().set_log_base(group, next).is_some() {
                        bases_moved += 1;
                    }
                }
            }
            let staged_before = sim_core.staged.len();
            let mut relearning: BTreeSet<GroupId> = driver
                .table()
                .groups()
                .filter(|g| driver.table().is_relearning(*g))
                .collect();
            relearning.append(&mut sim_core.relearning_seen);
            let mut storage = SimStorage {
                staged: &mut sim_core.staged,
                submit_requested: &mut sim_core.submit_requested,
                disk: &sim_core.disk,
                checkpoints: &node.checkpoints,
                transfers: &mut node.transfers,
            };
            let result = driver.round(&mut storage, &mut frames, &mut applied);
            // `log-room`: what this round logged of values learned from others.
            sim_core.relearning_seen = driver
                .table()
                .groups()
                .filter(|g| driver.table().is_relearning(*g))
                .collect();
            relearning.extend(sim_core.relearning_seen.iter().copied());
            sim_core.logged_this_step += sim_core.staged
                [staged_before.min(sim_core.staged.len())..]
                .iter()
                .filter(|(_, r)| {
                    r.kind == crate::core::RecordKind::Chosen && !relearning.contains(&r.group)
                })
                .map(|(_, r)| r.payload.len() as u64)
                .sum::<u64>();
            let logged = sim_core.logged_this_step;
            // A repair record (finished during this round or while a frame was delivered
            // before it) is appended by now: the fault atlas waits until it is durable.
            let repaired = driver.table().stats().groups_repaired;
            if repaired != sim_core.repairs_seen {
                sim_core.repairs_seen = repaired;
                sim_core.repair_pending = Some(Lsn(driver.table().next_lsn().0 - 1));
            }
            for _ in 0..bases_moved {
                self.report
                    .faults
                    .entry("log-base")
                    .and_modify(|n| *n += 1)
                    .or_insert(1);
            }
            let won = driver.table().stats().leaderships_won;
            let new_win = won != sim_core.wins_seen;
            sim_core.wins_seen = won;
            if new_win {
                self.nodes[index].won_at = Some(self.now);
            }
            (result, logged)
        };
        if let Err(error) = result {
            self.violate(format!("driver: node {} core {core}: {error}", index + 1));
            return;
        }
        // `log-room`: a core short of room logs, of the values it learned from other nodes,
        // no more bytes in a step than the room it was given (docs/PROTOCOL.md#storage-full).
        if let Some(room) = self.nodes[index].room {
            if logged > room {
                self.violate(format!(
                    "log-room: node {} core {core} logged {logged} bytes of values learned from others in one step with {room} bytes of room",
                    index + 1
                ));
                return;
            }
        }
        self.start_installs(index);
        let from = self.nodes[index].id;
        for (to, frame) in frames.0 {
            self.check_durable_reply(index, &frame);
            match to {
                Some(to) => self.send(from, to, frame),
                None => {
                    for to in self.members.clone() {
                        if to != from {
                            self.send(from, to, frame.clone());
                        }
                    }
                }
            }
        }
        for result in applied.results {
            if let ProposalResult::Committed {
                group, instance, ..
            } = &result
            {
                self.note_ack(index, *group, *instance);
            }
            self.on_result(result);
        }
        for chosen in applied.chosen {
            self.on_chosen(index, chosen);
        }
        self.settle_acks(index);
        for ready in applied.reads_ready {
            self.serve_read(index, ready);
        }
        for (group, error) in applied.stopped {
            self.violate(format!(
                "stopped: node {from} stopped group {group}: {error}"
            ));
        }
        // Start the next disk write if the disk is idle.
        let (base, jitter) = self.disk_latency[index];
        let stall = self.faults_on
            && self.profile.has(Fault::Stall)
            && self.rng.chance(1, self.profile.stall_one_in);
        let now = self.now;
        let sim_core = &mut self.nodes[index].cores[core];
        let requested = std::mem::take(&mut sim_core.submit_requested);
        if !requested || sim_core.disk.busy() || sim_core.staged.is_empty() {
            return;
        }
        let staged = std::mem::take(&mut sim_core.staged);
        let first = staged[0].0;
        let mut latency = base + self.rng.below(jitter + 1);
        if stall {
            latency += 200 + self.rng.below(800);
        }
        let records = staged.into_iter().map(|(_, r)| r).collect();
        sim_core.disk.submit(first, records, Tick(now.0 + latency));
        if sim_core.disk.writes_pending() > 1 {
            self.count("write-overlapped");
        }
        if stall {
            self.count("stall");
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, frame: Bytes) {
        self.report.messages += 1;
        self.trace(&("send", from.0, to.0, &frame[..]));
        let outcome = self.net.send(
            self.now,
            Packet {
                from,
                to,
                frame,
                corrupted: false,
            },
            &self.profile,
            self.faults_on,
            &mut self.rng,
        );
        if outcome.lost {
            self.count("loss");
        }
        if outcome.copies > 1 {
            self.count("dup");
        }
        if outcome.corrupted {
            self.count("corrupt");
        }
    }
}

/// Credits records that are on the disk to the durable-state checker's view.
fn credit<'a>(
    promised: &mut BTreeMap<GroupId, Ballot>,
    accepts: &mut BTreeSet<(GroupId, Instance, Ballot)>,
    records: impl Iterator<Item = &'a Record>,
) {
    for record in records {
        let entry = promised.entry(record.group).or_default();
        match record.kind {
            RecordKind::Promise => *entry = (*entry).max(record.promised),
            // A log-base record carries the promise (the Promise records below the base may
            // be purged); restart takes it.
            RecordKind::Meta if crate::core::log_base_of(record).is_some() => {
                *entry = (*entry).max(record.promised)
            }
            RecordKind::Accept => {
                *entry = (*entry).max(record.promised);
                accepts.insert((record.group, record.instance, record.accepted));
            }
            _ => {}
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
    /// Frames sent.
    pub messages: u64,
    /// Distinct instances chosen.
    pub instances: u64,
    /// Faults injected, by class (summed over seeds).
    pub faults: FaultCounts,
    /// Seeds that had each fault class switched on.
    pub classes_on: FaultCounts,
    /// Frames refused over the frame limit.
    pub oversize_dropped: u64,
    /// Corrupted frames refused by the codec's checksums.
    pub corrupt_refused: u64,
    /// Steady window sums (see [`SeedReport`]).
    pub steady_instances: u64,
    /// Steady window disk writes.
    pub steady_durable_writes: u64,
    /// Steady window leader commit instances.
    pub steady_commit_instances: u64,
    /// Steady window commit RTTs.
    pub steady_commit_rtts: u64,
    /// Frames encoded (all drivers).
    pub frames_encoded: u64,
    /// Frame deliveries handed to the network (all drivers).
    pub frames_sent: u64,
    /// Chosen values served to catch-up from the simulated disks.
    pub values_read_from_disk: u64,
    /// Reads served by a master's lease.
    pub reads_lease: u64,
    /// Reads served after a read-index round.
    pub reads_index: u64,
}

impl RunSummary {
    /// Adds one seed.
    pub fn add(&mut self, report: &SeedReport) {
        self.seeds += 1;
        self.violations += u64::from(report.violation.is_some());
        self.commits += report.commits;
        self.messages += report.messages;
        self.instances += report.instances;
        for (class, count) in &report.faults {
            *self.faults.entry(class).or_default() += count;
        }
        for fault in &report.classes {
            *self.classes_on.entry(fault.name()).or_default() += 1;
        }
        self.oversize_dropped += report.oversize_dropped;
        self.corrupt_refused += report.corrupt_refused;
        self.steady_instances += report.steady_instances;
        self.steady_durable_writes += report.steady_durable_writes;
        self.steady_commit_instances += report.steady_commit_instances;
        self.steady_commit_rtts += report.steady_commit_rtts;
        self.frames_encoded += report.frames_encoded;
        self.frames_sent += report.frames_sent;
        self.values_read_from_disk += report.values_read_from_disk;
        self.reads_lease += report.reads_lease;
        self.reads_index += report.reads_index;
    }

    /// Frames per acknowledged commit.
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

    /// Frame deliveries per frame encoded (the fan-out of encode-once broadcasts).
    pub fn sends_per_encode(&self) -> f64 {
        ratio(self.frames_sent, self.frames_encoded)
    }
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}
