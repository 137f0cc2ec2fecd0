//! Figure 16 of the Raft paper (§9.3), reproduced: how long a 5-node cluster is without a
//! leader after its leader crashes, for several election timeout ranges.
//!
//! `cargo run --release --example figure16 -- --out DIR [--trials N] [--lease] [--threaded | --threaded-only]`
//!
//! Each trial runs in the simulator (the production node driver in virtual time): a one-way
//! delay of 6..9 ms (a broadcast time of about 15 ms), a heartbeat of half the minimum election
//! timeout, logs of different lengths (one or two followers crashed while clients write, then
//! restarted, so they are ineligible to lead), then the leader's synchronized heartbeat
//! broadcast, and the leader crashed at a uniformly random point of its heartbeat interval
//! (its links are cut once the broadcast has landed, so nothing it sends later resets a
//! timer). The time without a leader runs from the crash until some node becomes leader, as
//! the paper measured it. Each line runs with PreVote off (the paper's setting) and on.
//!
//! Writes `DIR/figure16_top.svg`, `DIR/figure16_bottom.svg` (CDFs, PreVote off, as in the
//! paper), the same two with `_prevote` for PreVote on, and `DIR/figure16.md` (the table).
//! `--lease` runs every line with lease reads (and CheckQuorum) on, writing `_lease` files:
//! followers then refuse votes for a minimum election timeout after the leader last reached
//! them, which must not slow elections down (NOTES.md, twenty-fourth session).
//! `--threaded` adds a spot check of the 150-300 ms line on real threads (100 trials);
//! `--threaded-only` runs just that spot check.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferraft::sim::{KvWorkload, NetworkConfig, SimConfig, Simulator};
use ferraft::{Cluster, Config, KvCommand, KvStateMachine, NetworkFaults, NodeId};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// One line of the figure: the election timeout range, in milliseconds.
#[derive(Clone, Copy, Debug)]
struct Line {
    lo: f64,
    hi: f64,
    trials: usize,
    /// Lease reads on (with CheckQuorum), `--lease`.
    lease: bool,
}

impl Line {
    fn label(&self) -> String {
        format!("{}-{} ms", self.lo, self.hi)
    }
}

const TOP: [(f64, f64); 6] = [
    (150.0, 150.0),
    (150.0, 151.0),
    (150.0, 155.0),
    (150.0, 175.0),
    (150.0, 200.0),
    (150.0, 300.0),
];
const BOTTOM: [(f64, f64); 5] =
    [(12.0, 24.0), (25.0, 50.0), (50.0, 100.0), (100.0, 200.0), (150.0, 300.0)];

