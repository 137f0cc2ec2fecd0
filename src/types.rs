//! Protocol quantities as newtypes, so a swapped `(term, index)` does not compile.
//!
//! Owns: [`NodeId`], [`Term`], [`LogIndex`]. Pure data; nothing here touches I/O.

use std::fmt;

macro_rules! newtype {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                $name(v)
            }
        }
    };
}

newtype!(
    /// A server's identity. Never reused within a cluster (etcd README; SUB-9).
    NodeId,
    "n"
);
newtype!(
    /// A Raft term: the logical clock of §5.1. Starts at 0 and only increases (ST-P1).
    Term,
    "t"
);
newtype!(
    /// A position in the replicated log. The first entry is at index 1; 0 means "before the log".
    LogIndex,
    "i"
);

/// The last term and index a peer (or this node's own storage) may name. No correct peer gets
/// past it (2^63 elections, or entries), so refusing anything beyond costs nothing and leaves a
/// node room to count on with `next()` (its own campaigns, the index after its last entry)
/// without overflowing.
pub(crate) const MARGIN: u64 = u64::MAX / 2;

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one, saturating at 0.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}
