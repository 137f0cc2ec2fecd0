//! Session retries in the simulator: clients resend a timed-out write with the same session
//! number (`SimConfig::retry_timeouts`) and the session table must apply it once. The history,
//! unwrapped to plain KV commands, is checked for linearizability: a write applied twice shows
//! its unique token twice. Bug switch (b), `Sessions::apply_duplicates`, must be caught.
//!
//! Clients register through the log ([`Opening::Registered`]): a client without a session
//! proposes `Register` and takes the id its answer names; the table holds only
//! [`SessionPolicy::max_sessions`] sessions, so registrations evict the least recently active,
//! whose next command is answered `Expired`; that client then registers again (a new id),
//! never carrying on under the old one. The older setup, sessions opened at start on every
//! replica ([`Opening::Preopened`]), stays as a second check of the switch.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use rand::rngs::SmallRng;

use super::super::*;
use crate::kv::{KvCommand, KvOutput, KvStateMachine};
use crate::session::{ClientId, SessionCommand, SessionOutput, Sessions};

type Sm = Sessions<KvStateMachine>;

/// With [`Opening::Preopened`], each client owns the session `CLIENT_BASE + client`.
const CLIENT_BASE: u64 = 1 << 40;

/// How the clients get their sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opening {
    /// Opened at start on every replica (`Sessions::with_clients`), never expiring.
    Preopened,
    /// Registered through the log, under [`SessionPolicy`].
    Registered,
}

/// The session table's expiry policy in these runs: small enough that sessions expire.
#[derive(Clone, Copy, Debug)]
struct SessionPolicy {
    /// `Sessions::new`'s capacity: a registration beyond it evicts the least recently active.
    max_sessions: usize,
}

impl SessionPolicy {
    /// Odd seeds: one session per client, so only the extra sessions of retried registrations
    /// (a lost answer, then a second `Register`) push real ones out now and then. Even seeds:
    /// one fewer than clients, so every registration evicts somebody (heavy churn).
    fn for_seed(seed: u64, clients: u64) -> Self {
        let spare = if seed % 2 == 1 { 0 } else { 1 };
        SessionPolicy { max_sessions: (clients as usize).saturating_sub(spare).max(1) }
    }
}

/// What the clients saw, for the tests' assertions.
#[derive(Debug, Default)]
struct SessionStats {
    registered: u64,
    expired: u64,
    /// A command sent under a session the client had seen expire (must stay 0).
    reused_expired: u64,
}

struct SessionWorkload {
    kv: KvWorkload,
    opening: Opening,
    /// Each client's current session, once its registration was answered.
    sessions: BTreeMap<u64, ClientId>,
    /// Sessions seen expired, never used again.
    expired: std::collections::BTreeSet<ClientId>,
    stats: Rc<RefCell<SessionStats>>,
}

impl Workload<Sm> for SessionWorkload {
    fn command(&mut self, client: u64, seq: u64, rng: &mut SmallRng) -> SessionCommand<KvCommand> {
        let id = match self.opening {
            Opening::Preopened => ClientId(CLIENT_BASE + client),
            Opening::Registered => match self.sessions.get(&client) {
                Some(&id) => id,
                None => return SessionCommand::Register,
            },
        };
        if self.expired.contains(&id) {
            self.stats.borrow_mut().reused_expired += 1;
        }
        let command = Workload::<KvStateMachine>::command(&mut self.kv, client, seq, rng);
        // One operation at a time per client: nothing below `seq` is still awaited.
        SessionCommand::Command { client: id, seq, lowest_pending: seq, command }
    }

    fn observe(
        &mut self,
        client: u64,
        _command: &SessionCommand<KvCommand>,
        output: &SessionOutput<KvOutput>,
    ) {
        match output {
            SessionOutput::Registered(id) => {
                self.stats.borrow_mut().registered += 1;
                self.sessions.insert(client, *id);
            }
            SessionOutput::Expired(id) => {
                self.stats.borrow_mut().expired += 1;
                self.expired.insert(*id);
                if self.sessions.get(&client) == Some(id) {
                    self.sessions.remove(&client); // register anew: never re-create it
                }
            }
            _ => {}
        }
    }
}

fn scenario(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, schedule) = super::super::bites::nemesis(seed);
    config.retry_timeouts = true;
    config.op_timeout = std::time::Duration::from_millis(60); // retries while the first may land
    (config, schedule)
}

