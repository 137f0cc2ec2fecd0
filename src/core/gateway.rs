//! The gateway every message passes: validation first, then the term rules (ALL-2, AE-1, RV-1,
//! SUB-5), then one handler per RPC.
//!
//! Validate once, trust inside: a message no correct peer sends (a misrouted one, one from a
//! buggy or malicious peer) is dropped here with `Notice::InvalidMessage` before it touches any
//! state. Past this point the handlers may assert on what a message says, because an assert can
//! then only fire on a state the core produced itself. Must not mutate anything while checking.

use super::{vote_reply, Core, Notice, ReadPolicy, Role, OVERWRITES_COMMITTED};
use crate::message::{
    AppendEntries, AppendEntriesReply, Body, InstallSnapshot, InstallSnapshotReply, Message,
    ReadIndex, ReadIndexReply,
};
use crate::storage::PersistentState;
use crate::types::{LogIndex, NodeId, Term, MARGIN};

/// Why a message was dropped: the text of `Notice::InvalidMessage`.
type Invalid = &'static str;

impl<C: Clone> Core<C> {
    /// Handles one message from a peer.
    pub(super) fn receive(&mut self, msg: Message<C>) {
        if let Err(reason) = self.check_message(&msg) {
            return self.notice(Notice::InvalidMessage { from: msg.from, reason });
        }
        if msg.term > self.term && !self.adopt_term(&msg) {
            return;
        }
        if msg.term < self.term {
            #[cfg(test)]
            if let (true, Body::AppendEntriesReply(r)) =
                (self.bugs.accept_stale_append_replies, &msg.body)
            {
                return self.handle_append_reply(msg.from, *r);
            }
            return self.receive_stale(msg);
        }
        match msg.body {
            Body::RequestVote(rv) => self.handle_request_vote(msg.from, msg.term, rv),
            Body::RequestVoteReply(r) => self.handle_vote_reply(msg.from, msg.term, r),
            Body::AppendEntries(ae) => self.handle_append_entries(msg.from, ae),
            Body::AppendEntriesReply(r) => self.handle_append_reply(msg.from, r),
            Body::TimeoutNow => self.campaign(true, true),
            Body::InstallSnapshot(chunk) => self.handle_install_snapshot(msg.from, chunk),
            Body::InstallSnapshotReply(r) => self.handle_snapshot_reply(msg.from, r),
            Body::ReadConfirm(r) => self.handle_read_confirm(msg.from, r),
            Body::ReadConfirmReply(r) => self.handle_read_confirm_reply(msg.from, r),
            Body::ReadIndex(r) => self.handle_read_index(msg.from, r, ReadPolicy::Lease),
            Body::ReadIndexByRound(r) => self.handle_read_index(msg.from, r, ReadPolicy::ReadIndex),
            Body::ReadIndexReply(r) => self.handle_read_index_reply(r),
        }
    }

    /// A message from a higher term. Returns whether to go on handling it.
    fn adopt_term(&mut self, msg: &Message<C>) -> bool {
        match &msg.body {
            // Thesis §4.2.3: ignore disruptive candidates while a leader is known to be alive.
            Body::RequestVote(rv) if !rv.transfer && self.leader_is_recent() => {
                if rv.pre_vote {
                    self.send(msg.from, vote_reply(false, true));
                }
                false
            }
            // A pre-vote request or a granted pre-vote reply changes no term (§9.6).
            Body::RequestVote(rv) if rv.pre_vote => true,
            Body::RequestVoteReply(r) if r.pre_vote && r.granted => true,
            Body::AppendEntries(_) | Body::InstallSnapshot(_) => {
                self.become_follower(msg.term, Some(msg.from));
                true
            }
            _ => {
                self.update_term(msg.term, None);
                true
            }
        }
    }

