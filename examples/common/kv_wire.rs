//! The client protocol between `kv_client` (and the tests and benchmarks) and `kv_server`.
//!
//! A client connects to any server's node port and handshakes as `Peer::Client` (see
//! `ferraft::transport::frame`); then it sends `Request` frames, each a postcard [`KvRequest`],
//! and reads one `Response` frame, a postcard [`KvResponse`], per request, in order. Requests
//! may be pipelined: the server answers them in the order they came.
//!
//! A server that does not lead answers [`KvResponse::NotLeader`] with the leader it knows of
//! and that leader's address; [`KvClient::request`] follows it. Reads go through the log
//! (`KvCommand::Get`), so they are linearizable but cost a round of replication.
//!
//! The server's side, shared by `kv_server` and the audit server of
//! `tests/adversarial_crash.rs`: [`serve_in_order`] runs one client connection,
//! [`status_answer`] answers [`KvRequest::Status`].
//!
//! Included with `#[path]` by the examples and tests that speak it.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ferraft::transport::frame::{self, FrameKind, Peer};
use ferraft::transport::{connect, TcpConfig};
use ferraft::{NodeHandle, StateMachine};
use serde::{Deserialize, Serialize};

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// Sets `key` to `value`.
    Put { key: String, value: String },
    /// Reads `key` (through the log).
    Get { key: String },
    /// The node's status.
    Status,
    /// Adds node `id`, listening at `addr` (a `kv_server --join` process), to the cluster:
    /// records its address on every server through the log, then adds it as a learner and
    /// promotes it once caught up.
    AddNode { id: u64, addr: SocketAddr },
    /// Removes node `id` from the cluster (stop its process afterwards).
    RemoveNode { id: u64 },
}

/// A node's status, as `kv_client status` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStatus {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub commit: u64,
    pub applied: u64,
    pub digest: u64,
    pub voters: Vec<u64>,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// Applied: the key's value after the command.
    Value(Option<String>),
    /// This node does not lead; retry at the leader (id and address) if one is known.
    NotLeader { leader: Option<(u64, SocketAddr)> },
    /// The node's status.
    Status(KvStatus),
    /// A membership change committed: the voters now.
    Members(Vec<u64>),
    /// The request failed (timeout, node down, ...): the message says why.
    Error(String),
}

/// The most bytes one client frame may carry.
pub const MAX_CLIENT_FRAME: usize = 16 << 20;

/// A connection to one server, following leader hints on request.
pub struct KvClient {
    config: TcpConfig,
    addr: SocketAddr,
    stream: TcpStream,
}

impl KvClient {
    /// Connects to the server at `addr` of cluster `cluster_id` (with its `secret`, if any).
    pub fn connect(
        addr: SocketAddr,
        cluster_id: u64,
        secret: Option<&[u8]>,
    ) -> Result<Self, String> {
        let mut config = TcpConfig::new(cluster_id, Default::default());
        config.secret = secret.map(Into::into);
        config.handshake_timeout = Duration::from_secs(5);
        let stream = open(addr, &config)?;
        Ok(KvClient { config, addr, stream })
    }

    /// The server this client talks to now.
    pub fn server(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request without waiting (pipelining).
    pub fn send(&mut self, request: &KvRequest) -> Result<(), String> {
        frame::write_value(&mut self.stream, FrameKind::Request, request)
            .map_err(|e| format!("sending to {}: {e}", self.addr))
    }

    /// Reads the answer to the oldest request not yet answered.
    pub fn recv(&mut self) -> Result<KvResponse, String> {
        frame::read_value(&mut self.stream, FrameKind::Response, MAX_CLIENT_FRAME)
            .map_err(|e| format!("reading from {}: {e}", self.addr))
    }

    /// One request to this server, no hint following.
    pub fn call(&mut self, request: &KvRequest) -> Result<KvResponse, String> {
        self.send(request)?;
        self.recv()
    }

    /// Moves to another server.
    pub fn reconnect(&mut self, addr: SocketAddr) -> Result<(), String> {
        self.stream = open(addr, &self.config)?;
        self.addr = addr;
        Ok(())
    }

    /// One request, following `NotLeader` hints (and waiting while no leader is known) for up
    /// to `timeout`. Safe to retry only because a refused request was never appended.
    pub fn request(
        &mut self,
        request: &KvRequest,
        timeout: Duration,
    ) -> Result<KvResponse, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.call(request)? {
                KvResponse::NotLeader { leader: Some((_, addr)) } if addr != self.addr => {
                    self.reconnect(addr)?;
                }
                KvResponse::NotLeader { .. } if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                answer => return Ok(answer),
            }
        }
    }
}

/// Serves one client connection: starts each request as it is read (`start`), while a thread
/// of its own (`kv-client-out`) finishes them in order (`finish`, which may wait for a
/// proposal to apply) and writes the answers, so a client may keep many in flight. Returns
/// when the client hangs up or an answer cannot be written. The loop `kv_server` and the
/// audit server of `tests/adversarial_crash.rs` share.
pub fn serve_in_order<P: Send + 'static>(
    stream: TcpStream,
    mut start: impl FnMut(KvRequest) -> P,
    mut finish: impl FnMut(P) -> KvResponse + Send + 'static,
) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let (tx, rx) = crossbeam_channel::bounded::<P>(1024);
    let answer = std::thread::Builder::new().name("kv-client-out".into()).spawn(move || {
        for pending in rx {
            if frame::write_value(&mut writer, FrameKind::Response, &finish(pending)).is_err() {
                return;
            }
        }
    });
    let Ok(answer) = answer else { return };
    let mut reader = std::io::BufReader::new(stream);
    while let Ok(request) =
        frame::read_value::<KvRequest>(&mut reader, FrameKind::Request, MAX_CLIENT_FRAME)
    {
        if tx.send(start(request)).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = answer.join();
}

/// The answer to [`KvRequest::Status`] at `node`: its status, or why it has none. The one
/// answer `kv_server` and the audit server of `tests/adversarial_crash.rs` give.
pub fn status_answer<S: StateMachine>(node: &NodeHandle<S>) -> KvResponse {
    match node.status(Duration::from_secs(5)) {
        Ok(s) => KvResponse::Status(KvStatus {
            id: s.core.id.0,
            role: s.core.role_name().to_string(),
            term: s.core.term.0,
            leader: s.core.leader.map(|l| l.0),
            commit: s.core.commit_index.0,
            applied: s.core.last_applied.0,
            digest: s.digest,
            voters: s.core.config.voters.iter().map(|v| v.0).collect(),
        }),
        Err(e) => KvResponse::Error(e.to_string()),
    }
}

fn open(addr: SocketAddr, config: &TcpConfig) -> Result<TcpStream, String> {
    let stream = connect(addr, Peer::Client, config).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    Ok(stream)
}
