//! Which configuration is in force: the latest one in the log, committed or not (§6, thesis
//! §4.1), with the history needed to fall back when a configuration entry is truncated.
//!
//! Invariant (M1): at most one configuration entry is uncommitted at a time on a leader
//! (single-server changes, one at a time).

use std::sync::Arc;

use crate::message::{Configuration, Entry, Payload};
use crate::types::LogIndex;

/// The committed base configuration and the configuration entries after it.
#[derive(Clone, Debug)]
pub struct Membership {
    /// The latest configuration known committed, and the index of its entry (0 = bootstrap).
    base: (LogIndex, Arc<Configuration>),
    /// Configuration entries not yet known committed, in log order.
    pending: Vec<(LogIndex, Arc<Configuration>)>,
    /// Configurations before this index do not decide whether this node may campaign. On a
    /// restart it is the latest configuration entry's: which earlier ones committed is unknown,
    /// and the bootstrap configuration may still name a node whose removal is in the log.
    since: LogIndex,
}

impl Membership {
    /// Starts from the bootstrap configuration, then replays configuration entries of the log.
    pub fn new<C>(base: Configuration, offset: LogIndex, entries: &[Entry<C>]) -> Self {
        let mut m =
            Membership { base: (offset, Arc::new(base)), pending: Vec::new(), since: offset };
        for (i, entry) in entries.iter().enumerate() {
            m.on_append(LogIndex(offset.0 + 1 + i as u64), entry);
        }
        m.since = m.latest_index(); // issue 12: a configuration takes effect on restart too
        m
    }

    fn latest_index(&self) -> LogIndex {
        self.pending.last().map_or(self.base.0, |(i, _)| *i)
    }

    /// The configuration in force: the latest in the log.
    pub fn current(&self) -> &Arc<Configuration> {
        self.pending.last().map_or(&self.base.1, |(_, c)| c)
    }

    /// Whether `id` votes in the committed configuration or in one still pending, as a
    /// server being removed does until its removal commits (thesis §4.2.2).
    /// Only configurations from [`Membership::since`] on count.
    pub fn votes_in_any(&self, id: crate::types::NodeId) -> bool {
        let votes =
            |(i, c): &(LogIndex, Arc<Configuration>)| *i >= self.since && c.voters.contains(&id);
        votes(&self.base) || self.pending.iter().any(votes)
    }

    /// Lets every configuration in the log count again for [`Membership::votes_in_any`]: a
    /// candidate still counting this node's vote asked for it.
    pub fn restore_campaign_right(&mut self) {
        self.since = LogIndex(0);
    }

    /// Whether a configuration entry is still uncommitted.
    /// The latest committed configuration.
    pub fn committed(&self) -> &Arc<Configuration> {
        &self.base.1
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Notes an appended entry; a configuration takes effect at once.
    pub fn on_append<C>(&mut self, index: LogIndex, entry: &Entry<C>) {
        if let Payload::Config(config) = &entry.payload {
            self.pending.push((index, Arc::clone(config)));
        }
    }

    /// Drops configurations whose entries were truncated: the previous one is back in force.
    pub fn on_truncate(&mut self, from: LogIndex) {
        assert!(from > self.base.0, "truncating committed configuration at {}", self.base.0);
        self.pending.retain(|(i, _)| *i < from);
        self.since = self.since.min(self.latest_index());
    }

    /// Folds configurations committed through `commit_index` into the base.
    pub fn on_commit(&mut self, commit_index: LogIndex) {
        let committed = self.pending.iter().take_while(|(i, _)| *i <= commit_index).count();
        if let Some(last) = self.pending.drain(..committed).next_back() {
            self.base = last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{NodeId, Term};

    fn config_entry(voters: &[u64]) -> Entry<()> {
        let config = Configuration::new(voters.iter().map(|&v| NodeId(v)));
        Entry { term: Term(1), payload: Payload::Config(Arc::new(config)) }
    }

    #[test]
    fn takes_effect_on_append_and_falls_back_on_truncate() {
        let base = Configuration::new([NodeId(1), NodeId(2), NodeId(3)]);
        let mut m = Membership::new::<()>(base.clone(), LogIndex(0), &[]);
        m.on_append(LogIndex(4), &config_entry(&[1, 2, 3, 4]));
        assert_eq!(m.current().voters.len(), 4);
        assert!(m.has_pending());
        m.on_truncate(LogIndex(4));
        assert_eq!(**m.current(), base);
        assert!(!m.has_pending());
    }

    #[test]
    fn commit_folds_into_base() {
        let mut m = Membership::new::<()>(Configuration::default(), LogIndex(0), &[]);
        m.on_append(LogIndex(2), &config_entry(&[1]));
        m.on_append(LogIndex(5), &config_entry(&[1, 2]));
        m.on_commit(LogIndex(3));
        assert!(m.has_pending(), "the entry at 5 is not committed yet");
        assert_eq!(m.current().voters.len(), 2, "and it is in force");
        m.on_commit(LogIndex(5));
        assert!(!m.has_pending());
        assert_eq!(m.current().voters.len(), 2);
    }
}
