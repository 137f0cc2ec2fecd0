//! Tests of the simulator itself: determinism, fault validation, crash and membership
//! mechanics, and the core bug switches that the checkers must catch within a bounded number
//! of seeds (while the same seeds pass without them).

use std::time::Duration;

use super::*;
use crate::core::Bugs;
use crate::kv::{KvCommand, KvStateMachine};

/// A scenario: the config and fault schedule for one seed.
pub(super) type Scenario = fn(u64) -> (SimConfig, Schedule);

/// Random faults (crashes, restarts, isolations, splits, lossy spells) on 3 or 5 nodes.
pub(super) fn faulty(seed: u64) -> (SimConfig, Schedule) {
    let config = SimConfig::new(seed, 3 + 2 * (seed % 2));
    let schedule = Schedule::random(&config);
    (config, schedule)
}

/// Random faults plus churn with quick reboots of candidates (votes must survive restarts).
pub(super) fn reboots(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, schedule) = faulty(seed);
    config.churn = Some(Churn::default());
    (config, schedule)
}

/// The Figure 8 shape: short-lived leaders on 3 nodes, one entry per AppendEntries so a new
/// leader replicates old-term entries before its no-op, and 20% loss so replication is partial.
pub(super) fn figure8(seed: u64) -> (SimConfig, Schedule) {
    let mut config = SimConfig::new(seed, 3);
    config.raft.max_entries_per_append = 1;
    config.network.drop_request = 0.2;
    config.network.drop_reply = 0.2;
    config.churn = Some(Churn {
        leader_lifetime: (Duration::from_micros(500), Duration::from_millis(15)),
        candidate_crash: 0.0,
        downtime: (Duration::from_micros(100), Duration::from_millis(20)),
    });
    (config, Schedule::default())
}

pub(super) fn run_with_bugs(
    scenario: Scenario,
    seed: u64,
    bugs: Bugs,
) -> Result<RunReport, SimFailure> {
    run_with(scenario, seed, |sim| sim.set_bugs(bugs))
}

/// Runs `scenario`'s seed under the KV workload, after `switch` set the simulator up (a
/// test-only bug switch, say).
pub(super) fn run_with(
    scenario: Scenario,
    seed: u64,
    switch: impl FnOnce(&mut Simulator<KvStateMachine>),
) -> Result<RunReport, SimFailure> {
    let (config, schedule) = scenario(seed);
    let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("scenarios are valid");
    switch(&mut sim);
    run::drive_kv(sim, &schedule)
}

/// Whether a failure is a safety finding (not a liveness one, which bugs may also cause).
pub(super) fn is_safety(f: &SimFailure) -> bool {
    matches!(
        f.kind,
        FailureKind::Safety(_) | FailureKind::NotLinearizable(_) | FailureKind::CorePanic { .. }
    )
}

/// The first seed below `max_seeds` whose run with `bugs` fails on safety.
fn hunt(scenario: Scenario, bugs: Bugs, max_seeds: u64) -> Option<SimFailure> {
    (0..max_seeds).find_map(|seed| run_with_bugs(scenario, seed, bugs).err().filter(is_safety))
}

/// The first seed in `seeds` whose run with `bugs` fails on safety.
pub(super) fn hunt_range(
    scenario: Scenario,
    bugs: Bugs,
    seeds: std::ops::Range<u64>,
) -> Option<SimFailure> {
    seeds.into_iter().find_map(|seed| run_with_bugs(scenario, seed, bugs).err().filter(is_safety))
}

/// Asserts the bug is found, and returns the failure for rule-specific checks.
fn assert_found(name: &str, scenario: Scenario, bugs: Bugs, max_seeds: u64) -> SimFailure {
    let failure = hunt(scenario, bugs, max_seeds)
        .unwrap_or_else(|| panic!("{name}: no violation in {max_seeds} seeds"));
    println!("{name}: found at {failure}");
    failure
}

