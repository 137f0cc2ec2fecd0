//! A leader's view of one follower: nextIndex, matchIndex (ST-L1, ST-L2) and the pipelining
//! window of AppendEntries in flight, counted in messages and in bytes of commands.
//!
//! Invariant (P1): `matched < next`. Invariant (P2): `matched` never decreases within a term.

use std::collections::VecDeque;

use crate::types::LogIndex;

/// How the leader is currently replicating to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Searching for the point where the logs agree: one AppendEntries at a time.
    Probe,
    /// Logs agree up to `matched`: stream entries optimistically, up to the window.
    Replicate,
}

/// What a heartbeat round should send a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heartbeat {
    /// Entries from `next` (a probe, or a retransmission).
    Resend,
    /// An empty AppendEntries at the match point.
    Beat,
}

/// Replication state for one peer.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The next index to send (ST-L1).
    pub next: LogIndex,
    /// The highest index known replicated on the peer (ST-L2).
    pub matched: LogIndex,
    /// Probe or Replicate.
    pub mode: Mode,
    /// Last index and command bytes of each unacknowledged AppendEntries, oldest first.
    inflight: VecDeque<(LogIndex, usize)>,
    /// The sum of the bytes in `inflight`.
    inflight_bytes: usize,
    /// In Probe mode: a probe is outstanding, so wait for its reply or the next heartbeat.
    probe_sent: bool,
    /// `matched` advanced since the last heartbeat: the pipeline is alive.
    pub advanced: bool,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// The core's tick count when an answer last moved this peer on (`Core::own_sync_needed`).
    pub answered_at: u64,
    /// In Replicate mode: the start of the last gap resent (fast retransmit), so each gap
    /// is resent once.
    resent_from: LogIndex,
}

impl Progress {
    /// Fresh progress for a new term: optimistic next, nothing known matched (§5.3).
    pub fn new(last_index: LogIndex) -> Self {
        Progress {
            next: last_index.next(),
            matched: LogIndex(0),
            mode: Mode::Probe,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            probe_sent: false,
            advanced: false,
            recent_active: false,
            answered_at: 0,
            resent_from: LogIndex(0),
        }
    }

    /// Whether the leader may send another AppendEntries with entries now: in Replicate mode
    /// the window closes at `max_inflight` messages or `max_inflight_bytes` bytes in flight.
    pub fn can_send(&self, max_inflight: usize, max_inflight_bytes: usize) -> bool {
        match self.mode {
            Mode::Probe => !self.probe_sent,
            Mode::Replicate => {
                self.inflight.len() < max_inflight && self.inflight_bytes < max_inflight_bytes
            }
        }
    }

    /// Records that an AppendEntries ending at `last`, carrying `bytes` of commands, was sent.
    pub fn on_sent(&mut self, last: LogIndex, bytes: usize) {
        match self.mode {
            Mode::Probe => self.probe_sent = true,
            Mode::Replicate => {
                self.next = last.next();
                self.inflight.push_back((last, bytes));
                self.inflight_bytes = self.inflight_bytes.saturating_add(bytes);
            }
        }
    }

