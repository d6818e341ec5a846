//! Proves `Wal::open_deferred` on a real O_DIRECT file system: the cut tail of a damaged last
//! write stays on disk until `zero_cut_tails`, so a crash after new writes but before the zeroing
//! recovers the new records and reports the cut bytes still after them as tail damage again
//! (never a clean log that forgot the damage); `zero_cut_tails` never erases what was written
//! since open; and a first write that has to go to the next segment zeroes the cut tail before
//! it counts as durable (a recovery would otherwise take its LSNs for repeats of the cut batch).
mod common;

use common::{direct_io_dir, payload, record, small_options};
use paxring_wal::segfile::segment_name;
use paxring_wal::{recover_images, Backend, Lsn, SyncMode, Wal, WalOptions};
use std::path::Path;
use std::time::Duration;

const CORE: u32 = 2;
const BLOCK: u64 = 4096;
/// Offset of the first payload byte of the first record of a batch starting at `batch`
/// (64-byte batch header, 56-byte record header).
const FIRST_PAYLOAD: u64 = 64 + 56;

const MODES: [(Backend, SyncMode); 4] = [
    (Backend::Auto, SyncMode::Dsync),
    (Backend::Auto, SyncMode::Fdatasync),
    (Backend::Blocking, SyncMode::Dsync),
    (Backend::Blocking, SyncMode::Fdatasync),
];

/// Submits and waits until everything appended is durable.
fn drain(wal: &mut Wal) {
    for _ in 0..10_000 {
        wal.submit().expect("submit");
        if wal.durable_lsn() == wal.appended_lsn() {
            return;
        }
        wal.wait(&[], Some(Duration::from_secs(5))).expect("wait");
    }
    panic!("log did not drain");
}

fn flip_byte(dir: &Path, segment: u64, offset: u64) {
    let path = dir.join(segment_name(CORE, segment));
    let mut bytes = std::fs::read(&path).expect("read segment");
    bytes[offset as usize] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write segment");
}

/// Writes two one-block batches (LSNs 1 and 2, blocks 1 and 2 of segment 1), then a three-block
/// batch (LSNs 3..=5, blocks 3..=5) whose first record is then damaged on disk: the last write
/// is cut (recovery row 5).
fn damaged_log(opts: &WalOptions) {
    let (mut wal, _) = Wal::open(opts.clone()).expect("open");
    for instance in 0..2u64 {
        wal.append(record(1, instance, &payload(1, instance, 200)))
            .expect("append");
        drain(&mut wal);
    }
    for group in 3..6u32 {
        wal.append(record(group, 2, &payload(group, 2, 3000)))
            .expect("append");
    }
    drain(&mut wal);
    assert_eq!(wal.durable_lsn(), Lsn(5));
    drop(wal);
    flip_byte(&opts.dir, 1, 3 * BLOCK + FIRST_PAYLOAD + 10);
}

/// Opens the damaged log deferred and checks that the cut batch is reported and still pending.
fn open_damaged(opts: &WalOptions) -> Wal {
    let (wal, recovery) = Wal::open_deferred(opts.clone()).expect("open deferred");
    assert_eq!(recovery.records.len(), 2, "{recovery:?}");
    assert_eq!(recovery.torn_lsns, Some((Lsn(3), Lsn(5))));
    let tail = recovery.tail_damage.as_ref().expect("tail damage");
    assert_eq!((tail.first_lsn, tail.last_lsn), (Lsn(3), Lsn(5)));
    assert_eq!(recovery.tail_regions.len(), 1);
    assert_eq!(
        (
            recovery.tail_regions[0].segment,
            recovery.tail_regions[0].offset,
            recovery.tail_regions[0].len
        ),
        (1, 3 * BLOCK, 3 * BLOCK)
    );
    assert!(wal.cut_tails_pending());
    assert_eq!(wal.appended_lsn(), Lsn(2));
    wal
}

