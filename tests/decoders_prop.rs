//! Property tests of every decoder that reads bytes from the network: the frame parser, the
//! postcard bodies, and the receive-side session state machine. docs/wire-format.md describes
//! the format these tests hold the code to; `doc_*` tests check the doc's examples against the
//! code that produces them.
//!
//! Run: `cargo test --release --test decoders_prop`.

use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use tribecast::transport::dedup::{DedupTable, LaneKey};
use tribecast::transport::rx_session::{
    Delivery, RxClose, RxOutput, RxSession, RxSettings, MAX_HANDSHAKE_LEN,
};
use tribecast::wire::frame::{
    body_hasher, encode_frame, encode_header, FLAG_ACK, FLAG_SYNC_ACK, HEADER_LEN, MAGIC,
    PROTOCOL_VERSION,
};
use tribecast::wire::{
    decode_body, encode_body, parse_frame, DataBody, Envelope, FrameError, FrameKind, Handshake,
    HandshakeAccept, Reason,
};
use tribecast::{Member, MemberId};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const ALL_KINDS: [FrameKind; 8] = [
    FrameKind::Handshake,
    FrameKind::HandshakeAccept,
    FrameKind::HandshakeRefuse,
    FrameKind::Data,
    FrameKind::Ack,
    FrameKind::FailAck,
    FrameKind::Leave,
    FrameKind::Ping,
];

fn frame_bytes(kind: FrameKind, flags: u16, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, kind, flags, seq, body);
    v
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bit by bit: an implementation
/// independent of crc32fast, so the tests check the documented checksum, not the library call.
fn crc32_ieee<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    let mut c = !0u32;
    for part in parts {
        for &b in part {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
    }
    !c
}

/// The error's variant, with `BadMagic`'s bytes dropped: a parser that sees fewer than four bytes
/// reports only those, so an incremental reader and a whole-buffer reader may differ there.
fn error_class(e: &FrameError) -> FrameError {
    match e {
        FrameError::BadMagic(_) => FrameError::BadMagic([0; 4]),
        other => other.clone(),
    }
}

/// The frame rules of docs/wire-format.md, read from the document rather than the code: the
/// verdict on `buf` and, for a frame, the bytes it uses. Checks run in the documented order:
/// magic (from the first byte on), then with 24 bytes version, kind, flags, length against the
/// limit, then with the whole body the checksum.
fn reference_parse(buf: &[u8], max: u32) -> Result<Option<usize>, FrameError> {
    let n = buf.len().min(4);
    if buf[..n] != b"TBCF"[..n] {
        let mut m = [0u8; 4];
        m[..n].copy_from_slice(&buf[..n]);
        return Err(FrameError::BadMagic(m));
    }
    if buf.len() < 24 {
        return Ok(None);
    }
    if buf[4] != 2 {
        return Err(FrameError::UnsupportedVersion(buf[4]));
    }
    if !(1..=9).contains(&buf[5]) {
        return Err(FrameError::UnknownKind(buf[5]));
    }
    let flags = u16::from_le_bytes([buf[6], buf[7]]);
    if flags & !0x7 != 0 {
        return Err(FrameError::UnknownFlags(flags));
    }
    let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let total = 24 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let expected = u32::from_le_bytes([buf[20], buf[21], buf[22], buf[23]]);
    let actual = crc32_ieee([&buf[24..total], &buf[..20]]);
    if expected != actual {
        return Err(FrameError::BadChecksum { expected, actual });
    }
    Ok(Some(total))
}

/// Checks `parse_frame` on one input against [`reference_parse`] (same verdict, same error
/// values, same length used) and checks what it promises about an accepted frame. Returns the
/// result for further checks.
fn check_parse(buf: &[u8], max: u32) -> Result<Option<(FrameTuple, usize)>, FrameError> {
    let r = parse_frame(buf, max);
    assert_eq!(
        r.as_ref().map(|o| o.as_ref().map(|(_, used)| *used)),
        reference_parse(buf, max)
            .as_ref()
            .map(|o| o.as_ref().copied()),
        "parse_frame disagrees with the documented rules on {buf:02x?} (max {max})"
    );
    if let Ok(Some((f, used))) = &r {
        let used = *used;
        assert!(used <= buf.len(), "used {used} > input {}", buf.len());
        assert_eq!(used, HEADER_LEN + f.body.len());
        assert_eq!(f.header.len as usize, f.body.len());
        // The body is borrowed from the input, right after the header.
        assert!(std::ptr::eq(f.body, &buf[HEADER_LEN..used]));
        assert_eq!(f.header.checksum.to_le_bytes(), buf[20..24]);
        // An accepted frame is canonical: re-encoding its fields gives back its exact bytes
        // (so kind, flags and seq were read from the right places).
        assert_eq!(
            frame_bytes(f.header.kind, f.header.flags, f.header.seq, f.body),
            &buf[..used]
        );
    }
    r.map(|o| {
        o.map(|(f, used)| {
            (
                (f.header.kind, f.header.flags, f.header.seq, f.body.to_vec()),
                used,
            )
        })
    })
}

type FrameTuple = (FrameKind, u16, u64, Vec<u8>);

/// Parses a whole buffer frame after frame: the frames and how the stream ended.
fn parse_all(buf: &[u8], max: u32) -> (Vec<FrameTuple>, Result<usize, FrameError>) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match check_parse(&buf[at..], max) {
            Ok(Some((f, used))) => {
                frames.push(f);
                at += used;
            }
            Ok(None) => return (frames, Ok(at)),
            Err(e) => return (frames, Err(e)),
        }
    }
}

/// Feeds `stream` in chunks, as a socket read loop does: append what arrived, parse all the
/// complete frames, keep the rest for the next read.
fn parse_incrementally(
    stream: &[u8],
    cuts: &[usize],
    max: u32,
) -> (Vec<FrameTuple>, Result<usize, FrameError>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut pending = Vec::new();
    let mut consumed = 0;
    let mut frames = Vec::new();
    let mut from = 0;
    for cut in cuts {
        pending.extend_from_slice(&stream[from..cut]);
        from = cut;
        let mut at = 0;
        loop {
            match check_parse(&pending[at..], max) {
                Ok(Some((f, used))) => {
                    frames.push(f);
                    at += used;
                }
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
        consumed += at;
        pending.drain(..at);
    }
    (frames, Ok(consumed))
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index),
    SetByte(Index, u8),
    Truncate(Index),
    Append(Vec<u8>),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// Overwrites the length field of the frame starting at one of the known frame offsets.
    SetLen(Index, u32),
}

fn arb_len_value() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(u32::MAX),
        any::<u32>(),
        0u32..64,
        (1u32 << 20)..(1u32 << 24),
        (u32::MAX - 64)..=u32::MAX,
    ]
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => any::<Index>().prop_map(Mutation::FlipBit),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Append),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<Index>(), arb_len_value()).prop_map(|(i, v)| Mutation::SetLen(i, v)),
    ]
}

fn mutate(buf: &mut Vec<u8>, frame_starts: &[usize], muts: &[Mutation]) {
    for m in muts {
        let len = buf.len();
        match m {
            Mutation::FlipBit(i) if len > 0 => {
                let bit = i.index(len * 8);
                buf[bit / 8] ^= 1 << (bit % 8);
            }
            Mutation::SetByte(i, b) if len > 0 => {
                let at = i.index(len);
                buf[at] = *b;
            }
            Mutation::Truncate(i) => buf.truncate(i.index(len + 1)),
            Mutation::Append(v) => buf.extend_from_slice(v),
            Mutation::Insert(i, v) => {
                let at = i.index(len + 1);
                buf.splice(at..at, v.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                buf.drain(at..(at + n).min(len));
            }
            Mutation::SetLen(i, v) if !frame_starts.is_empty() => {
                let start = frame_starts[i.index(frame_starts.len())];
                if start + 12 <= len {
                    buf[start + 8..start + 12].copy_from_slice(&v.to_le_bytes());
                }
            }
            _ => {}
        }
    }
}

fn arb_kind() -> impl Strategy<Value = FrameKind> {
    prop::sample::select(ALL_KINDS.to_vec())
}

fn arb_flags() -> impl Strategy<Value = u16> {
    0u16..=(FLAG_ACK | FLAG_SYNC_ACK)
}

fn arb_body(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max_len)
}

