//! Crash points of [`DiskStorage`]: a workload of hard states, appends, truncations and a
//! snapshot runs against the disk store and an in-memory model side by side. Then, for every
//! byte-length prefix of what each step wrote, and for a sample of single-bit flips, the files
//! are reopened: recovery must give exactly the model's state after some prefix of the
//! operations that holds every operation synced before the cut, or a typed [`StorageError`];
//! never a panic, never a state that was never written.
//!
//! Segments are pre-zeroed, so a step's write overwrites zeros: a crash leaves a prefix of it
//! followed by the zeros still there (and, to model an extending write or a shorter file, the
//! file cut at the same place). Bit flips in the zero tails are tested on their own.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::TempDir;

use ferraft::storage::{DiskOptions, DiskStorage, NodeIdentity, StorageError, SyncPolicy};
use ferraft::{
    Configuration, Entry, HardState, LogIndex, MemStorage, NodeId, Payload, PersistentState,
    Snapshot, SnapshotMeta, Storage, Term,
};

const ME: NodeIdentity = NodeIdentity { cluster: 0xfe44, node: NodeId(1) };

fn bootstrap() -> Configuration {
    Configuration::new([NodeId(1), NodeId(2), NodeId(3)])
}

/// Small segments, so the workload rotates several times.
fn options(sync: SyncPolicy) -> DiskOptions {
    DiskOptions { segment_bytes: 300, sync }
}

fn open(dir: &Path, sync: SyncPolicy) -> Result<DiskStorage<u64>, StorageError> {
    DiskStorage::open(dir, ME, &bootstrap(), options(sync))
}

#[derive(Clone, Debug)]
enum Op {
    Hard(HardState),
    Append(LogIndex, Vec<Entry<u64>>),
    Snapshot(Arc<Snapshot>),
}

fn apply(store: &mut dyn Storage<u64>, op: &Op) {
    match op {
        Op::Hard(hs) => store.save_hard_state(*hs).expect("hard state"),
        Op::Append(first, entries) => store.append(*first, entries).expect("append"),
        Op::Snapshot(s) => store.save_snapshot(s).expect("snapshot"),
    }
}

/// A deterministic workload: steps of operations, each step followed by a sync.
fn workload() -> Vec<Vec<Op>> {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    let mut model = MemStorage::<u64>::new(bootstrap());
    let (mut term, mut steps) = (1u64, Vec::new());
    for step in 0..36 {
        let state = model.load().expect("model");
        let last = state.log_offset.0 + state.entries.len() as u64;
        let mut ops = Vec::new();
        if step == 20 {
            let index = LogIndex(state.log_offset.0 + (state.entries.len() as u64).min(6));
            let term_at = state.entries[(index.0 - state.log_offset.0 - 1) as usize].term;
            let config = Arc::new(bootstrap());
            let meta = SnapshotMeta { index, term: term_at, config };
            let data: Arc<[u8]> = Arc::from(vec![step as u8; 40]);
            ops.push(Op::Snapshot(Arc::new(Snapshot { meta, data })));
        } else {
            if step == 0 || next(3) == 0 {
                term += 1;
                let voted_for = (next(2) == 0).then_some(NodeId(1 + next(3)));
                ops.push(Op::Hard(HardState { term: Term(term), voted_for }));
            }
            // Mostly appends at the end; sometimes a truncation of the last few entries.
            let back = if next(4) == 0 { next(3).min(last - state.log_offset.0) } else { 0 };
            let first = LogIndex(last + 1 - back);
            let entries = (0..1 + next(4))
                .map(|i| Entry { term: Term(term), payload: Payload::Command(step * 100 + i) })
                .collect();
            ops.push(Op::Append(first, entries));
        }
        for op in &ops {
            apply(&mut model, op);
        }
        steps.push(ops);
    }
    steps
}

type Files = BTreeMap<String, Vec<u8>>;

/// Every file of the node directory but the lock.
fn capture(dir: &Path) -> Files {
    let mut files = Files::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "LOCK" {
            files.insert(name, std::fs::read(entry.path()).expect("read"));
        }
    }
    files
}

