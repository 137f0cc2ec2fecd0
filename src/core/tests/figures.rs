//! The paper's worked figures as scenarios: Figure 7 (a new leader repairs six divergent
//! followers; SUB-7 fast backtracking) and Figure 8 (SUB-1: why LEAD-4 only commits entries of
//! the current term by counting).

use super::harness::*;

/// Figure 7: the log of the leader for term 8.
const LEADER: [u64; 10] = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];

/// Figure 7: followers (a)..(f).
const FOLLOWERS: [&[u64]; 6] = [
    &[1, 1, 1, 4, 4, 5, 5, 6, 6],          // (a) missing an entry
    &[1, 1, 1, 4],                         // (b) missing many
    &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // (c) an extra uncommitted entry
    &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra entries of a term-7 leader
    &[1, 1, 1, 4, 4, 4, 4],                // (e) missing, and extra term-4 entries
    &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // (f) a leader of terms 2 and 3 that never committed
];

/// n1 holds the Figure 7 leader's log and the given followers are n2, n3, ..; all in term 7.
fn figure7(followers: &[&[u64]]) -> Net {
    let voters: Vec<u64> = (1..=followers.len() as u64 + 1).collect();
    let node = |id: u64, log: &[u64]| boot(id).voters(&voters).term(7).log(log).start();
    let others = followers.iter().zip(2..).map(|(log, id)| node(id, log));
    Net::of(std::iter::once(node(1, &LEADER)).chain(others))
}

#[test]
fn fig7_new_leader_makes_every_follower_log_identical_to_its_own() {
    let mut net = figure7(&FOLLOWERS);
    net.elect(1); // term 8, with the votes of (a), (b), (e) and (f)
    assert_eq!(net.node(1).term(), 8);
    net.run(10);
    let mut want = LEADER.to_vec();
    want.push(8); // the term-8 no-op
    assert_eq!(net.node(1).log_terms(), want);
    assert_eq!(net.node(1).commit(), 11, "the term-8 no-op committed, and everything before it");
    let leader_log = net.node(1).entries();
    for (id, name) in (2..=7).zip("abcdef".chars()) {
        let node = net.node(id);
        assert_eq!(node.entries(), leader_log, "follower ({name}) = n{id}");
        assert_eq!(node.commit(), 11, "follower ({name}) = n{id}");
    }
}

/// Figure 7's leader n1, one follower n2, and follower (a) as n3 to make sure n1 can win: the
/// prevLogIndex of every AppendEntries n1 sends n2 until n2's log matches.
fn repair(follower: &[u64]) -> Vec<u64> {
    let mut net = figure7(&[follower, FOLLOWERS[0]]);
    net.campaign(1);
    let delivered = net.deliver_all();
    assert_eq!(net.node(2).entries(), net.node(1).entries());
    append_prevs(&delivered, 2)
}

#[test]
fn sub7_one_round_trip_per_conflicting_term() {
    // (f): i10 has term 3 there (first at i7): skip to i7 -> prev i6 has term 2 (first at i4):
    // skip to i4 -> prev i3 matches. Two rejections for two conflicting terms, not eight.
    assert_eq!(repair(FOLLOWERS[5]), [10, 6, 3]);
}

#[test]
fn sub7_follower_log_shorter_than_prev_next_is_its_last_plus_one() {
    // (b) ends at i4: the next probe is right after it, and matches.
    assert_eq!(repair(FOLLOWERS[1]), [10, 4]);
}

#[test]
fn sub7_leader_holding_the_conflicting_term_resumes_after_its_last_entry_of_it() {
    // (e): too short (last i7) -> prev i7 has term 4 there; the leader's last term-4 entry is
    // i5 -> prev i5 matches.
    assert_eq!(repair(FOLLOWERS[4]), [10, 7, 5]);
}

#[test]
fn sub7_followers_with_extra_entries_are_truncated_in_one_round_trip() {
    assert_eq!(repair(FOLLOWERS[2]), [10], "(c)");
    assert_eq!(repair(FOLLOWERS[3]), [10], "(d)");
}

