//! The public error types: what a caller can act on. Broken invariants are panics, not errors.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use crate::types::{LogIndex, NodeId, Term};

/// Why a [`crate::Config`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The election timeout range holds no value (min == max).
    EmptyElectionTimeout {
        /// The range's lower bound.
        min: Duration,
    },
    /// The election timeout range is inverted (min > max).
    InvertedElectionTimeout {
        /// The range's lower bound.
        min: Duration,
        /// The range's upper bound.
        max: Duration,
    },
    /// The heartbeat interval is not below the minimum election timeout.
    HeartbeatTooSlow {
        /// The configured heartbeat interval.
        heartbeat: Duration,
        /// The minimum election timeout it must stay below.
        min_election: Duration,
    },
    /// The tick is zero or longer than the heartbeat interval.
    BadTick {
        /// The configured tick.
        tick: Duration,
        /// The heartbeat interval it must not exceed.
        heartbeat: Duration,
    },
    /// Rounded to whole ticks, the heartbeat interval is not below the minimum election
    /// timeout, so followers would time out between heartbeats.
    HeartbeatTicksTooSlow {
        /// The configured heartbeat interval.
        heartbeat: Duration,
        /// The heartbeat interval in whole ticks (at least 1).
        heartbeat_ticks: u64,
        /// The configured minimum election timeout.
        min_election: Duration,
        /// The minimum election timeout in whole ticks (at least 1).
        min_election_ticks: u64,
        /// The configured tick.
        tick: Duration,
    },
    /// Rounded to whole ticks, the election timeout range offers too few distinct values, so
    /// nodes often time out together and split the vote.
    ElectionRangeTooNarrow {
        /// The configured election timeout range.
        election: Range<Duration>,
        /// The range in whole ticks (end exclusive).
        ticks: Range<u64>,
        /// The configured tick.
        tick: Duration,
        /// The fewest distinct ticks required.
        min_spread: u64,
    },
    /// A limit that must be positive was zero.
    ZeroLimit {
        /// The field's name.
        field: &'static str,
    },
    /// One AppendEntries may carry more bytes than the whole in-flight window holds.
    AppendBytesAboveInflight {
        /// `max_append_bytes`.
        append: usize,
        /// `max_inflight_bytes`.
        inflight: usize,
    },
    /// The cap on a leader's uncommitted log is below one in-flight window: proposals would
    /// be refused while replication still has room.
    UncommittedBelowInflight {
        /// `max_uncommitted_bytes`.
        uncommitted: usize,
        /// `max_inflight_bytes`.
        inflight: usize,
    },
    /// A node's inbox could not hold one leader's window: `max_inflight_bytes` of entries, or
    /// `snapshot_chunk_bytes * snapshot_chunks_in_flight` of snapshot chunks.
    InboxBelowWindow {
        /// `max_inbox_bytes`.
        inbox: usize,
        /// The larger of the two windows.
        window: usize,
    },
    /// A cluster needs at least one node.
    NoNodes,
    /// The same node id appears twice.
    DuplicateNode(NodeId),
    /// More nodes than a [`Cluster`](crate::Cluster) starts with ([`MAX_NODES`](crate::MAX_NODES)).
    TooManyNodes {
        /// How many were asked for.
        count: usize,
        /// The most a cluster takes.
        max: usize,
    },
    /// `ClusterBuilder::local` names an id that is not one of the cluster's ids.
    LocalNotInIds(NodeId),
    /// `clock_drift_bound` is below 1 (or not a number): clocks cannot drift by less than not
    /// at all.
    DriftBoundBelowOne {
        /// The configured bound.
        bound: crate::config::ClockDrift,
    },
    /// `lease_reads` is on but `check_quorum` is off.
    LeaseWithoutCheckQuorum,
    /// The lease (minimum election timeout less two ticks, over the drift bound) rounds to
    /// zero ticks.
    LeaseTooShort {
        /// The minimum election timeout in ticks.
        min_election_ticks: u64,
        /// The configured drift bound.
        bound: crate::config::ClockDrift,
    },
    /// A timer longer than [`MAX_TIMER`](crate::config::MAX_TIMER): counted in ticks it would
    /// not fit the core's clock (`request_timeout` has no bound: it may be `Duration::MAX`).
    TimerTooLong {
        /// The setting's name.
        field: &'static str,
        /// The value given.
        value: Duration,
    },
    /// A limit above its largest allowed value: `inbox_capacity` is allocated when a node
    /// starts ([`MAX_INBOX_CAPACITY`](crate::config::MAX_INBOX_CAPACITY)); `max_inbox_bytes`
    /// is at most [`MAX_QUEUE_BYTES`](crate::transport::MAX_QUEUE_BYTES).
    LimitTooLarge {
        /// The setting's name.
        field: &'static str,
        /// The value given.
        value: usize,
        /// The largest allowed.
        max: usize,
    },
    /// `NodeId(u64::MAX)` is reserved (it stands for "no node" where an id must fit a word);
    /// also what `Cluster::add_node` reports once the ids above the largest one run out.
    ReservedNodeId(NodeId),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::EmptyElectionTimeout { min } => write!(
                f,
                "election timeout range {min:?}..{min:?} is empty: make max larger than min (the paper uses 150ms..300ms)"
            ),
            ConfigError::InvertedElectionTimeout { min, max } => write!(
                f,
                "election timeout range {min:?}..{max:?} is inverted: min must be below max"
            ),
            ConfigError::HeartbeatTooSlow { heartbeat, min_election } => write!(
                f,
                "heartbeat interval {heartbeat:?} must be below the minimum election timeout {min_election:?} (ideally a third of it or less)"
            ),
            ConfigError::BadTick { tick, heartbeat } => write!(
                f,
                "tick {tick:?} must be non-zero and no longer than the heartbeat interval {heartbeat:?}"
            ),
            ConfigError::HeartbeatTicksTooSlow {
                heartbeat,
                heartbeat_ticks,
                min_election,
                min_election_ticks,
                tick,
            } => write!(
                f,
                "heartbeat interval {heartbeat:?} rounds to {heartbeat_ticks} ticks of {tick:?}, not below the minimum election timeout {min_election:?} which rounds to {min_election_ticks}; use a shorter tick or longer timeouts"
            ),
            ConfigError::ElectionRangeTooNarrow { election, ticks, tick, min_spread } => write!(
                f,
                "election timeout range {:?}..{:?} rounds to {}..{} ticks of {tick:?}, {} distinct value(s) where at least {min_spread} are needed; use a shorter tick or a wider range",
                election.start,
                election.end,
                ticks.start,
                ticks.end,
                ticks.end - ticks.start
            ),
            ConfigError::ZeroLimit { field } => write!(f, "{field} must be at least 1"),
            ConfigError::AppendBytesAboveInflight { append, inflight } => write!(
                f,
                "max_append_bytes {append} exceeds max_inflight_bytes {inflight}: one AppendEntries must fit the window; raise max_inflight_bytes or lower max_append_bytes"
            ),
            ConfigError::UncommittedBelowInflight { uncommitted, inflight } => write!(
                f,
                "max_uncommitted_bytes {uncommitted} is below max_inflight_bytes {inflight}: the leader would refuse proposals before its replication window fills; raise max_uncommitted_bytes or lower max_inflight_bytes"
            ),
            ConfigError::InboxBelowWindow { inbox, window } => write!(
                f,
                "max_inbox_bytes {inbox} is below a leader's window of {window} bytes (max_inflight_bytes, or snapshot_chunk_bytes * snapshot_chunks_in_flight): a follower keeping up would lose messages; raise max_inbox_bytes or lower the window"
            ),
            ConfigError::NoNodes => write!(f, "a cluster needs at least one node"),
            ConfigError::TooManyNodes { count, max } => write!(
                f,
                "{count} nodes asked for, more than the {max} a cluster starts with (each node is two threads and its own queues); Raft clusters are usually 3 to 7 voters, with learners beside them"
            ),
            ConfigError::DuplicateNode(id) => {
                write!(f, "node id {id} appears more than once; give every node its own id")
            }
            ConfigError::LocalNotInIds(id) => write!(
                f,
                "local node {id} is not one of the cluster's ids; list every node in `ids` and the ones this process runs in `local`"
            ),
            ConfigError::DriftBoundBelowOne { bound } => write!(
                f,
                "clock_drift_bound {} must be a number of at least 1.0 (1.0: clocks never drift; 1.1: one clock may run 10% fast)",
                bound.0
            ),
            ConfigError::LeaseWithoutCheckQuorum => write!(
                f,
                "lease_reads requires check_quorum: without it a deposed leader keeps serving reads; set check_quorum = true or lease_reads = false"
            ),
            ConfigError::TimerTooLong { field, value } => write!(
                f,
                "{field} of {value:?} is longer than a Raft timer may be ({:?}); use a shorter one",
                crate::config::MAX_TIMER
            ),
            ConfigError::LimitTooLarge { field, value, max } => write!(
                f,
                "{field} = {value} is above {max}, {}; use a smaller value",
                if *field == "inbox_capacity" {
                    "the most that is allocated up front"
                } else {
                    "more than any queue should hold"
                }
            ),
            ConfigError::ReservedNodeId(id) => write!(
                f,
                "node id {id} (u64::MAX) is reserved; give nodes smaller ids (add_node gives each new node the id after the largest)"
            ),
            ConfigError::LeaseTooShort { min_election_ticks, bound } => write!(
                f,
                "a lease of ({min_election_ticks} - 2) ticks / drift bound {} rounds to 0 ticks; use a shorter tick, a longer election timeout or a smaller bound",
                bound.0
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The errors a caller of the library can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// This node is not the leader; retry at `leader_hint` if known.
    NotLeader {
        /// The leader this node knows of, if any.
        leader_hint: Option<NodeId>,
    },
    /// The operation did not finish within its deadline; its effect is unknown. From a
    /// proposal ([`Client::propose`](crate::Client::propose)): some attempt was handed to a
    /// node that appended it, or may have, so the command may still be applied; retry only
    /// with a client session ([`Session`](crate::Session)), or read to find out. From a read
    /// ([`Client::read_timeout`](crate::Client::read_timeout)): the last attempt was handed to
    /// a node that had not answered by the deadline; a read changed nothing, retry it.
    Timeout,
    /// [`Client::propose`](crate::Client::propose) found no node to take the command before
    /// its deadline: every attempt was refused before appending (no leader elected, the
    /// leader down or unreachable, its uncommitted log full) or its entry was replaced
    /// (`ProposalDropped`). The command was never applied and never will be: retrying it is
    /// safe. [`Client::read_timeout`](crate::Client::read_timeout) answers it when its last
    /// attempt before the deadline was refused (a read changes nothing: always safe to
    /// retry). `last` says why the last attempt failed. If this lasts, the cluster has no
    /// working majority: check that most nodes are running and can reach each other.
    Unavailable {
        /// The last attempt's refusal. From a proposal: `NotLeader`, `LeaderUnreachable`,
        /// `UncommittedLogFull`, `TransferInProgress`, `NodeDown` (before appending),
        /// `QueueFull` or `ProposalDropped`. From a read, any error a read attempt can end
        /// with: also `Timeout` (a leader that could not confirm its leadership within an
        /// election timeout) or a failed node's error (`NodePanicked`, `Storage`, ...).
        last: Box<Error>,
    },
    /// The cluster handle was shut down, or no node is running to serve the request (killed
    /// nodes can be brought back with `Cluster::restart`).
    Shutdown,
    /// The node is not running (killed, or removed); restart it or ask another node.
    NodeDown(NodeId),
    /// A proposal or read with a deadline found the node's request queue full
    /// ([`Config::inbox_capacity`](crate::Config::inbox_capacity) requests waiting) until the
    /// deadline: the node is stalled, say behind its apply backlog
    /// ([`Config::max_apply_backlog`](crate::Config::max_apply_backlog)) or a slow storage.
    /// The request was never handed over, so never applied: retrying it is safe, after a
    /// pause or at another node.
    QueueFull(NodeId),
    /// No node with this id exists in the cluster.
    UnknownNode(NodeId),
    /// The configuration was invalid.
    InvalidConfig(ConfigError),
    /// The proposal was appended at `index` in `term` but a later leader replaced that entry: it
    /// was never applied. Safe to retry.
    ProposalDropped {
        /// Where the proposal had been appended.
        index: LogIndex,
        /// The term it had been appended in.
        term: Term,
    },
    /// A membership change is still in progress; wait for it to finish, then retry.
    ChangeInProgress,
    /// The leader has not yet committed an entry of its own term (2015 fix); retry shortly.
    LeaderNotReady,
    /// The node is already a member of the cluster configuration.
    AlreadyMember(NodeId),
    /// The node is not a member of the cluster configuration (never added, or already removed).
    NotMember(NodeId),
    /// Removing this node would leave no voters.
    LastVoter(NodeId),
    /// The new node did not catch up within the deadline; the configuration is unchanged.
    CatchUpFailed(NodeId),
    /// The node is already running; kill it before restarting it.
    AlreadyRunning(NodeId),
    /// The persistent storage failed; the node stopped. Everything waiting on it (proposals
    /// appended and not yet applied included) hears this error at once. A proposal it was
    /// writing, or had written, may have landed all the same and may still be committed by
    /// the rest of the cluster: its outcome is unknown, and
    /// [`Client::propose`](crate::Client::propose) does not retry it. Kill and restart the
    /// node once the storage is fixed.
    ///
    /// [`ClusterBuilder::start`](crate::ClusterBuilder::start),
    /// [`Cluster::restart`](crate::Cluster::restart) and
    /// [`Cluster::add_node`](crate::Cluster::add_node) return it too when a node's storage
    /// cannot be opened (its directory locked by another process, not a directory, damaged):
    /// the node did not start and wrote nothing. The text names the file and what to do.
    Storage(String),
    /// The OS refused to start a node's thread; the text is the OS error.
    Spawn(String),
    /// The state machine panicked applying a committed entry. Apply is deterministic, so the
    /// same command panics on every replica: fix the state machine, then restart the node.
    StateMachinePanicked {
        /// The node whose state machine panicked.
        node: NodeId,
        /// The index of the entry being applied; for a panic in the state machine's code
        /// outside `apply` (a `Drop` of its `Output`, say), the last entry applied.
        index: LogIndex,
        /// The panic message.
        message: String,
    },
    /// The node panicked on its own loop, outside the state machine's `apply`: in the user's
    /// [`Storage`](crate::Storage) or [`Transport`](crate::Transport), in
    /// [`StateMachine::command_size`](crate::StateMachine::command_size), in the command's
    /// `Clone` or `Drop`, or in ferraft itself (a broken assertion). Its state may be half
    /// updated, so the node stopped taking part in the protocol: it persists, sends and applies
    /// nothing more, and answers every request with this error until it is killed. A proposal
    /// waiting on it when it panicked may still be committed by the rest of the cluster: its
    /// outcome is unknown, as after `Timeout`. It is a bug: fix the storage, transport or
    /// command code the message points to (or report it to ferraft if it names ferraft), then
    /// kill and restart the node, which starts afresh from what its storage holds.
    /// [`Client::propose`](crate::Client::propose) does not retry it: a panic the command
    /// itself caused (its size or its clone) would fail the next node it reached too.
    NodePanicked {
        /// The node whose loop panicked.
        node: NodeId,
        /// The panic message.
        message: String,
    },
    /// The state machine could not read a snapshot (`StateMachine::restore` failed). The node
    /// stopped before applying anything on top of a half-restored state.
    RestoreFailed {
        /// The node whose state machine refused the snapshot.
        node: NodeId,
        /// The snapshot's last included index.
        index: LogIndex,
        /// Why, as `restore` said.
        message: String,
    },
    /// A leadership transfer to `to` is under way: the leader takes no proposals (and no other
    /// transfer) until it ends.
    TransferInProgress {
        /// The transfer's target.
        to: NodeId,
    },
    /// A transfer of leadership to the node that already leads.
    TransferToSelf(NodeId),
    /// A transfer of leadership to a learner, which cannot lead.
    TransferToLearner(NodeId),
    /// The transfer did not finish in time (the target did not win); the leader resumed, or
    /// another node leads.
    TransferFailed(NodeId),
    /// The client session is gone: it expired (evicted by newer sessions) or was never
    /// registered. Its earlier commands may have been applied; register a new session.
    SessionExpired {
        /// The client id.
        client: u64,
    },
    /// The session has numbered its last command (`u64::MAX - 1`; a session resumed at
    /// `u64::MAX` has none left): nothing was proposed. Register a new session.
    SessionExhausted {
        /// The client id.
        client: u64,
    },
    /// A session command numbered below what the client said it no longer waits for: its
    /// response was discarded, so a retry from the past cannot be answered.
    SequenceTooOld {
        /// The client id.
        client: u64,
        /// The command's number.
        seq: u64,
        /// Responses below this number were discarded.
        discarded_below: u64,
    },
    /// A session command numbered below the window of responses its session keeps
    /// ([`Sessions::max_responses`](crate::Sessions::max_responses)), whose response is no
    /// longer kept: it was not applied now, and whether an earlier attempt was applied (once)
    /// is unknown.
    ResponseNotKept {
        /// The client id.
        client: u64,
        /// The command's number.
        seq: u64,
        /// The session keeps responses from this number on.
        kept_from: u64,
    },
    /// A command is larger than `Config::max_command_bytes`.
    CommandTooLarge {
        /// The command's size in bytes, as the core's sizer measures it.
        size: usize,
        /// The limit, `Config::max_command_bytes`.
        max: usize,
    },
    /// The leader holds `Config::max_uncommitted_bytes` of commands it has appended but not
    /// yet committed, and refused this proposal before appending it: it was never applied,
    /// so retrying is safe, after a pause. It persists while the leader cannot reach a
    /// majority (a leader cut off without `check_quorum`) or the cluster commits slower than
    /// it is offered commands.
    UncommittedLogFull {
        /// The bytes the leader held uncommitted when it refused (as
        /// `Config::max_uncommitted_bytes` counts them).
        bytes: usize,
        /// The limit, `Config::max_uncommitted_bytes`.
        max: usize,
    },
    /// A follower asked to forward the request to the leader it knows could not hand it over:
    /// that leader is not running (or its request queue is full). The request never reached
    /// it, so it was never applied: retry, at another node or after an election.
    LeaderUnreachable(NodeId),
    /// A [`Receipt`](crate::Receipt) hands its output over once: an earlier `wait` or `.await`
    /// already returned it. Keep the answer that call returned (`position` still reports
    /// where the entry went).
    AnswerTaken,
    /// An admin call of a [`Cluster`](crate::Cluster) (`kill`, `restart`, `add_node`,
    /// `remove_node`, `change_membership`) from its own storage factory or `on_removed` hook,
    /// which run inside one of its admin operations: it would wait for itself. Nothing was
    /// done; make the call after that operation returns.
    AdminFromCallback,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotLeader { leader_hint: Some(id) } => write!(f, "not the leader; try {id}"),
            Error::NotLeader { leader_hint: None } => {
                write!(f, "not the leader and no leader known; retry after an election")
            }
            Error::Timeout => write!(
                f,
                "timed out; the operation's effect is unknown: a proposal may still be applied (retry it only under its session number, Session::propose_seq, or read to find out), a read or status request changed nothing and may be retried"
            ),
            Error::Unavailable { last } => write!(
                f,
                "no node took the request before the deadline (last refusal: {last}); a command was never applied, a read changed nothing: retry; if this lasts, check that a majority of nodes is running and connected"
            ),
            Error::Shutdown => write!(
                f,
                "the cluster handle was shut down, or no node is running (restart one with Cluster::restart)"
            ),
            Error::NodeDown(id) => write!(f, "node {id} is not running; restart it or use another"),
            Error::QueueFull(id) => write!(
                f,
                "node {id}'s request queue stayed full until the deadline (the node is stalled); \
                 the request was never handed over, so retrying it is safe"
            ),
            Error::UnknownNode(id) => {
                write!(f, "no node {id} in this cluster; use an id from Cluster::ids()")
            }
            Error::InvalidConfig(e) => write!(f, "invalid config: {e}"),
            Error::ProposalDropped { index, term } => write!(
                f,
                "proposal at {index} in {term} was replaced by a later leader and never applied; retry"
            ),
            Error::ChangeInProgress => {
                write!(f, "a membership change is in progress; retry when it finishes")
            }
            Error::LeaderNotReady => {
                write!(f, "the leader has not committed an entry of its term yet; retry shortly")
            }
            Error::AlreadyMember(id) => write!(f, "{id} is already a member"),
            Error::NotMember(id) => write!(f, "{id} is not a member (never added or already removed)"),
            Error::LastVoter(id) => write!(f, "removing {id} would leave the cluster with no voters"),
            Error::CatchUpFailed(id) => {
                write!(f, "{id} did not catch up in time; the configuration is unchanged")
            }
            Error::AlreadyRunning(id) => write!(f, "{id} is already running; kill it first"),
            Error::Storage(why) => write!(
                f,
                "storage failed: {why}; the node stopped, or did not start: fix the storage, then start or restart the node (a proposal it was writing, if any, may or may not be applied)"
            ),
            Error::Spawn(why) => write!(
                f,
                "could not start the node's thread: {why}; the OS refused a thread, check ulimits"
            ),
            Error::StateMachinePanicked { node, index, message } => write!(
                f,
                "the state machine panicked applying the entry at {index} on {node}: {message}; apply is deterministic, so the same command panics on every replica: fix the state machine (make apply total for every command) and restart the node"
            ),
            Error::NodePanicked { node, message } => write!(
                f,
                "{node} panicked outside the state machine's apply (in its storage, transport, command_size, or a command's clone or drop): {message}; the node stopped taking part and a proposal it held may or may not be applied: fix that code (or report a panic inside ferraft), then kill and restart the node"
            ),
            Error::RestoreFailed { node, index, message } => write!(
                f,
                "the state machine on {node} could not restore the snapshot through {index}: {message}; the node stopped; fix `StateMachine::restore` (it must read what `snapshot` writes) and restart it"
            ),
            Error::SessionExpired { client } => write!(
                f,
                "client session {client} expired or was never registered; its earlier commands may have been applied: register a new session"
            ),
            Error::SessionExhausted { client } => write!(
                f,
                "client session {client} has used every sequence number; nothing was proposed: register a new session"
            ),
            Error::SequenceTooOld { client, seq, discarded_below } => write!(
                f,
                "command {seq} of session {client} is older than {discarded_below}, whose responses were discarded; never reuse a number after its answer arrived"
            ),
            Error::ResponseNotKept { client, seq, kept_from } => write!(
                f,
                "the response to command {seq} of session {client} is no longer kept (the session keeps responses from {kept_from} on): its outcome is unknown, it may have been applied once and will not be applied again; keep fewer commands in flight per session than Sessions::max_responses"
            ),
            Error::TransferInProgress { to } => write!(
                f,
                "a leadership transfer to {to} is in progress; retry once it finishes (at the new leader)"
            ),
            Error::TransferToSelf(id) => {
                write!(f, "{id} already leads; transfer leadership to another voter")
            }
            Error::TransferToLearner(id) => write!(
                f,
                "{id} is a learner and cannot lead; transfer to a voter, or wait until it is promoted"
            ),
            Error::TransferFailed(id) => write!(
                f,
                "leadership did not move to {id} in time (is it running and reachable?); the leader resumed; retry or pick another voter"
            ),
            Error::LeaderUnreachable(id) => write!(
                f,
                "the request was to be forwarded to the leader {id}, which is not running or not taking requests; it was never applied: retry (a new leader is elected within an election timeout)"
            ),
            Error::AnswerTaken => write!(
                f,
                "this receipt's answer was already returned by an earlier wait or await; use the answer that call returned"
            ),
            Error::AdminFromCallback => write!(
                f,
                "an admin call (kill, restart, add_node, remove_node, change_membership) from this cluster's own storage factory or on_removed hook, which run inside one of its admin operations, would wait for itself; nothing was done: make the call after that operation returns"
            ),
            Error::UncommittedLogFull { bytes, max } => write!(
                f,
                "the leader holds {bytes} bytes of uncommitted commands (limit {max}, Config::max_uncommitted_bytes) and refused this one before appending it: it was never applied; retry after a pause; if this lasts, the leader cannot reach a majority (check the network, or enable check_quorum) or the cluster is offered more than it commits"
            ),
            Error::CommandTooLarge { size, max } => write!(
                f,
                "command of {size} bytes exceeds the limit of {max} bytes; split the command or raise Config::max_command_bytes"
            ),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_does_not_tell_to_start_a_new_cluster_when_nodes_are_merely_down() {
        let text = Error::Shutdown.to_string();
        assert!(!text.contains("start a new one"), "{text}");
        assert!(text.contains("Cluster::restart"), "{text}");
    }

    #[test]
    fn new_errors_say_what_to_do() {
        let spawn = Error::Spawn("Resource temporarily unavailable".into()).to_string();
        assert!(spawn.contains("could not start the node's thread"), "{spawn}");
        assert!(spawn.contains("check ulimits"), "{spawn}");
        let panicked = Error::StateMachinePanicked {
            node: NodeId(3),
            index: LogIndex(42),
            message: "divide by zero".into(),
        }
        .to_string();
        for part in ["i42", "n3", "divide by zero", "every replica", "fix the state machine"] {
            assert!(panicked.contains(part), "{part:?} missing: {panicked}");
        }
        let large = Error::CommandTooLarge { size: 20, max: 10 }.to_string();
        assert!(large.contains("split the command"), "{large}");
        assert!(large.contains("Config::max_command_bytes"), "{large}");
        let full = Error::UncommittedLogFull { bytes: 40, max: 32 }.to_string();
        for part in ["never applied", "retry after a pause", "Config::max_uncommitted_bytes"] {
            assert!(full.contains(part), "{part:?} missing: {full}");
        }
        let last = Box::new(Error::NotLeader { leader_hint: None });
        let unavailable = Error::Unavailable { last }.to_string();
        for part in ["never applied", "retry", "no leader known", "majority"] {
            assert!(unavailable.contains(part), "{part:?} missing: {unavailable}");
        }
        let panicked =
            Error::NodePanicked { node: NodeId(2), message: "disk full".into() }.to_string();
        for part in ["n2", "disk full", "storage, transport", "kill and restart", "may or may not"]
        {
            assert!(panicked.contains(part), "{part:?} missing: {panicked}");
        }
        let storage = Error::Storage("no space left on device".into()).to_string();
        for part in ["no space left", "restart the node", "may or may not be applied"] {
            assert!(storage.contains(part), "{part:?} missing: {storage}");
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::InvalidConfig(e)
    }
}

/// Why a fault setting (threaded network or simulator) was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultError {
    /// A probability outside [0, 1] (or NaN).
    Probability {
        /// The setting's name.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// A range whose start is after its end.
    InvertedRange {
        /// The setting's name.
        field: &'static str,
        /// The range's lower bound.
        min: Duration,
        /// The range's upper bound.
        max: Duration,
    },
    /// A fault names a node the cluster (or simulation) does not have.
    UnknownNode(NodeId),
    /// A node appears in more than one partition group.
    OverlappingGroups(NodeId),
    /// The cores' configuration is invalid.
    InvalidConfig(ConfigError),
    /// A simulation needs at least one node.
    NoNodes,
    /// A fault that is switched on has a zero-length range, so it would do nothing (e.g.
    /// `long_hold > 0` with `long_hold_delay` of `0..0`).
    EmptyRange {
        /// The setting's name.
        field: &'static str,
    },
    /// A link fault names the same node at both ends; links join two different nodes.
    SelfLink(NodeId),
    /// A clock drift bound outside (0, 1]: 0 means no drift (switch it off instead), and
    /// above 1 a clock could run backwards.
    DriftBound(f64),
    /// A pause longer than the whole run (fault phase plus quiet period): the node would never
    /// resume, which is a crash, not a pause.
    PauseTooLong {
        /// The pause asked for.
        pause: Duration,
        /// The run's length.
        run: Duration,
    },
    /// `SimConfig::caller_read_percent` above 100: it is a percentage of reads.
    CallerReadPercent(u8),
    /// A fault's duration past [`MAX_FAULT_DELAY`]: a message held longer is lost, as far as
    /// Raft can tell (drop it instead), and sums of such durations would not fit an instant.
    DelayTooLong {
        /// The setting's name.
        field: &'static str,
        /// The value given.
        value: Duration,
    },
}

/// The longest delay, hold or pause a fault setting takes: one day.
pub const MAX_FAULT_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultError::Probability { field, value } => {
                write!(f, "{field} = {value} is not a probability: use a value in [0, 1]")
            }
            FaultError::InvertedRange { field, min, max } => {
                write!(f, "{field} range {min:?}..{max:?} is inverted: min must not exceed max")
            }
            FaultError::UnknownNode(id) => {
                write!(f, "{id} is not a node here; name nodes from the cluster's ids")
            }
            FaultError::OverlappingGroups(id) => {
                write!(f, "{id} appears in two partition groups; each node belongs to one")
            }
            FaultError::InvalidConfig(e) => write!(f, "invalid config: {e}"),
            FaultError::NoNodes => write!(f, "a simulation needs at least one node"),
            FaultError::DelayTooLong { field, value } => write!(
                f,
                "{field} of {value:?} is longer than a fault may last ({MAX_FAULT_DELAY:?}): to lose messages for good, drop them or cut the link"
            ),
            FaultError::EmptyRange { field } => {
                write!(f, "{field} is 0..0 while its fault is on: give it a non-zero range")
            }
            FaultError::SelfLink(id) => {
                write!(f, "link {id} -> {id} joins a node to itself: name two different nodes")
            }
            FaultError::DriftBound(value) => {
                write!(f, "clock drift bound {value} is outside (0, 1]: use None for no drift")
            }
            FaultError::PauseTooLong { pause, run } => {
                write!(f, "a pause of {pause:?} outlasts the {run:?} run: crash the node instead")
            }
            FaultError::CallerReadPercent(value) => write!(
                f,
                "caller_read_percent {value} is not a percentage: use 0 (off) to 100 (every read)"
            ),
        }
    }
}

