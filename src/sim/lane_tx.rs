//! The sending side of a simulated member: production's [`TxSession`] per lane, driven over the
//! simulated network.
//!
//! Per destination the sender has one or more lanes (connections). What a lane writes, resends,
//! settles or fails is decided by its `TxSession`, the state machine the real lanes use: a
//! handshake first, data frames numbered 1, 2, 3, … across reconnects, frames not yet
//! acknowledged written again on a new connection, at most `max_tries` connections per frame.
//! Asynchronous frames are never acknowledged: those released on a connection that then broke
//! may be lost. This module only does the simulated I/O (connect, write, read, close) and keeps
//! the journal.
//!
//! `TxJournal` records what the application was told about each message, for the tests'
//! checks. It survives a crash (it is the observer's notebook, not the node's memory).

use super::net::{CloseReason, ConnId, NodeId};
use super::Ctx;
use crate::error::SendFailure;
use crate::member::Member;
use crate::options::SendOptions;
use crate::transport::sender::frame_flags;
use crate::transport::tx_session::{AckMatch, TxPhase, TxSession};
use crate::wire::frame::{self, FrameKind, FLAG_ACK};
use crate::wire::{decode_body, encode_body, parse_frame, Envelope, Reason};
use std::collections::{BTreeMap, HashMap};
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

/// A data frame's handle in its lane's session.
struct Pending {
    rec: usize,
    flags: u16,
    /// The encoded envelope, shared by every destination of the message.
    body: Rc<[u8]>,
}

struct Lane {
    dest: NodeId,
    conn: Option<ConnId>,
    /// Reply bytes not yet forming a whole frame.
    rx: Vec<u8>,
    tx: TxSession<Pending>,
    /// Asynchronous frames released after being written on `conn` (they become `MaybeLost`
    /// if it breaks). Only the observer needs this: a real sender forgets them.
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
            let (max_tries, window) = (self.cfg.max_tries, self.cfg.window);
            let lane = self.lanes.entry((dest, lane_no)).or_insert_with(|| Lane {
                dest,
                conn: None,
                rx: Vec::new(),
                tx: TxSession::new(lane_no, max_tries, window),
                written_async: Vec::new(),
            });
            let seq = lane.tx.next_seq();
            let rec = self.journal.sent.len();
            self.journal.sent.push(SentMsg {
                msg_id,
                incarnation: self.incarnation,
                dest,
                lane: lane_no,
                seq,
                opts,
                payload: payload.clone(),
                outcome: Outcome::Queued,
                tries: 0,
                writes: 0,
            });
            self.journal.index.insert((msg_id, dest), rec);
            let pending = Pending {
                rec,
                flags,
                body: body.clone(),
            };
            lane.tx.push(seq, flags & FLAG_ACK != 0, pending);
            self.pump((dest, lane_no), ctx);
        }
        msg_id
    }

    /// Connects the lane if its session wants a connection, or writes what the session allows.
    fn pump(&mut self, key: (NodeId, u32), ctx: &mut Ctx<'_>) {
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        match lane.conn {
            None if lane.tx.wants_connection() => {
                let conn = ctx.connect(lane.dest);
                lane.conn = Some(conn);
                lane.tx.connecting();
                lane.rx.clear();
                self.conns.insert(conn, key);
                self.journal.connects += 1;
            }
            Some(conn) if lane.tx.phase() == TxPhase::Ready => {
                let mut out = Vec::new();
                while let Some(f) = lane.tx.next_write() {
                    if f.acked {
                        continue; // acked on an earlier connection: its bytes are not needed
                    }
                    let p = &f.token;
                    frame::encode_frame(&mut out, FrameKind::Data, p.flags, f.seq, &p.body);
                    let m = &mut self.journal.sent[p.rec];
                    if m.writes > 0 {
                        self.journal.resends += 1;
                    }
                    m.writes += 1;
                    m.outcome = if f.ack {
                        Outcome::InFlight
                    } else {
                        Outcome::Written
                    };
                }
                release(lane);
                if !out.is_empty() {
                    ctx.send(conn, out);
                }
            }
            _ => {}
        }
    }

    /// A connection of ours opened: shake hands.
    pub fn on_connected(&mut self, conn: ConnId, ctx: &mut Ctx<'_>) {
        let Some(lane) = self.conns.get(&conn).and_then(|k| self.lanes.get(k)) else {
            return;
        };
        let mut out = Vec::new();
        let (cluster, member) = (&self.cfg.cluster, &self.member);
        lane.tx
            .write_hello(cluster, member, self.incarnation, &mut out);
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
            let (kind, seq) = (f.header.kind, f.header.seq);
            if lane.tx.phase() != TxPhase::Ready {
                match lane
                    .tx
                    .on_handshake_answer(kind, f.header.flags, f.body, false)
                {
                    Ok(_) => continue,
                    Err(e) => break Err(e),
                }
            }
            if !matches!(kind, FrameKind::Ack | FrameKind::FailAck) {
                break Err(SendFailure::Protocol(format!("unexpected {kind:?} frame")));
            }
            let AckMatch::Frame(i) = lane.tx.on_ack(seq) else {
                self.journal.stray_acks += 1;
                continue;
            };
            let outcome = if kind == FrameKind::Ack {
                Outcome::Acked
            } else {
                let reason = decode_body::<Reason>(f.body)
                    .map_or_else(|e| format!("(undecodable reason: {e})"), |r| r.reason);
                Outcome::Failed(SendFailure::Remote(reason))
            };
            self.journal.settle(lane.tx.frames()[i].token.rec, outcome);
        };
        lane.rx.drain(..used);
        release(lane);
        match verdict {
            Ok(()) => self.pump(key, ctx),
            Err(SendFailure::Refused(reason)) => {
                // Another cluster or version: retrying cannot help.
                self.journal.refusals += 1;
                ctx.close(conn);
                self.conns.remove(&conn);
                lane.conn = None;
                lane.tx.disconnected();
                let failure = SendFailure::Refused(reason);
                for f in lane.tx.drain() {
                    if !f.acked {
                        self.journal
                            .settle(f.token.rec, Outcome::Failed(failure.clone()));
                    }
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

    /// The lane's connection is gone: its session charges the frames it held a try; those out
    /// of tries fail, the rest go again on a new connection.
    fn broken(&mut self, conn: ConnId, failure: SendFailure, ctx: &mut Ctx<'_>) {
        let Some(key) = self.conns.remove(&conn) else {
            return;
        };
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        lane.conn = None;
        lane.rx.clear();
        for rec in lane.written_async.drain(..) {
            self.journal.sent[rec].outcome = Outcome::MaybeLost;
        }
        lane.tx.disconnected();
        while let Some(f) = lane.tx.pop_failed() {
            self.journal.sent[f.token.rec].tries = f.tries;
            self.journal
                .settle(f.token.rec, Outcome::Failed(failure.clone()));
        }
        for f in lane.tx.frames().iter().filter(|f| !f.acked) {
            let m = &mut self.journal.sent[f.token.rec];
            m.tries = f.tries;
            m.outcome = Outcome::Queued;
        }
        self.pump(key, ctx);
    }
}

/// Drops the frames the lane's session released; asynchronous ones are remembered as written
/// on the current connection, for the journal.
fn release(lane: &mut Lane) {
    while let Some(f) = lane.tx.pop_done() {
        if !f.ack {
            lane.written_async.push(f.token.rec);
        }
    }
}
