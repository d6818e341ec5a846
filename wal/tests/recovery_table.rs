//! Proves that recovery classifies every row of the decision table in `recovery.rs` as the
//! table says: a table of cases, each building segment images byte by byte with the real
//! encoder, damaging them, and checking records, next LSN, torn tail, damage and junk exactly.
//! A final check makes sure every row of the table is walked by at least one case.
use paxring_wal::format::{
    encode_segment_header, record_bytes, BATCH_HEADER_BYTES, RECORD_HEADER_BYTES,
    SEGMENT_FLAG_RECYCLED,
};
use paxring_wal::{
    encode_batch, encode_batch_at, recover_images, Ballot, GroupId, Instance, Lsn, RecordKind,
    RecordRef, BLOCK_BYTES,
};
use std::collections::BTreeSet;

const CORE: u32 = 3;
const SEGMENT_BLOCKS: usize = 8;

fn record(group: u32, instance: u64) -> RecordRef<'static> {
    RecordRef {
        kind: RecordKind::Accept,
        group: GroupId(group),
        instance: Instance(instance),
        promised: Ballot { number: 2, node: 1 },
        accepted: Ballot { number: 2, node: 1 },
        payload: b"value-bytes",
    }
}

/// A segment image being built: batches are placed at block offsets.
struct Image {
    segment: u64,
    bytes: Vec<u8>,
    at: usize,
}

impl Image {
    fn new(segment: u64) -> Image {
        Image {
            segment,
            bytes: vec![0; SEGMENT_BLOCKS * BLOCK_BYTES],
            at: 0,
        }
    }

    /// Appends a batch of `count` records starting at `first_lsn`; returns its offset.
    fn batch(&mut self, first_lsn: u64, count: u64) -> usize {
        let records: Vec<RecordRef> = (0..count)
            .map(|i| record(1 + (i % 2) as u32, first_lsn + i))
            .collect();
        let mut out = Vec::new();
        let len = encode_batch_at(
            CORE,
            self.segment,
            self.at as u64,
            Lsn(first_lsn),
            &records,
            &mut out,
        );
        let offset = self.at;
        self.bytes[offset..offset + len].copy_from_slice(&out);
        self.at += len;
        offset
    }

    fn garbage_block(&mut self) -> usize {
        let offset = self.at;
        for (i, byte) in self.bytes[offset..offset + BLOCK_BYTES]
            .iter_mut()
            .enumerate()
        {
            *byte = (i as u8).wrapping_mul(31).wrapping_add(7) | 1;
        }
        self.at += BLOCK_BYTES;
        offset
    }

    /// Starts the image with a segment header; `recycled` fills the rest with an earlier life.
    fn with_segment_header(mut self, recycled: bool) -> Image {
        let flags = if recycled { SEGMENT_FLAG_RECYCLED } else { 0 };
        if recycled {
            for (i, byte) in self.bytes.iter_mut().enumerate() {
                *byte = (i as u8).wrapping_mul(13) | 0x80;
            }
        }
        encode_segment_header(CORE, self.segment, flags, &mut self.bytes[..BLOCK_BYTES]);
        self.at = BLOCK_BYTES;
        self
    }

    fn skip_block(&mut self) {
        self.at += BLOCK_BYTES;
    }
}

/// Offset of the payload of record `index` (0-based) in a batch at `batch_offset`.
fn payload_offset(batch_offset: usize, index: usize) -> usize {
    batch_offset + BATCH_HEADER_BYTES + index * record_bytes(11) + RECORD_HEADER_BYTES
}

struct Expect {
    lsns: Vec<u64>,
    next_lsn: u64,
    torn_tail_bytes: u64,
    /// (first, last, identities_complete, number of identities)
    damaged: Vec<(u64, u64, bool, usize)>,
    junk_bytes: u64,
    stale_bytes: u64,
    /// The cut last write that may have held records (`Recovery::tail_damage`).
    tail_damage: Option<Tail>,
}

