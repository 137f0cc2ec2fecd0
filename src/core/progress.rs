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
    /// In Replicate mode: where the last go-back resent from, so each gap is resent once.
    resent_from: LogIndex,
    /// The tick of that go-back.
    resent_at: u64,
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
            resent_from: LogIndex(0),
            resent_at: 0,
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
    /// before the AppendEntries it rejected: an earlier one was reordered behind it or lost.
    /// Go back to `follower_last + 1` and keep streaming (go-back-N, thesis §10.2.2), rather
    /// than fall back to one probe per round trip, which under steady reordering would never
    /// let a lagging follower catch up. Returns whether anything changed: a gap at or past
    /// `next` has nothing to resend, and one gap is resent at most once per tick (`now`), so
    /// the window's other rejections of the same gap cannot multiply the resends.
    pub fn go_back(&mut self, follower_last: LogIndex, now: u64) -> bool {
        debug_assert_eq!(self.mode, Mode::Replicate);
        debug_assert!(follower_last >= self.matched, "stale rejections are dropped earlier");
        let from = follower_last.next();
        if from >= self.next || (from <= self.resent_from && now == self.resent_at) {
            return false;
        }
        self.next = from;
        self.resent_from = from;
        self.resent_at = now;
        self.inflight.retain(|&(last, _)| last < from);
        self.inflight_bytes =
            self.inflight.iter().fold(0, |sum, &(_, bytes)| sum.saturating_add(bytes));
        true
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
        assert!(p.go_back(LogIndex(2), 1), "i3.. is resent: its bytes leave the window");
        assert_eq!((p.inflight(), p.inflight_bytes()), (0, 0));
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
    fn go_back_resends_a_gap_once_per_tick_and_stays_in_replicate() {
        let mut p = Progress::new(LogIndex(0));
        p.on_success(LogIndex(2));
        for last in 3..=8 {
            p.on_sent(LogIndex(last), 0);
        }
        assert!(p.go_back(LogIndex(4), 7), "the follower holds i4: resend from i5");
        assert_eq!((p.mode, p.next, p.inflight()), (Mode::Replicate, LogIndex(5), 2));
        p.on_sent(LogIndex(8), 0);
        assert!(!p.go_back(LogIndex(4), 7), "the same gap in the same tick: already resent");
        assert!(!p.go_back(LogIndex(3), 7), "an older view, same tick");
        assert!(p.go_back(LogIndex(4), 8), "a tick later the gap may be resent again");
        p.on_sent(LogIndex(6), 0);
        assert!(!p.go_back(LogIndex(6), 9), "nothing sent past i6");
        assert!(p.go_back(LogIndex(5), 8), "a new gap, further on, at once");
        assert_eq!(p.next, LogIndex(6));
    }

    #[test]
    fn probe_from_never_goes_below_match() {
        let mut p = Progress::new(LogIndex(0));
        p.on_success(LogIndex(5));
        p.probe_from(LogIndex(2));
        assert_eq!(p.next, LogIndex(6));
    }
}
