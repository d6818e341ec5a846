//! The library-driven mirror checkpoint (PhxPaxos): for a group in `CheckpointMode::Mirror`, a
//! second instance of its state machine, fed on a thread of its own behind the live one, that
//! writes a checkpoint file every `every_instances` applied instances while it is paused.
//!
//! At start, [`prepare`] makes each mirror with the application's factory, restores it from the
//! group's newest checkpoint that restores (a corrupt one is skipped and logged), and brings a
//! live state machine that is behind that checkpoint up to it. The executor then hands every
//! value it applies to the core's mirror thread ([`spawn`]) through a bounded queue, without
//! waiting: when the queue is full the value's group stops being mirrored until the next start
//! (logged once, counted in `MirrorStats::dropped`), and its purge floor stays at its last
//! checkpoint, so the WAL keeps everything the next start replays into the mirror.
//!
//! Owns: the mirror state machines of one core, the mirror thread, the checkpoint files of
//! mirror-mode groups (`DATA_DIR/checkpoints/group-G/`), and, in mirror mode, the group's
//! `GroupProgress::checkpoint_next`. Never: blocks or pauses the live executor, raises the purge
//! floor above a checkpoint file that is durable, or stops the node because a checkpoint could
//! not be written (it is not the WAL: the old checkpoint stays and the failure is counted).

// `prepare`, `applied_from` and `run_with_mirrors` are called by the node once it passes the
// mirrors of `checkpoint_mode` to its executors (until then only the tests call them).

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use paxring_wal::checkpoint::{self, CheckpointReader, CheckpointWriter};
use paxring_wal::{GroupId, Instance};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::api::StartError;
use super::config::CheckpointModeConfig;
use super::executor::GroupProgress;
use super::state_machine::{CheckpointMode, StateMachine, StateMachineFactory};

/// Checkpoint files kept per group: the newest and the one before it.
const CHECKPOINTS_KEPT: usize = 2;

/// The directory of the mirror checkpoints under a node's data dir.
pub(crate) fn checkpoint_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoints")
}

/// A group's mirror counters (part of its [`GroupProgress`]).
#[derive(Debug, Default)]
pub(crate) struct MirrorStats {
    /// The mirror's next instance to apply (0 = nothing applied; only in mirror mode).
    pub applied_next: AtomicU64,
    /// Checkpoint files written.
    pub checkpoints: AtomicU64,
    /// Checkpoints that could not be written (snapshot, write or fsync failed; the older one
    /// stays), and old ones that could not be pruned.
    pub failures: AtomicU64,
    /// 1 while the group is not mirrored (its queue was full, the mirror thread is gone, or
    /// it could not restore an installed checkpoint): no more checkpoints until the next
    /// start or the next checkpoint installed from a peer.
    pub dropped: AtomicU64,
    /// Times the mirror restored a checkpoint the live state machine installed from a peer
    /// (and went on from there).
    pub resets: AtomicU64,
}

/// One group's mirror, made at start by [`prepare`].
pub(crate) struct MirrorGroup {
    group: GroupId,
    machine: Box<dyn StateMachine>,
    /// The first instance the mirror applies.
    next: u64,
    /// The newest checkpoint file's instance + 1 (0 = none): the group's purge floor.
    checkpoint_next: u64,
    every_instances: u64,
    progress: Arc<GroupProgress>,
}

/// The mirrors of one core's mirror-mode groups, and where their checkpoints go.
pub(crate) struct Mirrors {
    dir: PathBuf,
    queue_max: usize,
    groups: Vec<MirrorGroup>,
}

impl Mirrors {
    /// Where the core must start replaying each group: its `applied_from` (the checkpoint
    /// instance below which nothing is replayed). For a mirror-mode group it is the lower of
    /// the live state machine's and the mirror's, since the executor feeds both.
    pub(crate) fn applied_from(
        &self,
        machines: &[(GroupId, Box<dyn StateMachine>, Arc<GroupProgress>)],
    ) -> Vec<(GroupId, Option<Instance>)> {
        machines
            .iter()
            .map(|(group, machine, _)| {
                let live = machine.checkpoint_instance();
                let mirror = self
                    .groups
                    .iter()
                    .find(|m| m.group == *group)
                    .map(|m| m.next.checked_sub(1).map(Instance));
                (*group, mirror.map_or(live, |mirror| live.min(mirror)))
            })
            .collect()
    }

    /// The purge floor of each mirror-mode group at start (its newest checkpoint + 1).
    pub(crate) fn checkpoint_nexts(&self) -> Vec<(GroupId, u64)> {
        self.groups
            .iter()
            .map(|m| (m.group, m.checkpoint_next))
            .collect()
    }
}

