//! Checkpoint files: one Paxos group's state-machine image as of an applied instance, streamed
//! into a chunked, checksummed container file and out of it again, locally or chunk by chunk to
//! a lagging replica. The byte layout and the publication protocol are in "Checkpoint files" of
//! `docs/WAL_FORMAT.md`.
//!
//! Owns: the container's bytes (header, `[len][crc][bytes]` chunks, trailer), its names
//! (`DIR/group-G/ckpt-<instance, 20 digits>.pxc`), publication (temp file, fsync, rename,
//! directory fsync), verification, listing, pruning and the resumable receiving side of a
//! transfer. Must never hold a whole image in memory (at most one chunk is buffered, and a chunk
//! is at most `CHUNK_BYTES_MAX`), never make a file visible under a checkpoint name before it is
//! complete and fsynced, and never panic or allocate more than one chunk on any file content.
use crate::types::{GroupId, Instance};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The first four bytes of every checkpoint file.
pub const MAGIC: [u8; 4] = *b"PXCK";
/// The first four bytes of a checkpoint file's trailer.
pub const TRAILER_MAGIC: [u8; 4] = *b"PXCT";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the fixed header.
pub const HEADER_BYTES: u64 = 64;
/// Bytes before each chunk's payload: `len u32`, `crc u32`.
pub const CHUNK_PREFIX_BYTES: u64 = 8;
/// Bytes of the trailer.
pub const TRAILER_BYTES: u64 = 32;
/// Payload bytes per chunk unless the writer asks for another size.
pub const CHUNK_BYTES_DEFAULT: u32 = 256 * 1024;
/// The largest chunk size a file may declare (bounds the one chunk a reader allocates).
pub const CHUNK_BYTES_MAX: u32 = 64 << 20;

/// Distinguishes temp files of writers of the same process.
static TEMP_SERIAL: AtomicU64 = AtomicU64::new(0);

/// What a checkpoint holds and how it is cut into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The Paxos group whose state machine this is.
    pub group: GroupId,
    /// The state as of this applied instance (every instance up to it is applied).
    pub instance: Instance,
    /// The engine's rolling checksum of the log at `instance` (opaque here).
    pub log_checksum: u32,
    /// Bytes of the state-machine image.
    pub payload_bytes: u64,
    /// Payload bytes of every chunk but the last (which holds 1..=`chunk_bytes`).
    pub chunk_bytes: u32,
    /// Number of chunks: `payload_bytes` divided by `chunk_bytes`, rounded up (0 when empty).
    pub chunks: u64,
}

impl CheckpointMeta {
    /// The payload length of chunk `index`, or `None` when `index >= chunks`.
    pub fn chunk_len(&self, index: u64) -> Option<u32> {
        if index >= self.chunks {
            return None;
        }
        let before = index.checked_mul(u64::from(self.chunk_bytes))?;
        let left = self.payload_bytes.checked_sub(before)?;
        Some(left.min(u64::from(self.chunk_bytes)) as u32)
    }

    /// The exact length of the complete file this describes (`None` if it does not fit a u64).
    pub fn file_bytes(&self) -> Option<u64> {
        self.chunks
            .checked_mul(CHUNK_PREFIX_BYTES)?
            .checked_add(self.payload_bytes)?
            .checked_add(HEADER_BYTES + TRAILER_BYTES)
    }

    /// Why the fields contradict each other, if they do.
    fn inconsistency(&self) -> Option<String> {
        if self.chunk_bytes == 0 || self.chunk_bytes > CHUNK_BYTES_MAX {
            return Some(format!(
                "chunk_bytes {} is outside 1..={CHUNK_BYTES_MAX}",
                self.chunk_bytes
            ));
        }
        let chunks = self.payload_bytes.div_ceil(u64::from(self.chunk_bytes));
        if chunks != self.chunks {
            return Some(format!(
                "{} chunks for {} payload bytes in chunks of {} (expected {chunks})",
                self.chunks, self.payload_bytes, self.chunk_bytes
            ));
        }
        if self.file_bytes().is_none() {
            return Some("the file would be larger than 2^64 bytes".into());
        }
        None
    }
}

