//! Reads across membership changes: the read scenario ([`reading`]: leases on odd seeds,
//! ReadIndex on even ones) with single-server changes on two seeds of three, and on half of
//! those bursts of changes (two or three asked within a few milliseconds, so they follow each
//! other as fast as the leader commits them, several within one election timeout), some
//! followed by a partition that leaves the leader with a bare majority of the first
//! configuration. Every check holds. A leader that confirms its leadership (read rounds,
//! lease, CheckQuorum) against the configuration it was elected under is caught, in a
//! staged scenario: two additions, then such a partition.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::super::tests::run_with_bugs;
use super::super::*;
use super::tests::reading;
use crate::core::Bugs;
use crate::kv::KvStateMachine;

/// [`reading`] with membership changes: none on seeds that are 0 mod 3; on the others the
/// random generator's ([`Schedule::random_with_membership`]), and on half of those (where
/// `(seed / 3) % 2 == 1`) one to three bursts of changes from a stream of their own, with
/// eight impatient clients (20 ms timeouts) that follow a new leader quickly.
pub(crate) fn reading_changes(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, schedule) = reading(seed);
    if seed.is_multiple_of(3) {
        return (config, schedule);
    }
    let mut events = Schedule::random_with_membership(&config).events;
    if (seed / 3) % 2 == 1 {
        config.clients = 8;
        config.op_timeout = Duration::from_millis(20);
        events.extend(bursts(&config));
    }
    (config, Schedule::new(events))
}

/// One to three bursts: two additions (a majority of the new configuration may then share
/// no node with a quorum of the old one), an addition and a removal of the leader, a
/// removal and an addition, or an addition, a removal and another addition; each change asked 0 to 8 ms
/// after the previous, so it is refused while the one before commits and retried (every
/// 20 ms), and every burst of two additions and half of the others end with the leader cut
/// off with a bare majority of the first configuration (one other member of three, two of
/// five) for 200 to 500 ms.
fn bursts(config: &SimConfig) -> Vec<(Duration, Fault)> {
    let mut rng = SmallRng::seed_from_u64(config.seed ^ 0x1ea5_e0c4_a4e5_0023);
    let ms = Duration::from_millis;
    let end = config.fault_phase.as_millis() as u64;
    let mut events = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let mut at = rng.random_range(100..end - 300);
        let kind = rng.random_range(0..4);
        let changes = match kind {
            0 => vec![Fault::AddNode, Fault::AddNode],
            1 => vec![Fault::AddNode, Fault::Remove(Target::Leader)],
            2 => vec![Fault::Remove(Target::Nth(rng.random_range(0..64))), Fault::AddNode],
            _ => vec![
                Fault::AddNode,
                Fault::Remove(Target::Nth(rng.random_range(0..64))),
                Fault::AddNode,
            ],
        };
        for change in changes {
            events.push((ms(at), change));
            at += rng.random_range(0..=8);
        }
        if rng.random_bool(0.5) || kind == 0 {
            // The leader and as many others as make a bare majority of the first
            // configuration, picked among the first members (the original ones, unless
            // removed): a minority of the configuration after two additions.
            at += rng.random_range(100..=400);
            let mut side = vec![Target::Leader];
            let first = config.nodes as usize;
            side.extend((0..first / 2).map(|_| Target::Nth(rng.random_range(0..first))));
            events.push((ms(at), Fault::Partition(side)));
            events.push((ms(at + rng.random_range(200..=500)), Fault::Heal));
        }
    }
    events
}

fn run(seed: u64, bugs: Bugs) -> Result<RunReport, SimFailure> {
    run_with_bugs(reading_changes, seed, bugs)
}

/// Seeds the CI test runs (about 7 s in release on 2 cores; 2,000 took 13.7 s).
const CI_SEEDS: u64 = 1_000;

