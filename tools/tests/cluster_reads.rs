//! Lease reads on real processes (docs/PROTOCOL.md#master-lease): the master of a 3-node
//! cluster is stopped with SIGSTOP for eight times its lease while a writer goes on through the
//! others, then resumed. A reader that asks only the old master for lease reads, before, during
//! and after, never gets a value older than a write acknowledged before its read began: the
//! register's history is linearizable. (A single writer writes increasing values, so a read is
//! linearizable exactly when it returns at least the newest value acknowledged before it began.)
mod common;

use common::{request, TestCluster};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// The integer a get returned (absent: 0).
fn read_value(answer: &Value) -> u64 {
    answer["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_stopped_master_never_serves_a_stale_lease_read() {
    let cluster = TestCluster::up(1, 1);
    let key = "register";
    let master = find_master(&cluster, key, Duration::from_secs(20)).expect("a master");
    let master_node = cluster.node(master);
    let nodes = cluster.nodes();

    // The writer: puts 1, 2, 3, ... through whichever node leads (short timeouts, so that it
    // moves on from the stopped master), recording when each put was acknowledged.
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let newest_acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        let newest_acked = newest_acked.clone();
        let nodes = nodes.clone();
        std::thread::spawn(move || {
            let mut target = 0usize;
            let mut value = 1u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let answer = request(
                    nodes[target].client_addr,
                    &json!({"op":"put","key":key,"value":value.to_string()}),
                    Duration::from_millis(400),
                );
                match answer {
                    Ok(a) if a["ok"] == json!(true) => {
                        acked.lock().unwrap().push((value, Instant::now()));
                        newest_acked.store(value, Ordering::Release);
                        value += 1;
                    }
                    Ok(a) if a["error"] == json!("not_leader") => {
                        target = a["leader"]
                            .as_u64()
                            .and_then(|l| nodes.iter().position(|n| u64::from(n.id) == l))
                            .filter(|t| *t != target)
                            .unwrap_or((target + 1) % nodes.len());
                    }
                    // Refused, or no answer in time (the outcome may be unknown): a new value
                    // next, elsewhere (values stay increasing in log order: a lost put is
                    // either chosen before the next one or never).
                    _ => {
                        value += 1;
                        target = (target + 1) % nodes.len();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        })
    };

    // The reader: lease reads from the master only; each ok answer is checked against the
    // newest value acknowledged before the read began.
    let reads_ok = Arc::new(AtomicU64::new(0));
    let reads_ok_after_resume = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicBool::new(false));
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let stop = stop.clone();
        let newest_acked = newest_acked.clone();
        let reads_ok = reads_ok.clone();
        let reads_ok_after_resume = reads_ok_after_resume.clone();
        let resumed = resumed.clone();
        let violations = violations.clone();
        let addr = master_node.client_addr;
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let floor = newest_acked.load(Ordering::Acquire);
                let answer = request(
                    addr,
                    &json!({"op":"get","key":key,"mode":"lease"}),
                    Duration::from_secs(10),
                );
                if let Ok(a) = answer {
                    if a["ok"] == json!(true) {
                        reads_ok.fetch_add(1, Ordering::Relaxed);
                        if resumed.load(Ordering::Relaxed) {
                            reads_ok_after_resume.fetch_add(1, Ordering::Relaxed);
                        }
                        let got = read_value(&a);
                        if got < floor {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("read {got} after {floor} was acknowledged: {a}"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    // Some traffic first, then the master stops for eight leases, then resumes.
    std::thread::sleep(Duration::from_millis(800));
    let before_stop = reads_ok.load(Ordering::Relaxed);
    let acked_before = newest_acked.load(Ordering::Acquire);
    kill(Pid::from_raw(master_node.pid as i32), Signal::SIGSTOP).expect("SIGSTOP");
    std::thread::sleep(STOPPED_FOR);
    let acked_while_stopped = newest_acked.load(Ordering::Acquire);
    kill(Pid::from_raw(master_node.pid as i32), Signal::SIGCONT).expect("SIGCONT");
    resumed.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    reader.join().unwrap();

    let violations = violations.lock().unwrap().clone();
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
        reads_ok.load(Ordering::Relaxed),
        reads_ok_after_resume.load(Ordering::Relaxed),
        acked_before,
        acked_while_stopped,
    );
    let total = acked.lock().unwrap().len();
    assert!(total > 0);
}
