//! # ferraft: Raft from the paper
//!
//! A Raft consensus library in three layers:
//!
//! * [`core`]: the protocol as a pure, deterministic state machine, [`Core::step`] taking an
//!   [`Input`] (a tick, a message, a proposal, a membership change) and producing ordered
//!   [`Action`]s (persist, send, apply, answer). Every rule of Figure 2 of the paper lives here,
//!   once, with PreVote, CheckQuorum, pipelining and single-server membership changes.
//! * [`runtime`]: one named OS thread per node running a crossbeam `select!` loop over its
//!   inbox, client requests and a ticker; the [`Cluster`] handle that starts, kills, restarts,
//!   adds and removes nodes, routes their messages and injects network faults.
//! * [`sim`]: a seeded simulator driving the same core on one thread in virtual time, with a
//!   safety checker and a linearizability checker ([`linearizability`]).
//!
//! Users replicate their own state by implementing [`StateMachine`].
//!
//! ## Map to the paper
//!
//! | paper | rules | here |
//! |---|---|---|
//! | §5.1 terms | ALL-2, AE-1, RV-1 | `Core::receive`, `adopt_term`, `receive_stale` |
//! | §5.2 election | RV-2, FOL-2, CAN-1..4 | `core/election.rs` |
//! | §5.3 replication | AE-2..5, LEAD-1..3, SUB-5..7 | `core/replication.rs`, `core/progress.rs` |
//! | §5.4 safety | LEAD-4, SUB-1, SUB-2 | `maybe_advance_commit_index`, `Log::is_up_to_date` |
//! | Figure 2 persistence | SUB-8 | `Core::flush` orders persistence first; `storage.rs` |
//! | §6 membership, thesis ch. 4 | | `core/changes.rs`, `core/membership.rs`, `core/quorum.rs` |
//! | thesis §9.6, §6.2 | PreVote, CheckQuorum | `core/election.rs` |
//! | §8 clients | LEAD-2 | `runtime` (`Receipt`, `NotLeader` hints) |
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
pub mod runtime;
pub mod sim;
pub mod state_machine;
pub mod storage;
pub mod transport;
pub mod types;

pub use crate::config::Config;
pub use crate::core::{Action, Core, Input, MembershipChange, Role, Status};
pub use crate::error::{ConfigError, Error, FaultError};
pub use crate::kv::{KvCommand, KvOutput, KvStateMachine};
pub use crate::message::{Configuration, Entry, Message, Payload, Snapshot, SnapshotMeta};
pub use crate::node::{Applied, Compaction, NodeStatus, Receipt, RpcCounts};
pub use crate::runtime::{Client, Cluster, ClusterBuilder, NodeHandle};
pub use crate::state_machine::StateMachine;
pub use crate::storage::{HardState, MemStorage, PersistentState, Storage};
pub use crate::transport::{NetworkFaults, Transport};
pub use crate::types::{LogIndex, NodeId, Term};

/// The README's examples, compiled and run as doctests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