/// What is wrong with a checkpoint file, or which operation on which path failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A system call failed.
    #[error("{op} failed on {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file does not start with `PXCK`.
    #[error("{path} is not a checkpoint file: bad magic {found:02x?} (expected \"PXCK\")")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// The header is intact but of a format version this build cannot read.
    #[error("{path}: unsupported checkpoint format version {version} (this build reads version {VERSION})")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u16,
    },
    /// The header's checksum does not match its bytes.
    #[error("{path}: header checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    HeaderChecksum {
        /// The file.
        path: PathBuf,
        /// The checksum stored in the header.
        expected: u32,
        /// The checksum of the header bytes.
        actual: u32,
    },
    /// The header passes its checksum but a field is impossible.
    #[error("{path}: bad header: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Which field and why.
        reason: String,
    },
    /// The file is shorter than a header.
    #[error(
        "{path}: truncated in the header: the file has {file_bytes} bytes, a header {HEADER_BYTES}"
    )]
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// Its length.
        file_bytes: u64,
    },
    /// The file ends before chunk `chunk` (or, after the last chunk, the trailer) is complete.
    #[error("{path}: truncated at chunk {chunk}: the file ends after {file_bytes} bytes, before chunk {chunk} (or the trailer in its place) is complete")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// How many complete chunks precede the cut.
        chunk: u64,
        /// The file's length.
        file_bytes: u64,
    },
    /// A chunk's length field (or the length of a received chunk) is not what the layout
    /// requires.
    #[error("{path}: chunk {chunk} length is {found} bytes, expected {expected}")]
    ChunkLength {
        /// The file.
        path: PathBuf,
        /// The chunk index.
        chunk: u64,
        /// The length found.
        found: u64,
        /// The length the chunk must have.
        expected: u64,
    },
    /// A chunk's bytes do not match its checksum (stored in the file, or sent by the sender).
    #[error("{path}: chunk {chunk} checksum mismatch (expected {expected:#010x}, computed {actual:#010x})")]
    ChunkChecksum {
        /// The file.
        path: PathBuf,
        /// The chunk index.
        chunk: u64,
        /// The checksum stored or sent.
        expected: u32,
        /// The checksum of the bytes.
        actual: u32,
    },
    /// A chunk index past the last chunk.
    #[error("{path}: chunk {chunk} is out of range (the checkpoint has {chunks} chunks)")]
    ChunkOutOfRange {
        /// The file.
        path: PathBuf,
        /// The index asked for.
        chunk: u64,
        /// The number of chunks.
        chunks: u64,
    },
    /// The trailer's checksum does not match its bytes.
    #[error(
        "{path}: trailer checksum mismatch (stored {expected:#010x}, computed {actual:#010x})"
    )]
    TrailerChecksum {
        /// The file.
        path: PathBuf,
        /// The checksum stored in the trailer.
        expected: u32,
        /// The checksum of the trailer bytes.
        actual: u32,
    },
    /// The trailer is intact but disagrees with the rest of the file.
    #[error("{path}: trailer mismatch: {what}: the trailer says {trailer}, the file has {found}")]
    TrailerMismatch {
        /// The file.
        path: PathBuf,
        /// What disagrees: "payload CRC", "payload bytes", "chunk count", "file length",
        /// "header checksum", "magic".
        what: &'static str,
        /// The trailer's value.
        trailer: u64,
        /// The value the rest of the file gives.
        found: u64,
    },
    /// The file's name (or its group directory's) names another checkpoint than its header.
    #[error("{path}: the name does not match the content: {reason}")]
    NameMismatch {
        /// The file.
        path: PathBuf,
        /// Which part disagrees.
        reason: String,
    },
    /// A file named like a checkpoint whose name cannot be parsed.
    #[error("{path}: not a checkpoint file name (expected ckpt-<instance as 20 digits>.pxc)")]
    BadName {
        /// The file.
        path: PathBuf,
    },
    /// A chunk size outside `1..=CHUNK_BYTES_MAX` was asked for.
    #[error("{path}: invalid chunk size {chunk_bytes} (must be 1..={CHUNK_BYTES_MAX})")]
    InvalidChunkBytes {
        /// The checkpoint that was to be written.
        path: PathBuf,
        /// The size asked for.
        chunk_bytes: u32,
    },
    /// A `CheckpointMeta` handed to a receiver contradicts itself.
    #[error("{path}: inconsistent checkpoint description: {reason}")]
    InvalidMeta {
        /// The checkpoint that was to be received.
        path: PathBuf,
        /// What contradicts what.
        reason: String,
    },
    /// A received chunk is not the next one.
    #[error("{path}: chunk {got} arrived out of order (the next chunk expected is {expected})")]
    OutOfOrder {
        /// The partial file.
        path: PathBuf,
        /// `next_chunk()`.
        expected: u64,
        /// The index received.
        got: u64,
    },
    /// `finish` of a receive before every chunk arrived.
    #[error("{path}: the receive is incomplete: {received} of {chunks} chunks")]
    Incomplete {
        /// The partial file.
        path: PathBuf,
        /// Chunks received.
        received: u64,
        /// Chunks of the checkpoint.
        chunks: u64,
    },
    /// An earlier write of this writer or receiver failed; what is on disk is unknown.
    #[error("{path}: an earlier write failed, so this checkpoint cannot be finished (drop it and start again)")]
    Failed {
        /// The temp or partial file.
        path: PathBuf,
    },
}

impl CheckpointError {
    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            CheckpointError::Io { path, .. }
            | CheckpointError::BadMagic { path, .. }
            | CheckpointError::UnsupportedVersion { path, .. }
            | CheckpointError::HeaderChecksum { path, .. }
            | CheckpointError::BadHeader { path, .. }
            | CheckpointError::TruncatedHeader { path, .. }
            | CheckpointError::Truncated { path, .. }
            | CheckpointError::ChunkLength { path, .. }
            | CheckpointError::ChunkChecksum { path, .. }
            | CheckpointError::ChunkOutOfRange { path, .. }
            | CheckpointError::TrailerChecksum { path, .. }
            | CheckpointError::TrailerMismatch { path, .. }
            | CheckpointError::NameMismatch { path, .. }
            | CheckpointError::BadName { path }
            | CheckpointError::InvalidChunkBytes { path, .. }
            | CheckpointError::InvalidMeta { path, .. }
            | CheckpointError::OutOfOrder { path, .. }
            | CheckpointError::Incomplete { path, .. }
            | CheckpointError::Failed { path } => path,
        }
    }

    /// Whether the error says the bytes are wrong (as opposed to a failed system call or a
    /// misuse of the API).
    pub fn is_corruption(&self) -> bool {
        !matches!(
            self,
            CheckpointError::Io { .. }
                | CheckpointError::InvalidChunkBytes { .. }
                | CheckpointError::InvalidMeta { .. }
                | CheckpointError::OutOfOrder { .. }
                | CheckpointError::Incomplete { .. }
                | CheckpointError::Failed { .. }
                | CheckpointError::ChunkOutOfRange { .. }
        )
    }

    /// The error as an `io::Error`: a system call's error keeps its kind, anything else is
    /// `InvalidData`; the `CheckpointError` is its inner error.
    fn into_io(self) -> io::Error {
        let kind = match &self {
            CheckpointError::Io { source, .. } => source.kind(),
            CheckpointError::Failed { .. } => io::ErrorKind::Other,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// The checksum of one chunk's payload bytes: crc32 (IEEE, `crc32fast`).
pub fn chunk_crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// `DIR/group-G`: where the checkpoints of `group` live.
pub fn group_dir(dir: &Path, group: GroupId) -> PathBuf {
    dir.join(format!("group-{}", group.0))
}

/// The file name of the checkpoint at `instance`, zero-padded so that name order is instance
/// order.
pub fn checkpoint_name(instance: Instance) -> String {
    format!("ckpt-{:020}.pxc", instance.0)
}

/// `DIR/group-G/ckpt-IIIIIIIIIIIIIIIIIIII.pxc`: where the checkpoint of `group` at `instance`
/// is published.
pub fn checkpoint_path(dir: &Path, group: GroupId, instance: Instance) -> PathBuf {
    group_dir(dir, group).join(checkpoint_name(instance))
}

/// Parses a checkpoint file name (`ckpt-` + 20 digits + `.pxc`) into its instance.
pub fn parse_checkpoint_name(name: &str) -> Option<Instance> {
    parse_padded(name.strip_prefix("ckpt-")?.strip_suffix(".pxc")?).map(Instance)
}

/// The partial file of a receive of the checkpoint at `instance` (in the group's directory).
fn receive_name(instance: Instance) -> String {
    format!(".recv-{:020}.pxc.part", instance.0)
}

fn parse_padded(digits: &str) -> Option<u64> {
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Parses `group-G` (G in canonical decimal form) into the group.
fn parse_group_dir_name(name: &str) -> Option<GroupId> {
    let digits = name.strip_prefix("group-")?;
    let group: u32 = digits.parse().ok()?;
    (group.to_string() == digits).then_some(GroupId(group))
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&bytes[at..at + 2]);
    u16::from_le_bytes(raw)
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// The fields of a header (the ones a `CheckpointMeta` takes from it, and its checksum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    group: GroupId,
    instance: Instance,
    log_checksum: u32,
    chunk_bytes: u32,
    crc: u32,
}

fn encode_header(
    group: GroupId,
    instance: Instance,
    log_checksum: u32,
    chunk_bytes: u32,
) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&(HEADER_BYTES as u16).to_le_bytes());
    h[8..12].copy_from_slice(&group.0.to_le_bytes());
    h[12..16].copy_from_slice(&chunk_bytes.to_le_bytes());
    h[16..24].copy_from_slice(&instance.0.to_le_bytes());
    h[24..28].copy_from_slice(&log_checksum.to_le_bytes());
    let crc = crc32fast::hash(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fn decode_header(path: &Path, h: &[u8; HEADER_BYTES as usize]) -> Result<Header, CheckpointError> {
    let path = || path.to_path_buf();
    if h[0..4] != MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(&h[0..4]);
        return Err(CheckpointError::BadMagic {
            path: path(),
            found,
        });
    }
    let stored = le_u32(h, 60);
    let actual = crc32fast::hash(&h[0..60]);
    if stored != actual {
        return Err(CheckpointError::HeaderChecksum {
            path: path(),
            expected: stored,
            actual,
        });
    }
    let version = le_u16(h, 4);
    if version != VERSION {
        return Err(CheckpointError::UnsupportedVersion {
            path: path(),
            version,
        });
    }
    let header_bytes = le_u16(h, 6);
    if u64::from(header_bytes) != HEADER_BYTES {
        return Err(CheckpointError::BadHeader {
            path: path(),
            reason: format!("header_bytes is {header_bytes}, version 1 has {HEADER_BYTES}"),
        });
    }
    let chunk_bytes = le_u32(h, 12);
    if chunk_bytes == 0 || chunk_bytes > CHUNK_BYTES_MAX {
        return Err(CheckpointError::BadHeader {
            path: path(),
            reason: format!("chunk_bytes {chunk_bytes} is outside 1..={CHUNK_BYTES_MAX}"),
        });
    }
    Ok(Header {
        group: GroupId(le_u32(h, 8)),
        instance: Instance(le_u64(h, 16)),
        log_checksum: le_u32(h, 24),
        chunk_bytes,
        crc: stored,
    })
}

/// The fields of a trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Trailer {
    header_crc: u32,
    chunks: u64,
    payload_bytes: u64,
    payload_crc: u32,
}

