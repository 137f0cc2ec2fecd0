//! The thesis extensions in the core: Pre-Vote (§9.6), the disruptive-server check (§4.2.3)
//! and CheckQuorum (§6.2).

use super::harness::*;

/// n2 of {n1, n2, n3} in term 1, having just heard a heartbeat from leader n1.
fn follower_of_a_live_leader() -> Node {
    let mut f = boot(2).term(1).start();
    f.recv(ae(1, 2, 1));
    assert_eq!(f.status().leader, Some(NodeId(1)));
    f
}

#[test]
fn prevote_pre_candidate_and_its_voters_keep_their_terms() {
    let mut net = Net::with_config(3, fixed_timeout());
    let acts = net.tick(1, 15);
    assert_eq!(
        sent(&acts),
        ["n1->n2 t1 RequestVote last=i0@t0 pre", "n1->n3 t1 RequestVote last=i0@t0 pre"]
    );
    assert_eq!((net.node(1).role(), net.node(1).term()), (Role::PreCandidate, 0));
    assert!(!trace(&acts).iter().any(|l| l.starts_with("persist")), "nothing to persist");
    let to_n2 = net.queue.pop_front().expect("pre-vote to n2");
    let acts = net.deliver(to_n2);
    assert_eq!(trace(&acts), ["n2->n1 t1 RequestVoteReply granted pre"]);
    assert_eq!(net.node(2).term(), 0, "a pre-vote changes nothing on the voter");
    net.deliver_all();
    assert_eq!(net.leader(), Some(1));
    assert_eq!(net.node(1).term(), 1, "the real election ran in term 0 + 1");
}

#[test]
fn prevote_denied_while_the_voter_hears_from_a_leader() {
    let mut f = follower_of_a_live_leader();
    let acts = f.recv(rv(3, 2, 2).last(9, 1).pre_vote());
    assert_eq!(trace(&acts), ["n2->n3 t1 RequestVoteReply denied pre"]);
    assert_eq!(f.term(), 1);
}

#[test]
fn prevote_granted_once_the_leader_was_silent_for_the_minimum_election_timeout() {
    let mut f = follower_of_a_live_leader();
    f.tick(15);
    let acts = f.recv(rv(3, 2, 2).last(9, 1).pre_vote());
    assert_eq!(sent(&acts), ["n2->n3 t2 RequestVoteReply granted pre"]);
    assert_eq!((f.term(), f.core.voted_for()), (1, None));
}

#[test]
fn prevote_sub3_granting_a_pre_vote_does_not_reset_the_timer() {
    let mut f = boot(2).term(1).config(fixed_timeout()).start();
    f.tick(14);
    let acts = f.recv(rv(3, 2, 2).pre_vote());
    assert_eq!(sent(&acts), ["n2->n3 t2 RequestVoteReply granted pre"]);
    assert_eq!(f.ticks_until_campaign(30), Some(1), "only a real vote restarts the timer");
}

#[test]
fn prevote_4_2_3_higher_term_request_vote_ignored_while_the_leader_is_recent() {
    let mut f = follower_of_a_live_leader();
    assert!(f.recv(rv(3, 2, 2).last(9, 1)).is_empty());
    let s = f.status();
    assert_eq!((s.term, s.leader, f.core.voted_for()), (Term(1), Some(NodeId(1)), None));
}

#[test]
fn prevote_4_2_3_transfer_request_vote_bypasses_the_recent_leader_check() {
    let mut f = follower_of_a_live_leader();
    let acts = f.recv(rv(3, 2, 2).last(9, 1).transfer());
    assert_eq!(trace(&acts), ["persist t2 vote=n3", "n2->n3 t2 RequestVoteReply granted"]);
}

