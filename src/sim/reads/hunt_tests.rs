//! Hunts (exploration aids, run by hand): the bug switches that only staged scenarios showed
//! caught, run over the random scenarios that should be able to reach them. Each prints the
//! seeds that caught its switch and a summary line; none asserts. `FERRAFT_HUNT=n` sets the
//! seeds (default 2,000), `FERRAFT_HUNT_START` the first one:
//! `nice cargo test --release --lib sim::reads::hunt_tests -- --ignored --nocapture`.
//! The switches a random scenario here does catch have a CI test at the end (`random_*`),
//! a window of seeds around the first catch, the catching seed checked clean without it.

use std::time::Duration;

use super::super::tests::is_safety;
use super::super::*;
use super::caller_tests::{caller_leases, transfers_to_deaf_leaders};
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
    hunt("transfer_ignores_lease/transfers_to_deaf_leaders", transfers_to_deaf_leaders, |sim| {
        sim.set_bugs(b)
    });
}

/// Only the deaf-transfer scenario, with the switch and without.
#[test]
#[ignore = "hunt, run by hand"]
fn hunt_deaf_transfers() {
    let b = bugs(|b| b.transfer_ignores_lease = true);
    hunt("transfer_ignores_lease/transfers_to_deaf_leaders", transfers_to_deaf_leaders, |sim| {
        sim.set_bugs(b)
    });
    hunt("control/transfers_to_deaf_leaders", transfers_to_deaf_leaders, |_| {});
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
    hunt("lease_refusal_from_own_campaign/caller_leases", caller_leases_50, |sim| sim.set_bugs(b));
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

/// [`caller_leases`] with clocks at the extremes of a 30% drift (each node's tick period
/// 0.7 or 1.3 of nominal, set by [`extreme_clocks`]; the drift bound set to match), eight
/// impatient clients (20 ms timeouts), and the leader frozen for 100 to 200 ms every 200 to
/// 500 ms on top of the random faults: the random form of the staged
/// `slow_leader_fast_voters`.
fn paused_slow_leaders(seed: u64) -> (SimConfig, Schedule) {
    use rand::{Rng, SeedableRng};
    let (mut config, _) = caller_leases(seed, 100);
    config.clock_drift = Some(0.3);
    config.raft.clock_drift_bound = crate::config::ClockDrift(1.3 / 0.7 * 1.01);
    config.clients = 8;
    config.op_timeout = Duration::from_millis(20);
    if seed.is_multiple_of(2) {
        // A fast network on half the seeds (0.5 to 1 ms, as the staged scenario's): a new
        // leader elected and writing within the lease's excess.
        config.network.min_delay = Duration::from_micros(500);
        config.network.max_delay = Duration::from_millis(1);
    }
    let mut events = Schedule::random(&config).events;
    if seed.is_multiple_of(2) {
        // (no network spells: they would slow it again)
        events.retain(|(_, f)| !matches!(f, Fault::Network(_)));
    }
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 0x5104_c10c_0011);
    let end = config.fault_phase.as_millis() as u64;
    let mut at = 0;
    loop {
        at += rng.random_range(200..=500);
        if at >= end {
            break;
        }
        let pause = Duration::from_millis(rng.random_range(100..=200));
        events.push((Duration::from_millis(at), Fault::Pause(Target::Leader, pause)));
    }
    (config, Schedule::new(events))
}

/// Each node's clock 0.7 or 1.3 of the nominal tick (drawn from the seed), before the run.
fn extreme_clocks(sim: &mut Simulator<KvStateMachine>) {
    use rand::{Rng, SeedableRng};
    let tick = sim.config().raft.tick.as_micros() as u64;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(sim.config().seed ^ 0xc10c);
    for id in sim.node_ids() {
        let scale = if rng.random_bool(0.5) { 1.3 } else { 0.7 };
        sim.set_tick_us(id, (tick as f64 * scale) as u64);
    }
}

