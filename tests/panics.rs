//! A panic on a node's own loop, outside the state machine's `apply`: in the user's storage,
//! or in `StateMachine::command_size` for one poisoned command. The node fails with
//! `Error::NodePanicked` (reported by `Cluster::failure`), whatever waited on it is answered at
//! once, the rest of the cluster goes on, and a kill and restart bring the node back.
//!
//! Before, the panic unwound through the node's worker thread: that worker died, and the
//! other one ran the loop on with the driver as the panic left it, silently (no failure
//! reported, the proposal answered `NodeDown` by the unwind, or not at all).

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;
use ferraft::{
    Cluster, Configuration, Entry, Error, HardState, KvCommand, KvOutput, KvStateMachine, LogIndex,
    MemStorage, NodeId, PersistentState, Snapshot, StateMachine, Storage,
};

/// No node armed.
const NOBODY: u64 = u64::MAX;

/// A memory store whose next `append` panics on the node the switch names (once: the switch
/// is cleared as it fires, so the restarted node's store works), or fails with an io error on
/// the node the second switch names.
struct PanickyStore {
    id: NodeId,
    inner: MemStorage<KvCommand>,
    armed: Arc<AtomicU64>,
    fails: Arc<AtomicU64>,
}

impl Storage<KvCommand> for PanickyStore {
    fn load(&self) -> io::Result<PersistentState<KvCommand>> {
        self.inner.load()
    }
    fn save_hard_state(&mut self, hs: HardState) -> io::Result<()> {
        self.inner.save_hard_state(hs)
    }
    fn append(&mut self, first: LogIndex, entries: &[Entry<KvCommand>]) -> io::Result<()> {
        let fire =
            self.armed.compare_exchange(self.id.0, NOBODY, Ordering::SeqCst, Ordering::SeqCst);
        if fire.is_ok() {
            panic!("injected storage panic: append at {first} on {}", self.id);
        }
        let fail =
            self.fails.compare_exchange(self.id.0, NOBODY, Ordering::SeqCst, Ordering::SeqCst);
        if fail.is_ok() {
            return Err(io::Error::other(format!("injected write error at {first}")));
        }
        self.inner.append(first, entries)
    }
    fn save_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> io::Result<()> {
        self.inner.save_snapshot(snapshot)
    }
}

/// A cluster of three whose stores panic on demand; the switch arms one node's next append.
fn panicky_cluster(seed: u64) -> (Cluster<KvStateMachine>, Arc<AtomicU64>) {
    let (cluster, armed, _) = failing_cluster(seed);
    (cluster, armed)
}

/// [`panicky_cluster`], with a second switch that arms one node's next append to fail.
fn failing_cluster(seed: u64) -> (Cluster<KvStateMachine>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let armed = Arc::new(AtomicU64::new(NOBODY));
    let switch = Arc::clone(&armed);
    let fails = Arc::new(AtomicU64::new(NOBODY));
    let fail_switch = Arc::clone(&fails);
    let stores: Arc<Mutex<BTreeMap<NodeId, MemStorage<KvCommand>>>> = Arc::default();
    let cluster = Cluster::builder(fast_config(seed), |_| KvStateMachine::new())
        .nodes(3)
        .storage(move |id, bootstrap: &Configuration| {
            let mut stores = stores.lock().unwrap_or_else(|p| p.into_inner());
            let store = stores.entry(id).or_insert_with(|| MemStorage::new(bootstrap.clone()));
            // NB: a clone shares the store, so a restart reads what the node persisted.
            let (armed, fails) = (Arc::clone(&switch), Arc::clone(&fail_switch));
            Ok(PanickyStore { id, inner: store.clone(), armed, fails })
        })
        .start()
        .expect("start");
    (cluster, armed, fails)
}

fn put(key: &str) -> KvCommand {
    KvCommand::Put { key: key.into(), value: "v".into() }
}

