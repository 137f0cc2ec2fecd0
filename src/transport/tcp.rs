//! [`TcpTransport`]: nodes in different processes (or machines) exchanging messages over TCP,
//! in the frames of `frame.rs`.
//!
//! Connections: one per ordered pair of nodes. Node A's messages to B travel on a connection
//! that A opened to B's listening address and that carries traffic one way only (A to B); B's
//! replies travel on B's own connection to A. So a connection has one writer and one reader, no
//! request/response pairing, and no "who dials whom" tie-breaking when both dial at once; the
//! cost is two sockets per pair, which is nothing at cluster sizes.
//!
//! Threads (no thread per message), named after the node (`raft-n1-...`):
//! * per peer, a sender (`raft-n1-to-n2`): owns the peer's bounded queue and its outbound
//!   connection; connects, handshakes, then writes each batch of queued messages in one
//!   `write`. On failure it reconnects after a capped exponential backoff
//!   (`backoff_min` doubling to `backoff_max`), discarding what is queued meanwhile: they would
//!   be stale by then, and Raft retransmits.
//! * one listener (`raft-n1-listen`) accepting connections;
//! * per accepted connection, a reader (`raft-n1-in`): runs the handshake under a read
//!   timeout (`handshake_timeout`), then reads frames and puts messages into the node's inbox.
//!   At most `max_handshakes` connections may be in the handshake at once; at most one inbound
//!   connection per peer is kept (a newer one closes the older).
//!
//! Full-queue policy, as the in-process router: [`Transport::send`] never blocks; a message for
//! a peer whose queue is full, or for an inbox that is full, is dropped, as a lossy network
//! would. Checks at the gateway (STYLE 6): a frame over `max_frame_bytes`, a bad checksum or an
//! undecodable payload closes the connection; a message whose `from` is not the connection's
//! authenticated node, or whose `to` is not this node, is dropped.
//!
//! Shutdown: dropping the transport (the node stops) stops the listener (joined, so the port is
//! free for a restart), closes every accepted connection, and closes the peers' queues, on
//! which each sender thread ends.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::{
    self, encode_value, hello_mac, read_frame, read_value, verify_hello, write_value, Challenge,
    FrameError, FrameKind, Hello, Peer, Verdict,
};
use super::Transport;
use crate::message::Message;
use crate::types::NodeId;

/// Serves one accepted client connection (handshake done, `Peer::Client`) on the connection's
/// own thread, until it returns. The stream has no read timeout.
pub type ClientHandler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// How a node reaches its peers over TCP. Build with [`TcpConfig::new`] and change fields.
#[derive(Clone)]
pub struct TcpConfig {
    /// Every connection's handshake must carry this id: nodes of two clusters never talk.
    pub cluster_id: u64,
    /// Every node's address, this node's included: a node listens on its own entry (unless
    /// `listen` says otherwise) and accepts node handshakes only from the other ids here.
    /// Shared by every clone of the configuration: add a node's address here before adding
    /// the node to the cluster.
    pub peers: AddressBook,
    /// Where to listen, if not this node's entry in `peers` (e.g. `0.0.0.0:7001`).
    pub listen: Option<SocketAddr>,
    /// The largest frame payload accepted; a larger frame closes the connection. Must exceed
    /// the largest message: an AppendEntries of `Config::max_append_bytes` (or one command of
    /// `Config::max_command_bytes`), an InstallSnapshot chunk. Default 32 MiB.
    pub max_frame_bytes: usize,
    /// Messages queued per peer before further ones are dropped. Default 1024.
    pub queue_capacity: usize,
    /// How long an accepted connection may take to complete its handshake. Default 2 s.
    pub handshake_timeout: Duration,
    /// How long a connection attempt may take. Default 1 s.
    pub connect_timeout: Duration,
    /// A write blocked this long (a peer that stopped reading) breaks the connection. Default 5 s.
    pub write_timeout: Duration,
    /// The first pause before reconnecting; it doubles after each failure. Default 10 ms.
    pub backoff_min: Duration,
    /// The longest pause between reconnection attempts. Default 1 s.
    pub backoff_max: Duration,
    /// Connections allowed in the handshake at once; more are closed at once. Default 64.
    pub max_handshakes: usize,
    /// A shared secret: when set, every hello must carry an HMAC-SHA256 made with it, so a
    /// process that does not know it cannot join (see `frame.rs`).
    pub secret: Option<Arc<[u8]>>,
    /// Serves client connections (`Peer::Client` handshakes); `None` refuses them.
    pub clients: Option<ClientHandler>,
}

