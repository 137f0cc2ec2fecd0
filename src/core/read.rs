//! Linearizable reads without the log (thesis §6.4): ReadIndex on the leader, lease reads
//! (§6.4.1) and follower reads.
//!
//! The leader answers a read at a *read index*: its commit index when the read arrived, but at
//! least the index of its term's no-op (SUB-4), since before that commits the leader cannot know
//! its commit index is current. It then confirms that a majority still follows it with a
//! [`ReadConfirm`] round *started after the read arrived*, and emits [`Action::ReadReady`]; the
//! driver answers once the state machine has applied through the index. Rounds are numbered, so
//! a late reply confirms only the round it answers: every read queued while a round is in flight
//! waits for the next one, and one round serves them all (batching).
//!
//! Bounded state: at most one round is outstanding (R1): a heartbeat resends the round in
//! flight to the voters that have not answered it instead of starting another, and the next
//! starts when it is confirmed. A read that waited a minimum election timeout for its round
//! fails with `Error::Timeout` (R2), as a follower's forwarded read does: a leader cut off
//! from its majority without CheckQuorum then holds only the reads of the last timeout.
//!
//! With `Config::lease_reads`, a majority's acknowledgement of a round started at tick `t` gives
//! the leader a lease until `t + Config::lease_ticks()`: no other leader can be elected before,
//! because every follower that acknowledged ignores candidates for a minimum election timeout
//! (thesis §4.2.3, `leader_is_recent`). While it holds, reads skip the round, unless their
//! caller chose [`ReadPolicy::ReadIndex`]: the policy travels with each read (a follower's in
//! [`Body::ReadIndexByRound`]), and only here is it weighed against the lease.
//!
//! A follower forwards its reads' ids to the leader ([`ReadIndex`]), which treats them as its
//! own reads and answers with the read index; the follower then waits until it has applied
//! through it. Owns only read bookkeeping: it never touches the log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Action, Core, Role};
use crate::error::Error;
use crate::message::{Body, ReadConfirm, ReadIndex, ReadIndexReply};
use crate::types::{LogIndex, NodeId, Term};

/// A read's number on the node that received it (the driver numbers them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadId(pub u64);

/// How a read was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadPath {
    /// The leader confirmed its leadership with a round after the read arrived.
    ReadIndex,
    /// The leader answered within its lease, without a round.
    Lease,
    /// A follower got the read index from the leader.
    Follower,
}

/// How a leader may confirm a read, chosen per read by its caller. Either way the read is
/// linearizable; they differ in what they rely on and what they cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReadPolicy {
    /// Within the leader's lease if it holds (thesis §6.4.1), with no round; otherwise by a
    /// confirmation round, as [`ReadPolicy::ReadIndex`]. A lease exists only with
    /// `Config::lease_reads` (which requires `check_quorum`): on a cluster without it, or
    /// while no lease holds (just elected, after a stall, handing leadership over), this
    /// policy reads by ReadIndex. What a read without a policy does.
    #[default]
    Lease,
    /// Always by a confirmation round started after the read arrived (thesis §6.4), even
    /// while a lease holds: it relies on no clock (the lease relies on
    /// `Config::clock_drift_bound`), at the cost of a round of messages and a round trip.
    ReadIndex,
}

/// Who waits for a leader's read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Local,
    Follower(NodeId),
}

/// Reads waiting for a confirmation round.
#[derive(Clone, Debug)]
struct Pending {
    /// The first round that confirms them: the first one started after they arrived.
    round: u64,
    /// The tick they arrived at: they fail an election timeout later (R2).
    arrived: u64,
    index: LogIndex,
    origin: Origin,
    ids: Vec<ReadId>,
}

/// A follower's reads sent to the leader.
#[derive(Clone, Debug)]
struct Asked {
    leader: NodeId,
    term: Term,
    sent_at: u64,
}

/// The read state of one core.
#[derive(Clone, Debug, Default)]
pub(super) struct Reads {
    /// The leader term this state belongs to (leader state is reset on any other).
    term: Term,
    /// Leader: the last round started this term.
    round: u64,
    /// Leader: the highest round a majority acknowledged.
    confirmed: u64,
    /// Leader: the highest round each peer acknowledged.
    acked: BTreeMap<NodeId, u64>,
    /// Leader: the tick each round above `confirmed` started at (at most one, R1).
    started: VecDeque<(u64, u64)>,
    /// Leader: the lease holds while `now < lease_until`.
    lease_until: u64,
    pending: VecDeque<Pending>,
    /// Follower: reads asked of the leader, by id.
    asked: BTreeMap<ReadId, Asked>,
    /// Leader: the voters of the configuration it was elected under (for the test-only
    /// switch `Bugs::leader_counts_elected_voters`).
    #[cfg(test)]
    elected_voters: BTreeSet<NodeId>,
}

