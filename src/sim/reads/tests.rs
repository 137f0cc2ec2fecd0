//! The simulator proves reads linearizable: the KV workload's Gets go through ReadIndex, leases
//! (with clocks drifting within the configured bound) and follower reads under every fault
//! family, and the checker judges them with the writes on every seed. A leader that answers
//! without its confirmation round is caught; so is a stale read handed to the checker directly.

use super::super::bites::nemesis;
use super::super::*;
use crate::core::Bugs;
use crate::kv::{KvCommand, KvStateMachine};
use crate::linearizability::{check, Operation};

/// The nemesis with reads off the log; odd seeds use leases, with the Raft drift bound set to
/// what the simulated clocks may actually do (tick periods within ±drift of nominal), half of
/// them with deferred applies.
pub(crate) fn reading(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, schedule) = nemesis(seed);
    config.reads = true;
    if seed % 2 == 1 {
        config.raft.lease_reads = true;
        let d = config.clock_drift.unwrap_or(0.0);
        config.raft.clock_drift_bound = crate::config::ClockDrift((1.0 + d) / (1.0 - d) * 1.01);
        // Half the lease reads on the path the runtime runs on the caller's thread.
        config.caller_read_percent = 50;
        if seed % 4 == 3 {
            // The runtime's applier: what a caller's read finds applied lags the core.
            config.deferred_apply = Some(std::time::Duration::from_millis(2));
        }
    } else if seed % 4 == 2 {
        // ReadIndex needs no CheckQuorum: a deposed leader that never steps down still cannot
        // confirm a round.
        config.raft.check_quorum = false;
    }
    (config, schedule)
}

/// Where a deposed leader lives longest: no CheckQuorum, no leases.
fn deposed(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, schedule) = nemesis(seed);
    config.reads = true;
    config.raft.check_quorum = false;
    (config, schedule)
}

fn run(seed: u64, bugs: Bugs) -> Result<RunReport, SimFailure> {
    run_scenario(reading, seed, bugs)
}

fn run_scenario(
    scenario: fn(u64) -> (SimConfig, Schedule),
    seed: u64,
    bugs: Bugs,
) -> Result<RunReport, SimFailure> {
    super::super::tests::run_with_bugs(scenario, seed, bugs)
}

#[test]
fn reads_through_every_path_are_linearizable_under_faults() {
    let (mut reads, mut by_round) = (0, 0);
    for seed in 0..6 {
        let report = run(seed, Bugs::default()).unwrap_or_else(|f| panic!("{f}"));
        by_round += report.stats.reads_by_round; // `ReadPolicy::ReadIndex`, lease or not
        let (config, schedule) = reading(seed);
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid");
        sim.start_clients(KvWorkload { keys: 3 });
        sim.run_schedule(&schedule).unwrap_or_else(|f| panic!("{f}"));
        reads += sim
            .history()
            .iter()
            .filter(|op| matches!(op.command, KvCommand::Get { .. }) && op.completed.is_some())
            .count();
    }
    assert!(reads > 100, "only {reads} reads completed");
    assert!(by_round > 25, "only {by_round} reads chose a round over the lease");
}

/// Bug switch (a): the leader answers reads without confirming it still leads. A deposed
/// leader (partitioned, paused, or just not yet told) then serves stale values.
#[test]
fn a_leader_answering_without_its_round_is_caught() {
    let bugs = Bugs { read_without_confirmation: true, ..Bugs::default() };
    let found = (0..60).find_map(|seed| {
        let failure = run_scenario(deposed, seed, bugs).err();
        failure.filter(|f| matches!(f.kind, FailureKind::NotLinearizable(_)))
    });
    for seed in 0..4 {
        run_scenario(deposed, seed, Bugs::default()).unwrap_or_else(|f| panic!("{f}"));
    }
    let failure = found.expect("no stale read caught in 60 seeds");
    println!("BITES | read_without_confirmation | seed {} | {}", failure.seed, failure.kind);
}

/// The checker itself: a read that returns the value from before a write that completed
/// before the read began is not linearizable.
#[test]
fn the_checker_rejects_a_stale_read() {
    let put = |value: &str| KvCommand::Put { key: "k".into(), value: value.into() };
    let get = KvCommand::Get { key: "k".into() };
    let op = |client, command, invoked_at, done: u64, output: Option<&str>| Operation {
        client,
        command,
        invoked_at,
        completed: Some((done, output.map(Into::into))),
    };
    let history = vec![
        op(0, put("old"), 0, 10, Some("old")),
        op(0, put("new"), 20, 30, Some("new")),
        op(1, get.clone(), 40, 50, Some("old")), // stale: "new" completed at 30
    ];
    let violation = check(&history).expect_err("a stale read");
    assert_eq!(violation.key, "k");
    // Overlapping the write instead, the same answer is fine.
    let mut fine = history.clone();
    fine[2] = op(1, get, 25, 50, Some("old"));
    assert_eq!(check(&fine), Ok(()));
}

/// A long sweep of the read scenarios: `FERRAFT_READ_SEEDS=2000 cargo test --release --lib
/// read_sweep -- --ignored`.
#[test]
#[ignore = "long sweep; run by hand"]
fn read_sweep() {
    let seeds =
        std::env::var("FERRAFT_READ_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    for seed in 0..seeds {
        run(seed, Bugs::default()).unwrap_or_else(|f| panic!("{f}"));
        run_scenario(deposed, seed, Bugs::default()).unwrap_or_else(|f| panic!("{f}"));
    }
}
