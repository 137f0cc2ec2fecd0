//! What a kill leaves behind: it returns within about one `apply` whatever the node was doing
//! (a failed node with a long apply backlog included), every receipt the node held is answered
//! by the time it returns, and a handle kept past it holds no state machine and answers
//! `NodeDown` at once.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use crossbeam_channel::{unbounded, Receiver, Sender};
use ferraft::storage::SyncJob;
use ferraft::{
    Cluster, Config, Configuration, Entry, Error, HardState, LogIndex, MemStorage, NodeId,
    PersistentState, ReadStateMachine, Receipt, Snapshot, StateMachine, Storage,
};

/// Sums its commands, sleeping a command's worth of microseconds to apply it; sets its flag
/// when dropped.
struct Sleepy {
    sum: u64,
    dropped: Arc<AtomicBool>,
}

impl StateMachine for Sleepy {
    type Command = u64;
    type Output = u64;

    fn apply(&mut self, _index: LogIndex, micros: &u64) -> u64 {
        if *micros > 0 {
            std::thread::sleep(Duration::from_micros(*micros));
        }
        self.sum += micros;
        self.sum
    }

    summing_image!();
}

impl ReadStateMachine for Sleepy {
    type Query = ();
    type Answer = u64;

    fn query(&self, _: &()) -> u64 {
        self.sum
    }
}

impl Drop for Sleepy {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// Each node's `Sleepy::dropped` flag.
#[derive(Clone, Default)]
struct DropFlags(Arc<Mutex<BTreeMap<NodeId, Arc<AtomicBool>>>>);

impl DropFlags {
    fn factory(&self) -> impl Fn(NodeId) -> Sleepy + Send + Sync + 'static {
        let flags = self.clone();
        move |id| {
            let dropped = Arc::new(AtomicBool::new(false));
            flags.0.lock().unwrap().insert(id, Arc::clone(&dropped));
            Sleepy { sum: 0, dropped }
        }
    }

    fn dropped(&self, id: NodeId) -> bool {
        self.0.lock().unwrap()[&id].load(Ordering::SeqCst)
    }
}

/// What the test does to a [`GatedSyncs`] store's background syncs.
struct SyncSwitches {
    /// Each sync waits at the gate until the test lets one through.
    gated: AtomicBool,
    /// Starting a sync fails, as an fsync that cannot even begin.
    failing: AtomicBool,
    /// A sync reached the gate.
    started: (Sender<()>, Receiver<()>),
    /// One token lets one sync through.
    gate: (Sender<()>, Receiver<()>),
}

impl SyncSwitches {
    fn new() -> Arc<Self> {
        let (gated, failing) = (AtomicBool::new(false), AtomicBool::new(false));
        Arc::new(SyncSwitches { gated, failing, started: unbounded(), gate: unbounded() })
    }

    /// Waits for a sync to reach the gate.
    fn await_sync(&self) {
        self.started.1.recv_timeout(LONG).expect("a sync reached the gate");
    }

    /// Lets one sync through.
    fn open(&self) {
        self.gate.0.send(()).expect("the gate's receiver lives in the switches");
    }
}

/// Memory storage whose background syncs the test holds at a gate or fails to start.
struct GatedSyncs {
    inner: MemStorage<u64>,
    switches: Arc<SyncSwitches>,
}

impl Storage<u64> for GatedSyncs {
    fn load(&self) -> io::Result<PersistentState<u64>> {
        self.inner.load()
    }
    fn save_hard_state(&mut self, hs: HardState) -> io::Result<()> {
        self.inner.save_hard_state(hs)
    }
    fn append(&mut self, first: LogIndex, entries: &[Entry<u64>]) -> io::Result<()> {
        self.inner.append(first, entries)
    }
    fn save_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> io::Result<()> {
        self.inner.save_snapshot(snapshot)
    }
    fn start_sync(&mut self) -> io::Result<Option<SyncJob>> {
        if self.switches.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("fdatasync: input/output error"));
        }
        if !self.switches.gated.load(Ordering::SeqCst) {
            return Ok(None); // memory: durable already
        }
        let switches = Arc::clone(&self.switches);
        Ok(Some(Box::new(move || {
            let _ = switches.started.0.send(());
            // NB: bounded, so a failing test cannot leave the syncer (and the drop) hanging.
            let _ = switches.gate.1.recv_timeout(LONG);
            Ok(())
        })))
    }
}

