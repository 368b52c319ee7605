//! A simulated member of the multicast membership: the real [`MembershipState`] driven the way
//! `membership::service` drives it, over simulated datagrams and connections, with the real
//! codecs (heartbeat and leave datagrams of `membership::record`, handshake and ping frames of
//! `wire`) and the real receive path (`RxSession`) answering the checks of the others.
//!
//! What the shell does, and this node does on the virtual clock:
//! - every `frequency` it multicasts a heartbeat ([`record::Kind::Heartbeat`]); a heartbeat
//!   heard calls `heard(member, Multicast)`, a leave datagram `left(id)`;
//! - every `tick` (the service's formula) it calls `tick(now)`;
//! - one prober works through a FIFO of jobs, one at a time: `Verify(m)` connects to the member,
//!   shakes hands and checks who answered (`verified`); a ping round pings every member on a
//!   pooled connection (`heard(m, Direct)` or `send_failed`). A new round is queued every
//!   `ping_interval` unless the previous one is still running;
//! - a handshake accepted from a peer is `heard(peer, Direct)`, as the channel's `peer_hello`;
//! - `Added` / `Disappeared` update the listener's list (the real [`Membership`]) and a
//!   disappeared member's pooled connection is dropped, as `ChannelInner::member_gone` does.
//!
//! Every `Added`, `StillAlive`, `Disappeared` and `Verify` goes to a [`MembershipJournal`] with
//! its virtual time; the journal survives crashes (it is the observer's record, not the node's
//! memory).

use super::lane_node::{node_of, sim_member};
use super::net::{CloseReason, ConnId, NodeId};
use super::{Ctx, Node, Sim, SimRng};
use crate::config::{McastConfig, MembershipConfig};
use crate::error::SendFailure;
use crate::member::{Member, MemberId};
use crate::membership::incarnation::Incarnations;
use crate::membership::record::{self, Kind, McastRecord};
use crate::membership::state::{Action, DetectorConfig, MembershipState, Source};
use crate::membership::Membership;
use crate::transport::dedup::DedupTable;
use crate::transport::rx_session::{RxOutput, RxSession, RxSettings};
use crate::wire::frame::{self, FrameKind};
use crate::wire::{decode_body, encode_body, parse_frame, Handshake, HandshakeAccept, Reason};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Every timer token of this node is at or above this, so that a node embedding it (a session
/// manager's member, see `detected`) tells its timers from the detector's.
pub const TIMER_BASE: u64 = 1 << 56;
const TIMER_START: u64 = TIMER_BASE + 1;
const TIMER_BEAT: u64 = TIMER_BASE + 2;
const TIMER_TICK: u64 = TIMER_BASE + 3;
const TIMER_ROUND: u64 = TIMER_BASE + 4;
/// Timeout of prober operation `n` is token `TIMER_OP + n`.
const TIMER_OP: u64 = TIMER_BASE + (1 << 32);
/// Lane number of the pooled ping connection (pooled lanes start at 1) and of a probe.
const PING_LANE: u32 = 1;
const PROBE_LANE: u32 = u32::MAX;

/// Settings of a simulated member. [`Default`] is the crate's defaults with multicast on.
#[derive(Clone, Debug)]
pub struct MembershipSimConfig {
    pub cluster: String,
    /// Heartbeat period (`McastConfig::frequency`).
    pub frequency: Duration,
    /// `McastConfig::drop_time`.
    pub drop_time: Duration,
    /// `MembershipConfig::expiration_time` (members found by ping or connection).
    pub expiration_time: Duration,
    /// `MembershipConfig::ping_interval`; `None` for no ping rounds, as in Tomcat's default
    /// stack (no `TcpPingInterceptor`), so that heartbeats and the detector alone decide.
    pub ping_interval: Option<Duration>,
    /// `MembershipConfig::connect_timeout`: a verification or ping not answered by then fails.
    pub connect_timeout: Duration,
    /// `MembershipConfig::failure_detector`.
    pub verify: bool,
    pub domain: String,
    pub max_frame_size: u32,
}

impl Default for MembershipSimConfig {
    fn default() -> Self {
        let ms = MembershipConfig::default();
        let mc = McastConfig::default();
        MembershipSimConfig {
            cluster: "tribecast-sim".into(),
            frequency: mc.frequency,
            drop_time: mc.drop_time,
            expiration_time: ms.expiration_time,
            ping_interval: Some(ms.ping_interval),
            connect_timeout: ms.connect_timeout,
            verify: ms.failure_detector,
            domain: String::new(),
            max_frame_size: 1 << 20,
        }
    }
}

impl MembershipSimConfig {
    /// Period of `tick`, computed as `MembershipService::start` does.
    pub fn tick(&self) -> Duration {
        let mut tick = self.expiration_time / 4;
        if let Some(p) = self.ping_interval {
            tick = tick.min(p);
        }
        tick = tick.min(self.frequency);
        (tick / 5).max(Duration::from_millis(5))
    }

    fn detector(&self) -> DetectorConfig {
        DetectorConfig {
            drop_time: self.drop_time,
            expiration_time: self.expiration_time,
            verify: self.verify,
            domain: self.domain.clone(),
            leave_grace: self.connect_timeout,
        }
    }
}

/// What a node announced about a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Added,
    StillAlive,
    Disappeared(String),
}

