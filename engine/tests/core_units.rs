//! Unit rules of the core, one table at a time: ballot order, quorum size, the acceptor's
//! rules (promise only higher, accept at or above the promise, replies gated on the record's
//! Lsn, rejections carry the higher ballot), Lsn numbering from a recovery, restart keeping
//! promises, config validation, the seeded generator, and a codec that never panics on
//! arbitrary bytes (property test).
use bytes::Bytes;
use paxring_engine::core::*;
use proptest::prelude::*;

const G: GroupId = GroupId(3);

fn ballot(number: u64, node: u32) -> Ballot {
    Ballot { number, node }
}

fn acceptor() -> CoreTable {
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    CoreTable::new(Config::default(), NodeId(1), &members, &[G], Prng::new(1)).unwrap()
}

fn drain(table: &mut CoreTable) -> Outputs {
    let mut out = Outputs::default();
    table.poll(&mut out);
    out
}

#[test]
fn ballots_order_by_number_then_node() {
    assert!(ballot(1, 9) < ballot(2, 1));
    assert!(ballot(2, 1) < ballot(2, 2));
    assert!(Ballot::ZERO < ballot(0, 1));
    assert_eq!(ballot(3, 3).max(ballot(3, 2)), ballot(3, 3));
}

#[test]
fn promise_is_durable_before_it_leaves_and_only_for_higher_ballots() {
    let mut table = acceptor();
    table.on_message(
        NodeId(2),
        G,
        Message::Prepare {
            ballot: ballot(5, 2),
            first: Instance(0),
        },
    );
    let out = drain(&mut table);
    assert!(
        out.sends.is_empty(),
        "a promise never leaves unconditionally"
    );
    assert_eq!(out.appends.len(), 1);
    let (lsn, record) = &out.appends[0];
    assert_eq!(*lsn, Lsn(1));
    assert_eq!(record.kind, RecordKind::Promise);
    assert_eq!(record.promised, ballot(5, 2));
    assert_eq!(out.sends_after_durable.len(), 1);
    let reply = &out.sends_after_durable[0];
    assert!(reply.lsn >= *lsn, "gated on the promise record");
    assert!(matches!(reply.msg, Message::Promise { ballot: b, .. } if b == ballot(5, 2)));

    // A lower Prepare is rejected with the higher promise, and nothing is written.
    table.on_message(
        NodeId(3),
        G,
        Message::Prepare {
            ballot: ballot(4, 3),
            first: Instance(0),
        },
    );
    let out = drain(&mut table);
    assert!(out.appends.is_empty());
    assert_eq!(
        out.sends[0].msg,
        Message::Reject {
            rejected: ballot(4, 3),
            promised: ballot(5, 2)
        }
    );
}

#[test]
fn accept_at_or_above_the_promise_is_written_then_acknowledged() {
    let mut table = acceptor();
    table.on_message(
        NodeId(2),
        G,
        Message::Prepare {
            ballot: ballot(5, 2),
            first: Instance(0),
        },
    );
    drain(&mut table);
    let value = value::encode(&[Bytes::from_static(b"cmd")]);
    table.on_message(
        NodeId(2),
        G,
        Message::Accept {
            ballot: ballot(5, 2),
            instance: Instance(0),
            value: value.clone(),
            chosen_through: Instance(0),
        },
    );
    let out = drain(&mut table);
    assert_eq!(out.appends.len(), 1);
    let (lsn, record) = &out.appends[0];
    assert_eq!(*lsn, Lsn(2), "Lsns are consecutive");
    assert_eq!(record.kind, RecordKind::Accept);
    assert_eq!(record.accepted, ballot(5, 2));
    assert_eq!(record.payload, value);
    assert_eq!(out.sends_after_durable[0].lsn, Lsn(2));
    assert_eq!(
        out.sends_after_durable[0].msg,
        Message::Accepted {
            ballot: ballot(5, 2),
            instance: Instance(0),
            value_crc: crc32fast::hash(&value),
        }
    );
    assert_eq!(table.leader_hint(G), Some(NodeId(2)));

    // Below the promise: rejected, not written.
    table.on_message(
        NodeId(3),
        G,
        Message::Accept {
            ballot: ballot(4, 3),
            instance: Instance(1),
            value,
            chosen_through: Instance(0),
        },
    );
    let out = drain(&mut table);
    assert!(out.appends.is_empty());
    assert!(
        matches!(out.sends[0].msg, Message::Reject { promised, .. } if promised == ballot(5, 2))
    );
}

