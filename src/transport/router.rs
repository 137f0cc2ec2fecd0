//! The in-process network: routes messages between node threads, and the fault switches
//! (partitions, drops, delays, duplication, reordering) users and tests flip.
//!
//! Full-channel policy: a message to a full or closed inbox is dropped, exactly as a lossy
//! network would; Raft retransmits. No node thread ever blocks sending. Delayed messages wait in
//! one delayer thread, owned by the router and joined on shutdown.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::ops::Range;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::{assign_groups, check_probability, check_range, FaultError};
use crate::message::{Body, Message};
use crate::types::NodeId;

/// Probabilistic faults applied to every message, drawn from a seeded RNG.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkFaults {
    /// Probability that a request (RequestVote, AppendEntries, TimeoutNow) is lost.
    pub drop_requests: f64,
    /// Probability that a reply is lost.
    pub drop_replies: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Each message is held for a uniform delay in this range; variance reorders messages.
    pub delay: Range<Duration>,
}

impl NetworkFaults {
    /// Checks every setting; the error says which one is out of range.
    pub fn validate(&self) -> Result<(), FaultError> {
        check_probability("drop_requests", self.drop_requests)?;
        check_probability("drop_replies", self.drop_replies)?;
        check_probability("duplicate", self.duplicate)?;
        check_range("delay", self.delay.start, self.delay.end)
    }

    fn is_clean(&self) -> bool {
        *self == NetworkFaults::default()
    }
}

/// Which partition group each node is in; nodes not named share one implicit group.
#[derive(Clone, Debug, Default)]
struct Partition {
    group_of: BTreeMap<NodeId, usize>,
}

impl Partition {
    fn blocks(&self, a: NodeId, b: NodeId) -> bool {
        self.group_of.get(&a) != self.group_of.get(&b)
    }
}

#[derive(Default)]
struct FaultState {
    faults: NetworkFaults,
    partition: Partition,
    /// Fast path: no fault of any kind is set.
    clean: bool,
}

struct Delayed<C> {
    due: Instant,
    seq: u64,
    msg: Message<C>,
}

impl<C> PartialEq for Delayed<C> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl<C> Eq for Delayed<C> {}
impl<C> PartialOrd for Delayed<C> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<C> Ord for Delayed<C> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq)) // min-heap
    }
}

/// The delayer thread and the channel feeding it.
type Delayer<C> = (Sender<Delayed<C>>, JoinHandle<()>);

/// Routes messages to node inboxes, applying faults.
pub struct Router<C> {
    inboxes: RwLock<HashMap<NodeId, Sender<Message<C>>>>,
    faults: RwLock<FaultState>,
    rng: Mutex<SmallRng>,
    delayer: Mutex<Option<Delayer<C>>>,
    seq: std::sync::atomic::AtomicU64,
}

