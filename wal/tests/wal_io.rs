//! Proves the real log on a real O_DIRECT file system: appended records become durable through
//! exactly one durable write per round (both backends, both sync modes), double buffering keeps
//! a batch accumulating while a write is in flight, reads return the newest record, a reopen
//! recovers exactly what was durable, a torn tail is cut and zeroed, `wait` wakes on fds and
//! timeouts, buffer limits are explicit errors, purge removes only segments every group is past
//! and names the groups holding it back, and the directory lock and per-core ownership hold.
mod common;

use common::{direct_io_dir, payload, record, small_options};
use paxring_wal::{Backend, BackendInUse, GroupId, Instance, Lsn, SyncMode, Wal, WalError};
use std::os::unix::io::RawFd;
use std::time::Duration;

/// Submits and waits until everything appended is durable; returns the rounds issued.
fn drain(wal: &mut Wal) -> u64 {
    let mut rounds = 0;
    let before = wal.stats().writes;
    for _ in 0..10_000 {
        wal.submit().expect("submit");
        if wal.durable_lsn() == wal.appended_lsn() {
            break;
        }
        wal.wait(&[], Some(Duration::from_secs(5))).expect("wait");
        rounds += 1;
    }
    assert_eq!(wal.durable_lsn(), wal.appended_lsn(), "drained");
    let _ = rounds;
    wal.stats().writes - before
}

fn round_trip(backend: Backend, sync_mode: SyncMode) {
    let name = format!("round_trip {backend:?} {sync_mode:?}");
    let Some(dir) = direct_io_dir(&name) else {
        return;
    };
    let opts = small_options(dir.path(), backend, sync_mode);
    let (mut wal, recovery) = Wal::open(opts.clone()).expect("open");
    assert!(recovery.records.is_empty());
    assert_eq!(wal.durable_lsn(), Lsn(0));
    if backend == Backend::Blocking {
        assert_eq!(wal.backend(), BackendInUse::Blocking);
    }
    let rounds = 20u64;
    let mut lsn_expected = 1;
    for round in 0..rounds {
        for group in 0..5u32 {
            let body = payload(group, round, 100 + group as usize * 10);
            let lsn = wal.append(record(group, round, &body)).expect("append");
            assert_eq!(lsn, Lsn(lsn_expected));
            lsn_expected += 1;
        }
        let writes = drain(&mut wal);
        assert_eq!(writes, 1, "one write per round");
    }
    let stats = wal.stats();
    assert_eq!(stats.writes, rounds);
    assert_eq!(
        stats.durable_writes, rounds,
        "exactly one durable write per round"
    );
    assert_eq!(stats.records, rounds * 5);
    assert_eq!(stats.groups_per_write.max, 5);
    assert_eq!(
        stats.bytes_written,
        stats.payload_bytes + stats.header_bytes + stats.padding_bytes
    );
    assert_eq!(stats.bytes_written % 4096, 0);
    assert_eq!(stats.write_latency_us.count, rounds);
    let read = wal
        .read(GroupId(3), Instance(7))
        .expect("read")
        .expect("present");
    assert_eq!(read.payload.as_ref(), payload(3, 7, 130).as_slice());
    assert!(wal.read(GroupId(9), Instance(7)).expect("read").is_none());
    drop(wal);
    let (wal, recovery) = Wal::open(opts).expect("reopen");
    assert!(recovery.is_clean(), "{recovery:?}");
    assert_eq!(recovery.records.len() as u64, rounds * 5);
    for (lsn, rec) in &recovery.records {
        let round = (lsn.0 - 1) / 5;
        let group = ((lsn.0 - 1) % 5) as u32;
        assert_eq!(rec.group, GroupId(group));
        assert_eq!(rec.instance, Instance(round));
        assert_eq!(
            rec.payload.as_ref(),
            payload(group, round, 100 + group as usize * 10)
        );
    }
    assert_eq!(wal.durable_lsn(), Lsn(rounds * 5));
    assert_eq!(
        wal.read(GroupId(4), Instance(19))
            .expect("read")
            .map(|r| r.instance),
        Some(Instance(19))
    );
}

