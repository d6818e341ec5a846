//! One core thread: the loop around the shared round [`Driver`] with a real WAL, the network
//! thread and an executor (docs/ARCHITECTURE.md, "One round of a core").
//!
//! Each round: one `Wal::wait` (a single `io_uring_enter` that wakes on the WAL's write
//! completion, the network inbox's eventfd, the proposal queue's eventfd, or the tick
//! timeout); tell the driver the durable point; drain inbound frames and proposals; tick; run
//! `Driver::round` with the WAL as its storage, the round's frame batch as its network and the
//! proposers' replies and executor queue as its apply (one WAL write, the durable-reply gate,
//! broadcasts encoded once); hand all outbound frames of the round to the network thread in
//! one batch.
//!
//! Owns: the core's WAL, driver, proposal replies and executor backlog. Never: blocks on the
//! executor or the network thread, retries a failed WAL write (a failed fsync stops the node).

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use paxring_net::{Dest, Frame, Inbox, NetHandle};
use paxring_wal::{GroupId, Instance, Lsn, Wal, WalError, WalOptions};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::api::{Error, FatalError, Reply, StartError};
use super::config::{core_of_group, NodeConfig, SyncModeConfig, WalBackendConfig};
use super::executor::{ExecMsg, InstallDone};
use super::shared::{CoreSnapshot, ProposalMsg, PurgeSnapshot, Shared};
use super::transfer::CheckpointStore;
use super::wake::Wake;
use crate::core::GroupStatus;
use crate::core::{
    value, CheckpointInfo, Chosen, Config as CoreConfig, CoreTable, FailReason, GroupError,
    Membership, NodeId, Prng, ProposalId, ProposalResult, Record, Start, Tick,
};
use crate::driver::{self, Driver, DriverError, RunStop, StorageError};

/// What a core thread needs to start.
pub(crate) struct CoreStart {
    pub core: usize,
    pub config: NodeConfig,
    pub inbox: Inbox,
    pub net: NetHandle,
    pub proposals: Receiver<ProposalMsg>,
    pub wake: Arc<Wake>,
    pub exec: Sender<ExecMsg>,
    pub shared: Arc<Shared>,
    /// Each group's state machine checkpoint: replay starts above it.
    pub applied_from: Vec<(GroupId, Option<Instance>)>,
    pub cpu: Option<core_affinity::CoreId>,
    /// This start's incarnation (from the identity file).
    pub incarnation: u64,
    /// The node's state was lost: a core whose WAL holds no record re-learns every group.
    pub state_lost: bool,
}

/// How often a core checks for stuck groups and logs them (once per interval).
const STUCK_EVERY: Duration = Duration::from_secs(5);
/// Stuck groups listed by name in the snapshot and the log line.
const STUCK_LISTED_MAX: usize = 8;

/// A WAL write in flight for longer than this is reported as a stuck state.
const WRITE_STUCK_AFTER: Duration = Duration::from_secs(2);
/// Most proposals taken from the queue in one round (the rest wait for the next round).
const PROPOSALS_PER_ROUND_MAX: usize = 16 * 1024;
/// How often a core publishes its counters and leader hints (summarising the WAL's latency
/// histogram costs too much to do every round).
const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// How soon a core looks again when its executor's queue was full.
const EXECUTOR_RETRY: Duration = Duration::from_micros(200);
/// While proposals are refused for the WAL budget, a purge pass at most this often.
const BUDGET_PURGE_EVERY: Duration = Duration::from_millis(20);
/// Most inbound frames taken in one round.
const FRAMES_PER_ROUND_MAX: usize = 16 * 1024;

/// Runs the core until the node stops. `ready` learns whether the WAL opened.
/// What a core reports once its WAL is open: whether the WAL held any record.
pub(crate) type Ready = Result<bool, StartError>;

pub(crate) fn run(start: CoreStart, ready: Sender<Ready>) {
    if let Some(cpu) = start.cpu {
        if !core_affinity::set_for_current(cpu) {
            tracing::warn!(
                core = start.core,
                "could not pin the core thread to CPU {}",
                cpu.id
            );
        }
    }
    let shared = start.shared.clone();
    let mut core = match Core::open(start) {
        Ok((core, had_records)) => {
            let _ = ready.send(Ok(had_records));
            core
        }
        Err(reason) => {
            let _ = ready.send(Err(reason));
            return;
        }
    };
    if let Err(error) = core.run() {
        shared.fail(FatalError::Core {
            core: core.index,
            source: Arc::new(error),
        });
    }
    core.publish();
    core.fail_pending("the node stopped");
}

struct Core {
    index: usize,
    driver: Driver,
    wal: Wal,
    inbox: Inbox,
    net: NetHandle,
    proposals: Receiver<ProposalMsg>,
    wake: Arc<Wake>,
    exec: Sender<ExecMsg>,
    shared: Arc<Shared>,
    tick: Duration,
    started: Instant,
    next_proposal: u64,
    replies: HashMap<ProposalId, Reply>,
    /// The queries of reads handed to the driver, by id (their replies wait in `replies`).
    read_queries: HashMap<ProposalId, Bytes>,
    /// Membership changes in flight: answered when chosen (their value has no command for the
    /// executor to answer).
    membership_ids: HashSet<ProposalId>,
    /// Membership changes and installs counted at the last publish of memberships.
    memberships_seen: Option<u64>,
    /// Proposals and reads taken from the queue this round, handed in after the clock is read.
    arrived: Vec<ProposalMsg>,
    exec_backlog: VecDeque<ExecMsg>,
    frames: Vec<Frame>,
    net_batch: Vec<(Dest, Bytes)>,
    snapshot: CoreSnapshot,
    /// How long a proposal may wait for others to join its batch (zero: not at all).
    linger: Duration,
    batch_commands_max: usize,
    batch_bytes_max: usize,
    /// Proposals held back to form larger batches, oldest first.
    lingering: VecDeque<ProposalMsg>,
    lingering_bytes: usize,
    linger_since: Instant,
    /// While the WAL keeps a cut tail from recovery: zero it once this Lsn (the last record of
    /// the first round, with the re-learn records) is durable.
    zero_cut_after: Option<Lsn>,
    /// The first round has run.
    first_round_done: bool,
    /// How often log bases move up and the WAL purges.
    purge_every: Duration,
    /// Whether log bases move and the WAL purges (else the pass only reports).
    purge_on: bool,
    /// The WAL budget in bytes (0: none).
    wal_budget: u64,
    /// With a budget: the WAL bytes reserved for each proposal admitted and not yet chosen
    /// or failed (`budget_reserved` is their sum); see `admit_within_budget`.
    budget_pending: HashMap<ProposalId, u64>,
    budget_reserved: u64,
    /// Proposals refused for the budget at the last stuck check (to log a new refusal once).
    budget_refused_seen: u64,
    /// Proposals refused for the budget at the last purge pass.
    budget_refused_at_purge: u64,
    /// Log-base records appended and not yet durable: (group, base, Lsn). The WAL's floor
    /// for the group rises only once its record is durable.
    bases_pending: Vec<(GroupId, Instance, Lsn)>,
    /// Segments the WAL held at the last purge pass.
    segments_seen: usize,
    /// Idle groups' re-logged state records not yet durable: (group, Lsn).
    relogs_pending: Vec<(GroupId, Lsn)>,
    /// Checkpoint files served to and received from peers (docs/PROTOCOL.md#checkpoint-transfer).
    checkpoints: CheckpointStore,
    /// The executor reports installed checkpoints here.
    installs_tx: Sender<InstallDone>,
    installs_rx: Receiver<InstallDone>,
}

