//! Invariants of a core's own state, one function per numbered invariant, each failing with the
//! node, term and rule so a failing seed is easy to read.
//!
//! Compiled in every build. [`Core::step`] asserts a cheap O(1) subset (I1, I2, I3) after every
//! step, always; the full set runs after every step in debug builds or when
//! [`Core::set_check_invariants`] is on, and [`Core::check_invariants`] runs it on demand.
//! Must not mutate anything: checking may never change a run.
//!
//! | id | invariant | cost |
//! |---|---|---|
//! | I1 | `commit_index <= log.last_index()` | O(1), always |
//! | I2 | `last_applied <= commit_index` | O(1), always |
//! | I3 | a leader knows itself as leader (always) and voted for itself | O(1) |
//! | I4 | no log entry has a term above `term` | O(1) |
//! | P1 | per peer: `matched < next`, `matched <= last index` | O(peers) |
//! | P3 | a leader has progress for exactly its configuration's members but itself; others none | O(peers) |
//! | P4 | snapshot transfers only to nodes with progress (members, while leading) | O(transfers) |
//! | V1 | votes are held only by a (pre-)candidate | O(1) |
//! | C1 | a leader's commit index is matched by a quorum of its configuration (LEAD-4) | O(peers log peers) |
//! | R1 | a leader has at most one read round outstanding (`read.rs`) | O(1) |
//! | R2 | no read waits at a leader past its deadline, an election timeout (`read.rs`) | O(1) |

use std::fmt;

use super::{quorum, Core, Role};
use crate::message::Configuration;
use crate::types::{LogIndex, NodeId, Term};

/// A broken invariant of one core: a bug in the core (or in a driver that corrupted its input
/// state), never something a peer's message can cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvariantViolation {
    /// The node whose state is broken.
    pub node: NodeId,
    /// Its current term.
    pub term: Term,
    /// The invariant's id, as numbered in `core/invariants.rs` (I1, P3, C1, ...).
    pub rule: &'static str,
    /// What was found.
    pub detail: String,
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {} {}", self.node, self.term, self.rule, self.detail)
    }
}

impl std::error::Error for InvariantViolation {}

type Check = Result<(), InvariantViolation>;

/// The most voters [`Core::invariants_hold`] handles on the stack.
const ON_STACK: usize = 16;

/// Every member of `config` once, in id order, with whether it votes.
fn members_in_order(config: &Configuration) -> impl Iterator<Item = (NodeId, bool)> + '_ {
    let mut voters = config.voters.iter().copied().peekable();
    let mut learners = config.learners.iter().copied().peekable();
    std::iter::from_fn(move || match (voters.peek().copied(), learners.peek().copied()) {
        (None, None) => None,
        (Some(v), l) if l.is_none_or(|l| v <= l) => {
            learners.next_if_eq(&v);
            voters.next().map(|v| (v, true))
        }
        _ => learners.next().map(|l| (l, false)),
    })
}

