//! Panics in user code other than storage, planted in the simulator ([`super::planted`]): a
//! poisoned command, whose `command_size` panics on the node that handles it, and a
//! transport whose `send` panics ([`Fault::FailTransport`]). Either fails the node through
//! the runtime's own path, and the operator kills and restarts it. A client hearing
//! `NodePanicked` gives the command up (outcome unknown), so a poison fails at most one node
//! per submission; a bug switch that retries it shows the checkers catch the poison failing
//! node after node.

use std::time::Duration;

use super::failure_tests::failing;
use super::planted::{PoisonKv, PoisonWorkload};
use super::run::drive_kv_with;
use super::*;

/// `failing` (the nemesis with storage failures) with transport and sync failures too; on
/// every third seed crashes lose unsynced writes, with syncs in the background on half of
/// those and batched in a sync window on the other half.
fn poisoned(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, _) = failing(seed);
    config.transport_failures = true;
    if seed % 3 == 2 {
        config.storage_faults = true;
        match seed % 2 {
            0 => config.background_sync = Some(Duration::from_millis(2)),
            _ => config.sync_window = Some(Duration::from_millis(1)),
        }
    }
    config.sync_failures = true;
    let schedule = Schedule::random(&config);
    (config, schedule)
}

/// Runs `poisoned`'s seed under [`PoisonKv`], one operation in `one_in` poisoned, after
/// `switch` set the simulator up.
fn run_poisoned(
    seed: u64,
    one_in: u32,
    switch: impl FnOnce(&mut Simulator<PoisonKv>),
) -> Result<RunReport, SimFailure> {
    let (config, schedule) = poisoned(seed);
    let kv = KvWorkload { keys: config.keys };
    let mut sim = Simulator::new(config, |_| PoisonKv::default()).expect("scenarios are valid");
    switch(&mut sim);
    drive_kv_with(sim, PoisonWorkload { kv, one_in, at: None }, &schedule)
}

/// Three nodes, no faults but `schedule`; client 0's 20th operation is poisoned. Retrying
/// clients (`Client::propose`'s rule) unless `retries` is off.
fn one_poison(
    retries: bool,
    schedule: &Schedule,
    switch: impl FnOnce(&mut Simulator<PoisonKv>),
) -> (Simulator<PoisonKv>, Result<(), SimFailure>) {
    let mut config = SimConfig::new(7, 3);
    config.record_trace = true;
    config.client_retries = retries;
    let kv = KvWorkload { keys: config.keys };
    let mut sim = Simulator::new(config, |_| PoisonKv::default()).expect("valid");
    switch(&mut sim);
    sim.start_clients(PoisonWorkload { kv, one_in: 0, at: Some((0, 20)) });
    let result = sim.run_schedule(schedule).and_then(|()| sim.settle().map(|_| ()));
    (sim, result)
}

fn lines_with(sim: &Simulator<PoisonKv>, text: &str) -> Vec<String> {
    let trace = sim.trace().unwrap_or_default();
    trace.iter().filter(|line| line.contains(text)).cloned().collect()
}

#[test]
fn a_poisoned_command_fails_the_one_node_that_handles_it_and_its_client_gives_it_up() {
    for retries in [true, false] {
        let (sim, result) = one_poison(retries, &Schedule::default(), |_| {});
        result.unwrap_or_else(|f| panic!("retries {retries}: {f}"));
        assert_eq!(sim.stats().node_failures, 1, "retries {retries}: one node failed");
        let failed = lines_with(&sim, "fail n");
        assert!(failed[0].contains("poisoned command"), "the failure names it: {failed:?}");
        let invoked = lines_with(&sim, "poison");
        let op = invoked[0].split_whitespace().find(|w| w.starts_with('#')).expect("op number");
        let gave_up = lines_with(&sim, &format!("c0 unknown {op} (outcome unknown: node failed)"));
        assert_eq!(gave_up.len(), 1, "its client gave it up as unknown: {invoked:?}");
        assert_eq!(lines_with(&sim, "kill n").len(), 1, "the operator killed the node once");
        check_kv_history(sim.history()).unwrap_or_else(|v| panic!("{v}"));
    }
}

/// The bug: clients retry `NodePanicked`. The poison then fails node after node (the
/// leader, then each new leader), and the bound on failures per submission reports it.
#[test]
fn clients_retrying_a_node_failure_spread_the_poison_and_the_bound_catches_it() {
    for retries in [true, false] {
        let (sim, result) =
            one_poison(retries, &Schedule::default(), |sim| sim.set_retry_node_panicked(true));
        let failure = result.expect_err("the poison spread");
        assert!(
            matches!(&failure.kind, FailureKind::PoisonSpread { failed, .. } if failed.len() == 2),
            "retries {retries}: {failure}"
        );
        assert!(failure.kind.is_liveness(), "{failure}");
        assert_eq!(sim.stats().node_failures, 2, "retries {retries}: two nodes failed");
    }
}

