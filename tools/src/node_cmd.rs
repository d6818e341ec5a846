//! `paxring node --config FILE`: runs one node with the KV store and its client protocol until
//! SIGTERM/SIGINT or a fatal error.
//!
//! Owns: the node file format (`client_listen` + `[node]`), the process's life. Never: keeps
//! running after a fatal error (a failed fsync, a snapshot that could not be written): it exits
//! non-zero with the reason.

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
pub struct NodeArgs {
    /// The node file: `client_listen = "ip:port"` at top level and the node config in `[node]`.
    #[arg(long)]
    pub config: PathBuf,
}

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
}

/// Runs `paxring node`.
pub fn run(args: NodeArgs) -> ExitCode {
    match run_node(&args.config) {
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
    let node =
        Node::start(file.node.clone(), factory).map_err(|e| format!("node {node_id}: {e}"))?;
    let views: Vec<SharedView> = std::mem::take(&mut *views.lock().expect("views lock"))
        .into_values()
        .collect();
    let node = Arc::new(node);
    let server = KvServer::start(
        client_listener,
        node.clone(),
        Arc::new(views.clone()),
        ServerLimits::default(),
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
