//! The in-process network: routes messages between node threads, and the fault switches users
//! and tests flip, after the lab fault models (6.824's labrpc, Jepsen's nemeses):
//!
//! * [`NetworkFaults`], drawn per message from a seeded RNG: loss, duplication and delay, each
//!   set separately for requests and replies, a long hold that delivers a fraction of messages
//!   seconds late, and the option to spare election or replication traffic. One setting covers
//!   every link; a directed link may override it.
//! * Link cuts: one set of blocked directed links `(from, to)`. Partitions, isolation, one-way
//!   cuts, deafening, muting and disconnecting a node all edit this one set.
//!
//! Fast path: while no fault of any kind is set, `send` reads one atomic flag and delivers; no
//! lock, no RNG. Faults are read under an `RwLock` only when the flag says some are set.
//!
//! Full-channel policy: a message to a full or closed inbox is dropped, exactly as a lossy
//! network would; Raft retransmits. An inbox is full when it holds `Config::inbox_capacity`
//! messages or has no room left in `Config::max_inbox_bytes` ([`Inbox`]). No node thread
//! ever blocks sending. Delayed messages wait in one delayer thread, owned by the router and
//! joined on shutdown (not counted against any inbox until they come due); a link cut when a
//! delayed message comes due loses it, as a cable pulled with packets still on the wire.
//! What a directed link holds delayed is bounded in bytes by the inbox's own rule
//! ([`ByteBudget`], `Config::max_inbox_bytes` per link): a message that does not fit is
//! dropped (counted, [`Router::held_dropped`]), unless the link holds nothing delayed.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{message_bytes, ByteBudget, Inbox};
use crate::error::{assign_groups, check_probability, check_range, FaultError};
use crate::message::{Body, Message};
use crate::types::NodeId;

/// Probabilistic faults, drawn per message from the router's seeded RNG. `Default` is a clean
/// network. One value covers every link (`Cluster::set_faults`); a directed link may have its
/// own, which then replaces it for that link (`Cluster::set_link_faults`).
///
/// A request is a RequestVote, an AppendEntries (heartbeats included) or a TimeoutNow; a reply
/// answers a RequestVote or an AppendEntries. Each message is first lost or kept (`drop_*`); a
/// kept one is delivered once, or twice (`duplicate*`), each copy held for its own draw of
/// `delay` plus `delay_requests` or `delay_replies`, plus `long_hold_delay` for the fraction
/// `long_hold`. Copies held for different times arrive out of order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkFaults {
    /// Probability that a request is lost: a lossy link on the way out; the sender retries.
    pub drop_requests: f64,
    /// Probability that a reply is lost: the request took effect but its sender never learns
    /// it, the case that leaves a client's outcome unknown.
    pub drop_replies: f64,
    /// Probability that any message, request or reply, is delivered twice: a retransmitting
    /// link layer or a replaying proxy.
    pub duplicate: f64,
    /// Probability that a request is delivered twice, drawn independently of `duplicate` (a
    /// message gets at most one extra copy): a client library that retries on its own.
    pub duplicate_requests: f64,
    /// Probability that a reply is delivered twice, drawn independently of `duplicate`: a
    /// server that answers a retried request again.
    pub duplicate_replies: f64,
    /// Every message is held for a uniform delay in this range (`0..0`: none; `d..d`: exactly
    /// `d`): latency and, through its variance, reordering.
    pub delay: Range<Duration>,
    /// Requests are held this much longer, on top of `delay`: a slow or congested path out.
    pub delay_requests: Range<Duration>,
    /// Replies are held this much longer, on top of `delay`: a slow path back, so new requests
    /// go out before the answers to older ones arrive.
    pub delay_replies: Range<Duration>,
    /// Probability that a message is held for a long time (`long_hold_delay`, on top of the
    /// other delays): a packet stuck in a router queue or a retransmission buffer that arrives
    /// seconds later, after elections have moved on, carrying a stale term.
    pub long_hold: f64,
    /// How long a long-held message waits, e.g. `1s..3s`. Must not be `0..0` while
    /// `long_hold > 0`.
    pub long_hold_delay: Range<Duration>,
    /// Leave election traffic untouched (RequestVote, pre-vote and their replies, TimeoutNow):
    /// e.g. delay replication only, so elections still settle quickly.
    pub spare_elections: bool,
    /// Leave replication traffic untouched (AppendEntries, heartbeats and their replies):
    /// e.g. lose votes only, to make elections split and retry.
    pub spare_replication: bool,
}

