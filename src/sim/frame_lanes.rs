//! The managers' simulated transport with production's lane protocol (`Frames` with
//! [`LaneModel`] on): per destination and lane one [`TxSession`], the sender's state machine
//! that production's lanes run (handshake first, frames numbered across reconnects, held until
//! their transport ack, written again on a new connection, at most `max_tries` connections
//! each, a window of frames waiting for acks), and per accepted connection one [`RxSession`]
//! with one [`DedupTable`] per node life, the receiver production's receiver runs (handshake
//! answer, acks, duplicates of a resent frame dropped and acked again). Deadlines are in
//! virtual time: a send not acked within `timeout` of its start fails and its connection is
//! closed, as production's `sender.timeout` fails it (a timeout is not retried).
//!
//! The managers' own acknowledgements (`Wire::Ack`, `Wire::Refused`) still travel as data on
//! the acker's lanes: the transport ack says a frame was read, not what the manager did with
//! it. Only the frames a lane gave up on (out of tries, or past their deadline) come back to
//! the node, as failed sends ([`RetryLanes::take_failed`]).

use super::frame_node::Lane;
use super::lane_node::sim_member;
use super::net::{ConnId, NodeId};
use super::Ctx;
use crate::member::Member;
use crate::transport::dedup::DedupTable;
use crate::transport::rx_session::{RxOutput, RxSession, RxSettings};
use crate::transport::tx_session::{AckMatch, TxPhase, TxSession};
use crate::wire::frame::{self, FrameKind, FLAG_ACK};
use crate::wire::{decode_body, parse_frame};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

/// Lane numbers the managers' connections give in their handshake (the membership's pings and
/// probes use others): the synchronous lane, then the asynchronous one.
pub const MANAGER_LANES: u32 = 1 << 20;
/// Timer tokens of the lanes' deadlines: `TIMER_BASE + 2 × destination + lane` (below the
/// membership detector's tokens, above a manager node's own).
pub const TIMER_BASE: u64 = 1 << 48;
/// Timer token of the deadlines of the answers awaited for tracked sends.
const ANSWERS_TIMER: u64 = TIMER_BASE + (1 << 31);
/// Largest frame a node accepts.
const MAX_FRAME: u32 = 16 << 20;
/// Set (to anything) to print what each lane does: connects, frames written, broken
/// connections, frames given up on, frames delivered.
pub const TRACE_ENV: &str = "TRIBECAST_LANES_TRACE";
/// Lanes remembered by a node's duplicate filter.
const DEDUP_CAPACITY: usize = 1024;

/// Whether a handshake naming `lane` opens a manager's connection (not a membership one).
pub fn is_manager_lane(lane: u32) -> bool {
    lane == MANAGER_LANES || lane == MANAGER_LANES + 1
}

/// How the managers' lanes behave: production's sender settings, in the run's time.
#[derive(Clone, Debug)]
pub struct LaneModel {
    /// Frames asking for an ack written and not yet acked on the synchronous lane (1: Tribes'
    /// pooled sender, one frame then its ack). The asynchronous lane has no limit.
    pub window: usize,
    /// Connections a frame may be tried on (`max_retry_attempts + 1`; production's default 2).
    pub max_tries: u32,
    /// A send's deadline from its start, connect and ack included (`sender.timeout`, 3 s in
    /// production; runs that compress time compress it too).
    pub timeout: Duration,
    pub cluster: String,
}

impl Default for LaneModel {
    fn default() -> Self {
        LaneModel {
            window: 1,
            max_tries: 2,
            timeout: Duration::from_secs(3),
            cluster: "tribecast-sim".into(),
        }
    }
}

/// What the lanes did, for the figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaneStats {
    pub connects: u64,
    /// Frames written again on a new connection.
    pub resends: u64,
    /// Resent frames the receiver had already and dropped.
    pub duplicates: u64,
    /// Frames given up on at their deadline.
    pub timeouts: u64,
    /// Frames that ran out of tries.
    pub out_of_tries: u64,
    /// Frames delivered that had been delivered before in the same life of the receiver
    /// (counted apart from the duplicate filter, to check it: must stay 0).
    pub redelivered: u64,
}

