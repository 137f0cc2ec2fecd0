//! Threaded scenario tests under faults, in the spirit of the well-known Raft lab suites:
//! an unreliable network, Figure 8 (leaders killed while proposals are in flight), churn, an
//! old leader partitioned away and rejoining, and long reordering; then one test per fault
//! switch: one-way cuts (a mute leader, a deaf leader), disconnect/connect composition, per-link
//! per-kind faults, messages held for seconds, and the validation of every switch.
//!
//! Every write carries a unique value, so the final state tells exactly which writes were
//! applied: an acknowledged write must appear exactly once, a write refused with `NotLeader` or
//! `ProposalDropped` never, and a write whose outcome is unknown (`Timeout`, `NodeDown`) at most
//! once. Random choices come from a seeded RNG whose seed each test prints.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;
use ferraft::{
    Applied, Cluster, Error, FaultError, KvCommand, KvOutput, NetworkFaults, NodeHandle, NodeId,
    NodeStatus, Receipt, Role,
};
use rand::rngs::SmallRng;
use rand::Rng;

const KEY: &str = "k";

/// What a client learned about one write.
#[derive(Debug)]
enum Outcome {
    /// Applied; the receipt's index, term and output.
    Acked(Applied<KvOutput>),
    /// Refused or replaced: never applied.
    NotApplied(Error),
    /// Timed out, or its node went down: applied at most once.
    Unknown(Error),
}

fn classify(result: Result<Applied<KvOutput>, Error>) -> Outcome {
    match result {
        Ok(applied) => Outcome::Acked(applied),
        Err(
            e @ (Error::NotLeader { .. }
            | Error::ProposalDropped { .. }
            | Error::Unavailable { .. }),
        ) => Outcome::NotApplied(e),
        Err(e @ (Error::Timeout | Error::NodeDown(_))) => Outcome::Unknown(e),
        Err(e) => panic!("a proposal failed with an unexpected error: {e:?}"),
    }
}

/// Every write sent, with what its client learned.
#[derive(Default)]
struct History {
    writes: Vec<(String, Outcome)>,
}

impl History {
    fn record(&mut self, value: String, result: Result<Applied<KvOutput>, Error>) {
        self.writes.push((value, classify(result)));
    }

    fn acked(&self) -> usize {
        self.writes.iter().filter(|(_, o)| matches!(o, Outcome::Acked(_))).count()
    }

    fn summary(&self) -> String {
        let unknown = self.writes.iter().filter(|(_, o)| matches!(o, Outcome::Unknown(_))).count();
        let acked = self.acked();
        let refused = self.writes.len() - acked - unknown;
        format!(
            "{} writes: {acked} acked, {refused} never applied, {unknown} unknown",
            self.writes.len()
        )
    }

    /// Checks the final value of [`KEY`] and every node's applied sequence against the history.
    fn check(&self, final_value: &str, records: &Records, ids: &[NodeId]) {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for t in tokens(final_value) {
            *count.entry(t).or_default() += 1;
        }
        let written: BTreeMap<&str, &Outcome> =
            self.writes.iter().map(|(v, o)| (v.as_str(), o)).collect();
        assert_eq!(written.len(), self.writes.len(), "values must be unique");
        for value in count.keys() {
            assert!(written.contains_key(value.as_str()), "{value} was never written");
        }
        for (value, outcome) in &self.writes {
            let n = count.get(value).copied().unwrap_or(0);
            match outcome {
                Outcome::Acked(applied) => {
                    assert_eq!(n, 1, "acknowledged {value} appears {n} times");
                    let output = applied.output.as_deref().unwrap_or_default();
                    assert!(output.ends_with(value.as_str()), "{value} acked with output {output}");
                }
                Outcome::NotApplied(e) => assert_eq!(n, 0, "{value} ({e}) appears {n} times"),
                Outcome::Unknown(e) => assert!(n <= 1, "{value} ({e}) appears {n} times"),
            }
        }
        self.check_acked_order(final_value);
        self.check_records(records, ids);
    }

    /// Acknowledged writes appear in the final value in the order of their log indexes.
    fn check_acked_order(&self, final_value: &str) {
        let position: BTreeMap<String, usize> =
            tokens(final_value).into_iter().enumerate().map(|(i, t)| (t, i)).collect();
        let mut acked: Vec<(ferraft::LogIndex, &str)> = self
            .writes
            .iter()
            .filter_map(|(v, o)| match o {
                Outcome::Acked(a) => Some((a.index, v.as_str())),
                _ => None,
            })
            .collect();
        acked.sort();
        for pair in acked.windows(2) {
            assert!(position[pair[0].1] < position[pair[1].1], "{pair:?} out of order");
        }
    }

