//! The simulator's fault classes, the per-seed fault profile (swarm testing) and the injected
//! bugs.
//!
//! Owns: [`Fault`] (every class a seed may switch on, with its `--faults` name), [`Profile`]
//! (the classes and rates one seed runs with, drawn from the seed), [`Bug`] (known protocol
//! bugs, feature `sim-bugs`). Must never draw randomness except from the seeded [`Prng`].
use crate::core::Prng;
use std::collections::BTreeSet;
use std::fmt;

/// A fault class the simulator can inject. Each seed switches on a random subset of the
/// classes allowed by `--faults` (swarm testing), each with its own rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Network: messages lost.
    Loss,
    /// Network: messages delivered twice.
    Dup,
    /// Network: some messages delayed far beyond the others.
    Reorder,
    /// Network: symmetric partitions (a minority cut from the rest), several at once.
    Partition,
    /// Network: one-way partitions (a -> b blocked, b -> a open).
    OneWay,
    /// Network: per-link delay distributions (asymmetric, heavy tail).
    LinkDelay,
    /// Network: links that corrupt bytes of frames (the frame checksums must catch it).
    Corrupt,
    /// Process: crash and restart after 0..N ticks (a crash loses unsynced writes).
    Crash,
    /// Process: a node stops stepping for a while and resumes with old messages in flight.
    Pause,
    /// Process: per-node clock rate skew (within `SKEW_PPM_MAX`).
    Skew,
    /// Disk: a crash tears the write in flight.
    Torn,
    /// Disk: a crash flips a bit in a durable record followed by valid data.
    BitFlip,
    /// Disk: a crash finds a zeroed sector in a durable write.
    Zero,
    /// Disk: a durable write (not the last) was lost: its bytes never reached the disk.
    Lost,
    /// Disk: a durable write (not the last) landed over another write's place.
    Misdirect,
    /// Disk: a crash flips a bit in the last durable write (its replies may have left).
    RotLast,
    /// Disk: per-node latency with stalls (a write that takes hundreds of ticks).
    Stall,
    /// Disk: a write fails (fsync error): the node must fail-stop, never continue.
    FsyncError,
    /// Power loss: every node crashes at once, each tearing its write in flight.
    PowerLoss,
    /// A crashed node restarts with its data directory wiped (its state lost).
    Wipe,
    /// Network: a link drops every frame of one message kind for a while (Accepts lost while
    /// Commits pass): a loss pattern that independent random loss makes vanishingly rare.
    KindLoss,
    /// Protocol: check quorum, leader stickiness and master leases off for this seed (a node
    /// that times out may depose a live leader, as before they existed; reads go through read
    /// index): many more elections.
    Restless,
    /// Disk: a node's storage is full for a while (a WAL at its budget): it votes on no new
    /// instance, refuses proposals and logs none of the values it learns from others (room
    /// 0: it applies them unlogged) until it has room again.
    DiskFull,
    /// Disk: a node's storage is short of room for a while (a WAL near its budget): it has
    /// room for 0..4 values, and chosen values it learns from others beyond that are applied
    /// without being logged.
    LowRoom,
}

/// The largest clock-rate skew the simulator gives a node, in parts per million (±10%):
/// the bound docs/PROTOCOL.md#time states.
pub const SKEW_PPM_MAX: u64 = 100_000;

impl Fault {
    /// Every fault, in the order of `--faults` names.
    pub const ALL: [Fault; 24] = [
        Fault::Loss,
        Fault::Dup,
        Fault::Reorder,
        Fault::Partition,
        Fault::OneWay,
        Fault::LinkDelay,
        Fault::Corrupt,
        Fault::Crash,
        Fault::Pause,
        Fault::Skew,
        Fault::Torn,
        Fault::BitFlip,
        Fault::Zero,
        Fault::Lost,
        Fault::Misdirect,
        Fault::RotLast,
        Fault::Stall,
        Fault::FsyncError,
        Fault::PowerLoss,
        Fault::Wipe,
        Fault::KindLoss,
        Fault::Restless,
        Fault::DiskFull,
        Fault::LowRoom,
    ];

