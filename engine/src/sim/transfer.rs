//! Checkpoint transfer in the simulator (docs/PROTOCOL.md#checkpoint-transfer): each node's
//! durable state-machine checkpoints serve as the images peers fetch, received chunks build
//! up in the process's memory (lost at a crash, as the runtime's unpublished temp file is),
//! and an install completes a few ticks later (the executor's restore), when it replaces the
//! state machine, makes it durable and tells the driver. Crashes during a transfer or before
//! an install completes lose it; a crash after loses the log-base record if it was not
//! written yet, and the restarted node fetches again.
use super::{Sim, SmState};
use crate::core::{CheckpointInfo, GroupId, Instance, Tick};
use crate::driver::StorageError;
use bytes::Bytes;
use std::collections::BTreeMap;

/// Bytes of filler after the state in a simulated checkpoint image, so that an image takes
/// several chunks (a transfer is cut, resumed and reordered like a real one).
const IMAGE_FILLER_BYTES: usize = 2_500;
/// Ticks an install takes at most (the executor restoring the state machine).
const INSTALL_TICKS_MAX: u64 = 20;

/// A simulated checkpoint image: the state, then filler derived from it.
pub(super) fn image(state: &SmState) -> Bytes {
    let mut out = Vec::with_capacity(20 + IMAGE_FILLER_BYTES);
    out.extend_from_slice(&state.next.0.to_le_bytes());
    out.extend_from_slice(&state.digest.to_le_bytes());
    out.extend_from_slice(&state.checksum.to_le_bytes());
    let mut x = state.digest | 1;
    for _ in 0..IMAGE_FILLER_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    Bytes::from(out)
}

/// The state an image holds (None when the bytes are not an image of a state).
pub(super) fn parse_image(bytes: &[u8]) -> Option<SmState> {
    if bytes.len() != 20 + IMAGE_FILLER_BYTES {
        return None;
    }
    let state = SmState {
        next: Instance(u64::from_le_bytes(bytes[..8].try_into().ok()?)),
        digest: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
        checksum: u32::from_le_bytes(bytes[16..20].try_into().ok()?),
    };
    (image(&state) == bytes).then_some(state)
}

/// What a checkpoint of `state` is, as a transfer names it (None: it holds nothing).
pub(super) fn info_of(state: &SmState) -> Option<CheckpointInfo> {
    let instance = state.next.0.checked_sub(1)?;
    let bytes = image(state);
    Some(CheckpointInfo {
        instance: Instance(instance),
        log_checksum: state.checksum,
        payload_bytes: bytes.len() as u64,
        payload_crc: crc32fast::hash(&bytes),
    })
}

/// A node's transfers in progress (process memory).
#[derive(Debug, Default)]
pub(super) struct Transfers {
    /// Per group: the checkpoint being received and its bytes so far.
    pub receiving: BTreeMap<GroupId, (CheckpointInfo, Vec<u8>)>,
    /// Complete, checked images waiting for the install to finish.
    pub ready: Vec<(GroupId, CheckpointInfo, SmState)>,
    /// Installs under way: (done at, group, checkpoint, state).
    pub installing: Vec<(Tick, GroupId, CheckpointInfo, SmState)>,
}

/// Serving side: bytes of `group`'s durable checkpoint (see `Storage::read_checkpoint`).
pub(super) fn read(
    checkpoints: &BTreeMap<GroupId, SmState>,
    group: GroupId,
    instance: Option<Instance>,
    need: Instance,
    offset: u64,
    bytes_max: usize,
) -> Option<(CheckpointInfo, u64, Bytes)> {
    let state = checkpoints.get(&group)?;
    let info = info_of(state)?;
    if info.instance.0 < need.0 {
        return None;
    }
    let offset = if instance == Some(info.instance) {
        offset.min(info.payload_bytes)
    } else {
        0
    };
    let bytes = image(state);
    let start = offset as usize;
    let end = bytes.len().min(start + bytes_max.max(1));
    Some((info, offset, bytes.slice(start..end)))
}

/// Receiving side: see `Storage::receive_checkpoint`.
pub(super) fn receive(
    transfers: &mut Transfers,
    group: GroupId,
    info: &CheckpointInfo,
    offset: u64,
    data: &[u8],
) -> Result<(), StorageError> {
    if offset == 0 {
        transfers.receiving.insert(group, (*info, Vec::new()));
    }
    match transfers.receiving.get_mut(&group) {
        Some((current, bytes)) if current == info && bytes.len() as u64 == offset => {
            bytes.extend_from_slice(data);
            Ok(())
        }
        _ => {
            transfers.receiving.remove(&group);
            Err(StorageError::message("checkpoint bytes out of order"))
        }
    }
}

/// Receiving side: see `Storage::install_checkpoint` (the image is checked here; the install
/// finishes later).
pub(super) fn install(
    transfers: &mut Transfers,
    group: GroupId,
    info: &CheckpointInfo,
) -> Result<(), StorageError> {
    let Some((current, bytes)) = transfers.receiving.remove(&group) else {
        return Err(StorageError::message("no checkpoint received"));
    };
    let state = parse_image(&bytes).filter(|s| {
        current == *info
            && bytes.len() as u64 == info.payload_bytes
            && crc32fast::hash(&bytes) == info.payload_crc
            && info_of(s) == Some(*info)
    });
    let Some(state) = state else {
        return Err(StorageError::message(
            "the received checkpoint does not check",
        ));
    };
    transfers.ready.push((group, *info, state));
    Ok(())
}

impl Sim {
    /// Installs that were handed over this round start (they take a few ticks).
    pub(super) fn start_installs(&mut self, index: usize) {
        let ready = std::mem::take(&mut self.nodes[index].transfers.ready);
        for (group, info, state) in ready {
            let done = Tick(self.now.0 + 1 + self.rng.below(INSTALL_TICKS_MAX));
            self.nodes[index]
                .transfers
                .installing
                .push((done, group, info, state));
            self.count("checkpoint-transfer");
        }
    }

    /// Installs whose time has come: the state machine takes the checkpoint (durably) and
    /// the group's driver goes on after it.
    pub(super) fn finish_installs(&mut self, index: usize) {
        let now = self.now;
        let node = &mut self.nodes[index];
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut node.transfers.installing)
            .into_iter()
            .partition(|(at, ..)| *at <= now);
        node.transfers.installing = later;
        for (_, group, info, state) in due {
            // The image must be the state every replica had after that instance.
            let instance = info.instance;
            if let Some(known) = self.checks.digests.get(&(group, instance)) {
                if *known != state.digest {
                    let id = self.nodes[index].id;
                    self.violate(format!(
                        "state-machine: node {id} installed a checkpoint of group {group} at instance {instance} whose digest differs from the replicas'"
                    ));
                    continue;
                }
            }
            let node = &mut self.nodes[index];
            let machine = node.machines.entry(group).or_default();
            if state.next > machine.next {
                *machine = state;
            }
            let durable = node.checkpoints.entry(group).or_default();
            if state.next > durable.next {
                *durable = state;
            }
            let core = crate::core::core_of_group(group.0, self.options.cores as usize);
            if let Some(driver) = self.nodes[index].cores[core].driver.as_mut() {
                driver.installed(group, info);
            }
            self.trace(&("installed", index, group.0, instance.0));
        }
    }
}
