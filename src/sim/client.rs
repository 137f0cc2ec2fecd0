//! Virtual clients: each issues one operation at a time to the node it believes leads,
//! follows `NotLeader` hints, and records a [`HistoryOp`] with virtual invocation and
//! completion times. An operation whose reply never comes within the timeout, or whose log
//! entry was replaced, is recorded with an unknown outcome (`completed: None`).
//!
//! A proposal is answered when its index is applied on the node that accepted it, in the same
//! incarnation, and the applied entry's term is the one `Action::Proposed` reported: by Log
//! Matching, (index, term) names exactly the entry that was proposed.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::Rng;

use super::run::FailureKind;
use super::trace::InputSummary;
use super::{Event, Simulator};
use crate::core::Input;
use crate::error::Error;
use crate::state_machine::StateMachine;
use crate::types::{LogIndex, NodeId, Term};

/// Generates the clients' commands.
pub trait Workload<S: StateMachine> {
    /// The command of `client`'s `seq`-th operation (`seq` starts at 1). Making each write's
    /// value unique (for example `c{client}-{seq};`) makes duplicates and losses visible.
    fn command(&mut self, client: u64, seq: u64, rng: &mut SmallRng) -> S::Command;
}

/// One client operation as observed from outside, in virtual microseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryOp<C, O> {
    /// The client that issued it.
    pub client: u64,
    /// What it asked for.
    pub command: C,
    /// When the client sent it.
    pub invoked_at: u64,
    /// When the reply arrived and what it said; `None` if the outcome is unknown.
    pub completed: Option<(u64, O)>,
}

/// Client traffic, carried by the event queue.
pub(crate) enum ClientEvent<O> {
    /// Time for the client's next operation.
    Next { client: u64 },
    /// The request reaches `node`.
    Arrive { client: u64, op: usize, node: NodeId },
    /// A refusal (or a refused connection) reaches the client.
    Redirect { client: u64, op: usize, hint: Option<NodeId> },
    /// The answer reaches the client.
    Reply { client: u64, op: usize, output: O },
    /// The client stops waiting.
    Timeout { client: u64, op: usize },
}

#[derive(Clone, Copy, Debug)]
struct ClientState {
    /// The node believed to lead.
    guess: NodeId,
    seq: u64,
    /// The operation in flight (an index into the history).
    current: Option<usize>,
}

/// A proposal waiting to be applied on the node that accepted it.
#[derive(Clone, Copy, Debug)]
struct Awaited {
    client: u64,
    op: usize,
    term: Term,
}

/// All clients' state and the history they record.
pub(crate) struct Clients<S: StateMachine> {
    workload: Option<Box<dyn Workload<S>>>,
    states: Vec<ClientState>,
    history: Vec<HistoryOp<S::Command, S::Output>>,
    /// Keyed by (node, incarnation, index).
    awaiting: BTreeMap<(NodeId, u64, LogIndex), Awaited>,
    issuing: bool,
    /// The client whose request the node being stepped is handling.
    proposer: Option<(u64, usize)>,
}

impl<S: StateMachine> Clients<S> {
    pub fn new() -> Self {
        Clients {
            workload: None,
            states: Vec::new(),
            history: Vec::new(),
            awaiting: BTreeMap::new(),
            issuing: false,
            proposer: None,
        }
    }

    pub fn history(&self) -> &[HistoryOp<S::Command, S::Output>] {
        &self.history
    }

    pub fn is_awaited(&self, node: NodeId, incarnation: u64, index: LogIndex) -> bool {
        !self.awaiting.is_empty() && self.awaiting.contains_key(&(node, incarnation, index))
    }

    /// A crashed node answers nobody; its clients time out.
    pub fn forget_node(&mut self, node: NodeId) {
        self.awaiting.retain(|&(n, _, _), _| n != node);
    }

    fn is_pending(&self, client: u64, op: usize) -> bool {
        self.states.get(client as usize).is_some_and(|s| s.current == Some(op))
    }

    /// Ends the client's current operation; its record stays as it is.
    fn finish(&mut self, client: u64) {
        self.states[client as usize].current = None;
    }
}

impl<S: StateMachine> Simulator<S> {
    /// Starts [`SimConfig::clients`](super::SimConfig::clients) clients issuing commands from
    /// `workload`, one operation at a time each.
    pub fn start_clients(&mut self, workload: impl Workload<S> + 'static) {
        let members = self.members();
        self.clients.workload = Some(Box::new(workload));
        self.clients.issuing = true;
        for client in 0..self.config.clients {
            let guess = members[client as usize % members.len()];
            self.clients.states.push(ClientState { guess, seq: 0, current: None });
            let start = self.think_time();
            self.schedule(start, Event::Client(ClientEvent::Next { client }));
        }
    }

    /// Clients finish (or time out) their current operation but start no new one.
    pub fn stop_clients(&mut self) {
        self.clients.issuing = false;
    }

    /// Whether any client operation is still waiting for its outcome.
    pub fn clients_busy(&self) -> bool {
        self.clients.states.iter().any(|s| s.current.is_some())
    }

    pub(crate) fn on_client_event(
        &mut self,
        event: ClientEvent<S::Output>,
    ) -> Result<(), FailureKind> {
        match event {
            ClientEvent::Next { client } => self.invoke(client),
            ClientEvent::Arrive { client, op, node } => return self.arrive(client, op, node),
            ClientEvent::Redirect { client, op, hint } => self.redirect(client, op, hint),
            ClientEvent::Reply { client, op, output } => self.complete(client, op, output),
            ClientEvent::Timeout { client, op } => self.time_out(client, op),
        }
        Ok(())
    }

