//! The wire codec: frames and the connection handshake (see `docs/WIRE.md`).
//!
//! Owns the byte layout of everything paxring puts on a TCP connection. Pure functions over
//! byte buffers: it must never do I/O, never trust a length before checking it against the
//! configured maximum, never allocate more than one frame's worth, and never panic on input.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of a frame header (before the body).
pub const FRAME_HEADER_BYTES: usize = 24;
/// Bytes of a handshake message.
pub const HELLO_BYTES: usize = 32;
/// The first four bytes of every handshake message.
pub const HELLO_MAGIC: [u8; 4] = *b"PXRG";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The largest `max_frame_bytes` a configuration may set (64 MiB).
pub const MAX_FRAME_BYTES_LIMIT: u32 = 64 << 20;

/// One decoded frame: a message of one group from one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message kind; its meaning belongs to the caller.
    pub kind: u8,
    /// The group id the message belongs to.
    pub group: u32,
    /// The sender's node id (checked against the connection's handshake on receipt).
    pub from: u32,
    /// The message body; shares the connection's read buffer (no copy).
    pub body: Bytes,
}

/// Why bytes could not be decoded. Every variant closes the connection that produced it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header checksum does not match: garbage, a corrupted header or a desynchronised stream.
    #[error("frame header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum {
        /// The checksum in the header.
        stored: u32,
        /// The checksum computed over the header bytes.
        computed: u32,
    },
    /// The body checksum does not match.
    #[error("frame body checksum mismatch (group {group}, {body_bytes} bytes): stored {stored:#010x}, computed {computed:#010x}")]
    BodyChecksum {
        /// The group named in the (valid) header.
        group: u32,
        /// The body length.
        body_bytes: u32,
        /// The checksum in the header.
        stored: u32,
        /// The checksum computed over the body.
        computed: u32,
    },
    /// The header announces a body longer than this node accepts; rejected before reading it.
    #[error("frame body of {body_bytes} bytes exceeds the maximum of {max_frame_bytes} bytes")]
    Oversize {
        /// The announced body length.
        body_bytes: u32,
        /// The configured maximum.
        max_frame_bytes: u32,
    },
    /// Reserved header bytes are not zero (a newer or corrupt sender).
    #[error("frame header reserved bytes are not zero: {reserved:?}")]
    Reserved {
        /// The reserved bytes as received.
        reserved: [u8; 3],
    },
    /// The input ended inside a frame.
    #[error("input ends inside a frame: have {have_bytes} bytes, the frame needs {need_bytes}")]
    Truncated {
        /// Bytes available.
        have_bytes: usize,
        /// Bytes the frame needs (header only, when the header itself is incomplete).
        need_bytes: usize,
    },
    /// Bytes follow the frame where exactly one frame was expected.
    #[error("{extra_bytes} bytes follow the frame")]
    Trailing {
        /// How many extra bytes.
        extra_bytes: usize,
    },
}

/// Encodes one frame. Encode once and clone the `Bytes` to send it to many peers: clones share
/// the buffer (zero-copy fan-out).
///
/// # Panics
/// If `body` is longer than `u32::MAX` bytes (a programmer error; the network thread also drops
/// frames above the receiving peer's maximum).
pub fn encode_frame(kind: u8, group: u32, from: u32, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_BYTES + body.len());
    encode_frame_into(&mut buf, kind, group, from, body)
}

/// Encodes one frame into `buf`'s spare capacity and splits it off as its own `Bytes`.
///
/// Reserve room for a whole round's frames in one `BytesMut` and encode them one after the
/// other: they share one allocation (freed when the last of them is sent) instead of one each.
/// `buf` must be empty (what it holds would become part of the frame); it keeps the remaining
/// capacity for the next frame.
///
/// # Panics
/// If `buf` is not empty, or `body` is longer than `u32::MAX` bytes.
pub fn encode_frame_into(
    buf: &mut BytesMut,
    kind: u8,
    group: u32,
    from: u32,
    body: &[u8],
) -> Bytes {
    assert!(buf.is_empty(), "encode_frame_into needs an empty buffer");
    assert!(
        body.len() <= u32::MAX as usize,
        "frame body exceeds u32::MAX bytes"
    );
    buf.reserve(FRAME_HEADER_BYTES + body.len());
    buf.put_u32_le(body.len() as u32);
    buf.put_u8(kind);
    buf.put_bytes(0, 3);
    buf.put_u32_le(group);
    buf.put_u32_le(from);
    buf.put_u32_le(crc32fast::hash(body));
    let header_crc = crc32fast::hash(&buf[..FRAME_HEADER_BYTES - 4]);
    buf.put_u32_le(header_crc);
    buf.put_slice(body);
    let frame = buf.split().freeze();
    // Pair with the decoder: what we wrote is what a reader will verify.
    assert_eq!(frame.len(), FRAME_HEADER_BYTES + body.len());
    assert_eq!(read_u32(&frame, 20), header_crc);
    frame
}

