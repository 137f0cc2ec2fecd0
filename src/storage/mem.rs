//! [`MemStorage`]: the in-memory [`Storage`], the default for tests and in-process clusters.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::HardState;
use super::{PersistentState, Storage};
use crate::message::{Configuration, Entry, Snapshot};
use crate::types::{LogIndex, Term};

/// An in-memory [`Storage`]. Clones share the same data, so the [`crate::Cluster`] keeps one
/// clone while the node's thread writes through another; a restarted node loads from it.
#[derive(Debug)]
pub struct MemStorage<C> {
    inner: Arc<Mutex<PersistentState<C>>>,
}

impl<C> Clone for MemStorage<C> {
    fn clone(&self) -> Self {
        MemStorage { inner: Arc::clone(&self.inner) }
    }
}

impl<C: Clone> MemStorage<C> {
    /// Empty storage whose bootstrap configuration is `base_config`.
    pub fn new(base_config: Configuration) -> Self {
        let state = PersistentState {
            hard_state: HardState::default(),
            base_config,
            log_offset: LogIndex(0),
            offset_term: Term(0),
            entries: Vec::new(),
            snapshot: None,
        };
        MemStorage { inner: Arc::new(Mutex::new(state)) }
    }

    /// Storage holding `state`, as if it had been persisted.
    pub fn from_state(state: PersistentState<C>) -> Self {
        MemStorage { inner: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> MutexGuard<'_, PersistentState<C>> {
        // NB: a panic while holding the lock leaves data that was fully written; keep using it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.lock().hard_state
    }

    /// The number of log entries persisted (after the offset).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no log entries are persisted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`Storage::append`] of entries the caller owns: moved in, not cloned (the simulator's
    /// sync of pending writes).
    pub(crate) fn append_owned(
        &mut self,
        first: LogIndex,
        entries: Vec<Entry<C>>,
    ) -> io::Result<()> {
        self.append_with(first, entries.len(), |log| log.extend(entries))
    }

    /// Truncates the log after `first - 1` and lets `extend` add the `added` entries from
    /// `first`. NB: `first` and the offset (its last snapshot's index) come from the core, but
    /// the core does not bound the index of a snapshot installed from a leader, and
    /// [`MemStorage::from_state`] takes any state: the arithmetic is checked (an error, not a
    /// panic) rather than asserted.
    fn append_with(
        &mut self,
        first: LogIndex,
        added: usize,
        extend: impl FnOnce(&mut Vec<Entry<C>>),
    ) -> io::Result<()> {
        let mut state = self.lock();
        let keep = super::kept_before(&state, first, added)
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
        state.entries.truncate(keep);
        extend(&mut state.entries);
        Ok(())
    }
}

impl<C: Clone + Send + 'static> Storage<C> for MemStorage<C> {
    fn load(&self) -> io::Result<PersistentState<C>> {
        Ok(self.lock().clone())
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()> {
        self.lock().hard_state = hard_state;
        Ok(())
    }

    fn append(&mut self, first: LogIndex, entries: &[Entry<C>]) -> io::Result<()> {
        self.append_with(first, entries.len(), |log| log.extend_from_slice(entries))
    }

    fn save_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> io::Result<()> {
        super::check_snapshot_index(snapshot)?;
        super::apply_snapshot(&mut self.lock(), snapshot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Payload;

    fn entry(term: u64) -> Entry<u32> {
        Entry { term: Term(term), payload: Payload::Noop }
    }

    #[test]
    fn append_truncates_then_appends_and_clones_share() {
        let mut s = MemStorage::<u32>::new(Configuration::default());
        let reader = s.clone();
        s.append(LogIndex(1), &[entry(1), entry(1), entry(1)]).expect("append");
        s.append(LogIndex(2), &[entry(2)]).expect("append");
        let loaded = reader.load().expect("load");
        assert_eq!(loaded.entries, vec![entry(1), entry(2)]);
    }

    #[test]
    fn append_with_a_gap_is_refused() {
        let mut s = MemStorage::<u32>::new(Configuration::default());
        assert!(s.append(LogIndex(3), &[entry(1)]).is_err());
        assert!(s.is_empty());
    }

    /// Offsets and indexes near `u64::MAX` (a `from_state` state, a caller's bad `first`) are
    /// errors, never an overflow.
    #[test]
    fn appends_and_snapshots_past_the_last_usable_index_are_refused() {
        let at = |offset: u64| {
            MemStorage::from_state(PersistentState {
                log_offset: LogIndex(offset),
                ..PersistentState::default()
            })
        };
        let refused = |result: io::Result<()>| {
            let error = result.expect_err("refused");
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
        };
        refused(at(u64::MAX).append(LogIndex(5), &[entry(1)]));
        refused(at(u64::MAX - 1).append(LogIndex(u64::MAX), &[entry(1)]));
        refused(at(3).append(LogIndex(u64::MAX), &[]));
        let mut s = at(u64::MAX - 2);
        refused(s.append(LogIndex(u64::MAX - 1), &[entry(1), entry(1)]));
        s.append(LogIndex(u64::MAX - 1), &[entry(1)]).expect("the last usable index");
        let meta = crate::message::SnapshotMeta {
            index: LogIndex(u64::MAX),
            term: Term(1),
            config: Arc::new(Configuration::default()),
        };
        refused(s.save_snapshot(&Arc::new(Snapshot { meta, data: Arc::from(Vec::new()) })));
        assert_eq!(s.load().expect("load").log_offset, LogIndex(u64::MAX - 2));
    }
}
