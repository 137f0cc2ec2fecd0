//! [`Cluster`]: the handle users and tests hold. It starts, kills, restarts, adds and removes
//! node threads, routes their messages through the [`Router`], and offers proposals that find
//! the leader themselves.
//!
//! Ownership: the cluster owns every node's request and shutdown `Sender`, its `JoinHandle` and
//! its `MemStorage` (so a killed node restarts from what it persisted). The router owns the
//! inbox `Sender`s. Dropping the cluster shuts every node down and joins every thread.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use super::node::{Applied, Channels, NodeLoop, NodeStatus, ProposalEvent, Request};
use crate::transport::Router;
use crate::config::Config;
use crate::core::{MembershipChange, Role};
use crate::error::{ConfigError, Error};
use crate::message::Configuration;
use crate::state_machine::StateMachine;
use crate::storage::MemStorage;
use crate::types::{LogIndex, NodeId, Term};

/// How long cluster-level operations keep retrying by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

type Factory<S> = Arc<dyn Fn(NodeId) -> S + Send + Sync>;

/// A proposal in flight: tells where the entry went, and waits for its output.
pub struct Receipt<O> {
    node: NodeId,
    events: Receiver<ProposalEvent<O>>,
    appended: Option<(LogIndex, Term)>,
    /// The final outcome, once received: later calls return it again.
    done: Option<Result<Applied<O>, Error>>,
}

impl<O: Clone> Receipt<O> {
    fn new(node: NodeId, events: Receiver<ProposalEvent<O>>) -> Self {
        Receipt { node, events, appended: None, done: None }
    }

    /// The node the proposal was sent to.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether the node reported appending the entry (then its fate is decided by the log).
    pub fn was_appended(&self) -> bool {
        self.appended.is_some() || matches!(self.done, Some(Ok(_)))
    }

    /// The log index and term the entry was given, waiting up to `timeout` for the leader to
    /// append it. Fails with the leader's refusal (e.g. `NotLeader`) if it was not appended.
    pub fn position(&mut self, timeout: Duration) -> Result<(LogIndex, Term), Error> {
        let deadline = Instant::now() + timeout;
        while self.appended.is_none() && self.done.is_none() {
            self.receive(deadline)?;
        }
        match (&self.appended, &self.done) {
            (Some(position), _) => Ok(*position),
            (None, Some(result)) => result.clone().map(|a| (a.index, a.term)),
            (None, None) => unreachable!("loop ends with one of them set"),
        }
    }

    /// Waits up to `timeout` for the command to be applied on the leader; returns its output.
    /// `Err(Timeout)` or `Err(NodeDown)` after the entry was appended mean the outcome is
    /// unknown: the entry may still commit.
    pub fn wait(&mut self, timeout: Duration) -> Result<Applied<O>, Error> {
        let deadline = Instant::now() + timeout;
        while self.done.is_none() {
            self.receive(deadline)?;
        }
        self.done.clone().expect("loop ends once done")
    }

    fn receive(&mut self, deadline: Instant) -> Result<(), Error> {
        match self.events.recv_deadline(deadline) {
            Ok(ProposalEvent::Appended { index, term }) => self.appended = Some((index, term)),
            Ok(ProposalEvent::Done(result)) => self.done = Some(result),
            Err(RecvTimeoutError::Timeout) => return Err(Error::Timeout),
            Err(RecvTimeoutError::Disconnected) => return Err(Error::NodeDown(self.node)),
        }
        Ok(())
    }
}

/// A handle to one node: proposals sent here fail with `NotLeader` unless it leads.
pub struct NodeHandle<S: StateMachine> {
    id: NodeId,
    requests: Sender<Request<S>>,
}

impl<S: StateMachine> Clone for NodeHandle<S> {
    fn clone(&self) -> Self {
        NodeHandle { id: self.id, requests: self.requests.clone() }
    }
}

impl<S: StateMachine> NodeHandle<S> {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Sends a proposal without waiting; the receipt tells its index and output later.
    pub fn propose_async(&self, command: S::Command) -> Result<Receipt<S::Output>, Error> {
        self.send_proposal(command, true)
    }

