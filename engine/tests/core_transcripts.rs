//! Transcript-style scenarios of the consensus core, driven by hand through the same
//! `CoreTable` API as the runtime: steady state (1 RTT, one durable record per instance per
//! replica, compared against `testdata/transcript_steady.txt`), prepare rejected, duelling
//! proposers, leader crash mid-pipeline, partitioned minority, restart after losing unsynced
//! writes, a damaged WAL record (re-learn before voting), and a replica whose storage is full.
//!
//! Regenerate the steady-state transcript with `UPDATE_TRANSCRIPTS=1 cargo test -p
//! paxring-engine --test core_transcripts` and review the diff.
mod core_harness;

use core_harness::{Cluster, GROUP};
use paxring_engine::core::*;
use std::collections::BTreeSet;

fn config() -> Config {
    core_harness::transcript_config()
}

fn commands(values: &[(Instance, bytes::Bytes)]) -> Vec<String> {
    values
        .iter()
        .flat_map(|(_, v)| value::decode(v).unwrap())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .collect()
}

#[test]
fn steady_state_is_one_round_trip_and_one_record_per_instance() {
    let mut cluster = Cluster::new(3, config());
    cluster.elect(1);
    let prepared = cluster.table(1).stats().prepares_started;
    cluster.log_messages = true;
    cluster.note("-- steady state: two proposals in two rounds".to_string());
    cluster.propose(1, 1, "a").unwrap();
    cluster.settle();
    cluster.propose(1, 2, "b").unwrap();
    cluster.settle();
    cluster.tick_all(12); // a heartbeat carries the applied point to the followers
    assert_eq!(
        cluster.table(1).stats().prepares_started,
        prepared,
        "no new Prepare"
    );
    let stats = cluster.table(1).stats().clone();
    assert_eq!(stats.commit_instances, 2);
    assert_eq!(stats.commit_rtts_total, 2, "1 RTT per commit");
    for node in 1..=3 {
        assert_eq!(cluster.records(node, RecordKind::Accept), 2, "node {node}");
        assert_eq!(commands(&cluster.applied(node)), ["a", "b"], "node {node}");
    }
    let start = cluster
        .transcript
        .iter()
        .position(|l| l.starts_with("-- steady"))
        .unwrap();
    let text = cluster.transcript[start..].join("\n") + "\n";
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/transcript_steady.txt"
    );
    if std::env::var_os("UPDATE_TRANSCRIPTS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let expected = std::fs::read_to_string(path).expect("testdata transcript exists");
    assert_eq!(text, expected, "transcript changed; regenerate and review");
}

#[test]
fn batches_many_proposals_into_one_instance() {
    let mut cluster = Cluster::new(3, config());
    cluster.elect(1);
    for id in 0..10 {
        cluster.propose(1, id, &format!("c{id}")).unwrap();
    }
    cluster.settle();
    let committed = cluster.committed();
    assert_eq!(committed.len(), 10);
    let instances: BTreeSet<Instance> = committed.iter().map(|c| c.1).collect();
    assert_eq!(instances.len(), 1, "one instance for one round's commands");
    let indexes: Vec<u32> = committed.iter().map(|c| c.2).collect();
    assert_eq!(indexes, (0..10).collect::<Vec<u32>>());
}

#[test]
fn full_queue_is_overloaded_at_once() {
    let mut cluster = Cluster::new(
        3,
        Config {
            proposal_queue_max: 2,
            ..config()
        },
    );
    cluster.elect(1);
    cluster.propose(1, 1, "a").unwrap();
    cluster.propose(1, 2, "b").unwrap();
    assert_eq!(cluster.propose(1, 3, "c"), Err(FailReason::Overloaded));
    assert_eq!(
        cluster.propose(2, 4, "d"),
        Err(FailReason::NotLeader {
            leader_hint: Some(NodeId(1))
        })
    );
}

#[test]
fn prepare_rejected_by_a_higher_promise_then_retried_higher() {
    let mut cluster = Cluster::new(3, config());
    // Node 1 hears nothing while 2 wins with 3's promise (ballot 1.2).
    for other in [2, 3] {
        cluster.cut.insert((NodeId(other), NodeId(1)));
        cluster.cut.insert((NodeId(1), NodeId(other)));
    }
    cluster.elect(2);
    // Node 1 can reach 3 again, never 2: its first ballot (1.1) is below 3's promise.
    cluster.cut.remove(&(NodeId(3), NodeId(1)));
    cluster.cut.remove(&(NodeId(1), NodeId(3)));
    cluster.log_messages = true;
    cluster.tick_node(1, 400);
    let stats = cluster.table(1).stats().clone();
    assert!(stats.rejections_received >= 1, "{stats:?}");
    assert!(
        cluster
            .transcript
            .iter()
            .any(|l| l == "n3 -> n1: Reject 1.1 (promised 1.2)"),
        "{:#?}",
        cluster.transcript
    );
    assert!(stats.prepares_started >= 2, "backed off and prepared again");
    assert!(cluster.table(1).is_leader(GROUP), "the higher retry wins");
    cluster.propose(1, 9, "x").unwrap();
    cluster.settle();
    assert_eq!(cluster.committed().len(), 1);
}

