//! Recovery of one core's log from its segment images: classification, damage report, index.
//!
//! Owns: the decision of what every byte found on disk means (`recover_images`) and the
//! per-group index it rebuilds. PURE over byte images (the simulator runs it on simulated disks);
//! must never do I/O, never panic on bytes, and never return a record whose checksum failed.
//!
//! # Decision table
//!
//! The segments are scanned in segment order (`format::scan_segment`; a segment header in the
//! first block is skipped and says whether the file was recycled); each yields verified
//! batches and runs of non-zero bytes that are not part of one ("bad regions"). Walking them in
//! order, with `expected` = the LSN after the last kept record:
//!
//! | # | What is found                                                    | Classification | Action |
//! |---|------------------------------------------------------------------|----------------|--------|
//! | 1 | verified batch, `first_lsn == expected` (or the first batch), all records verify | valid | keep every record |
//! | 2 | all-zero blocks                                                  | preallocated space | skip, report nothing |
//! | 3 | verified batch whose `first_lsn < expected`                      | stale / repeated | treat its bytes as a bad region (row 6 or 7) |
//! | 4 | verified batch, some records fail, and a verified batch follows  | corruption followed by valid data | keep the records that verify; one `Damage` per run of failed records (LSNs exact; identities of the lost records whose identity check verifies) |
//! | 5 | verified batch, some records fail, and it is the last batch      | torn tail, or damage to the last completed write | cut the whole batch (even records that verify); `next_lsn = first_lsn`; count its bytes in `torn_tail_bytes`; report `tail_damage` for its `first_lsn ..= last_lsn` (exact) naming every record of it whose identity check verifies (verified records too); `identities_complete` only if all of them do |
//! | 6 | bad region (or zeroes, or missing segments) then a verified batch with `first_lsn > expected` | corruption followed by valid data | `Damage` for `expected ..= first_lsn - 1`, identities unknown (`identities_complete = false`) |
//! | 7 | bad region then a verified batch with `first_lsn == expected`    | junk, nothing lost | skip; count in `junk_bytes` |
//! | 8 | bad region after the last verified batch                         | torn tail, or damage to the last completed write | cut; count in `torn_tail_bytes` and list it in `tail_regions` (the writer zeroes it before reuse); report `tail_damage` from `expected` with `last_lsn = expected` (a lower bound: how many LSNs it held is unknown), identities unknown (`identities_complete = false`) |
//! | 9 | bad region, zeroes, or a segment without a readable batch, before the first verified batch of the oldest segment (whose `first_lsn > 1`) | corruption or a lost write at the log start | `Damage` from `Lsn(1)` to `first_lsn - 1` (lower bound unknown), identities unknown |
//! | 10 | non-zero bytes after the last batch of a segment whose header says "recycled" | its earlier life (stale) | skip; count in `stale_bytes`; not a torn tail, not junk (if an LSN gap follows, row 6 still reports it) |
//! | 11 | last batch whose records all verify but whose padding after them is missing (segment cut short) or not zero (its sectors did not land) | a tear that lost only padding | keep every record (row 1); not damage: `tail_damage` stays `None` |
//! | 12 | a bad region after a last batch cut by row 5                      | torn tail, or damage to the last completed writes | cut both; one `tail_damage` from the batch's `first_lsn` to its last LSN (now a lower bound), `identities_complete = false` (the region's identities are unknown) |
//!
//! A `Damage` with `identities_complete == false` hides which records were lost: the engine must
//! treat every group on this core as possibly having forgotten something in that LSN range
//! (re-learn from peers, do not vote on what it may have forgotten). With
//! `identities_complete == true`, `groups_instances` names every lost record's
//! `(group, instance)`, each verified by the record's 16-bit identity check (a damaged identity
//! passes it with probability 1/65536).
//!
//! Rows 5, 8 and 12 cannot tell a torn write (never completed, so no reply left the node) from
//! damage to the last write that did complete (whose Promise and Accepted replies may already
//! have left the node): both look the same on disk. Both are cut (the log resumes at the same
//! point either way), and both are reported in `Recovery::tail_damage`, because the engine must
//! assume the worse case: it applies its re-learn rule to the `(group, instance)` pairs named
//! there, or to every group of the core when `identities_complete` is false. A replica that
//! silently forgot an acknowledged vote could let two different values be chosen. This follows
//! Protocol-Aware Recovery (Alagappan et al., FAST'18) and TigerBeetle's journal decision table:
//! a damaged entry at the head of the log is treated as possibly acknowledged, never assumed
//! torn. Stale bytes of a recycled segment (row 10) and zeroes (row 2) are never tail damage;
//! nor is a tear that lost only padding (row 11).
//!
//! In `tail_damage`, `first_lsn` is always `next_lsn`. `last_lsn` is exact for row 5 alone; for
//! rows 8 and 12 it is only a lower bound (`Recovery::tail_damage_open_ended`). Row 8 names no
//! identities: the scanner does not read record headers inside a bad region. Limits: in a
//! recycled segment, a cut write whose first block is unreadable looks like stale bytes (row 10)
//! and is not reported, even if it had completed; and `Wal::open` zeroes the cut regions, so only
//! the first recovery after the damage reports it.
//!
//! Every other loss is reported in `damaged`, never silently cut.
use crate::format::{scan_segment, BadRegion, ScannedBatch, ScannedRecord, SegmentScan};
use crate::types::{GroupId, Instance, Lsn, Record, RecordKind};
use std::collections::BTreeMap;

