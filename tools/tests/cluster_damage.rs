//! Proves, with three real `paxring node` processes on 127.0.0.1 (started by `paxring cluster
//! up`), the re-learning rules of docs/PROTOCOL.md ("Re-learning", "Node identity"):
//! - damage in old WAL batches of two replicas at once (one zeroed 4 KiB block on one, one
//!   flipped byte of a record on the other, each confirmed by `paxring wal verify`) does not stop
//!   the cluster: after their restart both re-learn every group of the damaged core from peers
//!   and repair it, the cluster elects and commits through every node, the replicas converge and
//!   every earlier write reads back; a later restart without new damage does not re-learn again
//!   (the repair record covers the old damage);
//! - a node restarted with an empty data directory says its state was lost, sends no promise
//!   and no acceptance while none of its groups has finished re-learning, catches up with every
//!   acknowledged write (also those acknowledged while it was down), and then votes: with
//!   another node stopped, every quorum needs it and the cluster still commits. Wiped again
//!   while that other node is down (one undamaged peer reports, two are needed), it stays in
//!   re-learning without voting, says why in its stats, and a write waits until the stopped
//!   node is back.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The WAL's block size: batches start on it (docs/WAL_FORMAT.md).
const BLOCK: usize = 4096;
/// Bytes of a batch header; the first record follows it.
const BATCH_HEADER: usize = 64;
/// Bytes of a record header; the payload follows it.
const RECORD_HEADER: usize = 56;
/// Record kind of an Accept.
const KIND_ACCEPT: u8 = 2;

/// One batch found in a segment file (docs/WAL_FORMAT.md, "Batch header").
#[derive(Debug, Clone, Copy)]
struct Batch {
    offset: usize,
    first_lsn: u64,
    record_count: u32,
    batch_bytes: usize,
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// The WAL directory of core 0 of node `id`.
fn wal_dir(cluster: &TestCluster, id: u32) -> PathBuf {
    cluster.path().join(format!("node-{id}/data/wal/core-0"))
}

/// The oldest segment file (`cNNNNN-sNNN….wal`, not a spare, not one being prepared) in `dir`,
/// with its segment number.
fn oldest_segment(dir: &Path) -> (PathBuf, u64) {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?.to_string();
            let number = name.strip_suffix(".wal")?.split_once("-s")?.1;
            Some((number.parse().ok()?, path))
        })
        .collect();
    segments.sort();
    let (number, path) = segments
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no segment in {}", dir.display()));
    (path, number)
}

/// The segment file's bytes and its batches in order, found the way recovery finds them: a
/// block whose header verifies (magic, core 0, this segment, header crc) starts a batch, an
/// all-zero block ends what was written (the segment is a fresh one, zero-filled).
fn batches(path: &Path, segment: u64) -> (Vec<u8>, Vec<Batch>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() >= 2 * BLOCK && &bytes[..4] == b"PXWS",
        "{} has no segment header",
        path.display()
    );
    let mut found = Vec::new();
    let mut at = BLOCK;
    while at + BLOCK <= bytes.len() {
        let block = &bytes[at..at + BLOCK];
        let verified = &block[..4] == b"PXWB"
            && le_u32(block, 8) == 0
            && le_u64(block, 16) == segment
            && crc32fast::hash(&block[..60]) == le_u32(block, 60);
        if !verified {
            if block.iter().all(|b| *b == 0) {
                break;
            }
            at += BLOCK;
            continue;
        }
        let batch = Batch {
            offset: at,
            first_lsn: le_u64(block, 24),
            record_count: le_u32(block, 12),
            batch_bytes: (le_u32(block, 36) as usize).max(BLOCK),
        };
        found.push(batch);
        at += batch.batch_bytes;
    }
    (bytes, found)
}

/// Writes `data` at `offset` of `path` and makes it durable.
fn overwrite(path: &Path, offset: usize, data: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.seek(SeekFrom::Start(offset as u64)).unwrap();
    file.write_all(data).unwrap();
    file.sync_all().unwrap();
}

