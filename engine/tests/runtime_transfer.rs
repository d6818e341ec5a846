//! Checkpoint transfer without a restart, on three in-process nodes with real WALs and a real
//! network thread (docs/PROTOCOL.md#checkpoint-transfer): with `wal_purge` on, log bases follow
//! the state machines' checkpoints, so a follower stopped while the others go on is behind
//! every value its peers serve when it returns. It fetches a checkpoint (the serving node's
//! executor exports one from its live state machine: application mode), installs it into its
//! state machine in the same process, catches up from the log above it and ends with exactly
//! the leader's state.

mod common;

use bytes::Bytes;
use common::{
    free_addrs, node_config, propose_many, shutdown_all, start_nodes, wait_for, wait_for_leader,
};
use paxring_engine::runtime::{Node, StateMachine, StateMachineFactory};
use paxring_wal::{GroupId, Instance};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One node's state machine: every applied (instance, commands) in order. It outlives a
/// node's restart, standing in for the state machine's own durable store.
type Store = Arc<Mutex<Vec<(u64, Vec<Bytes>)>>>;

/// Application mode: checkpoints itself (everything applied is "durable" in its store),
/// snapshots to and restores from a stream.
struct Machine {
    store: Store,
}

impl StateMachine for Machine {
    fn apply(
        &mut self,
        _group: GroupId,
        instance: Instance,
        commands: &[Bytes],
        results: &mut Vec<Bytes>,
    ) {
        let mut store = self.store.lock().unwrap();
        if let Some((last, _)) = store.last() {
            assert_eq!(*last + 1, instance.0, "applied in order, without gaps");
        }
        store.push((instance.0, commands.to_vec()));
        results.extend(commands.iter().map(|_| Bytes::new()));
    }

    fn checkpoint_instance(&self) -> Option<Instance> {
        self.store.lock().unwrap().last().map(|(i, _)| Instance(*i))
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        let store = self.store.lock().unwrap();
        out.write_all(&(store.len() as u64).to_le_bytes())?;
        for (instance, commands) in store.iter() {
            out.write_all(&instance.to_le_bytes())?;
            out.write_all(&(commands.len() as u32).to_le_bytes())?;
            for command in commands {
                out.write_all(&(command.len() as u32).to_le_bytes())?;
                out.write_all(command)?;
            }
        }
        Ok(())
    }

    fn restore(&mut self, instance: Instance, input: &mut dyn Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad snapshot");
        let mut at = 0usize;
        let mut take = |n: usize| -> std::io::Result<&[u8]> {
            let slice = bytes.get(at..at + n).ok_or_else(bad)?;
            at += n;
            Ok(slice)
        };
        let count = u64::from_le_bytes(take(8)?.try_into().unwrap());
        let mut restored = Vec::new();
        for _ in 0..count {
            let i = u64::from_le_bytes(take(8)?.try_into().unwrap());
            let n = u32::from_le_bytes(take(4)?.try_into().unwrap());
            let mut commands = Vec::new();
            for _ in 0..n {
                let len = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
                commands.push(Bytes::copy_from_slice(take(len)?));
            }
            restored.push((i, commands));
        }
        if restored.last().map(|(i, _)| *i) != Some(instance.0) {
            return Err(bad());
        }
        *self.store.lock().unwrap() = restored;
        Ok(())
    }
}

fn start(id: u32, addrs: &[SocketAddr], dir: &Path, store: Store) -> Node {
    let config = node_config(id, addrs, dir, 13)
        .groups(1)
        .cores(1)
        .segment_bytes(2 << 20)
        .round_bytes_max(512 << 10)
        .wal_purge(true)
        .purge_hold_for_peers_ms(0)
        .purge_every_ms(100)
        .build()
        .unwrap();
    let factory: StateMachineFactory = Box::new(move |_group: GroupId| {
        Ok(Box::new(Machine {
            store: store.clone(),
        }) as Box<dyn StateMachine>)
    });
    Node::start(config, factory).expect("node starts")
}

/// The numbers `n` of the commands `cmd-{n}-...` (see `propose_many`) in `store`.
fn command_numbers(store: &Store) -> BTreeSet<usize> {
    store
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, commands)| commands.iter())
        .map(|command| {
            let text = std::str::from_utf8(command).expect("commands are text");
            let number = text
                .strip_prefix("cmd-")
                .and_then(|rest| rest.split('-').next())
                .expect("cmd-{n}-");
            number.parse().expect("a command number")
        })
        .collect()
}

/// Frames the live nodes' network threads dropped, oldest first, from their queues to `peer`
/// while its connection was down.
fn stale_frames_dropped_for(nodes: &[Option<Node>], peer: u32) -> u64 {
    nodes
        .iter()
        .flatten()
        .flat_map(|n| n.stats().net.peers)
        .filter(|p| p.node_id == peer)
        .map(|p| p.counters.outbound_dropped_stale_frames)
        .sum()
}

