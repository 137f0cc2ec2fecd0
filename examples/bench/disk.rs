//! Disk workloads and the disk option of `latency` / `throughput`:
//!
//! ```text
//! cargo run --release --example bench -- latency    --storage disk --data-dir DIR [--nodes N] [--ops N]
//! cargo run --release --example bench -- throughput --storage disk --data-dir DIR [--clients C] [--ops N]
//!     (both also take --sync inline|background and --leader-sync parallel|deferred)
//! cargo run --release --example bench -- fsync   --data-dir DIR [--ops N]
//! cargo run --release --example bench -- restart --data-dir DIR [--entries N] [--tail T]
//! ```
//!
//! With `--storage disk` the cluster keeps its logs in a fresh subdirectory of DIR (sync policy
//! always; removed afterwards) and the JSON line says `"storage":"disk"`. `fsync`: latency of
//! writing 4 KB and `fdatasync`ing it, `--ops` times (default 1000), in DIR: the floor under
//! every durable write (each write extends the file, so each `fdatasync` also commits the new
//! size). `prezeroed_p50_us`: the same, overwriting a file filled with zeros and synced first
//! (what the WAL's pre-zeroed segments pay). `restart`: a node directory with `--entries`
//! 8-byte commands (default 1,000,000) is written, then a one-node cluster is started on it:
//! `restart_ms` is the time until the node is up with its whole log loaded (with `--tail T`,
//! the directory also holds a snapshot of all but the last T entries, which replaced the
//! segments it covers, and the line gains `"tail":T`);
//! `disk_bytes_per_entry` the bytes written per entry (segments up to their write offsets, plus
//! the snapshot file), `allocated_bytes_per_entry` the files' sizes per entry (pre-zeroed
//! segment tails included).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferraft::storage::{DiskOptions, DiskStorage, SyncPolicy};
use ferraft::{Cluster, Config, Configuration, Entry, HardState, LogIndex, NodeId, Payload};
use ferraft::{Snapshot, SnapshotMeta, Storage, Term};

use super::{Args, Sum};