/// The one-way network delay: 6..9 ms, so a broadcast and its replies take about 15 ms.
const DELAY_MS: (u64, u64) = (6, 9);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let out = PathBuf::from(flag("--out").map_or("figure16", String::as_str));
    let trials: Option<usize> = flag("--trials").map(|t| t.parse().expect("--trials N"));
    let threaded_only = args.iter().any(|a| a == "--threaded-only");
    let threaded = threaded_only || args.iter().any(|a| a == "--threaded");
    let lease = args.iter().any(|a| a == "--lease");
    std::fs::create_dir_all(&out).expect("the output directory can be created");
    let lines = |set: &[(f64, f64)]| -> Vec<Line> {
        set.iter()
            .map(|&(lo, hi)| {
                let paper = if lo == hi { 100 } else { 1000 };
                Line { lo, hi, trials: trials.unwrap_or(paper).min(paper), lease }
            })
            .collect()
    };
    let mut table = String::from(
        "| graph | timeouts | PreVote | trials | min | median | mean | p99 | max (ms) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let pre_votes: &[bool] = if threaded_only { &[] } else { &[false, true] };
    for &pre_vote in pre_votes {
        let suffix = match (pre_vote, lease) {
            (false, false) => "",
            (true, false) => "_prevote",
            (false, true) => "_lease",
            (true, true) => "_prevote_lease",
        };
        for (name, set, log_x) in [("top", &TOP[..], true), ("bottom", &BOTTOM[..], false)] {
            let mut curves = Vec::new();
            for line in lines(set) {
                let started = Instant::now();
                let mut times = run_line(line, pre_vote);
                times.sort_by(f64::total_cmp);
                let stats = Stats::of(&times);
                eprintln!(
                    "{name} {} PreVote {pre_vote}: {} trials in {:.1}s: {stats}",
                    line.label(),
                    times.len(),
                    started.elapsed().as_secs_f64()
                );
                let on = if pre_vote { "on" } else { "off" };
                let _ = writeln!(
                    table,
                    "| {name} | {} | {on} | {} | {} |",
                    line.label(),
                    times.len(),
                    stats.row()
                );
                curves.push((line.label(), times));
            }
            let file = out.join(format!("figure16_{name}{suffix}.svg"));
            let title = format!(
                "Figure 16 ({name}), PreVote {}{}: time without a leader",
                if pre_vote { "on" } else { "off" },
                if lease { ", lease reads" } else { "" }
            );
            plot(&file, &title, &curves, log_x);
        }
    }
    if threaded {
        let started = Instant::now();
        let mut times = threaded_line(trials.unwrap_or(100).min(100));
        times.sort_by(f64::total_cmp);
        let stats = Stats::of(&times);
        eprintln!(
            "threaded 150-300 ms: {} trials in {:.0}s: {stats}",
            times.len(),
            started.elapsed().as_secs_f64()
        );
        let _ =
            writeln!(table, "| threaded | 150-300 ms | on | {} | {} |", times.len(), stats.row());
    }
    let md = if lease { "figure16_lease.md" } else { "figure16.md" };
    std::fs::write(out.join(md), &table).expect("the table can be written");
    println!("{table}");
}

/// Runs every trial of one line; returns the times without a leader, in milliseconds.
fn run_line(line: Line, pre_vote: bool) -> Vec<f64> {
    let mut failed = 0;
    let times = (0..line.trials as u64)
        .filter_map(|trial| {
            let seed = trial * 1_000_003 + (line.lo * 1000.0 + line.hi) as u64;
            match trial_downtime(line, pre_vote, seed) {
                Ok(d) => Some(d.as_secs_f64() * 1000.0),
                Err(why) => {
                    failed += 1;
                    if failed <= 3 {
                        eprintln!("{} trial {trial}: setup failed: {why}", line.label());
                    }
                    None
                }
            }
        })
        .collect();
    if failed > 0 {
        eprintln!("{}: {failed} of {} trials failed their setup", line.label(), line.trials);
    }
    times
}

/// The simulator's settings for a line: the tick is fine enough for the range (at least five
/// ticks across it, 150 ticks in the minimum timeout); a fixed timeout such as 150-150 becomes
/// the narrowest range the library accepts (three 50 µs ticks).
fn line_config(line: Line, pre_vote: bool, seed: u64) -> SimConfig {
    let (lo_us, hi_us) = ((line.lo * 1000.0) as u64, (line.hi * 1000.0) as u64);
    let tick_us = if hi_us == lo_us { 50 } else { (lo_us / 150).min((hi_us - lo_us) / 5).max(20) };
    let hi_us = hi_us.max(lo_us + 3 * tick_us);
    let us = Duration::from_micros;
    let mut config = SimConfig::new(seed, 5);
    config.raft.election_timeout = us(lo_us)..us(hi_us);
    config.raft.heartbeat_interval = us(lo_us / 2);
    config.raft.tick = us(tick_us);
    config.raft.pre_vote = pre_vote;
    if line.lease {
        config.raft.lease_reads = true;
        config.raft.check_quorum = true;
    }
    // One entry per AppendEntries and one in flight: a lagging follower catches up slowly, so
    // the logs still differ when the leader crashes.
    config.raft.max_entries_per_append = 1;
    config.raft.max_inflight = 1;
    config.network = NetworkConfig {
        min_delay: Duration::from_millis(DELAY_MS.0),
        max_delay: Duration::from_millis(DELAY_MS.1),
        drop_request: 0.0,
        drop_reply: 0.0,
        duplicate: 0.0,
        ..NetworkConfig::default()
    };
    config.clients = 8;
    config.op_timeout = Duration::from_secs(5);
    config
}

