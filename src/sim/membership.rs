//! Membership changes in the simulator: [`Simulator::add_node`] (a fresh id, never reused,
//! over empty storage) and [`Simulator::remove_node`], each retried on the current leader
//! until it finishes, fails for good, or its deadline passes. Several may be under way at
//! once, so attempts race across leader changes as in the 2015 single-server bug.
//!
//! The cores decide everything (quorums come from each core's own configuration); this module
//! only carries requests and, once a removal is done, stops the removed node.

use crossbeam_channel::{bounded, Receiver, TryRecvError};

use super::node::Delivery;
use super::run::FailureKind;
use super::trace::InputSummary;
use super::{Event, FaultError, Simulator};
use crate::core::MembershipChange;
use crate::error::Error;
use crate::message::Configuration;
use crate::node::Request;
use crate::state_machine::StateMachine;
use crate::storage::MemStorage;
use crate::types::NodeId;

/// Retry interval for a change refused as premature (no leader, change in progress, ...).
const RETRY_US: u64 = 20_000;
/// A change still unfinished after this long is abandoned.
const DEADLINE_US: u64 = 3_000_000;

/// One requested change.
#[derive(Debug)]
struct AdminOp {
    change: MembershipChange,
    deadline: u64,
    /// The node currently working on it, and where its driver will answer.
    in_flight: Option<(NodeId, Receiver<Result<Configuration, Error>>)>,
    /// Final outcome; `None` while under way.
    outcome: Option<Result<(), Error>>,
}

/// Every change requested so far.
#[derive(Debug, Default)]
pub(crate) struct Admin {
    ops: Vec<AdminOp>,
    /// Nodes whose removal finished during the current step; stopped right after it.
    retiring: Vec<NodeId>,
    /// No new attempts (the quiet period): changes not under way are given up.
    closed: bool,
}

impl Admin {
    /// Whether some change is neither finished nor abandoned.
    pub fn busy(&self) -> bool {
        self.ops.iter().any(|op| op.outcome.is_none())
    }
}

impl<S: StateMachine> Simulator<S> {
    /// Starts a new node with a never-used id and empty storage, and asks the leader to add it
    /// (as a learner first, then a voter once caught up). Returns the new id.
    pub fn add_node(&mut self) -> NodeId {
        let id = NodeId(self.next_id);
        self.next_id += 1;
        self.note(format!("add {id}"));
        self.add_storage(id, MemStorage::new(Configuration::default()));
        self.request_change(MembershipChange::AddNode(id));
        id
    }

    /// Asks the leader to remove `id`; once the change is done, the node is stopped for good.
    ///
    /// # Errors
    ///
    /// [`FaultError::UnknownNode`] if the simulation never had `id`.
    pub fn remove_node(&mut self, id: NodeId) -> Result<(), FaultError> {
        if !self.nodes.contains_key(&id) {
            return Err(FaultError::UnknownNode(id));
        }
        self.note(format!("remove {id}"));
        self.request_change(MembershipChange::RemoveNode(id));
        Ok(())
    }

    /// Whether a membership change is still under way.
    pub fn changes_pending(&self) -> bool {
        self.admin.busy()
    }

    fn request_change(&mut self, change: MembershipChange) {
        let deadline = self.now + DEADLINE_US;
        self.admin.ops.push(AdminOp { change, deadline, in_flight: None, outcome: None });
        self.schedule(0, Event::Admin(self.admin.ops.len() - 1));
    }

    /// One attempt at change `op` on the current leader.
    pub(crate) fn on_admin(&mut self, op: usize) -> Result<(), FailureKind> {
        let a = &self.admin.ops[op];
        if a.outcome.is_some() || a.in_flight.is_some() {
            return Ok(());
        }
        if let Some(outcome) = self.void_change(op) {
            self.finish_change(op, Err(outcome));
            return Ok(());
        }
        let Some(leader) = self.leader() else {
            self.schedule(RETRY_US, Event::Admin(op));
            return Ok(());
        };
        let change = self.admin.ops[op].change;
        let (reply, answer) = bounded(1);
        self.admin.ops[op].in_flight = Some((leader, answer));
        let request = Request::ChangeMembership { change, reply };
        self.step(leader, Delivery::Request(request), InputSummary::Change(change))
    }

    /// Why change `op` should not be attempted any more, if so.
    fn void_change(&self, op: usize) -> Option<Error> {
        let a = &self.admin.ops[op];
        match a.change {
            _ if self.now > a.deadline || self.admin.closed => Some(Error::Timeout),
            // A removal won the race: ids are never reused, so this addition is void.
            MembershipChange::AddNode(id) if self.nodes[&id].removed => Some(Error::NotMember(id)),
            _ => None,
        }
    }

