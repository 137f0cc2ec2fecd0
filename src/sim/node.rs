//! One simulated node: its durable storage (a [`MemStorage`] behind a [`SimStorage`], which
//! may model the sync boundary) and, while it runs, its node [`Driver`] (the
//! same type the thread runtime runs), stepped in virtual time. Crash and restart live here,
//! and a node's failure: a step is run as the runtime runs it (`node::step_caught`, one
//! `catch_unwind` per step), and a failure the schedule planted (a storage failure, a
//! transport's panic, a poisoned command's: `super::planted`) fails the node through the
//! runtime's own path (`Driver::fail`) until the operator's kill and restart; any other
//! panic or driver error ends the run.
//!
//! Must not decide anything random except tick phases, message fates and the operator's
//! delay after a failure, all drawn from the simulator's one RNG.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use rand::Rng;

use super::checker::{Rule, Violation};
use super::compaction::{is_partial_chunk, sends_partial_chunk};
use super::planted::Planted;
use super::reads::caller::{SimClock, SimLease};
use super::run::FailureKind;
use super::storage::{SimStorage, Strike, WriteFailure};
use super::trace::{InputSummary, MsgSummary, NodeSummary, TraceEvent, TraceLine};
use super::{network::Fate, Event, FaultError, Simulator};
use crate::core::{Action, Core};
use crate::error::Error;
use crate::message::Message;
use crate::node::{step_caught, ApplyOn, Driver, Execute, Request};
use crate::state_machine::StateMachine;
use crate::storage::MemStorage;
use crate::transport::Transport;
use crate::types::NodeId;

/// The simulator's transport: a step's messages wait here until the simulator gives each its
/// fate on the virtual network. Armed ([`Fault::FailTransport`](super::Fault::FailTransport)),
/// its `send` after that many more panics, as a user's transport may.
pub(crate) struct Outbox<C>(Vec<Message<C>>, Option<u32>);

impl<C: Send + 'static> Transport<C> for Outbox<C> {
    fn send(&mut self, msg: Message<C>) {
        if let Some(skip) = self.1.as_mut() {
            if *skip == 0 {
                self.1 = None;
                let message = format!("injected transport panic: send to {}", msg.to);
                super::planted::strike(Planted::Transport, message);
            }
            *skip -= 1;
        }
        self.0.push(msg);
    }
}

/// A running node's driver (applying inline or through its backlog, `SimConfig::deferred_apply`);
/// a lease it publishes is on the node's own clock.
pub(crate) type SimDriver<S> = Driver<
    S,
    SimStorage<<S as StateMachine>::Command>,
    Outbox<<S as StateMachine>::Command>,
    SimClock,
>;

/// A node's volatile half: lost on a crash.
pub(crate) struct Live<S: StateMachine> {
    pub driver: SimDriver<S>,
    /// With lease reads on: the lease this incarnation publishes for caller-thread reads.
    pub lease: Option<SimLease>,
    /// The node's clock as its driver reads it, set before every step.
    pub clock: SimClock,
    /// Set once the node failed ([`Fault::FailStorage`](super::Fault::FailStorage)): from
    /// then on it takes no input and answers every request with this error, until the
    /// operator's kill and restart ([`Simulator::recover`]).
    pub failed: Option<Error>,
    /// This incarnation's request-queue budget (`sim/request_queue.rs`), if one is in force.
    pub requests: Option<crate::runtime::QueueBytes>,
}

impl<S: StateMachine> Live<S> {
    pub fn core(&self) -> &Core<S::Command> {
        self.driver.core()
    }
}

/// A node: durable storage, plus the volatile half while it runs.
pub(crate) struct SimNode<S: StateMachine> {
    pub storage: SimStorage<S::Command>,
    pub live: Option<Live<S>>,
    /// Bumped on every crash, so ticks and replies meant for an old incarnation are ignored.
    pub incarnation: u64,
    /// Removed from the cluster by a membership change: no longer a target of ordinary faults
    /// or clients, but it keeps running and may still crash and restart.
    pub removed: bool,
    /// This node's tick period in virtual microseconds (the configured tick, scaled by its
    /// clock drift).
    pub tick_us: u64,
    /// Frozen (a long GC pause, a VM migration) until this virtual time: its clock does not
    /// tick, and what reaches it waits in `deferred`.
    pub paused_until: u64,
    /// Inputs that arrived during a pause, or while the node stalled on its apply backlog
    /// (`Config::max_apply_backlog`), handled in order when it takes input again. Its messages
    /// are the node's inbox not being read: bounded in bytes by `inbox` (`sim/inbox.rs`).
    pub deferred: std::collections::VecDeque<(Delivery<S>, InputSummary)>,
    /// The bytes of the messages in `deferred`, against `Config::max_inbox_bytes`.
    pub inbox: crate::transport::ByteBudget,
    /// A batch is open in the driver, to be synced at the `Event::Flush` on its way.
    pub batch_open: bool,
    /// The driver's background sync under way, to run at its `Event::Synced`.
    pub sync_job: Option<crate::storage::SyncJob>,
    /// An `Event::Drain` of this incarnation's backlog is on its way.
    pub drain_scheduled: bool,
    /// Since when the node has been stalled on its apply backlog (`Config::max_apply_backlog`),
    /// taking no input and missing its ticks, until a drain brings the backlog down.
    pub stalled_since: Option<u64>,
    /// Virtual time of this incarnation's next clock tick not yet fed to its core: ticks come
    /// every `tick_us` from a random phase, but the simulator steps only those that can act
    /// (`Core::ticks_until_due`) and feeds the idle ones just before the core's next input.
    pub next_tick: u64,
}

