//! The TCP wire format: frames, the handshake, and their checks. Pure encoding and decoding;
//! no sockets live here except the blocking [`read_frame`] / [`write_value`] helpers.
//!
//! # Frames
//!
//! Every byte on a connection belongs to a frame:
//!
//! ```text
//! offset  size  field
//! 0       4     len:     payload length in bytes, u32 little-endian
//! 4       1     version: 1 (FRAME_VERSION); any other value closes the connection
//! 5       1     kind:    what the payload is (FrameKind)
//! 6       4     crc:     CRC32C (Castagnoli) of version, kind and payload, u32 little-endian
//! 10      len   payload: postcard-encoded (serde), its type given by `kind`
//! ```
//!
//! A frame whose `len` exceeds the receiver's maximum (`TcpConfig::max_frame_bytes`, or
//! [`MAX_HANDSHAKE_FRAME_BYTES`] for the handshake's frames) is refused from its header alone,
//! before any payload is read or allocated, and the connection is closed: a reader never
//! allocates more than the bound. A bad version, kind or checksum also closes the connection
//! (the stream can no longer be trusted to be in step). On the sending side, a payload that the
//! 4-byte `len` cannot describe (4 GiB or more) is refused with [`FrameError::TooLarge`], not
//! written.
//!
//! # Handshake
//!
//! The accepting side speaks first: a [`Challenge`] carrying a fresh random nonce. The
//! connecting side answers with a [`Hello`]: the cluster id, who it is ([`Peer::Node`] or
//! [`Peer::Client`]) and, when the cluster has a shared secret, an HMAC-SHA256 over the nonce
//! and those fields ([`hello_mac`]). The acceptor answers with a [`Verdict`]: accepted, or
//! refused with the reason (wrong cluster id, an id not in its configuration, a bad MAC); it
//! closes the connection after a refusal. Each side gives the whole exchange at most
//! `TcpConfig::handshake_timeout`, counted from the connection's accept (or connect): a peer
//! that connects and never speaks, or speaks a byte at a time, is dropped at that deadline.
//! Until the peer is authenticated, frames are read with the small fixed limit
//! [`MAX_HANDSHAKE_FRAME_BYTES`], so an unauthenticated connection costs a few KiB at most.
//!
//! After an accepted `Peer::Node` hello the connection carries [`FrameKind::Message`] frames
//! (a postcard `Message<C>`) one way only, from the connector to the acceptor; a message whose
//! `from` differs from the hello's id is dropped. New message kinds are added as the last
//! variant of `Body`, so every older kind keeps its encoding, and a whole frame whose message
//! does not decode (a newer node's kind) is dropped alone, the connection kept (twenty-third
//! session). `Body::ReadIndexByRound`, the twenty-second session's, is the only kind an older
//! node cannot decode; it is sent only for reads that ask for `ReadPolicy::ReadIndex` at a
//! follower, and a node built before the twenty-third session closes the connection on it
//! (losing what was queued behind it until the follower reconnects): while a leader may be
//! such a node, do not ask followers for `ReadIndex` reads. After a `Peer::Client` hello it carries
//! [`FrameKind::Request`] and [`FrameKind::Response`] frames whose payloads the application
//! defines (e.g. the `kv_server` example's protocol).
//!
//! NB: the MAC authenticates the handshake only, not each frame: it keeps processes that do not
//! know the secret out of the cluster, not an attacker on the path. Use a private network or a
//! tunnel for that.

use std::io::{self, Read, Write};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::types::NodeId;

/// The version byte of every frame this code writes and the only one it reads.
pub const FRAME_VERSION: u8 = 1;
/// Bytes before a frame's payload: len, version, kind, crc.
pub const HEADER_BYTES: usize = 10;
/// The length of a handshake nonce.
pub const NONCE_BYTES: usize = 16;
/// The largest payload of a handshake frame ([`Challenge`], [`Hello`], [`Verdict`]), read
/// before the peer is authenticated. Real ones take under a hundred bytes (a refusal's reason
/// is a sentence); the limit keeps each unauthenticated connection from making the reader
/// allocate up to `TcpConfig::max_frame_bytes`.
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 4 << 10;
/// The largest payload a frame can carry: its `len` field is a `u32`.
pub const MAX_PAYLOAD_BYTES: usize = u32::MAX as usize;

