//! A whole run: the fault phase (schedule plus clients), the heal, the quiet period that must
//! converge, and the verdicts ([`RunReport`] or the first [`SimFailure`]).
//!
//! Owns the phases and the convergence rule; the safety checker runs underneath throughout.

use std::fmt;
use std::time::Duration;

use super::checker::Violation;
use super::config::SimConfig;
use super::kv::{check_kv_history, KvWorkload};
use super::schedule::Schedule;
use super::{micros, Simulator, Stats};
use crate::core::Core;
use crate::error::FaultError;
use crate::kv::{KvCommand, KvOutput, KvStateMachine};
use crate::linearizability::{self, CheckOutcome};
use crate::state_machine::StateMachine;
use crate::types::{LogIndex, NodeId};

/// How often the quiet period checks for convergence.
const CONVERGENCE_POLL: Duration = Duration::from_millis(5);

/// Why a run failed.
#[derive(Clone, Debug, PartialEq)]
pub enum FailureKind {
    /// The safety checker saw a property break.
    Safety(Violation),
    /// A core assertion fired (an invariant the core checks itself).
    CorePanic {
        /// The node that panicked.
        node: NodeId,
        /// The panic message.
        message: String,
    },
    /// The node driver failed (a storage error, or the state machine panicked).
    Driver {
        /// The node whose driver failed.
        node: NodeId,
        /// What it reported.
        error: String,
    },
    /// After healing everything, the live members did not agree within the quiet period.
    NotConverged(String),
    /// The clients' history has no linearization.
    NotLinearizable(linearizability::Violation),
    /// The configuration or a fault was out of range.
    Fault(FaultError),
    /// A node took input (a message, a request, a tick) while more committed entries waited
    /// for its state machine than `Config::max_apply_backlog` allows: its memory is unbounded.
    ApplyBacklogOverLimit {
        /// The node.
        node: NodeId,
        /// The entries waiting (counted over its applier's queue).
        entries: usize,
        /// `Config::max_apply_backlog`.
        limit: usize,
    },
    /// A poisoned command (its `command_size` panics on whichever node handles it) failed
    /// more than one node: a client retried it after a node failed with it (`NodePanicked`),
    /// which `Client::propose` never does, as the command may be what failed the node.
    PoisonSpread {
        /// The command, as `Debug` prints it.
        command: String,
        /// The nodes it failed, in order.
        failed: Vec<NodeId>,
    },
    /// A node's count of entries waiting for its state machine (the one its loop stalls on)
    /// differs from what its applier's queue holds.
    ApplyBacklogMiscounted {
        /// The node.
        node: NodeId,
        /// The count.
        counted: usize,
        /// What the queue holds.
        queued: usize,
    },
    /// A node's request-queue budget holds other than the bytes of the proposals waiting for
    /// it: some were never given back, or given back to the wrong node.
    RequestBytesMiscounted {
        /// The node.
        node: NodeId,
        /// What its budget holds.
        held: usize,
        /// What the proposals waiting for it took.
        waiting: usize,
    },
}

impl FailureKind {
    /// Whether the run broke a safety property: a checker violation, a core assertion, or a
    /// history with no linearization.
    pub fn is_safety(&self) -> bool {
        matches!(
            self,
            FailureKind::Safety(_)
                | FailureKind::CorePanic { .. }
                | FailureKind::NotLinearizable(_)
        )
    }

    /// Whether the run stayed safe but did not converge after healing, or a poisoned command
    /// failed more than one node (liveness).
    pub fn is_liveness(&self) -> bool {
        matches!(self, FailureKind::NotConverged(_) | FailureKind::PoisonSpread { .. })
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Safety(v) => write!(f, "{v}"),
            FailureKind::CorePanic { node, message } => {
                write!(f, "core {node} panicked: {message}")
            }
            FailureKind::Driver { node, error } => write!(f, "driver of {node} failed: {error}"),
            FailureKind::NotConverged(why) => {
                write!(f, "liveness (safe, but did not converge after healing): {why}")
            }
            FailureKind::NotLinearizable(v) => write!(f, "{v}"),
            FailureKind::Fault(e) => write!(f, "bad fault setting: {e}"),
            FailureKind::ApplyBacklogOverLimit { node, entries, limit } => write!(
                f,
                "{node} took input with {entries} entries waiting for its state machine (limit {limit})"
            ),
            FailureKind::PoisonSpread { command, failed } => write!(
                f,
                "liveness (one submission failed several nodes): poisoned command {command} failed {failed:?}"
            ),
            FailureKind::ApplyBacklogMiscounted { node, counted, queued } => write!(
                f,
                "{node} counts {counted} entries waiting for its state machine; its queue holds {queued}"
            ),
            FailureKind::RequestBytesMiscounted { node, held, waiting } => write!(
                f,
                "{node}'s request queue budget holds {held} bytes; the proposals waiting for it took {waiting}"
            ),
        }
    }
}

