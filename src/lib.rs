//! # ferraft: Raft from the paper
//!
//! A Raft consensus library in three layers:
//!
//! * [`core`]: the protocol as a pure, deterministic state machine, `Core::step(input) ->
//!   actions`. Every rule of Figure 2 of the paper lives here, once.
//! * `runtime`: one named OS thread per node, a crossbeam `select!` loop over its inbox,
//!   client requests and a ticker; and the `Cluster` handle that starts, kills, restarts, adds
//!   and removes nodes and routes their messages.
//! * `sim`: a seeded simulator driving the same core on one thread in virtual time.
//!
//! Users replicate their own state by implementing [`StateMachine`].
//!
//! ## Map to the paper
//!
//! | paper | here |
//! |---|---|
//! | §5.1 terms, ALL-2 | `core::Core::receive`, `become_follower` |
//! | §5.2 election, RV-1/2, CAN-1..4, FOL-2 | `core/election.rs` |
//! | §5.3 replication, AE-1..5, LEAD-3 | `core/replication.rs` |
//! | §5.4 safety, LEAD-4, Figure 8 | `core/replication.rs::maybe_advance_commit_index` |
//! | §6 membership | `core/changes.rs`, `core/membership.rs` |
//! | §8 clients | `runtime` |
//!
//! See NOTES.md for the full rule-to-function-to-test table.

#![deny(missing_docs)]

pub mod config;
pub mod core;
pub mod error;
pub mod kv;
pub mod linearizability;
pub mod message;
pub mod runtime;
pub mod sim;
pub mod state_machine;
pub mod storage;
pub mod types;

pub use crate::config::Config;
pub use crate::core::{Action, Core, Input, MembershipChange, Role, Status};
pub use crate::error::{ConfigError, Error, FaultError};
pub use crate::kv::{KvCommand, KvOutput, KvStateMachine};
pub use crate::message::{Configuration, Entry, Message, Payload};
pub use crate::runtime::{Applied, Cluster, NetworkFaults, NodeHandle, NodeStatus, Receipt};
pub use crate::state_machine::StateMachine;
pub use crate::storage::{HardState, MemStorage, PersistentState, Storage};
pub use crate::types::{LogIndex, NodeId, Term};
