//! Stable storage: the [`Storage`] trait, where a node keeps currentTerm, votedFor and the log
//! (Figure 2's persistent state), and its implementations: [`MemStorage`] (`mem.rs`), an
//! in-memory store that outlives the node's thread so a killed node restarts from exactly what it
//! persisted, and [`DiskStorage`] (`disk.rs`, record format in `wal.rs`), a checksummed,
//! segmented write-ahead log in a directory per node, whose errors are [`StorageError`]s.
//!
//! The runtime writes here when the core asks (`Action::PersistHardState`,
//! `Action::PersistEntries`), always before sending the messages that depend on it (SUB-8).

use std::io;

use serde::{Deserialize, Serialize};

mod disk;
mod error;
mod mem;
mod wal;

pub(crate) use disk::largest_created;
pub use disk::{DiskOptions, DiskStorage, NodeIdentity, SyncPolicy, MAX_SEGMENT_BYTES};
pub use error::StorageError;
pub use mem::MemStorage;

use std::sync::Arc;

use crate::message::{Configuration, Entry, Snapshot};
use crate::types::{LogIndex, NodeId, Term};

/// currentTerm and votedFor (ST-P1, ST-P2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this server has seen.
    pub term: Term,
    /// The candidate that received this server's vote in `term`, if any.
    pub voted_for: Option<NodeId>,
}

/// Everything a node needs to restart: what [`Storage::load`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistentState<C> {
    /// currentTerm and votedFor.
    pub hard_state: HardState,
    /// The configuration in force before the first log entry (the bootstrap configuration; empty
    /// for a node that joins later and learns its configuration from the log).
    pub base_config: Configuration,
    /// The index just before `entries[0]`: 0 until log compaction moves it.
    pub log_offset: LogIndex,
    /// The term of the entry at `log_offset` (0 when the offset is 0).
    pub offset_term: Term,
    /// The log entries from `log_offset + 1`.
    pub entries: Vec<Entry<C>>,
    /// The latest snapshot, if any: `log_offset` is its index and `base_config` its
    /// configuration.
    pub snapshot: Option<Arc<Snapshot>>,
}

/// Stable storage for one node.
///
/// Writes (`save_hard_state`, `append`, `save_snapshot`) may be buffered; they count as persisted
/// only once [`Storage::sync`] returns (or the job of [`Storage::start_sync`] has run). The
/// node driver syncs once at the end of a batch of steps (a burst of messages or client
/// requests) and before any message or answer that depends on their writes (SUB-8), so one
/// sync covers everything the batch wrote (group commit). With `Config::background_sync` the
/// thread runtime runs that sync off the node's thread (`start_sync`), so a node keeps
/// stepping meanwhile. Only a leader's AppendEntries may leave before its own write of those
/// entries is synced (once its term and vote are); it counts itself towards commitment only
/// after the sync (thesis §10.2.1). A store whose writes are durable on
/// return (like [`MemStorage`]) keeps the default no-op `sync`.
pub trait Storage<C>: Send + 'static {
    /// Reads back everything persisted so far.
    fn load(&self) -> io::Result<PersistentState<C>>;
    /// Durably records currentTerm and votedFor.
    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()>;
    /// Durably replaces the log from index `first` onwards with `entries` (truncate, then append).
    fn append(&mut self, first: LogIndex, entries: &[Entry<C>]) -> io::Result<()>;
    /// Durably stores `snapshot` as the latest and drops the log entries through its index;
    /// entries after it stay. From then on `load` returns it, with `log_offset` at its index and
    /// `base_config` its configuration.
    fn save_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> io::Result<()>;
    /// Makes every write so far durable (fsync). Until it returns, a crash may lose or tear
    /// any of them.
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Starts making every write so far durable without waiting for the disk: returns a job
    /// that the caller runs on another thread, after which those writes count as persisted
    /// (later writes are not covered). `None` means they are durable already. The default
    /// syncs in place. The node driver uses it in the background mode
    /// (`Config::background_sync`), so that a node keeps working (a leader keeps replicating
    /// and answering) while its fsync runs.
    fn start_sync(&mut self) -> io::Result<Option<SyncJob>> {
        self.sync().map(|()| None)
    }
}