/// The nemesis with storage and transport failures, one operation in 150 poisoned: safe,
/// linearizable and live, each poison failing at most one node, and transport failures
/// striking.
#[test]
fn poisoned_commands_and_transport_panics_under_the_nemesis_stay_safe_linearizable_and_live() {
    let seeds = std::env::var("FERRAFT_POISON_SEEDS").ok().and_then(|s| s.parse().ok());
    let (mut failures, mut ops) = (0, 0);
    for seed in 0..seeds.unwrap_or(40u64) {
        let report = run_poisoned(seed, 150, |_| {})
            .unwrap_or_else(|f| panic!("seed {seed}, poisoned: {f}"));
        failures += report.stats.node_failures;
        ops += report.ops_completed;
    }
    println!("{failures} node failures, {ops} operations");
    assert!(failures >= 40, "only {failures} node failures struck");
}

/// The retry bug under the nemesis: caught (the poison fails a second node) at some seeds
/// below 40, which pass with the rule.
#[test]
fn the_retry_bug_is_caught_under_the_nemesis_and_the_rule_is_not() {
    let found: Vec<u64> = (0..40)
        .filter(|&seed| match run_poisoned(seed, 150, |sim| sim.set_retry_node_panicked(true)) {
            Err(f) if matches!(f.kind, FailureKind::PoisonSpread { .. }) => {
                println!("seed {seed}: {}", f.kind);
                true
            }
            _ => false,
        })
        .collect();
    println!("caught at seeds {found:?}");
    assert!(!found.is_empty(), "retry_node_panicked: not caught in 40 seeds");
    for &seed in &found {
        run_poisoned(seed, 150, |_| {}).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
    }
}

/// A leader whose transport panics at 400 ms fails through the shared path: one failure,
/// traced, the operator's kill and restart, and a run that settles.
#[test]
fn a_transport_panic_fails_the_node_which_is_killed_and_restarted() {
    let fail = Fault::FailTransport { node: Target::Leader, skip: 3 };
    let schedule = Schedule::new(vec![(Duration::from_millis(400), fail)]);
    let (sim, result) = one_poison(true, &schedule, |_| {});
    // NB: the poison at c0's 20th operation strikes near 300 ms, before the transport.
    result.unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(sim.stats().node_failures, 2, "the poison, then the transport");
    let failed = lines_with(&sim, "fail n");
    assert!(failed[1].contains("injected transport panic"), "{failed:?}");
    assert_eq!(lines_with(&sim, "kill n").len(), 2, "the operator killed both");
}

/// With crashes losing unsynced writes, a leader's sync fails at 400 ms (a panic, then an
/// io error): nothing it wrote since its last sync became durable, the node fails, and the
/// operator's kill loses those writes; the checkers, told only of syncs that succeeded,
/// accept the restarted log and the run settles.
#[test]
fn a_failed_sync_fails_the_node_and_the_kill_loses_its_unsynced_writes() {
    for (panics, error) in [(true, "injected storage panic: sync"), (false, "storage failed")] {
        let mut config = SimConfig::new(7, 3);
        config.record_trace = true;
        config.storage_faults = true;
        config.sync_window = Some(Duration::from_millis(1));
        let kv = KvWorkload { keys: config.keys };
        let mut sim = Simulator::new(config, |_| PoisonKv::default()).expect("valid");
        sim.start_clients(PoisonWorkload { kv, one_in: 0, at: None });
        let fail = Fault::FailSync { node: Target::Leader, skip: 0, panics, loses_writes: false };
        let schedule = Schedule::new(vec![(Duration::from_millis(400), fail)]);
        sim.run_schedule(&schedule).unwrap_or_else(|f| panic!("{f}"));
        sim.settle().unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(sim.stats().node_failures, 1, "one node failed");
        let failed = lines_with(&sim, "fail n");
        assert!(failed[0].contains(error), "the failure names its error ({error}): {failed:?}");
        let lost = lines_with(&sim, "loses unsynced writes");
        assert!(!lost.is_empty(), "the kill lost the unsynced writes");
        check_kv_history(sim.history()).unwrap_or_else(|v| panic!("{v}"));
    }
}

/// Seed 9653: a follower's sync after it installed a snapshot fails, and the kill keeps its
/// old log. Legal (it acknowledged nothing), but the checker counted the install durable at
/// once and reported a lost synced entry (SUB-8) until it learned what the storage holds
/// durable after a failed write (`Checker::sync_failed`).
#[test]
fn a_failed_sync_after_a_snapshot_install_may_lose_the_install_seed_9653() {
    run_poisoned(9653, 150, |_| {}).unwrap_or_else(|f| panic!("{f}"));
}
