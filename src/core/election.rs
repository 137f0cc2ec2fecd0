//! Leader election (§5.2, §5.4.1, thesis §9.6): timers, campaigns, votes, and CheckQuorum.

use super::progress::Progress;
use super::{vote_reply, Core, Notice, Role};
use crate::message::{Body, Entry, Payload, RequestVote, RequestVoteReply};
use crate::types::{NodeId, Term};

impl<C: Clone> Core<C> {
    /// One tick of logical time: election timeout for followers and candidates, heartbeats and
    /// CheckQuorum for leaders.
    pub(super) fn tick(&mut self) {
        self.now += 1;
        self.election_elapsed += 1;
        if self.role == Role::Leader {
            return self.tick_leader();
        }
        if self.election_elapsed >= self.election_timeout {
            self.reset_election_timer();
            // FOL-2 / CAN-4: time out into a (pre-)election; learners and nodes whose removal
            // committed never do.
            if self.may_campaign() {
                self.campaign(false, !self.timing.pre_vote);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.timing.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat(); // LEAD-1
        }
        if self.election_elapsed >= self.timing.election_ticks.start {
            self.election_elapsed = 0;
            self.maybe_step_down_without_quorum();
        }
        self.tick_change();
    }

    /// Voters campaign; so does a server whose own removal is still uncommitted (thesis §4.2.2:
    /// it "should still start elections" but not count its own vote, which `maybe_win` ensures
    /// by counting only the configuration's voters).
    // NB (sim fix, seeds 286 and 11 of the membership schedules): a leader that appended its
    // own removal and crashed could never be replaced: it would not campaign, and the remaining
    // voter's shorter log could not win its vote.
    fn may_campaign(&self) -> bool {
        self.is_voter() || self.membership.votes_in_any(self.id)
    }

    /// CheckQuorum (thesis §6.2): a leader that has not heard from a majority in an election
    /// timeout may be partitioned away; step down so clients look elsewhere.
    fn maybe_step_down_without_quorum(&mut self) {
        let active =
            |id: NodeId| id == self.id || self.progress.get(&id).is_some_and(|p| p.recent_active);
        let has_quorum = self.config().has_quorum(active);
        #[cfg(test)]
        let has_quorum = match self.elected_voters() {
            Some(v) if self.bugs.leader_counts_elected_voters => {
                v.iter().filter(|&&id| active(id)).count() * 2 > v.len()
            }
            _ => has_quorum,
        };
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
        if self.timing.check_quorum && !has_quorum {
            let reason = "no quorum heard within an election timeout (CheckQuorum)";
            self.notice(Notice::SteppedDown { term: self.term, reason });
            self.become_follower(self.term, None);
        }
    }

    /// CAN-1: start an election. With `real` false this is the pre-vote round (§9.6), which
    /// does not raise the term. `transfer` marks a campaign that may disrupt a live leader.
    pub(super) fn campaign(&mut self, transfer: bool, real: bool) {
        if !self.may_campaign() || self.role == Role::Leader {
            return;
        }
        #[cfg(test)]
        let keep = self.bugs.keep_votes_across_elections;
        #[cfg(not(test))]
        let keep = false;
        if !keep {
            self.votes.clear();
        }
        self.reset_election_timer(); // CAN-1(c), fresh random value
        if real {
            self.term = self.term.next(); // CAN-1(a)
            self.voted_for = Some(self.id); // CAN-1(b)
            self.persist_hard_state = true;
            self.role = Role::Candidate;
        } else {
            self.role = Role::PreCandidate;
        }
        self.leader = None;
        self.votes.insert(self.id, true);
        self.request_votes(transfer, !real);
        self.maybe_win();
    }

    /// CAN-1(d): ask every other voter.
    fn request_votes(&mut self, transfer: bool, pre_vote: bool) {
        let term = if pre_vote { self.term.next() } else { self.term };
        let rv = RequestVote {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote,
            transfer,
        };
        let voters: Vec<NodeId> =
            self.config().voters.iter().copied().filter(|&v| v != self.id).collect();
        for to in voters {
            self.send_in(term, to, Body::RequestVote(rv));
        }
    }

    /// RV-1/RV-2 (and the pre-vote variant): `term >= self.term` here.
    pub(super) fn handle_request_vote(&mut self, from: NodeId, term: Term, rv: RequestVote) {
        let up_to_date = self.log.is_up_to_date(rv.last_log_index, rv.last_log_term);
        #[cfg(test)]
        let up_to_date = up_to_date || self.bugs.skip_election_restriction;
        if !up_to_date && !self.is_voter() {
            // A voter that still counts this node cannot win without it: its removal may be
            // uncommitted after all, so it may campaign again to finish it (issue 12).
            self.membership.restore_campaign_right();
        }
        if rv.pre_vote {
            // Would vote: a later term (or ours with no leader) and an up-to-date log.
            // A grant carries the pre-vote's term so the pre-candidate counts it; a refusal
            // carries ours, so a pre-candidate behind us catches up (ALL-2).
            let grant = up_to_date && term > self.term;
            let reply_term = if grant { term } else { self.term };
            return self.send_in(reply_term, from, vote_reply(grant, true));
        }
        let free = self.voted_for.is_none_or(|v| v == from);
        #[cfg(test)]
        let free = free || self.bugs.ignore_voted_for;
        let grant = free && up_to_date && self.leader.is_none_or(|l| l == from);
        if grant {
            self.voted_for = Some(from);
            self.persist_hard_state = true;
            self.reset_election_timer(); // SUB-3: only when granting
        }
        self.send(from, vote_reply(grant, false));
    }

    /// CAN-2: count a vote (or pre-vote) from this election.
    pub(super) fn handle_vote_reply(&mut self, from: NodeId, term: Term, reply: RequestVoteReply) {
        if !self.counts_vote(term, &reply) {
            return; // stale or from another round
        }
        self.votes.insert(from, reply.granted);
        self.maybe_win();
    }

    /// Whether a vote reply in `term` belongs to the election this node is running.
    pub(super) fn counts_vote(&self, term: Term, reply: &RequestVoteReply) -> bool {
        match self.role {
            Role::PreCandidate => reply.pre_vote && term == self.term.next(),
            Role::Candidate => !reply.pre_vote && term == self.term,
            _ => false,
        }
    }

    fn maybe_win(&mut self) {
        let config = std::sync::Arc::clone(self.config());
        if config.has_quorum(|id| self.votes.get(&id) == Some(&true)) {
            match self.role {
                Role::PreCandidate => self.campaign(false, true),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
        } else if config.has_quorum(|id| self.votes.get(&id) == Some(&false)) {
            self.become_follower(self.term, None); // lost; wait out a fresh timeout
        }
    }

    /// Won the election: fresh progress for everyone, then the term's no-op (SUB-4), which
    /// doubles as the first heartbeat (LEAD-1).
    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        self.notice(Notice::ElectionWon { term: self.term });
        let last = self.log.last_index();
        let peers: Vec<NodeId> = self.config().members().filter(|&m| m != self.id).collect();
        self.progress = peers.into_iter().map(|id| (id, Progress::new(last))).collect();
        self.term_start = last.next();
        // What it inherited uncommitted counts against the cap too (the no-op counts nothing).
        self.uncommitted_bytes = self.bytes_between(self.commit_index, last);
        self.append(Entry { term: self.term, payload: Payload::Noop });
        self.maybe_advance_commit_index();
        self.broadcast_append();
    }
}
