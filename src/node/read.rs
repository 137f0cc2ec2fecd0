//! Reads waiting for the state machine: a read confirmed at read index `i` (thesis §6.4) runs
//! its query once the state machine has applied through `i`, on whichever thread applies.
//!
//! Owns the queue only; the core decides when a read is confirmed, and `apply.rs` calls
//! [`PendingReads::release`] after each applied entry.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::Error;
use crate::types::LogIndex;

/// A read's query and answer in one: called once, with the state machine and its applied
/// index, or with the reason the read failed. It sends its answer itself.
pub(crate) type ReadFn<S> = Box<dyn FnOnce(Result<(&S, LogIndex), Error>) + Send>;

/// Reads waiting until the state machine has applied through their index. Reads travel in
/// batches (every read a node took in one step), so a batch costs one queue entry.
pub(crate) struct PendingReads<S> {
    waiting: BTreeMap<LogIndex, Vec<ReadFn<S>>>,
}

impl<S> Default for PendingReads<S> {
    fn default() -> Self {
        PendingReads { waiting: BTreeMap::new() }
    }
}

impl<S> PendingReads<S> {
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Runs `reads` now if `applied` reaches `index`, else queues them.
    pub fn add(&mut self, index: LogIndex, reads: Vec<ReadFn<S>>, state: &S, applied: LogIndex) {
        if index <= applied {
            for read in reads {
                run(read, Ok((state, applied)));
            }
        } else {
            self.waiting.entry(index).or_default().extend(reads);
        }
    }

    /// Runs every read whose index `applied` reaches.
    pub fn release(&mut self, state: &S, applied: LogIndex) {
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > applied {
                return;
            }
            for read in entry.remove() {
                run(read, Ok((state, applied)));
            }
        }
    }

    /// Fails every waiting read (the state machine stopped).
    pub fn fail(&mut self, error: &Error) {
        for read in std::mem::take(&mut self.waiting).into_values().flatten() {
            run(read, Err(error.clone()));
        }
    }
}

/// Runs one read; a panicking query answers `NodeDown` (its answer channel drops) and harms
/// nothing else: a query only reads.
pub(crate) fn run<S>(read: ReadFn<S>, input: Result<(&S, LogIndex), Error>) {
    let _ = catch_unwind(AssertUnwindSafe(move || read(input)));
}
