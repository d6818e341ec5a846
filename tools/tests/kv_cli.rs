//! Proves, with the real `paxring` binary and three real `paxring node` processes on 127.0.0.1:
//! one node's address is enough for `paxring kv` (not_leader answers carry the leader's client
//! address and name it "node N", never a debug form), and so is `--cluster DIR`; values are
//! binary-safe through `put KEY -`, `--value-file` and `get --value-only`, up to the node's
//! command limit exactly, and a larger one is refused naming the limit (by the client and by
//! the node); a cas that does not swap exits 4 with the value found; right after `kill -9` of
//! a group's leader `paxring kv put` retries the unreachable node until a new leader answers
//! (it used to fail at once); node logs hold no ANSI colour codes; warnings about a peer's
//! garbage are rate-limited with a count of those held back; `paxring wal verify|stat` take a
//! node's data directory; a node whose start fails leaves no `data/kv` behind; `paxring node
//! --help` points to `--print-default-config`; `paxring kv --help` gives the value limit in
//! bytes and the exit statuses.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

const LIMIT: usize = 262_144 - 64;

fn kv(target: &[&str], args: &[&str], stdin: Option<&[u8]>) -> (Option<i32>, Vec<u8>, String) {
    let all: Vec<&str> = ["kv"].iter().chain(target).chain(args).copied().collect();
    run_paxring_with(&all, stdin, &[], Duration::from_secs(60))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The node that leads the group of `key` per `id` answers (the group from the put answer).
fn leader_of_group(nodes: &[NodeInfo], group: usize) -> Option<u32> {
    nodes.iter().find_map(|n| {
        request(n.client_addr, &json!({"op":"id"}), Duration::from_secs(5))
            .ok()
            .and_then(|a| a["leaders"][group].as_u64())
            .map(|l| l as u32)
    })
}

/// Warning lines of `log` containing `needle`, with the count each says it held back.
fn limited_lines(log: &str, needle: &str) -> (usize, u64) {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    let held: u64 = lines
        .iter()
        .map(|l| {
            let (_, rest) = l.split_once("suppressed=").expect("a suppressed= field");
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().expect("a count")
        })
        .sum();
    (lines.len(), held)
}

/// Connects to a peer port, sends `bytes` (after a handshake as `as_peer`, when given) and
/// waits until the node closes the connection.
fn send_garbage(addr: std::net::SocketAddr, as_peer: Option<u32>, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).expect("connect to the peer port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if let Some(node_id) = as_peer {
        let hello = paxring_net::Hello {
            version: paxring_net::PROTOCOL_VERSION,
            status: paxring_net::HelloStatus::Hello,
            cluster_id: 7,
            node_id,
            max_frame_bytes: 1024,
        };
        stream.write_all(&hello.encode()).unwrap();
        let mut reply = [0u8; paxring_net::HELLO_BYTES];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(
            paxring_net::Hello::decode(&reply).unwrap().status,
            paxring_net::HelloStatus::Hello
        );
    }
    let _ = stream.write_all(bytes);
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
}

