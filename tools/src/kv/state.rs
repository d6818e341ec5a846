//! The replicated key-value state machine of one group: commands, their results, the rolling
//! digest of the applied sequence, and the snapshot file that makes its checkpoint real.
//!
//! Owns: the map of one group, `DATA_DIR/kv/group-G.snap`, the group's published [`GroupView`].
//! Never: reports a checkpoint instance that is not in a snapshot file already fsynced (file and
//! directory), and never retries a failed fsync (the group stops taking snapshots and publishes
//! the error, which ends the node process).

use bytes::Bytes;
use paxring_engine::runtime::StateMachine;
use paxring_wal::{GroupId, Instance};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One command of the KV store, as proposed to a group's log (JSON, one object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Command {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
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
        expected: Option<String>,
        /// The value to store when it does.
        new: String,
    },
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

    /// The command as the bytes proposed to the log.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a command always serializes"))
    }

    /// Parses a command from the log.
    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a KV command: {e}"))
    }
}

/// What applying one command returned (JSON, one object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The key's value before the command (for get: the value read).
    pub value: Option<String>,
    /// For cas: whether the swap happened. For the other commands: always true.
    pub done: bool,
    /// Set when the log held bytes that are not a command (nothing was changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    /// The file is not a valid snapshot of this group.
    #[error("snapshot {path} is corrupt: {problem} (move it away to rebuild the group from the WAL, if the WAL still holds every instance)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"PXKVSNP1";
/// Header: magic (8), body length (u64 LE), body CRC-32 (u32 LE), then the JSON body.
const SNAPSHOT_HEADER_BYTES: usize = 20;

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    group: u32,
    checkpoint: u64,
    digest: u32,
    entries: BTreeMap<String, String>,
}

/// The KV state machine of one group.
pub struct KvState {
    group: GroupId,
    path: PathBuf,
    map: BTreeMap<String, String>,
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
            applied_next: None,
            digest: 0,
            checkpoint: None,
            policy,
            instances_since_snapshot: 0,
            last_snapshot: Instant::now(),
            failed: None,
            view: Arc::new(Mutex::new(GroupView::default())),
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let body = decode_snapshot(&path, &bytes)?;
                if body.group != group.0 {
                    return Err(SnapshotError::Corrupt {
                        path,
                        problem: format!("it holds group {}, not group {}", body.group, group.0),
                    });
                }
                state.map = body.entries;
                state.digest = body.digest;
                state.checkpoint = Some(Instance(body.checkpoint));
                state.applied_next = Some(body.checkpoint + 1);
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
    pub fn value(&self, key: &str) -> Option<&String> {
        self.map.get(key)
    }

    /// The rolling digest of the applied sequence.
    #[cfg(test)]
    pub fn digest(&self) -> u32 {
        self.digest
    }

    /// Applies one command to the map and returns its outcome.
    fn execute(&mut self, bytes: &[u8]) -> Outcome {
        let command = match Command::decode(bytes) {
            Ok(command) => command,
            Err(error) => {
                return Outcome {
                    value: None,
                    done: false,
                    error: Some(error),
                }
            }
        };
        match command {
            Command::Put { key, value } => Outcome {
                value: self.map.insert(key, value),
                done: true,
                error: None,
            },
            Command::Get { key } => Outcome {
                value: self.map.get(&key).cloned(),
                done: true,
                error: None,
            },
            Command::Delete { key } => Outcome {
                value: self.map.remove(&key),
                done: true,
                error: None,
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
        let body = SnapshotBody {
            group: self.group.0,
            checkpoint,
            digest: self.digest,
            entries: self.map.clone(),
        };
        let bytes = encode_snapshot(&body);
        let tmp = self.path.with_extension("snap.tmp");
        let io = |path: &Path, op: &'static str| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { path, op, source }
        };
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp, "create"))?;
        file.write_all(&bytes).map_err(io(&tmp, "write"))?;
        file.sync_all().map_err(io(&tmp, "fsync"))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path, "rename"))?;
        let dir = self.path.parent().expect("a snapshot path has a parent");
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir, "fsync directory"))?;
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
            let outcome = self.execute(command);
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
}

fn encode_snapshot(body: &SnapshotBody) -> Vec<u8> {
    let json = serde_json::to_vec(body).expect("a snapshot body always serializes");
    let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + json.len());
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    bytes.extend_from_slice(&json);
    bytes
}

fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<SnapshotBody, SnapshotError> {
    let corrupt = |problem: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        problem,
    };
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(corrupt(format!(
            "{} bytes, shorter than the {SNAPSHOT_HEADER_BYTES}-byte header",
            bytes.len()
        )));
    }
    if &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic at offset 0".into()));
    }
    let length = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if length != body.len() as u64 {
        return Err(corrupt(format!(
            "header says {length} body bytes, the file holds {}",
            body.len()
        )));
    }
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(corrupt(format!(
            "body checksum {actual:#010x} does not match the header's {crc:#010x}"
        )));
    }
    serde_json::from_slice(body).map_err(|e| corrupt(format!("body is not a snapshot: {e}")))
}

#[cfg(test)]
mod tests {
    //! Proves the KV semantics (put, get, delete, cas on present and absent keys), that the
    //! digest depends on the applied sequence, that a snapshot round-trips (map, checkpoint,
    //! digest) and that a damaged snapshot is refused with a clear error.
    use super::*;

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
        assert_eq!(out[2].value.as_deref(), Some("1"));
        let cas = |expected: Option<&str>, new: &str| {
            Command::Cas {
                key: "a".into(),
                expected: expected.map(String::from),
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
        assert_eq!(out[0].value.as_deref(), Some("1"));
        assert!(out[1].done);
        assert!(!out[2].done);
        assert_eq!(state.value("a").map(String::as_str), Some("2"));
        let out = apply(
            &mut state,
            3,
            &[Command::Delete { key: "a".into() }.encode(), cas(None, "4")],
        );
        assert_eq!(out[0].value.as_deref(), Some("2"));
        assert!(
            out[1].done,
            "cas on an absent key with expected = None swaps"
        );
        assert_eq!(state.value("a").map(String::as_str), Some("4"));
        let out = apply(&mut state, 4, &[Bytes::from_static(b"{not json")]);
        assert!(out[0].error.is_some());
        assert!(!out[0].done);
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
        assert_eq!(state.value("b").map(String::as_str), Some("2"));
        assert_eq!(state.value("c"), None, "instance 7 was not in the snapshot");
        assert_eq!(state.view().lock().unwrap().applied_next, 7);
        // Replay continues from the checkpoint + 1.
        apply(&mut state, 7, &[put("c", "3")]);
        assert_eq!(state.value("c").map(String::as_str), Some("3"));
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
    fn keys_map_to_groups_by_crc32() {
        assert_eq!(group_of_key("a", 1), GroupId(0));
        // crc32("a") = 0xe8b7be43.
        assert_eq!(group_of_key("a", 7), GroupId(0xe8b7_be43 % 7));
        let spread: std::collections::BTreeSet<u32> = (0..100)
            .map(|i| group_of_key(&format!("k{i}"), 4).0)
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
