//! A running node: starts the WALs, the network thread, the core and executor threads, and
//! answers the embedding API.
//!
//! Owns: thread start and stop, the proposal queues into the cores, the stats snapshot. Never:
//! steps a group itself (only a core thread does, in `core_loop`).

use bytes::Bytes;
use crossbeam_channel::{bounded, Sender, TrySendError};
use paxring_net::{NetConfig, NetHandle, NetThread};
use paxring_wal::{GroupId, Instance};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::api::{Error, FatalError, Proposal, StartError};
use super::config::{core_of_group, NodeConfig};
use super::core_loop::{self, CoreStart};
use super::executor::{self, GroupProgress};
use super::identity;
use super::mirror;
use super::shared::{CoreSnapshot, MasterEvent, MasterInfo, ProposalMsg, Shared};
use crate::core::{NodeId, ReadMode};

/// Master events queued per subscriber.
const MASTER_EVENTS_QUEUED: usize = 1024;
use super::state_machine::StateMachineFactory;
use super::wake::Wake;

struct CoreHandle {
    proposals: Sender<ProposalMsg>,
    wake: Arc<Wake>,
}

/// A running paxring node. Dropping it stops it (as [`Node::shutdown`] does).
pub struct Node {
    config: NodeConfig,
    cores: Vec<CoreHandle>,
    shared: Arc<Shared>,
    net: Option<NetThread>,
    net_handle: NetHandle,
    threads: Vec<JoinHandle<()>>,
}

/// Everything a node counts, in one serializable snapshot (docs/ARCHITECTURE.md#counters).
#[derive(Clone, Debug, Serialize)]
pub struct NodeStats {
    /// This node.
    pub node_id: u32,
    /// Per core: rounds, WAL counters, protocol counters.
    pub cores: Vec<CoreSnapshot>,
    /// The network thread's counters, per peer and in total.
    pub net: paxring_net::NetStats,
    /// Commands applied by the executors.
    pub applied_commands: u64,
    /// Master events a subscriber did not take (its queue was full).
    pub master_events_dropped: u64,
    /// Sums over the cores.
    pub totals: NodeTotals,
    /// This node is a follower: a non-voting replica (docs/PROTOCOL.md#follower-nodes).
    pub follower: bool,
    /// Per group, its newest membership as this node knows it
    /// (docs/PROTOCOL.md#membership-change).
    pub memberships: Vec<Option<super::GroupMembership>>,
    /// The fatal error that stopped the node, if any.
    pub fatal: Option<String>,
}

/// Sums over a node's cores.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeTotals {
    /// WAL writes (one per writing round).
    pub write_rounds: u64,
    /// Durable writes (DSYNC writes or fdatasyncs).
    pub durable_writes: u64,
    /// Durable writes per WAL write, i.e. per writing round (1.0 is the design).
    pub durable_writes_per_round: f64,
    /// Groups with records per WAL write, on average.
    pub groups_per_round: f64,
    /// Records per WAL write, on average.
    pub records_per_round: f64,
    /// Proposals answered Committed by this node.
    pub commits: u64,
    /// Sequential network round trips per committed instance led by this node.
    pub rtts_per_commit: f64,
    /// Instances heard chosen and not applied yet, over every group (how far this replica
    /// lags; docs/PROTOCOL.md#follower-nodes).
    pub lag_instances: u64,
    /// The same for the group that lags most.
    pub lag_instances_max: u64,
}