/// At start, for the groups of one core: makes the mirror of each mirror-mode group with
/// `factory`, restores it from the group's newest checkpoint under
/// `checkpoint_dir(data_dir)` that restores (older ones are tried when a newer one is
/// corrupt), restores the live state machine from the same checkpoint when it is behind it,
/// and publishes each group's purge floor. Run before the core computes its replay points
/// ([`Mirrors::applied_from`]). An error is the factory's.
pub(crate) fn prepare(
    machines: &mut [(GroupId, Box<dyn StateMachine>, Arc<GroupProgress>)],
    mode: &CheckpointModeConfig,
    data_dir: &Path,
    factory: &mut StateMachineFactory,
) -> Result<Mirrors, StartError> {
    let dir = checkpoint_dir(data_dir);
    let mut groups = Vec::new();
    for (group, live, progress) in machines.iter_mut() {
        let CheckpointMode::Mirror { every_instances } = mode.mode_of(*group) else {
            continue;
        };
        let mut mirror = factory(*group).map_err(|reason| StartError::StateMachine {
            group: group.0,
            reason: format!("its mirror (checkpoint_mode): {reason}"),
        })?;
        let restored = restore_newest(&dir, *group, mirror.as_mut());
        let mut next = next_of(mirror.as_ref());
        let mut checkpoint_next = 0;
        if let Some((instance, path)) = restored {
            next = next.max(instance.0 + 1);
            checkpoint_next = instance.0 + 1;
            if live.checkpoint_instance().is_none_or(|i| i < instance) {
                // The WAL may hold nothing below the checkpoint: start the live one from it.
                match restore_from(&path, *group, live.as_mut()) {
                    Ok(_) => tracing::info!(
                        group = group.0,
                        instance = instance.0,
                        "live state machine restored from the mirror checkpoint"
                    ),
                    Err(e) => tracing::error!(
                        group = group.0,
                        "live state machine could not restore {}: {e}; it replays from its own \
                         checkpoint",
                        path.display()
                    ),
                }
            }
        }
        progress
            .checkpoint_next
            .store(checkpoint_next, Ordering::Release);
        progress.mirror.applied_next.store(next, Ordering::Release);
        groups.push(MirrorGroup {
            group: *group,
            machine: mirror,
            next,
            checkpoint_next,
            every_instances,
            progress: progress.clone(),
        });
    }
    Ok(Mirrors {
        dir,
        queue_max: mode.mirror_queue_max,
        groups,
    })
}

fn next_of(machine: &dyn StateMachine) -> u64 {
    machine.checkpoint_instance().map_or(0, |i| i.0 + 1)
}

/// Restores `machine` from the newest checkpoint of `group` that restores: first the one
/// `newest_valid` names (it skips and logs files that fail verification), then, should that
/// one not restore, older files, newest first. Every file skipped is logged. Returns the
/// checkpoint's instance and file.
fn restore_newest(
    dir: &Path,
    group: GroupId,
    machine: &mut dyn StateMachine,
) -> Option<(Instance, PathBuf)> {
    let newest = match checkpoint::newest_valid(dir, group) {
        Ok(newest) => newest.map(|(path, meta)| (meta.instance, path)),
        Err(e) => {
            tracing::warn!(group = group.0, "cannot pick the newest checkpoint: {e}");
            None
        }
    };
    let floor = newest.as_ref().map(|(i, _)| *i);
    let mut tried: Vec<(Instance, PathBuf)> = newest.into_iter().collect();
    tried.extend(
        list_checkpoints(dir, group)
            .into_iter()
            .filter(|(i, _)| floor.is_none_or(|floor| *i < floor)),
    );
    for (instance, path) in tried {
        match restore_from(&path, group, machine) {
            Ok(restored) if restored == instance => {
                tracing::info!(
                    group = group.0,
                    instance = instance.0,
                    "mirror restored from {}",
                    path.display()
                );
                return Some((instance, path));
            }
            Ok(restored) => {
                // Not possible from the writer (the name is the header's instance); a renamed
                // file restored what its header says, which is consistent on its own.
                tracing::warn!(
                    group = group.0,
                    "checkpoint {} holds instance {}, not the {} of its name",
                    path.display(),
                    restored.0,
                    instance.0
                );
                return Some((restored, path));
            }
            Err(e) => tracing::warn!(
                group = group.0,
                "checkpoint {} cannot be restored, skipped (an older one is tried): {e}",
                path.display()
            ),
        }
    }
    None
}

/// Streams one checkpoint file into `machine`; the instance restored.
pub(crate) fn restore_from(
    path: &Path,
    group: GroupId,
    machine: &mut dyn StateMachine,
) -> Result<Instance, String> {
    let mut reader = CheckpointReader::open(path).map_err(|e| e.to_string())?;
    let (file_group, instance) = (reader.meta().group, reader.meta().instance);
    if file_group != group {
        return Err(format!("it belongs to group {}", file_group.0));
    }
    machine
        .restore(instance, &mut reader)
        .map_err(|e| e.to_string())?;
    Ok(instance)
}

