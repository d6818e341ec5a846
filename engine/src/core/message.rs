//! The messages replicas of one group exchange, and their byte codec.
//!
//! Owns: [`Message`] and its body layout (little-endian, fixed widths; the first byte is the
//! kind, the group id travels in the frame header). Must never panic or allocate beyond the
//! input's length on any input: `decode` bounds every count by the bytes that remain.
use super::wal_types::{Ballot, Instance};
use super::{PROMISE_SPAN_INSTANCES, VALUE_BYTES_MAX};
use bytes::{BufMut, Bytes};

/// One entry of a Promise: what the acceptor holds for an instance at or above the prepared one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromiseEntry {
    /// The instance.
    pub instance: Instance,
    /// The ballot the value was accepted with (`Ballot::ZERO` when `chosen` came via catch-up).
    pub ballot: Ballot,
    /// The acceptor knows this value is chosen.
    pub chosen: bool,
    /// The value.
    pub value: Bytes,
}

/// A protocol message of one group (docs/PROTOCOL.md#messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Phase 1a: promise `ballot` for `first` and every later instance.
    Prepare {
        /// The proposer's ballot.
        ballot: Ballot,
        /// The first instance the proposer does not know to be chosen.
        first: Instance,
    },
    /// Phase 1b (durable before it leaves): the promise and what the acceptor holds from `first`.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The `first` of the Prepare this answers (a leader continues phase 1 in chunks).
        first: Instance,
        /// The acceptor's first instance not yet applied.
        applied_next: Instance,
        /// The acceptor holds entries beyond the last one reported (the message's byte bound or
        /// `PROMISE_SPAN_INSTANCES` cut the report): the report covers `first ..= last entry`.
        truncated: bool,
        /// Accepted or chosen values at or above `first`, ascending.
        entries: Vec<PromiseEntry>,
    },
    /// Phase 2a: accept `value` at `instance`; carries the leader's applied point.
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// The instance.
        instance: Instance,
        /// The value (an encoded batch of commands).
        value: Bytes,
        /// Every instance below this is chosen (the leader's applied point).
        chosen_through: Instance,
    },
    /// Phase 2b (durable before it leaves): `instance` accepted with `ballot`.
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
        /// The instance.
        instance: Instance,
        /// crc32 of the accepted value: a stale reply never counts toward another value.
        value_crc: u32,
    },
    /// A Prepare or Accept with `rejected` lost to the acceptor's higher `promised`.
    Reject {
        /// The ballot that was refused.
        rejected: Ballot,
        /// The acceptor's promise (higher).
        promised: Ballot,
    },
    /// The leader's applied point and checksum (also its heartbeat).
    Commit {
        /// The leader's ballot.
        ballot: Ballot,
        /// Every instance below this is chosen.
        chosen_through: Instance,
        /// Rolling checksum of the chosen sequence through `chosen_through - 1` (0 if none).
        checksum: u32,
        /// A lease round of the leader (0: none): the followers answer it with a `CommitAck`
        /// that echoes it, and grant the leader their master lease when they may
        /// (docs/PROTOCOL.md#master-lease).
        lease: u64,
    },
    /// A learner asks for chosen values from `from` on.
    CatchupRequest {
        /// The first instance it lacks.
        from: Instance,
        /// A re-learning replica's request id (echoed in the reply; 0 for plain catch-up).
        request: u64,
        /// A re-learning replica needs every instance below this chosen: a leader that gets
        /// this fills the gap with no-ops when it has nothing else to propose (0: no need).
        until: Instance,
        /// The requester's window: at most this many values from `from` on (the answer may
        /// span several replies).
        entries_max: u32,
        /// At most this many value bytes in all the replies to this request together.
        bytes_max: u32,
    },
    /// Chosen values (consecutive from the request's `from`), and the sender's applied point.
    CatchupReply {
        /// The request this answers (0 when unsolicited or plain catch-up).
        request: u64,
        /// The sender's first instance not yet applied.
        applied_next: Instance,
        /// The highest instance the sender holds anything for (accepted, chosen or applied).
        high: Instance,
        /// The sender's log base: it serves no value below it (a replica behind it needs a
        /// checkpoint, docs/PROTOCOL.md#checkpoint-transfer).
        log_base: Instance,
        /// The sender is itself re-learning (its report covers only its intact records).
        relearning: bool,
        /// The sender re-learns because its whole state was lost (it holds nothing of its own).
        state_lost: bool,
        /// The sender's promised ballot (a re-learning replica promises at least this).
        promised: Ballot,
        /// Chosen values, ascending and consecutive.
        entries: Vec<(Instance, Bytes)>,
        /// One past the last value the answer to this request carries, over all its replies:
        /// the requester asks again from here (the sender stopped at its limits or its end).
        served_end: Instance,
        /// The sender's rolling checksum through the last entry (0 if none).
        checksum: u32,
    },
    /// A replica behind every value a peer serves asks for a checkpoint, from `offset` of its
    /// payload (a transfer resumes where it stopped).
    CheckpointRequest {
        /// The checkpoint being fetched (resuming), or `None` for the newest the peer has.
        instance: Option<Instance>,
        /// The payload offset to send from.
        offset: u64,
        /// The requester's applied point: a checkpoint below it is of no use.
        need: Instance,
    },
    /// Bytes of a checkpoint's payload from `offset` (`info: None`: the sender has none to
    /// offer now).
    CheckpointChunk {
        /// The checkpoint, or `None` when the sender has none above the request's `need`.
        info: Option<CheckpointInfo>,
        /// Where `data` starts in the payload.
        offset: u64,
        /// Payload bytes.
        data: Bytes,
        /// The group's configuration history at the checkpoint (docs/PROTOCOL.md#membership-change;
        /// empty: the cluster's initial configuration, never changed).
        configs: Bytes,
    },
    /// A follower's answer to a leader's `Commit` (its heartbeat) with check quorum on: the
    /// leader hears from its followers while idle (docs/PROTOCOL.md#leader-stickiness-and-check-quorum).
    CommitAck {
        /// The leader's ballot that this follower follows.
        ballot: Ballot,
        /// The lease round of the Commit this answers (0: a plain heartbeat answer).
        lease: u64,
        /// This follower granted the leader its master lease with this answer (it grants no
        /// other node until the grant ends, docs/PROTOCOL.md#master-lease).
        granted: bool,
    },
}

