//! The pure, deterministic Raft core: `Core::step(input) -> actions`.
//!
//! Owns every rule of the paper, once. Must not touch threads, channels, clocks, files, printing
//! or OS randomness: time arrives as [`Input::Tick`] and randomness from a seeded RNG, so a run is
//! a pure function of (seed, inputs). The runtime and the simulator both drive this same code.
//!
//! # The output contract
//!
//! [`Core::step`] appends [`Action`]s to a caller-owned buffer. The caller executes them **in the
//! order given**. Persistence actions always come first in a step's output, so every message and
//! every apply that depends on new state follows its durable write (SUB-8).

mod changes;
mod clock;
mod election;
mod gateway;
mod inspect;
mod invariants;
pub mod log;
mod membership;
mod notice;
mod progress;
mod quorum;
mod read;
mod reorder;
mod replication;
mod snapshot;
mod transfer;

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::error::Error;
use crate::message::{Body, Configuration, Entry, Message, Payload, Snapshot, SnapshotMeta};
use crate::storage::{HardState, PersistentState};
use crate::types::{LogIndex, NodeId, Term};

pub use changes::MembershipChange;
use changes::PendingChange;
pub(crate) use gateway::check_persistent_state;
pub use invariants::InvariantViolation;
use log::Log;
use membership::Membership;
pub use notice::Notice;
pub(crate) use notice::OVERWRITES_COMMITTED;
use progress::Progress;
pub use read::{ReadId, ReadPath, ReadPolicy};

/// What a server currently is (§5.1), plus the thesis's pre-candidate (§9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Passive: answers leaders and candidates.
    Follower,
    /// Asking whether it could win, without raising its term (pre-vote).
    PreCandidate,
    /// Campaigning in its current term.
    Candidate,
    /// Handles all client requests and replicates the log.
    Leader,
}

/// Everything that can happen to a node.
#[derive(Clone, Debug)]
pub enum Input<C> {
    /// One tick of the logical clock elapsed.
    Tick,
    /// A message arrived from a peer.
    Receive(Message<C>),
    /// Client commands to append, as one batch (LEAD-2).
    Propose(Vec<C>),
    /// A membership change (section 6 / thesis chapter 4).
    ChangeMembership(MembershipChange),
    /// Start an election now, as if the election timer fired (skips pre-vote).
    Campaign,
    /// Compact the log now: ask for a snapshot through the applied index (§7).
    Compact,
    /// The snapshot asked for by `Action::TakeSnapshot` was taken: drop the log prefix it covers.
    SnapshotTaken(Arc<Snapshot>),
    /// Linearizable reads (thesis §6.4), numbered by the driver: a leader answers them after a
    /// confirmation round (or within its lease, if the policy allows it), a follower asks the
    /// leader for a read index. Each is answered by `Action::ReadReady` or `Action::ReadFailed`.
    Read(Vec<ReadId>, ReadPolicy),
    /// Hand leadership to this voter (thesis §3.10); answered by `Action::TransferDone`.
    /// Meanwhile the leader refuses proposals with `Error::TransferInProgress`.
    TransferLeadership(NodeId),
    /// Everything persisted so far is durable (the driver synced its storage). A leader counts
    /// its own log towards commitment only through what it has synced, so it may send
    /// AppendEntries before its own write is durable (thesis §10.2.1). A driver that syncs
    /// before every send may step this after each sync; one that sends early must.
    Synced,
    /// The log is durable through this index: the writes a sync covered, which began before
    /// later ones (a sync running off the node's thread, `Storage::start_sync`). The driver
    /// passes no index past an entry rewritten since the sync began.
    SyncedThrough(LogIndex),
    /// `n` ticks of the logical clock at once: exactly `n` [`Input::Tick`] steps, their
    /// actions concatenated in order. Ticks before [`Core::ticks_until_due`] only advance the
    /// clock, so a driver that knows when a timer can fire (the simulator) skips the idle ones.
    Ticks(u64),
}

