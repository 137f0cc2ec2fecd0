//! [`Config`]: timing and limits for every node, validated once on construction.
//!
//! The core never reads a clock: durations here are converted to whole ticks
//! ([`Config::election_timeout_ticks`], [`Config::heartbeat_ticks`]) and time reaches the core as
//! `Input::Tick`.

use std::ops::Range;
use std::time::Duration;

use crate::error::ConfigError;
use crate::transport::MAX_QUEUE_BYTES;

/// The fewest distinct election timeouts, in ticks, a valid configuration offers (§5.2: with
/// fewer, split votes become common; the paper measured 150..151ms to take seconds).
pub const MIN_ELECTION_SPREAD_TICKS: u64 = 3;

/// Timing and limits shared by every node of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Election timeouts are drawn uniformly from this range (§5.2; default 150ms..300ms).
    pub election_timeout: Range<Duration>,
    /// How often a leader sends heartbeats; must be below the minimum election timeout.
    pub heartbeat_interval: Duration,
    /// The length of one tick of the logical clock that drives every timer.
    pub tick: Duration,
    /// The most entries one AppendEntries carries.
    pub max_entries_per_append: usize,
    /// The most AppendEntries a leader keeps unacknowledged per follower (pipelining window).
    pub max_inflight: usize,
    /// The largest command a node accepts, in bytes as the core's sizer measures them
    /// ([`Core::command_size`](crate::core::Core::command_size)); larger ones are refused with
    /// `Error::CommandTooLarge` by the driver (default 16 MiB).
    pub max_command_bytes: usize,
    /// The most bytes of commands one AppendEntries carries; at least one entry is always sent,
    /// however large (default 1 MiB; thesis §10.2.2), so heartbeats stay frequent.
    pub max_append_bytes: usize,
    /// The most bytes of commands a leader keeps unacknowledged per follower: the pipelining
    /// window closes once this many are in flight (default 8 MiB; at least `max_append_bytes`).
    pub max_inflight_bytes: usize,
    /// The most bytes of commands a leader holds appended but not yet committed (etcd's
    /// `MaxUncommittedEntriesSize`). Past it the leader refuses new proposals with
    /// `Error::UncommittedLogFull`, before appending them (never applied: safe to retry after
    /// a pause), so a leader that cannot commit (cut off in a minority without
    /// `check_quorum`, or offered more than the cluster commits) stops growing its log and
    /// its waiting proposals. Each command counts its size as the core's sizer measures it
    /// (`StateMachine::command_size`) plus what its entry costs the leader in memory besides
    /// ([`entry_overhead`](crate::entry_overhead): the log's entry, the store's copy, the
    /// waiting answer and receipt; about 490 bytes for the KV state machine), so the cap
    /// bounds that memory, a flood of tiny commands included (32 MiB: some 68,000 tiny KV
    /// commands); not counted: the log vectors' spare capacity (at most a slot per entry).
    /// No-ops and configuration entries count nothing and are never refused. A batch is
    /// accepted whenever nothing is uncommitted, however large, so no command is refused
    /// forever. Default 32 MiB (four in-flight windows); at least `max_inflight_bytes`.
    pub max_uncommitted_bytes: usize,
    /// Seeds each node's RNG (mixed with its id and term), from which election timeouts are
    /// drawn. [`Config::default`] draws it from OS randomness, so every cluster in every process
    /// times out differently; set it explicitly for determinism: the same seed and the same
    /// inputs replay the same run (simulation, tests).
    pub seed: u64,
    /// Pre-vote before campaigning (thesis §9.6): a rejoining node cannot inflate terms.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a majority for an election timeout.
    pub check_quorum: bool,
    /// How long a new node may take to catch up as a learner before its addition fails
    /// (`Error::CatchUpFailed`) and the configuration is restored.
    pub catch_up_timeout: Duration,
    /// Capacity of each node's inbox, in messages; a message to a full inbox is dropped, as a
    /// lossy network would drop it. Also the capacity of its request queue.
    pub inbox_capacity: usize,
    /// The most bytes of peer messages a node's inbox holds (default 64 MiB), each counted as
    /// [`Metrics::bytes_sent`](crate::Metrics::bytes_sent) estimates it. A message that would
    /// take it past this is dropped, as a lossy network would drop it (Raft sends again),
    /// unless the inbox is empty: a message larger than the whole budget still gets in alone.
    /// Without it, a node that stops reading for a while (stalled on its apply backlog,
    /// paused, descheduled) would hold up to `inbox_capacity` messages of whatever size: 64
    /// GiB of megabyte AppendEntries. In steady state a node's inbox holds about one leader's
    /// window (`max_inflight_bytes`, or a snapshot's chunks in flight), so the default leaves
    /// room for eight of them, and the bound only bites in a stall. At least
    /// `max_inflight_bytes` and the snapshot window, at most
    /// [`MAX_QUEUE_BYTES`].
    pub max_inbox_bytes: usize,
    /// The most bytes of proposals a node's request queue holds (default 64 MiB), each
    /// counted as its command's `StateMachine::command_size`, measured by the caller's handle
    /// as it sends. A proposal that does not fit waits as one to a queue full of requests
    /// does (`propose_async` until there is room; a call with a deadline until then, and
    /// `Error::QueueFull` if there is still none), unless the queue holds no proposal bytes:
    /// a command larger than the whole budget still gets in alone. Without it, a stalled
    /// node's queue holds up to `inbox_capacity` proposals of up to `max_command_bytes` each:
    /// 1 TiB. Only proposals count: reads, status, compaction, membership and transfer
    /// requests are few and small, bounded by `inbox_capacity` alone; so are proposals a
    /// node forwards to its leader. Small proposals, of at most this budget divided by
    /// `2 * inbox_capacity` bytes (512 by default), are not counted one by one: the queue's
    /// slots bound them to half the budget, and the larger ones share the other half, so
    /// that small commands touch no counter shared between callers. At least 1, at most
    /// [`MAX_QUEUE_BYTES`].
    pub max_queued_request_bytes: usize,
    /// The deadline of every blocking call that takes none (`Cluster::propose`,
    /// `Client::propose`, `Cluster::status`, finding a leader for a membership change). An
    /// addition may take `catch_up_timeout` on top, while the new node catches up.
    pub request_timeout: Duration,
    /// Snapshot policy (thesis §5.1.2): take a snapshot once the log holds this many applied
    /// entries beyond the last snapshot, then drop them from the log. 0 never snapshots
    /// automatically (`NodeHandle::compact` still does).
    pub snapshot_entries: u64,
    /// The most committed entries a node keeps waiting for its state machine (default
    /// 100,000). While more wait, the node's loop takes no new input (peer messages, client
    /// requests, ticks) and helps its applier or waits for it instead, as etcd's loop blocks
    /// handing committed entries to a slow applier: a node whose `apply` is slower than the
    /// cluster commits (a follower, or a leader fed faster than it applies) then holds about
    /// this many entries, plus what one step commits, instead of growing without bound; its
    /// log, compacted only through what is applied, stays bounded with it. While stalled
    /// the node answers nobody: a stalled leader may lose its leadership (it is far behind
    /// anyway), a stalled follower falls behind and catches up when it resumes, and clients'
    /// requests wait in its queue (`inbox_capacity`). Its timers stop with it, as in a long
    /// pause, so it does not campaign on resuming. Must be at least 1.
    pub max_apply_backlog: usize,
    /// The most snapshot bytes one InstallSnapshot chunk carries.
    pub snapshot_chunk_bytes: usize,
    /// The most InstallSnapshot chunks a leader keeps unacknowledged per follower.
    pub snapshot_chunks_in_flight: usize,
    /// Lease reads (thesis §6.4.1): a leader answers reads without a confirmation round while
    /// its lease holds. Off by default; requires `check_quorum`. Safe only while every node's
    /// clock runs within `clock_drift_bound` of every other's (see [`ClockDrift`]). A read
    /// may still insist on a round ([`ReadPolicy::ReadIndex`](crate::ReadPolicy), through
    /// `read_with`); without this option no read is served by a lease, whatever it asks.
    pub lease_reads: bool,
    /// How much faster one node's clock may run than another's (at least 1): a lease lasts
    /// the minimum election timeout divided by this bound. Default 1.1.
    pub clock_drift_bound: ClockDrift,
    /// How many times a thread that expects work within microseconds yields the CPU, polling,
    /// before it sleeps: a node's loop waiting for its next message, and a caller blocked in
    /// [`Receipt::wait`](crate::Receipt::wait).
    /// Spinning buys latency with CPU time: a sleeping thread takes microseconds to wake, and
    /// waking it costs the waker as much. 0 sleeps at once: choose it when the nodes share
    /// their cores with other busy work, since a spinner's yields hand the core to whatever
    /// else is runnable, and for async callers (tasks never block in `Receipt::wait`, and
    /// parked node loops leave the cores to the executor: tighter tails, NOTES.md has the
    /// figures). Default: 64 on a machine with two cores or more, 0 on one core.
    /// `bench clients` and `bench latency` report the CPU time per operation it costs.
    pub spin_rounds: u32,
    /// Let a leader run its followers' steps when they share its [`Cluster`](crate::Cluster):
    /// a leader's loop spinning with nothing of its own to do (see `spin_rounds`) handles the
    /// messages waiting for a follower of the same `Cluster`, unless that follower's loop is
    /// running a step already. It then handles their acknowledgements itself, so a commit does
    /// not wait for each node's thread to be scheduled in turn: on a machine with fewer cores
    /// than busy threads that wait is most of a commit (NOTES.md: about +40% for 16 to 256
    /// blocked callers on 2 cores, and one caller's latency from about 8 to 6 µs). Protocol
    /// steps, their order and what each node persists are unchanged; only the thread differs.
    /// A follower's entries are applied by its own workers, never by the leader's. Default on.
    /// No effect across processes (a node of the TCP transport has no followers in its
    /// `Cluster`) or with `spin_rounds: 0`. Turn it off to keep each node's storage calls on
    /// its own threads (say, a disk store without `background_sync`, whose fsync would then
    /// sometimes run on the leader's loop, or, with `callers_help`, on a caller's thread).
    pub help_peers: bool,
    /// Let a caller blocked in [`Receipt::wait`](crate::Receipt::wait) (and so in
    /// [`Client::propose`](crate::Client::propose)) on the leader do the leader's waiting work
    /// instead of yielding its core while it spins (see `spin_rounds`): the acknowledgements
    /// waiting in the leader's inbox and, with `help_peers`, its followers' messages; then
    /// apply what that committed and answer every caller it covers. On a machine with more
    /// blocked callers than cores, the thread on a core is most often a caller, so a commit
    /// then waits for no node's thread to be scheduled (NOTES.md, eleventh session: +11-18%
    /// for 16 and 64 blocked callers on 2 cores, +4% for 256, p99 at 16 halved). New requests
    /// stay for the leader's loop, which takes them as one batch, and snapshots for the
    /// node's own workers; so do commits while `apply` is slow (over 20 µs an entry in the
    /// last batch: a caller that applied them would be held past its own answer). A caller
    /// times each entry it applies and stops after the first that shows `apply` slow, or
    /// once it has applied for 1 ms: a call with a deadline returns late by at most about
    /// 1 ms plus one `apply` call and the reads waiting on its index (a lease read served on
    /// the caller's thread likewise). Protocol steps
    /// and their order are unchanged; only the thread differs. Turn it off to keep
    /// [`StateMachine::apply`](crate::StateMachine::apply) and, with `help_peers`, the
    /// followers' storage calls on the nodes' own threads, and deadlines exact. Default on;
    /// no effect with `spin_rounds: 0` or on async callers (they never block in `wait`).
    pub callers_help: bool,
    /// Run each node's fsync on a thread of its own
    /// ([`Storage::start_sync`](crate::storage::Storage::start_sync)) instead of the node's
    /// loop: while the disk
    /// syncs, the node goes on receiving, replicating and (a leader) committing, applying and
    /// answering what a majority already holds, and what waits for the sync goes out when it
    /// returns (thesis §10.2.1 taken to every role; etcd's asynchronous storage writes). It
    /// keeps heartbeats, reads and commits from queueing behind a slow disk. Default off: on
    /// the 2-core machine of NOTES.md it raised neither durable throughput nor latency, and
    /// its waiting loops cost CPU (1-client CPU per write 500-650 µs against ~310 µs). Only
    /// matters for storage whose `sync` does real work (the disk store).
    pub background_sync: bool,
    /// Let a busy leader leave its own appends unsynced while its followers alone make a
    /// quorum that keeps up. Thesis §10.2.1 lets a leader write its log in parallel with
    /// replicating it, counting itself towards commitment only for what it has synced; so
    /// when a quorum of *other* voters is replicating and acknowledged new entries within the
    /// last tick, they commit without the leader, and its fsync only competes with theirs for
    /// the disk. With this on, such a leader skips it. It syncs as soon as that stops being true (a
    /// follower falls silent for a tick, or probes), when it writes its term or vote, and
    /// when it steps down. Nothing is acknowledged or counted that is not synced, so safety
    /// is the same; a crashed leader loses only appends nobody counted.
    ///
    /// Default off. Choose it when every voter has a disk as fast as the leader's and the
    /// cluster is disk-bound: in a 3-node cluster the leader then syncs only when a follower
    /// falls behind, so the disks do a third fewer fsyncs (on one shared disk in NOTES.md,
    /// 256 writes outstanding went from 478k to 572k a second, and one client's latency from
    /// 249 to 163 µs). Leave it off when one
    /// voter is much slower than the others (another datacenter, a slower disk): commits
    /// would then wait for the slowest follower of a quorum instead of the leader's own
    /// disk. When a follower fails under load, commits wait up to about two ticks before
    /// the leader notices and syncs again. No effect with fewer than 3 voters, or on storage
    /// whose `sync` does nothing (the memory store).
    pub defer_leader_sync: bool,
}

