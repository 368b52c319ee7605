//! The receiving side of one connection as a pure state machine: bytes in, replies, deliveries
//! and a close decision out. The mio receiver and the simulation both drive it.

use super::dedup::{DedupTable, LaneKey};
use crate::crypto::{self, ClusterKey, CryptoError, Opener, Sealer, HANDSHAKE_NONCE_LEN};
use crate::member::Member;
use crate::wire::frame::{self, FrameKind, FLAG_ACK, FLAG_SEALED, FLAG_SYNC_ACK};
use crate::wire::sealed;
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
    /// This channel's incarnation, sent back in `HandshakeAccept`.
    pub incarnation: u64,
    pub max_frame_size: u32,
    /// With a key, only sealed connections are accepted (docs/SECURITY.md).
    pub key: Option<&'a ClusterKey>,
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
    /// The connection's reply key, now that the peer proved it holds the cluster key: whoever
    /// writes `reply` must seal it, and every later reply, with this (in write order).
    pub reply_sealer: Option<Sealer>,
}

impl RxOutput {
    pub fn clear(&mut self) {
        self.reply.clear();
        self.deliveries.clear();
        self.hello = None;
        self.leave = false;
        self.duplicates = 0;
        self.reacks.clear();
        self.reply_sealer = None;
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
    /// A frame of a keyed connection failed authentication: no or wrong cluster key, a forged
    /// frame, or a replayed, reordered or dropped one.
    Auth(String),
}

impl fmt::Display for RxClose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RxClose::Frame(e) => write!(f, "invalid frame: {e}"),
            RxClose::Refused(r) => write!(f, "handshake refused: {r}"),
            RxClose::Protocol(r) => write!(f, "protocol error: {r}"),
            RxClose::Leave => write!(f, "member left"),
            RxClose::Auth(r) => write!(f, "{r}"),
        }
    }
}

