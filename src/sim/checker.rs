//! The safety checker: observes every step of every node and reports the FIRST violation of
//! Figure 3's properties (SP-1..SP-5) or of the extra oracles of the spec's section 2.
//!
//! It reads cores only through accessors and the step's actions; it never changes a run. It
//! assumes no fixed membership: each property is about logs, terms, votes and commits, never
//! about quorum sizes.
//!
//! Logs are tracked incrementally. Every log change reaches the driver as
//! `Action::PersistEntries { from }`, so the checker keeps a shadow of each node's log as a
//! vector of *prefix hashes* (`h(i) = H(h(i-1), term(i), payload(i))`) and re-hashes only from
//! `from`. Equal prefix hashes mean equal logs up to that index, which makes Log Matching one
//! map lookup per new entry: the first time `(index, term)` is seen its prefix hash is stored,
//! and any later log holding `(index, term)` must carry the same hash.

use std::any::Any;
use std::collections::btree_map::Entry as MapEntry;
use std::collections::BTreeMap;
use std::fmt::{self, Debug, Write as _};
use std::hash::Hasher;

use super::trace::Fnv;
use crate::core::{Action, Core, Notice, Role, OVERWRITES_COMMITTED};
use crate::kv::KvCommand;
use crate::message::{Body, Entry, Payload, Snapshot};
use crate::storage::PersistentState;
use crate::types::{LogIndex, NodeId, Term};

/// Which property a run broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// SP-1: at most one leader per term, over the whole run.
    ElectionSafety,
    /// SP-2: a leader never overwrites or deletes entries of its log.
    LeaderAppendOnly,
    /// SP-3: logs agreeing on (index, term) agree on every entry up to index.
    LogMatching,
    /// SP-4: an entry committed in term T is in the log of every leader of a later term.
    LeaderCompleteness,
    /// SP-5: no two nodes apply different entries at one index; applies are consecutive.
    StateMachineSafety,
    /// Two nodes committed different entries at one index.
    CommitAgreement,
    /// ALL-1: only committed entries are applied.
    ApplyCommitted,
    /// ST-P1: a node's term never decreases, across restarts too.
    TermMonotonic,
    /// ST-P2: at most one vote granted per (node, term), across restarts too.
    SingleVote,
    /// ST-V1: the commit index never decreases within an incarnation (nor passes the log).
    CommitMonotonic,
    /// SUB-8: a restarted node's log is what it had persisted, and every log change is
    /// persisted in the step that makes it.
    Durability,
    /// AE-3 / SP-4: a log that held a committed entry keeps it, in this incarnation or after
    /// any number of restarts (commit agreement across incarnations).
    CommittedEntryKept,
    /// U1: a leader appends a batch only while its uncommitted log has room
    /// (`Config::max_uncommitted_bytes`), or holds nothing uncommitted: its log cannot grow
    /// without bound while it cannot commit.
    UncommittedWithinCap,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::ElectionSafety => "SP-1 Election Safety",
            Rule::LeaderAppendOnly => "SP-2 Leader Append-Only",
            Rule::LogMatching => "SP-3 Log Matching",
            Rule::LeaderCompleteness => "SP-4 Leader Completeness",
            Rule::StateMachineSafety => "SP-5 State Machine Safety",
            Rule::CommitAgreement => "commit agreement (SP-3/SP-5)",
            Rule::ApplyCommitted => "ALL-1 apply only committed entries",
            Rule::TermMonotonic => "ST-P1 term never decreases",
            Rule::SingleVote => "ST-P2 one vote per term",
            Rule::CommitMonotonic => "ST-V1 commit index never decreases",
            Rule::Durability => "SUB-8 durability",
            Rule::CommittedEntryKept => "AE-3/SP-4 committed entries are never removed",
            Rule::UncommittedWithinCap => "U1 a leader's uncommitted log stays within its cap",
        })
    }
}

/// A broken property: which, where, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The property.
    pub rule: Rule,
    /// The node whose step revealed it.
    pub node: NodeId,
    /// What was observed, in words.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated at {}: {}", self.rule, self.node, self.detail)
    }
}

impl std::error::Error for Violation {}

/// What the checker remembers about one node.
#[derive(Clone, Debug, Default)]
struct NodeView {
    /// `(term, prefix hash)` of each log entry, index 1 first. Survives crashes, like the log.
    log: Vec<(Term, u64)>,
    /// The highest term ever observed, across incarnations.
    max_term: Term,
    /// `Some(t)` while the node was last seen leading term `t`.
    leader_of: Option<Term>,
    /// This incarnation's commit index and last applied index.
    commit: LogIndex,
    applied: LogIndex,
    /// Whether the node booted before (so a start is a restart).
    booted: bool,
    /// Lossy storage only: the log's length at the node's last sync, the lowest index written
    /// since (a crash may lose or tear what follows), and the term at the last sync.
    synced_len: usize,
    unsynced_from: Option<usize>,
    synced_term: Term,
}