impl LaneStats {
    /// Adds `o`'s counts.
    pub fn add(&mut self, o: &LaneStats) {
        self.connects += o.connects;
        self.resends += o.resends;
        self.duplicates += o.duplicates;
        self.timeouts += o.timeouts;
        self.out_of_tries += o.out_of_tries;
        self.redelivered += o.redelivered;
    }
}

/// A frame held by a lane.
struct Token {
    body: Rc<[u8]>,
    /// The tracked send it carries (0: none).
    req: u64,
    deadline: Duration,
}

struct OutLane {
    conn: Option<ConnId>,
    /// Reply bytes not yet a whole frame.
    rx: Vec<u8>,
    tx: TxSession<Token>,
    /// The deadline a timer is set for.
    timer: Option<Duration>,
}

/// An accepted connection: who opened it, its receive state, bytes not yet a whole frame.
struct InConn {
    from: NodeId,
    session: RxSession,
    buf: Vec<u8>,
}

/// A node's lanes, both ways.
pub struct RetryLanes {
    model: LaneModel,
    member: Member,
    /// The node's life, its incarnation in every handshake.
    life: u64,
    lanes: BTreeMap<(NodeId, Lane), OutLane>,
    conns: BTreeMap<ConnId, (NodeId, Lane)>,
    inbound: BTreeMap<ConnId, InConn>,
    dedup: DedupTable,
    /// Every frame delivered in this life: (sender, its life, lane, number).
    delivered: BTreeSet<(NodeId, u64, u32, u64)>,
    out: RxOutput,
    /// Tracked sends given up on, not taken yet: (destination, request).
    failed: Vec<(NodeId, u64)>,
    /// Tracked sends whose answer (the manager's ack or refusal) has not come, with their
    /// deadline: production's synchronized-ack send waits for that answer within its timeout.
    answers: BTreeMap<(NodeId, u64), Duration>,
    /// The deadline the answers' timer is set for.
    answers_timer: Option<Duration>,
    pub stats: LaneStats,
    /// [`TRACE_ENV`] is set.
    trace: bool,
}

fn lane_no(lane: Lane) -> u32 {
    match lane {
        Lane::Sync => MANAGER_LANES,
        Lane::Async => MANAGER_LANES + 1,
    }
}

fn timer_token((to, lane): (NodeId, Lane)) -> u64 {
    TIMER_BASE + 2 * to.0 as u64 + u64::from(lane == Lane::Async)
}

impl RetryLanes {
    pub fn new(model: LaneModel, me: NodeId) -> RetryLanes {
        RetryLanes {
            model,
            member: sim_member(me),
            life: 0,
            lanes: BTreeMap::new(),
            conns: BTreeMap::new(),
            inbound: BTreeMap::new(),
            dedup: DedupTable::new(DEDUP_CAPACITY),
            delivered: BTreeSet::new(),
            out: RxOutput::default(),
            failed: Vec::new(),
            answers: BTreeMap::new(),
            answers_timer: None,
            stats: LaneStats::default(),
            trace: std::env::var_os(TRACE_ENV).is_some(),
        }
    }

    /// The node (re)started in life `life`: its handshakes name it.
    pub fn started(&mut self, life: u64) {
        self.life = life;
    }

