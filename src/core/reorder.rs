//! Follower: AppendEntries that arrived ahead of the log (their prevLogIndex past its last
//! entry) because an earlier one of the same leader was reordered behind them or lost. They
//! are held until the gap before them fills and then handled as if delivered at that moment,
//! the way TCP reassembles segments (thesis §10.2.2: pipelining works best with in-order
//! delivery; reordering otherwise wastes retransmissions).
//!
//! Safety still comes from the AppendEntries consistency check (AE-2), which a held request
//! passes through when it is replayed, not when it is held: holding one is the network
//! delaying it a little longer, which Raft tolerates. Requests of an older term are never
//! replayed, since Raft drops a message of an older term (ALL-2).
//!
//! Owns the holding only; the receiver in `replication.rs` decides what to hold and replays.
//! Memory: at most `Config::max_inflight` requests (the leader's window), the nearest the
//! gap kept first.

use std::collections::BTreeMap;

use crate::message::AppendEntries;
use crate::types::{LogIndex, Term};

/// Held AppendEntries of one leader, by prevLogIndex.
/// Invariant (H1): every held request was sent in `term`.
#[derive(Debug)]
pub(super) struct Held<C> {
    term: Term,
    by_prev: BTreeMap<LogIndex, AppendEntries<C>>,
}

impl<C> Default for Held<C> {
    fn default() -> Self {
        Held { term: Term(0), by_prev: BTreeMap::new() }
    }
}

impl<C> Held<C> {
    /// Holds `ae`, sent by the leader of `term`, forgetting what an older term's leader sent;
    /// past `capacity` the request furthest from the gap goes (it was lost, as far as the
    /// leader can tell). A copy of a held request replaces it.
    pub fn hold(&mut self, term: Term, ae: AppendEntries<C>, capacity: usize) {
        if term != self.term {
            self.by_prev.clear();
            self.term = term;
        }
        self.by_prev.insert(ae.prev_log_index, ae);
        if self.by_prev.len() > capacity {
            self.by_prev.pop_last();
        }
    }

    /// The held request nearest the gap, if one of `term` now follows the log, which is known
    /// to match the leader's `through` (its prevLogIndex is at or below).
    pub fn take_ready(&mut self, term: Term, through: LogIndex) -> Option<AppendEntries<C>> {
        if self.by_prev.is_empty() {
            return None; // NB: the path of every in-order AppendEntries
        }
        if term != self.term {
            self.by_prev.clear();
            return None;
        }
        let first = self.by_prev.first_entry().expect("not empty");
        (*first.key() <= through).then(|| first.remove())
    }

    /// The term of the held requests.
    #[cfg(test)]
    pub fn term(&self) -> Term {
        self.term
    }

    /// How many requests are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_prev.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(prev: u64) -> AppendEntries<u64> {
        AppendEntries {
            prev_log_index: LogIndex(prev),
            prev_log_term: Term(1),
            entries: Vec::new(),
            leader_commit: LogIndex(0),
        }
    }

    fn prevs(h: &mut Held<u64>, term: u64, through: u64) -> Vec<u64> {
        std::iter::from_fn(|| h.take_ready(Term(term), LogIndex(through)))
            .map(|a| a.prev_log_index.0)
            .collect()
    }

    #[test]
    fn held_requests_come_back_in_log_order_once_the_gap_fills() {
        let mut h = Held::default();
        for prev in [5, 3, 4] {
            h.hold(Term(1), ae(prev), 8);
        }
        assert_eq!(prevs(&mut h, 1, 2), Vec::<u64>::new(), "the log ends at i2: i3 is missing");
        assert_eq!(prevs(&mut h, 1, 4), [3, 4], "through i4: the requests after i3 and i4");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_newer_term_forgets_the_old_leaders_requests() {
        let mut h = Held::default();
        h.hold(Term(1), ae(3), 8);
        assert_eq!(prevs(&mut h, 2, 9), Vec::<u64>::new(), "never replayed in term 2");
        assert_eq!(h.len(), 0);
        h.hold(Term(1), ae(3), 8);
        h.hold(Term(2), ae(6), 8);
        assert_eq!((h.term(), h.len()), (Term(2), 1), "holding for term 2 drops term 1's");
    }

    #[test]
    fn past_capacity_the_request_furthest_from_the_gap_goes() {
        let mut h = Held::default();
        for prev in [4, 9, 6] {
            h.hold(Term(1), ae(prev), 2);
        }
        h.hold(Term(1), ae(6), 2);
        assert_eq!(prevs(&mut h, 1, 100), [4, 6], "i9 went; a copy of i6 replaced it");
    }
}
