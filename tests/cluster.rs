//! The threaded runtime end to end: elections, replication, restarts, concurrent clients,
//! receipts and shutdown. Each test builds its own cluster and shuts it down (or drops it,
//! which joins every thread).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ferraft::{
    Applied, Cluster, Config, Error, KvCommand, KvOutput, KvStateMachine, LogIndex, NodeHandle,
    NodeId, Role, Term,
};

fn kv_cluster(config: Config, nodes: usize) -> Cluster<KvStateMachine> {
    init_tracing();
    Cluster::new(config, nodes, |_| KvStateMachine::new()).expect("starting the cluster")
}

/// Proposes through the cluster (which finds the leader and retries) and expects success.
fn propose_ok<S: ferraft::StateMachine>(
    cluster: &Cluster<S>,
    command: S::Command,
) -> Applied<S::Output> {
    let shown = format!("{command:?}");
    cluster.propose(command).unwrap_or_else(|e| panic!("proposing {shown}: {e}"))
}

#[test]
fn one_leader_after_start_and_all_nodes_agree_on_it() {
    let _serial = serial();
    let cluster = kv_cluster(fast_config(11), 5);

    let agreed = wait_for_agreement(&cluster, LONG);

    let leaders: Vec<NodeId> =
        agreed.statuses.iter().filter(|s| s.core.role == Role::Leader).map(|s| s.core.id).collect();
    assert_eq!(leaders, vec![agreed.leader], "{}", describe(&agreed.statuses));
    assert_eq!(agreed.statuses.len(), 5);
    for s in &agreed.statuses {
        assert_eq!(s.core.term, agreed.term, "{}", describe(&agreed.statuses));
        assert_eq!(s.core.leader, Some(agreed.leader), "{}", describe(&agreed.statuses));
    }
    assert!(agreed.term > Term(0), "an election raises the term");
    cluster.shutdown();
}

#[test]
fn no_new_election_while_the_leader_is_healthy() {
    let _serial = serial();
    // Ample margin: an election would need a node thread starved for 300 ms.
    let cluster = kv_cluster(roomy_config(12), 3);
    let agreed = wait_for_agreement(&cluster, LONG);

    // Observe ~2 s of steady heartbeats (about 65 heartbeat intervals).
    let start = Instant::now();
    let mut polls = 0;
    while start.elapsed() < Duration::from_secs(2) {
        let statuses = running_statuses(&cluster).expect("every node answers");
        for s in &statuses {
            let what = describe(&statuses);
            assert_eq!(s.core.term, agreed.term, "term changed while healthy: {what}");
            assert_eq!(s.core.leader, Some(agreed.leader), "leader changed while healthy: {what}");
        }
        polls += 1;
        std::thread::sleep(ms(20));
    }
    let after = wait_for_agreement(&cluster, LONG);
    assert_eq!((after.leader, after.term), (agreed.leader, agreed.term));
    assert!(polls > 10, "observed the cluster only {polls} times");
    cluster.shutdown();
}

#[test]
fn a_new_leader_with_a_higher_term_after_the_leader_is_killed() {
    let _serial = serial();
    let cluster = kv_cluster(fast_config(13), 3);
    let first = wait_for_agreement(&cluster, LONG);

    cluster.kill(first.leader).expect("killing the leader");

    let second = wait_for_agreement(&cluster, LONG);
    assert_ne!(second.leader, first.leader);
    assert!(second.term > first.term, "new leader's {} not above {}", second.term, first.term);
    assert_eq!(second.statuses.len(), 2);
    propose_ok(&cluster, append("k", "after"));
    cluster.shutdown();
}

#[test]
fn all_nodes_agree_on_a_stream_of_commands() {
    let _serial = serial();
    let cluster = kv_cluster(fast_config(14), 5);
    let keys = ["a", "b", "c", "d"];
    let mut model: BTreeMap<&str, String> = BTreeMap::new();
    let mut last_index = LogIndex(0);

    for i in 0..200 {
        let key = keys[i % keys.len()];
        let value = token(i);
        let applied = propose_ok(&cluster, append(key, &value));
        let expected = model.entry(key).or_default();
        expected.push_str(&value);
        // Each output is the key's value after the append: every earlier append exactly once,
        // in order, then this one.
        assert_eq!(applied.output.as_deref(), Some(expected.as_str()), "append {i}");
        assert!(applied.index > last_index, "index {} after {}", applied.index, last_index);
        last_index = applied.index;
    }

    let statuses = wait_converged(&cluster, 5, LONG);
    assert!(statuses[0].core.last_applied >= last_index);
    for key in keys {
        let read = propose_ok(&cluster, get(key));
        assert_eq!(read.output.as_deref(), Some(model[key].as_str()), "key {key}");
        assert_eq!(tokens(&model[key]).len(), 50);
    }
    cluster.shutdown();
}