/// The checkpoint files of `group` by the instance in their names, newest first (an
/// unreadable directory lists nothing).
fn list_checkpoints(dir: &Path, group: GroupId) -> Vec<(Instance, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(checkpoint::group_dir(dir, group)) else {
        return Vec::new();
    };
    let mut found: Vec<(Instance, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let instance = checkpoint::parse_checkpoint_name(entry.file_name().to_str()?)?;
            Some((instance, entry.path()))
        })
        .collect();
    found.sort_by_key(|(instance, _)| std::cmp::Reverse(*instance));
    found
}

/// A chosen value on its way to the mirror thread.
pub(crate) enum MirrorMsg {
    /// An applied value, for the group's mirror.
    Apply {
        group: GroupId,
        instance: Instance,
        commands: Vec<Bytes>,
        /// The group's rolling checksum through `instance`.
        checksum: u32,
    },
    /// The live state machine installed the checkpoint at `path` from a peer: the mirror
    /// restores it too and continues after it.
    Reset { group: GroupId, path: PathBuf },
}

/// The executor's side of the mirrors: where each mirror-mode group is, and the queue.
pub(crate) struct MirrorFeed {
    tx: Option<Sender<MirrorMsg>>,
    /// Per mirror-mode group: the next instance to hand over, `None` once dropped.
    next: HashMap<u32, Option<u64>>,
    progress: HashMap<u32, Arc<GroupProgress>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the mirror thread of one core (none when no group is in mirror mode) and returns
/// the executor's side. A thread that cannot start drops every group's mirror (logged).
pub(crate) fn spawn(mirrors: Mirrors) -> MirrorFeed {
    let mut feed = MirrorFeed {
        tx: None,
        next: HashMap::new(),
        progress: HashMap::new(),
        thread: None,
    };
    if mirrors.groups.is_empty() {
        return feed;
    }
    for m in &mirrors.groups {
        feed.next.insert(m.group.0, Some(m.next));
        feed.progress.insert(m.group.0, m.progress.clone());
    }
    let (tx, rx) = crossbeam_channel::bounded(mirrors.queue_max);
    let name = match std::thread::current().name() {
        Some(name) => format!("{name}-mirror"),
        None => "paxring-mirror".to_string(),
    };
    match std::thread::Builder::new()
        .name(name)
        .spawn(move || run_mirrors(mirrors, rx))
    {
        Ok(thread) => {
            feed.tx = Some(tx);
            feed.thread = Some(thread);
        }
        Err(e) => {
            tracing::error!("cannot start the mirror thread, no mirror checkpoints: {e}");
            let groups: Vec<u32> = feed.next.keys().copied().collect();
            for group in groups {
                feed.drop_group(group);
            }
        }
    }
    feed
}

impl MirrorFeed {
    /// True when `group` is in mirror mode (mirrored now or dropped): its purge floor is the
    /// mirror's, not the live state machine's.
    pub(crate) fn is_mirror_mode(&self, group: GroupId) -> bool {
        self.next.contains_key(&group.0)
    }

    /// Whether `instance` of `group` must go to its mirror (replayed values below the
    /// mirror's point do not).
    pub(crate) fn wants(&self, group: GroupId, instance: Instance) -> bool {
        matches!(self.next.get(&group.0), Some(Some(next)) if instance.0 >= *next)
    }

    /// Hands an applied value to the mirror thread without waiting; drops the group's mirror
    /// when the queue is full. Call only when [`MirrorFeed::wants`] it.
    pub(crate) fn feed(
        &mut self,
        group: GroupId,
        instance: Instance,
        commands: Vec<Bytes>,
        checksum: u32,
    ) {
        let Some(Some(next)) = self.next.get_mut(&group.0) else {
            return;
        };
        assert_eq!(
            instance.0, *next,
            "group {} mirror expected instance {} and got {}: values reach the mirror in order",
            group.0, *next, instance.0
        );
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(MirrorMsg::Apply {
            group,
            instance,
            commands,
            checksum,
        }) {
            Ok(()) => *next += 1,
            Err(TrySendError::Full(_)) => {
                tracing::error!(
                    group = group.0,
                    instance = instance.0,
                    "the mirror fell behind (its queue is full): the group is no longer \
                     mirrored until the next start, and its checkpoint stays where it is"
                );
                self.drop_group(group.0);
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!(
                    group = group.0,
                    "the mirror thread is gone: the group is no longer mirrored until the next \
                     start"
                );
                self.drop_group(group.0);
            }
        }
    }

