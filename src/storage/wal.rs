//! The write-ahead log's bytes: record framing (length, CRC32C), the records themselves, and
//! the scan that splits a segment into records and tells a torn tail from corruption.
//!
//! # Format
//!
//! A node's directory holds segments `wal-<seq>.log` (`seq` from 1, 20 decimal digits, no gaps)
//! and snapshot files `snap-<index>.snap`. A segment is a sequence of frames:
//!
//! ```text
//! frame   = len:u32le  payload_crc:u32le  header_crc:u32le  payload[len]
//! payload_crc = crc32c(payload)
//! header_crc  = crc32c(len:u32le ++ payload_crc:u32le)
//! payload = postcard(Record)
//! ```
//!
//! The header has its own checksum so a flipped bit in a length is never mistaken for a record
//! that runs past the end of the file (a torn write). The records (postcard, variant order is
//! the format):
//!
//! - `Header { seq, checkpoint }`: the first record of every segment. `seq` repeats the file
//!   name's. `checkpoint`, when present, is the whole persistent state at that point (hard
//!   state, base configuration, log offset and its term, whether a snapshot file stands for the
//!   log up to the offset, and the entries after the offset): replay starts from it, and every
//!   earlier segment is garbage. Segment 1 always has one (the bootstrap state); so does the
//!   segment a snapshot starts. Segments opened because the previous one was full have none.
//! - `HardState(HardState)`: currentTerm and votedFor from now on.
//! - `Entries { first, entries }`: the log from index `first` on is replaced by `entries`
//!   (truncation and append in one record, so a crash never shows the truncation without the
//!   entries that replaced it).
//!
//! A snapshot file is one frame whose payload is `postcard(Snapshot)`, written to a `.tmp`
//! name, fsync'd, renamed and the directory fsync'd before the segment whose checkpoint names it.
//!
//! # Pre-zeroed segments and the end of the written data
//!
//! A segment is created filled with zeros to [`super::DiskOptions::segment_bytes`] and synced
//! before it is named and used, so appends overwrite zeros inside the file's size and an
//! `fdatasync` has no file size or extent to commit. A segment file is therefore longer than
//! its data: **a frame header of twelve zero bytes (or fewer zero bytes up to the end of the
//! file) is the end of the written data**. No frame can be all zeros: its header checksum is
//! `crc32c` of the first eight bytes, and `crc32c([0; 8]) != 0`; a frame declaring length zero
//! is refused too (no record encodes to zero bytes). Directories written before pre-zeroing
//! (identity `ferraft node v1`) have segments that simply end at their data; they read the
//! same way and are upgraded to `v2` when opened.
//!
//! # Torn tails and corruption
//!
//! Replay reads whole frames from offset 0. Where no whole frame starts (a zero header, a bad
//! header, a bad payload), the rest of the segment decides (`classify_tail`):
//!
//! - only zeros after it: the clean end of the data;
//! - non-zero bytes, and a whole frame starts somewhere among them: **corruption**
//!   (`StorageError::Corrupt` with the file and the offset of the first bad frame): a synced
//!   record may have been damaged, and the node will not guess;
//! - non-zero bytes but no whole frame among them: a **torn tail** (a crash mid-write: the
//!   pages of an unsynced write reached the disk in part). Accepted only in the last segment
//!   (every earlier segment was synced whole before the next was created): replay stops at the
//!   bad frame, the store zeroes the garbage and fsyncs, with a `warn!`. In an earlier segment
//!   it is corruption.
//!
//! Why this loses nothing synced and shows nothing never written: a sync covers every byte
//! before the write offset, so a crash damages only bytes after the last sync, and every later
//! write lies after them; a torn tail therefore holds no synced record (unless a bit flip hit
//! the final record: see the NB). Replay accepts only whole, checksummed frames in order from
//! offset 0, never a frame found by the scan, so no garbage becomes a record. A single flipped
//! bit in the zero tail is never a whole frame (tested exhaustively in `tests` below): it reads
//! as a torn tail and is zeroed.
//!
//! NB: a bit flipped in the final record is indistinguishable from a torn write of it, so it is
//! truncated away like one (the record was the last written). The pages of one unsynced write
//! reaching the disk out of order (a later whole record on disk, an earlier page still zeros)
//! read as corruption: an error, never a loss. So does a torn record whose payload happens to
//! contain the bytes of a whole frame (a command that is itself a WAL frame).

use serde::{Deserialize, Serialize};

use super::HardState;
use crate::message::{Configuration, Entry, Snapshot};
use crate::types::{LogIndex, Term};

/// Bytes of a frame header: length, payload checksum, header checksum.
pub(crate) const FRAME_HEADER: usize = 12;

/// The largest payload a frame may declare; a longer one is corruption.
pub(crate) const MAX_PAYLOAD: usize = 1 << 31;

