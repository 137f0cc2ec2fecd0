//! [`SimStorage`]: a simulated node's stable storage, which can model the sync boundary
//! (`SimConfig::storage_faults`): writes since the last [`Storage::sync`] are only pending,
//! and a crash keeps a random prefix of them, the write at the cut torn (an append keeps a
//! prefix of its entries), or none at all. So a driver that reveals a write (sends, answers)
//! before syncing it loses it on a crash while the cluster believes it, and the checkers see
//! the consequences. With the mode off every write is durable at once, as [`MemStorage`].
//!
//! A failed sync may also lose the writes it covered for good ([`SyncFailure::loses_writes`]),
//! as Linux may after a failed `fsync` ("fsyncgate", PostgreSQL 2018): the dirty pages are
//! dropped and marked clean, the node still reads what it wrote, and a later sync succeeds
//! without them. The storage is a write-ahead log, so it then has a hole where they were and
//! no later write becomes durable either (recovery stops at the first record it cannot read),
//! until a crash brings the node back to what was durable ([`SimStorage::all_durable`] tells
//! the simulator whether anything is so lost). NB: a crash keeps a prefix of the writes, in
//! order, and so does a lost sync: a later write never lands without an earlier one (a term
//! lost under entries of that term would be a log holding a future term).
//!
//! A write may fail as armed ([`WriteFailure`]): an append (landing a prefix of its entries),
//! a hard-state write or a snapshot write (landing nothing), by a panic or an io error.
//!
//! Must not draw random numbers except at a crash with pending writes, so runs with the mode
//! off replay exactly as before it existed.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;

use crate::message::{Entry, Snapshot};
use crate::storage::{HardState, MemStorage, PersistentState, Storage};
use crate::types::LogIndex;

/// One write not yet synced.
enum Write<C> {
    HardState(HardState),
    Append(LogIndex, Vec<Entry<C>>),
    Snapshot(Arc<Snapshot>),
}

struct Inner<C> {
    /// What survives a crash, with the sync boundary modelled. Without it every write is
    /// durable at once, so `written` is what survives and this copy is not kept (it would be
    /// a second clone of every entry).
    durable: MemStorage<C>,
    /// What the node has written: `durable` plus `pending`.
    written: MemStorage<C>,
    pending: Vec<Write<C>>,
    /// Writes recorded so far, pending or not: how a background sync names what it covers.
    recorded: u64,
    model_sync: bool,
    /// Test-only bug: `sync` makes nothing durable (breaks SUB-8 once a crash comes).
    sync_is_noop: bool,
    /// An armed write failure ([`SimStorage::fail_write`]).
    armed: Option<WriteFailure>,
    /// An armed sync failure ([`SimStorage::fail_sync`]).
    armed_sync: Option<SyncFailure>,
    /// A failed sync lost writes for good since the last crash: `written` holds more than any
    /// sync can make durable, and no later write becomes durable (the hole in the log).
    lost: bool,
    /// What an armed failure struck, until the simulator takes it.
    struck: Option<Strike>,
}

/// Which kind of write an armed storage failure strikes
/// ([`Fault::FailStorage`](super::Fault::FailStorage)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteKind {
    /// `Storage::append`: log entries. A torn append may land a prefix of them.
    Append,
    /// `Storage::save_hard_state`: the term and vote. Nothing of a failed one lands.
    HardState,
    /// `Storage::save_snapshot`: a snapshot the node took (its own compaction) or installs
    /// from a leader. Nothing of a failed one lands: the old snapshot and log stay.
    Snapshot,
}

/// A failure armed on a node's storage ([`Fault::FailStorage`](super::Fault::FailStorage)):
/// the write of kind `write` after `skip` more of that kind fails; it panics, or returns an io
/// error. A failed append has written the first `keep` of its entries (a torn write: the log
/// is truncated where it started, as an append that rewrites does); a failed hard-state or
/// snapshot write writes nothing (`keep` is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WriteFailure {
    pub write: WriteKind,
    pub skip: u32,
    pub keep: usize,
    pub panics: bool,
}

/// What an armed failure struck in a node's step ([`SimStorage::take_struck`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strike {
    /// A write of this kind failed ([`WriteFailure`]).
    Write(WriteKind),
    /// A sync (inline or a background job) failed ([`SyncFailure`]).
    Sync,
}

/// A failure armed on a node's syncs ([`Fault::FailSync`](super::Fault::FailSync)): the
/// sync (or background sync job) after `skip` more makes nothing durable and panics, or
/// returns an io error; if it `loses_writes`, the writes it covered are gone for good (a later
/// sync succeeds without them). Without the sync boundary modelled every write is durable
/// already, so only the node's failure follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SyncFailure {
    pub skip: u32,
    pub panics: bool,
    pub loses_writes: bool,
}

