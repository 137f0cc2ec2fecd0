//! Leadership transfer (thesis §3.10): TimeoutNow only once the target is up to date and the
//! lease ran out; proposals refused meanwhile; success once the target leads; abort after about
//! an election timeout; typed refusals for bad targets.

use super::harness::*;

fn transfer(to: u64) -> Input<u64> {
    Input::TransferLeadership(NodeId(to))
}

/// n1 leads term 1 of {n1, n2, n3} (+ learner n4), everything committed at i1 on n2.
fn leader() -> Node {
    let mut c = boot(1).voters(&[1, 2, 3]).learners(&[4]).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    assert_eq!(c.role(), Role::Leader);
    c
}

#[test]
fn transfer_sends_timeout_now_to_an_up_to_date_target_and_succeeds_when_it_leads() {
    let mut c = leader();
    assert_eq!(trace(&c.step(transfer(2))), ["n1->n2 t1 TimeoutNow"]);
    let refused = trace(&c.propose(&[5]));
    assert_eq!(refused, ["rejected TransferInProgress { to: NodeId(2) }"]);
    // n2 campaigns with the transfer flag; n1 votes and then hears from its new leader.
    c.recv(rv(2, 1, 2).last(1, 1).transfer());
    let acts = c.recv(ae(2, 1, 2).prev(1, 1));
    assert!(trace(&acts).contains(&"transfer done: n2 leads".to_string()), "{:?}", trace(&acts));
}

#[test]
fn transfer_waits_for_the_target_to_catch_up() {
    let mut c = leader();
    c.propose(&[5]); // i2, not yet on n3
    let acts = c.step(transfer(3));
    assert!(!trace(&acts).iter().any(|l| l.contains("TimeoutNow")), "{:?}", trace(&acts));
    let acts = c.recv(ae_ok(3, 1, 1, 2));
    assert!(trace(&acts).contains(&"n1->n3 t1 TimeoutNow".to_string()), "{:?}", trace(&acts));
}

#[test]
fn a_transfer_that_does_not_finish_aborts_and_the_leader_resumes() {
    let mut c = leader();
    c.step(transfer(3)); // n3 never answers; n2 keeps the leader's quorum
    let mut acts = Vec::new();
    for _ in 0..30 {
        acts.extend(c.tick(1));
        c.recv(ae_ok(2, 1, 1, 1));
    }
    let expected = "transfer failed TransferFailed(NodeId(3))".to_string();
    assert!(trace(&acts).contains(&expected), "{:?}", trace(&acts));
    assert_eq!(c.role(), Role::Leader);
    assert!(trace(&c.propose(&[6])).iter().any(|l| l.starts_with("proposed")));
}

#[test]
fn bad_transfers_are_refused_with_typed_errors() {
    let mut c = leader();
    let done = |acts: Vec<Action<u64>>| trace(&acts);
    assert_eq!(done(c.step(transfer(1))), ["transfer failed TransferToSelf(NodeId(1))"]);
    assert_eq!(done(c.step(transfer(4))), ["transfer failed TransferToLearner(NodeId(4))"]);
    assert_eq!(done(c.step(transfer(9))), ["transfer failed NotMember(NodeId(9))"]);
    c.step(transfer(3));
    let busy = done(c.step(transfer(2)));
    assert_eq!(busy, ["transfer failed TransferInProgress { to: NodeId(3) }"]);
    let mut f = boot(2).start();
    let refused = done(f.step(transfer(3)));
    assert_eq!(refused, ["transfer failed NotLeader { leader_hint: None }"]);
}

#[test]
fn a_leader_with_a_lease_lets_it_run_out_before_timeout_now() {
    let config = Config { lease_reads: true, ..test_config() };
    let mut c = boot(1).config(config).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    c.step(Input::Read(vec![crate::core::ReadId(1)], crate::core::ReadPolicy::Lease));
    let reply = Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(1),
        body: Body::ReadConfirmReply(crate::message::ReadConfirm { round: 1 }),
    };
    c.recv(reply); // lease until tick 11
    assert!(!trace(&c.step(transfer(2))).iter().any(|l| l.contains("TimeoutNow")));
    let mut sent_at = None;
    for t in 1..=12 {
        if trace(&c.tick(1)).iter().any(|l| l.contains("TimeoutNow")) {
            sent_at = Some(t);
            break;
        }
    }
    assert_eq!(sent_at, Some(11), "TimeoutNow only once the lease ran out");
}