impl NetworkFaults {
    /// Checks every setting; the error names the one out of range.
    pub fn validate(&self) -> Result<(), FaultError> {
        for (field, p) in self.probabilities() {
            check_probability(field, p)?;
        }
        for (field, range) in self.delays() {
            check_range(field, range.start, range.end)?;
        }
        if self.long_hold > 0.0 && self.long_hold_delay.end.is_zero() {
            return Err(FaultError::EmptyRange { field: "long_hold_delay" });
        }
        Ok(())
    }

    fn probabilities(&self) -> [(&'static str, f64); 6] {
        [
            ("drop_requests", self.drop_requests),
            ("drop_replies", self.drop_replies),
            ("duplicate", self.duplicate),
            ("duplicate_requests", self.duplicate_requests),
            ("duplicate_replies", self.duplicate_replies),
            ("long_hold", self.long_hold),
        ]
    }

    fn delays(&self) -> [(&'static str, &Range<Duration>); 4] {
        [
            ("delay", &self.delay),
            ("delay_requests", &self.delay_requests),
            ("delay_replies", &self.delay_replies),
            ("long_hold_delay", &self.long_hold_delay),
        ]
    }

    /// Whether no setting does anything (only called on validated values).
    fn is_clean(&self) -> bool {
        let delays = [&self.delay, &self.delay_requests, &self.delay_replies];
        self.probabilities().iter().all(|&(_, p)| p == 0.0)
            && delays.iter().all(|d| d.end.is_zero())
    }

    fn spares<C>(&self, body: &Body<C>) -> bool {
        match body {
            Body::RequestVote(_) | Body::RequestVoteReply(_) | Body::TimeoutNow => {
                self.spare_elections
            }
            Body::AppendEntries(_)
            | Body::AppendEntriesReply(_)
            | Body::InstallSnapshot(_)
            | Body::InstallSnapshotReply(_)
            | Body::ReadConfirm(_)
            | Body::ReadConfirmReply(_)
            | Body::ReadIndex(_)
            | Body::ReadIndexByRound(_)
            | Body::ReadIndexReply(_) => self.spare_replication,
        }
    }

    /// Draws what happens to one message: `None` if it is lost.
    fn draw<C>(&self, body: &Body<C>, rng: &mut SmallRng) -> Option<Fate> {
        if self.spares(body) {
            return Some(Fate::PROMPT);
        }
        let reply = matches!(body, Body::RequestVoteReply(_) | Body::AppendEntriesReply(_));
        let (drop, duplicate, delay) = if reply {
            (self.drop_replies, self.duplicate_replies, &self.delay_replies)
        } else {
            (self.drop_requests, self.duplicate_requests, &self.delay_requests)
        };
        if chance(rng, drop) {
            return None;
        }
        let twice = chance(rng, self.duplicate) | chance(rng, duplicate);
        let first = self.hold(rng, delay);
        let second = twice.then(|| self.hold(rng, delay));
        Some(Fate { first, second })
    }

    fn hold(&self, rng: &mut SmallRng, kind_delay: &Range<Duration>) -> Hold {
        let long = chance(rng, self.long_hold);
        let mut delay = pick(rng, &self.delay) + pick(rng, kind_delay);
        if long {
            delay += pick(rng, &self.long_hold_delay);
        }
        Hold { delay, long }
    }
}

/// What the network does with a message it keeps: one copy, perhaps a second, each held.
struct Fate {
    first: Hold,
    second: Option<Hold>,
}

impl Fate {
    const PROMPT: Fate = Fate { first: Hold { delay: Duration::ZERO, long: false }, second: None };
}

#[derive(Clone, Copy)]
struct Hold {
    delay: Duration,
    long: bool,
}

fn chance(rng: &mut SmallRng, p: f64) -> bool {
    p > 0.0 && rng.random_bool(p)
}

/// A uniform draw from `range`; `d..d` (including `0..0`) is exactly `d`.
fn pick(rng: &mut SmallRng, range: &Range<Duration>) -> Duration {
    if range.start >= range.end {
        range.start
    } else {
        rng.random_range(range.clone())
    }
}

/// Every fault in force. Invariant: `cuts` holds no `(id, id)`, nor does `link_faults`.
#[derive(Default)]
struct FaultState {
    /// Faults on every link without an override.
    faults: NetworkFaults,
    /// Per directed link `(from, to)`: replaces `faults` for that link.
    link_faults: HashMap<(NodeId, NodeId), NetworkFaults>,
    /// Blocked directed links: a message `from -> to` is lost.
    cuts: BTreeSet<(NodeId, NodeId)>,
    /// Nodes cut off by `cut_off`: reconnecting another node leaves their links cut.
    disconnected: BTreeSet<NodeId>,
}

impl FaultState {
    fn is_clean(&self) -> bool {
        self.faults.is_clean() && self.link_faults.is_empty() && self.cuts.is_empty()
    }

    fn faults_on(&self, from: NodeId, to: NodeId) -> &NetworkFaults {
        self.link_faults.get(&(from, to)).unwrap_or(&self.faults)
    }

    /// Every directed link between `id` and each other known node, both ways.
    fn links_of(id: NodeId, known: &[NodeId]) -> impl Iterator<Item = (NodeId, NodeId)> + '_ {
        known.iter().filter(move |&&x| x != id).flat_map(move |&x| [(id, x), (x, id)])
    }
}

struct Delayed<C> {
    due: Instant,
    seq: u64,
    msg: Message<C>,
    /// What it counts for against its link's held bytes, given back when it comes due.
    bytes: usize,
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
    inboxes: RwLock<HashMap<NodeId, Inbox<C>>>,
    faults: RwLock<FaultState>,
    /// No fault of any kind is set: the fast path. Written only under the `faults` write lock.
    clean: AtomicBool,
    rng: Mutex<SmallRng>,
    delayer: Mutex<Option<Delayer<C>>>,
    seq: AtomicU64,
    /// Messages handed to the delayer and not yet delivered or lost.
    in_flight: AtomicUsize,
    /// Messages (copies) held by `long_hold` so far.
    long_held: AtomicU64,
    /// The bytes each directed link holds delayed, against `max_held_bytes`.
    held: Mutex<HashMap<(NodeId, NodeId), ByteBudget>>,
    /// Each link's budget for delayed messages (`Config::max_inbox_bytes` in a cluster).
    max_held_bytes: usize,
    /// How a command is measured (`StateMachine::command_size` in a cluster).
    sizer: fn(&C) -> usize,
    /// Messages (copies) dropped because their link held its budget of delayed bytes.
    held_dropped: AtomicU64,
}

impl<C: Send + 'static> Router<C> {
    /// A router with no nodes and no faults; fault draws come from `seed`. Each link holds at
    /// most 64 MiB delayed (the default `Config::max_inbox_bytes`), commands counted at their
    /// in-memory size: see [`Router::holding_at_most`].
    pub fn new(seed: u64) -> Self {
        Router {
            inboxes: RwLock::new(HashMap::new()),
            faults: RwLock::new(FaultState::default()),
            clean: AtomicBool::new(true),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            delayer: Mutex::new(None),
            seq: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            long_held: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
            max_held_bytes: 64 << 20,
            sizer: |_| std::mem::size_of::<C>(),
            held_dropped: AtomicU64::new(0),
        }
    }

