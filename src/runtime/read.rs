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

/// What one read asks of the state machine, and how the state machine answers it: one query
/// ([`One`]) or many, answered in order in one pass ([`Many`]).
trait Reading<S>: Send + 'static {
    type Answer: Clone + Send + 'static;
    fn answer(&self, sm: &S) -> Self::Answer;
}

/// A read of one query: what [`NodeHandle::read`] sends.
#[derive(Clone)]
struct One<Q>(Q);

/// A read of many queries: what [`NodeHandle::read_many`] sends.
#[derive(Clone)]
struct Many<Q>(Vec<Q>);

impl<S: ReadStateMachine> Reading<S> for One<S::Query> {
    type Answer = S::Answer;
    fn answer(&self, sm: &S) -> S::Answer {
        sm.query(&self.0)
    }
}

impl<S: ReadStateMachine> Reading<S> for Many<S::Query> {
    type Answer = Vec<S::Answer>;
    fn answer(&self, sm: &S) -> Vec<S::Answer> {
        self.0.iter().map(|query| sm.query(query)).collect()
    }
}

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

    /// [`NodeHandle::read_locally`] for a read of `policy`: only [`ReadPolicy::Lease`] may be
    /// served by the lease (the core weighs the policy the same way for reads it serves).
    fn lease_read<R: Reading<S>>(
        &self,
        read: &R,
        policy: ReadPolicy,
    ) -> Option<Applied<R::Answer>> {
        if policy != ReadPolicy::Lease {
            return None;
        }
        self.read_locally(|sm| read.answer(sm))
    }

    /// One read, by the lease on the caller's thread if `policy` allows and the lease holds,
    /// else through the node's queue, waiting for room in a full queue until `deadline` at
    /// most (`None`: as long as it takes).
    fn read_of<R: Reading<S>>(
        &self,
        read: R,
        policy: ReadPolicy,
        deadline: Option<Instant>,
    ) -> Result<Receipt<R::Answer>, Error> {
        if let Some(applied) = self.lease_read(&read, policy) {
            return Ok(Receipt::ready(self.id(), Ok(applied)));
        }
        self.send_read_of(read, policy, deadline)
    }

    /// [`NodeHandle::read_of`], waiting up to `timeout` for the answer.
    fn read_until<R: Reading<S>>(
        &self,
        read: R,
        policy: ReadPolicy,
        timeout: Duration,
    ) -> Result<R::Answer, Error> {
        if let Some(applied) = self.lease_read(&read, policy) {
            return Ok(applied.output); // a lease read: no receipt, no queue
        }
        let deadline = deadline_after(timeout);
        Ok(self.send_read_of(read, policy, Some(deadline))?.wait_until(deadline)?.output)
    }

    /// The read through the node's queue, for the core to confirm as `policy` allows.
    fn send_read_of<R: Reading<S>>(
        &self,
        read: R,
        policy: ReadPolicy,
        deadline: Option<Instant>,
    ) -> Result<Receipt<R::Answer>, Error> {
        let (read, receipt) = self.read_receipt(read, |sm: &S, read: &R| read.answer(sm));
        self.send_read(Request::Read { read, policy }, deadline)?;
        Ok(receipt)
    }

    /// Sends a linearizable read to this node. On the leader it is confirmed by a heartbeat
    /// round (or within its lease); on a follower it is a follower read. The receipt's
    /// [`Applied`] holds the answer, and as `index` the log index the state had been applied
    /// through when the query ran (`term` is 0: a read has no entry). Returns at once unless
    /// the node's request queue is full: then it waits for room, as
    /// [`NodeHandle::propose_async`] does. `Err(NodeDown)` if the node is not running; every
    /// other failure comes in the receipt, as for [`NodeHandle::read`].
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
        self.read_of(One(query), policy, None)
    }

    /// A linearizable read at this node, waiting up to `timeout`: at the leader, or a follower
    /// read at a follower (it asks the leader it knows for a read index). Fails with
    /// `NotLeader` when neither this node nor a leader it knows can serve it (no leader known,
    /// or the leader asked stepped down: `leader_hint` then names the newer leader if known),
    /// `QueueFull` when the node's request queue stays full until the deadline, `Timeout`
    /// when the node had not answered by then (or its leader could not confirm a round within
    /// an election timeout), `NodeDown` when the node is not running or stops, a failed
    /// node's error (`StateMachinePanicked`, ...); always safe to retry (one attempt:
    /// [`Client::read`] retries for you).
    pub fn read(&self, query: S::Query, timeout: Duration) -> Result<S::Answer, Error> {
        self.read_with(query, ReadPolicy::Lease, timeout)
    }

    /// [`NodeHandle::read`], confirmed as `policy` allows (see [`ReadPolicy`]): say, most
    /// reads by the lease and those that must not rely on clocks by a heartbeat round
    /// (`ReadPolicy::ReadIndex`). On a cluster without `Config::lease_reads` there is no
    /// lease, and `ReadPolicy::Lease` reads by a round too. The errors are `read`'s.
    pub fn read_with(
        &self,
        query: S::Query,
        policy: ReadPolicy,
        timeout: Duration,
    ) -> Result<S::Answer, Error> {
        self.read_until(One(query), policy, timeout)
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
    /// per read than [`NodeHandle::read_async`] in a loop. An empty list is answered with no
    /// answers, confirmed like any read. Errors as for [`NodeHandle::read_async`].
    pub fn read_many_async(
        &self,
        queries: Vec<S::Query>,
    ) -> Result<Receipt<Vec<S::Answer>>, Error> {
        self.read_many_async_with(queries, ReadPolicy::Lease)
    }

    /// [`NodeHandle::read_many_async`], all of the queries confirmed as `policy` allows:
    /// [`ReadPolicy::ReadIndex`] by one heartbeat round started after the read arrived, even
    /// while the leader's lease holds (see [`NodeHandle::read_async_with`]).
    pub fn read_many_async_with(
        &self,
        queries: Vec<S::Query>,
        policy: ReadPolicy,
    ) -> Result<Receipt<Vec<S::Answer>>, Error> {
        self.read_of(Many(queries), policy, None)
    }

    /// [`NodeHandle::read_many_async`], waiting up to `timeout` for the answers (and for room
    /// in a full queue). The errors are [`NodeHandle::read`]'s; on any of them no answer
    /// came, and the whole read is safe to retry.
    pub fn read_many(
        &self,
        queries: Vec<S::Query>,
        timeout: Duration,
    ) -> Result<Vec<S::Answer>, Error> {
        self.read_many_with(queries, ReadPolicy::Lease, timeout)
    }

    /// [`NodeHandle::read_many`], confirmed as `policy` allows: with
    /// [`ReadPolicy::ReadIndex`] one heartbeat round, never the lease, confirms all of the
    /// queries. The answers come in the queries' order; the errors are [`NodeHandle::read`]'s.
    pub fn read_many_with(
        &self,
        queries: Vec<S::Query>,
        policy: ReadPolicy,
        timeout: Duration,
    ) -> Result<Vec<S::Answer>, Error> {
        self.read_until(Many(queries), policy, timeout)
    }
}

