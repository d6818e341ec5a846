//! Proves, with four in-process nodes on loopback (real WALs, real network threads), that a
//! group's membership changes through its log (docs/PROTOCOL.md#membership-change): a follower
//! node (id 4) becomes a voter and a voter becomes a follower node through
//! `Node::change_membership`, the change is chosen and governs `MEMBERSHIP_DELAY` instances
//! later, and from then on the group commits with a quorum that exists only in the new
//! configuration (the removed voter and another old voter down), every running node applying
//! the same sequence. Refusals are clear: a node the config does not list, no voter, a node
//! that does not lead. And that a follower node serves stale reads within their bound
//! (docs/PROTOCOL.md#stale-reads) and refuses them once it no longer hears a leader.
mod common;

use bytes::Bytes;
use common::{free_addrs, propose_many, shutdown_all, wait_for, wait_for_leader, wait_until};
use paxring_engine::core::MEMBERSHIP_DELAY;
use paxring_engine::runtime::{Error, Node, NodeConfig, StateMachine, StateMachineFactory};
use paxring_wal::{GroupId, Instance};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GROUP: GroupId = GroupId(0);

/// The two tests run one after the other: each picks its loopback ports a moment before its
/// nodes bind them, and two clusters picking at once could pick the same ones.
static SERIAL: Mutex<()> = Mutex::new(());
const FOLLOWER: u32 = 4;

type Log = Arc<Mutex<Vec<(u64, Vec<Bytes>)>>>;

/// Records every applied value of group 0.
struct Recorder {
    log: Log,
}

impl StateMachine for Recorder {
    fn apply(
        &mut self,
        _group: GroupId,
        instance: Instance,
        commands: &[Bytes],
        results: &mut Vec<Bytes>,
    ) {
        self.log
            .lock()
            .unwrap()
            .push((instance.0, commands.to_vec()));
        results.extend(commands.iter().map(|_| Bytes::new()));
    }

    fn checkpoint_instance(&self) -> Option<Instance> {
        None
    }

    /// The number of values applied so far.
    fn query(&self, _group: GroupId, _query: &[u8]) -> std::io::Result<Bytes> {
        Ok(Bytes::from(self.log.lock().unwrap().len().to_string()))
    }
}

/// Node `id` of voters 1..=3 and follower node 4, one group, one core.
fn start(id: u32, addrs: &[SocketAddr], dir: &Path, log: &Log, cluster_id: u64) -> Node {
    let mut builder = NodeConfig::builder(id, addrs[id as usize - 1], dir.join(format!("n{id}")))
        .cluster_id(cluster_id)
        .groups(1)
        .cores(1)
        .pin_cores(false)
        .tick_ms(5)
        .election_timeout_ticks(40)
        .heartbeat_ticks(4)
        .follower(id == FOLLOWER);
    for (i, addr) in addrs.iter().enumerate() {
        let peer = i as u32 + 1;
        if peer == id {
            continue;
        }
        builder = if peer == FOLLOWER {
            builder.follower_peer(peer, *addr)
        } else {
            builder.peer(peer, *addr)
        };
    }
    let log = log.clone();
    let factory: StateMachineFactory =
        Box::new(move |_| Ok(Box::new(Recorder { log: log.clone() }) as Box<dyn StateMachine>));
    Node::start(builder.build().unwrap(), factory).unwrap()
}

fn leader(nodes: &[Option<Node>]) -> u32 {
    let mut found = None;
    wait_for("a leader every node names", 30, || {
        let hints: Vec<Option<u32>> = nodes
            .iter()
            .flatten()
            .map(|n| n.leader_hint(GROUP))
            .collect();
        found = hints[0].filter(|l| hints.iter().all(|h| *h == Some(*l)));
        found.is_some()
    });
    found.unwrap()
}

