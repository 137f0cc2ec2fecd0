//! The inbox byte budget in the simulator (`network.rs`, `inbox.rs`): simulated links and a
//! paused or stalled node's waiting messages are bounded by the runtime's own `ByteBudget`
//! and size estimate. Small budgets ([`Fault::InboxBytes`], drawn by random schedules on a
//! quarter of the seeds) keep runs safe, linearizable and live; a budget that leaks (the
//! test-only switch `ByteBudget::never_gives_back`) must be caught.

use std::time::Duration;

use super::bites::{nemesis, RECORDED_SEEDS};
use super::network::{Fate, Network, LINK_BYTES_FULL};
use super::tests::run_with;
use super::*;
use crate::kv::KvStateMachine;
use crate::message::Body;
use crate::transport::message_bytes;
use rand::SeedableRng;

/// The budget a seed's random schedule starts with, if it draws one.
fn drawn_budget(schedule: &Schedule) -> Option<usize> {
    match schedule.events.first() {
        Some((at, Fault::InboxBytes(max))) if at.is_zero() => Some(*max),
        _ => None,
    }
}

/// The first `n` nemesis seeds (every fault family, 3 or 5 nodes) whose schedule starts with a
/// small inbox budget.
fn seeds_with_small_budgets(n: usize) -> Vec<u64> {
    (0..).filter(|&seed| drawn_budget(&nemesis(seed).1).is_some()).take(n).collect()
}

/// The nemesis with an inbox budget of 1 to 4 KiB in the config, for the whole run, quiet
/// period included, and windows that `Config::validate` takes with it: AppendEntries of at
/// most 512 bytes, a leader's window (and snapshot chunks in flight) no larger than the inbox.
fn small_inboxes(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, mut schedule) = nemesis(seed);
    let budget = [1 << 10, 2 << 10, 4 << 10][(seed % 3) as usize];
    config.raft.max_inbox_bytes = budget;
    config.raft.max_inflight_bytes = budget;
    config.raft.max_append_bytes = 512;
    config.raft.snapshot_chunk_bytes = 256;
    config.raft.snapshot_chunks_in_flight = 2;
    schedule.events.retain(|(_, f)| !matches!(f, Fault::InboxBytes(_)));
    (config, schedule)
}

fn timeout_now(from: u64, to: u64) -> Message<u64> {
    let (from, to) = (NodeId(from), NodeId(to));
    Message { from, to, term: crate::types::Term(1), body: Body::TimeoutNow }
}

#[test]
fn a_link_refuses_what_its_bytes_do_not_fit_unless_it_is_empty() {
    let config = NetworkConfig { duplicate: 0.0, ..NetworkConfig::default() }.reliable();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let msg = timeout_now(1, 2);
    let bytes = message_bytes(&msg, |_| 8);
    let mut network = Network::new(config, 2 * bytes).expect("valid");
    assert!(network.plan(&msg, bytes, &mut rng).is_ok());
    assert!(network.plan(&msg, bytes, &mut rng).is_ok(), "exactly full");
    assert_eq!(network.plan(&msg, bytes, &mut rng), Err(LINK_BYTES_FULL));
    assert!(network.plan(&timeout_now(2, 1), bytes, &mut rng).is_ok(), "each link its own");
    network.landed(msg.from, msg.to, bytes);
    assert!(network.plan(&msg, bytes, &mut rng).is_ok(), "a landed message gave its bytes back");
    network.landed(msg.from, msg.to, bytes);
    network.landed(msg.from, msg.to, bytes);
    assert!(network.plan(&msg, 100 * bytes, &mut rng).is_ok(), "alone on an empty link");
    assert_eq!(network.plan(&msg, 1, &mut rng), Err(LINK_BYTES_FULL));
    assert_eq!(network.refused_bytes(), 2);
}

#[test]
fn a_duplicate_that_does_not_fit_is_not_sent() {
    let config = NetworkConfig { duplicate: 1.0, ..NetworkConfig::default().reliable() };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let msg = timeout_now(1, 2);
    let mut network = Network::new(config, 100).expect("valid");
    assert!(matches!(network.plan(&msg, 60, &mut rng), Ok(Fate::Once(_))), "60 + 60 > 100");
    assert_eq!(network.refused_bytes(), 1);
    network.landed(msg.from, msg.to, 60);
    assert!(matches!(network.plan(&msg, 50, &mut rng), Ok(Fate::Twice(..))), "50 + 50 fit");
}

/// A follower paused for a second under a 1,000-byte inbox: the heartbeats and appends that
/// reach it wait in its inbox only as far as their bytes fit, the rest are dropped (counted),
/// and it catches up once it resumes.
#[test]
fn a_paused_nodes_inbox_holds_at_most_its_budget_and_it_catches_up() {
    let mut config = SimConfig::new(7, 3);
    config.network = config.network.reliable();
    let ms = Duration::from_millis;
    let schedule = Schedule::new(vec![
        (Duration::ZERO, Fault::InboxBytes(1_000)),
        (ms(400), Fault::Pause(Target::Follower(0), ms(1_000))),
    ]);
    let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid");
    sim.start_clients(KvWorkload { keys: 3 });
    sim.run_schedule(&schedule).unwrap_or_else(|f| panic!("{f}"));
    let most = sim.nodes.values().map(|n| n.inbox.peak()).max().expect("nodes");
    assert!(most > 500 && most <= 1_000, "an inbox held {most} bytes against a budget of 1,000");
    assert!(sim.stats.dropped_inbox_bytes > 0, "the paused follower's inbox never filled");
    let commit = sim.settle().unwrap_or_else(|f| panic!("{f}"));
    assert!(commit.0 > 0);
}

