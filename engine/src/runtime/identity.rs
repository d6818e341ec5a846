//! The data directory's identity file: which cluster and node the directory belongs to, the
//! node's incarnation, and whether a re-learn after lost state is still pending.
//!
//! Owns: the file `IDENTITY` in the data directory (a few `key = value` lines and a crc32 of
//! them), its atomic replacement (write a temporary file, fsync, rename, fsync the directory),
//! and the start-up decision of docs/PROTOCOL.md#node-identity:
//! - a valid file whose ids match the config: a restart; the incarnation goes up by one;
//! - no file and no WAL: the node holds nothing (a cluster created anew, or a wiped data
//!   directory look the same), so every group re-learns before it votes; the file is written
//!   at once with `relearn_pending = 1`, which stays until every core's WAL holds records
//!   (its first write carries the re-learn records, which keep the obligation from then on);
//! - no file but a WAL with records, a damaged file, or ids that differ: refuse to start with
//!   an error that says what to do.
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file name inside the data directory.
pub const FILE_NAME: &str = "IDENTITY";
const HEADER: &str = "paxring-identity 1";

/// What the identity file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster the directory belongs to.
    pub cluster_id: u64,
    /// The node the directory belongs to.
    pub node_id: u32,
    /// Bumped at every start (before anything is sent).
    pub incarnation: u64,
    /// The node started with lost state and some core's WAL holds no records yet.
    pub relearn_pending: bool,
}

/// The identity file as found at start.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// A valid file.
    Valid(Identity),
    /// No file.
    Missing,
    /// A file that does not parse or fails its checksum.
    Damaged(String),
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn body(identity: &Identity) -> String {
    format!(
        "{HEADER}\ncluster_id = {}\nnode_id = {}\nincarnation = {}\nrelearn_pending = {}\n",
        identity.cluster_id,
        identity.node_id,
        identity.incarnation,
        u8::from(identity.relearn_pending)
    )
}

/// Reads the identity file of `dir`.
pub fn read(dir: &Path) -> Found {
    let text = match std::fs::read_to_string(path(dir)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Found::Missing,
        Err(e) => return Found::Damaged(format!("cannot read it: {e}")),
    };
    match parse(&text) {
        Ok(identity) => Found::Valid(identity),
        Err(why) => Found::Damaged(why),
    }
}

fn parse(text: &str) -> Result<Identity, String> {
    let Some((content, crc_line)) = text.trim_end().rsplit_once('\n') else {
        return Err("too short".into());
    };
    let crc = crc_line
        .strip_prefix("crc32 = ")
        .and_then(|v| u32::from_str_radix(v.trim(), 16).ok())
        .ok_or("no crc32 line")?;
    let content = format!("{content}\n");
    if crc32fast::hash(content.as_bytes()) != crc {
        return Err("checksum mismatch".into());
    }
    let mut lines = content.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("first line is not {HEADER:?}"));
    }
    let mut value = |key: &str| -> Result<u64, String> {
        let line = lines.next().ok_or(format!("missing {key}"))?;
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(" = "))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(format!("bad {key} line {line:?}"))
    };
    let cluster_id = value("cluster_id")?;
    let node_id = u32::try_from(value("node_id")?).map_err(|_| "node_id too large")?;
    let incarnation = value("incarnation")?;
    let relearn_pending = value("relearn_pending")? == 1;
    Ok(Identity {
        cluster_id,
        node_id,
        incarnation,
        relearn_pending,
    })
}

/// Replaces the identity file of `dir` atomically and durably.
pub fn write(dir: &Path, identity: &Identity) -> std::io::Result<()> {
    let content = body(identity);
    let text = format!(
        "{content}crc32 = {:08x}\n",
        crc32fast::hash(content.as_bytes())
    );
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path(dir))?;
    std::fs::File::open(dir)?.sync_all()
}

/// What a start decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The identity now on disk.
    pub identity: Identity,
    /// The node's state is lost (every group of every core without WAL records re-learns).
    pub state_lost: bool,
}

/// Decides how this start relates to the node's history and writes the new identity (with
/// the incarnation bumped) before anything is sent. `wal_has_records` says whether any core's
/// WAL under `dir` already holds a record; `now_ms` seeds the incarnation of a directory that
/// lost its file (so that incarnations never repeat).
pub fn start(
    dir: &Path,
    cluster_id: u64,
    node_id: u32,
    wal_has_records: bool,
    now_ms: u64,
) -> Result<Decision, String> {
    let decision = match read(dir) {
        Found::Valid(old) => {
            if old.cluster_id != cluster_id || old.node_id != node_id {
                return Err(format!(
                    "data dir {} belongs to cluster {} node {}, but this node is configured as cluster {cluster_id} node {node_id}; point data_dir at this node's own directory (or at an empty one to join as a replica that re-learns)",
                    dir.display(),
                    old.cluster_id,
                    old.node_id
                ));
            }
            Decision {
                identity: Identity {
                    incarnation: old.incarnation + 1,
                    ..old.clone()
                },
                state_lost: old.relearn_pending,
            }
        }
        Found::Missing if wal_has_records => {
            return Err(format!(
                "data dir {} has a WAL but no {FILE_NAME} file: it cannot be told apart from another node's data; restore the file, or empty the directory so that this node re-learns everything from its peers",
                dir.display()
            ))
        }
        Found::Missing => Decision {
            identity: Identity {
                cluster_id,
                node_id,
                incarnation: now_ms.max(1),
                relearn_pending: true,
            },
            state_lost: true,
        },
        Found::Damaged(why) => {
            return Err(format!(
                "data dir {}: {FILE_NAME} is damaged ({why}); restore it, or empty the directory so that this node re-learns everything from its peers",
                dir.display()
            ))
        }
    };
    write(dir, &decision.identity)
        .map_err(|e| format!("cannot write {}: {e}", path(dir).display()))?;
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_relearns_and_a_restart_bumps_the_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let first = start(dir.path(), 7, 2, false, 1234).unwrap();
        assert!(first.state_lost);
        assert_eq!(first.identity.incarnation, 1234);
        // Still pending (some core had no records): lost again, incarnation + 1.
        let second = start(dir.path(), 7, 2, false, 9).unwrap();
        assert!(second.state_lost);
        assert_eq!(second.identity.incarnation, 1235);
        let mut cleared = second.identity.clone();
        cleared.relearn_pending = false;
        write(dir.path(), &cleared).unwrap();
        let third = start(dir.path(), 7, 2, true, 9).unwrap();
        assert!(!third.state_lost);
        assert_eq!(third.identity.incarnation, 1236);
    }

    #[test]
    fn wrong_ids_damage_and_a_wal_without_identity_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        start(dir.path(), 7, 2, false, 5).unwrap();
        let wrong = start(dir.path(), 8, 2, true, 5).unwrap_err();
        assert!(wrong.contains("belongs to cluster 7 node 2"), "{wrong}");
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            text.replace("node_id = 2", "node_id = 3"),
        )
        .unwrap();
        let damaged = start(dir.path(), 7, 3, true, 5).unwrap_err();
        assert!(damaged.contains("checksum mismatch"), "{damaged}");
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        let orphan = start(dir.path(), 7, 2, true, 5).unwrap_err();
        assert!(orphan.contains("has a WAL but no IDENTITY"), "{orphan}");
    }
}