/// A sync running off the node's thread ([`Storage::start_sync`]).
pub type SyncJob = Box<dyn FnOnce() -> io::Result<()> + Send>;

impl<C: 'static> Storage<C> for Box<dyn Storage<C>> {
    fn load(&self) -> io::Result<PersistentState<C>> {
        (**self).load()
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()> {
        (**self).save_hard_state(hard_state)
    }

    fn append(&mut self, first: LogIndex, entries: &[Entry<C>]) -> io::Result<()> {
        (**self).append(first, entries)
    }

    fn save_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> io::Result<()> {
        (**self).save_snapshot(snapshot)
    }

    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }

    fn start_sync(&mut self) -> io::Result<Option<SyncJob>> {
        (**self).start_sync()
    }
}

/// The highest index a log may end at (or a snapshot stand at): the core computes the index
/// after the last one (`last_index().next()`), so `u64::MAX` is never a usable index. The
/// stores refuse a write that would pass it, and [`DiskStorage`] a directory whose state does.
pub(crate) const MAX_LAST_INDEX: LogIndex = LogIndex(u64::MAX - 1);

/// The last index of a log of `len` entries after `offset`, or why it would pass
/// [`MAX_LAST_INDEX`] (checked: both values may come from disk or from a caller).
pub(crate) fn last_index(offset: LogIndex, len: usize) -> Result<LogIndex, String> {
    let last = u64::try_from(len).ok().and_then(|len| offset.0.checked_add(len));
    match last {
        Some(last) if last <= MAX_LAST_INDEX.0 => Ok(LogIndex(last)),
        _ => Err(format!(
            "{len} entries after index {offset} would end past the last usable index \
             {MAX_LAST_INDEX}"
        )),
    }
}

/// How many entries of `state` stay when the log is replaced from `first` by `added`
/// entries. Refuses entries that start at or below the offset or leave a gap, and a log that
/// would end past [`MAX_LAST_INDEX`] (before or after the replacement).
pub(crate) fn kept_before<C>(
    state: &PersistentState<C>,
    first: LogIndex,
    added: usize,
) -> Result<usize, String> {
    let last = last_index(state.log_offset, state.entries.len())?;
    if first <= state.log_offset {
        let offset = state.log_offset;
        return Err(format!("entries from {first} start at or below the log offset {offset}"));
    }
    // NB: `last <= MAX_LAST_INDEX`, so `last.next()` does not overflow.
    if first > last.next() {
        return Err(format!("entries from {first} leave a gap after the last index {last}"));
    }
    last_index(first.prev(), added)?; // `first > offset >= 0`: `prev` is `first - 1`
    Ok((first.0 - state.log_offset.0 - 1) as usize)
}

/// Refuses a snapshot whose index passes [`MAX_LAST_INDEX`] (its successor would overflow).
pub(crate) fn check_snapshot_index(snapshot: &Snapshot) -> io::Result<()> {
    if snapshot.meta.index > MAX_LAST_INDEX {
        let why = format!(
            "a snapshot through {} is past the last usable index {MAX_LAST_INDEX}",
            snapshot.meta.index
        );
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    Ok(())
}

/// Makes `snapshot` the latest in `state`: the log through its index goes (all of it if the log
/// conflicts with the snapshot), the offset and base configuration move to the snapshot's.
/// An older snapshot than the one kept changes nothing.
pub(crate) fn apply_snapshot<C>(state: &mut PersistentState<C>, snapshot: &Arc<Snapshot>) {
    let meta = &snapshot.meta;
    if meta.index <= state.log_offset {
        return;
    }
    let covered = (meta.index.0 - state.log_offset.0) as usize;
    let matches = state.entries.get(covered.wrapping_sub(1)).is_some_and(|e| e.term == meta.term);
    if matches {
        state.entries.drain(..covered);
    } else {
        state.entries.clear(); // the log conflicts with the snapshot: it all goes
    }
    state.log_offset = meta.index;
    state.offset_term = meta.term;
    state.base_config = (*meta.config).clone();
    state.snapshot = Some(Arc::clone(snapshot));
}
