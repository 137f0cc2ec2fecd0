//! [`Inbox`]: where a transport puts the messages it receives for its node, and the byte
//! budget ([`ByteBudget`]) that bounds it and the TCP transport's queues.
//!
//! A queue counted only in messages holds whatever those messages weigh: 65,536 AppendEntries
//! of a megabyte each are 64 GiB. So each queue of peer messages also counts the bytes it
//! holds, as the node's metrics estimate a message's size
//! ([`Metrics::bytes_sent`](crate::Metrics::bytes_sent): from, to and term, and per entry its
//! command's `StateMachine::command_size`), and refuses a message that would take it past its
//! budget, unless it holds nothing (so a message larger than the whole budget still passes
//! alone, and none is refused forever). A refused message is dropped, as a lossy network would
//! drop it; Raft sends again. The size travels with the message, so the receiver gives back
//! exactly what the sender took, however `command_size` behaves.
//!
//! Cost on the hot path: one compare-and-swap to take the bytes and one subtraction to give
//! them back, on a counter of the queue's own; no lock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};

use crate::message::Message;
use crate::node::estimated_bytes;

/// The most bytes a queue's budget may be set to (`Config::max_inbox_bytes`,
/// `TcpConfig::max_queue_bytes`): 1 TiB, more memory than a queue of one peer's messages can
/// reasonably be given. A larger value is a typo, or a wish for no bound at all, which is what
/// the budget exists to prevent.
pub const MAX_QUEUE_BYTES: usize = 1 << 40;

/// Where a transport puts the messages it receives for its node: the node's inbox. Bounded in
/// messages ([`Config::inbox_capacity`](crate::Config::inbox_capacity)) and in bytes
/// ([`Config::max_inbox_bytes`](crate::Config::max_inbox_bytes)); a message that does not fit
/// is refused at once (`TrySendError::Full`), never waited for: drop it, as a lossy network
/// would. Cheap to clone: every clone feeds the same inbox.
///
/// The runtime makes one per node start and hands it to the transport factory
/// ([`ClusterBuilder::transport`](crate::ClusterBuilder::transport)). A plain channel
/// converts into one (`Inbox::from(sender)`), for a transport run on its own: that inbox is
/// bounded by the channel's capacity only, since nobody gives its bytes back.
pub struct Inbox<C> {
    sink: Sink<C>,
    sizer: fn(&C) -> usize,
}

enum Sink<C> {
    /// A node's inbox: each message carries its size, given back when the node takes it.
    Counted { tx: Sender<(Message<C>, usize)>, budget: Arc<ByteBudget> },
    /// A plain channel, read by someone who gives nothing back.
    Plain(Sender<Message<C>>),
}

impl<C> Clone for Inbox<C> {
    fn clone(&self) -> Self {
        let sink = match &self.sink {
            Sink::Counted { tx, budget } => {
                Sink::Counted { tx: tx.clone(), budget: Arc::clone(budget) }
            }
            Sink::Plain(tx) => Sink::Plain(tx.clone()),
        };
        Inbox { sink, sizer: self.sizer }
    }
}

impl<C> From<Sender<Message<C>>> for Inbox<C> {
    /// An inbox that is this channel, bounded by its capacity alone. Its sizer is the
    /// default `StateMachine::command_size`: a command's in-memory size.
    fn from(tx: Sender<Message<C>>) -> Self {
        Inbox { sink: Sink::Plain(tx), sizer: |_| std::mem::size_of::<C>() }
    }
}

impl<C> Inbox<C> {
    /// Puts `msg` into the inbox, or gives it back: `Full` if the inbox holds its capacity in
    /// messages or has no room for its bytes, `Disconnected` if the node stopped. Never
    /// blocks.
    pub fn try_send(&self, msg: Message<C>) -> Result<(), TrySendError<Message<C>>> {
        let (tx, budget) = match &self.sink {
            Sink::Plain(tx) => return tx.try_send(msg),
            Sink::Counted { tx, budget } => (tx, budget),
        };
        let bytes = self.message_bytes(&msg);
        if !budget.try_take(bytes) {
            budget.note_dropped();
            return Err(TrySendError::Full(msg));
        }
        tx.try_send((msg, bytes)).map_err(|e| {
            budget.give_back(bytes);
            match e {
                TrySendError::Full((msg, _)) => {
                    budget.note_dropped();
                    TrySendError::Full(msg)
                }
                TrySendError::Disconnected((msg, _)) => TrySendError::Disconnected(msg),
            }
        })
    }

    /// The size `msg` counts for, in bytes, as the node's metrics estimate it: what this
    /// inbox's budget counts, and what a transport may count its own queues in.
    pub fn message_bytes(&self, msg: &Message<C>) -> usize {
        message_bytes(msg, self.sizer)
    }

    /// How the node measures a command (its `StateMachine::command_size`).
    pub(crate) fn sizer(&self) -> fn(&C) -> usize {
        self.sizer
    }
}

/// The size `msg` counts for against a [`ByteBudget`], its commands measured by `sizer` (the
/// node's `StateMachine::command_size`): the metrics' estimate. What every inbox counts, and
/// what the simulator counts its links and a waiting node's queue in.
pub(crate) fn message_bytes<C>(msg: &Message<C>, sizer: fn(&C) -> usize) -> usize {
    usize::try_from(estimated_bytes(msg, sizer)).unwrap_or(usize::MAX)
}

