//! The sample application: a replicated key-value store embedded in a paxring node, its client
//! protocol (server and client) and its workload history.
//!
//! Owns: everything about the KV example. Never: reaches into the runtime beyond its public
//! embedding API (`Node`, `StateMachine`).

pub mod client;
pub mod proto;
pub mod server;
pub mod state;
pub mod value;
