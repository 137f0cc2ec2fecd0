//! Linearizable reads (thesis §6.4): a leader answers a read only after a ReadConfirm round
//! started after the read arrived; one round serves every read queued before it; a late reply
//! to an older round confirms nothing newer; a follower asks the leader for a read index;
//! leases (§6.4.1) skip the round only while they hold; losing leadership fails the reads.

use super::harness::*;
use crate::core::{ReadId, ReadPolicy};
use crate::message::{Message, ReadConfirm, ReadIndex, ReadIndexReply};

fn read(ids: &[u64]) -> Input<u64> {
    read_by(ids, ReadPolicy::Lease)
}

fn read_by(ids: &[u64], policy: ReadPolicy) -> Input<u64> {
    Input::Read(ids.iter().map(|&i| ReadId(i)).collect(), policy)
}

fn confirm_reply(from: u64, to: u64, term: u64, round: u64) -> Message<u64> {
    let body = Body::ReadConfirmReply(ReadConfirm { round });
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

/// n1 leads term 1 of {n1, n2, n3}, its no-op committed at i1.
fn leader() -> Node {
    let mut c = boot(1).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    assert_eq!((c.role(), c.commit()), (Role::Leader, 1));
    c
}

#[test]
fn readindex_waits_for_a_round_and_one_round_serves_a_batch() {
    let mut c = leader();
    assert_eq!(
        trace(&c.step(read(&[1]))),
        ["n1->n2 t1 ReadConfirm round=1", "n1->n3 t1 ReadConfirm round=1"]
    );
    // Reads arriving while round 1 is in flight wait for round 2, started once 1 is answered.
    assert!(trace(&c.step(read(&[2, 3]))).is_empty());
    assert_eq!(
        trace(&c.recv(confirm_reply(2, 1, 1, 1))),
        [
            "read ready [1] at i1 by ReadIndex",
            "n1->n2 t1 ReadConfirm round=2",
            "n1->n3 t1 ReadConfirm round=2"
        ]
    );
    assert_eq!(trace(&c.recv(confirm_reply(3, 1, 1, 2))), ["read ready [2, 3] at i1 by ReadIndex"]);
}

#[test]
fn a_late_reply_to_an_older_round_confirms_no_newer_read() {
    let mut c = leader();
    c.step(read(&[1]));
    c.recv(confirm_reply(2, 1, 1, 1));
    c.step(read(&[2])); // needs round 2 (started now: nothing in flight)
                        // A duplicate of n2's round-1 reply, and n3's round-1 reply arriving late: not round 2.
    assert!(trace(&c.recv(confirm_reply(2, 1, 1, 1))).is_empty());
    assert!(trace(&c.recv(confirm_reply(3, 1, 1, 1))).is_empty());
    assert_eq!(trace(&c.recv(confirm_reply(3, 1, 1, 2))), ["read ready [2] at i1 by ReadIndex"]);
}

#[test]
fn a_new_leader_reads_at_its_noop_until_it_commits() {
    let mut c = boot(1).log(&[1, 1]).term(1).start();
    c.campaign();
    c.recv(vote(2, 1, 2, true));
    assert_eq!(c.commit(), 0);
    c.step(read(&[7]));
    // Confirmed, but the read index is the no-op's (i3), not the stale commit index 0.
    assert_eq!(trace(&c.recv(confirm_reply(2, 1, 2, 1))), ["read ready [7] at i3 by ReadIndex"]);
}

#[test]
fn a_leader_that_steps_down_fails_its_waiting_reads() {
    let mut c = leader();
    c.step(read(&[1]));
    let acts = c.recv(ae(3, 1, 2).prev(1, 1));
    assert!(trace(&acts).iter().any(|l| l.starts_with("read failed [1]: NotLeader")), "{acts:?}");
}

#[test]
fn a_follower_asks_the_leader_and_reads_at_its_index() {
    let mut f = boot(2).start();
    f.recv(ae(1, 2, 1).entries(&[1]).commit(1));
    assert_eq!(trace(&f.step(read(&[5, 6]))), ["n2->n1 t1 ReadIndex ids=[5, 6]"]);
    let reply = ReadIndexReply { ids: vec![5, 6], index: Some(LogIndex(1)) };
    let msg = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: Body::ReadIndexReply(reply),
    };
    assert_eq!(trace(&f.recv(msg)), ["read ready [5, 6] at i1 by Follower"]);

    // The leader's side: a follower's read joins the next round and is answered by message.
    let mut c = leader();
    let ask = Body::ReadIndex(ReadIndex { ids: vec![9] });
    let msg = Message { from: NodeId(2), to: NodeId(1), term: Term(1), body: ask };
    c.recv(msg);
    assert_eq!(
        trace(&c.recv(confirm_reply(3, 1, 1, 1))),
        ["n1->n2 t1 ReadIndexReply ids=[9] index=Some(LogIndex(1))"]
    );
}

