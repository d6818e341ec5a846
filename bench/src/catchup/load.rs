//! The catch-up benchmark's two loads, both through the embedding API of in-process nodes:
//! the steady open-loop generator whose commit latency is compared with and without a
//! catching-up follower, and the fill that makes the stopped follower lag.
//!
//! Owns: the phase clock the coordinator moves, the per-phase latency histograms, the value
//! pool. Never: proposes to a node that does not believe it leads the group (the command waits
//! until one does, its latency running), grows without bound (the open loop caps commands in
//! flight or waiting, the fill keeps a fixed window), or runs past the coordinator's stop and
//! a bounded drain.

use bytes::Bytes;
use hdrhistogram::Histogram;
use paxring_engine::runtime::{Error, Node, Proposal};
use paxring_wal::GroupId;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Where the run is; each steady-load proposal is counted in the phase current when it was
/// due to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Load starting up; not reported.
    WarmUp,
    /// Three replicas up, nobody behind: the baseline before the stop.
    Before,
    /// The follower is down while the fill runs.
    Fill,
    /// From the follower's restart until it reached the leader's point at the restart.
    CatchUp,
    /// From there until it is as current as the healthy follower.
    Converge,
    /// Three replicas up again, converged: the baseline after.
    After,
    /// Winding down; not reported.
    Idle,
}

impl Phase {
    /// Every phase, in order (the index of each is its position).
    pub const ALL: [Phase; 7] = [
        Phase::WarmUp,
        Phase::Before,
        Phase::Fill,
        Phase::CatchUp,
        Phase::Converge,
        Phase::After,
        Phase::Idle,
    ];

    /// Its position in [`Phase::ALL`].
    pub fn index(self) -> usize {
        Phase::ALL
            .iter()
            .position(|p| *p == self)
            .expect("every phase is listed")
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::WarmUp => "warm_up",
            Phase::Before => "before",
            Phase::Fill => "fill",
            Phase::CatchUp => "catch_up",
            Phase::Converge => "converge",
            Phase::After => "after",
            Phase::Idle => "idle",
        }
    }
}

/// The coordinator's hand on the loads: the current phase and the stop flag.
#[derive(Debug, Default)]
pub struct PhaseClock {
    phase: AtomicU8,
    stop: AtomicBool,
}

impl PhaseClock {
    /// Moves to `phase`.
    pub fn set(&self, phase: Phase) {
        let index = u8::try_from(phase.index()).expect("few phases");
        self.phase.store(index, Ordering::Release);
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        Phase::ALL[usize::from(self.phase.load(Ordering::Acquire))]
    }

    /// Tells every load and sampler to finish.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// True once `stop` was called.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// Sets the clock's stop flag when dropped, so that an error in the coordinator never leaves
/// a scoped load thread running (the scope would wait for it forever).
pub struct StopOnDrop<'a>(pub &'a PhaseClock);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// What the steady load saw in one phase (each command counted in the phase it was due to
/// start in, whenever it committed).
#[derive(Clone, Debug)]
pub struct PhaseLoad {
    /// Commit latency from each command's intended start, µs (coordinated omission corrected:
    /// a command that waited for a leader, or was refused and proposed again, counts all of
    /// that time).
    pub histogram: Histogram<u64>,
    /// Commands due in the phase (started or not).
    pub due: u64,
    /// Committed.
    pub commits: u64,
    /// NotLeader answers (the command was proposed again once a serving node led its group).
    pub not_leader: u64,
    /// Overloaded answers (proposed again).
    pub overloaded: u64,
    /// Commands whose outcome is unknown or that failed otherwise (not proposed again).
    pub failed: u64,
    /// Commands that found no serving node leading their group when due, and waited.
    pub waited_for_leader: u64,
    /// Commands not started because `IN_FLIGHT_MAX` were in flight or waiting.
    pub skipped_in_flight: u64,
    /// Commands still waiting or in flight when the load stopped draining.
    pub abandoned: u64,
}

impl PhaseLoad {
    fn new() -> PhaseLoad {
        PhaseLoad {
            histogram: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            due: 0,
            commits: 0,
            not_leader: 0,
            overloaded: 0,
            failed: 0,
            waited_for_leader: 0,
            skipped_in_flight: 0,
            abandoned: 0,
        }
    }
}

/// Most steady-load proposals in flight; beyond it intended starts are skipped (counted).
pub const IN_FLIGHT_MAX: u64 = 10_000;
/// Proposals the open loop issues back to back (behind schedule) before it lets completions in.
const BURST_MAX: u32 = 64;
/// Longest wait for steady-load proposals still in flight after the stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Proposals the fill keeps outstanding (over all groups).
pub const FILL_WINDOW: usize = 1024;