    /// Proposes and waits until the command is applied on this node (which must lead).
    pub fn propose(
        &self,
        command: S::Command,
        timeout: Duration,
    ) -> Result<Applied<S::Output>, Error> {
        self.send_proposal(command, false)?.wait(timeout)
    }

    fn send_proposal(
        &self,
        command: S::Command,
        positioned: bool,
    ) -> Result<Receipt<S::Output>, Error> {
        let (reply, events) = bounded(2);
        let request = Request::Propose { command, reply, positioned };
        self.requests.send(request).map_err(|_| Error::NodeDown(self.id))?;
        Ok(Receipt::new(self.id, events))
    }

    /// The node's current status.
    pub fn status(&self, timeout: Duration) -> Result<NodeStatus, Error> {
        let (reply, rx) = bounded(1);
        self.requests.send(Request::Status { reply }).map_err(|_| Error::NodeDown(self.id))?;
        rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => Error::Timeout,
            RecvTimeoutError::Disconnected => Error::NodeDown(self.id),
        })
    }

    /// Asks this node (which must lead) to make a membership change, waiting up to `timeout`
    /// for it to commit. Refusals are typed: `NotLeader`, `ChangeInProgress`, `LeaderNotReady`,
    /// `AlreadyMember`, `NotMember`, `LastVoter`, `CatchUpFailed`. [`Cluster::add_node`] and
    /// [`Cluster::remove_node`] wrap this with leader discovery and retries.
    pub fn change_membership(
        &self,
        change: MembershipChange,
        timeout: Duration,
    ) -> Result<Configuration, Error> {
        self.change(change, Instant::now() + timeout)
    }

    fn change(&self, change: MembershipChange, deadline: Instant) -> Result<Configuration, Error> {
        let (reply, rx) = bounded(1);
        self.requests
            .send(Request::ChangeMembership { change, reply })
            .map_err(|_| Error::NodeDown(self.id))?;
        match rx.recv_deadline(deadline) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(Error::NodeDown(self.id)),
        }
    }
}

/// What to do after a failed proposal attempt.
enum Retry {
    /// Try the leader this node named.
    At(NodeId),
    /// Try another node.
    Elsewhere,
    /// Give up with this error (the outcome may be unknown).
    No(Error),
}

/// A running node thread.
struct Running<S: StateMachine> {
    handle: NodeHandle<S>,
    shutdown: Sender<()>,
    thread: JoinHandle<()>,
}

/// One node slot: its storage always; its thread while running.
struct Slot<S: StateMachine> {
    storage: MemStorage<S::Command>,
    running: Option<Running<S>>,
    removed: bool,
}

/// A cluster of node threads in this process.
pub struct Cluster<S: StateMachine> {
    config: Config,
    factory: Factory<S>,
    router: Arc<Router<S::Command>>,
    slots: BTreeMap<NodeId, Slot<S>>,
    next_id: u64,
    /// Last node seen leading, tried first by `propose`.
    leader_hint: Option<NodeId>,
}

impl<S: StateMachine> Cluster<S> {
    /// Starts `nodes` nodes with ids 1..=nodes, each with a state machine from `factory`.
    pub fn new(
        config: Config,
        nodes: usize,
        factory: impl Fn(NodeId) -> S + Send + Sync + 'static,
    ) -> Result<Self, Error> {
        let ids: Vec<NodeId> = (1..=nodes as u64).map(NodeId).collect();
        Self::with_ids(config, &ids, factory)
    }