fn arb_frame() -> impl Strategy<Value = FrameTuple> {
    (arb_kind(), arb_flags(), any::<u64>(), arb_body(300))
}

/// Some max_frame_size values, including ones smaller than the generated bodies.
fn arb_max() -> impl Strategy<Value = u32> {
    prop_oneof![Just(4 * 1024 * 1024), Just(u32::MAX), 0u32..64, 64u32..4096,]
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        // flowinfo and scope_id are not encoded (see doc_postcard_facts), so only 0 round-trips.
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0
        ))),
    ]
}

fn arb_member() -> impl Strategy<Value = Member> {
    (any::<[u8; 16]>(), "\\PC{0,12}", arb_addr(), "\\PC{0,8}").prop_map(
        |(id, name, addr, domain)| Member {
            id: MemberId(id),
            name,
            addr,
            domain,
        },
    )
}

fn arb_handshake() -> impl Strategy<Value = Handshake> {
    (
        "\\PC{0,20}",
        any::<u8>(),
        arb_member(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(
            |(cluster, protocol_version, member, incarnation, lane)| Handshake {
                cluster,
                protocol_version,
                member,
                incarnation,
                lane,
            },
        )
}

/// The owned parts of an `Envelope` (it borrows its payload).
type EnvelopeParts = ([u8; 16], u64, u32, Vec<u8>);

fn arb_envelope_parts() -> impl Strategy<Value = EnvelopeParts> {
    (any::<[u8; 16]>(), any::<u64>(), any::<u32>(), arb_body(200))
}

fn envelope(p: &EnvelopeParts) -> Envelope<'_> {
    Envelope {
        sender: MemberId(p.0),
        msg_id: p.1,
        options: p.2,
        payload: &p.3,
    }
}

fn member_text_len(m: &Member) -> usize {
    m.name.len() + m.domain.len()
}

/// What every body decoder must guarantee on any input: no panic (the call returning at all),
/// a decoded value that round-trips, and no amplification: the canonical encoding of what was
/// decoded is never longer than the input (strings and byte strings come from the input).
fn check_bodies(bytes: &[u8]) {
    if let Ok(env) = decode_body::<Envelope>(bytes) {
        let range = bytes.as_ptr_range();
        let p = env.payload.as_ptr_range();
        assert!(
            range.start <= p.start && p.end <= range.end,
            "payload not borrowed from input"
        );
        let again = encode_body(&env);
        assert!(again.len() <= bytes.len());
        assert_eq!(decode_body::<Envelope>(&again).unwrap(), env);
    }
    if let Ok(hs) = decode_body::<Handshake>(bytes) {
        assert!(hs.cluster.len() + member_text_len(&hs.member) <= bytes.len());
        let again = encode_body(&hs);
        assert!(again.len() <= bytes.len());
        assert_eq!(decode_body::<Handshake>(&again).unwrap(), hs);
    }
    if let Ok(acc) = decode_body::<HandshakeAccept>(bytes) {
        assert!(member_text_len(&acc.member) <= bytes.len());
        let again = encode_body(&acc);
        assert!(again.len() <= bytes.len());
        assert_eq!(decode_body::<HandshakeAccept>(&again).unwrap(), acc);
    }
    if let Ok(r) = decode_body::<Reason>(bytes) {
        assert!(r.reason.len() < bytes.len());
        let again = encode_body(&r);
        assert!(again.len() <= bytes.len());
        assert_eq!(decode_body::<Reason>(&again).unwrap(), r);
    }
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

/// Byte strings that get past the early checks more often than uniform noise does.
fn arb_frame_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Noise.
        arb_body(100),
        // The magic, then noise.
        arb_body(100).prop_map(|tail| [&MAGIC[..], &tail].concat()),
        // A plausible header (magic, version, a kind, flags, a small length, any seq and crc),
        // then noise.
        (
            0u8..=8,
            0u16..=4,
            0u32..80,
            any::<u64>(),
            any::<u32>(),
            arb_body(100)
        )
            .prop_map(|(kind, flags, len, seq, crc, tail)| {
                let mut v = MAGIC.to_vec();
                v.push(PROTOCOL_VERSION);
                v.push(kind);
                v.extend_from_slice(&flags.to_le_bytes());
                v.extend_from_slice(&len.to_le_bytes());
                v.extend_from_slice(&seq.to_le_bytes());
                v.extend_from_slice(&crc.to_le_bytes());
                v.extend_from_slice(&tail);
                v
            }),
    ]
}

