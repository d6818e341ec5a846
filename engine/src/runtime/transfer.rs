//! Checkpoint transfer on a node (docs/PROTOCOL.md#checkpoint-transfer): the core's checkpoint
//! store. Serving: reads a peer's chunk from the group's newest checkpoint file in
//! `DATA_DIR/checkpoints` (asking the executor to export one when the group has none past the
//! peer's point). Receiving: writes the chunks into a checkpoint file through
//! `CheckpointWriter` (so a file is published only when complete and fsynced), checks the
//! whole image's CRC, and hands the file to the executor to install into the state machine.
//!
//! Owns: the open reader of the checkpoint each group serves, the writer of the checkpoint
//! each group receives. Never: touches the state machine (the executor does), blocks on
//! the network.

use bytes::Bytes;
use paxring_wal::checkpoint::{self, CheckpointReader, CheckpointWriter};
use paxring_wal::{GroupId, Instance};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::core::CheckpointInfo;
use crate::driver::StorageError;

/// How often a group with no checkpoint to serve asks its executor to export one.
const EXPORT_EVERY: Duration = Duration::from_secs(5);

struct Serving {
    info: CheckpointInfo,
    chunk_bytes: u32,
    reader: CheckpointReader,
}

struct Receiving {
    info: CheckpointInfo,
    writer: CheckpointWriter,
    received: u64,
    crc: crc32fast::Hasher,
}

/// A core's checkpoint store.
pub(crate) struct CheckpointStore {
    dir: PathBuf,
    core: usize,
    serving: HashMap<GroupId, Serving>,
    receiving: HashMap<GroupId, Receiving>,
    /// Received checkpoints ready for the executor to install: (group, checkpoint, file).
    pub ready: Vec<(GroupId, CheckpointInfo, PathBuf)>,
    /// Groups whose executor should export a checkpoint (none to serve).
    pub exports: Vec<GroupId>,
    export_asked: HashMap<GroupId, Instant>,
    /// Which checkpoint files were verified, and how it went (a corrupt one is read once).
    verified: checkpoint::VerifyCache,
}

impl CheckpointStore {
    pub(crate) fn new(dir: PathBuf, core: usize) -> CheckpointStore {
        CheckpointStore {
            dir,
            core,
            serving: HashMap::new(),
            receiving: HashMap::new(),
            ready: Vec::new(),
            exports: Vec::new(),
            export_asked: HashMap::new(),
            verified: checkpoint::VerifyCache::default(),
        }
    }

    /// The directory of the checkpoint files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn error(
        &self,
        what: String,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StorageError {
        StorageError::new(format!("core {}: {what}", self.core), source)
    }

    fn want_export(&mut self, group: GroupId) {
        let due = self
            .export_asked
            .get(&group)
            .is_none_or(|at| at.elapsed() >= EXPORT_EVERY);
        if due {
            self.export_asked.insert(group, Instant::now());
            self.exports.push(group);
        }
    }

    /// Opens the checkpoint to serve: `instance` if its file is there, else the newest valid
    /// one (which must be past `need`). None when there is none to offer.
    fn open(
        &mut self,
        group: GroupId,
        instance: Option<Instance>,
        need: Instance,
    ) -> Result<Option<&mut Serving>, StorageError> {
        let current = self
            .serving
            .get(&group)
            .is_some_and(|s| instance == Some(s.info.instance));
        if !current {
            self.serving.remove(&group);
            let named = instance
                .map(|i| checkpoint::checkpoint_path(&self.dir, group, i))
                .filter(|p| p.exists());
            let path = match named {
                Some(path) => Some(path),
                None => match self.verified.newest_valid(&self.dir, group) {
                    Ok(found) => found.map(|(path, _)| path),
                    Err(e) => {
                        return Err(self.error(format!("group {}: checkpoint lookup", group.0), e))
                    }
                },
            };
            let Some(path) = path else {
                return Ok(None);
            };
            let reader = CheckpointReader::open(&path)
                .map_err(|e| self.error(format!("open {}", path.display()), e))?;
            let meta = *reader.meta();
            let info = CheckpointInfo {
                instance: meta.instance,
                log_checksum: meta.log_checksum,
                payload_bytes: meta.payload_bytes,
                payload_crc: reader.payload_crc(),
            };
            self.serving.insert(
                group,
                Serving {
                    info,
                    chunk_bytes: meta.chunk_bytes,
                    reader,
                },
            );
        }
        let serving = self.serving.get_mut(&group).expect("just opened");
        if serving.info.instance.0.saturating_add(1) <= need.0 {
            return Ok(None); // not past the peer's point
        }
        Ok(Some(serving))
    }

