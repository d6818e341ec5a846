//! A simulated disk: one WAL segment image holding the real encoded batches.
//!
//! Owns: the bytes of one node's log (written with the WAL's `encode_batch`, read back at
//! restart with the WAL's `recover_images`), the one write in flight, and the fault model
//! (a crash loses unsynced writes, a torn last write, a flipped byte in a durable record).
//! Must never touch a real file or clock.
use crate::core::{Lsn, Prng, Record, RecordRef, Recovery, Tick};
use paxring_wal::format::{record_bytes, BATCH_HEADER_BYTES};
use paxring_wal::{encode_batch, recover_images};

const CORE_ID: u32 = 0;
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
        let records_bytes: usize = records.iter().map(|r| record_bytes(r.payload.len())).sum();
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
            done_at,
        });
    }

    /// Completes the write in flight if its time has come.
    pub fn complete(&mut self, now: Tick) -> Option<Completed> {
        if self.in_flight.as_ref()?.done_at > now {
            return None;
        }
        let write = self.in_flight.take().expect("checked above");
        self.cut.clear();
        self.durable.push(write.batch);
        self.syncs += 1;
        Some(Completed {
            last_lsn: write.batch.last_lsn,
            records: write.records,
        })
    }

    /// A crash: the write in flight is lost, or (torn) only a prefix of it reaches the disk;
    /// with `flip`, one byte of a durable record that has a durable batch after it is flipped
    /// (corruption followed by valid data, which recovery must report, not cut).
    pub fn crash(&mut self, rng: &mut Prng, torn: bool, flip: bool, rot_last: bool) {
        let durable_end = self.durable.last().map_or(0, |b| b.end);
        let tore = torn && self.in_flight.is_some();
        if let Some(write) = self.in_flight.take() {
            if torn {
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
        if rot_last && !tore && self.cut.is_empty() {
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
        if flip && self.durable.len() >= 2 {
            let index = rng.below(self.durable.len() as u64 - 1) as usize;
            let batch = self.durable[index];
            let first = batch.start + BATCH_HEADER_BYTES;
            let at = first + rng.below((batch.records_end - first) as u64) as usize;
            self.image[at] ^= 1 << rng.below(8);
            self.faults_injected += 1;
        }
    }

    /// Restart: runs the WAL's real recovery over the image and continues where it says.
    pub fn recover(&mut self) -> Recovery {
        assert!(!self.busy(), "recover after a crash");
        let recovery = recover_images(CORE_ID, &[(SEGMENT_NO, &self.image)]);
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

    /// A torn write is cut at restart, and what is written after the restart survives the
    /// next restart (the log continues where recovery says).
    #[test]
    fn torn_tail_cut_then_log_continues() {
        let mut rng = Prng::new(1);
        let mut disk = SimDisk::default();
        disk.submit(Lsn(1), vec![record(0), record(1)], Tick(1));
        assert!(disk.complete(Tick(1)).is_some());
        disk.submit(Lsn(3), vec![record(2)], Tick(5));
        disk.crash(&mut rng, true, false, false);
        let recovery = disk.recover();
        assert_eq!(recovery.records.len(), 2);
        assert_eq!(recovery.next_lsn, Lsn(3));
        disk.submit(Lsn(3), vec![record(3)], Tick(6));
        assert!(disk.complete(Tick(6)).is_some());
        disk.submit(Lsn(4), vec![record(4)], Tick(7));
        assert!(disk.complete(Tick(7)).is_some());
        disk.crash(&mut rng, false, false, false);
        let recovery = disk.recover();
        assert_eq!(recovery.records.len(), 4, "{recovery:?}");
        assert_eq!(recovery.next_lsn, Lsn(5));
    }
}