#[test]
fn commit_applies_what_was_accepted_with_that_ballot() {
    let mut table = acceptor();
    let value = value::encode(&[Bytes::from_static(b"x")]);
    table.on_message(
        NodeId(2),
        G,
        Message::Accept {
            ballot: ballot(1, 2),
            instance: Instance(0),
            value: value.clone(),
            chosen_through: Instance(0),
        },
    );
    drain(&mut table);
    let checksum = value::roll_checksum(0, 0, &value);
    table.on_message(
        NodeId(2),
        G,
        Message::Commit {
            ballot: ballot(1, 2),
            chosen_through: Instance(1),
            checksum,
            lease: 0,
        },
    );
    let out = drain(&mut table);
    assert_eq!(out.chosen.len(), 1);
    assert_eq!(out.chosen[0].value, value);
    assert!(out.stopped.is_empty());
    assert_eq!(table.applied_next(G), Some(Instance(1)));
}

#[test]
fn checksum_mismatch_stops_the_group_naming_the_instance() {
    let mut table = acceptor();
    let value = value::encode(&[Bytes::from_static(b"x")]);
    table.on_message(
        NodeId(2),
        G,
        Message::Accept {
            ballot: ballot(1, 2),
            instance: Instance(0),
            value,
            chosen_through: Instance(0),
        },
    );
    table.on_message(
        NodeId(2),
        G,
        Message::Commit {
            ballot: ballot(1, 2),
            chosen_through: Instance(1),
            checksum: 12345,
            lease: 0,
        },
    );
    let out = drain(&mut table);
    assert_eq!(out.stopped.len(), 1);
    assert!(matches!(
        out.stopped[0].1,
        GroupError::ChecksumMismatch { instance: 0, .. }
    ));
    assert_eq!(
        table.propose(G, ProposalId(1), Bytes::from_static(b"y")),
        Err(FailReason::Stopped)
    );
}

#[test]
fn restart_keeps_promise_and_acceptance_and_continues_lsns() {
    let mut table = acceptor();
    table.on_message(
        NodeId(2),
        G,
        Message::Prepare {
            ballot: ballot(7, 2),
            first: Instance(0),
        },
    );
    let value = value::encode(&[Bytes::from_static(b"v")]);
    table.on_message(
        NodeId(2),
        G,
        Message::Accept {
            ballot: ballot(7, 2),
            instance: Instance(0),
            value: value.clone(),
            chosen_through: Instance(0),
        },
    );
    let out = drain(&mut table);
    let recovery = Recovery {
        records: out.appends.clone(),
        next_lsn: Lsn(out.appends.len() as u64 + 1),
        ..Recovery::default()
    };
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    let mut restarted = CoreTable::restore(
        Config::default(),
        NodeId(1),
        &members,
        &[G],
        &recovery,
        Prng::new(2),
    )
    .unwrap();
    assert_eq!(restarted.next_lsn(), Lsn(3));
    // A restarted acceptor promises nobody for a master lease (it may have granted one before
    // it stopped): its clock moves past that first.
    let lease = Config::default().master_lease_ticks;
    restarted.tick(Tick(1));
    restarted.tick(Tick(1 + lease));
    // The promise survives: a lower Prepare is rejected.
    restarted.on_message(
        NodeId(3),
        G,
        Message::Prepare {
            ballot: ballot(6, 3),
            first: Instance(0),
        },
    );
    let out = drain(&mut restarted);
    assert!(
        matches!(out.sends[0].msg, Message::Reject { promised, .. } if promised == ballot(7, 2))
    );
    // The acceptance survives: a higher Prepare is told about it.
    restarted.on_message(
        NodeId(3),
        G,
        Message::Prepare {
            ballot: ballot(8, 3),
            first: Instance(0),
        },
    );
    let out = drain(&mut restarted);
    assert_eq!(
        out.appends[0].0,
        Lsn(3),
        "numbering continues from next_lsn"
    );
    let Message::Promise { entries, .. } = &out.sends_after_durable[0].msg else {
        panic!("a promise");
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].ballot, ballot(7, 2));
    assert_eq!(entries[0].value, value);
}

#[test]
fn config_errors_say_what_to_fix() {
    let bad = Config {
        pipeline_depth: 0,
        ..Config::default()
    };
    let error = bad.validate().unwrap_err();
    assert!(error.to_string().contains("pipeline_depth"));
    let bad = Config {
        heartbeat_ticks: 500,
        ..Config::default()
    };
    assert!(matches!(bad.validate(), Err(ConfigError::Timeouts { .. })));
    let members = [NodeId(1), NodeId(2)];
    let error = CoreTable::new(Config::default(), NodeId(9), &members, &[G], Prng::new(1));
    assert!(matches!(error, Err(ConfigError::Membership { .. })));
    let error = CoreTable::new(
        Config::default(),
        NodeId(1),
        &members,
        &[G, G],
        Prng::new(1),
    );
    assert!(matches!(error, Err(ConfigError::DuplicateGroup(3))));
}

