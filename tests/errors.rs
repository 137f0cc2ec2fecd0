//! Every documented error case returns its typed error, and error messages say what to do.

mod common;

use std::time::Duration;

use common::*;
use ferraft::{
    Cluster, Config, ConfigError, Error, FaultError, KvStateMachine, LogIndex, MembershipChange,
    NetworkFaults, NodeId, Term,
};

fn kv_cluster(config: Config, nodes: usize) -> Cluster<KvStateMachine> {
    init_tracing();
    Cluster::new(config, nodes, |_| KvStateMachine::new()).expect("starting the cluster")
}

/// The error `Cluster::new` gives for `config` with 3 nodes.
fn start_error(config: Config) -> Error {
    Cluster::new(config, 3, |_| KvStateMachine::new()).err().expect("the config must be refused")
}

#[test]
fn invalid_configs_are_refused_with_the_reason() {
    let base = Config::default();
    let cases = [
        (
            Config { election_timeout: ms(150)..ms(150), ..base.clone() },
            ConfigError::EmptyElectionTimeout { min: ms(150) },
        ),
        (
            Config { election_timeout: ms(300)..ms(150), ..base.clone() },
            ConfigError::InvertedElectionTimeout { min: ms(300), max: ms(150) },
        ),
        (
            Config { heartbeat_interval: ms(150), ..base.clone() },
            ConfigError::HeartbeatTooSlow { heartbeat: ms(150), min_election: ms(150) },
        ),
        (
            Config { heartbeat_interval: ms(200), ..base.clone() },
            ConfigError::HeartbeatTooSlow { heartbeat: ms(200), min_election: ms(150) },
        ),
        (
            Config { tick: Duration::ZERO, ..base.clone() },
            ConfigError::BadTick { tick: Duration::ZERO, heartbeat: ms(50) },
        ),
        (
            Config { tick: ms(60), ..base.clone() },
            ConfigError::BadTick { tick: ms(60), heartbeat: ms(50) },
        ),
        (
            Config { max_inflight: 0, ..base.clone() },
            ConfigError::ZeroLimit { field: "max_inflight" },
        ),
        (
            Config { max_entries_per_append: 0, ..base.clone() },
            ConfigError::ZeroLimit { field: "max_entries_per_append" },
        ),
        (
            Config { inbox_capacity: 0, ..base.clone() },
            ConfigError::ZeroLimit { field: "inbox_capacity" },
        ),
        // The node loop would stall with a single entry waiting for the state machine.
        (
            Config { max_apply_backlog: 0, ..base.clone() },
            ConfigError::ZeroLimit { field: "max_apply_backlog" },
        ),
        // Allocated up front: usize::MAX slots cannot be.
        (
            Config { inbox_capacity: usize::MAX, ..base.clone() },
            ConfigError::LimitTooLarge {
                field: "inbox_capacity",
                value: usize::MAX,
                max: ferraft::MAX_INBOX_CAPACITY,
            },
        ),
        // Counted in ticks, a timer of `Duration::MAX` would not fit the core's clock.
        (
            Config { election_timeout: ms(150)..Duration::MAX, ..base.clone() },
            ConfigError::TimerTooLong { field: "election_timeout", value: Duration::MAX },
        ),
        (
            Config { catch_up_timeout: Duration::MAX, ..base.clone() },
            ConfigError::TimerTooLong { field: "catch_up_timeout", value: Duration::MAX },
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(config.validate(), Err(expected.clone()));
        assert_eq!(start_error(config), Error::InvalidConfig(expected));
    }
}

#[test]
fn a_cluster_needs_nodes_with_distinct_ids() {
    let none = Cluster::new(fast_config(1), 0, |_| KvStateMachine::new()).err();
    assert_eq!(none, Some(Error::InvalidConfig(ConfigError::NoNodes)));
    let empty = Cluster::with_ids(fast_config(1), &[], |_| KvStateMachine::new()).err();
    assert_eq!(empty, Some(Error::InvalidConfig(ConfigError::NoNodes)));

    let ids = [NodeId(1), NodeId(2), NodeId(1)];
    let duplicate = Cluster::with_ids(fast_config(1), &ids, |_| KvStateMachine::new()).err();
    assert_eq!(duplicate, Some(Error::InvalidConfig(ConfigError::DuplicateNode(NodeId(1)))));

    // The largest id is reserved ("no leader known" in a client), and `add_node` counts up
    // from the largest id given: refused, not overflowed.
    let ids = [NodeId(1), NodeId(u64::MAX)];
    let reserved = Cluster::with_ids(fast_config(1), &ids, |_| KvStateMachine::new()).err();
    let expected = ConfigError::ReservedNodeId(NodeId(u64::MAX));
    assert_eq!(reserved, Some(Error::InvalidConfig(expected.clone())));
    assert!(expected.to_string().contains("smaller ids"), "{expected}");
}

/// Id 0 is an id like any other: a client remembers a leader n0 (it once read 0 as "none").
/// A cluster counting up to the reserved id refuses the next `add_node` instead of wrapping.
#[test]
fn node_ids_at_both_ends_of_the_range() {
    let _serial = serial();
    let config = Config { election_timeout: ms(50)..ms(100), ..fast_config(15) };
    let cluster = Cluster::with_ids(config.clone(), &[NodeId(0)], |_| KvStateMachine::new())
        .expect("id 0 is valid");
    assert_eq!(cluster.wait_for_leader(LONG), Ok(NodeId(0)));
    let client = cluster.client();
    client.propose(append("k", "v")).expect("applied");
    assert_eq!(client.leader_hint(), Some(NodeId(0)), "the client remembers n0");
    cluster.shutdown();

    let top = [NodeId(u64::MAX - 1)];
    let cluster =
        Cluster::with_ids(config, &top, |_| KvStateMachine::new()).expect("the largest valid id");
    cluster.wait_for_leader(LONG).expect("a leader");
    let refused = cluster.add_node();
    let expected = Error::InvalidConfig(ConfigError::ReservedNodeId(NodeId(u64::MAX)));
    assert_eq!(refused, Err(expected));
    assert_eq!(cluster.ids(), top.to_vec(), "nothing was added");
    cluster.shutdown();
}

/// `Duration::MAX` is the natural "wait as long as it takes": every blocking call takes it
/// (it once overflowed the deadline's instant and panicked).
#[test]
fn duration_max_means_wait_as_long_as_it_takes() {
    let _serial = serial();
    let config = Config { request_timeout: Duration::MAX, ..fast_config(16) };
    assert_eq!(config.validate(), Ok(()), "request_timeout has no bound");
    let cluster = kv_cluster(config, 3);
    let leader = cluster.wait_for_leader(Duration::MAX).expect("a leader");
    let client = cluster.client();
    assert_eq!(client.timeout(), Duration::MAX);
    client.propose(append("k", "v")).expect("applied");
    client.propose_timeout(append("k", "w"), Duration::MAX).expect("applied");
    let node = cluster.node(leader).expect("running");
    let mut receipt = node.propose_async(append("k", "x")).expect("sent");
    receipt.wait(Duration::MAX).expect("applied");
    node.propose(append("k", "y"), Duration::MAX).expect("applied");
    cluster.shutdown();
}

#[test]
fn proposing_to_a_follower_names_the_leader() {
    // Roomy timeouts: a spurious election between the two steps would change the hint.
    let cluster = kv_cluster(roomy_config(2), 3);
    let agreed = wait_for_agreement(&cluster, LONG);
    let follower = cluster.ids().into_iter().find(|&id| id != agreed.leader).expect("follower");

    let handle = cluster.node(follower).expect("handle");
    let refused = handle.propose(append("k", "v"), LONG);
    assert_eq!(refused, Err(Error::NotLeader { leader_hint: Some(agreed.leader) }));
    // The receipt form reports the same refusal as its position.
    let mut receipt = handle.propose_async(append("k", "v")).expect("sent");
    assert_eq!(receipt.position(LONG), Err(Error::NotLeader { leader_hint: Some(agreed.leader) }));
    cluster.shutdown();
}

/// Regression: a receipt once refused keeps reporting that refusal (it used to report
/// `NodeDown` for a running node, having seen the reply channel closed).
#[test]
fn a_refused_receipt_keeps_reporting_its_refusal() {
    let cluster = kv_cluster(roomy_config(12), 3);
    let agreed = wait_for_agreement(&cluster, LONG);
    let follower = cluster.ids().into_iter().find(|&id| id != agreed.leader).expect("follower");
    let refusal = Error::NotLeader { leader_hint: Some(agreed.leader) };

    let handle = cluster.node(follower).expect("handle");
    let mut receipt = handle.propose_async(append("k", "v")).expect("sent");
    assert_eq!(receipt.position(LONG), Err(refusal.clone()));

    assert!(cluster.status(follower).is_ok(), "the follower is running");
    // Expected: the same refusal again. Actual: Err(NodeDown(follower)) from both calls.
    assert_eq!(receipt.position(LONG), Err(refusal.clone()), "position asked again");
    assert_eq!(receipt.wait(LONG), Err(refusal), "wait after position");
    cluster.shutdown();
}

#[test]
fn a_receipt_hands_its_output_over_once() {
    let cluster = kv_cluster(roomy_config(13), 3);
    let agreed = wait_for_agreement(&cluster, LONG);
    let handle = cluster.node(agreed.leader).expect("leader handle");

    let mut receipt = handle.propose_async(append("once", "v")).expect("sent");
    let applied = receipt.wait(LONG).expect("applied");
    assert_eq!(applied.output.as_deref(), Some("v"));
    let again = receipt.wait(LONG);
    assert_eq!(again, Err(Error::AnswerTaken), "the output moved out with the first wait");
    let message = again.unwrap_err().to_string();
    assert!(message.contains("use the answer that call returned"), "says what to do: {message}");
    assert_eq!(receipt.position(LONG), Ok((applied.index, applied.term)), "the position stays");
    cluster.shutdown();
}

#[test]
fn unknown_node_ids_are_refused() {
    let cluster = kv_cluster(fast_config(3), 3);
    let ghost = NodeId(42);
    assert_eq!(cluster.kill(ghost), Err(Error::UnknownNode(ghost)));
    assert_eq!(cluster.restart(ghost), Err(Error::UnknownNode(ghost)));
    assert_eq!(cluster.status(ghost), Err(Error::UnknownNode(ghost)));
    assert_eq!(cluster.node(ghost).err(), Some(Error::UnknownNode(ghost)));
    assert_eq!(cluster.remove_node(ghost), Err(Error::UnknownNode(ghost)));
    assert!(!cluster.is_running(ghost));
    assert_eq!(cluster.ids(), vec![NodeId(1), NodeId(2), NodeId(3)], "nothing was added");
    cluster.shutdown();
}

#[test]
fn kill_restart_and_node_check_the_running_state() {
    let cluster = kv_cluster(fast_config(4), 3);
    let id = NodeId(2);
    let stale = cluster.node(id).expect("handle while running");

    assert_eq!(cluster.restart(id), Err(Error::AlreadyRunning(id)));
    cluster.kill(id).expect("first kill");
    assert_eq!(cluster.kill(id), Err(Error::NodeDown(id)));
    assert_eq!(cluster.node(id).err(), Some(Error::NodeDown(id)));
    assert_eq!(cluster.status(id), Err(Error::NodeDown(id)));
    // A handle taken before the kill now reports the node down, for every request.
    assert_eq!(stale.status(LONG), Err(Error::NodeDown(id)));
    assert_eq!(stale.propose(append("k", "v"), LONG), Err(Error::NodeDown(id)));
    assert_eq!(stale.propose_async(append("k", "v")).err(), Some(Error::NodeDown(id)));

    cluster.restart(id).expect("restart after kill");
    assert_eq!(cluster.restart(id), Err(Error::AlreadyRunning(id)));
    cluster.shutdown();
}

/// 3 nodes without CheckQuorum, so the leader keeps leading after its followers die.
fn leader_without_followers() -> (Cluster<KvStateMachine>, NodeId, Term) {
    let config = Config { check_quorum: false, ..fast_config(5) };
    let cluster = kv_cluster(config, 3);
    let agreed = wait_for_agreement(&cluster, LONG);
    for id in cluster.ids().into_iter().filter(|&id| id != agreed.leader) {
        cluster.kill(id).expect("kill follower");
    }
    (cluster, agreed.leader, agreed.term)
}

#[test]
fn a_receipt_without_a_majority_times_out() {
    let (cluster, leader, term) = leader_without_followers();
    let handle = cluster.node(leader).expect("leader handle");

    let mut receipt = handle.propose_async(append("k", "v")).expect("sent");
    let (index, at) = receipt.position(LONG).expect("the lone leader still appends");
    assert_eq!(at, term);
    assert!(index > LogIndex(1));
    assert_eq!(receipt.wait(ms(300)), Err(Error::Timeout));
    assert_eq!(handle.propose(append("k", "w"), ms(300)), Err(Error::Timeout));
    cluster.shutdown();
}

#[test]
fn a_receipt_whose_node_is_killed_reports_it_down() {
    let (cluster, leader, _) = leader_without_followers();
    let handle = cluster.node(leader).expect("leader handle");
    let mut receipt = handle.propose_async(append("k", "v")).expect("sent");
    receipt.position(LONG).expect("appended");

    cluster.kill(leader).expect("kill the leader");

    assert_eq!(receipt.wait(LONG), Err(Error::NodeDown(leader)));
    cluster.shutdown();
}

#[test]
fn membership_errors_are_typed() {
    let cluster = kv_cluster(fast_config(6), 3);
    wait_for_agreement(&cluster, LONG);

    let add_member = cluster.change_membership(MembershipChange::AddNode(NodeId(2)));
    assert_eq!(add_member, Err(Error::AlreadyMember(NodeId(2))));
    let remove_stranger = cluster.change_membership(MembershipChange::RemoveNode(NodeId(9)));
    assert_eq!(remove_stranger, Err(Error::NotMember(NodeId(9))));

    cluster.remove_node(NodeId(3)).expect("removing a follower");
    assert_eq!(cluster.remove_node(NodeId(3)), Err(Error::NotMember(NodeId(3))));
    assert_eq!(cluster.restart(NodeId(3)), Err(Error::NotMember(NodeId(3))));
    assert_eq!(cluster.ids(), vec![NodeId(1), NodeId(2)]);
    cluster.shutdown();

    let single = kv_cluster(fast_config(7), 1);
    wait_for_agreement(&single, LONG);
    assert_eq!(single.remove_node(NodeId(1)), Err(Error::LastVoter(NodeId(1))));
    single.shutdown();
}

#[test]
fn fault_settings_out_of_range_are_refused() {
    let cluster = kv_cluster(fast_config(8), 3);
    let probability = |faults: NetworkFaults| match cluster.set_faults(faults) {
        Err(FaultError::Probability { field, value }) => (field, value),
        other => panic!("expected a probability error, got {other:?}"),
    };
    let cases = [
        (NetworkFaults { drop_requests: 1.5, ..NetworkFaults::default() }, "drop_requests", 1.5),
        (NetworkFaults { drop_replies: -0.1, ..NetworkFaults::default() }, "drop_replies", -0.1),
        (NetworkFaults { duplicate: 2.0, ..NetworkFaults::default() }, "duplicate", 2.0),
    ];
    for (faults, field, value) in cases {
        assert_eq!(probability(faults), (field, value));
    }
    let (field, value) =
        probability(NetworkFaults { drop_replies: f64::NAN, ..NetworkFaults::default() });
    assert_eq!(field, "drop_replies");
    assert!(value.is_nan());
    let edges = NetworkFaults { drop_requests: 0.0, drop_replies: 1.0, ..NetworkFaults::default() };
    assert_eq!(cluster.set_faults(edges), Ok(()), "0 and 1 are probabilities");

    let inverted = NetworkFaults { delay: ms(10)..ms(5), ..NetworkFaults::default() };
    assert_eq!(
        cluster.set_faults(inverted),
        Err(FaultError::InvertedRange { field: "delay", min: ms(10), max: ms(5) })
    );

    let ghost = NodeId(9);
    assert_eq!(cluster.partition(&[vec![NodeId(1), ghost]]), Err(FaultError::UnknownNode(ghost)));
    assert_eq!(cluster.isolate(ghost), Err(FaultError::UnknownNode(ghost)));
    let overlapping = [vec![NodeId(1), NodeId(2)], vec![NodeId(2), NodeId(3)]];
    assert_eq!(cluster.partition(&overlapping), Err(FaultError::OverlappingGroups(NodeId(2))));
    cluster.heal();
    cluster.shutdown();
}

#[test]
fn error_messages_say_what_to_do() {
    let cases: Vec<(String, &str)> = vec![
        (Error::NotLeader { leader_hint: Some(NodeId(2)) }.to_string(), "try n2"),
        (Error::NotLeader { leader_hint: None }.to_string(), "retry"),
        (Error::Timeout.to_string(), "unknown"),
        (Error::NodeDown(NodeId(3)).to_string(), "restart it"),
        (Error::AlreadyRunning(NodeId(3)).to_string(), "kill it first"),
        (Error::ProposalDropped { index: LogIndex(4), term: Term(2) }.to_string(), "retry"),
        (Error::ChangeInProgress.to_string(), "retry"),
        (Error::LeaderNotReady.to_string(), "retry"),
        (
            Error::InvalidConfig(ConfigError::EmptyElectionTimeout { min: ms(150) }).to_string(),
            "make max larger than min",
        ),
        (
            ConfigError::ZeroLimit { field: "max_inflight" }.to_string(),
            "max_inflight must be at least 1",
        ),
        (
            FaultError::Probability { field: "duplicate", value: 2.0 }.to_string(),
            "use a value in [0, 1]",
        ),
        (FaultError::OverlappingGroups(NodeId(2)).to_string(), "each node belongs to one"),
    ];
    for (text, hint) in cases {
        assert!(text.contains(hint), "{text:?} should contain {hint:?}");
    }
}