    /// Starts one node per id; ids must be distinct.
    pub fn with_ids(
        config: Config,
        ids: &[NodeId],
        factory: impl Fn(NodeId) -> S + Send + Sync + 'static,
    ) -> Result<Self, Error> {
        config.validate()?;
        validate_ids(ids)?;
        let router = Arc::new(Router::new(config.seed));
        Router::start_delayer(&router);
        let mut cluster = Cluster {
            next_id: ids.iter().map(|id| id.0).max().unwrap_or(0) + 1,
            config,
            factory: Arc::new(factory),
            router,
            slots: BTreeMap::new(),
            leader_hint: None,
        };
        let base = Configuration::new(ids.iter().copied());
        for &id in ids {
            cluster.slots.insert(
                id,
                Slot { storage: MemStorage::new(base.clone()), running: None, removed: false },
            );
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, id: NodeId) -> Result<(), Error> {
        let slot = self.slots.get(&id).ok_or(Error::UnknownNode(id))?;
        let (inbox_tx, inbox) = bounded(self.config.inbox_capacity);
        let (requests_tx, requests) = bounded(self.config.inbox_capacity);
        let (shutdown, shutdown_rx) = bounded(1);
        let node = NodeLoop::new(
            id,
            &self.config,
            (self.factory)(id),
            slot.storage.clone(),
            Arc::clone(&self.router),
        )?;
        let channels = Channels { inbox, requests, shutdown: shutdown_rx };
        let tick = self.config.tick;
        let thread = std::thread::Builder::new()
            .name(format!("raft-n{}", id.0))
            .spawn(move || {
                let _span = tracing::info_span!("node", id = %id).entered();
                node.run(channels, tick);
            })
            .map_err(|e| Error::Storage(format!("spawning thread: {e}")))?;
        self.router.connect(id, inbox_tx);
        let handle = NodeHandle { id, requests: requests_tx };
        self.slot_mut(id)?.running = Some(Running { handle, shutdown, thread });
        Ok(())
    }

    fn slot_mut(&mut self, id: NodeId) -> Result<&mut Slot<S>, Error> {
        self.slots.get_mut(&id).ok_or(Error::UnknownNode(id))
    }

    /// Every node id ever started and not removed, running or not.
    pub fn ids(&self) -> Vec<NodeId> {
        self.slots.iter().filter(|(_, s)| !s.removed).map(|(&id, _)| id).collect()
    }

    /// A handle to a running node.
    pub fn node(&self, id: NodeId) -> Result<NodeHandle<S>, Error> {
        let slot = self.slots.get(&id).ok_or(Error::UnknownNode(id))?;
        slot.running.as_ref().map(|r| r.handle.clone()).ok_or(Error::NodeDown(id))
    }

    /// Whether the node's thread is running.
    pub fn is_running(&self, id: NodeId) -> bool {
        self.slots.get(&id).is_some_and(|s| s.running.is_some())
    }

    /// Crashes a node: its thread stops; only what it persisted survives.
    pub fn kill(&mut self, id: NodeId) -> Result<(), Error> {
        let running = self.slot_mut(id)?.running.take().ok_or(Error::NodeDown(id))?;
        self.router.disconnect(id);
        let _ = running.shutdown.send(());
        drop(running.handle);
        let _ = running.thread.join();
        tracing::info!(node = %id, "killed");
        Ok(())
    }

    /// Restarts a killed node from its persisted state; its state machine is rebuilt by
    /// re-applying the log as entries are known committed.
    pub fn restart(&mut self, id: NodeId) -> Result<(), Error> {
        let slot = self.slots.get(&id).ok_or(Error::UnknownNode(id))?;
        if slot.removed {
            return Err(Error::NotMember(id));
        }
        if slot.running.is_some() {
            return Err(Error::AlreadyRunning(id));
        }
        tracing::info!(node = %id, "restarting");
        self.spawn(id)
    }

    /// The status of one node (`Err(NodeDown)` if killed).
    pub fn status(&self, id: NodeId) -> Result<NodeStatus, Error> {
        self.node(id)?.status(DEFAULT_TIMEOUT)
    }

    /// The status of every running node.
    pub fn statuses(&self) -> Vec<NodeStatus> {
        let handles: Vec<_> = self
            .slots
            .values()
            .filter_map(|s| s.running.as_ref())
            .map(|r| r.handle.clone())
            .collect();
        handles.iter().filter_map(|h| h.status(DEFAULT_TIMEOUT).ok()).collect()
    }

    /// The running leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        let statuses = self.statuses();
        statuses
            .iter()
            .filter(|s| s.core.role == Role::Leader)
            .max_by_key(|s| s.core.term)
            .map(|s| s.core.id)
    }

