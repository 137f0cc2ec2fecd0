//! Session retries in the simulator: clients resend a timed-out write with the same session
//! number (`SimConfig::retry_timeouts`) and the session table must apply it once. The history,
//! unwrapped to plain KV commands, is checked for linearizability: a write applied twice shows
//! its unique token twice. Bug switch (b), `Sessions::apply_duplicates`, must be caught.

use rand::rngs::SmallRng;

use super::super::*;
use crate::kv::{KvCommand, KvOutput, KvStateMachine};
use crate::session::{ClientId, SessionCommand, SessionOutput, Sessions};

type Sm = Sessions<KvStateMachine>;

/// Each client owns the session `CLIENT_BASE + client`, opened at start on every replica.
const CLIENT_BASE: u64 = 1 << 40;

struct SessionWorkload(KvWorkload);

impl Workload<Sm> for SessionWorkload {
    fn command(&mut self, client: u64, seq: u64, rng: &mut SmallRng) -> SessionCommand<KvCommand> {
        let command = Workload::<KvStateMachine>::command(&mut self.0, client, seq, rng);
        // One operation at a time per client: nothing below `seq` is still awaited.
        SessionCommand::Command {
            client: ClientId(CLIENT_BASE + client),
            seq,
            lowest_pending: seq,
            command,
        }
    }
}

fn scenario(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, schedule) = super::super::bites::nemesis(seed);
    config.retry_timeouts = true;
    config.op_timeout = std::time::Duration::from_millis(60); // retries while the first may land
    (config, schedule)
}

fn run(seed: u64, apply_duplicates: bool) -> Result<(), String> {
    let (config, schedule) = scenario(seed);
    let clients = config.clients;
    let mut sim = Simulator::new(config, move |_| {
        let mut sm =
            Sessions::with_clients(KvStateMachine::new(), (0..clients).map(|c| CLIENT_BASE + c));
        sm.apply_duplicates = apply_duplicates;
        sm
    })
    .map_err(|e| e.to_string())?;
    sim.start_clients(SessionWorkload(KvWorkload { keys: 2 }));
    sim.run_schedule(&schedule).map_err(|f| f.to_string())?;
    sim.settle().map_err(|f| f.to_string())?;
    let history: Vec<HistoryOp<KvCommand, KvOutput>> = sim
        .history()
        .iter()
        .map(|op| HistoryOp {
            client: op.client,
            command: match &op.command {
                SessionCommand::Command { command, .. } => command.clone(),
                SessionCommand::Register => unreachable!("clients never register here"),
            },
            invoked_at: op.invoked_at,
            completed: op.completed.as_ref().map(|(at, out)| match out {
                SessionOutput::Output(o) => (*at, o.clone()),
                other => panic!("seed {seed}: unexpected session answer {other:?}"),
            }),
            not_applied: op.not_applied,
        })
        .collect();
    check_kv_history(&history).map(|_| ()).map_err(|v| format!("seed {seed}: {v}"))
}

/// More seeds: `FERRAFT_SESSION_SEEDS=500 cargo test --release --lib retried_session`.
#[test]
fn retried_session_writes_are_applied_once() {
    let seeds = std::env::var("FERRAFT_SESSION_SEEDS").ok().and_then(|s| s.parse().ok());
    for seed in 0..seeds.unwrap_or(8) {
        run(seed, false).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Bug switch (b): the table applies a duplicate again instead of answering from its cache.
#[test]
fn applying_a_duplicate_twice_is_caught() {
    let found = (0..60).find(|&seed| run(seed, true).is_err_and(|e| e.contains("linearizable")));
    let seed = found.expect("a duplicate applied twice, caught within 60 seeds");
    println!("BITES | apply_duplicates | seed {seed}");
}
