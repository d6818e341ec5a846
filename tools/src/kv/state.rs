//! The replicated key-value state machine of one group: commands, their results, the client
//! session table that makes a retried request apply at most once, the rolling digest of the
//! applied sequence, and the snapshot file that makes its checkpoint real. The same snapshot
//! bytes are what `StateMachine::snapshot` streams out and `restore` reads back (never a whole
//! image in memory), so a group can be rebuilt from another replica's snapshot.
//!
//! Owns: the map and the session table of one group, `DATA_DIR/kv/group-G.snap`, the group's
//! published [`GroupView`]. Never: reports a checkpoint instance that is not in a snapshot file
//! already fsynced (file and directory), never retries a failed fsync (the group stops taking
//! snapshots and publishes the error, which ends the node process), and never decides anything
//! (such as which session to evict) from anything but the applied log, so every replica holds
//! the same state after the same instances.

use bytes::Bytes;
use paxring_engine::runtime::StateMachine;
use paxring_wal::{GroupId, Instance};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::value::Value;

/// One command of the KV store, as proposed to a group's log: a JSON object (as earlier builds
/// wrote every command) or the binary form (see [`Command::encode_for_log`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Command {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Value,
    },
    /// Reads `key` (through the log, so the read is linearizable).
    Get {
        /// The key.
        key: String,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Sets `key` to `new` only if its current value is `expected` (`None`: the key is absent).
    Cas {
        /// The key.
        key: String,
        /// The value the key must hold (absent when `None`).
        expected: Option<Value>,
        /// The value to store when it does.
        new: Value,
    },
}

/// The first byte of a command in the binary form (JSON text never starts with it).
const BINARY_MAGIC: u8 = 0xb7;
/// The binary form's version (its second byte).
const BINARY_VERSION: u8 = 1;
/// Flag bit: a session (client u64 LE, seq u64 LE) follows the flags byte.
const BINARY_FLAG_SESSION: u8 = 1;

/// Bytes a command may hold beyond its key and values: the runtime's own 16 bytes per command
/// plus at most 48 of the binary form's header (magic, version, op, flags, session, lengths).
pub const COMMAND_OVERHEAD_BYTES: usize = 64;

/// The most bytes of key and values together one command may hold on a node whose
/// `batch_bytes_max` is `batch_bytes_max` (the client protocol's command limit).
pub fn command_bytes_max(batch_bytes_max: u32) -> usize {
    (batch_bytes_max as usize).saturating_sub(COMMAND_OVERHEAD_BYTES)
}

impl Command {
    /// The key the command is about.
    pub fn key(&self) -> &str {
        match self {
            Command::Put { key, .. }
            | Command::Get { key }
            | Command::Delete { key }
            | Command::Cas { key, .. } => key,
        }
    }

    /// The command's `op` name: put, get, delete or cas.
    pub fn op_name(&self) -> &'static str {
        match self {
            Command::Put { .. } => "put",
            Command::Get { .. } => "get",
            Command::Delete { .. } => "delete",
            Command::Cas { .. } => "cas",
        }
    }

    /// The bytes of the command's key and values together (what [`command_bytes_max`] bounds).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Command::Put { key, value } => key.len() + value.len(),
            Command::Get { key } | Command::Delete { key } => key.len(),
            Command::Cas { key, expected, new } => {
                key.len() + expected.as_ref().map_or(0, Value::len) + new.len()
            }
        }
    }

    /// True when every value of the command is written as a JSON string.
    fn is_text(&self) -> bool {
        match self {
            Command::Put { value, .. } => value.as_text().is_some(),
            Command::Get { .. } | Command::Delete { .. } => true,
            Command::Cas { expected, new, .. } => {
                new.as_text().is_some() && expected.as_ref().is_none_or(|e| e.as_text().is_some())
            }
        }
    }

    /// The command without a session, as the bytes proposed to the log.
    #[cfg(test)]
    pub fn encode(&self) -> Bytes {
        self.encode_with(None)
    }

    /// The command as log bytes without a size bound (see [`Command::encode_for_log`]).
    #[cfg(test)]
    pub fn encode_with(&self, session: Option<Session>) -> Bytes {
        self.encode_for_log(session, usize::MAX)
    }

    /// The command as the bytes proposed to the log. A command whose values are all text is
    /// one JSON object, the command's fields plus `"client"` and `"seq"` when it carries a
    /// session (what earlier builds wrote), when that is at most `max_bytes`; any other
    /// command takes the binary form: magic `0xb7`, version 1, op (1 put, 2 get, 3 delete,
    /// 4 cas, 5 cas expecting absence), flags (bit 0: session), then the session's client and
    /// seq (u64 LE each) when flagged, then the key, then put's value or cas's expected (op 4
    /// only) and new value, each as a u32 LE length and its bytes. The binary form is at most
    /// 32 bytes longer than the key and values together.
    pub fn encode_for_log(&self, session: Option<Session>, max_bytes: usize) -> Bytes {
        if self.is_text() {
            let wire = WireOut {
                command: self,
                client: session.map(|s| s.client),
                seq: session.map(|s| s.seq),
            };
            let json = serde_json::to_vec(&wire).expect("a command always serializes");
            if json.len() <= max_bytes {
                return Bytes::from(json);
            }
        }
        self.encode_binary(session)
    }

    /// The binary form (see [`Command::encode_for_log`]).
    pub fn encode_binary(&self, session: Option<Session>) -> Bytes {
        let mut out = Vec::with_capacity(self.payload_bytes() + 32);
        let op = match self {
            Command::Put { .. } => 1,
            Command::Get { .. } => 2,
            Command::Delete { .. } => 3,
            Command::Cas {
                expected: Some(_), ..
            } => 4,
            Command::Cas { expected: None, .. } => 5,
        };
        out.extend_from_slice(&[BINARY_MAGIC, BINARY_VERSION, op]);
        match session {
            Some(session) => {
                out.push(BINARY_FLAG_SESSION);
                out.extend_from_slice(&session.client.to_le_bytes());
                out.extend_from_slice(&session.seq.to_le_bytes());
            }
            None => out.push(0),
        }
        let mut field = |bytes: &[u8]| {
            let len = u32::try_from(bytes.len()).expect("a command field fits in u32");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(bytes);
        };
        field(self.key().as_bytes());
        match self {
            Command::Put { value, .. } => field(value.as_bytes()),
            Command::Get { .. } | Command::Delete { .. } => {}
            Command::Cas { expected, new, .. } => {
                if let Some(expected) = expected {
                    field(expected.as_bytes());
                }
                field(new.as_bytes());
            }
        }
        Bytes::from(out)
    }

    /// Parses a command from the log (either form), with its session if it carries one.
    pub fn decode(bytes: &[u8]) -> Result<(Command, Option<Session>), String> {
        if bytes.first() == Some(&BINARY_MAGIC) {
            return decode_binary(bytes).map_err(|e| format!("not a KV command: {e}"));
        }
        let wire: WireIn =
            serde_json::from_slice(bytes).map_err(|e| format!("not a KV command: {e}"))?;
        let session = Session::from_fields(wire.client, wire.seq)
            .map_err(|e| format!("not a KV command: {e}"))?;
        Ok((wire.command, session))
    }
}

