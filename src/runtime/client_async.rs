//! A client's proposal loop for async callers: the decisions of [`Client::propose_timeout`]
//! (`Client::next_after`), awaiting receipts where that call blocks. The library has no async
//! runtime, so the caller lends one of its timers: a `sleep` function. Nothing here blocks
//! the caller's thread, except a brief read lock on the running nodes, as every call takes.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::client::{failed_node, Client, Next};
use crate::error::Error;
use crate::node::{Applied, Receipt};
use crate::state_machine::StateMachine;
use crate::types::NodeId;

/// The shortest pause between tries elsewhere, whatever the client's retry pause: a pause
/// shorter than a timer's granularity would not pause, and the loop would spin.
const MIN_ASYNC_PAUSE: Duration = Duration::from_millis(1);

impl<S: StateMachine> Client<S> {
    /// [`Client::propose_timeout`] until `deadline`, awaiting instead of blocking: `timer`
    /// (a `sleep` to `deadline`, never polled again once it ended) bounds each wait for an
    /// answer, since a receipt may stay pending forever (a leader cut off from its majority
    /// appended the entry and cannot commit it); `sleep` pauses between tries elsewhere.
    /// Answers as that call does; a queue full at once is refused `QueueFull` (never handed
    /// over) and retried after the pause, where that call would wait for room.
    pub(crate) async fn propose_until<F, Fut, T>(
        &self,
        command: S::Command,
        deadline: Instant,
        mut timer: Pin<&mut T>,
        sleep: &F,
    ) -> Result<Applied<S::Output>, Error>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = ()>,
        T: Future<Output = ()>,
    {
        let mut target = self.leader_hint().or_else(|| self.running().first().copied());
        let (mut attempt, mut hops) = (0usize, 0u32);
        loop {
            let Some(id) = target else { return Err(Error::Shutdown) };
            let (refusal, appended) =
                match self.attempt_at(id, command.clone(), timer.as_mut()).await {
                    Ok(applied) => {
                        if !self.forward {
                            self.learn_leader(id); // (a forwarding node need not lead)
                        }
                        return Ok(applied);
                    }
                    Err(failed) => failed,
                };
            // NB: `Timeout` (the timer ended) is never retried: the timer is not polled again.
            match self.next_after(refusal.clone(), id, appended, &mut attempt, deadline) {
                Next::Stop(e) => {
                    self.leave_failed(&e, id);
                    return Err(e);
                }
                Next::At(hint) => {
                    target = Some(hint);
                    hops += 1;
                    // NB: a receipt answered at once does not yield to the executor, so two
                    // nodes naming each other (stale hints, briefly) would hold its thread:
                    // the first hop goes at once (a leader change), later ones pause.
                    if hops > 1 {
                        self.pause(deadline, self.shared.retry_pause, sleep).await;
                    }
                }
                Next::After(next, pause) => {
                    target = next;
                    hops = 0;
                    self.pause(deadline, pause, sleep).await;
                }
            }
            // NB: as in `propose_timeout`: every attempt so far was refused before appending
            // or replaced, so none can be applied.
            if Instant::now() >= deadline {
                return Err(Error::Unavailable { last: Box::new(refusal) });
            }
        }
    }

    /// One attempt at node `id`, as `Client::try_propose` makes it: the output, or the error
    /// and whether the receipt learned its entry's place. Waits for the answer until `timer`
    /// ends: then `Timeout`, as a blocking wait answers at its deadline.
    async fn attempt_at<T: Future<Output = ()>>(
        &self,
        id: NodeId,
        command: S::Command,
        timer: Pin<&mut T>,
    ) -> Result<Applied<S::Output>, (Error, bool)> {
        let mut receipt = self.send_now(id, command).map_err(|e| (e, false))?; // not handed over
        match answer_before(&mut receipt, timer).await {
            Some(answer) => answer.map_err(|e| (e, receipt.was_appended())),
            None => Err((Error::Timeout, receipt.was_appended())),
        }
    }

    /// Sleeps `pause`, at least [`MIN_ASYNC_PAUSE`], at most until `deadline`.
    async fn pause<F, Fut>(&self, deadline: Instant, pause: Duration, sleep: &F)
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = ()>,
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let pause = pause.max(MIN_ASYNC_PAUSE).min(left);
        if !pause.is_zero() {
            sleep(pause).await;
        }
    }

    /// `Client::node_failed` for an answer that says node `asked` failed, on a thread of its
    /// own: it asks the node (up to 100 ms), which an async caller's thread must not wait for.
    fn leave_failed(&self, error: &Error, asked: NodeId) {
        let Some(node) = failed_node(error, asked) else { return };
        let client = self.clone();
        let spawned = std::thread::Builder::new()
            .name("ferraft-node-failed".into())
            .spawn(move || client.node_failed(node));
        if spawned.is_err() {
            self.node_failed(node); // (no thread to be had: late, rather than never)
        }
    }
}

/// Polls `receipt` and `timer` together: the receipt's answer, or `None` if `timer` ends
/// first (then it is not polled again here). A hand-written select of two futures: the
/// library depends on no async runtime or futures crate.
async fn answer_before<O: Clone, T: Future<Output = ()>>(
    receipt: &mut Receipt<O>,
    mut timer: Pin<&mut T>,
) -> Option<Result<Applied<O>, Error>> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(answer) = Pin::new(&mut *receipt).poll(cx) {
            return Poll::Ready(Some(answer));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}
