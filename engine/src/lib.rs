//! paxring-engine: the pure Multi-Paxos core, the per-core group table, the simulator,
//! and the thread-per-core runtime and embedding API.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod core;
pub mod driver;
pub mod runtime;
pub mod sim;

pub use crate::core::{
    Ballot, Config, CoreStats, CoreTable, GroupId, Instance, Lsn, Message, NodeId, Outputs, Prng,
    ProposalId, ProposalResult, Tick,
};

/// The README's code, compiled by `cargo test` so that it stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