impl TcpConfig {
    /// A configuration with the defaults above.
    pub fn new(cluster_id: u64, peers: BTreeMap<NodeId, SocketAddr>) -> Self {
        TcpConfig {
            cluster_id,
            peers: AddressBook::new(peers),
            listen: None,
            max_frame_bytes: 32 << 20,
            queue_capacity: 1024,
            handshake_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            max_handshakes: 64,
            secret: None,
            clients: None,
        }
    }

    fn listen_addr(&self, id: NodeId) -> io::Result<SocketAddr> {
        self.listen.or_else(|| self.peers.get(id)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{id} has no address in TcpConfig::peers and no TcpConfig::listen"),
            )
        })
    }

    fn mac(&self, nonce: &[u8; frame::NONCE_BYTES], peer: Peer) -> Vec<u8> {
        self.secret.as_ref().map_or_else(Vec::new, |s| hello_mac(s, nonce, self.cluster_id, peer))
    }
}

/// Node ids and their addresses, shared by every clone (one lock, read on connection setup
/// only, never per message).
#[derive(Clone, Debug, Default)]
pub struct AddressBook(Arc<std::sync::RwLock<BTreeMap<NodeId, SocketAddr>>>);

impl AddressBook {
    /// A book holding `peers`.
    pub fn new(peers: BTreeMap<NodeId, SocketAddr>) -> Self {
        AddressBook(Arc::new(std::sync::RwLock::new(peers)))
    }