/// What the core asks its driver to do, in order. Persistence comes before any send or apply
/// that depends on it; the driver must finish each action before starting the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<C> {
    /// Durably store currentTerm and votedFor.
    PersistHardState(HardState),
    /// Durably replace the stored log from `from` onward with the core's log from `from`
    /// (read it with [`Core::log`]): truncate, then append.
    PersistEntries {
        /// The first index that changed.
        from: LogIndex,
    },
    /// Deliver a message to a peer (best effort: it may be lost).
    Send(Message<C>),
    /// The proposed batch was appended at `first..first+count` in `term`; reply when applied.
    Proposed {
        /// Index given to the first command of the batch.
        first: LogIndex,
        /// The leader's term.
        term: Term,
        /// How many commands the batch held.
        count: usize,
    },
    /// The proposal or change was refused (for example `NotLeader`).
    Rejected(Error),
    /// Apply the committed entries `from..=to`, read from [`Core::log`], in order (ALL-1).
    Apply {
        /// First index to apply.
        from: LogIndex,
        /// Last index to apply.
        to: LogIndex,
    },
    /// A membership change requested on this node finished (or failed).
    ChangeDone(Result<Configuration, Error>),
    /// Something worth logging (the core itself never logs). Ordered like any other action;
    /// executing it may be a no-op.
    Notice(Notice),
    /// Take a snapshot of the state machine as it is once every `Apply` before this action is
    /// done (it stands for `meta.index`), then feed it back as `Input::SnapshotTaken`. Taking it
    /// may happen off the node's thread; the core goes on meanwhile.
    TakeSnapshot(SnapshotMeta),
    /// Durably store this snapshot as the latest and drop the stored log entries through its
    /// index (a persistence action: it comes before any send or apply of the step).
    PersistSnapshot(Arc<Snapshot>),
    /// Replace the state machine's state with this snapshot's (InstallSnapshot, IS-8); applies
    /// continue from `meta.index + 1`.
    Restore(Arc<Snapshot>),
    /// These reads may be answered once the state machine has applied through `index`: run
    /// the query then (not before: the state must include every write that completed before
    /// the read began).
    ReadReady {
        /// The reads, as numbered in `Input::Read`.
        ids: Vec<ReadId>,
        /// The read index.
        index: LogIndex,
        /// How the read was confirmed.
        path: ReadPath,
    },
    /// These reads failed (this node lost or never had leadership, or the leader did not
    /// answer); a read changes nothing, so retrying is always safe.
    ReadFailed {
        /// The reads, as numbered in `Input::Read`.
        ids: Vec<ReadId>,
        /// Why.
        error: Error,
    },
    /// The leadership transfer asked for on this node finished: the new leader, or why not.
    TransferDone(Result<NodeId, Error>),
}

/// A snapshot of a node's state for status displays and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader it knows of in this term.
    pub leader: Option<NodeId>,
    /// Highest index known committed.
    pub commit_index: LogIndex,
    /// Highest index handed to the state machine.
    pub last_applied: LogIndex,
    /// Last index in its log.
    pub last_log_index: LogIndex,
    /// The configuration it is using (the latest in its log).
    pub config: Configuration,
    /// The last index its latest snapshot covers (0: none); the log starts after it.
    pub snapshot_index: LogIndex,
    /// How many entries its log holds in memory (after the snapshot).
    pub log_entries: u64,
}

impl Status {
    /// Whether this node is a voter in its own configuration.
    pub fn is_voter(&self) -> bool {
        self.config.voters.contains(&self.id)
    }

    /// Whether this node is a non-voting learner in its own configuration (catching up).
    pub fn is_learner(&self) -> bool {
        self.config.learners.contains(&self.id)
    }

    /// "Leader", "Candidate", "PreCandidate", "Follower", or "Learner" for a learner.
    pub fn role_name(&self) -> &'static str {
        match self.role {
            Role::Follower if self.is_learner() => "Learner",
            Role::Follower => "Follower",
            Role::PreCandidate => "PreCandidate",
            Role::Candidate => "Candidate",
            Role::Leader => "Leader",
        }
    }
}

