//! [`Receipt`]: a proposal in flight, answered once by the node that took it. Blocking
//! ([`Receipt::wait`]) and `async` (`Receipt` is a [`Future`]) without an async runtime: the
//! node thread that answers wakes whichever waits.
//!
//! The node side holds a [`Responder`]; dropping it unanswered (the node crashed or stopped)
//! answers `NodeDown`, so no proposer waits on a node that is gone. A read's node side is a
//! [`ReadFn`], which carries the query in the same allocation as the answer slot
//! ([`read_receipt`]) and answers `NodeDown` the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::types::{LogIndex, NodeId, Term};

/// Work a caller blocked on its receipt may do instead of yielding its core: a step of the
/// node that will answer it (the thread runtime's leader loop). Whether it did any.
pub(crate) trait Assist: Send + Sync {
    fn assist(&self) -> bool;

    /// The same work behind a reference count of its own, for one caller to clone per
    /// receipt without touching a count every other caller shares; `None` to share this one.
    fn fork(&self) -> Option<Arc<dyn Assist>> {
        None
    }
}

/// The outcome of a proposal that was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied<O> {
    /// The log index the command was given.
    pub index: LogIndex,
    /// The term in which it was appended.
    pub term: Term,
    /// What the state machine returned.
    pub output: O,
}

struct State<O> {
    appended: Option<(LogIndex, Term)>,
    done: Option<Result<Applied<O>, Error>>,
    waker: Option<Waker>,
    /// A thread sleeps on `changed`: only then does an answer pay for a wake-up call.
    sleeping: bool,
    /// The output was moved out to the caller (`Receipt::wait`, `poll`): `done` is empty.
    taken: bool,
}

impl<O: Clone> State<O> {
    /// Whether the final answer came (and may have been handed over already).
    fn answered(&self) -> bool {
        self.done.is_some() || self.taken
    }

    /// Hands the final answer over: an output moves out, once (no copy: an output that shares
    /// a value with the store, like `KvOutput`, costs no reference count here), while an error
    /// stays to be reported again.
    fn take(&mut self) -> Result<Applied<O>, Error> {
        match self.done.take() {
            Some(Ok(applied)) => {
                self.appended.get_or_insert((applied.index, applied.term));
                self.taken = true;
                Ok(applied)
            }
            Some(Err(e)) => {
                self.done = Some(Err(e.clone()));
                Err(e)
            }
            None => {
                debug_assert!(self.taken, "take() only once answered");
                Err(Error::AnswerTaken)
            }
        }
    }

    /// The final answer without handing it over.
    fn peek(&self) -> Option<Result<Applied<O>, Error>> {
        match &self.done {
            Some(done) => Some(done.clone()),
            None if self.taken => Some(Err(Error::AnswerTaken)),
            None => None,
        }
    }
}

/// The answer slot the node and the waiter share, and (`job`) what the node needs to produce
/// the answer, in the same allocation: a read's query (see [`read_receipt`]), nothing for a
/// proposal. The receipt and the responder see it as [`Slot`].
struct Shared<O, X: ?Sized = ()> {
    state: Mutex<State<O>>,
    changed: Condvar,
    /// Set with any change of `state`, so a waiter can poll it without the lock.
    changed_flag: AtomicBool,
    /// How many times a waiter yields, polling, before it sleeps (`Config::spin_rounds`).
    spin_rounds: u32,
    job: X,
}

/// Anything that may sit in [`Shared::job`].
trait Job: Send + Sync {}
impl<T: Send + Sync> Job for T {}

/// The answer slot, whatever job came with it.
type Slot<O> = Shared<O, dyn Job>;

impl<O, X: ?Sized> Shared<O, X> {
    fn lock(&self) -> MutexGuard<'_, State<O>> {
        // NB: nothing panics while holding this lock; recover the data anyway.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores the final answer and wakes a blocked [`Receipt::wait`] and an awaiting task.
    fn answer(&self, result: Result<Applied<O>, Error>) {
        let (waker, sleeping) = {
            let mut state = self.lock();
            state.done = Some(result);
            self.changed_flag.store(true, Ordering::Release);
            (state.waker.take(), state.sleeping)
        };
        if sleeping {
            self.changed.notify_all();
        }
        if let Some(waker) = waker {
            wake(waker);
        }
    }
}

