//! The scenario DSL: boot a core from a given persisted state, hand it inputs or crafted
//! messages, and read back its actions as a one-line-per-action trace.
//!
//! Every step taken through [`Node::step`] also checks the output contract, so each scenario
//! doubles as a contract test:
//! * SUB-8: no `PersistHardState`/`PersistEntries` after a `Send` or `Apply` in one step's output;
//! * SUB-8: after the step, the "disk" (updated only by persist actions) equals the core's term,
//!   vote and log, so nothing was revealed that is not durable;
//! * ALL-1: `Apply` ranges are consecutive from 1 and never pass `commit_index`.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

pub use crate::config::Config;
pub use crate::core::{Action, Bugs, Core, Input, MembershipChange, Notice, Role, Status};
pub use crate::error::Error;
pub use crate::message::{
    AppendEntries, AppendEntriesReply, Body, Configuration, Entry, Message, Payload, RequestVote,
    RequestVoteReply, Snapshot, SnapshotMeta,
};
pub use crate::storage::{HardState, MemStorage, PersistentState, Storage};
pub use crate::types::{LogIndex, NodeId, Term};

/// The command stored at `index` in `term` by [`Boot::log`] and [`Ae::entries`]: equal (index,
/// term) always means an equal command, as Log Matching requires.
pub fn cmd(index: u64, term: u64) -> u64 {
    term * 100 + index
}

/// A command entry as the DSL builds them.
pub fn entry(index: u64, term: u64) -> Entry<u64> {
    Entry { term: Term(term), payload: Payload::Command(cmd(index, term)) }
}

/// A configuration entry.
pub fn config_entry(term: u64, voters: &[u64], learners: &[u64]) -> Entry<u64> {
    Entry { term: Term(term), payload: Payload::Config(Arc::new(conf(voters, learners))) }
}

/// A configuration of `voters` and `learners`.
pub fn conf(voters: &[u64], learners: &[u64]) -> Configuration {
    Configuration {
        voters: voters.iter().map(|&v| NodeId(v)).collect(),
        learners: learners.iter().map(|&l| NodeId(l)).collect(),
    }
}

/// The default config with an explicit seed (0), so every scenario replays exactly:
/// `Config::default()` draws its seed from the OS.
pub fn test_config() -> Config {
    Config { seed: 0, ..Config::default() }
}

/// Election timeout 150..160ms = 15..16 ticks: the timeout is exactly 15 ticks, so timer tests
/// can count. NB: too narrow for `Config::validate` (under 3 ticks wide); cores do not
/// validate, so only pass it to `Core::new`.
pub fn fixed_timeout() -> Config {
    Config { election_timeout: ms(150)..ms(160), ..test_config() }
}

