//! `paxring sim`: runs the deterministic simulator over many seeds (on several threads, each
//! seed alone deterministic) and prints the totals.
//!
//! Owns: argument parsing, the seed workers and the report. The simulation itself is
//! `paxring_engine::sim` (library code, so `cargo test` runs seeds too). Exit 0 only with zero
//! violations; each failing seed prints its fault profile and a one-line replay command.
use paxring_engine::sim::{run_seed, Fault, RunSummary, SeedReport, SimOptions};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Arguments of `paxring sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Number of seeds to run (default 100; with --seconds, no limit but the time).
    #[arg(long)]
    seeds: Option<u64>,
    /// Run seeds until this many seconds have passed (the seed in progress finishes).
    #[arg(long)]
    seconds: Option<u64>,
    /// First seed (seeds run are start-seed, start-seed + 1, ...).
    #[arg(long, default_value_t = 1)]
    start_seed: u64,
    /// Worker threads (default: the machine's CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Replicas per group: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Followers (non-voting replicas) next to the voters: 0 to 2.
    #[arg(long, default_value_t = 0)]
    followers: u32,
    /// Core threads per node (groups spread over them as the runtime does).
    #[arg(long, default_value_t = 2)]
    cores: u32,
    /// Paxos groups.
    #[arg(long, default_value_t = 4)]
    groups: u32,
    /// Clients per group (each keeps up to 4 proposals outstanding).
    #[arg(long, default_value_t = 2)]
    clients: u32,
    /// Instances in flight per group (1 = serial mode).
    #[arg(long, default_value_t = 8)]
    pipeline: u32,
    /// Fault classes a seed may switch on: comma-separated from loss, dup, reorder,
    /// partition, oneway, linkdelay, corrupt, crash, pause, skew, torn, bitflip, zero, lost,
    /// misdirect, rotlast, stall, fsync, powerloss, wipe, kindloss; or all, none.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Every allowed fault class on in every seed, at default rates (default: swarm testing,
    /// each seed switches on a random subset with random rates).
    #[arg(long)]
    no_swarm: bool,
    /// Ticks of the safety phase (faults on).
    #[arg(long, default_value_t = 3000)]
    safety_ticks: u64,
    /// Ticks of the heal phase (faults off; progress required).
    #[arg(long, default_value_t = 3000)]
    heal_ticks: u64,
    /// Log bases follow the state machines' checkpoints (the purge pass), so restarts start
    /// each group at its base. Until checkpoint transfer exists, expect liveness violations
    /// (`no progress`, `converge`) from replicas behind every peer's base; any other
    /// violation is a bug.
    #[arg(long)]
    purge: bool,
    /// Disk writes each simulated core keeps in flight (the node's `wal_writes_in_flight`):
    /// a later write may land before an earlier one, and a crash keeps what landed.
    #[arg(long, default_value_t = 1)]
    writes_in_flight: usize,
    /// Membership changes during the safety phase: leaders are asked for random memberships
    /// of 3..=5 voters among every node (`--nodes` + `--followers`), the others following.
    #[arg(long)]
    membership: bool,
    /// Print one line per seed (trace hash, commits, fault profile).
    #[arg(long)]
    verbose: bool,
    /// Print every event of each seed (deliveries decoded, crashes, starts, results): for
    /// replaying one failing seed.
    #[arg(long)]
    log: bool,
    /// Inject a known protocol bug: forget-promise, reply-before-durable,
    /// skip-prepare-on-new-leader, ballot-reuse-after-crash, relearn-target-too-low,
    /// commit-by-bytes, cut-damaged-last-write, unbounded-promise, rejoin-with-empty-state,
    /// accept-below-promise, ignore-fsync-error, log-read-off-by-one, base-forgets-promise,
    /// promise-below-base.
    #[cfg(feature = "sim-bugs")]
    #[arg(long)]
    bug: Option<String>,
    /// Turn the durable-before-reply checker off, to see whether the other checkers catch a
    /// bug's consequences on their own.
    #[cfg(feature = "sim-bugs")]
    #[arg(long)]
    skip_durable_check: bool,
    /// Turn off the non-voter-silent checker (to see whether the other checkers catch
    /// `--bug follower-votes` on their own).
    #[cfg(feature = "sim-bugs")]
    #[arg(long)]
    skip_non_voter_check: bool,
}

/// Runs `paxring sim`.
pub fn run(args: SimArgs) -> ExitCode {
    let faults = match Fault::parse_list(&args.faults) {
        Ok(faults) => faults,
        Err(error) => {
            eprintln!("paxring sim: --faults: {error}");
            return ExitCode::from(2);
        }
    };
    if args.nodes != 3 && args.nodes != 5 {
        eprintln!("paxring sim: --nodes must be 3 or 5 (got {})", args.nodes);
        return ExitCode::from(2);
    }
    if args.followers > 2 {
        eprintln!(
            "paxring sim: --followers must be 0..=2 (got {})",
            args.followers
        );
        return ExitCode::from(2);
    }
    if args.groups == 0 || args.groups > 1024 {
        eprintln!(
            "paxring sim: --groups must be 1..=1024 (got {})",
            args.groups
        );
        return ExitCode::from(2);
    }
    if args.pipeline == 0 || args.pipeline > paxring_engine::core::PIPELINE_MAX {
        eprintln!(
            "paxring sim: --pipeline must be 1..={} (got {})",
            paxring_engine::core::PIPELINE_MAX,
            args.pipeline
        );
        return ExitCode::from(2);
    }
    if args.cores == 0 || args.cores > 64 {
        eprintln!("paxring sim: --cores must be 1..=64 (got {})", args.cores);
        return ExitCode::from(2);
    }
    if args.clients == 0 {
        eprintln!("paxring sim: --clients must be at least 1");
        return ExitCode::from(2);
    }
    if args.jobs == Some(0) {
        eprintln!("paxring sim: --jobs must be at least 1");
        return ExitCode::from(2);
    }
    if args.safety_ticks == 0 || args.heal_ticks < 100 {
        eprintln!("paxring sim: need --safety-ticks >= 1 and --heal-ticks >= 100");
        return ExitCode::from(2);
    }
    #[allow(unused_mut)]
    let mut options = SimOptions {
        nodes: args.nodes,
        followers: args.followers,
        cores: args.cores,
        groups: args.groups,
        clients_per_group: args.clients,
        swarm: !args.no_swarm,
        pipeline: args.pipeline,
        faults,
        safety_ticks: args.safety_ticks,
        heal_ticks: args.heal_ticks,
        log: args.log,
        purge: args.purge,
        writes_in_flight: args.writes_in_flight,
        membership: args.membership,
        ..SimOptions::default()
    };
    #[cfg(feature = "sim-bugs")]
    {
        options.check_durable_replies = !args.skip_durable_check;
        options.check_non_voters = !args.skip_non_voter_check;
    }
    #[cfg(feature = "sim-bugs")]
    if let Some(name) = &args.bug {
        match paxring_engine::sim::Bug::parse(name) {
            Ok(bug) => options.bug = Some(bug),
            Err(error) => {
                eprintln!("paxring sim: --bug: {error}");
                return ExitCode::from(2);
            }
        }
    }
    let seeds = match (args.seeds, args.seconds) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX - args.start_seed,
        (None, None) => 100,
    };
    let end_seed = args.start_seed.saturating_add(seeds);
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(args.start_seed));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<SeedReport>();
    let options = Arc::new(options);
    let mut workers = Vec::new();
    for _ in 0..jobs {
        let (next, stop, tx, options) = (next.clone(), stop.clone(), tx.clone(), options.clone());
        workers.push(std::thread::spawn(move || loop {
            if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let seed = next.fetch_add(1, Ordering::Relaxed);
            if seed >= end_seed {
                break;
            }
            if tx.send(run_seed(&options, seed)).is_err() {
                break;
            }
        }));
    }
    drop(tx);
    let mut summary = RunSummary::default();
    let mut last_progress = Instant::now();
    for report in rx {
        summary.add(&report);
        let seed = report.seed;
        for line in &report.log {
            println!("{line}");
        }
        if args.verbose {
            println!(
                "seed {seed}: trace {:016x} commits {} instances {} {} faults: {}",
                report.trace_hash,
                report.commits,
                report.instances,
                if report.violation.is_some() {
                    "VIOLATION"
                } else {
                    "ok"
                },
                report.profile,
            );
        }
        if let Some(violation) = &report.violation {
            println!(
                "VIOLATION seed {seed} (trace {:016x}): {violation}",
                report.trace_hash
            );
            println!("  faults: {}", report.profile);
            println!("  replay: {}", options.replay_command(seed));
        }
        if !args.verbose && last_progress.elapsed() >= Duration::from_secs(60) {
            last_progress = Instant::now();
            eprintln!(
                "paxring sim: {} seeds, {} violations, {:.0} s",
                summary.seeds,
                summary.violations,
                started.elapsed().as_secs_f64()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "seeds {} violations {} in {seconds:.1} s ({:.1} seeds/s, {jobs} threads)",
        summary.seeds,
        summary.violations,
        summary.seeds as f64 / seconds.max(1e-9),
    );
    println!(
        "commits {} instances {} frames/commit {:.2} sends/encode {:.2} durable-writes/instance/replica {:.3} rtts/commit(steady) {:.3} oversize-refused {} corrupt-refused {} catch-up-values-from-disk {} reads-lease {} reads-index {}",
        summary.commits,
        summary.instances,
        summary.messages_per_commit(),
        summary.sends_per_encode(),
        summary.durable_writes_per_instance_per_replica(options.nodes + options.followers),
        summary.rtts_per_commit(),
        summary.oversize_dropped,
        summary.corrupt_refused,
        summary.values_read_from_disk,
        summary.reads_lease,
        summary.reads_index,
    );
    let classes: Vec<String> = Fault::ALL
        .iter()
        .filter(|f| options.faults.contains(f))
        .map(|f| {
            format!(
                "{} {}",
                f.name(),
                summary.classes_on.get(f.name()).copied().unwrap_or(0)
            )
        })
        .collect();
    println!("seeds with each class on: {}", classes.join(", "));
    let counts: Vec<String> = summary
        .faults
        .iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    println!("faults injected: {}", counts.join(", "));
    if summary.violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