/// Test-only switches that each break one rule, to show the checkers catch it. They compile
/// away outside `cfg(test)`.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Bugs {
    /// Grant votes regardless of log up-to-dateness (breaks SUB-2 / RV-2).
    pub skip_election_restriction: bool,
    /// Commit entries of earlier terms by counting replicas (breaks SUB-1 / LEAD-4).
    pub commit_previous_terms: bool,
    /// Truncate after the request's entries even when they all match (breaks SUB-6).
    pub truncate_on_duplicate: bool,
    /// Persist votedFor as none (breaks ST-P2 across restarts).
    pub forget_voted_for: bool,
    /// Apply entries as soon as they are appended (breaks ALL-1).
    pub apply_before_commit: bool,
    /// Keep the log after an installed snapshot even when its entry at the snapshot's index has
    /// another term (breaks IS-7: a conflicting suffix survives).
    pub snapshot_keeps_conflicting_log: bool,
    /// Accept a membership change before this term's no-op commits: the 2015 fix removed
    /// (breaks thesis §4.3 / [RD]).
    pub skip_2015_fix: bool,
    /// Handle AppendEntries replies of an older term as if current (breaks SUB-5, TLA
    /// `DropStaleResponse`).
    pub accept_stale_append_replies: bool,
    /// Keep the votes (and pre-votes) of the previous election when starting a new one
    /// (breaks CAN-1/CAN-2: only this term's votes count).
    pub keep_votes_across_elections: bool,
    /// Grant a vote even after voting for another candidate this term (breaks RV-2).
    pub ignore_voted_for: bool,
    /// Follower commits up to leaderCommit even past the last entry the request vouched for
    /// (breaks AE-5).
    pub commit_beyond_last_new_entry: bool,
    /// Accept AppendEntries when an entry exists at prevLogIndex, whatever its term (breaks
    /// AE-2, the Log Matching check).
    pub skip_prev_term_check: bool,
    /// Leader sets a follower's matchIndex from its own last index instead of the reply's
    /// (breaks SUB-5 / LEAD-3a).
    pub match_index_from_leader_log: bool,
    /// Persist new entries after the step's sends and applies, not before (breaks SUB-8).
    pub persist_entries_after_sends: bool,
    /// Leader answers reads at once, without a confirmation round (breaks thesis §6.4: a
    /// deposed leader serves stale reads).
    pub read_without_confirmation: bool,
    /// Leader counts its whole log towards commitment, synced or not (breaks thesis §10.2.1 /
    /// SUB-8: an entry on a minority of disks is reported committed).
    pub leader_counts_unsynced: bool,
    /// Keep AppendEntries held for reordering across a term change and replay an old leader's
    /// request in a newer term (breaks ALL-2: a message of an older term must be dropped).
    pub replay_held_across_terms: bool,
    /// Hand leadership over while the read lease holds, and keep renewing it meanwhile
    /// (breaks thesis §6.4.1 with §3.10: the target's election bypasses the followers'
    /// disruptive-server check the lease relies on, so two leaders serve reads at once).
    pub transfer_ignores_lease: bool,
    /// With `Config::defer_leader_sync`: the leader never needs its own sync, even when its
    /// followers alone make no quorum (breaks liveness: with a follower down nothing commits).
    pub leader_never_syncs: bool,
    /// A leader starts a new read round every heartbeat while reads wait, even with one in
    /// flight (breaks the bound on outstanding rounds: a leader that cannot reach a majority
    /// piles up rounds without end; core invariant R1).
    pub read_rounds_pile_up: bool,
    /// A leader serves a read that waited an election timeout for its round instead of
    /// failing it (breaks thesis §6.4: a deposed leader serves stale reads).
    pub serve_reads_after_timeout: bool,
    /// A leader appends proposals past `Config::max_uncommitted_bytes` (breaks the bound on
    /// the uncommitted log: the simulator's check U1).
    pub ignore_uncommitted_cap: bool,
    /// A leader serves a read whose caller chose `ReadPolicy::ReadIndex` from its lease while
    /// the lease holds (breaks the policy's promise to rely on no clock: where the clocks
    /// drift past `Config::clock_drift_bound`, a deposed leader serves stale reads).
    pub lease_for_every_read: bool,
    /// A leader confirms that it still leads (the read rounds that release reads and renew
    /// its lease, and CheckQuorum) against the voters of the configuration it was elected
    /// under, not the one in force (breaks thesis §6.4 with §4: after two additions its old
    /// quorum, say {1,2} of {1,2,3}, shares no node with {3,4,5}, a majority of the new
    /// configuration, which can elect another leader while the old one still serves reads).
    pub leader_counts_elected_voters: bool,
    /// With leases, a node refuses votes for a minimum election timeout from its own last
    /// (pre-)campaign as well as from the leader's last message (the rule before the twenty-
    /// fourth session; breaks liveness, not safety: where the one eligible candidate needs
    /// every other vote, the others' rounds keep refusing it and the cluster stays leaderless
    /// for seconds).
    pub lease_refusal_from_own_campaign: bool,
    /// With leases, a node refuses votes only while it knows a leader, as without them: one
    /// that forgot its leader (a higher term's pre-vote round, a restart) helps elect another
    /// while the old one's lease, renewed by its acknowledgement, still holds (breaks
    /// thesis §6.4.1: the old leader serves stale reads).
    pub lease_refusal_forgets_leader: bool,
}