impl Core {
    fn open(start: CoreStart) -> Result<(Core, bool), StartError> {
        let config = &start.config;
        let groups: Vec<GroupId> = (0..config.groups)
            .filter(|g| core_of_group(*g, config.cores) == start.core)
            .map(GroupId)
            .collect();
        let dir = config
            .data_dir
            .join("wal")
            .join(format!("core-{}", start.core));
        // Deferred: a cut tail is zeroed only once the first write after this start (which
        // carries the re-learn records) is durable, so a crash before that finds it again.
        let (wal, recovery) = Wal::open_deferred(WalOptions {
            dir: dir.clone(),
            core: start.core as u32,
            segment_bytes: config.segment_bytes,
            buffer_bytes: config.round_bytes_max,
            sync_mode: match config.sync_mode {
                SyncModeConfig::Dsync => paxring_wal::SyncMode::Dsync,
                SyncModeConfig::Fdatasync => paxring_wal::SyncMode::Fdatasync,
            },
            backend: match config.wal_backend {
                WalBackendConfig::Auto => paxring_wal::Backend::Auto,
                WalBackendConfig::Uring => paxring_wal::Backend::Uring,
                WalBackendConfig::Blocking => paxring_wal::Backend::Blocking,
            },
            writes_in_flight: config.wal_writes_in_flight,
        })
        .map_err(|e| StartError::Wal {
            core: start.core,
            dir: dir.clone(),
            source: Arc::new(e),
        })?;
        if recovery.torn_tail_bytes > 0 {
            tracing::warn!(
                core = start.core,
                bytes = recovery.torn_tail_bytes,
                "WAL recovery cut a torn tail"
            );
        }
        for damage in &recovery.damaged {
            tracing::error!(
                core = start.core,
                ?damage,
                "WAL damage: the groups it touched re-learn from peers"
            );
        }
        let core_config = CoreConfig {
            pipeline_depth: config.pipeline_depth,
            batch_bytes_max: config.batch_bytes_max,
            batch_commands_max: config.batch_commands_max,
            proposal_queue_max: config.proposal_queue_max.min(u32::MAX as usize) as u32,
            election_timeout_ticks: u64::from(config.election_timeout_ticks),
            election_jitter_ticks: u64::from(config.election_timeout_ticks),
            heartbeat_ticks: u64::from(config.heartbeat_ticks),
            retransmit_ticks: u64::from(config.heartbeat_ticks) * 2,
            // Memory keeps one acceptance window of chosen values below the applied point;
            // older ones are served from the WAL (streaming catch-up).
            chosen_retained_max: crate::core::ACCEPT_WINDOW_INSTANCES,
            message_bytes_max: config.frame_bytes_max,
            catchup_window_instances: config.catchup_window_instances,
            catchup_window_bytes: config.catchup_window_bytes,
            purge_hold_ticks: config
                .purge_hold_for_peers_ms
                .div_ceil(config.tick_ms.max(1)),
            check_quorum: config.check_quorum,
            master_lease_ticks: config.master_lease_ticks(),
            clock_drift_ppm: config.clock_drift_ppm,
        };
        let voters: Vec<NodeId> = config.members().into_iter().map(NodeId).collect();
        let followers: Vec<NodeId> = config.followers().into_iter().map(NodeId).collect();
        let members = Membership::voters(&voters).with_followers(&followers);
        let seed = seed_for(config.node_id, start.core);
        let had_records = !recovery.records.is_empty();
        let state_lost = start.state_lost && !had_records;
        if state_lost {
            tracing::warn!(
                core = start.core,
                "this node's state was lost (no identity file and no WAL): every group re-learns from its peers before it votes"
            );
        }
        if let Some(tail) = &recovery.tail_damage {
            tracing::error!(
                core = start.core,
                ?tail,
                "the last WAL write is damaged or torn: the groups it may have covered re-learn from peers"
            );
        }
        let table = CoreTable::restore_with(
            core_config,
            NodeId(config.node_id),
            &members,
            &groups,
            &recovery,
            Prng::new(seed),
            Start {
                incarnation: start.incarnation,
                state_lost,
            },
            #[cfg(feature = "sim-bugs")]
            Default::default(),
        )
        .map_err(|e| StartError::Restore {
            core: start.core,
            reason: e.to_string(),
        })?;
        for (group, checkpoint) in &start.applied_from {
            let from = checkpoint.map_or(0, |i| i.0 + 1);
            let base = table.log_base(*group).unwrap_or(Instance(0));
            if base.0 > from {
                return Err(StartError::Restore {
                    core: start.core,
                    reason: format!(
                        "group {}: the WAL holds this group's log only from instance {} (it was purged below, after a checkpoint there), but the state machine's checkpoint covers only instances below {}: the state machine lost its checkpoint. Restore that checkpoint, or move this node's data directory away so that it rejoins as a new replica",
                        group.0, base.0, from
                    ),
                });
            }
        }
        let (installs_tx, installs_rx) = crossbeam_channel::unbounded();
        let mut driver = Driver::new(table);
        // Catch-up served from this core's WAL: at most this many value bytes per tick.
        driver.set_read_rate(
            Some(
                config
                    .catchup_serve_bytes_per_sec
                    .saturating_mul(config.tick_ms)
                    / 1000,
            )
            .filter(|_| config.catchup_serve_bytes_per_sec > 0),
        );
        for (group, checkpoint) in &start.applied_from {
            driver.set_replay_from(*group, Instance(checkpoint.map_or(0, |i| i.0 + 1)));
        }
        Ok((
            Core {
                index: start.core,
                driver,
                wal,
                inbox: start.inbox,
                net: start.net,
                proposals: start.proposals,
                wake: start.wake,
                exec: start.exec,
                shared: start.shared,
                tick: config.tick(),
                started: Instant::now(),
                next_proposal: 1,
                replies: HashMap::new(),
                exec_backlog: VecDeque::new(),
                frames: Vec::new(),
                read_queries: HashMap::new(),
                membership_ids: HashSet::new(),
                memberships_seen: None,
                arrived: Vec::new(),
                net_batch: Vec::new(),
                snapshot: CoreSnapshot {
                    core: start.core,
                    groups: groups.len(),
                    ..CoreSnapshot::default()
                },
                linger: Duration::from_micros(config.batch_linger_us),
                batch_commands_max: config.batch_commands_max as usize,
                batch_bytes_max: config.batch_bytes_max as usize,
                lingering: VecDeque::new(),
                lingering_bytes: 0,
                linger_since: Instant::now(),
                zero_cut_after: None,
                first_round_done: false,
                purge_every: Duration::from_millis(config.purge_every_ms),
                purge_on: config.wal_purge,
                wal_budget: config.wal_budget_bytes,
                budget_pending: HashMap::new(),
                budget_reserved: 0,
                budget_refused_seen: 0,
                budget_refused_at_purge: 0,
                bases_pending: Vec::new(),
                segments_seen: 0,
                relogs_pending: Vec::new(),
                checkpoints: CheckpointStore::new(
                    super::mirror::checkpoint_dir(&config.data_dir),
                    start.core,
                ),
                installs_tx,
                installs_rx,
            },
            had_records,
        ))
    }