#[test]
fn duelling_proposers_agree() {
    let mut cluster = Cluster::new(3, config());
    cluster.elect(1);
    cluster.propose(1, 1, "from-1").unwrap();
    // Node 3 prepares while 1 leads: 1 is deposed, its proposal becomes Unknown or Committed.
    cluster.tick_node(3, 200);
    cluster.tick_all(300);
    let leaders: Vec<u32> = (1..=3)
        .filter(|n| cluster.table(*n).is_leader(GROUP))
        .collect();
    assert_eq!(leaders.len(), 1);
    cluster.propose(leaders[0], 2, "after").unwrap();
    cluster.settle();
    cluster.tick_all(30);
    let first = cluster.applied(1);
    for node in 2..=3 {
        assert_eq!(cluster.applied(node), first, "identical sequences");
    }
    assert!(commands(&first).contains(&"after".to_string()));
}

#[test]
fn leader_crash_mid_pipeline_keeps_every_acknowledged_command() {
    let mut cluster = Cluster::new(3, config());
    cluster.elect(1);
    cluster.propose(1, 1, "a").unwrap();
    cluster.settle();
    // Open several instances; followers accept but node 1 crashes before learning them.
    cluster.cut.insert((NodeId(2), NodeId(1)));
    cluster.cut.insert((NodeId(3), NodeId(1)));
    for id in 2..6 {
        cluster.propose(1, id, &format!("p{id}")).unwrap();
        cluster.settle();
    }
    cluster.crash(1);
    cluster.cut.clear();
    cluster.elect(2);
    cluster.tick_all(30);
    // The new leader recovered the accepted values of the open window.
    let applied = commands(&cluster.applied(2));
    for id in 2..6 {
        assert!(
            applied.contains(&format!("p{id}")),
            "p{id} recovered: {applied:?}"
        );
    }
    for (id, instance, index) in cluster.committed() {
        let value = &cluster.applied(2)[instance.0 as usize].1;
        let commands = value::decode(value).unwrap();
        assert!(commands.len() > index as usize, "proposal {id:?}");
    }
    cluster.restart(1, &[]);
    cluster.tick_all(40);
    assert_eq!(
        cluster.applied(1),
        cluster.applied(2),
        "restarted node catches up"
    );
}

#[test]
fn partitioned_minority_cannot_commit_and_catches_up() {
    let mut cluster = Cluster::new(3, config());
    cluster.elect(1);
    for other in [1, 2] {
        cluster.cut.insert((NodeId(3), NodeId(other)));
        cluster.cut.insert((NodeId(other), NodeId(3)));
    }
    for id in 0..5 {
        cluster.propose(1, id, &format!("m{id}")).unwrap();
        cluster.settle();
    }
    assert_eq!(cluster.committed().len(), 5, "the majority commits");
    // The minority times out and prepares, but cannot win.
    cluster.tick_node(3, 300);
    assert!(!cluster.table(3).is_leader(GROUP));
    // A candidate may queue it, but it is never chosen while cut off.
    let _ = cluster.propose(3, 99, "minority");
    cluster.tick_node(3, 100);
    assert!(cluster.committed().iter().all(|c| c.0 != ProposalId(99)));
    assert!(cluster.applied(3).is_empty());
    cluster.cut.clear();
    cluster.tick_all(400);
    cluster.propose_on_leader(100, "healed");
    cluster.tick_all(50);
    assert_eq!(cluster.applied(3), cluster.applied(1), "minority caught up");
    assert!(commands(&cluster.applied(3)).contains(&"healed".to_string()));
}

#[test]
fn restart_after_losing_unsynced_writes_breaks_no_promise() {
    let mut cluster = Cluster::new(3, config());
    cluster.elect(1);
    cluster.propose(1, 1, "a").unwrap();
    cluster.settle();
    // Node 3's disk stalls: it appends the Accept but never syncs, so it never answers.
    cluster.stalled.insert(NodeId(3));
    cluster.propose(1, 2, "b").unwrap();
    cluster.settle();
    let accepted_3 = cluster
        .transcript
        .iter()
        .filter(|l| l.contains("n3 -> n1: Accepted"))
        .count();
    assert_eq!(accepted_3, 0, "no Accepted before durable");
    cluster.crash(3);
    cluster.stalled.clear();
    cluster.restart(3, &[]);
    cluster.tick_all(40);
    assert_eq!(cluster.applied(3), cluster.applied(1));
    assert_eq!(commands(&cluster.applied(3)), ["a", "b"]);
}

