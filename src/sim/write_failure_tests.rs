//! Failed hard-state and snapshot writes ([`Fault::FailStorage`] with
//! [`WriteKind::HardState`] or [`WriteKind::Snapshot`]): a real disk fails those as it fails
//! appends. The node fails at the error (nothing of the write landed), is killed and
//! restarted from what its storage holds, and the checker forgets what it counted on the
//! write alone (`Checker::write_failed`): a term and vote the node never revealed, so it may
//! vote again in that term; an installed snapshot, so its shadow log is the old one again. A
//! driver that takes a failed hard-state write as success (the test-only switch
//! `SyncBugs::hard_state_error_ignored`) reveals a vote its storage never got, and the
//! checkers catch it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use super::failure_tests::failing;
use super::storage::{SimStorage, Strike, WriteFailure};
use super::tests::run_with;
use super::*;
use crate::message::{Configuration, Entry, Payload, Snapshot, SnapshotMeta};
use crate::node::SyncBugs;
use crate::storage::{HardState, MemStorage, Storage};
use crate::types::{LogIndex, NodeId, Term};
use crate::KvStateMachine;

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn entry(term: u64) -> Entry<u32> {
    Entry { term: Term(term), payload: Payload::Noop }
}

fn hs(term: u64, voted_for: Option<u64>) -> HardState {
    HardState { term: Term(term), voted_for: voted_for.map(NodeId) }
}

/// Runs `write` on `storage`, which must fail as armed: a panic, or an io error.
fn fails(panics: bool, write: impl FnOnce() -> std::io::Result<()>) {
    match catch_unwind(AssertUnwindSafe(write)) {
        Err(_) => assert!(panics, "an io error was armed, the write panicked"),
        Ok(result) => {
            assert!(!panics, "a panic was armed, the write returned {result:?}");
            assert!(result.is_err(), "the armed write succeeded");
        }
    }
}

/// The storage alone: an armed hard-state or snapshot failure counts only writes of its kind,
/// strikes the one after `skip`, writes nothing of it (neither to what the node reads nor to
/// what a sync makes durable), is reported once, and is spent.
#[test]
fn a_failed_hard_state_or_snapshot_write_writes_nothing_and_counts_only_its_kind() {
    for (panics, model_sync) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut s = SimStorage::new(MemStorage::<u32>::new(Configuration::default()), model_sync);
        s.save_hard_state(hs(1, None)).expect("hard state");
        let write = WriteKind::HardState;
        s.fail_write(WriteFailure { write, skip: 1, keep: 1, panics });
        s.append(LogIndex(1), &[entry(1), entry(1), entry(1)]).expect("appends do not count");
        s.save_hard_state(hs(2, Some(1))).expect("skipped");
        fails(panics, || s.save_hard_state(hs(3, Some(2))));
        assert_eq!(s.take_struck(), Some(Strike::Write(WriteKind::HardState)));
        assert_eq!(s.take_struck(), None, "reported once");
        assert_eq!(s.load().expect("load").hard_state, hs(2, Some(1)), "nothing landed");
        s.sync().expect("sync");
        assert_eq!(s.durable_state().hard_state, hs(2, Some(1)), "nothing became durable");
        s.save_hard_state(hs(3, Some(2))).expect("the failure is spent");

        let write = WriteKind::Snapshot;
        s.fail_write(WriteFailure { write, skip: 0, keep: 1, panics });
        s.save_hard_state(hs(4, None)).expect("hard-state writes do not count");
        let config = Arc::new(Configuration::default());
        let meta = SnapshotMeta { index: LogIndex(2), term: Term(1), config };
        let snapshot = Arc::new(Snapshot { meta, data: Arc::from(vec![7u8]) });
        fails(panics, || s.save_snapshot(&snapshot));
        assert_eq!(s.take_struck(), Some(Strike::Write(WriteKind::Snapshot)));
        s.sync().expect("sync");
        for state in [s.load().expect("load"), s.durable_state()] {
            assert_eq!(state.log_offset, LogIndex(0), "no snapshot landed");
            assert_eq!(state.entries.len(), 3, "the log is as it was");
            assert_eq!(state.hard_state, hs(4, None));
        }
        s.save_snapshot(&snapshot).expect("the failure is spent");
        assert_eq!(s.load().expect("load").log_offset, LogIndex(2));
    }
}

