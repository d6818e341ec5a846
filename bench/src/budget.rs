//! `paxring-bench budget`: the WAL budget under a soak (docs/ARCHITECTURE.md, "WAL budget").
//!
//! Three nodes in this process on 127.0.0.1, one group, WAL purge on, a state machine that
//! takes a checkpoint of everything applied every `--checkpoint-every-ms` (a snapshot on a
//! timer: the WAL can purge only up to it). Closed-loop writers propose `--value-bytes` to the
//! leader until `--budgets` times the budget is committed (or `--max-seconds` pass), while a
//! sampler reads every node's segment files on disk every 5 ms. The same load then runs with
//! no budget, for the same time: the baseline of the same run. Printed: each node's peak
//! against the budget (the segment prepared ahead of need comes on top), what was written in
//! budgets, and the throughput with the budget against without it.
//!
//! Owns: this mode's arguments, run and report. Never: a node's internals (it reads stats).
use bytes::Bytes;
use clap::Args;
use paxring_engine::runtime::{Error, Node, NodeConfig, StateMachine, StateMachineFactory};
use paxring_wal::{GroupId, Instance};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `paxring-bench budget`.
#[derive(Args, Debug, Clone)]
pub struct BudgetArgs {
    /// Each core's WAL budget, in MiB.
    #[arg(long, default_value_t = 16)]
    budget_mib: u64,
    /// WAL segment size, in MiB.
    #[arg(long, default_value_t = 2)]
    segment_mib: u64,
    /// Bytes of each command.
    #[arg(long, default_value_t = 4096)]
    value_bytes: usize,
    /// The state machine takes a checkpoint this often (milliseconds).
    #[arg(long, default_value_t = 200)]
    checkpoint_every_ms: u64,
    /// Stop once this many budgets' worth of commands are committed.
    #[arg(long, default_value_t = 20)]
    budgets: u64,
    /// Stop after this many seconds at the latest.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Closed-loop writers (one proposal in flight each).
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Directory for the nodes' data (a temporary directory when absent).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A state machine that checkpoints on a timer: its checkpoint instance moves to what it
/// applied only every `every`.
struct TimedCheckpoints {
    every: Duration,
    applied: Option<Instance>,
    checkpoint: Mutex<(Option<Instance>, Instant)>,
}

impl StateMachine for TimedCheckpoints {
    fn apply(
        &mut self,
        _group: GroupId,
        instance: Instance,
        commands: &[Bytes],
        results: &mut Vec<Bytes>,
    ) {
        self.applied = Some(instance);
        results.extend(commands.iter().map(|_| Bytes::new()));
    }