fn encode_trailer(t: &Trailer) -> [u8; TRAILER_BYTES as usize] {
    let mut b = [0u8; TRAILER_BYTES as usize];
    b[0..4].copy_from_slice(&TRAILER_MAGIC);
    b[4..8].copy_from_slice(&t.header_crc.to_le_bytes());
    b[8..16].copy_from_slice(&t.chunks.to_le_bytes());
    b[16..24].copy_from_slice(&t.payload_bytes.to_le_bytes());
    b[24..28].copy_from_slice(&t.payload_crc.to_le_bytes());
    let crc = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_trailer(
    path: &Path,
    b: &[u8; TRAILER_BYTES as usize],
) -> Result<Trailer, CheckpointError> {
    let stored = le_u32(b, 28);
    let actual = crc32fast::hash(&b[0..28]);
    if stored != actual {
        return Err(CheckpointError::TrailerChecksum {
            path: path.to_path_buf(),
            expected: stored,
            actual,
        });
    }
    if b[0..4] != TRAILER_MAGIC {
        return Err(CheckpointError::TrailerMismatch {
            path: path.to_path_buf(),
            what: "magic",
            trailer: u64::from(le_u32(b, 0)),
            found: u64::from(u32::from_le_bytes(TRAILER_MAGIC)),
        });
    }
    Ok(Trailer {
        header_crc: le_u32(b, 4),
        chunks: le_u64(b, 8),
        payload_bytes: le_u64(b, 16),
        payload_crc: le_u32(b, 24),
    })
}

fn meta_of(header: &Header, payload_bytes: u64, chunks: u64) -> CheckpointMeta {
    CheckpointMeta {
        group: header.group,
        instance: header.instance,
        log_checksum: header.log_checksum,
        payload_bytes,
        chunk_bytes: header.chunk_bytes,
        chunks,
    }
}

/// Checks a trailer that passed its own checksum against the header and the file length.
fn check_trailer(
    path: &Path,
    header: &Header,
    trailer: &Trailer,
    file_bytes: u64,
) -> Result<CheckpointMeta, CheckpointError> {
    let mismatch = |what, trailer, found| CheckpointError::TrailerMismatch {
        path: path.to_path_buf(),
        what,
        trailer,
        found,
    };
    if trailer.header_crc != header.crc {
        return Err(mismatch(
            "header checksum",
            u64::from(trailer.header_crc),
            u64::from(header.crc),
        ));
    }
    let chunks = trailer
        .payload_bytes
        .div_ceil(u64::from(header.chunk_bytes));
    if trailer.chunks != chunks {
        return Err(mismatch("chunk count", trailer.chunks, chunks));
    }
    let meta = meta_of(header, trailer.payload_bytes, trailer.chunks);
    match meta.file_bytes() {
        Some(expected) if expected == file_bytes => Ok(meta),
        Some(expected) => Err(mismatch("file length", expected, file_bytes)),
        None => Err(mismatch("file length", u64::MAX, file_bytes)),
    }
}

fn read_at(
    file: &mut File,
    path: &Path,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), CheckpointError> {
    file.seek(SeekFrom::Start(offset))
        .map_err(io_err("seek", path))?;
    file.read_exact(buf).map_err(io_err("read", path))
}

/// Reads and checks the header and the trailer: the layout of a complete file.
fn read_layout(
    file: &mut File,
    path: &Path,
    file_bytes: u64,
) -> Result<(Header, Trailer, CheckpointMeta), CheckpointError> {
    if file_bytes < HEADER_BYTES {
        return Err(CheckpointError::TruncatedHeader {
            path: path.to_path_buf(),
            file_bytes,
        });
    }
    let mut h = [0u8; HEADER_BYTES as usize];
    read_at(file, path, 0, &mut h)?;
    let header = decode_header(path, &h)?;
    if file_bytes >= HEADER_BYTES + TRAILER_BYTES {
        let mut t = [0u8; TRAILER_BYTES as usize];
        read_at(file, path, file_bytes - TRAILER_BYTES, &mut t)?;
        if let Ok(trailer) = decode_trailer(path, &t) {
            let meta = check_trailer(path, &header, &trailer, file_bytes)?;
            return Ok((header, trailer, meta));
        }
    }
    Err(diagnose(file, path, &header, file_bytes))
}

/// The file's last bytes are not a good trailer: walks the chunks from the header to say what
/// is wrong (a cut, a bad length field, a damaged trailer, bytes after the trailer).
fn diagnose(file: &mut File, path: &Path, header: &Header, file_bytes: u64) -> CheckpointError {
    let chunk_bytes = u64::from(header.chunk_bytes);
    let mut offset = HEADER_BYTES;
    let mut chunk = 0u64;
    let truncated = |chunk| CheckpointError::Truncated {
        path: path.to_path_buf(),
        chunk,
        file_bytes,
    };
    loop {
        let left = file_bytes - offset;
        if left < CHUNK_PREFIX_BYTES {
            return truncated(chunk);
        }
        let mut prefix = [0u8; CHUNK_PREFIX_BYTES as usize];
        if let Err(e) = read_at(file, path, offset, &mut prefix) {
            return e;
        }
        let len = u64::from(le_u32(&prefix, 0));
        let is_trailer = prefix[0..4] == TRAILER_MAGIC;
        if is_trailer || (left == TRAILER_BYTES && !(1..=chunk_bytes).contains(&len)) {
            if left < TRAILER_BYTES {
                return truncated(chunk);
            }
            let mut t = [0u8; TRAILER_BYTES as usize];
            if let Err(e) = read_at(file, path, offset, &mut t) {
                return e;
            }
            return match decode_trailer(path, &t) {
                Err(e) => e,
                Ok(trailer) => match check_trailer(path, header, &trailer, file_bytes) {
                    Err(e) => e,
                    // Unreachable in practice (the last bytes were not a good trailer).
                    Ok(_) => CheckpointError::TrailerMismatch {
                        path: path.to_path_buf(),
                        what: "file length",
                        trailer: offset + TRAILER_BYTES,
                        found: file_bytes,
                    },
                },
            };
        }
        if !(1..=chunk_bytes).contains(&len) {
            return CheckpointError::ChunkLength {
                path: path.to_path_buf(),
                chunk,
                found: len,
                expected: chunk_bytes,
            };
        }
        if left < CHUNK_PREFIX_BYTES + len {
            return truncated(chunk);
        }
        offset += CHUNK_PREFIX_BYTES + len;
        chunk += 1;
    }
}

/// Opens `path` (read-only), checks its header, trailer and length, and returns it with its
/// layout.
fn open_checked(path: &Path) -> Result<(File, Header, Trailer, CheckpointMeta), CheckpointError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let file_bytes = file.metadata().map_err(io_err("stat", path))?.len();
    let (header, trailer, meta) = read_layout(&mut file, path, file_bytes)?;
    Ok((file, header, trailer, meta))
}

