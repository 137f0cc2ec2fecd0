//! Applying committed entries: the [`Applier`] hands commands to the user's state machine in
//! log order (ALL-1) and answers the proposals waiting on them.
//!
//! A proposal waits under the `(index, term)` its leader gave it. When index `i` is applied,
//! every proposal waiting at `i` or below is decided: the one whose term matches the applied
//! entry is answered with the output; any other was replaced by a different entry, which by
//! State Machine Safety is the only entry ever applied at `i`, so it is answered
//! `ProposalDropped` (never applied, safe to retry). Matching on the index alone would confuse
//! a truncated proposal with a later one at the same index.
//!
//! A panic in `StateMachine::apply` is caught: the applier stops for good and every waiting and
//! later proposal is answered `StateMachinePanicked`, since `apply` is deterministic and the
//! same command panics on every replica. So is a panic anywhere else in the user's code a task
//! runs (`snapshot`, a `Drop` of an `Output`; see `run_caught`): no worker dies of one.
//!
//! [`ApplyQueue`] runs an applier inline (the simulator's default) or deferred through a
//! [`Backlog`] (the thread runtime: run off the node loop, so a slow `apply` never delays
//! heartbeats; the simulator too with `SimConfig::deferred_apply`, drained at random virtual
//! instants), with the same code either way.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::read::{PendingReads, QueryNow, ReadFn};
use super::receipt::{Applied, Responder};
use super::NodeStatus;
use crate::error::Error;
use crate::message::{Entry, Payload, Snapshot, SnapshotMeta};
use crate::state_machine::StateMachine;
use crate::types::{LogIndex, NodeId, Term};

/// The user's state machine, and the proposals waiting for it.
pub(crate) struct Applier<S: StateMachine> {
    node: NodeId,
    state_machine: S,
    /// NB: [`waiting_slot_bytes`] counts an element towards the uncommitted cap.
    waiting: Waiting<S::Output>,
    applied: LogIndex,
    failure: Option<Error>,
    /// Confirmed reads waiting to be applied through their index (`read.rs`).
    reads: PendingReads<S>,
}

/// What one waiting proposal takes in [`Applier::waiting`]: its key and responder, twice
/// over, as a queue grown by doubling may hold as many free slots as proposals.
pub(crate) const fn waiting_slot_bytes<O>() -> usize {
    2 * std::mem::size_of::<((LogIndex, Term), Responder<O>)>()
}

#[cfg(test)]
thread_local! {
    /// Test-only bug: [`Waiting`] keeps proposals in the order they were appended, as a plain
    /// queue would. A leader that leads again in a later term then answers a proposal it
    /// appended below its old term's ones only after those, as `ProposalDropped` (the entry
    /// at its index was applied first, not the one at its own): its client retries a command
    /// that was applied. Per thread: the simulator runs a cluster on one.
    static WAITING_IN_ARRIVAL_ORDER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Test-only: see [`WAITING_IN_ARRIVAL_ORDER`]; for this thread's appliers.
#[cfg(test)]
pub(crate) fn set_waiting_in_arrival_order(on: bool) {
    WAITING_IN_ARRIVAL_ORDER.set(on);
}

/// The proposals waiting to be applied, in `(index, term)` order. A leader appends in index
/// order, so a new one almost always goes at the back: a queue, not a search tree. Only a
/// node that led before, lost its place and leads again in a later term may add one below
/// the last (its old term's proposals at higher indexes still wait, to hear
/// `ProposalDropped`): that one is placed by a search.
struct Waiting<O> {
    queue: VecDeque<((LogIndex, Term), Responder<O>)>,
}

impl<O> Waiting<O> {
    fn new() -> Self {
        Waiting { queue: VecDeque::new() }
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Adds `responder` at `key`, replacing (so answering `NodeDown`) one already there.
    fn insert(&mut self, key: (LogIndex, Term), responder: Responder<O>) {
        #[cfg(test)]
        if WAITING_IN_ARRIVAL_ORDER.get() {
            return self.queue.push_back((key, responder));
        }
        match self.queue.back() {
            Some((last, _)) if *last >= key => {
                let at = self.queue.partition_point(|(k, _)| *k < key);
                match self.queue.get_mut(at) {
                    Some((k, old)) if *k == key => drop(std::mem::replace(old, responder)),
                    _ => self.queue.insert(at, (key, responder)),
                }
            }
            _ => self.queue.push_back((key, responder)),
        }
    }

    /// Removes and returns the first proposal if it waits at `index` or below.
    fn pop_through(&mut self, index: LogIndex) -> Option<((LogIndex, Term), Responder<O>)> {
        match self.queue.front() {
            Some(((i, _), _)) if *i <= index => self.queue.pop_front(),
            _ => None,
        }
    }

    fn take_all(&mut self) -> VecDeque<((LogIndex, Term), Responder<O>)> {
        std::mem::take(&mut self.queue)
    }
}

impl<S: StateMachine> Applier<S> {
    pub fn new(node: NodeId, state_machine: S, applied: LogIndex) -> Self {
        let waiting = Waiting::new();
        let reads = PendingReads::default();
        Applier { node, state_machine, waiting, applied, failure: None, reads }
    }

    pub fn state_machine(&self) -> &S {
        &self.state_machine
    }

    /// The panic that stopped this applier, if any.
    pub fn failure(&self) -> Option<&Error> {
        self.failure.as_ref()
    }

    /// A proposal was appended at `(index, term)`: answer it when `index` is applied.
    pub fn await_entry(&mut self, index: LogIndex, term: Term, responder: Responder<S::Output>) {
        match &self.failure {
            Some(failure) => responder.finish(Err(failure.clone())),
            None => {
                self.waiting.insert((index, term), responder);
            }
        }
    }

    /// [`Applier::await_entry`] for proposals appended from `first` on, in index order.
    pub fn await_entries(
        &mut self,
        first: LogIndex,
        term: Term,
        responders: Vec<Responder<S::Output>>,
    ) {
        for (i, responder) in responders.into_iter().enumerate() {
            self.await_entry(LogIndex(first.0 + i as u64), term, responder);
        }
    }

    /// Applies the committed entry at `index` (the next one) and answers its proposers.
    pub fn apply(&mut self, index: LogIndex, entry: &Entry<S::Command>) -> Result<(), Error> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        debug_assert_eq!(index, self.applied.next(), "entries are applied in order");
        let output = match &entry.payload {
            Payload::Command(command) => {
                let sm = &mut self.state_machine;
                match catch_unwind(AssertUnwindSafe(|| sm.apply(index, command))) {
                    Ok(output) => Some(output),
                    Err(payload) => return Err(self.fail(index, panic_message(&*payload))),
                }
            }
            Payload::Noop | Payload::Config(_) => None,
        };
        self.applied = index;
        if !self.waiting.is_empty() {
            self.answer(index, entry.term, output);
        }
        if !self.reads.is_empty() {
            self.reads.release(&self.state_machine, index);
        }
        Ok(())
    }

    /// Reads confirmed at `index`: run them once applied through `index`.
    pub fn read(&mut self, index: LogIndex, reads: Vec<ReadFn<S>>) {
        match &self.failure {
            Some(failure) => {
                for read in reads {
                    super::read::run(read, Err(failure.clone()));
                }
            }
            None => self.reads.add(index, reads, &self.state_machine, self.applied),
        }
    }

    /// Takes a snapshot of the state machine as it is now, standing for `meta.index`.
    pub fn snapshot(&mut self, meta: SnapshotMeta) -> Result<Arc<Snapshot>, Error> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        debug_assert_eq!(meta.index, self.applied, "the snapshot stands for what was applied");
        let sm = &self.state_machine;
        match catch_unwind(AssertUnwindSafe(|| sm.snapshot())) {
            Ok(data) => Ok(Arc::new(Snapshot { meta, data: data.into() })),
            Err(payload) => {
                let message = format!("snapshot panicked: {}", panic_message(&*payload));
                Err(self.fail(meta.index, message))
            }
        }
    }

    /// Replaces the state with `snapshot`'s. A failure stops this applier for good: nothing is
    /// applied on a half-restored state. Proposals waiting at or below its index cannot tell
    /// whether their entry is in it: their outcome is unknown (`Timeout`).
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let index = snapshot.meta.index;
        let sm = &mut self.state_machine;
        let restored = catch_unwind(AssertUnwindSafe(|| sm.restore(&snapshot.data)));
        let message = match restored {
            Ok(Ok(())) => {
                self.applied = index;
                self.reads.release(&self.state_machine, index);
                while let Some((_, responder)) = self.waiting.pop_through(index) {
                    responder.finish(Err(Error::Timeout));
                }
                return Ok(());
            }
            Ok(Err(message)) => message,
            Err(payload) => format!("panicked: {}", panic_message(&*payload)),
        };
        let error = Error::RestoreFailed { node: self.node, index, message };
        Err(self.stop(error))
    }

    /// Answers the proposals waiting at `index` or below. NB: the output moves to the one
    /// proposal at `(index, term)` (keys are unique), never cloned: `Output::clone` is the
    /// user's code, and a copy per answer would cost the hot path.
    fn answer(&mut self, index: LogIndex, term: Term, mut output: Option<S::Output>) {
        while let Some(((i, t), responder)) = self.waiting.pop_through(index) {
            let result = match output.take_if(|_| (i, t) == (index, term)) {
                Some(output) => Ok(Applied { index, term, output }),
                None => Err(Error::ProposalDropped { index: i, term: t }),
            };
            responder.finish(result);
        }
    }

    fn fail(&mut self, index: LogIndex, message: String) -> Error {
        self.stop(Error::StateMachinePanicked { node: self.node, index, message })
    }

    fn stop(&mut self, error: Error) -> Error {
        tracing::error!(error = %error, "state machine failed; node stopping");
        self.give_up(error)
    }

    /// The node failed outside the state machine (`Error::NodePanicked`, `Error::Storage`):
    /// what was queued before has been applied; every proposal and read still waiting, and
    /// every later one, hears `error`. A first failure is kept.
    fn node_failed(&mut self, error: Error) {
        if self.failure.is_none() {
            self.give_up(error);
        }
    }

    fn give_up(&mut self, error: Error) -> Error {
        self.failure = Some(error.clone());
        for (_, responder) in self.waiting.take_all() {
            responder.finish(Err(error.clone()));
        }
        self.reads.fail(&error);
        error
    }
}

