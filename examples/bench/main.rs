//! Benchmarks, one JSON line per run:
//!
//! ```text
//! cargo run --release --example bench -- latency    [--nodes N] [--ops N]
//! cargo run --release --example bench -- throughput [--nodes N] [--clients C] [--ops N]
//! cargo run --release --example bench -- memory     [--nodes N] [--clients C] [--ops N]
//! cargo run --release --example bench -- catchup    [--nodes N] [--ops N]
//! cargo run --release --example bench -- reconfig   [--clients C]
//! cargo run --release --example bench -- clients    --clients C [--nodes N] [--ops N]
//! cargo run --release --example bench -- async-clients --clients C [--ops N] [--workers W]
//! cargo run --release --example bench -- fsync      --data-dir DIR
//! cargo run --release --example bench -- restart    --data-dir DIR [--entries N]
//! ```
//!
//! `latency` and `throughput` take `--storage disk --data-dir DIR` (default: memory), and
//! `--sync background` for `Config::background_sync`; see `disk.rs`.
//! cargo run --release --example bench -- read --mode index|lease|follower|local --clients C [--nodes N] [--ops N]
//! cargo run --release --example bench -- mix --read-percent 90 --clients C [--nodes N] [--ops N]
//! cargo run --release --example bench -- transfer --trials 100 [--nodes N]
//! ```
//!
//! `read`, `mix`, `transfer`: see `read.rs`.
//!
//! cargo run --release --example bench -- soak --ops 10000000 --keys 1000 [--nodes N]
//! cargo run --release --example bench -- catchup-snapshot [--ops N]
//! cargo run --release --example bench -- restart-snapshot [--ops N]
//! cargo run --release --example bench -- compaction-cost [--ops N] [--keys K]
//! cargo run --release --example bench -- snapshot-gap [--mb M]
//! cargo run --release --example bench -- latency|throughput --transport tcp [--ops N]
//! cargo run --release --example bench -- rtt [--ops N]
//!
//! `--transport tcp` and `rtt`: see `tcp.rs` (three `kv_server` processes on loopback).
//!
//! `soak`: a key-value state machine of `--keys` keys under `--ops` writes (256 outstanding)
//! with the default snapshot policy; one line per 1M writes with resident memory, the leader's
//! snapshot index and log length, then a summary. `catchup-snapshot`: `--ops` writes (default
//! 1,000,000), then a node is added that can only catch up through a snapshot plus the tail.
//! `restart-snapshot`: `--ops` writes (default 1,000,000), a follower snapshots everything it
//! has applied and is killed, 10,000 more are written, and the time for the restarted follower to reach the leader's commit index
//! (restore its snapshot, then the tail) is printed.
//!
//! cargo run --release --example bench -- floor --mode answer|replicate --clients C [--ops N]
//! cargo run --release --example bench -- stalls [--threads T] [--ms M]
//!
//! `floor`: the same closed loop of C OS threads with no consensus work at all (see
//! `floor.rs`): what the machine allows the `clients` workload. `stalls`: how often and how
//! long the machine takes a running thread's CPU away (see `stalls.rs`). `latency --samples
//! FILE` writes each operation's latency in nanoseconds, one per line, in the order they ran.
//!
//! `clients`: C OS threads, each with a clone of one `Client` (`--share-client true`: all the
//! same clone); each proposes, waits for its answer, and proposes again (closed loop), until
//! `--ops` proposals (default 200,000) are done.
//! `clients`, `async-clients`, `latency`, `throughput`, `read` and `mix` take `--spin R` to set
//! `Config::spin_rounds` (how many times a waiting thread yields before it sleeps; default 64 on
//! two cores or more), `--help-peers false` and `--callers-help false` turn `Config::help_peers`
//! and `Config::callers_help` off, and `--tick-ms T` sets `Config::tick`; the closed-loop
//! workloads and `latency` report `cpu_us_per_op`.
//!
//! `catchup`: time for `add_node` when the new node must catch up `--ops` entries (default
//! 100,000). `reconfig`: writes per second with C proposals outstanding, first in steady state,
//! then during a 5 -> 3 -> 7 reconfiguration (remove two followers, add four nodes).
//!
//! In-memory storage, 8-byte commands, a trivial state machine (a running sum). `latency`: one
//! client proposes, waits until applied on the leader, repeats. `throughput`: C proposals
//! outstanding at all times; each completion starts the next. `memory`: resident memory growth
//! per committed entry per node after a throughput run.