/// Whether the run's trace shows a node failing on an injected write of `what` (an io
/// error; "hard state" or "snapshot"), or a buggy driver stepping on past one.
fn struck(sim: &Simulator<KvStateMachine>, what: &str) -> bool {
    let trace = sim.trace().unwrap_or_default();
    trace.iter().any(|line| {
        let failed =
            line.contains("fail n") && line.contains(&format!("injected storage error: {what}"));
        failed || line.contains(&format!("takes its failed {what} write as success"))
    })
}

/// Three nodes under clients. At 400 ms a follower F's next hard-state write is armed to fail
/// (an io error) and the leader is cut off, so F and the third node elect a leader of a new
/// term: F's failing write is its vote or its own candidacy there. 300 ms later F crashes and
/// restarts from its storage (with the correct driver the operator has done so already), the
/// old leader too; then the network heals. Correct: F failed at the write and revealed
/// nothing of it, so the checker forgets that vote and the run is safe. With
/// `hard_state_error_ignored` F sent the vote (or its candidacy) and restarts in the term
/// before it. Returns whether the failure struck.
fn a_follower_fails_to_save_its_vote(seed: u64, ignored: bool) -> Result<bool, SimFailure> {
    let mut config = SimConfig::new(seed, 3);
    config.record_trace = true;
    config.raft.pre_vote = seed.is_multiple_of(2);
    let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid config");
    sim.set_sync_bugs(SyncBugs { hard_state_error_ignored: ignored, ..SyncBugs::default() });
    sim.start_clients(KvWorkload { keys: 4 });
    sim.run_for(ms(400))?;
    let Some(leader) = sim.leader() else { return Ok(false) };
    let followers: Vec<NodeId> = sim.node_ids().into_iter().filter(|&n| n != leader).collect();
    let follower = followers[(seed / 2 % 2) as usize];
    let fault = |e: crate::error::FaultError| panic!("fault: {e}");
    let write = WriteKind::HardState;
    let fail =
        Fault::FailStorage { node: Target::Node(follower), write, skip: 0, keep: 0, panics: false };
    sim.apply_fault(&fail).unwrap_or_else(fault);
    sim.isolate(leader).unwrap_or_else(fault);
    sim.run_for(ms(300))?;
    for node in [follower, leader] {
        sim.crash(node).unwrap_or_else(fault);
        sim.restart(node).unwrap_or_else(fault);
    }
    sim.run_for(ms(300))?;
    sim.heal();
    sim.settle()?;
    Ok(struck(&sim, "hard state"))
}

/// The correct driver passes the staged vote failure at every seed (and it struck at most);
/// with `hard_state_error_ignored` a safety check catches it, and every seed it is caught at
/// passes without the switch.
#[test]
fn a_node_taking_a_failed_hard_state_write_as_success_is_caught_and_the_correct_one_is_not() {
    let mut strikes = 0;
    for seed in 0..20 {
        let hit = a_follower_fails_to_save_its_vote(seed, false)
            .unwrap_or_else(|f| panic!("seed {seed}, no bug: {f}"));
        strikes += usize::from(hit);
    }
    assert!(strikes >= 15, "the hard-state failure struck in only {strikes} of 20 runs");
    let (mut found, mut safety) = (Vec::new(), 0);
    for seed in 0..20 {
        if let Err(f) = a_follower_fails_to_save_its_vote(seed, true) {
            println!("seed {seed}: {f}");
            safety += usize::from(f.kind.is_safety());
            found.push(seed);
        }
    }
    println!("hard_state_error_ignored caught at seeds {found:?}, {safety} by a safety check");
    assert!(safety >= 5, "hard_state_error_ignored: caught by a safety check at {safety} of 20");
}