#[test]
#[ignore = "hunt, run by hand"]
fn hunt_drift_paused_slow_leaders() {
    let lb = LeaseBugs { ignore_drift_bound: true, ..LeaseBugs::default() };
    hunt("ignore_drift_bound/paused_slow_leaders", paused_slow_leaders, |sim| {
        extreme_clocks(sim);
        sim.set_lease_bugs(lb);
    });
    hunt("control/paused_slow_leaders", paused_slow_leaders, extreme_clocks);
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

/// The nemesis with storage faults, background syncs (up to 3 ms) and the leader deferring
/// its own sync, plus one to four power outages: every node crashes at once (each losing
/// what it had not synced), all restart 1 to 20 ms later, and a random follower is cut off
/// for 100 to 400 ms: the random form of the staged
/// `deferring_leader_crashes_with_its_followers`.
fn deferring_outages(seed: u64) -> (SimConfig, Schedule) {
    use rand::{Rng, SeedableRng};
    let (mut config, _) = super::super::bites::nemesis(seed);
    config.storage_faults = true;
    config.background_sync = Some(Duration::from_millis(3));
    config.raft.defer_leader_sync = true;
    let mut events = Schedule::random(&config).events;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 0x0a7a_6e50_0012);
    let end = config.fault_phase.as_millis() as u64;
    let ms = Duration::from_millis;
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(100..end - 500);
        for n in 0..config.nodes as usize {
            events.push((ms(at), Fault::Crash(Target::Nth(n))));
        }
        let back = at + rng.random_range(1..=20);
        events.push((ms(back), Fault::RestartAll));
        events.push((ms(back), Fault::Isolate(Target::Nth(rng.random_range(0..64)))));
        events.push((ms(back + rng.random_range(100..=400)), Fault::Heal));
    }
    (config, Schedule::new(events))
}

