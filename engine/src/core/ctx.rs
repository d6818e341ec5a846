//! What a group needs from its table while it handles one input (`Ctx`): the node, the
//! members and config, time, the seeded generator, the Lsn counter, the outputs and the
//! loopback queues. The groups see the table only through this.
//!
//! Owns: `Ctx` and its helpers (append, send, send-after-durable, broadcast, quorum). Must
//! never do I/O.
use super::outputs::{Broadcast, CoreStats, Outputs, SendAfterDurable, SendNow};
use super::wal_types::{GroupId, Lsn, Record};
use super::{Config, Message, NodeId, Prng, Tick};
use std::collections::VecDeque;

/// What a group needs from its table while it handles one input.
pub(super) struct Ctx<'a> {
    pub me: NodeId,
    /// The cluster's initial voters (docs/PROTOCOL.md#follower-nodes); a group's own
    /// configuration history starts with them (docs/PROTOCOL.md#membership-change).
    pub members: &'a [NodeId],
    /// The initial non-voting followers.
    pub followers: &'a [NodeId],
    pub config: &'a Config,
    pub now: Tick,
    pub rng: &'a mut Prng,
    pub next_lsn: &'a mut Lsn,
    pub durable_lsn: Lsn,
    pub out: &'a mut Outputs,
    pub local: &'a mut VecDeque<(GroupId, Message)>,
    pub local_after_durable: &'a mut VecDeque<(Lsn, GroupId, Message)>,
    pub marks: &'a mut Vec<Record>,
    pub stats: &'a mut CoreStats,
    pub incarnation: u64,
    /// The Lsn every damage this start found lies below (the restore's `next_lsn`).
    pub restored_lsn: Lsn,
    /// The mid-log damaged runs `(first, last)` this start found (not a cut tail: its Lsns
    /// are written again); a repair record lists them.
    pub restored_damage: &'a [(Lsn, Lsn)],
    /// The storage has no room for more values (a WAL at its budget): this replica votes on
    /// no new instance and takes no proposal until it has room (docs/PROTOCOL.md#storage-full).
    /// Votes withheld are messages lost, which Paxos tolerates. It still learns (what it logs
    /// of that is bounded by `log_room`).
    pub storage_full: bool,
    /// The storage is short of room: log bases move past what lagging peers asked for (purge
    /// holds are released; a peer pushed behind the base fetches a checkpoint instead).
    pub purge_holds_released: bool,
    /// Bytes of chosen values learned from others that may still be logged (`u64::MAX`: no
    /// bound): each payload logged takes its bytes from it (docs/PROTOCOL.md#storage-full).
    pub log_room: &'a mut u64,
    #[cfg(feature = "sim-bugs")]
    pub bugs: super::Bugs,
}

impl Ctx<'_> {
    /// Appends a record; returns its Lsn.
    pub fn append(&mut self, record: Record) -> Lsn {
        let lsn = *self.next_lsn;
        assert!(lsn.0 >= 1, "Lsns start at 1");
        *self.next_lsn = lsn.next();
        self.out.appends.push((lsn, record));
        self.stats.records_appended += 1;
        lsn
    }

    /// A chosen mark: it needs no write of its own and rides in the next batch that has
    /// other records (docs/PROTOCOL.md#durability). Losing it only costs a re-learn.
    pub fn defer_mark(&mut self, record: Record) {
        self.marks.push(record);
    }

    /// The Lsn of the last record appended (0 if none).
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.next_lsn.0 - 1)
    }

    pub fn send(&mut self, group: GroupId, to: NodeId, msg: Message) {
        if to == self.me {
            self.local.push_back((group, msg));
        } else {
            self.stats.messages_sent += 1;
            self.out.sends.push(SendNow { to, group, msg });
        }
    }

    pub fn send_after_durable(&mut self, lsn: Lsn, group: GroupId, to: NodeId, msg: Message) {
        #[cfg(feature = "sim-bugs")]
        if self.bugs.reply_before_durable {
            self.send(group, to, msg);
            return;
        }
        if to == self.me {
            if lsn <= self.durable_lsn {
                self.local.push_back((group, msg));
            } else {
                self.local_after_durable.push_back((lsn, group, msg));
            }
        } else {
            self.stats.messages_sent += 1;
            self.out.sends_after_durable.push(SendAfterDurable {
                lsn,
                to,
                group,
                msg,
            });
        }
    }

    /// Sends to every node, this one included (through the loopback) when it votes.
    pub fn broadcast(&mut self, group: GroupId, msg: &Message) {
        // Through its own acceptor, which decides by the group's membership whether it votes.
        self.local.push_back((group, msg.clone()));
        self.broadcast_peers(group, msg);
    }

    /// Nodes but this one, voters and followers: the destinations of a broadcast.
    pub fn peer_count(&self) -> usize {
        self.members.len() + self.followers.len() - 1
    }

    /// Sends to every node but this one (voters and followers): one output, encoded once by
    /// the driver.
    pub fn broadcast_peers(&mut self, group: GroupId, msg: &Message) {
        let peers = self.peer_count();
        if peers == 0 {
            return;
        }
        self.stats.messages_sent += peers as u64;
        self.out.broadcasts.push(Broadcast {
            group,
            msg: msg.clone(),
        });
    }

    /// `now + election timeout + seeded jitter`.
    pub fn election_deadline(&mut self) -> Tick {
        let jitter = self.rng.below(self.config.election_jitter_ticks + 1);
        Tick(self.now.0 + self.config.election_timeout_ticks + jitter)
    }
}