/// One announcement, with when and in which life of the observer it was made.
#[derive(Clone, Debug)]
pub struct MemberEvent {
    pub at: Duration,
    pub life: u32,
    pub member: NodeId,
    pub kind: EventKind,
}

/// The observer's record of one node, kept across its crashes.
#[derive(Clone, Debug, Default)]
pub struct MembershipJournal {
    /// 0, then +1 per restart.
    pub life: u32,
    pub events: Vec<MemberEvent>,
    /// `Verify` actions: when, and of whom.
    pub verifications: Vec<(Duration, NodeId)>,
    pub heartbeats_sent: u64,
    /// When the last heartbeat was sent.
    pub last_heartbeat_sent: Duration,
    pub heartbeats_received: u64,
    pub leaves_received: u64,
    /// Handshakes that showed a known member with a new incarnation (it restarted under the
    /// same id): reported gone, then back with its hello, as the channel does.
    pub restarts_seen: u64,
    pub datagrams_refused: u64,
    pub pings_ok: u64,
    pub pings_failed: u64,
    pub probes_ok: u64,
    pub probes_failed: u64,
    /// Prober operations ended by their timeout (no answer at all).
    pub timeouts: u64,
    /// Handshakes accepted from peers.
    pub hellos: u64,
    /// Per sender: when its last heartbeat arrived in this life.
    pub last_heartbeat: BTreeMap<NodeId, Duration>,
    /// Per sender: the longest time between two of its heartbeats arriving (within one life).
    pub max_heartbeat_gap: BTreeMap<NodeId, Duration>,
}

impl MembershipJournal {
    /// Events about `member`.
    pub fn about(&self, member: NodeId) -> impl Iterator<Item = &MemberEvent> + '_ {
        self.events.iter().filter(move |e| e.member == member)
    }

    pub fn disappeared(&self) -> impl Iterator<Item = &MemberEvent> + '_ {
        self.events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Disappeared(_)))
    }

    pub fn count(&self, member: NodeId, kind: fn(&EventKind) -> bool) -> usize {
        self.about(member).filter(|e| kind(&e.kind)).count()
    }
}

enum Job {
    Verify(Member),
    Round(Vec<Member>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Probe,
    Ping,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Accept,
    Ack(u64),
}

/// The check the prober runs now.
struct Op {
    id: u64,
    kind: OpKind,
    member: Member,
    conn: ConnId,
    awaiting: Awaiting,
}

/// A pooled connection used for pings.
struct Link {
    conn: ConnId,
    /// Handshake done.
    ready: bool,
    /// The connection broke while idle: the next ping on it fails (as a write on a reset
    /// socket does), and drops it.
    broken: Option<CloseReason>,
}

/// Bytes received on a connection this node opened, not yet parsed.
#[derive(Default)]
struct ClientBuf {
    buf: Vec<u8>,
}

#[derive(Default)]
struct RxConn {
    session: RxSession,
    buf: Vec<u8>,
}

/// A member: heartbeats, detector, prober and receiver.
pub struct MembershipNode {
    cfg: MembershipSimConfig,
    member: Member,
    /// Virtual time zero as an `Instant` (the state wants instants; only differences matter).
    base: Instant,
    state: MembershipState,
    /// The listeners' view, as the channel keeps it.
    list: Membership,
    running: bool,
    started: Duration,
    incarnation: u64,
    next_seq: u64,
    next_op: u64,
    jobs: VecDeque<Job>,
    /// Members left to ping in the running round.
    round: Option<VecDeque<Member>>,
    /// A round is queued or running (the service's `prober_busy`).
    round_busy: bool,
    op: Option<Op>,
    links: BTreeMap<MemberId, Link>,
    client: BTreeMap<ConnId, ClientBuf>,
    accepted: BTreeMap<ConnId, RxConn>,
    dedup: DedupTable,
    /// The incarnation each member last shook hands with (the channel's `incarnations`).
    incarnations: Incarnations,
    /// Bumped by every action of the detector and by a restart: the invariants re-read the
    /// member lists only when it moved.
    version: u64,
    pub journal: MembershipJournal,
}

/// The node that owns a simulated address (`sim_member` gives node `i` port `4000 + i`).
fn node_at(addr: SocketAddr) -> NodeId {
    NodeId(usize::from(addr.port().wrapping_sub(4000)))
}

fn who(m: &Member) -> NodeId {
    node_of(&m.id).unwrap_or(NodeId(usize::MAX))
}

impl MembershipNode {
    pub fn new(id: NodeId, cfg: &MembershipSimConfig, rng: &mut SimRng) -> MembershipNode {
        let member = Member {
            domain: cfg.domain.clone(),
            ..sim_member(id)
        };
        MembershipNode {
            state: MembershipState::new(cfg.detector(), member.id),
            cfg: cfg.clone(),
            member,
            base: Instant::now(),
            list: Membership::default(),
            running: false,
            started: Duration::ZERO,
            incarnation: rng.next_u64(),
            next_seq: 0,
            next_op: 0,
            jobs: VecDeque::new(),
            round: None,
            round_busy: false,
            op: None,
            links: BTreeMap::new(),
            client: BTreeMap::new(),
            accepted: BTreeMap::new(),
            dedup: DedupTable::new(64),
            incarnations: Incarnations::default(),
            version: 0,
            journal: MembershipJournal::default(),
        }
    }

