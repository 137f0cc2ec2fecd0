//! The node driver: the single piece of code that executes a core's actions, shared by the
//! thread runtime ([`crate::runtime`]) and the simulator ([`crate::sim`]), so the simulator's
//! checkers watch the code users run.
//!
//! * `driver.rs`: [`Driver`] runs a step: persist, send, apply, answer.
//! * `apply.rs`: the state machine side: applying committed entries in order, answering the
//!   proposals waiting on them, inline (the simulator) or queued to run off the node loop (the
//!   thread runtime).
//! * `receipt.rs`: [`Receipt`], a proposal in flight, blocking or `async`; what each answer
//!   means is documented there, once.
//! * `failure.rs`: what a node does when a step panics or a write fails, for both runners.

mod apply;
mod driver;
mod failure;
mod metrics;
mod read;
mod receipt;

use crossbeam_channel::Sender;

pub(crate) use apply::panic_message;
#[cfg(test)]
pub(crate) use apply::set_waiting_in_arrival_order;
pub(crate) use apply::Backlog;
#[cfg(test)]
pub(crate) use driver::SyncBugs;
pub(crate) use driver::{execute_all, ApplyOn, Driver, Execute};
pub(crate) use failure::step_caught;
pub(crate) use metrics::estimated_bytes;
pub(crate) use read::LeaseView as LocalLease;
pub(crate) use read::ReadFn;
#[cfg(test)]
pub(crate) use read::{lease_length, LeaseBugs};
pub(crate) use read::{LeaseClock, LeaseView, Monotonic};

/// What a command appended but not yet committed costs its leader in memory besides the
/// command's own bytes ([`StateMachine::command_size`]): what
/// [`Config::max_uncommitted_bytes`](crate::Config::max_uncommitted_bytes) counts per entry,
/// with the command's size. From the sizes of what the node keeps for the entry:
/// - the entry in the core's log, and the store's copy of it (`MemStorage` and `DiskStorage`
///   both keep their log in memory);
/// - the proposer's responder in the applier's waiting map, with the map's slack;
/// - the answer slot the responder shares with the caller's receipt, and the receipt.
///
/// Not counted: the logs' spare capacity (a vector may hold up to as many free slots as
/// entries), and a command's heap data copied into the store (a command behind an `Arc`
/// shares it). About 490 bytes for the [`KvStateMachine`](crate::KvStateMachine) on 64-bit
/// targets.
pub const fn entry_overhead<S: StateMachine>() -> usize {
    let entry = std::mem::size_of::<Entry<S::Command>>();
    2 * entry
        + apply::waiting_slot_bytes::<S::Output>()
        + receipt::waiting_answer_bytes::<S::Output>()
}

/// Answers a read that will never run (the node failed).
pub(crate) fn fail_read<S>(read: ReadFn<S>, error: Error) {
    read::run(read, Err(error));
}
pub use metrics::Metrics;
pub(crate) use receipt::{
    deadline_after, read_receipt, receipt, receipt_in, receipt_spinning, Assist, Responder,
    SpareSlot, MAX_HELPING_WITHOUT_YIELD,
};
pub use receipt::{Applied, Receipt};

use crate::core::{MembershipChange, ReadPolicy, Status};
use crate::error::Error;
use crate::message::{Configuration, Entry};
use crate::state_machine::StateMachine;
use crate::types::{LogIndex, NodeId, Term};

/// A client request to one node. Whoever delivers it (a node thread's channel, the simulator's
/// virtual network), the driver handles it the same way.
pub(crate) enum Request<S: StateMachine> {
    Propose {
        command: S::Command,
        responder: Responder<S::Output>,
        /// Its command's `StateMachine::command_size`, as the sender measured it (the node
        /// reuses it instead of measuring again), and whether the sender took that many bytes
        /// from the node's request-queue budget (`Config::max_queued_request_bytes`), which
        /// the node gives back when it takes the request. `None` where nobody measures (the
        /// simulator's clients, tests' plain queues).
        queued: Option<Measured>,
    },
    ChangeMembership {
        change: MembershipChange,
        reply: Sender<Result<Configuration, Error>>,
    },
    Status {
        reply: Sender<NodeStatus>,
    },
    /// The core's status alone, answered by the node's loop at once: unlike
    /// [`Request::Status`], it does not wait behind the state machine (a long `apply`), so
    /// finding the leader never does. A failed node drops the reply.
    CoreStatus {
        reply: Sender<Status>,
    },
    Compact {
        reply: Sender<Result<Compaction, Error>>,
    },
    /// A linearizable read (thesis §6.4): `read` runs on the state machine once it is safe,
    /// confirmed as `policy` allows (the core decides).
    Read {
        read: ReadFn<S>,
        policy: ReadPolicy,
    },
    /// Hand leadership to `to` (thesis §3.10); answered with the new leader.
    TransferLeadership {
        to: NodeId,
        reply: Sender<Result<NodeId, Error>>,
    },
    /// A proposal or read the caller wants forwarded to the leader when this node does not
    /// lead (and has a [`Forwarder`]); handled here otherwise. Forwarded once: the leader gets
    /// the inner request, so a request never travels two hops.
    Forward(Box<Request<S>>),
}