impl<S: ReadStateMachine> Client<S> {
    /// A linearizable read at the leader the client knows (ReadIndex, or the lease if
    /// configured; knowing none, at a running node, a follower read if it does not lead),
    /// retrying at other nodes until the client's timeout
    /// ([`Config::request_timeout`](crate::Config)). A read teaches the client no leader (a
    /// node that answers need not lead); a refusal's hint does. The errors are
    /// [`Client::read_with`]'s.
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
        self.read_retrying(One(query), policy, timeout)
    }

    /// Many linearizable reads as one ([`NodeHandle::read_many`]: one confirmation, the
    /// answers in the queries' order, all from one applied index), at the leader, retried
    /// through leader changes until the client's timeout, as [`Client::read`] is. The errors
    /// are [`Client::read_with`]'s.
    pub fn read_many(&self, queries: Vec<S::Query>) -> Result<Vec<S::Answer>, Error>
    where
        S::Query: Clone,
    {
        self.read_many_with(queries, ReadPolicy::Lease, self.timeout())
    }

    /// [`Client::read_many`] confirmed as `policy` allows, with an explicit deadline: every
    /// attempt is one read of all the queries (retried whole, at the hinted leader or another
    /// node, as [`Client::read_with`] retries one), and the answers come in the queries'
    /// order. The errors are [`Client::read_with`]'s.
    pub fn read_many_with(
        &self,
        queries: Vec<S::Query>,
        policy: ReadPolicy,
        timeout: Duration,
    ) -> Result<Vec<S::Answer>, Error>
    where
        S::Query: Clone,
    {
        self.read_retrying(Many(queries), policy, timeout)
    }

    /// The retry loop of [`Client::read_with`]: each attempt sends a copy of `read`.
    fn read_retrying<R: Reading<S> + Clone>(
        &self,
        read: R,
        policy: ReadPolicy,
        timeout: Duration,
    ) -> Result<R::Answer, Error> {
        let deadline = deadline_after(timeout);
        let mut target = self.leader_hint().or_else(|| self.running().first().copied());
        let mut attempt = 0usize;
        loop {
            let Some(id) = target else { return Err(Error::Shutdown) };
            // NB: the first attempt has its whole timeout: no clock read before it.
            let refusal = match self.try_read(id, read.clone(), policy, deadline) {
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
    fn try_read<R: Reading<S>>(
        &self,
        id: NodeId,
        read: R,
        policy: ReadPolicy,
        deadline: Instant,
    ) -> Result<R::Answer, Error> {
        let Some(node) = self.handle(id) else { return Err(Error::NodeDown(id)) };
        // NB: no leader learned: a node that answers a read need not lead (a follower read).
        Ok(node.read_of(read, policy, Some(deadline))?.wait_until(deadline)?.output)
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

    /// [`Cluster::read`] confirmed as `policy` allows ([`ReadPolicy`]): see
    /// [`Client::read_with`], whose errors it returns; waits up to
    /// [`Config::request_timeout`](crate::Config) (for a deadline of your own:
    /// `cluster.client().read_with(query, policy, timeout)`).
    pub fn read_with(&self, query: S::Query, policy: ReadPolicy) -> Result<S::Answer, Error>
    where
        S::Query: Clone,
    {
        let client = self.client();
        client.read_with(query, policy, client.timeout())
    }

    /// A linearizable read at node `id` (a follower read if it does not lead), waiting up to
    /// [`Config::request_timeout`](crate::Config). `UnknownNode` / `NodeDown` for a node that
    /// does not exist or is not running.
    pub fn read_at(&self, id: NodeId, query: S::Query) -> Result<S::Answer, Error> {
        self.node(id)?.read(query, self.config().request_timeout)
    }
}