impl<C: Clone> Core<C> {
    /// Checks every invariant of this core's state; the first violation found is returned.
    /// Costs O(peers · log peers); it never scans the log.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.check_i1_commit_within_log()?;
        self.check_i2_applied_within_commit()?;
        self.check_i3_leader_knows_itself()?;
        self.check_i4_log_terms_not_ahead()?;
        self.check_p1_progress_ordered()?;
        self.check_p3_progress_matches_config()?;
        self.check_p4_transfers_to_members()?;
        self.check_v1_votes_only_while_campaigning()?;
        self.check_c1_commit_matched_by_a_quorum()?;
        self.check_r1_r2_reads_bounded()
    }

    /// Turns on the full invariant check after every [`Core::step`] in any build (debug builds
    /// always run it), panicking with the violation. For simulators and tests; costs
    /// O(peers · log peers) per step.
    pub fn set_check_invariants(&mut self, on: bool) {
        self.invariants_on = on;
    }

    /// After every step: the O(1) subset always, the rest in debug builds or when switched on.
    pub(super) fn assert_invariants(&self) {
        #[cfg(test)]
        if self.bugs_enabled() {
            return; // the simulator's checkers, not these asserts, must catch a planted bug
        }
        let cheap = self
            .check_i1_commit_within_log()
            .and_then(|()| self.check_i2_applied_within_commit())
            .and_then(|()| self.check_i3_leader_is_self());
        let full = || {
            if (cfg!(debug_assertions) || self.invariants_on) && !self.invariants_hold() {
                self.check_invariants()
            } else {
                Ok(())
            }
        };
        if let Err(v) = cheap.and_then(|()| full()) {
            panic!("{v}");
        }
    }

    /// Whether [`Core::check_invariants`] would find nothing, decided in one ordered pass over
    /// the voters and the progress map instead of one per invariant (it runs after every
    /// simulated step, and walking ordered maps was most of its cost). `false` means "ask
    /// `check_invariants`", which names the violation: it is the reference, this only a fast
    /// way to the same "all hold". More than 16 voters say `false`.
    pub(super) fn invariants_hold(&self) -> bool {
        let o1 = self.check_i1_commit_within_log().is_ok()
            && self.check_i2_applied_within_commit().is_ok()
            && self.check_i3_leader_knows_itself().is_ok()
            && self.check_i4_log_terms_not_ahead().is_ok()
            && self.check_v1_votes_only_while_campaigning().is_ok()
            && self.check_p4_transfers_to_members().is_ok()
            && self.reads_bounded().is_ok();
        if !o1 {
            return false;
        }
        if self.role != Role::Leader {
            return self.progress.is_empty(); // P3; then P1 has nothing to check, C1 no leader
        }
        let config = self.config();
        let (me, last) = (self.id, self.log.last_index());
        let mut progress = self.progress.iter();
        let mut matched = [LogIndex(0); ON_STACK];
        let mut voters = 0;
        for (id, voter) in members_in_order(config) {
            let index = if id == me {
                last
            } else {
                // P3: the progress keys are the members but me, in the same order; P1 for each.
                match progress.next() {
                    Some((&p, pr)) if p == id && pr.matched < pr.next && pr.matched <= last => {
                        pr.matched
                    }
                    _ => return false,
                }
            };
            if voter {
                let Some(slot) = matched.get_mut(voters) else { return false };
                *slot = index;
                voters += 1;
            }
        }
        if progress.next().is_some() {
            return false;
        }
        let counted = self.commit_index >= self.term_start && !self.membership.has_pending();
        // C1, as `quorum::majority_index` computes the quorum's match
        !counted || self.commit_index <= quorum::majority_of(&mut matched[..voters])
    }

    fn violation(&self, rule: &'static str, detail: String) -> Check {
        Err(InvariantViolation { node: self.id, term: self.term, rule, detail })
    }

    fn check_i1_commit_within_log(&self) -> Check {
        let (commit, last) = (self.commit_index, self.log.last_index());
        if commit > last {
            return self.violation("I1", format!("commit {commit} past last {last}"));
        }
        Ok(())
    }

    fn check_i2_applied_within_commit(&self) -> Check {
        if self.last_applied > self.commit_index {
            let detail = format!("applied {} past commit {}", self.last_applied, self.commit_index);
            return self.violation("I2", detail);
        }
        Ok(())
    }

    fn check_i3_leader_is_self(&self) -> Check {
        if self.role == Role::Leader && self.leader != Some(self.id) {
            return self.violation("I3", format!("leader thinks {:?} leads", self.leader));
        }
        Ok(())
    }

    fn check_i3_leader_knows_itself(&self) -> Check {
        self.check_i3_leader_is_self()?;
        if self.role == Role::Leader && self.voted_for != Some(self.id) {
            return self.violation("I3", format!("leader voted for {:?}", self.voted_for));
        }
        Ok(())
    }

    fn check_i4_log_terms_not_ahead(&self) -> Check {
        if self.log.last_term() > self.term {
            return self.violation("I4", format!("log holds future term {}", self.log.last_term()));
        }
        Ok(())
    }

    fn check_p1_progress_ordered(&self) -> Check {
        let last = self.log.last_index();
        for (id, p) in &self.progress {
            if p.matched >= p.next {
                return self
                    .violation("P1", format!("{id} match {} >= next {}", p.matched, p.next));
            }
            if p.matched > last {
                return self.violation("P1", format!("{id} match {} past last {last}", p.matched));
            }
        }
        Ok(())
    }

    fn check_p3_progress_matches_config(&self) -> Check {
        let config = self.config();
        if self.role != Role::Leader {
            if let Some(id) = self.progress.keys().next() {
                return self.violation("P3", format!("{:?} keeps progress for {id}", self.role));
            }
            return Ok(());
        }
        // NB: the fast path (run after every simulated step): with no learners, P3 holds iff
        // the voters but me are the progress keys, both in id order. Anything else takes the
        // slow path below, which finds the same violation it always did.
        let me = self.id;
        if config.learners.is_empty()
            && config.voters.iter().filter(|&&id| id != me).eq(self.progress.keys())
        {
            return Ok(());
        }
        if let Some(id) =
            config.members().find(|&m| m != self.id && !self.progress.contains_key(&m))
        {
            return self.violation("P3", format!("no progress for member {id}"));
        }
        if let Some(id) = self.progress.keys().find(|&&id| !config.contains(id) || id == self.id) {
            return self.violation("P3", format!("progress for non-member {id}"));
        }
        Ok(())
    }

    fn check_p4_transfers_to_members(&self) -> Check {
        match self.sending.keys().find(|id| !self.progress.contains_key(id)) {
            Some(id) => self.violation("P4", format!("a snapshot transfer to {id}, not a member")),
            None => Ok(()),
        }
    }

    fn check_v1_votes_only_while_campaigning(&self) -> Check {
        let campaigning = matches!(self.role, Role::Candidate | Role::PreCandidate);
        if !campaigning && !self.votes.is_empty() {
            return self.violation("V1", format!("{:?} holds votes {:?}", self.role, self.votes));
        }
        Ok(())
    }

    fn check_r1_r2_reads_bounded(&self) -> Check {
        self.reads_bounded().or_else(|(rule, detail)| self.violation(rule, detail))
    }

    /// LEAD-4 as a state invariant. Checked once this leader has committed in its term (its
    /// commit index reached its no-op) and no configuration entry is pending: then the last
    /// commit advance counted this same configuration, and matchIndex only grows (P2), so a
    /// quorum still holds everything up to the commit index. Before that, matchIndex values
    /// restart from 0 at the election and a new configuration may lack the old quorum, so
    /// nothing can be said.
    fn check_c1_commit_matched_by_a_quorum(&self) -> Check {
        let counted = self.role == Role::Leader
            && self.commit_index >= self.term_start
            && !self.membership.has_pending();
        if !counted {
            return Ok(());
        }
        let quorum_index = self.quorum_match_index();
        if self.commit_index > quorum_index {
            let detail = format!("commit {} above quorum match {quorum_index}", self.commit_index);
            return self.violation("C1", detail);
        }
        Ok(())
    }

    /// The highest index a majority of voters has matched (my own log counts for me), as
    /// `quorum::majority_index` computes it, reading progress in one ordered pass instead of
    /// a map lookup per voter (C1 runs after every simulated step).
    fn quorum_match_index(&self) -> LogIndex {
        let (me, own) = (self.id, self.log.last_index());
        let mut progress = self.progress.iter().peekable();
        let mut matched = |id: NodeId| {
            if id == me {
                return own;
            }
            while progress.next_if(|(&p, _)| p < id).is_some() {}
            match progress.peek() {
                Some((&p, progress)) if p == id => progress.matched,
                _ => LogIndex(0),
            }
        };
        quorum::majority_of_voters(self.config(), &mut matched)
    }

    #[cfg(test)]
    fn bugs_enabled(&self) -> bool {
        let b = self.bugs;
        b.skip_election_restriction
            || b.commit_previous_terms
            || b.truncate_on_duplicate
            || b.forget_voted_for
            || b.apply_before_commit
    }
}
