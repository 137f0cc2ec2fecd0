//! Log compaction on real threads, in the shape of the well-known lab suites: snapshots every
//! 10 entries while a follower is cut off and must catch up by InstallSnapshot (on a reliable
//! and on an unreliable network), a follower crashed and restarted from snapshot plus tail each
//! round, every node restarted together, a snapshot right after start, and a node added after
//! compaction. Each ends with every replica identical and the log kept after the snapshot small.

mod common;

use std::time::Duration;

use common::*;
use ferraft::{
    Cluster, Compaction, Config, Error, KvStateMachine, LogIndex, NetworkFaults, NodeId,
};

/// Snapshots every 10 entries, sent in small chunks.
fn compacting(seed: u64) -> Config {
    Config { snapshot_entries: 10, snapshot_chunk_bytes: 256, ..fast_config(seed) }
}

fn start(n: usize, seed: u64) -> Cluster<KvStateMachine> {
    let cluster = Cluster::new(compacting(seed), n, |_| KvStateMachine::new()).expect("start");
    wait_for_agreement(&cluster, LONG);
    cluster
}

fn write(cluster: &Cluster<KvStateMachine>, round: usize, count: usize) {
    for i in 0..count {
        let value = token(format!("r{round}-{i}"));
        cluster.propose_timeout(append(&format!("k{}", i % 7), &value), LONG).expect("applied");
    }
}

/// Every running node holds the same state, and keeps fewer than 100 entries after its
/// snapshot.
fn assert_identical_and_compact(cluster: &Cluster<KvStateMachine>) {
    wait_until(LONG, "replicas identical and compacted", || {
        let statuses = running_statuses(cluster)?;
        let agreed = agreement(statuses.clone())?;
        for s in &statuses {
            if s.core.log_entries >= 100 {
                return Err(format!("{} keeps {} entries", s.core.id, s.core.log_entries));
            }
            if s.core.snapshot_index == LogIndex(0) {
                return Err(format!("{} never compacted", s.core.id));
            }
        }
        Ok(agreed)
    });
}

#[test]
fn a_disconnected_follower_catches_up_by_install_snapshot() {
    let _serial = serial();
    let cluster = start(3, 61);
    let leader = cluster.leader().expect("leader");
    let lagger = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.disconnect(lagger).expect("known");
    write(&cluster, 0, 120);
    let before = cluster.status(lagger).expect("status").rpcs.install_snapshots;
    cluster.connect(lagger).expect("known");
    assert_identical_and_compact(&cluster);
    let after = cluster.status(lagger).expect("status").rpcs.install_snapshots;
    assert!(after > before, "it caught up through InstallSnapshot ({before} -> {after} chunks)");
}

#[test]
fn install_snapshot_on_an_unreliable_network() {
    let _serial = serial();
    let cluster = start(5, 62);
    cluster
        .set_faults(NetworkFaults {
            drop_requests: 0.1,
            drop_replies: 0.1,
            duplicate: 0.1,
            delay: Duration::ZERO..Duration::from_millis(5),
            ..NetworkFaults::default()
        })
        .expect("valid");
    for round in 0..3 {
        let leader = cluster.wait_for_leader(LONG).expect("leader");
        let lagger = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
        cluster.disconnect(lagger).expect("known");
        write(&cluster, round, 40);
        cluster.connect(lagger).expect("known");
    }
    cluster.clear_faults();
    assert_identical_and_compact(&cluster);
}

#[test]
fn a_follower_restarts_from_snapshot_plus_tail_each_round() {
    let _serial = serial();
    let cluster = start(3, 63);
    for round in 0..4 {
        let leader = cluster.wait_for_leader(LONG).expect("leader");
        let victim = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
        write(&cluster, round, 25);
        // NB: the follower learns the last commits and takes its snapshot off its loop, after
        // the leader has answered: kill it only once it holds one (CI once killed it before).
        wait_until(LONG, "the follower holds a snapshot", || {
            let status = cluster.status(victim).map_err(|e| e.to_string())?;
            let taken = status.core.snapshot_index > LogIndex(0);
            taken.then_some(()).ok_or_else(|| format!("{status:?}"))
        });
        cluster.kill(victim).expect("kill");
        write(&cluster, round + 100, 5);
        cluster.restart(victim).expect("restart");
        let status = cluster.status(victim).expect("restarted");
        assert!(status.core.snapshot_index > LogIndex(0), "restarted from a snapshot: {status:?}");
    }
    assert_identical_and_compact(&cluster);
}

#[test]
fn every_node_restarts_together_from_its_snapshot() {
    let _serial = serial();
    let cluster = start(3, 64);
    write(&cluster, 0, 55);
    wait_until(LONG, "every node compacted", || {
        let statuses = running_statuses(&cluster)?;
        match statuses.iter().all(|s| s.core.snapshot_index >= LogIndex(50)) {
            true => Ok(()),
            false => Err(describe(&statuses)),
        }
    });
    let digest = cluster.status(NodeId(1)).expect("status").digest;
    for id in cluster.ids() {
        cluster.kill(id).expect("kill");
    }
    for id in cluster.ids() {
        cluster.restart(id).expect("restart");
    }
    for id in cluster.ids() {
        // Restored from the snapshot at once, before any leader tells it what is committed.
        let status = cluster.status(id).expect("status");
        assert!(status.core.last_applied >= LogIndex(50), "{status:?}");
    }
    write(&cluster, 1, 15);
    assert_identical_and_compact(&cluster);
    let now = cluster.status(NodeId(1)).expect("status").digest;
    assert_ne!(now, digest, "new writes applied on top of the restored state");
}

#[test]
fn compact_on_demand_says_what_it_did() {
    let _serial = serial();
    let config = Config { snapshot_entries: 0, ..fast_config(65) }; // no automatic policy
    let cluster = Cluster::new(config, 3, |_| KvStateMachine::new()).expect("start");
    wait_for_agreement(&cluster, LONG);
    let leader = cluster.leader().expect("leader");
    // Right after start: only the leader's no-op is applied.
    let first = cluster.node(leader).expect("handle").compact(LONG).expect("compacted");
    let Compaction::Snapshot { index, .. } = first else { panic!("{first:?}") };
    write(&cluster, 0, 30);
    let done = cluster.node(leader).expect("handle").compact(LONG).expect("compacted");
    let Compaction::Snapshot { index: later, bytes, log_entries, .. } = done else {
        panic!("{done:?}")
    };
    assert!(later > index && bytes > 0 && log_entries == 0, "{done:?}");
    let again = cluster.node(leader).expect("handle").compact(LONG).expect("nothing new");
    assert_eq!(again, Compaction::UpToDate { snapshot_index: later });
    assert_eq!(cluster.status(leader).expect("status").core.snapshot_index, later);

    // Bad input: an unknown node, a dead one.
    assert_eq!(cluster.node(NodeId(42)).err(), Some(Error::UnknownNode(NodeId(42))));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    let handle = cluster.node(follower).expect("handle");
    cluster.kill(follower).expect("kill");
    assert_eq!(handle.compact(LONG), Err(Error::NodeDown(follower)));
}

#[test]
fn a_node_added_after_compaction_catches_up_by_snapshot() {
    let _serial = serial();
    let cluster = start(3, 66);
    write(&cluster, 0, 60);
    let id = cluster.add_node().expect("added: caught up through a snapshot, then promoted");
    let status = cluster.status(id).expect("status");
    assert!(status.core.is_voter());
    assert!(status.rpcs.install_snapshots > 0, "it could only catch up by snapshot: {status:?}");
    assert_identical_and_compact(&cluster);
}