/// Flips every bit of the byte at `offset` of `path`.
fn flip_byte(path: &Path, offset: usize) {
    let mut file = std::fs::File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset as u64)).unwrap();
    let mut byte = [0u8];
    file.read_exact(&mut byte).unwrap();
    overwrite(path, offset, &[byte[0] ^ 0xff]);
}

/// `paxring wal verify` of node `id`'s WAL: (exit status was 0, stdout and stderr).
fn wal_verify(cluster: &TestCluster, id: u32) -> (bool, String) {
    let dir = wal_dir(cluster, id);
    let (ok, stdout, stderr) = run_paxring(
        &["wal", "verify", dir.to_str().unwrap()],
        Duration::from_secs(30),
    );
    (ok, format!("{stdout}{stderr}"))
}

/// Asserts that `paxring wal verify` reports damage followed by valid data (a `DAMAGE:` line,
/// not only a cut tail) in node `id`'s WAL; returns the report.
fn assert_damage_found(cluster: &TestCluster, id: u32) -> String {
    let (clean, report) = wal_verify(cluster, id);
    assert!(
        !clean && report.lines().any(|l| l.starts_with("DAMAGE:")),
        "node {id}: wal verify does not report the damage:\n{report}"
    );
    report
}

/// One node's stats object, or why there was none.
fn try_stats(addr: std::net::SocketAddr) -> Result<Value, String> {
    let answer = request(addr, &json!({"op":"stats"}), Duration::from_secs(5))?;
    if answer["ok"] != json!(true) {
        return Err(answer.to_string());
    }
    Ok(answer["stats"].clone())
}

/// The cores of a stats object.
fn cores(stats: &Value) -> &Vec<Value> {
    stats["cores"]
        .as_array()
        .unwrap_or_else(|| panic!("no cores in stats: {stats}"))
}

