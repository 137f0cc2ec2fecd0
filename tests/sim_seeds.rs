//! Seed sweeps through the public simulator API: each seed is a few virtual seconds of faults
//! (crashes, partitions, loss, duplication, reordering, sometimes leader churn and membership
//! changes) under a KV client workload, and must end safe, linearizable and converged.
//!
//! `FERRAFT_SEEDS=n` sets the sweep size (default 1000 in release builds, 100 in debug).
//! A failure prints a one-line replay command; `FERRAFT_SEED=s ... replay` reruns seed `s`
//! with the full trace kept.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::mpsc;
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
    let (mut link_drops, mut inbox_drops) = (0, 0);
    for seed in seeds {
        match run(scenario, seed) {
            Ok(report) => {
                simulated += report.simulated;
                undecided += usize::from(report.linearizable == CheckOutcome::Unknown);
                link_drops += report.stats.dropped_link_bytes;
                inbox_drops += report.stats.dropped_inbox_bytes;
            }
            Err(failure) => panic!("{failure}\n{}", replay_hint(seed)),
        }
        count += 1;
    }
    if undecided > 0 {
        println!("{undecided} of {count} histories exhausted the linearizability search budget");
    }
    // NB: a quarter of the random schedules start with a small inbox budget (`Fault::InboxBytes`).
    println!("{link_drops} messages dropped for bytes on links, {inbox_drops} in inboxes");
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
            write_timeline(&config, &schedule, &scenario_file(name, &file));
        }
        if let Ok(grep) = std::env::var("FERRAFT_TRACE") {
            print_trace(&config, &schedule, &grep);
        }
        match run_kv(&config, &schedule) {
            Ok(report) => println!("{name} seed {seed} passed: {:?}", report.stats),
            Err(failure) => panic!("{name} {failure}"),
        }
    }
}

/// Replays `config` and `schedule` and prints every trace line that contains one of the
/// `|`-separated words of `grep` (every line for an empty `grep`), then the verdict. For a
/// failure whose cause lies before the last 50 events that its report shows.
fn print_trace(config: &SimConfig, schedule: &Schedule, grep: &str) {
    let mut sim = Simulator::new(config.clone(), |_| KvStateMachine::new()).expect("valid");
    sim.start_clients(KvWorkload { keys: config.keys });
    let verdict = sim.run_schedule(schedule).and_then(|()| sim.settle().map(|_| ()));
    for line in sim.trace().unwrap_or_default() {
        if grep.split('|').any(|g| line.contains(g)) {
            println!("{line}");
        }
    }
    println!("verdict: {}", if verdict.is_ok() { "passed" } else { "failed" });
}