    /// AE-1 and RV-1: answer stale requests with our term so the sender steps down; drop stale
    /// replies (TLA `DropStaleResponse`).
    fn receive_stale(&mut self, msg: Message<C>) {
        match msg.body {
            Body::AppendEntries(ae) => {
                let reply = self.reject_reply(ae.prev_log_index);
                self.send(msg.from, Body::AppendEntriesReply(reply));
            }
            Body::RequestVote(rv) => self.send(msg.from, vote_reply(false, rv.pre_vote)),
            Body::InstallSnapshot(chunk) => {
                let reply =
                    InstallSnapshotReply { index: chunk.meta.index, received: 0, done: false };
                self.send(msg.from, Body::InstallSnapshotReply(reply));
            }
            // A stale follower learns our term from the refusal and fails its reads at once.
            Body::ReadIndex(r) | Body::ReadIndexByRound(r) => {
                let reply = ReadIndexReply { ids: r.ids, index: None };
                self.send(msg.from, Body::ReadIndexReply(reply));
            }
            _ => {}
        }
    }

    /// Whether a leader was heard from within the minimum election timeout (thesis §4.2.3).
    fn leader_is_recent(&self) -> bool {
        if self.role == Role::Leader {
            return true; // (a leader is its own, and always recent)
        }
        // NB: with leases, a node that may have acknowledged a leader's round (it forgot the
        // leader on a term change or a restart) keeps refusing for a whole timeout, or the
        // lease could be cut short (thesis §6.4.1). The timeout runs from the leader's last
        // message, not from this node's own campaigns: a pre-candidate that refused every
        // candidate for a minimum timeout after each of its own rounds left a cluster whose one
        // eligible candidate needs every other vote leaderless for seconds (NOTES.md, twenty-
        // fourth session; `Bugs::lease_refusal_from_own_campaign`).
        #[cfg(test)]
        if self.bugs.lease_refusal_from_own_campaign && self.timing.lease_ticks > 0 {
            return self.election_elapsed < self.timing.election_ticks.start;
        }
        let lease = self.timing.lease_ticks > 0;
        #[cfg(test)]
        let lease = lease && !self.bugs.lease_refusal_forgets_leader;
        let leader_known = self.leader.is_some() || lease;
        leader_known && self.now - self.leader_heard_at < self.timing.election_ticks.start
    }

    /// Everything a correct peer guarantees about a message, checked before any state changes.
    fn check_message(&self, msg: &Message<C>) -> Result<(), Invalid> {
        if msg.to != self.id {
            return Err("addressed to another node");
        }
        if msg.from == self.id {
            return Err("claims to come from this node");
        }
        if msg.term > Term(MARGIN) {
            return Err("term past the margin of the term space"); // our campaigns count on from it
        }
        let current = msg.term >= self.term; // otherwise only answered or dropped as stale
        match &msg.body {
            Body::AppendEntries(ae) => {
                check_append_shape(msg.term, ae)?;
                if current {
                    self.check_append_entries(msg.from, msg.term, ae)?;
                }
                Ok(())
            }
            Body::AppendEntriesReply(r) if msg.term == self.term && self.role == Role::Leader => {
                self.check_append_reply(msg.term, r)
            }
            Body::RequestVote(rv) if rv.last_log_term > msg.term => {
                Err("candidate's last log term ahead of its term")
            }
            Body::RequestVoteReply(r)
                if self.counts_vote(msg.term, r) && !self.config().voters.contains(&msg.from) =>
            {
                Err("vote from a non-voter")
            }
            Body::InstallSnapshot(chunk) => {
                check_snapshot_shape(msg.term, chunk)?;
                let other_leader = self.leader.is_some_and(|l| l != msg.from);
                if msg.term == self.term && (self.role == Role::Leader || other_leader) {
                    return Err("InstallSnapshot from a second leader of this term");
                }
                Ok(())
            }
            Body::InstallSnapshotReply(r)
                if msg.term == self.term
                    && self.role == Role::Leader
                    && r.index > self.log.last_index() =>
            {
                Err("snapshot reply for an index past the leader's log")
            }
            Body::TimeoutNow if current && !(msg.term == self.term && self.is_leader(msg.from)) => {
                Err("TimeoutNow from a node that is not this term's leader")
            }
            Body::ReadConfirm(_) if msg.term == self.term && self.role == Role::Leader => {
                Err("ReadConfirm from a second leader of this term")
            }
            Body::ReadConfirm(_)
                if msg.term == self.term && self.leader.is_some_and(|l| l != msg.from) =>
            {
                Err("ReadConfirm from a second leader of this term")
            }
            Body::ReadConfirmReply(r)
                if msg.term == self.term
                    && self.role == Role::Leader
                    && r.round > self.reads_round() =>
            {
                Err("acknowledges a read round the leader never started")
            }
            Body::ReadIndex(ReadIndex { ids })
            | Body::ReadIndexByRound(ReadIndex { ids })
            | Body::ReadIndexReply(ReadIndexReply { ids, .. })
                if ids.is_empty() =>
            {
                Err("read index message for no reads")
            }
            Body::ReadIndexReply(r)
                if r.index.is_some()
                    && msg.term == self.term
                    && self.leader.is_some_and(|l| l != msg.from) =>
            {
                Err("read index from a node that is not this term's leader")
            }
            _ => Ok(()),
        }
    }