    /// The `--faults` name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Loss => "loss",
            Fault::Dup => "dup",
            Fault::Reorder => "reorder",
            Fault::Partition => "partition",
            Fault::OneWay => "oneway",
            Fault::LinkDelay => "linkdelay",
            Fault::Corrupt => "corrupt",
            Fault::Crash => "crash",
            Fault::Pause => "pause",
            Fault::Skew => "skew",
            Fault::Torn => "torn",
            Fault::BitFlip => "bitflip",
            Fault::Zero => "zero",
            Fault::Lost => "lost",
            Fault::Misdirect => "misdirect",
            Fault::RotLast => "rotlast",
            Fault::Stall => "stall",
            Fault::FsyncError => "fsync",
            Fault::PowerLoss => "powerloss",
            Fault::Wipe => "wipe",
            Fault::KindLoss => "kindloss",
            Fault::Restless => "restless",
            Fault::DiskFull => "diskfull",
            Fault::LowRoom => "lowroom",
        }
    }

    /// Parses a comma-separated list; `all` and `none` are accepted.
    pub fn parse_list(list: &str) -> Result<BTreeSet<Fault>, String> {
        let mut set = BTreeSet::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "all" => set.extend(Fault::ALL),
                "none" => {}
                _ => {
                    let fault = Fault::ALL
                        .iter()
                        .find(|f| f.name() == name)
                        .ok_or_else(|| {
                            let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                            format!(
                                "unknown fault {name:?}; known: all, none, {}",
                                names.join(", ")
                            )
                        })?;
                    set.insert(*fault);
                }
            }
        }
        Ok(set)
    }

    /// The list as `--faults` takes it.
    pub fn list_name(set: &BTreeSet<Fault>) -> String {
        if set.is_empty() {
            return "none".to_string();
        }
        if set.len() == Fault::ALL.len() {
            return "all".to_string();
        }
        let names: Vec<&str> = set.iter().map(|f| f.name()).collect();
        names.join(",")
    }
}

/// The fault classes and rates of one seed. Rates are "one in N" chances per tick (process and
/// network events), per message (loss, duplication, reordering, corruption) or per write
/// (stalls, fsync errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The classes switched on for this seed.
    pub faults: BTreeSet<Fault>,
    /// Loss: one message in `loss_one_in` is lost.
    pub loss_one_in: u64,
    /// Dup: one message in this many is delivered twice.
    pub dup_one_in: u64,
    /// Reorder: one message in this many is delayed by up to 60 ticks more.
    pub reorder_one_in: u64,
    /// Partition / OneWay / KindLoss: one tick in this many starts a partition (up to 3 at
    /// once) or a kind-loss window.
    pub partition_one_in: u64,
    /// Corrupt: on a corrupting link, one frame in this many has a byte changed.
    pub corrupt_one_in: u64,
    /// Crash: one tick in this many crashes a node.
    pub crash_one_in: u64,
    /// Crash: percent of restarts that come back within 5 ticks (fast restarts).
    pub fast_restart_percent: u64,
    /// Pause: one tick in this many pauses a node (for 20..1500 ticks).
    pub pause_one_in: u64,
    /// Stall: one write in this many stalls (200..1000 ticks).
    pub stall_one_in: u64,
    /// FsyncError: one write in this many fails.
    pub fsync_error_one_in: u64,
    /// PowerLoss: one tick in this many (only while every replica is whole).
    pub power_loss_one_in: u64,
    /// DiskFull: one tick in this many fills a node's storage (for 50..650 ticks).
    pub disk_full_one_in: u64,
    /// LowRoom: one tick in this many leaves a node's storage short of room (50..650 ticks).
    pub low_room_one_in: u64,
}

impl Profile {
    /// Every class in `allowed` with the default rates (no swarm: what `--no-swarm` runs).
    pub fn all_of(allowed: &BTreeSet<Fault>) -> Profile {
        Profile {
            faults: allowed.clone(),
            loss_one_in: 50,
            dup_one_in: 50,
            reorder_one_in: 20,
            partition_one_in: 300,
            corrupt_one_in: 20,
            crash_one_in: 400,
            fast_restart_percent: 25,
            pause_one_in: 1500,
            stall_one_in: 150,
            fsync_error_one_in: 400,
            power_loss_one_in: 2500,
            disk_full_one_in: 800,
            low_room_one_in: 800,
        }
    }