#[test]
fn a_crash_before_zeroing_keeps_new_batches_and_reports_the_cut_tail_again() {
    for (backend, sync_mode) in MODES {
        let name = format!("deferred crash {backend:?} {sync_mode:?}");
        let Some(dir) = direct_io_dir(&name) else {
            return;
        };
        let opts = small_options(dir.path(), backend, sync_mode);
        damaged_log(&opts);

        // The first write after open (the engine's re-learn records) overwrites the first block
        // of the cut batch; then the node crashes before zeroing.
        let mut wal = open_damaged(&opts);
        let lsn = wal.append(record(7, 100, b"re-learn")).expect("append");
        assert_eq!(lsn, Lsn(3));
        drain(&mut wal);
        assert!(
            wal.cut_tails_pending(),
            "{name}: only zero_cut_tails zeroes"
        );
        drop(wal);

        // The new batch is recovered, and the cut batch's two blocks after it are a cut tail
        // again (tail damage from the next LSN, identities unknown).
        let (mut wal, recovery) = Wal::open_deferred(opts.clone()).expect("reopen");
        let lsns: Vec<Lsn> = recovery.records.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, vec![Lsn(1), Lsn(2), Lsn(3)], "{name}: {recovery:?}");
        assert_eq!(recovery.records[2].1.payload.as_ref(), b"re-learn");
        let tail = recovery.tail_damage.as_ref().expect("tail damage again");
        assert_eq!(tail.first_lsn, Lsn(4), "{name}");
        assert!(!tail.identities_complete, "{name}");
        assert!(recovery.tail_damage_open_ended(), "{name}");
        assert_eq!(recovery.torn_lsns, None, "{name}");
        assert_eq!(recovery.torn_tail_bytes, 2 * BLOCK, "{name}");
        assert_eq!(recovery.tail_regions.len(), 1, "{name}");
        assert_eq!(recovery.tail_regions[0].offset, 4 * BLOCK, "{name}");
        assert!(wal.cut_tails_pending(), "{name}");

        // Write on (over the first of those blocks), then zero: only the block not written since
        // open is zeroed, and the next start is clean with every record.
        let lsn = wal.append(record(7, 101, b"after")).expect("append");
        assert_eq!(lsn, Lsn(4));
        drain(&mut wal);
        wal.zero_cut_tails().expect("zero cut tails");
        assert!(!wal.cut_tails_pending(), "{name}");
        wal.zero_cut_tails().expect("a second call is a no-op");
        drop(wal);
        let (wal, recovery) = Wal::open(opts).expect("reopen");
        assert!(recovery.is_clean(), "{name}: {recovery:?}");
        let lsns: Vec<Lsn> = recovery.records.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, vec![Lsn(1), Lsn(2), Lsn(3), Lsn(4)], "{name}");
        assert_eq!(recovery.records[3].1.payload.as_ref(), b"after");
        assert!(!wal.cut_tails_pending());
    }
}

#[test]
fn zeroing_after_the_first_durable_write_makes_the_next_start_clean() {
    for (backend, sync_mode) in MODES {
        let name = format!("deferred zero {backend:?} {sync_mode:?}");
        let Some(dir) = direct_io_dir(&name) else {
            return;
        };
        let opts = small_options(dir.path(), backend, sync_mode);
        damaged_log(&opts);
        let mut wal = open_damaged(&opts);
        wal.append(record(7, 100, b"re-learn")).expect("append");
        drain(&mut wal);
        wal.zero_cut_tails().expect("zero cut tails");
        assert!(!wal.cut_tails_pending());
        drop(wal);
        let (_, recovery) = Wal::open_deferred(opts).expect("reopen");
        assert!(recovery.is_clean(), "{name}: {recovery:?}");
        assert!(recovery.tail_regions.is_empty());
        let lsns: Vec<Lsn> = recovery.records.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, vec![Lsn(1), Lsn(2), Lsn(3)], "{name}");
        assert_eq!(recovery.records[2].1.payload.as_ref(), b"re-learn");
    }
}