/// Where one record lives on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLocation {
    /// The record's LSN.
    pub lsn: Lsn,
    /// Segment number.
    pub segment: u64,
    /// Byte offset of the record in the segment.
    pub offset: u64,
    /// Bytes the record occupies.
    pub len: u32,
}

/// A range of LSNs that were written but cannot be recovered, with what is known about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// First LSN possibly lost.
    pub first_lsn: Lsn,
    /// Last LSN possibly lost (inclusive).
    pub last_lsn: Lsn,
    /// `(group, instance)` of lost records whose identity fields verify.
    pub groups_instances: Vec<(GroupId, Instance)>,
    /// True when `groups_instances` names every lost record; false when identities are hidden
    /// (then every group of the core must be treated as suspect for this range).
    pub identities_complete: bool,
    /// Segment where the damage was found.
    pub segment: u64,
    /// Byte offset in that segment.
    pub offset: u64,
    /// Human-readable cause.
    pub reason: String,
}

/// The cut tail of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailRegion {
    /// Segment number.
    pub segment: u64,
    /// Byte offset of the region.
    pub offset: u64,
    /// Length in bytes (clipped to the image).
    pub len: u64,
    /// What was there.
    pub reason: String,
}

/// What one segment holds after recovery (used by purge).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Segment number.
    pub segment: u64,
    /// First kept LSN in it (`Lsn::ZERO` if none).
    pub first_lsn: Lsn,
    /// Last kept LSN in it (`Lsn::ZERO` if none).
    pub last_lsn: Lsn,
    /// Kept records in it.
    pub records: u64,
    /// Where its batches start (after its segment header, if it has one).
    pub data_start: u64,
    /// For each group with records in it, the highest instance among them.
    pub groups_max_instance: BTreeMap<GroupId, Instance>,
}

