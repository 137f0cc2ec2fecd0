//! [`Config`]: timing and limits for every node, validated once on construction.
//!
//! The core never reads a clock: durations here are converted to whole ticks
//! ([`Config::election_timeout_ticks`], [`Config::heartbeat_ticks`]) and time reaches the core as
//! `Input::Tick`.

use std::ops::Range;
use std::time::Duration;

use crate::error::ConfigError;

/// Timing and limits shared by every node of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Election timeouts are drawn uniformly from this range (§5.2; default 150ms..300ms).
    pub election_timeout: Range<Duration>,
    /// How often a leader sends heartbeats; must be below the minimum election timeout.
    pub heartbeat_interval: Duration,
    /// The length of one tick of the logical clock that drives every timer.
    pub tick: Duration,
    /// The most entries one AppendEntries carries.
    pub max_entries_per_append: usize,
    /// The most AppendEntries a leader keeps unacknowledged per follower (pipelining window).
    pub max_inflight: usize,
    /// Seeds each node's RNG (mixed with its id), so elections replay exactly in simulation.
    pub seed: u64,
    /// Pre-vote before campaigning (thesis §9.6): a rejoining node cannot inflate terms.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a majority for an election timeout.
    pub check_quorum: bool,
    /// How long a new node may take to catch up as a learner before its addition fails
    /// (`Error::CatchUpFailed`) and the configuration is restored.
    pub catch_up_timeout: Duration,
    /// Capacity of each node's inbox; a message to a full inbox is dropped, as a lossy network.
    pub inbox_capacity: usize,
    /// The deadline of every blocking call that takes none (`Cluster::propose`,
    /// `Client::propose`, `Cluster::status`, finding a leader for a membership change). An
    /// addition may take `catch_up_timeout` on top, while the new node catches up.
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            election_timeout: Duration::from_millis(150)..Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(50),
            tick: Duration::from_millis(10),
            max_entries_per_append: 1024,
            max_inflight: 32,
            seed: 0,
            pre_vote: true,
            check_quorum: true,
            catch_up_timeout: Duration::from_secs(10),
            inbox_capacity: 65_536,
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Checks every field; the error says what is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Range { start: min, end: max } = self.election_timeout;
        if min == max {
            return Err(ConfigError::EmptyElectionTimeout { min });
        }
        if min > max {
            return Err(ConfigError::InvertedElectionTimeout { min, max });
        }
        if self.heartbeat_interval >= min {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat: self.heartbeat_interval,
                min_election: min,
            });
        }
        if self.tick.is_zero() || self.tick > self.heartbeat_interval {
            return Err(ConfigError::BadTick {
                tick: self.tick,
                heartbeat: self.heartbeat_interval,
            });
        }
        self.validate_limits()
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = [
            ("max_entries_per_append", self.max_entries_per_append),
            ("max_inflight", self.max_inflight),
            ("inbox_capacity", self.inbox_capacity),
        ];
        match limits.iter().find(|(_, v)| *v == 0) {
            Some((field, _)) => Err(ConfigError::ZeroLimit { field }),
            None => Ok(()),
        }
    }

    /// The election timeout range in ticks (at least one tick wide).
    pub fn election_timeout_ticks(&self) -> Range<u64> {
        let min = self.ticks(self.election_timeout.start).max(1);
        let max = self.ticks(self.election_timeout.end).max(min + 1);
        min..max
    }

    /// The catch-up timeout in ticks (at least one maximum election timeout).
    pub fn catch_up_ticks(&self) -> u64 {
        self.ticks(self.catch_up_timeout).max(self.election_timeout_ticks().end)
    }

    /// The heartbeat interval in ticks (at least 1).
    pub fn heartbeat_ticks(&self) -> u64 {
        self.ticks(self.heartbeat_interval).max(1)
    }

    fn ticks(&self, d: Duration) -> u64 {
        (d.as_nanos() / self.tick.as_nanos().max(1)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn default_is_valid_and_matches_the_paper() {
        let c = Config::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.election_timeout_ticks(), 15..30);
        assert_eq!(c.heartbeat_ticks(), 5);
    }

    #[test]
    fn empty_election_range_is_rejected() {
        let c = Config { election_timeout: ms(150)..ms(150), ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::EmptyElectionTimeout { min: ms(150) }));
    }

    #[test]
    fn inverted_election_range_is_rejected() {
        let c = Config { election_timeout: ms(300)..ms(150), ..Config::default() };
        assert_eq!(
            c.validate(),
            Err(ConfigError::InvertedElectionTimeout { min: ms(300), max: ms(150) })
        );
    }

    #[test]
    fn heartbeat_not_below_min_election_is_rejected() {
        let c = Config { heartbeat_interval: ms(150), ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::HeartbeatTooSlow { .. })));
    }

    #[test]
    fn zero_tick_and_zero_limits_are_rejected() {
        let c = Config { tick: Duration::ZERO, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::BadTick { .. })));
        let c = Config { max_inflight: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::ZeroLimit { field: "max_inflight" }));
        let c = Config { max_entries_per_append: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::ZeroLimit { field: "max_entries_per_append" }));
    }

    #[test]
    fn errors_explain_the_fix() {
        let text = ConfigError::EmptyElectionTimeout { min: ms(150) }.to_string();
        assert!(text.contains("make max larger than min"), "{text}");
    }
}