fn rule_of(f: &SimFailure) -> Option<Rule> {
    match &f.kind {
        FailureKind::Safety(v) => Some(v.rule),
        _ => None,
    }
}

fn bugs(edit: impl FnOnce(&mut Bugs)) -> Bugs {
    let mut b = Bugs::default();
    edit(&mut b);
    b
}

/// Every bug switch with the scenario and seed budget that finds it.
fn hunts() -> Vec<(&'static str, Scenario, Bugs, u64)> {
    vec![
        (
            "skip_election_restriction",
            faulty as Scenario,
            bugs(|b| b.skip_election_restriction = true),
            200,
        ),
        ("commit_previous_terms", figure8, bugs(|b| b.commit_previous_terms = true), 500),
        ("truncate_on_duplicate", faulty, bugs(|b| b.truncate_on_duplicate = true), 200),
        ("forget_voted_for", reboots, bugs(|b| b.forget_voted_for = true), 300),
        ("apply_before_commit", faulty, bugs(|b| b.apply_before_commit = true), 50),
    ]
}

#[test]
fn skip_election_restriction_is_caught() {
    let (name, scenario, bugs, max) = hunts()[0];
    let f = assert_found(name, scenario, bugs, max);
    assert!(is_safety(&f));
}

#[test]
fn commit_previous_terms_is_caught_as_figure_8() {
    let (name, scenario, bugs, max) = hunts()[1];
    let f = assert_found(name, scenario, bugs, max);
    // A later leader lacks the entry an earlier one committed by counting old-term replicas.
    assert_eq!(rule_of(&f), Some(Rule::LeaderCompleteness), "{f}");
}

#[test]
fn truncate_on_duplicate_is_caught() {
    let (name, scenario, bugs, max) = hunts()[2];
    let f = assert_found(name, scenario, bugs, max);
    assert!(is_safety(&f));
}

#[test]
fn forget_voted_for_is_caught_across_restarts() {
    let (name, scenario, bugs, max) = hunts()[3];
    let f = assert_found(name, scenario, bugs, max);
    let rule = rule_of(&f);
    assert!(matches!(rule, Some(Rule::SingleVote | Rule::ElectionSafety)), "{f}");
}

#[test]
fn apply_before_commit_is_caught() {
    let (name, scenario, bugs, max) = hunts()[4];
    let f = assert_found(name, scenario, bugs, max);
    assert!(is_safety(&f));
}

/// The control: every seed each hunt ran up to its finding passes without the bug switch.
#[test]
fn hunted_seeds_pass_without_bug_switches() {
    for (name, scenario, bugs, max) in hunts() {
        let found = hunt(scenario, bugs, max).map_or(max, |f| f.seed);
        for seed in 0..=found {
            if let Err(f) = run_with_bugs(scenario, seed, Bugs::default()) {
                panic!("{name} scenario, no bug switch: {f}");
            }
        }
    }
}

#[test]
fn same_seed_same_trace_byte_for_byte() {
    let (mut config, schedule) = faulty(7);
    config.record_trace = true;
    let a = run_kv(&config, &schedule).unwrap_or_else(|f| panic!("{f}"));
    let b = run_kv(&config, &schedule).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.trace, b.trace);
    assert!(a.trace_lines > 1000, "a run traces many events: {}", a.trace_lines);
}

#[test]
fn different_seeds_give_different_traces() {
    let hashes: std::collections::BTreeSet<u64> = (0..5)
        .map(|seed| {
            let (config, schedule) = faulty(seed);
            run_kv(&config, &schedule).unwrap_or_else(|f| panic!("{f}")).trace_hash
        })
        .collect();
    assert_eq!(hashes.len(), 5);
}

