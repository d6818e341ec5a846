//! The on-disk byte layout of batches and records, and the scan of one segment image.
//!
//! Owns: encoding (`encode_batch`, and the in-place pieces the writer uses) and decoding
//! (`decode_batch_header`, `scan_segment`). PURE: no I/O, no clock, no global state, so the
//! simulator can store these exact bytes on a simulated disk. Must never panic on bytes read from
//! disk, and never allocate more than the image it was given justifies.
//!
//! Layout (all integers little-endian; see `docs/WAL_FORMAT.md` for a worked example):
//!
//! ```text
//! batch  = header(64) records(records_bytes) zero padding up to batch_bytes (a 4 KiB multiple)
//! header = magic "PXWB" | version u16 | header_bytes u16 | core u32 | record_count u32
//!          | segment u64 | first_lsn u64 | records_bytes u32 | batch_bytes u32
//!          | offset u64 (version 2: the batch's byte offset in its segment)
//!          | reserved [u8; 12] (zero) | header_crc u32 (crc32 of bytes 0..60)
//! record = record_crc u32 | kind u8 | reserved u8 | identity_check u16 | payload_bytes u32
//!          | group u32 | lsn u64
//!          | instance u64 | promised.number u64 | promised.node u32 | accepted.node u32
//!          | accepted.number u64 | payload | zero padding to a multiple of 8
//! record_crc = crc32(core u32 ‖ segment u64 ‖ record bytes 4..56+payload_bytes)
//! identity_check = low 16 bits of crc32(core u32 ‖ segment u64 ‖ kind ‖ record bytes 8..32)
//! ```
//! The identity check lets recovery name a record whose payload is damaged (its kind, group,
//! LSN and instance still verify, up to a 1 in 65536 chance) without trusting a damaged header.
//! The record checksum covers the core and segment (not stored in the record) and the LSN,
//! group and instance (stored), so a record read from the wrong core, the wrong segment or the
//! wrong position fails its checksum.
use crate::types::{Ballot, GroupId, Instance, Lsn, Record, RecordKind, RecordRef};
use bytes::Bytes;

/// Every batch starts on a multiple of this and its length is a multiple of it.
pub const BLOCK_BYTES: usize = 4096;
/// Size of a batch header.
pub const BATCH_HEADER_BYTES: usize = 64;
/// Size of a record header (the payload follows).
pub const RECORD_HEADER_BYTES: usize = 56;
/// The batch magic, "PXWB" in file order.
pub const BATCH_MAGIC: [u8; 4] = *b"PXWB";
/// The segment header magic, "PXWS" in file order.
pub const SEGMENT_MAGIC: [u8; 4] = *b"PXWS";
/// Bytes reserved at the start of a segment written by the log for its segment header (one
/// block); batches start after it.
pub const SEGMENT_HEADER_BYTES: usize = BLOCK_BYTES;
/// Segment header flag: the file was recycled, so non-zero bytes after the segment's last batch
/// are stale content of its earlier life, not a torn write.
pub const SEGMENT_FLAG_RECYCLED: u16 = 1;
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// The batch header version written: 2 adds the batch's own offset (bytes 40..48), so a write
/// that lands at another place (a misdirected write) is refused by recovery. Version 1
/// batches (offset not recorded) are still read.
pub const BATCH_VERSION: u16 = 2;
/// The largest batch the format can describe (`batch_bytes` is a u32 multiple of 4 KiB).
pub const BATCH_BYTES_MAX: usize = (u32::MAX as usize / BLOCK_BYTES) * BLOCK_BYTES;

const _: () = assert!(BATCH_HEADER_BYTES <= BLOCK_BYTES);
const _: () = assert!(RECORD_HEADER_BYTES % 8 == 0);
const _: () = assert!(BATCH_HEADER_BYTES % 8 == 0);

/// The decoded header of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// The core whose log this is.
    pub core: u32,
    /// The segment the batch was written to.
    pub segment: u64,
    /// The LSN of the first record; the others follow consecutively.
    pub first_lsn: Lsn,
    /// Number of records (at least 1).
    pub record_count: u32,
    /// Bytes of the record area (after the header, before the padding).
    pub records_bytes: u32,
    /// Total bytes of the batch on disk: header + records + padding, a multiple of 4 KiB.
    pub batch_bytes: u32,
    /// The byte offset in its segment the batch was written for (None in version 1 batches).
    pub offset: Option<u64>,
}