    fn checkpoint_instance(&self) -> Option<Instance> {
        let mut checkpoint = self.checkpoint.lock().expect("not poisoned");
        if checkpoint.1.elapsed() >= self.every {
            *checkpoint = (self.applied, Instant::now());
        }
        checkpoint.0
    }
}

/// One load's outcome.
#[derive(Debug, Serialize)]
pub struct LoadOut {
    /// The budget (0: none).
    pub budget_bytes: u64,
    /// Seconds the load ran.
    pub seconds: f64,
    /// Commands committed.
    pub commits: u64,
    /// Command bytes committed.
    pub bytes_committed: u64,
    /// Commits per second.
    pub commits_per_s: f64,
    /// Per node: the peak of its segment files on disk (sampled every 5 ms).
    pub disk_peak_bytes: Vec<u64>,
    /// Per node: proposals refused for the budget.
    pub proposals_refused_wal_budget: Vec<u64>,
    /// Per node: votes withheld while its storage was full.
    pub accepts_withheld_storage_full: Vec<u64>,
    /// Per node: segments purged.
    pub segments_purged: Vec<u64>,
    /// `Overloaded` answers the writers got (and retried).
    pub overloaded: u64,
    /// Per node: its cores' purge snapshots at the end (room, reservation, what holds the
    /// oldest segment).
    pub purge_at_end: Vec<serde_json::Value>,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct BudgetOut {
    /// Segment size, bytes.
    pub segment_bytes: u64,
    /// Command size, bytes.
    pub value_bytes: usize,
    /// Checkpoint interval, ms.
    pub checkpoint_every_ms: u64,
    /// With the budget.
    pub budgeted: LoadOut,
    /// The same load for the same time without a budget (the baseline).
    pub unbounded: LoadOut,
    /// Per node: budgeted disk peak / budget.
    pub peak_over_budget: Vec<f64>,
    /// Bytes committed under the budget / budget.
    pub budgets_written: f64,
    /// Budgeted commits/s / unbounded commits/s.
    pub throughput_ratio: f64,
}

/// Runs the mode.
pub fn run(args: BudgetArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paxring-bench budget: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start_nodes(args: &BudgetArgs, dir: &Path, budget: u64) -> Result<Vec<Arc<Node>>, String> {
    let addrs = crate::cluster::free_addrs(3)?;
    let mut nodes = Vec::new();
    for index in 0..3usize {
        let id = index as u32 + 1;
        let mut builder = NodeConfig::builder(id, addrs[index], dir.join(format!("node-{id}")))
            .cluster_id(0xB0D6_E700 + budget.min(1))
            .groups(1)
            .cores(1)
            .pin_cores(false)
            .segment_bytes(args.segment_mib << 20)
            // The largest round write a segment allows (a quarter of it).
            .round_bytes_max(((args.segment_mib << 20) / 4) as usize)
            .wal_purge(true)
            .purge_every_ms(100)
            .wal_budget_bytes(budget);
        for (peer, addr) in addrs.iter().enumerate() {
            if peer != index {
                builder = builder.peer(peer as u32 + 1, *addr);
            }
        }
        let config = builder.build().map_err(|e| format!("node {id}: {e}"))?;
        let every = Duration::from_millis(args.checkpoint_every_ms);
        let factory: StateMachineFactory = Box::new(move |_group| {
            Ok(Box::new(TimedCheckpoints {
                every,
                applied: None,
                checkpoint: Mutex::new((None, Instant::now())),
            }) as Box<dyn StateMachine>)
        });
        nodes.push(Arc::new(
            Node::start(config, factory).map_err(|e| format!("node {id} did not start: {e}"))?,
        ));
    }
    Ok(nodes)
}

fn leader(nodes: &[Arc<Node>]) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(index) = nodes
            .iter()
            .position(|n| n.leader_hint(GroupId(0)) == Some(n.config().node_id))
        {
            return Ok(index);
        }
        if Instant::now() > deadline {
            return Err("no leader after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One load: until `target_bytes` are committed or `limit` passes.
fn load(
    args: &BudgetArgs,
    budget: u64,
    target_bytes: u64,
    limit: Duration,
) -> Result<LoadOut, String> {
    let temp;
    let base = match &args.dir {
        Some(dir) => dir.join(if budget == 0 { "unbounded" } else { "budgeted" }),
        None => {
            temp = tempfile::tempdir().map_err(|e| e.to_string())?;
            temp.path().to_path_buf()
        }
    };
    let nodes = start_nodes(args, &base, budget)?;
    let leader_index = leader(&nodes)?;
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let overloaded = Arc::new(AtomicU64::new(0));
    let sampler = {
        let stop = stop.clone();
        let dirs: Vec<PathBuf> = (1..=3)
            .map(|id| base.join(format!("node-{id}")).join("wal").join("core-0"))
            .collect();
        std::thread::spawn(move || {
            let mut peaks = vec![0u64; dirs.len()];
            while !stop.load(Ordering::Acquire) {
                for (peak, dir) in peaks.iter_mut().zip(&dirs) {
                    *peak = (*peak).max(paxring_wal::segfile::segment_files_bytes(dir));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peaks
        })
    };
    let started = Instant::now();
    let writers: Vec<_> = (0..args.writers)
        .map(|w| {
            let nodes = nodes.clone();
            let stop = stop.clone();
            let committed = committed.clone();
            let overloaded = overloaded.clone();
            let value_bytes = args.value_bytes;
            std::thread::spawn(move || {
                let mut target = leader_index;
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let mut command = format!("w{w}-{n}-").into_bytes();
                    command.resize(value_bytes, b'.');
                    n += 1;
                    match nodes[target].propose_blocking(GroupId(0), Bytes::from(command)) {
                        Ok(_) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::Overloaded) => {
                            overloaded.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_micros(500));
                        }
                        Err(Error::NotLeader {
                            leader: Some(leader),
                        }) => target = leader as usize - 1,
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();
    let per_command = args.value_bytes as u64;
    while started.elapsed() < limit
        && committed.load(Ordering::Relaxed) * per_command < target_bytes
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.join().map_err(|_| "a writer panicked".to_string())?;
    }
    let disk_peak_bytes = sampler.join().map_err(|_| "the sampler panicked")?;
    // Counters are published every 20 ms.
    std::thread::sleep(Duration::from_millis(100));
    let stats: Vec<_> = nodes.iter().map(|n| n.stats()).collect();
    let commits = committed.load(Ordering::Relaxed);
    let out = LoadOut {
        budget_bytes: budget,
        seconds,
        commits,
        bytes_committed: commits * per_command,
        commits_per_s: commits as f64 / seconds.max(1e-9),
        disk_peak_bytes,
        proposals_refused_wal_budget: stats
            .iter()
            .map(|s| s.cores.iter().map(|c| c.proposals_refused_wal_budget).sum())
            .collect(),
        accepts_withheld_storage_full: stats
            .iter()
            .map(|s| {
                s.cores
                    .iter()
                    .map(|c| c.protocol.accepts_withheld_storage_full)
                    .sum()
            })
            .collect(),
        segments_purged: stats
            .iter()
            .map(|s| s.cores.iter().map(|c| c.purge.segments_purged).sum())
            .collect(),
        overloaded: overloaded.load(Ordering::Relaxed),
        purge_at_end: stats
            .iter()
            .map(|s| {
                serde_json::to_value(s.cores.iter().map(|c| &c.purge).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect(),
    };
    for node in nodes {
        match Arc::try_unwrap(node) {
            Ok(node) => node.shutdown().map_err(|e| format!("shutdown: {e}"))?,
            Err(_) => return Err("a node is still shared after the load".into()),
        }
    }
    Ok(out)
}

fn run_inner(args: &BudgetArgs) -> Result<(), String> {
    if args.budget_mib == 0 || args.segment_mib == 0 || args.value_bytes == 0 || args.writers == 0 {
        return Err("--budget-mib, --segment-mib, --value-bytes and --writers must be > 0".into());
    }
    let budget = args.budget_mib << 20;
    let segment = args.segment_mib << 20;
    eprintln!(
        "budget: {} MiB per WAL, {} MiB segments, {} B commands, checkpoints every {} ms: writing {} budgets...",
        args.budget_mib, args.segment_mib, args.value_bytes, args.checkpoint_every_ms, args.budgets
    );
    let budgeted = load(
        args,
        budget,
        args.budgets * budget,
        Duration::from_secs(args.max_seconds),
    )?;
    eprintln!("the same load without a budget for the same time...");
    let unbounded = load(args, 0, u64::MAX, Duration::from_secs_f64(budgeted.seconds))?;
    let out = BudgetOut {
        segment_bytes: segment,
        value_bytes: args.value_bytes,
        checkpoint_every_ms: args.checkpoint_every_ms,
        peak_over_budget: budgeted
            .disk_peak_bytes
            .iter()
            .map(|p| *p as f64 / budget as f64)
            .collect(),
        budgets_written: budgeted.bytes_committed as f64 / budget as f64,
        throughput_ratio: budgeted.commits_per_s / unbounded.commits_per_s.max(1e-9),
        budgeted,
        unbounded,
    };
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!(
        "budget: {:.1} budgets written ({:.0} MiB in {:.1} s); disk peak per node {} MiB against a {} MiB budget ({} x the budget; +1 segment of {} MiB prepared ahead is allowed)",
        out.budgets_written,
        mib(out.budgeted.bytes_committed),
        out.budgeted.seconds,
        out.budgeted
            .disk_peak_bytes
            .iter()
            .map(|p| format!("{:.0}", mib(*p)))
            .collect::<Vec<_>>()
            .join("/"),
        args.budget_mib,
        out.peak_over_budget
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join("/"),
        args.segment_mib
    );
    println!(
        "budget: {:.0} commits/s with the budget, {:.0} without (ratio {:.2}); without it the disk peaked at {} MiB; refused {:?}, votes withheld {:?}, overloaded answers {}",
        out.budgeted.commits_per_s,
        out.unbounded.commits_per_s,
        out.throughput_ratio,
        out.unbounded
            .disk_peak_bytes
            .iter()
            .map(|p| format!("{:.0}", mib(*p)))
            .collect::<Vec<_>>()
            .join("/"),
        out.budgeted.proposals_refused_wal_budget,
        out.budgeted.accepts_withheld_storage_full,
        out.budgeted.overloaded
    );
    if let Some(path) = &args.json {
        crate::report::write_json(path, &out)?;
    }
    Ok(())
}
