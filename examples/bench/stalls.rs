//! `stalls`: how often this machine takes a running thread's CPU away, and for how long. No
//! library code runs: it measures the machine every other workload's tail latency sits on.
//!
//! ```text
//! cargo run --release --example bench -- stalls [--threads T] [--ms M]
//! ```
//!
//! `--threads` threads (default: one per core) each read the clock in a tight loop for `--ms`
//! milliseconds (default 1000). A gap above 5 µs between two consecutive reads is a stall: the
//! thread was not running (an interrupt, a timer, the hypervisor running something else). One
//! JSON line: `stalls_per_ms` (per thread), the stalls' `p50_us`/`p99_us`/`max_us`,
//! `period_us` (the median time between one thread's consecutive stalls) and `lost_pct` (the
//! share of the threads' time spent stalled).
//!
//! On a VM a periodic stall of the vCPU sets the floor of any p99: an operation of T µs on
//! a thread stalled every P µs is hit with probability about T/P.

use std::time::{Duration, Instant};

use super::Args;

/// A gap between two clock reads above this is a stall.
const STALL: Duration = Duration::from_micros(5);

/// `stalls`.
pub fn stalls(args: &Args) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads =
        args.text("--threads").map_or(cores, |t| t.parse().expect("--threads needs a number"));
    let ms: u64 = args.text("--ms").map_or(1000, |m| m.parse().expect("--ms needs milliseconds"));
    let run = Duration::from_millis(ms);
    let per_thread: Vec<Vec<(Duration, Duration)>> = (0..threads)
        .map(|_| std::thread::spawn(move || watch(run)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("stall watcher"))
        .collect();
    let mut lengths: Vec<Duration> = per_thread.iter().flatten().map(|&(_, len)| len).collect();
    let mut periods: Vec<Duration> =
        per_thread.iter().flat_map(|stalls| stalls.windows(2).map(|w| w[1].0 - w[0].0)).collect();
    lengths.sort_unstable();
    periods.sort_unstable();
    let pct = |xs: &[Duration], p: f64| {
        xs.get(((xs.len() as f64 * p) as usize).min(xs.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    let lost: Duration = lengths.iter().sum();
    let secs = run.as_secs_f64();
    println!(
        "{{\"workload\":\"stalls\",\"threads\":{threads},\"secs\":{secs:.3},\"stalls_per_ms\":{:.2},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"period_us\":{:.0},\"lost_pct\":{:.2}}}",
        lengths.len() as f64 / threads as f64 / (secs * 1e3),
        pct(&lengths, 0.5),
        pct(&lengths, 0.99),
        lengths.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
        pct(&periods, 0.5),
        lost.as_secs_f64() * 100.0 / (threads as f64 * secs),
    );
}

/// Reads the clock in a loop for `run`; each stall as (when it ended, since the start; its length).
fn watch(run: Duration) -> Vec<(Duration, Duration)> {
    let start = Instant::now();
    let mut last = start;
    let mut stalls = Vec::with_capacity(4096);
    loop {
        let now = Instant::now();
        let gap = now - last;
        if gap > STALL {
            stalls.push((now - start, gap));
        }
        if now - start >= run {
            return stalls;
        }
        last = now;
    }
}