/// `file` with the scenario's name before its file name: `dir/run7.svg` gives
/// `dir/sweep-run7.svg`, so a path with directories works too.
fn scenario_file(name: &str, file: &str) -> String {
    let path = std::path::Path::new(file);
    let base = path.file_name().map_or(file.into(), |f| f.to_string_lossy());
    path.with_file_name(format!("{name}-{base}")).to_string_lossy().into_owned()
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
/// restart, long-tail delays, drifting clocks, client batches and lossy storage with
/// background syncs, leadership transfers, applies deferred off the step, requests forwarded
/// to the leader, clients retrying as `Client::propose` does, storage failures that fail a
/// node until the operator restarts it, each on a share of seeds.
fn nemesis_scenario(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, _) = scenario(seed);
    config.clock_drift = (seed % 3 != 1).then_some([0.05, 0.2, 0.5][(seed / 3 % 3) as usize]);
    config.network.long_tail = [0.0, 0.01, 0.05][(seed / 2 % 3) as usize];
    if seed % 6 == 5 {
        config.clients = 12;
        config.batch_window = Some(Duration::from_millis(1));
    }
    if seed % 7 == 6 {
        // Crashes lose what was not synced; syncs run in the background, as in the runtime.
        config.storage_faults = true;
        config.background_sync = Some(Duration::from_millis(2));
    }
    // NB: the regression seeds below are 1, 1 and 6 mod 7, the last one odd, so they replay
    // the runs they were found with.
    if seed % 14 == 6 || seed % 7 == 3 {
        // A busy leader leaves its own appends unsynced while its followers keep up; with
        // the sync boundary modelled a crash loses them, and nobody may have counted them.
        config.storage_faults = true;
        config.raft.defer_leader_sync = true;
    }
    if seed % 8 == 3 || seed % 8 == 5 {
        // Applies run off the step, as the runtime's workers and waiting callers run them.
        // NB: the regression seeds below are 0, 1 or 7 mod 8: they replay unchanged.
        config.deferred_apply =
            Some(Duration::from_micros([200, 2_000, 10_000][(seed / 8 % 3) as usize]));
        if seed % 16 == 13 {
            // Nodes stall on a small apply backlog, holding their inputs and missing ticks.
            // NB: no regression seed below is 13 mod 16.
            config.raft.max_apply_backlog = 4;
        }
    }
    // Clients ask any node and followers forward to the leader, as `forward_to_leader` does.
    config.forward_requests = seed % 8 == 4 || seed % 8 == 5;
    // Clients retry as `Client::propose` does (its own rule), on seeds no regression seed is.
    config.client_retries = seed % 8 == 2 || seed % 8 == 5;
    if seed % 4 == 2 {
        // NB: none of the regression seeds below (15856, 183569, 227919) is 2 mod 4, so
        // they replay the schedules they were found with.
        config.transfers = Some(Duration::from_millis(150));
    }
    // A node's storage panics (or fails) on a write: the node fails through the runtime's
    // path and the operator kills and restarts it. NB: no regression seed below is 1 or 8
    // mod 9; on other seeds the schedule and the run are as before.
    config.storage_failures = seed % 9 == 1 || seed % 9 == 8;
    // On those seeds also a transport that panics on a send, or a sync that fails (a panic
    // or an io error, making nothing durable): the same failure path.
    config.transport_failures = seed % 9 == 8;
    config.sync_failures = seed % 9 == 1;
    let schedule = if seed % 5 == 4 {
        Schedule::random_with_membership(&config)
    } else {
        Schedule::random(&config)
    };
    (config, schedule)
}

/// Soak: `FERRAFT_SOAK=n` runs n seeds of [`nemesis_scenario`] from `FERRAFT_SOAK_START`
/// (default 0) on `FERRAFT_THREADS` threads (default 1; each takes the next seed not yet
/// taken), printing progress every `FERRAFT_SOAK_EVERY` seconds (default 30) and a final
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
    let threads = env("FERRAFT_THREADS").unwrap_or(1).max(1);
    let mut soak = Soak::new(first, n);
    let next = AtomicU64::new(first);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(u64, Result<RunReport, SimFailure>)>();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (tx, next, stop) = (tx.clone(), &next, &stop);
            let worker = move || soak_worker(first + n, next, stop, &tx);
            std::thread::Builder::new()
                .name(format!("soak-{t}"))
                .spawn_scoped(scope, worker)
                .expect("a soak thread starts");
        }
        drop(tx);
        soak.collect(&rx, every, &stop);
    });
    soak.summary();
}

/// One soak thread: runs the next untaken seed until `end` or until told to stop.
fn soak_worker(
    end: u64,
    next: &AtomicU64,
    stop: &AtomicBool,
    tx: &mpsc::Sender<(u64, Result<RunReport, SimFailure>)>,
) {
    while !stop.load(AtomicOrdering::Relaxed) {
        let seed = next.fetch_add(1, AtomicOrdering::Relaxed);
        if seed >= end {
            return;
        }
        let (config, schedule) = nemesis_scenario(seed);
        if tx.send((seed, run_kv(&config, &schedule))).is_err() {
            return;
        }
    }
}

