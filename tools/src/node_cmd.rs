//! `paxring node --config FILE`: runs one node with the KV store and its client protocol until
//! SIGTERM/SIGINT or a fatal error.
//!
//! Owns: the node file format (`client_listen` + `[node]`), the process's life. Never: keeps
//! running after a fatal error (a failed fsync, a snapshot that could not be written): it exits
//! non-zero with the reason.

use crate::kv::proto::NodeAddr;
use crate::kv::server::{KvServer, ServerLimits};
use crate::kv::state::{KvState, SharedView, SnapshotPolicy};
use paxring_engine::runtime::{Node, NodeConfig, StateMachine, StateMachineFactory};
use paxring_wal::GroupId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Arguments of `paxring node`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = NODE_FILE_HELP, after_help = NODE_FILE_HELP)]
pub struct NodeArgs {
    /// The node file (TOML): `client_listen`, `peer_client_addrs` and the snapshot settings at
    /// top level, the runtime's settings in `[node]`. `--print-default-config` prints every key.
    #[arg(long, required_unless_present = "print_default_config")]
    pub config: Option<PathBuf>,
    /// Print a node file with every key, its default value and what it means (for node 1 of a
    /// three-node cluster on 127.0.0.1), then exit.
    #[arg(long)]
    pub print_default_config: bool,
}

const NODE_FILE_HELP: &str = "\
The node file's keys:
  client_listen             where the KV client protocol listens (ip:port)
  [[peer_client_addrs]]     id and addr of each other node's client address: named in
                            not_leader answers so that one address is enough for a client
  snapshot_every_instances  snapshot the KV state after this many applied instances (1000)
  snapshot_every_ms         or this long after the last snapshot, when something was applied (1000)
  [node]                    node_id, cluster_id, listen, data_dir, [[node.peers]] (id, addr),
                            cores, groups, batch_bytes_max, segment_bytes, ... (the runtime's
                            settings; every key with its default and meaning:
                            `paxring node --print-default-config`)
The KV store and its client protocol: docs/CLIENT.md.";

/// The file `paxring node --config` reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// Where the KV client protocol listens.
    pub client_listen: SocketAddr,
    /// Snapshot a group's KV state after this many applied instances.
    #[serde(default = "default_snapshot_every_instances")]
    pub snapshot_every_instances: u64,
    /// Or after this many milliseconds with applies.
    #[serde(default = "default_snapshot_every_ms")]
    pub snapshot_every_ms: u64,
    /// The other nodes' client addresses, named in `not_leader` answers (a client that knows
    /// one node finds the leader) and in `id` answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_client_addrs: Vec<NodeAddr>,
    /// The runtime's config.
    pub node: NodeConfig,
}

fn default_snapshot_every_instances() -> u64 {
    SnapshotPolicy::default().every_instances
}

fn default_snapshot_every_ms() -> u64 {
    SnapshotPolicy::default().every.as_millis() as u64
}

impl NodeFile {
    /// Reads and validates a node file.
    pub fn load(path: &Path) -> Result<NodeFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read node file {}: {e}", path.display()))?;
        let file: NodeFile = toml::from_str(&text)
            .map_err(|e| format!("node file {} is not valid: {e}", path.display()))?;
        file.node
            .validate()
            .map_err(|e| format!("node file {}: {e}", path.display()))?;
        if file.snapshot_every_instances == 0 {
            return Err(format!(
                "node file {}: snapshot_every_instances is 0 (fix: use at least 1)",
                path.display()
            ));
        }
        let peers: Vec<u32> = file.node.peers.iter().map(|p| p.id).collect();
        let mut seen = std::collections::BTreeSet::new();
        for entry in &file.peer_client_addrs {
            if !peers.contains(&entry.id) {
                return Err(format!(
                    "node file {}: peer_client_addrs names node {}, which is not one of node.peers {peers:?} (fix: list only the other members)",
                    path.display(),
                    entry.id
                ));
            }
            if !seen.insert(entry.id) {
                return Err(format!(
                    "node file {}: peer_client_addrs names node {} twice (fix: one entry per node)",
                    path.display(),
                    entry.id
                ));
            }
        }
        if file.client_listen == file.node.listen && file.client_listen.port() != 0 {
            return Err(format!(
                "node file {}: client_listen equals node.listen {} (fix: use two ports)",
                path.display(),
                file.client_listen
            ));
        }
        Ok(file)
    }

    /// The file as TOML text.
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("a node file always serializes")
    }

    /// The other nodes' client addresses by id.
    pub fn client_addrs(&self) -> BTreeMap<u32, SocketAddr> {
        self.peer_client_addrs
            .iter()
            .map(|entry| (entry.id, entry.addr))
            .collect()
    }
}

