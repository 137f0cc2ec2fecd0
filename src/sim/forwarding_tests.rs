//! Forwarded requests in virtual time ([`SimConfig::forward_requests`]): clients ask any node,
//! a follower hands the request to the leader it knows through the driver's forwarder, and
//! the leader answers. The checkers must stay quiet under faults and catch a forward that,
//! lost with its leader, claims it was never applied.

use super::bites::nemesis;
use super::tests::run_with;
use super::*;

/// The nemesis (crashes, partitions, one-way cuts, pauses, mid-step crashes, long delays,
/// drifting clocks) with forwarding on and eight clients; odd seeds read off the log too.
fn forwarding(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, schedule) = nemesis(seed);
    config.forward_requests = true;
    config.clients = 8;
    config.reads = seed % 2 == 1;
    (config, schedule)
}

fn run_forwarding(seed: u64, lost_claims_unreachable: bool) -> Result<RunReport, SimFailure> {
    run_with(forwarding, seed, |sim| {
        sim.set_lost_forward_claims_unreachable(lost_claims_unreachable)
    })
}

/// Every run is safe, linearizable and converges, with thousands of requests forwarded. (A
/// request reaches the leader's queue within 50 µs, so few are lost on the way; the bug test
/// below shows the ones a crashed leader held are answered as it must.)
#[test]
fn forwarded_requests_stay_linearizable_under_faults() {
    let seeds = std::env::var("FERRAFT_FORWARD_SEEDS").ok().and_then(|s| s.parse().ok());
    let (mut forwards, mut lost, mut refused, mut ops) = (0, 0, 0, 0);
    for seed in 0..seeds.unwrap_or(60u64) {
        let report =
            run_forwarding(seed, false).unwrap_or_else(|f| panic!("seed {seed}, forwarding: {f}"));
        forwards += report.stats.forwards;
        lost += report.stats.forwards_lost;
        refused += report.stats.forwards_refused;
        ops += report.ops_completed;
    }
    println!(
        "{forwards} requests forwarded, {lost} lost with their leader, {refused} refused (the \
         leader known was down), {ops} ops completed"
    );
    assert!(forwards >= 1000, "only {forwards} requests forwarded");
    assert!(refused >= 10, "only {refused} forwards refused");
}

/// A forwarded proposal lost with its leader must leave its outcome unknown (`NodeDown`): the
/// leader may have appended and replicated it, and the next leader commit it. With the bug it
/// claims the leader was never reached (`LeaderUnreachable`, never applied), and the client's
/// record of an operation that took no effect is contradicted by the values read later.
#[test]
fn a_lost_forward_claiming_it_was_never_applied_is_caught_and_the_correct_driver_is_not() {
    for seed in 0..10 {
        run_forwarding(seed, false).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
    }
    let found = (0..100).find_map(|seed| run_forwarding(seed, true).err().map(|f| (seed, f)));
    let (seed, failure) =
        found.expect("lost_forward_claims_unreachable: no violation in 100 seeds");
    println!("lost_forward_claims_unreachable caught at seed {seed}: {failure}");
    assert!(failure.kind.is_safety(), "caught, but not by a safety check: {failure}");
}