    /// Every node applied the same sequence, with each acknowledged write at its index.
    fn check_records(&self, records: &Records, ids: &[NodeId]) {
        let reference = records.of(ids[0]);
        for &id in ids {
            let applied = records.of(id);
            assert_strictly_increasing(id, &applied);
            assert!(applied == reference, "{id} and {} applied different sequences", ids[0]);
        }
        let at: BTreeMap<_, _> = reference.into_iter().collect();
        for (value, outcome) in &self.writes {
            if let Outcome::Acked(applied) = outcome {
                assert_eq!(at.get(&applied.index), Some(&append(KEY, value)), "{value}");
            }
        }
    }
}

fn recording_cluster(config: ferraft::Config, nodes: usize) -> (Cluster<Recorder>, Records) {
    init_tracing();
    let records = Records::default();
    let cluster = Cluster::new(config, nodes, records.factory()).expect("starting the cluster");
    (cluster, records)
}

fn unreliable() -> NetworkFaults {
    NetworkFaults {
        drop_requests: 0.1,
        drop_replies: 0.1,
        delay: ms(0)..ms(27),
        ..NetworkFaults::default()
    }
}

/// A random moment to inject the next fault at (this sleep waits for no outcome): usually
/// soon, sometimes after a while.
fn pause(rng: &mut SmallRng) {
    let millis =
        if rng.random_bool(0.1) { rng.random_range(0..400) } else { rng.random_range(0..80) };
    std::thread::sleep(ms(millis));
}

/// Makes the network perfect (no cuts, no faults), restarts every killed node, commits one
/// more write, waits until all nodes converge, and returns the final value of [`KEY`] read
/// through the log.
fn heal_and_read(cluster: &Cluster<Recorder>, history: &mut History) -> String {
    cluster.reset_network();
    for id in cluster.ids() {
        if !cluster.is_running(id) {
            cluster.restart(id).expect("restart");
        }
    }
    // No stale leader is left to take the next write: one that appended it and then stepped
    // down could hold it pending beyond the new leader's log until the deadline.
    wait_for_agreement(cluster, LONG);
    let last = token("last");
    let result = cluster.propose(append(KEY, &last));
    assert!(result.is_ok(), "a healed cluster commits: {result:?}");
    history.record(last, result);
    let read = cluster.propose(get(KEY)).expect("a read through the log");
    // Every node applied the read too, so their records end at the same entry.
    wait_converged(cluster, cluster.ids().len(), LONG);
    read.output.as_deref().unwrap_or_default().to_owned()
}

/// Collects receipts after the cluster converged: answers already sent arrive at once; a
/// receipt still waiting now has an unknown outcome.
fn settle(history: &mut History, receipts: Vec<(String, Receipt<KvOutput>)>) {
    for (value, mut receipt) in receipts {
        history.record(value, receipt.wait(ms(20)));
    }
}

/// The running leader whose term is the highest any running node has seen, if any.
fn current_leader(cluster: &Cluster<Recorder>) -> Option<NodeId> {
    let statuses = cluster.statuses();
    assert_one_leader_per_term(&statuses);
    let top = statuses.iter().map(|s| s.core.term).max()?;
    statuses.iter().find(|s| s.core.role == Role::Leader && s.core.term == top).map(|s| s.core.id)
}

#[test]
fn agreement_on_an_unreliable_network() {
    let _serial = serial();
    let (_, seed) = seeded_rng("agreement_on_an_unreliable_network");
    let (cluster, records) = recording_cluster(fast_config(seed), 5);
    cluster.set_faults(unreliable()).expect("valid faults");

    let mut history = History::default();
    let mut expected = String::new();
    for i in 0..25 {
        let value = token(format!("u{i}"));
        expected.push_str(&value);
        let result = cluster.propose(append(KEY, &value));
        let output = result.as_ref().map(|a| a.output.clone());
        assert_eq!(
            output,
            Ok(Some(expected.as_str().into())),
            "write {i} applied exactly once, in order"
        );
        history.record(value, result);
    }

    let final_value = heal_and_read(&cluster, &mut history);
    expected.push_str(&token("last"));
    assert_eq!(final_value, expected);
    history.check(&final_value, &records, &cluster.ids());
    cluster.shutdown();
}

