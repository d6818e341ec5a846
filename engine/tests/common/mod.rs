//! Helpers the runtime tests share (in-process nodes on loopback, each with real WALs and a
//! real network thread): free ports, the settings every test cluster has, starting and
//! stopping the nodes, and waits that always end (a proposal's outcome, a condition).
//! Each test file declares `mod common;` and uses a part of it.
#![allow(dead_code)]
use paxring_engine::runtime::{Committed, Error, Node, NodeConfig, NodeConfigBuilder, Proposal};
use paxring_wal::GroupId;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::pin::Pin;
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