#[test]
fn damaged_record_relearns_before_voting() {
    let mut cluster = Cluster::new(3, config());
    cluster.elect(1);
    for id in 0..4 {
        cluster.propose(1, id, &format!("d{id}")).unwrap();
        cluster.settle();
    }
    cluster.tick_all(15);
    cluster.crash(2);
    let damaged = {
        let log = &cluster.nodes[&NodeId(2)].log;
        log.iter()
            .find(|(_, r, _)| r.kind == RecordKind::Accept)
            .unwrap()
            .0
    };
    cluster.restart(2, &[damaged]);
    assert!(cluster.table(2).is_relearning(GROUP));
    // While re-learning it does not answer a Prepare.
    let before = cluster.table(2).stats().promises_sent;
    cluster.table(2).on_message(
        NodeId(3),
        GroupId(7),
        Message::Prepare {
            ballot: Ballot {
                number: 50,
                node: 3,
            },
            first: Instance(0),
        },
    );
    cluster.settle();
    assert_eq!(cluster.table(2).stats().promises_sent, before);
    // New instances are chosen; node 2 re-learns and then votes again.
    for id in 10..20 {
        cluster.propose_on_leader(id, &format!("n{id}"));
        cluster.tick_all(5);
    }
    cluster.tick_all(100);
    assert!(!cluster.table(2).is_relearning(GROUP));
    assert_eq!(cluster.applied(2), cluster.applied(1));
}

#[test]
fn codec_round_trips_every_kind() {
    let ballot = Ballot { number: 3, node: 2 };
    let messages = vec![
        Message::Prepare {
            ballot,
            first: Instance(4),
        },
        Message::Promise {
            ballot,
            first: Instance(4),
            applied_next: Instance(2),
            truncated: true,
            entries: vec![PromiseEntry {
                instance: Instance(4),
                ballot,
                chosen: false,
                value: bytes::Bytes::from_static(b"v"),
            }],
        },
        Message::Accept {
            ballot,
            instance: Instance(9),
            value: bytes::Bytes::from_static(b"xyz"),
            chosen_through: Instance(8),
        },
        Message::Accepted {
            ballot,
            instance: Instance(9),
            value_crc: 0xDEAD_BEEF,
        },
        Message::Reject {
            rejected: ballot,
            promised: Ballot { number: 4, node: 1 },
        },
        Message::Commit {
            ballot,
            chosen_through: Instance(5),
            checksum: 77,
            lease: 3,
        },
        Message::CatchupRequest {
            from: Instance(1),
            request: 9,
            until: Instance(12),
            entries_max: 300,
            bytes_max: 70_000,
        },
        Message::CatchupReply {
            request: 9,
            applied_next: Instance(3),
            high: Instance(7),
            log_base: Instance(1),
            relearning: true,
            state_lost: false,
            promised: ballot,
            entries: vec![(Instance(1), bytes::Bytes::from_static(b"q"))],
            served_end: Instance(2),
            checksum: 5,
        },
        Message::CommitAck {
            ballot,
            lease: 3,
            granted: true,
        },
        Message::CheckpointRequest {
            instance: Some(Instance(40)),
            offset: 4096,
            need: Instance(3),
        },
        Message::CheckpointRequest {
            instance: None,
            offset: 0,
            need: Instance(3),
        },
        Message::CheckpointChunk {
            info: Some(paxring_engine::core::CheckpointInfo {
                instance: Instance(40),
                log_checksum: 0xABCD,
                payload_bytes: 9000,
                payload_crc: 17,
            }),
            offset: 4096,
            data: bytes::Bytes::from_static(b"image"),
            configs: bytes::Bytes::from_static(b"history"),
        },
        Message::CheckpointChunk {
            info: None,
            offset: 0,
            data: bytes::Bytes::new(),
            configs: bytes::Bytes::new(),
        },
    ];
    for message in messages {
        let bytes = message.encode();
        assert_eq!(bytes[0], message.kind());
        assert_eq!(Message::decode(&bytes).unwrap(), message);
        for cut in 0..bytes.len() {
            assert!(Message::decode(&bytes[..cut]).is_err(), "truncated {cut}");
        }
    }
    assert_eq!(Message::decode(&[200]), Err(DecodeError::UnknownKind(200)));
}

impl Cluster {
    /// Proposes on the current leader, waiting (bounded) for an election if there is none.
    fn propose_on_leader(&mut self, id: u64, command: &str) {
        let mut leader = None;
        for _ in 0..500 {
            leader = (1..=3).find(|n| {
                self.nodes[&NodeId(*n)].driver.is_some() && self.table(*n).is_leader(GROUP)
            });
            if leader.is_some() {
                break;
            }
            self.tick_all(1);
        }
        let leader = leader.expect("a leader within 500 ticks");
        self.propose(leader, id, command).unwrap();
        self.settle();
    }
}

/// The driver encodes an Accept once for both peers (one frame, two sends) and copies the
/// value once into it: the fan-out claim of docs/ARCHITECTURE.md, measured by the driver's own
/// counters.
#[test]
fn an_accept_is_encoded_once_and_its_value_copied_once() {
    let mut cluster = Cluster::new(3, config());
    cluster.elect(1);
    cluster.settle();
    let stats = |c: &Cluster| c.nodes[&NodeId(1)].driver.as_ref().unwrap().stats().clone();
    let before = stats(&cluster);
    cluster.propose(1, 1, "hello").unwrap();
    cluster.settle();
    let after = stats(&cluster);
    assert_eq!(after.accepts_encoded - before.accepts_encoded, 1);
    let value_bytes = value::encoded_len([&bytes::Bytes::from_static(b"hello")]) as u64;
    assert_eq!(
        after.value_bytes_copied - before.value_bytes_copied,
        value_bytes
    );
    let encoded = after.frames_encoded - before.frames_encoded;
    let sent = after.frames_sent - before.frames_sent;
    assert!(sent > encoded, "{sent} sends of {encoded} frames");
    assert_eq!(cluster.applied(2).len(), cluster.applied(1).len());
}