    /// Holds `body` for `to` on `lane` (asking for a transport ack if `ack`), and writes what
    /// the lane allows. Returns the frame's length.
    pub fn send(
        &mut self,
        to: NodeId,
        lane: Lane,
        ack: bool,
        req: u64,
        body: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> u64 {
        let key = (to, lane);
        let (tries, window) = match lane {
            Lane::Sync => (self.model.max_tries, self.model.window),
            Lane::Async => (self.model.max_tries, usize::MAX),
        };
        let l = self.lanes.entry(key).or_insert_with(|| OutLane {
            conn: None,
            rx: Vec::new(),
            tx: TxSession::new(lane_no(lane), tries, window),
            timer: None,
        });
        let seq = l.tx.next_seq();
        let deadline = ctx.now() + self.model.timeout;
        let token = Token {
            body: body.into(),
            req,
            deadline,
        };
        l.tx.push(seq, ack, token);
        if req > 0 {
            self.answers.insert((to, req), deadline);
            self.arm_answers(ctx);
        }
        self.arm(key, ctx);
        self.pump(key, ctx);
        (body.len() + frame::HEADER_LEN) as u64
    }

    /// `from` answered the tracked send `req` (acked or refused it): no deadline for it now.
    pub fn answered(&mut self, from: NodeId, req: u64) {
        self.answers.remove(&(from, req));
    }

    /// Sets the answers' timer at the earliest deadline of an answer awaited, if none is set.
    fn arm_answers(&mut self, ctx: &mut Ctx<'_>) {
        if self.answers_timer.is_some() {
            return;
        }
        if let Some(&at) = self.answers.values().min() {
            self.answers_timer = Some(at);
            ctx.set_timer(at.saturating_sub(ctx.now()), ANSWERS_TIMER);
        }
    }

    /// The answers' deadline: the tracked sends whose answer did not come in time fail.
    fn answers_due(&mut self, ctx: &mut Ctx<'_>) {
        self.answers_timer = None;
        let now = ctx.now();
        let late: Vec<(NodeId, u64)> = self
            .answers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            self.answers.remove(&k);
            self.stats.timeouts += 1;
            self.failed.push(k);
        }
        self.arm_answers(ctx);
    }

    /// Sets the lane's timer at the earliest deadline of a frame it holds, if none is set.
    fn arm(&mut self, key: (NodeId, Lane), ctx: &mut Ctx<'_>) {
        let Some(l) = self.lanes.get_mut(&key) else {
            return;
        };
        if l.timer.is_some() {
            return;
        }
        // Deadlines rise with the frames (each is its send's start plus the timeout).
        if let Some(f) = l.tx.frames().iter().find(|f| !f.acked) {
            let at = f.token.deadline;
            l.timer = Some(at);
            ctx.set_timer(at.saturating_sub(ctx.now()), timer_token(key));
        }
    }

    /// Connects the lane if its session wants a connection, or writes what it allows.
    fn pump(&mut self, key: (NodeId, Lane), ctx: &mut Ctx<'_>) {
        let Some(l) = self.lanes.get_mut(&key) else {
            return;
        };
        match l.conn {
            None if l.tx.wants_connection() => {
                let conn = ctx.connect(key.0);
                l.conn = Some(conn);
                l.tx.connecting();
                l.rx.clear();
                self.conns.insert(conn, key);
                self.stats.connects += 1;
                if self.trace {
                    eprintln!(
                        "{:?} {} lane {:?}->{}: connect {conn:?}, {} frames held",
                        ctx.now(),
                        self.member.name,
                        key.1,
                        key.0,
                        l.tx.frames().len()
                    );
                }
                // Written at once: the bytes wait in the pipe until the connection opens.
                let mut hello = Vec::new();
                let (cluster, member) = (&self.model.cluster, &self.member);
                l.tx.write_hello(cluster, member, self.life, &mut hello);
                ctx.send(conn, hello);
            }
            Some(conn) if l.tx.phase() == TxPhase::Ready => {
                let mut out = Vec::new();
                while let Some(f) = l.tx.next_write() {
                    if f.acked {
                        continue; // acked on an earlier connection: its bytes are not needed
                    }
                    let flags = if f.ack { FLAG_ACK } else { 0 };
                    frame::encode_frame(&mut out, FrameKind::Data, flags, f.seq, &f.token.body);
                    self.stats.resends += u64::from(f.writes > 1);
                }
                while l.tx.pop_done().is_some() {}
                if !out.is_empty() {
                    if self.trace {
                        eprintln!(
                            "{:?} {} lane {:?}->{}: {} bytes on {conn:?}, {} frames held",
                            ctx.now(),
                            self.member.name,
                            key.1,
                            key.0,
                            out.len(),
                            l.tx.frames().len()
                        );
                    }
                    ctx.send(conn, out);
                }
            }
            _ => {}
        }
    }

