//! One node's two worker threads (`raft-n<id>` and `raft-n<id>-b`), which take turns running
//! the node loop: wait for a message, a client request, a shutdown or a tick, then feed it to
//! the node's [`Driver`].
//!
//! The driver only queues committed entries (its `Backlog`). After a step that queued some, the
//! worker running the loop lets go of it and applies them itself, then takes the loop back: for
//! a fast state machine an answer crosses no thread, as if applied inline. Meanwhile the other
//! worker waits, waking once per tick; if it finds the loop free (an `apply` is running long),
//! it takes the loop over, so heartbeats keep flowing however slow `apply` is, and the workers
//! swap roles.
//!
//! The worker running the loop holds the driver only for one step at a time, and waits for input
//! without it. So a leader of the same process with nothing of its own to do can run a step for
//! this node ([`Peers`]): a leader waiting for acknowledgements handles its followers' waiting
//! AppendEntries itself, and then their replies, instead of waiting for their threads to be
//! scheduled. On a machine with fewer cores than busy threads, those hops are most of a commit.
//! A caller blocked on a leader's answer does the same ([`Assist`], `Config::callers_help`):
//! it runs the leader's waiting acknowledgements (or its followers' messages) and applies
//! what they commit, so whichever thread holds a core moves the commit on.
//!
//! The only blocking the loop does is waiting for input (sends go through the transport, which
//! drops rather than blocks), and waiting for its applier while more than
//! `Config::max_apply_backlog` entries wait to be applied: the loop then stalls, taking no
//! input, so a state machine slower than the cluster commits bounds its node's memory instead
//! of growing a queue without end (see [`stall`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Select, Sender, TryRecvError};

use super::queue::QueueCloser;
use super::syncer::Syncer;
use crate::core::Role;
use crate::error::Error;
use crate::message::{Message, Snapshot};
use crate::node::{
    execute_all, panic_message, step_caught, Assist, Backlog, Driver, NodeStatus, Request,
    MAX_HELPING_WITHOUT_YIELD,
};
use crate::state_machine::StateMachine;
use crate::storage::Storage;
use crate::transport::{BudgetCloser, InboxReceiver, Transport};
use crate::types::NodeId;

/// The driver as the thread runtime builds it: storage and transport chosen at run time.
pub(crate) type NodeDriver<S> = Driver<
    S,
    Box<dyn Storage<<S as StateMachine>::Command>>,
    Box<dyn Transport<<S as StateMachine>::Command>>,
>;

/// How many peer messages to handle before looking at the other channels again.
const MAX_MESSAGE_BURST: usize = 256;

/// The node's channels.
pub(crate) struct Channels<S: StateMachine> {
    pub inbox: InboxReceiver<S::Command>,
    pub requests: Receiver<Request<S>>,
    pub shutdown: Receiver<()>,
    /// Closes the request queue's byte budget when the node stops, so that callers waiting
    /// for room in it hear `NodeDown`.
    pub _queued: Option<BudgetCloser>,
    /// Closes the request queue when the node stops: what it never took answers `NodeDown`.
    pub _requests: QueueCloser<S>,
}

/// Why a node stopped on its own, shared with the [`crate::Cluster`].
pub(crate) type Failure = Arc<Mutex<Option<Error>>>;

/// The nodes of one process (one [`crate::Cluster`]): a leader among them with nothing of its
/// own to do runs steps for the others. A node is in it from its start until it is joined.
pub(crate) type Peers = Arc<PeerSet>;

/// See [`Peers`].
#[derive(Default)]
pub(crate) struct PeerSet {
    nodes: RwLock<PeerVec>,
    /// Test-only bug: a leader that helped a follower applies what the follower committed,
    /// on the leader's thread (the first draft of helping).
    #[cfg(test)]
    pub helper_applies: AtomicBool,
    /// Test-only bug: a caller assisting the leader runs every task its applier has queued,
    /// snapshots included, on the caller's thread.
    #[cfg(test)]
    pub callers_take_snapshots: AtomicBool,
}

/// The nodes of a [`PeerSet`], as its read lock shows them.
type PeerList = [(NodeId, Arc<dyn Help>)];

/// What a [`PeerSet`]'s lock guards.
type PeerVec = Vec<(NodeId, Arc<dyn Help>)>;

/// A node another node's worker, or a caller, can run a step for.
pub(crate) trait Help: Send + Sync {
    /// Handles this node's waiting peer messages if nobody else is; whether it did.
    fn help(&self) -> bool;

