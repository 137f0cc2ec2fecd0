//! Rules for all servers, followers and candidates (Figure 2: ALL-1, ALL-2, FOL-1, FOL-2,
//! CAN-1..CAN-4) and when the election timer restarts (SUB-3).

use super::harness::*;

fn applies(actions: &[Action<u64>]) -> Vec<String> {
    trace(actions).into_iter().filter(|l| l.starts_with("apply")).collect()
}

#[test]
fn all1_entries_applied_in_index_order_only_once_committed() {
    let mut f = boot(2).term(1).start();
    let acts = f.recv(ae(1, 2, 1).entries(&[1, 1, 1]));
    assert!(applies(&acts).is_empty(), "nothing committed yet");
    let acts = f.recv(ae(1, 2, 1).prev(3, 1).commit(2));
    assert_eq!(applies(&acts), ["apply i1..=i2"]);
    let acts = f.recv(ae(1, 2, 1).prev(3, 1).commit(3));
    assert_eq!(applies(&acts), ["apply i3..=i3"]);
    assert_eq!(f.applied, [(LogIndex(1), 101), (LogIndex(2), 102), (LogIndex(3), 103)]);
}

#[test]
#[should_panic(expected = "ALL-1")]
fn all1_check_catches_the_apply_before_commit_bug() {
    let bugs = Bugs { apply_before_commit: true, ..Bugs::default() };
    let mut f = boot(2).term(1).start().with_bugs(bugs);
    f.recv(ae(1, 2, 1).entries(&[1, 1, 1]));
}

#[test]
fn all2_higher_term_in_a_request_makes_a_candidate_follower_and_clears_its_vote() {
    let mut c = boot(1).term(2).start();
    c.campaign();
    assert_eq!((c.role(), c.term()), (Role::Candidate, 3));
    let acts = c.recv(ae(2, 1, 5));
    assert_eq!(trace(&acts), ["persist t5 vote=-", "n1->n2 t5 AppendEntriesReply ok match=i0"]);
    let s = c.status();
    assert_eq!((s.role, s.term, s.leader), (Role::Follower, Term(5), Some(NodeId(2))));
}

#[test]
fn all2_higher_term_in_a_reply_makes_a_leader_follower_and_clears_its_vote() {
    let mut net = Net::new(3);
    net.elect(1);
    let leader = net.node_mut(1);
    let acts = leader.recv(ae_reject(2, 1, 4, 1, 0));
    assert_eq!(trace(&acts), ["persist t4 vote=-"]);
    let s = leader.status();
    assert_eq!((s.role, s.term, s.leader), (Role::Follower, Term(4), None));
}

#[test]
fn all2_higher_term_in_a_vote_reply_makes_a_candidate_follower() {
    let mut c = boot(1).term(2).start();
    c.campaign();
    let acts = c.recv(vote(2, 1, 7, false));
    assert_eq!(trace(&acts), ["persist t7 vote=-"]);
    assert_eq!((c.role(), c.term()), (Role::Follower, 7));
}

#[test]
fn all2_adopting_a_higher_term_forgets_the_old_leader() {
    let mut f = boot(2).term(1).start();
    f.recv(ae(1, 2, 1));
    f.recv(rv(3, 2, 2).transfer()); // n1 hands over to n3 (TimeoutNow), which runs in term 2
    let s = f.status();
    assert_eq!((s.term, s.leader), (Term(2), None), "no stale redirect to n1 in term 2");
    assert_eq!(f.propose(&[1]), [Action::Rejected(Error::NotLeader { leader_hint: None })]);
}

#[test]
fn fol1_follower_answers_candidates_and_leaders() {
    let mut f = boot(2).term(1).start();
    let acts = f.recv(rv(3, 2, 2));
    assert_eq!(sent(&acts), ["n2->n3 t2 RequestVoteReply granted"]);
    let acts = f.recv(ae(3, 2, 2));
    assert_eq!(sent(&acts), ["n2->n3 t2 AppendEntriesReply ok match=i0"]);
}