    /// Takes the frames the lane's session gave up on: the tracked ones are failed sends.
    fn take_given_up(&mut self, key: (NodeId, Lane), now: Duration) {
        let Some(l) = self.lanes.get_mut(&key) else {
            return;
        };
        if l.tx.phase() == TxPhase::Closed {
            for f in l.tx.give_up(|t| t.deadline <= now) {
                self.stats.timeouts += 1;
                if f.token.req > 0 && self.answers.remove(&(key.0, f.token.req)).is_some() {
                    self.failed.push((key.0, f.token.req));
                }
            }
        }
        while let Some(f) = l.tx.pop_failed() {
            self.stats.out_of_tries += 1;
            if f.token.req > 0 && self.answers.remove(&(key.0, f.token.req)).is_some() {
                self.failed.push((key.0, f.token.req));
            }
        }
    }

    /// The lane's connection is gone (broken, or closed by this node): the frames it held are
    /// charged a try; those out of tries (or past their deadline) are given up on, the rest
    /// go again on a new connection.
    fn broken(&mut self, key: (NodeId, Lane), ctx: &mut Ctx<'_>) {
        let Some(l) = self.lanes.get_mut(&key) else {
            return;
        };
        if let Some(conn) = l.conn.take() {
            self.conns.remove(&conn);
            if self.trace {
                eprintln!(
                    "{:?} {} lane {:?}->{}: {conn:?} gone ({:?}), {} frames held",
                    ctx.now(),
                    self.member.name,
                    key.1,
                    key.0,
                    l.tx.phase(),
                    l.tx.frames().len()
                );
            }
        }
        l.rx.clear();
        l.tx.disconnected();
        let before = self.failed.len();
        self.take_given_up(key, ctx.now());
        if self.trace && self.failed.len() > before {
            eprintln!(
                "{:?} {} lane {:?}->{}: gave up on requests {:?}",
                ctx.now(),
                self.member.name,
                key.1,
                key.0,
                &self.failed[before..]
            );
        }
        self.pump(key, ctx);
        self.arm(key, ctx);
    }

