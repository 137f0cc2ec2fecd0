//! The simulated network: decides each message's fate (lost, delivered once, or twice) from the
//! seeded RNG, and which nodes can reach each other under the current partition.
//!
//! Each link is bounded twice: in messages (`NetworkConfig::link_capacity`) and in bytes, by
//! the runtime's own [`ByteBudget`] and size estimate (`transport/inbox.rs`), so a message that
//! does not fit is dropped exactly as a node's inbox drops it (one alone on an empty link always
//! passes).
//!
//! Owns no queue and no clock: the simulator schedules the deliveries this module plans, and
//! asks [`Network::connected`] again at delivery time, so a partition also cuts messages already
//! in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;

use super::config::NetworkConfig;
use crate::error::{assign_groups, FaultError};
use crate::message::{Body, Message};
use crate::transport::ByteBudget;
use crate::types::NodeId;

/// Why [`Network::plan`] drops a message whose link holds its byte budget.
pub(crate) const LINK_BYTES_FULL: &str = "link full (bytes)";

/// The delivery delays (virtual microseconds) of a message that was not lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    Once(u64),
    Twice(u64, u64),
}

/// Link behaviour plus the partition.
#[derive(Debug)]
pub(crate) struct Network {
    config: NetworkConfig,
    /// Group of each listed node; unlisted nodes share one implicit group. Empty: healed.
    groups: BTreeMap<NodeId, usize>,
    /// Each link's messages and bytes in flight, by (from, to): see [`Links`].
    links: Links,
    /// One-way cuts: `(from, to)` loses every message from `from` to `to`.
    cuts: BTreeSet<(NodeId, NodeId)>,
    /// Nodes that can send but hear nothing.
    deaf: BTreeSet<NodeId>,
    /// Each link's byte budget (`Config::max_inbox_bytes`, or [`Fault::InboxBytes`](super::Fault::InboxBytes)).
    max_bytes: usize,
    /// Copies refused because their link held its byte budget (a duplicate's included).
    refused_bytes: u64,
    /// Test-only bug switch for every link's budget ([`ByteBudget::never_gives_back`]).
    #[cfg(test)]
    pub budgets_leak: bool,
}

impl Network {
    /// A healed network whose links each hold at most `max_bytes` in flight.
    pub fn new(config: NetworkConfig, max_bytes: usize) -> Result<Self, FaultError> {
        config.validate()?;
        Ok(Network {
            config,
            groups: BTreeMap::new(),
            links: Links::default(),
            cuts: BTreeSet::new(),
            deaf: BTreeSet::new(),
            max_bytes,
            refused_bytes: 0,
            #[cfg(test)]
            budgets_leak: false,
        })
    }

    /// A new, empty budget of the links' size (also each node's inbox while it is paused or
    /// stalled), with the test-only bug switch as set.
    pub fn new_budget(&self) -> ByteBudget {
        #[allow(unused_mut)]
        let mut budget = ByteBudget::new(self.max_bytes);
        #[cfg(test)]
        {
            budget.never_gives_back = self.budgets_leak;
        }
        budget
    }

    /// Each link's byte budget from now on; what is in flight stays counted.
    pub fn set_max_bytes(&mut self, max: usize) {
        self.max_bytes = max;
        let mut links = std::mem::take(&mut self.links);
        for old in links.rows.iter_mut().flatten().filter_map(|link| link.budget.as_mut()) {
            let budget = self.new_budget();
            // NB: an empty budget takes any amount: the bytes in flight carry over whole.
            assert!(budget.try_take(old.held()), "a new budget takes what the old one held");
            *old = budget;
        }
        self.links = links;
    }

    /// Each link's byte budget.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Copies refused so far because their link held its byte budget.
    pub fn refused_bytes(&self) -> u64 {
        self.refused_bytes
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn set_config(&mut self, config: NetworkConfig) -> Result<(), FaultError> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Splits the nodes into disjoint groups that cannot reach each other. Nodes in no group
    /// form one more group together.
    pub fn partition(
        &mut self,
        groups: &[Vec<NodeId>],
        known: &BTreeSet<NodeId>,
    ) -> Result<(), FaultError> {
        let assigned = assign_groups(groups, |id| known.contains(&id))?;
        self.groups = assigned;
        Ok(())
    }

    /// Cuts the link from `from` to `to` only: `to` still reaches `from`.
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cuts.insert((from, to));
    }

    /// `id` hears nothing from now on, but what it sends still arrives.
    pub fn deafen(&mut self, id: NodeId) {
        self.deaf.insert(id);
    }

    /// Removes partitions, one-way cuts and deafness.
    pub fn heal(&mut self) {
        self.groups.clear();
        self.cuts.clear();
        self.deaf.clear();
    }

    pub fn is_partitioned(&self) -> bool {
        !self.groups.is_empty() || !self.cuts.is_empty() || !self.deaf.is_empty()
    }