enum State {
    AwaitHandshake,
    /// Keyed: the challenge went out; the sealed handshake must come next.
    AwaitSealed {
        opener: Box<Opener>,
        sealer: Box<Sealer>,
    },
    Ready {
        peer: Member,
        key: LaneKey,
        /// Keyed connections: opens every frame, in order.
        opener: Option<Box<Opener>>,
    },
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
            _ => None,
        }
    }

    /// The member on the other end, once it has shaken hands.
    pub fn peer(&self) -> Option<&Member> {
        match &self.state {
            State::Ready { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// Consumes the complete frames at the start of `buf` and returns how many bytes they used;
    /// a partial frame at the end is left for the next call. On `Err` the connection must be
    /// closed after writing `out.reply`; frames before the bad one were processed normally.
    /// Sealed frames are opened in place: a delivery's range holds the plain body.
    pub fn on_bytes(
        &mut self,
        buf: &mut [u8],
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
        buf: &mut [u8],
        s: &RxSettings<'_>,
        dedup: &DedupTable,
        last: &mut Option<u64>,
        out: &mut RxOutput,
    ) -> Result<usize, RxClose> {
        let mut used = 0;
        loop {
            let limit = match self.state {
                State::Ready { .. } => s.max_frame_size,
                _ => MAX_HANDSHAKE_LEN.min(s.max_frame_size),
            };
            let (header, n) = match parse_frame(&buf[used..], limit) {
                Ok(Some((f, n))) => (f.header, n),
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
                    refuse(&mut out.reply, &reason);
                    return Err(RxClose::Refused(reason));
                }
                Err(e) => return Err(RxClose::Frame(e)),
            };
            let frame_start = used;
            let body_start = used + frame::HEADER_LEN;
            used += n;
            let sealed_flag = header.flags & FLAG_SEALED != 0;
            // The plain body's end: sealed frames are opened in place first.
            let mut body_end = used;
            match &mut self.state {
                State::Ready {
                    opener: Some(opener),
                    ..
                }
                | State::AwaitSealed { opener, .. } => {
                    let (head, body) = buf[frame_start..used].split_at_mut(frame::HEADER_LEN);
                    let plain = sealed::open_body(opener, head, header.flags, body)
                        .map_err(|e| RxClose::Auth(auth_reason(e, header.kind)))?;
                    body_end = body_start + plain;
                }
                State::Ready { opener: None, .. } if sealed_flag => {
                    return Err(RxClose::Protocol(
                        "sealed frame on a connection without a cluster key".into(),
                    ));
                }
                _ => {}
            }
            let body = &buf[body_start..body_end];
            match (&mut self.state, header.kind) {
                (State::AwaitHandshake, FrameKind::Handshake) => match s.key {
                    Some(key) => {
                        if !sealed_flag {
                            let who = decode_body::<Handshake>(body)
                                .map_or_else(|_| "a peer".to_string(), |h| format!("{}", h.member));
                            let reason = format!(
                                "this cluster requires the cluster key; the handshake of {who} is not sealed"
                            );
                            refuse(&mut out.reply, &reason);
                            return Err(RxClose::Refused(reason));
                        }
                        let client: [u8; HANDSHAKE_NONCE_LEN] = body.try_into().map_err(|_| {
                            RxClose::Protocol(format!(
                                "opening handshake of {} bytes, not a {HANDSHAKE_NONCE_LEN}-byte nonce",
                                body.len()
                            ))
                        })?;
                        let server =
                            crypto::fresh_nonce().map_err(|e| RxClose::Protocol(e.to_string()))?;
                        let (_, opener, sealer, _) = key.connection_keys(&client, &server);
                        frame::encode_frame(
                            &mut out.reply,
                            FrameKind::Challenge,
                            FLAG_SEALED,
                            0,
                            &server,
                        );
                        self.state = State::AwaitSealed {
                            opener: Box::new(opener),
                            sealer: Box::new(sealer),
                        };
                    }
                    None => {
                        if sealed_flag {
                            let reason = "this node has no cluster key; the peer's handshake is sealed (configure the same cluster key on every member)".to_string();
                            refuse(&mut out.reply, &reason);
                            return Err(RxClose::Refused(reason));
                        }
                        let hs = decode_handshake(body)?;
                        self.hello(hs, s, None, out)?;
                    }
                },
                (State::AwaitSealed { .. }, FrameKind::Handshake) => {
                    let hs = decode_handshake(body)?;
                    let State::AwaitSealed { opener, sealer } =
                        std::mem::replace(&mut self.state, State::AwaitHandshake)
                    else {
                        return Err(RxClose::Protocol("handshake state lost".into()));
                    };
                    // From here every reply is sealed, the answer to this handshake first.
                    out.reply_sealer = Some(*sealer);
                    self.hello(hs, s, Some(opener), out)?;
                }
                (State::AwaitHandshake | State::AwaitSealed { .. }, kind) => {
                    return Err(RxClose::Protocol(format!(
                        "{kind:?} frame before handshake"
                    )));
                }
                (State::Ready { key, .. }, FrameKind::Data) => {
                    let flags = header.flags;
                    let seq = header.seq;
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
                            end: body_end,
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
                    let seq = header.seq;
                    if header.flags & FLAG_SYNC_ACK != 0 {
                        out.deliveries.push(Delivery {
                            start: body_start,
                            end: body_end,
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

    /// Checks a decoded handshake and answers it (the answer is sealed by the reply writer on a
    /// keyed connection).
    fn hello(
        &mut self,
        hs: Handshake,
        s: &RxSettings<'_>,
        opener: Option<Box<Opener>>,
        out: &mut RxOutput,
    ) -> Result<(), RxClose> {
        if let Err(reason) = check_handshake(&hs, s) {
            refuse(&mut out.reply, &reason);
            return Err(RxClose::Refused(reason));
        }
        let body = encode_body(&HandshakeAccept {
            member: s.local.clone(),
            incarnation: s.incarnation,
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
            opener,
        };
        Ok(())
    }
}

fn decode_handshake(body: &[u8]) -> Result<Handshake, RxClose> {
    decode_body(body).map_err(|e| RxClose::Protocol(format!("undecodable handshake: {e}")))
}

fn refuse(reply: &mut Vec<u8>, reason: &str) {
    let body = encode_body(&Reason {
        reason: reason.to_string(),
    });
    frame::encode_frame(reply, FrameKind::HandshakeRefuse, 0, 0, &body);
}

fn auth_reason(e: CryptoError, kind: FrameKind) -> String {
    match kind {
        FrameKind::Handshake => format!("sealed handshake refused: {e}"),
        _ => format!("{kind:?} frame refused: {e}"),
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
    // Tomcat's DomainFilterInterceptor: a member of another domain is not one of ours, and
    // neither are its messages. A node without a domain accepts any, as membership does.
    if !s.local.domain.is_empty() && hs.member.domain != s.local.domain {
        return Err(format!(
            "{} is of domain '{}', not this node's '{}'",
            hs.member, hs.member.domain, s.local.domain
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
            incarnation: 7,
            max_frame_size: 1 << 20,
            key: None,
        };
        let mut dedup = DedupTable::new(16);
        let mut rx = RxSession::default();
        let mut bytes = handshake("c");
        for seq in [1, 2, 2, 3] {
            encode_frame(&mut bytes, FrameKind::Data, FLAG_ACK, seq, b"m");
        }
        let mut out = RxOutput::default();
        assert_eq!(
            rx.on_bytes(&mut bytes, &s, &mut dedup, &mut out),
            Ok(bytes.len())
        );
        assert_eq!(out.hello.as_ref().map(|m| m.id), Some(MemberId([2; 16])));
        // The accept names us and our incarnation.
        let (f, _) = parse_frame(&out.reply, 1 << 20).unwrap().unwrap();
        assert_eq!(f.header.kind, FrameKind::HandshakeAccept);
        let acc: HandshakeAccept = decode_body(f.body).unwrap();
        assert_eq!((acc.member, acc.incarnation), (local.clone(), 7));
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
            incarnation: 7,
            max_frame_size: 1 << 20,
            key: None,
        };
        let mut out = RxOutput::default();
        let r = RxSession::default().on_bytes(
            &mut handshake("theirs"),
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
            incarnation: 7,
            max_frame_size: 1 << 20,
            key: None,
        };
        let mut v = Vec::new();
        encode_frame(&mut v, FrameKind::Data, 0, 1, b"x");
        let r = RxSession::default().on_bytes(
            &mut v,
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
            &mut v[..frame::HEADER_LEN],
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
