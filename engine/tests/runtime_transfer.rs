//! Checkpoint transfer without a restart, on three in-process nodes with real WALs and a real
//! network thread (docs/PROTOCOL.md#checkpoint-transfer): with `wal_purge` on, log bases follow
//! the state machines' checkpoints, so a follower stopped while the others go on is behind
//! every value its peers serve when it returns. It fetches a checkpoint (the serving node's
//! executor exports one from its live state machine: application mode), installs it into its
//! state machine in the same process, catches up from the log above it and ends with exactly
//! the leader's state.

use bytes::Bytes;
use paxring_engine::runtime::{Error, Node, NodeConfig, StateMachine, StateMachineFactory};
use paxring_wal::{GroupId, Instance};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

fn free_addrs(count: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn start(id: u32, addrs: &[SocketAddr], dir: &Path, store: Store) -> Node {
    let mut builder =
        NodeConfig::builder(id, addrs[id as usize - 1], dir.join(format!("node-{id}")))
            .cluster_id(13)
            .groups(1)
            .cores(1)
            .pin_cores(false)
            .segment_bytes(2 << 20)
            .round_bytes_max(512 << 10)
            .tick_ms(5)
            .election_timeout_ticks(40)
            .heartbeat_ticks(4)
            .wal_purge(true)
            .purge_hold_for_peers_ms(0)
            .purge_every_ms(100);
    for (i, addr) in addrs.iter().enumerate() {
        let peer = i as u32 + 1;
        if peer != id {
            builder = builder.peer(peer, *addr);
        }
    }
    let factory: StateMachineFactory = Box::new(move |_group: GroupId| {
        Ok(Box::new(Machine {
            store: store.clone(),
        }) as Box<dyn StateMachine>)
    });
    Node::start(builder.build().unwrap(), factory).expect("node starts")
}

fn wait_for(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not within {seconds} s");
}

/// Proposes `count` commands through whichever node leads, `window` at a time (1: one
/// command per instance); bounded in time.
fn propose_many(nodes: &[Option<Node>], first: usize, count: usize, window: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut target = 0usize;
    let mut next = first;
    while next < first + count {
        assert!(Instant::now() < deadline, "commands not committed in 60 s");
        let Some(node) = nodes[target].as_ref() else {
            target = (target + 1) % nodes.len();
            continue;
        };
        let batch: Vec<usize> = (next..(next + window).min(first + count)).collect();
        let proposals: Vec<_> = batch
            .iter()
            .map(|n| node.propose(GroupId(0), Bytes::from(format!("cmd-{n}"))))
            .collect();
        let mut all = true;
        for proposal in proposals {
            match proposal.wait() {
                Ok(_) => {}
                Err(Error::NotLeader {
                    leader: Some(leader),
                }) if nodes[leader as usize - 1].is_some() => {
                    target = leader as usize - 1;
                    all = false;
                }
                Err(Error::NotLeader { .. } | Error::Overloaded | Error::Unknown(_)) => {
                    all = false;
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        if all {
            next += batch.len();
        } else {
            // Resent: a command may then be applied twice, which the comparison allows (it
            // compares sequences, not sets).
            std::thread::sleep(Duration::from_millis(10));
            if nodes[target]
                .as_ref()
                .unwrap()
                .leader_hint(GroupId(0))
                .is_none()
            {
                target = (target + 1) % nodes.len();
            }
        }
    }
}

/// Ignored in CI: in about 1 run in 4 the returning follower learns everything from the frames
/// its peers' network threads queued while it was down (up to 65,536 frames) and never needs
/// the checkpoint. `cargo test --release -p paxring-engine --test runtime_transfer -- --ignored`.
#[test]
#[ignore]
fn a_follower_behind_every_log_base_installs_a_checkpoint_and_catches_up_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let stores: Vec<Store> = (0..3).map(|_| Store::default()).collect();
    let mut nodes: Vec<Option<Node>> = (1..=3)
        .map(|id| {
            Some(start(
                id,
                &addrs,
                dir.path(),
                stores[id as usize - 1].clone(),
            ))
        })
        .collect();
    wait_for("a leader", 30, || {
        nodes
            .iter()
            .flatten()
            .any(|n| n.leader_hint(GroupId(0)).is_some())
    });
    propose_many(&nodes, 0, 64, 1);
    let leader = nodes[0]
        .as_ref()
        .unwrap()
        .leader_hint(GroupId(0))
        .unwrap_or(1) as usize;
    let follower = (1..=3).find(|n| *n != leader).unwrap() - 1;
    nodes[follower].take().unwrap().shutdown().unwrap();
    let stopped_at = stores[follower].lock().unwrap().len() as u64;
    // More instances than memory keeps (one acceptance window, 1,024): one command each.
    propose_many(&nodes, 64, 1500, 1);
    // The precondition: every live peer's log now starts above the follower's point (their
    // purge passes moved the log bases up to their checkpoints), so no peer can serve it
    // from its log.
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
        follower as u32 + 1,
        &addrs,
        dir.path(),
        stores[follower].clone(),
    ));
    propose_many(&nodes, 1564, 500, 16);
    let reference = stores[leader - 1].clone();
    wait_for("the returning follower converges", 60, || {
        *stores[follower].lock().unwrap() == *reference.lock().unwrap()
    });
    // Counters are published every few milliseconds.
    std::thread::sleep(Duration::from_millis(100));
    eprintln!(
        "follower {follower} stopped at {stopped_at}: {:?}",
        nodes[follower].as_ref().unwrap().stats().cores[0].protocol
    );
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
        "follower stopped at {stopped_at}; installed {} checkpoint(s), {} bytes; peers served {served} chunks",
        protocol.checkpoints_installed, protocol.checkpoint_bytes_received
    );
    for node in nodes.into_iter().flatten() {
        node.shutdown().unwrap();
    }
}
