//! The executor of one core: applies chosen values to the application's state machines in
//! instance order, answers the proposals that wait on them, and hands each applied value of a
//! mirror-mode group on to the core's mirror thread (`mirror.rs`).
//!
//! Owns: the live state machines of its core's groups, the waiting replies, the core's mirror
//! thread (started and joined here). Never: blocks its core (the core hands it work through a
//! queue and never waits for it), waits for the mirror thread while values flow.

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use paxring_wal::{GroupId, Instance};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::api::{Committed, Error, Reply};
use super::mirror::{self, MirrorStats, Mirrors};
use super::state_machine::StateMachine;
use crate::core::CheckpointInfo;

/// What a core sends its executor.
pub(crate) enum ExecMsg {
    /// A proposal committed at (group, instance, index): answer it once that instance is applied.
    /// Always sent before the `Chosen` of the same instance.
    Waiter {
        group: GroupId,
        instance: Instance,
        index: u32,
        reply: Reply,
    },
    /// The chosen value of (group, instance), in instance order per group, with the group's
    /// rolling checksum through it (a mirror checkpoint at this instance records it).
    Chosen {
        group: GroupId,
        instance: Instance,
        commands: Vec<Bytes>,
        checksum: u32,
    },
    /// Install a checkpoint received from a peer into the group's state machine (it replaces
    /// the whole state; docs/PROTOCOL.md#checkpoint-transfer); the outcome goes to `done`.
    /// Sent after every value applied before it.
    Install {
        group: GroupId,
        info: CheckpointInfo,
        path: PathBuf,
        done: Sender<InstallDone>,
    },
    /// A confirmed linearizable read: answer it from the group's state machine now (every value
    /// it must see was sent before it).
    Read {
        group: GroupId,
        query: Bytes,
        reply: Reply,
    },
    /// A peer needs a checkpoint of the group and there is none past its point: write one of
    /// the live state machine at its applied point into `dir` (application mode; a mirror-mode
    /// group's mirror writes its own).
    Export { group: GroupId, dir: PathBuf },
}

/// The executor's answer to [`ExecMsg::Install`].
#[derive(Debug)]
pub(crate) struct InstallDone {
    pub group: GroupId,
    pub info: CheckpointInfo,
    pub result: Result<(), String>,
}

/// Checkpoint files kept per group when the executor exports one.
const EXPORTS_KEPT: usize = 2;

/// Per-group counters an executor shares with its core and the stats snapshot.
#[derive(Debug, Default)]
pub(crate) struct GroupProgress {
    /// Highest applied instance + 1 (0 = nothing applied).
    pub applied_next: AtomicU64,
    /// The checkpoint instance + 1 (0 = none): the WAL may purge below it. In application mode
    /// the state machine's own `checkpoint_instance()`; in mirror mode the newest checkpoint
    /// file the mirror wrote (docs/ARCHITECTURE.md, "Checkpoints").
    pub checkpoint_next: AtomicU64,
    /// Mirror mode: the mirror's counters (all 0 in application mode).
    pub mirror: MirrorStats,
}

struct GroupExec {
    machine: Box<dyn StateMachine>,
    progress: Arc<GroupProgress>,
    /// Next instance to apply.
    next: u64,
    waiters: BTreeMap<(u64, u32), Reply>,
    /// The rolling checksum through the last applied instance (`next - 1`), once one was
    /// applied in this run (an exported checkpoint records it).
    last_checksum: Option<u32>,
}