    /// Starts the client's next operation: record the invocation, arm the timeout, send.
    fn invoke(&mut self, client: u64) {
        let state = self.clients.states[client as usize];
        if !self.clients.issuing || state.current.is_some() {
            return;
        }
        let seq = state.seq + 1;
        let workload = self.clients.workload.as_mut().expect("clients run only with a workload");
        let command = workload.command(client, seq, &mut self.rng);
        let op = self.clients.history.len();
        self.note(format!("c{client} invoke #{op} {command:?}"));
        let record = HistoryOp { client, command, invoked_at: self.now, completed: None };
        self.clients.history.push(record);
        let state = &mut self.clients.states[client as usize];
        state.seq = seq;
        state.current = Some(op);
        let guess = state.guess;
        let timeout = super::micros(self.config.op_timeout);
        self.schedule(timeout, Event::Client(ClientEvent::Timeout { client, op }));
        self.send_request(client, op, guess, 0);
    }

    fn send_request(&mut self, client: u64, op: usize, node: NodeId, backoff: u64) {
        let delay = backoff + self.network.delay(&mut self.rng);
        self.schedule(delay, Event::Client(ClientEvent::Arrive { client, op, node }));
    }

    /// The request reaches `node`: propose it there, or bounce if the node is down.
    fn arrive(&mut self, client: u64, op: usize, node: NodeId) -> Result<(), FailureKind> {
        if !self.clients.is_pending(client, op) {
            return Ok(());
        }
        if !self.is_up(node) {
            self.reply_later(ClientEvent::Redirect { client, op, hint: None });
            return Ok(());
        }
        let command = self.clients.history[op].command.clone();
        self.clients.proposer = Some((client, op));
        let result = self.step(
            node,
            Input::Propose(vec![command]),
            InputSummary::Propose { client, op: op as u64 },
        );
        self.clients.proposer = None;
        result
    }

    /// `Action::Proposed`: wait for the entry to be applied on this node.
    pub(crate) fn on_proposed(&mut self, node: NodeId, first: LogIndex, term: Term) {
        let Some((client, op)) = self.clients.proposer else { return };
        let incarnation = self.nodes[&node].incarnation;
        self.clients.awaiting.insert((node, incarnation, first), Awaited { client, op, term });
        self.clients.states[client as usize].guess = node;
    }

    /// `Action::Rejected`: send the refusal, with its hint, back to the client.
    pub(crate) fn on_rejected(&mut self, error: Error) {
        let Some((client, op)) = self.clients.proposer else { return };
        let hint = match error {
            Error::NotLeader { leader_hint } => leader_hint,
            _ => None,
        };
        self.reply_later(ClientEvent::Redirect { client, op, hint });
    }

    /// Retry at the hinted leader, or (no hint) at the next node after a backoff.
    fn redirect(&mut self, client: u64, op: usize, hint: Option<NodeId>) {
        if !self.clients.is_pending(client, op) {
            return;
        }
        let (node, backoff) = match hint {
            Some(leader) => (leader, 0),
            None => (
                self.next_member(self.clients.states[client as usize].guess),
                super::micros(self.config.retry_backoff),
            ),
        };
        self.clients.states[client as usize].guess = node;
        self.send_request(client, op, node, backoff);
    }

    /// An applied index some client waits for: answer if it is that client's entry.
    pub(crate) fn on_applied(
        &mut self,
        node: NodeId,
        incarnation: u64,
        index: LogIndex,
        term: Term,
        output: Option<S::Output>,
    ) {
        let Some(w) = self.clients.awaiting.remove(&(node, incarnation, index)) else { return };
        match output {
            Some(output) if term == w.term => {
                self.reply_later(ClientEvent::Reply { client: w.client, op: w.op, output });
            }
            // Another leader's entry took the slot. The client cannot know whether its own
            // command landed elsewhere, so the outcome stays unknown.
            _ => self.give_up(w.client, w.op, "entry replaced"),
        }
    }

    fn complete(&mut self, client: u64, op: usize, output: S::Output) {
        if !self.clients.is_pending(client, op) {
            return;
        }
        self.note(format!("c{client} complete #{op} {output:?}"));
        self.clients.history[op].completed = Some((self.now, output));
        self.clients.finish(client);
        self.next_op(client);
    }

    fn time_out(&mut self, client: u64, op: usize) {
        if !self.clients.is_pending(client, op) {
            return;
        }
        let guess = self.clients.states[client as usize].guess;
        let next = self.next_member(guess);
        self.clients.states[client as usize].guess = next;
        self.give_up(client, op, "timeout");
    }

    fn give_up(&mut self, client: u64, op: usize, why: &str) {
        if !self.clients.is_pending(client, op) {
            return;
        }
        self.note(format!("c{client} unknown #{op} ({why})"));
        self.clients.finish(client);
        self.next_op(client);
    }

    fn next_op(&mut self, client: u64) {
        let think = self.think_time();
        self.schedule(think, Event::Client(ClientEvent::Next { client }));
    }

    fn reply_later(&mut self, event: ClientEvent<S::Output>) {
        let delay = self.network.delay(&mut self.rng);
        self.schedule(delay, Event::Client(event));
    }

    /// A client's pause between operations: up to two milliseconds.
    fn think_time(&mut self) -> u64 {
        self.rng.random_range(0..=2_000)
    }

    /// The member after `id` in id order, wrapping around.
    fn next_member(&self, id: NodeId) -> NodeId {
        let members = self.members();
        members.iter().copied().find(|&m| m > id).unwrap_or(members[0])
    }
}