/// Timing and limits in ticks, derived once from [`Config`].
#[derive(Clone, Debug)]
struct Timing {
    election_ticks: std::ops::Range<u64>,
    heartbeat_ticks: u64,
    catch_up_ticks: u64,
    max_entries: usize,
    max_inflight: usize,
    max_append_bytes: usize,
    max_inflight_bytes: usize,
    max_uncommitted_bytes: usize,
    pre_vote: bool,
    check_quorum: bool,
    snapshot_entries: u64,
    snapshot_chunk_bytes: usize,
    snapshot_chunks_in_flight: usize,
    /// Lease length in ticks (0: lease reads off).
    lease_ticks: u64,
}

/// One Raft server's protocol state. See the module docs for the output contract.
pub struct Core<C> {
    id: NodeId,
    timing: Timing,
    rng: SmallRng,
    /// Logical time in ticks since this incarnation started.
    now: u64,
    /// Latest term seen (ST-P1). Persisted before it is revealed.
    term: Term,
    /// Vote granted in `term` (ST-P2). Reset whenever `term` rises.
    voted_for: Option<NodeId>,
    log: Log<C>,
    /// Invariant (I1): `commit_index <= log.last_index()`, never decreases (ST-V1).
    commit_index: LogIndex,
    /// Highest index handed out in an `Apply` action. Invariant (I2): `<= commit_index`.
    last_applied: LogIndex,
    /// The log is durable through here (`Input::Synced`): all a leader may count of its own
    /// log towards commitment (thesis §10.2.1). Lowered by every rewrite of the log.
    durable: LogIndex,
    role: Role,
    /// The leader of `term`, once known. Invariant (I3): leader => `leader == Some(id)`.
    leader: Option<NodeId>,
    /// Ticks since the last valid sign of a leader (or since the last CheckQuorum round).
    election_elapsed: u64,
    /// This round's randomized timeout, drawn at each reset (§5.2).
    election_timeout: u64,
    /// `now` when a leader of this node's term last reached it (AppendEntries, InstallSnapshot,
    /// a read round), or 0: the start counts as such a contact, since the node may have
    /// acknowledged a leader before it restarted. Votes are refused for a minimum election
    /// timeout from it (`gateway.rs`, `leader_is_recent`); unlike `election_elapsed` it is
    /// not reset by this node's own campaigns.
    leader_heard_at: u64,
    heartbeat_elapsed: u64,
    /// Votes (or pre-votes) received this election, by voter.
    votes: BTreeMap<NodeId, bool>,
    /// Leader only: replication progress per member other than self.
    progress: BTreeMap<NodeId, Progress>,
    membership: Membership,
    /// Leader only: index of this term's no-op (SUB-4).
    term_start: LogIndex,
    /// Leader only: the bytes of the commands in its log after the commit index, as
    /// [`Core::entry_bytes`] counts them (bounded by `Config::max_uncommitted_bytes`, U1);
    /// 0 on any other role.
    uncommitted_bytes: usize,
    /// Leader only: the membership change under way.
    change: Option<PendingChange>,
    /// Persistence owed before this step's other actions.
    persist_hard_state: bool,
    persist_snapshot: Option<Arc<Snapshot>>,
    persist_from: Option<LogIndex>,
    out: Vec<Action<C>>,
    /// The latest snapshot: what the log's offset stands for, and what a leader sends a
    /// follower that needs compacted entries.
    snapshot: Option<Arc<Snapshot>>,
    /// An `Action::TakeSnapshot` is out and not yet answered.
    snapshot_requested: bool,
    /// Follower: the snapshot being received, chunk by chunk.
    incoming: Option<(SnapshotMeta, Vec<u8>)>,
    /// Leader: snapshot transfers under way, by follower.
    sending: BTreeMap<NodeId, snapshot::SnapshotSend>,
    /// Run the full invariant check after every step, even in release builds.
    invariants_on: bool,
    /// Measures a command in bytes, for the byte limits of replication.
    sizer: fn(&C) -> usize,
    /// What a command entry counts towards `Config::max_uncommitted_bytes` beside its
    /// command's size: its memory on the leader ([`Core::with_entry_overhead`]).
    entry_overhead: usize,
    /// Linearizable reads in progress (`read.rs`).
    reads: read::Reads,
    /// The leadership transfer under way (`transfer.rs`).
    transfer: Option<transfer::Transfer>,
    /// Follower: AppendEntries that arrived ahead of the log (`reorder.rs`).
    held: reorder::Held<C>,
    #[cfg(test)]
    pub(crate) bugs: Bugs,
}