#[test]
fn figure_8_unreliable() {
    let _serial = serial();
    let (mut rng, seed) = seeded_rng("figure_8_unreliable");
    let (cluster, records) = recording_cluster(fast_config(seed), 5);
    cluster.set_faults(unreliable()).expect("valid faults");
    let mut history = History::default();
    let mut receipts = Vec::new();
    let mut next = 0;

    for _round in 0..16 {
        wait_until(LONG, "a leader", || {
            current_leader(&cluster).ok_or_else(|| describe(&cluster.statuses()))
        });
        // Proposals to every running node: the leader appends, the others refuse.
        for id in running(&cluster) {
            let handle = cluster.node(id).expect("running");
            for _ in 0..rng.random_range(1..4) {
                let value = token(format!("f{next}"));
                next += 1;
                match handle.propose_async(append(KEY, &value)) {
                    Ok(receipt) => receipts.push((value, receipt)),
                    Err(e) => history.record(value, Err(e)),
                }
            }
        }
        pause(&mut rng);
        if let Some(leader) = current_leader(&cluster) {
            cluster.kill(leader).expect("kill the leader");
        }
        let dead: Vec<NodeId> =
            cluster.ids().into_iter().filter(|&id| !cluster.is_running(id)).collect();
        if !dead.is_empty() && (running(&cluster).len() < 3 || rng.random_bool(0.3)) {
            cluster.restart(dead[rng.random_range(0..dead.len())]).expect("restart");
        }
    }

    let final_value = heal_and_read(&cluster, &mut history);
    settle(&mut history, receipts);
    println!("figure 8: {}", history.summary());
    history.check(&final_value, &records, &cluster.ids());
    cluster.shutdown();
}

/// A churn client: proposes unique values until told to stop, through the node it believes
/// leads. Each value is proposed once, whatever happens, so the history stays exact.
fn churn_client(
    client: usize,
    cluster: Arc<Mutex<Cluster<Recorder>>>,
    stop: Arc<AtomicBool>,
) -> History {
    let mut history = History::default();
    let mut handle: Option<NodeHandle<Recorder>> = None;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(node) = handle.clone() else {
            let cluster = cluster.lock().expect("cluster lock");
            handle = current_leader(&cluster).and_then(|id| cluster.node(id).ok());
            drop(cluster);
            if handle.is_none() {
                std::thread::sleep(ms(10)); // no leader now: back off, then look again
            }
            continue;
        };
        let value = token(format!("c{client}-{n}"));
        n += 1;
        let result = node.propose(append(KEY, &value), ms(1000));
        if result.is_err() {
            handle = None;
        }
        history.record(value, result);
    }
    history
}