#[test]
fn probability_out_of_range_is_refused() {
    let mut config = SimConfig::new(1, 3);
    config.network.drop_request = 1.5;
    let err = config.validate().expect_err("1.5 is no probability");
    assert_eq!(err, FaultError::Probability { field: "drop_request", value: 1.5 });
    config.network.drop_request = f64::NAN;
    assert!(config.validate().is_err(), "NaN is no probability");
    let mut sim = Simulator::new(SimConfig::new(1, 3), |_| KvStateMachine::new()).expect("valid");
    let net = NetworkConfig { duplicate: -0.1, ..NetworkConfig::default() };
    assert!(matches!(sim.set_network(net), Err(FaultError::Probability { .. })));
}

#[test]
fn inverted_delay_range_is_refused() {
    let net = NetworkConfig {
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(1),
        ..NetworkConfig::default()
    };
    let err = net.validate().expect_err("inverted");
    assert!(matches!(err, FaultError::InvertedRange { field: "message delay", .. }), "{err}");
    let churn = Churn { downtime: (Duration::from_secs(2), Duration::ZERO), ..Churn::default() };
    assert!(matches!(churn.validate(), Err(FaultError::InvertedRange { field: "downtime", .. })));
}

#[test]
fn unknown_node_is_refused() {
    let mut sim = Simulator::new(SimConfig::new(1, 3), |_| KvStateMachine::new()).expect("valid");
    let ghost = crate::NodeId(9);
    assert_eq!(
        sim.partition(&[vec![crate::NodeId(1), ghost]]),
        Err(FaultError::UnknownNode(ghost))
    );
    assert_eq!(sim.crash(ghost), Err(FaultError::UnknownNode(ghost)));
    assert_eq!(sim.restart(ghost), Err(FaultError::UnknownNode(ghost)));
    assert_eq!(sim.isolate(ghost), Err(FaultError::UnknownNode(ghost)));
}

#[test]
fn overlapping_partition_groups_are_refused() {
    let mut sim = Simulator::new(SimConfig::new(1, 3), |_| KvStateMachine::new()).expect("valid");
    let (n1, n2, n3) = (crate::NodeId(1), crate::NodeId(2), crate::NodeId(3));
    let err = sim.partition(&[vec![n1, n2], vec![n2, n3]]).expect_err("n2 twice");
    assert_eq!(err, FaultError::OverlappingGroups(n2));
    assert!(err.to_string().contains("each node belongs to one"), "{err}");
}

#[test]
fn bad_raft_config_and_empty_cluster_are_refused() {
    let mut config = SimConfig::new(1, 0);
    assert_eq!(config.validate(), Err(FaultError::NoNodes));
    config.nodes = 3;
    config.raft.max_inflight = 0;
    assert!(matches!(config.validate(), Err(FaultError::InvalidConfig(_))));
    assert!(Simulator::new(config, |_| KvStateMachine::new()).is_err());
}

#[test]
fn crash_keeps_storage_and_restart_catches_up() {
    let mut sim = Simulator::new(SimConfig::new(3, 3), |_| KvStateMachine::new()).expect("valid");
    sim.start_clients(KvWorkload { keys: 2 });
    sim.run_for(Duration::from_millis(500)).expect("safe");
    let victim = sim.leader().expect("a leader after 500ms");
    sim.crash(victim).expect("exists");
    assert!(!sim.is_up(victim) && sim.status(victim).is_none());
    sim.run_for(Duration::from_millis(500)).expect("safe");
    assert_ne!(sim.leader(), Some(victim));
    sim.restart(victim).expect("exists");
    let commit = sim.settle().expect("converges");
    assert_eq!(sim.status(victim).expect("up").commit_index, commit);
}

#[test]
fn an_isolated_leader_is_replaced_and_rejoins() {
    let mut sim = Simulator::new(SimConfig::new(4, 5), |_| KvStateMachine::new()).expect("valid");
    sim.run_for(Duration::from_millis(300)).expect("safe");
    let old = sim.leader().expect("a leader");
    sim.isolate(old).expect("exists");
    sim.run_for(Duration::from_millis(500)).expect("safe");
    let new = sim.leader().expect("the majority elects a new leader");
    assert_ne!(new, old);
    sim.settle().expect("converges after heal");
}