/// [`Backlog::draining`] set while this lives.
struct Draining<'a>(&'a AtomicBool);

impl<'a> Draining<'a> {
    fn set(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::SeqCst);
        Draining(flag)
    }
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// What the node loop queues for the applier, in order.
pub(crate) enum ApplyTask<S: StateMachine> {
    /// A batch of proposals appended from `first` on in `term`, one responder each.
    Await {
        first: LogIndex,
        term: Term,
        responders: Vec<Responder<S::Output>>,
    },
    Entries {
        first: LogIndex,
        entries: Vec<Entry<S::Command>>,
    },
    Snapshot(SnapshotMeta),
    Restore(Arc<Snapshot>),
    /// Confirmed reads (a batch): run them once applied through `index`.
    Read {
        index: LogIndex,
        reads: Vec<ReadFn<S>>,
    },
    /// Fill in what only the applier knows (digest, applied index) and answer.
    Status {
        status: Box<NodeStatus>,
        reply: Sender<NodeStatus>,
    },
    /// The node failed on its loop: answer what waits with this error
    /// ([`ApplyQueue::node_failed`]).
    NodeFailed(Error),
}

impl<S: StateMachine> ApplyTask<S> {
    /// How many committed entries the task holds (counted against the backlog's limit).
    fn entries(&self) -> usize {
        match self {
            ApplyTask::Entries { entries, .. } => entries.len(),
            _ => 0,
        }
    }
}

/// An [`Applier`] run inline, or deferred: queued by the node loop and run off it.
pub(crate) enum ApplyQueue<S: StateMachine> {
    Inline(Applier<S>),
    Deferred(Arc<Backlog<S>>),
}

/// The applier and its work queue, shared by a node's two worker threads (`runtime/thread.rs`).
///
/// The node loop only queues tasks, in log order. Whichever worker runs the loop then leaves it
/// and runs them with [`Backlog::drain`]: for a fast state machine that is the same thread, so
/// an answer crosses no thread boundary. If an `apply` runs long, the other worker takes over
/// the loop meanwhile, so heartbeats keep flowing however slow the state machine is.
pub(crate) struct Backlog<S: StateMachine> {
    tasks: Mutex<VecDeque<ApplyTask<S>>>,
    /// How many tasks are queued (read without the lock, after every step).
    queued: AtomicUsize,
    /// How many committed entries are queued or being applied (`Config::max_apply_backlog`):
    /// added on push, taken off once a batch of entries (or the part of it that ran) has run,
    /// or was dropped.
    entries: AtomicUsize,
    /// The most `entries` ever held (this incarnation).
    peak: AtomicUsize,
    /// `Config::max_apply_backlog`: above it, the node loop takes no new input
    /// ([`Backlog::over_limit`]).
    limit: usize,
    /// Times the node loop stalled on the limit ([`Backlog::note_stall`]).
    stalls: AtomicUsize,
    /// Where a stalled loop waits for `entries` to come down to the limit.
    below: (Mutex<()>, Condvar),
    /// Test-only bug: the limit is never reached, so the loop takes input however many
    /// entries wait (the unbounded backlog of the memory audit, item 1).
    #[cfg(test)]
    ignore_limit: AtomicBool,
    /// A thread is running tasks (it also runs whatever is queued meanwhile).
    draining: AtomicBool,
    /// `None` once retired ([`Backlog::retire`]): the node's workers ended.
    applier: Mutex<Option<Applier<S>>>,
    /// Set when the state machine panicked or a restore failed; read by the node loop.
    failure: Mutex<Option<Error>>,
    failed: AtomicBool,
    /// Asks `drain` to stop after the entry it is applying (the node is stopping).
    stop: AtomicBool,
    /// The last batch of entries took longer than [`SLOW_APPLY`] per entry: callers leave
    /// applying to the node's own workers ([`Backlog::drain_some`]).
    slow: AtomicBool,
    /// Whether batches of entries are timed for [`SLOW_APPLY`] (off in the simulator, whose
    /// runs must not depend on the wall clock: its callers never find `apply` slow).
    timed: AtomicBool,
    /// Where snapshots taken here go, back to the node loop.
    taken: Sender<Arc<Snapshot>>,
    /// Wakes the node's workers to run what a caller's lease read left (the thread runtime
    /// sets it; without it the reader runs everything itself, as the simulator's does).
    wake: std::sync::OnceLock<Sender<()>>,
    /// Test-only switch: a caller that meets a snapshot runs the tasks behind it first.
    #[cfg(test)]
    snapshot_behind_later_applies: AtomicBool,
}

/// An `apply` slower than this (per entry, over a batch) is left to the node's own workers:
/// a caller that applied it would be held past its own answer, and maybe past its deadline.
const SLOW_APPLY: Duration = Duration::from_micros(20);