/// What a checkpoint holds, as a transfer names it (docs/PROTOCOL.md#checkpoint-transfer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CheckpointInfo {
    /// The state as of this applied instance (every instance up to it is applied).
    pub instance: Instance,
    /// The group's rolling checksum through `instance`.
    pub log_checksum: u32,
    /// Bytes of the state machine's image.
    pub payload_bytes: u64,
    /// crc32 of the whole image (the receiver checks it before installing).
    pub payload_crc: u32,
}

/// Bytes that are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("message truncated at byte {offset}")]
    Truncated {
        /// Where the missing field starts.
        offset: usize,
    },
    /// The kind byte is not one of ours.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A count or length beyond its limit or the input.
    #[error("{what} = {value} exceeds its limit at byte {offset}")]
    Limit {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// Where it was read.
        offset: usize,
    },
    /// A boolean byte other than 0 or 1.
    #[error("bad flag byte {value} at byte {offset}")]
    Flag {
        /// The byte.
        value: u8,
        /// Where it was read.
        offset: usize,
    },
    /// Bytes left after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// The largest kind byte in use (kinds are 1..=MESSAGE_KIND_MAX).
pub const MESSAGE_KIND_MAX: u8 = 11;

impl Message {
    /// The kind byte (first byte of the encoding; the network frame header repeats it).
    pub fn kind(&self) -> u8 {
        match self {
            Message::Prepare { .. } => 1,
            Message::Promise { .. } => 2,
            Message::Accept { .. } => 3,
            Message::Accepted { .. } => 4,
            Message::Reject { .. } => 5,
            Message::Commit { .. } => 6,
            Message::CatchupRequest { .. } => 7,
            Message::CatchupReply { .. } => 8,
            Message::CheckpointRequest { .. } => 9,
            Message::CheckpointChunk { .. } => 10,
            Message::CommitAck { .. } => 11,
        }
    }

