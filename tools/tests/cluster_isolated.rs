//! An isolated master on real processes (docs/PROTOCOL.md#master-lease): three `paxring node`
//! processes, each in a network namespace this test creates, joined by two bridges in a
//! fourth one: one bridge for peer traffic, one for clients. The master's peer link is cut for
//! two seconds (eight leases) while its client link stays up, then restored. A writer goes on
//! through whichever node leads; a reader asks only the old master for lease reads, before,
//! during and after. No read may return a value older than a write acknowledged before the
//! read began (a single writer of increasing values: that is linearizability for this
//! register). Needs root (`ip netns`); without it the test says so and does nothing else.
mod common;

use common::{exe, request, RegisterWorkload};
use nix::sched::{setns, CloneFlags};
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PEER_PORT: u16 = 7000;
const CLIENT_PORT: u16 = 7100;

/// Runs `ip` with `args`; Err with its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The namespaces, the node processes and their data; dropping it ends the nodes and
/// deletes the namespaces (their interfaces go with them).
struct Lab {
    tag: String,
    nodes: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn switch(&self) -> String {
        format!("pxs-{}", self.tag)
    }

    fn node_ns(&self, id: u32) -> String {
        format!("px{id}-{}", self.tag)
    }

    fn client_addr(id: u32) -> SocketAddr {
        format!("10.91.2.{id}:{CLIENT_PORT}").parse().unwrap()
    }

    /// Builds the namespaces and starts the nodes; None when this machine cannot (not root).
    fn up() -> Option<Lab> {
        let tag = std::process::id().to_string();
        let probe = format!("pxprobe-{tag}");
        if let Err(e) = ip(&["netns", "add", &probe]) {
            eprintln!("SKIPPED: cannot create network namespaces here (needs root): {e}");
            return None;
        }
        ip(&["netns", "del", &probe]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab {
            tag,
            nodes: Vec::new(),
            _dir: dir,
        };
        let s = lab.switch();
        ip(&["netns", "add", &s]).unwrap();
        for (bridge, addr) in [("brp", None), ("brc", Some("10.91.2.254/24"))] {
            ip(&["-n", &s, "link", "add", bridge, "type", "bridge"]).unwrap();
            ip(&["-n", &s, "link", "set", bridge, "up"]).unwrap();
            if let Some(addr) = addr {
                ip(&["-n", &s, "addr", "add", addr, "dev", bridge]).unwrap();
            }
        }
        for id in 1..=3u32 {
            let n = lab.node_ns(id);
            ip(&["netns", "add", &n]).unwrap();
            ip(&["-n", &n, "link", "set", "lo", "up"]).unwrap();
            for (kind, bridge, net) in [("p", "brp", 1), ("c", "brc", 2)] {
                let far = format!("{kind}{id}");
                ip(&[
                    "-n", &n, "link", "add", kind, "type", "veth", "peer", "name", &far, "netns",
                    &s,
                ])
                .unwrap();
                ip(&[
                    "-n",
                    &n,
                    "addr",
                    "add",
                    &format!("10.91.{net}.{id}/24"),
                    "dev",
                    kind,
                ])
                .unwrap();
                ip(&["-n", &n, "link", "set", kind, "up"]).unwrap();
                ip(&["-n", &s, "link", "set", &far, "master", bridge, "up"]).unwrap();
            }
        }
        for id in 1..=3u32 {
            let config = lab.write_config(id);
            let log =
                std::fs::File::create(lab._dir.path().join(format!("node-{id}.log"))).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", &lab.node_ns(id), exe(), "node", "--config"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start a node");
            lab.nodes.push(child);
        }
        Some(lab)
    }

    fn write_config(&self, id: u32) -> std::path::PathBuf {
        let dir = self._dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = format!(
            "client_listen = \"10.91.2.{id}:{CLIENT_PORT}\"\n\n[node]\nnode_id = {id}\ncluster_id = 9\nlisten = \"10.91.1.{id}:{PEER_PORT}\"\ndata_dir = \"{}\"\ngroups = 1\ncores = 1\n",
            dir.join("data").display()
        );
        for peer in (1..=3u32).filter(|p| *p != id) {
            text.push_str(&format!(
                "\n[[node.peers]]\nid = {peer}\naddr = \"10.91.1.{peer}:{PEER_PORT}\"\n"
            ));
        }
        let mut clients = String::new();
        for peer in (1..=3u32).filter(|p| *p != id) {
            clients.push_str(&format!(
                "[[peer_client_addrs]]\nid = {peer}\naddr = \"10.91.2.{peer}:{CLIENT_PORT}\"\n\n"
            ));
        }
        let text = text.replacen("\n[node]", &format!("\n{clients}[node]"), 1);
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Moves the calling thread into the clients' namespace (the switch).
    fn enter_switch(&self) {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.switch())).unwrap();
        setns(file, CloneFlags::CLONE_NEWNET).expect("setns");
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|id| {
                let text = std::fs::read_to_string(self._dir.path().join(format!("node-{id}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "node {id}:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        for id in 1..=3 {
            let _ = ip(&["netns", "del", &self.node_ns(id)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

#[test]
fn an_isolated_master_never_serves_a_stale_lease_read() {
    let Some(lab) = Lab::up() else {
        return;
    };
    let lab = Arc::new(lab);
    let key = "register";
    // The master: the node that answers a lease read (found from the clients' namespace).
    let master = {
        let lab = lab.clone();
        std::thread::spawn(move || {
            lab.enter_switch();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                for id in 1..=3 {
                    let answer = request(
                        Lab::client_addr(id),
                        &json!({"op":"get","key":key,"mode":"lease"}),
                        Duration::from_millis(500),
                    );
                    if answer.is_ok_and(|a| a["ok"] == json!(true)) {
                        return Some(id);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            None
        })
        .join()
        .unwrap()
    };
    let master = master.unwrap_or_else(|| panic!("no master:\n{}", lab.logs()));

    let nodes: Vec<(u32, SocketAddr)> = (1..=3).map(|id| (id, Lab::client_addr(id))).collect();
    let enter = {
        let lab = lab.clone();
        move || lab.enter_switch()
    };
    let work = RegisterWorkload::start(key, nodes, Lab::client_addr(master), enter);

    std::thread::sleep(Duration::from_millis(800));
    let before = work.reads_ok.load(Ordering::Relaxed);
    let acked_before = work.newest_acked.load(Ordering::Acquire);
    // Cut the master's peer link (its clients still reach it).
    let link = format!("p{master}");
    ip(&["-n", &lab.switch(), "link", "set", &link, "down"]).unwrap();
    work.during.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(2000));
    let acked_isolated = work.newest_acked.load(Ordering::Acquire);
    ip(&["-n", &lab.switch(), "link", "set", &link, "up"]).unwrap();
    work.during.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1500));
    let reads_ok = work.reads_ok.load(Ordering::Relaxed);
    let reads_isolated = work.reads_ok_during.load(Ordering::Relaxed);
    let violations = work.stop();

    assert!(
        violations.is_empty(),
        "stale lease reads from the isolated master:\n{}\n{}",
        violations.join("\n"),
        lab.logs()
    );
    assert!(
        before > 0,
        "the master served lease reads before it was cut off"
    );
    assert!(
        acked_isolated > acked_before,
        "the others wrote while the master was cut off ({acked_before} before, {acked_isolated} at the end):\n{}",
        lab.logs()
    );
    eprintln!(
        "isolated master node {master}: {} lease reads ok ({} while cut off, none stale); writes acknowledged {acked_before} before, {acked_isolated} by the end of the cut",
        reads_ok, reads_isolated,
    );
}
