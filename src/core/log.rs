//! The in-memory Raft log with an offset, so compaction can drop a prefix later without
//! changing how indexes are computed.
//!
//! Invariant (L1): terms never decrease along the log, which lets term lookups binary-search.

use crate::message::Entry;
use crate::types::{LogIndex, Term};

/// A contiguous run of entries after `offset` (the index of the last compacted entry, 0 today).
#[derive(Clone, Debug)]
pub struct Log<C> {
    offset: LogIndex,
    offset_term: Term,
    entries: Vec<Entry<C>>,
}

impl<C> Log<C> {
    /// A log holding `entries` at `offset + 1 ..`.
    pub(crate) fn new(offset: LogIndex, offset_term: Term, entries: Vec<Entry<C>>) -> Self {
        Log { offset, offset_term, entries }
    }

    /// The index before the first stored entry.
    pub fn offset(&self) -> LogIndex {
        self.offset
    }

    /// Index of the last entry (the offset if empty).
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.offset.0 + self.entries.len() as u64)
    }

    /// Term of the last entry (the offset's term if empty).
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    /// The term of the entry at `index`, or None if it is past the end or compacted away.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The entry at `index`, if stored.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry<C>> {
        let pos = index.0.checked_sub(self.offset.0 + 1)?;
        self.entries.get(usize::try_from(pos).ok()?)
    }

    /// Up to `max` entries starting at `from` (empty if `from` is past the end).
    pub fn entries_from(&self, from: LogIndex, max: usize) -> &[Entry<C>] {
        let start = self.position(from).min(self.entries.len());
        let end = start.saturating_add(max).min(self.entries.len());
        &self.entries[start..end]
    }

    /// Appends one entry at `last_index() + 1`.
    pub(crate) fn push(&mut self, entry: Entry<C>) {
        debug_assert!(
            entry.term >= self.last_term(),
            "L1: term {} after {}",
            entry.term,
            self.last_term()
        );
        self.entries.push(entry);
    }

    /// Deletes the entry at `from` and everything after it (AE-3).
    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        assert!(from > self.offset, "truncating compacted index {from} (offset {})", self.offset);
        self.entries.truncate(self.position(from));
    }

    /// Drops the entries through `index` (covered by a snapshot): the offset moves to `index`.
    pub(crate) fn compact_through(&mut self, index: LogIndex) {
        assert!(
            index > self.offset && index <= self.last_index(),
            "compacting {index} outside the log"
        );
        let term = self.term_at(index).expect("inside the log");
        self.entries.drain(..self.position(index.next()));
        self.offset = index;
        self.offset_term = term;
    }

    /// Replaces the whole log by an empty one after `index` (a snapshot that conflicts with it).
    pub(crate) fn reset(&mut self, index: LogIndex, term: Term) {
        self.entries.clear();
        self.offset = index;
        self.offset_term = term;
    }

    /// The first index holding `term` at or before `at` (binary search, by L1).
    pub fn first_index_of_term(&self, term: Term, at: LogIndex) -> LogIndex {
        let end = self.position(at.next()).min(self.entries.len());
        let pos = self.entries[..end].partition_point(|e| e.term < term);
        LogIndex(self.offset.0 + 1 + pos as u64)
    }

    /// The last index holding `term`, if any entry has it.
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        let pos = self.entries.partition_point(|e| e.term <= term);
        let candidate = LogIndex(self.offset.0 + pos as u64);
        (self.term_at(candidate) == Some(term)).then_some(candidate)
    }

    /// Whether a candidate whose log ends at (`last_term`, `last_index`) is at least as
    /// up-to-date as this log (§5.4.1; SUB-2): higher last term wins, then the longer log.
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    fn position(&self, index: LogIndex) -> usize {
        index.0.saturating_sub(self.offset.0 + 1) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Payload;

    fn log_of(terms: &[u64]) -> Log<()> {
        let entries = terms.iter().map(|&t| Entry { term: Term(t), payload: Payload::Noop });
        Log::new(LogIndex(0), Term(0), entries.collect())
    }

    #[test]
    fn indexes_start_at_one() {
        let log = log_of(&[1, 1, 2]);
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.term_at(LogIndex(0)), Some(Term(0)));
        assert_eq!(log.term_at(LogIndex(3)), Some(Term(2)));
        assert_eq!(log.term_at(LogIndex(4)), None);
    }

    #[test]
    fn term_searches_find_boundaries() {
        let log = log_of(&[1, 1, 4, 4, 4, 5]);
        assert_eq!(log.first_index_of_term(Term(4), LogIndex(5)), LogIndex(3));
        assert_eq!(log.last_index_of_term(Term(4)), Some(LogIndex(5)));
        assert_eq!(log.last_index_of_term(Term(3)), None);
        assert_eq!(log.last_index_of_term(Term(0)), Some(LogIndex(0)));
    }

    #[test]
    fn up_to_date_compares_last_term_then_length() {
        let log = log_of(&[1, 1, 2]);
        assert!(log.is_up_to_date(LogIndex(1), Term(3)));
        assert!(log.is_up_to_date(LogIndex(3), Term(2)));
        assert!(!log.is_up_to_date(LogIndex(2), Term(2)));
        assert!(!log.is_up_to_date(LogIndex(9), Term(1)));
    }

    #[test]
    fn truncate_and_slices() {
        let mut log = log_of(&[1, 1, 2, 2]);
        log.truncate_from(LogIndex(3));
        assert_eq!(log.last_index(), LogIndex(2));
        assert_eq!(log.entries_from(LogIndex(2), 10).len(), 1);
        assert!(log.entries_from(LogIndex(9), 10).is_empty());
    }
}