/// A failed run: the seed that replays it, when, why, and the last traced events.
#[derive(Clone, Debug, PartialEq)]
pub struct SimFailure {
    /// The seed of the failing run.
    pub seed: u64,
    /// Virtual time of the failure.
    pub at: Duration,
    /// What went wrong.
    pub kind: FailureKind,
    /// The last traced events (at most 50), oldest first.
    pub trace: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed at {:?}: {}", self.seed, self.at, self.kind)?;
        writeln!(f, "last {} events:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SimFailure {}

/// What a successful run did.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    /// The run's seed.
    pub seed: u64,
    /// Hash of the whole trace: equal for equal (config, schedule).
    pub trace_hash: u64,
    /// Number of traced events.
    pub trace_lines: u64,
    /// Virtual time simulated, quiet period included.
    pub simulated: Duration,
    /// Steps, messages, drops and crashes.
    pub stats: Stats,
    /// Client operations invoked.
    pub ops: usize,
    /// Of those, how many completed with a reply.
    pub ops_completed: usize,
    /// The commit index all members agreed on.
    pub commit_index: LogIndex,
    /// The linearizability verdict (`Unknown` if the search budget ran out).
    pub linearizable: CheckOutcome,
    /// The full trace, if [`SimConfig::record_trace`] was on.
    pub trace: Option<Vec<String>>,
}

/// Runs one seeded KV scenario end to end: clients and `schedule` during the fault phase, then
/// heal, restart everything, and wait for convergence; then check linearizability.
///
/// # Errors
///
/// The first [`SimFailure`]: a safety violation, a core panic, no convergence, a history that
/// is not linearizable, or an out-of-range setting.
pub fn run_kv(config: &SimConfig, schedule: &Schedule) -> Result<RunReport, SimFailure> {
    let sim = Simulator::new(config.clone(), |_| KvStateMachine::new())
        .map_err(|e| setup_failure(config.seed, e))?;
    drive_kv(sim, schedule)
}

/// The body of [`run_kv`] for an already built simulator (tests switch bugs on first).
pub(crate) fn drive_kv(
    sim: Simulator<KvStateMachine>,
    schedule: &Schedule,
) -> Result<RunReport, SimFailure> {
    let workload = KvWorkload { keys: sim.config.keys };
    drive_kv_with(sim, workload, schedule)
}

/// [`drive_kv`] for any state machine with the KV commands and outputs, under `workload`.
pub(crate) fn drive_kv_with<S: StateMachine<Command = KvCommand, Output = KvOutput>>(
    mut sim: Simulator<S>,
    workload: impl super::Workload<S> + 'static,
    schedule: &Schedule,
) -> Result<RunReport, SimFailure> {
    sim.start_clients(workload);
    sim.run_schedule(schedule)?;
    let commit_index = sim.settle()?;
    match check_kv_history(sim.history()) {
        Ok(linearizable) => Ok(sim.report(commit_index, linearizable)),
        Err(v) => Err(sim.fail(FailureKind::NotLinearizable(v))),
    }
}

fn setup_failure(seed: u64, e: FaultError) -> SimFailure {
    SimFailure { seed, at: Duration::ZERO, kind: FailureKind::Fault(e), trace: Vec::new() }
}

impl<S: StateMachine> Simulator<S> {
    /// Runs the fault phase: each fault at its offset from now, then to the phase's end.
    ///
    /// # Errors
    ///
    /// The first failure (an invalid fault included).
    pub fn run_schedule(&mut self, schedule: &Schedule) -> Result<(), SimFailure> {
        if let Err(e) = schedule.validate(&self.config) {
            return Err(self.fail(FailureKind::Fault(e)));
        }
        let start = self.now;
        for (offset, fault) in &schedule.events {
            self.run_until(start + micros(*offset))?;
            if let Err(e) = self.apply_fault(fault) {
                return Err(self.fail(FailureKind::Fault(e)));
            }
            self.check_failed()?;
        }
        self.run_until(start + micros(self.config.fault_phase))
    }

