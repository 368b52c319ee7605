//! The frame: a fixed 24-byte header followed by a body.
//!
//! Unlike Tribes' `FLT2002 … TLF2003` framing (no version, no checksum, no size limit), every frame
//! here carries a protocol version, a hard length limit checked before any buffering, and a
//! CRC-32 over header and body. Byte layout: docs/wire-format.md.

use std::fmt;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"TBCF";
/// Wire protocol version spoken by this build; a frame with another version is refused.
pub const PROTOCOL_VERSION: u8 = 2;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 24;

/// What a frame carries. The numeric values are part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// First frame on every connection: cluster name, version, sending member.
    Handshake = 1,
    /// The receiver accepted the handshake; body names the receiving member and its incarnation.
    HandshakeAccept = 2,
    /// The receiver refused the handshake; body says why. The connection is then closed.
    HandshakeRefuse = 3,
    /// An application message (an envelope).
    Data = 4,
    /// Positive acknowledgement of the data frame with the same sequence number.
    Ack = 5,
    /// Negative acknowledgement: the listener failed (Tribes' FAIL_ACK); body says why.
    FailAck = 6,
    /// The sending member is leaving the group (graceful stop).
    Leave = 7,
    /// Liveness check (Tribes' TcpPingInterceptor / TcpFailureDetector probe): answered with an
    /// `Ack` of the same sequence number, by the event loop, or with `FLAG_SYNC_ACK` by a worker
    /// (the read test). Not numbered for duplicates: a ping is never delivered to listeners.
    Ping = 8,
    /// Keyed connections only: the receiver's fresh nonce, its answer to the sender's opening
    /// `Handshake` (docs/SECURITY.md). Never sent on a connection without a cluster key.
    Challenge = 9,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Option<FrameKind> {
        Some(match v {
            1 => FrameKind::Handshake,
            2 => FrameKind::HandshakeAccept,
            3 => FrameKind::HandshakeRefuse,
            4 => FrameKind::Data,
            5 => FrameKind::Ack,
            6 => FrameKind::FailAck,
            7 => FrameKind::Leave,
            8 => FrameKind::Ping,
            9 => FrameKind::Challenge,
            _ => return None,
        })
    }
}

/// Header flag: the sender waits for an `Ack` once the frame has been read (use-ack).
pub const FLAG_ACK: u16 = 0x1;
/// Header flag: the `Ack` is sent only after the listener processed the frame (synchronized ack).
pub const FLAG_SYNC_ACK: u16 = 0x2;
/// Header flag: the body is AES-256-GCM ciphertext and tag under the connection's keys (or, on
/// the two opening frames of a keyed connection, a nonce): set on every frame of a connection
/// whose members share a cluster key, on none otherwise.
pub const FLAG_SEALED: u16 = 0x4;
/// Flags this version understands; others are refused so a newer peer cannot be misread.
const KNOWN_FLAGS: u16 = FLAG_ACK | FLAG_SYNC_ACK | FLAG_SEALED;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub flags: u16,
    pub len: u32,
    /// Per-lane sequence number of a data frame (and of its ack); 0 on control frames.
    pub seq: u64,
    pub checksum: u32,
}

/// Why bytes from the network are not a valid frame. Each closes the connection it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The first four bytes are not [`MAGIC`]: not a tribecast peer, or a corrupted stream.
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    UnsupportedVersion(u8),
    /// A frame kind this version does not know.
    UnknownKind(u8),
    /// Flag bits this version does not know.
    UnknownFlags(u16),
    /// The announced body length exceeds the configured maximum frame size.
    TooLarge { len: u32, max: u32 },
    /// The body does not match its checksum.
    BadChecksum { expected: u32, actual: u32 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadMagic(m) => write!(f, "bad magic {m:02x?} (not a tribecast frame)"),
            FrameError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported protocol version {v} (this node speaks {PROTOCOL_VERSION})"
                )
            }
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::UnknownFlags(x) => write!(f, "unknown frame flags {x:#06x}"),
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds max_frame_size {max}")
            }
            FrameError::BadChecksum { expected, actual } => {
                write!(
                    f,
                    "checksum mismatch (header {expected:#010x}, body {actual:#010x})"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Writes the 24 header bytes for a frame whose body hashes to `body_crc` (a hasher fed with the
/// body only). Taking the body's hasher lets one send hash its body once and still stamp a
/// different sequence number for every destination.
pub fn encode_header(
    kind: FrameKind,
    flags: u16,
    seq: u64,
    body_len: usize,
    body_crc: &crc32fast::Hasher,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..20].copy_from_slice(&header_prefix(kind, flags, seq, body_len));
    let mut crc = body_crc.clone();
    crc.update(&h[0..20]);
    h[20..24].copy_from_slice(&crc.finalize().to_le_bytes());
    h
}

/// Header bytes 0..20 (everything but the checksum): what a sealed frame authenticates.
pub fn header_prefix(kind: FrameKind, flags: u16, seq: u64, body_len: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = PROTOCOL_VERSION;
    h[5] = kind as u8;
    h[6..8].copy_from_slice(&flags.to_le_bytes());
    // Callers bound bodies by max_frame_size (a u32) before encoding.
    h[8..12].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    h
}

/// Hashes a body for [`encode_header`].
pub fn body_hasher(body: &[u8]) -> crc32fast::Hasher {
    let mut crc = crc32fast::Hasher::new();
    crc.update(body);
    crc
}

/// Appends one whole frame (header and body) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, kind: FrameKind, flags: u16, seq: u64, body: &[u8]) {
    let header = encode_header(kind, flags, seq, body.len(), &body_hasher(body));
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
}

/// Checks a header. Everything here is decided from the first 24 bytes, so an oversized or
/// foreign stream is refused before its body is buffered.
pub fn decode_header(
    bytes: &[u8; HEADER_LEN],
    max_frame_size: u32,
) -> Result<FrameHeader, FrameError> {
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if bytes[4] != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(bytes[4]));
    }
    let kind = FrameKind::from_u8(bytes[5]).ok_or(FrameError::UnknownKind(bytes[5]))?;
    let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FrameError::UnknownFlags(flags));
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if len > max_frame_size {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_size,
        });
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[12..20]);
    let checksum = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    Ok(FrameHeader {
        kind,
        flags,
        len,
        seq: u64::from_le_bytes(seq),
        checksum,
    })
}

