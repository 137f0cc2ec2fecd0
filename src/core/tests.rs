//! Scenario tests of the core, driven synchronously: a tiny network of cores in one thread.

use std::collections::VecDeque;

use super::*;
use crate::message::{Entry, Payload};

pub(crate) struct Net {
    pub cores: Vec<Core<u64>>,
    pub queue: VecDeque<Message<u64>>,
    pub applied: Vec<Vec<(LogIndex, u64)>>,
}

impl Net {
    pub fn new(n: u64) -> Self {
        let config = Config::default();
        let voters = Configuration::new((1..=n).map(NodeId));
        let cores = (1..=n)
            .map(|i| {
                let state =
                    PersistentState { base_config: voters.clone(), ..PersistentState::default() };
                Core::new(NodeId(i), &config, state)
            })
            .collect();
        Net { cores, queue: VecDeque::new(), applied: vec![Vec::new(); n as usize] }
    }

    pub fn step(&mut self, i: usize, input: Input<u64>) -> Vec<Action<u64>> {
        let mut actions = Vec::new();
        self.cores[i].step(input, &mut actions);
        for a in &actions {
            match a {
                Action::Send(m) => self.queue.push_back(m.clone()),
                Action::Apply { from, to } => {
                    for idx in from.0..=to.0 {
                        let e =
                            self.cores[i].log().entry(LogIndex(idx)).expect("applied entry exists");
                        if let Payload::Command(c) = e.payload {
                            self.applied[i].push((LogIndex(idx), c));
                        }
                    }
                }
                _ => {}
            }
        }
        actions
    }

    pub fn deliver_all(&mut self) {
        while let Some(m) = self.queue.pop_front() {
            let to = (m.to.0 - 1) as usize;
            self.step(to, Input::Receive(m));
        }
    }

    pub fn leader(&self) -> Option<usize> {
        self.cores.iter().position(|c| c.role() == Role::Leader)
    }
}

#[test]
fn smoke_election_and_replication() {
    let mut net = Net::new(3);
    net.step(0, Input::Campaign);
    net.deliver_all();
    assert_eq!(net.leader(), Some(0));
    net.step(0, Input::Propose(vec![7, 8]));
    net.deliver_all();
    for _ in 0..10 {
        net.step(0, Input::Tick);
        net.deliver_all();
    }
    for i in 0..3 {
        assert_eq!(net.applied[i], vec![(LogIndex(2), 7), (LogIndex(3), 8)], "node {i}");
    }
    let _ = Entry::<u64> { term: Term(0), payload: Payload::Noop };
}