/// The most a caller spends applying entries in one turn ([`Backlog::drain_some`]), however
/// fast each is: a long backlog of fast entries is the node's workers' to run.
const CALLER_APPLY_BUDGET: Duration = Duration::from_millis(1);

/// A caller's clock over one batch of entries it applies: it stops after the entry that
/// shows `apply` slow ([`SLOW_APPLY`] per entry, on average over the batch so far) or that
/// spends its turn's budget ([`CALLER_APPLY_BUDGET`]).
struct Stopwatch {
    /// When the caller's turn began (its first timed batch).
    turn: Instant,
    /// When this batch began.
    batch: Instant,
    /// The batch so far showed `apply` slow.
    slow: bool,
    /// The caller stops: `slow`, or its turn's budget is spent.
    over: bool,
}

impl Stopwatch {
    fn start(turn: &mut Option<Instant>) -> Self {
        let batch = Instant::now();
        Stopwatch { turn: *turn.get_or_insert(batch), batch, slow: false, over: false }
    }

    /// After the batch's first `applied` entries: whether the caller stops here.
    fn stop_after(&mut self, applied: usize) -> bool {
        let now = Instant::now();
        self.slow = now - self.batch > SLOW_APPLY * applied as u32;
        self.over = self.slow || now - self.turn > CALLER_APPLY_BUDGET;
        self.over
    }
}

impl<S: StateMachine> ApplyQueue<S> {
    /// Defers `applier`'s work to [`Backlog::drain`]; snapshots it takes go to `taken`. The
    /// node loop stalls while more than `limit` entries wait ([`Backlog::over_limit`]).
    pub fn deferred(applier: Applier<S>, taken: Sender<Arc<Snapshot>>, limit: usize) -> Self {
        ApplyQueue::Deferred(Arc::new(Backlog {
            tasks: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            limit,
            stalls: AtomicUsize::new(0),
            below: (Mutex::new(()), Condvar::new()),
            #[cfg(test)]
            ignore_limit: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            applier: Mutex::new(Some(applier)),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            slow: AtomicBool::new(false),
            timed: AtomicBool::new(true),
            taken,
            wake: std::sync::OnceLock::new(),
            #[cfg(test)]
            snapshot_behind_later_applies: AtomicBool::new(false),
        }))
    }

    /// Proposals appended from `first` on in `term`, one responder each in index order: answer
    /// each when its index is applied. One task for the batch, not one per proposal.
    pub fn await_entries(
        &mut self,
        first: LogIndex,
        term: Term,
        responders: Vec<Responder<S::Output>>,
    ) {
        match self {
            ApplyQueue::Inline(applier) => applier.await_entries(first, term, responders),
            ApplyQueue::Deferred(b) => b.push(ApplyTask::Await { first, term, responders }),
        }
    }

    /// Applies `entries`, the committed entries from `first` on.
    pub fn apply(&mut self, first: LogIndex, entries: &[Entry<S::Command>]) -> Result<(), Error> {
        match self {
            ApplyQueue::Inline(applier) => {
                for (i, entry) in entries.iter().enumerate() {
                    applier.apply(LogIndex(first.0 + i as u64), entry)?;
                }
                Ok(())
            }
            ApplyQueue::Deferred(b) => {
                b.push(ApplyTask::Entries { first, entries: entries.to_vec() });
                Ok(())
            }
        }
    }

    /// [`ApplyQueue::apply`] with entries the caller owns (no copy when deferred).
    pub fn apply_owned(
        &mut self,
        first: LogIndex,
        entries: Vec<Entry<S::Command>>,
    ) -> Result<(), Error> {
        match self {
            ApplyQueue::Inline(_) => self.apply(first, &entries),
            ApplyQueue::Deferred(b) => {
                b.push(ApplyTask::Entries { first, entries });
                Ok(())
            }
        }
    }

    /// Takes a snapshot once every apply queued before is done. Inline, it is returned at
    /// once; deferred, it arrives later through the node's `taken` channel.
    pub fn snapshot(&mut self, meta: SnapshotMeta) -> Result<Option<Arc<Snapshot>>, Error> {
        match self {
            ApplyQueue::Inline(applier) => applier.snapshot(meta).map(Some),
            ApplyQueue::Deferred(b) => {
                b.push(ApplyTask::Snapshot(meta));
                Ok(None)
            }
        }
    }

    /// Replaces the state machine's state with `snapshot`'s, in order with the applies.
    pub fn restore(&mut self, snapshot: Arc<Snapshot>) -> Result<(), Error> {
        match self {
            ApplyQueue::Inline(applier) => applier.restore(&snapshot),
            ApplyQueue::Deferred(b) => {
                b.push(ApplyTask::Restore(snapshot));
                Ok(())
            }
        }
    }

    /// The state machine panicked (seen here once the deferred work has run).
    pub fn failure(&self) -> Option<Error> {
        match self {
            ApplyQueue::Inline(applier) => applier.failure().cloned(),
            ApplyQueue::Deferred(b) if b.failed.load(Ordering::Acquire) => lock(&b.failure).clone(),
            ApplyQueue::Deferred(_) => None,
        }
    }

    /// Runs `reads` once the state machine has applied through `index`.
    pub fn read(&mut self, index: LogIndex, reads: Vec<ReadFn<S>>) {
        match self {
            ApplyQueue::Inline(applier) => applier.read(index, reads),
            ApplyQueue::Deferred(b) => b.push(ApplyTask::Read { index, reads }),
        }
    }

    /// The node failed outside the state machine: once what was queued before has been
    /// applied (it is committed), every waiting proposal and read, and every later one, is
    /// answered `error`. The applier's own failure, if it failed first, is kept.
    pub fn node_failed(&mut self, error: Error) {
        match self {
            ApplyQueue::Inline(applier) => applier.node_failed(error),
            ApplyQueue::Deferred(b) => b.push(ApplyTask::NodeFailed(error)),
        }
    }

    /// Completes `status` with the applier's view and sends it to `reply`.
    pub fn status(&mut self, mut status: NodeStatus, reply: Sender<NodeStatus>) {
        match self {
            ApplyQueue::Inline(applier) => {
                fill_status(applier, &mut status);
                let _ = reply.send(status);
            }
            ApplyQueue::Deferred(b) => {
                b.push(ApplyTask::Status { status: Box::new(status), reply })
            }
        }
    }
}