/// A directory under `--data-dir`, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    fn new(args: &Args, what: &str) -> Self {
        let Some(dir) = args.text("--data-dir") else {
            eprintln!("{} needs --data-dir DIR", args.workload);
            std::process::exit(2);
        };
        let path = PathBuf::from(dir).join(format!("ferraft-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating the scratch directory");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `--storage disk` was asked for (anything else but `memory` is refused).
pub fn on_disk(args: &Args) -> bool {
    match args.text("--storage") {
        None | Some("memory") => false,
        Some("disk") => true,
        Some(other) => {
            eprintln!("--storage {other}: use memory or disk");
            std::process::exit(2);
        }
    }
}

/// The extra JSON fields for the storage used (and its non-default sync choices).
pub fn json_field(args: &Args) -> String {
    if !on_disk(args) {
        return String::new();
    }
    let mut fields = String::from(",\"storage\":\"disk\"");
    if background_sync(args) {
        fields.push_str(",\"sync\":\"background\"");
    }
    if defer_leader_sync(args) {
        fields.push_str(",\"leader_sync\":\"deferred\"");
    }
    fields
}

/// `--leader-sync deferred`: `Config::defer_leader_sync` (default `--leader-sync parallel`).
pub fn defer_leader_sync(args: &Args) -> bool {
    match args.text("--leader-sync") {
        None | Some("parallel") => false,
        Some("deferred") => true,
        Some(other) => panic!("--leader-sync takes parallel or deferred, not {other}"),
    }
}

/// `--sync background`: `Config::background_sync` (default `--sync inline`).
pub fn background_sync(args: &Args) -> bool {
    match args.text("--sync") {
        None | Some("inline") => false,
        Some("background") => true,
        Some(other) => panic!("--sync takes inline or background, not {other}"),
    }
}

/// The benchmark cluster on disk, in a scratch directory the caller keeps until it is done.
pub fn cluster(args: &Args, config: Config, nodes: usize) -> (Cluster<Sum>, Scratch) {
    let scratch = Scratch::new(args, "bench");
    let cluster = Cluster::builder(config, |_| Sum(0))
        .nodes(nodes)
        .data_dir(&scratch.0)
        .start()
        .expect("a cluster on disk");
    (cluster, scratch)
}

pub fn fsync(args: &Args) {
    let scratch = Scratch::new(args, "fsync");
    let ops = if args.ops == 0 { 1000 } else { args.ops };
    let path = scratch.0.join("probe");
    let mut file = std::fs::File::create(&path).expect("creating the probe file");
    let block = vec![0xa5u8; 4096];
    let mut samples = Vec::with_capacity(ops);
    for _ in 0..ops {
        let t = Instant::now();
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((ops as f64 * p) as usize).min(ops - 1)] as f64 / 1e3;
    let prezeroed = prezeroed_p50_us(&scratch.0.join("prezeroed"), ops);
    println!(
        "{{\"workload\":\"fsync\",\"p50_us\":{:.1},\"p99_us\":{:.1},\"prezeroed_p50_us\":{prezeroed:.1}}}",
        pct(0.5),
        pct(0.99)
    );
}

/// Median latency of a 4 KB `pwrite` + `fdatasync` over a file zero-filled and synced first.
fn prezeroed_p50_us(path: &std::path::Path, ops: usize) -> f64 {
    use std::os::unix::fs::FileExt;
    let mut file = std::fs::File::create(path).expect("creating the pre-zeroed probe file");
    file.write_all(&vec![0u8; ops * 4096]).expect("zero-fill");
    file.sync_all().expect("fsync");
    let block = vec![0xa5u8; 4096];
    let mut samples: Vec<u64> = (0..ops)
        .map(|i| {
            let t = Instant::now();
            file.write_all_at(&block, (i * 4096) as u64).expect("write");
            file.sync_data().expect("fdatasync");
            t.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    samples[ops / 2] as f64 / 1e3
}

pub fn restart(args: &Args) {
    let entries: u64 = match args.text("--entries").map(str::parse) {
        None => 1_000_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("--entries needs a positive number");
            std::process::exit(2);
        }
    };
    // `--tail T`: the node also holds a snapshot of everything but the last T entries.
    let tail: Option<u64> = match args.text("--tail").map(str::parse) {
        None => None,
        Some(Ok(t)) if t < entries => Some(t),
        Some(_) => {
            eprintln!("--tail needs a number below --entries");
            std::process::exit(2);
        }
    };
    let scratch = Scratch::new(args, "restart");
    let options = DiskOptions { sync: SyncPolicy::Never, ..DiskOptions::default() };
    let open = DiskStorage::<u64>::factory_with(&scratch.0, options);
    let mut store = open(NodeId(1), &Configuration::new([NodeId(1)])).expect("a new node dir");
    store.save_hard_state(HardState { term: Term(1), voted_for: Some(NodeId(1)) }).expect("hs");
    // Full-width values: postcard writes a u64 as a varint, so small ones would flatter.
    let command = |i: u64| Payload::Command(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let batch: Vec<Entry<u64>> =
        (0..1000).map(|i| Entry { term: Term(1), payload: command(i) }).collect();
    let mut first = 1;
    while first <= entries {
        let n = batch.len().min((entries - first + 1) as usize);
        store.append(LogIndex(first), &batch[..n]).expect("append");
        store.sync().expect("write");
        first += n as u64;
    }
    if let Some(tail) = tail {
        let index = entries - tail;
        let sum = (1..=index).fold(0u64, |sum, i| match command((i - 1) % 1000) {
            Payload::Command(c) => sum.wrapping_add(c),
            _ => sum,
        });
        let meta = SnapshotMeta {
            index: LogIndex(index),
            term: Term(1),
            config: Arc::new(Configuration::new([NodeId(1)])),
        };
        let snapshot = Arc::new(Snapshot { meta, data: sum.to_le_bytes().to_vec().into() });
        store.save_snapshot(&snapshot).expect("a snapshot");
    }
    let used_bytes = store.used_bytes().expect("sizing the data");
    let disk_bytes = store.disk_bytes().expect("sizing the directory");
    drop(store);
    // Out of the page cache would be a cold start; this measures a warm one (a process
    // restart), which is what a crashed node's supervisor sees.
    let config = Config {
        election_timeout: Duration::from_secs(5)..Duration::from_secs(6),
        ..Config::default()
    };
    let start = Instant::now();
    let cluster = Cluster::builder(config, |_| Sum(0))
        .nodes(1)
        .storage(DiskStorage::factory_with(&scratch.0, options))
        .start()
        .expect("restart on the written directory");
    let restart_ms = start.elapsed().as_secs_f64() * 1e3;
    let status = cluster.status(NodeId(1)).expect("status").core;
    assert_eq!(status.last_log_index, LogIndex(entries), "the restarted node lost entries");
    let snapshot_index = LogIndex(tail.map_or(0, |t| entries - t));
    assert_eq!(status.snapshot_index, snapshot_index, "the restarted node lost its snapshot");
    cluster.shutdown();
    let tail = tail.map_or(String::new(), |t| format!(",\"tail\":{t}"));
    println!(
        "{{\"workload\":\"restart\",\"entries\":{entries}{tail},\"restart_ms\":{restart_ms:.1},\"disk_bytes_per_entry\":{:.1},\"allocated_bytes_per_entry\":{:.1}}}",
        used_bytes as f64 / entries as f64,
        disk_bytes as f64 / entries as f64
    );
}
