//! paxring-net: frames, the codec, peer connections and the shared network thread.
//!
//! A leaf crate: it imports nothing of paxring's, so ids are plain integers here. The wire
//! format is specified in `docs/WIRE.md`.
//!
//! - [`encode_frame`] / [`Decoder`]: the frame codec (checksummed, length-limited, zero-copy).
//! - [`NetThread::start`]: one thread (tokio-uring, or plain tokio on epoll when io_uring is
//!   unavailable) that listens on the node's ip:port, keeps one outbound connection per peer and
//!   routes inbound frames by group id to one [`Inbox`] per core.
//! - [`NetHandle::send_batch`]: a core's once-per-round hand-off of its outbound frames.
//!
//! # Example
//!
//! Two nodes on loopback; node 1 sends one frame of group 7 to node 2, whose core 0 owns it.
//! ```
//! use paxring_net::{encode_frame, Dest, NetConfig, NetThread};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! // Pick two free loopback ports.
//! let ports: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
//! let addr = |i: usize| ports[i].local_addr().unwrap();
//! let (a1, a2) = (addr(0), addr(1));
//! drop(ports);
//!
//! let route = Arc::new(|group: u32| Some(group as usize % 2)); // group -> core, 2 cores
//! let (node1, net1, _inboxes1) =
//!     NetThread::start(NetConfig::new(42, 1, a1, vec![(2, a2)]), 2, route.clone()).unwrap();
//! let (node2, _net2, mut inboxes2) =
//!     NetThread::start(NetConfig::new(42, 2, a2, vec![(1, a1)]), 2, route).unwrap();
//!
//! // A core's round: encode once, hand the whole batch over in one call.
//! let frame = encode_frame(1, 7, 1, b"accept instance 5");
//! net1.send_batch(vec![(Dest::Peer(2), frame)]).unwrap();
//!
//! // Group 7 belongs to core 1 of node 2; its loop would poll `inbox.fd()` in its ring.
//! let inbox = &mut inboxes2[1];
//! let mut frames = Vec::new();
//! while frames.is_empty() {
//!     assert!(inbox.wait(Duration::from_secs(10)), "frame did not arrive");
//!     inbox.drain(&mut frames, 64);
//! }
//! assert_eq!((frames[0].group, frames[0].from), (7, 1));
//! assert_eq!(&frames[0].body[..], b"accept instance 5");
//! node1.shutdown();
//! node2.shutdown();
//! ```
//!
//! Loss: each peer's outbound queue is bounded in frames (`outbound_capacity`) and bytes
//! (`outbound_bytes_max`). When it is full, a new frame to a connected (slow) peer is dropped
//! (`outbound_dropped_frames`); for a peer that is down the oldest queued frames are dropped
//! instead (`outbound_dropped_stale_frames`), so it gets recent frames when it returns. Frames
//! being written when a connection fails are lost (counted). Paxos tolerates message loss; the
//! engine retransmits. Inbound frames are never dropped silently: a full inbox stops the
//! connection reading (back-pressure).
#![deny(missing_docs)]

mod config;
mod frame;
mod inbox;
mod io;
mod stats;
mod thread;
mod transport;

/// The buffer types of frames, re-exported so callers need not name the `bytes` crate.
pub use bytes::{Bytes, BytesMut};
pub use config::{Backend, ConfigError, NetConfig, QUEUE_CAPACITY_LIMIT};
pub use frame::{
    encode_frame, encode_frame_into, finish_frame, start_frame, DecodeError, Decoder, Frame, Hello,
    HelloError, HelloStatus, FRAME_HEADER_BYTES, HELLO_BYTES, HELLO_MAGIC, MAX_FRAME_BYTES_LIMIT,
    PROTOCOL_VERSION,
};
pub use inbox::Inbox;
pub use stats::{Counters, NetStats, PeerStats};
pub use thread::{Dest, NetError, NetHandle, NetThread, Route};

// The threading contract the runtime relies on, checked at compile time.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<NetHandle>();
    send::<Inbox>();
    send::<NetThread>();
};