#[test]
fn open_zeroes_at_once_and_a_crash_before_any_write_reports_the_damage_again() {
    let Some(dir) = direct_io_dir("deferred no write") else {
        return;
    };
    let opts = small_options(dir.path(), Backend::Auto, SyncMode::Dsync);
    damaged_log(&opts);
    // Deferred, and nothing written: the damage is reported again.
    drop(open_damaged(&opts));
    drop(open_damaged(&opts));
    // `open` zeroes before returning: nothing is pending and the next start is clean.
    let (wal, recovery) = Wal::open(opts.clone()).expect("open");
    assert!(recovery.tail_damage.is_some());
    assert!(!wal.cut_tails_pending());
    drop(wal);
    let (_, recovery) = Wal::open(opts).expect("reopen");
    assert!(recovery.is_clean(), "{recovery:?}");
    assert_eq!(recovery.records.len(), 2);
}

#[test]
fn a_first_write_in_the_next_segment_zeroes_the_cut_tail_before_it_is_durable() {
    for (backend, sync_mode) in MODES {
        let name = format!("deferred next segment {backend:?} {sync_mode:?}");
        let Some(dir) = direct_io_dir(&name) else {
            return;
        };
        let mut opts = small_options(dir.path(), backend, sync_mode);
        opts.segment_bytes = 64 << 10;
        opts.buffer_bytes = 16 << 10;
        // Thirteen one-block batches (blocks 1..=13 of segment 1), then a two-block batch in
        // the last two blocks (LSNs 14 and 15), which is then damaged.
        let (mut wal, _) = Wal::open(opts.clone()).expect("open");
        for instance in 0..13u64 {
            wal.append(record(1, instance, &payload(1, instance, 100)))
                .expect("append");
            drain(&mut wal);
        }
        for group in 2..4u32 {
            wal.append(record(group, 13, &payload(group, 13, 3000)))
                .expect("append");
        }
        drain(&mut wal);
        assert_eq!(wal.durable_lsn(), Lsn(15));
        drop(wal);
        flip_byte(dir.path(), 1, 14 * BLOCK + FIRST_PAYLOAD + 10);
        let damaged_first = std::fs::read(dir.path().join(segment_name(CORE, 1))).expect("read");

        let (mut wal, recovery) = Wal::open_deferred(opts.clone()).expect("open deferred");
        assert_eq!(recovery.torn_lsns, Some((Lsn(14), Lsn(15))), "{name}");
        assert!(wal.cut_tails_pending());
        // Three blocks: it does not fit in the two left in segment 1.
        let big = payload(9, 200, 9000);
        assert_eq!(wal.append(record(9, 200, &big)).expect("append"), Lsn(14));
        drain(&mut wal);
        assert_eq!(wal.segment_numbers().last(), Some(&2), "{name}");
        assert!(
            !wal.cut_tails_pending(),
            "{name}: zeroed before the write counted as durable"
        );
        drop(wal);

        // Why: with the cut batch's header still legible in segment 1, a recovery takes the
        // new batch's LSNs for repeats of it and drops the durable record.
        let second = std::fs::read(dir.path().join(segment_name(CORE, 2))).expect("read");
        let unzeroed = recover_images(CORE, &[(1, &damaged_first), (2, &second)]);
        assert!(
            unzeroed.records.iter().all(|(lsn, _)| *lsn < Lsn(14)),
            "{name}: {unzeroed:?}"
        );

        let (_, recovery) = Wal::open_deferred(opts).expect("reopen");
        assert!(recovery.is_clean(), "{name}: {recovery:?}");
        assert_eq!(recovery.records.len(), 14, "{name}");
        let (lsn, last) = recovery.records.last().expect("records");
        assert_eq!(*lsn, Lsn(14), "{name}");
        assert_eq!(last.payload.as_ref(), big.as_slice(), "{name}");
    }
}
