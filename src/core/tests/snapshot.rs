//! §7 and Figure 13: InstallSnapshot's receiver rules (IS-1..8), one test each, plus the
//! leader's side: a follower behind the offset gets the snapshot, chunk by chunk.

use std::sync::Arc;

use super::*;

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index: LogIndex(index),
        term: Term(term),
        config: Arc::new(conf(&[1, 2, 3], &[])),
    }
}

fn chunk(term: u64, m: &SnapshotMeta, offset: u64, data: &[u8], done: bool) -> Message<u64> {
    let body = Body::InstallSnapshot(crate::message::InstallSnapshot {
        meta: m.clone(),
        offset,
        data: data.to_vec(),
        done,
    });
    Message { from: NodeId(1), to: NodeId(2), term: Term(term), body }
}

fn snapshot_replies(acts: &[Action<u64>]) -> Vec<(u64, u64, bool)> {
    sends(acts)
        .into_iter()
        .filter_map(|m| match &m.body {
            Body::InstallSnapshotReply(r) => Some((r.index.0, r.received, r.done)),
            _ => None,
        })
        .collect()
}

fn restores(acts: &[Action<u64>]) -> Vec<u64> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Restore(s) => Some(s.meta.index.0),
            _ => None,
        })
        .collect()
}

#[test]
fn is1_a_chunk_from_an_older_term_is_answered_and_ignored() {
    let mut n = boot(2).term(3).start();
    let acts = n.recv(chunk(2, &meta(5, 2), 0, b"abc", true));
    assert_eq!(snapshot_replies(&acts), [(5, 0, false)]);
    assert_eq!(sends(&acts)[0].term, Term(3), "the reply carries the newer term");
    assert!(restores(&acts).is_empty());
    assert_eq!(n.commit(), 0);
}

#[test]
fn is2_to_5_chunks_in_order_complete_the_snapshot_and_others_change_nothing() {
    let mut n = boot(2).term(2).start();
    let m = meta(5, 2);
    assert_eq!(snapshot_replies(&n.recv(chunk(2, &m, 0, b"ab", false))), [(5, 2, false)]);
    // A duplicate, a chunk from the future, a chunk of another snapshot: answered, ignored.
    assert_eq!(snapshot_replies(&n.recv(chunk(2, &m, 0, b"ab", false))), [(5, 2, false)]);
    assert_eq!(snapshot_replies(&n.recv(chunk(2, &m, 4, b"ef", true))), [(5, 2, false)]);
    assert_eq!(snapshot_replies(&n.recv(chunk(2, &meta(6, 2), 2, b"zz", true))), [(6, 0, false)]);
    assert_eq!(n.commit(), 0, "nothing installed yet");
    // The other snapshot's bytes did not replace ours: the transfer resumes where it was.
    let acts = n.recv(chunk(2, &m, 0, b"ab", false));
    assert_eq!(snapshot_replies(&acts), [(5, 2, false)]);
    let acts = n.recv(chunk(2, &m, 2, b"cd", true));
    assert_eq!(snapshot_replies(&acts), [(5, 4, true)]);
    assert_eq!(restores(&acts), [5]);
    let installed = n.core.snapshot().expect("kept").clone();
    assert_eq!(&installed.data[..], b"abcd");
    assert_eq!(n.commit(), 5);
    assert_eq!(n.status().snapshot_index, LogIndex(5));
}

#[test]
fn is6_a_snapshot_of_a_prefix_keeps_the_entries_after_it() {
    let mut n = boot(2).term(2).log(&[1, 1, 2, 2, 2]).start();
    let acts = n.recv(chunk(2, &meta(3, 2), 0, b"s", true));
    assert_eq!(restores(&acts), [3]);
    assert_eq!(n.status().snapshot_index, LogIndex(3));
    assert_eq!(n.status().last_log_index, LogIndex(5), "entries 4 and 5 kept");
    assert_eq!(n.status().log_entries, 2);
}

#[test]
fn is7_a_snapshot_that_conflicts_with_the_log_discards_it() {
    let mut n = boot(2).term(3).log(&[1, 1, 1, 1, 1]).start();
    let acts = n.recv(chunk(3, &meta(3, 3), 0, b"s", true));
    assert_eq!(restores(&acts), [3]);
    assert_eq!(n.status().last_log_index, LogIndex(3), "the conflicting suffix is gone");
    assert_eq!(n.status().log_entries, 0);
}

