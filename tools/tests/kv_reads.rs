//! Proves, with three real `paxring node` processes on 127.0.0.1, the KV sample's reads
//! without a log write (docs/CLIENT.md, `get` modes): a get answers the same bytes in mode
//! `log`, `index`, `lease` and without a mode (but for `instance`), present or absent key, text
//! or binary value; a node that does not lead the key's group refuses a get in every mode
//! exactly as it refuses a put (`not_leader`, same leader and address); an unknown mode is
//! `bad_request`; a session get served by `lease` or `index` records nothing (no session, no
//! applied instance) while a `log` one does; `paxring kv get --mode` and `kv load --get-mode`
//! take the modes; and a `lease` or `index` get makes no WAL write on any node (the node's own
//! counters) while a `log` get makes one on every replica.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MODES: [Option<&str>; 4] = [None, Some("log"), Some("index"), Some("lease")];

fn get_line(key: &str, mode: Option<&str>) -> Value {
    let mut line = json!({"op":"get","key":key});
    if let Some(mode) = mode {
        line["mode"] = json!(mode);
    }
    line
}

fn ok(cluster: &TestCluster, nodes: &[NodeInfo], op: &Value) -> Value {
    match key_op(nodes, 0, op, Duration::from_secs(20)) {
        Outcome::Ok(answer) => answer,
        other => panic!("{op}: {other:?}\n{}", cluster.logs()),
    }
}

/// The answer without `instance` (the log path names the instance that chose the get, a read
/// the applied point it was served at), as text: the bytes a client compares.
fn without_instance(answer: &Value) -> String {
    let mut answer = answer.clone();
    answer
        .as_object_mut()
        .expect("an object")
        .remove("instance")
        .expect("an instance");
    answer.to_string()
}