fn decode_binary(bytes: &[u8]) -> Result<(Command, Option<Session>), String> {
    let mut rest = bytes;
    let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err(format!("binary command ends inside its {what}"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let header = take(4, "header")?;
    if header[1] != BINARY_VERSION {
        return Err(format!(
            "binary command version {} (this build reads 1)",
            header[1]
        ));
    }
    let (op, flags) = (header[2], header[3]);
    if flags & !BINARY_FLAG_SESSION != 0 {
        return Err(format!("binary command flags {flags:#04x}"));
    }
    let session = if flags & BINARY_FLAG_SESSION != 0 {
        let client = u64::from_le_bytes(take(8, "client")?.try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(take(8, "seq")?.try_into().expect("8 bytes"));
        Session::from_fields(Some(client), Some(seq))?
    } else {
        None
    };
    let mut field = |what: &str| -> Result<Vec<u8>, String> {
        let len = u32::from_le_bytes(take(4, what)?.try_into().expect("4 bytes")) as usize;
        Ok(take(len, what)?.to_vec())
    };
    let key = String::from_utf8(field("key")?).map_err(|_| "key is not UTF-8".to_string())?;
    let command = match op {
        1 => Command::Put {
            key,
            value: Value::new(field("value")?),
        },
        2 => Command::Get { key },
        3 => Command::Delete { key },
        4 => {
            let expected = Value::new(field("expected value")?);
            Command::Cas {
                key,
                expected: Some(expected),
                new: Value::new(field("new value")?),
            }
        }
        5 => Command::Cas {
            key,
            expected: None,
            new: Value::new(field("new value")?),
        },
        other => return Err(format!("binary command op {other}")),
    };
    if !rest.is_empty() {
        return Err(format!("{} bytes after the binary command", rest.len()));
    }
    Ok((command, session))
}

/// Who sent a command: the client's session id and the request's sequence number in it.
///
/// A client picks `client` at random (nonzero) once per process and numbers its requests
/// `seq` = 1, 2, ...; a retry of a request reuses its `seq`. A group applies each
/// (client, seq) at most once (see [`KvState`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Session {
    /// The client's session id (nonzero).
    pub client: u64,
    /// The request's sequence number (1 or more), increasing per new request.
    pub seq: u64,
}

impl Session {
    /// The session of a request or command from its optional `client` and `seq` fields: both
    /// absent is no session; both present is one (client nonzero, seq at least 1); anything
    /// else is an error.
    pub fn from_fields(client: Option<u64>, seq: Option<u64>) -> Result<Option<Session>, String> {
        match (client, seq) {
            (None, None) => Ok(None),
            (Some(0), Some(_)) => Err("client must be nonzero".into()),
            (Some(_), Some(0)) => Err("seq must be at least 1".into()),
            (Some(client), Some(seq)) => Ok(Some(Session { client, seq })),
            (Some(_), None) => Err("client without seq (give both or neither)".into()),
            (None, Some(_)) => Err("seq without client (give both or neither)".into()),
        }
    }
}

/// A command and its session fields, as written to the log.
#[derive(Serialize)]
struct WireOut<'a> {
    #[serde(flatten)]
    command: &'a Command,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// A command and its session fields, as read from the log.
#[derive(Deserialize)]
struct WireIn {
    #[serde(flatten)]
    command: Command,
    #[serde(default)]
    client: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
}

/// What applying one command returned (JSON, one object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The key's value before the command (for get: the value read).
    pub value: Option<Value>,
    /// For cas: whether the swap happened. For the other commands: always true.
    pub done: bool,
    /// Set when the log held bytes that are not a command, or when the command's session
    /// already applied a later request (`stale`); nothing was changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// True when the command was not executed because its session already applied a request
    /// with a higher seq.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stale: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Outcome {
    /// Encodes the outcome as a result of `apply`.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("an outcome always serializes"))
    }

    /// Parses a result of `apply`.
    pub fn decode(bytes: &[u8]) -> Result<Outcome, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a KV result: {e}"))
    }
}

/// The group of a key: `crc32(key) % groups` (CRC-32/ISO-HDLC of the key's UTF-8 bytes).
pub fn group_of_key(key: &str, groups: u32) -> GroupId {
    assert!(groups > 0, "a cluster has at least one group");
    GroupId(crc32fast::hash(key.as_bytes()) % groups)
}

/// Extends the rolling digest with one applied instance: CRC-32 over the previous digest, the
/// instance, the command count and each command's length and bytes, all little-endian.
pub fn digest_step(digest: u32, instance: Instance, commands: &[Bytes]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&digest.to_le_bytes());
    hasher.update(&instance.0.to_le_bytes());
    hasher.update(&(commands.len() as u64).to_le_bytes());
    for command in commands {
        hasher.update(&(command.len() as u64).to_le_bytes());
        hasher.update(command);
    }
    hasher.finalize()
}

/// What a group publishes after each apply, for the client protocol's `digest` request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// The first instance not yet applied (0 before anything was applied).
    pub applied_next: u64,
    /// The rolling digest of every instance applied so far (see [`digest_step`]).
    pub digest: u32,
    /// The instance of the last durable snapshot, if any.
    pub checkpoint: Option<u64>,
    /// Keys held.
    pub keys: usize,
    /// Client sessions held (see [`SESSIONS_MAX`]).
    pub sessions: usize,
    /// Why snapshots stopped (a failed write or fsync); the node must stop.
    pub failed: Option<String>,
}

/// Shared handle on a group's [`GroupView`].
pub type SharedView = Arc<Mutex<GroupView>>;

/// When to write a snapshot.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotPolicy {
    /// After this many applied instances since the last snapshot.
    pub every_instances: u64,
    /// Or when this much time passed since the last snapshot and something was applied.
    pub every: Duration,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_instances: 1000,
            every: Duration::from_millis(1000),
        }
    }
}

/// Why a snapshot could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An I/O call failed.
    #[error("snapshot {path}: {op} failed: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The file is a snapshot in a format version this build does not read.
    #[error("snapshot {path} has format version {version}, which this build does not read (it reads versions {known}): it was written by another paxring build; run a build that reads it, or move it away to rebuild the group from the WAL, if the WAL still holds every instance")]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// The version byte found, as text.
        version: String,
        /// The versions this build reads, as text.
        known: String,
    },
    /// The file is not a valid snapshot of this group.
    #[error("snapshot {path} is corrupt: {problem} (move it away to rebuild the group from the WAL, if the WAL still holds every instance)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The first 7 bytes of a snapshot file; the 8th is the format version (an ASCII digit).
const SNAPSHOT_MAGIC: &[u8; 7] = b"PXKVSNP";
/// The format version written when every value is text: 2 (the body holds the session table),
/// which earlier builds read too.
const SNAPSHOT_VERSION_TEXT: u8 = b'2';
/// The format version written when some value (of the map or of a recorded result) is not
/// text: 3, the body of version 2 whose values may be `{"base64": ...}` objects.
const SNAPSHOT_VERSION_BINARY: u8 = b'3';
/// The format versions read: 1 (no session table: restored with an empty one), 2 and 3.
const SNAPSHOT_VERSIONS_READ: [u8; 3] = [b'1', b'2', b'3'];
/// Header: magic (7), version (1), body length (u64 LE), body CRC-32 (u32 LE), then the JSON
/// body.
const SNAPSHOT_HEADER_BYTES: usize = 20;

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    group: u32,
    checkpoint: u64,
    digest: u32,
    entries: BTreeMap<String, Value>,
    /// Absent in version 1.
    #[serde(default)]
    sessions: Vec<SessionRecord>,
}

/// One session of the snapshot's session table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SessionRecord {
    client: u64,
    seq: u64,
    /// The instance at which the session was last used (its recency for eviction).
    used: u64,
    outcome: Outcome,
}

/// Most client sessions one group keeps. When a new session would make more, the least
/// recently used ones are evicted: the session whose last use was at the lowest instance, and
/// among sessions last used at the same instance the lowest client id. The choice depends on
/// the applied log alone, so every replica evicts the same sessions.
pub const SESSIONS_MAX: usize = 100_000;

/// Most bytes of recorded result values (the `value` of each session's recorded outcome) one
/// group keeps; above it, the least recently used sessions are evicted as for [`SESSIONS_MAX`].
pub const SESSION_VALUE_BYTES_MAX: usize = 64 << 20;

/// One client's session: the highest seq applied and that request's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SessionEntry {
    seq: u64,
    outcome: Outcome,
    used: u64,
}

/// The session table of one group: per client id, the highest seq applied and its outcome,
/// bounded by count and by recorded value bytes, evicting the least recently used.
#[derive(Debug)]
struct Sessions {
    by_client: BTreeMap<u64, SessionEntry>,
    /// (instance of last use, client): the eviction order, oldest first.
    recency: BTreeSet<(u64, u64)>,
    value_bytes: usize,
    max: usize,
    value_bytes_max: usize,
}

fn value_bytes(outcome: &Outcome) -> usize {
    outcome.value.as_ref().map_or(0, Value::len)
}

impl Sessions {
    fn new() -> Sessions {
        Sessions {
            by_client: BTreeMap::new(),
            recency: BTreeSet::new(),
            value_bytes: 0,
            max: SESSIONS_MAX,
            value_bytes_max: SESSION_VALUE_BYTES_MAX,
        }
    }

    /// The table of a snapshot; an error when a record is invalid or a client appears twice.
    fn from_records(records: Vec<SessionRecord>) -> Result<Sessions, String> {
        let mut sessions = Sessions::new();
        for record in records {
            if record.client == 0 || record.seq == 0 {
                return Err(format!(
                    "session table holds client {} seq {} (both must be nonzero)",
                    record.client, record.seq
                ));
            }
            if sessions.by_client.contains_key(&record.client) {
                return Err(format!(
                    "session table holds client {} twice",
                    record.client
                ));
            }
            sessions.value_bytes += value_bytes(&record.outcome);
            sessions.recency.insert((record.used, record.client));
            sessions.by_client.insert(
                record.client,
                SessionEntry {
                    seq: record.seq,
                    outcome: record.outcome,
                    used: record.used,
                },
            );
        }
        Ok(sessions)
    }

