//! The simulator: nodes, a virtual clock, an event queue, the network, faults and invariants.
//!
//! Nodes are sans-I/O state machines behind the [`Node`] trait. The simulator calls them with
//! an input and a [`Ctx`] that records what they want done (connect, send, close, timers); it
//! applies those actions after the call returns, so a node never touches the simulator while it
//! runs. Time only moves when an event is popped, to that event's time.

use super::net::{chunk_len, CloseReason, Conn, ConnId, Faults, NetStats, NodeId, Phase};
use super::rng::SimRng;
use super::SEED_ENV;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::time::Duration;

/// A simulated process. Every method gets the current time and the network through `ctx`.
pub trait Node: Sized {
    /// Called when the node is added and after each restart.
    fn on_start(&mut self, _ctx: &mut Ctx<'_>) {}
    /// A peer opened `conn` to this node.
    fn on_accept(&mut self, _conn: ConnId, _from: NodeId, _ctx: &mut Ctx<'_>) {}
    /// A connection this node opened with [`Ctx::connect`] is now open.
    fn on_connected(&mut self, _conn: ConnId, _ctx: &mut Ctx<'_>) {}
    /// Bytes arrived on `conn`: any piece of what the peer wrote, in order.
    fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>);
    /// `conn` is gone. Not called for connections this node closed itself.
    fn on_closed(&mut self, conn: ConnId, why: CloseReason, ctx: &mut Ctx<'_>);
    /// A timer set with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, _token: u64, _ctx: &mut Ctx<'_>) {}
    /// A datagram sent by `from` with [`Ctx::multicast`] arrived.
    fn on_datagram(&mut self, _from: NodeId, _bytes: &[u8], _ctx: &mut Ctx<'_>) {}
    /// The node as it comes back after a crash: what a real process would find again
    /// (configuration, identity) kept, everything held in memory fresh.
    fn restarted(&self, rng: &mut SimRng) -> Self;
}

/// What a node asked for during one call.
enum Action {
    Connect { conn: ConnId, to: NodeId },
    Send { conn: ConnId, bytes: Vec<u8> },
    Close { conn: ConnId },
    Timer { after: Duration, token: u64 },
    Multicast { bytes: Vec<u8> },
}

/// A node's view of the world during one call.
pub struct Ctx<'a> {
    now: Duration,
    me: NodeId,
    rng: &'a mut SimRng,
    next_conn: &'a mut u64,
    actions: Vec<Action>,
}

impl Ctx<'_> {
    /// Virtual time since the start of the run.
    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The run's random generator (for incarnations, jitter, …).
    pub fn rng(&mut self) -> &mut SimRng {
        self.rng
    }

    /// Opens a connection to `to`. The answer comes later: `on_connected`, or `on_closed` with
    /// `ConnectFailed`. Bytes sent before it opens wait in the pipe.
    pub fn connect(&mut self, to: NodeId) -> ConnId {
        *self.next_conn += 1;
        let conn = ConnId(*self.next_conn);
        self.actions.push(Action::Connect { conn, to });
        conn
    }

    /// Writes `bytes` on `conn`. Writes on a connection that is gone are dropped, as a real
    /// write to a reset socket fails.
    pub fn send(&mut self, conn: ConnId, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.actions.push(Action::Send { conn, bytes });
        }
    }

    /// Closes this node's end: bytes already written are still delivered, then the peer hears
    /// `PeerClosed`; bytes coming in are discarded.
    pub fn close(&mut self, conn: ConnId) {
        self.actions.push(Action::Close { conn });
    }

    /// Calls `on_timer(token)` after `after` (unless the node crashes first).
    pub fn set_timer(&mut self, after: Duration, token: u64) {
        self.actions.push(Action::Timer { after, token });
    }

    /// Sends a datagram to every other node (multicast). Each copy is lost or delayed on its
    /// own (see [`Faults`]); nodes that are down or partitioned from this one get nothing.
    pub fn multicast(&mut self, bytes: Vec<u8>) {
        self.actions.push(Action::Multicast { bytes });
    }
}

/// A fault injected at a chosen time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The node stops: its connections are reset, its timers and pending calls are dropped.
    Crash(NodeId),
    /// A crashed node starts again from [`Node::restarted`].
    Restart(NodeId),
    /// The two nodes cannot reach each other: open connections between them are reset and new
    /// ones fail.
    Partition(NodeId, NodeId),
    /// Partitions the node from every other node.
    Isolate(NodeId),
    Heal(NodeId, NodeId),
    /// Heals every partition and unmutes every node.
    HealAll,
    /// Every datagram the node sends is lost (its multicast is blocked); its connections, and
    /// the datagrams it receives, are unaffected.
    MuteDatagrams(NodeId),
    UnmuteDatagrams(NodeId),
}

