//! TCP workloads: `latency` and `throughput` with `--transport tcp`, and `rtt`.
//!
//! ```text
//! cargo build --release --examples
//! cargo run --release --example bench -- latency    --transport tcp [--ops N]
//! cargo run --release --example bench -- throughput --transport tcp [--clients C] [--ops N]
//! cargo run --release --example bench -- rtt [--ops N]
//! ```
//!
//! With `--transport tcp` the bench starts three `kv_server` processes (the example, found next
//! to this binary, built if missing) on free loopback ports, runs the workload through the
//! client protocol against the leader, and kills them. The state machine is the key-value
//! store (`Put` of an 8-byte value over 1,000 keys), not the in-process bench's running sum.
//! `latency`: one client, one request at a time. `throughput`: `--clients` requests (default
//! 256) outstanding, pipelined on one connection. `rtt`: the loopback round trip of 8 bytes
//! between two threads over TCP (no Raft): the physical floor for the others.
//!
//! `--storage disk --data-dir DIR`: each server keeps its state on disk in `DIR/n<id>` (which
//! must not hold an earlier run's data); the JSON line then carries `"storage":"disk"`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../common/kv_wire.rs"]
mod kv_wire;

use kv_wire::{KvClient, KvRequest, KvResponse};

use super::Args;

const CLUSTER: u64 = 1;

/// `latency` or `throughput` over three server processes.
pub fn run(args: &Args) {
    let data = match (args.text("--storage"), args.text("--data-dir")) {
        (None | Some("memory"), _) => None,
        (Some("disk"), Some(dir)) => Some(PathBuf::from(dir)),
        (Some("disk"), None) => {
            eprintln!("--storage disk needs --data-dir DIR");
            std::process::exit(2);
        }
        (Some(other), _) => {
            eprintln!("--storage {other}: memory or disk");
            std::process::exit(2);
        }
    };
    let tag = if data.is_some() { ",\"storage\":\"disk\"" } else { "" };
    let servers = Servers::start(3, data.as_deref());
    let mut client = servers.leader_client();
    warm_up(&mut client);
    match args.workload.as_str() {
        "latency" => latency(&mut client, if args.ops == 0 { 20_000 } else { args.ops }, tag),
        "throughput" => {
            let ops = if args.ops == 0 { 200_000 } else { args.ops };
            throughput(&mut client, args.clients, ops, tag);
        }
        other => {
            eprintln!("{other} does not take --transport tcp (latency and throughput do)");
            std::process::exit(2);
        }
    }
}

fn put(i: usize) -> KvRequest {
    KvRequest::Put { key: format!("k{}", i % 1000), value: format!("{:08}", i % 100_000_000) }
}

fn expect_value(answer: Result<KvResponse, String>) {
    match answer {
        Ok(KvResponse::Value(_)) => {}
        other => panic!("request failed: {other:?}"),
    }
}

fn warm_up(client: &mut KvClient) {
    for i in 0..1000 {
        expect_value(client.call(&put(i)));
    }
}

fn latency(client: &mut KvClient, ops: usize, tag: &str) {
    let mut samples = Vec::with_capacity(ops);
    let start = Instant::now();
    for i in 0..ops {
        let t = Instant::now();
        expect_value(client.call(&put(i)));
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    let pct = percentiles(&mut samples);
    println!(
        "{{\"workload\":\"latency\",\"transport\":\"tcp\"{tag},\"nodes\":3,\"clients\":1,\"ops\":{ops},\"secs\":{secs:.3},\"ops_per_s\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1}}}",
        ops as f64 / secs,
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
}

/// Keeps `outstanding` requests in flight on one connection; answers come back in order.
fn throughput(client: &mut KvClient, outstanding: usize, ops: usize, tag: &str) {
    let mut inflight = VecDeque::with_capacity(outstanding);
    let start = Instant::now();
    let mut sent = 0;
    while sent < ops || !inflight.is_empty() {
        while sent < ops && inflight.len() < outstanding {
            client.send(&put(sent)).expect("send");
            inflight.push_back(sent);
            sent += 1;
        }
        expect_value(client.recv());
        inflight.pop_front();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"workload\":\"throughput\",\"transport\":\"tcp\"{tag},\"nodes\":3,\"clients\":{outstanding},\"ops\":{ops},\"secs\":{secs:.3},\"ops_per_s\":{:.0}}}",
        ops as f64 / secs
    );
}

fn percentiles(samples: &mut [u64]) -> impl Fn(f64) -> f64 + '_ {
    samples.sort_unstable();
    |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)] as f64 / 1e3
}

/// The loopback round trip: 8 bytes to an echo thread and back, `--ops` times (default 20,000).
pub fn rtt(args: &Args) {
    let ops = if args.ops == 0 { 20_000 } else { args.ops };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let echo = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_nodelay(true).expect("nodelay");
        let mut buf = [0u8; 8];
        while stream.read_exact(&mut buf).is_ok() {
            if stream.write_all(&buf).is_err() {
                return;
            }
        }
    });
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut samples = Vec::with_capacity(ops);
    let mut buf = [0u8; 8];
    for i in 0..ops + 1000 {
        let t = Instant::now();
        stream.write_all(&(i as u64).to_le_bytes()).expect("write");
        stream.read_exact(&mut buf).expect("read");
        if i >= 1000 {
            samples.push(t.elapsed().as_nanos() as u64); // the first 1000 warm up
        }
    }
    drop(stream);
    let _ = echo.join();
    let pct = percentiles(&mut samples);
    println!("{{\"workload\":\"rtt\",\"p50_us\":{:.1},\"p99_us\":{:.1}}}", pct(0.50), pct(0.99));
}

/// Three `kv_server` processes; dropping it kills them.
struct Servers {
    peers: BTreeMap<u64, SocketAddr>,
    children: Vec<Child>,
}

impl Servers {
    fn start(n: u64, data: Option<&std::path::Path>) -> Self {
        let binary = server_binary();
        let peers: BTreeMap<u64, SocketAddr> = (1..=n).map(|id| (id, free_addr())).collect();
        let list: Vec<String> = peers.iter().map(|(id, a)| format!("{id}={a}")).collect();
        let children = (1..=n)
            .map(|id| {
                let mut server = Command::new(&binary);
                server
                    .args(["--id", &id.to_string(), "--peers", &list.join(",")])
                    .args(["--cluster-id", &CLUSTER.to_string()]);
                if let Some(dir) = data {
                    // NB: a fresh directory each run: the cluster's first start.
                    server.arg("--data").arg(dir.join(format!("n{id}"))).arg("--bootstrap");
                }
                server.stdout(Stdio::null()).spawn().expect("start kv_server")
            })
            .collect();
        Servers { peers, children }
    }

    /// A client connected to the leader, once there is one.
    fn leader_client(&self) -> KvClient {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no leader among the servers within 30 s");
            for addr in self.peers.values() {
                let Ok(mut client) = KvClient::connect(*addr, CLUSTER, None) else { continue };
                if let Ok(KvResponse::Value(_)) = client.request(&put(0), Duration::from_secs(1)) {
                    return client; // `request` followed the hint: connected to the leader
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("bound address")
}

/// `kv_server` next to this binary (both are examples), built first if missing.
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let dir = exe.parent().expect("examples directory");
    let binary = dir.join("kv_server");
    if !binary.exists() {
        let release = dir.parent().and_then(|p| p.file_name()).is_some_and(|n| n == "release");
        let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        build.args(["build", "--example", "kv_server"]).current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            build.arg("--release");
        }
        assert!(build.status().is_ok_and(|s| s.success()), "building kv_server failed");
    }
    binary
}
