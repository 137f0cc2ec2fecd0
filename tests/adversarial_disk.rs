//! Adversarial inputs to the disk store, from the outside: a node directory that lost a file,
//! and options no store can work with. Each must give a typed [`StorageError`], never a panic,
//! a disk filled with zeros, or a log silently replaced by an empty one.

mod common;

use std::path::Path;

use common::TempDir;

use ferraft::storage::{DiskOptions, DiskStorage, NodeIdentity, StorageError, SyncPolicy};
use ferraft::{Configuration, Entry, HardState, LogIndex, NodeId, Payload, Storage, Term};

const ME: NodeIdentity = NodeIdentity { cluster: 0xad5e, node: NodeId(1) };

fn open(dir: &Path, options: DiskOptions) -> Result<DiskStorage<u64>, StorageError> {
    DiskStorage::open(dir, ME, &Configuration::new([NodeId(1), NodeId(2), NodeId(3)]), options)
}

fn never() -> DiskOptions {
    DiskOptions { sync: SyncPolicy::Never, ..DiskOptions::default() }
}

fn entry(term: u64, command: u64) -> Entry<u64> {
    Entry { term: Term(term), payload: Payload::Command(command) }
}

/// A store in its first segment holding a term, a vote and three entries, closed.
fn write_a_small_log(dir: &Path) {
    let mut store = open(dir, never()).expect("create");
    store.save_hard_state(HardState { term: Term(5), voted_for: Some(NodeId(2)) }).expect("hs");
    store.append(LogIndex(1), &[entry(5, 10), entry(5, 11), entry(5, 12)]).expect("append");
    store.sync().expect("sync");
}

/// The identity file lost (an operator's `rm`, a restore from a partial backup) while the log
/// still sits in segment 1, the only segment of most directories: opening must refuse, not
/// start over from the bootstrap state. Starting over forgets the node's vote in term 5 and
/// the entries it acknowledged (committed ones among them), which Raft's safety rests on.
#[test]
fn a_lost_identity_file_never_turns_a_log_into_an_empty_one() {
    let dir = TempDir::new("adv-identity-lost");
    write_a_small_log(&dir.0);
    assert_eq!(list(&dir.0, "wal-").len(), 1, "the log is in segment 1 alone");
    std::fs::remove_file(dir.0.join("IDENTITY")).expect("remove IDENTITY");

    match open(&dir.0, never()) {
        Err(StorageError::BadIdentity { path, why }) => {
            assert_eq!(path, dir.0.join("IDENTITY"));
            assert!(why.contains("missing"), "{why}");
        }
        Err(e) => panic!("expected BadIdentity, got {e}"),
        Ok(store) => {
            let state = store.load().expect("load");
            panic!(
                "opened as a new directory: term {} and {} entries left of term 5 and 3 entries",
                state.hard_state.term,
                state.entries.len()
            );
        }
    }
    // Refusing changed nothing: with the identity back, the log is all there.
    std::fs::write(
        dir.0.join("IDENTITY"),
        format!("ferraft node v2\ncluster={:016x}\nnode={}\n", ME.cluster, ME.node.0),
    )
    .expect("restore IDENTITY");
    let state = open(&dir.0, never()).expect("reopen").load().expect("load");
    assert_eq!(state.hard_state.term, Term(5));
    assert_eq!(state.entries.len(), 3);
}

/// The same, with the bootstrap record's bytes damaged too (a bit flipped in its header):
/// the whole records after it still show the node ran, so the directory is refused, not
/// written over. Before, a first record that failed its checksum counted as a creation cut
/// short whatever followed it.
#[test]
fn a_lost_identity_file_and_a_damaged_first_record_still_keep_the_log() {
    let dir = TempDir::new("adv-identity-lost-damaged");
    write_a_small_log(&dir.0);
    std::fs::remove_file(dir.0.join("IDENTITY")).expect("remove IDENTITY");
    let segment = dir.0.join(list(&dir.0, "wal-").pop().expect("segment 1"));
    let mut bytes = std::fs::read(&segment).expect("read segment 1");
    bytes[2] ^= 0x40; // inside the first record's header
    std::fs::write(&segment, &bytes).expect("damage it");
    match open(&dir.0, never()) {
        Err(StorageError::BadIdentity { why, .. }) => assert!(why.contains("missing"), "{why}"),
        Err(e) => panic!("expected BadIdentity, got {e}"),
        Ok(store) => {
            let state = store.load().expect("load");
            panic!("opened as a new directory: term {}", state.hard_state.term);
        }
    }
}

/// The case the rule exists for still works: a directory whose creation was cut short between
/// segment 1 (the bootstrap checkpoint alone) and the identity file opens as a new one.
#[test]
fn an_initialisation_cut_short_before_the_identity_file_still_opens() {
    let dir = TempDir::new("adv-identity-init");
    drop(open(&dir.0, never()).expect("create"));
    std::fs::remove_file(dir.0.join("IDENTITY")).expect("remove IDENTITY");
    let mut store = open(&dir.0, never()).expect("a cut-short initialisation opens");
    assert_eq!(store.load().expect("load").hard_state, HardState::default());
    store.save_hard_state(HardState { term: Term(1), voted_for: None }).expect("usable");
    store.sync().expect("sync");
    assert!(dir.0.join("IDENTITY").exists(), "the identity is written again");
}

/// A segment size of zero would rotate to a new segment file on every sync (one file per
/// write, without bound until a snapshot); one of `u64::MAX` would zero-fill the disk before
/// failing. Both are refused before any file is written.
#[test]
fn segment_sizes_no_store_can_use_are_refused_before_anything_is_written() {
    for segment_bytes in [0, u64::MAX] {
        let dir = TempDir::new("adv-segment-bytes");
        let options = DiskOptions { segment_bytes, sync: SyncPolicy::Never };
        match open(&dir.0, options) {
            Err(StorageError::BadOptions { why, .. }) => {
                assert!(why.contains("segment_bytes"), "{why}");
            }
            Err(e) => panic!("segment_bytes {segment_bytes}: expected BadOptions, got {e}"),
            Ok(_) => panic!("segment_bytes {segment_bytes} accepted"),
        }
        let empty = std::fs::read_dir(&dir.0).map_or(true, |mut files| files.next().is_none());
        assert!(empty, "segment_bytes {segment_bytes}: the directory was written to");
    }
}

fn list(dir: &Path, prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let names = entries.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned());
    names.filter(|n| n.starts_with(prefix)).collect()
}