/// Makes `dir` hold exactly `files` (and a lock file).
fn restore(dir: &Path, files: &Files) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("mkdir");
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write");
    }
}

/// The byte range a step wrote into a segment: from the first byte that differs to the last
/// (the segment was zeros there before).
fn written(before: &[u8], after: &[u8]) -> (usize, usize) {
    let old = |i: usize| before.get(i).copied().unwrap_or(0);
    let from = (0..after.len()).find(|&i| after[i] != old(i)).unwrap_or(after.len());
    let to = (0..after.len()).rev().find(|&i| after[i] != old(i)).map_or(from, |i| i + 1);
    assert!(before[from.min(before.len())..].iter().all(|&b| b == 0), "a write over data");
    (from, to)
}

fn last_segment(files: &Files) -> Option<String> {
    files.keys().filter(|n| n.starts_with("wal-")).max().cloned()
}

/// What running the workload produced: the model's state after every operation (index 0 =
/// before any), and after each synced step the directory's files and the operations done.
struct Run {
    models: Vec<PersistentState<u64>>,
    synced: Vec<(Files, usize)>,
}

fn run_workload(dir: &Path) -> Run {
    let mut store = open(dir, SyncPolicy::Always).expect("open a new directory");
    let mut model = MemStorage::<u64>::new(bootstrap());
    let mut models = vec![model.load().expect("model")];
    let mut synced = vec![(capture(dir), 0)];
    for ops in workload() {
        for op in &ops {
            apply(&mut store, op);
            apply(&mut model, op);
            models.push(model.load().expect("model"));
        }
        store.sync().expect("sync");
        synced.push((capture(dir), models.len() - 1));
    }
    assert_eq!(store.load().expect("load"), *models.last().expect("models"), "the store diverged");
    Run { models, synced }
}

/// Reopens `files` and checks recovery gives the model's state after `lo..=hi` operations.
fn check(scratch: &Path, files: &Files, run: &Run, lo: usize, hi: usize, what: &str) {
    restore(scratch, files);
    let store = match open(scratch, SyncPolicy::Never) {
        Ok(store) => store,
        Err(e) => panic!("{what}: a legitimate crash state failed to open: {e}"),
    };
    let got = store.load().expect("load");
    let found = (lo..=hi).find(|&j| run.models[j] == got);
    assert!(
        found.is_some(),
        "{what}: recovered a state that is not the model's after {lo}..={hi} ops: {got:?}"
    );
}

#[test]
fn every_prefix_of_every_step_recovers_a_prefix_holding_every_synced_operation() {
    let (work, scratch) = (TempDir::new("crash-work"), TempDir::new("crash-scratch"));
    let run = run_workload(&work.0);
    let mut states = 0;
    for pair in run.synced.windows(2) {
        let ((before, synced_ops), (after, done_ops)) = (&pair[0], &pair[1]);
        check(&scratch.0, after, &run, *done_ops, *done_ops, "after a sync");
        let name = last_segment(before).expect("a segment");
        let Some(grown) = after.get(&name) else { continue }; // a snapshot replaced it
        let (from, to) = written(&before[&name], grown);
        // NB: rotation fsyncs a full segment before naming the next, so a cut inside this
        // segment means no later segment exists yet.
        let earlier: Files = after
            .iter()
            .filter(|(n, _)| **n <= name)
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect();
        let zeroed = before[&name].len();
        for cut in from..=to {
            // A write past the pre-zeroed size extends the file: there a crash may also leave
            // the file ending at the cut.
            let shapes: &[bool] = if cut > zeroed { &[true, false] } else { &[true] };
            for &zeros_after in shapes {
                let mut files = earlier.clone();
                let mut bytes = grown[..cut].to_vec();
                if zeros_after {
                    bytes.resize(grown.len(), 0); // the pre-zeroed rest, never written
                }
                files.insert(name.clone(), bytes);
                let what = format!("{name} cut at {cut} (zeros after: {zeros_after})");
                check(&scratch.0, &files, &run, *synced_ops, *done_ops, &what);
                states += 1;
            }
        }
        // A file cut inside its zero tail (shorter than pre-zeroed) loses nothing.
        let tail_cuts = [to, to + 1, (to + grown.len()) / 2, grown.len().saturating_sub(1)];
        for cut in tail_cuts.into_iter().filter(|&c| c >= to && c <= grown.len()) {
            let mut files = earlier.clone();
            files.insert(name.clone(), grown[..cut].to_vec());
            let what = format!("{name} cut at {cut} in its zero tail");
            check(&scratch.0, &files, &run, *done_ops, *done_ops, &what);
        }
    }
    assert!(states > 1000, "only {states} crash states: the workload is too small");
    let segments =
        run.synced.last().expect("runs").0.keys().filter(|n| n.starts_with("wal-")).count();
    assert!(segments >= 2, "the workload should leave several segments, left {segments}");
}