impl BatchHeader {
    /// The LSN of the last record of the batch.
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.first_lsn.0 + u64::from(self.record_count) - 1)
    }
}

/// Bytes a record occupies in a batch (header + payload, padded to 8).
pub fn record_bytes(payload_bytes: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_bytes).next_multiple_of(8)
}

/// Bytes a batch whose record area is `records_bytes` long occupies on disk.
pub fn batch_bytes_for(records_bytes: usize) -> usize {
    (BATCH_HEADER_BYTES + records_bytes).next_multiple_of(BLOCK_BYTES)
}

fn put_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_le_bytes());
}
fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}
fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}
fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}
fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}
fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Low 16 bits of crc32(core ‖ segment ‖ kind ‖ record bytes 8..32): the identity check.
fn identity_check(core: u32, segment: u64, head: &[u8]) -> u16 {
    // One call over the concatenated input (the same CRC as updating piece by piece): small
    // `update` calls cost more than the bytes they hash, and this runs for every record.
    let mut input = [0u8; 37];
    input[..4].copy_from_slice(&core.to_le_bytes());
    input[4..12].copy_from_slice(&segment.to_le_bytes());
    input[12] = head[4];
    input[13..].copy_from_slice(&head[8..32]);
    crc32fast::hash(&input) as u16
}

