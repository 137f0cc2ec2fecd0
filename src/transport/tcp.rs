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
//!   be stale by then, and Raft retransmits. It ends, closing its connection and freeing its
//!   queue, once its peer leaves the [`AddressBook`] (checked at each connection attempt and,
//!   while idle, every [`SENDER_RECHECK`]) or nothing was queued for it for `idle_timeout` (a
//!   removed node nobody sends to any more, connected or not); the next message for that peer
//!   starts a new sender. [`TcpTransport::senders`] counts the running ones.
//! * one listener (`raft-n1-listen`) accepting connections;
//! * per accepted connection, a reader (`raft-n1-in`): runs the handshake, which must end
//!   within `handshake_timeout` of the accept (one deadline for the whole exchange, so a peer
//!   trickling bytes loses its slot at it), then reads frames and puts messages into the
//!   node's inbox. At most `max_handshakes` connections may be in the handshake at once; at
//!   most one inbound connection per peer is kept (a newer one closes the older).
//!
//! Full-queue policy, as the in-process router: [`Transport::send`] never blocks; a message for
//! a peer whose queue is full (`queue_capacity` messages, or `max_queue_bytes` bytes counted
//! until the write carrying them is done: a peer that stops reading holds no more), or for an
//! [`Inbox`] that is full, is dropped, as a lossy network would. Checks at the gateway (STYLE
//! 6): a frame over `max_frame_bytes`, a bad checksum or an undecodable payload closes the
//! connection; a message whose `from` is not the connection's authenticated node, or whose
//! `to` is not this node, is dropped.
//!
//! Configuration: [`TcpTransport::start`] refuses an invalid [`TcpConfig`] with a
//! [`TcpConfigError`] ([`TcpConfig::validate`]). Durations combine with saturating arithmetic,
//! so no value, however large, panics a thread (a pause too long for an `Instant` is waited
//! until the transport stops).
//!
//! Shutdown: dropping the transport (the node stops) ends every thread it started before it
//! returns ([`TcpTransport::threads`] counts them), so a process can stop a node and start it
//! again on the same port. It wakes and joins the listener (the port is free, and no reader
//! starts after it), closes the peers' queues (a sender waiting on one ends), shuts down every
//! open socket, accepted or connected (`sockets.rs`: a thread blocked in a handshake, a read,
//! or a write to a peer that stopped reading returns at once), and joins the senders and the
//! readers. Bounds: a sender in the middle of establishing a connection finishes that first
//! (at most `connect_timeout`); a [`ClientHandler`] is the user's code, given
//! [`CLIENT_HANDLER_GRACE`] to return once its stream fails, then left running with a warning.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::{
    self, encode_value, hello_mac, read_frame, read_value, verify_hello, write_value, Challenge,
    FrameError, FrameKind, Hello, Peer, Verdict,
};
use super::sockets::{Reader, Side, Sockets, Threads, Tracked};
use super::{ByteBudget, Inbox, Transport, MAX_QUEUE_BYTES};
use crate::config::MAX_INBOX_CAPACITY;
use crate::message::Message;
use crate::node::estimated_bytes;
use crate::types::NodeId;

