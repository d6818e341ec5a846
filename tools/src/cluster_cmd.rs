//! `paxring cluster up|down|restart`: a local cluster of separate `paxring node` processes on
//! 127.0.0.1, described by `DIR/cluster.json`.
//!
//! Owns: the cluster directory layout (`DIR/node-ID/{config.toml,node.log,data}`,
//! `DIR/cluster.json`) and the node processes it starts. Never: signals a process that is not
//! one of the pids in `cluster.json` still running `paxring node`; every wait is bounded.

use crate::kv::proto::{NodeAddr, Request};
use crate::node_cmd::NodeFile;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use paxring_engine::runtime::NodeConfig;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `paxring cluster`.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// Writes each node's config and starts the nodes as separate processes.
    Up(UpArgs),
    /// Stops every node of the cluster (SIGTERM, then SIGKILL after a bounded wait).
    Down(DirArgs),
    /// Restarts one node from its config and records its new pid.
    Restart(RestartArgs),
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// Number of voting nodes (ids 1..=N).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Followers (non-voting replicas) after the voters: ids N+1..=N+F.
    #[arg(long, default_value_t = 0)]
    followers: u32,
    /// Number of Paxos groups.
    #[arg(long, default_value_t = 1)]
    groups: u32,
    /// Core threads per node.
    #[arg(long, default_value_t = 1)]
    cores: usize,
    /// The cluster id written into every node's config.
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// The cluster's directory (created; must not hold a cluster.json already).
    #[arg(long)]
    dir: PathBuf,
    /// Pin core threads to CPUs (off by default: the nodes of a local cluster share CPUs).
    #[arg(long)]
    pin_cores: bool,
    /// Size of one WAL segment file, in bytes (a multiple of 4096, at least 16 MiB; default:
    /// the node default, 64 MiB). Each core of each node preallocates two segments at start.
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Seconds to wait for every node to answer.
    #[arg(long, default_value_t = 30)]
    wait_seconds: u64,
}

#[derive(clap::Args, Debug)]
struct DirArgs {
    /// The cluster's directory.
    #[arg(long)]
    dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct RestartArgs {
    /// The cluster's directory.
    #[arg(long)]
    dir: PathBuf,
    /// The node to restart.
    #[arg(long)]
    node: u32,
    /// Seconds to wait for the node to answer.
    #[arg(long, default_value_t = 30)]
    wait_seconds: u64,
}

/// `DIR/cluster.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    /// One entry per node.
    pub nodes: Vec<ClusterNode>,
}

/// One node of `cluster.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Node id.
    pub id: u32,
    /// Replication address.
    pub peer_addr: SocketAddr,
    /// KV client protocol address.
    pub client_addr: SocketAddr,
    /// Process id of the running node.
    pub pid: u32,
    /// The node's data dir.
    pub data_dir: PathBuf,
    /// The node's config file.
    pub config: PathBuf,
    /// A follower: a non-voting replica (docs/PROTOCOL.md#follower-nodes).
    #[serde(default)]
    pub follower: bool,
}

/// Runs `paxring cluster`.
pub fn run(args: ClusterArgs) -> ExitCode {
    let result = match args.command {
        ClusterCommand::Up(up) => cluster_up(&up),
        ClusterCommand::Down(down) => cluster_down(&down.dir),
        ClusterCommand::Restart(restart) => cluster_restart(&restart),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("paxring cluster: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn cluster_file_path(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

/// Reads `DIR/cluster.json`.
pub fn read_cluster(dir: &Path) -> Result<ClusterFile, String> {
    let path = cluster_file_path(dir);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{} does not exist (fix: give the --dir that `paxring cluster up` used)",
                path.display()
            )
        } else {
            format!("cannot read {}: {e}", path.display())
        }
    })?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a cluster file: {e}", path.display()))
}