fn record_crc(core: u32, segment: u64, body: &[u8]) -> u32 {
    let mut prefix = [0u8; 12];
    prefix[..4].copy_from_slice(&core.to_le_bytes());
    prefix[4..].copy_from_slice(&segment.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new_with_initial(crc32fast::hash(&prefix));
    hasher.update(body);
    hasher.finalize()
}

/// Encodes one record at the start of `out` (which must hold `record_bytes(payload.len())`
/// bytes); returns the bytes used. The writer calls this straight into its aligned buffer.
pub fn encode_record_into(
    core: u32,
    segment: u64,
    lsn: Lsn,
    record: &RecordRef<'_>,
    out: &mut [u8],
) -> usize {
    let used = record_bytes(record.payload.len());
    assert!(out.len() >= used, "record buffer too small");
    assert!(lsn.0 >= 1, "records start at Lsn 1");
    let payload_bytes = u32::try_from(record.payload.len()).expect("payload over 4 GiB");
    let out = &mut out[..used];
    out[4] = record.kind.to_u8();
    out[5] = 0;
    put_u32(out, 8, payload_bytes);
    put_u32(out, 12, record.group.0);
    put_u64(out, 16, lsn.0);
    put_u64(out, 24, record.instance.0);
    let check = identity_check(core, segment, out);
    put_u16(out, 6, check);
    put_u64(out, 32, record.promised.number);
    put_u32(out, 40, record.promised.node);
    put_u32(out, 44, record.accepted.node);
    put_u64(out, 48, record.accepted.number);
    let end = RECORD_HEADER_BYTES + record.payload.len();
    out[RECORD_HEADER_BYTES..end].copy_from_slice(record.payload);
    out[end..].fill(0);
    let crc = record_crc(core, segment, &out[4..end]);
    put_u32(out, 0, crc);
    used
}

/// Writes the batch header into `batch[..64]` and zeroes the padding after the record area;
/// `batch` must be exactly `batch_bytes_for(records_bytes)` long. Returns the batch length.
pub fn finish_batch_into(
    core: u32,
    segment: u64,
    offset: u64,
    first_lsn: Lsn,
    record_count: u32,
    records_bytes: usize,
    batch: &mut [u8],
) -> usize {
    let batch_bytes = batch_bytes_for(records_bytes);
    assert!(record_count >= 1, "a batch holds at least one record");
    assert!(first_lsn.0 >= 1, "records start at Lsn 1");
    assert!(
        batch.len() == batch_bytes,
        "batch slice is not the padded length"
    );
    assert!(
        batch_bytes <= BATCH_BYTES_MAX,
        "batch too large for the format"
    );
    batch[BATCH_HEADER_BYTES + records_bytes..].fill(0);
    let header = &mut batch[..BATCH_HEADER_BYTES];
    header[0..4].copy_from_slice(&BATCH_MAGIC);
    put_u16(header, 4, BATCH_VERSION);
    put_u16(header, 6, BATCH_HEADER_BYTES as u16);
    put_u32(header, 8, core);
    put_u32(header, 12, record_count);
    put_u64(header, 16, segment);
    put_u64(header, 24, first_lsn.0);
    put_u32(header, 32, records_bytes as u32);
    put_u32(header, 36, batch_bytes as u32);
    put_u64(header, 40, offset);
    header[48..60].fill(0);
    let crc = crc32fast::hash(&header[..60]);
    put_u32(header, 60, crc);
    // Pair encode with decode: what we wrote must read back as the same header.
    debug_assert_eq!(
        decode_batch_header(batch).map(|h| h.first_lsn),
        Ok(first_lsn)
    );
    batch_bytes
}

/// Encodes one batch (header + records, padded to a 4 KiB multiple) and appends it to `out`,
/// which is the segment image so far (the batch's offset is `out.len()`). Returns the bytes
/// appended. `records` must not be empty.
pub fn encode_batch(
    core: u32,
    segment: u64,
    first_lsn: Lsn,
    records: &[RecordRef<'_>],
    out: &mut Vec<u8>,
) -> usize {
    let offset = out.len() as u64;
    encode_batch_at(core, segment, offset, first_lsn, records, out)
}

/// Encodes one batch meant for byte `offset` of its segment and appends it to `out` (which
/// need not be the segment image). Returns the bytes appended.
pub fn encode_batch_at(
    core: u32,
    segment: u64,
    offset: u64,
    first_lsn: Lsn,
    records: &[RecordRef<'_>],
    out: &mut Vec<u8>,
) -> usize {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let records_bytes: usize = records.iter().map(|r| record_bytes(r.payload.len())).sum();
    let batch_bytes = batch_bytes_for(records_bytes);
    let start = out.len();
    out.resize(start + batch_bytes, 0);
    let batch = &mut out[start..];
    let mut at = BATCH_HEADER_BYTES;
    for (index, record) in records.iter().enumerate() {
        let lsn = Lsn(first_lsn.0 + index as u64);
        at += encode_record_into(core, segment, lsn, record, &mut batch[at..]);
    }
    assert_eq!(at, BATCH_HEADER_BYTES + records_bytes);
    let count = u32::try_from(records.len()).expect("over 2^32 records in a batch");
    finish_batch_into(
        core,
        segment,
        offset,
        first_lsn,
        count,
        records_bytes,
        batch,
    )
}

/// Writes the segment header into `block` (one 4 KiB block, zeroed here first).
///
/// ```text
/// magic "PXWS" | version u16 | flags u16 | core u32 | reserved u32 | segment u64
/// | reserved [u8; 36] (zero) | header_crc u32 (crc32 of bytes 0..60) | zeroes to 4096
/// ```
pub fn encode_segment_header(core: u32, segment: u64, flags: u16, block: &mut [u8]) {
    assert!(
        block.len() == SEGMENT_HEADER_BYTES,
        "a segment header is one block"
    );
    block.fill(0);
    block[0..4].copy_from_slice(&SEGMENT_MAGIC);
    put_u16(block, 4, FORMAT_VERSION);
    put_u16(block, 6, flags);
    put_u32(block, 8, core);
    put_u64(block, 16, segment);
    let crc = crc32fast::hash(&block[..60]);
    put_u32(block, 60, crc);
}

/// Decodes a segment header for `core` and `segment` at the start of `image`; returns its
/// flags, or `None` when the first block is not such a header.
pub fn decode_segment_header(core: u32, segment: u64, image: &[u8]) -> Option<u16> {
    if image.len() < 64 || image[0..4] != SEGMENT_MAGIC {
        return None;
    }
    let valid = crc32fast::hash(&image[..60]) == get_u32(image, 60)
        && get_u16(image, 4) == FORMAT_VERSION
        && get_u32(image, 8) == core
        && get_u64(image, 16) == segment
        && get_u32(image, 12) == 0
        && image[24..60].iter().all(|&b| b == 0);
    valid.then(|| get_u16(image, 6))
}

/// Why bytes at a batch position are not a valid batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Fewer than 64 bytes left in the image.
    Short,
    /// The 64 header bytes are all zero (preallocated or never written).
    Zeroed,
    /// The magic is not "PXWB".
    BadMagic,
    /// The header checksum does not match.
    BadChecksum,
    /// Checksum fine but an unknown version or impossible field values.
    BadFields,
}

impl HeaderProblem {
    /// A short human description.
    pub fn describe(self) -> &'static str {
        match self {
            HeaderProblem::Short => "fewer than 64 bytes left",
            HeaderProblem::Zeroed => "zeroed space",
            HeaderProblem::BadMagic => "no batch magic",
            HeaderProblem::BadChecksum => "batch header checksum mismatch",
            HeaderProblem::BadFields => "batch header with impossible fields",
        }
    }
}

/// Decodes and verifies the batch header at the start of `bytes`.
pub fn decode_batch_header(bytes: &[u8]) -> Result<BatchHeader, HeaderProblem> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(HeaderProblem::Short);
    }
    let header = &bytes[..BATCH_HEADER_BYTES];
    if header.iter().all(|&b| b == 0) {
        return Err(HeaderProblem::Zeroed);
    }
    if header[0..4] != BATCH_MAGIC {
        return Err(HeaderProblem::BadMagic);
    }
    if crc32fast::hash(&header[..60]) != get_u32(header, 60) {
        return Err(HeaderProblem::BadChecksum);
    }
    let parsed = BatchHeader {
        core: get_u32(header, 8),
        record_count: get_u32(header, 12),
        segment: get_u64(header, 16),
        first_lsn: Lsn(get_u64(header, 24)),
        records_bytes: get_u32(header, 32),
        batch_bytes: get_u32(header, 36),
        offset: (get_u16(header, 4) == BATCH_VERSION).then(|| get_u64(header, 40)),
    };
    let version_ok = match get_u16(header, 4) {
        FORMAT_VERSION => header[40..60].iter().all(|&b| b == 0),
        BATCH_VERSION => header[48..60].iter().all(|&b| b == 0),
        _ => false,
    };
    let fields_ok = version_ok
        && usize::from(get_u16(header, 6)) == BATCH_HEADER_BYTES
        && parsed.record_count >= 1
        && parsed.first_lsn.0 >= 1
        && parsed
            .first_lsn
            .0
            .checked_add(u64::from(parsed.record_count))
            .is_some()
        && (parsed.records_bytes as usize)
            >= (parsed.record_count as usize).saturating_mul(RECORD_HEADER_BYTES)
        && parsed.batch_bytes as usize == batch_bytes_for(parsed.records_bytes as usize);
    if !fields_ok {
        return Err(HeaderProblem::BadFields);
    }
    Ok(parsed)
}

