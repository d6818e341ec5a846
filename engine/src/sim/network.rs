//! The simulated network: it carries the real frame bytes the driver encoded (the
//! `paxring-net` codec, with its header and body checksums and the frame limit).
//!
//! Owns: the packets in flight (ordered by delivery tick), the partitions in force (several
//! at once, symmetric or one-way), each link's delay model (uniform, or per-link asymmetric
//! with a heavy tail), the corrupting links, and loss, duplication and reordering. Must never
//! read a clock or draw randomness except from the simulator's seeded [`Prng`].
use super::faults::{Fault, Profile};
use crate::core::{NodeId, Prng, Tick};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

/// One frame on its way.
pub(super) struct Packet {
    pub from: NodeId,
    pub to: NodeId,
    pub frame: Bytes,
    /// The link changed a byte of it (the receiver's checksums must refuse it).
    pub corrupted: bool,
}

/// A link's delay: `base` plus uniform jitter, and now and then a long tail.
#[derive(Clone, Copy, Debug)]
struct LinkModel {
    base: u64,
    jitter: u64,
    tail_one_in: u64,
    tail_max: u64,
}

/// What the network did with a frame handed to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SendOutcome {
    pub lost: bool,
    pub copies: u32,
    pub corrupted: bool,
}

/// The simulated network.
pub(super) struct SimNet {
    queue: BTreeMap<(Tick, u64), Packet>,
    seq: u64,
    /// Partitions in force: the links each blocks, and when it heals.
    partitions: Vec<(BTreeSet<(NodeId, NodeId)>, Tick)>,
    links: BTreeMap<(NodeId, NodeId), LinkModel>,
    corrupting: BTreeSet<(NodeId, NodeId)>,
    /// Kind-loss windows in force: the link, the message kind it drops, and when it ends.
    kind_loss: Vec<((NodeId, NodeId), u8, Tick)>,
}

/// Message kinds are 1..=this (the frame header's kind byte, docs/WIRE.md).
const KIND_MAX: u64 = 8;
/// The frame header's kind byte.
const KIND_OFFSET: usize = 4;

/// At most this many partitions are in force at once.
const PARTITIONS_MAX: usize = 3;

impl SimNet {
    /// A network over `members`; per-link models and corrupting links come from the profile.
    pub fn new(members: &[NodeId], profile: &Profile, rng: &mut Prng) -> SimNet {
        let mut links = BTreeMap::new();
        let mut corrupting = BTreeSet::new();
        for &a in members {
            for &b in members {
                if a == b {
                    continue;
                }
                let model = if profile.has(Fault::LinkDelay) {
                    LinkModel {
                        base: 1 + rng.below(6),
                        jitter: rng.below(8),
                        tail_one_in: 10 + rng.below(200),
                        tail_max: 20 + rng.below(200),
                    }
                } else {
                    LinkModel {
                        base: 1,
                        jitter: 7,
                        tail_one_in: 0,
                        tail_max: 0,
                    }
                };
                links.insert((a, b), model);
                if profile.has(Fault::Corrupt) && rng.chance(1, 3) {
                    corrupting.insert((a, b));
                }
            }
        }
        SimNet {
            queue: BTreeMap::new(),
            seq: 0,
            partitions: Vec::new(),
            links,
            corrupting,
            kind_loss: Vec::new(),
        }
    }