proptest! {
    /// parse_frame on any bytes: no panic, and every outcome agrees with an independent reading
    /// of the bytes (see check_parse). Any prefix of the input either asks for more bytes or
    /// reaches the same verdict as the whole input.
    #[test]
    fn parse_frame_arbitrary_bytes(buf in arb_frame_like_bytes(), max in arb_max(), cut in any::<Index>()) {
        let whole = check_parse(&buf, max);
        let prefix = check_parse(&buf[..cut.index(buf.len() + 1)], max);
        match (prefix, whole) {
            (Ok(None), _) => {}
            (Ok(Some(p)), Ok(Some(w))) => prop_assert_eq!(p, w),
            (Err(p), Err(w)) => prop_assert_eq!(error_class(&p), error_class(&w)),
            (p, w) => prop_assert!(false, "prefix gave {:?}, whole input {:?}", p, w),
        }
    }

    /// A valid frame parses back to what was encoded, alone or followed by other bytes; every
    /// strict prefix of it asks for more bytes.
    #[test]
    fn valid_frame_round_trips(
        (kind, flags, seq, body) in arb_frame(),
        tail in arb_body(40),
        cut in any::<Index>(),
    ) {
        let bytes = frame_bytes(kind, flags, seq, &body);
        prop_assert_eq!(bytes.len(), HEADER_LEN + body.len());
        let max = body.len() as u32;
        let expect = Some(((kind, flags, seq, body.clone()), bytes.len()));
        prop_assert_eq!(check_parse(&bytes, max), Ok(expect.clone()));
        let mut with_tail = bytes.clone();
        with_tail.extend_from_slice(&tail);
        prop_assert_eq!(check_parse(&with_tail, max), Ok(expect));
        let cut = cut.index(bytes.len());
        prop_assert_eq!(check_parse(&bytes[..cut], max), Ok(None));
        // One byte over the limit is refused.
        if max > 0 {
            prop_assert_eq!(
                parse_frame(&bytes, max - 1),
                Err(FrameError::TooLarge { len: max, max: max - 1 })
            );
        }
    }

    /// The send path hashes a body once and stamps a header per destination: each stamped
    /// frame is identical to a frame encoded from scratch and parses with its own seq.
    #[test]
    fn hash_once_stamp_many(
        kind in arb_kind(),
        flags in arb_flags(),
        seqs in prop::collection::vec(any::<u64>(), 1..5),
        body in arb_body(300),
    ) {
        let hasher = body_hasher(&body);
        for seq in seqs {
            let mut stamped = encode_header(kind, flags, seq, body.len(), &hasher).to_vec();
            stamped.extend_from_slice(&body);
            prop_assert_eq!(&stamped, &frame_bytes(kind, flags, seq, &body));
            let parsed = check_parse(&stamped, u32::MAX).unwrap().unwrap();
            prop_assert_eq!(parsed.0 .2, seq);
        }
    }

    /// Any single bit flip in a valid frame is detected, except that a flip raising the length
    /// field makes the parser wait for bytes that never come: it never yields a frame.
    #[test]
    fn single_bit_flip_never_accepted(
        (kind, flags, seq, body) in arb_frame(),
        bit in any::<Index>(),
        max in prop_oneof![Just(u32::MAX), Just(4u32 << 20), 300u32..1024],
    ) {
        let mut bytes = frame_bytes(kind, flags, seq, &body);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        check_flipped(&bytes, bit, body.len(), max)?;
    }

    /// A frame mangled in any way (flips, overwrites, truncation, insertion, deletion, garbage,
    /// lengths up to u32::MAX) never panics the parser, and whatever it returns is consistent
    /// with the bytes (check_parse). Any frame it still accepts is canonical and checksummed.
    #[test]
    fn mutated_frames(
        frames in prop::collection::vec(arb_frame(), 1..4),
        muts in prop::collection::vec(arb_mutation(), 1..5),
        max in arb_max(),
        cut in any::<Index>(),
    ) {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for (kind, flags, seq, body) in &frames {
            starts.push(buf.len());
            encode_frame(&mut buf, *kind, *flags, *seq, body);
        }
        mutate(&mut buf, &starts, &muts);
        let (whole_frames, whole_end) = parse_all(&buf, max);
        // Parsing stops at the first error or incomplete frame, and never runs past the input.
        if let Ok(at) = whole_end {
            prop_assert!(at <= buf.len());
        }
        // Fed in two pieces, the stream gives the same frames and the same verdict.
        let (inc_frames, inc_end) = parse_incrementally(&buf, &[cut.index(buf.len() + 1)], max);
        prop_assert_eq!(inc_frames, whole_frames);
        prop_assert_eq!(inc_end.map_err(|e| error_class(&e)), whole_end.map_err(|e| error_class(&e)));
    }

    /// A header announcing more than max_frame_size is refused from the 24 header bytes alone
    /// (nothing else is given to the parser), and the same with the whole frame present.
    #[test]
    fn too_large_from_header_alone(
        kind in arb_kind(),
        flags in arb_flags(),
        seq in any::<u64>(),
        max in prop_oneof![0u32..4096, Just(4u32 << 20), (4u32 << 20)..u32::MAX],
        over in prop_oneof![Just(1u32), 1u32..1000, any::<u32>()],
        tail in arb_body(64),
    ) {
        let len = max.saturating_add(over.max(1));
        prop_assume!(len > max);
        let header = encode_header(kind, flags, seq, len as usize, &body_hasher(&[]));
        let expect = FrameError::TooLarge { len, max };
        prop_assert_eq!(parse_frame(&header, max).err(), Some(expect.clone()));
        let mut longer = header.to_vec();
        longer.extend_from_slice(&tail);
        prop_assert_eq!(parse_frame(&longer, max).err(), Some(expect));
        // At or under the limit, the same 24 bytes just ask for the body.
        let ok_len = len - over.max(1);
        if ok_len > 0 {
            let header = encode_header(kind, flags, seq, ok_len as usize, &body_hasher(&[]));
            prop_assert_eq!(parse_frame(&header, max), Ok(None));
        }
    }

    /// A stream of frames split at arbitrary points and fed like a socket read loop yields
    /// exactly the frames of the whole stream, which are the frames encoded; a garbage tail is
    /// reported the same way by both.
    #[test]
    fn split_stream_equals_whole(
        frames in prop::collection::vec(arb_frame(), 0..8),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        tail in prop_oneof![Just(Vec::new()), arb_frame_like_bytes()],
    ) {
        let mut stream = Vec::new();
        for (kind, flags, seq, body) in &frames {
            encode_frame(&mut stream, *kind, *flags, *seq, body);
        }
        let valid_len = stream.len();
        stream.extend_from_slice(&tail);
        let cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        let max = 4 << 20;
        let (whole, whole_end) = parse_all(&stream, max);
        let (inc, inc_end) = parse_incrementally(&stream, &cuts, max);
        prop_assert_eq!(&whole[..frames.len()], &frames[..]);
        if tail.is_empty() {
            prop_assert_eq!(whole.len(), frames.len());
            prop_assert_eq!(whole_end.clone(), Ok(valid_len));
        }
        prop_assert_eq!(inc, whole);
        prop_assert_eq!(inc_end.map_err(|e| error_class(&e)), whole_end.map_err(|e| error_class(&e)));
    }
}

/// The verdict allowed for a valid frame (body of `body_len` bytes) with bit `bit` flipped.
fn check_flipped(bytes: &[u8], bit: usize, body_len: usize, max: u32) -> Result<(), TestCaseError> {
    match check_parse(bytes, max) {
        Err(_) => {}
        Ok(None) => {
            // Only a flip in the length field that raises it can leave the parser waiting.
            let new_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
            prop_assert!((64..96).contains(&bit), "bit {} flip gave Ok(None)", bit);
            prop_assert!(new_len > body_len);
        }
        Ok(Some(f)) => prop_assert!(false, "bit {} flip accepted as {:?}", bit, f),
    }
    Ok(())
}

/// Every single bit flip of a few frames, exhaustively.
#[test]
fn every_single_bit_flip_is_caught() {
    let samples = [
        frame_bytes(FrameKind::Ack, 0, 7, &[]),
        frame_bytes(FrameKind::Data, FLAG_ACK, 1, b"x"),
        frame_bytes(
            FrameKind::Data,
            FLAG_ACK | FLAG_SYNC_ACK,
            u64::MAX,
            &[0xA5; 200],
        ),
        frame_bytes(FrameKind::Handshake, 0, 0, &(0..=255).collect::<Vec<u8>>()),
    ];
    for frame in &samples {
        let body_len = frame.len() - HEADER_LEN;
        for bit in 0..frame.len() * 8 {
            let mut b = frame.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            check_flipped(&b, bit, body_len, u32::MAX).unwrap();
            check_flipped(&b, bit, body_len, 300).unwrap();
        }
    }
}

