//! Proves the WAL budget's back-pressure (docs/ARCHITECTURE.md, "WAL budget") on a real node
//! (its WAL, its core thread, its executor): a state machine that checkpoints only every
//! 400 ms lags far behind writers that propose as fast as they can, so purge cannot keep up
//! by itself. With `wal_budget_bytes` set, the core refuses proposals (`Overloaded`) whenever
//! its WAL has no room for them, and the segments it holds never exceed the budget, sampled on
//! disk every 2 ms, while writing goes on (several times the budget in all). The control: the
//! same writers, no budget and no checkpoint within the run, take the WAL well past it (the
//! measurement can fail).
//!
//! One node, one group: every record in its WAL comes from its own proposals, so the bound is
//! exact (a follower also writes what another node's leader sends it).
mod common;

use bytes::Bytes;
use common::{free_addrs, node_config, sample_disk_peaks, wait_for, wait_until};
use paxring_engine::runtime::{Error, Node, StateMachine, StateMachineFactory};
use paxring_wal::{GroupId, Instance};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SEGMENT: u64 = 1 << 20;
const ROUND: usize = 128 << 10;
const BUDGET: u64 = 4 << 20;
/// How often the state machine takes a checkpoint (its checkpoint instance moves only then).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(400);
const COMMAND_BYTES: usize = 4096;
const WRITERS: usize = 4;

/// Keeps nothing but its applied point; it "takes" a checkpoint (of everything applied) on a
/// timer of its own, every `every` (`CHECKPOINT_EVERY`), as a state machine that snapshots in the
/// background does: its checkpoint instance moves only then.
struct LaggingCheckpoints {
    every: Duration,
    applied: Option<Instance>,
    /// The instance of the last checkpoint, and when it was taken.
    checkpoint: Mutex<(Option<Instance>, Instant)>,
}

impl StateMachine for LaggingCheckpoints {
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
        let mut checkpoint = self.checkpoint.lock().unwrap();
        if checkpoint.1.elapsed() >= self.every {
            *checkpoint = (self.applied, Instant::now());
        }
        checkpoint.0
    }
}

fn start(dir: &Path, budget: u64, every: Duration) -> Node {
    let addrs = free_addrs(1);
    let config = node_config(1, &addrs, dir, 31 + budget.min(1))
        .cores(1)
        .groups(1)
        .segment_bytes(SEGMENT)
        .round_bytes_max(ROUND)
        .batch_bytes_max(64 << 10)
        .wal_purge(true)
        .purge_every_ms(100)
        .wal_budget_bytes(budget)
        .build()
        .expect("a valid config");
    let factory: StateMachineFactory = Box::new(move |_group: GroupId| {
        Ok(Box::new(LaggingCheckpoints {
            every,
            applied: None,
            checkpoint: Mutex::new((None, Instant::now())),
        }) as Box<dyn StateMachine>)
    });
    Node::start(config, factory).expect("node starts")
}

struct Outcome {
    committed: u64,
    refused: u64,
    disk_peak: u64,
    held_peak: u64,
    refused_counter: u64,
}

/// Runs the writers against a fresh node for `run`, sampling its WAL directory.
fn load(budget: u64, every: Duration, run: Duration) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(start(dir.path(), budget, every));
    wait_for("a leader", 30, || node.leader_hint(GroupId(0)).is_some());
    let wal_dir: PathBuf = dir.path().join("node-1").join("wal").join("core-0");
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let sampler = sample_disk_peaks(
        vec![wal_dir.clone()],
        stop.clone(),
        Duration::from_millis(2),
    );
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let node = node.clone();
            let stop = stop.clone();
            let committed = committed.clone();
            let refused = refused.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let mut command = format!("w{w}-{n}-").into_bytes();
                    command.resize(COMMAND_BYTES, b'.');
                    n += 1;
                    let deadline = Instant::now() + Duration::from_secs(30);
                    match wait_until(node.propose(GroupId(0), Bytes::from(command)), deadline) {
                        Some(Ok(_)) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Err(Error::Overloaded)) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_micros(500));
                        }
                        Some(Err(e)) => panic!("unexpected error: {e}"),
                        None => panic!("no outcome within 30 s"),
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut held_peak = 0;
    while started.elapsed() < run {
        for core in node.stats().cores {
            held_peak = held_peak.max(core.purge.segments * SEGMENT);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.join().unwrap();
    }
    let disk_peak = sampler.join().unwrap()[0];
    // The counters are published every 20 ms.
    std::thread::sleep(Duration::from_millis(100));
    let refused_counter = node
        .stats()
        .cores
        .iter()
        .map(|c| c.proposals_refused_wal_budget)
        .sum();
    let outcome = Outcome {
        committed: committed.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        disk_peak,
        held_peak,
        refused_counter,
    };
    Arc::try_unwrap(node)
        .ok()
        .expect("the writers are gone")
        .shutdown()
        .unwrap();
    outcome
}

#[test]
fn the_wal_budget_holds_writes_back_while_checkpoints_lag() {
    let run = Duration::from_secs(4);
    let held = load(BUDGET, CHECKPOINT_EVERY, run);
    let written = held.committed * COMMAND_BYTES as u64;
    eprintln!(
        "budget {BUDGET}: {} committed ({written} bytes), {} refused (counter {}), peak {} bytes of segments on disk, {} held at a publish",
        held.committed, held.refused, held.refused_counter, held.disk_peak, held.held_peak
    );
    // On disk the segment prepared ahead of need may come on top of those the WAL holds.
    assert!(
        held.disk_peak <= BUDGET + SEGMENT,
        "segment files on disk stayed within the budget and the one prepared ahead: peak {} of {BUDGET} + {SEGMENT}",
        held.disk_peak
    );
    assert!(
        held.held_peak <= BUDGET,
        "the segments the WAL held stayed within its budget: peak {} of {BUDGET}",
        held.held_peak
    );
    // Refusals for the budget are counted (`Overloaded` also answers a full executor queue).
    assert!(
        held.refused_counter > 0 && held.refused_counter <= held.refused,
        "the budget held writes back: {} refused, {} counted for the budget",
        held.refused,
        held.refused_counter
    );
    assert!(
        written >= 2 * BUDGET,
        "writing went on under the budget: {written} bytes committed"
    );

    // The control: the same writers without a budget take the WAL well past it.
    // Its checkpoints never come within the run: whatever is written stays (on a loaded
    // machine a 400 ms cadence alone can keep the WAL near the budget, which proves nothing).
    let free = load(0, Duration::from_secs(3600), run);
    eprintln!(
        "no budget: {} committed, {} refused, peak {} bytes of segments on disk",
        free.committed, free.refused, free.disk_peak
    );
    assert_eq!(free.refused, 0, "no budget, no refusal");
    assert!(
        free.disk_peak > BUDGET + SEGMENT,
        "without a budget the lagging checkpoints let the WAL grow past it: peak {}",
        free.disk_peak
    );
}
