//! One node of a key-value cluster, one process per node, over TCP.
//!
//! ```text
//! kv_server --id 1 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!           [--cluster-id 1] [--secret S] [--data DIR]
//! ```
//!
//! The node listens on its own entry in `--peers`. Clients (`kv_client`) connect to the same
//! port with a client handshake (see `common/kv_wire.rs`); a node that does not lead answers
//! with the leader's id and address. Runs until killed. `RUST_LOG=ferraft=info` logs elections
//! and refused handshakes.
//!
//! `--data DIR`: durable storage arrives with the disk-storage branch; until then the node keeps
//! its state in memory (a restarted process starts empty and catches up from the leader) and
//! `--data` is refused with a message saying so.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver};
use ferraft::transport::frame::{self, FrameKind};
use ferraft::transport::{TcpConfig, TcpTransport};
use ferraft::{
    Cluster, Config, Error, KvCommand, KvStateMachine, MemStorage, NodeHandle, NodeId, Receipt,
};

#[path = "common/kv_wire.rs"]
mod kv_wire;

use kv_wire::{KvRequest, KvResponse, KvStatus, MAX_CLIENT_FRAME};

struct Args {
    id: NodeId,
    peers: BTreeMap<NodeId, SocketAddr>,
    cluster_id: u64,
    secret: Option<String>,
    data: Option<PathBuf>,
}

const USAGE: &str = "usage: kv_server --id N --peers 1=HOST:PORT,2=HOST:PORT,... [--cluster-id N] [--secret S] [--data DIR]";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut id, mut peers, mut cluster_id, mut secret, mut data) = (None, None, 1, None, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--id" => {
                id = Some(NodeId(value.parse().map_err(|_| format!("--id {value}: not a number"))?))
            }
            "--peers" => peers = Some(parse_peers(&value)?),
            "--cluster-id" => {
                cluster_id =
                    value.parse().map_err(|_| format!("--cluster-id {value}: not a number"))?
            }
            "--secret" => secret = Some(value),
            "--data" => data = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    let id = id.ok_or(format!("--id is required\n{USAGE}"))?;
    let peers: BTreeMap<NodeId, SocketAddr> =
        peers.ok_or(format!("--peers is required\n{USAGE}"))?;
    if !peers.contains_key(&id) {
        return Err(format!(
            "--peers has no address for this node's id {id}; list every node, this one included"
        ));
    }
    Ok(Args { id, peers, cluster_id, secret, data })
}

/// `1=127.0.0.1:7001,2=...` into a map.
fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let (id, addr) =
            item.split_once('=').ok_or(format!("--peers item {item}: expected ID=HOST:PORT"))?;
        let id = NodeId(
            id.trim().parse().map_err(|_| format!("--peers item {item}: {id} is not a number"))?,
        );
        let addr = addr.trim().parse().map_err(|e| format!("--peers item {item}: {e}"))?;
        if peers.insert(id, addr).is_some() {
            return Err(format!("--peers names {id} twice"));
        }
    }
    Ok(peers)
}

fn main() {
    init_tracing();
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    if let Err(e) = serve(args) {
        eprintln!("kv_server: {e}");
        std::process::exit(1);
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

type Node = NodeHandle<KvStateMachine>;

fn serve(args: Args) -> Result<(), String> {
    if let Some(dir) = &args.data {
        return Err(format!(
            "--data {}: disk storage is not on this build yet; run without --data (memory)",
            dir.display()
        ));
    }
    let node: Arc<OnceLock<Node>> = Arc::default();
    let mut tcp = TcpConfig::new(args.cluster_id, args.peers.clone());
    tcp.secret = args.secret.as_ref().map(|s| Arc::from(s.as_bytes()));
    tcp.clients = Some(client_handler(Arc::clone(&node), args.peers.clone()));
    // Fail early and clearly if the port is taken (the transport would keep retrying).
    drop(
        std::net::TcpListener::bind(args.peers[&args.id])
            .map_err(|e| format!("listening on {}: {e}", args.peers[&args.id]))?,
    );
    let ids: Vec<NodeId> = args.peers.keys().copied().collect();
    let cluster = Cluster::builder(Config::default(), |_| KvStateMachine::new())
        .ids(&ids)
        .local(&[args.id])
        .storage(|_id, bootstrap| Ok(MemStorage::new(bootstrap.clone())))
        .transport(TcpTransport::factory(tcp))
        .start()
        .map_err(|e| e.to_string())?;
    let handle = cluster.node(args.id).map_err(|e| e.to_string())?;
    let _ = node.set(handle);
    println!("kv_server {} listening on {}", args.id, args.peers[&args.id]);
    loop {
        std::thread::park(); // until killed; the cluster's threads do the work
    }
}

fn client_handler(
    node: Arc<OnceLock<Node>>,
    peers: BTreeMap<NodeId, SocketAddr>,
) -> ferraft::transport::ClientHandler {
    Arc::new(move |stream: TcpStream| {
        let Some(node) = node.get().cloned() else { return }; // not started yet: the client retries
        serve_client(stream, node, &peers);
    })
}

/// An answer on its way: ready now, or waiting for a proposal to apply.
enum Pending {
    Ready(KvResponse),
    Proposal(Receipt<Option<String>>),
}

/// Reads requests and starts them at once; a writer thread answers them in order, so a client
/// may keep many in flight.
fn serve_client(stream: TcpStream, node: Node, peers: &BTreeMap<NodeId, SocketAddr>) {
    let Ok(writer) = stream.try_clone() else { return };
    let (tx, rx) = bounded(1024);
    let peers_w = peers.clone();
    let answer = std::thread::Builder::new()
        .name("kv-client-out".into())
        .spawn(move || write_answers(writer, &rx, &peers_w));
    let Ok(answer) = answer else { return };
    let mut reader = std::io::BufReader::new(stream);
    while let Ok(request) =
        frame::read_value::<KvRequest>(&mut reader, FrameKind::Request, MAX_CLIENT_FRAME)
    {
        if tx.send(start(&node, request)).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = answer.join();
}

fn start(node: &Node, request: KvRequest) -> Pending {
    let command = match request {
        KvRequest::Put { key, value } => KvCommand::Put { key, value },
        KvRequest::Get { key } => KvCommand::Get { key },
        KvRequest::Status => return Pending::Ready(status(node)),
    };
    match node.propose_async(command) {
        Ok(receipt) => Pending::Proposal(receipt),
        Err(e) => Pending::Ready(KvResponse::Error(e.to_string())),
    }
}

fn write_answers(
    mut stream: TcpStream,
    pending: &Receiver<Pending>,
    peers: &BTreeMap<NodeId, SocketAddr>,
) {
    for answer in pending {
        let response = match answer {
            Pending::Ready(response) => response,
            Pending::Proposal(mut receipt) => match receipt.wait(Duration::from_secs(10)) {
                Ok(applied) => KvResponse::Value(applied.output),
                Err(Error::NotLeader { leader_hint }) => KvResponse::NotLeader {
                    leader: leader_hint.and_then(|id| Some((id.0, *peers.get(&id)?))),
                },
                Err(e) => KvResponse::Error(e.to_string()),
            },
        };
        if frame::write_value(&mut stream, FrameKind::Response, &response).is_err() {
            return;
        }
    }
}

fn status(node: &Node) -> KvResponse {
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