/// How many entries the failed node has left to apply, and how long each takes.
const BACKLOG: u64 = 1000;
const APPLY_MICROS: u64 = 10_000;

/// Audit three: a node whose storage failed with many committed entries queued for its
/// state machine drained all of them while holding the node's loop, and so a kill waited for
/// the whole backlog (here 10 s). Now the backlog is drained off the loop, the loop serves the
/// failure, and a kill stops the drain after the entry it is applying. Every receipt is
/// answered by the time the kill returns: applied, or `NodeDown` (outcome unknown).
///
/// The schedule is made exact with gated background syncs: the sync that commits the backlog
/// completes in the same step as the next sync fails to start, so the failing step itself
/// queues the backlog, with no worker draining it yet.
#[test]
fn a_kill_after_a_storage_failure_returns_without_waiting_for_the_apply_backlog() {
    let _serial = serial();
    init_tracing();
    let switches = SyncSwitches::new();
    let config = Config { background_sync: true, callers_help: false, ..fast_config(81) };
    let opened = Arc::clone(&switches);
    let cluster = Cluster::builder(config, DropFlags::default().factory())
        .nodes(1)
        .storage(move |_, bootstrap: &Configuration| {
            let inner = MemStorage::new(bootstrap.clone());
            Ok(GatedSyncs { inner, switches: Arc::clone(&opened) })
        })
        .start()
        .expect("start");
    let id = cluster.wait_for_leader(LONG).expect("a leader");
    let node = cluster.node(id).expect("running");
    node.propose(0, LONG).expect("applied");

    // A sync under way; the backlog is appended behind it, to be committed by the next one.
    switches.gated.store(true, Ordering::SeqCst);
    let mut first = node.propose_async(0).expect("sent");
    switches.await_sync();
    let mut backlog: Vec<Receipt<u64>> =
        (0..BACKLOG).map(|_| node.propose_async(APPLY_MICROS).expect("sent")).collect();
    backlog.last_mut().expect("a backlog").position(LONG).expect("appended");
    switches.open();
    switches.await_sync(); // the sync of the backlog, at the gate
    first.wait(LONG).expect("applied");

    // One more entry, so the loop starts another sync as the backlog's completes: it fails.
    switches.failing.store(true, Ordering::SeqCst);
    let mut last = node.propose_async(0).expect("sent");
    last.position(LONG).expect("appended");
    switches.open();
    let failure = wait_until(LONG, "the node to fail", || {
        cluster.failure(id).ok_or_else(|| "still running".to_string())
    });
    assert!(matches!(failure, Error::Storage(_)), "{failure:?}");

    let asked = Instant::now();
    cluster.kill(id).expect("kill");
    let took = asked.elapsed();
    let drain = Duration::from_micros(BACKLOG * APPLY_MICROS);
    assert!(took < drain / 5, "the kill took {took:?}: the backlog drains in {drain:?}");
    let (mut applied, mut down) = (0, 0);
    for receipt in backlog.iter().chain([&last]) {
        match receipt.try_result() {
            Some(Ok(_)) => applied += 1,
            Some(Err(Error::NodeDown(at))) if at == id => down += 1,
            other => panic!("a receipt answered {other:?} once the kill returned"),
        }
    }
    assert!(down > 1, "the kill cut the backlog short: {applied} applied, {down} down");
}

