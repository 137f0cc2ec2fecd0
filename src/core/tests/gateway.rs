//! The gateway (validate once, trust inside): a message no correct peer sends is dropped before
//! it touches any state, with one `Notice::InvalidMessage`, and never panics the core. Asserts
//! inside the core are only about states the core produced itself.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::harness::*;

/// n1 leads term 1 of {n1, n2, n3} with [1:noop, 2:5, 3:6], all committed via n2 (Replicate,
/// matched 3); n3 is still being probed.
fn leader() -> Node {
    let mut c = boot(1).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    c.propose(&[5, 6]);
    c.recv(ae_ok(2, 1, 1, 3));
    assert_eq!((c.role(), c.commit()), (Role::Leader, 3));
    c
}

/// n2 follows n1 in term 2 with [1, 1, 2], committed through 2.
fn follower() -> Node {
    let mut f = boot(2).term(2).log(&[1, 1, 2]).start();
    f.recv(ae(1, 2, 2).prev(3, 2).commit(2));
    assert_eq!((f.status().leader, f.commit()), (Some(NodeId(1)), 2));
    f
}

/// n1 campaigns in term 2 of {n1, n2, n3}.
fn candidate() -> Node {
    let mut c = boot(1).term(1).start();
    c.campaign();
    assert_eq!((c.role(), c.term()), (Role::Candidate, 2));
    c
}

/// n2 follows n1 in term 2 with a log compacted through i2 (term 1) and i3 of term 2, all
/// committed.
fn compacted_follower() -> Node {
    let mut f = boot(2).term(2).offset(2, 1).log(&[2]).start();
    f.recv(ae(1, 2, 2).prev(3, 2).commit(3));
    assert_eq!((f.status().leader, f.commit()), (Some(NodeId(1)), 3));
    f
}

/// The last term and index a peer may name (the gateway's margin).
const MARGIN: u64 = u64::MAX / 2;

/// Everything a message could change: status (role, term, leader, commit, applied, config),
/// vote, log, timers, votes and every peer's progress.
fn fingerprint(n: &Node) -> String {
    let c = &n.core;
    format!(
        "{:?} {:?} {:?} {} {} {} {:?} {:?} {:?}",
        c.status(),
        c.voted_for(),
        n.entries(),
        c.election_elapsed,
        c.election_timeout,
        c.heartbeat_elapsed,
        c.votes,
        c.progress,
        c.change
    )
}

fn append(from: u64, to: u64, term: u64, prev: (u64, u64), entries: &[u64]) -> Message<u64> {
    let entries = entries.iter().map(|&t| Entry { term: Term(t), payload: Payload::Noop });
    let body = Body::AppendEntries(AppendEntries {
        prev_log_index: LogIndex(prev.0),
        prev_log_term: Term(prev.1),
        entries: entries.collect(),
        leader_commit: LogIndex(0),
    });
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

fn reject(from: u64, to: u64, term: u64, at: u64, conflict: (u64, u64), last: u64) -> Message<u64> {
    let body = Body::AppendEntriesReply(AppendEntriesReply::Reject {
        rejected_index: LogIndex(at),
        conflict: Some((Term(conflict.0), LogIndex(conflict.1))),
        last_index: LogIndex(last),
    });
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

fn snapshot(from: u64, to: u64, term: u64, index: u64) -> Message<u64> {
    let meta = SnapshotMeta {
        index: LogIndex(index),
        term: Term(1),
        config: std::sync::Arc::new(conf(&[1, 2, 3], &[])),
    };
    let chunk =
        crate::message::InstallSnapshot { meta, offset: 0, data: b"s".to_vec(), done: true };
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body: Body::InstallSnapshot(chunk),
    }
}

fn timeout_now(from: u64, to: u64, term: u64) -> Message<u64> {
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body: Body::TimeoutNow }
}