/// Everything recovered from a core's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Every record that verified, in LSN order (gaps only where `damaged` says).
    pub records: Vec<(Lsn, Record)>,
    /// The LSN the next append gets.
    pub next_lsn: Lsn,
    /// Bytes cut at the tail (torn last write and non-zero bytes after it).
    pub torn_tail_bytes: u64,
    /// LSNs of the cut last batch, if its header was legible.
    pub torn_lsns: Option<(Lsn, Lsn)>,
    /// The cut regions, in order (the writer zeroes them before writing there).
    pub tail_regions: Vec<TailRegion>,
    /// Loss followed by valid data: reported, never silently cut.
    pub damaged: Vec<Damage>,
    /// The cut last write, when it may have held records (rows 5 and 8): a torn write and
    /// damage to a write that completed (whose replies may have left the node) look the same,
    /// so the engine applies the re-learn rule to the groups it names (every group of the core
    /// when `identities_complete` is false). `None` when nothing that could hold a record was cut.
    /// Its `first_lsn` is `next_lsn`; its `last_lsn` is exact for a cut batch with a legible
    /// header (row 5) and only a lower bound otherwise (see [`Recovery::tail_damage_open_ended`]).
    pub tail_damage: Option<Damage>,
    /// Non-zero bytes between batches that hid no LSN (rows 3/7).
    pub junk_bytes: u64,
    /// Non-zero bytes after the last batch of a recycled segment (its earlier life; row 10).
    pub stale_bytes: u64,
    /// Per group: instance -> location of the newest record for that instance.
    pub index: BTreeMap<GroupId, BTreeMap<Instance, RecordLocation>>,
    /// Per group: instance -> location of its newest record that carries a value (an
    /// `Accept`, or a `Chosen` mark with a payload): where an empty mark's value is.
    pub values: BTreeMap<GroupId, BTreeMap<Instance, RecordLocation>>,
    /// Per group: instance -> location of its newest `Chosen` mark.
    pub marks: BTreeMap<GroupId, BTreeMap<Instance, RecordLocation>>,
    /// Per segment, in order.
    pub segments: Vec<SegmentSummary>,
    /// Where the log continues: (segment, offset) after the last kept batch (the start of a cut
    /// batch), or `None` if no batch was kept or cut.
    pub resume: Option<(u64, u64)>,
}

impl Recovery {
    /// True when nothing was cut, damaged or skipped (tail damage counts as damage).
    pub fn is_clean(&self) -> bool {
        self.torn_tail_bytes == 0
            && self.damaged.is_empty()
            && self.tail_damage.is_none()
            && self.junk_bytes == 0
    }

    /// True when `tail_damage` is set and its `last_lsn` is only a lower bound: the cut held
    /// bytes whose batch header was illegible (rows 8 and 12), so how many LSNs they held is
    /// unknown. False when there is no tail damage or it is exactly one cut batch (row 5).
    pub fn tail_damage_open_ended(&self) -> bool {
        self.tail_damage.is_some() && (self.torn_lsns.is_none() || self.tail_regions.len() > 1)
    }

    /// Highest LSN kept (`Lsn::ZERO` if none).
    pub fn last_lsn(&self) -> Lsn {
        self.records
            .last()
            .map(|(lsn, _)| *lsn)
            .unwrap_or(Lsn::ZERO)
    }
}

enum Item<'a> {
    Batch(u64, &'a ScannedBatch),
    Bad(u64, BadRegion),
    /// Non-zero bytes after the last batch of a recycled segment: its earlier life.
    Stale(u64, BadRegion),
    /// A segment without a single verified batch.
    Empty(u64),
}

/// Recovers a whole core log from its segment images (given in any order; sorted here).
pub fn recover_images(core: u32, segments: &[(u64, &[u8])]) -> Recovery {
    let mut ordered: Vec<(u64, &[u8])> = segments.to_vec();
    ordered.sort_by_key(|(segment, _)| *segment);
    let scans: Vec<SegmentScan> = ordered
        .iter()
        .map(|(segment, image)| scan_segment(core, *segment, image))
        .collect();
    recover_scans(&scans)
}

