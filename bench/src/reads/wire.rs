//! The reads benchmark's client protocol over loopback TCP (one request outstanding per
//! connection), and the key-value commands its state machine applies.
//!
//! A request is `op u8 | group u32 | key u64 | value length u32 | value` (little endian); a
//! response is `status u8 | aux u32 | length u32 | payload`, where `aux` is the leader hint
//! (node id, 0 unknown) of a `NotLeader` answer. A log command (proposed) is
//! `op u8 | key u64 | value`; a lease or read-index query is the key alone (8 bytes).
//!
//! Owns: the byte layouts and the preload values both sides agree on. Never: does I/O.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of a request's fixed part.
pub const REQUEST_HEAD: usize = 17;
/// Bytes of a response's fixed part.
pub const RESPONSE_HEAD: usize = 9;
/// Largest value a request or response may carry (a bad length is refused, not allocated).
pub const VALUE_BYTES_MAX: usize = 16 << 20;

/// What a request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// The baseline: the node process's own map, without the engine.
    Baseline,
    /// `Node::read(.., ReadMode::Lease)`.
    Lease,
    /// `Node::read(.., ReadMode::Index)`.
    Index,
    /// A get proposed as a command and answered by `apply` (through the log).
    LogRead,
    /// A put proposed as a command.
    Put,
}

impl Op {
    /// Every op, in wire order.
    pub const ALL: [Op; 5] = [Op::Baseline, Op::Lease, Op::Index, Op::LogRead, Op::Put];

    fn code(self) -> u8 {
        match self {
            Op::Baseline => 0,
            Op::Lease => 1,
            Op::Index => 2,
            Op::LogRead => 3,
            Op::Put => 4,
        }
    }

    fn of(code: u8) -> Option<Op> {
        Op::ALL.get(usize::from(code)).copied()
    }
}

/// A decoded request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// What it asks.
    pub op: Op,
    /// The group.
    pub group: u32,
    /// The key.
    pub key: u64,
    /// Bytes of value that follow the head.
    pub value_bytes: usize,
}

/// Appends a request to `out`.
pub fn encode_request(out: &mut Vec<u8>, op: Op, group: u32, key: u64, value: &[u8]) {
    out.push(op.code());
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// Decodes a request head.
pub fn decode_request_head(head: &[u8; REQUEST_HEAD]) -> Result<RequestHead, String> {
    let op = Op::of(head[0]).ok_or_else(|| format!("unknown op {}", head[0]))?;
    let group = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
    let key = u64::from_le_bytes(head[5..13].try_into().expect("8 bytes"));
    let value_bytes = u32::from_le_bytes(head[13..17].try_into().expect("4 bytes")) as usize;
    if value_bytes > VALUE_BYTES_MAX {
        return Err(format!("a value of {value_bytes} bytes is too large"));
    }
    Ok(RequestHead {
        op,
        group,
        key,
        value_bytes,
    })
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Answered; the payload is the value (empty for a put or a missing key).
    Ok,
    /// This node does not lead the group; `aux` names the leader (0: unknown).
    NotLeader,
    /// A queue was full; nothing was done.
    Overloaded,
    /// Any other error (the payload is its text).
    Failed,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::NotLeader => 1,
            Status::Overloaded => 2,
            Status::Failed => 3,
        }
    }

    fn of(code: u8) -> Option<Status> {
        [
            Status::Ok,
            Status::NotLeader,
            Status::Overloaded,
            Status::Failed,
        ]
        .get(usize::from(code))
        .copied()
    }
}