/// The follower is stopped (its node shut down: its connections close), and while it is down
/// the others choose 1,500 instances of 8 KiB (12 MiB, three times what a network thread keeps
/// queued for a down peer: `outbound_down_bytes_max`, 4 MiB), so the oldest frames queued for
/// it, those of the instances just above its point, are dropped, and their values are below
/// every peer's log base by the time it returns: only a checkpoint can bring it forward.
#[test]
fn a_follower_behind_every_log_base_installs_a_checkpoint_and_catches_up_in_process() {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let stores: Vec<Store> = (0..3).map(|_| Store::default()).collect();
    let mut nodes = start_nodes(3, |id| {
        start(id, &addrs, dir.path(), stores[id as usize - 1].clone())
    });
    wait_for_leader(&nodes, GroupId(0));
    propose_many(&nodes, 0, 64, 16, 1);
    let leader = nodes[0]
        .as_ref()
        .unwrap()
        .leader_hint(GroupId(0))
        .unwrap_or(1) as usize;
    let follower = (1..=3).find(|n| *n != leader).unwrap() - 1;
    let follower_id = follower as u32 + 1;
    nodes[follower].take().unwrap().shutdown().unwrap();
    let stopped_at = stores[follower].lock().unwrap().len() as u64;
    // More instances than memory keeps (one acceptance window, 1,024), one command each, and
    // more bytes than a down peer's queue keeps.
    let (down_count, down_bytes) = (1500, 8 << 10);
    propose_many(&nodes, 64, down_count, down_bytes, 1);
    // The preconditions. The peers dropped the oldest frames they had queued for the stopped
    // follower (the values just above its point will not reach it by those frames)...
    let stale = stale_frames_dropped_for(&nodes, follower_id);
    assert!(
        stale > 0,
        "the peers' queues to the stopped follower dropped their oldest frames ({} bytes of values queued for it)",
        down_count * down_bytes
    );
    // ...and every live peer's log now starts above the follower's point (their purge passes
    // moved the log bases up to their checkpoints), so no peer can serve it from its log.
    wait_for(
        "the live nodes' log bases pass the stopped follower",
        30,
        || {
            nodes.iter().flatten().all(|n| {
                n.stats().cores.iter().all(|c| {
                    c.purge
                        .lowest_base
                        .is_some_and(|(_, base)| base > stopped_at + 1)
                })
            })
        },
    );
    // It returns (same data directory, same store) while commands keep coming.
    nodes[follower] = Some(start(
        follower_id,
        &addrs,
        dir.path(),
        stores[follower].clone(),
    ));
    let total = 64 + down_count + 500;
    propose_many(&nodes, 64 + down_count, 500, 16, 16);
    // Every node ends with the same state (the load has stopped, so it stays put).
    wait_for("the returning follower converges", 60, || {
        let reference = stores[leader - 1].lock().unwrap().clone();
        stores
            .iter()
            .all(|store| *store.lock().unwrap() == reference)
    });
    // No acknowledged write lost: every command committed is in that state.
    let applied = command_numbers(&stores[follower]);
    let missing: Vec<usize> = (0..total).filter(|n| !applied.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged commands lost: {missing:?}"
    );
    // Counters are published every few milliseconds.
    wait_for("the follower's counters show the install", 5, || {
        nodes[follower].as_ref().unwrap().stats().cores[0]
            .protocol
            .checkpoints_installed
            >= 1
    });
    let stats = nodes[follower].as_ref().unwrap().stats();
    let protocol = &stats.cores[0].protocol;
    assert!(
        protocol.checkpoints_installed >= 1,
        "the follower installed a checkpoint: {protocol:?}"
    );
    assert!(protocol.checkpoint_bytes_received > 0);
    let served: u64 = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != follower)
        .filter_map(|(_, n)| n.as_ref())
        .map(|n| n.stats().cores[0].driver.checkpoint_chunks_read)
        .sum();
    assert!(served >= 1, "a peer served checkpoint chunks");
    assert!(
        nodes[follower].as_ref().unwrap().fatal_error().is_none(),
        "the follower kept running"
    );
    eprintln!(
        "follower {follower_id} stopped at {stopped_at}; peers dropped {stale} stale frames for it; installed {} checkpoint(s), {} bytes; peers served {served} chunks; {total} commands, {:.1} s",
        protocol.checkpoints_installed,
        protocol.checkpoint_bytes_received,
        began.elapsed().as_secs_f64()
    );
    shutdown_all(nodes);
}
