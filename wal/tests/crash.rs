//! Proves recovery on real segments damaged at random points (seeded, many seeds): after a
//! segment of a real log is cut short, zeroed over a range, or has bytes flipped, recovery
//! returns every record of every batch the damage did not touch, never a record whose bytes
//! differ from what was written (so never one with a bad checksum), and accounts for every
//! written LSN as recovered, reported damaged, or cut at the tail. A subset replays the damage on
//! the files themselves and checks that `Wal::open` recovers the same, then writes on cleanly.
//! Odd write seeds purge as they go, so the damaged log lives in recycled files whose stale
//! content of an earlier life must never be mistaken for records or for a torn tail.
//! Every failure message names the seed.
mod common;

use common::{direct_io_dir, payload, record, Prng};
use paxring_wal::format::BATCH_HEADER_BYTES;
use paxring_wal::segfile::segment_name;
use paxring_wal::{
    recover_images, scan_segment, Backend, GroupId, Instance, Record, Recovery, SyncMode, Wal,
    WalError, WalOptions,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const CORE: u32 = 2;
const WRITE_SEEDS: u64 = 6;
const DAMAGE_SEEDS: u64 = 200;
const FILE_REPLAYS: u64 = 6;

fn options(dir: &Path) -> WalOptions {
    let mut opts = WalOptions::new(dir, CORE);
    opts.segment_bytes = 64 << 10;
    opts.buffer_bytes = 16 << 10;
    opts.backend = Backend::Auto;
    opts.sync_mode = SyncMode::Dsync;
    opts
}

/// Writes a random log (rounds of random records) and returns every record by LSN that is still
/// in the log. With `purge`, old segments are purged as it goes and recycled as new ones, so the
/// log ends up in files that hold stale content of their earlier lives.
fn write_log(dir: &Path, seed: u64, purge: bool) -> BTreeMap<u64, Record> {
    let mut rng = Prng(seed);
    let (mut wal, _) = Wal::open(options(dir)).expect("open");
    let mut written = BTreeMap::new();
    let mut instance = 0u64;
    for _round in 0..40 {
        let count = 1 + rng.below(12);
        for _ in 0..count {
            let group = rng.below(6) as u32;
            let body = payload(group, instance, rng.below(2500) as usize);
            let rec = record(group, instance, &body);
            let lsn = match wal.append(rec) {
                Ok(lsn) => lsn,
                Err(WalError::BufferFull { .. }) => {
                    settle(&mut wal);
                    wal.append(rec).expect("append after drain")
                }
                Err(other) => panic!("seed {seed}: {other}"),
            };
            written.insert(lsn.0, rec.to_owned_record());
            instance += 1;
        }
        settle(&mut wal);
        if purge {
            for group in 0..6 {
                wal.set_purge_floor(GroupId(group), Instance(instance.saturating_sub(120)));
            }
            wal.purge().expect("purge");
        }
    }
    if purge {
        assert!(
            wal.stats().segments_recycled > 0,
            "seed {seed}: recycling happened"
        );
        let (recovery, _) = paxring_wal::inspect_dir(dir, CORE).expect("inspect");
        let first = recovery.records[0].0 .0;
        written.retain(|lsn, _| *lsn >= first);
    }
    written
}

fn settle(wal: &mut Wal) {
    for _ in 0..1000 {
        wal.submit().expect("submit");
        if wal.durable_lsn() == wal.appended_lsn() {
            return;
        }
        wal.wait(&[], Some(Duration::from_secs(5))).expect("wait");
    }
    panic!("log did not drain");
}

#[derive(Clone, Copy, Debug)]
enum Harm {
    Cut {
        at: usize,
    },
    Zero {
        at: usize,
        len: usize,
    },
    Flip {
        at: usize,
        count: usize,
        spread: usize,
    },
}

fn pick_harm(rng: &mut Prng, image_bytes: usize) -> Harm {
    let at = rng.below(image_bytes as u64) as usize;
    match rng.below(3) {
        0 => Harm::Cut { at },
        1 => Harm::Zero {
            at,
            len: 1 + rng.below(9000) as usize,
        },
        _ => Harm::Flip {
            at,
            count: 1 + rng.below(8) as usize,
            spread: 1 + rng.below(6000) as usize,
        },
    }
}

/// Applies the harm; returns the byte ranges whose content changed (or vanished).
fn apply(harm: Harm, image: &mut Vec<u8>, rng: &mut Prng) -> Vec<(usize, usize)> {
    match harm {
        Harm::Cut { at } => {
            let old = image.len();
            image.truncate(at);
            vec![(at, old)]
        }
        Harm::Zero { at, len } => {
            let end = (at + len).min(image.len());
            let changed = image[at..end].iter().any(|&b| b != 0);
            image[at..end].fill(0);
            if changed {
                vec![(at, end)]
            } else {
                vec![]
            }
        }
        Harm::Flip { at, count, spread } => {
            let mut changed = Vec::new();
            for _ in 0..count {
                let spot = (at + rng.below(spread as u64) as usize).min(image.len() - 1);
                image[spot] ^= 1 << rng.below(8);
                changed.push((spot, spot + 1));
            }
            changed
        }
    }
}

/// LSNs of the batches of one segment whose meaningful bytes (header and records, not the
/// padding) intersect a changed range.
fn touched_lsns(pristine: &[u8], segment: u64, changed: &[(usize, usize)]) -> Vec<u64> {
    let scan = scan_segment(CORE, segment, pristine);
    let mut touched = Vec::new();
    for batch in &scan.batches {
        let start = batch.offset as usize;
        let end = start + BATCH_HEADER_BYTES + batch.header.records_bytes as usize;
        if changed.iter().any(|&(a, b)| a < end && start < b) {
            touched.extend(batch.header.first_lsn.0..=batch.header.last_lsn().0);
        }
    }
    touched
}

fn check(seed: &str, written: &BTreeMap<u64, Record>, touched: &[u64], got: &Recovery) {
    let last_written = *written.keys().last().expect("written");
    let first_written = *written.keys().next().expect("written");
    let mut returned = BTreeMap::new();
    for (lsn, rec) in &got.records {
        let original = written
            .get(&lsn.0)
            .unwrap_or_else(|| panic!("{seed}: recovered unknown LSN {lsn}"));
        assert_eq!(
            rec, original,
            "{seed}: record {lsn} differs from what was written"
        );
        returned.insert(lsn.0, ());
    }
    for damage in &got.damaged {
        if damage.identities_complete {
            // Named identities must be exactly the lost records' (they are verified).
            let lost: Vec<_> = (damage.first_lsn.0..=damage.last_lsn.0)
                .map(|lsn| {
                    let original = &written[&lsn];
                    (original.group, original.instance)
                })
                .collect();
            assert_eq!(
                damage.groups_instances, lost,
                "{seed}: named identities are wrong"
            );
        }
    }
    if let Some(tail) = &got.tail_damage {
        assert_eq!(
            tail.first_lsn, got.next_lsn,
            "{seed}: tail damage starts at the cut"
        );
        // Named identities are those of records written in the range (they are verified).
        let in_range: Vec<_> = written
            .range(tail.first_lsn.0..=tail.last_lsn.0)
            .map(|(_, r)| (r.group, r.instance))
            .collect();
        for named in &tail.groups_instances {
            assert!(
                in_range.contains(named),
                "{seed}: tail damage names {named:?}, not written at {}..={}",
                tail.first_lsn,
                tail.last_lsn
            );
        }
        if tail.identities_complete && !got.tail_damage_open_ended() {
            assert_eq!(
                tail.groups_instances, in_range,
                "{seed}: a complete tail damage names every cut record"
            );
        }
    }
    for lsn in written.keys() {
        if touched.contains(lsn) {
            continue;
        }
        assert!(
            returned.contains_key(lsn),
            "{seed}: untouched record {lsn} lost; damage {:?}, torn {:?} ({} bytes)",
            got.damaged,
            got.torn_lsns,
            got.torn_tail_bytes
        );
    }
    for lsn in first_written..=last_written {
        let accounted = returned.contains_key(&lsn)
            || got
                .damaged
                .iter()
                .any(|d| d.first_lsn.0 <= lsn && lsn <= d.last_lsn.0)
            || lsn >= got.next_lsn.0;
        assert!(accounted, "{seed}: LSN {lsn} silently missing");
        if lsn >= got.next_lsn.0 {
            // Only the damaged end of the log may be cut: a torn last batch, or batches a cut
            // removed whole (they left no bytes to report).
            assert!(
                touched.contains(&lsn),
                "{seed}: untouched LSN {lsn} cut (next_lsn {}, torn {:?})",
                got.next_lsn,
                got.torn_lsns
            );
        }
    }
    if touched.is_empty() {
        assert_eq!(
            got.records.len(),
            written.len(),
            "{seed}: untouched log shrank"
        );
        assert!(got.damaged.is_empty(), "{seed}: damage without damage");
    }
}

fn segments_of(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let listing = paxring_wal::segfile::list_dir(dir, CORE).expect("list");
    listing
        .segments
        .iter()
        .map(|(segment, path)| (*segment, std::fs::read(path).expect("read segment")))
        .collect()
}

#[test]
fn seeded_cut_zero_flip_never_yields_a_bad_record() {
    let Some(root) = direct_io_dir("seeded_crash") else {
        return;
    };
    let mut cases = 0;
    let mut damaged_reports = 0;
    let mut torn_reports = 0;
    let mut tail_reports = 0;
    for write_seed in 0..WRITE_SEEDS {
        let dir = root.path().join(format!("log-{write_seed}"));
        // Odd seeds purge and recycle segments as they write.
        let written = write_log(&dir, write_seed, write_seed % 2 == 1);
        let pristine = segments_of(&dir);
        let with_data: Vec<usize> = pristine
            .iter()
            .enumerate()
            .filter(|(_, (segment, image))| !scan_segment(CORE, *segment, image).batches.is_empty())
            .map(|(i, _)| i)
            .collect();
        assert!(
            with_data.len() >= 3,
            "seed {write_seed}: log spans several segments"
        );
        // The pristine log recovers exactly.
        let images: Vec<(u64, &[u8])> = pristine.iter().map(|(s, i)| (*s, i.as_slice())).collect();
        let clean = recover_images(CORE, &images);
        check(
            &format!("write seed {write_seed} pristine"),
            &written,
            &[],
            &clean,
        );
        assert!(clean.is_clean());
        for damage_seed in 0..DAMAGE_SEEDS {
            let seed = format!("write seed {write_seed}, damage seed {damage_seed}");
            let mut rng = Prng(write_seed * 1000 + damage_seed);
            let victim = with_data[rng.below(with_data.len() as u64) as usize];
            let (segment, ref original) = pristine[victim];
            // Aim at the written part of the segment most of the time.
            let scan = scan_segment(CORE, segment, original);
            let used = scan
                .batches
                .last()
                .map(|b| b.offset as usize + b.header.batch_bytes as usize)
                .unwrap_or(original.len());
            let harm = pick_harm(&mut rng, used.max(1));
            let mut harmed = original.clone();
            let changed = apply(harm, &mut harmed, &mut rng);
            let touched = touched_lsns(original, segment, &changed);
            let images: Vec<(u64, &[u8])> = pristine
                .iter()
                .map(|(s, image)| {
                    if *s == segment {
                        (*s, harmed.as_slice())
                    } else {
                        (*s, image.as_slice())
                    }
                })
                .collect();
            let got = recover_images(CORE, &images);
            check(
                &format!("{seed} ({harm:?} on segment {segment})"),
                &written,
                &touched,
                &got,
            );
            damaged_reports += usize::from(!got.damaged.is_empty());
            torn_reports += usize::from(got.torn_tail_bytes > 0);
            tail_reports += usize::from(got.tail_damage.is_some());
            cases += 1;
            if damage_seed < FILE_REPLAYS {
                replay_on_files(
                    &root
                        .path()
                        .join(format!("replay-{write_seed}-{damage_seed}")),
                    &pristine,
                    segment,
                    &harmed,
                    &got,
                    &seed,
                );
            }
        }
    }
    assert_eq!(cases, (WRITE_SEEDS * DAMAGE_SEEDS) as usize);
    assert!(
        damaged_reports > 0,
        "no case produced damage followed by valid data"
    );
    assert!(torn_reports > 0, "no case produced a torn tail");
    assert!(tail_reports > 0, "no case produced tail damage");
    eprintln!("crash cases: {cases}, with damage reports: {damaged_reports}, with torn tails: {torn_reports}, with tail damage: {tail_reports}");
}

/// Writes the harmed images as real files, opens the log, compares with the pure recovery,
/// writes on and reopens.
fn replay_on_files(
    dir: &Path,
    pristine: &[(u64, Vec<u8>)],
    harmed_segment: u64,
    harmed: &[u8],
    expected: &Recovery,
    seed: &str,
) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (segment, image) in pristine {
        let bytes: &[u8] = if *segment == harmed_segment {
            harmed
        } else {
            image
        };
        std::fs::write(dir.join(segment_name(CORE, *segment)), bytes).expect("write image");
    }
    let (mut wal, got) = Wal::open(options(dir)).unwrap_or_else(|e| panic!("{seed}: open: {e}"));
    assert_eq!(
        got.records, expected.records,
        "{seed}: open recovers what the images do"
    );
    assert_eq!(got.damaged, expected.damaged, "{seed}");
    assert_eq!(got.tail_damage, expected.tail_damage, "{seed}");
    assert_eq!(got.next_lsn, expected.next_lsn, "{seed}");
    let lsn = wal.append(record(1, 1_000_000, b"after")).expect("append");
    assert_eq!(lsn, expected.next_lsn, "{seed}");
    settle(&mut wal);
    drop(wal);
    let (_, again) = Wal::open(options(dir)).expect("reopen");
    assert_eq!(again.torn_tail_bytes, 0, "{seed}: the cut tail was zeroed");
    assert_eq!(
        again.damaged, expected.damaged,
        "{seed}: damage stays reported"
    );
    assert_eq!(again.last_lsn(), lsn, "{seed}");
    assert_eq!(
        again.records.last().map(|(_, r)| r.payload.as_ref()),
        Some(&b"after"[..]),
        "{seed}"
    );
}