    /// Swarm testing: each class of `allowed` is on with probability 1/2, and each rate is
    /// drawn from its range, all from `seed` (the same seed gives the same profile).
    pub fn swarm(seed: u64, allowed: &BTreeSet<Fault>) -> Profile {
        let mut rng = Prng::new(seed ^ 0x5A4A_12F0_0D5E_ED00);
        let mut faults = BTreeSet::new();
        // KindLoss, Restless, DiskFull and LowRoom came later: their coins are drawn last, so
        // that the other classes and rates of a seed stay what they were before they existed.
        for fault in Fault::ALL.into_iter().filter(|f| {
            !matches!(
                f,
                Fault::KindLoss | Fault::Restless | Fault::DiskFull | Fault::LowRoom
            )
        }) {
            if allowed.contains(&fault) && rng.chance(1, 2) {
                faults.insert(fault);
            }
        }
        let mut between = |low: u64, high: u64| low + rng.below(high - low + 1);
        let mut profile = Profile {
            faults,
            loss_one_in: between(8, 100),
            dup_one_in: between(10, 100),
            reorder_one_in: between(5, 50),
            partition_one_in: between(100, 1000),
            corrupt_one_in: between(3, 50),
            crash_one_in: between(150, 1500),
            fast_restart_percent: between(0, 60),
            pause_one_in: between(300, 3000),
            stall_one_in: between(30, 400),
            fsync_error_one_in: between(100, 2000),
            power_loss_one_in: between(1000, 5000),
            disk_full_one_in: 800,
            low_room_one_in: 800,
        };
        if allowed.contains(&Fault::KindLoss) && rng.chance(1, 2) {
            profile.faults.insert(Fault::KindLoss);
        }
        if allowed.contains(&Fault::Restless) && rng.chance(1, 2) {
            profile.faults.insert(Fault::Restless);
        }
        if allowed.contains(&Fault::DiskFull) && rng.chance(1, 2) {
            profile.faults.insert(Fault::DiskFull);
            profile.disk_full_one_in = 200 + rng.below(1801);
        }
        if allowed.contains(&Fault::LowRoom) && rng.chance(1, 2) {
            profile.faults.insert(Fault::LowRoom);
            profile.low_room_one_in = 200 + rng.below(1801);
        }
        profile
    }

    /// Whether `fault` is on for this seed.
    pub fn has(&self, fault: Fault) -> bool {
        self.faults.contains(&fault)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.faults.is_empty() {
            return write!(f, "none");
        }
        let mut parts = Vec::new();
        for fault in &self.faults {
            let rate = match fault {
                Fault::Loss => format!("1/{}", self.loss_one_in),
                Fault::Dup => format!("1/{}", self.dup_one_in),
                Fault::Reorder => format!("1/{}", self.reorder_one_in),
                Fault::Partition | Fault::OneWay | Fault::KindLoss => {
                    format!("1/{}t", self.partition_one_in)
                }
                Fault::Corrupt => format!("1/{}", self.corrupt_one_in),
                Fault::Crash => format!(
                    "1/{}t,{}%fast",
                    self.crash_one_in, self.fast_restart_percent
                ),
                Fault::Pause => format!("1/{}t", self.pause_one_in),
                Fault::Stall => format!("1/{}w", self.stall_one_in),
                Fault::FsyncError => format!("1/{}w", self.fsync_error_one_in),
                Fault::PowerLoss => format!("1/{}t", self.power_loss_one_in),
                Fault::DiskFull => format!("1/{}t", self.disk_full_one_in),
                Fault::LowRoom => format!("1/{}t", self.low_room_one_in),
                _ => String::new(),
            };
            if rate.is_empty() {
                parts.push(fault.name().to_string());
            } else {
                parts.push(format!("{}({rate})", fault.name()));
            }
        }
        write!(f, "{}", parts.join(" "))
    }
}