#[test]
fn uring_dsync_round_trip() {
    round_trip(Backend::Auto, SyncMode::Dsync);
}

#[test]
fn uring_fdatasync_round_trip() {
    round_trip(Backend::Auto, SyncMode::Fdatasync);
}

#[test]
fn blocking_fallback_dsync_round_trip() {
    round_trip(Backend::Blocking, SyncMode::Dsync);
}

#[test]
fn blocking_fallback_fdatasync_round_trip() {
    round_trip(Backend::Blocking, SyncMode::Fdatasync);
}

#[test]
fn double_buffering_accumulates_while_a_write_is_in_flight() {
    let Some(dir) = direct_io_dir("double_buffering") else {
        return;
    };
    let opts = small_options(dir.path(), Backend::Auto, SyncMode::Fdatasync);
    let (mut wal, _) = Wal::open(opts).expect("open");
    if wal.backend() != BackendInUse::Uring {
        eprintln!("\n**********\nSKIPPED double_buffering: io_uring unavailable\n**********\n");
        return;
    }
    let mut overlapped = 0;
    for round in 0..20u64 {
        wal.append(record(1, round * 2, b"first")).expect("append");
        wal.submit().expect("submit");
        assert_eq!(wal.pending_records(), 0, "an idle log issues at once");
        wal.append(record(1, round * 2 + 1, b"second"))
            .expect("append");
        wal.submit().expect("submit");
        if wal.write_in_flight() && wal.pending_records() == 1 {
            overlapped += 1;
            // The second record is not durable until its own write completes.
            assert!(wal.durable_lsn() < wal.appended_lsn());
            let first_done = wal.wait(&[], Some(Duration::from_secs(5))).expect("wait");
            assert!(first_done.write_completed);
            assert_eq!(first_done.durable_lsn, Lsn(wal.appended_lsn().0 - 1));
            // Nothing carries the second record until the owner submits again: the log says
            // so (a node's core loop submits it at once, appended records or not).
            assert!(!wal.write_in_flight() && wal.pending_records() == 1);
        }
        drain(&mut wal);
        let second = wal.read(GroupId(1), Instance(round * 2 + 1)).expect("read");
        assert_eq!(second.expect("present").payload.as_ref(), b"second");
    }
    assert!(
        overlapped > 0,
        "a write was never still in flight at the second submit"
    );
    assert_eq!(wal.stats().writes, 40);
    assert_eq!(wal.stats().durable_writes, 40);
}

/// With `writes_in_flight` > 1 a log issues a new write while earlier ones are in flight
/// (up to the bound, never more), the durable point only moves in Lsn order and never past a
/// write still in flight, records in any in-flight buffer read back, every write is exactly one
/// durable write, and a reopen recovers everything.
fn several_writes_in_flight(sync_mode: SyncMode) {
    let Some(dir) = direct_io_dir(&format!("several_in_flight {sync_mode:?}")) else {
        return;
    };
    let mut opts = small_options(dir.path(), Backend::Auto, sync_mode);
    opts.writes_in_flight = 4;
    let (mut wal, _) = Wal::open(opts.clone()).expect("open");
    if wal.backend() != BackendInUse::Uring {
        eprintln!("\n**********\nSKIPPED several_in_flight: io_uring unavailable\n**********\n");
        return;
    }
    let rounds = 400u64;
    let mut most_in_flight = 0;
    let mut durable = Lsn(0);
    for round in 0..rounds {
        for group in 0..3u32 {
            let body = payload(group, round, 200 + group as usize);
            wal.append(record(group, round, &body)).expect("append");
        }
        wal.submit().expect("submit");
        let in_flight = wal.writes_in_flight();
        assert!(in_flight <= 4, "{in_flight} writes in flight");
        most_in_flight = most_in_flight.max(in_flight);
        // Every record appended so far reads back, in flight or not.
        let back = wal
            .read(GroupId(2), Instance(round))
            .expect("read")
            .expect("present");
        assert_eq!(back.payload.as_ref(), payload(2, round, 202).as_slice());
        let now = wal.poll().expect("poll");
        assert!(now >= durable, "the durable point never moves back");
        durable = now;
        if let Some((_, first, _, _, _)) = wal.write_in_flight_since() {
            assert!(
                durable < first,
                "durable {durable:?} reaches a write still in flight from {first:?}"
            );
        }
        if wal.pending_records() > 0 && !wal.can_issue() {
            // All four in flight: wait for one before the next round.
            wal.wait(&[], Some(Duration::from_secs(5))).expect("wait");
        }
    }
    drain(&mut wal);
    assert!(
        most_in_flight >= 2,
        "never more than one write in flight ({most_in_flight})"
    );
    let stats = wal.stats();
    assert_eq!(stats.durable_writes, stats.writes, "one durable write each");
    assert_eq!(stats.records, rounds * 3);
    drop(wal);
    let (_, recovery) = Wal::open(opts).expect("reopen");
    assert!(recovery.is_clean(), "{recovery:?}");
    assert_eq!(recovery.records.len() as u64, rounds * 3);
    for (lsn, rec) in &recovery.records {
        let round = (lsn.0 - 1) / 3;
        let group = ((lsn.0 - 1) % 3) as u32;
        assert_eq!((rec.group, rec.instance), (GroupId(group), Instance(round)));
        assert_eq!(
            rec.payload.as_ref(),
            payload(group, round, 200 + group as usize)
        );
    }
}

