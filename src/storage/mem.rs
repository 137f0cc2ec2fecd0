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
        self.append_with(first, |log| log.extend(entries))
    }

    /// Truncates the log after `first - 1` and lets `extend` add the entries from `first`.
    fn append_with(
        &mut self,
        first: LogIndex,
        extend: impl FnOnce(&mut Vec<Entry<C>>),
    ) -> io::Result<()> {
        let mut state = self.lock();
        let keep = first.0.checked_sub(state.log_offset.0 + 1).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "append below the log offset")
        })?;
        if keep > state.entries.len() as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "append leaves a gap"));
        }
        state.entries.truncate(keep as usize);
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
        self.append_with(first, |log| log.extend_from_slice(entries))
    }

    fn save_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> io::Result<()> {
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
}
