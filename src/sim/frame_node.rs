//! What the simulated session managers (`backup_node`, `delta_node`) share around their cores:
//! the [`Wire`] format (a manager message with a request number, or an ack), the frame
//! transport over one FIFO connection per destination ([`Frames`]), the bookkeeping of
//! acknowledged changes ([`Acks`]), and the invariant bookkeeping of ended sessions
//! ([`EndedSeen`]).

use super::delta_node::{Op, Val};
use super::frame_lanes::{LaneModel, LaneStats, RetryLanes};
use super::net::{ConnId, NodeId};
use super::Ctx;
use crate::session::{Session, SessionEvent, SessionId};
use crate::wire::decode_body;
use crate::wire::frame::{encode_frame, parse_frame, FrameKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Largest frame a node accepts.
const MAX_FRAME: u32 = 16 << 20;

/// What travels in a frame body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Wire<M> {
    /// A manager message; `req` > 0 asks for an ack.
    Msg {
        req: u64,
        msg: M,
    },
    Ack {
        req: u64,
    },
    /// The message came from a superseded sender and was ignored: the send failed.
    Refused {
        req: u64,
    },
}

/// A node's connections: one it opened to each destination, the ones it accepted, and the
/// sequence number of its frames.
#[derive(Default)]
pub struct Frames {
    /// This node's connection to each destination, per lane.
    out: BTreeMap<(NodeId, Lane), ConnId>,
    /// Two connections per destination, as production's sender has (a synchronous lane for
    /// sends that wait for acks, an asynchronous one for the rest): messages on different
    /// lanes can overtake each other. Off: one FIFO connection per destination.
    pub two_lanes: bool,
    /// Accepted connections: who is at the other end, and bytes not yet a whole frame.
    inbound: BTreeMap<ConnId, (NodeId, Vec<u8>)>,
    /// The acknowledged-mode sends (request numbers) written on each connection this node
    /// opened and not yet acked by its destination: a reset fails them, as it fails a real
    /// synchronized-ack send whose connection breaks before the ack.
    unacked: BTreeMap<ConnId, (NodeId, BTreeSet<u64>)>,
    /// The life of each member at its last accepted connection (the incarnation its
    /// handshake names).
    peer_lives: BTreeMap<NodeId, u64>,
    seq: u64,
    /// Production's lane protocol ([`Frames::retry_lanes`]); `None`: the plain FIFO model.
    retry: Option<Box<RetryLanes>>,
}

/// Which of production's two lanes to a member a message takes: the one its send options
/// choose (synchronized ack, or asynchronous).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lane {
    Sync,
    Async,
}

impl Lane {
    pub fn of(options: crate::options::SendOptions) -> Lane {
        if options.is_async() {
            Lane::Async
        } else {
            Lane::Sync
        }
    }
}

impl Frames {
    /// A connection from `from` was accepted.
    pub fn accept(&mut self, conn: ConnId, from: NodeId) {
        match &mut self.retry {
            Some(r) => r.accept(conn, from),
            None => {
                self.inbound.insert(conn, (from, Vec::new()));
            }
        }
    }

    /// Sends through production's lane protocol from now on (see `frame_lanes`): a handshake
    /// per connection, frames held until their transport ack and written again on a new
    /// connection (at most `model.max_tries` connections each), a duplicate filter per node
    /// life on the receiving side, and a deadline per send. [`Frames::closed`] then returns the
    /// tracked sends a lane gave up on, not every one not acked. Call before anything is sent.
    pub fn retry_lanes(&mut self, model: LaneModel, me: NodeId) {
        self.retry = Some(Box::new(RetryLanes::new(model, me)));
    }

    /// Whether production's lane protocol is on.
    pub fn has_retry_lanes(&self) -> bool {
        self.retry.is_some()
    }

    /// The node started its life `life` (its handshakes name it).
    pub fn started(&mut self, life: u64) {
        if let Some(r) = &mut self.retry {
            r.started(life);
        }
    }

    /// What the lanes did (zero without [`Frames::retry_lanes`]).
    pub fn lane_stats(&self) -> LaneStats {
        self.retry
            .as_ref()
            .map_or_else(LaneStats::default, |r| r.stats.clone())
    }

