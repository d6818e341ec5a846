//! Proves, with real `paxring node` processes on 127.0.0.1 (three voters and one follower,
//! started by `paxring cluster up --followers 1`), that a follower (a non-voting replica,
//! docs/PROTOCOL.md#follower-nodes):
//! - applies exactly what the voters apply (same applied point and digest in every group);
//! - never votes, leads or takes a proposal (it answers `not_leader` naming the leader, and
//!   no voter ever dropped a vote from it because it sent none);
//! - keeps up through a voter's `kill -9` (the two voters left are a quorum without it), and
//!   catches up after its own `kill -9` and after losing its whole data directory (it starts
//!   at once, without re-learning: it never voted);
//! - shows its role and lag in the stats.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const FOLLOWER: u32 = 4;

fn put_many(nodes: &[NodeInfo], prefix: &str, count: usize) {
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        // Enter through any node, the follower included: a client follows `not_leader`.
        let entry = i % nodes.len();
        match put(nodes, entry, &key, &format!("v-{key}")) {
            Outcome::Ok(_) => {}
            other => panic!("put {key} through node {}: {other:?}", nodes[entry].id),
        }
    }
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats["cores"]
        .as_array()
        .expect("cores")
        .iter()
        .map(|c| c["protocol"][name].as_u64().unwrap_or(0))
        .sum()
}

fn assert_converged(cluster: &TestCluster, nodes: &[NodeInfo], what: &str) {
    let (converged, readings) = wait_converged(nodes, Duration::from_secs(60));
    assert!(
        converged,
        "{what}: replicas differ: {readings:?}\n{}",
        cluster.logs()
    );
}

#[test]
fn a_follower_applies_what_the_voters_apply_and_never_votes() {
    let mut cluster = TestCluster::up_with_followers(4, 2, 1, &[]);
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 4);
    let follower = cluster.node(FOLLOWER);

    put_many(&nodes, "a", 60);
    assert_converged(&cluster, &nodes, "after the first writes");

    // Straight to the follower, without following: it refuses, naming a leader it knows.
    let answer = request(
        follower.client_addr,
        &json!({"op":"put","key":"direct","value":"x"}),
        Duration::from_secs(12),
    )
    .expect("answer");
    assert_eq!(answer["error"], json!("not_leader"), "{answer}");
    if !answer["leader"].is_null() {
        assert_ne!(answer["leader"], json!(FOLLOWER), "{answer}");
    }

    // A stale get is served by the follower node itself (docs/PROTOCOL.md#stale-reads); a
    // linearizable one names the leader.
    let stale = request(
        follower.client_addr,
        &json!({"op":"get","key":"a-7","mode":"stale","max_stale_ms":5000}),
        Duration::from_secs(12),
    )
    .expect("answer");
    assert_eq!(stale["ok"], json!(true), "{stale}");
    assert_eq!(stale["value"], json!("v-a-7"), "{stale}");
    let linearizable = request(
        follower.client_addr,
        &json!({"op":"get","key":"a-7"}),
        Duration::from_secs(12),
    )
    .expect("answer");
    assert_eq!(linearizable["error"], json!("not_leader"), "{linearizable}");

    let seen = stats(follower.client_addr);
    assert_eq!(seen["follower"], json!(true), "{seen}");
    for core in seen["cores"].as_array().unwrap() {
        assert_eq!(core["voter"], json!(false), "{core}");
        assert!(core["lag_instances"].is_u64(), "{core}");
    }
    assert!(
        counter(&seen, "accepts_observed_non_voter") > 0,
        "the follower kept the leaders' Accepts: {seen}"
    );
    for name in [
        "accepted_sent",
        "promises_sent",
        "leaderships_won",
        "prepares_started",
    ] {
        assert_eq!(counter(&seen, name), 0, "follower {name}: {seen}");
    }
    for node in nodes.iter().filter(|n| n.id != FOLLOWER) {
        let voter = stats(node.client_addr);
        assert_eq!(voter["follower"], json!(false));
        assert_eq!(
            counter(&voter, "votes_from_non_voters"),
            0,
            "node {} got a vote from a non-voter: {voter}",
            node.id
        );
    }

    // A voter dies: two voters are a quorum without the follower, and the follower follows.
    cluster.kill9(1);
    let alive: Vec<NodeInfo> = cluster.nodes().into_iter().filter(|n| n.id != 1).collect();
    put_many(&alive, "b", 40);
    assert_converged(&cluster, &alive, "with voter 1 down");
    cluster.restart(1);

    // The follower dies and comes back: it catches up.
    cluster.kill9(FOLLOWER);
    let voters: Vec<NodeInfo> = cluster
        .nodes()
        .into_iter()
        .filter(|n| n.id != FOLLOWER)
        .collect();
    put_many(&voters, "c", 40);
    cluster.restart(FOLLOWER);
    assert_converged(&cluster, &cluster.nodes(), "after the follower's restart");

    // The follower loses its whole data directory: it starts at once with empty state (it has
    // no votes to protect, so it does not re-learn) and catches up from the voters.
    cluster.kill9(FOLLOWER);
    let data = follower.config.parent().expect("node dir").join("data");
    std::fs::remove_dir_all(&data).expect("wipe the follower's data");
    std::fs::create_dir_all(&data).expect("recreate the follower's data dir");
    put_many(&voters, "d", 20);
    cluster.restart(FOLLOWER);
    assert_converged(
        &cluster,
        &cluster.nodes(),
        "after the follower lost its disk",
    );
    let after = stats(cluster.node(FOLLOWER).client_addr);
    assert_eq!(counter(&after, "groups_relearning"), 0, "{after}");
    assert!(counter(&after, "relearns_skipped_non_voter") > 0, "{after}");
    assert_eq!(counter(&after, "accepted_sent"), 0, "{after}");
}