mod async_clients;
mod compaction;
mod disk;
mod floor;
mod read;
mod stalls;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ferraft::{
    Client, Cluster, Config, KvCommand, KvStateMachine, LogIndex, NodeHandle, StateMachine,
};

mod tcp;

/// The trivial state machine: adds each command to a running sum.
pub(crate) struct Sum(u64);

impl StateMachine for Sum {
    type Command = u64;
    type Output = u64;

    fn apply(&mut self, _index: LogIndex, command: &u64) -> u64 {
        self.0 = self.0.wrapping_add(*command);
        self.0
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let bytes = snapshot.try_into().map_err(|_| format!("{} bytes, not 8", snapshot.len()))?;
        self.0 = u64::from_le_bytes(bytes);
        Ok(())
    }

    fn digest(&self) -> u64 {
        self.0
    }
}

pub(crate) struct Args {
    pub workload: String,
    pub nodes: usize,
    pub clients: usize,
    pub ops: usize,
    pub keys: usize,
    /// Flags with a text value (`--storage disk`, `--data-dir DIR`, `--mode lease`, ...), for the
    /// workloads that read them through [`Args::text`].
    text: Vec<(String, String)>,
}

impl Args {
    /// The value of a text flag, if given.
    pub fn text(&self, flag: &str) -> Option<&str> {
        self.text.iter().rev().find(|(f, _)| f == flag).map(|(_, v)| v.as_str())
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let workload = args
        .next()
        .ok_or("usage: bench <latency|throughput|memory> [--nodes N] [--clients C] [--ops N]")?;
    let mut parsed =
        Args { workload, nodes: 3, clients: 256, ops: 0, keys: 1000, text: Vec::new() };
    while let Some(flag) = args.next() {
        let text = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || text.parse::<usize>().map_err(|_| format!("{flag} needs a number"));
        match flag.as_str() {
            "--nodes" => parsed.nodes = number()?,
            "--clients" => parsed.clients = number()?.max(1),
            "--ops" => parsed.ops = number()?,
            "--keys" => parsed.keys = number()?.max(1),
            other if other.starts_with("--") => parsed.text.push((flag.clone(), text)),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    Ok(parsed)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match args.workload.as_str() {
        "soak" => return soak(&args),
        "catchup-snapshot" => return catchup_snapshot(&args),
        "restart-snapshot" => return restart_snapshot(&args),
        "compaction-cost" => return compaction::compaction_cost(&args),
        "snapshot-gap" => return compaction::snapshot_gap(&args),
        "fsync" => return disk::fsync(&args),
        "restart" => return disk::restart(&args),
        "rtt" => return tcp::rtt(&args),
        _ if args.text("--transport") == Some("tcp") => return tcp::run(&args),
        "floor" => return floor::floor(&args),
        "stalls" => return stalls::stalls(&args),
        "read" => return read::read(&args),
        "mix" => return read::mix(&args),
        "transfer" => return read::transfer(&args),
        _ => {}
    }
    let rss_before = rss_bytes();
    let mut config = Config { max_inflight: 64, ..Config::default() };
    if let Some(help) = args.text("--help-peers") {
        config.help_peers = help.parse().expect("--help-peers needs true or false");
    }
    if let Some(help) = args.text("--callers-help") {
        config.callers_help = help.parse().expect("--callers-help needs true or false");
    }
    if let Some(rounds) = args.text("--spin") {
        config.spin_rounds = rounds.parse().expect("--spin needs a number of yields");
    }
    config.background_sync = disk::background_sync(&args);
    config.defer_leader_sync = disk::defer_leader_sync(&args);
    if let Some(ms) = args.text("--tick-ms") {
        config.tick = Duration::from_millis(ms.parse().expect("--tick-ms needs milliseconds"));
    }
    let nodes = if args.workload == "reconfig" { 5 } else { args.nodes };
    let (cluster, _scratch) = if disk::on_disk(&args) {
        let (cluster, scratch) = disk::cluster(&args, config, nodes);
        (cluster, Some(scratch))
    } else {
        (Cluster::new(config, nodes, |_| Sum(0)).expect("valid config"), None)
    };
    let storage = disk::json_field(&args);
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).expect("a leader");
    let handle = cluster.node(leader).expect("leader running");
    warm_up(&handle);
    match args.workload.as_str() {
        "latency" => {
            let ops = if args.ops == 0 { 20_000 } else { args.ops };
            latency(&handle, args.nodes, ops, &storage, args.text("--samples"));
            cluster.shutdown();
        }
        "throughput" => {
            let ops = if args.ops == 0 { 1_000_000 } else { args.ops };
            let secs = throughput(&handle, args.clients, ops);
            cluster.shutdown();
            println!(
                "{{\"workload\":\"throughput\",\"nodes\":{},\"clients\":{},\"ops\":{ops},\"secs\":{secs:.3},\"ops_per_s\":{:.0}{storage}}}",
                args.nodes,
                args.clients,
                ops as f64 / secs
            );
        }
        "memory" => {
            memory(&cluster, &handle, &args, rss_before);
            cluster.shutdown();
        }
        "catchup" => catchup(cluster, &handle, if args.ops == 0 { 100_000 } else { args.ops }),
        "reconfig" => reconfig(cluster, handle, args.clients),
        "async-clients" => {
            async_clients::async_clients(&cluster, &args);
            cluster.shutdown();
        }
        "clients" => {
            let ops = if args.ops == 0 { 200_000 } else { args.ops };
            let share = args.text("--share-client").map(str::parse::<bool>);
            let share = share.unwrap_or(Ok(false)).expect("--share-client needs true or false");
            clients(&cluster, args.nodes, args.clients, ops, share);
            cluster.shutdown();
        }
        other => {
            eprintln!("unknown workload {other}");
            std::process::exit(2);
        }
    }
}

fn warm_up(handle: &NodeHandle<Sum>) {
    for _ in 0..1000 {
        handle.propose(1, Duration::from_secs(10)).expect("warm-up proposal");
    }
}

fn latency(
    handle: &NodeHandle<Sum>,
    nodes: usize,
    ops: usize,
    storage: &str,
    samples_file: Option<&str>,
) {
    let mut samples = Vec::with_capacity(ops);
    let cpu_before = cpu_secs();
    let start = Instant::now();
    for i in 0..ops {
        let t = Instant::now();
        handle.propose(i as u64, Duration::from_secs(10)).expect("proposal applied");
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_us_per_op = (cpu_secs() - cpu_before) * 1e6 / ops as f64;
    if let Some(file) = samples_file {
        let lines: String = samples.iter().map(|ns| format!("{ns}\n")).collect();
        std::fs::write(file, lines).expect("--samples: a writable file");
    }
    samples.sort_unstable();
    let pct =
        |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)] as f64 / 1e3;
    println!(
        "{{\"workload\":\"latency\",\"nodes\":{nodes},\"clients\":1,\"ops\":{ops},\"secs\":{secs:.3},\"ops_per_s\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"cpu_us_per_op\":{cpu_us_per_op:.2}{storage}}}",
        ops as f64 / secs,
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
}

/// C threads, each with a clone of one client (or, `share`, all the same clone); each waits
/// for its answer before proposing again.
fn clients(cluster: &Cluster<Sum>, nodes: usize, threads: usize, ops: usize, share: bool) {
    use std::sync::Arc;
    let client = Arc::new(cluster.client());
    let cpu_before = cpu_secs();
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let client = match share {
                true => Arc::clone(&client),
                false => Arc::new(Client::clone(&client)),
            };
            let mine = share_of(ops, threads, i);
            std::thread::spawn(move || {
                let mut samples = Vec::with_capacity(mine);
                // NB: one clock read per operation: the next one starts when this one ends.
                let mut t = Instant::now();
                for _ in 0..mine {
                    client.propose(8).expect("proposal applied");
                    let now = Instant::now();
                    samples.push((now - t).as_nanos() as u64);
                    t = now;
                }
                samples
            })
        })
        .collect();
    let samples = workers.into_iter().flat_map(|w| w.join().expect("client thread")).collect();
    let secs = start.elapsed().as_secs_f64();
    let head = format!("\"workload\":\"clients\",\"nodes\":{nodes},\"clients\":{threads}");
    report_closed_loop(&head, ops, samples, secs, cpu_before);
}

