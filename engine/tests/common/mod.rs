//! Helpers the runtime tests share (in-process nodes on loopback, each with real WALs and a
//! real network thread): free ports, the settings every test cluster has, starting and
//! stopping the nodes, waits that always end (a proposal's outcome, a condition), and a
//! bounded load of proposals through whichever node leads.
//! Each test file declares `mod common;` and uses a part of it.
#![allow(dead_code)]
use bytes::Bytes;
use paxring_engine::runtime::{Committed, Error, Node, NodeConfig, NodeConfigBuilder, Proposal};
use paxring_wal::GroupId;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// `count` loopback addresses that were free a moment ago (their listeners close on return).
pub fn free_addrs(count: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// The settings every test cluster shares, for node `id` (1-based: it listens on
/// `addrs[id - 1]`, and every other address is a peer) with its data in `dir/node-{id}`:
/// `cluster_id` (one per test: tests run at once on loopback), two unpinned cores, 5 ms ticks,
/// elections after 40 ticks, heartbeats every 4. The caller adds its own settings and builds.
pub fn node_config(
    id: u32,
    addrs: &[SocketAddr],
    dir: &Path,
    cluster_id: u64,
) -> NodeConfigBuilder {
    let mut builder =
        NodeConfig::builder(id, addrs[id as usize - 1], dir.join(format!("node-{id}")))
            .cluster_id(cluster_id)
            .cores(2)
            .pin_cores(false)
            .tick_ms(5)
            .election_timeout_ticks(40)
            .heartbeat_ticks(4);
    for (i, addr) in addrs.iter().enumerate() {
        let peer = i as u32 + 1;
        if peer != id {
            builder = builder.peer(peer, *addr);
        }
    }
    builder
}

/// Starts nodes `1..=count`, each with `start(id)`.
pub fn start_nodes(count: u32, start: impl FnMut(u32) -> Node) -> Vec<Option<Node>> {
    (1..=count).map(start).map(Some).collect()
}

/// Shuts down every node still running.
pub fn shutdown_all(nodes: Vec<Option<Node>>) {
    for node in nodes.into_iter().flatten() {
        node.shutdown().unwrap();
    }
}

/// Wakes the thread that waits in [`wait_until`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// The outcome of `proposal`, waited for until `deadline` at most (`Proposal::wait` and
/// `Node::propose_blocking` wait for ever, and a cluster that never commits would hang the
/// test). `None` when it is still unknown at the deadline; the proposal is then dropped.
pub fn wait_until(mut proposal: Proposal, deadline: Instant) -> Option<Result<Committed, Error>> {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(outcome) = Pin::new(&mut proposal).poll(&mut cx) {
            return Some(outcome);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        // Woken by the runtime's answer; a spurious wake-up just polls again.
        std::thread::park_timeout(deadline - now);
    }
}

/// Polls `done` every 20 ms for up to `seconds`; panics naming `what` if it never holds.
pub fn wait_for(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not within {seconds} s");
}

/// Waits (up to 30 s) until some node names a leader of `group` (a new cluster elects once
/// all its nodes answered).
pub fn wait_for_leader(nodes: &[Option<Node>], group: GroupId) {
    wait_for(&format!("a leader of group {}", group.0), 30, || {
        nodes
            .iter()
            .flatten()
            .any(|n| n.leader_hint(group).is_some())
    });
}

/// Proposes commands `first..first + count` to group 0 through whichever node leads it, up to
/// `window` outstanding at a time (1: one command per instance); command `n` is `cmd-{n}-`
/// padded with dots to `bytes` bytes. A command whose outcome is not Committed is sent again
/// (it may then be applied twice). Bounded in time: 120 s per call, waiting for outcomes
/// included; a timeout panics with each running node's view of group 0.
pub fn propose_many(
    nodes: &[Option<Node>],
    first: usize,
    count: usize,
    bytes: usize,
    window: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut target = 0usize;
    let mut pending: Vec<usize> = (first..first + count).collect();
    let mut last_error = String::new();
    let mut misses = 0u64;
    // Each running node's view of group 0 and its cores' stuck reports, for a failure.
    let stuck = || {
        nodes
            .iter()
            .flatten()
            .map(|n| {
                let cores = n
                    .stats()
                    .cores
                    .iter()
                    .map(|c| {
                        format!(
                            "core {}: rounds {} write rounds {} durable writes {} records written {} executor backlog rounds {} held {:?} stuck {:?} accepts sent {} accepted sent {} messages received {}",
                            c.core,
                            c.rounds,
                            c.write_rounds,
                            c.durable_writes,
                            c.records_written,
                            c.executor_backlog_rounds,
                            c.driver,
                            c.stuck,
                            c.protocol.accepts_sent,
                            c.protocol.accepted_sent,
                            c.protocol.messages_received
                        )
                    })
                    .collect::<Vec<_>>();
                format!(
                    "node {}: leader {:?}, applied next {:?}, cores {cores:?}",
                    n.config().node_id,
                    n.leader_hint(GroupId(0)),
                    n.applied_next(GroupId(0))
                )
            })
            .collect::<Vec<_>>()
    };
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} of {count} commands not committed within 120 s (last error: {last_error}); stuck: {:?}",
            pending.len(),
            stuck()
        );
        let Some(node) = nodes[target].as_ref() else {
            target = (target + 1) % nodes.len();
            continue;
        };
        let window: Vec<usize> = pending.iter().copied().take(window).collect();
        let proposals: Vec<_> = window
            .iter()
            .map(|n| {
                let mut command = format!("cmd-{n}-").into_bytes();
                command.resize(bytes.max(command.len()), b'.');
                node.propose(GroupId(0), Bytes::from(command))
            })
            .collect();
        let mut failed = Vec::new();
        for (n, proposal) in window.iter().zip(proposals) {
            let Some(outcome) = wait_until(proposal, deadline) else {
                panic!(
                    "{} of {count} commands not committed within 120 s (cmd-{n} sent to node {}: no outcome); stuck: {:?}",
                    pending.len(),
                    target + 1,
                    stuck()
                );
            };
            match outcome {
                Ok(_) => {}
                Err(Error::NotLeader {
                    leader: Some(leader),
                }) if nodes[leader as usize - 1].is_some() => {
                    target = leader as usize - 1;
                    last_error = format!("node {}: not the leader, leader {leader}", target + 1);
                    failed.push(*n);
                }
                Err(e @ (Error::NotLeader { .. } | Error::Overloaded | Error::Unknown(_))) => {
                    last_error = format!("node {}: {e}", target + 1);
                    failed.push(*n);
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        if !failed.is_empty() {
            misses += 1;
            if failed.len() == window.len() && misses % 3 == 0 {
                // Hints can be stale for a moment: after a few misses, try the next node.
                target = (target + 1) % nodes.len();
            }
            std::thread::sleep(Duration::from_millis(10));
        } else {
            misses = 0;
        }
        pending.retain(|n| !window.contains(n) || failed.contains(n));
    }
}

/// Bytes of WAL segment files in `wal_dir` (not spares kept for recycling, not a segment still
/// being prepared).
#[allow(dead_code)] // not every test binary samples disk use
pub fn segment_bytes_on_disk(wal_dir: &Path) -> u64 {
    paxring_wal::segfile::segment_files_bytes(wal_dir)
}

/// A thread that samples the segment files on disk of every WAL directory in `wal_dirs`
/// every `every` until `stop` is set; it returns each directory's peak.
pub fn sample_disk_peaks(
    wal_dirs: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut peaks = vec![0u64; wal_dirs.len()];
        while !stop.load(Ordering::Acquire) {
            for (peak, wal_dir) in peaks.iter_mut().zip(&wal_dirs) {
                *peak = (*peak).max(segment_bytes_on_disk(wal_dir));
            }
            std::thread::sleep(every);
        }
        peaks
    })
}
