//! Simulation settings: [`SimConfig`] (the cluster, the workload, the phases) and
//! [`NetworkConfig`] (the lossy network), with [`FaultError`] for settings that make no sense.
//!
//! Owns validation only: nothing here draws random numbers or moves time.

use std::time::Duration;

use crate::config::Config;
use crate::error::{check_probability, check_range, FaultError};

/// How the simulated network treats each message. Reordering comes from the delay range:
/// two messages on the same link overtake each other when their delays differ enough.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    /// The shortest one-way delay.
    pub min_delay: Duration,
    /// The longest one-way delay (inclusive).
    pub max_delay: Duration,
    /// Probability that a request (RequestVote, AppendEntries, TimeoutNow) is lost.
    pub drop_request: f64,
    /// Probability that a reply is lost.
    pub drop_reply: f64,
    /// Probability that a message is delivered twice (each copy with its own delay).
    pub duplicate: f64,
    /// The most messages in flight on one directed link; more are dropped, as a full buffer
    /// would. Bounds message storms (for example a ping-pong that duplication amplifies).
    pub link_capacity: u32,
    /// Probability that a message is held in the long tail instead: delivered after a delay
    /// drawn from `long_delay`, several election timeouts later, when terms have moved on.
    pub long_tail: f64,
    /// The long tail's delays, `min..max` (half-open; must not be empty while `long_tail > 0`).
    pub long_delay: (Duration, Duration),
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            min_delay: Duration::from_micros(500),
            max_delay: Duration::from_millis(5),
            drop_request: 0.02,
            drop_reply: 0.02,
            duplicate: 0.02,
            link_capacity: 64,
            long_tail: 0.0,
            long_delay: (Duration::from_millis(150), Duration::from_secs(2)),
        }
    }
}

impl NetworkConfig {
    /// A reliable network with the same delays: no loss, no duplication.
    pub fn reliable(&self) -> Self {
        NetworkConfig { drop_request: 0.0, drop_reply: 0.0, duplicate: 0.0, ..self.clone() }
    }

    /// Checks that probabilities lie in [0, 1] and the delay range is not inverted.
    pub fn validate(&self) -> Result<(), FaultError> {
        let probabilities = [
            ("drop_request", self.drop_request),
            ("drop_reply", self.drop_reply),
            ("duplicate", self.duplicate),
        ];
        for (name, value) in probabilities {
            check_probability(name, value)?;
        }
        check_probability("long_tail", self.long_tail)?;
        check_range("message delay", self.min_delay, self.max_delay)?;
        let (min, max) = self.long_delay;
        check_range("long_delay", min, max)?;
        if self.long_tail > 0.0 && min == max {
            return Err(FaultError::EmptyRange { field: "long_delay" });
        }
        Ok(())
    }
}

/// Leader churn, a reactive nemesis: every new leader crashes soon after winning, and some
/// new candidates crash at once; each comes back after a short downtime. Short-lived leaders
/// that replicate partially make Figure 8 shapes common; quick reboots of candidates test that
/// votes survive restarts.
#[derive(Clone, Debug, PartialEq)]
pub struct Churn {
    /// A new leader crashes after a uniformly drawn time in this range (inclusive).
    pub leader_lifetime: (Duration, Duration),
    /// Probability that a node crashes a moment (under a tick) after becoming a candidate.
    pub candidate_crash: f64,
    /// A node crashed by churn restarts after a uniformly drawn downtime in this range.
    pub downtime: (Duration, Duration),
}

impl Default for Churn {
    fn default() -> Self {
        Churn {
            leader_lifetime: (Duration::from_millis(2), Duration::from_millis(60)),
            candidate_crash: 0.2,
            downtime: (Duration::from_micros(100), Duration::from_millis(30)),
        }
    }
}

impl Churn {
    /// Checks the probability and that neither range is inverted.
    pub fn validate(&self) -> Result<(), FaultError> {
        check_probability("candidate_crash", self.candidate_crash)?;
        check_range("leader_lifetime", self.leader_lifetime.0, self.leader_lifetime.1)?;
        check_range("downtime", self.downtime.0, self.downtime.1)
    }
}