/// A node's inbox, for the runtime: the channel of the node's peer messages, bounded in
/// messages (`capacity`) and in bytes (`max_bytes`), its commands measured by `sizer`.
pub(crate) fn inbox<C>(
    capacity: usize,
    max_bytes: usize,
    sizer: fn(&C) -> usize,
) -> (Inbox<C>, InboxReceiver<C>) {
    let (tx, rx) = bounded(capacity);
    let budget = Arc::new(ByteBudget::new(max_bytes));
    let sink = Sink::Counted { tx, budget: Arc::clone(&budget) };
    (Inbox { sink, sizer }, InboxReceiver { rx, budget })
}

/// The node's end of its [`Inbox`]: taking a message gives its bytes back.
pub(crate) struct InboxReceiver<C> {
    rx: Receiver<(Message<C>, usize)>,
    budget: Arc<ByteBudget>,
}

impl<C> InboxReceiver<C> {
    pub fn try_recv(&self) -> Result<Message<C>, TryRecvError> {
        self.rx.try_recv().map(|(msg, bytes)| self.taken(msg, bytes))
    }

    /// The messages waiting now, each taken as the iterator reaches it.
    pub fn try_iter(&self) -> impl Iterator<Item = Message<C>> + '_ {
        self.rx.try_iter().map(|(msg, bytes)| self.taken(msg, bytes))
    }

    /// The channel, to wait on (`Select`, `is_empty`) without taking anything.
    pub fn channel(&self) -> &Receiver<(Message<C>, usize)> {
        &self.rx
    }

    /// A message received through [`InboxReceiver::channel`] is taken: its bytes go back.
    pub fn taken(&self, msg: Message<C>, bytes: usize) -> Message<C> {
        self.budget.give_back(bytes);
        msg
    }

    pub fn budget(&self) -> &Arc<ByteBudget> {
        &self.budget
    }
}

/// The bytes a queue holds, against its budget; shared by its producers and its consumer.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    held: AtomicUsize,
    /// The most ever held at once.
    peak: AtomicUsize,
    /// Messages refused because the queue was full, in bytes or in messages.
    dropped: AtomicU64,
    /// Set when the queue's consumer is gone ([`BudgetCloser`]): a producer waiting for room
    /// stops waiting.
    closed: AtomicBool,
    max: usize,
    /// Test-only bug switch: [`ByteBudget::give_back`] gives nothing back, so the bytes leak
    /// and the queue, once its leak reaches the budget, refuses every message for good. The
    /// simulator's checkers must catch it (`sim/inbox_tests.rs`).
    #[cfg(test)]
    pub never_gives_back: bool,
}

impl ByteBudget {
    pub fn new(max: usize) -> Self {
        ByteBudget {
            held: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            max,
            #[cfg(test)]
            never_gives_back: false,
        }
    }

    /// Takes `bytes` if they fit the budget, or if nothing is held (so that no message is
    /// refused forever, however large); whether it did.
    pub fn try_take(&self, bytes: usize) -> bool {
        let fits = |held: usize| held == 0 || held.saturating_add(bytes) <= self.max;
        let taken = self.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            fits(held).then(|| held.saturating_add(bytes))
        });
        let Ok(before) = taken else { return false };
        let now = before.saturating_add(bytes);
        // NB: a load first: the peak is written only while it grows, not per message.
        if now > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        true
    }

    /// Gives back what [`ByteBudget::try_take`] took, once the message left the queue.
    pub fn give_back(&self, bytes: usize) {
        #[cfg(test)]
        if self.never_gives_back {
            return;
        }
        let before = self.held.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(before >= bytes, "gave back {bytes} bytes of {before} held");
    }

    pub fn note_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether the queue's consumer is gone: no room will come.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Held by a queue's consumer: closes the budget when dropped (the node stopped), so that a
/// producer waiting for room ([`ByteBudget::is_closed`]) stops waiting.
pub(crate) struct BudgetCloser(pub Arc<ByteBudget>);

impl Drop for BudgetCloser {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Body;
    use crate::types::{NodeId, Term};

    fn timeout_now() -> Message<u64> {
        Message { from: NodeId(1), to: NodeId(2), term: Term(1), body: Body::TimeoutNow }
    }

    #[test]
    fn a_budget_refuses_what_does_not_fit_unless_it_holds_nothing() {
        let budget = ByteBudget::new(100);
        assert!(budget.try_take(60));
        assert!(budget.try_take(40), "exactly full");
        assert!(!budget.try_take(1));
        budget.give_back(60);
        assert!(!budget.try_take(61));
        assert!(budget.try_take(60));
        budget.give_back(100);
        assert_eq!(budget.held(), 0);
        assert!(budget.try_take(1_000), "an empty queue takes one message of any size");
        assert!(!budget.try_take(1));
        assert_eq!((budget.held(), budget.peak()), (1_000, 1_000));
    }

    #[test]
    fn an_inbox_counts_the_bytes_it_holds_and_gives_them_back_as_they_are_taken() {
        let (inbox, rx) = inbox::<u64>(8, 100, |_| 8);
        let size = inbox.message_bytes(&timeout_now());
        assert_eq!(size, 32, "a message without a body counts the estimate's fixed part");
        for _ in 0..3 {
            inbox.try_send(timeout_now()).expect("fits");
        }
        assert!(matches!(inbox.try_send(timeout_now()), Err(TrySendError::Full(_))), "128 > 100");
        assert_eq!((rx.budget().held(), rx.budget().dropped()), (96, 1));
        assert_eq!(rx.try_recv().expect("waiting"), timeout_now());
        assert_eq!(rx.budget().held(), 64);
        assert_eq!(rx.try_iter().count(), 2);
        assert_eq!((rx.budget().held(), rx.budget().peak()), (0, 96));
        drop(rx);
        let closed = inbox.try_send(timeout_now());
        assert!(matches!(closed, Err(TrySendError::Disconnected(_))), "the node stopped");
        assert_eq!(inbox.clone().message_bytes(&timeout_now()), 32);
    }
}