/// One record slot of a scanned batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScannedRecord {
    /// The record's checksum verified.
    Valid {
        /// Its LSN.
        lsn: Lsn,
        /// Byte offset of the record in the segment.
        offset: u64,
        /// Bytes it occupies (header + payload + padding).
        len: u32,
        /// The record.
        record: Record,
    },
    /// The record at this LSN could not be verified.
    Bad {
        /// The LSN the record should have (from the batch header).
        lsn: Lsn,
        /// Byte offset where the record was expected, if the walk got that far.
        offset: Option<u64>,
        /// `(group, instance)` of the lost record when its identity fields still verify (its
        /// identity check matches and its stored LSN is the expected one).
        hint: Option<(GroupId, Instance)>,
        /// Why it failed.
        reason: &'static str,
    },
}

impl ScannedRecord {
    /// The LSN of the slot.
    pub fn lsn(&self) -> Lsn {
        match self {
            ScannedRecord::Valid { lsn, .. } | ScannedRecord::Bad { lsn, .. } => *lsn,
        }
    }
}

/// A batch whose header verified, with each of its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedBatch {
    /// Byte offset of the batch in the segment.
    pub offset: u64,
    /// The verified header.
    pub header: BatchHeader,
    /// One entry per record slot, in LSN order (`header.record_count` entries).
    pub records: Vec<ScannedRecord>,
}

impl ScannedBatch {
    /// True when every record verified.
    pub fn intact(&self) -> bool {
        self.records
            .iter()
            .all(|r| matches!(r, ScannedRecord::Valid { .. }))
    }
}

/// A run of non-zero bytes that belongs to no verified batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRegion {
    /// Byte offset of its first block.
    pub offset: u64,
    /// Length in bytes (whole blocks, clipped to the image).
    pub len: u64,
    /// What the first block looked like.
    pub reason: &'static str,
}

