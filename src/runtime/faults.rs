//! The network fault switches of a [`Cluster`], for testing a system built on it the way the lab
//! suites and Jepsen's nemeses do: a lossy, duplicating, slow network ([`NetworkFaults`],
//! network-wide or per directed link), and link cuts (partitions, one-way cuts, deaf, mute and
//! disconnected nodes).
//!
//! Messages a fault delays are bounded in bytes per directed link, as an inbox is
//! (`Config::max_inbox_bytes`; [`Cluster::messages_dropped_while_held`] counts what did not
//! fit).
//!
//! Two independent layers, cleared separately: [`Cluster::heal`] removes every link cut,
//! [`Cluster::clear_faults`] every probabilistic fault, [`Cluster::reset_network`] both.
//!
//! The link cuts are one set of blocked directed links `(from, to)` ([`Cluster::blocked_links`]);
//! every cut operation edits that set. Links are between the nodes the cluster has when the cut
//! is made: a node added later is connected to everyone.
//!
//! This file only names the cluster's nodes to the router (`transport/router.rs`), which validates
//! every setting (unknown nodes, probabilities, ranges) and applies it; nothing here touches a
//! node's thread.

use super::cluster::Cluster;
use crate::error::FaultError;
use crate::state_machine::StateMachine;
use crate::transport::NetworkFaults;
use crate::types::NodeId;

impl<S: StateMachine> Cluster<S> {
    /// Sets the probabilistic faults on every link without faults of its own (see
    /// [`NetworkFaults`] for each switch). Replaces the previous network-wide setting;
    /// [`Cluster::clear_faults`] removes it.
    pub fn set_faults(&self, faults: NetworkFaults) -> Result<(), FaultError> {
        self.router().set_faults(faults)
    }

    /// Gives the directed link `from -> to` its own faults, which replace the network-wide ones
    /// for messages from `from` to `to` only; `to -> from` keeps its own setting. Models one
    /// bad path: a flaky cable, a congested route, an asymmetric link. Also exempts a link:
    /// `NetworkFaults::default()` makes it clean under a faulty network.
    pub fn set_link_faults(
        &self,
        from: NodeId,
        to: NodeId,
        faults: NetworkFaults,
    ) -> Result<(), FaultError> {
        self.router().set_link_faults(from, to, faults, &self.ids())
    }

    /// Removes the faults of the link `from -> to`: the network-wide ones apply to it again.
    pub fn clear_link_faults(&self, from: NodeId, to: NodeId) -> Result<(), FaultError> {
        self.router().clear_link_faults(from, to, &self.ids())
    }

    /// Resets every probabilistic fault, network-wide and per link, to a clean network. Link
    /// cuts stay (see [`Cluster::heal`]). Messages already held stay in flight and arrive late,
    /// as on a real network ([`Cluster::messages_in_flight`]).
    pub fn clear_faults(&self) {
        self.router().clear_faults();
    }

    /// Splits the cluster into groups that cannot reach each other; nodes not named share one
    /// further group. Replaces every link cut in force (including disconnected nodes and one-way
    /// cuts); [`Cluster::heal`] removes it.
    pub fn partition(&self, groups: &[Vec<NodeId>]) -> Result<(), FaultError> {
        self.router().partition(groups, &self.ids())
    }

    /// Cuts one node off from all others, replacing every link cut in force. To cut off nodes
    /// one by one instead, use [`Cluster::disconnect`].
    pub fn isolate(&self, id: NodeId) -> Result<(), FaultError> {
        self.partition(&[vec![id]])
    }

    /// A one-way link cut: `from`'s messages to `to` are lost; `to`'s to `from` still arrive,
    /// as with a firewall rule or a half-broken NIC. Messages already delayed on that link are
    /// lost when they come due. Adds to the cuts in force; [`Cluster::restore`] undoes it.
    pub fn cut(&self, from: NodeId, to: NodeId) -> Result<(), FaultError> {
        self.router().cut(from, to, &self.ids())
    }

