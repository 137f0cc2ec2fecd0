//! The production client's retry rule under faults ([`SimConfig::client_retries`]): the
//! simulated clients retry exactly what `Client::propose` retries (`Retry::after`), so the
//! checkers judge that rule. A client that retries a proposal which may still commit must be
//! caught, and so must one that times out claiming a proposal that was appended was never
//! applied.

use super::bites::nemesis;
use super::tests::run_with;
use super::*;

/// The nemesis (crashes, mid-step crashes, partitions, pauses, long delays, drifting clocks)
/// with retrying clients; every third seed forwards, every fourth defers its applies, odd
/// seeds read off the log.
fn retrying(seed: u64) -> (SimConfig, Schedule) {
    let (mut config, schedule) = nemesis(seed);
    config.client_retries = true;
    config.clients = 8;
    config.forward_requests = seed.is_multiple_of(3);
    config.reads = seed % 2 == 1; // reads off the log, retried on any failure
    if seed % 4 == 1 {
        config.deferred_apply = Some(std::time::Duration::from_millis(2));
    }
    (config, schedule)
}

fn run_retrying(seed: u64, ignores_append: bool) -> Result<RunReport, SimFailure> {
    run_with(retrying, seed, |sim| sim.set_retry_ignores_append(ignores_append))
}

/// Every run is safe, linearizable and converges with the clients retrying as
/// `Client::propose` does.
#[test]
fn clients_retrying_as_client_propose_does_stay_linearizable_under_faults() {
    let seeds = std::env::var("FERRAFT_RETRY_SEEDS").ok().and_then(|s| s.parse().ok());
    let mut ops = 0;
    for seed in 0..seeds.unwrap_or(60u64) {
        let report =
            run_retrying(seed, false).unwrap_or_else(|f| panic!("seed {seed}, retrying: {f}"));
        ops += report.ops_completed;
    }
    assert!(ops >= 10_000, "only {ops} operations completed");
}

/// `Client::propose` retries a proposal lost with its node only if the receipt never learned
/// its entry's place. A client that retries it anyway sends again a command a crashed
/// leader may have replicated, which the next leader commits: applied twice.
#[test]
fn a_client_retrying_an_appended_proposal_is_caught_and_the_rule_is_not() {
    for seed in 0..10 {
        run_retrying(seed, false).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
    }
    let found = (0..100).find_map(|seed| run_retrying(seed, true).err().map(|f| (seed, f)));
    let (seed, failure) = found.expect("retry_ignores_append: no violation in 100 seeds");
    println!("retry_ignores_append caught at seed {seed}: {failure}");
    assert!(failure.kind.is_safety(), "caught, but not by a safety check: {failure}");
}

/// A retrying client that times out after nothing but refusals records the operation as never
/// applied, as `Client::propose` answers `Unavailable`, and the runs above stay linearizable
/// with it. One that says so of an operation an attempt of which was appended (or is still
/// unanswered) is caught: that attempt may yet commit, and a later read sees a value the
/// history says was never written.
#[test]
fn a_timeout_claiming_an_appended_proposal_never_applied_is_caught_and_the_rule_is_not() {
    let mut unavailable = 0;
    for seed in 0..10 {
        let report = run_retrying(seed, false).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        unavailable += report.stats.unavailable;
    }
    println!("{unavailable} operations recorded as never applied at their timeout");
    assert!(unavailable > 0, "no operation was refused until its timeout: the rule went unused");
    let claims = |seed| run_with(retrying, seed, |sim| sim.set_timeout_claims_unavailable(true));
    let found = (0..100).find_map(|seed| claims(seed).err().map(|f| (seed, f)));
    let (seed, failure) = found.expect("timeout_claims_unavailable: no violation in 100 seeds");
    println!("timeout_claims_unavailable caught at seed {seed}: {failure}");
    assert!(failure.kind.is_safety(), "caught, but not by a safety check: {failure}");
}