impl NodeView {
    /// How much of the shadow log a crash cannot lose: what was synced and not rewritten since.
    fn durable_len(&self) -> usize {
        let kept = self.unsynced_from.map_or(usize::MAX, |from| from.saturating_sub(1));
        self.synced_len.min(kept).min(self.log.len())
    }
}

/// An entry known committed: its prefix hash, its term, and the lowest term of a node that
/// observed it committed (an upper bound on the term in which it was committed).
#[derive(Clone, Copy, Debug)]
struct Committed {
    prefix: u64,
    term: Term,
    commit_term: Term,
}

/// Facts shared by all nodes.
#[derive(Debug, Default)]
struct Global {
    leaders: BTreeMap<Term, NodeId>,
    votes: BTreeMap<(NodeId, Term), NodeId>,
    /// Prefix hash of the first log seen holding `(index, term)`.
    entries: BTreeMap<(LogIndex, Term), u64>,
    /// Committed entries, index 1 first.
    committed: Vec<Committed>,
    /// Prefix hash of the entry applied at each index, index 1 first.
    applied: Vec<u64>,
    /// Hash of the bytes of the first snapshot seen at each index.
    snapshots: BTreeMap<LogIndex, u64>,
    /// Storage that loses unsynced writes in a crash (`SimConfig::storage_faults`): the
    /// durability rule then asks only for what was synced, and a vote counts for good once
    /// synced or revealed (before that a crash may legally forget it).
    lossy: bool,
    /// Votes a crash may still forget: neither synced nor sent.
    tentative: std::collections::BTreeSet<(NodeId, Term)>,
}

/// Observes cores step by step; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    nodes: BTreeMap<NodeId, NodeView>,
    global: Global,
}

type Check = Result<(), Violation>;

fn fail(rule: Rule, node: NodeId, detail: String) -> Check {
    Err(Violation { rule, node, detail })
}

impl Checker {
    /// An empty checker.
    pub fn new() -> Self {
        Checker::default()
    }

    /// The run's storage loses unsynced writes in a crash: see `Global::lossy`. The simulator
    /// then reports syncs ([`Checker::node_synced`]) and sent messages
    /// ([`Checker::message_sent`]).
    pub fn set_lossy_storage(&mut self, lossy: bool) {
        self.global.lossy = lossy;
    }

    /// Everything `id` wrote so far is durable.
    pub fn node_synced(&mut self, id: NodeId) {
        if let Some(view) = self.nodes.get_mut(&id) {
            view.synced_len = view.log.len();
            view.unsynced_from = None;
            view.synced_term = view.max_term;
        }
        self.global.tentative.retain(|&(voter, _)| voter != id);
    }

    /// A message left its node: a vote it reveals is one the node must keep. Any message
    /// but a pre-vote's reveals the sender's term, and with it the vote it cast for itself
    /// as a candidate or leader of that term (an AppendEntries from a leader elected within
    /// one step, say): the checker then holds the node to both, whatever its storage lost.
    pub fn message_sent<C>(&mut self, msg: &crate::message::Message<C>) {
        let key = (msg.from, msg.term);
        if let Some(&candidate) = self.global.votes.get(&key) {
            if reveals_vote(msg, candidate) {
                self.global.tentative.remove(&key);
            }
        }
    }