    /// The live state machine of `group` installed the checkpoint at `path` (of `instance`)
    /// received from a peer: the mirror, behind it with values it will never get, restores the
    /// same checkpoint and is fed from the instance after it (a mirror dropped earlier comes
    /// back too). If the mirror's queue is full the group stays unmirrored until the next
    /// start, which restores the mirror from the newest checkpoint file.
    pub(crate) fn installed(&mut self, group: GroupId, instance: Instance, path: &Path) {
        if !self.is_mirror_mode(group) {
            return;
        }
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(MirrorMsg::Reset {
            group,
            path: path.to_path_buf(),
        }) {
            Ok(()) => {
                self.next.insert(group.0, Some(instance.0 + 1));
                if let Some(progress) = self.progress.get(&group.0) {
                    progress.mirror.dropped.store(0, Ordering::Release);
                    progress.mirror.resets.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                tracing::error!(
                    group = group.0,
                    "a checkpoint from a peer was installed and the mirror cannot follow (its queue is full or its thread is gone): this group's mirror stops until the next start"
                );
                self.drop_group(group.0);
            }
        }
    }

    fn drop_group(&mut self, group: u32) {
        self.next.insert(group, None);
        if let Some(progress) = self.progress.get(&group) {
            progress.mirror.dropped.store(1, Ordering::Release);
        }
    }

    /// Closes the queue and waits for the mirror thread to apply what it holds (writing the
    /// checkpoints that fall due) and end.
    pub(crate) fn finish(mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the mirror thread panicked");
            }
        }
    }
}

struct MirrorState {
    machine: Box<dyn StateMachine>,
    /// A reset failed: the mirror's state is unknown, it applies nothing more this run.
    broken: bool,
    next: u64,
    every_instances: u64,
    progress: Arc<GroupProgress>,
}

/// The mirror thread: applies each value to its group's mirror, and writes a checkpoint when
/// one falls due (the mirror is paused meanwhile: only this thread touches it).
fn run_mirrors(mirrors: Mirrors, rx: Receiver<MirrorMsg>) {
    let dir = mirrors.dir;
    let mut states: HashMap<u32, MirrorState> = mirrors
        .groups
        .into_iter()
        .map(|m| {
            (
                m.group.0,
                MirrorState {
                    machine: m.machine,
                    broken: false,
                    next: m.next,
                    every_instances: m.every_instances,
                    progress: m.progress,
                },
            )
        })
        .collect();
    let mut results: Vec<Bytes> = Vec::new();
    while let Ok(message) = rx.recv() {
        let (group, instance, commands, checksum) = match message {
            MirrorMsg::Apply {
                group,
                instance,
                commands,
                checksum,
            } => (group, instance, commands, checksum),
            MirrorMsg::Reset { group, path } => {
                let state = states
                    .get_mut(&group.0)
                    .expect("the executor resets only mirror-mode groups");
                match restore_from(&path, group, state.machine.as_mut()) {
                    Ok(instance) => {
                        state.next = instance.0 + 1;
                        state.broken = false;
                        state
                            .progress
                            .mirror
                            .applied_next
                            .store(state.next, Ordering::Release);
                        tracing::info!(
                            group = group.0,
                            instance = instance.0,
                            "the mirror restored the checkpoint the live state machine installed and goes on from there"
                        );
                    }
                    Err(e) => {
                        // Its state is unknown now: it applies nothing more until the next
                        // start (which restores it from the newest good checkpoint).
                        state.broken = true;
                        state.progress.mirror.dropped.store(1, Ordering::Release);
                        tracing::error!(
                            group = group.0,
                            path = %path.display(),
                            "the mirror cannot restore the installed checkpoint, so this group's mirror stops until the next start: {e}"
                        );
                    }
                }
                continue;
            }
        };
        let state = states
            .get_mut(&group.0)
            .expect("the executor feeds only mirror-mode groups");
        if state.broken {
            continue;
        }
        assert_eq!(
            instance.0, state.next,
            "group {} mirror thread expected instance {} and got {}",
            group.0, state.next, instance.0
        );
        results.clear();
        state
            .machine
            .apply(group, instance, &commands, &mut results);
        state.next += 1;
        state
            .progress
            .mirror
            .applied_next
            .store(state.next, Ordering::Release);
        if state.next % state.every_instances == 0 {
            write_checkpoint(&dir, group, instance, checksum, state);
        }
    }
}