    /// Still taking part (started and not left).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The members the detector holds present, as nodes.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.state.members().map(who).collect()
    }

    /// The members the listeners were told of (the channel's list).
    pub fn listed(&self) -> BTreeSet<NodeId> {
        self.list.snapshot().iter().map(who).collect()
    }

    /// The detector's members, without allocating (for the invariants, run at every step).
    fn member_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.state.members().map(who)
    }

    /// The listeners' list holds exactly the detector's members (both are sorted by id).
    fn listeners_agree(&self) -> bool {
        let snapshot = self.list.snapshot();
        self.state
            .members()
            .map(|m| m.id)
            .eq(snapshot.iter().map(|m| m.id))
    }

    /// Whether `conn` is a connection of this node's (one it opened, or accepted and reads).
    pub fn owns(&self, conn: ConnId) -> bool {
        self.client.contains_key(&conn) || self.accepted.contains_key(&conn)
    }

    /// Remembers the incarnation `member` shook hands with, either way round, as the channel's
    /// `note_incarnation` does: a changed non-zero one means it restarted under the same id and
    /// lost what it held, so it is reported gone now (`MembershipState::restarted`); its hello
    /// then adds it back.
    /// Returns whether it was such a restart.
    fn note_incarnation(&mut self, member: &Member, incarnation: u64, ctx: &mut Ctx<'_>) -> bool {
        let restarted = self.incarnations.note(member.id, incarnation);
        if restarted {
            self.journal.restarts_seen += 1;
            let a = self.state.restarted(&member.id);
            self.act(a, ctx);
        }
        restarted
    }

    /// Graceful stop: the leave datagram goes out, then the node does nothing more (its
    /// timers, datagrams and connections are ignored). Crash it next to end the process.
    pub fn leave(&mut self, ctx: &mut Ctx<'_>) {
        if !self.running {
            return;
        }
        let rec = McastRecord {
            cluster: self.cfg.cluster.clone(),
            member: self.member.clone(),
            alive_ms: 0,
        };
        ctx.multicast(record::encode(Kind::Leave, &rec));
        self.running = false;
        for conn in std::mem::take(&mut self.client).into_keys() {
            ctx.close(conn);
        }
        for conn in std::mem::take(&mut self.accepted).into_keys() {
            ctx.close(conn);
        }
        self.links.clear();
        self.op = None;
        self.jobs.clear();
        self.round = None;
    }

    fn now(&self, ctx: &Ctx<'_>) -> Instant {
        self.base + ctx.now()
    }

    // ---- the membership thread ----

    fn heartbeat(&mut self, ctx: &mut Ctx<'_>) {
        let alive_ms = u64::try_from((ctx.now() - self.started).as_millis()).unwrap_or(u64::MAX);
        let rec = McastRecord {
            cluster: self.cfg.cluster.clone(),
            member: self.member.clone(),
            alive_ms,
        };
        ctx.multicast(record::encode(Kind::Heartbeat, &rec));
        self.journal.heartbeats_sent += 1;
        self.journal.last_heartbeat_sent = ctx.now();
    }

    fn queue_round(&mut self, ctx: &mut Ctx<'_>) {
        if self.round_busy {
            return; // a round still running makes this one skip
        }
        let members: Vec<Member> = self.state.members().cloned().collect();
        self.round_busy = true;
        self.jobs.push_back(Job::Round(members));
        self.pump(ctx);
    }

    /// Carries out what the detector decided (the service's `act`, the channel's sink).
    fn act(&mut self, action: Option<Action>, ctx: &mut Ctx<'_>) {
        let Some(action) = action else {
            return;
        };
        self.version += 1;
        let at = ctx.now();
        let life = self.journal.life;
        let event = |member: &Member, kind| MemberEvent {
            at,
            life,
            member: who(member),
            kind,
        };
        match action {
            Action::Added(m) => {
                self.list.seen(&m);
                let e = event(&m, EventKind::Added);
                self.journal.events.push(e);
            }
            Action::StillAlive(m) => {
                let e = event(&m, EventKind::StillAlive);
                self.journal.events.push(e);
            }
            Action::Disappeared(m, why) => {
                self.list.remove(&m.id);
                // As the channel's `member_gone`: its next incarnation is not a restart.
                self.incarnations.forget(&m.id);
                let e = event(&m, EventKind::Disappeared(why));
                self.journal.events.push(e);
                // The sender forgets the member's connections.
                if let Some(link) = self.links.remove(&m.id) {
                    self.client.remove(&link.conn);
                    ctx.close(link.conn);
                    if self.op.as_ref().is_some_and(|op| op.conn == link.conn) {
                        let op = self.op.take();
                        self.settle(op, Err(SendFailure::NotAMember), ctx);
                    }
                }
            }
            Action::Verify(m) => {
                self.journal.verifications.push((at, who(&m)));
                self.jobs.push_back(Job::Verify(m));
                self.pump(ctx);
            }
        }
    }

    // ---- the prober ----

    /// Starts the next check if the prober is idle.
    fn pump(&mut self, ctx: &mut Ctx<'_>) {
        while self.op.is_none() && self.running {
            if let Some(round) = &mut self.round {
                match round.pop_front() {
                    Some(m) => {
                        if self.start_ping(m, ctx) {
                            continue;
                        }
                        return;
                    }
                    None => {
                        self.round = None;
                        self.round_busy = false; // RoundDone
                        continue;
                    }
                }
            }
            match self.jobs.pop_front() {
                None => return,
                Some(Job::Round(members)) => self.round = Some(members.into()),
                Some(Job::Verify(m)) => self.start_probe(m, ctx),
            }
        }
    }

    fn new_op(&mut self, kind: OpKind, member: Member, conn: ConnId, ctx: &mut Ctx<'_>) {
        self.next_op += 1;
        let id = self.next_op;
        let awaiting = match kind {
            OpKind::Probe => Awaiting::Accept,
            OpKind::Ping => {
                if self.links.get(&member.id).is_some_and(|l| l.ready) {
                    self.next_seq += 1;
                    let seq = self.next_seq;
                    let mut ping = Vec::new();
                    frame::encode_frame(&mut ping, FrameKind::Ping, 0, seq, &[]);
                    ctx.send(conn, ping);
                    Awaiting::Ack(seq)
                } else {
                    Awaiting::Accept
                }
            }
        };
        ctx.set_timer(self.cfg.connect_timeout, TIMER_OP + id);
        self.op = Some(Op {
            id,
            kind,
            member,
            conn,
            awaiting,
        });
    }

    fn open(&mut self, to: &Member, lane: u32, ctx: &mut Ctx<'_>) -> ConnId {
        let conn = ctx.connect(node_at(to.addr));
        let hs = Handshake {
            cluster: self.cfg.cluster.clone(),
            protocol_version: frame::PROTOCOL_VERSION,
            member: self.member.clone(),
            incarnation: self.incarnation,
            lane,
        };
        let mut hello = Vec::new();
        frame::encode_frame(&mut hello, FrameKind::Handshake, 0, 0, &encode_body(&hs));
        ctx.send(conn, hello);
        self.client.insert(conn, ClientBuf::default());
        conn
    }

    fn start_probe(&mut self, m: Member, ctx: &mut Ctx<'_>) {
        let conn = self.open(&m, PROBE_LANE, ctx);
        self.new_op(OpKind::Probe, m, conn, ctx);
    }

    /// Pings `m` on its pooled connection, connecting first if there is none. `false` when the
    /// ping failed at once (its connection broke while idle); the result is already settled.
    fn start_ping(&mut self, m: Member, ctx: &mut Ctx<'_>) -> bool {
        if let Some(why) = self.links.get(&m.id).and_then(|l| l.broken) {
            let link = self.links.remove(&m.id);
            if let Some(link) = link {
                self.client.remove(&link.conn);
            }
            self.settle_ping(&m, Err(failure(why)), ctx);
            return true;
        }
        let conn = match self.links.get(&m.id) {
            Some(l) => l.conn,
            None => {
                let conn = self.open(&m, PING_LANE, ctx);
                self.links.insert(
                    m.id,
                    Link {
                        conn,
                        ready: false,
                        broken: None,
                    },
                );
                conn
            }
        };
        self.new_op(OpKind::Ping, m, conn, ctx);
        false
    }

    /// Ends the running check with `result` and reports it to the detector.
    fn settle(&mut self, op: Option<Op>, result: Result<(), SendFailure>, ctx: &mut Ctx<'_>) {
        let Some(op) = op else {
            return;
        };
        match op.kind {
            OpKind::Probe => {
                self.client.remove(&op.conn);
                ctx.close(op.conn);
                let now = self.now(ctx);
                let a = match result {
                    Ok(()) => {
                        self.journal.probes_ok += 1;
                        self.state.verified(&op.member.id, true, "", now)
                    }
                    Err(e) => {
                        self.journal.probes_failed += 1;
                        self.state
                            .verified(&op.member.id, false, &e.to_string(), now)
                    }
                };
                self.act(a, ctx);
            }
            OpKind::Ping => {
                if result.is_err() && self.links.get(&op.member.id).map(|l| l.conn) == Some(op.conn)
                {
                    self.links.remove(&op.member.id);
                    self.client.remove(&op.conn);
                    ctx.close(op.conn);
                }
                self.settle_ping(&op.member, result, ctx);
            }
        }
        self.pump(ctx);
    }

    fn settle_ping(&mut self, m: &Member, result: Result<(), SendFailure>, ctx: &mut Ctx<'_>) {
        let a = match result {
            Ok(()) => {
                self.journal.pings_ok += 1;
                let now = self.now(ctx);
                self.state.heard(m, Source::Direct, now)
            }
            Err(e) => {
                self.journal.pings_failed += 1;
                self.state.send_failed(&m.id, &format!("ping: {e}"))
            }
        };
        self.act(a, ctx);
    }

    /// Bytes on a connection this node opened.
    fn client_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        let Some(c) = self.client.get_mut(&conn) else {
            return;
        };
        c.buf.extend_from_slice(bytes);
        loop {
            let Some(c) = self.client.get_mut(&conn) else {
                return;
            };
            let (kind, seq, body, used) = match parse_frame(&c.buf, self.cfg.max_frame_size) {
                Ok(None) => return,
                Ok(Some((f, used))) => (f.header.kind, f.header.seq, f.body.to_vec(), used),
                Err(e) => {
                    self.client_failed(conn, SendFailure::Protocol(e.to_string()), ctx);
                    return;
                }
            };
            c.buf.drain(..used);
            let Some(op) = self.op.as_mut().filter(|op| op.conn == conn) else {
                continue; // a late answer on an idle pooled connection
            };
            match (op.awaiting, kind) {
                (Awaiting::Accept, FrameKind::HandshakeAccept) => {
                    let (answered, incarnation) = match decode_body::<HandshakeAccept>(&body) {
                        Ok(a) => (a.member, a.incarnation),
                        Err(e) => {
                            let e = format!("undecodable handshake answer: {e}");
                            self.client_failed(conn, SendFailure::Protocol(e), ctx);
                            return;
                        }
                    };
                    // The sender's `peer_seen`: a restart the answer reveals is reported gone
                    // and back at once (a ping on the dropped member's link fails with it).
                    if self.note_incarnation(&answered, incarnation, ctx) {
                        let now = self.now(ctx);
                        let a = self.state.heard(&answered, Source::Direct, now);
                        self.act(a, ctx);
                    }
                    let Some(op) = self.op.as_mut().filter(|op| op.conn == conn) else {
                        continue;
                    };
                    match op.kind {
                        OpKind::Probe => {
                            let result = if answered.id == op.member.id {
                                Ok(())
                            } else {
                                Err(SendFailure::Protocol(format!(
                                    "another member answers there: {}",
                                    answered.id
                                )))
                            };
                            let op = self.op.take();
                            self.settle(op, result, ctx);
                            return;
                        }
                        OpKind::Ping => {
                            if let Some(l) = self.links.get_mut(&op.member.id) {
                                l.ready = true;
                            }
                            self.next_seq += 1;
                            let seq = self.next_seq;
                            op.awaiting = Awaiting::Ack(seq);
                            let mut ping = Vec::new();
                            frame::encode_frame(&mut ping, FrameKind::Ping, 0, seq, &[]);
                            ctx.send(conn, ping);
                        }
                    }
                }
                (Awaiting::Accept, FrameKind::HandshakeRefuse) => {
                    let reason = decode_body::<Reason>(&body)
                        .map_or_else(|e| format!("(undecodable reason: {e})"), |r| r.reason);
                    self.client_failed(conn, SendFailure::Refused(reason), ctx);
                    return;
                }
                (Awaiting::Ack(want), FrameKind::Ack) if seq == want => {
                    let op = self.op.take();
                    self.settle(op, Ok(()), ctx);
                    return;
                }
                // An answer to an earlier frame on this connection.
                (Awaiting::Ack(_), FrameKind::Ack | FrameKind::FailAck) => {}
                (_, k) => {
                    let e = format!("{k:?} frame from receiver");
                    self.client_failed(conn, SendFailure::Protocol(e), ctx);
                    return;
                }
            }
        }
    }

    /// A connection this node opened failed or spoke nonsense.
    fn client_failed(&mut self, conn: ConnId, e: SendFailure, ctx: &mut Ctx<'_>) {
        if self.op.as_ref().is_some_and(|op| op.conn == conn) {
            let op = self.op.take();
            self.settle(op, Err(e), ctx);
        } else if let Some(link) = self.links.values_mut().find(|l| l.conn == conn) {
            link.broken = Some(CloseReason::Reset);
            self.client.remove(&conn);
            ctx.close(conn);
        }
    }

    /// The timeout of prober operation `id`: if it still runs, nothing answered in time.
    fn op_timer(&mut self, id: u64, ctx: &mut Ctx<'_>) {
        let Some(op) = self.op.take_if(|op| op.id == id) else {
            return;
        };
        self.journal.timeouts += 1;
        self.client.remove(&op.conn);
        ctx.close(op.conn);
        if self.links.get(&op.member.id).map(|l| l.conn) == Some(op.conn) {
            self.links.remove(&op.member.id);
        }
        let e = SendFailure::Timeout(self.cfg.connect_timeout);
        self.settle(Some(op), Err(e), ctx);
    }

    // ---- the receiver ----

    fn rx_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        let Some(c) = self.accepted.get_mut(&conn) else {
            return;
        };
        c.buf.extend_from_slice(bytes);
        let settings = RxSettings {
            cluster: &self.cfg.cluster,
            local: &self.member,
            incarnation: self.incarnation,
            max_frame_size: self.cfg.max_frame_size,
            key: None,
        };
        let mut out = RxOutput::default();
        let result = c
            .session
            .on_bytes(&mut c.buf, &settings, &mut self.dedup, &mut out);
        let peer = c.session.peer().map(|p| p.id);
        let incarnation = c.session.lane_key().map_or(0, |k| k.incarnation);
        let mut reply = std::mem::take(&mut out.reply);
        // Read-test pings are answered by a worker; there is no data here to hand on.
        for d in out.deliveries.iter().filter(|d| d.ping) {
            frame::encode_frame(&mut reply, FrameKind::Ack, 0, d.seq, &[]);
        }
        ctx.send(conn, reply);
        match result {
            Ok(used) => {
                c.buf.drain(..used);
            }
            Err(_) => {
                self.accepted.remove(&conn);
                ctx.close(conn);
            }
        }
        let now = self.now(ctx);
        if let Some(peer) = out.hello {
            self.journal.hellos += 1;
            // The channel's `peer_hello`: a new incarnation is a restart (gone, then back).
            self.note_incarnation(&peer, incarnation, ctx);
            let a = self.state.heard(&peer, Source::Direct, now);
            self.act(a, ctx);
        }
        if let (true, Some(id)) = (out.leave, peer) {
            let a = self.state.left(&id, now);
            self.act(a, ctx);
        }
    }
}