/// Wakes an awaiting task. A waker is its executor's code, run here on the answering thread
/// (a node's worker, a caller applying for it): a panic in it is contained, not let unwind
/// through the node. The answer is stored already; only that one task may miss its wake-up.
fn wake(waker: Waker) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake())) {
        let message = super::panic_message(&*payload);
        tracing::error!(message, "a receipt's waker panicked; the answer is stored, unwoken");
    }
}

fn shared<O, X>(spin_rounds: u32, job: X) -> Shared<O, X> {
    Shared {
        state: Mutex::new(State {
            appended: None,
            done: None,
            waker: None,
            sleeping: false,
            taken: false,
        }),
        changed: Condvar::new(),
        changed_flag: AtomicBool::new(false),
        spin_rounds,
        job,
    }
}

/// What a proposal's answer holds in memory while it waits, besides the node's responder: the
/// caller's receipt and the slot they share (one allocation: the slot, its two reference
/// counts and the allocator's word).
pub(crate) const fn waiting_answer_bytes<O>() -> usize {
    let word = std::mem::size_of::<usize>();
    std::mem::size_of::<Receipt<O>>() + std::mem::size_of::<Shared<O>>() + 3 * word
}

/// Creates a connected pair: the node answers through the [`Responder`], the proposer waits on
/// the [`Receipt`] (sleeping at once: see [`receipt_spinning`]).
pub(crate) fn receipt<O>(node: NodeId) -> (Responder<O>, Receipt<O>) {
    receipt_spinning(node, 0)
}

/// [`receipt`], whose waiter yields up to `spin_rounds` times before it sleeps.
pub(crate) fn receipt_spinning<O>(node: NodeId, spin_rounds: u32) -> (Responder<O>, Receipt<O>) {
    receipt_in(node, spin_rounds, None)
}

/// A proposal's answer slot, answered and handed back by [`Receipt::into_spare`] for the
/// same caller's next proposal: no allocation per proposal, and the memory stays on the
/// caller's thread.
pub(crate) struct SpareSlot<O>(Arc<Slot<O>>);

/// [`receipt_spinning`] in `spare`, if given, instead of a new allocation.
pub(crate) fn receipt_in<O>(
    node: NodeId,
    spin_rounds: u32,
    spare: Option<SpareSlot<O>>,
) -> (Responder<O>, Receipt<O>) {
    let shared: Arc<Slot<O>> = match spare {
        Some(SpareSlot(slot)) => slot,
        None => Arc::new(shared(spin_rounds, ())),
    };
    let answer = Answer::Waiting(Arc::clone(&shared));
    let responder = Responder {
        node,
        shared: Some(shared),
        #[cfg(test)]
        lost_claims_unreachable: false,
    };
    (responder, Receipt { node, answer, assist: None })
}

/// A read the node runs once it may: `run(state machine, query)` gives the answer. The query
/// lives in its receipt's allocation, so a read costs one allocation and, usually, is freed by
/// the thread that made it (the waiter drops its receipt last).
pub(crate) fn read_receipt<S, Q, O, F>(
    node: NodeId,
    spin_rounds: u32,
    query: Q,
    run: F,
) -> (ReadFn<S>, Receipt<O>)
where
    S: 'static,
    Q: Send + 'static,
    O: Send + 'static,
    F: Fn(&S, &Q) -> O + Send + Sync + 'static,
{
    let shared = Arc::new(shared(spin_rounds, ReadJob { query: Mutex::new(query), run }));
    let job: Arc<dyn RunRead<S>> = Arc::clone(&shared) as _;
    let answer = Answer::Waiting(shared);
    (ReadFn { node, job: Some(job) }, Receipt { node, answer, assist: None })
}

/// A read's query and the function that answers it from the state machine.
struct ReadJob<Q, F> {
    /// NB: only the node touches it, once; the mutex makes the slot `Sync` for any `Send` query.
    query: Mutex<Q>,
    run: F,
}

/// What the node sees of a read: run it, or fail it.
trait RunRead<S>: Send + Sync {
    fn run(&self, state: &S, index: LogIndex);
    fn fail(&self, error: Error);
}

impl<S, Q, O, F> RunRead<S> for Shared<O, ReadJob<Q, F>>
where
    Q: Send,
    O: Send,
    F: Fn(&S, &Q) -> O + Send + Sync,
{
    fn run(&self, state: &S, index: LogIndex) {
        let output = {
            let query = self.job.query.lock().unwrap_or_else(|p| p.into_inner());
            (self.job.run)(state, &query)
        };
        self.answer(Ok(Applied { index, term: Term(0), output }));
    }

    fn fail(&self, error: Error) {
        self.answer(Err(error));
    }
}