    fn run(&mut self) -> Result<(), DriverError> {
        let mut ticks_done = 0u64;
        let mut published_at = Instant::now();
        let mut stuck_checked_at = Instant::now();
        let mut purged_at = Instant::now();
        let fds = [self.inbox.fd(), self.wake.raw()];
        while !self.shared.stopping.load(Ordering::Acquire) {
            self.snapshot.rounds += 1;
            let elapsed = self.started.elapsed();
            let next_tick_at = Duration::from_nanos(
                (self.tick.as_nanos() * (u128::from(ticks_done) + 1)).min(u128::from(u64::MAX))
                    as u64,
            );
            let mut timeout = next_tick_at.saturating_sub(elapsed);
            if let Some(linger) = self.linger_timeout() {
                timeout = timeout.min(linger);
            }
            if !self.exec_backlog.is_empty() {
                // The executor is behind: look again soon, without spinning.
                timeout = timeout.min(EXECUTOR_RETRY);
            }
            // Arm the wake before the last look at the queue (see `Wake`).
            self.wake.arm();
            // Catch-up reads the per-round budget put off run in the next round at once.
            let idle =
                self.proposals.is_empty() && self.inbox.is_empty() && !self.driver.reads_pending();
            let wait = if idle {
                Some(timeout)
            } else {
                Some(Duration::ZERO)
            };
            let outcome = match self.wal.wait(&fds, wait) {
                Ok(outcome) => outcome,
                Err(e) => {
                    self.wal_failed(e)?;
                    continue;
                }
            };
            self.wake.disarm();
            if outcome.ready_fds.contains(&fds[1]) {
                self.wake.clear();
            }
            self.driver.durable(outcome.durable_lsn);
            if self
                .zero_cut_after
                .is_some_and(|after| outcome.durable_lsn >= after)
            {
                match self.wal.zero_cut_tails() {
                    Ok(()) => self.zero_cut_after = None,
                    // Not fatal: the bytes hold no acknowledged record; try again next round.
                    Err(e) => {
                        tracing::warn!(core = self.index, "cannot zero the cut WAL tail yet: {e}")
                    }
                }
            }

            self.take_installs();
            // The round's input is collected first, then the clock is read, then the input is
            // handed in: whatever arrived is judged (a lease read, a lease grant) at a time no
            // earlier than its arrival, however long this thread was descheduled or stopped
            // before (docs/PROTOCOL.md#master-lease).
            self.frames.clear();
            self.inbox.drain(&mut self.frames, FRAMES_PER_ROUND_MAX);
            self.collect_proposals();
            let now_ticks =
                (self.started.elapsed().as_nanos() / self.tick.as_nanos().max(1)) as u64;
            // The storage's room before anything of this round is handled.
            self.set_storage_state();
            if now_ticks > ticks_done {
                ticks_done = now_ticks;
                self.driver.tick(Tick(ticks_done));
            }
            self.take_frames();
            self.take_proposals();
            self.round()?;
            if !self.first_round_done {
                self.first_round_done = true;
                if self.wal.cut_tails_pending() {
                    self.zero_cut_after =
                        Some(Lsn(self.driver.table().next_lsn().0.saturating_sub(1)));
                }
            }
            // A pass every `purge_every`, and as soon as the WAL enters a new segment or the
            // log-base records of the last pass are durable (so that disk use follows the
            // checkpoints closely, not a timer).
            let segments = self.wal.segment_count();
            let bases_durable = self
                .bases_pending
                .last()
                .is_some_and(|(_, _, lsn)| *lsn <= self.wal.durable_lsn());
            // While proposals are refused for the WAL budget, room comes only from purge: it
            // runs often, so that the state machines' checkpoints free it as they come.
            let refusing = self.budget_pressure() > self.budget_refused_at_purge
                && purged_at.elapsed() >= BUDGET_PURGE_EVERY;
            if purged_at.elapsed() >= self.purge_every
                || refusing
                || (self.purge_on && (segments > self.segments_seen || bases_durable))
            {
                self.segments_seen = segments;
                self.budget_refused_at_purge = self.budget_pressure();
                purged_at = Instant::now();
                if let Err(e) = self.purge() {
                    // Not a durability failure (a failed write poisons the WAL and the next
                    // wait reports it): the segments stay, the next pass tries again.
                    tracing::error!(core = self.index, "WAL purge failed: {e}");
                }
            }
            if stuck_checked_at.elapsed() >= STUCK_EVERY {
                stuck_checked_at = Instant::now();
                self.check_stuck();
            }
            if published_at.elapsed() >= PUBLISH_EVERY {
                published_at = Instant::now();
                self.publish();
            }
        }
        Ok(())
    }