/// The bit-by-bit reference CRC is CRC-32/IEEE (check value of "123456789"), and frames carry
/// it over body || header[0..20], little-endian.
#[test]
fn checksum_is_crc32_ieee_over_body_then_header() {
    assert_eq!(crc32_ieee([&b"123456789"[..]]), 0xCBF4_3926);
    let f = frame_bytes(FrameKind::Data, 0, 3, b"body");
    let crc = crc32_ieee([&f[24..], &f[..20]]);
    assert_eq!(f[20..24], crc.to_le_bytes());
    // Not header-then-body.
    assert_ne!(f[20..24], crc32_ieee([&f[..20], &f[24..]]).to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

proptest! {
    /// Every body decoder on any bytes: no panic, round-trip of whatever decodes, no
    /// amplification (check_bodies).
    #[test]
    fn bodies_arbitrary_bytes(bytes in arb_body(200)) {
        check_bodies(&bytes);
    }

    /// Valid values round-trip; every strict prefix of an encoding is an error; a mangled
    /// encoding never panics and whatever it decodes to is consistent (check_bodies).
    #[test]
    fn envelope_round_trip_and_mutations(
        parts in arb_envelope_parts(),
        cut in any::<Index>(),
        muts in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        let env = envelope(&parts);
        let bytes = encode_body(&env);
        prop_assert_eq!(decode_body::<Envelope>(&bytes), Ok(env.clone()));
        prop_assert!(decode_body::<Envelope>(&bytes[..cut.index(bytes.len())]).is_err());
        let mut m = bytes.clone();
        mutate(&mut m, &[], &muts);
        check_bodies(&m);
    }

    #[test]
    fn handshake_round_trip_and_mutations(
        hs in arb_handshake(),
        cut in any::<Index>(),
        muts in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        let bytes = encode_body(&hs);
        prop_assert_eq!(decode_body::<Handshake>(&bytes), Ok(hs.clone()));
        prop_assert!(decode_body::<Handshake>(&bytes[..cut.index(bytes.len())]).is_err());
        let mut m = bytes.clone();
        mutate(&mut m, &[], &muts);
        check_bodies(&m);
    }

    #[test]
    fn handshake_accept_round_trip_and_mutations(
        member in arb_member(),
        incarnation in any::<u64>(),
        cut in any::<Index>(),
        muts in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        let acc = HandshakeAccept { member, incarnation };
        let bytes = encode_body(&acc);
        prop_assert_eq!(decode_body::<HandshakeAccept>(&bytes), Ok(acc.clone()));
        prop_assert!(decode_body::<HandshakeAccept>(&bytes[..cut.index(bytes.len())]).is_err());
        let mut m = bytes.clone();
        mutate(&mut m, &[], &muts);
        check_bodies(&m);
    }

    #[test]
    fn reason_round_trip_and_mutations(
        reason in "\\PC{0,100}",
        cut in any::<Index>(),
        muts in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        let r = Reason { reason };
        let bytes = encode_body(&r);
        prop_assert_eq!(decode_body::<Reason>(&bytes), Ok(r.clone()));
        prop_assert!(decode_body::<Reason>(&bytes[..cut.index(bytes.len())]).is_err());
        let mut m = bytes.clone();
        mutate(&mut m, &[], &muts);
        check_bodies(&m);
    }
}

proptest! {
    /// The sender's zero-copy data body (`DataBody`: encoded fields, then the payload) is byte
    /// for byte the postcard encoding of the `Envelope`, its hasher is the body's CRC state, and
    /// a frame stamped from it parses and decodes back to the envelope.
    #[test]
    fn data_body_is_the_envelope_encoding(parts in arb_envelope_parts(), big in 0usize..3, seq in any::<u64>()) {
        // Payload lengths around the varint steps too.
        let mut parts = parts;
        parts.3.resize(parts.3.len() + [0, 128, 16384][big], 0x5a);
        let env = envelope(&parts);
        let b = DataBody::new(env.sender, env.msg_id, env.options, env.payload);
        let mut joined = b.head().to_vec();
        joined.extend_from_slice(b.payload);
        prop_assert_eq!(&joined, &encode_body(&env));
        prop_assert_eq!(b.len(), joined.len());
        prop_assert_eq!(b.hasher().finalize(), body_hasher(&joined).finalize());
        let mut frame = encode_header(FrameKind::Data, FLAG_ACK, seq, b.len(), &b.hasher()).to_vec();
        frame.extend_from_slice(&joined);
        let ((kind, _, got_seq, body), used) = check_parse(&frame, u32::MAX).unwrap().unwrap();
        prop_assert_eq!((kind, got_seq, used), (FrameKind::Data, seq, frame.len()));
        prop_assert_eq!(decode_body::<Envelope>(&body), Ok(env));
    }
}

// ---------------------------------------------------------------------------------------------
// RxSession
// ---------------------------------------------------------------------------------------------

const CLUSTER: &str = "c";

/// The receiving member's incarnation, in every `HandshakeAccept` it sends.
const LOCAL_INCARNATION: u64 = 0x1ca1;

fn local_member() -> Member {
    Member {
        id: MemberId([0xEE; 16]),
        name: "local".into(),
        addr: "127.0.0.1:4000".parse().unwrap(),
        domain: String::new(),
    }
}

fn peer_member(n: u8) -> Member {
    Member {
        id: MemberId([n; 16]),
        name: format!("peer{n}"),
        addr: SocketAddr::from(([127, 0, 0, 1], 4000 + u16::from(n))),
        domain: String::new(),
    }
}

/// Checks what one `on_bytes` call produced against the input it was given.
fn check_rx_output(
    buf: &[u8],
    result: &Result<usize, RxClose>,
    out: &RxOutput,
    limit_after_call: u32,
) -> Result<(), TestCaseError> {
    let consumed = match result {
        Ok(n) => {
            prop_assert!(*n <= buf.len());
            // What is left is an incomplete frame: parsing it asks for more bytes.
            prop_assert_eq!(parse_frame(&buf[*n..], limit_after_call), Ok(None));
            *n
        }
        Err(_) => buf.len(),
    };
    let mut last_end = 0;
    for d in &out.deliveries {
        prop_assert!(d.start >= HEADER_LEN && d.start <= d.end && d.end <= consumed);
        prop_assert!(
            d.start >= last_end + HEADER_LEN,
            "deliveries overlap or are out of order"
        );
        last_end = d.end;
        // Each delivery is the body of a valid data frame found at that place in the input ...
        let (f, used) = parse_frame(&buf[d.start - HEADER_LEN..], u32::MAX)
            .unwrap()
            .unwrap();
        prop_assert_eq!(used, d.end - d.start + HEADER_LEN);
        // ... or of a read-test ping, which a worker answers.
        let want = if d.ping {
            FrameKind::Ping
        } else {
            FrameKind::Data
        };
        prop_assert_eq!(f.header.kind, want);
        prop_assert_eq!(f.header.seq, d.seq);
        prop_assert_eq!(f.header.flags & FLAG_SYNC_ACK != 0, d.sync_ack);
    }
    // The reply is whole, valid frames of the kinds a receiver sends, so writing it before a
    // close is safe.
    let (replies, end) = parse_all(&out.reply, u32::MAX);
    prop_assert_eq!(end, Ok(out.reply.len()));
    for (kind, _, _, body) in &replies {
        match kind {
            FrameKind::HandshakeAccept => {
                let acc = decode_body::<HandshakeAccept>(body).unwrap();
                prop_assert_eq!(acc.member, local_member());
                prop_assert_eq!(acc.incarnation, LOCAL_INCARNATION);
            }
            FrameKind::HandshakeRefuse => match result {
                Err(RxClose::Refused(r)) => {
                    prop_assert_eq!(&decode_body::<Reason>(body).unwrap().reason, r)
                }
                other => prop_assert!(false, "refusal sent but result {:?}", other),
            },
            FrameKind::Ack => prop_assert!(body.is_empty()),
            k => prop_assert!(false, "receiver replied with {:?}", k),
        }
    }
    if out.leave {
        prop_assert_eq!(result, &Err(RxClose::Leave));
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Hello {
    Good,
    WrongCluster(String),
    WrongVersion(u8),
    /// A handshake frame whose body is a valid encoding minus its last byte.
    Truncated,
    /// A handshake padded past the 16 KiB pre-handshake limit.
    Oversized,
    Missing,
}

#[derive(Clone, Debug)]
enum Op {
    Data {
        seq: u64,
        flags: u16,
        body: Vec<u8>,
    },
    Leave,
    /// A liveness ping, answered at once (flags 0) or by a worker (FLAG_SYNC_ACK).
    Ping {
        seq: u64,
        flags: u16,
    },
    /// A frame kind the sender never sends on its own connection.
    Stray(FrameKind, Vec<u8>),
}

#[derive(Clone, Debug)]
struct Conn {
    hello: Hello,
    /// Small ranges, so connections often share a lane (a reconnect, a retry).
    peer: u8,
    incarnation: u64,
    lane: u32,
    ops: Vec<Op>,
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    prop_oneof![
        12 => Just(Hello::Good),
        1 => "[a-z]{0,6}"
            .prop_filter("another cluster", |c| c != CLUSTER)
            .prop_map(Hello::WrongCluster),
        1 => any::<u8>()
            .prop_filter("another version", |v| *v != PROTOCOL_VERSION)
            .prop_map(Hello::WrongVersion),
        1 => Just(Hello::Truncated),
        1 => Just(Hello::Oversized),
        1 => Just(Hello::Missing),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (0u64..12, arb_flags(), arb_body(60))
            .prop_map(|(seq, flags, body)| Op::Data { seq, flags, body }),
        1 => Just(Op::Leave),
        2 => (0u64..12, arb_flags()).prop_map(|(seq, flags)| Op::Ping { seq, flags }),
        1 => (
            prop::sample::select(vec![
                FrameKind::Handshake,
                FrameKind::HandshakeAccept,
                FrameKind::HandshakeRefuse,
                FrameKind::Ack,
                FrameKind::FailAck,
            ]),
            arb_body(10)
        )
            .prop_map(|(k, b)| Op::Stray(k, b)),
    ]
}

fn arb_conn() -> impl Strategy<Value = Conn> {
    (
        arb_hello(),
        1u8..=2,
        7u64..=8,
        0u32..=1,
        prop::collection::vec(arb_op(), 0..12),
    )
        .prop_map(|(hello, peer, incarnation, lane, ops)| Conn {
            hello,
            peer,
            incarnation,
            lane,
            ops,
        })
}

fn arb_rx_max() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(4u32 << 20),
        Just(MAX_HANDSHAKE_LEN),
        Just(40u32),
        Just(100u32),
    ]
}

/// One encoded frame of a connection and what the receiver should make of it.
struct Planned {
    kind: FrameKind,
    flags: u16,
    seq: u64,
    start: usize,
    body_len: usize,
    hello: Option<Hello>,
}

/// Encodes a connection's frames, recording where each one is.
fn encode_conn(c: &Conn) -> (Vec<u8>, Vec<Planned>) {
    let mut buf = Vec::new();
    let mut plan = Vec::new();
    let mut push = |buf: &mut Vec<u8>, kind, flags, seq, body: &[u8], hello| {
        plan.push(Planned {
            kind,
            flags,
            seq,
            start: buf.len(),
            body_len: body.len(),
            hello,
        });
        encode_frame(buf, kind, flags, seq, body);
    };
    let mut hs = Handshake {
        cluster: CLUSTER.into(),
        protocol_version: PROTOCOL_VERSION,
        member: peer_member(c.peer),
        incarnation: c.incarnation,
        lane: c.lane,
    };
    let body = match &c.hello {
        Hello::Good => Some(encode_body(&hs)),
        Hello::WrongCluster(name) => {
            hs.cluster = name.clone();
            Some(encode_body(&hs))
        }
        Hello::WrongVersion(v) => {
            hs.protocol_version = *v;
            Some(encode_body(&hs))
        }
        Hello::Truncated => {
            let mut b = encode_body(&hs);
            b.pop();
            Some(b)
        }
        Hello::Oversized => {
            // postcard ignores bytes after the value, so this would decode if it were let in.
            let mut b = encode_body(&hs);
            b.resize(MAX_HANDSHAKE_LEN as usize + 1, 0);
            Some(b)
        }
        Hello::Missing => None,
    };
    if let Some(body) = body {
        push(
            &mut buf,
            FrameKind::Handshake,
            0,
            0,
            &body,
            Some(c.hello.clone()),
        );
    }
    for op in &c.ops {
        match op {
            Op::Data { seq, flags, body } => {
                push(&mut buf, FrameKind::Data, *flags, *seq, body, None)
            }
            Op::Leave => push(&mut buf, FrameKind::Leave, 0, 0, &[], None),
            Op::Ping { seq, flags } => push(&mut buf, FrameKind::Ping, *flags, *seq, &[], None),
            Op::Stray(k, body) => push(&mut buf, *k, 0, 0, body, None),
        }
    }
    (buf, plan)
}

#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Ok,
    TooLarge { len: u32, max: u32 },
    Protocol,
    Refused,
    Leave,
}

/// What the model predicts for one connection.
#[derive(Debug, Default)]
struct Predicted {
    deliveries: Vec<Delivery>,
    /// Frames the session itself answers with: (kind, seq).
    replies: Vec<(FrameKind, u64)>,
    /// Duplicates of synchronized-ack frames, answered later with the original's outcome.
    reacks: Vec<u64>,
    hello: bool,
    duplicates: u64,
}

/// The receive rules of docs/wire-format.md, written from the document: what one connection
/// should deliver and answer, and how it should end. `last` is the model of the dedup table
/// (a lane never seen has last 0), shared by the connections of one test.
fn model_conn(
    c: &Conn,
    plan: &[Planned],
    max: u32,
    last: &mut HashMap<LaneKey, u64>,
) -> (Predicted, Expected) {
    let mut m = Predicted::default();
    let mut ready: Option<LaneKey> = None;
    for p in plan {
        let limit = if ready.is_some() {
            max
        } else {
            max.min(16 * 1024)
        };
        if p.body_len as u64 > u64::from(limit) {
            let e = Expected::TooLarge {
                len: p.body_len as u32,
                max: limit,
            };
            return (m, e);
        }
        let Some(key) = ready else {
            match (&p.kind, &p.hello) {
                (FrameKind::Handshake, Some(Hello::Good)) => {
                    m.replies.push((FrameKind::HandshakeAccept, 0));
                    m.hello = true;
                    ready = Some(LaneKey {
                        member: MemberId([c.peer; 16]),
                        incarnation: c.incarnation,
                        lane: c.lane,
                    });
                    continue;
                }
                (FrameKind::Handshake, Some(Hello::WrongCluster(_) | Hello::WrongVersion(_))) => {
                    m.replies.push((FrameKind::HandshakeRefuse, 0));
                    return (m, Expected::Refused);
                }
                _ => return (m, Expected::Protocol),
            }
        };
        match p.kind {
            FrameKind::Data => {
                let sync = p.flags & FLAG_SYNC_ACK != 0;
                let ack = p.flags & FLAG_ACK != 0;
                let prev = last.get(&key).copied().unwrap_or(0);
                if p.seq > prev {
                    last.insert(key, p.seq);
                    if ack && !sync {
                        m.replies.push((FrameKind::Ack, p.seq));
                    }
                    m.deliveries.push(Delivery {
                        start: p.start + HEADER_LEN,
                        end: p.start + HEADER_LEN + p.body_len,
                        seq: p.seq,
                        sync_ack: sync,
                        ping: false,
                    });
                } else {
                    m.duplicates += 1;
                    if sync {
                        m.reacks.push(p.seq);
                    } else if ack {
                        m.replies.push((FrameKind::Ack, p.seq));
                    }
                }
            }
            FrameKind::Ping => {
                // Not numbered for duplicates; answered at once, or by a worker for the read test.
                if p.flags & FLAG_SYNC_ACK != 0 {
                    m.deliveries.push(Delivery {
                        start: p.start + HEADER_LEN,
                        end: p.start + HEADER_LEN + p.body_len,
                        seq: p.seq,
                        sync_ack: true,
                        ping: true,
                    });
                } else {
                    m.replies.push((FrameKind::Ack, p.seq));
                }
            }
            FrameKind::Leave => return (m, Expected::Leave),
            _ => return (m, Expected::Protocol),
        }
    }
    (m, Expected::Ok)
}

fn classify(r: &Result<usize, RxClose>, len: usize) -> Expected {
    match r {
        Ok(n) => {
            assert_eq!(*n, len, "a stream of whole frames is consumed whole");
            Expected::Ok
        }
        Err(RxClose::Frame(FrameError::TooLarge { len, max })) => Expected::TooLarge {
            len: *len,
            max: *max,
        },
        Err(RxClose::Frame(e)) => panic!("valid frames refused: {e}"),
        Err(RxClose::Protocol(_)) => Expected::Protocol,
        Err(RxClose::Refused(_)) => Expected::Refused,
        Err(RxClose::Leave) => Expected::Leave,
        Err(RxClose::Auth(e)) => panic!("a plaintext session never authenticates: {e}"),
    }
}

/// What a socket loop around a session observes: delivered bodies, replies, events, the end.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    delivered: Vec<(u64, bool, Vec<u8>)>,
    reply: Vec<u8>,
    hello: Option<Member>,
    leave: bool,
    duplicates: u64,
    reacks: Vec<u64>,
    end: Result<usize, RxClose>,
}