/// Fsyncs a directory (after a rename or an unlink in it).
fn fsync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .map_err(io_err("open directory", dir))?
        .sync_all()
        .map_err(io_err("fsync directory", dir))
}

/// Creates `DIR/group-G` (and `DIR`) if needed; returns its path.
fn ensure_group_dir(dir: &Path, group: GroupId) -> Result<PathBuf, CheckpointError> {
    let gdir = group_dir(dir, group);
    fs::create_dir_all(&gdir).map_err(io_err("create directory", &gdir))?;
    Ok(gdir)
}

/// Writes the checkpoint of one group at one instance: `DIR/group-G/ckpt-<instance>.pxc`,
/// through a temp file `.ckpt-<instance>.<pid>-<n>.tmp` in the same directory. Feed it the
/// state machine's image through `std::io::Write`; it buffers at most one chunk and writes each
/// chunk as soon as it is full. Only `finish` publishes the checkpoint; dropping an unfinished
/// writer removes its temp file.
pub struct CheckpointWriter {
    file: Option<File>,
    temp_path: PathBuf,
    final_path: PathBuf,
    root: PathBuf,
    group_dir: PathBuf,
    header_crc: u32,
    meta: CheckpointMeta,
    buf: Vec<u8>,
    hasher: crc32fast::Hasher,
    failed: bool,
    published: bool,
}

impl CheckpointWriter {
    /// Starts writing the checkpoint of `group` at `instance` under `dir` (created if needed),
    /// in chunks of `CHUNK_BYTES_DEFAULT`.
    pub fn create(
        dir: &Path,
        group: GroupId,
        instance: Instance,
        log_checksum: u32,
    ) -> Result<Self, CheckpointError> {
        Self::with_chunk_bytes(dir, group, instance, log_checksum, CHUNK_BYTES_DEFAULT)
    }

    /// Like `create`, with chunks of `chunk_bytes` (1..=`CHUNK_BYTES_MAX`).
    pub fn with_chunk_bytes(
        dir: &Path,
        group: GroupId,
        instance: Instance,
        log_checksum: u32,
        chunk_bytes: u32,
    ) -> Result<Self, CheckpointError> {
        let final_path = checkpoint_path(dir, group, instance);
        if chunk_bytes == 0 || chunk_bytes > CHUNK_BYTES_MAX {
            return Err(CheckpointError::InvalidChunkBytes {
                path: final_path,
                chunk_bytes,
            });
        }
        let gdir = ensure_group_dir(dir, group)?;
        let serial = TEMP_SERIAL.fetch_add(1, Ordering::Relaxed);
        let temp_path = gdir.join(format!(
            ".ckpt-{:020}.{}-{serial}.tmp",
            instance.0,
            std::process::id()
        ));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(io_err("create", &temp_path))?;
        let header = encode_header(group, instance, log_checksum, chunk_bytes);
        if let Err(source) = file.write_all(&header) {
            drop(file);
            let _ = fs::remove_file(&temp_path);
            return Err(CheckpointError::Io {
                op: "write",
                path: temp_path,
                source,
            });
        }
        Ok(CheckpointWriter {
            file: Some(file),
            temp_path,
            final_path,
            root: dir.to_path_buf(),
            group_dir: gdir,
            header_crc: le_u32(&header, 60),
            meta: CheckpointMeta {
                group,
                instance,
                log_checksum,
                payload_bytes: 0,
                chunk_bytes,
                chunks: 0,
            },
            buf: Vec::new(),
            hasher: crc32fast::Hasher::new(),
            failed: false,
            published: false,
        })
    }

    /// Where `finish` publishes the checkpoint.
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Payload bytes written so far (including the buffered part of the current chunk).
    pub fn payload_bytes(&self) -> u64 {
        self.meta.payload_bytes + self.buf.len() as u64
    }

    fn write_file(&mut self, bytes: &[u8]) -> Result<(), CheckpointError> {
        let result = match self.file.as_mut() {
            Some(file) => file.write_all(bytes),
            None => Err(io::Error::other("the file is closed")),
        };
        result.map_err(|source| {
            self.failed = true;
            CheckpointError::Io {
                op: "write",
                path: self.temp_path.clone(),
                source,
            }
        })
    }