    /// The address of `id`, if known.
    pub fn get(&self, id: NodeId) -> Option<SocketAddr> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(&id).copied()
    }

    /// Records (or changes) the address of `id`.
    pub fn insert(&self, id: NodeId, addr: SocketAddr) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(id, addr);
    }

    /// Forgets `id`: its handshakes are refused from now on.
    pub fn remove(&self, id: NodeId) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Every id and address, in id order.
    pub fn all(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why a connection's handshake did not open it.
#[derive(Debug)]
pub enum ConnectError {
    /// The acceptor refused the hello, saying why.
    Refused(String),
    /// The connection failed, timed out, or spoke something else than the protocol.
    Frame(FrameError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(why) => write!(f, "handshake refused: {why}"),
            ConnectError::Frame(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<FrameError> for ConnectError {
    fn from(e: FrameError) -> Self {
        ConnectError::Frame(e)
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Frame(FrameError::Io(e))
    }
}

/// Connects to `addr` and runs the connector's side of the handshake as `peer`: the stream
/// returned is open for `peer`'s kind of traffic, with `config.handshake_timeout` as its read
/// timeout and `config.write_timeout` as its write timeout. Clients use it with `Peer::Client`.
pub fn connect(
    addr: SocketAddr,
    peer: Peer,
    config: &TcpConfig,
) -> Result<TcpStream, ConnectError> {
    let mut stream = TcpStream::connect_timeout(&addr, config.connect_timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(config.handshake_timeout))?;
    stream.set_write_timeout(Some(config.write_timeout))?;
    let max = config.max_frame_bytes;
    let challenge: Challenge = read_value(&mut stream, FrameKind::Challenge, max)?;
    let mac = config.mac(&challenge.nonce, peer);
    let hello = Hello { cluster_id: config.cluster_id, peer, mac };
    write_value(&mut stream, FrameKind::Hello, &hello)?;
    match read_value(&mut stream, FrameKind::Verdict, max)? {
        Verdict::Accepted => Ok(stream),
        Verdict::Refused(why) => Err(ConnectError::Refused(why)),
    }
}

/// What the transport's threads share.
struct Shared {
    id: NodeId,
    config: TcpConfig,
    stop: AtomicBool,
    /// The listener's bound address, once bound (to wake it on shutdown).
    bound: Mutex<Option<SocketAddr>>,
    /// Accepted connections, to close on shutdown; per key, the peer it authenticated as.
    accepted: Mutex<HashMap<u64, (Option<NodeId>, TcpStream)>>,
    next_conn: AtomicU64,
    handshakes: AtomicUsize,
    /// Frame bytes written to peers and read from them (`Transport::wire_bytes`).
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn accepted(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Option<NodeId>, TcpStream)>> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A node's TCP transport: sender threads per peer, a listener, readers per connection. See
/// the module docs for the threads, the queues and what is dropped.
///
/// ```no_run
/// use std::collections::BTreeMap;
/// use ferraft::transport::{TcpConfig, TcpTransport};
/// use ferraft::{Cluster, Config, KvStateMachine, NodeId};
///
/// // This process runs node 1 of three; nodes 2 and 3 run elsewhere.
/// let peers: BTreeMap<NodeId, std::net::SocketAddr> = [
///     (NodeId(1), "127.0.0.1:7001".parse().unwrap()),
///     (NodeId(2), "127.0.0.1:7002".parse().unwrap()),
///     (NodeId(3), "127.0.0.1:7003".parse().unwrap()),
/// ]
/// .into();
/// let ids: Vec<NodeId> = peers.keys().copied().collect();
/// let cluster = Cluster::builder(Config::default(), |_| KvStateMachine::new())
///     .ids(&ids)
///     .local(&[NodeId(1)])
///     .transport(TcpTransport::factory(TcpConfig::new(42, peers)))
///     .start()?;
/// # Ok::<(), ferraft::Error>(())
/// ```
pub struct TcpTransport<C> {
    shared: Arc<Shared>,
    queues: BTreeMap<NodeId, Sender<Message<C>>>,
    listener: Option<JoinHandle<()>>,
    dropped: u64,
}

impl<C> TcpTransport<C>
where
    C: Serialize + DeserializeOwned + Send + 'static,
{
    /// Starts node `id`'s transport: binds its listening address now (an error if it cannot)
    /// and puts every message received from a peer into `inbox`.
    pub fn start(id: NodeId, config: TcpConfig, inbox: Sender<Message<C>>) -> io::Result<Self> {
        let listener = TcpListener::bind(config.listen_addr(id)?)?;
        let addr = listener.local_addr()?;
        let transport = Self::launch(id, config, inbox, Ok(listener));
        *transport.shared.bound.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
        Ok(transport)
    }

    /// A transport factory for [`crate::ClusterBuilder::transport`]: each start of a node
    /// starts its transport. If the address cannot be bound (still held by a process that is
    /// exiting), the listener logs it and keeps retrying with backoff; outbound traffic flows
    /// meanwhile.
    pub fn factory(config: TcpConfig) -> impl Fn(NodeId, Sender<Message<C>>) -> Self + Send + Sync {
        move |id, inbox| {
            let listener = config.listen_addr(id).and_then(TcpListener::bind);
            Self::launch(id, config.clone(), inbox, listener)
        }
    }

    fn launch(
        id: NodeId,
        config: TcpConfig,
        inbox: Sender<Message<C>>,
        listener: io::Result<TcpListener>,
    ) -> Self {
        let shared = Arc::new(Shared {
            id,
            config,
            stop: AtomicBool::new(false),
            bound: Mutex::new(None),
            accepted: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            handshakes: AtomicUsize::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
        });
        let listen = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("raft-n{}-listen", id.0))
                .spawn(move || listen(listener, &shared, &inbox))
                .map_err(|e| tracing::error!(error = %e, "cannot start the TCP listener thread"))
                .ok()
        };
        TcpTransport { shared, queues: BTreeMap::new(), listener: listen, dropped: 0 }
    }

    /// The address the listener is bound to, once bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.shared.bound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages dropped so far because a peer's queue was full or the peer is unknown.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn queue(&mut self, to: NodeId) -> Option<&Sender<Message<C>>> {
        match self.queues.entry(to) {
            MapEntry::Occupied(e) => Some(e.into_mut()),
            MapEntry::Vacant(e) => {
                self.shared.config.peers.get(to)?;
                let (tx, rx) = bounded(self.shared.config.queue_capacity.max(1));
                let shared = Arc::clone(&self.shared);
                std::thread::Builder::new()
                    .name(format!("raft-n{}-to-n{}", self.shared.id.0, to.0))
                    .spawn(move || run_sender(&shared, to, &rx))
                    .map_err(|e| tracing::error!(error = %e, peer = %to, "cannot start a sender"))
                    .ok()?;
                Some(e.insert(tx))
            }
        }
    }
}

impl<C> Transport<C> for TcpTransport<C>
where
    C: Serialize + DeserializeOwned + Send + 'static,
{
    fn send(&mut self, msg: Message<C>) {
        let to = msg.to;
        let Some(queue) = self.queue(to) else {
            self.dropped += 1;
            tracing::debug!(peer = %to, "no address for this peer: message dropped");
            return;
        };
        match queue.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped += 1,
            Err(TrySendError::Disconnected(_)) => {
                // The sender thread ended (it never does while the queue is open): start anew.
                self.dropped += 1;
                self.queues.remove(&to);
            }
        }
    }
}

impl<C> Drop for TcpTransport<C> {
    fn drop(&mut self) {
        self.queues.clear(); // each sender thread sees its queue closed and ends
                             // NB: `stop` is set under the `bound` lock, which the listener holds while it publishes
                             // its address: either it sees `stop` and ends, or we see its address and wake it.
        let bound = {
            let bound = self.shared.bound.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.stop.store(true, Ordering::Relaxed);
            *bound
        };
        let woken = bound.is_none_or(|mut addr| {
            if addr.ip().is_unspecified() {
                addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
            // Wakes the listener's `accept`, which then sees `stop`.
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        });
        if let Some(listener) = self.listener.take().filter(|_| woken) {
            let _ = listener.join(); // the port is free once this returns
        }
        for (_, (_, stream)) in self.shared.accepted().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// The sender thread: connect, handshake, pump the queue; on failure back off and retry.
fn run_sender<C: Serialize>(shared: &Shared, to: NodeId, queue: &Receiver<Message<C>>) {
    let config = &shared.config;
    let mut backoff = config.backoff_min;
    let mut failures = 0u32;
    while !shared.stopped() {
        // NB: looked up at each attempt: the address book may change (a node moved).
        let Some(addr) = config.peers.get(to) else { return };
        match connect(addr, Peer::Node(shared.id), config) {
            Ok(stream) => {
                tracing::debug!(peer = %to, %addr, "connected");
                backoff = config.backoff_min;
                failures = 0;
                match pump(stream, queue, config.max_frame_bytes, &shared.bytes_sent) {
                    Ok(()) => return, // the queue closed: the node stopped
                    Err(e) => tracing::debug!(peer = %to, error = %e, "connection lost"),
                }
            }
            Err(ConnectError::Refused(why)) => {
                tracing::warn!(peer = %to, %addr, reason = %why, "peer refused our handshake");
            }
            Err(e) => {
                failures += 1;
                // NB: a peer that is down is routine; say so once, then quietly retry.
                if failures == 1 {
                    tracing::info!(peer = %to, %addr, error = %e, "cannot reach peer; retrying");
                }
            }
        }
        if !discard_for(queue, backoff) {
            return;
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// Waits `pause`, dropping what is queued meanwhile. False if the queue closed.
fn discard_for<C>(queue: &Receiver<Message<C>>, pause: Duration) -> bool {
    let until = std::time::Instant::now() + pause;
    loop {
        match queue.recv_deadline(until) {
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// How many queued messages one write may carry.
const MAX_BATCH: usize = 256;

/// Writes queued messages, each batch in one `write`, until the queue closes (`Ok`) or the
/// connection fails (`Err`).
fn pump<C: Serialize>(
    mut stream: TcpStream,
    queue: &Receiver<Message<C>>,
    max_frame_bytes: usize,
    bytes_sent: &AtomicU64,
) -> io::Result<()> {
    use std::io::Write;
    let mut buf = Vec::new();
    while let Ok(first) = queue.recv() {
        buf.clear();
        for msg in std::iter::once(first).chain(queue.try_iter().take(MAX_BATCH - 1)) {
            let start = buf.len();
            encode_value(FrameKind::Message, &msg, &mut buf);
            if buf.len() - start - frame::HEADER_BYTES > max_frame_bytes {
                // The peer would close the connection on it: drop it alone, loudly.
                tracing::warn!(to = %msg.to, bytes = buf.len() - start, max = max_frame_bytes,
                    "message larger than max_frame_bytes dropped");
                buf.truncate(start);
            }
        }
        stream.write_all(&buf)?;
        bytes_sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// The listener thread: binds if needed (retrying), accepts, and starts a reader per connection.
fn listen<C>(listener: io::Result<TcpListener>, shared: &Arc<Shared>, inbox: &Sender<Message<C>>)
where
    C: DeserializeOwned + Send + 'static,
{
    let Some(listener) = bind_until_stopped(listener, shared) else { return };
    for conn in listener.incoming() {
        if shared.stopped() {
            return;
        }
        let stream = match conn {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.handshakes.load(Ordering::Relaxed) >= shared.config.max_handshakes {
            tracing::warn!(
                max = shared.config.max_handshakes,
                "too many handshakes: connection closed"
            );
            continue;
        }
        shared.handshakes.fetch_add(1, Ordering::Relaxed);
        let (conn_shared, inbox) = (Arc::clone(shared), inbox.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("raft-n{}-in", shared.id.0))
            .spawn(move || serve(stream, &conn_shared, &inbox));
        if let Err(e) = spawned {
            shared.handshakes.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(error = %e, "cannot start a connection thread");
        }
    }
}

fn bind_until_stopped(listener: io::Result<TcpListener>, shared: &Shared) -> Option<TcpListener> {
    let mut listener = listener;
    let mut backoff = shared.config.backoff_min;
    loop {
        match listener {
            Ok(l) => return publish(l, shared),
            Err(e) => tracing::warn!(error = %e, "cannot listen yet; retrying"),
        }
        std::thread::sleep(backoff);
        if shared.stopped() {
            return None;
        }
        backoff = (backoff * 2).min(shared.config.backoff_max);
        listener = shared.config.listen_addr(shared.id).and_then(TcpListener::bind);
    }
}

/// Records the listener's address, unless the transport is already stopping.
fn publish(listener: TcpListener, shared: &Shared) -> Option<TcpListener> {
    let mut bound = shared.bound.lock().unwrap_or_else(|p| p.into_inner());
    if shared.stopped() {
        return None;
    }
    *bound = Some(listener.local_addr().ok()?);
    Some(listener)
}

/// Decrements the handshake count when the handshake ends, however it ends.
struct HandshakeSlot<'a>(&'a AtomicUsize);

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One accepted connection: handshake, then node messages or a client.
fn serve<C: DeserializeOwned>(mut stream: TcpStream, shared: &Shared, inbox: &Sender<Message<C>>) {
    let slot = HandshakeSlot(&shared.handshakes);
    let remote = stream.peer_addr().ok();
    let peer = match accept(&mut stream, shared) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::debug!(?remote, error = %e, "handshake failed");
            return;
        }
    };
    drop(slot);
    if stream.set_read_timeout(None).is_err() {
        return;
    }
    match peer {
        Peer::Node(from) => {
            let Some(conn) = register(shared, from, &stream) else { return };
            read_messages(stream, shared, from, inbox);
            shared.accepted().remove(&conn);
        }
        Peer::Client => {
            if let Some(handler) = &shared.config.clients {
                handler(stream);
            }
        }
    }
}

/// The acceptor's side of the handshake. A refusal is logged, answered and returned as an error.
fn accept(stream: &mut TcpStream, shared: &Shared) -> Result<Peer, ConnectError> {
    let config = &shared.config;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(config.handshake_timeout))?;
    stream.set_write_timeout(Some(config.write_timeout))?;
    let nonce: [u8; frame::NONCE_BYTES] = rand::random();
    write_value(stream, FrameKind::Challenge, &Challenge { nonce })?;
    let hello: Hello = read_value(stream, FrameKind::Hello, config.max_frame_bytes)?;
    if let Err(why) = judge(shared, &nonce, &hello) {
        let remote = stream.peer_addr().ok();
        tracing::warn!(?remote, claimed = ?hello.peer, reason = %why, "handshake refused");
        let _ = write_value(stream, FrameKind::Verdict, &Verdict::Refused(why.clone()));
        return Err(ConnectError::Refused(why));
    }
    write_value(stream, FrameKind::Verdict, &Verdict::Accepted)?;
    Ok(hello.peer)
}

/// Whether a hello may open a connection; if not, why (sent back and logged).
fn judge(shared: &Shared, nonce: &[u8; frame::NONCE_BYTES], hello: &Hello) -> Result<(), String> {
    let config = &shared.config;
    if hello.cluster_id != config.cluster_id {
        return Err(format!(
            "cluster id {} is not this cluster's ({}): check --cluster-id",
            hello.cluster_id, config.cluster_id
        ));
    }
    if let Some(secret) = &config.secret {
        if !verify_hello(secret, nonce, hello) {
            return Err("authentication failed: wrong or missing shared secret".into());
        }
    }
    match hello.peer {
        Peer::Node(id) if id == shared.id => Err(format!("{id} is this node itself")),
        Peer::Node(id) if config.peers.get(id).is_none() => {
            Err(format!("{id} is not in this node's peer list"))
        }
        Peer::Client if config.clients.is_none() => Err("this node serves no clients".into()),
        _ => Ok(()),
    }
}

/// Keeps `stream` for shutdown, closing an older connection from the same peer (it reconnected).
fn register(shared: &Shared, from: NodeId, stream: &TcpStream) -> Option<u64> {
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let clone = stream.try_clone().ok()?;
    let mut accepted = shared.accepted();
    if shared.stopped() {
        return None;
    }
    accepted.retain(|_, (peer, old)| {
        let stale = *peer == Some(from);
        if stale {
            let _ = old.shutdown(Shutdown::Both);
        }
        !stale
    });
    accepted.insert(conn, (Some(from), clone));
    Some(conn)
}

/// Reads `Message` frames from an authenticated peer into the inbox until the connection ends
/// or breaks a rule.
fn read_messages<C: DeserializeOwned>(
    stream: TcpStream,
    shared: &Shared,
    from: NodeId,
    inbox: &Sender<Message<C>>,
) {
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    loop {
        let frame = match read_frame(&mut reader, shared.config.max_frame_bytes) {
            Ok(frame) => frame,
            Err(FrameError::Io(e)) => {
                tracing::debug!(peer = %from, error = %e, "connection closed");
                return;
            }
            Err(e) => {
                tracing::warn!(peer = %from, error = %e, "bad frame: connection closed");
                return;
            }
        };
        let bytes = (frame.payload.len() + frame::HEADER_BYTES) as u64;
        shared.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        if frame.kind != FrameKind::Message {
            tracing::warn!(peer = %from, kind = ?frame.kind, "unexpected frame: connection closed");
            return;
        }
        let msg: Message<C> = match frame::decode_payload(&frame.payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(peer = %from, error = %e, "undecodable message: connection closed");
                return;
            }
        };
        if (msg.from != from && !bugs::accepts_spoofed_senders()) || msg.to != shared.id {
            tracing::warn!(peer = %from, claimed_from = %msg.from, to = %msg.to,
                "message not from this connection's node or not for this node: dropped");
            continue;
        }
        match inbox.try_send(msg) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// Test-only bug switch: accept messages whose `from` is not the connection's authenticated
/// node, to show that the spoofing test below notices when the gateway check is gone.
mod bugs {
    #[cfg(test)]
    pub static ACCEPT_SPOOFED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    #[cfg(test)]
    pub fn accepts_spoofed_senders() -> bool {
        ACCEPT_SPOOFED.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub fn accepts_spoofed_senders() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Body;
    use crate::types::Term;
    use std::io::Write;

    fn from(id: u64) -> Message<u64> {
        Message { from: NodeId(id), to: NodeId(1), term: Term(1), body: Body::TimeoutNow }
    }

    /// Authenticated as n2, sends one message claiming n3, then a genuine one; returns what
    /// node 1's inbox received first.
    fn first_delivered() -> Message<u64> {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let mut config = TcpConfig::new(5, [(NodeId(2), loopback), (NodeId(3), loopback)].into());
        config.listen = Some(loopback);
        let (tx, inbox) = bounded(8);
        let node = TcpTransport::start(NodeId(1), config.clone(), tx).expect("listen");
        let addr = node.local_addr().expect("bound");
        let mut stream = connect(addr, Peer::Node(NodeId(2)), &config).expect("handshake");
        let mut out = Vec::new();
        encode_value(FrameKind::Message, &from(3), &mut out);
        encode_value(FrameKind::Message, &from(2), &mut out);
        stream.write_all(&out).expect("write");
        inbox.recv_timeout(Duration::from_secs(20)).expect("a message arrives")
    }

    #[test]
    fn the_spoofing_check_is_what_drops_a_spoofed_sender() {
        assert_eq!(first_delivered(), from(2), "the spoofed message was dropped");
        bugs::ACCEPT_SPOOFED.store(true, Ordering::Relaxed);
        let with_bug = first_delivered();
        bugs::ACCEPT_SPOOFED.store(false, Ordering::Relaxed);
        assert_eq!(with_bug, from(3), "without the check, the spoofed message gets through");
    }
}
