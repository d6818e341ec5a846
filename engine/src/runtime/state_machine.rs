//! The application's side of the embedding: a state machine that applies chosen values in order,
//! and the two ways its checkpoints are made (docs/ARCHITECTURE.md, "Checkpoints").
//!
//! Owns: the `StateMachine` trait and the per-group `CheckpointMode`. Never: called from a core
//! thread (only executor and mirror threads call it, so a slow application never delays
//! consensus).

use bytes::Bytes;
use paxring_wal::{GroupId, Instance};

/// The application's replicated state for one group.
///
/// The runtime creates one per group at start (see [`StateMachineFactory`]) and moves it to the
/// executor thread of the core that owns the group. `apply` is called once per chosen instance,
/// in instance order, with no gaps above the checkpoint. On restart the runtime replays the WAL
/// into the state machine from `checkpoint_instance() + 1`, so `apply` must be deterministic and
/// a state machine must not report a checkpoint it has not made durable itself.
///
/// Checkpoints come in two modes, chosen per group ([`CheckpointMode`]): in
/// `Application` mode the state machine makes its own (its `checkpoint_instance` is the WAL's
/// purge floor, and `snapshot`/`open_checkpoint` serve it to others); in `Mirror` mode the
/// runtime makes a second instance with the factory, feeds it behind the live one on its own
/// thread and has it `snapshot` into checkpoint files while it is paused, so the live state
/// machine is never paused. Snapshots are streamed: never a whole image in memory.
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
    /// replay below it), after applies, and every 50 ms while nothing is applied (a checkpoint
    /// taken in the background counts without waiting for the next value), to let the WAL
    /// purge what no one needs.
    fn checkpoint_instance(&self) -> Option<Instance>;

    /// Writes the whole state as of the last applied instance to `out` (streamed). Called on the
    /// mirror instance while it is paused, or by the engine to serve a peer. Default: an
    /// `Unsupported` error.
    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let _ = out;
        Err(unsupported("snapshot"))
    }

    /// Replaces the whole state with a snapshot taken at `instance` (streamed, as `snapshot`
    /// wrote it); on `Ok` the state machine holds exactly that state, durably, and
    /// `checkpoint_instance()` reports at least `instance`. On `Err` the old state must be
    /// intact (bad bytes are an error, never a panic). Default: an `Unsupported` error.
    fn restore(
        &mut self,
        instance: Instance,
        input: &mut dyn std::io::Read,
    ) -> std::io::Result<()> {
        let _ = (instance, input);
        Err(unsupported("restore"))
    }

    /// Answers a read-only `query` from the applied state (a linearizable read,
    /// docs/PROTOCOL.md#reads: the runtime calls it once every value the read must see is
    /// applied, between two `apply` calls). It must not change the state. Default: an
    /// `Unsupported` error.
    fn query(&self, group: GroupId, query: &[u8]) -> std::io::Result<Bytes> {
        let _ = (group, query);
        Err(unsupported("query"))
    }

    /// Application mode: a reader of the application's own latest durable checkpoint (bytes
    /// that `restore` accepts), with its instance; `None` when it has none. Default: `Ok(None)`.
    fn open_checkpoint(
        &self,
    ) -> std::io::Result<Option<(Instance, Box<dyn std::io::Read + Send>)>> {
        Ok(None)
    }
}

fn unsupported(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!("this state machine does not implement {what}"),
    )
}

/// How the checkpoints of one group are made (chosen per group in the node config's
/// `checkpoint_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CheckpointMode {
    /// Paxos Made Live: the state machine snapshots itself; its own `checkpoint_instance()`
    /// is the WAL's purge floor.
    #[default]
    Application,
    /// PhxPaxos: the runtime feeds a second instance of the state machine (from the factory)
    /// behind the live one and, every `every_instances` applied instances, has it write a
    /// checkpoint file while it is paused; the newest such file is the purge floor.
    Mirror {
        /// Applied instances between two checkpoints: one is written after each instance `i`
        /// with `(i + 1) % every_instances == 0`.
        every_instances: u64,
    },
}

/// Makes the state machine of each group at start; an error aborts the start with its text.
///
/// In [`CheckpointMode::Mirror`] it is called twice per group: the second instance (the mirror)
/// must be independent of the first (memory only, or its own storage), since both apply the
/// same values.
pub type StateMachineFactory =
    Box<dyn FnMut(GroupId) -> Result<Box<dyn StateMachine>, String> + Send>;