    /// Unblocks the link `from -> to`, whatever cut it (a [`Cluster::cut`], a partition, a
    /// disconnected or deafened node); other links are unchanged.
    pub fn restore(&self, from: NodeId, to: NodeId) -> Result<(), FaultError> {
        self.router().restore(from, to, &self.ids())
    }

    /// Unplugs one node: every link between `id` and the others is cut, both ways, as if its
    /// cable were pulled. Composes with other cuts: `disconnect(1)`, `disconnect(2)`,
    /// `connect(1)` leaves 2 cut off from everyone, 1 included.
    pub fn disconnect(&self, id: NodeId) -> Result<(), FaultError> {
        self.router().cut_off(id, &self.ids())
    }

    /// Plugs a node back in: unblocks every link between `id` and each node that is not itself
    /// disconnected, both ways (undoing [`Cluster::disconnect`], [`Cluster::deafen`],
    /// [`Cluster::mute`] and one-way cuts on those links). Links of a still-disconnected node
    /// stay cut.
    pub fn connect(&self, id: NodeId) -> Result<(), FaultError> {
        self.router().reconnect(id, &self.ids())
    }

    /// A node that can send but not receive: every message to `id` is lost, while its own
    /// messages still arrive, as with a broken receive path or an inbound firewall rule. A
    /// deaf leader keeps sending heartbeats but hears no replies, so CheckQuorum makes it step
    /// down. Equivalent to `cut(x, id)` for every other node `x`; undone by
    /// [`Cluster::connect`] or [`Cluster::heal`].
    pub fn deafen(&self, id: NodeId) -> Result<(), FaultError> {
        self.router().deafen(id, &self.ids())
    }

    /// A node that can receive but not send: every message from `id` is lost, while it still
    /// hears everyone, as with a broken send path. A mute leader is replaced while it still
    /// hears the others. Equivalent to `cut(id, x)` for every other node `x`; undone by
    /// [`Cluster::connect`] or [`Cluster::heal`].
    pub fn mute(&self, id: NodeId) -> Result<(), FaultError> {
        self.router().mute(id, &self.ids())
    }

    /// Removes every link cut (partitions, one-way cuts, deaf, mute and disconnected nodes).
    /// Probabilistic faults stay: [`Cluster::clear_faults`] removes those,
    /// [`Cluster::reset_network`] both.
    pub fn heal(&self) {
        self.router().heal();
    }

    /// Makes the network perfect again: [`Cluster::heal`] and [`Cluster::clear_faults`].
    pub fn reset_network(&self) {
        self.router().reset();
    }

    /// The blocked directed links `(from, to)`, in order: the whole cut state.
    pub fn blocked_links(&self) -> Vec<(NodeId, NodeId)> {
        self.router().blocked_links()
    }

    /// How many messages the network holds right now (delayed or long-held) that have been
    /// neither delivered nor lost.
    pub fn messages_in_flight(&self) -> usize {
        self.router().in_flight()
    }

    /// How many messages (copies) [`NetworkFaults::long_hold`] has held since the cluster
    /// started.
    pub fn messages_long_held(&self) -> u64 {
        self.router().long_held()
    }

    /// The bytes the network holds delayed right now (delays and long holds), over every
    /// link: each directed link holds at most `Config::max_inbox_bytes` of them, as an inbox
    /// counts bytes (or one message larger than that alone).
    pub fn bytes_in_flight(&self) -> usize {
        self.router().held_bytes()
    }

    /// How many messages (copies) a delay or a long hold dropped instead of holding them,
    /// because their link already held `Config::max_inbox_bytes` of delayed messages, since
    /// the cluster started. Raft sends again, as after any loss.
    pub fn messages_dropped_while_held(&self) -> u64 {
        self.router().held_dropped()
    }
}