/// A three-node cluster led by node 1 that chose `instances` instances (one command each)
/// while node 3 was cut off (it still is).
fn with_node_3_behind(config: Config, instances: u64) -> Cluster {
    let mut cluster = Cluster::new(3, config);
    cluster.elect(1);
    for other in [1, 2] {
        cluster.cut.insert((NodeId(3), NodeId(other)));
        cluster.cut.insert((NodeId(other), NodeId(3)));
    }
    for id in 0..instances {
        cluster.propose(1, id, &format!("m{id}")).unwrap();
        cluster.settle();
    }
    cluster
}

/// What a lagging replica's catch-up looked like on the wire.
#[derive(Default, Debug)]
struct StreamSeen {
    requests: u64,
    replies: u64,
    /// The largest `entries_max` a request asked for.
    entries_max: u32,
    /// Replies whose answer went on beyond them (`served_end` past their last entry).
    replies_with_more: u64,
}

/// Streaming catch-up (docs/PROTOCOL.md#streaming-catch-up): a replica 1,200 instances behind
/// asks within its window (half of `catchup_window_instances` per request), a request is
/// answered with several replies that name where the answer ends, and it catches up.
#[test]
fn a_lagging_replica_streams_within_its_window() {
    let config = Config {
        chosen_retained_max: 64,
        catchup_window_instances: 1024,
        ..config()
    };
    let mut cluster = with_node_3_behind(config, 1200);
    assert_eq!(cluster.applied(1).len(), 1200);
    let seen = std::rc::Rc::new(std::cell::RefCell::new(StreamSeen::default()));
    let record = seen.clone();
    cluster.drop_if = Some(Box::new(move |from, to, msg| {
        let mut seen = record.borrow_mut();
        match msg {
            Message::CatchupRequest { entries_max, .. } if from == NodeId(3) => {
                seen.requests += 1;
                seen.entries_max = seen.entries_max.max(*entries_max);
            }
            Message::CatchupReply {
                entries,
                served_end,
                ..
            } if to == NodeId(3) && !entries.is_empty() => {
                seen.replies += 1;
                let last = entries.last().unwrap().0;
                seen.replies_with_more += u64::from(served_end.0 > last.0 + 1);
            }
            _ => {}
        }
        false
    }));
    cluster.cut.clear();
    cluster.tick_all(200);
    assert_eq!(cluster.applied(3), cluster.applied(1), "caught up");
    let seen = seen.borrow();
    // Each request asks for half the window at most.
    assert!(seen.entries_max > 0 && seen.entries_max <= 512, "{seen:?}");
    // A request for 512 values is answered with two replies of 256, the first naming the end.
    assert!(seen.replies_with_more > 0, "{seen:?}");
    // 1,200 values asked half a window (512) at a time: a handful of requests, not one per
    // reply.
    assert!(seen.requests <= 12, "{seen:?}");
}

/// Purge holds for lagging peers: while a peer catches up from the log, the leader's log base
/// does not move past what it asked for (its status names the peer); once the peer has been
/// silent for `purge_hold_ticks`, the base moves.
#[test]
fn the_log_base_holds_for_a_peer_catching_up() {
    let config = Config {
        chosen_retained_max: 64,
        catchup_window_instances: 256,
        purge_hold_ticks: 100,
        ..config()
    };
    let mut cluster = with_node_3_behind(config, 600);
    // Node 3 hears one Commit and asks node 1 for catch-up from 0; its replies are lost.
    cluster.cut.clear();
    cluster.drop_if = Some(Box::new(|from, to, msg| {
        (to == NodeId(3) && from == NodeId(1) && matches!(msg, Message::CatchupReply { .. }))
            || (to == NodeId(3) && from == NodeId(2))
    }));
    cluster.tick_all(30);
    let lsn = cluster.table(1).set_log_base(GROUP, Instance(600));
    assert!(lsn.is_none(), "held at 0: nothing to move");
    let status = cluster.table(1).group_status(GROUP).unwrap();
    assert_eq!(status.log_base, Instance(0));
    assert_eq!(status.log_base_held_by.map(|(n, _)| n), Some(NodeId(3)));
    // Node 3 goes silent: after the hold, the base moves.
    cluster.cut.insert((NodeId(3), NodeId(1)));
    cluster.cut.insert((NodeId(3), NodeId(2)));
    cluster.tick_node(1, 150);
    assert!(cluster
        .table(1)
        .set_log_base(GROUP, Instance(600))
        .is_some());
    let status = cluster.table(1).group_status(GROUP).unwrap();
    assert_eq!(status.log_base, Instance(600));
    assert_eq!(status.log_base_held_by, None);
}

