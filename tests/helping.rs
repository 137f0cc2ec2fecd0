//! Nodes of one `Cluster` run each other's steps while they spin idle (`Config::help_peers`):
//! only the thread differs, never what a node does. These tests hold the runtime to that
//! under load from many blocked callers (the shape where helping happens): every node applies
//! on its own workers, all apply the same commands in the same order, and a node killed and
//! restarted mid-load (on disk, whose lock a helper still holding the node would keep) comes
//! back. The protocol itself is checked in the simulator, which runs the same driver.

mod common;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::*;
use ferraft::{Client, Cluster, Config, KvCommand, KvOutput, KvStateMachine};
use ferraft::{LogIndex, NodeId, StateMachine};

/// A KV state machine that notes every thread that applied on it which is not one of its
/// node's own workers (`raft-n<id>` and `raft-n<id>-b`).
struct OwnThreads {
    id: NodeId,
    kv: KvStateMachine,
    strangers: Arc<Mutex<Vec<String>>>,
}

impl StateMachine for OwnThreads {
    type Command = KvCommand;
    type Output = KvOutput;

    fn apply(&mut self, index: LogIndex, command: &KvCommand) -> KvOutput {
        let name = std::thread::current().name().unwrap_or("unnamed").to_owned();
        let own = format!("raft-n{}", self.id.0);
        if name != own && name != format!("{own}-b") {
            self.strangers.lock().unwrap().push(name);
        }
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
fn under_load_every_node_applies_on_its_own_workers_and_all_agree() {
    let _serial = serial();
    let strangers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&strangers);
    let factory = move |id| OwnThreads { id, kv: KvStateMachine::new(), strangers: seen.clone() };
    let cluster = Cluster::new(fast_config(61), 3, factory).expect("start");
    wait_for_agreement(&cluster, LONG);
    let client = cluster.client();
    for caller in load(&client, 16, 200) {
        caller.join().expect("caller");
    }
    let statuses = wait_converged(&cluster, 3, LONG);
    assert!(statuses[0].core.last_applied.0 >= 16 * 200, "every write applied: {statuses:?}");
    let strangers = strangers.lock().unwrap();
    assert!(
        strangers.is_empty(),
        "applied on another node's threads: {:?}",
        &strangers[..5.min(strangers.len())]
    );
}

#[test]
fn the_same_load_with_helping_off_gives_the_same_outcome() {
    let _serial = serial();
    let config = Config { help_peers: false, ..fast_config(62) };
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
    let mut cluster = cluster.expect("start");
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