#[test]
fn fol2_election_timeout_starts_a_pre_vote() {
    let mut f = boot(1).term(4).log(&[4]).config(fixed_timeout()).start();
    assert!(f.tick(14).is_empty());
    let acts = f.tick(1);
    assert_eq!(
        trace(&acts),
        ["n1->n2 t5 RequestVote last=i1@t4 pre", "n1->n3 t5 RequestVote last=i1@t4 pre"]
    );
    assert_eq!((f.role(), f.term()), (Role::PreCandidate, 4));
}

#[test]
fn fol2_election_timeout_without_pre_vote_starts_an_election() {
    let mut f = boot(1).term(4).log(&[4]).config(no_pre_vote()).start();
    assert!(f.tick(14).is_empty());
    let acts = f.tick(1);
    assert_eq!(
        trace(&acts),
        [
            "persist t5 vote=n1",
            "n1->n2 t5 RequestVote last=i1@t4",
            "n1->n3 t5 RequestVote last=i1@t4"
        ]
    );
    assert_eq!((f.role(), f.term()), (Role::Candidate, 5));
}

#[test]
fn fol2_heartbeat_from_the_current_leader_resets_the_timer() {
    let mut f = boot(2).term(1).config(fixed_timeout()).start();
    f.recv(ae(1, 2, 1)); // n1 becomes the known leader
    f.tick(14);
    f.recv(ae(1, 2, 1)); // and is still alive
    assert_eq!(f.ticks_until_campaign(30), Some(15), "a full timeout after the last heartbeat");
}

#[test]
fn fol2_learner_never_campaigns() {
    let mut l = boot(4).voters(&[1, 2, 3]).learners(&[4]).start();
    assert!(l.tick(200).is_empty());
    assert!(l.campaign().is_empty());
    assert_eq!((l.role(), l.term()), (Role::Follower, 0));
}

#[test]
fn fol2_non_member_never_campaigns() {
    let mut n = boot(9).voters(&[1, 2, 3]).start();
    assert!(n.tick(200).is_empty());
    assert!(n.campaign().is_empty());
    assert_eq!((n.role(), n.term()), (Role::Follower, 0));
}

#[test]
fn sub3_granting_a_vote_resets_the_timer() {
    let mut f = boot(2).term(1).config(fixed_timeout()).start();
    f.tick(14);
    let acts = f.recv(rv(3, 2, 1));
    assert_eq!(sent(&acts), ["n2->n3 t1 RequestVoteReply granted"]);
    assert_eq!(f.ticks_until_campaign(30), Some(15));
}

#[test]
fn sub3_denying_a_vote_does_not_reset_the_timer() {
    let mut f = boot(2).term(1).log(&[1, 1]).config(fixed_timeout()).start();
    f.tick(14);
    let acts = f.recv(rv(3, 2, 1).last(1, 1));
    assert_eq!(sent(&acts), ["n2->n3 t1 RequestVoteReply denied"]);
    assert_eq!(f.ticks_until_campaign(30), Some(1), "the timeout still falls at tick 15");
}

#[test]
fn sub3_denying_a_vote_from_a_higher_term_does_not_reset_the_timer() {
    let mut f = boot(2).term(1).log(&[1, 1]).config(fixed_timeout()).start();
    f.tick(14);
    let acts = f.recv(rv(3, 2, 2).last(1, 1));
    assert_eq!(trace(&acts), ["persist t2 vote=-", "n2->n3 t2 RequestVoteReply denied"]);
    assert_eq!(f.ticks_until_campaign(30), Some(1), "the timeout still falls at tick 15");
}

#[test]
fn sub3_stale_append_entries_does_not_reset_the_timer() {
    let mut f = boot(2).term(3).config(fixed_timeout()).start();
    f.tick(14);
    f.recv(ae(1, 2, 2));
    assert_eq!(f.ticks_until_campaign(30), Some(1));
}

#[test]
fn can1_candidate_raises_term_votes_for_itself_and_persists_before_asking_every_other_voter() {
    let mut c = boot(1).voters(&[1, 2, 3]).learners(&[4]).term(2).log(&[1, 2]).start();
    let acts = c.campaign();
    assert_eq!(
        trace(&acts),
        [
            "persist t3 vote=n1",
            "n1->n2 t3 RequestVote last=i2@t2",
            "n1->n3 t3 RequestVote last=i2@t2"
        ]
    );
    assert_eq!((c.role(), c.term(), c.core.voted_for()), (Role::Candidate, 3, Some(NodeId(1))));
}