#[test]
fn churn_with_concurrent_clients() {
    let _serial = serial();
    let (mut rng, seed) = seeded_rng("churn_with_concurrent_clients");
    let (cluster, records) = recording_cluster(fast_config(seed), 5);
    let ids = cluster.ids();
    let cluster = Arc::new(Mutex::new(cluster));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (cluster, stop) = (Arc::clone(&cluster), Arc::clone(&stop));
            std::thread::spawn(move || churn_client(c, cluster, stop))
        })
        .collect();

    for _ in 0..30 {
        std::thread::sleep(ms(rng.random_range(20..120))); // the next fault's moment
        let cluster = cluster.lock().expect("cluster lock");
        let up = running(&cluster);
        let down: Vec<NodeId> = ids.iter().copied().filter(|id| !up.contains(id)).collect();
        match rng.random_range(0..20) {
            0..5 if up.len() > 2 => {
                let victim = up[rng.random_range(0..up.len())];
                println!("kill {victim}");
                cluster.kill(victim).expect("kill");
            }
            5..10 if !down.is_empty() => {
                let id = down[rng.random_range(0..down.len())];
                println!("restart {id}");
                cluster.restart(id).expect("restart");
            }
            10..15 => {
                // A random minority, often with the leader in it.
                let mut side: Vec<NodeId> = ids.clone();
                side.retain(|_| rng.random_bool(0.3));
                if let Some(leader) = current_leader(&cluster).filter(|_| rng.random_bool(0.5)) {
                    side.retain(|&id| id != leader);
                    side.insert(0, leader);
                    side.truncate(2);
                }
                println!("partition {side:?}");
                cluster.partition(&[side]).expect("partition");
            }
            15..17 => {
                println!("unreliable network");
                cluster.set_faults(unreliable()).expect("faults");
            }
            _ => {
                println!("heal and clear faults");
                cluster.heal();
                cluster.clear_faults();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut history = History::default();
    for client in clients {
        history.writes.extend(client.join().expect("client panicked").writes);
    }

    let cluster = Arc::try_unwrap(cluster)
        .ok()
        .expect("clients are done")
        .into_inner()
        .expect("cluster lock");
    let final_value = heal_and_read(&cluster, &mut history);
    println!("churn: {}", history.summary());
    history.check(&final_value, &records, &ids);
    cluster.shutdown();
}

/// Proposes through whichever of `among` leads, retrying only refusals that prove the command
/// was never applied.
fn propose_among(
    cluster: &Cluster<Recorder>,
    among: &[NodeId],
    command: KvCommand,
) -> Applied<KvOutput> {
    wait_until(LONG, "a leader among the majority to apply a write", || {
        let statuses: Vec<_> =
            cluster.statuses().into_iter().filter(|s| among.contains(&s.core.id)).collect();
        let leader = statuses.iter().find(|s| s.core.role == Role::Leader).map(|s| s.core.id);
        let handle = cluster.node(leader.ok_or_else(|| describe(&statuses))?).expect("running");
        match handle.propose(command.clone(), LONG) {
            Ok(applied) => Ok(applied),
            Err(e @ (Error::NotLeader { .. } | Error::ProposalDropped { .. })) => {
                Err(e.to_string())
            }
            Err(e) => panic!("{command:?}: outcome unknown in a healthy majority: {e}"),
        }
    })
}

/// Isolates the leader and has it append `count` proposals it can never commit. Retries if it
/// stepped down (CheckQuorum) before it saw them; returns it with its appended receipts.
fn isolate_leader_with_proposals(
    cluster: &Cluster<Recorder>,
    history: &mut History,
    count: usize,
) -> (NodeId, Vec<(String, Receipt<KvOutput>)>) {
    for attempt in 0..5 {
        let agreed = wait_for_agreement(cluster, LONG);
        let old = cluster.node(agreed.leader).expect("leader handle");
        cluster.isolate(agreed.leader).expect("isolate");
        let mut appended = Vec::new();
        for i in 0..count {
            let value = token(format!("old{attempt}-{i}"));
            let mut receipt = old.propose_async(append(KEY, &value)).expect("sent");
            match receipt.position(LONG) {
                Ok((_, term)) => {
                    assert_eq!(term, agreed.term);
                    appended.push((value, receipt));
                }
                Err(e) => history.record(value, Err(e)),
            }
        }
        if !appended.is_empty() {
            return (agreed.leader, appended);
        }
        cluster.heal();
    }
    panic!("the isolated leader never appended a proposal");
}

#[test]
fn old_leader_partitioned_away_then_rejoining() {
    let _serial = serial();
    let (_, seed) = seeded_rng("old_leader_partitioned_away_then_rejoining");
    let (cluster, records) = recording_cluster(fast_config(seed), 5);
    let mut history = History::default();
    for i in 0..5 {
        let value = token(format!("a{i}"));
        let result = cluster.propose(append(KEY, &value));
        history.record(value, result);
    }
    let before = wait_for_agreement(&cluster, LONG);

    let (old, stranded) = isolate_leader_with_proposals(&cluster, &mut history, 3);
    let majority: Vec<NodeId> = cluster.ids().into_iter().filter(|&id| id != old).collect();
    let mut new_leader_term = None;
    for i in 0..10 {
        let value = token(format!("b{i}"));
        let applied = propose_among(&cluster, &majority, append(KEY, &value));
        new_leader_term = Some(applied.term);
        history.record(value, Ok(applied));
    }
    assert!(new_leader_term > Some(before.term), "the majority elected a leader in a later term");

    cluster.heal();
    wait_converged(&cluster, 5, LONG);
    for (value, mut receipt) in stranded {
        // The old leader applied the new leader's entries at those indexes: its own are gone.
        let result = receipt.wait(LONG);
        assert!(matches!(result, Err(Error::ProposalDropped { .. })), "{value}: {result:?}");
        history.record(value, result);
    }
    let old_status = cluster.status(old).expect("old leader status");
    assert_ne!(old_status.core.role, Role::Leader);
    assert!(old_status.core.term > before.term);

    let final_value = heal_and_read(&cluster, &mut history);
    assert!(!final_value.contains("old"), "an uncommitted entry survived: {final_value}");
    history.check(&final_value, &records, &cluster.ids());
    cluster.shutdown();
}

#[test]
fn long_reordering_with_duplicates() {
    let _serial = serial();
    let (_, seed) = seeded_rng("long_reordering_with_duplicates");
    // Round trips reach 600 ms, so elections need timeouts above that to finish.
    let (cluster, records) = recording_cluster(roomy_config(seed), 5);
    let mut history = History::default();
    let agreed = wait_for_agreement(&cluster, LONG);
    let faults =
        NetworkFaults { duplicate: 0.1, delay: ms(0)..ms(300), ..NetworkFaults::default() };
    cluster.set_faults(faults).expect("valid faults");

    let started = Instant::now();
    let leader = cluster.node(agreed.leader).expect("leader handle");
    let mut receipts = Vec::new();
    for i in 0..30 {
        let value = token(format!("r{i}"));
        receipts.push((value.clone(), leader.propose_async(append(KEY, &value)).expect("sent")));
    }
    for i in 0..5 {
        let value = token(format!("s{i}"));
        let result = cluster.propose(append(KEY, &value));
        assert!(result.is_ok(), "write {i} under reordering: {result:?}");
        history.record(value, result);
    }
    let elapsed = started.elapsed();

    let final_value = heal_and_read(&cluster, &mut history);
    settle(&mut history, receipts);
    println!("reordering: {} in {elapsed:?}", history.summary());
    history.check(&final_value, &records, &cluster.ids());
    cluster.shutdown();
}

/// The statuses of `among`, or a description of who did not answer.
fn statuses_of(cluster: &Cluster<Recorder>, among: &[NodeId]) -> Result<Vec<NodeStatus>, String> {
    let all = cluster.statuses();
    assert_one_leader_per_term(&all);
    let statuses: Vec<NodeStatus> =
        all.into_iter().filter(|s| among.contains(&s.core.id)).collect();
    if statuses.len() != among.len() {
        return Err(format!("expected {among:?} to answer: {}", describe(&statuses)));
    }
    Ok(statuses)
}

/// Waits until every node of `among` follows one leader in one term (the others may not).
fn wait_agreement_among(cluster: &Cluster<Recorder>, among: &[NodeId]) -> Agreement {
    wait_until(LONG, &format!("{among:?} to agree on one leader"), || {
        agreement(statuses_of(cluster, among)?)
    })
}

fn others(cluster: &Cluster<Recorder>, except: &[NodeId]) -> Vec<NodeId> {
    cluster.ids().into_iter().filter(|id| !except.contains(id)).collect()
}

fn write_among(
    cluster: &Cluster<Recorder>,
    among: &[NodeId],
    history: &mut History,
    tag: &str,
) -> Applied<KvOutput> {
    let value = token(tag);
    let applied = propose_among(cluster, among, append(KEY, &value));
    history.record(value, Ok(applied.clone()));
    applied
}

#[test]
fn a_mute_leader_is_replaced_while_it_still_hears_everyone() {
    let _serial = serial();
    let (_, seed) = seeded_rng("a_mute_leader_is_replaced_while_it_still_hears_everyone");
    let (cluster, records) = recording_cluster(fast_config(seed), 5);
    let mut history = History::default();
    write_among(&cluster, &cluster.ids(), &mut history, "before");
    let before = wait_for_agreement(&cluster, LONG);
    let old = before.leader;

    // One-way cuts: the old leader's messages are lost, everyone else's still reach it.
    for to in others(&cluster, &[old]) {
        cluster.cut(old, to).expect("known nodes");
    }
    let majority = others(&cluster, &[old]);
    let applied = write_among(&cluster, &majority, &mut history, "after");
    assert!(applied.term > before.term, "the others elected a leader in a later term");
    // The old leader hears the new leader, so it follows it in its term: all five agree.
    let now = wait_for_agreement(&cluster, LONG);
    assert_ne!(now.leader, old, "a leader nobody hears cannot lead");
    assert!(now.term > before.term);

    for to in others(&cluster, &[old]) {
        cluster.restore(old, to).expect("known nodes");
    }
    assert_eq!(cluster.blocked_links(), vec![]);
    let final_value = heal_and_read(&cluster, &mut history);
    history.check(&final_value, &records, &cluster.ids());
    cluster.shutdown();
}

#[test]
fn a_deaf_leader_steps_down_and_the_others_elect_a_new_one() {
    let _serial = serial();
    let (_, seed) = seeded_rng("a_deaf_leader_steps_down_and_the_others_elect_a_new_one");
    let config = fast_config(seed);
    assert!(config.check_quorum && config.pre_vote, "this scenario relies on both");
    let (cluster, records) = recording_cluster(config, 5);
    let mut history = History::default();
    let before = wait_for_agreement(&cluster, LONG);
    let old = before.leader;

    // The old leader still sends (its heartbeats arrive) but hears no acknowledgement:
    // CheckQuorum makes it step down, and only then do the others time out and elect.
    cluster.deafen(old).expect("known node");
    let majority = others(&cluster, &[old]);
    let new = wait_agreement_among(&cluster, &majority);
    assert!(new.term > before.term);
    let applied = write_among(&cluster, &majority, &mut history, "deaf");
    let deaf = cluster.status(old).expect("still running");
    let seen = describe(std::slice::from_ref(&deaf));
    assert_ne!(deaf.core.role, Role::Leader, "CheckQuorum: {seen}");
    // It heard nothing since: not the new term, not the write (and pre-vote kept its term).
    assert_eq!(deaf.core.term, before.term, "{seen}");
    assert!(deaf.core.last_log_index < applied.index, "{seen}");

    cluster.connect(old).expect("known node");
    let all = wait_for_agreement(&cluster, LONG);
    assert_eq!(all.term, applied.term, "rejoining did not disrupt the new leader");
    let final_value = heal_and_read(&cluster, &mut history);
    history.check(&final_value, &records, &cluster.ids());
    cluster.shutdown();
}

#[test]
fn disconnect_and_connect_compose_node_by_node() {
    let _serial = serial();
    let (_, seed) = seeded_rng("disconnect_and_connect_compose_node_by_node");
    let (cluster, records) = recording_cluster(fast_config(seed), 5);
    let mut history = History::default();
    let before = wait_for_agreement(&cluster, LONG);
    let leader = before.leader;
    let loner = others(&cluster, &[leader])[0];

    cluster.disconnect(leader).expect("known node");
    cluster.disconnect(loner).expect("known node");
    let three = others(&cluster, &[leader, loner]);
    let applied = write_among(&cluster, &three, &mut history, "three");
    assert!(applied.term > before.term, "three of five elect a leader");

    cluster.connect(leader).expect("known node");
    let loner_links: Vec<(NodeId, NodeId)> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != loner)
        .flat_map(|id| [(id, loner), (loner, id)])
        .collect();
    let mut blocked = cluster.blocked_links();
    blocked.sort();
    let mut expected = loner_links;
    expected.sort();
    assert_eq!(blocked, expected, "only the loner is still cut off, from the old leader too");

    let four = others(&cluster, &[loner]);
    let applied = write_among(&cluster, &four, &mut history, "four");
    wait_agreement_among(&cluster, &four);
    wait_until(LONG, "the old leader to apply the write made without it", || {
        let s = cluster.status(leader).map_err(|e| e.to_string())?;
        (s.core.last_applied >= applied.index).then_some(()).ok_or_else(|| describe(&[s]))
    });
    let lonely = cluster.status(loner).expect("running");
    assert!(lonely.core.last_log_index < applied.index, "{}", describe(&[lonely]));

    cluster.connect(loner).expect("known node");
    assert_eq!(cluster.blocked_links(), vec![]);
    let final_value = heal_and_read(&cluster, &mut history);
    history.check(&final_value, &records, &cluster.ids());
    cluster.shutdown();
}

#[test]
fn link_faults_hit_one_direction_and_one_kind_of_message() {
    let _serial = serial();
    let (_, seed) = seeded_rng("link_faults_hit_one_direction_and_one_kind_of_message");
    let (cluster, records) = recording_cluster(fast_config(seed), 5);
    let mut history = History::default();
    let before = wait_for_agreement(&cluster, LONG);
    let followers = others(&cluster, &[before.leader]);
    let (starved, fed) = (followers[0], followers[1]);

    // Into `starved`, every request is lost (its replies still arrive); into `fed`, every reply
    // is lost, which a follower never needs. Their own messages out are untouched.
    let lose_requests = NetworkFaults { drop_requests: 1.0, ..NetworkFaults::default() };
    let lose_replies = NetworkFaults { drop_replies: 1.0, ..NetworkFaults::default() };
    for from in others(&cluster, &[starved]) {
        cluster.set_link_faults(from, starved, lose_requests.clone()).expect("valid");
    }
    for from in others(&cluster, &[fed]) {
        cluster.set_link_faults(from, fed, lose_replies.clone()).expect("valid");
    }
    let frozen = cluster.status(starved).expect("running").core.last_log_index;
    let mut last = None;
    for i in 0..5 {
        last = Some(write_among(&cluster, &cluster.ids(), &mut history, &format!("l{i}")));
    }
    let last = last.expect("five writes").index;
    wait_until(LONG, "the follower that loses only replies to keep up", || {
        let s = cluster.status(fed).map_err(|e| e.to_string())?;
        (s.core.commit_index >= last).then_some(()).ok_or_else(|| describe(&[s]))
    });
    let s = cluster.status(starved).expect("running");
    let seen = describe(std::slice::from_ref(&s));
    assert_eq!(s.core.last_log_index, frozen, "no AppendEntries reached it: {seen}");

    for from in others(&cluster, &[starved]) {
        cluster.clear_link_faults(from, starved).expect("known");
    }
    for from in others(&cluster, &[fed]) {
        cluster.clear_link_faults(from, fed).expect("known");
    }
    wait_until(LONG, "the starved follower to catch up once its links are clean", || {
        let s = cluster.status(starved).map_err(|e| e.to_string())?;
        (s.core.commit_index >= last).then_some(()).ok_or_else(|| describe(&[s]))
    });
    let final_value = heal_and_read(&cluster, &mut history);
    history.check(&final_value, &records, &cluster.ids());
    cluster.shutdown();
}

#[test]
fn messages_held_for_seconds_arrive_terms_late_without_harm() {
    let _serial = serial();
    let (_, seed) = seeded_rng("messages_held_for_seconds_arrive_terms_late_without_harm");
    // Election timeouts above ordinary round trips; the held messages come seconds later.
    let (cluster, records) = recording_cluster(roomy_config(seed), 5);
    let mut history = History::default();
    let faults = NetworkFaults {
        long_hold: 0.1,
        long_hold_delay: ms(1000)..ms(3000),
        ..NetworkFaults::default()
    };
    cluster.set_faults(faults).expect("valid faults");

    // Three leaders in a row, each left with proposals in flight: messages of earlier terms
    // are still held while later terms begin.
    let mut receipts = Vec::new();
    let mut term = wait_for_agreement(&cluster, LONG).term;
    for round in 0..3 {
        let leader = wait_for_agreement(&cluster, LONG).leader;
        let handle = cluster.node(leader).expect("running");
        for i in 0..3 {
            let value = token(format!("h{round}-{i}"));
            receipts
                .push((value.clone(), handle.propose_async(append(KEY, &value)).expect("sent")));
        }
        cluster.disconnect(leader).expect("known node");
        let applied =
            write_among(&cluster, &others(&cluster, &[leader]), &mut history, &format!("n{round}"));
        assert!(applied.term > term, "a new leader in round {round}");
        term = applied.term;
        cluster.connect(leader).expect("known node");
    }
    assert!(cluster.messages_long_held() > 0, "the long hold held some messages");

    // Clearing the faults does not recall what is already held: it arrives late, into a
    // cluster that has moved on, and must change nothing.
    cluster.clear_faults();
    wait_until(LONG, "every held message to arrive", || {
        let held = cluster.messages_in_flight();
        (held == 0).then_some(()).ok_or_else(|| format!("{held} messages still held"))
    });
    let final_value = heal_and_read(&cluster, &mut history);
    settle(&mut history, receipts);
    println!("long hold: {} held; {}", cluster.messages_long_held(), history.summary());
    history.check(&final_value, &records, &cluster.ids());
    let digests: Vec<u64> = cluster.statuses().iter().map(|s| s.digest).collect();
    assert_eq!(digests.len(), 5);
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "state machines differ: {digests:x?}");
    cluster.shutdown();
}

