//! The RPCs of the paper, named as in Figure 2, and the log entries they carry.
//!
//! Pure data: in-process nodes move these values through channels. Every type derives serde's
//! `Serialize`/`Deserialize` (for a command type that does), so the disk log and the TCP
//! transport encode them at their own boundary, never inside the core.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::types::{LogIndex, NodeId, Term};

/// One log entry: the term in which a leader created it and what it carries (ST-P3).
/// Its index is implied by its position, so the log stores no index per entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<C> {
    /// The leader's term when it appended the entry.
    pub term: Term,
    /// The entry's content.
    pub payload: Payload<C>,
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload<C> {
    /// The blank entry a new leader appends at the start of its term (SUB-4).
    Noop,
    /// A client's command, for the state machine.
    Command(C),
    /// A new cluster configuration; it takes effect on every server as soon as it is appended.
    Config(Arc<Configuration>),
}

/// The members of the cluster: voters decide elections and commitment; learners only replicate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Configuration {
    /// Servers whose votes and acknowledgements count towards a majority.
    pub voters: BTreeSet<NodeId>,
    /// Non-voting members catching up (thesis §4.2.1); never counted in a majority.
    pub learners: BTreeSet<NodeId>,
}

impl Configuration {
    /// A configuration of the given voters and no learners.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Configuration { voters: voters.into_iter().collect(), learners: BTreeSet::new() }
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Whether the nodes for which `acked` is true form a majority of the voters.
    ///
    /// NB: the one place majority is computed, so joint consensus would change only this.
    pub fn has_quorum(&self, acked: impl Fn(NodeId) -> bool) -> bool {
        let yes = self.voters.iter().filter(|&&id| acked(id)).count();
        yes * 2 > self.voters.len()
    }
}

/// A message between two servers. `term` is the sender's current term (or, for a pre-vote
/// request, the term it would campaign in).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message<C> {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's term, for ALL-2.
    pub term: Term,
    /// The RPC.
    pub body: Body<C>,
}

/// The RPCs and their replies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body<C> {
    /// Invoked by candidates to gather votes (§5.2).
    RequestVote(RequestVote),
    /// The answer to a [`RequestVote`].
    RequestVoteReply(RequestVoteReply),
    /// Invoked by leaders to replicate entries; also the heartbeat (§5.3, §5.2).
    AppendEntries(AppendEntries<C>),
    /// The answer to an [`AppendEntries`].
    AppendEntriesReply(AppendEntriesReply),
    /// Leadership transfer: start an election now (thesis §3.10).
    TimeoutNow,
    /// Invoked by the leader to send a follower one chunk of a snapshot (§7, Figure 13).
    InstallSnapshot(InstallSnapshot),
    /// The answer to an [`InstallSnapshot`] chunk.
    InstallSnapshotReply(InstallSnapshotReply),
    /// Leader to voters: "am I still your leader?", confirming reads (thesis §6.4, step 3).
    ReadConfirm(ReadConfirm),
    /// The answer to a [`ReadConfirm`]: the follower still follows the sender in this term.
    ReadConfirmReply(ReadConfirm),
    /// Follower to leader: a read index for these reads, please (follower reads, thesis §6.4).
    /// The leader may answer within its lease (`ReadPolicy::Lease`).
    ReadIndex(ReadIndex),
    /// The answer to a [`ReadIndex`]: the index to apply through before answering, or none
    /// (the receiver does not lead).
    ReadIndexReply(ReadIndexReply),
    /// Follower to leader: [`Body::ReadIndex`] for reads whose caller chose
    /// `ReadPolicy::ReadIndex`: the leader answers only after a confirmation round started
    /// after it arrived, never from its lease. NB: a variant of its own (added last) rather
    /// than a field of [`ReadIndex`], so every message an older node sends or reads keeps its
    /// encoding; an older leader cannot decode this one.
    ReadIndexByRound(ReadIndex),
}

/// A leadership confirmation round: rounds are numbered per leader term, so a reply names the
/// round it acknowledges and a late reply to an older round confirms only that older round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadConfirm {
    /// The round number, from 1 in each term of a leader.
    pub round: u64,
}

