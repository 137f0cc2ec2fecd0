//! Log replication (§5.3) and commitment (§5.4.2): the leader's sending side, the follower's
//! AppendEntries receiver, and the reply handling with fast backtracking (SUB-7).

use std::sync::Arc;

use super::progress::{Heartbeat, Mode};
use super::{quorum, Action, Core, Notice, Role};
use crate::error::Error;
use crate::message::{AppendEntries, AppendEntriesReply, Body, Entry, Payload};
use crate::types::{LogIndex, NodeId, Term};

impl<C: Clone> Core<C> {
    /// LEAD-2: append client commands; they are answered once applied. Refused before
    /// appending while the uncommitted log is full (`Config::max_uncommitted_bytes`), unless
    /// nothing is uncommitted: a batch larger than the cap alone still goes in, so no
    /// command waits forever.
    pub(super) fn propose(&mut self, commands: Vec<C>) {
        if self.role != Role::Leader {
            return self.reject(self.not_leader());
        }
        let (held, max) = (self.uncommitted_bytes, self.timing.max_uncommitted_bytes);
        let batch =
            commands.iter().fold(0usize, |sum, c| sum.saturating_add(self.command_bytes(c)));
        #[cfg(test)]
        let held = if self.bugs.ignore_uncommitted_cap { 0 } else { held };
        if held > 0 && held.saturating_add(batch) > max {
            return self.reject(Error::UncommittedLogFull { bytes: self.uncommitted_bytes, max });
        }
        let first = self.log.last_index().next();
        let count = commands.len();
        for command in commands {
            self.append(Entry { term: self.term, payload: Payload::Command(command) });
        }
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_add(batch);
        self.out.push(Action::Proposed { first, term: self.term, count });
        self.maybe_advance_commit_index(); // a one-voter cluster commits at once
        self.broadcast_append();
    }

    /// Appends one entry of this leader's term and notes it for persistence.
    pub(super) fn append(&mut self, entry: Entry<C>) {
        let index = self.log.last_index().next();
        let is_config = matches!(entry.payload, Payload::Config(_));
        self.membership.on_append(index, &entry);
        self.log.push(entry);
        self.log_changed(index);
        if is_config {
            self.config_changed();
            self.sync_progress_with_config();
        }
    }

