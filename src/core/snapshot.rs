//! Log compaction (§7, Figure 13; thesis chapter 5): taking snapshots, dropping the log prefix
//! they cover, and InstallSnapshot, the leader sending a snapshot in chunks to a follower that
//! needs entries it has compacted away.
//!
//! Taking a snapshot is split in two so the state machine is never read on the core's step:
//! the core asks (`Action::TakeSnapshot` at its applied index; by policy or on demand), the
//! driver takes the image where the state machine lives and hands it back
//! (`Input::SnapshotTaken`), and only then does the log's offset move.
//!
//! Figure 13's receiver rules, here:
//! * IS-1 reply immediately if term < currentTerm (the gateway's stale path);
//! * IS-2..4 chunks arrive in order: a chunk at any offset but the next expected one is
//!   answered with the offset expected, so a lost, duplicated or reordered chunk never corrupts
//!   the image; a chunk of another snapshot restarts the transfer only at offset 0;
//! * IS-5 the last chunk completes the image;
//! * IS-6 if the log holds the snapshot's last entry (same index and term), keep the entries
//!   after it;
//! * IS-7 otherwise discard the whole log;
//! * IS-8 restore the state machine from the snapshot and adopt its configuration.
//!
//! A snapshot no newer than the follower's commit index is answered `done` and ignored.

use std::sync::Arc;

use super::membership::Membership;
use super::{Action, Core, Role};
use crate::message::{Body, InstallSnapshot, InstallSnapshotReply, Snapshot, SnapshotMeta};
use crate::types::{LogIndex, NodeId};

/// The leader's transfer of its snapshot to one follower.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotSend {
    /// The snapshot being sent (its last included index).
    index: LogIndex,
    /// Bytes sent so far (the next chunk's offset).
    sent: u64,
    /// Bytes the follower confirmed holding.
    acked: u64,
    /// The last chunk went out and has not been answered.
    sent_last: bool,
    /// Whether `acked` moved since the last heartbeat.
    progressed: bool,
    /// A heartbeat found no progress: one chunk at a time until the follower answers, as
    /// AppendEntries probe (a dead follower costs a chunk a heartbeat, not the window).
    probing: bool,
}

impl<C: Clone> Core<C> {
    /// The automatic policy (thesis §5.1.2): snapshot once the log holds `snapshot_entries`
    /// applied entries beyond the last snapshot.
    pub(super) fn maybe_snapshot(&mut self) {
        let every = self.timing.snapshot_entries;
        if every > 0 && self.last_applied.0.saturating_sub(self.log.offset().0) >= every {
            self.request_snapshot();
        }
    }

    /// Asks the driver for a snapshot through the applied index (on demand, or by policy).
    /// Returns whether one was asked for (false: nothing new to compact, or one is on its way).
    pub(super) fn request_snapshot(&mut self) -> bool {
        if self.snapshot_requested || self.last_applied <= self.log.offset() {
            return false;
        }
        let index = self.last_applied;
        let term = self.log.term_at(index).expect("applied entries are in the log");
        // NB: applied == committed here, and configurations above the commit index are still
        // pending, so the committed one is the one in force at `index`.
        let config = Arc::clone(self.membership.committed());
        self.snapshot_requested = true;
        self.out.push(Action::TakeSnapshot(SnapshotMeta { index, term, config }));
        true
    }

    /// The driver took the snapshot asked for: drop the log prefix it covers.
    pub(super) fn snapshot_taken(&mut self, snapshot: Arc<Snapshot>) {
        self.snapshot_requested = false;
        let index = snapshot.meta.index;
        if index <= self.log.offset() || index > self.last_applied {
            return; // an installed snapshot already covers it
        }
        debug_assert_eq!(self.log.term_at(index), Some(snapshot.meta.term));
        self.log.compact_through(index);
        self.persist_snapshot = Some(Arc::clone(&snapshot));
        self.snapshot = Some(snapshot);
    }

    /// Leader: sends `to` the next chunks of the snapshot, within the window.
    pub(super) fn send_snapshot_chunks(&mut self, to: NodeId) {
        let Some(snapshot) = self.snapshot.clone() else { return };
        let meta = &snapshot.meta;
        let chunk = self.timing.snapshot_chunk_bytes as u64;
        let window = chunk.saturating_mul(self.timing.snapshot_chunks_in_flight as u64);
        let len = snapshot.data.len() as u64;
        let send = self.sending.entry(to).or_insert_with(|| SnapshotSend::new(meta.index));
        if send.index != meta.index {
            *send = SnapshotSend::new(meta.index); // compacted further: send the newer one
        }
        let window = if send.probing { chunk } else { window };
        let mut chunks = Vec::new();
        while !send.sent_last && send.sent - send.acked < window.max(1) {
            let end = (send.sent + chunk).min(len);
            let data = snapshot.data[send.sent as usize..end as usize].to_vec();
            chunks.push(InstallSnapshot {
                meta: meta.clone(),
                offset: send.sent,
                data,
                done: end == len,
            });
            send.sent = end;
            send.sent_last = end == len;
        }
        for chunk in chunks {
            self.send(to, Body::InstallSnapshot(chunk));
        }
    }

