//! The node role: one replica of the benchmark's cluster, in its own process. It embeds a
//! [`Node`] with a minimal state machine and runs the load generator through the embedding API
//! (as an application would), taking commands from stdin and answering on stdout, one JSON
//! object per line (see `proto`). A follower (`NodeSpec::follower`) runs the same role with no
//! clients: it only measures its counters and CPU over each point's window.
//!
//! Owns: the node process, its load generator and its latency histogram. Never: proposes to a
//! group it does not lead (a `NotLeader` answer is counted, not forwarded), grows a queue
//! without bound (the open-loop generator caps proposals in flight).

use super::proto::{Command, Counters, Event, Refusals, RunResult, RunSpec};
use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::serialization::{Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use paxring_engine::runtime::config::WalBackendConfig;
use paxring_engine::runtime::{Error, Node, NodeConfig, StateMachine, StateMachineFactory};
use paxring_wal::{GroupId, Instance};
use std::cell::{Cell, RefCell};
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most open-loop proposals in flight per node; beyond it intended starts are skipped (counted).
const OPEN_LOOP_IN_FLIGHT_MAX: u64 = 200_000;
/// Proposals the open-loop generator issues back to back before it yields to completions.
const OPEN_LOOP_BURST_MAX: u32 = 64;
/// Longest wait for proposals still in flight after a point's window closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The benchmark's state machine: counts applied commands and checksums their bytes.
struct Tally {
    commands: u64,
    checksum: u32,
}

impl StateMachine for Tally {
    fn apply(
        &mut self,
        _group: GroupId,
        _instance: Instance,
        commands: &[Bytes],
        results: &mut Vec<Bytes>,
    ) {
        for command in commands {
            self.commands += 1;
            let mut hasher = crc32fast::Hasher::new_with_initial(self.checksum);
            hasher.update(command);
            self.checksum = hasher.finalize();
            results.push(Bytes::new());
        }
    }

    fn checkpoint_instance(&self) -> Option<Instance> {
        None
    }
}

fn emit(event: &Event) {
    let line = serde_json::to_string(event).expect("events always serialize");
    let mut out = std::io::stdout().lock();
    // The coordinator reading our stdout is gone if this fails; nothing useful is left to do.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the node role with `spec_json` (a `NodeSpec`); returns when told to quit or when stdin
/// closes.
pub fn run(spec_json: &str) -> ExitCode {
    let spec: super::proto::NodeSpec = match serde_json::from_str(spec_json) {
        Ok(spec) => spec,
        Err(e) => {
            emit(&Event::Error {
                message: format!("bad node spec: {e}"),
            });
            return ExitCode::from(2);
        }
    };
    let mut builder = NodeConfig::builder(spec.id, spec.listen, &spec.dir)
        .cluster_id(spec.cluster_id)
        .groups(spec.groups)
        .cores(spec.cores)
        // Three replicas share this machine's CPUs: pinning every node's core 0 to CPU 0
        // would stack them on one CPU.
        .pin_cores(false)
        .wal_backend(if spec.blocking_wal {
            WalBackendConfig::Blocking
        } else {
            WalBackendConfig::Auto
        });
    if let Some(depth) = spec.pipeline_depth {
        builder = builder.pipeline_depth(depth);
    }
    if let Some(mode) = spec.sync_mode {
        builder = builder.sync_mode(mode);
    }
    if let Some(writes) = spec.wal_writes_in_flight {
        builder = builder.wal_writes_in_flight(writes);
    }
    // A follower never votes or leads; every node lists the same followers.
    builder = builder.follower(spec.follower);
    for (id, addr) in &spec.peers {
        builder = if spec.follower_peers.contains(id) {
            builder.follower_peer(*id, *addr)
        } else {
            builder.peer(*id, *addr)
        };
    }
    let config = match builder.build() {
        Ok(config) => config,
        Err(e) => {
            emit(&Event::Error {
                message: format!("node {}: {e}", spec.id),
            });
            return ExitCode::from(2);
        }
    };
    let kv = spec.kv;
    let factory: StateMachineFactory = Box::new(move |_group| {
        Ok(match kv {
            Some(_) => Box::new(crate::reads::serve::Kv::default()) as Box<dyn StateMachine>,
            None => Box::new(Tally {
                commands: 0,
                checksum: 0,
            }) as Box<dyn StateMachine>,
        })
    });
    let node = match Node::start(config, factory) {
        Ok(node) => node,
        Err(e) => {
            emit(&Event::Error {
                message: format!("node {} did not start: {e}", spec.id),
            });
            return ExitCode::from(1);
        }
    };
    let node = Arc::new(node);
    // The reads benchmark's clients connect here (the cluster benchmark runs none).
    let (server, client_addr) = match spec.kv {
        Some(kv) => match crate::reads::serve::Server::start(node.clone(), kv) {
            Ok((server, addr)) => (Some(server), Some(addr)),
            Err(e) => {
                emit(&Event::Error {
                    message: format!("node {}: {e}", spec.id),
                });
                return ExitCode::from(1);
            }
        },
        None => (None, None),
    };
    emit(&Event::Ready {
        id: spec.id,
        pid: std::process::id(),
        memory: crate::rss::read_self(),
        client_addr,
    });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit(&Event::Error {
                message: format!("load generator runtime: {e}"),
            });
            return ExitCode::from(1);
        }
    };
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let command: Command = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                emit(&Event::Error {
                    message: format!("bad command {line:?}: {e}"),
                });
                continue;
            }
        };
        match command {
            Command::Leaders => {
                let groups = (0..spec.groups)
                    .filter(|&g| node.leader_hint(GroupId(g)) == Some(spec.id))
                    .collect();
                emit(&Event::Leaders { groups });
            }
            Command::Stats => emit(&Event::Stats(Counters::of(&node.stats()))),
            Command::Masters => {
                let groups = (0..spec.groups)
                    .filter(|&g| node.is_master(GroupId(g)))
                    .collect();
                emit(&Event::Masters { groups });
            }
            Command::Run(run) => {
                let local = tokio::task::LocalSet::new();
                let result = local.block_on(&runtime, run_point(node.clone(), run));
                emit(&Event::Result(Box::new(result)));
            }
            Command::Quit => break,
        }
    }
    if let Some(server) = server {
        server.stop();
    }
    let counters = quiesce(&node);
    emit(&Event::Bye {
        counters,
        memory: crate::rss::read_self(),
    });
    let node = Arc::try_unwrap(node)
        .unwrap_or_else(|_| panic!("no load task or client connection outlives its run"));
    if let Err(e) = node.shutdown() {
        eprintln!("node {}: {e}", spec.id);
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Waits (bounded) until the node's durable-write counter stops moving, so that the counters
/// reported at exit are the last ones; returns them.
fn quiesce(node: &Node) -> Counters {
    let deadline = Instant::now() + Duration::from_secs(5);
    let tick = node.config().tick() * 3;
    let mut last = Counters::of(&node.stats());
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(tick);
        let now = Counters::of(&node.stats());
        if now.durable_writes != last.durable_writes || now.rounds == last.rounds {
            stable_since = Instant::now();
        }
        last = now;
        if stable_since.elapsed() >= Duration::from_millis(300) {
            break;
        }
    }
    last
}

