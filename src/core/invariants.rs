//! Invariants checked after every step in test and debug builds: one function per numbered
//! invariant, each panicking with the node and term so a failing seed is easy to read.

use super::{Core, Role};

impl<C: Clone> Core<C> {
    /// Runs every invariant check. Skipped while a test-only bug switch is on, so the
    /// simulator's checkers (not these asserts) must be the ones to notice.
    pub(super) fn check_invariants(&self) {
        #[cfg(test)]
        if self.bugs_enabled() {
            return;
        }
        self.check_i1_commit_within_log();
        self.check_i2_applied_within_commit();
        self.check_i3_leader_knows_itself();
        self.check_i4_log_terms_not_ahead();
        self.check_p1_progress_ordered();
    }

    fn check_i1_commit_within_log(&self) {
        assert!(
            self.commit_index <= self.log.last_index(),
            "{} {}: I1 commit {} past last {}",
            self.id,
            self.term,
            self.commit_index,
            self.log.last_index()
        );
    }

    fn check_i2_applied_within_commit(&self) {
        assert!(
            self.last_applied <= self.commit_index,
            "{} {}: I2 applied {} past commit {}",
            self.id,
            self.term,
            self.last_applied,
            self.commit_index
        );
    }

    fn check_i3_leader_knows_itself(&self) {
        if self.role == Role::Leader {
            assert_eq!(
                self.leader,
                Some(self.id),
                "{} {}: I3 leader forgot itself",
                self.id,
                self.term
            );
            assert_eq!(
                self.voted_for,
                Some(self.id),
                "{} {}: I3 leader without own vote",
                self.id,
                self.term
            );
        }
    }

    fn check_i4_log_terms_not_ahead(&self) {
        assert!(
            self.log.last_term() <= self.term,
            "{} {}: I4 log holds future term {}",
            self.id,
            self.term,
            self.log.last_term()
        );
    }

    fn check_p1_progress_ordered(&self) {
        for (id, p) in &self.progress {
            assert!(
                p.matched < p.next,
                "{} {}: P1 {id} match {} >= next {}",
                self.id,
                self.term,
                p.matched,
                p.next
            );
            assert!(
                p.matched <= self.log.last_index(),
                "{} {}: P1 {id} match past log",
                self.id,
                self.term
            );
        }
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
