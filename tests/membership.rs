//! Membership changes on the threaded cluster (section 6, thesis chapter 4): learners that catch
//! up, promotion, removal (including the leader), non-disruption, and every refusal.

use std::time::{Duration, Instant};

use ferraft::{Cluster, Config, Error, KvCommand, KvStateMachine, MembershipChange, NodeId, Role};

fn config() -> Config {
    Config {
        election_timeout: Duration::from_millis(100)..Duration::from_millis(200),
        heartbeat_interval: Duration::from_millis(20),
        tick: Duration::from_millis(5),
        catch_up_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// Timing for tests that assert the absence of elections: roomy enough that a loaded 2-core
/// machine starving a thread for 100 ms does not depose a healthy leader.
fn roomy() -> Config {
    Config {
        election_timeout: Duration::from_millis(300)..Duration::from_millis(600),
        heartbeat_interval: Duration::from_millis(30),
        tick: Duration::from_millis(10),
        catch_up_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

fn roomy_cluster(n: usize) -> Cluster<KvStateMachine> {
    let c = Cluster::new(roomy(), n, |_| KvStateMachine::new()).expect("valid config");
    c.wait_for_leader(Duration::from_secs(20)).expect("a leader");
    c
}

fn cluster(n: usize) -> Cluster<KvStateMachine> {
    let c = Cluster::new(config(), n, |_| KvStateMachine::new()).expect("valid config");
    c.wait_for_leader(Duration::from_secs(20)).expect("a leader");
    c
}

/// Polls `cond` until it holds or the deadline passes; panics with `what` on timeout.
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn put(c: &Cluster<KvStateMachine>, key: &str, value: &str) {
    let cmd = KvCommand::Put { key: key.into(), value: value.into() };
    c.propose(cmd).expect("write commits");
}

fn converged(c: &Cluster<KvStateMachine>) -> bool {
    let s = c.statuses();
    s.len() == c.ids().iter().filter(|&&id| c.is_running(id)).count()
        && s.windows(2)
            .all(|w| w[0].digest == w[1].digest && w[0].core.last_applied == w[1].core.last_applied)
}

#[test]
fn added_node_catches_up_as_learner_then_becomes_voter() {
    let c = cluster(3);
    for i in 0..500 {
        put(&c, &format!("k{}", i % 20), &i.to_string());
    }
    let id = c.add_node().expect("add succeeds");
    assert_eq!(id, NodeId(4), "ids continue after the initial ones");
    let leader = c.leader().expect("leader");
    let config = c.status(leader).expect("leader status").core.config;
    assert!(config.voters.contains(&id) && config.learners.is_empty(), "{config:?}");
    put(&c, "after", "add");
    wait_until("the new node holds every write", Duration::from_secs(20), || converged(&c));
    assert_eq!(c.status(id).expect("status").core.role_name(), "Follower");
}

#[test]
fn node_ids_are_never_reused() {
    let c = cluster(3);
    let a = c.add_node().expect("add");
    c.remove_node(a).expect("remove");
    let b = c.add_node().expect("add again");
    assert!(b > a, "{b} reuses or precedes {a}");
}

#[test]
fn removing_a_follower_shrinks_the_configuration() {
    let c = roomy_cluster(5);
    let leader = c.leader().expect("leader");
    let victim = c.ids().into_iter().find(|&id| id != leader).expect("a follower");
    c.remove_node(victim).expect("remove");
    assert!(!c.is_running(victim), "removed node is stopped");
    let config = c.status(leader).expect("status").core.config;
    assert_eq!(config.voters.len(), 4);
    assert!(!config.contains(victim));
    put(&c, "still", "writable");
}

#[test]
fn removing_the_leader_makes_it_step_down_and_others_elect() {
    let c = cluster(3);
    put(&c, "before", "1");
    let old = c.leader().expect("leader");
    let old_term = c.status(old).expect("status").core.term;
    c.remove_node(old).expect("remove the leader");
    let new = c.wait_for_leader(Duration::from_secs(20)).expect("new leader");
    assert_ne!(new, old);
    let status = c.status(new).expect("status").core;
    assert!(status.term > old_term, "new leader in a later term");
    assert!(!status.config.contains(old));
    put(&c, "after", "2");
}

#[test]
fn removed_node_that_keeps_running_never_disrupts_the_leader() {
    let c = roomy_cluster(5);
    let leader = c.leader().expect("leader");
    let victim = c.ids().into_iter().find(|&id| id != leader).expect("a follower");
    // Cut it off first so it never learns of its removal, then let it time out on its own.
    c.isolate(victim).expect("isolate");
    c.change_membership(MembershipChange::RemoveNode(victim)).expect("remove while isolated");
    wait_until("the removed node campaigns", Duration::from_secs(20), || {
        c.status(victim).is_ok_and(|s| s.core.role != Role::Follower || s.core.leader.is_none())
    });
    c.heal();
    let term = c.status(leader).expect("status").core.term;
    // Observe ten maximum election timeouts: the leader and its term must not change.
    let watch = roomy().election_timeout.end * 10;
    let until = Instant::now() + watch;
    while Instant::now() < until {
        let s = c.status(leader).expect("leader status").core;
        assert_eq!((s.role, s.term), (Role::Leader, term), "leader disrupted by removed {victim}");
        std::thread::sleep(Duration::from_millis(20));
    }
    put(&c, "undisturbed", "yes");
}

#[test]
fn node_isolated_for_ten_election_timeouts_rejoins_without_deposing_the_leader() {
    let c = roomy_cluster(5);
    let leader = c.leader().expect("leader");
    let term = c.status(leader).expect("status").core.term;
    let loner = c.ids().into_iter().find(|&id| id != leader).expect("a follower");
    c.isolate(loner).expect("isolate");
    std::thread::sleep(roomy().election_timeout.end * 10); // NB: the fault's duration, not a wait for an outcome
    put(&c, "while", "isolated");
    c.heal();
    wait_until("the loner catches up", Duration::from_secs(20), || converged(&c));
    let s = c.status(leader).expect("status").core;
    assert_eq!((s.role, s.term), (Role::Leader, term), "leader deposed on rejoin");
    let loner_term = c.status(loner).expect("status").core.term;
    assert_eq!(loner_term, term, "pre-vote kept the isolated node's term from inflating");
}

#[test]
fn catch_up_that_cannot_finish_fails_and_leaves_the_configuration_as_it_was() {
    let c = cluster(3);
    let leader = c.leader().expect("leader");
    let before = c.status(leader).expect("status").core.config;
    let handle = c.node(leader).expect("leader handle");
    // A node id with no server behind it can never catch up.
    let ghost = NodeId(99);
    let h = handle.clone();
    let adding = std::thread::spawn(move || {
        h.change_membership(MembershipChange::AddNode(ghost), Duration::from_secs(60))
    });
    wait_until("the ghost shows as a learner", Duration::from_secs(10), || {
        c.status(leader).is_ok_and(|s| s.core.config.learners.contains(&ghost))
    });
    let second =
        handle.change_membership(MembershipChange::AddNode(NodeId(98)), Duration::from_secs(5));
    assert_eq!(second, Err(Error::ChangeInProgress));
    assert_eq!(adding.join().expect("thread"), Err(Error::CatchUpFailed(ghost)));
    wait_until("configuration restored", Duration::from_secs(10), || {
        c.status(leader).is_ok_and(|s| s.core.config == before)
    });
}

#[test]
fn membership_refusals_are_typed() {
    let c = cluster(3);
    assert_eq!(c.remove_node(NodeId(42)), Err(Error::UnknownNode(NodeId(42))));
    let leader = c.leader().expect("leader");
    let victim = c.ids().into_iter().find(|&id| id != leader).expect("a follower");
    c.remove_node(victim).expect("first removal");
    assert_eq!(c.remove_node(victim), Err(Error::NotMember(victim)), "removed twice");
    let follower = c.ids().into_iter().find(|&id| id != leader && id != victim).expect("follower");
    wait_until("the follower knows the leader", Duration::from_secs(10), || {
        c.status(follower).is_ok_and(|s| s.core.leader == Some(leader))
    });
    let refused = c
        .node(follower)
        .expect("handle")
        .change_membership(MembershipChange::AddNode(NodeId(77)), Duration::from_secs(5));
    assert_eq!(refused, Err(Error::NotLeader { leader_hint: Some(leader) }));
    let already = c
        .node(leader)
        .expect("handle")
        .change_membership(MembershipChange::AddNode(follower), Duration::from_secs(5));
    assert_eq!(already, Err(Error::AlreadyMember(follower)));
}

#[test]
fn removing_the_last_voter_is_refused() {
    let c = cluster(1);
    let only = c.ids()[0];
    assert_eq!(c.remove_node(only), Err(Error::LastVoter(only)));
    put(&c, "still", "serving");
}

#[test]
fn membership_churn_keeps_nothing_for_removed_nodes() {
    let c = cluster(3);
    assert_eq!(c.kept_for_nodes(), (3, 3), "a slot and an in-memory store per node");
    for round in 0..5 {
        let added = c.add_node().expect("add");
        put(&c, "k", &round.to_string());
        // The oldest goes: the first rounds retire the initial ids (the leader, maybe).
        let oldest = c.ids()[0];
        c.remove_node(oldest).expect("remove");
        assert_eq!(c.kept_for_nodes(), (3, 3), "round {round}: nothing kept for {oldest}");
        assert!(c.ids().contains(&added) && !c.ids().contains(&oldest));
        assert_eq!(c.restart(oldest), Err(Error::NotMember(oldest)), "ids are never reused");
        assert_eq!(c.remove_node(oldest), Err(Error::NotMember(oldest)));
        assert_eq!(c.status(oldest), Err(Error::NotMember(oldest)));
        assert_eq!(c.node(oldest).err(), Some(Error::NotMember(oldest)));
        assert_eq!(c.kill(oldest), Err(Error::NotMember(oldest)));
        assert!(!c.is_running(oldest) && c.failure(oldest).is_none());
    }
    assert_eq!(c.status(NodeId(99)), Err(Error::UnknownNode(NodeId(99))), "never had it");
    put(&c, "after", "churn");
    wait_until("the remaining nodes agree", Duration::from_secs(20), || converged(&c));
}

#[test]
fn an_addition_that_fails_keeps_nothing_for_the_new_node() {
    let short = Config {
        request_timeout: Duration::from_millis(600),
        catch_up_timeout: Duration::from_millis(600),
        ..config()
    };
    let c = Cluster::new(short, 3, |_| KvStateMachine::new()).expect("valid config");
    let leader = c.wait_for_leader(Duration::from_secs(20)).expect("a leader");
    for id in c.ids().into_iter().filter(|&id| id != leader) {
        c.kill(id).expect("kill a follower");
    }
    let failed = c.add_node();
    assert!(failed.is_err(), "no quorum, no addition: {failed:?}");
    let ghost = NodeId(4);
    assert_eq!(c.kept_for_nodes(), (3, 3), "nothing kept for {ghost}");
    assert_eq!(c.restart(ghost), Err(Error::NotMember(ghost)));
    assert_eq!(c.status(ghost), Err(Error::NotMember(ghost)));
    assert_eq!(c.ids(), vec![NodeId(1), NodeId(2), NodeId(3)]);
}

#[test]
fn a_users_storage_hears_when_a_node_is_retired() {
    use std::sync::{Arc, Mutex};
    let retired: Arc<Mutex<Vec<NodeId>>> = Arc::default();
    let told = Arc::clone(&retired);
    let c = Cluster::builder(config(), |_| KvStateMachine::new())
        .storage(|id, bootstrap| match id {
            NodeId(4) => Err(std::io::Error::other("no room for n4")),
            _ => Ok(ferraft::MemStorage::new(bootstrap.clone())),
        })
        .on_removed(move |id| told.lock().expect("lock").push(id))
        .start()
        .expect("start");
    c.wait_for_leader(Duration::from_secs(20)).expect("a leader");
    let refused = c.add_node();
    assert!(matches!(refused, Err(Error::Storage(_))), "{refused:?}");
    let added = c.add_node().expect("the next id opens");
    assert_eq!(added, NodeId(5));
    c.remove_node(added).expect("remove");
    assert_eq!(*retired.lock().expect("lock"), vec![NodeId(4), NodeId(5)]);
    assert_eq!(c.kept_for_nodes(), (3, 0), "slots only: the user's factory keeps the stores");
    assert_eq!(c.restart(NodeId(4)), Err(Error::NotMember(NodeId(4))));
    assert_eq!(c.node(NodeId(5)).err(), Some(Error::NotMember(NodeId(5))));
    c.shutdown();
    assert_eq!(retired.lock().expect("lock").len(), 2, "shutdown retires nothing");
}
