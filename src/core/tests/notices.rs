//! Notices: what the core reports for logging instead of logging itself (it has no I/O).
//! Role changes, configuration changes and dropped messages each produce exactly one notice,
//! after the step's persistence like any other non-persist action.

use std::sync::Arc;

use super::harness::*;

#[test]
fn notice_election_won_once_per_term_after_persistence() {
    let mut c = boot(1).start();
    c.campaign();
    let acts = c.recv(vote(2, 1, 1, true));
    assert_eq!(notices(&acts), [Notice::ElectionWon { term: Term(1) }]);
    let first_notice = acts.iter().position(|a| matches!(a, Action::Notice(_)));
    assert!(first_notice > Some(0), "persistence first: {acts:?}");
    assert!(notices(&c.recv(vote(3, 1, 1, true))).is_empty(), "a late vote wins nothing");
}

#[test]
fn notice_stepped_down_without_quorum() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(1);
    let acts = net.node_mut(1).tick(30);
    let reason = "no quorum heard within an election timeout (CheckQuorum)";
    assert_eq!(notices(&acts), [Notice::SteppedDown { term: Term(1), reason }]);
}

#[test]
fn notice_stepped_down_on_a_higher_term_but_not_as_a_follower() {
    let mut net = Net::new(3);
    net.elect(1);
    let acts = net.node_mut(1).recv(ae(2, 1, 2));
    let reason = "saw a higher term";
    assert_eq!(notices(&acts), [Notice::SteppedDown { term: Term(1), reason }]);
    assert!(notices(&net.node_mut(3).recv(ae(2, 3, 2))).is_empty(), "n3 led nothing");
}

#[test]
fn notice_stepped_down_when_its_removal_commits() {
    let mut net = Net::new(3);
    net.elect(1);
    net.run(5);
    net.node_mut(1).take_history();
    net.step(1, Input::ChangeMembership(MembershipChange::RemoveNode(NodeId(1))));
    net.deliver_all();
    let reason = "its removal from the configuration committed";
    let stepped: Vec<Notice> = notices(&net.node_mut(1).take_history())
        .into_iter()
        .filter(|n| matches!(n, Notice::SteppedDown { .. }))
        .collect();
    assert_eq!(stepped, [Notice::SteppedDown { term: Term(1), reason }]);
}

#[test]
fn notice_config_changed_on_append_for_leader_and_follower_and_on_truncation() {
    let mut net = Net::new(3);
    net.elect(1);
    net.run(5);
    let acts = net.step(1, Input::ChangeMembership(MembershipChange::AddNode(NodeId(4))));
    let learner = Arc::new(conf(&[1, 2, 3], &[4]));
    assert_eq!(notices(&acts), [Notice::ConfigChanged { config: Arc::clone(&learner) }]);
    let to_n2 = net.take(|m| m.to == NodeId(2));
    let acts = net.deliver(to_n2[0].clone());
    assert_eq!(notices(&acts), [Notice::ConfigChanged { config: learner }], "follower too");

    let mut f = boot(2).term(1).log(&[1]).start();
    f.recv(ae(1, 2, 1).prev(1, 1).then(config_entry(1, &[1, 2, 3, 4], &[])));
    let acts = f.recv(ae(3, 2, 2).prev(1, 1).entries(&[2]));
    let back = Arc::new(conf(&[1, 2, 3], &[]));
    assert_eq!(notices(&acts), [Notice::ConfigChanged { config: back }], "truncated away");
    assert!(notices(&f.recv(ae(3, 2, 2).prev(2, 2).entries(&[2]))).is_empty());
}

#[test]
fn notice_none_for_plain_replication() {
    let mut net = Net::new(3);
    net.elect(1);
    net.node_mut(1).take_history();
    net.propose(1, &[1, 2, 3]);
    net.run(10);
    for id in 1..=3 {
        assert!(notices(&net.node_mut(id).take_history()).is_empty(), "n{id}");
    }
}
