//! The handles a program uses to talk to running nodes: [`NodeHandle`] (one node) and
//! [`Client`] (the cluster: finds the leader itself, cloneable and shared across threads).
//!
//! Every blocking call takes its deadline from an argument, or from
//! [`Config::request_timeout`](crate::Config::request_timeout) where it has none; nothing waits
//! longer than that.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, SendTimeoutError, TrySendError};

use super::queue::RequestSender;
use crate::core::MembershipChange;
use crate::error::Error;
use crate::message::Configuration;
use crate::node::{
    deadline_after, read_receipt, receipt_in, receipt_spinning, Applied, Assist, Backlog,
    Compaction, LocalLease, Measured, NodeStatus, ReadFn, Receipt, Request, Responder, SpareSlot,
};
use crate::state_machine::StateMachine;
use crate::transport::ByteBudget;
use crate::types::NodeId;

fn forwardable<S: StateMachine>(forward: bool, request: Request<S>) -> Request<S> {
    if forward {
        Request::Forward(Box::new(request))
    } else {
        request
    }
}

/// A proposal [`NodeHandle::try_propose`] could not hand over at once.
enum ProposeLater<S: StateMachine> {
    /// The node stopped.
    Down,
    /// Its queue is full, in requests or in proposal bytes: take room for `request`'s bytes
    /// and send it, blocking, then wait on `receipt` (boxed: the slow path keeps the fast
    /// one's result small).
    Full(Box<QueueFull<S>>),
}

/// What a send to a full queue leaves to do.
struct QueueFull<S: StateMachine> {
    requests: RequestSender<S>,
    /// The queue's byte budget and what `request` counts for in it, if counted; not taken.
    queued: Option<(Arc<ByteBudget>, usize)>,
    request: Request<S>,
    receipt: Receipt<S::Output>,
}

impl<S: StateMachine> ProposeLater<S> {
    /// Hands the proposal to node `id` after all, waiting while its queue is full: until
    /// `deadline` if any (then `QueueFull`: never handed over), else as long as it takes.
    fn send(self, id: NodeId, deadline: Option<Instant>) -> Result<Receipt<S::Output>, Error> {
        match self {
            ProposeLater::Down => Err(Error::NodeDown(id)),
            // NB: a failed send drops the responder, which answers the (discarded) receipt.
            ProposeLater::Full(full) => {
                let QueueFull { requests, queued, request, receipt } = *full;
                if let Some((budget, size)) = &queued {
                    wait_for_room(budget, *size, deadline).map_err(|full| match full {
                        true => Error::QueueFull(id),
                        false => Error::NodeDown(id),
                    })?;
                }
                let sent = match deadline {
                    None => requests.send(request).map_err(|_| Error::NodeDown(id)),
                    Some(deadline) => {
                        requests.send_deadline(request, deadline).map_err(|e| match e {
                            SendTimeoutError::Timeout(_) => Error::QueueFull(id),
                            SendTimeoutError::Disconnected(_) => Error::NodeDown(id),
                        })
                    }
                };
                if let (Err(_), Some((budget, size))) = (&sent, &queued) {
                    budget.give_back(*size);
                }
                sent.map(|()| receipt)
            }
        }
    }
}

