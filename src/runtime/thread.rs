//! One node's two worker threads (`raft-n<id>` and `raft-n<id>-b`), which take turns running
//! the node loop: a crossbeam `select!` over its peer inbox, client requests, a shutdown channel
//! and a ticker, feeding the node's [`Driver`].
//!
//! The driver only queues committed entries (its `Backlog`). After a step that queued some, the
//! worker running the loop lets go of it and applies them itself, then takes the loop back: for
//! a fast state machine an answer crosses no thread, as if applied inline. Meanwhile the other
//! worker waits, waking once per tick; if it finds the loop free (an `apply` is running long),
//! it takes the loop over, so heartbeats keep flowing however slow `apply` is, and the workers
//! swap roles.
//!
//! The only blocking the loop does is waiting in `select!`: sends go through the transport,
//! which drops rather than blocks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use super::syncer::Syncer;
use crate::error::Error;
use crate::message::Message;
use crate::node::{execute_all, Backlog, Driver, NodeStatus, Request};
use crate::state_machine::StateMachine;
use crate::storage::Storage;
use crate::transport::Transport;
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
    pub inbox: Receiver<Message<S::Command>>,
    pub requests: Receiver<Request<S>>,
    pub shutdown: Receiver<()>,
}

/// Why a node stopped on its own, shared with the [`crate::Cluster`].
pub(crate) type Failure = Arc<Mutex<Option<Error>>>;

/// What the worker running the loop owns.
struct Node<S: StateMachine> {
    driver: NodeDriver<S>,
    channels: Channels<S>,
    ticker: Receiver<Instant>,
    /// Runs the driver's fsyncs off this loop.
    syncer: Syncer,
    /// How many times the idle loop yields, polling its channels, before it parks.
    spin_rounds: u32,
    /// Set once the node failed: from then on it only answers requests with this error.
    failed: Option<Error>,
}

/// What a node's two workers share.
struct Shared<S: StateMachine> {
    node: Mutex<Node<S>>,
    backlog: Arc<Backlog<S>>,
    /// The node is stopping: both workers return.
    done: AtomicBool,
    /// Where the idle worker waits (woken early only when the node stops).
    idle: (Mutex<()>, Condvar),
    tick: Duration,
    failure: Failure,
}

/// A node's running workers.
pub(crate) struct NodeThreads {
    threads: Vec<JoinHandle<()>>,
}

impl NodeThreads {
    /// Whether both workers have returned.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for both workers to return (after a shutdown: within one `apply`).
    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Starts `driver`'s two workers. They run until `channels.shutdown` fires or its sender drops.
/// A storage error stops the node; a state machine panic leaves it failed: it takes no part in
/// the protocol any more but still answers requests with the panic.
pub(crate) fn spawn<S: StateMachine>(
    id: NodeId,
    driver: NodeDriver<S>,
    channels: Channels<S>,
    tick: Duration,
    spin_rounds: u32,
    failure: Failure,
) -> Result<NodeThreads, Error> {
    let backlog = Arc::clone(driver.backlog().expect("the thread runtime defers its applies"));
    let ticker = crossbeam_channel::tick(tick);
    let syncer = Syncer::new(id);
    let node = Node { driver, channels, ticker, syncer, spin_rounds, failed: None };
    let shared = Arc::new(Shared {
        node: Mutex::new(node),
        backlog,
        done: AtomicBool::new(false),
        idle: (Mutex::new(()), Condvar::new()),
        tick,
        failure,
    });
    let mut threads = Vec::new();
    for name in [format!("raft-n{}", id.0), format!("raft-n{}-b", id.0)] {
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let _span = tracing::info_span!("node", id = %id).entered();
            work(&worker);
        });
        match thread {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                stop(&shared);
                NodeThreads { threads }.join();
                return Err(Error::Spawn(e.to_string()));
            }
        }
    }
    Ok(NodeThreads { threads })
}

/// One worker: runs the loop while it holds it, applies what the loop queued, and waits while
/// the other worker holds the loop.
fn work<S: StateMachine>(shared: &Shared<S>) {
    while !shared.done.load(Ordering::Acquire) {
        let mut node = match shared.node.try_lock() {
            Ok(node) => node,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                wait_idle(shared);
                continue;
            }
        };
        let running = run_loop(&mut node, shared);
        drop(node); // NB: before applying, so the other worker can take over a long apply
        if running {
            shared.backlog.drain();
        } else {
            stop(shared);
        }
    }
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

/// Runs the loop until a step queued work for the applier (true) or the node stops (false).
fn run_loop<S: StateMachine>(node: &mut MutexGuard<'_, Node<S>>, shared: &Shared<S>) -> bool {
    if let Some(error) = node.failed.clone() {
        return serve_failed(node, error);
    }
    let Node { driver, channels, ticker, syncer, spin_rounds, .. } = &mut **node;
    let error = loop {
        let result = match poll_briefly(driver, channels, syncer, ticker, *spin_rounds) {
            Some(result) => result.and_then(|()| poll_timers(driver, channels, ticker)),
            None => wait(driver, channels, syncer, ticker),
        };
        let result = match (result, driver.take_sync_job()) {
            (Ok(running), Some(job)) => syncer.submit(job).map(|()| running),
            (result, _) => result,
        };
        match result {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => break e,
        }
        if let Some(e) = driver.failure() {
            break e;
        }
        if shared.backlog.needs_drain() {
            return true;
        }
    };
    tracing::error!(error = %error, "node failed");
    *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
    node.failed = Some(error.clone());
    // NB: what the driver queued for the applier since it failed (a status, a proposal's
    // wait) is answered with the failure now: no worker drains the backlog from here on.
    shared.backlog.drain();
    serve_failed(node, error)
}

