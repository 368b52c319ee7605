//! Frame bodies: postcard-encoded structs. Every body type is bounded by the frame size limit
//! before it is decoded, so decoding never allocates more than the frame holds.

use crate::member::{Member, MemberId};
use serde::{Deserialize, Serialize};

/// The body of a `Data` frame: one application message (Tribes' `ChannelData`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// Who sent it.
    pub sender: MemberId,
    /// Unique per sender and channel incarnation.
    pub msg_id: u64,
    /// Send options the sender used (Tribes' bit values).
    pub options: u32,
    #[serde(borrow, serialize_with = "as_bytes")]
    pub payload: &'a [u8],
}

/// Serializes a byte slice as postcard bytes (length, then one memcpy). serde's default for
/// `&[u8]` is a sequence written byte by byte; the encoding is the same, 20 times slower.
fn as_bytes<S: serde::Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// A data-frame body in two parts, written one after the other: the envelope's encoded fields
/// (sender, id, options, payload length) and the payload, which is not copied to build it.
/// Together they are byte for byte `encode_body(&Envelope { .. })`.
pub struct DataBody<'a> {
    head: [u8; DataBody::MAX_HEAD],
    head_len: usize,
    pub payload: &'a [u8],
}

impl<'a> DataBody<'a> {
    /// 16-byte id, then varints: u64 (10), u32 (5), length (10).
    const MAX_HEAD: usize = 16 + 10 + 5 + 10;

    pub fn new(sender: MemberId, msg_id: u64, options: u32, payload: &'a [u8]) -> DataBody<'a> {
        let mut head = [0u8; Self::MAX_HEAD];
        // Cannot fail: the buffer holds the largest encoding of these three fields.
        let fields =
            postcard::to_slice(&(sender, msg_id, options), &mut head).map_or(0, |b| b.len());
        let mut n = fields;
        let mut len = payload.len() as u64;
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            head[n] = if len == 0 { byte } else { byte | 0x80 };
            n += 1;
            if len == 0 {
                break;
            }
        }
        DataBody {
            head,
            head_len: n,
            payload,
        }
    }

    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }

    pub fn len(&self) -> usize {
        self.head_len + self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// CRC-32 state over the whole body, for `frame::encode_header`.
    pub fn hasher(&self) -> crc32fast::Hasher {
        let mut h = crc32fast::Hasher::new();
        h.update(self.head());
        h.update(self.payload);
        h
    }
}

/// The body of a `Handshake` frame: the first thing a sender says on a new connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    /// The cluster name both sides must share.
    pub cluster: String,
    /// The sender's protocol version (also in every frame header).
    pub protocol_version: u8,
    pub member: Member,
    /// Random per channel start: sequence numbers restart with it.
    pub incarnation: u64,
    /// Which of the sender's connections to this member this is; sequence numbers are per lane.
    pub lane: u32,
}

/// The body of a `HandshakeAccept` frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeAccept {
    pub member: Member,
    /// The receiver's own incarnation (random per channel start), as a sender's `Handshake`
    /// carries its own: a new one under a known id tells the connecting side the member
    /// restarted, even when the restarted member itself connects to nobody.
    pub incarnation: u64,
}

/// The body of `HandshakeRefuse` and `FailAck` frames: a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub reason: String,
}

/// Encodes a body with postcard. Our own types always encode.
pub fn encode_body<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Decodes a body; `Err` names what was wrong with it. The body must be exactly one value:
/// bytes left over are an error, as a frame that says more than it should is not ours.
pub fn decode_body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    match postcard::take_from_bytes(bytes)? {
        (value, []) => Ok(value),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_borrows_payload() {
        let env = Envelope {
            sender: MemberId([3; 16]),
            msg_id: 7,
            options: 8,
            payload: b"abc",
        };
        let bytes = encode_body(&env);
        let back: Envelope = decode_body(&bytes).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn data_body_matches_postcard() {
        for len in [0usize, 1, 127, 128, 16383, 16384, 70000] {
            let payload = vec![9u8; len];
            for (id, opts) in [(0u64, 0u32), (1, 8), (u64::MAX, u32::MAX)] {
                let env = Envelope {
                    sender: MemberId([5; 16]),
                    msg_id: id,
                    options: opts,
                    payload: &payload,
                };
                let b = DataBody::new(env.sender, id, opts, &payload);
                let mut joined = b.head().to_vec();
                joined.extend_from_slice(b.payload);
                assert_eq!(joined, encode_body(&env), "len {len} id {id}");
                assert_eq!(b.len(), joined.len());
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode_body(&Reason {
            reason: "ab".into(),
        });
        assert!(decode_body::<Reason>(&bytes).is_ok());
        bytes.push(0);
        assert!(decode_body::<Reason>(&bytes).is_err());
    }

    #[test]
    fn truncated_body_is_an_error() {
        let env = Envelope {
            sender: MemberId([3; 16]),
            msg_id: 7,
            options: 8,
            payload: &[1; 50],
        };
        let bytes = encode_body(&env);
        for cut in 0..bytes.len() {
            assert!(decode_body::<Envelope>(&bytes[..cut]).is_err());
        }
    }
}
