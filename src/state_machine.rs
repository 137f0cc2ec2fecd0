//! The [`StateMachine`] trait: what a user implements to replicate their own state.
//!
//! Contract: `apply` is called with committed commands in log order, exactly once per entry per
//! node incarnation, and must be deterministic (same commands, same order => same state and
//! outputs on every node). No-op and configuration entries never reach it.

use crate::types::LogIndex;

/// A deterministic state machine replicated by Raft.
pub trait StateMachine: Send + 'static {
    /// A command proposed by clients and stored in the log. Cloned, never serialized, in-process.
    type Command: Clone + Send + std::fmt::Debug + 'static;
    /// What applying a command returns to the client that proposed it.
    type Output: Clone + Send + std::fmt::Debug + 'static;

    /// Applies the committed command at `index`. Called in strictly increasing index order.
    fn apply(&mut self, index: LogIndex, command: &Self::Command) -> Self::Output;

    /// The size of `command` in bytes, for `Config::max_command_bytes` and the replication
    /// limits by bytes. Defaults to `size_of::<Command>()`; override it when commands own heap
    /// data (strings, vectors), or large commands pass unchecked.
    fn command_size(command: &Self::Command) -> usize {
        let _ = command;
        std::mem::size_of::<Self::Command>()
    }

    /// A digest of the whole state, used to prove replicas identical. Defaults to 0 (unknown).
    fn digest(&self) -> u64 {
        0
    }
}

/// Applies one committed entry: a command goes to the state machine and yields its output;
/// no-op and configuration entries yield `None` and never reach it.
pub fn apply_entry<S: StateMachine>(
    state_machine: &mut S,
    index: LogIndex,
    entry: &crate::message::Entry<S::Command>,
) -> Option<S::Output> {
    match &entry.payload {
        crate::message::Payload::Command(command) => Some(state_machine.apply(index, command)),
        crate::message::Payload::Noop | crate::message::Payload::Config(_) => None,
    }
}
