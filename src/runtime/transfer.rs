//! Leadership transfer from the thread runtime (thesis §3.10): [`NodeHandle::transfer_leadership`]
//! on the leader's handle, and [`Cluster::transfer_leadership`], which finds the leader itself
//! and checks the target first (unknown, not running, already leading).

use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use super::client::NodeHandle;
use super::cluster::Cluster;
use crate::error::Error;
use crate::node::{deadline_after, Request};
use crate::state_machine::StateMachine;
use crate::types::NodeId;

impl<S: StateMachine> NodeHandle<S> {
    /// Asks this node, which must lead, to hand leadership to voter `to`, and waits up to
    /// `timeout` for `to` to lead. Meanwhile the leader refuses proposals
    /// (`TransferInProgress`). Errors: `NotLeader`, `TransferToSelf`, `TransferToLearner`,
    /// `NotMember` (not in the configuration), `TransferInProgress` (another transfer),
    /// `TransferFailed` (the target did not win in about an election timeout; the leader
    /// resumed), `Timeout`.
    pub fn transfer_leadership(&self, to: NodeId, timeout: Duration) -> Result<NodeId, Error> {
        let (reply, rx) = bounded(1);
        let deadline = deadline_after(timeout);
        self.send_by(Request::TransferLeadership { to, reply }, Some(deadline))?;
        match rx.recv_deadline(deadline) {
            Ok(result) => result,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                Err(Error::NodeDown(self.id()))
            }
        }
    }
}

impl<S: StateMachine> Cluster<S> {
    /// Moves leadership to node `to` (for maintenance of the current leader), waiting up to
    /// [`Config::request_timeout`](crate::Config). Checks first that `to` exists
    /// (`UnknownNode`), runs (`NodeDown`) and does not lead already (`TransferToSelf`); the
    /// leader then refuses learners and non-members, and reports `TransferFailed` if `to` did
    /// not win in time.
    pub fn transfer_leadership(&self, to: NodeId) -> Result<(), Error> {
        self.node(to)?;
        let timeout = self.config().request_timeout;
        let deadline = deadline_after(timeout);
        let leader = self.wait_for_leader(timeout)?;
        if leader == to {
            return Err(Error::TransferToSelf(to));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.node(leader)?.transfer_leadership(to, left)?;
        self.client().learn_leader(to);
        Ok(())
    }
}
