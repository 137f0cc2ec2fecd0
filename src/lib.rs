//! # ferraft: Raft from the paper
//!
//! The public surface has two layers.
//!
//! **The embedder's layer**, at the crate root: [`Cluster`] (and [`ClusterBuilder`] to choose
//! ids, storage and transport), the shareable [`Client`], [`NodeHandle`], [`Receipt`] and
//! [`Applied`], the [`StateMachine`] you implement (and [`ReadStateMachine`] for linearizable
//! reads that skip the log), [`Config`], the errors ([`Error`], [`ConfigError`],
//! [`FaultError`]), [`NetworkFaults`] for testing on real threads, and [`sim`] for testing
//! your state machine in virtual time. [`ClusterBuilder::data_dir`] keeps each node's state
//! on disk ([`DiskStorage`]); [`Sessions`] and [`Session`] apply each command exactly once
//! through retries, from threads or from async tasks ([`Session::propose_async`]). The
//! README walks through each of these with an example.
//!
//! **The driver writer's layer**: [`core`], the protocol as a pure, deterministic state machine
//! ([`Core::step`] takes an [`Input`] and yields ordered [`Action`]s: persist, send, apply,
//! answer), the messages it exchanges ([`message`]), and the traits a node's effects go through,
//! [`Storage`] and [`Transport`] (with [`transport::TcpTransport`] to run one node per process,
//! see [`ClusterBuilder::local`]). Everything else (the node driver, the thread runtime, the
//! in-process router, the simulator's checkers) is internal.
//!
//! Inside, one node driver (`src/node/`) executes the core's actions for both the thread runtime
//! (`src/runtime/`) and the simulator (`src/sim/`), so the simulator's checkers watch the code
//! users run.
//!
//! ## Map to the paper
//!
//! | paper | rules | here |
//! |---|---|---|
//! | §5.1 terms | ALL-2, AE-1, RV-1 | `Core::receive`, `adopt_term`, `receive_stale` |
//! | §5.2 election | RV-2, FOL-2, CAN-1..4 | `core/election.rs` |
//! | §5.3 replication | AE-2..5, LEAD-1..3, SUB-5..7 | `core/replication.rs`, `core/progress.rs` |
//! | §5.4 safety | LEAD-4, SUB-1, SUB-2 | `maybe_advance_commit_index`, `Log::is_up_to_date` |
//! | Figure 2 persistence | SUB-8 | `Core::flush` orders persistence first; the driver syncs before sends (off the node thread with `Config::background_sync`: `runtime/syncer.rs`); `storage/disk.rs` (WAL) |
//! | §6 membership, thesis ch. 4 | | `core/changes.rs`, `core/membership.rs`, `core/quorum.rs` |
//! | thesis §9.6, §6.2 | PreVote, CheckQuorum | `core/election.rs` |
//! | §7 log compaction, Figure 13 | IS-1..8 | `core/snapshot.rs`, `node/apply.rs` |
//! | §8 clients | LEAD-2 | `node/` (`Receipt`, `NotLeader` hints), `runtime/client.rs` |
//! | thesis §6.4, §6.4.1 reads | ReadIndex, leases, follower reads | `core/read.rs`, `node/read.rs`, `runtime/read.rs` |
//! | thesis §6.3, §8 sessions | exactly-once | `session.rs` |
//! | thesis §3.10 transfer | TimeoutNow | `core/transfer.rs`, `runtime/transfer.rs` |
//! | Figure 3 properties | SP-1..5 | `sim` checker |
//!
//! NOTES.md has the full rule-to-function-to-test table.

#![deny(missing_docs)]

pub mod config;
pub mod core;
pub mod error;
pub mod kv;
pub mod linearizability;
pub mod message;
mod node;
mod runtime;
pub mod session;
pub mod sim;
pub mod state_machine;
pub mod storage;
pub mod transport;
pub mod types;

pub use crate::config::{ClockDrift, Config, MAX_INBOX_CAPACITY, MAX_TIMER};
pub use crate::core::{Action, Core, Input, MembershipChange, ReadPolicy, Role, Status};
pub use crate::error::{ConfigError, Error, FaultError, MAX_FAULT_DELAY};
pub use crate::kv::{KvCommand, KvOutput, KvStateMachine};
pub use crate::message::{Configuration, Entry, Message, Payload, Snapshot, SnapshotMeta};
pub use crate::node::{
    entry_overhead, Applied, Compaction, Metrics, NodeStatus, Receipt, RpcCounts,
};
pub use crate::runtime::{
    Client, Cluster, ClusterBuilder, NodeHandle, StorageFactory, TransportFactory, MAX_NODES,
};
pub use crate::session::{
    ClientId, Session, SessionCommand, SessionOutput, Sessions, DEFAULT_SESSION_RESPONSES,
};
pub use crate::state_machine::{ReadStateMachine, StateMachine};
pub use crate::storage::{
    DiskStorage, HardState, MemStorage, PersistentState, Storage, StorageError,
};
pub use crate::transport::{NetworkFaults, Transport};
pub use crate::types::{LogIndex, NodeId, Term};

/// The README's examples, compiled and run as doctests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
