//! Hunts (exploration aids, run by hand): the bug switches that only staged scenarios show
//! caught, run over the random scenarios that should be able to reach them. Each prints the
//! seeds that caught its switch and a summary line; none asserts. `FERRAFT_HUNT=n` sets the
//! seeds (default 2,000), `FERRAFT_HUNT_START` the first one:
//! `nice cargo test --release --lib sim::reads::hunt_tests -- --ignored --nocapture`.

use std::time::Duration;

use super::super::tests::is_safety;
use super::super::*;
use super::caller_tests::caller_leases;
use super::membership_tests::reading_changes;
use super::tests::reading;
use crate::core::Bugs;
use crate::kv::KvStateMachine;
use crate::node::{LeaseBugs, SyncBugs};

type Scenario = fn(u64) -> (SimConfig, Schedule);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Runs `scenario` over the hunt's seeds with `switch` applied, prints every failure (all
/// kinds; `safety` marks the safety ones) and a summary. Returns the catching seeds.
fn hunt(
    name: &str,
    scenario: Scenario,
    switch: impl Fn(&mut Simulator<KvStateMachine>),
) -> Vec<u64> {
    let (start, n) = (env("FERRAFT_HUNT_START", 0), env("FERRAFT_HUNT", 2_000));
    let (mut safety, mut other) = (Vec::new(), Vec::new());
    for seed in start..start + n {
        let (config, schedule) = scenario(seed);
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid");
        switch(&mut sim);
        if let Err(f) = run::drive_kv(sim, &schedule) {
            let kind = f.kind.to_string();
            let first_line = kind.lines().next().unwrap_or("").to_owned();
            println!("HUNT | {name} | seed {seed} | safety {} | {first_line}", is_safety(&f));
            if is_safety(&f) {
                safety.push(seed);
            } else {
                other.push(seed);
            }
        }
    }
    println!(
        "HUNT SUMMARY | {name} | seeds {start}..{} | safety catches {} {:?} | other failures {} {:?}",
        start + n,
        safety.len(),
        &safety[..safety.len().min(12)],
        other.len(),
        &other[..other.len().min(12)],
    );
    safety
}

fn bugs(edit: fn(&mut Bugs)) -> Bugs {
    let mut b = Bugs::default();
    edit(&mut b);
    b
}

/// Only the lease seeds of [`reading`] (odd ones): seed k runs reading's seed 2k+1.
fn reading_leases(seed: u64) -> (SimConfig, Schedule) {
    reading(2 * seed + 1)
}

fn caller_leases_50(seed: u64) -> (SimConfig, Schedule) {
    caller_leases(seed, 50)
}

/// [`caller_leases`] with random leadership transfers (one every ~150 ms).
fn caller_leases_transfers(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, _) = caller_leases(seed, 50);
    config.transfers = Some(Duration::from_millis(150));
    let schedule = Schedule::random(&config);
    (config, schedule)
}

/// The lease seeds of [`reading`] with random leadership transfers.
fn reading_leases_transfers(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, _) = reading(2 * seed + 1);
    config.transfers = Some(Duration::from_millis(150));
    let schedule = Schedule::random(&config);
    (config, schedule)
}

/// The lease seeds of [`reading_changes`] (odd ones).
fn reading_changes_leases(seed: u64) -> (SimConfig, Schedule) {
    reading_changes(2 * seed + 1)
}

#[test]
#[ignore = "hunt, run by hand"]
fn hunt_transfer_ignores_lease() {
    let b = bugs(|b| b.transfer_ignores_lease = true);
    hunt("transfer_ignores_lease/caller_leases+transfers", caller_leases_transfers, |sim| {
        sim.set_bugs(b)
    });
    hunt("transfer_ignores_lease/reading_leases+transfers", reading_leases_transfers, |sim| {
        sim.set_bugs(b)
    });
}

#[test]
#[ignore = "hunt, run by hand"]
fn hunt_lease_refusal_forgets_leader() {
    let b = bugs(|b| b.lease_refusal_forgets_leader = true);
    hunt("lease_refusal_forgets_leader/caller_leases", caller_leases_50, |sim| sim.set_bugs(b));
    hunt("lease_refusal_forgets_leader/reading_leases", reading_leases, |sim| sim.set_bugs(b));
    hunt("lease_refusal_forgets_leader/reading_changes_leases", reading_changes_leases, |sim| {
        sim.set_bugs(b)
    });
}