/// Voters 1..=3 and follower node 4 in `dir`, a leader elected and 20 commands committed.
fn four_nodes(dir: &Path, cluster_id: u64) -> (Vec<Option<Node>>, Vec<Log>) {
    let addrs = free_addrs(4);
    let logs: Vec<Log> = (0..4).map(|_| Log::default()).collect();
    let nodes: Vec<Option<Node>> = (1..=4u32)
        .map(|id| Some(start(id, &addrs, dir, &logs[id as usize - 1], cluster_id)))
        .collect();
    wait_for_leader(&nodes, GROUP);
    propose_many(&nodes, 0, 20, 16, 4);
    (nodes, logs)
}

#[test]
fn a_follower_node_replaces_a_voter_through_the_log() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, logs) = four_nodes(dir.path(), 0x4E4B_0015);

    let lead = leader(&nodes);
    assert_ne!(lead, FOLLOWER, "a follower node never leads");
    let node = |id: u32| nodes[id as usize - 1].as_ref().unwrap();
    // A new cluster's voters re-learn first (an empty data directory cannot be told from a
    // lost disk); a change made while two of them still do could leave two re-learning voters
    // of a three-voter configuration waiting for each other (docs/PROTOCOL.md#membership-change).
    wait_for("the voters' first re-learn", 30, || {
        (1..=3).all(|id| {
            node(id)
                .stats()
                .cores
                .iter()
                .map(|c| c.protocol.groups_repaired)
                .sum::<u64>()
                >= 1
        })
    });
    let deadline = || Instant::now() + Duration::from_secs(30);

    // Refusals: an unknown node, no voter, and a node that does not lead.
    let refused = |outcome: Option<Result<_, Error>>| match outcome {
        Some(Err(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let unknown = refused(wait_until(
        node(lead).change_membership(GROUP, &[1, 2, 9], &[]),
        deadline(),
    ));
    assert!(
        matches!(&unknown, Error::Membership(m) if m.contains("node 9")),
        "{unknown}"
    );
    let empty = refused(wait_until(
        node(lead).change_membership(GROUP, &[], &[1, 2, 3, 4]),
        deadline(),
    ));
    assert!(matches!(empty, Error::Membership(_)), "{empty}");
    let other = [1, 2, 3].into_iter().find(|n| *n != lead).unwrap();
    let not_leader = refused(wait_until(
        node(other).change_membership(GROUP, &[1, 2, 4], &[3]),
        deadline(),
    ));
    assert!(
        matches!(not_leader, Error::NotLeader { .. }),
        "{not_leader}"
    );

    // The change: the follower node votes, a voter other than the leader follows.
    let removed = [1, 2, 3]
        .into_iter()
        .find(|n| *n != lead)
        .expect("two voters are not the leader");
    let mut voters: Vec<u32> = [1, 2, 3, FOLLOWER]
        .into_iter()
        .filter(|n| *n != removed)
        .collect();
    voters.sort_unstable();
    let chosen = wait_until(
        node(lead).change_membership(GROUP, &voters, &[removed]),
        deadline(),
    )
    .expect("an outcome within 30 s")
    .expect("the change is chosen");
    let governs = chosen.instance.0 + MEMBERSHIP_DELAY;
    // The leader fills the gap with no-ops: every node gets there without more traffic.
    wait_for("every node applies past the change", 60, || {
        nodes
            .iter()
            .flatten()
            .all(|n| n.applied_next(GROUP).is_some_and(|a| a.0 >= governs))
    });

    // Node 4 started with an empty data directory, which cannot be told from a lost disk: it
    // re-learns before its first vote as a voter (docs/PROTOCOL.md#membership-change), with
    // the old voters still up.
    wait_for("node 4 re-learned and votes", 60, || {
        let stats = node(FOLLOWER).stats();
        let repaired: u64 = stats.cores.iter().map(|c| c.protocol.groups_repaired).sum();
        repaired >= 1
            && stats
                .cores
                .iter()
                .all(|c| c.stuck.iter().all(|s| !s.contains("re-learning")))
    });

    // Down: the removed voter and the old voter that is neither it nor the leader. Of the old
    // voters only the leader runs, which is no quorum of them; the new voters (the leader and
    // node 4) are two of three.
    let third = [1, 2, 3]
        .into_iter()
        .find(|n| *n != lead && *n != removed)
        .unwrap();
    for id in [removed, third] {
        nodes[id as usize - 1].take().unwrap().shutdown().unwrap();
    }
    propose_many(&nodes, 100, 20, 16, 4);

    // Every running node applied the same sequence (the leader's and node 4's logs agree).
    let lead_log = logs[lead as usize - 1].lock().unwrap().clone();
    wait_for("node 4 applies what the leader applied", 30, || {
        logs[FOLLOWER as usize - 1].lock().unwrap().len() >= lead_log.len()
    });
    let follower_log = logs[FOLLOWER as usize - 1].lock().unwrap().clone();
    assert_eq!(
        &follower_log[..lead_log.len()],
        &lead_log[..],
        "node 4 applied another sequence"
    );
    let status = nodes[FOLLOWER as usize - 1].as_ref().unwrap().stats();
    let applied_changes: u64 = status
        .cores
        .iter()
        .map(|c| c.protocol.membership_changes_applied)
        .sum();
    assert_eq!(applied_changes, 1);
    let known = status.memberships[0].clone().expect("published");
    assert_eq!(known.voters, voters, "{known:?}");
    assert_eq!(known.followers, vec![removed], "{known:?}");
    shutdown_all(nodes);
}

#[test]
fn a_follower_node_serves_stale_reads_within_their_bound() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, logs) = four_nodes(dir.path(), 0x4E4B_0016);
    let lead = leader(&nodes);
    let follower = nodes[FOLLOWER as usize - 1].as_ref().unwrap();
    let deadline = || Instant::now() + Duration::from_secs(10);

    // Linearizable reads need the leader; a stale read is served by the follower node itself,
    // and once the leader's next message arrived it reflects every acknowledged write.
    let linearizable = wait_until(
        follower.read(GROUP, Bytes::new(), paxring_engine::core::ReadMode::Lease),
        deadline(),
    );
    assert!(
        matches!(linearizable, Some(Err(Error::NotLeader { .. }))),
        "{linearizable:?}"
    );
    let applied_by_leader = logs[lead as usize - 1].lock().unwrap().len();
    let mut served = 0usize;
    wait_for(
        "a stale read reflecting the acknowledged writes",
        10,
        || {
            let answer = wait_until(
                follower.read_stale(GROUP, Bytes::new(), Duration::from_millis(500)),
                deadline(),
            );
            if let Some(Ok(committed)) = answer {
                served = String::from_utf8_lossy(&committed.result).parse().unwrap();
            }
            served >= applied_by_leader
        },
    );

    // Every voter stops: the follower node hears no leader, so a read with a 200 ms bound is
    // refused once 200 ms have passed, while a bound of an hour is still served.
    for voter in nodes.iter_mut().take(3) {
        voter.take().unwrap().shutdown().unwrap();
    }
    let follower = nodes[FOLLOWER as usize - 1].as_ref().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let refused = wait_until(
        follower.read_stale(GROUP, Bytes::new(), Duration::from_millis(200)),
        deadline(),
    );
    assert!(
        matches!(refused, Some(Err(Error::TooStale { max_ms: 200 }))),
        "{refused:?}"
    );
    let old = wait_until(
        follower.read_stale(GROUP, Bytes::new(), Duration::from_secs(3600)),
        deadline(),
    );
    assert!(matches!(old, Some(Ok(_))), "{old:?}");
    // The counter (published every 20 ms) shows the refusal.
    wait_for("the refusal counted", 5, || {
        let stats = follower.stats();
        stats
            .cores
            .iter()
            .map(|c| c.protocol.reads_refused_stale)
            .sum::<u64>()
            >= 1
    });
    shutdown_all(nodes);
}
