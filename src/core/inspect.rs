//! Read-only accessors for checkers (the simulator's safety checker): cheap views of volatile
//! state that [`Core::status`] would otherwise clone on every step.
//!
//! Must not mutate anything: observing a core may never change a run.

use super::Core;
use crate::types::{LogIndex, NodeId};

impl<C: Clone> Core<C> {
    /// Highest index known committed (ST-V1).
    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    /// Highest index handed to the state machine in an `Apply` action (ST-V2).
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// The vote granted in the current term, as held in memory (ST-P2).
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }

    /// The leader this node knows of in its current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Leader: how many reads (or batches of reads forwarded by one follower) wait for a
    /// confirmation round; each fails after an election timeout (R2).
    pub fn waiting_reads(&self) -> usize {
        self.reads_waiting()
    }

    /// Leader: how many read rounds are started and not yet confirmed (at most one, R1).
    pub fn read_rounds_outstanding(&self) -> u64 {
        self.reads_outstanding()
    }
}
