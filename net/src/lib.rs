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
//! Loss: frames to a peer that is down or slow are dropped (counted) once its outbound queue
//! is full, and frames being written when a connection fails are lost (counted). Paxos tolerates
//! message loss; the engine retransmits. Inbound frames are never dropped silently: a full inbox
//! stops the connection reading (back-pressure).
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
    encode_frame, encode_frame_into, DecodeError, Decoder, Frame, Hello, HelloError, HelloStatus,
    FRAME_HEADER_BYTES, HELLO_BYTES, HELLO_MAGIC, MAX_FRAME_BYTES_LIMIT, PROTOCOL_VERSION,
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
