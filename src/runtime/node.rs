//! One node's thread: a crossbeam `select!` loop over its peer inbox, client requests, a
//! control channel and a ticker. It feeds the core and executes the core's actions in order:
//! persist, send, apply, answer clients.
//!
//! Owns the node's [`Core`], state machine and storage handle. The only blocking it ever does is
//! waiting in `select!`: sends to peers go through the router, which drops rather than blocks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Receiver, Sender};

use crate::transport::Router;
use crate::config::Config;
use crate::core::{Action, Core, Input, MembershipChange, Role, Status};
use crate::error::Error;
use crate::message::{Configuration, Message};
use crate::state_machine::{apply_entry, StateMachine};
use crate::storage::Storage;
use crate::types::{LogIndex, NodeId, Term};

/// The outcome of a proposal that was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied<O> {
    /// The log index the command was given.
    pub index: LogIndex,
    /// The term in which it was appended.
    pub term: Term,
    /// What the state machine returned.
    pub output: O,
}

/// What a node tells a proposer, in order: first where the entry went, then its outcome.
#[derive(Debug)]
pub(crate) enum ProposalEvent<O> {
    Appended { index: LogIndex, term: Term },
    Done(Result<Applied<O>, Error>),
}

/// A node's status as seen by the cluster: the core's status plus the state machine digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The core's view: role, term, leader, commit index, last applied, configuration.
    pub core: Status,
    /// `StateMachine::digest` of the node's state machine.
    pub digest: u64,
}

/// Client requests to one node.
pub(crate) enum Request<S: StateMachine> {
    /// `positioned`: also report `Appended` (costs the proposer a wake-up, so only on request).
    Propose {
        command: S::Command,
        reply: Sender<ProposalEvent<S::Output>>,
        positioned: bool,
    },
    ChangeMembership {
        change: MembershipChange,
        reply: Sender<Result<Configuration, Error>>,
    },
    Status {
        reply: Sender<NodeStatus>,
    },
}

/// How many queued client requests one step may batch into a single `Input::Propose`.
const MAX_PROPOSAL_BATCH: usize = 1024;
/// How many times an idle node yields, polling its inbox, before it parks.
const SPIN_ROUNDS: usize = 64;
/// How many peer messages to handle before looking at the other channels again.
const MAX_MESSAGE_BURST: usize = 256;

/// A proposal appended at (index, term), waiting to be applied.
type Pending<O> = (LogIndex, Term, Sender<ProposalEvent<O>>);

/// Where to send a proposal's events, and whether it wants `Appended`.
type Responder<O> = (Sender<ProposalEvent<O>>, bool);

/// Everything the node thread owns.
pub(crate) struct NodeLoop<S: StateMachine, St: Storage<S::Command>> {
    core: Core<S::Command>,
    state_machine: S,
    storage: St,
    router: Arc<Router<S::Command>>,
    /// Proposals waiting for their index to be applied, in index order.
    pending: VecDeque<Pending<S::Output>>,
    /// Responders of the batch being stepped, until `Action::Proposed` names their indexes.
    batch: Vec<Responder<S::Output>>,
    change_reply: Option<Sender<Result<Configuration, Error>>>,
    actions: Vec<Action<S::Command>>,
    last_seen: (Role, Term, Option<NodeId>),
}

/// The node's channels.
pub(crate) struct Channels<S: StateMachine> {
    pub inbox: Receiver<Message<S::Command>>,
    pub requests: Receiver<Request<S>>,
    pub shutdown: Receiver<()>,
}

impl<S: StateMachine, St: Storage<S::Command>> NodeLoop<S, St> {
    /// Loads persisted state and builds the core. Fails if the storage cannot be read.
    pub fn new(
        id: NodeId,
        config: &Config,
        state_machine: S,
        storage: St,
        router: Arc<Router<S::Command>>,
    ) -> Result<Self, Error> {
        let state = storage.load().map_err(|e| Error::Storage(e.to_string()))?;
        let core = Core::new(id, config, state);
        let last_seen = (core.role(), core.term(), None);
        Ok(NodeLoop {
            core,
            state_machine,
            storage,
            router,
            pending: VecDeque::new(),
            batch: Vec::new(),
            change_reply: None,
            actions: Vec::new(),
            last_seen,
        })
    }

