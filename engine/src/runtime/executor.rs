//! The executor of one core: applies chosen values to the application's state machines in
//! instance order, answers the proposals that wait on them, and hands each applied value of a
//! mirror-mode group on to the core's mirror thread (`mirror.rs`).
//!
//! Owns: the live state machines of its core's groups, the waiting replies, the core's mirror
//! thread (started and joined here). Never: blocks its core (the core hands it work through a
//! queue and never waits for it), waits for the mirror thread while values flow.

use bytes::Bytes;
use crossbeam_channel::Receiver;
use paxring_wal::{GroupId, Instance};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::api::{Committed, Error, Reply};
use super::mirror::{self, MirrorStats, Mirrors};
use super::state_machine::StateMachine;

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
}

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
}

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
                },
            )
        })
        .collect();
    let mut results: Vec<Bytes> = Vec::new();
    while let Ok(message) = queue.recv() {
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