    /// The table as snapshot records, by client id.
    #[cfg(test)]
    fn records(&self) -> Vec<SessionRecord> {
        self.by_client
            .iter()
            .map(|(client, entry)| SessionRecord {
                client: *client,
                seq: entry.seq,
                used: entry.used,
                outcome: entry.outcome.clone(),
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Marks `client`'s session used at `instance`.
    fn touch(&mut self, client: u64, instance: u64) {
        let entry = self.by_client.get_mut(&client).expect("a known session");
        self.recency.remove(&(entry.used, client));
        entry.used = instance;
        self.recency.insert((instance, client));
    }

    /// The answer to a request the session already saw, applied at `instance`: the recorded
    /// outcome when `seq` is the session's last, a stale error when it is older. `None` when
    /// the request is new (or its session unknown, never seen or evicted) and must execute.
    fn replay(&mut self, session: Session, instance: u64) -> Option<Outcome> {
        let entry = self.by_client.get(&session.client)?;
        let answer = if session.seq == entry.seq {
            entry.outcome.clone()
        } else if session.seq < entry.seq {
            Outcome {
                value: None,
                done: false,
                error: Some(format!(
                    "stale request: seq {} already superseded by {}",
                    session.seq, entry.seq
                )),
                stale: true,
            }
        } else {
            return None;
        };
        self.touch(session.client, instance);
        Some(answer)
    }

    /// Records that `session` executed at `instance` with `outcome`, then evicts the least
    /// recently used sessions while a bound is exceeded.
    fn record(&mut self, session: Session, instance: u64, outcome: Outcome) {
        self.value_bytes += value_bytes(&outcome);
        let entry = SessionEntry {
            seq: session.seq,
            outcome,
            used: instance,
        };
        if let Some(old) = self.by_client.insert(session.client, entry) {
            self.value_bytes -= value_bytes(&old.outcome);
            self.recency.remove(&(old.used, session.client));
        }
        self.recency.insert((instance, session.client));
        while self.by_client.len() > self.max || self.value_bytes > self.value_bytes_max {
            let (_, client) = self
                .recency
                .pop_first()
                .expect("a table over a bound is not empty");
            let evicted = self
                .by_client
                .remove(&client)
                .expect("recency lists held sessions");
            self.value_bytes -= value_bytes(&evicted.outcome);
        }
    }
}

/// The KV state machine of one group.
pub struct KvState {
    group: GroupId,
    path: PathBuf,
    map: BTreeMap<String, Value>,
    sessions: Sessions,
    applied_next: Option<u64>,
    digest: u32,
    checkpoint: Option<Instance>,
    policy: SnapshotPolicy,
    instances_since_snapshot: u64,
    last_snapshot: Instant,
    failed: Option<String>,
    view: SharedView,
}

impl KvState {
    /// The snapshot file of `group` under a node's data dir.
    pub fn snapshot_path(data_dir: &Path, group: GroupId) -> PathBuf {
        data_dir.join("kv").join(format!("group-{}.snap", group.0))
    }

    /// Opens the state of `group`: loads its snapshot if there is one (a corrupt one is an
    /// error), removes a leftover temporary file.
    pub fn open(
        data_dir: &Path,
        group: GroupId,
        policy: SnapshotPolicy,
    ) -> Result<KvState, SnapshotError> {
        let path = KvState::snapshot_path(data_dir, group);
        let dir = path
            .parent()
            .expect("a snapshot path has a parent")
            .to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| SnapshotError::Io {
            path: dir.clone(),
            op: "create_dir_all",
            source,
        })?;
        let tmp = path.with_extension("snap.tmp");
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(|source| SnapshotError::Io {
                path: tmp.clone(),
                op: "remove leftover temporary file",
                source,
            })?;
        }
        let mut state = KvState {
            group,
            path: path.clone(),
            map: BTreeMap::new(),
            sessions: Sessions::new(),
            applied_next: None,
            digest: 0,
            checkpoint: None,
            policy,
            instances_since_snapshot: 0,
            last_snapshot: Instant::now(),
            failed: None,
            view: Arc::new(Mutex::new(GroupView::default())),
        };
        match std::fs::File::open(&path) {
            Ok(file) => {
                let body = read_snapshot(&path, &mut BufReader::new(file))?;
                let (checkpoint, map, sessions, digest) = check_body(&path, group, body)?;
                state.sessions = sessions;
                state.map = map;
                state.digest = digest;
                state.checkpoint = Some(Instance(checkpoint));
                state.applied_next = Some(checkpoint + 1);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SnapshotError::Io {
                    path,
                    op: "read",
                    source,
                })
            }
        }
        state.publish();
        Ok(state)
    }

    /// The handle on this group's published view (read by the client protocol server).
    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    /// The current value of `key` (local, not linearizable: for tests).
    #[cfg(test)]
    pub fn value(&self, key: &str) -> Option<&str> {
        self.map
            .get(key)
            .map(|v| std::str::from_utf8(v.as_bytes()).expect("a text value"))
    }

    /// The current value of `key` as bytes (local, not linearizable: for tests).
    #[cfg(test)]
    pub fn value_bytes(&self, key: &str) -> Option<&[u8]> {
        self.map.get(key).map(Value::as_bytes)
    }

    /// The rolling digest of the applied sequence.
    #[cfg(test)]
    pub fn digest(&self) -> u32 {
        self.digest
    }

    /// Sets smaller session bounds (to test eviction).
    #[cfg(test)]
    fn set_session_bounds(&mut self, max: usize, value_bytes_max: usize) {
        self.sessions.max = max;
        self.sessions.value_bytes_max = value_bytes_max;
    }

    /// The session table as (client, seq, instance of last use), by client.
    #[cfg(test)]
    fn session_list(&self) -> Vec<(u64, u64, u64)> {
        self.sessions
            .by_client
            .iter()
            .map(|(client, entry)| (*client, entry.seq, entry.used))
            .collect()
    }

    /// Applies one command chosen at `instance` and returns its outcome. A command whose
    /// session already applied this seq returns the recorded outcome, one whose session
    /// applied a higher seq returns a stale error; neither executes again.
    fn execute(&mut self, instance: u64, bytes: &[u8]) -> Outcome {
        let (command, session) = match Command::decode(bytes) {
            Ok(decoded) => decoded,
            Err(error) => {
                return Outcome {
                    value: None,
                    done: false,
                    error: Some(error),
                    stale: false,
                }
            }
        };
        let Some(session) = session else {
            return self.run(command);
        };
        if let Some(answer) = self.sessions.replay(session, instance) {
            return answer;
        }
        let outcome = self.run(command);
        self.sessions.record(session, instance, outcome.clone());
        outcome
    }

    /// What a get of `key` answers: the same outcome whether the get was applied from the log
    /// or asked as a query.
    fn get(&self, key: &str) -> Outcome {
        Outcome {
            value: self.map.get(key).cloned(),
            done: true,
            error: None,
            stale: false,
        }
    }

    /// Executes one command on the map.
    fn run(&mut self, command: Command) -> Outcome {
        match command {
            Command::Put { key, value } => Outcome {
                value: self.map.insert(key, value),
                done: true,
                error: None,
                stale: false,
            },
            Command::Get { key } => self.get(&key),
            Command::Delete { key } => Outcome {
                value: self.map.remove(&key),
                done: true,
                error: None,
                stale: false,
            },
            Command::Cas { key, expected, new } => {
                let current = self.map.get(&key).cloned();
                let done = current == expected;
                if done {
                    self.map.insert(key, new);
                }
                Outcome {
                    value: current,
                    done,
                    error: None,
                    stale: false,
                }
            }
        }
    }

    /// Writes the snapshot now: temporary file, fsync, rename, fsync of the directory. Only
    /// then does the checkpoint move.
    pub fn snapshot(&mut self) -> Result<(), SnapshotError> {
        let Some(applied_next) = self.applied_next else {
            return Ok(());
        };
        assert!(applied_next > 0, "something was applied");
        let checkpoint = applied_next - 1;
        let out = SnapshotOut {
            group: self.group.0,
            checkpoint,
            digest: self.digest,
            entries: &self.map,
            sessions: SessionsOut(&self.sessions),
        };
        write_snapshot_file(&self.path, &out)?;
        self.checkpoint = Some(Instance(checkpoint));
        self.instances_since_snapshot = 0;
        self.last_snapshot = Instant::now();
        Ok(())
    }

    fn maybe_snapshot(&mut self) {
        if self.failed.is_some() || self.instances_since_snapshot == 0 {
            return;
        }
        let due = self.instances_since_snapshot >= self.policy.every_instances
            || self.last_snapshot.elapsed() >= self.policy.every;
        if !due {
            return;
        }
        if let Err(e) = self.snapshot() {
            // Never retried: the file's durability is unknown, so the checkpoint stays where
            // it was and the node is told to stop (see `GroupView::failed`).
            tracing::error!(
                group = self.group.0,
                "snapshot failed, the node must stop: {e}"
            );
            self.failed = Some(e.to_string());
        }
    }

    fn publish(&self) {
        let mut view = self.view.lock().expect("group view lock");
        view.applied_next = self.applied_next.unwrap_or(0);
        view.digest = self.digest;
        view.checkpoint = self.checkpoint.map(|i| i.0);
        view.keys = self.map.len();
        view.sessions = self.sessions.len();
        view.failed.clone_from(&self.failed);
    }
}