/// The soak's tally, kept by the thread that prints.
struct Soak {
    first: u64,
    n: u64,
    start: Instant,
    done: u64,
    simulated: Duration,
    liveness: Vec<u64>,
    safety: Option<(u64, String)>,
    /// Crashes, of them mid-step, client batches, removed-node campaigns.
    stats: (u64, u64, u64, u64),
    /// Leadership transfers asked for and won.
    transfers: (u64, u64),
    /// Nodes failed by a storage failure (`Fault::FailStorage`), then killed and restarted.
    node_failures: u64,
    /// Messages dropped for bytes: on links, in paused or stalled nodes' inboxes
    /// (`Fault::InboxBytes`, drawn on a quarter of the seeds).
    byte_drops: (u64, u64),
    /// Times a proposal found no room in a node's request queue and waited to try again
    /// (`Fault::RequestBytes`, drawn on a quarter of the seeds).
    request_waits: u64,
}

impl Soak {
    fn new(first: u64, n: u64) -> Self {
        let (start, simulated) = (Instant::now(), Duration::ZERO);
        Soak {
            first,
            n,
            start,
            done: 0,
            simulated,
            liveness: Vec::new(),
            safety: None,
            stats: (0, 0, 0, 0),
            transfers: (0, 0),
            node_failures: 0,
            byte_drops: (0, 0),
            request_waits: 0,
        }
    }

    /// Tallies results until every worker is done, printing progress every `every`; on the
    /// first safety violation, tells the workers to stop.
    fn collect(
        &mut self,
        rx: &mpsc::Receiver<(u64, Result<RunReport, SimFailure>)>,
        every: Duration,
        stop: &AtomicBool,
    ) {
        let mut next_print = Instant::now() + every;
        loop {
            let wait = next_print.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok((seed, result)) => self.record(seed, result, stop),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_print {
                next_print += every;
                self.progress();
            }
        }
    }

    fn record(&mut self, seed: u64, result: Result<RunReport, SimFailure>, stop: &AtomicBool) {
        self.done += 1;
        match result {
            Ok(report) => {
                self.simulated += report.simulated;
                self.stats.0 += report.stats.crashes;
                self.stats.1 += report.stats.mid_step_crashes;
                self.stats.2 += report.stats.batches;
                self.stats.3 += report.stats.removed_campaigns;
                self.transfers.0 += report.stats.transfers;
                self.transfers.1 += report.stats.transfers_won;
                self.node_failures += report.stats.node_failures;
                self.byte_drops.0 += report.stats.dropped_link_bytes;
                self.byte_drops.1 += report.stats.dropped_inbox_bytes;
                self.request_waits += report.stats.request_queue_full;
            }
            Err(f) if f.kind.is_liveness() => {
                println!("LIVENESS seed {seed}: {}", f.kind);
                self.liveness.push(seed);
            }
            Err(f) => {
                println!("SAFETY {f}\n{}", replay_hint(seed));
                stop.store(true, AtomicOrdering::Relaxed);
                self.safety.get_or_insert((seed, f.to_string()));
            }
        }
    }

    fn rates(&self) -> (f64, f64, f64) {
        let wall = self.start.elapsed().as_secs_f64();
        (wall, self.done as f64 / wall, self.simulated.as_secs_f64() / wall)
    }

    fn progress(&self) {
        let (wall, seeds_per_s, speedup) = self.rates();
        println!(
            "soak progress: {}/{} seeds in {wall:.0}s, {seeds_per_s:.1} seeds/s, {speedup:.0}x real time, {} safety, {} liveness",
            self.done,
            self.n,
            usize::from(self.safety.is_some()),
            self.liveness.len()
        );
    }

    fn summary(&self) {
        let (wall, seeds_per_s, speedup) = self.rates();
        let (crashes, mid_step, batches, campaigns) = self.stats;
        let (asked, won) = self.transfers;
        let (links, inboxes) = self.byte_drops;
        println!(
            "soak summary: {} seeds ({}..{}) in {wall:.0}s: {seeds_per_s:.1} seeds/s, {speedup:.0} simulated s per wall s, {} safety violations, {} liveness failures {:?}; {crashes} crashes ({mid_step} mid-step), {batches} client batches, {campaigns} removed-node campaigns, {won} of {asked} leadership transfers won, {links} messages dropped for bytes on links and {inboxes} in inboxes, {} times a proposal found no room in a request queue, {} node failures",
            self.done,
            self.first,
            self.first + self.n,
            usize::from(self.safety.is_some()),
            self.liveness.len(),
            self.liveness,
            self.request_waits,
            self.node_failures,
        );
        if let Some((seed, failure)) = &self.safety {
            panic!("SAFETY {failure}\n{}", replay_hint(*seed));
        }
        assert!(self.liveness.is_empty(), "liveness failures at seeds {:?}", self.liveness);
    }
}