fn write_cluster(dir: &Path, cluster: &ClusterFile) -> Result<(), String> {
    let path = cluster_file_path(dir);
    let tmp = dir.join("cluster.json.tmp");
    let mut text = serde_json::to_string_pretty(cluster).expect("a cluster file always serializes");
    text.push('\n');
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot rename to {}: {e}", path.display()))
}

/// Picks `count` distinct free ports on 127.0.0.1 (held open together, then released).
fn free_addrs(count: usize) -> Result<Vec<SocketAddr>, String> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot pick a free port: {e}"))
        })
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .collect()
}

fn cluster_up(args: &UpArgs) -> Result<(), String> {
    if args.nodes == 0 || args.nodes > 9 {
        return Err(format!("--nodes {} (fix: use 1 to 9)", args.nodes));
    }
    if args.nodes + args.followers > 16 {
        return Err(format!(
            "--nodes {} --followers {} (fix: at most 16 nodes in all)",
            args.nodes, args.followers
        ));
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.dir.display()))?;
    if cluster_file_path(&dir).exists() {
        return Err(format!(
            "{} already exists (fix: `paxring cluster down --dir {}` and use a new dir)",
            cluster_file_path(&dir).display(),
            dir.display()
        ));
    }
    let count = (args.nodes + args.followers) as usize;
    let voters = args.nodes as usize;
    let addrs = free_addrs(2 * count)?;
    let (peer_addrs, client_addrs) = addrs.split_at(count);
    let mut nodes = Vec::with_capacity(count);
    for index in 0..count {
        let id = index as u32 + 1;
        let node_dir = dir.join(format!("node-{id}"));
        let data_dir = node_dir.join("data");
        let mut builder = NodeConfig::builder(id, peer_addrs[index], &data_dir)
            .cluster_id(args.cluster_id)
            .groups(args.groups)
            .cores(args.cores)
            .pin_cores(args.pin_cores)
            .follower(index >= voters);
        if let Some(bytes) = args.segment_bytes {
            builder = builder.segment_bytes(bytes);
        }
        for (other, addr) in peer_addrs.iter().enumerate() {
            if other != index && other < voters {
                builder = builder.peer(other as u32 + 1, *addr);
            } else if other != index {
                builder = builder.follower_peer(other as u32 + 1, *addr);
            }
        }
        let node = builder.build().map_err(|e| e.to_string())?;
        // Only a valid config gets a directory.
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        // Every node knows the others' client addresses, so that its not_leader answers name
        // the leader's: one address is enough for a client.
        let peer_client_addrs = client_addrs
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(other, addr)| NodeAddr {
                id: other as u32 + 1,
                addr: *addr,
            })
            .collect();
        let file = NodeFile {
            client_listen: client_addrs[index],
            snapshot_every_instances: 1000,
            snapshot_every_ms: 1000,
            peer_client_addrs,
            node,
        };
        let config = node_dir.join("config.toml");
        std::fs::write(&config, file.to_toml_string())
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        nodes.push(ClusterNode {
            id,
            peer_addr: peer_addrs[index],
            client_addr: client_addrs[index],
            pid: 0,
            data_dir,
            config,
            follower: index >= voters,
        });
    }
    let mut children = Vec::with_capacity(count);
    for node in &mut nodes {
        let child = spawn_node(&dir, node)?;
        node.pid = child.id();
        children.push(child);
    }
    let cluster = ClusterFile { nodes };
    write_cluster(&dir, &cluster)?;
    let deadline = Instant::now() + Duration::from_secs(args.wait_seconds);
    for (node, child) in cluster.nodes.iter().zip(&mut children) {
        if let Err(e) = wait_answers(node, child, deadline) {
            let _ = cluster_down(&dir);
            return Err(e);
        }
    }
    for node in &cluster.nodes {
        println!(
            "node {}{}: pid {} peer {} client {} config {}",
            node.id,
            if node.follower { " (follower)" } else { "" },
            node.pid,
            node.peer_addr,
            node.client_addr,
            node.config.display()
        );
    }
    println!("cluster file: {}", cluster_file_path(&dir).display());
    Ok(())
}

