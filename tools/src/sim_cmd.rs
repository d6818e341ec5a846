//! `paxring sim`: runs the deterministic simulator over many seeds and prints the totals.
//!
//! Owns: argument parsing and the report. The simulation itself is
//! `paxring_engine::sim` (library code, so `cargo test` runs seeds too). Exit 0 only with zero
//! violations; each failing seed prints a one-line replay command.
use paxring_engine::sim::{run_seed, Fault, RunSummary, SimOptions};
use std::process::ExitCode;

/// Arguments of `paxring sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed (seeds run are start-seed .. start-seed + seeds).
    #[arg(long, default_value_t = 1)]
    start_seed: u64,
    /// Replicas per group: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Paxos groups.
    #[arg(long, default_value_t = 4)]
    groups: u32,
    /// Instances in flight per group (1 = serial mode).
    #[arg(long, default_value_t = 8)]
    pipeline: u32,
    /// Faults: comma-separated from loss,dup,reorder,partition,oneway,crash,torn,bitflip,powerloss,wipe; or all, none.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Ticks of the safety phase (faults on).
    #[arg(long, default_value_t = 3000)]
    safety_ticks: u64,
    /// Ticks of the heal phase (faults off; progress required).
    #[arg(long, default_value_t = 3000)]
    heal_ticks: u64,
    /// Print one line per seed (with its trace hash).
    #[arg(long)]
    verbose: bool,
    /// Print every event of each seed (deliveries decoded, crashes, starts, results): for
    /// replaying one failing seed.
    #[arg(long)]
    log: bool,
    /// Inject a known protocol bug: forget-promise, reply-before-durable,
    /// skip-prepare-on-new-leader, ballot-reuse-after-crash, relearn-target-too-low,
    /// commit-by-bytes, cut-damaged-last-write, unbounded-promise, rejoin-with-empty-state.
    #[cfg(feature = "sim-bugs")]
    #[arg(long)]
    bug: Option<String>,
    /// Turn the durable-before-reply checker off, to see whether the other checkers catch a
    /// bug's consequences on their own.
    #[cfg(feature = "sim-bugs")]
    #[arg(long)]
    skip_durable_check: bool,
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
    if args.safety_ticks == 0 || args.heal_ticks < 100 {
        eprintln!("paxring sim: need --safety-ticks >= 1 and --heal-ticks >= 100");
        return ExitCode::from(2);
    }
    #[allow(unused_mut)]
    let mut options = SimOptions {
        nodes: args.nodes,
        groups: args.groups,
        pipeline: args.pipeline,
        faults,
        safety_ticks: args.safety_ticks,
        heal_ticks: args.heal_ticks,
        log: args.log,
        ..SimOptions::default()
    };
    #[cfg(feature = "sim-bugs")]
    {
        options.check_durable_replies = !args.skip_durable_check;
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
    let mut summary = RunSummary::default();
    for seed in args.start_seed..args.start_seed.saturating_add(args.seeds) {
        let report = run_seed(&options, seed);
        summary.add(&report);
        for line in &report.log {
            println!("{line}");
        }
        if args.verbose {
            println!(
                "seed {seed}: trace {:016x} commits {} instances {} crashes {} {}",
                report.trace_hash,
                report.commits,
                report.instances,
                report.crashes,
                if report.violation.is_some() {
                    "VIOLATION"
                } else {
                    "ok"
                }
            );
        }
        if let Some(violation) = &report.violation {
            println!(
                "VIOLATION seed {seed} (trace {:016x}): {violation}",
                report.trace_hash
            );
            println!("  replay: {}", options.replay_command(seed));
        }
    }
    println!(
        "seeds {} violations {} commits {} messages/commit {:.2} durable-writes/instance/replica {:.3} rtts/commit(steady) {:.3} crashes {} power-losses {} wipes {} oversize-dropped {}",
        summary.seeds,
        summary.violations,
        summary.commits,
        summary.messages_per_commit(),
        summary.durable_writes_per_instance_per_replica(options.nodes),
        summary.rtts_per_commit(),
        summary.crashes,
        summary.power_losses,
        summary.wipes,
        summary.oversize_dropped,
    );
    if summary.violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
