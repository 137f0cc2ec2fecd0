//! Reads waiting for the state machine: a read confirmed at read index `i` (thesis §6.4) runs
//! its query once the state machine has applied through `i`, on whichever thread applies.
//!
//! Owns the queue only; the core decides when a read is confirmed, and `apply.rs` calls
//! [`PendingReads::release`] after each applied entry.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Add;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;

use crate::error::Error;
use crate::types::LogIndex;

pub(crate) use super::receipt::ReadFn;

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

/// Runs one read; a panicking query answers `NodeDown` (the read drops unanswered) and harms
/// nothing else: a query only reads.
pub(crate) fn run<S>(read: ReadFn<S>, input: Result<(&S, LogIndex), Error>) {
    let _ = catch_unwind(AssertUnwindSafe(move || read.answer(input)));
}

/// A point in time on the clock a lease is measured by: [`Instant`] in the thread runtime, the
/// reading node's own drifting virtual clock in the simulator (`sim::LocalTime`).
pub(crate) trait LeaseTime:
    Copy + PartialOrd + Add<Duration, Output = Self> + Send + Sync + 'static
{
}

impl<T: Copy + PartialOrd + Add<Duration, Output = T> + Send + Sync + 'static> LeaseTime for T {}

/// The time source a caller-thread lease read checks the deadline against. It must be the
/// clock the node's ticks were due by (the deadline is measured on it).
pub(crate) trait LeaseClock {
    type Time: LeaseTime;
    fn now(&self) -> Self::Time;
}

/// The real monotonic clock: the thread runtime's ticker hands out due instants on it.
pub(crate) struct Monotonic;

impl LeaseClock for Monotonic {
    type Time = Instant;
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Where a caller-thread lease read finds the state machine: the runtime's deferred applier
/// (`Backlog`), or the simulator's inline one.
pub(crate) trait QueryNow<S> {
    /// Runs `query` now if the state machine has applied through `index` and is free; with
    /// the applied index it ran at. `None`: the caller takes the node's path.
    fn query_now<R>(&self, index: LogIndex, query: impl FnOnce(&S) -> R) -> Option<(R, LogIndex)>;
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
/// The deadline is on the node's clock (`T`), never in ticks: a node thread that stalls (a
/// pause, a slow disk) misses ticks, but its clock runs on, and so the published lease runs
/// out on time however long the node's loop is stuck.
pub(crate) struct LeaseView<T = Instant> {
    lease: Mutex<Option<(T, LogIndex)>>,
    /// Reads served through this view (added to `Metrics::reads_lease`).
    pub served: AtomicU64,
}

impl<T> Default for LeaseView<T> {
    fn default() -> Self {
        LeaseView { lease: Mutex::new(None), served: AtomicU64::new(0) }
    }
}

impl<T: LeaseTime> LeaseView<T> {
    /// The read index to serve a read at now, if the lease holds at `now`.
    pub fn read_index(&self, now: T) -> Option<LogIndex> {
        let lease = *self.lease.lock().unwrap_or_else(|p| p.into_inner());
        lease.filter(|&(deadline, _)| now < deadline).map(|(_, index)| index)
    }

