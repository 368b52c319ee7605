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
    #[serde(borrow)]
    pub payload: &'a [u8],
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

/// Decodes a body; `Err` names what was wrong with it.
pub fn decode_body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
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