    /// What a caller waiting for this node's answer runs (see [`Assist`]); `peers` are the
    /// nodes it may help in turn. Whether it did anything.
    fn assist(&self, peers: &PeerList) -> bool;
}

/// A caller's way to a node of a [`PeerSet`]: through the set, so that a caller never holds
/// a node that left it (a killed node's driver and storage drop when its workers return).
struct AssistNode {
    peers: Peers,
    id: NodeId,
}

impl Assist for AssistNode {
    fn assist(&self) -> bool {
        let Some(peers) = read_if_free(&self.peers) else { return false };
        let node = peers.iter().find(|(id, _)| *id == self.id);
        node.is_some_and(|(_, node)| node.assist(&peers))
    }

    fn fork(&self) -> Option<Arc<dyn Assist>> {
        Some(Arc::new(AssistNode { peers: Arc::clone(&self.peers), id: self.id }))
    }
}

/// What the worker running the loop (or a node helping) locks for one step.
struct Node<S: StateMachine> {
    driver: NodeDriver<S>,
    channels: Channels<S>,
    ticker: Receiver<Instant>,
    /// Runs the driver's fsyncs off this loop.
    syncer: Syncer,
    /// Set once the node failed: from then on it only answers requests with this error.
    failed: Option<Error>,
}

/// Clones of the node's receivers: what the loop waits on without holding the driver.
struct Watch<S: StateMachine> {
    inbox: Receiver<(Message<S::Command>, usize)>,
    requests: Receiver<Request<S>>,
    shutdown: Receiver<()>,
    ticker: Receiver<Instant>,
    synced: Receiver<std::io::Result<()>>,
    taken: Receiver<Arc<Snapshot>>,
    /// A node that ran a step for this one left entries to apply.
    nudged: Receiver<()>,
}

impl<S: StateMachine> Watch<S> {
    /// Whether input is waiting. Timers (a clock read) only when `timers`.
    fn pending(&self, timers: bool) -> bool {
        !self.inbox.is_empty()
            || !self.requests.is_empty()
            || !self.synced.is_empty()
            || !self.taken.is_empty()
            || !self.nudged.is_empty()
            || (timers && (!self.ticker.is_empty() || !self.shutdown.is_empty()))
    }

    /// A `Select` over every receiver, to park on.
    fn select(&self) -> Select<'_> {
        let mut select = Select::new();
        select.recv(&self.inbox);
        select.recv(&self.requests);
        select.recv(&self.shutdown);
        select.recv(&self.ticker);
        select.recv(&self.synced);
        select.recv(&self.taken);
        select.recv(&self.nudged);
        select
    }
}

/// What a node's two workers (and helping nodes) share.
struct Shared<S: StateMachine> {
    id: NodeId,
    /// Held by the worker running the loop, waiting for input included; let go to apply.
    running: Mutex<()>,
    /// Held for one step at a time.
    node: Mutex<Node<S>>,
    watch: Watch<S>,
    backlog: Arc<Backlog<S>>,
    /// The node is stopping: both workers return.
    done: AtomicBool,
    /// The node was leader after its last step: only a leader runs steps for its peers.
    leading: AtomicBool,
    /// Where the idle worker waits (woken early only when the node stops).
    idle: (Mutex<()>, Condvar),
    tick: Duration,
    /// How many times the idle loop yields, polling its channels, before it parks.
    spin_rounds: u32,
    failure: Failure,
    peers: Peers,
    /// Tells the loop that a step run by another node left entries to apply (`Watch::nudged`).
    nudge: Sender<()>,
}

/// A node's running workers.
pub(crate) struct NodeThreads {
    id: NodeId,
    threads: Vec<JoinHandle<()>>,
    peers: Peers,
}

impl NodeThreads {
    /// What a caller blocked on this node's receipts runs instead of yielding.
    pub fn assist(&self) -> Arc<dyn Assist> {
        Arc::new(AssistNode { peers: Arc::clone(&self.peers), id: self.id })
    }

    /// Whether both workers have returned.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for both workers to return (after a shutdown: within one `apply`).
    pub fn join(mut self) {
        self.leave();
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
    }

    /// No other node runs a step for this one from now on (the write lock waits for one that
    /// is), so nothing outlives the join.
    fn leave(&self) {
        write(&self.peers).retain(|(id, _)| *id != self.id);
    }
}