#[test]
fn gateway_drops_every_malformed_message_kind_without_panic_or_state_change() {
    type Case = (&'static str, fn() -> Node, Message<u64>, &'static str);
    let cases: Vec<Case> = vec![
        ("misrouted", follower, ae(1, 3, 2).into(), "addressed to another node"),
        ("from itself", follower, ae(2, 2, 2).into(), "claims to come from this node"),
        (
            "last possible term",
            follower,
            rv(3, 2, u64::MAX).into(),
            "term past the margin of the term space",
        ),
        (
            "first term past the margin",
            follower,
            rv(3, 2, MARGIN + 1).into(),
            "term past the margin of the term space",
        ),
        (
            "AppendEntries past the margin of the term space",
            follower,
            append(1, 2, MARGIN + 1, (3, 2), &[]),
            "term past the margin of the term space",
        ),
        (
            "entry terms going backwards",
            follower,
            append(1, 2, 2, (3, 2), &[2, 1]),
            "entry terms out of order",
        ),
        (
            "entry term ahead of the sender",
            follower,
            append(1, 2, 2, (3, 2), &[3]),
            "entry term ahead of the sender's term",
        ),
        (
            "prev_log_term ahead of the sender",
            follower,
            append(1, 2, 2, (3, 5), &[]),
            "prev_log_term ahead of the sender's term",
        ),
        (
            "indexes past u64::MAX",
            follower,
            append(1, 2, 2, (u64::MAX, 2), &[2]),
            "entry indexes past the margin of the index space",
        ),
        (
            "last entry past the margin",
            follower,
            append(1, 2, 2, (MARGIN, 2), &[2]),
            "entry indexes past the margin of the index space",
        ),
        (
            "snapshot index past the margin",
            follower,
            snapshot(1, 2, 2, MARGIN + 1),
            "snapshot index past the margin of the index space",
        ),
        (
            "AppendEntries to the leader of the same term",
            leader,
            ae(2, 1, 1).into(),
            "AppendEntries from a second leader of this term",
        ),
        (
            "AppendEntries from a second leader, to a follower",
            follower,
            ae(3, 2, 2).prev(3, 2).into(),
            "AppendEntries from a second leader of this term",
        ),
        (
            "overwrites a committed entry",
            follower,
            append(1, 2, 2, (1, 1), &[2]),
            "AppendEntries would overwrite a committed entry",
        ),
        (
            "overwrites a committed entry, from a higher term",
            follower,
            append(1, 2, 3, (1, 1), &[3]),
            "AppendEntries would overwrite a committed entry",
        ),
        (
            "overwrites a committed entry, starting below the offset",
            compacted_follower,
            append(1, 2, 2, (0, 0), &[1, 1, 1]),
            "AppendEntries would overwrite a committed entry",
        ),
        (
            "overwrites the committed entry at the offset, from a higher term",
            compacted_follower,
            append(1, 2, 3, (1, 1), &[3]),
            "AppendEntries would overwrite a committed entry",
        ),
        (
            "success past the leader's log",
            leader,
            ae_ok(3, 1, 1, 99),
            "acknowledges entries past the leader's log",
        ),
        (
            "rejection past the leader's log",
            leader,
            ae_reject(2, 1, 1, 50, 60),
            "rejects an index past the leader's log",
        ),
        (
            "conflict hint past the rejected index",
            leader,
            reject(2, 1, 1, 3, (1, 9), 9),
            "conflict hint past the rejected index",
        ),
        (
            "conflict hint beyond the follower's own log",
            leader,
            reject(2, 1, 1, 3, (1, 3), 2),
            "conflict hint past the follower's last index",
        ),
        (
            "conflict term ahead of the sender",
            leader,
            reject(2, 1, 1, 3, (4, 3), 3),
            "conflict term ahead of the sender's term",
        ),
        ("vote from a non-voter", candidate, vote(9, 1, 2, true), "vote from a non-voter"),
        (
            "candidate's last log term ahead of its term",
            follower,
            rv(3, 2, 3).last(9, 4).into(),
            "candidate's last log term ahead of its term",
        ),
        (
            "TimeoutNow from a follower",
            follower,
            timeout_now(3, 2, 2),
            "TimeoutNow from a node that is not this term's leader",
        ),
        (
            "TimeoutNow from an unknown term",
            follower,
            timeout_now(1, 2, 3),
            "TimeoutNow from a node that is not this term's leader",
        ),
    ];
    let mut failures = Vec::new();
    for (name, setup, msg, reason) in cases {
        let from = msg.from;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut n = setup();
            let before = fingerprint(&n);
            let acts = n.recv(msg);
            (acts, before == fingerprint(&n))
        }));
        let expected = [Action::Notice(Notice::InvalidMessage { from, reason })];
        match outcome {
            Err(_) => failures.push(format!("{name}: panicked")),
            Ok((acts, _)) if acts != expected => failures.push(format!("{name}: {acts:?}")),
            Ok((_, false)) => failures.push(format!("{name}: state changed")),
            Ok(_) => {}
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn gateway_valid_messages_near_the_limits_are_still_handled() {
    // A rejection at the last index the leader sent is fine, and is answered with a probe.
    let mut c = leader();
    let acts = c.recv(reject(3, 1, 1, 0, (0, 0), 0));
    assert!(notices(&acts).is_empty(), "{acts:?}");
    // An AppendEntries that repeats committed entries with the same terms is fine.
    let mut f = follower();
    let acts = f.recv(ae(1, 2, 2).prev(0, 0).entries(&[1, 1, 2]).commit(2));
    assert_eq!(trace(&acts), ["n2->n1 t2 AppendEntriesReply ok match=i3"]);
    // So does one from below the offset, and a heartbeat at the last index a peer may name.
    let mut f = compacted_follower();
    let acts = f.recv(ae(1, 2, 2).prev(0, 0).entries(&[1, 1, 2, 2]).commit(3));
    assert_eq!(trace(&acts), ["persist log from i4", "n2->n1 t2 AppendEntriesReply ok match=i4"]);
    let acts = f.recv(ae(1, 2, 2).prev(MARGIN, 2));
    assert!(notices(&acts).is_empty(), "{acts:?}");
    assert_eq!(
        sent(&acts),
        [format!("n2->n1 t2 AppendEntriesReply reject at=i{MARGIN} conflict=- last=i4")]
    );
}

/// A term past the margin is refused, so no peer can bring this node near the end of the term
/// space: at the margin itself it still campaigns, and pre-votes past it, without overflow.
#[test]
fn gateway_terms_past_the_margin_are_refused_so_a_campaign_never_overflows() {
    let mut f = follower();
    let acts = f.recv(ae(1, 2, MARGIN + 1).prev(3, 2));
    let reason = "term past the margin of the term space";
    assert_eq!(acts, [Action::Notice(Notice::InvalidMessage { from: NodeId(1), reason })]);
    assert_eq!(f.term(), 2);
    f.recv(ae(1, 2, MARGIN).prev(3, 2));
    f.recv(timeout_now(1, 2, MARGIN));
    assert_eq!((f.role(), f.term()), (Role::Candidate, MARGIN + 1));
    // Its elections time out: it asks for pre-votes at the term after, past the margin.
    let acts = f.tick(100);
    let pre_votes: Vec<u64> = sends(&acts)
        .into_iter()
        .filter(|m| matches!(m.body, Body::RequestVote(RequestVote { pre_vote: true, .. })))
        .map(|m| m.term.0)
        .collect();
    assert!(!pre_votes.is_empty() && pre_votes.iter().all(|&t| t == MARGIN + 2), "{pre_votes:?}");
    assert_eq!(f.term(), MARGIN + 1, "a pre-vote raises no term");
}

#[test]
fn gateway_huge_last_index_in_a_rejection_does_not_overflow() {
    let mut c = boot(1).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    c.propose(&[5, 6]); // n2 is replicating: i2..=i3 in flight
    let body = Body::AppendEntriesReply(AppendEntriesReply::Reject {
        rejected_index: LogIndex(1),
        conflict: None,
        last_index: LogIndex(u64::MAX),
    });
    let msg = Message { from: NodeId(2), to: NodeId(1), term: Term(1), body };
    let acts = c.recv(msg);
    assert_eq!(
        appends_to(&acts, 2).iter().map(|a| a.prev_log_index).collect::<Vec<_>>(),
        [LogIndex(1)]
    );
}

#[test]
fn gateway_backtracking_hints_below_the_log_offset_send_the_snapshot() {
    // n1's log was compacted through i5 (term 1); it wins term 2 and appends its no-op at i8.
    let leader = || {
        let mut c = boot(1).offset(5, 1).log(&[1, 1]).start();
        c.campaign();
        c.recv(vote(2, 1, 2, true));
        assert_eq!(c.status().last_log_index, LogIndex(8));
        c
    };
    // n2 says its log ends at i1, or names a term n1 no longer holds, starting at i1.
    // It never reads below its offset: it sends the snapshot that covers it instead (§7).
    for msg in [ae_reject(2, 1, 2, 7, 1), reject(2, 1, 2, 7, (0, 1), 7)] {
        let acts = leader().recv(msg);
        assert!(appends_to(&acts, 2).is_empty(), "no AppendEntries: {:?}", trace(&acts));
        let chunks: Vec<_> = sends(&acts)
            .into_iter()
            .filter_map(|m| match &m.body {
                Body::InstallSnapshot(c) => Some((c.meta.index, c.offset, c.done)),
                _ => None,
            })
            .collect();
        assert_eq!(chunks, [(LogIndex(5), 0, true)], "{:?}", trace(&acts));
    }
}

/// What a node's own storage loads is checked too (`check_persistent_state`), but against the
/// end of the number space, not the margin peers are held to: a node's own campaigns and
/// appends pass the margin (above), and it must restart after.
#[test]
fn a_loaded_state_past_the_margin_is_the_nodes_own_and_only_the_end_of_the_space_is_refused() {
    use crate::core::check_persistent_state;
    use crate::message::{Configuration, Entry, Payload};
    use crate::storage::{HardState, PersistentState};
    use crate::types::{LogIndex, Term};
    let entry = |t: u64| Entry { term: Term(t), payload: Payload::Command(0u64) };
    let state =
        |term: u64, offset: u64, offset_term: u64, entries: Vec<Entry<u64>>| PersistentState {
            hard_state: HardState { term: Term(term), voted_for: None },
            base_config: Configuration::new([NodeId(1)]),
            log_offset: LogIndex(offset),
            offset_term: Term(offset_term),
            entries,
            snapshot: None,
        };
    let past = MARGIN + 5;
    check_persistent_state(&state(past, past, past - 1, vec![entry(past - 1), entry(past)]))
        .expect("a term and a log past the margin are the node's own");
    let why = check_persistent_state(&state(u64::MAX, 0, 0, vec![])).expect_err("no next term");
    assert!(why.contains("last of the term space"), "{why}");
    let end = state(5, u64::MAX - 2, 5, vec![entry(5), entry(5)]);
    let why = check_persistent_state(&end).expect_err("its next index would overflow");
    assert!(why.contains("past the last usable index"), "{why}");
}
