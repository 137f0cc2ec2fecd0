//! Three `kv_server` processes on loopback TCP: writes through the client protocol, SIGKILL of
//! the leader process, a new leader and continued writes, a restart of the killed process, and
//! every node converging to the same state digest.
//!
//! The server is the `kv_server` example. `cargo test` builds the examples before it runs the
//! tests and leaves them in `target/<profile>/examples/`, next to this test's `deps/`
//! directory; when only this test was built (`cargo test --test tcp_processes`), the test builds
//! the example itself with the same profile. NB: a filtered run uses an existing
//! `kv_server` as it is: after changing the server, run `cargo build --release --examples` (or
//! the whole suite) first. A guard kills every process it started, also when the test fails.
//!
//! Each server keeps its state on disk (`--data`) in a temporary directory the guard removes,
//! so a killed process restarts from what it persisted.

#[path = "../examples/common/kv_wire.rs"]
mod kv_wire;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_wire::{KvClient, KvRequest, KvResponse, KvStatus};

const CLUSTER: u64 = 77;
const DEADLINE: Duration = Duration::from_secs(30);

/// The `kv_server` example binary, built if `cargo test` did not build it.
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let binary = profile_dir.join("examples").join("kv_server");
    if !binary.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        build.args(["build", "--example", "kv_server"]).current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build --example kv_server");
        assert!(status.success(), "building the kv_server example failed");
    }
    assert!(binary.exists(), "no kv_server at {}", binary.display());
    binary
}

/// The server processes; dropping it kills (SIGKILL) and reaps every one still running.
struct Servers {
    binary: PathBuf,
    /// `n<id>` under it holds each server's data; removed on drop.
    data: PathBuf,
    peers: BTreeMap<u64, SocketAddr>,
    children: BTreeMap<u64, Child>,
}

