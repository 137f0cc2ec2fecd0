//! A node's request queue, and how it closes. The node's loop takes requests (proposals,
//! reads, status) from a bounded channel that every handle of the node, and every `Client`
//! clone's copy of one, sends into. A request the loop never took must not outlive the node:
//! its proposer would wait out its deadline and hear `Timeout` (outcome unknown) for a
//! command that was never handed over. A channel drops what it holds only when its last
//! sender goes too, and a handle may be kept past a kill; so the node closes its queue when it
//! stops ([`QueueCloser`]), dropping every request still in it (each answers `NodeDown`), and a
//! sender that raced the close drops what it sent itself ([`RequestSender`]).
//!
//! The race is Dekker's: the node stores `closed` then drains; a sender sends then loads
//! `closed`, with a sequentially consistent fence between each pair. Either the node's drain
//! sees the request, or the sender sees `closed` and drains the queue through the receiver the
//! node left behind. A request is received once, so it is dropped once.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, SendError, SendTimeoutError, Sender, TrySendError};

use crate::node::Request;
use crate::state_machine::StateMachine;

/// What a node's queue and its senders share.
struct QueueEnd<S: StateMachine> {
    /// Set once the node takes no more requests.
    closed: AtomicBool,
    /// The queue's receiving end once closed, for a sender that raced the close.
    leftover: Mutex<Option<Receiver<Request<S>>>>,
}

impl<S: StateMachine> QueueEnd<S> {
    /// Drops every request waiting in the queue of `end` (each answers `NodeDown`).
    fn drain(&self) {
        // NB: cloned out: requests are dropped (user code: a command's `Drop`) unlocked.
        let leftover = self.leftover.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(requests) = leftover {
            while let Ok(request) = requests.try_recv() {
                drop(request);
            }
        }
    }
}

/// A bounded request queue of `capacity` requests: the senders' end, and the node's, with the
/// closer the node holds (see the module's docs).
pub(crate) fn request_queue<S: StateMachine>(
    capacity: usize,
) -> (RequestSender<S>, Receiver<Request<S>>, QueueCloser<S>) {
    let (tx, rx) = bounded(capacity);
    let end = Arc::new(QueueEnd { closed: AtomicBool::new(false), leftover: Mutex::new(None) });
    let closer = QueueCloser { end: Arc::clone(&end), requests: rx.clone() };
    (RequestSender { tx, end: Some(end) }, rx, closer)
}

/// The node's end of the close: dropped when the node stops (its channels go with it), it
/// drops every request the node never took.
pub(crate) struct QueueCloser<S: StateMachine> {
    end: Arc<QueueEnd<S>>,
    requests: Receiver<Request<S>>,
}

impl<S: StateMachine> Drop for QueueCloser<S> {
    fn drop(&mut self) {
        *self.end.leftover.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.requests.clone());
        self.end.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.end.drain();
    }
}

/// The senders' end of a node's request queue. A send to a closed queue fails as one to a
/// disconnected channel does; a send that raced the close is undone (the request dropped,
/// answering `NodeDown`, as the node's own close would have).
pub(crate) struct RequestSender<S: StateMachine> {
    tx: Sender<Request<S>>,
    /// `None` for a plain queue that nobody closes (unit tests' stand-in nodes).
    end: Option<Arc<QueueEnd<S>>>,
}

impl<S: StateMachine> Clone for RequestSender<S> {
    fn clone(&self) -> Self {
        RequestSender { tx: self.tx.clone(), end: self.end.clone() }
    }
}

impl<S: StateMachine> RequestSender<S> {
    /// A sender to a plain channel, closed by nothing but its receivers' drop.
    #[cfg(test)]
    pub fn plain(tx: Sender<Request<S>>) -> Self {
        RequestSender { tx, end: None }
    }

    fn closed(&self) -> bool {
        self.end.as_ref().is_some_and(|end| end.closed.load(Ordering::Relaxed))
    }

    /// After a send: if the node closed its queue meanwhile, maybe before seeing this
    /// request, drop what is left in it.
    fn sent(&self) {
        if let Some(end) = &self.end {
            fence(Ordering::SeqCst);
            if end.closed.load(Ordering::Relaxed) {
                end.drain();
            }
        }
    }

    pub fn try_send(&self, request: Request<S>) -> Result<(), TrySendError<Request<S>>> {
        if self.closed() {
            return Err(TrySendError::Disconnected(request));
        }
        self.tx.try_send(request)?;
        self.sent();
        Ok(())
    }

    pub fn send(&self, request: Request<S>) -> Result<(), SendError<Request<S>>> {
        if self.closed() {
            return Err(SendError(request));
        }
        self.tx.send(request)?;
        self.sent();
        Ok(())
    }

