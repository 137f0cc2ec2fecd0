//! Exactly-once sessions on real threads: a session client's writes survive leader crashes and
//! retries without being applied twice; expired sessions and old numbers get typed errors.

mod common;

use common::*;
use ferraft::{Cluster, Error, KvCommand, KvStateMachine, Session, Sessions};

#[test]
fn a_session_client_retries_through_leader_crashes_and_applies_each_write_once() {
    let _serial = serial();
    let mut cluster =
        Cluster::new(fast_config(81), 3, |_| Sessions::new(KvStateMachine::new(), 100))
            .expect("start");
    wait_for_agreement(&cluster, LONG);
    let session = Session::register(&cluster.client()).expect("registered");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    const WRITES: usize = 400;
    let writer = {
        let (session, done) = (session.clone(), std::sync::Arc::clone(&done));
        std::thread::spawn(move || {
            for i in 0..WRITES {
                let value = token(format!("w{i}"));
                let command = KvCommand::Append { key: "k".into(), value };
                session.propose(command).expect("applied exactly once, whatever happens");
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let mut crashes_during_writes = 0;
    for _ in 0..2 {
        let leader = cluster.wait_for_leader(LONG).expect("leader");
        std::thread::sleep(ms(20));
        cluster.kill(leader).expect("kill");
        if done.load(std::sync::atomic::Ordering::SeqCst) < WRITES {
            crashes_during_writes += 1;
        }
        std::thread::sleep(ms(50));
        cluster.restart(leader).expect("restart");
    }
    writer.join().expect("writer");
    assert!(crashes_during_writes > 0, "the writer finished before any crash");
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
    let mut cluster =
        Cluster::new(fast_config(83), 3, |_| Sessions::new(KvStateMachine::new(), 10))
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