/// Seeds of the nemesis that draw a small budget stay clean (safety, linearizability,
/// liveness), and the bound is hit on their links and in paused nodes' inboxes.
#[test]
fn nemesis_seeds_with_small_inbox_budgets_stay_clean() {
    let n = std::env::var("FERRAFT_INBOX_SEEDS").ok().and_then(|s| s.parse().ok());
    let (mut links, mut inboxes) = (0, 0);
    for seed in seeds_with_small_budgets(n.unwrap_or(40)) {
        let (config, schedule) = nemesis(seed);
        let report = run_kv(&config, &schedule).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        links += report.stats.dropped_link_bytes;
        inboxes += report.stats.dropped_inbox_bytes;
    }
    println!("dropped for bytes: {links} on links, {inboxes} in paused nodes' inboxes");
    assert!(links > 0 && inboxes > 0, "the bound was never hit: {links} and {inboxes}");
}

/// A seed whose schedule draws no budget keeps the config's (64 MiB), which the simulator's
/// messages never reach: nothing is refused for bytes, so it runs as it did before budgets.
#[test]
fn seeds_without_a_drawn_budget_never_refuse_for_bytes() {
    let mut without = 0;
    for seed in 0..20 {
        let (config, schedule) = nemesis(seed);
        if drawn_budget(&schedule).is_some() {
            continue;
        }
        without += 1;
        let report = run_kv(&config, &schedule).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        assert_eq!((report.stats.dropped_link_bytes, report.stats.dropped_inbox_bytes), (0, 0));
    }
    assert!(without >= 10, "only {without} of 20 seeds drew no budget");
}

/// Small inbox budgets a config may have (with windows to match) bound the links and paused
/// or stalled nodes' inboxes from start to end, and the runs stay clean.
#[test]
fn nemesis_seeds_with_small_inboxes_in_the_config_stay_clean() {
    let n = std::env::var("FERRAFT_INBOX_SEEDS").ok().and_then(|s| s.parse().ok());
    let (mut links, mut inboxes) = (0, 0);
    for seed in 0..n.unwrap_or(40) {
        let (config, schedule) = small_inboxes(seed);
        let report = run_kv(&config, &schedule).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        links += report.stats.dropped_link_bytes;
        inboxes += report.stats.dropped_inbox_bytes;
    }
    println!("dropped for bytes: {links} on links, {inboxes} in paused nodes' inboxes");
    assert!(links > 0 && inboxes > 0, "the bound was never hit: {links} and {inboxes}");
}

fn run_leaking(seed: u64, leak: bool) -> Result<RunReport, SimFailure> {
    run_with(small_inboxes, seed, |sim| sim.set_budgets_leak(leak))
}

/// Bug switch `ByteBudget::never_gives_back`: the production budget never gives back what a
/// landed (or read) message took, so each link, once its leak reaches the budget, refuses
/// every message for good. The liveness check must catch it on seeds with small inboxes, and
/// the same seeds pass without it. (With a small budget only as a fault, the quiet period
/// would give every link a fresh, large budget and hide the leak: hence [`small_inboxes`].)
#[test]
fn a_budget_that_never_gives_bytes_back_is_caught_and_the_budget_is_not() {
    let seeds: Vec<u64> = (0..10).collect();
    let caught: Vec<(u64, SimFailure)> =
        seeds.iter().filter_map(|&seed| run_leaking(seed, true).err().map(|f| (seed, f))).collect();
    let (first, failure) = caught.first().expect("never_gives_back: no seed caught it");
    println!("never_gives_back caught at seeds {:?}; first: {failure}", caught_seeds(&caught));
    assert_eq!(*first, caught[0].0);
    assert!(failure.kind.is_liveness(), "caught, but not by the liveness check: {failure}");
    assert!(caught.len() * 2 >= seeds.len(), "caught at only {} of {seeds:?}", caught.len());
    for &(seed, _) in &caught {
        run_leaking(seed, false).unwrap_or_else(|f| panic!("seed {seed} without the switch: {f}"));
    }
}

fn caught_seeds(caught: &[(u64, SimFailure)]) -> Vec<u64> {
    caught.iter().map(|(seed, _)| *seed).collect()
}

/// The seeds the soaks found and the tests and notes replay draw no budget: their schedules
/// are as they were found.
#[test]
fn the_recorded_regression_seeds_draw_no_budget() {
    for seed in RECORDED_SEEDS {
        let (config, schedule) = nemesis(seed);
        assert_eq!(drawn_budget(&schedule), None, "seed {seed}");
        let membership = Schedule::random_with_membership(&config);
        assert_eq!(drawn_budget(&membership), None, "seed {seed}, with membership");
    }
}

/// Nodes that stall on a tiny apply backlog hold their inputs as a paused node does: under
/// inbox budgets of 300 to 1,200 bytes (and no pauses), the messages among those inputs are
/// bounded, the excess dropped, and the runs stay clean.
#[test]
fn stalled_nodes_inboxes_are_bounded_and_runs_stay_clean() {
    let (mut dropped, mut held) = (0, 0);
    for seed in 0..30 {
        let (config, mut schedule) = super::apply_tests::stalling(seed);
        let budget = [300, 600, 1_200][(seed % 3) as usize];
        // NB: no pauses, so every input held is held by a stall.
        schedule.events.retain(|(_, f)| !matches!(f, Fault::Pause(..) | Fault::InboxBytes(_)));
        schedule.events.insert(0, (Duration::ZERO, Fault::InboxBytes(budget)));
        let report = run_kv(&config, &schedule).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        dropped += report.stats.dropped_inbox_bytes;
        held += report.stats.inputs_held_by_stalls;
    }
    println!("{held} inputs held by stalls, {dropped} messages dropped for the inbox's bytes");
    assert!(held > 0 && dropped > 0, "{held} held, {dropped} dropped");
}