/// Starts a frame whose body is written in place: `buf` must be empty; the header's bytes are
/// reserved at its front. Append the body to `buf` (e.g. with `BufMut`), then seal it with
/// [`finish_frame`]: the body is copied once, from where the caller has it into the frame.
///
/// # Panics
/// If `buf` is not empty.
pub fn start_frame(buf: &mut BytesMut) {
    assert!(buf.is_empty(), "start_frame needs an empty buffer");
    buf.put_bytes(0, FRAME_HEADER_BYTES);
}

/// Seals a frame begun with [`start_frame`]: fills in the header (length, kind, group, sender,
/// body and header checksums) and splits the frame off as its own `Bytes`; `buf` keeps its
/// remaining capacity for the next frame.
///
/// # Panics
/// If `buf` holds less than a header, or a body longer than `u32::MAX` bytes.
pub fn finish_frame(buf: &mut BytesMut, kind: u8, group: u32, from: u32) -> Bytes {
    assert!(
        buf.len() >= FRAME_HEADER_BYTES,
        "start_frame was not called"
    );
    let body_len = buf.len() - FRAME_HEADER_BYTES;
    assert!(
        body_len <= u32::MAX as usize,
        "frame body exceeds u32::MAX bytes"
    );
    let body_crc = crc32fast::hash(&buf[FRAME_HEADER_BYTES..]);
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    header[4] = kind;
    header[8..12].copy_from_slice(&group.to_le_bytes());
    header[12..16].copy_from_slice(&from.to_le_bytes());
    header[16..20].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&header[..FRAME_HEADER_BYTES - 4]);
    header[20..24].copy_from_slice(&header_crc.to_le_bytes());
    buf[..FRAME_HEADER_BYTES].copy_from_slice(&header);
    buf.split().freeze()
}

/// The parsed, checksum-verified fields of a frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) body_bytes: u32,
    pub(crate) kind: u8,
    pub(crate) group: u32,
    pub(crate) from: u32,
    pub(crate) body_crc: u32,
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses and verifies a frame header. `header` must hold at least `FRAME_HEADER_BYTES`.
pub(crate) fn parse_header(
    header: &[u8],
    max_frame_bytes: u32,
) -> Result<FrameHeader, DecodeError> {
    assert!(header.len() >= FRAME_HEADER_BYTES);
    let stored = read_u32(header, 20);
    let computed = crc32fast::hash(&header[..20]);
    if stored != computed {
        return Err(DecodeError::HeaderChecksum { stored, computed });
    }
    let reserved = [header[5], header[6], header[7]];
    if reserved != [0, 0, 0] {
        return Err(DecodeError::Reserved { reserved });
    }
    let body_bytes = read_u32(header, 0);
    if body_bytes > max_frame_bytes {
        return Err(DecodeError::Oversize {
            body_bytes,
            max_frame_bytes,
        });
    }
    Ok(FrameHeader {
        body_bytes,
        kind: header[4],
        group: read_u32(header, 8),
        from: read_u32(header, 12),
        body_crc: read_u32(header, 16),
    })
}

/// An incremental frame decoder for one byte stream.
///
/// Feed it the stream's bytes in a `BytesMut`; each call removes one complete frame from the
/// front. It checks the header (checksum, reserved bytes, length against the maximum) as soon as
/// the header's 24 bytes are there, so an oversize or garbage header is refused before any body
/// byte is waited for. It never reserves memory itself.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_frame_bytes: u32,
}