fn node_log(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("node-{id}")).join("node.log")
}

/// Starts `paxring node` for `node`, detached in its own process group, output appended to its
/// log. The child is never killed by this command; once it answers, this command exits and
/// the node's parent becomes init.
fn spawn_node(dir: &Path, node: &ClusterNode) -> Result<Child, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the paxring executable: {e}"))?;
    let log_path = node_log(dir, node.id);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    std::process::Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start node {}: {e}", node.id))
}

/// Waits until `node` (the process `child`) answers an `id` request with its own id.
fn wait_answers(node: &ClusterNode, child: &mut Child, deadline: Instant) -> Result<(), String> {
    loop {
        let last = match ask_id(node.client_addr) {
            Ok(id) if id == node.id => return Ok(()),
            Ok(id) => format!("answered as node {id}"),
            Err(e) => e,
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "node {} (pid {}) exited with {status}; see {}",
                node.id,
                node.pid,
                node.config.with_file_name("node.log").display()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {} did not answer on {} in time ({last}); see {}",
                node.id,
                node.client_addr,
                node.config.with_file_name("node.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ask_id(addr: SocketAddr) -> Result<u32, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut request = serde_json::to_vec(&Request::Id).expect("serializes");
    request.push(b'\n');
    stream.write_all(&request).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(64 * 1024)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let response: crate::kv::proto::Response =
        serde_json::from_str(&line).map_err(|e| format!("bad id answer: {e}"))?;
    response
        .node_id
        .ok_or_else(|| format!("id answer without node_id: {line}"))
}

/// True when `pid` is alive (not a zombie) and runs `paxring node`.
pub fn runs_paxring_node(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let program_is_paxring = args
        .first()
        .map(|a| Path::new(std::ffi::OsStr::from_bytes(a)).file_name() == Some("paxring".as_ref()))
        .unwrap_or(false);
    let is_node = args.get(1).map(|a| *a == b"node").unwrap_or(false);
    if !(program_is_paxring && is_node) {
        return false;
    }
    // A zombie still has a /proc entry but no longer runs.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Stops `pid` if it runs `paxring node`: SIGTERM, then SIGKILL after `grace`. Returns how it
/// ended: "not running", "stopped", "killed".
fn stop_node(pid: u32, grace: Duration) -> &'static str {
    if !runs_paxring_node(pid) {
        return "not running";
    }
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !runs_paxring_node(pid) {
            return "stopped";
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if runs_paxring_node(pid) {
        let _ = kill(target, Signal::SIGKILL);
    }
    "killed"
}

fn cluster_down(dir: &Path) -> Result<(), String> {
    let cluster = read_cluster(dir)?;
    for node in &cluster.nodes {
        let how = stop_node(node.pid, Duration::from_secs(10));
        println!("node {}: pid {} {how}", node.id, node.pid);
    }
    Ok(())
}

fn cluster_restart(args: &RestartArgs) -> Result<(), String> {
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let mut cluster = read_cluster(&dir)?;
    let Some(index) = cluster.nodes.iter().position(|n| n.id == args.node) else {
        return Err(format!(
            "node {} is not in {}",
            args.node,
            cluster_file_path(&dir).display()
        ));
    };
    let old = cluster.nodes[index].pid;
    let how = stop_node(old, Duration::from_secs(10));
    let mut child = spawn_node(&dir, &cluster.nodes[index])?;
    cluster.nodes[index].pid = child.id();
    write_cluster(&dir, &cluster)?;
    wait_answers(
        &cluster.nodes[index],
        &mut child,
        Instant::now() + Duration::from_secs(args.wait_seconds),
    )?;
    let node = &cluster.nodes[index];
    println!(
        "node {}: old pid {old} {how}; new pid {} peer {} client {}",
        node.id, node.pid, node.peer_addr, node.client_addr
    );
    Ok(())
}