/// What a frame's payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A [`Challenge`], acceptor to connector.
    Challenge = 1,
    /// A [`Hello`], connector to acceptor.
    Hello = 2,
    /// A [`Verdict`] on a hello, acceptor to connector.
    Verdict = 3,
    /// A postcard-encoded `Message<C>` between nodes.
    Message = 4,
    /// A client's request (payload defined by the application).
    Request = 5,
    /// The answer to a client's request (payload defined by the application).
    Response = 6,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => FrameKind::Challenge,
            2 => FrameKind::Hello,
            3 => FrameKind::Verdict,
            4 => FrameKind::Message,
            5 => FrameKind::Request,
            6 => FrameKind::Response,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload, checksum verified.
    pub payload: Vec<u8>,
}

/// Why bytes are not a valid frame. Every variant closes the connection.
#[derive(Debug)]
pub enum FrameError {
    /// The header announces more payload bytes than the receiver accepts (or, sending, the
    /// payload is more than a frame can carry, [`MAX_PAYLOAD_BYTES`]).
    TooLarge {
        /// The announced payload length.
        len: u64,
        /// The receiver's maximum.
        max: usize,
    },
    /// A version byte this code does not speak.
    Version(u8),
    /// A kind byte this code does not know.
    Kind(u8),
    /// The checksum does not match the bytes.
    Checksum {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the bytes received.
        actual: u32,
    },
    /// The payload is not a valid encoding of the type its kind names.
    Decode(String),
    /// Sending: the value cannot be encoded (its `Serialize` failed, e.g. a sequence of
    /// unknown length). Nothing was written.
    Encode(String),
    /// The frame is of another kind than the protocol expects here.
    Unexpected {
        /// The kind expected.
        expected: FrameKind,
        /// The kind received.
        got: FrameKind,
    },
    /// The connection failed or ended (a truncated frame ends here too).
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } if *max == MAX_PAYLOAD_BYTES => write!(
                f,
                "payload of {len} bytes is more than a frame can carry ({max}): not sent; keep messages smaller (if commands own heap data, StateMachine::command_size must report it, so that Config::max_command_bytes and max_append_bytes bound them)"
            ),
            FrameError::TooLarge { len, max } => write!(
                f,
                "frame of {len} payload bytes exceeds the maximum {max}; raise TcpConfig::max_frame_bytes on every node if such messages are legitimate (handshake frames have the fixed limit {MAX_HANDSHAKE_FRAME_BYTES}: a larger one is not from a compatible ferraft peer)"
            ),
            FrameError::Version(v) => {
                write!(f, "frame version {v}, this node speaks {FRAME_VERSION}: upgrade the older node")
            }
            FrameError::Kind(k) => write!(f, "unknown frame kind {k}: not a ferraft peer?"),
            FrameError::Checksum { expected, actual } => write!(
                f,
                "frame checksum {actual:#010x} does not match the header's {expected:#010x}: bytes corrupted in transit"
            ),
            FrameError::Decode(why) => write!(f, "frame payload does not decode: {why}"),
            FrameError::Encode(why) => write!(
                f,
                "value cannot be encoded, not sent: {why} (its Serialize must give sequence lengths up front)"
            ),
            FrameError::Unexpected { expected, got } => {
                write!(f, "expected a {expected:?} frame, got {got:?}")
            }
            FrameError::Io(e) => write!(f, "connection: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Appends one frame of `kind` around `payload` to `out`; refuses (appending nothing) a
/// payload over [`MAX_PAYLOAD_BYTES`].
///
/// NB: reachable: a message's size is bounded by `Config::max_append_bytes` only as far as
/// `StateMachine::command_size` tells the truth (its default, `size_of`, does not count heap
/// data), and an application's client payloads have no bound here at all.
pub fn encode_frame(kind: FrameKind, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = frame_len(payload.len())?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[FRAME_VERSION, kind as u8]);
    out.extend_from_slice(&checksum(FRAME_VERSION, kind as u8, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// A payload length as the header's `len`, if a frame can carry it.
fn frame_len(len: usize) -> Result<u32, FrameError> {
    u32::try_from(len).map_err(|_| FrameError::TooLarge { len: len as u64, max: MAX_PAYLOAD_BYTES })
}

/// Appends a frame of `kind` carrying `value`, postcard-encoded, to `out`; on an error appends
/// nothing.
pub fn encode_value<T: Serialize>(
    kind: FrameKind,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    // NB: fails on a user type whose Serialize errs or gives no sequence length up front.
    let payload = postcard::to_stdvec(value).map_err(|e| FrameError::Encode(e.to_string()))?;
    encode_frame(kind, &payload, out)
}

fn checksum(version: u8, kind: u8, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&[version, kind]), payload)
}

/// The parts of a header, checked except for the checksum.
struct Header {
    len: usize,
    kind: FrameKind,
    crc: u32,
}

fn parse_header(bytes: &[u8; HEADER_BYTES], max_payload: usize) -> Result<Header, FrameError> {
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if len as u64 > max_payload as u64 {
        return Err(FrameError::TooLarge { len: len.into(), max: max_payload });
    }
    if bytes[4] != FRAME_VERSION {
        return Err(FrameError::Version(bytes[4]));
    }
    let kind = FrameKind::from_byte(bytes[5]).ok_or(FrameError::Kind(bytes[5]))?;
    let crc = u32::from_le_bytes(bytes[6..10].try_into().expect("4 bytes"));
    Ok(Header { len: len as usize, kind, crc })
}

fn check(header: &Header, payload: &[u8]) -> Result<(), FrameError> {
    let actual = checksum(FRAME_VERSION, header.kind as u8, payload);
    if actual != header.crc {
        return Err(FrameError::Checksum { expected: header.crc, actual });
    }
    Ok(())
}

/// Decodes the first frame in `buf`: `Ok(None)` if `buf` holds only part of one (read more),
/// else the frame and the bytes it used. Never allocates more than the frame's payload, which
/// is at most `max_payload` bytes.
pub fn decode_frame(buf: &[u8], max_payload: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_BYTES>() else { return Ok(None) };
    let header = parse_header(head, max_payload)?;
    let Some(payload) = buf[HEADER_BYTES..].get(..header.len) else { return Ok(None) };
    check(&header, payload)?;
    let frame = Frame { kind: header.kind, payload: payload.to_vec() };
    Ok(Some((frame, HEADER_BYTES + header.len)))
}

/// Reads one frame from a blocking stream. The payload buffer is allocated only after the
/// header passed its checks, so at most `max_payload` bytes.
pub fn read_frame(reader: &mut impl Read, max_payload: usize) -> Result<Frame, FrameError> {
    let mut head = [0u8; HEADER_BYTES];
    reader.read_exact(&mut head)?;
    let header = parse_header(&head, max_payload)?;
    let mut payload = vec![0u8; header.len];
    reader.read_exact(&mut payload)?;
    check(&header, &payload)?;
    Ok(Frame { kind: header.kind, payload })
}

/// Reads one frame, which must be of `kind`, and decodes its payload.
pub fn read_value<T: for<'de> Deserialize<'de>>(
    reader: &mut impl Read,
    kind: FrameKind,
    max_payload: usize,
) -> Result<T, FrameError> {
    let frame = read_frame(reader, max_payload)?;
    if frame.kind != kind {
        return Err(FrameError::Unexpected { expected: kind, got: frame.kind });
    }
    decode_payload(&frame.payload)
}

/// Decodes a payload. Postcard reads lengths from the bytes but serde caps what it preallocates
/// from them, so a lying length costs at most a bounded allocation before decoding fails.
pub fn decode_payload<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(payload).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Writes one frame of `kind` carrying `value` and flushes. A value that cannot be framed
/// (see [`encode_value`]) is an `InvalidInput` error carrying the [`FrameError`], and nothing
/// is written.
pub fn write_value<T: Serialize>(
    writer: &mut impl Write,
    kind: FrameKind,
    value: &T,
) -> io::Result<()> {
    let mut out = Vec::new();
    encode_value(kind, value, &mut out)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    writer.write_all(&out)?;
    writer.flush()
}

/// The acceptor's first frame: a nonce the connector's MAC must cover (no replayed hellos).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Fresh random bytes.
    pub nonce: [u8; NONCE_BYTES],
}

