//! [`Notice`]: what the core tells its driver for logging, as data. The core has no I/O (so no
//! `tracing`); a driver turns notices into log lines, metrics or test assertions.
//!
//! Owns only the notice type and its wording. Role and term changes and dropped messages are
//! noticed; per-entry replication detail is not (it is hot, and the driver sees every `Send`).

use std::fmt;
use std::sync::Arc;

use crate::message::Configuration;
use crate::types::{NodeId, Term};

/// Something worth logging that happened inside a step, carried by `Action::Notice`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// This node won the election of `term` and now leads it.
    ElectionWon {
        /// The term it leads.
        term: Term,
    },
    /// This node stopped leading `term` on its own: no quorum heard in an election timeout
    /// (CheckQuorum), or its removal from the configuration committed.
    SteppedDown {
        /// The term it led.
        term: Term,
        /// Why, in a few words.
        reason: &'static str,
    },
    /// The configuration in force on this node changed: a configuration entry was appended,
    /// or one was truncated away and the previous configuration is back.
    ConfigChanged {
        /// The configuration now in force.
        config: Arc<Configuration>,
    },
    /// A message that no correct peer sends was dropped at the gateway and changed nothing.
    InvalidMessage {
        /// The claimed sender.
        from: NodeId,
        /// What was wrong with it.
        reason: &'static str,
    },
}

/// The reason an AppendEntries that would replace a committed entry is refused with. No
/// correct peer sends one (Leader Completeness, §5.4), so the simulator's checker reports the
/// refusal as the violation it stopped.
pub(crate) const OVERWRITES_COMMITTED: &str = "AppendEntries would overwrite a committed entry";

impl Notice {
    /// Whether this notice points at a fault elsewhere (a buggy or malicious peer, or a
    /// misrouting transport) and deserves a warning rather than an informational line.
    pub fn is_warning(&self) -> bool {
        matches!(self, Notice::InvalidMessage { .. })
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::ElectionWon { term } => write!(f, "won the election of {term}"),
            Notice::SteppedDown { term, reason } => {
                write!(f, "stepped down as leader of {term}: {reason}")
            }
            Notice::ConfigChanged { config } => {
                let ids = |set: &std::collections::BTreeSet<NodeId>| {
                    set.iter().map(NodeId::to_string).collect::<Vec<_>>().join(",")
                };
                write!(
                    f,
                    "configuration changed: voters {{{}}} learners {{{}}}",
                    ids(&config.voters),
                    ids(&config.learners)
                )
            }
            Notice::InvalidMessage { from, reason } => {
                write!(f, "dropped an invalid message from {from}: {reason}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_invalid_messages_are_warnings_and_every_notice_reads_well() {
        let config = Arc::new(Configuration::new([NodeId(1), NodeId(2)]));
        let cases = [
            (Notice::ElectionWon { term: Term(3) }, false, "won the election of t3"),
            (
                Notice::SteppedDown { term: Term(3), reason: "no quorum heard" },
                false,
                "stepped down as leader of t3: no quorum heard",
            ),
            (
                Notice::ConfigChanged { config },
                false,
                "configuration changed: voters {n1,n2} learners {}",
            ),
            (
                Notice::InvalidMessage { from: NodeId(2), reason: "bad" },
                true,
                "dropped an invalid message from n2: bad",
            ),
        ];
        for (notice, warning, text) in cases {
            assert_eq!(notice.is_warning(), warning, "{notice:?}");
            assert_eq!(notice.to_string(), text);
        }
    }
}