    /// A write (or a sync) of `id` failed in its last step
    /// ([`Fault::FailStorage`](super::Fault::FailStorage)), which sent `sent` (what it ran
    /// before the failure, or all of it for a driver that steps on past the failure, a
    /// test-only bug), and its storage now holds `held`: nothing of a failed hard-state or
    /// snapshot write, a prefix of a failed append's entries.
    ///
    /// The shadow log (what was persisted) becomes the storage's: a failed install leaves the
    /// old snapshot and log, not the installed ones, a failed append a prefix of its entries.
    /// A node that stops there restarts with exactly that log; one that runs on holds entries
    /// it never persisted, which its next step shows (SUB-8).
    ///
    /// A vote of `id` that `held` lacks (in a later term, or another candidate in its term)
    /// was never persisted, and the driver reveals nothing before it persists it: unless
    /// `sent` reveals it, the checker forgets it (and a leadership resting on it, as at a
    /// crash with lossy storage), so the restarted node may vote again in that term. So does
    /// the term: the node is held only to `held`'s term, or one `sent` reveals.
    pub fn write_failed<C: Debug + 'static>(
        &mut self,
        id: NodeId,
        held: &PersistentState<C>,
        sent: &[crate::message::Message<C>],
    ) {
        let Some(view) = self.nodes.get_mut(&id) else { return };
        let g = &mut self.global;
        let offset = held.log_offset.0 as usize;
        // NB: a compacted prefix is committed: the shadow keeps its hashes, or (after an
        // install it now loses) holds the committed chain through them.
        let base = match view.log.get(..offset) {
            Some(base) => base.to_vec(),
            None => g.committed[..offset].iter().map(|c| (c.term, c.prefix)).collect(),
        };
        let mut log = base;
        let mut prev = log.last().map_or(0, |e| e.1);
        for entry in &held.entries {
            prev = prefix_hash(prev, entry);
            log.push((entry.term, prev));
        }
        let same = first_difference(&view.log, &log) as usize - 1;
        view.synced_len = view.synced_len.min(same);
        view.log = log;

        let hs = held.hard_state;
        let revealed = |term: Term, candidate: NodeId| {
            sent.iter().any(|m| m.from == id && m.term == term && reveals_vote(m, candidate))
        };
        let unheld: Vec<_> = g
            .votes
            .range((id, hs.term)..=(id, Term(u64::MAX)))
            .filter(|&(&(_, term), &candidate)| term > hs.term || hs.voted_for != Some(candidate))
            .filter(|&(&(_, term), &candidate)| !revealed(term, candidate))
            .map(|(&key, _)| key)
            .collect();
        for key @ (_, term) in unheld {
            forget_vote(g, key);
            if view.leader_of == Some(term) && !g.leaders.contains_key(&term) {
                view.leader_of = None;
            }
        }
        let revealed_term =
            sent.iter().filter(|m| m.from == id && !is_pre_vote(m)).map(|m| m.term).max();
        let term = revealed_term.map_or(hs.term, |t| t.max(hs.term));
        view.max_term = view.max_term.min(term);
        view.synced_term = view.synced_term.min(term);
    }

    /// With lossy storage: a write or a sync of `id` failed in its last step, and `durable`
    /// is what its storage holds durable now, which a crash cannot lose. What the shadow
    /// counted synced is cut back to the prefix `durable` shares with it: a failed sync made
    /// nothing durable, and one after a snapshot install leaves the old log, not the
    /// installed one, on disk (the shadow counted an install durable at once, as the driver
    /// syncs it in the same action).
    pub fn sync_failed<C: Debug + 'static>(&mut self, id: NodeId, durable: &PersistentState<C>) {
        let Some(view) = self.nodes.get_mut(&id) else { return };
        let offset = durable.log_offset.0 as usize;
        // NB: a compacted prefix is committed, so the shadow holds the same entries there.
        let mut common = offset.min(view.log.len());
        let mut prev = common.checked_sub(1).map_or(0, |i| view.log[i].1);
        if common == offset {
            for entry in &durable.entries {
                prev = prefix_hash(prev, entry);
                if view.log.get(common) != Some(&(entry.term, prev)) {
                    break;
                }
                common += 1;
            }
        }
        view.synced_len = view.synced_len.min(common);
    }

    /// A node started: first boot, or a restart that must find exactly its persisted log
    /// (with lossy storage: at least what it had synced).
    pub fn node_started<C: Clone + Debug + 'static>(
        &mut self,
        core: &Core<C>,
    ) -> Result<(), Violation> {
        let id = core.id();
        let lossy = self.global.lossy;
        let view = self.nodes.entry(id).or_default();
        // NB: the shadow keeps the hashes of entries a snapshot compacted away; a node restarts
        // with its log after the snapshot only.
        let offset = core.log().offset().0 as usize;
        let mut log = view.log.clone();
        log.truncate(offset);
        if log.len() < offset {
            return fail(
                Rule::Durability,
                id,
                format!("restarted from an unknown snapshot at i{offset}"),
            );
        }
        let mut shadow = NodeView { log, ..NodeView::default() };
        rehash_from(&mut shadow, core, LogIndex(offset as u64 + 1));
        let log = shadow.log;
        if view.booted && lossy {
            let keep = view.durable_len().max(offset.min(view.log.len()));
            if log.len() < keep || log[..keep] != view.log[..keep] {
                let d = first_difference(&view.log[..keep], &log);
                let detail =
                    format!("restarted log lost synced entry i{d} (synced through i{keep})");
                return fail(Rule::Durability, id, detail);
            }
            if core.term() < view.synced_term {
                let detail =
                    format!("restarted in {} after syncing term {}", core.term(), view.synced_term);
                return fail(Rule::TermMonotonic, id, detail);
            }
            view.max_term = core.term();
        } else if view.booted && view.log != log {
            let d = first_difference(&view.log, &log);
            return fail(
                Rule::Durability,
                id,
                format!("restarted log differs from the log before the crash at i{d}"),
            );
        }
        view.log = log;
        view.synced_len = view.log.len();
        view.unsynced_from = None;
        view.booted = true;
        view.leader_of = None;
        view.commit = core.commit_index();
        view.applied = core.last_applied();
        check_term(view, id, core.term())?;
        view.synced_term = view.max_term;
        register_entries(&mut self.global, id, &view.log, offset as u64 + 1)
    }

    /// A node crashed: its volatile state is gone; the checker keeps its log shadow. With
    /// lossy storage its tentative votes go too (they were never revealed). So does a
    /// leadership that rested on one: a node elected within one step (the only voter) whose
    /// term and vote were neither synced nor revealed was leader only in memory, and every
    /// entry of that term is its own and went with them, so another node may still lead the
    /// term (found by the soak: nemesis seed 1903719).
    pub fn node_crashed(&mut self, id: NodeId) {
        if let Some(view) = self.nodes.get_mut(&id) {
            view.leader_of = None;
        }
        let g = &mut self.global;
        let forgotten: Vec<_> = g.tentative.iter().filter(|(v, _)| *v == id).copied().collect();
        for key in forgotten {
            forget_vote(g, key);
        }
    }

    /// Checks everything one step of `core` (which produced `actions`) could have broken.
    pub fn after_step<C: Clone + Debug + 'static>(
        &mut self,
        core: &Core<C>,
        actions: &[Action<C>],
    ) -> Result<(), Violation> {
        let id = core.id();
        let view = self.nodes.get_mut(&id).expect("node_started is called before any step");
        let g = &mut self.global;
        let was_leader_of = view.leader_of;
        check_log_change(g, view, core, actions, was_leader_of)?;
        check_term(view, id, core.term())?;
        check_leadership(g, view, core, was_leader_of)?;
        check_votes(g, id, actions)?;
        let committed_before = g.committed.len();
        check_commit(g, view, core)?;
        check_applies(g, view, core, actions)?;
        if g.committed.len() > committed_before {
            self.check_leaders_complete()?;
        }
        check_uncommitted_cap(core, actions)?;
        // NB: last, once the shadows have taken in this step.
        check_no_committed_overwrite(id, actions)
    }

    /// SP-4 at every commit advance: each node leading now holds every entry committed in an
    /// earlier term than its own, not only at the moment it was elected.
    fn check_leaders_complete(&self) -> Check {
        for (&id, view) in &self.nodes {
            if let Some(term) = view.leader_of {
                check_completeness(&self.global, view, id, term)?;
            }
        }
        Ok(())
    }
}