#[test]
fn reads_across_membership_changes_are_linearizable() {
    let (mut by_round, mut by_lease) = (0, 0);
    for seed in 0..CI_SEEDS {
        let report = run(seed, Bugs::default()).unwrap_or_else(|f| panic!("{f}"));
        by_round += report.stats.reads_by_round;
        by_lease += report.stats.reads_by_lease + report.stats.caller_reads;
    }
    println!("{by_round} reads chose a round, {by_lease} were served from a lease");
    assert!(by_round > 1_000, "only {by_round} reads chose a round over the lease");
    assert!(by_lease > 1_000, "only {by_lease} reads were served from a lease");
}

/// The bursts do what they are for: on some seeds two changes finish within one minimum
/// election timeout (50 ms) of each other, and three within two. Returns (seeds with two,
/// seeds with three) among the seeds with bursts.
fn dense_seeds(seeds: std::ops::Range<u64>) -> (usize, usize) {
    let (mut two, mut three) = (0, 0);
    for seed in seeds.filter(|s| !s.is_multiple_of(3) && (s / 3) % 2 == 1) {
        let (mut config, schedule) = reading_changes(seed);
        config.record_trace = true;
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid");
        sim.start_clients(KvWorkload { keys: 3 });
        sim.run_schedule(&schedule).unwrap_or_else(|f| panic!("{f}"));
        let done: Vec<u64> = sim
            .trace()
            .expect("recorded")
            .iter()
            .filter(|line| line.contains("done: Ok"))
            .map(|line| {
                let at = line.trim_start().split("ms").next().expect("a time");
                (at.parse::<f64>().expect("a time in ms") * 1000.0) as u64
            })
            .collect();
        let within = |k: usize, us: u64| done.windows(k).any(|w| w[k - 1] - w[0] <= us);
        two += usize::from(within(2, 50_000));
        three += usize::from(within(3, 100_000));
    }
    (two, three)
}

#[test]
fn bursts_finish_several_changes_within_one_election_timeout() {
    let (two, three) = dense_seeds(0..60);
    println!(
        "of 20 burst seeds in 0..60: {two} with two changes in 50 ms, {three} three in 100 ms"
    );
    assert!(two >= 3, "only {two} seeds with two changes within 50 ms");
}

/// A long sweep: `FERRAFT_READ_CHANGE_SEEDS=2000 cargo test --release --lib
/// read_change_sweep -- --ignored --nocapture` (`FERRAFT_READ_CHANGE_START` to start later).
#[test]
#[ignore = "long sweep; run by hand"]
fn read_change_sweep() {
    let var =
        |name, default| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let start: u64 = var("FERRAFT_READ_CHANGE_START", 0);
    let seeds: u64 = var("FERRAFT_READ_CHANGE_SEEDS", 500);
    for seed in start..start + seeds {
        run(seed, Bugs::default()).unwrap_or_else(|f| panic!("{f}"));
    }
    println!("read_change_sweep: seeds {start}..{} clean", start + seeds);
}

/// Staged: two additions to three nodes, then the leader cut off with one of the original
/// followers, while eight impatient clients (20 ms timeouts) move their writes to whoever
/// wins next and keep reading wherever they last found a leader. The leader's side is a bare
/// majority of the first configuration and a minority of the new one, whose other three
/// ({the other original follower, 4, 5}) elect a leader and commit writes. Odd seeds read
/// with leases (CheckQuorum on, as leases need), even ones by ReadIndex without CheckQuorum
/// (the cut-off leader never steps down).
pub(crate) fn added_twice_then_cut(seed: u64) -> (SimConfig, Schedule) {
    let mut config = SimConfig::new(seed, 3);
    config.reads = true;
    config.clients = 8;
    config.op_timeout = Duration::from_millis(20);
    config.raft.lease_reads = seed % 2 == 1;
    config.raft.check_quorum = seed % 2 == 1;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x0add_2c07_0023);
    let ms = Duration::from_millis;
    let t = rng.random_range(150..400);
    let cut = t + rng.random_range(150..300);
    let events = vec![
        (ms(t), Fault::AddNode),
        (ms(t + rng.random_range(0..=8)), Fault::AddNode),
        (ms(cut), Fault::Partition(vec![Target::Leader, Target::Follower(0)])),
        (ms(cut + rng.random_range(300..600)), Fault::Heal),
    ];
    (config, Schedule::new(events))
}