/// What each key of the node file means (the runtime's keys from `NodeConfig`'s docs).
const KEY_DOCS: &[(&str, &str)] = &[
    ("client_listen", "Where the KV client protocol listens (ip:port)."),
    (
        "snapshot_every_instances",
        "Snapshot a group's KV state after this many applied instances.",
    ),
    (
        "snapshot_every_ms",
        "Or this many milliseconds after the last snapshot, when something was applied.",
    ),
    (
        "peer_client_addrs",
        "Each other node's client address (id, addr): named in not_leader answers, so a client that knows one node finds the leader.",
    ),
    ("node_id", "This node's id: unique in the cluster, not 0."),
    (
        "cluster_id",
        "Identifies the cluster; a peer with another id is refused at the handshake.",
    ),
    ("listen", "Where this node listens for peers (one ip:port for all groups)."),
    (
        "data_dir",
        "Directory for the WAL (wal/core-N, one per core), the node's identity and the KV snapshots (kv/).",
    ),
    ("cores", "Number of core threads; each owns a WAL and a fixed set of groups."),
    ("pin_cores", "Pin core threads to CPUs."),
    (
        "groups",
        "Number of Paxos groups, numbered 0..groups; identical on every node.",
    ),
    (
        "pipeline_depth",
        "Instances in flight per group (1 = PhxPaxos's serial mode).",
    ),
    (
        "batch_bytes_max",
        "Largest value (batch of commands) of one instance, in bytes. The KV command limit is this minus 64 bytes (key and values together).",
    ),
    ("batch_commands_max", "Most commands in one instance's value."),
    (
        "batch_linger_us",
        "Longest time a proposal waits for more to join its batch, in microseconds (0 = none).",
    ),
    ("proposal_queue_max", "Proposals queued per core before `overloaded`."),
    (
        "sync_mode",
        "How a WAL write becomes durable: \"fdatasync\" (write, then fdatasync) or \"dsync\".",
    ),
    (
        "wal_backend",
        "WAL I/O: \"auto\" (io_uring, else blocking calls), \"uring\" or \"blocking\".",
    ),
    (
        "segment_bytes",
        "Size of one WAL segment file, in bytes (a multiple of 4096); each core preallocates its segments in full.",
    ),
    (
        "round_bytes_max",
        "Largest WAL write of one round, in bytes (a multiple of 4096).",
    ),
    (
        "wal_writes_in_flight",
        "WAL writes a core keeps in flight at once (1..=8; each costs one more buffer of round_bytes_max).",
    ),
    ("tick_ms", "Length of one protocol tick, in milliseconds."),
    (
        "election_timeout_ticks",
        "Ticks without hearing from a leader before a follower may try to lead.",
    ),
    ("heartbeat_ticks", "Ticks between a leader's heartbeats."),
    ("frame_bytes_max", "Largest frame accepted from a peer, in bytes."),
    (
        "inbox_frames_max",
        "Frames queued per core inbox before the network thread stops reading.",
    ),
    (
        "outbound_down_bytes_max",
        "Bytes of frames kept for a peer while its connection is down (the newest); a returning peer catches up the rest from the log or a checkpoint.",
    ),
    (
        "catchup_window_instances",
        "Streaming catch-up's window per group: values a lagging replica has asked for beyond its applied point (each request asks for half).",
    ),
    (
        "catchup_window_bytes",
        "The catch-up window in value bytes (each request asks for at most half of it).",
    ),
    (
        "catchup_serve_bytes_per_sec",
        "Value bytes per second each core reads from its WAL for lagging peers (0 = no limit beyond the per-round budget).",
    ),
    (
        "wal_purge",
        "Purge the WAL below each group's state machine checkpoint (on by default; false keeps the whole log); a replica behind every peer's log base fetches a checkpoint from a peer.",
    ),
    (
        "purge_every_ms",
        "How often each core moves its groups' log bases to their checkpoints and purges, in milliseconds.",
    ),
    (
        "wal_budget_bytes",
        "Disk each core's WAL stays under, in bytes (0 = none): a proposal it has no room for is refused (overloaded) until purge makes room; what holds the oldest segment is logged and shown in stats.",
    ),
    (
        "purge_hold_for_peers_ms",
        "A group's log base does not move past what a lagging peer asked for within this many milliseconds (0 = no hold; a peer silent for longer holds nothing).",
    ),
    (
        "check_quorum",
        "Check quorum and leader stickiness: a leader that hears no quorum within an election timeout steps down, and a replica that hears a live leader ignores other nodes' Prepares.",
    ),
    (
        "master_lease_ms",
        "The master lease, in milliseconds: a replica that granted its leader's lease promises and grants no other node for this long, and the leader serves lease reads (KV `get` mode \"lease\") with no message while a quorum's grants run. 0 turns leases off (reads use read index). The same on every node.",
    ),
    (
        "clock_drift_ppm",
        "The bound on any node's clock-rate drift from real time that leases assume, in parts per million (10000 = 1%). The same on every node.",
    ),
    (
        "peers",
        "Every other member: its id, its peer address, and `follower = true` for a non-voting replica.",
    ),
    (
        "follower",
        "This node is a follower: a non-voting replica that applies chosen values but never votes or leads.",
    ),
];

