//! The AppendEntries receiver (Figure 2, AE-1..AE-5) and SUB-6, on a single follower n2 of
//! {n1, n2, n3} receiving crafted requests from leader n1.

use super::harness::*;

#[test]
fn ae1_stale_term_rejected_with_current_term_and_nothing_changes() {
    let mut f = boot(2).term(3).log(&[1, 2]).start();
    // prev matches the log, so only the term check can refuse it.
    let acts = f.recv(ae(1, 2, 2).prev(2, 2).entries(&[2]).commit(2));
    assert_eq!(trace(&acts), ["n2->n1 t3 AppendEntriesReply reject at=i2 conflict=t2@i2 last=i2"]);
    assert_eq!(f.log_terms(), [1, 2]);
    let s = f.status();
    assert_eq!((s.term, s.commit_index, s.leader), (Term(3), LogIndex(0), None));
}

#[test]
fn ae2_prev_log_index_past_the_end_is_a_mismatch() {
    let mut f = boot(2).term(2).log(&[1, 1]).start();
    let acts = f.recv(ae(1, 2, 2).prev(3, 1).entries(&[2]).commit(3));
    assert_eq!(trace(&acts), ["n2->n1 t2 AppendEntriesReply reject at=i3 conflict=- last=i2"]);
    assert_eq!(f.log_terms(), [1, 1]);
    assert_eq!(f.commit(), 0);
}

#[test]
fn ae2_prev_log_term_mismatch_rejected_and_log_kept() {
    let mut f = boot(2).term(3).log(&[1, 1, 2]).start();
    let acts = f.recv(ae(1, 2, 3).prev(3, 3).entries(&[3]).commit(4));
    assert_eq!(trace(&acts), ["n2->n1 t3 AppendEntriesReply reject at=i3 conflict=t2@i3 last=i3"]);
    assert_eq!(f.log_terms(), [1, 1, 2]);
    assert_eq!(f.commit(), 0);
}

#[test]
fn ae2_prev_log_index_zero_always_matches() {
    let mut f = boot(2).term(1).start();
    let acts = f.recv(ae(1, 2, 1).prev(0, 0).entries(&[1]));
    assert_eq!(trace(&acts), ["persist log from i1", "n2->n1 t1 AppendEntriesReply ok match=i1"]);
    assert_eq!(f.log_terms(), [1]);
}

#[test]
fn ae3_conflicting_entry_truncated_with_followers() {
    let mut f = boot(2).term(3).log(&[1, 1, 2, 2, 2]).start();
    let acts = f.recv(ae(1, 2, 3).prev(2, 1).entries(&[3]));
    assert_eq!(trace(&acts), ["persist log from i3", "n2->n1 t3 AppendEntriesReply ok match=i3"]);
    assert_eq!(f.log_terms(), [1, 1, 3]);
    assert_eq!(f.entries()[2], entry(3, 3));
}

#[test]
fn ae4_only_entries_not_already_in_the_log_are_appended() {
    let mut f = boot(2).term(2).log(&[1, 1]).start();
    // Index 2 is already there with the same term: kept, not rewritten ("persist from i3").
    let acts = f.recv(ae(1, 2, 2).prev(1, 1).entries(&[1, 2, 2]));
    assert_eq!(trace(&acts), ["persist log from i3", "n2->n1 t2 AppendEntriesReply ok match=i4"]);
    assert_eq!(f.log_terms(), [1, 1, 2, 2]);
}

#[test]
fn ae5_commit_is_min_of_leader_commit_and_last_new_entry_not_own_last_index() {
    // i3 and i4 are left over from an old leader; this request vouches only up to i2.
    let mut f = boot(2).term(3).log(&[1, 1, 2, 2]).start();
    let acts = f.recv(ae(1, 2, 3).prev(2, 1).commit(4));
    assert_eq!(trace(&acts), ["n2->n1 t3 AppendEntriesReply ok match=i2", "apply i1..=i2"]);
    assert_eq!(f.commit(), 2);
    // With entries, the bound is prev + len.
    let acts = f.recv(ae(1, 2, 3).prev(2, 1).entries(&[3]).commit(4));
    assert_eq!(f.commit(), 3);
    assert_eq!(trace(&acts).last().map(String::as_str), Some("apply i3..=i3"));
}