/// Serves one accepted client connection (handshake done, `Peer::Client`) on the connection's
/// own thread, until it returns. The stream has no read timeout. When the transport stops, the
/// stream is shut down (its reads and writes fail): the handler should then return, within
/// [`CLIENT_HANDLER_GRACE`].
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
    /// `Config::max_command_bytes`), an InstallSnapshot chunk. At least 1, at most
    /// [`frame::MAX_PAYLOAD_BYTES`]. Default 32 MiB.
    pub max_frame_bytes: usize,
    /// Messages queued per peer before further ones are dropped; the queue is allocated in
    /// full when the first message for the peer is queued, so it is at most
    /// [`MAX_INBOX_CAPACITY`](crate::MAX_INBOX_CAPACITY) (0 counts as 1). Default 1024.
    pub queue_capacity: usize,
    /// Bytes of messages queued per peer (or being written to it) before further ones are
    /// dropped, each counted as [`Inbox::message_bytes`] counts it; a message larger than
    /// this still goes alone into an empty queue. Without it a peer that stops reading holds
    /// up to `queue_capacity` messages of any size in this process (1024 megabyte
    /// AppendEntries: a GiB). At least 1, at most [`MAX_QUEUE_BYTES`]. Default 64 MiB: eight
    /// of a leader's default windows (`Config::max_inflight_bytes`), so a peer that keeps up
    /// never meets it.
    pub max_queue_bytes: usize,
    /// How long a handshake may take in all, from the accept (or, connecting, from the
    /// connection's establishment) to the verdict; a connection still in it then is closed.
    /// Must be positive. Default 2 s.
    pub handshake_timeout: Duration,
    /// How long a connection attempt may take. Must be positive. Default 1 s.
    pub connect_timeout: Duration,
    /// A write blocked this long (a peer that stopped reading) breaks the connection. Must be
    /// positive. Default 5 s.
    pub write_timeout: Duration,
    /// The first pause before reconnecting (and before retrying to bind the listening address);
    /// it doubles after each failure. Must be positive. Default 10 ms.
    pub backoff_min: Duration,
    /// The longest pause between reconnection attempts; at least `backoff_min`. Default 1 s.
    pub backoff_max: Duration,
    /// A peer's sender thread that has had nothing to send for this long ends, closing its
    /// connection (a later message starts it again, reconnecting). Must be positive. Default
    /// 60 s: a leader talks to every member far more often; what ends are the senders to
    /// removed nodes and, on a follower, to other followers (its next campaign reconnects:
    /// a connection and a handshake before its first vote request).
    pub idle_timeout: Duration,
    /// Connections allowed in the handshake at once; more are closed at once. At least 1.
    /// Default 64.
    pub max_handshakes: usize,
    /// A shared secret: when set, every hello must carry an HMAC-SHA256 made with it, so a
    /// process that does not know it cannot join (see `frame.rs`).
    pub secret: Option<Arc<[u8]>>,
    /// Serves client connections (`Peer::Client` handshakes); `None` refuses them.
    pub clients: Option<ClientHandler>,
    /// Client connections served at once (each holds a thread until its handler returns);
    /// a client's handshake beyond is refused, saying so. At least 1. Default 1024.
    pub max_clients: usize,
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
            max_queue_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            max_handshakes: 64,
            secret: None,
            clients: None,
            max_clients: 1024,
        }
    }

    /// Checks the fields that would make the transport fail on every connection, spin, or
    /// refuse everything. [`TcpTransport::start`] calls it; call it yourself before
    /// [`TcpTransport::factory`], whose transports cannot return an error.
    pub fn validate(&self) -> Result<(), TcpConfigError> {
        let durations = [
            ("handshake_timeout", self.handshake_timeout),
            ("connect_timeout", self.connect_timeout),
            ("write_timeout", self.write_timeout),
            ("backoff_min", self.backoff_min),
            ("idle_timeout", self.idle_timeout),
        ];
        if let Some(&(field, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(TcpConfigError::ZeroDuration { field });
        }
        if self.backoff_min > self.backoff_max {
            return Err(TcpConfigError::InvertedBackoff {
                min: self.backoff_min,
                max: self.backoff_max,
            });
        }
        let limits = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_handshakes", self.max_handshakes),
            ("max_queue_bytes", self.max_queue_bytes),
            ("max_clients", self.max_clients),
        ];
        if let Some(&(field, _)) = limits.iter().find(|(_, n)| *n == 0) {
            return Err(TcpConfigError::ZeroLimit { field });
        }
        if self.queue_capacity > MAX_INBOX_CAPACITY {
            return Err(TcpConfigError::LimitTooLarge {
                field: "queue_capacity",
                value: self.queue_capacity,
                max: MAX_INBOX_CAPACITY,
            });
        }
        if self.max_queue_bytes > MAX_QUEUE_BYTES {
            return Err(TcpConfigError::QueueLimitTooLarge {
                max_queue_bytes: self.max_queue_bytes,
            });
        }
        if self.max_frame_bytes > frame::MAX_PAYLOAD_BYTES {
            return Err(TcpConfigError::FrameLimitTooLarge {
                max_frame_bytes: self.max_frame_bytes,
            });
        }
        Ok(())
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

/// Why a [`TcpConfig`] was refused ([`TcpConfig::validate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpConfigError {
    /// A duration that must be positive is zero.
    ZeroDuration {
        /// The field's name.
        field: &'static str,
    },
    /// `backoff_min` exceeds `backoff_max`.
    InvertedBackoff {
        /// `backoff_min`.
        min: Duration,
        /// `backoff_max`.
        max: Duration,
    },
    /// A limit that must be at least 1 is zero.
    ZeroLimit {
        /// The field's name.
        field: &'static str,
    },
    /// `max_frame_bytes` exceeds what a frame's length field can describe.
    FrameLimitTooLarge {
        /// The configured `max_frame_bytes`.
        max_frame_bytes: usize,
    },
    /// A limit that sizes an allocation made in full (`queue_capacity`) exceeds its maximum.
    LimitTooLarge {
        /// The field's name.
        field: &'static str,
        /// The configured value.
        value: usize,
        /// The largest accepted value.
        max: usize,
    },
    /// `max_queue_bytes` exceeds [`MAX_QUEUE_BYTES`].
    QueueLimitTooLarge {
        /// The configured `max_queue_bytes`.
        max_queue_bytes: usize,
    },
}

impl std::fmt::Display for TcpConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcpConfigError::ZeroDuration { field } => {
                let effect = match *field {
                    "backoff_min" => "a failed connection would be retried in a busy loop",
                    "idle_timeout" => "a peer's connection would close whenever its queue empties",
                    _ => "every connection would fail at once",
                };
                write!(f, "TcpConfig::{field} is zero: {effect}; give it a positive duration (TcpConfig::new sets a working default)")
            }
            TcpConfigError::InvertedBackoff { min, max } => write!(
                f,
                "TcpConfig::backoff_min ({min:?}) exceeds backoff_max ({max:?}): backoff_min is the first pause, backoff_max the cap it doubles up to; swap or lower them"
            ),
            TcpConfigError::ZeroLimit { field } => {
                let effect = match *field {
                    "max_handshakes" => "every incoming connection would be closed",
                    "max_clients" => "every client connection would be refused",
                    "max_queue_bytes" => "a peer's queue would hold one message at a time",
                    _ => "every message would be dropped",
                };
                write!(f, "TcpConfig::{field} is 0: {effect}; it must be at least 1 (TcpConfig::new sets a working default)")
            }
            TcpConfigError::LimitTooLarge { field, value, max } => write!(
                f,
                "TcpConfig::{field} ({value}) exceeds {max}: a peer's queue of that many slots is allocated in full when its first message is queued; lower it (the default is 1024)"
            ),
            TcpConfigError::QueueLimitTooLarge { max_queue_bytes } => write!(
                f,
                "TcpConfig::max_queue_bytes ({max_queue_bytes}) exceeds {MAX_QUEUE_BYTES}, more than one peer's queue should ever hold: lower it (the default, 64 MiB, is eight replication windows)"
            ),
            TcpConfigError::FrameLimitTooLarge { max_frame_bytes } => write!(
                f,
                "TcpConfig::max_frame_bytes ({max_frame_bytes}) exceeds {}, the most a frame's 4-byte length can describe: lower it",
                frame::MAX_PAYLOAD_BYTES
            ),
        }
    }
}