/// Who is connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    /// A cluster node, which will send `Message` frames.
    Node(NodeId),
    /// A client of the application, which will send `Request` frames.
    Client,
}

/// The connector's handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster this connector belongs to; must equal the acceptor's.
    pub cluster_id: u64,
    /// Who it is.
    pub peer: Peer,
    /// HMAC-SHA256 over the nonce and the fields above ([`hello_mac`]); empty without a secret.
    pub mac: Vec<u8>,
}

/// The acceptor's answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The connection is open for its kind of traffic.
    Accepted,
    /// Refused; the acceptor closes the connection. The reason is for the connector's log.
    Refused(String),
}

type HmacSha256 = Hmac<Sha256>;

/// The MAC a hello must carry when the cluster has the shared `secret`: HMAC-SHA256 over a
/// domain tag, the nonce, the cluster id and the peer.
pub fn hello_mac(secret: &[u8], nonce: &[u8; NONCE_BYTES], cluster_id: u64, peer: Peer) -> Vec<u8> {
    mac_over(secret, nonce, cluster_id, peer).finalize().into_bytes().to_vec()
}

fn mac_over(secret: &[u8], nonce: &[u8; NONCE_BYTES], cluster_id: u64, peer: Peer) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"ferraft-hello-v1");
    mac.update(nonce);
    mac.update(&cluster_id.to_le_bytes());
    let peer_bytes = match peer {
        Peer::Node(id) => [&[1u8][..], &id.0.to_le_bytes()].concat(),
        Peer::Client => vec![2u8],
    };
    mac.update(&peer_bytes);
    mac
}