    /// Each directed link holds at most `max_bytes` of delayed messages (as an inbox counts
    /// them, commands measured by `sizer`); one more that does not fit is dropped, unless the
    /// link holds nothing delayed.
    pub fn holding_at_most(self, max_bytes: usize, sizer: fn(&C) -> usize) -> Self {
        Router { max_held_bytes: max_bytes, sizer, ..self }
    }

    /// Connects (or reconnects, after a restart) a node's inbox.
    pub fn connect(&self, id: NodeId, inbox: Inbox<C>) {
        write(&self.inboxes).insert(id, inbox);
    }

    /// Disconnects a node's inbox (it stopped); messages to it are dropped.
    pub fn disconnect(&self, id: NodeId) {
        write(&self.inboxes).remove(&id);
    }

    /// Applies `change` to the fault state and recomputes the fast-path flag.
    fn update<T>(&self, change: impl FnOnce(&mut FaultState) -> T) -> T {
        let mut state = write(&self.faults);
        let out = change(&mut state);
        self.clean.store(state.is_clean(), Ordering::Release);
        out
    }

    /// Sets the faults on every link that has no override of its own.
    pub fn set_faults(&self, faults: NetworkFaults) -> Result<(), FaultError> {
        faults.validate()?;
        self.update(|s| s.faults = faults);
        Ok(())
    }

    /// Gives the directed link `from -> to` its own faults, replacing the network-wide ones
    /// for it. `known` lists the cluster's nodes, to reject unknown ids.
    pub fn set_link_faults(
        &self,
        from: NodeId,
        to: NodeId,
        faults: NetworkFaults,
        known: &[NodeId],
    ) -> Result<(), FaultError> {
        check_link(from, to, known)?;
        faults.validate()?;
        self.update(|s| s.link_faults.insert((from, to), faults));
        Ok(())
    }

    /// Removes the link's own faults; the network-wide ones apply to it again.
    pub fn clear_link_faults(
        &self,
        from: NodeId,
        to: NodeId,
        known: &[NodeId],
    ) -> Result<(), FaultError> {
        check_link(from, to, known)?;
        self.update(|s| s.link_faults.remove(&(from, to)));
        Ok(())
    }