/// U1: each batch a leader appended (`Action::Proposed`) found its uncommitted log empty or
/// with room for it. Recomputed from the log, independently of the core's own count: the
/// entries between the commit index (after the step: it never falls, so this counts no more
/// than the leader held) and the batch, against `Config::max_uncommitted_bytes`.
fn check_uncommitted_cap<C: Clone>(core: &Core<C>, actions: &[Action<C>]) -> Check {
    for action in actions {
        let Action::Proposed { first, term, count } = *action else { continue };
        if core.role() != Role::Leader || core.term() != term {
            continue; // it stepped down later in the step: its log may have changed since
        }
        let log = core.log();
        let bytes = |from: LogIndex, n: u64| {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            log.entries_from(from, n).iter().map(|e| core.entry_bytes(e)).sum::<usize>()
        };
        let commit = core.commit_index();
        let held = bytes(commit.next(), first.0.saturating_sub(commit.0 + 1));
        let batch = bytes(first, count as u64);
        let max = core.max_uncommitted_bytes();
        if held > 0 && held + batch > max {
            let detail = format!(
                "appended {count} commands ({batch} bytes) at {first} holding {held} uncommitted bytes (max {max})"
            );
            return fail(Rule::UncommittedWithinCap, core.id(), detail);
        }
    }
    Ok(())
}

/// AE-3/SP-4 at the gateway: a node asked to replace a committed entry refuses it with a
/// notice, so the log checks never see the attempt; but no correct peer makes one (nor does a
/// correct node replay one), so the refusal is the violation.
fn check_no_committed_overwrite<C>(id: NodeId, actions: &[Action<C>]) -> Check {
    for action in actions {
        if let Action::Notice(Notice::InvalidMessage { from, reason }) = action {
            if *reason == OVERWRITES_COMMITTED {
                let detail = format!("refused an AppendEntries from {from}: {reason}");
                return fail(Rule::CommittedEntryKept, id, detail);
            }
        }
    }
    Ok(())
}

/// Whether `msg` (from the voter, in the vote's term) reveals that its sender voted for
/// `candidate` in that term: a granted (real) vote for it, or, for a vote of its own, any
/// message but a pre-vote's (its term and candidacy or leadership).
fn reveals_vote<C>(msg: &crate::message::Message<C>, candidate: NodeId) -> bool {
    match &msg.body {
        Body::RequestVoteReply(r) if r.granted && !r.pre_vote => msg.to == candidate,
        _ => candidate == msg.from && !is_pre_vote(msg),
    }
}

