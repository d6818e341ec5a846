//! Lease reads on real processes (docs/PROTOCOL.md#master-lease): the master of a 3-node
//! cluster is stopped with SIGSTOP for eight times its lease while a writer goes on through the
//! others, then resumed. A reader that asks only the old master for lease reads, before, during
//! and after, never gets a value older than a write acknowledged before its read began: the
//! register's history is linearizable. (A single writer writes increasing values, so a read is
//! linearizable exactly when it returns at least the newest value acknowledged before it began.)
mod common;

use common::{request, RegisterWorkload, TestCluster};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The default master lease (`master_lease_ms`).
const LEASE: Duration = Duration::from_millis(250);
/// How long the master is stopped.
const STOPPED_FOR: Duration = Duration::from_millis(2000);

/// The node that answers a lease read of `key` (the master), if one does within `timeout`.
fn find_master(cluster: &TestCluster, key: &str, timeout: Duration) -> Option<u32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for node in cluster.nodes() {
            let answer = request(
                node.client_addr,
                &json!({"op":"get","key":key,"mode":"lease"}),
                Duration::from_millis(500),
            );
            if answer.is_ok_and(|a| a["ok"] == json!(true)) {
                return Some(node.id);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_stopped_master_never_serves_a_stale_lease_read() {
    let cluster = TestCluster::up(1, 1);
    let key = "register";
    let master = find_master(&cluster, key, Duration::from_secs(20)).expect("a master");
    let master_node = cluster.node(master);

    let nodes: Vec<(u32, std::net::SocketAddr)> = cluster
        .nodes()
        .iter()
        .map(|n| (n.id, n.client_addr))
        .collect();
    let work = RegisterWorkload::start(key, nodes, master_node.client_addr, || {});

    // Some traffic first, then the master stops for eight leases, then resumes.
    std::thread::sleep(Duration::from_millis(800));
    let before_stop = work.reads_ok.load(Ordering::Relaxed);
    let acked_before = work.newest_acked.load(Ordering::Acquire);
    kill(Pid::from_raw(master_node.pid as i32), Signal::SIGSTOP).expect("SIGSTOP");
    std::thread::sleep(STOPPED_FOR);
    let acked_while_stopped = work.newest_acked.load(Ordering::Acquire);
    kill(Pid::from_raw(master_node.pid as i32), Signal::SIGCONT).expect("SIGCONT");
    work.during.store(true, Ordering::Relaxed); // from the resume on
    std::thread::sleep(Duration::from_millis(1500));
    let reads_ok = work.reads_ok.load(Ordering::Relaxed);
    let reads_after_resume = work.reads_ok_during.load(Ordering::Relaxed);
    let violations = work.stop();

    assert!(
        violations.is_empty(),
        "stale lease reads from the old master:\n{}\n{}",
        violations.join("\n"),
        cluster.logs()
    );
    assert!(
        before_stop > 0,
        "the master served lease reads before it stopped"
    );
    assert!(
        acked_while_stopped > acked_before,
        "the others elected a master and wrote while it was stopped (acknowledged {acked_before} before, {acked_while_stopped} at resume)"
    );
    let new_master = find_master(&cluster, key, Duration::from_secs(10)).expect("a master");
    eprintln!(
        "lease reads: {} ok from node {master} ({} after it resumed); writes acknowledged: {} before the stop, {} by the resume; master now node {new_master}; lease {LEASE:?}, stopped {STOPPED_FOR:?}",
        reads_ok,
        reads_after_resume,
        acked_before,
        acked_while_stopped,
    );
}