    /// Writes the buffered chunk (never an empty one).
    fn write_chunk(&mut self) -> Result<(), CheckpointError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let mut prefix = [0u8; CHUNK_PREFIX_BYTES as usize];
        prefix[0..4].copy_from_slice(&(buf.len() as u32).to_le_bytes());
        prefix[4..8].copy_from_slice(&chunk_crc(&buf).to_le_bytes());
        let written = self
            .write_file(&prefix)
            .and_then(|()| self.write_file(&buf));
        self.hasher.update(&buf);
        self.meta.payload_bytes += buf.len() as u64;
        self.meta.chunks += 1;
        self.buf = buf;
        self.buf.clear();
        written
    }

    /// Writes the last chunk and the trailer, fsyncs the file, renames it into place and fsyncs
    /// the group's directory and `dir`. Only after this does the checkpoint exist. Returns its
    /// path and description.
    pub fn finish(mut self) -> Result<(PathBuf, CheckpointMeta), CheckpointError> {
        if self.failed {
            return Err(CheckpointError::Failed {
                path: self.temp_path.clone(),
            });
        }
        self.write_chunk()?;
        let trailer = encode_trailer(&Trailer {
            header_crc: self.header_crc,
            chunks: self.meta.chunks,
            payload_bytes: self.meta.payload_bytes,
            payload_crc: self.hasher.clone().finalize(),
        });
        self.write_file(&trailer)?;
        if let Some(file) = self.file.take() {
            file.sync_all().map_err(io_err("fsync", &self.temp_path))?;
        }
        fs::rename(&self.temp_path, &self.final_path).map_err(io_err("rename", &self.temp_path))?;
        self.published = true;
        fsync_dir(&self.group_dir)?;
        fsync_dir(&self.root)?;
        Ok((self.final_path.clone(), self.meta))
    }
}

impl Write for CheckpointWriter {
    /// Takes at most what fills the current chunk; a full chunk is written to the file at once.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(CheckpointError::Failed {
                path: self.temp_path.clone(),
            }
            .into_io());
        }
        if data.is_empty() {
            return Ok(0);
        }
        let chunk_bytes = self.meta.chunk_bytes as usize;
        if self.buf.capacity() < chunk_bytes {
            self.buf.reserve_exact(chunk_bytes - self.buf.len());
        }
        let taken = (chunk_bytes - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..taken]);
        if self.buf.len() == chunk_bytes {
            self.write_chunk().map_err(CheckpointError::into_io)?;
        }
        Ok(taken)
    }

    /// Does nothing: every chunk but the last is full, so a partial chunk waits for more bytes
    /// or for `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("temp_path", &self.temp_path)
            .field("final_path", &self.final_path)
            .field("meta", &self.meta)
            .field("buffered_bytes", &self.buf.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.published {
            drop(self.file.take());
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// Reads a published checkpoint: its description, any chunk by index (for a transfer), or the
/// whole payload as a stream through `std::io::Read`. Every byte it returns has passed its
/// chunk's checksum; the streamed payload also passes the trailer's checks at its end.
pub struct CheckpointReader {
    file: File,
    path: PathBuf,
    meta: CheckpointMeta,
    payload_crc: u32,
    /// The next chunk the stream reads.
    next: u64,
    /// The stream's current chunk and how much of it was returned.
    buf: Vec<u8>,
    pos: usize,
    hasher: crc32fast::Hasher,
    streamed_bytes: u64,
}

impl CheckpointReader {
    /// Opens `path` and checks its header, its trailer and that the file length is the one they
    /// describe (the chunks are checked as they are read).
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let (file, _, trailer, meta) = open_checked(path)?;
        Ok(CheckpointReader {
            file,
            path: path.to_path_buf(),
            meta,
            payload_crc: trailer.payload_crc,
            next: 0,
            buf: Vec::new(),
            pos: 0,
            hasher: crc32fast::Hasher::new(),
            streamed_bytes: 0,
        })
    }

    /// What the checkpoint holds.
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The crc32 of the whole payload, from the trailer.
    pub fn payload_crc(&self) -> u32 {
        self.payload_crc
    }

    /// One chunk's payload bytes (`index < meta().chunks`), checked against its length and CRC.
    /// The sender of a transfer sends them with `chunk_crc` of them. Does not disturb the
    /// stream of `Read`.
    pub fn chunk(&mut self, index: u64) -> Result<Bytes, CheckpointError> {
        let mut buf = Vec::new();
        self.read_chunk_into(index, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// Reads chunk `index` into `buf` (replacing its content) and checks it.
    fn read_chunk_into(&mut self, index: u64, buf: &mut Vec<u8>) -> Result<(), CheckpointError> {
        buf.clear();
        let Some(expected) = self.meta.chunk_len(index) else {
            return Err(CheckpointError::ChunkOutOfRange {
                path: self.path.clone(),
                chunk: index,
                chunks: self.meta.chunks,
            });
        };
        // In range, and the file length was checked against the layout at open.
        let offset = HEADER_BYTES + index * (CHUNK_PREFIX_BYTES + u64::from(self.meta.chunk_bytes));
        let mut prefix = [0u8; CHUNK_PREFIX_BYTES as usize];
        read_at(&mut self.file, &self.path, offset, &mut prefix)?;
        let len = le_u32(&prefix, 0);
        if len != expected {
            return Err(CheckpointError::ChunkLength {
                path: self.path.clone(),
                chunk: index,
                found: u64::from(len),
                expected: u64::from(expected),
            });
        }
        buf.resize(len as usize, 0);
        self.file
            .read_exact(buf)
            .map_err(io_err("read", &self.path))?;
        let stored = le_u32(&prefix, 4);
        let actual = chunk_crc(buf);
        if stored != actual {
            buf.clear();
            return Err(CheckpointError::ChunkChecksum {
                path: self.path.clone(),
                chunk: index,
                expected: stored,
                actual,
            });
        }
        Ok(())
    }

    /// Checks the streamed payload against the trailer (after the last chunk).
    fn check_totals(&self, payload_crc: u32, payload_bytes: u64) -> Result<(), CheckpointError> {
        if payload_bytes != self.meta.payload_bytes {
            return Err(CheckpointError::TrailerMismatch {
                path: self.path.clone(),
                what: "payload bytes",
                trailer: self.meta.payload_bytes,
                found: payload_bytes,
            });
        }
        if payload_crc != self.payload_crc {
            return Err(CheckpointError::TrailerMismatch {
                path: self.path.clone(),
                what: "payload CRC",
                trailer: u64::from(self.payload_crc),
                found: u64::from(payload_crc),
            });
        }
        Ok(())
    }

    /// Reads every chunk and checks everything (independently of the stream).
    fn check_all(&mut self) -> Result<CheckpointMeta, CheckpointError> {
        let mut buf = Vec::new();
        let mut hasher = crc32fast::Hasher::new();
        let mut bytes = 0u64;
        for index in 0..self.meta.chunks {
            self.read_chunk_into(index, &mut buf)?;
            hasher.update(&buf);
            bytes += buf.len() as u64;
        }
        self.check_totals(hasher.finalize(), bytes)?;
        Ok(self.meta)
    }
}

impl std::fmt::Debug for CheckpointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointReader")
            .field("path", &self.path)
            .field("meta", &self.meta)
            .field("next_chunk", &self.next)
            .field("streamed_bytes", &self.streamed_bytes)
            .finish_non_exhaustive()
    }
}

impl Read for CheckpointReader {
    /// Streams the payload; an error (a chunk's or the trailer's check, or a failed read) is an
    /// `io::Error` of kind `InvalidData` (a failed system call keeps its kind) whose inner error
    /// is the `CheckpointError`. Reading again after an error repeats the check.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.buf.len() {
                let n = (self.buf.len() - self.pos).min(out.len());
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.next >= self.meta.chunks {
                self.check_totals(self.hasher.clone().finalize(), self.streamed_bytes)
                    .map_err(CheckpointError::into_io)?;
                return Ok(0);
            }
            let mut buf = std::mem::take(&mut self.buf);
            self.pos = 0;
            let read = self.read_chunk_into(self.next, &mut buf);
            self.buf = buf;
            read.map_err(CheckpointError::into_io)?;
            self.hasher.update(&self.buf);
            self.streamed_bytes += self.buf.len() as u64;
            self.next += 1;
        }
    }
}

