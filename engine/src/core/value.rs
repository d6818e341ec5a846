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

/// The command count that marks a membership-change value (docs/PROTOCOL.md#membership-change):
/// the identity follows as in any value, then `u32` voter count, the voters (`u32` each),
/// `u32` follower count and the followers. It carries no command for the state machine.
pub const CONFIG_MARKER: u32 = u32::MAX;

/// Most nodes a membership-change value may name (voters and followers together).
pub const CONFIG_NODES_MAX: usize = 64;

/// Encodes a membership change to `voters` and `followers`, proposed as `identity`.
pub fn encode_config(identity: Identity, voters: &[u32], followers: &[u32]) -> Bytes {
    let mut out = Vec::with_capacity(VALUE_HEADER_BYTES + 8 + 4 * (voters.len() + followers.len()));
    out.put_u32_le(CONFIG_MARKER);
    out.put_u32_le(identity.node);
    out.put_u64_le(identity.incarnation);
    out.put_u64_le(identity.seq);
    for list in [voters, followers] {
        out.put_u32_le(u32::try_from(list.len()).expect("node count fits u32"));
        for node in list {
            out.put_u32_le(*node);
        }
    }
    Bytes::from(out)
}

/// The voters and followers a membership-change value names (None when the value is not one,
/// or does not follow the layout).
pub fn config(value: &[u8]) -> Option<(Vec<u32>, Vec<u32>)> {
    if read_u32(value, 0)? != CONFIG_MARKER || value.len() < VALUE_HEADER_BYTES {
        return None;
    }
    let mut offset = VALUE_HEADER_BYTES;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let count = read_u32(value, offset)? as usize;
        offset += 4;
        if count > CONFIG_NODES_MAX {
            return None;
        }
        for _ in 0..count {
            list.push(read_u32(value, offset)?);
            offset += 4;
        }
    }
    if offset != value.len() {
        return None;
    }
    let [voters, followers] = lists;
    Some((voters, followers))
}

/// Splits a value into its commands (zero-copy slices of `value`). A membership-change value
/// has none.
pub fn decode(value: &Bytes) -> Result<Vec<Bytes>, ValueError> {
    let error = |offset| ValueError {
        offset,
        len: value.len(),
    };
    let count = read_u32(value, 0).ok_or(error(0))? as usize;
    if value.len() < VALUE_HEADER_BYTES {
        return Err(error(4));
    }
    if count == CONFIG_MARKER as usize {
        return match config(value) {
            Some(_) => Ok(Vec::new()),
            None => Err(error(VALUE_HEADER_BYTES)),
        };
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
    fn a_membership_change_round_trips_and_carries_no_command() {
        let who = Identity {
            node: 2,
            incarnation: 5,
            seq: 11,
        };
        let value = encode_config(who, &[1, 2, 4], &[3]);
        assert_eq!(config(&value), Some((vec![1, 2, 4], vec![3])));
        assert_eq!(identity(&value), Some(who));
        assert_eq!(decode(&value).unwrap(), Vec::<Bytes>::new());
        assert_eq!(config(&encode(&[Bytes::from_static(b"x")])), None);
        assert_eq!(config(&noop()), None);
        let mut cut = value.to_vec();
        cut.pop();
        assert_eq!(config(&cut), None);
        assert!(decode(&Bytes::from(cut)).is_err());
        let mut long = value.to_vec();
        long.push(0);
        assert_eq!(config(&long), None);
    }

    #[test]
    fn checksum_depends_on_order() {
        let a = roll_checksum(roll_checksum(0, 0, b"a"), 1, b"b");
        let b = roll_checksum(roll_checksum(0, 0, b"b"), 1, b"a");
        assert_ne!(a, b);
    }
}