/// Everything one simulated run depends on: the same `SimConfig` (and schedule) replays the
/// same run, byte for byte.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Seeds every random choice: the network, the workload, the fault schedule, the cores.
    pub seed: u64,
    /// Initial cluster size; nodes are `n1..=nN`.
    pub nodes: u64,
    /// The cores' timing, in virtual time (much shorter than wall-clock defaults is fine).
    pub raft: Config,
    /// The network during the fault phase.
    pub network: NetworkConfig,
    /// Number of virtual clients (0 for none).
    pub clients: u64,
    /// Number of distinct keys the KV workload touches (small, to force contention).
    pub keys: u64,
    /// A client gives up on an operation after this long and records its outcome as unknown
    /// (with `client_retries`, as never applied if every attempt was refused).
    pub op_timeout: Duration,
    /// How long a client waits before retrying when no leader is known.
    pub retry_backoff: Duration,
    /// Length of the phase in which the fault schedule runs.
    pub fault_phase: Duration,
    /// Longest quiet period (healed, all restarted) allowed for convergence.
    pub quiet_phase: Duration,
    /// Leader churn (crash every new leader soon after it wins), or `None`.
    pub churn: Option<Churn>,
    /// Keep every trace line (slow; for replaying a failure). The hash is always kept.
    pub record_trace: bool,
    /// Clock drift bound in (0, 1], or `None`: each node's tick period is the configured tick
    /// scaled by a factor drawn once per node from `[1 - drift, 1 + drift]`.
    pub clock_drift: Option<f64>,
    /// Client requests reaching one node within this window are handed to its driver as one
    /// batch (one `Driver::handle` call), or `None` for one request per step.
    pub batch_window: Option<Duration>,
    /// Model the sync boundary of stable storage: a crash loses writes not yet synced
    /// (keeping at random a prefix of them, the last one torn). See `sim/storage.rs`.
    pub storage_faults: bool,
    /// Hold each node's sync up to this long (drawn per batch) after the first message of a
    /// burst: what reaches it
    /// meanwhile joins one batch (`Driver::begin_batch`), as the thread runtime batches a
    /// full inbox. A leader's AppendEntries leave at once, its own write synced only at the
    /// end (thesis §10.2.1), so followers may answer before the leader's write is durable.
    /// `None`: every delivery syncs at once.
    pub sync_window: Option<Duration>,
    /// Sync in the background, as the thread runtime does with `Config::background_sync`
    /// (`Storage::start_sync`): each
    /// node's sync completes up to this long (drawn per sync) after it starts, while the node
    /// goes on stepping; what waits for it runs at completion. `None`: syncs complete at
    /// once. Combines with `sync_window`: a batch's end then starts a sync instead of
    /// running one.
    pub background_sync: Option<Duration>,
    /// Apply off the step, as the thread runtime does (`node/apply.rs`, `Backlog`): a step
    /// only queues its applies, answers, reads and snapshots, and they run up to this long
    /// (drawn per drain) later, as a node's worker or a waiting caller runs them. A caller
    /// (half the drains) runs what was queued when it started and stops before a snapshot or
    /// a restore; a snapshot reaches the core as a later step (`Input::SnapshotTaken`).
    /// `None`: everything is applied within the step that commits it.
    pub deferred_apply: Option<Duration>,
    /// Clients ask for forwarding, as a handle with `forward_to_leader` does (a
    /// `Request::Forward`): a node that does not lead hands the request to the leader it knows,
    /// in-process, arriving up to 50 µs later (a leader down by then drops it: `NodeDown`;
    /// one already down when forwarded to: `LeaderUnreachable`), and the leader answers the
    /// client. Off: a follower answers `NotLeader` and the client redirects.
    pub forward_requests: bool,
    /// Clients retry as `Client::propose` does (its own rule, `Retry`): a proposal refused
    /// before appending, replaced (`ProposalDropped`), refused during a leadership transfer, or
    /// lost with a node before it was appended is sent again, elsewhere; so the checkers judge
    /// that rule. At `op_timeout` an operation no attempt of which may have been appended
    /// (every one refused or replaced: `Client::propose`'s `Unavailable`) is recorded as never
    /// applied, any other as unknown. Off: a client follows `NotLeader` hints and gives up any other refusal
    /// (recorded as never applied), and waits out a crash.
    pub client_retries: bool,
    /// Serve the workload's reads ([`Workload::read`](super::Workload::read)) without the log,
    /// through every path: at the leader by ReadIndex (or its lease, with
    /// `raft.lease_reads`), at a follower by a follower read. Off: every command goes through
    /// the log.
    pub reads: bool,
    /// Clients resend an operation that timed out (the same command, up to 10 times) instead
    /// of giving up: what a session client does, whose retries the session table must
    /// deduplicate. Off: a timed-out operation's outcome stays unknown.
    pub retry_timeouts: bool,
    /// With `reads` and `raft.lease_reads`: this percentage of the reads (chosen by op number,
    /// not by the RNG) first try the lease path the runtime runs on the caller's thread
    /// (`LeaseView::read_locally`, on the reading node's own drifting clock) and take the
    /// node's path only if it declines. 0: every read goes through the node's step loop.
    pub caller_read_percent: u8,
    /// Request a leadership transfer to a random follower about this often during the fault
    /// phase ([`Fault::Transfer`](super::Fault::Transfer); the schedule draws them), or `None`.
    pub transfers: Option<Duration>,
    /// Random schedules ([`Schedule::random`](super::Schedule::random)) arm storage
    /// failures ([`Fault::FailStorage`](super::Fault::FailStorage)): a node's append panics
    /// (or, in some draws, fails with an io error) after writing part of its entries, or (a
    /// quarter of the draws each) its hard-state write or snapshot write fails, writing
    /// nothing. The node fails through the path the thread runtime runs (`Error::NodePanicked` or
    /// `Error::Storage`; everything waiting on it answered at once), takes no input, and is
    /// killed and restarted from its storage 20-300 ms later, as an operator would. Off: no
    /// schedule draws them (a hand-written [`Fault::FailStorage`](super::Fault::FailStorage)
    /// fires all the same).
    pub storage_failures: bool,
    /// Random schedules arm transport failures
    /// ([`Fault::FailTransport`](super::Fault::FailTransport)): a node's `send` panics, as a
    /// user's transport may, and the node fails as for a storage panic. Off: no schedule
    /// draws them.
    pub transport_failures: bool,
    /// Random schedules arm sync failures ([`Fault::FailSync`](super::Fault::FailSync)): a
    /// node's sync makes nothing durable and panics or fails; with
    /// [`SimConfig::storage_faults`] its pending writes are then lost, in part or whole, at
    /// the operator's kill, and half of the failures lose the writes they covered for good
    /// (`loses_writes`, as Linux may after a failed `fsync`). Off: no schedule draws them.
    pub sync_failures: bool,
}