/// What reaches a node's driver in one step.
pub(crate) enum Delivery<S: StateMachine> {
    /// This many clock ticks at once (`Input::Ticks`): idle ones, then at most one that acts,
    /// struck at this virtual time.
    Ticks(u64, u64),
    /// A peer message, with its size as its link's byte budget counted it.
    Message(Message<S::Command>, usize),
    Request(Request<S>),
    /// Several client requests at once: one `Driver::handle` call batches them.
    Requests(Vec<Request<S>>),
    /// The end of the node's sync window (`SimConfig::sync_window`).
    Flush,
    /// A background sync completes (`SimConfig::background_sync`): its job runs now.
    Synced(crate::storage::SyncJob),
    /// A snapshot the backlog took (`SimConfig::deferred_apply`) reaches the core.
    Taken(std::sync::Arc<crate::message::Snapshot>),
}

impl<S: StateMachine> Simulator<S> {
    /// Creates node `id` over `storage` and starts it.
    pub(crate) fn add_storage(&mut self, id: NodeId, storage: MemStorage<S::Command>) {
        let tick_us = self.drifted_tick_us();
        let node = SimNode {
            storage: SimStorage::new(storage, self.config.storage_faults),
            live: None,
            incarnation: 0,
            removed: false,
            tick_us,
            paused_until: 0,
            deferred: Default::default(),
            inbox: self.network.new_budget(),
            batch_open: false,
            sync_job: None,
            drain_scheduled: false,
            stalled_since: None,
            next_tick: 0,
        };
        self.nodes.insert(id, node);
        self.start_node(id);
    }

    /// Crashes a running node: its core and state machine are dropped, its storage kept.
    /// Crashing a node that is down does nothing.
    ///
    /// # Errors
    ///
    /// [`FaultError::UnknownNode`] if the simulation never had `id`.
    pub fn crash(&mut self, id: NodeId) -> Result<(), FaultError> {
        let node = self.nodes.get_mut(&id).ok_or(FaultError::UnknownNode(id))?;
        let Some(live) = node.live.take() else { return Ok(()) };
        self.stats.reads_by_lease += live.driver.metrics().reads_lease; // (the driver goes)
        drop(live);
        if node.storage.lost_writes() {
            node.storage.crash(&mut self.rng); // NB: draws nothing
            self.note(format!("crash {id} loses what a failed sync lost and all written since"));
        } else if node.storage.pending() > 0 {
            let (kept, torn) = node.storage.crash(&mut self.rng);
            self.stats.unsynced_losses += 1;
            self.note(format!("crash {id} loses unsynced writes: kept {kept}, torn {torn}"));
        }
        let node = self.nodes.get_mut(&id).expect("looked up above");
        node.incarnation += 1;
        node.paused_until = 0; // a crash ends a pause; what waited is lost with the node
        node.deferred.clear();
        node.batch_open = false; // held actions and unsynced writes go with the driver
        node.sync_job = None;
        node.drain_scheduled = false; // the backlog, its queued applies and answers are lost
        node.stalled_since = None;
        self.forwards().running.remove(&id);
        self.crash_armed.remove(&id);
        self.crash_before_sync.remove(&id);
        self.stats.crashes += 1;
        self.empty_inbox(id);
        self.checker.node_crashed(id);
        if self.config.client_retries {
            // The node's receipts were answered `NodeDown` as its driver dropped: the clients
            // learn it, and retry what was never appended.
            self.collect_answers(id);
        } else {
            self.clients.forget_node(id);
        }
        self.forget_admin_node(id);
        self.note(format!("crash {id}"));
        Ok(())
    }

    /// Restarts a crashed node from its storage, with a fresh state machine from the factory
    /// (the core re-applies committed entries as it learns the commit index). Restarting a
    /// running node does nothing; a removed node restarts too (and must not disrupt). A safety
    /// violation found on restart (its log differs from what it persisted) ends the run; the
    /// next `run_for` reports it.
    ///
    /// # Errors
    ///
    /// [`FaultError::UnknownNode`] if the simulation never had `id`.
    pub fn restart(&mut self, id: NodeId) -> Result<(), FaultError> {
        let node = self.nodes.get(&id).ok_or(FaultError::UnknownNode(id))?;
        if node.live.is_none() {
            self.note(format!("restart {id}"));
            self.start_node(id);
        }
        Ok(())
    }

    /// Boots `id` from its storage and schedules its first tick at a random phase.
    fn start_node(&mut self, id: NodeId) {
        let node = self.nodes.get(&id).expect("callers check the node exists");
        let mut raft = self.config.raft.clone();
        // NB: a restart in the same term would otherwise replay the same election timeouts.
        raft.seed ^= node.incarnation.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let storage = node.storage.clone();
        let sm = (self.factory)(id);
        let apply_on = match self.config.deferred_apply {
            Some(_) => ApplyOn::Deferred,
            None => ApplyOn::Inline,
        };
        let driver = match Driver::new(id, &raft, sm, storage, Outbox(Vec::new(), None), apply_on) {
            Ok(driver) => driver,
            // NB: `SimStorage::load` never fails: a storage error is the driver refusing what
            // it loaded (`check_persistent_state`), which only a node that persisted out of
            // order (a bug switch) leaves. The node stays down.
            Err(Error::Storage(detail)) => {
                let rule = Rule::Durability;
                self.fail(FailureKind::Safety(Violation { rule, node: id, detail }));
                return;
            }
            Err(e) => panic!("{id} could not start from its storage: {e}"),
        };
        let requests = self.new_request_budget();
        let mut live =
            Live { driver, lease: None, clock: SimClock::default(), failed: None, requests };
        if let Some(bytes) = &live.requests {
            live.driver.set_request_budget(std::sync::Arc::clone(&bytes.budget));
        }
        if self.config.background_sync.is_some() {
            live.driver.sync_in_background();
        }
        if self.config.forward_requests {
            let forwarded = std::sync::Arc::clone(&self.forwarded);
            live.driver.set_forwarder(Box::new(move |to, request| {
                let mut forwarded = forwarded.lock().unwrap_or_else(|p| p.into_inner());
                if !forwarded.running.contains(&to) {
                    forwarded.refused += 1;
                    return Err(request); // the driver answers `LeaderUnreachable`
                }
                forwarded.queued.push((to, request));
                Ok(())
            }));
        }
        self.forwards().running.insert(id);
        if let Some(backlog) = live.driver.backlog() {
            backlog.never_slow(); // NB: timing real `apply` calls would make runs unrepeatable
            #[cfg(test)]
            backlog.set_snapshot_behind_later_applies(self.snapshot_behind_later_applies);
            #[cfg(test)]
            backlog.set_ignore_limit(self.ignore_apply_limit);
        }
        if raft.lease_reads {
            let view = SimLease::default();
            let clock = live.clock.clone();
            live.driver.set_lease_view(std::sync::Arc::clone(&view), &raft, clock);
            #[cfg(test)]
            live.driver.set_lease_bugs(self.lease_bugs);
            live.lease = Some(view);
        }
        // NB: the core's full invariant checks run on every simulated step, in every profile.
        live.driver.core_mut().set_check_invariants(true);
        #[cfg(test)]
        {
            live.driver.core_mut().bugs = self.bugs;
            live.driver.bugs = self.sync_bugs;
            live.driver.lost_forward_claims_unreachable = self.lost_forward_claims_unreachable;
            live.driver.forward_keeps_count = self.forward_keeps_count;
        }
        if let Err(v) = self.checker.node_started(live.core()) {
            self.fail(FailureKind::Safety(v));
        }
        let phase = self.rng.random_range(0..self.tick_us(id));
        let node = self.nodes.get_mut(&id).expect("looked up above");
        node.live = Some(live);
        node.next_tick = self.now + phase;
        self.schedule_tick(id);
    }