impl Reads {
    /// Whether this is the state a non-leader keeps: no leader state, nothing pending.
    fn is_reset(&self) -> bool {
        self.term == Term(0)
            && self.round == 0
            && self.confirmed == 0
            && self.lease_until == 0
            && self.acked.is_empty()
            && self.started.is_empty()
            && self.pending.is_empty()
    }
}

impl<C: Clone> Core<C> {
    /// `Input::Read`: serve `ids` as a leader, or ask the leader as a follower.
    pub(super) fn read(&mut self, ids: Vec<ReadId>, policy: ReadPolicy) {
        if ids.is_empty() {
            return;
        }
        self.sync_reads();
        match (self.role, self.leader) {
            (Role::Leader, _) => self.leader_read(Origin::Local, ids, policy),
            (Role::Follower, Some(leader)) => self.ask_leader(leader, ids, policy),
            _ => self.out.push(Action::ReadFailed { ids, error: self.not_leader() }),
        }
    }

    /// Whether this leader's lease holds now (thesis §6.4.1).
    pub fn has_lease(&self) -> bool {
        self.role == Role::Leader
            && self.timing.lease_ticks > 0
            && self.reads.term == self.term
            && self.now < self.reads.lease_until
    }

    /// The runtime's clock says this leader's lease has run out, though the ticks counted
    /// here may say otherwise: a node whose loop stalled (a pause, a slow disk) missed ticks,
    /// and its tick count lags real time. Forgets the lease; reads then confirm by a round.
    pub fn expire_lease(&mut self) {
        self.reads.lease_until = 0;
    }

    /// While this leader's lease holds: the tick its latest confirmed round started at (the
    /// lease runs `Config::lease_ticks()` from it) and the read index a read would get now.
    /// What a runtime publishes for reads served off the node's thread.
    pub fn lease_read(&self) -> Option<(u64, LogIndex)> {
        let start = self.reads.lease_until.checked_sub(self.timing.lease_ticks)?;
        self.has_lease().then(|| (start, self.commit_index.max(self.term_start)))
    }

    /// The core's logical clock: ticks since it started.
    pub fn now_tick(&self) -> u64 {
        self.now
    }

    pub(super) fn reads_waiting(&self) -> usize {
        self.reads.pending.len()
    }

    pub(super) fn reads_outstanding(&self) -> u64 {
        self.reads.round.saturating_sub(self.reads.confirmed)
    }

    /// The last read round this leader started (for the gateway).
    pub(super) fn reads_round(&self) -> u64 {
        self.reads.round
    }

    fn leader_read(&mut self, origin: Origin, ids: Vec<ReadId>, policy: ReadPolicy) {
        // Before its no-op commits, a leader's commit index may be behind; the no-op's index is
        // a safe read index since every entry committed before this term precedes it.
        let index = self.commit_index.max(self.term_start);
        #[cfg(test)]
        if self.bugs.read_without_confirmation {
            return self.read_ready(origin, ids, index, ReadPath::ReadIndex);
        }
        if self.lease_allowed(policy) && self.has_lease() {
            return self.read_ready(origin, ids, index, ReadPath::Lease);
        }
        let (round, arrived) = (self.reads.round + 1, self.now);
        self.reads.pending.push_back(Pending { round, arrived, index, origin, ids });
        if self.reads.confirmed == self.reads.round {
            self.start_read_round(); // none in flight: start one now
        }
    }

    fn read_ready(&mut self, origin: Origin, ids: Vec<ReadId>, index: LogIndex, path: ReadPath) {
        match origin {
            Origin::Local => self.out.push(Action::ReadReady { ids, index, path }),
            Origin::Follower(to) => {
                let ids = ids.into_iter().map(|id| id.0).collect();
                self.send(to, Body::ReadIndexReply(ReadIndexReply { ids, index: Some(index) }));
            }
        }
    }