    pub fn send_deadline(
        &self,
        request: Request<S>,
        deadline: Instant,
    ) -> Result<(), SendTimeoutError<Request<S>>> {
        if self.closed() {
            return Err(SendTimeoutError::Disconnected(request));
        }
        self.tx.send_deadline(request, deadline)?;
        self.sent();
        Ok(())
    }

    /// Whether both send to the same queue.
    pub fn same_channel(&self, other: &Self) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::Error;
    use crate::kv::{KvCommand, KvStateMachine};
    use crate::node::{receipt, Receipt};
    use crate::types::NodeId;

    type Kv = KvStateMachine;

    fn proposal() -> (Request<Kv>, Receipt<crate::kv::KvOutput>) {
        let (responder, receipt) = receipt(NodeId(1));
        let command = KvCommand::Put { key: "k".into(), value: "v".into() };
        (Request::Propose { command, responder, queued: None }, receipt)
    }

    fn node_down(receipt: &Receipt<crate::kv::KvOutput>) -> bool {
        receipt.try_result() == Some(Err(Error::NodeDown(NodeId(1))))
    }

    /// A request the node never took answers `NodeDown` when the node closes its queue, though
    /// a sender lives on; sends after the close fail at once.
    #[test]
    fn a_closed_queue_drops_what_the_node_never_took_and_takes_no_more() {
        let (sender, requests, closer) = request_queue::<Kv>(8);
        let (taken, taken_receipt) = proposal();
        let (left, left_receipt) = proposal();
        sender.try_send(taken).map_err(|_| "sent").unwrap();
        sender.try_send(left).map_err(|_| "sent").unwrap();
        let taken = requests.try_recv().expect("the node takes the first");
        drop((requests, closer)); // the node stops
        assert!(node_down(&left_receipt), "the request left in the queue was not dropped");
        assert_eq!(taken_receipt.try_result(), None, "the one taken is the node's to answer");
        drop(taken);

        let (late, late_receipt) = proposal();
        assert!(matches!(sender.try_send(late), Err(TrySendError::Disconnected(_))));
        assert!(node_down(&late_receipt));
        let (late, _) = proposal();
        assert!(sender.send(late).is_err());
        let (late, _) = proposal();
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(matches!(
            sender.send_deadline(late, deadline),
            Err(SendTimeoutError::Disconnected(_))
        ));
    }

    /// A send that the close's drain missed (it landed after) is dropped by its sender.
    #[test]
    fn a_send_that_lands_after_the_close_drains_itself() {
        let (sender, requests, closer) = request_queue::<Kv>(8);
        let end = Arc::clone(sender.end.as_ref().expect("closable"));
        std::mem::forget(closer); // (its drain is simulated below, as if it ran just before)
        let (request, receipt) = proposal();
        sender.tx.try_send(request).map_err(|_| "sent").unwrap();
        *end.leftover.lock().unwrap() = Some(requests.clone());
        end.closed.store(true, Ordering::SeqCst);
        assert_eq!(receipt.try_result(), None);
        sender.sent();
        assert!(node_down(&receipt), "the late request still waits in the closed queue");
    }

    /// Senders racing the close: every proposal is answered, none left waiting in the queue.
    /// (Without the sender's own drain, a round in a few leaves one waiting.)
    #[test]
    fn senders_racing_the_close_leave_nothing_unanswered() {
        use std::sync::atomic::AtomicUsize;
        for round in 0..100 {
            let (sender, requests, closer) = request_queue::<Kv>(1 << 16);
            let (started, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
            let receipts = std::thread::scope(|scope| {
                let senders: Vec<_> = (0..3)
                    .map(|_| {
                        let (sender, started, stop) = (sender.clone(), &started, &stop);
                        scope.spawn(move || {
                            let mut receipts = Vec::new();
                            started.fetch_add(1, Ordering::SeqCst);
                            while !stop.load(Ordering::SeqCst) {
                                let (request, receipt) = proposal();
                                let _ = sender.try_send(request); // (refused: dropped)
                                receipts.push(receipt);
                            }
                            receipts
                        })
                    })
                    .collect();
                while started.load(Ordering::SeqCst) < 3 {
                    std::thread::yield_now();
                }
                drop((closer, requests)); // the node stops while they send
                std::thread::yield_now();
                stop.store(true, Ordering::SeqCst);
                senders.into_iter().flat_map(|s| s.join().expect("sender")).collect::<Vec<_>>()
            });
            let waiting = receipts.iter().filter(|r| !node_down(r)).count();
            assert_eq!(waiting, 0, "round {round}: {waiting} proposals left waiting");
        }
    }
}