#[test]
fn progress_with_a_minority_killed() {
    let _serial = serial();
    let cluster = kv_cluster(fast_config(15), 5);
    let agreed = wait_for_agreement(&cluster, LONG);
    let follower = cluster.ids().into_iter().find(|&id| id != agreed.leader).expect("a follower");

    cluster.kill(agreed.leader).expect("kill leader");
    cluster.kill(follower).expect("kill follower");

    let mut expected = String::new();
    for i in 0..20 {
        let value = token(i);
        expected.push_str(&value);
        let applied = propose_ok(&cluster, append("k", &value));
        assert_eq!(applied.output.as_deref(), Some(expected.as_str()));
    }
    let statuses = wait_converged(&cluster, 3, LONG);
    assert!(statuses.iter().all(|s| s.core.id != agreed.leader && s.core.id != follower));
    cluster.shutdown();
}

#[test]
fn no_commit_without_a_majority_then_recovery() {
    let _serial = serial();
    let cluster = kv_cluster(fast_config(16), 5);
    propose_ok(&cluster, append("k", &token("before")));
    let before = wait_converged(&cluster, 5, LONG);
    let agreed = wait_for_agreement(&cluster, LONG);
    // Kill 3 of 5 including the leader, so the survivors cannot form a majority.
    let mut victims = vec![agreed.leader];
    victims.extend(cluster.ids().into_iter().filter(|&id| id != agreed.leader).take(2));
    for &id in &victims {
        cluster.kill(id).expect("kill");
    }

    // The leader is gone and the survivors cannot elect one: nobody appends it.
    let result = cluster.propose_timeout(append("k", &token("minority")), ms(1500));
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "without a majority a proposal must not succeed, got {result:?}"
    );
    // Nothing was applied on the survivors: same state as before the kills.
    let survivors = running_statuses(&cluster).expect("survivors answer");
    for s in &survivors {
        assert_eq!(s.digest, before[0].digest, "{}", describe(&survivors));
        assert_eq!(s.core.last_applied, before[0].core.last_applied, "{}", describe(&survivors));
    }

    for &id in &victims {
        cluster.restart(id).expect("restart");
    }
    let after = propose_ok(&cluster, append("k", &token("after")));
    let value = after.output.expect("appended value");
    assert!(value.starts_with("before;"), "{value}");
    assert!(value.ends_with("after;"), "{value}");
    // The minority proposal was never applied (`Unavailable`), nor is it later.
    assert!(!tokens(&value).iter().any(|t| t == "minority;"), "{value}");
    wait_converged(&cluster, 5, LONG);
    cluster.shutdown();
}

#[test]
fn a_restarted_node_applies_the_same_entries_in_the_same_order() {
    let _serial = serial();
    init_tracing();
    let records = Records::default();
    let cluster = Cluster::new(fast_config(17), 3, records.factory()).expect("start");
    let mut proposed = Vec::new();
    let mut write = |cluster: &Cluster<Recorder>, i: usize| {
        let command = append(["x", "y"][i % 2], &token(i));
        proposed.push(command.clone());
        propose_ok(cluster, command);
    };
    for i in 0..30 {
        write(&cluster, i);
    }
    let old_leader = wait_for_agreement(&cluster, LONG).leader;
    cluster.kill(old_leader).expect("kill");
    for i in 30..60 {
        write(&cluster, i);
    }
    cluster.restart(old_leader).expect("restart");
    for i in 60..70 {
        write(&cluster, i);
    }
    wait_converged(&cluster, 3, LONG);
    let leader = wait_for_agreement(&cluster, LONG).leader;

    let restarted = records.of(old_leader);
    let reference = records.of(leader);
    assert_strictly_increasing(old_leader, &restarted);
    assert_eq!(restarted, reference, "{old_leader} and {leader} applied different sequences");
    let commands: Vec<KvCommand> = reference.into_iter().map(|(_, c)| c).collect();
    assert_eq!(commands, proposed, "the log holds each proposal once, in proposal order");
    cluster.shutdown();
}