#[test]
fn every_fault_switch_refuses_bad_settings_with_a_typed_error() {
    let _serial = serial();
    let (cluster, _records) = recording_cluster(fast_config(3), 3);
    let (n1, n2, ghost) = (NodeId(1), NodeId(2), NodeId(9));
    let unknown = Err(FaultError::UnknownNode(ghost));
    assert_eq!(cluster.cut(n1, ghost), unknown);
    assert_eq!(cluster.cut(ghost, n1), unknown);
    assert_eq!(cluster.restore(n1, ghost), unknown);
    assert_eq!(cluster.disconnect(ghost), unknown);
    assert_eq!(cluster.connect(ghost), unknown);
    assert_eq!(cluster.deafen(ghost), unknown);
    assert_eq!(cluster.mute(ghost), unknown);
    assert_eq!(cluster.set_link_faults(ghost, n1, NetworkFaults::default()), unknown);
    assert_eq!(cluster.clear_link_faults(n1, ghost), unknown);
    assert_eq!(cluster.cut(n1, n1), Err(FaultError::SelfLink(n1)));
    assert_eq!(
        cluster.set_link_faults(n2, n2, NetworkFaults::default()),
        Err(FaultError::SelfLink(n2))
    );

    let faults = |f: fn(&mut NetworkFaults)| {
        let mut faults = NetworkFaults::default();
        f(&mut faults);
        faults
    };
    let refused = [
        (faults(|f| f.long_hold = 1.5), FaultError::Probability { field: "long_hold", value: 1.5 }),
        (
            faults(|f| f.duplicate_requests = -0.1),
            FaultError::Probability { field: "duplicate_requests", value: -0.1 },
        ),
        (
            faults(|f| f.delay_requests = ms(10)..ms(5)),
            FaultError::InvertedRange { field: "delay_requests", min: ms(10), max: ms(5) },
        ),
        (
            faults(|f| f.delay_replies = ms(3)..ms(1)),
            FaultError::InvertedRange { field: "delay_replies", min: ms(3), max: ms(1) },
        ),
        (
            faults(|f| {
                f.long_hold = 0.5;
                f.long_hold_delay = ms(3000)..ms(1000);
            }),
            FaultError::InvertedRange { field: "long_hold_delay", min: ms(3000), max: ms(1000) },
        ),
        (faults(|f| f.long_hold = 0.5), FaultError::EmptyRange { field: "long_hold_delay" }),
    ];
    for (bad, error) in refused {
        assert_eq!(cluster.set_faults(bad.clone()), Err(error.clone()));
        assert_eq!(cluster.set_link_faults(n1, n2, bad), Err(error.clone()));
        let field = match &error {
            FaultError::Probability { field, .. }
            | FaultError::InvertedRange { field, .. }
            | FaultError::EmptyRange { field } => *field,
            other => panic!("not a setting error: {other:?}"),
        };
        assert!(error.to_string().contains(field), "the message names {field}: {error}");
    }
    match cluster.set_faults(faults(|f| f.duplicate_replies = f64::NAN)) {
        Err(FaultError::Probability { field: "duplicate_replies", value }) => {
            assert!(value.is_nan())
        }
        other => panic!("NaN is not a probability: {other:?}"),
    }
    let edges = faults(|f| {
        f.long_hold = 1.0;
        f.long_hold_delay = ms(1000)..ms(1000);
        f.duplicate_replies = 0.0;
    });
    assert_eq!(cluster.set_faults(edges), Ok(()), "a fixed hold and 0 and 1 are accepted");
    assert!(FaultError::SelfLink(n1).to_string().contains("itself"));
    assert_eq!(cluster.blocked_links(), vec![], "refused cuts changed nothing");
    cluster.reset_network();
    cluster.shutdown();
}