impl std::error::Error for TcpConfigError {}

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

    /// Forgets `id`: its handshakes are refused from now on, and the senders to it end (within
    /// [`SENDER_RECHECK`] if idle, at their next connection attempt otherwise).
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

/// Connects to `addr` and runs the connector's side of the handshake as `peer`, which must
/// end within `config.handshake_timeout` of the connection's establishment: the stream
/// returned is open for `peer`'s kind of traffic, with `config.handshake_timeout` as its read
/// timeout and `config.write_timeout` as its write timeout. Clients use it with `Peer::Client`.
pub fn connect(
    addr: SocketAddr,
    peer: Peer,
    config: &TcpConfig,
) -> Result<TcpStream, ConnectError> {
    let stream = TcpStream::connect_timeout(&addr, config.connect_timeout)?;
    handshake(stream, peer, config)
}

/// The connector's side of the handshake on a connection just established (see [`connect`]).
fn handshake(stream: TcpStream, peer: Peer, config: &TcpConfig) -> Result<TcpStream, ConnectError> {
    let mut wire = Deadline::new(&stream, Instant::now(), config);
    stream.set_nodelay(true)?;
    let max = frame::MAX_HANDSHAKE_FRAME_BYTES;
    let challenge: Challenge = read_value(&mut wire, FrameKind::Challenge, max)?;
    let mac = config.mac(&challenge.nonce, peer);
    let hello = Hello { cluster_id: config.cluster_id, peer, mac };
    write_value(&mut wire, FrameKind::Hello, &hello)?;
    match read_value(&mut wire, FrameKind::Verdict, max)? {
        Verdict::Accepted => {
            stream.set_read_timeout(Some(config.handshake_timeout))?;
            stream.set_write_timeout(Some(config.write_timeout))?;
            Ok(stream)
        }
        Verdict::Refused(why) => Err(ConnectError::Refused(why)),
    }
}

/// A stream under one deadline for a whole exchange (the handshake): each read or write waits
/// at most for what is left of it, so a peer trickling bytes cannot stretch the exchange.
struct Deadline<'a> {
    stream: &'a TcpStream,
    /// `None`: `handshake_timeout` reaches past what an `Instant` holds, so no deadline.
    until: Option<Instant>,
    timeout: Duration,
    write_timeout: Duration,
}

impl<'a> Deadline<'a> {
    fn new(stream: &'a TcpStream, started: Instant, config: &TcpConfig) -> Self {
        Deadline {
            stream,
            until: started.checked_add(config.handshake_timeout),
            timeout: config.handshake_timeout,
            write_timeout: config.write_timeout,
        }
    }

    /// What is left of the deadline (`None`: no deadline); an error once it passed.
    fn left(&self) -> io::Result<Option<Duration>> {
        let Some(until) = self.until else { return Ok(None) };
        match until.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(Some(left)),
            _ => Err(self.expired()),
        }
    }

    fn expired(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "handshake not done within TcpConfig::handshake_timeout ({:?}): raise it if the network is that slow",
                self.timeout
            ),
        )
    }

    /// A timed-out socket call (Unix says `WouldBlock`) as the deadline's error.
    fn name_timeout(&self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.expired(),
            _ => e,
        }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(self.left()?)?;
        let mut stream = self.stream;
        stream.read(buf).map_err(|e| self.name_timeout(e))
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let wait = self.left()?.map_or(self.write_timeout, |left| left.min(self.write_timeout));
        self.stream.set_write_timeout(Some(wait))?;
        let mut stream = self.stream;
        stream.write(buf).map_err(|e| self.name_timeout(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut stream = self.stream;
        stream.flush()
    }
}

/// What the transport's threads share.
struct Shared {
    id: NodeId,
    config: TcpConfig,
    stop: AtomicBool,
    /// The listener's bound address, once bound (to wake it on shutdown).
    bound: Mutex<Option<SocketAddr>>,
    /// Every open socket, accepted or connected, to shut down on stop.
    sockets: Sockets,
    /// The threads running, and the readers' handles, to join on stop.
    threads: Threads,
    handshakes: AtomicUsize,
    /// Client connections being served (`TcpConfig::max_clients`).
    clients: AtomicUsize,
    /// Sender threads running, and how many ended so far (the transport then drops their
    /// queues).
    senders: AtomicUsize,
    senders_ended: AtomicU64,
    /// Frame bytes written to peers and read from them (`Transport::wire_bytes`).
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
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
    queues: BTreeMap<NodeId, PeerQueue<C>>,
    /// `Shared::senders_ended` when the queues were last pruned.
    pruned_at: u64,
    listener: Option<JoinHandle<()>>,
    dropped: u64,
    /// How the node measures a command, to count a message's bytes (from its inbox).
    sizer: fn(&C) -> usize,
}

