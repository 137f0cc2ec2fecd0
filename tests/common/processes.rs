//! Server processes for the process tests (`tcp_processes.rs`, `adversarial_crash.rs`): a
//! cluster of them on loopback ports chosen free at run time, a guard that SIGKILLs and reaps
//! every process it started (also when the test fails) and removes their data, and client
//! calls retried until an answer, with a deadline.
//!
//! A server is either the `kv_server` example or the test binary itself, re-executed to run
//! its test `audit_server_process` (adversarial_crash.rs). `cargo test` builds the examples
//! before it runs the tests and leaves them in `target/<profile>/examples/`, next to the test's
//! `deps/` directory; when only a test was built (`cargo test --test tcp_processes`), the first
//! test builds the example itself with the same profile. NB: a filtered run uses an existing
//! `kv_server` as it is: after changing the server, run `cargo build --release --examples` (or
//! the whole suite) first.
//!
//! Included with `#[path]` by those two tests only (not from `common/mod.rs`), so the other
//! test binaries do not build the client protocol.

// Each process test uses a different subset of these helpers.
#![allow(dead_code)]

#[path = "../../examples/common/kv_wire.rs"]
pub mod kv_wire;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kv_wire::{KvClient, KvRequest, KvResponse, KvStatus};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The cluster id every test server runs under.
pub const CLUSTER: u64 = 4242;
/// How long a test waits for a condition (an answer, a leader, convergence) before failing.
pub const DEADLINE: Duration = Duration::from_secs(60);

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Which server a process runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The `kv_server` example.
    Example,
    /// This test binary, re-executed to run its test `audit_server_process` with
    /// `AUDIT_SERVER=<id>;<peers>;<dir>;<cluster>;<options>`; the options are that server's.
    Audit(String),
}

/// The `kv_server` example binary, built if `cargo test` did not build it.
pub fn kv_server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let binary = profile_dir.join("examples").join("kv_server");
    if !binary.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let target = profile_dir.parent().expect("target dir");
        let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        build
            .args(["build", "--example", "kv_server", "--target-dir"])
            .arg(target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build --example kv_server");
        assert!(status.success(), "building the kv_server example failed");
    }
    assert!(binary.exists(), "no kv_server at {}", binary.display());
    binary
}

/// A process that is SIGKILLed and reaped when the guard drops.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server processes; dropping it kills (SIGKILL) and reaps each one and removes the data.
pub struct Servers {
    pub kind: Kind,
    /// `n<id>` under it holds each server's data; removed on drop.
    pub data: PathBuf,
    pub peers: BTreeMap<u64, SocketAddr>,
    pub children: BTreeMap<u64, ChildGuard>,
    pub kills: u64,
    pub restarts: u64,
    /// Ids started with `--join` (the example server only).
    pub joiners: Vec<u64>,
    /// The cluster's first start: the example server creates its stores (`--bootstrap`).
    bootstrapping: bool,
}

impl Servers {
    /// Starts `n` servers of `kind`, nodes 1 to `n`, each on a free loopback port.
    pub fn start(kind: Kind, n: u64) -> Self {
        let data = std::env::temp_dir().join(format!(
            "ferraft-processes-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&data).expect("create the data directory");
        let mut servers = Servers {
            kind,
            data,
            peers: (1..=n).map(|id| (id, free_addr())).collect(),
            children: BTreeMap::new(),
            kills: 0,
            restarts: 0,
            joiners: Vec::new(),
            bootstrapping: true,
        };
        for id in 1..=n {
            servers.spawn(id);
        }
        servers.bootstrapping = false;
        servers
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.data.join(format!("n{id}"))
    }

    /// The command that starts server `id` on `dir` in `cluster`, listening on `addr` if given
    /// (else on its address in `peers`).
    pub fn command(&self, id: u64, dir: &Path, cluster: u64, addr: Option<SocketAddr>) -> Command {
        let mut peers = self.peers.clone();
        if let Some(a) = addr {
            peers.insert(id, a);
        }
        let peers: Vec<String> = peers.iter().map(|(i, a)| format!("{i}={a}")).collect();
        let mut cmd = match &self.kind {
            Kind::Example => {
                let mut c = Command::new(kv_server_binary());
                c.args(["--id", &id.to_string(), "--peers", &peers.join(",")])
                    .arg("--data")
                    .arg(dir)
                    .args(["--cluster-id", &cluster.to_string()]);
                if self.joiners.contains(&id) {
                    c.arg("--join");
                } else if self.bootstrapping {
                    c.arg("--bootstrap");
                }
                c
            }
            Kind::Audit(options) => {
                let mut c = Command::new(std::env::current_exe().expect("test binary path"));
                c.args(["--exact", "audit_server_process", "--nocapture", "--test-threads", "1"]);
                let spec =
                    format!("{id};{};{};{cluster};{options}", peers.join(","), dir.display());
                c.env("AUDIT_SERVER", spec);
                c
            }
        };
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd
    }

    /// Starts server `id` from its directory.
    pub fn spawn(&mut self, id: u64) {
        let mut child = self.command(id, &self.dir(id), CLUSTER, None).spawn().expect("spawn");
        // Drain stderr on a thread so a chatty server never blocks; echo what it says.
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    if !line.contains("running 1 test") && !line.is_empty() {
                        eprintln!("[n{id}] {line}");
                    }
                }
            });
        }
        self.children.insert(id, ChildGuard(child));
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self, id: u64) {
        if self.children.remove(&id).is_some() {
            self.kills += 1;
        }
    }

    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
        self.restarts += 1;
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.peers[&id]
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.peers.values().copied().collect()
    }

    /// The addresses of the servers running now.
    pub fn running_addrs(&self) -> Vec<SocketAddr> {
        self.children.keys().map(|&id| self.addr(id)).collect()
    }

    /// Any child that exited by itself (a crash of the server, not one of our kills).
    pub fn check_alive(&mut self) -> Result<(), String> {
        for (id, c) in self.children.iter_mut() {
            if let Ok(Some(status)) = c.0.try_wait() {
                return Err(format!("n{id} exited by itself: {status}"));
            }
        }
        Ok(())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.children.clear(); // kills and reaps each, before their files go
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("bound address")
}