    /// Sends new entries to every peer whose window allows (pipelining, thesis §10.2.2).
    pub(super) fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            self.maybe_send_append(to);
        }
    }

    /// LEAD-1 plus retransmission: a peer that is behind and acknowledged nothing since the last
    /// heartbeat probably lost a message, so resend from its match point.
    pub(super) fn broadcast_heartbeat(&mut self) {
        let last = self.log.last_index();
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            if self.is_sending_snapshot(to) {
                self.heartbeat_snapshot(to);
                continue;
            }
            let p = self.progress.get_mut(&to).expect("peer listed above");
            match p.on_heartbeat(last) {
                Heartbeat::Resend => self.maybe_send_append(to),
                Heartbeat::Beat => {
                    let prev = p.matched.min(p.next.prev());
                    self.send_append(to, prev, 0);
                }
            }
        }
    }

    /// LEAD-3: send entries from nextIndex while the window has room.
    pub(super) fn maybe_send_append(&mut self, to: NodeId) {
        let last = self.log.last_index();
        loop {
            // NB: a reply may have just removed this peer (or this leader) from the configuration.
            let Some(p) = self.progress.get(&to) else { return };
            if self.is_sending_snapshot(to) || p.next <= self.log.offset() {
                // It needs entries compacted away: a snapshot instead (§7).
                return self.send_snapshot_chunks(to);
            }
            if !p.can_send(self.timing.max_inflight, self.timing.max_inflight_bytes) {
                return;
            }
            let probing = p.mode == Mode::Probe;
            if !probing && p.next > last {
                return; // nothing new to stream
            }
            let (sent_last, bytes) = self.send_append(to, p.next.prev(), self.timing.max_entries);
            self.progress.get_mut(&to).expect("peer exists").on_sent(sent_last, bytes);
            if probing {
                return;
            }
        }
    }

    /// Sends one AppendEntries after `prev` with up to `max` entries and
    /// `Config::max_append_bytes` of commands; returns its last index and its command bytes.
    fn send_append(&mut self, to: NodeId, prev: LogIndex, max: usize) -> (LogIndex, usize) {
        // NB: a follower behind the offset needs a snapshot (not implemented yet); probing at
        // the offset keeps the leader from reading compacted entries meanwhile.
        let prev = prev.max(self.log.offset());
        let prev_log_term = self.log.term_at(prev).expect("prev is between the offset and last");
        let (count, bytes) = self.append_batch(prev.next(), max);
        let ae = AppendEntries {
            prev_log_index: prev,
            prev_log_term,
            entries: self.log.entries_from(prev.next(), count).to_vec(),
            leader_commit: self.commit_index,
        };
        let last = ae.last_index();
        self.send(to, Body::AppendEntries(ae));
        (last, bytes)
    }

    /// How many entries from `from` one AppendEntries carries, and their command bytes: up to
    /// `max` entries and `max_append_bytes`, but at least one entry however large (thesis
    /// §10.2.2: big batches would delay heartbeats, an unsendable entry would stall the log).
    fn append_batch(&self, from: LogIndex, max: usize) -> (usize, usize) {
        let mut bytes = 0usize;
        for (count, entry) in self.log.entries_from(from, max).iter().enumerate() {
            let size = match &entry.payload {
                Payload::Command(c) => self.command_size(c),
                Payload::Noop | Payload::Config(_) => 0,
            };
            if count > 0 && bytes.saturating_add(size) > self.timing.max_append_bytes {
                return (count, bytes);
            }
            bytes = bytes.saturating_add(size);
        }
        (self.log.entries_from(from, max).len(), bytes)
    }

    /// The receiver side of AppendEntries (AE-2..AE-5, CAN-3, SUB-6). `msg.term == self.term`.
    pub(super) fn handle_append_entries(&mut self, from: NodeId, ae: AppendEntries<C>) {
        // The gateway drops an AppendEntries from a second leader of this term (SUB-9).
        assert!(
            self.role != Role::Leader,
            "n{} {}: AppendEntries to a leader",
            self.id.0,
            self.term
        );
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.term, Some(from)); // CAN-3
        }
        self.heard_from_leader(); // SUB-3: a valid AppendEntries from the current leader
        let Some(mut vouched) = self.append_entries(from, ae) else { return };
        // Requests held because they arrived ahead of the log may follow it now (reorder.rs).
        // NB: one of this leader's requests starting within what it vouched for passes AE-2.
        // Should one fail, it was held again and would come straight back: stop, not loop.
        while let Some(held) = self.held.take_ready(self.held_term(), vouched) {
            // The gateway checked it against the log it arrived at, before the gap filled:
            // what it would replace may be committed now (Leader Completeness, §5.4).
            if let Err(reason) = self.check_keeps_committed(&held) {
                return self.notice(Notice::InvalidMessage { from, reason });
            }
            let Some(v) = self.append_entries(from, held) else { break };
            vouched = vouched.max(v);
        }
    }

    /// AE-2..AE-5 for one request of the current leader; answers it and returns the last index
    /// it vouched for, or holds it if it starts past this log's end (`reorder.rs`).
    fn append_entries(&mut self, from: NodeId, ae: AppendEntries<C>) -> Option<LogIndex> {
        let ae = self.skip_compacted(ae);
        let prev_ok = self.log.term_at(ae.prev_log_index) == Some(ae.prev_log_term);
        #[cfg(test)]
        let prev_ok = prev_ok
            || (self.bugs.skip_prev_term_check && self.log.term_at(ae.prev_log_index).is_some());
        if !prev_ok {
            let reply = self.reject_reply(ae.prev_log_index);
            if ae.prev_log_index > self.log.last_index() && !ae.entries.is_empty() {
                self.held.hold(self.held_term(), ae, self.timing.max_inflight);
            }
            self.send(from, Body::AppendEntriesReply(reply)); // AE-2
            return None;
        }
        let last_new = ae.last_index();
        self.merge_entries(ae.prev_log_index, ae.entries);
        if ae.leader_commit > self.commit_index {
            #[cfg(test)]
            let last_new = if self.bugs.commit_beyond_last_new_entry {
                self.log.last_index()
            } else {
                last_new
            };
            // AE-5: never past the last entry this request vouched for.
            self.commit_index = self.commit_index.max(ae.leader_commit.min(last_new));
            self.membership.on_commit(self.commit_index);
        }
        let reply = AppendEntriesReply::Success { match_index: last_new };
        self.send(from, Body::AppendEntriesReply(reply));
        Some(last_new)
    }

    /// The term whose held requests may be replayed: this one (ALL-2).
    fn held_term(&self) -> Term {
        #[cfg(test)]
        if self.bugs.replay_held_across_terms {
            return self.held.term();
        }
        self.term
    }

    /// AE-3 and AE-4: skip entries already present, truncate only at a real conflict (SUB-6).
    /// Entries at or below this node's offset are covered by its snapshot: they are committed,
    /// so equal to the leader's (Leader Completeness). The request is read as starting at the
    /// offset, whose term the log still knows. NB: `check_keeps_committed` reads it the same
    /// way, so nothing from the offset on that it would replace is committed.
    fn skip_compacted(&self, mut ae: AppendEntries<C>) -> AppendEntries<C> {
        let offset = self.log.offset();
        if ae.prev_log_index >= offset {
            return ae;
        }
        let covered = (offset.0 - ae.prev_log_index.0) as usize;
        ae.entries.drain(..covered.min(ae.entries.len()));
        ae.prev_log_index = offset;
        ae.prev_log_term = self.log.term_at(offset).expect("the offset's term is kept");
        ae
    }

    fn merge_entries(&mut self, prev: LogIndex, entries: Vec<Entry<C>>) {
        let mut index = prev;
        let mut entries = entries.into_iter();
        for entry in entries.by_ref() {
            index = index.next();
            match self.log.term_at(index) {
                Some(term) if term == entry.term => continue,
                Some(_) => self.truncate_from(index),
                None => {}
            }
            self.append_follower(index, entry);
            break;
        }
        #[cfg(test)]
        if self.bugs.truncate_on_duplicate
            && index < self.log.last_index()
            && index > self.commit_index
        {
            self.truncate_from(index.next());
        }
        for entry in entries {
            index = index.next();
            self.append_follower(index, entry);
        }
    }

    fn truncate_from(&mut self, index: LogIndex) {
        assert!(
            index > self.commit_index,
            "n{} {}: truncating committed {index}",
            self.id.0,
            self.term
        );
        let before = Arc::clone(self.config());
        self.log.truncate_from(index);
        self.membership.on_truncate(index);
        self.log_changed(index);
        if !Arc::ptr_eq(&before, self.config()) {
            self.config_changed();
        }
    }

    fn append_follower(&mut self, index: LogIndex, entry: Entry<C>) {
        debug_assert_eq!(index, self.log.last_index().next());
        let is_config = matches!(entry.payload, Payload::Config(_));
        self.membership.on_append(index, &entry);
        self.log.push(entry);
        self.log_changed(index);
        if is_config {
            self.config_changed();
        }
    }

    /// A rejection carrying the hints for fast backtracking (SUB-7).
    pub(super) fn reject_reply(&self, prev: LogIndex) -> AppendEntriesReply {
        let conflict = self.log.term_at(prev).map(|t| (t, self.log.first_index_of_term(t, prev)));
        AppendEntriesReply::Reject {
            rejected_index: prev,
            conflict,
            last_index: self.log.last_index(),
        }
    }

    /// LEAD-3a / LEAD-3b, ignoring replies that arrive after the leader moved on (SUB-5).
    pub(super) fn handle_append_reply(&mut self, from: NodeId, reply: AppendEntriesReply) {
        if self.role != Role::Leader {
            return;
        }
        #[cfg(test)]
        let reply = match reply {
            AppendEntriesReply::Success { .. } if self.bugs.match_index_from_leader_log => {
                AppendEntriesReply::Success { match_index: self.log.last_index() }
            }
            other => other,
        };
        let now = self.now;
        let Some(p) = self.progress.get_mut(&from) else { return };
        p.recent_active = true;
        match reply {
            AppendEntriesReply::Success { match_index } => {
                if !p.on_success(match_index) {
                    return; // stale or duplicated: a sign of life, nothing more (SUB-5)
                }
                p.answered_at = now;
                self.maybe_advance_commit_index();
                self.on_peer_progress(from);
            }
            AppendEntriesReply::Reject { rejected_index, conflict, last_index } => {
                if !self.handle_append_reject(from, rejected_index, conflict, last_index) {
                    return;
                }
            }
        }
        self.maybe_send_append(from);
    }

    /// LEAD-3b; returns whether the peer's progress changed. The gateway checked that the
    /// indexes are within this leader's log.
    fn handle_append_reject(
        &mut self,
        from: NodeId,
        rejected: LogIndex,
        conflict: Option<(Term, LogIndex)>,
        last: LogIndex,
    ) -> bool {
        let p = self.progress.get_mut(&from).expect("the caller found this peer");
        // Stale: a newer reply already moved this peer on. A follower's log never shrinks
        // below `matched` in this term, so a shorter `last` is old news too.
        let stale = rejected < p.matched
            || last < p.matched
            || (p.mode == Mode::Probe && rejected != p.next.prev());
        if stale {
            return false;
        }
        if p.mode == Mode::Replicate && conflict.is_none() && last < rejected {
            // Reordered or lost, not a conflict: resend the gap's start (fast retransmit).
            let Some(gap) = p.on_gap(last) else { return false };
            if self.is_sending_snapshot(from) {
                return false; // the snapshot's chunks are what it needs now
            }
            if gap <= self.log.offset() {
                // Compacted away: probing sends the snapshot instead (§7).
                self.progress.get_mut(&from).expect("peer exists").probe_from(gap);
                return true;
            }
            self.send_append(from, gap.prev(), self.timing.max_entries);
            return false;
        }
        let next = self.backtrack(rejected, conflict, last);
        self.progress.get_mut(&from).expect("peer exists").probe_from(next);
        true
    }

    /// Where to probe next after a rejection (SUB-7): skip a whole conflicting term at once.
    fn backtrack(
        &self,
        rejected: LogIndex,
        conflict: Option<(Term, LogIndex)>,
        last: LogIndex,
    ) -> LogIndex {
        let next = match conflict {
            // NB: `last` is the follower's word; `min` before `next` so it cannot overflow.
            None => last.min(rejected.prev()).next(),
            Some((term, first)) => match self.log.last_index_of_term(term) {
                Some(ours) => ours.next(),
                None => first,
            },
        };
        // At or below the offset, the entries it needs are compacted away: `maybe_send_append`
        // sends the snapshot instead (§7).
        next.min(rejected).max(LogIndex(1))
    }

    /// LEAD-4: commit the highest index on a majority of voters, if it is of this term (SUB-1).
    /// The leader's own vote covers only what it has synced (thesis §10.2.1).
    pub(super) fn maybe_advance_commit_index(&mut self) {
        let me = self.id;
        let own = self.durable_index();
        #[cfg(test)]
        let own = if self.bugs.leader_counts_unsynced { self.log.last_index() } else { own };
        let majority = quorum::majority_index(self.config(), |id| {
            if id == me {
                own
            } else {
                self.progress.get(&id).map_or(LogIndex(0), |p| p.matched)
            }
        });
        if majority <= self.commit_index {
            return;
        }
        let current_term = self.log.term_at(majority) == Some(self.term);
        #[cfg(test)]
        let current_term = current_term || self.bugs.commit_previous_terms;
        if current_term {
            let committed = self.bytes_between(self.commit_index, majority);
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(committed);
            self.commit_index = majority;
            self.on_commit_advanced();
        }
    }

    /// The bytes (`Core::entry_bytes`) of the entries in `(after, through]`.
    pub(super) fn bytes_between(&self, after: LogIndex, through: LogIndex) -> usize {
        let count = usize::try_from(through.0.saturating_sub(after.0)).unwrap_or(usize::MAX);
        let entries = self.log.entries_from(after.next(), count);
        entries.iter().fold(0usize, |sum, e| sum.saturating_add(self.entry_bytes(e)))
    }

    /// Whether this leader's own sync may be needed to commit what it appended
    /// (`Config::defer_leader_sync`). It is not while a quorum of the other voters keeps up:
    /// each is replicating (not probing) and acknowledged new entries within the last tick,
    /// so they alone commit what the leader sends. Always true when not leading.
    pub fn own_sync_needed(&self) -> bool {
        if self.role != Role::Leader {
            return true;
        }
        #[cfg(test)]
        if self.bugs.leader_never_syncs {
            return false;
        }
        let keeping_up = |id: NodeId| {
            id != self.id
                && self.progress.get(&id).is_some_and(|p| {
                    p.mode == super::progress::Mode::Replicate
                        && self.now.saturating_sub(p.answered_at) <= 1
                })
        };
        !self.config().has_quorum(keeping_up)
    }

    /// Keeps `progress` in step with the configuration: new members get progress, removed
    /// members lose it.
    pub(super) fn sync_progress_with_config(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let config = Arc::clone(self.config());
        self.progress.retain(|id, _| config.contains(*id));
        // NB: a snapshot transfer to a node that left ends with it.
        self.sending.retain(|id, _| config.contains(*id));
        let last = self.log.last_index();
        for id in config.members().filter(|&m| m != self.id) {
            self.progress.entry(id).or_insert_with(|| super::progress::Progress::new(last));
        }
    }
}