/// A known protocol bug to inject (only with the `sim-bugs` feature).
#[cfg(feature = "sim-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The acceptor does not persist promises.
    ForgetPromise,
    /// Promise/Accepted leave before their record is durable.
    ReplyBeforeDurable,
    /// A new leader skips phase 1.
    SkipPrepareOnNewLeader,
    /// A candidate's Prepare leaves before its own promise is durable; bare Accepted counts.
    BallotReuseAfterCrash,
    /// The pre-fix re-learn target (peers' applied point + depth, any reply counts).
    RelearnTargetTooLow,
    /// Committed answered by comparing value bytes (values carry no identity).
    CommitByBytes,
    /// A cut last write is taken as torn, never as damage.
    CutDamagedLastWrite,
    /// Promises have no byte bound (the network drops those over the frame limit).
    UnboundedPromise,
    /// A node whose state was lost votes at once with empty promises.
    RejoinWithEmptyState,
    /// The acceptor accepts below its promise (lowering it): the invariant checker's bug.
    AcceptBelowPromise,
    /// The driver takes a failed write (fsync error) as durable and continues.
    IgnoreFsyncError,
    /// Streaming catch-up from the log reads the next instance's value.
    LogReadOffByOne,
    /// A log-base record does not carry the promise (run with `purge`).
    BaseForgetsPromise,
    /// An acceptor promises a Prepare from below the applied values it still holds (run
    /// with `purge`): its report misses chosen values.
    PromiseBelowBase,
    /// A catch-up stream whose request timed out asks on from where it ended instead of from
    /// the applied point: a lost reply's values are never asked for again.
    StreamNoGoBack,
    /// A leader or candidate installs a checkpoint without stepping down (run with `purge`).
    InstallWhileLeading,
    /// The driver submits only in rounds that appended (records that accumulated while a
    /// write was in flight wait for the next append).
    SubmitOnlyOnAppend,
    /// A master counts on its lease for as long as its followers grant it (no drift allowance).
    LeaseIgnoresDrift,
    /// A read is served at the leader's own applied point, forgetting its recovered window.
    ReadBeforeApplied,
    /// A replica whose storage is full answers Accepted without writing the Accept record.
    VoteWhileFull,
    /// A repair record covers all damage below the Lsn its start recovered to.
    RepairCoversLaterDamage,
    /// Chosen values a replica learned from others are logged whatever room its storage has.
    LogIgnoresRoom,
    /// Catch-up replies name the log base although values above it were applied unlogged.
    ServeOverUnloggedHole,
    /// With several disk writes in flight, a write that landed is reported durable before an
    /// earlier one (the durable point jumps over a hole).
    DurableOutOfOrder,
    /// A follower (non-voting) votes, and leaders count its votes (needs `--followers`).
    FollowerVotes,
    /// A membership change governs from the next instance (needs `--membership`).
    ConfigAtOnce,
    /// No phase 1 continuation at a configuration boundary (needs `--membership`).
    ConfigBoundarySkipsPrepare,
}

#[cfg(feature = "sim-bugs")]
impl Bug {
    /// Every bug.
    pub const ALL: [Bug; 27] = [
        Bug::ForgetPromise,
        Bug::ReplyBeforeDurable,
        Bug::SkipPrepareOnNewLeader,
        Bug::BallotReuseAfterCrash,
        Bug::RelearnTargetTooLow,
        Bug::CommitByBytes,
        Bug::CutDamagedLastWrite,
        Bug::UnboundedPromise,
        Bug::RejoinWithEmptyState,
        Bug::AcceptBelowPromise,
        Bug::IgnoreFsyncError,
        Bug::LogReadOffByOne,
        Bug::BaseForgetsPromise,
        Bug::PromiseBelowBase,
        Bug::StreamNoGoBack,
        Bug::InstallWhileLeading,
        Bug::SubmitOnlyOnAppend,
        Bug::LeaseIgnoresDrift,
        Bug::ReadBeforeApplied,
        Bug::VoteWhileFull,
        Bug::RepairCoversLaterDamage,
        Bug::LogIgnoresRoom,
        Bug::ServeOverUnloggedHole,
        Bug::DurableOutOfOrder,
        Bug::FollowerVotes,
        Bug::ConfigAtOnce,
        Bug::ConfigBoundarySkipsPrepare,
    ];