impl<C: Clone> Core<C> {
    /// Builds a node from its persisted state; it starts as a follower (TLA `Restart`).
    pub fn new(id: NodeId, config: &Config, state: PersistentState<C>) -> Self {
        let membership = Membership::new(state.base_config, state.log_offset, &state.entries);
        let seed = config.seed ^ id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ state.hard_state.term.0;
        let mut core = Core {
            id,
            timing: Timing {
                election_ticks: config.election_timeout_ticks(),
                heartbeat_ticks: config.heartbeat_ticks(),
                catch_up_ticks: config.catch_up_ticks(),
                max_entries: config.max_entries_per_append,
                max_inflight: config.max_inflight,
                max_append_bytes: config.max_append_bytes,
                max_inflight_bytes: config.max_inflight_bytes,
                max_uncommitted_bytes: config.max_uncommitted_bytes,
                pre_vote: config.pre_vote,
                check_quorum: config.check_quorum,
                snapshot_entries: config.snapshot_entries,
                snapshot_chunk_bytes: config.snapshot_chunk_bytes,
                snapshot_chunks_in_flight: config.snapshot_chunks_in_flight,
                lease_ticks: if config.lease_reads { config.lease_ticks() } else { 0 },
            },
            rng: SmallRng::seed_from_u64(seed),
            now: 0,
            term: state.hard_state.term,
            voted_for: state.hard_state.voted_for,
            log: Log::new(state.log_offset, state.offset_term, state.entries),
            commit_index: state.log_offset,
            last_applied: state.log_offset,
            durable: LogIndex(u64::MAX), // NB: capped by the log's last index
            role: Role::Follower,
            leader: None,
            election_elapsed: 0,
            election_timeout: 0,
            leader_heard_at: 0,
            heartbeat_elapsed: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            membership,
            term_start: LogIndex(0),
            uncommitted_bytes: 0,
            change: None,
            persist_hard_state: false,
            persist_snapshot: None,
            persist_from: None,
            out: Vec::new(),
            snapshot: state.snapshot,
            snapshot_requested: false,
            incoming: None,
            sending: BTreeMap::new(),
            invariants_on: false,
            sizer: size_in_memory::<C>,
            entry_overhead: std::mem::size_of::<Entry<C>>(),
            reads: read::Reads::default(),
            transfer: None,
            held: reorder::Held::default(),
            #[cfg(test)]
            bugs: Bugs::default(),
        };
        core.reset_election_timer();
        core
    }