/// A pool of value bytes; every proposal is a zero-copy slice of it at another offset.
pub fn value_pool(value_bytes: usize) -> Bytes {
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

fn value_at(pool: &Bytes, value_bytes: usize, k: u64) -> Bytes {
    let span = (pool.len() - value_bytes) as u64;
    let offset = (k.wrapping_mul(61) % span) as usize;
    pool.slice(offset..offset + value_bytes)
}

/// The serving node that believes it leads `group`, if any.
pub fn leader_of<'a>(serving: &[&'a Node], group: u32) -> Option<&'a Node> {
    serving
        .iter()
        .copied()
        .find(|n| n.leader_hint(GroupId(group)) == Some(n.config().node_id))
}

/// A command of the steady load waiting to be proposed (again).
#[derive(Clone, Copy, Debug)]
struct Waiting {
    intended: Instant,
    group: u32,
    k: u64,
    phase: usize,
}

/// The open loop's state shared with its completion tasks (one thread: `Rc`/`RefCell`).
struct LoopState {
    loads: RefCell<Vec<PhaseLoad>>,
    waiting: RefCell<VecDeque<Waiting>>,
    in_flight: Cell<u64>,
    /// In flight, by the phase the command was due in.
    in_flight_by_phase: RefCell<Vec<u64>>,
}

/// Proposes `w` to the serving node that leads its group, or puts it back to wait for one.
fn issue(serving: &[&Node], pool: &Bytes, value_bytes: usize, w: Waiting, state: &Rc<LoopState>) {
    let Some(node) = leader_of(serving, w.group) else {
        state.waiting.borrow_mut().push_back(w);
        return;
    };
    let proposal = node.propose(GroupId(w.group), value_at(pool, value_bytes, w.k));
    state.in_flight.set(state.in_flight.get() + 1);
    state.in_flight_by_phase.borrow_mut()[w.phase] += 1;
    let state = state.clone();
    tokio::task::spawn_local(async move {
        let outcome = proposal.await;
        let micros = w.intended.elapsed().as_micros().max(1) as u64;
        state.in_flight.set(state.in_flight.get() - 1);
        state.in_flight_by_phase.borrow_mut()[w.phase] -= 1;
        let mut loads = state.loads.borrow_mut();
        let load = &mut loads[w.phase];
        match outcome {
            Ok(_) => {
                load.histogram.saturating_record(micros);
                load.commits += 1;
            }
            Err(Error::NotLeader { .. }) => {
                load.not_leader += 1;
                state.waiting.borrow_mut().push_back(w);
            }
            Err(Error::Overloaded) => {
                load.overloaded += 1;
                state.waiting.borrow_mut().push_back(w);
            }
            Err(_) => load.failed += 1,
        }
    });
}