#[test]
fn ae5_commit_index_never_decreases() {
    let mut f = boot(2).term(2).log(&[1, 1, 2]).start();
    f.recv(ae(1, 2, 2).prev(3, 2).commit(3));
    assert_eq!(f.commit(), 3);
    // A delayed older heartbeat: lower leaderCommit, and a lower prev + len.
    let acts = f.recv(ae(1, 2, 2).prev(1, 1).commit(1));
    assert_eq!(trace(&acts), ["n2->n1 t2 AppendEntriesReply ok match=i1"]);
    f.recv(ae(1, 2, 2).prev(1, 1).commit(3));
    assert_eq!(f.commit(), 3);
    // A heartbeat from a leader that knows only i1 of ours, with a higher leaderCommit.
    f.recv(ae(1, 2, 2).prev(1, 1).commit(4));
    assert_eq!(f.commit(), 3);
    assert_eq!(f.status().last_applied, LogIndex(3));
}

#[test]
fn sub6_duplicated_older_append_entries_never_truncates_later_entries() {
    let mut f = boot(2).term(2).start();
    f.recv(ae(1, 2, 2).prev(0, 0).entries(&[1, 2, 2]));
    // The first, shorter request of the same leader arrives late (duplicated or reordered).
    let acts = f.recv(ae(1, 2, 2).prev(0, 0).entries(&[1]));
    assert_eq!(trace(&acts), ["n2->n1 t2 AppendEntriesReply ok match=i1"]);
    assert_eq!(f.log_terms(), [1, 2, 2]);
    // A stale heartbeat in the middle of the log changes nothing either.
    f.recv(ae(1, 2, 2).prev(2, 2));
    assert_eq!(f.log_terms(), [1, 2, 2]);
}

#[test]
#[should_panic(expected = "sub6")]
fn sub6_check_catches_the_truncate_on_duplicate_bug() {
    let bugs = Bugs { truncate_on_duplicate: true, ..Bugs::default() };
    let mut f = boot(2).term(2).start().with_bugs(bugs);
    f.recv(ae(1, 2, 2).prev(0, 0).entries(&[1, 2, 2]));
    f.recv(ae(1, 2, 2).prev(0, 0).entries(&[1]));
    assert_eq!(f.log_terms(), [1, 2, 2], "sub6");
}

#[test]
fn gateway_drops_append_entries_whose_terms_go_backwards_or_ahead_of_the_sender() {
    let mut f = boot(2).term(3).log(&[1, 1]).start();
    let backwards = f.recv(ae(1, 2, 3).prev(2, 1).entries(&[3, 2]));
    let reason = "entry terms out of order";
    assert_eq!(backwards, [Action::Notice(Notice::InvalidMessage { from: NodeId(1), reason })]);
    let ahead = f.recv(ae(1, 2, 3).prev(2, 1).entries(&[4]));
    let reason = "entry term ahead of the sender's term";
    assert_eq!(ahead, [Action::Notice(Notice::InvalidMessage { from: NodeId(1), reason })]);
    assert_eq!(f.log_terms(), [1, 1], "log untouched");
    let fine = f.recv(ae(1, 2, 3).prev(2, 1).entries(&[2, 3]));
    assert!(!fine.is_empty(), "a well-formed request is handled");
    assert_eq!(f.log_terms(), [1, 1, 2, 3]);
}

