//! What a [`TcpTransport`](super::TcpTransport) must close and join to stop: its open sockets
//! ([`Sockets`]) and its threads ([`Threads`]). No protocol lives here.
//!
//! A stop shuts every open socket down (both directions), so that a thread blocked reading or
//! writing one, whether in a handshake, a frame, a client handler or a write to a peer that
//! stopped reading, returns at once with an error; then it joins the threads. Sockets are
//! tracked from their accept or connect until their thread lets go of them, and tracking
//! refuses a socket once the stop began: so a socket is either shut down by the stop or never
//! used.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::types::NodeId;

/// Which way a tracked socket carries messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// Accepted: a reader's. `Some(peer)` once the handshake named a node (at most one such
    /// connection per peer is kept); `None` in the handshake, or for a client.
    In(Option<NodeId>),
    /// Connected by a sender to its peer.
    Out,
}

/// The transport's open sockets (clones of them), keyed by a number of their own.
#[derive(Default)]
pub(super) struct Sockets {
    open: Mutex<HashMap<u64, (Side, TcpStream)>>,
    next: AtomicU64,
    /// Set (under `open`'s lock) when the transport stops: nothing is tracked from then on.
    closed: AtomicBool,
}

impl Sockets {
    /// Tracks `stream` until the returned guard drops. `None` if the transport is stopping
    /// (or the socket cannot be cloned): the caller then drops the stream and ends.
    pub fn track(&self, stream: &TcpStream, side: Side) -> Option<Tracked<'_>> {
        let clone = stream.try_clone().ok()?;
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let mut open = self.lock();
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        open.insert(key, (side, clone));
        Some(Tracked { sockets: self, key })
    }

    /// Records that `tracked` is `peer`'s inbound connection, shutting down any older one from
    /// the same peer (it reconnected; its reader then ends).
    pub fn claim(&self, tracked: &Tracked<'_>, peer: NodeId) {
        let mut open = self.lock();
        for (key, (side, stream)) in open.iter_mut() {
            if *side == Side::In(Some(peer)) && *key != tracked.key {
                let _ = stream.shutdown(Shutdown::Both);
                *side = Side::In(None); // NB: its reader removes it as it ends
            }
        }
        if let Some((side, _)) = open.get_mut(&tracked.key) {
            *side = Side::In(Some(peer));
        }
    }

    /// Stops tracking for good and shuts every tracked socket down.
    pub fn close_all(&self) {
        let mut open = self.lock();
        self.closed.store(true, Ordering::Relaxed);
        for (_, (_, stream)) in open.drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (Side, TcpStream)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A tracked socket; dropping it stops tracking (its thread is done with the socket).
pub(super) struct Tracked<'a> {
    sockets: &'a Sockets,
    key: u64,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.sockets.lock().remove(&self.key);
    }
}

/// The transport's threads: how many run, and the readers' handles (the listener's and the
/// senders' are kept by the transport itself).
#[derive(Default)]
pub(super) struct Threads {
    running: Arc<AtomicUsize>,
    readers: Mutex<Vec<Reader>>,
}

/// A reader's thread, and whether it runs a client handler (the user's code) by now.
pub(super) struct Reader {
    pub handle: JoinHandle<()>,
    pub serving_client: Arc<AtomicBool>,
}

impl Threads {
    /// Counts a thread about to be spawned as running until the guard drops (moved into the
    /// thread, it drops as the thread ends; if the spawn fails, at once).
    pub fn alive(&self) -> Alive {
        self.running.fetch_add(1, Ordering::Relaxed);
        Alive(Arc::clone(&self.running))
    }

    /// Threads running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Keeps a reader's handle for the stop, joining those that already ended (so the list
    /// stays as long as the connections open now).
    pub fn add_reader(&self, reader: Reader) {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let (ended, live): (Vec<Reader>, Vec<Reader>) =
            readers.drain(..).partition(|r| r.handle.is_finished());
        *readers = live;
        readers.push(reader);
        for reader in ended {
            let _ = reader.handle.join();
        }
    }

    /// Joins every reader, once their sockets are shut down: a node's reader ends at once. A
    /// client handler is the user's code: it is given until `grace` passes to return (its
    /// stream fails now), then left running, with a warning.
    pub fn join_readers(&self, grace: Duration) {
        let readers = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = Instant::now().checked_add(grace);
        for reader in readers {
            if reader.serving_client.load(Ordering::Acquire)
                && !wait_finished(&reader.handle, deadline)
            {
                tracing::warn!(
                    ?grace,
                    "a client handler did not return after its connection was shut down: left running"
                );
                continue;
            }
            let _ = reader.handle.join();
        }
    }
}

/// Waits until `handle`'s thread has ended or `deadline` passed; whether it ended.
fn wait_finished(handle: &JoinHandle<()>, deadline: Option<Instant>) -> bool {
    const POLL: Duration = Duration::from_millis(2);
    while !handle.is_finished() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        std::thread::sleep(POLL); // NB: only while stopping, and only for a client handler
    }
    true
}

/// A running thread, counted until dropped ([`Threads::alive`]).
pub(super) struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