    /// See [`crate::driver::Storage::read_checkpoint`].
    pub(crate) fn read(
        &mut self,
        group: GroupId,
        instance: Option<Instance>,
        need: Instance,
        offset: u64,
        bytes_max: usize,
    ) -> Result<Option<(CheckpointInfo, u64, Bytes)>, StorageError> {
        let Some(serving) = self.open(group, instance, need)? else {
            self.want_export(group);
            return Ok(None);
        };
        let info = serving.info;
        // A resumed request keeps its offset; a request for another (or no) checkpoint
        // starts this one from the beginning.
        let offset = if instance == Some(info.instance) {
            offset.min(info.payload_bytes)
        } else {
            0
        };
        if offset == info.payload_bytes {
            return Ok(Some((info, offset, Bytes::new())));
        }
        let chunk_bytes = u64::from(serving.chunk_bytes.max(1));
        let index = offset / chunk_bytes;
        let within = (offset % chunk_bytes) as usize;
        let chunk = match serving.reader.chunk(index) {
            Ok(chunk) => chunk,
            Err(e) => {
                let path = serving.reader.path().to_path_buf();
                self.serving.remove(&group);
                return Err(self.error(format!("read {}", path.display()), e));
            }
        };
        let end = chunk.len().min(within.saturating_add(bytes_max.max(1)));
        Ok(Some((info, offset, chunk.slice(within.min(end)..end))))
    }

    /// See [`crate::driver::Storage::receive_checkpoint`].
    pub(crate) fn receive(
        &mut self,
        group: GroupId,
        info: &CheckpointInfo,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        if offset == 0 {
            self.receiving.remove(&group); // an unfinished writer removes its temp file
            let writer =
                CheckpointWriter::create(&self.dir, group, info.instance, info.log_checksum)
                    .map_err(|e| {
                        self.error(format!("group {}: receive a checkpoint", group.0), e)
                    })?;
            self.receiving.insert(
                group,
                Receiving {
                    info: *info,
                    writer,
                    received: 0,
                    crc: crc32fast::Hasher::new(),
                },
            );
        }
        let core = self.core;
        let Some(receiving) = self.receiving.get_mut(&group) else {
            return Err(StorageError::message(format!(
                "core {core}: group {}: checkpoint bytes at offset {offset} with no receive in progress",
                group.0
            )));
        };
        if receiving.info != *info || receiving.received != offset {
            self.receiving.remove(&group);
            return Err(StorageError::message(format!(
                "core {core}: group {}: checkpoint bytes out of order (offset {offset})",
                group.0
            )));
        }
        if let Err(e) = receiving.writer.write_all(data) {
            self.receiving.remove(&group);
            return Err(StorageError::new(
                format!(
                    "core {core}: group {}: write a received checkpoint",
                    group.0
                ),
                e,
            ));
        }
        receiving.crc.update(data);
        receiving.received += data.len() as u64;
        Ok(())
    }

    /// See [`crate::driver::Storage::install_checkpoint`]: checks the whole image and
    /// publishes the file; the core hands it to the executor (`ready`).
    pub(crate) fn finish(
        &mut self,
        group: GroupId,
        info: &CheckpointInfo,
    ) -> Result<(), StorageError> {
        let core = self.core;
        let Some(receiving) = self.receiving.remove(&group) else {
            return Err(StorageError::message(format!(
                "core {core}: group {}: no checkpoint received to install",
                group.0
            )));
        };
        let crc = receiving.crc.finalize();
        if receiving.info != *info
            || receiving.received != info.payload_bytes
            || crc != info.payload_crc
        {
            return Err(StorageError::message(format!(
                "core {core}: group {}: the received checkpoint at instance {} does not check: {} of {} bytes, crc {crc:#010x}, sender's {:#010x}",
                group.0, info.instance.0, receiving.received, info.payload_bytes, info.payload_crc
            )));
        }
        let (path, _) = receiving.writer.finish().map_err(|e| {
            self.error(
                format!("group {}: publish a received checkpoint", group.0),
                e,
            )
        })?;
        self.ready.push((group, *info, path));
        Ok(())
    }
}
