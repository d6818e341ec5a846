//! The embedding API: start a node, propose commands, read its counters, stop it.
//!
//! Owns: `Node`, `Proposal`, `Committed`, `Error`. Never: touches consensus state directly; it
//! talks to core threads only through their bounded proposal queues.

use bytes::Bytes;
use paxring_wal::{GroupId, Instance};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::config::ConfigError;

/// A command that was chosen and applied (or a read that was answered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The group it was proposed to.
    pub group: GroupId,
    /// The instance whose value holds it. For a read: the applied point it was answered at
    /// (every instance below it is reflected, none above).
    pub instance: Instance,
    /// Its index in that instance's batch of commands (0 for a read).
    pub index: u32,
    /// What the state machine returned for it (for a read: its `query` answer).
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
    /// The state machine could not answer a read (its `query` failed); nothing changed.
    #[error("the state machine could not answer the read: {0}")]
    Query(String),
    /// A stale read could not meet its bound: this node has not heard from a leader, with
    /// everything it said chosen applied, within it (docs/PROTOCOL.md#stale-reads).
    #[error("too stale: this node has not heard from its leader within {max_ms} ms with everything it said chosen applied")]
    TooStale {
        /// The bound asked for, in milliseconds.
        max_ms: u64,
    },
    /// A membership change was refused (docs/PROTOCOL.md#membership-change); nothing changed.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The node has stopped (fatal error or shutdown); nothing new is accepted.
    #[error("node stopped: {0}")]
    Stopped(String),
    /// The configuration cannot run.
    #[error(transparent)]
    Config(#[from] ConfigErrorText),
    /// The node could not start: which part failed and its cause ([`StartError`]).
    #[error("start failed: {0}")]
    Start(#[from] StartError),
    /// A proposal reached a core that does not own its group (a routing bug: the API routes
    /// by `core_of_group`); nothing was proposed.
    #[error("group {group} is not owned by core {core}")]
    WrongCore {
        /// The group.
        group: u32,
        /// The core the proposal reached.
        core: usize,
    },
}

/// Why a node could not start: the failing part, with its cause as the error's source.
/// `Clone` and `Eq` (so that [`Error`] stays both): sources are shared, and two errors are
/// equal when they say the same.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be created.
    #[error("cannot create the data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The identity file refuses this start (another cluster or node, damaged, or a WAL
    /// without an identity: docs/PROTOCOL.md#node-identity).
    #[error("node identity: {0}")]
    Identity(String),
    /// The application's factory could not make a group's state machine.
    #[error("state machine of group {group}: {reason}")]
    StateMachine {
        /// The group.
        group: u32,
        /// The factory's reason.
        reason: String,
    },
    /// The network thread could not start.
    #[error("network thread: {0}")]
    Network(#[source] Arc<paxring_net::NetError>),
    /// An OS resource (a thread, an eventfd) could not be made.
    #[error("{what}: {source}")]
    Os {
        /// What was being made.
        what: String,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A core's WAL could not be opened or recovered.
    #[error("core {core}: cannot open the WAL in {}: {source}", dir.display())]
    Wal {
        /// The core.
        core: usize,
        /// Its WAL directory.
        dir: std::path::PathBuf,
        /// The WAL's error.
        #[source]
        source: Arc<paxring_wal::WalError>,
    },
    /// A core's table could not be restored from its WAL (bad records or config).
    #[error("core {core}: {reason}")]
    Restore {
        /// The core.
        core: usize,
        /// Why.
        reason: String,
    },
    /// A core thread ended before it reported its WAL open.
    #[error("core thread {core} died while starting")]
    CoreDied {
        /// The core.
        core: usize,
    },
}

impl PartialEq for StartError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for StartError {}

/// What stopped a running node (the first fatal error). Never retried: the node fail-stops.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FatalError {
    /// A core's driver stopped it: a failed WAL write or fsync, a chosen value that does not
    /// decode, or its executor gone.
    #[error("core {core}: {source}")]
    Core {
        /// The core.
        core: usize,
        /// The driver's error.
        #[source]
        source: Arc<crate::driver::DriverError>,
    },
    /// A node thread panicked.
    #[error("thread {0} panicked")]
    Panicked(String),
    /// The node failed while starting.
    #[error("start failed: {0}")]
    Start(#[source] StartError),
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
    use super::{Error, FatalError, StartError};
    use std::sync::Arc;

    /// Start and fatal errors keep their cause as a typed source (not flattened to text).
    #[test]
    fn start_and_fatal_errors_keep_their_sources() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let error: Error = StartError::DataDir {
            path: "/nowhere".into(),
            source: Arc::new(io),
        }
        .into();
        assert_eq!(
            error.to_string(),
            "start failed: cannot create the data directory /nowhere: denied"
        );
        let Error::Start(start) = &error else {
            panic!("{error:?}")
        };
        let source = std::error::Error::source(start).expect("a source");
        assert!(source.downcast_ref::<Arc<std::io::Error>>().is_some());
        assert_eq!(error.clone(), error);

        let fatal = FatalError::Core {
            core: 1,
            source: Arc::new(crate::driver::DriverError::Storage(
                crate::driver::StorageError::message("fsync: EIO"),
            )),
        };
        let source = std::error::Error::source(&fatal).expect("a source");
        assert!(source
            .downcast_ref::<Arc<crate::driver::DriverError>>()
            .is_some());
        assert!(fatal.to_string().contains("never retried"), "{fatal}");
    }

    #[test]
    fn not_leader_names_the_node_in_words() {
        let known = Error::NotLeader { leader: Some(3) }.to_string();
        assert_eq!(known, "not the leader of this group (leader: node 3)");
        let unknown = Error::NotLeader { leader: None }.to_string();
        assert_eq!(unknown, "not the leader of this group (leader: unknown)");
    }
}
