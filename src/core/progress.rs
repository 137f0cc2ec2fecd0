//! A leader's view of one follower: nextIndex, matchIndex (ST-L1, ST-L2) and the pipelining
//! window of AppendEntries in flight.
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
    /// Last index carried by each unacknowledged AppendEntries, oldest first.
    inflight: VecDeque<LogIndex>,
    /// In Probe mode: a probe is outstanding, so wait for its reply or the next heartbeat.
    probe_sent: bool,
    /// `matched` advanced since the last heartbeat: the pipeline is alive.
    pub advanced: bool,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
}

impl Progress {
    /// Fresh progress for a new term: optimistic next, nothing known matched (§5.3).
    pub fn new(last_index: LogIndex) -> Self {
        Progress {
            next: last_index.next(),
            matched: LogIndex(0),
            mode: Mode::Probe,
            inflight: VecDeque::new(),
            probe_sent: false,
            advanced: false,
            recent_active: false,
        }
    }

    /// Whether the leader may send another AppendEntries with entries now.
    pub fn can_send(&self, max_inflight: usize) -> bool {
        match self.mode {
            Mode::Probe => !self.probe_sent,
            Mode::Replicate => self.inflight.len() < max_inflight,
        }
    }

    /// Records that an AppendEntries ending at `last` was sent.
    pub fn on_sent(&mut self, last: LogIndex) {
        match self.mode {
            Mode::Probe => self.probe_sent = true,
            Mode::Replicate => {
                self.next = last.next();
                self.inflight.push_back(last);
            }
        }
    }

    /// Applies a success reply; returns whether `matched` advanced (LEAD-3a, SUB-5).
    pub fn on_success(&mut self, match_index: LogIndex) -> bool {
        self.probe_sent = false;
        while self.inflight.front().is_some_and(|&last| last <= match_index) {
            self.inflight.pop_front();
        }
        if match_index <= self.matched {
            return false;
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
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_at_a_time_then_pipelines() {
        let mut p = Progress::new(LogIndex(10));
        assert!(p.can_send(4));
        p.on_sent(LogIndex(10));
        assert!(!p.can_send(4), "probe waits for its reply");
        assert!(p.on_success(LogIndex(10)));
        assert_eq!(p.mode, Mode::Replicate);
        for last in [12, 14, 16, 18] {
            p.on_sent(LogIndex(last));
        }
        assert!(!p.can_send(4), "window of 4 is full");
        assert_eq!(p.next, LogIndex(19));
        assert!(p.on_success(LogIndex(14)));
        assert_eq!(p.inflight(), 2);
    }

    #[test]
    fn stale_success_never_lowers_match() {
        let mut p = Progress::new(LogIndex(0));
        p.on_success(LogIndex(7));
        assert!(!p.on_success(LogIndex(3)));
        assert_eq!(p.matched, LogIndex(7));
    }

    #[test]
    fn probe_from_never_goes_below_match() {
        let mut p = Progress::new(LogIndex(0));
        p.on_success(LogIndex(5));
        p.probe_from(LogIndex(2));
        assert_eq!(p.next, LogIndex(6));
    }
}
