//! Log compaction under the simulator: snapshots taken by policy, InstallSnapshot in small
//! chunks under the random fault schedules, and a planted snapshot bug the checkers must catch.

use std::time::Duration;

use super::*;
use crate::core::Bugs;
use crate::kv::KvStateMachine;

/// Random faults with snapshots every 10 entries, sent 16 bytes at a time with one chunk in
/// flight, and one entry per AppendEntries so followers fall behind the snapshot often.
fn compacting(seed: u64) -> (SimConfig, Schedule) {
    let mut config = SimConfig::new(seed, 3 + 2 * (seed % 2));
    config.raft.snapshot_entries = 10;
    config.raft.snapshot_chunk_bytes = 16;
    config.raft.snapshot_chunks_in_flight = 1 + (seed % 2) as usize;
    config.raft.max_entries_per_append = 1 + (seed % 4) as usize;
    config.network.drop_request = 0.1;
    config.network.drop_reply = 0.1;
    config.network.duplicate = 0.1;
    let schedule = Schedule::random(&config);
    (config, schedule)
}

fn run(seed: u64, bugs: Bugs) -> Result<RunReport, SimFailure> {
    let (config, schedule) = compacting(seed);
    let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid scenario");
    sim.set_bugs(bugs);
    run::drive_kv(sim, &schedule)
}

#[test]
fn compaction_under_faults_is_safe_linearizable_and_converges() {
    let mut installed = 0;
    for seed in 0..40 {
        let report = run(seed, Bugs::default()).unwrap_or_else(|f| panic!("{f}"));
        assert!(report.ops_completed > 0, "seed {seed}: no client progress");
        installed += report.stats.snapshots_installed;
    }
    assert!(installed > 0, "the scenarios never sent a snapshot: they test nothing");
}

#[test]
fn a_snapshot_that_keeps_a_conflicting_log_is_caught() {
    let bugs = Bugs { snapshot_keeps_conflicting_log: true, ..Bugs::default() };
    let found = (0..400).find_map(|seed| {
        run(seed, bugs)
            .err()
            .filter(|f| matches!(f.kind, FailureKind::Safety(_) | FailureKind::NotLinearizable(_)))
    });
    let failure = found.expect("no violation within 400 seeds");
    println!("snapshot_keeps_conflicting_log: {failure}");
}

#[test]
fn a_node_restarts_from_its_snapshot_and_applies_only_the_tail() {
    let (mut config, _) = compacting(1);
    config.raft.snapshot_entries = 5;
    let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid");
    sim.start_clients(KvWorkload { keys: 3 });
    sim.run_for(Duration::from_millis(500)).expect("safe");
    let id = sim.node_ids()[0];
    let before = sim.status(id).expect("up");
    assert!(before.snapshot_index.0 > 0, "{before:?}");
    sim.crash(id).expect("known");
    sim.restart(id).expect("known");
    let after = sim.status(id).expect("restarted");
    assert_eq!(after.snapshot_index, before.snapshot_index, "restarts from its snapshot");
    assert_eq!(after.last_applied, before.snapshot_index, "state restored, nothing re-applied");
    assert!(after.log_entries <= before.log_entries);
    sim.run_for(Duration::from_millis(500)).expect("safe after restart");
}
