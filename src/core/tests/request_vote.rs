//! The RequestVote receiver (Figure 2, RV-1, RV-2) and the election restriction (SUB-2), on a
//! single voter n2 of {n1, n2, n3}.

use super::harness::*;

#[test]
fn rv1_stale_term_vote_denied_with_current_term() {
    let mut v = boot(2).term(3).start();
    let acts = v.recv(rv(1, 2, 2).last(5, 2));
    assert_eq!(trace(&acts), ["n2->n1 t3 RequestVoteReply denied"]);
    assert_eq!(v.core.voted_for(), None);
}

#[test]
fn rv2_vote_persisted_before_the_granting_reply() {
    let mut v = boot(2).term(2).log(&[1]).start();
    let acts = v.recv(rv(1, 2, 2).last(1, 1));
    assert_eq!(trace(&acts), ["persist t2 vote=n1", "n2->n1 t2 RequestVoteReply granted"]);
    // From a higher term: the term and the vote go to disk together, before the reply.
    let acts = v.recv(rv(3, 2, 3).last(1, 1));
    assert_eq!(trace(&acts), ["persist t3 vote=n3", "n2->n3 t3 RequestVoteReply granted"]);
}

#[test]
fn rv2_already_voted_for_someone_else_in_this_term_denies() {
    let mut v = boot(2).term(2).voted_for(3).start();
    let acts = v.recv(rv(1, 2, 2));
    assert_eq!(trace(&acts), ["n2->n1 t2 RequestVoteReply denied"]);
    // The candidate it voted for may ask again (a lost reply) and get the same answer.
    let acts = v.recv(rv(3, 2, 2));
    assert_eq!(sent(&acts), ["n2->n3 t2 RequestVoteReply granted"]);
}

#[test]
fn rv2_vote_survives_a_restart() {
    let mut v = boot(2).term(1).start();
    v.recv(rv(1, 2, 2));
    v.restart();
    let acts = v.recv(rv(3, 2, 2));
    assert_eq!(trace(&acts), ["n2->n3 t2 RequestVoteReply denied"]);
}

#[test]
#[should_panic(expected = "SUB-8 hard state not persisted")]
fn rv2_check_catches_the_forget_voted_for_bug() {
    let bugs = Bugs { forget_voted_for: true, ..Bugs::default() };
    let mut v = boot(2).term(1).start().with_bugs(bugs);
    v.recv(rv(1, 2, 2));
}

#[test]
fn sub2_higher_last_term_beats_a_longer_log() {
    let mut v = boot(2).term(3).log(&[1, 1, 1, 1, 2]).start();
    let acts = v.recv(rv(1, 2, 4).last(2, 3));
    assert_eq!(trace(&acts), ["persist t4 vote=n1", "n2->n1 t4 RequestVoteReply granted"]);
}

#[test]
fn sub2_lower_last_term_denied_even_with_a_longer_log_but_term_adopted() {
    let mut v = boot(2).term(3).log(&[1, 1, 3]).start();
    let acts = v.recv(rv(1, 2, 4).last(9, 2));
    // ALL-2 still applies: the higher term is adopted (and persisted) although the vote is not.
    assert_eq!(trace(&acts), ["persist t4 vote=-", "n2->n1 t4 RequestVoteReply denied"]);
}

#[test]
fn sub2_equal_last_term_then_the_longer_or_equal_log_wins() {
    let mut v = boot(2).term(2).log(&[1, 2, 2]).start();
    let shorter = v.recv(rv(1, 2, 3).last(2, 2));
    assert_eq!(sends(&shorter)[0].body, vote_body(false));
    let equal = v.recv(rv(3, 2, 3).last(3, 2));
    assert_eq!(sends(&equal)[0].body, vote_body(true));
}

#[test]
#[should_panic(expected = "sub2")]
fn sub2_check_catches_the_skip_election_restriction_bug() {
    let bugs = Bugs { skip_election_restriction: true, ..Bugs::default() };
    let mut v = boot(2).term(3).log(&[1, 1, 3]).start().with_bugs(bugs);
    let acts = v.recv(rv(1, 2, 4).last(9, 2));
    assert_eq!(sends(&acts)[0].body, vote_body(false), "sub2");
}

fn vote_body(granted: bool) -> Body<u64> {
    Body::RequestVoteReply(RequestVoteReply { granted, pre_vote: false })
}