#[test]
fn single_bit_flips_give_a_typed_error_or_lose_at_most_the_final_record() {
    let (work, scratch) = (TempDir::new("flip-work"), TempDir::new("flip-scratch"));
    let run = run_workload(&work.0);
    let files = run.synced.last().expect("runs").0.clone();
    let last = run.models.len() - 1;
    let (mut errors, mut flips) = (0, 0);
    for (name, bytes) in &files {
        let stride = (bytes.len() / 60).max(1);
        for (k, pos) in (0..bytes.len()).step_by(stride).enumerate() {
            let mut flipped = files.clone();
            flipped.get_mut(name).expect("file")[pos] ^= 1 << (k % 8);
            restore(&scratch.0, &flipped);
            flips += 1;
            match open(&scratch.0, SyncPolicy::Never) {
                Err(e) => {
                    errors += 1;
                    let text = e.to_string();
                    assert!(
                        text.contains("ferraft-flip-scratch"),
                        "the error names no path: {text}"
                    );
                }
                Ok(store) => {
                    let got = store.load().expect("load");
                    // NB: a flip in the final record looks exactly like a torn write of it.
                    assert!(
                        got == run.models[last] || got == run.models[last - 1],
                        "flip of bit {} at {name}:{pos} recovered an unwritten state",
                        k % 8
                    );
                }
            }
        }
    }
    assert!(errors > flips / 2, "only {errors} of {flips} flips were detected");
}

#[test]
fn garbage_segments_never_panic() {
    let (work, scratch) = (TempDir::new("garbage-work"), TempDir::new("garbage-scratch"));
    let run = run_workload(&work.0);
    let files = run.synced.last().expect("runs").0.clone();
    let name = last_segment(&files).expect("segment");
    let mut rng = 7u64;
    for len in [0usize, 1, 11, 12, 13, 100, 1000] {
        for _ in 0..5 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (rng >> 56) as u8
                })
                .collect();
            let mut broken = files.clone();
            broken.insert(name.clone(), garbage);
            restore(&scratch.0, &broken);
            let _ = open(&scratch.0, SyncPolicy::Never); // any typed outcome; no panic
        }
    }
}