impl Servers {
    fn start(binary: PathBuf, n: u64) -> Self {
        let peers = (1..=n).map(|id| (id, free_addr())).collect();
        let data = std::env::temp_dir().join(format!(
            "ferraft-tcp-processes-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut servers = Servers { binary, data, peers, children: BTreeMap::new() };
        for id in 1..=n {
            servers.spawn_with(id, &["--bootstrap"]); // the cluster's first start
        }
        servers
    }

    fn spawn(&mut self, id: u64) {
        self.spawn_with(id, &[]);
    }

    fn spawn_with(&mut self, id: u64, extra: &[&str]) {
        let peers: Vec<String> = self.peers.iter().map(|(id, a)| format!("{id}={a}")).collect();
        let dir = self.data.join(format!("n{id}"));
        let child = Command::new(&self.binary)
            .args(["--id", &id.to_string(), "--peers", &peers.join(",")])
            .arg("--data")
            .arg(&dir)
            .args(extra)
            .args(["--cluster-id", &CLUSTER.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kv_server");
        self.children.insert(id, child);
    }

    /// SIGKILL: the process gets no chance to clean up.
    fn kill(&mut self, id: u64) {
        let mut child = self.children.remove(&id).expect("running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    fn addr(&self, id: u64) -> SocketAddr {
        self.peers[&id]
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

static NEXT_DIR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("bound address")
}

fn status(addr: SocketAddr) -> Result<KvStatus, String> {
    match KvClient::connect(addr, CLUSTER, None)?.call(&KvRequest::Status)? {
        KvResponse::Status(s) => Ok(s),
        other => Err(format!("{other:?}")),
    }
}

/// Sends `request`, trying the running servers in turn and following hints, until `done`
/// accepts the answer.
fn until(servers: &Servers, request: KvRequest, done: impl Fn(&KvResponse) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    for id in servers.children.keys().copied().cycle() {
        assert!(Instant::now() < deadline, "{request:?} never succeeded; last: {last}");
        let answer = KvClient::connect(servers.addr(id), CLUSTER, None)
            .and_then(|mut c| c.request(&request, Duration::from_secs(2)));
        match answer {
            Ok(answer) if done(&answer) => return,
            other => last = format!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Puts `key` until applied.
fn put(servers: &Servers, key: &str, value: &str) {
    let request = KvRequest::Put { key: key.into(), value: value.into() };
    until(servers, request, |a| *a == KvResponse::Value(Some(value.into())));
}

fn leader(servers: &Servers) -> Option<u64> {
    let statuses = servers.children.keys().filter_map(|&id| status(servers.addr(id)).ok());
    statuses.filter(|s| s.role == "Leader").max_by_key(|s| s.term).map(|s| s.id)
}

fn wait_leader(servers: &Servers, not: Option<u64>) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match leader(servers) {
            Some(id) if Some(id) != not => return id,
            _ if Instant::now() > deadline => panic!("no new leader within {DEADLINE:?}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Waits until every server has applied at least `entries` and all agree on commit, applied
/// index and digest.
fn wait_converged(servers: &Servers, entries: u64) -> Vec<KvStatus> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let statuses: Vec<_> =
            servers.children.keys().filter_map(|&id| status(servers.addr(id)).ok()).collect();
        let key = |s: &KvStatus| (s.commit, s.applied, s.digest);
        let same = statuses.windows(2).all(|w| key(&w[0]) == key(&w[1]));
        let done = statuses.iter().all(|s| s.applied >= entries && s.applied == s.commit);
        if statuses.len() == servers.children.len() && same && done {
            return statuses;
        }
        assert!(Instant::now() < deadline, "servers did not converge: {statuses:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_processes_survive_the_leader_being_killed() {
    let mut servers = Servers::start(server_binary(), 3);
    for i in 0..10 {
        put(&servers, &format!("k{i}"), &format!("v{i}"));
    }
    let old = wait_leader(&servers, None);
    servers.kill(old);
    let new = wait_leader(&servers, Some(old));
    assert_ne!(new, old);
    for i in 10..20 {
        put(&servers, &format!("k{i}"), &format!("v{i}"));
    }
    servers.spawn(old); // from its directory: it catches up only what it missed
    put(&servers, "after-restart", "yes");
    // 21 puts, plus at least one no-op entry per leader term.
    let statuses = wait_converged(&servers, 23);
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    // Every process killed at once, then all restarted from their directories: nothing
    // acknowledged is lost, and they agree again.
    for id in 1..=3 {
        servers.kill(id);
    }
    for id in 1..=3 {
        servers.spawn(id);
    }
    put(&servers, "after-full-restart", "yes");
    let after = wait_converged(&servers, statuses[0].applied + 2);
    assert_eq!(after.len(), 3, "{after:?}");
    let request = KvRequest::Get { key: "k3".into() };
    until(&servers, request, |a| *a == KvResponse::Value(Some("v3".into())));
}

#[test]
fn a_fourth_process_joins_and_one_of_the_first_three_leaves() {
    let mut servers = Servers::start(server_binary(), 3);
    put(&servers, "before", "join");
    let addr = free_addr();
    servers.peers.insert(4, addr);
    servers.spawn_with(4, &["--join"]); // empty configuration: waits to be added
    until(&servers, KvRequest::AddNode { id: 4, addr }, |a| {
        *a == KvResponse::Members(vec![1, 2, 3, 4])
    });
    put(&servers, "after", "join");
    let statuses = wait_converged(&servers, 4);
    assert!(statuses.iter().all(|s| s.voters == [1, 2, 3, 4]), "{statuses:?}");
    // Remove a follower among the first three, then stop its process.
    let leader = wait_leader(&servers, None);
    let gone = (1..=3).find(|&id| id != leader).expect("a follower");
    let left: Vec<u64> = (1..=4).filter(|&id| id != gone).collect();
    until(&servers, KvRequest::RemoveNode { id: gone }, |a| {
        *a == KvResponse::Members(left.clone())
    });
    servers.kill(gone);
    put(&servers, "after", "leave");
    let statuses = wait_converged(&servers, 6);
    assert!(statuses.iter().all(|s| s.voters == left), "{statuses:?}");
}

#[test]
fn the_server_refuses_bad_command_lines_with_a_reason() {
    let binary = server_binary();
    let addr = free_addr();
    let peers = format!("1={addr}");
    let file = std::env::temp_dir().join(format!("ferraft-not-a-dir-{}", std::process::id()));
    std::fs::write(&file, b"a file, not a directory").expect("write a file");
    /// Removes the file when the test ends, also when it fails.
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(file.clone());
    let file_arg = file.to_string_lossy().into_owned();
    let missing = std::env::temp_dir().join(format!("ferraft-no-store-{}", std::process::id()));
    let missing_arg = missing.to_string_lossy().into_owned();
    let cases: [(&[&str], i32, &str); 7] = [
        (&["--peers", &peers], 2, "--id is required"),
        (&["--id", "x", "--peers", &peers], 2, "not a number"),
        (&["--id", "2", "--peers", &peers], 2, "no address for this node's id n2"),
        (&["--id", "1", "--peers", "1=nowhere"], 2, "--peers item 1=nowhere"),
        (&["--id", "1", "--peers", &peers, "--data", &file_arg], 1, "not a directory"),
        // A directory with no store: a first start says so, a voter wiped must be replaced.
        (&["--id", "1", "--peers", &peers, "--data", &missing_arg], 2, "holds no store"),
        (&["--id", "1", "--peers", &peers, "--join", "--bootstrap"], 2, "exclude each other"),
    ];
    for (args, code, reason) in cases {
        let out = Command::new(&binary).args(args).output().expect("run kv_server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    assert!(!missing.exists(), "a refused server created its directory");
}