/// CPU seconds (user + system) used by this process so far.
pub fn cpu_seconds() -> f64 {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
            tv(usage.user_time()) + tv(usage.system_time())
        }
        Err(_) => f64::NAN,
    }
}

/// The measurement's shared state inside the load generator (one thread, so `Rc`/`Cell`).
struct Window {
    start: Instant,
    end: Instant,
    histogram: RefCell<Histogram<u64>>,
    commits: Cell<u64>,
    refusals: Cell<Refusals>,
    skipped: Cell<u64>,
}

impl Window {
    fn measuring(&self, at: Instant) -> bool {
        at >= self.start && at <= self.end
    }

    fn record(&self, outcome: &Result<paxring_engine::runtime::Committed, Error>, since: Instant) {
        let now = Instant::now();
        if !self.measuring(now) {
            return;
        }
        match outcome {
            Ok(_) => {
                let us = now.duration_since(since).as_micros().max(1) as u64;
                self.histogram.borrow_mut().saturating_record(us);
                self.commits.set(self.commits.get() + 1);
            }
            Err(error) => {
                let mut r = self.refusals.get();
                match error {
                    Error::NotLeader { .. } => r.not_leader += 1,
                    Error::Overloaded => r.overloaded += 1,
                    Error::Unknown(_) | Error::Stopped(_) => r.unknown += 1,
                    _ => r.other += 1,
                }
                self.refusals.set(r);
            }
        }
    }
}

/// The next group after `group` (cyclically) that this node believes it leads.
fn next_led_group(node: &Node, group: u32) -> Option<u32> {
    let me = node.config().node_id;
    let groups = node.config().groups;
    (1..=groups)
        .map(|step| (group + step) % groups)
        .find(|&g| node.leader_hint(GroupId(g)) == Some(me))
}

/// A pool of value bytes: each proposal is a zero-copy slice of it.
fn value_pool(value_bytes: usize) -> Bytes {
    let len = value_bytes.max(1) + 64 * 1024;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    Bytes::from(bytes)
}