/// Bug switch `leader_counts_elected_voters`: after two additions the cut-off leader still
/// confirms its rounds (and renews its lease) with the one original follower on its side,
/// and serves values the new majority has overwritten.
#[test]
fn reads_counted_against_the_elected_configuration_are_caught() {
    let bugs = Bugs { leader_counts_elected_voters: true, ..Bugs::default() };
    let mut caught = Vec::new();
    for seed in 0..CAUGHT_SEEDS {
        let failure = run_with_bugs(added_twice_then_cut, seed, bugs).err();
        if let Some(f) = failure.filter(|f| matches!(f.kind, FailureKind::NotLinearizable(_))) {
            caught.push(f.seed);
        }
        run_with_bugs(added_twice_then_cut, seed, Bugs::default())
            .unwrap_or_else(|f| panic!("{f}"));
    }
    println!("BITES | leader_counts_elected_voters (staged) | caught at seeds {caught:?}");
    assert!(caught.iter().any(|s| s % 2 == 0), "ReadIndex: not caught in {CAUGHT_SEEDS} seeds");
    assert!(caught.iter().any(|s| s % 2 == 1), "leases: not caught in {CAUGHT_SEEDS} seeds");
}

/// Seeds of the staged scenario the bug test runs, with the switch and without.
const CAUGHT_SEEDS: u64 = 20;

/// The same switch over the random scenario, in CI: bursts with impatient clients (20 ms
/// timeouts, so writes move to the new majority's leader while reads stay with the cut-off
/// one) make the miscount a random seed's find, not only a staged one's. With patient clients
/// (200 ms) no seed of 0..6,000 caught it; now 12 of 0..3,000 do: ReadIndex seeds 22, 112,
/// 256, 496, 556, 1474, 2092, 2452 and lease seeds 353, 365, 989, 2765. (The lease seeds
/// came only once a new majority elected its leader promptly with leases: before the fix of
/// `Bugs::lease_refusal_from_own_campaign` its voters refused each other for most of the cut.)
#[test]
fn random_membership_reads_catch_the_elected_voters_miscount() {
    let bugs = Bugs { leader_counts_elected_voters: true, ..Bugs::default() };
    let caught: Vec<u64> = (0..RANDOM_BUG_SEEDS)
        .filter(|&seed| {
            let failure = run(seed, bugs).err();
            failure.is_some_and(|f| matches!(f.kind, FailureKind::NotLinearizable(_)))
        })
        .collect();
    println!("BITES | leader_counts_elected_voters (random) | caught at seeds {caught:?}");
    assert!(caught.iter().any(|s| s % 2 == 0), "ReadIndex: not caught in {RANDOM_BUG_SEEDS} seeds");
    assert!(caught.iter().any(|s| s % 2 == 1), "leases: not caught in {RANDOM_BUG_SEEDS} seeds");
}

/// Seeds of the random scenario the bug test runs (seven catch it, two with leases; about
/// 3 s in release).
const RANDOM_BUG_SEEDS: u64 = 600;

/// The same switch over the random scenario, by hand: `FERRAFT_HUNT=n` runs seeds 0..n and
/// prints each failure.
#[test]
#[ignore = "exploration aid, run by hand"]
fn hunt_elected_voters() {
    let n: u64 = std::env::var("FERRAFT_HUNT").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let bugs = Bugs { leader_counts_elected_voters: true, ..Bugs::default() };
    for seed in 0..n {
        if let Err(f) = run(seed, bugs) {
            println!("HUNT | seed {seed} | {}", f.kind);
        }
    }
}
