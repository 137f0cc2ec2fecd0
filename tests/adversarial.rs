//! Adversarial inputs through the public API: configurations that pass validation but cannot
//! work, ids the library reserves, and sizes no process can allocate. Each must be refused with
//! a typed error that names the field or id, never a panic, an abort or a long wait.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use common::*;
use ferraft::transport::{TcpConfig, TcpConfigError, TcpTransport};
use ferraft::{
    Cluster, ConfigError, Error, KvStateMachine, MembershipChange, Message, NodeId, Term, Transport,
};

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("bound address")
}

/// `TcpConfig::queue_capacity` sizes a channel allocated in full when the first message for a
/// peer is queued. `Config::inbox_capacity`, which sizes the same kind of channel, is capped
/// at `MAX_INBOX_CAPACITY` for that reason; `queue_capacity` was not checked at all, so a
/// config that `validate` accepted panicked the node on its first send ("bounded channel
/// capacity is too large"), and a large but smaller value (2^40) aborts the whole process on
/// the allocation.
#[test]
fn a_tcp_queue_capacity_no_process_can_allocate_is_refused_by_validate() {
    let mut config = TcpConfig::new(7, [(NodeId(1), free_addr()), (NodeId(2), free_addr())].into());
    config.listen = Some("127.0.0.1:0".parse().expect("address"));
    config.queue_capacity = usize::MAX;
    let err = config.validate().expect_err("queue_capacity usize::MAX must be refused");
    assert!(
        matches!(err, TcpConfigError::LimitTooLarge { field: "queue_capacity", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("queue_capacity"), "{err}");

    // `start` refuses it too; before the fix it started, and the first send panicked.
    let (tx, _rx) = bounded::<Message<u64>>(8);
    match TcpTransport::start(NodeId(1), config, tx) {
        Err(e) => {
            let inner = e.get_ref().and_then(|e| e.downcast_ref::<TcpConfigError>());
            assert!(inner.is_some(), "{e}");
        }
        Ok(mut transport) => {
            let msg = Message {
                from: NodeId(1),
                to: NodeId(2),
                term: Term(1),
                body: ferraft::message::Body::TimeoutNow,
            };
            let sent = catch_unwind(AssertUnwindSafe(|| transport.send(msg)));
            drop(transport);
            panic!(
                "started with queue_capacity usize::MAX; the first send panicked: {}",
                sent.is_err()
            );
        }
    }
    // The largest allowed value still validates.
    let mut most = TcpConfig::new(7, BTreeMap::new());
    most.queue_capacity = ferraft::MAX_INBOX_CAPACITY;
    assert_eq!(most.validate(), Ok(()));
}

/// `NodeId(u64::MAX)` is reserved (a `Client` stores it for "no leader known", and
/// `Cluster::add_node` and every constructor refuse it), but a membership change naming it
/// went into the log: the leader appended a configuration with the reserved id as a learner
/// and waited out the catch-up timeout before answering `CatchUpFailed`.
#[test]
fn a_membership_change_naming_the_reserved_id_is_refused_at_once() {
    let _serial = serial();
    let config = fast_config(0xad01);
    let cluster = Cluster::new(config, 3, |_| KvStateMachine::new()).expect("start");
    let reserved = NodeId(u64::MAX);
    let started = Instant::now();
    let error = cluster
        .change_membership_timeout(MembershipChange::AddNode(reserved), LONG)
        .expect_err("the reserved id must be refused");
    assert_eq!(error, Error::InvalidConfig(ConfigError::ReservedNodeId(reserved)));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let leader = cluster.wait_for_leader(LONG).expect("leader");
    let members = cluster.status(leader).expect("status").core.config;
    assert!(!members.contains(reserved), "{members:?}");
    cluster.shutdown();
}

/// An absurd node count is refused with a typed error, before anything is allocated for it:
/// `ClusterBuilder::nodes(n)` (and `Cluster::new(config, n, ..)`) used to collect the ids
/// `1..=n` first, so `usize::MAX` panicked with "capacity overflow" and a count of about 2^40
/// aborted the process on a failed allocation.
#[test]
fn an_absurd_node_count_is_an_error_not_a_panic() {
    use ferraft::{ConfigError, MAX_NODES};
    for count in [usize::MAX, 1 << 40, MAX_NODES + 1] {
        let started = catch_unwind(|| {
            Cluster::new(fast_config(0xad02), count, |_| KvStateMachine::new()).map(|_| ())
        });
        let too_many = ConfigError::TooManyNodes { count, max: MAX_NODES };
        match started {
            Ok(Err(Error::InvalidConfig(e))) => assert_eq!(e, too_many, "{count}"),
            Ok(other) => panic!("{count}: expected InvalidConfig, got {other:?}"),
            Err(_) => panic!("Cluster::new(config, {count}, ..) panicked"),
        }
        let ids: Vec<NodeId> = (1..=MAX_NODES as u64 + 1).map(NodeId).collect();
        let builder = Cluster::builder(fast_config(0xad02), |_| KvStateMachine::new()).ids(&ids);
        match builder.start() {
            Err(Error::InvalidConfig(e)) => assert!(matches!(e, ConfigError::TooManyNodes { .. })),
            other => {
                panic!("{} ids: expected InvalidConfig, got {:?}", ids.len(), other.map(|_| ()))
            }
        }
    }
}

/// Sequence numbers never wrap: a session hands out numbers up to `u64::MAX - 1` and then
/// refuses (`SessionExhausted`, nothing proposed). Before, `Session::resume(client, id,
/// u64::MAX)` numbered its first command `u64::MAX`, telling the table every lower number was
/// done, and the next number wrapped to 0 (a panic with overflow checks on): every later
/// command was `SequenceTooOld { seq: 0, 1, .., discarded_below: u64::MAX }`.
#[test]
fn a_session_refuses_once_its_numbers_run_out_and_never_wraps() {
    use ferraft::{KvCommand, Session, Sessions};
    let _serial = serial();
    let config = fast_config(0xad03);
    let cluster =
        Cluster::new(config, 3, |_| Sessions::new(KvStateMachine::new(), 10)).expect("start");
    let session = Session::register(&cluster.client()).expect("register");
    let put = |v: &str| KvCommand::Put { key: "k".into(), value: v.into() };
    let last = Session::resume(&cluster.client(), session.id(), u64::MAX - 1);
    let first = last.propose(put("a"));
    let second = catch_unwind(AssertUnwindSafe(|| last.propose(put("b"))));
    let at_max = Session::resume(&cluster.client(), session.id(), u64::MAX);
    let none_left = catch_unwind(AssertUnwindSafe(|| at_max.propose(put("c"))));
    let reader = Session::register(&cluster.client()).expect("register a reader");
    let value = reader.propose(KvCommand::Get { key: "k".into() });
    cluster.shutdown();
    assert!(first.is_ok(), "the last number, u64::MAX - 1, is usable: {first:?}");
    let exhausted = Err(Error::SessionExhausted { client: session.id().0 });
    assert_eq!(second.expect("no panic (no overflow)"), exhausted);
    assert_eq!(none_left.expect("no panic"), exhausted);
    let value = value.expect("read");
    assert_eq!(value.as_deref(), Some("a"), "a refused command was proposed after all");
}

/// A `Storage` (here the public `MemStorage::from_state`, as a damaged or hand-made store
/// would) that loads a state no node writes. `DiskStorage` checks its own files, but the
/// driver trusted any store: a current term of `u64::MAX` wrapped to term 0 on the first
/// campaign (the node led and applied in term 0, its term going backwards), a term below the
/// log's last term or decreasing entry terms let the leader append entries of a lower term
/// after higher ones, and an offset at the end of the index space failed the core's invariant
/// I1 on the first step (reported as `NodePanicked`, blaming the user's code).
/// Now refused at start with `Error::Storage` saying what is inconsistent
/// (`core::check_persistent_state`, called by `Driver::new`).
#[test]
fn a_store_that_loads_an_impossible_state_is_refused_at_start() {
    use ferraft::{
        Configuration, Entry, HardState, KvCommand, LogIndex, MemStorage, Payload, PersistentState,
        Snapshot, SnapshotMeta,
    };
    let get = |t: u64| Entry {
        term: Term(t),
        payload: Payload::Command(KvCommand::Get { key: "k".into() }),
    };
    let base = || PersistentState::<KvCommand> {
        hard_state: HardState { term: Term(5), voted_for: None },
        base_config: Configuration::new([NodeId(1)]),
        log_offset: LogIndex(0),
        offset_term: Term(0),
        entries: Vec::new(),
        snapshot: None,
    };
    let hard = |term: u64| HardState { term: Term(term), voted_for: None };
    let snapshot = |index: u64, term: u64| {
        let meta = SnapshotMeta {
            index: LogIndex(index),
            term: Term(term),
            config: std::sync::Arc::new(Configuration::new([NodeId(1)])),
        };
        std::sync::Arc::new(Snapshot { meta, data: std::sync::Arc::from(Vec::new()) })
    };
    let cases: Vec<(&str, PersistentState<KvCommand>)> = vec![
        ("last of the term space", PersistentState { hard_state: hard(u64::MAX), ..base() }),
        (
            "snapshot's term t7 is above the current term t5",
            PersistentState { log_offset: LogIndex(4), offset_term: Term(7), ..base() },
        ),
        (
            "its snapshot ends at i3 (term t2) but its log starts after i0",
            PersistentState { snapshot: Some(snapshot(3, 2)), ..base() },
        ),
        (
            "above the current term t1",
            PersistentState { hard_state: hard(1), entries: vec![get(3)], ..base() },
        ),
        ("has term t2 after term t4", PersistentState { entries: vec![get(4), get(2)], ..base() }),
        (
            "past the last usable index",
            PersistentState {
                log_offset: LogIndex(u64::MAX - 1),
                offset_term: Term(1),
                entries: vec![get(2)],
                ..base()
            },
        ),
    ];
    let put = KvCommand::Put { key: "k".into(), value: "v".into() };
    for (says, state) in cases {
        let state: PersistentState<KvCommand> = state;
        let _serial = serial();
        let started = Cluster::builder(fast_config(0xad04), |_| KvStateMachine::new())
            .ids(&[NodeId(1)])
            .storage(move |_, _| Ok(MemStorage::from_state(state.clone())))
            .start();
        match started {
            Err(Error::Storage(text)) => assert!(text.contains(says), "{says}: {text}"),
            Err(e) => panic!("{says}: expected Error::Storage, got {e}"),
            Ok(cluster) => {
                let result = cluster.client().propose_timeout(put.clone(), LONG);
                cluster.shutdown();
                panic!("{says}: the node started; a proposal got {result:?}");
            }
        }
    }
    // Consistent states start and commit: a vote for a node not in the configuration is no
    // contradiction, nor a term past the margin peers are held to (a node's own campaigns
    // pass it, and it must restart after).
    let margin = u64::MAX / 2;
    let states = [
        (
            5,
            PersistentState {
                hard_state: HardState { term: Term(5), voted_for: Some(NodeId(77)) },
                entries: vec![get(2), get(5)],
                ..base()
            },
        ),
        (
            margin + 1,
            PersistentState {
                hard_state: HardState { term: Term(margin + 1), voted_for: Some(NodeId(1)) },
                entries: vec![get(2), get(margin + 1)],
                ..base()
            },
        ),
    ];
    for (term, state) in states {
        let _serial = serial();
        let cluster = Cluster::builder(fast_config(0xad05), |_| KvStateMachine::new())
            .ids(&[NodeId(1)])
            .storage(move |_, _| Ok(MemStorage::from_state(state.clone())))
            .start()
            .expect("a consistent state starts");
        let applied = cluster.client().propose_timeout(put.clone(), LONG).expect("commits");
        cluster.shutdown();
        assert!(applied.index > LogIndex(2) && applied.term > Term(term), "{applied:?}");
    }
}
