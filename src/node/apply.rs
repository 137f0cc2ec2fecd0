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
//! same command panics on every replica.
//!
//! [`ApplyQueue`] runs an applier inline (the simulator) or on its own thread (the thread
//! runtime, so a slow `apply` never delays heartbeats), with the same code either way.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};

use super::read::{PendingReads, ReadFn};
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
    waiting: BTreeMap<(LogIndex, Term), Responder<S::Output>>,
    applied: LogIndex,
    failure: Option<Error>,
    /// A proposal was answered since `is_hot` last looked.
    answered: bool,
    /// Confirmed reads waiting to be applied through their index (`read.rs`).
    reads: PendingReads<S>,
}

impl<S: StateMachine> Applier<S> {
    pub fn new(node: NodeId, state_machine: S, applied: LogIndex) -> Self {
        let waiting = BTreeMap::new();
        let reads = PendingReads::default();
        Applier { node, state_machine, waiting, applied, failure: None, answered: false, reads }
    }

    pub fn state_machine(&self) -> &S {
        &self.state_machine
    }

    /// Whether this applier serves proposers: some wait now, or one was just answered (a
    /// leader's applier under load). Reading it forgets the "just answered".
    pub fn is_hot(&mut self) -> bool {
        !self.waiting.is_empty() || !self.reads.is_empty() || std::mem::take(&mut self.answered)
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

    /// A read confirmed at `index`: run it once applied through `index`.
    pub fn read(&mut self, index: LogIndex, read: ReadFn<S>) {
        match &self.failure {
            Some(failure) => super::read::run(read, Err(failure.clone())),
            None => self.reads.add(index, read, &self.state_machine, self.applied),
        }
    }

    /// Takes a snapshot of the state machine as it is now, standing for `meta.index`.
    pub fn snapshot(&mut self, meta: SnapshotMeta) -> Result<Arc<Snapshot>, Error> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        debug_assert_eq!(meta.index, self.applied, "the snapshot stands for what was applied");
        let data: Arc<[u8]> = self.state_machine.snapshot().into();
        Ok(Arc::new(Snapshot { meta, data }))
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
                while let Some(waiting) = self.waiting.first_entry() {
                    if waiting.key().0 > index {
                        break;
                    }
                    waiting.remove().finish(Err(Error::Timeout));
                }
                return Ok(());
            }
            Ok(Err(message)) => message,
            Err(payload) => format!("panicked: {}", panic_message(&*payload)),
        };
        let error = Error::RestoreFailed { node: self.node, index, message };
        Err(self.stop(error))
    }

    fn answer(&mut self, index: LogIndex, term: Term, output: Option<S::Output>) {
        while let Some(waiting) = self.waiting.first_entry() {
            let (i, t) = *waiting.key();
            if i > index {
                return;
            }
            let responder = waiting.remove();
            self.answered = true;
            let result = match &output {
                Some(output) if (i, t) == (index, term) => {
                    Ok(Applied { index, term, output: output.clone() })
                }
                _ => Err(Error::ProposalDropped { index: i, term: t }),
            };
            responder.finish(result);
        }
    }

    fn fail(&mut self, index: LogIndex, message: String) -> Error {
        self.stop(Error::StateMachinePanicked { node: self.node, index, message })
    }

    fn stop(&mut self, error: Error) -> Error {
        tracing::error!(error = %error, "state machine failed; node stopping");
        self.failure = Some(error.clone());
        for (_, responder) in std::mem::take(&mut self.waiting) {
            responder.finish(Err(error.clone()));
        }
        self.reads.fail(&error);
        error
    }
}

/// What the node thread hands its apply thread, in order.
pub(crate) enum ApplyTask<S: StateMachine> {
    Await {
        index: LogIndex,
        term: Term,
        responder: Responder<S::Output>,
    },
    Entries {
        first: LogIndex,
        entries: Vec<Entry<S::Command>>,
    },
    Snapshot(SnapshotMeta),
    Restore(Arc<Snapshot>),
    /// A confirmed read: run it once applied through `index`.
    Read {
        index: LogIndex,
        read: ReadFn<S>,
    },
    /// Fill in what only the applier knows (digest, applied index) and answer.
    Status {
        status: Box<NodeStatus>,
        reply: Sender<NodeStatus>,
    },
}

/// An [`Applier`] run inline, or on a thread of its own fed through a channel.
pub(crate) enum ApplyQueue<S: StateMachine> {
    Inline(Applier<S>),
    Thread(ApplyThread<S>),
}

/// A node's apply thread (`raft-n<id>-apply`).
pub(crate) struct ApplyThread<S: StateMachine> {
    tasks: Option<Sender<ApplyTask<S>>>,
    thread: Option<JoinHandle<()>>,
    /// Set by the apply thread when the state machine panicked; read by the node loop.
    failure: Arc<Mutex<Option<Error>>>,
    failed: Arc<AtomicBool>,
    /// Asks the apply thread to stop after the entry it is applying.
    stop: Arc<AtomicBool>,
}

