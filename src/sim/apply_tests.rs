//! Deferred applies in virtual time ([`SimConfig::deferred_apply`]): the runtime's `Backlog`
//! (`node/apply.rs`), drained by a node's worker or by a waiting caller at random instants
//! after the step that queued the work, with snapshots reaching the core as steps of their
//! own. The checkers must stay quiet on the correct backlog and catch a planted ordering bug.

use std::time::Duration;

use super::compaction_tests::compaction_faults;
use super::tests::run_with;
use super::*;

/// The compaction fault model (crashes, partitions, on-demand compactions, crashes mid
/// snapshot, membership changes on a share of seeds), with a snapshot policy on every seed
/// and applies deferred by up to 1, 5 or 20 ms.
fn deferred(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, schedule) = compaction_faults(seed);
    config.raft.snapshot_entries = [10, 30][(seed % 2) as usize];
    config.deferred_apply = Some(Duration::from_millis([1, 5, 20][(seed / 2 % 3) as usize]));
    (config, schedule)
}

fn run_deferred(seed: u64, snapshot_behind: bool) -> Result<RunReport, SimFailure> {
    run_with(deferred, seed, |sim| sim.set_snapshot_behind_later_applies(snapshot_behind))
}

/// Every run is safe, linearizable and converges, and over the seeds each path of the
/// backlog runs: drains by workers and by callers, callers that leave a snapshot or a restore
/// to the workers, snapshots taken off the step and installed from a leader.
#[test]
fn the_checkers_hold_with_deferred_applies() {
    let seeds = std::env::var("FERRAFT_APPLY_SEEDS").ok().and_then(|s| s.parse().ok());
    let mut total = Stats::default();
    for seed in 0..seeds.unwrap_or(60u64) {
        let report =
            run_deferred(seed, false).unwrap_or_else(|f| panic!("seed {seed}, deferred: {f}"));
        let stats = report.stats;
        total.drains += stats.drains;
        total.drains_left_to_workers += stats.drains_left_to_workers;
        total.snapshots_taken += stats.snapshots_taken;
        total.snapshots_installed += stats.snapshots_installed;
    }
    println!("{total:?}");
    assert!(total.drains > 1000, "{total:?}");
    assert!(total.drains_left_to_workers >= 10, "{total:?}");
    assert!(total.snapshots_taken >= 100, "{total:?}");
    assert!(total.snapshots_installed >= 10, "{total:?}");
}

/// A caller's drain that meets a snapshot and runs the applies queued behind it first
/// (instead of leaving the snapshot to the workers) takes a snapshot that holds entries past
/// the index it stands for. A node that installs it, or restarts from it, applies those
/// entries twice; the clients' appends then read doubled values.
#[test]
fn a_snapshot_taken_behind_later_applies_is_caught_and_the_correct_backlog_is_not() {
    for seed in 0..10 {
        run_deferred(seed, false).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
    }
    let found = (0..60).find_map(|seed| run_deferred(seed, true).err().map(|f| (seed, f)));
    let (seed, failure) = found.expect("snapshot_behind_later_applies: no violation in 60 seeds");
    println!("snapshot_behind_later_applies caught at seed {seed}: {failure}");
    // NB: a debug build's applier asserts what the bug breaks (`Applier::snapshot`) and stops
    // the node before a checker can see the doubled values; the release build (CI's) has no
    // such assertion, and there a safety check must catch it.
    let by_assertion = cfg!(debug_assertions)
        && failure.to_string().contains("the snapshot stands for what was applied");
    assert!(
        failure.kind.is_safety() || by_assertion,
        "caught, but not by a safety check: {failure}"
    );
}

/// Lease reads the runtime serves on the caller's thread query the deferred applier
/// (`Backlog::query_now`): only what it has applied, which lags the core by up to the drain
/// delay. Under the read nemesis they stay linearizable.
#[test]
fn caller_thread_lease_reads_query_the_deferred_applier() {
    let mut served = 0;
    for seed in (3..60).step_by(4) {
        let (config, schedule) = super::reads::tests::reading(seed);
        assert!(config.deferred_apply.is_some() && config.caller_read_percent > 0);
        let report = run_kv(&config, &schedule).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        served += report.stats.caller_reads;
    }
    println!("{served} reads served on the caller's path");
    assert!(served >= 100, "only {served} reads served on the caller's path");
}