fn run(seed: u64, opening: Opening, apply_duplicates: bool) -> Result<SessionStats, String> {
    let (config, schedule) = scenario(seed);
    let clients = config.clients;
    let policy = SessionPolicy::for_seed(seed, clients);
    let mut sim = Simulator::new(config, move |_| {
        let mut sm = match opening {
            Opening::Preopened => {
                Sessions::with_clients(KvStateMachine::new(), (0..clients).map(|c| CLIENT_BASE + c))
            }
            Opening::Registered => Sessions::new(KvStateMachine::new(), policy.max_sessions),
        };
        sm.apply_duplicates = apply_duplicates;
        sm
    })
    .map_err(|e| e.to_string())?;
    let stats = Rc::new(RefCell::new(SessionStats::default()));
    sim.start_clients(SessionWorkload {
        kv: KvWorkload { keys: 2 },
        opening,
        sessions: BTreeMap::new(),
        expired: Default::default(),
        stats: Rc::clone(&stats),
    });
    sim.run_schedule(&schedule).map_err(|f| f.to_string())?;
    sim.settle().map_err(|f| f.to_string())?;
    check_kv_history(&unwrap_history(seed, sim.history())?)
        .map_err(|v| format!("seed {seed}: {v}"))?;
    let stats = std::mem::take(&mut *stats.borrow_mut());
    Ok(stats)
}

/// The history as plain KV operations: registrations touch no key and are left out; a command
/// answered `Expired` has an unknown outcome (an earlier attempt may have been applied before
/// the session was evicted).
fn unwrap_history(
    seed: u64,
    history: &[HistoryOp<SessionCommand<KvCommand>, SessionOutput<KvOutput>>],
) -> Result<Vec<HistoryOp<KvCommand, KvOutput>>, String> {
    let mut plain = Vec::new();
    for op in history {
        let SessionCommand::Command { command, .. } = &op.command else { continue };
        let completed = match &op.completed {
            None | Some((_, SessionOutput::Expired(_))) => None,
            Some((at, SessionOutput::Output(o))) => Some((*at, o.clone())),
            Some((_, other)) => return Err(format!("seed {seed}: unexpected answer {other:?}")),
        };
        plain.push(HistoryOp {
            client: op.client,
            command: command.clone(),
            invoked_at: op.invoked_at,
            completed,
            not_applied: op.not_applied,
        });
    }
    Ok(plain)
}

/// More seeds: `FERRAFT_SESSION_SEEDS=500 cargo test --release --lib retried_session`.
#[test]
fn retried_session_writes_are_applied_once() {
    let seeds = std::env::var("FERRAFT_SESSION_SEEDS").ok().and_then(|s| s.parse().ok());
    for seed in 0..seeds.unwrap_or(8) {
        run(seed, Opening::Preopened, false).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Clients register through the log, sessions expire under the small capacity, expired
/// clients register again (never reusing an expired id), and the whole history stays
/// linearizable. More seeds: `FERRAFT_SESSION_SEEDS=500 cargo test --release --lib
/// registered_sessions`.
#[test]
fn registered_sessions_expire_and_clients_register_again() {
    let seeds = std::env::var("FERRAFT_SESSION_SEEDS").ok().and_then(|s| s.parse().ok());
    let mut total = SessionStats::default();
    for seed in 0..seeds.unwrap_or(8) {
        let stats = run(seed, Opening::Registered, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stats.reused_expired, 0, "seed {seed}: an expired session was reused");
        total.registered += stats.registered;
        total.expired += stats.expired;
    }
    println!("registered sessions over the seeds: {total:?}");
    assert!(total.expired > 0, "some sessions expired: {total:?}");
    assert!(total.registered > total.expired, "clients registered again: {total:?}");
}

/// Bug switch (b): the table applies a duplicate again instead of answering from its cache.
#[test]
fn applying_a_duplicate_twice_is_caught() {
    let found = (0..60).find(|&seed| {
        run(seed, Opening::Preopened, true).is_err_and(|e| e.contains("linearizable"))
    });
    let seed = found.expect("a duplicate applied twice, caught within 60 seeds");
    println!("BITES | apply_duplicates | seed {seed}");
}

/// Bug switch (b) again, with sessions registered through the log and expiring.
#[test]
fn applying_a_duplicate_twice_is_caught_with_registered_sessions() {
    let found = (0..60).find(|&seed| {
        run(seed, Opening::Registered, true).is_err_and(|e| e.contains("linearizable"))
    });
    let seed = found.expect("a duplicate applied twice, caught within 60 seeds");
    println!("BITES | apply_duplicates (registered sessions) | seed {seed}");
}
