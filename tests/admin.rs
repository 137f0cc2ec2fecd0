//! Administration through `&self` (twenty-third session): a `Cluster` shared in an `Arc`
//! between threads that look up, propose and read, and threads that kill, restart and add
//! nodes. Lookups never wait behind an admin operation in progress; admin operations are
//! serialized, so two `add_node`s never hand out one id and a `kill` racing a `restart` ends
//! consistent, the loser with a typed error.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{fast_config, serial, wait_until, Gates, LONG};
use ferraft::{
    Cluster, Config, Configuration, Entry, Error, HardState, KvCommand, KvStateMachine, LogIndex,
    MemStorage, NodeId, PersistentState, Snapshot, Storage,
};

fn put(i: usize) -> KvCommand {
    KvCommand::Put { key: format!("k{i}").into(), value: i.to_string().into() }
}

#[test]
fn a_cluster_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Cluster<KvStateMachine>>();
    shared::<Arc<Cluster<common::GatedKv>>>();
    // For every state machine: this compiles only if the bounds hold for any `S`.
    fn any<S: ferraft::StateMachine>() {
        shared::<Cluster<S>>();
    }
    any::<KvStateMachine>();
}

/// Holds every `append` of the nodes it wraps while shut: a new node so held cannot catch
/// up, and `add_node` waits for it. Opens on drop, so a failing test still stops its cluster.
#[derive(Default)]
struct Hold {
    shut: Mutex<bool>,
    opened: Condvar,
    /// Set once a held append has begun waiting.
    holding: AtomicBool,
}

