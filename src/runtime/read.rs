//! Linearizable reads from the thread runtime (thesis §6.4): [`NodeHandle::read`],
//! [`Client::read`] and [`Cluster::read`], for state machines that implement
//! [`ReadStateMachine`].
//!
//! A read sent to the leader is confirmed by a heartbeat round (or its lease); a read sent to a
//! follower asks the leader for a read index and is answered by the follower once it has
//! applied through it (a follower read). A read changes nothing, so every failure is safe to
//! retry; [`Client::read`] does so until its deadline.

use std::time::{Duration, Instant};

use super::client::{Client, NodeHandle};
use super::cluster::Cluster;
use crate::core::ReadPolicy;
use crate::error::Error;
use crate::node::{deadline_after, Applied, Monotonic, Receipt, Request};
use crate::state_machine::ReadStateMachine;
use crate::types::{NodeId, Term};

impl<S: ReadStateMachine> NodeHandle<S> {
    /// With lease reads on (`Config::lease_reads`) and this node's lease holding: runs
    /// `query` here, on the caller's thread, once the state machine has applied through the
    /// read index the node published (see `node::read::LeaseView`), with no trip through the
    /// node's queue. `None`: take the node's path (no lease, state machine busy or behind).
    fn read_locally<R>(&self, query: impl FnOnce(&S) -> R) -> Option<Applied<R>> {
        let local = self.local.as_ref()?;
        // The same function the simulator's clients call, there on a virtual clock.
        let (output, index) = local.lease.read_locally(&Monotonic, &*local.backlog, query)?;
        Some(Applied { index, term: Term(0), output })
    }

    /// Sends a linearizable read to this node without waiting. On the leader it is confirmed
    /// by a heartbeat round (or within its lease); on a follower it is a follower read. The
    /// receipt's [`Applied`] holds the answer, and as `index` the log index the state had been
    /// applied through when the query ran (`term` is 0: a read has no entry).
    pub fn read_async(&self, query: S::Query) -> Result<Receipt<S::Answer>, Error> {
        self.read_async_with(query, ReadPolicy::Lease)
    }

    /// [`NodeHandle::read_async`], confirmed as `policy` allows: [`ReadPolicy::ReadIndex`]
    /// always waits for a heartbeat round started after the read arrived, even while the
    /// leader's lease holds (for a follower read too: the follower asks the leader for a
    /// round); [`ReadPolicy::Lease`] is what `read_async` does.
    pub fn read_async_with(
        &self,
        query: S::Query,
        policy: ReadPolicy,
    ) -> Result<Receipt<S::Answer>, Error> {
        self.read_by(query, policy, None)
    }

    /// [`NodeHandle::read_async_with`], waiting for room in a full queue until `deadline` at
    /// most (`None`: as long as it takes).
    pub(super) fn read_by(
        &self,
        query: S::Query,
        policy: ReadPolicy,
        deadline: Option<Instant>,
    ) -> Result<Receipt<S::Answer>, Error> {
        if policy == ReadPolicy::Lease {
            if let Some(applied) = self.read_locally(|sm| sm.query(&query)) {
                return Ok(Receipt::ready(self.id(), Ok(applied)));
            }
        }
        let (read, receipt) = self.read_receipt(query, |sm: &S, query| sm.query(query));
        self.send_read(Request::Read { read, policy }, deadline)?;
        Ok(receipt)
    }

    /// A linearizable read at this node, waiting up to `timeout`. Fails with `NotLeader` when
    /// neither this node nor a leader it knows can serve it, `QueueFull` when the node's
    /// request queue stays full until the deadline, `Timeout` when the node had not answered
    /// by then; always safe to retry (one attempt: [`Client::read`] retries for you).
    pub fn read(&self, query: S::Query, timeout: Duration) -> Result<S::Answer, Error> {
        self.read_with(query, ReadPolicy::Lease, timeout)
    }