/// Audit three: with lease reads on, a `NodeHandle` kept past a kill kept the node's state
/// machine alive (the handle reads it on the caller's thread), and with it the receipts
/// waiting in its applier, which then timed out instead of hearing `NodeDown`. Now a kill
/// retires the applier: the state machine is dropped, waiting receipts hear `NodeDown` by the
/// time the kill returns, and reads on the kept handle fail with `NodeDown` at once.
#[test]
fn a_handle_kept_past_a_kill_holds_no_state_machine_and_answers_node_down() {
    let _serial = serial();
    init_tracing();
    let flags = DropFlags::default();
    let config = Config { lease_reads: true, ..fast_config(82) };
    let cluster = Cluster::new(config, 3, flags.factory()).expect("start");
    let leader = wait_for_agreement(&cluster, LONG).leader;
    let node = cluster.node(leader).expect("running");
    node.propose(5, LONG).expect("applied");
    assert_eq!(node.read((), LONG), Ok(5), "a read while the node runs");

    // A proposal that cannot commit, waiting in the leader's applier for its entry.
    cluster.isolate(leader).expect("isolate");
    let mut waiting = node.propose_async(7).expect("sent");
    waiting.position(LONG).expect("appended");
    node.status(LONG).expect("status"); // NB: its task runs after the one that parks the receipt
    assert_eq!(waiting.try_result(), None, "cut off, it cannot commit");

    cluster.kill(leader).expect("kill");
    assert_eq!(waiting.try_result(), Some(Err(Error::NodeDown(leader))), "answered by the kill");
    let asked = Instant::now();
    assert_eq!(node.read((), LONG), Err(Error::NodeDown(leader)), "a read on the kept handle");
    let many = node.read_many(vec![(), ()], LONG);
    assert_eq!(many, Err(Error::NodeDown(leader)), "reads on the kept handle");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "NodeDown took {took:?}");
    assert!(flags.dropped(leader), "the killed node's state machine is still alive");
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        assert!(!flags.dropped(id), "{id} runs: its state machine lives");
    }
}

/// Proposals racing a kill through a `NodeHandle` kept past it: each is answered (applied,
/// or `NodeDown` when the node never took it), none waits out its deadline. A
/// request still in the node's queue when it stopped used to wait as long as the kept handle
/// lived, since a channel drops what it holds only with its last sender; the node now closes
/// its queue when it stops (`runtime/queue.rs`).
#[test]
fn proposals_racing_a_kill_are_all_answered_though_a_handle_is_kept() {
    let _serial = serial();
    init_tracing();
    let flags = DropFlags::default();
    let cluster = Cluster::new(fast_config(83), 3, flags.factory()).expect("start");
    let leader = wait_for_agreement(&cluster, LONG).leader;
    let node = cluster.node(leader).expect("running");
    node.propose(0, LONG).expect("applied");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let proposer = {
        let (node, stop, sent) = (node.clone(), Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || {
            let mut receipts = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match node.propose_async(0) {
                    Ok(receipt) => receipts.push(receipt),
                    Err(e) => assert_eq!(e, Error::NodeDown(leader)),
                }
                sent.fetch_add(1, Ordering::SeqCst);
                if receipts.len() % 64 == 63 {
                    std::thread::yield_now(); // (let the kill in)
                }
            }
            receipts
        })
    };
    let start = Instant::now();
    while sent.load(Ordering::SeqCst) < 2_000 {
        assert!(start.elapsed() < LONG, "the proposer is stuck");
        std::thread::yield_now();
    }
    cluster.kill(leader).expect("kill"); // while the proposer sends
    stop.store(true, Ordering::SeqCst);
    let receipts = proposer.join().expect("proposer");
    let deadline = Instant::now() + LONG;
    let mut down = 0;
    for mut receipt in receipts {
        let left = deadline.saturating_duration_since(Instant::now());
        match receipt.wait(left) {
            Ok(_) => {}
            Err(Error::NodeDown(at)) if at == leader => down += 1,
            other => panic!("a proposal racing the kill answered {other:?}"),
        }
    }
    assert!(down > 0, "no proposal met the kill");
    drop(node);
}
