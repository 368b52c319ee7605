//! Multicast membership datagrams (Tribes' `MemberImpl` heartbeat and `BABY-ALEX` shutdown
//! packet), versioned and checksummed.
//!
//! Layout: magic `TBCM` (4), protocol version (1), kind (1: heartbeat, 2: leave), flags (2,
//! little-endian; 0 in plaintext), CRC-32 of the body (4, little-endian), then the postcard body
//! [`McastRecord`]. With a cluster key the flags are `FLAG_SEALED` and the body is a random
//! 96-bit nonce, the AES-256-GCM ciphertext of (timestamp, record) and the tag
//! (docs/wire-format.md). A member's record is only ever sent by that member: nodes do not
//! relay what they heard.

use crate::crypto::{DatagramKey, AEAD_NONCE_LEN, TAG_LEN};
use crate::member::{Member, MemberId};
use crate::wire::frame::PROTOCOL_VERSION;
use crate::wire::{decode_body, encode_body};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

pub const MAGIC: [u8; 4] = *b"TBCM";
const HEADER: usize = 12;
/// Flag (bytes 6..8): the body is sealed with the cluster key.
pub const FLAG_SEALED: u16 = 0x1;
/// Bytes a sealed body adds: nonce, timestamp, tag.
const SEALED_OVERHEAD: usize = AEAD_NONCE_LEN + 8 + TAG_LEN;
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
    /// A plaintext datagram reached a node with a cluster key.
    Unsealed,
    /// A sealed datagram reached a node without a cluster key.
    Sealed,
    /// A sealed datagram that does not authenticate: another key, or forged.
    Auth,
    /// Authentic, but not newer than the last one of its member, or outside the replay window.
    Replay(String),
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
            RecordError::Unsealed => write!(
                f,
                "datagram is not sealed, and this node requires the cluster key"
            ),
            RecordError::Sealed => write!(
                f,
                "datagram is sealed with a cluster key, and this node has none"
            ),
            RecordError::Auth => write!(
                f,
                "sealed datagram fails authentication (another cluster key, or forged)"
            ),
            RecordError::Replay(why) => write!(f, "replayed datagram: {why}"),
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

