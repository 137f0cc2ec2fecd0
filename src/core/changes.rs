//! Membership changes on the leader (§6, thesis chapter 4): single-server changes, one at a
//! time, only after the leader has committed an entry of its own term (the 2015 fix). A new
//! server joins as a learner, catches up in rounds (thesis §4.2.1), then is promoted.

use std::sync::Arc;

use super::{Action, Core, Notice, Role};
use crate::error::{ConfigError, Error};
use crate::message::{Configuration, Entry, Payload};
use crate::types::{LogIndex, NodeId};

/// A requested change to the cluster's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MembershipChange {
    /// Add a new server: as a learner first, promoted to voter once caught up. Naming a
    /// current learner (one whose addition a leader change interrupted) resumes its catch-up.
    AddNode(NodeId),
    /// Remove a voter or learner. Removing the leader makes it step down once committed.
    RemoveNode(NodeId),
}

/// How many catch-up rounds a new server gets before the addition fails (thesis §4.2.1).
const MAX_CATCH_UP_ROUNDS: u32 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The learner is replicating; `caught_up` once a round finished fast enough.
    CatchingUp { caught_up: bool },
    /// The configuration naming the new voter (or without the removed node) is committing.
    Committing,
    /// Catch-up failed; the configuration without the learner is committing.
    Reverting,
}

/// The leader's bookkeeping for the change under way.
#[derive(Clone, Debug)]
pub(super) struct PendingChange {
    change: MembershipChange,
    stage: Stage,
    round_target: LogIndex,
    round_start: u64,
    rounds: u32,
    deadline: u64,
}

impl<C: Clone> Core<C> {
    /// Validates a change request, then starts it.
    pub(super) fn change_membership(&mut self, change: MembershipChange) {
        if let Err(e) = self.check_change(change) {
            return self.out.push(Action::ChangeDone(Err(e)));
        }
        let mut config = (**self.config()).clone();
        let stage = match change {
            MembershipChange::AddNode(id) => {
                config.learners.insert(id);
                Stage::CatchingUp { caught_up: false }
            }
            MembershipChange::RemoveNode(id) => {
                config.voters.remove(&id);
                config.learners.remove(&id);
                Stage::Committing
            }
        };
        let deadline = self.now + self.timing.catch_up_ticks;
        // NB: re-adding a learner left behind by a leader change resumes its catch-up instead
        // of appending the same configuration again.
        if config != **self.config() {
            self.append_config(config);
        }
        let round_target = self.log.last_index();
        let pending = PendingChange {
            change,
            stage,
            round_target,
            round_start: self.now,
            rounds: 1,
            deadline,
        };
        self.change = Some(pending);
        self.maybe_advance_commit_index();
    }

    fn check_change(&self, change: MembershipChange) -> Result<(), Error> {
        // NB: the reserved id (`ConfigError::ReservedNodeId`) never joins: a `Client` reads it
        // as "no leader known", and no constructor or `add_node` hands it out.
        if let MembershipChange::AddNode(id @ NodeId(u64::MAX)) = change {
            return Err(ConfigError::ReservedNodeId(id).into());
        }
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        if self.change.is_some() || self.membership.has_pending() {
            return Err(Error::ChangeInProgress);
        }
        let not_ready = self.commit_index < self.term_start;
        #[cfg(test)]
        let not_ready = not_ready && !self.bugs.skip_2015_fix;
        if not_ready {
            return Err(Error::LeaderNotReady); // the 2015 fix
        }
        let config = self.config();
        match change {
            MembershipChange::AddNode(id) if config.voters.contains(&id) => {
                Err(Error::AlreadyMember(id))
            }
            MembershipChange::RemoveNode(id) if !config.contains(id) => Err(Error::NotMember(id)),
            MembershipChange::RemoveNode(id)
                if config.voters.len() == 1 && config.voters.contains(&id) =>
            {
                Err(Error::LastVoter(id))
            }
            _ => Ok(()),
        }
    }

