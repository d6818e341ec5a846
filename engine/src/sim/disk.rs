//! A simulated disk: one WAL segment image holding the real encoded batches.
//!
//! Owns: the bytes of one core's log (written with the WAL's `encode_batch`, read back at
//! restart with the WAL's `recover_images`), the one write in flight, and the disk fault model:
//! a crash loses unsynced writes or tears the write in flight; a flipped bit, a zeroed sector,
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
    in_flight: Option<Write>,
    /// Completed (synced) writes since the simulation began.
    pub syncs: u64,
    /// Bytes lost to the torn-write and bit-flip faults so far.
    pub faults_injected: u64,
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
    /// True while a write is in flight (the next round's records wait, as in the runtime).
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Starts one write of `records` (consecutive Lsns from `first_lsn`), done at `done_at`.
    pub fn submit(&mut self, first_lsn: Lsn, records: Vec<Record>, done_at: Tick) {
        assert!(!self.busy(), "one write in flight at a time");
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
        self.in_flight = Some(Write {
            batch,
            records,
            locations,
            done_at,
        });
    }

    /// Completes the write in flight if its time has come.
    pub fn complete(&mut self, now: Tick) -> Option<Completed> {
        if self.in_flight.as_ref()?.done_at > now {
            return None;
        }
        let write = self.in_flight.take().expect("checked above");
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

    /// A crash: the write in flight is lost, or (torn) only a prefix of it reaches the disk;
    /// then the durable log takes the damage asked for. Returns how many faults landed.
    pub fn crash(&mut self, rng: &mut Prng, damage: CrashDamage) -> u64 {
        let before = self.faults_injected;
        let durable_end = self.durable.last().map_or(0, |b| b.end);
        let tore = damage.torn && self.in_flight.is_some();
        if let Some(write) = self.in_flight.take() {
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
        let write = self.in_flight.take()?;
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
        self.in_flight.as_ref().map(|w| w.done_at)
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
        disk.crash(&mut rng, CrashDamage::default());
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
        disk.crash(&mut rng, CrashDamage::default());
        let recovery = disk.recover();
        assert_eq!(recovery.records.len(), 4, "{recovery:?}");
        assert_eq!(recovery.next_lsn, Lsn(5));
    }
}
