//! Helpers shared by the integration tests: test configs, a condition wait with a deadline,
//! a state machine that records what it applied, cluster probes (stable leader, convergence),
//! a serial lock, and seeded randomness.
//!
//! Tests never sleep for a fixed time to wait for an outcome: they poll a condition with
//! [`wait_until`], which panics with the last observed state when its deadline passes.
//!
//! The process tests' machinery (server processes, their guard, client calls) is
//! `processes.rs` beside this file, included with `#[path]` by those tests only.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferraft::{
    Cluster, Config, KvCommand, KvOutput, KvStateMachine, LogIndex, NodeId, NodeStatus,
    ReadStateMachine, Role, StateMachine, Term,
};
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// How often [`wait_until`] polls.
pub const POLL: Duration = Duration::from_millis(5);
/// A generous deadline for anything that normally takes well under a second.
pub const LONG: Duration = Duration::from_secs(20);

/// Milliseconds.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Fast timing for tests, with enough margin that a loaded 2-core machine does not cause
/// spurious elections: election 60..120 ms (12..24 ticks), heartbeat 15 ms (3 ticks).
pub fn fast_config(seed: u64) -> Config {
    Config {
        election_timeout: ms(60)..ms(120),
        heartbeat_interval: ms(15),
        tick: ms(5),
        seed,
        ..Config::default()
    }
}

/// Slow-but-safe timing for tests that assert the *absence* of elections, or whose network
/// delays are long: election 300..600 ms, heartbeat 30 ms.
pub fn roomy_config(seed: u64) -> Config {
    Config {
        election_timeout: ms(300)..ms(600),
        heartbeat_interval: ms(30),
        tick: ms(10),
        seed,
        ..Config::default()
    }
}

/// Polls `probe` every [`POLL`] until it returns `Ok`, and returns that value. `probe` returns
/// `Err(description of what it saw)` while the condition does not hold; on timeout this panics
/// with `what` and the last description.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last observed: {seen}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests of one binary: clusters of threads timed in milliseconds share two
/// cores badly, and the thread-count test needs to be alone. A failed test does not poison it.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Logs to the test's captured output; `RUST_LOG=ferraft=debug` shows every RPC.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A seeded RNG for a test's random choices. The seed comes from `FERRAFT_SEED` if set, else
/// from the clock; it is printed so a failure can be rerun with the same choices (thread timing
/// still varies between runs).
pub fn seeded_rng(test: &str) -> (SmallRng, u64) {
    let seed =
        std::env::var("FERRAFT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(0, |d| d.as_nanos() as u64)
        });
    println!("{test}: seed {seed} (rerun with FERRAFT_SEED={seed})");
    (SmallRng::seed_from_u64(seed), seed)
}

// ---------------------------------------------------------------------------------------------
// Commands

/// `Append { key, value }`.
pub fn append(key: &str, value: &str) -> KvCommand {
    KvCommand::Append { key: key.into(), value: value.into() }
}

/// `Get { key }`.
pub fn get(key: &str) -> KvCommand {
    KvCommand::Get { key: key.into() }
}

/// Appended values are written as `token;` so a key's value splits back into its appends.
pub fn token(tag: impl std::fmt::Display) -> String {
    format!("{tag};")
}

/// The tokens of a value made of [`token`]s, each with its trailing `;`.
pub fn tokens(value: &str) -> Vec<String> {
    value.split_inclusive(';').map(str::to_owned).collect()
}

// ---------------------------------------------------------------------------------------------
// A recording state machine

/// What one node incarnation applied, in order.
pub type AppliedLog = Vec<(LogIndex, KvCommand)>;

/// The records of every node, shared between the tests and the nodes' state machines. Each
/// time the cluster builds a state machine for a node (start or restart), that node's record
/// starts afresh.
#[derive(Clone, Default)]
pub struct Records {
    by_node: Arc<Mutex<BTreeMap<NodeId, Arc<Mutex<AppliedLog>>>>>,
}

