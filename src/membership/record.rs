//! Multicast membership datagrams (Tribes' `MemberImpl` heartbeat and `BABY-ALEX` shutdown
//! packet), versioned and checksummed.
//!
//! Layout: magic `TBCM` (4), protocol version (1), kind (1: heartbeat, 2: leave), two zero
//! bytes, CRC-32 of the body (4, little-endian), then the postcard body [`McastRecord`]. A
//! member's record is only ever sent by that member: nodes do not relay what they heard.

use crate::member::Member;
use crate::wire::frame::PROTOCOL_VERSION;
use crate::wire::{decode_body, encode_body};
use serde::{Deserialize, Serialize};
use std::fmt;

pub const MAGIC: [u8; 4] = *b"TBCM";
const HEADER: usize = 12;
/// Largest datagram accepted or sent (UDP over IPv4).
pub const MAX_DATAGRAM: usize = 65_507;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Heartbeat = 1,
    /// Sent once on a graceful stop: others drop the member at once.
    Leave = 2,
}

/// What a heartbeat says about its sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct McastRecord {
    /// Records of another cluster are ignored.
    pub cluster: String,
    /// Name (jvmRoute), receiver address and port, unique id, domain.
    pub member: Member,
    /// Milliseconds since the member's membership started (Tribes' `memberAliveTime`).
    pub alive_ms: u64,
}

/// Why a datagram was ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    TooShort(usize),
    BadMagic,
    UnsupportedVersion(u8),
    UnknownKind(u8),
    BadChecksum,
    Body(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::TooShort(n) => write!(f, "datagram of {n} bytes is too short"),
            RecordError::BadMagic => write!(f, "not a tribecast membership datagram"),
            RecordError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "protocol version {v} is not this node's {PROTOCOL_VERSION}"
                )
            }
            RecordError::UnknownKind(k) => write!(f, "unknown datagram kind {k}"),
            RecordError::BadChecksum => write!(f, "checksum mismatch"),
            RecordError::Body(e) => write!(f, "undecodable record: {e}"),
        }
    }
}

pub fn encode(kind: Kind, record: &McastRecord) -> Vec<u8> {
    let body = encode_body(record);
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Checks and decodes a datagram. Any byte string is safe to pass.
pub fn decode(bytes: &[u8]) -> Result<(Kind, McastRecord), RecordError> {
    if bytes.len() < HEADER {
        return Err(RecordError::TooShort(bytes.len()));
    }
    if bytes[..4] != MAGIC {
        return Err(RecordError::BadMagic);
    }
    if bytes[4] != PROTOCOL_VERSION {
        return Err(RecordError::UnsupportedVersion(bytes[4]));
    }
    let kind = match bytes[5] {
        1 => Kind::Heartbeat,
        2 => Kind::Leave,
        k => return Err(RecordError::UnknownKind(k)),
    };
    let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let body = &bytes[HEADER..];
    if crc32fast::hash(body) != crc {
        return Err(RecordError::BadChecksum);
    }
    let record = decode_body(body).map_err(|e| RecordError::Body(e.to_string()))?;
    Ok((kind, record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::MemberId;

    fn record() -> McastRecord {
        McastRecord {
            cluster: "c".into(),
            member: Member {
                id: MemberId([4; 16]),
                name: "n".into(),
                addr: ([127, 0, 0, 1], 4000).into(),
                domain: "d".into(),
            },
            alive_ms: 1234,
        }
    }

    #[test]
    fn round_trip_and_every_corruption_is_refused() {
        let bytes = encode(Kind::Heartbeat, &record());
        assert_eq!(decode(&bytes), Ok((Kind::Heartbeat, record())));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if i == 6 || i == 7 {
                    continue; // reserved bytes are not checked
                }
                assert!(decode(&b).is_err(), "flip at {i}:{bit} accepted");
            }
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err());
        }
        assert!(matches!(
            decode(b"garbage garbage"),
            Err(RecordError::BadMagic)
        ));
    }
}