    /// The `--bug` name.
    pub fn name(self) -> &'static str {
        match self {
            Bug::ForgetPromise => "forget-promise",
            Bug::ReplyBeforeDurable => "reply-before-durable",
            Bug::SkipPrepareOnNewLeader => "skip-prepare-on-new-leader",
            Bug::BallotReuseAfterCrash => "ballot-reuse-after-crash",
            Bug::RelearnTargetTooLow => "relearn-target-too-low",
            Bug::CommitByBytes => "commit-by-bytes",
            Bug::CutDamagedLastWrite => "cut-damaged-last-write",
            Bug::UnboundedPromise => "unbounded-promise",
            Bug::RejoinWithEmptyState => "rejoin-with-empty-state",
            Bug::AcceptBelowPromise => "accept-below-promise",
            Bug::IgnoreFsyncError => "ignore-fsync-error",
            Bug::LogReadOffByOne => "log-read-off-by-one",
            Bug::BaseForgetsPromise => "base-forgets-promise",
            Bug::PromiseBelowBase => "promise-below-base",
            Bug::StreamNoGoBack => "stream-no-go-back",
            Bug::InstallWhileLeading => "install-while-leading",
            Bug::SubmitOnlyOnAppend => "submit-only-on-append",
            Bug::LeaseIgnoresDrift => "lease-ignores-drift",
            Bug::ReadBeforeApplied => "read-before-applied",
            Bug::VoteWhileFull => "vote-while-full",
            Bug::RepairCoversLaterDamage => "repair-covers-later-damage",
            Bug::LogIgnoresRoom => "log-ignores-room",
            Bug::ServeOverUnloggedHole => "serve-over-unlogged-hole",
            Bug::DurableOutOfOrder => "durable-out-of-order",
            Bug::FollowerVotes => "follower-votes",
            Bug::ConfigAtOnce => "config-at-once",
            Bug::ConfigBoundarySkipsPrepare => "config-boundary-skips-prepare",
        }
    }

    /// Parses a `--bug` name.
    pub fn parse(name: &str) -> Result<Bug, String> {
        Bug::ALL
            .iter()
            .copied()
            .find(|b| b.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                format!("unknown bug {name:?}; known: {}", names.join(", "))
            })
    }

    /// The core's flags for this bug.
    pub fn flags(self) -> crate::core::Bugs {
        let mut bugs = crate::core::Bugs::default();
        match self {
            Bug::ForgetPromise => bugs.forget_promise = true,
            Bug::ReplyBeforeDurable => bugs.reply_before_durable = true,
            Bug::SkipPrepareOnNewLeader => bugs.skip_prepare_on_new_leader = true,
            Bug::BallotReuseAfterCrash => bugs.ballot_reuse_after_crash = true,
            Bug::RelearnTargetTooLow => bugs.relearn_target_too_low = true,
            Bug::CommitByBytes => bugs.commit_by_bytes = true,
            Bug::CutDamagedLastWrite => bugs.cut_damaged_last_write = true,
            Bug::UnboundedPromise => bugs.unbounded_promise = true,
            Bug::RejoinWithEmptyState => bugs.rejoin_with_empty_state = true,
            Bug::AcceptBelowPromise => bugs.accept_below_promise = true,
            Bug::IgnoreFsyncError => bugs.ignore_fsync_error = true,
            Bug::LogReadOffByOne => bugs.log_read_off_by_one = true,
            Bug::BaseForgetsPromise => bugs.base_forgets_promise = true,
            Bug::PromiseBelowBase => bugs.promise_below_base = true,
            Bug::StreamNoGoBack => bugs.stream_no_go_back = true,
            Bug::InstallWhileLeading => bugs.install_while_leading = true,
            Bug::SubmitOnlyOnAppend => bugs.submit_only_on_append = true,
            Bug::LeaseIgnoresDrift => bugs.lease_ignores_drift = true,
            Bug::ReadBeforeApplied => bugs.read_before_applied = true,
            Bug::VoteWhileFull => bugs.vote_while_full = true,
            Bug::RepairCoversLaterDamage => bugs.repair_covers_later_damage = true,
            Bug::LogIgnoresRoom => bugs.log_ignores_room = true,
            Bug::ServeOverUnloggedHole => bugs.serve_over_unlogged_hole = true,
            Bug::FollowerVotes => bugs.follower_votes = true,
            Bug::ConfigAtOnce => bugs.config_at_once = true,
            Bug::ConfigBoundarySkipsPrepare => bugs.config_boundary_skips_prepare = true,
            Bug::DurableOutOfOrder => {} // the simulated disk's own (SimDisk::ack_out_of_order)
        }
        bugs
    }
}

