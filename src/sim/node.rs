//! One simulated node: its durable [`MemStorage`] and, while it runs, its [`Core`] and state
//! machine. Stepping a core and executing its actions per the output contract lives here, as do
//! crash and restart.
//!
//! Must not decide anything random except tick phases and message fates, both drawn from the
//! simulator's one RNG.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::Rng;

use super::run::FailureKind;
use super::trace::{InputSummary, MsgSummary, NodeSummary, TraceEvent, TraceLine};
use super::{network::Fate, Event, FaultError, Simulator};
use crate::core::{Action, Core, Input};
use crate::message::Message;
use crate::state_machine::{apply_entry, StateMachine};
use crate::storage::{MemStorage, Storage};
use crate::types::{LogIndex, NodeId, Term};

/// A node's volatile half: lost on a crash.
pub(crate) struct Live<S: StateMachine> {
    pub core: Core<S::Command>,
    pub sm: S,
}

/// A node: durable storage, plus the volatile half while it runs.
pub(crate) struct SimNode<S: StateMachine> {
    pub storage: MemStorage<S::Command>,
    pub live: Option<Live<S>>,
    /// Bumped on every crash, so ticks and replies meant for an old incarnation are ignored.
    pub incarnation: u64,
    /// Removed from the cluster by a membership change: never restarted.
    pub removed: bool,
}

impl<S: StateMachine> Simulator<S> {
    /// Creates node `id` over `storage` and starts it.
    pub(crate) fn add_storage(&mut self, id: NodeId, storage: MemStorage<S::Command>) {
        let node = SimNode { storage, live: None, incarnation: 0, removed: false };
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
        if node.live.take().is_none() {
            return Ok(());
        }
        node.incarnation += 1;
        self.stats.crashes += 1;
        self.checker.node_crashed(id);
        self.clients.forget_node(id);
        self.forget_admin_node(id);
        self.note(format!("crash {id}"));
        Ok(())
    }

    /// Restarts a crashed node from its storage, with a fresh state machine from the factory
    /// (the core re-applies committed entries as it learns the commit index). Restarting a
    /// running or removed node does nothing. A safety violation found on restart (its log
    /// differs from what it persisted) ends the run; the next `run_for` reports it.
    ///
    /// # Errors
    ///
    /// [`FaultError::UnknownNode`] if the simulation never had `id`.
    pub fn restart(&mut self, id: NodeId) -> Result<(), FaultError> {
        let node = self.nodes.get(&id).ok_or(FaultError::UnknownNode(id))?;
        if node.live.is_none() && !node.removed {
            self.note(format!("restart {id}"));
            self.start_node(id);
        }
        Ok(())
    }

    /// Boots `id` from its storage and schedules its first tick at a random phase.
    fn start_node(&mut self, id: NodeId) {
        let node = self.nodes.get(&id).expect("callers check the node exists");
        let state = node.storage.load().expect("MemStorage::load never fails");
        let mut raft = self.config.raft.clone();
        // NB: a restart in the same term would otherwise replay the same election timeouts.
        raft.seed ^= node.incarnation.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let incarnation = node.incarnation;
        #[allow(unused_mut)]
        let mut core = Core::new(id, &raft, state);
        #[cfg(test)]
        {
            core.bugs = self.bugs;
        }
        if let Err(v) = self.checker.node_started(&core) {
            self.fail(FailureKind::Safety(v));
        }
        let sm = (self.factory)(id);
        self.nodes.get_mut(&id).expect("looked up above").live = Some(Live { core, sm });
        let phase = self.rng.random_range(0..self.tick_us());
        self.schedule(phase, Event::Tick { node: id, incarnation });
    }

    fn tick_us(&self) -> u64 {
        super::micros(self.config.raft.tick).max(1)
    }

    pub(crate) fn on_tick(&mut self, id: NodeId, incarnation: u64) -> Result<(), FailureKind> {
        let current =
            self.nodes.get(&id).is_some_and(|n| n.live.is_some() && n.incarnation == incarnation);
        if !current {
            return Ok(()); // the node crashed since: this clock stopped
        }
        self.schedule(self.tick_us(), Event::Tick { node: id, incarnation });
        self.step(id, Input::Tick, InputSummary::Tick)
    }

    /// Hands a message to its receiver, unless the partition or a crash swallows it.
    pub(crate) fn deliver(&mut self, msg: Message<S::Command>) -> Result<(), FailureKind> {
        self.network.landed(msg.from, msg.to);
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
        self.step(msg.to, Input::Receive(msg), summary)
    }