impl<S: StateMachine> ApplyQueue<S> {
    /// Starts `applier` on its own thread; snapshots it takes go to `taken`.
    pub fn spawn(applier: Applier<S>, taken: Sender<Arc<Snapshot>>) -> Result<Self, Error> {
        let (tx, rx) = unbounded::<ApplyTask<S>>();
        let failure = Arc::new(Mutex::new(None));
        let failed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, fl, st) = (Arc::clone(&failure), Arc::clone(&failed), Arc::clone(&stop));
        let out = taken;
        let mut applier = applier;
        let thread = std::thread::Builder::new()
            .name(format!("raft-n{}-apply", applier.node.0))
            .spawn(move || {
                // NB: only an applier with proposals waiting spins: nobody waits on the others,
                // and on a small machine their spinning would slow the threads that matter.
                while let Some(task) = next_task(&rx, applier.is_hot()) {
                    if st.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Err(e) = run_task(&mut applier, task, &st, &out) {
                        *f.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        fl.store(true, Ordering::Release);
                    }
                }
            })
            .map_err(|e| Error::Spawn(e.to_string()))?;
        Ok(ApplyQueue::Thread(ApplyThread {
            tasks: Some(tx),
            thread: Some(thread),
            failure,
            failed,
            stop,
        }))
    }

    pub fn await_entry(&mut self, index: LogIndex, term: Term, responder: Responder<S::Output>) {
        match self {
            ApplyQueue::Inline(applier) => applier.await_entry(index, term, responder),
            ApplyQueue::Thread(t) => t.send(ApplyTask::Await { index, term, responder }),
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
            ApplyQueue::Thread(t) => {
                t.send(ApplyTask::Entries { first, entries: entries.to_vec() });
                Ok(())
            }
        }
    }

    /// Takes a snapshot once every apply queued before is done. Inline, it is returned at
    /// once; on the apply thread it arrives later through the node's `taken` channel.
    pub fn snapshot(&mut self, meta: SnapshotMeta) -> Result<Option<Arc<Snapshot>>, Error> {
        match self {
            ApplyQueue::Inline(applier) => applier.snapshot(meta).map(Some),
            ApplyQueue::Thread(t) => {
                t.send(ApplyTask::Snapshot(meta));
                Ok(None)
            }
        }
    }

    /// Replaces the state machine's state with `snapshot`'s, in order with the applies.
    pub fn restore(&mut self, snapshot: Arc<Snapshot>) -> Result<(), Error> {
        match self {
            ApplyQueue::Inline(applier) => applier.restore(&snapshot),
            ApplyQueue::Thread(t) => {
                t.send(ApplyTask::Restore(snapshot));
                Ok(())
            }
        }
    }

    /// The state machine panicked (on the apply thread, seen here some time after).
    pub fn failure(&self) -> Option<Error> {
        match self {
            ApplyQueue::Inline(applier) => applier.failure().cloned(),
            ApplyQueue::Thread(t) if t.failed.load(Ordering::Acquire) => {
                t.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
            }
            ApplyQueue::Thread(_) => None,
        }
    }

    /// Runs `read` once the state machine has applied through `index`.
    pub fn read(&mut self, index: LogIndex, read: ReadFn<S>) {
        match self {
            ApplyQueue::Inline(applier) => applier.read(index, read),
            ApplyQueue::Thread(t) => t.send(ApplyTask::Read { index, read }),
        }
    }

    /// Completes `status` with the applier's view and sends it to `reply`.
    pub fn status(&mut self, mut status: NodeStatus, reply: Sender<NodeStatus>) {
        match self {
            ApplyQueue::Inline(applier) => {
                fill_status(applier, &mut status);
                let _ = reply.send(status);
            }
            ApplyQueue::Thread(t) => t.send(ApplyTask::Status { status: Box::new(status), reply }),
        }
    }
}

impl<S: StateMachine> ApplyThread<S> {
    fn send(&self, task: ApplyTask<S>) {
        if let Some(tasks) = &self.tasks {
            // NB: fails only once the apply thread has stopped; the task's responders then
            // answer `NodeDown` as they drop.
            let _ = tasks.send(task);
        }
    }
}

impl<S: StateMachine> Drop for ApplyThread<S> {
    /// Stops the apply thread after the entry it is applying, and joins it: a killed node leaves
    /// no thread behind. Unapplied tasks are dropped (their proposers learn `NodeDown`).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.tasks.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How many times an idle apply thread yields, polling for work, before it parks: commits come
/// in bursts microseconds apart, and waking a parked thread takes several.
const SPIN_ROUNDS: usize = 64;

fn next_task<T>(tasks: &Receiver<T>, spin: bool) -> Option<T> {
    for _ in 0..if spin { SPIN_ROUNDS } else { 0 } {
        match tasks.try_recv() {
            Ok(task) => return Some(task),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    tasks.recv().ok()
}

fn run_task<S: StateMachine>(
    applier: &mut Applier<S>,
    task: ApplyTask<S>,
    stop: &AtomicBool,
    taken: &Sender<Arc<Snapshot>>,
) -> Result<(), Error> {
    match task {
        ApplyTask::Snapshot(meta) => {
            let snapshot = applier.snapshot(meta)?;
            let _ = taken.send(snapshot); // NB: fails only while the node is stopping
        }
        ApplyTask::Restore(snapshot) => applier.restore(&snapshot)?,
        ApplyTask::Await { index, term, responder } => applier.await_entry(index, term, responder),
        ApplyTask::Read { index, read } => applier.read(index, read),
        ApplyTask::Entries { first, entries } => {
            for (i, entry) in entries.iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                applier.apply(LogIndex(first.0 + i as u64), entry)?;
            }
        }
        ApplyTask::Status { mut status, reply } => {
            fill_status(applier, &mut status);
            let _ = reply.send(*status);
        }
    }
    Ok(())
}

fn fill_status<S: StateMachine>(applier: &Applier<S>, status: &mut NodeStatus) {
    status.digest = applier.state_machine.digest();
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
    ) -> Receipt<Option<String>> {
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
