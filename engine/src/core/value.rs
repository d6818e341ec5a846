//! The value of one instance: a batch of client commands.
//!
//! Owns: the value's byte layout (`u32` command count, the proposal's [`Identity`] as `u32`
//! node, `u64` incarnation, `u64` sequence, then per command `u32` length and bytes, all
//! little-endian) and the rolling checksum of the chosen sequence. Must never allocate more
//! than the input justifies (decoding is bounded by the input length).
use bytes::{BufMut, Bytes};

/// Bytes before the first command: the count and the identity.
pub const VALUE_HEADER_BYTES: usize = 4 + IDENTITY_BYTES;
const IDENTITY_BYTES: usize = 4 + 8 + 8;

/// Who proposed a value: the proposer's node, its incarnation (bumped at every start, so a
/// restart never reuses a sequence) and a per-node sequence. A proposal is reported Committed
/// only when the value chosen at its instance carries its identity (never by comparing
/// bytes: two proposers may batch byte-identical commands). Zero for no-ops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    /// The proposing node (0 for a no-op).
    pub node: u32,
    /// That node's incarnation when it proposed.
    pub incarnation: u64,
    /// A sequence unique within the incarnation.
    pub seq: u64,
}

impl Identity {
    /// True for the identity of a no-op (or of a value proposed without one).
    pub fn is_none(&self) -> bool {
        *self == Identity::default()
    }
}

/// The value of a no-op instance (a hole filled by a new leader): zero commands.
pub fn noop() -> Bytes {
    Bytes::from_static(&[0; VALUE_HEADER_BYTES])
}

/// Bytes a value of these commands takes.
pub fn encoded_len<'a>(commands: impl IntoIterator<Item = &'a Bytes>) -> usize {
    VALUE_HEADER_BYTES + commands.into_iter().map(|c| 4 + c.len()).sum::<usize>()
}

/// Encodes commands into one value with no identity (tests and tools).
pub fn encode<'a>(commands: impl IntoIterator<Item = &'a Bytes> + Clone) -> Bytes {
    encode_with(Identity::default(), commands)
}

/// The identity a value carries (None if it is too short to be a value).
pub fn identity(value: &[u8]) -> Option<Identity> {
    let bytes = value.get(4..VALUE_HEADER_BYTES)?;
    Some(Identity {
        node: u32::from_le_bytes(bytes[0..4].try_into().ok()?),
        incarnation: u64::from_le_bytes(bytes[4..12].try_into().ok()?),
        seq: u64::from_le_bytes(bytes[12..20].try_into().ok()?),
    })
}

/// Encodes commands into one value proposed as `identity`.
pub fn encode_with<'a>(
    identity: Identity,
    commands: impl IntoIterator<Item = &'a Bytes> + Clone,
) -> Bytes {
    let len = encoded_len(commands.clone());
    let mut out = Vec::with_capacity(len);
    let count = commands.clone().into_iter().count();
    out.put_u32_le(u32::try_from(count).expect("command count fits u32"));
    out.put_u32_le(identity.node);
    out.put_u64_le(identity.incarnation);
    out.put_u64_le(identity.seq);
    for command in commands {
        out.put_u32_le(u32::try_from(command.len()).expect("command length fits u32"));
        out.extend_from_slice(command);
    }
    assert_eq!(out.len(), len);
    Bytes::from(out)
}

/// A value whose bytes do not follow the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed value at byte {offset} of {len}")]
pub struct ValueError {
    /// Where decoding stopped.
    pub offset: usize,
    /// The value's length.
    pub len: usize,
}

/// Splits a value into its commands (zero-copy slices of `value`).
pub fn decode(value: &Bytes) -> Result<Vec<Bytes>, ValueError> {
    let error = |offset| ValueError {
        offset,
        len: value.len(),
    };
    let count = read_u32(value, 0).ok_or(error(0))? as usize;
    if value.len() < VALUE_HEADER_BYTES {
        return Err(error(4));
    }
    // Each command takes at least 4 bytes: refuse counts the input cannot hold.
    if count > (value.len() - VALUE_HEADER_BYTES) / 4 {
        return Err(error(0));
    }
    let mut commands = Vec::with_capacity(count);
    let mut offset = VALUE_HEADER_BYTES;
    for _ in 0..count {
        let len = read_u32(value, offset).ok_or(error(offset))? as usize;
        let start = offset + 4;
        let end = start.checked_add(len).ok_or(error(offset))?;
        if end > value.len() {
            return Err(error(offset));
        }
        commands.push(value.slice(start..end));
        offset = end;
    }
    if offset != value.len() {
        return Err(error(offset));
    }
    Ok(commands)
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let slice = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(slice.try_into().ok()?))
}

/// The rolling checksum after appending `(instance, value)` to a sequence whose checksum was
/// `previous` (PhxPaxos's runtime reconciliation: replicas compare it per instance).
pub fn roll_checksum(previous: u32, instance: u64, value: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&previous.to_le_bytes());
    hasher.update(&instance.to_le_bytes());
    hasher.update(value);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let commands = vec![
            Bytes::from_static(b"a"),
            Bytes::new(),
            Bytes::from_static(b"xyz"),
        ];
        let value = encode(&commands);
        assert_eq!(value.len(), encoded_len(&commands));
        assert_eq!(decode(&value).unwrap(), commands);
        assert_eq!(decode(&noop()).unwrap(), Vec::<Bytes>::new());
        assert!(decode(&Bytes::from_static(&[1, 0, 0])).is_err());
        assert!(
            decode(&Bytes::from_static(&[0, 0, 0, 0])).is_err(),
            "no identity"
        );
        let who = Identity {
            node: 3,
            incarnation: 9,
            seq: 77,
        };
        let with = encode_with(who, &commands);
        assert_eq!(identity(&with), Some(who));
        assert_eq!(decode(&with).unwrap(), commands);
        assert_eq!(identity(&noop()), Some(Identity::default()));
        assert!(decode(&Bytes::from_static(&[255, 255, 255, 255, 0, 0, 0, 0])).is_err());
        let mut trailing = value.to_vec();
        trailing.push(0);
        assert!(decode(&Bytes::from(trailing)).is_err());
    }

    #[test]
    fn checksum_depends_on_order() {
        let a = roll_checksum(roll_checksum(0, 0, b"a"), 1, b"b");
        let b = roll_checksum(roll_checksum(0, 0, b"b"), 1, b"a");
        assert_ne!(a, b);
    }
}
