//! A leader runs its followers' steps while it spins idle (`Config::help_peers`), and a caller
//! blocked on the leader's answer runs the leader's (`Config::callers_help`): only the thread
//! differs, never what a node does. These tests hold the runtime to that under load from many
//! blocked callers (the shape where helping happens): every node applies every write once, in
//! the same order, with helping on or off, and a node killed and restarted mid-load (on disk,
//! whose lock a helper still holding the node would keep) comes back. Which threads may apply
//! and snapshot (a node's own workers; the leader's callers, but not for snapshots) is the
//! unit tests in `src/runtime/thread.rs`, beside the test-only switches that break it. The protocol itself is checked in the
//! simulator, which runs the same driver.

mod common;

use std::thread::JoinHandle;

use common::*;
use ferraft::{Client, Cluster, Config, KvCommand, KvOutput, KvStateMachine};
use ferraft::{NodeId, StateMachine};

/// `threads` callers, each proposing `each` appends to a key of its own, blocked on each.
fn load<S>(client: &Client<S>, threads: usize, each: usize) -> Vec<JoinHandle<()>>
where
    S: StateMachine<Command = KvCommand, Output = KvOutput>,
{
    (0..threads)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..each {
                    // NB: a kill mid-load may refuse or lose a write; the check is the log's.
                    let _ = client.propose(append(&format!("k{t}"), &token(format!("{t}-{i}"))));
                }
            })
        })
        .collect()
}

#[test]
fn under_load_every_node_applies_every_write_once_in_the_same_order() {
    let _serial = serial();
    let records = Records::default();
    let cluster = Cluster::new(fast_config(61), 3, records.factory()).expect("start");
    wait_for_agreement(&cluster, LONG);
    let client = cluster.client();
    for caller in load(&client, 16, 200) {
        caller.join().expect("caller");
    }
    wait_converged(&cluster, 3, LONG);
    let first = records.of(NodeId(1));
    assert_strictly_increasing(NodeId(1), &first);
    assert_eq!(first.len(), 16 * 200, "every write applied once");
    for id in [NodeId(2), NodeId(3)] {
        assert_eq!(records.of(id), first, "{id} and n1 applied differently");
    }
}

#[test]
fn the_same_load_with_helping_off_gives_the_same_outcome() {
    let _serial = serial();
    let config = Config { help_peers: false, callers_help: false, ..fast_config(62) };
    let cluster = Cluster::new(config, 3, |_| KvStateMachine::new()).expect("start");
    wait_for_agreement(&cluster, LONG);
    let client = cluster.client();
    for caller in load(&client, 16, 100) {
        caller.join().expect("caller");
    }
    wait_converged(&cluster, 3, LONG);
    for t in 0..16 {
        let value = client.read(format!("k{t}")).expect("a linearizable read");
        assert_eq!(tokens(&value.expect("written")).len(), 100, "caller {t}: every write, once");
    }
}

#[test]
fn a_node_killed_and_restarted_on_disk_under_load_comes_back_and_agrees() {
    let _serial = serial();
    let dir = TempDir::new("helping-restart");
    let records = Records::default();
    let cluster = Cluster::builder(fast_config(63), records.factory()).data_dir(&dir.0).start();
    let cluster = cluster.expect("start");
    wait_for_agreement(&cluster, LONG);
    let client = cluster.client();
    let callers = load(&client, 16, 150);
    wait_until(LONG, "some writes to commit", || {
        let status = cluster.status(NodeId(1)).map_err(|e| e.to_string())?;
        (status.core.commit_index.0 > 200).then_some(()).ok_or(format!("{status:?}"))
    });
    // Each follower in turn (the leader too, if it is one of them: then another is elected).
    for id in [NodeId(2), NodeId(3)] {
        cluster.kill(id).expect("kill");
        cluster.restart(id).expect("a restart finds its directory unlocked: nothing holds it");
    }
    for caller in callers {
        caller.join().expect("caller");
    }
    wait_converged(&cluster, 3, LONG);
    // NB: no snapshots at this size: every incarnation applied the log from its start.
    let first = records.of(NodeId(1));
    assert_strictly_increasing(NodeId(1), &first);
    for id in [NodeId(2), NodeId(3)] {
        assert_eq!(records.of(id), first, "{id} and n1 applied differently");
    }
}
