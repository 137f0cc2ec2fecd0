//! How a node's messages reach its peers: the [`Transport`] trait and its implementations, the
//! in-process router (`router.rs`, with the fault switches that `Cluster` methods flip), and
//! TCP between processes ([`TcpTransport`] in `tcp.rs`, its wire format in [`frame`]).
//!
//! A transport is best effort, like a network: a message may be lost, delayed, duplicated or
//! reordered, and Raft retransmits. `send` must never block the node's thread. What a
//! transport receives goes into its node's [`Inbox`], bounded in messages and bytes.

pub mod frame;
mod inbox;
mod router;
mod sockets;
mod tcp;

pub(crate) use inbox::{inbox, message_bytes, BudgetCloser, ByteBudget, InboxReceiver};
pub use inbox::{Inbox, MAX_QUEUE_BYTES};
pub use router::NetworkFaults;
pub(crate) use router::Router;
pub use tcp::{
    connect, AddressBook, ClientHandler, ConnectError, TcpConfig, TcpConfigError, TcpTransport,
    CLIENT_HANDLER_GRACE, SENDER_RECHECK,
};

use crate::message::Message;

/// Sends a node's messages to its peers. Implementations drop rather than block.
pub trait Transport<C>: Send + 'static {
    /// Hands `msg` to the network for delivery to `msg.to` (best effort).
    fn send(&mut self, msg: Message<C>);

    /// Bytes this transport put on and took off the wire so far, `(sent, received)`, if it
    /// counts them (TCP counts frame bytes). `None` (the default): the node's metrics estimate
    /// them (see [`Metrics::bytes_sent`](crate::Metrics::bytes_sent)).
    fn wire_bytes(&self) -> Option<(u64, u64)> {
        None
    }
}

impl<C: Clone + Send + 'static> Transport<C> for std::sync::Arc<Router<C>> {
    fn send(&mut self, msg: Message<C>) {
        Router::send(self, msg);
    }
}

impl<C: 'static> Transport<C> for Box<dyn Transport<C>> {
    fn send(&mut self, msg: Message<C>) {
        (**self).send(msg);
    }

    fn wire_bytes(&self) -> Option<(u64, u64)> {
        (**self).wire_bytes()
    }
}