impl Drop for NodeThreads {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The set's read lock, unless a writer holds it or waits for it. Helping is optional, and
/// std's lock makes a new reader wait behind a waiting writer: a node starting or leaving
/// would otherwise hold every helping leader's loop (no heartbeats) and every assisting caller
/// until the readers already in, one maybe applying a long batch, were done.
fn read_if_free(peers: &Peers) -> Option<std::sync::RwLockReadGuard<'_, PeerVec>> {
    match peers.nodes.try_read() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

fn write(peers: &Peers) -> std::sync::RwLockWriteGuard<'_, PeerVec> {
    peers.nodes.write().unwrap_or_else(|p| p.into_inner())
}

/// Starts `driver`'s two workers. They run until `channels.shutdown` fires or its sender drops.
/// A failure (a panic on the loop, a failed write, a state machine panic) leaves the node
/// failed (`node/failure.rs`, the path the simulator runs too): what waits on it is answered
/// with the failure at once; it takes no part in the protocol any more but still answers
/// requests with the failure, until it is killed.
pub(crate) fn spawn<S: StateMachine>(
    id: NodeId,
    driver: NodeDriver<S>,
    channels: Channels<S>,
    tick: Duration,
    spin_rounds: u32,
    failure: Failure,
    peers: Peers,
) -> Result<NodeThreads, Error> {
    let backlog = Arc::clone(driver.backlog().expect("the thread runtime defers its applies"));
    let ticker = crossbeam_channel::tick(tick);
    let syncer = Syncer::new(id);
    let (nudge, nudged) = bounded(1);
    backlog.wake_with(nudge.clone());
    let watch = Watch {
        inbox: channels.inbox.channel().clone(),
        requests: channels.requests.clone(),
        shutdown: channels.shutdown.clone(),
        ticker: ticker.clone(),
        synced: syncer.done().clone(),
        taken: driver.taken().clone(),
        nudged,
    };
    let node = Node { driver, channels, ticker, syncer, failed: None };
    let shared = Arc::new(Shared {
        id,
        running: Mutex::new(()),
        node: Mutex::new(node),
        watch,
        backlog,
        done: AtomicBool::new(false),
        leading: AtomicBool::new(false),
        idle: (Mutex::new(()), Condvar::new()),
        tick,
        spin_rounds,
        failure,
        peers: Arc::clone(&peers),
        nudge,
    });
    write(&peers).push((id, Arc::clone(&shared) as Arc<dyn Help>));
    let mut threads = NodeThreads { id, threads: Vec::new(), peers };
    for name in [format!("raft-n{}", id.0), format!("raft-n{}-b", id.0)] {
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let _span = tracing::info_span!("node", id = %id).entered();
            work(&worker);
        });
        match thread {
            Ok(thread) => threads.threads.push(thread),
            Err(e) => {
                stop(&shared);
                threads.join();
                return Err(Error::Spawn(e.to_string()));
            }
        }
    }
    Ok(threads)
}

/// One worker: runs the loop while it holds it, applies what the loop queued, and waits while
/// the other worker holds the loop.
fn work<S: StateMachine>(shared: &Shared<S>) {
    // NB: kept across turns at the loop: applying between them is not yielding.
    let mut last_yield = Instant::now();
    while !shared.done.load(Ordering::Acquire) {
        let running = match shared.running.try_lock() {
            Ok(running) => running,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                wait_idle(shared);
                continue;
            }
        };
        let go_on = run_loop(shared, &mut last_yield);
        drop(running); // NB: before applying, so the other worker can take over a long apply
        if go_on {
            shared.backlog.drain();
        } else {
            stop(shared);
        }
    }
    // NB: now, not when the last reference goes: a handle kept past a kill holds the backlog.
    shared.backlog.retire();
}

fn wait_idle<S: StateMachine>(shared: &Shared<S>) {
    let (mutex, condvar) = &shared.idle;
    let guard = mutex.lock().unwrap_or_else(|p| p.into_inner());
    if !shared.done.load(Ordering::Acquire) {
        let _ = condvar.wait_timeout(guard, shared.tick);
    }
}

fn stop<S: StateMachine>(shared: &Shared<S>) {
    shared.done.store(true, Ordering::Release);
    shared.backlog.stop();
    let _guard = shared.idle.0.lock().unwrap_or_else(|p| p.into_inner());
    shared.idle.1.notify_all();
}