impl<S: StateMachine> Backlog<S> {
    fn push(&self, task: ApplyTask<S>) {
        let entries = task.entries();
        if entries > 0 {
            let now = self.entries.fetch_add(entries, Ordering::Relaxed) + entries;
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        let mut tasks = lock(&self.tasks);
        tasks.push_back(task);
        self.queued.fetch_add(1, Ordering::SeqCst);
    }

    /// `n` entries were applied (or dropped): wakes a loop stalled on the limit once they
    /// bring the count down to it.
    fn entries_done(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.entries.fetch_sub(n, Ordering::Relaxed);
        if before > self.limit && before - n <= self.limit {
            self.wake_stalled();
        }
    }

    fn wake_stalled(&self) {
        let _guard = lock(&self.below.0);
        self.below.1.notify_all();
    }

    /// How many committed entries wait for the state machine (queued, or in the batch being
    /// applied).
    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// The most entries that ever waited at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Times the node loop stalled on the limit.
    pub fn stalls(&self) -> usize {
        self.stalls.load(Ordering::Relaxed)
    }

    /// The node loop is stalling on the limit (counted for `Metrics::apply_stalls`).
    pub fn note_stall(&self) {
        self.stalls.fetch_add(1, Ordering::Relaxed);
    }

    /// `Config::max_apply_backlog`.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether more than `Config::max_apply_backlog` entries wait: the node loop must take no
    /// new input (peer messages, client requests, ticks) until the applier has caught up to
    /// the limit. One relaxed load: it is asked before every step.
    #[inline]
    pub fn over_limit(&self) -> bool {
        #[cfg(test)]
        if self.ignore_limit.load(Ordering::Relaxed) {
            return false;
        }
        self.entries.load(Ordering::Relaxed) > self.limit
    }

    /// Waits up to `timeout` for the entries waiting to come down to the limit (or the
    /// backlog to stop); whether they have.
    pub fn wait_below_limit(&self, timeout: Duration) -> bool {
        let guard = lock(&self.below.0);
        // NB: checked under the lock `entries_done` notifies under: no wake-up is lost.
        if !self.over_limit() || self.stop.load(Ordering::Relaxed) {
            return true;
        }
        let _ = self.below.1.wait_timeout(guard, timeout);
        !self.over_limit()
    }

    /// The entries in the queued tasks, counted over the queue under its lock: the
    /// simulator's check of [`Backlog::entries`] (which also counts a batch being applied).
    pub fn count_queued_entries(&self) -> usize {
        lock(&self.tasks).iter().map(ApplyTask::entries).sum()
    }

    /// Test-only: see `ignore_limit`.
    #[cfg(test)]
    pub fn set_ignore_limit(&self, on: bool) {
        self.ignore_limit.store(on, Ordering::Relaxed);
    }

    /// How many tasks wait to be run.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Whether tasks wait to be run.
    fn has_work(&self) -> bool {
        self.queued.load(Ordering::SeqCst) > 0
    }

    /// Whether tasks wait and no thread is running them: the caller should [`Backlog::drain`].
    pub fn needs_drain(&self) -> bool {
        // NB: SeqCst here and in `drain`: a task queued while a drainer finishes is either
        // seen by that drainer's last look at the queue or seen here as not being drained.
        self.has_work() && !self.draining.load(Ordering::SeqCst)
    }

    /// Runs the queued tasks in order until none is left. If another thread is running them
    /// already, returns at once: that thread also runs what was queued meanwhile, since it
    /// looks at the queue again after letting go of the applier.
    pub fn drain(&self) {
        while self.run_tasks(usize::MAX, false) {}
    }

    /// What a caller waiting for an answer runs for the node: the tasks queued now, up to the
    /// first snapshot or restore, which it leaves to the node's own workers (a caller must
    /// not wait for a whole state machine's copy), and no entries at all while `apply` is slow
    /// ([`SLOW_APPLY`]). Whether the node's workers must look: tasks are left that nobody
    /// runs, or the state machine failed.
    pub fn drain_some(&self) -> bool {
        let limit = self.queued.load(Ordering::SeqCst);
        let left = self.run_tasks(limit, true) && self.needs_drain();
        left || self.failed.load(Ordering::Acquire)
    }

    /// Runs up to `limit` queued tasks in order; for a `caller`, none from a snapshot, a
    /// restore or (while `apply` is slow) a batch of entries on. Whether it stopped with tasks
    /// left; false also when another thread runs them (that thread also runs what is queued
    /// meanwhile: it looks at the queue again after letting go of the applier).
    fn run_tasks(&self, limit: usize, caller: bool) -> bool {
        let mut guard = match self.applier.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::WouldBlock) => return false,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        // Retired: the node's workers ended, and nothing is queued any more.
        let Some(applier) = guard.as_mut() else { return false };
        // NB: declared after the applier, so dropped (cleared) before it is let go, and also
        // should anything unwind: a flag left set would tell every caller someone drains.
        let draining = Draining::set(&self.draining);
        let mut turn = None;
        for _ in 0..limit {
            let task = {
                let mut tasks = lock(&self.tasks);
                let slow = self.slow.load(Ordering::Relaxed);
                let long = |t: &ApplyTask<S>| match t {
                    ApplyTask::Snapshot(_) | ApplyTask::Restore(_) => true,
                    ApplyTask::Entries { .. } => slow,
                    _ => false,
                };
                #[cfg(test)]
                if caller
                    && self.snapshot_behind_later_applies.load(Ordering::Relaxed)
                    && matches!(tasks.front(), Some(ApplyTask::Snapshot(_)))
                    && tasks.get(1).is_some_and(|t| !long(t))
                {
                    tasks.swap(0, 1); // the bug: the snapshot stands for less than it holds
                }
                if caller && tasks.front().is_some_and(long) {
                    break;
                }
                let task = tasks.pop_front();
                self.queued.store(tasks.len(), Ordering::SeqCst);
                task
            };
            let Some(task) = task else { break };
            let entries = task.entries();
            if self.stop.load(Ordering::Relaxed) {
                // Stopping: unrun tasks drop, their proposers learn `NodeDown`.
                self.entries_done(entries);
                return false;
            }
            let timed = entries > 0 && self.timed.load(Ordering::Relaxed);
            // A caller times each entry it applies, so it stops at the first that shows
            // `apply` slow (or once its turn's budget is spent): it is late for its own answer
            // by at most one `apply`, however long the batch (`Config::callers_help`).
            let mut watch = (timed && caller).then(|| Stopwatch::start(&mut turn));
            let start = (timed && !caller).then(Instant::now);
            let ran = run_caught(applier, task, &self.stop, &self.taken, watch.as_mut());
            let left = match &ran {
                Ok(Some(rest)) => rest.entries(),
                _ => 0,
            };
            self.entries_done(entries - left);
            let rest = match ran {
                Ok(rest) => rest,
                Err(e) => {
                    *lock(&self.failure) = Some(e);
                    self.failed.store(true, Ordering::Release);
                    None
                }
            };
            let over = watch.as_ref().is_some_and(|w| w.over);
            if let Some(watch) = watch {
                self.slow.store(watch.slow, Ordering::Relaxed);
            }
            if let Some(start) = start {
                let slow = start.elapsed() > SLOW_APPLY * entries as u32;
                self.slow.store(slow, Ordering::Relaxed);
            }
            if let Some(rest) = rest {
                // NB: back at the front, before whatever was queued meanwhile: log order. But
                // not once stopping: `stop` empties the queue under this lock, after setting
                // the flag, and a retired backlog runs nothing again, so the rest is dropped
                // (and uncounted) here, as `stop` would have.
                let mut tasks = lock(&self.tasks);
                if self.stop.load(Ordering::Relaxed) {
                    drop(tasks);
                    self.entries_done(rest.entries());
                    drop(rest);
                } else {
                    tasks.push_front(rest);
                    self.queued.store(tasks.len(), Ordering::SeqCst);
                }
            }
            if over {
                break;
            }
        }
        drop(draining);
        drop(guard);
        self.has_work()
    }

