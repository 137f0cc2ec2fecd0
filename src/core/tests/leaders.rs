//! Rules for leaders (Figure 2: LEAD-1..LEAD-4) and the subtle points about them: the no-op
//! (SUB-4), stale and reordered replies (SUB-5), persistence order (SUB-8), counting (SUB-9).

use super::harness::*;

/// n1 just won term 1 in {n1, n2, n3} with n2's vote; nothing it sent has arrived yet.
fn fresh_leader() -> Node {
    let mut c = boot(1).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    assert_eq!(c.role(), Role::Leader);
    c
}

#[test]
fn lead1_new_leader_sends_append_entries_to_every_peer_at_once() {
    let mut c = boot(1).start();
    c.campaign();
    let acts = c.recv(vote(2, 1, 1, true));
    assert_eq!(
        trace(&acts),
        [
            "persist log from i1",
            "n1->n2 t1 AppendEntries prev=i0@t0 entries=[t1:noop] commit=i0",
            "n1->n3 t1 AppendEntries prev=i0@t0 entries=[t1:noop] commit=i0",
        ]
    );
}

#[test]
fn lead1_leader_sends_heartbeats_every_heartbeat_interval() {
    let mut net = Net::new(3);
    net.elect(1);
    let leader = net.node_mut(1);
    for _ in 0..3 {
        assert!(leader.tick(4).is_empty());
        assert_eq!(
            trace(&leader.tick(1)),
            [
                "n1->n2 t1 AppendEntries prev=i1@t1 entries=[] commit=i1",
                "n1->n3 t1 AppendEntries prev=i1@t1 entries=[] commit=i1",
            ]
        );
    }
}

#[test]
fn lead2_proposal_on_the_leader_is_appended_and_applied_once_committed() {
    let mut net = Net::new(3);
    net.elect(1);
    let acts = net.propose(1, &[7, 8]);
    assert_eq!(trace(&acts)[..2], ["persist log from i2", "proposed i2 x2 t1"]);
    assert!(net.node(1).applied.is_empty());
    net.deliver_all();
    assert_eq!(net.node(1).applied, [(LogIndex(2), 7), (LogIndex(3), 8)]);
}

#[test]
fn lead2_proposal_on_a_follower_is_rejected_with_the_known_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    let acts = net.propose(2, &[7]);
    assert_eq!(acts, [Action::Rejected(Error::NotLeader { leader_hint: Some(NodeId(1)) })]);
    assert_eq!(net.node(2).status().last_log_index, LogIndex(1));
}

#[test]
fn lead2_proposal_without_a_known_leader_is_rejected_without_a_hint() {
    let mut f = boot(2).start();
    assert_eq!(f.propose(&[7]), [Action::Rejected(Error::NotLeader { leader_hint: None })]);
}

#[test]
fn lead3_pipelines_up_to_max_inflight_batches_of_max_entries_per_append() {
    let config = Config { max_inflight: 2, max_entries_per_append: 2, ..test_config() };
    let mut net = Net::with_config(3, config);
    net.elect(1);
    let leader = net.node_mut(1);
    // Seven commands at i2..=i8: two batches of two go out without waiting, then the window
    // is full.
    let acts = leader.propose(&[1, 2, 3, 4, 5, 6, 7]);
    let batches = |acts: &[Action<u64>]| -> Vec<(u64, usize)> {
        let sent = appends_to(acts, 2);
        sent.iter().map(|ae| (ae.prev_log_index.0, ae.entries.len())).collect()
    };
    assert_eq!(batches(&acts), [(1, 2), (3, 2)]);
    // Each acknowledgement frees one slot for the next batch.
    assert_eq!(batches(&leader.recv(ae_ok(2, 1, 1, 3))), [(5, 2)]);
    assert_eq!(batches(&leader.recv(ae_ok(2, 1, 1, 5))), [(7, 1)]);
}

