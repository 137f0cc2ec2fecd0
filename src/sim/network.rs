//! The simulated network: decides each message's fate (lost, delivered once, or twice) from the
//! seeded RNG, and which nodes can reach each other under the current partition.
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
use crate::types::NodeId;

/// The delivery delays (virtual microseconds) of a message that was not lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    Once(u64),
    Twice(u64, u64),
}

/// Link behaviour plus the partition.
#[derive(Clone, Debug)]
pub(crate) struct Network {
    config: NetworkConfig,
    /// Group of each listed node; unlisted nodes share one implicit group. Empty: healed.
    groups: BTreeMap<NodeId, usize>,
    /// Messages scheduled but not yet delivered, per (from, to).
    in_flight: BTreeMap<(NodeId, NodeId), u32>,
    /// One-way cuts: `(from, to)` loses every message from `from` to `to`.
    cuts: BTreeSet<(NodeId, NodeId)>,
    /// Nodes that can send but hear nothing.
    deaf: BTreeSet<NodeId>,
}

impl Network {
    pub fn new(config: NetworkConfig) -> Result<Self, FaultError> {
        config.validate()?;
        Ok(Network {
            config,
            groups: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            cuts: BTreeSet::new(),
            deaf: BTreeSet::new(),
        })
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
    /// a full link loses it. Counts the copies it schedules as in flight.
    pub fn plan<C>(&mut self, msg: &Message<C>, rng: &mut SmallRng) -> Result<Fate, &'static str> {
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
        let in_flight = self.in_flight.entry((msg.from, msg.to)).or_insert(0);
        if *in_flight + copies > self.config.link_capacity {
            return Err("link full");
        }
        *in_flight += copies;
        Ok(fate)
    }

    /// A message left the link (delivered or swallowed at delivery time).
    pub fn landed(&mut self, from: NodeId, to: NodeId) {
        let n = self.in_flight.get_mut(&(from, to)).expect("landed messages were planned");
        *n -= 1;
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

fn is_request<C>(body: &Body<C>) -> bool {
    matches!(
        body,
        Body::RequestVote(_)
            | Body::AppendEntries(_)
            | Body::TimeoutNow
            | Body::InstallSnapshot(_)
            | Body::ReadConfirm(_)
            | Body::ReadIndex(_)
    )
}

/// A duration in virtual microseconds.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).expect("virtual durations fit in u64 microseconds")
}