    /// The tracked sends the lanes gave up on since the last call (out of tries, or past
    /// their deadline), as (destination, request); none without [`Frames::retry_lanes`].
    pub fn take_failed(&mut self) -> Vec<(NodeId, u64)> {
        self.retry
            .as_mut()
            .map_or_else(Vec::new, |r| r.take_failed())
    }

    /// A timer this node set: a lane's deadline, whose failed sends are returned; `None` if
    /// the token is not a lane's.
    pub fn on_timer(&mut self, token: u64, ctx: &mut Ctx<'_>) -> Option<Vec<(NodeId, u64)>> {
        let r = self.retry.as_mut()?;
        r.on_timer(token, ctx).then(|| r.take_failed())
    }

    /// A connection from `from`, in its life `life`, was accepted. A new life (it restarted)
    /// makes this node forget its connections to the old one, as the channel's restart
    /// detection at the handshake makes the sender forget them: what this node sends next (the
    /// answer to the new life's first message, say) goes on a new connection, not into the old
    /// one's reset.
    pub fn accept_from(&mut self, conn: ConnId, from: NodeId, life: u64, ctx: &mut Ctx<'_>) {
        self.accept(conn, from);
        if self
            .peer_lives
            .insert(from, life)
            .is_some_and(|l| l != life)
        {
            self.forget(from, ctx);
        }
    }

    /// `conn` closed (either way). Returns the failed acknowledged-mode sends, as
    /// (destination, request). Plain model: those written on it that its destination has not
    /// acked (a write to, or an ack awaited on, a reset socket fails; a connect to a member
    /// that is down is refused). With [`Frames::retry_lanes`]: those its lane gave up on (out
    /// of tries, or past their deadline); the others go again on a new connection.
    pub fn closed(&mut self, conn: ConnId, ctx: &mut Ctx<'_>) -> Vec<(NodeId, u64)> {
        if let Some(r) = &mut self.retry {
            r.closed(conn, ctx);
            return r.take_failed();
        }
        self.inbound.remove(&conn);
        self.out.retain(|_, c| *c != conn);
        match self.unacked.remove(&conn) {
            Some((to, reqs)) => reqs.into_iter().map(|r| (to, r)).collect(),
            None => Vec::new(),
        }
    }

    /// `from` acked `req`: no reset of a connection to it fails that send any more.
    pub fn acked(&mut self, from: NodeId, req: u64) {
        if let Some(r) = &mut self.retry {
            // A frame is held only until its transport ack; the answer's deadline goes.
            r.answered(from, req);
            return;
        }
        for (to, reqs) in self.unacked.values_mut() {
            if *to == from {
                reqs.remove(&req);
            }
        }
    }