/// A protocol counter of one core (`cores[i].protocol.FIELD`); panics if it is absent.
fn counter(core: &Value, field: &str) -> u64 {
    core["protocol"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no protocol.{field} in core stats: {core}"))
}

/// A protocol counter summed over the cores.
fn counter_sum(stats: &Value, field: &str) -> u64 {
    cores(stats).iter().map(|c| counter(c, field)).sum()
}

/// What the stats say about re-learning, per core, for failure messages and the report.
fn relearn_summary(stats: &Value) -> String {
    cores(stats)
        .iter()
        .map(|c| {
            format!(
                "core {}: groups {} relearning {} repaired {} stuck_groups {} stuck {}",
                c["core"],
                c["groups"],
                c["protocol"]["groups_relearning"],
                c["protocol"]["groups_repaired"],
                c["stuck_groups"],
                c["stuck"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Polls node `id`'s stats until every group of every core re-learned (since the node's start)
/// and was repaired, and no group is stuck. Returns whether that happened and the last stats.
fn wait_relearned_and_repaired(cluster: &TestCluster, id: u32, timeout: Duration) -> (bool, Value) {
    let addr = cluster.node(id).client_addr;
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    for _ in 0..10_000 {
        if let Ok(stats) = try_stats(addr) {
            let done = cores(&stats).iter().all(|c| {
                let groups = c["groups"].as_u64().expect("groups in core stats");
                counter(c, "groups_relearning") == groups
                    && counter(c, "groups_repaired") == groups
                    && c["stuck_groups"].as_u64() == Some(0)
            });
            last = stats;
            if done {
                return (true, last);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (false, last)
}

/// Samples node `addr`'s stats (every few ms, for at most `window`): whenever a core has groups
/// re-learning and has not finished any, it must have sent no promise and no acceptance (a
/// core's counters are one snapshot). Stops early, if `until_repaired`, once every group of
/// every core re-learned and was repaired. Returns how many samples found a core before any
/// repair, and the last stats.
fn sample_no_votes_before_repair(
    addr: std::net::SocketAddr,
    window: Duration,
    until_repaired: bool,
) -> (usize, Option<Value>) {
    let mut samples = 0;
    let mut last = None;
    let until = Instant::now() + window;
    for _ in 0..5_000 {
        if let Ok(stats) = try_stats(addr) {
            let mut all_repaired = true;
            for core in cores(&stats) {
                let relearning = counter(core, "groups_relearning");
                let repaired = counter(core, "groups_repaired");
                if relearning > 0 && repaired == 0 {
                    samples += 1;
                    assert_eq!(
                        (
                            counter(core, "promises_sent"),
                            counter(core, "accepted_sent")
                        ),
                        (0, 0),
                        "a node voted before any group of its core finished re-learning: {core}"
                    );
                }
                all_repaired &= relearning > 0 && repaired == relearning;
            }
            last = Some(stats);
            if until_repaired && all_repaired {
                break;
            }
        }
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (samples, last)
}

/// Puts `key` = `value` entering at `entry` until it is acknowledged or `deadline` passes
/// (an unknown outcome is retried with the same value); returns how long it took.
fn put_before(
    nodes: &[NodeInfo],
    entry: usize,
    key: &str,
    value: &str,
    deadline: Instant,
) -> Result<Duration, String> {
    let start = Instant::now();
    let op = json!({"op":"put","key":key,"value":value});
    let mut last = String::from("no attempt");
    for _ in 0..1000 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match key_op(nodes, entry, &op, left.min(Duration::from_secs(15))) {
            Outcome::Ok(_) => return Ok(start.elapsed()),
            other => last = format!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "put {key} entering at node {} not acknowledged in time: {last}",
        nodes[entry].id
    ))
}

/// Asserts that every `(key, value)` reads back through the log (entering at every node in
/// turn).
fn assert_all_read_back(cluster: &TestCluster, nodes: &[NodeInfo], written: &[(String, String)]) {
    for (i, (key, value)) in written.iter().enumerate() {
        match get(nodes, i % nodes.len(), key) {
            Outcome::Ok(answer) => assert_eq!(
                answer["value"],
                json!(value),
                "{key} lost or changed: {answer}"
            ),
            other => panic!("get {key}: {other:?}\n{}", cluster.logs()),
        }
    }
}

/// The bytes of node `id`'s log written after `from`.
fn log_since(cluster: &TestCluster, id: u32, from: usize) -> String {
    let log = std::fs::read(cluster.path().join(format!("node-{id}/node.log"))).unwrap_or_default();
    String::from_utf8_lossy(&log[from.min(log.len())..]).into_owned()
}

fn log_len(cluster: &TestCluster, id: u32) -> usize {
    std::fs::metadata(cluster.path().join(format!("node-{id}/node.log")))
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

#[test]
fn damage_on_two_replicas_elects_and_is_repaired() {
    let test_start = Instant::now();
    let mut cluster = TestCluster::up(4, 1);
    let nodes = cluster.nodes();

    // Enough writes that the WAL holds many batches, the damaged ones far from the last.
    let mut written = Vec::new();
    for i in 0..200 {
        let (key, value) = (format!("d{i}"), format!("value-{i}"));
        match put(&nodes, i % 3, &key, &value) {
            Outcome::Ok(_) => written.push((key, value)),
            other => panic!("put {key}: {other:?}\n{}", cluster.logs()),
        }
    }
    let (converged, readings) = wait_converged(&nodes, Duration::from_secs(20));
    assert!(
        converged,
        "replicas differ before the damage: {readings:?}\n{}",
        cluster.logs()
    );
    let written_at = test_start.elapsed();

    // Nodes 1 and 2 stop; node 3 stays up (alone, it has no quorum).
    cluster.kill9(1);
    cluster.kill9(2);

    // Node 1: one 4 KiB block of an old batch (its header block) becomes zeroes.
    let (segment_1, number_1) = oldest_segment(&wal_dir(&cluster, 1));
    let (_, batches_1) = batches(&segment_1, number_1);
    assert!(
        batches_1.len() >= 30,
        "node 1's WAL holds only {} batches",
        batches_1.len()
    );
    let victim_1 = batches_1[batches_1.len() / 3];
    overwrite(&segment_1, victim_1.offset, &[0u8; BLOCK]);

    // Node 2: one byte of an old record (an Accept's payload when one starts a batch there,
    // else a ballot byte of the batch's first record; both are covered by the record crc).
    let (segment_2, number_2) = oldest_segment(&wal_dir(&cluster, 2));
    let (bytes_2, batches_2) = batches(&segment_2, number_2);
    assert!(
        batches_2.len() >= 30,
        "node 2's WAL holds only {} batches",
        batches_2.len()
    );
    let candidates = &batches_2[batches_2.len() / 2..batches_2.len() * 2 / 3];
    let accept_with_payload = candidates.iter().find(|b| {
        let record = b.offset + BATCH_HEADER;
        bytes_2[record + 4] == KIND_ACCEPT && le_u32(&bytes_2, record + 8) > 0
    });
    let (victim_2, flipped_at) = match accept_with_payload {
        Some(b) => (*b, b.offset + BATCH_HEADER + RECORD_HEADER),
        None => (candidates[0], candidates[0].offset + BATCH_HEADER + 32),
    };
    flip_byte(&segment_2, flipped_at);

    let report_1 = assert_damage_found(&cluster, 1);
    let report_2 = assert_damage_found(&cluster, 2);
    eprintln!(
        "node 1: zeroed the block at offset {} of {} (batch {} of {}, first LSN {}, {} records):\n{report_1}",
        victim_1.offset,
        segment_1.file_name().unwrap().to_string_lossy(),
        batches_1.len() / 3,
        batches_1.len(),
        victim_1.first_lsn,
        victim_1.record_count
    );
    eprintln!(
        "node 2: flipped the byte at offset {flipped_at} of {} (batch at {}, first LSN {}, {} records, {} bytes; {} batches):\n{report_2}",
        segment_2.file_name().unwrap().to_string_lossy(),
        victim_2.offset,
        victim_2.first_lsn,
        victim_2.record_count,
        victim_2.batch_bytes,
        batches_2.len()
    );

    let logs_from = [log_len(&cluster, 1), log_len(&cluster, 2)];
    cluster.restart(1);
    cluster.restart(2);
    let restarted = Instant::now();
    let nodes = cluster.nodes();

    // The cluster elects and commits again, entering at every node.
    let deadline = restarted + Duration::from_secs(30);
    let mut first_commits = Vec::new();
    for entry in 0..nodes.len() {
        let (key, value) = (format!("after-{entry}"), format!("after-value-{entry}"));
        match put_before(&nodes, entry, &key, &value, deadline) {
            Ok(took) => first_commits.push((nodes[entry].id, took)),
            Err(e) => panic!(
                "{e}\nnode 1: {:?}\nnode 2: {:?}\n{}",
                try_stats(nodes[0].client_addr).map(|s| relearn_summary(&s)),
                try_stats(nodes[1].client_addr).map(|s| relearn_summary(&s)),
                cluster.logs()
            ),
        }
        written.push((key, value));
    }
    let commits_after = restarted.elapsed();

    let (converged, readings) = wait_converged(&nodes, Duration::from_secs(30));
    assert!(
        converged,
        "replicas differ after the repair: {readings:?}\n{}",
        cluster.logs()
    );
    assert_all_read_back(&cluster, &nodes, &written);

    // Both damaged replicas re-learned every group of the core and repaired it.
    for (i, id) in [1u32, 2].into_iter().enumerate() {
        let (done, stats) = wait_relearned_and_repaired(&cluster, id, Duration::from_secs(20));
        assert!(
            done,
            "node {id} did not re-learn and repair every group: {}\n{}",
            relearn_summary(&stats),
            cluster.logs()
        );
        assert!(counter_sum(&stats, "groups_relearning") > 0);
        assert!(counter_sum(&stats, "groups_repaired") > 0);
        eprintln!("node {id} after the damage: {}", relearn_summary(&stats));
        let log = log_since(&cluster, id, logs_from[i]);
        assert!(
            !log.contains("state was lost"),
            "node {id} held a WAL, its state was not lost:\n{log}"
        );
    }

    // Node 1 restarts again without new damage: the repair records cover the old damage.
    // (A short quiet time first, so that the followers' last Chosen marks are written.)
    std::thread::sleep(Duration::from_millis(500));
    cluster.kill9(1);
    let (_, report) = wal_verify(&cluster, 1);
    assert!(
        !report.contains("TAIL DAMAGE"),
        "the kill -9 of an idle node cut a write, so the second restart would re-learn for a new reason:\n{report}"
    );
    let log_from = log_len(&cluster, 1);
    cluster.restart(1);
    let restarted_again = Instant::now();
    let deadline = restarted_again + Duration::from_secs(30);
    let (key, value) = ("after-second-restart", "still-here");
    if let Err(e) = put_before(&nodes, 0, key, value, deadline) {
        panic!("{e}\n{}", cluster.logs());
    }
    written.push((key.to_string(), value.to_string()));
    let (converged, readings) = wait_converged(&nodes, Duration::from_secs(30));
    assert!(
        converged,
        "replicas differ after the second restart: {readings:?}\n{}",
        cluster.logs()
    );
    let stats = stats(cluster.node(1).client_addr);
    for core in cores(&stats) {
        assert_eq!(
            counter(core, "groups_relearning"),
            0,
            "node 1 re-learned again after a restart without new damage: {}\n{}\n{}",
            relearn_summary(&stats),
            log_since(&cluster, 1, log_from),
            cluster.logs()
        );
        assert_eq!(core["stuck_groups"].as_u64(), Some(0), "{core}");
    }
    assert_all_read_back(&cluster, &nodes, &written);
    eprintln!(
        "timings: 200 writes {:.1?}; first commits after the restart of both (per entry node) {first_commits:?}, all three {commits_after:.1?}; second restart to commit and convergence {:.1?}; test {:.1?}",
        written_at,
        restarted_again.elapsed(),
        test_start.elapsed()
    );
}

#[test]
fn wiped_data_dir_relearns_before_voting() {
    let test_start = Instant::now();
    let mut cluster = TestCluster::up(4, 1);
    let nodes = cluster.nodes();

    let mut written = Vec::new();
    for i in 0..100 {
        let (key, value) = (format!("w{i}"), format!("value-{i}"));
        match put(&nodes, i % 3, &key, &value) {
            Outcome::Ok(_) => written.push((key, value)),
            other => panic!("put {key}: {other:?}\n{}", cluster.logs()),
        }
    }

    // Unique writes entering at nodes 1 and 2 while node 3 is stopped, wiped and restarted:
    // every acknowledged one must survive.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let nodes = nodes.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let started = Instant::now();
            for i in 0..100_000usize {
                if stop.load(Ordering::Acquire) || started.elapsed() > Duration::from_secs(40) {
                    break;
                }
                let (key, value) = (format!("during-{i}"), format!("during-value-{i}"));
                if let Outcome::Ok(_) = put(&nodes, i % 2, &key, &value) {
                    acked.push((key, value));
                }
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    cluster.kill9(3);
    let data = cluster.path().join("node-3/data");
    std::fs::remove_dir_all(&data).expect("remove node 3's data directory");
    std::fs::create_dir(&data).expect("recreate it empty");
    let log_from = log_len(&cluster, 3);
    cluster.restart(3);
    let restarted = Instant::now();
    let addr_3 = cluster.node(3).client_addr;

    // While a core has not finished re-learning any group, it has sent no promise and no
    // acceptance.
    let (samples_before_repair, _) =
        sample_no_votes_before_repair(addr_3, Duration::from_secs(10), true);

    let log = log_since(&cluster, 3, log_from);
    assert!(
        log.contains("this node's state was lost"),
        "node 3 did not say its state was lost:\n{log}"
    );
    let (done, stats_3) = wait_relearned_and_repaired(&cluster, 3, Duration::from_secs(30));
    assert!(
        done,
        "node 3 did not re-learn and repair every group: {}\n{}",
        relearn_summary(&stats_3),
        cluster.logs()
    );
    assert!(counter_sum(&stats_3, "groups_relearning") > 0);
    let relearned_after = restarted.elapsed();

    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let acked = writer.join().expect("writer");
    assert!(
        acked.len() > 10,
        "the cluster kept committing while node 3 was down and re-learning: {} writes",
        acked.len()
    );
    written.extend(acked.iter().cloned());

    // Writes entering at the wiped node commit too.
    let deadline = Instant::now() + Duration::from_secs(30);
    if let Err(e) = put_before(&nodes, 2, "via-3", "via-3-value", deadline) {
        panic!("{e}\n{}", cluster.logs());
    }
    written.push(("via-3".into(), "via-3-value".into()));

    let (converged, readings) = wait_converged(&nodes, Duration::from_secs(30));
    assert!(
        converged,
        "node 3 did not catch up: {readings:?}\n{}",
        cluster.logs()
    );
    assert_all_read_back(&cluster, &nodes, &written);

    // Node 3 votes again: with node 1 stopped, every quorum needs it.
    cluster.kill9(1);
    let rest: Vec<NodeInfo> = cluster.nodes().into_iter().filter(|n| n.id != 1).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let took = match put_before(&rest, 1, "quorum-2-3", "needs-3", deadline) {
        Ok(took) => took,
        Err(e) => panic!("{e}\n{}", cluster.logs()),
    };
    written.push(("quorum-2-3".into(), "needs-3".into()));
    assert_all_read_back(&cluster, &rest, &written);

    // Wiped again while node 1 is down, node 3 has one peer that is not re-learning where it
    // needs n - q + 1 = 2 to set its target: it must not vote, so a write entering at node 2
    // (whose every quorum now needs node 3) waits; it commits once node 1 is back.
    cluster.kill9(3);
    std::fs::remove_dir_all(&data).expect("remove node 3's data directory");
    std::fs::create_dir(&data).expect("recreate it empty");
    cluster.restart(3);
    let acked_early = Arc::new(AtomicBool::new(false));
    let pending = {
        let acked_early = acked_early.clone();
        // Every node, so that the client can follow node 1 once it is back and leads.
        let all = cluster.nodes();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let result = put_before(&all, 1, "while-relearning", "waited", deadline);
            acked_early.store(result.is_ok(), Ordering::Release);
            result
        })
    };
    // Longer than the 5 s after which a core lists its stuck groups in its stats.
    let (held_samples, held_stats) =
        sample_no_votes_before_repair(addr_3, Duration::from_secs(6), false);
    let held = held_stats.expect("node 3 answered stats while re-learning");
    assert!(
        !acked_early.load(Ordering::Acquire),
        "a write committed while node 3 (wiped) was the only other member up and re-learning: {}",
        relearn_summary(&held)
    );
    for core in cores(&held) {
        assert!(
            counter(core, "groups_relearning") > 0 && counter(core, "groups_repaired") == 0,
            "node 3 finished re-learning without a quorum of undamaged reporters: {core}"
        );
    }
    cluster.restart(1);
    let (done, stats_again) = wait_relearned_and_repaired(&cluster, 3, Duration::from_secs(30));
    assert!(
        done,
        "node 3 did not re-learn once node 1 was back: {}\n{}",
        relearn_summary(&stats_again),
        cluster.logs()
    );
    let waited = match pending.join().expect("pending write") {
        Ok(took) => took,
        Err(e) => panic!("{e}\n{}", cluster.logs()),
    };
    written.push(("while-relearning".into(), "waited".into()));
    let nodes = cluster.nodes();
    let (converged, readings) = wait_converged(&nodes, Duration::from_secs(30));
    assert!(
        converged,
        "replicas differ after the second wipe: {readings:?}\n{}",
        cluster.logs()
    );
    assert_all_read_back(&cluster, &nodes, &written);
    eprintln!(
        "node 3 after the wipe: {}; {samples_before_repair} stats samples before any repair; re-learned {relearned_after:.1?} after the restart; {} writes acknowledged during the wipe; commit with nodes 2 and 3 only after {took:.1?}",
        relearn_summary(&stats_3),
        acked.len(),
    );
    eprintln!(
        "node 3 wiped again with node 1 down: held back as {} ({held_samples} samples, no vote); the write entering at node 2 committed after {waited:.1?}; test {:.1?}",
        relearn_summary(&held),
        test_start.elapsed()
    );
}