/// A sealed datagram: `stamp` is the sender's clock in microseconds since the Unix epoch, made
/// strictly increasing by the sender (the receiver's replay check, [`ReplayGuard`]).
pub fn encode_sealed(
    kind: Kind,
    record: &McastRecord,
    key: &DatagramKey,
    stamp: u64,
) -> Result<Vec<u8>, crate::crypto::CryptoError> {
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&MAGIC);
    header[4] = PROTOCOL_VERSION;
    header[5] = kind as u8;
    header[6..8].copy_from_slice(&FLAG_SEALED.to_le_bytes());
    let mut text = stamp.to_le_bytes().to_vec();
    text.extend_from_slice(&encode_body(record));
    let (nonce, tag) = key.seal(&header, &mut text)?;
    let mut out = Vec::with_capacity(HEADER + AEAD_NONCE_LEN + text.len() + TAG_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&text);
    out.extend_from_slice(&tag);
    let crc = crc32fast::hash(&out[HEADER..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks, authenticates and decodes a datagram with the cluster key (or without one, `None`):
/// returns the kind, the sender's timestamp (0 in plaintext) and the record. The replay check
/// is the caller's ([`ReplayGuard`]). Any byte string is safe to pass.
pub fn open(
    bytes: &[u8],
    key: Option<&DatagramKey>,
) -> Result<(Kind, u64, McastRecord), RecordError> {
    let kind = check_header(bytes)?;
    let sealed = u16::from_le_bytes([bytes[6], bytes[7]]) & FLAG_SEALED != 0;
    let body = &bytes[HEADER..];
    match (key, sealed) {
        (None, false) => {
            let record = decode_body(body).map_err(|e| RecordError::Body(e.to_string()))?;
            Ok((kind, 0, record))
        }
        (None, true) => Err(RecordError::Sealed),
        (Some(_), false) => Err(RecordError::Unsealed),
        (Some(key), true) => {
            if body.len() < SEALED_OVERHEAD {
                return Err(RecordError::Auth);
            }
            let (nonce, rest) = body.split_at(AEAD_NONCE_LEN);
            let (text, tag) = rest.split_at(rest.len() - TAG_LEN);
            let mut text = text.to_vec();
            key.open(&bytes[..8], nonce, &mut text, tag)
                .map_err(|_| RecordError::Auth)?;
            let (stamp, record) = text.split_at(8);
            let mut s = [0u8; 8];
            s.copy_from_slice(stamp);
            let record = decode_body(record).map_err(|e| RecordError::Body(e.to_string()))?;
            Ok((kind, u64::from_le_bytes(s), record))
        }
    }
}

/// The plaintext decoder: a sealed datagram is refused (`RecordError::Sealed`).
pub fn decode(bytes: &[u8]) -> Result<(Kind, McastRecord), RecordError> {
    open(bytes, None).map(|(kind, _, record)| (kind, record))
}

/// Magic, version, kind and checksum.
fn check_header(bytes: &[u8]) -> Result<Kind, RecordError> {
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
    if crc32fast::hash(&bytes[HEADER..]) != crc {
        return Err(RecordError::BadChecksum);
    }
    Ok(kind)
}

/// Remembers the newest timestamp of each member's sealed datagrams, so that a recorded
/// heartbeat or leave replayed later changes nothing: a datagram is accepted only if its
/// timestamp is after the last accepted one of its member and within `window` of this node's
/// clock (which also covers members forgotten or never heard of). Bounded: members not heard
/// from for longer than the window are forgotten first, the window check then covers them.
pub struct ReplayGuard {
    window_us: u64,
    last: HashMap<MemberId, u64>,
    cap: usize,
}

impl ReplayGuard {
    pub fn new(window: std::time::Duration, cap: usize) -> ReplayGuard {
        ReplayGuard {
            window_us: u64::try_from(window.as_micros()).unwrap_or(u64::MAX),
            last: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// Accepts (and records) or refuses a datagram of `id` stamped `stamp`, at `now_us`.
    pub fn check(&mut self, id: MemberId, stamp: u64, now_us: u64) -> Result<(), RecordError> {
        if stamp.abs_diff(now_us) > self.window_us {
            return Err(RecordError::Replay(format!(
                "timestamp {} ms away from this node's clock (replay window {} ms)",
                (i128::from(stamp) - i128::from(now_us)) / 1000,
                self.window_us / 1000
            )));
        }
        if let Some(&last) = self.last.get(&id) {
            if stamp <= last {
                return Err(RecordError::Replay(format!(
                    "timestamp {stamp} not after the member's last {last}"
                )));
            }
        }
        if self.last.len() >= self.cap && !self.last.contains_key(&id) {
            let horizon = now_us.saturating_sub(self.window_us);
            self.last.retain(|_, &mut t| t >= horizon);
            if self.last.len() >= self.cap {
                return Err(RecordError::Replay(format!(
                    "more than {} members heard from within the replay window",
                    self.cap
                )));
            }
        }
        self.last.insert(id, stamp);
        Ok(())
    }
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
                if (i == 6 && bit != 0) || i == 7 {
                    continue; // flag bits other than FLAG_SEALED are not checked
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

    #[test]
    fn sealed_round_trip_refusals_and_flips() {
        use crate::crypto::ClusterKey;
        let k = ClusterKey::random().unwrap().datagram_key();
        let other = ClusterKey::random().unwrap().datagram_key();
        let bytes = encode_sealed(Kind::Leave, &record(), &k, 77).unwrap();
        assert_eq!(open(&bytes, Some(&k)), Ok((Kind::Leave, 77, record())));
        assert_eq!(open(&bytes, Some(&other)), Err(RecordError::Auth));
        assert_eq!(decode(&bytes), Err(RecordError::Sealed));
        let plain = encode(Kind::Heartbeat, &record());
        assert_eq!(open(&plain, Some(&k)), Err(RecordError::Unsealed));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if (i == 6 && bit != 0) || i == 7 {
                    continue;
                }
                assert!(open(&b, Some(&k)).is_err(), "flip at {i}:{bit} accepted");
            }
        }
        // A flipped kind with a recomputed checksum: still refused, the header is authenticated.
        let mut b = bytes.clone();
        b[5] = Kind::Heartbeat as u8;
        assert_eq!(open(&b, Some(&k)), Err(RecordError::Auth));
        for cut in 0..bytes.len() {
            assert!(open(&bytes[..cut], Some(&k)).is_err());
        }
    }

    #[test]
    fn replay_guard_rules() {
        let id = MemberId([1; 16]);
        let mut g = ReplayGuard::new(std::time::Duration::from_secs(10), 2);
        let now = 1_000_000_000_000u64;
        assert!(g.check(id, now - 20_000_000, now).is_err(), "too old");
        assert!(g.check(id, now + 20_000_000, now).is_err(), "too far ahead");
        assert!(g.check(id, now, now).is_ok());
        assert!(g.check(id, now, now).is_err(), "same stamp again");
        assert!(g.check(id, now - 1, now).is_err(), "older stamp");
        assert!(g.check(id, now + 1, now).is_ok());
        // Bounded: a third member fits only once an old one is past the window.
        assert!(g.check(MemberId([2; 16]), now, now).is_ok());
        assert!(g.check(MemberId([3; 16]), now, now).is_err());
        let later = now + 30_000_000;
        assert!(g.check(MemberId([3; 16]), later, later).is_ok());
        // The forgotten member's old datagrams are still refused, by the window.
        assert!(g.check(id, now + 2, later).is_err());
    }
}