/// The node named by a `NodePanicked`, if that is what `error` is.
fn panicked_at(error: &Error) -> Option<NodeId> {
    match error {
        Error::NodePanicked { node, .. } => Some(*node),
        _ => None,
    }
}

/// Waits for `Cluster::failure(id)` to report the panic; its message.
fn wait_for_panic_report(cluster: &Cluster<KvStateMachine>, id: NodeId) -> String {
    wait_until(LONG, "Cluster::failure to report the panic", || match cluster.failure(id) {
        Some(Error::NodePanicked { node, message }) if node == id => Ok(message),
        other => Err(format!("{other:?}")),
    })
}

/// A leader among the nodes other than `failed`, and a proposal it commits.
fn wait_for_a_commit_without(cluster: &Cluster<KvStateMachine>, failed: NodeId, key: &str) {
    let client = cluster.client();
    wait_until(LONG, "the rest of the cluster to commit", || {
        match client.propose_timeout(put(key), ms(500)) {
            Ok(_) => Ok(()),
            // NB: at most once per client: it then leaves the failed node alone.
            Err(e) if panicked_at(&e) == Some(failed) => Err(format!("{e:?}")),
            Err(e @ (Error::Unavailable { .. } | Error::Timeout)) => Err(format!("{e:?}")),
            Err(e) => panic!("a proposal to the rest answered {e:?}"),
        }
    });
}

/// Kills and restarts `id`, then waits until it has applied what the others have.
fn restart_and_catch_up(cluster: &Cluster<KvStateMachine>, id: NodeId) {
    cluster.kill(id).expect("kill the failed node");
    assert_eq!(cluster.failure(id), None, "a killed node reports no failure");
    cluster.restart(id).expect("restart the failed node");
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    let client = cluster.client();
    client.propose_timeout(put("after-restart"), LONG).expect("a commit after the restart");
    let commit = cluster.status(leader).expect("leader status").core.commit_index;
    wait_until(LONG, "the restarted node to catch up", || {
        let status = cluster.status(id).map_err(|e| format!("{e:?}"))?;
        match (status.failure, status.core.last_applied >= commit) {
            (None, true) => Ok(()),
            (failure, _) => {
                Err(format!("applied {} of {commit}, {failure:?}", status.core.last_applied))
            }
        }
    });
}

/// (1) The leader's storage panics appending a proposal: the proposal and later requests
/// hear `NodePanicked` at once, `Cluster::failure` says so, the others elect a leader and
/// commit, and the failed node is killed, restarted and catches up.
#[test]
fn a_leader_whose_storage_panics_fails_with_node_panicked_and_the_rest_go_on() {
    let _serial = serial();
    init_tracing();
    let (cluster, armed) = panicky_cluster(91);
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    cluster.client().propose_timeout(put("before"), LONG).expect("applied");

    armed.store(leader.0, Ordering::SeqCst);
    let node = cluster.node(leader).expect("running");
    let asked = Instant::now();
    let answer = node.propose_async(put("poisoned-write")).expect("sent").wait(LONG);
    let took = asked.elapsed();
    let error = answer.expect_err("the leader's write panicked");
    assert_eq!(panicked_at(&error), Some(leader), "answered {error:?}");
    assert!(took < LONG / 4, "answered after {took:?}");
    let message = wait_for_panic_report(&cluster, leader);
    assert!(message.contains("injected storage panic"), "{message}");

    // Later requests to the failed node hear the failure, at once.
    let later = node.propose(put("later"), LONG).expect_err("a failed node refuses");
    assert_eq!(panicked_at(&later), Some(leader), "later: {later:?}");
    let status = cluster.status(leader).expect("a failed node still answers its status");
    assert_eq!(status.failure.as_ref().and_then(panicked_at), Some(leader));

    wait_for_a_commit_without(&cluster, leader, "without-the-old-leader");
    let new_leader = cluster.wait_for_leader(LONG).expect("a new leader");
    assert_ne!(new_leader, leader, "the failed node does not lead");
    restart_and_catch_up(&cluster, leader);
}

