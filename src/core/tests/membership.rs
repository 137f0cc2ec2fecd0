//! Single-server membership changes in the core (§6, thesis chapter 4): the refusals, a new
//! node's learner phase and promotion, removing the leader, and configurations that take effect
//! on append and fall back on truncation.

use std::time::Duration;

use super::harness::*;

fn add(id: u64) -> Input<u64> {
    Input::ChangeMembership(MembershipChange::AddNode(NodeId(id)))
}

fn remove(id: u64) -> Input<u64> {
    Input::ChangeMembership(MembershipChange::RemoveNode(NodeId(id)))
}

/// n1 leads `voters` (1, 2, ..) with its no-op committed everywhere; one more node, the spare,
/// is up but in no configuration.
fn cluster_and_a_spare(voters: &[u64]) -> Net {
    let members = voters.iter().map(|&id| boot(id).voters(voters).start());
    let spare = boot(voters.len() as u64 + 1).voters(&[]).start();
    let mut net = Net::of(members.chain([spare]));
    net.elect(1);
    net.run(5);
    net
}

/// n1 leads {n1, n2, n3}; n4 is the spare.
fn three_and_a_spare() -> Net {
    cluster_and_a_spare(&[1, 2, 3])
}

/// The configurations in `node`'s log, in order.
fn config_entries(node: &Node) -> Vec<Configuration> {
    let entries = node.entries();
    let configs = entries.into_iter().filter_map(|e| match e.payload {
        Payload::Config(c) => Some((*c).clone()),
        _ => None,
    });
    configs.collect()
}

#[test]
fn membership_change_before_the_leaders_noop_commits_is_refused_leader_not_ready() {
    let mut c = boot(1).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    assert_eq!(changes_done(&c.step(add(4))), [Err(Error::LeaderNotReady)]);
    c.recv(ae_ok(2, 1, 1, 1)); // the no-op commits
    assert!(changes_done(&c.step(add(4))).is_empty(), "accepted now");
    assert_eq!(c.status().config, conf(&[1, 2, 3], &[4]));
}

#[test]
fn membership_second_change_while_one_is_pending_is_refused_change_in_progress() {
    let mut net = three_and_a_spare();
    assert!(changes_done(&net.step(1, add(4))).is_empty());
    assert_eq!(changes_done(&net.step(1, remove(3))), [Err(Error::ChangeInProgress)]);
}

#[test]
fn membership_removing_an_unknown_node_is_refused_not_member() {
    let mut net = three_and_a_spare();
    assert_eq!(changes_done(&net.step(1, remove(9))), [Err(Error::NotMember(NodeId(9)))]);
}

#[test]
fn membership_adding_a_member_is_refused_already_member() {
    let mut net = three_and_a_spare();
    assert_eq!(changes_done(&net.step(1, add(2))), [Err(Error::AlreadyMember(NodeId(2)))]);
}

#[test]
fn membership_removing_the_last_voter_is_refused_last_voter() {
    let mut n = boot(1).voters(&[1]).start();
    n.campaign();
    assert_eq!(changes_done(&n.step(remove(1))), [Err(Error::LastVoter(NodeId(1)))]);
}

#[test]
fn membership_change_on_a_follower_is_refused_not_leader() {
    let mut net = three_and_a_spare();
    let refused = Err(Error::NotLeader { leader_hint: Some(NodeId(1)) });
    assert_eq!(changes_done(&net.step(2, add(4))), [refused]);
}

#[test]
fn membership_added_node_is_a_learner_until_caught_up_then_a_voter() {
    let mut net = three_and_a_spare();
    net.node_mut(1).take_history();
    let acts = net.step(1, add(4));
    assert_eq!(net.node(1).status().config, conf(&[1, 2, 3], &[4]), "in force on append");
    assert_eq!(appends_to(&acts, 4).len(), 1, "the learner is replicated to at once");
    net.deliver_all();
    let done = changes_done(&net.node_mut(1).take_history());
    assert_eq!(done, [Ok(conf(&[1, 2, 3, 4], &[]))]);
    assert_eq!(
        config_entries(net.node(1)),
        [conf(&[1, 2, 3], &[4]), conf(&[1, 2, 3, 4], &[])],
        "learner first, then promoted"
    );
    net.run(5);
    for id in 1..=4 {
        assert_eq!(net.node(id).status().config, conf(&[1, 2, 3, 4], &[]), "n{id}");
        assert_eq!(net.node(id).entries(), net.node(1).entries(), "n{id}");
    }
}

#[test]
fn membership_learner_is_not_counted_towards_commitment() {
    let mut net = cluster_and_a_spare(&[1, 2]);
    net.cut(1, 2);
    net.step(1, add(3));
    net.deliver_all();
    assert_eq!(net.node(3).status().last_log_index, LogIndex(2), "n3 holds the config entry");
    assert_eq!(net.node(1).commit(), 1, "n1 + learner n3 are not a majority of {{n1, n2}}");
    net.heal();
    net.run(5);
    assert_eq!(net.node(1).status().config, conf(&[1, 2, 3], &[]));
}