/// Three nodes under clients, snapshots by policy every 30 entries. At 300 ms a node X is cut
/// off: the leader on even seeds (it goes on appending the clients' writes nobody commits,
/// so its log conflicts with the new leader's), a follower on odd ones. 400 ms later X's next
/// snapshot write is armed to fail and the network heals: X is behind the others' snapshots
/// and must install one (replacing a conflicting log on even seeds), which fails (a panic on
/// seeds 0 and 1 mod 4, else an io error); the operator kills and restarts it, from the old
/// snapshot and log, and it installs again. Returns whether the failure struck.
fn a_lagging_node_fails_to_install(seed: u64) -> Result<bool, SimFailure> {
    let mut config = SimConfig::new(seed, 3);
    config.record_trace = true;
    config.raft.snapshot_entries = 30;
    config.storage_faults = seed % 3 == 2;
    let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid config");
    sim.start_clients(KvWorkload { keys: 4 });
    sim.run_for(ms(300))?;
    let Some(leader) = sim.leader() else { return Ok(false) };
    let ids = sim.node_ids();
    let cut = if seed.is_multiple_of(2) {
        leader
    } else {
        ids.into_iter().find(|&n| n != leader).expect("3")
    };
    let fault = |e: crate::error::FaultError| panic!("fault: {e}");
    sim.isolate(cut).unwrap_or_else(fault);
    sim.run_for(ms(400))?;
    let panics = seed % 4 < 2;
    let write = WriteKind::Snapshot;
    let fail = Fault::FailStorage { node: Target::Node(cut), write, skip: 0, keep: 0, panics };
    sim.apply_fault(&fail).unwrap_or_else(fault);
    sim.heal();
    sim.run_for(ms(500))?;
    sim.settle()?;
    Ok(struck_snapshot(&sim))
}

/// Whether a node failed on an injected snapshot write (a panic or an io error).
fn struck_snapshot(sim: &Simulator<KvStateMachine>) -> bool {
    let trace = sim.trace().unwrap_or_default();
    trace.iter().any(|line| {
        line.contains("fail n") && line.contains("storage") && line.contains(": snapshot through")
    })
}

/// A failed install leaves the old snapshot and log, which the checker's shadow falls back
/// to: the node restarts from them (SUB-8 finds exactly that log) and installs again, and the
/// runs stay safe, linearizable and converge. The failure struck in most runs, on a
/// conflicting log in some.
#[test]
fn a_failed_snapshot_install_restarts_from_the_old_log_and_installs_again() {
    let mut strikes = [0; 2];
    for seed in 0..16 {
        let hit =
            a_lagging_node_fails_to_install(seed).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        strikes[(seed % 2) as usize] += usize::from(hit);
    }
    println!("installs failed: {} on a cut-off leader, {} on a follower", strikes[0], strikes[1]);
    assert!(strikes[0] >= 4 && strikes[1] >= 4, "too few failed installs: {strikes:?}");
}

/// A node's own compaction fails to save its snapshot: the node fails, and restarts with its
/// uncompacted log (which the checker still counts as its log).
#[test]
fn a_failed_compaction_restarts_with_the_whole_log() {
    let mut hits = 0;
    for seed in 0..6 {
        let mut config = SimConfig::new(seed, 3);
        config.record_trace = true;
        let mut sim = Simulator::new(config, |_| KvStateMachine::new()).expect("valid config");
        sim.start_clients(KvWorkload { keys: 4 });
        let node = Target::Nth(seed as usize);
        let write = WriteKind::Snapshot;
        let panics = seed.is_multiple_of(2);
        let schedule = Schedule::new(vec![
            (ms(300), Fault::FailStorage { node, write, skip: 0, keep: 0, panics }),
            (ms(300), Fault::Compact(node)),
        ]);
        sim.run_schedule(&schedule).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        sim.settle().unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        assert_eq!(sim.stats().node_failures, 1, "seed {seed}: the compaction failed its node");
        hits += usize::from(struck_snapshot(&sim));
    }
    assert_eq!(hits, 6, "every compaction failed on its snapshot write");
}

