//! The application's side of the embedding: a state machine that applies chosen values in order.
//!
//! Owns: the `StateMachine` trait. Never: called from a core thread (only executor threads call
//! it, so a slow application never delays consensus).

use bytes::Bytes;
use paxring_wal::{GroupId, Instance};

/// The application's replicated state for one group.
///
/// The runtime creates one per group at start (see [`StateMachineFactory`]) and moves it to the
/// executor thread of the core that owns the group. `apply` is called once per chosen instance,
/// in instance order, with no gaps above the checkpoint. On restart the runtime replays the WAL
/// into the state machine from `checkpoint_instance() + 1`, so `apply` must be deterministic and
/// a state machine must not report a checkpoint it has not made durable itself.
pub trait StateMachine: Send + 'static {
    /// Applies the commands of one chosen value, in order, pushing exactly one result per
    /// command into `results` (an empty `Bytes` when there is nothing to say).
    fn apply(
        &mut self,
        group: GroupId,
        instance: Instance,
        commands: &[Bytes],
        results: &mut Vec<Bytes>,
    );

    /// The highest instance whose effects are durably stored in the state machine's own storage
    /// (its checkpoint), or `None` when it holds nothing durable. Called at start (to skip the
    /// replay below it) and after applies, to let the WAL purge what no one needs.
    fn checkpoint_instance(&self) -> Option<Instance>;
}

/// Makes the state machine of each group at start; an error aborts the start with its text.
pub type StateMachineFactory =
    Box<dyn FnMut(GroupId) -> Result<Box<dyn StateMachine>, String> + Send>;