    /// Waits until some node leads, up to `timeout`.
    pub fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader() {
                return Ok(id);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            std::thread::sleep(self.config.tick);
        }
    }

    /// Proposes `command` to the cluster: finds the leader (following `NotLeader` hints),
    /// retries until [`DEFAULT_TIMEOUT`], and returns the output once applied on the leader.
    pub fn propose(&mut self, command: S::Command) -> Result<Applied<S::Output>, Error> {
        self.propose_timeout(command, DEFAULT_TIMEOUT)
    }

    /// [`Cluster::propose`] with an explicit deadline. `Err(Timeout)` means the outcome is
    /// unknown: the command may still be applied.
    pub fn propose_timeout(
        &mut self,
        command: S::Command,
        timeout: Duration,
    ) -> Result<Applied<S::Output>, Error> {
        let deadline = Instant::now() + timeout;
        let mut target = self.leader_hint.or_else(|| self.ids().first().copied());
        let mut attempt = 0usize;
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            let id = target.ok_or(Error::Shutdown)?;
            match self.try_propose(id, command.clone(), deadline) {
                Ok(applied) => {
                    self.leader_hint = Some(id);
                    return Ok(applied);
                }
                Err(Retry::At(hint)) => target = Some(hint),
                Err(Retry::Elsewhere) => {
                    attempt += 1;
                    target = self.next_candidate(id, attempt);
                    std::thread::sleep(self.config.tick.min(Duration::from_millis(5)));
                }
                Err(Retry::No(e)) => return Err(e),
            }
        }
    }

    /// One attempt at node `id`. Retrying is safe only when the command was never applied: it was
    /// never appended (not the leader, node down before taking it) or a later leader replaced it
    /// (`ProposalDropped`). Once appended, a timeout or a crash leaves the outcome unknown, and a
    /// retry could apply the command twice (exactly-once needs client sessions, §8).
    fn try_propose(
        &self,
        id: NodeId,
        command: S::Command,
        deadline: Instant,
    ) -> Result<Applied<S::Output>, Retry> {
        let mut receipt = self
            .node(id)
            .and_then(|n| n.send_proposal(command, true))
            .map_err(|_| Retry::Elsewhere)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match receipt.wait(remaining) {
            Ok(applied) => Ok(applied),
            Err(Error::NotLeader { leader_hint: Some(hint) }) if hint != id => Err(Retry::At(hint)),
            Err(Error::NotLeader { .. } | Error::ProposalDropped { .. }) => Err(Retry::Elsewhere),
            Err(Error::NodeDown(_)) if !receipt.was_appended() => Err(Retry::Elsewhere),
            Err(e) => Err(Retry::No(e)),
        }
    }

    /// Sends a proposal to the node believed to lead, without waiting. The receipt reports
    /// `NotLeader` if that belief is stale; use [`Cluster::propose`] to have retries done for you.
    pub fn propose_async(&mut self, command: S::Command) -> Result<Receipt<S::Output>, Error> {
        let id = match self.leader_hint {
            Some(id) if self.is_running(id) => id,
            _ => self.wait_for_leader(DEFAULT_TIMEOUT)?,
        };
        self.leader_hint = Some(id);
        self.node(id)?.propose_async(command)
    }

    fn next_candidate(&self, after: NodeId, attempt: usize) -> Option<NodeId> {
        let running: Vec<NodeId> =
            self.ids().into_iter().filter(|&id| self.is_running(id)).collect();
        if running.is_empty() {
            return None;
        }
        let pos = running.iter().position(|&id| id == after).unwrap_or(0);
        Some(running[(pos + attempt) % running.len()])
    }

    pub(super) fn router(&self) -> &Router<S::Command> {
        &self.router
    }

    /// The cluster's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds a new node (a fresh id, never reused): it joins as a learner, catches up, and is
    /// promoted to voter. Waits until the change commits or fails.
    pub fn add_node(&mut self) -> Result<NodeId, Error> {
        let id = NodeId(self.next_id);
        self.next_id += 1;
        let storage = MemStorage::new(Configuration::default());
        self.slots.insert(id, Slot { storage, running: None, removed: false });
        self.spawn(id)?;
        match self.change_membership(MembershipChange::AddNode(id)) {
            Ok(_) => Ok(id),
            Err(e) => {
                // Best effort: do not leave a learner nobody will promote in the configuration.
                if !matches!(e, Error::CatchUpFailed(_)) {
                    let _ = self.change_membership(MembershipChange::RemoveNode(id));
                }
                let _ = self.kill(id);
                self.slot_mut(id)?.removed = true;
                Err(e)
            }
        }
    }

    /// Removes a node from the configuration, then stops it. Removing the leader makes it step
    /// down once the change commits; the others elect a new leader.
    pub fn remove_node(&mut self, id: NodeId) -> Result<(), Error> {
        let slot = self.slots.get(&id).ok_or(Error::UnknownNode(id))?;
        if slot.removed {
            return Err(Error::NotMember(id));
        }
        self.change_membership(MembershipChange::RemoveNode(id))?;
        if self.is_running(id) {
            self.kill(id)?;
        }
        self.slot_mut(id)?.removed = true;
        Ok(())
    }

    /// Sends a membership change to the leader, following hints and retrying transient refusals
    /// (`LeaderNotReady`, `ChangeInProgress`, leader changes) until the deadline.
    pub fn change_membership(&mut self, change: MembershipChange) -> Result<Configuration, Error> {
        let deadline = Instant::now() + DEFAULT_TIMEOUT.max(self.config.election_timeout.end * 60);
        let mut retried = false;
        loop {
            let leader =
                self.wait_for_leader(deadline.saturating_duration_since(Instant::now()))?;
            match self.node(leader).and_then(|n| n.change(change, deadline)) {
                Ok(config) => return Ok(config),
                Err(e @ (Error::AlreadyMember(_) | Error::NotMember(_))) if retried => {
                    return self.settle_change(change, e);
                }
                Err(e @ (Error::AlreadyMember(_) | Error::NotMember(_) | Error::LastVoter(_))) => {
                    return Err(e)
                }
                Err(e @ (Error::CatchUpFailed(_) | Error::Timeout)) => return Err(e),
                Err(_) if Instant::now() < deadline => {
                    retried = true;
                    std::thread::sleep(self.config.tick);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After a retry, "already a member" / "not a member" may mean an earlier attempt, whose
    /// leader lost leadership after appending it, took effect: confirm on the leader.
    fn settle_change(
        &self,
        change: MembershipChange,
        error: Error,
    ) -> Result<Configuration, Error> {
        let Some(config) = self.leader().and_then(|l| self.status(l).ok()).map(|s| s.core.config)
        else {
            return Err(error);
        };
        let done = match change {
            MembershipChange::AddNode(id) => config.voters.contains(&id),
            MembershipChange::RemoveNode(id) => !config.contains(id),
        };
        if done {
            Ok(config)
        } else {
            Err(error)
        }
    }

    /// Stops every node and joins every thread.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        let ids: Vec<NodeId> = self.slots.keys().copied().collect();
        for id in ids {
            let _ = self.kill(id);
        }
        self.router.stop_delayer();
    }
}

impl<S: StateMachine> Drop for Cluster<S> {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn validate_ids(ids: &[NodeId]) -> Result<(), ConfigError> {
    if ids.is_empty() {
        return Err(ConfigError::NoNodes);
    }
    let mut seen = std::collections::BTreeSet::new();
    match ids.iter().find(|id| !seen.insert(**id)) {
        Some(&dup) => Err(ConfigError::DuplicateNode(dup)),
        None => Ok(()),
    }
}