    /// A lease read on the caller's thread: if the lease holds at `clock.now()` and `state`
    /// has applied through the published read index, runs `query` there and counts it.
    /// `None`: take the node's path (no lease, state machine busy or behind). What the
    /// runtime's handles run on every read, and the simulator's clients on a share of theirs.
    #[inline]
    pub fn read_locally<S, R>(
        &self,
        clock: &impl LeaseClock<Time = T>,
        state: &impl QueryNow<S>,
        query: impl FnOnce(&S) -> R,
    ) -> Option<(R, LogIndex)> {
        // NB: the clock is read before the lease: a lease published since can only be later.
        let index = self.read_index(clock.now())?;
        let answer = state.query_now(index, query)?;
        self.served.fetch_add(1, Ordering::Relaxed);
        Some(answer)
    }
}

/// Test-only switches that break how the deadline is computed (see `sim/reads/caller.rs`).
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseBugs {
    /// Ignore the clock-drift bound: the lease runs the whole minimum election timeout less
    /// two ticks, as if every clock ran at the same rate (breaks thesis §6.4.1).
    pub ignore_drift_bound: bool,
    /// Count the lease in the node's ticks, not on its clock: the deadline is the due instant
    /// of the latest tick plus the ticks the core says are left. Right while ticks come on
    /// time; too late after a stall, when the core has missed ticks (breaks thesis §6.4.1).
    pub deadline_in_ticks: bool,
}

/// The node's side of a [`LeaseView`]: when its ticks were due on its clock `C`, and what it
/// last published.
pub(crate) struct LeasePublisher<C: LeaseClock = Monotonic> {
    clock: C,
    view: Arc<LeaseView<C::Time>>,
    /// (core tick, the scheduled instant of the tick that brought the core to it).
    ticks: VecDeque<(u64, C::Time)>,
    lease_for: Duration,
    last: Option<(C::Time, LogIndex)>,
    /// The lease without the drift bound (`LeaseBugs::ignore_drift_bound`).
    #[cfg(test)]
    unbounded_for: Duration,
    /// One tick and the lease in ticks (`LeaseBugs::deadline_in_ticks`).
    #[cfg(test)]
    tick_and_lease: (Duration, u64),
    #[cfg(test)]
    pub bugs: LeaseBugs,
}

/// Ticks remembered: a lease's round starts within the last lease, far fewer ticks than this.
const TICKS_KEPT: usize = 4096;

/// How long a lease lasts on the clock: `Config::lease_ticks()` ticks of `Config::tick`.
pub(crate) fn lease_length(config: &Config) -> Duration {
    config.tick * config.lease_ticks() as u32
}

impl<C: LeaseClock> LeasePublisher<C> {
    pub fn new(view: Arc<LeaseView<C::Time>>, config: &Config, clock: C) -> Self {
        LeasePublisher {
            clock,
            view,
            ticks: VecDeque::new(),
            lease_for: lease_length(config),
            last: None,
            #[cfg(test)]
            unbounded_for: config.tick
                * config.election_timeout_ticks().start.saturating_sub(2) as u32,
            #[cfg(test)]
            tick_and_lease: (config.tick, config.lease_ticks()),
            #[cfg(test)]
            bugs: LeaseBugs::default(),
        }
    }

    /// The core reached tick `now` on the tick scheduled for `due`.
    pub fn ticked(&mut self, now: u64, due: C::Time) {
        if self.ticks.len() == TICKS_KEPT {
            self.ticks.pop_front();
        }
        self.ticks.push_back((now, due));
    }

    /// After every step: the core's lease (`Core::lease_read`), as a real-time deadline. A
    /// round whose tick has no recorded instant publishes nothing (reads take the node path).
    pub fn publish(&mut self, lease: Option<(u64, LogIndex)>) {
        let lease_for = self.lease_for();
        let value = lease.and_then(|(start, index)| {
            #[cfg(test)]
            if self.bugs.deadline_in_ticks {
                let (tick, lease_ticks) = self.tick_and_lease;
                let &(now, due) = self.ticks.back()?;
                let left = (start + lease_ticks).saturating_sub(now);
                return Some((due + tick * left as u32, index));
            }
            let due = self.ticks.iter().rev().find(|(tick, _)| *tick == start)?.1;
            Some((due + lease_for, index))
        });
        if value != self.last {
            self.last = value;
            *self.view.lease.lock().unwrap_or_else(|p| p.into_inner()) = value;
        }
    }

    /// Whether the lease last published still holds on the clock now. The core counts its
    /// lease in ticks, and a node whose loop stalled has missed some: before each step the
    /// driver expires a core lease this denies, so reads served inside the node (and the
    /// follower reads it answers) obey the same deadline as reads on the caller's thread.
    pub fn holds_now(&self) -> bool {
        #[cfg(test)]
        if self.bugs.deadline_in_ticks {
            return true; // the core's tick count is all the bug consults
        }
        self.last.is_some_and(|(deadline, _)| self.clock.now() < deadline)
    }

    fn lease_for(&self) -> Duration {
        #[cfg(test)]
        if self.bugs.ignore_drift_bound {
            return self.unbounded_for;
        }
        self.lease_for
    }

    /// Reads served off the node's thread so far.
    pub fn served(&self) -> u64 {
        self.view.served.load(Ordering::Relaxed)
    }
}