/// Deferred applies and forwarding draw only from the simulator's RNG: a seed replays byte
/// for byte (the backlog's wall-clock timing of `apply` is off in the simulator).
#[test]
fn deferred_and_forwarded_runs_replay_exactly() {
    for seed in 0..4 {
        let (mut config, schedule) = deferred(seed);
        config.forward_requests = true;
        config.record_trace = true;
        let first = run_kv(&config, &schedule).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        let again = run_kv(&config, &schedule).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        assert!(first.stats.drains > 0 && first.stats.forwards > 0, "{:?}", first.stats);
        assert_eq!(first.trace, again.trace, "seed {seed} did not replay");
        assert_eq!(first.trace_hash, again.trace_hash);
    }
}

/// [`deferred`] with a tiny apply backlog limit (`Config::max_apply_backlog`, 1 to 8 entries):
/// nodes stall often, as the runtime's loop does behind a slow state machine, holding their
/// inputs and missing their ticks until a drain brings the backlog down.
pub(super) fn stalling(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, schedule) = deferred(seed);
    config.raft.max_apply_backlog = [1, 3, 8][(seed / 6 % 3) as usize];
    (config, schedule)
}

fn run_stalling(seed: u64, ignore_limit: bool) -> Result<RunReport, SimFailure> {
    run_with(stalling, seed, |sim| sim.set_ignore_apply_limit(ignore_limit))
}

/// Nodes that stall on their apply backlog (leaders losing their term to it, followers
/// resuming with a frozen election timer) stay safe, linearizable and converge; no node
/// ever takes input over its limit, and the loop's count of waiting entries always matches
/// its applier's queue.
#[test]
fn the_checkers_hold_when_nodes_stall_on_their_apply_backlog() {
    let seeds = std::env::var("FERRAFT_APPLY_SEEDS").ok().and_then(|s| s.parse().ok());
    let mut total = Stats::default();
    for seed in 0..seeds.unwrap_or(60u64) {
        let report = run_stalling(seed, false).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        total.apply_stalls += report.stats.apply_stalls;
        total.inputs_held_by_stalls += report.stats.inputs_held_by_stalls;
        total.snapshots_taken += report.stats.snapshots_taken;
    }
    println!("{total:?}");
    assert!(total.apply_stalls >= 100, "{total:?}");
    assert!(total.inputs_held_by_stalls >= 100, "{total:?}");
    assert!(total.snapshots_taken >= 100, "{total:?}");
}

/// The memory audit's unbounded backlog as a switch: nodes that take input however many
/// entries wait for their state machines are caught by the limit's check, which counts over
/// the applier's queue, not with the count the stall uses.
#[test]
fn a_node_that_ignores_its_apply_limit_is_caught_and_the_stalling_node_is_not() {
    for seed in 0..10 {
        run_stalling(seed, false).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
    }
    let found = (0..30).find_map(|seed| run_stalling(seed, true).err().map(|f| (seed, f)));
    let (seed, failure) = found.expect("ignore_apply_limit: no violation in 30 seeds");
    println!("ignore_apply_limit caught at seed {seed}: {failure}");
    assert!(
        matches!(failure.kind, FailureKind::ApplyBacklogOverLimit { .. }),
        "caught, but not by the limit's check: {failure}"
    );
}

/// Stalls draw nothing from the RNG of their own: a stalling seed replays byte for byte.
#[test]
fn stalling_runs_replay_exactly() {
    for seed in 0..3 {
        let (mut config, schedule) = stalling(seed);
        config.record_trace = true;
        let first = run_kv(&config, &schedule).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        let again = run_kv(&config, &schedule).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        assert!(first.stats.apply_stalls > 0, "{:?}", first.stats);
        assert_eq!(first.trace_hash, again.trace_hash, "seed {seed} did not replay");
    }
}

/// The applier's waiting proposals kept in arrival order instead of `(index, term)` order
/// (`node::set_waiting_in_arrival_order`): a node that leads again in a later term answers a
/// proposal it appended below its old term's ones `ProposalDropped` although it was applied,
/// and the client retries it. Under the nemesis the checkers catch the doubled append.
#[test]
fn proposals_waiting_in_arrival_order_are_caught_and_in_index_order_are_not() {
    let seeds = std::env::var("FERRAFT_APPLY_SEEDS").ok().and_then(|s| s.parse().ok());
    let run = |seed, on| {
        crate::node::set_waiting_in_arrival_order(on);
        let result = run_with(super::bites::nemesis, seed, |_| {});
        crate::node::set_waiting_in_arrival_order(false);
        result
    };
    let found =
        (0..seeds.unwrap_or(2000u64)).find_map(|seed| run(seed, true).err().map(|f| (seed, f)));
    let (seed, failure) = found.expect("waiting in arrival order: no violation");
    println!("waiting in arrival order caught at seed {seed}: {failure}");
    assert!(super::tests::is_safety(&failure), "caught, but not by a safety check: {failure}");
    run(seed, false).unwrap_or_else(|f| panic!("seed {seed}, no bug: {f}"));
}