/// (1) A follower's storage panics appending what the leader replicates: it fails with
/// `NodePanicked`, the leader commits with the other follower, and the failed follower is
/// killed, restarted and catches up.
#[test]
fn a_follower_whose_storage_panics_fails_with_node_panicked_and_the_rest_go_on() {
    let _serial = serial();
    init_tracing();
    let (cluster, armed) = panicky_cluster(92);
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.client().propose_timeout(put("before"), LONG).expect("applied");

    armed.store(follower.0, Ordering::SeqCst);
    cluster.client().propose_timeout(put("replicated"), LONG).expect("committed by two");
    let message = wait_for_panic_report(&cluster, follower);
    assert!(message.contains("injected storage panic"), "{message}");
    let node = cluster.node(follower).expect("running");
    let later = node.propose(put("later"), LONG).expect_err("a failed node refuses");
    assert_eq!(panicked_at(&later), Some(follower), "later: {later:?}");

    wait_for_a_commit_without(&cluster, follower, "without-the-follower");
    restart_and_catch_up(&cluster, follower);
}

/// A KV store whose `command_size` panics on the key "poison".
struct Sized(KvStateMachine);

impl StateMachine for Sized {
    type Command = KvCommand;
    type Output = KvOutput;

    fn apply(&mut self, index: LogIndex, command: &KvCommand) -> KvOutput {
        self.0.apply(index, command)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0.restore(snapshot)
    }
    fn command_size(command: &KvCommand) -> usize {
        match command {
            KvCommand::Put { key, .. } if &**key == "poison" => panic!("cannot size the poison"),
            other => KvStateMachine::command_size(other),
        }
    }
}

/// (2) One poisoned command whose `command_size` panics, proposed through a `Client`: the
/// proposer hears `NodePanicked` from the leader at once (not a hang, not a `Timeout` at its
/// deadline), the client does not carry the poison to the next leader, and the others go on.
#[test]
fn a_command_whose_size_panics_answers_its_proposer_node_panicked_and_the_rest_go_on() {
    let _serial = serial();
    init_tracing();
    let cluster =
        Cluster::new(fast_config(93), 3, |_| Sized(KvStateMachine::new())).expect("start");
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    let client = cluster.client();
    client.propose_timeout(put("before"), LONG).expect("applied");

    let asked = Instant::now();
    let error = client.propose_timeout(put("poison"), LONG).expect_err("the sizer panicked");
    let took = asked.elapsed();
    assert_eq!(panicked_at(&error), Some(leader), "answered {error:?}");
    assert!(took < LONG / 4, "answered after {took:?}");
    assert!(error.to_string().contains("cannot size the poison"), "{error}");
    assert_eq!(cluster.failure(leader).as_ref().and_then(panicked_at), Some(leader));

    // Not carried on: only the leader that sized it failed.
    for i in 0..20 {
        client.propose_timeout(put(&format!("after-{i}")), LONG).expect("the rest commit");
        for id in cluster.ids().into_iter().filter(|&id| id != leader) {
            assert_eq!(cluster.failure(id), None, "{id} failed too");
        }
    }
    let new_leader = cluster.wait_for_leader(LONG).expect("a new leader");
    assert_ne!(new_leader, leader);
    cluster.kill(leader).expect("kill");
    cluster.restart(leader).expect("restart");
    wait_converged(&cluster, 3, LONG);
}