fn failure(why: CloseReason) -> SendFailure {
    match why {
        CloseReason::ConnectFailed => SendFailure::Connect("connection refused".into()),
        CloseReason::Reset => SendFailure::Io("connection reset by peer".into()),
        CloseReason::PeerClosed => SendFailure::Io("connection closed by member".into()),
    }
}

impl Node for MembershipNode {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.running = true;
        self.started = ctx.now();
        // Members start at different moments: a random phase within one heartbeat period.
        let phase = ctx
            .rng()
            .duration_between(Duration::ZERO, self.cfg.frequency);
        ctx.set_timer(phase, TIMER_START);
    }

    fn on_accept(&mut self, conn: ConnId, _from: NodeId, ctx: &mut Ctx<'_>) {
        if !self.running {
            ctx.close(conn); // stopped: nothing listens any more
            return;
        }
        self.accepted.insert(conn, RxConn::default());
    }

    fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        if !self.running {
            return;
        }
        if self.accepted.contains_key(&conn) {
            self.rx_bytes(conn, bytes, ctx);
        } else {
            self.client_bytes(conn, bytes, ctx);
        }
    }

    fn on_closed(&mut self, conn: ConnId, why: CloseReason, ctx: &mut Ctx<'_>) {
        if self.accepted.remove(&conn).is_some() || !self.running {
            return;
        }
        if self.op.as_ref().is_some_and(|op| op.conn == conn) {
            self.client.remove(&conn);
            if let Some(op) = &self.op {
                if op.kind == OpKind::Ping {
                    self.links.remove(&op.member.id);
                }
            }
            let op = self.op.take();
            self.settle(op, Err(failure(why)), ctx);
        } else if let Some(link) = self.links.values_mut().find(|l| l.conn == conn) {
            // Idle: the sender learns of it at its next write.
            link.broken = Some(why);
            self.client.remove(&conn);
        } else {
            self.client.remove(&conn);
        }
    }

    fn on_timer(&mut self, token: u64, ctx: &mut Ctx<'_>) {
        if !self.running {
            return;
        }
        match token {
            TIMER_START => {
                self.heartbeat(ctx);
                ctx.set_timer(self.cfg.frequency, TIMER_BEAT);
                ctx.set_timer(self.cfg.tick(), TIMER_TICK);
                if let Some(every) = self.cfg.ping_interval {
                    self.queue_round(ctx);
                    ctx.set_timer(every, TIMER_ROUND);
                }
            }
            TIMER_BEAT => {
                self.heartbeat(ctx);
                ctx.set_timer(self.cfg.frequency, TIMER_BEAT);
            }
            TIMER_TICK => {
                let now = self.now(ctx);
                for a in self.state.tick(now) {
                    self.act(Some(a), ctx);
                }
                ctx.set_timer(self.cfg.tick(), TIMER_TICK);
            }
            TIMER_ROUND => {
                self.queue_round(ctx);
                if let Some(every) = self.cfg.ping_interval {
                    ctx.set_timer(every, TIMER_ROUND);
                }
            }
            t if t > TIMER_OP => self.op_timer(t - TIMER_OP, ctx),
            _ => {}
        }
    }

    fn on_datagram(&mut self, from: NodeId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        if !self.running {
            return;
        }
        let (kind, rec) = match record::decode(bytes) {
            Ok(x) => x,
            Err(_) => {
                self.journal.datagrams_refused += 1;
                return;
            }
        };
        if rec.cluster != self.cfg.cluster || rec.member.id == self.member.id {
            return;
        }
        // A record is only ever announced by its member: it must come from the member's host.
        if rec.member.addr.ip() != sim_member(from).addr.ip() {
            self.journal.datagrams_refused += 1;
            return;
        }
        let now = self.now(ctx);
        let a = match kind {
            Kind::Heartbeat => {
                let j = &mut self.journal;
                j.heartbeats_received += 1;
                let sender = who(&rec.member);
                if let Some(last) = j.last_heartbeat.insert(sender, ctx.now()) {
                    let gap = ctx.now().saturating_sub(last);
                    let max = j.max_heartbeat_gap.entry(sender).or_default();
                    *max = (*max).max(gap);
                }
                self.state.heard(&rec.member, Source::Multicast, now)
            }
            Kind::Leave => {
                self.journal.leaves_received += 1;
                self.state.left(&rec.member.id, now)
            }
        };
        self.act(a, ctx);
    }

    fn restarted(&self, rng: &mut SimRng) -> MembershipNode {
        let mut n = MembershipNode::new(who(&self.member), &self.cfg, rng);
        n.base = self.base;
        n.version = self.version + 1;
        n.journal = self.journal.clone();
        n.journal.life += 1;
        n.journal.last_heartbeat.clear();
        n
    }
}

