//! Simulator seeds in `cargo test`: a few hundred seeds of the full fault mix (3 nodes) plus a
//! 5-node, a serial-pipeline and a one-group run, all with zero violations; and determinism: a
//! seed run twice gives the same trace hash (and different seeds give different traces).
//! Larger runs: `cargo run --release -p paxring-tools -- sim --seeds 500`.
use paxring_engine::sim::{run_seed, RunSummary, SimOptions};

fn short() -> SimOptions {
    SimOptions {
        safety_ticks: 1500,
        heal_ticks: 1200,
        ..SimOptions::default()
    }
}

fn run(options: &SimOptions, seeds: std::ops::Range<u64>) -> RunSummary {
    let mut summary = RunSummary::default();
    let mut failures = Vec::new();
    for seed in seeds {
        let report = run_seed(options, seed);
        summary.add(&report);
        if let Some(violation) = &report.violation {
            failures.push(format!(
                "seed {seed}: {violation}\n  replay: {}",
                options.replay_command(seed)
            ));
        }
    }
    assert!(failures.is_empty(), "violations:\n{}", failures.join("\n"));
    summary
}

#[test]
fn three_nodes_all_faults() {
    let summary = run(&short(), 1..201);
    assert_eq!(summary.violations, 0);
    assert!(summary.commits > 0);
    assert!(summary.crashes > 0, "the fault mix crashed nodes");
    // Steady state: one round trip per commit (no Prepare once a leader is stable).
    assert!(
        summary.rtts_per_commit() < 1.05,
        "{}",
        summary.rtts_per_commit()
    );
}

#[test]
fn five_nodes_serial_pipeline_and_one_group() {
    run(
        &SimOptions {
            nodes: 5,
            ..short()
        },
        1001..1041,
    );
    run(
        &SimOptions {
            pipeline: 1,
            ..short()
        },
        2001..2041,
    );
    run(
        &SimOptions {
            groups: 1,
            ..short()
        },
        3001..3041,
    );
}

#[test]
fn same_seed_same_trace() {
    let options = short();
    let first = run_seed(&options, 77);
    let again = run_seed(&options, 77);
    assert_eq!(first.trace_hash, again.trace_hash);
    assert_eq!(first.commits, again.commits);
    let other = run_seed(&options, 78);
    assert_ne!(first.trace_hash, other.trace_hash);
}