impl Records {
    /// A state machine factory for `Cluster::new` that records into `self`.
    pub fn factory(&self) -> impl Fn(NodeId) -> Recorder + Send + Sync + 'static {
        let records = self.clone();
        move |id| {
            let applied = Arc::new(Mutex::new(Vec::new()));
            lock(&records.by_node).insert(id, Arc::clone(&applied));
            Recorder { kv: KvStateMachine::new(), applied }
        }
    }

    /// What the current incarnation of `id` applied so far.
    pub fn of(&self, id: NodeId) -> AppliedLog {
        let node = lock(&self.by_node).get(&id).cloned();
        node.map_or_else(Vec::new, |applied| lock(&applied).clone())
    }
}

/// A [`KvStateMachine`] that also records every `(index, command)` it applies.
pub struct Recorder {
    kv: KvStateMachine,
    applied: Arc<Mutex<AppliedLog>>,
}

impl StateMachine for Recorder {
    type Command = KvCommand;
    type Output = KvOutput;

    fn apply(&mut self, index: LogIndex, command: &KvCommand) -> KvOutput {
        lock(&self.applied).push((index, command.clone()));
        self.kv.apply(index, command)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.kv.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.kv.restore(snapshot)
    }

    fn digest(&self) -> u64 {
        self.kv.digest()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Panics unless the applied indexes strictly increase (the `StateMachine` contract).
pub fn assert_strictly_increasing(id: NodeId, applied: &AppliedLog) {
    for pair in applied.windows(2) {
        assert!(pair[0].0 < pair[1].0, "{id} applied {} then {}", pair[0].0, pair[1].0);
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster probes

/// One line per node: id, role, term, known leader, commit, applied, last log index, digest.
pub fn describe(statuses: &[NodeStatus]) -> String {
    let lines: Vec<String> = statuses
        .iter()
        .map(|s| {
            let c = &s.core;
            let leader = c.leader.map_or("-".to_owned(), |l| l.to_string());
            format!(
                "{} {:?} {} leader={} commit={} applied={} last={} digest={:016x}",
                c.id,
                c.role,
                c.term,
                leader,
                c.commit_index,
                c.last_applied,
                c.last_log_index,
                s.digest
            )
        })
        .collect();
    format!("[{}]", lines.join("; "))
}

/// The ids of the running nodes.
pub fn running<S: StateMachine>(cluster: &Cluster<S>) -> Vec<NodeId> {
    cluster.ids().into_iter().filter(|&id| cluster.is_running(id)).collect()
}

/// Election Safety, checked on any set of statuses (taken at any times): at most one node is
/// ever leader in a given term.
pub fn assert_one_leader_per_term(statuses: &[NodeStatus]) {
    let mut leaders: BTreeMap<Term, NodeId> = BTreeMap::new();
    for s in statuses.iter().filter(|s| s.core.role == Role::Leader) {
        if let Some(other) = leaders.insert(s.core.term, s.core.id) {
            panic!(
                "two leaders in {}: {other} and {}: {}",
                s.core.term,
                s.core.id,
                describe(statuses)
            );
        }
    }
}

/// Every running node answered, all in one term, all following one leader that says it leads.
pub struct Agreement {
    /// The leader.
    pub leader: NodeId,
    /// Its term.
    pub term: Term,
    /// The statuses that showed the agreement.
    pub statuses: Vec<NodeStatus>,
}

/// Statuses of the running nodes, or a description of who did not answer.
pub fn running_statuses<S: StateMachine>(cluster: &Cluster<S>) -> Result<Vec<NodeStatus>, String> {
    let expected = running(cluster);
    let statuses = cluster.statuses();
    assert_one_leader_per_term(&statuses);
    if statuses.len() != expected.len() {
        return Err(format!(
            "running {expected:?} but only these answered: {}",
            describe(&statuses)
        ));
    }
    Ok(statuses)
}

/// Checks that `statuses` agree on one leader and term.
pub fn agreement(statuses: Vec<NodeStatus>) -> Result<Agreement, String> {
    let leaders: Vec<&NodeStatus> =
        statuses.iter().filter(|s| s.core.role == Role::Leader).collect();
    let [leader] = leaders[..] else { return Err(describe(&statuses)) };
    let (id, term) = (leader.core.id, leader.core.term);
    let agree = statuses.iter().all(|s| s.core.term == term && s.core.leader == Some(id));
    if !agree {
        return Err(describe(&statuses));
    }
    Ok(Agreement { leader: id, term, statuses })
}

/// Waits until every running node follows the same leader in the same term.
pub fn wait_for_agreement<S: StateMachine>(cluster: &Cluster<S>, timeout: Duration) -> Agreement {
    wait_until(timeout, "all running nodes to agree on one leader", || {
        agreement(running_statuses(cluster)?)
    })
}

/// Waits until `expected` nodes run and all have the same commit index, last applied index and
/// state digest, with everything committed applied. Returns their statuses.
pub fn wait_converged<S: StateMachine>(
    cluster: &Cluster<S>,
    expected: usize,
    timeout: Duration,
) -> Vec<NodeStatus> {
    wait_until(timeout, "the running nodes to converge", || {
        let statuses = running_statuses(cluster)?;
        let key = |s: &NodeStatus| (s.core.commit_index, s.core.last_applied, s.digest);
        let first = statuses.first().map(key);
        let same = statuses.iter().all(|s| Some(key(s)) == first);
        let applied = statuses.iter().all(|s| s.core.last_applied == s.core.commit_index);
        if statuses.len() == expected && same && applied {
            Ok(statuses)
        } else {
            Err(describe(&statuses))
        }
    })
}

/// The Linux names of this process's threads that start with `raft-` (node and network
/// threads), from `/proc/self/task/*/comm`.
pub fn raft_threads() -> Vec<String> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("reading /proc/self/task");
    let mut names: Vec<String> = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("raft-"))
        .collect();
    names.sort();
    names
}

/// A directory under the system temp dir, removed on drop (also when a test fails).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ferraft-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// A stalled follower and the inbox's byte budget

/// A node's gate: its state machine's `apply` waits while it is shut.
#[derive(Default)]
pub struct Gate {
    shut: Mutex<bool>,
    opened: std::sync::Condvar,
}

/// A [`KvStateMachine`] whose `apply` blocks while its node's gate is shut: with a small
/// `max_apply_backlog`, its node stalls (takes no input at all) for as long as a test wants.
pub struct GatedKv {
    kv: KvStateMachine,
    gate: Arc<Gate>,
}

impl StateMachine for GatedKv {
    type Command = KvCommand;
    type Output = KvOutput;

    fn apply(&mut self, index: LogIndex, command: &KvCommand) -> KvOutput {
        let mut shut = lock(&self.gate.shut);
        while *shut {
            shut = self.gate.opened.wait(shut).unwrap_or_else(|p| p.into_inner());
        }
        drop(shut);
        self.kv.apply(index, command)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.kv.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.kv.restore(snapshot)
    }

    fn command_size(command: &KvCommand) -> usize {
        command.size()
    }

    fn digest(&self) -> u64 {
        self.kv.digest()
    }
}

impl ReadStateMachine for GatedKv {
    type Query = String;
    type Answer = KvOutput;

    fn query(&self, key: &String) -> KvOutput {
        self.kv.query(key)
    }
}

/// Every node's gate, open until shut. Dropping it opens them all, so that a test failing
/// with a gate shut still stops its cluster: declare it after the cluster.
#[derive(Default)]
pub struct Gates(Arc<Mutex<BTreeMap<NodeId, Arc<Gate>>>>);

impl Gates {
    /// A state machine factory whose nodes wait at these gates.
    pub fn factory(&self) -> impl Fn(NodeId) -> GatedKv + Send + Sync + 'static {
        let gates = Arc::clone(&self.0);
        move |id| GatedKv { kv: KvStateMachine::new(), gate: gate_of(&gates, id) }
    }

    fn of(&self, id: NodeId) -> Arc<Gate> {
        gate_of(&self.0, id)
    }

    pub fn shut(&self, id: NodeId) {
        *lock(&self.of(id).shut) = true;
    }

    pub fn open_all(&self) {
        for gate in lock(&self.0).values() {
            *lock(&gate.shut) = false;
            gate.opened.notify_all();
        }
    }
}

impl Drop for Gates {
    fn drop(&mut self) {
        self.open_all();
    }
}

fn gate_of(gates: &Mutex<BTreeMap<NodeId, Arc<Gate>>>, id: NodeId) -> Arc<Gate> {
    Arc::clone(lock(gates).entry(id).or_default())
}

/// Small windows and a 1 MiB inbox budget, so that a stalled follower's inbox would outgrow
/// its budget within a second: AppendEntries of at most 64 KiB, a window of 256 KiB.
pub fn byte_budget_config(seed: u64) -> Config {
    Config {
        max_apply_backlog: 1,
        max_append_bytes: 64 << 10,
        max_inflight_bytes: 256 << 10,
        max_uncommitted_bytes: 4 << 20,
        snapshot_chunk_bytes: 64 << 10,
        max_inbox_bytes: 1 << 20,
        ..fast_config(seed)
    }
}

/// A `Put` of 16 KiB.
pub fn big_put(i: usize) -> KvCommand {
    KvCommand::Put { key: format!("big{i}").into(), value: "x".repeat(16 << 10).into() }
}

/// A follower stalls (its gate shut, `max_apply_backlog` 1) while the leader commits 16 KiB
/// puts with the other follower and probes it with an AppendEntries of up to 64 KiB every
/// heartbeat, for at least 48 heartbeats: about 3 MiB for its 1 MiB inbox. Then the gate
/// opens, more puts follow, and every node must converge on all of them. Returns the stalled
/// follower's status after the stall.
pub fn stall_a_follower_under_large_appends(
    cluster: &Cluster<GatedKv>,
    gates: &Gates,
) -> NodeStatus {
    let leader = wait_for_agreement(cluster, LONG).leader;
    let stalled = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let mut puts = 0..;
    let mut propose = |n: usize| {
        for i in puts.by_ref().take(n) {
            cluster.propose(big_put(i)).unwrap_or_else(|e| panic!("put {i}: {e}"));
        }
    };
    propose(10);
    wait_converged(cluster, 3, LONG);
    gates.shut(stalled);
    propose(32);
    let sent = |c: &Cluster<GatedKv>| c.status(leader).map(|s| s.metrics.sent.append_entries);
    let start = sent(cluster).expect("leader status");
    wait_until(LONG, "48 heartbeats to each follower during the stall", || {
        let now = sent(cluster).map_err(|e| e.to_string())?;
        match now - start {
            n if n >= 96 => Ok(()),
            n => Err(format!("{n} AppendEntries sent since the stall began")),
        }
    });
    gates.open_all();
    propose(32);
    let statuses = wait_converged(cluster, 3, LONG);
    let applied = statuses[0].core.last_applied.0;
    assert!(applied > 74, "1 no-op and 74 puts, but applied through {applied}");
    statuses.into_iter().find(|s| s.core.id == stalled).expect("the stalled node's status")
}

/// `snapshot`, `restore` and `digest` of a test state machine that keeps a running `sum`
/// (for the files that declare `#[macro_use] mod common;`).
#[allow(unused_macros)]
macro_rules! summing_image {
    () => {
        fn snapshot(&self) -> Vec<u8> {
            self.sum.to_le_bytes().to_vec()
        }

        fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
            let bytes =
                snapshot.try_into().map_err(|_| format!("{} bytes, not 8", snapshot.len()))?;
            self.sum = u64::from_le_bytes(bytes);
            Ok(())
        }

        fn digest(&self) -> u64 {
            self.sum
        }
    };
}
