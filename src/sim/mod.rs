//! A seeded, single-threaded simulator: N [`Core`]s in virtual time over a lossy, reordering,
//! duplicating, partitionable network, with crashes and restarts, virtual clients, a safety
//! checker that watches every step, and a linearizability check of the clients' history.
//!
//! Owns: virtual time (microseconds), the event queue, each node's [`MemStorage`] and state
//! machine, and every random choice (one [`SmallRng`] seeded from [`SimConfig::seed`]). No OS
//! randomness, no threads, no wall clock, no `HashMap` iteration: a run is a pure function of
//! (config, schedule), and [`Simulator::trace_hash`] proves it.
//!
//! Actions are executed exactly per the core's output contract: in order, persistence first;
//! `PersistEntries { from }` writes `core.log().entries_from(from, ..)` through
//! [`Storage::append`](crate::storage::Storage::append); `Apply { from, to }` hands the
//! commands of `from..=to` to the state machine, skipping no-op and configuration entries.
//!
//! Entry points: [`run_kv`] runs one seeded scenario end to end (fault phase, heal, quiet
//! period, convergence, linearizability); [`Simulator`] offers the same pieces one by one for
//! users testing their own [`StateMachine`].
//!
//! ```
//! use ferraft::sim::{run_kv, Schedule, SimConfig};
//!
//! let config = SimConfig::new(42, 5);
//! let report = run_kv(&config, &Schedule::random(&config)).unwrap_or_else(|f| panic!("{f}"));
//! assert!(report.ops_completed > 0);
//! ```
//!
//! A failure ([`SimFailure`]) names the seed and shows the last 50 traced events; rerunning
//! the same config and schedule reproduces it exactly.

mod checker;
mod churn;
mod client;
mod compaction;
mod config;
mod inbox;
mod kv;
mod membership;
mod network;
mod node;
mod planted;
mod reads;
mod request_queue;
mod run;
mod schedule;
mod storage;
mod timeline;
mod trace;

#[cfg(test)]
mod apply_tests;
#[cfg(test)]
mod bites;
#[cfg(test)]
mod compaction_tests;
#[cfg(test)]
mod failure_tests;
#[cfg(test)]
mod forwarding_tests;
#[cfg(test)]
mod fsync_tests;
#[cfg(test)]
mod inbox_tests;
#[cfg(test)]
mod lease_election_tests;
#[cfg(test)]
mod poison_tests;
#[cfg(test)]
mod request_queue_tests;
#[cfg(test)]
mod retry_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_failure_tests;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::core::{Core, Role, Status};
use crate::message::Message;
use crate::state_machine::StateMachine;
use crate::storage::MemStorage;
use crate::types::NodeId;

pub use crate::error::FaultError;
use checker::Checker;
pub use checker::{Rule, Violation};
pub use client::{HistoryOp, ReadQuery, Workload};
pub use config::{Churn, NetworkConfig, SimConfig};
pub use kv::{check_kv_history, KvWorkload};
pub use run::{run_kv, FailureKind, RunReport, SimFailure};
pub use schedule::{Fault, Schedule, SnapshotSide, Target};
pub use storage::WriteKind;

use client::{ClientEvent, Clients};
use membership::Admin;
use network::{micros, Network};
use node::SimNode;
use trace::{Trace, TraceEvent, TraceLine};