    /// Feeds one input and appends the resulting actions to `actions`, in execution order.
    ///
    /// # Panics
    ///
    /// If the core's own state breaks an invariant (a bug, never a peer's message): the O(1)
    /// ones (I1, I2, I3) are checked after every step in every build, the full set in debug
    /// builds or after [`Core::set_check_invariants`].
    pub fn step(&mut self, input: Input<C>, actions: &mut Vec<Action<C>>) {
        match input {
            Input::Tick => {
                self.tick();
                self.tick_reads();
            }
            Input::Ticks(n) => return self.ticks(n, actions),
            Input::Receive(msg) => self.receive(msg),
            Input::Propose(_) if self.transferring().is_some() => {
                let to = self.transferring().expect("checked");
                self.reject(Error::TransferInProgress { to });
            }
            Input::Propose(commands) => self.propose(commands),
            Input::ChangeMembership(change) => self.change_membership(change),
            Input::Campaign => self.campaign(false, true),
            Input::Compact => {
                self.request_snapshot();
            }
            Input::SnapshotTaken(snapshot) => self.snapshot_taken(snapshot),
            Input::Read(ids, policy) => self.read(ids, policy),
            Input::TransferLeadership(to) => self.transfer_leadership(to),
            Input::Synced => self.synced(self.log.last_index()),
            Input::SyncedThrough(index) => self.synced(index),
        }
        self.sync_reads();
        self.maybe_advance_transfer();
        self.maybe_apply();
        self.maybe_snapshot();
        self.flush(actions);
        self.assert_invariants();
    }

    /// Measures commands with `sizer` (for example a serialized length) instead of
    /// `std::mem::size_of::<C>()`, for `Config::max_append_bytes` and
    /// `Config::max_inflight_bytes`. The core only ever calls it on commands in its log.
    pub fn with_sizer(mut self, sizer: fn(&C) -> usize) -> Self {
        self.sizer = sizer;
        self
    }

    /// Counts `bytes` per command entry towards `Config::max_uncommitted_bytes`, beside the
    /// command's size as the sizer measures it: what an entry costs the leader in memory
    /// besides its command. Default: the entry's own size in the core's log
    /// (`size_of::<Entry<C>>()`); a driver that keeps more per entry (a store's copy, a
    /// waiting caller's answer slot) adds it (the node driver: [`crate::entry_overhead`]).
    pub fn with_entry_overhead(mut self, bytes: usize) -> Self {
        self.entry_overhead = bytes;
        self
    }

    /// The size of `command` in bytes, as the sizer measures it: what a driver compares with
    /// `Config::max_command_bytes` before proposing (refusing with `Error::CommandTooLarge`).
    pub fn command_size(&self, command: &C) -> usize {
        (self.sizer)(command)
    }

    /// What an entry counts towards `Config::max_uncommitted_bytes`: a command its size as
    /// the sizer measures it plus the per-entry overhead ([`Core::with_entry_overhead`]); a
    /// no-op or a configuration entry nothing (a leader's own entries are never refused).
    pub fn entry_bytes(&self, entry: &Entry<C>) -> usize {
        match &entry.payload {
            Payload::Command(c) => self.command_bytes(c),
            Payload::Noop | Payload::Config(_) => 0,
        }
    }

    fn command_bytes(&self, command: &C) -> usize {
        (self.sizer)(command).saturating_add(self.entry_overhead)
    }

    /// Leader: the bytes of commands appended but not committed (`Config::max_uncommitted_bytes`).
    pub fn uncommitted_bytes(&self) -> usize {
        self.uncommitted_bytes
    }

    /// `Config::max_uncommitted_bytes`, for checkers.
    pub fn max_uncommitted_bytes(&self) -> usize {
        self.timing.max_uncommitted_bytes
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The log, for executing `PersistEntries` and `Apply`.
    pub fn log(&self) -> &Log<C> {
        &self.log
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The configuration in force on this node.
    pub fn config(&self) -> &Arc<Configuration> {
        self.membership.current()
    }

    /// A snapshot of the node's state.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.commit_index,
            last_applied: self.last_applied,
            last_log_index: self.log.last_index(),
            config: (**self.config()).clone(),
            snapshot_index: self.log.offset(),
            log_entries: self.log.last_index().0 - self.log.offset().0,
        }
    }

    /// The latest snapshot this node took or installed.
    pub fn snapshot(&self) -> Option<&Arc<Snapshot>> {
        self.snapshot.as_ref()
    }

    /// Persistence first, then everything else in the order it was produced (SUB-8).
    fn flush(&mut self, actions: &mut Vec<Action<C>>) {
        if std::mem::take(&mut self.persist_hard_state) {
            actions.push(Action::PersistHardState(self.hard_state()));
        }
        if let Some(snapshot) = self.persist_snapshot.take() {
            actions.push(Action::PersistSnapshot(snapshot));
        }
        if let Some(from) = self.persist_from.take() {
            #[cfg(test)]
            if self.bugs.persist_entries_after_sends {
                actions.append(&mut self.out);
            }
            actions.push(Action::PersistEntries { from });
        }
        actions.append(&mut self.out);
    }

