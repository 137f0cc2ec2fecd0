//! Failed syncs that lose their writes for good ([`Fault::FailSync`] with `loses_writes`), as
//! Linux may drop the dirty pages of a failed `fsync` and succeed the next one ("fsyncgate",
//! PostgreSQL 2018). The correct node fails at the error and is killed and restarted from
//! what is durable; a node that takes the error as success (the test-only switch
//! `SyncBugs::sync_error_as_success`) runs on, acknowledging entries it never holds durable,
//! and the checkers catch the crash that reveals it.

use std::time::Duration;

use super::failure_tests::failing;
use super::tests::run_with;
use super::*;
use crate::node::SyncBugs;

/// `failing` (the nemesis with storage failures) with the sync boundary modelled and sync
/// failures, every one of them an io error that loses the writes it covered: syncs in the
/// background on even seeds, batched in a 1 ms window on odd ones.
fn fsyncgate(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, _) = failing(seed);
    config.storage_faults = true;
    match seed % 2 {
        0 => config.background_sync = Some(Duration::from_millis(2)),
        _ => config.sync_window = Some(Duration::from_millis(1)),
    }
    config.sync_failures = true;
    let mut schedule = Schedule::random(&config);
    for (_, fault) in &mut schedule.events {
        if let Fault::FailSync { panics, loses_writes, .. } = fault {
            (*panics, *loses_writes) = (false, true);
        }
    }
    (config, schedule)
}

fn run_fsyncgate(seed: u64, sync_error_as_success: bool) -> Result<RunReport, SimFailure> {
    let bugs = SyncBugs { sync_error_as_success, ..SyncBugs::default() };
    run_with(fsyncgate, seed, |sim| sim.set_sync_bugs(bugs))
}

/// The correct path under the nemesis: every failed sync fails its node, the kill loses
/// what the sync lost, and the run stays safe, linearizable and live (`FERRAFT_FSYNC_SEEDS`
/// seeds, default 100).
#[test]
fn failed_syncs_that_lose_their_writes_stay_safe_linearizable_and_live() {
    let seeds = std::env::var("FERRAFT_FSYNC_SEEDS").ok().and_then(|s| s.parse().ok());
    let mut failures = 0;
    for seed in 0..seeds.unwrap_or(100u64) {
        let report =
            run_fsyncgate(seed, false).unwrap_or_else(|f| panic!("seed {seed}, fsyncgate: {f}"));
        failures += report.stats.node_failures;
    }
    println!("{failures} node failures");
    assert!(failures >= 40, "only {failures} node failures struck");
}

/// The bug: a node takes a sync's io error as success and runs on. Caught at some seeds
/// below 100 (`FERRAFT_FSYNC_SEEDS`), at least one by a safety check (Leader Completeness: it
/// acknowledged entries its crash lost; or one vote per term: it revealed a vote it lost),
/// and every seed that fails with the switch passes without it.
#[test]
fn a_node_taking_a_failed_sync_as_success_is_caught_and_the_correct_one_is_not() {
    let seeds = std::env::var("FERRAFT_FSYNC_SEEDS").ok().and_then(|s| s.parse().ok());
    let (mut found, mut safety) = (Vec::new(), 0);
    for seed in 0..seeds.unwrap_or(100u64) {
        if let Err(f) = run_fsyncgate(seed, true) {
            println!("seed {seed}: {f}");
            safety += usize::from(f.kind.is_safety());
            found.push(seed);
        }
    }
    println!("sync_error_as_success caught at seeds {found:?}, {safety} by a safety check");
    assert!(safety > 0, "sync_error_as_success: not caught by a safety check");
    for &seed in &found {
        run_fsyncgate(seed, false).unwrap_or_else(|f| panic!("seed {seed}, no bug: {f}"));
    }
}

/// Seed 9688: a background sync that lost a follower's new term failed its node, but an
/// append of that term written after the sync began survived the kill: the node restarted
/// with entries of a term its storage did not hold (core invariant I4). The storage is a
/// write-ahead log, so nothing written after a lost sync becomes durable.
#[test]
fn nothing_written_after_a_lost_sync_becomes_durable_seed_9688() {
    run_fsyncgate(9688, false).unwrap_or_else(|f| panic!("{f}"));
}