#[test]
#[ignore = "hunt, run by hand"]
fn hunt_lease_from_own_campaign() {
    let b = bugs(|b| b.lease_refusal_from_own_campaign = true);
    hunt("lease_refusal_from_own_campaign/caller_leases", caller_leases_50, |sim| {
        sim.set_bugs(b)
    });
    hunt("lease_refusal_from_own_campaign/reading_leases", reading_leases, |sim| sim.set_bugs(b));
}

#[test]
#[ignore = "hunt, run by hand"]
fn hunt_lease_for_every_read() {
    let b = bugs(|b| b.lease_for_every_read = true);
    hunt("lease_for_every_read/caller_leases", caller_leases_50, |sim| sim.set_bugs(b));
}

#[test]
#[ignore = "hunt, run by hand"]
fn hunt_ignore_drift_bound() {
    let lb = LeaseBugs { ignore_drift_bound: true, ..LeaseBugs::default() };
    hunt("ignore_drift_bound/caller_leases", caller_leases_50, |sim| sim.set_lease_bugs(lb));
    hunt("ignore_drift_bound/reading_leases", reading_leases, |sim| sim.set_lease_bugs(lb));
}

#[test]
#[ignore = "hunt, run by hand"]
fn hunt_deadline_in_ticks() {
    let lb = LeaseBugs { deadline_in_ticks: true, ..LeaseBugs::default() };
    hunt("deadline_in_ticks/caller_leases", caller_leases_50, |sim| sim.set_lease_bugs(lb));
    hunt("deadline_in_ticks/reading_leases", reading_leases, |sim| sim.set_lease_bugs(lb));
}

/// The nemesis with the sync boundary modelled (storage faults), each node's sync held for a
/// 3 ms window, so a leader's AppendEntries leave before its own write is durable.
fn windowed(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, schedule) = super::super::bites::nemesis(seed);
    config.storage_faults = true;
    config.sync_window = Some(Duration::from_millis(3));
    (config, schedule)
}

/// The nemesis with storage faults and syncs in the background (up to 3 ms), with
/// membership changes.
fn background(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, _) = super::super::bites::nemesis(seed);
    config.storage_faults = true;
    config.background_sync = Some(Duration::from_millis(3));
    let schedule = Schedule::random_with_membership(&config);
    (config, schedule)
}

/// [`background`] with the leader deferring its own sync (`Config::defer_leader_sync`).
fn deferring(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, _) = background(seed);
    config.raft.defer_leader_sync = true;
    let schedule = Schedule::random_with_membership(&config);
    (config, schedule)
}

#[test]
#[ignore = "hunt, run by hand"]
fn hunt_leader_counts_unsynced() {
    let b = bugs(|b| b.leader_counts_unsynced = true);
    hunt("leader_counts_unsynced/windowed", windowed, |sim| sim.set_bugs(b));
    hunt("leader_counts_unsynced/deferring", deferring, |sim| sim.set_bugs(b));
}

#[test]
#[ignore = "hunt, run by hand"]
fn hunt_leader_never_syncs() {
    let b = bugs(|b| b.leader_never_syncs = true);
    hunt("leader_never_syncs/deferring", deferring, |sim| sim.set_bugs(b));
}

#[test]
#[ignore = "hunt, run by hand"]
fn hunt_sync_bugs() {
    let sb = |edit: fn(&mut SyncBugs)| {
        let mut s = SyncBugs::default();
        edit(&mut s);
        s
    };
    let no_holds = sb(|s| s.no_sync_holds = true);
    hunt("no_sync_holds/background", background, |sim| sim.set_sync_bugs(no_holds));
    let claims = sb(|s| s.deferral_claims_synced = true);
    hunt("deferral_claims_synced/deferring", deferring, |sim| sim.set_sync_bugs(claims));
    let reveal = sb(|s| s.reveal_before_term_durable = true);
    hunt("reveal_before_term_durable/background", background, |sim| sim.set_sync_bugs(reveal));
}

/// The control: the hunts' own scenarios with no switch.
#[test]
#[ignore = "hunt, run by hand"]
fn hunt_control() {
    for (name, scenario) in [
        ("caller_leases_transfers", caller_leases_transfers as Scenario),
        ("reading_leases_transfers", reading_leases_transfers),
        ("windowed", windowed),
        ("background", background),
        ("deferring", deferring),
    ] {
        hunt(&format!("control/{name}"), scenario, |_| {});
    }
}