    /// Steps a running node, lets the checker see the result, then executes the actions in
    /// order. A core panic (a broken core assertion) ends the run like a violation.
    pub(crate) fn step(
        &mut self,
        id: NodeId,
        input: Input<S::Command>,
        summary: InputSummary,
    ) -> Result<(), FailureKind> {
        let Some(live) = self.nodes.get_mut(&id).and_then(|n| n.live.as_mut()) else {
            return Ok(());
        };
        let before = (live.core.role(), live.core.term());
        let mut actions = Vec::new();
        let stepped = catch_unwind(AssertUnwindSafe(|| live.core.step(input, &mut actions)));
        if let Err(payload) = stepped {
            return Err(FailureKind::CorePanic { node: id, message: panic_message(&*payload) });
        }
        self.stats.steps += 1;
        if !(actions.is_empty() && summary == InputSummary::Tick) {
            let event = step_event(&live.core, summary, &actions);
            self.trace.record(TraceLine { at: self.now, event });
        }
        self.checker.after_step(&live.core, &actions).map_err(FailureKind::Safety)?;
        self.execute(id, actions);
        self.retire_removed();
        self.maybe_churn(id, before);
        Ok(())
    }

    /// Executes a step's actions in the order given (the core's output contract).
    fn execute(&mut self, id: NodeId, actions: Vec<Action<S::Command>>) {
        for action in actions {
            match action {
                Action::PersistHardState(hs) => {
                    let node = self.nodes.get_mut(&id).expect("stepped node exists");
                    node.storage.save_hard_state(hs).expect("MemStorage never fails");
                }
                Action::PersistEntries { from } => self.persist_entries(id, from),
                Action::Send(msg) => self.send(msg),
                Action::Proposed { first, term, .. } => self.on_proposed(id, first, term),
                Action::Rejected(error) => self.on_rejected(error),
                Action::Apply { from, to } => self.apply(id, from, to),
                Action::ChangeDone(result) => self.on_change_done(id, result),
                Action::Notice(_) => {}
            }
        }
    }

    /// `PersistEntries { from }`: the stored log from `from` on becomes the core's.
    fn persist_entries(&mut self, id: NodeId, from: LogIndex) {
        let node = self.nodes.get_mut(&id).expect("stepped node exists");
        let live = node.live.as_ref().expect("stepped node is running");
        let entries = live.core.log().entries_from(from, usize::MAX);
        node.storage.append(from, entries).expect("the core persists contiguous entries");
    }

    /// `Apply { from, to }`: commands go to the state machine in order; no-op and
    /// configuration entries are skipped. Clients waiting on these indexes are answered.
    fn apply(&mut self, id: NodeId, from: LogIndex, to: LogIndex) {
        let node = self.nodes.get_mut(&id).expect("stepped node exists");
        let incarnation = node.incarnation;
        let live = node.live.as_mut().expect("stepped node is running");
        let mut answered: Vec<(LogIndex, Term, Option<S::Output>)> = Vec::new();
        for i in from.0..=to.0 {
            let index = LogIndex(i);
            let entry = live.core.log().entry(index).expect("the core applies entries it holds");
            let output = apply_entry(&mut live.sm, index, entry);
            if self.clients.is_awaited(id, incarnation, index) {
                answered.push((index, entry.term, output));
            }
        }
        for (index, term, output) in answered {
            self.on_applied(id, incarnation, index, term, output);
        }
    }

    /// Puts a message on the network: lost, or delivered once or twice after random delays.
    fn send(&mut self, msg: Message<S::Command>) {
        self.stats.messages += 1;
        match self.network.plan(&msg, &mut self.rng) {
            Err(why) => self.dropped(&msg, why),
            Ok(Fate::Once(delay)) => self.schedule(delay, Event::Deliver(msg)),
            Ok(Fate::Twice(first, second)) => {
                self.schedule(first, Event::Deliver(msg.clone()));
                self.schedule(second, Event::Deliver(msg));
            }
        }
    }

    fn dropped(&mut self, msg: &Message<S::Command>, why: &'static str) {
        self.stats.dropped += 1;
        let event = TraceEvent::Dropped { msg: MsgSummary::of(msg), why };
        self.trace.record(TraceLine { at: self.now, event });
    }
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

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
