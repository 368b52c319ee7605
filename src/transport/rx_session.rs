//! The receiving side of one connection as a pure state machine: bytes in, replies, deliveries
//! and a close decision out. The mio receiver and the simulation both drive it.

use super::dedup::{DedupTable, LaneKey};
use crate::member::Member;
use crate::wire::frame::{self, FrameKind, FLAG_ACK, FLAG_SYNC_ACK};
use crate::wire::{
    decode_body, encode_body, parse_frame, FrameError, Handshake, HandshakeAccept, Reason,
};
use std::fmt;

/// Largest handshake body accepted: a peer that has not yet said who it is cannot make the
/// receiver buffer a whole `max_frame_size`.
pub const MAX_HANDSHAKE_LEN: u32 = 16 * 1024;

/// What the receiver checks a handshake against.
pub struct RxSettings<'a> {
    pub cluster: &'a str,
    pub local: &'a Member,
    pub max_frame_size: u32,
}

/// A data frame to hand to the listeners: its body's place in the input, its lane number, and
/// whether the sender waits for a synchronized ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub start: usize,
    pub end: usize,
    pub seq: u64,
    pub sync_ack: bool,
    /// A ping for the read test: the worker answers it without calling listeners.
    pub ping: bool,
}

/// What one call of [`RxSession::on_bytes`] produced.
#[derive(Default, Debug)]
pub struct RxOutput {
    /// Frames to write back to the peer (handshake answer, use-acks, acks of duplicates).
    pub reply: Vec<u8>,
    pub deliveries: Vec<Delivery>,
    /// The peer completed its handshake in these bytes.
    pub hello: Option<Member>,
    /// The peer announced it leaves the group.
    pub leave: bool,
    /// Duplicate data frames dropped.
    pub duplicates: u64,
    /// Sequence numbers of dropped duplicates that asked for a synchronized ack: each must be
    /// answered with the outcome of the original (see `dedup::SyncOutcomes`), once known.
    pub reacks: Vec<u64>,
}

impl RxOutput {
    pub fn clear(&mut self) {
        self.reply.clear();
        self.deliveries.clear();
        self.hello = None;
        self.leave = false;
        self.duplicates = 0;
        self.reacks.clear();
    }
}

/// Why a connection is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RxClose {
    /// The bytes are not valid frames (garbage, corruption, oversized, other version).
    Frame(FrameError),
    /// The handshake was refused (the reason was put in the reply).
    Refused(String),
    /// A frame that makes no sense in this state, or a body that does not decode.
    Protocol(String),
    /// The peer left gracefully.
    Leave,
}

impl fmt::Display for RxClose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RxClose::Frame(e) => write!(f, "invalid frame: {e}"),
            RxClose::Refused(r) => write!(f, "handshake refused: {r}"),
            RxClose::Protocol(r) => write!(f, "protocol error: {r}"),
            RxClose::Leave => write!(f, "member left"),
        }
    }
}

enum State {
    AwaitHandshake,
    Ready { peer: Member, key: LaneKey },
}

/// Receive state of one connection.
pub struct RxSession {
    state: State,
}

impl Default for RxSession {
    fn default() -> Self {
        RxSession {
            state: State::AwaitHandshake,
        }
    }
}

impl RxSession {
    /// The lane this connection carries, once the peer has shaken hands.
    pub fn lane_key(&self) -> Option<LaneKey> {
        match &self.state {
            State::Ready { key, .. } => Some(*key),
            State::AwaitHandshake => None,
        }
    }

    /// The member on the other end, once it has shaken hands.
    pub fn peer(&self) -> Option<&Member> {
        match &self.state {
            State::Ready { peer, .. } => Some(peer),
            State::AwaitHandshake => None,
        }
    }

    /// Consumes the complete frames at the start of `buf` and returns how many bytes they used;
    /// a partial frame at the end is left for the next call. On `Err` the connection must be
    /// closed after writing `out.reply`; frames before the bad one were processed normally.
    pub fn on_bytes(
        &mut self,
        buf: &[u8],
        s: &RxSettings<'_>,
        dedup: &mut DedupTable,
        out: &mut RxOutput,
    ) -> Result<usize, RxClose> {
        // The lane's last sequence number, looked up once per call rather than once per frame.
        let mut last: Option<u64> = None;
        let result = self.frames(buf, s, dedup, &mut last, out);
        if let (Some(last), State::Ready { key, .. }) = (last, &self.state) {
            dedup.accept(key, last);
        }
        result
    }