/// [`fixed_timeout`] without pre-vote: a timeout starts a real election at once.
pub fn no_pre_vote() -> Config {
    Config { pre_vote: false, ..fixed_timeout() }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

// ---------------------------------------------------------------------------------------------
// Booting a node from persisted state.

/// What a node finds on its disk when it starts: `boot(2).term(3).log(&[1, 1, 2]).start()`.
pub struct Boot {
    id: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    term: u64,
    voted_for: Option<u64>,
    offset: (u64, u64),
    entries: Vec<Entry<u64>>,
    config: Config,
}

/// Node `id` of the voters {1, 2, 3}, term 0, empty log, [`test_config`].
pub fn boot(id: u64) -> Boot {
    Boot {
        id,
        voters: vec![1, 2, 3],
        learners: Vec::new(),
        term: 0,
        voted_for: None,
        offset: (0, 0),
        entries: Vec::new(),
        config: test_config(),
    }
}

impl Boot {
    pub fn voters(mut self, voters: &[u64]) -> Self {
        self.voters = voters.to_vec();
        self
    }

    pub fn learners(mut self, learners: &[u64]) -> Self {
        self.learners = learners.to_vec();
        self
    }

    /// currentTerm; defaults to the last log term.
    pub fn term(mut self, term: u64) -> Self {
        self.term = term;
        self
    }

    pub fn voted_for(mut self, id: u64) -> Self {
        self.voted_for = Some(id);
        self
    }

    /// The log, one term per entry from index 1 (or after the offset); entry `i` carries
    /// `cmd(i, term)`.
    pub fn log(mut self, terms: &[u64]) -> Self {
        let first = self.offset.0 + 1;
        self.entries = terms.iter().zip(first..).map(|(&t, i)| entry(i, t)).collect();
        self
    }

    /// A compacted prefix: the log starts after `index`, whose entry had `term`. Call before
    /// [`Boot::log`].
    pub fn offset(mut self, index: u64, term: u64) -> Self {
        self.offset = (index, term);
        self
    }

    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    pub fn start(self) -> Node {
        let last_term = self.entries.last().map_or(self.offset.1, |e| e.term.0);
        let state = PersistentState {
            hard_state: HardState {
                term: Term(self.term.max(last_term)),
                voted_for: self.voted_for.map(NodeId),
            },
            base_config: conf(&self.voters, &self.learners),
            log_offset: LogIndex(self.offset.0),
            offset_term: Term(self.offset.1),
            entries: self.entries,
            // NB: a compacted log always comes with the snapshot that covers its prefix.
            snapshot: (self.offset.0 > 0).then(|| {
                let meta = SnapshotMeta {
                    index: LogIndex(self.offset.0),
                    term: Term(self.offset.1),
                    config: Arc::new(conf(&self.voters, &self.learners)),
                };
                Arc::new(Snapshot { meta, data: Arc::from(&b"snapshot"[..]) })
            }),
        };
        Node::from_disk(NodeId(self.id), self.config, state)
    }
}

// ---------------------------------------------------------------------------------------------
// One node: a core, its disk, its state machine, and the contract checks.

pub struct Node {
    pub core: Core<u64>,
    config: Config,
    /// What the driver made durable, changed only by persist actions, through the real
    /// `Storage` implementation the runtime's default uses.
    pub disk: MemStorage<u64>,
    /// Commands handed to the state machine by `Apply` actions, in order (this incarnation).
    pub applied: Vec<(LogIndex, u64)>,
    /// Every action this node produced since the test last took them.
    pub history: Vec<Action<u64>>,
    /// The last index an `Apply` covered (this incarnation).
    applied_through: LogIndex,
    bugs: Bugs,
    sizer: Option<fn(&u64) -> usize>,
}

impl Node {
    pub fn from_disk(id: NodeId, config: Config, state: PersistentState<u64>) -> Self {
        let disk = MemStorage::from_state(state);
        let core = boot_core(id, &config, &disk, None);
        let (applied, history) = (Vec::new(), Vec::new());
        let applied_through = disk.load().expect("in memory").log_offset;
        let bugs = Bugs::default();
        Node { core, config, disk, applied, history, applied_through, bugs, sizer: None }
    }

    /// Measures commands with `sizer` (kept across restarts). Call right after start.
    pub fn with_sizer(mut self, sizer: fn(&u64) -> usize) -> Self {
        self.sizer = Some(sizer);
        self.core = boot_core(self.id(), &self.config, &self.disk, self.sizer);
        self
    }

    /// Turns on a test-only bug switch (kept across restarts).
    pub fn with_bugs(mut self, bugs: Bugs) -> Self {
        self.set_bugs(bugs);
        self
    }

    pub fn set_bugs(&mut self, bugs: Bugs) {
        self.bugs = bugs;
        self.core.bugs = bugs;
    }

    pub fn id(&self) -> NodeId {
        self.core.id()
    }

    /// Feeds one input, executes the actions like a driver would, checks the contract.
    pub fn step(&mut self, input: Input<u64>) -> Vec<Action<u64>> {
        let mut actions = Vec::new();
        self.core.step(input, &mut actions);
        self.execute(&actions);
        // Like a driver that syncs at the end of each step: the core learns its log is durable
        // (a leader may count it now), and what that unlocks is part of this step's output.
        if self.core.durable_index() < self.core.log().last_index() {
            let start = actions.len();
            self.core.step(Input::Synced, &mut actions);
            self.execute(&actions[start..]);
        }
        self.check_disk_matches_core();
        self.history.extend(actions.iter().cloned());
        actions
    }

    pub fn recv(&mut self, msg: impl Into<Message<u64>>) -> Vec<Action<u64>> {
        self.step(Input::Receive(msg.into()))
    }

    pub fn campaign(&mut self) -> Vec<Action<u64>> {
        self.step(Input::Campaign)
    }

    pub fn propose(&mut self, commands: &[u64]) -> Vec<Action<u64>> {
        self.step(Input::Propose(commands.to_vec()))
    }

    /// `n` ticks; the actions of all of them, in order.
    pub fn tick(&mut self, n: u64) -> Vec<Action<u64>> {
        (0..n).flat_map(|_| self.step(Input::Tick)).collect()
    }

    /// Ticks until the node asks for (pre-)votes; returns how many ticks that took.
    pub fn ticks_until_campaign(&mut self, max: u64) -> Option<u64> {
        (1..=max).find(|_| {
            let acts = self.step(Input::Tick);
            sends(&acts).iter().any(|m| matches!(m.body, Body::RequestVote(_)))
        })
    }

    /// The node loses the AppendEntries it held for reordering (`reorder.rs`), as a restart
    /// would: for scenarios that need a request to be lost after its rejection was sent.
    pub fn forget_held(&mut self) {
        self.core.held = Default::default();
    }

    /// A crash and restart: only what the disk holds survives (TLA `Restart`).
    pub fn restart(&mut self) {
        self.core = boot_core(self.id(), &self.config, &self.disk, self.sizer);
        self.core.bugs = self.bugs;
        self.applied.clear();
        self.applied_through = self.disk.load().expect("in memory").log_offset;
    }

    pub fn status(&self) -> Status {
        self.core.status()
    }

    pub fn role(&self) -> Role {
        self.core.role()
    }

    pub fn term(&self) -> u64 {
        self.core.term().0
    }

    pub fn commit(&self) -> u64 {
        self.core.status().commit_index.0
    }

    /// The term of every log entry, from index 1.
    pub fn log_terms(&self) -> Vec<u64> {
        self.entries().iter().map(|e| e.term.0).collect()
    }

    pub fn entries(&self) -> Vec<Entry<u64>> {
        self.core.log().entries_from(LogIndex(1), usize::MAX).to_vec()
    }

    pub fn take_history(&mut self) -> Vec<Action<u64>> {
        std::mem::take(&mut self.history)
    }

    /// Executes actions as a driver would (persist, send, apply), checking the contract.
    pub fn execute(&mut self, actions: &[Action<u64>]) {
        let id = self.id();
        let mut revealed = false;
        for action in actions {
            match action {
                Action::PersistHardState(hs) => {
                    assert!(!revealed, "{id}: SUB-8 PersistHardState after a send/apply");
                    self.disk.save_hard_state(*hs).expect("in memory");
                }
                Action::PersistEntries { from } => {
                    assert!(!revealed, "{id}: SUB-8 PersistEntries after a send/apply");
                    let new = self.core.log().entries_from(*from, usize::MAX);
                    let stored = self.disk.append(*from, new);
                    assert!(stored.is_ok(), "{id}: persist from {from}: {stored:?}");
                }
                Action::PersistSnapshot(snapshot) => {
                    assert!(!revealed, "{id}: SUB-8 PersistSnapshot after a send/apply");
                    self.disk.save_snapshot(snapshot).expect("in memory");
                }
                Action::Restore(snapshot) => {
                    revealed = true;
                    self.applied_through = snapshot.meta.index;
                }
                Action::Send(_) => revealed = true,
                Action::Apply { from, to } => {
                    revealed = true;
                    self.apply(*from, *to);
                }
                _ => {}
            }
        }
    }

    fn apply(&mut self, from: LogIndex, to: LogIndex) {
        let id = self.id();
        let last = self.applied_through;
        assert_eq!(from, last.next(), "{id}: ALL-1 apply {from}..={to} after {last}");
        let commit = self.core.status().commit_index;
        assert!(to <= commit, "{id}: ALL-1 apply up to {to} past commit {commit}");
        for i in from.0..=to.0 {
            let e = self.core.log().entry(LogIndex(i)).expect("applied entry is in the log");
            if let Payload::Command(c) = e.payload {
                self.applied.push((LogIndex(i), c));
            }
        }
        self.applied_through = to;
    }

    fn check_disk_matches_core(&self) {
        let id = self.id();
        let in_memory = HardState { term: self.core.term(), voted_for: self.core.voted_for() };
        let disk = self.disk.load().expect("in memory");
        assert_eq!(disk.hard_state, in_memory, "{id}: SUB-8 hard state not persisted");
        assert_eq!(disk.log_offset, self.core.log().offset(), "{id}: SUB-8 snapshot not persisted");
        assert!(disk.entries == self.entries(), "{id}: SUB-8 log not persisted");
    }
}

/// A core booted from `disk`, checking every invariant after every step in any build.
fn boot_core(
    id: NodeId,
    config: &Config,
    disk: &MemStorage<u64>,
    sizer: Option<fn(&u64) -> usize>,
) -> Core<u64> {
    let mut core = Core::new(id, config, disk.load().expect("in memory"));
    if let Some(sizer) = sizer {
        core = core.with_sizer(sizer);
    }
    core.set_check_invariants(true);
    core
}

// ---------------------------------------------------------------------------------------------
// Crafted messages.

/// An AppendEntries from `from` to `to` in `term`:
/// `ae(1, 2, 3).prev(2, 1).entries(&[3, 3]).commit(2)`.
pub struct Ae {
    from: u64,
    to: u64,
    term: u64,
    prev: (u64, u64),
    entries: Vec<Spec>,
    commit: u64,
}

enum Spec {
    /// A command entry of this term, its command chosen by [`cmd`] from its index.
    Command(u64),
    Raw(Entry<u64>),
}

pub fn ae(from: u64, to: u64, term: u64) -> Ae {
    Ae { from, to, term, prev: (0, 0), entries: Vec::new(), commit: 0 }
}

impl Ae {
    /// prevLogIndex and prevLogTerm.
    pub fn prev(mut self, index: u64, term: u64) -> Self {
        self.prev = (index, term);
        self
    }

    /// Command entries after prev, one term each (the commands follow [`cmd`]).
    pub fn entries(mut self, terms: &[u64]) -> Self {
        self.entries.extend(terms.iter().map(|&t| Spec::Command(t)));
        self
    }

    /// A raw entry after those so far.
    pub fn then(mut self, entry: Entry<u64>) -> Self {
        self.entries.push(Spec::Raw(entry));
        self
    }

    pub fn commit(mut self, index: u64) -> Self {
        self.commit = index;
        self
    }
}

impl From<Ae> for Message<u64> {
    fn from(a: Ae) -> Self {
        let entries = a
            .entries
            .into_iter()
            .zip(a.prev.0 + 1..)
            .map(|(spec, i)| match spec {
                Spec::Command(term) => entry(i, term),
                Spec::Raw(raw) => raw,
            })
            .collect();
        let body = Body::AppendEntries(AppendEntries {
            prev_log_index: LogIndex(a.prev.0),
            prev_log_term: Term(a.prev.1),
            entries,
            leader_commit: LogIndex(a.commit),
        });
        Message { from: NodeId(a.from), to: NodeId(a.to), term: Term(a.term), body }
    }
}

/// A RequestVote from `from` to `to` in `term`: `rv(1, 2, 3).last(4, 2).pre_vote()`.
pub struct Rv {
    from: u64,
    to: u64,
    term: u64,
    rv: RequestVote,
}

pub fn rv(from: u64, to: u64, term: u64) -> Rv {
    let rv = RequestVote {
        last_log_index: LogIndex(0),
        last_log_term: Term(0),
        pre_vote: false,
        transfer: false,
    };
    Rv { from, to, term, rv }
}

impl Rv {
    /// lastLogIndex and lastLogTerm.
    pub fn last(mut self, index: u64, term: u64) -> Self {
        self.rv.last_log_index = LogIndex(index);
        self.rv.last_log_term = Term(term);
        self
    }

    pub fn pre_vote(mut self) -> Self {
        self.rv.pre_vote = true;
        self
    }

    pub fn transfer(mut self) -> Self {
        self.rv.transfer = true;
        self
    }
}

impl From<Rv> for Message<u64> {
    fn from(r: Rv) -> Self {
        let body = Body::RequestVote(r.rv);
        Message { from: NodeId(r.from), to: NodeId(r.to), term: Term(r.term), body }
    }
}

/// A (real) RequestVote reply.
pub fn vote(from: u64, to: u64, term: u64, granted: bool) -> Message<u64> {
    let body = Body::RequestVoteReply(RequestVoteReply { granted, pre_vote: false });
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

/// A pre-vote reply.
pub fn pre_vote_reply(from: u64, to: u64, term: u64, granted: bool) -> Message<u64> {
    let body = Body::RequestVoteReply(RequestVoteReply { granted, pre_vote: true });
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

/// A rejected AppendEntries reply without a conflicting term (the follower's log ends at
/// `last`).
pub fn ae_reject(from: u64, to: u64, term: u64, rejected: u64, last: u64) -> Message<u64> {
    let body = Body::AppendEntriesReply(AppendEntriesReply::Reject {
        rejected_index: LogIndex(rejected),
        conflict: None,
        last_index: LogIndex(last),
    });
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

/// A successful AppendEntries reply.
pub fn ae_ok(from: u64, to: u64, term: u64, match_index: u64) -> Message<u64> {
    let body = Body::AppendEntriesReply(AppendEntriesReply::Success {
        match_index: LogIndex(match_index),
    });
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

// ---------------------------------------------------------------------------------------------
// Reading actions.

/// The messages among `actions`, in order.
pub fn sends(actions: &[Action<u64>]) -> Vec<&Message<u64>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// The AppendEntries among `actions` addressed to `to`.
pub fn appends_to(actions: &[Action<u64>], to: u64) -> Vec<&AppendEntries<u64>> {
    sends(actions)
        .into_iter()
        .filter(|m| m.to == NodeId(to))
        .filter_map(|m| match &m.body {
            Body::AppendEntries(ae) => Some(ae),
            _ => None,
        })
        .collect()
}

/// The `ChangeDone` results among `actions`.
pub fn changes_done(actions: &[Action<u64>]) -> Vec<Result<Configuration, Error>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ChangeDone(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// One line per action, as in etcd's and toydb's golden scripts:
/// `persist t3 vote=n1`, `n1->n2 t3 RequestVote last=i2@t2`, `apply i1..=i3`.
/// Notices are left out (they are for logs); read them with [`notices`].
pub fn trace(actions: &[Action<u64>]) -> Vec<String> {
    let protocol = actions.iter().filter(|a| !matches!(a, Action::Notice(_)));
    protocol.map(show_action).collect()
}

/// The notices among `actions`, in order.
pub fn notices(actions: &[Action<u64>]) -> Vec<Notice> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notice(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// The AppendEntries traffic between `a` and `b` among `msgs`, as trace lines.
pub fn replication_trace(msgs: &[Message<u64>], a: u64, b: u64) -> Vec<String> {
    let ends = |m: &Message<u64>| (m.from.0, m.to.0) == (a, b) || (m.from.0, m.to.0) == (b, a);
    let is_append =
        |m: &Message<u64>| matches!(m.body, Body::AppendEntries(_) | Body::AppendEntriesReply(_));
    msgs.iter().filter(|m| ends(m) && is_append(m)).map(show_message).collect()
}

/// The prevLogIndex of each AppendEntries to `to` among `msgs`.
pub fn append_prevs(msgs: &[Message<u64>], to: u64) -> Vec<u64> {
    msgs.iter()
        .filter(|m| m.to == NodeId(to))
        .filter_map(|m| match &m.body {
            Body::AppendEntries(ae) => Some(ae.prev_log_index.0),
            _ => None,
        })
        .collect()
}

/// The trace of the messages among `actions` only.
pub fn sent(actions: &[Action<u64>]) -> Vec<String> {
    sends(actions).into_iter().map(show_message).collect()
}

fn show_action(action: &Action<u64>) -> String {
    match action {
        Action::PersistHardState(hs) => {
            let vote = hs.voted_for.map_or("-".to_string(), |v| v.to_string());
            format!("persist {} vote={vote}", hs.term)
        }
        Action::PersistEntries { from } => format!("persist log from {from}"),
        Action::Send(m) => show_message(m),
        Action::Proposed { first, term, count } => format!("proposed {first} x{count} {term}"),
        Action::Rejected(e) => format!("rejected {e:?}"),
        Action::Apply { from, to } => format!("apply {from}..={to}"),
        Action::ChangeDone(Ok(c)) => format!("change done {}", show_config(c)),
        Action::ChangeDone(Err(e)) => format!("change failed {e:?}"),
        Action::TransferDone(Ok(to)) => format!("transfer done: {to} leads"),
        Action::TransferDone(Err(e)) => format!("transfer failed {e:?}"),
        Action::Notice(n) => format!("notice: {n}"),
        Action::TakeSnapshot(meta) => format!("take snapshot {}@{}", meta.index, meta.term),
        Action::PersistSnapshot(s) => format!("persist snapshot {}@{}", s.meta.index, s.meta.term),
        Action::Restore(s) => format!("restore snapshot {}@{}", s.meta.index, s.meta.term),
        Action::ReadReady { ids, index, path } => {
            let ids: Vec<u64> = ids.iter().map(|id| id.0).collect();
            format!("read ready {ids:?} at {index} by {path:?}")
        }
        Action::ReadFailed { ids, error } => {
            let ids: Vec<u64> = ids.iter().map(|id| id.0).collect();
            format!("read failed {ids:?}: {error:?}")
        }
    }
}

pub fn show_message(m: &Message<u64>) -> String {
    let mut s = format!("{}->{} {} ", m.from, m.to, m.term);
    match &m.body {
        Body::RequestVote(rv) => {
            let _ = write!(s, "RequestVote last={}@{}", rv.last_log_index, rv.last_log_term);
            if rv.pre_vote {
                s.push_str(" pre");
            }
            if rv.transfer {
                s.push_str(" transfer");
            }
        }
        Body::RequestVoteReply(r) => {
            s.push_str(if r.granted {
                "RequestVoteReply granted"
            } else {
                "RequestVoteReply denied"
            });
            if r.pre_vote {
                s.push_str(" pre");
            }
        }
        Body::AppendEntries(ae) => {
            let entries: Vec<String> = ae.entries.iter().map(show_entry).collect();
            let _ = write!(
                s,
                "AppendEntries prev={}@{} entries=[{}] commit={}",
                ae.prev_log_index,
                ae.prev_log_term,
                entries.join(" "),
                ae.leader_commit
            );
        }
        Body::AppendEntriesReply(AppendEntriesReply::Success { match_index }) => {
            let _ = write!(s, "AppendEntriesReply ok match={match_index}");
        }
        Body::AppendEntriesReply(AppendEntriesReply::Reject {
            rejected_index,
            conflict,
            last_index,
        }) => {
            let conflict = conflict.map_or("-".to_string(), |(t, i)| format!("{t}@{i}"));
            let _ = write!(
                s,
                "AppendEntriesReply reject at={rejected_index} conflict={conflict} last={last_index}"
            );
        }
        Body::TimeoutNow => s.push_str("TimeoutNow"),
        Body::ReadConfirm(r) => {
            let _ = write!(s, "ReadConfirm round={}", r.round);
        }
        Body::ReadConfirmReply(r) => {
            let _ = write!(s, "ReadConfirmReply round={}", r.round);
        }
        Body::ReadIndex(r) => {
            let _ = write!(s, "ReadIndex ids={:?}", r.ids);
        }
        Body::ReadIndexByRound(r) => {
            let _ = write!(s, "ReadIndexByRound ids={:?}", r.ids);
        }
        Body::ReadIndexReply(r) => {
            let _ = write!(s, "ReadIndexReply ids={:?} index={:?}", r.ids, r.index);
        }
        Body::InstallSnapshot(c) => {
            let _ = write!(
                s,
                "InstallSnapshot {}@{} at={} +{}",
                c.meta.index,
                c.meta.term,
                c.offset,
                c.data.len()
            );
            if c.done {
                s.push_str(" done");
            }
        }
        Body::InstallSnapshotReply(r) => {
            let _ = write!(s, "SnapshotReply {} received={} done={}", r.index, r.received, r.done);
        }
    }
    s
}

fn show_entry(e: &Entry<u64>) -> String {
    match &e.payload {
        Payload::Noop => format!("{}:noop", e.term),
        Payload::Command(c) => format!("{}:{c}", e.term),
        Payload::Config(c) => format!("{}:{}", e.term, show_config(c)),
    }
}

fn show_config(c: &Configuration) -> String {
    let ids = |set: &BTreeSet<NodeId>| set.iter().map(|n| n.0.to_string()).collect::<Vec<_>>();
    format!("voters={:?} learners={:?}", ids(&c.voters), ids(&c.learners))
}

// ---------------------------------------------------------------------------------------------
// A network of nodes, driven by hand: deliver, hold, drop, reorder, crash, restart.

pub struct Net {
    nodes: Vec<Node>,
    /// Messages in flight, oldest first.
    pub queue: VecDeque<Message<u64>>,
    down: BTreeSet<u64>,
    cut: BTreeSet<(u64, u64)>,
}

impl Net {
    /// Nodes 1..=n, all voters, empty logs, [`test_config`].
    pub fn new(n: u64) -> Self {
        Self::with_config(n, test_config())
    }

    pub fn with_config(n: u64, config: Config) -> Self {
        let voters: Vec<u64> = (1..=n).collect();
        Self::of((1..=n).map(|i| boot(i).voters(&voters).config(config.clone()).start()))
    }

    /// Nodes with ids 1, 2, .. in order.
    pub fn of(nodes: impl IntoIterator<Item = Node>) -> Self {
        let nodes: Vec<Node> = nodes.into_iter().collect();
        for (i, n) in nodes.iter().enumerate() {
            assert_eq!(n.id(), NodeId(i as u64 + 1), "Net::of wants ids 1, 2, .. in order");
        }
        Net { nodes, queue: VecDeque::new(), down: BTreeSet::new(), cut: BTreeSet::new() }
    }

    pub fn with_bugs(mut self, bugs: Bugs) -> Self {
        self.nodes.iter_mut().for_each(|n| n.set_bugs(bugs));
        self
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn ids(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64).filter(|id| !self.down.contains(id)).collect()
    }

    /// Steps a live node; its messages go into the queue.
    pub fn step(&mut self, id: u64, input: Input<u64>) -> Vec<Action<u64>> {
        assert!(!self.down.contains(&id), "n{id} is down");
        let actions = self.node_mut(id).step(input);
        self.queue.extend(sends(&actions).into_iter().cloned());
        actions
    }

    pub fn campaign(&mut self, id: u64) -> Vec<Action<u64>> {
        self.step(id, Input::Campaign)
    }

    pub fn propose(&mut self, id: u64, commands: &[u64]) -> Vec<Action<u64>> {
        self.step(id, Input::Propose(commands.to_vec()))
    }

    /// `id` campaigns and everything is delivered; it must win.
    pub fn elect(&mut self, id: u64) {
        self.campaign(id);
        self.deliver_all();
        assert_eq!(self.leader(), Some(id), "n{id} should have won");
    }

    /// Delivers one message now (if its link is up); the receiver's replies are queued.
    pub fn deliver(&mut self, m: Message<u64>) -> Vec<Action<u64>> {
        let (from, to) = (m.from.0, m.to.0);
        if self.down.contains(&to) || self.down.contains(&from) || self.is_cut(from, to) {
            return Vec::new();
        }
        self.step(to, Input::Receive(m))
    }

    /// Delivers the oldest message in flight.
    pub fn deliver_next(&mut self) -> Option<Message<u64>> {
        let m = self.queue.pop_front()?;
        self.deliver(m.clone());
        Some(m)
    }

    /// Delivers messages, oldest first, until none is in flight; returns them in order.
    pub fn deliver_all(&mut self) -> Vec<Message<u64>> {
        self.deliver_until(|_| false)
    }

    /// Delivers messages one by one until `stop` holds after a delivery or none is left.
    pub fn deliver_until(&mut self, stop: impl Fn(&Net) -> bool) -> Vec<Message<u64>> {
        let mut delivered = Vec::new();
        while let Some(m) = self.deliver_next() {
            delivered.push(m);
            assert!(delivered.len() < 100_000, "the network never went quiet");
            if stop(self) {
                break;
            }
        }
        delivered
    }

    /// Removes the messages in flight that match `pick` and returns them (to drop, reorder or
    /// duplicate).
    pub fn take(&mut self, pick: impl Fn(&Message<u64>) -> bool) -> Vec<Message<u64>> {
        let (taken, kept): (Vec<_>, Vec<_>) = self.queue.drain(..).partition(|m| pick(m));
        self.queue = kept.into();
        taken
    }

    /// `n` ticks of one node; its messages are queued.
    pub fn tick(&mut self, id: u64, n: u64) -> Vec<Action<u64>> {
        (0..n).flat_map(|_| self.step(id, Input::Tick)).collect()
    }

    /// Time passes for every live node but all their messages are lost (no leader is up, or
    /// the network is down): followers stop treating their old leader as recent.
    pub fn pass_time_silently(&mut self, ticks: u64) {
        for id in self.ids() {
            self.node_mut(id).tick(ticks);
        }
    }

    /// `ticks` rounds of: every live node ticks once, then everything is delivered.
    pub fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            for id in self.ids() {
                self.step(id, Input::Tick);
            }
            self.deliver_all();
        }
    }

    /// The node stops; messages to and from it are lost.
    pub fn crash(&mut self, id: u64) {
        self.down.insert(id);
        self.queue.retain(|m| m.from.0 != id && m.to.0 != id);
    }

    /// The node restarts from its disk.
    pub fn restart(&mut self, id: u64) {
        self.down.remove(&id);
        self.node_mut(id).restart();
    }

    /// Messages between `a` and `b` are lost from now on.
    pub fn cut(&mut self, a: u64, b: u64) {
        self.cut.insert((a.min(b), a.max(b)));
    }

    /// Cuts `id` off from everyone.
    pub fn isolate(&mut self, id: u64) {
        for other in 1..=self.nodes.len() as u64 {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    fn is_cut(&self, a: u64, b: u64) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<u64> {
        self.ids()
            .into_iter()
            .filter(|&id| self.node(id).role() == Role::Leader)
            .max_by_key(|&id| self.node(id).term())
    }
}
