//! Proves that three in-process nodes on loopback, each with real WALs on disk and a real
//! network thread, commit proposals made through the embedding API, apply the same sequence on
//! every replica, keep one durable write per writing round, and recover after a restart.
mod common;

use bytes::Bytes;
use common::{free_addrs, node_config, shutdown_all, start_nodes, wait_for, wait_until};
use paxring_engine::runtime::{
    Committed, Error, Node, NodeConfig, StateMachine, StateMachineFactory,
};
use paxring_wal::{GroupId, Instance};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Log = Arc<Mutex<Vec<(u32, u64, Vec<Bytes>)>>>;

/// Appends every applied value to a shared log; keeps no durable checkpoint.
struct Recorder {
    log: Log,
}

impl StateMachine for Recorder {
    fn apply(
        &mut self,
        group: GroupId,
        instance: Instance,
        commands: &[Bytes],
        results: &mut Vec<Bytes>,
    ) {
        self.log
            .lock()
            .unwrap()
            .push((group.0, instance.0, commands.to_vec()));
        for command in commands {
            results.push(Bytes::from(format!(
                "applied:{}",
                String::from_utf8_lossy(command)
            )));
        }
    }

    fn checkpoint_instance(&self) -> Option<Instance> {
        None
    }
}

#[derive(Clone, Copy)]
struct Shape {
    groups: u32,
    pipeline_depth: u32,
    linger_us: u64,
    /// The WAL's writes in flight per core.
    writes_in_flight: usize,
}

const DEFAULT_SHAPE: Shape = Shape {
    groups: 4,
    pipeline_depth: 8,
    linger_us: 0,
    writes_in_flight: 1,
};

fn config(id: u32, addrs: &[SocketAddr], dir: &Path, shape: Shape) -> NodeConfig {
    node_config(id, addrs, dir, 7)
        .pipeline_depth(shape.pipeline_depth)
        .batch_linger_us(shape.linger_us)
        .groups(shape.groups)
        .segment_bytes(16 << 20)
        .round_bytes_max(1 << 20)
        .wal_writes_in_flight(shape.writes_in_flight)
        .build()
        .unwrap()
}

fn start(id: u32, addrs: &[SocketAddr], dir: &Path, shape: Shape, log: Log) -> Node {
    let factory: StateMachineFactory =
        Box::new(
            move |_group| Ok(Box::new(Recorder { log: log.clone() }) as Box<dyn StateMachine>),
        );
    Node::start(config(id, addrs, dir, shape), factory).expect("node starts")
}