    fn frames(
        &mut self,
        buf: &[u8],
        s: &RxSettings<'_>,
        dedup: &DedupTable,
        last: &mut Option<u64>,
        out: &mut RxOutput,
    ) -> Result<usize, RxClose> {
        let mut used = 0;
        loop {
            let limit = match self.state {
                State::AwaitHandshake => MAX_HANDSHAKE_LEN.min(s.max_frame_size),
                State::Ready { .. } => s.max_frame_size,
            };
            let (f, n) = match parse_frame(&buf[used..], limit) {
                Ok(Some(x)) => x,
                Ok(None) => return Ok(used),
                Err(FrameError::UnsupportedVersion(v))
                    if matches!(self.state, State::AwaitHandshake) =>
                {
                    // A peer of another version: refuse its handshake and say why, in a frame
                    // of ours (its header already shows the version; its body is not read).
                    let reason = format!(
                        "protocol version {v} is not this node's {}",
                        frame::PROTOCOL_VERSION
                    );
                    let body = encode_body(&Reason {
                        reason: reason.clone(),
                    });
                    frame::encode_frame(&mut out.reply, FrameKind::HandshakeRefuse, 0, 0, &body);
                    return Err(RxClose::Refused(reason));
                }
                Err(e) => return Err(RxClose::Frame(e)),
            };
            let body_start = used + frame::HEADER_LEN;
            used += n;
            match (&mut self.state, f.header.kind) {
                (State::AwaitHandshake, FrameKind::Handshake) => {
                    let hs: Handshake = decode_body(f.body)
                        .map_err(|e| RxClose::Protocol(format!("undecodable handshake: {e}")))?;
                    if let Err(reason) = check_handshake(&hs, s) {
                        let body = encode_body(&Reason {
                            reason: reason.clone(),
                        });
                        frame::encode_frame(
                            &mut out.reply,
                            FrameKind::HandshakeRefuse,
                            0,
                            0,
                            &body,
                        );
                        return Err(RxClose::Refused(reason));
                    }
                    let body = encode_body(&HandshakeAccept {
                        member: s.local.clone(),
                    });
                    frame::encode_frame(&mut out.reply, FrameKind::HandshakeAccept, 0, 0, &body);
                    let key = LaneKey {
                        member: hs.member.id,
                        incarnation: hs.incarnation,
                        lane: hs.lane,
                    };
                    out.hello = Some(hs.member.clone());
                    self.state = State::Ready {
                        peer: hs.member,
                        key,
                    };
                }
                (State::AwaitHandshake, kind) => {
                    return Err(RxClose::Protocol(format!(
                        "{kind:?} frame before handshake"
                    )));
                }
                (State::Ready { key, .. }, FrameKind::Data) => {
                    let flags = f.header.flags;
                    let seq = f.header.seq;
                    let sync_ack = flags & FLAG_SYNC_ACK != 0;
                    let seen = *last.get_or_insert_with(|| dedup.last(key));
                    if seq > seen {
                        *last = Some(seq);
                        if flags & FLAG_ACK != 0 && !sync_ack {
                            // use-ack: the frame has been read; say so now, before processing.
                            frame::encode_frame(&mut out.reply, FrameKind::Ack, 0, seq, &[]);
                        }
                        out.deliveries.push(Delivery {
                            start: body_start,
                            end: used,
                            seq,
                            sync_ack,
                            ping: false,
                        });
                    } else {
                        // A retry of a frame already delivered: drop it, but answer so the
                        // retrying sender is not left waiting: use-ack at once (it was read),
                        // synchronized ack with the original's outcome.
                        out.duplicates += 1;
                        if sync_ack {
                            out.reacks.push(seq);
                        } else if flags & FLAG_ACK != 0 {
                            frame::encode_frame(&mut out.reply, FrameKind::Ack, 0, seq, &[]);
                        }
                    }
                }
                (State::Ready { .. }, FrameKind::Ping) => {
                    let seq = f.header.seq;
                    if f.header.flags & FLAG_SYNC_ACK != 0 {
                        out.deliveries.push(Delivery {
                            start: body_start,
                            end: used,
                            seq,
                            sync_ack: true,
                            ping: true,
                        });
                    } else {
                        frame::encode_frame(&mut out.reply, FrameKind::Ack, 0, seq, &[]);
                    }
                }
                (State::Ready { .. }, FrameKind::Leave) => {
                    out.leave = true;
                    return Err(RxClose::Leave);
                }
                (State::Ready { .. }, kind) => {
                    return Err(RxClose::Protocol(format!("unexpected {kind:?} frame")));
                }
            }
        }
    }
}