/// Nemesis seed 15856 (found by a 20,000-seed soak, 2026-12-02): a leader of t2 paused with
/// entry i85@t2, then took a stale AppendEntries from the leader of t3, which never had that
/// entry, and dropped it. i85@t2 was committed only later, in t4. That is legal Raft, but the
/// checker's "committed entries are never removed" rule flagged it. The rule now binds only
/// nodes whose term has reached the entry's commit term.
#[test]
fn a_stale_leaders_rewrite_before_the_commit_term_is_legal_seed_15856() {
    if let Err(failure) = run(nemesis_scenario, 15_856) {
        panic!("{failure}\n{}", replay_hint(15_856));
    }
}

/// Nemesis seed 183569 (found by the merged-tree soak, 2026-12-02): 7 nodes, one entry per
/// AppendEntries, a member added late. Nearly every pipelined window reached it shuffled; each
/// rejection made the leader resend the whole window (go-back-N), the link filled and dropped
/// most of it, and the new member was still 59 entries behind when the quiet phase ended.
/// Followers now hold requests that arrive ahead of their log and the leader resends only the
/// gap (NOTES.md, "Catch-up under reordering").
#[test]
fn a_new_member_catches_up_under_reordering_seed_183569() {
    if let Err(failure) = run(nemesis_scenario, 183_569) {
        panic!("{failure}\n{}", replay_hint(183_569));
    }
}

/// Nemesis seed 227919 (found by the soak, 2026-12-02, with lossy storage and background
/// syncs): the cluster had shrunk to one voter, n3, which won an election within one step
/// and sent AppendEntries of term 15 before its vote and term were synced; it crashed, lost
/// them, restarted in term 14 and led term 15 a second time with a different log (SP-3). A
/// leader's AppendEntries now leave early only once its term and vote are durable. The
/// driver's test-only switch `SyncBugs::reveal_before_term_durable` undoes the fix, and the
/// staged `a_lone_voter_crashes_as_it_leads` (src/sim/storage.rs) catches it.
#[test]
fn a_single_voter_syncs_its_term_before_revealing_it_seed_227919() {
    if let Err(failure) = run(nemesis_scenario, 227_919) {
        panic!("{failure}\n{}", replay_hint(227_919));
    }
}

/// Nemesis seed 1903719 (found by the eighth session's soak, lossy storage and background
/// syncs): the cluster had shrunk to one voter, n1, which won term 7 within one step and
/// crashed before syncing its term and vote, revealing nothing (its sends wait for them).
/// It restarted in term 6 and voted for the removed n3, which then led term 7. Legal: n1 was
/// leader of term 7 only in memory. The checker now forgets a leadership, and the entries of
/// its term, when a crash forgets the unrevealed self-vote it rested on; a message of that
/// term leaving the node makes the vote, and so the leadership, binding.
#[test]
fn a_leadership_lost_unrevealed_in_a_crash_is_forgotten_seed_1903719() {
    if let Err(failure) = run(nemesis_scenario, 1_903_719) {
        panic!("{failure}\n{}", replay_hint(1_903_719));
    }
}

/// Nemesis seed 2233049 (found by the ninth session's soak: 7 nodes, one entry per
/// AppendEntries, 5% of messages delayed 150 ms-2 s): the leader crashed 40 ms before the
/// quiet period. Its AppendEntries still in flight kept landing for 1.4 s, each one contact
/// with the leader of that term, so every pre-vote was refused until they stopped. The node
/// added last then had 1.6 s left to catch up 1,900 entries, and did not. A liveness bound
/// must outlast the faults' own messages. The quiet period now counts from the time the last
/// message sent before it lands.
#[test]
fn the_quiet_period_counts_from_the_last_delayed_message_seed_2233049() {
    if let Err(failure) = run(nemesis_scenario, 2_233_049) {
        panic!("{failure}\n{}", replay_hint(2_233_049));
    }
}