#[test]
fn lead3a_success_advances_match_index_and_next_index() {
    let mut c = fresh_leader();
    c.recv(ae_ok(2, 1, 1, 1));
    assert_eq!(c.commit(), 1, "matchIndex[n2] = 1 counts towards the majority");
    let acts = c.propose(&[9]);
    assert_eq!(
        sent(&acts),
        ["n1->n2 t1 AppendEntries prev=i1@t1 entries=[t1:9] commit=i1"],
        "nextIndex[n2] = 2; n3 is still being probed and gets nothing new"
    );
}

#[test]
fn lead3b_rejection_moves_next_index_back_and_retries() {
    let mut net = Net::of([
        boot(1).term(2).log(&[1, 1, 1]).start(),
        boot(2).term(2).log(&[1, 1, 2, 2]).start(),
        boot(3).log(&[1, 1, 1]).start(),
    ]);
    net.campaign(1);
    let delivered = net.deliver_all();
    assert_eq!(
        replication_trace(&delivered, 1, 2),
        [
            "n1->n2 t3 AppendEntries prev=i3@t1 entries=[t3:noop] commit=i0",
            "n2->n1 t3 AppendEntriesReply reject at=i3 conflict=t2@i3 last=i4",
            "n1->n2 t3 AppendEntries prev=i2@t1 entries=[t1:103 t3:noop] commit=i0",
            "n2->n1 t3 AppendEntriesReply ok match=i4",
        ]
    );
    assert_eq!(net.node(2).log_terms(), [1, 1, 1, 3]);
}

#[test]
fn lead4_sub9_current_term_entry_commits_once_on_a_majority_counting_the_leader() {
    let mut c = boot(1).voters(&[1, 2, 3, 4, 5]).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(vote(3, 1, 1, true));
    let acts = c.recv(ae_ok(2, 1, 1, 1));
    assert_eq!((trace(&acts), c.commit()), (vec![], 0), "2 of 5 is not a majority");
    let acts = c.recv(ae_ok(3, 1, 1, 1));
    assert_eq!((trace(&acts), c.commit()), (vec!["apply i1..=i1".to_string()], 1));
}

/// n1 leads term 3 with [1:1, 2:2]; n2 holds [1:1]; n3 never hears from n1. One entry per
/// AppendEntries, so n1 learns that n2 has i2 (term 2) before n2 has i3 (term 3).
fn previous_term_entry_on_a_majority(bugs: Bugs) -> Net {
    let config = Config { max_entries_per_append: 1, ..test_config() };
    let node = |id, log: &[u64]| boot(id).term(2).log(log).config(config.clone()).start();
    let mut net = Net::of([node(1, &[1, 2]), node(2, &[1]), node(3, &[1])]).with_bugs(bugs);
    net.cut(1, 3);
    net.campaign(1);
    // NB: n2 holds the no-op's request it rejected (reorder.rs); lose it, or n2 would get
    // i3 together with i2.
    net.deliver_until(|n| n.node(2).core.held.len() == 1);
    net.node_mut(2).forget_held();
    net.deliver_until(|n| n.node(2).log_terms() == [1, 2]);
    net.deliver_next(); // n1 hears that n2 has i2
    assert_eq!(net.node(1).commit(), 0, "LEAD-4: i2 is on n1 and n2 but from term 2");
    net
}

#[test]
fn lead4_sub1_previous_term_entry_not_committed_by_counting() {
    let mut net = previous_term_entry_on_a_majority(Bugs::default());
    assert!(net.node(1).applied.is_empty());
    net.deliver_all(); // i3 (term 3) reaches n2: it commits, and i2 with it
    assert_eq!(net.node(1).commit(), 3);
    assert_eq!(net.node(1).applied, [(LogIndex(1), 101), (LogIndex(2), 202)]);
}

#[test]
#[should_panic(expected = "LEAD-4")]
fn lead4_check_catches_the_commit_previous_terms_bug() {
    previous_term_entry_on_a_majority(Bugs { commit_previous_terms: true, ..Bugs::default() });
}