/// A simulated node's storage; clones share it, so the node keeps it across crashes while
/// its driver writes through another clone.
pub(crate) struct SimStorage<C> {
    inner: Arc<Mutex<Inner<C>>>,
}

impl<C> Clone for SimStorage<C> {
    fn clone(&self) -> Self {
        SimStorage { inner: Arc::clone(&self.inner) }
    }
}

impl<C: Clone + Send + 'static> SimStorage<C> {
    /// Storage starting from `durable`; `model_sync` switches the sync boundary on.
    pub fn new(durable: MemStorage<C>, model_sync: bool) -> Self {
        let written = MemStorage::from_state(durable.load().expect("MemStorage::load never fails"));
        let inner = Inner {
            durable,
            written,
            pending: Vec::new(),
            recorded: 0,
            model_sync,
            sync_is_noop: false,
            armed: None,
            armed_sync: None,
            lost: false,
            struck: None,
        };
        SimStorage { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<C>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Test-only bug switch: `sync` does nothing.
    #[cfg(test)]
    pub fn set_sync_is_noop(&self, on: bool) {
        self.lock().sync_is_noop = on;
    }

    /// Arms `failure` (replacing a write failure armed before).
    pub fn fail_write(&self, failure: WriteFailure) {
        self.lock().armed = Some(failure);
    }

    /// Arms a sync failure (replacing one armed before).
    pub fn fail_sync(&self, failure: SyncFailure) {
        self.lock().armed_sync = Some(failure);
    }

    /// Disarms the failures armed and not yet struck.
    pub fn disarm(&self) {
        let mut inner = self.lock();
        inner.armed = None;
        inner.armed_sync = None;
    }

    /// What an armed failure struck since the last call, if one did: what the storage holds
    /// since is [`Storage::load`] (what the node wrote, with what of a failed append landed).
    pub fn take_struck(&self) -> Option<Strike> {
        self.lock().struck.take()
    }

    /// What a crash cannot lose: the durable state (with the mode off, everything written).
    pub fn durable_state(&self) -> PersistentState<C> {
        let inner = self.lock();
        let store = if inner.model_sync { &inner.durable } else { &inner.written };
        store.load().expect("MemStorage::load never fails")
    }

    /// Writes not yet synced (always 0 with the mode off).
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Whether a failed sync lost writes for good since the last crash (never with the mode
    /// off).
    pub fn lost_writes(&self) -> bool {
        self.lock().lost
    }

    /// Whether everything the node wrote is durable: nothing pending and nothing lost. NB:
    /// after a failed sync that lost its writes nothing is pending, yet they are not durable.
    pub fn all_durable(&self) -> bool {
        let inner = self.lock();
        inner.pending.is_empty() && !inner.lost
    }

    /// A crash: pending writes are lost, except (at random) a prefix of them, the one at the
    /// cut torn; so are the writes a failed sync lost. Returns how many whole writes survived
    /// and whether one was torn.
    pub fn crash(&self, rng: &mut impl Rng) -> (usize, bool) {
        let mut inner = self.lock();
        if std::mem::take(&mut inner.lost) {
            // NB: everything since the hole is lost; nothing to draw.
            inner.pending.clear();
            let state = inner.durable.load().expect("MemStorage::load never fails");
            inner.written = MemStorage::from_state(state);
            return (0, false);
        }
        if inner.pending.is_empty() {
            return (0, false);
        }
        let pending = std::mem::take(&mut inner.pending);
        let keep = if rng.random_bool(0.5) { 0 } else { rng.random_range(0..=pending.len()) };
        let mut torn = false;
        for (i, write) in pending.into_iter().enumerate() {
            match write {
                _ if i > keep => break,
                Write::Append(first, entries) if i == keep && entries.len() > 1 => {
                    let part = rng.random_range(1..entries.len());
                    let _ = inner.durable.append(first, &entries[..part]);
                    torn = true;
                }
                _ if i == keep => break, // lost whole
                write => apply(&mut inner.durable, write),
            }
        }
        let state = inner.durable.load().expect("MemStorage::load never fails");
        inner.written = MemStorage::from_state(state);
        (keep, torn)
    }
}

fn apply<C: Clone + Send + 'static>(store: &mut MemStorage<C>, write: Write<C>) {
    // NB: each write succeeded on `written` first, so it succeeds on the same prefix here.
    let _ = match write {
        Write::HardState(hs) => store.save_hard_state(hs),
        Write::Append(first, entries) => store.append_owned(first, entries),
        Write::Snapshot(snapshot) => store.save_snapshot(&snapshot),
    };
}

impl<C: Clone + Send + 'static> Storage<C> for SimStorage<C> {
    fn load(&self) -> io::Result<PersistentState<C>> {
        self.lock().written.load()
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()> {
        let mut inner = self.lock();
        if let Some(failure) = inner.strikes(WriteKind::HardState) {
            let what =
                format!("hard state {} {:?}, nothing kept", hard_state.term, hard_state.voted_for);
            return strike(inner, failure, what);
        }
        inner.written.save_hard_state(hard_state)?;
        inner.record(Write::HardState(hard_state));
        Ok(())
    }

    fn append(&mut self, first: LogIndex, entries: &[Entry<C>]) -> io::Result<()> {
        let mut inner = self.lock();
        if let Some(failure) = inner.strikes(WriteKind::Append) {
            let kept = &entries[..failure.keep.min(entries.len())];
            inner.written.append(first, kept)?;
            inner.recorded += 1;
            if inner.model_sync {
                inner.pending.push(Write::Append(first, kept.to_vec()));
            }
            let what = format!("append of {} at {first}, {} kept", entries.len(), kept.len());
            return strike(inner, failure, what);
        }
        inner.written.append(first, entries)?;
        inner.recorded += 1;
        if inner.model_sync {
            inner.pending.push(Write::Append(first, entries.to_vec()));
        }
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> io::Result<()> {
        let mut inner = self.lock();
        if let Some(failure) = inner.strikes(WriteKind::Snapshot) {
            let meta = &snapshot.meta;
            let what = format!("snapshot through {}@{}, nothing kept", meta.index, meta.term);
            return strike(inner, failure, what);
        }
        inner.written.save_snapshot(snapshot)?;
        inner.record(Write::Snapshot(Arc::clone(snapshot)));
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let upto = self.lock().recorded;
        sync_or_fail(self.lock(), upto)
    }

    /// The job makes durable the writes recorded so far, not those recorded after this call
    /// (the simulator runs it at a later virtual time).
    fn start_sync(&mut self) -> io::Result<Option<crate::storage::SyncJob>> {
        let inner = self.lock();
        if inner.pending.is_empty() {
            return Ok(None);
        }
        let upto = inner.recorded;
        let store = Arc::clone(&self.inner);
        Ok(Some(Box::new(move || {
            sync_or_fail(store.lock().unwrap_or_else(|p| p.into_inner()), upto)
        })))
    }
}

/// The armed write failure struck (what of the write lands is written already): noted for
/// the simulator, then a panic or an io error.
fn strike<C>(
    mut inner: MutexGuard<'_, Inner<C>>,
    failure: WriteFailure,
    what: String,
) -> io::Result<()> {
    inner.struck = Some(Strike::Write(failure.write));
    drop(inner); // NB: not poisoned by the panic
    if failure.panics {
        // NB: unwinds as a panic does, without the panic hook's report on stderr (a soak
        // meets thousands).
        std::panic::resume_unwind(Box::new(format!("injected storage panic: {what}")));
    }
    Err(io::Error::other(format!("injected storage error: {what}")))
}

/// Makes the writes recorded through number `upto` durable, unless the armed sync failure
/// strikes: then nothing is (and if it `loses_writes`, those writes never will be), and it
/// panics or returns an io error.
fn sync_or_fail<C: Clone + Send + 'static>(
    mut inner: MutexGuard<'_, Inner<C>>,
    upto: u64,
) -> io::Result<()> {
    let Some(failure) = inner.strikes_sync() else {
        inner.sync_through(upto);
        return Ok(());
    };
    inner.struck = Some(Strike::Sync);
    let mut what = format!("sync of {} pending writes", inner.pending.len());
    if failure.loses_writes && inner.model_sync {
        let lost = inner.lose_through(upto);
        what += &format!(", {lost} lost");
    }
    drop(inner); // NB: not poisoned by the panic
    if failure.panics {
        std::panic::resume_unwind(Box::new(format!("injected storage panic: {what}")));
    }
    Err(io::Error::other(format!("injected storage error: {what}")))
}

impl<C: Clone + Send + 'static> Inner<C> {
    /// Counts a sync against the armed sync failure: the failure, if this one fails.
    fn strikes_sync(&mut self) -> Option<SyncFailure> {
        let armed = self.armed_sync.as_mut()?;
        if armed.skip > 0 {
            armed.skip -= 1;
            return None;
        }
        self.armed_sync.take()
    }

    /// Counts a write of kind `write` against the armed failure: the failure, if this one
    /// fails (writes of another kind neither count nor fail).
    fn strikes(&mut self, write: WriteKind) -> Option<WriteFailure> {
        let armed = self.armed.as_mut().filter(|armed| armed.write == write)?;
        if armed.skip > 0 {
            armed.skip -= 1;
            return None;
        }
        self.armed.take()
    }

    /// Makes the writes recorded through number `upto` durable (a prefix of `pending`), unless
    /// a failed sync lost writes before them: then they are lost behind the hole.
    fn sync_through(&mut self, upto: u64) {
        if self.sync_is_noop {
            return;
        }
        if self.lost {
            self.lose_through(upto);
            return;
        }
        let first_pending = self.recorded - self.pending.len() as u64;
        let count = upto.saturating_sub(first_pending).min(self.pending.len() as u64) as usize;
        for write in self.pending.drain(..count).collect::<Vec<_>>() {
            apply(&mut self.durable, write);
        }
    }

    /// A failed sync drops the writes recorded through number `upto` (a prefix of
    /// `pending`) for good; returns how many.
    fn lose_through(&mut self, upto: u64) -> usize {
        let first_pending = self.recorded - self.pending.len() as u64;
        let count = upto.saturating_sub(first_pending).min(self.pending.len() as u64) as usize;
        self.pending.drain(..count);
        self.lost |= count > 0;
        count
    }

    fn record(&mut self, write: Write<C>) {
        self.recorded += 1;
        if self.model_sync {
            self.pending.push(write);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;
    use crate::message::{Configuration, Payload};
    use crate::node::SyncBugs;
    use crate::sim::{run::drive_kv, Schedule, SimConfig, SimFailure, Simulator};
    use crate::types::NodeId;
    use crate::types::Term;
    use crate::KvStateMachine;

    fn entry(term: u64) -> Entry<u32> {
        Entry { term: Term(term), payload: Payload::Noop }
    }

    #[test]
    fn a_crash_keeps_what_was_synced_and_at_most_a_prefix_of_the_rest() {
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..200 {
            let mut s = SimStorage::new(MemStorage::<u32>::new(Configuration::default()), true);
            s.append(LogIndex(1), &[entry(1), entry(1)]).expect("append");
            s.sync().expect("sync");
            s.save_hard_state(HardState { term: Term(2), voted_for: None }).expect("hs");
            s.append(LogIndex(3), &[entry(2), entry(2), entry(2)]).expect("append");
            assert_eq!(s.pending(), 2);
            s.crash(&mut rng);
            let state = s.load().expect("load");
            let n = state.entries.len();
            assert!((2..=5).contains(&n), "kept {n} entries");
            assert!(n == 2 || state.hard_state.term == Term(2), "entries without their term");
            assert_eq!(s.pending(), 0);
        }
    }

    #[test]
    fn a_background_sync_covers_the_writes_before_it_and_not_after() {
        let mut rng = SmallRng::seed_from_u64(2);
        let mut s = SimStorage::new(MemStorage::<u32>::new(Configuration::default()), true);
        s.append(LogIndex(1), &[entry(1)]).expect("append");
        s.save_hard_state(HardState { term: Term(1), voted_for: None }).expect("hs");
        let job = s.start_sync().expect("start").expect("two writes pending");
        s.append(LogIndex(2), &[entry(1)]).expect("append after the job began");
        job().expect("the job");
        assert_eq!(s.pending(), 1, "the later append is not covered");
        s.crash(&mut rng);
        let state = s.load().expect("load");
        assert!(!state.entries.is_empty(), "the covered append survives any crash");
        assert_eq!(state.hard_state.term, Term(1));
    }

    /// A failed sync that loses its writes (fsyncgate): they are gone although the node
    /// still reads them, a later sync succeeds without them, nothing written after them (a
    /// term, an append) becomes durable, and a crash brings the node back to what was durable
    /// before. One that does not lose them leaves them pending for the next sync.
    #[test]
    fn a_failed_sync_may_lose_its_writes_for_good_and_the_next_sync_succeeds_without_them() {
        let mut rng = SmallRng::seed_from_u64(3);
        for loses_writes in [true, false] {
            let mut s = SimStorage::new(MemStorage::<u32>::new(Configuration::default()), true);
            s.append(LogIndex(1), &[entry(1)]).expect("append");
            s.sync().expect("sync");
            s.save_hard_state(HardState { term: Term(2), voted_for: None }).expect("hs");
            s.append(LogIndex(2), &[entry(2), entry(2)]).expect("append");
            s.fail_sync(SyncFailure { skip: 0, panics: false, loses_writes });
            assert!(s.sync().is_err(), "the armed sync fails");
            assert_eq!(s.take_struck(), Some(Strike::Sync), "the sync struck");
            assert_eq!(s.load().expect("load").entries.len(), 3, "the node still reads them");
            assert!(!s.all_durable());
            s.save_hard_state(HardState { term: Term(3), voted_for: None }).expect("hs");
            s.append(LogIndex(4), &[entry(3)]).expect("append past them");
            s.sync().expect("a later sync succeeds");
            let durable = s.durable_state();
            let (n, term) = (durable.entries.len(), durable.hard_state.term);
            match loses_writes {
                true => assert_eq!((n, term, s.all_durable()), (1, Term(0), false)),
                false => assert_eq!((n, term, s.all_durable()), (4, Term(3), true)),
            }
            s.crash(&mut rng);
            let state = s.load().expect("load");
            assert_eq!(state.entries.len(), n, "restarts from what is durable");
            assert!(s.all_durable(), "after the crash nothing is lost any more");
        }
    }

    /// Runs the every-fault nemesis with the sync boundary modelled, optionally with the bug;
    /// odd seeds hold each node's sync for a window, so a leader's AppendEntries leave (and
    /// are answered) before its own write is durable (thesis §10.2.1).
    fn run(seed: u64, sync_is_noop: bool) -> Result<crate::sim::RunReport, crate::sim::SimFailure> {
        run_with(seed, sync_is_noop, crate::core::Bugs::default())
    }

    fn run_with(
        seed: u64,
        sync_is_noop: bool,
        bugs: crate::core::Bugs,
    ) -> Result<crate::sim::RunReport, crate::sim::SimFailure> {
        let (mut config, schedule): (SimConfig, Schedule) = crate::sim::bites::nemesis(seed);
        config.storage_faults = true;
        if seed % 2 == 1 {
            config.sync_window = Some(std::time::Duration::from_millis(3));
        }
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid config");
        sim.set_bugs(bugs);
        for node in sim.nodes.values() {
            node.storage.set_sync_is_noop(sync_is_noop);
        }
        drive_kv(sim, &schedule)
    }

    #[test]
    fn unsynced_writes_are_lost_in_correct_runs_and_nothing_breaks() {
        // The checkers hold while crashes really lose writes: count the runs where they did.
        let mut lossy = 0;
        for seed in 0..40u64 {
            let report = run(seed, false).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
            lossy += usize::from(report.stats.unsynced_losses > 0);
        }
        assert!(lossy >= 5, "only {lossy} of 40 runs lost an unsynced write in a crash");
    }

    /// 3 nodes, lossy storage, fast links: the base of the staged sync scenarios below.
    fn staged_three(seed: u64) -> SimConfig {
        let mut config = SimConfig::new(seed, 3);
        config.storage_faults = true;
        config.network.min_delay = std::time::Duration::from_micros(200);
        config.network.max_delay = std::time::Duration::from_millis(1);
        config
    }

    /// Thesis §10.2.1's hazard, staged on 3 nodes: the leader's AppendEntries reach only
    /// follower A (its link to B is cut), A answers within the leader's sync window, and the
    /// leader crashes before its own sync, losing the entries. A is cut off; the leader
    /// restarts and, with B, elects a leader that lacks them. Correct: nothing was committed
    /// (the leader's own vote needs its sync). With `leader_counts_unsynced` the entries were
    /// committed on A's word alone, and A may have applied them.
    fn unsynced_leader_scenario(seed: u64, bugs: crate::core::Bugs) -> Result<(), SimFailure> {
        let ms = std::time::Duration::from_millis;
        let mut config = staged_three(seed);
        config.sync_window = Some(ms(4));
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid config");
        sim.set_bugs(bugs);
        sim.start_clients(crate::sim::kv::KvWorkload { keys: 4 });
        sim.run_for(ms(600))?;
        let Some(leader) = sim.leader() else { return Ok(()) };
        let others: Vec<NodeId> = sim.node_ids().into_iter().filter(|&n| n != leader).collect();
        let (a, b) = (others[0], others[1]);
        let fault = |e: crate::error::FaultError| panic!("fault: {e}");
        sim.cut_link(leader, b).unwrap_or_else(fault);
        sim.crash_before_sync(leader).unwrap_or_else(fault);
        sim.run_for(ms(30))?;
        sim.isolate(a).unwrap_or_else(fault);
        sim.restart(leader).unwrap_or_else(fault);
        sim.run_for(ms(1500))?;
        sim.heal();
        sim.settle()?;
        Ok(())
    }

    #[test]
    fn a_leader_counting_its_unsynced_log_is_caught_and_the_correct_one_is_not() {
        for seed in 0..20 {
            let correct = unsynced_leader_scenario(seed, crate::core::Bugs::default());
            correct.unwrap_or_else(|f| panic!("seed {seed}, no bug: {f}"));
        }
        let bugs = crate::core::Bugs { leader_counts_unsynced: true, ..Default::default() };
        let found = (0..50u64).find_map(|seed| unsynced_leader_scenario(seed, bugs).err());
        let failure = found.expect("leader_counts_unsynced: no violation in 50 seeds");
        println!("leader_counts_unsynced caught: {failure}");
        let safety = matches!(failure.kind, crate::sim::run::FailureKind::Safety(_));
        assert!(safety, "caught, but not by a safety check: {failure}");
    }

    /// A leader deferring its own sync (`Config::defer_leader_sync`) under the load of 16
    /// clients, each sync taking up to 1 ms in the background, so one follower often answers
    /// before the other. Three times: all three nodes crash at once, each losing what it had
    /// not synced; they restart and one follower (alternating) is cut off while the other two
    /// elect a leader. Correct: a committed entry was synced by both followers, or by the
    /// leader and one of them, so the two that elect hold it. With the driver bug that tells the core its deferred
    /// appends are synced, the leader committed on the first follower's word, and when that
    /// follower is the one cut off, the new leader lacks the entry.
    fn deferring_leader_crashes_with_its_followers(
        seed: u64,
        claims_synced: bool,
    ) -> Result<(), SimFailure> {
        let ms = std::time::Duration::from_millis;
        let mut config = staged_three(seed);
        config.raft.defer_leader_sync = true;
        config.clients = 16;
        config.background_sync = Some(ms(1));
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid config");
        sim.set_sync_bugs(SyncBugs {
            deferral_claims_synced: claims_synced,
            ..SyncBugs::default()
        });
        sim.start_clients(crate::sim::kv::KvWorkload { keys: 4 });
        let fault = |e: crate::error::FaultError| panic!("fault: {e}");
        for round in 0..3 {
            sim.run_for(ms(300))?;
            let Some(leader) = sim.leader() else { continue };
            let followers: Vec<NodeId> =
                sim.node_ids().into_iter().filter(|&n| n != leader).collect();
            for node in sim.node_ids() {
                sim.crash(node).unwrap_or_else(fault);
                sim.restart(node).unwrap_or_else(fault);
            }
            sim.isolate(followers[((seed + round) % 2) as usize]).unwrap_or_else(fault);
            sim.run_for(ms(400))?;
            sim.heal();
        }
        sim.settle()?;
        Ok(())
    }

    #[test]
    fn a_deferring_leader_that_claims_its_log_synced_is_caught_and_the_correct_one_is_not() {
        for seed in 0..20 {
            deferring_leader_crashes_with_its_followers(seed, false)
                .unwrap_or_else(|f| panic!("seed {seed}, deferring, no bug: {f}"));
        }
        let caught = |seed| deferring_leader_crashes_with_its_followers(seed, true).err();
        let failure = (0..20u64).find_map(caught).expect("claims synced: no violation in 20 seeds");
        println!("deferral_claims_synced caught: {failure}");
        let safety = matches!(failure.kind, crate::sim::run::FailureKind::Safety(_));
        assert!(safety, "caught, but not by a safety check: {failure}");
    }

    /// Writes completed in 600 ms after one follower of three crashes for good, with the
    /// leader deferring its own sync: it must notice that the survivor alone is no quorum and
    /// sync again, or nothing more commits.
    fn writes_with_a_follower_down(
        seed: u64,
        bugs: crate::core::Bugs,
    ) -> Result<usize, SimFailure> {
        let ms = std::time::Duration::from_millis;
        let mut config = staged_three(seed);
        config.raft.defer_leader_sync = true;
        config.background_sync = Some(ms(1));
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid config");
        sim.set_bugs(bugs);
        sim.start_clients(crate::sim::kv::KvWorkload { keys: 4 });
        sim.run_for(ms(400))?;
        let leader = sim.leader().expect("a leader within 400 ms");
        let follower = sim.node_ids().into_iter().find(|&n| n != leader).expect("3 nodes");
        sim.crash(follower).unwrap_or_else(|e| panic!("fault: {e}"));
        let after = sim.now().as_micros() as u64;
        sim.run_for(ms(600))?;
        let done =
            |op: &&crate::sim::HistoryOp<_, _>| op.invoked_at > after && op.completed.is_some();
        Ok(sim.history().iter().filter(done).count())
    }

    #[test]
    fn a_deferring_leader_syncs_again_when_a_follower_fails_and_one_that_never_does_stalls() {
        for seed in 0..5 {
            let done = writes_with_a_follower_down(seed, crate::core::Bugs::default())
                .unwrap_or_else(|f| panic!("seed {seed}: {f}"));
            assert!(done >= 20, "seed {seed}: only {done} writes completed with a follower down");
        }
        let bugs = crate::core::Bugs { leader_never_syncs: true, ..Default::default() };
        let done = writes_with_a_follower_down(0, bugs).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(done, 0, "leader_never_syncs: {done} writes completed with a follower down");
    }

    #[test]
    fn the_checkers_hold_with_the_sync_boundary_modelled() {
        // FERRAFT_STORAGE_SEEDS=N runs more (e.g. 2000 for the full sweep).
        let seeds = std::env::var("FERRAFT_STORAGE_SEEDS").ok().and_then(|s| s.parse().ok());
        for seed in 0..seeds.unwrap_or(100u64) {
            if let Err(failure) = run(seed, false) {
                panic!("seed {seed} with storage faults: {failure}");
            }
        }
    }

    /// The every-fault nemesis with the sync boundary modelled and syncs in the background,
    /// as the thread runtime runs them: a sync completes up to 3 ms after it starts while the
    /// node goes on stepping.
    fn run_background(seed: u64, no_sync_holds: bool) -> Result<crate::sim::RunReport, SimFailure> {
        let (mut config, schedule): (SimConfig, Schedule) = crate::sim::bites::nemesis(seed);
        config.storage_faults = true;
        config.background_sync = Some(std::time::Duration::from_millis(3));
        if seed % 2 == 1 {
            // NB: with batches that span virtual time too: a batch's end starts a sync.
            config.sync_window = Some(std::time::Duration::from_millis(2));
        }
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid config");
        sim.set_sync_bugs(SyncBugs { no_sync_holds, ..SyncBugs::default() });
        drive_kv(sim, &schedule)
    }

    #[test]
    fn the_checkers_hold_with_background_syncs() {
        // FERRAFT_STORAGE_SEEDS=N runs more.
        let seeds = std::env::var("FERRAFT_STORAGE_SEEDS").ok().and_then(|s| s.parse().ok());
        let mut lossy = 0;
        for seed in 0..seeds.unwrap_or(60u64) {
            let report = run_background(seed, false)
                .unwrap_or_else(|f| panic!("seed {seed} with background syncs: {f}"));
            lossy += usize::from(report.stats.unsynced_losses > 0);
        }
        assert!(lossy >= 5, "only {lossy} runs lost an unsynced write in a crash");
    }

    /// Both followers crash while their background syncs are under way (each sync takes up
    /// to 20 ms), and the leader is cut off; they restart and elect a leader between them.
    /// Correct: whatever was committed had been synced by one of them (or by the leader and
    /// one of them), so the new leader has it. With `no_sync_holds` they acknowledged entries
    /// before syncing them, the leader committed and answered, and the crash lost them.
    fn followers_crash_mid_sync(seed: u64, no_sync_holds: bool) -> Result<(), SimFailure> {
        let ms = std::time::Duration::from_millis;
        let mut config = staged_three(seed);
        config.background_sync = Some(ms(20));
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid config");
        sim.set_sync_bugs(SyncBugs { no_sync_holds, ..SyncBugs::default() });
        sim.start_clients(crate::sim::kv::KvWorkload { keys: 4 });
        sim.run_for(ms(600))?;
        let Some(leader) = sim.leader() else { return Ok(()) };
        let others: Vec<NodeId> = sim.node_ids().into_iter().filter(|&n| n != leader).collect();
        let fault = |e: crate::error::FaultError| panic!("fault: {e}");
        sim.isolate(leader).unwrap_or_else(fault);
        for &follower in &others {
            sim.crash(follower).unwrap_or_else(fault);
            sim.restart(follower).unwrap_or_else(fault);
        }
        sim.run_for(ms(1500))?;
        sim.heal();
        sim.settle()?;
        Ok(())
    }

    #[test]
    fn answering_before_the_background_sync_is_caught_and_the_correct_driver_is_not() {
        for seed in 0..10 {
            followers_crash_mid_sync(seed, false).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        }
        let found = (0..40).find_map(|seed| followers_crash_mid_sync(seed, true).err());
        let failure = found.expect("no_sync_holds: no violation in 40 seeds");
        println!("no_sync_holds caught: {failure}");
        let safety = matches!(failure.kind, crate::sim::run::FailureKind::Safety(_));
        assert!(safety, "caught, but not by a safety check: {failure}");
    }

    /// Runs the simulation in steps of `step` until `done` holds, for at most `limit`.
    fn run_until(
        sim: &mut Simulator<KvStateMachine>,
        step: std::time::Duration,
        limit: std::time::Duration,
        done: impl Fn(&Simulator<KvStateMachine>) -> bool,
    ) -> Result<bool, SimFailure> {
        let deadline = sim.now() + limit;
        while !done(sim) {
            if sim.now() >= deadline {
                return Ok(false);
            }
            sim.run_for(step)?;
        }
        Ok(true)
    }

    /// The shape of nemesis seed 227919, staged: the cluster shrinks to its leader L alone,
    /// then adds a node N whose replies never reach L, so N stays a learner that hears L's
    /// AppendEntries. Five times: L crashes and restarts (syncs take up to 20 ms in the
    /// background), wins the next term within one step, and crashes again a few ms into its
    /// leadership, losing what it had not synced. Correct: L's AppendEntries wait for its term
    /// and vote to be durable, so a leadership the crash forgets was never revealed. With
    /// `reveal_before_term_durable` N already holds entries of that term when L, restarted in
    /// the term before, leads it a second time with a different log.
    fn a_lone_voter_crashes_as_it_leads(seed: u64, reveal_early: bool) -> Result<(), SimFailure> {
        use rand::Rng;
        let ms = std::time::Duration::from_millis;
        let mut config = staged_three(seed);
        config.background_sync = Some(ms(20));
        config.clients = 4;
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid config");
        sim.set_sync_bugs(SyncBugs {
            reveal_before_term_durable: reveal_early,
            ..SyncBugs::default()
        });
        sim.start_clients(crate::sim::kv::KvWorkload { keys: 4 });
        sim.run_for(ms(600))?;
        let Some(leader) = sim.leader() else { return Ok(()) };
        let fault = |e: crate::error::FaultError| panic!("fault: {e}");
        for other in sim.node_ids().into_iter().filter(|&n| n != leader) {
            sim.remove_node(other).unwrap_or_else(fault);
        }
        if !run_until(&mut sim, ms(10), ms(3000), |sim| !sim.changes_pending())? {
            return Ok(());
        }
        let learner = sim.add_node();
        sim.cut_link(learner, leader).unwrap_or_else(fault);
        let mut rng = SmallRng::seed_from_u64(seed);
        for _ in 0..5 {
            sim.run_for(ms(50))?;
            sim.crash(leader).unwrap_or_else(fault);
            sim.restart(leader).unwrap_or_else(fault);
            let leads = |sim: &Simulator<KvStateMachine>| sim.leader() == Some(leader);
            if !run_until(&mut sim, ms(1), ms(2000), leads)? {
                break;
            }
            sim.run_for(ms(rng.random_range(1..15)))?;
            sim.crash(leader).unwrap_or_else(fault);
            sim.restart(leader).unwrap_or_else(fault);
        }
        sim.heal();
        sim.settle()?;
        Ok(())
    }

    #[test]
    fn a_leader_revealing_its_term_before_syncing_it_is_caught_and_the_correct_driver_is_not() {
        for seed in 0..10 {
            a_lone_voter_crashes_as_it_leads(seed, false)
                .unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        }
        let found = (0..40).find_map(|seed| a_lone_voter_crashes_as_it_leads(seed, true).err());
        let failure = found.expect("reveal_before_term_durable: no violation in 40 seeds");
        println!("reveal_before_term_durable caught: {failure}");
        let safety = matches!(failure.kind, crate::sim::run::FailureKind::Safety(_));
        assert!(safety, "caught, but not by a safety check: {failure}");
    }

    #[test]
    fn a_sync_that_does_nothing_is_caught_within_a_few_seeds() {
        // NB: such a run may also stall first: a follower that lost entries it acknowledged
        // ends below its matchIndex, and the leader reads its rejections as stale (seed 1,
        // since helper branch catchup changed the traces). Only a safety catch counts.
        let safety_failure = |seed| run(seed, true).err().filter(|f| f.kind.is_safety());
        let found = (0..20).find_map(safety_failure);
        let failure = found.expect("sync_is_noop: no violation in 20 seeds");
        println!("sync_is_noop caught: {failure}");
        let safety = matches!(failure.kind, crate::sim::run::FailureKind::Safety(_));
        assert!(safety, "caught, but not by a safety check: {failure}");
    }
}