/// The result of scanning one segment image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// The segment number scanned.
    pub segment: u64,
    /// Length of the image.
    pub image_bytes: u64,
    /// Batches whose header verified (core and segment match), in file order.
    pub batches: Vec<ScannedBatch>,
    /// Non-zero blocks outside every verified batch, in file order.
    pub bad_regions: Vec<BadRegion>,
    /// Headers that verified but name another core or segment (stale or misdirected), by offset.
    pub foreign_headers: Vec<(u64, BatchHeader)>,
    /// Offset where batches start: `SEGMENT_HEADER_BYTES` when the segment opens with a segment
    /// header for this core and segment, else 0 (images written without one).
    pub data_start: u64,
    /// The segment header says the file was recycled (see `SEGMENT_FLAG_RECYCLED`).
    pub recycled: bool,
}

impl SegmentScan {
    /// Offset just after the last verified batch (or `data_start` when there is none).
    pub fn batches_end(&self) -> u64 {
        self.batches.last().map_or(self.data_start, |b| {
            b.offset + u64::from(b.header.batch_bytes)
        })
    }
}

/// Scans one segment image (bytes as they are on disk, possibly damaged or cut short).
///
/// A segment header for this core and segment in the first block is skipped (and its flags
/// noted). Then walks 4 KiB blocks: a verified header for this core and segment starts a batch
/// (skipped by its length); an all-zero block is free space; anything else joins a bad region.
/// Never panics and allocates at most in proportion to the image.
pub fn scan_segment(core: u32, segment: u64, image: &[u8]) -> SegmentScan {
    let mut scan = SegmentScan {
        segment,
        image_bytes: image.len() as u64,
        ..SegmentScan::default()
    };
    if let Some(flags) = decode_segment_header(core, segment, image) {
        scan.data_start = SEGMENT_HEADER_BYTES as u64;
        scan.recycled = flags & SEGMENT_FLAG_RECYCLED != 0;
    }
    let mut at = scan.data_start as usize;
    while at < image.len() {
        let block_end = (at + BLOCK_BYTES).min(image.len());
        match decode_batch_header(&image[at..]) {
            Ok(header)
                if header.core == core
                    && header.segment == segment
                    && header.offset.is_some_and(|o| o != at as u64) =>
            {
                push_bad(
                    &mut scan,
                    at,
                    block_end,
                    "batch header written for another offset (a misdirected write)",
                );
            }
            Ok(header) if header.core == core && header.segment == segment => {
                let records = scan_records(core, segment, at, &header, image);
                let batch_end = at.saturating_add(header.batch_bytes as usize);
                scan.batches.push(ScannedBatch {
                    offset: at as u64,
                    header,
                    records,
                });
                at = batch_end;
                continue;
            }
            Ok(header) => {
                scan.foreign_headers.push((at as u64, header));
                push_bad(
                    &mut scan,
                    at,
                    block_end,
                    "batch header of another core or segment",
                );
            }
            Err(problem) => {
                if image[at..block_end].iter().any(|&b| b != 0) {
                    push_bad(&mut scan, at, block_end, problem.describe());
                }
            }
        }
        at = block_end;
    }
    scan
}

fn push_bad(scan: &mut SegmentScan, start: usize, end: usize, reason: &'static str) {
    if let Some(last) = scan.bad_regions.last_mut() {
        if last.offset + last.len == start as u64 {
            last.len += (end - start) as u64;
            return;
        }
    }
    scan.bad_regions.push(BadRegion {
        offset: start as u64,
        len: (end - start) as u64,
        reason,
    });
}