#[test]
fn sub4_new_leader_appends_a_noop_that_never_reaches_the_state_machine_as_a_command() {
    let mut net = Net::new(3);
    net.elect(1);
    net.run(5); // the heartbeat carries the commit index
    for id in 1..=3 {
        let node = net.node(id);
        assert_eq!(node.entries(), [Entry { term: Term(1), payload: Payload::Noop }], "n{id}");
        assert!(trace(&node.history).contains(&"apply i1..=i1".to_string()), "n{id}");
        assert!(node.applied.is_empty(), "n{id}: the no-op is not a command");
    }
    net.propose(1, &[5]);
    net.run(5);
    assert!((1..=3).all(|id| net.node(id).applied == [(LogIndex(2), 5)]));
}

#[test]
fn sub5_append_reply_from_an_older_term_is_dropped() {
    let mut c = boot(1).log(&[1]).start();
    c.campaign();
    c.recv(vote(2, 1, 2, true));
    assert_eq!((c.role(), c.term()), (Role::Leader, 2));
    assert!(c.recv(ae_ok(2, 1, 1, 2)).is_empty(), "a term-1 reply claiming i2 is ignored");
    assert_eq!(c.commit(), 0);
    c.recv(ae_ok(2, 1, 2, 2));
    assert_eq!(c.commit(), 2, "the same reply in the current term counts");
}

#[test]
fn sub5_vote_reply_from_an_older_term_is_not_counted() {
    let mut c = boot(1).term(2).start();
    c.campaign();
    c.recv(vote(2, 1, 2, true));
    assert_eq!(c.role(), Role::Candidate);
    c.recv(vote(2, 1, 3, true));
    assert_eq!(c.role(), Role::Leader);
}

#[test]
fn sub5_vote_reply_after_the_election_ended_is_ignored() {
    let mut c = boot(1).term(1).start();
    c.campaign();
    c.recv(ae(2, 1, 2)); // n2 won term 2
    assert!(c.recv(vote(3, 1, 2, true)).is_empty());
    assert_eq!(c.role(), Role::Follower);
}

#[test]
fn sub5_reply_match_index_is_prev_plus_len_of_the_request_not_the_follower_log() {
    let mut f = boot(2).term(2).log(&[1, 1, 1, 1, 1]).start();
    let acts = f.recv(ae(1, 2, 2).prev(2, 1).entries(&[1]));
    assert_eq!(sent(&acts), ["n2->n1 t2 AppendEntriesReply ok match=i3"]);
}

#[test]
fn sub5_match_index_stays_monotonic_under_reordered_replies() {
    let mut net = Net::new(5);
    net.elect(1);
    net.isolate(4);
    net.isolate(5);
    net.propose(1, &[7]); // i2
    net.propose(1, &[8]); // i3, pipelined
    for m in net.take(|m| m.to == NodeId(2)) {
        net.deliver(m);
    }
    let mut replies = net.take(|m| m.from == NodeId(2));
    assert_eq!(replies.len(), 2);
    replies.reverse(); // "match i3" arrives before "match i2"
    for m in replies {
        net.deliver(m);
    }
    net.deliver_all(); // n3 acknowledges i3
    assert_eq!(net.node(1).commit(), 3, "n1, n2, n3 hold i3 (n2's match must not fall to i2)");
}

#[test]
fn sub8_follower_persists_term_and_entries_before_replying_and_applying() {
    let mut f = boot(2).term(1).start();
    let acts = f.recv(ae(1, 2, 2).entries(&[1, 2]).commit(2));
    assert_eq!(
        trace(&acts),
        [
            "persist t2 vote=-",
            "persist log from i1",
            "n2->n1 t2 AppendEntriesReply ok match=i2",
            "apply i1..=i2",
        ]
    );
}

#[test]
fn sub8_leader_persists_new_entries_before_sending_them() {
    let mut net = Net::new(3);
    net.elect(1);
    let acts = net.propose(1, &[4]);
    assert_eq!(
        trace(&acts),
        [
            "persist log from i2",
            "proposed i2 x1 t1",
            "n1->n2 t1 AppendEntries prev=i1@t1 entries=[t1:4] commit=i1",
            "n1->n3 t1 AppendEntries prev=i1@t1 entries=[t1:4] commit=i1",
        ]
    );
}