    /// A short name, for traces and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Reject { .. } => "reject",
            Message::Commit { .. } => "commit",
            Message::CatchupRequest { .. } => "catchup-request",
            Message::CatchupReply { .. } => "catchup-reply",
            Message::CheckpointRequest { .. } => "checkpoint-request",
            Message::CheckpointChunk { .. } => "checkpoint-chunk",
            Message::CommitAck { .. } => "commit-ack",
        }
    }

    /// Appends the encoding (kind byte first) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u8(self.kind());
        self.encode_body_into(out);
    }

    /// Appends the body only (no kind byte), for a frame whose header carries the kind and
    /// group: `decode_body(msg.kind(), body)` reads it back.
    pub fn encode_body_into<B: BufMut>(&self, out: &mut B) {
        match self {
            Message::Prepare { ballot, first } => {
                put_ballot(out, *ballot);
                out.put_u64_le(first.0);
            }
            Message::Promise {
                ballot,
                first,
                applied_next,
                truncated,
                entries,
            } => {
                put_ballot(out, *ballot);
                out.put_u64_le(first.0);
                out.put_u64_le(applied_next.0);
                out.put_u8(u8::from(*truncated));
                out.put_u32_le(u32::try_from(entries.len()).expect("entries fit u32"));
                for entry in entries {
                    out.put_u64_le(entry.instance.0);
                    put_ballot(out, entry.ballot);
                    out.put_u8(u8::from(entry.chosen));
                    put_bytes(out, &entry.value);
                }
            }
            Message::Accept {
                ballot,
                instance,
                value,
                chosen_through,
            } => {
                put_ballot(out, *ballot);
                out.put_u64_le(instance.0);
                out.put_u64_le(chosen_through.0);
                put_bytes(out, value);
            }
            Message::Accepted {
                ballot,
                instance,
                value_crc,
            } => {
                put_ballot(out, *ballot);
                out.put_u64_le(instance.0);
                out.put_u32_le(*value_crc);
            }
            Message::Reject { rejected, promised } => {
                put_ballot(out, *rejected);
                put_ballot(out, *promised);
            }
            Message::Commit {
                ballot,
                chosen_through,
                checksum,
                lease,
            } => {
                put_ballot(out, *ballot);
                out.put_u64_le(chosen_through.0);
                out.put_u32_le(*checksum);
                out.put_u64_le(*lease);
            }
            Message::CatchupRequest {
                from,
                request,
                until,
                entries_max,
                bytes_max,
            } => {
                out.put_u64_le(from.0);
                out.put_u64_le(*request);
                out.put_u64_le(until.0);
                out.put_u32_le(*entries_max);
                out.put_u32_le(*bytes_max);
            }
            Message::CatchupReply {
                request,
                applied_next,
                high,
                log_base,
                relearning,
                state_lost,
                promised,
                entries,
                served_end,
                checksum,
            } => {
                out.put_u64_le(*request);
                out.put_u64_le(applied_next.0);
                out.put_u64_le(served_end.0);
                out.put_u64_le(high.0);
                out.put_u64_le(log_base.0);
                out.put_u8(u8::from(*relearning));
                out.put_u8(u8::from(*state_lost));
                put_ballot(out, *promised);
                out.put_u32_le(*checksum);
                out.put_u32_le(u32::try_from(entries.len()).expect("entries fit u32"));
                for (instance, value) in entries {
                    out.put_u64_le(instance.0);
                    put_bytes(out, value);
                }
            }
            Message::CheckpointRequest {
                instance,
                offset,
                need,
            } => {
                out.put_u8(u8::from(instance.is_some()));
                out.put_u64_le(instance.map_or(0, |i| i.0));
                out.put_u64_le(*offset);
                out.put_u64_le(need.0);
            }
            Message::CheckpointChunk {
                info,
                offset,
                data,
                configs,
            } => {
                out.put_u8(u8::from(info.is_some()));
                let info = info.unwrap_or(CheckpointInfo {
                    instance: Instance(0),
                    log_checksum: 0,
                    payload_bytes: 0,
                    payload_crc: 0,
                });
                out.put_u64_le(info.instance.0);
                out.put_u32_le(info.log_checksum);
                out.put_u64_le(info.payload_bytes);
                out.put_u32_le(info.payload_crc);
                out.put_u64_le(*offset);
                put_bytes(out, data);
                put_bytes(out, configs);
            }
            Message::CommitAck {
                ballot,
                lease,
                granted,
            } => {
                put_ballot(out, *ballot);
                out.put_u64_le(*lease);
                out.put_u8(u8::from(*granted));
            }
        }
    }

    /// The encoding (kind byte first).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }

    /// Parses one message (kind byte first); never panics, never allocates beyond what
    /// `bytes` can hold.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let (&kind, body) = bytes
            .split_first()
            .ok_or(DecodeError::Truncated { offset: 0 })?;
        Message::decode_body(kind, body)
    }

    /// Parses a body whose kind came separately (a frame header); same guarantees as `decode`.
    /// Offsets in errors count from the start of the body.
    pub fn decode_body(kind: u8, body: &[u8]) -> Result<Message, DecodeError> {
        let bytes = body;
        let mut reader = Reader { bytes, offset: 0 };
        let message = match kind {
            1 => Message::Prepare {
                ballot: reader.ballot()?,
                first: Instance(reader.u64()?),
            },
            2 => {
                let ballot = reader.ballot()?;
                let first = Instance(reader.u64()?);
                let applied_next = Instance(reader.u64()?);
                let truncated = reader.flag()?;
                // Each entry takes at least 8 + 12 + 1 + 4 bytes.
                let count = reader.count(25, PROMISE_SPAN_INSTANCES, "promise entries")?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    entries.push(PromiseEntry {
                        instance: Instance(reader.u64()?),
                        ballot: reader.ballot()?,
                        chosen: reader.flag()?,
                        value: reader.value()?,
                    });
                }
                Message::Promise {
                    ballot,
                    first,
                    applied_next,
                    truncated,
                    entries,
                }
            }
            3 => Message::Accept {
                ballot: reader.ballot()?,
                instance: Instance(reader.u64()?),
                chosen_through: Instance(reader.u64()?),
                value: reader.value()?,
            },
            4 => Message::Accepted {
                ballot: reader.ballot()?,
                instance: Instance(reader.u64()?),
                value_crc: reader.u32()?,
            },
            5 => Message::Reject {
                rejected: reader.ballot()?,
                promised: reader.ballot()?,
            },
            6 => Message::Commit {
                ballot: reader.ballot()?,
                chosen_through: Instance(reader.u64()?),
                checksum: reader.u32()?,
                lease: reader.u64()?,
            },
            7 => Message::CatchupRequest {
                from: Instance(reader.u64()?),
                request: reader.u64()?,
                until: Instance(reader.u64()?),
                entries_max: reader.u32()?,
                bytes_max: reader.u32()?,
            },
            8 => {
                let request = reader.u64()?;
                let applied_next = Instance(reader.u64()?);
                let served_end = Instance(reader.u64()?);
                let high = Instance(reader.u64()?);
                let log_base = Instance(reader.u64()?);
                let relearning = reader.flag()?;
                let state_lost = reader.flag()?;
                let promised = reader.ballot()?;
                let checksum = reader.u32()?;
                let count =
                    reader.count(12, super::CATCHUP_BATCH_MAX as u64, "catch-up entries")?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    entries.push((Instance(reader.u64()?), reader.value()?));
                }
                Message::CatchupReply {
                    request,
                    applied_next,
                    high,
                    log_base,
                    relearning,
                    state_lost,
                    promised,
                    entries,
                    served_end,
                    checksum,
                }
            }
            9 => {
                let some = reader.flag()?;
                let instance = Instance(reader.u64()?);
                Message::CheckpointRequest {
                    instance: some.then_some(instance),
                    offset: reader.u64()?,
                    need: Instance(reader.u64()?),
                }
            }
            10 => {
                let some = reader.flag()?;
                let info = CheckpointInfo {
                    instance: Instance(reader.u64()?),
                    log_checksum: reader.u32()?,
                    payload_bytes: reader.u64()?,
                    payload_crc: reader.u32()?,
                };
                let offset = reader.u64()?;
                let data = reader.value()?;
                let configs = reader.value()?;
                Message::CheckpointChunk {
                    info: some.then_some(info),
                    offset,
                    data,
                    configs,
                }
            }
            11 => Message::CommitAck {
                ballot: reader.ballot()?,
                lease: reader.u64()?,
                granted: reader.flag()?,
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        let left = bytes.len() - reader.offset;
        if left != 0 {
            return Err(DecodeError::Trailing(left));
        }
        Ok(message)
    }
}