    /// Whether a message from `from` reaches `to` (directed: faults may be one-way).
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        self.groups.get(&from) == self.groups.get(&to)
            && !self.deaf.contains(&to)
            && !self.cuts.contains(&(from, to))
    }

    /// Draws the message's fate: loss (requests and replies separately), delay, duplication;
    /// a full link loses it, in messages or in bytes (`bytes` is its size, as
    /// `transport::message_bytes` counts it; a duplicate that does not fit is not sent). Counts
    /// the copies it schedules as in flight.
    pub fn plan<C>(
        &mut self,
        msg: &Message<C>,
        bytes: usize,
        rng: &mut SmallRng,
    ) -> Result<Fate, &'static str> {
        let drop =
            if is_request(&msg.body) { self.config.drop_request } else { self.config.drop_reply };
        if rng.random_bool(drop) {
            return Err("loss");
        }
        let first = self.message_delay(rng);
        let fate = if rng.random_bool(self.config.duplicate) {
            Fate::Twice(first, self.message_delay(rng))
        } else {
            Fate::Once(first)
        };
        let copies = if let Fate::Twice(..) = fate { 2 } else { 1 };
        let fresh = self.new_budget(); // NB: kept only by a link's first message
        let link = self.links.get_mut(msg.from, msg.to);
        if link.in_flight + copies > self.config.link_capacity {
            return Err("link full");
        }
        let budget = link.budget.get_or_insert(fresh);
        let fate = take_bytes(budget, &mut self.refused_bytes, bytes, fate)?;
        let copies = if let Fate::Twice(..) = fate { 2 } else { 1 };
        link.in_flight += copies;
        Ok(fate)
    }

    /// A message of `bytes` left the link (delivered or swallowed at delivery time): its
    /// bytes go back to the link's budget.
    pub fn landed(&mut self, from: NodeId, to: NodeId, bytes: usize) {
        let link = self.links.get_mut(from, to);
        link.in_flight = link.in_flight.checked_sub(1).expect("landed messages were planned");
        link.budget.as_ref().expect("landed messages were planned").give_back(bytes);
    }

    /// A peer message's delay: usually [`Network::delay`], but with probability `long_tail`
    /// one drawn from the long tail, so the message lands several elections late.
    fn message_delay(&self, rng: &mut SmallRng) -> u64 {
        if self.config.long_tail > 0.0 && rng.random_bool(self.config.long_tail) {
            let (min, max) = self.config.long_delay;
            return rng.random_range(micros(min)..micros(max)).max(1);
        }
        self.delay(rng)
    }

    /// A one-way delay in virtual microseconds, uniform over the configured range.
    pub fn delay(&self, rng: &mut SmallRng) -> u64 {
        let delay = rng.random_range(micros(self.config.min_delay)..=micros(self.config.max_delay));
        // NB: at least 1 µs, so a message ping-pong can never pin virtual time in place.
        delay.max(1)
    }
}

/// Takes each copy's `bytes` from the link's budget, as an inbox takes a message's: the first
/// copy or nothing, then the duplicate if it fits too; counts each copy refused.
fn take_bytes(
    budget: &ByteBudget,
    refused: &mut u64,
    bytes: usize,
    fate: Fate,
) -> Result<Fate, &'static str> {
    if !budget.try_take(bytes) {
        *refused += 1;
        return Err(LINK_BYTES_FULL);
    }
    match fate {
        Fate::Twice(first, _) if !budget.try_take(bytes) => {
            *refused += 1;
            Ok(Fate::Once(first))
        }
        fate => Ok(fate),
    }
}

/// One directed link's messages in flight (scheduled, not yet landed) and its byte budget
/// (made at its first message).
#[derive(Debug, Default)]
struct Link {
    in_flight: u32,
    budget: Option<ByteBudget>,
}

/// The links, as a dense table: a node's row and column are its place in `ids`, in the order
/// nodes first sent or were sent to. Every message is planned and lands once, and ordered
/// maps keyed by `(from, to)` cost a B-tree search each time (a fifteenth of the simulator's
/// instructions); nothing iterates the links in an order that could matter.
#[derive(Debug, Default)]
struct Links {
    ids: Vec<NodeId>,
    rows: Vec<Vec<Link>>,
}

impl Links {
    fn get_mut(&mut self, from: NodeId, to: NodeId) -> &mut Link {
        let (from, to) = (self.place(from), self.place(to));
        let row = &mut self.rows[from];
        if row.len() <= to {
            row.resize_with(to + 1, Link::default);
        }
        &mut row[to]
    }

    fn place(&mut self, id: NodeId) -> usize {
        if let Some(place) = self.ids.iter().position(|&known| known == id) {
            return place;
        }
        self.ids.push(id);
        self.rows.push(Vec::new());
        self.ids.len() - 1
    }
}

fn is_request<C>(body: &Body<C>) -> bool {
    matches!(
        body,
        Body::RequestVote(_)
            | Body::AppendEntries(_)
            | Body::TimeoutNow
            | Body::InstallSnapshot(_)
            | Body::ReadConfirm(_)
            | Body::ReadIndex(_)
            | Body::ReadIndexByRound(_)
    )
}

/// A duration in virtual microseconds.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).expect("virtual durations fit in u64 microseconds")
}