/// What `Recovery::tail_damage` must say.
#[derive(Debug, PartialEq, Eq)]
struct Tail {
    first: u64,
    last: u64,
    identities_complete: bool,
    /// `(group, instance)` named, in LSN order.
    identities: Vec<(u32, u64)>,
    /// `last` is only a lower bound (`Recovery::tail_damage_open_ended`).
    open_ended: bool,
}

/// Tail damage of exactly one cut batch (row 5).
fn cut_batch(first: u64, last: u64, complete: bool, identities: &[(u32, u64)]) -> Option<Tail> {
    Some(Tail {
        first,
        last,
        identities_complete: complete,
        identities: identities.to_vec(),
        open_ended: false,
    })
}

/// Tail damage whose count of LSNs is unknown (rows 8 and 12).
fn open_ended(first: u64, last: u64, identities: &[(u32, u64)]) -> Option<Tail> {
    Some(Tail {
        first,
        last,
        identities_complete: false,
        identities: identities.to_vec(),
        open_ended: true,
    })
}

struct Case {
    name: &'static str,
    rows: &'static [u32],
    images: Vec<Image>,
    expect: Expect,
}

fn range(first: u64, last: u64) -> Vec<u64> {
    (first..=last).collect()
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();

    let mut a = Image::new(1);
    a.batch(1, 3);
    a.batch(4, 2);
    cases.push(Case {
        name: "clean log, zeroed space after it",
        rows: &[1, 2],
        images: vec![a],
        expect: Expect {
            lsns: range(1, 5),
            next_lsn: 6,
            torn_tail_bytes: 0,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    a.batch(1, 2);
    a.batch(3, 1);
    cases.push(Case {
        name: "a batch repeating earlier LSNs between valid batches is junk",
        rows: &[3, 7],
        images: vec![a],
        expect: Expect {
            lsns: range(1, 3),
            next_lsn: 4,
            torn_tail_bytes: 0,
            damaged: vec![],
            junk_bytes: BLOCK_BYTES as u64,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    let first = a.batch(1, 3);
    a.batch(4, 1);
    a.bytes[payload_offset(first, 1)] ^= 0x20;
    cases.push(Case {
        name: "flipped payload in a batch followed by valid data",
        rows: &[4],
        images: vec![a],
        expect: Expect {
            lsns: vec![1, 3, 4],
            next_lsn: 5,
            torn_tail_bytes: 0,
            damaged: vec![(2, 2, true, 1)],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    let first = a.batch(1, 3);
    a.batch(4, 1);
    // Break the group field of record 2: its identity check fails, so it is not named.
    a.bytes[payload_offset(first, 1) - RECORD_HEADER_BYTES + 12] ^= 0x04;
    cases.push(Case {
        name: "a damaged identity field is never reported as a (wrong) identity",
        rows: &[4],
        images: vec![a],
        expect: Expect {
            lsns: vec![1, 3, 4],
            next_lsn: 5,
            torn_tail_bytes: 0,
            damaged: vec![(2, 2, false, 0)],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    let first = a.batch(1, 3);
    a.batch(4, 1);
    // Break the stored LSN of record 2: the walk cannot trust lengths from there on.
    a.bytes[payload_offset(first, 1) - RECORD_HEADER_BYTES + 16] ^= 0x01;
    cases.push(Case {
        name: "damaged record header hides the identities after it",
        rows: &[4],
        images: vec![a],
        expect: Expect {
            lsns: vec![1, 4],
            next_lsn: 5,
            torn_tail_bytes: 0,
            damaged: vec![(2, 3, false, 0)],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    let last = a.batch(3, 3);
    a.bytes[payload_offset(last, 2)] ^= 0x01;
    cases.push(Case {
        name: "last batch with a bad record is cut whole and reported as tail damage",
        rows: &[5],
        images: vec![a],
        expect: Expect {
            lsns: range(1, 2),
            next_lsn: 3,
            torn_tail_bytes: BLOCK_BYTES as u64,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: 0,
            // Every record of the cut batch is named, the two that verify too.
            tail_damage: cut_batch(3, 5, true, &[(1, 3), (2, 4), (1, 5)]),
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    let last = a.batch(3, 40);
    let mut cut = a.bytes[..last + BLOCK_BYTES].to_vec();
    cut.truncate(last + 100);
    a.bytes = cut;
    cases.push(Case {
        name: "segment cut inside the last batch",
        rows: &[5],
        images: vec![a],
        expect: Expect {
            lsns: range(1, 2),
            next_lsn: 3,
            torn_tail_bytes: 100,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: 0,
            // The header is legible (LSNs exact) but no record header is: nobody is named.
            tail_damage: cut_batch(3, 42, false, &[]),
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    let middle = a.batch(3, 2);
    a.batch(5, 1);
    a.bytes[middle + 30] ^= 0x80;
    cases.push(Case {
        name: "corrupt batch header followed by valid data",
        rows: &[6],
        images: vec![a],
        expect: Expect {
            lsns: vec![1, 2, 5],
            next_lsn: 6,
            torn_tail_bytes: 0,
            damaged: vec![(3, 4, false, 0)],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    let middle = a.batch(3, 2);
    a.batch(5, 1);
    a.bytes[middle..middle + BLOCK_BYTES].fill(0);
    cases.push(Case {
        name: "zeroed batch followed by valid data",
        rows: &[6],
        images: vec![a],
        expect: Expect {
            lsns: vec![1, 2, 5],
            next_lsn: 6,
            torn_tail_bytes: 0,
            damaged: vec![(3, 4, false, 0)],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    let mut c = Image::new(3);
    c.batch(6, 1);
    cases.push(Case {
        name: "a missing segment between two present ones",
        rows: &[6],
        images: vec![a, c],
        expect: Expect {
            lsns: vec![1, 2, 6],
            next_lsn: 7,
            torn_tail_bytes: 0,
            damaged: vec![(3, 5, false, 0)],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    a.garbage_block();
    a.batch(3, 1);
    cases.push(Case {
        name: "garbage between batches that hides no LSN",
        rows: &[7],
        images: vec![a],
        expect: Expect {
            lsns: range(1, 3),
            next_lsn: 4,
            torn_tail_bytes: 0,
            damaged: vec![],
            junk_bytes: BLOCK_BYTES as u64,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    a.skip_block();
    a.garbage_block();
    let b = Image::new(2);
    cases.push(Case {
        name: "garbage after the last batch (and an empty next segment) is tail damage",
        rows: &[8, 2],
        images: vec![a, b],
        expect: Expect {
            lsns: range(1, 2),
            next_lsn: 3,
            torn_tail_bytes: BLOCK_BYTES as u64,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: open_ended(3, 3, &[]),
        },
    });

    let mut a = Image::new(7);
    a.garbage_block();
    a.batch(10, 2);
    cases.push(Case {
        name: "garbage before the first batch of the oldest segment",
        rows: &[9],
        images: vec![a],
        expect: Expect {
            lsns: range(10, 11),
            next_lsn: 12,
            torn_tail_bytes: 0,
            damaged: vec![(1, 9, false, 0)],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    // Found by the simulator (a lost write): the log's first write never reached the disk,
    // so the oldest segment starts with zeroes and its first batch is further in.
    let mut a = Image::new(7);
    a.skip_block();
    a.batch(10, 2);
    cases.push(Case {
        name: "zeroes where the first batch of the oldest segment should be (a lost write)",
        rows: &[9],
        images: vec![a],
        expect: Expect {
            lsns: range(10, 11),
            next_lsn: 12,
            torn_tail_bytes: 0,
            damaged: vec![(1, 9, false, 0)],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let a = Image::new(6).with_segment_header(false);
    let mut b = Image::new(7);
    b.batch(10, 2);
    cases.push(Case {
        name: "an empty segment older than the first batch lost its batches",
        rows: &[9],
        images: vec![a, b],
        expect: Expect {
            lsns: range(10, 11),
            next_lsn: 12,
            torn_tail_bytes: 0,
            damaged: vec![(1, 9, false, 0)],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(7);
    a.batch(10, 2);
    cases.push(Case {
        name: "log starting after purged segments is clean",
        rows: &[1],
        images: vec![a],
        expect: Expect {
            lsns: range(10, 11),
            next_lsn: 12,
            torn_tail_bytes: 0,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 1);
    let mut foreign = Vec::new();
    encode_batch(CORE + 1, 1, Lsn(2), &[record(1, 1)], &mut foreign);
    let at = a.at;
    a.bytes[at..at + foreign.len()].copy_from_slice(&foreign);
    cases.push(Case {
        name: "a batch of another core after the tail is cut, not kept",
        rows: &[8],
        images: vec![a],
        expect: Expect {
            lsns: vec![1],
            next_lsn: 2,
            torn_tail_bytes: BLOCK_BYTES as u64,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: 0,
            // Non-zero bytes in a segment that is not recycled: possibly a cut write of ours.
            tail_damage: open_ended(2, 2, &[]),
        },
    });

    let mut a = Image::new(1).with_segment_header(true);
    a.batch(1, 2);
    a.batch(3, 1);
    let mut b = Image::new(2).with_segment_header(true);
    b.batch(4, 1);
    let c = Image::new(3).with_segment_header(true);
    let stale = |image: &Image| (image.bytes.len() - image.at) as u64;
    let stale_total = stale(&a) + stale(&b) + stale(&c);
    cases.push(Case {
        name: "recycled segments: what follows their last batch is their earlier life",
        rows: &[10, 1],
        images: vec![a, b, c],
        expect: Expect {
            lsns: range(1, 4),
            next_lsn: 5,
            torn_tail_bytes: 0,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: stale_total,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1).with_segment_header(true);
    a.batch(1, 2);
    let lost = a.batch(3, 1);
    a.bytes[lost + 8] ^= 0x10;
    let mut b = Image::new(2).with_segment_header(false);
    b.batch(4, 1);
    cases.push(Case {
        name: "a recycled segment's unreadable last batch followed by valid data is damage",
        rows: &[10, 6],
        images: vec![a, b],
        expect: Expect {
            lsns: vec![1, 2, 4],
            next_lsn: 5,
            torn_tail_bytes: 0,
            damaged: vec![(3, 3, false, 0)],
            junk_bytes: 0,
            stale_bytes: (SEGMENT_BLOCKS as u64 - 2) * BLOCK_BYTES as u64,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    let last = a.batch(3, 3);
    // Break the group field of record 4: its identity check fails, so it cannot be named.
    a.bytes[payload_offset(last, 1) - RECORD_HEADER_BYTES + 12] ^= 0x04;
    cases.push(Case {
        name: "a cut last batch with an unreadable identity names the others, incompletely",
        rows: &[5],
        images: vec![a],
        expect: Expect {
            lsns: range(1, 2),
            next_lsn: 3,
            torn_tail_bytes: BLOCK_BYTES as u64,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: cut_batch(3, 5, false, &[(1, 3), (1, 5)]),
        },
    });

    let mut a = Image::new(1).with_segment_header(true);
    a.batch(1, 2);
    let last = a.batch(3, 2);
    a.bytes[payload_offset(last, 1)] ^= 0x08;
    let stale = (a.bytes.len() - a.at) as u64;
    cases.push(Case {
        name: "a cut last batch of a recycled segment: its stale bytes hide no identity",
        rows: &[5, 10],
        images: vec![a],
        expect: Expect {
            lsns: range(1, 2),
            next_lsn: 3,
            torn_tail_bytes: BLOCK_BYTES as u64,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: stale,
            tail_damage: cut_batch(3, 4, true, &[(1, 3), (2, 4)]),
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    let last = a.batch(3, 2);
    // The records end 208 bytes into the batch; the image ends in its padding.
    a.bytes.truncate(last + 1024);
    cases.push(Case {
        name: "a segment cut in the padding of the last batch lost nothing",
        rows: &[11],
        images: vec![a],
        expect: Expect {
            lsns: range(1, 4),
            next_lsn: 5,
            torn_tail_bytes: 0,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1).with_segment_header(true);
    a.batch(1, 2);
    let last = a.batch(3, 2);
    // The padding sectors after the records did not land: an earlier life shows through.
    for (i, byte) in a.bytes[last + 512..last + BLOCK_BYTES]
        .iter_mut()
        .enumerate()
    {
        *byte = (i as u8).wrapping_mul(7) | 0x40;
    }
    let stale = (a.bytes.len() - a.at) as u64;
    cases.push(Case {
        name: "a tear that lost only the padding of the last batch is not damage",
        rows: &[11, 10],
        images: vec![a],
        expect: Expect {
            lsns: range(1, 4),
            next_lsn: 5,
            torn_tail_bytes: 0,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: stale,
            tail_damage: None,
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    let last = a.batch(3, 3);
    a.garbage_block();
    a.bytes[payload_offset(last, 2)] ^= 0x01;
    cases.push(Case {
        name: "a cut last batch followed by garbage: one open-ended tail damage",
        rows: &[12, 5, 8],
        images: vec![a],
        expect: Expect {
            lsns: range(1, 2),
            next_lsn: 3,
            torn_tail_bytes: 2 * BLOCK_BYTES as u64,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: open_ended(3, 5, &[(1, 3), (2, 4), (1, 5)]),
        },
    });

    let mut a = Image::new(1);
    a.batch(1, 2);
    a.batch(3, 1);
    let mut b = Image::new(2);
    b.garbage_block();
    cases.push(Case {
        name: "garbage in the segment after the last batch's is tail damage",
        rows: &[8],
        images: vec![a, b],
        expect: Expect {
            lsns: range(1, 3),
            next_lsn: 4,
            torn_tail_bytes: BLOCK_BYTES as u64,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: open_ended(4, 4, &[]),
        },
    });

    let mut a = Image::new(1);
    a.garbage_block();
    cases.push(Case {
        name: "a log without a single verified batch: tail damage from LSN 1",
        rows: &[8],
        images: vec![a],
        expect: Expect {
            lsns: vec![],
            next_lsn: 1,
            torn_tail_bytes: BLOCK_BYTES as u64,
            damaged: vec![],
            junk_bytes: 0,
            stale_bytes: 0,
            tail_damage: open_ended(1, 1, &[]),
        },
    });

    cases
}

#[test]
fn every_row_of_the_decision_table() {
    let mut rows_walked = BTreeSet::new();
    for case in cases() {
        rows_walked.extend(case.rows.iter().copied());
        let images: Vec<(u64, &[u8])> = case
            .images
            .iter()
            .map(|image| (image.segment, image.bytes.as_slice()))
            .collect();
        let got = recover_images(CORE, &images);
        let lsns: Vec<u64> = got.records.iter().map(|(lsn, _)| lsn.0).collect();
        assert_eq!(lsns, case.expect.lsns, "{}: records", case.name);
        for (lsn, record) in &got.records {
            assert_eq!(record.instance.0, lsn.0, "{}: record identity", case.name);
            assert_eq!(record.payload.as_ref(), b"value-bytes", "{}", case.name);
        }
        assert_eq!(
            got.next_lsn,
            Lsn(case.expect.next_lsn),
            "{}: next_lsn",
            case.name
        );
        assert_eq!(
            got.torn_tail_bytes, case.expect.torn_tail_bytes,
            "{}: torn tail",
            case.name
        );
        let damaged: Vec<(u64, u64, bool, usize)> = got
            .damaged
            .iter()
            .map(|d| {
                (
                    d.first_lsn.0,
                    d.last_lsn.0,
                    d.identities_complete,
                    d.groups_instances.len(),
                )
            })
            .collect();
        assert_eq!(damaged, case.expect.damaged, "{}: damage", case.name);
        assert_eq!(
            got.junk_bytes, case.expect.junk_bytes,
            "{}: junk",
            case.name
        );
        assert_eq!(
            got.stale_bytes, case.expect.stale_bytes,
            "{}: stale",
            case.name
        );
        let tail = got.tail_damage.as_ref().map(|d| Tail {
            first: d.first_lsn.0,
            last: d.last_lsn.0,
            identities_complete: d.identities_complete,
            identities: d.groups_instances.iter().map(|(g, i)| (g.0, i.0)).collect(),
            open_ended: got.tail_damage_open_ended(),
        });
        assert_eq!(tail, case.expect.tail_damage, "{}: tail damage", case.name);
        if let Some(damage) = &got.tail_damage {
            // The cut is unchanged: tail damage starts where the log resumes.
            assert_eq!(damage.first_lsn, got.next_lsn, "{}: tail start", case.name);
            assert!(
                got.torn_tail_bytes > 0,
                "{}: tail damage is a cut",
                case.name
            );
        }
        let clean = case.expect.torn_tail_bytes == 0
            && case.expect.damaged.is_empty()
            && case.expect.tail_damage.is_none()
            && case.expect.junk_bytes == 0;
        assert_eq!(got.is_clean(), clean, "{}: is_clean", case.name);
        // The index points at the newest record of each (group, instance) kept.
        let indexed: usize = got.index.values().map(|m| m.len()).sum();
        assert_eq!(indexed, got.records.len(), "{}: index size", case.name);
    }
    let all: BTreeSet<u32> = (1..=12).collect();
    assert_eq!(rows_walked, all, "every decision-table row has a case");
}

#[test]
fn damage_hint_names_the_lost_record() {
    let mut a = Image::new(1);
    let first = a.batch(1, 3);
    a.batch(4, 1);
    a.bytes[payload_offset(first, 1)] ^= 0x20;
    let got = recover_images(CORE, &[(1, a.bytes.as_slice())]);
    assert_eq!(got.damaged.len(), 1);
    assert_eq!(
        got.damaged[0].groups_instances,
        vec![(GroupId(2), Instance(2))]
    );
    assert_eq!(got.damaged[0].segment, 1);
}

#[test]
fn resume_point_is_after_the_last_kept_batch_or_at_the_cut() {
    let mut a = Image::new(1);
    a.batch(1, 1);
    let last = a.batch(2, 1);
    let clean = recover_images(CORE, &[(1, a.bytes.as_slice())]);
    assert_eq!(clean.resume, Some((1, (last + BLOCK_BYTES) as u64)));
    a.bytes[payload_offset(last, 0)] ^= 1;
    let torn = recover_images(CORE, &[(1, a.bytes.as_slice())]);
    assert_eq!(torn.resume, Some((1, last as u64)));
    assert_eq!(torn.tail_regions.len(), 1);
    assert_eq!(torn.torn_lsns, Some((Lsn(2), Lsn(2))));
    // Reporting the cut as tail damage does not move it.
    let tail = torn
        .tail_damage
        .as_ref()
        .expect("the cut batch is tail damage");
    assert_eq!((tail.first_lsn, tail.last_lsn), (Lsn(2), Lsn(2)));
    assert_eq!((tail.segment, tail.offset), (1, last as u64));

    let mut b = Image::new(1);
    b.batch(1, 1);
    let end = b.at;
    b.skip_block();
    let garbage = b.garbage_block();
    let cut = recover_images(CORE, &[(1, b.bytes.as_slice())]);
    assert_eq!(
        cut.resume,
        Some((1, end as u64)),
        "resume after the last batch"
    );
    assert_eq!(cut.next_lsn, Lsn(2));
    let tail = cut.tail_damage.as_ref().expect("garbage after the tail");
    assert_eq!((tail.segment, tail.offset), (1, garbage as u64));
    assert!(!cut.is_clean());
}
