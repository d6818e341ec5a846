//! paxring-net: frames, the codec, peer connections and the shared network thread.
//!
//! A leaf crate: it imports nothing of paxring's. See `docs/WIRE.md`.
#![deny(missing_docs)]