/// Whether `hello` carries the right MAC for `secret` and `nonce` (constant-time comparison).
pub fn verify_hello(secret: &[u8], nonce: &[u8; NONCE_BYTES], hello: &Hello) -> bool {
    mac_over(secret, nonce, hello.cluster_id, hello.peer).verify_slice(&hello.mac).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AppendEntries, Body, Entry, Message, Payload};
    use crate::types::{LogIndex, Term};
    use proptest::prelude::*;

    fn message() -> Message<u64> {
        let entries = vec![Entry { term: Term(2), payload: Payload::Command(7u64) }];
        let body = Body::AppendEntries(AppendEntries {
            prev_log_index: LogIndex(3),
            prev_log_term: Term(1),
            entries,
            leader_commit: LogIndex(3),
        });
        Message { from: NodeId(1), to: NodeId(2), term: Term(2), body }
    }

    fn message_frame() -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(FrameKind::Message, &message(), &mut out).unwrap();
        out
    }

    #[test]
    fn a_message_round_trips() {
        let bytes = message_frame();
        let (frame, used) = decode_frame(&bytes, 1 << 20).unwrap().expect("whole frame");
        assert_eq!(used, bytes.len());
        assert_eq!(frame.kind, FrameKind::Message);
        assert_eq!(decode_payload::<Message<u64>>(&frame.payload).unwrap(), message());
        let mut reader = &bytes[..];
        assert_eq!(read_frame(&mut reader, 1 << 20).unwrap(), frame);
    }

    #[test]
    fn every_truncation_asks_for_more() {
        let bytes = message_frame();
        for cut in 0..bytes.len() {
            assert!(decode_frame(&bytes[..cut], 1 << 20).unwrap().is_none(), "cut at {cut}");
            let mut reader = &bytes[..cut];
            assert!(matches!(read_frame(&mut reader, 1 << 20), Err(FrameError::Io(_))));
        }
    }

    #[test]
    fn a_frame_over_the_maximum_is_refused_from_its_header() {
        // Only a header announcing 4 GiB - 1: refused without waiting for (or allocating) it.
        let mut head = u32::MAX.to_le_bytes().to_vec();
        head.extend_from_slice(&[FRAME_VERSION, FrameKind::Message as u8, 0, 0, 0, 0]);
        let err = decode_frame(&head, 1024).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 4_294_967_295, max: 1024 }), "{err}");
        let mut reader = &head[..];
        assert!(matches!(read_frame(&mut reader, 1024), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn a_payload_a_frame_cannot_carry_is_refused_not_a_panic() {
        // NB: the length check alone (a 4 GiB buffer is too much for a test).
        assert_eq!(frame_len(MAX_PAYLOAD_BYTES).unwrap(), u32::MAX);
        let err = frame_len(MAX_PAYLOAD_BYTES + 1).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 4_294_967_296, max: MAX_PAYLOAD_BYTES }));
        assert!(err.to_string().contains("command_size"), "{err}");
    }

    /// A sequence that does not say its length up front: postcard cannot encode it.
    struct Unsized;

    impl Serialize for Unsized {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut seq = s.serialize_seq(None)?;
            seq.serialize_element(&1u8)?;
            seq.end()
        }
    }

    #[test]
    fn an_unencodable_value_is_an_error_and_writes_nothing() {
        let mut out = vec![9u8];
        let err = encode_value(FrameKind::Request, &Unsized, &mut out).unwrap_err();
        assert!(matches!(err, FrameError::Encode(_)), "{err}");
        assert_eq!(out, [9u8], "nothing appended");
        let mut sink = Vec::new();
        let err = write_value(&mut sink, FrameKind::Request, &Unsized).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.get_ref().and_then(|e| e.downcast_ref::<FrameError>()).is_some());
        assert!(sink.is_empty());
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut bytes = message_frame();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        assert!(matches!(decode_frame(&bytes, 1 << 20), Err(FrameError::Checksum { .. })));
    }

    #[test]
    fn bad_version_and_kind_are_named() {
        let mut bytes = message_frame();
        bytes[4] = 9;
        assert!(matches!(decode_frame(&bytes, 1 << 20), Err(FrameError::Version(9))));
        let mut bytes = message_frame();
        bytes[5] = 200;
        assert!(matches!(decode_frame(&bytes, 1 << 20), Err(FrameError::Kind(200))));
    }

    #[test]
    fn hello_mac_needs_the_secret_and_the_nonce() {
        let nonce = [7u8; NONCE_BYTES];
        let peer = Peer::Node(NodeId(3));
        let hello = Hello { cluster_id: 9, peer, mac: hello_mac(b"secret", &nonce, 9, peer) };
        assert!(verify_hello(b"secret", &nonce, &hello));
        assert!(!verify_hello(b"other", &nonce, &hello));
        assert!(!verify_hello(b"secret", &[8u8; NONCE_BYTES], &hello));
        let claims_other = Hello { peer: Peer::Node(NodeId(4)), ..hello.clone() };
        assert!(!verify_hello(b"secret", &nonce, &claims_other));
    }

    proptest! {
        /// Arbitrary bytes: the decoder never panics, and whatever it accepts is within bounds.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some((frame, used))) = decode_frame(&bytes, 256) {
                prop_assert!(frame.payload.len() <= 256 && used <= bytes.len());
                let _ = decode_payload::<Message<u64>>(&frame.payload);
                let _ = decode_payload::<Hello>(&frame.payload);
            }
            let mut reader = &bytes[..];
            let _ = read_frame(&mut reader, 256);
        }

        /// Valid headers around arbitrary payloads (so the checksum passes and the payload
        /// decoder sees the garbage): decoding the message fails cleanly or succeeds.
        #[test]
        fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = Vec::new();
            encode_frame(FrameKind::Message, &payload, &mut bytes).unwrap();
            let (frame, _) = decode_frame(&bytes, 1024).unwrap().expect("whole frame");
            let _ = decode_payload::<Message<u64>>(&frame.payload);
            let _ = decode_payload::<Message<crate::kv::KvCommand>>(&frame.payload);
            let _ = decode_payload::<Hello>(&frame.payload);
        }

        /// A valid frame cut anywhere, or followed by garbage, decodes as "need more" or as
        /// exactly the original frame.
        #[test]
        fn truncated_frames_ask_for_more(cut in 0usize..200, tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            let whole = message_frame();
            let mut bytes = whole[..cut.min(whole.len())].to_vec();
            if cut >= whole.len() {
                bytes.extend_from_slice(&tail);
            }
            match decode_frame(&bytes, 1 << 20).unwrap() {
                None => prop_assert!(cut < whole.len()),
                Some((_, used)) => prop_assert_eq!(used, whole.len()),
            }
        }
    }
}