    /// One round of the shared driver (crate::driver): the WAL, the network thread's batch
    /// and the executor's queue are this core's storage, network and apply.
    fn round(&mut self) -> Result<(), DriverError> {
        let mut storage = WalStorage {
            wal: &mut self.wal,
            core: self.index,
            checkpoints: &mut self.checkpoints,
        };
        let mut net = NetBatch {
            batch: &mut self.net_batch,
        };
        let mut apply = ExecApply {
            core: self.index,
            replies: &mut self.replies,
            budget_pending: &mut self.budget_pending,
            budget_reserved: &mut self.budget_reserved,
            read_queries: &mut self.read_queries,
            membership_ids: &mut self.membership_ids,
            backlog: &mut self.exec_backlog,
            batch_bytes_max: self.batch_bytes_max,
            shared: &self.shared,
            started: self.started,
            tick: self.tick,
        };
        self.driver.round(&mut storage, &mut net, &mut apply)?;
        // Received checkpoints go to the executor after the values applied before them.
        for (group, info, path) in self.checkpoints.ready.drain(..) {
            tracing::info!(
                core = self.index,
                group = group.0,
                instance = info.instance.0,
                bytes = info.payload_bytes,
                "checkpoint received from a peer: installing it into the state machine"
            );
            self.exec_backlog.push_back(ExecMsg::Install {
                group,
                info,
                path,
                done: self.installs_tx.clone(),
            });
        }
        let dir = self.checkpoints.dir().to_path_buf();
        for group in self.checkpoints.exports.drain(..) {
            self.exec_backlog.push_back(ExecMsg::Export {
                group,
                dir: dir.clone(),
            });
        }
        self.feed_executor();

        // One hand-off of this round's frames to the network thread.
        if !self.net_batch.is_empty() {
            let batch = std::mem::take(&mut self.net_batch);
            if let Err(mut refused) = self.net.send_batch(batch) {
                self.snapshot.net_batches_refused += 1;
                refused.clear();
                self.net_batch = refused;
            }
        }
        Ok(())
    }

    /// Checkpoints the executor installed (or could not): the groups go on from there.
    fn take_installs(&mut self) {
        while let Ok(done) = self.installs_rx.try_recv() {
            match done.result {
                Ok(()) => {
                    tracing::info!(
                        core = self.index,
                        group = done.group.0,
                        instance = done.info.instance.0,
                        "checkpoint installed: catching up from the instance after it"
                    );
                    self.driver.installed(done.group, done.info);
                }
                Err(reason) => {
                    tracing::error!(
                        core = self.index,
                        group = done.group.0,
                        instance = done.info.instance.0,
                        "cannot install the checkpoint received (the transfer is tried again after a back-off): {reason}"
                    );
                    self.driver.install_failed(done.group);
                }
            }
        }
    }

    /// Hands the frames collected this round to the driver.
    fn take_frames(&mut self) {
        for frame in self.frames.drain(..) {
            if let Err(e) = self.driver.on_frame(&frame) {
                self.snapshot.undecodable_frames += 1;
                tracing::warn!(
                    from = frame.from,
                    group = frame.group,
                    "dropping an undecodable message: {e}"
                );
            }
        }
    }

    /// Takes this round's proposals and reads from the queue (handed in by `take_proposals`
    /// after the clock is read).
    fn collect_proposals(&mut self) {
        for _ in 0..PROPOSALS_PER_ROUND_MAX {
            let Ok(proposal) = self.proposals.try_recv() else {
                break;
            };
            self.arrived.push(proposal);
        }
    }

    fn take_proposals(&mut self) {
        let arrived = std::mem::take(&mut self.arrived);
        for mut proposal in arrived {
            self.snapshot.proposals_received += 1;
            if let Some(members) = proposal.membership.take() {
                self.change_membership(proposal, members);
                continue;
            }
            if let Some(mode) = proposal.read {
                // Reads are never held back to batch (they write nothing).
                self.read(proposal, mode);
                continue;
            }
            if !self.exec_backlog.is_empty() {
                let _ = proposal.reply.send(Err(Error::Overloaded));
                continue;
            }
            if !self.admit_within_budget(proposal.command.len()) {
                self.snapshot.proposals_refused_wal_budget += 1;
                let _ = proposal.reply.send(Err(Error::Overloaded));
                continue;
            }
            if self.linger.is_zero() {
                self.propose(proposal);
            } else {
                if self.lingering.is_empty() {
                    self.linger_since = Instant::now();
                }
                self.lingering_bytes += proposal.command.len();
                self.lingering.push_back(proposal);
            }
        }
        if !self.lingering.is_empty()
            && (self.lingering.len() >= self.batch_commands_max
                || self.lingering_bytes >= self.batch_bytes_max
                || self.linger_since.elapsed() >= self.linger)
        {
            self.lingering_bytes = 0;
            while let Some(proposal) = self.lingering.pop_front() {
                self.propose(proposal);
            }
        }
    }

    /// With a WAL budget, tells the core about its storage (docs/PROTOCOL.md#storage-full):
    /// full while the room is less than the two writes kept back for what cannot be refused
    /// (it then votes on no other node's instance and takes no proposal), and the room left
    /// beyond them and the proposals admitted, within which chosen values learned from other
    /// nodes are logged (beyond it they are applied unlogged, so a replica that lags always
    /// catches up and its checkpoints free the WAL). Under half the budget left, purge no
    /// longer waits for lagging peers.
    fn set_storage_state(&mut self) {
        if self.wal_budget == 0 {
            return;
        }
        let room = self.budget_room();
        let kept_back = self.writes_kept_back();
        let table = self.driver.table_mut();
        table.set_storage_full(room < kept_back);
        table.set_storage_room(Some(
            room.saturating_sub(kept_back)
                .saturating_sub(self.budget_reserved),
        ));
        table.set_purge_holds_released(room < self.wal_budget / 2);
    }

    /// WAL bytes a proposal of `bytes` may take at most: its command (and its length) twice
    /// over, once in its Accept record and once in a chosen mark that names it, in records
    /// of their own, each in a write of its own (a write takes whole blocks).
    fn budget_cost(bytes: usize) -> u64 {
        2 * (paxring_wal::BLOCK_BYTES as u64 + bytes as u64)
    }

