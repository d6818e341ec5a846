//! Checkpoint transfer (docs/PROTOCOL.md#checkpoint-transfer): a replica behind every value its
//! peers serve fetches a peer's checkpoint in chunks (resumable), has its driver install it
//! into the state machine and the log, and goes on with streaming catch-up from there, in the
//! same process. The serving side only forwards requests to its driver's checkpoint store.
use super::*;
use crate::core::message::CHECKPOINT_CHUNK_HEADER_BYTES;
use crate::core::outputs::{CheckpointRead, CheckpointWrite, InstallStatus};
use crate::core::CheckpointInfo;

/// Most payload bytes per chunk (besides the message limit).
pub(super) const CHECKPOINT_CHUNK_BYTES_MAX: usize = 256 << 10;
/// Requests re-sent without progress before a transfer is abandoned (catch-up then backs off
/// and may pick another peer).
const INSTALL_STALLS_MAX: u32 = 8;

/// A checkpoint transfer this replica runs.
#[derive(Debug)]
pub(super) struct Install {
    peer: NodeId,
    /// The peer's applied point when the fetch began (for the stuck reason if it fails).
    peer_applied: Instance,
    info: Option<CheckpointInfo>,
    /// Payload bytes received (the next request's offset).
    received: u64,
    /// All bytes arrived; the driver is installing.
    installing: bool,
    /// When the outstanding request is re-sent.
    deadline: Tick,
    stalls: u32,
    /// The configuration history the peer sent with the checkpoint (None: its initial
    /// configuration, never changed).
    configs: Option<Vec<membership::ConfigEntry>>,
}

impl Install {
    pub(super) fn status(&self) -> InstallStatus {
        InstallStatus {
            peer: self.peer,
            info: self.info,
            received: self.received,
            installing: self.installing,
            stalls: self.stalls,
        }
    }
}

impl Group {
    /// A peer that is ahead serves nothing from this replica's point on (its log starts at
    /// `peer_base`): fetch its checkpoint.
    pub(super) fn start_install(
        &mut self,
        ctx: &mut Ctx<'_>,
        peer: NodeId,
        peer_applied: Instance,
    ) {
        if self.install.is_some() || peer == ctx.me || self.stopped {
            return;
        }
        ctx.stats.checkpoint_fetches += 1;
        // Behind every value a peer serves: no candidacy or leadership of this replica may
        // go on (its instances in flight would lie below the installed checkpoint).
        self.step_down_to_install(ctx);
        self.install = Some(Install {
            peer,
            peer_applied,
            info: None,
            received: 0,
            installing: false,
            deadline: Tick(ctx.now.0 + ctx.config.retransmit_ticks),
            stalls: 0,
            configs: None,
        });
        self.ask_chunk(ctx);
    }

    fn ask_chunk(&mut self, ctx: &mut Ctx<'_>) {
        let Some(install) = &mut self.install else {
            return;
        };
        install.deadline = Tick(ctx.now.0 + ctx.config.retransmit_ticks);
        ctx.send(
            self.id,
            install.peer,
            Message::CheckpointRequest {
                instance: install.info.map(|i| i.instance),
                offset: install.received,
                need: self.applied_next,
            },
        );
    }

    /// Called every tick: re-sends a request that got no answer (a dropped connection or
    /// message: the transfer resumes at the bytes received), and gives up after a while.
    pub(super) fn install_tick(&mut self, ctx: &mut Ctx<'_>) {
        let Some(install) = &mut self.install else {
            return;
        };
        if install.installing || ctx.now < install.deadline {
            return;
        }
        install.stalls += 1;
        if install.stalls > INSTALL_STALLS_MAX {
            self.abandon_install(ctx);
            return;
        }
        self.ask_chunk(ctx);
    }

    /// Ends the transfer without installing; catch-up backs off before it asks again.
    pub(super) fn abandon_install(&mut self, ctx: &mut Ctx<'_>) {
        let Some(install) = self.install.take() else {
            return;
        };
        ctx.stats.checkpoint_transfers_abandoned += 1;
        self.back_off_catchup(ctx, install.peer, install.peer_applied);
    }

    pub(super) fn on_checkpoint_request(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        instance: Option<Instance>,
        offset: u64,
        need: Instance,
    ) {
        if from == ctx.me {
            return;
        }
        // Once installed it streams on from after the checkpoint it fetches (or its point).
        let next = instance.map_or(need, |i| Instance(i.0 + 1));
        self.note_peer_need(ctx, from, next);
        // Room for the configuration history the chunk carries (at most the whole history).
        let history = if self.history_is_initial() {
            0
        } else {
            membership::encode_history(&self.configs).len()
        };
        let bytes_max = (ctx.config.message_bytes_max as usize)
            .saturating_sub(CHECKPOINT_CHUNK_HEADER_BYTES + history)
            .clamp(1, CHECKPOINT_CHUNK_BYTES_MAX);
        ctx.stats.checkpoint_reads_served += 1;
        ctx.out.checkpoint_reads.push(CheckpointRead {
            group: self.id,
            to: from,
            instance,
            offset,
            need,
            bytes_max,
        });
    }

