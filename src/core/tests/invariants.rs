//! The invariant checks themselves: each numbered invariant catches a state that breaks it,
//! healthy states pass, and `step` enforces them (the O(1) subset in every build, the full set
//! in debug builds or when switched on).

use super::harness::*;
use crate::core::progress::Progress;

/// n1 leads {n1, n2, n3} in term 1 with [1:noop, 2:5, 3:6] committed via n2 (matched 3).
fn leader() -> Node {
    let mut c = boot(1).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    c.propose(&[5, 6]);
    c.recv(ae_ok(2, 1, 1, 3));
    assert_eq!(c.commit(), 3);
    c
}

fn follower() -> Node {
    let mut f = boot(2).term(2).log(&[1, 1, 2]).start();
    f.recv(ae(1, 2, 2).prev(3, 2).commit(2));
    f
}

fn rule_broken(n: &Node) -> &'static str {
    n.core.check_invariants().map_or_else(|v| v.rule, |()| "none")
}

#[test]
fn invariants_hold_in_healthy_states() {
    for n in [leader(), follower(), boot(3).start()] {
        assert_eq!(n.core.check_invariants(), Ok(()), "{}", n.id());
        assert!(n.core.invariants_hold(), "{}: the fast pass agrees", n.id());
    }
}

#[test]
fn invariants_each_catch_the_state_that_breaks_them() {
    type Case = (&'static str, fn() -> Node, fn(&mut Node));
    let cases: [Case; 12] = [
        ("I1", follower, |n| n.core.commit_index = LogIndex(9)),
        ("I2", follower, |n| n.core.last_applied = LogIndex(3)),
        ("I3", leader, |n| n.core.leader = None),
        ("I3", leader, |n| n.core.voted_for = Some(NodeId(2))),
        ("I4", follower, |n| n.core.term = Term(1)),
        ("P1", leader, |n| {
            let p = n.core.progress.get_mut(&NodeId(2)).expect("n2");
            p.next = p.matched;
        }),
        ("P1", leader, |n| n.core.progress.get_mut(&NodeId(2)).expect("n2").matched = LogIndex(7)),
        ("P3", leader, |n| {
            n.core.progress.remove(&NodeId(3));
        }),
        ("P3", leader, |n| {
            n.core.progress.insert(NodeId(9), Progress::new(LogIndex(3)));
        }),
        ("P3", follower, |n| {
            n.core.progress.insert(NodeId(1), Progress::new(LogIndex(3)));
        }),
        ("V1", follower, |n| {
            n.core.votes.insert(NodeId(2), true);
        }),
        ("C1", leader, |n| n.core.progress.get_mut(&NodeId(2)).expect("n2").matched = LogIndex(1)),
    ];
    for (rule, setup, corrupt) in cases {
        let mut n = setup();
        corrupt(&mut n);
        assert_eq!(rule_broken(&n), rule, "{:?}", n.core.check_invariants());
        assert!(!n.core.invariants_hold(), "{rule}: the fast pass sees it too");
    }
}

#[test]
fn invariant_c1_is_not_checked_before_the_leader_commits_in_its_term() {
    // A new leader inherits commit i2 but knows no matchIndex yet.
    let mut c = boot(1).term(1).log(&[1, 1]).start();
    c.core.commit_index = LogIndex(2);
    c.campaign();
    c.recv(vote(2, 1, 2, true));
    assert_eq!((c.role(), c.commit()), (Role::Leader, 2));
    assert_eq!(c.core.check_invariants(), Ok(()));
}

#[test]
fn invariant_violation_reads_node_term_rule_and_detail() {
    let mut n = leader();
    n.core.progress.remove(&NodeId(3));
    let v = n.core.check_invariants().expect_err("P3 is broken");
    assert_eq!(v.to_string(), "n1 t1: P3 no progress for member n3");
}

#[test]
#[should_panic(expected = "n1 t1: P3 no progress for member n3")]
fn invariants_switched_on_make_step_panic_with_the_violation() {
    let mut n = leader();
    n.core.set_check_invariants(true);
    n.core.progress.remove(&NodeId(3));
    n.tick(1);
}

#[test]
#[should_panic(expected = "n2 t2: I1 commit i9 past last i3")]
fn invariants_the_cheap_ones_are_checked_even_when_switched_off() {
    let mut n = follower();
    n.core.set_check_invariants(false);
    n.core.commit_index = LogIndex(9);
    n.tick(1);
}

/// Only release builds can show the switch off: debug builds always run the full set.
#[cfg(not(debug_assertions))]
#[test]
fn invariants_switched_off_skip_the_full_set_in_release_builds() {
    let mut n = leader();
    n.core.set_check_invariants(false);
    n.core.progress.remove(&NodeId(3));
    n.tick(1);
    assert_eq!(rule_broken(&n), "P3");
}
