//! Reads waiting for the state machine: a read confirmed at read index `i` (thesis §6.4) runs
//! its query once the state machine has applied through `i`, on whichever thread applies.
//!
//! Owns the queue only; the core decides when a read is confirmed, and `apply.rs` calls
//! [`PendingReads::release`] after each applied entry.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A leader's lease as the node's handles see it, for lease reads served on the caller's
/// thread (no trip through the node's queue): until `deadline`, a read may be answered from
/// the state machine once it has applied through `index`.
///
/// The deadline is conservative in real time: it is the *scheduled* instant of the tick at
/// which the lease's confirmation round started (the round's messages left after it), plus
/// `Config::lease_ticks() * Config::tick`; followers that acknowledged the round refuse votes
/// for a minimum election timeout of their own ticks, which come at most once per `tick`.
/// So no other leader can exist before the deadline, within the drift bound (thesis §6.4.1).
#[derive(Default)]
pub(crate) struct LeaseView {
    lease: Mutex<Option<(Instant, LogIndex)>>,
    /// Reads served through this view (added to `Metrics::reads_lease`).
    pub served: AtomicU64,
}

impl LeaseView {
    /// The read index to serve a read at now, if the lease holds at `now`.
    pub fn read_index(&self, now: Instant) -> Option<LogIndex> {
        let lease = *self.lease.lock().unwrap_or_else(|p| p.into_inner());
        lease.filter(|&(deadline, _)| now < deadline).map(|(_, index)| index)
    }
}

/// The node's side of a [`LeaseView`]: when its ticks were due, and what it last published.
pub(crate) struct LeasePublisher {
    view: Arc<LeaseView>,
    /// (core tick, the scheduled instant of the tick that brought the core to it).
    ticks: VecDeque<(u64, Instant)>,
    lease_for: Duration,
    last: Option<(Instant, LogIndex)>,
}

/// Ticks remembered: a lease's round starts within the last lease, far fewer ticks than this.
const TICKS_KEPT: usize = 4096;

impl LeasePublisher {
    pub fn new(view: Arc<LeaseView>, lease_for: Duration) -> Self {
        LeasePublisher { view, ticks: VecDeque::new(), lease_for, last: None }
    }

    /// The core reached tick `now` on the tick scheduled for `due`.
    pub fn ticked(&mut self, now: u64, due: Instant) {
        if self.ticks.len() == TICKS_KEPT {
            self.ticks.pop_front();
        }
        self.ticks.push_back((now, due));
    }

    /// After every step: the core's lease (`Core::lease_read`), as a real-time deadline. A
    /// round whose tick has no recorded instant publishes nothing (reads take the node path).
    pub fn publish(&mut self, lease: Option<(u64, LogIndex)>) {
        let value = lease.and_then(|(start, index)| {
            let due = self.ticks.iter().rev().find(|(tick, _)| *tick == start)?.1;
            Some((due + self.lease_for, index))
        });
        if value != self.last {
            self.last = value;
            *self.view.lease.lock().unwrap_or_else(|p| p.into_inner()) = value;
        }
    }

    /// Reads served off the node's thread so far.
    pub fn served(&self) -> u64 {
        self.view.served.load(Ordering::Relaxed)
    }
}
