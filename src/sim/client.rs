//! Virtual clients: each issues one operation at a time to the node it believes leads,
//! follows `NotLeader` hints, and records a [`HistoryOp`] with virtual invocation and
//! completion times. An operation whose reply never comes within the timeout is recorded with
//! an unknown outcome (`completed: None`).
//!
//! A request goes to the node's driver exactly as a `NodeHandle` sends it (a `Request` with a
//! `Receipt`); only its delivery is virtual. Answers mean what [`crate::Receipt`] documents: a
//! refusal redirects the client, `ProposalDropped` records the operation as never applied, and
//! a crash or a timeout leaves its outcome unknown. A retrying client
//! ([`SimConfig::client_retries`](super::SimConfig::client_retries)) that times out after
//! nothing but refusals records the operation as never applied, as `Client::propose` answers
//! `Unavailable`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use rand::rngs::SmallRng;
use rand::Rng;

use super::node::Delivery;
use super::run::FailureKind;
use super::trace::InputSummary;
use super::{Event, Simulator};
use crate::core::ReadPolicy;
use crate::error::Error;
use crate::node::{read_receipt, receipt, Applied, Measured, Receipt, Request};
use crate::runtime::{failed_node, Retry};
use crate::state_machine::StateMachine;
use crate::types::NodeId;

/// Generates the clients' commands.
pub trait Workload<S: StateMachine> {
    /// The command of `client`'s `seq`-th operation (`seq` starts at 1). Making each write's
    /// value unique (for example `c{client}-{seq};`) makes duplicates and losses visible.
    fn command(&mut self, client: u64, seq: u64, rng: &mut SmallRng) -> S::Command;

    /// If `command` is a read that may be served without the log (with
    /// [`SimConfig::reads`](super::SimConfig::reads)), how to answer it from a state machine.
    /// Default: no command is such a read.
    fn read(&self, command: &S::Command) -> Option<ReadQuery<S>> {
        let _ = command;
        None
    }

    /// `client`'s operation `command` completed with `output` (the answer reached the
    /// client): a stateful workload learns from it, e.g. the client id a session registration
    /// returned. Default: nothing.
    fn observe(&mut self, client: u64, command: &S::Command, output: &S::Output) {
        let _ = (client, command, output);
    }
}

/// The policy read `op` asks for, as an embedder mixing them would: one read in four (chosen
/// by op number, not by the RNG) insists on a confirmation round (`ReadPolicy::ReadIndex`),
/// the others allow the lease (`ReadPolicy::Lease`, which is ReadIndex without
/// `raft.lease_reads`). So the checkers judge both, side by side.
pub(super) fn read_policy(op: usize) -> ReadPolicy {
    match op % 4 {
        3 => ReadPolicy::ReadIndex,
        _ => ReadPolicy::Lease,
    }
}

/// Answers a read command from a state machine (see [`Workload::read`]).
pub type ReadQuery<S> = fn(&S, &<S as StateMachine>::Command) -> <S as StateMachine>::Output;

/// One client operation as observed from outside, in virtual microseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryOp<C, O> {
    /// The client that issued it.
    pub client: u64,
    /// What it asked for.
    pub command: C,
    /// When the client sent it.
    pub invoked_at: u64,
    /// When the reply arrived and what it said; `None` if the outcome is unknown or the
    /// operation was never applied.
    pub completed: Option<(u64, O)>,
    /// The node answered that the command was never applied: refused, or its entry replaced
    /// (`ProposalDropped`). Such an operation took no effect.
    pub not_applied: bool,
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
    /// The batching window at `node` closes: its waiting requests go in one step.
    Flush { node: NodeId },
}

#[derive(Clone, Copy, Debug)]
struct ClientState {
    /// The node believed to lead.
    guess: NodeId,
    seq: u64,
    /// The operation in flight (an index into the history).
    current: Option<usize>,
}

/// A proposal handed to a node's driver, waiting for its answer.
struct Awaited<O> {
    client: u64,
    op: usize,
    node: NodeId,
    receipt: Receipt<O>,
}

