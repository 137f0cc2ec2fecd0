//! The nodes' request queues in bytes (`Config::max_queued_request_bytes`, or
//! [`Fault::RequestBytes`](super::Fault::RequestBytes)), counted by the runtime's own code: a
//! client's proposal is measured and takes its bytes from the node's budget as a `NodeHandle`
//! does (`QueueBytes::measure`, the same rule for small proposals), and the driver gives them
//! back as it takes the proposal, forwards it, or refuses it once failed. A proposal that finds
//! no room waits at its client, trying again every millisecond, as `Client::propose` waits for
//! room until its deadline; it was never handed over.
//!
//! Whenever a node takes input, its budget must hold exactly the bytes of the proposals still
//! waiting for it (those a pause or a stall holds, and the one arriving): a leak, or bytes given
//! back to the wrong node, ends the run ([`FailureKind::RequestBytesMiscounted`]).

use super::client::ClientEvent;
use super::node::{Delivery, SimNode};
use super::run::FailureKind;
use super::{Event, Simulator};
use crate::error::FaultError;
use crate::node::{Measured, Request};
use crate::runtime::QueueBytes;
use crate::state_machine::StateMachine;
use crate::types::NodeId;

/// How long a proposal that found no room waits before it tries again (the longest pause of
/// the runtime's `wait_for_room`).
pub(super) const ROOM_POLL: std::time::Duration = std::time::Duration::from_millis(1);

impl<S: StateMachine> Simulator<S> {
    /// Every node's request-queue budget in bytes from now on, as if each ran with this
    /// `Config::max_queued_request_bytes`: a running node's proposals waiting now carry over
    /// to its new budget, and a node started later gets one of its own.
    ///
    /// # Errors
    ///
    /// [`FaultError::InvalidConfig`] for 0 or more than
    /// [`MAX_QUEUE_BYTES`](crate::transport::MAX_QUEUE_BYTES), as
    /// `Config::validate` refuses them.
    pub fn set_request_bytes(&mut self, max: usize) -> Result<(), FaultError> {
        check_request_bytes(max)?;
        self.request_bytes = Some(max);
        let slots = self.config.raft.inbox_capacity;
        for node in self.nodes.values_mut() {
            let Some(live) = node.live.as_mut() else { continue };
            let held = live.requests.as_ref().map_or(0, |bytes| bytes.budget.held());
            let bytes = QueueBytes::new(max, slots);
            // NB: an empty budget takes any amount: what waits carries over whole.
            assert!(bytes.budget.try_take(held), "a new budget takes what the old one held");
            live.driver.set_request_budget(std::sync::Arc::clone(&bytes.budget));
            live.requests = Some(bytes);
        }
        self.note(format!("request queue budget {max} bytes"));
        Ok(())
    }

    /// A new incarnation's request-queue budget, if one is in force (the runtime makes one per
    /// start, with the queue).
    pub(super) fn new_request_budget(&self) -> Option<QueueBytes> {
        let max = self.request_bytes?;
        Some(QueueBytes::new(max, self.config.raft.inbox_capacity))
    }

    /// Measures `op`'s command for `node`'s queue and takes its bytes if they count, as a
    /// `NodeHandle` does before it sends. `None` if it found no room: the request tries again
    /// at the same node after [`ROOM_POLL`]. Reads go unmeasured, as everything does where no
    /// budget is in force.
    pub(super) fn take_request_bytes(
        &mut self,
        client: u64,
        op: usize,
        node: NodeId,
    ) -> Option<Option<Measured>> {
        let live = self.nodes.get(&node).and_then(|n| n.live.as_ref());
        let Some(bytes) = live.and_then(|live| live.requests.as_ref()) else {
            return Some(None);
        };
        if self.is_read(op) {
            return Some(None);
        }
        let measured = bytes.measure::<S>(self.command(op));
        if measured.is_none() {
            // NB: a planted sizer's panic (`PoisonKv`), caught as a handle catches it: its
            // mark is not the next step's to find.
            super::planted::take_struck();
        }
        match measured {
            Some(m) if m.counted && !bytes.budget.try_take(m.size) => {
                self.stats.request_queue_full += 1;
                self.note(format!("c{client} #{op} finds no room in {node}'s request queue"));
                let again = ClientEvent::Arrive { client, op, node };
                self.schedule(super::micros(ROOM_POLL), Event::Client(again));
                None
            }
            measured => Some(measured),
        }
    }

    /// Test-only bug switch: a proposal a follower forwards keeps its count (see
    /// `Driver::forward_keeps_count`), on every node, now and after each restart.
    #[cfg(test)]
    pub(crate) fn set_forward_keeps_count(&mut self, on: bool) {
        self.forward_keeps_count = on;
        for live in self.nodes.values_mut().filter_map(|node| node.live.as_mut()) {
            live.driver.forward_keeps_count = on;
        }
    }
}

impl<S: StateMachine> SimNode<S> {
    /// The node is about to take `incoming`: its budget must hold exactly the bytes of the
    /// proposals waiting for it, `incoming`'s included.
    pub(super) fn check_request_bytes(
        &self,
        id: NodeId,
        incoming: Option<&Delivery<S>>,
    ) -> Result<(), FailureKind> {
        let live = self.live.as_ref();
        let Some(bytes) = live.and_then(|live| live.requests.as_ref()) else { return Ok(()) };
        let deferred = self.deferred.iter().map(|(delivery, _)| delivery);
        let waiting = deferred.chain(incoming).map(counted).sum();
        let held = bytes.budget.held();
        if held != waiting {
            return Err(FailureKind::RequestBytesMiscounted { node: id, held, waiting });
        }
        Ok(())
    }
}

/// The bytes `delivery`'s requests hold of their queue's count.
fn counted<S: StateMachine>(delivery: &Delivery<S>) -> usize {
    match delivery {
        Delivery::Request(request) => request.counted(),
        Delivery::Requests(requests) => requests.iter().map(Request::counted).sum(),
        _ => 0,
    }
}

/// A request budget `Config::validate` would take: at least 1 byte, at most
/// [`MAX_QUEUE_BYTES`](crate::transport::MAX_QUEUE_BYTES).
pub(crate) fn check_request_bytes(max: usize) -> Result<(), FaultError> {
    super::inbox::check_queue_bytes("max_queued_request_bytes", max)
}