#[test]
fn prevote_partitioned_node_rejoins_without_disrupting_the_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(3);
    net.run(100); // n3 times out again and again, but its pre-votes go nowhere
    assert_eq!(net.node(3).term(), 1, "pre-vote kept the partitioned node's term");
    net.heal();
    net.run(30);
    assert_eq!((net.leader(), net.node(1).term()), (Some(1), 1));
    assert_eq!(net.node(3).status().leader, Some(NodeId(1)));
}

#[test]
fn checkquorum_leader_cut_off_from_a_majority_steps_down() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(1);
    let leader = net.node_mut(1);
    leader.tick(14);
    assert_eq!(leader.role(), Role::Leader, "the followers answered less than a timeout ago");
    leader.tick(16); // two minimum election timeouts since it last heard from anyone
    let s = leader.status();
    assert_eq!((s.role, s.term, s.leader), (Role::Follower, Term(1), None));
}

#[test]
fn checkquorum_leader_hearing_from_a_majority_keeps_leading() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(3);
    net.run(100);
    assert_eq!((net.leader(), net.node(1).term()), (Some(1), 1));
}

#[test]
fn checkquorum_off_an_isolated_leader_keeps_its_role() {
    let mut net = Net::with_config(3, Config { check_quorum: false, ..test_config() });
    net.elect(1);
    net.isolate(1);
    net.node_mut(1).tick(100);
    assert_eq!(net.node(1).role(), Role::Leader);
}

/// With leases, the refusal of §4.2.3 runs a minimum election timeout from the leader's last
/// message (every follower that acknowledged it keeps the leader's lease safe), not from this
/// node's own campaigns: a pre-candidate that timed out a moment ago grants the pre-vote and
/// the vote of a candidate whose log is ahead of its own (before the twenty-fourth session it
/// refused both, and a cluster whose one eligible candidate needs every other vote stayed
/// leaderless for seconds: `sim/lease_election_tests.rs`).
#[test]
fn lease_refusal_runs_from_the_leaders_last_message_not_from_own_campaigns() {
    let lease = Config { lease_reads: true, ..fixed_timeout() };
    let mut f = boot(2).term(1).config(lease).start();
    f.recv(ae(1, 2, 1));
    f.tick(14);
    let acts = f.recv(rv(3, 2, 2).last(9, 1).pre_vote());
    assert_eq!(trace(&acts), ["n2->n3 t1 RequestVoteReply denied pre"], "the leader is recent");
    f.tick(1); // the leader silent a minimum timeout: n2 campaigns, restarting its timer
    assert_eq!(f.role(), Role::PreCandidate);
    let acts = f.recv(rv(3, 2, 2).last(9, 1).pre_vote());
    assert_eq!(trace(&acts), ["n2->n3 t2 RequestVoteReply granted pre"]);
    let acts = f.recv(rv(3, 2, 2).last(9, 1));
    assert_eq!(trace(&acts), ["persist t2 vote=n3", "n2->n3 t2 RequestVoteReply granted"]);
}

/// The other side of the same rule: a restart counts as the leader's last message (the node
/// may have acknowledged a round before it crashed), so a node with leases refuses votes for
/// a minimum election timeout after it starts, and grants them after.
#[test]
fn lease_refusal_covers_a_minimum_timeout_after_a_restart() {
    let lease = Config { lease_reads: true, ..fixed_timeout() };
    let mut f = boot(2).term(1).config(lease.clone()).start();
    assert!(f.recv(rv(3, 2, 2).last(9, 1)).is_empty(), "refused right after the start");
    let mut g = boot(2).term(1).config(lease).start();
    g.tick(14);
    assert!(g.recv(rv(3, 2, 2).last(9, 1)).is_empty(), "still within the timeout");
    let mut h = boot(2).term(1).config(Config { lease_reads: true, ..no_pre_vote() }).start();
    h.tick(15); // a minimum timeout after the start: n2 campaigns (term 2) itself
    let acts = h.recv(rv(3, 2, 3).last(9, 1));
    assert_eq!(trace(&acts), ["persist t3 vote=n3", "n2->n3 t3 RequestVoteReply granted"]);
}