pub fn status(addr: SocketAddr) -> Result<KvStatus, String> {
    match KvClient::connect(addr, CLUSTER, None)?.call(&KvRequest::Status)? {
        KvResponse::Status(s) => Ok(s),
        other => Err(format!("{other:?}")),
    }
}

/// The leader of the highest term among the running servers' answers.
pub fn leader(servers: &Servers) -> Option<u64> {
    let statuses = servers.children.keys().filter_map(|&id| status(servers.addr(id)).ok());
    statuses.filter(|s| s.role == "Leader").max_by_key(|s| s.term).map(|s| s.id)
}

/// Waits for a leader other than `not`.
pub fn wait_leader(servers: &Servers, not: Option<u64>) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match leader(servers) {
            Some(id) if Some(id) != not => return id,
            _ => assert!(Instant::now() < deadline, "no new leader within {DEADLINE:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every running server has applied at least `entries`, has applied everything it
/// knows committed, and all agree on commit, applied index and digest.
pub fn wait_converged(servers: &Servers, entries: u64) -> Vec<KvStatus> {
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

/// A connection that reconnects to a random server on failure.
pub struct Conn {
    addrs: Vec<SocketAddr>,
    client: Option<KvClient>,
    rng: SmallRng,
}

impl Conn {
    pub fn new(addrs: Vec<SocketAddr>, seed: u64) -> Self {
        Conn { addrs, client: None, rng: SmallRng::seed_from_u64(seed) }
    }

    /// One attempt (following leader hints for up to `timeout`): the answer or a transport
    /// error. An error or a refusal drops the connection, so the next attempt picks a server
    /// again.
    pub fn call(&mut self, req: &KvRequest, timeout: Duration) -> Result<KvResponse, String> {
        let client = match &mut self.client {
            Some(client) => client,
            None => {
                let a = self.addrs[self.rng.random_range(0..self.addrs.len())];
                self.client.insert(KvClient::connect(a, CLUSTER, None)?)
            }
        };
        let r = client.request(req, timeout);
        if matches!(r, Err(_) | Ok(KvResponse::NotLeader { .. } | KvResponse::Error(_))) {
            self.client = None;
        }
        r
    }

    /// Sends `req` until `done` accepts the answer, and returns it; panics after [`DEADLINE`].
    pub fn call_until(
        &mut self,
        req: &KvRequest,
        done: impl Fn(&KvResponse) -> bool,
    ) -> KvResponse {
        let deadline = Instant::now() + DEADLINE;
        let mut last = String::new();
        loop {
            assert!(Instant::now() < deadline, "{req:?} never succeeded; last: {last}");
            match self.call(req, Duration::from_secs(3)) {
                Ok(answer) if done(&answer) => return answer,
                other => last = format!("{other:?}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Sends `request` to the running servers until `done` accepts the answer.
pub fn until(
    servers: &Servers,
    request: KvRequest,
    done: impl Fn(&KvResponse) -> bool,
) -> KvResponse {
    Conn::new(servers.running_addrs(), 1).call_until(&request, done)
}

/// Puts `key` (a plain `Put`, the example server's) until applied.
pub fn put(servers: &Servers, key: &str, value: &str) {
    let request = KvRequest::Put { key: key.into(), value: value.into() };
    until(servers, request, |a| *a == KvResponse::Value(Some(value.into())));
}

/// Reads `key` (a plain `Get`, through the log) until answered.
pub fn get(servers: &Servers, key: &str) -> Option<String> {
    match until(servers, KvRequest::Get { key: key.into() }, |a| matches!(a, KvResponse::Value(_)))
    {
        KvResponse::Value(v) => v,
        other => unreachable!("accepted {other:?}"),
    }
}