/// A pre-vote request or reply: it does not reveal the sender's term.
fn is_pre_vote<C>(msg: &crate::message::Message<C>) -> bool {
    match &msg.body {
        Body::RequestVote(rv) => rv.pre_vote,
        Body::RequestVoteReply(r) => r.pre_vote,
        _ => false,
    }
}

/// Forgets `voter`'s vote in `term`, which it never revealed nor persisted, and a leadership
/// of that term resting on it: it was leader only in memory, and every entry of that term is
/// its own and went with it, so another node may still lead the term.
fn forget_vote(g: &mut Global, (voter, term): (NodeId, Term)) {
    g.tentative.remove(&(voter, term));
    g.votes.remove(&(voter, term));
    if g.leaders.get(&term) == Some(&voter) {
        g.leaders.remove(&term);
        g.entries.retain(|&(_, entry_term), _| entry_term != term);
    }
}

/// SP-2, SP-3 and durability: re-hash the log from the persisted index on, then check the
/// shadow (what was persisted) ends where the core's log does.
fn check_log_change<C: Clone + Debug + 'static>(
    g: &mut Global,
    view: &mut NodeView,
    core: &Core<C>,
    actions: &[Action<C>],
    was_leader_of: Option<Term>,
) -> Check {
    for action in actions {
        match action {
            Action::PersistSnapshot(snapshot) => check_snapshot(g, core.id(), snapshot)?,
            Action::Restore(snapshot) => install_shadow(g, view, core, snapshot)?,
            _ => {}
        }
    }
    let from = actions.iter().find_map(|a| match a {
        Action::PersistEntries { from } => Some(*from),
        _ => None,
    });
    if let Some(from) = from {
        let from_slot = from.0 as usize;
        view.unsynced_from = Some(view.unsynced_from.map_or(from_slot, |f| f.min(from_slot)));
        check_append_only(view, core, from, was_leader_of)?;
        let held = committed_held(g, view, from);
        rehash_from(view, core, from);
        check_committed_kept(g, view, core.id(), core.term(), held)?;
        register_entries(g, core.id(), &view.log, from.0)?;
    }
    check_persisted(view, core)
}

/// The highest index at or after `from` up to which this log holds the committed chain
/// (committed entries share one chain of prefix hashes, so one match covers everything before).
fn committed_held(g: &Global, view: &NodeView, from: LogIndex) -> u64 {
    let top = view.log.len().min(g.committed.len());
    (from.0.max(1)..=top as u64)
        .rev()
        .find(|&i| view.log[i as usize - 1].1 == g.committed[i as usize - 1].prefix)
        .unwrap_or(0)
}

/// A log that held committed entries through `held` still holds them after a rewrite, unless
/// the rewrite came from a leader of a term no later than the one they were committed in.
///
/// A committed entry is in the log of every leader of a *later* term (SP-4), so a node in such
/// a term may never drop it. But a node that has not heard of that term (it was paused, or cut
/// off) may still take a stale AppendEntries from the leader of an earlier term that never had
/// the entry, and drop it legally, as long as it had not applied it. `commit_term` bounds the
/// entry's commit term from above, so only a node whose term reaches it is held to the rule.
fn check_committed_kept(g: &Global, view: &NodeView, id: NodeId, term: Term, held: u64) -> Check {
    if held == 0 {
        return Ok(());
    }
    // NB: prefix hashes chain, so once one index differs every later one does.
    let kept = |i: u64| {
        view.log.get(i as usize - 1).map(|e| e.1) == Some(g.committed[i as usize - 1].prefix)
    };
    if kept(held) {
        return Ok(());
    }
    let first_lost = (1..=held).find(|&i| !kept(i)).unwrap_or(held);
    let Some(i) = (first_lost..=held).find(|&i| g.committed[i as usize - 1].commit_term <= term)
    else {
        return Ok(()); // a stale leader's rewrite, before the commit's term
    };
    let c = g.committed[i as usize - 1];
    let detail = format!(
        "rewrote its log below committed i{i}@{} (known committed in {}) in {term}; its log now ends at i{}",
        c.term,
        c.commit_term,
        view.log.len()
    );
    fail(Rule::CommittedEntryKept, id, detail)
}