/// A WAL record. `E` is `&[Entry<C>]` when encoding (no copies) and `Vec<Entry<C>>` when
/// decoding: serde writes both as the same sequence.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Record<E> {
    Header { seq: u64, checkpoint: Option<Checkpoint<E>> },
    HardState(HardState),
    Entries { first: LogIndex, entries: E },
}

/// The whole persistent state, at the start of a segment.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Checkpoint<E> {
    pub hard_state: HardState,
    pub base_config: Configuration,
    pub log_offset: LogIndex,
    pub offset_term: Term,
    /// Whether `snap-<log_offset>.snap` holds the snapshot through `log_offset`.
    pub snapshot: bool,
    pub entries: E,
}

/// A record as encoded.
pub(crate) type RecordRef<'a, C> = Record<&'a [Entry<C>]>;
/// A record as decoded.
pub(crate) type RecordOwned<C> = Record<Vec<Entry<C>>>;

/// Appends one frame holding `value` to `buf`. On error `buf` is left as it was.
pub(crate) fn append_frame<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> Result<(), String> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    if let Err(e) = postcard::to_io(value, &mut *buf) {
        buf.truncate(start);
        return Err(format!("cannot encode a record: {e}"));
    }
    let len = buf.len() - start - FRAME_HEADER;
    if len > MAX_PAYLOAD {
        buf.truncate(start);
        return Err(format!("a record of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit"));
    }
    let payload_crc = crc32c::crc32c(&buf[start + FRAME_HEADER..]);
    let header = header_bytes(len as u32, payload_crc);
    buf[start..start + FRAME_HEADER].copy_from_slice(&header);
    Ok(())
}

fn header_bytes(len: u32, payload_crc: u32) -> [u8; FRAME_HEADER] {
    let mut header = [0; FRAME_HEADER];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..8]);
    header[8..].copy_from_slice(&header_crc.to_le_bytes());
    header
}

/// What the bytes at an offset of a segment hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// No frame: the bytes end, or the header is all zeros (the unwritten rest of a segment).
    End,
    /// A whole, checksummed frame; the next one starts at `next`.
    Whole { payload: &'a [u8], next: usize },
    /// Non-zero bytes that are not a whole frame.
    Bad { why: &'static str },
}

/// Reads the frame at `offset` of `bytes`. Never panics, whatever the bytes.
pub(crate) fn read_frame(bytes: &[u8], offset: usize) -> Frame<'_> {
    let rest = bytes.get(offset..).unwrap_or(&[]);
    if rest.iter().take(FRAME_HEADER).all(|&b| b == 0) {
        return Frame::End;
    }
    if rest.len() < FRAME_HEADER {
        return Frame::Bad { why: "the file ends inside a record header" };
    }
    let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let (len, payload_crc, header_crc) = (word(0), word(4), word(8));
    if crc32c::crc32c(&rest[..8]) != header_crc {
        return Frame::Bad { why: "a record header fails its checksum" };
    }
    let len = len as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return Frame::Bad { why: "a record declares an impossible length" };
    }
    let Some(payload) = rest.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Frame::Bad { why: "the file ends inside a record" };
    };
    if crc32c::crc32c(payload) != payload_crc {
        return Frame::Bad { why: "a record fails its checksum" };
    }
    Frame::Whole { payload, next: offset + FRAME_HEADER + len }
}

/// What follows the place where the whole frames of a segment stop (see the module docs).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Only zeros (or nothing): the clean end of the written data.
    Clean,
    /// Non-zero bytes up to `garbage_end`, and no whole frame among them.
    Torn { garbage_end: usize },
    /// A whole frame starts at `at`, after the bad bytes.
    LaterFrame { at: usize },
}

/// Classifies the bytes of `bytes` from `offset`, where no whole frame starts.
pub(crate) fn classify_tail(bytes: &[u8], offset: usize) -> Tail {
    let rest = bytes.get(offset..).unwrap_or(&[]);
    let Some(last) = last_non_zero(rest) else { return Tail::Clean };
    let garbage_end = offset + last + 1;
    // NB: a whole frame has a non-zero header byte, so it starts before `garbage_end`.
    match (offset + 1..garbage_end).find(|&at| matches!(read_frame(bytes, at), Frame::Whole { .. }))
    {
        Some(at) => Tail::LaterFrame { at },
        None => Tail::Torn { garbage_end },
    }
}

/// The index of the last non-zero byte, word by word (segment tails are megabytes of zeros).
fn last_non_zero(bytes: &[u8]) -> Option<usize> {
    let words = bytes.len() / 8;
    let tail = bytes[words * 8..].iter().rposition(|&b| b != 0);
    if let Some(i) = tail {
        return Some(words * 8 + i);
    }
    let word = (0..words).rev().find(|&w| bytes[w * 8..w * 8 + 8] != [0; 8])?;
    bytes[word * 8..word * 8 + 8].iter().rposition(|&b| b != 0).map(|i| word * 8 + i)
}

