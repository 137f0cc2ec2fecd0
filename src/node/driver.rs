//! [`Driver`]: the one place that turns the core's actions into effects, for the thread runtime
//! and the simulator alike.
//!
//! It owns a node's [`Core`], its [`Storage`], its [`Transport`], its state machine (through an
//! [`ApplyQueue`]) and the client requests waiting for answers, and executes each step's
//! actions in the contract's order: persist, send, apply, answer. Writes go out at once; one
//! sync at the end of a step, or of a batch of steps, makes them durable, and what depends on
//! them waits for it (a leader's AppendEntries excepted, thesis §10.2.1). It reads no clock: time
//! arrives as [`Driver::tick`], from a ticker thread in the runtime and from virtual time in the
//! simulator.
//!
//! In the background mode ([`Driver::sync_in_background`]) that sync runs off the node's
//! thread ([`Storage::start_sync`]): the driver hands the job to its runner
//! ([`Driver::take_sync_job`]) and goes on stepping; what waits for the sync runs when the
//! runner reports it done ([`Driver::sync_done`]). Each held action waits only for the writes
//! before it (writes are counted), so a leader keeps replicating, committing, applying and
//! answering while its own fsync runs: its answers depend on its term and vote and on what a
//! majority acknowledged, never on its own unsynced appends, which it counts towards
//! commitment only once synced.

use std::sync::Arc;

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::apply::{Applier, ApplyQueue, Backlog};
use super::metrics::Metrics;
use super::read::{LeaseClock, LeasePublisher, LeaseView, Monotonic, ReadFn};
use super::receipt::Responder;
use super::{Compaction, Forwarder, Measured, NodeStatus, Request, RpcCounts};
use crate::config::Config;
use crate::core::{Action, Core, Input, MembershipChange, ReadId, ReadPolicy, Role};
use crate::error::Error;
use crate::message::{Body, Configuration, Message, Snapshot};
use crate::state_machine::StateMachine;
use crate::storage::{Storage, SyncJob};
use crate::transport::{ByteBudget, Transport};
use crate::types::{LogIndex, NodeId, Term};

/// Test-only switches that break the driver's sync boundary, each caught by the simulator
/// (`sim/storage.rs`).
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SyncBugs {
    /// Nothing waits for a sync: replies, votes and answers leave before it (breaks ST-P1/P2).
    pub no_sync_holds: bool,
    /// A leader that defers its sync tells the core its log is durable anyway (breaks thesis
    /// §10.2.1: it counts appends a crash would lose towards commitment).
    pub deferral_claims_synced: bool,
    /// A leader's AppendEntries leave before its term and vote are durable: a single voter
    /// elected within one step reveals a term a crash can make it forget, and then leads that
    /// term a second time with a different log (found by the soak: nemesis seed 227919).
    pub reveal_before_term_durable: bool,
    /// A sync's io error is taken as success and the node runs on (PostgreSQL's fsync retry
    /// before 2018): the writes it covered may never be durable, yet the node acknowledges
    /// them and counts them towards commitment.
    pub sync_error_as_success: bool,
    /// A failed `save_hard_state` (an io error) is taken as success and the node runs on: it
    /// reveals a term and vote its storage never got (a vote sent, a candidacy or leadership
    /// announced), and after a restart from that storage it may vote again in that term.
    pub hard_state_error_ignored: bool,
}

/// How many queued client requests one step may batch into a single `Input::Propose`.
pub(crate) const MAX_PROPOSAL_BATCH: usize = 1024;

/// Where a node's committed entries are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApplyOn {
    /// In the driver's own step (the simulator's default).
    Inline,
    /// Queued for the runtime to run off the node loop (`Driver::backlog`), so a slow `apply`
    /// never delays heartbeats (and for the simulator's workers, `SimConfig::deferred_apply`).
    Deferred,
}

/// How much of a step's actions to execute: all of them, or only the first few (a simulated
/// crash between two actions; the rest are lost with the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Execute {
    All,
    First(usize),
}

/// An action held until the storage is synced; an apply holds its entries, read when it was
/// held.
enum Held<C> {
    Action(Action<C>),
    Apply(LogIndex, Vec<crate::message::Entry<C>>),
}

/// Sees each step's core and actions before they are executed: the simulator's checkers and
/// crash points. The runtime passes [`execute_all`].
pub(crate) type Observer<'a, C> = dyn FnMut(&Core<C>, &[Action<C>]) -> Execute + 'a;

/// The observer that lets every action run.
pub(crate) fn execute_all<C>(_: &Core<C>, _: &[Action<C>]) -> Execute {
    Execute::All
}

