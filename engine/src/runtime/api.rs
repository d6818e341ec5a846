//! The embedding API: start a node, propose commands, read its counters, stop it.
//!
//! Owns: `Node`, `Proposal`, `Committed`, `Error`. Never: touches consensus state directly; it
//! talks to core threads only through their bounded proposal queues.

use bytes::Bytes;
use paxring_wal::{GroupId, Instance};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::config::ConfigError;

/// A command that was chosen and applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The group it was proposed to.
    pub group: GroupId,
    /// The instance whose value holds it.
    pub instance: Instance,
    /// Its index in that instance's batch of commands.
    pub index: u32,
    /// What the state machine returned for it.
    pub result: Bytes,
}

/// "node 3" or "unknown", for messages.
fn leader_name(leader: Option<u32>) -> String {
    leader.map_or_else(|| "unknown".to_string(), |n| format!("node {n}"))
}

/// Why a proposal did not commit. Each variant says whether the command may still take effect.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// This node does not lead the group: the command was not proposed (it will not take
    /// effect). Propose on the node named by `leader` (when known); proposals are answered
    /// with the leader's id, not forwarded (docs/ARCHITECTURE.md#proposals).
    #[error("not the leader of this group (leader: {})", leader_name(*.leader))]
    NotLeader {
        /// The node this one believes leads the group.
        leader: Option<u32>,
    },
    /// A queue is full: the command was not proposed (it will not take effect). Retry later.
    #[error("overloaded: the proposal queue is full")]
    Overloaded,
    /// The command is larger than one instance's value may be; it was not proposed.
    #[error("command of {bytes} bytes exceeds batch_bytes_max = {max}")]
    TooLarge {
        /// The command's size.
        bytes: usize,
        /// The configured limit.
        max: u32,
    },
    /// The group does not exist on this node; nothing was proposed.
    #[error("group {0} does not exist (groups are 0..{1})")]
    NoSuchGroup(u32, u32),
    /// The outcome cannot be known: the command may or may not be chosen later (leadership
    /// changed while it was in flight, or the node stopped).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The node has stopped (fatal error or shutdown); nothing new is accepted.
    #[error("node stopped: {0}")]
    Stopped(String),
    /// The configuration cannot run.
    #[error(transparent)]
    Config(#[from] ConfigErrorText),
    /// The node could not start (WAL, network or state machine), with the reason.
    #[error("start failed: {0}")]
    Start(String),
}

/// A [`ConfigError`] as text, so that [`Error`] stays `Clone` and `Eq`.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigErrorText(pub String);

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(ConfigErrorText(e.to_string()))
    }
}

/// The sending half of a proposal's answer, held by the runtime until the outcome is known.
pub(crate) type Reply = tokio::sync::oneshot::Sender<Result<Committed, Error>>;

/// A proposal in flight: await it (it is a `Future`) or call [`Proposal::wait`].
#[derive(Debug)]
pub struct Proposal {
    state: ProposalState,
}

#[derive(Debug)]
enum ProposalState {
    Ready(Option<Result<Committed, Error>>),
    Waiting(tokio::sync::oneshot::Receiver<Result<Committed, Error>>),
}

impl Proposal {
    pub(crate) fn ready(outcome: Result<Committed, Error>) -> Proposal {
        Proposal {
            state: ProposalState::Ready(Some(outcome)),
        }
    }

    pub(crate) fn pending() -> (Proposal, Reply) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Proposal {
                state: ProposalState::Waiting(rx),
            },
            tx,
        )
    }

    /// Blocks the calling thread until the outcome is known. Do not call it from inside an
    /// async runtime's worker thread; await the proposal there instead.
    pub fn wait(self) -> Result<Committed, Error> {
        match self.state {
            ProposalState::Ready(mut outcome) => {
                outcome.take().expect("a ready proposal is waited once")
            }
            ProposalState::Waiting(rx) => rx.blocking_recv().unwrap_or_else(|_| {
                Err(Error::Unknown(
                    "the node stopped before the outcome was known".into(),
                ))
            }),
        }
    }
}

impl Future for Proposal {
    type Output = Result<Committed, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            ProposalState::Ready(outcome) => Poll::Ready(
                outcome
                    .take()
                    .expect("a ready proposal is polled to completion once"),
            ),
            ProposalState::Waiting(rx) => Pin::new(rx).poll(cx).map(|r| {
                r.unwrap_or_else(|_| {
                    Err(Error::Unknown(
                        "the node stopped before the outcome was known".into(),
                    ))
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn not_leader_names_the_node_in_words() {
        let known = Error::NotLeader { leader: Some(3) }.to_string();
        assert_eq!(known, "not the leader of this group (leader: node 3)");
        let unknown = Error::NotLeader { leader: None }.to_string();
        assert_eq!(unknown, "not the leader of this group (leader: unknown)");
    }
}
