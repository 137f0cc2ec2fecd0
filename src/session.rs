//! Exactly-once client sessions (paper §8, thesis §6.3, Figure 6.1): [`Sessions`] wraps a
//! [`StateMachine`] with a replicated session table, and [`Session`] is a client of it that
//! retries a command through timeouts and leader changes until it gets the answer.
//!
//! A client registers through the log; its id is the index of its registration entry. Each
//! command then carries (client id, sequence number) and the lowest sequence number the client
//! still waits for. The table keeps each client's responses from that number on: a duplicate (a
//! retry of a command that was applied already) is answered from the table, never applied
//! again. Several commands may be in flight per client.
//!
//! Expiry is deterministic, from the log alone: the table holds at most `max_sessions`
//! sessions; a registration beyond that evicts the session whose last command is oldest in the
//! log (ties: the lower id). A command of an evicted (or never registered) client is answered
//! [`SessionOutput::Expired`], never silently re-created, since its earlier commands may have
//! been applied. The table is part of the snapshot, so it survives compaction and restarts.
//!
//! The table keeps at most [`Sessions::max_responses`] responses per session (default
//! [`DEFAULT_SESSION_RESPONSES`]), whatever the client says: applying command `seq` drops the
//! responses of commands numbered `seq - max_responses` and below, so a client that never
//! advances its lowest pending number (a raw [`SessionCommand`] client) cannot grow the table
//! without bound. A command numbered below that window and not in the table is answered
//! [`SessionOutput::ResponseNotKept`] and never applied: an earlier attempt may have been
//! applied, so its outcome is unknown. The rule reads only the log, so every replica trims
//! alike, and the window's floor is in the snapshot. [`Session`] never has more than
//! `max_responses` commands in flight unless its clones do, together.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::node::deadline_after;
use crate::runtime::Client;
use crate::state_machine::{ReadStateMachine, StateMachine};
use crate::types::LogIndex;

/// How many responses a session keeps by default (see [`Sessions::with_max_responses`]).
pub const DEFAULT_SESSION_RESPONSES: u64 = 1024;

/// A client's id: the log index of its registration entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u64);

/// What a [`Sessions`] state machine's log holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionCommand<C> {
    /// Open a session; the client's id is this entry's index.
    Register,
    /// A command in a session.
    Command {
        /// The registered client.
        client: ClientId,
        /// The command's number in the session, from 1.
        seq: u64,
        /// The lowest number the client still waits for: responses below it may be discarded.
        lowest_pending: u64,
        /// The command for the wrapped state machine.
        command: C,
    },
}