/// Encoded bytes of a Promise (kind byte included) before its entries.
pub const PROMISE_HEADER_BYTES: usize = 1 + 12 + 8 + 8 + 1 + 4;
/// Encoded bytes of one Promise entry carrying a value of `value_len` bytes.
pub fn promise_entry_bytes(value_len: usize) -> usize {
    8 + 12 + 1 + 4 + value_len
}
/// Encoded bytes of a CatchupReply (kind byte included) before its entries.
pub const CATCHUP_REPLY_HEADER_BYTES: usize = 1 + 8 + 8 + 8 + 8 + 8 + 1 + 1 + 12 + 4 + 4;
/// Encoded bytes of a CheckpointChunk (kind byte included) before its data.
pub const CHECKPOINT_CHUNK_HEADER_BYTES: usize = 1 + 1 + 8 + 4 + 8 + 4 + 8 + 4 + 4;
/// Encoded bytes of one CatchupReply entry carrying a value of `value_len` bytes.
pub fn catchup_entry_bytes(value_len: usize) -> usize {
    8 + 4 + value_len
}

fn put_ballot<B: BufMut>(out: &mut B, ballot: Ballot) {
    out.put_u64_le(ballot.number);
    out.put_u32_le(ballot.node);
}

fn put_bytes<B: BufMut>(out: &mut B, bytes: &[u8]) {
    out.put_u32_le(u32::try_from(bytes.len()).expect("value fits u32"));
    out.put_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .offset
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(DecodeError::Truncated {
                offset: self.offset,
            })?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let slice = self.take(4)?;
        Ok(u32::from_le_bytes([slice[0], slice[1], slice[2], slice[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let low = u64::from(self.u32()?);
        let high = u64::from(self.u32()?);
        Ok(low | (high << 32))
    }

    fn ballot(&mut self) -> Result<Ballot, DecodeError> {
        Ok(Ballot {
            number: self.u64()?,
            node: self.u32()?,
        })
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        let offset = self.offset;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::Flag { value, offset }),
        }
    }

    /// A count whose items take at least `item_bytes_min` each and number at most `limit`.
    fn count(
        &mut self,
        item_bytes_min: usize,
        limit: u64,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let offset = self.offset;
        let count = self.u32()?;
        let remaining = (self.bytes.len() - self.offset) / item_bytes_min;
        if u64::from(count) > limit || count as usize > remaining {
            return Err(DecodeError::Limit {
                what,
                value: u64::from(count),
                offset,
            });
        }
        Ok(count as usize)
    }

    fn value(&mut self) -> Result<Bytes, DecodeError> {
        let offset = self.offset;
        let len = self.u32()?;
        if len > VALUE_BYTES_MAX {
            return Err(DecodeError::Limit {
                what: "value bytes",
                value: u64::from(len),
                offset,
            });
        }
        Ok(Bytes::copy_from_slice(self.take(len as usize)?))
    }
}
