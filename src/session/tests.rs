//! The session table on its own: duplicates answered from the table, several commands in
//! flight, expiry from the log only, retries from the past refused, and the table in snapshots.
//! Also a session's numbers when an async call is cancelled (its future dropped).

use super::*;
use crate::kv::{KvCommand, KvOutput, KvStateMachine};

fn append(value: &str) -> KvCommand {
    KvCommand::Append { key: "k".into(), value: value.into() }
}

fn cmd(client: u64, seq: u64, lowest: u64, value: &str) -> SessionCommand<KvCommand> {
    SessionCommand::Command {
        client: ClientId(client),
        seq,
        lowest_pending: lowest,
        command: append(value),
    }
}

fn out(value: &str) -> SessionOutput<KvOutput> {
    SessionOutput::Output(Some(value.into()))
}

#[test]
fn a_duplicate_is_answered_from_the_table_and_applied_once() {
    let mut sm = Sessions::new(KvStateMachine::new(), 10);
    assert_eq!(
        sm.apply(LogIndex(1), &SessionCommand::Register),
        SessionOutput::Registered(ClientId(1))
    );
    assert_eq!(sm.apply(LogIndex(2), &cmd(1, 1, 1, "a;")), out("a;"));
    assert_eq!(sm.apply(LogIndex(3), &cmd(1, 2, 1, "b;")), out("a;b;")); // two in flight
    assert_eq!(sm.apply(LogIndex(4), &cmd(1, 1, 1, "a;")), out("a;"), "retry of #1");
    assert_eq!(sm.apply(LogIndex(5), &cmd(1, 2, 1, "b;")), out("a;b;"), "retry of #2");
    assert_eq!(sm.inner().get("k"), Some("a;b;"));
}

#[test]
fn the_bug_switch_applies_a_duplicate_twice() {
    let mut sm = Sessions::new(KvStateMachine::new(), 10);
    sm.apply_duplicates = true;
    sm.apply(LogIndex(1), &SessionCommand::Register);
    sm.apply(LogIndex(2), &cmd(1, 1, 1, "a;"));
    sm.apply(LogIndex(3), &cmd(1, 1, 1, "a;"));
    assert_eq!(sm.inner().get("k"), Some("a;a;"));
}

#[test]
fn a_retry_from_the_past_after_its_response_was_discarded_is_refused() {
    let mut sm = Sessions::new(KvStateMachine::new(), 10);
    sm.apply(LogIndex(1), &SessionCommand::Register);
    sm.apply(LogIndex(2), &cmd(1, 1, 1, "a;"));
    sm.apply(LogIndex(3), &cmd(1, 2, 2, "b;")); // the client got #1's answer
    let old = sm.apply(LogIndex(4), &cmd(1, 1, 2, "a;"));
    let expected = SessionOutput::SeqTooOld { client: ClientId(1), seq: 1, discarded_below: 2 };
    assert_eq!(old, expected);
    assert_eq!(sm.inner().get("k"), Some("a;b;"));
}

#[test]
fn sessions_expire_from_the_log_alone_and_unknown_ids_are_refused() {
    let mut sm = Sessions::new(KvStateMachine::new(), 2);
    sm.apply(LogIndex(1), &SessionCommand::Register);
    sm.apply(LogIndex(2), &SessionCommand::Register);
    sm.apply(LogIndex(3), &cmd(1, 1, 1, "a;")); // n1 active at 3, n2 at 2
    sm.apply(LogIndex(4), &SessionCommand::Register); // evicts n2, the least recently active
    assert_eq!(sm.sessions(), 2);
    assert_eq!(sm.apply(LogIndex(5), &cmd(2, 1, 1, "x;")), SessionOutput::Expired(ClientId(2)));
    assert_eq!(sm.apply(LogIndex(6), &cmd(99, 1, 1, "x;")), SessionOutput::Expired(ClientId(99)));
    assert_eq!(sm.apply(LogIndex(7), &cmd(1, 2, 1, "b;")), out("a;b;"));
}

