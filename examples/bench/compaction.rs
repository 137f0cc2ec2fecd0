//! What log compaction costs:
//!
//! ```text
//! cargo run --release --example bench -- compaction-cost [--ops N] [--keys K]
//! cargo run --release --example bench -- snapshot-gap [--mb M]
//! ```
//!
//! `compaction-cost`: key-value writes (256 outstanding, 3 nodes) with a snapshot every 100,000
//! entries, then the same with snapshots off, in one process, alternating (snapshots, none,
//! snapshots, none) so both see the same machine; prints the better run of each and the loss.
//!
//! `snapshot-gap`: a leader whose state machine holds `--mb` MB (default 100) is asked to
//! snapshot; a transport that timestamps every AppendEntries the leader sends reports the longest
//! gap a follower saw while the snapshot was taken, and whether the term changed (an election).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ferraft::message::Body;
use ferraft::transport::Inbox;
use ferraft::{
    Cluster, Config, KvStateMachine, LogIndex, Message, NodeId, StateMachine, Transport,
};

use super::{kv_writes, Args};

pub fn compaction_cost(args: &Args) {
    let ops = if args.ops == 0 { 1_000_000 } else { args.ops };
    let run = |snapshot_entries: u64| {
        let config = Config { snapshot_entries, ..Config::default() };
        let cluster =
            Cluster::new(config, args.nodes, |_| KvStateMachine::new()).expect("valid config");
        let secs = kv_writes(&cluster, ops, args.keys, |_| {});
        let leader = cluster.leader().expect("a leader");
        let snapshot = cluster.status(leader).expect("leader").core.snapshot_index;
        assert_eq!(snapshot_entries == 0, snapshot == LogIndex(0), "the policy was followed");
        cluster.shutdown();
        ops as f64 / secs
    };
    let (mut with, mut without) = (0f64, 0f64);
    for _ in 0..2 {
        with = with.max(run(100_000));
        without = without.max(run(0));
    }
    let loss = (1.0 - with / without) * 100.0;
    println!(
        "{{\"workload\":\"compaction-cost\",\"ops\":{ops},\"keys\":{},\"ops_per_s_snapshots\":{with:.0},\"ops_per_s_none\":{without:.0},\"loss_percent\":{loss:.1}}}",
        args.keys
    );
}

/// A state machine of `len` bytes; command `i` sets byte `i % len`.
struct Blob(Vec<u8>);

impl StateMachine for Blob {
    type Command = u64;
    type Output = ();

    fn apply(&mut self, _: LogIndex, command: &u64) {
        let len = self.0.len() as u64;
        self.0[(command % len) as usize] = *command as u8;
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.clone()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0 = snapshot.to_vec();
        Ok(())
    }
}

/// The longest silence between two AppendEntries on each leader -> follower link.
#[derive(Default)]
struct Gaps {
    last: HashMap<(NodeId, NodeId), Instant>,
    longest: Duration,
    recording: bool,
}

/// Delivers straight into the peer's inbox, timestamping AppendEntries.
struct Mesh {
    inboxes: Arc<RwLock<HashMap<NodeId, Inbox<u64>>>>,
    gaps: Arc<Mutex<Gaps>>,
}

impl Transport<u64> for Mesh {
    fn send(&mut self, msg: Message<u64>) {
        if matches!(msg.body, Body::AppendEntries(_)) {
            let now = Instant::now();
            let mut gaps = self.gaps.lock().unwrap();
            if let Some(before) = gaps.last.insert((msg.from, msg.to), now) {
                if gaps.recording {
                    gaps.longest = gaps.longest.max(now - before);
                }
            }
        }
        if let Some(inbox) = self.inboxes.read().unwrap().get(&msg.to) {
            let _ = inbox.try_send(msg); // full: dropped, as the router does
        }
    }
}

pub fn snapshot_gap(args: &Args) {
    let mb: usize = args.text("--mb").map_or(100, |v| v.parse().expect("--mb needs a number"));
    let inboxes = Arc::new(RwLock::new(HashMap::new()));
    let gaps = Arc::new(Mutex::new(Gaps::default()));
    let config = Config { snapshot_entries: 0, ..Config::default() };
    let min_election = config.election_timeout.start;
    let (i, g) = (Arc::clone(&inboxes), Arc::clone(&gaps));
    let cluster = Cluster::builder(config, move |_| Blob(vec![0; mb << 20]))
        .nodes(args.nodes)
        .transport(move |id, inbox| {
            i.write().unwrap().insert(id, inbox);
            Mesh { inboxes: Arc::clone(&i), gaps: Arc::clone(&g) }
        })
        .start()
        .expect("valid config");
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).expect("a leader");
    let handle = cluster.node(leader).expect("running");
    for i in 0..10_000u64 {
        handle.propose(i.wrapping_mul(7919), Duration::from_secs(10)).expect("applied");
    }
    let term = cluster.status(leader).expect("leader").core.term;
    gaps.lock().unwrap().recording = true;
    let start = Instant::now();
    let done = handle.compact(Duration::from_secs(60)).expect("snapshot taken");
    let snapshot_ms = start.elapsed().as_secs_f64() * 1e3;
    // A little past the snapshot, so a gap it caused ends inside the window.
    let until = Instant::now() + min_election;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    gaps.lock().unwrap().recording = false;
    let longest = gaps.lock().unwrap().longest.as_secs_f64() * 1e3;
    let term_after = cluster.status(leader).expect("leader").core.term;
    let bytes = match done {
        ferraft::Compaction::Snapshot { bytes, .. } => bytes,
        other => panic!("expected a snapshot, got {other:?}"),
    };
    println!(
        "{{\"workload\":\"snapshot-gap\",\"state_mb\":{mb},\"snapshot_bytes\":{bytes},\"snapshot_ms\":{snapshot_ms:.1},\"max_heartbeat_gap_ms\":{longest:.1},\"min_election_timeout_ms\":{},\"election\":{}}}",
        min_election.as_millis(),
        term_after != term
    );
    cluster.shutdown();
}