/// A bound on clock drift between nodes, as a ratio of rates (1.0: perfect clocks; 1.1: one
/// clock may run up to 10% faster than another). Lease reads assume it holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClockDrift(pub f64);

// NB: `Config` is `Eq`; a drift bound is compared bit for bit, which is what equality of two
// configurations means.
impl Eq for ClockDrift {}

impl Default for ClockDrift {
    fn default() -> Self {
        ClockDrift(1.1)
    }
}

impl Default for Config {
    /// The paper's timing (election 150..300ms, heartbeat 50ms, tick 10ms) and a random `seed`.
    fn default() -> Self {
        Config {
            election_timeout: Duration::from_millis(150)..Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(50),
            tick: Duration::from_millis(10),
            max_entries_per_append: 1024,
            max_inflight: 32,
            max_command_bytes: 16 << 20,
            max_append_bytes: 1 << 20,
            max_inflight_bytes: 8 << 20,
            max_uncommitted_bytes: 32 << 20,
            seed: rand::random::<u64>(),
            pre_vote: true,
            check_quorum: true,
            catch_up_timeout: Duration::from_secs(10),
            inbox_capacity: 65_536,
            max_inbox_bytes: 64 << 20,
            max_queued_request_bytes: 64 << 20,
            request_timeout: Duration::from_secs(5),
            snapshot_entries: 100_000,
            max_apply_backlog: 100_000,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunks_in_flight: 4,
            lease_reads: false,
            clock_drift_bound: ClockDrift::default(),
            spin_rounds: default_spin_rounds(),
            help_peers: true,
            callers_help: true,
            background_sync: false,
            defer_leader_sync: false,
        }
    }
}