type Call<N> = Box<dyn FnOnce(&mut N, &mut Ctx<'_>)>;

enum Event<N> {
    Deliver {
        conn: ConnId,
        dir: usize,
    },
    ConnectDone {
        conn: ConnId,
    },
    /// `epoch` is the node's crash count when the event was made: events for a previous life
    /// of the node are dropped.
    Closed {
        node: NodeId,
        epoch: u64,
        conn: ConnId,
        why: CloseReason,
    },
    Timer {
        node: NodeId,
        epoch: u64,
        token: u64,
    },
    Call {
        node: NodeId,
        f: Call<N>,
    },
    Fault(Fault),
    /// `epoch` is the receiver's, when the datagram was sent: a receiver that crashed meanwhile
    /// does not get it.
    Datagram {
        from: NodeId,
        to: NodeId,
        epoch: u64,
        bytes: Vec<u8>,
    },
}

struct Scheduled<N> {
    at: Duration,
    /// Insertion order: breaks ties in time so equal-time events run in a fixed order.
    seq: u64,
    event: Event<N>,
}

impl<N> PartialEq for Scheduled<N> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<N> Eq for Scheduled<N> {}
impl<N> PartialOrd for Scheduled<N> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<N> Ord for Scheduled<N> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Slot<N> {
    node: N,
    up: bool,
    epoch: u64,
}

/// A named property checked after every step; `Err` says what is wrong.
pub type Invariant<N> = Box<dyn FnMut(&Sim<N>) -> Result<(), String>>;

/// A deterministic run: same seed, same nodes, same calls give the same run, event for event.
pub struct Sim<N: Node> {
    seed: u64,
    now: Duration,
    steps: u64,
    rng: SimRng,
    faults: Faults,
    nodes: Vec<Slot<N>>,
    conns: BTreeMap<ConnId, Conn>,
    /// Pairs `(low, high)` that cannot reach each other.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose datagrams are all lost.
    muted: BTreeSet<NodeId>,
    /// Datagram copies lost in a row, per (sender, receiver).
    lost_in_a_row: BTreeMap<(NodeId, NodeId), u32>,
    queue: BinaryHeap<Scheduled<N>>,
    next_seq: u64,
    next_conn: u64,
    invariants: Vec<(String, Invariant<N>)>,
    stats: NetStats,
    /// Hash of every event processed, for determinism checks.
    trace: DefaultHasher,
}

impl<N: Node> Sim<N> {
    pub fn new(seed: u64, faults: Faults) -> Sim<N> {
        Sim {
            seed,
            now: Duration::ZERO,
            steps: 0,
            rng: SimRng::new(seed),
            faults,
            nodes: Vec::new(),
            conns: BTreeMap::new(),
            blocked: BTreeSet::new(),
            muted: BTreeSet::new(),
            lost_in_a_row: BTreeMap::new(),
            queue: BinaryHeap::new(),
            next_seq: 0,
            next_conn: 0,
            invariants: Vec::new(),
            stats: NetStats::default(),
            trace: DefaultHasher::new(),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    /// Events processed so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// A hash of every event processed so far (times, kinds, nodes, bytes).
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }

    /// The fault knobs, changeable mid-run (e.g. stop resets so a run can settle).
    pub fn faults_mut(&mut self) -> &mut Faults {
        &mut self.faults
    }

    /// The run's random generator, for workloads drawn from the same seed.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    /// Adds a node built by `make` from its id, and starts it.
    pub fn add_node(&mut self, make: impl FnOnce(NodeId, &mut SimRng) -> N) -> NodeId {
        let id = NodeId(self.nodes.len());
        let node = make(id, &mut self.rng);
        self.nodes.push(Slot {
            node,
            up: true,
            epoch: 0,
        });
        self.with_node(id, |n, ctx| n.on_start(ctx));
        id
    }

    /// The node's state (also while it is crashed, for post-mortem checks).
    ///
    /// # Panics
    /// If `id` was not returned by [`Sim::add_node`].
    pub fn node(&self, id: NodeId) -> &N {
        &self.nodes[id.0].node
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len()).map(NodeId)
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(id.0).is_some_and(|s| s.up)
    }

    /// Whether `a` could connect to `b` now: `b` is up and no partition separates them.
    pub fn can_reach(&self, a: NodeId, b: NodeId) -> bool {
        self.is_up(b) && !self.is_blocked(a, b)
    }
    /// Runs `f` on the node now, as an application call would (nothing happens if it is down).
    pub fn call(&mut self, id: NodeId, f: impl FnOnce(&mut N, &mut Ctx<'_>)) {
        self.with_node(id, f);
        self.check_invariants();
    }

    /// Runs `f` on the node at virtual time `at` (dropped if the node is down then).
    pub fn call_at(
        &mut self,
        at: Duration,
        id: NodeId,
        f: impl FnOnce(&mut N, &mut Ctx<'_>) + 'static,
    ) {
        self.schedule_at(
            at,
            Event::Call {
                node: id,
                f: Box::new(f),
            },
        );
    }

    /// Injects a fault now.
    pub fn fault(&mut self, fault: Fault) {
        self.apply_fault(fault);
        self.check_invariants();
    }

    /// Injects a fault at virtual time `at`.
    pub fn fault_at(&mut self, at: Duration, fault: Fault) {
        self.schedule_at(at, Event::Fault(fault));
    }

    /// Adds a property checked after every step (and after `call` and `fault`).
    pub fn invariant(
        &mut self,
        name: &str,
        check: impl FnMut(&Sim<N>) -> Result<(), String> + 'static,
    ) {
        self.invariants.push((name.to_string(), Box::new(check)));
    }

    /// Panics with `msg`, the virtual time and the seed to replay.
    pub fn fail(&self, msg: impl fmt::Display) -> ! {
        panic!(
            "{msg}\n  at t={:?}, step {}, seed={} (replay: {SEED_ENV}={} cargo test --lib sim)",
            self.now, self.steps, self.seed, self.seed
        )
    }

    /// Processes the earliest event; `false` when there is none.
    pub fn step(&mut self) -> bool {
        let Some(s) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(s.at);
        self.steps += 1;
        self.trace.write_u128(self.now.as_nanos());
        match s.event {
            Event::Deliver { conn, dir } => {
                self.trace.write_u8(1);
                self.deliver(conn, dir);
            }
            Event::ConnectDone { conn } => {
                self.trace.write_u8(2);
                self.trace.write_u64(conn.0);
                self.connect_done(conn);
            }
            Event::Closed {
                node,
                epoch,
                conn,
                why,
            } => {
                self.trace.write_u8(3);
                self.trace.write_u64(conn.0);
                if self.nodes.get(node.0).is_some_and(|s| s.epoch == epoch) {
                    self.with_node(node, |n, ctx| n.on_closed(conn, why, ctx));
                }
            }
            Event::Timer { node, epoch, token } => {
                self.trace.write_u8(4);
                self.trace.write_u64(token);
                if self.nodes.get(node.0).is_some_and(|s| s.epoch == epoch) {
                    self.with_node(node, |n, ctx| n.on_timer(token, ctx));
                }
            }
            Event::Call { node, f } => {
                self.trace.write_u8(5);
                self.trace.write_usize(node.0);
                self.with_node(node, f);
            }
            Event::Fault(fault) => {
                self.trace.write_u8(6);
                self.apply_fault(fault);
            }
            Event::Datagram {
                from,
                to,
                epoch,
                bytes,
            } => {
                self.trace.write_u8(7);
                self.trace.write_usize(from.0);
                self.trace.write_usize(to.0);
                self.trace.write(&bytes);
                self.deliver_datagram(from, to, epoch, &bytes);
            }
        }
        self.check_invariants();
        true
    }

    /// Steps until `done` holds (`true`), or until no event is left at or before `deadline`
    /// (`false`; the clock is then moved to `deadline`).
    pub fn run_until(&mut self, deadline: Duration, mut done: impl FnMut(&Sim<N>) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            match self.queue.peek() {
                Some(s) if s.at <= deadline => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(deadline);
                    return false;
                }
            }
        }
    }

    /// Steps until nothing is left to do; `false` if work remains at `deadline`.
    pub fn run_until_idle(&mut self, deadline: Duration) -> bool {
        self.run_until(deadline, |s| s.queue.is_empty())
    }

    // ---- internals ----

    fn schedule_at(&mut self, at: Duration, event: Event<N>) {
        self.next_seq += 1;
        self.queue.push(Scheduled {
            at: at.max(self.now),
            seq: self.next_seq,
            event,
        });
    }

    fn schedule_in(&mut self, after: Duration, event: Event<N>) {
        self.schedule_at(self.now + after, event);
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.faults.latency;
        self.rng.duration_between(lo, hi)
    }

    fn is_blocked(&self, a: NodeId, b: NodeId) -> bool {
        self.blocked.contains(&(a.min(b), a.max(b)))
    }

    /// Calls into a node that is up, then carries out what it asked for.
    fn with_node(&mut self, id: NodeId, f: impl FnOnce(&mut N, &mut Ctx<'_>)) {
        let Some(slot) = self.nodes.get_mut(id.0) else {
            return;
        };
        if !slot.up {
            return;
        }
        let mut ctx = Ctx {
            now: self.now,
            me: id,
            rng: &mut self.rng,
            next_conn: &mut self.next_conn,
            actions: Vec::new(),
        };
        f(&mut slot.node, &mut ctx);
        for action in ctx.actions {
            self.apply(id, action);
        }
    }

    fn apply(&mut self, me: NodeId, action: Action) {
        match action {
            Action::Connect { conn, to } => {
                self.stats.connects += 1;
                if to == me || to.0 >= self.nodes.len() {
                    let epoch = self.nodes[me.0].epoch;
                    let delay = self.latency();
                    self.stats.connect_failures += 1;
                    let why = CloseReason::ConnectFailed;
                    self.schedule_in(
                        delay,
                        Event::Closed {
                            node: me,
                            epoch,
                            conn,
                            why,
                        },
                    );
                    return;
                }
                self.conns.insert(conn, Conn::new(me, to));
                let (lo, hi) = self.faults.connect_delay;
                let delay = self.rng.duration_between(lo, hi);
                self.schedule_in(delay, Event::ConnectDone { conn });
            }
            Action::Send { conn, bytes } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                let Some(end) = c.end_of(me) else {
                    return;
                };
                if !c.open[end] || c.pipes[end].fin {
                    return;
                }
                c.pipes[end].buf.extend(bytes);
                self.kick(conn, end);
            }
            Action::Close { conn } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                let Some(end) = c.end_of(me) else {
                    return;
                };
                c.open[end] = false;
                if c.phase == Phase::Connecting {
                    // Abandoned before it opened: the peer never hears of it.
                    self.conns.remove(&conn);
                    return;
                }
                c.pipes[1 - end].buf.clear();
                c.pipes[end].fin = true;
                self.kick(conn, end);
                self.forget_if_unheld(conn);
            }
            Action::Timer { after, token } => {
                let epoch = self.nodes[me.0].epoch;
                self.schedule_in(
                    after,
                    Event::Timer {
                        node: me,
                        epoch,
                        token,
                    },
                );
            }
            Action::Multicast { bytes } => {
                let dests: Vec<NodeId> = self.node_ids().filter(|n| *n != me).collect();
                for to in dests {
                    self.send_datagram(me, to, &bytes);
                }
            }
        }
    }

    /// One copy of a datagram: dropped by faults, lost at random, or scheduled.
    fn send_datagram(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) {
        if to == from || !self.is_up(to) || self.is_blocked(from, to) || self.muted.contains(&from)
        {
            self.stats.datagrams_blocked += 1;
            return;
        }
        self.stats.datagrams_sent += 1;
        let run = self.lost_in_a_row.entry((from, to)).or_default();
        let may_lose = self
            .faults
            .datagram_max_lost_in_a_row
            .is_none_or(|max| *run < max);
        if may_lose && self.faults.datagram_loss > 0.0 && self.rng.chance(self.faults.datagram_loss)
        {
            *self.lost_in_a_row.entry((from, to)).or_default() += 1;
            self.stats.datagrams_lost += 1;
            return;
        }
        self.lost_in_a_row.insert((from, to), 0);
        let (lo, hi) = self.faults.datagram_latency;
        let delay = self.rng.duration_between(lo, hi);
        let epoch = self.nodes[to.0].epoch;
        self.schedule_in(
            delay,
            Event::Datagram {
                from,
                to,
                epoch,
                bytes: bytes.to_vec(),
            },
        );
    }

    /// A datagram arrives, unless its receiver crashed since it was sent or a partition came
    /// between them meanwhile.
    fn deliver_datagram(&mut self, from: NodeId, to: NodeId, epoch: u64, bytes: &[u8]) {
        let alive = self
            .nodes
            .get(to.0)
            .is_some_and(|s| s.up && s.epoch == epoch);
        if !alive || self.is_blocked(from, to) {
            self.stats.datagrams_blocked += 1;
            return;
        }
        self.stats.datagrams_delivered += 1;
        self.with_node(to, |n, ctx| n.on_datagram(from, bytes, ctx));
    }

    /// Makes sure a delivery is queued for a pipe that has something to deliver.
    fn kick(&mut self, conn: ConnId, dir: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let p = &mut c.pipes[dir];
        if c.phase != Phase::Open || p.scheduled || (p.buf.is_empty() && !p.fin) {
            return;
        }
        p.scheduled = true;
        let delay = self.latency();
        self.schedule_in(delay, Event::Deliver { conn, dir });
    }

    fn deliver(&mut self, conn: ConnId, dir: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.pipes[dir].scheduled = false;
        let to_end = 1 - dir;
        let to = c.ends[to_end];
        if c.pipes[dir].buf.is_empty() {
            if c.pipes[dir].fin && c.open[to_end] {
                c.open[to_end] = false;
                self.forget_if_unheld(conn);
                self.trace.write_u64(conn.0);
                self.with_node(to, |n, ctx| n.on_closed(conn, CloseReason::PeerClosed, ctx));
            }
            return;
        }
        if self.faults.reset_per_chunk > 0.0 && self.rng.chance(self.faults.reset_per_chunk) {
            self.reset(conn);
            return;
        }
        let n = chunk_len(&mut self.rng, c.pipes[dir].buf.len(), self.faults.max_chunk);
        let bytes: Vec<u8> = c.pipes[dir].buf.drain(..n).collect();
        let readable = c.open[to_end];
        self.stats.chunks += 1;
        self.stats.bytes += n as u64;
        self.trace.write_u64(conn.0);
        self.trace.write(&bytes);
        self.kick(conn, dir);
        if readable {
            self.with_node(to, |node, ctx| node.on_bytes(conn, &bytes, ctx));
        }
    }

    fn connect_done(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let [from, to] = c.ends;
        if !self.is_up(to) || self.is_blocked(from, to) {
            self.conns.remove(&conn);
            self.stats.connect_failures += 1;
            if self.is_up(to) && self.faults.partitioned_connects_hang {
                return; // silence: the connecting node's own timeout must notice
            }
            self.with_node(from, |n, ctx| {
                n.on_closed(conn, CloseReason::ConnectFailed, ctx)
            });
            return;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::Open;
            c.open[1] = true;
        }
        self.with_node(to, |n, ctx| n.on_accept(conn, from, ctx));
        self.with_node(from, |n, ctx| n.on_connected(conn, ctx));
        self.kick(conn, 0);
        self.kick(conn, 1);
    }

    /// Drops the bytes in flight both ways; each end still holding the connection hears of it
    /// after a delay.
    fn reset(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.stats.resets += 1;
        for end in 0..2 {
            if c.open[end] {
                let node = c.ends[end];
                let epoch = self.nodes[node.0].epoch;
                let delay = self.latency();
                let why = CloseReason::Reset;
                self.schedule_in(
                    delay,
                    Event::Closed {
                        node,
                        epoch,
                        conn,
                        why,
                    },
                );
            }
        }
    }

    fn forget_if_unheld(&mut self, conn: ConnId) {
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| !c.open[0] && !c.open[1])
        {
            self.conns.remove(&conn);
        }
    }

    /// Connections between `a` and `b` (any of `a`'s when `b` is `None`).
    fn conns_of(&self, a: NodeId, b: Option<NodeId>) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.end_of(a).is_some() && b.is_none_or(|b| c.end_of(b).is_some()))
            .map(|(id, _)| *id)
            .collect()
    }

    fn cut(&mut self, a: NodeId, b: NodeId) {
        if a == b {
            return;
        }
        self.blocked.insert((a.min(b), a.max(b)));
        for conn in self.conns_of(a, Some(b)) {
            // Connections still opening fail when they complete; open ones are reset now.
            if self
                .conns
                .get(&conn)
                .is_some_and(|c| c.phase == Phase::Open)
            {
                self.reset(conn);
            }
        }
    }

    fn apply_fault(&mut self, fault: Fault) {
        match fault {
            Fault::Crash(n) => {
                let Some(slot) = self.nodes.get_mut(n.0) else {
                    return;
                };
                if !slot.up {
                    return;
                }
                slot.up = false;
                slot.epoch += 1;
                self.stats.crashes += 1;
                for conn in self.conns_of(n, None) {
                    let Some(c) = self.conns.get_mut(&conn) else {
                        continue;
                    };
                    match (c.phase, c.end_of(n)) {
                        (Phase::Connecting, Some(0)) => {
                            self.conns.remove(&conn);
                        }
                        // It fails when it completes, finding the node down.
                        (Phase::Connecting, _) => {}
                        (Phase::Open, end) => {
                            if let Some(end) = end {
                                c.open[end] = false;
                            }
                            self.reset(conn);
                        }
                    }
                }
            }
            Fault::Restart(n) => {
                let Some(slot) = self.nodes.get_mut(n.0) else {
                    return;
                };
                if slot.up {
                    return;
                }
                slot.node = slot.node.restarted(&mut self.rng);
                slot.up = true;
                self.stats.restarts += 1;
                self.with_node(n, |node, ctx| node.on_start(ctx));
            }
            Fault::Partition(a, b) => self.cut(a, b),
            Fault::Isolate(a) => {
                for b in 0..self.nodes.len() {
                    self.cut(a, NodeId(b));
                }
            }
            Fault::Heal(a, b) => {
                self.blocked.remove(&(a.min(b), a.max(b)));
            }
            Fault::HealAll => {
                self.blocked.clear();
                self.muted.clear();
            }
            Fault::MuteDatagrams(n) => {
                self.muted.insert(n);
            }
            Fault::UnmuteDatagrams(n) => {
                self.muted.remove(&n);
            }
        }
    }

    fn check_invariants(&mut self) {
        if self.invariants.is_empty() {
            return;
        }
        let mut invariants = std::mem::take(&mut self.invariants);
        let failure = invariants
            .iter_mut()
            .find_map(|(name, check)| check(self).err().map(|msg| (name.clone(), msg)));
        self.invariants = invariants;
        if let Some((name, msg)) = failure {
            self.fail(format_args!("invariant `{name}` violated: {msg}"));
        }
    }
}