/// One node: core, storage, transport, state machine and pending requests. See the module docs.
/// `L`: the clock a published lease is measured on (see [`LeaseView`]).
pub(crate) struct Driver<S: StateMachine, St, T, L: LeaseClock = Monotonic> {
    core: Core<S::Command>,
    storage: St,
    transport: T,
    apply: ApplyQueue<S>,
    /// Responders of the proposals being stepped, until `Action::Proposed` names their indexes.
    batch: Vec<Responder<S::Output>>,
    change_reply: Option<Sender<Result<Configuration, Error>>>,
    compact_replies: Vec<Sender<Result<Compaction, Error>>>,
    /// Snapshots taken where the state machine lives, on their way back to the core.
    taken: (Sender<Arc<Snapshot>>, Receiver<Arc<Snapshot>>),
    /// The actions of the step being executed (kept to reuse the allocation).
    actions: Vec<Action<S::Command>>,
    rpcs: RpcCounts,
    /// Persist actions executed so far: the count a held action waits for.
    written: u64,
    /// The latest write a leader's answers depend on: every write but a leader's appends of
    /// its own new entries (see the module docs).
    critical: u64,
    /// How many writes are known durable.
    durable: u64,
    /// Sync off the node's thread (`sync_in_background`).
    background: bool,
    /// The background sync under way: the writes it covers and the last log index among them.
    in_flight: Option<(u64, LogIndex)>,
    /// A background sync's job, until the runner takes it.
    job: Option<SyncJob>,
    /// Actions waiting for a sync, in order, each with the write count it needs durable.
    held: std::collections::VecDeque<(u64, Held<S::Command>)>,
    /// Test-only switches that break the sync boundary.
    #[cfg(test)]
    pub(crate) bugs: SyncBugs,
    /// Test-only: a forwarded proposal lost with its leader claims it never reached it.
    #[cfg(test)]
    pub(crate) lost_forward_claims_unreachable: bool,
    /// Test-only bug: a proposal forwarded to the leader keeps its count, so its bytes never
    /// come back to this node's request budget, and the leader gives back bytes it never took.
    #[cfg(test)]
    pub(crate) forward_keeps_count: bool,
    /// `Config::defer_leader_sync`: a leader may leave its own appends unsynced.
    defer_leader_sync: bool,
    /// Inside `begin_batch` .. `end_batch`.
    batching: bool,
    /// A simulated crash cut a step short: nothing more runs (the node is about to be dropped).
    halted: bool,
    max_command_bytes: usize,
    last_seen: (Role, Term, Option<NodeId>),
    /// Reads handed to the core and not yet confirmed or failed, by the id they were given:
    /// one id for all the reads one `handle` call took, so a batch costs the core one id.
    reads: std::collections::BTreeMap<ReadId, Vec<ReadFn<S>>>,
    next_read: u64,
    metrics: Metrics,
    last_commit: LogIndex,
    /// The transfer under way: its target and who waits for it.
    transfer_reply: Option<(NodeId, Sender<Result<NodeId, Error>>)>,
    /// Where `Request::Forward` goes when this node does not lead (none: handled here).
    forwarder: Option<Forwarder<S>>,
    /// Publishes the lease for reads served off the node's thread (the runtime, leases on).
    lease: Option<LeasePublisher<L>>,
    /// The byte count of the node's inbox, for the metrics (the thread runtime).
    inbox: Option<Arc<ByteBudget>>,
    /// The node's request-queue budget (`Config::max_queued_request_bytes`), if counted.
    queued: Option<Arc<ByteBudget>>,
    /// Bytes of proposals taken off the request queue, not yet given back to `queued`: given
    /// back once per batch ([`Driver::handle`]), or when the node fails.
    queued_taken: usize,
}

