//! Proves that the durable-write counters the cluster benchmark reports are exact: a small
//! 3-node cluster runs with the WAL's blocking backend (each durable write is one `pwritev2`
//! with RWF_DSYNC, visible to the kernel's syscall accounting) under `strace -f -c`, and for
//! every node process the number of `pwritev2` calls strace counted must equal the durable
//! writes the node reported at exit.
//!
//! Needs `strace`. Without it the test fails with a message, unless PAXRING_SKIP_STRACE=1 says
//! to skip it. Bounded: the run is a few seconds and is killed (by its own handle) after 120 s.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// strace's `-c` summary: syscall name -> calls.
fn strace_calls(path: &Path) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read strace summary {}: {e}", path.display()));
    let mut calls = HashMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // "% time seconds usecs/call calls [errors] syscall"
        if cols.len() < 5 || cols[0].parse::<f64>().is_err() {
            continue;
        }
        let name = cols[cols.len() - 1];
        if name == "total" {
            continue;
        }
        let n: u64 = cols[3]
            .parse()
            .unwrap_or_else(|_| panic!("unexpected strace line: {line}"));
        calls.insert(name.to_string(), n);
    }
    calls
}

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn reported_durable_writes_equal_syscalls() {
    if !strace_available() {
        if std::env::var("PAXRING_SKIP_STRACE").as_deref() == Ok("1") {
            eprintln!("SKIPPED: strace is not installed and PAXRING_SKIP_STRACE=1");
            return;
        }
        panic!(
            "strace is not installed: this test counts the WAL's system calls with `strace -f -c`. \
             Install it (e.g. `apt-get install strace`) or set PAXRING_SKIP_STRACE=1 to skip."
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("run.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_paxring-bench"))
        .args([
            "cluster",
            "--blocking-wal",
            "--skip-ceilings",
            "--groups",
            "4",
            "--clients",
            "16",
            "--value-bytes",
            "200",
            "--seconds",
            "1",
            "--warmup",
            "0.2",
        ])
        .arg("--dir")
        .arg(dir.path())
        .arg("--strace-dir")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start paxring-bench");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            // Only the process this test started; its Cluster reaps the nodes it started.
            let _ = child.kill();
            let _ = child.wait();
            panic!("paxring-bench did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "paxring-bench failed: {status}");

    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    let point = &run["points"][0];
    assert!(
        point["commits"].as_u64().unwrap_or(0) > 0,
        "the run committed nothing: {point}"
    );
    let finals = run["nodes_final"].as_array().expect("nodes_final");
    assert_eq!(finals.len(), 3, "three nodes: {finals:?}");
    for node in finals {
        let id = node["id"].as_u64().expect("id");
        let reported = node["durable_writes"].as_u64().expect("durable_writes");
        let calls = strace_calls(&dir.path().join(format!("node-{id}.strace")));
        let pwritev2 = calls.get("pwritev2").copied().unwrap_or(0);
        eprintln!("node {id}: reported {reported} durable writes; strace counted {calls:?}");
        assert!(reported > 0, "node {id} reported no durable write");
        assert_eq!(
            pwritev2, reported,
            "node {id}: {pwritev2} pwritev2(RWF_DSYNC) calls but {reported} durable writes reported"
        );
        assert_eq!(
            node["wal_writes"].as_u64(),
            Some(reported),
            "node {id}: in DSYNC mode every WAL write is one durable write"
        );
    }
}