#[test]
fn the_table_travels_with_snapshots() {
    let mut sm = Sessions::new(KvStateMachine::new(), 10);
    sm.apply(LogIndex(1), &SessionCommand::Register);
    sm.apply(LogIndex(2), &cmd(1, 1, 1, "a;"));
    let mut restored = Sessions::new(KvStateMachine::new(), 10);
    restored.restore(&sm.snapshot()).expect("restore");
    assert_eq!(restored.digest(), sm.digest());
    assert_eq!(restored.apply(LogIndex(3), &cmd(1, 1, 1, "a;")), out("a;"), "still a duplicate");
    assert_eq!(restored.inner().get("k"), Some("a;"));
    assert!(restored.restore(&[1, 2, 3]).is_err());
}

#[test]
fn a_client_that_never_advances_its_lowest_pending_keeps_a_bounded_window() {
    let mut sm = Sessions::new(KvStateMachine::new(), 10).with_max_responses(4);
    assert_eq!(sm.max_responses(), 4);
    sm.apply(LogIndex(1), &SessionCommand::Register);
    // A raw client: lowest_pending stays 1 however many answers it got.
    for seq in 1..=100u64 {
        let index = LogIndex(1 + seq);
        let got = sm.apply(index, &cmd(1, seq, 1, &format!("{seq};")));
        assert!(matches!(got, SessionOutput::Output(_)), "#{seq}: {got:?}");
        assert!(sm.responses() <= 4, "after #{seq}: {} responses kept", sm.responses());
    }
    assert_eq!(sm.responses(), 4, "the window 97..=100");
    let applied = sm.inner().get("k").map(str::to_owned).expect("written");
    // The window's commands are still answered from the table, never applied again.
    for seq in 97..=100u64 {
        let retry = sm.apply(LogIndex(200 + seq), &cmd(1, seq, 1, &format!("{seq};")));
        let expected: String = (1..=seq).map(|s| format!("{s};")).collect();
        assert_eq!(retry, out(&expected), "retry of #{seq}");
    }
    // Below it: not applied, outcome unknown, a typed answer.
    let trimmed = sm.apply(LogIndex(400), &cmd(1, 96, 1, "96;"));
    let expected = SessionOutput::ResponseNotKept { client: ClientId(1), seq: 96, kept_from: 97 };
    assert_eq!(trimmed, expected);
    // Also a number below the window that never arrived before: never applied late.
    let mut late = Sessions::new(KvStateMachine::new(), 10).with_max_responses(4);
    late.apply(LogIndex(1), &SessionCommand::Register);
    late.apply(LogIndex(2), &cmd(1, 10, 1, "10;"));
    let never = late.apply(LogIndex(3), &cmd(1, 2, 1, "2;"));
    assert_eq!(never, SessionOutput::ResponseNotKept { client: ClientId(1), seq: 2, kept_from: 7 });
    assert_eq!(late.inner().get("k"), Some("10;"));
    assert_eq!(sm.inner().get("k"), Some(applied.as_str()), "no retry was applied");
    // What the client said still wins where it says more: #97 is now `SeqTooOld`.
    let told = sm.apply(LogIndex(401), &cmd(1, 97, 99, "97;"));
    let expected = SessionOutput::SeqTooOld { client: ClientId(1), seq: 97, discarded_below: 99 };
    assert_eq!(told, expected);
}