impl<S, St, T, L> Driver<S, St, T, L>
where
    S: StateMachine,
    St: Storage<S::Command>,
    T: Transport<S::Command>,
    L: LeaseClock,
{
    /// Loads the node's persisted state and starts it as a follower.
    pub fn new(
        id: NodeId,
        config: &Config,
        state_machine: S,
        storage: St,
        transport: T,
        apply_on: ApplyOn,
    ) -> Result<Self, Error> {
        let state = storage.load().map_err(|e| Error::Storage(e.to_string()))?;
        crate::core::check_persistent_state(&state).map_err(|why| {
            Error::Storage(format!(
                "{id}'s storage loaded a state no node writes: {why}; the store is damaged, or \
                 lost or reordered writes (a step's hard state is written before its entries): \
                 repair or replace it, e.g. let the node rejoin empty as a new member"
            ))
        })?;
        let snapshot = state.snapshot.clone();
        let core = Core::new(id, config, state)
            .with_sizer(S::command_size)
            .with_entry_overhead(super::entry_overhead::<S>());
        let mut applier = Applier::new(id, state_machine, core.status().last_applied);
        if let Some(snapshot) = snapshot {
            applier.restore(&snapshot)?; // restart from a snapshot: apply only the tail
        }
        let taken = unbounded();
        let apply = match apply_on {
            ApplyOn::Inline => ApplyQueue::Inline(applier),
            ApplyOn::Deferred => {
                ApplyQueue::deferred(applier, taken.0.clone(), config.max_apply_backlog)
            }
        };
        let last_seen = (core.role(), core.term(), None);
        Ok(Driver {
            core,
            storage,
            transport,
            apply,
            batch: Vec::new(),
            change_reply: None,
            compact_replies: Vec::new(),
            taken,
            actions: Vec::new(),
            rpcs: RpcCounts::default(),
            written: 0,
            critical: 0,
            durable: 0,
            background: false,
            in_flight: None,
            job: None,
            held: std::collections::VecDeque::new(),
            #[cfg(test)]
            bugs: SyncBugs::default(),
            #[cfg(test)]
            lost_forward_claims_unreachable: false,
            #[cfg(test)]
            forward_keeps_count: false,
            defer_leader_sync: config.defer_leader_sync,
            batching: false,
            halted: false,
            max_command_bytes: config.max_command_bytes,
            last_seen,
            reads: std::collections::BTreeMap::new(),
            next_read: 0,
            metrics: Metrics::default(),
            last_commit: LogIndex(0),
            transfer_reply: None,
            forwarder: None,
            lease: None,
            inbox: None,
            queued: None,
            queued_taken: 0,
        })
    }

    pub fn core(&self) -> &Core<S::Command> {
        &self.core
    }

    /// The core, for the simulator's switches (invariant checks, test-only bugs).
    pub fn core_mut(&mut self) -> &mut Core<S::Command> {
        &mut self.core
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Runs `f` on the state machine as it is now: what has been applied, not what waits in
    /// the backlog.
    pub fn with_state_machine<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        match &self.apply {
            ApplyQueue::Inline(applier) => f(applier.state_machine()),
            ApplyQueue::Deferred(backlog) => backlog.with_state_machine(f),
        }
    }

    /// The deferred applier's work queue, for the runtime to drain off the node loop.
    pub fn backlog(&self) -> Option<&Arc<Backlog<S>>> {
        match &self.apply {
            ApplyQueue::Inline(_) => None,
            ApplyQueue::Deferred(backlog) => Some(backlog),
        }
    }

    /// What this node counted so far (its loop's part: a status adds the applier's and the
    /// caller-thread lease reads).
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The state machine's panic, once seen: the node must stop.
    pub fn failure(&self) -> Option<Error> {
        self.apply.failure()
    }

    /// One tick of the logical clock.
    pub fn tick(&mut self, observe: &mut Observer<'_, S::Command>) -> Result<(), Error> {
        self.step(Input::Tick, observe)
    }

    /// `n` ticks at once (`Input::Ticks`), the last due at `due`: the simulator's clock, which
    /// skips idle ticks.
    pub fn ticks_at(
        &mut self,
        n: u64,
        due: L::Time,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        self.step(Input::Ticks(n), observe)?;
        self.ticked_at(due);
        Ok(())
    }

    /// The core's current tick was due at `due` (ticks fed to the core directly, idle ones):
    /// a lease started at it is measured from there.
    pub fn ticked_at(&mut self, due: L::Time) {
        if let Some(lease) = &mut self.lease {
            lease.ticked(self.core.now_tick(), due);
        }
    }

    /// One tick, which was due at `due` (the runtime's ticker says when): lease reads off the
    /// node's thread measure the lease from such instants.
    pub fn tick_at(
        &mut self,
        due: L::Time,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        self.tick(observe)?;
        self.ticked_at(due);
        Ok(())
    }

    /// NB: the core's lease is counted in ticks; after a stall (missed ticks) it may outlive
    /// the deadline on the clock. The clock wins (thesis §6.4.1 bounds real time, not ticks).
    fn expire_stale_lease(&mut self) {
        if let Some(lease) = &self.lease {
            if self.core.has_lease() && !lease.holds_now() {
                self.core.expire_lease();
            }
        }
    }

    /// Publishes this node's lease to `view` after every step, as a deadline
    /// `Config::lease_ticks()` ticks after the tick its lease started at (see [`LeaseView`]).
    pub fn set_lease_view(&mut self, view: Arc<LeaseView<L::Time>>, config: &Config, clock: L) {
        self.lease = Some(LeasePublisher::new(view, config, clock));
    }

    /// Test-only switches that break the published lease's deadline.
    #[cfg(test)]
    pub fn set_lease_bugs(&mut self, bugs: super::read::LeaseBugs) {
        if let Some(lease) = &mut self.lease {
            lease.bugs = bugs;
        }
    }

    /// The inline applier (the simulator), where a caller-thread lease read runs its query.
    pub fn inline_applier(&self) -> Option<&Applier<S>> {
        match &self.apply {
            ApplyQueue::Inline(applier) => Some(applier),
            ApplyQueue::Deferred(_) => None,
        }
    }

    /// A message from a peer.
    pub fn receive(
        &mut self,
        msg: Message<S::Command>,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        self.rpcs.count(&msg.body);
        self.metrics.bytes_received += self.estimated_bytes(&msg);
        self.step(Input::Receive(msg), observe)
    }

    /// Handles `first` and whatever `more` holds, batching consecutive proposals into one
    /// `Input::Propose` (thesis §10.2.2). Other requests are answered on the way. The steps
    /// form one batch (see [`Driver::begin_batch`]), or join the one under way.
    pub fn handle(
        &mut self,
        first: Request<S>,
        more: &mut dyn Iterator<Item = Request<S>>,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        let outer = std::mem::replace(&mut self.batching, true);
        let result = self.handle_batched(first, more, observe);
        self.give_back_queued();
        if outer || result.is_err() {
            self.batching = outer;
            return result;
        }
        self.end_batch(observe)
    }

    fn handle_batched(
        &mut self,
        first: Request<S>,
        more: &mut dyn Iterator<Item = Request<S>>,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        let mut commands = Vec::new();
        // NB: one batch per policy: each is one read to the core, confirmed as it allows.
        let (mut by_lease, mut by_round) = (Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Propose { command, responder, queued } => {
                    // NB: in the batch before the sizer (the user's code) runs: should it
                    // panic, the node's failure answers it (`fail_waiting`), where a drop
                    // in the unwind would answer `NodeDown`.
                    self.batch.push(responder);
                    // NB: a proposal its sender measured is not measured again; if its bytes
                    // were counted, they go back once per batch.
                    let size = match queued {
                        Some(Measured { size, counted }) => {
                            if counted {
                                self.queued_taken += size;
                            }
                            size
                        }
                        None => self.core.command_size(&command),
                    };
                    if size > self.max_command_bytes {
                        let max = self.max_command_bytes;
                        let responder = self.batch.pop().expect("pushed above");
                        responder.finish(Err(Error::CommandTooLarge { size, max }));
                    } else {
                        commands.push(command);
                    }
                }
                Request::ChangeMembership { change, reply } => {
                    self.change(change, reply, observe)?
                }
                Request::Status { reply } => self.status(reply),
                Request::CoreStatus { reply } => drop(reply.send(self.core.status())),
                Request::Compact { reply } => self.compact(reply, observe)?,
                Request::Read { read, policy: ReadPolicy::Lease } => by_lease.push(read),
                Request::Read { read, policy: ReadPolicy::ReadIndex } => by_round.push(read),
                Request::TransferLeadership { to, reply } => self.transfer(to, reply, observe)?,
                Request::Forward(inner) => match self.forward_target() {
                    Some(leader) => self.forward(leader, *inner),
                    None => {
                        next = Some(*inner); // handled here, as if sent without the option
                        continue;
                    }
                },
            }
            if commands.len() < MAX_PROPOSAL_BATCH {
                next = more.next();
            }
        }
        if !commands.is_empty() {
            self.metrics.proposals += commands.len() as u64;
            self.step(Input::Propose(commands), observe)?;
        }
        for (reads, policy) in [(by_lease, ReadPolicy::Lease), (by_round, ReadPolicy::ReadIndex)] {
            if !reads.is_empty() {
                let id = self.number_reads(reads);
                self.step(Input::Read(vec![id], policy), observe)?;
            }
        }
        Ok(())
    }

    /// The node failed (a panic on its loop, `Error::NodePanicked`; a failed write,
    /// `Error::Storage`; see [`Driver::fail`], which calls this): this driver takes no
    /// further part, so everything that waits on it hears `error` now: the proposals of the
    /// batch under way, reads not yet confirmed, a membership change, compactions, a
    /// transfer, and (once what was queued before is applied) what waits in the applier.
    /// Held actions are dropped: they depended on writes whose fate is unknown. Only the
    /// driver's queues are touched, never the core, whose state may be half updated.
    pub fn fail_waiting(&mut self, error: &Error) {
        self.give_back_queued();
        self.held.clear();
        for responder in self.batch.drain(..) {
            responder.finish(Err(error.clone()));
        }
        for read in std::mem::take(&mut self.reads).into_values().flatten() {
            super::read::run(read, Err(error.clone()));
        }
        if let Some(reply) = self.change_reply.take() {
            let _ = reply.send(Err(error.clone()));
        }
        for reply in self.compact_replies.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        if let Some((_, reply)) = self.transfer_reply.take() {
            let _ = reply.send(Err(error.clone()));
        }
        if let Some(lease) = &mut self.lease {
            lease.publish(None); // NB: no lease reads on a node that takes no part
        }
        self.apply.node_failed(error.clone());
    }

    /// Lets `Request::Forward` go to `forwarder` whenever this node does not lead.
    pub fn set_forwarder(&mut self, forwarder: Forwarder<S>) {
        self.forwarder = Some(forwarder);
    }

    /// Counts the node's request queue in bytes (`Config::max_queued_request_bytes`): the
    /// driver gives back what each proposal it takes off the queue took from `budget`.
    pub(crate) fn set_request_budget(&mut self, budget: Arc<ByteBudget>) {
        self.queued = Some(budget);
    }

    /// A request taken off the queue that the node will not handle (it failed, and refuses
    /// everything): its bytes go back to the request budget, as a handled one's do.
    pub(crate) fn give_back_request(&self, request: &mut Request<S>) {
        if let Some(budget) = &self.queued {
            budget.give_back(request.uncount());
        }
    }

    /// Gives back the bytes of the proposals taken off the request queue since last time.
    fn give_back_queued(&mut self) {
        let taken = std::mem::take(&mut self.queued_taken);
        if let (Some(budget), true) = (&self.queued, taken > 0) {
            budget.give_back(taken);
        }
    }

    /// Reports the node's inbox in its metrics (`inbox_bytes` and the like).
    pub(crate) fn set_inbox_view(&mut self, inbox: Arc<ByteBudget>) {
        self.inbox = Some(inbox);
    }

    /// The leader to forward to: known, not this node, and a forwarder to reach it.
    fn forward_target(&self) -> Option<NodeId> {
        let leader = self.core.leader().filter(|&l| l != self.core.id())?;
        self.forwarder.as_ref().map(|_| leader)
    }

    fn forward(&mut self, leader: NodeId, mut request: Request<S>) {
        self.metrics.forwarded += 1;
        // NB: counted in this node's queue, not in the leader's: its bytes come back here.
        #[cfg(test)]
        let keep = self.forward_keeps_count;
        #[cfg(not(test))]
        let keep = false;
        if !keep {
            self.queued_taken += request.uncount();
        }
        if let Request::Propose { responder, .. } = &mut request {
            responder.forwarded_to(leader);
            #[cfg(test)]
            if self.lost_forward_claims_unreachable {
                responder.set_lost_claims_unreachable();
            }
        }
        let forwarder = self.forwarder.as_ref().expect("forward_target checked it");
        if let Err(request) = forwarder(leader, request) {
            request.fail(Error::LeaderUnreachable(leader));
        }
    }

    fn transfer(
        &mut self,
        to: NodeId,
        reply: Sender<Result<NodeId, Error>>,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        if let Some((busy, _)) = &self.transfer_reply {
            let busy = Error::TransferInProgress { to: *busy };
            let _ = reply.send(Err(busy)); // the core answers one transfer at a time
            return Ok(());
        }
        self.transfer_reply = Some((to, reply));
        self.step(Input::TransferLeadership(to), observe)
    }

    fn number_reads(&mut self, reads: Vec<ReadFn<S>>) -> ReadId {
        self.next_read += 1;
        let id = ReadId(self.next_read);
        self.reads.insert(id, reads);
        id
    }

    fn read_ready(&mut self, ids: Vec<ReadId>, index: LogIndex, path: crate::core::ReadPath) {
        for id in ids {
            if let Some(reads) = self.reads.remove(&id) {
                self.metrics.count_reads(path, reads.len());
                self.apply.read(index, reads);
            }
        }
    }

    fn read_failed(&mut self, ids: Vec<ReadId>, error: Error) {
        for id in ids {
            for read in self.reads.remove(&id).into_iter().flatten() {
                self.metrics.reads_failed += 1;
                super::read::run(read, Err(error.clone()));
            }
        }
    }

    fn change(
        &mut self,
        change: MembershipChange,
        reply: Sender<Result<Configuration, Error>>,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        if self.change_reply.is_some() {
            let _ = reply.send(Err(Error::ChangeInProgress)); // one change at a time
            return Ok(());
        }
        self.change_reply = Some(reply);
        self.step(Input::ChangeMembership(change), observe)
    }

    /// Snapshots through the applied index, unless a snapshot already covers it.
    fn compact(
        &mut self,
        reply: Sender<Result<Compaction, Error>>,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        let status = self.core.status();
        if status.last_applied <= status.snapshot_index {
            let up_to_date = Compaction::UpToDate { snapshot_index: status.snapshot_index };
            let _ = reply.send(Ok(up_to_date));
            return Ok(());
        }
        self.compact_replies.push(reply);
        self.step(Input::Compact, observe)
    }

    /// Where snapshots taken off the node loop arrive; the runtime waits on it too.
    pub fn taken(&self) -> &Receiver<Arc<Snapshot>> {
        &self.taken.1
    }

    /// A snapshot taken off the node's thread is ready: the core compacts its log.
    pub fn snapshot_taken(
        &mut self,
        snapshot: Arc<Snapshot>,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        self.step(Input::SnapshotTaken(snapshot), observe)
    }

    /// Sends the node's status to `reply` once the applier has filled in its part.
    pub fn status(&mut self, reply: Sender<NodeStatus>) {
        let status = NodeStatus {
            core: self.core.status(),
            digest: 0,
            rpcs: self.rpcs,
            failure: None,
            metrics: self.metrics,
        };
        let mut status = status;
        if let Some(lease) = &self.lease {
            status.metrics.reads_lease += lease.served();
        }
        if let Some((sent, received)) = self.transport.wire_bytes() {
            (status.metrics.bytes_sent, status.metrics.bytes_received) = (sent, received);
        }
        if let Some(inbox) = &self.inbox {
            let metrics = &mut status.metrics;
            metrics.inbox_bytes = inbox.held() as u64;
            metrics.inbox_bytes_peak = inbox.peak() as u64;
            metrics.inbox_dropped = inbox.dropped();
        }
        if let Some(queued) = &self.queued {
            let metrics = &mut status.metrics;
            metrics.queued_request_bytes = queued.held() as u64;
            metrics.queued_request_bytes_peak = queued.peak() as u64;
        }
        if let Some(backlog) = self.backlog() {
            let metrics = &mut status.metrics;
            metrics.apply_backlog = backlog.entries() as u64;
            metrics.apply_backlog_peak = backlog.peak() as u64;
            metrics.apply_stalls = backlog.stalls() as u64;
        }
        self.apply.status(status, reply);
    }

    /// One core step, then its actions in order, as far as `observe` allows; then the core
    /// learns of any snapshot taken meanwhile. Outside a batch the step's writes are synced
    /// and its held actions run before this returns.
    pub fn step(
        &mut self,
        input: Input<S::Command>,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        self.step_once(input, observe)?;
        while let Ok(snapshot) = self.taken.1.try_recv() {
            self.step_once(Input::SnapshotTaken(snapshot), observe)?;
        }
        if self.batching {
            return Ok(());
        }
        self.flush(observe)
    }

    /// Starts a batch of steps (several peer messages or requests found queued together):
    /// their writes are made durable by one sync at [`Driver::end_batch`], and what depends
    /// on them (replies, answers, applies) waits for it. So a follower that finds many
    /// AppendEntries in its inbox pays one sync for all of them (group commit across steps).
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Ends a batch: one sync, then every held action in order.
    pub fn end_batch(&mut self, observe: &mut Observer<'_, S::Command>) -> Result<(), Error> {
        self.batching = false;
        self.flush(observe)
    }

    /// Syncs what the steps wrote (in the background mode: starts a sync, unless one is under
    /// way), runs the actions held for what is durable, in order, and tells the core how far
    /// its log is durable (which may commit, on a leader: one more step).
    fn flush(&mut self, observe: &mut Observer<'_, S::Command>) -> Result<(), Error> {
        if self.halted {
            return Ok(());
        }
        let deferred = self.durable < self.written && self.may_defer_sync();
        if self.durable < self.written && !deferred {
            if self.background {
                if self.in_flight.is_none() {
                    self.start_sync()?;
                }
            } else {
                let synced = self.storage.sync();
                self.sync_outcome(synced)?;
                self.durable = self.written;
            }
        }
        let upto = (self.durable == self.written).then(|| self.core.log().last_index());
        #[cfg(test)]
        let upto = match deferred && self.bugs.deferral_claims_synced {
            true => Some(self.core.log().last_index()),
            false => upto,
        };
        self.release(upto, observe)
    }

    /// `Config::defer_leader_sync`: a leader whose unsynced writes are only its own appends
    /// leaves them so while its followers alone make a quorum that keeps up
    /// ([`Core::own_sync_needed`]). It is the same as a sync still under way: the core
    /// counts the leader only through what it learns is synced, and every answer waits only
    /// for the term and vote, which are synced at once.
    fn may_defer_sync(&self) -> bool {
        self.defer_leader_sync
            && self.core.role() == Role::Leader
            && self.critical <= self.durable
            && !self.core.own_sync_needed()
    }

    /// Runs the held actions whose writes are durable, in order; then tells the core its log
    /// is durable through `upto`, if given.
    fn release(
        &mut self,
        upto: Option<LogIndex>,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        while self.held.front().is_some_and(|(needs, _)| *needs <= self.durable) {
            let (_, held) = self.held.pop_front().expect("checked above");
            match held {
                Held::Action(action) => self.run(action)?,
                Held::Apply(first, entries) => {
                    self.metrics.applies += entries.len() as u64;
                    self.apply.apply_owned(first, entries)?;
                }
            }
        }
        if let Some(upto) = upto.filter(|&i| self.core.durable_index() < i) {
            self.step_once(Input::SyncedThrough(upto), observe)?;
        }
        Ok(())
    }

    /// A sync's outcome: its io error fails the node, since the writes it covered may never
    /// be durable (Linux may drop them and succeed the next sync), so no later sync can
    /// vouch for them.
    fn sync_outcome(&self, outcome: std::io::Result<()>) -> Result<(), Error> {
        #[cfg(test)]
        if self.bugs.sync_error_as_success {
            return Ok(());
        }
        outcome.map_err(storage_error)
    }

    /// Syncs off the node's thread from now on: see the module docs.
    pub fn sync_in_background(&mut self) {
        self.background = true;
    }

    fn start_sync(&mut self) -> Result<(), Error> {
        let upto = self.core.log().last_index();
        match self.storage.start_sync().map_err(storage_error)? {
            Some(job) => {
                self.in_flight = Some((self.written, upto));
                self.job = Some(job);
            }
            None => self.durable = self.written, // durable already
        }
        Ok(())
    }

    /// The background sync to run, once: its runner reports the outcome to
    /// [`Driver::sync_done`].
    pub fn take_sync_job(&mut self) -> Option<SyncJob> {
        self.job.take()
    }

    /// The background sync finished: what waited for it runs, the core learns how far its log
    /// is durable, and the next sync starts if more was written meanwhile. A failed sync stops
    /// the node (the error), as its writes' fate is unknown.
    pub fn sync_done(
        &mut self,
        outcome: std::io::Result<()>,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        let Some((written, upto)) = self.in_flight.take() else { return Ok(()) };
        self.sync_outcome(outcome)?;
        self.durable = self.durable.max(written);
        if self.halted {
            return Ok(());
        }
        self.release(Some(upto), observe)?;
        if !self.batching {
            self.flush(observe)?;
        }
        Ok(())
    }

    fn step_once(
        &mut self,
        input: Input<S::Command>,
        observe: &mut Observer<'_, S::Command>,
    ) -> Result<(), Error> {
        self.expire_stale_lease();
        debug_assert!(self.actions.is_empty(), "the previous step was executed");
        if self.halted {
            return Ok(()); // a simulated crash cut an earlier step: this node is gone
        }
        self.core.step(input, &mut self.actions);
        let count = match observe(&self.core, &self.actions) {
            Execute::All => self.actions.len(),
            Execute::First(count) => {
                self.halted = count < self.actions.len();
                count
            }
        };
        let mut actions = std::mem::take(&mut self.actions);
        self.place_batch(&actions);
        let result = actions.drain(..).take(count).try_for_each(|a| self.run_or_hold(a));
        actions.clear();
        self.actions = actions;
        if let Err(error) = &result {
            // NB: a write failed before the batch's `Proposed` ran: its entries may be on disk
            // all the same, so the outcome is unknown. Answer so now, before the node's end
            // answers `NodeDown` without an append, which reads as "never applied".
            for responder in self.batch.drain(..) {
                responder.finish(Err(error.clone()));
            }
        }
        self.trace_role_change();
        if let Some(lease) = &mut self.lease {
            lease.publish(self.core.lease_read());
        }
        result
    }

    /// The batch's receipts learn their entries' places before the step's first write: from
    /// then on the entries may be durable, so a node lost anywhere in the step (a crash, a
    /// panic, a failed write) leaves their outcome unknown, never "refused before appending",
    /// which `Client::propose` would retry (found by the simulator's retrying clients with
    /// the crashes it cuts between a step's actions).
    fn place_batch(&mut self, actions: &[Action<S::Command>]) {
        let proposed = actions.iter().find_map(|action| match action {
            Action::Proposed { first, term, .. } => Some((*first, *term)),
            _ => None,
        });
        if let Some((first, term)) = proposed {
            for (i, responder) in self.batch.iter().enumerate() {
                responder.appended(LogIndex(first.0 + i as u64), term);
            }
        }
    }

    /// Runs `action` now, or holds it until the storage is synced (contract order: persist,
    /// then send, apply, answer). Writes run at once; so do the bookkeeping of a proposal
    /// batch and, on a leader, AppendEntries: a leader may send entries before its own write
    /// of them is durable, as it counts itself towards commitment only once they are
    /// (thesis §10.2.1, `Input::Synced`). Everything else waits behind unsynced writes and
    /// behind whatever is already held, so held actions keep their order.
    fn run_or_hold(&mut self, action: Action<S::Command>) -> Result<(), Error> {
        let now = match &action {
            Action::PersistHardState(_)
            | Action::PersistEntries { .. }
            | Action::PersistSnapshot(_)
            | Action::Proposed { .. }
            | Action::Rejected(_)
            | Action::Notice(_) => true,
            // NB: only once its term and vote are durable: a leader elected within one step
            // (a single voter) has not synced them yet, and the message reveals its term.
            Action::Send(msg) => {
                let term_durable = self.critical <= self.durable;
                #[cfg(test)]
                let term_durable = term_durable || self.bugs.reveal_before_term_durable;
                matches!(msg.body, Body::AppendEntries(_))
                    && self.core.role() == Role::Leader
                    && term_durable
            }
            _ => false,
        };
        // NB: a leader's answers wait for its term and vote, not for its own appends.
        let needs = if self.core.role() == Role::Leader { self.critical } else { self.written };
        #[cfg(test)]
        let needs = if self.bugs.no_sync_holds { 0 } else { needs };
        if now || (needs <= self.durable && self.held.is_empty()) {
            return self.run(action);
        }
        let held = match action {
            // NB: read the entries now: a snapshot installed later in the batch replaces the log.
            Action::Apply { from, to } => {
                let count = (to.0 - from.0 + 1) as usize;
                Held::Apply(from, self.core.log().entries_from(from, count).to_vec())
            }
            action => Held::Action(action),
        };
        self.held.push_back((needs, held));
        Ok(())
    }

    fn run(&mut self, action: Action<S::Command>) -> Result<(), Error> {
        let persists = matches!(
            action,
            Action::PersistHardState(_)
                | Action::PersistEntries { .. }
                | Action::PersistSnapshot(_)
        );
        if persists {
            self.written += 1;
            let own_append =
                matches!(action, Action::PersistEntries { .. }) && self.core.role() == Role::Leader;
            if !own_append {
                self.critical = self.written;
            }
        }
        match action {
            Action::PersistHardState(hs) => {
                let saved = self.storage.save_hard_state(hs);
                #[cfg(test)]
                let saved = if self.bugs.hard_state_error_ignored { Ok(()) } else { saved };
                saved.map_err(storage_error)?
            }
            Action::PersistEntries { from } => {
                if let Some((_, upto)) = &mut self.in_flight {
                    *upto = (*upto).min(from.prev()); // rewritten since that sync began
                }
                let entries = self.core.log().entries_from(from, usize::MAX);
                self.storage.append(from, entries).map_err(storage_error)?;
            }
            Action::Send(msg) => {
                self.metrics.sent.count(&msg.body);
                self.metrics.bytes_sent += self.estimated_bytes(&msg);
                self.transport.send(msg)
            }
            Action::Proposed { first, term, count } => self.on_proposed(first, term, count),
            Action::Rejected(error) => {
                for responder in self.batch.drain(..) {
                    responder.finish(Err(error.clone()));
                }
            }
            Action::Apply { from, to } => {
                let count = (to.0 - from.0 + 1) as usize;
                self.metrics.applies += count as u64;
                let entries = self.core.log().entries_from(from, count);
                self.apply.apply(from, entries)?;
            }
            Action::ChangeDone(result) => {
                if let Some(reply) = self.change_reply.take() {
                    let _ = reply.send(result);
                }
            }
            Action::TakeSnapshot(meta) => {
                if let Some(snapshot) = self.apply.snapshot(meta)? {
                    let _ = self.taken.0.send(snapshot); // the receiver is ours: never fails
                }
            }
            Action::PersistSnapshot(snapshot) => {
                self.storage.save_snapshot(&snapshot).map_err(storage_error)?;
                // NB: the snapshot replaces the log; the core counts on it at once.
                let synced = self.storage.sync();
                self.sync_outcome(synced)?;
                self.durable = self.written;
                let status = self.core.status();
                let done = Compaction::Snapshot {
                    index: snapshot.meta.index,
                    term: snapshot.meta.term,
                    bytes: snapshot.data.len(),
                    log_entries: status.log_entries,
                };
                for reply in self.compact_replies.drain(..) {
                    let _ = reply.send(Ok(done.clone())); // synced above
                }
            }
            Action::Restore(snapshot) => self.apply.restore(snapshot)?,
            Action::ReadReady { ids, index, path } => self.read_ready(ids, index, path),
            Action::ReadFailed { ids, error } => self.read_failed(ids, error),
            Action::TransferDone(result) => {
                if let Some((_, reply)) = self.transfer_reply.take() {
                    let _ = reply.send(result);
                }
            }
            Action::Notice(notice) if notice.is_warning() => tracing::warn!("{notice}"),
            Action::Notice(notice) => tracing::debug!("{notice}"),
        }
        Ok(())
    }

    fn estimated_bytes(&self, msg: &Message<S::Command>) -> u64 {
        super::metrics::estimated_bytes(msg, |c| self.core.command_size(c))
    }

    /// The batch's entries were placed (its receipts learned where in `place_batch`): they
    /// wait for their applies.
    fn on_proposed(&mut self, first: LogIndex, term: Term, count: usize) {
        debug_assert_eq!(count, self.batch.len());
        let responders = std::mem::replace(&mut self.batch, Vec::with_capacity(count));
        self.apply.await_entries(first, term, responders);
    }

    fn trace_role_change(&mut self) {
        let now = (self.core.role(), self.core.term(), self.core.leader());
        let commit = self.core.commit_index();
        self.metrics.commits += commit.0.saturating_sub(self.last_commit.0);
        self.last_commit = commit;
        if now != self.last_seen {
            let (role, term) = (now.0, now.1);
            if role == Role::Candidate
                && (self.last_seen.0 != Role::Candidate || term != self.last_seen.1)
            {
                self.metrics.elections_started += 1;
            }
            if role == Role::Leader && self.last_seen.0 != Role::Leader {
                self.metrics.elections_won += 1;
            }
            let (role, term, leader) = now;
            tracing::info!(role = ?role, term = %term, leader = ?leader.map(|l| l.0), "state");
            self.last_seen = now;
        }
    }
}

impl RpcCounts {
    pub(crate) fn count<C>(&mut self, body: &Body<C>) {
        match body {
            Body::AppendEntries(_) => self.append_entries += 1,
            Body::RequestVote(rv) if rv.pre_vote => self.pre_votes += 1,
            Body::RequestVote(_) => self.request_votes += 1,
            Body::TimeoutNow => self.timeout_nows += 1,
            Body::InstallSnapshot(_) => self.install_snapshots += 1,
            Body::AppendEntriesReply(_)
            | Body::RequestVoteReply(_)
            | Body::InstallSnapshotReply(_)
            | Body::ReadConfirmReply(_)
            | Body::ReadIndexReply(_) => self.replies += 1,
            Body::ReadConfirm(_) => self.read_confirms += 1,
            Body::ReadIndex(_) | Body::ReadIndexByRound(_) => self.read_indexes += 1,
        }
    }
}

fn storage_error(e: std::io::Error) -> Error {
    Error::Storage(e.to_string())
}
