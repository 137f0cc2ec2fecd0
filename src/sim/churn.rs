//! Leader churn (see [`Churn`](super::Churn)): a reactive nemesis that crashes each new leader
//! soon after it wins, and some candidates at once, then restarts them after a short downtime.
//!
//! Reacts only to role changes the simulator observes after a step; draws from the one RNG.

use rand::Rng;

use super::run::FailureKind;
use super::{micros, Event, Simulator};
use crate::core::Role;
use crate::state_machine::StateMachine;
use crate::types::{NodeId, Term};

impl<S: StateMachine> Simulator<S> {
    /// After a step: if `id` just became leader (or candidate), schedule its crash.
    pub(crate) fn maybe_churn(&mut self, id: NodeId, before: (Role, Term)) {
        self.fire_on_new_leader(id, before);
        let Some(churn) = self.config.churn.as_ref().filter(|_| self.churning) else { return };
        let Some(core) = self.core(id) else { return };
        let after = (core.role(), core.term());
        if after == before {
            return;
        }
        let (lifetime, candidate_crash) = (churn.leader_lifetime, churn.candidate_crash);
        let delay = match after.0 {
            Role::Leader => self.rng.random_range(micros(lifetime.0)..=micros(lifetime.1)),
            Role::Candidate if self.rng.random_bool(candidate_crash) => {
                self.rng.random_range(0..micros(self.config.raft.tick).max(1))
            }
            _ => return,
        };
        let incarnation = self.nodes[&id].incarnation;
        self.schedule(delay, Event::Churn { node: id, incarnation, term: after.1 });
    }

    /// Crashes `node` if it is still the incarnation and term churn picked, then schedules
    /// its restart.
    pub(crate) fn on_churn(
        &mut self,
        node: NodeId,
        incarnation: u64,
        term: Term,
    ) -> Result<(), FailureKind> {
        let same = self.nodes[&node].incarnation == incarnation;
        if !self.churning || !same || self.core(node).map(|c| c.term()) != Some(term) {
            return Ok(());
        }
        self.note(format!("churn {node}"));
        self.crash(node).map_err(FailureKind::Fault)?;
        let (min, max) = self.config.churn.as_ref().expect("churn is on").downtime;
        let downtime = self.rng.random_range(micros(min)..=micros(max));
        self.schedule(downtime, Event::Revive { node, incarnation: incarnation + 1 });
        Ok(())
    }

    /// Restarts a node churn crashed, unless something else restarted it since.
    pub(crate) fn on_revive(&mut self, node: NodeId, incarnation: u64) -> Result<(), FailureKind> {
        if self.nodes[&node].incarnation == incarnation {
            self.restart(node).map_err(FailureKind::Fault)?;
        }
        Ok(())
    }
}