    /// Closes the connections to `to` (it left, or a new life of it shook hands): what they
    /// held goes again on new connections, as production's pooled sends retry.
    pub fn forget(&mut self, to: NodeId, ctx: &mut Ctx<'_>) {
        let keys: Vec<(NodeId, Lane)> = self
            .lanes
            .iter()
            .filter(|(k, l)| k.0 == to && l.conn.is_some())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(conn) = self.lanes.get(&key).and_then(|l| l.conn) {
                ctx.close(conn);
            }
            self.broken(key, ctx);
        }
    }

    /// The destinations with a connection open or opening, in order.
    pub fn destinations(&self) -> Vec<NodeId> {
        let d: BTreeSet<NodeId> = self.conns.values().map(|(n, _)| *n).collect();
        d.into_iter().collect()
    }

    /// A connection from `from` was accepted.
    pub fn accept(&mut self, conn: ConnId, from: NodeId) {
        self.inbound.insert(
            conn,
            InConn {
                from,
                session: RxSession::default(),
                buf: Vec::new(),
            },
        );
    }

    /// `conn` closed.
    pub fn closed(&mut self, conn: ConnId, ctx: &mut Ctx<'_>) {
        if self.inbound.remove(&conn).is_some() {
            return;
        }
        if let Some(&key) = self.conns.get(&conn) {
            self.broken(key, ctx);
        }
    }

    /// A lane's deadline timer: its frames past their deadline fail (and its connection is
    /// closed, as a sender whose ack did not come in time closes it). `false`: not a lane's
    /// timer.
    pub fn on_timer(&mut self, token: u64, ctx: &mut Ctx<'_>) -> bool {
        if token == ANSWERS_TIMER {
            self.answers_due(ctx);
            return true;
        }
        if !(TIMER_BASE..TIMER_BASE + (1 << 31)).contains(&token) {
            return false;
        }
        let n = token - TIMER_BASE;
        let lane = if n % 2 == 1 { Lane::Async } else { Lane::Sync };
        let key = (NodeId((n / 2) as usize), lane);
        let now = ctx.now();
        let Some(l) = self.lanes.get_mut(&key) else {
            return true;
        };
        l.timer = None;
        let late =
            l.tx.frames()
                .iter()
                .any(|f| !f.acked && f.token.deadline <= now);
        if late {
            if let Some(conn) = l.conn {
                ctx.close(conn);
            }
            self.broken(key, ctx);
        }
        self.arm(key, ctx);
        true
    }

    /// Tracked sends given up on since the last call: (destination, request), in order.
    pub fn take_failed(&mut self) -> Vec<(NodeId, u64)> {
        std::mem::take(&mut self.failed)
    }

    /// Bytes arrived on `conn`: on an accepted one, the sender and the bodies delivered (not
    /// the duplicates of a resent frame); on one this node opened, the replies (handshake
    /// answer, acks), taken here.
    ///
    /// # Panics
    /// On a bad frame, a refused handshake or an undecodable body: the simulated members are
    /// one cluster and speak one protocol.
    pub fn read<M: DeserializeOwned>(
        &mut self,
        me: NodeId,
        conn: ConnId,
        bytes: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> Option<(NodeId, Vec<M>)> {
        if let Some(&key) = self.conns.get(&conn) {
            self.replies(key, bytes, ctx);
            return None;
        }
        let c = self.inbound.get_mut(&conn)?;
        c.buf.extend_from_slice(bytes);
        self.out.clear();
        let settings = RxSettings {
            cluster: &self.model.cluster,
            local: &self.member,
            incarnation: self.life,
            max_frame_size: MAX_FRAME,
            key: None,
        };
        let from = c.from;
        let used = match c
            .session
            .on_bytes(&mut c.buf, &settings, &mut self.dedup, &mut self.out)
        {
            Ok(used) => used,
            Err(e) => panic!("{me}: connection from {from} closed: {e}"),
        };
        self.stats.duplicates += self.out.duplicates;
        let mut got = Vec::with_capacity(self.out.deliveries.len());
        let lane = c.session.lane_key().map(|k| (k.incarnation, k.lane));
        for d in &self.out.deliveries {
            if let Some((life, lane)) = lane {
                if !self.delivered.insert((from, life, lane, d.seq)) {
                    self.stats.redelivered += 1;
                }
            }
            match decode_body::<M>(&c.buf[d.start..d.end]) {
                Ok(m) => got.push(m),
                Err(e) => panic!("{me}: undecodable body from {from}: {e}"),
            }
        }
        if self.trace && !self.out.deliveries.is_empty() {
            let seqs: Vec<u64> = self.out.deliveries.iter().map(|d| d.seq).collect();
            eprintln!(
                "{:?} {} <- {from} on {conn:?}: frames {seqs:?} ({} duplicates)",
                ctx.now(),
                self.member.name,
                self.out.duplicates
            );
        }
        c.buf.drain(..used);
        let reply = std::mem::take(&mut self.out.reply);
        ctx.send(conn, reply);
        Some((from, got))
    }

    /// Replies on a lane's connection: the handshake answer, then acks.
    fn replies(&mut self, key: (NodeId, Lane), bytes: &[u8], ctx: &mut Ctx<'_>) {
        let Some(l) = self.lanes.get_mut(&key) else {
            return;
        };
        l.rx.extend_from_slice(bytes);
        let mut used = 0;
        loop {
            let (f, n) = match parse_frame(&l.rx[used..], MAX_FRAME) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => panic!("bad reply from {}: {e}", key.0),
            };
            used += n;
            let kind = f.header.kind;
            if l.tx.phase() != TxPhase::Ready {
                if let Err(e) =
                    l.tx.on_handshake_answer(kind, f.header.flags, f.body, false)
                {
                    panic!("handshake with {} failed: {e}", key.0);
                }
                continue;
            }
            match kind {
                FrameKind::Ack => {
                    // An ack for a frame of an earlier connection is stale: nothing to do.
                    let _: AckMatch = l.tx.on_ack(f.header.seq);
                }
                k => panic!("{k:?} reply from {}", key.0),
            }
        }
        l.rx.drain(..used);
        while l.tx.pop_done().is_some() {}
        self.pump(key, ctx);
        self.arm(key, ctx);
    }
}