#[test]
#[ignore = "hunt, run by hand"]
fn hunt_deferring_outages() {
    let claims = SyncBugs { deferral_claims_synced: true, ..SyncBugs::default() };
    hunt("deferral_claims_synced/deferring_outages", deferring_outages, |sim| {
        sim.set_sync_bugs(claims)
    });
    hunt("control/deferring_outages", deferring_outages, |_| {});
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

/// Exploration aid: `FERRAFT_SCENARIO=<name> FERRAFT_SEED=<s> FERRAFT_SWITCH=<switch>` runs
/// one seed with the whole trace and prints the lines containing any of `FERRAFT_GREP`'s
/// `|`-separated words (default: every line), then the verdict in full.
#[test]
#[ignore = "exploration aid, run by hand"]
fn hunt_explore() {
    let Ok(name) = std::env::var("FERRAFT_SCENARIO") else { return };
    let scenario: Scenario = match name.as_str() {
        "caller_leases" => caller_leases_50,
        "caller_leases_transfers" => caller_leases_transfers,
        "transfers_to_deaf_leaders" => transfers_to_deaf_leaders,
        "reading_leases" => reading_leases,
        "reading_changes_leases" => reading_changes_leases,
        "windowed" => windowed,
        "background" => background,
        "deferring" => deferring,
        "paused_slow_leaders" => paused_slow_leaders,
        other => panic!("unknown scenario {other}"),
    };
    let seed = env("FERRAFT_SEED", 0);
    let grep = std::env::var("FERRAFT_GREP").unwrap_or_default();
    let (mut config, schedule) = scenario(seed);
    config.record_trace = true;
    println!("{config:?}\n{schedule:?}");
    let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid");
    if name == "paused_slow_leaders" {
        extreme_clocks(&mut sim);
    }
    match std::env::var("FERRAFT_SWITCH").unwrap_or_default().as_str() {
        "transfer_ignores_lease" => sim.set_bugs(bugs(|b| b.transfer_ignores_lease = true)),
        "lease_refusal_forgets_leader" => {
            sim.set_bugs(bugs(|b| b.lease_refusal_forgets_leader = true))
        }
        "leader_counts_unsynced" => sim.set_bugs(bugs(|b| b.leader_counts_unsynced = true)),
        "ignore_drift_bound" => {
            sim.set_lease_bugs(LeaseBugs { ignore_drift_bound: true, ..LeaseBugs::default() })
        }
        "deadline_in_ticks" => {
            sim.set_lease_bugs(LeaseBugs { deadline_in_ticks: true, ..LeaseBugs::default() })
        }
        "no_sync_holds" => {
            sim.set_sync_bugs(SyncBugs { no_sync_holds: true, ..SyncBugs::default() })
        }
        "deferral_claims_synced" => {
            sim.set_sync_bugs(SyncBugs { deferral_claims_synced: true, ..SyncBugs::default() })
        }
        _ => {}
    }
    let keys = sim.config().keys;
    sim.start_clients(KvWorkload { keys });
    let verdict = sim.run_schedule(&schedule).and_then(|()| sim.settle().map(|_| ()));
    let verdict = verdict
        .map_err(|f| f.to_string())
        .and_then(|()| check_kv_history(sim.history()).map(|_| ()).map_err(|v| format!("{v:?}")));
    for line in sim.trace().unwrap_or_default() {
        if grep.split('|').any(|g| line.contains(g)) {
            println!("{line}");
        }
    }
    println!("verdict: {verdict:?}");
}

/// The first seed in `seeds` whose run of `scenario` with `switch` fails (on safety, unless
/// `any`), after checking that seed passes without the switch; panics if none does.
fn first_catch(
    name: &str,
    scenario: Scenario,
    seeds: impl Iterator<Item = u64>,
    any: bool,
    setup: impl Fn(&mut Simulator<KvStateMachine>),
    switch: impl Fn(&mut Simulator<KvStateMachine>),
) -> SimFailure {
    let run = |seed, on: bool| {
        let (config, schedule) = scenario(seed);
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid");
        setup(&mut sim);
        if on {
            switch(&mut sim);
        }
        run::drive_kv(sim, &schedule)
    };
    let mut seeds = seeds;
    let failure = seeds
        .find_map(|seed| run(seed, true).err().filter(|f| any || is_safety(f)))
        .unwrap_or_else(|| panic!("{name}: not caught in the random seeds"));
    run(failure.seed, false).unwrap_or_else(|f| panic!("{name}, without the switch: {f}"));
    println!("BITES | {name} (random) | seed {} | {}", failure.seed, failure.kind);
    failure
}

/// `LeaseBugs::ignore_drift_bound` over [`paused_slow_leaders`]: its fast-network seeds catch
/// it (90, 94, 270, 840, 1198, 1320 of 0..1,500; the same seeds pass without it); no
/// seed of 0..3,000 of `caller_leases` or of 0..6,000 of `reading` did.
#[test]
fn random_frozen_slow_leaders_catch_a_lease_that_ignores_the_drift_bound() {
    let lb = LeaseBugs { ignore_drift_bound: true, ..LeaseBugs::default() };
    let seeds = (0..120).filter(|s| s % 2 == 0);
    first_catch("ignore_drift_bound", paused_slow_leaders, seeds, false, extreme_clocks, |sim| {
        sim.set_lease_bugs(lb)
    });
}

/// `Bugs::leader_counts_unsynced` over [`deferring`] (177 of 0..3,000 catch it, the first at
/// 12; [`windowed`], where the leader syncs before it counts itself, none of 0..3,000).
#[test]
fn random_deferring_leaders_catch_a_leader_counting_its_unsynced_log() {
    let b = bugs(|b| b.leader_counts_unsynced = true);
    first_catch("leader_counts_unsynced", deferring, 0..60, false, |_| {}, |sim| sim.set_bugs(b));
}

/// `Bugs::leader_never_syncs` over [`deferring`]: a liveness failure (1,008 of 0..3,000, the
/// first at 2; no safety one).
#[test]
fn random_deferring_leaders_catch_a_leader_that_never_syncs() {
    let b = bugs(|b| b.leader_never_syncs = true);
    let f =
        first_catch("leader_never_syncs", deferring, 0..20, true, |_| {}, |sim| sim.set_bugs(b));
    assert!(!is_safety(&f), "leader_never_syncs breaks liveness, not safety: {f}");
}

/// `SyncBugs::no_sync_holds` over [`background`] (7 of 0..3,000 on safety: 106, 1821, 1861,
/// 2035, 2479, 2650, 2693; 16 more as liveness failures).
#[test]
fn random_background_syncs_catch_answers_before_the_sync() {
    let s = SyncBugs { no_sync_holds: true, ..SyncBugs::default() };
    first_catch("no_sync_holds", background, 90..130, false, |_| {}, |sim| sim.set_sync_bugs(s));
}
