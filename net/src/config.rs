//! Network configuration and its validation.
//!
//! Owns the knobs of the network thread and the rules relating them. It must never touch a
//! socket: validation is pure, done once at start, and every error says how to fix it.

use crate::frame::MAX_FRAME_BYTES_LIMIT;
use std::net::SocketAddr;
use std::time::Duration;

/// Which I/O backend the network thread runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Backend {
    /// io_uring (tokio-uring) when the kernel allows it, else epoll (plain tokio), said at start.
    Auto,
    /// io_uring only: start fails if it is unavailable.
    IoUring,
    /// Plain tokio on epoll.
    Epoll,
}

/// The largest queue capacity (frames) the configuration accepts.
pub const QUEUE_CAPACITY_LIMIT: usize = 1 << 20;

/// Configuration of one node's network thread.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Cluster id; a peer with another one is refused at the handshake.
    pub cluster_id: u64,
    /// This node's id.
    pub node_id: u32,
    /// The address to listen on (port 0 picks a free port; see `NetHandle::local_addr`).
    pub listen: SocketAddr,
    /// The other nodes: (node id, address). One outbound connection is kept to each.
    pub peers: Vec<(u32, SocketAddr)>,
    /// The largest frame body accepted or sent, in bytes.
    pub max_frame_bytes: u32,
    /// Frames each core's inbox holds before the connections feeding it stop reading.
    pub inbox_capacity: usize,
    /// Frames queued per peer at most. See `outbound_bytes_max` for what happens to a frame
    /// that does not fit.
    pub outbound_capacity: usize,
    /// Bytes (whole frames, headers included) queued per peer at most. A frame that would take
    /// the queue past this or `outbound_capacity` is dropped (counted in
    /// `outbound_dropped_frames`) while the peer's connection is up; while it is down the oldest
    /// queued frames are dropped instead until the new one fits (counted in
    /// `outbound_dropped_stale_frames`), so a returning peer gets recent frames, not a stale
    /// backlog. A frame larger than this is always dropped: keep it above
    /// `max_frame_bytes` + 24 (the frame header).
    pub outbound_bytes_max: usize,
    /// While a peer's connection is down its queue keeps at most this many bytes (the newest
    /// frames; at least the one just queued): a peer that returns after a long absence gets
    /// a short recent backlog, not up to `outbound_bytes_max` of stale frames ahead of
    /// everything current (the engine retransmits and catches up what matters).
    pub outbound_down_bytes_max: usize,
    /// Batches `NetHandle::send_batch` queues before it returns them (back-pressure).
    pub send_batch_capacity: usize,
    /// Time allowed for a connection's handshake (either direction).
    pub handshake_timeout: Duration,
    /// A peer that stops answering (no ACKs, no keepalive replies) is declared gone and its
    /// connection closed after about this long (TCP keepalive and TCP_USER_TIMEOUT).
    pub peer_dead_timeout: Duration,
    /// The first reconnect delay after a failure.
    pub reconnect_backoff_min: Duration,
    /// The cap of the exponential reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// Bytes gathered into one socket write at most (frames are coalesced up to this).
    pub write_batch_bytes_max: usize,
    /// Frames below this size are copied into the coalescing buffer; larger ones are written
    /// from their own buffer (vectored write, no copy).
    pub copy_threshold_bytes: usize,
    /// The I/O backend.
    pub backend: Backend,
}

/// A configuration that cannot work; the message says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field is out of range.
    #[error("net config: {field} = {value} is invalid: {fix}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Its value, printed.
        value: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// Two peers share a node id, or a peer has this node's id.
    #[error("net config: node id {node_id} appears twice among this node and its peers: give every node a distinct id")]
    DuplicateNode {
        /// The repeated id.
        node_id: u32,
    },
}

impl NetConfig {
    /// The default of `outbound_down_bytes_max`: 4 MiB.
    pub const OUTBOUND_DOWN_BYTES_MAX_DEFAULT: usize = 4 << 20;

    /// A configuration with the defaults for everything but identity and addresses.
    pub fn new(
        cluster_id: u64,
        node_id: u32,
        listen: SocketAddr,
        peers: Vec<(u32, SocketAddr)>,
    ) -> Self {
        NetConfig {
            cluster_id,
            node_id,
            listen,
            peers,
            max_frame_bytes: 4 << 20,
            inbox_capacity: 65_536,
            outbound_capacity: 65_536,
            outbound_bytes_max: 64 << 20,
            outbound_down_bytes_max: Self::OUTBOUND_DOWN_BYTES_MAX_DEFAULT,
            send_batch_capacity: 1024,
            handshake_timeout: Duration::from_secs(5),
            peer_dead_timeout: Duration::from_secs(10),
            reconnect_backoff_min: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_millis(200),
            write_batch_bytes_max: 1 << 20,
            copy_threshold_bytes: 4096,
            backend: Backend::Auto,
        }
    }

