//! The thread runtime: one named OS thread per node (`thread.rs`, a crossbeam `select!` loop
//! driving the node's [`Driver`](crate::node)), the [`Cluster`] handle that starts and stops
//! them (`cluster.rs`; its network fault switches in `faults.rs`), and the handles programs talk to nodes through (`client.rs`; the
//! proposal loop of async callers in `client_async.rs`).
//!
//! This is the only layer that touches threads, channels and clocks. Rules of the protocol do
//! not live here, and neither does executing the core's actions: the shared node driver does
//! that, for this runtime and the simulator alike.

mod client;
mod client_async;
pub(crate) use client::{failed_node, QueueBytes, Retry};
mod cluster;
mod faults;
mod queue;
mod read;
mod syncer;
mod thread;
mod transfer;

pub use client::{Client, NodeHandle};
pub use cluster::{Cluster, ClusterBuilder, StorageFactory, TransportFactory, MAX_NODES};
