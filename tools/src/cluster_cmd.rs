//! `paxring cluster up|down|restart|add|remove|replace|members`: a local cluster of separate
//! `paxring node` processes on 127.0.0.1, described by `DIR/cluster.json`, and membership
//! changes of its groups (docs/PROTOCOL.md#membership-change).
//!
//! Owns: the cluster directory layout (`DIR/node-ID/{config.toml,node.log,data}`,
//! `DIR/cluster.json`) and the node processes it starts. Never: signals a process that is not
//! one of the pids in `cluster.json` still running `paxring node`; every wait is bounded.

use crate::kv::proto::{code, GroupMembers, NodeAddr, Request, Response};
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
    /// Makes a node a voter of every group (or of `--group`): a follower node listed in the
    /// configs, caught up by now (docs/PROTOCOL.md#membership-change).
    Add(MemberArgs),
    /// Removes a node from every group (or from `--group`): it neither votes nor follows there.
    Remove(MemberArgs),
    /// Replaces voter `--old` by `--new` in every group (or in `--group`), in one change: the
    /// other voters stay a quorum of the new set while the old node is dead and the new one
    /// catches up.
    Replace(ReplaceArgs),
    /// Prints every group's membership as the nodes know it.
    Members(DirArgs),
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
struct MemberArgs {
    /// The cluster's directory.
    #[arg(long)]
    dir: PathBuf,
    /// The node.
    #[arg(long)]
    node: u32,
    /// Only this group (default: every group).
    #[arg(long)]
    group: Option<u32>,
    /// Seconds to wait for every change to be chosen.
    #[arg(long, default_value_t = 60)]
    wait_seconds: u64,
}

#[derive(clap::Args, Debug)]
struct ReplaceArgs {
    /// The cluster's directory.
    #[arg(long)]
    dir: PathBuf,
    /// The voter to replace.
    #[arg(long)]
    old: u32,
    /// The node that takes its place (a follower node the configs list).
    #[arg(long)]
    new: u32,
    /// Only this group (default: every group).
    #[arg(long)]
    group: Option<u32>,
    /// Seconds to wait for every change to be chosen.
    #[arg(long, default_value_t = 120)]
    wait_seconds: u64,
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
    /// Per group, its membership as the last `paxring cluster add|remove|replace` left it
    /// (absent until one ran: the configs' voters and follower nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memberships: Vec<GroupMembers>,
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
        ClusterCommand::Add(args) => {
            let node = args.node;
            change_groups(&args.dir, args.group, args.wait_seconds, &|m| {
                let mut m = m.clone();
                m.followers.retain(|n| *n != node);
                if !m.voters.contains(&node) {
                    m.voters.push(node);
                    m.voters.sort_unstable();
                }
                m
            })
        }
        ClusterCommand::Remove(args) => {
            let node = args.node;
            change_groups(&args.dir, args.group, args.wait_seconds, &|m| {
                let mut m = m.clone();
                m.voters.retain(|n| *n != node);
                m.followers.retain(|n| *n != node);
                m
            })
        }
        ClusterCommand::Replace(args) => {
            // One change: the other voters stay a quorum of the new set even while the old
            // node is dead and the new one re-learns (a node whose data directory was empty
            // at its start re-learns before its first vote).
            let (old, new) = (args.old, args.new);
            change_groups(&args.dir, args.group, args.wait_seconds, &|m| {
                let mut m = m.clone();
                m.followers.retain(|n| *n != new && *n != old);
                if m.voters.contains(&old) {
                    m.voters.retain(|n| *n != old);
                    if !m.voters.contains(&new) {
                        m.voters.push(new);
                    }
                    m.voters.sort_unstable();
                }
                m
            })
        }
        ClusterCommand::Members(args) => print_members(&args.dir),
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
    let cluster = ClusterFile {
        nodes,
        memberships: Vec::new(),
    };
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

/// One request to one node's client address, one response line (bounded waits).
fn ask(addr: SocketAddr, request: &Request, wait: Duration) -> Result<Response, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(wait))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(request).expect("serializes");
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .take(16 << 20)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&answer).map_err(|e| format!("bad answer {answer:?}: {e}"))
}

/// Every running node's `id` answer (nodes that do not answer are left out).
fn ids(cluster: &ClusterFile) -> Vec<(u32, SocketAddr, Response)> {
    cluster
        .nodes
        .iter()
        .filter_map(|n| {
            ask(n.client_addr, &Request::Id, Duration::from_secs(2))
                .ok()
                .map(|r| (n.id, n.client_addr, r))
        })
        .collect()
}