/// SP-2: a node that led this term before the step and still does only appends.
fn check_append_only<C: Clone>(
    view: &NodeView,
    core: &Core<C>,
    from: LogIndex,
    was_leader_of: Option<Term>,
) -> Check {
    let still_leader = core.role() == Role::Leader && was_leader_of == Some(core.term());
    if still_leader && from.0 <= view.log.len() as u64 {
        let (term, last) = (core.term(), view.log.len());
        let detail = format!("leader of {term} rewrote its log from {from} (last was i{last})");
        return fail(Rule::LeaderAppendOnly, core.id(), detail);
    }
    Ok(())
}

/// Every log change is persisted in the step that makes it (`PersistEntries`).
fn check_persisted<C: Clone>(view: &NodeView, core: &Core<C>) -> Check {
    let shadow = (LogIndex(view.log.len() as u64), view.log.last().map_or(Term(0), |e| e.0));
    let (last, term) = (core.log().last_index(), core.log().last_term());
    if shadow != (last, term) {
        let detail = format!(
            "log ends at {last}@{term} but the persisted log ends at {}@{}",
            shadow.0, shadow.1
        );
        return fail(Rule::Durability, core.id(), detail);
    }
    Ok(())
}

/// Every snapshot of index `i`, whoever took or installed it, holds the same bytes: the state
/// machine after applying the committed log through `i` (SP-5 for snapshots).
fn check_snapshot(g: &mut Global, id: NodeId, snapshot: &Snapshot) -> Check {
    let mut h = Fnv::default();
    h.write(&snapshot.data);
    let hash = h.finish();
    let first = *g.snapshots.entry(snapshot.meta.index).or_insert(hash);
    if first != hash {
        let detail =
            format!("snapshot through {} differs from another node's", snapshot.meta.index);
        return fail(Rule::StateMachineSafety, id, detail);
    }
    Ok(())
}

/// A follower installed `snapshot`: its log through the snapshot's index is now the committed
/// log (which must hold the snapshot's last entry), followed by whatever it kept.
fn install_shadow<C: Clone + Debug + 'static>(
    g: &mut Global,
    view: &mut NodeView,
    core: &Core<C>,
    snapshot: &Snapshot,
) -> Check {
    let (id, index) = (core.id(), snapshot.meta.index);
    let pos = index.0 as usize;
    match g.committed.get(pos.wrapping_sub(1)) {
        Some(c) if c.term == snapshot.meta.term => {}
        _ => {
            let detail = format!(
                "installed a snapshot through {index}@{} that is not the committed entry there",
                snapshot.meta.term
            );
            return fail(Rule::StateMachineSafety, id, detail);
        }
    }
    view.log = g.committed[..pos].iter().map(|c| (c.term, c.prefix)).collect();
    rehash_from(view, core, index.next());
    register_entries(g, id, &view.log, index.0 + 1)
}

/// Replaces the shadow from `from` onward with hashes of the core's log.
fn rehash_from<C: Clone + Debug + 'static>(view: &mut NodeView, core: &Core<C>, from: LogIndex) {
    assert!(from > core.log().offset(), "compacted entries never change");
    view.log.truncate(from.0.saturating_sub(1) as usize);
    let mut prev = view.log.last().map_or(0, |e| e.1);
    for entry in core.log().entries_from(from, usize::MAX) {
        prev = prefix_hash(prev, entry);
        view.log.push((entry.term, prev));
    }
}

/// SP-3: the first log holding `(index, term)` fixes the prefix every later one must have.
fn register_entries(g: &mut Global, id: NodeId, log: &[(Term, u64)], from: u64) -> Check {
    for (i, &(term, prefix)) in log.iter().enumerate().skip(from.saturating_sub(1) as usize) {
        let index = LogIndex(i as u64 + 1);
        match g.entries.entry((index, term)) {
            MapEntry::Vacant(v) => {
                v.insert(prefix);
            }
            MapEntry::Occupied(o) if *o.get() != prefix => {
                let detail = format!("log holds {index}@{term} but differs from an earlier log holding {index}@{term} at or before {index}");
                return fail(Rule::LogMatching, id, detail);
            }
            MapEntry::Occupied(_) => {}
        }
    }
    Ok(())
}

/// ST-P1 across restarts.
fn check_term(view: &mut NodeView, id: NodeId, term: Term) -> Check {
    if term < view.max_term {
        return fail(
            Rule::TermMonotonic,
            id,
            format!("term fell from {} to {term}", view.max_term),
        );
    }
    view.max_term = term;
    Ok(())
}

/// SP-1 over the whole run, and SP-4 for each new leader.
fn check_leadership<C: Clone>(
    g: &mut Global,
    view: &mut NodeView,
    core: &Core<C>,
    was_leader_of: Option<Term>,
) -> Check {
    let (id, term) = (core.id(), core.term());
    if matches!(core.role(), Role::Candidate | Role::Leader) {
        record_vote(g, id, term, id)?; // CAN-1(b): a candidate votes for itself
    }
    if core.role() != Role::Leader {
        view.leader_of = None;
        return Ok(());
    }
    let first = *g.leaders.entry(term).or_insert(id);
    if first != id {
        return fail(Rule::ElectionSafety, id, format!("{first} and {id} both led {term}"));
    }
    if was_leader_of != Some(term) {
        check_completeness(g, view, id, term)?;
    }
    view.leader_of = Some(term);
    Ok(())
}