    /// [`Frames::send_on`] for an acknowledged-mode send `req` (> 0): remembered on its
    /// connection until [`Frames::acked`], failed by [`Frames::closed`].
    pub fn send_tracked(
        &mut self,
        me: NodeId,
        to: NodeId,
        lane: Lane,
        req: u64,
        body: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> u64 {
        if let Some(r) = self.retry.as_mut().filter(|_| to != me) {
            let key = if self.two_lanes { lane } else { Lane::Async };
            return r.send(to, key, lane == Lane::Sync, req, body, ctx);
        }
        let len = self.send_on(me, to, lane, body, ctx);
        let key = (to, if self.two_lanes { lane } else { Lane::Async });
        if let (true, Some(conn)) = (req > 0 && len > 0, self.out.get(&key)) {
            let entry = self.unacked.entry(*conn).or_insert((to, BTreeSet::new()));
            entry.1.insert(req);
        }
        len
    }

    /// Forgets the connections to `to` (a restart of it was seen): the next message to it opens
    /// a new one. What is in flight on the old ones still settles (acked, or failed by their
    /// reset).
    /// With [`Frames::retry_lanes`], the lanes to `to` close their connections and write
    /// what they hold again on new ones (sends that run out of tries fail: take them with
    /// [`Frames::take_failed`]).
    pub fn forget(&mut self, to: NodeId, ctx: &mut Ctx<'_>) {
        self.out.retain(|(n, _), _| *n != to);
        if let Some(r) = &mut self.retry {
            r.forget(to, ctx);
        }
    }

    /// Forgets the connections to destinations not in `view` (as [`Frames::forget`]).
    pub fn keep_only(&mut self, view: &BTreeSet<NodeId>, ctx: &mut Ctx<'_>) {
        self.out.retain(|(n, _), _| view.contains(n));
        if let Some(r) = &mut self.retry {
            for n in r.destinations() {
                if !view.contains(&n) {
                    r.forget(n, ctx);
                }
            }
        }
    }

    /// Sends `body` from `me` to `to` in a data frame, over the connection to `to` (opened if
    /// there is none). Returns the bytes written (none to `me` itself).
    /// With [`Frames::retry_lanes`] the frame asks for a transport ack: the managers' acks
    /// and refusals it carries are not lost to a reset (production answers a synchronized-ack
    /// send on its connection, and a resent frame is answered again).
    pub fn send(&mut self, me: NodeId, to: NodeId, body: &[u8], ctx: &mut Ctx<'_>) -> u64 {
        if let Some(r) = self.retry.as_mut().filter(|_| to != me) {
            return r.send(to, Lane::Async, true, 0, body, ctx);
        }
        self.send_on(me, to, Lane::Async, body, ctx)
    }

    /// [`Frames::send`] on `lane` (the same connection for both unless `two_lanes`).
    pub fn send_on(
        &mut self,
        me: NodeId,
        to: NodeId,
        lane: Lane,
        body: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> u64 {
        if to == me {
            return 0;
        }
        if let Some(r) = &mut self.retry {
            let key = if self.two_lanes { lane } else { Lane::Async };
            return r.send(to, key, lane == Lane::Sync, 0, body, ctx);
        }
        let key = (to, if self.two_lanes { lane } else { Lane::Async });
        let conn = match self.out.get(&key) {
            Some(c) => *c,
            None => {
                let c = ctx.connect(to);
                self.out.insert(key, c);
                c
            }
        };
        self.seq += 1;
        let mut frame = Vec::with_capacity(body.len() + 24);
        encode_frame(&mut frame, FrameKind::Data, 0, self.seq, body);
        let len = frame.len() as u64;
        ctx.send(conn, frame);
        len
    }

    /// Takes `bytes` arrived on `conn` at node `me`: the sender and the whole frames' bodies,
    /// or `None` on a connection this node opened (plain model: nothing is ever sent back on
    /// one; with [`Frames::retry_lanes`], its replies are taken here).
    ///
    /// # Panics
    /// On a bad frame or an undecodable body.
    pub fn read<M: DeserializeOwned>(
        &mut self,
        me: NodeId,
        conn: ConnId,
        bytes: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> Option<(NodeId, Vec<Wire<M>>)> {
        if let Some(r) = &mut self.retry {
            return r.read(me, conn, bytes, ctx);
        }
        let (from, buf) = self.inbound.get_mut(&conn)?;
        let from = *from;
        buf.extend_from_slice(bytes);
        let mut wires = Vec::new();
        loop {
            let (wire, used) = match parse_frame(buf, MAX_FRAME) {
                Ok(Some((frame, used))) => match decode_body::<Wire<M>>(frame.body) {
                    Ok(w) => (w, used),
                    Err(e) => panic!("{me}: undecodable body from {from}: {e}"),
                },
                Ok(None) => break,
                Err(e) => panic!("{me}: bad frame from {from}: {e}"),
            };
            buf.drain(..used);
            wires.push(wire);
        }
        Some((from, wires))
    }
}

/// A tracked send: the change, the members that have not acked it yet, and those that did
/// (with their life then).
pub struct Waiting<C> {
    pub change: C,
    pub pending: BTreeSet<NodeId>,
    pub by: Vec<(NodeId, u64)>,
    /// Made by a request (the application's change).
    pub request: bool,
}

/// An ack owed to `to` once `change` is applied.
pub struct Owed<C> {
    pub to: NodeId,
    pub req: u64,
    pub change: C,
    /// Not sent on arrival: the change came only later.
    pub deferred: bool,
}

/// Acknowledged changes: the sends waiting for acks (by request number) and the acks owed.
pub struct Acks<C> {
    next_req: u64,
    pub waiting: BTreeMap<u64, Waiting<C>>,
    owed: Vec<Owed<C>>,
    /// Sends that failed (refused, or a member left before acking), by request number.
    failed: BTreeSet<u64>,
}

impl<C> Default for Acks<C> {
    fn default() -> Self {
        Acks {
            next_req: 0,
            waiting: BTreeMap::new(),
            owed: Vec::new(),
            failed: BTreeSet::new(),
        }
    }
}

impl<C> Acks<C> {
    /// Waits for acks of `change` from `pending`; returns its new request number.
    pub fn track(&mut self, change: C, pending: BTreeSet<NodeId>, request: bool) -> u64 {
        self.next_req += 1;
        self.waiting.insert(
            self.next_req,
            Waiting {
                change,
                pending,
                by: Vec::new(),
                request,
            },
        );
        self.next_req
    }

    /// `from`, in life `life`, acked `req`.
    pub fn acked(&mut self, req: u64, from: NodeId, life: u64) {
        if let Some(w) = self.waiting.get_mut(&req) {
            if w.pending.remove(&from) {
                w.by.push((from, life));
            }
        }
    }

    /// Removes `req` if every member it was sent to acked it.
    pub fn take_settled(&mut self, req: u64) -> Option<Waiting<C>> {
        if !self.waiting.get(&req).is_some_and(|w| w.pending.is_empty()) {
            return None;
        }
        self.waiting.remove(&req)
    }

    /// Removes (in request order) the sends waiting for none of `view`; returns those that
    /// every destination acknowledged (not the refused ones).
    pub fn take_disjoint(&mut self, view: &BTreeSet<NodeId>) -> Vec<Waiting<C>> {
        let done: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.pending.is_disjoint(view))
            .map(|(r, _)| *r)
            .collect();
        done.into_iter()
            .filter_map(|r| {
                self.waiting
                    .remove(&r)
                    .filter(|_| !self.failed.contains(&r))
            })
            .collect()
    }

    /// A receiver refused `req`: the send failed. Returns whether it was still waited for.
    pub fn refuse(&mut self, req: u64) -> bool {
        let waited = self.waiting.remove(&req).is_some();
        if waited {
            self.failed.insert(req);
        }
        waited
    }

    /// `from` refused `req`: the send failed, but, as a real synchronized-ack send does, it
    /// still waits for the other destinations' answers (each of them applies or refuses the
    /// change before the sender answers its request). Settles with the others; never counted
    /// as acknowledged.
    pub fn refuse_by(&mut self, req: u64, from: NodeId) {
        if let Some(w) = self.waiting.get_mut(&req) {
            w.pending.remove(&from);
            self.failed.insert(req);
        }
    }

    /// The send `req` to `to` failed (its connection broke before `to` acked): like a refusal
    /// by `to`, unless `to` acked it or is no longer waited for.
    pub fn fail_to(&mut self, req: u64, to: NodeId) -> bool {
        let waited = self
            .waiting
            .get(&req)
            .is_some_and(|w| w.pending.contains(&to));
        if waited {
            self.refuse_by(req, to);
        }
        waited
    }

    /// The send `req` to `to` failed (its connection broke before `to` acked): like a refusal
    /// by `to` that settles the send at once, as the BackupManager's refusals do. Returns
    /// whether it was still waited for from `to`.
    pub fn fail_at_once_to(&mut self, req: u64, to: NodeId) -> bool {
        let waited = self
            .waiting
            .get(&req)
            .is_some_and(|w| w.pending.contains(&to));
        waited && self.refuse(req)
    }

    /// Whether the send `req` failed (refused, or a member left before acking).
    pub fn has_failed(&self, req: u64) -> bool {
        self.failed.contains(&req)
    }

    /// Removes the sends still waiting for a member not in `view`; returns how many.
    pub fn fail_outside(&mut self, view: &BTreeSet<NodeId>) -> u64 {
        let failed: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| !w.pending.is_subset(view))
            .map(|(r, _)| *r)
            .collect();
        for r in &failed {
            self.waiting.remove(r);
            self.failed.insert(*r);
        }
        failed.len() as u64
    }

    /// Stops waiting for acks from members not in `view` (they left: the channel no longer
    /// sends to them), so a member that leaves and comes back (a restart) is not waited for on
    /// a send its former life never got.
    pub fn forget_outside(&mut self, view: &BTreeSet<NodeId>) {
        for w in self.waiting.values_mut() {
            w.pending.retain(|n| view.contains(n));
        }
    }

    /// Owes `to` an ack of `req` once `change` is applied.
    pub fn owe(&mut self, to: NodeId, req: u64, change: C) {
        self.owed.push(Owed {
            to,
            req,
            change,
            deferred: false,
        });
    }

    /// How many acks are owed.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    /// The acks owed: to whom, and for which change.
    pub fn owed_list(&self) -> impl Iterator<Item = (NodeId, &C)> + '_ {
        self.owed.iter().map(|o| (o.to, &o.change))
    }