#[test]
fn can2_votes_from_a_majority_make_a_leader() {
    let mut c = boot(1).voters(&[1, 2, 3, 4, 5]).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    assert_eq!(c.role(), Role::Candidate, "2 of 5 is not a majority");
    let acts = c.recv(vote(3, 1, 1, true));
    assert_eq!(c.role(), Role::Leader);
    assert_eq!(c.status().leader, Some(NodeId(1)));
    assert_eq!((2..=5).map(|p| appends_to(&acts, p).len()).collect::<Vec<_>>(), [1, 1, 1, 1]);
}

#[test]
fn can2_a_majority_of_denials_ends_the_candidacy() {
    let mut c = boot(1).term(1).start();
    c.campaign();
    c.recv(vote(2, 1, 2, false));
    c.recv(vote(3, 1, 2, false));
    assert_eq!((c.role(), c.term()), (Role::Follower, 2));
}

#[test]
fn can2_late_pre_vote_grants_are_never_counted_as_votes() {
    let mut c = boot(1).voters(&[1, 2, 3, 4, 5]).config(fixed_timeout()).start();
    c.tick(15);
    c.recv(pre_vote_reply(2, 1, 1, true));
    c.recv(pre_vote_reply(3, 1, 1, true));
    assert_eq!((c.role(), c.term()), (Role::Candidate, 1), "pre-vote won: the real election");
    c.recv(pre_vote_reply(4, 1, 1, true));
    c.recv(pre_vote_reply(5, 1, 1, true));
    assert_eq!(c.role(), Role::Candidate, "no real vote has arrived yet");
    c.recv(vote(2, 1, 1, true));
    c.recv(vote(3, 1, 1, true));
    assert_eq!(c.role(), Role::Leader);
}

#[test]
fn can3_append_entries_of_the_same_term_makes_a_candidate_follower() {
    let mut c = boot(1).term(1).start();
    c.campaign();
    let acts = c.recv(ae(2, 1, 2));
    assert_eq!(trace(&acts), ["n1->n2 t2 AppendEntriesReply ok match=i0"]);
    let s = c.status();
    assert_eq!((s.role, s.term, s.leader), (Role::Follower, Term(2), Some(NodeId(2))));
}

#[test]
fn can3_append_entries_of_an_older_term_is_rejected_and_the_candidate_stays() {
    let mut c = boot(1).term(1).start();
    c.campaign();
    let acts = c.recv(ae(2, 1, 1));
    assert!(sent(&acts)[0].starts_with("n1->n2 t2 AppendEntriesReply reject"), "{acts:?}");
    assert_eq!((c.role(), c.term()), (Role::Candidate, 2));
}

#[test]
fn can4_candidate_timeout_starts_a_new_election_in_the_next_term() {
    let mut c = boot(1).config(no_pre_vote()).start();
    c.campaign();
    assert!(c.tick(14).is_empty(), "CAN-1(c): the timer restarted when the election began");
    let acts = c.tick(1);
    assert_eq!(
        trace(&acts),
        [
            "persist t2 vote=n1",
            "n1->n2 t2 RequestVote last=i0@t0",
            "n1->n3 t2 RequestVote last=i0@t0"
        ]
    );
    assert_eq!((c.role(), c.term()), (Role::Candidate, 2));
}

#[test]
fn can4_with_pre_vote_a_candidate_timeout_pre_votes_then_runs_in_the_next_term() {
    let mut c = boot(1).config(fixed_timeout()).start();
    c.campaign();
    let acts = c.tick(15);
    assert_eq!(
        sent(&acts),
        ["n1->n2 t2 RequestVote last=i0@t0 pre", "n1->n3 t2 RequestVote last=i0@t0 pre"]
    );
    assert_eq!((c.role(), c.term()), (Role::PreCandidate, 1));
    let acts = c.recv(pre_vote_reply(2, 1, 2, true));
    assert_eq!(
        trace(&acts),
        [
            "persist t2 vote=n1",
            "n1->n2 t2 RequestVote last=i0@t0",
            "n1->n3 t2 RequestVote last=i0@t0"
        ]
    );
    assert_eq!((c.role(), c.term()), (Role::Candidate, 2));
}
