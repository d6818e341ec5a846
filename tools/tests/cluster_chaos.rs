//! Proves, with three real `paxring node` processes on 127.0.0.1 under a running
//! `paxring kv load` workload: after `kill -9` of a follower and later of the leader, each
//! restarted from its config with `paxring cluster restart`, the cluster keeps committing, the
//! restarted nodes catch up, the workload records no `fail` outcome (only `ok` and `unknown`:
//! clients retry the killed node and follow the new leader), every replica ends with the same
//! applied sequence (identical applied_next and digest per group), every acknowledged write
//! is present (unique keys read back through the log; and in the workload's history no
//! acknowledged write is overwritten by an older one, and every read returns a value some
//! non-failed write wrote), and the WAL made one durable write per writing round on every core.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The node most nodes name as the leader of `group` (by their `id` answers), if any.
fn leader_of(cluster: &TestCluster, group: usize) -> Option<u32> {
    let mut votes: HashMap<u32, usize> = HashMap::new();
    for node in cluster.nodes() {
        if let Ok(answer) = request(
            node.client_addr,
            &json!({"op":"id"}),
            Duration::from_secs(3),
        ) {
            if let Some(leader) = answer["leaders"][group].as_u64() {
                *votes.entry(leader as u32).or_default() += 1;
            }
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id)
}

fn wait_leader(cluster: &TestCluster, group: usize) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(leader) = leader_of(cluster, group) {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "no leader of group {group}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_follower_and_leader_under_load() {
    let mut cluster = TestCluster::up(4, 1);
    let history = cluster.path().join("history.jsonl");
    let summary = cluster.path().join("load.out");
    let load = Command::new(exe())
        .args([
            "kv",
            "--addr",
            &cluster.addr_list(),
            "load",
            "--clients",
            "4",
            "--seconds",
            "16",
            "--keys",
            "20",
        ])
        .arg("--history")
        .arg(&history)
        .args(["--seed", "5"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&summary).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the load");
    cluster.children.push(load);

    // A writer of unique keys, so that "every acknowledged write is present" is exact.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let nodes = cluster.nodes();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Acquire) && i < 100_000 {
                let (key, value) = (format!("u{i}"), format!("w{i}"));
                if let Outcome::Ok(_) = put(&nodes, i as usize % 3, &key, &value) {
                    acked.push((key, value));
                }
                i += 1;
            }
            acked
        })
    };

    std::thread::sleep(Duration::from_secs(2));
    let leader = wait_leader(&cluster, 0);
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill9(follower);
    std::thread::sleep(Duration::from_secs(2));
    cluster.restart(follower);
    std::thread::sleep(Duration::from_secs(2));
    let leader = wait_leader(&cluster, 0);
    cluster.kill9(leader);
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(leader);

    // The load ends on its own after 16 s; bounded wait.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = cluster.children[0].try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the load did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::Release);
    let acked = writer.join().unwrap();
    let summary_text = std::fs::read_to_string(&summary).unwrap();
    eprintln!("load under kill -9 (follower {follower}, then leader {leader}):\n{summary_text}");
    assert!(status.success(), "load failed: {summary_text}");
    let summary_json: Value = serde_json::from_str(summary_text.lines().last().unwrap()).unwrap();
    assert!(
        summary_json["ok"].as_u64().unwrap() > 100,
        "the cluster kept committing: {summary_text}"
    );
    // Across both kills every operation was answered or may have applied (resent under its
    // session): none failed outright, since each kept retrying the unreachable node and
    // following not_leader within its --op-retry-ms.
    assert_eq!(
        summary_json["fail"].as_u64(),
        Some(0),
        "no operation failed across the kills: {summary_text}"
    );
    // Client-visible unavailability: the longest time with no successful operation across the
    // kills (the goal is an election timeout plus one client retry; before check quorum and
    // leader stickiness a stopped leader left clients with none for 7-8.6 s). The bound is
    // loose for a loaded machine; the figure is printed above.
    let gap = summary_json["longest_gap_ms"]
        .as_f64()
        .expect("longest_gap_ms");
    assert!(
        gap > 0.0 && gap < 4000.0,
        "longest time with no successful operation: {gap} ms"
    );

    let nodes = cluster.nodes();
    let (converged, readings) = wait_converged(&nodes, Duration::from_secs(60));
    assert!(
        converged,
        "replicas differ after catch-up: {readings:?}\n{}",
        cluster.logs()
    );
    // The KV state's checkpoints are real: every group of every node has a durable snapshot
    // (the restarted ones loaded theirs and replayed only the WAL above it).
    for node in &nodes {
        let answer = request(
            node.client_addr,
            &json!({"op":"digest"}),
            Duration::from_secs(5),
        )
        .unwrap();
        for group in answer["digests"].as_array().unwrap() {
            let checkpoint = group["checkpoint"].as_u64();
            let applied_next = group["applied_next"].as_u64().unwrap();
            assert!(
                checkpoint.is_some_and(|c| c < applied_next),
                "node {}: group without a snapshot below applied_next: {group}",
                node.id
            );
        }
    }

    // Every acknowledged unique write reads back through the log, from every node.
    assert!(
        acked.len() > 10,
        "unique writes were acknowledged: {}",
        acked.len()
    );
    for (i, (key, value)) in acked.iter().enumerate() {
        match get(&nodes, i % 3, key) {
            Outcome::Ok(answer) => {
                assert_eq!(answer["value"], json!(value), "acknowledged {key} lost")
            }
            other => panic!("get {key}: {other:?}"),
        }
    }

    check_history(&history, &nodes);

    for node in &nodes {
        let stats = stats(node.client_addr);
        let rounds = assert_one_durable_write_per_round(&stats);
        assert!(
            rounds > 0,
            "node {} wrote its WAL since its restart: {stats}",
            node.id
        );
    }
}

