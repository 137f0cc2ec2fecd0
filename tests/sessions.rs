//! Exactly-once sessions on real threads: a session client's writes survive leader crashes and
//! retries without being applied twice; expired sessions and old numbers get typed errors.
//! The same through `Session::propose_async` from tokio tasks: many tasks on one session, a
//! leader crash mid-flight, a leader cut off from its majority (its receipts never answered),
//! a retry of a number, and no leader at all (a bounded count of pauses, never a spin).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
    let call = unknown.propose_async(put("c"), LONG, tokio::time::sleep);
    assert_eq!(runtime().block_on(call), Err(Error::SessionExpired { client: 999_999 }));

    let third = Session::register(&client).expect("registered");
    third.propose_seq(1, put("x"), LONG).expect("#1");
    third.propose_seq(2, put("y"), LONG).expect("#2"); // the table may now drop #1's answer
    let same = third.propose_seq(2, put("y"), LONG).expect("#2 again, answered from the table");
    assert_eq!(same.as_deref(), Some("y"));
    let resumed = Session::resume(&client, third.id(), 3);
    resumed.propose(put("z")).expect("#3, lowest pending 3: #1 and #2 are discarded");
    let old = third.propose_seq(1, put("x"), LONG);
    assert!(matches!(old, Err(Error::SequenceTooOld { seq: 1, .. })), "{old:?}");
    let old = runtime().block_on(third.propose_seq_async(1, put("x"), LONG, tokio::time::sleep));
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
    assert_eq!(session.propose(put.clone()), Err(Error::Shutdown));
    let call = session.propose_async(put, LONG, tokio::time::sleep);
    assert_eq!(runtime().block_on(call), Err(Error::Shutdown), "async alike, at once");
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

// ---------------------------------------------------------------------------------------------
// Async calls (`Session::propose_async`, `Session::propose_seq_async`) from tokio tasks

fn runtime() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_time().build().expect("a tokio runtime")
}

fn session_cluster(seed: u64) -> Cluster<Sessions<KvStateMachine>> {
    let cluster = Cluster::new(fast_config(seed), 3, |_| Sessions::new(KvStateMachine::new(), 100))
        .expect("start");
    wait_for_agreement(&cluster, LONG);
    cluster
}

/// The value of key `k`, read through the log's leader.
fn value_of(cluster: &Cluster<Sessions<KvStateMachine>>) -> String {
    let value = cluster.read("k".into()).expect("read");
    value.as_deref().unwrap_or_default().to_owned()
}

#[test]
fn async_calls_from_many_tasks_through_one_session_apply_each_command_once() {
    let _serial = serial();
    let cluster = session_cluster(93);
    let session = Session::register(&cluster.client()).expect("registered");
    let rt = runtime();
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let session = session.clone();
            rt.spawn(async move {
                let mut answers = Vec::new();
                for i in 0..EACH {
                    let value = token(format!("t{t}-{i}"));
                    let call = session.propose_async(append("k", &value), LONG, tokio::time::sleep);
                    answers.push((value, call.await));
                }
                answers
            })
        })
        .collect();
    let answers: Vec<(String, Result<_, Error>)> = rt.block_on(async {
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("a task"));
        }
        all
    });
    let value = value_of(&cluster);
    let mut lengths = BTreeSet::new();
    for (token, answer) in &answers {
        let output = answer.as_ref().expect("applied").as_deref().expect("a value");
        assert!(output.ends_with(token.as_str()), "{token}: answered {output}");
        assert!(value.starts_with(output), "{token}: {output} is not what the log applied");
        lengths.insert(output.len());
    }
    assert_eq!(lengths.len(), TASKS * EACH, "each command answered at a place of its own");
    let mut written = tokens(&value);
    let mut expected: Vec<String> = answers.into_iter().map(|(token, _)| token).collect();
    written.sort();
    expected.sort();
    assert_eq!(written, expected, "every command applied exactly once");
    assert_eq!(session.next_seq(), (TASKS * EACH) as u64 + 1);
}

type Answers = Vec<(String, Result<ferraft::KvOutput, Error>)>;

