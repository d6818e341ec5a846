//! A simulated disk: one WAL segment image holding the real encoded batches.
//!
//! Owns: the bytes of one core's log (written with the WAL's `encode_batch`, read back at
//! restart with the WAL's `recover_images`), the writes in flight (one, or up to
//! `writes_in_flight`, completed in Lsn order), and the disk fault model: a crash loses
//! unsynced writes or tears the write in flight (with several, keeps those that landed and
//! leaves holes where the others were); a flipped bit, a zeroed sector,
//! a lost write or a misdirected write in the durable log; a rotted last write; a failed write
//! (fsync error). Must never touch a real file or clock.
use crate::core::{GroupId, Instance, Lsn, Prng, Record, RecordRef, Recovery, Tick};
use bytes::Bytes;
use paxring_wal::format::{decode_record_at, record_bytes, BATCH_HEADER_BYTES};
use paxring_wal::{encode_batch, recover_images, LogIndex, RecordLocation};

const CORE_ID: u32 = 0;
const SECTOR_BYTES: usize = 512;
const SEGMENT_NO: u64 = 0;

#[derive(Clone, Copy, Debug)]
struct Batch {
    start: usize,
    records_end: usize,
    end: usize,
    last_lsn: Lsn,
}

#[derive(Debug)]
struct Write {
    batch: Batch,
    records: Vec<Record>,
    /// Where each record is in the image.
    locations: Vec<RecordLocation>,
    done_at: Tick,
}

/// One node's simulated log device.
#[derive(Debug, Default)]
pub struct SimDisk {
    image: Vec<u8>,
    durable: Vec<Batch>,
    /// Writes in flight, oldest first (their bytes are in `image` already; a crash decides
    /// which of them landed).
    in_flight: std::collections::VecDeque<Write>,
    /// How many writes may be in flight at once (0 is taken as 1), as the WAL's
    /// `writes_in_flight`: each has its own latency, so a later one may land first, but
    /// completions are reported in Lsn order only.
    pub writes_in_flight: usize,
    /// The injected bug `durable-out-of-order`: a write that landed is reported durable
    /// although an earlier one has not.
    #[cfg(feature = "sim-bugs")]
    pub ack_out_of_order: bool,
    /// Completed (synced) writes since the simulation began.
    pub syncs: u64,
    /// Bytes lost to the torn-write and bit-flip faults so far.
    pub faults_injected: u64,
    /// Crashes that left a write whole after an earlier one that did not land (a hole the
    /// next recovery reports as damage).
    pub holes: u64,
    /// The bytes the last recovery cut at `cut_at`: not zeroed until a write completes (the
    /// runtime zeroes a cut tail only once its first write, which carries the re-learn
    /// records, is durable), so a crash before that finds them again.
    cut: Vec<u8>,
    cut_at: usize,
    /// What the last crash did, for the event log.
    pub last_fault: String,
    /// The WAL's own index of the durable log: notes every record a completed write made
    /// durable, rebuilt from recovery at each restart, and resolves which record holds a
    /// chosen value (`read_chosen`, as the WAL's).
    index: LogIndex,
}

/// The damage a crash does to the durable log (each only when the disk holds enough writes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CrashDamage {
    /// The write in flight is torn (a prefix of it reaches the disk).
    pub torn: bool,
    /// One bit flips in a durable write that has another durable write after it.
    pub flip: bool,
    /// One bit flips in the last durable write.
    pub rot_last: bool,
    /// A 512-byte sector of a durable write reads back as zeros (in the last write, only
    /// inside its records: its header stays, so recovery sees damage, not an end).
    pub zero: bool,
    /// A durable write that is not the last never reached the disk (its bytes are zeros).
    pub lost: bool,
    /// A durable write that is not the last landed at another write's place (over it), its
    /// own place left as it was (zeros).
    pub misdirect: bool,
}

/// What a completed write made durable.
pub struct Completed {
    /// The last Lsn now durable.
    pub last_lsn: Lsn,
    /// The records that became durable.
    pub records: Vec<Record>,
}

impl SimDisk {
    /// An empty disk that keeps up to `writes_in_flight` writes in flight.
    pub fn new(writes_in_flight: usize) -> SimDisk {
        SimDisk {
            writes_in_flight,
            ..SimDisk::default()
        }
    }

    /// True while as many writes as allowed are in flight (the next round's records wait, as
    /// in the runtime).
    pub fn busy(&self) -> bool {
        self.in_flight.len() >= self.writes_in_flight.max(1)
    }