#[test]
fn the_cap_is_replicated_state_every_replica_trims_alike_and_snapshots_keep_the_floor() {
    let build = || Sessions::new(KvStateMachine::new(), 10).with_max_responses(3);
    let log: Vec<SessionCommand<KvCommand>> = std::iter::once(SessionCommand::Register)
        .chain((1..=20u64).map(|seq| cmd(1, seq, 1, "x;")))
        .collect();
    let (mut a, mut b) = (build(), build());
    for (i, command) in log.iter().enumerate() {
        let index = LogIndex(i as u64 + 1);
        assert_eq!(a.apply(index, command), b.apply(index, command));
    }
    assert_eq!(a.snapshot(), b.snapshot(), "the same table on both replicas");
    let mut restored = build();
    restored.restore(&a.snapshot()).expect("restore");
    assert_eq!(restored.responses(), 3);
    let below = restored.apply(LogIndex(30), &cmd(1, 17, 1, "x;"));
    let expected = SessionOutput::ResponseNotKept { client: ClientId(1), seq: 17, kept_from: 18 };
    assert_eq!(below, expected, "the floor travelled with the snapshot");
    assert_eq!(
        restored.apply(LogIndex(31), &cmd(1, 18, 1, "x;")),
        a.apply(LogIndex(31), &cmd(1, 18, 1, "x;"))
    );
    assert_eq!(restored.inner().get("k"), a.inner().get("k"));
}

#[test]
fn the_default_cap_leaves_the_bundled_clients_alone() {
    // One command at a time, lowest pending advancing: the table holds one response.
    let mut sm = Sessions::new(KvStateMachine::new(), 10);
    assert_eq!(sm.max_responses(), DEFAULT_SESSION_RESPONSES);
    sm.apply(LogIndex(1), &SessionCommand::Register);
    for seq in 1..=50u64 {
        sm.apply(LogIndex(1 + seq), &cmd(1, seq, seq, "y;"));
    }
    assert_eq!(sm.responses(), 1);
}

/// A session's own numbers: `take_next` skips every number `claim` (a `propose_seq`) used,
/// a number stays pending until each call that has it ends, and the lowest pending number is
/// what a command tells the table it may keep answers from.
#[test]
fn numbers_claimed_by_hand_are_never_taken_and_stay_pending_while_in_flight() {
    let mut numbers = Numbers { next: 1, pending: BTreeMap::new() };
    numbers.claim(1);
    assert_eq!(numbers.take_next(), Some(2));
    numbers.claim(9);
    numbers.claim(4); // a number below the next: a retry, the next stays
    assert_eq!(numbers.take_next(), Some(10));
    numbers.claim(4); // the same number from a second thread
    assert_eq!(numbers.lowest_pending(11), 1);
    for seq in [1, 2, 9, 10, 4] {
        numbers.release(seq);
    }
    assert_eq!(numbers.lowest_pending(11), 4, "4 is still pending in its second call");
    numbers.release(4);
    assert_eq!(numbers.lowest_pending(11), 11);
    numbers.claim(u64::MAX);
    assert_eq!(numbers.take_next(), None, "every number used up");
}