impl Node {
    /// Validates the config, opens and recovers every core's WAL, makes the state machines,
    /// and starts the network, core and executor threads.
    pub fn start(config: NodeConfig, mut factory: StateMachineFactory) -> Result<Node, Error> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StartError::DataDir {
            path: config.data_dir.clone(),
            source: Arc::new(e),
        })?;
        // The identity file: which cluster and node this directory belongs to, this start's
        // incarnation, and whether the node's state was lost (docs/PROTOCOL.md#node-identity).
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let decision = identity::start(
            &config.data_dir,
            config.cluster_id,
            config.node_id,
            wal_present(&config.data_dir),
            now_ms,
        )
        .map_err(StartError::Identity)?;
        tracing::info!(
            incarnation = decision.identity.incarnation,
            // Whether the file still says a re-learn may be pending: a core whose WAL holds
            // records ignores it (its WAL carries any re-learn obligation).
            relearn_pending = decision.state_lost,
            "node identity"
        );
        let mut cores_with_records = 0;
        let cores = config.cores;
        let groups = config.groups;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            fatal: Mutex::new(None),
            snapshots: Mutex::new(vec![CoreSnapshot::default(); cores]),
            leader_hints: (0..groups).map(|_| AtomicU64::new(0)).collect(),
            progress: (0..groups)
                .map(|_| Arc::new(GroupProgress::default()))
                .collect(),
            applied_commands: Arc::new(AtomicU64::new(0)),
            masters: Mutex::new(vec![None; groups as usize]),
            memberships: Mutex::new(vec![None; groups as usize]),
            master_subscribers: Mutex::new(Vec::new()),
            master_events_dropped: AtomicU64::new(0),
        });

        // The state machines, per core.
        let mut machines_by_core: Vec<Vec<_>> = (0..cores).map(|_| Vec::new()).collect();
        for group in 0..groups {
            let machine = factory(GroupId(group))
                .map_err(|reason| StartError::StateMachine { group, reason })?;
            machines_by_core[core_of_group(group, cores)].push((
                GroupId(group),
                machine,
                shared.progress[group as usize].clone(),
            ));
        }

        // Mirror state machines for the groups whose checkpoints the engine makes
        // (docs/ARCHITECTURE.md, "Checkpoints"); a factory error aborts before any thread.
        let mut mirrors_by_core = Vec::with_capacity(cores);
        for machines in &mut machines_by_core {
            mirrors_by_core.push(mirror::prepare(
                machines,
                &config.checkpoint_mode,
                &config.data_dir,
                &mut factory,
            )?);
        }

        // The network thread.
        let mut net_config = NetConfig::new(
            config.cluster_id,
            config.node_id,
            config.listen,
            config.peers.iter().map(|p| (p.id, p.addr)).collect(),
        );
        net_config.max_frame_bytes = config.frame_bytes_max;
        net_config.inbox_capacity = config.inbox_frames_max;
        net_config.outbound_down_bytes_max = config.outbound_down_bytes_max;
        let group_count = groups;
        let route: paxring_net::Route =
            Arc::new(move |group: u32| (group < group_count).then(|| core_of_group(group, cores)));
        let (net, net_handle, inboxes) = NetThread::start(net_config, cores, route)
            .map_err(|e| StartError::Network(Arc::new(e)))?;

        // Core and executor threads.
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        if config.pin_cores && cores > cpus.len() {
            tracing::warn!(
                "{cores} core threads on {} CPUs: threads share CPUs (pinned round-robin)",
                cpus.len()
            );
        }
        let mut handles = Vec::with_capacity(cores);
        let mut threads = Vec::with_capacity(2 * cores);
        for (core, ((inbox, machines), mirrors)) in inboxes
            .into_iter()
            .zip(machines_by_core)
            .zip(mirrors_by_core)
            .enumerate()
        {
            let wake =
                Arc::new(Wake::new().map_err(|e| os(format!("eventfd for core {core}"), e))?);
            let (proposals_tx, proposals_rx) = bounded(config.proposal_queue_max);
            let (exec_tx, exec_rx) = bounded(EXEC_QUEUE_MAX);
            let applied_from: Vec<(GroupId, Option<Instance>)> = mirrors.applied_from(&machines);
            let applied = shared.applied_commands.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("paxring-exec-{core}"))
                    .spawn(move || executor::run_with_mirrors(machines, exec_rx, applied, mirrors))
                    .map_err(|e| os(format!("executor thread {core}"), e))?,
            );
            let start = CoreStart {
                core,
                config: config.clone(),
                inbox,
                net: net_handle.clone(),
                proposals: proposals_rx,
                wake: wake.clone(),
                exec: exec_tx,
                shared: shared.clone(),
                applied_from,
                cpu: (config.pin_cores && !cpus.is_empty()).then(|| cpus[core % cpus.len()]),
                incarnation: decision.identity.incarnation,
                state_lost: decision.state_lost,
            };
            // The WAL is opened (and recovered) on the core thread itself; a failure comes back
            // through this channel so that `start` reports it.
            let (ready_tx, ready_rx) = bounded(1);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("paxring-core-{core}"))
                    .spawn(move || core_loop::run(start, ready_tx))
                    .map_err(|e| os(format!("core thread {core}"), e))?,
            );
            match ready_rx.recv() {
                Ok(Ok(had_records)) => cores_with_records += usize::from(had_records),
                Ok(Err(error)) => {
                    shared.fail(FatalError::Start(error.clone()));
                    stop_threads(&shared, &handles, threads);
                    net.shutdown();
                    return Err(error.into());
                }
                Err(_) => {
                    let error = StartError::CoreDied { core };
                    shared.fail(FatalError::Start(error.clone()));
                    stop_threads(&shared, &handles, threads);
                    net.shutdown();
                    return Err(error.into());
                }
            }
            handles.push(CoreHandle {
                proposals: proposals_tx,
                wake,
            });
        }
        if decision.identity.relearn_pending && cores_with_records == cores {
            // Every core's WAL holds records now, and its re-learn records keep whatever
            // obligation remains: the identity file need not say it any more.
            let mut cleared = decision.identity.clone();
            cleared.relearn_pending = false;
            if let Err(e) = identity::write(&config.data_dir, &cleared) {
                tracing::warn!("cannot clear relearn_pending in the identity file: {e}");
            }
        }
        tracing::info!(
            node = config.node_id,
            cores,
            groups,
            listen = %net_handle.local_addr(),
            "node started"
        );
        Ok(Node {
            config,
            cores: handles,
            shared,
            net: Some(net),
            net_handle,
            threads,
        })
    }

    /// Proposes one command to `group`. Await the returned [`Proposal`] or call
    /// [`Proposal::wait`]. Refused at once (the command will not take effect) when this node
    /// does not lead the group, the queue is full, or the node has stopped.
    pub fn propose(&self, group: GroupId, command: Bytes) -> Proposal {
        if group.0 >= self.config.groups {
            return Proposal::ready(Err(Error::NoSuchGroup(group.0, self.config.groups)));
        }
        if command.len() + 16 > self.config.batch_bytes_max as usize {
            return Proposal::ready(Err(Error::TooLarge {
                bytes: command.len(),
                max: self.config.batch_bytes_max,
            }));
        }
        if self.shared.stopping.load(Ordering::Acquire) {
            return Proposal::ready(Err(Error::Stopped(self.stop_reason())));
        }
        self.send_to_core(group, command, None)
    }

    /// A linearizable read of `group` (docs/PROTOCOL.md#reads), answered by the state
    /// machine's [`StateMachine::query`](super::StateMachine::query) with `query`, with no log
    /// write: by the master's lease (`ReadMode::Lease`; without a valid lease it falls back to
    /// read index), or after one read-index round to a quorum (`ReadMode::Index`). Refused
    /// with `NotLeader` on a node that does not lead the group. The answer's `instance` is the
    /// applied point it was served at.
    pub fn read(&self, group: GroupId, query: Bytes, mode: ReadMode) -> Proposal {
        if group.0 >= self.config.groups {
            return Proposal::ready(Err(Error::NoSuchGroup(group.0, self.config.groups)));
        }
        self.send_to_core(group, query, Some(mode))
    }

    /// A read of `group` served at once by this node, follower nodes included, from its applied
    /// state, with a staleness bound instead of linearizability (docs/PROTOCOL.md#stale-reads):
    /// served only if within `max` this node received a message of the leader it follows and
    /// had applied everything that message said was chosen, so the answer reflects every value
    /// that leader had applied when it sent it; `Error::TooStale` otherwise (ask the master
    /// for a linearizable read). Answered by the state machine's `query`.
    pub fn read_stale(&self, group: GroupId, query: Bytes, max: Duration) -> Proposal {
        if group.0 >= self.config.groups {
            return Proposal::ready(Err(Error::NoSuchGroup(group.0, self.config.groups)));
        }
        let tick = self.config.tick_ms.max(1) as u128;
        let max_ticks = u64::try_from(max.as_millis().div_ceil(tick)).unwrap_or(u64::MAX);
        self.send_to_core(group, query, Some(ReadMode::Stale { max_ticks }))
    }

    /// [`Node::read`], blocking until the answer.
    pub fn read_blocking(
        &self,
        group: GroupId,
        query: Bytes,
        mode: ReadMode,
    ) -> Result<super::Committed, Error> {
        self.read(group, query, mode).wait()
    }

    /// Changes `group`'s membership to `voters` and `followers` (node ids; docs/PROTOCOL.md#membership-change).
    /// The change is a value of its own, chosen like a command: the returned [`Proposal`]
    /// completes with the instance it was chosen at once it is chosen, and the new membership
    /// governs from `instance + MEMBERSHIP_DELAY` on (256 instances later; the leader fills
    /// them with no-ops when idle, so that takes a few round trips). Refused at once
    /// (`Error::Membership`) when a node it names is not this node or one of its configured
    /// peers (the network knows no other address), it names no voter or a node twice, or
    /// another change of the group is not in effect yet; `NotLeader` on a node that does not
    /// lead the group. Add a node as a follower first, make it a voter once it caught up, then
    /// remove the one it replaces: each step keeps a quorum of the old voters in the new set.
    pub fn change_membership(&self, group: GroupId, voters: &[u32], followers: &[u32]) -> Proposal {
        if group.0 >= self.config.groups {
            return Proposal::ready(Err(Error::NoSuchGroup(group.0, self.config.groups)));
        }
        let known: std::collections::BTreeSet<u32> = self
            .config
            .peers
            .iter()
            .map(|p| p.id)
            .chain([self.config.node_id])
            .collect();
        if let Some(unknown) = voters.iter().chain(followers).find(|n| !known.contains(n)) {
            return Proposal::ready(Err(Error::Membership(format!(
                "node {unknown} is not in this node's config (add it to every node's peers first)"
            ))));
        }
        if self.shared.stopping.load(Ordering::Acquire) {
            return Proposal::ready(Err(Error::Stopped(self.stop_reason())));
        }
        let members = crate::core::Membership {
            voters: voters.iter().copied().map(NodeId).collect(),
            followers: followers.iter().copied().map(NodeId).collect(),
        };
        self.send_msg(group, Bytes::new(), None, Some(members))
    }

    /// Whether this node is the master of `group` now: it leads and holds a master lease
    /// (docs/PROTOCOL.md#master-lease). At most one node of a cluster is master of a group at
    /// any moment, under the configured clock-drift bound.
    pub fn is_master(&self, group: GroupId) -> bool {
        self.master(group)
            .is_some_and(|m| m.node == self.config.node_id)
    }

    /// The master of `group` as this node knows it, with when its lease ends at the latest:
    /// this node while it holds the lease, or the node this node's acceptor grants its lease to
    /// (that node's lease ends no later than the grant). None when neither holds now. Cores
    /// publish it every 20 ms: it may lag a renewal by that much, never outlive a lease.
    pub fn master(&self, group: GroupId) -> Option<MasterInfo> {
        let masters = self.shared.masters.lock().expect("masters lock");
        let info = (*masters.get(group.0 as usize)?)?;
        (std::time::Instant::now() < info.lease_until).then_some(info)
    }

    /// A new subscription to this node's master changes (every group): an event when this node
    /// becomes master of a group and when it stops being master. The queue holds up to 1,024
    /// events; a subscriber that does not keep up misses events (counted in
    /// `NodeStats::master_events_dropped`).
    pub fn subscribe_master_events(&self) -> crossbeam_channel::Receiver<MasterEvent> {
        let (tx, rx) = crossbeam_channel::bounded(MASTER_EVENTS_QUEUED);
        self.shared
            .master_subscribers
            .lock()
            .expect("subscribers lock")
            .push(tx);
        rx
    }

    fn send_to_core(&self, group: GroupId, command: Bytes, read: Option<ReadMode>) -> Proposal {
        self.send_msg(group, command, read, None)
    }

    fn send_msg(
        &self,
        group: GroupId,
        command: Bytes,
        read: Option<ReadMode>,
        membership: Option<crate::core::Membership>,
    ) -> Proposal {
        let core = &self.cores[core_of_group(group.0, self.config.cores)];
        let (proposal, reply) = Proposal::pending();
        match core.proposals.try_send(ProposalMsg {
            group,
            command,
            reply,
            read,
            membership,
        }) {
            Ok(()) => {
                core.wake.notify();
                proposal
            }
            Err(TrySendError::Full(_)) => Proposal::ready(Err(Error::Overloaded)),
            Err(TrySendError::Disconnected(_)) => {
                Proposal::ready(Err(Error::Stopped(self.stop_reason())))
            }
        }
    }

    /// Proposes one command and blocks until its outcome is known.
    pub fn propose_blocking(
        &self,
        group: GroupId,
        command: Bytes,
    ) -> Result<super::Committed, Error> {
        self.propose(group, command).wait()
    }

    /// Proposes several commands to one group; they may share instances. At most
    /// `batch_commands_max` commands per call (more is `Error::Overloaded` for the excess).
    pub fn propose_batch(
        &self,
        group: GroupId,
        commands: impl IntoIterator<Item = Bytes>,
    ) -> Vec<Proposal> {
        let limit = self.config.batch_commands_max as usize;
        commands
            .into_iter()
            .enumerate()
            .map(|(i, command)| {
                if i < limit {
                    self.propose(group, command)
                } else {
                    Proposal::ready(Err(Error::Overloaded))
                }
            })
            .collect()
    }

    /// The node that this node believes leads `group` (itself included), if known.
    pub fn leader_hint(&self, group: GroupId) -> Option<u32> {
        let hint = self
            .shared
            .leader_hints
            .get(group.0 as usize)?
            .load(Ordering::Acquire);
        (hint != 0).then_some(hint as u32)
    }

    /// `group`'s newest configuration as this node knows it (docs/PROTOCOL.md#membership-change):
    /// voters, follower nodes, and the first instance it governs (it may lie ahead of the
    /// applied point: a change governs 256 instances after its own).
    pub fn membership(&self, group: GroupId) -> Option<super::GroupMembership> {
        self.shared
            .memberships
            .lock()
            .expect("memberships lock")
            .get(group.0 as usize)?
            .clone()
    }

    /// The first instance of `group` not yet applied by its executor.
    pub fn applied_next(&self, group: GroupId) -> Option<Instance> {
        let progress = self.shared.progress.get(group.0 as usize)?;
        Some(Instance(progress.applied_next.load(Ordering::Acquire)))
    }

    /// This node's config.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The address the node listens on for peers (useful when the config asked for port 0).
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        self.net_handle.local_addr()
    }

    /// The fatal error that stopped this node, if any.
    pub fn fatal_error(&self) -> Option<FatalError> {
        self.shared.fatal.lock().expect("fatal lock").clone()
    }

    /// True once the node has stopped on a fatal error or a shutdown.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// A snapshot of every counter (cores publish theirs every 20 ms).
    pub fn stats(&self) -> NodeStats {
        let cores = self.shared.snapshots.lock().expect("snapshot lock").clone();
        let mut totals = NodeTotals::default();
        let mut groups_weighted = 0.0;
        let mut records = 0u64;
        let mut rtts = 0u64;
        let mut commit_instances = 0u64;
        for core in &cores {
            totals.write_rounds += core.write_rounds;
            totals.durable_writes += core.durable_writes;
            groups_weighted += core.groups_per_write * core.write_rounds as f64;
            records += core.records_written;
            totals.commits += core.protocol.proposals_committed;
            rtts += core.protocol.commit_rtts_total;
            commit_instances += core.protocol.commit_instances;
            totals.lag_instances += core.lag_instances;
            totals.lag_instances_max = totals.lag_instances_max.max(core.lag_instances_max);
        }
        if totals.write_rounds > 0 {
            totals.durable_writes_per_round =
                totals.durable_writes as f64 / totals.write_rounds as f64;
            totals.groups_per_round = groups_weighted / totals.write_rounds as f64;
            totals.records_per_round = records as f64 / totals.write_rounds as f64;
        }
        if commit_instances > 0 {
            totals.rtts_per_commit = rtts as f64 / commit_instances as f64;
        }
        NodeStats {
            node_id: self.config.node_id,
            cores,
            net: self.net_handle.stats(),
            applied_commands: self.shared.applied_commands.load(Ordering::Relaxed),
            master_events_dropped: self.shared.master_events_dropped.load(Ordering::Relaxed),
            totals,
            follower: self.config.follower,
            memberships: self
                .shared
                .memberships
                .lock()
                .expect("memberships lock")
                .clone(),
            fatal: self.fatal_error().map(|f| f.to_string()),
        }
    }

    /// Stops every thread and waits for them. Proposals still in flight are answered
    /// `Error::Unknown`. Returns the fatal error that had stopped the node, if any.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop();
        match self.fatal_error() {
            Some(reason) => Err(Error::Stopped(reason.to_string())),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let threads = std::mem::take(&mut self.threads);
        stop_threads(&self.shared, &self.cores, threads);
        if let Some(net) = self.net.take() {
            net.shutdown();
        }
    }

    fn stop_reason(&self) -> String {
        self.fatal_error()
            .map_or_else(|| "shut down".into(), |f| f.to_string())
    }

    /// Blocks until the node stops on its own (a fatal error) or `timeout` passes; true when
    /// stopped.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.is_stopped() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.is_stopped()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when some core's WAL directory under `data_dir` holds a segment file.
fn wal_present(data_dir: &std::path::Path) -> bool {
    let Ok(cores) = std::fs::read_dir(data_dir.join("wal")) else {
        return false;
    };
    cores
        .flatten()
        .any(|core| std::fs::read_dir(core.path()).is_ok_and(|mut files| files.next().is_some()))
}

fn stop_threads(shared: &Shared, cores: &[CoreHandle], threads: Vec<JoinHandle<()>>) {
    shared.stopping.store(true, Ordering::Release);
    for core in cores {
        core.wake.signal();
    }
    for thread in threads {
        let name = thread.thread().name().unwrap_or("?").to_string();
        if thread.join().is_err() {
            shared.fail(FatalError::Panicked(name));
        }
    }
}

/// An OS resource that could not be made.
fn os(what: String, source: std::io::Error) -> StartError {
    StartError::Os {
        what,
        source: Arc::new(source),
    }
}

/// Chosen values queued per executor before its core holds them back (and refuses proposals).
pub(crate) const EXEC_QUEUE_MAX: usize = 1 << 16;