/// What a [`Sessions`] state machine answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionOutput<O> {
    /// The session is open under this id.
    Registered(ClientId),
    /// The command's output: applied now, or (a duplicate) from the table.
    Output(O),
    /// No session with this id: it expired, or was never registered.
    Expired(ClientId),
    /// The command's number is below what the client said it no longer waits for, and its
    /// response was discarded: a retry from the past.
    SeqTooOld {
        /// The client.
        client: ClientId,
        /// The command's number.
        seq: u64,
        /// Responses below this number were discarded.
        discarded_below: u64,
    },
    /// The command's number is below the window of responses the session keeps
    /// ([`Sessions::max_responses`]) and its response is not in the table: it was dropped, or
    /// the command never arrived before. Not applied now; whether an earlier attempt was
    /// applied (once) is unknown.
    ResponseNotKept {
        /// The client.
        client: ClientId,
        /// The command's number.
        seq: u64,
        /// The session keeps responses from this number on.
        kept_from: u64,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Entry<O> {
    /// The index of the client's latest command (or registration), for expiry.
    last_active: u64,
    discarded_below: u64,
    /// Responses below this number were dropped by the cap (`max_responses`), whatever the
    /// client said.
    kept_from: u64,
    responses: BTreeMap<u64, O>,
}

impl<O> Entry<O> {
    fn new(last_active: u64) -> Self {
        Entry { last_active, discarded_below: 1, kept_from: 1, responses: BTreeMap::new() }
    }
}

/// A state machine with a replicated session table in front of it. See the module docs.
pub struct Sessions<S: StateMachine> {
    inner: S,
    table: BTreeMap<ClientId, Entry<S::Output>>,
    max_sessions: usize,
    max_responses: u64,
    #[cfg(test)]
    pub(crate) apply_duplicates: bool,
}

impl<S: StateMachine> Sessions<S> {
    /// Wraps `inner`, keeping at most `max_sessions` sessions (at least 1).
    pub fn new(inner: S, max_sessions: usize) -> Self {
        Sessions {
            inner,
            table: BTreeMap::new(),
            max_sessions: max_sessions.max(1),
            max_responses: DEFAULT_SESSION_RESPONSES,
            #[cfg(test)]
            apply_duplicates: false,
        }
    }

    /// Test setups (the simulator) with sessions open from the start, the same on every
    /// replica, so clients need no registration round.
    #[cfg(test)]
    pub(crate) fn with_clients(inner: S, clients: impl IntoIterator<Item = u64>) -> Self {
        let mut sessions = Sessions::new(inner, usize::MAX);
        for id in clients {
            sessions.table.insert(ClientId(id), Entry::new(0));
        }
        sessions
    }

    /// Keeps at most `max_responses` responses per session (at least 1; default
    /// [`DEFAULT_SESSION_RESPONSES`]): applying command `seq` drops those of commands numbered
    /// `seq - max_responses` and below. Replicated state: give every replica the same value.
    /// A client with more commands in flight than this may get
    /// [`SessionOutput::ResponseNotKept`] for its oldest.
    pub fn with_max_responses(mut self, max_responses: u64) -> Self {
        self.max_responses = max_responses.max(1);
        self
    }

    /// How many responses a session keeps at most.
    pub fn max_responses(&self) -> u64 {
        self.max_responses
    }

    /// How many responses the table holds, over every session.
    pub fn responses(&self) -> usize {
        self.table.values().map(|e| e.responses.len()).sum()
    }

    /// The wrapped state machine.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// How many sessions are open.
    pub fn sessions(&self) -> usize {
        self.table.len()
    }

    fn register(&mut self, index: LogIndex) -> SessionOutput<S::Output> {
        let id = ClientId(index.0);
        self.table.insert(id, Entry::new(index.0));
        while self.table.len() > self.max_sessions {
            let oldest = self
                .table
                .iter()
                .min_by_key(|(id, e)| (e.last_active, **id))
                .map(|(id, _)| *id)
                .expect("the table is not empty");
            self.table.remove(&oldest);
        }
        SessionOutput::Registered(id)
    }

    fn command(
        &mut self,
        index: LogIndex,
        client: ClientId,
        seq: u64,
        lowest_pending: u64,
        command: &S::Command,
    ) -> SessionOutput<S::Output> {
        let Some(entry) = self.table.get_mut(&client) else {
            return SessionOutput::Expired(client);
        };
        entry.last_active = index.0;
        if lowest_pending > entry.discarded_below {
            entry.discarded_below = lowest_pending;
            entry.responses = entry.responses.split_off(&lowest_pending);
        }
        #[cfg(test)]
        let cached = if self.apply_duplicates { None } else { entry.responses.get(&seq) };
        #[cfg(not(test))]
        let cached = entry.responses.get(&seq);
        if let Some(output) = cached {
            return SessionOutput::Output(output.clone()); // a duplicate: never applied twice
        }
        if seq < entry.discarded_below {
            let discarded_below = entry.discarded_below;
            return SessionOutput::SeqTooOld { client, seq, discarded_below };
        }
        if seq < entry.kept_from {
            let kept_from = entry.kept_from;
            return SessionOutput::ResponseNotKept { client, seq, kept_from };
        }
        let output = self.inner.apply(index, command);
        let entry = self.table.get_mut(&client).expect("found above");
        entry.responses.insert(seq, output.clone());
        // The cap: keep the window `seq - max_responses + 1 ..= seq` at most (from the log
        // alone, so every replica trims alike).
        let floor = seq.saturating_sub(self.max_responses - 1);
        if floor > entry.kept_from {
            entry.kept_from = floor;
            entry.responses = entry.responses.split_off(&floor);
        }
        SessionOutput::Output(output)
    }
}

#[derive(Serialize, Deserialize)]
struct Image<O> {
    table: Vec<(ClientId, Entry<O>)>,
    inner: Vec<u8>,
}

impl<S> StateMachine for Sessions<S>
where
    S: StateMachine,
    S::Output: Serialize + DeserializeOwned,
{
    type Command = SessionCommand<S::Command>;
    type Output = SessionOutput<S::Output>;

    fn apply(&mut self, index: LogIndex, command: &Self::Command) -> Self::Output {
        match command {
            SessionCommand::Register => self.register(index),
            SessionCommand::Command { client, seq, lowest_pending, command } => {
                self.command(index, *client, *seq, *lowest_pending, command)
            }
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let table = self.table.iter().map(|(id, e)| (*id, e.clone())).collect();
        let image = Image { table, inner: self.inner.snapshot() };
        postcard::to_stdvec(&image).expect("a session table always encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let image: Image<S::Output> =
            postcard::from_bytes(snapshot).map_err(|e| format!("session table: {e}"))?;
        self.inner.restore(&image.inner)?;
        self.table = image.table.into_iter().collect();
        Ok(())
    }

    fn command_size(command: &Self::Command) -> usize {
        match command {
            SessionCommand::Register => 8,
            SessionCommand::Command { command, .. } => 24 + S::command_size(command),
        }
    }

    fn digest(&self) -> u64 {
        let table = postcard::to_stdvec(&self.table.keys().collect::<Vec<_>>()).unwrap_or_default();
        self.inner.digest() ^ crate::kv::fnv1a([table.as_slice()])
    }
}

impl<S> ReadStateMachine for Sessions<S>
where
    S: ReadStateMachine,
    S::Output: Serialize + DeserializeOwned,
{
    type Query = S::Query;
    type Answer = S::Answer;

    fn query(&self, query: &S::Query) -> S::Answer {
        self.inner.query(query)
    }
}

/// A registered client of a [`Sessions`] cluster: its commands are applied exactly once, and
/// [`Session::propose`] retries through timeouts and leader changes until it has the answer.
/// Cheap to clone; clones share the session, so several threads may have commands in flight.
///
/// Each command carries a sequence number. The session numbers them
/// ([`Session::propose`], [`Session::propose_timeout`]), or you do
/// ([`Session::propose_seq`], which lets you retry a command whose answer was lost); the
/// session's own numbers go on after the largest you used. Async code calls
/// [`Session::propose_async`] and [`Session::propose_seq_async`], which retry alike without
/// blocking a thread.
pub struct Session<S: StateMachine>
where
    S::Output: Serialize + DeserializeOwned,
{
    client: Client<Sessions<S>>,
    id: ClientId,
    state: Arc<Mutex<Numbers>>,
}

impl<S: StateMachine> Clone for Session<S>
where
    S::Output: Serialize + DeserializeOwned,
{
    fn clone(&self) -> Self {
        Session { client: self.client.clone(), id: self.id, state: Arc::clone(&self.state) }
    }
}

/// A session's numbers: the next one `propose` takes, and those in flight (with how many
/// calls have each: a number retried from two threads at once stays pending until both end).
#[derive(Default)]
struct Numbers {
    next: u64,
    pending: BTreeMap<u64, usize>,
}

impl<S: StateMachine> Session<S>
where
    S::Output: Serialize + DeserializeOwned,
{
    /// Registers a new session through `client` (one log entry), waiting up to the client's
    /// timeout.
    pub fn register(client: &Client<Sessions<S>>) -> Result<Self, Error> {
        let id = match client.propose(SessionCommand::Register)?.output {
            SessionOutput::Registered(id) => id,
            other => unreachable!("a registration is answered Registered, not {other:?}"),
        };
        let state = Arc::new(Mutex::new(Numbers { next: 1, pending: BTreeMap::new() }));
        Ok(Session { client: client.clone(), id, state })
    }

    /// Continues an existing session (for example after a client restart) from `next_seq`:
    /// the [`Session::next_seq`] the client saved before it stopped, or any larger number. A
    /// number used before must not be used again (see [`Session::propose_seq`]).
    pub fn resume(client: &Client<Sessions<S>>, id: ClientId, next_seq: u64) -> Self {
        let state =
            Arc::new(Mutex::new(Numbers { next: next_seq.max(1), pending: BTreeMap::new() }));
        Session { client: client.clone(), id, state }
    }

    /// This session's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The number the next [`Session::propose`] of this session (or of a clone) takes. To
    /// continue the session after the client restarts, save it with [`Session::id`] and pass
    /// both to [`Session::resume`].
    pub fn next_seq(&self) -> u64 {
        self.lock().next
    }

    /// Applies `command` exactly once and returns its output, retrying (with the same sequence
    /// number) through timeouts, crashes and leader changes until the client's timeout
    /// ([`Config::request_timeout`](crate::Config::request_timeout)) runs out. See
    /// [`Session::propose_timeout`] for the errors.
    pub fn propose(&self, command: S::Command) -> Result<S::Output, Error> {
        self.propose_timeout(command, self.client.timeout())
    }

    /// [`Session::propose`], retrying until `timeout` instead of the client's timeout. The
    /// session numbers the command itself (the next number). Errors:
    /// - `Timeout`: no answer in time. The command may still be applied, once. Its number is
    ///   spent and this call does not retry it later; to retry a command after a timeout,
    ///   number it yourself with [`Session::propose_seq`].
    /// - `Unavailable`: every attempt was refused before appending: never applied.
    /// - `SessionExpired`: the session was evicted; register a new one.
    /// - `SessionExhausted`: its numbers are used up (`u64::MAX` being none): nothing proposed.
    /// - `SequenceTooOld`, `ResponseNotKept`: the number was used before, or the session has
    ///   more commands in flight than [`Sessions::max_responses`]; see those errors.
    /// - `StateMachinePanicked`, `NodePanicked`, `CommandTooLarge`, `Shutdown`: as from
    ///   [`Client::propose`], not retried.
    pub fn propose_timeout(
        &self,
        command: S::Command,
        timeout: Duration,
    ) -> Result<S::Output, Error> {
        let number = self.take_next()?;
        self.attempts(number.seq, command, timeout)
    }

    /// Proposes `command` as number `seq` of this session, retrying until `timeout`. Safe to
    /// call again with the same `seq` and command after an answer was lost (a `Timeout`, a
    /// client crash): it is applied at most once, and a retry gets the first attempt's output.
    ///
    /// To retry a command, number it yourself: give each command a number of its own, in
    /// increasing order, and retry a number only until its answer came (a later command tells
    /// the table to drop earlier answers: a retry then gets `SequenceTooOld`).
    /// [`Session::propose`] never takes a number used here: it goes on after the largest.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ferraft::{Cluster, Config, KvCommand, KvStateMachine, Session, Sessions};
    ///
    /// let sessions = |_| Sessions::new(KvStateMachine::new(), 100);
    /// let cluster = Cluster::new(Config::default(), 3, sessions)?;
    /// let session = Session::register(&cluster.client())?;
    /// let append = KvCommand::Append { key: "k".into(), value: "a;".into() };
    /// let timeout = Duration::from_secs(5);
    /// let first = session.propose_seq(1, append.clone(), timeout); // say its answer is lost
    /// let again = session.propose_seq(1, append, timeout)?; // the retry: applied at most once
    /// assert_eq!(again.as_deref(), Some("a;"));
    /// assert_eq!(cluster.read("k".to_string())?.as_deref(), Some("a;"));
    /// let next = KvCommand::Append { key: "k".into(), value: "b;".into() };
    /// assert_eq!(session.propose(next)?.as_deref(), Some("a;b;")); // number 2
    /// # drop(first);
    /// # Ok::<(), ferraft::Error>(())
    /// ```
    pub fn propose_seq(
        &self,
        seq: u64,
        command: S::Command,
        timeout: Duration,
    ) -> Result<S::Output, Error> {
        let _number = self.claim(seq);
        self.attempts(seq, command, timeout)
    }

    /// [`Session::propose_timeout`] for async code: never blocks the caller's thread (a tokio
    /// worker, say), answering as that call does, with the same errors. The library has no
    /// async runtime, so the caller lends its timer: `sleep(d)` returns a future that ends
    /// `d` after it is called, such as `tokio::time::sleep`. Each attempt waits for its answer
    /// at most 500 ms (a leader cut off from its majority may never answer) and a try at
    /// another node, when no leader is known, waits a pause (1 to 5 ms) first: it never spins.
    ///
    /// The session numbers the command when this is called; the deadline counts from the
    /// future's first poll. Cancelling the call (dropping the future, as
    /// `tokio::time::timeout` does) is a `Timeout` without the error: the number is spent and
    /// released, and the command, if an attempt was handed over, may still be applied, once.
    /// The future is `Send` and `'static` when `sleep` is `Send + Sync + 'static` and its
    /// futures are `Send` (as with `tokio::time::sleep`): spawn it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ferraft::{Cluster, Config, KvCommand, KvStateMachine, Session, Sessions};
    ///
    /// let cluster = Cluster::new(Config::default(), 3, |_| Sessions::new(KvStateMachine::new(), 100))?;
    /// let session = Session::register(&cluster.client())?; // blocking: one log entry
    /// let runtime = tokio::runtime::Builder::new_multi_thread().enable_time().build().unwrap();
    /// let timeout = Duration::from_secs(5);
    /// let append = |v: &str| KvCommand::Append { key: "k".into(), value: v.into() };
    /// runtime.block_on(async {
    ///     let output = session.propose_async(append("a;"), timeout, tokio::time::sleep).await?;
    ///     assert_eq!(output.as_deref(), Some("a;")); // applied once, retried as needed
    ///     // Numbered by hand, a command whose answer was lost is retried: applied once.
    ///     let first = session.propose_seq_async(2, append("b;"), timeout, tokio::time::sleep);
    ///     drop(tokio::spawn(first).await); // say this answer is lost
    ///     let again = session.propose_seq_async(2, append("b;"), timeout, tokio::time::sleep);
    ///     assert_eq!(again.await?.as_deref(), Some("a;b;")); // answered from the table
    ///     Ok::<(), ferraft::Error>(())
    /// })?;
    /// assert_eq!(cluster.read("k".to_string())?.as_deref(), Some("a;b;"));
    /// # Ok::<(), ferraft::Error>(())
    /// ```
    pub fn propose_async<F, Fut>(
        &self,
        command: S::Command,
        timeout: Duration,
        sleep: F,
    ) -> impl Future<Output = Result<S::Output, Error>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = ()>,
    {
        let session = self.clone();
        let number = self.take_next();
        async move {
            let number = number?;
            session.attempts_async(number.seq, command, timeout, sleep).await
        }
    }

    /// [`Session::propose_seq`] for async code: `command` as number `seq`, retried until
    /// `timeout` as [`Session::propose_async`] retries (see there for `sleep`, cancellation
    /// and the deadline). Safe to call again with the same `seq` and command after an answer
    /// was lost: applied at most once, and a retry gets the first attempt's output.
    pub fn propose_seq_async<F, Fut>(
        &self,
        seq: u64,
        command: S::Command,
        timeout: Duration,
        sleep: F,
    ) -> impl Future<Output = Result<S::Output, Error>>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = ()>,
    {
        let session = self.clone();
        let number = self.claim(seq);
        async move {
            let _number = number;
            session.attempts_async(seq, command, timeout, sleep).await
        }
    }

    /// The next number, pending until the call that takes it ends.
    fn take_next(&self) -> Result<InFlight, Error> {
        let seq = self.lock().take_next().ok_or(Error::SessionExhausted { client: self.id.0 })?;
        Ok(InFlight { state: Arc::clone(&self.state), seq })
    }

    /// Number `seq`, chosen by the caller, pending until the call that claims it ends.
    fn claim(&self, seq: u64) -> InFlight {
        self.lock().claim(seq);
        InFlight { state: Arc::clone(&self.state), seq }
    }

    /// Proposes `command` as number `seq` (pending in `Numbers` meanwhile) until `timeout`.
    fn attempts(
        &self,
        seq: u64,
        command: S::Command,
        timeout: Duration,
    ) -> Result<S::Output, Error> {
        let deadline = deadline_after(timeout);
        let mut tally = Tally::default();
        loop {
            let Some(attempt) = attempt_bound(deadline) else { return Err(tally.at_deadline()) };
            let wrapped = self.wrap(seq, &command);
            let outcome = self.client.propose_timeout(wrapped, attempt).map(|a| a.output);
            if let Some(answer) = tally.judge(outcome) {
                return answer;
            }
        }
    }

    /// [`Session::attempts`], awaiting: each attempt a [`Client::propose_until`] raced
    /// against `sleep(attempt)`.
    async fn attempts_async<F, Fut>(
        &self,
        seq: u64,
        command: S::Command,
        timeout: Duration,
        sleep: F,
    ) -> Result<S::Output, Error>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = ()>,
    {
        let deadline = deadline_after(timeout);
        let mut tally = Tally::default();
        loop {
            let Some(attempt) = attempt_bound(deadline) else { return Err(tally.at_deadline()) };
            let (wrapped, until) = (self.wrap(seq, &command), deadline_after(attempt));
            let timer = std::pin::pin!(sleep(attempt));
            let outcome = self.client.propose_until(wrapped, until, timer, &sleep).await;
            if let Some(answer) = tally.judge(outcome.map(|a| a.output)) {
                return answer;
            }
        }
    }

    /// `command` as number `seq` of this session, telling the table the lowest number still
    /// pending.
    fn wrap(&self, seq: u64, command: &S::Command) -> SessionCommand<S::Command> {
        let lowest_pending = self.lock().lowest_pending(seq);
        SessionCommand::Command { client: self.id, seq, lowest_pending, command: command.clone() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Numbers> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Numbers {
    /// The next number, unless every one is used: `u64::MAX` is never handed out, so the
    /// count never wraps back to numbers the table has discarded.
    fn take_next(&mut self) -> Option<u64> {
        let seq = self.next;
        if seq == u64::MAX {
            return None;
        }
        self.next = seq + 1;
        *self.pending.entry(seq).or_default() += 1;
        Some(seq)
    }

    /// A number the caller chose (`propose_seq`): pending while its call runs, and never
    /// handed out by `take_next` after (found by an embedding review: `propose` drew a number
    /// `propose_seq` had used, and was answered with that command's output, its own command
    /// never applied).
    fn claim(&mut self, seq: u64) {
        self.next = self.next.max(seq.saturating_add(1));
        *self.pending.entry(seq).or_default() += 1;
    }

    fn release(&mut self, seq: u64) {
        if let Some(calls) = self.pending.get_mut(&seq) {
            *calls -= 1;
            if *calls == 0 {
                self.pending.remove(&seq);
            }
        }
    }

    fn lowest_pending(&self, seq: u64) -> u64 {
        self.pending.first_key_value().map_or(seq, |(&lowest, _)| lowest).min(seq)
    }
}

/// How long a session call's next attempt may take, `None` once `deadline` has passed. NB:
/// short attempts, so a leader change costs one attempt, not the whole deadline.
fn attempt_bound(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then(|| left.min(Duration::from_millis(500)))
}

/// A number in flight in a session call: released when the call ends, however it ends (an
/// answer, a panic, or an async call's future dropped before it was done).
struct InFlight {
    state: Arc<Mutex<Numbers>>,
    seq: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).release(self.seq);
    }
}

/// What a session call's attempts have told so far. Its one judgement of an attempt's outcome
/// serves the blocking calls and the async ones alike.
#[derive(Default)]
struct Tally {
    /// The last `Unavailable`, which the call answers at its deadline if no attempt may have
    /// been applied.
    refused: Option<Error>,
    maybe_applied: bool,
}

impl Tally {
    /// The call's answer, if this attempt's `outcome` ends it; `None`: retry the same number
    /// (safe: the table answers a duplicate from its cache).
    fn judge<O>(&mut self, outcome: Result<SessionOutput<O>, Error>) -> Option<Result<O, Error>> {
        let error = match outcome {
            Ok(SessionOutput::Output(output)) => return Some(Ok(output)),
            Ok(SessionOutput::Expired(client)) => Error::SessionExpired { client: client.0 },
            Ok(SessionOutput::SeqTooOld { client, seq, discarded_below }) => {
                Error::SequenceTooOld { client: client.0, seq, discarded_below }
            }
            Ok(SessionOutput::ResponseNotKept { client, seq, kept_from }) => {
                Error::ResponseNotKept { client: client.0, seq, kept_from }
            }
            Ok(SessionOutput::Registered(_)) => unreachable!("a command is never Registered"),
            // NB: `Shutdown`: no node runs at all; waiting would not help.
            Err(
                e @ (Error::StateMachinePanicked { .. }
                | Error::NodePanicked { .. }
                | Error::CommandTooLarge { .. }
                | Error::Shutdown),
            ) => e,
            // Refused before appending: never applied.
            Err(e @ Error::Unavailable { .. }) => {
                self.refused = Some(e);
                return None;
            }
            // Unknown: it may have been applied.
            Err(_) => {
                self.maybe_applied = true;
                return None;
            }
        };
        Some(Err(error))
    }

    /// The call's answer at its deadline: `Unavailable` if every attempt was refused before
    /// appending, else `Timeout`.
    fn at_deadline(self) -> Error {
        self.refused.filter(|_| !self.maybe_applied).unwrap_or(Error::Timeout)
    }
}

#[cfg(test)]
mod tests;