/// (3) A leader's write fails (`Error::Storage`) while an earlier proposal waits in its
/// applier (appended, not committed: the leader is cut off). That proposal hears the storage
/// error at once, as after a panic, never only at the kill (`NodeDown`); its outcome is
/// unknown (`Client::propose` returns it without retrying, `Retry::after`).
#[test]
fn a_failed_write_answers_the_proposals_waiting_in_the_applier_at_once() {
    let _serial = serial();
    init_tracing();
    let (cluster, _, fails) = failing_cluster(94);
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    cluster.client().propose_timeout(put("before"), LONG).expect("applied");

    cluster.isolate(leader).expect("isolate the leader");
    let node = cluster.node(leader).expect("running");
    let last = cluster.status(leader).expect("status").core.last_log_index;
    let mut waiting = node.propose_async(put("waiting")).expect("sent");
    // NB: appended in a step of its own, not in the failing write's batch.
    wait_until(LONG, "the leader to append the waiting proposal", || {
        let status = cluster.status(leader).map_err(|e| format!("{e:?}"))?;
        let appended = status.core.last_log_index > last;
        appended.then_some(()).ok_or(format!("{:?}", status.core))
    });
    fails.store(leader.0, Ordering::SeqCst);
    let failed = node.propose_async(put("failed-write")).expect("sent").wait(LONG);
    let error = failed.expect_err("the leader's write failed");
    assert!(matches!(error, Error::Storage(_)), "the failed write answered {error:?}");

    let asked = Instant::now();
    let answer = waiting.wait(LONG / 4);
    let took = asked.elapsed();
    let error = answer.expect_err("the waiting proposal cannot be applied by a failed node");
    assert!(matches!(error, Error::Storage(_)), "the waiting proposal answered {error:?}");
    assert!(took < LONG / 8, "answered after {took:?}");
    assert!(matches!(cluster.failure(leader), Some(Error::Storage(_))));

    cluster.heal();
    let client = cluster.client();
    cluster.kill(leader).expect("kill the failed node");
    cluster.restart(leader).expect("restart it");
    client.propose_timeout(put("after"), LONG).expect("the cluster commits again");
    wait_converged(&cluster, 3, LONG);
}

/// The value whose `Clone` or `Drop` panics, once per arming ([`Brittle`]).
const POISON: u64 = 666;
static CLONE_ARMED: AtomicBool = AtomicBool::new(false);
static DROP_ARMED: AtomicBool = AtomicBool::new(false);

/// A command whose clone or drop of [`POISON`] panics the first time after its switch is
/// armed, wherever that happens (a one-shot: a restarted node then catches up with it).
#[derive(Debug)]
struct Brittle(u64);

impl Clone for Brittle {
    fn clone(&self) -> Self {
        if self.0 == POISON && CLONE_ARMED.swap(false, Ordering::SeqCst) {
            panic!("a poisoned clone");
        }
        Brittle(self.0)
    }
}

impl Drop for Brittle {
    fn drop(&mut self) {
        if self.0 == POISON && DROP_ARMED.swap(false, Ordering::SeqCst) {
            panic!("a poisoned drop");
        }
    }
}

/// Sums its [`Brittle`] commands.
#[derive(Default)]
struct BrittleSum {
    sum: u64,
}

impl StateMachine for BrittleSum {
    type Command = Brittle;
    type Output = u64;

    fn apply(&mut self, _index: LogIndex, command: &Brittle) -> u64 {
        self.sum += command.0;
        self.sum
    }

    summing_image!();
}

