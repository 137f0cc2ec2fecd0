//! The simulated nodes' inboxes in bytes. A node that is not reading (paused, or stalled on
//! its apply backlog) keeps what reaches it in its `deferred` queue: that is the runtime's
//! inbox not being read, so its messages count against the same budget
//! (`Config::max_inbox_bytes`, or [`Fault::InboxBytes`](super::Fault::InboxBytes)), by the
//! runtime's own [`ByteBudget`](crate::transport::ByteBudget) and size estimate: a message that
//! does not fit is dropped, unless nothing waits. The links' budgets live in `network.rs`.
//!
//! Requests and the driver's own completions (a flush, a sync, a snapshot taken) wait there
//! too but are not peer messages: they are not counted.

use super::node::{Delivery, SimNode};
use super::trace::InputSummary;
use super::Simulator;
use crate::error::ConfigError;
use crate::error::FaultError;
use crate::state_machine::StateMachine;
use crate::transport::MAX_QUEUE_BYTES;
use crate::types::NodeId;

/// Why a message that reached a paused or stalled node was dropped.
pub(crate) const INBOX_BYTES_FULL: &str = "inbox full (bytes)";

impl<S: StateMachine> Simulator<S> {
    /// Every node's inbox budget from now on, in bytes: each simulated link into a node holds
    /// at most this much in flight, and so does what waits for a paused or stalled node (as
    /// if every node ran with this `Config::max_inbox_bytes`). What is held already stays
    /// counted, and may exceed a smaller budget until it drains.
    ///
    /// # Errors
    ///
    /// [`FaultError::InvalidConfig`] for 0 or more than [`MAX_QUEUE_BYTES`], as
    /// `Config::validate` refuses them.
    pub fn set_inbox_bytes(&mut self, max: usize) -> Result<(), FaultError> {
        check_inbox_bytes(max)?;
        self.network.set_max_bytes(max);
        for node in self.nodes.values_mut() {
            let held = node.inbox.held();
            node.inbox = self.network.new_budget();
            // NB: an empty budget takes any amount: what waits carries over whole.
            assert!(node.inbox.try_take(held), "a new budget takes what the old one held");
        }
        self.note(format!("inbox budget {max} bytes"));
        Ok(())
    }

    /// The quiet period: a smaller budget set by [`Fault::InboxBytes`](super::Fault::InboxBytes)
    /// ends, and every inbox has the config's `max_inbox_bytes` again. NB: `Config::validate`
    /// holds that budget to at least a leader's window; a fault's may be smaller, which only a
    /// fault may do: a lone AppendEntries larger than the link can then pass only while the link
    /// carries nothing else, and liveness is judged once that ends, as for a lossy network.
    pub(super) fn end_inbox_fault(&mut self) {
        let max = self.config.raft.max_inbox_bytes;
        if self.network.max_bytes() != max {
            self.set_inbox_bytes(max).expect("the config was validated");
        }
    }

    /// Keeps an input for `id`, which is not reading now (a pause, a stall): a message only
    /// if its bytes fit the node's inbox budget, else it is dropped as the inbox drops it.
    pub(super) fn defer(&mut self, id: NodeId, delivery: Delivery<S>, summary: InputSummary) {
        let node = self.nodes.get_mut(&id).expect("callers step a known node");
        if let Delivery::Message(msg, bytes) = &delivery {
            if !node.inbox.try_take(*bytes) {
                self.stats.dropped_inbox_bytes += 1;
                self.dropped(msg, INBOX_BYTES_FULL);
                return;
            }
        }
        node.deferred.push_back((delivery, summary));
    }

    /// `id` crashed: what waited for it is lost, and its next incarnation starts with an
    /// empty inbox, as the runtime makes a new one per start.
    pub(super) fn empty_inbox(&mut self, id: NodeId) {
        let inbox = self.network.new_budget();
        let node = self.nodes.get_mut(&id).expect("callers crash a known node");
        node.deferred.clear();
        node.inbox = inbox;
    }

    /// Test-only bug switch: every byte budget (links and inboxes) made from now on never
    /// gives back what it took ([`ByteBudget::never_gives_back`](crate::transport::ByteBudget::never_gives_back)).
    /// Set it before the run starts; the budgets made so far are remade.
    #[cfg(test)]
    pub(crate) fn set_budgets_leak(&mut self, on: bool) {
        self.network.budgets_leak = on;
        let max = self.network.max_bytes();
        self.set_inbox_bytes(max).expect("the budget in force is valid");
    }
}

impl<S: StateMachine> SimNode<S> {
    /// The next input that waited, in arrival order; a message's bytes go back to the inbox.
    pub(super) fn take_deferred(&mut self) -> Option<(Delivery<S>, InputSummary)> {
        let (delivery, summary) = self.deferred.pop_front()?;
        if let Delivery::Message(_, bytes) = &delivery {
            self.inbox.give_back(*bytes);
        }
        Some((delivery, summary))
    }
}

/// An inbox budget `Config::validate` would take on its own: at least 1 byte, at most
/// [`MAX_QUEUE_BYTES`]. (Below the leader's in-flight window it would refuse it; a fault may
/// go there, to make the bound bite, until the quiet period ends it.)
pub(crate) fn check_inbox_bytes(max: usize) -> Result<(), FaultError> {
    check_queue_bytes("max_inbox_bytes", max)
}

/// A queue's byte budget (the config's `field`) as `Config::validate` bounds it: at least 1
/// byte, at most [`MAX_QUEUE_BYTES`].
pub(crate) fn check_queue_bytes(field: &'static str, max: usize) -> Result<(), FaultError> {
    if max == 0 {
        return Err(FaultError::InvalidConfig(ConfigError::ZeroLimit { field }));
    }
    if max > MAX_QUEUE_BYTES {
        let error = ConfigError::LimitTooLarge { field, value: max, max: MAX_QUEUE_BYTES };
        return Err(FaultError::InvalidConfig(error));
    }
    Ok(())
}