#[test]
fn added_node_joins_and_removed_leader_stays_quiet() {
    let mut sim = Simulator::new(SimConfig::new(5, 3), |_| KvStateMachine::new()).expect("valid");
    sim.start_clients(KvWorkload { keys: 2 });
    sim.run_for(Duration::from_millis(300)).expect("safe");
    let added = sim.add_node();
    assert_eq!(added, crate::NodeId(4), "ids continue after the initial nodes");
    sim.run_for(Duration::from_millis(300)).expect("safe");
    let leader = sim.leader().expect("a leader");
    sim.remove_node(leader).expect("exists");
    sim.run_for(Duration::from_millis(300)).expect("safe");
    assert!(!sim.changes_pending());
    sim.settle().expect("converges");
    let new = sim.leader().expect("a leader");
    let config = sim.status(new).expect("up").config;
    assert!(config.voters.contains(&added), "{config:?}");
    assert!(!config.contains(leader), "{config:?}");
    // Issue 12: the removed leader keeps running, crashes and restarts, and never campaigns.
    assert!(sim.is_up(leader), "removed nodes keep running");
    sim.crash(leader).expect("exists");
    sim.restart(leader).expect("exists");
    sim.run_for(Duration::from_secs(2)).expect("safe");
    let removed = sim.status(leader).expect("restarted");
    assert_eq!(removed.role, crate::core::Role::Follower, "{removed:?}");
    assert!(!removed.config.contains(leader), "its removal is in force after the restart");
    assert_eq!(sim.stats().removed_campaigns, 0);
    assert_eq!(sim.leader(), Some(new), "undisturbed");
}

/// Regression (core fix in `election.rs`): a leader that appended its own removal and crashed
/// must still campaign until the removal commits, or the cluster stalls forever.
#[test]
fn self_removal_interrupted_by_a_crash_recovers() {
    for (seed, nodes) in [(286, 3), (11, 4)] {
        let config = SimConfig::new(seed, nodes);
        let schedule = Schedule::classic_with_membership(&config);
        run_kv(&config, &schedule).unwrap_or_else(|f| panic!("{f}"));
    }
}

#[test]
fn a_corrupted_history_is_not_linearizable() {
    let (config, schedule) = faulty(2);
    let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid");
    sim.start_clients(KvWorkload { keys: 1 });
    sim.run_schedule(&schedule).expect("safe");
    let mut history = sim.history().to_vec();
    assert!(check_kv_history(&history).is_ok());
    let read = history
        .iter_mut()
        .rfind(|op| matches!(op.command, KvCommand::Get { .. }) && op.completed.is_some())
        .expect("some read completed");
    read.completed.as_mut().expect("completed").1 = Some("never-written;".into());
    assert!(check_kv_history(&history).is_err());
}