/// A peer's queue, the bytes it holds, and its sender thread (whether it still runs, and its
/// handle to join).
struct PeerQueue<C> {
    tx: Sender<(Message<C>, usize)>,
    budget: Arc<ByteBudget>,
    running: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A peer's queue as its sender thread takes from it: each message with the bytes it counts
/// for, given back once it is written (or discarded).
struct PeerRx<C> {
    rx: Receiver<(Message<C>, usize)>,
    budget: Arc<ByteBudget>,
}

impl<C> PeerQueue<C> {
    /// Queues `msg`, counting `bytes`, or gives it back: `Full` if the queue holds
    /// `queue_capacity` messages or has no room for `bytes` in `max_queue_bytes`.
    fn try_send(&self, msg: Message<C>, bytes: usize) -> Result<(), TrySendError<Message<C>>> {
        if !self.budget.try_take(bytes) {
            return Err(TrySendError::Full(msg));
        }
        self.tx.try_send((msg, bytes)).map_err(|e| {
            self.budget.give_back(bytes);
            match e {
                TrySendError::Full((msg, _)) => TrySendError::Full(msg),
                TrySendError::Disconnected((msg, _)) => TrySendError::Disconnected(msg),
            }
        })
    }

    /// Waits for the sender thread to end (at once if its queue was closed, or it ended).
    fn join(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// Held by a sender thread (made before it is spawned): counts it running until dropped.
struct SenderAlive {
    shared: Arc<Shared>,
    running: Arc<AtomicBool>,
}

impl SenderAlive {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.senders.fetch_add(1, Ordering::Relaxed);
        SenderAlive { shared: Arc::clone(shared), running: Arc::new(AtomicBool::new(true)) }
    }
}

impl Drop for SenderAlive {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Release);
        self.shared.senders.fetch_sub(1, Ordering::Relaxed);
        self.shared.senders_ended.fetch_add(1, Ordering::Release);
    }
}

impl<C> TcpTransport<C>
where
    C: Serialize + DeserializeOwned + Send + 'static,
{
    /// Starts node `id`'s transport: binds its listening address now (an error if it cannot)
    /// and puts every message received from a peer into `inbox` (a node's [`Inbox`], or a
    /// plain channel). An invalid `config` is an `InvalidInput` error carrying the
    /// [`TcpConfigError`] (`get_ref` and downcast it).
    pub fn start(id: NodeId, config: TcpConfig, inbox: impl Into<Inbox<C>>) -> io::Result<Self> {
        config.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(config.listen_addr(id)?)?;
        let addr = listener.local_addr()?;
        let transport = Self::launch(id, config, inbox.into(), Ok(listener));
        *transport.shared.bound.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
        Ok(transport)
    }

    /// A transport factory for [`crate::ClusterBuilder::transport`]: each start of a node
    /// starts its transport. If the address cannot be bound (still held by a process that is
    /// exiting), the listener logs it and keeps retrying with backoff; outbound traffic flows
    /// meanwhile.
    ///
    /// NB: a transport cannot return an error from here: check the configuration first with
    /// [`TcpConfig::validate`]. An invalid one is logged at each start, and its transports run
    /// as configured (without panicking) but fail as the error says.
    pub fn factory(config: TcpConfig) -> impl Fn(NodeId, Inbox<C>) -> Self + Send + Sync {
        move |id, inbox| {
            if let Err(e) = config.validate() {
                tracing::error!(node = %id, error = %e, "invalid TcpConfig");
            }
            let listener = config.listen_addr(id).and_then(TcpListener::bind);
            Self::launch(id, config.clone(), inbox, listener)
        }
    }

    fn launch(
        id: NodeId,
        config: TcpConfig,
        inbox: Inbox<C>,
        listener: io::Result<TcpListener>,
    ) -> Self {
        let sizer = inbox.sizer();
        let shared = Arc::new(Shared {
            id,
            config,
            stop: AtomicBool::new(false),
            bound: Mutex::new(None),
            sockets: Sockets::default(),
            threads: Threads::default(),
            handshakes: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            senders: AtomicUsize::new(0),
            senders_ended: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
        });
        let listen = {
            let (shared, alive) = (Arc::clone(&shared), shared.threads.alive());
            std::thread::Builder::new()
                .name(format!("raft-n{}-listen", id.0))
                .spawn(move || {
                    let _alive = alive;
                    listen(listener, &shared, &inbox);
                })
                .map_err(|e| tracing::error!(error = %e, "cannot start the TCP listener thread"))
                .ok()
        };
        let queues = BTreeMap::new();
        TcpTransport { shared, queues, pruned_at: 0, listener: listen, dropped: 0, sizer }
    }

    /// The address the listener is bound to, once bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.shared.bound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages dropped so far because a peer's queue was full (in messages or in bytes) or
    /// the peer is unknown.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes of the messages waiting in the peers' queues now, or being written (counted as
    /// [`Inbox::message_bytes`] counts them): at most `max_queue_bytes` per peer, or one
    /// message if a single one is larger.
    pub fn queued_bytes(&self) -> usize {
        self.queues.values().map(|q| q.budget.held()).sum()
    }

    /// Sender threads running now: one per peer messages went to lately (see the module
    /// docs for when one ends).
    pub fn senders(&self) -> usize {
        self.shared.senders.load(Ordering::Relaxed)
    }

    /// Every thread this transport runs now: its listener, its senders, and a reader per
    /// accepted connection (a client handler runs on its connection's reader). All of them
    /// have ended when the transport's drop returns (see the module docs, "Shutdown").
    pub fn threads(&self) -> usize {
        self.shared.threads.running()
    }

    fn queue(&mut self, to: NodeId) -> Option<&PeerQueue<C>> {
        match self.queues.entry(to) {
            MapEntry::Occupied(e) => Some(e.into_mut()),
            MapEntry::Vacant(e) => {
                self.shared.config.peers.get(to)?;
                let (tx, rx) = bounded(self.shared.config.queue_capacity.max(1));
                let budget = Arc::new(ByteBudget::new(self.shared.config.max_queue_bytes));
                let rx = PeerRx { rx, budget: Arc::clone(&budget) };
                let alive = SenderAlive::new(&self.shared);
                let running = Arc::clone(&alive.running);
                let shared = Arc::clone(&self.shared);
                let thread_alive = self.shared.threads.alive();
                // NB: if the spawn fails, the closure drops, and `alive` with it.
                let thread = std::thread::Builder::new()
                    .name(format!("raft-n{}-to-n{}", self.shared.id.0, to.0))
                    .spawn(move || {
                        let _alive = (thread_alive, alive);
                        run_sender(&shared, to, &rx);
                        // NB: the queue closes before the sender counts as ended, so a
                        // message sent after this is refused and goes to a new sender; one
                        // sent between the sender's decision to end and here is lost, as
                        // the network may lose it (Raft sends again).
                        drop(rx);
                    })
                    .map_err(|e| tracing::error!(error = %e, peer = %to, "cannot start a sender"))
                    .ok()?;
                Some(e.insert(PeerQueue { tx, budget, running, thread }))
            }
        }
    }

    /// Drops the queues of senders that ended (idle, or their peer left the address book), so
    /// that their channels are freed, and joins their threads. One atomic load unless one
    /// ended.
    fn prune(&mut self) {
        let ended = self.shared.senders_ended.load(Ordering::Acquire);
        if ended != self.pruned_at {
            self.pruned_at = ended;
            let peers: Vec<NodeId> = self.queues.keys().copied().collect();
            for peer in peers {
                if !self.queues[&peer].running.load(Ordering::Acquire) {
                    if let Some(queue) = self.queues.remove(&peer) {
                        queue.join();
                    }
                }
            }
        }
    }
}