/// Recovers from already scanned segments (in segment order).
pub fn recover_scans(scans: &[SegmentScan]) -> Recovery {
    let items = order_items(scans);
    let last_batch = items.iter().rposition(|i| matches!(i, Item::Batch(..)));
    let mut rec = Recovery {
        next_lsn: Lsn(1),
        segments: scans
            .iter()
            .map(|s| SegmentSummary {
                segment: s.segment,
                data_start: s.data_start,
                ..SegmentSummary::default()
            })
            .collect(),
        ..Recovery::default()
    };
    let mut expected: Option<Lsn> = None;
    // Since the last kept batch: where the first trouble was, and the junk seen.
    let mut trouble: Option<(u64, u64, String)> = None;
    let mut trouble_is_stale = false;
    let mut junk_since_batch = 0u64;
    let mut prev_end: Option<(u64, u64)> = None;
    for (position, item) in items.iter().enumerate() {
        match item {
            Item::Empty(segment) => {
                // Segments are entered only to write a batch, so an empty segment older than a
                // batch lost its batches (a newer empty one is just prepared ahead).
                if last_batch.is_some_and(|last| position < last)
                    && (trouble.is_none() || trouble_is_stale)
                {
                    trouble_is_stale = false;
                    trouble = Some((
                        *segment,
                        0,
                        format!("segment {segment} holds no readable batch"),
                    ));
                }
            }
            Item::Stale(segment, region) => {
                rec.stale_bytes += region.len;
                if trouble.is_none() {
                    trouble_is_stale = true;
                    trouble = Some((
                        *segment,
                        region.offset,
                        "the last batches of a recycled segment are unreadable".to_string(),
                    ));
                }
            }
            Item::Bad(segment, region) => {
                if last_batch.is_none_or(|last| position > last) {
                    rec.torn_tail_bytes += region.len;
                    rec.tail_regions.push(TailRegion {
                        segment: *segment,
                        offset: region.offset,
                        len: region.len,
                        reason: region.reason.to_string(),
                    });
                    // Every batch is behind us, so `expected` is final here.
                    note_tail_region(&mut rec, expected.unwrap_or(Lsn(1)), *segment, region);
                } else {
                    junk_since_batch += region.len;
                    if trouble.is_none() || trouble_is_stale {
                        trouble_is_stale = false;
                        trouble = Some((*segment, region.offset, region.reason.to_string()));
                    }
                }
            }
            Item::Batch(segment, batch) => {
                let header = &batch.header;
                match expected {
                    Some(want) if header.first_lsn > want => {
                        let (seg, offset, reason) = trouble.take().unwrap_or_else(|| {
                            let (seg, offset) = prev_end.unwrap_or((*segment, batch.offset));
                            (seg, offset, describe_silent_gap(prev_end, *segment))
                        });
                        rec.damaged.push(Damage {
                            first_lsn: want,
                            last_lsn: Lsn(header.first_lsn.0 - 1),
                            groups_instances: Vec::new(),
                            identities_complete: false,
                            segment: seg,
                            offset,
                            reason,
                        });
                    }
                    None if header.first_lsn.0 > 1
                        && ((trouble.is_some() && !trouble_is_stale)
                            || zeros_before(scans, *segment, batch.offset)) =>
                    {
                        // A writer enters a segment only to write a batch at its data start:
                        // a first batch further in, after zeroes alone, follows a lost write.
                        let (seg, offset, reason) = trouble.take().unwrap_or_else(|| {
                            (
                                *segment,
                                batch.offset,
                                "zeroes where the log's first batch should be (a lost write)"
                                    .to_string(),
                            )
                        });
                        rec.damaged.push(Damage {
                            first_lsn: Lsn(1),
                            last_lsn: Lsn(header.first_lsn.0 - 1),
                            groups_instances: Vec::new(),
                            identities_complete: false,
                            segment: seg,
                            offset,
                            reason: format!(
                                "{reason} before the first batch (lower bound unknown)"
                            ),
                        });
                    }
                    _ => rec.junk_bytes += junk_since_batch,
                }
                trouble = None;
                trouble_is_stale = false;
                junk_since_batch = 0;
                let is_last = Some(position) == last_batch;
                if is_last && !batch.intact() {
                    cut_torn_batch(&mut rec, *segment, batch, scans);
                    expected = Some(header.first_lsn);
                    rec.resume = Some((*segment, batch.offset));
                    continue;
                }
                keep_batch(&mut rec, *segment, batch);
                expected = Some(header.last_lsn().next());
                let end = batch.offset + u64::from(header.batch_bytes);
                prev_end = Some((*segment, end));
                rec.resume = Some((*segment, end));
            }
        }
    }
    rec.next_lsn = expected.unwrap_or(Lsn(1));
    check_invariants(&rec);
    rec
}

/// Whether the first batch of the log sits after zeroes at its segment's data start (its
/// predecessors' bytes never reached the disk, or were zeroed).
fn zeros_before(scans: &[SegmentScan], segment: u64, offset: u64) -> bool {
    scans
        .iter()
        .find(|s| s.segment == segment)
        .is_some_and(|s| offset > s.data_start)
}