impl Decoder {
    /// A decoder that refuses bodies longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> Self {
        Decoder { max_frame_bytes }
    }

    /// The configured maximum body length.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Takes the next complete frame off the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed (nothing consumed). `Err`: the stream is corrupt and
    /// must be closed (what was consumed is unspecified).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if buf.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let header = parse_header(&buf[..FRAME_HEADER_BYTES], self.max_frame_bytes)?;
        let frame_bytes = FRAME_HEADER_BYTES + header.body_bytes as usize;
        if buf.len() < frame_bytes {
            return Ok(None);
        }
        let computed = crc32fast::hash(&buf[FRAME_HEADER_BYTES..frame_bytes]);
        if computed != header.body_crc {
            return Err(DecodeError::BodyChecksum {
                group: header.group,
                body_bytes: header.body_bytes,
                stored: header.body_crc,
                computed,
            });
        }
        let mut whole = buf.split_to(frame_bytes);
        whole.advance(FRAME_HEADER_BYTES);
        let body = whole.freeze();
        assert_eq!(body.len(), header.body_bytes as usize);
        Ok(Some(Frame {
            kind: header.kind,
            group: header.group,
            from: header.from,
            body,
        }))
    }

    /// How many bytes the front of `buf` needs before the next `decode` can make progress:
    /// the header, or the whole frame once a valid header is there. Never more than
    /// `FRAME_HEADER_BYTES + max_frame_bytes`. A bad header reports the header size (the next
    /// `decode` returns the error).
    pub fn bytes_needed(&self, buf: &[u8]) -> usize {
        if buf.len() < FRAME_HEADER_BYTES {
            return FRAME_HEADER_BYTES;
        }
        match parse_header(&buf[..FRAME_HEADER_BYTES], self.max_frame_bytes) {
            Ok(header) => FRAME_HEADER_BYTES + header.body_bytes as usize,
            Err(_) => FRAME_HEADER_BYTES,
        }
    }

    /// Decodes exactly one frame from `bytes`: an incomplete frame is `Truncated`, extra bytes
    /// are `Trailing`. For tests, tools and fuzzing; connections use [`Decoder::decode`].
    pub fn decode_exact(&mut self, bytes: &[u8]) -> Result<Frame, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        match self.decode(&mut buf)? {
            Some(frame) if buf.is_empty() => Ok(frame),
            Some(_) => Err(DecodeError::Trailing {
                extra_bytes: buf.len(),
            }),
            None => Err(DecodeError::Truncated {
                have_bytes: bytes.len(),
                need_bytes: self.bytes_needed(bytes),
            }),
        }
    }
}

/// What a handshake message says: a greeting, or a refusal with its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum HelloStatus {
    /// A greeting: "I am `node_id` of `cluster_id`".
    Hello = 0,
    /// Refused: the cluster ids differ.
    RefusedCluster = 1,
    /// Refused: the protocol version is not supported.
    RefusedVersion = 2,
    /// Refused: the node id is not a configured peer (or is the receiver's own id).
    RefusedNode = 3,
}

impl HelloStatus {
    fn from_u16(value: u16) -> Option<HelloStatus> {
        match value {
            0 => Some(HelloStatus::Hello),
            1 => Some(HelloStatus::RefusedCluster),
            2 => Some(HelloStatus::RefusedVersion),
            3 => Some(HelloStatus::RefusedNode),
            _ => None,
        }
    }
}

/// The handshake message each side sends first (32 bytes, see `docs/WIRE.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version of the sender.
    pub version: u16,
    /// Greeting or refusal.
    pub status: HelloStatus,
    /// The sender's cluster id.
    pub cluster_id: u64,
    /// The sender's node id.
    pub node_id: u32,
    /// The largest frame body the sender accepts.
    pub max_frame_bytes: u32,
}

/// Why a handshake message is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The first four bytes are not the paxring magic: not a paxring peer.
    #[error("bad handshake magic {found:02x?} (not a paxring peer)")]
    Magic {
        /// The bytes received.
        found: [u8; 4],
    },
    /// The handshake checksum does not match.
    #[error("handshake checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksum in the message.
        stored: u32,
        /// The checksum computed.
        computed: u32,
    },
    /// Unknown status code or non-zero reserved bytes.
    #[error("malformed handshake: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
    /// Fewer than `HELLO_BYTES` bytes.
    #[error("handshake truncated at {have_bytes} of {HELLO_BYTES} bytes")]
    Truncated {
        /// Bytes available.
        have_bytes: usize,
    },
}