#[test]
fn membership_slow_first_round_is_followed_by_another_before_promotion() {
    let mut net = three_and_a_spare();
    net.cut(1, 4);
    net.step(1, add(4));
    net.run(20); // n4 unreachable: the first round takes longer than an election timeout
    net.propose(1, &[9]); // the second round must also cover this entry
    assert_eq!(net.node(1).status().config, conf(&[1, 2, 3], &[4]), "still a learner");
    net.heal();
    net.run(5);
    assert_eq!(net.node(4).entries(), net.node(1).entries(), "n4 has caught up, entry 9 included");
    assert_eq!(
        net.node(1).status().config,
        conf(&[1, 2, 3, 4], &[]),
        "promoted after a fast round"
    );
}

#[test]
fn membership_slow_learner_is_promoted_in_an_idle_cluster() {
    let mut net = three_and_a_spare();
    net.cut(1, 4);
    net.step(1, add(4));
    net.run(20);
    net.heal();
    net.run(200); // nothing is proposed: round 2 has nothing new for n4, so it is complete
    assert_eq!(net.node(1).status().config, conf(&[1, 2, 3, 4], &[]));
}

#[test]
fn membership_unreachable_learner_fails_catch_up_and_is_removed() {
    let mut net = three_and_a_spare();
    net.node_mut(1).take_history();
    net.isolate(4);
    net.step(1, add(4));
    net.run(1600); // past the catch-up deadline (50 maximum election timeouts)
    let done = changes_done(&net.node_mut(1).take_history());
    assert_eq!(done, [Err(Error::CatchUpFailed(NodeId(4)))]);
    assert_eq!(net.node(1).status().config, conf(&[1, 2, 3], &[]));
}

#[test]
fn membership_removed_leader_leads_until_the_config_commits_without_counting_itself() {
    let mut net = three_and_a_spare();
    net.node_mut(1).take_history();
    net.cut(1, 3);
    net.step(1, remove(1));
    net.deliver_all(); // only n2 acknowledges {n2, n3}
    assert_eq!(net.node(1).role(), Role::Leader, "still leading while {{n2, n3}} is uncommitted");
    assert_eq!(net.node(1).commit(), 1, "n1 + n2 is not a majority of {{n2, n3}}");
    net.heal();
    net.run(5); // the next heartbeat retransmits to n3
    let done = changes_done(&net.node_mut(1).take_history());
    assert_eq!(done, [Ok(conf(&[2, 3], &[]))]);
    assert_eq!((net.node(1).role(), net.node(1).commit()), (Role::Follower, 2));
    net.node_mut(1).tick(100);
    assert_eq!(net.node(1).role(), Role::Follower, "a removed node never campaigns");
}

#[test]
fn membership_config_takes_effect_on_append_and_falls_back_when_truncated() {
    let mut f = boot(2).term(1).log(&[1]).start();
    f.recv(ae(1, 2, 1).prev(1, 1).then(config_entry(1, &[1, 2, 3, 4], &[])));
    assert_eq!(f.commit(), 0);
    assert_eq!(f.status().config, conf(&[1, 2, 3, 4], &[]), "in force before it commits");
    // The leader of term 2 never had it: the entry is replaced and {n1, n2, n3} is back.
    f.recv(ae(3, 2, 2).prev(1, 1).entries(&[2]));
    assert_eq!(f.log_terms(), [1, 2]);
    assert_eq!(f.status().config, conf(&[1, 2, 3], &[]));
}

#[test]
fn membership_re_adding_a_learner_left_by_a_leader_change_resumes_its_catch_up() {
    let mut net = three_and_a_spare();
    net.cut(1, 4);
    net.step(1, add(4));
    net.run(5);
    net.crash(1); // the change dies with its leader; n4 stays a learner in every log
    net.run(100);
    let leader = net.leader().expect("n2 or n3 took over");
    assert_eq!(net.node(leader).status().config, conf(&[1, 2, 3], &[4]));
    let actions = net.step(leader, add(4));
    assert!(changes_done(&actions).is_empty(), "accepted, not AlreadyMember");
    net.run(20);
    assert_eq!(net.node(leader).status().config, conf(&[1, 2, 3, 4], &[]), "promoted");
    let configs = config_entries(net.node(leader));
    assert_eq!(configs.len(), 2, "no second learner entry: {configs:?}");
}

/// n1 leads {n1, n2, n3} at tick 0 without CheckQuorum (so a lone node can tick for long),
/// its no-op committed; it has just appended {n1, n2, n3} + learner n4 at i2, and n2 has
/// acknowledged it, so the catch-up of n4 (which acknowledges nothing yet) is under way.
/// The minimum election timeout, the length of a fast round, is 15 ticks.
fn adding_n4(config: Config) -> Node {
    let config = Config { check_quorum: false, ..config };
    let mut c = boot(1).config(config).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    assert!(changes_done(&c.step(add(4))).is_empty());
    c.recv(ae_ok(2, 1, 1, 2));
    assert_eq!((c.commit(), c.core.now), (2, 0));
    assert_eq!(c.status().config, conf(&[1, 2, 3], &[4]));
    c
}