/// Client `i`'s share of `ops` among `clients`, fixed up front as in openraft's harness: a
/// counter every client takes its next operation from would be a shared cache line touched
/// once per operation, a cost of the harness, not of the library.
pub(crate) fn share_of(ops: usize, clients: usize, i: usize) -> usize {
    ops / clients + usize::from(i < ops % clients)
}

/// Prints a closed-loop workload's JSON line: `head` (its first fields), then the figures of
/// `samples` (one latency per operation, in ns) over `secs`, and the CPU time per operation
/// since `cpu_before`.
pub(crate) fn report_closed_loop(
    head: &str,
    ops: usize,
    mut samples: Vec<u64>,
    secs: f64,
    cpu_before: f64,
) {
    let cpu_us_per_op = (cpu_secs() - cpu_before) * 1e6 / samples.len() as f64;
    samples.sort_unstable();
    let pct =
        |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)] as f64 / 1e3;
    println!(
        "{{{head},\"ops\":{ops},\"secs\":{secs:.3},\"ops_per_s\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"cpu_us_per_op\":{cpu_us_per_op:.2}}}",
        samples.len() as f64 / secs,
        pct(0.50),
        pct(0.99)
    );
}

/// Keeps `clients` proposals outstanding; entries apply in log order, so the oldest receipt
/// is always the next to complete.
fn throughput(handle: &NodeHandle<Sum>, clients: usize, ops: usize) -> f64 {
    let mut inflight = VecDeque::with_capacity(clients);
    let start = Instant::now();
    let mut sent = 0;
    while sent < ops.min(clients) {
        inflight.push_back(handle.propose_async(8).expect("leader running"));
        sent += 1;
    }
    while let Some(mut receipt) = inflight.pop_front() {
        receipt.wait(Duration::from_secs(30)).expect("proposal applied");
        if sent < ops {
            inflight.push_back(handle.propose_async(8).expect("leader running"));
            sent += 1;
        }
    }
    start.elapsed().as_secs_f64()
}