/// SP-4: a new leader of `term` holds every entry committed in an earlier term. Committed
/// entries form one chain of prefix hashes, so checking the highest one suffices.
fn check_completeness(g: &Global, view: &NodeView, id: NodeId, term: Term) -> Check {
    let Some(pos) = g.committed.iter().rposition(|c| c.commit_term < term) else { return Ok(()) };
    let c = g.committed[pos];
    if view.log.get(pos).map(|e| e.1) != Some(c.prefix) {
        let index = LogIndex(pos as u64 + 1);
        let detail = format!(
            "new leader of {term} lacks committed {index}@{} (known committed in {}) or an entry before it; its log ends at i{}",
            c.term,
            c.commit_term,
            view.log.len()
        );
        return fail(Rule::LeaderCompleteness, id, detail);
    }
    Ok(())
}

/// ST-P2: one granted (real) vote per (node, term), across restarts.
fn check_votes<C>(g: &mut Global, id: NodeId, actions: &[Action<C>]) -> Check {
    for action in actions {
        let Action::Send(m) = action else { continue };
        let Body::RequestVoteReply(r) = &m.body else { continue };
        if r.granted && !r.pre_vote {
            record_vote(g, id, m.term, m.to)?;
        }
    }
    Ok(())
}

fn record_vote(g: &mut Global, voter: NodeId, term: Term, candidate: NodeId) -> Check {
    let first = match g.votes.entry((voter, term)) {
        MapEntry::Occupied(o) => *o.get(),
        MapEntry::Vacant(v) => {
            if g.lossy {
                g.tentative.insert((voter, term));
            }
            *v.insert(candidate)
        }
    };
    if first != candidate {
        return fail(
            Rule::SingleVote,
            voter,
            format!("voted for {first} and {candidate} in {term}"),
        );
    }
    Ok(())
}

/// ST-V1 within an incarnation, and agreement on every newly committed entry.
fn check_commit<C: Clone>(g: &mut Global, view: &mut NodeView, core: &Core<C>) -> Check {
    let (id, commit) = (core.id(), core.commit_index());
    if commit < view.commit {
        return fail(
            Rule::CommitMonotonic,
            id,
            format!("commit fell from {} to {commit}", view.commit),
        );
    }
    if commit.0 > view.log.len() as u64 {
        let detail = format!("commit {commit} is past the last entry i{}", view.log.len());
        return fail(Rule::CommitMonotonic, id, detail);
    }
    for i in view.commit.0 + 1..=commit.0 {
        let (term, prefix) = view.log[i as usize - 1];
        let seen = Committed { prefix, term, commit_term: core.term() };
        record_commit(g, id, LogIndex(i), seen)?;
    }
    view.commit = commit;
    Ok(())
}

fn record_commit(g: &mut Global, id: NodeId, index: LogIndex, seen: Committed) -> Check {
    let pos = index.0 as usize - 1;
    if let Some(c) = g.committed.get_mut(pos) {
        if c.prefix != seen.prefix {
            let detail = format!(
                "committed {index}@{} differs from committed {index}@{}",
                seen.term, c.term
            );
            return fail(Rule::CommitAgreement, id, detail);
        }
        c.commit_term = c.commit_term.min(seen.commit_term);
        return Ok(());
    }
    assert_eq!(pos, g.committed.len(), "commits are recorded in index order");
    g.committed.push(seen);
    Ok(())
}

/// SP-5 and ALL-1: consecutive applies of committed entries, the same everywhere.
fn check_applies<C: Clone>(
    g: &mut Global,
    view: &mut NodeView,
    core: &Core<C>,
    actions: &[Action<C>],
) -> Check {
    for action in actions {
        if let Action::Restore(snapshot) = action {
            // Installing a snapshot applies, at once, every entry through its index.
            for i in view.applied.0 + 1..=snapshot.meta.index.0 {
                record_apply(g, core.id(), LogIndex(i), view.log[i as usize - 1])?;
            }
            view.applied = view.applied.max(snapshot.meta.index);
            continue;
        }
        let Action::Apply { from, to } = *action else { continue };
        check_apply_range(view, core, from, to)?;
        for i in from.0..=to.0 {
            record_apply(g, core.id(), LogIndex(i), view.log[i as usize - 1])?;
        }
        view.applied = to;
    }
    Ok(())
}