    /// Sends a numbered ReadConfirm to every other voter. A one-voter cluster confirms at once.
    fn start_read_round(&mut self) {
        self.reads.round += 1;
        let round = self.reads.round;
        self.reads.started.push_back((round, self.now));
        let voters: Vec<NodeId> =
            self.config().voters.iter().copied().filter(|&v| v != self.id).collect();
        for to in voters {
            self.send(to, Body::ReadConfirm(ReadConfirm { round }));
        }
        self.maybe_confirm_reads();
    }

    /// A follower's side of a round: the sender leads this term (the gateway checked), so this
    /// is a heartbeat too (CAN-3, SUB-3).
    pub(super) fn handle_read_confirm(&mut self, from: NodeId, confirm: ReadConfirm) {
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.heard_from_leader();
        self.send(from, Body::ReadConfirmReply(confirm));
    }

    pub(super) fn handle_read_confirm_reply(&mut self, from: NodeId, confirm: ReadConfirm) {
        if self.role != Role::Leader || self.reads.term != self.term {
            return;
        }
        if let Some(p) = self.progress.get_mut(&from) {
            p.recent_active = true; // a sign of life for CheckQuorum
        }
        let acked = self.reads.acked.entry(from).or_insert(0);
        *acked = (*acked).max(confirm.round);
        self.maybe_confirm_reads();
    }

    /// Releases the reads whose round a majority acknowledged, and renews the lease.
    fn maybe_confirm_reads(&mut self) {
        let (me, round) = (self.id, self.reads.round);
        let acked = &self.reads.acked;
        let majority = majority_round(self.read_voters().iter().map(|&v| {
            if v == me {
                round
            } else {
                acked.get(&v).copied().unwrap_or(0)
            }
        }));
        if majority <= self.reads.confirmed {
            return;
        }
        self.reads.confirmed = majority;
        while let Some(&(r, at)) = self.reads.started.front() {
            if r > majority {
                break;
            }
            self.reads.started.pop_front();
            // NB: no renewal while handing leadership over: the lease must run out first.
            let renew = self.transfer.is_none() || self.transfer_ignores_lease();
            if r == majority && self.timing.lease_ticks > 0 && renew {
                self.reads.lease_until = self.reads.lease_until.max(at + self.timing.lease_ticks);
            }
        }
        while self.reads.pending.front().is_some_and(|p| p.round <= majority) {
            let p = self.reads.pending.pop_front().expect("checked above");
            self.read_ready(p.origin, p.ids, p.index, ReadPath::ReadIndex);
        }
        if !self.reads.pending.is_empty() && self.reads.confirmed == self.reads.round {
            self.start_read_round();
        }
    }

    /// The voters whose acknowledgements confirm a round: those of the configuration in
    /// force, the latest in the log (the test-only switch `Bugs::leader_counts_elected_voters`
    /// counts those of the configuration this leader was elected under instead).
    fn read_voters(&self) -> &BTreeSet<NodeId> {
        #[cfg(test)]
        if let Some(v) = self.elected_voters().filter(|_| self.bugs.leader_counts_elected_voters) {
            return v;
        }
        &self.config().voters
    }

    /// The voters of the configuration this leader was elected under, once its read state
    /// is set up (for the test-only switch `Bugs::leader_counts_elected_voters`).
    #[cfg(test)]
    pub(super) fn elected_voters(&self) -> Option<&BTreeSet<NodeId>> {
        let r = &self.reads;
        (self.role == Role::Leader && r.term == self.term && !r.elected_voters.is_empty())
            .then_some(&r.elected_voters)
    }

    /// Whether reads of `policy` may be served from the lease (the test-only switch
    /// `Bugs::lease_for_every_read` lets every read; always as chosen outside tests).
    fn lease_allowed(&self, policy: ReadPolicy) -> bool {
        #[cfg(test)]
        if self.bugs.lease_for_every_read {
            return true;
        }
        policy == ReadPolicy::Lease
    }

    /// Leader: a follower asks for a read index, for reads of `policy`.
    pub(super) fn handle_read_index(
        &mut self,
        from: NodeId,
        request: ReadIndex,
        policy: ReadPolicy,
    ) {
        self.sync_reads();
        let ids = request.ids.into_iter().map(ReadId).collect();
        if self.role == Role::Leader {
            return self.leader_read(Origin::Follower(from), ids, policy);
        }
        let ids = request_ids(ids);
        self.send(from, Body::ReadIndexReply(ReadIndexReply { ids, index: None }));
    }