    /// Resets every probabilistic fault, network-wide and per link; cuts stay. Messages already
    /// held stay in flight and arrive late, as on a real network.
    pub fn clear_faults(&self) {
        self.update(|s| {
            s.faults = NetworkFaults::default();
            s.link_faults.clear();
        });
    }

    /// Replaces every cut with a partition into groups that cannot reach each other; nodes of
    /// `known` not named share one further group.
    pub fn partition(&self, groups: &[Vec<NodeId>], known: &[NodeId]) -> Result<(), FaultError> {
        let group_of = assign_groups(groups, |id| known.contains(&id))?;
        let cuts = partition_cuts(&group_of, known);
        self.update(|s| {
            s.cuts = cuts;
            s.disconnected.clear();
        });
        Ok(())
    }

    /// Blocks the directed link `from -> to`; `to -> from` is unchanged.
    pub fn cut(&self, from: NodeId, to: NodeId, known: &[NodeId]) -> Result<(), FaultError> {
        check_link(from, to, known)?;
        self.update(|s| s.cuts.insert((from, to)));
        Ok(())
    }

    /// Unblocks the directed link `from -> to`, whatever cut it.
    pub fn restore(&self, from: NodeId, to: NodeId, known: &[NodeId]) -> Result<(), FaultError> {
        check_link(from, to, known)?;
        self.update(|s| s.cuts.remove(&(from, to)));
        Ok(())
    }

    /// Blocks every link between `id` and the other known nodes, both ways, and remembers `id`
    /// as disconnected.
    pub fn cut_off(&self, id: NodeId, known: &[NodeId]) -> Result<(), FaultError> {
        check_node(id, known)?;
        self.update(|s| {
            s.disconnected.insert(id);
            s.cuts.extend(FaultState::links_of(id, known));
        });
        Ok(())
    }

    /// Unblocks every link between `id` and each known node that is not itself disconnected.
    pub fn reconnect(&self, id: NodeId, known: &[NodeId]) -> Result<(), FaultError> {
        check_node(id, known)?;
        self.update(|s| {
            s.disconnected.remove(&id);
            let peers: Vec<NodeId> =
                known.iter().copied().filter(|x| !s.disconnected.contains(x)).collect();
            for link in FaultState::links_of(id, &peers) {
                s.cuts.remove(&link);
            }
        });
        Ok(())
    }

    /// Blocks every link into `id`.
    pub fn deafen(&self, id: NodeId, known: &[NodeId]) -> Result<(), FaultError> {
        check_node(id, known)?;
        let into = known.iter().filter(|&&x| x != id).map(|&x| (x, id));
        self.update(|s| s.cuts.extend(into));
        Ok(())
    }

    /// Blocks every link out of `id`.
    pub fn mute(&self, id: NodeId, known: &[NodeId]) -> Result<(), FaultError> {
        check_node(id, known)?;
        let out = known.iter().filter(|&&x| x != id).map(|&x| (id, x));
        self.update(|s| s.cuts.extend(out));
        Ok(())
    }

    /// Unblocks every link; probabilistic faults stay.
    pub fn heal(&self) {
        self.update(|s| {
            s.cuts.clear();
            s.disconnected.clear();
        });
    }

    /// Removes every fault: cuts and probabilistic faults.
    pub fn reset(&self) {
        self.update(|s| *s = FaultState::default());
    }

    /// The blocked directed links `(from, to)`, in order.
    pub fn blocked_links(&self) -> Vec<(NodeId, NodeId)> {
        read(&self.faults).cuts.iter().copied().collect()
    }

    /// Messages the network holds right now (delayed or long-held), not yet delivered or lost.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// How many messages (copies) `long_hold` has held since the router started.
    pub fn long_held(&self) -> u64 {
        self.long_held.load(Ordering::Relaxed)
    }

    /// The bytes the network holds delayed right now, over every link.
    pub fn held_bytes(&self) -> usize {
        lock(&self.held).values().map(ByteBudget::held).sum()
    }

