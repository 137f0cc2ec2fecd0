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
//! # Torn tails and corruption
//!
//! A crash mid-write leaves the last segment ending inside a record. A bad frame is taken for
//! such a torn tail only in the last segment and only when it looks like one: fewer than a
//! header's bytes left, a header that fails its check with only zero bytes after it, a length
//! that runs past the end of the file, or a payload checksum failure on the file's very last
//! record. Anything else is corruption, reported with the file and byte offset.
//! NB: a bit flipped in the final record is indistinguishable from a torn write of it, so it is
//! truncated away like one (the record was the last written).

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
    /// The end of the bytes, exactly at a frame boundary.
    End,
    /// A whole, checksummed frame; the next one starts at `next`.
    Whole { payload: &'a [u8], next: usize },
    /// A bad frame; `torn` when it looks like a write cut short (see the module docs).
    Bad { why: &'static str, torn: bool },
}

/// Reads the frame at `offset` of `bytes`. Never panics, whatever the bytes.
pub(crate) fn read_frame(bytes: &[u8], offset: usize) -> Frame<'_> {
    let rest = bytes.get(offset..).unwrap_or(&[]);
    if rest.is_empty() {
        return Frame::End;
    }
    if rest.len() < FRAME_HEADER {
        return Frame::Bad { why: "the file ends inside a record header", torn: true };
    }
    let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let (len, payload_crc, header_crc) = (word(0), word(4), word(8));
    if crc32c::crc32c(&rest[..8]) != header_crc {
        let zeros = rest.iter().all(|&b| b == 0);
        return Frame::Bad { why: "a record header fails its checksum", torn: zeros };
    }
    let len = len as usize;
    if len > MAX_PAYLOAD {
        return Frame::Bad { why: "a record declares an impossible length", torn: false };
    }
    let Some(payload) = rest.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Frame::Bad { why: "the file ends inside a record", torn: true };
    };
    if crc32c::crc32c(payload) != payload_crc {
        let last = rest.len() == FRAME_HEADER + len;
        return Frame::Bad { why: "a record fails its checksum", torn: last };
    }
    Frame::Whole { payload, next: offset + FRAME_HEADER + len }
}

/// Decodes a snapshot file's bytes: one frame holding the snapshot.
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    match read_frame(bytes, 0) {
        Frame::Whole { payload, next } if next == bytes.len() => {
            postcard::from_bytes(payload).map_err(|e| format!("the snapshot does not parse: {e}"))
        }
        Frame::Whole { .. } => Err("bytes follow the snapshot's frame".into()),
        Frame::End => Err("the snapshot file is empty".into()),
        Frame::Bad { why, .. } => Err(why.into()),
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
    fn a_cut_frame_is_torn_and_a_flipped_header_is_not() {
        let bytes = frame(&Record::HardState(HardState::default()));
        for cut in 1..bytes.len() {
            assert!(matches!(read_frame(&bytes[..cut], 0), Frame::Bad { torn: true, .. }));
        }
        let mut flipped = bytes.clone();
        flipped[0] ^= 0x40;
        assert!(matches!(read_frame(&flipped, 0), Frame::Bad { torn: false, .. }));
        assert!(matches!(read_frame(&[0; 40], 0), Frame::Bad { torn: true, .. }));
    }
}
