//! The run's trace: every step, drop and fault as a compact [`TraceLine`], folded into a
//! deterministic hash, kept in a ring buffer of the last [`RING`] lines for failure reports, and
//! optionally kept whole as text.
//!
//! Owns formatting and hashing only; lines are built by the simulator. Ticks that produce no
//! action are not traced: they change only timers, which later traced steps reveal.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::core::{MembershipChange, Role};
use crate::message::{AppendEntriesReply, Body, Message};
use crate::types::{LogIndex, NodeId, Term};

/// How many lines a failure report shows.
pub const RING: usize = 50;

/// FNV-1a as a [`Hasher`]: stable across runs and platforms of one build, unlike `SipHash`
/// with random keys.
#[derive(Clone, Debug)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    // NB: whole words in one step (the derived `Hash` of trace lines writes mostly integers);
    // a tenth of the simulator's time went to hashing them byte by byte.
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as u64);
    }
}

impl fmt::Write for Fnv {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        Hasher::write(self, s.as_bytes());
        Ok(())
    }
}

/// A message reduced to the fields a reader of a trace needs.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct MsgSummary {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: BodySummary,
}

/// The RPC, without entry payloads.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum BodySummary {
    Vote { last_index: LogIndex, last_term: Term, pre_vote: bool },
    VoteReply { granted: bool, pre_vote: bool },
    Append { prev_index: LogIndex, prev_term: Term, entries: u64, commit: LogIndex },
    AppendOk { matched: LogIndex },
    AppendReject { rejected: LogIndex },
    TimeoutNow,
    Snapshot { index: LogIndex, offset: u64, bytes: u64, done: bool },
    SnapshotReply { index: LogIndex, received: u64, done: bool },
    ReadConfirm { round: u64, reply: bool },
    ReadIndex { reads: u64 },
    ReadIndexReply { reads: u64, index: Option<LogIndex> },
}

impl MsgSummary {
    pub fn of<C>(m: &Message<C>) -> Self {
        MsgSummary { from: m.from, to: m.to, term: m.term, body: BodySummary::of(&m.body) }
    }
}

impl BodySummary {
    fn of<C>(body: &Body<C>) -> Self {
        match body {
            Body::RequestVote(rv) => BodySummary::Vote {
                last_index: rv.last_log_index,
                last_term: rv.last_log_term,
                pre_vote: rv.pre_vote,
            },
            Body::RequestVoteReply(r) => {
                BodySummary::VoteReply { granted: r.granted, pre_vote: r.pre_vote }
            }
            Body::AppendEntries(ae) => BodySummary::Append {
                prev_index: ae.prev_log_index,
                prev_term: ae.prev_log_term,
                entries: ae.entries.len() as u64,
                commit: ae.leader_commit,
            },
            Body::AppendEntriesReply(AppendEntriesReply::Success { match_index }) => {
                BodySummary::AppendOk { matched: *match_index }
            }
            Body::AppendEntriesReply(AppendEntriesReply::Reject { rejected_index, .. }) => {
                BodySummary::AppendReject { rejected: *rejected_index }
            }
            Body::TimeoutNow => BodySummary::TimeoutNow,
            Body::InstallSnapshot(c) => BodySummary::Snapshot {
                index: c.meta.index,
                offset: c.offset,
                bytes: c.data.len() as u64,
                done: c.done,
            },
            Body::InstallSnapshotReply(r) => {
                BodySummary::SnapshotReply { index: r.index, received: r.received, done: r.done }
            }
            Body::ReadConfirm(r) => BodySummary::ReadConfirm { round: r.round, reply: false },
            Body::ReadConfirmReply(r) => BodySummary::ReadConfirm { round: r.round, reply: true },
            Body::ReadIndex(r) | Body::ReadIndexByRound(r) => {
                BodySummary::ReadIndex { reads: r.ids.len() as u64 }
            }
            Body::ReadIndexReply(r) => {
                BodySummary::ReadIndexReply { reads: r.ids.len() as u64, index: r.index }
            }
        }
    }
}

/// What a node looked like after a step.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct NodeSummary {
    pub role: Role,
    pub term: Term,
    pub commit: LogIndex,
    pub last: LogIndex,
}

/// The input a step was given.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum InputSummary {
    Tick,
    Receive(MsgSummary),
    Propose {
        client: u64,
        op: u64,
    },
    Batch {
        count: u64,
    },
    Change(MembershipChange),
    /// The end of a sync window: the batch's writes are synced.
    Flush,
    /// An on-demand compaction request.
    Compact,
    /// A snapshot taken off the step (`SimConfig::deferred_apply`) reaches the core.
    SnapshotTaken,
    /// A request another node forwarded (`SimConfig::forward_requests`).
    Forwarded,
    /// A leadership transfer request ([`Fault::Transfer`](super::Fault::Transfer)).
    Transfer {
        to: NodeId,
    },
}

/// One traced event.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) enum TraceEvent {
    /// A node stepped; `sends` counts the messages it produced.
    Step { node: NodeId, input: InputSummary, after: NodeSummary, sends: u32 },
    /// The network lost a message (random drop, partition, or a crashed receiver).
    Dropped { msg: MsgSummary, why: &'static str },
    /// A fault, a restart, a client event or a phase change, already in words.
    Note(String),
}

/// A traced event and when it happened (virtual microseconds).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct TraceLine {
    pub at: u64,
    pub event: TraceEvent,
}