/// Tokio tasks, each proposing appends of tokens of its own through `session` one after the
/// other until `stop`, counting answered calls in `done`.
struct Writers {
    tasks: Vec<tokio::task::JoinHandle<Answers>>,
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Writers {
    fn start(rt: &tokio::runtime::Runtime, session: &Session<KvStateMachine>, n: usize) -> Self {
        let (done, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let tasks = (0..n)
            .map(|t| {
                let (session, done, stop) = (session.clone(), Arc::clone(&done), Arc::clone(&stop));
                rt.spawn(async move {
                    let mut answers = Vec::new();
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let value = token(format!("t{t}-{i}"));
                        let call =
                            session.propose_async(append("k", &value), LONG, tokio::time::sleep);
                        answers.push((value, call.await));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    answers
                })
            })
            .collect();
        Writers { tasks, done, stop }
    }

    /// Waits until `more` calls were answered from now.
    fn wait_for(&self, more: usize, what: &str) {
        let before = self.done.load(Ordering::Relaxed);
        wait_until(LONG, what, || {
            let now = self.done.load(Ordering::Relaxed);
            (now >= before + more).then_some(()).ok_or(format!("{} answered", now - before))
        });
    }

    fn stop(self, rt: &tokio::runtime::Runtime) -> Answers {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            let mut all = Vec::new();
            for task in self.tasks {
                all.extend(task.await.expect("a task"));
            }
            all
        })
    }
}

/// Checks that `value` holds each token at most once, only tokens asked for, and each one
/// answered `Ok` exactly once, where its output says (a prefix of `value` ending with it);
/// every other answer is a typed `Timeout` or `Unavailable`. Returns how many were `Ok`.
fn applied_at_most_once(value: &str, answers: &Answers) -> usize {
    let written = tokens(value);
    let unique: BTreeSet<&String> = written.iter().collect();
    assert_eq!(unique.len(), written.len(), "a command applied twice: {value}");
    let mut applied = 0;
    for (token, answer) in answers {
        match answer {
            Ok(output) => {
                let output = output.as_deref().expect("a value");
                assert!(output.ends_with(token.as_str()), "{token}: answered {output}");
                assert!(value.starts_with(output), "{token}: {output} is not what was applied");
                assert!(unique.contains(token), "{token} answered but never applied");
                applied += 1;
            }
            // Typed, and unknown: applied at most once (checked above).
            Err(e) => assert!(matches!(e, Error::Timeout | Error::Unavailable { .. }), "{e:?}"),
        }
    }
    let asked: BTreeSet<&String> = answers.iter().map(|(token, _)| token).collect();
    assert!(unique.is_subset(&asked), "applied a command nobody proposed");
    println!("{applied} of {} calls applied", answers.len());
    applied
}

#[test]
fn async_calls_through_leader_crashes_never_apply_a_command_twice() {
    let _serial = serial();
    let cluster = session_cluster(94);
    let session = Session::register(&cluster.client()).expect("registered");
    let rt = runtime();
    let writers = Writers::start(&rt, &session, 4);
    // Each kill lands while the tasks keep four calls in flight, and the calls then go on
    // (through the new leader) before the old one comes back.
    for _ in 0..2 {
        writers.wait_for(40, "calls answered");
        let leader = cluster.wait_for_leader(LONG).expect("leader");
        cluster.kill(leader).expect("kill");
        writers.wait_for(40, "calls answered after the kill");
        cluster.restart(leader).expect("restart");
    }
    let answers = writers.stop(&rt);
    let applied = applied_at_most_once(&value_of(&cluster), &answers);
    assert!(applied >= 160, "{applied} of {} calls applied", answers.len());
}