    fn ask_leader(&mut self, leader: NodeId, ids: Vec<ReadId>, policy: ReadPolicy) {
        let asked = Asked { leader, term: self.term, sent_at: self.now };
        for &id in &ids {
            self.reads.asked.insert(id, asked.clone());
        }
        let request = ReadIndex { ids: request_ids(ids) };
        let body = match policy {
            ReadPolicy::Lease => Body::ReadIndex(request),
            ReadPolicy::ReadIndex => Body::ReadIndexByRound(request),
        };
        self.send(leader, body);
    }

    /// Follower: the leader's answer. Ids this node no longer waits for are ignored.
    pub(super) fn handle_read_index_reply(&mut self, reply: ReadIndexReply) {
        let ids: Vec<ReadId> = reply
            .ids
            .into_iter()
            .map(ReadId)
            .filter(|id| self.reads.asked.remove(id).is_some())
            .collect();
        if ids.is_empty() {
            return;
        }
        match reply.index {
            Some(index) => {
                self.out.push(Action::ReadReady { ids, index, path: ReadPath::Follower })
            }
            None => self.out.push(Action::ReadFailed { ids, error: self.not_leader() }),
        }
    }

    /// After every step: leader state belongs to one term of leadership, a follower's reads to
    /// the leader it asked. Anything else fails with `NotLeader` (a read is always safe to
    /// retry: it changed nothing).
    pub(super) fn sync_reads(&mut self) {
        let leading = self.role == Role::Leader;
        // NB: every step of every follower comes here; when nothing is held, abandoning would
        // rebuild the same empty state (a measurable share of the simulator's time).
        if !leading && self.reads.is_reset() {
            return self.fail_asked(|a, core| Some(a.leader) != core.leader || a.term != core.term);
        }
        if self.reads.term != self.term || !leading {
            self.abandon_leader_reads(leading);
        }
        self.fail_asked(|a, core| Some(a.leader) != core.leader || a.term != core.term);
    }

    fn abandon_leader_reads(&mut self, leading: bool) {
        let pending = std::mem::take(&mut self.reads.pending);
        let asked = std::mem::take(&mut self.reads.asked);
        self.reads =
            Reads { term: if leading { self.term } else { Term(0) }, asked, ..Reads::default() };
        #[cfg(test)]
        if leading {
            self.reads.elected_voters = self.config().voters.clone();
        }
        let error = self.not_leader();
        for p in pending {
            match p.origin {
                Origin::Local => {
                    self.out.push(Action::ReadFailed { ids: p.ids, error: error.clone() })
                }
                Origin::Follower(to) => {
                    let ids = request_ids(p.ids);
                    self.send(to, Body::ReadIndexReply(ReadIndexReply { ids, index: None }));
                }
            }
        }
    }

    fn fail_asked(&mut self, failed: impl Fn(&Asked, &Self) -> bool) {
        if self.reads.asked.is_empty() {
            return;
        }
        let asked = std::mem::take(&mut self.reads.asked);
        let (gone, kept): (BTreeMap<_, _>, BTreeMap<_, _>) =
            asked.into_iter().partition(|(_, a)| failed(a, self));
        self.reads.asked = kept;
        if !gone.is_empty() {
            let ids = gone.into_keys().collect();
            self.out.push(Action::ReadFailed { ids, error: self.not_leader() });
        }
    }

    /// Each tick: a leader retries an unanswered round with every heartbeat, or starts one
    /// (with leases, to renew its lease), and fails the reads that waited an election timeout;
    /// a follower gives up on reads the leader left unanswered for an election timeout.
    pub(super) fn tick_reads(&mut self) {
        self.sync_reads();
        if self.role == Role::Leader {
            let heartbeat = self.heartbeat_elapsed == 0;
            let lease = self.timing.lease_ticks > 0;
            if heartbeat && (!self.reads.pending.is_empty() || lease) {
                self.retry_read_round();
            }
            return self.expire_leader_reads();
        }
        let (now, patience) = (self.now, self.timing.election_ticks.start);
        let stale: Vec<ReadId> = self
            .reads
            .asked
            .iter()
            .filter(|(_, a)| now.saturating_sub(a.sent_at) >= patience)
            .map(|(&id, _)| id)
            .collect();
        if !stale.is_empty() {
            for id in &stale {
                self.reads.asked.remove(id);
            }
            self.out.push(Action::ReadFailed { ids: stale, error: Error::Timeout });
        }
    }
}

