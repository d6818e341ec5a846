//! Proves, with real `paxring node` processes on 127.0.0.1 (three voters and a spare follower
//! node, `paxring cluster up --followers 1`) under a running `paxring kv load` workload and a
//! writer of unique keys: a voter is killed with `kill -9` and its data directory wiped, then
//! `paxring cluster replace --old 1 --new 4` makes the spare a voter of every group in its
//! place (docs/PROTOCOL.md#membership-change). The cluster keeps committing, every group's
//! membership names the new voters on every running node, the three voters end with the same
//! applied sequence, every acknowledged write is present, and the workload's history holds no
//! lost or phantom write.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn a_dead_voter_is_replaced_by_a_spare_under_load() {
    let mut cluster = TestCluster::up_with_followers(4, 1, 1, &[]);
    let (history, summary) = start_load(&mut cluster, 14, 7);
    // Unique keys through the voters that stay (a dead node only slows the writer).
    let stop = Arc::new(AtomicBool::new(false));
    let survivors: Vec<NodeInfo> = cluster.nodes().into_iter().filter(|n| n.id != 1).collect();
    let writer = unique_writer(survivors, stop.clone());

    std::thread::sleep(Duration::from_secs(2));
    // Node 1 dies and loses its disk.
    cluster.kill9(1);
    let data = cluster.node(1).config.parent().unwrap().join("data");
    std::fs::remove_dir_all(&data).unwrap();
    let dir = cluster.path().to_str().unwrap().to_string();
    let (ok, stdout, stderr) = run_paxring(
        &[
            "cluster",
            "replace",
            "--dir",
            &dir,
            "--old",
            "1",
            "--new",
            "4",
            "--wait-seconds",
            "60",
        ],
        Duration::from_secs(90),
    );
    assert!(
        ok,
        "replace failed:\n{stdout}\n{stderr}\n{}",
        cluster.logs()
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("governs from"))
            .count(),
        4,
        "{stdout}"
    );

    let (succeeded, summary_text) = wait_load(&mut cluster, &summary);
    stop.store(true, Ordering::Release);
    let acked = writer.join().unwrap();
    eprintln!("load while node 1 was replaced by node 4:\n{summary_text}");
    assert!(succeeded, "load failed: {summary_text}");
    let summary_json: Value = serde_json::from_str(summary_text.lines().last().unwrap()).unwrap();
    assert!(
        summary_json["ok"].as_u64().unwrap() > 100,
        "the cluster kept committing: {summary_text}"
    );

    let nodes: Vec<NodeInfo> = cluster.nodes().into_iter().filter(|n| n.id != 1).collect();
    // Every running node knows the new membership of every group.
    for node in &nodes {
        let answer = request(
            node.client_addr,
            &json!({"op":"id"}),
            Duration::from_secs(5),
        )
        .expect("id");
        for (group, members) in answer["memberships"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                members["voters"],
                json!([2, 3, 4]),
                "node {} group {group}: {members}",
                node.id
            );
            assert_eq!(members["followers"], json!([]), "{members}");
        }
    }
    // cluster.json records the new membership of every group.
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.path().join("cluster.json")).unwrap(),
    )
    .unwrap();
    let recorded = file["memberships"]
        .as_array()
        .expect("memberships recorded");
    assert_eq!(recorded.len(), 4, "{file}");
    for members in recorded {
        assert_eq!(members["voters"], json!([2, 3, 4]), "{file}");
    }
    let (converged, readings) = wait_converged(&nodes, Duration::from_secs(60));
    assert!(
        converged,
        "replicas differ: {readings:?}\n{}",
        cluster.logs()
    );
    assert!(
        acked.len() > 10,
        "unique writes were acknowledged: {}",
        acked.len()
    );
    for (i, (key, value)) in acked.iter().enumerate() {
        match get(&nodes, i % nodes.len(), key) {
            Outcome::Ok(answer) => {
                assert_eq!(answer["value"], json!(value), "acknowledged {key} lost")
            }
            other => panic!("get {key}: {other:?}"),
        }
    }
    check_history(&history, &nodes);
}