/// Check quorum and leader stickiness (docs/PROTOCOL.md#leader-stickiness-and-check-quorum),
/// with every clock running: a node that was cut off and times out cannot depose a leader its
/// peers still hear (its Prepares are ignored and counted), and a leader cut off from every
/// peer steps down within an election timeout, answering its queued proposal at once.
#[test]
fn check_quorum_keeps_a_live_leader_and_retires_an_isolated_one() {
    let config = Config {
        check_quorum: true,
        ..config()
    };
    let mut cluster = Cluster::new(3, config);
    cluster.elect(1);
    cluster.propose(1, 1, "a").unwrap();
    cluster.settle();
    // Node 3 hears nothing for a while and prepares; 1 and 2 still hear each other.
    for other in [1, 2] {
        cluster.cut.insert((NodeId(other), NodeId(3)));
    }
    cluster.tick_all(150);
    assert!(cluster.table(3).stats().prepares_started >= 1);
    cluster.cut.clear();
    cluster.tick_all(150);
    assert!(cluster.table(1).is_leader(GROUP), "the live leader stays");
    let ignored = cluster.table(1).stats().prepares_ignored_leader_alive
        + cluster.table(2).stats().prepares_ignored_leader_alive;
    assert!(ignored >= 1, "node 3's Prepares were ignored");
    cluster.propose(1, 2, "b").unwrap();
    cluster.settle();
    assert_eq!(cluster.committed().len(), 2);
    // Node 1 is cut off from both peers: it steps down by itself and answers its queue.
    for other in [2, 3] {
        cluster.cut.insert((NodeId(1), NodeId(other)));
        cluster.cut.insert((NodeId(other), NodeId(1)));
    }
    cluster.propose(1, 3, "c").unwrap();
    cluster.tick_node(1, 60);
    assert!(
        !cluster.table(1).is_leader(GROUP),
        "an isolated leader steps down"
    );
    assert_eq!(cluster.table(1).stats().leader_stepdowns_no_quorum, 1);
    assert!(cluster
        .results
        .iter()
        .any(|(n, r)| *n == NodeId(1) && !matches!(r, ProposalResult::Committed { .. })));
}

/// Leases on (the transcripts' default turns them off), with check quorum.
fn lease_config() -> Config {
    Config {
        check_quorum: true,
        // Longer than the election timeout (50): the grants, not stickiness, hold the next
        // election back.
        master_lease_ticks: 120,
        clock_drift_ppm: 10_000,
        ..config()
    }
}

/// A master serves a lease read from its applied state with no message, a read-index read
/// after one lease round, and a follower refuses reads; its followers grant it the lease and
/// no other node becomes leader before every grant it needs has ended.
#[test]
fn a_master_serves_reads_and_no_other_leads_before_its_grants_end() {
    let mut cluster = Cluster::new(3, lease_config());
    cluster.elect(1);
    cluster.tick_all(12); // a lease round, answered with grants
    let until = cluster
        .table(1)
        .master_until(GROUP)
        .expect("node 1 is master");
    assert!(until > cluster.now(1));
    assert_eq!(cluster.table(1).stats().master_terms, 1);
    for follower in [2, 3] {
        let (holder, _) = cluster
            .table(follower)
            .lease_granted(GROUP)
            .expect("granted");
        assert_eq!(holder, Some(NodeId(1)));
    }
    cluster.propose(1, 1, "a").unwrap();
    cluster.settle();

    // A lease read: no message, served at once with "a" applied.
    let sent = cluster.table(1).stats().messages_sent;
    cluster.read(1, 100, ReadMode::Lease).unwrap();
    cluster.settle();
    assert_eq!(
        cluster.table(1).stats().messages_sent,
        sent,
        "a lease read sends nothing"
    );
    let (node, ready, applied) = *cluster.reads.last().expect("served");
    assert_eq!(
        (node, ready.id, ready.mode),
        (NodeId(1), ProposalId(100), ReadMode::Lease)
    );
    assert_eq!(applied, 1);

    // A read-index read: one lease round, then served.
    let rounds = cluster.table(1).stats().lease_rounds_sent;
    cluster.read(1, 101, ReadMode::Index).unwrap();
    cluster.settle();
    assert_eq!(cluster.table(1).stats().lease_rounds_sent, rounds + 1);
    let (_, ready, _) = *cluster.reads.last().unwrap();
    assert_eq!((ready.id, ready.mode), (ProposalId(101), ReadMode::Index));

    // A follower refuses, naming the leader.
    assert_eq!(
        cluster.read(2, 102, ReadMode::Lease),
        Err(FailReason::NotLeader {
            leader_hint: Some(NodeId(1))
        })
    );

    // Node 1 stops (its clock stands still, as a paused process's would): 2 and 3 elect a
    // leader only once both their grants to node 1 have ended.
    let grant_end = |cluster: &mut Cluster, n: u32| cluster.table(n).lease_granted(GROUP);
    let ends: Vec<Tick> = [2, 3]
        .iter()
        .map(|n| grant_end(&mut cluster, *n).unwrap().1)
        .collect();
    cluster.isolate(1);
    let mut new_leader = None;
    for _ in 0..400 {
        for n in [2u32, 3] {
            let node = cluster.nodes.get_mut(&NodeId(n)).unwrap();
            node.now += 1;
            let now = node.now;
            node.driver.as_mut().unwrap().tick(Tick(now));
        }
        cluster.settle();
        if let Some(n) = [2u32, 3]
            .into_iter()
            .find(|n| cluster.table(*n).is_leader(GROUP))
        {
            new_leader = Some(n);
            break;
        }
    }
    let new_leader = new_leader.expect("2 or 3 leads after the grants end");
    assert!(
        cluster.now(2) >= ends[0] && cluster.now(3) >= ends[1],
        "node {new_leader} led before the grants to node 1 ended"
    );
    let refused = cluster.table(2).stats().prepares_refused_lease
        + cluster.table(3).stats().prepares_refused_lease
        + cluster.table(2).stats().elections_deferred_lease
        + cluster.table(3).stats().elections_deferred_lease;
    assert!(refused >= 1, "the grants held an election back");
    // Node 1's own clock decides: master until its lease ends, then not.
    assert!(cluster.table(1).master_until(GROUP).is_some());
    cluster.tick_node(1, until.0 - cluster.now(1).0);
    assert_eq!(cluster.table(1).master_until(GROUP), None);
}