// ---- invariants ----

/// Invariant `no-node-lists-itself`: neither the detector nor the listeners' list of a node
/// holds the node itself.
pub fn no_node_lists_itself() -> impl FnMut(&Sim<MembershipNode>) -> Result<(), String> {
    let mut seen = Versions::default();
    move |sim| {
        for n in sim.node_ids().filter(|n| seen.changed(sim, *n)) {
            let node = sim.node(n);
            if node.member_nodes().any(|m| m == n)
                || node.list.snapshot().iter().any(|m| who(m) == n)
            {
                return Err(format!("{n} lists itself"));
            }
        }
        Ok(())
    }
}

/// Invariant `listeners-match-detector`: the members the listeners were told of (`Added`
/// minus `Disappeared`, kept in the real `Membership` list) are the detector's members.
pub fn listeners_match_detector() -> impl FnMut(&Sim<MembershipNode>) -> Result<(), String> {
    let mut seen = Versions::default();
    move |sim| {
        for n in sim.node_ids().filter(|n| seen.changed(sim, *n)) {
            let node = sim.node(n);
            if !node.listeners_agree() {
                return Err(format!(
                    "{n}: detector holds {:?}, listeners were told {:?}",
                    node.members(),
                    node.listed()
                ));
            }
        }
        Ok(())
    }
}