#[test]
fn several_writes_in_flight_dsync() {
    several_writes_in_flight(SyncMode::Dsync);
}

#[test]
fn several_writes_in_flight_fdatasync() {
    several_writes_in_flight(SyncMode::Fdatasync);
}

#[test]
fn writes_in_flight_out_of_range_is_refused() {
    let Some(dir) = direct_io_dir("writes_in_flight_range") else {
        return;
    };
    for bad in [0, paxring_wal::WRITES_IN_FLIGHT_MAX + 1] {
        let mut opts = small_options(dir.path(), Backend::Auto, SyncMode::Dsync);
        opts.writes_in_flight = bad;
        match Wal::open(opts) {
            Err(WalError::Config(message)) => assert!(message.contains("writes_in_flight")),
            Err(other) => panic!("{bad}: {other}"),
            Ok(_) => panic!("{bad} writes in flight accepted"),
        }
    }
}

#[test]
fn buffer_full_loses_nothing_and_oversized_records_are_refused() {
    let Some(dir) = direct_io_dir("buffer_full") else {
        return;
    };
    let mut opts = small_options(dir.path(), Backend::Auto, SyncMode::Dsync);
    opts.buffer_bytes = 8192;
    let (mut wal, _) = Wal::open(opts.clone()).expect("open");
    let body = vec![7u8; 1000];
    let mut appended = 0u64;
    let mut full = 0;
    while appended < 50 {
        match wal.append(record(1, appended, &body)) {
            Ok(lsn) => {
                appended += 1;
                assert_eq!(lsn, Lsn(appended));
            }
            Err(WalError::BufferFull { .. }) => {
                full += 1;
                drain(&mut wal);
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    drain(&mut wal);
    assert!(full > 0, "the 8 KiB buffer filled");
    let big = vec![0u8; 8192];
    assert!(matches!(
        wal.append(record(1, 99, &big)),
        Err(WalError::RecordTooLarge { .. })
    ));
    drop(wal);
    let (_, recovery) = Wal::open(opts).expect("reopen");
    assert_eq!(recovery.records.len(), 50);
    assert!(recovery.is_clean());
}

#[test]
fn segments_roll_over_and_recover_in_order() {
    let Some(dir) = direct_io_dir("segments_roll_over") else {
        return;
    };
    let mut opts = small_options(dir.path(), Backend::Auto, SyncMode::Dsync);
    opts.segment_bytes = 64 << 10;
    opts.buffer_bytes = 16 << 10;
    let (mut wal, _) = Wal::open(opts.clone()).expect("open");
    let body = vec![1u8; 3000];
    for instance in 0..200u64 {
        loop {
            match wal.append(record((instance % 3) as u32, instance, &body)) {
                Ok(_) => break,
                Err(WalError::BufferFull { .. }) => {
                    drain(&mut wal);
                }
                Err(other) => panic!("{other}"),
            }
        }
    }
    drain(&mut wal);
    assert!(
        wal.segment_numbers().len() >= 9,
        "{:?}",
        wal.segment_numbers()
    );
    assert!(wal.stats().segments_created >= 9);
    drop(wal);
    let (wal, recovery) = Wal::open(opts).expect("reopen");
    assert!(recovery.is_clean(), "{recovery:?}");
    let lsns: Vec<u64> = recovery.records.iter().map(|(l, _)| l.0).collect();
    assert_eq!(lsns, (1..=200).collect::<Vec<_>>());
    assert_eq!(wal.appended_lsn(), Lsn(200));
}

#[test]
fn purge_removes_only_what_every_group_is_past() {
    let Some(dir) = direct_io_dir("purge") else {
        return;
    };
    let mut opts = small_options(dir.path(), Backend::Auto, SyncMode::Dsync);
    opts.segment_bytes = 64 << 10;
    opts.buffer_bytes = 16 << 10;
    let (mut wal, _) = Wal::open(opts.clone()).expect("open");
    let body = vec![2u8; 3000];
    // Group 1 writes instances 0..100; group 2 writes only at the start (instance 0..3).
    for instance in 0..100u64 {
        let group = if instance < 3 { 2 } else { 1 };
        loop {
            match wal.append(record(group, instance, &body)) {
                Ok(_) => break,
                Err(WalError::BufferFull { .. }) => {
                    drain(&mut wal);
                }
                Err(other) => panic!("{other}"),
            }
        }
    }
    drain(&mut wal);
    let before = wal.segment_numbers();
    assert!(before.len() >= 4);
    // No floors: nothing goes, and group 2 (oldest segment) and group 1 are named.
    let report = wal.purge().expect("purge");
    assert!(report.removed_segments.is_empty());
    assert_eq!(report.oldest_segment, Some(before[0]));
    let holders: Vec<u32> = report.held_back_by.iter().map(|h| h.group).collect();
    assert!(holders.contains(&2), "{report:?}");
    // Group 1 is past 60, group 2 not: still held back by group 2 alone.
    wal.set_purge_floor(GroupId(1), Instance(60));
    let report = wal.purge().expect("purge");
    assert!(report.removed_segments.is_empty());
    assert_eq!(report.held_back_by.len(), 1);
    assert_eq!(report.held_back_by[0].group, 2);
    assert_eq!(report.held_back_by[0].floor, None);
    // Group 2 lets go: segments holding only instances < 60 of group 1 go.
    wal.set_purge_floor(GroupId(2), Instance(3));
    let report = wal.purge().expect("purge");
    assert!(!report.removed_segments.is_empty(), "{report:?}");
    assert_eq!(report.removed_segments[0], before[0]);
    let holders: Vec<u32> = report.held_back_by.iter().map(|h| h.group).collect();
    assert_eq!(holders, vec![1]);
    assert!(report.held_back_by[0].instance_max >= 60);
    assert!(wal.read(GroupId(2), Instance(0)).expect("read").is_none());
    assert!(wal.read(GroupId(1), Instance(99)).expect("read").is_some());
    // Floors never lower.
    wal.set_purge_floor(GroupId(1), Instance(10));
    assert!(wal.purge().expect("purge").removed_segments.is_empty());
    let kept_first_lsn = {
        let (recovery, _) = paxring_wal::inspect_dir(dir.path(), 2).expect("inspect");
        recovery.records[0].0
    };
    // Write on (recycling the purged files) and reopen: the log starts after the purged part
    // and nothing is reported damaged.
    for instance in 100..160u64 {
        loop {
            match wal.append(record(1, instance, &body)) {
                Ok(_) => break,
                Err(WalError::BufferFull { .. }) => {
                    drain(&mut wal);
                }
                Err(other) => panic!("{other}"),
            }
        }
    }
    drain(&mut wal);
    assert!(wal.stats().segments_recycled > 0, "{:?}", wal.stats());
    drop(wal);
    let (mut wal, recovery) = Wal::open(opts.clone()).expect("reopen");
    assert!(recovery.is_clean(), "{recovery:?}");
    assert_eq!(recovery.records[0].0, kept_first_lsn);
    assert_eq!(recovery.records.last().map(|r| r.0), Some(Lsn(160)));
    assert!(wal.read(GroupId(1), Instance(159)).expect("read").is_some());
    // After a restart: purge again (spares accumulate) and write on through recycled files.
    wal.set_purge_floor(GroupId(1), Instance(150));
    wal.set_purge_floor(GroupId(2), Instance(3));
    assert!(!wal.purge().expect("purge").removed_segments.is_empty());
    for instance in 160..260u64 {
        loop {
            match wal.append(record(1, instance, &body)) {
                Ok(_) => break,
                Err(WalError::BufferFull { .. }) => {
                    drain(&mut wal);
                }
                Err(other) => panic!("{other}"),
            }
        }
    }
    drain(&mut wal);
    drop(wal);
    let (_, recovery) = Wal::open(opts).expect("reopen");
    assert!(recovery.is_clean(), "{recovery:?}");
    assert_eq!(recovery.records.last().map(|r| r.0), Some(Lsn(260)));
}

#[test]
fn torn_tail_is_cut_zeroed_and_writing_resumes() {
    let Some(dir) = direct_io_dir("torn_tail") else {
        return;
    };
    let opts = small_options(dir.path(), Backend::Auto, SyncMode::Dsync);
    let (mut wal, _) = Wal::open(opts.clone()).expect("open");
    for round in 0..3u64 {
        wal.append(record(1, round, &[5u8; 200])).expect("append");
        drain(&mut wal);
    }
    drop(wal);
    // Damage the last batch (the fourth 4 KiB block, after the segment header and two
    // batches): it looks like a torn write.
    let segment = dir.path().join(paxring_wal::segfile::segment_name(2, 1));
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes[3 * 4096 + 64 + 56 + 10] ^= 0xff;
    std::fs::write(&segment, &bytes).expect("write");
    let (mut wal, recovery) = Wal::open(opts.clone()).expect("reopen");
    assert_eq!(recovery.torn_tail_bytes, 4096);
    assert_eq!(recovery.records.len(), 2);
    assert_eq!(wal.appended_lsn(), Lsn(2));
    let lsn = wal.append(record(1, 2, b"rewritten")).expect("append");
    assert_eq!(lsn, Lsn(3));
    drain(&mut wal);
    drop(wal);
    let (_, recovery) = Wal::open(opts).expect("reopen");
    assert!(recovery.is_clean(), "{recovery:?}");
    assert_eq!(recovery.records.len(), 3);
    assert_eq!(recovery.records[2].1.payload.as_ref(), b"rewritten");
}

#[test]
fn wait_wakes_on_fds_and_timeouts() {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    for backend in [Backend::Auto, Backend::Blocking] {
        let Some(dir) = direct_io_dir("wait_wakes") else {
            return;
        };
        let opts = small_options(dir.path(), backend, SyncMode::Dsync);
        let (mut wal, _) = Wal::open(opts).expect("open");
        // A pipe's read end stands in for a core's inbox eventfd.
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        let fd: RawFd = reader.as_raw_fd();
        let timed = wal
            .wait(&[fd], Some(Duration::from_millis(20)))
            .expect("wait");
        assert!(timed.timed_out, "{backend:?}");
        assert!(timed.ready_fds.is_empty());
        writer.write_all(b"x").expect("pipe write");
        let ready = wal.wait(&[fd], Some(Duration::from_secs(5))).expect("wait");
        assert_eq!(ready.ready_fds, vec![fd], "{backend:?}");
        assert!(!ready.timed_out);
        // Nothing to wait for: returns at once.
        let idle = wal.wait(&[], None).expect("wait");
        assert!(!idle.timed_out && idle.ready_fds.is_empty() && !idle.write_completed);
        // A write completion wakes it too.
        wal.append(record(1, 1, b"x")).expect("append");
        wal.submit().expect("submit");
        if wal.write_in_flight() {
            let done = wal.wait(&[], Some(Duration::from_secs(5))).expect("wait");
            assert!(done.write_completed);
        }
        assert_eq!(wal.poll().expect("poll"), Lsn(1));
        // Too many fds is a clear error, not a silent truncation.
        let many = vec![fd; paxring_wal::WAIT_FDS_MAX + 1];
        assert!(matches!(wal.wait(&many, None), Err(WalError::Config(_))));
        drop(reader);
    }
}

#[test]
fn a_second_opener_and_a_foreign_core_are_refused() {
    let Some(dir) = direct_io_dir("lock_and_owner") else {
        return;
    };
    let opts = small_options(dir.path(), Backend::Auto, SyncMode::Dsync);
    let (wal, _) = Wal::open(opts.clone()).expect("open");
    assert!(matches!(
        Wal::open(opts.clone()),
        Err(WalError::Locked { .. })
    ));
    drop(wal);
    let mut other = opts.clone();
    other.core = 9;
    assert!(matches!(
        Wal::open(other),
        Err(WalError::ForeignSegment {
            owner: 2,
            core: 9,
            ..
        })
    ));
    let mut bad = opts;
    bad.buffer_bytes = 5000;
    assert!(matches!(Wal::open(bad), Err(WalError::Config(_))));
}

/// The O_DIRECT refusal decision every skip goes through, proven without a refusing file
/// system: when `PAXRING_REQUIRE_ODIRECT` is set, a refusal is a failure naming the variable,
/// the directory and the test; when it is not, the test skips with a loud banner.
#[test]
fn odirect_refusal_fails_when_required_and_skips_otherwise() {
    use common::odirect::{refusal_decision, required_by, REQUIRE_ODIRECT_VAR};
    use std::ffi::OsStr;
    use std::path::Path;
    assert_eq!(REQUIRE_ODIRECT_VAR, "PAXRING_REQUIRE_ODIRECT");
    let dir = Path::new("/mnt/no-direct-io/paxring-wal-test-x");
    let refused = std::io::Error::from_raw_os_error(libc::EINVAL);

    let failure = refusal_decision(true, "some_test", dir, &refused)
        .expect_err("required and refused must fail");
    for needle in [
        "PAXRING_REQUIRE_ODIRECT=1",
        dir.to_str().unwrap(),
        "some_test",
    ] {
        assert!(
            failure.contains(needle),
            "{needle:?} missing from {failure:?}"
        );
    }

    let banner = refusal_decision(false, "some_test", dir, &refused).expect("not required: a skip");
    assert!(banner.contains("SKIPPED some_test"), "{banner}");
    assert!(banner.contains(dir.to_str().unwrap()), "{banner}");

    assert!(required_by(Some(OsStr::new("1"))));
    assert!(!required_by(None));
    assert!(!required_by(Some(OsStr::new(""))));
    assert!(!required_by(Some(OsStr::new("0"))));
}

/// `read_chosen` serves a chosen value from the log: an empty `Chosen` mark's value from the
/// `Accept` record it names (checked by ballot), a mark with a payload from itself; nothing
/// for an instance with no mark or a mark whose `Accept` is not the one it names; the same
/// after a reopen (the value index is rebuilt by recovery).
#[test]
fn read_chosen_serves_marked_values_from_the_log() {
    use paxring_wal::{Ballot, RecordKind, RecordRef};
    let Some(dir) = direct_io_dir("read_chosen") else {
        return;
    };
    let opts = small_options(dir.path(), Backend::Auto, SyncMode::Dsync);
    let b1 = Ballot { number: 1, node: 1 };
    let b2 = Ballot { number: 2, node: 2 };
    let rec = |kind, instance, accepted, payload: &'static [u8]| RecordRef {
        kind,
        group: GroupId(3),
        instance: Instance(instance),
        promised: accepted,
        accepted,
        payload,
    };
    let check = |wal: &Wal| {
        let g = GroupId(3);
        // 0: accepted at b1, marked chosen at b1 (empty mark): the accepted value.
        assert_eq!(
            wal.read_chosen(g, Instance(0)).unwrap().as_deref(),
            Some(&b"zero"[..])
        );
        // 1: the mark carries the value.
        assert_eq!(
            wal.read_chosen(g, Instance(1)).unwrap().as_deref(),
            Some(&b"one-chosen"[..])
        );
        // 2: accepted, never marked: not chosen in this log.
        assert_eq!(wal.read_chosen(g, Instance(2)).unwrap(), None);
        // 3: accepted at b1, the empty mark names b2: not this value.
        assert_eq!(wal.read_chosen(g, Instance(3)).unwrap(), None);
        // 4: accepted at b1 then b2, marked at b2: the newer value.
        assert_eq!(
            wal.read_chosen(g, Instance(4)).unwrap().as_deref(),
            Some(&b"four-b2"[..])
        );
        // Unknown instance and group.
        assert_eq!(wal.read_chosen(g, Instance(9)).unwrap(), None);
        assert_eq!(wal.read_chosen(GroupId(4), Instance(0)).unwrap(), None);
    };
    {
        let (mut wal, _) = Wal::open(opts.clone()).expect("open");
        for r in [
            rec(RecordKind::Accept, 0, b1, b"zero"),
            rec(RecordKind::Accept, 1, b1, b"one-accepted"),
            rec(RecordKind::Accept, 2, b1, b"two"),
            rec(RecordKind::Accept, 3, b1, b"three"),
            rec(RecordKind::Accept, 4, b1, b"four-b1"),
            rec(RecordKind::Accept, 4, b2, b"four-b2"),
        ] {
            wal.append(r).expect("append");
        }
        drain(&mut wal);
        for r in [
            rec(RecordKind::Chosen, 0, b1, b""),
            rec(RecordKind::Chosen, 1, Ballot::ZERO, b"one-chosen"),
            rec(RecordKind::Chosen, 3, b2, b""),
            rec(RecordKind::Chosen, 4, b2, b""),
            // A Promise whose first covered instance is 0 (a lagging candidate's Prepare) and
            // a Meta record at 1: later records naming those instances hide no mark.
            rec(RecordKind::Promise, 0, b2, b""),
            rec(RecordKind::Meta, 1, b2, b"meta"),
        ] {
            wal.append(r).expect("append");
        }
        check(&wal); // from the write buffer
        drain(&mut wal);
        check(&wal); // from the file
    }
    let (wal, _) = Wal::open(opts).expect("reopen");
    check(&wal);
}

/// With several writes in flight a crash can leave a later write whole after an earlier one
/// that never landed. Recovery must report the hole as damage (its Lsns exact), never skip it
/// as junk, and keep the later records: nothing in the hole was acknowledged (the durable
/// point never passed it), and the engine re-learns what it may have forgotten.
#[test]
fn a_write_that_did_not_land_before_one_that_did_is_reported_as_damage() {
    use std::os::unix::fs::FileExt;
    let Some(dir) = direct_io_dir("hole_before_a_later_write") else {
        return;
    };
    let opts = small_options(dir.path(), Backend::Auto, SyncMode::Dsync);
    let (mut wal, _) = Wal::open(opts.clone()).expect("open");
    // Ten rounds of three small records: one 4 KiB batch each, after the 4 KiB segment header.
    for round in 0..10u64 {
        for group in 0..3u32 {
            wal.append(record(group, round, &payload(group, round, 100)))
                .expect("append");
        }
        assert_eq!(drain(&mut wal), 1);
    }
    drop(wal);
    // The ninth round's write (Lsns 25..=27) did not land: zeroes where it was.
    let path = dir.path().join(paxring_wal::segfile::segment_name(2, 1));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("segment");
    file.write_all_at(&[0u8; 4096], 4096 * 9).expect("zero");
    file.sync_all().expect("sync");
    drop(file);
    let (_, recovery) = Wal::open(opts).expect("reopen");
    assert_eq!(recovery.damaged.len(), 1, "{recovery:?}");
    let damage = &recovery.damaged[0];
    assert_eq!((damage.first_lsn, damage.last_lsn), (Lsn(25), Lsn(27)));
    assert!(recovery.tail_damage.is_none());
    let lsns: Vec<u64> = recovery.records.iter().map(|(l, _)| l.0).collect();
    assert_eq!(lsns, (1..=24).chain(28..=30).collect::<Vec<u64>>());
    assert_eq!(recovery.next_lsn, Lsn(31));
}