impl Hold {
    fn wait_while_shut(&self) {
        let mut shut = self.shut.lock().unwrap_or_else(|p| p.into_inner());
        while *shut {
            self.holding.store(true, Ordering::SeqCst);
            shut = self.opened.wait(shut).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn open(&self) {
        *self.shut.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.opened.notify_all();
    }
}

struct Opener(Arc<Hold>);

impl Drop for Opener {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A [`MemStorage`] whose appends wait at a [`Hold`].
struct HeldStorage {
    store: MemStorage<KvCommand>,
    hold: Arc<Hold>,
}

impl Storage<KvCommand> for HeldStorage {
    fn load(&self) -> io::Result<PersistentState<KvCommand>> {
        self.store.load()
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()> {
        self.store.save_hard_state(hard_state)
    }

    fn append(&mut self, first: LogIndex, entries: &[Entry<KvCommand>]) -> io::Result<()> {
        self.hold.wait_while_shut();
        self.store.append(first, entries)
    }

    fn save_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> io::Result<()> {
        self.store.save_snapshot(snapshot)
    }
}

/// 4(a): while `add_node` waits for its new node to catch up (the node's appends held, so it
/// cannot finish until the test lets it), other threads' `status`, `node`, `ids`,
/// `is_running` and `client().propose` complete. The add is provably still in progress when
/// they do: it cannot end before the hold opens, which happens after they returned.
#[test]
fn lookups_and_proposals_complete_while_add_node_waits_for_catch_up() {
    let _serial = serial();
    let hold = Arc::new(Hold::default());
    *hold.shut.lock().unwrap() = true;
    let held = Arc::clone(&hold);
    // NB: no helping: a leader running the held node's steps (`help_peers`) would wait in
    // its append too, and the leader's status with it.
    let config =
        Config { catch_up_timeout: Duration::from_secs(30), help_peers: false, ..fast_config(231) };
    let cluster = Cluster::builder(config, |_| KvStateMachine::new())
        .storage(move |id, bootstrap: &Configuration| {
            let store = MemStorage::new(bootstrap.clone());
            // The three first nodes are never held; a node added later is.
            let hold = if id.0 <= 3 { Arc::new(Hold::default()) } else { Arc::clone(&held) };
            Ok(HeldStorage { store, hold })
        })
        .start()
        .expect("start");
    let cluster = Arc::new(cluster);
    let _opener = Opener(Arc::clone(&hold)); // after the cluster: dropped first
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    cluster.propose(put(0)).expect("a first write");

    let added = Arc::new(AtomicBool::new(false));
    let adder = {
        let (cluster, added) = (Arc::clone(&cluster), Arc::clone(&added));
        std::thread::spawn(move || {
            let result = cluster.add_node();
            added.store(true, Ordering::SeqCst);
            result
        })
    };
    wait_until(LONG, "the new node's first append to be held", || {
        match hold.holding.load(Ordering::SeqCst) {
            true => Ok(()),
            false => Err("not yet".to_string()),
        }
    });
    let client = cluster.client();
    for i in 1..=20 {
        if let Err(e) = cluster.status(leader) {
            panic!("status of the leader during the add: {e}");
        }
        assert!(cluster.node(leader).is_ok(), "a handle to the leader");
        assert!(cluster.is_running(leader));
        assert_eq!(cluster.failure(leader), None);
        assert!(cluster.ids().contains(&NodeId(4)), "the node being added has a slot");
        client.propose(put(i)).unwrap_or_else(|e| panic!("write {i} during the add: {e}"));
    }
    assert!(!added.load(Ordering::SeqCst), "the add ended while its new node was held");
    hold.open();
    let id = adder.join().expect("adder thread").expect("the add succeeds once released");
    assert_eq!(id, NodeId(4));
    let config = cluster.status(leader).expect("leader status").core.config;
    assert!(config.voters.contains(&id), "the new node is a voter: {config:?}");
}

/// 4(b): two threads call `add_node` at once: two different ids, both voters.
#[test]
fn two_concurrent_add_nodes_get_two_ids_and_both_become_voters() {
    let _serial = serial();
    let config = Config { catch_up_timeout: Duration::from_secs(10), ..fast_config(232) };
    let cluster = Arc::new(Cluster::new(config, 3, |_| KvStateMachine::new()).expect("start"));
    cluster.wait_for_leader(LONG).expect("a leader");
    cluster.propose(put(0)).expect("a first write");
    let start = Arc::new(Barrier::new(2));
    let adders: Vec<_> = (0..2)
        .map(|_| {
            let (cluster, start) = (Arc::clone(&cluster), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                cluster.add_node()
            })
        })
        .collect();
    let mut ids: Vec<NodeId> = adders
        .into_iter()
        .map(|adder| adder.join().expect("adder thread").expect("each add succeeds"))
        .collect();
    ids.sort();
    assert_eq!(ids, vec![NodeId(4), NodeId(5)], "two adds, two fresh ids");
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    let config = cluster.status(leader).expect("leader status").core.config;
    for id in ids {
        assert!(config.voters.contains(&id), "{id} is a voter: {config:?}");
        assert!(cluster.is_running(id), "{id} runs");
    }
    assert_eq!(config.voters.len(), 5, "{config:?}");
    cluster.propose(put(1)).expect("a write with five voters");
}

/// 4(c): two threads kill, then restart, one follower at once, for several rounds, and a
/// `kill` races a `restart`: each call either acts or gets a typed error (`NodeDown`,
/// `AlreadyRunning`), never a panic, and the node's state agrees with who won.
#[test]
fn concurrent_kill_and_restart_of_one_node_end_consistent() {
    let _serial = serial();
    let cluster = Arc::new(Cluster::new(fast_config(233), 3, |_| KvStateMachine::new()).unwrap());
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    let node = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let both = |op: fn(&Cluster<KvStateMachine>, NodeId) -> Result<(), Error>| {
        let start = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (cluster, start) = (Arc::clone(&cluster), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    op(&cluster, node)
                })
            })
            .collect();
        let mut results: Vec<_> =
            threads.into_iter().map(|t| t.join().expect("no panic")).collect();
        results.sort_by_key(|r| r.is_err());
        results
    };
    for round in 0..5 {
        let killed = both(|c, id| c.kill(id));
        assert_eq!(killed, vec![Ok(()), Err(Error::NodeDown(node))], "round {round}: kills");
        assert!(
            !cluster.is_running(node) && cluster.node(node).err() == Some(Error::NodeDown(node))
        );
        let restarted = both(|c, id| c.restart(id));
        assert_eq!(restarted, vec![Ok(()), Err(Error::AlreadyRunning(node))], "round {round}");
        assert!(cluster.is_running(node), "round {round}: running after the restarts");
        cluster.propose(put(round)).expect("a write between rounds");
    }
    for round in 0..5 {
        // A kill against a restart of a running node: the restart loses (AlreadyRunning)
        // and the kill stands, or the kill goes first and the restart brings it back.
        let start = Arc::new(Barrier::new(2));
        let (c, s) = (Arc::clone(&cluster), Arc::clone(&start));
        let killer = std::thread::spawn(move || {
            s.wait();
            c.kill(node)
        });
        start.wait();
        let restarted = cluster.restart(node);
        assert_eq!(killer.join().expect("no panic"), Ok(()), "round {round}: the kill");
        match restarted {
            Ok(()) => assert!(cluster.is_running(node), "round {round}: restarted after kill"),
            Err(Error::AlreadyRunning(n)) if n == node => {
                assert!(!cluster.is_running(node), "round {round}: killed after the refusal");
                cluster.restart(node).expect("a restart after the kill");
            }
            other => panic!("round {round}: restart answered {other:?}"),
        }
    }
    let applied = cluster.propose(put(99)).expect("a last write").index;
    let caught_up = cluster.wait_caught_up(node, LONG).expect("the follower catches up");
    assert!(caught_up >= applied, "{node} applied {caught_up:?}, the write was {applied:?}");
}