/// Something that happens at a virtual instant.
enum Event<S: StateMachine> {
    /// A node's clock ticks (ignored if the node restarted since it was scheduled).
    Tick { node: NodeId, incarnation: u64 },
    /// A message reaches its receiver (if the partition and the receiver allow), with its
    /// size as its link's byte budget counted it.
    Deliver(Message<S::Command>, usize),
    /// A client's request, reply, retry or timeout.
    Client(ClientEvent<S::Output>),
    /// An attempt at a pending membership change.
    Admin(usize),
    /// Churn: crash `node` if it is still in this incarnation and term.
    Churn { node: NodeId, incarnation: u64, term: crate::types::Term },
    /// Churn: restart `node` if it is still down in this incarnation.
    Revive { node: NodeId, incarnation: u64 },
    /// A pause of `node` ends (if it is still this incarnation).
    Resume { node: NodeId, incarnation: u64 },
    /// A delayed fault ([`Fault::After`]); dropped once the quiet period began.
    Fault(Box<Fault>),
    /// The end of a node's sync window: its batch is synced and what waited for it runs.
    Flush { node: NodeId, incarnation: u64 },
    /// A node's background sync completes (`SimConfig::background_sync`).
    Synced { node: NodeId, incarnation: u64 },
    /// A worker or a waiting caller runs a node's queued applies (`SimConfig::deferred_apply`).
    Drain { node: NodeId, incarnation: u64 },
    /// A request forwarded in-process reaches the leader's queue (`SimConfig::forward_requests`).
    Forwarded { to: NodeId, request: crate::node::Request<S> },
    /// An on-demand compaction of `node` ([`Simulator::compact`]).
    Compact(NodeId),
    /// A leadership transfer handed to `leader`'s driver ([`Fault::Transfer`]).
    Transfer { leader: NodeId, to: NodeId },
    /// The operator kills and restarts a node that failed ([`Fault::FailStorage`]), if it is
    /// still that incarnation.
    Recover { node: NodeId, incarnation: u64 },
}

/// An event's time and insertion number, ordered so the heap pops the earliest first and, at
/// equal times, the one scheduled first: that tie-break keeps runs deterministic. The event
/// itself waits in a slot of [`Simulator::events`], so the heap moves only these three words.
struct Scheduled {
    at: u64,
    seq: u64,
    slot: usize,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq)) // reversed: BinaryHeap is a max-heap
    }
}

/// A node's next clock tick (kept out of the event heap: see [`Simulator::schedule`]).
#[derive(Clone, Copy, Debug)]
struct PendingTick {
    at: u64,
    seq: u64,
    node: NodeId,
    incarnation: u64,
}

/// Counters reported at the end of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Core steps executed.
    pub steps: u64,
    /// Messages sent by cores.
    pub messages: u64,
    /// Messages lost (random drop, partition, or a down receiver).
    pub dropped: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Snapshots taken (by policy or on demand) and persisted.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader (InstallSnapshot completed).
    pub snapshots_installed: u64,
    /// Of those, crashes in the middle of a step (after its persist, before the rest).
    pub mid_step_crashes: u64,
    /// Times a removed node holding its own removal in its log started an election.
    pub removed_campaigns: u64,
    /// Client batches of more than one request handed to a driver at once.
    pub batches: u64,
    /// Crashes that lost unsynced writes (`SimConfig::storage_faults`).
    pub unsynced_losses: u64,
    /// On-demand compactions ([`Fault::Compact`]) that took a snapshot.
    pub compactions: u64,
    /// Nodes crashed right after receiving an InstallSnapshot chunk that was not the last
    /// ([`Fault::CrashMidSnapshot`], [`SnapshotSide::Receiver`]).
    pub snapshot_receiver_crashes: u64,
    /// Leaders crashed right after sending an InstallSnapshot chunk that was not the last
    /// ([`Fault::CrashMidSnapshot`], [`SnapshotSide::Sender`]).
    pub snapshot_sender_crashes: u64,
    /// Reads served on a node's caller-thread lease path (`SimConfig::caller_read_percent`).
    pub caller_reads: u64,
    /// Read requests sent asking for a confirmation round whatever the lease
    /// (`ReadPolicy::ReadIndex`, one read in four); the others allow the lease.
    pub reads_by_round: u64,
    /// Reads a leader's loop served from its lease, without a round (those served on the
    /// caller-thread path count in `caller_reads`).
    pub reads_by_lease: u64,
    /// Leadership transfers handed to a leader ([`Fault::Transfer`]).
    pub transfers: u64,
    /// Of those, the ones that ended with the target leading (counted in the run's report).
    pub transfers_won: u64,
    /// Drains of deferred applies ([`SimConfig::deferred_apply`]).
    pub drains: u64,
    /// Of those, a caller's drains that left tasks for the node's workers (a snapshot or a
    /// restore at the front of the queue).
    pub drains_left_to_workers: u64,
    /// Times a node stalled, its inputs held and its ticks missed, because more than
    /// `Config::max_apply_backlog` entries waited for its state machine (deferred applies).
    pub apply_stalls: u64,
    /// Inputs (messages, requests) held by those stalls until the node's applier caught up.
    pub inputs_held_by_stalls: u64,
    /// Requests forwarded to a leader ([`SimConfig::forward_requests`]).
    pub forwards: u64,
    /// Of those, the ones lost with their leader, which went down before they reached it.
    pub forwards_lost: u64,
    /// Requests a forwarder refused: the leader the node knew was down (`LeaderUnreachable`).
    pub forwards_refused: u64,
    /// Operations a retrying client ([`SimConfig::client_retries`]) gave up at its timeout
    /// after nothing but refusals, recorded as never applied (`Client::propose`'s
    /// `Unavailable`).
    pub unavailable: u64,
    /// Nodes failed by a storage failure ([`Fault::FailStorage`]), each killed and restarted
    /// later.
    pub node_failures: u64,
    /// Message copies dropped because their link held its byte budget
    /// (`Config::max_inbox_bytes`, or [`Fault::InboxBytes`]): counted in the report.
    pub dropped_link_bytes: u64,
    /// Messages dropped because a paused or stalled node's inbox held its byte budget.
    pub dropped_inbox_bytes: u64,
    /// Times a proposal found no room in its node's request queue ([`Fault::RequestBytes`])
    /// and waited at its client to try again (each try counts).
    pub request_queue_full: u64,
}