/// Runs a session over `stream` delivered in chunks split at `cuts`, keeping unconsumed bytes
/// between calls the way the receiver's read loop does.
fn run_session(
    stream: &[u8],
    cuts: &[usize],
    max: u32,
    dedup: &mut DedupTable,
) -> Result<Observed, TestCaseError> {
    let local = local_member();
    let s = RxSettings {
        cluster: CLUSTER,
        local: &local,
        incarnation: LOCAL_INCARNATION,
        max_frame_size: max,
        key: None,
    };
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut rx = RxSession::default();
    let mut obs = Observed {
        delivered: Vec::new(),
        reply: Vec::new(),
        hello: None,
        leave: false,
        duplicates: 0,
        reacks: Vec::new(),
        end: Ok(0),
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut consumed = 0;
    let mut out = RxOutput::default();
    let mut from = 0;
    for cut in cuts {
        pending.extend_from_slice(&stream[from..cut]);
        from = cut;
        out.clear();
        let r = rx.on_bytes(&mut pending.to_vec(), &s, dedup, &mut out);
        let limit = if rx.peer().is_some() {
            max
        } else {
            max.min(MAX_HANDSHAKE_LEN)
        };
        check_rx_output(&pending, &r, &out, limit)?;
        for d in &out.deliveries {
            obs.delivered
                .push((d.seq, d.sync_ack, pending[d.start..d.end].to_vec()));
        }
        obs.reply.extend_from_slice(&out.reply);
        if let Some(m) = out.hello.take() {
            prop_assert!(obs.hello.is_none(), "two hellos on one connection");
            prop_assert_eq!(rx.peer(), Some(&m));
            obs.hello = Some(m);
        }
        obs.leave |= out.leave;
        obs.duplicates += out.duplicates;
        obs.reacks.extend_from_slice(&out.reacks);
        match r {
            Ok(n) => {
                consumed += n;
                pending.drain(..n);
            }
            Err(e) => {
                // The caller writes the reply and closes: nothing more is fed.
                obs.end = Err(e);
                return Ok(obs);
            }
        }
    }
    obs.end = Ok(consumed);
    Ok(obs)
}

proptest! {
    /// on_bytes on any bytes: no panic, consumption within the input, delivery ranges inside
    /// the input, well-formed replies; nothing is delivered without a handshake.
    #[test]
    fn rx_arbitrary_bytes(buf in arb_frame_like_bytes(), max in arb_rx_max()) {
        let local = local_member();
        let s = RxSettings { cluster: CLUSTER, local: &local, incarnation: LOCAL_INCARNATION, max_frame_size: max, key: None };
        let mut out = RxOutput::default();
        let mut rx = RxSession::default();
        let r = rx.on_bytes(&mut buf.to_vec(), &s, &mut DedupTable::new(8), &mut out);
        check_rx_output(&buf, &r, &out, max.min(MAX_HANDSHAKE_LEN))?;
        prop_assert!(out.hello.is_some() || out.deliveries.is_empty());
        prop_assert!(out.hello.is_some() || out.reply.is_empty() || matches!(r, Err(RxClose::Refused(_))));
    }

    /// Connections of valid frames (good and bad handshakes, duplicates and retries across
    /// connections that share a lane, gaps, leave, stray kinds, frames over the limit) give
    /// exactly the deliveries, replies and closes the documented rules predict.
    #[test]
    fn rx_follows_the_documented_rules(
        conns in prop::collection::vec(arb_conn(), 1..4),
        max in arb_rx_max(),
    ) {
        let local = local_member();
        let s = RxSettings { cluster: CLUSTER, local: &local, incarnation: LOCAL_INCARNATION, max_frame_size: max, key: None };
        let mut dedup = DedupTable::new(1024);
        let mut model = HashMap::new();
        for c in &conns {
            let (bytes, plan) = encode_conn(c);
            let (want, end) = model_conn(c, &plan, max, &mut model);
            let mut out = RxOutput::default();
            let r = RxSession::default().on_bytes(&mut bytes.to_vec(), &s, &mut dedup, &mut out);
            check_rx_output(&bytes, &r, &out, max)?;
            prop_assert_eq!(classify(&r, bytes.len()), end);
            prop_assert_eq!(&out.deliveries, &want.deliveries);
            let (got, _) = parse_all(&out.reply, u32::MAX);
            let got: Vec<(FrameKind, u64)> = got.into_iter().map(|(k, _, seq, _)| (k, seq)).collect();
            prop_assert_eq!(got, want.replies);
            prop_assert_eq!(&out.reacks, &want.reacks);
            prop_assert_eq!(out.hello.clone(), want.hello.then(|| peer_member(c.peer)));
            prop_assert_eq!(out.duplicates, want.duplicates);
        }
    }

    /// The same connections fed in arbitrary chunks produce the same deliveries, replies,
    /// events and close as when fed whole.
    #[test]
    fn rx_split_stream_equals_whole(
        conn in arb_conn(),
        cuts in prop::collection::vec(any::<Index>(), 0..10),
        max in arb_rx_max(),
    ) {
        let (bytes, _) = encode_conn(&conn);
        let cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        let whole = run_session(&bytes, &[], max, &mut DedupTable::new(64))?;
        let split = run_session(&bytes, &cuts, max, &mut DedupTable::new(64))?;
        prop_assert_eq!(split, whole);
    }

    /// Mangled connections: no panic, and every call's output is consistent with its input
    /// (check_rx_output, run in every call of run_session). Fed whole or in pieces, the
    /// deliveries and replies agree; the close reason agrees up to BadMagic's partial bytes.
    #[test]
    fn rx_mutated_streams(
        conn in arb_conn(),
        muts in prop::collection::vec(arb_mutation(), 1..5),
        cuts in prop::collection::vec(any::<Index>(), 0..6),
        max in arb_rx_max(),
    ) {
        let (mut bytes, plan) = encode_conn(&conn);
        let starts: Vec<usize> = plan.iter().map(|p| p.start).collect();
        mutate(&mut bytes, &starts, &muts);
        let cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        let whole = run_session(&bytes, &[], max, &mut DedupTable::new(64))?;
        let split = run_session(&bytes, &cuts, max, &mut DedupTable::new(64))?;
        prop_assert_eq!(&split.delivered, &whole.delivered);
        prop_assert_eq!(&split.reply, &whole.reply);
        prop_assert_eq!(&split.hello, &whole.hello);
        prop_assert_eq!(&split.reacks, &whole.reacks);
        let norm = |e: &Result<usize, RxClose>| match e {
            Err(RxClose::Frame(f)) => Err(RxClose::Frame(error_class(f))),
            other => other.clone(),
        };
        prop_assert_eq!(norm(&split.end), norm(&whole.end));
    }

    /// Before the handshake a header announcing more than 16 KiB (or max_frame_size, if lower)
    /// is refused from its 24 bytes alone; after it, one announcing more than max_frame_size.
    #[test]
    fn rx_too_large_from_header_alone(
        max in prop_oneof![Just(4u32 << 20), 1024u32..(1 << 20)],
        over in 1u32..1_000_000,
        kind in arb_kind(),
    ) {
        let local = local_member();
        let s = RxSettings { cluster: CLUSTER, local: &local, incarnation: LOCAL_INCARNATION, max_frame_size: max, key: None };
        let pre = max.min(MAX_HANDSHAKE_LEN);
        let header = encode_header(kind, 0, 0, (pre + over) as usize, &body_hasher(&[]));
        let r = RxSession::default().on_bytes(&mut header.to_vec(), &s, &mut DedupTable::new(4), &mut RxOutput::default());
        prop_assert_eq!(r, Err(RxClose::Frame(FrameError::TooLarge { len: pre + over, max: pre })));

        let mut rx = RxSession::default();
        let mut dedup = DedupTable::new(4);
        let (hello, _) = encode_conn(&Conn { hello: Hello::Good, peer: 1, incarnation: 1, lane: 0, ops: vec![] });
        prop_assert_eq!(rx.on_bytes(&mut hello.to_vec(), &s, &mut dedup, &mut RxOutput::default()), Ok(hello.len()));
        let header = encode_header(FrameKind::Data, FLAG_ACK, 1, (max + over) as usize, &body_hasher(&[]));
        let r = rx.on_bytes(&mut header.to_vec(), &s, &mut dedup, &mut RxOutput::default());
        prop_assert_eq!(r, Err(RxClose::Frame(FrameError::TooLarge { len: max + over, max })));
        // A header within the limit only asks for its body.
        let header = encode_header(FrameKind::Data, FLAG_ACK, 1, max as usize, &body_hasher(&[]));
        let mut rx = RxSession::default();
        prop_assert_eq!(rx.on_bytes(&mut hello.to_vec(), &s, &mut dedup, &mut RxOutput::default()), Ok(hello.len()));
        prop_assert_eq!(rx.on_bytes(&mut header.to_vec(), &s, &mut dedup, &mut RxOutput::default()), Ok(0));
    }
}

// ---------------------------------------------------------------------------------------------
// docs/wire-format.md: its examples are produced by this code
// ---------------------------------------------------------------------------------------------

const DOC: &str = include_str!("../docs/wire-format.md");

fn hex_dump(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        s.push_str(&format!("{:04x}:", i * 16));
        for b in line {
            s.push_str(&format!(" {b:02x}"));
        }
        s.push('\n');
    }
    s
}