    /// With `wal_budget_bytes` set (docs/ARCHITECTURE.md, "WAL budget"): whether a proposal
    /// of `bytes` fits the room the WAL has left within its budget, after what every
    /// proposal admitted and not yet chosen may take and two rounds' writes (the one in
    /// flight and the one being filled, which may hold other records: votes for another
    /// node's leader, marks, log-base records). Refused proposals get `Overloaded`; room
    /// comes back when purge removes a segment.
    fn admit_within_budget(&mut self, bytes: usize) -> bool {
        if self.wal_budget == 0 {
            return true;
        }
        let room = self.budget_room();
        let need = self
            .budget_reserved
            .saturating_add(Self::budget_cost(bytes))
            .saturating_add(self.writes_kept_back());
        need <= room
    }

    /// The WAL bytes the budget keeps back for writes: those that may be in flight and the
    /// one being filled (each a write of at most `round_bytes_max`).
    fn writes_kept_back(&self) -> u64 {
        let options = self.wal.options();
        (options.writes_in_flight as u64 + 1) * options.buffer_bytes as u64
    }

    /// Proposals refused and votes withheld for the WAL budget so far.
    fn budget_pressure(&self) -> u64 {
        self.snapshot.proposals_refused_wal_budget
            + self.driver.table().stats().accepts_withheld_storage_full
    }

    /// Bytes the WAL may still write within its budget: what is left of the segment being
    /// written, plus the segments it may still add.
    fn budget_room(&self) -> u64 {
        let segment = self.wal.options().segment_bytes;
        let held = self.wal.segment_count() as u64 * segment;
        if held > self.wal_budget {
            // Over the budget (a restart opens the segment prepared ahead as one of its own,
            // or a write the core could not refuse went over): no room, not even the rest of
            // the segment being written, or every new segment would offer its own rest.
            return 0;
        }
        self.wal_budget - held + self.wal.segment_bytes_left()
    }

    /// When lingering proposals must be released, if any wait.
    fn linger_timeout(&self) -> Option<Duration> {
        (!self.lingering.is_empty())
            .then(|| self.linger.saturating_sub(self.linger_since.elapsed()))
    }

    fn read(&mut self, read: ProposalMsg, mode: crate::core::ReadMode) {
        let group = read.group;
        let id = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        match self.driver.read(group, id, mode) {
            Ok(()) => {
                self.replies.insert(id, read.reply);
                self.read_queries.insert(id, read.command);
            }
            Err(reason) => {
                let error = match (reason, mode) {
                    (FailReason::TooStale, crate::core::ReadMode::Stale { max_ticks }) => {
                        Error::TooStale {
                            max_ms: max_ticks.saturating_mul(self.tick.as_millis() as u64),
                        }
                    }
                    (reason, _) => fail_error(reason, group, self.index, 0, self.batch_bytes_max),
                };
                let _ = read.reply.send(Err(error));
            }
        }
    }

    fn change_membership(&mut self, proposal: ProposalMsg, members: crate::core::Membership) {
        let group = proposal.group;
        let id = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        match self
            .driver
            .table_mut()
            .change_membership(group, id, members)
        {
            Ok(()) => {
                self.replies.insert(id, proposal.reply);
                self.membership_ids.insert(id);
            }
            Err(reason) => {
                let _ = proposal.reply.send(Err(fail_error(
                    reason,
                    group,
                    self.index,
                    0,
                    self.batch_bytes_max,
                )));
            }
        }
    }

    fn propose(&mut self, proposal: ProposalMsg) {
        let bytes = proposal.command.len();
        let group = proposal.group;
        let id = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        match self.driver.propose(group, id, proposal.command) {
            Ok(()) => {
                self.replies.insert(id, proposal.reply);
                if self.wal_budget != 0 {
                    let cost = Self::budget_cost(bytes);
                    self.budget_pending.insert(id, cost);
                    self.budget_reserved += cost;
                }
            }
            Err(reason) => {
                let _ = proposal.reply.send(Err(fail_error(
                    reason,
                    group,
                    self.index,
                    bytes,
                    self.batch_bytes_max,
                )));
            }
        }
    }

    fn feed_executor(&mut self) {
        while let Some(message) = self.exec_backlog.pop_front() {
            match self.exec.try_send(message) {
                Ok(()) => {}
                Err(TrySendError::Full(message)) => {
                    self.exec_backlog.push_front(message);
                    self.snapshot.executor_backlog_rounds += 1;
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.shared.fail(FatalError::Core {
                        core: self.index,
                        source: Arc::new(DriverError::Executor("its queue closed".into())),
                    });
                    self.exec_backlog.clear();
                    break;
                }
            }
        }
    }

    /// A WAL failure while waiting (a failed write or fsync): the driver decides (it stops
    /// the core; only the simulator's injected bug carries on).
    fn wal_failed(&mut self, error: WalError) -> Result<(), DriverError> {
        let last = Lsn(self.driver.table().next_lsn().0.saturating_sub(1));
        self.driver.write_failed(
            last,
            StorageError::new(format!("core {}: WAL write failed", self.index), error),
        )
    }