    /// Takes every owed ack whose change `has` applied, in order; the others stay owed, marked
    /// deferred.
    pub fn take_due(&mut self, has: impl Fn(&C) -> bool) -> Vec<Owed<C>> {
        let owed = std::mem::take(&mut self.owed);
        let mut due = Vec::new();
        for mut o in owed {
            if has(&o.change) {
                due.push(o);
            } else {
                o.deferred = true;
                self.owed.push(o);
            }
        }
        due
    }
}

/// The other members `me` sees in `views`.
pub fn view_of(views: &BTreeMap<NodeId, BTreeSet<NodeId>>, me: NodeId) -> BTreeSet<NodeId> {
    let mut v = views.get(&me).cloned().unwrap_or_default();
    v.remove(&me);
    v
}

/// How many of `kind` a counter map holds.
pub fn count(counts: &BTreeMap<&'static str, u64>, kind: &str) -> u64 {
    counts.get(kind).copied().unwrap_or(0)
}

/// `id` and the ids it was renamed to (`renamed`: old id → new id), in order.
pub fn chain(renamed: &HashMap<SessionId, SessionId>, id: &SessionId) -> Vec<SessionId> {
    let mut out = vec![id.clone()];
    while let Some(next) = renamed.get(out.last().unwrap_or(id)) {
        if out.contains(next) {
            break;
        }
        out.push(next.clone());
    }
    out
}