    /// Runs until shutdown or a storage failure.
    pub fn run(mut self, channels: Channels<S>, tick: Duration) {
        let ticker = crossbeam_channel::tick(tick);
        loop {
            let result = match self.poll_briefly(&channels) {
                Some(result) => result.and_then(|()| self.poll_timers(&channels, &ticker)),
                None => self.wait(&channels, &ticker),
            };
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::error!(error = %e, "node stopping");
                    return;
                }
            }
        }
    }

    /// Before parking, yield-spin a little: the next message of a round trip usually arrives
    /// within microseconds, and a parked thread takes several to wake.
    fn poll_briefly(&mut self, channels: &Channels<S>) -> Option<Result<(), Error>> {
        for _ in 0..SPIN_ROUNDS {
            if let Ok(msg) = channels.inbox.try_recv() {
                return Some(self.on_messages(msg, &channels.inbox));
            }
            if let Ok(req) = channels.requests.try_recv() {
                return Some(self.on_requests(req, &channels.requests));
            }
            std::thread::yield_now();
        }
        None
    }

    /// After work found by spinning: a due tick or a shutdown must not starve.
    fn poll_timers(
        &mut self,
        channels: &Channels<S>,
        ticker: &Receiver<std::time::Instant>,
    ) -> Result<bool, Error> {
        if channels.shutdown.try_recv().is_ok() {
            return Ok(false);
        }
        if ticker.try_recv().is_ok() {
            self.step(Input::Tick)?;
        }
        Ok(true)
    }

    fn wait(
        &mut self,
        channels: &Channels<S>,
        ticker: &Receiver<std::time::Instant>,
    ) -> Result<bool, Error> {
        select! {
            recv(channels.shutdown) -> _ => Ok(false),
            recv(channels.inbox) -> msg => match msg {
                Ok(msg) => self.on_messages(msg, &channels.inbox).map(|()| true),
                Err(_) => Ok(false),
            },
            recv(channels.requests) -> req => match req {
                Ok(req) => self.on_requests(req, &channels.requests).map(|()| true),
                Err(_) => Ok(false),
            },
            recv(ticker) -> _ => self.step(Input::Tick).map(|()| true),
        }
    }

    fn on_messages(
        &mut self,
        first: Message<S::Command>,
        inbox: &Receiver<Message<S::Command>>,
    ) -> Result<(), Error> {
        tracing::debug!(from = %first.from, term = %first.term, body = body_name(&first), "recv");
        self.step(Input::Receive(first))?;
        for msg in inbox.try_iter().take(MAX_MESSAGE_BURST) {
            tracing::debug!(from = %msg.from, term = %msg.term, body = body_name(&msg), "recv");
            self.step(Input::Receive(msg))?;
        }
        Ok(())
    }

    /// Batches consecutive proposals into one `Input::Propose` (thesis §10.2.2).
    fn on_requests(
        &mut self,
        first: Request<S>,
        requests: &Receiver<Request<S>>,
    ) -> Result<(), Error> {
        let mut commands = Vec::new();
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Propose { command, reply, positioned } => {
                    commands.push(command);
                    self.batch.push((reply, positioned));
                }
                other => self.on_other_request(other)?,
            }
            if commands.len() < MAX_PROPOSAL_BATCH {
                next = requests.try_recv().ok();
            }
        }
        if commands.is_empty() {
            return Ok(());
        }
        self.step(Input::Propose(commands))
    }

    fn on_other_request(&mut self, req: Request<S>) -> Result<(), Error> {
        match req {
            Request::Propose { .. } => unreachable!("handled by on_requests"),
            Request::ChangeMembership { change, reply } => {
                if self.change_reply.is_some() {
                    let _ = reply.send(Err(Error::ChangeInProgress)); // one change at a time
                    return Ok(());
                }
                self.change_reply = Some(reply);
                self.step(Input::ChangeMembership(change))
            }
            Request::Status { reply } => {
                let status =
                    NodeStatus { core: self.core.status(), digest: self.state_machine.digest() };
                let _ = reply.send(status);
                Ok(())
            }
        }
    }

    /// One core step, then its actions in order.
    fn step(&mut self, input: Input<S::Command>) -> Result<(), Error> {
        let mut actions = std::mem::take(&mut self.actions);
        self.core.step(input, &mut actions);
        let result = actions.drain(..).try_for_each(|a| self.execute(a));
        self.actions = actions;
        self.trace_role_change();
        result
    }

    fn execute(&mut self, action: Action<S::Command>) -> Result<(), Error> {
        match action {
            Action::PersistHardState(hs) => {
                self.storage.save_hard_state(hs).map_err(storage_error)?
            }
            Action::PersistEntries { from } => {
                let entries = self.core.log().entries_from(from, usize::MAX);
                self.storage.append(from, entries).map_err(storage_error)?;
            }
            Action::Send(msg) => {
                tracing::debug!(to = %msg.to, term = %msg.term, body = body_name(&msg), "send");
                self.router.send(msg);
            }
            Action::Proposed { first, term, count } => self.on_proposed(first, term, count),
            Action::Rejected(error) => self.reject_batch(error),
            Action::Apply { from, to } => self.apply(from, to),
            Action::ChangeDone(result) => {
                if let Some(reply) = self.change_reply.take() {
                    let _ = reply.send(result);
                }
            }
            Action::Notice(_) => {}
        }
        Ok(())
    }

    fn on_proposed(&mut self, first: LogIndex, term: Term, count: usize) {
        debug_assert_eq!(count, self.batch.len());
        for (i, (reply, positioned)) in self.batch.drain(..).enumerate() {
            let index = LogIndex(first.0 + i as u64);
            if positioned {
                let _ = reply.send(ProposalEvent::Appended { index, term });
            }
            self.pending.push_back((index, term, reply));
        }
    }

    fn reject_batch(&mut self, error: Error) {
        for (reply, _) in self.batch.drain(..) {
            let _ = reply.send(ProposalEvent::Done(Err(error.clone())));
        }
    }

    /// ALL-1: apply committed commands in order and answer their proposers.
    fn apply(&mut self, from: LogIndex, to: LogIndex) {
        for index in from.0..=to.0 {
            let index = LogIndex(index);
            let entry = self.core.log().entry(index).expect("committed entries are in the log");
            let output = apply_entry(&mut self.state_machine, index, entry);
            let term = entry.term;
            tracing::trace!(index = %index, term = %term, "applied");
            self.answer(index, term, output);
        }
    }

    /// Answers the proposer of `index`: its output if the entry is still its own, otherwise
    /// `ProposalDropped` (a later leader replaced it, so it was never applied).
    fn answer(&mut self, index: LogIndex, term: Term, output: Option<S::Output>) {
        while let Some((i, t, _)) = self.pending.front() {
            if *i > index {
                return;
            }
            let (i, t, reply) = (*i, *t, self.pending.pop_front().expect("front exists").2);
            let result = match (&output, i == index && t == term) {
                (Some(out), true) => Ok(Applied { index, term, output: out.clone() }),
                _ => Err(Error::ProposalDropped { index: i, term: t }),
            };
            let _ = reply.send(ProposalEvent::Done(result));
        }
    }

    fn trace_role_change(&mut self) {
        let status = (self.core.role(), self.core.term(), self.core.leader());
        if status != self.last_seen {
            let (role, term, leader) = status;
            tracing::info!(role = ?role, term = %term, leader = ?leader.map(|l| l.0), "state");
            self.last_seen = status;
        }
    }
}

impl<S: StateMachine, St: Storage<S::Command>> Drop for NodeLoop<S, St> {
    /// A crashed node's proposers learn it went down rather than waiting out their deadline.
    fn drop(&mut self) {
        let id = self.core.id();
        for (_, _, reply) in self.pending.drain(..) {
            let _ = reply.send(ProposalEvent::Done(Err(Error::NodeDown(id))));
        }
        if let Some(reply) = self.change_reply.take() {
            let _ = reply.send(Err(Error::NodeDown(id)));
        }
    }
}

fn storage_error(e: std::io::Error) -> Error {
    Error::Storage(e.to_string())
}

fn body_name<C>(msg: &Message<C>) -> &'static str {
    use crate::message::Body;
    match &msg.body {
        Body::RequestVote(rv) if rv.pre_vote => "PreVote",
        Body::RequestVote(_) => "RequestVote",
        Body::RequestVoteReply(r) if r.pre_vote => "PreVoteReply",
        Body::RequestVoteReply(_) => "RequestVoteReply",
        Body::AppendEntries(_) => "AppendEntries",
        Body::AppendEntriesReply(_) => "AppendEntriesReply",
        Body::TimeoutNow => "TimeoutNow",
    }
}