    /// One purge pass (docs/ARCHITECTURE.md#purge): each group's log base moves up to its
    /// state machine's checkpoint (a log-base record carrying its promise and checksum); once
    /// that record is durable the WAL's floor for the group rises; then the WAL removes the
    /// segments no group needs and says what holds the oldest one back.
    fn purge(&mut self) -> Result<(), WalError> {
        let durable = self.wal.durable_lsn();
        let wal = &mut self.wal;
        self.bases_pending.retain(|(group, base, lsn)| {
            if *lsn <= durable {
                wal.set_purge_floor(*group, *base);
                false
            } else {
                true
            }
        });
        self.relogs_pending.retain(|(group, lsn)| {
            if *lsn <= durable {
                wal.set_purge_floor_lsn(*group, *lsn);
                false
            } else {
                true
            }
        });
        let groups: Vec<GroupId> = self.driver.table().groups().collect();
        for group in groups.iter().filter(|_| self.purge_on) {
            let checkpoint_next = self.shared.progress[group.0 as usize]
                .checkpoint_next
                .load(Ordering::Acquire);
            if let Some(lsn) = self
                .driver
                .table_mut()
                .set_log_base(*group, Instance(checkpoint_next))
            {
                let base = self.driver.table().log_base(*group).expect("own group");
                self.bases_pending.push((*group, base, lsn));
            }
        }
        let report = if self.purge_on {
            self.wal.purge()?
        } else {
            Default::default()
        };
        if self.purge_on {
            // An idle group (nothing applied since its base, nothing accepted) that holds the
            // oldest segment re-logs its state: once that record is durable, none of its
            // older records are needed.
            for hold in &report.held_back_by {
                let group = GroupId(hold.group);
                if self.relogs_pending.iter().any(|(g, _)| *g == group) {
                    continue;
                }
                if let Some(lsn) = self.driver.table_mut().relog_base(group) {
                    self.relogs_pending.push((group, lsn));
                }
            }
        }
        let segments = self.wal.segment_numbers().len() as u64;
        let wal_bytes = segments * self.wal.options().segment_bytes;
        let table = self.driver.table();
        let lowest_base = groups
            .iter()
            .filter_map(|g| Some((g.0, table.log_base(*g)?.0)))
            .min_by_key(|(_, base)| *base);
        let held_back_by = report
            .held_back_by
            .iter()
            .map(|hold| match (hold.floor, table.group_status(GroupId(hold.group))) {
                (Some(floor), Some(GroupStatus { log_base_held_by: Some((peer, need)), .. })) => format!(
                    "group {} (instance {} is in segment {}; its log base is {}: held for node {}, which is catching up from instance {})",
                    hold.group,
                    hold.instance_max,
                    report.oldest_segment.unwrap_or(0),
                    floor,
                    peer.0,
                    need.0
                ),
                (floor, _) => match floor {
                Some(floor) => format!(
                    "group {} (instance {} is in segment {}; its log base is {}: its state machine's checkpoint is not past that instance yet)",
                    hold.group,
                    hold.instance_max,
                    report.oldest_segment.unwrap_or(0),
                    floor
                ),
                None => format!(
                    "group {} (instance {} is in segment {}; it has no checkpoint yet)",
                    hold.group,
                    hold.instance_max,
                    report.oldest_segment.unwrap_or(0)
                ),
                },
            })
            .collect();
        let purge = &mut self.snapshot.purge;
        *purge = PurgeSnapshot {
            passes: purge.passes + 1,
            segments,
            wal_bytes,
            budget_bytes: self.wal_budget,
            over_budget: self.wal_budget != 0 && wal_bytes > self.wal_budget,
            budget_room_bytes: purge.budget_room_bytes,
            budget_reserved_bytes: purge.budget_reserved_bytes,
            segments_purged: self.wal.stats().segments_purged,
            lowest_base,
            oldest_segment: report.oldest_segment,
            held_back_by,
        };
        Ok(())
    }

    /// Every stuck state is logged once per interval and shown in stats with its reason.
    fn check_stuck(&mut self) {
        let mut stuck = self.driver.table().stuck();
        if let Some((age, first, last, segment, offset)) = self.wal.write_in_flight_since() {
            if age >= WRITE_STUCK_AFTER {
                // Silence would hide it: every reply that depends on this write waits.
                stuck.push((
                    GroupId(u32::MAX),
                    format!(
                        "core {}: a WAL write (LSNs {}..={}, segment {segment} offset {offset}) has been in flight for {:.1} s; no reply that depends on it can leave",
                        self.index,
                        first.0,
                        last.0,
                        age.as_secs_f64()
                    ),
                ));
            }
        }
        let refused = self.budget_pressure();
        if refused > self.budget_refused_seen {
            let purge = &self.snapshot.purge;
            stuck.push((
                GroupId(u32::MAX),
                format!(
                    "core {}: WAL at its budget ({} bytes in {} segments, budget {}; {} bytes of room, {} reserved for proposals in flight): {} new proposals refused (overloaded) or votes withheld since the last check; the oldest segment is held by {}",
                    self.index,
                    purge.wal_bytes,
                    purge.segments,
                    self.wal_budget,
                    self.budget_room(),
                    self.budget_reserved,
                    refused - self.budget_refused_seen,
                    if purge.held_back_by.is_empty() {
                        "the segment being written".to_string()
                    } else {
                        purge.held_back_by.join(", ")
                    }
                ),
            ));
            self.budget_refused_seen = refused;
        }
        let purge = &self.snapshot.purge;
        if purge.over_budget {
            stuck.push((
                GroupId(u32::MAX),
                format!(
                    "core {}: WAL over budget ({} bytes in {} segments, budget {}); cannot purge: the oldest segment is held by {}",
                    self.index,
                    purge.wal_bytes,
                    purge.segments,
                    purge.budget_bytes,
                    if purge.held_back_by.is_empty() {
                        "the segment being written".to_string()
                    } else {
                        purge.held_back_by.join(", ")
                    }
                ),
            ));
        }
        self.snapshot.stuck_groups = stuck.len();
        self.snapshot.stuck = stuck
            .iter()
            .take(STUCK_LISTED_MAX)
            .map(|(_, reason)| reason.clone())
            .collect();
        if !stuck.is_empty() {
            tracing::warn!(
                core = self.index,
                groups = stuck.len(),
                "groups that cannot make progress: {}{}",
                self.snapshot.stuck.join("; "),
                if stuck.len() > STUCK_LISTED_MAX {
                    format!("; and {} more", stuck.len() - STUCK_LISTED_MAX)
                } else {
                    String::new()
                }
            );
        }
    }