/// A new leader serves reads only once the window its phase 1 recovered is applied: a value
/// the old leader chose (and answered) may not be applied here yet.
#[test]
fn a_new_leaders_read_waits_for_the_recovered_window() {
    let mut cluster = Cluster::new(3, lease_config());
    cluster.elect(1);
    cluster.tick_all(12);
    // Node 1 chooses "a" with node 2's acceptance; no Commit reaches node 2 before node 1 dies.
    cluster.cut.insert((NodeId(1), NodeId(3)));
    cluster.drop_if = Some(Box::new(|from, _, msg| {
        from == NodeId(1) && matches!(msg, Message::Commit { .. })
    }));
    cluster.propose(1, 1, "a").unwrap();
    cluster.settle();
    assert_eq!(cluster.committed().len(), 1, "node 1 answered Committed");
    assert!(cluster.applied(2).is_empty(), "node 2 has not applied it");
    cluster.crash(1);
    cluster.cut.clear();
    // No Accept gets through for now: whoever leads next cannot have its recovered window
    // chosen yet.
    cluster.drop_if = Some(Box::new(|_, _, msg| matches!(msg, Message::Accept { .. })));
    let mut leader = None;
    for _ in 0..600 {
        cluster.tick_all(1);
        leader = cluster.leader();
        if leader.is_some() {
            break;
        }
    }
    let leader = leader.expect("2 or 3 leads once the grants to node 1 ended");
    cluster.tick_all(12); // its lease rounds pass: it is master
    assert!(cluster.table(leader).master_until(GROUP).is_some());
    cluster.read(leader, 200, ReadMode::Lease).unwrap();
    cluster.settle();
    assert!(
        cluster
            .reads
            .iter()
            .all(|(_, r, _)| r.id != ProposalId(200)),
        "served before the recovered window was applied"
    );
    cluster.drop_if = None;
    cluster.tick_all(40);
    let (_, ready, applied) = *cluster
        .reads
        .iter()
        .find(|(_, r, _)| r.id == ProposalId(200))
        .expect("the read is served");
    assert!(
        applied >= 1,
        "served at applied {applied} ({:?}) without the acknowledged value",
        ready.mode
    );
}

/// A replica restarted with state promises and grants nobody for a lease's length (it may
/// have granted a lease before the crash).
#[test]
fn a_restarted_replica_promises_nobody_for_a_lease() {
    let mut cluster = Cluster::new(3, lease_config());
    cluster.elect(1);
    cluster.tick_all(12);
    cluster.propose(1, 1, "a").unwrap();
    cluster.settle();
    cluster.crash(2);
    cluster.restart(2, &[]);
    let now = cluster.now(2);
    let (holder, end) = cluster
        .table(2)
        .lease_granted(GROUP)
        .expect("a restart grant");
    assert_eq!(holder, None);
    assert_eq!(end.0, now.0 + 120);
    // Node 3 stands at once: node 2 ignores its Prepare.
    cluster.isolate(1);
    cluster.tick_node(3, 200);
    assert!(cluster.table(2).stats().prepares_refused_lease >= 1);
    assert!(!cluster.table(3).is_leader(GROUP));
}

