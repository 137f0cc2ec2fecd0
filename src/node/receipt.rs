//! [`Receipt`]: a proposal in flight, answered once by the node that took it. Blocking
//! ([`Receipt::wait`]) and `async` (`Receipt` is a [`Future`]) without an async runtime: the
//! node thread that answers wakes whichever waits.
//!
//! The node side holds a [`Responder`]; dropping it unanswered (the node crashed or stopped)
//! answers `NodeDown`, so no proposer waits on a node that is gone.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::types::{LogIndex, NodeId, Term};

/// The longest a blocked [`Receipt::wait`] yields, polling, before it sleeps (at most
/// `Config::spin_rounds` times).
const SPIN_FOR: Duration = Duration::from_micros(50);

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
}

struct Shared<O> {
    state: Mutex<State<O>>,
    changed: Condvar,
    /// Set with any change of `state`, so a waiter can poll it without the lock.
    changed_flag: AtomicBool,
    /// How many times a waiter yields, polling, before it sleeps (`Config::spin_rounds`).
    spin_rounds: u32,
}

impl<O> Shared<O> {
    fn lock(&self) -> MutexGuard<'_, State<O>> {
        // NB: nothing panics while holding this lock; recover the data anyway.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Creates a connected pair: the node answers through the [`Responder`], the proposer waits on
/// the [`Receipt`] (sleeping at once: see [`receipt_spinning`]).
pub(crate) fn receipt<O>(node: NodeId) -> (Responder<O>, Receipt<O>) {
    receipt_spinning(node, 0)
}

/// [`receipt`], whose waiter yields up to `spin_rounds` times before it sleeps.
pub(crate) fn receipt_spinning<O>(node: NodeId, spin_rounds: u32) -> (Responder<O>, Receipt<O>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { appended: None, done: None, waker: None, sleeping: false }),
        changed: Condvar::new(),
        changed_flag: AtomicBool::new(false),
        spin_rounds,
    });
    (Responder { node, shared: Some(Arc::clone(&shared)) }, Receipt { node, shared })
}

/// The node's end of a proposal: where to report its position and outcome.
pub(crate) struct Responder<O> {
    node: NodeId,
    /// `None` once answered.
    shared: Option<Arc<Shared<O>>>,
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

    /// The final answer. Wakes a blocked [`Receipt::wait`] and an awaiting task.
    pub fn finish(mut self, result: Result<Applied<O>, Error>) {
        self.answer(result);
    }

    fn answer(&mut self, result: Result<Applied<O>, Error>) {
        let Some(shared) = self.shared.take() else { return };
        let (waker, sleeping) = {
            let mut state = shared.lock();
            state.done = Some(result);
            shared.changed_flag.store(true, Ordering::Release);
            (state.waker.take(), state.sleeping)
        };
        if sleeping {
            shared.changed.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<O> Drop for Responder<O> {
    /// Unanswered when the node stops: the proposer learns the node went down.
    fn drop(&mut self) {
        let node = self.node;
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
/// | `Err(NotLeader)`, `Err(CommandTooLarge)`, ... before [`Receipt::was_appended`] | refused before appending: never applied | yes (at the hinted leader) |
/// | `Err(ProposalDropped)` | appended, then a different entry was committed at its index: by State Machine Safety it is never applied | yes |
/// | `Err(Timeout)`, `Err(NodeDown)` after appending | unknown: it may still commit | only with a client session |
/// | `Err(StateMachinePanicked)` | the state machine panicked applying it, on every replica alike | no: fix the state machine |
///
/// Use it blocking ([`Receipt::wait`]) or `.await` it: it is a [`Future`] woken by the node
/// thread, so no async runtime or helper thread is needed.
pub struct Receipt<O> {
    node: NodeId,
    shared: Arc<Shared<O>>,
}

impl<O: Clone> Receipt<O> {
    /// A receipt that is already answered (a refusal before the request reached a node).
    pub(crate) fn failed(node: NodeId, error: Error) -> Self {
        Self::ready(node, Err(error))
    }

    /// A receipt answered already with `result` (a read served on the caller's thread).
    pub(crate) fn ready(node: NodeId, result: Result<Applied<O>, Error>) -> Self {
        let (responder, receipt) = receipt(node);
        responder.finish(result);
        receipt
    }

    /// The node the proposal was sent to.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether the node reported appending the entry (then its fate is decided by the log).
    pub fn was_appended(&self) -> bool {
        let state = self.shared.lock();
        state.appended.is_some() || matches!(state.done, Some(Ok(_)))
    }

    /// The answer, if it has come; never blocks.
    pub fn try_result(&self) -> Option<Result<Applied<O>, Error>> {
        self.shared.lock().done.clone()
    }

    /// The log index and term the entry was given, waiting up to `timeout` for the leader to
    /// append it. Fails with the leader's refusal (e.g. `NotLeader`) if it was not appended.
    pub fn position(&mut self, timeout: Duration) -> Result<(LogIndex, Term), Error> {
        let state = self.wait_until(timeout, |s| s.appended.is_some() || s.done.is_some())?;
        match (&state.appended, &state.done) {
            (Some(position), _) => Ok(*position),
            (None, Some(result)) => result.clone().map(|a| (a.index, a.term)),
            (None, None) => unreachable!("wait_until returns once one is set"),
        }
    }

    /// Waits up to `timeout` for the command to be applied; returns its output. See the table in
    /// the type's docs for what each error means.
    pub fn wait(&mut self, timeout: Duration) -> Result<Applied<O>, Error> {
        let state = self.wait_until(timeout, |s| s.done.is_some())?;
        state.done.clone().expect("wait_until returns once done")
    }

    fn wait_until(
        &self,
        timeout: Duration,
        ready: impl Fn(&State<O>) -> bool,
    ) -> Result<MutexGuard<'_, State<O>>, Error> {
        let mut state = self.shared.lock();
        if ready(&state) {
            return Ok(state); // answered already: no clock to read (a pipelining caller)
        }
        let start = Instant::now();
        let deadline = start + timeout;
        // An answer usually comes within microseconds: yield-poll a little before sleeping,
        // since waking a sleeping thread costs both sides several microseconds.
        let (mut rounds, spin_rounds) = (0, self.shared.spin_rounds);
        while !ready(&state) && rounds < spin_rounds && start.elapsed() < SPIN_FOR.min(timeout) {
            drop(state);
            while !self.shared.changed_flag.swap(false, Ordering::Acquire) && rounds < spin_rounds {
                std::thread::yield_now();
                rounds += 1;
            }
            state = self.shared.lock();
        }
        while !ready(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.sleeping = false;
                return Err(Error::Timeout);
            }
            state.sleeping = true;
            state = match self.shared.changed.wait_timeout(state, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        state.sleeping = false;
        Ok(state)
    }
}

impl<O: Clone> Future for Receipt<O> {
    type Output = Result<Applied<O>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.shared.lock();
        match &state.done {
            Some(result) => Poll::Ready(result.clone()),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
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

    #[test]
    fn dropped_responder_answers_node_down() {
        let (responder, mut receipt) = receipt::<u32>(NodeId(4));
        std::thread::spawn(move || drop(responder)).join().expect("thread");
        assert_eq!(receipt.wait(Duration::from_secs(5)), Err(Error::NodeDown(NodeId(4))));
        assert!(!receipt.was_appended());
    }

    #[test]
    fn wait_times_out_without_an_answer() {
        let (_responder, mut receipt) = receipt::<u32>(NodeId(1));
        assert_eq!(receipt.wait(Duration::from_millis(1)), Err(Error::Timeout));
    }
}