/// Walks the records of a batch whose header verified. Stops trusting lengths at the first
/// record whose stored LSN is wrong or whose length overruns the record area; every later slot
/// is then reported `Bad` without a hint.
fn scan_records(
    core: u32,
    segment: u64,
    batch_offset: usize,
    header: &BatchHeader,
    image: &[u8],
) -> Vec<ScannedRecord> {
    let area_start = batch_offset + BATCH_HEADER_BYTES;
    let area_end_claimed = area_start + header.records_bytes as usize;
    let area_end = area_end_claimed.min(image.len());
    let area: &[u8] = if area_start <= area_end {
        &image[area_start..area_end]
    } else {
        &[]
    };
    let count = header.record_count as usize;
    // The header verified, so count * 56 <= records_bytes <= image bounds of a u32: bounded.
    let mut records = Vec::with_capacity(count.min(area.len() / RECORD_HEADER_BYTES + 1));
    let mut at = 0usize;
    let mut walk_lost: Option<&'static str> = None;
    for index in 0..count {
        let lsn = Lsn(header.first_lsn.0 + index as u64);
        if let Some(reason) = walk_lost {
            records.push(ScannedRecord::Bad {
                lsn,
                offset: None,
                hint: None,
                reason,
            });
            continue;
        }
        let offset = Some((area_start + at) as u64);
        if at + RECORD_HEADER_BYTES > area.len() {
            let reason = if area_end < area_end_claimed {
                "record area cut short"
            } else {
                "record header overruns the record area"
            };
            walk_lost = Some(reason);
            records.push(ScannedRecord::Bad {
                lsn,
                offset,
                hint: None,
                reason,
            });
            continue;
        }
        let head = &area[at..at + RECORD_HEADER_BYTES];
        let stored_lsn = get_u64(head, 16);
        let payload_bytes = get_u32(head, 8) as usize;
        let identity = (GroupId(get_u32(head, 12)), Instance(get_u64(head, 24)));
        // A hint only when the identity fields verify on their own.
        let identity_ok = get_u16(head, 6) == identity_check(core, segment, head);
        let hint = (stored_lsn == lsn.0 && identity_ok).then_some(identity);
        let len = record_bytes(payload_bytes);
        if stored_lsn != lsn.0 {
            walk_lost = Some("record walk lost after a record with a wrong LSN");
            records.push(ScannedRecord::Bad {
                lsn,
                offset,
                hint: None,
                reason: "record header damaged (stored LSN does not match)",
            });
            continue;
        }
        if at + len > area.len() {
            let reason = if area_end < area_end_claimed && at + len <= header.records_bytes as usize
            {
                "record cut short"
            } else {
                "record length overruns the record area"
            };
            walk_lost = Some("record walk lost after a record of impossible length");
            records.push(ScannedRecord::Bad {
                lsn,
                offset,
                hint,
                reason,
            });
            continue;
        }
        let body = &area[at + 4..at + RECORD_HEADER_BYTES + payload_bytes];
        let kind = RecordKind::from_u8(head[4]);
        let crc_ok = record_crc(core, segment, body) == get_u32(head, 0);
        match kind {
            Some(kind) if crc_ok && head[5] == 0 => {
                let payload_start = at + RECORD_HEADER_BYTES;
                records.push(ScannedRecord::Valid {
                    lsn,
                    offset: (area_start + at) as u64,
                    len: len as u32,
                    record: Record {
                        kind,
                        group: identity.0,
                        instance: identity.1,
                        promised: Ballot {
                            number: get_u64(head, 32),
                            node: get_u32(head, 40),
                        },
                        accepted: Ballot {
                            number: get_u64(head, 48),
                            node: get_u32(head, 44),
                        },
                        payload: Bytes::copy_from_slice(
                            &area[payload_start..payload_start + payload_bytes],
                        ),
                    },
                });
            }
            _ => records.push(ScannedRecord::Bad {
                lsn,
                offset,
                hint,
                reason: if crc_ok {
                    "record with an unknown kind"
                } else {
                    "record checksum mismatch"
                },
            }),
        }
        at += len;
    }
    records
}