/// A complete frame borrowed from a receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub body: &'a [u8],
}

/// Parses the frame at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the frame and the number of bytes it used.
/// Never allocates and never reads past `buf`, so any byte string is safe to feed it.
pub fn parse_frame(
    buf: &[u8],
    max_frame_size: u32,
) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        // Refuse a foreign stream as soon as its first bytes show it, not after 24 bytes.
        let n = buf.len().min(4);
        if buf[..n] != MAGIC[..n] {
            let mut m = [0u8; 4];
            m[..n].copy_from_slice(&buf[..n]);
            return Err(FrameError::BadMagic(m));
        }
        return Ok(None);
    };
    let header = decode_header(head, max_frame_size)?;
    let total = HEADER_LEN + header.len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[HEADER_LEN..total];
    let mut crc = body_hasher(body);
    crc.update(&head[0..20]);
    let actual = crc.finalize();
    if actual != header.checksum {
        return Err(FrameError::BadChecksum {
            expected: header.checksum,
            actual,
        });
    }
    Ok(Some((Frame { header, body }, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, flags: u16, seq: u64, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_frame(&mut v, kind, flags, seq, body);
        v
    }

    #[test]
    fn round_trip() {
        let bytes = frame(FrameKind::Data, FLAG_ACK, 42, b"hello");
        let (f, used) = parse_frame(&bytes, 1024).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(f.header.kind, FrameKind::Data);
        assert_eq!(f.header.flags, FLAG_ACK);
        assert_eq!(f.header.seq, 42);
        assert_eq!(f.body, b"hello");
    }

    #[test]
    fn partial_input_waits_for_more() {
        let bytes = frame(FrameKind::Data, 0, 1, &[7u8; 100]);
        for cut in 0..bytes.len() {
            assert_eq!(parse_frame(&bytes[..cut], 1024), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_refused_early() {
        assert!(matches!(
            parse_frame(b"GET / HTTP/1.1\r\n", 1024),
            Err(FrameError::BadMagic(_))
        ));
        assert!(matches!(
            parse_frame(b"X", 1024),
            Err(FrameError::BadMagic(_))
        ));
    }

    #[test]
    fn oversized_is_refused_from_header_alone() {
        let bytes = frame(FrameKind::Data, 0, 1, &[0u8; 2000]);
        assert_eq!(
            parse_frame(&bytes[..HEADER_LEN], 1000),
            Err(FrameError::TooLarge {
                len: 2000,
                max: 1000
            })
        );
    }

    #[test]
    fn corruption_is_detected() {
        let mut bytes = frame(FrameKind::Data, 0, 9, b"payload");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            parse_frame(&bytes, 1024),
            Err(FrameError::BadChecksum { .. })
        ));
        let mut bytes = frame(FrameKind::Data, 0, 9, b"payload");
        bytes[12] ^= 1; // the sequence number is covered too
        assert!(matches!(
            parse_frame(&bytes, 1024),
            Err(FrameError::BadChecksum { .. })
        ));
    }

    #[test]
    fn version_kind_and_flags_are_checked() {
        let mut bytes = frame(FrameKind::Data, 0, 1, b"x");
        bytes[4] = 9;
        assert_eq!(
            parse_frame(&bytes, 1024),
            Err(FrameError::UnsupportedVersion(9))
        );
        let mut bytes = frame(FrameKind::Data, 0, 1, b"x");
        bytes[5] = 200;
        assert_eq!(parse_frame(&bytes, 1024), Err(FrameError::UnknownKind(200)));
        let mut bytes = frame(FrameKind::Data, 0, 1, b"x");
        bytes[7] = 0x80;
        assert_eq!(
            parse_frame(&bytes, 1024),
            Err(FrameError::UnknownFlags(0x8000))
        );
    }
}