    /// An AppendEntries in our term or later: one leader per term (SUB-9), and committed
    /// entries are never replaced (Leader Completeness, §5.4).
    fn check_append_entries(
        &self,
        from: NodeId,
        term: Term,
        ae: &AppendEntries<C>,
    ) -> Result<(), Invalid> {
        let other_leader = self.leader.is_some_and(|l| l != from);
        if term == self.term && (self.role == Role::Leader || other_leader) {
            return Err("AppendEntries from a second leader of this term");
        }
        self.check_keeps_committed(ae)
    }

    /// Leader Completeness (§5.4): no correct leader sends an AppendEntries that, once past
    /// AE-2, would replace an entry at or below this node's commit index (`truncate_from`
    /// asserts it never happens). Read as the receiver reads it (`skip_compacted`): entries
    /// at or below the offset are the snapshot's, so a request starting below the offset
    /// passes AE-2 there and is checked from the offset on, whose term the log keeps.
    /// NB: also run on a held request when it is replayed (`handle_append_entries`): the
    /// commit index may have moved past what it would replace since it arrived.
    pub(super) fn check_keeps_committed(&self, ae: &AppendEntries<C>) -> Result<(), Invalid> {
        let offset = self.log.offset();
        let rebased = ae.prev_log_index < offset;
        if !rebased && self.log.term_at(ae.prev_log_index) != Some(ae.prev_log_term) {
            return Ok(()); // AE-2 rejects it without touching the log
        }
        let mut index = ae.prev_log_index;
        for entry in &ae.entries {
            index = index.next();
            if index > self.commit_index {
                break;
            }
            if index >= offset && self.log.term_at(index) != Some(entry.term) {
                return Err(OVERWRITES_COMMITTED);
            }
        }
        Ok(())
    }