/// Checks that a file's name (`ckpt-<instance>.pxc`) and its directory's (`group-G`), where
/// they are such names, agree with its header.
fn check_name(path: &Path, meta: &CheckpointMeta) -> Result<(), CheckpointError> {
    let mismatch = |reason: String| CheckpointError::NameMismatch {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(instance) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_checkpoint_name)
    {
        if instance != meta.instance {
            return Err(mismatch(format!(
                "the name says instance {instance}, the header {}",
                meta.instance
            )));
        }
    }
    if let Some(group) = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .and_then(parse_group_dir_name)
    {
        if group != meta.group {
            return Err(mismatch(format!(
                "the directory says group {group}, the header {}",
                meta.group
            )));
        }
    }
    Ok(())
}

/// Reads the whole file and makes every check: header, length, every chunk's length and CRC,
/// the trailer (chunk count, payload bytes, payload CRC), and that the file's name and group
/// directory, when they are checkpoint names, agree with the header.
pub fn verify(path: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let meta = CheckpointReader::open(path)?.check_all()?;
    check_name(path, &meta)?;
    Ok(meta)
}

/// What kind of file `list` found, and for a checkpoint, what verifying it found.
#[derive(Debug)]
pub enum ListedStatus {
    /// A published checkpoint (`ckpt-*.pxc`): its description, or what is wrong with it.
    Checkpoint(Result<CheckpointMeta, CheckpointError>),
    /// The temp file of a writer that has not finished (or crashed): not a checkpoint.
    Temp,
    /// The partial file of a receive in progress (or interrupted): not a checkpoint.
    PartialReceive,
}

/// One file found by `list`.
#[derive(Debug)]
pub struct Listed {
    /// The file.
    pub path: PathBuf,
    /// The group, from the directory's name.
    pub group: GroupId,
    /// The instance, from the file's name (`None` when it cannot be parsed).
    pub instance: Option<Instance>,
    /// What the file is.
    pub status: ListedStatus,
}

impl Listed {
    /// Whether it is a published checkpoint (valid or not).
    pub fn is_checkpoint(&self) -> bool {
        matches!(self.status, ListedStatus::Checkpoint(_))
    }

    /// Whether it is a checkpoint that failed verification.
    pub fn is_corrupt(&self) -> bool {
        matches!(self.status, ListedStatus::Checkpoint(Err(_)))
    }

    /// The description of a valid checkpoint.
    pub fn meta(&self) -> Option<&CheckpointMeta> {
        match &self.status {
            ListedStatus::Checkpoint(Ok(meta)) => Some(meta),
            _ => None,
        }
    }
}

/// The kinds of file a group directory holds, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FileKind {
    Checkpoint,
    Temp,
    PartialReceive,
}

fn classify(name: &str) -> Option<(FileKind, Option<Instance>)> {
    if name.starts_with("ckpt-") && name.ends_with(".pxc") {
        return Some((FileKind::Checkpoint, parse_checkpoint_name(name)));
    }
    if let Some(rest) = name.strip_prefix(".ckpt-") {
        if name.ends_with(".tmp") {
            let instance = rest.get(..20).and_then(parse_padded).map(Instance);
            return Some((FileKind::Temp, instance));
        }
    }
    if let Some(rest) = name.strip_prefix(".recv-") {
        if let Some(digits) = rest.strip_suffix(".pxc.part") {
            return Some((FileKind::PartialReceive, parse_padded(digits).map(Instance)));
        }
    }
    None
}

/// The files of one group directory that `classify` knows, sorted by instance; an absent
/// directory has none.
fn scan_group(gdir: &Path) -> Result<Vec<(FileKind, Option<Instance>, PathBuf)>, CheckpointError> {
    let entries = match fs::read_dir(gdir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read directory", gdir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", gdir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((kind, instance)) = classify(name) {
            found.push((kind, instance, entry.path()));
        }
    }
    found.sort_by(|a, b| (a.1, a.0, &a.2).cmp(&(b.1, b.0, &b.2)));
    Ok(found)
}

/// The checkpoints (by name) of one group, newest first.
fn checkpoints_newest_first(
    dir: &Path,
    group: GroupId,
) -> Result<Vec<(Instance, PathBuf)>, CheckpointError> {
    let mut found: Vec<(Instance, PathBuf)> = scan_group(&group_dir(dir, group))?
        .into_iter()
        .filter_map(|(kind, instance, path)| match (kind, instance) {
            (FileKind::Checkpoint, Some(instance)) => Some((instance, path)),
            _ => None,
        })
        .collect();
    found.reverse();
    Ok(found)
}