/// A read for the node to answer once the state machine may serve it (thesis §6.4): called
/// once with the state machine and its applied index, or with the reason the read failed.
/// Dropped unanswered (the node stopped, the query panicked), it answers `NodeDown`.
pub(crate) struct ReadFn<S> {
    node: NodeId,
    /// `None` once answered.
    job: Option<Arc<dyn RunRead<S>>>,
}

impl<S> ReadFn<S> {
    /// Runs the query on `state` applied through `index` and answers, or answers `error`.
    pub fn answer(mut self, input: Result<(&S, LogIndex), Error>) {
        if let Some(job) = &self.job {
            match input {
                Ok((state, index)) => job.run(state, index),
                Err(error) => job.fail(error),
            }
        }
        self.job = None; // NB: only now: a query that panicked leaves it to `drop`
    }
}

impl<S> Drop for ReadFn<S> {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            job.fail(Error::NodeDown(self.node));
        }
    }
}

/// The node's end of a proposal: where to report its position and outcome.
pub(crate) struct Responder<O> {
    node: NodeId,
    /// `None` once answered.
    shared: Option<Arc<Slot<O>>>,
    /// Test-only bug: dropped unanswered after a forward, it claims the leader was never
    /// reached (`LeaderUnreachable`: never applied) instead of `NodeDown` (outcome unknown).
    #[cfg(test)]
    lost_claims_unreachable: bool,
}

impl<O> Responder<O> {
    /// The leader appended the command at `(index, term)`; its fate is now the log's.
    pub fn appended(&self, index: LogIndex, term: Term) {
        if let Some(shared) = &self.shared {
            let mut state = shared.lock();
            state.appended = Some((index, term));
            shared.changed_flag.store(true, Ordering::Release);
            if state.sleeping {
                shared.changed.notify_all();
            }
        }
    }

    /// The request was forwarded to `leader`: if it drops this unanswered, the caller learns
    /// that `leader` went down (not the node the caller asked).
    pub fn forwarded_to(&mut self, leader: NodeId) {
        self.node = leader;
    }

    /// Test-only: see the field.
    #[cfg(test)]
    pub fn set_lost_claims_unreachable(&mut self) {
        self.lost_claims_unreachable = true;
    }

    /// The final answer. Wakes a blocked [`Receipt::wait`] and an awaiting task.
    pub fn finish(mut self, result: Result<Applied<O>, Error>) {
        self.answer(result);
    }

    fn answer(&mut self, result: Result<Applied<O>, Error>) {
        if let Some(shared) = self.shared.take() {
            shared.answer(result);
        }
    }
}

impl<O> Drop for Responder<O> {
    /// Unanswered when the node stops: the proposer learns the node went down.
    fn drop(&mut self) {
        let node = self.node;
        #[cfg(test)]
        if self.lost_claims_unreachable {
            return self.answer(Err(Error::LeaderUnreachable(node)));
        }
        self.answer(Err(Error::NodeDown(node)));
    }
}

/// A proposal in flight: where its entry went, and (later) its output.
///
/// What each answer means (the same in the thread runtime and the simulator):
///
/// | answer | meaning | retry? |
/// |---|---|---|
/// | `Ok(Applied)` | committed and applied at `(index, term)` | no |
/// | `Err(NotLeader)`, `Err(TransferInProgress)`, ... before [`Receipt::was_appended`] | refused before appending: never applied | yes (at the hinted leader) |
/// | `Err(CommandTooLarge)` | refused before appending: never applied | no: every node refuses it; split the command or raise `Config::max_command_bytes` |
/// | `Err(UncommittedLogFull)` | refused before appending, the leader holding `Config::max_uncommitted_bytes` it cannot commit yet: never applied | yes, after a pause |
/// | `Err(ProposalDropped)` | appended, then a different entry was committed at its index: by State Machine Safety it is never applied | yes |
/// | `Err(Timeout)`, `Err(NodeDown)` after appending | unknown: it may still commit | only with a client session |
/// | `Err(Unavailable)` (from [`Client::propose`](crate::Client::propose), never a receipt) | every attempt was refused before appending, or replaced, until the deadline: never applied | yes |
/// | `Err(QueueFull)` (from a proposal with a deadline, never a receipt) | the node's request queue stayed full until the deadline: never handed over, never applied | yes, after a pause |
/// | `Err(Storage)` | the node's storage failed while writing it: unknown, as the write may have landed | only with a client session |
/// | `Err(StateMachinePanicked)` | the state machine panicked applying it, on every replica alike | no: fix the state machine |
/// | `Err(NodePanicked)` | the node panicked on its loop (storage, transport, `command_size`, a command's clone or drop): unknown, the rest of the cluster may commit it | only with a client session, and not if the command itself panics |
/// | `Err(AnswerTaken)` | a second `wait` (or poll) after the output was handed over: it moves out once | no: use the first answer |
///
/// Use it blocking ([`Receipt::wait`]) or `.await` it: it is a [`Future`] woken by the node
/// thread, so no async runtime or helper thread is needed. A waker that panics is contained
/// (and logged): the answer is stored all the same, and the node carries on.
pub struct Receipt<O> {
    node: NodeId,
    answer: Answer<O>,
    /// What a blocked [`Receipt::wait`] runs instead of yielding, if anything.
    assist: Option<Arc<dyn Assist>>,
}

