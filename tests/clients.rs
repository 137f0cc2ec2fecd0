//! The embedder's client surface: a `Client` shared by many threads without a lock, `Receipt`
//! awaited as a `Future` with no async runtime, deadlines that come from arguments or
//! `Config::request_timeout` (no hidden waits), and per-node RPC counters.

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use common::*;
use ferraft::{Cluster, Config, Error, KvStateMachine, NodeId};

/// A minimal executor: polls `future`, parking the thread until its waker unparks it. Enough to
/// show a `Receipt` is woken by the node thread, with no async runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let deadline = Instant::now() + LONG;
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        assert!(Instant::now() < deadline, "future not woken within {LONG:?}");
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

fn kv_cluster(n: usize, config: Config) -> Cluster<KvStateMachine> {
    let cluster = Cluster::new(config, n, |_| KvStateMachine::new()).expect("start");
    wait_for_agreement(&cluster, LONG);
    cluster
}

#[test]
fn one_client_shared_by_many_threads_applies_every_command_once() {
    let _serial = serial();
    let cluster = kv_cluster(3, fast_config(41));
    let client = cluster.client();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let value = token(format!("t{t}-{i}"));
                    client.propose(append("shared", &value)).expect("applied");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    let read = client.propose(get("shared")).expect("read").output.expect("value");
    let mut seen = tokens(&read);
    assert_eq!(seen.len(), 8 * 25, "each command applied exactly once");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 8 * 25, "no command applied twice");
}

#[test]
fn a_receipt_is_a_future_woken_by_the_node() {
    let _serial = serial();
    let cluster = kv_cluster(3, fast_config(42));
    let client = cluster.client();
    cluster.wait_for_leader(LONG).expect("a leader"); // the cluster's clients learn it
    assert!(client.leader_hint().is_some());
    let first = block_on(client.propose_async(append("f", "a;"))).expect("applied");
    let second = block_on(client.propose_async(append("f", "b;"))).expect("applied");
    assert_eq!(second.output.as_deref(), Some("a;b;"));
    assert!(second.index > first.index);
}