    /// [`NodeHandle::read`], confirmed as `policy` allows (see [`ReadPolicy`]): say, most
    /// reads by the lease and those that must not rely on clocks by a heartbeat round
    /// (`ReadPolicy::ReadIndex`). On a cluster without `Config::lease_reads` there is no
    /// lease, and `ReadPolicy::Lease` reads by a round too.
    pub fn read_with(
        &self,
        query: S::Query,
        policy: ReadPolicy,
        timeout: Duration,
    ) -> Result<S::Answer, Error> {
        if policy == ReadPolicy::Lease {
            if let Some(applied) = self.read_locally(|sm| sm.query(&query)) {
                return Ok(applied.output); // a lease read: no receipt, no queue
            }
        }
        let deadline = deadline_after(timeout);
        Ok(self.read_by(query, policy, Some(deadline))?.wait_until(deadline)?.output)
    }

    /// Hands a read to the node's queue (asking for forwarding if this handle does), by
    /// `deadline` if any: a queue still full then is `QueueFull` (never handed over), as for
    /// a proposal.
    fn send_read(&self, read: Request<S>, deadline: Option<Instant>) -> Result<(), Error> {
        self.send_by(self.forwardable(read), deadline).map_err(|e| match e {
            Error::Timeout => Error::QueueFull(self.id()),
            e => e,
        })
    }

    /// Sends many linearizable reads as one request, without waiting: one receipt, one trip
    /// through the node's queue and one confirmation (or lease check) for all of them; the
    /// queries run in order, in one pass over the state machine at one applied index, and the
    /// answers come back in the queries' order. Linearizable as a whole: every answer reflects
    /// every write that completed before this call. For high read rates this is far cheaper
    /// per read than [`NodeHandle::read_async`] in a loop.
    pub fn read_many_async(
        &self,
        queries: Vec<S::Query>,
    ) -> Result<Receipt<Vec<S::Answer>>, Error> {
        self.read_many_by(queries, None)
    }

    fn read_many_by(
        &self,
        queries: Vec<S::Query>,
        deadline: Option<Instant>,
    ) -> Result<Receipt<Vec<S::Answer>>, Error> {
        let answers = |sm: &S| queries.iter().map(|q| sm.query(q)).collect();
        if let Some(applied) = self.read_locally(answers) {
            return Ok(Receipt::ready(self.id(), Ok(applied)));
        }
        let run = |sm: &S, queries: &Vec<S::Query>| queries.iter().map(|q| sm.query(q)).collect();
        let (read, receipt) = self.read_receipt(queries, run);
        self.send_read(Request::Read { read, policy: ReadPolicy::Lease }, deadline)?;
        Ok(receipt)
    }

    /// [`NodeHandle::read_many_async`], waiting up to `timeout` for the answers (and for room
    /// in a full queue).
    pub fn read_many(
        &self,
        queries: Vec<S::Query>,
        timeout: Duration,
    ) -> Result<Vec<S::Answer>, Error> {
        let deadline = deadline_after(timeout);
        Ok(self.read_many_by(queries, Some(deadline))?.wait_until(deadline)?.output)
    }
}

impl<S: ReadStateMachine> Client<S> {
    /// A linearizable read at the leader (ReadIndex, or the lease if configured), retrying at
    /// other nodes until the client's timeout ([`Config::request_timeout`](crate::Config)).
    pub fn read(&self, query: S::Query) -> Result<S::Answer, Error>
    where
        S::Query: Clone,
    {
        self.read_timeout(query, self.timeout())
    }

    /// [`Client::read`] with an explicit deadline: [`Client::read_with`] with
    /// [`ReadPolicy::Lease`].
    pub fn read_timeout(&self, query: S::Query, timeout: Duration) -> Result<S::Answer, Error>
    where
        S::Query: Clone,
    {
        self.read_with(query, ReadPolicy::Lease, timeout)
    }

