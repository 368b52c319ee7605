//! The sending side of a simulated member: the protocol the real sender follows, as a sans-I/O
//! state machine.
//!
//! Per destination the sender has one or more lanes (connections), each opened with a handshake
//! and numbering its data frames 1, 2, 3, … across reconnects. When a connection breaks, the
//! lane reconnects (same incarnation, same lane) and resends the frames not yet acknowledged;
//! a frame gets at most `max_tries` connections, then it is reported failed. Asynchronous frames
//! are never acknowledged: those handed to a broken connection may be lost, those not yet
//! written are sent on the next one.
//!
//! Besides the protocol state, `TxJournal` records what the application was told about each
//! message, for the tests' checks. It survives a crash (it is the observer's notebook, not the
//! node's memory).

use super::net::{CloseReason, ConnId, NodeId};
use super::Ctx;
use crate::error::SendFailure;
use crate::member::Member;
use crate::options::SendOptions;
use crate::wire::frame::{self, FrameKind, FLAG_ACK, FLAG_SYNC_ACK};
use crate::wire::{
    decode_body, encode_body, parse_frame, Envelope, Handshake, HandshakeAccept, Reason,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

/// Sender settings.
#[derive(Clone, Debug)]
pub struct TxConfig {
    pub cluster: String,
    /// Lanes per destination; a message goes on lane `msg_id % lanes`.
    pub lanes: u32,
    /// Most acknowledged-mode frames written and not yet acknowledged on one lane. 1 is Tribes'
    /// pooled sender (one frame, then wait for its ack).
    pub window: usize,
    /// Connections a frame may be tried on: 2 is Tribes' `maxRetryAttempts = 1`.
    pub max_tries: u32,
    /// Largest reply frame accepted.
    pub max_frame_size: u32,
}

/// What the application knows about one message to one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not written yet (or waiting to be resent).
    Queued,
    /// Written, waiting for its ack.
    InFlight,
    /// Asynchronous and written on a connection not known to have broken.
    Written,
    /// Asynchronous and written on a connection that broke: it may be lost.
    MaybeLost,
    Acked,
    Failed(SendFailure),
    /// The sender crashed before the message was settled.
    Abandoned,
}

/// One message to one destination.
#[derive(Clone, Debug)]
pub struct SentMsg {
    pub msg_id: u64,
    pub incarnation: u64,
    pub dest: NodeId,
    pub lane: u32,
    pub seq: u64,
    pub opts: SendOptions,
    pub payload: Rc<[u8]>,
    pub outcome: Outcome,
    /// Connections it was written on, or waited on, that then broke.
    pub tries: u32,
    /// Times it was written on a connection.
    pub writes: u32,
}

/// The observer's record of a sender.
#[derive(Clone, Debug, Default)]
pub struct TxJournal {
    pub sent: Vec<SentMsg>,
    index: HashMap<(u64, NodeId), usize>,
    /// Indices into `sent`, in the order their outcome became `Acked` or `Failed`.
    pub settled: Vec<usize>,
    /// Kept across restarts (unlike a real sender) so that (member, msg_id) names one message
    /// over the whole run.
    next_msg_id: u64,
    pub connects: u64,
    /// Frames written again after a broken connection.
    pub resends: u64,
    /// Handshake refusals received.
    pub refusals: u64,
    /// Acks for a sequence number not in flight (must stay 0).
    pub stray_acks: u64,
}

impl TxJournal {
    /// The record of message `msg_id` to `dest`.
    pub fn get(&self, msg_id: u64, dest: NodeId) -> Option<&SentMsg> {
        self.index.get(&(msg_id, dest)).map(|i| &self.sent[*i])
    }

    fn settle(&mut self, rec: usize, outcome: Outcome) {
        self.sent[rec].outcome = outcome;
        self.settled.push(rec);
    }
}

/// A data frame waiting on a lane.
struct Pending {
    rec: usize,
    seq: u64,
    flags: u16,
    /// The encoded envelope, shared by every destination of the message.
    body: Rc<[u8]>,
}

impl Pending {
    fn wants_ack(&self) -> bool {
        self.flags & FLAG_ACK != 0
    }
}

struct Lane {
    dest: NodeId,
    next_seq: u64,
    conn: Option<ConnId>,
    /// The handshake was accepted on `conn`.
    ready: bool,
    /// Reply bytes not yet forming a whole frame.
    rx: Vec<u8>,
    unsent: VecDeque<Pending>,
    unacked: VecDeque<Pending>,
    /// Asynchronous frames written on `conn` (they become `MaybeLost` if it breaks). Only the
    /// observer needs this: a real sender forgets asynchronous frames once written.
    written_async: Vec<usize>,
}