#[test]
fn sub8_every_step_of_a_busy_cluster_keeps_the_contract() {
    // The harness checks persist-before-send/apply and disk == memory on every step.
    let mut net = Net::new(5);
    net.elect(1);
    for c in 0..10 {
        net.propose(1, &[c]);
        net.run(2);
    }
    net.crash(1);
    net.run(100);
    let leader = net.leader().expect("a new leader after the crash");
    net.propose(leader, &[10]);
    net.restart(1);
    net.run(20);
    let want: Vec<u64> = (0..=10).collect();
    for id in 2..=5 {
        let applied: Vec<u64> = net.node(id).applied.iter().map(|&(_, c)| c).collect();
        assert_eq!(applied, want, "n{id}");
    }
    assert_eq!(net.node(1).entries(), net.node(leader).entries());
}

#[test]
#[should_panic(expected = "SUB-8 PersistEntries after a send")]
fn sub8_harness_rejects_a_send_before_its_persist() {
    let mut n = boot(1).start();
    n.execute(&[Action::Send(vote(1, 2, 0, true)), Action::PersistEntries { from: LogIndex(1) }]);
}

#[test]
fn sub9_single_voter_elects_itself_and_commits_alone() {
    let mut n = boot(1).voters(&[1]).start();
    let acts = n.campaign();
    assert_eq!(trace(&acts), ["persist t1 vote=n1", "persist log from i1", "apply i1..=i1"]);
    let acts = n.propose(&[5]);
    assert_eq!(trace(&acts), ["persist log from i2", "proposed i2 x1 t1", "apply i2..=i2"]);
    assert_eq!(n.applied, [(LogIndex(2), 5)]);
}

#[test]
fn sub9_commit_follows_match_index_not_next_index() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, &[5]); // nextIndex moves past i2 for both peers at once (pipelining)
    assert_eq!(net.node(1).commit(), 1);
    net.deliver_all();
    assert_eq!(net.node(1).commit(), 2);
}

#[test]
fn sub9_append_entries_from_another_leader_of_the_same_term_is_dropped_as_invalid() {
    let mut net = Net::new(3);
    net.elect(1);
    let acts = net.node_mut(1).recv(ae(2, 1, 1));
    let reason = "AppendEntries from a second leader of this term";
    assert_eq!(acts, [Action::Notice(Notice::InvalidMessage { from: NodeId(2), reason })]);
    assert_eq!((net.node(1).role(), net.node(1).term()), (Role::Leader, 1));
}

#[test]
fn sub5_duplicated_or_stale_success_in_probe_mode_changes_nothing() {
    let mut c = boot(1).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1)); // n2 matched i1: Replicate
    c.propose(&[5, 6]); // i2..=i3 to n2: lost
    c.tick(5); // n2 advanced since the last heartbeat: a plain heartbeat
    let acts = c.tick(5); // nothing since: n2 stalled, back to probing from i2
    let probes: Vec<u64> = appends_to(&acts, 2).iter().map(|a| a.prev_log_index.0).collect();
    assert_eq!(probes, [1], "one probe after i1");
    let before = format!("{:?} {:?}", c.status(), c.core.progress);
    for _ in 0..3 {
        // The old acknowledgement of i1, duplicated by the network.
        let acts = c.recv(ae_ok(2, 1, 1, 1));
        assert!(acts.is_empty(), "no extra probe: {:?}", trace(&acts));
        assert_eq!(format!("{:?} {:?}", c.status(), c.core.progress), before);
    }
    // The probe's own answer still moves n2 on.
    c.recv(ae_ok(2, 1, 1, 3));
    assert_eq!(c.core.progress[&NodeId(2)].matched, LogIndex(3));
}

#[test]
fn sub5_duplicated_success_in_replicate_mode_changes_nothing() {
    let mut c = boot(1).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    c.propose(&[5, 6]);
    c.recv(ae_ok(2, 1, 1, 3));
    let before = format!("{:?} {:?}", c.status(), c.core.progress);
    for stale in [3, 1, 2] {
        assert!(c.recv(ae_ok(2, 1, 1, stale)).is_empty(), "match i{stale}");
        assert_eq!(format!("{:?} {:?}", c.status(), c.core.progress), before);
    }
}