#[test]
fn after_a_torn_tail_is_cut_new_writes_follow_the_last_whole_record() {
    let (work, scratch) = (TempDir::new("torn-work"), TempDir::new("torn-scratch"));
    let run = run_workload(&work.0);
    let (files, done) = run.synced.last().expect("runs").clone();
    let name = last_segment(&files).expect("segment");
    let before = &run.synced[run.synced.len() - 2].0;
    let (_, to) = written(before.get(&name).map_or(&[][..], |b| &b[..]), &files[&name]);
    let mut torn = files.clone();
    torn.get_mut(&name).expect("segment")[to - 3..to].fill(0); // the last record, torn
    restore(&scratch.0, &torn);
    let mut store = open(&scratch.0, SyncPolicy::Always).expect("a torn tail is no error");
    let mut model = MemStorage::from_state(store.load().expect("load"));
    assert_eq!(model.load().expect("model"), run.models[done - 1], "only the torn record goes");
    let last = {
        let state = model.load().expect("model");
        state.log_offset.0 + state.entries.len() as u64
    };
    let more = Op::Append(
        LogIndex(last + 1),
        (0..40).map(|i| Entry { term: Term(99), payload: Payload::Command(i) }).collect(),
    );
    apply(&mut store, &Op::Hard(HardState { term: Term(99), voted_for: None }));
    apply(&mut model, &Op::Hard(HardState { term: Term(99), voted_for: None }));
    apply(&mut store, &more);
    apply(&mut model, &more);
    store.sync().expect("sync");
    drop(store);
    let reopened = open(&scratch.0, SyncPolicy::Always).expect("reopen after new writes");
    assert_eq!(reopened.load().expect("load"), model.load().expect("model"));
}

/// Every single-bit flip in the zero tail of the last segment (after the last record) is a
/// torn tail: recovery zeroes it and keeps everything synced; no flip makes a phantom record.
#[test]
fn a_flipped_bit_in_the_last_segments_zero_tail_loses_nothing_and_adds_nothing() {
    let (work, scratch) = (TempDir::new("tail-work"), TempDir::new("tail-scratch"));
    let run = run_workload(&work.0);
    let (files, done) = run.synced.last().expect("runs").clone();
    let name = last_segment(&files).expect("segment");
    let before = &run.synced[run.synced.len() - 2].0;
    let (_, to) = written(before.get(&name).map_or(&[][..], |b| &b[..]), &files[&name]);
    let len = files[&name].len();
    assert!(len > to + 16, "the last segment should have a zero tail: {to} of {len} bytes");
    // Every bit of the first 24 bytes (where a phantom header would start), then a sample.
    let flips = (to..to + 24).flat_map(|pos| (0..8).map(move |bit| (pos, bit)));
    let sample = (to + 24..len).step_by(5).map(|pos| (pos, pos % 8));
    for (pos, bit) in flips.chain(sample) {
        let mut flipped = files.clone();
        flipped.get_mut(&name).expect("segment")[pos] ^= 1 << bit;
        restore(&scratch.0, &flipped);
        let store = open(&scratch.0, SyncPolicy::Never)
            .unwrap_or_else(|e| panic!("flip at {name}:{pos}: {e}"));
        let got = store.load().expect("load");
        assert_eq!(got, run.models[done], "flip at {name}:{pos} changed the state");
        drop(store);
        let zeroed = std::fs::read(scratch.0.join(&name)).expect("read");
        assert!(zeroed[to..].iter().all(|&b| b == 0), "flip at {pos} was not zeroed");
    }
}