impl Hello {
    /// Encodes the handshake message.
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[0..4].copy_from_slice(&HELLO_MAGIC);
        out[4..6].copy_from_slice(&self.version.to_le_bytes());
        out[6..8].copy_from_slice(&(self.status as u16).to_le_bytes());
        out[8..16].copy_from_slice(&self.cluster_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.node_id.to_le_bytes());
        out[20..24].copy_from_slice(&self.max_frame_bytes.to_le_bytes());
        // 24..28 reserved, zero.
        let crc = crc32fast::hash(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a handshake message from the first `HELLO_BYTES` of `bytes`.
    /// The version is returned as sent; the caller decides whether it is supported.
    pub fn decode(bytes: &[u8]) -> Result<Hello, HelloError> {
        if bytes.len() < HELLO_BYTES {
            return Err(HelloError::Truncated {
                have_bytes: bytes.len(),
            });
        }
        let found = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if found != HELLO_MAGIC {
            return Err(HelloError::Magic { found });
        }
        let stored = read_u32(bytes, 28);
        let computed = crc32fast::hash(&bytes[..28]);
        if stored != computed {
            return Err(HelloError::Checksum { stored, computed });
        }
        if read_u32(bytes, 24) != 0 {
            return Err(HelloError::Malformed {
                reason: "reserved bytes are not zero",
            });
        }
        let status = HelloStatus::from_u16(u16::from_le_bytes([bytes[6], bytes[7]])).ok_or(
            HelloError::Malformed {
                reason: "unknown status code",
            },
        )?;
        let mut cluster = [0u8; 8];
        cluster.copy_from_slice(&bytes[8..16]);
        Ok(Hello {
            version: u16::from_le_bytes([bytes[4], bytes[5]]),
            status,
            cluster_id: u64::from_le_bytes(cluster),
            node_id: read_u32(bytes, 16),
            max_frame_bytes: read_u32(bytes, 20),
        })
    }
}

/// Reads the header fields of an encoded frame handed to the network thread for sending,
/// without verifying checksums (they were just computed by `encode_frame`). `None` when the
/// buffer is not one whole frame.
pub(crate) fn outbound_header(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.len() < FRAME_HEADER_BYTES {
        return None;
    }
    let body_bytes = read_u32(frame, 0);
    if frame.len() != FRAME_HEADER_BYTES + body_bytes as usize {
        return None;
    }
    Some((body_bytes, read_u32(frame, 12)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_field() {
        let frame = encode_frame(7, 0xdead_beef, 3, b"hello");
        let decoded = Decoder::new(1024).decode_exact(&frame).unwrap();
        assert_eq!(decoded.kind, 7);
        assert_eq!(decoded.group, 0xdead_beef);
        assert_eq!(decoded.from, 3);
        assert_eq!(&decoded.body[..], b"hello");
    }

    #[test]
    fn frames_encoded_into_one_buffer_equal_single_encodes() {
        let mut buf = BytesMut::with_capacity(1024);
        let a = encode_frame_into(&mut buf, 1, 2, 3, b"first");
        let b = encode_frame_into(&mut buf, 4, 5, 6, b"second body");
        assert_eq!(a, encode_frame(1, 2, 3, b"first"));
        assert_eq!(b, encode_frame(4, 5, 6, b"second body"));
        assert!(buf.is_empty());
        // Past the reserved capacity it still works (a new allocation).
        let big = encode_frame_into(&mut buf, 7, 8, 9, &[0xab; 4096]);
        assert_eq!(
            Decoder::new(8192).decode_exact(&big).unwrap().body.len(),
            4096
        );
    }

    #[test]
    fn a_frame_written_in_place_equals_one_encoded_from_a_body() {
        let mut buf = BytesMut::with_capacity(64);
        start_frame(&mut buf);
        buf.put_slice(b"body in place");
        let in_place = finish_frame(&mut buf, 3, 9, 2);
        assert_eq!(in_place, encode_frame(3, 9, 2, b"body in place"));
        assert!(buf.is_empty());
        start_frame(&mut buf);
        let empty = finish_frame(&mut buf, 1, 0, 1);
        assert_eq!(empty, encode_frame(1, 0, 1, b""));
        assert_eq!(Decoder::new(0).decode_exact(&empty).unwrap().body.len(), 0);
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let frame = encode_frame(1, 1, 1, &[0u8; 100]);
        let mut buf = BytesMut::from(&frame[..FRAME_HEADER_BYTES]);
        let err = Decoder::new(99).decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Oversize {
                body_bytes: 100,
                max_frame_bytes: 99
            }
        );
    }

    /// The worked examples of `docs/WIRE.md`, byte for byte.
    #[test]
    fn wire_doc_examples() {
        let hello = Hello {
            version: 1,
            status: HelloStatus::Hello,
            cluster_id: 0xbe7c4a,
            node_id: 2,
            max_frame_bytes: 4 << 20,
        };
        let expected_hello: [u8; 32] = [
            0x50, 0x58, 0x52, 0x47, 0x01, 0x00, 0x00, 0x00, 0x4a, 0x7c, 0xbe, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x5b, 0x77, 0xb5, 0x9a,
        ];
        assert_eq!(hello.encode(), expected_hello);
        let expected_frame: [u8; 29] = [
            0x05, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x02, 0x00,
            0x00, 0x00, 0x86, 0xa6, 0x10, 0x36, 0x6f, 0x5e, 0x95, 0xab, 0x68, 0x65, 0x6c, 0x6c,
            0x6f,
        ];
        assert_eq!(&encode_frame(3, 7, 2, b"hello")[..], &expected_frame[..]);
    }

    #[test]
    fn hello_round_trip() {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            status: HelloStatus::RefusedCluster,
            cluster_id: u64::MAX - 5,
            node_id: 9,
            max_frame_bytes: 1 << 20,
        };
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
    }
}