impl StateMachine for KvState {
    fn apply(
        &mut self,
        group: GroupId,
        instance: Instance,
        commands: &[Bytes],
        results: &mut Vec<Bytes>,
    ) {
        assert_eq!(group, self.group, "an apply reaches its own group's state");
        if let Some(next) = self.applied_next {
            assert_eq!(
                instance.0, next,
                "group {}: instances are applied in order without gaps",
                group.0
            );
        }
        let results_before = results.len();
        for command in commands {
            let outcome = self.execute(instance.0, command);
            results.push(outcome.encode());
        }
        assert_eq!(
            results.len() - results_before,
            commands.len(),
            "one result per command"
        );
        self.digest = digest_step(self.digest, instance, commands);
        self.applied_next = Some(instance.0 + 1);
        self.instances_since_snapshot += 1;
        self.maybe_snapshot();
        self.publish();
    }

    fn checkpoint_instance(&self) -> Option<Instance> {
        self.checkpoint
    }

    /// Answers a get without the log: `query` is a get command in its log encoding (either
    /// form, see [`Command::encode_for_log`]) without a session, and the answer is the bytes
    /// applying that get from the log would return now ([`Outcome`]). Nothing changes: no
    /// digest step, no session record. Any other command, a session, or bytes that are not a
    /// command are an `InvalidInput` error.
    fn query(&self, group: GroupId, query: &[u8]) -> std::io::Result<Bytes> {
        let invalid =
            |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
        if group != self.group {
            return Err(invalid(format!(
                "a query of group {} reached group {}",
                group.0, self.group.0
            )));
        }
        match Command::decode(query).map_err(invalid)? {
            (Command::Get { key }, None) => Ok(self.get(&key).encode()),
            (Command::Get { .. }, Some(_)) => Err(invalid(
                "a get query carries no session: a read records nothing".into(),
            )),
            (other, _) => Err(invalid(format!(
                "only a get can be a query, not {}: propose it to the log",
                other.op_name()
            ))),
        }
    }

    /// Streams the snapshot bytes of the state as of the last applied instance (what the
    /// `.snap` file would hold).
    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        let Some(applied_next) = self.applied_next else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "group {} has applied nothing: no state to snapshot",
                    self.group.0
                ),
            ));
        };
        let body = SnapshotOut {
            group: self.group.0,
            checkpoint: applied_next - 1,
            digest: self.digest,
            entries: &self.map,
            sessions: SessionsOut(&self.sessions),
        };
        write_snapshot(&body, out)
    }

    /// Reads snapshot bytes taken at `instance`, writes them as this group's fsynced `.snap`
    /// file, and only then installs them. Any error leaves the state as it was; one at or after
    /// the fsync also stops further snapshots (`GroupView::failed`), as a failed snapshot does.
    fn restore(&mut self, instance: Instance, input: &mut dyn Read) -> std::io::Result<()> {
        let source = PathBuf::from(format!("restore input of group {}", self.group.0));
        let invalid = |e: SnapshotError| match e {
            SnapshotError::Io { source, .. } => source,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        };
        let body = read_snapshot(&source, input).map_err(invalid)?;
        let (checkpoint, map, mut sessions, digest) =
            check_body(&source, self.group, body).map_err(invalid)?;
        if checkpoint != instance.0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the snapshot holds instance {checkpoint}, not the {} it was restored as",
                    instance.0
                ),
            ));
        }
        if let Some(failed) = &self.failed {
            return Err(std::io::Error::other(format!(
                "snapshots of group {} stopped after a failure: {failed}",
                self.group.0
            )));
        }
        sessions.max = self.sessions.max;
        sessions.value_bytes_max = self.sessions.value_bytes_max;
        let out = SnapshotOut {
            group: self.group.0,
            checkpoint,
            digest,
            entries: &map,
            sessions: SessionsOut(&sessions),
        };
        if let Err(e) = write_snapshot_file(&self.path, &out) {
            if let SnapshotError::Io { op, .. } = &e {
                if !matches!(*op, "create" | "write") {
                    // The file's durability is unknown: never retried (see `maybe_snapshot`).
                    tracing::error!(
                        group = self.group.0,
                        "restore could not make its snapshot durable, the node must stop: {e}"
                    );
                    self.failed = Some(e.to_string());
                    self.publish();
                }
            }
            return Err(std::io::Error::other(e.to_string()));
        }
        self.map = map;
        self.sessions = sessions;
        self.digest = digest;
        self.checkpoint = Some(instance);
        self.applied_next = Some(instance.0 + 1);
        self.instances_since_snapshot = 0;
        self.last_snapshot = Instant::now();
        self.publish();
        Ok(())
    }

    /// The current `.snap` file, streamed, with its instance.
    fn open_checkpoint(&self) -> std::io::Result<Option<(Instance, Box<dyn Read + Send>)>> {
        let Some(checkpoint) = self.checkpoint else {
            return Ok(None);
        };
        if let Some(failed) = &self.failed {
            return Err(std::io::Error::other(format!(
                "snapshots of group {} stopped after a failure: {failed}",
                self.group.0
            )));
        }
        // Snapshots are written by `&mut self` calls only, and a rename leaves an open file as
        // it was: the file opened here is the one of `checkpoint`.
        let file = std::fs::File::open(&self.path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot open snapshot {}: {e}", self.path.display()),
            )
        })?;
        Ok(Some((checkpoint, Box::new(BufReader::new(file)))))
    }
}

/// The body of a snapshot as it is written: borrowed from the state, never copied.
#[derive(Serialize)]
struct SnapshotOut<'a> {
    group: u32,
    checkpoint: u64,
    digest: u32,
    entries: &'a BTreeMap<String, Value>,
    sessions: SessionsOut<'a>,
}

/// The session table written as the records of [`SnapshotBody::sessions`], by client id.
struct SessionsOut<'a>(&'a Sessions);

/// One written session record (the fields of [`SessionRecord`], in its order).
#[derive(Serialize)]
struct SessionRecordOut<'a> {
    client: u64,
    seq: u64,
    used: u64,
    outcome: &'a Outcome,
}

impl Serialize for SessionsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .by_client
                .iter()
                .map(|(client, entry)| SessionRecordOut {
                    client: *client,
                    seq: entry.seq,
                    used: entry.used,
                    outcome: &entry.outcome,
                }),
        )
    }
}

impl SnapshotOut<'_> {
    /// The format version: text when every value (of the map and of the recorded results) is.
    fn version(&self) -> u8 {
        let text = |v: &Value| v.as_text().is_some();
        let all_text = self.entries.values().all(text)
            && self
                .sessions
                .0
                .by_client
                .values()
                .all(|s| s.outcome.value.as_ref().is_none_or(text));
        if all_text {
            SNAPSHOT_VERSION_TEXT
        } else {
            SNAPSHOT_VERSION_BINARY
        }
    }
}

/// Counts and checksums what is written to it, and keeps nothing.
struct CrcCount {
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl Write for CrcCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Checksums and counts what is read through it.
struct CrcRead<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<R: Read> Read for CrcRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Buffer of the snapshot encoder and decoder.
const SNAPSHOT_BUFFER_BYTES: usize = 64 * 1024;

/// Streams a snapshot: header (magic, version, body length u64 LE, body CRC-32 u32 LE), then the
/// JSON body. The body is serialized twice, first only to count and checksum it, so that no
/// image of the state is ever held in memory.
fn write_snapshot(body: &SnapshotOut<'_>, out: &mut dyn Write) -> std::io::Result<()> {
    let mut sum = BufWriter::with_capacity(
        SNAPSHOT_BUFFER_BYTES,
        CrcCount {
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
        },
    );
    serde_json::to_writer(&mut sum, body)?;
    let sum = sum.into_inner().map_err(|e| e.into_error())?;
    let (length, crc) = (sum.bytes, sum.hasher.finalize());
    let mut out = BufWriter::with_capacity(SNAPSHOT_BUFFER_BYTES, out);
    out.write_all(SNAPSHOT_MAGIC)?;
    out.write_all(&[body.version()])?;
    out.write_all(&length.to_le_bytes())?;
    out.write_all(&crc.to_le_bytes())?;
    serde_json::to_writer(&mut out, body)?;
    out.flush()
}

/// Writes a snapshot as the file `path`: temporary file, fsync, rename, fsync of the directory.
fn write_snapshot_file(path: &Path, body: &SnapshotOut<'_>) -> Result<(), SnapshotError> {
    let tmp = path.with_extension("snap.tmp");
    let io = |path: &Path, op: &'static str| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, op, source }
    };
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp, "create"))?;
    write_snapshot(body, &mut file).map_err(io(&tmp, "write"))?;
    file.sync_all().map_err(io(&tmp, "fsync"))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path, "rename"))?;
    let dir = path.parent().expect("a snapshot path has a parent");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "fsync directory"))?;
    Ok(())
}

/// The whole snapshot encoded in memory (the format's reference, for tests).
#[cfg(test)]
fn encode_snapshot(body: &SnapshotBody) -> Vec<u8> {
    let json = serde_json::to_vec(body).expect("a snapshot body always serializes");
    let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + json.len());
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    let text = |v: &Value| v.as_text().is_some();
    let all_text = body.entries.values().all(text)
        && body
            .sessions
            .iter()
            .all(|s| s.outcome.value.as_ref().is_none_or(text));
    bytes.push(if all_text {
        SNAPSHOT_VERSION_TEXT
    } else {
        SNAPSHOT_VERSION_BINARY
    });
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    bytes.extend_from_slice(&json);
    bytes
}