/// Takes `size` bytes from a request queue's `budget`, waiting for room until `deadline` if
/// any, else as long as it takes: `Err(true)` if there is still none at the deadline,
/// `Err(false)` if the node stopped. The slow path: it polls, backing off from 10 µs to 1 ms.
fn wait_for_room(budget: &ByteBudget, size: usize, deadline: Option<Instant>) -> Result<(), bool> {
    let mut pause = Duration::from_micros(10);
    loop {
        if budget.try_take(size) {
            return Ok(());
        }
        if budget.is_closed() {
            return Err(false);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(true);
        }
        let left = deadline.map_or(pause, |d| d - now);
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// A node's request queue's byte budget (`Config::max_queued_request_bytes`), as its
/// handles count proposals against it. Small proposals go uncounted, as do other requests:
/// the queue's slots (`Config::inbox_capacity`) bound them to half the budget, and the
/// larger ones share the other half. So the common case, small commands, touches no shared
/// counter.
#[derive(Clone)]
pub(crate) struct QueueBytes {
    /// What counted proposals take, and the node gives back.
    pub budget: Arc<ByteBudget>,
    /// Proposals of this many bytes or fewer go uncounted.
    small: usize,
}

impl QueueBytes {
    /// The budget of a queue of `slots` requests holding at most `max` bytes of proposals.
    pub fn new(max: usize, slots: usize) -> Self {
        let small = max / (2 * slots.max(1));
        let budget = Arc::new(ByteBudget::new(max - small * slots));
        QueueBytes { budget, small }
    }

    /// `command`'s size, and whether it counts against the budget. The sizer is the user's
    /// code: should it panic, `None` (the proposal goes uncounted, and the node, sizing it
    /// again, fails as it did before: a poisoned command fails the node, not its caller).
    pub fn measure<S: StateMachine>(&self, command: &S::Command) -> Option<Measured> {
        let size = || S::command_size(command);
        let size = std::panic::catch_unwind(std::panic::AssertUnwindSafe(size)).ok()?;
        Some(Measured { size, counted: size > self.small })
    }

    /// A budget of `max` bytes that counts every proposal, however small.
    #[cfg(test)]
    fn counting_all(max: usize) -> Self {
        QueueBytes { budget: Arc::new(ByteBudget::new(max)), small: 0 }
    }
}

/// A handle to one node: proposals sent here fail with `NotLeader` (and a hint) unless it
/// leads, and reads are follower reads unless it leads (the node asks the leader it knows for
/// a read index); or, with [`NodeHandle::forward_to_leader`], both are forwarded by the node
/// to the leader it knows, which answers the caller directly.
pub struct NodeHandle<S: StateMachine> {
    id: NodeId,
    requests: RequestSender<S>,
    /// The byte budget of the node's queue for proposals (`Config::max_queued_request_bytes`);
    /// none where nobody counts (tests' plain queues).
    queued: Option<QueueBytes>,
    /// Ask the node to forward proposals and reads to the leader.
    forward: bool,
    /// How many times a caller waiting on a receipt yields before it sleeps.
    spin_rounds: u32,
    /// With lease reads on: the node's lease and state machine, to serve a read on the
    /// caller's thread while the lease holds (`runtime/read.rs`).
    pub(super) local: Option<Arc<LocalReads<S>>>,
    /// What a caller blocked on this node's receipt runs instead of yielding: the leader's
    /// waiting steps (`Config::callers_help`).
    pub(super) assist: Option<Arc<dyn Assist>>,
}

/// What a handle needs to answer a lease read itself.
pub(crate) struct LocalReads<S: StateMachine> {
    pub lease: Arc<LocalLease>,
    pub backlog: Arc<Backlog<S>>,
}

impl<S: StateMachine> Clone for NodeHandle<S> {
    fn clone(&self) -> Self {
        let (id, forward, local) = (self.id, self.forward, self.local.clone());
        let (spin_rounds, assist) = (self.spin_rounds, self.assist.clone());
        let (requests, queued) = (self.requests.clone(), self.queued.clone());
        NodeHandle { id, requests, queued, forward, spin_rounds, local, assist }
    }
}

impl<S: StateMachine> NodeHandle<S> {
    pub(crate) fn new(id: NodeId, requests: RequestSender<S>, spin_rounds: u32) -> Self {
        let (local, assist) = (None, None);
        NodeHandle { id, requests, queued: None, forward: false, spin_rounds, local, assist }
    }

    /// This handle, counting its proposals' bytes against the node's request queue's `bytes`
    /// (which the node gives back as it takes them).
    pub(crate) fn counted_in(mut self, bytes: QueueBytes) -> Self {
        self.queued = Some(bytes);
        self
    }

    /// A receipt for a request to this node, and the node's end of it.
    pub(crate) fn receipt<O>(&self) -> (Responder<O>, Receipt<O>) {
        self.receipt_assisted_by(self.assist.as_ref())
    }

    /// [`NodeHandle::receipt`], whose blocked waiter runs `assist`.
    fn receipt_assisted_by<O>(
        &self,
        assist: Option<&Arc<dyn Assist>>,
    ) -> (Responder<O>, Receipt<O>) {
        let (responder, receipt) = receipt_spinning(self.id, self.spin_rounds);
        (responder, receipt.assisted_by(assist))
    }

    /// A read for this node and its receipt, in one allocation (see `node::read_receipt`).
    pub(crate) fn read_receipt<Q, O>(
        &self,
        query: Q,
        run: impl Fn(&S, &Q) -> O + Send + Sync + 'static,
    ) -> (ReadFn<S>, Receipt<O>)
    where
        Q: Send + 'static,
        O: Send + 'static,
    {
        let (read, receipt) = read_receipt(self.id, self.spin_rounds, query, run);
        (read, receipt.assisted_by(self.assist.as_ref()))
    }

    /// Lets this handle serve lease reads on the caller's thread.
    pub(crate) fn with_local_reads(mut self, local: LocalReads<S>) -> Self {
        self.local = Some(Arc::new(local));
        self
    }

    /// This handle, choosing what a node that does not lead does with its proposals and reads:
    /// `true` forwards each one (once) to the leader the node knows, whose answer comes back to
    /// the caller's receipt as if the leader had been asked; `false` (the default) refuses a
    /// proposal with `NotLeader { leader_hint }` and serves a read as a follower read (see
    /// [`NodeHandle::read`]). A forwarded request still fails with `NotLeader`
    /// when the node knows no leader, and with [`Error::LeaderUnreachable`] when the leader it
    /// knows is not running. A node that leads serves the request itself either way.
    pub fn forward_to_leader(mut self, forward: bool) -> Self {
        self.forward = forward;
        self
    }

    /// Whether this handle asks for forwarding ([`NodeHandle::forward_to_leader`]).
    pub fn forwards(&self) -> bool {
        self.forward
    }

    /// `request`, wrapped to be forwarded if this handle forwards.
    pub(crate) fn forwardable(&self, request: Request<S>) -> Request<S> {
        forwardable(self.forward, request)
    }

    /// Sends a proposal, asking for forwarding if `forward`: a send that would block is
    /// given back (with its receipt) instead, to be waited on where no lock is held.
    fn try_propose(
        &self,
        command: S::Command,
        forward: bool,
    ) -> Result<Receipt<S::Output>, ProposeLater<S>> {
        self.try_propose_with(command, forward, self.receipt())
    }

    /// [`NodeHandle::try_propose`] answered in `spare`, if given, and with no assist of its
    /// own: its one waiter lends it (`Receipt::wait_until_assisted`).
    fn try_propose_in(
        &self,
        command: S::Command,
        forward: bool,
        spare: Option<SpareSlot<S::Output>>,
    ) -> Result<Receipt<S::Output>, ProposeLater<S>> {
        self.try_propose_with(command, forward, receipt_in(self.id, self.spin_rounds, spare))
    }

    fn try_propose_with(
        &self,
        command: S::Command,
        forward: bool,
        (responder, receipt): (Responder<S::Output>, Receipt<S::Output>),
    ) -> Result<Receipt<S::Output>, ProposeLater<S>> {
        // NB: a proposal is measured here, once: the node reuses the size
        // (`Request::Propose::queued`).
        let measured = self.queued.as_ref().and_then(|bytes| bytes.measure::<S>(&command));
        let queued = measured.filter(|m| m.counted).zip(self.queued.as_ref());
        let queued = queued.map(|(m, bytes)| (&bytes.budget, m.size));
        let request =
            forwardable(forward, Request::Propose { command, responder, queued: measured });
        let later = |request, receipt| {
            let requests = self.requests.clone();
            let queued = queued.map(|(budget, size)| (Arc::clone(budget), size));
            ProposeLater::Full(Box::new(QueueFull { requests, queued, request, receipt }))
        };
        if let Some((budget, size)) = queued {
            if !budget.try_take(size) {
                return Err(later(request, receipt));
            }
        }
        match self.requests.try_send(request) {
            Ok(()) => Ok(receipt),
            Err(e) => {
                if let Some((budget, size)) = queued {
                    budget.give_back(size);
                }
                match e {
                    // NB: the dropped request's responder answers the (discarded) receipt.
                    TrySendError::Disconnected(_) => Err(ProposeLater::Down),
                    TrySendError::Full(request) => Err(later(request, receipt)),
                }
            }
        }
    }

    /// Hands `request` to this node's queue without blocking (the forwarding path).
    pub(crate) fn try_send_request(&self, request: Request<S>) -> Result<(), Request<S>> {
        self.requests.try_send(request).map_err(|e| e.into_inner())
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Sends a proposal without waiting for it; the receipt tells its index and output later.
    /// Returns at once unless the node's request queue is full (`Config::inbox_capacity`
    /// requests, or `Config::max_queued_request_bytes` of proposals, waiting, say behind a
    /// node stalled on its apply backlog): then it waits for room, the backpressure that
    /// keeps a flood of proposals from growing memory.
    pub fn propose_async(&self, command: S::Command) -> Result<Receipt<S::Output>, Error> {
        self.try_propose(command, self.forward).or_else(|later| later.send(self.id, None))
    }

    /// Proposes and waits up to `timeout` until the command is applied (this node must lead).
    /// A queue still full at the deadline is `QueueFull` (never handed over).
    pub fn propose(
        &self,
        command: S::Command,
        timeout: Duration,
    ) -> Result<Applied<S::Output>, Error> {
        match self.try_propose(command, self.forward) {
            Ok(mut receipt) => receipt.wait(timeout),
            Err(later) => {
                let deadline = deadline_after(timeout);
                later.send(self.id, Some(deadline))?.wait_until(deadline)
            }
        }
    }

    /// Hands `request` to the node's thread, by `deadline` if any: a full queue (a node
    /// stalled on its apply backlog, say) is waited on no longer than the call's own deadline.
    /// Fails with `NodeDown` if the node is not running.
    pub(crate) fn send_by(
        &self,
        request: Request<S>,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let Some(deadline) = deadline else {
            return self.requests.send(request).map_err(|_| Error::NodeDown(self.id));
        };
        self.requests.send_deadline(request, deadline).map_err(|e| match e {
            SendTimeoutError::Timeout(_) => Error::Timeout,
            SendTimeoutError::Disconnected(_) => Error::NodeDown(self.id),
        })
    }

    /// The node's current status, waiting up to `timeout` for it.
    pub fn status(&self, timeout: Duration) -> Result<NodeStatus, Error> {
        let (reply, rx) = bounded(1);
        let deadline = deadline_after(timeout);
        self.send_by(Request::Status { reply }, Some(deadline))?;
        rx.recv_deadline(deadline).map_err(|e| self.recv_error(e))
    }

    /// Compacts this node's log now: snapshots its state machine through the last applied
    /// index and drops the entries before it from memory (the storage keeps the snapshot and
    /// the tail). Says what it did; waits up to `timeout`. Any node may compact, leader or not.
    pub fn compact(&self, timeout: Duration) -> Result<Compaction, Error> {
        let (reply, rx) = bounded(1);
        let deadline = deadline_after(timeout);
        self.send_by(Request::Compact { reply }, Some(deadline))?;
        rx.recv_deadline(deadline).map_err(|e| self.recv_error(e))?
    }

    /// Asks this node (which must lead) to make a membership change, waiting up to `timeout`
    /// for it to commit. Refusals are typed: `NotLeader`, `ChangeInProgress`, `LeaderNotReady`,
    /// `AlreadyMember`, `NotMember`, `LastVoter`, `CatchUpFailed`. [`crate::Cluster::add_node`]
    /// and [`crate::Cluster::remove_node`] wrap this with leader discovery and retries.
    pub fn change_membership(
        &self,
        change: MembershipChange,
        timeout: Duration,
    ) -> Result<Configuration, Error> {
        self.change(change, deadline_after(timeout))
    }

    pub(crate) fn change(
        &self,
        change: MembershipChange,
        deadline: Instant,
    ) -> Result<Configuration, Error> {
        let (reply, rx) = bounded(1);
        self.send_by(Request::ChangeMembership { change, reply }, Some(deadline))?;
        rx.recv_deadline(deadline).map_err(|e| self.recv_error(e))?
    }

    fn recv_error(&self, e: RecvTimeoutError) -> Error {
        match e {
            RecvTimeoutError::Timeout => Error::Timeout,
            RecvTimeoutError::Disconnected => Error::NodeDown(self.id),
        }
    }
}

/// A client of the whole cluster: sends each proposal to the node it believes leads, follows
/// `NotLeader` hints, and retries only when that is safe (see [`Receipt`] for what each answer
/// means). Cheap to clone, `Send + Sync`: share one among many threads, no lock needed. Each
/// thread is best served by a clone of its own: a clone reuses its own answer slot and its own
/// count of the leader's assist, so its proposals share no allocation or count with other
/// clones'; threads sharing one clone take turns at those, and the others go without.
pub struct Client<S: StateMachine> {
    pub(super) shared: Arc<Shared<S>>,
    /// Ask followers to forward to the leader ([`Client::forward_to_leader`]).
    pub(super) forward: bool,
    /// What this clone's proposals reuse. Each clone has its own, so that a proposal writes no
    /// count or allocator state that other clones (other threads) write too: on a machine of
    /// few cores, each such write moves a cache line between them.
    own: Mutex<Option<Own<S::Output>>>,
}

/// What a clone keeps for its proposals to node `id`. NB: not a copy of the node's handle,
/// which would spare the running nodes' read lock: an idle clone would keep a killed node's
/// request queue, and it measured no faster once the queue closes with its node (NOTES.md,
/// 2026-12-04).
struct Own<O> {
    id: NodeId,
    /// The node's assist this was forked from, to know it again (not to hold it).
    source: Option<Weak<dyn Assist>>,
    /// The node's assist ([`Assist::fork`]), lent to each receipt's wait: a count of its own.
    assist: Option<Arc<dyn Assist>>,
    /// The answer slot of this clone's last proposal, for its next.
    spare: Option<SpareSlot<O>>,
}

impl<O> Own<O> {
    /// `own`, for proposals to `node` from now on.
    fn for_node<'a, S>(own: &'a mut Option<Own<O>>, node: &NodeHandle<S>) -> &'a mut Own<O>
    where
        S: StateMachine<Output = O>,
    {
        let same = |kept: &Own<O>| match (&kept.source, &node.assist) {
            (Some(source), Some(assist)) => std::ptr::addr_eq(source.as_ptr(), Arc::as_ptr(assist)),
            (source, assist) => source.is_none() && assist.is_none(),
        };
        // NB: a node restarted under the same id has an assist of its own (with `help_peers`
        // off, a set of peers of its own too).
        if own.as_ref().is_some_and(|kept| kept.id != node.id || !same(kept)) {
            *own = None;
        }
        own.get_or_insert_with(|| {
            let source = node.assist.as_ref().map(Arc::downgrade);
            let assist = node.assist.as_ref().map(|a| a.fork().unwrap_or_else(|| Arc::clone(a)));
            Own { id: node.id, source, assist, spare: None }
        })
    }
}

impl<S: StateMachine> Clone for Client<S> {
    fn clone(&self) -> Self {
        Client { shared: Arc::clone(&self.shared), forward: self.forward, own: Mutex::new(None) }
    }
}

pub(super) struct Shared<S: StateMachine> {
    /// The running nodes, kept current by the cluster as nodes start and stop.
    nodes: RwLock<BTreeMap<NodeId, NodeHandle<S>>>,
    /// The node last seen leading ([`NO_LEADER`]: none known).
    leader: AtomicU64,
    timeout: Duration,
    /// The pause before trying another node when no leader is known.
    pub(super) retry_pause: Duration,
}

/// [`Shared::leader`] when no leader is known: the reserved id (`ConfigError::ReservedNodeId`),
/// so that every other id, 0 included, can be remembered.
const NO_LEADER: u64 = u64::MAX;

/// The node an answer says failed (it answers every request so until it is killed), if it
/// says so: the one it names, or `asked` for a failed write, which names none.
pub(crate) fn failed_node(error: &Error, asked: NodeId) -> Option<NodeId> {
    match error {
        Error::NodePanicked { node, .. }
        | Error::StateMachinePanicked { node, .. }
        | Error::RestoreFailed { node, .. } => Some(*node),
        Error::Storage(_) => Some(asked),
        _ => None,
    }
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Try the leader this node named.
    At(NodeId),
    /// Try another node.
    Elsewhere,
    /// Give up with this error (the outcome may be unknown).
    No(Error),
}

impl Retry {
    /// What [`Client::propose`] does when the proposal it sent to `asked` failed with
    /// `error`, `appended` saying whether the receipt learned its entry's place. It retries
    /// only what cannot have been applied ([`Receipt`]'s table). The simulator's clients
    /// follow the same rule, so its checkers judge it under faults.
    pub(crate) fn after(error: Error, asked: NodeId, appended: bool) -> Retry {
        match error {
            Error::NotLeader { leader_hint: Some(hint) } if hint != asked => Retry::At(hint),
            Error::NotLeader { .. } | Error::ProposalDropped { .. } => Retry::Elsewhere,
            // A forwarding node's leader is down: never handed over, so never applied.
            Error::LeaderUnreachable(_) => Retry::Elsewhere,
            // Refused before appending while leadership moves: retry (at the new leader).
            Error::TransferInProgress { to } => Retry::At(to),
            // Refused before appending, the leader's uncommitted log full: never applied.
            // Elsewhere, after the pause: a leader that cannot commit may be a stale one cut
            // off in a minority, and another node may know the real leader; when it is the
            // leader (just overloaded), the node asked redirects back to it, so every second
            // attempt pauses and a retrying caller never spins.
            Error::UncommittedLogFull { .. } => Retry::Elsewhere,
            Error::NodeDown(_) if !appended => Retry::Elsewhere,
            // The node's queue full until the deadline: never handed over (the loop then
            // answers `Unavailable`, its deadline past).
            Error::QueueFull(_) => Retry::Elsewhere,
            e => Retry::No(e),
        }
    }
}

/// What a client's proposal loop does next after an attempt failed ([`Client::next_after`]).
pub(super) enum Next {
    /// End the call with this error.
    Stop(Error),
    /// Try the leader this node named, at once.
    At(NodeId),
    /// Try this node (none: no node runs) after this pause.
    After(Option<NodeId>, Duration),
}

impl<S: StateMachine> Client<S> {
    pub(crate) fn new(timeout: Duration, retry_pause: Duration) -> Self {
        let shared = Shared {
            nodes: RwLock::new(BTreeMap::new()),
            leader: AtomicU64::new(NO_LEADER),
            timeout,
            retry_pause,
        };
        Client { shared: Arc::new(shared), forward: false, own: Mutex::new(None) }
    }

    /// This client, choosing whether a node that does not lead forwards its requests to the
    /// leader (see [`NodeHandle::forward_to_leader`]) instead of answering `NotLeader`, which
    /// the client then follows itself. Either way the client retries as documented on
    /// [`Client::propose_timeout`]; forwarding saves the caller a round trip to a stale guess.
    pub fn forward_to_leader(mut self, forward: bool) -> Self {
        self.forward = forward;
        self
    }

    /// What a node uses to forward requests in-process: straight into the leader's request
    /// queue, found among the running nodes. Holds the client weakly: no cycle through the
    /// node threads.
    pub(crate) fn forwarder(&self) -> crate::node::Forwarder<S> {
        let shared = Arc::downgrade(&self.shared);
        Box::new(move |to, request| {
            let Some(shared) = shared.upgrade() else { return Err(request) };
            let nodes = shared.nodes.read().unwrap_or_else(|p| p.into_inner());
            match nodes.get(&to) {
                Some(leader) => leader.try_send_request(request),
                None => Err(request),
            }
        })
    }

    pub(crate) fn node_started(&self, handle: NodeHandle<S>) {
        self.write().insert(handle.id, handle);
    }

    pub(crate) fn node_stopped(&self, id: NodeId) {
        self.write().remove(&id);
        self.forget_leader(id);
    }

    /// Forgets `id` as the leader, if it is the one remembered.
    fn forget_leader(&self, id: NodeId) {
        let leader = &self.shared.leader;
        let _ = leader.compare_exchange(id.0, NO_LEADER, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Leaves node `id` alone after it answered that it failed (`NodePanicked`, `Storage`,
    /// `StateMachinePanicked`, `RestoreFailed`): drops its handle, unless the
    /// node now running under that id is not the failed one. NB: the answer may come late,
    /// after the user restarted the node: a healthy restarted node must stay reachable. So
    /// the handle is dropped only if that node says it failed (a failed node answers at once;
    /// one that does not answer within 100 ms is kept), and only if it is still the handle
    /// asked.
    pub(super) fn node_failed(&self, id: NodeId) {
        let Some(handle) = self.handle(id) else { return };
        let asked = handle.status(Duration::from_millis(100));
        let failed = asked.is_ok_and(|status| status.failure.is_some());
        if !failed {
            return;
        }
        let mut nodes = self.write();
        if nodes.get(&id).is_some_and(|now| now.requests.same_channel(&handle.requests)) {
            nodes.remove(&id);
        }
        drop(nodes);
        self.forget_leader(id);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<NodeId, NodeHandle<S>>> {
        self.shared.nodes.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn handle(&self, id: NodeId) -> Option<NodeHandle<S>> {
        let nodes = self.shared.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.get(&id).map(|h| h.clone().forward_to_leader(self.forward))
    }

    /// Proposes to node `id` without cloning its handle, which would touch counters every
    /// client thread shares; gives the command back if `id` is not running. Under the read
    /// lock the send never blocks: a full queue is waited on (until `deadline`, if any) after
    /// letting go, since `Cluster::kill` takes the write lock before it stops the node.
    fn send_proposal(
        &self,
        id: NodeId,
        command: S::Command,
        deadline: Option<Instant>,
    ) -> Result<Result<Receipt<S::Output>, Error>, S::Command> {
        let nodes = self.shared.nodes.read().unwrap_or_else(|p| p.into_inner());
        let Some(node) = nodes.get(&id) else { return Err(command) };
        // NB: another thread proposing through this same clone holds it: use the node's.
        let sent = match self.own() {
            Some(mut own) => {
                let receipt =
                    node.receipt_assisted_by(Own::for_node(&mut own, node).assist.as_ref());
                node.try_propose_with(command, self.forward, receipt)
            }
            None => node.try_propose(command, self.forward),
        };
        drop(nodes);
        Ok(sent.or_else(|later| later.send(id, deadline)))
    }

    /// What this clone reuses, unless another thread proposing through it holds it. NB: a
    /// panic while it was held leaves nothing half done (the spare slot was taken out).
    fn own(&self) -> Option<MutexGuard<'_, Option<Own<S::Output>>>> {
        match self.own.try_lock() {
            Ok(own) => Some(own),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    pub(super) fn running(&self) -> Vec<NodeId> {
        self.shared.nodes.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    /// The node last seen leading, if any.
    pub fn leader_hint(&self) -> Option<NodeId> {
        match self.shared.leader.load(Ordering::Relaxed) {
            NO_LEADER => None,
            id => Some(NodeId(id)),
        }
    }

    pub(crate) fn learn_leader(&self, id: NodeId) {
        // NB: read first: a store, even of the same id, takes the line from every other core.
        if self.shared.leader.load(Ordering::Relaxed) != id.0 {
            self.shared.leader.store(id.0, Ordering::Relaxed);
        }
    }

    /// The deadline used when a call takes none: [`Config::request_timeout`](crate::Config).
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// Proposes `command` and waits until it is applied, up to the client's timeout
    /// ([`Config::request_timeout`](crate::Config::request_timeout)). Finds the leader itself.
    /// What each error means, and when a retry is safe: [`Client::propose_timeout`].
    pub fn propose(&self, command: S::Command) -> Result<Applied<S::Output>, Error> {
        self.propose_timeout(command, self.shared.timeout)
    }

    /// [`Client::propose`] with an explicit deadline. Retries (at the hinted leader, or another
    /// node) only while the command cannot have been applied: refused before appending (also
    /// `LeaderUnreachable`, when forwarding to a leader that is down, and `UncommittedLogFull`,
    /// retried elsewhere after a pause of a tick, at most 5 ms), or replaced after
    /// (`ProposalDropped`). At the deadline:
    /// - `Err(Unavailable { last })` if every attempt was refused or replaced like that (no
    ///   leader elected, no majority running): the command was never applied and never will
    ///   be, so retrying it is safe; `last` is the last refusal.
    /// - `Err(Timeout)` if an attempt was appended, or handed to a node that had not answered:
    ///   the outcome is unknown, the command may still be applied.
    ///
    /// `Err(Storage)` (the leader's write failed, and may have landed) and `Err(NodeDown)`
    /// after appending are unknown too, and come at once. So is `Err(NodePanicked)` (the node
    /// panicked outside `apply`), which is not retried, since the command itself may be what
    /// panicked (its size, its clone). After any answer that says the node failed
    /// (`NodePanicked`, `Storage`, `StateMachinePanicked`, `RestoreFailed`) this client
    /// leaves that node alone until it is restarted, so its later calls find the new leader
    /// instead of hearing the failed one's error again. The simulator's clients follow the
    /// same rule (`SimConfig::client_retries`).
    pub fn propose_timeout(
        &self,
        command: S::Command,
        timeout: Duration,
    ) -> Result<Applied<S::Output>, Error> {
        let deadline = deadline_after(timeout);
        let mut target = self.leader_hint().or_else(|| self.running().first().copied());
        let mut attempt = 0usize;
        loop {
            let Some(id) = target else { return Err(Error::Shutdown) };
            // NB: the first attempt has its whole timeout: no clock read before it.
            let (refusal, appended) = match self.try_propose(id, command.clone(), deadline) {
                Ok(applied) => {
                    if !self.forward {
                        self.learn_leader(id); // (a forwarding node need not lead)
                    }
                    return Ok(applied);
                }
                Err(failed) => failed,
            };
            // NB: cloned only on this slow path, for `Unavailable::last`.
            match self.next_after(refusal.clone(), id, appended, &mut attempt, deadline) {
                Next::Stop(e) => {
                    if let Some(node) = failed_node(&e, id) {
                        // NB: failed for good: later calls look elsewhere (a restart adds it back).
                        self.node_failed(node);
                    }
                    return Err(e);
                }
                Next::At(hint) => target = Some(hint),
                Next::After(next, pause) => {
                    target = next;
                    std::thread::sleep(pause);
                }
            }
            // NB: every attempt so far was refused before appending or replaced (`Retry::No`
            // returned above): none can be applied, so this is not a `Timeout`.
            if Instant::now() >= deadline {
                return Err(Error::Unavailable { last: Box::new(refusal) });
            }
        }
    }

    /// What a proposal loop does after its attempt at `id` failed with `refusal` (`appended`:
    /// the receipt learned its entry's place), `attempt` counting its tries elsewhere: the
    /// decisions of [`Client::propose_timeout`], which the async loop of
    /// [`Session::propose_async`](crate::Session::propose_async) shares.
    pub(super) fn next_after(
        &self,
        refusal: Error,
        id: NodeId,
        appended: bool,
        attempt: &mut usize,
        deadline: Instant,
    ) -> Next {
        match Retry::after(refusal, id, appended) {
            Retry::No(e) => Next::Stop(e),
            Retry::At(hint) => {
                self.learn_leader(hint);
                Next::At(hint)
            }
            Retry::Elsewhere => {
                *attempt += 1;
                Next::After(self.next_candidate(id, *attempt), self.pause_before_retry(deadline))
            }
        }
    }

    /// How long to pause before trying another node: the retry pause, or all the time left
    /// when less than two pauses are. NB: an attempt started with a sliver of time left is
    /// likely cut off by the deadline before its node answers, and a proposal handed over
    /// but unanswered is `Timeout` (unknown) where a refusal would have been `Unavailable`.
    pub(super) fn pause_before_retry(&self, deadline: Instant) -> Duration {
        let pause = self.shared.retry_pause;
        let left = deadline.saturating_duration_since(Instant::now());
        if left < pause.saturating_mul(2) {
            left
        } else {
            pause
        }
    }

    /// One attempt at node `id`: the output, or the error and whether the receipt learned
    /// its entry's place (`Retry::after`'s `appended`).
    fn try_propose(
        &self,
        id: NodeId,
        command: S::Command,
        deadline: Instant,
    ) -> Result<Applied<S::Output>, (Error, bool)> {
        // NB: what the clone reuses is held through the wait: the receipt is lent the assist
        // and its answer slot taken back after, with no count or allocation per proposal.
        // Another thread proposing through this same clone meanwhile goes without.
        if let Some(mut own) = self.own() {
            let nodes = self.shared.nodes.read().unwrap_or_else(|p| p.into_inner());
            let Some(node) = nodes.get(&id) else {
                return Err((Error::NodeDown(id), false)); // not running
            };
            let own = Own::for_node(&mut own, node);
            let sent = node.try_propose_in(command, self.forward, own.spare.take());
            drop(nodes); // (as in `send_proposal`: a full queue is waited on after letting go)
            let mut receipt = match sent.or_else(|later| later.send(id, Some(deadline))) {
                Ok(receipt) => receipt,
                Err(e) => return Err((e, false)), // never handed over (as below)
            };
            let result = receipt.wait_until_assisted(deadline, own.assist.as_deref());
            let result = result.map_err(|e| (e, receipt.was_appended()));
            own.spare = receipt.into_spare();
            return result;
        }
        let mut receipt = match self.send_proposal(id, command, Some(deadline)) {
            Ok(Ok(receipt)) => receipt,
            // Stopped before it took the request, or its queue full until the deadline
            // (`QueueFull`): never handed over.
            Ok(Err(e)) => return Err((e, false)),
            // Not running.
            Err(_) => return Err((Error::NodeDown(id), false)),
        };
        receipt.wait_until(deadline).map_err(|e| (e, receipt.was_appended()))
    }

    /// Hands a proposal to node `id` if it can at once, never blocking (an async caller's
    /// thread): a full queue is `QueueFull` and a node not running `NodeDown`, both never
    /// handed over.
    pub(super) fn send_now(
        &self,
        id: NodeId,
        command: S::Command,
    ) -> Result<Receipt<S::Output>, Error> {
        let nodes = self.shared.nodes.read().unwrap_or_else(|p| p.into_inner());
        let Some(node) = nodes.get(&id) else { return Err(Error::NodeDown(id)) };
        // NB: a full queue's request is dropped unsent: its responder answers the discarded
        // receipt, and it took no bytes of the queue's budget (`try_propose_with`).
        node.try_propose(command, self.forward).map_err(|later| match later {
            ProposeLater::Down => Error::NodeDown(id),
            ProposeLater::Full(_) => Error::QueueFull(id),
        })
    }

    /// Sends a proposal to the node believed to lead (or any running node when none is known)
    /// and returns at once, unless that node's request queue is full (see
    /// [`NodeHandle::propose_async`]). The receipt reports `NotLeader` (with a hint) if the
    /// belief was stale, and `Shutdown` if no node runs; [`Client::propose`] retries for you.
    pub fn propose_async(&self, command: S::Command) -> Receipt<S::Output> {
        let command = match self.leader_hint() {
            Some(id) => match self.send_proposal(id, command, None) {
                Ok(sent) => return sent.unwrap_or_else(|e| Receipt::failed(id, e)),
                Err(command) => command, // (the hinted leader stopped)
            },
            None => command,
        };
        let Some(id) = self.running().first().copied() else {
            return Receipt::failed(NodeId(0), Error::Shutdown);
        };
        match self.send_proposal(id, command, None) {
            Ok(sent) => sent.unwrap_or_else(|e| Receipt::failed(id, e)),
            Err(_) => Receipt::failed(id, Error::NodeDown(id)),
        }
    }

    pub(super) fn next_candidate(&self, after: NodeId, attempt: usize) -> Option<NodeId> {
        let running = self.running();
        if running.is_empty() {
            return None;
        }
        let pos = running.iter().position(|&id| id == after).unwrap_or(0);
        Some(running[(pos + attempt) % running.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvCommand, KvStateMachine};

    #[test]
    fn a_full_uncommitted_log_is_retried_elsewhere_after_a_pause() {
        // Refused before appending: never applied, so retried; `Elsewhere` sleeps the retry
        // pause first (a follower asked redirects back at once, so every second try pauses).
        let full = Error::UncommittedLogFull { bytes: 10, max: 8 };
        assert_eq!(Retry::after(full, NodeId(1), false), Retry::Elsewhere);
    }

    #[test]
    fn no_retry_starts_with_less_than_a_pause_left() {
        let pause = Duration::from_millis(50);
        let client: Client<KvStateMachine> = Client::new(Duration::from_secs(5), pause);
        let now = Instant::now();
        assert_eq!(client.pause_before_retry(now + Duration::from_secs(1)), pause);
        // 70 ms left: a pause would leave 20 ms for the next attempt; wait out the deadline.
        let rest = client.pause_before_retry(now + Duration::from_millis(70));
        assert!(rest != pause && rest <= Duration::from_millis(70), "{rest:?}");
        assert_eq!(client.pause_before_retry(now), Duration::ZERO);
    }

    /// A node that answers each status request with `failure`, until its handle's queue goes.
    fn node_answering(id: NodeId, failure: Option<Error>) -> NodeHandle<KvStateMachine> {
        use crate::storage::{MemStorage, Storage};
        let (requests, queue) = bounded::<Request<KvStateMachine>>(8);
        let store = MemStorage::<KvCommand>::new(Configuration::new([id]));
        let state = store.load().expect("a memory store");
        let core = crate::core::Core::new(id, &crate::Config::default(), state).status();
        std::thread::spawn(move || {
            for request in queue {
                if let Request::Status { reply } = request {
                    let (core, failure) = (core.clone(), failure.clone());
                    let (digest, rpcs, metrics) = (0, Default::default(), Default::default());
                    let _ = reply.send(NodeStatus { core, digest, rpcs, failure, metrics });
                }
            }
        });
        NodeHandle::new(id, RequestSender::plain(requests), 0)
    }

    /// `NodePanicked` makes a client leave the node alone, but an answer that arrives after
    /// the node was restarted (healthy) must not drop the new incarnation.
    #[test]
    fn a_late_node_panicked_answer_keeps_a_restarted_node() {
        let client: Client<KvStateMachine> =
            Client::new(Duration::from_secs(5), Duration::from_millis(1));
        let id = NodeId(1);
        let panicked = Error::NodePanicked { node: id, message: "a test".into() };
        client.node_started(node_answering(id, Some(panicked)));
        client.node_stopped(id); // the kill
        client.node_started(node_answering(id, None)); // the restart, healthy
        client.learn_leader(id);
        client.node_failed(id); // the old incarnation's answer, late
        assert!(client.handle(id).is_some(), "the restarted node was dropped");
        assert_eq!(client.leader_hint(), Some(id));
        // The failed incarnation itself is left alone.
        let panicked = Error::NodePanicked { node: id, message: "a test".into() };
        client.node_stopped(id);
        client.node_started(node_answering(id, Some(panicked)));
        client.node_failed(id);
        assert!(client.handle(id).is_none(), "the failed node is still asked");
        assert_eq!(client.leader_hint(), None);
    }

    /// The request queue's byte budget: a proposal that does not fit waits (`propose_async`)
    /// or, with a deadline, is refused `QueueFull` and never handed over; the node's giving
    /// back makes room; a lone proposal larger than the budget passes; a stopped node's
    /// budget wakes a waiting proposer with `NodeDown`.
    #[test]
    fn proposals_are_bounded_in_bytes_in_the_nodes_queue() {
        use crate::transport::BudgetCloser;
        let id = NodeId(1);
        let put = |n: usize| KvCommand::Put { key: "k".into(), value: "v".repeat(n).into() };
        let size = KvStateMachine::command_size(&put(100));
        let bytes = QueueBytes::counting_all(2 * size);
        let budget = Arc::clone(&bytes.budget);
        let (requests, queue) = bounded::<Request<KvStateMachine>>(64);
        let node = NodeHandle::new(id, RequestSender::plain(requests), 0).counted_in(bytes);
        let first = node.propose_async(put(100)).expect("fits");
        let second = node.propose_async(put(100)).expect("fits, exactly");
        assert_eq!(budget.held(), 2 * size);
        let refused = node.propose(put(100), Duration::from_millis(20)).map(|a| a.output);
        assert_eq!(refused, Err(Error::QueueFull(id)), "no room in bytes, 62 free slots");
        assert_eq!((queue.len(), budget.held()), (2, 2 * size), "never handed over");
        // The node takes one: its size travels with it, and goes back.
        let mut taken = queue.try_recv().expect("queued");
        let counted = Some(Measured { size, counted: true });
        assert!(matches!(taken, Request::Propose { queued, .. } if queued == counted));
        budget.give_back(taken.uncount());
        let third = node.propose_async(put(100)).expect("room again");
        for mut request in queue.try_iter() {
            budget.give_back(request.uncount());
        }
        assert_eq!(budget.held(), 0);
        let huge = node.propose_async(put(10 * size)).expect("alone, however large");
        assert!(budget.held() > 2 * size);
        let refused = node.propose(put(1), Duration::from_millis(20)).map(|a| a.output);
        assert_eq!(refused, Err(Error::QueueFull(id)), "nothing more beside it");
        // A proposer waiting for room hears that the node stopped.
        let waiting = {
            let node = node.clone();
            std::thread::spawn(move || node.propose_async(put(100)).map(|_| ()))
        };
        drop(BudgetCloser(Arc::clone(&budget)));
        let answer = waiting.join().expect("the proposer");
        assert_eq!(answer, Err(Error::NodeDown(id)));
        assert!(budget.peak() <= 2 * size + KvStateMachine::command_size(&put(10 * size)));
        drop((first, second, third, huge, queue));
    }

    /// Small proposals go uncounted, bounded by the queue's slots: a queue of 64 slots and
    /// 64 KiB counts proposals over 512 bytes against the 32 KiB left, and only those.
    #[test]
    fn small_proposals_are_bounded_by_the_queues_slots_and_go_uncounted() {
        let put = |n: usize| KvCommand::Put { key: "k".into(), value: "v".repeat(n).into() };
        let bytes = QueueBytes::new(64 << 10, 64);
        let budget = Arc::clone(&bytes.budget);
        assert_eq!((bytes.small, budget.max()), (512, 32 << 10), "half for 64 slots of 512");
        let (requests, queue) = bounded::<Request<KvStateMachine>>(64);
        let node = NodeHandle::new(NodeId(1), RequestSender::plain(requests), 0).counted_in(bytes);
        let small = node.propose_async(put(10)).expect("sent");
        assert_eq!(budget.held(), 0, "uncounted");
        let large = node.propose_async(put(1_000)).expect("sent");
        let size = KvStateMachine::command_size(&put(1_000));
        assert_eq!(budget.held(), size, "counted");
        let sizes: Vec<_> = queue
            .try_iter()
            .map(|r| match r {
                Request::Propose { queued, .. } => queued,
                _ => panic!("a proposal"),
            })
            .collect();
        let small_size = KvStateMachine::command_size(&put(10));
        let small_measured = Measured { size: small_size, counted: false };
        let large_measured = Measured { size, counted: true };
        assert_eq!(sizes, [Some(small_measured), Some(large_measured)], "measured once, here");
        drop((small, large));
    }

    /// A clone keeps nothing of a node's request queue: once a kill took the node out of the
    /// running nodes, its queue's last sender is gone, so a request the node never took is
    /// dropped with the queue and its proposer hears `NodeDown` at once (never handed over:
    /// retried elsewhere), not at its deadline. A restart under the same id is followed at once,
    /// and threads sharing one clone all get through.
    #[test]
    fn a_clone_keeps_no_killed_nodes_queue_and_follows_restarts() {
        let client: Client<KvStateMachine> =
            Client::new(Duration::from_secs(30), Duration::from_millis(1));
        let put = || KvCommand::Put { key: "k".into(), value: "v".into() };
        let (requests, old_queue) = bounded(8);
        client.node_started(NodeHandle::new(NodeId(1), RequestSender::plain(requests), 0));
        client.learn_leader(NodeId(1));
        let mut first = client.propose_async(put());
        let mut second = client.propose_async(put());
        assert!(old_queue.try_recv().is_ok(), "the first proposal reached the node");
        drop(first.wait(Duration::ZERO)); // (its responder went with the request taken above)

        client.node_stopped(NodeId(1)); // a kill: the node never took the second proposal,
        drop(old_queue); // and its threads end
        let start = Instant::now();
        assert_eq!(second.wait(Duration::from_secs(10)), Err(Error::NodeDown(NodeId(1))));
        assert!(start.elapsed() < Duration::from_secs(5), "answered only at the deadline");

        let (requests, new_queue) = bounded(8);
        client.node_started(NodeHandle::new(NodeId(1), RequestSender::plain(requests), 0)); // the restart
        client.learn_leader(NodeId(1));
        let _third = client.propose_async(put());
        assert!(new_queue.try_recv().is_ok(), "the restarted node's queue has it");

        // Threads sharing one clone: one holds what it reuses, the others go without.
        let (requests, queue) = bounded(64);
        client.node_started(NodeHandle::new(NodeId(2), RequestSender::plain(requests), 0));
        client.learn_leader(NodeId(2));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..8).map(|_| client.propose_async(put())).collect::<Vec<_>>());
            }
        });
        assert_eq!(queue.try_iter().count(), 32, "every proposal reached the node");
    }

    #[test]
    fn a_proposer_waiting_on_a_full_queue_does_not_hold_up_a_kill() {
        let client: Client<KvStateMachine> =
            Client::new(Duration::from_secs(5), Duration::from_millis(1));
        let (requests, queue) = bounded(1);
        client.node_started(NodeHandle::new(NodeId(1), RequestSender::plain(requests), 0));
        client.learn_leader(NodeId(1));
        let put = || KvCommand::Put { key: "k".into(), value: "v".into() };
        let first = client.propose_async(put()); // fills the queue: nobody drains it

        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let blocked = {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut receipt = client.propose_async(put()); // blocks: the queue is full
                let _ = sent_tx.send(receipt.wait(Duration::from_secs(5)));
            })
        };
        assert!(sent_rx.recv_timeout(Duration::from_millis(50)).is_err(), "still blocked");
        // What `Cluster::kill` does first: take the node out of the map (the write lock).
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
        let stopper = {
            let client = client.clone();
            std::thread::spawn(move || {
                client.node_stopped(NodeId(1));
                let _ = stopped_tx.send(());
            })
        };
        stopped_rx.recv_timeout(Duration::from_secs(10)).expect("the write lock was free");
        drop(queue); // the node's end goes away, as its threads stop
        let answer = sent_rx.recv_timeout(Duration::from_secs(10)).expect("the sender woke");
        assert_eq!(answer, Err(Error::NodeDown(NodeId(1))));
        drop(first);
        blocked.join().expect("proposer");
        stopper.join().expect("stopper");
    }

    /// A handle to node `id` whose request queue (one slot) is full, and that queue: nobody
    /// takes from it.
    fn node_with_a_full_queue(
        id: NodeId,
    ) -> (NodeHandle<KvStateMachine>, crossbeam_channel::Receiver<Request<KvStateMachine>>) {
        let (requests, queue) = bounded::<Request<KvStateMachine>>(1);
        let node = NodeHandle::new(id, RequestSender::plain(requests), 0);
        let (reply, _) = bounded(1);
        node.send_by(Request::Status { reply }, None).expect("fills the queue");
        (node, queue)
    }

    /// The async proposal loop (`Session::propose_async`'s) at a node whose request queue
    /// stays full: refused `QueueFull` at once, where the blocking call waits for room, and
    /// retried after a pause until its deadline, then `Unavailable { last: QueueFull }`, never
    /// handed over. Its thread stays free throughout: a task beside it on a one-thread
    /// runtime keeps ticking.
    #[test]
    fn an_async_proposal_at_a_full_queue_never_waits_on_its_thread() {
        use std::sync::atomic::AtomicUsize;
        let id = NodeId(1);
        let (node, queue) = node_with_a_full_queue(id);
        let pause = Duration::from_millis(5);
        let client: Client<KvStateMachine> = Client::new(Duration::from_secs(5), pause);
        client.node_started(node);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("rt");
        let (sleeps, ticks) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let sleep = |d| {
            sleeps.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(d)
        };
        let timeout = Duration::from_millis(200);
        let put = KvCommand::Put { key: "k".into(), value: "v".into() };
        let answer = rt.block_on(async {
            let ticker = {
                let ticks = Arc::clone(&ticks);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        ticks.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            let timer = std::pin::pin!(tokio::time::sleep(timeout));
            let answer = client.propose_until(put, deadline_after(timeout), timer, &sleep).await;
            ticker.abort();
            answer
        });
        let refused = Error::Unavailable { last: Box::new(Error::QueueFull(id)) };
        assert_eq!(answer.map(|a| a.output), Err(refused));
        assert_eq!(queue.len(), 1, "never handed over");
        let (sleeps, ticks) = (sleeps.load(Ordering::Relaxed), ticks.load(Ordering::Relaxed));
        let most = (timeout.as_millis() / pause.as_millis()) as usize + 2;
        assert!((2..=most).contains(&sleeps), "{sleeps} pauses, at most {most}");
        assert!(ticks >= 2, "the thread was held: {ticks} ticks of 10 ms in {timeout:?}");
    }

    /// A read at a node whose request queue stays full is never handed over: `QueueFull`
    /// from the handle (was `Timeout`), and from a client that retried it until the deadline
    /// `Unavailable` with that refusal, the last.
    #[test]
    fn a_read_at_a_full_queue_is_refused_queue_full_and_the_client_keeps_it() {
        let id = NodeId(1);
        let (node, queue) = node_with_a_full_queue(id);
        let answer = node.read("k".to_string(), Duration::from_millis(20));
        assert_eq!(answer, Err(Error::QueueFull(id)));
        let client: Client<KvStateMachine> =
            Client::new(Duration::from_secs(5), Duration::from_millis(5));
        client.node_started(node);
        let answer = client.read_timeout("k".to_string(), Duration::from_millis(50));
        assert_eq!(answer, Err(Error::Unavailable { last: Box::new(Error::QueueFull(id)) }));
        assert_eq!(queue.len(), 1, "no read was handed over");
    }

    /// Many queries as one read take the same path: at a full queue `QueueFull` from the
    /// handle, of either policy, and from a client `Unavailable { last: QueueFull }` by its
    /// deadline, never handed over.
    #[test]
    fn many_queries_at_a_full_queue_are_refused_queue_full_by_the_deadline() {
        use crate::core::ReadPolicy;
        let id = NodeId(1);
        let (node, queue) = node_with_a_full_queue(id);
        let keys = || vec!["a".to_string(), "b".to_string()];
        for policy in [ReadPolicy::Lease, ReadPolicy::ReadIndex] {
            let answer = node.read_many_with(keys(), policy, Duration::from_millis(20));
            assert_eq!(answer, Err(Error::QueueFull(id)), "{policy:?}");
        }
        let client: Client<KvStateMachine> =
            Client::new(Duration::from_secs(5), Duration::from_millis(5));
        client.node_started(node);
        let started = Instant::now();
        let timeout = Duration::from_millis(50);
        let answer = client.read_many_with(keys(), ReadPolicy::ReadIndex, timeout);
        assert_eq!(answer, Err(Error::Unavailable { last: Box::new(Error::QueueFull(id)) }));
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(queue.len(), 1, "no read was handed over");
    }

    /// A node that serves every read from an empty key-value state, as a follower serves a
    /// follower read, until its handle's queue goes.
    fn node_serving_reads(id: NodeId) -> NodeHandle<KvStateMachine> {
        let (requests, queue) = bounded::<Request<KvStateMachine>>(8);
        std::thread::spawn(move || {
            let state = KvStateMachine::new();
            for request in queue {
                if let Request::Read { read, .. } = request {
                    read.answer(Ok((&state, crate::types::LogIndex(1))));
                }
            }
        });
        NodeHandle::new(id, RequestSender::plain(requests), 0)
    }

    /// Regression (twenty-third session's review): a node that answers a read need not lead,
    /// since a follower answers reads too (a follower read). A client that knew no leader
    /// and read at a follower took it for the leader (`leader_hint`, "the node last seen
    /// leading", named the follower; its next proposal went there first); a read now
    /// teaches the client no leader, as a forwarded one never did.
    #[test]
    fn a_read_answered_by_a_node_does_not_make_it_the_leader() {
        let client: Client<KvStateMachine> =
            Client::new(Duration::from_secs(5), Duration::from_millis(1));
        client.node_started(node_serving_reads(NodeId(1)));
        assert_eq!(client.read("k".to_string()), Ok(None));
        assert_eq!(client.read_many(vec!["k".to_string()]), Ok(vec![None]));
        assert_eq!(client.leader_hint(), None, "a read named the node that served it leader");
    }
}
