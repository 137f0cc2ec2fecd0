//! Majority arithmetic, pure functions. Learners never count; only the configuration's voters.

use crate::message::Configuration;
use crate::types::LogIndex;

/// The highest index stored on a majority of voters, given each voter's match index (LEAD-4's
/// "majority of matchIndex\[i\] >= N"). A voter without a known match counts as 0.
pub fn majority_index(
    config: &Configuration,
    matched: impl Fn(crate::NodeId) -> LogIndex,
) -> LogIndex {
    // NB: called on every acknowledgement: no allocation for the usual cluster sizes.
    majority_of_voters(config, matched)
}

/// [`majority_index`] for a `matched` that is called once per voter, in id order (so it may
/// walk another ordered map alongside, as the core's invariant C1 does).
pub(crate) fn majority_of_voters(
    config: &Configuration,
    mut matched: impl FnMut(crate::NodeId) -> LogIndex,
) -> LogIndex {
    const ON_STACK: usize = 16;
    if config.voters.len() > ON_STACK {
        let mut indexes: Vec<LogIndex> = config.voters.iter().map(|&id| matched(id)).collect();
        return majority_of(&mut indexes);
    }
    let mut buffer = [LogIndex(0); ON_STACK];
    for (slot, &id) in buffer.iter_mut().zip(&config.voters) {
        *slot = matched(id);
    }
    majority_of(&mut buffer[..config.voters.len()])
}

/// The highest index held by a majority of these (one per voter) match indexes.
pub(crate) fn majority_of(indexes: &mut [LogIndex]) -> LogIndex {
    if indexes.is_empty() {
        return LogIndex(0);
    }
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[indexes.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    #[test]
    fn majority_of_three_and_four() {
        let three = Configuration::new([1, 2, 3].map(NodeId));
        let m = |id: NodeId| LogIndex([0, 9, 5, 1][id.0 as usize]);
        assert_eq!(majority_index(&three, m), LogIndex(5));
        let four = Configuration::new([1, 2, 3, 4].map(NodeId));
        let m = |id: NodeId| LogIndex([0, 9, 5, 1, 7][id.0 as usize]);
        assert_eq!(majority_index(&four, m), LogIndex(5));
    }

    #[test]
    fn learners_do_not_count() {
        let mut c = Configuration::new([NodeId(1)]);
        c.learners.insert(NodeId(2));
        let m = |id: NodeId| if id == NodeId(2) { LogIndex(9) } else { LogIndex(1) };
        assert_eq!(majority_index(&c, m), LogIndex(1));
    }
}