/// n1 leads {n1, n2, n3}; n2 acknowledged i1 and i2..=i5 are pipelined to it one per message.
fn pipelining_leader() -> Node {
    let config = Config { max_entries_per_append: 1, ..test_config() };
    let mut c = boot(1).config(config).start();
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    let acts = c.propose(&[5, 6, 7, 8]);
    assert_eq!(appends_to(&acts, 2).len(), 4);
    c
}

#[test]
fn lead3b_reordered_pipeline_resends_only_the_gap_and_keeps_streaming() {
    let mut c = pipelining_leader();
    // i3 overtook i2: n2 (last i1) holds it and rejects prev=i2, then prev=i3 and prev=i4.
    let acts = c.recv(ae_reject(2, 1, 1, 2, 1));
    let prevs: Vec<u64> = appends_to(&acts, 2).iter().map(|a| a.prev_log_index.0).collect();
    assert_eq!(prevs, [1], "only i2 again (fast retransmit), not the whole window");
    let before = format!("{:?}", c.core.progress);
    for rejected in [3, 4] {
        assert!(c.recv(ae_reject(2, 1, 1, rejected, 1)).is_empty(), "the gap was resent");
    }
    c.tick(1);
    assert!(c.recv(ae_reject(2, 1, 1, 3, 1)).is_empty(), "once per gap, not once per tick");
    assert_eq!(format!("{:?}", c.core.progress), before);
    // i2 arrived: n2 replayed what it held and acknowledges i5; the window reopens.
    c.recv(ae_ok(2, 1, 1, 5));
    assert_eq!(c.core.progress[&NodeId(2)].matched, LogIndex(5));
    let acts = c.propose(&[9]);
    assert_eq!(appends_to(&acts, 2).len(), 1, "streaming on from i6");
}

#[test]
fn lead3b_a_gap_below_the_snapshot_is_answered_with_the_snapshot() {
    // The leader's log starts after a snapshot of i1..=i5; n2 is known to hold i3.
    let mut c = boot(1).offset(5, 1).log(&[1, 1]).config(fixed_timeout()).start();
    c.campaign();
    c.recv(vote(2, 1, 2, true));
    c.recv(ae_ok(2, 1, 2, 3));
    let acts = c.recv(ae_reject(2, 1, 2, 8, 3));
    assert!(appends_to(&acts, 2).is_empty(), "i4 is compacted away: {:?}", trace(&acts));
    assert!(
        sends(&acts).iter().any(|m| matches!(m.body, Body::InstallSnapshot(_))),
        "{:?}",
        trace(&acts)
    );
}

#[test]
fn sub5_rejection_older_than_the_match_index_changes_nothing() {
    let mut c = pipelining_leader();
    c.recv(ae_ok(2, 1, 1, 3));
    let before = format!("{:?} {:?}", c.status(), c.core.progress);
    // Sent when n2's log ended at i1 (prev=i3 overtook i2), delivered after "match i3".
    assert!(c.recv(ae_reject(2, 1, 1, 3, 1)).is_empty());
    assert!(c.recv(ae_reject(2, 1, 1, 4, 2)).is_empty());
    assert_eq!(format!("{:?} {:?}", c.status(), c.core.progress), before);
}

/// n1 leads {n1, n2, n3}, n2 replicating from i2; a command's size is its value.
fn leader_sized_by_value(config: Config) -> Node {
    let mut c = boot(1).config(config).start().with_sizer(|&command| command as usize);
    c.campaign();
    c.recv(vote(2, 1, 1, true));
    c.recv(ae_ok(2, 1, 1, 1));
    c
}

fn batches_to(acts: &[Action<u64>], to: u64) -> Vec<Vec<u64>> {
    let commands = |ae: &AppendEntries<u64>| -> Vec<u64> {
        let command = |e: &Entry<u64>| match e.payload {
            Payload::Command(c) => c,
            _ => 0,
        };
        ae.entries.iter().map(command).collect()
    };
    appends_to(acts, to).into_iter().map(commands).collect()
}

