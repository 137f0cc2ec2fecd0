//! One node of a key-value cluster, one process per node, over TCP.
//!
//! ```text
//! kv_server --id 1 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!           [--cluster-id 1] [--secret S] [--data DIR [--bootstrap]] [--join]
//! ```
//!
//! Membership across processes: start a new process with `--join` and `--peers` listing the
//! running nodes and itself (it starts with an empty configuration and waits), then
//! `kv_client add ID HOST:PORT`: the leader first writes `__peer/ID = HOST:PORT` through the log,
//! so every server learns the address as it applies it (into the transport's address book),
//! then adds the node as a learner and promotes it once caught up. `kv_client remove ID` removes
//! one; stop its process afterwards. The addresses live in the store, so a server restarted
//! from a snapshot learns them again from it, beside those in its `--peers`.
//!
//! The node listens on its own entry in `--peers`. Clients (`kv_client`) connect to the same
//! port with a client handshake (see `common/kv_wire.rs`); a node that does not lead answers
//! with the leader's id and address. Runs until killed. `RUST_LOG=ferraft=info` logs elections
//! and refused handshakes.
//!
//! `--data DIR`: the node keeps its log, hard state and snapshots in `DIR` (a `DiskStorage`
//! stamped with the cluster id and node id, synced on every step), so a killed process restarts
//! from what it persisted. A directory that holds no store yet is created only when asked:
//! with `--bootstrap` (the cluster's first start: each node begins as a voter of `--peers`) or
//! with `--join` (a new node under a new id). Without either the server refuses it, since a
//! voter restarted empty under its old id (its directory wiped or lost) has forgotten its
//! votes and log and can help elect a leader that lacks acknowledged writes. A node whose
//! directory is lost is replaced (removed, then added back under a new id with `--join`),
//! never restarted empty under its old id.
//!
//! Without `--data` the node keeps its state in memory, for trying things out only: a
//! restarted process starts empty, having forgotten its votes and log, and with one more node
//! down that can elect a leader that lacks committed writes.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferraft::storage::{DiskOptions, NodeIdentity};
use ferraft::transport::{AddressBook, TcpConfig, TcpTransport};
use ferraft::{
    Cluster, Config, Configuration, DiskStorage, Error, KvCommand, KvOutput, KvStateMachine,
    LogIndex, MemStorage, MembershipChange, NodeHandle, NodeId, Receipt, StateMachine, Storage,
};

#[path = "common/kv_wire.rs"]
mod kv_wire;

use kv_wire::{serve_in_order, status_answer, KvRequest, KvResponse};

struct Args {
    id: NodeId,
    peers: BTreeMap<NodeId, SocketAddr>,
    cluster_id: u64,
    secret: Option<String>,
    data: Option<PathBuf>,
    join: bool,
}

const USAGE: &str = "usage: kv_server --id N --peers 1=HOST:PORT,2=HOST:PORT,... [--cluster-id N] [--secret S] [--data DIR [--bootstrap]] [--join]";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut id, mut peers, mut cluster_id, mut secret, mut data) = (None, None, 1, None, None);
    let (mut join, mut bootstrap) = (false, false);
    while let Some(flag) = args.next() {
        if flag == "--join" {
            join = true;
            continue;
        }
        if flag == "--bootstrap" {
            bootstrap = true;
            continue;
        }
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
    if join && bootstrap {
        return Err("--join (a new node) and --bootstrap (a new cluster) exclude each other".into());
    }
    if let Some(dir) = &data {
        // NB: a path that is not a directory, or not readable, is the store's to report.
        let fresh = !dir.exists()
            || (dir.is_dir()
                && std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none()));
        if fresh && !join && !bootstrap {
            return Err(format!(
                "{} holds no store: pass --bootstrap on the cluster's first start, or --join for a new node under a new id. If this node's directory was wiped or lost, replace the node (remove it, add it back under a new id with --join): restarted empty under its old id it would have forgotten its votes and log",
                dir.display()
            ));
        }
    }
    Ok(Args { id, peers, cluster_id, secret, data, join })
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

type Node = NodeHandle<ServerMachine>;

/// Keys under which the log records node addresses.
const PEER_KEY: &str = "__peer/";

/// The key-value store, plus the address book kept in the log: applying a `Put` of
/// `__peer/<id>` = `<host:port>` records that node's address for the transport.
struct ServerMachine {
    kv: KvStateMachine,
    book: AddressBook,
}

/// A `__peer/<id>` key holding an address: the transport learns where node `id` listens.
fn learn_peer(book: &AddressBook, key: &str, value: &str) {
    let id = key.strip_prefix(PEER_KEY).and_then(|id| id.parse().ok());
    if let (Some(id), Ok(addr)) = (id, value.parse()) {
        book.insert(NodeId(id), addr);
    }
}

impl StateMachine for ServerMachine {
    type Command = KvCommand;
    type Output = KvOutput;

    fn apply(&mut self, index: LogIndex, command: &KvCommand) -> KvOutput {
        if let KvCommand::Put { key, value } = command {
            learn_peer(&self.book, key, value);
        }
        self.kv.apply(index, command)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.kv.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.kv.restore(snapshot)?;
        // Addresses of nodes added at run time live in the store: learn them again.
        for (key, value) in self.kv.with_prefix(PEER_KEY) {
            learn_peer(&self.book, key, value);
        }
        Ok(())
    }

    fn command_size(command: &KvCommand) -> usize {
        KvStateMachine::command_size(command)
    }

    fn digest(&self) -> u64 {
        self.kv.digest()
    }
}