impl<C: Clone> Core<C> {
    /// A heartbeat while reads wait (or a lease wants renewing): resend the round in flight to
    /// the voters that have not acknowledged it, or start one if none is (R1: at most one
    /// outstanding). A resent round is the same round: a reply to it still comes after it
    /// started, so it confirms exactly the reads it confirmed before (thesis §6.4), and a
    /// lease renewed by it runs from its first start (shorter, never longer).
    fn retry_read_round(&mut self) {
        let round = self.reads.round;
        #[cfg(test)]
        if self.bugs.read_rounds_pile_up {
            return self.start_read_round();
        }
        if self.reads.confirmed == round {
            return self.start_read_round();
        }
        let me = self.id;
        let acked = &self.reads.acked;
        let silent: Vec<NodeId> = self
            .config()
            .voters
            .iter()
            .copied()
            .filter(|&v| v != me && acked.get(&v).is_none_or(|&r| r < round))
            .collect();
        for to in silent {
            self.send(to, Body::ReadConfirm(ReadConfirm { round }));
        }
    }

    /// R2: a leader's read that waited an election timeout for its round fails with
    /// `Timeout`, as a follower's does (a read changes nothing: retrying is safe). A
    /// follower's read forwarded here is dropped: the follower's own deadline, which started
    /// earlier, fails it there.
    fn expire_leader_reads(&mut self) {
        let (now, patience) = (self.now, self.timing.election_ticks.start);
        let mut expired = Vec::new();
        while self.reads.pending.front().is_some_and(|p| now.saturating_sub(p.arrived) >= patience)
        {
            let p = self.reads.pending.pop_front().expect("checked above");
            #[cfg(test)]
            if self.bugs.serve_reads_after_timeout {
                self.read_ready(p.origin, p.ids, p.index, ReadPath::ReadIndex);
                continue;
            }
            if p.origin == Origin::Local {
                expired.extend(p.ids);
            }
        }
        if !expired.is_empty() {
            self.out.push(Action::ReadFailed { ids: expired, error: Error::Timeout });
        }
    }

    /// Ticks until the first read times out (`tick_reads`): a read asked of the leader, or a
    /// leader's own waiting read; `u64::MAX` if none waits.
    pub(super) fn read_deadline_ticks(&self) -> u64 {
        let patience = self.timing.election_ticks.start;
        let due = |at: u64| (at + patience).saturating_sub(self.now).max(1);
        let asked = self.reads.asked.values().map(|a| due(a.sent_at)).min();
        let waiting = self.reads.pending.front().map(|p| due(p.arrived));
        asked.into_iter().chain(waiting).min().unwrap_or(u64::MAX)
    }

    /// R1 and R2 (`invariants.rs`): a leader has at most one read round outstanding, and no
    /// read of its waits past its deadline. `Err` names the invariant and what was found.
    pub(super) fn reads_bounded(&self) -> Result<(), (&'static str, String)> {
        if self.role != Role::Leader {
            return Ok(());
        }
        let r = &self.reads;
        if r.round.saturating_sub(r.confirmed) > 1 || r.started.len() > 1 {
            return Err(("R1", format!("rounds {}..={} outstanding", r.confirmed + 1, r.round)));
        }
        let patience = self.timing.election_ticks.start;
        let late = |p: &&Pending| self.now.saturating_sub(p.arrived) >= patience;
        if let Some(p) = r.pending.front().filter(late) {
            let detail =
                format!("reads {:?} waiting since tick {} (now {})", p.ids, p.arrived, self.now);
            return Err(("R2", detail));
        }
        Ok(())
    }
}

fn request_ids(ids: Vec<ReadId>) -> Vec<u64> {
    ids.into_iter().map(|id| id.0).collect()
}

/// The highest round acknowledged by a majority, given each voter's highest round.
fn majority_round(rounds: impl Iterator<Item = u64>) -> u64 {
    let mut rounds: Vec<u64> = rounds.collect();
    if rounds.is_empty() {
        return 0;
    }
    rounds.sort_unstable_by(|a, b| b.cmp(a));
    rounds[rounds.len() / 2]
}