    /// Runs `query` on the state machine now, on the caller's thread, if it has applied
    /// through `index` and is free (not applying, not stopped or failed); with the applied
    /// index it ran at. `None`: the caller takes the node's path. A panicking query also
    /// gives `None` (the node's path then answers it as any failed read).
    pub fn query_now<R>(
        &self,
        index: LogIndex,
        query: impl FnOnce(&S) -> R,
    ) -> Option<(R, LogIndex)> {
        if self.stop.load(Ordering::Relaxed) || self.failed.load(Ordering::Acquire) {
            return None;
        }
        let guard = match self.applier.try_lock() {
            Ok(guard) => guard,
            Err(_) => return None,
        };
        // NB: `None` once retired: the node is gone.
        let applier = guard.as_ref()?;
        // NB: marked as draining while it holds the applier, so a worker that queues work
        // meanwhile leaves it to this reader instead of retrying a lock it cannot take.
        let draining = Draining::set(&self.draining);
        let answer = if applier.failure.is_some() || applier.applied < index {
            None
        } else {
            let state = &applier.state_machine;
            let answer = catch_unwind(AssertUnwindSafe(|| query(state))).ok();
            answer.map(|answer| (answer, applier.applied))
        };
        drop(draining);
        drop(guard);
        // What was queued meanwhile is this reader's: what a caller may run (no snapshot, no
        // slow batch) it runs; the rest goes to the node's workers, woken for it.
        if self.needs_drain() {
            match self.wake.get() {
                Some(wake) if self.drain_some() => {
                    let _ = wake.try_send(());
                }
                Some(_) => {}
                None => self.drain(),
            }
        }
        answer
    }

    /// Sets where [`Backlog::query_now`] wakes the node's workers (once; the thread runtime).
    pub fn wake_with(&self, wake: Sender<()>) {
        let _ = self.wake.set(wake);
    }

    /// Runs `f` on the state machine as it is now (waiting for a drain under way).
    pub fn with_state_machine<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        let applier = lock(&self.applier);
        f(&applier
            .as_ref()
            .expect("only the thread runtime retires, and never inspects")
            .state_machine)
    }

    /// Stops timing batches of entries: callers then never leave entries to the node's
    /// workers for being slow, so what runs where depends on nothing but the queue (the
    /// simulator's runs must replay exactly).
    pub fn never_slow(&self) {
        self.timed.store(false, Ordering::Relaxed);
        self.slow.store(false, Ordering::Relaxed);
    }

    /// Test-only: [`Backlog::drain_some`] runs the tasks behind a snapshot before it, so the
    /// snapshot holds entries past the index it stands for.
    #[cfg(test)]
    pub fn set_snapshot_behind_later_applies(&self, on: bool) {
        self.snapshot_behind_later_applies.store(on, Ordering::Relaxed);
    }

    /// Stops `drain` after the entry it is applying; tasks not run are dropped.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut tasks = lock(&self.tasks);
        let dropped = std::mem::take(&mut *tasks);
        self.queued.store(0, Ordering::SeqCst);
        drop(tasks);
        self.entries_done(dropped.iter().map(ApplyTask::entries).sum());
        self.wake_stalled();
        drop(dropped); // NB: outside the lock: dropping a responder answers its proposer
    }

    /// The node's workers have ended: stops, and drops the applier now, state machine and
    /// all, so that its waiting proposals and reads hear `NodeDown` at once. NB: not left to
    /// the last reference: a [`crate::NodeHandle`] kept past a kill holds this backlog (for
    /// lease reads), and would keep the state machine alive and its receipts waiting until
    /// they timed out. Waits for a drain or a lease read under way (a drain stops after the
    /// entry it is applying).
    pub fn retire(&self) {
        self.stop();
        let applier = lock(&self.applier).take();
        drop(applier); // NB: outside the lock: dropping a responder answers its proposer
    }
}

impl<S: StateMachine> QueryNow<S> for Backlog<S> {
    #[inline]
    fn query_now<R>(&self, index: LogIndex, query: impl FnOnce(&S) -> R) -> Option<(R, LogIndex)> {
        Backlog::query_now(self, index, query)
    }
}

/// The simulator's inline applier, as a caller-thread lease read sees it: the same answers as
/// [`Backlog::query_now`] (never while failed or behind; a panicking query gives `None`).
impl<S: StateMachine> QueryNow<S> for Applier<S> {
    fn query_now<R>(&self, index: LogIndex, query: impl FnOnce(&S) -> R) -> Option<(R, LogIndex)> {
        if self.failure.is_some() || self.applied < index {
            return None;
        }
        let state = &self.state_machine;
        let answer = catch_unwind(AssertUnwindSafe(|| query(state))).ok()?;
        Some((answer, self.applied))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`run_task`], with a panic anywhere in the user's code it runs caught. `apply`, `restore`,
/// `snapshot`, `digest` and queries are caught where they are called; a panic elsewhere (a
/// `Drop` of the user's `Output` or `Command`, say) fails the applier here as a panicking
/// `apply` does: every waiting proposal and read hears `StateMachinePanicked`, and the worker
/// lives on to answer the tasks behind it. Once per task, never per entry: the cost is a
/// landing pad.
fn run_caught<S: StateMachine>(
    applier: &mut Applier<S>,
    task: ApplyTask<S>,
    stop: &AtomicBool,
    taken: &Sender<Arc<Snapshot>>,
    watch: Option<&mut Stopwatch>,
) -> Result<Option<ApplyTask<S>>, Error> {
    let run = || run_task(applier, task, stop, taken, watch);
    let payload = match catch_unwind(AssertUnwindSafe(run)) {
        Ok(ran) => return ran,
        Err(payload) => payload,
    };
    let error = applier.failure.clone().unwrap_or_else(|| Error::StateMachinePanicked {
        node: applier.node,
        index: applier.applied,
        message: format!("outside apply, after applying it: {}", panic_message(&*payload)),
    });
    // NB: answering runs the user's code again (a drop); should that panic too, what it left
    // unanswered hears `NodeDown` as it drops, or the failure from the next task on.
    let _ = catch_unwind(AssertUnwindSafe(|| applier.stop(error.clone())));
    Err(error)
}

fn run_task<S: StateMachine>(
    applier: &mut Applier<S>,
    task: ApplyTask<S>,
    stop: &AtomicBool,
    taken: &Sender<Arc<Snapshot>>,
    watch: Option<&mut Stopwatch>,
) -> Result<Option<ApplyTask<S>>, Error> {
    match task {
        ApplyTask::Snapshot(meta) => {
            let snapshot = applier.snapshot(meta)?;
            let _ = taken.send(snapshot); // NB: fails only while the node is stopping
        }
        ApplyTask::Restore(snapshot) => applier.restore(&snapshot)?,
        ApplyTask::Await { first, term, responders } => {
            applier.await_entries(first, term, responders)
        }
        ApplyTask::Read { index, reads } => applier.read(index, reads),
        ApplyTask::Entries { first, mut entries } => {
            let mut watch = watch;
            for i in 0..entries.len() {
                if stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                applier.apply(LogIndex(first.0 + i as u64), &entries[i])?;
                let done = i + 1;
                if watch.as_mut().is_some_and(|w| w.stop_after(done)) && done < entries.len() {
                    let rest = entries.split_off(done);
                    let first = LogIndex(first.0 + done as u64);
                    return Ok(Some(ApplyTask::Entries { first, entries: rest }));
                }
            }
        }
        ApplyTask::Status { mut status, reply } => {
            fill_status(applier, &mut status);
            let _ = reply.send(*status);
        }
        ApplyTask::NodeFailed(error) => applier.node_failed(error),
    }
    Ok(None)
}

fn fill_status<S: StateMachine>(applier: &Applier<S>, status: &mut NodeStatus) {
    // NB: a panicking `digest` reports the default digest (0), not a dead worker.
    let sm = &applier.state_machine;
    status.digest = catch_unwind(AssertUnwindSafe(|| sm.digest())).unwrap_or_default();
    status.core.last_applied = applier.applied;
    status.failure = applier.failure.clone();
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvCommand, KvStateMachine};
    use crate::node::receipt::{receipt, Receipt};
    use crate::types::Term;