/// Where a receipt's answer is: in the slot the node answers through, or (a read served on
/// the caller's thread, a refusal before the request reached a node) already here, with no
/// allocation and no lock.
enum Answer<O> {
    Waiting(Arc<Slot<O>>),
    Ready(State<O>),
}

// NB: nothing pins the output in place (it is moved out by value), so a receipt may move
// while polled whatever `O` is.
impl<O> Unpin for Receipt<O> {}

impl<O> Receipt<O> {
    /// A blocked [`Receipt::wait`] on this receipt runs `assist` instead of yielding.
    pub(crate) fn assisted_by(mut self, assist: Option<&Arc<dyn Assist>>) -> Self {
        self.assist = assist.cloned();
        self
    }

    /// The answer slot, emptied for another proposal of the same spin rounds, if the node
    /// let go of it (it has once it answered, but for an instant) and it holds no read.
    pub(crate) fn into_spare(self) -> Option<SpareSlot<O>> {
        let Answer::Waiting(mut slot) = self.answer else { return None };
        let shared = Arc::get_mut(&mut slot)?;
        if std::mem::size_of_val(&shared.job) != 0 {
            return None; // (a read's slot: its query is spent)
        }
        let state = shared.state.get_mut().unwrap_or_else(|p| p.into_inner());
        *state = State { appended: None, done: None, waker: None, sleeping: false, taken: false };
        *shared.changed_flag.get_mut() = false;
        Some(SpareSlot(slot))
    }
}

impl<O: Clone> Receipt<O> {
    /// A receipt that is already answered (a refusal before the request reached a node).
    pub(crate) fn failed(node: NodeId, error: Error) -> Self {
        Self::ready(node, Err(error))
    }

    /// A receipt answered already with `result` (a read served on the caller's thread).
    pub(crate) fn ready(node: NodeId, result: Result<Applied<O>, Error>) -> Self {
        let state = State {
            appended: None,
            done: Some(result),
            waker: None,
            sleeping: false,
            taken: false,
        };
        Receipt { node, answer: Answer::Ready(state), assist: None }
    }

    /// The node the proposal was sent to.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether the node reported appending the entry (then its fate is decided by the log).
    pub fn was_appended(&self) -> bool {
        let appended = |s: &State<O>| s.appended.is_some() || matches!(s.done, Some(Ok(_)));
        match &self.answer {
            Answer::Waiting(shared) => appended(&shared.lock()),
            Answer::Ready(state) => appended(state),
        }
    }

    /// The answer, if it has come; never blocks, and leaves it for [`Receipt::wait`] (so it
    /// copies the output).
    pub fn try_result(&self) -> Option<Result<Applied<O>, Error>> {
        match &self.answer {
            Answer::Waiting(shared) => shared.lock().peek(),
            Answer::Ready(state) => state.peek(),
        }
    }

    /// The log index and term the entry was given, waiting up to `timeout` for the leader to
    /// append it. Fails with the leader's refusal (e.g. `NotLeader`) if it was not appended.
    pub fn position(&mut self, timeout: Duration) -> Result<(LogIndex, Term), Error> {
        let placed = |s: &State<O>| s.appended.is_some() || s.answered();
        self.once(Until::After(timeout), placed, |state| match (&state.appended, state.peek()) {
            (Some(position), _) => Ok(*position),
            (None, Some(result)) => result.map(|a| (a.index, a.term)),
            (None, None) => unreachable!("`once` runs this once one is set"),
        })?
    }