/// A leader refused by one acceptor whose promise rose while it was cut off (it stood for
/// election alone) prepares again at once above that promise while it still hears a quorum,
/// and stays leader (`leader_reprepares`).
#[test]
fn a_leader_refused_by_a_returning_acceptor_prepares_again_and_stays() {
    let config = Config {
        check_quorum: true,
        ..config()
    };
    let mut cluster = Cluster::new(3, config);
    cluster.elect(1);
    cluster.propose(1, 1, "a").unwrap();
    cluster.settle();
    cluster.isolate(3);
    cluster.tick_all(200); // node 3 stands alone, raising its own promise
    let raised = cluster.table(3).promised(GROUP).unwrap();
    assert!(raised > cluster.table(1).promised(GROUP).unwrap());
    cluster.rejoin(3);
    cluster.propose(1, 2, "b").unwrap();
    cluster.settle();
    cluster.tick_all(60);
    assert!(cluster.table(1).stats().leader_reprepares >= 1);
    assert!(
        cluster.table(1).is_leader(GROUP),
        "the leader its peers hear stays"
    );
    assert!(cluster.table(1).promised(GROUP).unwrap() > raised);
    cluster.propose(1, 3, "c").unwrap();
    cluster.settle();
    cluster.tick_all(20);
    let committed: BTreeSet<u64> = cluster.committed().iter().map(|(id, _, _)| id.0).collect();
    assert!(committed.contains(&3), "commits go on: {committed:?}");
}

/// docs/PROTOCOL.md#storage-full: a replica whose storage is full withholds its votes on
/// another node's instances (a lost message: the value is chosen by the others), asks for no
/// catch-up, and catches up once it has room; with two of three full nothing is chosen until
/// one has room again; a full leader refuses proposals but still votes on its own instances.
#[test]
fn a_full_replica_withholds_votes_and_catches_up_once_it_has_room() {
    let mut cluster = Cluster::new(3, config());
    cluster.elect(1);
    cluster.propose(1, 1, "a").unwrap();
    cluster.settle();
    cluster.tick_all(12);

    // Node 2 full: the value is chosen by nodes 1 and 3; node 2 voted on nothing new.
    cluster.table(2).set_storage_full(true);
    cluster.propose(1, 2, "b").unwrap();
    cluster.settle();
    cluster.tick_all(12);
    let committed = |cluster: &Cluster| -> BTreeSet<u64> {
        cluster.committed().iter().map(|(id, _, _)| id.0).collect()
    };
    assert!(committed(&cluster).contains(&2), "chosen without node 2");
    assert!(cluster.table(2).stats().accepts_withheld_storage_full >= 1);
    // It still learns the value (a full replica catches up; what it learns from others is
    // logged within the room its driver gives, here unbounded).
    assert_eq!(cluster.applied(2), cluster.applied(1), "node 2 learned it");

    // Nodes 2 and 3 full: no quorum stores the next value, so it is not chosen.
    cluster.table(3).set_storage_full(true);
    cluster.propose(1, 3, "c").unwrap();
    cluster.settle();
    cluster.tick_all(40);
    assert!(
        !committed(&cluster).contains(&3),
        "chosen with two of three full"
    );
    assert!(cluster.table(3).stats().accepts_withheld_storage_full >= 1);

    // Room again on node 3: the leader's retransmission gets its vote.
    cluster.table(3).set_storage_full(false);
    cluster.tick_all(40);
    cluster.settle();
    assert!(
        committed(&cluster).contains(&3),
        "chosen once node 3 has room"
    );

    // Room again on node 2: it catches up to the others.
    cluster.table(2).set_storage_full(false);
    cluster.tick_all(60);
    cluster.settle();
    assert_eq!(cluster.applied(2), cluster.applied(1), "node 2 caught up");
    assert_eq!(commands(&cluster.applied(2)), ["a", "b", "c"]);

    // A full leader refuses proposals, and its own vote still counts for what is in flight.
    cluster.table(1).set_storage_full(true);
    assert_eq!(
        cluster.propose(1, 4, "d"),
        Err(FailReason::Overloaded),
        "a full leader takes no proposal"
    );
    assert_eq!(cluster.table(1).stats().proposals_refused_storage_full, 1);
    cluster.table(1).set_storage_full(false);
    cluster.propose(1, 5, "e").unwrap();
    cluster.table(1).set_storage_full(true);
    cluster.table(3).set_storage_full(true);
    cluster.settle();
    cluster.tick_all(20);
    assert!(
        committed(&cluster).contains(&5),
        "the full leader's own vote and node 2's choose its admitted value"
    );
}

/// A replica short of room (docs/PROTOCOL.md#storage-full) logs the chosen values it learns
/// from others only within the room its storage has left: with room for one value's bytes it
/// logs one, applies the others without logging them (counted), and catches up all the same.
#[test]
fn values_learned_beyond_the_storage_room_are_applied_unlogged() {
    let mut cluster = Cluster::new(3, config());
    cluster.elect(1);
    cluster.propose(1, 1, "a").unwrap();
    cluster.settle();
    cluster.tick_all(12);
    // Node 2 cut off while values are chosen without it.
    cluster.isolate(2);
    for id in 2..12 {
        cluster.propose(1, id, &format!("value-{id:02}")).unwrap();
        cluster.settle();
    }
    cluster.tick_all(12);
    assert!(cluster.applied(2).len() < cluster.applied(1).len());
    let logged_before = cluster.nodes[&NodeId(2)]
        .log
        .iter()
        .filter(|(_, r, _)| r.kind == RecordKind::Chosen && !r.payload.is_empty())
        .count();
    // Back, with room for the bytes of one of those values and a few bytes more.
    let one = cluster.applied(1)[2].1.len() as u64;
    cluster.table(2).set_storage_room(Some(one + 3));
    cluster.rejoin(2);
    cluster.tick_all(60);
    cluster.settle();
    assert_eq!(cluster.applied(2), cluster.applied(1), "node 2 caught up");
    let logged: Vec<usize> = cluster.nodes[&NodeId(2)]
        .log
        .iter()
        .filter(|(_, r, _)| r.kind == RecordKind::Chosen && !r.payload.is_empty())
        .map(|(_, r, _)| r.payload.len())
        .skip(logged_before)
        .collect();
    assert_eq!(
        logged.len(),
        1,
        "one value logged within the room: {logged:?}"
    );
    assert!(logged[0] as u64 <= one + 3);
    assert!(cluster.table(2).stats().chosen_unlogged_storage_short >= 9);
}