    /// Writes in flight now.
    pub fn writes_pending(&self) -> usize {
        self.in_flight.len()
    }

    /// Starts one write of `records` (consecutive Lsns from `first_lsn`), done at `done_at`.
    pub fn submit(&mut self, first_lsn: Lsn, records: Vec<Record>, done_at: Tick) {
        assert!(!self.busy(), "no more writes in flight than allowed");
        assert!(!records.is_empty());
        let refs: Vec<RecordRef<'_>> = records.iter().map(|r| r.as_ref()).collect();
        let start = self.image.len();
        let bytes = encode_batch(CORE_ID, SEGMENT_NO, first_lsn, &refs, &mut self.image);
        let mut offset = start + BATCH_HEADER_BYTES;
        let locations: Vec<RecordLocation> = records
            .iter()
            .enumerate()
            .map(|(at, record)| {
                let len = record_bytes(record.payload.len());
                let location = RecordLocation {
                    lsn: Lsn(first_lsn.0 + at as u64),
                    segment: SEGMENT_NO,
                    offset: offset as u64,
                    len: len as u32,
                };
                offset += len;
                location
            })
            .collect();
        let records_bytes = offset - start - BATCH_HEADER_BYTES;
        let batch = Batch {
            start,
            records_end: start + BATCH_HEADER_BYTES + records_bytes,
            end: start + bytes,
            last_lsn: Lsn(first_lsn.0 + records.len() as u64 - 1),
        };
        assert!(batch.records_end <= batch.end);
        self.in_flight.push_back(Write {
            batch,
            records,
            locations,
            done_at,
        });
    }

    /// Completes the oldest write in flight if its time has come (a later one that landed
    /// first waits for it: the durable point moves in Lsn order only).
    pub fn complete(&mut self, now: Tick) -> Option<Completed> {
        #[allow(unused_mut)]
        let mut at = 0;
        #[cfg(feature = "sim-bugs")]
        if self.ack_out_of_order {
            // The bug: the first write that landed, wherever it is in the queue.
            at = self.in_flight.iter().position(|w| w.done_at <= now)?;
        }
        if self.in_flight.get(at)?.done_at > now {
            return None;
        }
        let write = self.in_flight.remove(at).expect("checked above");
        let batch = write.locations[0].lsn;
        for (location, record) in write.locations.iter().zip(&write.records) {
            self.index.note(*location, &record.as_ref(), batch);
        }
        self.cut.clear();
        self.durable.push(write.batch);
        self.syncs += 1;
        Some(Completed {
            last_lsn: write.batch.last_lsn,
            records: write.records,
        })
    }