    /// Whether `from -> to` is blocked by a partition in force.
    pub fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.partitions
            .iter()
            .any(|(set, _)| set.contains(&(from, to)))
    }

    /// Hands one frame to the network at `now`; `faults` is false in the heal phase.
    pub fn send(
        &mut self,
        now: Tick,
        packet: Packet,
        profile: &Profile,
        faults: bool,
        rng: &mut Prng,
    ) -> SendOutcome {
        let mut outcome = SendOutcome::default();
        if self.blocked(packet.from, packet.to) {
            return outcome;
        }
        let kind = packet.frame.get(KIND_OFFSET).copied();
        if faults
            && self
                .kind_loss
                .iter()
                .any(|(link, k, _)| *link == (packet.from, packet.to) && Some(*k) == kind)
        {
            outcome.lost = true;
            return outcome;
        }
        if faults && profile.has(Fault::Loss) && rng.chance(1, profile.loss_one_in) {
            outcome.lost = true;
            return outcome;
        }
        let copies = if faults && profile.has(Fault::Dup) && rng.chance(1, profile.dup_one_in) {
            2
        } else {
            1
        };
        let link = self.links[&(packet.from, packet.to)];
        for _ in 0..copies {
            let mut delay = link.base + rng.below(link.jitter + 1);
            if faults && link.tail_one_in > 0 && rng.chance(1, link.tail_one_in) {
                delay += rng.below(link.tail_max + 1);
            }
            if faults && profile.has(Fault::Reorder) && rng.chance(1, profile.reorder_one_in) {
                delay += rng.below(60);
            }
            let mut frame = packet.frame.clone();
            let mut corrupted = false;
            if faults
                && self.corrupting.contains(&(packet.from, packet.to))
                && rng.chance(1, profile.corrupt_one_in)
                && !frame.is_empty()
            {
                let mut bytes = frame.to_vec();
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 + rng.below(255) as u8; // never zero: the byte changes
                frame = Bytes::from(bytes);
                corrupted = true;
                outcome.corrupted = true;
            }
            self.seq += 1;
            self.queue.insert(
                (Tick(now.0 + delay), self.seq),
                Packet {
                    from: packet.from,
                    to: packet.to,
                    frame,
                    corrupted,
                },
            );
        }
        outcome.copies = copies;
        outcome
    }

    /// The next packet due at or before `now`.
    pub fn next_due(&mut self, now: Tick) -> Option<Packet> {
        let entry = self.queue.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        Some(entry.remove())
    }

    /// Puts a packet back for delivery at `at` (its receiver is paused).
    pub fn requeue(&mut self, at: Tick, packet: Packet) {
        self.seq += 1;
        self.queue.insert((at, self.seq), packet);
    }

    /// Heals partitions whose time has come; may start a new one. Returns a description of
    /// what changed (for the trace).
    pub fn step_partitions(
        &mut self,
        now: Tick,
        members: &[NodeId],
        profile: &Profile,
        rng: &mut Prng,
    ) -> Option<String> {
        let before = self.partitions.len();
        self.partitions.retain(|(_, until)| *until > now);
        let mut changed = (self.partitions.len() != before).then(|| "partition-heal".to_string());
        let partition = profile.has(Fault::Partition);
        let one_way = profile.has(Fault::OneWay);
        let n = members.len();
        if (partition || one_way)
            && self.partitions.len() < PARTITIONS_MAX
            && rng.chance(1, profile.partition_one_in)
        {
            let mut set = BTreeSet::new();
            let symmetric = partition && (!one_way || rng.chance(1, 2));
            if symmetric {
                // Cut a minority (at most half) from the rest.
                let size = 1 + rng.below((n as u64) / 2) as usize;
                let mut minority = BTreeSet::new();
                while minority.len() < size.min(n) {
                    minority.insert(members[rng.below(n as u64) as usize]);
                }
                for &a in &minority {
                    for &b in members {
                        if !minority.contains(&b) {
                            set.insert((a, b));
                            set.insert((b, a));
                        }
                    }
                }
            } else if n >= 2 {
                let a = members[rng.below(n as u64) as usize];
                let b = members[rng.below(n as u64) as usize];
                if a != b {
                    set.insert((a, b));
                }
            }
            if !set.is_empty() {
                let until = Tick(now.0 + 100 + rng.below(500));
                let links: Vec<(u32, u32)> = set.iter().map(|(a, b)| (a.0, b.0)).collect();
                changed = Some(format!("partition {links:?} until {}", until.0));
                self.partitions.push((set, until));
            }
        }
        changed
    }

    /// Ends kind-loss windows whose time has come; may start one (a random link drops every
    /// frame of a random message kind for 100..600 ticks). Returns what started.
    pub fn step_kind_loss(
        &mut self,
        now: Tick,
        members: &[NodeId],
        profile: &Profile,
        rng: &mut Prng,
    ) -> Option<String> {
        self.kind_loss.retain(|(_, _, until)| *until > now);
        if !profile.has(Fault::KindLoss)
            || self.kind_loss.len() >= PARTITIONS_MAX
            || !rng.chance(1, profile.partition_one_in)
        {
            return None;
        }
        let n = members.len() as u64;
        let a = members[rng.below(n) as usize];
        let b = members[rng.below(n) as usize];
        let kind = 1 + rng.below(KIND_MAX) as u8;
        let until = Tick(now.0 + 100 + rng.below(500));
        if a == b {
            return None;
        }
        self.kind_loss.push(((a, b), kind, until));
        Some(format!(
            "kindloss {} -> {} kind {kind} until {}",
            a.0, b.0, until.0
        ))
    }

    /// The heal phase: every partition ends.
    pub fn heal(&mut self) {
        self.kind_loss.clear();
        self.partitions.clear();
    }
}