/// How long the executor waits for a message before it looks at its state machines'
/// checkpoints anyway.
const IDLE_CHECKPOINT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs until the queue closes (its core stopped); then fails every waiter as unknown, and
/// waits for the mirror thread (if any) to apply what it was handed and end.
///
/// `mirrors` are the core's mirror-mode groups, from `mirror::prepare` (run before the core
/// computes its replay points with `Mirrors::applied_from`).
pub(crate) fn run_with_mirrors(
    machines: Vec<(GroupId, Box<dyn StateMachine>, Arc<GroupProgress>)>,
    queue: Receiver<ExecMsg>,
    applied_commands: Arc<AtomicU64>,
    mirrors: Mirrors,
) {
    let mirror_floors: HashMap<u32, u64> = mirrors
        .checkpoint_nexts()
        .into_iter()
        .map(|(group, floor)| (group.0, floor))
        .collect();
    let mut mirror = mirror::spawn(mirrors);
    let mut groups: HashMap<u32, GroupExec> = machines
        .into_iter()
        .map(|(group, machine, progress)| {
            let next = machine.checkpoint_instance().map_or(0, |i| i.0 + 1);
            progress.applied_next.store(next, Ordering::Release);
            let floor = mirror_floors.get(&group.0).copied().unwrap_or(next);
            progress.checkpoint_next.store(floor, Ordering::Release);
            (
                group.0,
                GroupExec {
                    machine,
                    progress,
                    next,
                    waiters: BTreeMap::new(),
                    last_checksum: None,
                },
            )
        })
        .collect();
    let mut results: Vec<Bytes> = Vec::new();
    loop {
        let message = match queue.recv_timeout(IDLE_CHECKPOINT_POLL) {
            Ok(message) => message,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                // Nothing to apply: a state machine may still have finished a checkpoint on
                // its own (in the background, or on a timer). Purge follows it without waiting
                // for the next value, which a core refusing writes for its WAL budget would
                // never send.
                for (group, exec) in &groups {
                    if mirror.is_mirror_mode(GroupId(*group)) {
                        continue;
                    }
                    let checkpoint_next = exec.machine.checkpoint_instance().map_or(0, |i| i.0 + 1);
                    exec.progress
                        .checkpoint_next
                        .fetch_max(checkpoint_next, Ordering::AcqRel);
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        match message {
            ExecMsg::Waiter {
                group,
                instance,
                index,
                reply,
            } => {
                let Some(exec) = groups.get_mut(&group.0) else {
                    let _ = reply.send(Err(Error::NoSuchGroup(group.0, 0)));
                    continue;
                };
                exec.waiters.insert((instance.0, index), reply);
            }
            ExecMsg::Read {
                group,
                query,
                reply,
            } => {
                let Some(exec) = groups.get_mut(&group.0) else {
                    let _ = reply.send(Err(Error::NoSuchGroup(group.0, 0)));
                    continue;
                };
                let answer = exec
                    .machine
                    .query(group, &query)
                    .map(|result| Committed {
                        group,
                        instance: Instance(exec.next),
                        index: 0,
                        result,
                    })
                    .map_err(|e| Error::Query(e.to_string()));
                let _ = reply.send(answer);
            }
            ExecMsg::Chosen {
                group,
                instance,
                commands,
                checksum,
            } => {
                let exec = groups
                    .get_mut(&group.0)
                    .expect("a core only sends values of its own groups");
                if instance.0 < exec.next {
                    // Replayed below what the state machine already holds (restart): skip,
                    // unless the mirror is further behind (it restarted from an older
                    // checkpoint).
                    if mirror.wants(group, instance) {
                        mirror.feed(group, instance, commands, checksum);
                    }
                    continue;
                }
                assert_eq!(
                    instance.0, exec.next,
                    "group {} executor expected instance {} and got {}: chosen values must arrive in order",
                    group.0, exec.next, instance.0
                );
                results.clear();
                exec.machine.apply(group, instance, &commands, &mut results);
                assert_eq!(
                    results.len(),
                    commands.len(),
                    "a state machine must return one result per command"
                );
                exec.next += 1;
                exec.last_checksum = Some(checksum);
                exec.progress
                    .applied_next
                    .store(exec.next, Ordering::Release);
                if !mirror.is_mirror_mode(group) {
                    let checkpoint_next = exec.machine.checkpoint_instance().map_or(0, |i| i.0 + 1);
                    exec.progress
                        .checkpoint_next
                        .store(checkpoint_next, Ordering::Release);
                }
                applied_commands.fetch_add(commands.len() as u64, Ordering::Relaxed);
                if mirror.wants(group, instance) {
                    // Never waits: a full queue drops the group's mirror instead.
                    mirror.feed(group, instance, commands, checksum);
                }
                // Answer every waiter of this instance.
                let done: Vec<(u64, u32)> = exec
                    .waiters
                    .range((instance.0, 0)..=(instance.0, u32::MAX))
                    .map(|(k, _)| *k)
                    .collect();
                for key in done {
                    let reply = exec.waiters.remove(&key).expect("key was just listed");
                    let outcome = match results.get(key.1 as usize) {
                        Some(result) => Ok(Committed {
                            group,
                            instance,
                            index: key.1,
                            result: result.clone(),
                        }),
                        None => Err(Error::Unknown(format!(
                            "instance {} of group {} has no command at index {}",
                            instance.0, group.0, key.1
                        ))),
                    };
                    let _ = reply.send(outcome);
                }
            }
            ExecMsg::Install {
                group,
                info,
                path,
                done,
            } => {
                let exec = groups
                    .get_mut(&group.0)
                    .expect("a core only installs checkpoints of its own groups");
                let result = install(exec, group, &info, &path, mirror.is_mirror_mode(group));
                if result.is_ok() && mirror.is_mirror_mode(group) {
                    mirror.installed(group, info.instance, &path);
                }
                let _ = done.send(InstallDone {
                    group,
                    info,
                    result,
                });
            }
            ExecMsg::Export { group, dir } => {
                let Some(exec) = groups.get_mut(&group.0) else {
                    continue;
                };
                if mirror.is_mirror_mode(group) {
                    continue; // its mirror writes its checkpoints
                }
                if let Err(e) = export(exec, group, &dir) {
                    tracing::warn!(
                        group = group.0,
                        "cannot write a checkpoint for a peer that needs one: {e}"
                    );
                }
            }
        }
    }
    for exec in groups.values_mut() {
        for (_, reply) in std::mem::take(&mut exec.waiters) {
            let _ = reply.send(Err(Error::Unknown(
                "the node stopped before the command was applied".into(),
            )));
        }
    }
    mirror.finish();
}

/// Installs a received checkpoint file into the group's state machine (which makes it durable
/// before it returns, by the `restore` contract). A state machine already past it keeps its
/// state (never moved back).
fn install(
    exec: &mut GroupExec,
    group: GroupId,
    info: &CheckpointInfo,
    path: &Path,
    mirror_mode: bool,
) -> Result<(), String> {
    let next = info.instance.0 + 1;
    if next > exec.next {
        let restored = super::mirror::restore_from(path, group, exec.machine.as_mut())?;
        if restored != info.instance {
            return Err(format!(
                "the file holds instance {}, not {}",
                restored.0, info.instance.0
            ));
        }
        exec.next = next;
        exec.last_checksum = Some(info.log_checksum);
    }
    // Proposals waiting on instances the checkpoint covers were applied elsewhere: their
    // results are not known here.
    let covered: Vec<(u64, u32)> = exec
        .waiters
        .range(..(exec.next, 0))
        .map(|(k, _)| *k)
        .collect();
    for key in covered {
        if let Some(reply) = exec.waiters.remove(&key) {
            let _ = reply.send(Err(Error::Unknown(
                "the instance was applied through a checkpoint installed from a peer; its result is not known here".into(),
            )));
        }
    }
    exec.progress
        .applied_next
        .store(exec.next, Ordering::Release);
    let checkpoint_next = if mirror_mode {
        next // the installed file is a checkpoint of this group
    } else {
        exec.machine.checkpoint_instance().map_or(0, |i| i.0 + 1)
    };
    exec.progress
        .checkpoint_next
        .fetch_max(checkpoint_next, Ordering::AcqRel);
    Ok(())
}

/// Writes a checkpoint of the live state machine at its applied point (application mode),
/// for a peer that is behind every value this node serves; keeps the newest few.
fn export(exec: &mut GroupExec, group: GroupId, dir: &Path) -> Result<(), String> {
    let (Some(checksum), Some(instance)) = (exec.last_checksum, exec.next.checked_sub(1)) else {
        return Err("nothing applied since this start (the checksum through the state machine's point is not known yet)".into());
    };
    if paxring_wal::checkpoint::checkpoint_path(dir, group, Instance(instance)).exists() {
        return Ok(());
    }
    let mut writer =
        paxring_wal::checkpoint::CheckpointWriter::create(dir, group, Instance(instance), checksum)
            .map_err(|e| e.to_string())?;
    exec.machine
        .snapshot(&mut writer)
        .map_err(|e| e.to_string())?;
    let (path, _) = writer.finish().map_err(|e| e.to_string())?;
    tracing::info!(
        group = group.0,
        instance,
        "wrote a checkpoint for a peer: {}",
        path.display()
    );
    if let Err(e) = paxring_wal::checkpoint::prune(dir, group, EXPORTS_KEPT) {
        tracing::warn!(group = group.0, "cannot prune old checkpoints: {e}");
    }
    Ok(())
}
