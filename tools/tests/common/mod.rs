//! Shared harness of the cluster tests: starts a local cluster of real `paxring node` processes
//! through `paxring cluster up`, talks the KV client protocol to them, and kills every process
//! it started when dropped.
//!
//! Owns: the test cluster's temp dir and processes. Never: signals a pid it did not start (it
//! checks that the pid still runs `paxring node` first); every wait is bounded.
#![allow(dead_code)]

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The paxring executable under test.
pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_paxring")
}

/// One node of cluster.json.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: u32,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub pid: u32,
    pub config: PathBuf,
}

/// A running test cluster; dropping it kills every node (and every extra child) it started.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub children: Vec<Child>,
    started_pids: Vec<u32>,
}

/// Runs the paxring command with `args`, bounded by `timeout`; returns (success, stdout, stderr).
pub fn run_paxring(args: &[&str], timeout: Duration) -> (bool, String, String) {
    let (code, stdout, stderr) = run_paxring_with(args, None, &[], timeout);
    (
        code == Some(0),
        String::from_utf8_lossy(&stdout).into_owned(),
        stderr,
    )
}

/// Runs the paxring command with `args`, `stdin` as its standard input (none: empty) and
/// `env` added to its environment, bounded by `timeout`; returns (exit code, None when killed
/// or timed out; stdout bytes; stderr).
pub fn run_paxring_with(
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
    timeout: Duration,
) -> (Option<i32>, Vec<u8>, String) {
    let mut child = Command::new(exe())
        .args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paxring");
    // Feed stdin and drain stdout/stderr on threads, so that no pipe fills up.
    let feeder = stdin.map(|bytes| {
        let bytes = bytes.to_vec();
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = out_pipe.read_to_end(&mut bytes);
        bytes
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err_pipe.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait paxring") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    let stdout = out_reader.join().unwrap();
    let mut stderr = err_reader.join().unwrap();
    if status.is_none() {
        stderr.push_str(&format!("\n(timed out after {timeout:?})"));
    }
    (status.and_then(|s| s.code()), stdout, stderr)
}

/// True when `pid` is alive and runs `paxring node` (same test as `paxring cluster down`).
pub fn runs_paxring_node(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_paxring = args
        .first()
        .map(|a| a.ends_with(b"/paxring") || *a == b"paxring")
        .unwrap_or(false);
    let is_node = args.get(1).map(|a| *a == b"node").unwrap_or(false);
    let not_zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    is_paxring && is_node && not_zombie
}

impl TestCluster {
    /// `paxring cluster up` with 3 nodes in a fresh temp dir.
    pub fn up(groups: u32, cores: usize) -> TestCluster {
        TestCluster::up_with_env(groups, cores, &[])
    }

    /// `paxring cluster up` with 3 nodes in a fresh temp dir, `env` added to the environment
    /// of `cluster up` (so of every node it starts, e.g. `RUST_LOG`).
    pub fn up_with_env(groups: u32, cores: usize, env: &[(&str, &str)]) -> TestCluster {
        TestCluster::up_with_followers(groups, cores, 0, env)
    }

    /// `paxring cluster up` with 3 voting nodes and `followers` non-voting ones (ids 4..) in a
    /// fresh temp dir, `env` added to the environment of every node.
    pub fn up_with_followers(
        groups: u32,
        cores: usize,
        followers: u32,
        env: &[(&str, &str)],
    ) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("paxring-cluster-")
            .tempdir()
            .expect("temp dir");
        let mut cluster = TestCluster {
            dir,
            children: Vec::new(),
            started_pids: Vec::new(),
        };
        let dir_arg = cluster.dir.path().to_str().unwrap().to_string();
        let (code, stdout, stderr) = run_paxring_with(
            &[
                "cluster",
                "up",
                "--nodes",
                "3",
                "--followers",
                &followers.to_string(),
                "--groups",
                &groups.to_string(),
                "--cores",
                &cores.to_string(),
                "--cluster-id",
                "7",
                "--dir",
                &dir_arg,
                "--wait-seconds",
                "30",
            ],
            None,
            env,
            Duration::from_secs(60),
        );
        cluster.remember_pids();
        assert!(
            code == Some(0),
            "cluster up failed:\n{}\n{stderr}\n{}",
            String::from_utf8_lossy(&stdout),
            cluster.logs()
        );
        cluster
    }

    fn remember_pids(&mut self) {
        if let Ok(nodes) = self.try_nodes() {
            for node in nodes {
                if !self.started_pids.contains(&node.pid) {
                    self.started_pids.push(node.pid);
                }
            }
        }
    }

    fn try_nodes(&self) -> Result<Vec<NodeInfo>, String> {
        let text = std::fs::read_to_string(self.dir.path().join("cluster.json"))
            .map_err(|e| e.to_string())?;
        let file: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Ok(file["nodes"]
            .as_array()
            .ok_or("no nodes")?
            .iter()
            .map(|n| NodeInfo {
                id: n["id"].as_u64().unwrap() as u32,
                client_addr: n["client_addr"].as_str().unwrap().parse().unwrap(),
                peer_addr: n["peer_addr"].as_str().unwrap().parse().unwrap(),
                pid: n["pid"].as_u64().unwrap() as u32,
                config: PathBuf::from(n["config"].as_str().unwrap()),
            })
            .collect())
    }

    /// The nodes as cluster.json lists them now.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.try_nodes().expect("cluster.json")
    }

    pub fn node(&self, id: u32) -> NodeInfo {
        self.nodes()
            .into_iter()
            .find(|n| n.id == id)
            .expect("node id")
    }

    /// Every node's client address, comma-separated.
    pub fn addr_list(&self) -> String {
        self.nodes()
            .iter()
            .map(|n| n.client_addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes().iter().map(|n| n.client_addr).collect()
    }

    /// `kill -9` of one node (only if its pid still runs paxring node).
    pub fn kill9(&self, id: u32) {
        let node = self.node(id);
        assert!(
            runs_paxring_node(node.pid),
            "node {id} (pid {}) is not running",
            node.pid
        );
        kill(Pid::from_raw(node.pid as i32), Signal::SIGKILL).expect("kill -9");
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs_paxring_node(node.pid) {
            assert!(Instant::now() < deadline, "node {id} survived SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `paxring cluster restart --node ID`.
    pub fn restart(&mut self, id: u32) {
        let dir_arg = self.dir.path().to_str().unwrap().to_string();
        let (ok, stdout, stderr) = run_paxring(
            &[
                "cluster",
                "restart",
                "--dir",
                &dir_arg,
                "--node",
                &id.to_string(),
                "--wait-seconds",
                "30",
            ],
            Duration::from_secs(60),
        );
        self.remember_pids();
        assert!(
            ok,
            "restart of node {id} failed:\n{stdout}\n{stderr}\n{}",
            self.logs()
        );
    }

    /// Every node's log (for failure messages).
    pub fn logs(&self) -> String {
        let mut text = String::new();
        let ids: Vec<u32> = self
            .try_nodes()
            .map(|nodes| nodes.iter().map(|n| n.id).collect())
            .unwrap_or_else(|_| vec![1, 2, 3]);
        for id in ids {
            let path = self.dir.path().join(format!("node-{id}/node.log"));
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            text.push_str(&format!("--- node {id} log (last lines) ---\n"));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.remember_pids();
        for pid in &self.started_pids {
            if runs_paxring_node(*pid) {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// One request line to `addr`, one response line back (bounded by `timeout`).
pub fn request(addr: SocketAddr, request: &Value, timeout: Duration) -> Result<Value, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(request).unwrap();
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| format!("write {addr}: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .take(16 << 20)
        .read_line(&mut answer)
        .map_err(|e| format!("read {addr}: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("{addr} answered {answer:?}: {e}"))
}

/// The outcome of a key operation through the harness's own client.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Ok(Value),
    Fail(String),
    Unknown(String),
}

/// Runs a key operation starting at `entry`, following not_leader to the named node among
/// `addrs` (ids are 1-based positions in cluster.json), retrying refusals for `retry_for`.
pub fn key_op(nodes: &[NodeInfo], entry: usize, op: &Value, retry_for: Duration) -> Outcome {
    let deadline = Instant::now() + retry_for;
    let mut target = entry;
    let mut last = String::new();
    loop {
        if Instant::now() >= deadline {
            return Outcome::Fail(last);
        }
        match request(nodes[target].client_addr, op, Duration::from_secs(12)) {
            Err(e) if e.starts_with("connect") => {
                last = e;
                target = (target + 1) % nodes.len();
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Outcome::Unknown(e),
            Ok(answer) if answer["ok"] == json!(true) => return Outcome::Ok(answer),
            Ok(answer) => {
                last = answer.to_string();
                match answer["error"].as_str() {
                    Some("not_leader") => {
                        match answer["leader"]
                            .as_u64()
                            .and_then(|l| nodes.iter().position(|n| u64::from(n.id) == l))
                        {
                            Some(leader) if leader != target => target = leader,
                            _ => {
                                target = (target + 1) % nodes.len();
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                    Some("overloaded") | Some("stopped") => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Some("unknown") => return Outcome::Unknown(last),
                    _ => return Outcome::Fail(last),
                }
            }
        }
    }
}

pub fn put(nodes: &[NodeInfo], entry: usize, key: &str, value: &str) -> Outcome {
    key_op(
        nodes,
        entry,
        &json!({"op":"put","key":key,"value":value}),
        Duration::from_secs(15),
    )
}

pub fn get(nodes: &[NodeInfo], entry: usize, key: &str) -> Outcome {
    key_op(
        nodes,
        entry,
        &json!({"op":"get","key":key}),
        Duration::from_secs(15),
    )
}

/// Per group (applied_next, digest) of one node.
pub fn digests(addr: SocketAddr) -> Result<Vec<(u64, u64)>, String> {
    let answer = request(addr, &json!({"op":"digest"}), Duration::from_secs(5))?;
    Ok(answer["digests"]
        .as_array()
        .ok_or_else(|| format!("no digests in {answer}"))?
        .iter()
        .map(|d| {
            (
                d["applied_next"].as_u64().unwrap(),
                d["digest"].as_u64().unwrap(),
            )
        })
        .collect())
}

/// Each node's digest answer: per group (applied_next, digest), or why there was none.
pub type Readings = Vec<Result<Vec<(u64, u64)>, String>>;

/// Waits until every node reports the same (applied_next, digest) for every group, twice in a
/// row 300 ms apart; returns the last readings either way.
pub fn wait_converged(nodes: &[NodeInfo], timeout: Duration) -> (bool, Readings) {
    let deadline = Instant::now() + timeout;
    let mut stable = 0;
    loop {
        let readings: Vec<_> = nodes.iter().map(|n| digests(n.client_addr)).collect();
        let same = readings.iter().all(|r| r.is_ok()) && readings.windows(2).all(|w| w[0] == w[1]);
        stable = if same { stable + 1 } else { 0 };
        if stable >= 2 {
            return (true, readings);
        }
        if Instant::now() >= deadline {
            return (false, readings);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One node's stats object.
pub fn stats(addr: SocketAddr) -> Value {
    let answer =
        request(addr, &json!({"op":"stats"}), Duration::from_secs(5)).expect("stats answer");
    assert_eq!(answer["ok"], json!(true), "{answer}");
    answer["stats"].clone()
}

/// Asserts that every core of the node that wrote made exactly one durable write per writing
/// round (the WAL's own counters), and returns the node's total writing rounds.
pub fn assert_one_durable_write_per_round(stats: &Value) -> u64 {
    let cores = stats["cores"].as_array().expect("cores in stats");
    let mut total = 0;
    for core in cores {
        let rounds = core["write_rounds"].as_u64().expect("write_rounds");
        let writes = core["durable_writes"].as_u64().expect("durable_writes");
        // One round's write may still be in flight when the core published its counters.
        assert!(
            writes <= rounds && rounds - writes <= 1,
            "core {}: {writes} durable writes in {rounds} writing rounds: {core}",
            core["core"]
        );
        total += rounds;
    }
    let per_round = stats["totals"]["durable_writes_per_round"]
        .as_f64()
        .expect("durable_writes_per_round");
    if total >= 100 {
        assert!(
            (per_round - 1.0).abs() < 0.01,
            "durable_writes_per_round = {per_round}"
        );
    }
    total
}

/// A register workload for lease-read tests: one writer puts 1, 2, 3, ... under `key` through
/// whichever node leads (short timeouts, following `not_leader`), and one reader asks only
/// `reader_addr` for lease reads, checking each answer against the newest value acknowledged
/// before the read began. A single writer of increasing values makes that check exactly
/// linearizability of the register (a put whose outcome was unknown is either chosen before
/// the next one or never, so values stay increasing in log order). `enter` runs first on each
/// thread (e.g. to join a network namespace).
pub struct RegisterWorkload {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The newest value acknowledged so far.
    pub newest_acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Lease reads answered ok.
    pub reads_ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set by the test around a fault: reads answered ok while it is set are counted apart.
    pub during: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Lease reads answered ok while `during` was set.
    pub reads_ok_during: std::sync::Arc<std::sync::atomic::AtomicU64>,
    violations: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RegisterWorkload {
    /// Starts the writer (over `nodes`: id and client address) and the reader.
    pub fn start(
        key: &'static str,
        nodes: Vec<(u32, SocketAddr)>,
        reader_addr: SocketAddr,
        enter: impl Fn() + Send + Sync + 'static,
    ) -> RegisterWorkload {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let enter = Arc::new(enter);
        let work = RegisterWorkload {
            stop: Arc::new(AtomicBool::new(false)),
            newest_acked: Arc::new(AtomicU64::new(0)),
            reads_ok: Arc::new(AtomicU64::new(0)),
            during: Arc::new(AtomicBool::new(false)),
            reads_ok_during: Arc::new(AtomicU64::new(0)),
            violations: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        let writer = {
            let (stop, newest_acked, enter) =
                (work.stop.clone(), work.newest_acked.clone(), enter.clone());
            std::thread::spawn(move || {
                enter();
                let mut target = 0usize;
                let mut value = 1u64;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let answer = request(
                        nodes[target].1,
                        &json!({"op":"put","key":key,"value":value.to_string()}),
                        Duration::from_millis(400),
                    );
                    match answer {
                        Ok(a) if a["ok"] == json!(true) => {
                            newest_acked.store(value, Ordering::Release);
                            value += 1;
                        }
                        Ok(a) if a["error"] == json!("not_leader") => {
                            target = a["leader"]
                                .as_u64()
                                .and_then(|l| nodes.iter().position(|n| u64::from(n.0) == l))
                                .filter(|t| *t != target)
                                .unwrap_or((target + 1) % nodes.len());
                        }
                        // Refused or no answer in time: a new value next, elsewhere.
                        _ => {
                            value += 1;
                            target = (target + 1) % nodes.len();
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            })
        };
        let reader = {
            let (stop, newest_acked, enter) = (work.stop.clone(), work.newest_acked.clone(), enter);
            let (reads_ok, during, reads_ok_during, violations) = (
                work.reads_ok.clone(),
                work.during.clone(),
                work.reads_ok_during.clone(),
                work.violations.clone(),
            );
            std::thread::spawn(move || {
                enter();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let floor = newest_acked.load(Ordering::Acquire);
                    let answer = request(
                        reader_addr,
                        &json!({"op":"get","key":key,"mode":"lease"}),
                        Duration::from_secs(10),
                    );
                    if let Ok(a) = answer {
                        if a["ok"] == json!(true) {
                            reads_ok.fetch_add(1, Ordering::Relaxed);
                            if during.load(Ordering::Relaxed) {
                                reads_ok_during.fetch_add(1, Ordering::Relaxed);
                            }
                            let got = a["value"]
                                .as_str()
                                .and_then(|v| v.parse::<u64>().ok())
                                .unwrap_or(0);
                            if got < floor {
                                violations.lock().unwrap().push(format!(
                                    "read {got} after {floor} was acknowledged: {a}"
                                ));
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let mut work = work;
        work.threads = vec![writer, reader];
        work
    }

    /// Stops both threads; the stale reads found (empty when the history is linearizable).
    pub fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let violations = self.violations.lock().unwrap().clone();
        violations
    }
}

/// One history line, checked for the documented fields.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct Op {
    pub op: String,
    pub key: String,
    pub value: Option<String>,
    pub ok: Option<bool>,
    pub call_ns: u64,
    pub return_ns: u64,
    pub outcome: String,
}

pub fn parse_history(path: &std::path::Path) -> Vec<Op> {
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
pub fn check_history(path: &std::path::Path, nodes: &[NodeInfo]) {
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

/// Starts `paxring kv load` (4 clients, 20 keys, `seconds`, `seed`) against every node of
/// `cluster`, recording its history; the child joins `cluster.children` (index 0 when it is the
/// first). Returns the history file and the file its summary goes to.
pub fn start_load(cluster: &mut TestCluster, seconds: u32, seed: u32) -> (PathBuf, PathBuf) {
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
        ])
        .args(["--seconds", &seconds.to_string(), "--keys", "20"])
        .arg("--history")
        .arg(&history)
        .args(["--seed", &seed.to_string()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&summary).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the load");
    cluster.children.push(load);
    (history, summary)
}

/// A writer of unique keys through `nodes` until `stop` (at most 100,000 writes), so that
/// "every acknowledged write is present" is exact; returns the acknowledged (key, value)s.
pub fn unique_writer(
    nodes: Vec<NodeInfo>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(String, String)>> {
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut i = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Acquire) && i < 100_000 {
            let (key, value) = (format!("u{i}"), format!("w{i}"));
            if let Outcome::Ok(_) = put(&nodes, i as usize % nodes.len(), &key, &value) {
                acked.push((key, value));
            }
            i += 1;
        }
        acked
    })
}

/// Waits (at most 60 s) for the load started first (`cluster.children[0]`) to end; returns
/// whether it succeeded and its summary text.
pub fn wait_load(cluster: &mut TestCluster, summary: &Path) -> (bool, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = cluster.children[0].try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the load did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    (status.success(), std::fs::read_to_string(summary).unwrap())
}
