//! Seeds that once failed, replayed through the public simulator API so they stay fixed.
//! Each test names the bug it guards against; a failure prints the simulator's report.

use ferraft::sim::{run_kv, Schedule, SimConfig};

/// A learner ~2000 entries behind at the heal, fed one entry per AppendEntries over a
/// reordering network, must catch up within the quiet period. It did not, for two reasons:
/// a stale or duplicated success in Probe mode cleared the outstanding-probe flag and sent one
/// more probe (probes multiplied under duplication), and every rejection caused by reordering
/// dropped the pipeline back to one probe per round trip, even rejections older than the
/// match index. Stale replies now change nothing, and a rejection that only shows a gap goes
/// back to the follower's end while staying pipelined.
#[test]
fn lagging_learner_catches_up_under_reordering_seed_10146954() {
    let mut config = SimConfig::new(10_146_954, 3);
    config.raft.max_entries_per_append = 1;
    config.raft.pre_vote = true;
    config.raft.check_quorum = true;
    let schedule = Schedule::random_with_membership(&config);
    let report = run_kv(&config, &schedule).unwrap_or_else(|failure| panic!("{failure}"));
    assert!(report.ops_completed > 0, "the workload made progress: {report:?}");
}
