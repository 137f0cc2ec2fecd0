//! Micro-benchmark of the pure core, no threads: three cores wired by a queue in one thread,
//! the leader proposing batches. Shows the protocol's own cost per committed entry, separate
//! from channels and wake-ups. Run with `cargo bench --bench core`.

use std::collections::VecDeque;
use std::time::Instant;

use ferraft::{Action, Config, Configuration, Core, Input, Message, NodeId, PersistentState, Role};

const BATCH: usize = 64;
const ENTRIES: usize = 2_000_000;

fn main() {
    let config = Config { max_inflight: 64, ..Config::default() };
    let voters = Configuration::new([1, 2, 3].map(NodeId));
    let state = PersistentState { base_config: voters, ..PersistentState::default() };
    let mut cores: Vec<Core<u64>> =
        (1..=3).map(|i| Core::new(NodeId(i), &config, state.clone())).collect();
    let mut queue = VecDeque::new();
    let mut actions = Vec::new();
    step(&mut cores, 0, Input::Campaign, &mut queue, &mut actions);
    drain(&mut cores, &mut queue, &mut actions);
    assert_eq!(cores[0].role(), Role::Leader, "n1 leads");
    let start = Instant::now();
    for batch in 0..ENTRIES / BATCH {
        let commands = (0..BATCH as u64).map(|i| batch as u64 * BATCH as u64 + i).collect();
        step(&mut cores, 0, Input::Propose(commands), &mut queue, &mut actions);
        drain(&mut cores, &mut queue, &mut actions);
    }
    let secs = start.elapsed().as_secs_f64();
    let committed = cores[0].status().commit_index.0;
    println!(
        "{{\"bench\":\"core_step\",\"nodes\":3,\"batch\":{BATCH},\"entries\":{ENTRIES},\"secs\":{secs:.3},\"entries_per_s\":{:.0},\"ns_per_entry\":{:.1},\"committed\":{committed}}}",
        ENTRIES as f64 / secs,
        secs * 1e9 / ENTRIES as f64
    );
}

fn step(
    cores: &mut [Core<u64>],
    i: usize,
    input: Input<u64>,
    queue: &mut VecDeque<Message<u64>>,
    actions: &mut Vec<Action<u64>>,
) {
    cores[i].step(input, actions);
    for action in actions.drain(..) {
        if let Action::Send(msg) = action {
            queue.push_back(msg);
        }
    }
}

fn drain(
    cores: &mut [Core<u64>],
    queue: &mut VecDeque<Message<u64>>,
    actions: &mut Vec<Action<u64>>,
) {
    while let Some(msg) = queue.pop_front() {
        let to = (msg.to.0 - 1) as usize;
        step(cores, to, Input::Receive(msg), queue, actions);
    }
}