/// The longest election timeout or catch-up timeout (and so heartbeat and tick) a [`Config`]
/// takes: one day. Counted in ticks, longer ones might not fit the core's clock.
pub const MAX_TIMER: Duration = Duration::from_secs(24 * 60 * 60);

/// The largest `inbox_capacity`: each node's two queues of that many slots are allocated when
/// it starts.
pub const MAX_INBOX_CAPACITY: usize = 1 << 22;

/// 64 yields before sleeping, unless the machine has a single core (see `Config::spin_rounds`).
fn default_spin_rounds() -> u32 {
    match std::thread::available_parallelism() {
        Ok(cores) if cores.get() > 1 => 64,
        _ => 0,
    }
}

impl Config {
    /// Checks every field; the error says what is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Range { start: min, end: max } = self.election_timeout;
        if min == max {
            return Err(ConfigError::EmptyElectionTimeout { min });
        }
        if min > max {
            return Err(ConfigError::InvertedElectionTimeout { min, max });
        }
        for (field, value) in
            [("election_timeout", max), ("catch_up_timeout", self.catch_up_timeout)]
        {
            if value > MAX_TIMER {
                return Err(ConfigError::TimerTooLong { field, value });
            }
        }
        if self.heartbeat_interval >= min {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat: self.heartbeat_interval,
                min_election: min,
            });
        }
        if self.tick.is_zero() || self.tick > self.heartbeat_interval {
            return Err(ConfigError::BadTick {
                tick: self.tick,
                heartbeat: self.heartbeat_interval,
            });
        }
        self.validate_ticks()?;
        self.validate_limits()?;
        self.validate_lease()
    }

    /// Lease reads rely on CheckQuorum and a drift bound of at least 1 (thesis §6.4.1), and on
    /// a lease of at least one tick.
    fn validate_lease(&self) -> Result<(), ConfigError> {
        let bound = self.clock_drift_bound.0;
        if !(bound >= 1.0 && bound.is_finite()) {
            return Err(ConfigError::DriftBoundBelowOne { bound: self.clock_drift_bound });
        }
        if self.lease_reads && !self.check_quorum {
            return Err(ConfigError::LeaseWithoutCheckQuorum);
        }
        if self.lease_reads && self.lease_ticks() == 0 {
            return Err(ConfigError::LeaseTooShort {
                min_election_ticks: self.election_timeout_ticks().start,
                bound: self.clock_drift_bound,
            });
        }
        Ok(())
    }

    /// A leader's lease in ticks: the minimum election timeout, less two ticks for where
    /// within a tick a timer starts and fires, divided by the drift bound (rounded down).
    pub fn lease_ticks(&self) -> u64 {
        let usable = self.election_timeout_ticks().start.saturating_sub(2);
        (usable as f64 / self.clock_drift_bound.0.max(1.0)).floor() as u64
    }

    /// The core counts whole ticks, so the checks that matter are on the rounded values: a
    /// heartbeat must fire before the earliest election timeout, and timeouts must spread over
    /// enough distinct ticks that nodes rarely time out together (§5.2).
    fn validate_ticks(&self) -> Result<(), ConfigError> {
        let (heartbeat, election) = (self.heartbeat_ticks(), self.election_timeout_ticks());
        if heartbeat >= election.start {
            return Err(ConfigError::HeartbeatTicksTooSlow {
                heartbeat: self.heartbeat_interval,
                heartbeat_ticks: heartbeat,
                min_election: self.election_timeout.start,
                min_election_ticks: election.start,
                tick: self.tick,
            });
        }
        if election.end - election.start < MIN_ELECTION_SPREAD_TICKS {
            return Err(ConfigError::ElectionRangeTooNarrow {
                election: self.election_timeout.clone(),
                ticks: election,
                tick: self.tick,
                min_spread: MIN_ELECTION_SPREAD_TICKS,
            });
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = [
            ("max_entries_per_append", self.max_entries_per_append),
            ("max_inflight", self.max_inflight),
            ("inbox_capacity", self.inbox_capacity),
            ("max_command_bytes", self.max_command_bytes),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes),
            ("snapshot_chunks_in_flight", self.snapshot_chunks_in_flight),
            ("max_append_bytes", self.max_append_bytes),
            ("max_inflight_bytes", self.max_inflight_bytes),
            ("max_uncommitted_bytes", self.max_uncommitted_bytes),
            ("max_apply_backlog", self.max_apply_backlog),
            ("max_inbox_bytes", self.max_inbox_bytes),
            ("max_queued_request_bytes", self.max_queued_request_bytes),
        ];
        if let Some((field, _)) = limits.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::ZeroLimit { field });
        }
        if self.inbox_capacity > MAX_INBOX_CAPACITY {
            return Err(ConfigError::LimitTooLarge {
                field: "inbox_capacity",
                value: self.inbox_capacity,
                max: MAX_INBOX_CAPACITY,
            });
        }
        if self.max_append_bytes > self.max_inflight_bytes {
            return Err(ConfigError::AppendBytesAboveInflight {
                append: self.max_append_bytes,
                inflight: self.max_inflight_bytes,
            });
        }
        if self.max_uncommitted_bytes < self.max_inflight_bytes {
            return Err(ConfigError::UncommittedBelowInflight {
                uncommitted: self.max_uncommitted_bytes,
                inflight: self.max_inflight_bytes,
            });
        }
        self.validate_inbox_bytes()
    }

    /// The inbox's byte budget must hold a leader's whole window (of entries, or of snapshot
    /// chunks), or a follower keeping up would lose messages in steady state.
    fn validate_inbox_bytes(&self) -> Result<(), ConfigError> {
        if self.max_queued_request_bytes > MAX_QUEUE_BYTES {
            return Err(ConfigError::LimitTooLarge {
                field: "max_queued_request_bytes",
                value: self.max_queued_request_bytes,
                max: MAX_QUEUE_BYTES,
            });
        }
        if self.max_inbox_bytes > MAX_QUEUE_BYTES {
            return Err(ConfigError::LimitTooLarge {
                field: "max_inbox_bytes",
                value: self.max_inbox_bytes,
                max: MAX_QUEUE_BYTES,
            });
        }
        let snapshot_window =
            self.snapshot_chunk_bytes.saturating_mul(self.snapshot_chunks_in_flight);
        let window = self.max_inflight_bytes.max(snapshot_window);
        if self.max_inbox_bytes < window {
            return Err(ConfigError::InboxBelowWindow { inbox: self.max_inbox_bytes, window });
        }
        Ok(())
    }

    /// The election timeout range in ticks (at least one tick wide).
    pub fn election_timeout_ticks(&self) -> Range<u64> {
        let min = self.ticks(self.election_timeout.start).max(1);
        let max = self.ticks(self.election_timeout.end).max(min + 1);
        min..max
    }

    /// The catch-up timeout in ticks (at least one maximum election timeout).
    pub fn catch_up_ticks(&self) -> u64 {
        self.ticks(self.catch_up_timeout).max(self.election_timeout_ticks().end)
    }

    /// The heartbeat interval in ticks (at least 1).
    pub fn heartbeat_ticks(&self) -> u64 {
        self.ticks(self.heartbeat_interval).max(1)
    }

    fn ticks(&self, d: Duration) -> u64 {
        (d.as_nanos() / self.tick.as_nanos().max(1)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn default_is_valid_and_matches_the_paper() {
        let c = Config::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.election_timeout_ticks(), 15..30);
        assert_eq!(c.heartbeat_ticks(), 5);
    }

    #[test]
    fn empty_election_range_is_rejected() {
        let c = Config { election_timeout: ms(150)..ms(150), ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::EmptyElectionTimeout { min: ms(150) }));
    }

    #[test]
    fn inverted_election_range_is_rejected() {
        let c = Config { election_timeout: ms(300)..ms(150), ..Config::default() };
        assert_eq!(
            c.validate(),
            Err(ConfigError::InvertedElectionTimeout { min: ms(300), max: ms(150) })
        );
    }

    #[test]
    fn heartbeat_not_below_min_election_is_rejected() {
        let c = Config { heartbeat_interval: ms(150), ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::HeartbeatTooSlow { .. })));
    }

    #[test]
    fn an_uncommitted_cap_below_the_inflight_window_is_rejected() {
        let c = Config { max_uncommitted_bytes: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::ZeroLimit { field: "max_uncommitted_bytes" }));
        let c = Config { max_uncommitted_bytes: (8 << 20) - 1, ..Config::default() };
        assert_eq!(
            c.validate(),
            Err(ConfigError::UncommittedBelowInflight {
                uncommitted: (8 << 20) - 1,
                inflight: 8 << 20
            })
        );
        assert!(c.validate().unwrap_err().to_string().contains("raise max_uncommitted_bytes"));
        let c = Config { max_uncommitted_bytes: 8 << 20, ..Config::default() };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn zero_tick_and_zero_limits_are_rejected() {
        let c = Config { tick: Duration::ZERO, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::BadTick { .. })));
        let c = Config { max_inflight: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::ZeroLimit { field: "max_inflight" }));
        let c = Config { max_entries_per_append: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::ZeroLimit { field: "max_entries_per_append" }));
        let c = Config { max_apply_backlog: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::ZeroLimit { field: "max_apply_backlog" }));
    }

    #[test]
    fn heartbeat_that_rounds_to_the_minimum_election_ticks_is_rejected() {
        // 11ms and 15..16ms all round to 1 tick of 10ms: an idle cluster would churn terms.
        let c = Config {
            heartbeat_interval: ms(11),
            election_timeout: ms(15)..ms(16),
            tick: ms(10),
            ..Config::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::HeartbeatTicksTooSlow {
                heartbeat: ms(11),
                heartbeat_ticks: 1,
                min_election: ms(15),
                min_election_ticks: 1,
                tick: ms(10),
            })
        );
        let text = c.validate().unwrap_err().to_string();
        assert!(text.contains("rounds to 1 ticks of 10ms"), "{text}");
        assert!(text.contains("use a shorter tick or longer timeouts"), "{text}");
    }

    #[test]
    fn election_range_under_three_ticks_wide_is_rejected() {
        let narrow = |max| Config {
            heartbeat_interval: ms(10),
            election_timeout: ms(50)..ms(max),
            tick: ms(10),
            ..Config::default()
        };
        assert_eq!(
            narrow(79).validate(),
            Err(ConfigError::ElectionRangeTooNarrow {
                election: ms(50)..ms(79),
                ticks: 5..7,
                tick: ms(10),
                min_spread: 3,
            })
        );
        assert_eq!(narrow(80).validate(), Ok(()), "5..8 ticks: three distinct timeouts");
        let text = narrow(79).validate().unwrap_err().to_string();
        assert!(text.contains("rounds to 5..7 ticks of 10ms"), "{text}");
        assert!(text.contains("use a shorter tick or a wider range"), "{text}");
    }

    #[test]
    fn default_seed_differs_between_configs_and_an_explicit_seed_is_kept() {
        let seeds: std::collections::BTreeSet<u64> =
            (0..8).map(|_| Config::default().seed).collect();
        assert!(seeds.len() > 1, "Config::default() draws its seed: {seeds:?}");
        assert_eq!(Config { seed: 7, ..Config::default() }.seed, 7);
    }

    #[test]
    fn byte_limits_must_be_positive_and_one_append_must_fit_the_window() {
        for field in ["max_command_bytes", "max_append_bytes", "max_inflight_bytes"] {
            let mut c = Config::default();
            match field {
                "max_command_bytes" => c.max_command_bytes = 0,
                "max_append_bytes" => c.max_append_bytes = 0,
                _ => c.max_inflight_bytes = 0,
            }
            assert_eq!(c.validate(), Err(ConfigError::ZeroLimit { field }));
        }
        let c = Config { max_append_bytes: 9, max_inflight_bytes: 8, ..Config::default() };
        assert_eq!(
            c.validate(),
            Err(ConfigError::AppendBytesAboveInflight { append: 9, inflight: 8 })
        );
        let text = c.validate().unwrap_err().to_string();
        assert!(text.contains("raise max_inflight_bytes or lower max_append_bytes"), "{text}");
        let c = Config { max_append_bytes: 8, max_inflight_bytes: 8, ..Config::default() };
        assert_eq!(c.validate(), Ok(()));
        let d = Config::default();
        assert_eq!(
            (d.max_command_bytes, d.max_append_bytes, d.max_inflight_bytes),
            (16 << 20, 1 << 20, 8 << 20)
        );
    }

    #[test]
    fn the_request_queue_byte_budget_must_be_positive_and_not_be_absurd() {
        assert_eq!(Config::default().max_queued_request_bytes, 64 << 20);
        let field = "max_queued_request_bytes";
        let c = Config { max_queued_request_bytes: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::ZeroLimit { field }));
        let huge = MAX_QUEUE_BYTES + 1;
        let c = Config { max_queued_request_bytes: huge, ..Config::default() };
        let err = c.validate().unwrap_err();
        assert_eq!(err, ConfigError::LimitTooLarge { field, value: huge, max: MAX_QUEUE_BYTES });
        let c = Config { max_queued_request_bytes: 1, ..Config::default() };
        assert_eq!(c.validate(), Ok(()), "a budget below the window is fine: proposals only");
    }

    #[test]
    fn the_inbox_byte_budget_must_be_positive_hold_a_window_and_not_be_absurd() {
        let d = Config::default();
        assert_eq!(d.max_inbox_bytes, 64 << 20);
        let c = Config { max_inbox_bytes: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::ZeroLimit { field: "max_inbox_bytes" }));
        let huge = MAX_QUEUE_BYTES + 1;
        let c = Config { max_inbox_bytes: huge, ..Config::default() };
        let err = c.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::LimitTooLarge {
                field: "max_inbox_bytes",
                value: huge,
                max: MAX_QUEUE_BYTES
            }
        );
        assert!(err.to_string().contains("more than any queue should hold"), "{err}");
        let c = Config { max_inbox_bytes: usize::MAX, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::LimitTooLarge { .. })), "no 'unbounded'");
        // Below a leader's window of entries, or of snapshot chunks.
        let c = Config { max_inbox_bytes: (8 << 20) - 1, ..Config::default() };
        let err = c.validate().unwrap_err();
        assert_eq!(err, ConfigError::InboxBelowWindow { inbox: (8 << 20) - 1, window: 8 << 20 });
        assert!(err.to_string().contains("raise max_inbox_bytes"), "{err}");
        let chunks = Config {
            snapshot_chunk_bytes: 16 << 20,
            snapshot_chunks_in_flight: 8,
            ..Config::default()
        };
        assert_eq!(
            chunks.validate(),
            Err(ConfigError::InboxBelowWindow { inbox: 64 << 20, window: 128 << 20 })
        );
        let unbounded_chunks = Config { snapshot_chunks_in_flight: usize::MAX, ..chunks.clone() };
        assert!(matches!(
            unbounded_chunks.validate(),
            Err(ConfigError::InboxBelowWindow { window: usize::MAX, .. })
        ));
        let c = Config { max_inbox_bytes: 8 << 20, ..Config::default() };
        assert_eq!(c.validate(), Ok(()), "exactly one window");
    }

    #[test]
    fn errors_explain_the_fix() {
        let text = ConfigError::EmptyElectionTimeout { min: ms(150) }.to_string();
        assert!(text.contains("make max larger than min"), "{text}");
    }
}