#[test]
fn lead3_one_append_entries_carries_at_most_max_append_bytes_but_always_one_entry() {
    let config = Config { max_append_bytes: 100, max_inflight_bytes: 1000, ..test_config() };
    let mut c = leader_sized_by_value(config);
    let acts = c.propose(&[40, 40, 40, 500, 10, 30, 70]);
    assert_eq!(
        batches_to(&acts, 2),
        [vec![40, 40], vec![40], vec![500], vec![10, 30], vec![70]],
        "the oversized command goes alone, and nothing rides with it"
    );
    assert_eq!(c.core.progress[&NodeId(2)].inflight_bytes(), 730);
}

#[test]
fn lead3_bytes_in_flight_close_the_window() {
    let config = Config { max_append_bytes: 50, max_inflight_bytes: 100, ..test_config() };
    let mut c = leader_sized_by_value(config);
    let acts = c.propose(&[30, 30, 30, 30, 30, 30]); // i2..=i7
    assert_eq!(batches_to(&acts, 2).len(), 4, "30+30+30 < 100 bytes: one more, then closed");
    assert_eq!(c.core.progress[&NodeId(2)].inflight_bytes(), 120);
    let acts = c.recv(ae_ok(2, 1, 1, 3)); // i2 and i3 acknowledged: 60 bytes in flight
    assert_eq!(batches_to(&acts, 2), [vec![30], vec![30]], "i6, then i7 closes it again");
}

#[test]
fn lead3_command_size_is_the_in_memory_size_unless_a_sizer_is_given() {
    let plain = boot(1).start();
    assert_eq!(plain.core.command_size(&12_345), std::mem::size_of::<u64>());
    let sized = boot(1).start().with_sizer(|&c| c as usize * 2);
    assert_eq!(sized.core.command_size(&21), 42);
}

/// `Config::defer_leader_sync` asks `own_sync_needed`: a leader's own sync is not needed
/// while a quorum of the other voters replicates and answered within the last tick.
#[test]
fn a_leaders_own_sync_is_needed_unless_a_quorum_of_followers_keeps_up() {
    let mut net = Net::new(3);
    net.campaign(1);
    assert!(net.node(1).core.own_sync_needed(), "a candidate always syncs");
    net.deliver_all();
    assert_eq!(net.leader(), Some(1));
    net.propose(1, &[7]);
    net.deliver_all();
    assert!(!net.node(1).core.own_sync_needed(), "both followers answered this tick");
    assert!(net.node(2).core.own_sync_needed(), "a follower always syncs");
    net.node_mut(1).tick(1);
    assert!(!net.node(1).core.own_sync_needed(), "answered within the last tick");
    net.node_mut(1).tick(1);
    assert!(net.node(1).core.own_sync_needed(), "silent for two ticks: no longer keeping up");
    // One follower answers again; the other stays silent: no quorum without the leader.
    net.propose(1, &[8]);
    while let Some(m) = net.queue.pop_front() {
        if m.to != NodeId(3) && m.from != NodeId(3) {
            net.deliver(m);
        }
    }
    assert_eq!(net.node(1).commit(), 3, "n2 and the leader's synced log commit i3");
    assert!(net.node(1).core.own_sync_needed(), "n3 never answered: n2 alone is no quorum");
}

#[test]
fn a_two_voter_leader_always_needs_its_own_sync() {
    let mut net = Net::new(2);
    net.elect(1);
    net.propose(1, &[7]);
    net.deliver_all();
    assert!(net.node(1).core.own_sync_needed(), "one follower is no quorum without the leader");
}

/// What one command of `value` bytes (as `leader_sized_by_value` sizes it) counts towards
/// `Config::max_uncommitted_bytes`: its size plus the entry's own.
fn held(value: usize) -> usize {
    value + std::mem::size_of::<Entry<u64>>()
}

fn refusals(acts: &[Action<u64>]) -> Vec<String> {
    trace(acts).into_iter().filter(|l| l.starts_with("rejected")).collect()
}