/// The trace of one run.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    hash: Fnv,
    lines: u64,
    ring: VecDeque<TraceLine>,
    full: Option<Vec<String>>,
    /// The whole trace as lines (for the timeline picture), kept with `full`.
    structured: Option<Vec<TraceLine>>,
    /// When each node last sent messages on a clock tick while leading: its heartbeats.
    heartbeats: std::collections::BTreeMap<NodeId, u64>,
    /// The emptied buffers of notes that left the ring (at most [`RING`]), for the next
    /// notes to write into.
    spare: Vec<String>,
}

impl Trace {
    pub fn new(keep_full: bool) -> Self {
        Trace {
            full: keep_full.then(Vec::new),
            structured: keep_full.then(Vec::new),
            ..Trace::default()
        }
    }

    pub fn record(&mut self, line: TraceLine) {
        line.hash(&mut self.hash);
        self.lines += 1;
        if let TraceEvent::Step { node, input: InputSummary::Tick, after, sends } = &line.event {
            if after.role == Role::Leader && *sends > 0 {
                self.heartbeats.insert(*node, line.at);
            }
        }
        if let Some(full) = &mut self.full {
            full.push(line.to_string());
        }
        if let Some(structured) = &mut self.structured {
            structured.push(line.clone());
        }
        if self.ring.len() == RING {
            if let Some(TraceLine { event: TraceEvent::Note(mut text), .. }) = self.ring.pop_front()
            {
                if self.spare.len() < RING {
                    text.clear();
                    self.spare.push(text);
                }
            }
        }
        self.ring.push_back(line);
    }

    /// Records a note written from `args` into the buffer of a note that left the ring: the
    /// same line as `record` of `Note(format!(..))`, without a new string and its regrowth
    /// for each (the clients' notes were a twentieth of the simulator's instructions).
    pub fn note(&mut self, at: u64, args: fmt::Arguments<'_>) {
        let mut text = self.spare.pop().unwrap_or_default();
        fmt::Write::write_fmt(&mut text, args).expect("a String takes any text");
        self.record(TraceLine { at, event: TraceEvent::Note(text) });
    }

    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    pub fn excerpt(&self) -> Vec<String> {
        self.ring.iter().map(ToString::to_string).collect()
    }

    pub fn full(&self) -> Option<&[String]> {
        self.full.as_deref()
    }

    pub fn structured(&self) -> Option<&[TraceLine]> {
        self.structured.as_deref()
    }

    /// When `node` last sent messages on a tick while leading (virtual microseconds).
    pub fn last_heartbeat(&self, node: NodeId) -> Option<u64> {
        self.heartbeats.get(&node).copied()
    }
}

impl fmt::Display for TraceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>6}.{:03}ms ", self.at / 1000, self.at % 1000)?;
        match &self.event {
            TraceEvent::Step { node, input, after, sends } => {
                write!(f, "{node} {input} => {after} sends={sends}")
            }
            TraceEvent::Dropped { msg, why } => write!(f, "drop ({why}) {msg}"),
            TraceEvent::Note(text) => f.write_str(text),
        }
    }
}

impl fmt::Display for InputSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputSummary::Tick => f.write_str("tick"),
            InputSummary::Receive(m) => write!(f, "recv {m}"),
            InputSummary::Propose { client, op } => write!(f, "propose c{client}#{op}"),
            InputSummary::Batch { count } => write!(f, "propose batch of {count}"),
            InputSummary::Change(c) => write!(f, "change {c:?}"),
            InputSummary::Flush => f.write_str("sync the batch"),
            InputSummary::Compact => f.write_str("compact"),
            InputSummary::SnapshotTaken => f.write_str("snapshot taken"),
            InputSummary::Forwarded => f.write_str("forwarded request"),
            InputSummary::Transfer { to } => write!(f, "transfer to {to}"),
        }
    }
}

impl fmt::Display for NodeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            Role::Follower => "F",
            Role::PreCandidate => "P",
            Role::Candidate => "C",
            Role::Leader => "L",
        };
        write!(f, "{role} {} commit={} last={}", self.term, self.commit, self.last)
    }
}

impl fmt::Display for MsgSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{} {} ", self.from, self.to, self.term)?;
        match self.body {
            BodySummary::Vote { last_index, last_term, pre_vote } => {
                let kind = if pre_vote { "PreVote" } else { "RequestVote" };
                write!(f, "{kind} last={last_index}@{last_term}")
            }
            BodySummary::VoteReply { granted, pre_vote } => {
                let kind = if pre_vote { "PreVoteReply" } else { "VoteReply" };
                write!(f, "{kind} granted={granted}")
            }
            BodySummary::Append { prev_index, prev_term, entries, commit } => {
                write!(f, "AppendEntries prev={prev_index}@{prev_term} +{entries} commit={commit}")
            }
            BodySummary::AppendOk { matched } => write!(f, "AppendOk match={matched}"),
            BodySummary::AppendReject { rejected } => write!(f, "AppendReject at={rejected}"),
            BodySummary::TimeoutNow => f.write_str("TimeoutNow"),
            BodySummary::Snapshot { index, offset, bytes, done } => {
                write!(f, "InstallSnapshot {index} at={offset} +{bytes}B done={done}")
            }
            BodySummary::SnapshotReply { index, received, done } => {
                write!(f, "SnapshotReply {index} received={received} done={done}")
            }
            BodySummary::ReadConfirm { round, reply: false } => write!(f, "ReadConfirm r{round}"),
            BodySummary::ReadConfirm { round, reply: true } => {
                write!(f, "ReadConfirmReply r{round}")
            }
            BodySummary::ReadIndex { reads } => write!(f, "ReadIndex x{reads}"),
            BodySummary::ReadIndexReply { reads, index } => {
                write!(f, "ReadIndexReply x{reads} index={index:?}")
            }
        }
    }
}