    fn publish(&mut self) {
        let wal = self.wal.stats();
        self.snapshot.write_rounds = wal.writes;
        self.snapshot.durable_writes = wal.durable_writes;
        self.snapshot.records_written = wal.records;
        self.snapshot.groups_per_write = wal.groups_per_write.mean;
        self.snapshot.wal = Some(wal);
        if self.wal_budget != 0 {
            self.snapshot.purge.budget_room_bytes = self.budget_room();
            self.snapshot.purge.budget_reserved_bytes = self.budget_reserved;
        }
        self.snapshot.protocol = self.driver.table().stats().clone();
        self.snapshot.driver = self.driver.stats().clone();
        let table = self.driver.table();
        for group in table.groups() {
            let hint = table.leader_hint(group).map_or(0, |n| u64::from(n.0));
            self.shared.leader_hints[group.0 as usize].store(hint, Ordering::Release);
        }
        let changes =
            table.stats().membership_changes_applied + table.stats().checkpoints_installed;
        if self.memberships_seen != Some(changes) {
            // Published when a change or an install may have changed one (and at the first
            // publish): computing every group's status each time would cost a round.
            self.memberships_seen = Some(changes);
            let mut memberships = self.shared.memberships.lock().expect("memberships lock");
            for group in table.groups() {
                if let (Some(status), Some(slot)) = (
                    table.group_status(group),
                    memberships.get_mut(group.0 as usize),
                ) {
                    let now = super::shared::GroupMembership {
                        voters: status.voters.iter().map(|n| n.0).collect(),
                        followers: status.followers.iter().map(|n| n.0).collect(),
                        from: status.members_from.0,
                    };
                    if slot.as_ref().is_some_and(|before| *before != now) {
                        let me = table.node().0;
                        let role = if now.voters.contains(&me) {
                            "a voter"
                        } else if now.followers.contains(&me) {
                            "a follower node (it does not vote)"
                        } else {
                            "not a member (it neither votes nor follows)"
                        };
                        tracing::warn!(
                            core = self.index,
                            group = group.0,
                            voters = ?now.voters,
                            followers = ?now.followers,
                            from = now.from,
                            "the group's membership changed: this node is {role} from instance {}",
                            now.from
                        );
                    }
                    *slot = Some(now);
                }
            }
        }
        let (lag, lag_max) = table.lag();
        self.snapshot.lag_instances = lag;
        self.snapshot.lag_instances_max = lag_max;
        self.snapshot.voter = table.is_voter();
        {
            let me = table.node().0;
            let mut masters = self.shared.masters.lock().expect("masters lock");
            for group in table.groups() {
                let info = match table.master_until(group) {
                    Some(until) => Some((me, until)),
                    None => table
                        .lease_granted(group)
                        .and_then(|(holder, until)| Some((holder?.0, until))),
                };
                if let Some(slot) = masters.get_mut(group.0 as usize) {
                    *slot = info.map(|(node, until)| super::shared::MasterInfo {
                        node,
                        lease_until: tick_instant(self.started, self.tick, until),
                    });
                }
            }
        }
        self.shared.snapshots.lock().expect("snapshot lock")[self.index] = self.snapshot.clone();
    }

    fn fail_pending(&mut self, why: &str) {
        for proposal in self.lingering.drain(..) {
            // Never handed to the protocol: definitely not proposed.
            let _ = proposal.reply.send(Err(Error::Stopped(why.into())));
        }
        for (_, reply) in self.replies.drain() {
            let _ = reply.send(Err(Error::Unknown(why.into())));
        }
        // Waiters already handed to the executor are answered by it when its queue closes.
        self.feed_executor();
    }
}

/// The core's WAL (and checkpoint store) as the driver's storage.
struct WalStorage<'a> {
    wal: &'a mut Wal,
    core: usize,
    checkpoints: &'a mut CheckpointStore,
}

impl driver::Storage for WalStorage<'_> {
    fn read_checkpoint(
        &mut self,
        group: GroupId,
        instance: Option<Instance>,
        need: Instance,
        offset: u64,
        bytes_max: usize,
    ) -> Result<Option<(CheckpointInfo, u64, Bytes)>, StorageError> {
        self.checkpoints
            .read(group, instance, need, offset, bytes_max)
            .inspect_err(|e| {
                tracing::warn!(
                    core = self.core,
                    group = group.0,
                    "cannot serve a checkpoint to a peer: {e}"
                )
            })
    }

    fn receive_checkpoint(
        &mut self,
        group: GroupId,
        info: &CheckpointInfo,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        self.checkpoints
            .receive(group, info, offset, data)
            .inspect_err(|e| {
                tracing::warn!(
                    core = self.core,
                    group = group.0,
                    "checkpoint transfer abandoned: {e}"
                )
            })
    }

    fn install_checkpoint(
        &mut self,
        group: GroupId,
        info: &CheckpointInfo,
    ) -> Result<(), StorageError> {
        self.checkpoints.finish(group, info).inspect_err(|e| {
            tracing::warn!(
                core = self.core,
                group = group.0,
                "checkpoint transfer abandoned: {e}"
            )
        })
    }

    fn read_chosen(
        &mut self,
        group: GroupId,
        instance: Instance,
    ) -> Result<Option<Bytes>, StorageError> {
        self.wal.read_chosen(group, instance).map_err(|e| {
            tracing::warn!(
                core = self.core,
                group = group.0,
                instance = instance.0,
                "catch-up read from the WAL failed (that reply stops there): {e}"
            );
            StorageError::new(format!("core {}: WAL read", self.core), e)
        })
    }

    fn read_chosen_run(
        &mut self,
        group: GroupId,
        first: Instance,
        end: Instance,
        bytes_max: usize,
        out: &mut Vec<(Instance, Bytes)>,
    ) -> Result<RunStop, StorageError> {
        let before = out.len();
        self.wal
            .read_chosen_run(group, first, end, bytes_max, out)
            .map_err(|e| {
                tracing::warn!(
                    core = self.core,
                    group = group.0,
                    instance = first.0 + (out.len() - before) as u64,
                    "catch-up read from the WAL failed (that reply stops there): {e}"
                );
                StorageError::new(format!("core {}: WAL read", self.core), e)
            })
    }

    fn append(&mut self, lsn: Lsn, record: &Record) -> Result<(), StorageError> {
        let failed = |what: &str, e: WalError| StorageError::new(format!("{what}: {e}"), e);
        loop {
            match self.wal.append(record.as_ref()) {
                Ok(appended) => {
                    assert_eq!(
                        appended, lsn,
                        "the WAL and the core table must number records alike"
                    );
                    return Ok(());
                }
                Err(WalError::BufferFull { .. }) => {
                    // The round outgrew one write: write what we have, then go on.
                    self.wal
                        .submit()
                        .map_err(|e| failed("cannot submit a WAL write", e))?;
                    self.wal
                        .wait(&[], Some(Duration::from_millis(100)))
                        .map_err(|e| failed("WAL write failed", e))?;
                }
                Err(e) => return Err(failed(&format!("core {}: WAL append", self.core), e)),
            }
        }
    }

    fn submit(&mut self) -> Result<(), StorageError> {
        self.wal
            .submit()
            .map_err(|e| StorageError::new(format!("core {}: WAL submit", self.core), e))
    }

    fn batch_waiting(&self) -> bool {
        self.wal.can_issue()
    }
}