/// Fault injection: the process and disk faults of one step (network faults are applied
/// per frame by the network).
impl super::Sim {
    pub(super) fn inject_faults(&mut self) {
        let n = self.nodes.len();
        let members = self.members.clone();
        if let Some(change) =
            self.net
                .step_partitions(self.now, &members, &self.profile, &mut self.rng)
        {
            if change.starts_with("partition [") {
                self.count("partition");
            }
            self.trace(&change);
        }
        if let Some(change) =
            self.net
                .step_kind_loss(self.now, &members, &self.profile, &mut self.rng)
        {
            self.count("kindloss");
            self.trace(&change);
        }
        let p = self.profile.clone();
        if p.has(Fault::Crash) && self.rng.chance(1, p.crash_one_in) {
            let mut index = self.rng.below(n as u64) as usize;
            // A third of the crashes aim at a node that has just won an election (its first
            // Accepts in flight, its own promise perhaps not yet durable): the moment where a
            // restart that forgot its ballot does harm.
            let now = self.now.0;
            if let Some(fresh) =
                (0..n).find(|i| self.nodes[*i].won_at.is_some_and(|t| now <= t.0 + 15))
            {
                if self.rng.chance(1, 3) {
                    index = fresh;
                    self.count("targeted-crash");
                }
            }
            if self.nodes[index].up {
                // Damage that loses records this node acknowledged (flips, zeroed sectors,
                // lost or misdirected writes, a rotted last write, a wipe) and torn tails
                // (which re-learn like damage: the two look alike on disk) are injected only
                // while every other node is up, whole and has its repair durable. So each
                // chosen value stays intact on some member of every quorum (the fault atlas
                // of docs/TESTING.md), on any node, including in its last durable write.
                let whole = self.others_whole(index);
                let mut roll =
                    |fault: Fault, one_in: u64| whole && p.has(fault) && self.rng.chance(1, one_in);
                let torn = roll(Fault::Torn, 2);
                let flip = roll(Fault::BitFlip, 3);
                let rot_last = !flip && roll(Fault::RotLast, 3);
                let zero = roll(Fault::Zero, 3);
                let lost = roll(Fault::Lost, 3);
                let misdirect = roll(Fault::Misdirect, 3);
                let wipe =
                    !flip && !rot_last && !zero && !lost && !misdirect && roll(Fault::Wipe, 4);
                let damage = super::disk::CrashDamage {
                    torn,
                    flip,
                    rot_last,
                    zero,
                    lost,
                    misdirect,
                };
                self.crash(index, damage);
                if wipe {
                    self.wipe(index);
                }
            }
        }
        if p.has(Fault::Pause) && self.rng.chance(1, p.pause_one_in) {
            let mut index = self.rng.below(n as u64) as usize;
            // Half the pauses aim at a master (the process a SIGSTOP catches holding a lease:
            // it must not act on the lease when it resumes after another became master).
            let masters = self.masters_now();
            if !masters.is_empty() && self.rng.chance(1, 2) {
                index = masters[self.rng.below(masters.len() as u64) as usize];
                self.count("targeted-pause");
            }
            if self.nodes[index].running() {
                let until = super::Tick(self.now.0 + 20 + self.rng.below(1500));
                self.nodes[index].paused_until = Some(until);
                self.count("pause");
                self.trace(&("pause", index, until.0));
            }
        }
        if p.has(Fault::DiskFull) && self.rng.chance(1, p.disk_full_one_in) {
            let index = self.rng.below(n as u64) as usize;
            if self.nodes[index].up && self.nodes[index].full_until.is_none() {
                let until = super::Tick(self.now.0 + 50 + self.rng.below(600));
                self.nodes[index].full_until = Some(until);
                self.count("diskfull");
                self.trace(&("disk-full", index, until.0));
            }
        }
        if p.has(Fault::LowRoom) && self.rng.chance(1, p.low_room_one_in) {
            let index = self.rng.below(n as u64) as usize;
            if self.nodes[index].up && self.nodes[index].short_until.is_none() {
                let until = super::Tick(self.now.0 + 50 + self.rng.below(600));
                let room = self.rng.below(4 * u64::from(super::SIM_BATCH_BYTES) + 1);
                self.nodes[index].short_until = Some((until, room));
                self.count("lowroom");
                self.trace(&("low-room", index, until.0, room));
            }
        }
        if p.has(Fault::PowerLoss)
            && self.others_whole(usize::MAX)
            && self.rng.chance(1, p.power_loss_one_in)
        {
            // Every node at once, each tearing its write in flight.
            self.count("powerloss");
            self.trace(&"power-loss");
            for index in 0..n {
                if self.nodes[index].up {
                    self.crash(
                        index,
                        super::disk::CrashDamage {
                            torn: true,
                            ..Default::default()
                        },
                    );
                }
            }
        }
    }