    /// A linearizable read confirmed as `policy` allows ([`ReadPolicy`]), with an explicit
    /// deadline. [`ReadPolicy::Lease`]: within the leader's lease when `Config::lease_reads`
    /// is on and the lease holds, else by a heartbeat round (what [`Client::read`] does).
    /// [`ReadPolicy::ReadIndex`]: always by a round started after the read arrived, relying on
    /// no clock, whatever the configuration. A read changes nothing, so every failure
    /// is retried, at the hinted leader or another node, until the deadline. Then the answer
    /// says why the last attempt failed:
    /// - `Err(Unavailable { last })` if it was refused: `last` is its error (`NotLeader` with
    ///   no leader elected, `NodeDown`, `QueueFull` for a node's request queue full until the
    ///   deadline, `LeaderUnreachable`, `Timeout` from a leader that could not confirm its
    ///   leadership with a majority within an election timeout, a failed node's error...).
    /// - `Err(Timeout)` if it was still waiting for its answer: handed to a node that had not
    ///   answered by the deadline (a slow state machine, a confirmation round under way).
    ///
    /// Either way the read may be retried. It gives up early only with `Shutdown` (no node
    /// runs) and when the one node running reports that its state machine failed
    /// (`StateMachinePanicked`, `RestoreFailed`). The simulator's retrying clients retry a
    /// failed read the same way (`SimConfig::client_retries`).
    pub fn read_with(
        &self,
        query: S::Query,
        policy: ReadPolicy,
        timeout: Duration,
    ) -> Result<S::Answer, Error>
    where
        S::Query: Clone,
    {
        let deadline = deadline_after(timeout);
        let mut target = self.leader_hint().or_else(|| self.running().first().copied());
        let mut attempt = 0usize;
        loop {
            let Some(id) = target else { return Err(Error::Shutdown) };
            // NB: the first attempt has its whole timeout: no clock read before it.
            let refusal = match self.try_read(id, query.clone(), policy, deadline) {
                Ok(answer) => return Ok(answer),
                Err(Error::Timeout) if Instant::now() >= deadline => return Err(Error::Timeout),
                Err(refusal) => refusal,
            };
            match &refusal {
                Error::NotLeader { leader_hint: Some(hint) } if *hint != id => {
                    self.learn_leader(*hint);
                    target = Some(*hint);
                }
                Error::StateMachinePanicked { .. } | Error::RestoreFailed { .. }
                    if self.running().len() <= 1 =>
                {
                    return Err(refusal)
                }
                _ => {
                    attempt += 1;
                    target = self.next_candidate(id, attempt);
                    std::thread::sleep(self.pause_before_retry(deadline));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable { last: Box::new(refusal) });
            }
        }
    }

    /// One read attempt at node `id`, waiting until `deadline`: the answer, or the error
    /// (`Timeout` only if the node had not answered by then; `QueueFull` if its queue stayed
    /// full, `NodeDown` if it is not running).
    fn try_read(
        &self,
        id: NodeId,
        query: S::Query,
        policy: ReadPolicy,
        deadline: Instant,
    ) -> Result<S::Answer, Error> {
        let Some(node) = self.handle(id) else { return Err(Error::NodeDown(id)) };
        let applied = node.read_by(query, policy, Some(deadline))?.wait_until(deadline)?;
        if !self.forward {
            self.learn_leader(id); // (a forwarding node need not lead)
        }
        Ok(applied.output)
    }
}

impl<S: ReadStateMachine> Cluster<S> {
    /// A linearizable read at the leader, retried until [`Config::request_timeout`](crate::Config);
    /// see [`Client::read`].
    pub fn read(&self, query: S::Query) -> Result<S::Answer, Error>
    where
        S::Query: Clone,
    {
        self.client().read(query)
    }

    /// A linearizable read at node `id` (a follower read if it does not lead), waiting up to
    /// [`Config::request_timeout`](crate::Config). `UnknownNode` / `NodeDown` for a node that
    /// does not exist or is not running.
    pub fn read_at(&self, id: NodeId, query: S::Query) -> Result<S::Answer, Error> {
        self.node(id)?.read(query, self.config().request_timeout)
    }
}