#[test]
fn ae2_a_request_ahead_of_the_log_is_held_and_replayed_when_the_gap_fills() {
    let mut f = boot(2).term(2).log(&[1]).start();
    // The leader pipelined i2, i3, i4 one per request; i3 and i4 overtook i2.
    for prev in [3, 2] {
        let acts = f.recv(ae(1, 2, 2).prev(prev, 2).entries(&[2]).commit(1));
        let want = format!("n2->n1 t2 AppendEntriesReply reject at=i{prev} conflict=- last=i1");
        assert_eq!(trace(&acts), [want], "AE-2 still refuses it for now");
    }
    assert_eq!(f.log_terms(), [1]);
    let acts = f.recv(ae(1, 2, 2).prev(1, 1).entries(&[2]).commit(4));
    assert_eq!(
        sent(&acts),
        [
            "n2->n1 t2 AppendEntriesReply ok match=i2",
            "n2->n1 t2 AppendEntriesReply ok match=i3",
            "n2->n1 t2 AppendEntriesReply ok match=i4",
        ],
        "each held request answered as if delivered now"
    );
    assert_eq!(f.log_terms(), [1, 2, 2, 2]);
    assert_eq!(f.commit(), 2, "AE-5: the held requests carried leaderCommit i1");
    assert_eq!(f.core.held.len(), 0);
}

/// n2 (log i1, i2 of term 1) holds term 2's request for i4@t2, which overtook i3; then term
/// 3's leader n3 sends i3@t1, which fills the gap, and `requests` replays the held one or not.
fn gap_filled_in_a_newer_term(bugs: Bugs) -> Node {
    let mut f = boot(2).term(2).log(&[1, 1]).start().with_bugs(bugs);
    f.recv(ae(1, 2, 2).prev(3, 1).entries(&[2]));
    assert_eq!(f.core.held.len(), 1);
    let acts = f.recv(ae(3, 2, 3).prev(2, 1).entries(&[1]));
    assert_eq!(sent(&acts)[0], "n2->n3 t3 AppendEntriesReply ok match=i3");
    f
}

#[test]
fn all2_requests_held_in_an_older_term_are_never_replayed() {
    let f = gap_filled_in_a_newer_term(Bugs::default());
    assert_eq!(f.log_terms(), [1, 1, 1], "term 2's i4 is dropped, never appended in term 3");
    assert_eq!(f.core.held.len(), 0);
}

#[test]
#[should_panic(expected = "all2")]
fn all2_check_catches_the_replay_held_across_terms_bug() {
    let f = gap_filled_in_a_newer_term(Bugs { replay_held_across_terms: true, ..Bugs::default() });
    assert_eq!(f.log_terms(), [1, 1, 1], "all2");
}

/// Only a bug can make a replayed request fail AE-2 (one of the current leader's, starting
/// within what it vouched for, matches). Should one fail, it is held again and would come
/// straight back: the replays stop there rather than loop until memory runs out (which the
/// simulator met with this switch and retrying clients, nemesis seed 796).
#[test]
fn a_replay_that_fails_its_check_ends_the_replays_instead_of_looping() {
    let bugs = Bugs { replay_held_across_terms: true, ..Bugs::default() };
    let mut f = boot(2).term(2).start().with_bugs(bugs);
    f.recv(ae(1, 2, 2).prev(1, 1).entries(&[2])); // i2@t2, held
    f.recv(ae(1, 2, 2).prev(3, 2).entries(&[2])); // i4@t2, held
    assert_eq!(f.core.held.len(), 2);
    // Term 3's leader fills i1..=i4; the bug replays term 2's requests: i2@t2 truncates the
    // log to i2, so the next one (after i3) fails its check and is held again.
    f.recv(ae(3, 2, 3).prev(0, 0).entries(&[1, 3, 3, 3]));
    assert_eq!(f.log_terms(), [1, 2], "the bug's damage, which ALL-2's check reports");
    assert_eq!(f.core.held.len(), 1, "the failed replay is held, and the step ended");
}

