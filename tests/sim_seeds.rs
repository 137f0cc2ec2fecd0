//! Seed sweeps through the public simulator API: each seed is a few virtual seconds of faults
//! (crashes, partitions, loss, duplication, reordering, sometimes leader churn and membership
//! changes) under a KV client workload, and must end safe, linearizable and converged.
//!
//! `FERRAFT_SEEDS=n` sets the sweep size (default 1000 in release builds, 100 in debug).
//! A failure prints a one-line replay command; `FERRAFT_SEED=s ... replay` reruns seed `s`
//! with the full trace kept.

use std::time::{Duration, Instant};

use ferraft::linearizability::CheckOutcome;
use ferraft::sim::{
    run_kv, Churn, Fault, KvWorkload, RunReport, Schedule, SimConfig, SimFailure, Simulator, Target,
};
use ferraft::KvStateMachine;

fn sweep_size() -> u64 {
    let default = if cfg!(debug_assertions) { 100 } else { 1000 };
    std::env::var("FERRAFT_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Sizes 3, 5, 7 in turn; the core's options, batch size and nemesis vary with the seed too.
fn scenario(seed: u64) -> (SimConfig, Schedule) {
    let mut config = SimConfig::new(seed, [3, 5, 7][(seed % 3) as usize]);
    config.raft.pre_vote = seed % 7 != 3;
    config.raft.check_quorum = seed % 11 != 5;
    config.raft.max_entries_per_append = [64, 1, 8][(seed / 3 % 3) as usize];
    snapshots(&mut config, seed);
    if seed % 4 == 3 {
        config.churn = Some(Churn::default());
    }
    let schedule = if seed % 5 == 4 {
        Schedule::random_with_membership(&config)
    } else {
        Schedule::random(&config)
    };
    (config, schedule)
}

/// Log compaction on most seeds: snapshots every few dozen entries, sent in small chunks, so
/// InstallSnapshot runs under the same faults as everything else.
fn snapshots(config: &mut SimConfig, seed: u64) {
    config.raft.snapshot_entries = [0, 10, 30, 100][(seed / 2 % 4) as usize];
    config.raft.snapshot_chunk_bytes = [16, 64, 4096][(seed / 5 % 3) as usize];
    config.raft.snapshot_chunks_in_flight = 1 + (seed % 3) as usize;
}

/// From 4 nodes (where unsafe single-server changes could split the quorum), random
/// additions and removals plus a burst of concurrent changes across a leader crash.
fn membership_scenario(seed: u64) -> (SimConfig, Schedule) {
    let mut config = SimConfig::new(seed, 4);
    snapshots(&mut config, seed);
    if seed % 2 == 1 {
        config.churn = Some(Churn::default());
    }
    let mut events = Schedule::random_with_membership(&config).events;
    let at = Duration::from_millis(150 + seed % 400);
    let ms = Duration::from_millis;
    events.extend([
        (at, Fault::AddNode),
        (at, Fault::Remove(Target::Nth(seed as usize))),
        (at + ms(1), Fault::Crash(Target::Leader)),
        (at + ms(2), Fault::Remove(Target::Leader)),
        (at + ms(3), Fault::AddNode),
        (at + ms(120), Fault::RestartAll),
    ]);
    (config, Schedule::new(events))
}

fn replay_hint(seed: u64) -> String {
    format!(
        "replay: FERRAFT_SEED={seed} cargo test --release --test sim_seeds replay -- --nocapture"
    )
}

fn run(scenario: fn(u64) -> (SimConfig, Schedule), seed: u64) -> Result<RunReport, SimFailure> {
    let (config, schedule) = scenario(seed);
    run_kv(&config, &schedule)
}

/// Runs `seeds` and returns (seeds per second, simulated seconds per wall second).
fn sweep(scenario: fn(u64) -> (SimConfig, Schedule), seeds: std::ops::Range<u64>) -> (f64, f64) {
    let start = Instant::now();
    let (mut count, mut simulated, mut undecided) = (0u64, Duration::ZERO, 0);
    for seed in seeds {
        match run(scenario, seed) {
            Ok(report) => {
                simulated += report.simulated;
                undecided += usize::from(report.linearizable == CheckOutcome::Unknown);
            }
            Err(failure) => panic!("{failure}\n{}", replay_hint(seed)),
        }
        count += 1;
    }
    if undecided > 0 {
        println!("{undecided} of {count} histories exhausted the linearizability search budget");
    }
    let wall = start.elapsed().as_secs_f64();
    (count as f64 / wall, simulated.as_secs_f64() / wall)
}

#[test]
fn seeds_are_safe_linearizable_and_converge() {
    let n = sweep_size();
    let (seeds_per_s, speedup) = sweep(scenario, 0..n);
    println!(
        "{n} seeds (3/5/7 nodes): {seeds_per_s:.0} seeds/s, {speedup:.0} simulated s per wall s"
    );
}

#[test]
fn membership_changes_from_four_nodes_are_safe() {
    let n = sweep_size() / 4;
    let (seeds_per_s, _) = sweep(membership_scenario, 0..n);
    println!("{n} membership seeds (from 4 nodes): {seeds_per_s:.0} seeds/s");
}

/// The figures the README quotes: a 5-node cluster under faults.
#[test]
fn throughput_of_five_node_runs() {
    let n = (sweep_size() / 10).max(10);
    let five = |seed: u64| scenario(seed * 3 + 1); // seeds == 1 (mod 3) have 5 nodes
    let (seeds_per_s, speedup) = sweep(five, 0..n);
    println!("{n} 5-node seeds: {seeds_per_s:.1} seeds/s, {speedup:.0} simulated s per wall s");
}

#[test]
fn replay() {
    let Some(seed) = std::env::var("FERRAFT_SEED").ok().and_then(|s| s.parse().ok()) else {
        return; // nothing to replay
    };
    for (name, scenario) in [
        ("sweep", scenario as fn(u64) -> _),
        ("membership", membership_scenario),
        ("nemesis", nemesis_scenario),
    ] {
        let (mut config, schedule) = scenario(seed);
        config.record_trace = true;
        println!("{name} seed {seed}: {config:?}\n{schedule:?}");
        if let Ok(file) = std::env::var("FERRAFT_TIMELINE") {
            write_timeline(&config, &schedule, &format!("{name}-{file}"));
        }
        match run_kv(&config, &schedule) {
            Ok(report) => println!("{name} seed {seed} passed: {:?}", report.stats),
            Err(failure) => panic!("{name} {failure}"),
        }
    }
}

/// Replays `config` and `schedule` and writes the run's timeline picture to `file`, whatever
/// the verdict (a failing run is drawn up to its failure).
fn write_timeline(config: &SimConfig, schedule: &Schedule, file: &str) {
    let mut sim = Simulator::new(config.clone(), |_| KvStateMachine::new()).expect("valid");
    sim.start_clients(KvWorkload { keys: config.keys });
    let _ = sim.run_schedule(schedule).and_then(|()| sim.settle().map(|_| ()));
    std::fs::write(file, sim.timeline_svg().expect("the trace was kept")).expect("writable");
    println!("timeline written to {file}");
}

/// The issue-12 fault model on sizes 3, 5, 7, membership changes on a fifth of the seeds:
/// one-way cuts, deaf nodes, pauses, crashes between a step's actions, removed nodes that
/// restart, long-tail delays, drifting clocks and client batches, each on a share of seeds.
fn nemesis_scenario(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, _) = scenario(seed);
    config.clock_drift = (seed % 3 != 1).then_some([0.05, 0.2, 0.5][(seed / 3 % 3) as usize]);
    config.network.long_tail = [0.0, 0.01, 0.05][(seed / 2 % 3) as usize];
    if seed % 6 == 5 {
        config.clients = 12;
        config.batch_window = Some(Duration::from_millis(1));
    }
    let schedule = if seed % 5 == 4 {
        Schedule::random_with_membership(&config)
    } else {
        Schedule::random(&config)
    };
    (config, schedule)
}

/// Soak: `FERRAFT_SOAK=n` runs n seeds of [`nemesis_scenario`] from `FERRAFT_SOAK_START`
/// (default 0), printing progress every `FERRAFT_SOAK_EVERY` seconds (default 30) and a final
/// summary line. Safety violations fail the test at once; liveness failures (safe, but not
/// converged after healing) are listed and counted separately, and fail it at the end.
/// Without `FERRAFT_SOAK` it runs a short smoke (50 seeds in release builds).
#[test]
fn soak_with_the_issue_12_fault_model() {
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let smoke = if cfg!(debug_assertions) { 5 } else { 50 };
    let n = env("FERRAFT_SOAK").unwrap_or(smoke);
    let first = env("FERRAFT_SOAK_START").unwrap_or(0);
    let every = Duration::from_secs(env("FERRAFT_SOAK_EVERY").unwrap_or(30));
    let start = Instant::now();
    let mut last_print = Instant::now();
    let (mut done, mut simulated, mut liveness) = (0u64, Duration::ZERO, Vec::new());
    let mut stats = (0u64, 0u64, 0u64, 0u64); // mid-step crashes, batches, removed campaigns, crashes
    for seed in first..first + n {
        let (config, schedule) = nemesis_scenario(seed);
        match run_kv(&config, &schedule) {
            Ok(report) => {
                simulated += report.simulated;
                stats.0 += report.stats.mid_step_crashes;
                stats.1 += report.stats.batches;
                stats.2 += report.stats.removed_campaigns;
                stats.3 += report.stats.crashes;
            }
            Err(f) if f.kind.is_liveness() => {
                println!("LIVENESS seed {seed}: {}", f.kind);
                liveness.push(seed);
            }
            Err(f) => panic!("SAFETY {f}\n{}", replay_hint(seed)),
        }
        done += 1;
        if last_print.elapsed() >= every {
            last_print = Instant::now();
            let wall = start.elapsed().as_secs_f64();
            println!(
                "soak progress: {done}/{n} seeds (up to {seed}) in {wall:.0}s, {:.1} seeds/s, {:.0}x real time, 0 safety, {} liveness",
                done as f64 / wall,
                simulated.as_secs_f64() / wall,
                liveness.len()
            );
        }
    }
    let wall = start.elapsed().as_secs_f64();
    println!(
        "soak summary: {done} seeds ({first}..{}) in {wall:.0}s: {:.1} seeds/s, {:.0} simulated s per wall s, 0 safety violations, {} liveness failures {liveness:?}; {} crashes ({} mid-step), {} client batches, {} removed-node campaigns",
        first + n,
        done as f64 / wall,
        simulated.as_secs_f64() / wall,
        liveness.len(),
        stats.3,
        stats.0,
        stats.1,
        stats.2
    );
    assert!(liveness.is_empty(), "liveness failures at seeds {liveness:?}");
}