/// Every checkpoint file under `dir` (every `group-G` directory, in group order), oldest first
/// per group, each verified; temp files of writers and partial files of receives are listed
/// as such (never as checkpoints). Other files are not listed.
pub fn list(dir: &Path) -> Result<Vec<Listed>, CheckpointError> {
    let mut groups = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name();
        let Some(group) = name.to_str().and_then(parse_group_dir_name) else {
            continue;
        };
        if entry.path().is_dir() {
            groups.push(group);
        }
    }
    groups.sort();
    let mut listed = Vec::new();
    for group in groups {
        for (kind, instance, path) in scan_group(&group_dir(dir, group))? {
            let status = match kind {
                FileKind::Checkpoint if instance.is_none() => {
                    ListedStatus::Checkpoint(Err(CheckpointError::BadName { path: path.clone() }))
                }
                FileKind::Checkpoint => ListedStatus::Checkpoint(verify(&path)),
                FileKind::Temp => ListedStatus::Temp,
                FileKind::PartialReceive => ListedStatus::PartialReceive,
            };
            listed.push(Listed {
                path,
                group,
                instance,
                status,
            });
        }
    }
    Ok(listed)
}

/// The newest checkpoint of `group` under `dir` that passes `verify`: a corrupt newer one is
/// skipped (with a warning; `list` reports it). `None` when there is none.
pub fn newest_valid(
    dir: &Path,
    group: GroupId,
) -> Result<Option<(PathBuf, CheckpointMeta)>, CheckpointError> {
    for (_, path) in checkpoints_newest_first(dir, group)? {
        match verify(&path) {
            Ok(meta) => return Ok(Some((path, meta))),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "skipping a checkpoint that fails verification");
            }
        }
    }
    Ok(None)
}

/// Remembers the outcome of [`verify`] per checkpoint file (by path, length and modification
/// time), so that a server looking up the newest valid checkpoint on every peer's request
/// reads each file once, not once per request: a corrupt file is reported once and then
/// skipped, a valid one is not re-read. A file that changes is verified again.
#[derive(Debug, Default)]
pub struct VerifyCache {
    seen: std::collections::HashMap<PathBuf, (u64, std::time::SystemTime, Option<CheckpointMeta>)>,
    /// Files found corrupt (each counted once).
    pub corrupt_found: u64,
    /// Verifications done (each reads the whole file).
    pub verifications: u64,
}

/// Files a [`VerifyCache`] remembers at most (it forgets them all beyond this).
const VERIFY_CACHE_FILES_MAX: usize = 4096;

impl VerifyCache {
    /// The newest checkpoint of `group` under `dir` that passes [`verify`], as
    /// [`newest_valid`], verifying only files not seen before (or changed since).
    pub fn newest_valid(
        &mut self,
        dir: &Path,
        group: GroupId,
    ) -> Result<Option<(PathBuf, CheckpointMeta)>, CheckpointError> {
        if self.seen.len() > VERIFY_CACHE_FILES_MAX {
            self.seen.clear();
        }
        for (_, path) in checkpoints_newest_first(dir, group)? {
            let Ok(stat) = fs::metadata(&path) else {
                continue; // removed since the listing
            };
            let key = (stat.len(), stat.modified().unwrap_or(std::time::UNIX_EPOCH));
            let known = self
                .seen
                .get(&path)
                .filter(|(len, modified, _)| (*len, *modified) == key)
                .map(|(_, _, meta)| *meta);
            let meta = match known {
                Some(meta) => meta,
                None => {
                    self.verifications += 1;
                    let meta = match verify(&path) {
                        Ok(meta) => Some(meta),
                        Err(error) => {
                            self.corrupt_found += 1;
                            tracing::warn!(path = %path.display(), %error, "skipping a checkpoint that fails verification (not checked again until the file changes)");
                            None
                        }
                    };
                    self.seen.insert(path.clone(), (key.0, key.1, meta));
                    meta
                }
            };
            if let Some(meta) = meta {
                return Ok(Some((path, meta)));
            }
        }
        Ok(None)
    }
}

/// Keeps the newest `keep` valid checkpoints of `group` (at least one: the newest valid one is
/// never removed) and removes every checkpoint file older than the oldest one kept, valid or
/// not. Corrupt files newer than that stay (for `list` to report). Nothing is removed when no
/// checkpoint is valid. Returns how many files were removed.
pub fn prune(dir: &Path, group: GroupId, keep: usize) -> Result<u64, CheckpointError> {
    let keep = keep.max(1);
    let checkpoints = checkpoints_newest_first(dir, group)?;
    let mut valid = 0usize;
    let mut oldest_kept = None;
    for (index, (_, path)) in checkpoints.iter().enumerate() {
        if verify(path).is_ok() {
            valid += 1;
            oldest_kept = Some(index);
            if valid == keep {
                break;
            }
        }
    }
    let Some(oldest_kept) = oldest_kept else {
        return Ok(0);
    };
    let mut removed = 0u64;
    for (_, path) in &checkpoints[oldest_kept + 1..] {
        match fs::remove_file(path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", path)(e)),
        }
    }
    if removed > 0 {
        fsync_dir(&group_dir(dir, group))?;
    }
    Ok(removed)
}

/// The receiving side of a transfer: chunks arrive in order, each checked against the CRC the
/// sender sent, into `DIR/group-G/.recv-<instance>.pxc.part`. The partial file survives a
/// dropped receiver (or a crash): `open` again with the same description resumes after its
/// last good chunk. Only `finish` turns it into a checkpoint. One receive per group at a time.
#[derive(Debug)]
pub struct CheckpointReceiver {
    file: File,
    part_path: PathBuf,
    final_path: PathBuf,
    root: PathBuf,
    group_dir: PathBuf,
    meta: CheckpointMeta,
    header_crc: u32,
    next: u64,
    hasher: crc32fast::Hasher,
    failed: bool,
}

