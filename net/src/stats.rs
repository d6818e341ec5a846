//! Counters of the network thread: per peer, per node, and their snapshot type.
//!
//! Owns the atomics the network thread bumps and the serialisable snapshot `NetHandle::stats`
//! returns. It must never block or allocate when a counter is bumped.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])+ $name:ident,)*) => {
        /// Counters of one peer (or their sum over peers). Monotonic since start.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct Counters {
            $($(#[$doc])+ pub $name: u64,)*
        }

        #[derive(Debug, Default)]
        pub(crate) struct AtomicCounters {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl AtomicCounters {
            pub(crate) fn snapshot(&self) -> Counters {
                Counters { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Counters {
            fn add(&mut self, other: &Counters) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counters! {
    /// Frames written to the peer's connection.
    frames_sent,
    /// Bytes (headers included) written to the peer's connection.
    bytes_sent,
    /// Socket writes to the peer (each coalesces one or more frames).
    writes,
    /// Frames received from the peer and handed to an inbox.
    frames_received,
    /// Bytes (headers included) of the frames received from the peer.
    bytes_received,
    /// Successful outbound connections after the first one.
    reconnects,
    /// Outbound connection or handshake attempts that failed.
    connect_failures,
    /// Reconnect backoffs cut short because the peer connected to us meanwhile (it is up).
    reconnects_early,
    /// Inbound connections from the peer closed for undecodable bytes (checksum, oversize,
    /// truncation at end of stream).
    decode_errors,
    /// Inbound connections from the peer closed for a protocol violation (a frame whose sender
    /// is not the handshake's node id; bytes on an outbound connection).
    protocol_errors,
    /// Frames from the peer for a group no core owns: counted and dropped.
    unknown_group_frames,
    /// Times a connection from the peer stopped reading because a core's inbox was full.
    queue_full_events,
    /// New frames to the peer dropped because its outbound queue was full (frames or bytes)
    /// while its connection was up (the peer is slow), or because a frame alone exceeds
    /// `outbound_bytes_max`.
    outbound_dropped_frames,
    /// Queued frames to the peer dropped, oldest first, to make room for new ones while its
    /// connection was down (stale frames go first).
    outbound_dropped_stale_frames,
    /// Frames to the peer dropped because they exceed the peer's maximum frame size.
    oversize_dropped_frames,
    /// Frames lost because the connection failed while they were being written.
    lost_on_disconnect_frames,
}

/// One peer's snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct PeerStats {
    /// The peer's node id.
    pub node_id: u32,
    /// Whether the outbound connection is up (handshake done).
    pub connected: bool,
    /// Frames waiting in the outbound queue.
    pub outbound_queued_frames: u64,
    /// Bytes (whole frames, headers included) waiting in the outbound queue; at most
    /// `outbound_bytes_max`. Frames taken by a socket write in progress are not counted.
    pub outbound_queued_bytes: u64,
    /// The counters.
    #[serde(flatten)]
    pub counters: Counters,
}

/// A snapshot of the network thread's counters (`NetHandle::stats`).
#[derive(Clone, Debug, Serialize)]
pub struct NetStats {
    /// This node's id.
    pub node_id: u32,
    /// `"io_uring"` or `"epoll"`: the backend the thread runs on.
    pub backend: &'static str,
    /// Per-peer counters, in configuration order.
    pub peers: Vec<PeerStats>,
    /// The sum of the per-peer counters.
    pub totals: Counters,
    /// Inbound connections accepted (before the handshake).
    pub connections_accepted: u64,
    /// Inbound handshakes refused (foreign cluster, unsupported version, unknown node).
    pub handshakes_refused: u64,
    /// Handshakes that did not finish in time (either direction).
    pub handshake_timeouts: u64,
    /// Connections closed because their handshake bytes were not a paxring handshake.
    pub handshake_errors: u64,
    /// Batches `send_batch` handed back because the queue was full.
    pub send_batches_refused: u64,
    /// Frames handed to `send_batch` that were not one whole frame from this node, or were
    /// addressed to an unknown peer: dropped.
    pub invalid_outbound_frames: u64,
    /// Frames dropped because the owning core's inbox was closed (the core has exited).
    pub inbox_closed_dropped_frames: u64,
}

#[derive(Debug, Default)]
pub(crate) struct PeerSlot {
    pub(crate) counters: AtomicCounters,
    pub(crate) connected: AtomicBool,
    pub(crate) outbound_queued_frames: AtomicU64,
    pub(crate) outbound_queued_bytes: AtomicU64,
}

/// The shared counters: written by the network thread, read by `NetHandle::stats`.
#[derive(Debug)]
pub(crate) struct SharedStats {
    pub(crate) node_id: u32,
    pub(crate) peer_ids: Vec<u32>,
    pub(crate) peers: Vec<PeerSlot>,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) handshake_timeouts: AtomicU64,
    pub(crate) handshake_errors: AtomicU64,
    pub(crate) send_batches_refused: AtomicU64,
    pub(crate) invalid_outbound_frames: AtomicU64,
    pub(crate) inbox_closed_dropped_frames: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl SharedStats {
    pub(crate) fn new(node_id: u32, peer_ids: Vec<u32>) -> Self {
        let peers = peer_ids.iter().map(|_| PeerSlot::default()).collect();
        SharedStats {
            node_id,
            peer_ids,
            peers,
            connections_accepted: AtomicU64::new(0),
            handshakes_refused: AtomicU64::new(0),
            handshake_timeouts: AtomicU64::new(0),
            handshake_errors: AtomicU64::new(0),
            send_batches_refused: AtomicU64::new(0),
            invalid_outbound_frames: AtomicU64::new(0),
            inbox_closed_dropped_frames: AtomicU64::new(0),
        }
    }

    pub(crate) fn snapshot(&self, backend: &'static str) -> NetStats {
        let mut totals = Counters::default();
        let peers: Vec<PeerStats> = self
            .peer_ids
            .iter()
            .zip(&self.peers)
            .map(|(node_id, slot)| {
                let counters = slot.counters.snapshot();
                totals.add(&counters);
                PeerStats {
                    node_id: *node_id,
                    connected: slot.connected.load(Ordering::Relaxed),
                    outbound_queued_frames: slot.outbound_queued_frames.load(Ordering::Relaxed),
                    outbound_queued_bytes: slot.outbound_queued_bytes.load(Ordering::Relaxed),
                    counters,
                }
            })
            .collect();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            node_id: self.node_id,
            backend,
            peers,
            totals,
            connections_accepted: load(&self.connections_accepted),
            handshakes_refused: load(&self.handshakes_refused),
            handshake_timeouts: load(&self.handshake_timeouts),
            handshake_errors: load(&self.handshake_errors),
            send_batches_refused: load(&self.send_batches_refused),
            invalid_outbound_frames: load(&self.invalid_outbound_frames),
            inbox_closed_dropped_frames: load(&self.inbox_closed_dropped_frames),
        }
    }
}