impl SimConfig {
    /// Defaults tuned for fast, fault-heavy runs: 1 ms ticks, 10 ms heartbeats,
    /// 50..100 ms election timeouts and a 1 s catch-up limit for new nodes, so a few virtual
    /// seconds hold many elections.
    pub fn new(seed: u64, nodes: u64) -> Self {
        let raft = Config {
            election_timeout: Duration::from_millis(50)..Duration::from_millis(100),
            heartbeat_interval: Duration::from_millis(10),
            tick: Duration::from_millis(1),
            max_entries_per_append: 64,
            max_inflight: 8,
            catch_up_timeout: Duration::from_secs(1),
            seed,
            snapshot_entries: 0,
            ..Config::default()
        };
        SimConfig {
            seed,
            nodes,
            raft,
            network: NetworkConfig::default(),
            clients: 4,
            keys: 3,
            op_timeout: Duration::from_millis(200),
            retry_backoff: Duration::from_millis(5),
            fault_phase: Duration::from_millis(3000),
            quiet_phase: Duration::from_millis(3000),
            churn: None,
            record_trace: false,
            clock_drift: None,
            batch_window: None,
            storage_faults: false,
            sync_window: None,
            background_sync: None,
            deferred_apply: None,
            forward_requests: false,
            client_retries: false,
            reads: false,
            retry_timeouts: false,
            caller_read_percent: 0,
            transfers: None,
            storage_failures: false,
            transport_failures: false,
            sync_failures: false,
        }
    }

    /// Checks the cores' config, the network and the cluster size.
    pub fn validate(&self) -> Result<(), FaultError> {
        self.raft.validate().map_err(FaultError::InvalidConfig)?;
        if self.nodes == 0 {
            return Err(FaultError::NoNodes);
        }
        if let Some(churn) = &self.churn {
            churn.validate()?;
        }
        if let Some(drift) = self.clock_drift {
            if !(drift > 0.0 && drift <= 1.0) {
                return Err(FaultError::DriftBound(drift));
            }
        }
        if self.caller_read_percent > 100 {
            return Err(FaultError::CallerReadPercent(self.caller_read_percent));
        }
        if self.batch_window == Some(Duration::ZERO) {
            return Err(FaultError::EmptyRange { field: "batch_window" });
        }
        if self.transfers == Some(Duration::ZERO) {
            return Err(FaultError::EmptyRange { field: "transfers" });
        }
        self.network.validate()
    }

    /// The whole run's length: the fault phase plus the longest quiet period.
    pub fn run_length(&self) -> Duration {
        self.fault_phase + self.quiet_phase
    }
}