/// Messages a fault delays wait in the router, bounded in bytes per directed link as an inbox
/// is (`Config::max_inbox_bytes`, 512 bytes here): with every message held 300-500 ms, the
/// heartbeats, elections and appends of twenty proposals overflow each link's budget, the
/// excess is dropped and counted, and what is held never exceeds the links' budgets. Once the
/// delays are cleared, the cluster agrees and commits again, and the history checks out.
#[test]
fn delayed_messages_are_bounded_in_bytes_per_link() {
    let _serial = serial();
    let (_, seed) = seeded_rng("delayed_messages_are_bounded_in_bytes_per_link");
    let budget = 512;
    let config = ferraft::Config {
        max_append_bytes: 256,
        max_inflight_bytes: budget,
        snapshot_chunk_bytes: 256,
        snapshot_chunks_in_flight: 1,
        max_inbox_bytes: budget,
        ..fast_config(seed)
    };
    let (cluster, records) = recording_cluster(config, 3);
    let mut history = History::default();
    let leader = wait_for_agreement(&cluster, LONG).leader;
    let faults = NetworkFaults { delay: ms(300)..ms(500), ..NetworkFaults::default() };
    cluster.set_faults(faults).expect("valid faults");
    let handle = cluster.node(leader).expect("running");
    let receipts: Vec<_> = (0..20)
        .filter_map(|i| {
            let value = token(format!("d{i}"));
            handle.propose_async(append(KEY, &value)).ok().map(|r| (value, r))
        })
        .collect();
    let links = 3 * 2;
    let (mut most, mut ticks) = (0, 0);
    let dropped = wait_until(LONG, "a delayed message dropped for its link's bytes", || {
        let held = cluster.bytes_in_flight();
        most = most.max(held);
        ticks += 1;
        assert!(held <= links * budget, "{held} bytes held by {links} links of {budget}");
        match cluster.messages_dropped_while_held() {
            0 => Err(format!("{held} bytes held, none dropped")),
            n => Ok(n),
        }
    });
    assert!(most > 0, "nothing was held");
    cluster.clear_faults();
    wait_until(LONG, "every held message to arrive", || {
        let held = (cluster.messages_in_flight(), cluster.bytes_in_flight());
        (held == (0, 0)).then_some(()).ok_or_else(|| format!("{held:?} messages, bytes held"))
    });
    let final_value = heal_and_read(&cluster, &mut history);
    settle(&mut history, receipts);
    println!("held at most {most} bytes over {ticks} polls; {dropped} dropped for bytes");
    history.check(&final_value, &records, &cluster.ids());
}
