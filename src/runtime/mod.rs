//! The thread runtime: one named OS thread per node (`raft-n<id>`), each running a crossbeam
//! `select!` loop; the [`Router`] that moves messages between them with optional faults; and
//! the [`Cluster`] handle, whose network fault switches live in `faults.rs`.
//!
//! This is the only layer that touches threads, channels and clocks. Rules of the protocol do
//! not live here: the runtime executes the core's actions in order (persist, send, apply,
//! answer) and nothing else.

mod cluster;
mod faults;
mod node;

pub use crate::transport::{NetworkFaults, Router};
pub use cluster::{Cluster, NodeHandle, Receipt, DEFAULT_TIMEOUT};
pub use node::{Applied, NodeStatus};