    /// Schedules `id`'s next tick that can act: `Core::ticks_until_due` ticks of its clock on
    /// (the earlier ones are idle). Called after every step, as any input may move the timers.
    /// A paused node gets its tick when it resumes.
    fn schedule_tick(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get(&id) else { return };
        let Some(live) = node.live.as_ref() else { return };
        if node.paused_until > self.now || live.failed.is_some() {
            return;
        }
        let due = live.core().ticks_until_due();
        let at = node.next_tick.saturating_add((due - 1).saturating_mul(node.tick_us));
        let incarnation = node.incarnation;
        if self.pending_tick(id) == Some((at, incarnation)) {
            return; // already on the clock table: keep its place among equal times
        }
        self.schedule(at.max(self.now) - self.now, Event::Tick { node: id, incarnation });
    }

    /// Feeds `id`'s core the idle ticks its clock struck before now, ahead of another input.
    /// The tick scheduled at the due time is never among them: it is at or after now.
    fn catch_up(&mut self, id: NodeId) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else { return };
        if node.paused_until > now || node.stalled() || node.failed().is_some() {
            return;
        }
        node.skip_paused_ticks();
        let owed = node.ticks_before(now);
        if owed == 0 {
            return; // NB: the common case (the clock struck nothing since the last step)
        }
        let Some(live) = node.live.as_mut() else { return };
        let idle = owed.min(live.core().ticks_until_due() - 1);
        if idle > 0 {
            let mut actions = Vec::new();
            live.driver.core_mut().step(crate::core::Input::Ticks(idle), &mut actions);
            assert!(actions.is_empty(), "{id}: idle ticks acted: {actions:?}");
            let last = node.next_tick + (idle - 1) * node.tick_us;
            node.next_tick += idle * node.tick_us;
            // A lease may start at the core's current tick: its instant must be known.
            let at = self.local_time_at(id, last);
            if let Some(live) = self.nodes.get_mut(&id).and_then(|n| n.live.as_mut()) {
                live.driver.ticked_at(at);
            }
        }
    }

    fn tick_us(&self, id: NodeId) -> u64 {
        self.nodes[&id].tick_us
    }

    /// A new node's tick period: the configured tick, scaled within the drift bound.
    fn drifted_tick_us(&mut self) -> u64 {
        let base = super::micros(self.config.raft.tick).max(1) as f64;
        let Some(drift) = self.config.clock_drift else { return base as u64 };
        let scale = 1.0 + self.rng.random_range(-drift..=drift);
        ((base * scale.max(0.05)) as u64).max(1)
    }

    pub(crate) fn on_tick(&mut self, id: NodeId, incarnation: u64) -> Result<(), FailureKind> {
        let Some(node) = self.nodes.get(&id) else { return Ok(()) };
        if node.live.is_none() || node.incarnation != incarnation {
            return Ok(()); // the node crashed since: this clock stopped
        }
        if node.paused_until > self.now || node.stalled() {
            // A frozen process misses its ticks; resuming schedules the next. So does a node
            // stalled on its apply backlog: the runtime's ticker drops the ticks its loop
            // does not take.
            return Ok(());
        }
        let node = self.nodes.get_mut(&id).expect("looked up above");
        node.skip_paused_ticks();
        let owed = node.ticks_before(self.now + 1);
        let due = node.live.as_ref().expect("checked above").core().ticks_until_due();
        let n = owed.min(due);
        if n == 0 {
            self.schedule_tick(id);
            return Ok(());
        }
        let last = node.next_tick + (n - 1) * node.tick_us;
        node.next_tick += n * node.tick_us;
        self.step(id, Delivery::Ticks(n, last), InputSummary::Tick)
    }

    /// The end of a node's sync window: one sync for the batch, then what waited for it. A
    /// crash armed for the node strikes just before the sync, losing the batch's writes
    /// (its AppendEntries may already be out).
    pub(crate) fn on_flush(&mut self, id: NodeId, incarnation: u64) -> Result<(), FailureKind> {
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        if node.live.is_none() || node.incarnation != incarnation || !node.batch_open {
            return Ok(());
        }
        node.batch_open = false;
        if self.crash_before_sync.contains(&id) && node.storage.pending() > 0 {
            self.note(format!("crash {id} before its batch's sync"));
            self.stats.mid_step_crashes += 1;
            self.crash(id).expect("the node exists");
            return Ok(());
        }
        self.step(id, Delivery::Flush, InputSummary::Flush)
    }

    /// A background sync of `id` completes (if it is still this incarnation's).
    pub(crate) fn on_synced(&mut self, id: NodeId, incarnation: u64) -> Result<(), FailureKind> {
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        if node.live.is_none() || node.incarnation != incarnation {
            return Ok(());
        }
        let Some(job) = node.sync_job.take() else { return Ok(()) };
        self.step(id, Delivery::Synced(job), InputSummary::Flush)
    }

    /// With [`SimConfig::deferred_apply`](super::SimConfig::deferred_apply): if `id`'s backlog holds tasks and no drain is on
    /// its way, one comes after a random delay within the window.
    fn schedule_drain(&mut self, id: NodeId) {
        let Some(window) = self.config.deferred_apply else { return };
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let Some(live) = node.live.as_ref() else { return };
        if node.drain_scheduled || !live.driver.backlog().is_some_and(|b| b.needs_drain()) {
            return;
        }
        node.drain_scheduled = true;
        let incarnation = node.incarnation;
        let after = self.rng.random_range(0..=super::micros(window));
        self.schedule(after, Event::Drain { node: id, incarnation });
    }

    /// Runs `id`'s queued applies (if it is still this incarnation): all of them, as the
    /// node's worker does, or (half the time) what a caller waiting for an answer runs, which
    /// stops before a snapshot or a restore. Then a snapshot taken reaches the core, and
    /// clients learn their answers. A paused node's workers are frozen with it.
    pub(crate) fn on_drain(&mut self, id: NodeId, incarnation: u64) -> Result<(), FailureKind> {
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        if node.live.is_none() || node.incarnation != incarnation {
            return Ok(());
        }
        node.drain_scheduled = false;
        if node.paused_until > self.now {
            let wait = node.paused_until - self.now;
            node.drain_scheduled = true;
            self.schedule(wait, Event::Drain { node: id, incarnation });
            return Ok(());
        }
        let caller = self.rng.random_bool(0.5);
        let node = self.nodes.get_mut(&id).expect("looked up above");
        let live = node.live.as_mut().expect("checked above");
        let backlog = std::sync::Arc::clone(live.driver.backlog().expect("deferred applies"));
        let drained = catch_unwind(AssertUnwindSafe(|| match caller {
            true => backlog.drain_some(),
            false => {
                backlog.drain();
                false
            }
        }));
        self.stats.drains += 1;
        self.stats.drains_left_to_workers += u64::from(matches!(drained, Ok(true)));
        if let Err(payload) = drained {
            let message = crate::node::panic_message(&*payload);
            return Err(FailureKind::CorePanic { node: id, message });
        }
        // NB: a failed node's applier answers its waiters with the node's failure
        // (`Driver::fail`), which it then reports as its own: not the state machine's.
        if let (Some(error), None) = (live.driver.failure(), &live.failed) {
            return Err(FailureKind::Driver { node: id, error: error.to_string() });
        }
        let taken: Vec<_> = live.driver.taken().try_iter().collect();
        self.collect_answers(id);
        for snapshot in taken {
            self.step(id, Delivery::Taken(snapshot), InputSummary::SnapshotTaken)?;
        }
        self.end_stall(id)?;
        self.schedule_drain(id);
        Ok(())
    }

    /// A step left `id`'s backlog over its limit: the node stalls until a drain brings it down.
    fn note_stall(&mut self, id: NodeId) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else { return };
        if node.stalled_since.is_none() && node.stalled() {
            node.stalled_since = Some(now);
            self.stats.apply_stalls += 1;
        }
    }

    /// A drain may have brought a stalled node's backlog down to its limit: if so, the ticks
    /// it missed stay missed (its clock resumes from now), and it handles the inputs that
    /// waited, in order, as long as it takes input.
    fn end_stall(&mut self, id: NodeId) -> Result<(), FailureKind> {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        if node.stalled_since.is_none() || node.stalled() {
            return Ok(());
        }
        node.stalled_since = None;
        if node.next_tick < now {
            node.next_tick += node.ticks_before(now) * node.tick_us;
        }
        self.schedule_tick(id);
        self.replay_deferred(id)
    }

    /// Hands `id` the inputs that waited (a pause, a stall), in order, while it takes input.
    fn replay_deferred(&mut self, id: NodeId) -> Result<(), FailureKind> {
        loop {
            let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
            if node.live.is_none() || node.paused_until > self.now || node.stalled() {
                return Ok(());
            }
            let Some((delivery, summary)) = node.take_deferred() else { return Ok(()) };
            self.step(id, delivery, summary)?;
        }
    }

    /// What the forwarders share.
    fn forwards(&self) -> std::sync::MutexGuard<'_, super::Forwards<S>> {
        self.forwarded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts the requests a step forwarded on their way to the leader's queue. (A leader that
    /// was down already was refused by the forwarder: the driver answered
    /// `LeaderUnreachable`, never applied.)
    fn pass_on_forwards(&mut self) {
        if !self.config.forward_requests {
            return;
        }
        let (forwarded, refused) = {
            let mut forwards = self.forwards();
            (std::mem::take(&mut forwards.queued), std::mem::take(&mut forwards.refused))
        };
        self.stats.forwards_refused += refused;
        for (to, request) in forwarded {
            self.stats.forwards += 1;
            let after = self.rng.random_range(0..=50);
            self.schedule(after, Event::Forwarded { to, request });
        }
    }

    /// A forwarded request reaches `to`'s queue: its driver handles it, or (down since) it is
    /// lost with the node, and the client learns `NodeDown`.
    pub(crate) fn on_forwarded(
        &mut self,
        to: NodeId,
        request: Request<S>,
    ) -> Result<(), FailureKind> {
        if !self.is_up(to) {
            self.stats.forwards_lost += 1;
            drop(request);
            self.collect_answers(to);
            return Ok(());
        }
        self.step(to, Delivery::Request(request), InputSummary::Forwarded)
    }

    /// How many apply tasks wait in `id`'s backlog, if any do.
    pub(crate) fn applies_queued(&self, id: NodeId) -> Option<usize> {
        let live = self.nodes.get(&id)?.live.as_ref()?;
        let queued = live.driver.backlog()?.queued();
        (queued > 0).then_some(queued)
    }

    /// Freezes a running node for `duration`: no ticks, and its inputs wait until it resumes
    /// with its stale view. Pausing a down node does nothing.
    ///
    /// # Errors
    ///
    /// [`FaultError::UnknownNode`], or [`FaultError::PauseTooLong`] for a pause longer than
    /// the whole run.
    pub fn pause(&mut self, id: NodeId, duration: std::time::Duration) -> Result<(), FaultError> {
        let run = self.config.run_length();
        if duration > run {
            return Err(FaultError::PauseTooLong { pause: duration, run });
        }
        let node = self.nodes.get_mut(&id).ok_or(FaultError::UnknownNode(id))?;
        if node.live.is_none() {
            return Ok(());
        }
        let until = self.now + super::micros(duration);
        self.catch_up(id);
        let node = self.nodes.get_mut(&id).expect("looked up above");
        node.paused_until = node.paused_until.max(until);
        let incarnation = node.incarnation;
        self.note(format!("pause {id} for {duration:?}"));
        self.schedule(until - self.now, Event::Resume { node: id, incarnation });
        Ok(())
    }

    /// Ends a pause (if this incarnation is still paused and its time has come): the node
    /// handles what waited, in arrival order.
    pub(crate) fn on_resume(&mut self, id: NodeId, incarnation: u64) -> Result<(), FailureKind> {
        let node = self.nodes.get_mut(&id).expect("paused nodes exist");
        if node.incarnation != incarnation || node.paused_until > self.now {
            return Ok(());
        }
        if node.paused_until > 0 {
            let waited = node.deferred.len();
            self.note(format!("resume {id} ({waited} inputs waited)"));
        }
        let node = self.nodes.get_mut(&id).expect("exists");
        node.skip_paused_ticks();
        node.paused_until = 0;
        self.schedule_tick(id);
        // NB: a node stalled on its apply backlog keeps what waited until its applier
        // catches up (`end_stall`).
        self.replay_deferred(id)
    }

    /// Ends every pause now (the quiet period).
    pub(crate) fn resume_all(&mut self) -> Result<(), FailureKind> {
        let paused: Vec<(NodeId, u64)> = self
            .nodes
            .iter_mut()
            .filter(|(_, n)| n.paused_until > 0)
            .map(|(&id, n)| {
                n.paused_until = 1;
                (id, n.incarnation)
            })
            .collect();
        for (id, incarnation) in paused {
            self.on_resume(id, incarnation)?;
        }
        Ok(())
    }

    /// Crashes `id` in the middle of its next step that persists something and then sends or
    /// applies: after the persist, before or between the rest (the driver executes only a
    /// prefix of the actions).
    ///
    /// # Errors
    ///
    /// [`FaultError::UnknownNode`].
    pub fn crash_mid_step(&mut self, id: NodeId) -> Result<(), FaultError> {
        if !self.nodes.contains_key(&id) {
            return Err(FaultError::UnknownNode(id));
        }
        if self.is_up(id) {
            self.crash_armed.insert(id);
        }
        Ok(())
    }

    /// Arms a crash of `id` at its next batch sync (`SimConfig::sync_window`) with writes
    /// pending: the batch's writes are lost, though its AppendEntries may already be out.
    /// Without a sync window it strikes like [`Simulator::crash_mid_step`].
    ///
    /// # Errors
    ///
    /// [`FaultError::UnknownNode`].
    pub fn crash_before_sync(&mut self, id: NodeId) -> Result<(), FaultError> {
        if self.config.sync_window.is_none() {
            return self.crash_mid_step(id);
        }
        if !self.nodes.contains_key(&id) {
            return Err(FaultError::UnknownNode(id));
        }
        if self.is_up(id) {
            self.crash_before_sync.insert(id);
        }
        Ok(())
    }

    /// Hands a message to its receiver, unless the partition or a crash swallows it.
    pub(crate) fn deliver(
        &mut self,
        msg: Message<S::Command>,
        bytes: usize,
    ) -> Result<(), FailureKind> {
        self.network.landed(msg.from, msg.to, bytes);
        let why = if !self.network.connected(msg.from, msg.to) {
            Some("partition")
        } else if !self.is_up(msg.to) {
            Some("receiver down")
        } else {
            None
        };
        if let Some(why) = why {
            self.dropped(&msg, why);
            return Ok(());
        }
        let summary = InputSummary::Receive(MsgSummary::of(&msg));
        self.step(msg.to, Delivery::Message(msg, bytes), summary)
    }

    /// Steps a running node's driver: the checker sees the core's state and actions before
    /// the driver executes them. A failed node takes no input ([`Simulator::refuse`]). A
    /// failure the schedule planted (storage, transport, a poisoned command) fails the node
    /// ([`Simulator::node_failed`]); any other core panic (a broken core assertion) ends the
    /// run like a violation. Afterwards the step's messages (those sent before a transport
    /// panic included) go on the network and the clients and admins
    /// waiting on this node learn their answers.
    pub(crate) fn step(
        &mut self,
        id: NodeId,
        delivery: Delivery<S>,
        summary: InputSummary,
    ) -> Result<(), FailureKind> {
        if let Some(error) = self.nodes.get(&id).and_then(SimNode::failed) {
            return self.refuse(id, delivery, error);
        }
        let watch_sends = !self.mid_snapshot.is_empty() && self.watches_sends(id);
        if !matches!(delivery, Delivery::Ticks(..)) {
            self.catch_up(id);
        }
        let local_now = self.local_time(id);
        // NB: the last tick's own time on the node's clock, not the step's: a lease measured
        // from a later instant would end too late.
        let tick_time = match &delivery {
            Delivery::Ticks(_, at) => self.local_time_at(id, *at),
            _ => local_now,
        };
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        if node.live.is_some() && node.paused_until > self.now {
            self.defer(id, delivery, summary);
            return Ok(());
        }
        if node.live.is_some() && delivery.is_input() {
            if node.stalled() {
                // As the runtime's loop: no input while over `Config::max_apply_backlog`.
                self.stats.inputs_held_by_stalls += 1;
                self.defer(id, delivery, summary);
                return Ok(());
            }
            node.check_apply_backlog(id)?;
            node.check_request_bytes(id, Some(&delivery))?;
        }
        let received_chunk = matches!(&delivery, Delivery::Message(m, _) if is_partial_chunk(m));
        let mut sent_chunk = false;
        let Some(live) = node.live.as_mut() else { return Ok(()) };
        if let (Some(window), Delivery::Message(..), false) =
            (self.config.sync_window, &delivery, node.batch_open)
        {
            live.driver.begin_batch();
            node.batch_open = true;
            let incarnation = node.incarnation;
            // NB: each batch its own length, so one node's batch may hold the answer to
            // what it sent early while the other's was short.
            let hold = self.rng.random_range(0..=super::micros(window));
            self.schedule(hold, Event::Flush { node: id, incarnation });
        }
        let node = self.nodes.get_mut(&id).expect("looked up above");
        let live = node.live.as_mut().expect("checked above");
        let before = (live.core().role(), live.core().term());
        let (checker, trace, stats, now, rng) =
            (&mut self.checker, &mut self.trace, &mut self.stats, self.now, &mut self.rng);
        let armed = self.crash_armed.contains(&id);
        let mut crash_after = None;
        let mut verdict = Ok(());
        let mut observe = |core: &Core<S::Command>, actions: &[Action<S::Command>]| {
            stats.steps += 1;
            if !(actions.is_empty() && summary == InputSummary::Tick) {
                let event = step_event(core, summary, actions);
                trace.record(TraceLine { at: now, event });
            }
            for action in actions {
                match action {
                    Action::Restore(_) => stats.snapshots_installed += 1,
                    Action::PersistSnapshot(_) => stats.snapshots_taken += 1,
                    _ => {}
                }
            }
            sent_chunk |= watch_sends && sends_partial_chunk(actions);
            if let Err(v) = checker.after_step(core, actions) {
                verdict = Err(FailureKind::Safety(v));
            }
            // NB: past the leading persists, as the output contract puts every persist first;
            // a core that persists later (a bug) can then lose a write it already revealed.
            let persists = actions.iter().take_while(|a| is_persist(a)).count();
            if armed && actions.iter().any(is_persist) && persists < actions.len() {
                // NB: with storage faults the cut may fall before the sync, losing the step's
                // writes (the checker then asks only for what was synced).
                let executed = rng.random_range(persists..actions.len());
                crash_after = Some((executed, actions.len()));
                return Execute::First(executed);
            }
            Execute::All
        };
        live.clock.set(local_now);
        let mut ignored = None;
        // NB: a batch's requests the driver did not take (it failed halfway, or the batch
        // was full) stay here, as they stay in the runtime's queue.
        let mut rest = Vec::new().into_iter();
        let delivery = match delivery {
            Delivery::Requests(requests) => {
                rest = requests.into_iter();
                Delivery::Request(rest.next().expect("a batch holds at least one request"))
            }
            delivery => delivery,
        };
        let stepped = step_caught(id, &mut live.driver, |driver| match delivery {
            Delivery::Ticks(n, _) => driver.ticks_at(n, tick_time, &mut observe),
            Delivery::Message(msg, _) => driver.receive(msg, &mut observe),
            Delivery::Request(request) => driver.handle(request, &mut rest, &mut observe),
            Delivery::Requests(_) => unreachable!("split into its first and the rest above"),
            Delivery::Flush => driver.end_batch(&mut observe),
            Delivery::Synced(job) => driver.sync_done(job(), &mut observe),
            Delivery::Taken(snapshot) => driver.snapshot_taken(snapshot, &mut observe),
        });
        // NB: a failure the schedule planted fails the node, through the runtime's own path;
        // any other (a broken assertion, a write the simulator's storage refused) is a bug.
        let failed = match (stepped, node.storage.take_struck(), super::planted::take_struck()) {
            (Ok(()), Some(strike), _) => {
                // NB: only a driver that takes a storage error as success (a test-only bug)
                // steps on past a failure that struck; the checker learns what is held.
                ignored = Some(strike);
                None
            }
            (Ok(()), ..) => None,
            (Err(error), Some(_), _) => Some((error, Struck::Storage)),
            (Err(error), None, Some(planted)) => Some((error, Struck::Planted(planted))),
            (Err(Error::NodePanicked { message, .. }), None, None) => {
                return Err(FailureKind::CorePanic { node: id, message })
            }
            (Err(e), None, None) => {
                return Err(FailureKind::Driver { node: id, error: e.to_string() })
            }
        };
        let spare = std::mem::take(&mut self.spare_outbox);
        let mut outbox = std::mem::replace(&mut live.driver.transport_mut().0, spare);
        if failed.is_some() {
            // NB: as the runtime's loop: a step that failed submits no sync.
            drop(live.driver.take_sync_job());
        }
        if let Some(job) = live.driver.take_sync_job() {
            let window = self.config.background_sync.expect("only in the background mode");
            let incarnation = node.incarnation;
            node.sync_job = Some(job);
            let after = self.rng.random_range(0..=super::micros(window));
            self.schedule(after, Event::Synced { node: id, incarnation });
        }
        let mut bounded = Ok(());
        if let Some((error, struck)) = failed {
            bounded = self.node_failed(id, error, struck, &outbox);
        }
        let mut rest: Vec<Request<S>> = rest.collect();
        let mut refused = Ok(());
        if let (false, Some(error)) = (rest.is_empty(), self.nodes[&id].failed()) {
            // As the runtime's `serve_failure` takes them off the queue.
            refused = self.refuse(id, Delivery::Requests(std::mem::take(&mut rest)), error);
        }
        match ignored {
            None => {}
            Some(Strike::Sync) => {
                self.note(format!("{id} takes its failed sync as success (bug)"));
                self.storage_failed(id, None);
            }
            Some(Strike::Write(kind)) => {
                self.note(format!("{id} takes its failed {kind:?} write as success (bug)"));
                self.storage_failed(id, Some(&outbox));
            }
        }
        self.schedule_drain(id);
        self.note_stall(id);
        self.pass_on_forwards();
        verdict?;
        bounded?;
        refused?;
        if self.config.storage_faults {
            for msg in &outbox {
                self.checker.message_sent(msg);
            }
            // NB: not "nothing pending": a failed sync may have lost writes for good.
            if self.nodes[&id].storage.all_durable() {
                self.checker.node_synced(id);
            }
        }
        for msg in outbox.drain(..) {
            self.send(msg);
        }
        self.spare_outbox = outbox;
        if let Some((executed, of)) = crash_after {
            self.note(format!("crash {id} mid-step after {executed} of {of} actions"));
            self.stats.mid_step_crashes += 1;
            self.crash(id).expect("the node exists");
        }
        if received_chunk || sent_chunk {
            self.maybe_crash_mid_snapshot(id, received_chunk, sent_chunk);
        }
        self.watch_removed(id, before);
        self.collect_answers(id);
        self.collect_change_answers(id);
        self.collect_compactions(id);
        self.retire_removed();
        self.maybe_churn(id, before);
        self.schedule_tick(id);
        if !rest.is_empty() {
            // The runtime's loop takes them next (a node that crashed meanwhile drops them).
            let summary = InputSummary::Batch { count: rest.len() as u64 };
            return self.step(id, Delivery::Requests(rest), summary);
        }
        Ok(())
    }

    /// Arms a storage failure on a running node ([`Fault::FailStorage`](super::Fault::FailStorage)).
    pub(crate) fn fail_storage(
        &mut self,
        id: NodeId,
        failure: WriteFailure,
    ) -> Result<(), FaultError> {
        let node = self.nodes.get(&id).ok_or(FaultError::UnknownNode(id))?;
        if node.live.is_some() {
            node.storage.fail_write(failure);
            self.note(format!("armed storage failure on {id}: {failure:?}"));
        }
        Ok(())
    }

    /// Arms a transport failure on a running node ([`Fault::FailTransport`](super::Fault::FailTransport)):
    /// its `send` after `skip` more panics. Lost if the node crashes first.
    pub(crate) fn fail_transport(&mut self, id: NodeId, skip: u32) -> Result<(), FaultError> {
        let node = self.nodes.get_mut(&id).ok_or(FaultError::UnknownNode(id))?;
        if let Some(live) = node.live.as_mut().filter(|live| live.failed.is_none()) {
            live.driver.transport_mut().1 = Some(skip);
            self.note(format!("armed transport failure on {id} after {skip} sends"));
        }
        Ok(())
    }

    /// Disarms every transport failure armed and not yet struck.
    pub(crate) fn disarm_transports(&mut self) {
        for live in self.nodes.values_mut().filter_map(|node| node.live.as_mut()) {
            live.driver.transport_mut().1 = None;
        }
    }

    /// A failure the schedule planted struck `id` in its last step: the node fails as the
    /// runtime's does ([`Driver::fail`]: whatever waits on it hears `error` now), takes no
    /// input from now on, and the operator kills and restarts it 20-300 ms later
    /// ([`Simulator::recover`]). After a failed write or sync the checker learns what the
    /// storage really holds (a transport's or a command's panic leaves the storage as the
    /// step's persists, all executed before its first send, left it); `sent` is what the
    /// step sent before it failed.
    ///
    /// # Errors
    ///
    /// [`FailureKind::PoisonSpread`] if a poisoned command failed a second node: its
    /// client retried what may have failed the first.
    fn node_failed(
        &mut self,
        id: NodeId,
        error: Error,
        struck: Struck,
        sent: &[Message<S::Command>],
    ) -> Result<(), FailureKind> {
        if let Struck::Storage = struck {
            self.storage_failed(id, Some(sent));
        }
        #[cfg(test)]
        if self.run_on_after_panic && matches!(error, Error::NodePanicked { .. }) {
            self.note(format!("{id} runs on after its storage panicked (bug): {error}"));
            return Ok(());
        }
        let node = self.nodes.get_mut(&id).expect("it just stepped");
        let live = node.live.as_mut().expect("it just stepped");
        live.driver.fail(&error);
        live.failed = Some(error.clone());
        let incarnation = node.incarnation;
        self.stats.node_failures += 1;
        self.note(format!("fail {id} ({error})"));
        let after = self.rng.random_range(
            super::micros(Duration::from_millis(20))..=super::micros(Duration::from_millis(300)),
        );
        self.schedule(after, Event::Recover { node: id, incarnation });
        let Struck::Planted(Planted::Command(command)) = struck else { return Ok(()) };
        let failed = self.poisoned.entry(command.clone()).or_default();
        failed.push(id);
        match failed.len() {
            1 => Ok(()),
            _ => Err(FailureKind::PoisonSpread { command, failed: failed.clone() }),
        }
    }

    /// A write or a sync of `id` failed in its last step: the checker learns what its storage
    /// holds ([`Checker::write_failed`](super::checker::Checker::write_failed), given what the
    /// step sent, unless `sent` is `None`: a failed sync leaves the written state as the node
    /// knows it) and, with the sync boundary modelled, what of it is durable.
    fn storage_failed(&mut self, id: NodeId, sent: Option<&[Message<S::Command>]>) {
        let storage = &self.nodes[&id].storage;
        if let Some(sent) = sent {
            let held =
                crate::storage::Storage::load(storage).expect("SimStorage::load never fails");
            self.checker.write_failed(id, &held, sent);
        }
        if self.config.storage_faults {
            let durable = self.nodes[&id].storage.durable_state();
            self.checker.sync_failed(id, &durable);
        }
    }

    /// The operator's answer to a failed node: kill it and restart it from its storage (if
    /// it is still the incarnation that failed).
    pub(crate) fn recover(&mut self, id: NodeId, incarnation: u64) {
        let Some(node) = self.nodes.get(&id) else { return };
        if node.incarnation != incarnation || node.failed().is_none() {
            return;
        }
        self.note(format!("kill {id} (failed)"));
        self.crash(id).expect("the node exists");
        self.restart(id).expect("the node exists");
    }

    /// What a failed node does with an input: a request hears the failure and gives back its
    /// bytes (as the runtime's `serve_failure` answers it), a message is dropped, anything else
    /// is ignored. The node's request budget is checked before and after, as for a step.
    fn refuse(
        &mut self,
        id: NodeId,
        delivery: Delivery<S>,
        error: Error,
    ) -> Result<(), FailureKind> {
        self.nodes[&id].check_request_bytes(id, Some(&delivery))?;
        let requests = match delivery {
            Delivery::Message(msg, _) => {
                self.dropped(&msg, "receiver failed");
                Vec::new()
            }
            Delivery::Request(request) => vec![request],
            Delivery::Requests(requests) => requests,
            Delivery::Ticks(..) | Delivery::Flush | Delivery::Synced(_) | Delivery::Taken(_) => {
                Vec::new()
            }
        };
        let live = self.nodes[&id].live.as_ref().expect("a failed node runs");
        for mut request in requests {
            live.driver.give_back_request(&mut request);
            request.fail(error.clone());
        }
        self.collect_answers(id);
        self.collect_change_answers(id);
        self.collect_compactions(id);
        self.nodes[&id].check_request_bytes(id, None)
    }

    /// Puts a message on the network: lost, or delivered once or twice after random delays.
    fn send(&mut self, msg: Message<S::Command>) {
        self.stats.messages += 1;
        let bytes = crate::transport::message_bytes(&msg, S::command_size);
        match self.network.plan(&msg, bytes, &mut self.rng) {
            Err(why) => self.dropped(&msg, why),
            Ok(Fate::Once(delay)) => self.schedule(delay, Event::Deliver(msg, bytes)),
            Ok(Fate::Twice(first, second)) => {
                self.schedule(first, Event::Deliver(msg.clone(), bytes));
                self.schedule(second, Event::Deliver(msg, bytes));
            }
        }
    }

    pub(super) fn dropped(&mut self, msg: &Message<S::Command>, why: &'static str) {
        self.stats.dropped += 1;
        let event = TraceEvent::Dropped { msg: MsgSummary::of(msg), why };
        self.trace.record(TraceLine { at: self.now, event });
    }
}