impl<S: StateMachine> Shared<S> {
    /// A leader runs a step for another node of this process that has peer messages waiting;
    /// whether it did.
    fn help_peers(&self) -> bool {
        // NB: only a leader helps. Its commits wait for its followers' steps; a follower's
        // wait for the leader is not on any caller's path, and a commit found by a follower
        // helping would need a wake-up for the leader to apply it.
        if !self.leading.load(Ordering::Relaxed) {
            return false;
        }
        let Some(peers) = read_if_free(&self.peers) else { return false };
        self.help_these(&peers)
    }

    /// [`Shared::help_peers`] with the set's read lock held already (it must not be taken
    /// twice: a writer waiting between the two would wait for this reader forever).
    fn help_these(&self, peers: &PeerList) -> bool {
        self.leading.load(Ordering::Relaxed)
            && peers.iter().any(|(id, peer)| *id != self.id && peer.help())
    }
}

/// What became of a step run for a node by another thread.
enum Ran {
    /// The node's driver was busy (its own loop, another helper), or the node failed.
    Not,
    /// The step failed the node: its own worker was woken to serve the failure.
    Failed,
    Done,
}

impl<S: StateMachine> Shared<S> {
    /// Runs `work` on this node's driver from another thread (a helping leader, a caller),
    /// unless someone else holds the driver or the node failed. A failure it meets is
    /// recorded, and the node's own worker woken to serve it.
    fn run_for(&self, work: impl FnOnce(&mut Node<S>) -> Result<(), Error>) -> Ran {
        let mut node = match self.node.try_lock() {
            Ok(node) => node,
            Err(_) => return Ran::Not,
        };
        if node.failed.is_some() {
            return Ran::Not;
        }
        let _span = tracing::info_span!("node", id = %self.id).entered();
        let result = step_caught(self.id, &mut *node, |node: &mut Node<S>| {
            work(node).and_then(|()| submit_sync(node))
        });
        match result.err().or_else(|| node.driver.failure()) {
            Some(error) => {
                fail(&mut node, self, error);
                let _ = self.nudge.try_send(());
                Ran::Failed
            }
            None => Ran::Done,
        }
    }
}

impl<S: StateMachine> Help for Shared<S> {
    fn help(&self) -> bool {
        // NB: a node stalled on its apply backlog takes no input, from a helper neither: the
        // helper then finds nothing to do here, and yields or parks as it would.
        if self.watch.inbox.is_empty()
            || self.done.load(Ordering::Acquire)
            || self.backlog.over_limit()
        {
            return false;
        }
        let ran = self.run_for(|node| match node.channels.inbox.try_recv() {
            Ok(msg) => on_messages(&mut node.driver, msg, &node.channels.inbox),
            Err(_) => Ok(()),
        });
        match ran {
            Ran::Not => return false,
            Ran::Failed => return true,
            Ran::Done => {}
        }
        // NB: the node's own worker applies: this thread runs another node's loop, which must
        // not wait for a long `apply` here.
        if self.backlog.needs_drain() {
            #[cfg(test)]
            if self.peers.helper_applies.load(Ordering::Relaxed) {
                self.backlog.drain();
                return true;
            }
            let _ = self.nudge.try_send(());
        }
        true
    }

    /// A caller blocked on this node's answer runs what the node's idle loop would, if it
    /// leads: the acknowledgements and sync outcomes waiting for it, else its followers'
    /// waiting messages (`help_peers`); then applies, on its own thread, what that committed.
    /// New requests stay for the node's loop, which takes them as one batch.
    fn assist(&self, peers: &PeerList) -> bool {
        // NB: nor from a caller: a caller of a stalled leader waits as it would unassisted.
        if !self.leading.load(Ordering::Relaxed)
            || self.done.load(Ordering::Acquire)
            || self.backlog.over_limit()
        {
            return false;
        }
        if self.watch.inbox.is_empty() && self.watch.synced.is_empty() {
            return self.help_these(peers);
        }
        let ran = self.run_for(|node| {
            // NB: a closed channel (`None`) is the node's own loop's to act on.
            let result = handle_one(node, false).map(drop);
            let leading = node.driver.core().role() == Role::Leader;
            self.leading.store(leading, Ordering::Relaxed);
            result
        });
        match ran {
            Ran::Not => return false,
            Ran::Failed => return true,
            Ran::Done => {}
        }
        #[cfg(test)]
        if self.peers.callers_take_snapshots.load(Ordering::Relaxed) {
            self.backlog.drain();
            return true;
        }
        if self.backlog.needs_drain() && self.backlog.drain_some() {
            let _ = self.nudge.try_send(()); // left a snapshot, or a failure, to the node
        }
        true
    }
}

