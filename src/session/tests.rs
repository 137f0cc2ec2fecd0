//! The session table on its own: duplicates answered from the table, several commands in
//! flight, expiry from the log only, retries from the past refused, and the table in snapshots.

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