fn memory(cluster: &Cluster<Sum>, handle: &NodeHandle<Sum>, args: &Args, rss_before: u64) {
    let ops = if args.ops == 0 { 1_000_000 } else { args.ops };
    let rss_start = rss_bytes();
    let secs = throughput(handle, args.clients, ops);
    wait_all_applied(cluster, ops as u64);
    let rss_after = rss_bytes();
    let per_entry_per_node =
        (rss_after.saturating_sub(rss_start)) as f64 / (ops * args.nodes) as f64;
    println!(
        "{{\"workload\":\"memory\",\"nodes\":{},\"ops\":{ops},\"secs\":{secs:.3},\"rss_before_mb\":{:.1},\"rss_after_mb\":{:.1},\"bytes_per_entry_per_node\":{per_entry_per_node:.1},\"command_bytes\":8,\"overhead_bytes\":{:.1}}}",
        args.nodes,
        rss_before as f64 / 1e6,
        rss_after as f64 / 1e6,
        per_entry_per_node - 8.0
    );
}

fn wait_all_applied(cluster: &Cluster<Sum>, ops: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if cluster.statuses().iter().all(|s| s.core.last_applied.0 >= ops) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time (user + system) this process has used, from `/proc/self/stat` (10 ms resolution).
pub(crate) fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // NB: fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // utime, stime: fields 14 and 15, in USER_HZ (100)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    kb * 1024
}

fn catchup(cluster: Cluster<Sum>, handle: &NodeHandle<Sum>, entries: usize) {
    throughput(handle, 256, entries);
    let start = Instant::now();
    let id = cluster.add_node().expect("new node catches up and is promoted");
    let secs = start.elapsed().as_secs_f64();
    let status = cluster.status(id).expect("new node running").core;
    assert!(status.is_voter(), "{id} promoted");
    let log = status.last_log_index.0;
    println!(
        "{{\"workload\":\"catchup\",\"entries\":{entries},\"node\":\"{id}\",\"new_node_log\":{log},\"secs\":{secs:.3}}}"
    );
    cluster.shutdown();
}

/// Counts completions in a background pipeline while the main thread reconfigures.
fn reconfig(cluster: Cluster<Sum>, handle: NodeHandle<Sum>, clients: usize) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut inflight = VecDeque::new();
            while !stop.load(Ordering::Relaxed) {
                while inflight.len() < clients {
                    inflight.push_back(handle.propose_async(8).expect("leader running"));
                }
                let mut receipt: ferraft::Receipt<u64> = inflight.pop_front().expect("non-empty");
                receipt.wait(Duration::from_secs(30)).expect("applied");
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let steady_start = (Instant::now(), done.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs(1));
    let steady = rate(steady_start, done.load(Ordering::Relaxed));
    let change_start = (Instant::now(), done.load(Ordering::Relaxed));
    let leader = cluster.leader().expect("a leader");
    let followers: Vec<_> = cluster.ids().into_iter().filter(|&id| id != leader).take(2).collect();
    for id in followers {
        cluster.remove_node(id).expect("remove a follower");
    }
    for _ in 0..4 {
        cluster.add_node().expect("add a node");
    }
    let during = rate(change_start, done.load(Ordering::Relaxed));
    let secs = change_start.0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    println!(
        "{{\"workload\":\"reconfig\",\"clients\":{clients},\"steady_ops_per_s\":{steady:.0},\"during_ops_per_s\":{during:.0},\"reconfig_secs\":{secs:.3}}}"
    );
    cluster.shutdown();
}