    /// A reply to this leader: it can only acknowledge or reject what this leader holds.
    fn check_append_reply(&self, term: Term, reply: &AppendEntriesReply) -> Result<(), Invalid> {
        let last = self.log.last_index();
        match *reply {
            AppendEntriesReply::Success { match_index } if match_index > last => {
                Err("acknowledges entries past the leader's log")
            }
            AppendEntriesReply::Reject { rejected_index, .. } if rejected_index > last => {
                Err("rejects an index past the leader's log")
            }
            AppendEntriesReply::Reject {
                rejected_index,
                conflict: Some((t, first)),
                last_index,
            } => {
                if first > rejected_index {
                    Err("conflict hint past the rejected index")
                } else if rejected_index > last_index {
                    Err("conflict hint past the follower's last index")
                } else if t > term {
                    Err("conflict term ahead of the sender's term")
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn is_leader(&self, id: NodeId) -> bool {
        self.leader == Some(id)
    }
}

/// What any AppendEntries from a correct leader looks like, whatever our state: entry terms
/// never decrease from `prev_log_term` (L1) and never exceed the sender's term, and the
/// entries' indexes are within the margin.
fn check_append_shape<C>(term: Term, ae: &AppendEntries<C>) -> Result<(), Invalid> {
    if ae.prev_log_term > term {
        return Err("prev_log_term ahead of the sender's term");
    }
    let last = ae.prev_log_index.0.checked_add(ae.entries.len() as u64);
    if last.is_none_or(|last| !within_margin(LogIndex(last))) {
        return Err("entry indexes past the margin of the index space");
    }
    let mut last = ae.prev_log_term;
    for entry in &ae.entries {
        if entry.term < last {
            return Err("entry terms out of order");
        }
        if entry.term > term {
            return Err("entry term ahead of the sender's term");
        }
        last = entry.term;
    }
    Ok(())
}

/// A snapshot chunk no correct leader sends: a snapshot of nothing or past the margin, one
/// whose last entry's term is beyond the sender's own term history, or a chunk whose end
/// overflows.
fn check_snapshot_shape(term: Term, chunk: &InstallSnapshot) -> Result<(), Invalid> {
    if chunk.meta.index.0 == 0 {
        return Err("snapshot of an empty log");
    }
    if !within_margin(chunk.meta.index) {
        return Err("snapshot index past the margin of the index space");
    }
    if chunk.meta.term > term || chunk.meta.term.0 == 0 {
        return Err("snapshot's last term beyond the sender's term history");
    }
    if chunk.offset.checked_add(chunk.data.len() as u64).is_none() {
        return Err("snapshot chunk past the end of the byte space");
    }
    Ok(())
}

/// Whether a peer may name `index`: the log continues after it (`next()`) without overflow.
fn within_margin(index: LogIndex) -> bool {
    index.0 <= MARGIN
}

/// What a node's own storage loaded, checked before the core trusts it (as peers' messages
/// are): a state no correct node persists. Storage writes a step's hard state before its
/// entries (`Core::flush`), so even a store that kept only a prefix of its last writes holds
/// no entry of a term its current term has not reached. `Err` says what is wrong.
pub(crate) fn check_persistent_state<C>(state: &PersistentState<C>) -> Result<(), String> {
    // NB: not `MARGIN`, which bounds what peers may name: a node's own campaigns and appends
    // go past it. Only the very end of the space is refused: there `next()` would overflow.
    let term = state.hard_state.term;
    if term.0 == u64::MAX {
        return Err(format!("current term {term} is the last of the term space"));
    }
    let (offset, offset_term) = (state.log_offset, state.offset_term);
    crate::storage::last_index(offset, state.entries.len())?;
    if offset_term > term {
        return Err(format!("its snapshot's term {offset_term} is above the current term {term}"));
    }
    let mut previous = offset_term;
    for (i, entry) in state.entries.iter().enumerate() {
        let index = LogIndex(offset.0 + 1 + i as u64);
        if entry.term < previous {
            let t = entry.term;
            return Err(format!("the entry at {index} has term {t} after term {previous}"));
        }
        if entry.term > term {
            let t = entry.term;
            return Err(format!(
                "the entry at {index} has term {t}, above the current term {term}"
            ));
        }
        previous = entry.term;
    }
    if let Some(snapshot) = &state.snapshot {
        let meta = &snapshot.meta;
        if (meta.index, meta.term) != (offset, offset_term) {
            let (i, t) = (meta.index, meta.term);
            return Err(format!(
                "its snapshot ends at {i} (term {t}) but its log starts after {offset} (term {offset_term})"
            ));
        }
    }
    Ok(())
}