/// Invariant `events-alternate`: per observer, per life of it, per member, announcements go
/// Added, Disappeared, Added, …; `StillAlive` only while the member is present.
pub fn events_alternate() -> impl FnMut(&Sim<MembershipNode>) -> Result<(), String> {
    let mut cursor: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut present: BTreeSet<(NodeId, u32, NodeId)> = BTreeSet::new();
    move |sim| {
        for n in sim.node_ids() {
            let events = &sim.node(n).journal.events;
            let from = cursor.insert(n, events.len()).unwrap_or(0);
            for e in &events[from..] {
                let key = (n, e.life, e.member);
                let ok = match e.kind {
                    EventKind::Added => present.insert(key),
                    EventKind::Disappeared(_) => present.remove(&key),
                    EventKind::StillAlive => present.contains(&key),
                };
                if !ok {
                    return Err(format!(
                        "{n} (life {}) announced {:?} of {} at {:?} out of turn",
                        e.life, e.kind, e.member, e.at
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Invariant `lists-only-reachable-members`: a running node lists a member only if that
/// member is up and not partitioned from it, or stopped being so at most `bound` ago.
pub fn lists_only_reachable_members(
    bound: Duration,
) -> impl FnMut(&Sim<MembershipNode>) -> Result<(), String> {
    // `[a * n + b]`: when `b` was last reachable from `a`.
    let mut last_reachable: Vec<Duration> = Vec::new();
    let mut seen = Versions::default();
    let mut lists: Vec<Vec<NodeId>> = Vec::new();
    move |sim| {
        let now = sim.now();
        let n = sim.node_ids().count();
        last_reachable.resize(n * n, Duration::ZERO);
        for a in sim.node_ids() {
            for b in sim.node_ids() {
                if a != b && sim.can_reach(a, b) && sim.node(b).is_running() {
                    last_reachable[a.0 * n + b.0] = now;
                }
            }
        }
        lists.resize(n, Vec::new());
        for a in sim.node_ids() {
            if seen.changed(sim, a) {
                lists[a.0] = sim.node(a).member_nodes().collect();
            }
        }
        for a in sim.node_ids().filter(|a| sim.is_up(*a)) {
            for &b in &lists[a.0] {
                let since = last_reachable
                    .get(a.0 * n + b.0)
                    .copied()
                    .unwrap_or_default();
                if now.saturating_sub(since) > bound {
                    return Err(format!(
                        "{a} still lists {b}, unreachable since {since:?} (more than {bound:?})"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The version of each node's member list when an invariant last looked at it.
#[derive(Default)]
struct Versions(Vec<Option<u64>>);

impl Versions {
    /// Whether `n` is up and its lists may have changed since the last call.
    fn changed(&mut self, sim: &Sim<MembershipNode>, n: NodeId) -> bool {
        if self.0.len() <= n.0 {
            self.0.resize(n.0 + 1, None);
        }
        let now = sim.is_up(n).then(|| sim.node(n).version);
        let changed = now.is_some() && self.0[n.0] != now;
        self.0[n.0] = now;
        changed
    }
}

/// Installs the membership invariants on `sim`; `bound` for `lists-only-reachable-members`.
pub fn check_membership(sim: &mut Sim<MembershipNode>, bound: Duration) {
    sim.invariant("no-node-lists-itself", no_node_lists_itself());
    sim.invariant("listeners-match-detector", listeners_match_detector());
    sim.invariant("events-alternate", events_alternate());
    sim.invariant(
        "lists-only-reachable-members",
        lists_only_reachable_members(bound),
    );
}