#[test]
fn a_follower_without_a_leader_refuses_and_gives_up_after_a_timeout() {
    let mut f = boot(2).start();
    let acts = f.step(read(&[1]));
    assert_eq!(trace(&acts), ["read failed [1]: NotLeader { leader_hint: None }"]);
    f.recv(ae(1, 2, 1).entries(&[1]).commit(1));
    f.step(read(&[2]));
    let acts = f.tick(15);
    assert!(trace(&acts).iter().any(|l| l == "read failed [2]: Timeout"), "{:?}", trace(&acts));
}

#[test]
fn a_lease_skips_the_round_only_while_it_holds() {
    let config = Config { lease_reads: true, ..test_config() }; // lease (15 - 2) / 1.1 = 11
    let mut c = boot(1).config(config).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    c.step(read(&[1]));
    c.recv(confirm_reply(2, 1, 1, 1)); // round 1 started at tick 0: lease until tick 11
    assert_eq!(trace(&c.step(read(&[2]))), ["read ready [2] at i1 by Lease"]);
    // No replies to the heartbeat rounds: the lease runs out and reads fall back to rounds.
    c.tick(11);
    let acts = c.step(read(&[3]));
    assert!(!trace(&acts).iter().any(|l| l.contains("ready")), "{:?}", trace(&acts));
}

/// A read whose caller chose `ReadPolicy::ReadIndex` waits for a round even while the lease
/// holds, at the leader and for a follower (whose request says so); a lease read beside it
/// is answered at once. The round it starts also renews the lease.
#[test]
fn a_read_by_round_waits_for_a_round_while_the_lease_holds() {
    let config = Config { lease_reads: true, ..test_config() };
    let mut c = boot(1).config(config).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    c.step(read(&[1]));
    c.recv(confirm_reply(2, 1, 1, 1)); // the lease holds from here
    assert_eq!(
        trace(&c.step(read_by(&[2], ReadPolicy::ReadIndex))),
        ["n1->n2 t1 ReadConfirm round=2", "n1->n3 t1 ReadConfirm round=2"]
    );
    assert_eq!(trace(&c.step(read(&[3]))), ["read ready [3] at i1 by Lease"]);
    let ask = Body::ReadIndexByRound(ReadIndex { ids: vec![9] });
    assert!(trace(&c.recv(Message { from: NodeId(2), to: NodeId(1), term: Term(1), body: ask }))
        .is_empty());
    // The follower's read came while round 2 was in flight: it waits for round 3.
    assert_eq!(
        trace(&c.recv(confirm_reply(3, 1, 1, 2))),
        [
            "read ready [2] at i1 by ReadIndex",
            "n1->n2 t1 ReadConfirm round=3",
            "n1->n3 t1 ReadConfirm round=3"
        ]
    );
    assert_eq!(
        trace(&c.recv(confirm_reply(3, 1, 1, 3))),
        ["n1->n2 t1 ReadIndexReply ids=[9] index=Some(LogIndex(1))"]
    );
    // A follower's lease-policy request is answered from the lease, at once.
    let ask = Body::ReadIndex(ReadIndex { ids: vec![10] });
    assert_eq!(
        trace(&c.recv(Message { from: NodeId(3), to: NodeId(1), term: Term(1), body: ask })),
        ["n1->n3 t1 ReadIndexReply ids=[10] index=Some(LogIndex(1))"]
    );
}

/// A follower sends its caller's policy with the request: a round-only read asks with
/// `ReadIndexByRound`.
#[test]
fn a_follower_asks_for_a_round_when_its_caller_chose_readindex() {
    let mut f = boot(2).start();
    f.recv(ae(1, 2, 1).entries(&[1]).commit(1));
    assert_eq!(
        trace(&f.step(read_by(&[5], ReadPolicy::ReadIndex))),
        ["n2->n1 t1 ReadIndexByRound ids=[5]"]
    );
}

/// Without `Config::lease_reads` there is no lease: a lease-policy read is confirmed by a
/// round, exactly as a ReadIndex read.
#[test]
fn a_lease_read_without_lease_reads_configured_confirms_by_a_round() {
    let mut c = leader();
    c.step(read(&[1]));
    c.recv(confirm_reply(2, 1, 1, 1));
    assert_eq!(
        trace(&c.step(read(&[2]))),
        ["n1->n2 t1 ReadConfirm round=2", "n1->n3 t1 ReadConfirm round=2"]
    );
}

#[test]
fn the_bug_switch_answers_without_a_round() {
    let mut c = leader();
    c.set_bugs(Bugs { read_without_confirmation: true, ..Bugs::default() });
    assert_eq!(trace(&c.step(read(&[1]))), ["read ready [1] at i1 by ReadIndex"]);
}

/// n1 leads term 1 of {n1, n2, n3} without CheckQuorum, its no-op committed at i1, and is
/// then cut off: nothing reaches it any more (the tests deliver nothing).
fn cut_off_leader() -> Node {
    let config = Config { check_quorum: false, ..test_config() };
    let mut c = boot(1).config(config).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    assert_eq!((c.role(), c.commit()), (Role::Leader, 1));
    c
}

fn confirms(acts: &[Action<u64>]) -> Vec<String> {
    trace(acts).into_iter().filter(|l| l.contains("ReadConfirm")).collect()
}