    /// Checks every field and the relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(
            field: &'static str,
            value: impl std::fmt::Debug,
            fix: &'static str,
        ) -> ConfigError {
            ConfigError::Invalid {
                field,
                value: format!("{value:?}"),
                fix,
            }
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > MAX_FRAME_BYTES_LIMIT {
            return Err(invalid(
                "max_frame_bytes",
                self.max_frame_bytes,
                "use 1 ..= 67108864 (64 MiB)",
            ));
        }
        for (field, value) in [
            ("inbox_capacity", self.inbox_capacity),
            ("outbound_capacity", self.outbound_capacity),
            ("send_batch_capacity", self.send_batch_capacity),
        ] {
            if value == 0 || value > QUEUE_CAPACITY_LIMIT {
                return Err(invalid(field, value, "use 1 ..= 1048576 frames"));
            }
        }
        if self.outbound_bytes_max == 0 {
            return Err(invalid(
                "outbound_bytes_max",
                self.outbound_bytes_max,
                "use a positive number of bytes, at least max_frame_bytes + 24, e.g. 67108864 (64 MiB)",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid(
                "handshake_timeout",
                self.handshake_timeout,
                "use a positive duration, e.g. 5s",
            ));
        }
        if self.peer_dead_timeout < Duration::from_secs(1)
            || self.peer_dead_timeout > Duration::from_secs(3600)
        {
            return Err(invalid(
                "peer_dead_timeout",
                self.peer_dead_timeout,
                "use 1s ..= 1h",
            ));
        }
        if self.reconnect_backoff_min.is_zero() {
            return Err(invalid(
                "reconnect_backoff_min",
                self.reconnect_backoff_min,
                "use a positive duration, e.g. 10ms",
            ));
        }
        if self.reconnect_backoff_max < self.reconnect_backoff_min {
            return Err(invalid(
                "reconnect_backoff_max",
                self.reconnect_backoff_max,
                "must be at least reconnect_backoff_min",
            ));
        }
        if self.write_batch_bytes_max < 4096 || self.write_batch_bytes_max > 64 << 20 {
            return Err(invalid(
                "write_batch_bytes_max",
                self.write_batch_bytes_max,
                "use 4096 ..= 67108864",
            ));
        }
        if self.copy_threshold_bytes > self.write_batch_bytes_max {
            return Err(invalid(
                "copy_threshold_bytes",
                self.copy_threshold_bytes,
                "must not exceed write_batch_bytes_max",
            ));
        }
        let mut ids: Vec<u32> = self.peers.iter().map(|(id, _)| *id).collect();
        ids.push(self.node_id);
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ConfigError::DuplicateNode { node_id: pair[0] });
        }
        for (_, addr) in &self.peers {
            if addr.port() == 0 {
                return Err(invalid(
                    "peers",
                    addr,
                    "a peer address needs a port other than 0",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> NetConfig {
        NetConfig::new(
            1,
            1,
            "127.0.0.1:0".parse().unwrap(),
            vec![(2, "127.0.0.1:9".parse().unwrap())],
        )
    }

    #[test]
    fn defaults_are_valid() {
        base().validate().unwrap();
    }

    #[test]
    fn defaults_bound_queued_bytes_and_reconnect_quickly() {
        let cfg = base();
        assert_eq!(cfg.outbound_bytes_max, 64 << 20);
        assert_eq!(cfg.reconnect_backoff_min, Duration::from_millis(10));
        assert_eq!(cfg.reconnect_backoff_max, Duration::from_millis(200));
    }

    #[test]
    fn zero_outbound_bytes_max_is_rejected_with_a_fix() {
        let mut cfg = base();
        cfg.outbound_bytes_max = 0;
        let err = cfg.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    field: "outbound_bytes_max",
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("outbound_bytes_max = 0") && message.contains("use a positive"),
            "the message names the field and says how to fix it: {message}"
        );
        cfg.outbound_bytes_max = 1;
        cfg.validate().unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut cfg = base();
        cfg.max_frame_bytes = 0;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::Invalid {
                field: "max_frame_bytes",
                ..
            })
        ));
        let mut cfg = base();
        cfg.inbox_capacity = 0;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::Invalid {
                field: "inbox_capacity",
                ..
            })
        ));
        let mut cfg = base();
        cfg.reconnect_backoff_max = Duration::from_millis(1);
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::Invalid {
                field: "reconnect_backoff_max",
                ..
            })
        ));
        let mut cfg = base();
        cfg.peers.push((1, "127.0.0.1:10".parse().unwrap()));
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::DuplicateNode { node_id: 1 })
        );
        let mut cfg = base();
        cfg.peers[0].1 = "127.0.0.1:0".parse().unwrap();
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::Invalid { field: "peers", .. })
        ));
    }
}