/// N cores driven on one thread in virtual time. See the module docs.
pub struct Simulator<S: StateMachine> {
    config: SimConfig,
    rng: SmallRng,
    /// Virtual time in microseconds.
    now: u64,
    seq: u64,
    /// The latest virtual time (µs) any message sent so far is due to land at: the quiet
    /// period's deadline counts from then (`settle`).
    last_delivery: u64,
    queue: BinaryHeap<Scheduled>,
    /// The events the queue's entries point at; `None` in a free slot.
    events: Vec<Option<Event<S>>>,
    /// Free slots of `events`, reused before it grows.
    free_slots: Vec<usize>,
    /// The next tick of each running node.
    ticks: Vec<PendingTick>,
    nodes: BTreeMap<NodeId, SimNode<S>>,
    /// The next id an added node gets: ids are never reused (SUB-9).
    next_id: u64,
    network: Network,
    checker: Checker,
    trace: Trace,
    clients: Clients<S>,
    admin: Admin,
    factory: Box<dyn Fn(NodeId) -> S>,
    stats: Stats,
    /// The first failure; once set, the run is over.
    failure: Option<SimFailure>,
    /// Whether leader churn is on (only during the fault phase).
    churning: bool,
    /// Nodes to crash in the middle of their next step that persists and then sends or
    /// applies ([`Simulator::crash_mid_step`]).
    crash_armed: BTreeSet<NodeId>,
    /// Nodes to crash at their next sync with writes pending (`Fault::CrashBeforeSync`).
    crash_before_sync: BTreeSet<NodeId>,
    /// Faults to fire when some node next wins an election ([`Fault::OnNewLeader`]).
    on_new_leader: Vec<Fault>,
    /// The answers of the leadership transfers requested ([`Fault::Transfer`]).
    transfer_replies: Vec<crossbeam_channel::Receiver<Result<NodeId, crate::Error>>>,
    /// Armed crashes in the middle of an InstallSnapshot transfer ([`Fault::CrashMidSnapshot`]),
    /// each fired once, in the order armed.
    mid_snapshot: Vec<(SnapshotSide, Option<NodeId>)>,
    /// On-demand compactions asked of a driver and not yet answered.
    compactions: Vec<compaction::Pending>,
    /// The quiet period has begun: delayed and armed faults no longer fire.
    quiet: bool,
    /// An empty outbox with room, swapped into each stepping driver so its sends do not
    /// allocate a new vector every step.
    spare_outbox: Vec<Message<S::Command>>,
    /// The request-queue budget in force ([`Fault::RequestBytes`]), if any: each node
    /// started gets one of this many bytes.
    request_bytes: Option<usize>,
    #[cfg(test)]
    bugs: crate::core::Bugs,
    /// Test-only switches in the lease deadline published for caller-thread reads.
    #[cfg(test)]
    lease_bugs: crate::node::LeaseBugs,
    /// Test-only switches that break every driver's sync boundary.
    #[cfg(test)]
    sync_bugs: crate::node::SyncBugs,
    /// Test-only: callers run the applies queued behind a snapshot before it.
    #[cfg(test)]
    snapshot_behind_later_applies: bool,
    /// Test-only: nodes never stall on their apply backlog (`Config::max_apply_backlog`).
    #[cfg(test)]
    ignore_apply_limit: bool,
    /// Test-only: a forwarded proposal lost with its leader claims it never reached it.
    #[cfg(test)]
    lost_forward_claims_unreachable: bool,
    /// Test-only: a forwarded proposal keeps its count in the forwarding node's request queue.
    #[cfg(test)]
    forward_keeps_count: bool,
    /// Test-only: retrying clients forget whether their proposal was appended.
    #[cfg(test)]
    retry_ignores_append: bool,
    /// Test-only: retrying clients that time out record the operation as never applied even
    /// when an attempt was appended or is unanswered.
    #[cfg(test)]
    timeout_claims_unavailable: bool,
    /// Test-only: a node whose storage panicked runs on with its driver as the panic left it
    /// (the runtime before the fourteenth session: the other worker ran the loop on).
    #[cfg(test)]
    run_on_after_panic: bool,
    /// Test-only: clients take a failed node's answer (`NodePanicked`, `Storage`) as "never
    /// appended", and retrying ones retry it.
    #[cfg(test)]
    failure_claims_refused: bool,
    /// Test-only: clients retry a `NodePanicked` elsewhere, where `Client::propose` gives
    /// it up (a poisoned command then fails node after node).
    #[cfg(test)]
    retry_node_panicked: bool,
    /// The nodes each poisoned command failed (`planted::PoisonKv`), by command: one at most
    /// per command, as clients never retry `NodePanicked` ([`FailureKind::PoisonSpread`]).
    poisoned: BTreeMap<String, Vec<NodeId>>,
    /// What the nodes' forwarders share (`SimConfig::forward_requests`).
    forwarded: std::sync::Arc<std::sync::Mutex<Forwards<S>>>,
}

