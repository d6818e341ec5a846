//! Proves, with real `paxring node` processes on 127.0.0.1: a node restarted with a wrong
//! cluster id is refused by its peers (they count refused handshakes), cannot commit or apply
//! what the others commit, while the two right nodes keep committing; a node whose KV snapshot
//! is corrupt refuses to start with a clear error; a bad node file is refused with the field
//! to fix.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn refused_handshakes(node: &NodeInfo) -> u64 {
    stats(node.client_addr)["net"]["handshakes_refused"]
        .as_u64()
        .expect("net.handshakes_refused")
}

#[test]
fn wrong_cluster_id_is_refused() {
    let mut cluster = TestCluster::up(1, 1);
    let nodes = cluster.nodes();
    assert!(
        matches!(put(&nodes, 0, "before", "1"), Outcome::Ok(_)),
        "{}",
        cluster.logs()
    );

    cluster.kill9(3);
    let config = cluster.node(3).config;
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("cluster_id = 7"), "{text}");
    std::fs::write(&config, text.replace("cluster_id = 7", "cluster_id = 99")).unwrap();
    // Its own data directory says cluster 7: the node refuses to start with it.
    let dir_arg = cluster.path().to_str().unwrap().to_string();
    let (ok, _, _) = run_paxring(
        &[
            "cluster",
            "restart",
            "--dir",
            &dir_arg,
            "--node",
            "3",
            "--wait-seconds",
            "10",
        ],
        Duration::from_secs(30),
    );
    let log = std::fs::read_to_string(cluster.path().join("node-3").join("node.log")).unwrap();
    assert!(
        !ok && log.contains("belongs to cluster 7 node 3"),
        "a data dir of another cluster is refused:\n{log}"
    );
    // With a directory of its own it starts, and the peers refuse its handshake.
    let data = cluster.path().join("node-3").join("data");
    std::fs::rename(&data, cluster.path().join("node-3").join("data-cluster-7")).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let refused_before: u64 = nodes[..2].iter().map(refused_handshakes).sum();
    cluster.restart(3);
    let intruder = cluster.node(3);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let refused: u64 = nodes[..2].iter().map(refused_handshakes).sum();
        if refused > refused_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refused handshake counted\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The right nodes keep committing.
    let right = &nodes[..2];
    for i in 0..5 {
        let outcome = put(right, i % 2, &format!("after{i}"), "2");
        assert!(
            matches!(outcome, Outcome::Ok(_)),
            "{outcome:?}\n{}",
            cluster.logs()
        );
    }
    // The intruder never commits a proposal of its own.
    let probe = json!({"op":"put","key":"intruder","value":"x"});
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        if let Ok(answer) = request(intruder.client_addr, &probe, Duration::from_secs(12)) {
            assert_ne!(
                answer["ok"],
                json!(true),
                "the intruder committed: {answer}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // And it does not apply what the right nodes chose.
    std::thread::sleep(Duration::from_secs(1));
    let good = digests(nodes[0].client_addr).unwrap();
    let bad = digests(intruder.client_addr).unwrap();
    assert!(
        bad[0].0 < good[0].0,
        "the intruder applied as far as the cluster: {bad:?} vs {good:?}"
    );
    let answer = request(
        nodes[0].client_addr,
        &json!({"op":"get","key":"intruder"}),
        Duration::from_secs(12),
    );
    if let Ok(answer) = answer {
        if answer["ok"] == json!(true) {
            assert!(
                answer["value"].is_null(),
                "the intruder's write reached the cluster: {answer}"
            );
        }
    }
}

#[test]
fn corrupt_snapshot_and_bad_config_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("node.toml");
    let node_file = |extra: &str| {
        format!(
            "client_listen = \"127.0.0.1:0\"\n\n[node]\nnode_id = 1\ncluster_id = 3\nlisten = \"127.0.0.1:0\"\n\
             data_dir = {data:?}\ngroups = 2\npin_cores = false\n{extra}"
        )
    };
    std::fs::write(&file, node_file("pipeline_depth = 0\n")).unwrap();
    let (ok, _, stderr) = run_paxring(
        &["node", "--config", file.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(!ok);
    assert!(
        stderr.contains("pipeline_depth") && stderr.contains("fix:"),
        "{stderr}"
    );

    std::fs::create_dir_all(data.join("kv")).unwrap();
    std::fs::write(
        data.join("kv/group-1.snap"),
        b"PXKVSNP1 this is not a snapshot",
    )
    .unwrap();
    std::fs::write(&file, node_file("")).unwrap();
    let (ok, _, stderr) = run_paxring(
        &["node", "--config", file.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(!ok, "a node with a corrupt snapshot must not start");
    assert!(
        stderr.contains("group-1.snap") && stderr.contains("corrupt"),
        "{stderr}"
    );
}
