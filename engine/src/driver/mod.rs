//! The one round driver: what a core does with its [`CoreTable`] each round, written once and
//! used by the io_uring runtime, the simulator and the transcript harness alike
//! (docs/ARCHITECTURE.md, "One round of a core").
//!
//! A round: take the table's outputs; append every record to [`Storage`] and start **one**
//! write; encode each message once into a network frame (the real `paxring-net` codec: header,
//! checksums) and hand it to [`Network`] (a broadcast is encoded once, its bytes shared by
//! every peer); hold each reply that depends on persisted state until the storage's durable
//! point covers its Lsn (**the** durable-reply gate); answer proposers and hand chosen values
//! to the executor through [`Apply`], in instance order, from the replay point up.
//!
//! Owns: the table, the held replies, the frame buffer, the replay points, the driver's
//! counters. Never: reads a clock, does I/O of its own, spawns a thread or draws randomness
//! (time arrives as [`Tick`]s, durability as [`Driver::durable`], frames as
//! [`Driver::on_frame`]); `tests/tidy.rs` checks this source like the core's.
use crate::core::{
    CheckpointInfo, Chosen, CoreTable, FailReason, GroupError, GroupId, Instance, Lsn,
    MasterChange, Message, NodeId, ProposalId, ProposalResult, ReadMode, ReadReady, Record, Tick,
};
use bytes::{Bytes, BytesMut};
use paxring_net::{finish_frame, start_frame, Frame};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// Why a [`Storage::read_chosen_run`] stopped (the WAL's own answer to the same question).
pub use paxring_wal::RunStop;

