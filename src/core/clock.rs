//! The clock's fast path: how many ticks until a timer can fire, and many ticks at once.
//!
//! Every timer of the core counts ticks: the election timeout (followers and candidates), the
//! heartbeat and the CheckQuorum round (leaders), a follower's read deadlines, and, while one is
//! under way, the membership change's catch-up rounds and the leadership transfer's deadline.
//! A tick before the earliest of them only advances the counters, so `Input::Ticks(n)` jumps
//! over those and steps the others one at a time: exactly `n` single ticks (the equivalence is
//! tested in `tests/clock.rs` over random clusters).

use super::{Action, Core, Input, Role};

impl<C: Clone> Core<C> {
    /// How many ticks from now until the first one that may do anything beyond advancing the
    /// clock (fire a timer, send, change state): at least 1. The ticks before it are idle, so
    /// a driver may deliver them late, all at once, as `Input::Ticks`, provided it does so
    /// before any other input and recomputes this after every step.
    pub fn ticks_until_due(&self) -> u64 {
        if self.change.is_some() || self.transfer.is_some() {
            return 1; // rare, and checked on every tick: no shortcut
        }
        let timers = if self.role == Role::Leader {
            after(self.heartbeat_elapsed, self.timing.heartbeat_ticks)
                .min(after(self.election_elapsed, self.timing.election_ticks.start))
        } else {
            after(self.election_elapsed, self.election_timeout)
        };
        timers.min(self.read_deadline_ticks())
    }

    /// `Input::Ticks(n)`: the idle ticks advance the counters only, the others are full
    /// `Input::Tick` steps.
    pub(super) fn ticks(&mut self, n: u64, actions: &mut Vec<Action<C>>) {
        let mut left = n;
        while left > 0 {
            let idle = (self.ticks_until_due() - 1).min(left);
            self.elapse_idle(idle);
            left -= idle;
            if left > 0 {
                self.step(Input::Tick, actions);
                left -= 1;
            }
        }
    }

    /// What `n` idle ticks do (see `election.rs` `tick`): the counters, nothing else.
    fn elapse_idle(&mut self, n: u64) {
        debug_assert!(n < self.ticks_until_due(), "only idle ticks are skipped");
        self.now += n;
        self.election_elapsed += n;
        if self.role == Role::Leader {
            self.heartbeat_elapsed += n;
        }
    }
}

/// Ticks until a counter at `elapsed` reaches `limit` (it fires on the tick that reaches it).
fn after(elapsed: u64, limit: u64) -> u64 {
    limit.saturating_sub(elapsed).max(1)
}

#[cfg(test)]
impl<C: Clone + std::fmt::Debug> Core<C> {
    /// The whole protocol state as text, for comparing two cores in tests.
    pub(crate) fn fingerprint(&self) -> String {
        let clock = (self.now, self.election_elapsed, self.election_timeout, self.leader_heard_at);
        let durable = (self.heartbeat_elapsed, &self.rng, self.durable, self.term_start);
        let vote = (self.term, self.voted_for, self.role, self.leader, &self.votes);
        let log = (&self.log, self.commit_index, self.last_applied, &self.membership);
        let leader = (&self.progress, &self.change, &self.sending, &self.transfer);
        let snapshot = (&self.snapshot, self.snapshot_requested, &self.incoming);
        let owed = (self.persist_hard_state, &self.persist_snapshot, self.persist_from, &self.out);
        format!(
            "{clock:?} {durable:?} {vote:?} {log:?} {leader:?} {snapshot:?} {:?} {owed:?}",
            self.reads
        )
    }
}
