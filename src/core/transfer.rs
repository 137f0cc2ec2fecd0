//! Leadership transfer (thesis §3.10): the leader stops taking proposals, brings the target's
//! log up to date, lets its read lease run out (§6.4.1: the target's election bypasses the
//! followers' disruptive-server check, which the lease relies on), then sends TimeoutNow. The
//! target campaigns at once with the `transfer` flag. The transfer succeeds once this node
//! learns the target leads; it fails, and the leader resumes, after about an election timeout
//! (plus the lease), or as soon as another node is seen leading.
//!
//! Owns only the transfer's bookkeeping; the election itself is `election.rs`'s.

use super::{Action, Core, Role};
use crate::error::Error;
use crate::message::Body;
use crate::types::{NodeId, Term};

/// A transfer under way.
#[derive(Clone, Debug)]
pub(super) struct Transfer {
    to: NodeId,
    /// The term this node led when the transfer started.
    term: Term,
    /// The tick after which it is abandoned.
    deadline: u64,
    /// TimeoutNow went out.
    sent: bool,
}

impl<C: Clone> Core<C> {
    /// `Input::TransferLeadership`: checks the request, then starts the transfer.
    pub(super) fn transfer_leadership(&mut self, to: NodeId) {
        if let Err(error) = self.check_transfer(to) {
            return self.out.push(Action::TransferDone(Err(error)));
        }
        let patience = self.timing.election_ticks.end + self.timing.lease_ticks;
        let deadline = self.now + patience;
        self.transfer = Some(Transfer { to, term: self.term, deadline, sent: false });
        self.maybe_send_append(to);
    }

    fn check_transfer(&self, to: NodeId) -> Result<(), Error> {
        if let Some(t) = &self.transfer {
            return Err(Error::TransferInProgress { to: t.to });
        }
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if to == self.id {
            return Err(Error::TransferToSelf(to));
        }
        let config = self.config();
        if config.learners.contains(&to) {
            return Err(Error::TransferToLearner(to));
        }
        if !config.voters.contains(&to) {
            return Err(Error::NotMember(to));
        }
        Ok(())
    }

    /// The test-only switch `Bugs::transfer_ignores_lease` (always false outside tests).
    pub(super) fn transfer_ignores_lease(&self) -> bool {
        #[cfg(test)]
        if self.bugs.transfer_ignores_lease {
            return true;
        }
        false
    }

    /// Whether proposals are refused because leadership is being handed over.
    pub(super) fn transferring(&self) -> Option<NodeId> {
        self.transfer.as_ref().filter(|_| self.role == Role::Leader).map(|t| t.to)
    }

    /// After every step: send TimeoutNow once the target is up to date and the lease ran out;
    /// finish once the outcome is known.
    pub(super) fn maybe_advance_transfer(&mut self) {
        let Some(t) = self.transfer.clone() else { return };
        let outcome = match (self.role, self.leader) {
            (_, Some(leader)) if leader == t.to => Some(Ok(t.to)),
            (Role::Leader, _) if self.term == t.term && self.now < t.deadline => {
                return self.maybe_send_timeout_now(t);
            }
            (Role::Leader, _) => Some(Err(Error::TransferFailed(t.to))),
            (_, Some(_)) => Some(Err(Error::TransferFailed(t.to))),
            (_, None) if self.now >= t.deadline => Some(Err(Error::TransferFailed(t.to))),
            (_, None) => None,
        };
        if let Some(result) = outcome {
            self.transfer = None;
            self.out.push(Action::TransferDone(result));
        }
    }

    fn maybe_send_timeout_now(&mut self, t: Transfer) {
        let caught_up =
            self.progress.get(&t.to).is_some_and(|p| p.matched == self.log.last_index());
        if t.sent || !caught_up || (self.has_lease() && !self.transfer_ignores_lease()) {
            return;
        }
        self.send(t.to, Body::TimeoutNow);
        if let Some(t) = self.transfer.as_mut() {
            t.sent = true;
        }
    }
}