/// All clients' state and the history they record.
pub(crate) struct Clients<S: StateMachine> {
    workload: Option<Box<dyn Workload<S>>>,
    states: Vec<ClientState>,
    history: Vec<HistoryOp<S::Command, S::Output>>,
    /// Proposals handed to drivers and not yet answered, in the order they were sent.
    awaiting: Vec<Awaited<S::Output>>,
    issuing: bool,
    /// Requests that reached a node and wait for its batching window to close.
    inbox: std::collections::BTreeMap<NodeId, Vec<(u64, usize)>>,
    /// How often each operation was resent after a timeout (`SimConfig::retry_timeouts`).
    resent: std::collections::BTreeMap<usize, u32>,
    /// Pending operations of which an attempt may have been appended: lost with a crashed
    /// node, `NodeDown` after appending, or resent after a timeout. With those answered with
    /// an output still on its way (`answered`) and those handed to a driver and unanswered
    /// (`awaiting`), these time out as unknown; any other, refused every time, as never
    /// applied.
    unsure: std::collections::BTreeSet<usize>,
    /// Pending operations answered with an output that has not reached the client yet.
    answered: std::collections::BTreeSet<usize>,
}

impl<S: StateMachine> Clients<S> {
    pub fn new() -> Self {
        Clients {
            workload: None,
            states: Vec::new(),
            history: Vec::new(),
            awaiting: Vec::new(),
            issuing: false,
            inbox: std::collections::BTreeMap::new(),
            resent: std::collections::BTreeMap::new(),
            unsure: std::collections::BTreeSet::new(),
            answered: std::collections::BTreeSet::new(),
        }
    }

    pub fn history(&self) -> &[HistoryOp<S::Command, S::Output>] {
        &self.history
    }

    /// A crashed node answers nobody: its clients time out (their outcome stays unknown).
    pub fn forget_node(&mut self, node: NodeId) {
        let unsure = &mut self.unsure;
        self.awaiting.retain(|a| a.node != node || !unsure.insert(a.op));
    }

    /// Whether an attempt of `op` may have been appended (see [`Clients::unsure`]).
    fn may_be_appended(&self, op: usize) -> bool {
        self.unsure.contains(&op) || self.awaiting.iter().any(|a| a.op == op)
    }

    /// Counts one more resend of `op`; returns how many came before.
    fn retries(&mut self, op: usize) -> u32 {
        let count = self.resent.entry(op).or_insert(0);
        *count += 1;
        *count - 1
    }

    fn is_pending(&self, client: u64, op: usize) -> bool {
        self.states.get(client as usize).is_some_and(|s| s.current == Some(op))
    }