/// The round's batch for the network thread as the driver's network.
struct NetBatch<'a> {
    batch: &'a mut Vec<(Dest, Bytes)>,
}

impl driver::Network for NetBatch<'_> {
    fn send(&mut self, to: NodeId, frame: Bytes) {
        self.batch.push((Dest::Peer(to.0), frame));
    }

    fn send_to_peers(&mut self, frame: Bytes) {
        self.batch.push((Dest::AllPeers, frame));
    }
}

/// When tick `at` of a core's clock begins (the core's clock started at `started`).
fn tick_instant(started: Instant, tick: Duration, at: Tick) -> Instant {
    let nanos = tick.as_nanos().saturating_mul(u128::from(at.0));
    started + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Proposers' replies and the executor's queue as the driver's apply.
struct ExecApply<'a> {
    core: usize,
    replies: &'a mut HashMap<ProposalId, Reply>,
    /// WAL budget reservations of proposals not yet chosen (released on their result).
    budget_pending: &'a mut HashMap<ProposalId, u64>,
    budget_reserved: &'a mut u64,
    read_queries: &'a mut HashMap<ProposalId, Bytes>,
    membership_ids: &'a mut HashSet<ProposalId>,
    backlog: &'a mut VecDeque<ExecMsg>,
    batch_bytes_max: usize,
    shared: &'a Shared,
    started: Instant,
    tick: Duration,
}

impl ExecApply<'_> {
    /// A proposal's result arrived: its values are in the WAL (or never will be).
    fn release(&mut self, id: ProposalId) {
        if let Some(cost) = self.budget_pending.remove(&id) {
            *self.budget_reserved -= cost;
        }
    }
}

impl driver::Apply for ExecApply<'_> {
    fn result(&mut self, result: ProposalResult) {
        let id = match &result {
            ProposalResult::Committed { id, .. }
            | ProposalResult::Failed { id, .. }
            | ProposalResult::Unknown { id, .. } => *id,
        };
        self.release(id);
        if self.membership_ids.remove(&id) {
            if let ProposalResult::Committed {
                id,
                group,
                instance,
                index,
            } = result
            {
                // A membership change: chosen is its outcome (it governs from
                // `instance + MEMBERSHIP_DELAY` on); the executor has nothing to answer.
                if let Some(reply) = self.replies.remove(&id) {
                    let _ = reply.send(Ok(super::Committed {
                        group,
                        instance,
                        index,
                        result: Bytes::new(),
                    }));
                }
                return;
            }
        }
        match result {
            ProposalResult::Committed {
                id,
                group,
                instance,
                index,
            } => {
                if let Some(reply) = self.replies.remove(&id) {
                    self.backlog.push_back(ExecMsg::Waiter {
                        group,
                        instance,
                        index,
                        reply,
                    });
                }
            }
            ProposalResult::Failed { id, group, reason } => {
                self.read_queries.remove(&id);
                if let Some(reply) = self.replies.remove(&id) {
                    let _ = reply.send(Err(fail_error(
                        reason,
                        group,
                        self.core,
                        0,
                        self.batch_bytes_max,
                    )));
                }
            }
            ProposalResult::Unknown { id, .. } => {
                if let Some(reply) = self.replies.remove(&id) {
                    let _ = reply.send(Err(Error::Unknown(
                        "leadership changed while the command was in flight".into(),
                    )));
                }
            }
        }
    }

    fn chosen(&mut self, chosen: Chosen) -> Result<(), DriverError> {
        let commands = value::decode(&chosen.value).map_err(|source| DriverError::BadValue {
            group: chosen.group.0,
            instance: chosen.instance.0,
            source,
        })?;
        self.backlog.push_back(ExecMsg::Chosen {
            group: chosen.group,
            instance: chosen.instance,
            commands,
            checksum: chosen.checksum,
        });
        Ok(())
    }

    fn stopped(&mut self, group: GroupId, error: GroupError) {
        tracing::error!(core = self.core, group = group.0, %error, "group stopped");
    }

    fn read_ready(&mut self, ready: crate::core::ReadReady) -> Result<(), DriverError> {
        let query = self.read_queries.remove(&ready.id);
        if let (Some(query), Some(reply)) = (query, self.replies.remove(&ready.id)) {
            // After this round's values in the executor's queue: the state it is answered
            // from covers every value the read must see.
            self.backlog.push_back(ExecMsg::Read {
                group: ready.group,
                query,
                reply,
            });
        }
        Ok(())
    }

    fn master_change(&mut self, change: crate::core::MasterChange) {
        let event = super::shared::MasterEvent {
            group: change.group,
            master: change.master,
            lease_until: change
                .until
                .map(|until| tick_instant(self.started, self.tick, until)),
        };
        if change.master {
            tracing::info!(
                core = self.core,
                group = change.group.0,
                "this node is now master of the group"
            );
        } else {
            tracing::info!(
                core = self.core,
                group = change.group.0,
                "this node is no longer master of the group"
            );
        }
        let subscribers = self
            .shared
            .master_subscribers
            .lock()
            .expect("subscribers lock");
        for subscriber in subscribers.iter() {
            if subscriber.try_send(event).is_err() {
                self.shared
                    .master_events_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Maps the protocol's refusal to the API's error; `bytes` is the command's size when known.
fn fail_error(
    reason: FailReason,
    group: GroupId,
    core: usize,
    bytes: usize,
    batch_bytes_max: usize,
) -> Error {
    match reason {
        FailReason::NotLeader { leader_hint } => Error::NotLeader {
            leader: leader_hint.map(|n| n.0),
        },
        FailReason::Overloaded => Error::Overloaded,
        FailReason::TooLarge => Error::TooLarge {
            bytes,
            max: batch_bytes_max as u32,
        },
        FailReason::UnknownGroup => Error::WrongCore {
            group: group.0,
            core,
        },
        FailReason::Stopped => {
            Error::Stopped("the group stopped on an error (see the node's log)".into())
        }
        FailReason::TooStale => Error::TooStale { max_ms: 0 },
        FailReason::BadMembership => Error::Membership(
            "a membership needs at least one voter and names each node once".into(),
        ),
        FailReason::MembershipChangePending => Error::Membership(
            "another membership change of this group is queued, in flight or not in effect yet; retry when it is".into(),
        ),
    }
}

/// A per-process seed for the core's jitter: the runtime is not deterministic (the simulator is).
fn seed_for(node: u32, core: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(node) << 32) ^ core as u64
}