/// What one step of the loop found.
enum Step {
    /// Handled some input.
    Worked,
    /// Nothing was waiting.
    Idle,
    /// The node is stopping.
    Stop,
}

/// Runs the loop until a step queued work for the applier (true) or the node stops (false).
fn run_loop<S: StateMachine>(shared: &Shared<S>, last_yield: &mut Instant) -> bool {
    let mut select = shared.watch.select();
    loop {
        // NB: a node stopped before its shutdown message could reach it (its second worker
        // failed to start) ends here: nothing else would end this loop.
        if shared.done.load(Ordering::Relaxed) {
            return false;
        }
        // NB: the one cost of the limit on the hot path: a relaxed load before each step.
        if shared.backlog.over_limit() {
            match stall(shared) {
                Some(go_on) => return go_on,
                None => continue,
            }
        }
        let _ = shared.watch.nudged.try_recv();
        let step = {
            let mut node = match shared.node.try_lock() {
                Ok(node) => node,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    // Another node runs a step for this one: it is short, and a thread
                    // blocked on the lock would take several microseconds to wake.
                    std::thread::yield_now();
                    continue;
                }
            };
            if let Some(error) = node.failed.clone() {
                // NB: what the driver queued for the applier before it failed (committed
                // entries, a status, a proposal's wait) is drained like any backlog: by this
                // worker with the loop let go, while the other serves the failure and so sees
                // a shutdown at once. Drained here, holding the loop, a long backlog held up
                // every kill for all of it.
                if shared.backlog.needs_drain() {
                    return true;
                }
                return serve_failed(&mut node, shared, error);
            }
            let step = step_caught(shared.id, &mut *node, step);
            let leading = node.failed.is_none() && node.driver.core().role() == Role::Leader;
            shared.leading.store(leading, Ordering::Relaxed);
            match step {
                Ok(step) => step,
                Err(error) => {
                    fail(&mut node, shared, error);
                    continue;
                }
            }
        };
        match step {
            Step::Stop => return false,
            _ if shared.backlog.needs_drain() => return true,
            Step::Worked => {}
            Step::Idle => wait_for_input(shared, &mut select, last_yield),
        }
    }
}

/// More than `Config::max_apply_backlog` entries wait for the state machine: the loop takes
/// no input (peer messages, requests, ticks) until the applier has brought them down to the
/// limit, as etcd's loop blocks handing committed entries to a slow applier. Meanwhile it
/// only finishes what it took already (sync outcomes; snapshots taken, which compact the
/// log), and looks for a shutdown once a tick. `None`: take input again; `Some(go_on)`:
/// leave the loop, to apply what nobody is applying (true) or to stop (false).
///
/// NB: its ticker's missed ticks are dropped (a crossbeam ticker holds one), so its timers
/// stop with it, as in a long pause: a follower resumes with the messages that waited (the
/// leader's among them) before its election timer runs on, and does not campaign at once.
fn stall<S: StateMachine>(shared: &Shared<S>) -> Option<bool> {
    shared.backlog.note_stall();
    tracing::debug!(entries = shared.backlog.entries(), "apply backlog over its limit: stalled");
    loop {
        if shared.done.load(Ordering::Acquire) {
            return Some(false);
        }
        if shared.backlog.needs_drain() {
            // Nobody applies (a caller left the rest): this worker does; the other takes the
            // loop over meanwhile, and stalls in turn.
            return Some(true);
        }
        let below = shared.backlog.wait_below_limit(shared.tick);
        match shared.watch.shutdown.try_recv() {
            Ok(()) | Err(TryRecvError::Disconnected) => return Some(false),
            Err(TryRecvError::Empty) => {}
        }
        settle(shared);
        if below && !shared.backlog.over_limit() {
            return None;
        }
    }
}

/// While stalled: runs what finishes work the node took already (a sync's outcome, a
/// snapshot taken), never new input. Skipped while another thread holds the driver.
fn settle<S: StateMachine>(shared: &Shared<S>) {
    let Ok(mut node) = shared.node.try_lock() else { return };
    if node.failed.is_some() {
        return;
    }
    let result = step_caught(shared.id, &mut *node, settle_node)
        .and_then(|()| node.driver.failure().map_or(Ok(()), Err));
    if let Err(error) = result {
        fail(&mut node, shared, error);
    }
}