/// Flattens the scans into one ordered walk; batches that repeat LSNs become bad regions.
fn order_items(scans: &[SegmentScan]) -> Vec<Item<'_>> {
    let mut items = Vec::new();
    let mut high: Option<Lsn> = None;
    for scan in scans {
        if scan.batches.is_empty() {
            items.push(Item::Empty(scan.segment));
        }
        let mut bads = scan.bad_regions.iter().peekable();
        for batch in &scan.batches {
            while let Some(bad) = bads.next_if(|b| b.offset < batch.offset) {
                items.push(Item::Bad(scan.segment, bad.clone()));
            }
            if high.is_some_and(|h| batch.header.first_lsn <= h) {
                let len = u64::from(batch.header.batch_bytes).min(scan.image_bytes - batch.offset);
                items.push(Item::Bad(
                    scan.segment,
                    BadRegion {
                        offset: batch.offset,
                        len,
                        reason: "batch repeats earlier LSNs",
                    },
                ));
                continue;
            }
            high = Some(batch.header.last_lsn());
            items.push(Item::Batch(scan.segment, batch));
        }
        let end = scan.batches_end();
        for bad in bads {
            if scan.recycled && bad.offset >= end {
                items.push(Item::Stale(scan.segment, bad.clone()));
            } else {
                items.push(Item::Bad(scan.segment, bad.clone()));
            }
        }
    }
    items
}

fn describe_silent_gap(prev_end: Option<(u64, u64)>, segment: u64) -> String {
    match prev_end {
        Some((prev, _)) if segment > prev + 1 => {
            format!("segments {}..={} missing", prev + 1, segment - 1)
        }
        _ => "zeroed space where batches were".to_string(),
    }
}

fn keep_batch(rec: &mut Recovery, segment: u64, batch: &ScannedBatch) {
    let summary_at = rec
        .segments
        .iter()
        .position(|s| s.segment == segment)
        .expect("batch from a scanned segment");
    let mut run: Option<Damage> = None;
    for slot in &batch.records {
        match slot {
            ScannedRecord::Valid {
                lsn,
                offset,
                len,
                record,
            } => {
                if let Some(damage) = run.take() {
                    rec.damaged.push(damage);
                }
                let location = RecordLocation {
                    lsn: *lsn,
                    segment,
                    offset: *offset,
                    len: *len,
                };
                rec.index
                    .entry(record.group)
                    .or_default()
                    .insert(record.instance, location);
                if record.kind == RecordKind::Chosen {
                    rec.marks
                        .entry(record.group)
                        .or_default()
                        .insert(record.instance, location);
                }
                if carries_value(record) {
                    rec.values
                        .entry(record.group)
                        .or_default()
                        .insert(record.instance, location);
                }
                let summary = &mut rec.segments[summary_at];
                if summary.first_lsn == Lsn::ZERO {
                    summary.first_lsn = *lsn;
                }
                summary.last_lsn = *lsn;
                summary.records += 1;
                let high = summary
                    .groups_max_instance
                    .entry(record.group)
                    .or_insert(record.instance);
                *high = (*high).max(record.instance);
                rec.records.push((*lsn, record.clone()));
            }
            ScannedRecord::Bad {
                lsn,
                offset,
                hint,
                reason,
            } => {
                let damage = run.get_or_insert_with(|| Damage {
                    first_lsn: *lsn,
                    last_lsn: *lsn,
                    groups_instances: Vec::new(),
                    identities_complete: true,
                    segment,
                    offset: offset.unwrap_or(batch.offset),
                    reason: (*reason).to_string(),
                });
                damage.last_lsn = *lsn;
                match hint {
                    Some(identity) => damage.groups_instances.push(*identity),
                    None => damage.identities_complete = false,
                }
            }
        }
    }
    if let Some(damage) = run {
        rec.damaged.push(damage);
    }
}