#[test]
fn kv_command_line_against_a_cluster() {
    let cluster = TestCluster::up_with_env(2, 2, &[("RUST_LOG", "info")]);
    let nodes = cluster.nodes();
    let all = cluster.addr_list();
    let dir = cluster.path().to_str().unwrap().to_string();

    // One address is enough: through each node alone, keys of both groups.
    for node in &nodes {
        let addr = node.client_addr.to_string();
        for i in 0..4 {
            let key = format!("one-{}-{i}", node.id);
            let (code, out, err) = kv(&["--addr", &addr], &["put", &key, "v"], None);
            assert_eq!(
                code,
                Some(0),
                "put {key} via node {}: {}{err}",
                node.id,
                text(&out)
            );
        }
    }
    // A node that does not lead a group answers not_leader with the leader's client address.
    let mut redirects = 0;
    for group_key in ["one-1-0", "one-1-1", "one-1-2", "one-1-3"] {
        for node in &nodes {
            let answer = request(
                node.client_addr,
                &json!({"op":"get","key":group_key}),
                Duration::from_secs(12),
            )
            .unwrap();
            if answer["error"] == json!("not_leader") && answer["leader"].is_u64() {
                let leader = answer["leader"].as_u64().unwrap() as u32;
                let leader_addr = cluster.node(leader).client_addr.to_string();
                assert_eq!(answer["leader_addr"], json!(leader_addr), "{answer}");
                let message = answer["message"].as_str().unwrap();
                assert!(
                    message.contains(&format!("leader: node {leader}, client address")),
                    "{message}"
                );
                assert!(!message.contains("Some(") && !message.contains("None"));
                redirects += 1;
            }
        }
    }
    assert!(redirects > 0, "some node was not the leader");

    // --cluster DIR reads the addresses; a wrong DIR says so.
    let (code, out, err) = kv(&["--cluster", &dir], &["get", "one-2-0"], None);
    assert!(
        code == Some(0) && text(&out).contains("\"value\":\"v\""),
        "{}{err}",
        text(&out)
    );
    let missing = cluster.path().join("nowhere");
    let (code, _, err) = kv(&["--cluster", missing.to_str().unwrap()], &["id"], None);
    assert!(code == Some(2) && err.contains("does not exist"), "{err}");

    // Binary values, from stdin and from a file, read back byte for byte.
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let (code, out, err) = kv(&["--addr", &all], &["put", "bin", "-"], Some(&bytes));
    assert_eq!(code, Some(0), "{}{err}", text(&out));
    let (code, out, err) = kv(&["--addr", &all], &["get", "--value-only", "bin"], None);
    assert!(code == Some(0) && out == bytes, "{err}");
    let (_, out, _) = kv(&["--addr", &all], &["get", "bin"], None);
    let answer: Value = serde_json::from_slice(&out).unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(answer["value"]["base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        decoded, bytes,
        "the JSON answer carries the bytes in base64"
    );
    let file = cluster.path().join("value.bin");
    std::fs::write(&file, &bytes[..5000]).unwrap();
    let file_arg = file.to_str().unwrap();
    let (code, _, err) = kv(
        &["--addr", &all],
        &["put", "binf", "--value-file", file_arg],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = kv(&["--addr", &all], &["get", "--value-only", "binf"], None);
    assert_eq!(out, &bytes[..5000]);
    let (code, _, err) = kv(
        &["--addr", &all],
        &["put", "binf", "--value-file", missing.to_str().unwrap()],
        None,
    );
    assert!(code == Some(2) && err.contains("does not exist"), "{err}");

    // A binary cas: swaps with the expected bytes; then does not swap, exits 4, says so.
    let cas = ["cas", "--expected-file", file_arg, "binf", "new"];
    let (code, out, err) = kv(&["--addr", &all], &cas, None);
    assert!(
        code == Some(0) && text(&out).contains("\"swapped\":true"),
        "{err}"
    );
    let (code, out, err) = kv(&["--addr", &all], &cas, None);
    assert_eq!(code, Some(4), "{}{err}", text(&out));
    assert!(
        err.contains("cas did not swap: \"binf\" holds \"new\""),
        "{err}"
    );

    // The command limit: key and value of exactly the limit commit; one byte more is refused
    // by the client, and by the node for a client that does not check.
    let (_, out, _) = kv(&["--addr", &all], &["id"], None);
    let id: Value = serde_json::from_str(text(&out).lines().next().unwrap()).unwrap();
    assert_eq!(id["response"]["command_bytes_max"], json!(LIMIT), "{id}");
    let edge = vec![b'e'; LIMIT - "edge".len()];
    let (code, out, err) = kv(&["--addr", &all], &["put", "edge", "-"], Some(&edge));
    assert_eq!(
        code,
        Some(0),
        "a command of exactly the limit: {}{err}",
        text(&out)
    );
    let (_, out, _) = kv(&["--addr", &all], &["get", "--value-only", "edge"], None);
    assert_eq!(out.len(), edge.len());
    let over = vec![b'o'; LIMIT - "edge".len() + 1];
    let (code, _, err) = kv(&["--addr", &all], &["put", "edge", "-"], Some(&over));
    assert!(
        code == Some(1) && err.contains("too large") && err.contains(&LIMIT.to_string()),
        "{err}"
    );
    let leader = leader_of_group(&nodes, 0);
    let raw_over = json!({"op":"put","key":"","value":{"base64":
        base64::engine::general_purpose::STANDARD.encode(vec![0u8; LIMIT + 1])}});
    let answers: Vec<Value> = nodes
        .iter()
        .map(|n| request(n.client_addr, &raw_over, Duration::from_secs(12)).unwrap())
        .collect();
    assert!(
        answers.iter().all(|a| a["error"] == json!("too_large")
            && a["message"]
                .as_str()
                .unwrap()
                .contains(&format!("command limit is {LIMIT} bytes"))),
        "leader {leader:?}: {answers:?}"
    );

    // kill -9 of the leader of a key's group: the put retries the unreachable node and the
    // stale not_leader hints until the new leader answers, through all addresses and
    // through one surviving node alone.
    let (_, out, _) = kv(&["--addr", &all], &["put", "after-kill", "0"], None);
    let group = serde_json::from_slice::<Value>(&out).unwrap()["group"]
        .as_u64()
        .unwrap() as usize;
    let victim = leader_of_group(&nodes, group).expect("a leader");
    cluster.kill9(victim);
    let killed_at = Instant::now();
    let (code, out, err) = kv(&["--addr", &all], &["put", "after-kill", "1"], None);
    let took = killed_at.elapsed();
    assert_eq!(
        code,
        Some(0),
        "put after kill -9 of the leader: {}{err}",
        text(&out)
    );
    let survivor = nodes.iter().find(|n| n.id != victim).unwrap();
    let (code, out, err) = kv(
        &["--addr", &survivor.client_addr.to_string()],
        &["put", "after-kill", "2"],
        None,
    );
    assert_eq!(
        code,
        Some(0),
        "via node {} alone: {}{err}",
        survivor.id,
        text(&out)
    );
    eprintln!("put right after kill -9 of leader node {victim} answered in {took:?}");

    // Logs are plain text (no ANSI colour) when they go to a file.
    for node in &nodes {
        let log = std::fs::read(cluster.path().join(format!("node-{}/node.log", node.id))).unwrap();
        assert!(
            text(&log).contains(" INFO "),
            "node {} logged at info",
            node.id
        );
        assert!(
            !log.contains(&0x1b),
            "node {}'s log holds ANSI codes",
            node.id
        );
    }

    // A peer's garbage: warnings rate-limited, with the count held back on the next line.
    let log_path = cluster
        .path()
        .join(format!("node-{}/node.log", survivor.id));
    let read_log = || std::fs::read_to_string(&log_path).unwrap();
    // As the third node (alive, so no dying connection of its own shares the limiter).
    let third = nodes
        .iter()
        .find(|n| n.id != victim && n.id != survivor.id)
        .unwrap()
        .id;
    let mut frame = paxring_net::encode_frame(1, 0, third, b"garbage").to_vec();
    let last = frame.len() - 1;
    frame[last] ^= 0x40;
    for (as_peer, bytes, needle) in [
        (None, vec![0x5au8; 64], "not a paxring handshake"),
        (Some(third), frame, "undecodable bytes from peer"),
    ] {
        let started = Instant::now();
        for _ in 0..20 {
            send_garbage(survivor.peer_addr, as_peer, &bytes);
        }
        let burst = started.elapsed();
        std::thread::sleep(Duration::from_millis(1100));
        send_garbage(survivor.peer_addr, as_peer, &bytes);
        let deadline = Instant::now() + Duration::from_secs(10);
        let (lines, held) = loop {
            let (lines, held) = limited_lines(&read_log(), needle);
            if lines as u64 + held >= 21 || Instant::now() >= deadline {
                break (lines, held);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            lines as u64 + held,
            21,
            "{needle}: every event logged or counted"
        );
        assert!(
            lines as u64 <= burst.as_secs() + 3,
            "{needle}: {lines} lines for 21 events in {burst:?}"
        );
    }

    // `paxring wal` takes a node's data directory (both cores).
    let (ok, out, err) = run_paxring(&["cluster", "down", "--dir", &dir], Duration::from_secs(60));
    assert!(ok, "{out}{err}");
    let data = cluster.path().join(format!("node-{}/data", survivor.id));
    let (code, out, err) = run_paxring_with(
        &["wal", "verify", data.to_str().unwrap()],
        None,
        &[],
        Duration::from_secs(60),
    );
    let out = text(&out);
    assert!(
        code == Some(0) && out.contains("core 0: clean") && out.contains("core 1: clean"),
        "{out}{err}"
    );
    let (code, out, _) = run_paxring_with(
        &["wal", "stat", "--json", data.to_str().unwrap()],
        None,
        &[],
        Duration::from_secs(60),
    );
    let stats: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!((code, stats.as_array().unwrap().len()), (Some(0), 2));
    let (code, _, err) = run_paxring_with(
        &["wal", "dump", missing.to_str().unwrap()],
        None,
        &[],
        Duration::from_secs(60),
    );
    assert!(code == Some(2) && err.contains("does not exist"), "{err}");
}

#[test]
fn a_failed_start_leaves_no_kv_dir_and_help_points_to_the_config_keys() {
    let (ok, help, _) = run_paxring(&["node", "--help"], Duration::from_secs(30));
    assert!(ok && help.contains("--print-default-config"), "{help}");
    // kv's help says the value limit with its unit, and the exit statuses.
    let (ok, help, _) = run_paxring(&["kv", "--help"], Duration::from_secs(30));
    assert!(
        ok && help.contains("262080 bytes") && help.contains("4  cas did not swap"),
        "{help}"
    );
    let (ok, help, _) = run_paxring(&["kv", "put", "--help"], Duration::from_secs(30));
    assert!(ok && help.contains("262080 bytes"), "{help}");
    let (ok, config, _) = run_paxring(&["node", "--print-default-config"], Duration::from_secs(30));
    assert!(
        ok && config.contains("batch_bytes_max = 262144"),
        "{config}"
    );

    // The peer port is taken: the node cannot start.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config
        .replace("127.0.0.1:7001", &busy.local_addr().unwrap().to_string())
        .replace("127.0.0.1:7101", &client.to_string())
        .replace("/var/lib/paxring/node-1", data.to_str().unwrap());
    let path = dir.path().join("node.toml");
    std::fs::write(&path, config).unwrap();
    let (code, _, err) = run_paxring_with(
        &["node", "--config", path.to_str().unwrap()],
        None,
        &[],
        Duration::from_secs(60),
    );
    assert!(code.is_some_and(|c| c != 0), "the start failed: {err}");
    assert!(
        !Path::new(&data).join("kv").exists(),
        "no data/kv left behind: {err}"
    );
}