fn settle_node<S: StateMachine>(node: &mut Node<S>) -> Result<(), Error> {
    let Node { driver, syncer, .. } = node;
    while let Ok(outcome) = syncer.done().try_recv() {
        driver.sync_done(outcome, &mut execute_all)?;
    }
    while let Ok(snapshot) = driver.taken().try_recv() {
        driver.snapshot_taken(snapshot, &mut execute_all)?;
    }
    submit_sync(node)
}

/// Records the node's failure: its loop serves it from the next step on. The rest (answering
/// what waits, withdrawing the lease) is the path the simulator runs too ([`Driver::fail`]).
fn fail<S: StateMachine>(node: &mut Node<S>, shared: &Shared<S>, error: Error) {
    *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
    shared.leading.store(false, Ordering::Relaxed);
    node.driver.fail(&error);
    node.failed = Some(error);
}

/// Handles one input that is waiting (a burst of peer messages, a batch of requests), then a
/// due tick or a shutdown, which must not starve.
fn step<S: StateMachine>(node: &mut Node<S>) -> Result<Step, Error> {
    let worked = match handle_one(node, true)? {
        Some(worked) => worked,
        None => return Ok(Step::Stop),
    };
    let Node { driver, channels, ticker, .. } = node;
    // NB: whatever was found above, look at the timers too: neither may starve.
    let ticked = match ticker.try_recv() {
        Ok(due) => driver.tick_at(due, &mut execute_all).map(|()| true)?,
        Err(_) => false,
    };
    match channels.shutdown.try_recv() {
        Ok(()) | Err(TryRecvError::Disconnected) => return Ok(Step::Stop),
        Err(TryRecvError::Empty) => {}
    }
    submit_sync(node)?;
    if let Some(error) = node.driver.failure() {
        return Err(error);
    }
    Ok(if worked || ticked { Step::Worked } else { Step::Idle })
}

/// Hands the fsync the step asked for, if any, to the node's syncer.
fn submit_sync<S: StateMachine>(node: &mut Node<S>) -> Result<(), Error> {
    match node.driver.take_sync_job() {
        Some(job) => node.syncer.submit(job),
        None => Ok(()),
    }
}

/// Handles one input that is waiting: a sync's outcome, a burst of peer messages, or (only if
/// `requests`) a batch of requests or a snapshot taken. Whether one was waiting; `None` if a
/// channel closed (the node stops).
fn handle_one<S: StateMachine>(node: &mut Node<S>, requests: bool) -> Result<Option<bool>, Error> {
    let Node { driver, channels, syncer, .. } = node;
    let found = match syncer.done().try_recv() {
        Ok(outcome) => Some(driver.sync_done(outcome, &mut execute_all)),
        Err(_) => match channels.inbox.try_recv() {
            Ok(msg) => Some(on_messages(driver, msg, &channels.inbox)),
            Err(TryRecvError::Disconnected) => return Ok(None),
            Err(TryRecvError::Empty) if !requests => None,
            Err(TryRecvError::Empty) => match channels.requests.try_recv() {
                Ok(req) => {
                    let more = &mut channels.requests.try_iter();
                    Some(driver.handle(req, more, &mut execute_all))
                }
                Err(TryRecvError::Disconnected) => return Ok(None),
                Err(TryRecvError::Empty) => match driver.taken().try_recv() {
                    Ok(snapshot) => Some(driver.snapshot_taken(snapshot, &mut execute_all)),
                    Err(_) => None,
                },
            },
        },
    };
    Ok(Some(found.transpose()?.is_some()))
}

/// Waits for input without holding the driver: yields a little first (the next message of a
/// round trip usually comes within microseconds, and a parked thread takes several to wake),
/// running steps for the process's other nodes instead of yielding where they have messages
/// waiting; then parks until input comes or a tick passes.
fn wait_for_input<S: StateMachine>(
    shared: &Shared<S>,
    select: &mut Select<'_>,
    last_yield: &mut Instant,
) {
    let (mut polls, mut yields) = (0u32, 0);
    while yields < shared.spin_rounds {
        polls = polls.wrapping_add(1);
        // NB: a due tick or a shutdown ends the spin too, however many rounds it was given:
        // a node spinning with nothing to receive must still time out and stop.
        if shared.watch.pending(polls % 16 == 0) {
            return;
        }
        // NB: a step run for another node is work, not waiting: it does not count as a round.
        if !shared.help_peers() {
            std::thread::yield_now();
            yields += 1;
            *last_yield = Instant::now();
        } else if last_yield.elapsed() > MAX_HELPING_WITHOUT_YIELD {
            std::thread::yield_now();
            *last_yield = Instant::now();
        }
    }
    let _ = select.ready_timeout(shared.tick);
    *last_yield = Instant::now();
}