fn doc_member() -> Member {
    Member {
        id: MemberId([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]),
        name: "node-a".into(),
        addr: "127.0.0.1:4000".parse().unwrap(),
        domain: String::new(),
    }
}

fn doc_frames() -> [(&'static str, Vec<u8>); 3] {
    let hs = Handshake {
        cluster: "tribecast".into(),
        protocol_version: PROTOCOL_VERSION,
        member: doc_member(),
        incarnation: 300,
        lane: 0,
    };
    let env = Envelope {
        sender: doc_member().id,
        msg_id: 1,
        options: 2,
        payload: b"hello",
    };
    [
        (
            "handshake",
            frame_bytes(FrameKind::Handshake, 0, 0, &encode_body(&hs)),
        ),
        (
            "data",
            frame_bytes(FrameKind::Data, FLAG_ACK, 1, &encode_body(&env)),
        ),
        ("ack", frame_bytes(FrameKind::Ack, 0, 1, &[])),
    ]
}

/// The hex dumps in the document are what the code produces for the values the document
/// names. On failure this prints the dumps to paste into the document.
#[test]
fn doc_hex_dumps_match_code() {
    let mut missing = Vec::new();
    for (name, bytes) in doc_frames() {
        let dump = hex_dump(&bytes);
        println!("{name} frame ({} bytes):\n{dump}", bytes.len());
        if !DOC.contains(&dump) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/wire-format.md lacks the dumps of {missing:?}"
    );
}

/// The postcard facts the document states, on concrete values.
#[test]
fn doc_postcard_facts() {
    // Unsigned integers above u8 are LEB128 varints, 7 bits per byte, low bits first.
    assert_eq!(postcard::to_stdvec(&127u32).unwrap(), [0x7f]);
    assert_eq!(postcard::to_stdvec(&300u64).unwrap(), [0xac, 0x02]);
    assert_eq!(postcard::to_stdvec(&4000u16).unwrap(), [0xa0, 0x1f]);
    assert_eq!(postcard::to_stdvec(&u64::MAX).unwrap().len(), 10);
    // u8 is one raw byte.
    assert_eq!(postcard::to_stdvec(&200u8).unwrap(), [200]);
    // Strings and byte slices: varint length, then the bytes.
    assert_eq!(
        encode_body(&Reason {
            reason: "ab".into()
        }),
        [0x02, b'a', b'b']
    );
    // MemberId: 16 raw bytes, no length.
    assert_eq!(postcard::to_stdvec(&MemberId([9; 16])).unwrap(), [9; 16]);
    // SocketAddr: variant index (0 = V4, 1 = V6), the address octets, the port as a varint.
    let v4: SocketAddr = "10.0.0.1:80".parse().unwrap();
    assert_eq!(postcard::to_stdvec(&v4).unwrap(), [0, 10, 0, 0, 1, 80]);
    let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 4000, 5, 7));
    let mut expect = vec![1];
    expect.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    expect.extend_from_slice(&[0xa0, 0x1f]);
    assert_eq!(postcard::to_stdvec(&v6).unwrap(), expect);
    // ... so an IPv6 scope id and flow label do not survive the trip.
    let back: SocketAddr = postcard::from_bytes(&expect).unwrap();
    assert_eq!(back, SocketAddr::from((Ipv6Addr::LOCALHOST, 4000)));
    // A varint may be written with redundant continuation bytes and still decodes.
    assert_eq!(postcard::from_bytes::<u32>(&[0x80, 0x00]).unwrap(), 0);
    // A varint longer than its type allows is refused.
    assert!(postcard::from_bytes::<u32>(&[0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
    // A variant index other than 0 or 1 is refused.
    assert!(postcard::from_bytes::<SocketAddr>(&[2, 10, 0, 0, 1, 80]).is_err());
    // decode_body refuses bytes after the value.
    let mut padded = encode_body(&Reason {
        reason: "ab".into(),
    });
    padded.extend_from_slice(b"junk");
    assert!(decode_body::<Reason>(&padded).is_err());
}

/// The receive rules the document states that the properties do not pin by themselves.
#[test]
fn doc_receiver_facts() {
    let local = local_member();
    let s = RxSettings {
        cluster: CLUSTER,
        local: &local,
        incarnation: LOCAL_INCARNATION,
        max_frame_size: 4 << 20,
        key: None,
    };
    // A header of another protocol version closes the connection, after a HandshakeRefuse
    // (in this node's version) that says why: parse_frame rejects the header before the body
    // is read.
    let mut hs = encode_conn(&Conn {
        hello: Hello::Good,
        peer: 1,
        incarnation: 1,
        lane: 0,
        ops: vec![],
    })
    .0;
    hs[4] = 1; // the first version: attributes in postcard, no compression flag
    let mut out = RxOutput::default();
    let r = RxSession::default().on_bytes(&mut hs.to_vec(), &s, &mut DedupTable::new(4), &mut out);
    assert_eq!(
        r,
        Err(RxClose::Refused(
            "protocol version 1 is not this node's 2".into()
        ))
    );
    let (replies, _) = parse_all(&out.reply, u32::MAX);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, FrameKind::HandshakeRefuse);
    // Numbers start at 1: a lane never seen has last 0, so a data frame numbered 0 is a
    // duplicate even as the first frame of a lane (dropped, and acked if it asks).
    let mut bytes = encode_conn(&Conn {
        hello: Hello::Good,
        peer: 1,
        incarnation: 1,
        lane: 0,
        ops: vec![],
    })
    .0;
    encode_frame(&mut bytes, FrameKind::Data, FLAG_ACK, 0, b"zero");
    let mut out = RxOutput::default();
    let r =
        RxSession::default().on_bytes(&mut bytes.to_vec(), &s, &mut DedupTable::new(4), &mut out);
    assert_eq!(r, Ok(bytes.len()));
    assert!(out.deliveries.is_empty());
    assert_eq!(out.duplicates, 1);
    let (replies, _) = parse_all(&out.reply, u32::MAX);
    assert_eq!(
        replies.last().map(|f| (f.0, f.2)),
        Some((FrameKind::Ack, 0))
    );
}

// ---------------------------------------------------------------------------------------------
// Sealed input (cluster key)
// ---------------------------------------------------------------------------------------------

mod sealed_input {
    use super::*;
    use tribecast::crypto::ClusterKey;
    use tribecast::membership::record::{self, Kind, McastRecord};
    use tribecast::wire::frame::FLAG_SEALED;
    use tribecast::wire::sealed::seal_frames;

    fn key() -> ClusterKey {
        ClusterKey::parse("3f1c0e6d2a9b8c7d6e5f40312233445566778899aabbccddeeff001122334455")
            .expect("key")
    }

    /// A keyed session that has sent its challenge, and the stream a key holder sends next
    /// (sealed handshake, then `payloads` as data frames numbered from 1), in plain and sealed.
    fn keyed_connection(payloads: &[Vec<u8>]) -> (RxSession, Vec<u8>, Vec<usize>) {
        let k = key();
        let local = local_member();
        let s = RxSettings {
            cluster: CLUSTER,
            local: &local,
            incarnation: LOCAL_INCARNATION,
            max_frame_size: 1 << 20,
            key: Some(&k),
        };
        let client = [7u8; 32];
        let mut hello = Vec::new();
        encode_frame(&mut hello, FrameKind::Handshake, FLAG_SEALED, 0, &client);
        let mut rx = RxSession::default();
        let mut out = RxOutput::default();
        let used = rx
            .on_bytes(&mut hello, &s, &mut DedupTable::new(8), &mut out)
            .expect("opening handshake");
        assert_eq!(used, hello.len());
        let (f, _) = parse_frame(&out.reply, 1 << 20)
            .expect("challenge")
            .expect("whole");
        assert_eq!(f.header.kind, FrameKind::Challenge);
        let server: [u8; 32] = f.body.try_into().expect("32-byte nonce");
        let (mut sealer, _, _, _) = k.connection_keys(&client, &server);
        let mut plain = Vec::new();
        let hs = Handshake {
            cluster: CLUSTER.into(),
            protocol_version: PROTOCOL_VERSION,
            member: peer_member(),
            incarnation: 3,
            lane: 1,
        };
        encode_frame(&mut plain, FrameKind::Handshake, 0, 0, &encode_body(&hs));
        for (i, p) in payloads.iter().enumerate() {
            let env = encode_body(&Envelope {
                sender: peer_member().id,
                msg_id: i as u64,
                options: 0,
                payload: p,
            });
            encode_frame(&mut plain, FrameKind::Data, FLAG_ACK, i as u64 + 1, &env);
        }
        let mut sealed = Vec::new();
        seal_frames(&mut sealer, &plain, false, &mut sealed).expect("seal");
        let mut starts = Vec::new();
        let mut at = 0;
        while let Ok(Some((_, used))) = parse_frame(&sealed[at..], 1 << 20) {
            starts.push(at);
            at += used;
        }
        (rx, sealed, starts)
    }

    fn peer_member() -> Member {
        Member {
            id: MemberId([0x33; 16]),
            name: "peer".into(),
            addr: "127.0.0.1:4001".parse().expect("addr"),
            domain: String::new(),
        }
    }

    /// Feeds `stream` in pieces; returns the payloads delivered and whether it ended in error.
    fn feed(mut rx: RxSession, stream: &[u8], cut: usize) -> (Vec<Vec<u8>>, bool) {
        let k = key();
        let local = local_member();
        let s = RxSettings {
            cluster: CLUSTER,
            local: &local,
            incarnation: LOCAL_INCARNATION,
            max_frame_size: 1 << 20,
            key: Some(&k),
        };
        let mut dedup = DedupTable::new(8);
        let mut pending: Vec<u8> = Vec::new();
        let mut delivered = Vec::new();
        for piece in [&stream[..cut], &stream[cut..]] {
            pending.extend_from_slice(piece);
            let mut out = RxOutput::default();
            let r = rx.on_bytes(&mut pending, &s, &mut dedup, &mut out);
            for d in &out.deliveries {
                let env: Envelope = decode_body(&pending[d.start..d.end]).expect("authentic body");
                delivered.push(env.payload.to_vec());
            }
            match r {
                Ok(used) => {
                    pending.drain(..used);
                }
                Err(_) => return (delivered, true),
            }
        }
        (delivered, false)
    }

    proptest! {
        /// A sealed stream mangled in any way never panics the keyed session, and whatever it
        /// still delivers is genuine: the first messages the key holder sent, in order.
        #[test]
        fn mutated_sealed_streams(
            payloads in prop::collection::vec(arb_body(200), 1..5),
            muts in prop::collection::vec(arb_mutation(), 1..5),
            cut in any::<Index>(),
        ) {
            let (rx, mut stream, starts) = keyed_connection(&payloads);
            mutate(&mut stream, &starts, &muts);
            let (got, _) = feed(rx, &stream, cut.index(stream.len() + 1));
            prop_assert!(got.len() <= payloads.len());
            prop_assert_eq!(&got[..], &payloads[..got.len()]);
        }

        /// Arbitrary bytes after the challenge: no panic, nothing delivered.
        #[test]
        fn arbitrary_bytes_to_a_keyed_session(bytes in arb_frame_like_bytes(), cut in any::<Index>()) {
            let (rx, _, _) = keyed_connection(&[]);
            let (got, _) = feed(rx, &bytes, cut.index(bytes.len() + 1));
            prop_assert!(got.is_empty());
        }

        /// A sealed membership datagram mangled in any way: no panic, and if it still opens it
        /// says what was sent (only the unchecked flag bits may differ).
        #[test]
        fn mutated_sealed_datagrams(
            alive in any::<u64>(),
            stamp in any::<u64>(),
            muts in prop::collection::vec(arb_mutation(), 1..4),
        ) {
            let dk = key().datagram_key();
            let rec = McastRecord { cluster: CLUSTER.into(), member: peer_member(), alive_ms: alive };
            let mut bytes = record::encode_sealed(Kind::Heartbeat, &rec, &dk, stamp).expect("seal");
            mutate(&mut bytes, &[], &muts);
            if let Ok((kind, s, r)) = record::open(&bytes, Some(&dk)) {
                prop_assert_eq!((kind, s, r), (Kind::Heartbeat, stamp, rec));
            }
            let _ = record::open(&bytes, None);
            let _ = record::decode(&bytes);
        }

        /// Arbitrary bytes as a datagram to a keyed node: no panic.
        #[test]
        fn arbitrary_datagrams_with_a_key(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let dk = key().datagram_key();
            let mut b = bytes.clone();
            if b.len() >= 8 {
                b[..4].copy_from_slice(b"TBCM");
                b[4] = PROTOCOL_VERSION;
                b[6] = 1;
            }
            // Random bytes never authenticate (a forgery succeeds with probability 2^-128).
            prop_assert!(record::open(&b, Some(&dk)).is_err());
            let _ = record::open(&bytes, Some(&dk));
        }
    }

    /// Without mutation the keyed stream delivers everything, whatever the cut.
    #[test]
    fn sealed_stream_control() {
        let payloads = vec![b"a".to_vec(), vec![9; 300], Vec::new()];
        for cut in [0, 1, 23, 24, 100, usize::MAX] {
            let (rx, stream, _) = keyed_connection(&payloads);
            let (got, err) = feed(rx, &stream, cut.min(stream.len()));
            assert_eq!((got, err), (payloads.clone(), false), "cut {cut}");
        }
        // The same stream replayed to another connection (another challenge) delivers nothing.
        let (_, stream, _) = keyed_connection(&payloads);
        let (rx, _, _) = keyed_connection(&payloads);
        assert_eq!(feed(rx, &stream, stream.len()), (Vec::new(), true));
    }
}

/// The sealed examples of docs/wire-format.md ("Sealed connections"): key, nonces and frames
/// named there, dumps produced by this code.
fn doc_sealed_frames() -> [(&'static str, Vec<u8>); 4] {
    use tribecast::crypto::ClusterKey;
    use tribecast::wire::frame::FLAG_SEALED;
    use tribecast::wire::sealed::seal_frame;
    let key = ClusterKey::parse("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
        .expect("doc key");
    let (nc, nr) = ([0x11u8; 32], [0x22u8; 32]);
    let (mut s2r, _, mut r2s, _) = key.connection_keys(&nc, &nr);
    let hs = Handshake {
        cluster: "tribecast".into(),
        protocol_version: PROTOCOL_VERSION,
        member: doc_member(),
        incarnation: 300,
        lane: 0,
    };
    let env = Envelope {
        sender: doc_member().id,
        msg_id: 1,
        options: 2,
        payload: b"hello",
    };
    let mut scratch = Vec::new();
    // Counter 0 of each direction: the sealed handshake and its sealed answer.
    seal_frame(
        &mut s2r,
        &mut scratch,
        FrameKind::Handshake,
        0,
        0,
        &encode_body(&hs),
    )
    .expect("seal");
    let accept = encode_body(&HandshakeAccept {
        member: doc_member(),
        incarnation: 301,
    });
    seal_frame(
        &mut r2s,
        &mut scratch,
        FrameKind::HandshakeAccept,
        0,
        0,
        &accept,
    )
    .expect("seal");
    let mut data = Vec::new();
    seal_frame(
        &mut s2r,
        &mut data,
        FrameKind::Data,
        FLAG_ACK,
        1,
        &encode_body(&env),
    )
    .expect("seal");
    let mut ack = Vec::new();
    seal_frame(&mut r2s, &mut ack, FrameKind::Ack, 0, 1, &[]).expect("seal");
    [
        (
            "opening handshake",
            frame_bytes(FrameKind::Handshake, FLAG_SEALED, 0, &nc),
        ),
        (
            "challenge",
            frame_bytes(FrameKind::Challenge, FLAG_SEALED, 0, &nr),
        ),
        ("sealed data", data),
        ("sealed ack", ack),
    ]
}

#[test]
fn doc_sealed_hex_dumps_match_code() {
    let mut missing = Vec::new();
    for (name, bytes) in doc_sealed_frames() {
        let dump = hex_dump(&bytes);
        println!("{name} frame ({} bytes):\n{dump}", bytes.len());
        if !DOC.contains(&dump) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/wire-format.md lacks the dumps of {missing:?}"
    );
}