/// A node file for node 1 of a three-node cluster on 127.0.0.1 with every key at its default,
/// each key preceded by a comment saying what it means.
pub fn default_config_text() -> String {
    let peer = |port: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], port)) };
    let node = NodeConfig::builder(1, peer(7001), "/var/lib/paxring/node-1")
        .peer(2, peer(7002))
        .peer(3, peer(7003))
        .build()
        .expect("the sample config is valid");
    let file = NodeFile {
        client_listen: peer(7101),
        snapshot_every_instances: default_snapshot_every_instances(),
        snapshot_every_ms: default_snapshot_every_ms(),
        peer_client_addrs: vec![
            NodeAddr {
                id: 2,
                addr: peer(7102),
            },
            NodeAddr {
                id: 3,
                addr: peer(7103),
            },
        ],
        node,
    };
    let mut out = String::from(
        "# A paxring node file: `paxring node --config FILE`. Node 1 of a three-node cluster on\n\
         # 127.0.0.1, every other key at its default. Keys may be left out to take the default\n\
         # (except client_listen and, in [node], node_id, cluster_id, listen and data_dir).\n\n",
    );
    for line in file.to_toml_string().lines() {
        let trimmed = line.trim_start();
        let key = if let Some(table) = trimmed.strip_prefix("[[") {
            table.trim_end_matches("]]").rsplit('.').next()
        } else if trimmed.starts_with('[') {
            None
        } else {
            trimmed.split_once(" = ").map(|(key, _)| key)
        };
        let documented = key.and_then(|key| KEY_DOCS.iter().find(|(k, _)| *k == key));
        // A key of a repeated table is documented once, at its first table.
        let first_of_table = !trimmed.starts_with("[[") || !out.contains(trimmed);
        if let (Some((_, doc)), true) = (documented, first_of_table) {
            if !(trimmed.starts_with("id = ") || trimmed.starts_with("addr = ")) {
                out.push_str(&format!("# {doc}\n"));
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Runs `paxring node`.
pub fn run(args: NodeArgs) -> ExitCode {
    if args.print_default_config {
        print!("{}", default_config_text());
        return ExitCode::SUCCESS;
    }
    let config = args.config.expect("clap requires --config");
    match run_node(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("paxring node: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(path: &Path) -> Result<(), String> {
    let file = NodeFile::load(path)?;
    // A panic is a broken invariant (say, an apply out of order): end the whole process, so the
    // node never runs on with one of its threads gone.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("paxring node: a thread panicked; aborting the process");
        std::process::abort();
    }));
    let terminate = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, terminate.clone())
            .map_err(|e| format!("cannot install the handler of signal {signal}: {e}"))?;
    }
    let client_listener = TcpListener::bind(file.client_listen)
        .map_err(|e| format!("cannot listen for clients on {}: {e}", file.client_listen))?;
    let policy = SnapshotPolicy {
        every_instances: file.snapshot_every_instances,
        every: Duration::from_millis(file.snapshot_every_ms),
    };
    let views: Arc<Mutex<BTreeMap<u32, SharedView>>> = Arc::default();
    let factory: StateMachineFactory = {
        let data_dir = file.node.data_dir.clone();
        let views = views.clone();
        Box::new(move |group: GroupId| {
            let state = KvState::open(&data_dir, group, policy).map_err(|e| e.to_string())?;
            views
                .lock()
                .expect("views lock")
                .insert(group.0, state.view());
            Ok(Box::new(state) as Box<dyn StateMachine>)
        })
    };
    let node_id = file.node.node_id;
    // The state machines create DATA/kv when the node starts; a start that fails must not
    // leave it behind, empty, when it was not there before.
    let kv_dir = file.node.data_dir.join("kv");
    let kv_existed = kv_dir.exists();
    let node = Node::start(file.node.clone(), factory).map_err(|e| {
        if !kv_existed {
            // Only an empty directory is removed (remove_dir refuses any other).
            let _ = std::fs::remove_dir(&kv_dir);
        }
        format!("node {node_id}: {e}")
    })?;
    let views: Vec<SharedView> = std::mem::take(&mut *views.lock().expect("views lock"))
        .into_values()
        .collect();
    let node = Arc::new(node);
    let server = KvServer::start(
        client_listener,
        node.clone(),
        Arc::new(views.clone()),
        ServerLimits::default(),
        file.client_addrs(),
    )
    .map_err(|e| format!("cannot start the client server: {e}"))?;
    eprintln!(
        "paxring node {node_id}: peers on {}, clients on {}, data in {}",
        node.listen_addr(),
        server.local_addr(),
        file.node.data_dir.display()
    );

    let failure = loop {
        if terminate.load(Ordering::Acquire) {
            break None;
        }
        if let Some(reason) = node.fatal_error() {
            break Some(format!("fatal error: {reason}"));
        }
        if node.is_stopped() {
            break Some("the node stopped".to_string());
        }
        if let Some(reason) = views
            .iter()
            .find_map(|v| v.lock().expect("view lock").failed.clone())
        {
            break Some(format!("KV snapshot failed: {reason}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "paxring node {node_id}: stopping ({})",
        failure.as_deref().unwrap_or("signal")
    );
    if !server.stop(Duration::from_secs(15)) {
        eprintln!("paxring node {node_id}: some client connections did not end in time");
    }
    match Arc::try_unwrap(node) {
        Ok(node) => {
            if let Err(e) = node.shutdown() {
                if failure.is_none() {
                    return Err(format!("shutdown: {e}"));
                }
            }
        }
        Err(_) => eprintln!("paxring node {node_id}: exiting with client threads still running"),
    }
    match failure {
        Some(reason) => Err(reason),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! Proves `--print-default-config` prints a valid node file with every key explained, and
    //! that `peer_client_addrs` must name other members, once each.
    use super::*;

    #[test]
    fn the_default_config_loads_and_explains_every_key() {
        let text = default_config_text();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, &text).unwrap();
        let file = NodeFile::load(&path).expect("the printed file loads");
        assert_eq!(file.node.batch_bytes_max, 256 * 1024);
        assert_eq!(file.client_addrs().len(), 2);
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let Some((key, _)) = line.split_once(" = ") else {
                continue;
            };
            if key == "id" || key == "addr" {
                continue;
            }
            assert!(
                at > 0 && lines[at - 1].starts_with("# "),
                "key {key} has no comment:\n{text}"
            );
        }
    }

    #[test]
    fn peer_client_addrs_name_other_members_once() {
        let text = default_config_text();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        for (from, to, problem) in [
            (
                "id = 3\naddr = \"127.0.0.1:7103\"",
                "id = 4\naddr = \"127.0.0.1:7103\"",
                "node 4",
            ),
            (
                "id = 3\naddr = \"127.0.0.1:7103\"",
                "id = 2\naddr = \"127.0.0.1:7103\"",
                "twice",
            ),
        ] {
            assert!(text.contains(from));
            std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
            let err = NodeFile::load(&path).unwrap_err();
            assert!(err.contains(problem), "{err}");
        }
    }
}