/// Reads a snapshot from a stream to its end (`path` names the source in errors), checking
/// in the order of the format: header, body length (nothing missing, nothing after it), body
/// checksum, then the JSON. Bad bytes are an error, never a panic.
fn read_snapshot(path: &Path, input: &mut dyn Read) -> Result<SnapshotBody, SnapshotError> {
    let corrupt = |problem: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        problem,
    };
    let read_error = |source: std::io::Error| SnapshotError::Io {
        path: path.to_path_buf(),
        op: "read",
        source,
    };
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    let mut got = 0;
    while got < header.len() {
        match input.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(e)),
        }
    }
    if got < SNAPSHOT_HEADER_BYTES {
        return Err(corrupt(format!(
            "{got} bytes, shorter than the {SNAPSHOT_HEADER_BYTES}-byte header"
        )));
    }
    if &header[..7] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic at offset 0".into()));
    }
    let version = header[7];
    if !SNAPSHOT_VERSIONS_READ.contains(&version) {
        let shown = |v: u8| {
            if v.is_ascii_graphic() {
                (v as char).to_string()
            } else {
                format!("byte {v:#04x}")
            }
        };
        return Err(SnapshotError::UnknownVersion {
            path: path.to_path_buf(),
            version: shown(version),
            known: SNAPSHOT_VERSIONS_READ
                .iter()
                .map(|v| shown(*v))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let length = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
    let mut body = CrcRead {
        inner: Read::take(&mut *input, length),
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let parsed: Result<SnapshotBody, serde_json::Error> = {
        let mut buffered = BufReader::with_capacity(SNAPSHOT_BUFFER_BYTES, &mut body);
        serde_json::from_reader(&mut buffered)
    };
    let parsed = match parsed {
        Err(e) if e.is_io() => return Err(read_error(e.into())),
        other => other,
    };
    // What the parser left of the body's length still counts (and is checksummed).
    std::io::copy(&mut body, &mut std::io::sink()).map_err(read_error)?;
    let (held, actual) = (body.bytes, body.hasher.finalize());
    let after = std::io::copy(input, &mut std::io::sink()).map_err(read_error)?;
    if held != length || after != 0 {
        return Err(corrupt(format!(
            "header says {length} body bytes, the file holds {}",
            held.saturating_add(after)
        )));
    }
    if actual != crc {
        return Err(corrupt(format!(
            "body checksum {actual:#010x} does not match the header's {crc:#010x}"
        )));
    }
    parsed.map_err(|e| corrupt(format!("body is not a snapshot: {e}")))
}

/// The parts of a snapshot of `group`: checkpoint, map, session table and digest; an error
/// when it is another group's or its session table is invalid.
fn check_body(
    path: &Path,
    group: GroupId,
    body: SnapshotBody,
) -> Result<(u64, BTreeMap<String, Value>, Sessions, u32), SnapshotError> {
    let corrupt = |problem: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        problem,
    };
    if body.group != group.0 {
        return Err(corrupt(format!(
            "it holds group {}, not group {}",
            body.group, group.0
        )));
    }
    let sessions = Sessions::from_records(body.sessions).map_err(corrupt)?;
    Ok((body.checkpoint, body.entries, sessions, body.digest))
}

#[cfg(test)]
mod tests {
    //! Proves the KV semantics (put, get, delete, cas on present and absent keys), that the
    //! digest depends on the applied sequence, that a snapshot round-trips (map, checkpoint,
    //! digest, session table) and that a damaged snapshot or one of an unknown format version is
    //! refused with a clear error; and the client sessions: a command carries its (client, seq)
    //! in the log bytes, applying the same (client, seq) twice executes it once and answers the
    //! same result, an older seq is refused as stale, commands without a session are never
    //! deduplicated, and eviction is decided by the applied log alone (the same with or
    //! without a snapshot and restore in between).
    use super::*;

    fn text(value: &Option<Value>) -> Option<&str> {
        value
            .as_ref()
            .map(|v| std::str::from_utf8(v.as_bytes()).expect("a text value"))
    }

    fn session(client: u64, seq: u64) -> Option<Session> {
        Some(Session { client, seq })
    }

    fn cas_as(key: &str, expected: Option<&str>, new: &str, s: Option<Session>) -> Bytes {
        Command::Cas {
            key: key.into(),
            expected: expected.map(Value::from),
            new: new.into(),
        }
        .encode_with(s)
    }

    fn put_as(key: &str, value: &str, s: Option<Session>) -> Bytes {
        Command::Put {
            key: key.into(),
            value: value.into(),
        }
        .encode_with(s)
    }

    fn apply_raw(state: &mut KvState, instance: u64, commands: &[Bytes]) -> Vec<Bytes> {
        let mut results = Vec::new();
        state.apply(GroupId(0), Instance(instance), commands, &mut results);
        results
    }

    fn put(key: &str, value: &str) -> Bytes {
        Command::Put {
            key: key.into(),
            value: value.into(),
        }
        .encode()
    }

    fn apply(state: &mut KvState, instance: u64, commands: &[Bytes]) -> Vec<Outcome> {
        let mut results = Vec::new();
        state.apply(GroupId(0), Instance(instance), commands, &mut results);
        results
            .iter()
            .map(|r| Outcome::decode(r).unwrap())
            .collect()
    }

    fn never() -> SnapshotPolicy {
        SnapshotPolicy {
            every_instances: u64::MAX,
            every: Duration::from_secs(3600),
        }
    }

    #[test]
    fn put_get_delete_cas() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        let get = Command::Get { key: "a".into() }.encode();
        let out = apply(&mut state, 1, &[get.clone(), put("a", "1"), get.clone()]);
        assert_eq!(out[0].value, None);
        assert_eq!(out[1].value, None);
        assert_eq!(text(&out[2].value), Some("1"));
        let cas = |expected: Option<&str>, new: &str| {
            Command::Cas {
                key: "a".into(),
                expected: expected.map(Value::from),
                new: new.into(),
            }
            .encode()
        };
        let out = apply(
            &mut state,
            2,
            &[cas(Some("0"), "2"), cas(Some("1"), "2"), cas(None, "3")],
        );
        assert!(!out[0].done);
        assert_eq!(text(&out[0].value), Some("1"));
        assert!(out[1].done);
        assert!(!out[2].done);
        assert_eq!(state.value("a"), Some("2"));
        let out = apply(
            &mut state,
            3,
            &[Command::Delete { key: "a".into() }.encode(), cas(None, "4")],
        );
        assert_eq!(text(&out[0].value), Some("2"));
        assert!(
            out[1].done,
            "cas on an absent key with expected = None swaps"
        );
        assert_eq!(state.value("a"), Some("4"));
        let out = apply(&mut state, 4, &[Bytes::from_static(b"{not json")]);
        assert!(out[0].error.is_some());
        assert!(!out[0].done);
    }

    #[test]
    fn a_query_answers_as_a_logged_get_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        let binary = Value::from(vec![0u8, 0xff, b'"', 0x80]);
        let put_bin = Command::Put {
            key: "bin".into(),
            value: binary.clone(),
        }
        .encode();
        apply_raw(
            &mut state,
            1,
            &[put("a", "1"), put_bin, put("", "empty key")],
        );
        let mut instance = 2;
        for key in ["a", "bin", "", "missing"] {
            let get = Command::Get { key: key.into() };
            let before = (state.digest(), state.applied_next, state.session_list());
            // The server's encoding (JSON for a get) and the binary form answer alike.
            let answer = state.query(GroupId(0), &get.encode()).unwrap();
            let binary_answer = state.query(GroupId(0), &get.encode_binary(None)).unwrap();
            assert_eq!(answer, binary_answer, "{key:?}");
            assert_eq!(
                (state.digest(), state.applied_next, state.session_list()),
                before,
                "a query of {key:?} changed the state"
            );
            // Byte for byte what the same get answers through the log, with or without a
            // session (which the logged get records).
            let logged = apply_raw(&mut state, instance, &[get.encode()]);
            let logged_in_session = apply_raw(
                &mut state,
                instance + 1,
                &[get.encode_with(session(9, instance))],
            );
            instance += 2;
            assert_eq!(logged, vec![answer.clone()], "{key:?}");
            assert_eq!(logged_in_session, vec![answer.clone()], "{key:?}");
            let outcome = Outcome::decode(&answer).unwrap();
            let expected = match key {
                "a" => Some(Value::from("1")),
                "bin" => Some(binary.clone()),
                "" => Some(Value::from("empty key")),
                _ => None,
            };
            assert_eq!(outcome.value, expected, "{key:?}");
            assert!(outcome.done && outcome.error.is_none() && !outcome.stale);
        }
        assert_eq!(state.session_list().len(), 1, "only logged gets recorded");

        // Anything but a get without a session is refused, and changes nothing either.
        let before = (state.digest(), state.applied_next, state.session_list());
        for (query, needle) in [
            (put("a", "2"), "only a get can be a query, not put"),
            (Command::Delete { key: "a".into() }.encode(), "not delete"),
            (
                Command::Get { key: "a".into() }.encode_with(session(3, 1)),
                "carries no session",
            ),
            (Bytes::from_static(b"{not json"), "not a KV command"),
            (Bytes::new(), "not a KV command"),
        ] {
            let error = state.query(GroupId(0), &query).unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
            assert!(error.to_string().contains(needle), "{error}");
        }
        let error = state
            .query(GroupId(1), &Command::Get { key: "a".into() }.encode())
            .unwrap_err();
        assert!(error.to_string().contains("reached group 0"), "{error}");
        assert_eq!(
            (state.digest(), state.applied_next, state.session_list()),
            before
        );
        assert_eq!(state.value("a"), Some("1"));
    }

    #[test]
    fn digest_depends_on_the_sequence() {
        let a = digest_step(
            digest_step(0, Instance(1), &[put("k", "1")]),
            Instance(2),
            &[put("k", "2")],
        );
        let b = digest_step(
            digest_step(0, Instance(1), &[put("k", "2")]),
            Instance(2),
            &[put("k", "1")],
        );
        let c = digest_step(
            digest_step(0, Instance(1), &[]),
            Instance(2),
            &[put("k", "1"), put("k", "2")],
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            digest_step(
                digest_step(0, Instance(1), &[put("k", "1")]),
                Instance(2),
                &[put("k", "2")]
            )
        );
    }

    #[test]
    #[should_panic(expected = "without gaps")]
    fn a_gap_is_a_programmer_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        apply(&mut state, 1, &[put("a", "1")]);
        apply(&mut state, 3, &[put("a", "2")]);
    }

    #[test]
    fn snapshot_round_trips_and_sets_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let policy = SnapshotPolicy {
            every_instances: 2,
            every: Duration::from_secs(3600),
        };
        let mut state = KvState::open(dir.path(), GroupId(0), policy).unwrap();
        assert_eq!(state.checkpoint_instance(), None);
        apply(&mut state, 5, &[put("a", "1")]);
        assert_eq!(state.checkpoint_instance(), None, "not due yet");
        apply(&mut state, 6, &[put("b", "2")]);
        assert_eq!(state.checkpoint_instance(), Some(Instance(6)));
        apply(&mut state, 7, &[put("c", "3")]);
        let digest_at_6 = digest_step(
            digest_step(0, Instance(5), &[put("a", "1")]),
            Instance(6),
            &[put("b", "2")],
        );
        drop(state);

        let mut state = KvState::open(dir.path(), GroupId(0), policy).unwrap();
        assert_eq!(state.checkpoint_instance(), Some(Instance(6)));
        assert_eq!(state.digest(), digest_at_6);
        assert_eq!(state.value("b"), Some("2"));
        assert_eq!(state.value("c"), None, "instance 7 was not in the snapshot");
        assert_eq!(state.view().lock().unwrap().applied_next, 7);
        // Replay continues from the checkpoint + 1.
        apply(&mut state, 7, &[put("c", "3")]);
        assert_eq!(state.value("c"), Some("3"));
        // Another group refuses this file.
        std::fs::copy(
            KvState::snapshot_path(dir.path(), GroupId(0)),
            KvState::snapshot_path(dir.path(), GroupId(1)),
        )
        .unwrap();
        let err = KvState::open(dir.path(), GroupId(1), policy)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not group 1"), "{err}");
    }

    #[test]
    fn corrupt_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        apply(&mut state, 1, &[put("a", "1")]);
        state.snapshot().unwrap();
        let path = KvState::snapshot_path(dir.path(), GroupId(0));
        let good = std::fs::read(&path).unwrap();

        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let err = KvState::open(dir.path(), GroupId(0), never())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("corrupt") && err.contains("checksum"), "{err}");

        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        let err = KvState::open(dir.path(), GroupId(0), never())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("body bytes"), "{err}");

        std::fs::write(&path, b"short").unwrap();
        let err = KvState::open(dir.path(), GroupId(0), never())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("header"), "{err}");

        std::fs::write(&path, &good).unwrap();
        assert!(KvState::open(dir.path(), GroupId(0), never()).is_ok());
    }

    #[test]
    fn commands_carry_their_session_in_the_log_bytes() {
        let bytes = cas_as("k", None, "n", session(u64::MAX, 7));
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "op": "cas", "key": "k", "expected": null, "new": "n",
                "client": u64::MAX, "seq": 7
            })
        );
        let (command, s) = Command::decode(&bytes).unwrap();
        assert_eq!(s, session(u64::MAX, 7));
        assert_eq!(command.key(), "k");
        // Without a session the bytes are those of earlier builds.
        let plain = put("k", "v");
        assert_eq!(&plain[..], br#"{"op":"put","key":"k","value":"v"}"#);
        assert_eq!(Command::decode(&plain).unwrap().1, None);
        for bad in [
            r#"{"op":"put","key":"k","value":"v","client":0,"seq":1}"#,
            r#"{"op":"put","key":"k","value":"v","client":3,"seq":0}"#,
            r#"{"op":"put","key":"k","value":"v","client":3}"#,
            r#"{"op":"put","key":"k","value":"v","seq":3}"#,
            r#"{"op":"put","key":"k","value":"v","client":-1,"seq":3}"#,
        ] {
            assert!(Command::decode(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_retried_cas_applies_once_and_answers_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        let cas = cas_as("a", None, "one", session(7, 1));
        let first = apply_raw(&mut state, 1, std::slice::from_ref(&cas));
        let first_outcome = Outcome::decode(&first[0]).unwrap();
        assert!(first_outcome.done);
        assert_eq!(first_outcome.value, None);
        assert_eq!(state.value("a"), Some("one"));
        // Another client removes the key: executing the cas again would swap again.
        apply(
            &mut state,
            2,
            &[Command::Delete { key: "a".into() }.encode()],
        );
        // The retry comes in a later instance, and twice in one instance.
        let second = apply_raw(&mut state, 3, &[cas.clone(), cas.clone()]);
        assert_eq!(second[0], first[0], "the recorded result, byte for byte");
        assert_eq!(second[1], first[0]);
        assert_eq!(
            state.value("a"),
            None,
            "the retried cas did not execute again"
        );
        // The same command without a session is not deduplicated.
        let plain = cas_as("a", None, "one", None);
        apply(&mut state, 4, std::slice::from_ref(&plain));
        apply(
            &mut state,
            5,
            &[Command::Delete { key: "a".into() }.encode()],
        );
        let out = apply(&mut state, 6, &[plain]);
        assert!(out[0].done, "without a session every copy executes");
        // Sessions are per client: another client's seq 1 executes.
        let out = apply(&mut state, 7, &[put_as("a", "two", session(8, 1))]);
        assert_eq!(text(&out[0].value), Some("one"));
        assert_eq!(state.value("a"), Some("two"));
        assert_eq!(state.view().lock().unwrap().sessions, 2);
    }

    #[test]
    fn an_older_seq_is_refused_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        apply(&mut state, 1, &[put_as("k", "1", session(5, 1))]);
        // Seqs of one client need not be contiguous in a group (the others went elsewhere).
        apply(&mut state, 2, &[put_as("k", "4", session(5, 4))]);
        let out = apply(
            &mut state,
            3,
            &[
                put_as("k", "1", session(5, 1)),
                put_as("k", "3", session(5, 3)),
            ],
        );
        for (outcome, seq) in out.iter().zip([1, 3]) {
            assert!(outcome.stale);
            assert!(!outcome.done);
            assert_eq!(
                outcome.error.as_deref(),
                Some(format!("stale request: seq {seq} already superseded by 4").as_str())
            );
        }
        assert_eq!(state.value("k"), Some("4"));
        // The last seq still answers its recorded result.
        let out = apply(&mut state, 4, &[put_as("k", "4", session(5, 4))]);
        assert_eq!(text(&out[0].value), Some("1"));
        assert!(!out[0].stale);
        assert_eq!(state.session_list(), vec![(5, 4, 4)]);
    }

    #[test]
    fn the_session_table_survives_snapshot_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        let cas = cas_as("a", Some("x"), "y", session(11, 3));
        apply(&mut state, 1, &[put("a", "x")]);
        let first = apply_raw(
            &mut state,
            2,
            &[cas.clone(), put_as("b", "1", session(12, 9))],
        );
        assert!(Outcome::decode(&first[0]).unwrap().done);
        apply(&mut state, 3, &[put("a", "x")]);
        state.snapshot().unwrap();
        let before = state.session_list();
        drop(state);

        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        assert_eq!(state.session_list(), before);
        assert_eq!(before, vec![(11, 3, 2), (12, 9, 2)]);
        assert_eq!(state.view().lock().unwrap().sessions, 2);
        let again = apply_raw(&mut state, 4, &[cas]);
        assert_eq!(
            again[0], first[0],
            "the recorded result came back from the snapshot"
        );
        assert_eq!(
            state.value("a"),
            Some("x"),
            "the retried cas did not execute after the restore"
        );
        let out = apply(&mut state, 5, &[put_as("b", "0", session(12, 8))]);
        assert!(out[0].stale);
    }

    /// Applies `steps` (instance, [(client, seq)]) as puts, with a snapshot and restore after
    /// the instance `restart_after` when given; returns the final session table.
    fn run_sessions(
        steps: &[(u64, Vec<(u64, u64)>)],
        restart_after: Option<u64>,
    ) -> Vec<(u64, u64, u64)> {
        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        state.set_session_bounds(3, usize::MAX);
        for (instance, commands) in steps {
            let commands: Vec<Bytes> = commands
                .iter()
                .map(|(c, q)| put_as(&format!("k{c}"), &format!("{c}-{q}"), session(*c, *q)))
                .collect();
            apply(&mut state, *instance, &commands);
            if restart_after == Some(*instance) {
                state.snapshot().unwrap();
                drop(state);
                state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
                state.set_session_bounds(3, usize::MAX);
            }
        }
        state.session_list()
    }

    #[test]
    fn eviction_is_decided_by_the_applied_log() {
        let steps = vec![
            (1, vec![(30, 1), (10, 1)]),
            (2, vec![(20, 1)]),
            // A retry (same seq) counts as a use: 30 becomes the most recent.
            (3, vec![(30, 1)]),
            // A fourth session: the least recently used goes, 10 (instance 1).
            (4, vec![(40, 1)]),
            // Two new sessions in one instance: 20 (instance 2), then 30 (instance 3) go.
            (5, vec![(50, 1), (60, 1)]),
            // Ties at one instance go by client id: 50 before 60; 40 (instance 4) goes first.
            (6, vec![(70, 1)]),
            (7, vec![(80, 1)]),
        ];
        let expected = vec![(60, 1, 5), (70, 1, 6), (80, 1, 7)];
        assert_eq!(
            run_sessions(&steps[..4], None),
            vec![(20, 1, 2), (30, 1, 3), (40, 1, 4)]
        );
        assert_eq!(run_sessions(&steps, None), expected);
        for restart in 1..=7 {
            assert_eq!(
                run_sessions(&steps, Some(restart)),
                expected,
                "restored after instance {restart}"
            );
        }
        // An evicted session is forgotten: its retry executes again (the documented limit).
        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        state.set_session_bounds(1, usize::MAX);
        apply(&mut state, 1, &[cas_as("a", None, "1", session(1, 1))]);
        apply(&mut state, 2, &[put_as("b", "1", session(2, 1))]);
        apply(
            &mut state,
            3,
            &[Command::Delete { key: "a".into() }.encode()],
        );
        let out = apply(&mut state, 4, &[cas_as("a", None, "1", session(1, 1))]);
        assert!(out[0].done);
    }

    #[test]
    fn recorded_value_bytes_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        state.set_session_bounds(100, 10);
        apply(&mut state, 1, &[put("a", "123456"), put("b", "1234")]);
        // Each get records the value it read.
        apply(
            &mut state,
            2,
            &[Command::Get { key: "a".into() }.encode_with(session(1, 1))],
        );
        apply(
            &mut state,
            3,
            &[Command::Get { key: "b".into() }.encode_with(session(2, 1))],
        );
        assert_eq!(state.session_list().len(), 2, "6 + 4 bytes fit in 10");
        // Client 2's next result replaces its 4 bytes with none (a put of a new key).
        apply(&mut state, 4, &[put_as("c", "x", session(2, 2))]);
        assert_eq!(state.session_list().len(), 2);
        // 6 + 0 + 6 bytes do not fit: the least recently used (client 1) goes.
        apply(
            &mut state,
            5,
            &[Command::Get { key: "a".into() }.encode_with(session(3, 1))],
        );
        assert_eq!(state.session_list(), vec![(2, 2, 4), (3, 1, 5)]);
    }

    #[test]
    fn snapshot_format_versions() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        apply(&mut state, 1, &[put_as("a", "1", session(4, 1))]);
        state.snapshot().unwrap();
        drop(state);
        let path = KvState::snapshot_path(dir.path(), GroupId(0));
        let good = std::fs::read(&path).unwrap();
        assert_eq!(&good[..8], b"PXKVSNP2");

        // An unknown version is refused before its body is read, and says so.
        for version in [b'4', b'0', 0xff] {
            let mut other = good.clone();
            other[7] = version;
            std::fs::write(&path, &other).unwrap();
            let err = KvState::open(dir.path(), GroupId(0), never())
                .err()
                .unwrap();
            assert!(matches!(err, SnapshotError::UnknownVersion { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("format version") && text.contains("reads versions 1, 2, 3"),
                "{text}"
            );
        }

        // A version-1 file (no session table) loads with an empty one.
        let body = br#"{"group":0,"checkpoint":9,"digest":5,"entries":{"a":"1"}}"#;
        let mut v1 = b"PXKVSNP1".to_vec();
        v1.extend_from_slice(&(body.len() as u64).to_le_bytes());
        v1.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        v1.extend_from_slice(body);
        std::fs::write(&path, &v1).unwrap();
        let state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        assert_eq!(state.checkpoint_instance(), Some(Instance(9)));
        assert_eq!(state.value("a"), Some("1"));
        assert!(state.session_list().is_empty());
        drop(state);

        // A session table with a client twice is corrupt.
        let record = r#"{"client":4,"seq":1,"used":1,"outcome":{"value":null,"done":true}}"#;
        let body = format!(
            r#"{{"group":0,"checkpoint":1,"digest":0,"entries":{{}},"sessions":[{record},{record}]}}"#
        );
        let mut twice = b"PXKVSNP2".to_vec();
        twice.extend_from_slice(&(body.len() as u64).to_le_bytes());
        twice.extend_from_slice(&crc32fast::hash(body.as_bytes()).to_le_bytes());
        twice.extend_from_slice(body.as_bytes());
        std::fs::write(&path, &twice).unwrap();
        let err = KvState::open(dir.path(), GroupId(0), never())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("corrupt") && err.contains("twice"), "{err}");
    }

    #[test]
    fn binary_values_round_trip_through_the_log_and_the_snapshot() {
        let binary = Value::from(vec![0u8, 0xff, b'"', 0x80, b'\n']);
        let put = Command::Put {
            key: "bin".into(),
            value: binary.clone(),
        };
        // Not text: the binary form, at most 32 bytes beyond the key and value.
        let bytes = put.encode_with(session(3, 1));
        assert_eq!(bytes[0], BINARY_MAGIC);
        assert!(bytes.len() <= put.payload_bytes() + 32);
        assert_eq!(
            Command::decode(&bytes).unwrap(),
            (put.clone(), session(3, 1))
        );
        // Text goes as JSON unless the JSON would be longer than allowed.
        let text = Command::Cas {
            key: "k".into(),
            expected: Some("e".into()),
            new: "n".into(),
        };
        assert_eq!(text.encode_for_log(None, 1000)[0], b'{');
        let binary_form = text.encode_for_log(None, 10);
        assert_eq!(binary_form[0], BINARY_MAGIC);
        assert_eq!(Command::decode(&binary_form).unwrap(), (text, None));
        for command in [
            Command::Get { key: "g".into() },
            Command::Delete { key: "d".into() },
            Command::Cas {
                key: "c".into(),
                expected: None,
                new: binary.clone(),
            },
        ] {
            let bytes = command.encode_binary(session(9, 9));
            assert_eq!(Command::decode(&bytes).unwrap(), (command, session(9, 9)));
        }
        // Malformed binary commands are refused, never misread.
        let good = put.encode_binary(None);
        for bad in [
            good[..good.len() - 1].to_vec(),
            [&good[..], b"x"].concat(),
            [&[BINARY_MAGIC, 2], &good[2..]].concat(),
            [&[BINARY_MAGIC, 1, 9], &good[3..]].concat(),
            [&[BINARY_MAGIC, 1, 1, 4], &good[4..]].concat(),
            vec![BINARY_MAGIC],
        ] {
            assert!(Command::decode(&bad).is_err(), "{bad:?}");
        }

        let dir = tempfile::tempdir().unwrap();
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        apply(&mut state, 1, &[put.encode_binary(None)]);
        let out = apply(
            &mut state,
            2,
            &[Command::Get { key: "bin".into() }.encode_with(session(4, 1))],
        );
        assert_eq!(
            out[0].value.as_ref(),
            Some(&binary),
            "the result carries the bytes"
        );
        assert_eq!(state.value_bytes("bin"), Some(binary.as_bytes()));
        state.snapshot().unwrap();
        let file = std::fs::read(KvState::snapshot_path(dir.path(), GroupId(0))).unwrap();
        assert_eq!(
            &file[..8],
            b"PXKVSNP3",
            "a snapshot with binary values is version 3"
        );
        drop(state);
        let mut state = KvState::open(dir.path(), GroupId(0), never()).unwrap();
        assert_eq!(state.value_bytes("bin"), Some(binary.as_bytes()));
        let again = apply(
            &mut state,
            3,
            &[Command::Get { key: "bin".into() }.encode_with(session(4, 1))],
        );
        assert_eq!(
            again[0].value.as_ref(),
            Some(&binary),
            "the recorded result too"
        );
    }

    #[test]
    fn keys_map_to_groups_by_crc32() {
        assert_eq!(group_of_key("a", 1), GroupId(0));
        // crc32("a") = 0xe8b7be43.
        assert_eq!(group_of_key("a", 7), GroupId(0xe8b7_be43 % 7));
        let spread: std::collections::BTreeSet<u32> = (0..100)
            .map(|i| group_of_key(&format!("k{i}"), 4).0)
            .collect();
        assert_eq!(spread.len(), 4);
    }

    /// A state of group 0 with text and binary values and sessions, instances 0 to 2 applied.
    fn busy_state(dir: &Path) -> KvState {
        let mut state = KvState::open(dir, GroupId(0), never()).unwrap();
        apply(
            &mut state,
            0,
            &[put("a", "1"), put_as("b", "2", session(3, 1))],
        );
        let binary = Command::Put {
            key: "bin".into(),
            value: Value::from(vec![0u8, 0xff, b'"']),
        };
        apply(&mut state, 1, &[binary.encode_binary(session(4, 2))]);
        apply(
            &mut state,
            2,
            &[
                Command::Get { key: "a".into() }.encode_with(session(5, 1)),
                Command::Delete { key: "b".into() }.encode(),
            ],
        );
        state
    }

    /// What `StateMachine::snapshot` streams.
    fn streamed(state: &mut KvState) -> Vec<u8> {
        let mut out = Vec::new();
        StateMachine::snapshot(state, &mut out).unwrap();
        out
    }

    /// Digest, map and session table: everything a restore must carry over.
    type Contents = (u32, BTreeMap<String, Value>, Vec<(u64, u64, u64)>);

    fn contents(state: &KvState) -> Contents {
        (state.digest(), state.map.clone(), state.session_list())
    }

    #[test]
    fn a_streamed_snapshot_restores_in_another_data_dir() {
        let a = tempfile::tempdir().unwrap();
        let mut state = busy_state(a.path());
        let bytes = streamed(&mut state);
        // The format is unchanged: the bytes of the in-memory reference encoder, and of the
        // .snap file.
        let reference = encode_snapshot(&SnapshotBody {
            group: 0,
            checkpoint: 2,
            digest: state.digest(),
            entries: state.map.clone(),
            sessions: state.sessions.records(),
        });
        assert_eq!(bytes, reference);
        assert_eq!(&bytes[..8], b"PXKVSNP3");
        state.snapshot().unwrap();
        let file = std::fs::read(KvState::snapshot_path(a.path(), GroupId(0))).unwrap();
        assert_eq!(file, bytes);

        let b = tempfile::tempdir().unwrap();
        let mut fresh = KvState::open(b.path(), GroupId(0), never()).unwrap();
        // Something else applied first: a restore replaces the whole state.
        apply(&mut fresh, 0, &[put("gone", "x")]);
        fresh.restore(Instance(2), &mut &bytes[..]).unwrap();
        assert_eq!(contents(&fresh), contents(&state));
        assert_eq!(fresh.value("gone"), None);
        assert_eq!(fresh.checkpoint_instance(), Some(Instance(2)));
        assert_eq!(fresh.view().lock().unwrap().applied_next, 3);
        assert_eq!(fresh.view().lock().unwrap().sessions, 3);
        // Durable: the other data dir reopens at the same state.
        drop(fresh);
        let mut fresh = KvState::open(b.path(), GroupId(0), never()).unwrap();
        assert_eq!(fresh.checkpoint_instance(), Some(Instance(2)));
        assert_eq!(contents(&fresh), contents(&state));
        // Both go on identically, retried sessions included.
        let next = [
            put_as("b", "3", session(3, 1)),
            Command::Get { key: "bin".into() }.encode(),
        ];
        let ours = apply_raw(&mut state, 3, &next);
        let theirs = apply_raw(&mut fresh, 3, &next);
        assert_eq!(ours, theirs);
        assert_eq!(contents(&fresh), contents(&state));
    }

    #[test]
    fn a_bad_restore_leaves_the_state_as_it_was() {
        let a = tempfile::tempdir().unwrap();
        let good = streamed(&mut busy_state(a.path()));
        let other_group = {
            let c = tempfile::tempdir().unwrap();
            let mut state = KvState::open(c.path(), GroupId(1), never()).unwrap();
            state.apply(GroupId(1), Instance(2), &[put("k", "v")], &mut Vec::new());
            streamed(&mut state)
        };
        let mut flipped = good.clone();
        let at = flipped.len() - 5;
        flipped[at] ^= 0x20;
        let mut version = good.clone();
        version[7] = b'9';
        let mut magic = good.clone();
        magic[0] = b'X';
        let cases: Vec<(&str, Vec<u8>, u64)> = vec![
            ("checksum", flipped, 2),
            ("body bytes", good[..good.len() - 1].to_vec(), 2),
            ("body bytes", [&good[..], b" "].concat(), 2),
            ("header", good[..10].to_vec(), 2),
            ("header", Vec::new(), 2),
            ("magic", magic, 2),
            ("format version", version, 2),
            ("not the 5", good.clone(), 5),
            ("not group 0", other_group, 2),
        ];

        let b = tempfile::tempdir().unwrap();
        let mut target = KvState::open(b.path(), GroupId(0), never()).unwrap();
        apply(&mut target, 0, &[put_as("x", "old", session(9, 1))]);
        target.snapshot().unwrap();
        let path = KvState::snapshot_path(b.path(), GroupId(0));
        let file_before = std::fs::read(&path).unwrap();
        let before = contents(&target);
        for (expected, bytes, instance) in cases {
            let err = target
                .restore(Instance(instance), &mut &bytes[..])
                .unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
            assert!(
                err.to_string().contains(expected),
                "{err} should say {expected}"
            );
            assert_eq!(contents(&target), before, "after {expected}");
            assert_eq!(target.checkpoint_instance(), Some(Instance(0)));
            assert_eq!(std::fs::read(&path).unwrap(), file_before);
            assert!(target.view().lock().unwrap().failed.is_none());
        }
        // It goes on from where it was.
        apply(&mut target, 1, &[put("y", "1")]);
        assert_eq!(target.value("x"), Some("old"));
        // A good restore still works after the bad ones.
        target.restore(Instance(2), &mut &good[..]).unwrap();
        assert_eq!(target.value("x"), None);
        assert_eq!(target.value("a"), Some("1"));
    }

    #[test]
    fn open_checkpoint_streams_the_snapshot_file() {
        let a = tempfile::tempdir().unwrap();
        let mut state = busy_state(a.path());
        assert!(
            state.open_checkpoint().unwrap().is_none(),
            "nothing durable yet"
        );
        state.snapshot().unwrap();
        let at_2 = contents(&state);
        let (instance, mut reader) = state.open_checkpoint().unwrap().unwrap();
        assert_eq!(instance, Instance(2));
        // A later snapshot replaces the file; the open reader still streams instance 2's.
        apply(&mut state, 3, &[put("late", "1")]);
        state.snapshot().unwrap();

        let b = tempfile::tempdir().unwrap();
        let mut fresh = KvState::open(b.path(), GroupId(0), never()).unwrap();
        fresh.restore(instance, &mut reader).unwrap();
        assert_eq!(contents(&fresh), at_2);
        assert_eq!(fresh.value("late"), None);
        let (instance, mut reader) = state.open_checkpoint().unwrap().unwrap();
        assert_eq!(instance, Instance(3));
        fresh.restore(instance, &mut reader).unwrap();
        assert_eq!(contents(&fresh), contents(&state));
    }

    #[test]
    fn a_snapshot_round_trips_through_a_checkpoint_file() {
        use paxring_wal::checkpoint::{CheckpointReader, CheckpointWriter};
        let a = tempfile::tempdir().unwrap();
        let mut state = busy_state(a.path());
        let ckpt = tempfile::tempdir().unwrap();
        // Small chunks, so that the snapshot spans several of them.
        let mut writer =
            CheckpointWriter::with_chunk_bytes(ckpt.path(), GroupId(0), Instance(2), 0, 16)
                .unwrap();
        StateMachine::snapshot(&mut state, &mut writer).unwrap();
        let (path, meta) = writer.finish().unwrap();
        assert!(meta.chunks > 1);
        let mut reader = CheckpointReader::open(&path).unwrap();
        let b = tempfile::tempdir().unwrap();
        let mut fresh = KvState::open(b.path(), GroupId(0), never()).unwrap();
        fresh.restore(meta.instance, &mut reader).unwrap();
        assert_eq!(contents(&fresh), contents(&state));
    }
}
