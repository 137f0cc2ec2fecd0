//! Scenario tests of the core, one or more per rule of the paper: every test name starts with
//! the rule ID it checks (see the spec's raft-rules.md, sections 1 and 3), and each asserts on
//! the actions a core returns and on its `status()`.
//!
//! Cores are driven synchronously on one thread, through the small DSL in [`harness`], which
//! also checks the output contract on every step (SUB-8, ALL-1).

mod harness;

mod append_entries;
mod clock;
mod extensions;
mod figures;
mod gateway;
mod invariants;
mod leaders;
mod membership;
mod notices;
mod reads;
mod request_vote;
mod servers;
mod snapshot;
mod transfer;

use harness::*;

#[test]
fn smoke_election_and_replication() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, &[7, 8]);
    net.run(10);
    for id in 1..=3 {
        assert_eq!(net.node(id).applied, [(LogIndex(2), 7), (LogIndex(3), 8)], "n{id}");
    }
}