    /// The bytes a place of the image held before this life wrote it: the cut tail's, where
    /// the last recovery cut (not zeroed until a write completes), else zeros.
    fn unwritten(&self, from: usize, to: usize) -> Vec<u8> {
        (from..to)
            .map(|at| {
                at.checked_sub(self.cut_at)
                    .and_then(|i| self.cut.get(i).copied())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// A crash with several writes in flight: each write whose time had come (`done_at <=
    /// now`) landed whole, acknowledged or not; of the others, the first is torn (a prefix
    /// landed) when `torn`, and the rest did not land (their places hold what they held
    /// before). The image ends after the last byte that landed. Returns whether one tore.
    fn crash_writes_in_flight(&mut self, now: Tick, rng: &mut Prng, torn: bool) -> bool {
        let writes: Vec<Write> = self.in_flight.drain(..).collect();
        let durable_end = self.durable.last().map_or(0, |b| b.end);
        let mut end = durable_end;
        let mut tore = false;
        let mut holes: Vec<(usize, usize)> = Vec::new();
        let mut hole_made = false;
        for write in &writes {
            let batch = write.batch;
            if write.done_at <= now {
                end = batch.end;
                hole_made |= !holes.is_empty();
            } else if torn && !tore {
                let len = batch.records_end - batch.start;
                let keep = 1 + rng.below(len as u64 - 1) as usize;
                holes.push((batch.start + keep, batch.end));
                end = batch.start + keep;
                tore = true;
                self.faults_injected += 1;
            } else {
                holes.push((batch.start, batch.end));
            }
        }
        for (from, to) in holes {
            let to = to.min(end);
            if from < to {
                let before = self.unwritten(from, to);
                self.image[from..to].copy_from_slice(&before);
            }
        }
        self.image.truncate(end);
        self.holes += u64::from(hole_made);
        tore
    }

    /// A crash: the write in flight is lost, or (torn) only a prefix of it reaches the disk
    /// (with several in flight, see `crash_writes_in_flight`); then the durable log takes the
    /// damage asked for. Returns how many faults landed.
    pub fn crash(&mut self, now: Tick, rng: &mut Prng, damage: CrashDamage) -> u64 {
        let before = self.faults_injected;
        let durable_end = self.durable.last().map_or(0, |b| b.end);
        let several = self.in_flight.len() > 1;
        let tore = if several {
            self.crash_writes_in_flight(now, rng, damage.torn)
        } else {
            damage.torn && !self.in_flight.is_empty()
        };
        if let Some(write) = self.in_flight.pop_front() {
            if damage.torn {
                // Cut inside the records (a tear that only loses padding loses nothing).
                let len = write.batch.records_end - write.batch.start;
                let keep = 1 + rng.below(len as u64 - 1) as usize;
                self.image.truncate(write.batch.start + keep);
                self.faults_injected += 1;
            } else {
                self.image.truncate(durable_end);
            }
        }
        if !self.cut.is_empty() {
            // No write completed since the last recovery: the old cut bytes are still there,
            // except where the torn write landed over their start.
            let written = self.image.len().max(self.cut_at) - self.cut_at;
            if written < self.cut.len() {
                let rest = self.cut[written..].to_vec();
                self.image.truncate(self.cut_at + written);
                self.image.extend_from_slice(&rest);
            }
        }
        let whole_last = !tore && self.cut.is_empty();
        if damage.rot_last && whole_last {
            // The last durable write rots after it completed (its replies may have left).
            if let Some(batch) = self.durable.last().copied() {
                let first = batch.start + BATCH_HEADER_BYTES;
                if batch.records_end > first && self.image.len() >= batch.records_end {
                    let at = first + rng.below((batch.records_end - first) as u64) as usize;
                    self.image[at] ^= 1 << rng.below(8);
                    self.faults_injected += 1;
                }
            }
        }
        // The writes before the last one (damage there is followed by valid data).
        let middle = self.durable.len().saturating_sub(1);
        if damage.flip && middle >= 1 {
            let batch = self.durable[rng.below(middle as u64) as usize];
            let first = batch.start + BATCH_HEADER_BYTES;
            let at = first + rng.below((batch.records_end - first) as u64) as usize;
            self.image[at] ^= 1 << rng.below(8);
            self.faults_injected += 1;
        }
        if damage.zero && !self.durable.is_empty() && whole_last {
            let index = rng.below(self.durable.len() as u64) as usize;
            let batch = self.durable[index];
            let last = index + 1 == self.durable.len();
            let from = if last {
                batch.start + BATCH_HEADER_BYTES
            } else {
                batch.start
            };
            if batch.records_end > from && self.image.len() >= batch.end {
                let at = from + rng.below((batch.records_end - from) as u64) as usize;
                let sector = at / SECTOR_BYTES * SECTOR_BYTES;
                let start = sector.max(from);
                let end = (sector + SECTOR_BYTES).min(batch.end);
                self.image[start..end].fill(0);
                self.faults_injected += 1;
            }
        }
        if damage.lost && middle >= 1 {
            let batch = self.durable[rng.below(middle as u64) as usize];
            self.image[batch.start..batch.end].fill(0);
            self.faults_injected += 1;
        }
        if damage.misdirect && middle >= 2 {
            let from = self.durable[rng.below(middle as u64) as usize];
            let to = self.durable[rng.below(middle as u64) as usize];
            let limit = self.durable[middle].start; // never over the last write
            if from.start != to.start {
                self.last_fault = format!(
                    "misdirect: batch at {} (lsn ..={}) written over {} (lsn ..={}), limit {limit}, batches {:?}",
                    from.start, from.last_lsn.0, to.start, to.last_lsn.0,
                    self.durable.iter().map(|b| (b.start, b.end, b.last_lsn.0)).collect::<Vec<_>>()
                );
                let bytes = self.image[from.start..from.end].to_vec();
                let len = bytes.len().min(limit - to.start);
                self.image[from.start..from.end].fill(0);
                self.image[to.start..to.start + len].copy_from_slice(&bytes[..len]);
                self.faults_injected += 1;
            }
        }
        self.faults_injected - before
    }

    /// The write in flight fails (an fsync error): its bytes may be partly on the disk (a torn
    /// prefix, when `torn`) but it is not durable. Returns the Lsn it would have made durable.
    pub fn fail_write(&mut self, rng: &mut Prng, torn: bool) -> Option<Lsn> {
        let write = self.in_flight.pop_front()?;
        if !self.in_flight.is_empty() {
            // Later writes follow it in the image: its place keeps a torn prefix or what it
            // held before, theirs stay (the crash that follows decides what they did).
            let from = if torn {
                let len = write.batch.records_end - write.batch.start;
                write.batch.start + 1 + rng.below(len as u64 - 1) as usize
            } else {
                write.batch.start
            };
            let before = self.unwritten(from, write.batch.end);
            self.image[from..write.batch.end].copy_from_slice(&before);
            // The failed write's place is part of no write now: the crash keeps the later
            // writes' places as they are.
            self.faults_injected += 1;
            return Some(write.batch.last_lsn);
        }
        if torn {
            let len = write.batch.records_end - write.batch.start;
            let keep = 1 + rng.below(len as u64 - 1) as usize;
            self.image.truncate(write.batch.start + keep);
            // The rest of the write's place reads back as zeros.
            self.image.resize(write.batch.end, 0);
        } else {
            self.image.truncate(write.batch.start);
        }
        self.faults_injected += 1;
        Some(write.batch.last_lsn)
    }

    /// The chosen value of `(group, instance)` the durable log holds, if any: read from the
    /// image at the record the WAL's index resolves it to, as the WAL's `read_chosen` does.
    pub fn read_chosen(&self, group: GroupId, instance: Instance) -> Option<Bytes> {
        let location = self.index.resolve_chosen(group, instance)?;
        let start = location.offset as usize;
        let record = self
            .image
            .get(start..start + location.len as usize)
            .and_then(|bytes| decode_record_at(CORE_ID, SEGMENT_NO, location.lsn, bytes))
            .unwrap_or_else(|| {
                panic!("the durable image holds no record where the index says: {location:?}")
            });
        Some(record.payload)
    }

    /// When the write in flight completes, if one is in flight.
    pub fn done_at(&self) -> Option<Tick> {
        #[cfg(feature = "sim-bugs")]
        if self.ack_out_of_order {
            return self.in_flight.iter().map(|w| w.done_at).min();
        }
        self.in_flight.front().map(|w| w.done_at)
    }

    /// Restart: runs the WAL's real recovery over the image and continues where it says.
    pub fn recover(&mut self) -> Recovery {
        assert!(!self.busy(), "recover after a crash");
        let recovery = recover_images(CORE_ID, &[(SEGMENT_NO, &self.image)]);
        self.index = LogIndex::from_recovery(&recovery);
        let resume = recovery.resume.map_or(0, |(_, offset)| offset as usize);
        // The log continues at `resume`: cut what follows (kept aside until a write completes),
        // or pad a batch whose padding never reached the disk.
        self.cut = self
            .image
            .get(resume..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        self.cut_at = resume;
        self.image.resize(resume, 0);
        self.durable.retain(|b| b.end <= resume);
        recovery
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Ballot, GroupId, Instance, RecordKind};
    use bytes::Bytes;

    fn record(instance: u64) -> Record {
        Record {
            kind: RecordKind::Accept,
            group: GroupId(1),
            instance: Instance(instance),
            promised: Ballot { number: 1, node: 1 },
            accepted: Ballot { number: 1, node: 1 },
            payload: Bytes::from(vec![7u8; 100]),
        }
    }

    /// Chosen values are served from the image at the record the WAL's index resolves them
    /// to, once durable, and again after a restart: a later Promise naming the instance hides
    /// no mark.
    #[test]
    fn chosen_values_from_the_image_before_and_after_a_restart() {
        let mut rng = Prng::new(1);
        let mut disk = SimDisk::default();
        let b1 = Ballot { number: 1, node: 1 };
        let b2 = Ballot { number: 2, node: 2 };
        let at = |kind, instance, accepted, payload: &'static [u8]| Record {
            kind,
            group: GroupId(1),
            instance: Instance(instance),
            promised: accepted,
            accepted,
            payload: Bytes::from_static(payload),
        };
        disk.submit(
            Lsn(1),
            vec![
                at(RecordKind::Accept, 0, b1, b"zero"),
                at(RecordKind::Accept, 1, b1, b"one"),
            ],
            Tick(1),
        );
        assert!(disk.complete(Tick(1)).is_some());
        disk.submit(
            Lsn(3),
            vec![
                at(RecordKind::Chosen, 0, b1, b""),
                at(RecordKind::Chosen, 1, b2, b""),
                at(RecordKind::Chosen, 2, Ballot::ZERO, b"two"),
                at(RecordKind::Promise, 0, b2, b""),
            ],
            Tick(2),
        );
        assert_eq!(
            disk.read_chosen(GroupId(1), Instance(0)),
            None,
            "not durable yet"
        );
        assert!(disk.complete(Tick(2)).is_some());
        let check = |disk: &SimDisk| {
            let read = |instance| disk.read_chosen(GroupId(1), Instance(instance));
            assert_eq!(read(0).as_deref(), Some(&b"zero"[..]));
            assert_eq!(read(1), None, "the mark names another ballot");
            assert_eq!(read(2).as_deref(), Some(&b"two"[..]));
            assert_eq!(read(3), None);
        };
        check(&disk);
        disk.crash(Tick(0), &mut rng, CrashDamage::default());
        disk.recover();
        check(&disk);
    }

    /// A torn write is cut at restart, and what is written after the restart survives the
    /// next restart (the log continues where recovery says).
    #[test]
    fn torn_tail_cut_then_log_continues() {
        let mut rng = Prng::new(1);
        let mut disk = SimDisk::default();
        disk.submit(Lsn(1), vec![record(0), record(1)], Tick(1));
        assert!(disk.complete(Tick(1)).is_some());
        disk.submit(Lsn(3), vec![record(2)], Tick(5));
        disk.crash(
            Tick(0),
            &mut rng,
            CrashDamage {
                torn: true,
                ..CrashDamage::default()
            },
        );
        let recovery = disk.recover();
        assert_eq!(recovery.records.len(), 2);
        assert_eq!(recovery.next_lsn, Lsn(3));
        disk.submit(Lsn(3), vec![record(3)], Tick(6));
        assert!(disk.complete(Tick(6)).is_some());
        disk.submit(Lsn(4), vec![record(4)], Tick(7));
        assert!(disk.complete(Tick(7)).is_some());
        disk.crash(Tick(0), &mut rng, CrashDamage::default());
        let recovery = disk.recover();
        assert_eq!(recovery.records.len(), 4, "{recovery:?}");
        assert_eq!(recovery.next_lsn, Lsn(5));
    }

    /// Several writes in flight: a later write that lands first is not reported before the
    /// earlier one (completions in Lsn order), and a crash then keeps it whole while the
    /// earlier one is lost: recovery reports the hole as damage with its exact Lsns and keeps
    /// the later records (the WAL's rule, docs/WAL_FORMAT.md).
    #[test]
    fn several_writes_in_flight_land_out_of_order_and_a_hole_is_damage() {
        let mut rng = Prng::new(1);
        let mut disk = SimDisk::new(3);
        disk.submit(Lsn(1), vec![record(0)], Tick(1));
        assert!(disk.complete(Tick(1)).is_some());
        disk.submit(Lsn(2), vec![record(1), record(2)], Tick(50));
        assert!(!disk.busy());
        disk.submit(Lsn(4), vec![record(3)], Tick(10));
        disk.submit(Lsn(5), vec![record(4)], Tick(60));
        assert!(disk.busy(), "three in flight");
        assert!(
            disk.complete(Tick(20)).is_none(),
            "Lsn 4 landed, 2..=3 did not"
        );
        disk.crash(Tick(20), &mut rng, CrashDamage::default());
        let recovery = disk.recover();
        assert_eq!(recovery.damaged.len(), 1, "{recovery:?}");
        let hole = &recovery.damaged[0];
        assert_eq!((hole.first_lsn, hole.last_lsn), (Lsn(2), Lsn(3)));
        let lsns: Vec<u64> = recovery.records.iter().map(|(l, _)| l.0).collect();
        assert_eq!(
            lsns,
            vec![1, 4],
            "the write that landed stays; the last did not land"
        );
        assert_eq!(recovery.next_lsn, Lsn(5));
        assert!(recovery.tail_damage.is_none());
        // In order, once the first is due, both come.
        let mut disk = SimDisk::new(2);
        disk.submit(Lsn(1), vec![record(0)], Tick(30));
        disk.submit(Lsn(2), vec![record(1)], Tick(10));
        assert!(disk.complete(Tick(10)).is_none());
        assert_eq!(disk.complete(Tick(30)).map(|c| c.last_lsn), Some(Lsn(1)));
        assert_eq!(disk.complete(Tick(30)).map(|c| c.last_lsn), Some(Lsn(2)));
    }
}