/// A client for a shared cluster: keeps a handle to the node it believes leads, and retries
/// only on answers that prove the command was never applied.
fn propose_from_thread(
    cluster: &Mutex<Cluster<KvStateMachine>>,
    handle: &mut Option<NodeHandle<KvStateMachine>>,
    command: KvCommand,
) -> Applied<KvOutput> {
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "no leader accepted {command:?}");
        let Some(node) = handle.clone() else {
            let cluster = cluster.lock().expect("cluster lock");
            *handle = cluster.leader().and_then(|id| cluster.node(id).ok());
            drop(cluster);
            if handle.is_none() {
                std::thread::sleep(POLL); // no leader yet: back off, then look again
            }
            continue;
        };
        match node.propose(command.clone(), LONG) {
            Ok(applied) => return applied,
            Err(Error::NotLeader { .. } | Error::ProposalDropped { .. }) => *handle = None,
            Err(e) => panic!("{command:?}: outcome unknown in a healthy cluster: {e}"),
        }
    }
}

#[test]
fn concurrent_proposals_from_several_threads_all_commit_exactly_once() {
    let _serial = serial();
    let cluster = Arc::new(Mutex::new(kv_cluster(fast_config(18), 3)));
    let (threads, per_thread) = (4, 100);

    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let cluster = Arc::clone(&cluster);
            std::thread::spawn(move || {
                let mut handle = None;
                for i in 0..per_thread {
                    let key = ["p", "q"][i % 2];
                    let value = token(format!("t{t}-{i}"));
                    let applied = propose_from_thread(&cluster, &mut handle, append(key, &value));
                    let after = applied.output.expect("an append returns the value");
                    assert!(after.ends_with(&value), "output {after} lacks {value}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("client thread panicked");
    }

    let cluster = Arc::try_unwrap(cluster)
        .ok()
        .expect("clients are done")
        .into_inner()
        .expect("cluster lock");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for key in ["p", "q"] {
        let value = propose_ok(&cluster, get(key)).output.unwrap_or_default();
        let all = tokens(&value);
        for t in 0..threads {
            // Each thread proposes sequentially, so its values appear in its order.
            let mine: Vec<&String> =
                all.iter().filter(|v| v.starts_with(&format!("t{t}-"))).collect();
            let expected: Vec<String> = (0..per_thread)
                .filter(|i| ["p", "q"][i % 2] == key)
                .map(|i| token(format!("t{t}-{i}")))
                .collect();
            assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "thread {t} on key {key}");
        }
        for v in all {
            *seen.entry(v).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), threads * per_thread);
    assert!(seen.values().all(|&n| n == 1), "duplicates: {seen:?}");
    wait_converged(&cluster, 3, LONG);
    cluster.shutdown();
}

#[test]
fn propose_async_receipts_report_increasing_positions_then_outputs() {
    let _serial = serial();
    let cluster = kv_cluster(fast_config(19), 3);
    let agreed = wait_for_agreement(&cluster, LONG);
    let leader = cluster.node(agreed.leader).expect("leader handle");

    let mut receipts = Vec::new();
    for i in 0..64 {
        let receipt = leader.propose_async(append("r", &token(i))).expect("sent");
        assert_eq!(receipt.node(), agreed.leader);
        receipts.push(receipt);
    }
    let mut last = LogIndex(0);
    let mut positions = Vec::new();
    for receipt in &mut receipts {
        let (index, term) = receipt.position(LONG).expect("appended by the leader");
        assert!(index > last, "index {index} after {last}");
        assert_eq!(term, agreed.term, "appended in the leader's term");
        assert_eq!(receipt.position(LONG), Ok((index, term)), "position is remembered");
        last = index;
        positions.push((index, term));
    }
    let mut expected = String::new();
    for (i, (mut receipt, (index, term))) in receipts.into_iter().zip(positions).enumerate() {
        let applied = receipt.wait(LONG).expect("applied");
        expected.push_str(&token(i));
        assert_eq!((applied.index, applied.term), (index, term));
        assert_eq!(applied.output.as_deref(), Some(expected.as_str()), "output of proposal {i}");
    }
    cluster.shutdown();
}

#[test]
fn dropping_the_cluster_joins_every_thread() {
    let _serial = serial();
    let before = raft_threads();
    let ids = [NodeId(71), NodeId(72), NodeId(73)];
    let cluster =
        Cluster::with_ids(fast_config(20), &ids, |_| KvStateMachine::new()).expect("start");
    wait_for_agreement(&cluster, LONG);
    propose_ok(&cluster, append("k", "v"));
    let during = raft_threads();
    for id in ids {
        assert!(during.contains(&format!("raft-{id}")), "no thread for {id}: {during:?}");
        assert!(during.contains(&format!("raft-{id}-b")), "no second worker: {during:?}");
    }
    assert!(during.contains(&"raft-net-delay".to_owned()), "{during:?}");
    assert_eq!(during.len(), before.len() + 2 * ids.len() + 1, "{during:?}");

    drop(cluster);

    // Drop returns only after joining every thread. NB: a joined thread can still be listed
    // in /proc for a moment (the kernel wakes the joiner when the thread clears its tid, just
    // before it leaves the thread group; CI once saw the last one joined, `raft-n73-b`), so
    // wait for the listing with a deadline; a thread never joined stays listed for good.
    wait_until(LONG, "threads gone after the cluster was dropped", || {
        let now = raft_threads();
        if now == before {
            Ok(())
        } else {
            Err(format!("threads left: {now:?}, before: {before:?}"))
        }
    });
}

#[test]
fn a_killed_node_is_down_and_restarts_with_its_persisted_term() {
    let _serial = serial();
    let cluster = kv_cluster(fast_config(21), 3);
    let agreed = wait_for_agreement(&cluster, LONG);
    propose_ok(&cluster, append("k", "v"));
    let victim = cluster.ids().into_iter().find(|&id| id != agreed.leader).expect("a follower");
    let term_before = cluster.status(victim).expect("status").core.term;

    cluster.kill(victim).expect("kill");
    assert_eq!(cluster.status(victim), Err(Error::NodeDown(victim)));
    assert!(!cluster.is_running(victim));
    assert!(cluster.statuses().iter().all(|s| s.core.id != victim));

    cluster.restart(victim).expect("restart");
    assert!(cluster.is_running(victim));
    let status = cluster.status(victim).expect("status after restart");
    assert!(status.core.term >= term_before, "{} below {term_before}", status.core.term);
    wait_converged(&cluster, 3, LONG);
    cluster.shutdown();
}

/// `wait_caught_up` right after a leader change: the old leader committed a write (its
/// client heard so) and was cut off before telling the others; the new leader's
/// `commit_index` is below that write until it commits an entry of its own term. The
/// restarted node is then "caught up" without the write, though it was committed before
/// the call (README: "waits until one has applied what was committed before").
#[test]
fn wait_caught_up_counts_what_the_previous_leader_committed() {
    let _serial = serial();
    let cluster = kv_cluster(roomy_config(93), 3);
    let old = cluster.wait_for_leader(LONG).expect("leader");
    propose_ok(&cluster, append("k", "a;"));
    wait_converged(&cluster, 3, LONG);
    let others: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != old).collect();
    let (next, down) = (others[0], others[1]);
    cluster.kill(down).expect("kill");
    // `next` stores the write and would hear it committed 150 ms after the fact (less than
    // an election timeout: no election meanwhile).
    let slow = |delay: Duration, spare_elections| ferraft::NetworkFaults {
        delay: delay..delay,
        spare_elections,
        ..Default::default()
    };
    cluster.set_link_faults(old, next, slow(ms(150), false)).expect("faults");
    let committed = propose_ok(&cluster, append("k", "b;")).index;
    cluster.isolate(old).expect("isolate"); // what it sent since is lost when due
                                            // The new leader's appends to `down` take 1.5 s: it commits nothing of its own term for
                                            // that long.
    cluster.set_link_faults(next, down, slow(ms(1500), true)).expect("faults");
    cluster.restart(down).expect("restart");
    let before = wait_until(LONG, "next to lead", || {
        let status = cluster.status(next).map_err(|e| e.to_string())?;
        match status.core.role {
            Role::Leader => Ok(status.core),
            role => Err(format!("{role:?}")),
        }
    });
    assert!(
        before.commit_index < committed,
        "the scenario: a leader not yet committed in its term"
    );
    let applied = cluster.wait_caught_up(down, LONG).expect("caught up");
    assert!(
        applied >= committed,
        "{down} 'caught up' at {applied}, below {committed} committed before"
    );
    cluster.shutdown();
}
