//! Read workloads (issue 9), one JSON line per run:
//!
//! ```text
//! cargo run --release --example bench -- read --mode index|lease|follower|local --clients C [--nodes N] [--ops N] [--batch B]
//! cargo run --release --example bench -- mix --read-percent 90 --clients C [--nodes N] [--ops N]
//! cargo run --release --example bench -- transfer --trials 100 [--nodes N]
//! ```
//!
//! `read`: C linearizable reads outstanding at all times on a key-value store holding one key,
//! from one thread (each completion starts the next): at the leader by ReadIndex (`index`), at
//! the leader with leases on (`lease`), or at a follower (`follower`). Latency is from sending
//! a read to taking its answer. With `--batch B` (default 1) the C outstanding reads travel as
//! C/B requests of B queries each (`NodeHandle::read_many_async`: one receipt, one queue trip
//! per batch); latency is then per batch, and the JSON line gains `"batch":B`. `--mode local`
//! is the yardstick for "close to a local function call": the same query (`"k".into()`, then
//! `ReadStateMachine::query`) on a plain `KvStateMachine` on this thread, no cluster, timed
//! per call with the same one clock read per operation. `mix`: the same pipeline with `--read-percent` ReadIndex reads
//! and the rest writes (`Put`) at the leader. `transfer`: `--trials` leadership transfers, each
//! to the next node, timed until the target leads.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ferraft::{
    Cluster, Config, KvCommand, KvStateMachine, NodeHandle, NodeId, ReadStateMachine, Receipt,
    StateMachine,
};

use super::Args;

const WAIT: Duration = Duration::from_secs(30);

fn kv_cluster(args: &Args, lease: bool) -> Cluster<KvStateMachine> {
    let mut config = Config { max_inflight: 64, lease_reads: lease, ..Config::default() };
    if let Some(rounds) = args.text("--spin") {
        config.spin_rounds = rounds.parse().expect("--spin needs a number of yields");
    }
    let nodes = args.nodes;
    let cluster = Cluster::new(config, nodes, |_| KvStateMachine::new()).expect("valid config");
    cluster.wait_for_leader(WAIT).expect("a leader");
    for i in 0..1000 {
        let put = KvCommand::Put { key: "k".into(), value: format!("v{i}").into() };
        cluster.propose(put).expect("warm-up write");
    }
    cluster
}