/// A proposal's size as its sender measured it ([`Request::Propose`]'s `queued`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Measured {
    /// Its command's `StateMachine::command_size`.
    pub size: usize,
    /// Whether `size` bytes were taken from the node's request-queue budget (small proposals
    /// go uncounted), to give back.
    pub counted: bool,
}

/// Hands a request to another node (the leader) for the driver: in-process, straight into that
/// node's request queue, so the leader answers the original caller. `Err` gives the request
/// back when that node cannot take it (not running, queue full); it must never block.
pub(crate) type Forwarder<S> = Box<dyn Fn(NodeId, Request<S>) -> Result<(), Request<S>> + Send>;

impl<S: StateMachine> Request<S> {
    /// Takes the request out of its queue's count: the bytes to give back (none if it was not
    /// counted), after which it counts nowhere (as a request forwarded to the leader), its
    /// measured size kept.
    pub(crate) fn uncount(&mut self) -> usize {
        match self {
            Request::Propose { queued: Some(m), .. } if m.counted => {
                m.counted = false;
                m.size
            }
            Request::Forward(inner) => inner.uncount(),
            _ => 0,
        }
    }

    /// The bytes the request holds of its queue's count (what [`Request::uncount`] would
    /// give back).
    pub(crate) fn counted(&self) -> usize {
        match self {
            Request::Propose { queued: Some(m), .. } if m.counted => m.size,
            Request::Forward(inner) => inner.counted(),
            _ => 0,
        }
    }

    /// Answers the request with `error` (a status request just drops its reply: `NodeDown`).
    pub(crate) fn fail(self, error: Error) {
        match self {
            Request::Propose { responder, .. } => responder.finish(Err(error)),
            Request::Read { read, .. } => fail_read(read, error),
            Request::ChangeMembership { reply, .. } => drop(reply.send(Err(error))),
            Request::Compact { reply } => drop(reply.send(Err(error))),
            Request::TransferLeadership { reply, .. } => drop(reply.send(Err(error))),
            Request::Status { .. } | Request::CoreStatus { .. } => {}
            Request::Forward(inner) => inner.fail(error),
        }
    }
}

/// What [`NodeHandle::compact`](crate::NodeHandle::compact) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compaction {
    /// A snapshot now covers the log through `index`; the entries before it left memory.
    Snapshot {
        /// The last index the snapshot covers.
        index: LogIndex,
        /// That entry's term.
        term: Term,
        /// The snapshot's size in bytes.
        bytes: usize,
        /// How many entries the log still holds after it.
        log_entries: u64,
    },
    /// Nothing to do: the latest snapshot already covers every applied entry.
    UpToDate {
        /// The latest snapshot's last index.
        snapshot_index: LogIndex,
    },
}

/// A node's status: the core's view, the state machine's digest, and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The core's view: role, term, leader, commit index, last applied, configuration.
    pub core: Status,
    /// `StateMachine::digest` of the node's state machine (0 if it panicked).
    pub digest: u64,
    /// RPCs this node received in this incarnation, by kind.
    pub rpcs: RpcCounts,
    /// Why the node stopped taking part, if it failed: `StateMachinePanicked`,
    /// `RestoreFailed`, `NodePanicked` or `Storage`. Kill and restart it once the cause is
    /// fixed.
    pub failure: Option<Error>,
    /// Counters: RPCs sent, elections, proposals, reads by path, commits, applies.
    pub metrics: Metrics,
}

/// RPCs a node received, by kind (requests each, replies together): what test suites count per
/// agreement to catch a chatty implementation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RpcCounts {
    /// AppendEntries requests, heartbeats included.
    pub append_entries: u64,
    /// RequestVote requests (real votes).
    pub request_votes: u64,
    /// Pre-vote requests (thesis §9.6).
    pub pre_votes: u64,
    /// TimeoutNow requests (leadership transfer).
    pub timeout_nows: u64,
    /// InstallSnapshot chunks.
    pub install_snapshots: u64,
    /// Replies of every kind.
    pub replies: u64,
    /// Read confirmation rounds (ReadIndex's heartbeat round, thesis §6.4).
    pub read_confirms: u64,
    /// Read index requests from followers (follower reads).
    pub read_indexes: u64,
}

impl RpcCounts {
    /// All requests, of every kind.
    pub fn requests(&self) -> u64 {
        self.append_entries
            + self.request_votes
            + self.pre_votes
            + self.timeout_nows
            + self.install_snapshots
            + self.read_confirms
            + self.read_indexes
    }
}