/// One history line, checked for the documented fields.
#[derive(Debug, Clone)]
struct Op {
    op: String,
    key: String,
    value: Option<String>,
    ok: Option<bool>,
    call_ns: u64,
    return_ns: u64,
    outcome: String,
}

fn parse_history(path: &std::path::Path) -> Vec<Op> {
    let text = std::fs::read_to_string(path).unwrap();
    let fields = [
        "client",
        "op",
        "key",
        "value",
        "expected",
        "ok",
        "call_ns",
        "return_ns",
        "outcome",
    ];
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let object = v.as_object().unwrap();
            assert_eq!(object.len(), fields.len(), "{line}");
            for field in fields {
                assert!(object.contains_key(field), "{line} lacks {field}");
            }
            let op = Op {
                op: v["op"].as_str().unwrap().to_string(),
                key: v["key"].as_str().unwrap().to_string(),
                value: v["value"].as_str().map(String::from),
                ok: v["ok"].as_bool(),
                call_ns: v["call_ns"].as_u64().unwrap(),
                return_ns: v["return_ns"].as_u64().unwrap(),
                outcome: v["outcome"].as_str().unwrap().to_string(),
            };
            assert!(["put", "get", "cas"].contains(&op.op.as_str()), "{line}");
            assert!(
                ["ok", "fail", "unknown"].contains(&op.outcome.as_str()),
                "{line}"
            );
            assert!(op.call_ns <= op.return_ns, "{line}");
            assert_eq!(
                op.outcome == "unknown",
                op.ok.is_none(),
                "ok is null exactly when unknown: {line}"
            );
            op
        })
        .collect()
}

/// The history's writes and reads against the final state: no acknowledged write is lost or
/// overwritten by a write that ended before it began, and every read saw a real write.
fn check_history(path: &std::path::Path, nodes: &[NodeInfo]) {
    let ops = parse_history(path);
    assert!(!ops.is_empty());
    // Values are unique per operation, so a value names its write.
    let mut writer_of: HashMap<String, &Op> = HashMap::new();
    for op in ops.iter().filter(|o| o.op != "get") {
        let value = op.value.clone().expect("a write has a value");
        assert!(
            writer_of.insert(value, op).is_none(),
            "values are unique per operation"
        );
    }
    let may_have_written =
        |op: &Op| op.outcome == "unknown" || (op.outcome == "ok" && op.ok == Some(true));
    let acknowledged = |op: &Op| op.outcome == "ok" && op.ok == Some(true) && op.op != "get";

    for read in ops.iter().filter(|o| o.op == "get" && o.outcome == "ok") {
        if let Some(value) = &read.value {
            let write = writer_of
                .get(value)
                .unwrap_or_else(|| panic!("read {value:?} that no one wrote"));
            assert!(
                may_have_written(write),
                "read {value:?} from a write that failed: {write:?}"
            );
            assert!(
                write.call_ns < read.return_ns,
                "read {value:?} before its write began"
            );
            assert_eq!(write.key, read.key);
        }
    }

    let keys: std::collections::BTreeSet<&str> = ops.iter().map(|o| o.key.as_str()).collect();
    for (i, key) in keys.into_iter().enumerate() {
        let last = match get(nodes, i % 3, key) {
            Outcome::Ok(answer) => answer["value"].as_str().map(String::from),
            other => panic!("final get {key}: {other:?}"),
        };
        let acked: Vec<&Op> = ops
            .iter()
            .filter(|o| o.key == key && acknowledged(o))
            .collect();
        match last {
            None => assert!(
                acked.is_empty(),
                "{key} is absent but writes were acknowledged: {acked:?}"
            ),
            Some(value) => {
                let write = writer_of
                    .get(&value)
                    .unwrap_or_else(|| panic!("{key} holds {value:?} that no one wrote"));
                assert!(
                    may_have_written(write),
                    "{key} holds the value of a failed write"
                );
                for later in acked {
                    assert!(
                        later.call_ns <= write.return_ns,
                        "{key}: acknowledged {later:?} began after {write:?} ended, yet {value:?} is the final value: a write was lost"
                    );
                }
            }
        }
    }
}