/// A follower's request for a read index, for the reads it numbered `ids`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndex {
    /// The follower's own numbers for the reads (echoed in the reply).
    pub ids: Vec<u64>,
}

/// The leader's answer to a [`ReadIndex`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexReply {
    /// The request's ids.
    pub ids: Vec<u64>,
    /// The read index (the leader's commit index once its leadership was confirmed after the
    /// request arrived), or `None`: the sender does not lead; ask the leader of the reply's term.
    pub index: Option<LogIndex>,
}

/// What a snapshot stands for: the state machine after applying every entry through `index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last entry the snapshot includes (Figure 13's lastIncludedIndex).
    pub index: LogIndex,
    /// That entry's term (lastIncludedTerm).
    pub term: Term,
    /// The configuration in force at `index` (thesis §5.1).
    pub config: Arc<Configuration>,
}

/// A point-in-time image of a state machine, in the byte form `StateMachine::snapshot` gives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What it stands for.
    pub meta: SnapshotMeta,
    /// The state machine's bytes, shared: sending a chunk copies only the chunk.
    pub data: Arc<[u8]>,
}

/// InstallSnapshot arguments (Figure 13): one chunk of `meta`'s snapshot at byte `offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    /// The snapshot this chunk belongs to.
    pub meta: SnapshotMeta,
    /// Where the chunk starts in the snapshot's bytes.
    pub offset: u64,
    /// The chunk.
    pub data: Vec<u8>,
    /// Whether this is the last chunk.
    pub done: bool,
}

/// InstallSnapshot results: how much of the snapshot at `index` the follower holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotReply {
    /// The snapshot's last included index, to recognise replies to an older transfer.
    pub index: LogIndex,
    /// Bytes received in order so far: the offset the follower expects next.
    pub received: u64,
    /// The follower has the whole snapshot (installed now, or already covered by its log).
    pub done: bool,
}

/// RequestVote arguments (Figure 2), plus the thesis's pre-vote and transfer flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVote {
    /// Index of the candidate's last log entry (§5.4).
    pub last_log_index: LogIndex,
    /// Term of the candidate's last log entry (§5.4).
    pub last_log_term: Term,
    /// A pre-vote (thesis §9.6): "would you vote for me?"; changes no state on the receiver.
    pub pre_vote: bool,
    /// Sent on a leadership transfer: bypasses the disruptive-server check (thesis §4.2.3).
    pub transfer: bool,
}

/// RequestVote results (Figure 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVoteReply {
    /// True means the candidate received the vote.
    pub granted: bool,
    /// Echoes the request's flag, so a pre-vote reply is never counted as a vote.
    pub pre_vote: bool,
}

/// AppendEntries arguments (Figure 2). `entries` are at `prev_log_index + 1 ..`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries<C> {
    /// Index of the entry immediately preceding the new ones.
    pub prev_log_index: LogIndex,
    /// Term of the entry at `prev_log_index`.
    pub prev_log_term: Term,
    /// Entries to store; empty for a heartbeat.
    pub entries: Vec<Entry<C>>,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
}

impl<C> AppendEntries<C> {
    /// Index of the last entry this request carries (or `prev_log_index` if none).
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.prev_log_index.0 + self.entries.len() as u64)
    }
}

/// AppendEntries results (Figure 2), plus the hints for fast backtracking (SUB-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendEntriesReply {
    /// The follower's log now matches the leader's through `match_index` = prev + entries.len().
    Success {
        /// Taken from the request, never from the follower's log length (SUB-5).
        match_index: LogIndex,
    },
    /// The consistency check (AE-2) failed at `rejected_index` (the request's prev_log_index).
    Reject {
        /// The request's `prev_log_index`, to recognise stale rejections.
        rejected_index: LogIndex,
        /// The follower's term at `rejected_index` and the first index it holds for that term.
        conflict: Option<(Term, LogIndex)>,
        /// The follower's last log index.
        last_index: LogIndex,
    },
}
