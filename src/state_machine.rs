//! The [`StateMachine`] trait: what a user implements to replicate their own state.
//!
//! # Contract
//!
//! * **Order.** `apply` is called with committed commands in log order, exactly once per entry
//!   per node incarnation. No-op and configuration entries never reach it. A restarted node
//!   starts from a fresh state machine (from the cluster's factory), `restore`s its latest
//!   snapshot if it has one, and applies the log entries after it as it learns they are
//!   committed. So `apply` sees each entry again after a restart; keep side effects outside
//!   the state machine, or make them idempotent.
//! * **Determinism.** `apply` must be a pure function of the state and the command: same
//!   commands in the same order give the same state and outputs on every node. No clocks, no
//!   randomness, no iteration over a `HashMap` whose order differs between processes.
//! * **Panics.** A panic in `apply` is caught. The node stops taking part (its status names
//!   the failure, `Cluster::failure` returns it) and every proposal waiting on it is answered
//!   `Error::StateMachinePanicked` with the entry's index. Since `apply` is deterministic, the
//!   same command panics on every replica: make `apply` total (return an error *output* for a
//!   bad command instead of panicking), then restart the nodes. The same holds for a panic in
//!   `snapshot`, and in the rest of your code the applier runs (a `Drop` of your `Output` or
//!   `Command`, say: the error's message then says "outside apply", and its index is the last
//!   entry applied); a `restore` that fails or panics stops the node with
//!   `Error::RestoreFailed`. A panicking `digest` reads 0, and a panicking query answers its
//!   read `NodeDown`. The node never clones an `Output`: each moves to its proposer.
//! * **Lifetime.** A killed node's state machine is dropped by the time `Cluster::kill`
//!   returns, even while a [`NodeHandle`](crate::NodeHandle) of it is kept.
//! * **Time.** `apply` runs off the node loop that sends heartbeats: each node has two worker
//!   threads (`raft-n<id>`, `raft-n<id>-b`), and while one applies, the other takes over the
//!   loop if the apply runs longer than a tick. So a slow `apply` delays answers but causes no
//!   election, and a fast one is answered without a thread hop. Committed entries queue up (in
//!   memory) while it runs. On the leader, a caller blocked waiting for its answer may apply
//!   them on its own thread instead ([`Config::callers_help`](crate::Config::callers_help),
//!   off the loop too); `snapshot` and `restore` always run on the node's workers. Either way
//!   one thread at a time applies, in order.
//! * **Cheap clones.** In process, the log hands each command on by cloning it: once per
//!   follower it is sent to, once into the memory store, once to the applier. A command that
//!   owns heap data (strings, buffers) should share it, e.g. `Arc<str>` or `Arc<[u8]>`
//!   fields or `type Command = Arc<MyCommand>`, so each clone is a reference count rather
//!   than an allocation and a copy. [`KvCommand`](crate::KvCommand) does: its `Arc<str>`
//!   fields made key-value writes 1.7x faster than `String`s (NOTES.md).
//! * **Serialization.** The trait asks for none: with the default in-memory storage and
//!   network, commands are only cloned. [`DiskStorage`](crate::DiskStorage) (and
//!   [`ClusterBuilder::data_dir`](crate::ClusterBuilder::data_dir)) and
//!   [`TcpTransport`](crate::transport::TcpTransport) need `Command: serde::Serialize +
//!   serde::de::DeserializeOwned`, and [`Sessions`](crate::Sessions) needs the same of
//!   `Output`. Derive them (add `serde` with the `derive` feature to your `Cargo.toml`, and
//!   its `rc` feature for `Arc<str>` fields).

use crate::types::LogIndex;

/// A deterministic state machine replicated by Raft. The module docs give the contract
/// (order, determinism, panics, time, clones, serialization).
///
/// ```
/// use std::time::Duration;
/// use ferraft::{Cluster, Config, LogIndex, StateMachine};
///
/// /// A counter; each command adds to it and returns the new total.
/// #[derive(Default)]
/// struct Counter(u64);
///
/// impl StateMachine for Counter {
///     type Command = u64;
///     type Output = u64;
///     fn apply(&mut self, _index: LogIndex, add: &u64) -> u64 {
///         self.0 = self.0.wrapping_add(*add); // total: never panics
///         self.0
///     }
///     fn snapshot(&self) -> Vec<u8> {
///         self.0.to_le_bytes().to_vec()
///     }
///     fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
///         let len = bytes.len();
///         let bytes: [u8; 8] = bytes.try_into().map_err(|_| format!("{len} bytes, not 8"))?;
///         self.0 = u64::from_le_bytes(bytes);
///         Ok(())
///     }
///     fn digest(&self) -> u64 {
///         self.0
///     }
/// }
///
/// let cluster = Cluster::new(Config::default(), 3, |_| Counter::default())?;
/// let applied = cluster.client().propose_timeout(5, Duration::from_secs(5))?;
/// assert_eq!(applied.output, 5);
/// # Ok::<(), ferraft::Error>(())
/// ```
pub trait StateMachine: Send + 'static {
    /// A command proposed by clients and stored in the log. In process it is cloned, never
    /// serialized (keep clones cheap); on disk or over TCP it must also be serde-serializable
    /// (see the module docs).
    type Command: Clone + Send + std::fmt::Debug + 'static;
    /// What applying a command returns to the client that proposed it.
    type Output: Clone + Send + std::fmt::Debug + 'static;

    /// Applies the committed command at `index`. Called in strictly increasing index order; must
    /// be deterministic. See the module docs for panics and slow applies.
    fn apply(&mut self, index: LogIndex, command: &Self::Command) -> Self::Output;

    /// A point-in-time image of the whole state, as bytes (log compaction, §7). The library
    /// calls it where it applies (off the heartbeat loop), so it sees the state after exactly
    /// the entries applied so far; while it runs, applies wait, but heartbeats do not.
    ///
    /// Contract: `restore(&snapshot())` on a fresh state machine must give a state machine that
    /// behaves exactly like this one (same outputs for the same later commands, same digest).
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with a snapshot's (on restart from a snapshot, or when the
    /// leader sends one). Returns an error, saying why, for bytes it cannot read; the node then
    /// stops (`Error::RestoreFailed`) rather than apply anything on a half-restored state.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;

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

/// A [`StateMachine`] that answers queries without going through the log: what
/// [`NodeHandle::read`](crate::NodeHandle::read), [`Client::read`](crate::Client::read) and
/// [`Cluster::read`](crate::Cluster::read) need (linearizable reads, thesis §6.4). Opt-in:
/// implement it only if you read.
///
/// A query names what to read (a key, a range) as a value of its own type, so the same query
/// could later cross a process boundary; [`query`](ReadStateMachine::query) runs it on the
/// state at a point where every write that completed before the read began is applied.
///
/// Contract: `query` only reads. It runs between two applies, on the thread applying (see
/// [`StateMachine`]'s "Time"); a panic in it answers that read `NodeDown` and harms nothing
/// else.
pub trait ReadStateMachine: StateMachine {
    /// What a client asks.
    type Query: Send + 'static;
    /// What a query returns.
    type Answer: Clone + Send + std::fmt::Debug + 'static;

    /// Answers `query` from the current state.
    fn query(&self, query: &Self::Query) -> Self::Answer;
}