/// An async call cancelled mid-flight (its future dropped: `tokio::time::timeout` with no
/// leader to answer) releases its number as a blocking call that timed out does: spent, no
/// longer pending, so later commands tell the table it may drop that number's answer. Also a
/// future dropped before its first poll, and a number claimed by hand.
#[test]
fn a_dropped_async_call_releases_its_number_as_a_blocking_timeout_does() {
    use std::time::Duration;
    let sleep = tokio::time::sleep;
    let long = Duration::from_secs(20);
    let sessions = |_| Sessions::new(KvStateMachine::new(), 10);
    let cluster = crate::Cluster::new(crate::Config::default(), 3, sessions).expect("start");
    let session = Session::register(&cluster.client()).expect("registered");
    let pending = |s: &Session<KvStateMachine>| s.lock().pending.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_time().build().expect("tokio");
    let first = rt.block_on(session.propose_async(append("a;"), long, sleep)).expect("#1");
    assert_eq!(first.as_deref(), Some("a;"));
    // No majority, and the node left follows: every attempt is refused, none answered.
    let leader = cluster.wait_for_leader(long).expect("leader");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.kill(leader).expect("kill");
    cluster.kill(follower).expect("kill");
    let call = session.propose_async(append("b;"), long, sleep);
    assert_eq!((session.next_seq(), pending(&session)), (3, BTreeMap::from([(2, 1)])));
    let cut = rt.block_on(async { tokio::time::timeout(Duration::from_millis(50), call).await });
    assert!(cut.is_err(), "answered with no leader: {cut:?}");
    assert_eq!((session.next_seq(), pending(&session)), (3, BTreeMap::new()), "#2 released");
    // What a blocking call that times out leaves: the same.
    let timed_out = session.propose_timeout(append("c;"), Duration::from_millis(50));
    assert!(matches!(timed_out, Err(Error::Unavailable { .. } | Error::Timeout)), "{timed_out:?}");
    assert_eq!((session.next_seq(), pending(&session)), (4, BTreeMap::new()), "#3 released");
    // Dropped before its first poll: numbered at the call, released at the drop.
    drop(session.propose_async(append("d;"), long, sleep));
    let by_hand = session.propose_seq_async(2, append("b;"), long, sleep);
    assert_eq!(pending(&session), BTreeMap::from([(2, 1)]));
    drop(by_hand);
    assert_eq!((session.next_seq(), pending(&session)), (5, BTreeMap::new()), "#4, #2 released");
    // Back to a majority: the session goes on with #5, telling the table nothing below it is
    // pending, so a late retry of the cancelled #2 is refused, never applied.
    cluster.restart(leader).expect("restart");
    cluster.restart(follower).expect("restart");
    let fifth = rt.block_on(session.propose_async(append("e;"), long, sleep)).expect("#5");
    let value = fifth.as_deref().expect("a value").to_owned();
    assert!(value.starts_with("a;") && value.ends_with("e;"), "{value}");
    assert!(!value.contains("d;"), "never proposed: {value}");
    for token in ["a;", "b;", "c;", "e;"] {
        assert!(value.matches(token).count() <= 1, "{token} applied twice: {value}");
    }
    let late = rt.block_on(session.propose_seq_async(2, append("b;"), long, sleep));
    assert!(matches!(late, Err(Error::SequenceTooOld { seq: 2, .. })), "{late:?}");
    assert!(pending(&session).is_empty());
    cluster.shutdown();
}

/// The one judgement of an attempt's outcome, which the blocking and the async calls share:
/// an answer or a final error ends the call; a refusal before appending is retried and, if
/// every attempt was one, answered at the deadline; anything unknown is retried and makes the
/// deadline's answer `Timeout`.
#[test]
fn an_attempts_outcome_is_judged_the_same_for_blocking_and_async_calls() {
    let refused =
        || Err(Error::Unavailable { last: Box::new(Error::NotLeader { leader_hint: None }) });
    let mut tally = Tally::default();
    assert_eq!(tally.judge::<KvOutput>(refused()), None, "retried");
    assert_eq!(
        tally.at_deadline(),
        Error::Unavailable { last: Box::new(Error::NotLeader { leader_hint: None }) },
        "never applied"
    );
    let mut tally = Tally::default();
    assert_eq!(tally.judge::<KvOutput>(refused()), None);
    assert_eq!(tally.judge::<KvOutput>(Err(Error::Timeout)), None, "unknown: retried");
    assert_eq!(tally.judge::<KvOutput>(refused()), None);
    assert_eq!(tally.at_deadline(), Error::Timeout, "an attempt may have been applied");
    let mut tally = Tally::default();
    assert_eq!(tally.judge(Ok(out("a;"))), Some(Ok(Some("a;".into()))));
    let expired = Ok(SessionOutput::<KvOutput>::Expired(ClientId(3)));
    assert_eq!(tally.judge(expired), Some(Err(Error::SessionExpired { client: 3 })));
    assert_eq!(tally.judge::<KvOutput>(Err(Error::Shutdown)), Some(Err(Error::Shutdown)));
    let node = crate::types::NodeId(1);
    let down = Err(Error::NodeDown(node));
    assert_eq!(tally.judge::<KvOutput>(down), None, "unknown after appending: retried");
}
