//! `floor`: what this machine allows C closed-loop OS-thread clients when the consensus work
//! costs nothing: the ceiling the `clients` workload is measured against (issue 13).
//!
//! ```text
//! cargo run --release --example bench -- floor --mode answer|replicate --clients C [--ops N] [--spin R]
//! ```
//!
//! Each client thread posts a request in a slot of its own and waits for the answer as
//! `Receipt::wait` does: it yields up to `--spin` times (default: `Config::default()`'s
//! `spin_rounds`), then sleeps until woken. Nothing else happens: no allocation, no channel,
//! no log. `answer`: one server thread answers every posted request it finds. `replicate`: the
//! thread hops of a replicated commit, empty: a leader thread collects the posted requests,
//! hands the batch to two follower threads, and answers the batch once one of them has
//! acknowledged it (a majority of three). Idle server threads yield, as the node loop does.
//! Same JSON line as `clients`, with `"workload":"floor"`, the mode, and `"nodes"` the
//! server threads' count of nodes (1 or 3).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Instant;

use ferraft::Config;

use super::{cpu_secs, report_closed_loop, share_of, Args};

/// A slot is free (or answered), posted, or posted by a client that sleeps.
const ANSWERED: u8 = 0;
const POSTED: u8 = 1;
const SLEEPING: u8 = 2;

/// One client's request slot, on a cache line of its own.
#[repr(align(128))]
struct Slot {
    state: AtomicU8,
    thread: OnceLock<Thread>,
}

/// A counter on a cache line of its own.
#[repr(align(128))]
struct Counter(AtomicU64);

struct Shared {
    slots: Vec<Slot>,
    /// The leader's latest batch, and each follower's acknowledgement of it (`replicate`).
    batch: Counter,
    acks: [Counter; 2],
    stop: AtomicBool,
}

impl Shared {
    fn answer(&self, slot: usize) {
        let slot = &self.slots[slot];
        if slot.state.swap(ANSWERED, Ordering::AcqRel) == SLEEPING {
            slot.thread.get().expect("a sleeping client registered").unpark();
        }
    }
}

/// `floor --mode answer|replicate`.
pub fn floor(args: &Args) {
    let mode = args.text("--mode").unwrap_or("replicate");
    if !matches!(mode, "answer" | "replicate") {
        eprintln!("--mode must be answer or replicate, not {mode}");
        std::process::exit(2);
    }
    let replicate = mode == "replicate";
    let ops = if args.ops == 0 { 400_000 } else { args.ops };
    let spin: u32 = args.text("--spin").map_or(Config::default().spin_rounds, |r| {
        r.parse().expect("--spin needs a number of yields")
    });
    let slots = (0..args.clients)
        .map(|_| Slot { state: AtomicU8::new(ANSWERED), thread: OnceLock::new() })
        .collect();
    let zero = || Counter(AtomicU64::new(0));
    let shared = Arc::new(Shared {
        slots,
        batch: zero(),
        acks: [zero(), zero()],
        stop: AtomicBool::new(false),
    });
    let mut servers = vec![spawn(&shared, move |s| leader(s, replicate))];
    if replicate {
        for f in 0..2 {
            servers.push(spawn(&shared, move |s| follower(s, f)));
        }
    }
    let cpu_before = cpu_secs();
    let start = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|c| {
            let (shared, mine) = (Arc::clone(&shared), share_of(ops, args.clients, c));
            std::thread::spawn(move || client(&shared, c, mine, spin))
        })
        .collect();
    let samples = workers.into_iter().flat_map(|w| w.join().expect("client thread")).collect();
    let secs = start.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    for server in servers {
        server.join().expect("server thread");
    }
    let (nodes, clients) = (if replicate { 3 } else { 1 }, args.clients);
    let head = format!(
        "\"workload\":\"floor\",\"mode\":\"{mode}\",\"nodes\":{nodes},\"clients\":{clients}"
    );
    report_closed_loop(&head, ops, samples, secs, cpu_before);
}

fn spawn(
    shared: &Arc<Shared>,
    run: impl FnOnce(&Shared) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let shared = Arc::clone(shared);
    std::thread::spawn(move || run(&shared))
}

/// Posts, waits, repeats `ops` times; the latency of each, in ns.
fn client(shared: &Shared, c: usize, ops: usize, spin: u32) -> Vec<u64> {
    let slot = &shared.slots[c];
    slot.thread.get_or_init(std::thread::current);
    let mut samples = Vec::with_capacity(ops);
    let mut t = Instant::now(); // NB: one clock read per operation, as in `clients`
    for _ in 0..ops {
        slot.state.store(POSTED, Ordering::Release);
        let mut rounds = 0;
        while slot.state.load(Ordering::Acquire) != ANSWERED {
            if rounds < spin {
                std::thread::yield_now();
                rounds += 1;
            } else if slot
                .state
                .compare_exchange(POSTED, SLEEPING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                || slot.state.load(Ordering::Acquire) == SLEEPING
            {
                std::thread::park(); // NB: woken by the answer's unpark, or spuriously
            }
        }
        let now = Instant::now();
        samples.push((now - t).as_nanos() as u64);
        t = now;
    }
    samples
}

/// Answers every posted request: at once (`answer`), or once a follower acknowledged the
/// batch they are in (`replicate`).
fn leader(shared: &Shared, replicate: bool) {
    let mut batch = Vec::new();
    let mut sequence = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        batch.clear();
        batch.extend(
            (0..shared.slots.len())
                .filter(|&i| shared.slots[i].state.load(Ordering::Acquire) != ANSWERED),
        );
        if batch.is_empty() {
            std::thread::yield_now();
            continue;
        }
        if replicate {
            sequence += 1;
            shared.batch.0.store(sequence, Ordering::Release);
            let acked = || shared.acks.iter().any(|a| a.0.load(Ordering::Acquire) >= sequence);
            while !acked() {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::yield_now();
            }
        }
        for &i in &batch {
            shared.answer(i);
        }
    }
}

/// Acknowledges each batch the leader publishes.
fn follower(shared: &Shared, f: usize) {
    let mut seen = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let batch = shared.batch.0.load(Ordering::Acquire);
        if batch == seen {
            std::thread::yield_now();
            continue;
        }
        seen = batch;
        shared.acks[f].0.store(batch, Ordering::Release);
    }
}