/// What struck a node that failed in a step.
enum Struck {
    /// Its storage failed a write or a sync (what it holds since is its `load`).
    Storage,
    /// Another planted panic: its transport, or a poisoned command.
    Planted(Planted),
}

fn is_persist<C>(action: &Action<C>) -> bool {
    matches!(
        action,
        Action::PersistHardState(_) | Action::PersistSnapshot(_) | Action::PersistEntries { .. }
    )
}

/// The trace line of a step: its input, the node's state after it, how many messages it sent.
fn step_event<C: Clone>(core: &Core<C>, input: InputSummary, actions: &[Action<C>]) -> TraceEvent {
    let sends = actions.iter().filter(|a| matches!(a, Action::Send(_))).count() as u32;
    let after = NodeSummary {
        role: core.role(),
        term: core.term(),
        commit: core.commit_index(),
        last: core.log().last_index(),
    };
    TraceEvent::Step { node: core.id(), input, after, sends }
}

impl<S: StateMachine> Delivery<S> {
    /// Whether this is new input, which a node stalled on its apply backlog does not take
    /// (what finishes work it took already, a sync or a snapshot taken, it does).
    fn is_input(&self) -> bool {
        match self {
            Delivery::Ticks(..)
            | Delivery::Message(..)
            | Delivery::Request(_)
            | Delivery::Requests(_) => true,
            Delivery::Flush | Delivery::Synced(_) | Delivery::Taken(_) => false,
        }
    }
}

