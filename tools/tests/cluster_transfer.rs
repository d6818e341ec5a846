//! Proves checkpoint transfer without a restart (docs/PROTOCOL.md "Checkpoint transfer",
//! docs/ARCHITECTURE.md "Serving and installing checkpoints") with three real `paxring node`
//! processes on 127.0.0.1, WAL purge on, the smallest segments the config allows (256 KiB), a
//! purge pass every 150 ms and KV snapshots every 50 instances or 200 ms, two groups:
//!
//! 1. A follower (a node that leads no group) is stopped with `kill -9`; writers go on until
//!    neither live node can serve it from its point on: both live nodes' log bases (every
//!    group's) are past the highest instance in the stopped node's WAL (read with `paxring wal
//!    stat --json` from its dead data directory), both removed WAL segments since the kill, and
//!    both applied more than the 1,024 values they keep in memory past it, and the leaders
//!    dropped frames queued for it (the precondition is asserted, not assumed). The live nodes keep
//!    only 16 KiB of frames for a peer that is down (`outbound_down_bytes_max`): with the
//!    default 4 MiB, the backlog of Accepts and Commits queued since the kill can reach back
//!    to the stopped node's point, and the returning node then learns every value from it
//!    without a checkpoint (seen here once in 8 runs on a loaded machine). The node is restarted while the writers go on. Without any other
//!    restart of its process (same pid to the end) it installs a checkpoint for every group (its
//!    `checkpoints_installed` and `checkpoint_installs`; the peers' `checkpoint_chunks_read`),
//!    catches up (every node reports the same applied_next and digest for every group once the
//!    writers stop), and its own state holds every acknowledged write: after a marker write
//!    makes every node snapshot at one instance, its KV snapshot files are byte-identical to
//!    the others' and hold every acknowledged key with its value.
//! 2. The same node is stopped again and its data directory emptied (a wiped node starts at
//!    instance 0, below every log base), and every checkpoint file the live nodes hold (those
//!    exported to serve step 1; a live node without one gets a copy) gets one payload byte
//!    flipped (`paxring checkpoint verify` confirms each is invalid). Restarted under writes,
//!    the node still installs a checkpoint per group, from a fresh export: the serving side
//!    noticed (it answered "none to offer" or failed a read), every checkpoint the node
//!    received verifies and lies past every corrupted one, it finishes re-learning, the
//!    snapshots match as in step 1 (every write acknowledged in the whole test is in the wiped
//!    node's state), and a sample of 1,000 of them spread over the whole test reads back through
//!    the client protocol (linearizable reads: gets in the default `lease` mode).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Few groups, so that each moves far.
const GROUPS: u32 = 2;
/// The smallest `round_bytes_max` the config allows.
const ROUND_BYTES: u64 = 64 * 1024;
/// The smallest `segment_bytes` the config allows: 4 x `round_bytes_max`.
const SEGMENT_BYTES: u64 = 4 * ROUND_BYTES;
/// Values fit one round write (`batch_bytes_max` + 4 KiB <= `round_bytes_max`).
const BATCH_BYTES: u64 = 32 * 1024;
/// Bytes of each written value: big enough that each group's KV state (and so a checkpoint)
/// grows past one 256 KiB chunk during the test, small enough to keep it a few MiB.
const VALUE_BYTES: usize = 256;
/// Bytes of frames a live node keeps for the stopped one (`outbound_down_bytes_max`).
const DOWN_BACKLOG_BYTES: u64 = 16 * 1024;
/// Acknowledged writes read back through the client protocol at the end (evenly spread over
/// the whole test; the snapshot comparison checks every one of them).
const READ_BACK_SAMPLE: usize = 1000;
/// Concurrent writers.
const WRITERS: usize = 8;
/// Chosen values a replica keeps in memory below its applied point and serves catch-up from
/// whatever its log base (the runtime's `chosen_retained_max`: one acceptance window).
const RETAINED_IN_MEMORY: u64 = paxring_engine::core::ACCEPT_WINDOW_INSTANCES;
/// Offset of the first payload byte of a checkpoint file: the 64-byte header, then the first
/// chunk's `len u32` and `crc u32` (docs: wal/src/checkpoint.rs).
const FIRST_PAYLOAD_BYTE: u64 = 64 + 8;