    /// Waits up to `timeout` for the command to be applied; returns its output. See the table in
    /// the type's docs for what each error means. After `Timeout` it can be called again. The
    /// output is handed over once, moved rather than copied: a later `wait` or `.await` returns
    /// [`Error::AnswerTaken`] (an error answer is reported every time). While it spins, a wait
    /// on a leader's receipt in the thread runtime runs the leader's waiting steps instead of
    /// yielding ([`Config::callers_help`](crate::Config::callers_help)).
    pub fn wait(&mut self, timeout: Duration) -> Result<Applied<O>, Error> {
        self.once(Until::After(timeout), State::answered, State::take)?
    }

    /// [`Receipt::wait`] until `deadline`.
    pub(crate) fn wait_until(&mut self, deadline: Instant) -> Result<Applied<O>, Error> {
        self.once(Until::At(deadline), State::answered, State::take)?
    }

    /// [`Receipt::wait_until`], running `assist` (lent by the caller, for this wait only)
    /// instead of its own, if any.
    pub(crate) fn wait_until_assisted(
        &mut self,
        deadline: Instant,
        assist: Option<&dyn Assist>,
    ) -> Result<Applied<O>, Error> {
        let assist = assist.or(self.assist.as_deref());
        match &mut self.answer {
            Answer::Waiting(shared) => {
                wait_for(shared, Until::At(deadline), State::answered, assist)?.take()
            }
            Answer::Ready(state) => state.take(),
        }
    }

    /// Runs `then` on the state once `ready` holds, waiting `until` for it (a ready receipt
    /// never waits: it is answered).
    fn once<R>(
        &mut self,
        until: Until,
        ready: impl Fn(&State<O>) -> bool,
        then: impl FnOnce(&mut State<O>) -> R,
    ) -> Result<R, Error> {
        let assist = self.assist.as_deref();
        match &mut self.answer {
            Answer::Waiting(shared) => Ok(then(&mut *wait_for(shared, until, ready, assist)?)),
            Answer::Ready(state) => Ok(then(state)),
        }
    }
}

/// The longest a thread runs steps for other nodes (a helping leader, a waiting caller)
/// without yielding its core once. One that always finds a step to run would otherwise keep
/// the core until the scheduler's slice ran out, and the callers queued behind it there would
/// wait milliseconds for their turn (on 2 cores, 64 blocked callers: p99 1.5 ms against 0.29
/// ms with this bound; NOTES.md, tenth session).
pub(crate) const MAX_HELPING_WITHOUT_YIELD: Duration = Duration::from_micros(100);

/// The instant `timeout` from now. A timeout too long to be an instant (`Duration::MAX`, for
/// "wait as long as it takes") waits a century instead of overflowing.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + CENTURY)
}

/// How long a waiter waits: a timeout from now, or a deadline (a caller that retries keeps one).
#[derive(Clone, Copy)]
enum Until {
    After(Duration),
    At(Instant),
}

/// Waits `until` for `ready` to hold of the slot's state; returns it locked. While it spins, it
/// runs `assist` instead of yielding whenever that finds work.
fn wait_for<'a, O>(
    shared: &'a Slot<O>,
    until: Until,
    ready: impl Fn(&State<O>) -> bool,
    assist: Option<&dyn Assist>,
) -> Result<MutexGuard<'a, State<O>>, Error> {
    let mut state = shared.lock();
    if ready(&state) {
        return Ok(state); // answered already: no clock to read (a pipelining caller)
    }
    let deadline = match until {
        Until::After(timeout) => deadline_after(timeout),
        Until::At(deadline) => deadline,
    };
    // An answer usually comes within microseconds: yield-poll a little before sleeping,
    // since waking a sleeping thread costs both sides several microseconds. The rounds are
    // counted, not timed: alone on a core 64 yields pass in about 20 µs, and among many
    // runnable threads each yield runs the others, so what a longer spin costs goes to
    // useful work (a 50 µs cap made 64 blocked callers sleep after a few yields and halved
    // their throughput: NOTES.md, seventh session).
    let (mut rounds, spin_rounds) = (0, shared.spin_rounds);
    let mut assisting: Option<Instant> = None;
    let spinning =
        |rounds: u32| rounds < spin_rounds && (rounds % 16 != 15 || Instant::now() < deadline);
    while !ready(&state) && spinning(rounds) {
        drop(state);
        while !shared.changed_flag.swap(false, Ordering::Acquire) && spinning(rounds) {
            if assist.is_some_and(|a| a.assist()) {
                // NB: the clock is read only while assisting (a yield ends the stretch), and
                // rounds spent assisting do not count: so the deadline is looked at here.
                let now = Instant::now();
                let since = *assisting.get_or_insert(now);
                if now >= deadline {
                    rounds = spin_rounds; // (the sleeping loop below reports the timeout)
                } else if now - since > MAX_HELPING_WITHOUT_YIELD {
                    std::thread::yield_now();
                    assisting = None;
                }
                continue;
            }
            std::thread::yield_now();
            assisting = None;
            rounds += 1;
        }
        state = shared.lock();
    }
    while !ready(&state) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            state.sleeping = false;
            return Err(Error::Timeout);
        }
        state.sleeping = true;
        state = match shared.changed.wait_timeout(state, left) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
    state.sleeping = false;
    Ok(state)
}