/// A leader cut off from its majority appends what it is sent and cannot commit it, so those
/// receipts stay unanswered: each attempt ends at its bound (500 ms), and the calls go on
/// through the majority's new leader, the command applied once.
#[test]
fn async_calls_stuck_at_a_leader_cut_off_from_its_majority_move_on_and_apply_once() {
    let _serial = serial();
    let cluster = session_cluster(97);
    let session = Session::register(&cluster.client()).expect("registered");
    let rt = runtime();
    let writers = Writers::start(&rt, &session, 3);
    writers.wait_for(30, "calls answered");
    let leader = cluster.wait_for_leader(LONG).expect("leader");
    cluster.isolate(leader).expect("isolate");
    // NB: with no bound on an attempt, this waits forever: the receipts at the old leader
    // stay unanswered (it took about 510 ms here, the bound and a retry).
    writers.wait_for(30, "calls answered with the leader cut off");
    cluster.heal();
    writers.wait_for(30, "calls answered after healing");
    let answers = writers.stop(&rt);
    let value = value_of(&cluster);
    let applied = applied_at_most_once(&value, &answers);
    assert!(applied >= 90, "{applied} of {} calls applied", answers.len());
}

#[test]
fn an_async_retry_of_a_number_whose_answer_was_lost_gets_the_first_output() {
    let _serial = serial();
    let cluster = session_cluster(95);
    let session = Session::register(&cluster.client()).expect("registered");
    let rt = runtime();
    let sleep = tokio::time::sleep;
    // The first call's answer is lost: it is cut off after a millisecond, whether or not it
    // was handed over (and applied) by then.
    let first = session.propose_seq_async(1, append("k", "a;"), LONG, sleep);
    let lost = rt.block_on(async { tokio::time::timeout(ms(1), first).await });
    // Two retries of the number at once, from two tasks: one application, one output.
    let retries: Vec<_> = (0..2)
        .map(|_| rt.spawn(session.propose_seq_async(1, append("k", "a;"), LONG, sleep)))
        .collect();
    for retry in retries {
        let output = rt.block_on(retry).expect("a task").expect("applied");
        assert_eq!(output.as_deref(), Some("a;"), "(the first call answered {lost:?})");
    }
    let again = rt.block_on(session.propose_seq_async(1, append("k", "a;"), LONG, sleep));
    assert_eq!(again.expect("answered from the table").as_deref(), Some("a;"));
    let next = rt.block_on(session.propose_async(append("k", "b;"), LONG, sleep));
    assert_eq!(next.expect("#2").as_deref(), Some("a;b;"), "the session's own number: 2");
    assert_eq!(value_of(&cluster), "a;b;", "number 1 applied once");
}

#[test]
fn with_no_leader_an_async_call_is_unavailable_by_its_deadline_and_never_spins() {
    let _serial = serial();
    let cluster = session_cluster(96);
    let session = Session::register(&cluster.client()).expect("registered");
    let leader = cluster.wait_for_leader(LONG).expect("leader");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.kill(leader).expect("kill");
    cluster.kill(follower).expect("kill");
    let rt = runtime();
    let calls = Arc::new(AtomicUsize::new(0));
    let sleep = {
        let calls = Arc::clone(&calls);
        move |pause| {
            calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(pause)
        }
    };
    let timeout = ms(1_000);
    let started = Instant::now();
    let answer = rt.block_on(session.propose_async(append("k", "x;"), timeout, sleep));
    let took = started.elapsed();
    // The lone follower refuses every attempt before appending: never applied.
    assert!(matches!(answer, Err(Error::Unavailable { .. })), "{answer:?}");
    assert!(took >= timeout && took < timeout + ms(5_000), "answered after {took:?}");
    // Every sleep but each attempt's timer (one per 500 ms) and the last sliver before a
    // deadline is a full retry pause: the client's, a tick at most 5 ms.
    let pause = fast_config(96).tick.min(ms(5));
    let most = (timeout.as_millis() / pause.as_millis()) as usize + 20;
    let calls = calls.load(Ordering::Relaxed);
    println!("{calls} sleeps in {took:?}, at most {most}");
    assert!(calls > 0 && calls <= most, "{calls} sleeps in {took:?}: at most {most}");
    // The blocking call answers alike.
    assert!(matches!(
        session.propose_timeout(append("k", "y;"), ms(200)),
        Err(Error::Unavailable { .. })
    ));
}