/// For the invariants: the sessions each node (in each life) destroyed or moved away from, as
/// its journal's events tell, read incrementally.
#[derive(Default)]
pub struct EndedSeen {
    cursor: HashMap<NodeId, usize>,
    ended: HashMap<(NodeId, u64), HashSet<SessionId>>,
    destroyed: HashSet<(NodeId, u64, SessionId)>,
}

impl EndedSeen {
    /// Reads node `n`'s events not read yet.
    ///
    /// # Errors
    /// `destroyed-at-most-once`: a node reported `Destroyed` twice for one session in one life.
    pub fn read(&mut self, n: NodeId, events: &[(u64, SessionEvent)]) -> Result<(), String> {
        let from = self.cursor.insert(n, events.len()).unwrap_or(0);
        for (life, e) in &events[from..] {
            match e {
                SessionEvent::Destroyed(id) => {
                    if !self.destroyed.insert((n, *life, id.clone())) {
                        return Err(format!(
                            "destroyed-at-most-once: {n} reported {id} destroyed twice"
                        ));
                    }
                    self.ended.entry((n, *life)).or_default().insert(id.clone());
                }
                SessionEvent::IdChanged { old, new } => {
                    let ended = self.ended.entry((n, *life)).or_default();
                    ended.insert(old.clone());
                    // A change of id undone (DeltaManager) gives the session its id back, and
                    // route rebinding can take a session back to an id it had (S.node1 ->
                    // S.node2 -> S.node1): an id renamed away, never destroyed, may return.
                    if !self.destroyed.contains(&(n, *life, new.clone())) {
                        ended.remove(new);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether `id` ended on node `n` in life `life`.
    pub fn ended(&self, n: NodeId, life: u64, id: &SessionId) -> bool {
        self.ended.get(&(n, life)).is_some_and(|e| e.contains(id))
    }
}

/// The next value of the workload, written by `node`: `counter` (run-wide) goes up by one.
pub fn next_val(counter: &mut u64, node: NodeId) -> Val {
    *counter += 1;
    Val {
        node: node.0 as u32,
        counter: *counter,
    }
}

/// Applies an [`Op`] that only edits the session (`Set` with its `val`, `Remove`, `Read`,
/// `MaxInactive`) to `session`, if node `me` holds it as `id`. Other ops are left alone.
///
/// # Panics
/// If the session refuses the edit.
pub fn edit(me: NodeId, id: &SessionId, session: Option<&mut Session>, op: &Op, val: Option<Val>) {
    let Some(s) = session else { return };
    match (op, val) {
        (Op::Set(name), Some(val)) => {
            if let Err(e) = s.set(name, &val) {
                panic!("{me}: set {name} on {id}: {e}");
            }
        }
        (Op::Remove(name), _) => {
            if let Err(e) = s.remove(name) {
                panic!("{me}: remove {name} on {id}: {e}");
            }
        }
        (Op::MaxInactive(d), _) => s.set_max_inactive(*d),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quiet seed 123 of the DeltaManager kill loop: a change refused by a restarting member
    /// was answered as failed before it reached the user's home, which applied it after serving
    /// the user the state before it. A refused send settles only once every other destination
    /// answered, and is never recorded as acknowledged.
    #[test]
    fn a_refused_send_settles_once_every_destination_answered_and_is_not_acknowledged() {
        let (n0, n2) = (NodeId(0), NodeId(2));
        let mut acks: Acks<&str> = Acks::default();
        let req = acks.track("v14", BTreeSet::from([n0, n2]), true);
        acks.refuse_by(req, n2);
        assert!(acks.has_failed(req));
        assert!(acks.waiting.contains_key(&req), "n0 has not answered yet");
        let view = BTreeSet::from([n0, n2]);
        assert!(acks.take_disjoint(&view).is_empty());
        acks.acked(req, n0, 1);
        assert!(
            acks.take_disjoint(&view).is_empty(),
            "failed: not acknowledged"
        );
        assert!(!acks.waiting.contains_key(&req), "settled once n0 answered");

        let ok = acks.track("v15", BTreeSet::from([n0, n2]), true);
        acks.acked(ok, n0, 1);
        acks.acked(ok, n2, 1);
        assert_eq!(acks.take_disjoint(&view).len(), 1);
        assert!(!acks.has_failed(ok));
    }
    /// Quiet seed 245 of the DeltaManager kill loop: n1 noticed n0's restart before the reset
    /// of its connection to n0's old life reached it, wrote a change's DELTA on that
    /// connection, and the bytes were lost with the reset: the request waited forever. A
    /// reset now fails, for its destination, every send written on the connection that the
    /// destination had not acked (like a refusal: settled once the others answered, never
    /// acknowledged); a send it acked before the reset stands.
    #[test]
    fn a_reset_fails_the_sends_its_destination_had_not_acked() {
        let (n0, n2) = (NodeId(0), NodeId(2));
        let view = BTreeSet::from([n0, n2]);
        let mut acks: Acks<&str> = Acks::default();
        let lost = acks.track("v26", view.clone(), true);
        let kept = acks.track("v27", view.clone(), true);
        acks.acked(kept, n0, 2);
        assert!(acks.fail_to(lost, n0));
        assert!(!acks.fail_to(kept, n0), "n0 acked it before the reset");
        assert!(!acks.fail_to(lost, n0), "failed once");
        assert!(acks.has_failed(lost) && !acks.has_failed(kept));
        assert!(acks.take_disjoint(&view).is_empty(), "n2 has not answered");
        acks.acked(lost, n2, 1);
        acks.acked(kept, n2, 1);
        let done = acks.take_disjoint(&view);
        assert_eq!(done.iter().map(|w| w.change).collect::<Vec<_>>(), ["v27"]);
        assert!(acks.waiting.is_empty());
    }
}
