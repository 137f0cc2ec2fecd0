//! [`Metrics`]: cheap, always-on counters of one node, kept by its driver and read through
//! [`NodeStatus`](crate::NodeStatus). Plain integers bumped on the node's own thread: no atomics,
//! no locks, nothing on the hot path but an add.

use super::RpcCounts;
use crate::core::ReadPath;
use crate::message::{Body, Message, Payload};

/// Counters of one node since it (re)started. Received RPCs are in `NodeStatus::rpcs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// RPCs this node sent, by kind (requests each, replies together).
    pub sent: RpcCounts,
    /// Elections this node started (real ones: pre-vote rounds are not counted).
    pub elections_started: u64,
    /// Elections it won.
    pub elections_won: u64,
    /// Client commands it took to propose (as leader or not: refusals included).
    pub proposals: u64,
    /// Reads answered by a leader after a confirmation round (ReadIndex).
    pub reads_read_index: u64,
    /// Reads answered by a leader within its lease.
    pub reads_lease: u64,
    /// Reads answered by this node as a follower, with a read index from the leader.
    pub reads_follower: u64,
    /// Reads that failed here (not the leader, leader lost, or no answer from it).
    pub reads_failed: u64,
    /// How far its commit index advanced (entries learned committed).
    pub commits: u64,
    /// Entries handed to the state machine (no-ops and configurations included).
    pub applies: u64,
    /// Bytes of the messages this node handed to its transport. Over TCP
    /// ([`TcpTransport`](crate::transport::TcpTransport)): the frame bytes written to sockets (headers
    /// included; messages the transport dropped are not counted). In-process (the router,
    /// where nothing is encoded): an estimate of each message's encoded size, counted as it
    /// leaves the driver: [`Metrics::ESTIMATED_HEADER_BYTES`] per message, plus per log entry
    /// 9 bytes and its command's `StateMachine::command_size`, plus snapshot chunk bytes and
    /// 8 per read id.
    pub bytes_sent: u64,
    /// Bytes of the messages this node received, counted the same way (TCP: frame bytes read
    /// from sockets; in-process: the estimate, as the driver takes each message).
    pub bytes_received: u64,
    /// Proposals and reads this node forwarded to the leader (see
    /// [`NodeHandle::forward_to_leader`](crate::NodeHandle::forward_to_leader)).
    pub forwarded: u64,
    /// Committed entries waiting for the state machine when the status was taken (the
    /// thread runtime; 0 where entries are applied in the step).
    pub apply_backlog: u64,
    /// The most committed entries that ever waited for the state machine at once; stays near
    /// `Config::max_apply_backlog` (plus what one step commits) however slow `apply` is.
    pub apply_backlog_peak: u64,
    /// Times the node's loop stalled, taking no input, because more than
    /// `Config::max_apply_backlog` entries waited for its state machine.
    pub apply_stalls: u64,
    /// Bytes of peer messages waiting in the node's inbox when the status was taken,
    /// estimated as `bytes_sent` counts them (the thread runtime; 0 in the simulator).
    pub inbox_bytes: u64,
    /// The most bytes its inbox ever held at once: at most `Config::max_inbox_bytes`, or one
    /// message if a single one is larger.
    pub inbox_bytes_peak: u64,
    /// Peer messages dropped because its inbox was full, in messages
    /// (`Config::inbox_capacity`) or in bytes (`Config::max_inbox_bytes`): a stalled or
    /// overwhelmed node, whose peers send again.
    pub inbox_dropped: u64,
    /// Bytes of counted proposals (those larger than the small ones
    /// `Config::max_queued_request_bytes` exempts) waiting in the node's request queue when
    /// the status was taken, each its command's `StateMachine::command_size` (the thread
    /// runtime; 0 in the simulator).
    pub queued_request_bytes: u64,
    /// The most bytes of counted proposals its request queue ever held at once: at most half
    /// `Config::max_queued_request_bytes` and up to the whole (what the small ones leave), or
    /// one proposal if a single one is larger.
    pub queued_request_bytes_peak: u64,
}

impl Metrics {
    /// The in-process estimate's fixed cost per message: from, to, term and the body's tag and
    /// small fields (a TCP frame header alone is 10 bytes).
    pub const ESTIMATED_HEADER_BYTES: u64 = 32;

    pub(crate) fn count_reads(&mut self, path: ReadPath, count: usize) {
        let count = count as u64;
        match path {
            ReadPath::ReadIndex => self.reads_read_index += count,
            ReadPath::Lease => self.reads_lease += count,
            ReadPath::Follower => self.reads_follower += count,
        }
    }

    /// Reads served, by every path.
    pub fn reads(&self) -> u64 {
        self.reads_read_index + self.reads_lease + self.reads_follower
    }
}

/// The estimated encoded size of `msg` (see [`Metrics::bytes_sent`]): one pass over its entries
/// adding the sizer's figure, no encoding.
pub(crate) fn estimated_bytes<C>(msg: &Message<C>, sizer: impl Fn(&C) -> usize) -> u64 {
    let body = match &msg.body {
        Body::AppendEntries(ae) => ae
            .entries
            .iter()
            .map(|e| {
                9 + match &e.payload {
                    Payload::Noop => 0,
                    Payload::Command(c) => sizer(c) as u64,
                    Payload::Config(c) => 9 * (c.voters.len() + c.learners.len()) as u64,
                }
            })
            .sum(),
        Body::InstallSnapshot(chunk) => chunk.data.len() as u64,
        Body::ReadIndex(r) | Body::ReadIndexByRound(r) => 8 * r.ids.len() as u64,
        Body::ReadIndexReply(r) => 8 * r.ids.len() as u64,
        _ => 0,
    };
    Metrics::ESTIMATED_HEADER_BYTES + body
}