/// Proposes through whichever node leads `group`, following NotLeader hints; bounded in time
/// (waiting for an outcome included).
fn propose(nodes: &[Option<Node>], group: u32, command: &str) -> Committed {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut target = 0usize;
    loop {
        assert!(
            Instant::now() < deadline,
            "no commit of {command} within 20 s"
        );
        let Some(node) = nodes[target].as_ref() else {
            target = (target + 1) % nodes.len();
            continue;
        };
        let proposal = node.propose(GroupId(group), Bytes::from(command.to_string()));
        let Some(outcome) = wait_until(proposal, deadline) else {
            panic!("no outcome for {command} within 20 s");
        };
        match outcome {
            Ok(committed) => return committed,
            Err(Error::NotLeader {
                leader: Some(leader),
            }) if nodes[leader as usize - 1].is_some() => {
                target = leader as usize - 1;
            }
            Err(Error::NotLeader { .. }) | Err(Error::Overloaded) => {
                target = (target + 1) % nodes.len();
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(Error::Unknown(_)) => std::thread::sleep(Duration::from_millis(20)),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
}

fn wait_applied(logs: &[Log], count: usize) {
    wait_for(&format!("replicas apply {count} commands"), 20, || {
        logs.iter().all(|log| {
            log.lock()
                .unwrap()
                .iter()
                .map(|(_, _, commands)| commands.len())
                .sum::<usize>()
                >= count
        })
    });
}

fn sequences(log: &Log) -> Vec<(u32, u64, Vec<Bytes>)> {
    let mut entries = log.lock().unwrap().clone();
    entries.sort_by_key(|(group, instance, _)| (*group, *instance));
    entries
}

#[test]
fn three_nodes_commit_apply_identically_and_restart() {
    commit_apply_identically_and_restart(DEFAULT_SHAPE);
}

/// The same with four WAL writes in flight per core (docs/WAL_FORMAT.md): replies still
/// wait for every earlier record, and a restart recovers what was acknowledged.
#[test]
fn three_nodes_with_four_wal_writes_in_flight_commit_apply_identically_and_restart() {
    commit_apply_identically_and_restart(Shape {
        writes_in_flight: 4,
        ..DEFAULT_SHAPE
    });
}

fn commit_apply_identically_and_restart(shape: Shape) {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let groups = shape.groups;
    let logs: Vec<Log> = (0..3).map(|_| Log::default()).collect();
    let mut nodes = start_nodes(3, |id| {
        start(id, &addrs, dir.path(), shape, logs[id as usize - 1].clone())
    });

    let mut committed = Vec::new();
    for i in 0..40 {
        let group = i % groups;
        let c = propose(&nodes, group, &format!("cmd-{i}"));
        assert_eq!(c.group, GroupId(group));
        assert_eq!(c.result, Bytes::from(format!("applied:cmd-{i}")));
        committed.push(c);
    }
    wait_applied(&logs, 40);
    let reference = sequences(&logs[0]);
    for log in &logs[1..] {
        assert_eq!(
            sequences(log),
            reference,
            "every replica applies the same sequence"
        );
    }
    // Every acknowledged command sits in the applied sequence at the instance and index it was told.
    for c in &committed {
        let entry = reference
            .iter()
            .find(|(g, i, _)| *g == c.group.0 && *i == c.instance.0)
            .expect("instance applied");
        assert_eq!(
            entry.2[c.index as usize],
            Bytes::from(
                String::from_utf8_lossy(&c.result)
                    .trim_start_matches("applied:")
                    .to_string()
            )
        );
    }
    // One durable write per writing round, on every core of every node.
    std::thread::sleep(Duration::from_millis(50));
    for node in nodes.iter().flatten() {
        let stats = node.stats();
        assert!(stats.totals.write_rounds > 0);
        assert_eq!(stats.totals.durable_writes, stats.totals.write_rounds);
        assert_eq!(stats.totals.durable_writes_per_round, 1.0);
        for core in &stats.cores {
            let wal = core.wal.as_ref().expect("published");
            assert!(wal.writes > 0);
            assert_eq!(
                wal.durable_writes, wal.writes,
                "one durable write per WAL write"
            );
        }
    }

    // Restart node 3: it recovers its WAL, replays into a fresh state machine, and catches up.
    nodes[2].take().unwrap().shutdown().unwrap();
    for i in 40..60 {
        propose(&nodes, i % groups, &format!("cmd-{i}"));
    }
    let fresh: Log = Log::default();
    nodes[2] = Some(start(3, &addrs, dir.path(), shape, fresh.clone()));
    let logs_after = [logs[0].clone(), logs[1].clone(), fresh.clone()];
    wait_applied(&logs_after, 60);
    let reference = sequences(&logs[0]);
    assert_eq!(
        sequences(&fresh),
        reference,
        "the restarted replica replays and catches up to the same sequence"
    );
    shutdown_all(nodes);
}

#[test]
fn serial_pipeline_with_linger_commits_concurrent_proposals_in_shared_instances() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let shape = Shape {
        groups: 1,
        pipeline_depth: 1,
        linger_us: 2_000,
        writes_in_flight: 1,
    };
    let logs: Vec<Log> = (0..3).map(|_| Log::default()).collect();
    let nodes = start_nodes(3, |id| {
        start(id, &addrs, dir.path(), shape, logs[id as usize - 1].clone())
    });
    // Find the leader with one command, then send 50 at once: lingering lets them share instances.
    let first = propose(&nodes, 0, "first");
    // Leader hints are published every 20 ms: wait (bounded) until the leader says so.
    let deadline = Instant::now() + Duration::from_secs(5);
    let leader = loop {
        if let Some(node) = nodes
            .iter()
            .flatten()
            .find(|n| n.leader_hint(GroupId(0)) == Some(n.config().node_id))
        {
            break node;
        }
        assert!(
            Instant::now() < deadline,
            "no node says it leads after a commit"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let proposals: Vec<_> = (0..50)
        .map(|i| leader.propose(GroupId(0), Bytes::from(format!("c{i}"))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let committed: Vec<Committed> = proposals
        .into_iter()
        .map(|p| {
            wait_until(p, deadline)
                .expect("every outcome within 20 s")
                .unwrap()
        })
        .collect();
    let instances: std::collections::BTreeSet<u64> =
        committed.iter().map(|c| c.instance.0).collect();
    assert!(instances.iter().all(|i| *i > first.instance.0));
    assert!(
        instances.len() < committed.len(),
        "batching put several commands in one instance ({} instances for {} commands)",
        instances.len(),
        committed.len()
    );
    wait_applied(&logs, 51);
    let reference = sequences(&logs[0]);
    for log in &logs[1..] {
        assert_eq!(sequences(log), reference);
    }
    shutdown_all(nodes);
}