/// A failed node answers every request with its failure until it is killed (false), or until
/// work for its applier is left that nobody runs (true: drain it, with the loop let go).
/// Dropping what it refuses runs the user's code (a command's `Drop`): a panic there is logged
/// and the node serves on.
fn serve_failed<S: StateMachine>(node: &mut Node<S>, shared: &Shared<S>, error: Error) -> bool {
    loop {
        match catch_unwind(AssertUnwindSafe(|| serve_failure(node, shared, &error))) {
            Ok(go_on) => return go_on,
            Err(payload) => {
                let message = panic_message(&*payload);
                tracing::error!(%message, "panic while refusing a request on a failed node");
            }
        }
    }
}

fn serve_failure<S: StateMachine>(node: &mut Node<S>, shared: &Shared<S>, error: &Error) -> bool {
    let core = node.driver.core().status();
    let channels = &node.channels;
    loop {
        select! {
            recv(channels.shutdown) -> _ => return false,
            // NB: a lease reader that held the applier as the node failed leaves it what it
            // may not run itself (`Backlog::query_now`), and says so here.
            recv(shared.watch.nudged) -> _ => if shared.backlog.needs_drain() { return true },
            recv(channels.inbox.channel()) -> msg => match msg {
                Ok((msg, bytes)) => drop(channels.inbox.taken(msg, bytes)),
                Err(_) => return false,
            },
            recv(channels.requests) -> req => match req.map(|mut req| {
                node.driver.give_back_request(&mut req);
                req
            }) {
                Ok(Request::Propose { responder, .. }) => responder.finish(Err(error.clone())),
                Ok(Request::ChangeMembership { reply, .. }) => { let _ = reply.send(Err(error.clone())); }
                Ok(Request::Compact { reply }) => { let _ = reply.send(Err(error.clone())); }
                Ok(Request::Read { read, .. }) => crate::node::fail_read(read, error.clone()),
                Ok(Request::TransferLeadership { reply, .. }) => { let _ = reply.send(Err(error.clone())); }
                Ok(forward @ Request::Forward(_)) => forward.fail(error.clone()),
                // NB: dropped: a failed node leads nothing.
                Ok(Request::CoreStatus { .. }) => {}
                Ok(Request::Status { reply }) => {
                    let status = NodeStatus {
                        core: core.clone(),
                        digest: 0,
                        rpcs: Default::default(),
                        failure: Some(error.clone()),
                        metrics: Default::default(),
                    };
                    let _ = reply.send(status);
                }
                Err(_) => return false,
            },
        }
    }
}