    /// Ends the faults: heals the network, makes it reliable (with the configured delays) and
    /// gives each inbox the config's byte budget again (a [`Fault::InboxBytes`](super::Fault::InboxBytes) ends),
    /// restarts every crashed member, stops new client operations and membership changes, and
    /// runs until the cluster converges. Returns the commit index every member agrees on.
    ///
    /// # Errors
    ///
    /// [`FailureKind::NotConverged`] if the quiet period ends first, or any safety failure.
    pub fn settle(&mut self) -> Result<LogIndex, SimFailure> {
        self.churning = false;
        self.crash_armed.clear();
        // NB: a failure already struck is still recovered from (`Event::Recover`).
        self.nodes.values().for_each(|node| node.storage.disarm());
        self.disarm_transports();
        self.on_new_leader.clear();
        self.quiet = true;
        if let Err(kind) = self.resume_all() {
            return Err(self.fail(kind));
        }
        self.heal();
        let reliable = self.config.network.reliable(); // the base delays, not a lossy spell's
        self.set_network(reliable).expect("a reliable copy of a valid network is valid");
        self.end_inbox_fault();
        self.restart_all().expect("members exist");
        self.stop_clients();
        self.close_changes();
        self.note("quiet".to_owned());
        // NB: from the time the last message sent during the faults lands, not from now. A
        // long-tail delay (up to 2 s) keeps delivering a crashed leader's old AppendEntries,
        // and each counts as contact with the leader of that term, so no follower grants a
        // pre-vote until they stop (found by the soak: nemesis seed 2233049).
        let deadline = self.last_delivery.max(self.now) + micros(self.config.quiet_phase);
        loop {
            self.run_for(CONVERGENCE_POLL)?;
            if let Err(e) = self.readmit_re_added() {
                return Err(self.fail(FailureKind::Fault(e)));
            }
            match self.convergence() {
                Ok(commit) => return Ok(commit),
                Err(why) if self.now >= deadline => {
                    return Err(self.fail(FailureKind::NotConverged(why)))
                }
                Err(_) => {}
            }
        }
    }

    /// Whether every member of the leader's configuration runs, has committed and applied the
    /// leader's whole log, and holds the same state; `Err` says what is still missing.
    pub fn convergence(&self) -> Result<LogIndex, String> {
        if self.clients_busy() || self.changes_pending() {
            return Err("clients or membership changes still busy".to_owned());
        }
        let leader = self.leader().ok_or("no leader")?;
        let lc = self.core(leader).expect("the leader runs");
        let target = lc.log().last_index();
        let digest = self.with_state_machine(leader, S::digest).expect("the leader runs");
        let mut behind = Vec::new();
        for id in lc.config().members() {
            let Some(core) = self.core(id) else {
                behind.push(format!("member {id} is down"));
                continue;
            };
            if !caught_up(core, target) {
                behind.push(lag(id, core, target));
            } else if let Some(queued) = self.applies_queued(id) {
                behind.push(format!("{id} has {queued} apply tasks queued"));
            } else if self.with_state_machine(id, S::digest) != Some(digest) {
                behind.push(format!("{id}'s state machine differs from the leader's"));
            }
        }
        if behind.is_empty() {
            return Ok(target);
        }
        Err(format!("leader {leader} (term {}) at i{target}; {}", lc.term(), behind.join("; ")))
    }

    fn report(&self, commit_index: LogIndex, linearizable: CheckOutcome) -> RunReport {
        let history = self.history();
        let mut stats = self.stats;
        stats.transfers_won = self.transfers_won();
        stats.dropped_link_bytes = self.network.refused_bytes();
        let running = self.nodes.values().filter_map(|n| n.live.as_ref());
        stats.reads_by_lease += running.map(|l| l.driver.metrics().reads_lease).sum::<u64>();
        RunReport {
            seed: self.config.seed,
            trace_hash: self.trace.hash(),
            trace_lines: self.trace.lines(),
            simulated: self.now(),
            stats,
            ops: history.len(),
            ops_completed: history.iter().filter(|op| op.completed.is_some()).count(),
            commit_index,
            linearizable,
            trace: self.trace.full().map(<[String]>::to_vec),
        }
    }
}

/// How far behind the leader's `target` a member is, in words.
fn lag<C: Clone>(id: NodeId, core: &Core<C>, target: LogIndex) -> String {
    let (commit, applied, last) =
        (core.commit_index(), core.last_applied(), core.log().last_index());
    let entries = target.0.saturating_sub(commit.0.min(last.0));
    format!(
        "{id} is {entries} entries behind ({:?} in term {}, commit {commit}, applied {applied}, last {last})",
        core.role(),
        core.term()
    )
}

fn caught_up<C: Clone>(core: &Core<C>, target: LogIndex) -> bool {
    core.commit_index() == target
        && core.last_applied() == target
        && core.log().last_index() == target
}