    fn hard_state(&self) -> HardState {
        #[cfg(test)]
        if self.bugs.forget_voted_for {
            return HardState { term: self.term, voted_for: None };
        }
        HardState { term: self.term, voted_for: self.voted_for }
    }

    fn send(&mut self, to: NodeId, body: Body<C>) {
        self.send_in(self.term, to, body);
    }

    /// Sends with an explicit term: a pre-vote request carries the term it would campaign in,
    /// and a pre-vote grant echoes it.
    fn send_in(&mut self, term: Term, to: NodeId, body: Body<C>) {
        self.out.push(Action::Send(Message { from: self.id, to, term, body }));
    }

    fn notice(&mut self, notice: Notice) {
        self.out.push(Action::Notice(notice));
    }

    /// Notes that the configuration in force changed (appended, or truncated away).
    fn config_changed(&mut self) {
        let config = Arc::clone(self.config());
        self.notice(Notice::ConfigChanged { config });
    }

    fn reject(&mut self, error: Error) {
        self.out.push(Action::Rejected(error));
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader { leader_hint: self.leader.filter(|&l| l != self.id) }
    }

    /// Records a log change from `from` onward, to be persisted before this step's sends.
    fn log_changed(&mut self, from: LogIndex) {
        self.persist_from = Some(self.persist_from.map_or(from, |f| f.min(from)));
        self.durable = self.durable.min(from.prev());
    }

    /// The log is durable through `index` now: a leader may count it (`Input::Synced`).
    fn synced(&mut self, index: LogIndex) {
        self.durable = self.durable_index().max(index.min(self.log.last_index()));
        if self.role == Role::Leader {
            self.maybe_advance_commit_index();
        }
    }

    /// How far the log is known durable (`Input::Synced`); a driver steps `Input::Synced`
    /// after a sync when this is below the log's last index.
    pub fn durable_index(&self) -> LogIndex {
        self.durable.min(self.log.last_index())
    }

    /// ALL-1: hand newly committed entries to the state machine, in order.
    fn maybe_apply(&mut self) {
        let to = self.apply_limit();
        if to > self.last_applied {
            self.out.push(Action::Apply { from: self.last_applied.next(), to });
            self.last_applied = to;
        }
    }

    fn apply_limit(&self) -> LogIndex {
        #[cfg(test)]
        if self.bugs.apply_before_commit {
            return self.commit_index.max(self.log.last_index());
        }
        self.commit_index
    }

    /// Steps down (or stays) as follower of `leader` in `term`, with a fresh election timeout.
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.update_term(term, leader);
        self.reset_election_timer();
    }

    /// ALL-2: adopt a higher term as a follower, forgetting the old vote and leader. Leaves the
    /// election timer alone: only a current leader or a granted vote resets it (SUB-3).
    fn update_term(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            if self.role == Role::Leader {
                self.notice(Notice::SteppedDown { term: self.term, reason: "saw a higher term" });
            }
            self.term = term;
            self.voted_for = None;
            self.persist_hard_state = true;
        }
        if self.role == Role::Leader {
            self.abandon_change();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.uncommitted_bytes = 0;
        self.progress.clear();
        self.sending.clear();
        self.votes.clear();
    }

    /// A message from the current leader (SUB-3): a fresh election timeout, and votes refused
    /// for a minimum one from now.
    fn heard_from_leader(&mut self) {
        self.leader_heard_at = self.now;
        self.reset_election_timer();
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.election_timeout = self.rng.random_range(self.timing.election_ticks.clone());
    }

    fn is_voter(&self) -> bool {
        self.config().voters.contains(&self.id)
    }
}

/// The default sizer: the command's in-memory size, ignoring anything it points to.
fn size_in_memory<C>(_: &C) -> usize {
    std::mem::size_of::<C>()
}

fn vote_reply<C>(granted: bool, pre_vote: bool) -> Body<C> {
    Body::RequestVoteReply(crate::message::RequestVoteReply { granted, pre_vote })
}

#[cfg(test)]
mod tests;