    fn put(value: &str) -> Entry<KvCommand> {
        let command = KvCommand::Put { key: "k".into(), value: value.into() };
        Entry { term: Term(3), payload: Payload::Command(command) }
    }

    fn awaiting(
        applier: &mut Applier<KvStateMachine>,
        index: u64,
        term: u64,
    ) -> Receipt<crate::kv::KvOutput> {
        let (responder, receipt) = receipt(NodeId(1));
        applier.await_entry(LogIndex(index), Term(term), responder);
        receipt
    }

    /// The review's schedule: proposals at 4, 5, 6 in term 1 are truncated; a new proposal lands
    /// at 4 in term 3 behind them. Matching on the index alone answered the new, applied proposal
    /// `ProposalDropped` once index 6 was applied, and `Cluster::propose` retried it: applied
    /// twice. Matching on (index, term) answers each one correctly.
    #[test]
    fn a_proposal_at_a_reused_index_is_matched_on_index_and_term() {
        let mut applier = Applier::new(NodeId(1), KvStateMachine::new(), LogIndex(3));
        let old: Vec<_> = (4..=6).map(|i| awaiting(&mut applier, i, 1)).collect();
        let new = awaiting(&mut applier, 4, 3);
        for (i, value) in [(4, "new"), (5, "x"), (6, "y")] {
            applier.apply(LogIndex(i), &put(value)).expect("applied");
        }
        for (i, receipt) in (4..=6).zip(&old) {
            let dropped = Error::ProposalDropped { index: LogIndex(i), term: Term(1) };
            assert_eq!(receipt.try_result(), Some(Err(dropped)));
        }
        let applied = new.try_result().expect("answered").expect("applied");
        assert_eq!((applied.index, applied.term), (LogIndex(4), Term(3)));
        assert_eq!(applied.output.as_deref(), Some("new"));
    }

    /// The waiting queue keeps `(index, term)` order whatever order proposals come in, and a
    /// second proposal at the same place replaces the first, which hears `NodeDown`.
    #[test]
    fn waiting_proposals_leave_in_index_and_term_order() {
        let mut waiting = Waiting::new();
        let mut receipts = Vec::new();
        for (i, t) in [(4, 1), (5, 1), (9, 1), (4, 3), (6, 3), (2, 5), (6, 3), (10, 2)] {
            let (responder, receipt) = receipt::<u32>(NodeId(1));
            waiting.insert((LogIndex(i), Term(t)), responder);
            receipts.push(receipt);
        }
        assert_eq!(receipts[4].try_result(), Some(Err(Error::NodeDown(NodeId(1)))), "replaced");
        let mut order = Vec::new();
        while let Some(((i, t), _)) = waiting.pop_through(LogIndex(9)) {
            order.push((i.0, t.0));
        }
        assert_eq!(order, [(2, 5), (4, 1), (4, 3), (5, 1), (6, 3), (9, 1)]);
        assert!(!waiting.is_empty(), "(10, 2) waits on");
        assert_eq!(waiting.pop_through(LogIndex(9)).map(|(k, _)| k), None);
    }

    #[test]
    fn a_panic_in_apply_answers_every_waiting_proposal_and_every_later_one() {
        struct Boom;
        impl StateMachine for Boom {
            type Command = u8;
            type Output = u8;
            fn apply(&mut self, _: LogIndex, c: &u8) -> u8 {
                assert!(*c != 0, "zero is not allowed");
                *c
            }
            fn snapshot(&self) -> Vec<u8> {
                Vec::new()
            }
            fn restore(&mut self, _: &[u8]) -> Result<(), String> {
                Ok(())
            }
        }
        let mut applier = Applier::new(NodeId(2), Boom, LogIndex(0));
        let (responder, waiting) = receipt(NodeId(2));
        applier.await_entry(LogIndex(2), Term(1), responder);
        let zero = Entry { term: Term(1), payload: Payload::Command(0u8) };
        let error = applier.apply(LogIndex(1), &zero).expect_err("panicked");
        let Error::StateMachinePanicked { node, index, message } = &error else {
            panic!("{error:?}")
        };
        assert_eq!((*node, *index), (NodeId(2), LogIndex(1)));
        assert!(message.contains("zero is not allowed"), "{message}");
        assert_eq!(waiting.try_result(), Some(Err(error.clone())));
        let (responder, later) = receipt(NodeId(2));
        applier.await_entry(LogIndex(3), Term(1), responder);
        assert_eq!(later.try_result(), Some(Err(error.clone())));
        let one = Entry { term: Term(1), payload: Payload::Command(1u8) };
        assert_eq!(applier.apply(LogIndex(2), &one), Err(error));
    }

    /// `snapshot` is the user's code too: a panic in it is caught like one in `apply`, and the
    /// backlog keeps draining (it once unwound through `drain` with its draining flag set, so
    /// nothing queued later was ever run).
    #[test]
    fn a_panicking_snapshot_fails_the_applier_and_the_backlog_still_drains() {
        struct BadSnapshot;
        impl StateMachine for BadSnapshot {
            type Command = u64;
            type Output = u64;
            fn apply(&mut self, _: LogIndex, c: &u64) -> u64 {
                *c
            }
            fn snapshot(&self) -> Vec<u8> {
                panic!("no snapshot today")
            }
            fn restore(&mut self, _: &[u8]) -> Result<(), String> {
                Ok(())
            }
        }
        let applier = Applier::new(NodeId(1), BadSnapshot, LogIndex(0));
        let (taken, _taken) = crossbeam_channel::unbounded();
        let ApplyQueue::Deferred(backlog) = ApplyQueue::deferred(applier, taken, usize::MAX) else {
            unreachable!("a deferred queue")
        };
        let meta = SnapshotMeta { index: LogIndex(0), term: Term(0), config: Default::default() };
        backlog.push(ApplyTask::Snapshot(meta));
        backlog.drain();
        let failure = lock(&backlog.failure).clone().expect("the panic failed the applier");
        let Error::StateMachinePanicked { index, message, .. } = &failure else {
            panic!("{failure:?}")
        };
        assert_eq!(*index, LogIndex(0));
        assert!(message.contains("no snapshot today"), "{message}");
        let (responder, later) = receipt(NodeId(1));
        backlog.push(ApplyTask::Await {
            first: LogIndex(1),
            term: Term(1),
            responders: vec![responder],
        });
        assert!(backlog.needs_drain(), "nobody drains: someone must");
        backlog.drain();
        assert_eq!(later.try_result(), Some(Err(failure)));
    }