/// Runs `ops` operations with `clients` outstanding; `next(i)` sends the i-th. Returns the
/// elapsed seconds and the latencies in nanoseconds.
fn pipeline<O: Clone>(
    clients: usize,
    ops: usize,
    mut next: impl FnMut(usize) -> Receipt<O>,
) -> (f64, Vec<u64>) {
    let mut inflight = VecDeque::with_capacity(clients);
    let mut samples = Vec::with_capacity(ops);
    let start = Instant::now();
    let mut sent = 0;
    while sent < ops.min(clients) {
        inflight.push_back((Instant::now(), next(sent)));
        sent += 1;
    }
    while let Some((at, mut receipt)) = inflight.pop_front() {
        receipt.wait(WAIT).expect("answered");
        let now = Instant::now(); // one clock read: this answer's time, the next one's start
        samples.push((now - at).as_nanos() as u64);
        if sent < ops {
            inflight.push_back((now, next(sent)));
            sent += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64(); // NB: before sorting the samples
    samples.sort_unstable();
    (secs, samples)
}

fn percentile(samples: &[u64], p: f64) -> u64 {
    samples[((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1))]
}

fn print_line(workload: &str, extra: &str, args: &Args, ops: usize, secs: f64, samples: &[u64]) {
    println!(
        "{{\"workload\":\"{workload}\",{extra}\"nodes\":{},\"clients\":{},\"ops\":{ops},\"secs\":{secs:.3},\"ops_per_s\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
        args.nodes,
        args.clients,
        ops as f64 / secs,
        percentile(samples, 0.50) as f64 / 1e3,
        percentile(samples, 0.99) as f64 / 1e3
    );
}

fn leader_and_follower(cluster: &Cluster<KvStateMachine>) -> (NodeHandle<KvStateMachine>, NodeId) {
    let leader = cluster.wait_for_leader(WAIT).expect("a leader");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap_or(leader);
    (cluster.node(leader).expect("leader running"), follower)
}

/// `read --mode index|lease|follower`.
pub fn read(args: &Args) {
    let mode = args.text("--mode").unwrap_or("index");
    if !matches!(mode, "index" | "lease" | "follower" | "local") {
        eprintln!("--mode must be index, lease, follower or local, not {mode}");
        std::process::exit(2);
    }
    let ops = if args.ops == 0 { 200_000 } else { args.ops };
    if mode == "local" {
        let (secs, samples) = local_calls(ops);
        return print_line("read", "\"mode\":\"local\",", args, ops, secs, &samples);
    }
    let cluster = kv_cluster(args, mode == "lease");
    let (leader, follower) = leader_and_follower(&cluster);
    let target = if mode == "follower" { cluster.node(follower).expect("running") } else { leader };
    let batch: usize = args.text("--batch").and_then(|b| b.parse().ok()).unwrap_or(1).max(1);
    let (secs, samples) = if batch == 1 {
        pipeline(args.clients, ops, |_| target.read_async("k".into()).expect("node running"))
    } else {
        let queries = || vec!["k".to_string(); batch];
        let send = |_| target.read_many_async(queries()).expect("node running");
        pipeline((args.clients / batch).max(1), ops / batch, send)
    };
    let ops = if batch == 1 { ops } else { ops / batch * batch };
    let served = cluster.status(target.id()).expect("status").metrics;
    cluster.shutdown();
    eprintln!("served by path: {served:?}");
    let batch_field = if batch > 1 { format!("\"batch\":{batch},") } else { String::new() };
    let extra = format!("\"mode\":\"{mode}\",{batch_field}");
    print_line("read", &extra, args, ops, secs, &samples);
}

/// `read --mode local`: the query as a plain function call on a local state machine holding
/// the same key, one clock read per call as in [`pipeline`].
fn local_calls(ops: usize) -> (f64, Vec<u64>) {
    let mut sm = KvStateMachine::new();
    let put = KvCommand::Put { key: "k".into(), value: "v999".into() };
    sm.apply(ferraft::LogIndex(1), &put);
    let mut samples = Vec::with_capacity(ops);
    let start = Instant::now();
    let mut at = Instant::now();
    for _ in 0..ops {
        let answer = sm.query(&"k".into());
        std::hint::black_box(answer);
        let now = Instant::now();
        samples.push((now - at).as_nanos() as u64);
        at = now;
    }
    let secs = start.elapsed().as_secs_f64(); // NB: before sorting the samples
    samples.sort_unstable();
    (secs, samples)
}

/// `mix --read-percent P`.
pub fn mix(args: &Args) {
    let percent: usize = args.text("--read-percent").map_or(90, |p| {
        p.parse().unwrap_or_else(|_| {
            eprintln!("--read-percent needs a number from 0 to 100");
            std::process::exit(2)
        })
    });
    let ops = if args.ops == 0 { 200_000 } else { args.ops };
    let cluster = kv_cluster(args, false);
    let (leader, _) = leader_and_follower(&cluster);
    let (secs, samples) = pipeline(args.clients, ops, |i| {
        if i % 100 < percent.min(100) {
            leader.read_async("k".into()).expect("leader running")
        } else {
            let put = KvCommand::Put { key: "k".into(), value: format!("w{i}").into() };
            leader.propose_async(put).expect("leader running")
        }
    });
    cluster.shutdown();
    print_line("mix", &format!("\"read_percent\":{percent},"), args, ops, secs, &samples);
}

/// `transfer --trials T`.
pub fn transfer(args: &Args) {
    let trials: usize = args.text("--trials").and_then(|t| t.parse().ok()).unwrap_or(100);
    let cluster = kv_cluster(args, false);
    let mut samples = Vec::with_capacity(trials);
    for _ in 0..trials {
        let leader = cluster.wait_for_leader(WAIT).expect("a leader");
        let ids = cluster.ids();
        let pos = ids.iter().position(|&id| id == leader).expect("a member");
        let to = ids[(pos + 1) % ids.len()];
        let start = Instant::now();
        cluster.transfer_leadership(to).expect("transferred");
        samples.push(start.elapsed().as_nanos() as u64);
    }
    cluster.shutdown();
    samples.sort_unstable();
    let ms = |p| percentile(&samples, p) as f64 / 1e6;
    println!(
        "{{\"workload\":\"transfer\",\"trials\":{trials},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
        ms(0.50),
        ms(0.99)
    );
}