#[test]
fn lead2_a_full_uncommitted_log_refuses_proposals_until_commits_make_room() {
    let cap = 3 * held(100);
    let config = Config { max_uncommitted_bytes: cap, ..test_config() };
    let mut c = leader_sized_by_value(config); // its no-op i1 committed
    assert!(refusals(&c.propose(&[100, 100, 100])).is_empty(), "i2..=i4: exactly the cap");
    assert_eq!(c.core.uncommitted_bytes(), cap);
    let full = format!("rejected UncommittedLogFull {{ bytes: {cap}, max: {cap} }}");
    assert_eq!(refusals(&c.propose(&[1])), std::slice::from_ref(&full), "refused before appending");
    assert_eq!(c.status().last_log_index, LogIndex(4));
    c.recv(ae_ok(2, 1, 1, 3)); // i2 and i3 commit: room for two more
    assert_eq!((c.commit(), c.core.uncommitted_bytes()), (3, held(100)));
    assert!(refusals(&c.propose(&[100, 100])).is_empty());
    assert_eq!(refusals(&c.propose(&[1])), [full]);
    c.recv(ae_ok(2, 1, 1, 6));
    assert_eq!((c.commit(), c.core.uncommitted_bytes()), (6, 0));
    // Nothing uncommitted: a batch larger than the cap alone goes in (or it never would).
    assert!(refusals(&c.propose(&[5000])).is_empty());
    assert_eq!(c.core.uncommitted_bytes(), held(5000));
    let acts = c.propose(&[1]);
    assert_eq!(
        refusals(&acts),
        [format!("rejected UncommittedLogFull {{ bytes: {}, max: {cap} }}", held(5000))]
    );
}

#[test]
fn lead2_the_noop_and_configuration_entries_are_never_refused() {
    let cap = held(8); // one command (the default sizer: a u64 is 8 bytes)
    let config = Config { max_uncommitted_bytes: cap, ..test_config() };
    // Four uncommitted commands inherited from term 1: twice the cap and more.
    let mut c = boot(1).config(config).log(&[1, 1, 1, 1]).term(1).start();
    c.campaign();
    c.recv(vote(2, 1, 2, true));
    assert_eq!(c.role(), Role::Leader);
    assert_eq!(c.log_terms(), [1, 1, 1, 1, 2], "its no-op went in");
    assert_eq!(c.core.uncommitted_bytes(), 4 * cap, "what it inherited counts");
    assert_eq!(refusals(&c.propose(&[7])).len(), 1);
    c.recv(ae_ok(2, 1, 2, 5)); // the no-op commits, and with it everything before
    assert_eq!((c.commit(), c.core.uncommitted_bytes()), (5, 0));
    assert!(refusals(&c.propose(&[7])).is_empty());
    assert_eq!(refusals(&c.propose(&[8])).len(), 1, "full again");
    let acts = c.step(Input::ChangeMembership(MembershipChange::AddNode(NodeId(4))));
    assert!(refusals(&acts).is_empty(), "{:?}", trace(&acts));
    let last = c.entries().last().cloned().expect("not empty");
    assert!(matches!(last.payload, Payload::Config(_)), "the change went in: {last:?}");
    assert_eq!(c.core.uncommitted_bytes(), cap, "and counts nothing");
}

#[test]
fn lead2_a_command_counts_its_size_and_the_drivers_entry_overhead() {
    let core = boot(1).start().core.with_sizer(|&command| command as usize);
    let command = |c| Entry { term: Term(1), payload: Payload::Command(c) };
    assert_eq!(core.entry_bytes(&command(100)), held(100), "by default: the entry's own size");
    let core = core.with_entry_overhead(400); // a node driver's: the store's copy, the answer...
    assert_eq!(core.entry_bytes(&command(100)), 500);
    assert_eq!(core.entry_bytes(&Entry { term: Term(1), payload: Payload::Noop }), 0);
}

#[test]
fn lead2_the_bug_switch_appends_past_the_cap() {
    let config = Config { max_uncommitted_bytes: held(100), ..test_config() };
    let mut c = leader_sized_by_value(config);
    c.set_bugs(Bugs { ignore_uncommitted_cap: true, ..Bugs::default() });
    c.propose(&[100]);
    assert!(refusals(&c.propose(&[100, 100])).is_empty());
    assert_eq!(c.core.uncommitted_bytes(), 3 * held(100));
}