#[test]
fn failures_carry_the_seed_and_a_trace_excerpt() {
    let f = hunt(faulty, hunts()[4].2, 50).expect("apply_before_commit is caught");
    assert!(!f.trace.is_empty() && f.trace.len() <= trace::RING);
    let text = f.to_string();
    assert!(text.contains(&format!("seed {}", f.seed)) && text.contains("ALL-1"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Issue 12: the richer fault model, its bad input, and the liveness report.

fn kv_sim(seed: u64, nodes: u64) -> Simulator<KvStateMachine> {
    Simulator::new(SimConfig::new(seed, nodes), |_| KvStateMachine::new()).expect("valid")
}

#[test]
fn a_caller_read_share_above_100_percent_is_refused() {
    let mut config = SimConfig::new(1, 3);
    config.caller_read_percent = 101;
    assert_eq!(config.validate(), Err(FaultError::CallerReadPercent(101)));
    let err = Simulator::new(config.clone(), |_| KvStateMachine::new()).err();
    assert_eq!(err, Some(FaultError::CallerReadPercent(101)));
    config.caller_read_percent = 100;
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn a_zero_transfer_interval_and_a_transfer_to_an_unknown_node_are_refused() {
    let mut config = SimConfig::new(1, 3);
    config.transfers = Some(Duration::ZERO);
    assert_eq!(config.validate(), Err(FaultError::EmptyRange { field: "transfers" }));
    let err = Simulator::new(config.clone(), |_| KvStateMachine::new()).err();
    assert_eq!(err, Some(FaultError::EmptyRange { field: "transfers" }));
    config.transfers = Some(Duration::from_millis(100));
    assert_eq!(config.validate(), Ok(()));
    let ghost = Schedule::new(vec![(Duration::ZERO, Fault::Transfer(Target::Node(NodeId(9))))]);
    assert_eq!(ghost.validate(&config), Err(FaultError::UnknownNode(NodeId(9))));
    let mut sim = kv_sim(1, 3);
    assert_eq!(
        sim.apply_fault(&Fault::Transfer(Target::Node(NodeId(9)))),
        Err(FaultError::UnknownNode(NodeId(9)))
    );
}

#[test]
fn drift_bound_of_zero_or_above_one_is_refused() {
    for bad in [0.0, 1.5, -0.1, f64::NAN] {
        let mut config = SimConfig::new(1, 3);
        config.clock_drift = Some(bad);
        let err = config.validate().expect_err("outside (0, 1]");
        assert!(matches!(err, FaultError::DriftBound(v) if v.to_bits() == bad.to_bits()), "{err}");
        assert!(err.to_string().contains("outside (0, 1]"), "{err}");
    }
    let mut config = SimConfig::new(1, 3);
    config.clock_drift = Some(1.0);
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn empty_long_delay_range_is_refused() {
    let ms = Duration::from_millis;
    let net = NetworkConfig {
        long_tail: 0.1,
        long_delay: (ms(200), ms(200)),
        ..NetworkConfig::default()
    };
    assert_eq!(net.validate(), Err(FaultError::EmptyRange { field: "long_delay" }));
    let net = NetworkConfig {
        long_tail: 0.1,
        long_delay: (ms(300), ms(200)),
        ..NetworkConfig::default()
    };
    assert!(matches!(net.validate(), Err(FaultError::InvertedRange { field: "long_delay", .. })));
    let net = NetworkConfig { long_delay: (ms(200), ms(200)), ..NetworkConfig::default() };
    assert_eq!(net.validate(), Ok(()), "an empty range is fine while the tail is off");
}

#[test]
fn pause_longer_than_the_run_is_refused() {
    let config = SimConfig::new(1, 3);
    let run = config.run_length();
    let too_long = run + Duration::from_millis(1);
    let mut sim = kv_sim(1, 3);
    let err = sim.pause(crate::NodeId(1), too_long).expect_err("outlasts the run");
    assert_eq!(err, FaultError::PauseTooLong { pause: too_long, run });
    let schedule = Schedule::new(vec![(Duration::ZERO, Fault::Pause(Target::Leader, too_long))]);
    assert_eq!(schedule.validate(&config), Err(FaultError::PauseTooLong { pause: too_long, run }));
    let f = run_kv(&config, &schedule).expect_err("refused before the run starts");
    assert_eq!(f.kind, FailureKind::Fault(FaultError::PauseTooLong { pause: too_long, run }));
}

#[test]
fn unknown_node_in_a_fault_is_refused() {
    let config = SimConfig::new(1, 3);
    let ghost = crate::NodeId(9);
    for fault in [
        Fault::Crash(Target::Node(ghost)),
        Fault::CutLink { from: Target::Node(crate::NodeId(1)), to: Target::Node(ghost) },
        Fault::Pause(Target::Node(ghost), Duration::from_millis(100)),
        Fault::Deafen(Target::Node(ghost)),
    ] {
        let schedule = Schedule::new(vec![(Duration::from_millis(10), fault)]);
        assert_eq!(schedule.validate(&config), Err(FaultError::UnknownNode(ghost)));
        let f = run_kv(&config, &schedule).expect_err("unknown node");
        assert_eq!(f.kind, FailureKind::Fault(FaultError::UnknownNode(ghost)));
    }
    let mut sim = kv_sim(1, 3);
    assert_eq!(sim.cut_link(crate::NodeId(1), ghost), Err(FaultError::UnknownNode(ghost)));
    assert_eq!(sim.deafen(ghost), Err(FaultError::UnknownNode(ghost)));
    assert_eq!(sim.crash_mid_step(ghost), Err(FaultError::UnknownNode(ghost)));
    let n1 = crate::NodeId(1);
    assert_eq!(sim.cut_link(n1, n1), Err(FaultError::SelfLink(n1)));
}

#[test]
fn not_converged_names_the_node_and_how_far_behind() {
    let mut sim = kv_sim(3, 3);
    sim.start_clients(KvWorkload { keys: 2 });
    sim.run_for(Duration::from_millis(300)).expect("safe");
    let leader = sim.leader().expect("a leader");
    let lagging = sim.node_ids().into_iter().find(|&id| id != leader).expect("a follower");
    sim.isolate(lagging).expect("exists");
    sim.run_for(Duration::from_millis(300)).expect("safe");
    sim.stop_clients();
    sim.run_for(Duration::from_millis(300)).expect("safe");
    let why = sim.convergence().expect_err("the isolated node lags");
    assert!(why.contains(&format!("{lagging} is ")) && why.contains("entries behind"), "{why}");
    let kind = FailureKind::NotConverged(why);
    assert!(kind.is_liveness() && !kind.is_safety());
    assert!(kind.to_string().starts_with("liveness"), "{kind}");
}

#[test]
fn a_deaf_leader_is_replaced_and_a_one_way_cut_heals() {
    let mut sim = kv_sim(4, 5);
    sim.start_clients(KvWorkload { keys: 2 });
    sim.run_for(Duration::from_millis(300)).expect("safe");
    let old = sim.leader().expect("a leader");
    sim.deafen(old).expect("exists"); // it still sends heartbeats, but hears no acks
    let other = sim.node_ids().into_iter().find(|&id| id != old).expect("another node");
    sim.cut_link(other, old).expect("exists");
    sim.run_for(Duration::from_millis(800)).expect("safe");
    let new = sim.leader().expect("CheckQuorum deposes the deaf leader");
    assert_ne!(new, old);
    sim.settle().expect("converges after heal");
}

#[test]
fn a_paused_leader_resumes_with_a_stale_view_and_rejoins() {
    let mut sim = kv_sim(5, 3);
    sim.start_clients(KvWorkload { keys: 2 });
    sim.run_for(Duration::from_millis(300)).expect("safe");
    let old = sim.leader().expect("a leader");
    sim.pause(old, Duration::from_millis(600)).expect("valid pause");
    sim.run_for(Duration::from_millis(500)).expect("safe");
    let new = sim.leader().expect("the others elect a leader meanwhile");
    assert_ne!(new, old);
    assert_eq!(sim.status(old).expect("paused, not down").role, crate::core::Role::Leader);
    sim.run_for(Duration::from_millis(300)).expect("safe after the resume");
    sim.settle().expect("converges");
}

#[test]
fn crashes_between_the_actions_of_a_step_are_survived() {
    let mut sim = kv_sim(6, 3);
    sim.start_clients(KvWorkload { keys: 2 });
    for round in 0..20u64 {
        sim.run_for(Duration::from_millis(50)).expect("safe");
        let id = crate::NodeId(1 + round % 3);
        sim.crash_mid_step(id).expect("exists");
        sim.run_for(Duration::from_millis(50)).expect("safe");
        sim.restart_all().expect("members exist");
    }
    assert!(sim.stats().mid_step_crashes >= 10, "{:?}", sim.stats());
    sim.settle().expect("converges");
}

#[test]
fn client_batches_reach_the_driver_as_one_step() {
    let mut config = SimConfig::new(7, 3);
    config.clients = 12;
    config.batch_window = Some(Duration::from_millis(1));
    let report = run_kv(&config, &Schedule::random(&config)).unwrap_or_else(|f| panic!("{f}"));
    assert!(report.stats.batches > 10, "{:?}", report.stats);
}

#[test]
fn drifting_clocks_and_long_tails_stay_safe_and_converge() {
    for seed in 0..6 {
        let mut config = SimConfig::new(seed, 3 + 2 * (seed % 2));
        config.clock_drift = Some(0.3);
        config.network.long_tail = 0.05;
        run_kv(&config, &Schedule::random(&config)).unwrap_or_else(|f| panic!("{f}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Shaped faults (armed for the next election, delayed, partitions of targets) and the
// timeline picture.

#[test]
fn armed_delayed_and_grouped_faults_name_known_nodes() {
    let config = SimConfig::new(2, 5);
    let ghost = crate::NodeId(9);
    let ms = Duration::from_millis;
    for fault in [
        Fault::Partition(vec![Target::Leader, Target::Node(ghost)]),
        Fault::OnNewLeader(Box::new(Fault::Crash(Target::Node(ghost)))),
        Fault::After(ms(5), Box::new(Fault::Isolate(Target::Node(ghost)))),
    ] {
        let schedule = Schedule::new(vec![(ms(10), fault)]);
        assert_eq!(schedule.validate(&config), Err(FaultError::UnknownNode(ghost)));
    }
}

#[test]
fn a_fault_armed_for_the_next_win_hits_the_new_leader() {
    let mut sim = kv_sim(2, 5);
    sim.run_for(Duration::from_millis(300)).expect("safe");
    let old = sim.leader().expect("a leader");
    let arm = Fault::OnNewLeader(Box::new(Fault::Crash(Target::Leader)));
    sim.apply_fault(&arm).expect("valid");
    // The old leader and one follower are cut off: the other three elect a leader, which
    // crashes the moment it wins; the next winner is left alone.
    let pair = Fault::Partition(vec![Target::Leader, Target::Follower(0)]);
    sim.apply_fault(&pair).expect("valid");
    sim.run_for(Duration::from_millis(1500)).expect("safe");
    assert_eq!(sim.stats().crashes, 1, "{:?}", sim.stats());
    assert!(sim.is_up(old), "the old leader was not the new winner");
    let down: Vec<_> = sim.node_ids().into_iter().filter(|&id| !sim.is_up(id)).collect();
    assert_eq!(down.len(), 1);
    assert_ne!(sim.leader(), Some(down[0]));
    sim.settle().expect("converges");
}

#[test]
fn the_timeline_has_one_lane_per_node_and_its_events_in_time_order() {
    let (mut config, schedule) = faulty(3);
    config.record_trace = true;
    let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid");
    sim.start_clients(KvWorkload { keys: 2 });
    sim.run_schedule(&schedule).expect("safe");
    let svg = sim.timeline_svg().expect("the full trace was kept");
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{svg:.200}");
    assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count(), "balanced groups");
    for id in sim.node_ids() {
        let lane = format!(r#"class="lane" data-node="{id}""#);
        assert_eq!(svg.matches(&lane).count(), 1, "one lane for {id}");
    }
    let times: Vec<u64> = svg
        .split(r#"data-t=""#)
        .skip(1)
        .map(|rest| rest[..rest.find('"').expect("closed")].parse().expect("a time"))
        .collect();
    assert!(times.len() > 100, "{} events", times.len());
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "events in time order");
    for class in ["event role", "event commit", "event term"] {
        assert!(svg.contains(class), "no {class}");
    }
    assert!(svg.contains("event crash") || svg.contains("event fault"), "faults are drawn");
    let plain = kv_sim(3, 3);
    assert!(plain.timeline_svg().is_none(), "no picture without the full trace");
}