/// 2(a), 4(d): `add_node` asks every node loop for its configuration first; a follower whose
/// loop is stalled (its apply backlog over `max_apply_backlog`, its state machine held) does
/// not answer, and that wait counts against `add_node`'s own bound of `request_timeout` plus
/// `catch_up_timeout`. Before, the wait came on top of the bound, and the leader search that
/// followed waited for the silent node again: about two `request_timeout`s in all.
#[test]
fn add_node_keeps_its_bound_while_a_node_does_not_answer() {
    let _serial = serial();
    let request_timeout = Duration::from_secs(3);
    let catch_up_timeout = Duration::from_millis(1500);
    let config =
        Config { max_apply_backlog: 1, request_timeout, catch_up_timeout, ..fast_config(234) };
    let gates = Gates::default();
    let cluster = Cluster::new(config, 3, gates.factory()).expect("start");
    let gates = gates; // NB: after the cluster, so dropped first: a failing test opens them
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    let stalled = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.propose(put(0)).expect("a first write");
    gates.shut(stalled);
    for i in 1..=4 {
        cluster.propose(put(i)).expect("writes the other two commit");
    }
    // The stalled loop answers no status: a leader query then waits out `request_timeout`.
    wait_until(LONG, "the follower's loop to stop answering", || {
        let asked = Instant::now();
        let leader = cluster.leader();
        match asked.elapsed() {
            waited if waited >= request_timeout && leader.is_some() => Ok(()),
            waited => Err(format!("answered in {waited:?}, leader {leader:?}")),
        }
    });
    let began = Instant::now();
    let added = cluster.add_node();
    let took = began.elapsed();
    println!("add_node with {stalled} silent: {added:?} in {took:?}");
    assert_eq!(added, Ok(NodeId(4)), "the other three make a majority of four");
    assert!(took >= request_timeout, "the silent node was not waited for: {took:?}");
    let bound = request_timeout + catch_up_timeout;
    assert!(took <= bound, "add_node took {took:?}, past its bound of {bound:?}");
    gates.open_all();
    let config = cluster.status(leader).expect("leader status").core.config;
    assert!(config.voters.contains(&NodeId(4)), "{config:?}");
}

/// An `on_removed` hook runs inside `remove_node`'s admin operation: an admin call of the
/// same cluster from it would wait for itself. It is refused with `AdminFromCallback`
/// instead, doing nothing, while lookups from the hook still answer; the removal completes,
/// and the same call made afterwards acts.
#[test]
fn an_admin_call_from_the_clusters_own_hook_is_refused_not_a_deadlock() {
    use std::sync::{OnceLock, Weak};
    let _serial = serial();
    type Shared = Arc<OnceLock<Weak<Cluster<KvStateMachine>>>>;
    /// What the hook heard: the id retired, its kill's answer, the ids it looked up.
    type Heard = Vec<(NodeId, Result<(), Error>, Vec<NodeId>)>;
    let this: Shared = Arc::default();
    let heard: Arc<Mutex<Heard>> = Arc::default();
    let cluster = {
        let (this, heard) = (Arc::clone(&this), Arc::clone(&heard));
        Cluster::builder(fast_config(233), |_| KvStateMachine::new())
            .nodes(3)
            .on_removed(move |id| {
                let cluster = this.get().and_then(Weak::upgrade).expect("the cluster is up");
                let other = cluster.ids().into_iter().find(|&n| n != id).expect("another node");
                let killed = cluster.kill(other); // inside remove_node: refused
                heard.lock().expect("not poisoned").push((id, killed, cluster.ids()));
            })
            .start()
            .expect("start")
    };
    let cluster = Arc::new(cluster);
    this.set(Arc::downgrade(&cluster)).expect("set once");
    let leader = cluster.wait_for_leader(LONG).expect("a leader");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.remove_node(follower).expect("the removal completes");
    let heard = heard.lock().expect("not poisoned").clone();
    assert_eq!(heard.len(), 1, "the hook ran once: {heard:?}");
    let (removed, killed, ids) = &heard[0];
    assert_eq!(*removed, follower);
    assert_eq!(killed, &Err(Error::AdminFromCallback), "refused, not waited for");
    assert_eq!(ids.len(), 2, "lookups answer inside the hook: {ids:?}");
    assert!(ids.iter().all(|&id| cluster.is_running(id)), "the refused kill did nothing");
    assert!(Error::AdminFromCallback.to_string().contains("after that operation returns"));
    let other = ids.iter().copied().find(|&id| id != leader).unwrap_or(leader);
    cluster.kill(other).expect("the same call, made after the removal, acts");
    assert!(!cluster.is_running(other));
}