#[test]
fn propose_async_never_blocks_even_without_a_leader() {
    let _serial = serial();
    let cluster = kv_cluster(3, fast_config(43));
    for id in cluster.ids().into_iter().skip(1) {
        cluster.kill(id).expect("kill");
    }
    let started = Instant::now();
    let mut receipt = cluster.propose_async(append("k", "v;"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "propose_async blocked for {took:?}");
    // The lone node cannot commit: the receipt answers a refusal or times out, as asked.
    match receipt.wait(Duration::from_millis(300)) {
        Err(Error::Timeout | Error::NotLeader { .. }) => {}
        other => panic!("a lone node of three cannot apply: {other:?}"),
    }
}

#[test]
fn blocking_calls_give_up_at_the_request_timeout() {
    let _serial = serial();
    let config = Config { request_timeout: Duration::from_millis(500), ..fast_config(44) };
    let cluster = kv_cluster(3, config);
    for id in cluster.ids().into_iter().skip(1) {
        cluster.kill(id).expect("kill");
    }
    let started = Instant::now();
    let added = cluster.add_node();
    let took = started.elapsed();
    assert!(matches!(added, Err(Error::Timeout)), "no majority, no addition: {added:?}");
    // Generous slack for a loaded machine; before, this took 36 s.
    assert!(took < Duration::from_secs(5), "add_node took {took:?}");

    let started = Instant::now();
    // NB: `Unavailable` once the lone node stepped down (CheckQuorum), `Timeout` if it still
    // led and appended; `without_a_majority_propose_answers_unavailable_at_its_deadline`
    // tells them apart.
    let proposed = cluster.propose(append("k", "v;"));
    assert!(matches!(proposed, Err(Error::Timeout | Error::Unavailable { .. })), "{proposed:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "propose took {:?}", started.elapsed());
}

/// Without a majority no node can append: `propose_timeout` retries until its deadline, then
/// says the command was never applied (`Unavailable`, with the last refusal), not `Timeout`
/// ("may still be applied"), with and without forwarding; and indeed it never is.
#[test]
fn without_a_majority_propose_answers_unavailable_at_its_deadline() {
    let _serial = serial();
    let cluster = kv_cluster(3, fast_config(47));
    let leader = wait_for_agreement(&cluster, LONG).leader;
    cluster.propose(append("k", "before;")).expect("applied");
    // The leader and one follower go: the survivor never wins an election alone.
    let survivor = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let victims: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != survivor).collect();
    for &id in &victims {
        cluster.kill(id).expect("kill");
    }
    let timeout = ms(300);
    for forward in [false, true] {
        let client = cluster.client().forward_to_leader(forward);
        let started = Instant::now();
        let result = client.propose_timeout(append("k", "lost;"), timeout);
        let took = started.elapsed();
        let refused = |last: &Error| {
            matches!(
                last,
                Error::NotLeader { .. } | Error::NodeDown(_) | Error::LeaderUnreachable(_)
            )
        };
        assert!(
            matches!(&result, Err(Error::Unavailable { last }) if refused(last)),
            "forwarding {forward}: {result:?}"
        );
        assert!(took >= timeout, "gave up before its deadline: {took:?}");
        assert!(took < timeout + Duration::from_secs(2), "gave up {took:?} after it");
    }
    for &id in &victims {
        cluster.restart(id).expect("restart");
    }
    wait_for_agreement(&cluster, LONG);
    let after = cluster.propose(append("k", "after;")).expect("applied");
    assert_eq!(after.output.as_deref(), Some("before;after;"), "never applied, as it said");
}

/// A proposal a cut-off leader appended may yet commit, for all its client can tell: at the
/// deadline `propose_timeout` says `Timeout` (outcome unknown), not `Unavailable`.
#[test]
fn a_proposal_appended_by_a_cut_off_leader_times_out() {
    let _serial = serial();
    let config = Config { check_quorum: false, ..fast_config(48) };
    let cluster = kv_cluster(3, config);
    let client = cluster.client();
    client.propose(append("k", "before;")).expect("applied");
    let leader = client.leader_hint().expect("learned from the answer");
    cluster.isolate(leader).expect("isolate");
    let before = cluster.status(leader).expect("status").core;
    let timeout = ms(300);
    let started = Instant::now();
    let result = client.propose_timeout(append("k", "cut;"), timeout);
    let took = started.elapsed();
    assert_eq!(result, Err(Error::Timeout));
    assert!(took >= timeout, "gave up before its deadline: {took:?}");
    assert!(took < timeout + Duration::from_secs(2), "gave up {took:?} after it");
    let after = cluster.status(leader).expect("status").core;
    assert_eq!((after.role, after.term), (ferraft::Role::Leader, before.term), "it leads on");
    assert!(after.last_log_index > before.last_log_index, "it appended the proposal");
    cluster.clear_faults();
}

#[test]
fn rpc_counters_count_requests_received_by_kind() {
    let _serial = serial();
    let cluster = kv_cluster(3, fast_config(45));
    let leader = cluster.leader().expect("leader");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("follower");
    let before = cluster.status(follower).expect("status").rpcs;
    for i in 0..10 {
        cluster.propose(append("c", &token(i))).expect("applied");
    }
    let after = cluster.status(follower).expect("status").rpcs;
    assert!(
        after.append_entries > before.append_entries,
        "replication reaches the follower as AppendEntries: {before:?} -> {after:?}"
    );
    assert_eq!(after.timeout_nows, 0, "no transfer was asked for");
    let leader_rpcs = cluster.status(leader).expect("status").rpcs;
    assert_eq!(leader_rpcs.append_entries, 0, "nobody replicates to the leader");
    assert!(leader_rpcs.replies > 0, "the leader hears replies");
    assert!(after.requests() >= after.append_entries);
}

#[test]
fn unknown_node_and_stopped_cluster_are_typed_errors() {
    let _serial = serial();
    let cluster = kv_cluster(1, fast_config(46));
    assert_eq!(cluster.node(NodeId(9)).err(), Some(Error::UnknownNode(NodeId(9))));
    let client = cluster.client();
    cluster.kill(NodeId(1)).expect("kill");
    let mut receipt = client.propose_async(append("k", "v;"));
    assert_eq!(receipt.wait(Duration::from_secs(1)).err(), Some(Error::Shutdown));
    let err = client.propose(append("k", "v;")).expect_err("no node runs");
    assert_eq!(err, Error::Shutdown);
    assert!(err.to_string().contains("restart"), "the message says what to do: {err}");
}

#[test]
fn with_endless_spinning_nodes_still_elect_serve_and_stop() {
    let _serial = serial();
    // `spin_rounds: u32::MAX`: an idle node loop would yield for hours before it looked at
    // its ticker or its shutdown channel; both must end the spin, or nobody ever times out
    // into an election and shutting down hangs.
    let cluster = kv_cluster(3, Config { spin_rounds: u32::MAX, ..fast_config(45) });
    wait_for_agreement(&cluster, LONG);
    let client = cluster.client();
    client.propose(append("spun", "v;")).expect("applied");
    assert_eq!(client.read("spun".to_owned()).expect("a linearizable read").as_deref(), Some("v;"));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        cluster.shutdown();
        let _ = done_tx.send(());
    });
    done_rx.recv_timeout(LONG).expect("shutdown returns while the nodes spin");
}

#[test]
fn with_spinning_off_every_waiter_sleeps_and_is_still_woken() {
    let _serial = serial();
    // `spin_rounds: 0`: node loops park at once and callers sleep on their receipts, so every
    // answer must come through a wake-up.
    let cluster = kv_cluster(3, Config { spin_rounds: 0, ..fast_config(44) });
    let client = cluster.client();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    client.propose(append("sleepy", &token(format!("t{t}-{i}")))).expect("applied");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    let value = client.read("sleepy".to_owned()).expect("a linearizable read");
    assert_eq!(tokens(&value.expect("written")).len(), 4 * 20, "every write, once");
}