/// Decodes a snapshot file's bytes: one frame holding the snapshot.
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    match read_frame(bytes, 0) {
        Frame::Whole { payload, next } if next == bytes.len() => {
            postcard::from_bytes(payload).map_err(|e| format!("the snapshot does not parse: {e}"))
        }
        Frame::Whole { .. } => Err("bytes follow the snapshot's frame".into()),
        Frame::End => Err("the snapshot file is empty or starts with zeros".into()),
        Frame::Bad { why } => Err(why.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Payload;

    fn frame(record: &RecordRef<'_, u64>) -> Vec<u8> {
        let mut buf = Vec::new();
        append_frame(&mut buf, record).expect("encodes");
        buf
    }

    #[test]
    fn a_frame_round_trips_and_borrowed_entries_decode_as_owned() {
        let entries = [Entry { term: Term(2), payload: Payload::Command(7u64) }];
        let bytes = frame(&Record::Entries { first: LogIndex(3), entries: &entries });
        let Frame::Whole { payload, next } = read_frame(&bytes, 0) else { panic!("bad frame") };
        assert_eq!(next, bytes.len());
        let record: RecordOwned<u64> = postcard::from_bytes(payload).expect("decodes");
        match record {
            Record::Entries { first, entries: decoded } => {
                assert_eq!((first, decoded.as_slice()), (LogIndex(3), &entries[..]));
            }
            other => panic!("decoded {other:?}"),
        }
        assert_eq!(read_frame(&bytes, next), Frame::End);
    }

    #[test]
    fn a_zero_header_is_the_end_and_never_a_frame() {
        assert_ne!(crc32c::crc32c(&[0; 8]), 0, "an all-zero header would pass its checksum");
        assert_eq!(read_frame(&[0; 40], 0), Frame::End);
        assert_eq!(read_frame(&[0; 5], 0), Frame::End);
        assert_eq!(classify_tail(&[0; 40], 0), Tail::Clean);
        let record = frame(&Record::HardState(HardState::default()));
        let mut bytes = record.clone();
        bytes.extend_from_slice(&[0; 64]);
        assert!(matches!(read_frame(&bytes, 0), Frame::Whole { .. }));
        assert_eq!(read_frame(&bytes, record.len()), Frame::End);
        assert_eq!(classify_tail(&bytes, record.len()), Tail::Clean);
    }

    #[test]
    fn a_cut_frame_followed_by_zeros_is_torn() {
        // Non-zero last byte: a cut record padded with zeros is never the record itself.
        let hard_state = HardState { term: Term(5), voted_for: Some(crate::types::NodeId(3)) };
        let record = frame(&Record::HardState(hard_state));
        assert_ne!(record.last(), Some(&0));
        for cut in 1..record.len() {
            let mut bytes = record[..cut].to_vec();
            bytes.extend_from_slice(&[0; 64]);
            assert!(matches!(read_frame(&bytes, 0), Frame::Bad { .. }), "cut at {cut}");
            let tail = classify_tail(&bytes, 0);
            assert!(matches!(tail, Tail::Torn { .. }), "cut at {cut}: {tail:?}");
        }
    }

    #[test]
    fn one_flipped_bit_in_zeros_is_never_a_frame() {
        let zeros = [0u8; 64];
        for bit in 0..zeros.len() * 8 {
            let mut bytes = zeros;
            bytes[bit / 8] ^= 1 << (bit % 8);
            for at in 0..bytes.len() {
                assert!(
                    !matches!(read_frame(&bytes, at), Frame::Whole { .. }),
                    "bit {bit} made a frame at {at}"
                );
            }
            assert_eq!(classify_tail(&bytes, 0), Tail::Torn { garbage_end: bit / 8 + 1 });
        }
    }

    #[test]
    fn garbage_followed_by_a_whole_frame_is_not_a_torn_tail() {
        let record = frame(&Record::HardState(HardState::default()));
        let mut bytes = vec![0xa5u8; 7];
        bytes.extend_from_slice(&[0; 30]);
        bytes.extend_from_slice(&record);
        bytes.extend_from_slice(&[0; 30]);
        assert_eq!(classify_tail(&bytes, 0), Tail::LaterFrame { at: 37 });
    }

    #[test]
    fn last_non_zero_finds_the_last_set_byte_at_any_alignment() {
        for len in 0..40 {
            for set in 0..len {
                let mut bytes = vec![0u8; len];
                bytes[set] = 1;
                assert_eq!(last_non_zero(&bytes), Some(set));
            }
            assert_eq!(last_non_zero(&vec![0u8; len]), None);
        }
    }

    #[test]
    fn a_flipped_header_or_a_zero_length_is_bad() {
        let bytes = frame(&Record::HardState(HardState::default()));
        let mut flipped = bytes.clone();
        flipped[0] ^= 0x40;
        assert!(matches!(read_frame(&flipped, 0), Frame::Bad { .. }));
        let mut empty = header_bytes(0, crc32c::crc32c(&[])).to_vec();
        empty.extend_from_slice(&[0; 8]);
        assert!(matches!(read_frame(&empty, 0), Frame::Bad { .. }));
    }
}