    /// Every node but `index` is up, not re-learning, and has its last repair record
    /// durable (a repair record in a stalled write is not yet a repair).
    pub(super) fn others_whole(&self, index: usize) -> bool {
        self.nodes.iter().enumerate().all(|(i, node)| {
            i == index
                || node.up
                    && node.cores.iter().all(|core| {
                        core.driver
                            .as_ref()
                            .is_some_and(|d| d.table().relearning_count() == 0)
                            && core.repair_pending.is_none()
                    })
        })
    }

    /// The process stops (its memory is gone); its disks take `damage`; it restarts later,
    /// sometimes at once.
    pub(super) fn crash(&mut self, index: usize, damage: super::disk::CrashDamage) {
        self.count("crash");
        let fast = self.rng.chance(self.profile.fast_restart_percent, 100);
        let delay = if fast {
            self.count("fast-restart");
            self.rng.below(6)
        } else {
            50 + self.rng.below(400)
        };
        let restart = super::Tick(self.now.0 + delay);
        let now = self.now;
        self.drop_acks(index);
        let mut landed = 0;
        let mut holes_made = 0;
        let node = &mut self.nodes[index];
        node.up = false;
        node.paused_until = None;
        node.restart_at = Some(restart);
        node.machines.clear();
        for core in &mut node.cores {
            if let Some(driver) = core.driver.take() {
                node.frames_encoded_before += driver.stats().frames_encoded;
                node.frames_sent_before += driver.stats().frames_sent;
                node.accepts_encoded_before += driver.stats().accepts_encoded;
                node.values_read_before += driver.stats().values_read;
                node.withheld_full_before += driver.table().stats().accepts_withheld_storage_full;
                node.unlogged_before += driver.table().stats().chosen_unlogged_storage_short;
                node.commit_transmissions_before +=
                    driver.table().stats().commit_accept_transmissions;
            }
            core.staged.clear();
            let holes = core.disk.holes;
            landed += core.disk.crash(now, &mut self.rng, damage);
            holes_made += core.disk.holes - holes;
        }
        if holes_made > 0 {
            *self.report.faults.entry("write-hole").or_default() += holes_made;
        }
        for (on, name) in [
            (damage.torn, "torn"),
            (damage.flip, "bitflip"),
            (damage.rot_last, "rotlast"),
            (damage.zero, "zero"),
            (damage.lost, "lost"),
            (damage.misdirect, "misdirect"),
        ] {
            if on && landed > 0 {
                self.count(name);
            }
        }
        self.trace(&("crash", index, damage, landed, restart.0));
    }

    /// The node's data directory is gone: WALs, state machine checkpoints, identity file (the
    /// next start finds no identity and no WAL: its state was lost).
    pub(super) fn wipe(&mut self, index: usize) {
        let writes_in_flight = self.options.writes_in_flight;
        #[cfg(feature = "sim-bugs")]
        let ack_out_of_order = self.options.bug == Some(Bug::DurableOutOfOrder);
        let node = &mut self.nodes[index];
        for core in &mut node.cores {
            core.disk = super::disk::SimDisk::new(writes_in_flight);
            #[cfg(feature = "sim-bugs")]
            {
                core.disk.ack_out_of_order = ack_out_of_order;
            }
        }
        node.checkpoints.clear();
        node.relearn_pending = true;
        self.count("wipe");
        self.trace(&("wipe", index));
    }
}