impl<C> Transport<C> for TcpTransport<C>
where
    C: Serialize + DeserializeOwned + Send + 'static,
{
    fn send(&mut self, msg: Message<C>) {
        self.prune();
        let to = msg.to;
        let bytes = usize::try_from(estimated_bytes(&msg, self.sizer)).unwrap_or(usize::MAX);
        let Some(queue) = self.queue(to) else {
            self.dropped += 1;
            tracing::debug!(peer = %to, "no address for this peer: message dropped");
            return;
        };
        match queue.try_send(msg, bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped += 1,
            Err(TrySendError::Disconnected(msg)) => {
                // Its sender ended just now (idle, or the peer left the book): start anew.
                if let Some(queue) = self.queues.remove(&to) {
                    queue.join();
                }
                match self.queue(to).map(|queue| queue.try_send(msg, bytes)) {
                    Some(Ok(())) => {}
                    _ => self.dropped += 1,
                }
            }
        }
    }
}

impl<C> Drop for TcpTransport<C> {
    fn drop(&mut self) {
        // NB: `stop` is set under the `bound` lock, which the listener holds while it
        // publishes its address: either it sees `stop` and ends, or we see its address and
        // wake it.
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
            let _ = listener.join(); // the port is free once this returns, and no reader starts
        }
        // Each sender sees its queue closed; a blocked read or write (a handshake, a frame, a
        // write to a peer that stopped reading) fails once its socket is shut down.
        let queues = std::mem::take(&mut self.queues);
        self.shared.sockets.close_all();
        for queue in queues.into_values() {
            queue.join();
        }
        self.shared.threads.join_readers(CLIENT_HANDLER_GRACE);
    }
}

/// How long a stopping transport waits for a [`ClientHandler`] to return once its connection
/// was shut down (its reads and writes fail from then on). One that has not returned by then
/// is left running (logged at `warn`): it is the user's code, and may wait on the very node
/// that is stopping.
pub const CLIENT_HANDLER_GRACE: Duration = Duration::from_secs(1);

/// How often an idle sender checks whether its peer is still in the address book, and
/// whether it has been idle for `TcpConfig::idle_timeout`.
pub const SENDER_RECHECK: Duration = Duration::from_millis(250);

/// When a sender last had a message to send, against `TcpConfig::idle_timeout`.
struct Activity {
    last: Instant,
    idle_timeout: Duration,
}

impl Activity {
    fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// When it counts as idle (`None`: never, the timeout reaching past what `Instant` holds).
    fn idle_at(&self) -> Option<Instant> {
        self.last.checked_add(self.idle_timeout)
    }

    fn idle(&self) -> bool {
        self.idle_at().is_some_and(|at| Instant::now() >= at)
    }
}

/// Why a sender's wait or pump ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The queue closed: the transport stopped.
    Closed,
    /// Nothing to send for `idle_timeout`.
    Idle,
    /// The peer left the address book.
    Left,
}