/// The sending side of one member.
pub struct TxSide {
    cfg: TxConfig,
    member: Member,
    incarnation: u64,
    lanes: BTreeMap<(NodeId, u32), Lane>,
    conns: BTreeMap<ConnId, (NodeId, u32)>,
    pub journal: TxJournal,
}

/// Header flags for send options (the real sender's mapping).
fn frame_flags(opts: SendOptions) -> u16 {
    if opts.wants_sync_ack() {
        FLAG_ACK | FLAG_SYNC_ACK
    } else if opts.wants_ack() {
        FLAG_ACK
    } else {
        0
    }
}

impl TxSide {
    pub fn new(cfg: TxConfig, member: Member, incarnation: u64) -> TxSide {
        TxSide {
            cfg,
            member,
            incarnation,
            lanes: BTreeMap::new(),
            conns: BTreeMap::new(),
            journal: TxJournal::default(),
        }
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// After a crash: same member and config, a new incarnation, no lanes. Messages the crash
    /// left unsettled are recorded as abandoned.
    pub fn restarted(&self, incarnation: u64) -> TxSide {
        let mut journal = self.journal.clone();
        for m in &mut journal.sent {
            m.outcome = match &m.outcome {
                Outcome::Queued | Outcome::InFlight => Outcome::Abandoned,
                Outcome::Written => Outcome::MaybeLost,
                other => other.clone(),
            };
        }
        TxSide {
            journal,
            ..TxSide::new(self.cfg.clone(), self.member.clone(), incarnation)
        }
    }

    pub fn owns(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Sends one message to each of `dests`; returns its id.
    pub fn send(
        &mut self,
        dests: &[NodeId],
        payload: &[u8],
        opts: SendOptions,
        ctx: &mut Ctx<'_>,
    ) -> u64 {
        let opts = opts.normalized();
        self.journal.next_msg_id += 1;
        let msg_id = self.journal.next_msg_id;
        let env = Envelope {
            sender: self.member.id,
            msg_id,
            options: opts.0,
            payload,
        };
        let body: Rc<[u8]> = encode_body(&env).into();
        let payload: Rc<[u8]> = payload.into();
        let flags = frame_flags(opts);
        let lane_no = (msg_id % u64::from(self.cfg.lanes.max(1))) as u32;
        for &dest in dests {
            let lane = self.lanes.entry((dest, lane_no)).or_insert_with(|| Lane {
                dest,
                next_seq: 0,
                conn: None,
                ready: false,
                rx: Vec::new(),
                unsent: VecDeque::new(),
                unacked: VecDeque::new(),
                written_async: Vec::new(),
            });
            lane.next_seq += 1;
            let rec = self.journal.sent.len();
            self.journal.sent.push(SentMsg {
                msg_id,
                incarnation: self.incarnation,
                dest,
                lane: lane_no,
                seq: lane.next_seq,
                opts,
                payload: payload.clone(),
                outcome: Outcome::Queued,
                tries: 0,
                writes: 0,
            });
            self.journal.index.insert((msg_id, dest), rec);
            lane.unsent.push_back(Pending {
                rec,
                seq: lane.next_seq,
                flags,
                body: body.clone(),
            });
            self.pump((dest, lane_no), ctx);
        }
        msg_id
    }

    /// Connects the lane if it has work and no connection, or writes what the window allows.
    fn pump(&mut self, key: (NodeId, u32), ctx: &mut Ctx<'_>) {
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        match lane.conn {
            None if !lane.unsent.is_empty() => {
                let conn = ctx.connect(lane.dest);
                lane.conn = Some(conn);
                lane.ready = false;
                lane.rx.clear();
                self.conns.insert(conn, key);
                self.journal.connects += 1;
            }
            Some(conn) if lane.ready => {
                let mut out = Vec::new();
                while let Some(f) = lane.unsent.front() {
                    if f.wants_ack() && lane.unacked.len() >= self.cfg.window {
                        break;
                    }
                    let Some(f) = lane.unsent.pop_front() else {
                        break;
                    };
                    frame::encode_frame(&mut out, FrameKind::Data, f.flags, f.seq, &f.body);
                    let m = &mut self.journal.sent[f.rec];
                    if m.writes > 0 {
                        self.journal.resends += 1;
                    }
                    m.writes += 1;
                    if f.wants_ack() {
                        m.outcome = Outcome::InFlight;
                        lane.unacked.push_back(f);
                    } else {
                        m.outcome = Outcome::Written;
                        lane.written_async.push(f.rec);
                    }
                }
                ctx.send(conn, out);
            }
            _ => {}
        }
    }

    /// A connection of ours opened: shake hands.
    pub fn on_connected(&mut self, conn: ConnId, ctx: &mut Ctx<'_>) {
        let Some(&(_, lane)) = self.conns.get(&conn) else {
            return;
        };
        let hs = Handshake {
            cluster: self.cfg.cluster.clone(),
            protocol_version: frame::PROTOCOL_VERSION,
            member: self.member.clone(),
            incarnation: self.incarnation,
            lane,
        };
        let mut out = Vec::new();
        frame::encode_frame(&mut out, FrameKind::Handshake, 0, 0, &encode_body(&hs));
        ctx.send(conn, out);
    }

    /// Replies from the receiver: the handshake answer, then acks.
    pub fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        let Some(&key) = self.conns.get(&conn) else {
            return;
        };
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        lane.rx.extend_from_slice(bytes);
        let mut used = 0;
        let verdict = loop {
            let (f, n) = match parse_frame(&lane.rx[used..], self.cfg.max_frame_size) {
                Ok(Some(x)) => x,
                Ok(None) => break Ok(()),
                Err(e) => break Err(SendFailure::Protocol(e.to_string())),
            };
            used += n;
            let seq = f.header.seq;
            match (lane.ready, f.header.kind) {
                (false, FrameKind::HandshakeAccept) => {
                    if let Err(e) = decode_body::<HandshakeAccept>(f.body) {
                        break Err(SendFailure::Protocol(format!(
                            "undecodable handshake answer: {e}"
                        )));
                    }
                    lane.ready = true;
                }
                (false, FrameKind::HandshakeRefuse) => {
                    let reason = decode_body::<Reason>(f.body)
                        .map_or_else(|e| format!("(undecodable reason: {e})"), |r| r.reason);
                    break Err(SendFailure::Refused(reason));
                }
                (true, kind @ (FrameKind::Ack | FrameKind::FailAck)) => {
                    let Some(pos) = lane.unacked.iter().position(|p| p.seq == seq) else {
                        self.journal.stray_acks += 1;
                        continue;
                    };
                    let Some(p) = lane.unacked.remove(pos) else {
                        continue;
                    };
                    let outcome = if kind == FrameKind::Ack {
                        Outcome::Acked
                    } else {
                        let reason = decode_body::<Reason>(f.body)
                            .map_or_else(|e| format!("(undecodable reason: {e})"), |r| r.reason);
                        Outcome::Failed(SendFailure::Remote(reason))
                    };
                    self.journal.settle(p.rec, outcome);
                }
                (_, kind) => {
                    break Err(SendFailure::Protocol(format!("unexpected {kind:?} frame")))
                }
            }
        };
        lane.rx.drain(..used);
        match verdict {
            Ok(()) => self.pump(key, ctx),
            Err(SendFailure::Refused(reason)) => {
                // Another cluster or version: retrying cannot help.
                self.journal.refusals += 1;
                ctx.close(conn);
                self.conns.remove(&conn);
                lane.conn = None;
                lane.ready = false;
                let failure = SendFailure::Refused(reason);
                for p in lane.unacked.drain(..).chain(lane.unsent.drain(..)) {
                    self.journal.settle(p.rec, Outcome::Failed(failure.clone()));
                }
            }
            Err(failure) => {
                ctx.close(conn);
                self.broken(conn, failure, ctx);
            }
        }
    }

    pub fn on_closed(&mut self, conn: ConnId, why: CloseReason, ctx: &mut Ctx<'_>) {
        let failure = match why {
            CloseReason::ConnectFailed => SendFailure::Connect("connection failed".into()),
            CloseReason::Reset => SendFailure::Io("connection reset".into()),
            CloseReason::PeerClosed => SendFailure::Io("connection closed by member".into()),
        };
        self.broken(conn, failure, ctx);
    }

    /// The lane's connection is gone: charge a try to the frames it held (every queued frame if
    /// it broke before the handshake completed), fail those out of tries, resend the rest on a
    /// new connection.
    fn broken(&mut self, conn: ConnId, failure: SendFailure, ctx: &mut Ctx<'_>) {
        let Some(key) = self.conns.remove(&conn) else {
            return;
        };
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        lane.conn = None;
        let was_ready = std::mem::replace(&mut lane.ready, false);
        lane.rx.clear();
        for rec in lane.written_async.drain(..) {
            self.journal.sent[rec].outcome = Outcome::MaybeLost;
        }
        let mut charged: Vec<Pending> = lane.unacked.drain(..).collect();
        if !was_ready {
            charged.extend(lane.unsent.drain(..));
        }
        let mut requeue = VecDeque::with_capacity(charged.len() + lane.unsent.len());
        for p in charged {
            let m = &mut self.journal.sent[p.rec];
            m.tries += 1;
            if m.tries >= self.cfg.max_tries {
                self.journal.settle(p.rec, Outcome::Failed(failure.clone()));
            } else {
                m.outcome = Outcome::Queued;
                requeue.push_back(p);
            }
        }
        requeue.extend(lane.unsent.drain(..));
        lane.unsent = requeue;
        self.pump(key, ctx);
    }
}
