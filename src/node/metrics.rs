//! [`Metrics`]: cheap, always-on counters of one node, kept by its driver and read through
//! [`NodeStatus`](crate::NodeStatus). Plain integers bumped on the node's own thread: no atomics,
//! no locks, nothing on the hot path but an add.

use super::RpcCounts;
use crate::core::ReadPath;

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
}

impl Metrics {
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