#[test]
fn ae2_only_requests_with_entries_are_held_and_at_most_a_window_of_them() {
    let config = Config { max_inflight: 2, ..test_config() };
    let mut f = boot(2).term(2).log(&[1]).config(config).start();
    f.recv(ae(1, 2, 2).prev(5, 2).commit(1)); // a heartbeat: nothing to hold
    assert_eq!(f.core.held.len(), 0);
    for prev in [6, 3, 4] {
        f.recv(ae(1, 2, 2).prev(prev, 2).entries(&[2]));
    }
    assert_eq!(f.core.held.len(), 2, "the one furthest from the gap (after i6) went");
    f.recv(ae(1, 2, 2).prev(1, 1).entries(&[2, 2]));
    assert_eq!(f.log_terms(), [1, 2, 2, 2, 2], "i2..=i3, then the held i4 and i5");
}

/// n2's log was compacted through i5 (term 1) and holds i6..=i8 of term 1, all committed.
fn compacted_follower() -> Node {
    let mut f = boot(2).term(1).offset(5, 1).log(&[1, 1, 1]).start();
    f.recv(ae(1, 2, 1).prev(8, 1).commit(8));
    assert_eq!((f.commit(), f.status().leader), (8, Some(NodeId(1))));
    f
}

/// Leader Completeness (§5.4): no correct leader replaces a committed entry, so such a request
/// is dropped with a notice, however it reaches the log (the gateway reads it from the offset
/// on, as `skip_compacted` does), and never reaches `truncate_from`'s assert.
#[test]
fn gateway_a_request_from_below_the_offset_never_replaces_a_committed_entry() {
    let reason = "AppendEntries would overwrite a committed entry";
    let dropped = [Action::Notice(Notice::InvalidMessage { from: NodeId(1), reason })];
    // Read from the offset on (i4 and i5 are the snapshot's), i6@t2 would replace committed
    // i6@t1; an entry at the offset itself must carry the snapshot's term too.
    for request in
        [ae(1, 2, 2).prev(3, 1).entries(&[1, 1, 2]), ae(1, 2, 2).prev(3, 1).entries(&[1, 2])]
    {
        let mut f = compacted_follower();
        let acts = f.recv(request.commit(8));
        assert_eq!(acts, dropped, "dropped at the gateway, no truncating panic");
        assert_eq!(f.log_terms(), [1, 1, 1], "log untouched");
        assert_eq!((f.term(), f.commit(), f.status().snapshot_index), (1, 8, LogIndex(5)));
    }
    // The same start below the offset, agreeing with every committed entry, is handled.
    let mut f = compacted_follower();
    let acts = f.recv(ae(1, 2, 2).prev(3, 1).entries(&[1, 1, 1, 1, 1, 2]).commit(8));
    assert_eq!(sent(&acts), ["n2->n1 t2 AppendEntriesReply ok match=i9"]);
    assert_eq!(f.log_terms(), [1, 1, 1, 2]);
}

/// The same rule for a request held for reordering: checked again when replayed, since the
/// entries it would replace may have been committed while it waited.
#[test]
fn gateway_a_held_request_replayed_over_entries_committed_meanwhile_is_dropped() {
    let mut f = boot(2).term(2).log(&[1, 1, 1]).start();
    f.recv(ae(1, 2, 2).prev(5, 1).entries(&[1])); // i6@t1, ahead of the log: held
    assert_eq!(f.core.held.len(), 1);
    // i4..=i7 arrive with i6@t2 and commit through i7: the held i6@t1 would replace it.
    let acts = f.recv(ae(1, 2, 2).prev(3, 1).entries(&[1, 1, 2, 2]).commit(7));
    assert_eq!(
        sent(&acts),
        ["n2->n1 t2 AppendEntriesReply ok match=i7"],
        "no reply to the held one"
    );
    let reason = "AppendEntries would overwrite a committed entry";
    assert_eq!(notices(&acts), [Notice::InvalidMessage { from: NodeId(1), reason }]);
    assert_eq!(f.log_terms(), [1, 1, 1, 1, 1, 2, 2], "the committed i6 and i7 stay");
    assert_eq!((f.commit(), f.core.held.len()), (7, 0));
}