    fn append_config(&mut self, config: Configuration) {
        self.append(Entry { term: self.term, payload: Payload::Config(Arc::new(config)) });
        self.broadcast_append();
    }

    /// A catch-up round ends when the learner holds everything the leader had when it began
    /// (thesis §4.2.1); called on the learner's progress and on every leader tick.
    pub(super) fn on_peer_progress(&mut self, peer: NodeId) {
        if self.change.as_ref().is_some_and(|c| c.change == MembershipChange::AddNode(peer)) {
            self.check_catch_up_round();
            self.advance_change();
        }
    }

    pub(super) fn tick_change(&mut self) {
        if self.change.is_some() {
            self.check_catch_up_round();
            self.advance_change();
        }
    }

    fn check_catch_up_round(&mut self) {
        let (now, fast, last) = (self.now, self.timing.election_ticks.start, self.log.last_index());
        let Some(c) = self.change.as_mut() else { return };
        let (Stage::CatchingUp { caught_up: false }, MembershipChange::AddNode(peer)) =
            (c.stage, c.change)
        else {
            return;
        };
        let matched = self.progress.get(&peer).map_or(LogIndex(0), |p| p.matched);
        if matched < c.round_target {
            return;
        }
        // A round as short as an election timeout means the learner keeps up. A new round the
        // learner has already finished (an idle leader) counts as short.
        if now - c.round_start <= fast || matched >= last {
            c.stage = Stage::CatchingUp { caught_up: true };
        } else {
            c.rounds += 1;
            c.round_target = last;
            c.round_start = now;
        }
    }

    /// After a commit on the leader: fold committed configurations, move the change along,
    /// and step down if this leader is no longer a voter (§6).
    pub(super) fn on_commit_advanced(&mut self) {
        self.membership.on_commit(self.commit_index);
        self.advance_change();
        if self.role == Role::Leader && !self.membership.has_pending() && !self.is_voter() {
            let reason = "its removal from the configuration committed";
            self.notice(Notice::SteppedDown { term: self.term, reason });
            self.become_follower(self.term, None);
        }
    }

    /// Moves the pending change to its next stage once the previous configuration committed.
    fn advance_change(&mut self) {
        let Some(c) = self.change.clone() else { return };
        if self.membership.has_pending() {
            return; // one configuration entry in flight at a time
        }
        let failed = c.rounds > MAX_CATCH_UP_ROUNDS || self.now > c.deadline;
        match (c.stage, c.change) {
            (Stage::CatchingUp { caught_up: true }, MembershipChange::AddNode(id)) => {
                self.set_stage(Stage::Committing);
                let mut config = (**self.config()).clone();
                config.learners.remove(&id);
                config.voters.insert(id);
                self.append_config(config);
                self.maybe_advance_commit_index();
            }
            (Stage::CatchingUp { .. }, MembershipChange::AddNode(id)) if failed => {
                self.set_stage(Stage::Reverting);
                let mut config = (**self.config()).clone();
                config.learners.remove(&id);
                self.append_config(config);
                self.maybe_advance_commit_index();
            }
            (Stage::Committing, _) => self.finish_change(Ok((**self.config()).clone())),
            (Stage::Reverting, MembershipChange::AddNode(id)) => {
                self.finish_change(Err(Error::CatchUpFailed(id)))
            }
            _ => {}
        }
    }

    fn set_stage(&mut self, stage: Stage) {
        if let Some(c) = self.change.as_mut() {
            c.stage = stage;
        }
    }

    fn finish_change(&mut self, result: Result<Configuration, Error>) {
        self.change = None;
        self.out.push(Action::ChangeDone(result));
    }

    /// Leadership lost mid-change: the requester must look at the configuration to learn the
    /// outcome, since the entry may still commit under the next leader.
    pub(super) fn abandon_change(&mut self) {
        if self.change.take().is_some() {
            self.out.push(Action::ChangeDone(Err(Error::NotLeader { leader_hint: None })));
        }
    }
}