/// Arms `switch` and proposes [`POISON`] to the leader's handle (a `Client` clones each
/// command on the caller's thread, to retry it: a panicking `Clone` would panic there, the
/// caller's own code): whichever node clones or drops it first panics, and exactly that node
/// fails, with `NodePanicked` on its loop or `StateMachinePanicked` on its applier (where an
/// applied command is dropped), naming the panic: no worker dies silently, the process does
/// not abort. The others go on committing, with the poisoned command among them or not (its
/// outcome is unknown to its proposer); a kill and restart bring the failed node back, and
/// every replica converges.
fn a_command_whose_clone_or_drop_panics(switch: &AtomicBool, what: &str, seed: u64) {
    let _serial = serial();
    init_tracing();
    let cluster = Cluster::new(fast_config(seed), 3, |_| BrittleSum::default()).expect("start");
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    let client = cluster.client();
    assert_eq!(client.propose_timeout(Brittle(1), LONG).map(|a| a.output), Ok(1));

    switch.store(true, Ordering::SeqCst);
    let handle = cluster.node(leader).expect("running");
    let answer = handle.propose(Brittle(POISON), LONG).map(|a| a.output);
    let (failed, message) = wait_until(LONG, "one node to report the panic", || {
        let failed: Vec<_> =
            cluster.ids().into_iter().filter_map(|id| Some((id, cluster.failure(id)?))).collect();
        match &failed[..] {
            [(id, Error::NodePanicked { node, message })] if node == id => {
                Ok((*id, message.clone()))
            }
            [(id, Error::StateMachinePanicked { node, message, .. })] if node == id => {
                Ok((*id, message.clone()))
            }
            other => Err(format!("{other:?}, the proposal answered {answer:?}")),
        }
    });
    assert!(!switch.load(Ordering::SeqCst), "the poison struck once");
    assert!(message.contains(what), "{message}");
    // NB: its outcome is unknown (the leader may have failed after replicating it), so the
    // sums below count it or not; either way every replica must agree.
    match &answer {
        Ok(sum) => assert_eq!(*sum, 1 + POISON),
        Err(e) => assert_eq!(e, &cluster.failure(leader).expect("the leader failed")),
    }
    for i in 0..10 {
        wait_until(LONG, "the rest to commit", || {
            client.propose_timeout(Brittle(2), ms(500)).map(|_| ()).map_err(|e| format!("{e:?}"))
        });
        for id in cluster.ids().into_iter().filter(|&id| id != failed) {
            assert_eq!(cluster.failure(id), None, "{id} failed too, after {i} commits");
        }
    }
    cluster.kill(failed).expect("kill");
    cluster.restart(failed).expect("restart");
    let statuses = wait_converged(&cluster, 3, LONG);
    let sum = statuses[0].digest;
    assert!(sum == 1 + 20 || sum == 1 + POISON + 20, "sum {sum}");
}

/// (4) A command's `Clone` panics on a node's loop (the leader's, storing it or sending it to
/// a follower): that node fails with `NodePanicked`, the rest go on.
#[test]
fn a_command_whose_clone_panics_fails_the_node_that_cloned_it_and_the_rest_go_on() {
    a_command_whose_clone_or_drop_panics(&CLONE_ARMED, "a poisoned clone", 95);
}

/// (5) A command's `Drop` panics on a node (wherever a copy is dropped first, often on an
/// applier after applying it): that node fails, the rest go on.
#[test]
fn a_command_whose_drop_panics_fails_the_node_that_dropped_it_and_the_rest_go_on() {
    a_command_whose_clone_or_drop_panics(&DROP_ARMED, "a poisoned drop", 96);
}

/// (6) A `Client` whose leader's write fails hears `Storage` once (its outcome unknown), then
/// leaves that node alone: its later calls find the new leader instead of hearing the failed
/// node's error again until someone restarts it (they did, before: only `NodePanicked` made
/// a client look elsewhere).
#[test]
fn a_client_leaves_a_leader_whose_write_failed_and_finds_the_new_one() {
    let _serial = serial();
    init_tracing();
    let (cluster, _, fails) = failing_cluster(97);
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    let client = cluster.client();
    client.propose_timeout(put("before"), LONG).expect("applied");
    assert_eq!(client.leader_hint(), Some(leader));

    fails.store(leader.0, Ordering::SeqCst);
    let error = client.propose_timeout(put("failed-write"), LONG).expect_err("the write failed");
    assert!(matches!(error, Error::Storage(_)), "answered {error:?}");
    assert!(matches!(cluster.failure(leader), Some(Error::Storage(_))));
    for i in 0..5 {
        let answer = client.propose_timeout(put(&format!("after-{i}")), LONG);
        assert!(answer.is_ok(), "call {i} after the failure answered {answer:?}");
    }
    assert_ne!(client.leader_hint(), Some(leader));
    cluster.kill(leader).expect("kill the failed node");
    cluster.restart(leader).expect("restart it");
    wait_converged(&cluster, 3, LONG);
}