/// One trial: the time without a leader, or why the setup failed.
fn trial_downtime(line: Line, pre_vote: bool, seed: u64) -> Result<Duration, String> {
    let config = line_config(line, pre_vote, seed);
    let tick = config.raft.tick;
    let heartbeat = config.raft.heartbeat_interval;
    let max_timeout = config.raft.election_timeout.end;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xf16);
    let mut sim = Simulator::new(config, |_| KvStateMachine::new()).map_err(|e| e.to_string())?;
    sim.start_clients(KvWorkload { keys: 3 });
    let leader = settled_leader(&mut sim, tick, max_timeout)?;
    // Logs of different lengths: one or two followers miss a stretch of writes.
    let mut followers: Vec<NodeId> =
        sim.node_ids().into_iter().filter(|&id| id != leader).collect();
    let lagging = 1 + rng.random_range(0..2);
    for _ in 0..lagging {
        let victim = followers.remove(rng.random_range(0..followers.len()));
        sim.crash(victim).map_err(|e| e.to_string())?;
        sim.run_for(Duration::from_millis(rng.random_range(150..300)))
            .map_err(|f| f.to_string())?;
        sim.restart(victim).map_err(|e| e.to_string())?;
    }
    sim.stop_clients();
    let leader = settled_leader(&mut sim, tick, Duration::ZERO)?;
    // The synchronized heartbeat: wait for the leader's next broadcast.
    let before = sim.last_heartbeat(leader);
    run_until(&mut sim, tick, heartbeat * 4, |s| s.last_heartbeat(leader) != before)
        .ok_or("no heartbeat")?;
    let sent = sim.last_heartbeat(leader).ok_or("no heartbeat")?;
    let crash_at = sent + heartbeat.mul_f64(rng.random::<f64>());
    let landed = sent + Duration::from_millis(DELAY_MS.1) + tick;
    if crash_at > landed {
        sim.run_for(landed.saturating_sub(sim.now())).map_err(|f| f.to_string())?;
        for id in sim.node_ids().into_iter().filter(|&id| id != leader) {
            sim.cut_link(leader, id).map_err(|e| e.to_string())?;
        }
    }
    sim.run_for(crash_at.saturating_sub(sim.now())).map_err(|f| f.to_string())?;
    sim.crash(leader).map_err(|e| e.to_string())?;
    let crashed = sim.now();
    run_until(&mut sim, tick, Duration::from_secs(100), |s| s.leader().is_some())
        .ok_or("no new leader within 100 s")?;
    Ok(sim.now() - crashed)
}

/// Waits for a leader, lets it hold for `hold`, and returns the leader then.
fn settled_leader<S: ferraft::StateMachine>(
    sim: &mut Simulator<S>,
    tick: Duration,
    hold: Duration,
) -> Result<NodeId, String> {
    run_until(sim, tick, Duration::from_secs(30), |s| s.leader().is_some())
        .ok_or("no leader in 30 s")?;
    sim.run_for(hold).map_err(|f| f.to_string())?;
    run_until(sim, tick, Duration::from_secs(30), |s| s.leader().is_some())
        .ok_or("no leader in 30 s")?;
    sim.leader().ok_or_else(|| "no leader".to_owned())
}

/// Runs in steps of `step` until `done` holds (`Some(())`) or `limit` passes (`None`).
fn run_until<S: ferraft::StateMachine>(
    sim: &mut Simulator<S>,
    step: Duration,
    limit: Duration,
    done: impl Fn(&Simulator<S>) -> bool,
) -> Option<()> {
    let end = sim.now() + limit;
    while !done(sim) {
        if sim.now() >= end {
            return None;
        }
        sim.run_for(step).ok()?;
    }
    Some(())
}