/// A segment closed before the next began was synced whole: a flipped bit in its zero tail,
/// or garbage before a later whole record in the last segment, is corruption, never a loss.
#[test]
fn garbage_in_a_closed_segment_or_before_a_whole_record_is_corruption() {
    let (work, scratch) = (TempDir::new("closed-work"), TempDir::new("closed-scratch"));
    let run = run_workload(&work.0);
    let files = run.synced.last().expect("runs").0.clone();
    let segments: Vec<&String> = files.keys().filter(|n| n.starts_with("wal-")).collect();
    assert!(segments.len() >= 2, "the workload leaves one segment");
    let closed = segments[segments.len() - 2];
    // NB: a segment closes once a write crosses its pre-zeroed size, so a closed segment ends
    // in data; give it a zero tail (as if pre-zeroed larger) to flip a bit in.
    let data = files[closed].len();
    let mut padded = files.clone();
    padded.get_mut(closed).expect("segment").resize(data + 100, 0);
    restore(&scratch.0, &padded);
    let store = open(&scratch.0, SyncPolicy::Never).expect("a zero tail is the clean end");
    assert_eq!(store.load().expect("load"), run.models[run.models.len() - 1]);
    drop(store);
    for pos in [data - 1, data, data + 50, data + 99] {
        let mut flipped = padded.clone();
        flipped.get_mut(closed).expect("segment")[pos] ^= 0x10;
        restore(&scratch.0, &flipped);
        match open(&scratch.0, SyncPolicy::Never) {
            Err(StorageError::Corrupt { path, offset, .. }) => {
                assert!(path.ends_with(closed), "{path:?}");
                assert!(offset as usize <= data, "offset {offset} past the data");
            }
            other => panic!("a flip at {pos} of a closed segment: {other:?}"),
        }
    }
    // In the last segment (the closed one, once the segments after it are gone): flip a byte
    // inside the first record after the header, so a whole record follows the bad bytes.
    let last = closed;
    let mut holed = files.clone();
    holed.retain(|n, _| !n.starts_with("wal-") || n <= closed);
    let segment = holed.get_mut(last).expect("segment");
    let frame_len = |at: usize| 12 + u32::from_le_bytes(segment[at..at + 4].try_into().unwrap());
    let header_len = frame_len(0) as usize;
    let second = header_len + frame_len(header_len) as usize;
    assert!(segment[second..second + 12].iter().any(|&b| b != 0), "two records after the header");
    segment[header_len + 13] ^= 0xff;
    restore(&scratch.0, &holed);
    match open(&scratch.0, SyncPolicy::Never) {
        Err(StorageError::Corrupt { path, offset, why }) => {
            assert!(path.ends_with(last), "{path:?}");
            assert_eq!(offset as usize, header_len, "{why}");
            assert!(why.contains("whole record follows"), "{why}");
        }
        other => panic!("bad bytes before a whole record: {other:?}"),
    }
}

/// A directory written before pre-zeroing (identity v1, segments ending at their data) opens
/// with its state, is upgraded to v2, and takes new writes; a newer format is refused.
#[test]
fn a_v1_directory_is_read_and_upgraded_and_an_unknown_format_is_refused() {
    let (work, scratch) = (TempDir::new("v1-work"), TempDir::new("v1-scratch"));
    let run = run_workload(&work.0);
    let (mut files, done) = run.synced.last().expect("runs").clone();
    let identity = String::from_utf8(files["IDENTITY"].clone()).expect("text");
    assert!(identity.starts_with("ferraft node v2\n"), "{identity}");
    files.insert("IDENTITY".into(), identity.replace("node v2", "node v1").into_bytes());
    let name = last_segment(&files).expect("segment");
    let before = &run.synced[run.synced.len() - 2].0;
    let (_, to) = written(before.get(&name).map_or(&[][..], |b| &b[..]), &files[&name]);
    files.get_mut(&name).expect("segment").truncate(to); // v1: no zero tail
    restore(&scratch.0, &files);
    let mut store = open(&scratch.0, SyncPolicy::Always).expect("a v1 directory opens");
    assert_eq!(store.load().expect("load"), run.models[done]);
    let upgraded = std::fs::read_to_string(scratch.0.join("IDENTITY")).expect("identity");
    assert!(upgraded.starts_with("ferraft node v2\n"), "not upgraded: {upgraded}");
    let hard = HardState { term: Term(77), voted_for: None };
    store.save_hard_state(hard).expect("hard state");
    store.sync().expect("sync");
    drop(store);
    let reopened = open(&scratch.0, SyncPolicy::Always).expect("reopen");
    assert_eq!(reopened.load().expect("load").hard_state, hard);
    drop(reopened);

    files.insert("IDENTITY".into(), identity.replace("node v2", "node v3").into_bytes());
    restore(&scratch.0, &files);
    match open(&scratch.0, SyncPolicy::Never) {
        Err(StorageError::UnsupportedFormat { path, found }) => {
            assert!(path.ends_with("IDENTITY") && found == "v3", "{path:?} {found}");
            let text = StorageError::UnsupportedFormat { path, found }.to_string();
            assert!(text.contains("newer ferraft"), "{text}");
        }
        other => panic!("a v3 directory: {other:?}"),
    }
}