fn rate((start, before): (Instant, u64), after: u64) -> f64 {
    (after - before) as f64 / start.elapsed().as_secs_f64()
}

/// Writes `ops` puts over `keys` keys through the leader, 256 outstanding; calls `every` after
/// each million.
pub(crate) fn kv_writes(
    cluster: &Cluster<KvStateMachine>,
    ops: usize,
    keys: usize,
    mut every: impl FnMut(usize),
) -> f64 {
    let client = cluster.client();
    cluster.wait_for_leader(Duration::from_secs(10)).expect("a leader");
    let mut inflight = VecDeque::with_capacity(256);
    let start = Instant::now();
    for i in 0..ops {
        let command =
            KvCommand::Put { key: format!("k{}", i % keys).into(), value: i.to_string().into() };
        inflight.push_back(client.propose_async(command));
        if inflight.len() >= 256 {
            inflight
                .pop_front()
                .expect("non-empty")
                .wait(Duration::from_secs(30))
                .expect("applied");
        }
        if (i + 1) % 1_000_000 == 0 {
            every(i + 1);
        }
    }
    for mut receipt in inflight {
        receipt.wait(Duration::from_secs(30)).expect("applied");
    }
    start.elapsed().as_secs_f64()
}

fn soak(args: &Args) {
    let ops = if args.ops == 0 { 10_000_000 } else { args.ops };
    let cluster = Cluster::new(Config::default(), args.nodes, |_| KvStateMachine::new())
        .expect("valid config");
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).expect("a leader");
    let mut samples = Vec::new();
    let secs = kv_writes(&cluster, ops, args.keys, |done| {
        let rss = rss_bytes() as f64 / 1e6;
        let status = cluster.status(leader).expect("leader status").core;
        samples.push(rss);
        println!(
            "{{\"workload\":\"soak\",\"ops_done\":{done},\"rss_mb\":{rss:.1},\"snapshot_index\":{},\"log_len\":{}}}",
            status.snapshot_index.0, status.log_entries
        );
    });
    let first = samples.first().copied().unwrap_or(0.0);
    let last = samples.last().copied().unwrap_or(0.0);
    println!(
        "{{\"workload\":\"soak\",\"ops\":{ops},\"rss_first_mb\":{first:.1},\"rss_last_mb\":{last:.1},\"ops_per_s\":{:.0}}}",
        ops as f64 / secs
    );
    cluster.shutdown();
}

fn catchup_snapshot(args: &Args) {
    let entries = if args.ops == 0 { 1_000_000 } else { args.ops };
    let cluster = Cluster::new(Config::default(), args.nodes, |_| KvStateMachine::new())
        .expect("valid config");
    kv_writes(&cluster, entries, args.keys, |_| {});
    let start = Instant::now();
    let id = cluster.add_node().expect("the new node catches up and is promoted");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let status = cluster.status(id).expect("running");
    assert!(status.rpcs.install_snapshots > 0, "caught up through a snapshot");
    println!("{{\"workload\":\"catchup-snapshot\",\"entries\":{entries},\"catchup_ms\":{ms:.0}}}");
    cluster.shutdown();
}

fn restart_snapshot(args: &Args) {
    let entries = if args.ops == 0 { 1_000_000 } else { args.ops };
    let cluster = Cluster::new(Config::default(), args.nodes, |_| KvStateMachine::new())
        .expect("valid config");
    kv_writes(&cluster, entries, args.keys, |_| {});
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).expect("a leader");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    // Its snapshot covers everything so far, so the restart restores it plus exactly the tail.
    cluster.node(follower).expect("running").compact(Duration::from_secs(30)).expect("compacted");
    cluster.kill(follower).expect("kill");
    kv_writes(&cluster, 10_000, args.keys, |_| {});
    let target = cluster.status(leader).expect("leader").core.commit_index;
    let start = Instant::now();
    cluster.restart(follower).expect("restart");
    let restored = cluster.status(follower).expect("restarted").core.last_applied;
    while cluster.status(follower).expect("running").core.last_applied < target {
        std::thread::sleep(Duration::from_micros(200));
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "{{\"workload\":\"restart-snapshot\",\"entries\":{entries},\"tail\":10000,\"restored_index\":{},\"catchup_ms\":{ms:.0}}}",
        restored.0
    );
    cluster.shutdown();
}