/// A failed node answers every request with its failure until it is killed (returns false).
fn serve_failed<S: StateMachine>(node: &mut Node<S>, error: Error) -> bool {
    let core = node.driver.core().status();
    let channels = &node.channels;
    loop {
        select! {
            recv(channels.shutdown) -> _ => return false,
            recv(channels.inbox) -> msg => if msg.is_err() { return false },
            recv(channels.requests) -> req => match req {
                Ok(Request::Propose { responder, .. }) => responder.finish(Err(error.clone())),
                Ok(Request::ChangeMembership { reply, .. }) => { let _ = reply.send(Err(error.clone())); }
                Ok(Request::Compact { reply }) => { let _ = reply.send(Err(error.clone())); }
                Ok(Request::Read { read }) => crate::node::fail_read(read, error.clone()),
                Ok(Request::TransferLeadership { reply, .. }) => { let _ = reply.send(Err(error.clone())); }
                Ok(forward @ Request::Forward(_)) => forward.fail(error.clone()),
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

/// Before parking, yield-spin a little: the next message of a round trip usually arrives
/// within microseconds, and a parked thread takes several to wake.
fn poll_briefly<S: StateMachine>(
    driver: &mut NodeDriver<S>,
    channels: &Channels<S>,
    syncer: &Syncer,
    ticker: &Receiver<Instant>,
    spin_rounds: u32,
) -> Option<Result<(), Error>> {
    for round in 0..spin_rounds {
        // NB: a due tick or a shutdown ends the spin too, however many rounds it was given:
        // a node spinning with nothing to receive must still time out and stop.
        if round % 16 == 15 && (!ticker.is_empty() || !channels.shutdown.is_empty()) {
            return Some(Ok(()));
        }
        if let Ok(outcome) = syncer.done().try_recv() {
            return Some(driver.sync_done(outcome, &mut execute_all));
        }
        if let Ok(msg) = channels.inbox.try_recv() {
            return Some(on_messages(driver, msg, &channels.inbox));
        }
        if let Ok(req) = channels.requests.try_recv() {
            return Some(driver.handle(req, &mut channels.requests.try_iter(), &mut execute_all));
        }
        std::thread::yield_now();
    }
    None
}

/// After work found by spinning, or a spin ended by a due tick or a shutdown: neither must
/// starve.
fn poll_timers<S: StateMachine>(
    driver: &mut NodeDriver<S>,
    channels: &Channels<S>,
    ticker: &Receiver<Instant>,
) -> Result<bool, Error> {
    if channels.shutdown.try_recv().is_ok() {
        return Ok(false);
    }
    if let Ok(due) = ticker.try_recv() {
        driver.tick_at(due, &mut execute_all)?;
    }
    Ok(true)
}

fn wait<S: StateMachine>(
    driver: &mut NodeDriver<S>,
    channels: &Channels<S>,
    syncer: &Syncer,
    ticker: &Receiver<Instant>,
) -> Result<bool, Error> {
    select! {
        recv(channels.shutdown) -> _ => Ok(false),
        recv(syncer.done()) -> outcome => match outcome {
            Ok(outcome) => driver.sync_done(outcome, &mut execute_all).map(|()| true),
            Err(_) => Ok(false),
        },
        recv(channels.inbox) -> msg => match msg {
            Ok(msg) => on_messages(driver, msg, &channels.inbox).map(|()| true),
            Err(_) => Ok(false),
        },
        recv(channels.requests) -> req => match req {
            Ok(req) => driver.handle(req, &mut channels.requests.try_iter(), &mut execute_all).map(|()| true),
            Err(_) => Ok(false),
        },
        recv(ticker) -> due => match due {
            Ok(due) => driver.tick_at(due, &mut execute_all).map(|()| true),
            Err(_) => driver.tick(&mut execute_all).map(|()| true),
        },
        recv(driver.taken().clone()) -> snapshot => match snapshot {
            Ok(snapshot) => driver.snapshot_taken(snapshot, &mut execute_all).map(|()| true),
            Err(_) => Ok(false),
        },
    }
}

fn on_messages<S: StateMachine>(
    driver: &mut NodeDriver<S>,
    first: Message<S::Command>,
    inbox: &Receiver<Message<S::Command>>,
) -> Result<(), Error> {
    // One batch: a burst of AppendEntries costs a follower one sync, not one each.
    driver.begin_batch();
    driver.receive(first, &mut execute_all)?;
    for msg in inbox.try_iter().take(MAX_MESSAGE_BURST) {
        driver.receive(msg, &mut execute_all)?;
    }
    driver.end_batch(&mut execute_all)
}