    /// The driver read what a peer asked for (or found no checkpoint to offer).
    pub(crate) fn serve_checkpoint(
        &mut self,
        ctx: &mut Ctx<'_>,
        to: NodeId,
        piece: Option<(CheckpointInfo, u64, Bytes)>,
    ) {
        let msg = match piece {
            Some((info, offset, data)) => {
                let base = Instance(info.instance.0 + 1);
                let configs = if self.history_is_initial() {
                    Bytes::new()
                } else {
                    Bytes::from(membership::encode_history(&self.history_for_base(base)))
                };
                // The history may have grown since the read was sized: the chunk carries less
                // data then (the requester asks for the rest from where it stops), never more
                // than the frame limit.
                let room = (ctx.config.message_bytes_max as usize)
                    .saturating_sub(CHECKPOINT_CHUNK_HEADER_BYTES + configs.len());
                if room == 0 && !data.is_empty() {
                    return; // no room at all: the requester asks again
                }
                let data = if data.len() > room {
                    data.slice(..room)
                } else {
                    data
                };
                Message::CheckpointChunk {
                    info: Some(info),
                    offset,
                    data,
                    configs,
                }
            }
            None => Message::CheckpointChunk {
                info: None,
                offset: 0,
                data: Bytes::new(),
                configs: Bytes::new(),
            },
        };
        ctx.send(self.id, to, msg);
    }

    pub(super) fn on_checkpoint_chunk(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        info: Option<CheckpointInfo>,
        offset: u64,
        data: Bytes,
        configs: Bytes,
    ) {
        ctx.stats.checkpoint_chunks_received += 1;
        let Some(install) = &mut self.install else {
            return;
        };
        if install.peer != from || install.installing {
            return;
        }
        let Some(info) = info else {
            // The peer has no checkpoint past this replica's point (yet).
            self.abandon_install(ctx);
            return;
        };
        if info.instance.0.saturating_add(1) <= self.applied_next.0 {
            // Of no use any more (this replica got past it meanwhile).
            self.abandon_install(ctx);
            return;
        }
        match install.info {
            Some(current) if current == info => {}
            _ if offset == 0 => {
                // The first chunk, or the peer replaced its checkpoint: start over with it.
                install.info = Some(info);
                install.received = 0;
            }
            _ => return, // a stray chunk of another checkpoint
        }
        if offset != install.received {
            return; // a duplicate or a late chunk: the outstanding request covers it
        }
        let end = offset.checked_add(data.len() as u64);
        if data.is_empty() && info.payload_bytes > 0 || end.is_none_or(|e| e > info.payload_bytes) {
            // Bytes that cannot belong to this checkpoint: a broken peer.
            self.abandon_install(ctx);
            return;
        }
        let history = if configs.is_empty() {
            None
        } else {
            match membership::decode_history(&configs) {
                Some(history) => Some(history),
                None => {
                    // A history that does not parse: a broken peer.
                    self.abandon_install(ctx);
                    return;
                }
            }
        };
        let Some(install) = &mut self.install else {
            return;
        };
        install.configs = history;
        install.received += data.len() as u64;
        install.stalls = 0;
        ctx.stats.checkpoint_bytes_received += data.len() as u64;
        ctx.out.checkpoint_writes.push(CheckpointWrite {
            group: self.id,
            info,
            offset,
            data,
        });
        if install.received == info.payload_bytes {
            install.installing = true;
            ctx.out.installs.push((self.id, info));
        } else {
            self.ask_chunk(ctx);
        }
    }

    /// The driver installed `info` into the state machine (durably): the group continues
    /// from the instance after it, with the checkpoint's rolling checksum, and its log starts
    /// there (a log-base record, which carries the promise).
    pub(crate) fn installed(&mut self, ctx: &mut Ctx<'_>, info: CheckpointInfo) {
        let taken = self.install.take();
        let configs = taken.as_ref().and_then(|i| i.configs.clone());
        let from = taken.map(|i| (i.peer, i.peer_applied));
        let base = Instance(info.instance.0 + 1);
        if base <= self.applied_next || self.stopped {
            return;
        }
        ctx.stats.checkpoints_installed += 1;
        self.step_down_to_install(ctx);
        self.applied_next = base;
        self.log_base = base;
        self.checksum = info.log_checksum;
        self.checksums.clear();
        self.checksums.insert(info.instance, info.log_checksum);
        self.chosen = self.chosen.split_off(&base);
        self.accepted = self.accepted.split_off(&base);
        let pending = self.pending_checks.remove(&info.instance);
        self.pending_checks = self.pending_checks.split_off(&base);
        self.catchup_backoff = 0;
        self.catchup_unavailable = None;
        self.catchup_deadline = None;
        self.catchup_stream = None;
        // The membership at the checkpoint: the peer's history for this base, or the initial
        // configuration (kept as the first entry) when the peer's never changed.
        match configs {
            Some(configs) => self.configs = configs,
            None => self.configs.truncate(1),
        }
        let payload = self.base_payload(base, info.log_checksum);
        self.append_meta(ctx, payload);
        if let Some((theirs, peer)) = pending {
            // A peer announced its checksum through the checkpoint's instance: compare.
            self.check(ctx, info.instance, theirs, peer);
        }
        self.apply_ready(ctx);
        self.finish_relearn(ctx);
        if let Some((peer, theirs)) = from {
            self.request_catchup(ctx, peer, theirs);
        }
    }

    fn step_down_to_install(&mut self, ctx: &mut Ctx<'_>) {
        #[cfg(feature = "sim-bugs")]
        if ctx.bugs.install_while_leading {
            return;
        }
        self.step_down(ctx);
    }

    /// The driver could not install the checkpoint (bad bytes, a failed write or restore):
    /// the transfer is abandoned and catch-up backs off before trying again.
    pub(crate) fn install_failed(&mut self, ctx: &mut Ctx<'_>) {
        self.abandon_install(ctx);
    }
}