    /// After a step of `node`: pass on the answers its driver gave to changes in flight there.
    pub(crate) fn collect_change_answers(&mut self, node: NodeId) {
        for op in 0..self.admin.ops.len() {
            let answer = match &self.admin.ops[op].in_flight {
                Some((n, answer)) if *n == node => answer.try_recv(),
                _ => continue,
            };
            match answer {
                Ok(result) => self.on_change_done(op, result),
                Err(TryRecvError::Empty) => {}
                // The node crashed with it: `forget_admin_node` retries it.
                Err(TryRecvError::Disconnected) => {}
            }
        }
    }

    fn on_change_done(&mut self, op: usize, result: Result<Configuration, Error>) {
        self.admin.ops[op].in_flight = None;
        let change = self.admin.ops[op].change;
        match (result, change) {
            // NB: `NotMember` is final but retires nothing: a pending addition may still add it.
            (Ok(_), MembershipChange::RemoveNode(id)) => {
                self.finish_change(op, Ok(()));
                self.admin.retiring.push(id); // not now: `node` may be `id`, mid-step
            }
            (Ok(_), _) => self.finish_change(op, Ok(())),
            (Err(Error::ChangeInProgress | Error::LeaderNotReady | Error::NotLeader { .. }), _) => {
                self.schedule(RETRY_US, Event::Admin(op));
            }
            (Err(e), _) => self.finish_change(op, Err(e)),
        }
    }

    /// Starts no new attempt: changes not under way on a leader are given up now, and those
    /// under way finish (or fail) as the leader decides.
    pub(crate) fn close_changes(&mut self) {
        self.admin.closed = true;
        let idle: Vec<usize> = (0..self.admin.ops.len())
            .filter(|&i| {
                self.admin.ops[i].outcome.is_none() && self.admin.ops[i].in_flight.is_none()
            })
            .collect();
        for op in idle {
            self.finish_change(op, Err(Error::Timeout));
        }
    }

    /// A crashed node finishes nothing: retry its changes elsewhere.
    pub(crate) fn forget_admin_node(&mut self, node: NodeId) {
        let stuck: Vec<usize> = (0..self.admin.ops.len())
            .filter(|&i| self.admin.ops[i].in_flight.as_ref().is_some_and(|(n, _)| *n == node))
            .collect();
        for op in stuck {
            self.admin.ops[op].in_flight = None;
            self.schedule(RETRY_US, Event::Admin(op));
        }
    }

    fn finish_change(&mut self, op: usize, outcome: Result<(), Error>) {
        let text = format!("change {:?} done: {outcome:?}", self.admin.ops[op].change);
        self.note(text);
        self.admin.ops[op].outcome = Some(outcome);
    }

    /// Marks nodes whose removal finished: no more clients or ordinary faults aim at them,
    /// and ids are never reused, but they keep running (and may crash and restart) as a
    /// removed server does until someone stops it.
    pub(crate) fn retire_removed(&mut self) {
        for id in std::mem::take(&mut self.admin.retiring) {
            self.note(format!("{id} removed (keeps running)"));
            self.nodes.get_mut(&id).expect("only existing nodes are removed").removed = true;
        }
    }

    /// Takes back, as a member, a node marked removed that the leader's configuration holds
    /// again, and restarts it if it is down. An addition of the same id, handed to a leader
    /// before the removal committed, can be run by that leader after it (the simulator voids
    /// only the attempts it has not handed over yet): the node is then a learner again, and
    /// a real operator keeps it running (found by the soak: nemesis seed 5881869).
    pub(crate) fn readmit_re_added(&mut self) -> Result<(), FaultError> {
        let Some(leader) = self.leader() else { return Ok(()) };
        let Some(core) = self.core(leader) else { return Ok(()) };
        let readmitted: Vec<NodeId> = core
            .config()
            .members()
            .filter(|id| self.nodes.get(id).is_some_and(|n| n.removed))
            .collect();
        for id in readmitted {
            self.note(format!("{id} is in {leader}'s configuration again: a member"));
            self.nodes.get_mut(&id).expect("filtered above").removed = false;
            self.restart(id)?;
        }
        Ok(())
    }

    /// After a step of `id`: counts a removed node, holding its own removal in its log, that
    /// started an election (thesis §4.2.3: it must not disrupt the cluster, issue 12).
    pub(crate) fn watch_removed(
        &mut self,
        id: NodeId,
        before: (crate::core::Role, crate::types::Term),
    ) {
        use crate::core::Role;
        let Some(core) = self.core(id) else { return };
        let campaigning = matches!(core.role(), Role::PreCandidate | Role::Candidate);
        let started = campaigning && (core.role(), core.term()) != before;
        if started && self.nodes[&id].removed && !core.config().contains(id) {
            self.stats.removed_campaigns += 1;
            self.note(format!("{id} was removed and campaigns"));
        }
    }

    /// The n-th removed node in id order (modulo their number), if any, whether up or down.
    pub(crate) fn nth_removed(&self, n: usize) -> Option<NodeId> {
        let removed: Vec<NodeId> =
            self.nodes.iter().filter(|(_, node)| node.removed).map(|(&id, _)| id).collect();
        removed.get(n % removed.len().max(1)).copied()
    }
}