/// The running nodes a forwarder may hand a request to (it refuses any other, as the
/// runtime's does), and the requests handed over during the step being run, with the leader
/// each goes to.
struct Forwards<S: StateMachine> {
    running: BTreeSet<NodeId>,
    queued: Vec<(NodeId, crate::node::Request<S>)>,
    /// Requests refused since the simulator last looked.
    refused: u64,
}

impl<S: StateMachine> Simulator<S> {
    /// A cluster of `config.nodes` nodes, all started, each with a state machine from
    /// `factory`. No clients until [`Simulator::start_clients`].
    ///
    /// # Errors
    ///
    /// A [`FaultError`] if the config is out of range.
    pub fn new(
        config: SimConfig,
        factory: impl Fn(NodeId) -> S + 'static,
    ) -> Result<Self, FaultError> {
        config.validate()?;
        let mut sim = Simulator {
            rng: SmallRng::seed_from_u64(config.seed),
            now: 0,
            seq: 0,
            last_delivery: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free_slots: Vec::new(),
            ticks: Vec::new(),
            nodes: BTreeMap::new(),
            next_id: config.nodes + 1,
            network: Network::new(config.network.clone(), config.raft.max_inbox_bytes)?,
            checker: {
                let mut checker = Checker::new();
                checker.set_lossy_storage(config.storage_faults);
                checker
            },
            trace: Trace::new(config.record_trace),
            clients: Clients::new(),
            admin: Admin::default(),
            factory: Box::new(factory),
            stats: Stats::default(),
            failure: None,
            churning: config.churn.is_some(),
            crash_armed: BTreeSet::new(),
            crash_before_sync: BTreeSet::new(),
            on_new_leader: Vec::new(),
            transfer_replies: Vec::new(),
            mid_snapshot: Vec::new(),
            compactions: Vec::new(),
            quiet: false,
            spare_outbox: Vec::new(),
            request_bytes: None,
            #[cfg(test)]
            bugs: crate::core::Bugs::default(),
            #[cfg(test)]
            lease_bugs: crate::node::LeaseBugs::default(),
            #[cfg(test)]
            sync_bugs: crate::node::SyncBugs::default(),
            #[cfg(test)]
            snapshot_behind_later_applies: false,
            #[cfg(test)]
            ignore_apply_limit: false,
            #[cfg(test)]
            lost_forward_claims_unreachable: false,
            #[cfg(test)]
            forward_keeps_count: false,
            #[cfg(test)]
            retry_ignores_append: false,
            #[cfg(test)]
            timeout_claims_unavailable: false,
            #[cfg(test)]
            run_on_after_panic: false,
            #[cfg(test)]
            failure_claims_refused: false,
            #[cfg(test)]
            retry_node_panicked: false,
            poisoned: BTreeMap::new(),
            forwarded: std::sync::Arc::new(std::sync::Mutex::new(Forwards {
                running: BTreeSet::new(),
                queued: Vec::new(),
                refused: 0,
            })),
            config,
        };
        let voters = crate::message::Configuration::new((1..=sim.config.nodes).map(NodeId));
        for id in voters.voters.clone() {
            sim.add_storage(id, MemStorage::new(voters.clone()));
        }
        Ok(sim)
    }