/// Nemesis seed 3999449 (found by the fifteenth session's soak: 7 nodes, a 300-byte inbox
/// budget drawn as a fault, 5% long-tail delays): the leader's catch-up AppendEntries of 64
/// entries fits a link only while it carries nothing else, and held messages kept the link to
/// one follower occupied, so it never caught up. A budget below the leader's window is one
/// `Config::validate` refuses; as a fault it ends with the faults, and the quiet period runs
/// with the config's budget.
#[test]
fn a_fault_budget_below_the_window_ends_with_the_faults_seed_3999449() {
    if let Err(failure) = run(nemesis_scenario, 3_999_449) {
        panic!("{failure}\n{}", replay_hint(3_999_449));
    }
}

/// Nemesis seed 5881869 (found by the twentieth session's soak): an addition of n4, retried
/// while its removal was under way, reached the leader before the removal committed and ran
/// after it, so the leader re-added n4 as a learner. The simulator had marked n4 removed and
/// never restarted it (it was down since a crash mid-snapshot), so the cluster could not
/// converge. The simulator now takes back as a member any node the leader's configuration
/// holds again, and restarts it, as an operator would.
#[test]
fn a_node_re_added_after_its_removal_is_a_member_again_seed_5881869() {
    if let Err(failure) = run(nemesis_scenario, 5_881_869) {
        panic!("{failure}\n{}", replay_hint(5_881_869));
    }
}

/// The determinism guard for simulator optimisations: a digest of every seed's [`RunReport`]
/// (trace hash, trace length, stats, ops, commit index, verdict; or the failure's text) for
/// `FERRAFT_DIGEST_SEEDS` seeds (default 300) of the sweep and of the nemesis scenario, plus
/// the full trace text of the first 20 seeds of each with `record_trace` on. A change that
/// must keep every run identical must keep the printed digests. `FERRAFT_DIGEST_OUT=file`
/// writes one line per seed, to find the first seed that moved.
///
/// `cargo test --release --test sim_seeds run_digest -- --ignored --nocapture`
#[test]
#[ignore = "determinism guard for optimisations, ~30 s: run by hand"]
fn run_digest() {
    let n = std::env::var("FERRAFT_DIGEST_SEEDS").ok().and_then(|s| s.parse().ok());
    let n: u64 = n.unwrap_or(300);
    let mut lines = Vec::new();
    let mut all = Fnv64::default();
    for (name, scenario) in [("sweep", scenario as fn(u64) -> _), ("nemesis", nemesis_scenario)] {
        let mut digest = Fnv64::default();
        for seed in 0..n {
            let line = match run(scenario, seed) {
                Ok(r) => format!(
                    "{name} {seed} ok {:x} {} {:?} {:?} {} {} {} {:?}",
                    r.trace_hash,
                    r.trace_lines,
                    r.simulated,
                    r.stats,
                    r.ops,
                    r.ops_completed,
                    r.commit_index,
                    r.linearizable
                ),
                Err(f) => format!("{name} {seed} failed {f}"),
            };
            digest.eat(line.as_bytes());
            lines.push(line);
        }
        let mut traces = Fnv64::default();
        for seed in 0..n.min(20) {
            let (mut config, schedule) = scenario(seed);
            config.record_trace = true;
            if let Ok(report) = run_kv(&config, &schedule) {
                for line in report.trace.expect("record_trace keeps the trace") {
                    traces.eat(line.as_bytes());
                }
            }
        }
        println!("digest {name} 0..{n}: runs {:016x}, traces {:016x}", digest.0, traces.0);
        all.eat(&digest.0.to_le_bytes());
        all.eat(&traces.0.to_le_bytes());
    }
    println!("digest all: {:016x}", all.0);
    if let Ok(file) = std::env::var("FERRAFT_DIGEST_OUT") {
        std::fs::write(&file, lines.join("\n") + "\n").expect("writable digest file");
    }
}

/// FNV-1a, stable across runs (the digest must not depend on `HashMap` keys).
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
}