fn cut_torn_batch(rec: &mut Recovery, segment: u64, batch: &ScannedBatch, scans: &[SegmentScan]) {
    let image_bytes = scans
        .iter()
        .find(|s| s.segment == segment)
        .map(|s| s.image_bytes)
        .unwrap_or(0);
    let len = u64::from(batch.header.batch_bytes).min(image_bytes.saturating_sub(batch.offset));
    rec.torn_tail_bytes += len;
    rec.torn_lsns = Some((batch.header.first_lsn, batch.header.last_lsn()));
    let reason = batch
        .records
        .iter()
        .find_map(|r| match r {
            ScannedRecord::Bad { reason, .. } => Some(*reason),
            ScannedRecord::Valid { .. } => None,
        })
        .unwrap_or("torn");
    let reason = format!("last batch incomplete: {reason}");
    // The whole batch is cut, so every record of it is lost, verified ones included: name each
    // whose identity verifies (a verified record's identity is covered by its checksum).
    let mut groups_instances = Vec::with_capacity(batch.records.len());
    let mut identities_complete = true;
    for slot in &batch.records {
        match slot {
            ScannedRecord::Valid { record, .. } => {
                groups_instances.push((record.group, record.instance));
            }
            ScannedRecord::Bad {
                hint: Some(identity),
                ..
            } => groups_instances.push(*identity),
            ScannedRecord::Bad { hint: None, .. } => identities_complete = false,
        }
    }
    rec.tail_damage = Some(Damage {
        first_lsn: batch.header.first_lsn,
        last_lsn: batch.header.last_lsn(),
        groups_instances,
        identities_complete,
        segment,
        offset: batch.offset,
        reason: reason.clone(),
    });
    rec.tail_regions.push(TailRegion {
        segment,
        offset: batch.offset,
        len,
        reason,
    });
}

/// Rows 8 and 12: non-zero bytes after the last verified batch (never stale bytes of a recycled
/// segment, never zeroes: the scan reports neither as a bad region) may be a cut write of this
/// log, from `next` on. Its record headers are not read, so identities are unknown and the
/// count of LSNs it held is unknown (`last_lsn = next` is a lower bound).
fn note_tail_region(rec: &mut Recovery, next: Lsn, segment: u64, region: &BadRegion) {
    match &mut rec.tail_damage {
        // Row 12: a torn last batch, then more bytes after it.
        Some(damage) => {
            damage.identities_complete = false;
            // Only the first region after the cut batch is described (the rest are listed in
            // `tail_regions`).
            let first_after_batch = rec.torn_lsns.is_some() && rec.tail_regions.len() == 2;
            if first_after_batch {
                damage.reason = format!(
                    "{}; then non-zero bytes at segment {segment} offset {} ({}): identities and count unknown",
                    damage.reason, region.offset, region.reason
                );
            }
        }
        None => {
            rec.tail_damage = Some(Damage {
                first_lsn: next,
                last_lsn: next,
                groups_instances: Vec::new(),
                identities_complete: false,
                segment,
                offset: region.offset,
                reason: format!(
                    "non-zero bytes after the last verified batch ({}): a cut write from LSN {next} on, identities and count unknown",
                    region.reason
                ),
            });
        }
    }
}

fn check_invariants(rec: &Recovery) {
    for pair in rec.records.windows(2) {
        assert!(pair[0].0 < pair[1].0, "recovered LSNs must increase");
    }
    if let Some((last, _)) = rec.records.last() {
        assert!(rec.next_lsn > *last, "next_lsn must follow the last record");
    }
    for damage in &rec.damaged {
        assert!(
            damage.first_lsn <= damage.last_lsn,
            "damage range is not empty"
        );
        assert!(
            damage.last_lsn < rec.next_lsn,
            "damage lies before next_lsn"
        );
    }
    if let Some(tail) = &rec.tail_damage {
        assert_eq!(
            tail.first_lsn, rec.next_lsn,
            "tail damage starts at next_lsn"
        );
        assert!(
            tail.first_lsn <= tail.last_lsn,
            "tail damage range is not empty"
        );
        assert!(rec.torn_tail_bytes > 0, "tail damage is always a cut");
    }
}

/// Whether a record holds a value: an `Accept`, or a `Chosen` mark with a payload (an empty
/// mark's value is in the `Accept` record it names).
pub(crate) fn carries_value(record: &Record) -> bool {
    match record.kind {
        RecordKind::Accept => true,
        RecordKind::Chosen => !record.payload.is_empty(),
        _ => false,
    }
}
