//! Lease reads on the caller's thread, in the simulator: a share of the clients' lease reads
//! skip the node's step loop and go through `LeaseView::read_locally`, the function the
//! runtime's `NodeHandle::read` runs on the caller's thread, against the reading node's own
//! clock.
//!
//! Each node's clock is virtual time scaled by its drift (its ticks are `SimNode::tick_us`
//! apart in virtual time and one configured tick apart on its own clock), and it runs on
//! through pauses: a paused node's loop is stuck (no ticks, its inputs wait), but the threads
//! that read its published lease are not, as a node loop stuck on a slow disk or descheduled
//! would be. So a read may find a lease published before a long pause and must see it expired
//! on the clock. Decides nothing at random: which reads take this path is fixed by the op's
//! number (`SimConfig::caller_read_percent`).

use std::ops::Add;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::super::client::ReadQuery;
use super::super::Simulator;
use crate::node::{LeaseClock, LeaseView};
use crate::state_machine::StateMachine;
use crate::types::{LogIndex, NodeId};

/// A reading on one node's own clock, in its microseconds (not virtual-time microseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LocalTime(pub u64);

impl Add<Duration> for LocalTime {
    type Output = LocalTime;
    fn add(self, d: Duration) -> LocalTime {
        LocalTime(self.0 + super::super::micros(d))
    }
}

/// A node's clock frozen at one instant of the single-threaded simulation: the time source
/// a simulated caller-thread read passes to `LeaseView::read_locally`.
pub(crate) struct NodeClock(pub LocalTime);

impl LeaseClock for NodeClock {
    type Time = LocalTime;
    fn now(&self) -> LocalTime {
        self.0
    }
}

/// A node's clock as its driver reads it (to expire a core lease the clock denies): the
/// simulator sets it to the node's local time before every step.
#[derive(Clone, Default)]
pub(crate) struct SimClock(pub Arc<AtomicU64>);

impl SimClock {
    pub fn set(&self, now: LocalTime) {
        self.0.store(now.0, Ordering::Relaxed);
    }
}

impl LeaseClock for SimClock {
    type Time = LocalTime;
    fn now(&self) -> LocalTime {
        LocalTime(self.0.load(Ordering::Relaxed))
    }
}

/// The lease view a node incarnation publishes to (a restart makes a new one, as a new
/// process would).
pub(crate) type SimLease = Arc<LeaseView<LocalTime>>;

/// Whether op number `op` tries the caller's-thread path first, for `percent` of ops. Spread
/// over op numbers without drawing from the RNG, so runs with the path off replay unchanged.
pub(crate) fn takes_caller_path(op: usize, percent: u8) -> bool {
    (op as u64).wrapping_mul(37) % 100 < u64::from(percent)
}

impl<S: StateMachine> Simulator<S> {
    /// Node `id`'s own clock now: virtual time scaled by its drift (one configured tick per
    /// `tick_us` of virtual time). It runs on through pauses and restarts.
    pub(crate) fn local_time(&self, id: NodeId) -> LocalTime {
        self.local_time_at(id, self.now)
    }

    /// Node `id`'s clock at virtual time `at`.
    pub(crate) fn local_time_at(&self, id: NodeId, at: u64) -> LocalTime {
        let base = u128::from(super::super::micros(self.config.raft.tick).max(1));
        let tick_us = self.nodes.get(&id).map_or(1, |n| n.tick_us.max(1));
        let tick_us = u128::from(tick_us);
        LocalTime((u128::from(at) * base / tick_us) as u64)
    }

    /// Serves `command` at `node` through the caller's-thread lease path, if its lease holds
    /// on its own clock and its state machine has applied through the published index: the
    /// answer, with the index it ran at. `None`: the read takes the node's path.
    pub(crate) fn read_on_caller(
        &self,
        node: NodeId,
        query: ReadQuery<S>,
        command: &S::Command,
    ) -> Option<(S::Output, LogIndex)> {
        let live = self.nodes.get(&node)?.live.as_ref()?;
        let view = live.lease.as_ref()?;
        let clock = NodeClock(self.local_time(node));
        match (live.driver.inline_applier(), live.driver.backlog()) {
            (Some(applier), _) => view.read_locally(&clock, applier, |sm| query(sm, command)),
            (None, Some(backlog)) => view.read_locally(&clock, &**backlog, |sm| query(sm, command)),
            (None, None) => None,
        }
    }
}