/// The node every node names as the leader of `group`, once they agree (bounded wait).
fn agreed_leader(cluster: &TestCluster, nodes: &[NodeInfo], group: usize) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let named: Vec<Option<u64>> = nodes
            .iter()
            .map(|n| {
                request(n.client_addr, &json!({"op":"id"}), Duration::from_secs(5))
                    .ok()
                    .and_then(|a| a["leaders"][group].as_u64())
            })
            .collect();
        if let Some(Some(leader)) = named.first() {
            if named.iter().all(|n| *n == Some(*leader)) {
                return *leader as u32;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader of group {group}: {named:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sum over a node's cores of a counter (`path` into each core object).
fn core_sum(stats: &Value, path: &[&str]) -> u64 {
    stats["cores"]
        .as_array()
        .expect("cores in stats")
        .iter()
        .map(|core| {
            path.iter()
                .fold(core, |v, p| &v[*p])
                .as_u64()
                .unwrap_or_else(|| panic!("{path:?} in {core}"))
        })
        .sum()
}

/// One node's WAL counters: (writing rounds, durable writes, records written).
fn wal_counters(stats: &Value) -> (u64, u64, u64) {
    (
        core_sum(stats, &["write_rounds"]),
        core_sum(stats, &["durable_writes"]),
        core_sum(stats, &["records_written"]),
    )
}

/// What a node put through the log: (instances applied, Accepts sent, Accepted sent).
fn log_entries(stats: &Value) -> (u64, u64, u64) {
    (
        core_sum(stats, &["protocol", "instances_applied"]),
        core_sum(stats, &["protocol", "accepts_sent"]),
        core_sum(stats, &["protocol", "accepted_sent"]),
    )
}

/// The reads a node served: (lease, index).
fn reads_served(stats: &Value) -> (u64, u64) {
    (
        core_sum(stats, &["protocol", "reads_lease"]),
        core_sum(stats, &["protocol", "reads_index"]),
    )
}

/// Every node's stats, after the cores published what they did so far (they publish every
/// 20 ms).
fn all_stats(nodes: &[NodeInfo]) -> Vec<Value> {
    std::thread::sleep(Duration::from_millis(300));
    nodes.iter().map(|n| stats(n.client_addr)).collect()
}

fn session_count(node: &NodeInfo) -> u64 {
    let answer = request(
        node.client_addr,
        &json!({"op":"digest"}),
        Duration::from_secs(5),
    )
    .unwrap();
    answer["digests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["sessions"].as_u64().unwrap())
        .sum()
}

#[test]
fn gets_answer_alike_in_every_mode_and_followers_refuse_them_as_puts() {
    let cluster = TestCluster::up(2, 1);
    let nodes = cluster.nodes();
    let bytes: Vec<u8> = (0..3000u32).map(|i| (i * 13 % 256) as u8).collect();
    let binary = json!({"base64": base64::engine::general_purpose::STANDARD.encode(&bytes)});
    let mut keys: Vec<(String, Value)> = (0..4)
        .map(|i| (format!("key-{i}"), json!(format!("value {i}"))))
        .collect();
    keys.push(("bin".into(), binary.clone()));
    for (key, value) in &keys {
        ok(
            &cluster,
            &nodes,
            &json!({"op":"put","key":key,"value":value}),
        );
    }
    keys.push(("missing-1".into(), Value::Null));
    keys.push(("missing-2".into(), Value::Null));

    // Every mode answers the same bytes (a missing key: "value":null, as the log path says).
    for (key, value) in &keys {
        let answers: Vec<Value> = MODES
            .iter()
            .map(|mode| ok(&cluster, &nodes, &get_line(key, *mode)))
            .collect();
        let log = without_instance(&answers[1]);
        for (mode, answer) in MODES.iter().zip(&answers) {
            assert_eq!(without_instance(answer), log, "{key} in mode {mode:?}");
            assert_eq!(&answer["value"], value, "{key} in mode {mode:?}: {answer}");
            assert!(answer["instance"].is_u64(), "{answer}");
        }
    }

    // A node that does not lead the key's group refuses a get in every mode exactly as it
    // refuses a put: not_leader, naming the same leader and client address.
    let mut compared = 0;
    for (key, _) in &keys[..2] {
        let group = ok(&cluster, &nodes, &get_line(key, Some("log")))["group"]
            .as_u64()
            .unwrap() as usize;
        let mut last = String::new();
        let mut alike = false;
        // A leadership change between two requests would change the hint: a few tries.
        for _ in 0..3 {
            let leader = agreed_leader(&cluster, &nodes, group);
            let mut all_alike = true;
            for follower in nodes.iter().filter(|n| n.id != leader) {
                let put = request(
                    follower.client_addr,
                    &json!({"op":"put","key":key,"value":"not proposed"}),
                    Duration::from_secs(12),
                )
                .unwrap();
                assert_eq!(put["error"], json!("not_leader"), "{put}");
                assert_eq!(put["leader"], json!(leader), "{put}");
                for mode in MODES {
                    let mut line = get_line(key, mode);
                    line["client"] = json!(5);
                    line["seq"] = json!(1);
                    let get =
                        request(follower.client_addr, &line, Duration::from_secs(12)).unwrap();
                    if get != put {
                        all_alike = false;
                        last = format!("node {}: get {line} -> {get}, put -> {put}", follower.id);
                    }
                }
            }
            if all_alike {
                alike = true;
                compared += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(alike, "{last}");
    }
    assert_eq!(compared, 2);
    assert_eq!(
        ok(&cluster, &nodes, &get_line("key-0", None))["value"],
        json!("value 0"),
        "the refused put was not proposed"
    );

    // An unknown mode is bad_request, naming it and the valid ones.
    for node in &nodes {
        let answer = request(
            node.client_addr,
            &json!({"op":"get","key":"key-0","mode":"fast"}),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(answer["error"], json!("bad_request"), "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains(r#"unknown get mode "fast""#)
                && message.contains(r#""log", "index", "lease" or "stale""#),
            "{message}"
        );
    }

    // Session gets served by lease or index record nothing and apply nothing: every replica
    // keeps its applied point, digest and (empty) session table; a log one records its session.
    let (converged, before) = wait_converged(&nodes, Duration::from_secs(30));
    assert!(converged, "replicas differ: {before:?}");
    assert!(nodes.iter().all(|n| session_count(n) == 0));
    let mut seq = 0;
    for (key, value) in &keys {
        for mode in ["lease", "index"] {
            seq += 1;
            let mut line = get_line(key, Some(mode));
            line["client"] = json!(77);
            line["seq"] = json!(seq);
            assert_eq!(&ok(&cluster, &nodes, &line)["value"], value, "{line}");
        }
    }
    let (converged, after) = wait_converged(&nodes, Duration::from_secs(30));
    assert!(converged, "replicas differ: {after:?}");
    assert_eq!(
        after, before,
        "gets in lease or index mode applied something"
    );
    for node in &nodes {
        assert_eq!(
            session_count(node),
            0,
            "node {} recorded a session",
            node.id
        );
    }
    let mut line = get_line("key-1", Some("log"));
    line["client"] = json!(77);
    line["seq"] = json!(seq + 1);
    assert_eq!(ok(&cluster, &nodes, &line)["value"], json!("value 1"));
    let (converged, logged) = wait_converged(&nodes, Duration::from_secs(30));
    assert!(converged, "replicas differ: {logged:?}");
    assert_ne!(logged, before, "a log get is applied");
    for node in &nodes {
        assert_eq!(session_count(node), 1, "node {}", node.id);
    }

    // The command line: --mode for get (default lease), --get-mode for load.
    let all = cluster.addr_list();
    let mut printed = Vec::new();
    for mode in [None, Some("log"), Some("index"), Some("lease")] {
        let mut args = vec!["kv", "--addr", &all, "get", "key-2"];
        if let Some(mode) = mode {
            args.extend(["--mode", mode]);
        }
        let (done, stdout, stderr) = run_paxring(&args, Duration::from_secs(60));
        assert!(done, "get --mode {mode:?}: {stdout}{stderr}");
        let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(answer["value"], json!("value 2"), "{answer}");
        printed.push(without_instance(&answer));
        let (code, out, stderr) = run_paxring_with(
            &[
                "kv",
                "--addr",
                &all,
                "get",
                "--value-only",
                "--mode",
                mode.unwrap_or("lease"),
                "bin",
            ],
            None,
            &[],
            Duration::from_secs(60),
        );
        assert!(code == Some(0) && out == bytes, "{stderr}");
    }
    assert!(printed.windows(2).all(|w| w[0] == w[1]), "{printed:?}");
    let (done, stdout, stderr) = run_paxring(
        &["kv", "--addr", &all, "get", "--mode", "fast", "key-2"],
        Duration::from_secs(30),
    );
    assert!(
        !done && stderr.contains("'fast'") && stderr.contains("log, index, lease"),
        "{stdout}{stderr}"
    );
    let (done, help, _) = run_paxring(&["kv", "get", "--help"], Duration::from_secs(30));
    assert!(done && help.contains("--mode") && help.contains("[default: lease]"));
    for (flag, mode) in [
        (None, "lease"),
        (Some("index"), "index"),
        (Some("log"), "log"),
    ] {
        let history = cluster.path().join(format!("history-{mode}.jsonl"));
        let mut args = vec![
            "kv",
            "--addr",
            &all,
            "load",
            "--clients",
            "2",
            "--seconds",
            "1",
            "--keys",
            "4",
            "--seed",
            "3",
            "--history",
            history.to_str().unwrap(),
        ];
        if let Some(flag) = flag {
            args.extend(["--get-mode", flag]);
        }
        let (done, stdout, stderr) = run_paxring(&args, Duration::from_secs(60));
        assert!(done, "load --get-mode {mode}: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!("get mode {mode}:")),
            "the report names the mode: {stdout}"
        );
        let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(report["get_mode"], json!(mode), "{report}");
        assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
        let gets = std::fs::read_to_string(&history)
            .unwrap()
            .lines()
            .filter(|l| l.contains(r#""op":"get""#) && l.contains(r#""outcome":"ok""#))
            .count();
        assert!(gets > 0, "load --get-mode {mode} made gets");
    }
}

#[test]
fn a_lease_or_index_get_writes_nothing_and_a_log_get_writes_everywhere() {
    const GETS: u64 = 40;
    let cluster = TestCluster::up(1, 1);
    let nodes = cluster.nodes();
    ok(&cluster, &nodes, &json!({"op":"put","key":"k","value":"v"}));
    let (converged, readings) = wait_converged(&nodes, Duration::from_secs(30));
    assert!(converged, "replicas differ: {readings:?}");
    let leader = cluster.node(agreed_leader(&cluster, &nodes, 0));
    let get_at_leader = |mode: &str| {
        let answer = request(
            leader.client_addr,
            &get_line("k", Some(mode)),
            Duration::from_secs(12),
        )
        .unwrap();
        assert_eq!(answer["value"], json!("v"), "{mode}: {answer}");
    };
    // The lease is up.
    get_at_leader("lease");
    let before = all_stats(&nodes);

    for _ in 0..GETS {
        get_at_leader("lease");
    }
    for _ in 0..GETS {
        get_at_leader("index");
    }
    let reads = all_stats(&nodes);
    for (node, (before, after)) in nodes.iter().zip(before.iter().zip(&reads)) {
        // Nothing went through the log: no instance chosen, no Accept sent or accepted. (The
        // WAL itself may still take a background record meanwhile, a purge pass's log-base
        // record or chosen marks, so its counters are not compared here.)
        assert_eq!(
            log_entries(after),
            log_entries(before),
            "node {}: (instances applied, Accepts sent, Accepted sent) moved over {} lease and {} index gets",
            node.id,
            GETS,
            GETS
        );
    }
    let leader_at = nodes.iter().position(|n| n.id == leader.id).unwrap();
    let (lease_0, index_0) = reads_served(&before[leader_at]);
    let (lease_1, index_1) = reads_served(&reads[leader_at]);
    assert_eq!(
        (lease_1 - lease_0) + (index_1 - index_0),
        2 * GETS,
        "the leader served every get as a read: {}",
        reads[leader_at]
    );
    // Index gets are always read index; a lease get without a valid lease falls back to it.
    assert!(index_1 - index_0 >= GETS, "{}", reads[leader_at]);
    assert!(lease_1 > lease_0, "some get was served by lease");

    for _ in 0..GETS {
        get_at_leader("log");
    }
    // Each log get (one at a time) is chosen in its own instance: a write on every replica.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logged = all_stats(&nodes);
        let wrote: Vec<(u64, u64)> = reads
            .iter()
            .zip(&logged)
            .map(|(before, after)| {
                let (_, durable_0, records_0) = wal_counters(before);
                let (_, durable_1, records_1) = wal_counters(after);
                (durable_1 - durable_0, records_1 - records_0)
            })
            .collect();
        if wrote
            .iter()
            .all(|(durable, records)| *durable >= GETS && *records >= GETS)
        {
            assert_eq!(
                reads_served(&logged[leader_at]),
                reads_served(&reads[leader_at]),
                "log gets are not reads"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{GETS} log gets: (durable writes, records) per node {wrote:?}"
        );
    }
}