    /// Applies a success reply; returns whether `matched` advanced (LEAD-3a, SUB-5). A stale
    /// or duplicated success (not above `matched`) changes nothing: it acknowledges no
    /// AppendEntries in flight (all end above `matched`) and is not the answer to a probe.
    // NB (sim seed 10146954): it used to clear `probe_sent`, so every duplicate of an old
    // success sent one more probe; under duplication probes multiplied and a follower fed one
    // entry per AppendEntries fell ~80 entries behind.
    pub fn on_success(&mut self, match_index: LogIndex) -> bool {
        if match_index <= self.matched {
            return false;
        }
        self.probe_sent = false;
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > match_index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes = self.inflight_bytes.saturating_sub(bytes);
        }
        self.matched = match_index;
        self.next = self.next.max(match_index.next());
        self.advanced = true;
        if self.mode == Mode::Probe {
            self.mode = Mode::Replicate;
        }
        true
    }

    /// Falls back to probing from `next` (LEAD-3b), clamped above `matched`.
    pub fn probe_from(&mut self, next: LogIndex) {
        self.next = next.max(self.matched.next());
        self.mode = Mode::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.resent_from = LogIndex(0);
    }

    /// In Replicate mode, the follower's log ends at `follower_last` (at or above `matched`),
    /// before the AppendEntries it rejected: the one that fills the gap was reordered behind
    /// it or lost. The follower holds what arrived ahead of its log (`reorder.rs`), so only
    /// the gap's first AppendEntries is resent, and everything after it stays in the window,
    /// as TCP's fast retransmit resends one segment on a duplicate acknowledgement. Returns
    /// where to resend from, once per gap: a gap at or past `next`, or not past one already
    /// resent, has nothing to resend (the follower's log only grows within a term; a conflict
    /// goes through [`Progress::probe_from`], which forgets the resent gap).
    // NB (sim seed 183569): this used to go back N, resending the whole window from the gap.
    // Under steady reordering of single-entry requests nearly every window arrived shuffled,
    // each rejection resent up to 8 requests, the link filled and dropped most of them, and a
    // new member stayed ~60 entries behind for good.
    pub fn on_gap(&mut self, follower_last: LogIndex) -> Option<LogIndex> {
        debug_assert_eq!(self.mode, Mode::Replicate);
        debug_assert!(follower_last >= self.matched, "stale rejections are dropped earlier");
        let from = follower_last.next();
        if from >= self.next || from <= self.resent_from {
            return None;
        }
        self.resent_from = from;
        Some(from)
    }

    /// At a heartbeat: what to send this peer. A lost probe is re-sent at the same point (its
    /// backtracking is kept); a peer that is behind and acknowledged nothing since the last
    /// heartbeat probably lost a message, so it restarts from `matched + 1`.
    pub fn on_heartbeat(&mut self, last_index: LogIndex) -> Heartbeat {
        let stalled = self.matched < last_index && !self.advanced;
        self.advanced = false;
        match self.mode {
            Mode::Probe if self.probe_sent => {
                self.probe_sent = false;
                Heartbeat::Resend
            }
            Mode::Replicate if stalled => {
                self.probe_from(self.matched.next());
                Heartbeat::Resend
            }
            _ => Heartbeat::Beat,
        }
    }

    /// Number of AppendEntries awaiting acknowledgement.
    #[cfg(test)]
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Bytes of commands in the AppendEntries awaiting acknowledgement.
    #[cfg(test)]
    pub fn inflight_bytes(&self) -> usize {
        self.inflight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_at_a_time_then_pipelines() {
        let mut p = Progress::new(LogIndex(10));
        assert!(p.can_send(4, usize::MAX));
        p.on_sent(LogIndex(10), 0);
        assert!(!p.can_send(4, usize::MAX), "probe waits for its reply");
        assert!(p.on_success(LogIndex(10)));
        assert_eq!(p.mode, Mode::Replicate);
        for last in [12, 14, 16, 18] {
            p.on_sent(LogIndex(last), 0);
        }
        assert!(!p.can_send(4, usize::MAX), "window of 4 is full");
        assert_eq!(p.next, LogIndex(19));
        assert!(p.on_success(LogIndex(14)));
        assert_eq!(p.inflight(), 2);
    }

    #[test]
    fn window_closes_at_max_inflight_bytes_and_reopens_on_acknowledgement() {
        let mut p = Progress::new(LogIndex(0));
        p.on_success(LogIndex(1));
        p.on_sent(LogIndex(2), 60);
        assert!(p.can_send(8, 100), "60 of 100 bytes in flight");
        p.on_sent(LogIndex(3), 40);
        assert!(!p.can_send(8, 100), "100 of 100 bytes in flight");
        assert!(p.on_success(LogIndex(2)));
        assert_eq!((p.inflight(), p.inflight_bytes()), (1, 40));
        assert!(p.can_send(8, 100));
        p.on_sent(LogIndex(4), 30);
        assert_eq!(p.on_gap(LogIndex(2)), Some(LogIndex(3)), "a resend takes no window room");
        assert_eq!((p.inflight(), p.inflight_bytes()), (2, 70));
    }

    #[test]
    fn stale_success_never_lowers_match() {
        let mut p = Progress::new(LogIndex(0));
        p.on_success(LogIndex(7));
        assert!(!p.on_success(LogIndex(3)));
        assert_eq!(p.matched, LogIndex(7));
    }

    #[test]
    fn stale_success_keeps_the_probe_outstanding() {
        let mut p = Progress::new(LogIndex(0));
        p.on_success(LogIndex(5));
        p.probe_from(LogIndex(6));
        p.on_sent(LogIndex(8), 0);
        assert!(!p.can_send(4, usize::MAX));
        assert!(!p.on_success(LogIndex(5)), "a duplicate of the old acknowledgement");
        assert!(!p.can_send(4, usize::MAX), "the probe is still outstanding");
        assert!(p.on_success(LogIndex(8)));
        assert!(p.can_send(4, usize::MAX));
    }

    #[test]
    fn a_gap_is_resent_once_and_the_window_stays_as_it_was() {
        let mut p = Progress::new(LogIndex(0));
        p.on_success(LogIndex(2));
        for last in 3..=8 {
            p.on_sent(LogIndex(last), 0);
        }
        assert_eq!(p.on_gap(LogIndex(4)), Some(LogIndex(5)), "the follower holds i4: resend i5");
        assert_eq!((p.mode, p.next, p.inflight()), (Mode::Replicate, LogIndex(9), 6));
        assert_eq!(p.on_gap(LogIndex(4)), None, "the same gap, reported again: already resent");
        assert_eq!(p.on_gap(LogIndex(3)), None, "an older view of the follower's log");
        assert!(p.can_send(8, usize::MAX), "the window is untouched: 6 of 8 in flight");
        assert!(p.on_success(LogIndex(6)), "i5 filled the gap; the follower replayed i6");
        assert_eq!(p.inflight(), 2);
        assert_eq!(p.on_gap(LogIndex(6)), Some(LogIndex(7)), "a new gap, further on, at once");
        assert_eq!(p.on_gap(LogIndex(8)), None, "nothing sent past i8");
    }

    #[test]
    fn a_probe_forgets_the_resent_gap() {
        let mut p = Progress::new(LogIndex(0));
        p.on_success(LogIndex(2));
        p.on_sent(LogIndex(3), 0);
        p.on_sent(LogIndex(4), 0);
        assert_eq!(p.on_gap(LogIndex(2)), Some(LogIndex(3)));
        // The resend was lost too: a heartbeat finds the peer stalled and probes from i3.
        assert_eq!(p.on_heartbeat(LogIndex(4)), Heartbeat::Beat, "i2 was acknowledged since");
        assert_eq!(p.on_heartbeat(LogIndex(4)), Heartbeat::Resend);
        assert_eq!((p.mode, p.next), (Mode::Probe, LogIndex(3)));
        p.on_sent(LogIndex(3), 0);
        assert!(p.on_success(LogIndex(3)));
        p.on_sent(LogIndex(4), 0);
        assert_eq!(p.on_gap(LogIndex(3)), Some(LogIndex(4)), "a later gap is resent again");
    }

    #[test]
    fn probe_from_never_goes_below_match() {
        let mut p = Progress::new(LogIndex(0));
        p.on_success(LogIndex(5));
        p.probe_from(LogIndex(2));
        assert_eq!(p.next, LogIndex(6));
    }
}