impl std::error::Error for FaultError {}

/// Checks that `value` is a probability; NaN fails too.
pub(crate) fn check_probability(field: &'static str, value: f64) -> Result<(), FaultError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(FaultError::Probability { field, value })
    }
}

/// Checks that a duration range is not inverted, and ends within [`MAX_FAULT_DELAY`].
pub(crate) fn check_range(
    field: &'static str,
    min: Duration,
    max: Duration,
) -> Result<(), FaultError> {
    if min > max {
        return Err(FaultError::InvertedRange { field, min, max });
    }
    if max > MAX_FAULT_DELAY {
        return Err(FaultError::DelayTooLong { field, value: max });
    }
    Ok(())
}

/// Validates partition groups (known, disjoint) and maps each named node to its group.
pub(crate) fn assign_groups(
    groups: &[Vec<NodeId>],
    known: impl Fn(NodeId) -> bool,
) -> Result<std::collections::BTreeMap<NodeId, usize>, FaultError> {
    let mut group_of = std::collections::BTreeMap::new();
    for (g, group) in groups.iter().enumerate() {
        for &id in group {
            if !known(id) {
                return Err(FaultError::UnknownNode(id));
            }
            if group_of.insert(id, g).is_some() {
                return Err(FaultError::OverlappingGroups(id));
            }
        }
    }
    Ok(group_of)
}