    /// Two threads share a backlog: while one runs a slow apply, the other queues more and is
    /// told not to drain (someone is); the draining thread then runs what was queued meanwhile,
    /// in order, so nothing queued is left behind.
    #[test]
    fn work_queued_while_another_thread_drains_is_run_by_that_thread_in_order() {
        use std::sync::mpsc;
        /// Blocks in `apply` until the test lets it go; records the order of applies.
        struct Gate(mpsc::Receiver<()>, Arc<Mutex<Vec<u64>>>);
        impl StateMachine for Gate {
            type Command = u64;
            type Output = ();
            fn apply(&mut self, _: LogIndex, c: &u64) {
                if *c == 1 {
                    self.0.recv().expect("released");
                }
                self.1.lock().unwrap().push(*c);
            }
            fn snapshot(&self) -> Vec<u8> {
                Vec::new()
            }
            fn restore(&mut self, _: &[u8]) -> Result<(), String> {
                Ok(())
            }
        }
        let (release, gate) = mpsc::channel();
        let order = Arc::new(Mutex::new(Vec::new()));
        let applier = Applier::new(NodeId(1), Gate(gate, Arc::clone(&order)), LogIndex(0));
        let (taken, _) = crossbeam_channel::unbounded();
        let ApplyQueue::Deferred(backlog) = ApplyQueue::deferred(applier, taken, usize::MAX) else {
            unreachable!()
        };
        let entry = |c| Entry { term: Term(1), payload: Payload::Command(c) };
        backlog.push(ApplyTask::Entries { first: LogIndex(1), entries: vec![entry(1)] });
        assert!(backlog.needs_drain());
        let slow = {
            let backlog = Arc::clone(&backlog);
            std::thread::spawn(move || backlog.drain())
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !backlog.draining.load(Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "the other thread never drained");
            std::thread::yield_now();
        }
        backlog.push(ApplyTask::Entries { first: LogIndex(2), entries: vec![entry(2), entry(3)] });
        assert!(!backlog.needs_drain(), "another thread drains: the loop carries on");
        backlog.drain(); // returns at once: the applier is busy
        release.send(()).expect("gate open");
        slow.join().expect("drained");
        assert_eq!(*order.lock().unwrap(), vec![1, 2, 3], "all applied, in log order");
        assert!(!backlog.has_work() && !backlog.needs_drain());
    }

    /// Sleeps as many microseconds as its command says; records what it applied.
    struct Sleepy(Arc<Mutex<Vec<u64>>>);

    impl StateMachine for Sleepy {
        type Command = u64;
        type Output = ();
        fn apply(&mut self, _: LogIndex, c: &u64) {
            std::thread::sleep(std::time::Duration::from_micros(*c));
            self.0.lock().unwrap().push(*c);
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }

    /// What a caller runs (`drain_some`): what is queued, but no snapshot, no entry past the
    /// first that shows `apply` slow, and no entries at all while the last batch showed it
    /// slow; the node's own drain runs everything, and a fast batch lets callers apply again.
    #[test]
    fn a_caller_leaves_snapshots_and_slow_applies_to_the_node() {
        use crate::message::SnapshotMeta;
        let applied = Arc::new(Mutex::new(Vec::new()));
        let applier = Applier::new(NodeId(1), Sleepy(Arc::clone(&applied)), LogIndex(0));
        let (taken, snapshots) = crossbeam_channel::unbounded();
        let ApplyQueue::Deferred(backlog) = ApplyQueue::deferred(applier, taken, usize::MAX) else {
            unreachable!()
        };
        let entries = |first, c: Vec<u64>| ApplyTask::Entries {
            first: LogIndex(first),
            entries: c
                .into_iter()
                .map(|c| Entry { term: Term(1), payload: Payload::Command(c) })
                .collect(),
        };
        let applied = || applied.lock().unwrap().clone();

        // NB: one entry: a caller never splits it, however its thread is scheduled.
        backlog.push(entries(1, vec![0]));
        assert!(!backlog.drain_some(), "a fast batch: the caller ran it all");
        assert_eq!(applied(), vec![0]);

        let meta = SnapshotMeta { index: LogIndex(1), term: Term(1), config: Default::default() };
        backlog.push(ApplyTask::Snapshot(meta));
        backlog.push(entries(2, vec![0]));
        assert!(backlog.drain_some(), "left a snapshot for the node");
        assert!(snapshots.is_empty() && applied().len() == 1, "the caller ran nothing");
        backlog.drain();
        assert_eq!(snapshots.len(), 1, "the node took it");
        assert_eq!(applied(), vec![0, 0]);

        // 2 ms an entry, the limit is 20 µs: the caller stops after the first.
        backlog.push(entries(3, vec![2_000, 2_000, 2_000]));
        backlog.push(entries(6, vec![0]));
        assert!(backlog.drain_some(), "left the rest of the batch for the node");
        assert_eq!(applied().len(), 3, "the caller ran one slow entry");
        assert_eq!(backlog.entries(), 3, "two left of the batch, and the next");
        assert!(backlog.drain_some(), "known slow now: the caller runs no entry");
        assert_eq!(applied().len(), 3, "the caller ran nothing");
        backlog.drain();
        let expected = vec![0, 0, 2_000, 2_000, 2_000, 0];
        assert_eq!(applied(), expected, "the node ran it, in order");
        // The node's fast batch cleared the mark (NB: unless its thread lost its core for
        // over 20 µs in it: then the next fast batch does).
        let mut next = 7;
        while backlog.slow.load(Ordering::Relaxed) && next < 100 {
            backlog.push(entries(next, vec![0]));
            backlog.drain();
            next += 1;
        }
        backlog.push(entries(next, vec![0]));
        assert!(!backlog.drain_some(), "fast again: the caller ran it");
        assert_eq!(applied().len() as u64, next);
        assert!(!backlog.has_work());
    }

    /// A caller that leaves the rest of a slow batch as the node retires (its workers ended,
    /// the queue emptied) drops that rest, uncounted, instead of queueing it where nobody
    /// will ever run it (found by a review).
    #[test]
    fn a_remainder_pushed_back_as_the_backlog_retires_is_dropped_and_uncounted() {
        /// [`Sleepy`], telling when its first `apply` has begun.
        struct Started(Sleepy, Arc<AtomicBool>);
        impl StateMachine for Started {
            type Command = u64;
            type Output = ();
            fn apply(&mut self, index: LogIndex, c: &u64) {
                self.1.store(true, Ordering::SeqCst);
                self.0.apply(index, c)
            }
            fn snapshot(&self) -> Vec<u8> {
                Vec::new()
            }
            fn restore(&mut self, _: &[u8]) -> Result<(), String> {
                Ok(())
            }
        }
        let applied = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(AtomicBool::new(false));
        let state_machine = Started(Sleepy(Arc::clone(&applied)), Arc::clone(&started));
        let applier = Applier::new(NodeId(1), state_machine, LogIndex(0));
        let (taken, _snapshots) = crossbeam_channel::unbounded();
        let ApplyQueue::Deferred(backlog) = ApplyQueue::deferred(applier, taken, usize::MAX) else {
            unreachable!()
        };
        let batch = [50_000, 0, 0].map(|c| Entry { term: Term(1), payload: Payload::Command(c) });
        backlog.push(ApplyTask::Entries { first: LogIndex(1), entries: batch.to_vec() });
        let caller = {
            let backlog = Arc::clone(&backlog);
            std::thread::spawn(move || backlog.drain_some())
        };
        // The caller took the batch and applies its first (50 ms) entry. (NB: not "the batch
        // left the queue": between taking it and running it, a caller that sees the backlog
        // retired drops the whole batch, which failed this test once on a loaded machine.)
        let deadline = Instant::now() + Duration::from_secs(30);
        while !started.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the caller never began the batch");
            std::thread::yield_now();
        }
        backlog.retire();
        caller.join().expect("the caller");
        assert_eq!(*applied.lock().unwrap(), vec![50_000], "the caller ran the slow entry");
        assert_eq!(backlog.entries(), 0, "the two not applied were dropped, and uncounted");
        assert_eq!(backlog.queued(), 0);
        assert!(!backlog.needs_drain() && !backlog.drain_some());
    }