impl CheckpointReceiver {
    /// Opens (or resumes) the receive of the checkpoint `meta` describes under `dir`. A partial
    /// file of the same checkpoint (same header: group, instance, log checksum, chunk size) keeps
    /// its chunks up to the first one that is cut, has the wrong length for `meta` or fails its
    /// CRC; a partial file of anything else (another instance of the group, another header) is
    /// discarded.
    pub fn open(dir: &Path, meta: &CheckpointMeta) -> Result<Self, CheckpointError> {
        let final_path = checkpoint_path(dir, meta.group, meta.instance);
        if let Some(reason) = meta.inconsistency() {
            return Err(CheckpointError::InvalidMeta {
                path: final_path,
                reason,
            });
        }
        let gdir = ensure_group_dir(dir, meta.group)?;
        let part_path = gdir.join(receive_name(meta.instance));
        for (kind, _, path) in scan_group(&gdir)? {
            if kind == FileKind::PartialReceive && path != part_path {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &path)(e)),
                }
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(io_err("open", &part_path))?;
        let header = encode_header(
            meta.group,
            meta.instance,
            meta.log_checksum,
            meta.chunk_bytes,
        );
        let mut hasher = crc32fast::Hasher::new();
        let (next, end) = resume_point(&mut file, &part_path, &header, meta, &mut hasher)?;
        if next == 0 && end == 0 {
            file.set_len(0).map_err(io_err("truncate", &part_path))?;
            file.seek(SeekFrom::Start(0))
                .map_err(io_err("seek", &part_path))?;
            file.write_all(&header)
                .map_err(io_err("write", &part_path))?;
        } else {
            file.set_len(end).map_err(io_err("truncate", &part_path))?;
            file.seek(SeekFrom::Start(end))
                .map_err(io_err("seek", &part_path))?;
        }
        Ok(CheckpointReceiver {
            file,
            part_path,
            final_path,
            root: dir.to_path_buf(),
            group_dir: gdir,
            meta: *meta,
            header_crc: le_u32(&header, 60),
            next,
            hasher,
            failed: false,
        })
    }

    /// The index of the chunk `accept` takes next (the number of chunks held).
    pub fn next_chunk(&self) -> u64 {
        self.next
    }

    /// What is being received.
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// The partial file.
    pub fn part_path(&self) -> &Path {
        &self.part_path
    }

    /// Appends chunk `index`, which must be `next_chunk()`, after checking its length against
    /// the description and its bytes against `crc` (the sender's `chunk_crc`). A refused chunk
    /// changes nothing.
    pub fn accept(&mut self, index: u64, bytes: &[u8], crc: u32) -> Result<(), CheckpointError> {
        if self.failed {
            return Err(CheckpointError::Failed {
                path: self.part_path.clone(),
            });
        }
        let Some(expected) = self.meta.chunk_len(index) else {
            return Err(CheckpointError::ChunkOutOfRange {
                path: self.part_path.clone(),
                chunk: index,
                chunks: self.meta.chunks,
            });
        };
        if index != self.next {
            return Err(CheckpointError::OutOfOrder {
                path: self.part_path.clone(),
                expected: self.next,
                got: index,
            });
        }
        if bytes.len() as u64 != u64::from(expected) {
            return Err(CheckpointError::ChunkLength {
                path: self.part_path.clone(),
                chunk: index,
                found: bytes.len() as u64,
                expected: u64::from(expected),
            });
        }
        let actual = chunk_crc(bytes);
        if actual != crc {
            return Err(CheckpointError::ChunkChecksum {
                path: self.part_path.clone(),
                chunk: index,
                expected: crc,
                actual,
            });
        }
        let mut prefix = [0u8; CHUNK_PREFIX_BYTES as usize];
        prefix[0..4].copy_from_slice(&expected.to_le_bytes());
        prefix[4..8].copy_from_slice(&crc.to_le_bytes());
        if let Err(source) = self
            .file
            .write_all(&prefix)
            .and_then(|()| self.file.write_all(bytes))
        {
            // What reached the file is unknown; a new `open` finds the last good chunk.
            self.failed = true;
            return Err(CheckpointError::Io {
                op: "write",
                path: self.part_path.clone(),
                source,
            });
        }
        self.hasher.update(bytes);
        self.next += 1;
        Ok(())
    }

    /// After the last chunk: appends the trailer, fsyncs, verifies the whole file, renames it to
    /// its checkpoint name and fsyncs the directories. Returns the checkpoint's path. A file
    /// that fails verification is removed (the receive must start again).
    pub fn finish(mut self) -> Result<PathBuf, CheckpointError> {
        if self.failed {
            return Err(CheckpointError::Failed {
                path: self.part_path,
            });
        }
        if self.next != self.meta.chunks {
            return Err(CheckpointError::Incomplete {
                path: self.part_path,
                received: self.next,
                chunks: self.meta.chunks,
            });
        }
        let trailer = encode_trailer(&Trailer {
            header_crc: self.header_crc,
            chunks: self.meta.chunks,
            payload_bytes: self.meta.payload_bytes,
            payload_crc: self.hasher.finalize(),
        });
        self.file
            .write_all(&trailer)
            .map_err(io_err("write", &self.part_path))?;
        self.file
            .sync_all()
            .map_err(io_err("fsync", &self.part_path))?;
        drop(self.file);
        let checked = CheckpointReader::open(&self.part_path)
            .and_then(|mut reader| reader.check_all())
            .and_then(|found| {
                if found == self.meta {
                    Ok(())
                } else {
                    Err(CheckpointError::InvalidMeta {
                        path: self.part_path.clone(),
                        reason: format!(
                            "the received file describes {found:?}, the sender {:?}",
                            self.meta
                        ),
                    })
                }
            });
        if let Err(error) = checked {
            let _ = fs::remove_file(&self.part_path);
            return Err(error);
        }
        fs::rename(&self.part_path, &self.final_path).map_err(io_err("rename", &self.part_path))?;
        fsync_dir(&self.group_dir)?;
        fsync_dir(&self.root)?;
        Ok(self.final_path)
    }
}

/// Where a receive resumes in an existing partial file: `(next chunk, byte offset after it)`;
/// `(0, 0)` when the file must be started afresh (empty, or another checkpoint's).
fn resume_point(
    file: &mut File,
    path: &Path,
    header: &[u8; HEADER_BYTES as usize],
    meta: &CheckpointMeta,
    hasher: &mut crc32fast::Hasher,
) -> Result<(u64, u64), CheckpointError> {
    let file_bytes = file.metadata().map_err(io_err("stat", path))?.len();
    if file_bytes < HEADER_BYTES {
        return Ok((0, 0));
    }
    let mut found = [0u8; HEADER_BYTES as usize];
    read_at(file, path, 0, &mut found)?;
    if found != *header {
        return Ok((0, 0));
    }
    let mut offset = HEADER_BYTES;
    let mut next = 0u64;
    let mut buf = Vec::new();
    while let Some(expected) = meta.chunk_len(next) {
        let expected = u64::from(expected);
        if file_bytes - offset < CHUNK_PREFIX_BYTES + expected {
            break;
        }
        let mut prefix = [0u8; CHUNK_PREFIX_BYTES as usize];
        read_at(file, path, offset, &mut prefix)?;
        if u64::from(le_u32(&prefix, 0)) != expected {
            break;
        }
        buf.clear();
        buf.resize(expected as usize, 0);
        file.read_exact(&mut buf).map_err(io_err("read", path))?;
        if chunk_crc(&buf) != le_u32(&prefix, 4) {
            break;
        }
        hasher.update(&buf);
        offset += CHUNK_PREFIX_BYTES + expected;
        next += 1;
    }
    Ok((next, offset))
}