fn data_dir(cluster: &TestCluster, id: u32) -> PathBuf {
    cluster.path().join(format!("node-{id}/data"))
}

fn checkpoint_dir(cluster: &TestCluster, id: u32) -> PathBuf {
    data_dir(cluster, id).join("checkpoints")
}

/// Stops the cluster `paxring cluster up` started, empties every data directory, rewrites every
/// node's config for fast purge and snapshots with the smallest segments, and starts the three
/// nodes again (a cluster created anew with that config).
fn reconfigure(cluster: &mut TestCluster) {
    let dir = cluster.path().to_str().unwrap().to_string();
    let (ok, stdout, stderr) =
        run_paxring(&["cluster", "down", "--dir", &dir], Duration::from_secs(40));
    assert!(ok, "cluster down failed:\n{stdout}\n{stderr}");
    for node in cluster.nodes() {
        assert!(
            !runs_paxring_node(node.pid),
            "node {} still runs after cluster down",
            node.id
        );
        let text = std::fs::read_to_string(&node.config).unwrap();
        let mut file: toml::Table = text.parse().expect("the node file parses");
        file.insert("snapshot_every_instances".into(), toml::Value::Integer(50));
        file.insert("snapshot_every_ms".into(), toml::Value::Integer(200));
        let table = file
            .get_mut("node")
            .and_then(|n| n.as_table_mut())
            .expect("[node] in the node file");
        table.insert("wal_purge".into(), toml::Value::Boolean(true));
        // A short backlog for a peer that is down (see the module docs).
        table.insert(
            "outbound_down_bytes_max".into(),
            toml::Value::Integer(DOWN_BACKLOG_BYTES as i64),
        );
        table.insert("purge_every_ms".into(), toml::Value::Integer(150));
        // No purge hold for lagging peers: the others purge past the stopped node at once.
        table.insert("purge_hold_for_peers_ms".into(), toml::Value::Integer(0));
        table.insert(
            "round_bytes_max".into(),
            toml::Value::Integer(ROUND_BYTES as i64),
        );
        table.insert(
            "segment_bytes".into(),
            toml::Value::Integer(SEGMENT_BYTES as i64),
        );
        table.insert(
            "batch_bytes_max".into(),
            toml::Value::Integer(BATCH_BYTES as i64),
        );
        std::fs::write(&node.config, toml::to_string(&file).unwrap()).unwrap();
        let data = data_dir(cluster, node.id);
        std::fs::remove_dir_all(&data).unwrap();
        std::fs::create_dir_all(&data).unwrap();
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
}

/// Per group, the node most nodes name as its leader (by their `id` answers), if at least two
/// agree.
fn leaders(cluster: &TestCluster) -> Vec<Option<u32>> {
    let answers: Vec<Value> = cluster
        .nodes()
        .iter()
        .filter_map(|n| request(n.client_addr, &json!({"op":"id"}), Duration::from_secs(3)).ok())
        .collect();
    (0..GROUPS as usize)
        .map(|group| {
            let mut votes: BTreeMap<u32, usize> = BTreeMap::new();
            for answer in &answers {
                if let Some(leader) = answer["leaders"][group].as_u64() {
                    *votes.entry(leader as u32).or_default() += 1;
                }
            }
            votes
                .into_iter()
                .filter(|(_, n)| *n >= 2)
                .max_by_key(|(_, n)| *n)
                .map(|(id, _)| id)
        })
        .collect()
}

fn wait_leaders(cluster: &TestCluster) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = leaders(cluster);
        if found.iter().all(|l| l.is_some()) {
            return found.into_iter().map(|l| l.unwrap()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "no leader for every group: {found:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn try_stats(addr: std::net::SocketAddr) -> Result<Value, String> {
    let answer = request(addr, &json!({"op":"stats"}), Duration::from_secs(5))?;
    if answer["ok"] != json!(true) {
        return Err(format!("stats answer: {answer}"));
    }
    Ok(answer["stats"].clone())
}

fn cores(stats: &Value) -> &Vec<Value> {
    stats["cores"].as_array().expect("cores in stats")
}

/// The sum over the node's cores of `stats.cores[].section.field`.
fn core_sum(stats: &Value, section: &str, field: &str) -> u64 {
    cores(stats)
        .iter()
        .map(|core| {
            core[section][field]
                .as_u64()
                .unwrap_or_else(|| panic!("no {section}.{field} in core stats: {core}"))
        })
        .sum()
}

/// The lowest log base of the node's groups (over its cores), once every core has one.
fn lowest_base(stats: &Value) -> Option<u64> {
    cores(stats)
        .iter()
        .map(|core| core["purge"]["lowest_base"][1].as_u64())
        .collect::<Option<Vec<u64>>>()?
        .into_iter()
        .min()
}

/// Frames this node's outbound queue for node `peer` dropped, oldest first, while it was down.
fn stale_frames_dropped(stats: &Value, peer: u32) -> u64 {
    stats["net"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["node_id"].as_u64() == Some(u64::from(peer)))
        .map(|p| p["outbound_dropped_stale_frames"].as_u64().unwrap_or(0))
        .sum()
}

/// The checkpoint transfer counters of one node, for messages.
fn transfer_summary(stats: &Value) -> String {
    let protocol = [
        "checkpoint_fetches",
        "checkpoints_installed",
        "checkpoint_transfers_abandoned",
        "checkpoint_chunks_received",
        "checkpoint_bytes_received",
        "checkpoint_reads_served",
        "promises_refused_behind_base",
        "catchup_unavailable",
        "groups_relearning",
        "groups_repaired",
    ];
    let driver = [
        "checkpoint_chunks_read",
        "checkpoint_bytes_read",
        "checkpoint_none",
        "checkpoint_errors",
        "checkpoint_installs",
    ];
    let mut text = format!("node {}:", stats["node_id"]);
    for field in protocol {
        text.push_str(&format!(" {field}={}", core_sum(stats, "protocol", field)));
    }
    for field in driver {
        text.push_str(&format!(" {field}={}", core_sum(stats, "driver", field)));
    }
    for core in cores(stats) {
        text.push_str(&format!(
            "; core {} purge {} stuck {}",
            core["core"], core["purge"], core["stuck"]
        ));
    }
    text
}

/// One past the highest instance per group in the WAL of a stopped node (`paxring wal stat
/// --json` of its data directory): no group of that node can restart applied past it.
fn wal_reach(data: &Path) -> BTreeMap<u32, u64> {
    let (ok, stdout, stderr) = run_paxring(
        &["wal", "stat", "--json", data.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(
        ok,
        "wal stat of {} failed:\n{stdout}\n{stderr}",
        data.display()
    );
    let cores: Value = serde_json::from_str(&stdout).expect("wal stat --json");
    let mut reach = BTreeMap::new();
    for core in cores.as_array().expect("wal stat: one entry per core") {
        for group in core["groups"].as_array().expect("groups in wal stat") {
            let id = group["group"].as_u64().unwrap() as u32;
            let high = group["instance_max"].as_u64().unwrap() + 1;
            let entry = reach.entry(id).or_insert(0);
            *entry = (*entry).max(high);
        }
    }
    reach
}

/// One node's stats and its per group (applied_next, digest).
type StatsAndDigests = (Value, Vec<(u64, u64)>);

/// Writers of unique keys (so "every acknowledged write is present" is exact), entering at
/// every node in turn and following not_leader. Dropping them tells them to stop.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Vec<(String, String)>>>,
}

impl Writers {
    fn start(nodes: &[NodeInfo], prefix: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let threads = (0..WRITERS)
            .map(|writer| {
                let (stop, acked, nodes) = (stop.clone(), acked.clone(), nodes.to_vec());
                let prefix = format!("{prefix}{writer}-");
                std::thread::spawn(move || {
                    let mut written = Vec::new();
                    let mut i = 0usize;
                    while !stop.load(Ordering::Acquire) && i < 1_000_000 {
                        let key = format!("{prefix}{i}");
                        let mut value = format!("{key}=");
                        while value.len() < VALUE_BYTES {
                            value.push(char::from(b'a' + (value.len() % 26) as u8));
                        }
                        if let Outcome::Ok(_) =
                            put(&nodes, (writer + i) % nodes.len(), &key, &value)
                        {
                            acked.fetch_add(1, Ordering::Relaxed);
                            written.push((key, value));
                        }
                        i += 1;
                    }
                    written
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            threads,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until at least `count` writes were acknowledged (bounded).
    fn wait_acked(&self, count: u64, cluster: &TestCluster) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acked() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} writes acknowledged in 30 s\n{}",
                self.acked(),
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the writers; every write they had acknowledged.
    fn finish(mut self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Release);
        let mut all = Vec::new();
        for thread in self.threads.drain(..) {
            all.extend(thread.join().expect("writer thread"));
        }
        all
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Reads every `(key, value)` back through the log (four readers, entering at every node in
/// turn; not_leader is followed) and asserts each has its acknowledged value.
fn assert_all_read_back(cluster: &TestCluster, written: &[(String, String)]) {
    let nodes = cluster.nodes();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let readers: Vec<_> = written
            .chunks(written.len().div_ceil(4).max(1))
            .enumerate()
            .map(|(reader, part)| {
                let nodes = &nodes;
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for (i, (key, value)) in part.iter().enumerate() {
                        match get(nodes, (reader + i) % nodes.len(), key) {
                            Outcome::Ok(answer) if answer["value"] == json!(value) => {}
                            other => failures.push(format!("get {key}: {other:?}")),
                        }
                    }
                    failures
                })
            })
            .collect();
        readers
            .into_iter()
            .flat_map(|r| r.join().expect("reader thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} acknowledged writes did not read back, e.g. {:?}\n{}",
        failures.len(),
        written.len(),
        &failures[..failures.len().min(5)],
        cluster.logs()
    );
}

/// Polls node `id`'s stats until its cores installed at least `count` checkpoints (protocol
/// and driver counters); returns its last stats.
fn wait_installed(cluster: &TestCluster, id: u32, count: u64, timeout: Duration) -> Value {
    let addr = cluster.node(id).client_addr;
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    loop {
        if let Ok(stats) = try_stats(addr) {
            let done = core_sum(&stats, "protocol", "checkpoints_installed") >= count
                && core_sum(&stats, "driver", "checkpoint_installs") >= count;
            last = stats;
            if done {
                return last;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not install {count} checkpoints in {timeout:?}: {}\napplied_next and digest per group, per node: {:?}\n{}",
            if last.is_null() {
                "no stats".to_string()
            } else {
                transfer_summary(&last)
            },
            cluster
                .nodes()
                .iter()
                .map(|n| (n.id, digests(n.client_addr)))
                .collect::<Vec<_>>(),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that every node still runs the process it ran, and that no node log reports a
/// panic.
fn assert_processes(cluster: &TestCluster, pids: &BTreeMap<u32, u32>) {
    for node in cluster.nodes() {
        assert_eq!(
            Some(&node.pid),
            pids.get(&node.id),
            "node {} was restarted",
            node.id
        );
        assert!(
            runs_paxring_node(node.pid),
            "node {} (pid {}) is no longer running\n{}",
            node.id,
            node.pid,
            cluster.logs()
        );
        let log =
            std::fs::read_to_string(cluster.path().join(format!("node-{}/node.log", node.id)))
                .unwrap_or_default();
        assert!(
            !log.contains("panicked"),
            "node {} panicked\n{}",
            node.id,
            cluster.logs()
        );
    }
}

fn pids(cluster: &TestCluster) -> BTreeMap<u32, u32> {
    cluster.nodes().iter().map(|n| (n.id, n.pid)).collect()
}

/// Waits until every node reports the same applied_next and digest for every group.
fn assert_converged(cluster: &TestCluster) -> Vec<(u64, u64)> {
    let (converged, readings) = wait_converged(&cluster.nodes(), Duration::from_secs(40));
    assert!(
        converged,
        "replicas differ after catch-up: {readings:?}\n{}",
        cluster.logs()
    );
    readings[0].clone().unwrap()
}

/// The checkpoint files (`ckpt-<instance>.pxc`) of `group` in `dir`, with their instances.
fn checkpoint_files(dir: &Path, group: u32) -> Vec<(u64, PathBuf)> {
    let group_dir = dir.join(format!("group-{group}"));
    let Ok(entries) = std::fs::read_dir(&group_dir) else {
        return Vec::new();
    };
    let mut files: Vec<(u64, PathBuf)> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let instance = name
                .strip_prefix("ckpt-")?
                .strip_suffix(".pxc")?
                .parse()
                .ok()?;
            Some((instance, path))
        })
        .collect();
    files.sort();
    files
}

/// `paxring checkpoint verify PATH`: (exit code, stdout and stderr).
fn checkpoint_verify(path: &Path) -> (Option<i32>, String) {
    let (code, stdout, stderr) = run_paxring_with(
        &["checkpoint", "verify", path.to_str().unwrap()],
        None,
        &[],
        Duration::from_secs(30),
    );
    (
        code,
        format!("{}{stderr}", String::from_utf8_lossy(&stdout)),
    )
}

/// Flips every bit of the byte at `offset` of `path`, durably.
fn flip_byte(path: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut byte = [0u8];
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(&[byte[0] ^ 0xff]).unwrap();
    file.sync_all().unwrap();
}

/// Node `id`'s KV snapshot of `group` (docs/CLIENT.md, "Durable state and the checkpoint"):
/// its bytes and its JSON body, once the header (magic, version, body length and CRC-32) checks.
fn kv_snapshot(cluster: &TestCluster, id: u32, group: u32) -> Result<(Vec<u8>, Value), String> {
    let path = data_dir(cluster, id).join(format!("kv/group-{group}.snap"));
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() < 20 || &bytes[..7] != b"PXKVSNP" {
        return Err(format!("{}: no snapshot header", path.display()));
    }
    let length = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let crc = u32::from_le_bytes(bytes[16..20].try_into().unwrap());
    let body = &bytes[20..];
    if body.len() as u64 != length || crc32fast::hash(body) != crc {
        return Err(format!(
            "{}: body length or CRC does not match",
            path.display()
        ));
    }
    let body = serde_json::from_slice(body).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((bytes, body))
}

/// With the writers stopped and the replicas converged: puts marker keys more than
/// `snapshot_every_ms` after every node's last snapshot, so that every node snapshots each
/// group at the same instance (the group's first marker, after every acknowledged write), then
/// asserts that the three snapshot files of each group are byte-identical (same map, sessions
/// and digest) and that node `id`'s holds every acknowledged write with its value: the
/// restarted node's own state, read from its disk (the KV protocol reads only through the
/// leader's log).
fn assert_state_holds(cluster: &TestCluster, id: u32, written: &[(String, String)], tag: &str) {
    let nodes = cluster.nodes();
    let mut last = String::new();
    for attempt in 0..10 {
        let (converged, readings) = wait_converged(&nodes, Duration::from_secs(30));
        assert!(
            converged,
            "replicas differ before the markers: {readings:?}\n{}",
            cluster.logs()
        );
        let before = readings[0].clone().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        for i in 0..8 {
            let key = format!("marker-{tag}-{attempt}-{i}");
            if let Outcome::Fail(e) = put(&nodes, i % nodes.len(), &key, "m") {
                last = format!("marker put failed: {e}");
            }
        }
        let (converged, readings) = wait_converged(&nodes, Duration::from_secs(30));
        assert!(
            converged,
            "replicas differ after the markers: {readings:?}\n{}",
            cluster.logs()
        );
        let applied = readings[0].clone().unwrap();
        let mut same = true;
        for group in 0..GROUPS {
            let snapshots: Vec<Result<(Vec<u8>, Value), String>> =
                (1..=3).map(|n| kv_snapshot(cluster, n, group)).collect();
            // Taken at a marker of this group, so after every acknowledged write.
            let after_writes = snapshots.iter().all(|s| {
                s.as_ref().is_ok_and(|(_, body)| {
                    body["checkpoint"]
                        .as_u64()
                        .is_some_and(|c| c >= before[group as usize].0)
                })
            });
            let identical = snapshots.windows(2).all(|w| match (&w[0], &w[1]) {
                (Ok(a), Ok(b)) => a.0 == b.0,
                _ => false,
            });
            if !(after_writes && identical) {
                same = false;
                last = format!(
                    "group {group}: snapshots {:?} (applied_next {} before the markers, {} after)",
                    snapshots
                        .iter()
                        .map(|s| s
                            .as_ref()
                            .map(|(bytes, body)| (bytes.len(), body["checkpoint"].clone())))
                        .collect::<Vec<_>>(),
                    before[group as usize].0,
                    applied[group as usize].0
                );
            }
        }
        if !same {
            continue;
        }
        let mut entries = serde_json::Map::new();
        for group in 0..GROUPS {
            let (_, body) = kv_snapshot(cluster, id, group).unwrap();
            entries.extend(body["entries"].as_object().expect("entries").clone());
        }
        let missing: Vec<&String> = written
            .iter()
            .filter(|(key, value)| entries.get(key.as_str()) != Some(&json!(value)))
            .map(|(key, _)| key)
            .collect();
        assert!(
            missing.is_empty(),
            "node {id}'s state lacks {} of {} acknowledged writes (or holds another value), e.g. {:?}",
            missing.len(),
            written.len(),
            &missing[..missing.len().min(5)]
        );
        eprintln!(
            "node {id}'s snapshots equal the others' at applied_next {applied:?} and hold all {} acknowledged writes ({} keys)",
            written.len(),
            entries.len()
        );
        return;
    }
    panic!("the nodes' snapshots never matched at one instance: {last}");
}

#[test]
fn stopped_node_installs_a_checkpoint_after_peers_purged_past_it() {
    let started = Instant::now();
    let mut cluster = TestCluster::up(GROUPS, 1);
    reconfigure(&mut cluster);
    let nodes = cluster.nodes();
    let leaders = wait_leaders(&cluster);
    let lagging = (1..=3)
        .find(|id| !leaders.contains(id))
        .expect("with 2 groups one node leads none");
    let live: Vec<NodeInfo> = nodes.iter().filter(|n| n.id != lagging).cloned().collect();
    eprintln!(
        "[{:?}] leaders {leaders:?}; stopping follower {lagging}",
        started.elapsed()
    );

    // --- Step 1: stopped until the others purged past it, restarted under writes. ---
    let writers = Writers::start(&nodes, "a");
    writers.wait_acked(150, &cluster);
    let purged_before: Vec<u64> = live
        .iter()
        .map(|n| core_sum(&stats(n.client_addr), "purge", "segments_purged"))
        .collect();
    cluster.kill9(lagging);
    let reach = wal_reach(&data_dir(&cluster, lagging));
    assert_eq!(
        reach.len(),
        GROUPS as usize,
        "the stopped node's WAL holds records of every group: {reach:?}"
    );
    let reach_max = *reach.values().max().unwrap();
    eprintln!(
        "[{:?}] node {lagging} killed after {} acknowledged writes; its WAL reaches {reach:?}",
        started.elapsed(),
        writers.acked()
    );

    // The precondition: neither live node can serve the stopped node from its point on, by
    // log or by memory. Both live nodes' log bases (every group's) are past the stopped node's
    // WAL, both removed segments since the kill, in every group both applied more than the
    // values they keep in memory (plus a margin) past it, and a leader's queue for it dropped
    // its oldest frames (no backlog reaches back to its point).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let readings: Vec<Result<StatsAndDigests, String>> = live
            .iter()
            .map(|n| Ok((try_stats(n.client_addr)?, digests(n.client_addr)?)))
            .collect();
        let met = readings.iter().zip(&purged_before).all(|(r, before)| {
            r.as_ref().is_ok_and(|(s, d)| {
                lowest_base(s).is_some_and(|base| base > reach_max)
                    && core_sum(s, "purge", "segments_purged") > *before
                    && reach.iter().all(|(group, reach)| {
                        d.get(*group as usize).is_some_and(|(applied_next, _)| {
                            *applied_next > reach + RETAINED_IN_MEMORY + 256
                        })
                    })
            })
        }) && readings.iter().any(|r| {
            // The leaders' queues for the stopped node dropped their oldest frames (a
            // follower sends it next to nothing).
            r.as_ref()
                .is_ok_and(|(s, _)| stale_frames_dropped(s, lagging) > 0)
        });
        if met {
            for (stats, digests) in readings.iter().flatten() {
                eprintln!(
                    "[{:?}] precondition met: node {} lowest log base {:?} > {reach_max}, segments purged {} (before the kill {:?}), stale frames for node {lagging} dropped {}, applied_next per group {:?}",
                    started.elapsed(),
                    stats["node_id"],
                    lowest_base(stats),
                    core_sum(stats, "purge", "segments_purged"),
                    purged_before,
                    stale_frames_dropped(stats, lagging),
                    digests.iter().map(|d| d.0).collect::<Vec<_>>()
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live nodes did not purge past instance {reach_max}, apply {RETAINED_IN_MEMORY} past {reach:?} and drop frames queued for node {lagging} in 60 s: {:?}\n{}",
            readings
                .iter()
                .map(|r| r
                    .as_ref()
                    .map(|(s, d)| format!(
                        "{} digests {d:?} net peers {}",
                        transfer_summary(s),
                        s["net"]["peers"]
                    )))
                .collect::<Vec<_>>(),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    cluster.restart(lagging);
    let pids_after_restart = pids(&cluster);
    let installed = wait_installed(&cluster, lagging, GROUPS.into(), Duration::from_secs(40));
    eprintln!(
        "[{:?}] node {lagging} installed: {}",
        started.elapsed(),
        transfer_summary(&installed)
    );
    // Streaming catch-up and the live edge, still under writes.
    let more = writers.acked() + 100;
    writers.wait_acked(more, &cluster);
    let written_a = writers.finish();
    let digests = assert_converged(&cluster);
    eprintln!(
        "[{:?}] converged after {} acknowledged writes: {digests:?}",
        started.elapsed(),
        written_a.len()
    );
    assert_processes(&cluster, &pids_after_restart);

    let lagging_stats = stats(cluster.node(lagging).client_addr);
    assert!(
        core_sum(&lagging_stats, "protocol", "checkpoint_fetches") >= u64::from(GROUPS)
            && core_sum(&lagging_stats, "protocol", "checkpoint_bytes_received") > 0,
        "the restarted node fetched every group's checkpoint: {}",
        transfer_summary(&lagging_stats)
    );
    let served: u64 = live
        .iter()
        .map(|n| core_sum(&stats(n.client_addr), "driver", "checkpoint_chunks_read"))
        .sum();
    assert!(
        served >= u64::from(GROUPS),
        "the live nodes read {served} checkpoint chunks for the restarted node"
    );
    for node in &live {
        eprintln!("{}", transfer_summary(&stats(node.client_addr)));
    }
    assert_state_holds(&cluster, lagging, &written_a, "a");
    eprintln!("[{:?}] step 1 done", started.elapsed());

    // --- Step 2: a wiped node, and every checkpoint file the live nodes hold corrupted. ---
    let refusals = |nodes: &[NodeInfo]| -> u64 {
        nodes
            .iter()
            .map(|n| {
                let stats = stats(n.client_addr);
                core_sum(&stats, "driver", "checkpoint_none")
                    + core_sum(&stats, "driver", "checkpoint_errors")
            })
            .sum()
    };
    let refusals_before = refusals(&live);
    cluster.kill9(lagging);
    let lagging_data = data_dir(&cluster, lagging);
    std::fs::remove_dir_all(&lagging_data).unwrap();
    std::fs::create_dir_all(&lagging_data).unwrap();
    // Step 1 asked one live node per group for its checkpoint, so only that one exported a
    // file. A live node without one gets a copy of the other's newest, so that whichever peer
    // the wiped node asks holds a (soon corrupted) checkpoint past its point.
    for group in 0..GROUPS {
        let held: Vec<Vec<(u64, PathBuf)>> = live
            .iter()
            .map(|n| checkpoint_files(&checkpoint_dir(&cluster, n.id), group))
            .collect();
        let Some((instance, source)) = held.iter().flatten().max().cloned() else {
            panic!("no live node holds a checkpoint of group {group} after step 1");
        };
        for (node, files) in live.iter().zip(&held) {
            if files.is_empty() {
                let dir = checkpoint_dir(&cluster, node.id).join(format!("group-{group}"));
                std::fs::create_dir_all(&dir).unwrap();
                let name = source.file_name().unwrap();
                std::fs::copy(&source, dir.join(name)).unwrap();
                eprintln!(
                    "copied the checkpoint of group {group} at instance {instance} to node {}",
                    node.id
                );
            }
        }
    }
    let mut corrupted_max: BTreeMap<u32, u64> = BTreeMap::new();
    for node in &live {
        let dir = checkpoint_dir(&cluster, node.id);
        for group in 0..GROUPS {
            for (instance, path) in checkpoint_files(&dir, group) {
                flip_byte(&path, FIRST_PAYLOAD_BYTE);
                let (code, report) = checkpoint_verify(&path);
                assert_eq!(
                    code,
                    Some(1),
                    "the flipped byte makes {} invalid: {report}",
                    path.display()
                );
                let entry = corrupted_max.entry(group).or_insert(0);
                *entry = (*entry).max(instance);
            }
        }
    }
    assert_eq!(
        corrupted_max.len(),
        GROUPS as usize,
        "the live nodes held a checkpoint of every group (exported in step 1) to corrupt"
    );
    eprintln!(
        "[{:?}] node {lagging} killed and wiped; corrupted the live nodes' checkpoints up to {corrupted_max:?}",
        started.elapsed()
    );
    let writers = Writers::start(&nodes, "b");
    writers.wait_acked(50, &cluster);
    cluster.restart(lagging);
    let pids_after_restart = pids(&cluster);
    let installed = wait_installed(&cluster, lagging, GROUPS.into(), Duration::from_secs(40));
    eprintln!(
        "[{:?}] wiped node {lagging} installed: {}",
        started.elapsed(),
        transfer_summary(&installed)
    );
    let more = writers.acked() + 50;
    writers.wait_acked(more, &cluster);
    let written_b = writers.finish();
    let digests = assert_converged(&cluster);
    eprintln!(
        "[{:?}] converged after {} more acknowledged writes: {digests:?}",
        started.elapsed(),
        written_b.len()
    );
    assert_processes(&cluster, &pids_after_restart);

    // The wiped node finished re-learning every group (it votes again) and nothing is stuck.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = stats(cluster.node(lagging).client_addr);
        let done = core_sum(&stats, "protocol", "groups_repaired") == u64::from(GROUPS)
            && cores(&stats).iter().all(|c| c["stuck_groups"] == json!(0));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the wiped node did not finish re-learning: {}\n{}",
            transfer_summary(&stats),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The corrupted files were noticed, not served as if sound: a live node answered "none to
    // offer" or failed a read (and exported a fresh checkpoint), or the wiped node's check of
    // what it received failed and it fetched again. (Intact, the file the peer asked held
    // would have been sent at once: none of these counters would move.)
    let refusals_after = refusals(&live);
    let lagging_stats = stats(cluster.node(lagging).client_addr);
    let receiver_failures = core_sum(&lagging_stats, "driver", "checkpoint_errors");
    eprintln!(
        "serving refusals in step 2: {}; receiver failures: {receiver_failures}",
        refusals_after - refusals_before
    );
    assert!(
        refusals_after > refusals_before || receiver_failures > 0,
        "nothing noticed the corrupted checkpoints: {}",
        transfer_summary(&lagging_stats)
    );

    // What the wiped node received: only valid checkpoints, each past every corrupted one.
    let received = checkpoint_dir(&cluster, lagging);
    for group in 0..GROUPS {
        let files = checkpoint_files(&received, group);
        assert!(
            !files.is_empty(),
            "node {lagging} holds the checkpoint of group {group} it received"
        );
        for (instance, path) in files {
            assert!(
                instance > corrupted_max[&group],
                "node {lagging} received {} (group {group}): not past the corrupted checkpoints {corrupted_max:?}",
                path.display()
            );
        }
    }
    let (code, report) = checkpoint_verify(&received);
    assert_eq!(
        code,
        Some(0),
        "every checkpoint node {lagging} received verifies: {report}"
    );
    for node in &live {
        let dir = checkpoint_dir(&cluster, node.id);
        let (_, report, _) = run_paxring(
            &["checkpoint", "list", dir.to_str().unwrap()],
            Duration::from_secs(30),
        );
        eprintln!(
            "{}\nnode {} checkpoints after step 2:\n{report}",
            transfer_summary(&stats(node.client_addr)),
            node.id
        );
    }
    let written_a_len = written_a.len();
    let mut written = written_a;
    written.extend(written_b);
    assert_state_holds(&cluster, lagging, &written, "b");
    // And through the client protocol (linearizable reads, through the leader's log): a sample
    // spread over the whole test, with the first and last write of each step.
    let step = written.len().div_ceil(READ_BACK_SAMPLE).max(1);
    let mut sample: Vec<(String, String)> = written.iter().step_by(step).cloned().collect();
    for edge in [
        written_a_len.saturating_sub(1),
        written_a_len,
        written.len().saturating_sub(1),
    ] {
        if let Some(write) = written.get(edge) {
            sample.push(write.clone());
        }
    }
    assert_all_read_back(&cluster, &sample);
    eprintln!(
        "[{:?}] step 2 done: {} of {} acknowledged writes read back through the log",
        started.elapsed(),
        sample.len(),
        written.len()
    );
}