fn check_handshake(hs: &Handshake, s: &RxSettings<'_>) -> Result<(), String> {
    if hs.cluster != s.cluster {
        return Err(format!(
            "cluster name '{}' of {} does not match this cluster '{}'",
            hs.cluster, hs.member, s.cluster
        ));
    }
    if hs.protocol_version != frame::PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} of {} is not this node's {}",
            hs.protocol_version,
            hs.member,
            frame::PROTOCOL_VERSION
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::MemberId;
    use crate::wire::frame::encode_frame;

    fn member(n: u8) -> Member {
        Member {
            id: MemberId([n; 16]),
            name: format!("m{n}"),
            addr: format!("127.0.0.1:{}", 4000 + n as u16).parse().unwrap(),
            domain: String::new(),
        }
    }

    fn handshake(cluster: &str) -> Vec<u8> {
        let hs = Handshake {
            cluster: cluster.into(),
            protocol_version: frame::PROTOCOL_VERSION,
            member: member(2),
            incarnation: 9,
            lane: 0,
        };
        let mut v = Vec::new();
        encode_frame(&mut v, FrameKind::Handshake, 0, 0, &encode_body(&hs));
        v
    }

    #[test]
    fn handshake_then_data_with_dedup() {
        let local = member(1);
        let s = RxSettings {
            cluster: "c",
            local: &local,
            max_frame_size: 1 << 20,
        };
        let mut dedup = DedupTable::new(16);
        let mut rx = RxSession::default();
        let mut bytes = handshake("c");
        for seq in [1, 2, 2, 3] {
            encode_frame(&mut bytes, FrameKind::Data, FLAG_ACK, seq, b"m");
        }
        let mut out = RxOutput::default();
        assert_eq!(
            rx.on_bytes(&bytes, &s, &mut dedup, &mut out),
            Ok(bytes.len())
        );
        assert_eq!(out.hello.as_ref().map(|m| m.id), Some(MemberId([2; 16])));
        let seqs: Vec<u64> = out.deliveries.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(out.duplicates, 1);
        assert_eq!(&bytes[out.deliveries[0].start..out.deliveries[0].end], b"m");
    }

    #[test]
    fn wrong_cluster_is_refused_with_a_reply() {
        let local = member(1);
        let s = RxSettings {
            cluster: "mine",
            local: &local,
            max_frame_size: 1 << 20,
        };
        let mut out = RxOutput::default();
        let r = RxSession::default().on_bytes(
            &handshake("theirs"),
            &s,
            &mut DedupTable::new(4),
            &mut out,
        );
        assert!(matches!(r, Err(RxClose::Refused(ref m)) if m.contains("theirs")));
        let (f, _) = parse_frame(&out.reply, 1 << 20).unwrap().unwrap();
        assert_eq!(f.header.kind, FrameKind::HandshakeRefuse);
    }

    #[test]
    fn data_before_handshake_and_big_handshake_are_refused() {
        let local = member(1);
        let s = RxSettings {
            cluster: "c",
            local: &local,
            max_frame_size: 1 << 20,
        };
        let mut v = Vec::new();
        encode_frame(&mut v, FrameKind::Data, 0, 1, b"x");
        let r = RxSession::default().on_bytes(
            &v,
            &s,
            &mut DedupTable::new(4),
            &mut RxOutput::default(),
        );
        assert!(matches!(r, Err(RxClose::Protocol(_))));
        let mut v = Vec::new();
        encode_frame(
            &mut v,
            FrameKind::Handshake,
            0,
            0,
            &vec![0; MAX_HANDSHAKE_LEN as usize + 1],
        );
        let r = RxSession::default().on_bytes(
            &v[..frame::HEADER_LEN],
            &s,
            &mut DedupTable::new(4),
            &mut RxOutput::default(),
        );
        assert!(matches!(
            r,
            Err(RxClose::Frame(FrameError::TooLarge { .. }))
        ));
    }
}
