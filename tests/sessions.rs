//! Exactly-once sessions on real threads: a session client's writes survive leader crashes and
//! retries without being applied twice; expired sessions and old numbers get typed errors.

mod common;

use common::*;
use ferraft::{Cluster, Error, KvCommand, KvStateMachine, Session, Sessions};

#[test]
fn a_session_client_retries_through_leader_crashes_and_applies_each_write_once() {
    let _serial = serial();
    let cluster = Cluster::new(fast_config(81), 3, |_| Sessions::new(KvStateMachine::new(), 100))
        .expect("start");
    wait_for_agreement(&cluster, LONG);
    let session = Session::register(&cluster.client()).expect("registered");
    const WRITES: usize = 400;
    // The writer tells the test when it reaches write 100 (and 250), carries on, and waits at
    // 200 (and 350) until the leader was killed: each kill lands while writes are flowing,
    // however fast this machine is, and usually with one in flight.
    let (reached, reached_rx) = std::sync::mpsc::channel::<usize>();
    let (killed, killed_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let session = session.clone();
        std::thread::spawn(move || {
            for i in 0..WRITES {
                if i == 100 || i == 250 {
                    reached.send(i).expect("test waiting");
                }
                if i == 200 || i == 350 {
                    killed_rx.recv_timeout(LONG).expect("the leader was killed");
                }
                let value = token(format!("w{i}"));
                let command = KvCommand::Append { key: "k".into(), value: value.into() };
                session.propose(command).expect("applied exactly once, whatever happens");
            }
        })
    };
    for _ in 0..2 {
        reached_rx.recv_timeout(LONG).expect("the writer is writing");
        let leader = cluster.wait_for_leader(LONG).expect("leader");
        cluster.kill(leader).expect("kill");
        killed.send(()).expect("writer waiting");
        cluster.restart(leader).expect("restart");
    }
    writer.join().expect("writer");
    let value = cluster.read("k".into()).expect("read").expect("written");
    let written = tokens(&value);
    let expected: Vec<String> = (0..WRITES).map(|i| token(format!("w{i}"))).collect();
    assert_eq!(written, expected, "every write once, in order");
}

#[test]
fn expired_and_unknown_sessions_and_old_numbers_are_typed_errors() {
    let _serial = serial();
    let cluster = Cluster::new(fast_config(82), 3, |_| Sessions::new(KvStateMachine::new(), 1))
        .expect("start");
    wait_for_agreement(&cluster, LONG);
    let client = cluster.client();
    let first = Session::register(&client).expect("registered");
    let put = |v: &str| KvCommand::Put { key: "k".into(), value: v.into() };
    first.propose(put("a")).expect("applied");
    let _second = Session::register(&client).expect("registered"); // evicts the first (max 1)
    let expired = first.propose(put("b"));
    assert_eq!(expired, Err(Error::SessionExpired { client: first.id().0 }));
    assert!(expired.unwrap_err().to_string().contains("register a new session"));
    let unknown = Session::resume(&client, ferraft::ClientId(999_999), 1);
    assert_eq!(unknown.propose(put("c")), Err(Error::SessionExpired { client: 999_999 }));

    let third = Session::register(&client).expect("registered");
    third.propose_seq(1, put("x"), LONG).expect("#1");
    third.propose_seq(2, put("y"), LONG).expect("#2"); // the table may now drop #1's answer
    let same = third.propose_seq(2, put("y"), LONG).expect("#2 again, answered from the table");
    assert_eq!(same.as_deref(), Some("y"));
    let resumed = Session::resume(&client, third.id(), 3);
    resumed.propose(put("z")).expect("#3, lowest pending 3: #1 and #2 are discarded");
    let old = third.propose_seq(1, put("x"), LONG);
    assert!(matches!(old, Err(Error::SequenceTooOld { seq: 1, .. })), "{old:?}");
    assert_eq!(cluster.read("k".into()).expect("read").as_deref(), Some("z"));
}

#[test]
fn a_session_command_with_no_node_running_is_a_typed_error() {
    let _serial = serial();
    let cluster = Cluster::new(fast_config(83), 3, |_| Sessions::new(KvStateMachine::new(), 10))
        .expect("start");
    wait_for_agreement(&cluster, LONG);
    let session = Session::register(&cluster.client()).expect("registered");
    for id in cluster.ids() {
        cluster.kill(id).expect("kill");
    }
    let put = KvCommand::Put { key: "k".into(), value: "v".into() };
    assert_eq!(session.propose(put), Err(Error::Shutdown));
    assert_eq!(
        cluster.read_at(ferraft::NodeId(1), "k".into()),
        Err(Error::NodeDown(ferraft::NodeId(1)))
    );
}

/// `Session::propose` never draws a number `Session::propose_seq` used: it used to draw 1
/// after `propose_seq(1, ..)`, and the session table answered it with the first command's
/// output, its own command never applied (found by an embedding review).
#[test]
fn propose_after_propose_seq_takes_a_number_of_its_own() {
    let _serial = serial();
    let cluster = Cluster::new(fast_config(92), 3, |_| Sessions::new(KvStateMachine::new(), 10))
        .expect("start");
    let session = Session::register(&cluster.client()).expect("registered");
    let add = |token: &str| KvCommand::Append { key: "k".into(), value: token.into() };
    assert_eq!(session.propose_seq(1, add("a;"), LONG).expect("#1").as_deref(), Some("a;"));
    assert_eq!(session.propose_seq(5, add("b;"), LONG).expect("#5").as_deref(), Some("a;b;"));
    let again = session.propose_seq(5, add("b;"), LONG).expect("#5 retried");
    assert_eq!(again.as_deref(), Some("a;b;"), "a retry answers the first attempt's output");
    assert_eq!(session.propose(add("c;")).expect("#6").as_deref(), Some("a;b;c;"));
    assert_eq!(session.propose(add("d;")).expect("#7").as_deref(), Some("a;b;c;d;"));
    let value = cluster.read("k".to_string()).expect("read");
    assert_eq!(value.as_deref(), Some("a;b;c;d;"), "each command applied once, in order");
    cluster.shutdown();
}

#[test]
fn a_session_saved_by_its_next_number_resumes_without_reusing_one() {
    let _serial = serial();
    let cluster = Cluster::new(fast_config(84), 3, |_| Sessions::new(KvStateMachine::new(), 10))
        .expect("start");
    wait_for_agreement(&cluster, LONG);
    let client = cluster.client();
    let session = Session::register(&client).expect("registered");
    assert_eq!(session.next_seq(), 1);
    let append = |v: &str| KvCommand::Append { key: "k".into(), value: v.into() };
    session.propose(append("a;")).expect("#1");
    session.propose_timeout(append("b;"), LONG).expect("#2, with a deadline of its own");
    let (id, next) = (session.id(), session.next_seq());
    assert_eq!(next, 3);
    drop(session); // the client restarts, with (id, next) saved
    let resumed = Session::resume(&client, id, next);
    let output = resumed.propose(append("c;")).expect("#3");
    assert_eq!(output.as_deref(), Some("a;b;c;"), "each command applied once");
}