/// `failing` (the nemesis with storage failures) with every storage failure striking a
/// hard-state write (even seeds) or a snapshot write (odd seeds, snapshots every 40 entries),
/// an io error on seeds 0 and 1 mod 4; the sync boundary modelled on a third of the seeds,
/// syncs in the background on half of those.
fn hard_state_or_snapshot(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, _) = failing(seed);
    let write = if seed.is_multiple_of(2) { WriteKind::HardState } else { WriteKind::Snapshot };
    if write == WriteKind::Snapshot {
        config.raft.snapshot_entries = 40;
    }
    if seed % 3 == 2 {
        config.storage_faults = true;
        config.background_sync = (seed % 2 == 1).then_some(ms(2));
    }
    let mut schedule = Schedule::random(&config);
    for (_, fault) in &mut schedule.events {
        if let Fault::FailStorage { write: w, panics, skip, .. } = fault {
            *w = write;
            *panics = seed % 4 >= 2;
            if write == WriteKind::Snapshot {
                *skip /= 4;
            }
        }
    }
    (config, schedule)
}

/// The correct path under the nemesis with hard-state and snapshot failures: safe,
/// linearizable and converged (`FERRAFT_WRITE_SEEDS` seeds, default 200), and both kinds
/// struck often.
#[test]
fn hard_state_and_snapshot_failures_under_the_nemesis_stay_safe_linearizable_and_live() {
    let seeds = std::env::var("FERRAFT_WRITE_SEEDS").ok().and_then(|s| s.parse().ok());
    let mut failures = [0; 2];
    for seed in 0..seeds.unwrap_or(200u64) {
        let report = run_with(hard_state_or_snapshot, seed, |_| {})
            .unwrap_or_else(|f| panic!("seed {seed}, hard-state or snapshot failures: {f}"));
        failures[(seed % 2) as usize] += report.stats.node_failures;
    }
    println!(
        "node failures: {} on hard-state writes, {} on snapshot writes",
        failures[0], failures[1]
    );
    assert!(failures[0] >= 35, "only {} hard-state failures struck", failures[0]);
    assert!(failures[1] >= 30, "only {} snapshot failures struck", failures[1]);
}

/// The bug under the nemesis: `hard_state_or_snapshot`'s seeds that fail hard-state writes
/// with io errors (0 mod 4), with `hard_state_error_ignored`. Caught by a safety check at
/// some of seeds 0..400 (`FERRAFT_WRITE_SEEDS`), and every seed caught passes without it.
#[test]
fn under_the_nemesis_a_node_taking_a_failed_hard_state_write_as_success_is_caught() {
    let seeds = std::env::var("FERRAFT_WRITE_SEEDS").ok().and_then(|s| s.parse().ok());
    let bugs = SyncBugs { hard_state_error_ignored: true, ..SyncBugs::default() };
    let (mut found, mut rules) = (Vec::new(), std::collections::BTreeMap::new());
    for seed in (0..seeds.unwrap_or(400u64)).step_by(4) {
        if let Err(f) = run_with(hard_state_or_snapshot, seed, |sim| sim.set_sync_bugs(bugs)) {
            println!("seed {seed}: {f}");
            if let FailureKind::Safety(v) = &f.kind {
                *rules.entry(format!("{}", v.rule)).or_insert(0) += 1;
                found.push(seed);
            }
        }
    }
    println!("hard_state_error_ignored caught at seeds {found:?}: {rules:?}");
    assert!(!found.is_empty(), "hard_state_error_ignored: not caught by a safety check");
    for &seed in &found {
        run_with(hard_state_or_snapshot, seed, |_| {})
            .unwrap_or_else(|f| panic!("seed {seed}, no bug: {f}"));
    }
}