/// The sender thread: connect, handshake, pump the queue; on failure back off and retry. Ends
/// when the queue closes, the peer leaves the address book, or the sender is idle.
fn run_sender<C: Serialize>(shared: &Shared, to: NodeId, queue: &PeerRx<C>) {
    let config = &shared.config;
    let mut backoff = config.backoff_min;
    let mut failures = 0u32;
    let mut activity = Activity { last: Instant::now(), idle_timeout: config.idle_timeout };
    while !shared.stopped() {
        // NB: looked up at each attempt: the address book may change (a node moved).
        let Some(addr) = config.peers.get(to) else {
            tracing::debug!(peer = %to, "peer left the address book: sender ends");
            return;
        };
        let Some(dialed) = dial(shared, addr) else { return }; // the transport is stopping
        match dialed {
            Ok((stream, _tracked)) => {
                tracing::debug!(peer = %to, %addr, "connected");
                backoff = config.backoff_min;
                failures = 0;
                match pump(stream, queue, shared, to, &mut activity) {
                    Ok(why) => {
                        tracing::debug!(peer = %to, ?why, "sender ends");
                        return;
                    }
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
        if let Err(why) = discard_for(queue, backoff, &mut activity) {
            tracing::debug!(peer = %to, ?why, "sender ends");
            return;
        }
        backoff = next_backoff(backoff, config.backoff_max);
    }
}

/// Connects to `addr` and handshakes as this node, tracking the socket from its establishment
/// so that a stop interrupts the handshake too. `None` if the transport is stopping.
fn dial(
    shared: &Shared,
    addr: SocketAddr,
) -> Option<Result<(TcpStream, Tracked<'_>), ConnectError>> {
    let stream = match TcpStream::connect_timeout(&addr, shared.config.connect_timeout) {
        Ok(stream) => stream,
        Err(e) => return Some(Err(e.into())),
    };
    let tracked = shared.sockets.track(&stream, Side::Out)?;
    Some(handshake(stream, Peer::Node(shared.id), &shared.config).map(|s| (s, tracked)))
}

/// The pause after `backoff`: doubled, capped at `max` (saturating: no value overflows).
fn next_backoff(backoff: Duration, max: Duration) -> Duration {
    backoff.saturating_mul(2).min(max)
}

/// Waits `pause`, dropping what is queued meanwhile (which counts as activity). An error if
/// the queue closed, or the sender went idle meanwhile. A pause that reaches past what an
/// `Instant` holds lasts until one of those.
fn discard_for<C>(
    queue: &PeerRx<C>,
    pause: Duration,
    activity: &mut Activity,
) -> Result<(), Ended> {
    let until = Instant::now().checked_add(pause);
    loop {
        let wake = match (until, activity.idle_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let got = match wake {
            Some(wake) => queue.rx.recv_deadline(wake),
            None => queue.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok((_, bytes)) => {
                queue.budget.give_back(bytes);
                activity.touch();
            }
            Err(RecvTimeoutError::Disconnected) => return Err(Ended::Closed),
            Err(RecvTimeoutError::Timeout) if activity.idle() => return Err(Ended::Idle),
            Err(RecvTimeoutError::Timeout) => {
                if until.is_some_and(|u| Instant::now() >= u) {
                    return Ok(());
                }
            }
        }
    }
}

/// How many queued messages one write may carry.
const MAX_BATCH: usize = 256;

/// Writes queued messages, each batch in one `write`, until the sender ends (`Ok`: the queue
/// closed, the peer left the address book, or nothing came for `idle_timeout`) or the
/// connection fails (`Err`).
fn pump<C: Serialize>(
    mut stream: TcpStream,
    queue: &PeerRx<C>,
    shared: &Shared,
    to: NodeId,
    activity: &mut Activity,
) -> io::Result<Ended> {
    let max_frame_bytes = shared.config.max_frame_bytes;
    let recheck = SENDER_RECHECK.min(shared.config.idle_timeout);
    let mut buf = Vec::new();
    loop {
        let first = match queue.rx.recv_timeout(recheck) {
            Ok(first) => first,
            Err(RecvTimeoutError::Disconnected) => return Ok(Ended::Closed),
            Err(RecvTimeoutError::Timeout) => {
                if shared.config.peers.get(to).is_none() {
                    return Ok(Ended::Left);
                }
                if activity.idle() {
                    return Ok(Ended::Idle);
                }
                continue;
            }
        };
        activity.touch();
        let counted = encode_batch(first, &queue.rx, &mut buf, max_frame_bytes);
        let written = stream.write_all(&buf);
        // NB: only now: a batch counts against the queue's budget until it left (a write to
        // a peer that stopped reading may hold it for `write_timeout`).
        queue.budget.give_back(counted);
        written?;
        shared.bytes_sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
    }
}

/// Frames `first` and what else is queued (up to [`MAX_BATCH`] messages) into `buf`; returns
/// the bytes they counted for in the queue. A message that cannot be framed, or whose frame
/// exceeds `max_frame_bytes`, is left out (logged).
fn encode_batch<C: Serialize>(
    first: (Message<C>, usize),
    queue: &Receiver<(Message<C>, usize)>,
    buf: &mut Vec<u8>,
    max_frame_bytes: usize,
) -> usize {
    buf.clear();
    let mut counted = 0usize;
    for (msg, bytes) in std::iter::once(first).chain(queue.try_iter().take(MAX_BATCH - 1)) {
        counted = counted.saturating_add(bytes);
        let start = buf.len();
        if let Err(e) = encode_value(FrameKind::Message, &msg, buf) {
            // NB: nothing was appended; the connection stays in step.
            tracing::warn!(to = %msg.to, error = %e, "message cannot be framed: dropped");
            continue;
        }
        if buf.len() - start - frame::HEADER_BYTES > max_frame_bytes {
            // The peer would close the connection on it: drop it alone, loudly.
            tracing::warn!(to = %msg.to, bytes = buf.len() - start, max = max_frame_bytes,
                "message larger than max_frame_bytes dropped");
            buf.truncate(start);
        }
    }
    counted
}

/// The listener thread: binds if needed (retrying), accepts, and starts a reader per connection.
fn listen<C>(listener: io::Result<TcpListener>, shared: &Arc<Shared>, inbox: &Inbox<C>)
where
    C: DeserializeOwned + Send + 'static,
{
    let Some(listener) = bind_until_stopped(listener, shared) else { return };
    for conn in listener.incoming() {
        if shared.stopped() {
            return;
        }
        let accepted_at = Instant::now();
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
        let alive = shared.threads.alive();
        let serving_client = Arc::new(AtomicBool::new(false));
        let client = Arc::clone(&serving_client);
        let spawned = std::thread::Builder::new().name(format!("raft-n{}-in", shared.id.0)).spawn(
            move || {
                let _alive = alive;
                serve(stream, accepted_at, &conn_shared, &inbox, &client);
            },
        );
        match spawned {
            Ok(handle) => shared.threads.add_reader(Reader { handle, serving_client }),
            Err(e) => {
                shared.handshakes.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot start a connection thread");
            }
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
        if !pause_unless_stopped(shared, backoff) {
            return None;
        }
        backoff = next_backoff(backoff, shared.config.backoff_max);
        listener = shared.config.listen_addr(shared.id).and_then(TcpListener::bind);
    }
}

/// Sleeps `pause`, in slices, so that a stop is seen within one slice (the transport's drop
/// joins this thread). False if the transport stopped.
fn pause_unless_stopped(shared: &Shared, pause: Duration) -> bool {
    const SLICE: Duration = Duration::from_millis(20);
    let until = Instant::now().checked_add(pause);
    while !shared.stopped() {
        let left = until.map_or(SLICE, |u| u.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(SLICE));
    }
    false
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

/// One accepted connection: handshake, then node messages or a client (`serving_client` set
/// while the handler runs). Its socket is tracked throughout, so a stop ends any of it.
fn serve<C: DeserializeOwned>(
    stream: TcpStream,
    accepted_at: Instant,
    shared: &Shared,
    inbox: &Inbox<C>,
    serving_client: &AtomicBool,
) {
    let slot = HandshakeSlot(&shared.handshakes);
    let Some(tracked) = shared.sockets.track(&stream, Side::In(None)) else { return };
    let remote = stream.peer_addr().ok();
    let (peer, _client) = match accept(&stream, accepted_at, shared) {
        Ok(accepted) => accepted,
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
            shared.sockets.claim(&tracked, from);
            read_messages(stream, shared, from, inbox);
        }
        Peer::Client => {
            if let Some(handler) = &shared.config.clients {
                serving_client.store(true, Ordering::Release);
                handler(stream);
            }
        }
    }
}

/// A client connection being served, counted against `TcpConfig::max_clients` until dropped.
struct ClientSlot<'a>(&'a AtomicUsize);

impl<'a> ClientSlot<'a> {
    /// A slot, unless `max` clients are served already.
    fn take(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        let taken =
            count.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < max).then_some(n + 1));
        taken.ok().map(|_| ClientSlot(count))
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The acceptor's side of the handshake, which must end within `handshake_timeout` of
/// `accepted_at`: the peer, and a client's slot. A refusal is logged, answered and returned
/// as an error.
fn accept<'a>(
    stream: &TcpStream,
    accepted_at: Instant,
    shared: &'a Shared,
) -> Result<(Peer, Option<ClientSlot<'a>>), ConnectError> {
    let config = &shared.config;
    stream.set_nodelay(true)?;
    let mut wire = Deadline::new(stream, accepted_at, config);
    let nonce: [u8; frame::NONCE_BYTES] = rand::random();
    write_value(&mut wire, FrameKind::Challenge, &Challenge { nonce })?;
    let hello: Hello = read_value(&mut wire, FrameKind::Hello, frame::MAX_HANDSHAKE_FRAME_BYTES)?;
    let mut client = None;
    let judged = judge(shared, &nonce, &hello).and_then(|()| match hello.peer {
        Peer::Node(_) => Ok(()),
        Peer::Client => {
            client = ClientSlot::take(&shared.clients, config.max_clients);
            client.is_some().then_some(()).ok_or_else(|| {
                format!(
                    "this node serves {} client connections already (TcpConfig::max_clients): \
                     retry later, or close idle connections",
                    config.max_clients
                )
            })
        }
    });
    if let Err(why) = judged {
        let remote = stream.peer_addr().ok();
        tracing::warn!(?remote, claimed = ?hello.peer, reason = %why, "handshake refused");
        let _ = write_value(&mut wire, FrameKind::Verdict, &Verdict::Refused(why.clone()));
        return Err(ConnectError::Refused(why));
    }
    write_value(&mut wire, FrameKind::Verdict, &Verdict::Accepted)?;
    stream.set_write_timeout(Some(config.write_timeout))?;
    Ok((hello.peer, client))
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

/// Reads `Message` frames from an authenticated peer into the inbox until the connection ends
/// or breaks a rule.
fn read_messages<C: DeserializeOwned>(
    stream: TcpStream,
    shared: &Shared,
    from: NodeId,
    inbox: &Inbox<C>,
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
        // NB: the frame is whole (its checksum held), so the stream is still in step: a
        // message this node cannot decode (a newer node's new kind) is dropped alone, as a
        // lossy network would; closing would lose everything queued behind it too.
        let msg: Message<C> = match frame::decode_payload(&frame.payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(peer = %from, error = %e, "undecodable message: dropped");
                continue;
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
        encode_value(FrameKind::Message, &from(3), &mut out).expect("encode");
        encode_value(FrameKind::Message, &from(2), &mut out).expect("encode");
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

#[cfg(test)]
mod config_tests {
    use super::*;

    fn valid() -> TcpConfig {
        TcpConfig::new(1, BTreeMap::new())
    }

    #[test]
    fn the_defaults_are_valid_and_huge_backoffs_are_allowed() {
        assert_eq!(valid().validate(), Ok(()));
        assert_eq!(valid().max_queue_bytes, 64 << 20);
        let most = TcpConfig { max_queue_bytes: MAX_QUEUE_BYTES, ..valid() };
        assert_eq!(most.validate(), Ok(()));
        let huge = TcpConfig { backoff_min: Duration::MAX, backoff_max: Duration::MAX, ..valid() };
        assert_eq!(huge.validate(), Ok(()), "huge pauses saturate; they are not an error");
    }

    #[test]
    fn a_config_that_cannot_work_is_refused_with_what_to_fix() {
        let cases: [(TcpConfig, TcpConfigError, &str); 9] = [
            (
                TcpConfig { handshake_timeout: Duration::ZERO, ..valid() },
                TcpConfigError::ZeroDuration { field: "handshake_timeout" },
                "every connection would fail",
            ),
            (
                TcpConfig { backoff_min: Duration::ZERO, ..valid() },
                TcpConfigError::ZeroDuration { field: "backoff_min" },
                "busy loop",
            ),
            (
                TcpConfig { backoff_min: Duration::from_secs(2), ..valid() },
                TcpConfigError::InvertedBackoff {
                    min: Duration::from_secs(2),
                    max: Duration::from_secs(1),
                },
                "exceeds backoff_max",
            ),
            (
                TcpConfig { max_handshakes: 0, ..valid() },
                TcpConfigError::ZeroLimit { field: "max_handshakes" },
                "every incoming connection",
            ),
            (
                TcpConfig { max_clients: 0, ..valid() },
                TcpConfigError::ZeroLimit { field: "max_clients" },
                "every client connection",
            ),
            (
                TcpConfig { max_frame_bytes: 0, ..valid() },
                TcpConfigError::ZeroLimit { field: "max_frame_bytes" },
                "every message",
            ),
            (
                TcpConfig { max_queue_bytes: 0, ..valid() },
                TcpConfigError::ZeroLimit { field: "max_queue_bytes" },
                "one message at a time",
            ),
            (
                TcpConfig { max_queue_bytes: usize::MAX, ..valid() },
                TcpConfigError::QueueLimitTooLarge { max_queue_bytes: usize::MAX },
                "lower it",
            ),
            (
                TcpConfig { max_frame_bytes: frame::MAX_PAYLOAD_BYTES + 1, ..valid() },
                TcpConfigError::FrameLimitTooLarge {
                    max_frame_bytes: frame::MAX_PAYLOAD_BYTES + 1,
                },
                "lower it",
            ),
        ];
        for (config, expected, says) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err, expected);
            assert!(err.to_string().contains(says), "{err}");
        }
        // `start` refuses it before binding anything, with the typed error inside.
        let (tx, _rx) = bounded::<Message<u64>>(1);
        let config = TcpConfig {
            listen: Some("127.0.0.1:0".parse().expect("address")),
            backoff_min: Duration::from_secs(2),
            ..valid()
        };
        let err = TcpTransport::start(NodeId(1), config, tx).err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<TcpConfigError>());
        assert!(matches!(inner, Some(TcpConfigError::InvertedBackoff { .. })), "{err}");
    }

    #[test]
    fn backoff_arithmetic_saturates() {
        assert_eq!(next_backoff(Duration::MAX, Duration::MAX), Duration::MAX);
        assert_eq!(
            next_backoff(Duration::MAX / 2 + Duration::from_nanos(1), Duration::MAX),
            Duration::MAX
        );
        assert_eq!(
            next_backoff(Duration::from_millis(10), Duration::from_secs(1)),
            Duration::from_millis(20)
        );
        assert_eq!(
            next_backoff(Duration::from_millis(800), Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        // A pause no `Instant` can hold lasts until the queue closes (it used to panic).
        let queue = |budget: usize| {
            let (tx, rx) = bounded::<(Message<u64>, usize)>(4);
            (tx, PeerRx { rx, budget: Arc::new(ByteBudget::new(budget)) })
        };
        let (tx, rx) = queue(100);
        let msg = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: crate::types::Term(1),
            body: crate::message::Body::TimeoutNow,
        };
        assert!(rx.budget.try_take(32));
        tx.send((msg, 32)).expect("queued");
        drop(tx);
        let mut activity = Activity { last: Instant::now(), idle_timeout: Duration::MAX };
        assert_eq!(discard_for(&rx, Duration::MAX, &mut activity), Err(Ended::Closed));
        assert!(rx.rx.is_empty(), "what was queued was discarded");
        assert_eq!(rx.budget.held(), 0, "and its bytes given back");
        // A sender with nothing to send for `idle_timeout` ends, even in a longer pause.
        let (_tx, rx) = queue(100);
        let mut activity =
            Activity { last: Instant::now(), idle_timeout: Duration::from_millis(20) };
        assert_eq!(discard_for(&rx, Duration::MAX, &mut activity), Err(Ended::Idle));
        let mut activity = Activity { last: Instant::now(), idle_timeout: Duration::MAX };
        assert_eq!(discard_for(&rx, Duration::from_millis(20), &mut activity), Ok(()));
    }
}
