//! Proves, with three real `paxring node` processes on 127.0.0.1, that client sessions make a
//! resent request apply at most once: the same cas line (same client and seq) sent twice
//! answers the recorded result and does not swap again, even after the key was changed back in
//! between; an older seq of the session is answered `stale`; malformed session fields are
//! `bad_request`; `paxring kv --client-id --seq` resends under the given session; every replica
//! holds the same session table.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn ok(cluster: &TestCluster, nodes: &[NodeInfo], op: &Value) -> Value {
    match key_op(nodes, 0, op, Duration::from_secs(15)) {
        Outcome::Ok(answer) => answer,
        other => panic!("{op}: {other:?}\n{}", cluster.logs()),
    }
}

/// The answer without the instance that chose it (a resend is chosen at another instance).
fn result_of(answer: &Value) -> Value {
    let mut answer = answer.clone();
    answer.as_object_mut().unwrap().remove("instance");
    answer
}

#[test]
fn a_resent_cas_applies_once() {
    let cluster = TestCluster::up(1, 1);
    let nodes = cluster.nodes();
    let cas1 = json!({"op":"cas","key":"s","expected":null,"new":"one","client":42,"seq":1});
    let delete = json!({"op":"delete","key":"s"});
    let get = json!({"op":"get","key":"s"});

    let first = ok(&cluster, &nodes, &cas1);
    assert_eq!(first["swapped"], json!(true), "{first}");
    assert_eq!(first["value"], Value::Null, "{first}");
    // Another client removes the key: executing the cas again would swap again.
    ok(&cluster, &nodes, &delete);
    let second = ok(&cluster, &nodes, &cas1);
    assert_eq!(result_of(&second), result_of(&first), "the recorded answer");
    assert_eq!(
        ok(&cluster, &nodes, &get)["value"],
        Value::Null,
        "the resent cas did not swap again"
    );

    // The next request of the session executes; then seq 1 is stale.
    let cas2 = json!({"op":"cas","key":"s","expected":null,"new":"two","client":42,"seq":2});
    assert_eq!(ok(&cluster, &nodes, &cas2)["swapped"], json!(true));
    match key_op(&nodes, 0, &cas1, Duration::from_secs(15)) {
        Outcome::Fail(answer) => {
            let answer: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(answer["error"], json!("stale"), "{answer}");
            assert!(
                answer["message"]
                    .as_str()
                    .unwrap()
                    .contains("seq 1 already superseded by 2"),
                "{answer}"
            );
        }
        other => panic!("seq 1 after seq 2: {other:?}"),
    }
    assert_eq!(ok(&cluster, &nodes, &get)["value"], json!("two"));

    // Malformed session fields are refused before anything is proposed.
    for bad in [
        json!({"op":"put","key":"s","value":"x","client":42}),
        json!({"op":"put","key":"s","value":"x","client":0,"seq":3}),
        json!({"op":"id","client":42,"seq":3}),
    ] {
        let answer = request(nodes[0].client_addr, &bad, Duration::from_secs(5)).unwrap();
        assert_eq!(answer["error"], json!("bad_request"), "{bad} -> {answer}");
    }

    // The command line resends under a given session.
    let addrs = cluster.addr_list();
    let cas_cli = [
        "kv",
        "--addr",
        &addrs,
        "--client-id",
        "99",
        "--seq",
        "1",
        "cas",
        "--absent",
        "c",
        "v1",
    ];
    let (done, stdout, stderr) = run_paxring(&cas_cli, Duration::from_secs(30));
    assert!(
        done && stdout.contains("\"swapped\":true"),
        "{stdout}{stderr}"
    );
    ok(&cluster, &nodes, &json!({"op":"delete","key":"c"}));
    let (done, stdout, stderr) = run_paxring(&cas_cli, Duration::from_secs(30));
    assert!(
        done && stdout.contains("\"swapped\":true"),
        "{stdout}{stderr}"
    );
    assert_eq!(
        ok(&cluster, &nodes, &json!({"op":"get","key":"c"}))["value"],
        Value::Null,
        "the resent command-line cas did not swap again"
    );

    // Every replica applied the same log, so holds the same two sessions.
    let (converged, readings) = wait_converged(&nodes, Duration::from_secs(30));
    assert!(converged, "replicas differ: {readings:?}");
    for node in &nodes {
        let answer = request(
            node.client_addr,
            &json!({"op":"digest"}),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(answer["digests"][0]["sessions"], json!(2), "{answer}");
    }
}
