//! `Input::Ticks(n)` is exactly `n` single `Input::Tick` steps, and `Core::ticks_until_due`
//! never skips a tick that acts: checked over random clusters (elections, replication, reads,
//! transfers, membership changes, crashes, lost messages), comparing every action and the
//! whole core state of two clusters driven alike, one by single ticks and one by `Ticks(n)`.

use proptest::prelude::*;

use super::harness::*;
use crate::core::{ReadId, ReadPolicy};

#[derive(Clone, Debug)]
enum Op {
    Tick(u64, u64),
    Deliver,
    Drop,
    Propose(u64),
    Read(u64),
    Transfer(u64, u64),
    Change(u64, bool),
    Campaign(u64),
    Crash(u64),
}

fn op(nodes: u64) -> impl Strategy<Value = Op> {
    let id = 1..=nodes;
    prop_oneof![
        6 => (id.clone(), 1..60u64).prop_map(|(id, n)| Op::Tick(id, n)),
        8 => Just(Op::Deliver),
        1 => Just(Op::Drop),
        2 => id.clone().prop_map(Op::Propose),
        2 => id.clone().prop_map(Op::Read),
        1 => (id.clone(), 1..=nodes + 1).prop_map(|(id, to)| Op::Transfer(id, to)),
        1 => (id.clone(), any::<bool>()).prop_map(|(id, add)| Op::Change(id, add)),
        1 => id.clone().prop_map(Op::Campaign),
        1 => id.prop_map(Op::Crash),
    ]
}

/// Two identical clusters; `down` holds crashed nodes (restarted by their next tick).
struct Twins {
    single: Net,
    batched: Net,
    down: std::collections::BTreeSet<u64>,
    reads: u64,
    nodes: u64,
}

impl Twins {
    fn new(nodes: u64, config: Config) -> Self {
        let net = || Net::with_config(nodes, config.clone());
        Twins { single: net(), batched: net(), down: Default::default(), reads: 0, nodes }
    }

    fn both(&mut self, id: u64, input: Input<u64>) {
        if self.down.contains(&id) {
            return;
        }
        let a = self.single.step(id, input.clone());
        let b = self.batched.step(id, input);
        assert_eq!(a, b, "n{id}: the twins diverged before the ticks");
    }

    fn tick(&mut self, id: u64, n: u64) {
        if self.down.remove(&id) {
            self.single.restart(id);
            self.batched.restart(id);
        }
        let due = self.single.node(id).core.ticks_until_due();
        let (mut single, mut cuts) = (Vec::new(), Vec::new());
        for i in 0..n {
            let before = single.len();
            self.single.node_mut(id).core.step(Input::Tick, &mut single);
            if i + 1 < due {
                assert_eq!(single.len(), before, "n{id}: tick {} of {due} is not idle", i + 1);
            }
            cuts.push(single.len());
        }
        let mut batched = Vec::new();
        self.batched.node_mut(id).core.step(Input::Ticks(n), &mut batched);
        assert_eq!(single, batched, "n{id}: {n} ticks vs Ticks({n}): actions differ");
        let (a, b) =
            (self.single.node(id).core.fingerprint(), self.batched.node(id).core.fingerprint());
        assert_eq!(a, b, "n{id}: {n} ticks vs Ticks({n}): states differ");
        // Each tick's output is in contract order; the concatenation is executed tick by tick.
        for net in [&mut self.single, &mut self.batched] {
            let mut from = 0;
            for &to in &cuts {
                net.node_mut(id).execute(&single[from..to]);
                from = to;
            }
            net.queue.extend(sends(&single).into_iter().cloned());
            net.step(id, Input::Synced);
        }
    }

    fn deliver(&mut self, keep: bool) {
        let (Some(a), Some(b)) = (self.single.queue.pop_front(), self.batched.queue.pop_front())
        else {
            return;
        };
        assert_eq!(a, b, "the twins' networks diverged");
        if keep && !self.down.contains(&a.from.0) && a.to.0 <= self.nodes {
            self.both(a.to.0, Input::Receive(a));
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Tick(id, n) => self.tick(id, n),
            Op::Deliver => self.deliver(true),
            Op::Drop => self.deliver(false),
            Op::Propose(id) => self.both(id, Input::Propose(vec![id])),
            Op::Read(id) => {
                self.reads += 1;
                self.both(id, Input::Read(vec![ReadId(self.reads)], ReadPolicy::Lease));
            }
            Op::Transfer(id, to) => self.both(id, Input::TransferLeadership(NodeId(to))),
            Op::Change(id, add) => {
                let change = if add {
                    MembershipChange::AddNode(NodeId(9))
                } else {
                    MembershipChange::RemoveNode(NodeId(9))
                };
                self.both(id, Input::ChangeMembership(change));
            }
            Op::Campaign(id) => self.both(id, Input::Campaign),
            Op::Crash(id) => {
                if self.down.insert(id) {
                    self.single.crash(id);
                    self.batched.crash(id);
                }
            }
        }
    }
}

fn configs() -> impl Strategy<Value = Config> {
    (any::<bool>(), any::<bool>(), 0..3u64).prop_map(|(pre_vote, lease_reads, snapshot)| Config {
        pre_vote,
        lease_reads,
        snapshot_entries: snapshot * 4,
        ..test_config()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn ticks_n_is_n_single_ticks(
        nodes in 1..=4u64,
        config in configs(),
        ops in proptest::collection::vec(op(4), 1..300),
    ) {
        let mut twins = Twins::new(nodes, config);
        for op in ops {
            let bad_id = match &op {
                Op::Tick(id, _) | Op::Propose(id) | Op::Read(id) | Op::Transfer(id, _) => *id,
                Op::Change(id, _) | Op::Campaign(id) | Op::Crash(id) => *id,
                Op::Deliver | Op::Drop => 1,
            };
            if bad_id <= nodes {
                twins.run(op);
            }
        }
    }
}

#[test]
fn ticks_until_due_counts_to_the_election_timeout() {
    let mut node = boot(1).voters(&[1, 2, 3]).config(fixed_timeout()).start();
    assert_eq!(node.core.ticks_until_due(), 15, "a fresh follower times out in 15 ticks");
    assert!(node.step(Input::Ticks(14)).is_empty(), "14 idle ticks do nothing");
    assert_eq!(node.core.ticks_until_due(), 1);
    let acts = node.step(Input::Ticks(1));
    assert!(!sends(&acts).is_empty(), "the 15th tick campaigns");
}