/// Decodes the single record stored at `bytes` (as located by the index) and verifies it.
/// Returns `None` when the bytes do not hold a valid record with that LSN.
pub fn decode_record_at(core: u32, segment: u64, lsn: Lsn, bytes: &[u8]) -> Option<Record> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return None;
    }
    let payload_bytes = get_u32(bytes, 8) as usize;
    let header = BatchHeader {
        core,
        segment,
        first_lsn: lsn,
        record_count: 1,
        records_bytes: record_bytes(payload_bytes).min(bytes.len()) as u32,
        batch_bytes: 0,
        offset: None,
    };
    // Reuse the record walk on a one-record area placed right after a virtual header.
    let mut image = vec![0u8; BATCH_HEADER_BYTES];
    image.extend_from_slice(&bytes[..(header.records_bytes as usize)]);
    match scan_records(core, segment, 0, &header, &image).pop() {
        Some(ScannedRecord::Valid { record, .. }) => Some(record),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(group: u32, instance: u64, payload: &[u8]) -> RecordRef<'_> {
        RecordRef {
            kind: RecordKind::Accept,
            group: GroupId(group),
            instance: Instance(instance),
            promised: Ballot { number: 7, node: 2 },
            accepted: Ballot { number: 7, node: 2 },
            payload,
        }
    }

    #[test]
    fn batch_round_trips_and_is_block_aligned() {
        let mut out = Vec::new();
        let records = [
            rec(1, 10, b"hello"),
            rec(2, 11, b""),
            rec(1, 12, &[9u8; 5000]),
        ];
        let used = encode_batch(3, 5, Lsn(40), &records, &mut out);
        assert_eq!(used, out.len());
        assert_eq!(used % BLOCK_BYTES, 0);
        assert_eq!(used, 2 * BLOCK_BYTES);
        let scan = scan_segment(3, 5, &out);
        assert!(scan.bad_regions.is_empty());
        assert_eq!(scan.batches.len(), 1);
        let batch = &scan.batches[0];
        assert!(batch.intact());
        assert_eq!(batch.header.first_lsn, Lsn(40));
        assert_eq!(batch.header.last_lsn(), Lsn(42));
        for (index, slot) in batch.records.iter().enumerate() {
            match slot {
                ScannedRecord::Valid { lsn, record, .. } => {
                    assert_eq!(*lsn, Lsn(40 + index as u64));
                    assert_eq!(record.as_ref(), records[index]);
                }
                other => panic!("bad record {other:?}"),
            }
        }
    }

    #[test]
    fn header_fields_are_where_the_doc_says() {
        let mut out = Vec::new();
        encode_batch_at(0x0102_0304, 9, 8192, Lsn(1), &[rec(5, 6, b"ab")], &mut out);
        assert_eq!(&out[0..4], b"PXWB");
        assert_eq!(get_u16(&out, 4), 2);
        assert_eq!(get_u64(&out, 40), 8192);
        assert_eq!(get_u16(&out, 6), 64);
        assert_eq!(get_u32(&out, 8), 0x0102_0304);
        assert_eq!(get_u32(&out, 12), 1);
        assert_eq!(get_u64(&out, 16), 9);
        assert_eq!(get_u64(&out, 24), 1);
        assert_eq!(get_u32(&out, 32), 64);
        assert_eq!(get_u32(&out, 36), 4096);
        assert_eq!(get_u32(&out, 60), crc32fast::hash(&out[..60]));
        let r = &out[64..];
        assert_eq!(r[4], 2);
        assert_eq!(get_u32(r, 8), 2);
        assert_eq!(get_u32(r, 12), 5);
        assert_eq!(get_u64(r, 16), 1);
        assert_eq!(get_u64(r, 24), 6);
        assert_eq!(&r[56..58], b"ab");
    }

    /// The worked example of `docs/WAL_FORMAT.md`, byte for byte.
    #[test]
    fn worked_example_of_the_format_doc() {
        let record = RecordRef {
            kind: RecordKind::Accept,
            group: GroupId(7),
            instance: Instance(42),
            promised: Ballot { number: 3, node: 1 },
            accepted: Ballot { number: 3, node: 1 },
            payload: b"hi",
        };
        let mut out = Vec::new();
        assert_eq!(encode_batch(1, 1, Lsn(1), &[record], &mut out), 4096);
        let expected = concat!(
            "50585742020040000100000001000000010000000000000001000000000000004000000000100000",
            "0000000000000000000000000000000000000000ca5ef802f26df81f0200465b0200000007000000",
            "01000000000000002a00000000000000030000000000000001000000010000000300000000000000",
            "6869000000000000",
        );
        let hex: String = out[..128].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        assert!(out[128..].iter().all(|&b| b == 0), "padding is zero");
    }

    /// A batch found at another offset than the one it was written for (a misdirected write)
    /// is a bad region, not a batch; a version 1 batch (no offset) is still read.
    #[test]
    fn a_batch_at_the_wrong_offset_is_refused() {
        let mut image = Vec::new();
        encode_batch(4, 9, Lsn(1), &[rec(1, 1, b"a")], &mut image);
        encode_batch(4, 9, Lsn(2), &[rec(1, 2, b"b")], &mut image);
        assert_eq!(scan_segment(4, 9, &image).batches.len(), 2);
        // The second write lands over the first one's place.
        let (first, second) = image.split_at_mut(BLOCK_BYTES);
        first.copy_from_slice(second);
        let scan = scan_segment(4, 9, &image);
        assert_eq!(scan.batches.len(), 1, "{scan:?}");
        assert_eq!(scan.batches[0].offset, BLOCK_BYTES as u64);
        assert!(scan.bad_regions[0].reason.contains("misdirected"));
        // Version 1: bytes 40..60 zero, version field 1.
        let mut old = image[BLOCK_BYTES..].to_vec();
        old[40..48].fill(0);
        put_u16(&mut old, 4, FORMAT_VERSION);
        let crc = crc32fast::hash(&old[..60]);
        put_u32(&mut old, 60, crc);
        let header = decode_batch_header(&old).expect("version 1 reads");
        assert_eq!(header.offset, None);
    }

    #[test]
    fn segment_header_round_trips_and_moves_the_data_start() {
        let mut image = vec![0u8; 3 * BLOCK_BYTES];
        encode_segment_header(4, 9, SEGMENT_FLAG_RECYCLED, &mut image[..BLOCK_BYTES]);
        assert_eq!(
            decode_segment_header(4, 9, &image),
            Some(SEGMENT_FLAG_RECYCLED)
        );
        assert_eq!(decode_segment_header(4, 10, &image), None);
        assert_eq!(decode_segment_header(5, 9, &image), None);
        let mut batch = Vec::new();
        encode_batch_at(
            4,
            9,
            BLOCK_BYTES as u64,
            Lsn(1),
            &[rec(1, 1, b"a")],
            &mut batch,
        );
        image[BLOCK_BYTES..2 * BLOCK_BYTES].copy_from_slice(&batch);
        // Stale bytes of an earlier life after the batch.
        image[2 * BLOCK_BYTES + 100] = 0x55;
        let scan = scan_segment(4, 9, &image);
        assert!(scan.recycled);
        assert_eq!(scan.data_start, BLOCK_BYTES as u64);
        assert_eq!(scan.batches.len(), 1);
        assert_eq!(scan.batches_end(), 2 * BLOCK_BYTES as u64);
        assert_eq!(scan.bad_regions.len(), 1);
        image[7] ^= 1;
        let scan = scan_segment(4, 9, &image);
        assert!(!scan.recycled);
        assert_eq!(scan.data_start, 0);
    }

    #[test]
    fn record_checksum_binds_core_and_segment() {
        let mut out = Vec::new();
        encode_batch(1, 2, Lsn(1), &[rec(1, 1, b"x")], &mut out);
        // The same bytes presented as another segment: the header names segment 2, so it is
        // foreign; a forged header that names segment 3 still fails every record checksum.
        let scan = scan_segment(1, 3, &out);
        assert!(scan.batches.is_empty());
        assert_eq!(scan.foreign_headers.len(), 1);
        let mut forged = out.clone();
        put_u64(&mut forged, 16, 3);
        let crc = crc32fast::hash(&forged[..60]);
        put_u32(&mut forged, 60, crc);
        let scan = scan_segment(1, 3, &forged);
        assert_eq!(scan.batches.len(), 1);
        assert!(!scan.batches[0].intact());
    }

    #[test]
    fn flipped_payload_loses_only_that_record_with_a_hint() {
        let mut out = Vec::new();
        encode_batch(
            0,
            0,
            Lsn(1),
            &[rec(1, 1, b"aaaa"), rec(2, 2, b"bbbb"), rec(3, 3, b"cc")],
            &mut out,
        );
        let second = 64 + record_bytes(4) + RECORD_HEADER_BYTES;
        out[second] ^= 0x40;
        let scan = scan_segment(0, 0, &out);
        let slots = &scan.batches[0].records;
        assert!(matches!(slots[0], ScannedRecord::Valid { .. }));
        assert!(matches!(
            slots[1],
            ScannedRecord::Bad {
                hint: Some((GroupId(2), Instance(2))),
                ..
            }
        ));
        assert!(matches!(slots[2], ScannedRecord::Valid { .. }));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for len in [0usize, 1, 63, 64, 65, 4095, 4096, 9000] {
            let mut image = vec![0u8; len];
            for byte in image.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            let scan = scan_segment(0, 0, &image);
            assert!(scan.batches.is_empty());
        }
    }

    #[test]
    fn decode_record_at_verifies() {
        let mut out = Vec::new();
        encode_batch(4, 8, Lsn(100), &[rec(1, 2, b"zz")], &mut out);
        let bytes = &out[64..64 + record_bytes(2)];
        assert_eq!(
            decode_record_at(4, 8, Lsn(100), bytes)
                .unwrap()
                .payload
                .as_ref(),
            b"zz"
        );
        assert!(decode_record_at(4, 9, Lsn(100), bytes).is_none());
        assert!(decode_record_at(4, 8, Lsn(101), bytes).is_none());
    }
}