impl<C: Send + 'static> Router<C> {
    /// A router with no nodes and no faults; fault draws come from `seed`.
    pub fn new(seed: u64) -> Self {
        Router {
            inboxes: RwLock::new(HashMap::new()),
            faults: RwLock::new(FaultState { clean: true, ..FaultState::default() }),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            delayer: Mutex::new(None),
            seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Connects (or reconnects, after a restart) a node's inbox.
    pub fn connect(&self, id: NodeId, inbox: Sender<Message<C>>) {
        write(&self.inboxes).insert(id, inbox);
    }

    /// Disconnects a node; messages to it are dropped.
    pub fn disconnect(&self, id: NodeId) {
        write(&self.inboxes).remove(&id);
    }

    /// Sets the probabilistic faults.
    pub fn set_faults(&self, faults: NetworkFaults) -> Result<(), FaultError> {
        faults.validate()?;
        let mut state = write(&self.faults);
        state.faults = faults;
        state.clean = state.faults.is_clean() && state.partition.group_of.is_empty();
        Ok(())
    }

    /// Splits the named nodes into groups that cannot reach each other. `known` lists the
    /// cluster's nodes, to reject unknown ids.
    pub fn partition(&self, groups: &[Vec<NodeId>], known: &[NodeId]) -> Result<(), FaultError> {
        let group_of = assign_groups(groups, |id| known.contains(&id))?;
        let mut state = write(&self.faults);
        state.partition = Partition { group_of };
        state.clean = state.faults.is_clean() && state.partition.group_of.is_empty();
        Ok(())
    }

    /// Removes partitions and faults.
    pub fn heal(&self) {
        *write(&self.faults) = FaultState { clean: true, ..FaultState::default() };
    }

    /// Sends a message through the faulty network. Never blocks.
    pub fn send(&self, msg: Message<C>)
    where
        C: Clone,
    {
        let state = read(&self.faults);
        if state.clean {
            drop(state);
            return self.deliver(msg);
        }
        if state.partition.blocks(msg.from, msg.to) || self.lost(&state.faults, &msg) {
            return;
        }
        let faults = state.faults.clone();
        drop(state);
        if self.chance(faults.duplicate) {
            self.deliver_after(msg.clone(), &faults.delay);
        }
        self.deliver_after(msg, &faults.delay);
    }

    fn lost(&self, faults: &NetworkFaults, msg: &Message<C>) -> bool {
        let is_reply = matches!(msg.body, Body::RequestVoteReply(_) | Body::AppendEntriesReply(_));
        self.chance(if is_reply { faults.drop_replies } else { faults.drop_requests })
    }

    fn chance(&self, p: f64) -> bool {
        p > 0.0 && lock(&self.rng).random_bool(p)
    }

    fn deliver_after(&self, msg: Message<C>, delay: &Range<Duration>) {
        if delay.end.is_zero() {
            return self.deliver(msg);
        }
        let d = if delay.start == delay.end {
            delay.start
        } else {
            lock(&self.rng).random_range(delay.clone())
        };
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let delayed = Delayed { due: Instant::now() + d, seq, msg };
        if let Some((tx, _)) = lock(&self.delayer).as_ref() {
            let _ = tx.send(delayed);
        }
    }

    /// Puts a message in its receiver's inbox, or drops it (full inbox, or node down).
    pub fn deliver(&self, msg: Message<C>) {
        let inboxes = read(&self.inboxes);
        let Some(inbox) = inboxes.get(&msg.to) else { return };
        match inbox.try_send(msg) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(msg)) => {
                tracing::debug!(to = %msg.to, "inbox full; message dropped")
            }
        }
    }
}

impl<C: Send + Clone + 'static> Router<C> {
    /// Starts the delayer thread. `router` must be the `Arc` this router lives in.
    pub fn start_delayer(router: &std::sync::Arc<Router<C>>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let weak = std::sync::Arc::downgrade(router);
        let handle = std::thread::Builder::new()
            .name("raft-net-delay".into())
            .spawn(move || run_delayer(rx, weak))
            .expect("spawning the delayer thread");
        *lock(&router.delayer) = Some((tx, handle));
    }

    /// Stops the delayer thread and joins it; pending delayed messages are dropped.
    pub fn stop_delayer(&self) {
        let taken = lock(&self.delayer).take();
        if let Some((tx, handle)) = taken {
            drop(tx);
            let _ = handle.join();
        }
    }
}

fn run_delayer<C: Send + Clone + 'static>(
    rx: Receiver<Delayed<C>>,
    router: std::sync::Weak<Router<C>>,
) {
    let mut heap = BinaryHeap::new();
    loop {
        let timeout = heap.peek().map_or(Duration::from_secs(3600), |d: &Delayed<C>| {
            d.due.saturating_duration_since(Instant::now())
        });
        match rx.recv_timeout(timeout) {
            Ok(delayed) => heap.push(delayed),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        let Some(router) = router.upgrade() else { return };
        while heap.peek().is_some_and(|d| d.due <= Instant::now()) {
            router.deliver(heap.pop().expect("peeked").msg);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