    /// Leader, at each heartbeat: a transfer that made no progress since the last one resends
    /// from what the follower confirmed (chunks were lost), one chunk until it answers.
    pub(super) fn heartbeat_snapshot(&mut self, to: NodeId) {
        if let Some(send) = self.sending.get_mut(&to) {
            if !std::mem::take(&mut send.progressed) {
                send.sent = send.acked;
                send.sent_last = false;
                send.probing = true;
            }
        }
        self.send_snapshot_chunks(to);
    }

    /// Whether the leader is sending `to` a snapshot (then no AppendEntries go to it).
    pub(super) fn is_sending_snapshot(&self, to: NodeId) -> bool {
        self.sending.contains_key(&to)
    }

    /// Leader: a follower's answer to a chunk.
    pub(super) fn handle_snapshot_reply(&mut self, from: NodeId, reply: InstallSnapshotReply) {
        if self.role != Role::Leader {
            return;
        }
        let Some(p) = self.progress.get_mut(&from) else { return };
        p.recent_active = true;
        let Some(send) = self.sending.get_mut(&from) else { return };
        if reply.index != send.index {
            return; // an answer about an older transfer
        }
        if reply.done {
            self.sending.remove(&from);
            let p = self.progress.get_mut(&from).expect("checked above");
            if p.on_success(reply.index) {
                self.maybe_advance_commit_index();
            }
            let p = self.progress.get_mut(&from).expect("checked above");
            p.next = p.next.max(reply.index.next());
            return self.on_snapshot_sent(from);
        }
        let len = self.snapshot.as_ref().map_or(0, |s| s.data.len() as u64);
        if reply.received > send.acked && reply.received <= len {
            // NB: may be past `sent` when a heartbeat rewound it while chunks were in flight.
            send.acked = reply.received;
            if send.sent < send.acked {
                send.sent = send.acked;
                send.sent_last = false;
            }
            send.progressed = true;
            send.probing = false;
            self.send_snapshot_chunks(from);
        } else if reply.received < send.acked {
            // The follower holds less than it said (it restarted, or this reply is old): trust
            // its latest word; the next heartbeat resends from there. NB: sending now would let
            // duplicated replies multiply chunks.
            send.acked = reply.received;
        }
    }

    /// The follower holds the snapshot: replication goes on with the entries after it.
    fn on_snapshot_sent(&mut self, to: NodeId) {
        self.on_peer_progress(to);
        self.maybe_send_append(to);
    }

    /// Follower: one chunk of the leader's snapshot (Figure 13's receiver rules, module docs).
    pub(super) fn handle_install_snapshot(&mut self, from: NodeId, chunk: InstallSnapshot) {
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.term, Some(from)); // as for AppendEntries (CAN-3)
        }
        self.heard_from_leader(); // a message from the current leader (SUB-3)
        let index = chunk.meta.index;
        if index <= self.commit_index {
            let received = chunk.offset + chunk.data.len() as u64;
            return self.reply_snapshot(from, index, received, true);
        }
        let restart = chunk.offset == 0;
        let incoming = match self.incoming.take() {
            Some((meta, data)) if meta == chunk.meta => Some((meta, data)),
            _ if restart => Some((chunk.meta.clone(), Vec::new())),
            _ => None,
        };
        let Some((meta, mut data)) = incoming else {
            return self.reply_snapshot(from, index, 0, false); // start over from the beginning
        };
        if chunk.offset != data.len() as u64 {
            let received = data.len() as u64;
            self.incoming = Some((meta, data));
            return self.reply_snapshot(from, index, received, false);
        }
        data.extend_from_slice(&chunk.data);
        let received = data.len() as u64;
        if !chunk.done {
            self.incoming = Some((meta, data));
            return self.reply_snapshot(from, index, received, false);
        }
        self.install(Arc::new(Snapshot { meta, data: data.into() }));
        self.reply_snapshot(from, index, received, true);
    }

    fn reply_snapshot(&mut self, to: NodeId, index: LogIndex, received: u64, done: bool) {
        let reply = InstallSnapshotReply { index, received, done };
        self.send(to, Body::InstallSnapshotReply(reply));
    }

    /// IS-6..8: adopt a complete snapshot newer than the commit index.
    fn install(&mut self, snapshot: Arc<Snapshot>) {
        let meta = &snapshot.meta;
        debug_assert!(meta.index > self.commit_index, "checked by the caller");
        let keep_suffix = self.log.term_at(meta.index) == Some(meta.term);
        #[cfg(test)]
        let keep_suffix = keep_suffix
            || (self.bugs.snapshot_keeps_conflicting_log && meta.index <= self.log.last_index());
        if keep_suffix {
            self.log.compact_through(meta.index); // IS-6
        } else {
            self.log.reset(meta.index, meta.term); // IS-7
            self.log_changed(meta.index.next()); // the stored suffix goes too
        }
        let before = Arc::clone(self.config());
        let tail = self.log.entries_from(meta.index.next(), usize::MAX);
        self.membership = Membership::new((*meta.config).clone(), meta.index, tail);
        if *before != **self.config() {
            self.config_changed();
        }
        self.commit_index = meta.index;
        self.last_applied = meta.index;
        self.persist_snapshot = Some(Arc::clone(&snapshot));
        self.out.push(Action::Restore(Arc::clone(&snapshot))); // IS-8
        self.snapshot = Some(snapshot);
    }
}

impl SnapshotSend {
    fn new(index: LogIndex) -> Self {
        SnapshotSend {
            index,
            sent: 0,
            acked: 0,
            sent_last: false,
            progressed: false,
            probing: false,
        }
    }
}