/// Changes the membership of every group (or of `only`) to `change(current)`, through each
/// group's leader: follows `not_leader`, waits while another change of the group is not in
/// effect yet, and waits until the nodes know the new membership. Bounded by `wait_seconds`.
fn change_groups(
    dir: &Path,
    only: Option<u32>,
    wait_seconds: u64,
    change: &dyn Fn(&GroupMembers) -> GroupMembers,
) -> Result<(), String> {
    change_each_group(dir, only, wait_seconds, change)?;
    // Record every group's membership as the nodes now know it in cluster.json.
    let mut cluster = read_cluster(dir)?;
    let answers = ids(&cluster);
    let groups = answers.iter().find_map(|(_, _, r)| r.groups).unwrap_or(0);
    let memberships: Option<Vec<GroupMembers>> = (0..groups as usize)
        .map(|g| {
            let leader = answers
                .iter()
                .find_map(|(_, _, r)| r.leaders.as_ref()?.get(g).copied().flatten());
            answers
                .iter()
                .filter(|(id, _, _)| Some(*id) == leader)
                .chain(answers.iter())
                .find_map(|(_, _, r)| r.memberships.as_ref()?.get(g)?.clone())
        })
        .collect();
    if let Some(memberships) = memberships {
        cluster.memberships = memberships;
        write_cluster(dir, &cluster)?;
    }
    Ok(())
}

/// [`change_groups`] without the record.
fn change_each_group(
    dir: &Path,
    only: Option<u32>,
    wait_seconds: u64,
    change: &dyn Fn(&GroupMembers) -> GroupMembers,
) -> Result<(), String> {
    let cluster = read_cluster(dir)?;
    let deadline = Instant::now() + Duration::from_secs(wait_seconds);
    let answers = ids(&cluster);
    let groups = answers
        .iter()
        .find_map(|(_, _, r)| r.groups)
        .ok_or("no node answers (fix: `paxring cluster up` or `restart`)")?;
    if only.is_some_and(|g| g >= groups) {
        return Err(format!(
            "--group {} (the cluster has groups 0..{groups})",
            only.unwrap_or(0)
        ));
    }
    for group in (0..groups).filter(|g| only.is_none_or(|o| o == *g)) {
        let mut last = String::new();
        loop {
            if Instant::now() >= deadline {
                return Err(format!(
                    "group {group}: not changed within {wait_seconds} s (last: {last})"
                ));
            }
            let answers = ids(&cluster);
            // The membership the group's leader knows (it has applied the most), else any.
            let leader = answers
                .iter()
                .find_map(|(_, _, r)| r.leaders.as_ref()?.get(group as usize).copied().flatten());
            let current = answers
                .iter()
                .filter(|(id, _, _)| Some(*id) == leader)
                .chain(answers.iter())
                .find_map(|(_, _, r)| r.memberships.as_ref()?.get(group as usize)?.clone());
            let (Some(leader), Some(current)) = (leader, current) else {
                last = "no leader known yet".into();
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let wanted = change(&current);
            if wanted.voters == current.voters && wanted.followers == current.followers {
                println!(
                    "group {group}: voters {:?} followers {:?} (unchanged)",
                    current.voters, current.followers
                );
                break;
            }
            let Some((_, addr, _)) = answers.iter().find(|(id, _, _)| *id == leader) else {
                last = format!("the leader, node {leader}, does not answer");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let request = Request::Membership {
                group,
                voters: wanted.voters.clone(),
                followers: wanted.followers.clone(),
            };
            match ask(*addr, &request, Duration::from_secs(15)) {
                Ok(answer) if answer.ok => {
                    println!(
                        "group {group}: voters {:?} followers {:?}, chosen at instance {}, governs from {}",
                        wanted.voters,
                        wanted.followers,
                        answer.instance.unwrap_or_default(),
                        answer.governs_from.unwrap_or_default()
                    );
                    // Wait until it is in effect: the leader applied up to where it governs
                    // (it fills the gap with no-ops when idle).
                    let governs = answer.governs_from.unwrap_or_default();
                    loop {
                        if Instant::now() >= deadline {
                            return Err(format!(
                                "group {group}: chosen, but not in effect within {wait_seconds} s (governs from instance {governs})"
                            ));
                        }
                        let applied = ask(*addr, &Request::Digest, Duration::from_secs(2))
                            .ok()
                            .and_then(|r| r.digests?.get(group as usize).map(|d| d.applied_next));
                        if applied.is_some_and(|a| a >= governs) {
                            println!("group {group}: in effect (applied through {})", governs);
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    break;
                }
                Ok(answer) => {
                    last = answer.message.clone().unwrap_or_default();
                    match answer.error.as_deref() {
                        // Another change is not in effect yet, or the leader moved: again.
                        Some(code::MEMBERSHIP) if last.contains("not in effect") => {}
                        Some(code::NOT_LEADER) | Some(code::OVERLOADED) | Some(code::UNKNOWN) => {}
                        _ => return Err(format!("group {group}: {last}")),
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
    Ok(())
}

/// `paxring cluster members`: each group's membership as each running node knows it.
fn print_members(dir: &Path) -> Result<(), String> {
    let cluster = read_cluster(dir)?;
    let answers = ids(&cluster);
    if answers.is_empty() {
        return Err("no node answers".into());
    }
    for (id, _, answer) in &answers {
        for (group, members) in answer.memberships.iter().flatten().enumerate() {
            match members {
                Some(m) => println!(
                    "node {id} group {group}: voters {:?} followers {:?} from instance {}",
                    m.voters, m.followers, m.from
                ),
                None => println!("node {id} group {group}: not known yet"),
            }
        }
    }
    Ok(())
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