fn serve(args: Args) -> Result<(), String> {
    let node: Arc<OnceLock<Node>> = Arc::default();
    let mut tcp = TcpConfig::new(args.cluster_id, args.peers.clone());
    tcp.secret = args.secret.as_ref().map(|s| Arc::from(s.as_bytes()));
    tcp.clients = Some(client_handler(Arc::clone(&node), tcp.peers.clone()));
    // Fail early and clearly if the port is taken (the transport would keep retrying).
    drop(
        std::net::TcpListener::bind(args.peers[&args.id])
            .map_err(|e| format!("listening on {}: {e}", args.peers[&args.id]))?,
    );
    let ids: Vec<NodeId> = args.peers.keys().copied().collect();
    let book = tcp.peers.clone();
    let machine = move |_| ServerMachine { kv: KvStateMachine::new(), book: book.clone() };
    let mut builder = Cluster::builder(Config::default(), machine)
        .ids(&ids)
        .local(&[args.id])
        .storage(storage(args.data.clone(), args.cluster_id))
        .transport(TcpTransport::factory(tcp.clone()));
    if args.join {
        builder = builder.joining();
    }
    let cluster = builder.start().map_err(|e| e.to_string())?;
    let handle = cluster.node(args.id).map_err(|e| e.to_string())?;
    let _ = node.set(handle);
    println!("kv_server {} listening on {}", args.id, args.peers[&args.id]);
    loop {
        std::thread::park(); // until killed; the cluster's threads do the work
    }
}

/// Opens the node's storage: on disk in `data` if given, else in memory.
fn storage(
    data: Option<PathBuf>,
    cluster: u64,
) -> impl Fn(NodeId, &Configuration) -> std::io::Result<Box<dyn Storage<KvCommand>>> {
    move |node, bootstrap| match &data {
        Some(dir) => {
            let identity = NodeIdentity { cluster, node };
            let disk = DiskStorage::open(dir, identity, bootstrap, DiskOptions::default())?;
            Ok(Box::new(disk) as Box<dyn Storage<KvCommand>>)
        }
        None => Ok(Box::new(MemStorage::new(bootstrap.clone()))),
    }
}

fn client_handler(
    node: Arc<OnceLock<Node>>,
    peers: AddressBook,
) -> ferraft::transport::ClientHandler {
    Arc::new(move |stream: TcpStream| {
        let Some(node) = node.get().cloned() else { return }; // not started yet: the client retries
        serve_client(stream, node, &peers);
    })
}

/// An answer on its way: ready now, waiting for a proposal to apply, or a membership change
/// to run (on the answering thread, in order).
enum Pending {
    Ready(KvResponse),
    Proposal(Receipt<KvOutput>),
    Change(Box<dyn FnOnce() -> KvResponse + Send>),
}

/// Starts each request as it arrives and answers them in order (`kv_wire::serve_in_order`).
fn serve_client(stream: TcpStream, node: Node, peers: &AddressBook) {
    let peers_w = peers.clone();
    let finish = move |pending| finish(pending, &peers_w);
    serve_in_order(stream, |request| start(&node, request, peers), finish);
}

fn start(node: &Node, request: KvRequest, peers: &AddressBook) -> Pending {
    let command = match request {
        KvRequest::Put { key, value } => KvCommand::Put { key: key.into(), value: value.into() },
        KvRequest::Get { key } => KvCommand::Get { key: key.into() },
        KvRequest::Status => return Pending::Ready(status_answer(node)),
        KvRequest::AddNode { id, addr } => {
            let (node, peers) = (node.clone(), peers.clone());
            return Pending::Change(Box::new(move || add_node(&node, NodeId(id), addr, &peers)));
        }
        KvRequest::RemoveNode { id } => {
            let (node, peers) = (node.clone(), peers.clone());
            let remove = MembershipChange::RemoveNode(NodeId(id));
            return Pending::Change(Box::new(move || change(&node, remove, &peers)));
        }
    };
    match node.propose_async(command) {
        Ok(receipt) => Pending::Proposal(receipt),
        Err(e) => Pending::Ready(KvResponse::Error(e.to_string())),
    }
}

/// Records the new node's address on every server (through the log), then adds it.
fn add_node(node: &Node, id: NodeId, addr: SocketAddr, peers: &AddressBook) -> KvResponse {
    let record = KvCommand::Put {
        key: format!("{PEER_KEY}{}", id.0).into(),
        value: addr.to_string().into(),
    };
    match node.propose(record, Duration::from_secs(10)) {
        Ok(_) => change(node, MembershipChange::AddNode(id), peers),
        Err(e) => refusal(e, peers),
    }
}

fn change(node: &Node, change: MembershipChange, peers: &AddressBook) -> KvResponse {
    match node.change_membership(change, Duration::from_secs(30)) {
        Ok(config) => KvResponse::Members(config.voters.iter().map(|v| v.0).collect()),
        Err(e) => refusal(e, peers),
    }
}

fn refusal(e: Error, peers: &AddressBook) -> KvResponse {
    match e {
        Error::NotLeader { leader_hint } => KvResponse::NotLeader {
            leader: leader_hint.and_then(|id| Some((id.0, peers.get(id)?))),
        },
        e => KvResponse::Error(e.to_string()),
    }
}

/// The answer to a started request, once it is done.
fn finish(pending: Pending, peers: &AddressBook) -> KvResponse {
    match pending {
        Pending::Ready(response) => response,
        Pending::Proposal(mut receipt) => match receipt.wait(Duration::from_secs(10)) {
            Ok(applied) => KvResponse::Value(applied.output.as_deref().map(str::to_owned)),
            Err(e) => refusal(e, peers),
        },
        Pending::Change(run) => run(),
    }
}