async fn run_point(node: Arc<Node>, spec: RunSpec) -> RunResult {
    let begin = Instant::now();
    let start = begin + Duration::from_secs_f64(spec.warmup_s.max(0.0));
    let end = start + Duration::from_secs_f64(spec.seconds.max(0.01));
    let window = Rc::new(Window {
        start,
        end,
        histogram: RefCell::new(
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
        ),
        commits: Cell::new(0),
        refusals: Cell::new(Refusals::default()),
        skipped: Cell::new(0),
    });
    let pool = value_pool(spec.value_bytes);
    let in_flight = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::new();

    // Closed-loop clients: one proposal outstanding each.
    for (index, &first_group) in spec.client_groups.iter().enumerate() {
        let node = node.clone();
        let window = window.clone();
        let pool = pool.clone();
        let value_bytes = spec.value_bytes;
        tasks.push(tokio::task::spawn_local(async move {
            let mut offset = (index * 977) % (pool.len() - value_bytes);
            let mut group = first_group;
            while Instant::now() < window.end {
                let value = pool.slice(offset..offset + value_bytes);
                offset = (offset + 61) % (pool.len() - value_bytes);
                let sent = Instant::now();
                let outcome = node.propose(GroupId(group), value).await;
                window.record(&outcome, sent);
                match outcome {
                    Ok(_) => {}
                    Err(Error::Overloaded) => {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    Err(Error::NotLeader { .. }) => {
                        // Leadership moved: go on with a group this node still leads (the
                        // client lives in this process and cannot follow the group away).
                        match next_led_group(&node, group) {
                            Some(next) => group = next,
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }

    // The open-loop generator: proposals at intended times; latency from the intended time
    // (coordinated-omission correction).
    if spec.rate_per_s > 0.0 && !spec.rate_groups.is_empty() {
        let node = node.clone();
        let window = window.clone();
        let pool = pool.clone();
        let in_flight = in_flight.clone();
        let value_bytes = spec.value_bytes;
        let groups = spec.rate_groups.clone();
        let interval = Duration::from_secs_f64(1.0 / spec.rate_per_s);
        tasks.push(tokio::task::spawn_local(async move {
            let mut k: u64 = 0;
            let mut burst = 0u32;
            loop {
                let intended = begin + interval.mul_f64(k as f64);
                if intended >= window.end {
                    break;
                }
                let now = Instant::now();
                if intended > now {
                    burst = 0;
                    tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
                } else {
                    // Behind schedule: issue what is due, but let completions be recorded.
                    burst += 1;
                    if burst >= OPEN_LOOP_BURST_MAX {
                        burst = 0;
                        tokio::task::yield_now().await;
                    }
                }
                if in_flight.get() >= OPEN_LOOP_IN_FLIGHT_MAX {
                    if window.measuring(intended) {
                        window.skipped.set(window.skipped.get() + 1);
                    }
                    k += 1;
                    continue;
                }
                let group = groups[(k % groups.len() as u64) as usize];
                let offset = ((k as usize) * 61) % (pool.len() - value_bytes);
                let proposal =
                    node.propose(GroupId(group), pool.slice(offset..offset + value_bytes));
                in_flight.set(in_flight.get() + 1);
                let window = window.clone();
                let in_flight = in_flight.clone();
                tokio::task::spawn_local(async move {
                    let outcome = proposal.await;
                    window.record(&outcome, intended);
                    in_flight.set(in_flight.get() - 1);
                });
                k += 1;
            }
        }));
    }

    // Progress events while the window is open.
    {
        let window = window.clone();
        let every = Duration::from_millis(spec.progress_ms.max(50));
        tasks.push(tokio::task::spawn_local(async move {
            let mut next = window.start;
            while next <= window.end {
                tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
                emit(&Event::Progress {
                    elapsed_s: next.duration_since(window.start).as_secs_f64(),
                    commits: window.commits.get(),
                    memory: crate::rss::read_self(),
                });
                next += every;
            }
        }));
    }

    // Counters and CPU at the window's edges.
    tokio::time::sleep_until(tokio::time::Instant::from_std(start)).await;
    let counters_before = Counters::of(&node.stats());
    let cpu_before = cpu_seconds();
    tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
    let counters_after = Counters::of(&node.stats());
    let cpu_after = cpu_seconds();
    let elapsed_s = Instant::now().duration_since(start).as_secs_f64();

    // Let clients and open-loop proposals finish (bounded), so the next point starts clean.
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    for task in tasks {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, task).await.is_err() {
            break;
        }
    }
    while in_flight.get() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut encoded = Vec::new();
    let histogram = window.histogram.borrow();
    let histogram_b64 = match V2Serializer::new().serialize(&histogram, &mut encoded) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(&encoded),
        Err(e) => {
            emit(&Event::Error {
                message: format!("histogram serialization: {e:?}"),
            });
            String::new()
        }
    };
    RunResult {
        commits: window.commits.get(),
        refusals: window.refusals.get(),
        histogram_b64,
        counters: counters_after.since(&counters_before),
        cpu_s: cpu_after - cpu_before,
        elapsed_s,
        open_loop_skipped: window.skipped.get(),
        memory: crate::rss::read_self(),
    }
}