#[test]
fn a_heartbeat_resends_the_round_in_flight_instead_of_starting_another() {
    let mut c = cut_off_leader(); // election timeout 15..30 ticks, heartbeat 5
    assert_eq!(confirms(&c.step(read(&[1]))).len(), 2, "round 1 starts");
    c.step(read(&[2])); // needs round 2, which waits for round 1
    let acts = c.tick(5);
    assert_eq!(
        confirms(&acts),
        ["n1->n2 t1 ReadConfirm round=1", "n1->n3 t1 ReadConfirm round=1"],
        "round 1 again, to both: nobody answered"
    );
    assert_eq!(c.core.read_rounds_outstanding(), 1);
    // n2 answers round 1 (with n1, a majority): read 1 is served and round 2 starts for read 2.
    c.recv(confirm_reply(2, 1, 1, 1));
    assert_eq!((c.core.read_rounds_outstanding(), c.core.waiting_reads()), (1, 1));
    assert_eq!(
        confirms(&c.tick(5)),
        ["n1->n2 t1 ReadConfirm round=2", "n1->n3 t1 ReadConfirm round=2"]
    );
    c.recv(confirm_reply(3, 1, 1, 2));
    assert_eq!(c.core.waiting_reads(), 0);
}

#[test]
fn a_resent_round_serves_only_the_reads_that_arrived_before_it_started() {
    let mut c = cut_off_leader();
    c.step(read(&[1])); // round 1 starts at tick 0
    c.tick(3);
    c.step(read(&[2])); // arrived after round 1 started: needs round 2
    c.tick(2); // the heartbeat resends round 1, which read 2 still may not use
    assert_eq!(
        trace(&c.recv(confirm_reply(2, 1, 1, 1))),
        [
            "read ready [1] at i1 by ReadIndex",
            "n1->n2 t1 ReadConfirm round=2",
            "n1->n3 t1 ReadConfirm round=2"
        ]
    );
    assert_eq!(trace(&c.recv(confirm_reply(3, 1, 1, 2))), ["read ready [2] at i1 by ReadIndex"]);
}

#[test]
fn a_cut_off_leader_fails_its_reads_after_an_election_timeout_and_keeps_one_round() {
    let mut c = cut_off_leader(); // minimum election timeout: 15 ticks
    c.step(read(&[1]));
    assert!(c.tick(14).iter().all(|a| !matches!(a, Action::ReadFailed { .. })));
    let failed_now = |acts: &[Action<u64>]| -> Vec<String> {
        trace(acts).into_iter().filter(|l| l.starts_with("read failed")).collect()
    };
    assert_eq!(failed_now(&c.tick(1)), ["read failed [1]: Timeout"]);
    // Hundreds of heartbeats with a read every tick: the reads of the last election timeout
    // wait, never more, each fails with Timeout, and every confirmation sent is round 1.
    let (mut failed, mut sent) = (0, Vec::new());
    for id in 2..2_000u64 {
        c.step(read(&[id]));
        let acts = c.tick(1);
        failed += acts.iter().filter(|a| matches!(a, Action::ReadFailed { .. })).count();
        sent.extend(confirms(&acts));
        assert!(c.core.waiting_reads() <= 15, "{} reads wait", c.core.waiting_reads());
        assert_eq!(c.core.read_rounds_outstanding(), 1);
    }
    assert_eq!(failed, 2_000 - 2 - 14, "all but the last 14 failed");
    assert!(sent.iter().all(|l| l.ends_with("round=1")), "{sent:?}");
    assert!(sent.len() <= 2 * (1_998 / 5 + 1), "one resend to each voter per heartbeat");
    assert_eq!(c.role(), Role::Leader, "no CheckQuorum: it never steps down");
}

#[test]
fn a_follower_read_forwarded_to_a_cut_off_leader_is_dropped_at_the_deadline() {
    let mut c = cut_off_leader();
    let ask = Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(1),
        body: Body::ReadIndex(ReadIndex { ids: vec![9] }),
    };
    c.recv(ask);
    assert_eq!(c.core.waiting_reads(), 1);
    let acts = c.tick(15);
    assert!(!trace(&acts).iter().any(|l| l.contains("ReadIndexReply")), "{:?}", trace(&acts));
    assert_eq!(c.core.waiting_reads(), 0, "the follower's own deadline fails it there");
}

/// The invariant R1 (checked after every step in tests and in the simulator) catches rounds
/// that pile up.
#[test]
#[should_panic(expected = "R1 rounds 1..=2 outstanding")]
fn the_bug_switch_piling_up_rounds_is_caught_by_r1() {
    let mut c = cut_off_leader();
    c.set_bugs(Bugs { read_rounds_pile_up: true, ..Bugs::default() });
    c.step(read(&[1]));
    c.tick(5); // the heartbeat starts round 2 with round 1 unanswered
}

#[test]
fn the_bug_switch_serves_a_late_read() {
    let mut c = cut_off_leader();
    c.set_bugs(Bugs { serve_reads_after_timeout: true, ..Bugs::default() });
    c.step(read(&[1]));
    let acts = c.tick(15);
    assert!(trace(&acts).contains(&"read ready [1] at i1 by ReadIndex".to_owned()), "{acts:?}");
}