impl<O: Clone> Future for Receipt<O> {
    type Output = Result<Applied<O>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shared = match &mut self.get_mut().answer {
            Answer::Waiting(shared) => shared,
            Answer::Ready(state) => return Poll::Ready(state.take()),
        };
        let mut state = shared.lock();
        if state.answered() {
            return Poll::Ready(state.take());
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<O> std::fmt::Debug for Receipt<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt").field("node", &self.node).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn future_is_woken_by_the_answer() {
        let (responder, mut receipt) = receipt::<u32>(NodeId(1));
        let flag = Arc::new(Flag(Default::default()));
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut receipt).poll(&mut cx).is_pending());
        responder.appended(LogIndex(3), Term(2));
        responder.finish(Ok(Applied { index: LogIndex(3), term: Term(2), output: 7 }));
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst), "the answer wakes the task");
        match Pin::new(&mut receipt).poll(&mut cx) {
            Poll::Ready(Ok(applied)) => assert_eq!(applied.output, 7),
            other => panic!("expected the output, got {other:?}"),
        }
    }

    /// A waker that panics, as a broken executor's might.
    struct Broken;
    impl Wake for Broken {
        fn wake(self: Arc<Self>) {
            panic!("broken executor")
        }
    }

    /// The answering thread (a node's worker) is not unwound by an awaiting task's waker, and
    /// the answer is stored for the task's next poll.
    #[test]
    fn a_panicking_waker_is_contained_and_the_answer_kept() {
        let (responder, mut receipt) = receipt::<u32>(NodeId(1));
        let waker = Waker::from(Arc::new(Broken));
        assert!(Pin::new(&mut receipt).poll(&mut Context::from_waker(&waker)).is_pending());
        responder.finish(Ok(Applied { index: LogIndex(3), term: Term(2), output: 7 }));
        let flag = Waker::from(Arc::new(Flag(Default::default())));
        match Pin::new(&mut receipt).poll(&mut Context::from_waker(&flag)) {
            Poll::Ready(Ok(applied)) => assert_eq!(applied.output, 7),
            other => panic!("expected the output, got {other:?}"),
        }
    }

    #[test]
    fn dropped_responder_answers_node_down() {
        let (responder, mut receipt) = receipt::<u32>(NodeId(4));
        std::thread::spawn(move || drop(responder)).join().expect("thread");
        assert_eq!(receipt.wait(Duration::from_secs(5)), Err(Error::NodeDown(NodeId(4))));
        assert!(!receipt.was_appended());
    }

    /// The state machine of the read tests: a number, and a query that panics on 0.
    struct Number(u64);

    fn divide(sm: &Number, by: &u64) -> u64 {
        assert!(*by != 0, "division by zero");
        sm.0 / by
    }

    #[test]
    fn a_read_runs_its_query_once_and_answers_at_the_applied_index() {
        let (read, mut receipt) = read_receipt(NodeId(2), 0, 4u64, divide);
        read.answer(Ok((&Number(12), LogIndex(9))));
        let applied = receipt.wait(Duration::from_secs(5)).expect("answered");
        assert_eq!((applied.output, applied.index, applied.term), (3, LogIndex(9), Term(0)));
    }

    #[test]
    fn a_failed_read_answers_its_error() {
        let (read, mut receipt) = read_receipt(NodeId(2), 0, 4u64, divide);
        read.answer(Err(Error::NotLeader { leader_hint: Some(NodeId(3)) }));
        let answer = receipt.wait(Duration::from_secs(5));
        assert_eq!(answer, Err(Error::NotLeader { leader_hint: Some(NodeId(3)) }));
    }

    #[test]
    fn a_read_dropped_unanswered_or_whose_query_panics_answers_node_down() {
        let (read, mut dropped) = read_receipt(NodeId(5), 0, 4u64, divide);
        std::thread::spawn(move || drop(read)).join().expect("thread");
        assert_eq!(dropped.wait(Duration::from_secs(5)), Err(Error::NodeDown(NodeId(5))));

        let (read, mut panicked) = read_receipt(NodeId(6), 0, 0u64, divide);
        let state = Number(12);
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read.answer(Ok((&state, LogIndex(1))))
        }));
        assert!(run.is_err(), "the query panicked");
        assert_eq!(panicked.wait(Duration::from_secs(5)), Err(Error::NodeDown(NodeId(6))));
    }

    #[test]
    fn wait_times_out_without_an_answer() {
        let (_responder, mut receipt) = receipt::<u32>(NodeId(1));
        assert_eq!(receipt.wait(Duration::from_millis(1)), Err(Error::Timeout));
    }

    #[test]
    fn the_output_is_handed_over_once_and_the_position_stays() {
        let (responder, mut receipt) = receipt::<Arc<str>>(NodeId(1));
        let value: Arc<str> = "shared".into();
        responder.appended(LogIndex(5), Term(2));
        responder.finish(Ok(Applied { index: LogIndex(5), term: Term(2), output: value.clone() }));
        assert_eq!(receipt.try_result().expect("answered").expect("applied").output, value);

        let applied = receipt.wait(Duration::from_secs(1)).expect("applied");
        assert!(Arc::ptr_eq(&applied.output, &value), "moved, the same value");
        assert_eq!(Arc::strong_count(&value), 2, "the receipt keeps no copy");
        assert_eq!(receipt.wait(Duration::from_secs(1)), Err(Error::AnswerTaken));
        assert_eq!(receipt.try_result(), Some(Err(Error::AnswerTaken)));
        assert_eq!(receipt.position(Duration::from_secs(1)), Ok((LogIndex(5), Term(2))));
        assert!(receipt.was_appended());
        assert!(Error::AnswerTaken.to_string().contains("use the answer that call returned"));
    }

    #[test]
    fn an_awaited_output_is_handed_over_once_too() {
        let (responder, mut receipt) = receipt::<u32>(NodeId(1));
        responder.finish(Ok(Applied { index: LogIndex(1), term: Term(1), output: 9 }));
        let waker = Waker::from(Arc::new(Flag(Default::default())));
        let mut cx = Context::from_waker(&waker);
        let first = Pin::new(&mut receipt).poll(&mut cx);
        assert_eq!(first.map(|r| r.map(|a| a.output)), Poll::Ready(Ok(9)));
        assert_eq!(Pin::new(&mut receipt).poll(&mut cx), Poll::Ready(Err(Error::AnswerTaken)));
    }

    #[test]
    fn a_ready_receipt_answers_like_an_answered_one_without_a_slot() {
        let answer = Applied { index: LogIndex(4), term: Term(0), output: 11u32 };
        let mut ready = Receipt::ready(NodeId(2), Ok(answer.clone()));
        assert!(matches!(ready.answer, Answer::Ready(_)), "no slot allocated");
        assert_eq!(ready.try_result(), Some(Ok(answer.clone())));
        assert!(ready.was_appended());
        assert_eq!(ready.wait(Duration::ZERO), Ok(answer));
        assert_eq!(ready.wait(Duration::ZERO), Err(Error::AnswerTaken));
        assert_eq!(ready.position(Duration::ZERO), Ok((LogIndex(4), Term(0))));

        let mut refused = Receipt::<u32>::failed(NodeId(3), Error::NodeDown(NodeId(3)));
        assert!(!refused.was_appended());
        let waker = Waker::from(Arc::new(Flag(Default::default())));
        let mut cx = Context::from_waker(&waker);
        let polled = Pin::new(&mut refused).poll(&mut cx);
        assert_eq!(polled, Poll::Ready(Err(Error::NodeDown(NodeId(3)))));
        assert_eq!(refused.wait(Duration::ZERO), Err(Error::NodeDown(NodeId(3))));
    }

    #[test]
    fn an_error_answer_is_reported_every_time() {
        let (responder, mut receipt) = receipt::<u32>(NodeId(1));
        let refusal = Error::NotLeader { leader_hint: Some(NodeId(2)) };
        responder.finish(Err(refusal.clone()));
        assert_eq!(receipt.wait(Duration::from_secs(1)), Err(refusal.clone()));
        assert_eq!(receipt.wait(Duration::from_secs(1)), Err(refusal.clone()));
        assert_eq!(receipt.position(Duration::from_secs(1)), Err(refusal));
        assert!(!receipt.was_appended());
    }

    /// Always finds work, and counts the times it ran.
    struct Busy(std::sync::atomic::AtomicU64);

    impl Assist for Busy {
        fn assist(&self) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed);
            true
        }
    }

    #[test]
    fn a_waiter_whose_assist_always_finds_work_still_times_out_and_still_sees_its_answer() {
        let busy: Arc<dyn Assist> = Arc::new(Busy(Default::default()));
        let (_responder, receipt) = receipt_spinning::<u32>(NodeId(1), 64);
        let mut receipt = receipt.assisted_by(Some(&busy));
        let start = Instant::now();
        assert_eq!(receipt.wait(Duration::from_millis(20)), Err(Error::Timeout));
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());

        let assisted = Arc::new(Busy(Default::default()));
        let (responder, receipt) = receipt_spinning::<u32>(NodeId(1), 64);
        let mut receipt = receipt.assisted_by(Some(&(Arc::clone(&assisted) as Arc<dyn Assist>)));
        let answer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            responder.finish(Ok(Applied { index: LogIndex(3), term: Term(1), output: 7 }));
        });
        let applied = receipt.wait(Duration::from_secs(30)).expect("answered while assisting");
        assert_eq!(applied.output, 7);
        assert!(assisted.0.load(Ordering::Relaxed) > 0, "the waiter never assisted");
        answer.join().expect("answering thread");
    }

    /// An answered slot goes back to its caller emptied, and serves the next proposal as a
    /// new one would; a slot the node still holds, or a read's, is not taken back.
    #[test]
    fn an_answered_slot_is_reused_empty_and_a_held_one_is_not() {
        let (responder, mut receipt) = receipt_spinning::<u32>(NodeId(1), 4);
        responder.appended(LogIndex(3), Term(2));
        responder.finish(Ok(Applied { index: LogIndex(3), term: Term(2), output: 7 }));
        assert_eq!(receipt.wait(Duration::from_secs(1)).map(|a| a.output), Ok(7));
        let spare = receipt.into_spare().expect("answered: the node let go");

        let (responder, mut receipt) = receipt_in::<u32>(NodeId(2), 4, Some(spare));
        assert_eq!(receipt.node(), NodeId(2));
        assert!(!receipt.was_appended(), "the last proposal's place is gone");
        assert_eq!(receipt.try_result(), None, "the last answer is gone");
        let before = Instant::now() + Duration::from_millis(5);
        assert_eq!(receipt.wait_until_assisted(before, None), Err(Error::Timeout));
        responder.finish(Err(Error::ProposalDropped { index: LogIndex(4), term: Term(2) }));
        let dropped = Err(Error::ProposalDropped { index: LogIndex(4), term: Term(2) });
        assert_eq!(receipt.wait(Duration::from_secs(1)), dropped);
        assert!(receipt.into_spare().is_some(), "an error answer leaves the slot too");

        let (_responder, receipt) = receipt_spinning::<u32>(NodeId(1), 4);
        assert!(receipt.into_spare().is_none(), "the node still holds it");
        let (read, mut receipt) = read_receipt(NodeId(1), 4, 5u32, |s: &u32, q: &u32| s + q);
        read.answer(Ok((&1, LogIndex(1))));
        assert_eq!(receipt.wait(Duration::from_secs(1)).map(|a| a.output), Ok(6));
        assert!(receipt.into_spare().is_none(), "a read's slot holds its query");
    }

    #[test]
    fn a_waiter_spinning_endlessly_still_times_out_and_still_sees_its_answer() {
        let (_responder, mut receipt) = receipt_spinning::<u32>(NodeId(1), u32::MAX);
        assert_eq!(receipt.wait(Duration::from_millis(5)), Err(Error::Timeout));

        let (responder, mut receipt) = receipt_spinning::<u32>(NodeId(1), u32::MAX);
        let answer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            responder.finish(Ok(Applied { index: LogIndex(3), term: Term(1), output: 7 }));
        });
        let applied = receipt.wait(Duration::from_secs(30)).expect("answered while spinning");
        assert_eq!(applied.output, 7);
        answer.join().expect("answering thread");
    }
}