    /// How many messages (copies) were dropped instead of delayed because their link held
    /// its budget of delayed bytes, since the router started.
    pub fn held_dropped(&self) -> u64 {
        self.held_dropped.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget of delayed messages on `link`, or counts a drop.
    fn take_held(&self, link: (NodeId, NodeId), bytes: usize) -> bool {
        let mut held = lock(&self.held);
        let budget = held.entry(link).or_insert_with(|| ByteBudget::new(self.max_held_bytes));
        let taken = budget.try_take(bytes);
        if !taken {
            budget.note_dropped();
            self.held_dropped.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// A delayed message left `link` (due, or dropped with the delayer).
    fn give_back_held(&self, link: (NodeId, NodeId), bytes: usize) {
        if let Some(budget) = lock(&self.held).get(&link) {
            budget.give_back(bytes);
        }
    }

    /// Sends a message through the faulty network. Never blocks.
    pub fn send(&self, msg: Message<C>)
    where
        C: Clone,
    {
        if self.clean.load(Ordering::Acquire) {
            return self.deliver(msg);
        }
        let Some(fate) = self.fate(&msg) else { return };
        if let Some(second) = fate.second {
            self.deliver_after(msg.clone(), second);
        }
        self.deliver_after(msg, fate.first);
    }

    /// Decides a message's fate under the current faults: `None` if it is lost.
    fn fate(&self, msg: &Message<C>) -> Option<Fate> {
        let state = read(&self.faults);
        if state.cuts.contains(&(msg.from, msg.to)) {
            return None;
        }
        let faults = state.faults_on(msg.from, msg.to);
        if faults.is_clean() {
            return Some(Fate::PROMPT);
        }
        faults.draw(&msg.body, &mut lock(&self.rng))
    }

    fn deliver_after(&self, msg: Message<C>, hold: Hold) {
        if hold.delay.is_zero() {
            return self.deliver(msg);
        }
        let (link, bytes) = ((msg.from, msg.to), message_bytes(&msg, self.sizer));
        if !self.take_held(link, bytes) {
            return;
        }
        if hold.long {
            self.long_held.fetch_add(1, Ordering::Relaxed);
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let delayed = Delayed { due: Instant::now() + hold.delay, seq, msg, bytes };
        // Counted before the delayer can see it, so `arrive` never takes the count below zero.
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let sent = lock(&self.delayer).as_ref().is_some_and(|(tx, _)| tx.send(delayed).is_ok());
        if !sent {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.give_back_held(link, bytes);
        }
    }

    /// A delayed message comes due: lost if its link is cut now, else delivered.
    fn arrive(&self, delayed: Delayed<C>) {
        let Delayed { msg, bytes, .. } = delayed;
        self.give_back_held((msg.from, msg.to), bytes);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let cut = !self.clean.load(Ordering::Acquire)
            && read(&self.faults).cuts.contains(&(msg.from, msg.to));
        if !cut {
            self.deliver(msg);
        }
    }

    /// Puts a message in its receiver's inbox, or drops it (an inbox full in messages or
    /// bytes, or a node down).
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

fn check_node(id: NodeId, known: &[NodeId]) -> Result<(), FaultError> {
    if known.contains(&id) {
        Ok(())
    } else {
        Err(FaultError::UnknownNode(id))
    }
}

fn check_link(from: NodeId, to: NodeId, known: &[NodeId]) -> Result<(), FaultError> {
    check_node(from, known)?;
    check_node(to, known)?;
    if from == to {
        return Err(FaultError::SelfLink(from));
    }
    Ok(())
}

/// The directed links between nodes in different groups; unnamed nodes share one group.
fn partition_cuts(
    group_of: &BTreeMap<NodeId, usize>,
    known: &[NodeId],
) -> BTreeSet<(NodeId, NodeId)> {
    let group = |id: &NodeId| group_of.get(id);
    let pairs = known.iter().flat_map(|a| known.iter().map(move |b| (*a, *b)));
    pairs.filter(|(a, b)| group(a) != group(b)).collect()
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
            self.in_flight.store(0, Ordering::Relaxed);
            lock(&self.held).clear(); // NB: what was delayed is dropped with the delayer
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
            router.arrive(heap.pop().expect("peeked"));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    //! The switches one message at a time: fake inboxes, no node threads.

    use std::sync::Arc;

    use crossbeam_channel::{bounded, Receiver};

    use super::*;
    use crate::message::{AppendEntries, AppendEntriesReply, RequestVote, RequestVoteReply};
    use crate::types::{LogIndex, Term};

    const N1: NodeId = NodeId(1);
    const N2: NodeId = NodeId(2);
    const N3: NodeId = NodeId(3);
    const KNOWN: [NodeId; 3] = [N1, N2, N3];

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    type Inboxes = BTreeMap<NodeId, Receiver<Message<u64>>>;

    /// A router with a delayer and an inbox for each of nodes 1..=3.
    fn network() -> (Arc<Router<u64>>, Inboxes) {
        let router = Arc::new(Router::new(7));
        Router::start_delayer(&router);
        let inboxes = KNOWN
            .iter()
            .map(|&id| {
                let (tx, rx) = bounded(64);
                router.connect(id, tx.into());
                (id, rx)
            })
            .collect();
        (router, inboxes)
    }

    fn message(from: NodeId, to: NodeId, body: Body<u64>) -> Message<u64> {
        Message { from, to, term: Term(1), body }
    }

    fn heartbeat(from: NodeId, to: NodeId) -> Message<u64> {
        let ae = AppendEntries {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: Vec::new(),
            leader_commit: LogIndex(0),
        };
        message(from, to, Body::AppendEntries(ae))
    }

    #[test]
    fn a_link_holds_delayed_messages_up_to_its_byte_budget() {
        let size = message_bytes(&heartbeat(N1, N2), |_| 8);
        let router = Arc::new(Router::new(7).holding_at_most(2 * size, |_| 8));
        Router::start_delayer(&router);
        let inboxes: Inboxes = [N2, N3]
            .into_iter()
            .map(|id| {
                let (tx, rx) = bounded(64);
                router.connect(id, tx.into());
                (id, rx)
            })
            .collect();
        let held = NetworkFaults { delay: ms(50)..ms(60), ..NetworkFaults::default() };
        router.set_faults(held).expect("valid");
        for _ in 0..3 {
            router.send(heartbeat(N1, N2));
        }
        router.send(heartbeat(N1, N3));
        assert_eq!((router.held_dropped(), router.held_bytes()), (1, 3 * size), "2 + 1 fit");
        for _ in 0..2 {
            inboxes[&N2].recv_timeout(Duration::from_secs(20)).expect("held, then delivered");
        }
        inboxes[&N3].recv_timeout(Duration::from_secs(20)).expect("its own link's budget");
        let deadline = Instant::now() + Duration::from_secs(20);
        while router.held_bytes() > 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(router.held_bytes(), 0, "what came due gave its bytes back");
        router.stop_delayer();
    }

    fn append_reply(from: NodeId, to: NodeId) -> Message<u64> {
        let reply = AppendEntriesReply::Success { match_index: LogIndex(0) };
        message(from, to, Body::AppendEntriesReply(reply))
    }

    fn vote_request(from: NodeId, to: NodeId) -> Message<u64> {
        let rv = RequestVote {
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
            pre_vote: false,
            transfer: false,
        };
        message(from, to, Body::RequestVote(rv))
    }

    fn vote_reply(from: NodeId, to: NodeId) -> Message<u64> {
        message(
            from,
            to,
            Body::RequestVoteReply(RequestVoteReply { granted: true, pre_vote: false }),
        )
    }

    /// How many messages `inbox` holds now (the router delivers synchronously when not delayed).
    fn count(inbox: &Receiver<Message<u64>>) -> usize {
        inbox.try_iter().count()
    }

    /// Waits (with a deadline) until the router holds nothing in flight.
    fn wait_drained(router: &Router<u64>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while router.in_flight() > 0 {
            assert!(Instant::now() < deadline, "delayed messages never came due");
            std::thread::sleep(ms(2));
        }
    }

    #[test]
    fn a_clean_network_takes_the_fast_path_and_delivers_at_once() {
        let (router, inboxes) = network();
        assert!(router.clean.load(Ordering::Acquire));
        router.send(heartbeat(N1, N2));
        assert_eq!(count(&inboxes[&N2]), 1);
        router.set_faults(NetworkFaults::default()).expect("valid");
        router.cut(N1, N2, &KNOWN).expect("known");
        router.restore(N1, N2, &KNOWN).expect("known");
        assert!(router.clean.load(Ordering::Acquire), "undoing every fault restores the fast path");
        router.stop_delayer();
    }

    #[test]
    fn a_one_way_cut_loses_only_that_direction() {
        let (router, inboxes) = network();
        router.cut(N1, N2, &KNOWN).expect("known");
        router.send(heartbeat(N1, N2));
        router.send(append_reply(N2, N1));
        router.send(heartbeat(N1, N3));
        assert_eq!(count(&inboxes[&N2]), 0, "1 -> 2 is cut");
        assert_eq!(count(&inboxes[&N1]), 1, "2 -> 1 still flows");
        assert_eq!(count(&inboxes[&N3]), 1, "1 -> 3 still flows");
        router.restore(N1, N2, &KNOWN).expect("known");
        router.send(heartbeat(N1, N2));
        assert_eq!(count(&inboxes[&N2]), 1);
        router.stop_delayer();
    }

    #[test]
    fn disconnect_and_connect_compose() {
        let (router, inboxes) = network();
        router.cut_off(N1, &KNOWN).expect("known");
        router.cut_off(N2, &KNOWN).expect("known");
        router.reconnect(N1, &KNOWN).expect("known");
        let only_2 = vec![(N1, N2), (N2, N1), (N2, N3), (N3, N2)];
        assert_eq!(router.blocked_links(), only_2, "2 stays cut off from everyone, 1 included");
        router.send(heartbeat(N1, N3));
        router.send(heartbeat(N1, N2));
        router.send(heartbeat(N3, N2));
        assert_eq!((count(&inboxes[&N3]), count(&inboxes[&N2])), (1, 0));
        router.reconnect(N2, &KNOWN).expect("known");
        assert_eq!(router.blocked_links(), vec![]);
        router.stop_delayer();
    }

    #[test]
    fn deafen_mute_partition_and_heal_edit_one_set_of_links() {
        let (router, _inboxes) = network();
        router.deafen(N1, &KNOWN).expect("known");
        assert_eq!(router.blocked_links(), vec![(N2, N1), (N3, N1)]);
        router.mute(N3, &KNOWN).expect("known");
        assert_eq!(router.blocked_links(), vec![(N2, N1), (N3, N1), (N3, N2)]);
        router.partition(&[vec![N1, N2]], &KNOWN).expect("known");
        assert_eq!(router.blocked_links(), vec![(N1, N3), (N2, N3), (N3, N1), (N3, N2)]);
        router
            .set_faults(NetworkFaults { drop_requests: 0.5, ..NetworkFaults::default() })
            .expect("valid");
        router.heal();
        assert_eq!(router.blocked_links(), vec![]);
        assert!(!router.clean.load(Ordering::Acquire), "heal leaves the probabilistic faults");
        router.cut(N1, N2, &KNOWN).expect("known");
        router.clear_faults();
        assert_eq!(router.blocked_links(), vec![(N1, N2)], "clear_faults leaves the cuts");
        router.reset();
        assert!(router.clean.load(Ordering::Acquire));
        router.stop_delayer();
    }

    #[test]
    fn drops_apply_to_requests_and_replies_separately() {
        let (router, inboxes) = network();
        let replies_lost = NetworkFaults { drop_replies: 1.0, ..NetworkFaults::default() };
        router.set_faults(replies_lost).expect("valid");
        router.send(heartbeat(N1, N2));
        router.send(vote_reply(N1, N2));
        router.send(append_reply(N1, N2));
        assert_eq!(count(&inboxes[&N2]), 1, "only the request arrives");
        let requests_lost = NetworkFaults { drop_requests: 1.0, ..NetworkFaults::default() };
        router.set_faults(requests_lost).expect("valid");
        router.send(heartbeat(N1, N2));
        router.send(vote_request(N1, N2));
        router.send(append_reply(N1, N2));
        assert_eq!(count(&inboxes[&N2]), 1, "only the reply arrives");
        router.stop_delayer();
    }

    #[test]
    fn duplication_applies_per_kind() {
        let (router, inboxes) = network();
        let faults = NetworkFaults { duplicate_requests: 1.0, ..NetworkFaults::default() };
        router.set_faults(faults).expect("valid");
        router.send(heartbeat(N1, N2));
        assert_eq!(count(&inboxes[&N2]), 2, "a request is delivered twice");
        router.send(append_reply(N1, N2));
        assert_eq!(count(&inboxes[&N2]), 1, "a reply once");
        let faults = NetworkFaults { duplicate: 1.0, ..NetworkFaults::default() };
        router.set_faults(faults).expect("valid");
        router.send(append_reply(N1, N2));
        assert_eq!(count(&inboxes[&N2]), 2, "`duplicate` covers replies too");
        router.stop_delayer();
    }

    #[test]
    fn delay_replies_holds_replies_only() {
        let (router, inboxes) = network();
        let faults = NetworkFaults { delay_replies: ms(200)..ms(200), ..NetworkFaults::default() };
        router.set_faults(faults).expect("valid");
        let sent = Instant::now();
        router.send(append_reply(N1, N2));
        router.send(heartbeat(N1, N2));
        let first = inboxes[&N2].try_recv().expect("the request is not held");
        assert!(matches!(first.body, Body::AppendEntries(_)));
        let reply = inboxes[&N2].recv_timeout(Duration::from_secs(20)).expect("the reply arrives");
        assert!(matches!(reply.body, Body::AppendEntriesReply(_)));
        assert!(sent.elapsed() >= ms(200), "held {:?}", sent.elapsed());
        router.stop_delayer();
    }

    #[test]
    fn a_long_hold_delivers_late_and_out_of_order() {
        let (router, inboxes) = network();
        let faults = NetworkFaults {
            long_hold: 1.0,
            long_hold_delay: ms(2000)..ms(2100),
            ..NetworkFaults::default()
        };
        router.set_faults(faults).expect("valid");
        let sent = Instant::now();
        router.send(vote_request(N1, N2));
        router.clear_faults();
        router.send(heartbeat(N1, N2));
        assert_eq!((router.in_flight(), router.long_held()), (1, 1));
        let first = inboxes[&N2].try_recv().expect("the later message arrives first");
        assert!(matches!(first.body, Body::AppendEntries(_)));
        let held = inboxes[&N2].recv_timeout(Duration::from_secs(20)).expect("held, not lost");
        assert!(matches!(held.body, Body::RequestVote(_)));
        assert!(sent.elapsed() >= ms(2000), "held only {:?}", sent.elapsed());
        wait_drained(&router);
        router.stop_delayer();
    }

    #[test]
    fn a_cut_loses_messages_already_in_flight_on_that_link() {
        let (router, inboxes) = network();
        // Long enough that the cut surely comes first, even on a loaded machine.
        let faults = NetworkFaults { delay: ms(2000)..ms(2000), ..NetworkFaults::default() };
        router.set_faults(faults).expect("valid");
        router.send(heartbeat(N1, N2));
        router.send(heartbeat(N1, N3));
        router.cut(N1, N2, &KNOWN).expect("known");
        wait_drained(&router);
        assert_eq!((count(&inboxes[&N2]), count(&inboxes[&N3])), (0, 1));
        router.stop_delayer();
    }

    #[test]
    fn spared_traffic_passes_clean() {
        let (router, inboxes) = network();
        let faults = NetworkFaults {
            drop_requests: 1.0,
            drop_replies: 1.0,
            spare_elections: true,
            ..NetworkFaults::default()
        };
        router.set_faults(faults).expect("valid");
        router.send(vote_request(N1, N2));
        router.send(vote_reply(N1, N2));
        router.send(heartbeat(N1, N2));
        router.send(append_reply(N1, N2));
        let kinds: Vec<_> = inboxes[&N2].try_iter().map(|m| m.body).collect();
        assert!(
            matches!(kinds[..], [Body::RequestVote(_), Body::RequestVoteReply(_)]),
            "{kinds:?}"
        );
        router.stop_delayer();
    }

    #[test]
    fn link_faults_replace_the_network_wide_ones_for_one_direction() {
        let (router, inboxes) = network();
        let lossy = NetworkFaults { drop_requests: 1.0, ..NetworkFaults::default() };
        router.set_link_faults(N1, N2, lossy.clone(), &KNOWN).expect("valid");
        router.send(heartbeat(N1, N2));
        router.send(heartbeat(N2, N1));
        router.send(heartbeat(N1, N3));
        assert_eq!(
            (count(&inboxes[&N2]), count(&inboxes[&N1]), count(&inboxes[&N3])),
            (0, 1, 1),
            "only 1 -> 2 is lossy"
        );
        router.set_faults(lossy).expect("valid");
        router.set_link_faults(N1, N2, NetworkFaults::default(), &KNOWN).expect("valid");
        router.send(heartbeat(N1, N2));
        router.send(heartbeat(N2, N1));
        assert_eq!((count(&inboxes[&N2]), count(&inboxes[&N1])), (1, 0), "1 -> 2 is exempt");
        router.clear_link_faults(N1, N2, &KNOWN).expect("known");
        router.send(heartbeat(N1, N2));
        assert_eq!(count(&inboxes[&N2]), 0, "the network-wide faults apply again");
        router.stop_delayer();
    }

    #[test]
    fn refused_settings_change_nothing() {
        let (router, _inboxes) = network();
        let ghost = NodeId(9);
        assert_eq!(router.cut(N1, ghost, &KNOWN), Err(FaultError::UnknownNode(ghost)));
        assert_eq!(router.cut_off(ghost, &KNOWN), Err(FaultError::UnknownNode(ghost)));
        assert_eq!(router.restore(N2, N2, &KNOWN), Err(FaultError::SelfLink(N2)));
        let bad = NetworkFaults { long_hold: 0.5, ..NetworkFaults::default() };
        assert_eq!(
            router.set_link_faults(N1, N2, bad.clone(), &KNOWN),
            Err(FaultError::EmptyRange { field: "long_hold_delay" })
        );
        assert_eq!(
            router.set_faults(bad),
            Err(FaultError::EmptyRange { field: "long_hold_delay" })
        );
        // "Hold forever" would overflow the delivery instant: refused, with what to do instead.
        let forever = Duration::MAX..Duration::MAX;
        let held = NetworkFaults { delay: forever.clone(), ..NetworkFaults::default() };
        let too_long = FaultError::DelayTooLong { field: "delay", value: Duration::MAX };
        assert_eq!(router.set_faults(held), Err(too_long.clone()));
        assert!(too_long.to_string().contains("drop them or cut the link"), "{too_long}");
        assert!(router.clean.load(Ordering::Acquire));
        assert_eq!(router.blocked_links(), vec![]);
        router.stop_delayer();
    }
}