#[test]
fn is8_the_snapshot_brings_its_configuration() {
    let mut n = boot(2).voters(&[1, 2, 3]).term(2).start();
    let m = SnapshotMeta { config: Arc::new(conf(&[1, 2, 3, 4], &[])), ..meta(4, 2) };
    n.recv(chunk(2, &m, 0, b"s", true));
    assert_eq!(n.status().config, conf(&[1, 2, 3, 4], &[]));
}

#[test]
fn is_a_snapshot_no_newer_than_the_commit_index_is_answered_done_and_ignored() {
    let mut n = boot(2).term(2).log(&[1, 1, 2, 2]).start();
    n.recv(ae(1, 2, 2).prev(4, 2).commit(4));
    assert_eq!(n.commit(), 4);
    let acts = n.recv(chunk(2, &meta(3, 2), 0, b"s", true));
    assert_eq!(snapshot_replies(&acts), [(3, 1, true)]);
    assert!(restores(&acts).is_empty());
    assert_eq!(n.status().snapshot_index, LogIndex(0));
}

#[test]
fn gateway_drops_a_snapshot_claiming_a_term_beyond_the_senders() {
    let mut n = boot(2).term(2).start();
    let acts = n.recv(chunk(2, &meta(5, 7), 0, b"s", true));
    assert!(sends(&acts).is_empty());
    assert!(matches!(notices(&acts)[..], [Notice::InvalidMessage { .. }]), "{:?}", trace(&acts));
    assert_eq!(n.commit(), 0);
}

#[test]
fn gateway_drops_a_snapshot_whose_index_leaves_no_room_after_it() {
    let mut n = boot(2).term(2).log(&[1, 2]).start();
    let acts = n.recv(chunk(2, &meta(u64::MAX, 2), 0, b"s", true));
    let reason = "snapshot index past the margin of the index space";
    assert_eq!(acts, [Action::Notice(Notice::InvalidMessage { from: NodeId(1), reason })]);
    assert_eq!(n.log_terms(), [1, 2], "log untouched");
    let s = n.status();
    assert_eq!((s.commit_index, s.snapshot_index, s.leader), (LogIndex(0), LogIndex(0), None));
}

#[test]
fn lead_a_follower_behind_the_offset_gets_the_snapshot_in_chunks_within_the_window() {
    let config =
        Config { snapshot_chunk_bytes: 3, snapshot_chunks_in_flight: 2, ..fixed_timeout() };
    let mut c = boot(1).offset(5, 1).log(&[1, 1]).config(config).start();
    c.campaign();
    c.recv(vote(2, 1, 2, true));
    // The harness's snapshot holds b"snapshot" (8 bytes): chunks of 3, two in flight.
    let acts = c.recv(ae_reject(2, 1, 2, 7, 1));
    let offsets = |acts: &[Action<u64>]| -> Vec<(u64, bool)> {
        sends(acts)
            .into_iter()
            .filter_map(|m| match &m.body {
                Body::InstallSnapshot(ch) => Some((ch.offset, ch.done)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(offsets(&acts), [(0, false), (3, false)]);
    // No answer by a heartbeat (a dead or cut-off follower): one chunk from what it confirmed,
    // not the window again, each heartbeat until it answers.
    let heartbeat = fixed_timeout().heartbeat_interval.as_millis() as u64
        / fixed_timeout().tick.as_millis() as u64;
    for _ in 0..3 {
        assert_eq!(offsets(&c.tick(heartbeat)), [(0, false)], "a probe, not the window");
    }
    let reply = |received: u64, done: bool| Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(2),
        body: Body::InstallSnapshotReply(crate::message::InstallSnapshotReply {
            index: LogIndex(5),
            received,
            done,
        }),
    };
    // Its answer reopens the window, from what it confirmed.
    assert_eq!(offsets(&c.recv(reply(3, false))), [(3, false), (6, true)]);
    assert!(offsets(&c.recv(reply(3, false))).is_empty(), "a duplicate reply sends nothing");
    let acts = c.recv(reply(8, true));
    assert!(offsets(&acts).is_empty());
    let appends = appends_to(&acts, 2);
    assert_eq!(appends.first().map(|a| a.prev_log_index), Some(LogIndex(5)), "entries follow");
}