/// Appends a response to `out`.
pub fn encode_response(out: &mut Vec<u8>, status: Status, aux: u32, payload: &[u8]) {
    out.push(status.code());
    out.extend_from_slice(&aux.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes a response head: status, aux, payload length.
pub fn decode_response_head(head: &[u8; RESPONSE_HEAD]) -> Result<(Status, u32, usize), String> {
    let status = Status::of(head[0]).ok_or_else(|| format!("unknown status {}", head[0]))?;
    let aux = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes")) as usize;
    if len > VALUE_BYTES_MAX {
        return Err(format!("a payload of {len} bytes is too large"));
    }
    Ok((status, aux, len))
}

/// A log command: a put of `value` under `key`.
pub fn put_command(key: u64, value: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(9 + value.len());
    b.put_u8(Op::Put.code());
    b.put_u64_le(key);
    b.put_slice(value);
    b.freeze()
}

/// A log command: a get of `key` (its result is the value).
pub fn get_command(key: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(9);
    b.put_u8(Op::LogRead.code());
    b.put_u64_le(key);
    b.freeze()
}

/// A decoded log command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCommand {
    /// Store the value under the key.
    Put(u64, Bytes),
    /// Answer the key's value.
    Get(u64),
}

/// Decodes a log command (`None`: not one of ours; applied as a no-op).
pub fn decode_command(command: &Bytes) -> Option<KvCommand> {
    if command.len() < 9 {
        return None;
    }
    let key = u64::from_le_bytes(command[1..9].try_into().expect("8 bytes"));
    match Op::of(command[0])? {
        Op::Put => Some(KvCommand::Put(key, command.slice(9..))),
        Op::LogRead if command.len() == 9 => Some(KvCommand::Get(key)),
        _ => None,
    }
}

/// The key of a lease or read-index query.
pub fn decode_query(query: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(query.try_into().ok()?))
}

/// The value the benchmark preloads (and puts) under `key` of `group`: `value_bytes` bytes
/// derived from both, so that a wrong answer is visible.
pub fn preload_value(group: u32, key: u64, value_bytes: usize) -> Bytes {
    let seed = (u64::from(group) << 40) ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let pattern = seed.to_le_bytes();
    Bytes::from(
        (0..value_bytes)
            .map(|i| pattern[i % 8] ^ (i / 8) as u8)
            .collect::<Vec<u8>>(),
    )
}

#[cfg(test)]
mod tests {
    //! Proves that requests, responses and log commands survive encoding, that bad codes and
    //! lengths are refused, and that preload values differ by key and group.
    use super::*;

    #[test]
    fn requests_round_trip() {
        for op in Op::ALL {
            let mut out = Vec::new();
            encode_request(&mut out, op, 99, 1 << 50, b"abc");
            assert_eq!(out.len(), REQUEST_HEAD + 3);
            let head: [u8; REQUEST_HEAD] = out[..REQUEST_HEAD].try_into().unwrap();
            let h = decode_request_head(&head).unwrap();
            assert_eq!((h.op, h.group, h.key, h.value_bytes), (op, 99, 1 << 50, 3));
        }
        let mut bad = [0u8; REQUEST_HEAD];
        bad[0] = 9;
        assert!(decode_request_head(&bad).is_err());
        bad[0] = 0;
        bad[13..17].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_request_head(&bad).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let mut out = Vec::new();
        encode_response(&mut out, Status::NotLeader, 3, b"");
        let head: [u8; RESPONSE_HEAD] = out[..RESPONSE_HEAD].try_into().unwrap();
        assert_eq!(
            decode_response_head(&head).unwrap(),
            (Status::NotLeader, 3, 0)
        );
        let mut bad = head;
        bad[0] = 7;
        assert!(decode_response_head(&bad).is_err());
    }

    #[test]
    fn commands_round_trip() {
        let v = preload_value(4, 17, 100);
        assert_eq!(v.len(), 100);
        assert_ne!(v, preload_value(4, 18, 100));
        assert_ne!(v, preload_value(5, 17, 100));
        assert_eq!(
            decode_command(&put_command(17, &v)),
            Some(KvCommand::Put(17, v))
        );
        assert_eq!(decode_command(&get_command(8)), Some(KvCommand::Get(8)));
        assert_eq!(decode_command(&Bytes::from_static(b"short")), None);
        assert_eq!(decode_query(&8u64.to_le_bytes()), Some(8));
        assert_eq!(decode_query(b"123"), None);
    }
}