#[test]
fn prng_is_deterministic_per_seed() {
    let a: Vec<u64> = (0..5)
        .scan(Prng::new(42), |p, _| Some(p.next_u64()))
        .collect();
    let b: Vec<u64> = (0..5)
        .scan(Prng::new(42), |p, _| Some(p.next_u64()))
        .collect();
    let c: Vec<u64> = (0..5)
        .scan(Prng::new(43), |p, _| Some(p.next_u64()))
        .collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mut p = Prng::new(1);
    assert!((0..1000).all(|_| p.below(7) < 7));
}

#[test]
fn unknown_group_is_ignored_and_counted() {
    let mut table = acceptor();
    table.on_message(
        NodeId(2),
        GroupId(99),
        Message::CatchupRequest {
            from: Instance(0),
            request: 0,
            until: Instance(0),
            entries_max: 64,
            bytes_max: 1 << 20,
        },
    );
    assert_eq!(table.stats().messages_unknown_group, 1);
    assert!(drain(&mut table).is_empty());
    assert_eq!(
        table.propose(GroupId(99), ProposalId(1), Bytes::new()),
        Err(FailReason::UnknownGroup)
    );
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(message) = Message::decode(&bytes) {
            // Whatever decodes re-encodes to the same bytes.
            prop_assert_eq!(message.encode(), bytes);
        }
    }

    #[test]
    fn decode_never_panics_on_valid_prefixes(kind in 1u8..=8, tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = vec![kind];
        bytes.extend(tail);
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn value_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = value::decode(&Bytes::from(bytes));
    }
}

/// A Chosen mark names the ballot of the Accept record holding its value: if that record is
/// damaged and an older Accept (another value) survives, restart must not take the older value
/// as chosen; the group re-learns instead.
#[test]
fn chosen_mark_never_resolves_to_an_older_acceptance() {
    let old = value::encode(&[Bytes::from_static(b"old")]);
    let new = value::encode(&[Bytes::from_static(b"new")]);
    let accept = |ballot: Ballot, value: &Bytes| Record {
        kind: RecordKind::Accept,
        group: G,
        instance: Instance(0),
        promised: ballot,
        accepted: ballot,
        payload: value.clone(),
    };
    let mark = Record {
        kind: RecordKind::Chosen,
        group: G,
        instance: Instance(0),
        promised: ballot(2, 2),
        accepted: ballot(2, 2),
        payload: Bytes::new(),
    };
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    // Intact log: the mark resolves to the newer value.
    let intact = Recovery {
        records: vec![
            (Lsn(1), accept(ballot(1, 3), &old)),
            (Lsn(2), accept(ballot(2, 2), &new)),
            (Lsn(3), mark.clone()),
        ],
        next_lsn: Lsn(4),
        ..Recovery::default()
    };
    let mut table = CoreTable::restore(
        Config::default(),
        NodeId(1),
        &members,
        &[G],
        &intact,
        Prng::new(1),
    )
    .unwrap();
    let out = drain(&mut table);
    assert_eq!(out.chosen.len(), 1);
    assert_eq!(out.chosen[0].value, new);
    assert!(!table.is_relearning(G));
    // Lsn 2 damaged: nothing is applied from the older record, and the group re-learns.
    let damaged = Recovery {
        records: vec![(Lsn(1), accept(ballot(1, 3), &old)), (Lsn(3), mark)],
        next_lsn: Lsn(4),
        damaged: vec![Damage {
            first_lsn: Lsn(2),
            last_lsn: Lsn(2),
            groups_instances: vec![(G, Instance(0))],
            identities_complete: true,
            segment: 0,
            offset: 0,
            reason: "test".to_string(),
        }],
        ..Recovery::default()
    };
    let mut table = CoreTable::restore(
        Config::default(),
        NodeId(1),
        &members,
        &[G],
        &damaged,
        Prng::new(1),
    )
    .unwrap();
    let out = drain(&mut table);
    assert!(out.chosen.is_empty(), "{:?}", out.chosen);
    assert!(table.is_relearning(G));
}

#[test]
fn body_codec_matches_the_framed_one() {
    let message = Message::Accept {
        ballot: ballot(2, 1),
        instance: Instance(5),
        value: Bytes::from_static(b"abc"),
        chosen_through: Instance(4),
    };
    let mut body = Vec::new();
    message.encode_body_into(&mut body);
    assert_eq!(&message.encode()[1..], &body[..]);
    assert_eq!(
        Message::decode_body(message.kind(), &body).unwrap(),
        message
    );
    assert!(Message::decode_body(message.kind(), &body[..body.len() - 1]).is_err());
    assert!(Message::decode(&[]).is_err());
}