    /// The count the node loop stalls on: entries (not tasks) added on push and taken off once
    /// their batch ran, the peak kept; over the limit only while more than `limit` wait; a
    /// thread waiting for the backlog to come down is woken by the drain that brings it
    /// there, and `stop` clears the count.
    #[test]
    fn the_backlog_counts_its_entries_and_wakes_a_stalled_loop_at_the_limit() {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let applier = Applier::new(NodeId(1), Sleepy(Arc::clone(&applied)), LogIndex(0));
        let (taken, _taken) = crossbeam_channel::unbounded();
        let ApplyQueue::Deferred(backlog) = ApplyQueue::deferred(applier, taken, 4) else {
            unreachable!()
        };
        let entries = |first, n: u64| ApplyTask::Entries {
            first: LogIndex(first),
            entries: (0..n)
                .map(|_| Entry { term: Term(1), payload: Payload::Command(0) })
                .collect(),
        };
        backlog.push(entries(1, 3));
        backlog.push(ApplyTask::Read { index: LogIndex(1), reads: Vec::new() });
        assert_eq!((backlog.entries(), backlog.queued()), (3, 2), "entries, not tasks");
        assert!(!backlog.over_limit(), "3 of 4");
        backlog.push(entries(4, 2));
        assert_eq!((backlog.entries(), backlog.peak()), (5, 5));
        assert!(backlog.over_limit(), "5 of 4");
        assert!(!backlog.wait_below_limit(std::time::Duration::from_millis(1)), "nobody drains");
        assert_eq!(backlog.count_queued_entries(), 5);

        let waiter = {
            let backlog = Arc::clone(&backlog);
            std::thread::spawn(move || {
                let start = std::time::Instant::now();
                let below = backlog.wait_below_limit(std::time::Duration::from_secs(30));
                (below, start.elapsed())
            })
        };
        backlog.drain();
        let (below, waited) = waiter.join().expect("waiter");
        assert!(below && waited.as_secs() < 20, "woken below the limit, not timed out");
        assert_eq!((backlog.entries(), backlog.peak()), (0, 5), "the peak stays");
        assert_eq!(applied.lock().unwrap().len(), 5);

        backlog.set_ignore_limit(true);
        backlog.push(entries(6, 9));
        assert!(!backlog.over_limit(), "the test-only bug: no limit");
        backlog.set_ignore_limit(false);
        assert!(backlog.over_limit());
        backlog.stop();
        assert_eq!(backlog.entries(), 0, "dropped entries no longer count");
        assert!(!backlog.over_limit() && backlog.wait_below_limit(std::time::Duration::ZERO));
    }

    /// A panic in the user's code outside `apply` (here an output's `Drop`, run where nobody
    /// waits for the output) fails the applier like a panicking `apply`, and the drain goes on
    /// to answer what is queued behind it with the failure (it once unwound through the
    /// worker, which died without a word).
    #[test]
    fn a_panic_outside_apply_fails_the_applier_and_the_backlog_still_drains() {
        #[derive(Clone, Debug)]
        struct Loud;
        impl Drop for Loud {
            fn drop(&mut self) {
                if !std::thread::panicking() {
                    panic!("a loud output")
                }
            }
        }
        struct Shouts;
        impl StateMachine for Shouts {
            type Command = u64;
            type Output = Loud;
            fn apply(&mut self, _: LogIndex, _: &u64) -> Loud {
                Loud
            }
            fn snapshot(&self) -> Vec<u8> {
                Vec::new()
            }
            fn restore(&mut self, _: &[u8]) -> Result<(), String> {
                Ok(())
            }
        }
        let applier = Applier::new(NodeId(1), Shouts, LogIndex(0));
        let (taken, _taken) = crossbeam_channel::unbounded();
        let ApplyQueue::Deferred(backlog) = ApplyQueue::deferred(applier, taken, usize::MAX) else {
            unreachable!("a deferred queue")
        };
        let entry = Entry { term: Term(1), payload: Payload::Command(7) };
        backlog.push(ApplyTask::Entries { first: LogIndex(1), entries: vec![entry] });
        let (responder, later) = receipt(NodeId(1));
        let responders = vec![responder];
        backlog.push(ApplyTask::Await { first: LogIndex(2), term: Term(1), responders });
        backlog.drain();
        let failure = lock(&backlog.failure).clone().expect("the panic failed the applier");
        let Error::StateMachinePanicked { index, message, .. } = &failure else {
            panic!("{failure:?}")
        };
        assert_eq!(*index, LogIndex(1), "the last entry applied");
        assert!(message.contains("outside apply") && message.contains("a loud output"));
        assert_eq!(later.try_result().map(|r| r.map(|_| ())), Some(Err(failure)));
        assert!(!backlog.draining.load(Ordering::SeqCst) && !backlog.has_work());
    }

    /// Retiring a backlog (the node's workers ended) drops its state machine and answers what
    /// waits in it `NodeDown` at once, though the backlog itself lives on (a kept handle);
    /// lease reads on it find nothing to query.
    #[test]
    fn a_retired_backlog_drops_its_state_machine_and_answers_what_waits_node_down() {
        struct Flagged(Arc<AtomicBool>);
        impl Drop for Flagged {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        impl StateMachine for Flagged {
            type Command = u64;
            type Output = u64;
            fn apply(&mut self, _: LogIndex, c: &u64) -> u64 {
                *c
            }
            fn snapshot(&self) -> Vec<u8> {
                Vec::new()
            }
            fn restore(&mut self, _: &[u8]) -> Result<(), String> {
                Ok(())
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let applier = Applier::new(NodeId(2), Flagged(Arc::clone(&dropped)), LogIndex(0));
        let (taken, _taken) = crossbeam_channel::unbounded();
        let ApplyQueue::Deferred(backlog) = ApplyQueue::deferred(applier, taken, usize::MAX) else {
            unreachable!("a deferred queue")
        };
        let (responder, waiting) = receipt(NodeId(2));
        let responders = vec![responder];
        backlog.push(ApplyTask::Await { first: LogIndex(1), term: Term(1), responders });
        backlog.drain();
        assert_eq!(waiting.try_result(), None, "waits for its entry");
        assert_eq!(backlog.query_now(LogIndex(0), |_| ()), Some(((), LogIndex(0))));
        backlog.retire();
        assert!(dropped.load(Ordering::SeqCst), "the state machine is dropped");
        assert_eq!(waiting.try_result(), Some(Err(Error::NodeDown(NodeId(2)))));
        assert_eq!(backlog.query_now(LogIndex(0), |_| ()), None);
        assert!(!backlog.drain_some() && !backlog.needs_drain());
    }

    /// A snapshot the state machine cannot read stops the node before anything is applied on a
    /// half-restored state; the error says what to fix.
    #[test]
    fn a_restore_that_fails_stops_the_applier() {
        use crate::message::{Configuration, Snapshot, SnapshotMeta};
        let mut applier = Applier::new(NodeId(3), KvStateMachine::new(), LogIndex(0));
        applier.apply(LogIndex(1), &put("before")).expect("applied");
        let meta = SnapshotMeta {
            index: LogIndex(9),
            term: Term(2),
            config: std::sync::Arc::new(Configuration::default()),
        };
        let garbage = Snapshot { meta, data: std::sync::Arc::from(&[1u8, 2, 3][..]) };
        let error = applier.restore(&garbage).expect_err("unreadable");
        let Error::RestoreFailed { node, index, message } = &error else { panic!("{error:?}") };
        assert_eq!((*node, *index), (NodeId(3), LogIndex(9)));
        assert!(message.contains("truncated"), "{message}");
        assert!(error.to_string().contains("restart"), "says what to do: {error}");
        assert_eq!(applier.apply(LogIndex(2), &put("after")), Err(error.clone()));
        assert_eq!(applier.state_machine().get("k"), Some("before"), "state left as it was");
    }
}
