//! Property test over (seed, generated fault schedule, cluster size in {3, 5, 7}): every run
//! must be safe, linearizable and converge. A failure prints the seed and the schedule; the
//! shrunk case replays exactly, since a run is a pure function of (config, schedule).

use std::time::Duration;

use ferraft::sim::{run_kv, Fault, NetworkConfig, Schedule, SimConfig, Target};
use proptest::prelude::*;

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![Just(Target::Leader), (0usize..8).prop_map(Target::Nth)]
}

/// Valid lossy-network settings: probabilities in [0, 0.4], 0.1..20 ms delays.
fn network() -> impl Strategy<Value = NetworkConfig> {
    (0.0..0.4f64, 0.0..0.4f64, 0.0..0.4f64, 100u64..2_000, 0u64..18_000).prop_map(
        |(drop_request, drop_reply, duplicate, min_us, spread_us)| NetworkConfig {
            min_delay: Duration::from_micros(min_us),
            max_delay: Duration::from_micros(min_us + spread_us),
            drop_request,
            drop_reply,
            duplicate,
            ..NetworkConfig::default()
        },
    )
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => target().prop_map(Fault::Crash),
        4 => (0usize..8).prop_map(Fault::Restart),
        1 => Just(Fault::RestartAll),
        2 => target().prop_map(Fault::Isolate),
        2 => any::<u64>().prop_map(Fault::Split),
        3 => Just(Fault::Heal),
        1 => network().prop_map(Fault::Network),
        1 => Just(Fault::AddNode),
        1 => target().prop_map(Fault::Remove),
    ]
}

fn schedule() -> impl Strategy<Value = Schedule> {
    prop::collection::vec((0u64..3_000, fault()), 0..40).prop_map(|events| {
        Schedule::new(events.into_iter().map(|(ms, f)| (Duration::from_millis(ms), f)).collect())
    })
}

/// `PROPTEST_CASES` overrides the default of 512 cases.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_schedule_is_safe_linearizable_and_converges(
        seed in any::<u64>(),
        nodes in prop_oneof![Just(3u64), Just(5), Just(7)],
        schedule in schedule(),
    ) {
        let config = SimConfig::new(seed, nodes);
        if let Err(failure) = run_kv(&config, &schedule) {
            panic!("seed {seed}, {nodes} nodes, schedule {schedule:?}\n{failure}");
        }
    }
}