/// A replica that applied values without logging them (short of room) cannot serve them once
/// memory no longer keeps them: its catch-up replies name the first instance above them as
/// its base, so a replica that needs one fetches a checkpoint instead of asking the same peer
/// again and again (`serve-over-unlogged-hole`: the simulator's seed 203787 never converged).
#[test]
fn a_replica_names_values_it_applied_unlogged_as_below_its_base() {
    let (base, entries, needed) = unlogged_hole_reply(|cluster| cluster);
    assert_eq!(entries, 0, "node 2 holds none of those values");
    assert!(
        base > needed,
        "node 2 names a base above what node 3 needs (it cannot serve it): {base:?}"
    );
}

/// The pre-fix reply (`serve-over-unlogged-hole`) names the log base, below what node 3
/// needs: node 3 would ask node 2 again instead of fetching a checkpoint.
#[cfg(feature = "sim-bugs")]
#[test]
fn before_the_fix_a_replica_named_its_log_base_over_an_unlogged_hole() {
    let (base, entries, needed) = unlogged_hole_reply(|cluster| {
        cluster.with_bugs(Bugs {
            serve_over_unlogged_hole: true,
            ..Bugs::default()
        })
    });
    assert_eq!(entries, 0);
    assert!(base <= needed, "{base:?} {needed:?}");
}

/// Node 2 catches up with no storage room (every value applied unlogged) while node 3 hears
/// nothing; then node 3 asks node 2 for what it lacks. Returns node 2's reply (the base it
/// names, its entry count) and node 3's applied point.
fn unlogged_hole_reply(setup: impl FnOnce(Cluster) -> Cluster) -> (Instance, usize, Instance) {
    use std::cell::RefCell;
    use std::rc::Rc;
    let cluster = Cluster::new(
        5,
        Config {
            chosen_retained_max: paxring_engine::core::CHOSEN_RETAINED_MIN,
            ..config()
        },
    );
    let mut cluster = setup(cluster);
    cluster.elect(1);
    cluster.propose(1, 1, "a").unwrap();
    cluster.settle();
    cluster.tick_all(12);
    // Node 3 hears nothing from here on (it stays behind); node 2 is cut off while nodes 1,
    // 4 and 5 choose values, then comes back with no room and learns them without logging
    // them.
    let to_3: Rc<RefCell<Vec<(NodeId, Message)>>> = Rc::default();
    let seen = to_3.clone();
    cluster.drop_if = Some(Box::new(move |from, to, msg| {
        if to == NodeId(3) {
            seen.borrow_mut().push((from, msg.clone()));
            return true;
        }
        false
    }));
    cluster.isolate(2);
    for id in 2..100 {
        cluster.propose(1, id, &format!("value-{id:02}")).unwrap();
        cluster.settle();
    }
    cluster.tick_all(12);
    cluster.table(2).set_storage_room(Some(0));
    cluster.rejoin(2);
    cluster.tick_all(60);
    cluster.settle();
    assert_eq!(cluster.applied(2), cluster.applied(1), "node 2 caught up");
    let unlogged = cluster.table(2).stats().chosen_unlogged_storage_short;
    assert!(
        unlogged >= 90,
        "unlogged {unlogged}, applied {:?}",
        cluster.applied(2).len()
    );
    let group = cluster.group;
    let applied_3 = cluster.table(3).applied_next(group).unwrap();
    let applied_2 = cluster.table(2).applied_next(group).unwrap();
    assert!(applied_3.0 + 90 < applied_2.0, "node 3 is behind");
    // Node 3 asks node 2 for what it lacks.
    to_3.borrow_mut().clear();
    cluster.net.push_back((
        NodeId(3),
        NodeId(2),
        Message::CatchupRequest {
            from: applied_3,
            request: 0,
            until: Instance(0),
            entries_max: 64,
            bytes_max: 1 << 20,
        },
    ));
    cluster.settle();
    let replies: Vec<(Instance, usize)> = to_3
        .borrow()
        .iter()
        .filter_map(|(from, msg)| match msg {
            Message::CatchupReply {
                log_base, entries, ..
            } if *from == NodeId(2) => Some((*log_base, entries.len())),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 1, "one reply: {replies:?} (group {group:?})");
    let (base, entries) = replies[0];
    (base, entries, applied_3)
}