/// Each round: a new command (so n4 is never fully caught up), `ticks` ticks, then n4
/// acknowledges everything the leader had when the round began.
fn catch_up_round(c: &mut Node, ticks: u64) {
    let target = c.status().last_log_index.0;
    c.propose(&[1]);
    c.tick(ticks);
    c.recv(ae_ok(4, 1, 1, target));
}

#[test]
fn membership_catch_up_round_lasting_the_minimum_election_timeout_promotes_the_learner() {
    let mut c = adding_n4(test_config());
    catch_up_round(&mut c, 15);
    assert_eq!(c.status().config, conf(&[1, 2, 3, 4], &[]), "15 ticks is fast enough");
    // {n1..n4} at i4 commits with n2 and n4: the change is done, once.
    let last = c.status().last_log_index;
    c.recv(ae_ok(2, 1, 1, last.0));
    let acts = c.recv(ae_ok(4, 1, 1, last.0));
    assert_eq!(changes_done(&acts), [Ok(conf(&[1, 2, 3, 4], &[]))]);
    assert_eq!((c.commit(), c.status().last_log_index), (last.0, last), "no further entry");
    assert!(changes_done(&c.tick(20)).is_empty());
}

#[test]
fn membership_catch_up_round_one_tick_longer_starts_another_round_from_its_end() {
    let mut c = adding_n4(test_config());
    catch_up_round(&mut c, 16);
    assert_eq!(c.status().config, conf(&[1, 2, 3], &[4]), "16 ticks is slow: round 2");
    assert_eq!(c.status().last_log_index, LogIndex(3), "round 2 began at tick 16, at i3");
    catch_up_round(&mut c, 15); // and took 15 ticks (with one more command to keep n4 behind)
    assert_eq!(c.status().config, conf(&[1, 2, 3, 4], &[]), "round 2 was fast");
}

#[test]
fn membership_learner_gets_ten_catch_up_rounds_then_the_addition_fails() {
    let mut c = adding_n4(test_config());
    c.take_history();
    for _ in 1..=9 {
        catch_up_round(&mut c, 16);
    }
    assert_eq!(c.status().config, conf(&[1, 2, 3], &[4]), "round 10 is under way");
    catch_up_round(&mut c, 16); // round 10 is slow too: no more rounds
    assert_eq!(c.status().config, conf(&[1, 2, 3], &[]), "the learner is being removed");
    assert!(changes_done(&c.take_history()).is_empty(), "not before the removal commits");
    let last = c.status().last_log_index.0;
    let done = changes_done(&c.recv(ae_ok(2, 1, 1, last)));
    assert_eq!(done, [Err(Error::CatchUpFailed(NodeId(4)))]);
    assert!(c.core.change.is_none());
}

#[test]
fn membership_catch_up_fails_one_tick_after_its_deadline_and_not_before() {
    // catch_up_timeout 300ms = 30 ticks, also the maximum election timeout: deadline tick 30.
    let mut c = adding_n4(Config { catch_up_timeout: Duration::from_millis(300), ..test_config() });
    c.tick(30);
    assert_eq!(c.status().config, conf(&[1, 2, 3], &[4]), "at the deadline: still trying");
    c.tick(1);
    assert_eq!(c.status().config, conf(&[1, 2, 3], &[]), "past it: the learner is removed");
    let done = changes_done(&c.recv(ae_ok(2, 1, 1, 3)));
    assert_eq!(done, [Err(Error::CatchUpFailed(NodeId(4)))]);
}

#[test]
fn membership_leader_deposed_mid_change_reports_not_leader_and_forgets_the_change() {
    let mut c = adding_n4(test_config());
    let done = changes_done(&c.recv(ae(2, 1, 2).prev(2, 1)));
    assert_eq!(done, [Err(Error::NotLeader { leader_hint: None })]);
    assert!(c.core.change.is_none());
    assert!(changes_done(&c.tick(100)).is_empty(), "reported once");
}

#[test]
fn membership_second_change_while_the_learner_catches_up_is_refused_change_in_progress() {
    // The learner's configuration is committed (nothing pending), but its catch-up is not done.
    let mut c = adding_n4(test_config());
    assert_eq!(changes_done(&c.step(remove(3))), [Err(Error::ChangeInProgress)]);
    assert_eq!(changes_done(&c.step(add(5))), [Err(Error::ChangeInProgress)]);
    assert_eq!(c.status().config, conf(&[1, 2, 3], &[4]));
}

#[test]
fn membership_change_on_a_leader_with_an_inherited_uncommitted_config_is_change_in_progress() {
    // n1 holds {n1, n2, n3, n4} at i2, appended by the previous leader and not committed.
    let mut c = boot(1).term(1).log(&[1]).start();
    c.recv(ae(2, 1, 1).prev(1, 1).then(config_entry(1, &[1, 2, 3, 4], &[])));
    c.campaign();
    c.recv(vote(2, 1, 2, true));
    c.recv(vote(3, 1, 2, true));
    assert_eq!(c.role(), Role::Leader);
    assert_eq!(changes_done(&c.step(add(5))), [Err(Error::ChangeInProgress)]);
}