/// Writes the mirror's state at `instance` as a checkpoint file, prunes the older ones and
/// raises the purge floor. A failure is logged and counted; the older checkpoint stays.
fn write_checkpoint(
    dir: &Path,
    group: GroupId,
    instance: Instance,
    log_checksum: u32,
    state: &mut MirrorState,
) {
    let stats = &state.progress.mirror;
    let written = CheckpointWriter::create(dir, group, instance, log_checksum)
        .map_err(|e| format!("cannot create it: {e}"))
        .and_then(|mut writer| {
            state
                .machine
                .snapshot(&mut writer)
                .map_err(|e| format!("the state machine's snapshot failed: {e}"))?;
            // Dropping the writer without `finish` removes its temporary file.
            writer
                .finish()
                .map_err(|e| format!("cannot make it durable: {e}"))
        });
    match written {
        Ok((path, meta)) => {
            stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            state
                .progress
                .checkpoint_next
                .fetch_max(instance.0 + 1, Ordering::AcqRel);
            tracing::debug!(
                group = group.0,
                instance = instance.0,
                bytes = meta.payload_bytes,
                "mirror checkpoint {}",
                path.display()
            );
            if let Err(e) = checkpoint::prune(dir, group, CHECKPOINTS_KEPT) {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(group = group.0, "cannot prune old checkpoints: {e}");
            }
        }
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                group = group.0,
                instance = instance.0,
                "mirror checkpoint not written, the previous one stays: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! Proves the mirror mode through the executor: a checkpoint file appears after every
    //! `every_instances`-th instance and restores to the live state machine's state at that
    //! instance; the live state machine applies everything in order while the mirror is paused
    //! in a snapshot (it never waits for it); the purge floor is the newest checkpoint; a failed
    //! checkpoint keeps the older one; a mirror that falls behind a full queue is dropped
    //! without blocking the live one; and at start a corrupt or unrestorable newest checkpoint
    //! is skipped for an older one, which also brings the live state machine up to it.
    use super::*;
    use crate::runtime::executor::{self, ExecMsg};
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    const G: GroupId = GroupId(0);

    /// What the test's state machines share with the test.
    #[derive(Default)]
    struct Probe {
        /// Instances the live state machine applied, in order.
        live_log: Mutex<Vec<u64>>,
        /// A mirror snapshot waits until the live one has applied this many instances.
        hold_until_live_applied: AtomicU64,
        /// A mirror snapshot at this instance + 1 fails (0: none).
        fail_snapshot_next: AtomicU64,
        /// Set while a mirror snapshot is being written.
        snapshotting: AtomicBool,
        /// Live applies seen while a mirror snapshot was being written.
        live_applies_during_snapshots: AtomicU64,
    }

    /// A state machine whose state is every command applied, in order.
    struct Recorder {
        live: bool,
        values: Vec<Bytes>,
        next: u64,
        checkpoint: Option<Instance>,
        probe: Arc<Probe>,
    }

    impl Recorder {
        fn new(live: bool, probe: &Arc<Probe>) -> Recorder {
            Recorder {
                live,
                values: Vec::new(),
                next: 0,
                checkpoint: None,
                probe: probe.clone(),
            }
        }
    }

    fn bad(what: &str) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
    }

    impl StateMachine for Recorder {
        fn apply(
            &mut self,
            _: GroupId,
            instance: Instance,
            commands: &[Bytes],
            results: &mut Vec<Bytes>,
        ) {
            assert_eq!(instance.0, self.next, "in order");
            self.values.extend_from_slice(commands);
            results.extend(commands.iter().map(|_| Bytes::new()));
            self.next += 1;
            if self.live {
                // Looked at before the log grows: a held snapshot ends only after that.
                if self.probe.snapshotting.load(Ordering::Acquire) {
                    self.probe
                        .live_applies_during_snapshots
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.probe.live_log.lock().unwrap().push(instance.0);
            }
        }

        fn checkpoint_instance(&self) -> Option<Instance> {
            self.checkpoint
        }

        fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
            assert!(!self.live, "only the mirror is asked for snapshots");
            self.probe.snapshotting.store(true, Ordering::Release);
            let hold = self.probe.hold_until_live_applied.load(Ordering::Acquire);
            let deadline = Instant::now() + Duration::from_secs(20);
            while (self.probe.live_log.lock().unwrap().len() as u64) < hold {
                assert!(Instant::now() < deadline, "the live state machine stopped");
                std::thread::sleep(Duration::from_millis(1));
            }
            self.probe.snapshotting.store(false, Ordering::Release);
            if self.probe.fail_snapshot_next.load(Ordering::Acquire) == self.next {
                out.write_all(b"half a snapshot")?;
                return Err(std::io::Error::other("the disk is full"));
            }
            out.write_all(b"REC1")?;
            out.write_all(&self.next.to_le_bytes())?;
            out.write_all(&(self.values.len() as u64).to_le_bytes())?;
            for value in &self.values {
                out.write_all(&(value.len() as u32).to_le_bytes())?;
                out.write_all(value)?;
            }
            Ok(())
        }

        fn restore(&mut self, instance: Instance, input: &mut dyn Read) -> std::io::Result<()> {
            let mut bytes = Vec::new();
            input.read_to_end(&mut bytes)?;
            let mut rest = &bytes[..];
            let mut take = |n: usize| -> std::io::Result<&[u8]> {
                if rest.len() < n {
                    return Err(bad("short"));
                }
                let (head, tail) = rest.split_at(n);
                rest = tail;
                Ok(head)
            };
            if take(4)? != b"REC1" {
                return Err(bad("magic"));
            }
            let next = u64::from_le_bytes(take(8)?.try_into().unwrap());
            if next != instance.0 + 1 {
                return Err(bad("instance"));
            }
            let count = u64::from_le_bytes(take(8)?.try_into().unwrap());
            let mut values = Vec::new();
            for _ in 0..count {
                let len = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
                values.push(Bytes::copy_from_slice(take(len)?));
            }
            if !rest.is_empty() {
                return Err(bad("trailing bytes"));
            }
            self.values = values;
            self.next = next;
            self.checkpoint = Some(instance);
            Ok(())
        }
    }

    fn command(instance: u64) -> Bytes {
        Bytes::from(format!("value-{instance}"))
    }

    /// The state after instances `0..=instance`.
    fn expected(instance: u64) -> Vec<Bytes> {
        (0..=instance).map(command).collect()
    }

    fn mirror_factory(probe: &Arc<Probe>) -> StateMachineFactory {
        let probe = probe.clone();
        Box::new(move |_| Ok(Box::new(Recorder::new(false, &probe)) as Box<dyn StateMachine>))
    }

    fn mode(every_instances: u64, queue_max: usize) -> CheckpointModeConfig {
        CheckpointModeConfig {
            mirror_queue_max: queue_max,
            ..CheckpointModeConfig::mirror_all(every_instances)
        }
    }

    type Machines = Vec<(GroupId, Box<dyn StateMachine>, Arc<GroupProgress>)>;

    /// A started executor: its queue, its group's progress, its thread.
    struct Running {
        tx: crossbeam_channel::Sender<ExecMsg>,
        progress: Arc<GroupProgress>,
        thread: std::thread::JoinHandle<()>,
    }

    /// The rolling checksum the test's core reports through `instance` (any distinct values).
    fn log_checksum_at(instance: u64) -> u32 {
        0x5EED_0000 ^ instance as u32
    }

    fn start(machines: Machines, mirrors: Mirrors) -> Running {
        let progress = machines[0].2.clone();
        let (tx, rx) = crossbeam_channel::unbounded();
        let applied = Arc::new(AtomicU64::new(0));
        let thread =
            std::thread::spawn(move || executor::run_with_mirrors(machines, rx, applied, mirrors));
        Running {
            tx,
            progress,
            thread,
        }
    }

    impl Running {
        fn feed(&self, instances: std::ops::Range<u64>) {
            for instance in instances {
                self.tx
                    .send(ExecMsg::Chosen {
                        group: G,
                        instance: Instance(instance),
                        commands: vec![command(instance)],
                        checksum: log_checksum_at(instance),
                    })
                    .unwrap();
            }
        }

        /// Closes the queue and waits for the executor and its mirror to end.
        fn stop(self) -> Arc<GroupProgress> {
            drop(self.tx);
            self.thread.join().unwrap();
            self.progress
        }
    }

    fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn files(dir: &Path) -> Vec<u64> {
        let mut found: Vec<u64> = list_checkpoints(&checkpoint_dir(dir), G)
            .into_iter()
            .map(|(i, _)| i.0)
            .collect();
        found.sort_unstable();
        found
    }

    /// The state a checkpoint file restores.
    fn restored(dir: &Path, instance: u64) -> Vec<Bytes> {
        let probe = Arc::new(Probe::default());
        let mut fresh = Recorder::new(false, &probe);
        let path = checkpoint::checkpoint_path(&checkpoint_dir(dir), G, Instance(instance));
        assert_eq!(restore_from(&path, G, &mut fresh), Ok(Instance(instance)));
        assert_eq!(fresh.checkpoint_instance(), Some(Instance(instance)));
        fresh.values
    }

    fn live_machine(probe: &Arc<Probe>) -> Machines {
        vec![(
            G,
            Box::new(Recorder::new(true, probe)) as Box<dyn StateMachine>,
            Arc::new(GroupProgress::default()),
        )]
    }

    /// Runs instances `0..n` through an executor in mirror mode (every 10, queue 64), the
    /// first snapshot held until the live one applied all `n`.
    fn first_run(dir: &Path, n: u64) -> (Arc<Probe>, Arc<GroupProgress>) {
        let probe = Arc::new(Probe::default());
        probe.hold_until_live_applied.store(n, Ordering::Release);
        let mut machines = live_machine(&probe);
        let mirrors = prepare(
            &mut machines,
            &mode(10, 64),
            dir,
            &mut mirror_factory(&probe),
        )
        .unwrap();
        assert_eq!(mirrors.applied_from(&machines), vec![(G, None)]);
        let running = start(machines, mirrors);
        running.feed(0..10);
        wait_for("the mirror's first snapshot", || {
            probe.snapshotting.load(Ordering::Acquire)
        });
        // The live state machine gets through the rest while the mirror is held in its first
        // snapshot (at instance 9): it never waits for the mirror.
        running.feed(10..n);
        let progress = running.progress.clone();
        wait_for("the live state machine", || {
            progress.applied_next.load(Ordering::Acquire) == n
        });
        let progress = running.stop();
        (probe, progress)
    }

    #[test]
    fn checkpoints_appear_every_k_instances_and_restore_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let (probe, progress) = first_run(dir.path(), 35);
        assert_eq!(*probe.live_log.lock().unwrap(), (0..35).collect::<Vec<_>>());
        assert_eq!(
            probe.live_applies_during_snapshots.load(Ordering::Relaxed),
            25,
            "the live state machine applied 10..35 while the mirror was paused in a snapshot"
        );
        // Checkpoints after instances 9, 19 and 29; the newest two are kept.
        assert_eq!(files(dir.path()), vec![19, 29]);
        assert_eq!(progress.mirror.checkpoints.load(Ordering::Relaxed), 3);
        assert_eq!(progress.mirror.failures.load(Ordering::Relaxed), 0);
        assert_eq!(progress.mirror.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(progress.mirror.applied_next.load(Ordering::Relaxed), 35);
        assert_eq!(progress.applied_next.load(Ordering::Relaxed), 35);
        // The purge floor is the newest checkpoint, not the live state machine's (none).
        assert_eq!(progress.checkpoint_next.load(Ordering::Relaxed), 30);
        for instance in [19, 29] {
            assert_eq!(restored(dir.path(), instance), expected(instance));
        }
        let meta = checkpoint::verify(&checkpoint::checkpoint_path(
            &checkpoint_dir(dir.path()),
            G,
            Instance(29),
        ))
        .unwrap();
        // The checkpoint records the core's rolling checksum through its instance.
        assert_eq!(
            (meta.group, meta.instance, meta.log_checksum),
            (G, Instance(29), log_checksum_at(29))
        );
    }

    #[test]
    fn a_failed_checkpoint_keeps_the_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let probe = Arc::new(Probe::default());
        probe.fail_snapshot_next.store(20, Ordering::Release);
        let mut machines = live_machine(&probe);
        let mirrors = prepare(
            &mut machines,
            &mode(10, 64),
            dir.path(),
            &mut mirror_factory(&probe),
        )
        .unwrap();
        let running = start(machines, mirrors);
        running.feed(0..25);
        let progress = running.stop();
        assert_eq!(
            files(dir.path()),
            vec![9],
            "no file of the failed one, not even a temp"
        );
        assert_eq!(
            std::fs::read_dir(checkpoint::group_dir(&checkpoint_dir(dir.path()), G))
                .unwrap()
                .count(),
            1
        );
        assert_eq!(progress.checkpoint_next.load(Ordering::Relaxed), 10);
        assert_eq!(progress.mirror.failures.load(Ordering::Relaxed), 1);
        assert_eq!(progress.applied_next.load(Ordering::Relaxed), 25);
        assert_eq!(*probe.live_log.lock().unwrap(), (0..25).collect::<Vec<_>>());
    }

    #[test]
    fn a_mirror_behind_a_full_queue_is_dropped_and_the_live_one_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let probe = Arc::new(Probe::default());
        probe.hold_until_live_applied.store(40, Ordering::Release);
        let mut machines = live_machine(&probe);
        let mirrors = prepare(
            &mut machines,
            &mode(10, 11),
            dir.path(),
            &mut mirror_factory(&probe),
        )
        .unwrap();
        let running = start(machines, mirrors);
        running.feed(0..10);
        wait_for("the mirror's first snapshot", || {
            probe.snapshotting.load(Ordering::Acquire)
        });
        // The mirror is held in its snapshot at 9: 10 to 20 fill its queue, 21 finds it full.
        running.feed(10..40);
        let progress = running.stop();
        assert_eq!(*probe.live_log.lock().unwrap(), (0..40).collect::<Vec<_>>());
        assert_eq!(
            probe.live_applies_during_snapshots.load(Ordering::Relaxed),
            30,
            "the live state machine never waited for the full queue"
        );
        assert_eq!(progress.mirror.dropped.load(Ordering::Relaxed), 1);
        // What was queued is applied (with the checkpoint at 19 it brings), nothing after.
        assert_eq!(progress.mirror.applied_next.load(Ordering::Relaxed), 21);
        assert_eq!(files(dir.path()), vec![9, 19]);
        assert_eq!(progress.checkpoint_next.load(Ordering::Relaxed), 20);
        assert_eq!(restored(dir.path(), 19), expected(19));
    }

    #[test]
    fn at_start_a_bad_newest_checkpoint_is_skipped_and_the_live_one_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        first_run(dir.path(), 35);
        let ckpt_dir = checkpoint_dir(dir.path());
        // Damage 29 in its middle (fails verification) and add a 39 that verifies but does not
        // restore (its payload is not the state machine's).
        let path_29 = checkpoint::checkpoint_path(&ckpt_dir, G, Instance(29));
        let mut bytes = std::fs::read(&path_29).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&path_29, &bytes).unwrap();
        let mut garbage = CheckpointWriter::create(&ckpt_dir, G, Instance(39), 0).unwrap();
        garbage.write_all(b"not a snapshot").unwrap();
        garbage.finish().unwrap();

        let probe = Arc::new(Probe::default());
        let mut machines = live_machine(&probe);
        let mirrors = prepare(
            &mut machines,
            &mode(10, 64),
            dir.path(),
            &mut mirror_factory(&probe),
        )
        .unwrap();
        // Both restored from 19; the core replays from 20.
        assert_eq!(
            mirrors.applied_from(&machines),
            vec![(G, Some(Instance(19)))]
        );
        assert_eq!(machines[0].1.checkpoint_instance(), Some(Instance(19)));
        let progress = machines[0].2.clone();
        assert_eq!(progress.checkpoint_next.load(Ordering::Relaxed), 20);
        let running = start(machines, mirrors);
        // The core replays from the WAL (an instance below the replay point would be skipped).
        running.feed(15..45);
        let progress_after = running.stop();
        assert!(Arc::ptr_eq(&progress, &progress_after));
        assert_eq!(
            *probe.live_log.lock().unwrap(),
            (20..45).collect::<Vec<_>>()
        );
        // 29 and 39 were written again, good this time; 19 was pruned.
        assert_eq!(files(dir.path()), vec![29, 39]);
        assert_eq!(restored(dir.path(), 29), expected(29));
        assert_eq!(restored(dir.path(), 39), expected(39));
        assert_eq!(progress.checkpoint_next.load(Ordering::Relaxed), 40);
    }

    #[test]
    fn after_an_install_from_a_peer_the_mirror_restores_it_and_goes_on() {
        // A peer's checkpoint at 49, made by a run of its own.
        let peer = tempfile::tempdir().unwrap();
        first_run(peer.path(), 55);
        let peer_file = checkpoint::checkpoint_path(&checkpoint_dir(peer.path()), G, Instance(49));
        let dir = tempfile::tempdir().unwrap();
        let probe = Arc::new(Probe::default());
        let mut machines = live_machine(&probe);
        let mirrors = prepare(
            &mut machines,
            &mode(10, 64),
            dir.path(),
            &mut mirror_factory(&probe),
        )
        .unwrap();
        let running = start(machines, mirrors);
        running.feed(0..25);
        // The received file lands among this node's checkpoints, as the runtime's transfer
        // puts it; the live state machine installs it, and its mirror follows.
        let path = checkpoint::checkpoint_path(&checkpoint_dir(dir.path()), G, Instance(49));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(&peer_file, &path).unwrap();
        let (done, answer) = crossbeam_channel::bounded(1);
        running
            .tx
            .send(ExecMsg::Install {
                group: G,
                info: crate::core::CheckpointInfo {
                    instance: Instance(49),
                    log_checksum: log_checksum_at(49),
                    payload_bytes: 0,
                    payload_crc: 0,
                },
                path,
                done,
            })
            .unwrap();
        let installed = answer.recv().unwrap();
        assert!(installed.result.is_ok(), "{:?}", installed.result);
        running.feed(50..75);
        let progress = running.stop();
        assert_eq!(progress.mirror.resets.load(Ordering::Relaxed), 1);
        assert_eq!(progress.mirror.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(progress.mirror.applied_next.load(Ordering::Relaxed), 75);
        // The mirror wrote its checkpoints after the installed one, and they restore the state
        // the live one has (the peer's 0..=49, then 50..=69).
        assert_eq!(files(dir.path()), vec![59, 69]);
        assert_eq!(restored(dir.path(), 69), expected(69));
        assert_eq!(progress.checkpoint_next.load(Ordering::Relaxed), 70);
    }

    #[test]
    fn application_mode_groups_get_no_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let probe = Arc::new(Probe::default());
        let mut machines = live_machine(&probe);
        let mut calls = 0;
        let mut factory: StateMachineFactory = Box::new(move |_| {
            calls += 1;
            assert_eq!(calls, 0, "the factory is not called in application mode");
            Err("unreachable".into())
        });
        let mirrors = prepare(
            &mut machines,
            &CheckpointModeConfig::default(),
            dir.path(),
            &mut factory,
        )
        .unwrap();
        assert!(mirrors.groups.is_empty());
        let running = start(machines, mirrors);
        running.feed(0..20);
        let progress = running.stop();
        assert_eq!(progress.applied_next.load(Ordering::Relaxed), 20);
        assert_eq!(progress.checkpoint_next.load(Ordering::Relaxed), 0);
        assert!(!checkpoint_dir(dir.path()).exists());
    }
}