fn on_messages<S: StateMachine>(
    driver: &mut NodeDriver<S>,
    first: Message<S::Command>,
    inbox: &InboxReceiver<S::Command>,
) -> Result<(), Error> {
    // One batch: a burst of AppendEntries costs a follower one sync, not one each.
    driver.begin_batch();
    driver.receive(first, &mut execute_all)?;
    for msg in inbox.try_iter().take(MAX_MESSAGE_BURST) {
        driver.receive(msg, &mut execute_all)?;
    }
    driver.end_batch(&mut execute_all)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::PeerSet;
    use crate::StateMachine;
    use crate::{Cluster, Config, KvCommand, KvOutput, KvStateMachine, LogIndex, NodeId};

    /// The threads other than a node's own workers that ran its state machine.
    #[derive(Clone, Default, Debug)]
    struct Strangers {
        applied: BTreeSet<String>,
        snapshotted: BTreeSet<String>,
    }

    impl Strangers {
        fn applied(&self, prefix: &str) -> bool {
            self.applied.iter().any(|name| name.starts_with(prefix))
        }
    }

    /// A KV state machine that notes every thread which is not one of its node's own workers.
    struct OwnThreads {
        id: NodeId,
        kv: KvStateMachine,
        strangers: Arc<Mutex<Strangers>>,
    }

    impl OwnThreads {
        /// This thread's name if it is not one of the node's workers.
        fn stranger(&self) -> Option<String> {
            let name = std::thread::current().name().unwrap_or("unnamed").to_owned();
            let own = format!("raft-n{}", self.id.0);
            (name != own && name != format!("{own}-b")).then_some(name)
        }
    }

    impl StateMachine for OwnThreads {
        type Command = KvCommand;
        type Output = KvOutput;

        fn apply(&mut self, index: LogIndex, command: &KvCommand) -> KvOutput {
            if let Some(name) = self.stranger() {
                self.strangers.lock().unwrap().applied.insert(name);
            }
            self.kv.apply(index, command)
        }

        fn snapshot(&self) -> Vec<u8> {
            if let Some(name) = self.stranger() {
                self.strangers.lock().unwrap().snapshotted.insert(name);
            }
            self.kv.snapshot()
        }

        fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
            self.kv.restore(snapshot)
        }
    }

    /// Rounds of 16 blocked callers (threads `caller-<t>`) writing 100 keys each, until
    /// `enough` holds of the strangers seen or `rounds` ran; the strangers seen.
    fn strangers_under_load(
        config: Config,
        switch: impl Fn(&PeerSet),
        rounds: usize,
        enough: impl Fn(&Strangers) -> bool,
    ) -> Strangers {
        let strangers = Arc::new(Mutex::new(Strangers::default()));
        let seen = Arc::clone(&strangers);
        let factory =
            move |id| OwnThreads { id, kv: KvStateMachine::new(), strangers: seen.clone() };
        let cluster = Cluster::new(config, 3, factory).expect("start");
        switch(&cluster.peers);
        let client = cluster.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        for round in 0..rounds {
            let callers: Vec<_> = (0..16)
                .map(|t| {
                    let client = client.clone();
                    let caller = std::thread::Builder::new().name(format!("caller-{t}"));
                    let caller = caller.spawn(move || {
                        for i in 0..100 {
                            let key = format!("r{round}-t{t}-{i}");
                            let put = KvCommand::Put { key: key.into(), value: "v".into() };
                            client.propose(put).expect("applied");
                        }
                    });
                    caller.expect("spawn a caller")
                })
                .collect();
            for caller in callers {
                caller.join().expect("caller");
            }
            if enough(&strangers.lock().unwrap()) || Instant::now() > deadline {
                break;
            }
        }
        cluster.shutdown();
        let strangers = strangers.lock().unwrap();
        strangers.clone()
    }

    #[test]
    fn a_leader_applying_for_the_followers_it_helps_is_caught_and_the_nudge_is_not() {
        let config = Config { seed: 71, ..Config::default() };
        let on = |peers: &PeerSet| peers.helper_applies.store(true, Ordering::Relaxed);
        let caught = strangers_under_load(config.clone(), on, 20, |s| s.applied("raft-n"));
        assert!(caught.applied("raft-n"), "the switch's strangers went unseen: {caught:?}");
        let correct = strangers_under_load(config, |_| {}, 3, |_| false);
        assert!(!correct.applied("raft-n"), "applied on another node's threads: {correct:?}");
    }

    #[test]
    fn callers_apply_for_the_leader_and_leave_its_snapshots_to_its_workers() {
        // A snapshot every 64 entries: 16 blocked callers meet many of them.
        let config = Config { seed: 72, snapshot_entries: 64, ..Config::default() };
        let on = |peers: &PeerSet| peers.callers_take_snapshots.store(true, Ordering::Relaxed);
        let snapshotted = |s: &Strangers| !s.snapshotted.is_empty();
        let caught = strangers_under_load(config.clone(), on, 20, snapshotted);
        let by_callers = caught.snapshotted.iter().all(|name| name.starts_with("caller-"));
        assert!(snapshotted(&caught) && by_callers, "the switch went unseen: {caught:?}");

        // NB: until a caller won the race to apply (up to 20 rounds): under load three rounds
        // went by without one in 2 of 4 debug runs; every round run also checks no caller
        // snapshotted and no other node's thread applied.
        let correct = strangers_under_load(config.clone(), |_| {}, 20, |s| s.applied("caller-"));
        assert!(correct.applied("caller-"), "no caller applied for the leader: {correct:?}");
        assert!(correct.snapshotted.is_empty(), "a snapshot off the node: {correct:?}");
        assert!(!correct.applied("raft-n"), "applied on another node's threads: {correct:?}");

        let off = Config { callers_help: false, ..config };
        let off = strangers_under_load(off, |_| {}, 3, |_| false);
        assert!(off.applied.is_empty() && off.snapshotted.is_empty(), "{off:?}");
    }
}