/// The 150-300 ms line on real threads: the `Cluster` runtime over the in-process network
/// with the same delays; the synchronized broadcast is a committed proposal (all followers
/// receive it at once), then the leader is killed within its heartbeat interval.
fn threaded_line(trials: usize) -> Vec<f64> {
    let ms = Duration::from_millis;
    let config = Config {
        election_timeout: ms(150)..ms(300),
        heartbeat_interval: ms(75),
        tick: ms(1),
        seed: 16,
        ..Config::default()
    };
    let cluster = Cluster::new(config, 5, |_| KvStateMachine::new()).expect("a cluster starts");
    let faults =
        NetworkFaults { delay: ms(DELAY_MS.0)..ms(DELAY_MS.1), ..NetworkFaults::default() };
    cluster.set_faults(faults).expect("valid faults");
    let mut rng = SmallRng::seed_from_u64(16);
    let mut times = Vec::new();
    for trial in 0..trials {
        let Ok(leader) = cluster.wait_for_leader(Duration::from_secs(10)) else { continue };
        let put = KvCommand::Put { key: "k".into(), value: trial.to_string().into() };
        if cluster.propose(put).is_err() {
            continue;
        }
        std::thread::sleep(ms(75).mul_f64(rng.random::<f64>()));
        cluster.kill(leader).expect("the leader runs");
        let crashed = Instant::now();
        while cluster.leader().is_none_or(|l| l == leader) {
            if crashed.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        times.push(crashed.elapsed().as_secs_f64() * 1000.0);
        cluster.restart(leader).expect("the old leader restarts");
        std::thread::sleep(ms(400)); // it rejoins as a follower before the next trial
    }
    cluster.shutdown();
    times
}

/// Summary statistics of sorted samples, in milliseconds.
struct Stats {
    min: f64,
    median: f64,
    mean: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn of(sorted: &[f64]) -> Self {
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        if sorted.is_empty() {
            return Stats { min: 0.0, median: 0.0, mean: 0.0, p99: 0.0, max: 0.0 };
        }
        Stats {
            min: sorted[0],
            median: at(0.5),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p99: at(0.99),
            max: sorted[sorted.len() - 1],
        }
    }

    fn row(&self) -> String {
        format!(
            "{:.0} | {:.0} | {:.0} | {:.0} | {:.0}",
            self.min, self.median, self.mean, self.p99, self.max
        )
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "min {:.0} median {:.0} mean {:.0} p99 {:.0} max {:.0} ms",
            self.min, self.median, self.mean, self.p99, self.max
        )
    }
}

/// Draws the mesh, one line per curve and the legend, on either kind of x axis.
fn draw_cdfs<'a, DB, X>(
    mut chart: ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
    curves: &[(String, Vec<f64>)],
) where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    chart
        .configure_mesh()
        .x_desc("time without leader (ms)")
        .y_desc("cumulative percent")
        .draw()
        .expect("mesh");
    for (i, (label, times)) in curves.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(cdf(times), c.stroke_width(2)))
            .expect("series")
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .expect("legend");
}

/// One CDF per line: the share of trials (y) whose time without a leader was at most x ms.
fn plot(file: &Path, title: &str, curves: &[(String, Vec<f64>)], log_x: bool) {
    let max = curves.iter().filter_map(|(_, t)| t.last()).fold(100.0f64, |a, &b| a.max(b));
    let root = SVGBackend::new(file, (900, 520)).into_drawing_area();
    root.fill(&WHITE).expect("svg");
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50);
    if log_x {
        let x = (100f64..max * 1.2).log_scale();
        draw_cdfs(builder.build_cartesian_2d(x, 0f64..100f64).expect("chart"), curves);
    } else {
        draw_cdfs(
            builder.build_cartesian_2d(0f64..max * 1.05, 0f64..100f64).expect("chart"),
            curves,
        );
    }
    root.present().expect("the plot can be written");
}

/// The empirical CDF as points (x = time in ms, y = percent of trials at or below it).
fn cdf(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len().max(1) as f64;
    sorted.iter().enumerate().map(|(i, &t)| (t.max(1.0), 100.0 * (i + 1) as f64 / n)).collect()
}
