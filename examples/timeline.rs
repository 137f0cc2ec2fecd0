//! A timeline picture of one simulated run: one lane per node over virtual time, showing role
//! and term, the commit index rising, crashes and restarts, pauses, membership changes,
//! installed snapshots, and network faults across all lanes.
//!
//! `cargo run --release --example timeline -- --seed S --out FILE.svg [--nodes N]`
//!
//! The run is the simulator's random fault schedule with membership changes for that seed
//! (`Schedule::random_with_membership`), with the KV workload. A failing seed of the seed
//! sweep writes the same picture of its own scenario with
//! `FERRAFT_SEED=S FERRAFT_TIMELINE=FILE.svg cargo test --release --test sim_seeds replay`.

use ferraft::sim::{KvWorkload, Schedule, SimConfig, Simulator};
use ferraft::KvStateMachine;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let seed: u64 = flag("--seed").map_or(1, |s| s.parse().expect("--seed takes a number"));
    let nodes: u64 = flag("--nodes").map_or(5, |s| s.parse().expect("--nodes takes a number"));
    let out = flag("--out").cloned().unwrap_or_else(|| format!("timeline-{seed}.svg"));
    let mut config = SimConfig::new(seed, nodes);
    config.record_trace = true;
    let schedule = Schedule::random_with_membership(&config);
    let mut sim = match Simulator::new(config, |_| KvStateMachine::new()) {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("bad settings: {e}");
            std::process::exit(2);
        }
    };
    let keys = sim.config().keys;
    sim.start_clients(KvWorkload { keys });
    let verdict = sim.run_schedule(&schedule).and_then(|()| sim.settle().map(|_| ()));
    let svg = sim.timeline_svg().expect("the full trace was kept");
    std::fs::write(&out, svg).expect("the picture can be written");
    match verdict {
        Ok(()) => println!("seed {seed}: safe and converged; wrote {out}"),
        Err(f) => println!(
            "seed {seed} failed (the picture shows the run up to the failure; wrote {out}):\n{f}"
        ),
    }
}