impl<S: StateMachine> SimNode<S> {
    /// The node's failure, while this incarnation runs failed.
    pub(crate) fn failed(&self) -> Option<Error> {
        self.live.as_ref().and_then(|live| live.failed.clone())
    }

    /// Whether the node runs and more than `Config::max_apply_backlog` entries wait for its
    /// state machine: it takes no input (the runtime's loop stalls).
    fn stalled(&self) -> bool {
        let backlog = self.live.as_ref().and_then(|live| live.driver.backlog());
        backlog.is_some_and(|backlog| backlog.over_limit())
    }

    /// The check of the limit, independent of the stall it checks: the node is about to
    /// take input, so the entries waiting, counted over its applier's queue, must be within
    /// `Config::max_apply_backlog`, and the loop's count must agree with them.
    fn check_apply_backlog(&self, id: NodeId) -> Result<(), FailureKind> {
        let backlog = self.live.as_ref().and_then(|live| live.driver.backlog());
        let Some(backlog) = backlog else { return Ok(()) };
        let (queued, counted, limit) =
            (backlog.count_queued_entries(), backlog.entries(), backlog.limit());
        if counted != queued {
            return Err(FailureKind::ApplyBacklogMiscounted { node: id, counted, queued });
        }
        if queued > limit {
            return Err(FailureKind::ApplyBacklogOverLimit { node: id, entries: queued, limit });
        }
        Ok(())
    }
    /// Ticks of this node's clock strictly before `until` not yet fed to its core.
    fn ticks_before(&self, until: u64) -> u64 {
        if until <= self.next_tick {
            return 0;
        }
        (until - 1 - self.next_tick) / self.tick_us + 1
    }

    /// A pause that has ended (`paused_until` reached, now or before): the ticks it froze are
    /// missed, not owed.
    fn skip_paused_ticks(&mut self) {
        let until = self.paused_until;
        if until > self.next_tick {
            self.next_tick += self.ticks_before(until) * self.tick_us;
        }
    }
}