    /// Ends the client's current operation; its record stays as it is.
    fn finish(&mut self, client: u64) {
        if let Some(op) = self.states[client as usize].current.take() {
            self.unsure.remove(&op);
            self.answered.remove(&op);
        }
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
            ClientEvent::Flush { node } => return self.flush_batch(node),
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
        self.note_args(format_args!("c{client} invoke #{op} {command:?}"));
        let record = HistoryOp {
            client,
            command,
            invoked_at: self.now,
            completed: None,
            not_applied: false,
        };
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

    /// The request reaches `node`: hand it to the node's driver, or bounce if the node is
    /// down.
    fn arrive(&mut self, client: u64, op: usize, node: NodeId) -> Result<(), FailureKind> {
        if !self.clients.is_pending(client, op) {
            return Ok(());
        }
        if !self.is_up(node) {
            self.reply_later(ClientEvent::Redirect { client, op, hint: None });
            return Ok(());
        }
        if self.served_on_caller(client, op, node) {
            return Ok(());
        }
        if let Some(window) = self.config.batch_window {
            let waiting = self.clients.inbox.entry(node).or_default();
            waiting.push((client, op));
            if waiting.len() == 1 {
                let after = super::micros(window);
                self.schedule(after, Event::Client(ClientEvent::Flush { node }));
            }
            return Ok(());
        }
        let Some(queued) = self.take_request_bytes(client, op, node) else { return Ok(()) };
        let request = self.proposal(client, op, node, queued);
        let summary = InputSummary::Propose { client, op: op as u64 };
        self.step(node, Delivery::Request(request), summary)
    }

    /// The request for `op`, with its receipt awaited; a proposal's size as measured for the
    /// node's request queue, if it was (`sim/request_queue.rs`).
    fn proposal(
        &mut self,
        client: u64,
        op: usize,
        node: NodeId,
        queued: Option<Measured>,
    ) -> Request<S> {
        let command = self.clients.history[op].command.clone();
        if let Some(query) = self.read_query(op) {
            // The read as `NodeHandle::read_async_with` builds it: the query in the receipt.
            let (read, receipt) = read_receipt(node, 0, command, query);
            self.clients.awaiting.push(Awaited { client, op, node, receipt });
            let policy = read_policy(op);
            if policy == ReadPolicy::ReadIndex {
                self.stats.reads_by_round += 1;
            }
            return self.forwarding(Request::Read { read, policy });
        }
        let (responder, receipt) = receipt(node);
        self.clients.awaiting.push(Awaited { client, op, node, receipt });
        self.forwarding(Request::Propose { command, responder, queued })
    }

    /// `op`'s command.
    pub(super) fn command(&self, op: usize) -> &S::Command {
        &self.clients.history[op].command
    }

    /// Whether `op` is a read served without the log.
    pub(super) fn is_read(&self, op: usize) -> bool {
        self.read_query(op).is_some()
    }

    /// `request` as the client sends it: asking for forwarding to the leader, with
    /// [`SimConfig::forward_requests`](super::SimConfig::forward_requests).
    fn forwarding(&self, request: Request<S>) -> Request<S> {
        match self.config.forward_requests {
            true => Request::Forward(Box::new(request)),
            false => request,
        }
    }

    /// Serves read `op` at `node` as the runtime's handle would on the caller's thread, if it
    /// is one of the share that tries that path (`SimConfig::caller_read_percent`) and the
    /// node's lease holds on its own clock; the answer then travels back to the client.
    fn served_on_caller(&mut self, client: u64, op: usize, node: NodeId) -> bool {
        if read_policy(op) == ReadPolicy::ReadIndex {
            return false; // as `NodeHandle::read_with`: never the lease, so never this path
        }
        let percent = self.config.caller_read_percent;
        if percent == 0 || !super::reads::caller::takes_caller_path(op, percent) {
            return false;
        }
        let Some(query) = self.read_query(op) else { return false };
        let command = &self.clients.history[op].command;
        let Some((output, index)) = self.read_on_caller(node, query, command) else {
            return false;
        };
        self.stats.caller_reads += 1;
        self.note_args(format_args!(
            "c{client} lease read #{op} on {node}'s caller thread at i{index}"
        ));
        self.clients.answered.insert(op);
        self.reply_later(ClientEvent::Reply { client, op, output });
        true
    }

    /// How to serve `op` as a read without the log, if it is one and reads are on.
    fn read_query(&self, op: usize) -> Option<ReadQuery<S>> {
        let workload = self.clients.workload.as_ref()?;
        self.config.reads.then(|| workload.read(&self.clients.history[op].command)).flatten()
    }

    /// Hands every request waiting at `node` to its driver in one step (one `Driver::handle`
    /// call, so they become one `Input::Propose` batch).
    fn flush_batch(&mut self, node: NodeId) -> Result<(), FailureKind> {
        let waiting = self.clients.inbox.remove(&node).unwrap_or_default();
        let waiting: Vec<(u64, usize)> =
            waiting.into_iter().filter(|&(c, op)| self.clients.is_pending(c, op)).collect();
        if !self.is_up(node) {
            for (client, op) in waiting {
                self.reply_later(ClientEvent::Redirect { client, op, hint: None });
            }
            return Ok(());
        }
        let mut requests = Vec::with_capacity(waiting.len());
        let mut taken = Vec::with_capacity(waiting.len());
        for (client, op) in waiting {
            if let Some(queued) = self.take_request_bytes(client, op, node) {
                requests.push(self.proposal(client, op, node, queued));
                taken.push((client, op));
            }
        }
        let waiting = taken;
        match requests.len() {
            0 => Ok(()),
            1 => {
                let (client, op) = waiting[0];
                let summary = InputSummary::Propose { client, op: op as u64 };
                let request = requests.into_iter().next().expect("one request");
                self.step(node, Delivery::Request(request), summary)
            }
            n => {
                self.stats.batches += 1;
                self.step(
                    node,
                    Delivery::Requests(requests),
                    InputSummary::Batch { count: n as u64 },
                )
            }
        }
    }

    /// After a step of `node`: pass on the answers it gave.
    /// With forwarding, any node's step may answer any client: all are looked at.
    pub(crate) fn collect_answers(&mut self, node: NodeId) {
        let any = self.config.forward_requests;
        if !self.clients.awaiting.iter().any(|a| any || a.node == node) {
            return;
        }
        let mut answered = Vec::new();
        // NB: taken as an `async` caller takes it (polled as a `Future`), so the answers the
        // checkers see come through the hand-over production callers use.
        let mut cx = Context::from_waker(Waker::noop());
        self.clients.awaiting.retain_mut(|a| {
            if !any && a.node != node {
                return true;
            }
            match Pin::new(&mut a.receipt).poll(&mut cx) {
                Poll::Ready(result) => {
                    answered.push((a.client, a.op, a.node, a.receipt.was_appended(), result));
                    false
                }
                Poll::Pending => true,
            }
        });
        for (client, op, asked, appended, result) in answered {
            if appended {
                self.clients.states[client as usize].guess = asked;
            }
            self.on_answer(client, op, asked, appended, result);
        }
    }

    /// What each answer means is [`crate::Receipt`]'s table, the same as for a `NodeHandle`.
    fn on_answer(
        &mut self,
        client: u64,
        op: usize,
        asked: NodeId,
        appended: bool,
        result: Result<Applied<S::Output>, Error>,
    ) {
        let resent = self.clients.resent.contains_key(&op);
        let result = match result {
            Err(e) if self.read_query(op).is_some() => {
                return self.on_read_failed(client, op, asked, e)
            }
            // NB: one attempt of a resent operation failed; another may have been applied, so
            // this says nothing about the operation: the timeout resends it.
            Err(e) if resent && !matches!(e, Error::NotLeader { .. }) => return,
            result => result,
        };
        #[cfg(test)]
        if let (true, Err(Error::NodePanicked { node, .. })) = (self.retry_node_panicked, &result) {
            // The bug: tried again elsewhere, as if refused (it may yet be applied).
            self.leave_failed_node(client, *node);
            self.clients.unsure.insert(op);
            return self.reply_later(ClientEvent::Redirect { client, op, hint: None });
        }
        let error = match result {
            Ok(applied) => {
                let output = applied.output;
                self.clients.answered.insert(op);
                return self.reply_later(ClientEvent::Reply { client, op, output });
            }
            Err(error) => error,
        };
        if !self.config.client_retries {
            return self.on_refusal(client, op, asked, error);
        }
        #[cfg(test)]
        let appended = appended && !self.retry_ignores_append;
        #[cfg(test)]
        let error = self.failure_as_refusal(error);
        // NB: `Client::propose`'s own rule decides what is retried, so the checkers judge it.
        match Retry::after(error, asked, appended) {
            Retry::At(leader) => {
                self.reply_later(ClientEvent::Redirect { client, op, hint: Some(leader) });
            }
            Retry::Elsewhere => self.reply_later(ClientEvent::Redirect { client, op, hint: None }),
            // The node went down with it after appending: unknown until the client times out.
            Retry::No(Error::NodeDown(_)) => {
                self.clients.unsure.insert(op);
            }
            // A snapshot covered its index before the node could tell: unknown.
            Retry::No(Error::Timeout) => {
                self.give_up(client, op, "outcome unknown");
            }
            // The node failed with it waiting (a panic, or a write that failed and may have
            // landed): unknown, and not retried (the command may be what failed it). As
            // `Client::propose`, the client leaves that node alone.
            Retry::No(ref e) if let Some(node) = failed_node(e, asked) => {
                self.leave_failed_node(client, node);
                self.give_up(client, op, "outcome unknown: node failed");
            }
            Retry::No(e) => {
                self.clients.history[op].not_applied = true;
                self.give_up(client, op, &format!("refused: {e}"));
            }
        }
    }

    /// A client that retries only what a node redirects: a refused or replaced proposal is
    /// recorded as never applied and given up, and a crash is waited out.
    fn on_refusal(&mut self, client: u64, op: usize, asked: NodeId, error: Error) {
        #[cfg(test)]
        let error = self.failure_as_refusal(error);
        match error {
            Error::NotLeader { leader_hint } => {
                self.reply_later(ClientEvent::Redirect { client, op, hint: leader_hint });
            }
            // Refused before appending while leadership moves: as `Client::propose` does
            // (`Retry::after`), the client follows it to the target. (Given up instead, it
            // stayed with the old leader, so a random transfer never moved the writes.)
            Error::TransferInProgress { to } => {
                self.reply_later(ClientEvent::Redirect { client, op, hint: Some(to) });
            }
            // The leader a forwarding node knew is down: never handed over, so the client
            // tries elsewhere.
            Error::LeaderUnreachable(_) => {
                self.reply_later(ClientEvent::Redirect { client, op, hint: None });
            }
            // Appended, then another entry was committed at its index: never applied.
            Error::ProposalDropped { .. } => {
                self.clients.history[op].not_applied = true;
                self.give_up(client, op, "entry replaced");
            }
            // The node went down with it: the outcome is unknown until the client times out.
            Error::NodeDown(_) => {}
            // A snapshot covered its index before the node could tell: unknown.
            Error::Timeout => self.give_up(client, op, "outcome unknown"),
            // The node failed with it waiting (a panic, or a write that failed and may have
            // landed): unknown.
            ref e if let Some(node) = failed_node(e, asked) => {
                self.leave_failed_node(client, node);
                self.give_up(client, op, "outcome unknown: node failed");
            }
            e => {
                self.clients.history[op].not_applied = true;
                self.give_up(client, op, &format!("refused: {e}"));
            }
        }
    }

    /// A read changes nothing: whatever failed, it took no effect; retry it elsewhere.
    fn on_read_failed(&mut self, client: u64, op: usize, asked: NodeId, error: Error) {
        if let Some(node) = failed_node(&error, asked) {
            self.leave_failed_node(client, node);
        }
        match error {
            Error::NotLeader { leader_hint } => {
                self.reply_later(ClientEvent::Redirect { client, op, hint: leader_hint });
            }
            Error::LeaderUnreachable(_) => {
                self.reply_later(ClientEvent::Redirect { client, op, hint: None });
            }
            // NB: as `Client::read` does, a retrying client tries any failed read again.
            _ if self.config.client_retries => {
                self.reply_later(ClientEvent::Redirect { client, op, hint: None });
            }
            Error::NodeDown(_) => {}
            e => {
                self.clients.history[op].not_applied = true;
                self.give_up(client, op, &format!("read failed: {e}"));
            }
        }
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

    fn complete(&mut self, client: u64, op: usize, output: S::Output) {
        if !self.clients.is_pending(client, op) {
            return;
        }
        self.note_args(format_args!("c{client} complete #{op} {output:?}"));
        if let Some(workload) = self.clients.workload.as_mut() {
            workload.observe(client, &self.clients.history[op].command, &output);
        }
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
        if self.config.retry_timeouts && self.clients.retries(op) < 10 {
            self.note_args(format_args!("c{client} retry #{op}"));
            self.clients.unsure.insert(op); // (the attempt left behind may yet be applied)
            let timeout = super::micros(self.config.op_timeout);
            self.schedule(timeout, Event::Client(ClientEvent::Timeout { client, op }));
            return self.send_request(client, op, next, 0);
        }
        if self.config.client_retries && !self.timeout_may_be_applied(op) {
            // `Client::propose`'s `Unavailable`: refused or replaced every time.
            self.clients.history[op].not_applied = true;
            self.stats.unavailable += 1;
            return self.give_up(client, op, "unavailable: never applied");
        }
        self.give_up(client, op, "timeout");
    }

    /// Whether `op`, timing out, may have been applied.
    fn timeout_may_be_applied(&self, op: usize) -> bool {
        let appended = self.clients.may_be_appended(op);
        #[cfg(test)]
        let appended = appended && !self.timeout_claims_unavailable;
        appended || self.clients.answered.contains(&op)
    }

    /// A client whose node failed asks the next member from now on, as `Client::propose`
    /// drops a failed node's handle until it is restarted.
    fn leave_failed_node(&mut self, client: u64, failed: NodeId) {
        let next = self.next_member(failed);
        let state = &mut self.clients.states[client as usize];
        if state.guess == failed {
            state.guess = next;
        }
    }

    /// Test-only bug: a failed node's answer (`NodePanicked`, `Storage`) taken as "never
    /// applied" (as `ProposalDropped` says), which a retrying client retries and any other
    /// records as never applied.
    #[cfg(test)]
    fn failure_as_refusal(&self, error: Error) -> Error {
        match error {
            Error::NodePanicked { .. } | Error::Storage(_) if self.failure_claims_refused => {
                Error::ProposalDropped { index: crate::LogIndex(0), term: crate::Term(0) }
            }
            error => error,
        }
    }

    fn give_up(&mut self, client: u64, op: usize, why: &str) {
        if !self.clients.is_pending(client, op) {
            return;
        }
        self.note_args(format_args!("c{client} unknown #{op} ({why})"));
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