/// A failure of the storage under a driver (a failed write or fsync): fatal, never retried.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct StorageError {
    what: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StorageError {
    /// A storage failure with its cause.
    pub fn new(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StorageError {
        StorageError {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A storage failure described by text alone (the simulator's injected fsync error).
    pub fn message(what: impl Into<String>) -> StorageError {
        StorageError {
            what: what.into(),
            source: None,
        }
    }
}

/// Why a driver stopped its core (the node must fail-stop).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A WAL write or fsync failed: the node stops (a failed fsync is never retried).
    #[error("WAL failed (fatal, never retried): {0}")]
    Storage(#[source] StorageError),
    /// The executor cannot take chosen values any more.
    #[error("the executor stopped: {0}")]
    Executor(String),
    /// A chosen value does not decode (a bug: the core only chooses values it encoded).
    #[error("chosen value of group {group} instance {instance} does not decode: {source}")]
    BadValue {
        /// The group.
        group: u32,
        /// The instance.
        instance: u64,
        /// The decoder's complaint.
        #[source]
        source: crate::core::value::ValueError,
    },
}

/// Where a core's durable records go: the WAL in the node, a simulated disk in the simulator.
pub trait Storage {
    /// Adds one record to the round's write. Lsns come consecutively from the table.
    fn append(&mut self, lsn: Lsn, record: &Record) -> Result<(), StorageError>;
    /// Starts writing what was appended this round (one write; the storage reports
    /// completion to its owner, who passes it to [`Driver::durable`]).
    fn submit(&mut self) -> Result<(), StorageError>;
    /// Records appended while the last write was in flight wait, and no write is in flight
    /// now: they need a `submit` although this round appended nothing (the driver submits
    /// them; else a node with nothing more to append would wait on them forever).
    fn batch_waiting(&self) -> bool {
        false
    }
    /// The chosen value of `(group, instance)` as the storage holds it (its `Chosen` mark's
    /// value), or `None` when it holds none (streaming catch-up from the log). An error is
    /// not a durability failure: the driver stops that read, serves what it has and counts it.
    fn read_chosen(
        &mut self,
        group: GroupId,
        instance: Instance,
    ) -> Result<Option<Bytes>, StorageError>;

    /// Streaming catch-up's read: the chosen values of `group`'s instances `first..end`, in
    /// instance order, appended to `out` as `(instance, value)`, each what
    /// [`Storage::read_chosen`] returns for it. Stops at `end` ([`RunStop::End`]), at the first
    /// instance the storage holds no value for ([`RunStop::Missing`]), or before the value
    /// that would take the payload bytes this call appended past `bytes_max`
    /// ([`RunStop::BytesMax`]; the first value is always taken). On an error `out` keeps the
    /// values appended before it (the driver serves them and counts the error). Default:
    /// `read_chosen` one instance at a time (the WAL reads runs of records at once).
    fn read_chosen_run(
        &mut self,
        group: GroupId,
        first: Instance,
        end: Instance,
        bytes_max: usize,
        out: &mut Vec<(Instance, Bytes)>,
    ) -> Result<RunStop, StorageError> {
        let start = out.len();
        let mut bytes = 0usize;
        for index in first.0..end.0 {
            let Some(value) = self.read_chosen(group, Instance(index))? else {
                return Ok(RunStop::Missing);
            };
            if out.len() > start && bytes + value.len() > bytes_max {
                return Ok(RunStop::BytesMax);
            }
            bytes += value.len();
            out.push((Instance(index), value));
        }
        Ok(RunStop::End)
    }

    /// Checkpoint transfer, serving side (docs/PROTOCOL.md#checkpoint-transfer): at most
    /// `bytes_max` payload bytes of `group`'s checkpoint `instance` from `offset` — or, when
    /// that one is gone or `instance` is None, of the newest checkpoint above `need` from
    /// offset 0 — as (checkpoint, offset served, bytes). `Ok(None)`: none to offer (a store
    /// may start making one; the peer asks again later). Default: none.
    fn read_checkpoint(
        &mut self,
        group: GroupId,
        instance: Option<Instance>,
        need: Instance,
        offset: u64,
        bytes_max: usize,
    ) -> Result<Option<(CheckpointInfo, u64, Bytes)>, StorageError> {
        let _ = (group, instance, need, offset, bytes_max);
        Ok(None)
    }

    /// Checkpoint transfer, receiving side: `data` belongs at `offset` of the payload of
    /// `info` (offset 0 starts a new receive for the group, dropping any earlier partial one).
    /// An error abandons the transfer (it is not a WAL failure). Default: unsupported.
    fn receive_checkpoint(
        &mut self,
        group: GroupId,
        info: &CheckpointInfo,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let _ = (group, info, offset, data);
        Err(StorageError::message(
            "this storage cannot receive checkpoints",
        ))
    }

    /// Every byte of `info` arrived: check it and install it into the group's state machine.
    /// Completion comes back later through [`Driver::installed`] or
    /// [`Driver::install_failed`] (the owner may install on another thread). Default:
    /// unsupported.
    fn install_checkpoint(
        &mut self,
        group: GroupId,
        info: &CheckpointInfo,
    ) -> Result<(), StorageError> {
        let _ = (group, info);
        Err(StorageError::message(
            "this storage cannot install checkpoints",
        ))
    }
}

/// Where a core's frames go: the shared network thread in the node, the simulated network in
/// the simulator. Frames are complete `paxring-net` frames (header and checksums included).
pub trait Network {
    /// Sends one frame to one peer.
    fn send(&mut self, to: NodeId, frame: Bytes);
    /// Sends one frame to every peer (the bytes are shared, not copied per peer).
    fn send_to_peers(&mut self, frame: Bytes);
}

/// Where outcomes go: proposers' answers and the executor's queue.
pub trait Apply {
    /// A proposal's outcome (given before the chosen values of the same round, so that a
    /// waiter reaches the executor before the value it waits on).
    fn result(&mut self, result: ProposalResult);
    /// A chosen value, in instance order per group, at or above the group's replay point.
    fn chosen(&mut self, chosen: Chosen) -> Result<(), DriverError>;
    /// A group stopped on an error (it takes no more input).
    fn stopped(&mut self, group: GroupId, error: GroupError);
    /// A read is confirmed (docs/PROTOCOL.md#reads): serve it from the group's state machine
    /// after every chosen value handed over before it (it is given after this round's values).
    fn read_ready(&mut self, ready: ReadReady) -> Result<(), DriverError>;
    /// This node became or stopped being the master of a group.
    fn master_change(&mut self, change: MasterChange) {
        let _ = change;
    }
}

/// The driver's own counters (the fan-out and copy claims of docs/ARCHITECTURE.md are checked
/// against these by tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriverStats {
    /// Frames encoded (each message once, however many peers it goes to).
    pub frames_encoded: u64,
    /// Frame deliveries handed to the network (one per peer).
    pub frames_sent: u64,
    /// Bytes of proposal values copied into frames (an Accept's value is copied once per
    /// transmission, not once per peer).
    pub value_bytes_copied: u64,
    /// Accept transmissions encoded.
    pub accepts_encoded: u64,
    /// Prepare transmissions encoded.
    pub prepares_encoded: u64,
    /// Replies held until their record was durable.
    pub replies_held: u64,
    /// Inbound frames whose body did not decode (dropped and counted).
    pub undecodable_frames: u64,
    /// Records appended to storage.
    pub records_appended: u64,
    /// Rounds that submitted a write.
    pub writes_submitted: u64,
    /// Of which rounds that appended nothing and submitted records that waited for the last
    /// write to complete ([`Storage::batch_waiting`]).
    pub waiting_batches_submitted: u64,
    /// Chosen values read from storage for catch-up (streaming catch-up from the log).
    pub values_read: u64,
    /// Their bytes.
    pub value_bytes_read: u64,
    /// Reads from storage that failed (that catch-up reply stopped there).
    pub read_errors: u64,
    /// Checkpoint chunks read for peers.
    #[serde(default)]
    pub checkpoint_chunks_read: u64,
    /// Their payload bytes.
    #[serde(default)]
    pub checkpoint_bytes_read: u64,
    /// Checkpoint requests answered "none to offer".
    #[serde(default)]
    pub checkpoint_none: u64,
    /// Checkpoint reads, writes or installs that failed.
    #[serde(default)]
    pub checkpoint_errors: u64,
    /// Checkpoints handed to storage to install.
    #[serde(default)]
    pub checkpoint_installs: u64,
    /// Catch-up reads put off to a later round by the per-round read budget.
    pub reads_deferred: u64,
    /// Catch-up reads the budget cut short, continued in the next round.
    pub reads_continued: u64,
}

/// Most value bytes a round reads from storage for catch-up: serving a lagging peer never
/// takes a round much longer than one such read (the serving node's own commits go on).
pub const READ_BYTES_PER_ROUND: usize = 1 << 20;
/// Most values a round reads from storage for catch-up (each is a read of its own: this
/// bounds the time a round spends on them when values are small).
pub const READ_VALUES_PER_ROUND: usize = 512;

/// A reply waiting for its record to be durable.
struct Held {
    lsn: Lsn,
    to: NodeId,
    frame: Bytes,
}

/// One core's driver: a [`CoreTable`] and the rules for moving its outputs.
pub struct Driver {
    table: CoreTable,
    me: NodeId,
    out: crate::core::Outputs,
    held: VecDeque<Held>,
    durable: Lsn,
    replay_from: BTreeMap<GroupId, Instance>,
    frame_buf: BytesMut,
    stats: DriverStats,
    ignore_fsync_error: bool,
    /// Catch-up reads waiting for a round with read budget left.
    reads: VecDeque<crate::core::ReadRequest>,
    /// Checkpoint reads waiting likewise.
    checkpoint_reads: VecDeque<crate::core::CheckpointRead>,
    /// 0; 1 under the injected `log-read-off-by-one` bug.
    read_skew: u64,
    /// Catch-up read bytes allowed per tick on average (`set_read_rate`), if limited.
    read_rate: Option<u64>,
    /// Catch-up read bytes allowed now (refilled each tick).
    read_tokens: u64,
    /// The last tick seen.
    read_tick: Tick,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("me", &self.me)
            .field("durable", &self.durable)
            .field("held", &self.held.len())
            .finish()
    }
}

/// Room for a round's frames in one allocation (frames split off it share it).
const FRAME_BUF_BYTES: usize = 64 * 1024;

impl Driver {
    /// Drives `table` (freshly created or restored).
    pub fn new(table: CoreTable) -> Driver {
        let me = table.node();
        let durable = table.durable_lsn();
        #[cfg(feature = "sim-bugs")]
        let ignore_fsync_error = table.bugs().ignore_fsync_error;
        #[cfg(not(feature = "sim-bugs"))]
        let ignore_fsync_error = false;
        #[cfg(feature = "sim-bugs")]
        let read_skew = u64::from(table.bugs().log_read_off_by_one);
        #[cfg(not(feature = "sim-bugs"))]
        let read_skew = 0;
        Driver {
            table,
            me,
            out: crate::core::Outputs::default(),
            held: VecDeque::new(),
            durable,
            replay_from: BTreeMap::new(),
            frame_buf: BytesMut::with_capacity(FRAME_BUF_BYTES),
            stats: DriverStats::default(),
            ignore_fsync_error,
            reads: VecDeque::new(),
            checkpoint_reads: VecDeque::new(),
            read_skew,
            read_rate: None,
            read_tokens: 0,
            read_tick: Tick(0),
        }
    }

    /// Catch-up or checkpoint reads wait for a round with read budget: the owner runs the
    /// next round without waiting for an event.
    pub fn reads_pending(&self) -> bool {
        let tokens = self.read_rate.is_none() || self.read_tokens > 0;
        tokens && (!self.reads.is_empty() || !self.checkpoint_reads.is_empty())
    }

    /// The table (read-only: status, counters, invariants).
    pub fn table(&self) -> &CoreTable {
        &self.table
    }

    /// The table, for inputs the driver does not wrap (tests, the simulator's checks).
    pub fn table_mut(&mut self) -> &mut CoreTable {
        &mut self.table
    }

    /// Gives the table back (held replies are dropped: for tests that rebuild a driver).
    pub fn into_table(self) -> CoreTable {
        self.table
    }

    /// The driver's counters.
    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// The durable point the driver was told.
    pub fn durable_lsn(&self) -> Lsn {
        self.durable
    }

    /// Replies held for durability.
    pub fn held_replies(&self) -> usize {
        self.held.len()
    }

    /// Chosen values of `group` below `from` are not handed to the executor (its state machine
    /// holds them already: the checkpoint/replay rule).
    pub fn set_replay_from(&mut self, group: GroupId, from: Instance) {
        self.replay_from.insert(group, from);
    }

    /// One inbound frame (checksums already verified by the codec). A body that does not
    /// decode is counted and dropped; the error says why.
    pub fn on_frame(&mut self, frame: &Frame) -> Result<(), crate::core::DecodeError> {
        match Message::decode_body(frame.kind, &frame.body) {
            Ok(msg) => {
                self.table
                    .on_message(NodeId(frame.from), GroupId(frame.group), msg);
                Ok(())
            }
            Err(e) => {
                self.stats.undecodable_frames += 1;
                Err(e)
            }
        }
    }

    /// Time passes.
    pub fn tick(&mut self, now: Tick) {
        if let Some(rate) = self.read_rate {
            // Refill the catch-up read tokens for the ticks passed (at most a few rounds'
            // worth saved up).
            let passed = now.0.saturating_sub(self.read_tick.0);
            self.read_tokens = self
                .read_tokens
                .saturating_add(rate.saturating_mul(passed))
                .min(rate.max(READ_BYTES_PER_ROUND as u64) * 4);
        }
        self.read_tick = now;
        self.table.tick(now);
    }

    /// Limits the value bytes this driver reads for catch-up to `bytes_per_tick` on average
    /// (`None`: only the per-round budget): the serving node's own commits keep their latency
    /// while a peer catches up, at the cost of the peer's catch-up rate.
    pub fn set_read_rate(&mut self, bytes_per_tick: Option<u64>) {
        self.read_rate = bytes_per_tick.filter(|r| *r > 0);
        self.read_tokens = self.read_rate.unwrap_or(0);
    }

    /// A linearizable read (see [`CoreTable::read`]): tick the clock after it arrived and
    /// before calling this.
    pub fn read(
        &mut self,
        group: GroupId,
        id: ProposalId,
        mode: ReadMode,
    ) -> Result<(), FailReason> {
        self.table.read(group, id, mode)
    }

    /// A proposal (see [`CoreTable::propose`]).
    pub fn propose(
        &mut self,
        group: GroupId,
        id: ProposalId,
        command: Bytes,
    ) -> Result<(), FailReason> {
        self.table.propose(group, id, command)
    }

    /// The storage made everything through `lsn` durable.
    pub fn durable(&mut self, lsn: Lsn) {
        if lsn > self.durable {
            self.durable = lsn;
            self.table.durable(lsn);
        }
    }

    /// The storage installed `group`'s checkpoint `info` into the state machine (durably):
    /// the group continues after it; chosen values from there on go to the executor.
    pub fn installed(&mut self, group: GroupId, info: CheckpointInfo) {
        let from = Instance(info.instance.0 + 1);
        let replay = self.replay_from.entry(group).or_insert(from);
        *replay = (*replay).max(from);
        let mut out = std::mem::take(&mut self.out);
        self.table.installed(group, info, &mut out);
        self.out = out;
    }

    /// The storage could not install `group`'s checkpoint: the transfer is abandoned and
    /// catch-up tries again after a back-off.
    pub fn install_failed(&mut self, group: GroupId) {
        self.stats.checkpoint_errors += 1;
        let mut out = std::mem::take(&mut self.out);
        self.table.install_failed(group, &mut out);
        self.out = out;
    }

    /// The storage reports that the write ending at `last_lsn` failed (an fsync error): the
    /// core must stop; the error comes back for the node to fail-stop with.
    pub fn write_failed(&mut self, last_lsn: Lsn, error: StorageError) -> Result<(), DriverError> {
        if self.ignore_fsync_error {
            // The injected bug: take the failed write as durable and carry on.
            self.durable(last_lsn);
            return Ok(());
        }
        Err(DriverError::Storage(error))
    }

    /// One round: moves everything the table produced since the last round.
    pub fn round(
        &mut self,
        storage: &mut impl Storage,
        net: &mut impl Network,
        apply: &mut impl Apply,
    ) -> Result<(), DriverError> {
        let mut out = std::mem::take(&mut self.out);
        self.table.poll(&mut out);

        // 0. Catch-up older than memory: read the values from storage within the round's
        //    read budget (bytes and values: the serving node's own commits go on between
        //    rounds). A read the budget cuts short is answered as far as it got, and the rest
        //    of it continues first in the next round (the replies say more follows); the
        //    reads not started wait.
        self.reads.extend(out.reads.drain(..));
        let mut budget = match self.read_rate {
            Some(_) => READ_BYTES_PER_ROUND.min(self.read_tokens as usize),
            None => READ_BYTES_PER_ROUND,
        };
        let budget_at_start = budget;
        let mut values_left = READ_VALUES_PER_ROUND;
        while budget > 0 && values_left > 0 {
            let Some(read) = self.reads.pop_front() else {
                break;
            };
            let mut entries = Vec::new();
            let bytes_max = read.bytes_max.min(budget);
            let entries_max = read.entries_max.min(values_left);
            // One run of the group's instances: at most `entries_max` values, at most
            // `bytes_max` bytes after the first (the storage reads nearby records at once).
            let run_end = read
                .end
                .0
                .min(read.first.0.saturating_add(entries_max as u64));
            let skew = self.read_skew;
            let stop = storage.read_chosen_run(
                read.group,
                Instance(read.first.0 + skew),
                Instance(run_end.max(read.first.0) + skew),
                bytes_max,
                &mut entries,
            );
            if skew != 0 {
                // The injected bug: each value read one instance on, served as its own.
                for (instance, _) in &mut entries {
                    *instance = Instance(instance.0 - skew);
                }
            }
            let cut = match stop {
                // The run ended at the value limit before the request's end.
                Ok(RunStop::End) => run_end < read.end.0 && entries_max < read.entries_max,
                Ok(RunStop::BytesMax) => bytes_max < read.bytes_max,
                Ok(RunStop::Missing) => false,
                Err(_) => {
                    self.stats.read_errors += 1;
                    false
                }
            };
            let bytes: usize = entries.iter().map(|(_, value)| value.len()).sum();
            self.stats.values_read += entries.len() as u64;
            self.stats.value_bytes_read += bytes as u64;
            budget = budget.saturating_sub(bytes.max(1));
            values_left = values_left.saturating_sub(entries.len().max(1));
            let next = entries
                .last()
                .map_or(read.first, |(i, _)| Instance(i.0 + 1));
            if cut && !entries.is_empty() {
                self.stats.reads_continued += 1;
                let part = crate::core::ReadRequest {
                    entries_max: entries.len(),
                    bytes_max: bytes,
                    ..read.clone()
                };
                self.reads.push_front(crate::core::ReadRequest {
                    first: next,
                    entries_max: read.entries_max - entries.len(),
                    bytes_max: read.bytes_max.saturating_sub(bytes).max(1),
                    ..read
                });
                self.table.serve_read(&part, entries, true, &mut out);
            } else {
                // What follows the values read is served from memory where memory holds it.
                self.table.serve_read(&read, entries, false, &mut out);
            }
        }
        if self.read_rate.is_some() {
            let used = budget_at_start.saturating_sub(budget) as u64;
            self.read_tokens = self.read_tokens.saturating_sub(used);
        }
        self.stats.reads_deferred += self.reads.len() as u64;

        // 0b. Checkpoint transfer: chunks for peers (within what is left of the read budget;
        //     the rest waits), received chunks to the store, complete ones to install.
        self.checkpoint_reads.extend(out.checkpoint_reads.drain(..));
        while budget > 0 {
            let Some(read) = self.checkpoint_reads.pop_front() else {
                break;
            };
            let piece = match storage.read_checkpoint(
                read.group,
                read.instance,
                read.need,
                read.offset,
                read.bytes_max,
            ) {
                Ok(Some((info, offset, data))) => {
                    self.stats.checkpoint_chunks_read += 1;
                    self.stats.checkpoint_bytes_read += data.len() as u64;
                    budget = budget.saturating_sub(data.len().max(1));
                    Some((info, offset, data))
                }
                Ok(None) => {
                    self.stats.checkpoint_none += 1;
                    None
                }
                Err(_) => {
                    self.stats.checkpoint_errors += 1;
                    None
                }
            };
            self.table
                .serve_checkpoint(read.group, read.to, piece, &mut out);
        }
        let writes: Vec<_> = out.checkpoint_writes.drain(..).collect();
        let mut failed: Vec<GroupId> = Vec::new();
        for write in writes {
            if failed.contains(&write.group) {
                continue;
            }
            if storage
                .receive_checkpoint(write.group, &write.info, write.offset, &write.data)
                .is_err()
            {
                self.stats.checkpoint_errors += 1;
                failed.push(write.group);
            }
        }
        let installs: Vec<_> = out.installs.drain(..).collect();
        for (group, info) in installs {
            if failed.contains(&group) {
                continue;
            }
            self.stats.checkpoint_installs += 1;
            if storage.install_checkpoint(group, &info).is_err() {
                self.stats.checkpoint_errors += 1;
                failed.push(group);
            }
        }
        for group in failed {
            self.table.install_failed(group, &mut out);
        }

        // 1. Durable records: one write for the whole round, and records that waited for
        //    the last write to complete go out now even when this round appended nothing.
        #[allow(unused_mut)]
        let mut waiting = out.appends.is_empty() && storage.batch_waiting();
        #[cfg(feature = "sim-bugs")]
        if self.table.bugs().submit_only_on_append {
            waiting = false;
        }
        if !out.appends.is_empty() || waiting {
            for (lsn, record) in &out.appends {
                storage.append(*lsn, record).map_err(DriverError::Storage)?;
            }
            self.stats.records_appended += out.appends.len() as u64;
            self.stats.writes_submitted += 1;
            self.stats.waiting_batches_submitted += u64::from(waiting);
            storage.submit().map_err(DriverError::Storage)?;
        }

        // 2. Messages that need no durability leave now (a leader's Accept overlaps its own
        //    write). A broadcast is encoded once; consecutive sends of one message share a frame.
        for broadcast in out.broadcasts.drain(..) {
            let frame = self.encode(broadcast.group, &broadcast.msg);
            self.stats.frames_sent += self.table.peers() as u64;
            net.send_to_peers(frame);
        }
        let mut last: Option<Bytes> = None;
        for (index, send) in out.sends.iter().enumerate() {
            let reuse = index > 0 && {
                let before = &out.sends[index - 1];
                before.group == send.group && same_message(&before.msg, &send.msg)
            };
            let frame = match (&last, reuse) {
                (Some(frame), true) => frame.clone(),
                _ => self.encode(send.group, &send.msg),
            };
            self.stats.frames_sent += 1;
            net.send(send.to, frame.clone());
            last = Some(frame);
        }
        out.sends.clear();

        // 3. Replies that depend on persisted state wait for their Lsn: the durable-reply gate.
        let mut last: Option<Bytes> = None;
        for (index, send) in out.sends_after_durable.iter().enumerate() {
            let reuse = index > 0 && {
                let before = &out.sends_after_durable[index - 1];
                before.group == send.group
                    && before.lsn == send.lsn
                    && same_message(&before.msg, &send.msg)
            };
            let frame = match (&last, reuse) {
                (Some(frame), true) => frame.clone(),
                _ => self.encode(send.group, &send.msg),
            };
            last = Some(frame.clone());
            self.stats.replies_held += 1;
            // Kept sorted by Lsn (the core emits them in order; an older one, e.g. a repeated
            // reply, is placed where it belongs rather than waiting behind newer ones).
            let at = self.held.partition_point(|h| h.lsn <= send.lsn);
            self.held.insert(
                at,
                Held {
                    lsn: send.lsn,
                    to: send.to,
                    frame,
                },
            );
        }
        out.sends_after_durable.clear();
        while self.held.front().is_some_and(|h| h.lsn <= self.durable) {
            let held = self.held.pop_front().expect("front exists");
            assert!(
                held.lsn <= self.durable,
                "a reply leaves only after its record is durable"
            );
            self.stats.frames_sent += 1;
            net.send(held.to, held.frame);
        }

        // 4. Answers first (a waiter reaches the executor before its value), then values in
        //    order from the replay point, then stopped groups.
        for result in out.results.drain(..) {
            apply.result(result);
        }
        for chosen in out.chosen.drain(..) {
            let from = self
                .replay_from
                .get(&chosen.group)
                .copied()
                .unwrap_or(Instance(0));
            if chosen.instance < from {
                continue;
            }
            apply.chosen(chosen)?;
        }
        // 5. Reads confirmed this round, after the values (the applied state then covers every
        //    value each must see).
        for ready in out.reads_ready.drain(..) {
            apply.read_ready(ready)?;
        }
        for change in out.master_changes.drain(..) {
            apply.master_change(change);
        }
        for (group, error) in out.stopped.drain(..) {
            apply.stopped(group, error);
        }
        out.clear();
        self.out = out;
        Ok(())
    }

    /// Encodes one message into a frame, writing the body in place (a value is copied once).
    fn encode(&mut self, group: GroupId, msg: &Message) -> Bytes {
        self.stats.frames_encoded += 1;
        match msg {
            Message::Accept { value, .. } => {
                self.stats.accepts_encoded += 1;
                self.stats.value_bytes_copied += value.len() as u64;
            }
            Message::Prepare { .. } => self.stats.prepares_encoded += 1,
            _ => {}
        }
        if self.frame_buf.capacity() < 256 {
            self.frame_buf = BytesMut::with_capacity(FRAME_BUF_BYTES);
        }
        start_frame(&mut self.frame_buf);
        msg.encode_body_into(&mut self.frame_buf);
        finish_frame(&mut self.frame_buf, msg.kind(), group.0, self.me.0)
    }
}

/// Whether two messages are the same transmission (cheap: a value is compared by buffer, not
/// by bytes; messages with per-destination contents never compare equal).
fn same_message(a: &Message, b: &Message) -> bool {
    match (a, b) {
        (
            Message::Accept {
                ballot: b1,
                instance: i1,
                value: v1,
                chosen_through: c1,
            },
            Message::Accept {
                ballot: b2,
                instance: i2,
                value: v2,
                chosen_through: c2,
            },
        ) => b1 == b2 && i1 == i2 && c1 == c2 && same_bytes(v1, v2),
        (Message::Prepare { .. }, Message::Prepare { .. })
        | (Message::Commit { .. }, Message::Commit { .. })
        | (Message::Accepted { .. }, Message::Accepted { .. })
        | (Message::Reject { .. }, Message::Reject { .. })
        | (Message::CatchupRequest { .. }, Message::CatchupRequest { .. }) => a == b,
        _ => false,
    }
}

fn same_bytes(a: &Bytes, b: &Bytes) -> bool {
    a.len() == b.len() && a.as_ptr() == b.as_ptr()
}