/// Applies continue where this incarnation left off (SP-5) and stay within the commit (ALL-1).
fn check_apply_range<C: Clone>(
    view: &NodeView,
    core: &Core<C>,
    from: LogIndex,
    to: LogIndex,
) -> Check {
    let (id, commit) = (core.id(), core.commit_index());
    if from != view.applied.next() {
        let detail = format!("applied {from}..={to} after {}", view.applied);
        return fail(Rule::StateMachineSafety, id, detail);
    }
    if to > commit {
        return fail(Rule::ApplyCommitted, id, format!("applied up to {to} with commit {commit}"));
    }
    Ok(())
}

fn record_apply(g: &mut Global, id: NodeId, index: LogIndex, (term, prefix): (Term, u64)) -> Check {
    let pos = index.0 as usize - 1;
    match g.applied.get(pos) {
        Some(&first) if first != prefix => {
            fail(Rule::StateMachineSafety, id, format!("applied {index}@{term}, another node applied a different entry (or history) at {index}"))
        }
        Some(_) => Ok(()),
        None => {
            assert_eq!(pos, g.applied.len(), "applies are checked consecutive first");
            g.applied.push(prefix);
            Ok(())
        }
    }
}

/// `H(prev, term, payload)`; the payload is hashed through its `Debug` form, the one thing
/// every command type offers, except the simulator's own [`KvCommand`], whose strings are
/// hashed directly (its `Debug` text was most of the checker's cost). The hashes are compared
/// only with each other, never shown: any function that tells payloads apart serves.
fn prefix_hash<C: Debug + 'static>(prev: u64, entry: &Entry<C>) -> u64 {
    let mut h = Fnv::default();
    h.write_u64(prev);
    h.write_u64(entry.term.0);
    // NB: the text of `{:?}` of the payload, with the tuple builder's frame written directly
    // (it was a fifth of the hashing cost).
    match &entry.payload {
        Payload::Command(c) => match (c as &dyn Any).downcast_ref::<KvCommand>() {
            Some(kv) => {
                hash_kv(&mut h, kv);
                Ok(())
            }
            None => write!(h, "Command({c:?})"),
        },
        payload => write!(h, "{payload:?}"),
    }
    .expect("hashing never fails");
    h.finish()
}

/// A [`KvCommand`] into `h`: a marker word, its kind, then each string as its length and its
/// bytes, eight to a word (the lengths keep the form unambiguous).
fn hash_kv(h: &mut Fnv, command: &KvCommand) {
    let (kind, key, value) = match command {
        KvCommand::Put { key, value } => (1, key, Some(value)),
        KvCommand::Append { key, value } => (2, key, Some(value)),
        KvCommand::Get { key } => (3, key, None),
    };
    h.write_u64(u64::MAX);
    h.write_u64(kind);
    for s in std::iter::once(key).chain(value) {
        h.write_u64(s.len() as u64);
        let mut words = s.as_bytes().chunks_exact(8);
        for word in &mut words {
            h.write_u64(u64::from_le_bytes(word.try_into().expect("eight bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            h.write_u64(u64::from_le_bytes(last));
        }
    }
}

fn first_difference(a: &[(Term, u64)], b: &[(Term, u64)]) -> u64 {
    let same = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    same as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct form of a [`KvCommand`] tells apart what its `Debug` text tells apart:
    /// kinds, keys, values, and where a key ends and its value begins.
    #[test]
    fn kv_prefix_hashes_tell_commands_apart() {
        let entry = |payload| Entry { term: Term(1), payload };
        let put = |k: &str, v: &str| KvCommand::Put { key: k.into(), value: v.into() };
        let append = |k: &str, v: &str| KvCommand::Append { key: k.into(), value: v.into() };
        let payloads = [
            Payload::Command(put("k1", "c1-1;")),
            Payload::Command(put("k1", "c1-2;")),
            Payload::Command(put("k1c", "1-1;")),
            Payload::Command(append("k1", "c1-1;")),
            Payload::Command(put("k1", "c1-1;c1-1;c1-1;c1-1;")),
            Payload::Command(put("k1", "c1-1;c1-1;c1-1;c1-1")),
            Payload::Command(KvCommand::Get { key: "k1".into() }),
            Payload::Command(KvCommand::Get { key: "k2".into() }),
            Payload::Command(put("", "")),
            Payload::Noop,
        ];
        let hashes: Vec<u64> = payloads.into_iter().map(|p| prefix_hash(7, &entry(p))).collect();
        let distinct: std::collections::BTreeSet<_> = hashes.iter().collect();
        assert_eq!(distinct.len(), hashes.len(), "{hashes:x?}");
        assert_ne!(
            prefix_hash(7, &entry(Payload::Command(put("k1", "v")))),
            prefix_hash(8, &entry(Payload::Command(put("k1", "v")))),
        );
    }
}