    /// The settings this simulator was built with.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Virtual time elapsed since the start.
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.now)
    }

    /// Every node id ever created (crashed and removed ones included), in order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Whether `id` is running (not crashed; removed nodes may still run).
    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.live.is_some())
    }

    /// The status of a running node.
    pub fn status(&self, id: NodeId) -> Option<Status> {
        self.core(id).map(Core::status)
    }

    /// Runs `f` on the state machine of a running node, as it is now: with
    /// [`SimConfig::deferred_apply`], what is applied, not what waits to be.
    pub fn with_state_machine<R>(&self, id: NodeId, f: impl FnOnce(&S) -> R) -> Option<R> {
        Some(self.nodes.get(&id)?.live.as_ref()?.driver.with_state_machine(f))
    }

    /// The running leader with the highest term, if any (a failed node leads nobody).
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.live.as_ref().filter(|l| l.failed.is_none()).map(|l| l.core()))
            .filter(|c| c.role() == Role::Leader)
            .max_by_key(|c| c.term())
            .map(|c| c.id())
    }

    /// A deterministic hash of every traced event so far: equal for equal (config, schedule).
    pub fn trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    /// The whole trace as text, if [`SimConfig::record_trace`] is on.
    pub fn trace(&self) -> Option<&[String]> {
        self.trace.full()
    }

    /// When `id` last sent messages on a clock tick while leading (its heartbeat broadcasts),
    /// if ever: the hook `examples/figure16.rs` uses to crash a leader at a known point of its
    /// heartbeat interval.
    #[doc(hidden)]
    pub fn last_heartbeat(&self, id: NodeId) -> Option<Duration> {
        self.trace.last_heartbeat(id).map(Duration::from_micros)
    }

    /// The last traced lines (at most 50), oldest first.
    pub fn trace_excerpt(&self) -> Vec<String> {
        self.trace.excerpt()
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The clients' history so far, in invocation order.
    pub fn history(&self) -> &[HistoryOp<S::Command, S::Output>] {
        self.clients.history()
    }

    /// Runs every event up to `now + duration`.
    ///
    /// # Errors
    ///
    /// The first safety violation or core panic, with the seed and a trace excerpt.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), SimFailure> {
        self.run_until(self.now + micros(duration))
    }

    /// Runs every event scheduled at or before `until` (virtual microseconds), then sets the
    /// clock to `until` (or leaves it, if already past: time never runs backwards).
    fn run_until(&mut self, until: u64) -> Result<(), SimFailure> {
        self.check_failed()?;
        while let Some((at, event)) = self.pop_next(until) {
            self.now = at;
            if let Err(kind) = self.dispatch(event) {
                return Err(self.fail(kind));
            }
        }
        // NB: a schedule's fault past the fault phase ran at its instant; the phase's end
        // must not turn the clock back to before it.
        self.now = self.now.max(until);
        Ok(())
    }

    /// The earliest event at or before `until`, from the queue or the clock table, ordered by
    /// (time, insertion number) across both exactly as one queue would order them.
    fn pop_next(&mut self, until: u64) -> Option<(u64, Event<S>)> {
        let tick = (0..self.ticks.len()).min_by_key(|&i| (self.ticks[i].at, self.ticks[i].seq));
        let tick_key = tick.map(|i| (self.ticks[i].at, self.ticks[i].seq));
        let queue_key = self.queue.peek().map(|s| (s.at, s.seq));
        match (tick, tick_key, queue_key) {
            (Some(i), Some(t), q) if t.0 <= until && q.is_none_or(|q| t < q) => {
                let next = self.ticks.swap_remove(i);
                Some((next.at, Event::Tick { node: next.node, incarnation: next.incarnation }))
            }
            (_, _, Some(q)) if q.0 <= until => {
                let next = self.queue.pop().expect("peeked above");
                let event = self.events[next.slot].take().expect("a queued slot holds its event");
                self.free_slots.push(next.slot);
                Some((next.at, event))
            }
            _ => None,
        }
    }

    fn dispatch(&mut self, event: Event<S>) -> Result<(), FailureKind> {
        match event {
            Event::Tick { node, incarnation } => self.on_tick(node, incarnation),
            Event::Deliver(msg, bytes) => self.deliver(msg, bytes),
            Event::Client(e) => self.on_client_event(e),
            Event::Admin(op) => self.on_admin(op),
            Event::Churn { node, incarnation, term } => self.on_churn(node, incarnation, term),
            Event::Revive { node, incarnation } => self.on_revive(node, incarnation),
            Event::Resume { node, incarnation } => self.on_resume(node, incarnation),
            Event::Fault(_) if self.quiet => Ok(()),
            Event::Fault(fault) => self.apply_fault(&fault).map_err(FailureKind::Fault),
            Event::Flush { node, incarnation } => self.on_flush(node, incarnation),
            Event::Synced { node, incarnation } => self.on_synced(node, incarnation),
            Event::Drain { node, incarnation } => self.on_drain(node, incarnation),
            Event::Forwarded { to, request } => self.on_forwarded(to, request),
            Event::Compact(node) => self.on_compact(node),
            Event::Transfer { leader, to } => self.request_transfer(leader, to),
            Event::Recover { node, incarnation } => {
                self.recover(node, incarnation);
                Ok(())
            }
        }
    }

    fn schedule(&mut self, after: u64, event: Event<S>) {
        self.seq += 1;
        let (at, seq) = (self.now + after, self.seq);
        if matches!(event, Event::Deliver(..)) {
            self.last_delivery = self.last_delivery.max(at);
        }
        if let Event::Tick { node, incarnation } = event {
            // NB: most events are clock ticks, one pending per node: a small table beside the
            // heap keeps them out of it. A node's newer tick replaces its older one, which
            // could only have been an older incarnation's, ignored when it fired.
            self.ticks.retain(|t| t.node != node);
            self.ticks.push(PendingTick { at, seq, node, incarnation });
            return;
        }
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.events[slot] = Some(event);
                slot
            }
            None => {
                self.events.push(Some(event));
                self.events.len() - 1
            }
        };
        self.queue.push(Scheduled { at, seq, slot });
    }

    /// When `id`'s pending clock tick is due, and for which incarnation, if one is on the table.
    fn pending_tick(&self, id: NodeId) -> Option<(u64, u64)> {
        self.ticks.iter().find(|t| t.node == id).map(|t| (t.at, t.incarnation))
    }

    fn note(&mut self, text: String) {
        self.trace.record(TraceLine { at: self.now, event: TraceEvent::Note(text) });
    }

    /// [`Simulator::note`] of `format!(args)`, written into a reused buffer.
    fn note_args(&mut self, args: std::fmt::Arguments<'_>) {
        self.trace.note(self.now, args);
    }

    fn core(&self, id: NodeId) -> Option<&Core<S::Command>> {
        self.nodes.get(&id)?.live.as_ref().map(|l| l.core())
    }

    /// Nodes neither removed nor never-started, in id order: the targets of faults and clients.
    fn members(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| !n.removed).map(|(&id, _)| id).collect()
    }

    fn known_ids(&self) -> BTreeSet<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn check_failed(&self) -> Result<(), SimFailure> {
        self.failure.clone().map_or(Ok(()), Err)
    }

    /// Records the first failure, with the seed, the time and the trace excerpt.
    fn fail(&mut self, kind: FailureKind) -> SimFailure {
        let failure = SimFailure {
            seed: self.config.seed,
            at: self.now(),
            kind,
            trace: self.trace.excerpt(),
        };
        self.failure.get_or_insert(failure).clone()
    }

    /// Test-only: switches a core bug on for every node, now and after each restart.
    #[cfg(test)]
    pub(crate) fn set_bugs(&mut self, bugs: crate::core::Bugs) {
        self.bugs = bugs;
        for node in self.nodes.values_mut() {
            if let Some(live) = node.live.as_mut() {
                live.driver.core_mut().bugs = bugs;
            }
        }
    }

    /// Test-only: switches that break every node's sync boundary, now and after each restart.
    #[cfg(test)]
    pub(crate) fn set_sync_bugs(&mut self, bugs: crate::node::SyncBugs) {
        self.sync_bugs = bugs;
        for live in self.nodes.values_mut().filter_map(|node| node.live.as_mut()) {
            live.driver.bugs = bugs;
        }
    }

    /// Test-only: with [`SimConfig::deferred_apply`], a caller's drain runs the applies
    /// queued behind a snapshot before taking it, in every node, now and after each restart.
    #[cfg(test)]
    pub(crate) fn set_snapshot_behind_later_applies(&mut self, on: bool) {
        self.snapshot_behind_later_applies = on;
        for live in self.nodes.values_mut().filter_map(|node| node.live.as_mut()) {
            if let Some(backlog) = live.driver.backlog() {
                backlog.set_snapshot_behind_later_applies(on);
            }
        }
    }

    /// Test-only: with [`SimConfig::deferred_apply`], every node's backlog ignores
    /// `Config::max_apply_backlog` (the memory audit's unbounded backlog), now and after each
    /// restart: nodes take input however many entries wait for their state machines.
    #[cfg(test)]
    pub(crate) fn set_ignore_apply_limit(&mut self, on: bool) {
        self.ignore_apply_limit = on;
        for live in self.nodes.values_mut().filter_map(|node| node.live.as_mut()) {
            if let Some(backlog) = live.driver.backlog() {
                backlog.set_ignore_limit(on);
            }
        }
    }

    /// Test-only: forwarded proposals lost with their leader claim they never reached it, in
    /// every node, now and after each restart.
    #[cfg(test)]
    pub(crate) fn set_lost_forward_claims_unreachable(&mut self, on: bool) {
        self.lost_forward_claims_unreachable = on;
        for live in self.nodes.values_mut().filter_map(|node| node.live.as_mut()) {
            live.driver.lost_forward_claims_unreachable = on;
        }
    }

    /// Test-only: with [`SimConfig::client_retries`], clients apply `Client::propose`'s rule
    /// as if no proposal had been appended, so they retry one a crash may still commit.
    #[cfg(test)]
    pub(crate) fn set_retry_ignores_append(&mut self, on: bool) {
        self.retry_ignores_append = on;
    }

    /// Test-only: with [`SimConfig::client_retries`], a client that times out answers as
    /// `Client::propose` would if no attempt had been appended (`Unavailable`: never
    /// applied), even when one was, or is still unanswered.
    #[cfg(test)]
    pub(crate) fn set_timeout_claims_unavailable(&mut self, on: bool) {
        self.timeout_claims_unavailable = on;
    }

    /// Test-only: a node whose storage panics runs on (see the field).
    #[cfg(test)]
    pub(crate) fn set_run_on_after_panic(&mut self, on: bool) {
        self.run_on_after_panic = on;
    }

    /// Test-only: clients read a failed node's answer as "never appended" (see the field).
    #[cfg(test)]
    pub(crate) fn set_failure_claims_refused(&mut self, on: bool) {
        self.failure_claims_refused = on;
    }

    /// Test-only: clients retry `NodePanicked` (see the field).
    #[cfg(test)]
    pub(crate) fn set_retry_node_panicked(&mut self, on: bool) {
        self.retry_node_panicked = on;
    }

    /// Test-only: node `id`'s tick period, in virtual microseconds, from now on (its clock
    /// reads `now * tick / period`, so set it before the run starts: a later change makes the
    /// node's clock jump).
    #[cfg(test)]
    pub(crate) fn set_tick_us(&mut self, id: NodeId, period_us: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.tick_us = period_us.max(1);
        }
    }

    /// Test-only: switches a lease-deadline bug on for every node, now and after each restart.
    #[cfg(test)]
    pub(crate) fn set_lease_bugs(&mut self, bugs: crate::node::LeaseBugs) {
        self.lease_bugs = bugs;
        for node in self.nodes.values_mut() {
            if let Some(live) = node.live.as_mut() {
                live.driver.set_lease_bugs(bugs);
            }
        }
    }
}
