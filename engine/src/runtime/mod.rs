//! The thread-per-core runtime and the embedding API.
//!
//! A node runs one pinned core thread per configured core (each owns a set of groups, one WAL
//! and one io_uring ring), one executor thread per core, and the shared network thread.
//! See docs/ARCHITECTURE.md.
//!
//! Owns: threads, queues, the WAL and network handles. Never: decides anything about consensus
//! (that is `core`'s, which the runtime only drives).

pub mod api;
pub mod config;
mod core_loop;
pub(crate) mod executor;
pub mod identity;
pub(crate) mod mirror;
mod node;
mod shared;
pub mod state_machine;
mod transfer;
mod wake;

pub use crate::core::ReadMode;
pub use api::{Committed, Error, FatalError, Proposal, StartError};
pub use config::CheckpointModeConfig;
pub use config::{
    core_of_group, ConfigError, NodeConfig, NodeConfigBuilder, PeerConfig, SyncModeConfig,
};
pub use node::{Node, NodeStats, NodeTotals};
pub use shared::{CoreSnapshot, GroupMembership, MasterEvent, MasterInfo};
pub use state_machine::{CheckpointMode, StateMachine, StateMachineFactory};