/// Figure 8 up to the end of (c), with one entry per AppendEntries so the schedule can stop
/// between two entries. Initial state, (a) just after S1 (leader of term 2) crashed: S1 and S2
/// hold [1:1, 2:2], S3..S5 hold [1:1].
fn figure8_c(bugs: Bugs) -> Net {
    let config = Config { max_entries_per_append: 1, ..test_config() };
    let server = |id, log: &[u64]| {
        boot(id).voters(&[1, 2, 3, 4, 5]).term(2).log(log).config(config.clone()).start()
    };
    let (s1, s2) = (server(1, &[1, 2]), server(2, &[1, 2]));
    let (s3, s4, s5) = (server(3, &[1]), server(4, &[1]), server(5, &[1]));
    let mut net = Net::of([s1, s2, s3, s4, s5]).with_bugs(bugs);
    net.crash(1);

    // (b) S5 is elected for term 3 by S3, S4 and itself (S2's log is ahead: it refuses), appends
    // 2:3 (its no-op) and crashes before sending it anywhere.
    net.campaign(5);
    net.deliver_until(|n| n.node(5).role() == Role::Leader);
    net.crash(5);
    assert_eq!(net.node(5).disk.load().expect("in memory").entries, [entry(1, 1), noop(3)]);

    // (c) S1 restarts and, cut off from S4, wins term 4 with S2 and S3 (its term-3 attempt
    // fails: S3 voted for S5 in term 3). Its no-op 3:4 reaches S2; S3, short of i2, first gets
    // 2:2 and acknowledges it.
    net.restart(1);
    net.cut(1, 4);
    net.campaign(1);
    net.deliver_all();
    assert_eq!((net.node(1).role(), net.node(1).term()), (Role::Candidate, 3));
    net.campaign(1);
    // NB: S3 lacks i2, so it rejects the no-op's request and holds it (reorder.rs); it must
    // be lost for S3 to end (c) without 3:4, as in the figure.
    net.deliver_until(|n| n.node(3).core.held.len() == 1);
    net.node_mut(3).forget_held();
    net.deliver_until(|n| n.node(3).log_terms() == [1, 2]);
    net.deliver_next(); // S3's acknowledgement of i2 reaches S1

    assert_eq!((net.node(1).role(), net.node(1).term()), (Role::Leader, 4));
    for s in [1, 2, 3] {
        assert_eq!(net.node(s).log_terms()[1], 2, "S{s} holds 2:2: a majority");
    }
    for s in 1..=5 {
        let node = net.node(s);
        assert_eq!(node.commit(), 0, "SUB-1: S{s} committed an entry by counting");
        assert!(node.applied.is_empty(), "SUB-1: S{s} applied an entry of term 2");
    }
    net
}

fn noop(term: u64) -> Entry<u64> {
    Entry { term: Term(term), payload: Payload::Noop }
}

/// (d): S1 crashes again; S5 restarts and wins term 5 with S3 and S4, then replicates its log.
fn figure8_s5_campaigns(net: &mut Net) {
    net.crash(1);
    net.restart(5);
    net.pass_time_silently(15); // S2, S3 stop counting S1 as a recent leader
    net.campaign(5); // term 4: S2 and S3 already voted for S1 in term 4
    net.deliver_all();
    net.campaign(5); // term 5
    net.deliver_all();
}

#[test]
fn sub1_figure8_c_d_entry_of_an_older_term_on_a_majority_is_not_committed_and_is_overwritten() {
    let mut net = figure8_c(Bugs::default());
    figure8_s5_campaigns(&mut net);
    assert_eq!(net.leader(), Some(5), "S5's last term 3 beats the last term 2 of S3 and S4");
    net.run(5);
    for s in 2..=5 {
        let node = net.node(s);
        assert_eq!(node.log_terms(), [1, 3, 5], "S{s}: index 2 now holds S5's term-3 entry");
        assert_eq!(node.commit(), 3, "S{s}");
        assert!(!node.applied.contains(&(LogIndex(2), cmd(2, 2))), "S{s} applied 2:2");
    }
}

#[test]
fn sub1_figure8_e_once_the_term_4_entry_is_on_a_majority_both_commit() {
    let mut net = figure8_c(Bugs::default());
    net.deliver_all(); // S1's 3:4 reaches S3: on S1, S2, S3
    assert_eq!(net.node(1).commit(), 3);
    assert_eq!(net.node(1).applied, [(LogIndex(1), 101), (LogIndex(2), 202)]);
    net.run(5);
    for s in [2, 3] {
        assert_eq!(net.node(s).commit(), 3, "S{s}");
        assert_eq!(net.node(s).applied, [(LogIndex(1), 101), (LogIndex(2), 202)], "S{s}");
    }
    // And now S5 can no longer win: S2 and S3 hold a later last term than its 3.
    figure8_s5_campaigns(&mut net);
    assert_eq!(net.leader(), None);
    assert_eq!(net.node(3).log_terms(), [1, 2, 4]);
}

#[test]
#[should_panic(expected = "SUB-1")]
fn sub1_figure8_check_catches_the_commit_previous_terms_bug() {
    figure8_c(Bugs { commit_previous_terms: true, ..Bugs::default() });
}