/// Runs the steady open-loop load at `rate_per_s` commands/s over `groups` (round robin),
/// each proposed to the serving node that leads its group, until `clock` says stop; a command
/// that finds no leader, or is refused, waits and is proposed again (as a client would), its
/// latency still counted from its intended start. Then drains (bounded). Returns each phase's
/// figures, indexed like [`Phase::ALL`].
pub fn open_loop(
    serving: &[&Node],
    groups: u32,
    rate_per_s: f64,
    value_bytes: usize,
    clock: &PhaseClock,
) -> Result<Vec<PhaseLoad>, String> {
    assert!(groups > 0, "groups");
    assert!(rate_per_s > 0.0, "rate");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("load generator runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    let state = Rc::new(LoopState {
        loads: RefCell::new(
            (0..Phase::ALL.len())
                .map(|_| PhaseLoad::new())
                .collect::<Vec<_>>(),
        ),
        waiting: RefCell::new(VecDeque::new()),
        in_flight: Cell::new(0),
        in_flight_by_phase: RefCell::new(vec![0; Phase::ALL.len()]),
    });
    let pool = value_pool(value_bytes);
    let interval = Duration::from_secs_f64(1.0 / rate_per_s);
    local.block_on(&runtime, async {
        let begin = Instant::now();
        let mut k: u64 = 0;
        let mut burst = 0u32;
        while !clock.stopped() {
            // Commands waiting for a leader (or refused) go again when one is known.
            let waiting = state.waiting.borrow().len();
            for _ in 0..waiting {
                let w = state.waiting.borrow_mut().pop_front().expect("counted");
                issue(serving, &pool, value_bytes, w, &state);
            }
            let intended = begin + interval.mul_f64(k as f64);
            if intended > Instant::now() {
                burst = 0;
                // Look at waiting commands at least every millisecond meanwhile.
                let wake = if state.waiting.borrow().is_empty() {
                    intended
                } else {
                    intended.min(Instant::now() + Duration::from_millis(1))
                };
                tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
                if wake < intended {
                    continue;
                }
            } else {
                burst += 1;
                if burst >= BURST_MAX {
                    burst = 0;
                    tokio::task::yield_now().await;
                }
            }
            let phase = clock.get().index();
            let w = Waiting {
                intended,
                group: (k % u64::from(groups)) as u32,
                k,
                phase,
            };
            k += 1;
            state.loads.borrow_mut()[phase].due += 1;
            if state.in_flight.get() + state.waiting.borrow().len() as u64 >= IN_FLIGHT_MAX {
                state.loads.borrow_mut()[phase].skipped_in_flight += 1;
                continue;
            }
            if leader_of(serving, w.group).is_none() {
                state.loads.borrow_mut()[phase].waited_for_leader += 1;
            }
            issue(serving, &pool, value_bytes, w, &state);
        }
        // Drain: what is in flight completes, what waits is proposed again, within bounds.
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while (state.in_flight.get() > 0 || !state.waiting.borrow().is_empty())
            && Instant::now() < deadline
        {
            let waiting = state.waiting.borrow().len();
            for _ in 0..waiting {
                let w = state.waiting.borrow_mut().pop_front().expect("counted");
                issue(serving, &pool, value_bytes, w, &state);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    // What never committed in time: still waiting, or in flight past the deadline (their
    // tasks are dropped with the runtime, unanswered).
    let mut loads = state.loads.borrow().clone();
    for w in state.waiting.borrow().iter() {
        loads[w.phase].abandoned += 1;
    }
    for (load, in_flight) in loads
        .iter_mut()
        .zip(state.in_flight_by_phase.borrow().iter())
    {
        load.abandoned += in_flight;
    }
    Ok(loads)
}

/// What the fill did.
#[derive(Clone, Copy, Debug, Default)]
pub struct FillOutcome {
    /// Commands committed (one instance each: the benchmark's nodes run with
    /// `batch_commands_max = 1`).
    pub committed: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Refused as NotLeader (sent again).
    pub not_leader: u64,
    /// Refused as Overloaded (sent again).
    pub overloaded: u64,
    /// Outcome unknown (sent again: the lag is measured, not assumed).
    pub unknown: u64,
}

/// Commits `count` commands of `value_bytes` over `groups` (round robin) as fast as the
/// serving nodes take them, `FILL_WINDOW` outstanding; fails at `deadline`.
pub fn fill(
    serving: &[&Node],
    groups: u32,
    value_bytes: usize,
    count: u64,
    deadline: Instant,
) -> Result<FillOutcome, String> {
    let pool = value_pool(value_bytes);
    let started = Instant::now();
    let mut outcome = FillOutcome::default();
    let mut outstanding: VecDeque<Proposal> = VecDeque::with_capacity(FILL_WINDOW);
    let mut k: u64 = 1 << 40; // other offsets than the steady load's
    while outcome.committed < count {
        if Instant::now() > deadline {
            return Err(format!(
                "the fill committed {} of {count} commands before its deadline",
                outcome.committed
            ));
        }
        while outstanding.len() < FILL_WINDOW
            && outcome.committed + (outstanding.len() as u64) < count
        {
            let group = (k % u64::from(groups)) as u32;
            let Some(node) = leader_of(serving, group) else {
                break;
            };
            outstanding.push_back(node.propose(GroupId(group), value_at(&pool, value_bytes, k)));
            k += 1;
        }
        let Some(proposal) = outstanding.pop_front() else {
            // No leader known for the next group yet (an election after the stop).
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        match proposal.wait() {
            Ok(_) => outcome.committed += 1,
            Err(Error::NotLeader { .. }) => {
                outcome.not_leader += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Error::Overloaded) => {
                outcome.overloaded += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Error::Unknown(_)) => outcome.unknown += 1,
            Err(other) => return Err(format!("the fill failed: {other}")),
        }
    }
    for proposal in outstanding {
        let _ = proposal.wait();
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    //! Proves that phases map to distinct indexes and back, and that the value pool hands out
    //! slices of the asked size inside the pool.
    use super::*;

    #[test]
    fn phases_round_trip_through_the_clock() {
        let clock = PhaseClock::default();
        assert_eq!(clock.get(), Phase::WarmUp);
        for phase in Phase::ALL {
            clock.set(phase);
            assert_eq!(clock.get(), phase);
        }
        let names: std::collections::BTreeSet<_> = Phase::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Phase::ALL.len());
        assert!(!clock.stopped());
        drop(StopOnDrop(&clock));
        assert!(clock.stopped());
    }

    #[test]
    fn values_are_slices_of_the_asked_size() {
        let pool = value_pool(1000);
        for k in [0, 1, 7, 1 << 40, u64::MAX] {
            assert_eq!(value_at(&pool, 1000, k).len(), 1000);
        }
        assert_ne!(value_at(&pool, 1000, 1), value_at(&pool, 1000, 2));
    }
}
